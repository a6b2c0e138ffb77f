//! The transmission phase: requests in, replies out, one at a time per
//! connection (in order, so at most one request is in flight inside the server;
//! the client's pipelined requests wait in the socket buffer).

use std::io::{self, Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};

use super::Limits;
use super::export::Extent;
use super::handshake::Negotiated;
use super::proto::{self, Request, alloc, cflag, chunk, cmd, errno};
use crate::buf::PageBuf;

/// What one connection did, for its log line.
#[derive(Debug, Default, Clone, Copy)]
pub struct Served {
    /// Requests handled.
    pub requests: u64,
    /// Bytes sent in reads.
    pub bytes_read: u64,
    /// Bytes received in writes.
    pub bytes_written: u64,
}

/// Most descriptors in one `BLOCK_STATUS` reply (the client asks again for the rest).
const MAX_DESCRIPTORS: usize = 1024;
/// Room before the data in the buffer for the longest reply header.
const HEADROOM: usize = 28;
/// Where the data starts in the buffer: on a page, so the reads into it run at
/// full speed (`crate::buf`), with the reply header just before it.
const DATA: usize = crate::buf::ALIGN;
const _: () = assert!(HEADROOM <= DATA);

/// An error to report for one request.
fn errno_of(e: &io::Error) -> u32 {
    if crate::sys::is_no_space(e) {
        errno::ENOSPC
    } else {
        errno::EIO
    }
}

/// Serves requests until the client disconnects. `stopping` makes every
/// further request fail with `ESHUTDOWN`, so the client disconnects cleanly.
pub fn transmit<S: Read + Write>(
    s: &mut S,
    n: &Negotiated,
    limits: &Limits,
    stopping: &AtomicBool,
    served: &mut Served,
) -> io::Result<()> {
    let mut buf = PageBuf::default();
    loop {
        let mut head = [0u8; proto::REQUEST_LEN];
        if !read_header(s, &mut head)? {
            return Ok(());
        }
        let req = Request::parse(&head).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                "a request with a wrong magic number",
            )
        })?;
        served.requests += 1;
        tracing::debug!(
            "NBD request {:?}: command {} flags {:#x} at {}+{}",
            req.cookie,
            req.kind,
            req.flags,
            req.offset,
            req.length
        );
        if req.kind == cmd::WRITE {
            if req.length > limits.max_request {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "a write of {} bytes, more than the 32 MiB maximum",
                        req.length
                    ),
                ));
            }
            buf.fit(DATA + req.length as usize);
            s.read_exact(&mut buf[DATA..])?;
        }
        if stopping.load(Ordering::Relaxed) && req.kind != cmd::DISC {
            error_reply(s, n, &req, errno::ESHUTDOWN, "the server is shutting down")?;
            s.flush()?;
            continue;
        }
        if req.kind == cmd::DISC {
            return Ok(());
        }
        handle(s, n, limits, &req, &mut buf, served)?;
        s.flush()?;
    }
}

