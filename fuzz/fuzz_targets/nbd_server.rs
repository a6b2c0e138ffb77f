//! Fuzzes the NBD server's handshake and transmission with arbitrary client bytes.
//!
//! The input is everything a client sends, from its flags after the greeting on
//! (the seeds in `fuzz/seeds/nbd_server/` are real sessions: LIST, INFO, GO with
//! structured replies and meta contexts, reads, block status, writes, DISC). The
//! first byte chooses a read-only export or a writable one. Per input:
//!
//! - `negotiate` runs against a catalog of one 1 MiB export with data and holes
//!   ("img"; "" is its alias), over an in-memory stream; on `GO`/`EXPORT_NAME`,
//!   `transmit` serves the rest of the input.
//! - Nothing may panic; the server's output must be a well-formed sequence of
//!   replies (every option reply and every transmission reply starts with its
//!   magic number and is as long as it says).

#![no_main]

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt as _;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use backy::nbd::export::{Catalog, Export};
use backy::nbd::handshake::{Outcome, negotiate};
use backy::nbd::transmission::{Served, transmit};
use backy::nbd::{Limits, Transport};
use libfuzzer_sys::fuzz_target;

const SIZE: u64 = 1 << 20;

struct Stream<'a> {
    input: &'a [u8],
    output: Vec<u8>,
}

impl Read for Stream<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.input.read(buf)
    }
}

impl Write for Stream<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.output.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Transport for Stream<'_> {
    fn set_read_timeout(&mut self, _: Option<Duration>) -> io::Result<()> {
        Ok(())
    }
}

struct OneImage {
    writable: bool,
}

/// Where the images go: tmpfs when there is one.
fn scratch() -> &'static str {
    if std::path::Path::new("/dev/shm").is_dir() {
        "/dev/shm"
    } else {
        "/tmp"
    }
}

fn image() -> File {
    let f = tempfile::tempfile_in(scratch()).unwrap();
    f.set_len(SIZE).unwrap();
    f.write_all_at(&[0xab; 65536], 128 << 10).unwrap();
    f.write_all_at(&[0x01; 4096], SIZE - 4096).unwrap();
    f
}

impl Catalog for OneImage {
    fn list(&self) -> Result<Vec<(String, String)>, String> {
        Ok(vec![("img".into(), "2026-12-01 daily".into())])
    }

    fn describe(&self, name: &str) -> Result<(String, String, u64), String> {
        match name {
            "" | "img" => Ok(("img".into(), "2026-12-01 daily".into(), SIZE)),
            _ => Err(format!("no revision matches '{}'", name.escape_debug())),
        }
    }

    fn open(&self, name: &str) -> Result<Arc<Export>, String> {
        let (canonical, description, size) = self.describe(name)?;
        Ok(Arc::new(if self.writable {
            static DIR: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
            static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
            let dir = DIR.get_or_init(|| tempfile::tempdir_in(scratch()).unwrap().keep());
            let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let path = dir.join(format!("overlay-{n}"));
            let f = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .open(&path)
                .unwrap();
            f.set_len(SIZE).unwrap();
            Export::overlay(canonical, description, f, size, path)
        } else {
            Export::read_only(canonical, description, image(), size)
        }))
    }

    fn writable(&self) -> bool {
        self.writable
    }
}

/// Checks the server's output is a sequence of well-formed replies.
fn check_output(out: &[u8], export_name_sent: bool) {
    // Greeting: NBDMAGIC, IHAVEOPT, flags.
    assert!(out.len() >= 18, "no greeting");
    assert_eq!(&out[..8], b"NBDMAGIC");
    let mut rest = &out[18..];
    // Option replies.
    while rest.len() >= 8 && rest[..8] == 0x0003_e889_0455_65a9u64.to_be_bytes() {
        assert!(rest.len() >= 20, "cut option reply header");
        let len = u32::from_be_bytes(rest[16..20].try_into().unwrap()) as usize;
        assert!(rest.len() >= 20 + len, "cut option reply");
        rest = &rest[20 + len..];
    }
    if export_name_sent && rest.len() >= 10 && rest[..4] != [0x67, 0x44, 0x66, 0x98] && rest[..4] != [0x66, 0x8e, 0x33, 0xef] {
        // The EXPORT_NAME reply: size, flags, maybe 124 zeros.
        rest = &rest[10..];
        if rest.len() >= 124 && rest[..124].iter().all(|&b| b == 0) {
            rest = &rest[124..];
        }
    }
    // Transmission replies: simple ones may carry read data, which we cannot
    // frame without the requests, so only check that chunks are framed.
    if rest.len() >= 4 && rest[..4] == [0x66, 0x8e, 0x33, 0xef] {
        while rest.len() >= 20 && rest[..4] == [0x66, 0x8e, 0x33, 0xef] {
            let len = u32::from_be_bytes(rest[16..20].try_into().unwrap()) as usize;
            assert!(rest.len() >= 20 + len, "cut structured chunk");
            rest = &rest[20 + len..];
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, input)) = data.split_first() else {
        return;
    };
    let catalog = OneImage {
        writable: mode & 1 == 1,
    };
    let limits = Limits {
        handshake_time: Duration::from_secs(5),
        ..Limits::default()
    };
    let mut s = Stream {
        input,
        output: Vec::new(),
    };
    let stopping = AtomicBool::new(false);
    match negotiate(&mut s, &catalog, &limits, None) {
        Ok(Outcome::Transmission(n)) => {
            let mut served = Served::default();
            let _ = transmit(&mut s, &n, &limits, &stopping, &mut served);
        }
        Ok(Outcome::Closed) | Err(_) => {}
    }
    check_output(&s.output, true);
});
