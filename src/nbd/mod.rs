//! `backy nbd-server`: the job's revisions for standard NBD clients
//! (`nbd-client`, `qemu-img`, `nbdinfo`, `nbdcopy`, `nbdfuse`).
//!
//! The protocol is the NBD project's `doc/proto.md`; [`proto`] pins its wire
//! format. The parts: [`handshake`] (fixed newstyle option haggling),
//! [`transmission`] (requests and replies), [`export`] (a revision opened
//! read-only, or through a throw-away reflink overlay, and the catalog that
//! finds one by name), [`server`] (listener, connection cap, shutdown).
//!
//! Export names are `-r` SPECs (id, number, tag, `last`, unique prefix; the
//! empty name is the newest revision), looked up in the job's revision list and
//! never used as paths. Incomplete revisions are never served.

pub mod export;
pub mod handshake;
pub mod proto;
pub mod server;
pub mod transmission;

use std::io::{self, Read, Write};
use std::time::Duration;

/// The limits a client must stay within; breaking one ends its connection (or
/// gets an error reply where the protocol has one), never another client's.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Options in one handshake.
    pub max_options: usize,
    /// Bytes of data in one option.
    pub max_option_len: usize,
    /// Bytes in an export name or query.
    pub max_name: usize,
    /// Time for the whole handshake.
    pub handshake_time: Duration,
    /// Bytes in one read or write request (also the maximum block size).
    pub max_request: u32,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_options: 64,
            max_option_len: 64 << 10,
            max_name: proto::MAX_STRING,
            handshake_time: Duration::from_secs(30),
            max_request: 32 << 20,
        }
    }
}

/// A byte stream to a client whose reads can time out (for the handshake's deadline).
pub trait Transport: Read + Write {
    /// Limits how long one read may wait (`None`: forever).
    fn set_read_timeout(&mut self, timeout: Option<Duration>) -> io::Result<()>;
}

impl Transport for std::net::TcpStream {
    fn set_read_timeout(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        std::net::TcpStream::set_read_timeout(self, timeout)
    }
}

impl Transport for std::os::unix::net::UnixStream {
    fn set_read_timeout(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        std::os::unix::net::UnixStream::set_read_timeout(self, timeout)
    }
}

impl<T: Transport + ?Sized> Transport for &mut T {
    fn set_read_timeout(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        (**self).set_read_timeout(timeout)
    }
}

/// Buffers replies (many small option replies, chunk headers) into few writes.
pub struct Buffered<S: Transport> {
    inner: S,
    out: Vec<u8>,
}

impl<S: Transport> Buffered<S> {
    /// Wraps `inner`.
    pub fn new(inner: S) -> Buffered<S> {
        Buffered {
            inner,
            out: Vec::with_capacity(64 << 10),
        }
    }
}

impl<S: Transport> Read for Buffered<S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.read(buf)
    }
}

impl<S: Transport> Write for Buffered<S> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // Large payloads go straight out after what is buffered.
        if buf.len() >= 64 << 10 {
            self.flush()?;
            return self.inner.write(buf);
        }
        self.out.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        if !self.out.is_empty() {
            self.inner.write_all(&self.out)?;
            self.out.clear();
        }
        self.inner.flush()
    }
}

impl<S: Transport> Transport for Buffered<S> {
    fn set_read_timeout(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        self.inner.set_read_timeout(timeout)
    }
}