/// Reads a request header; `false` on a clean end of stream before it.
fn read_header<S: Read>(s: &mut S, head: &mut [u8]) -> io::Result<bool> {
    let mut got = 0;
    while got < head.len() {
        match s.read(&mut head[got..]) {
            Ok(0) if got == 0 => return Ok(false),
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(k) => got += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

/// The request's range, if it lies inside the export.
fn in_range(n: &Negotiated, req: &Request) -> bool {
    req.offset
        .checked_add(req.length.into())
        .is_some_and(|end| end <= n.export.size())
}

fn handle<S: Write>(
    s: &mut S,
    n: &Negotiated,
    limits: &Limits,
    req: &Request,
    buf: &mut PageBuf,
    served: &mut Served,
) -> io::Result<()> {
    let export = &n.export;
    let fail = |s: &mut S, code: u32, msg: &str| error_reply(s, n, req, code, msg);
    let writes = matches!(req.kind, cmd::WRITE | cmd::TRIM | cmd::WRITE_ZEROES);
    if writes && !export.writable() {
        return fail(
            s,
            errno::EPERM,
            "the export is read-only (start the server with --overlay to write)",
        );
    }
    let needs_length = matches!(req.kind, cmd::READ | cmd::BLOCK_STATUS);
    if needs_length && req.length == 0 {
        return fail(s, errno::EINVAL, "a request of length zero");
    }
    if req.kind == cmd::BLOCK_STATUS {
        // The length is a hint of interest and may reach beyond the end.
        if req.offset >= export.size() {
            return fail(
                s,
                errno::EINVAL,
                "the offset is beyond the end of the export",
            );
        }
    } else if !matches!(req.kind, cmd::FLUSH) && !in_range(n, req) {
        return fail(
            s,
            errno::EINVAL,
            "the request reaches beyond the end of the export",
        );
    }
    let result = match req.kind {
        cmd::READ => {
            if req.length > limits.max_request {
                return fail(s, errno::EINVAL, "a read of more than 32 MiB");
            }
            return read(s, n, req, buf, served);
        }
        cmd::WRITE => {
            served.bytes_written += u64::from(req.length);
            export
                .write_all_at(&buf[DATA..], req.offset)
                .and_then(|()| {
                    if req.flags & cflag::FUA != 0 {
                        export.flush()
                    } else {
                        Ok(())
                    }
                })
        }
        cmd::FLUSH => export.flush(),
        cmd::TRIM => export.trim(req.offset, req.length.into()),
        cmd::WRITE_ZEROES => export
            .write_zeroes(
                req.offset,
                req.length.into(),
                req.flags & cflag::NO_HOLE != 0,
            )
            .and_then(|()| {
                if req.flags & cflag::FUA != 0 {
                    export.flush()
                } else {
                    Ok(())
                }
            }),
        cmd::CACHE => {
            export.cache(req.offset, req.length.into());
            Ok(())
        }
        cmd::BLOCK_STATUS => {
            if !n.base_allocation {
                return fail(
                    s,
                    errno::EINVAL,
                    "no metadata context was selected (SET_META_CONTEXT base:allocation)",
                );
            }
            return block_status(s, n, req);
        }
        _ => return fail(s, errno::EINVAL, "unknown command"),
    };
    match result {
        Ok(()) => s.write_all(&proto::simple_reply(0, req.cookie)),
        Err(e) => {
            tracing::warn!(
                "NBD {} at {}+{} failed: {}",
                export.name,
                req.offset,
                req.length,
                export.describe(&e)
            );
            fail(s, errno_of(&e), &e.to_string())
        }
    }
}

/// Replies with an error: a structured error chunk for reads once structured
/// replies are on (they must not get a simple reply), else a simple reply.
fn error_reply<S: Write>(
    s: &mut S,
    n: &Negotiated,
    req: &Request,
    code: u32,
    msg: &str,
) -> io::Result<()> {
    if n.structured && matches!(req.kind, cmd::READ | cmd::BLOCK_STATUS) {
        let msg = proto::protocol_string(msg).as_bytes();
        let mut payload = code.to_be_bytes().to_vec();
        payload.extend_from_slice(&(msg.len() as u16).to_be_bytes());
        payload.extend_from_slice(msg);
        s.write_all(&proto::chunk_header(
            chunk::FLAG_DONE,
            chunk::ERROR,
            req.cookie,
            payload.len() as u32,
        ))?;
        s.write_all(&payload)
    } else {
        s.write_all(&proto::simple_reply(code, req.cookie))
    }
}

fn read<S: Write>(
    s: &mut S,
    n: &Negotiated,
    req: &Request,
    buf: &mut PageBuf,
    served: &mut Served,
) -> io::Result<()> {
    let export = &n.export;
    let len = req.length as usize;
    buf.fit(DATA + len);
    if !n.structured {
        if let Err(e) = export.read_exact_at(&mut buf[DATA..], req.offset) {
            tracing::warn!(
                "NBD read of {} at {}+{len} failed: {e}",
                export.name,
                req.offset
            );
            return error_reply(s, n, req, errno_of(&e), &e.to_string());
        }
        buf[DATA - 16..DATA].copy_from_slice(&proto::simple_reply(0, req.cookie));
        served.bytes_read += len as u64;
        return s.write_all(&buf[DATA - 16..]);
    }
    let end = req.offset + u64::from(req.length);
    let extents = if req.flags & cflag::DF != 0 {
        vec![Extent {
            offset: req.offset,
            len: len as u64,
            hole: false,
        }]
    } else {
        match export.extents(req.offset, end, usize::MAX, true) {
            Ok(x) => x,
            Err(e) => return error_reply(s, n, req, errno_of(&e), &e.to_string()),
        }
    };
    for (i, x) in extents.iter().enumerate() {
        let flags = if i + 1 == extents.len() {
            chunk::FLAG_DONE
        } else {
            0
        };
        if x.hole {
            let mut c = [0u8; 32];
            c[..20].copy_from_slice(&proto::chunk_header(
                flags,
                chunk::OFFSET_HOLE,
                req.cookie,
                12,
            ));
            c[20..28].copy_from_slice(&x.offset.to_be_bytes());
            c[28..].copy_from_slice(&(x.len as u32).to_be_bytes());
            s.write_all(&c)?;
            continue;
        }
        let data = &mut buf[DATA..DATA + x.len as usize];
        if let Err(e) = export.read_exact_at(data, x.offset) {
            tracing::warn!(
                "NBD read of {} at {}+{} failed: {e}",
                export.name,
                x.offset,
                x.len
            );
            return error_reply(s, n, req, errno_of(&e), &e.to_string());
        }
        buf[DATA - HEADROOM..DATA - 8].copy_from_slice(&proto::chunk_header(
            flags,
            chunk::OFFSET_DATA,
            req.cookie,
            8 + x.len as u32,
        ));
        buf[DATA - 8..DATA].copy_from_slice(&x.offset.to_be_bytes());
        s.write_all(&buf[DATA - HEADROOM..DATA + x.len as usize])?;
        served.bytes_read += x.len;
    }
    Ok(())
}

fn block_status<S: Write>(s: &mut S, n: &Negotiated, req: &Request) -> io::Result<()> {
    let export = &n.export;
    let end = req.offset.saturating_add(req.length.into());
    let max = if req.flags & cflag::REQ_ONE != 0 {
        1
    } else {
        MAX_DESCRIPTORS
    };
    let extents = match export.extents(req.offset, end, max, false) {
        Ok(x) => x,
        Err(e) => return error_reply(s, n, req, errno_of(&e), &e.to_string()),
    };
    let mut payload = proto::BASE_ALLOCATION_ID.to_be_bytes().to_vec();
    for x in &extents {
        // Descriptor lengths are u32: split longer extents (at a 4 KiB boundary).
        let mut left = x.len;
        while left > 0 {
            let part = left.min(u64::from(u32::MAX) & !4095);
            payload.extend_from_slice(&(part as u32).to_be_bytes());
            let flags = if x.hole { alloc::HOLE | alloc::ZERO } else { 0 };
            payload.extend_from_slice(&flags.to_be_bytes());
            left -= part;
            if max == 1 {
                break;
            }
        }
    }
    s.write_all(&proto::chunk_header(
        chunk::FLAG_DONE,
        chunk::BLOCK_STATUS,
        req.cookie,
        payload.len() as u32,
    ))?;
    s.write_all(&payload)
}
