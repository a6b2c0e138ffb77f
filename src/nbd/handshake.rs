//! The fixed newstyle handshake: the greeting, then the option loop until the
//! client chooses an export (`GO`, `EXPORT_NAME`), gives up (`ABORT`), or
//! breaks a limit.
//!
//! Every option the server does not offer (`STARTTLS`, `EXTENDED_HEADERS`, and
//! anything unknown) gets `ERR_UNSUP` and the loop goes on, as the protocol
//! requires; only a malformed frame or a broken limit ends the connection.

use std::io::{self, Write};
use std::sync::Arc;
use std::time::Instant;

use super::export::{Catalog, Export};
use super::proto::{self, Fields, info, opt, rep, tflag};
use super::{Limits, Transport};

/// What the handshake agreed on.
#[derive(Debug)]
pub struct Negotiated {
    /// The export to serve.
    pub export: Arc<Export>,
    /// The name the client asked for (may be an alias such as `last`).
    pub asked_as: String,
    /// Structured replies were negotiated.
    pub structured: bool,
    /// `base:allocation` was selected for this export.
    pub base_allocation: bool,
    /// The transmission flags sent to the client.
    pub flags: u16,
}

/// How the handshake ended.
#[derive(Debug)]
pub enum Outcome {
    /// Go on to transmission.
    Transmission(Negotiated),
    /// The client aborted or ended the handshake; nothing to serve.
    Closed,
}

/// The handshake ended the connection because the client broke the protocol
/// or a limit.
fn violation(what: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.into())
}

/// Reads exactly `buf.len()` bytes before the handshake's deadline.
fn read_by<S: Transport>(s: &mut S, buf: &mut [u8], deadline: Instant) -> io::Result<()> {
    let mut got = 0;
    while got < buf.len() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client did not finish the handshake in time",
            ));
        }
        s.set_read_timeout(Some(left))?;
        match s.read(&mut buf[got..]) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Reads and drops `len` bytes (an option too large to keep).
fn discard<S: Transport>(s: &mut S, mut len: u64, deadline: Instant) -> io::Result<()> {
    let mut sink = [0u8; 8192];
    while len > 0 {
        let n = len.min(sink.len() as u64) as usize;
        read_by(s, &mut sink[..n], deadline)?;
        len -= n as u64;
    }
    Ok(())
}

/// One option reply.
fn reply<S: Write>(s: &mut S, option: u32, kind: u32, data: &[u8]) -> io::Result<()> {
    s.write_all(&proto::option_reply_header(option, kind, data.len() as u32))?;
    s.write_all(data)
}

/// An error reply with a message for the user.
fn refuse<S: Write>(s: &mut S, option: u32, kind: u32, message: &str) -> io::Result<()> {
    reply(s, option, kind, proto::protocol_string(message).as_bytes())
}

/// A u32-length-prefixed string, as replies carry names.
fn with_len(text: &str) -> Vec<u8> {
    let mut v = (text.len() as u32).to_be_bytes().to_vec();
    v.extend_from_slice(text.as_bytes());
    v
}

/// The transmission flags for an export.
fn transmission_flags(writable: bool, structured: bool) -> u16 {
    let mut flags =
        tflag::HAS_FLAGS | tflag::SEND_FLUSH | tflag::CAN_MULTI_CONN | tflag::SEND_CACHE;
    if writable {
        flags |= tflag::SEND_FUA | tflag::SEND_TRIM | tflag::SEND_WRITE_ZEROES;
    } else {
        flags |= tflag::READ_ONLY;
    }
    if structured {
        flags |= tflag::SEND_DF;
    }
    flags
}

/// The metadata contexts a client selected, and for which export.
#[derive(Debug, Default)]
struct MetaSelection {
    export: String,
    base_allocation: bool,
}

/// Runs the handshake. With `refusal`, every option that would lead to an
/// export is refused with that message (the connection cap).
pub fn negotiate<S: Transport>(
    s: &mut S,
    catalog: &dyn Catalog,
    limits: &Limits,
    refusal: Option<&str>,
) -> io::Result<Outcome> {
    let deadline = Instant::now() + limits.handshake_time;
    s.write_all(&proto::NBDMAGIC.to_be_bytes())?;
    s.write_all(&proto::IHAVEOPT.to_be_bytes())?;
    s.write_all(&(proto::FLAG_FIXED_NEWSTYLE | proto::FLAG_NO_ZEROES).to_be_bytes())?;
    s.flush()?;
    let mut b4 = [0u8; 4];
    read_by(s, &mut b4, deadline)?;
    let client_flags = u32::from_be_bytes(b4);
    if client_flags & !(proto::FLAG_C_FIXED_NEWSTYLE | proto::FLAG_C_NO_ZEROES) != 0 {
        return Err(violation(format!("unknown client flags {client_flags:#x}")));
    }
    let no_zeroes = client_flags & proto::FLAG_C_NO_ZEROES != 0;

    let mut structured = false;
    let mut meta = MetaSelection::default();
    for _ in 0..limits.max_options {
        let mut head = [0u8; 16];
        read_by(s, &mut head, deadline)?;
        if head[..8] != proto::IHAVEOPT.to_be_bytes() {
            return Err(violation("an option without the IHAVEOPT magic"));
        }
        let option = u32::from_be_bytes(head[8..12].try_into().unwrap());
        let len = u32::from_be_bytes(head[12..16].try_into().unwrap());
        if len as usize > limits.max_option_len {
            if option == opt::EXPORT_NAME {
                return Err(violation(format!("an export name of {len} bytes")));
            }
            discard(s, len.into(), deadline)?;
            refuse(
                s,
                option,
                rep::ERR_TOO_BIG,
                &format!(
                    "option data of {len} bytes is more than this server accepts ({} bytes)",
                    limits.max_option_len
                ),
            )?;
            s.flush()?;
            continue;
        }
        let mut data = vec![0u8; len as usize];
        read_by(s, &mut data, deadline)?;
        let outcome = option_reply(
            s,
            option,
            &data,
            catalog,
            limits,
            refusal,
            &mut structured,
            &mut meta,
        )?;
        s.flush()?;
        match outcome {
            Step::Continue => {}
            Step::Abort => return Ok(Outcome::Closed),
            Step::Go(export, asked_as) => {
                let flags = transmission_flags(export.writable(), structured);
                let base_allocation = meta.base_allocation && meta.export == asked_as;
                if option == opt::EXPORT_NAME {
                    s.write_all(&export.size().to_be_bytes())?;
                    s.write_all(&flags.to_be_bytes())?;
                    if !no_zeroes {
                        s.write_all(&[0u8; 124])?;
                    }
                    s.flush()?;
                }
                s.set_read_timeout(None)?;
                return Ok(Outcome::Transmission(Negotiated {
                    export,
                    asked_as,
                    structured,
                    base_allocation,
                    flags,
                }));
            }
        }
    }
    Err(violation(format!(
        "more than {} options in one handshake",
        limits.max_options
    )))
}

/// What one option leads to.
enum Step {
    Continue,
    Abort,
    Go(Arc<Export>, String),
}

#[allow(clippy::too_many_arguments)]
fn option_reply<S: Write>(
    s: &mut S,
    option: u32,
    data: &[u8],
    catalog: &dyn Catalog,
    limits: &Limits,
    refusal: Option<&str>,
    structured: &mut bool,
    meta: &mut MetaSelection,
) -> io::Result<Step> {
    let invalid =
        |s: &mut S, why: &str| refuse(s, option, rep::ERR_INVALID, why).map(|()| Step::Continue);
    match option {
        opt::EXPORT_NAME => {
            let name = std::str::from_utf8(data)
                .ok()
                .filter(|n| n.len() <= limits.max_name)
                .ok_or_else(|| violation("an export name that is not UTF-8 or too long"))?;
            if let Some(why) = refusal {
                return Err(violation(why.to_string()));
            }
            // EXPORT_NAME cannot fail with a reply: an unknown name closes the connection.
            let export = catalog.open(name).map_err(violation)?;
            Ok(Step::Go(export, name.to_string()))
        }
        opt::ABORT => {
            reply(s, option, rep::ACK, &[])?;
            Ok(Step::Abort)
        }
        opt::LIST => {
            if !data.is_empty() {
                return invalid(s, "LIST takes no data");
            }
            if let Some(why) = refusal {
                refuse(s, option, rep::ERR_POLICY, why)?;
                return Ok(Step::Continue);
            }
            match catalog.list() {
                Ok(exports) => {
                    for (name, description) in exports {
                        let mut payload = with_len(&name);
                        payload.extend_from_slice(description.as_bytes());
                        reply(s, option, rep::SERVER, &payload)?;
                    }
                    reply(s, option, rep::ACK, &[])?;
                }
                Err(why) => refuse(s, option, rep::ERR_INVALID, &why)?,
            }
            Ok(Step::Continue)
        }
        opt::STRUCTURED_REPLY => {
            if !data.is_empty() {
                return invalid(s, "STRUCTURED_REPLY takes no data");
            }
            *structured = true;
            reply(s, option, rep::ACK, &[])?;
            Ok(Step::Continue)
        }
        opt::INFO | opt::GO => {
            let mut f = Fields::new(data);
            let Some(name) = f.string(limits.max_name) else {
                return invalid(
                    s,
                    "the export name is malformed, not UTF-8 or longer than 4096 bytes",
                );
            };
            let Some(count) = f.u16() else {
                return invalid(s, "the information request count is missing");
            };
            let mut wanted = Vec::new();
            for _ in 0..count {
                match f.u16() {
                    Some(kind) => wanted.push(kind),
                    None => return invalid(s, "the information requests are cut short"),
                }
            }
            if !f.is_empty() {
                return invalid(s, "the option has data after its information requests");
            }
            if let Some(why) = refusal {
                refuse(s, option, rep::ERR_POLICY, why)?;
                return Ok(Step::Continue);
            }
            let (canonical, description, size, export) = if option == opt::GO {
                match catalog.open(name) {
                    Ok(e) => (e.name.clone(), e.description.clone(), e.size(), Some(e)),
                    Err(why) => {
                        refuse(s, option, rep::ERR_UNKNOWN, &why)?;
                        return Ok(Step::Continue);
                    }
                }
            } else {
                match catalog.describe(name) {
                    Ok((c, d, size)) => (c, d, size, None),
                    Err(why) => {
                        refuse(s, option, rep::ERR_UNKNOWN, &why)?;
                        return Ok(Step::Continue);
                    }
                }
            };
            let flags = transmission_flags(catalog.writable(), *structured);
            let mut export_info = info::EXPORT.to_be_bytes().to_vec();
            export_info.extend_from_slice(&size.to_be_bytes());
            export_info.extend_from_slice(&flags.to_be_bytes());
            reply(s, option, rep::INFO, &export_info)?;
            if wanted.contains(&info::NAME) || canonical != name {
                let mut payload = info::NAME.to_be_bytes().to_vec();
                payload.extend_from_slice(canonical.as_bytes());
                reply(s, option, rep::INFO, &payload)?;
            }
            if wanted.contains(&info::DESCRIPTION) {
                let mut payload = info::DESCRIPTION.to_be_bytes().to_vec();
                payload.extend_from_slice(description.as_bytes());
                reply(s, option, rep::INFO, &payload)?;
            }
            let mut sizes = info::BLOCK_SIZE.to_be_bytes().to_vec();
            for v in [1u32, 4096, limits.max_request] {
                sizes.extend_from_slice(&v.to_be_bytes());
            }
            reply(s, option, rep::INFO, &sizes)?;
            reply(s, option, rep::ACK, &[])?;
            Ok(match export {
                Some(e) => Step::Go(e, name.to_string()),
                None => Step::Continue,
            })
        }
        opt::LIST_META_CONTEXT | opt::SET_META_CONTEXT => {
            let set = option == opt::SET_META_CONTEXT;
            let mut f = Fields::new(data);
            let Some(name) = f.string(limits.max_name) else {
                return invalid(
                    s,
                    "the export name is malformed, not UTF-8 or longer than 4096 bytes",
                );
            };
            let Some(count) = f.u32() else {
                return invalid(s, "the query count is missing");
            };
            let mut queries = Vec::new();
            for _ in 0..count {
                match f.string(limits.max_name) {
                    Some(q) => queries.push(q),
                    None => return invalid(s, "a query is malformed or too long"),
                }
            }
            if !f.is_empty() {
                return invalid(s, "the option has data after its queries");
            }
            if !*structured {
                return invalid(
                    s,
                    "metadata contexts need structured replies; negotiate them first",
                );
            }
            if let Err(why) = catalog.describe(name) {
                refuse(s, option, rep::ERR_UNKNOWN, &why)?;
                return Ok(Step::Continue);
            }
            let matches = |q: &str| q == proto::BASE_ALLOCATION || (!set && q == "base:");
            let selected = if queries.is_empty() {
                !set
            } else {
                queries.iter().any(|q| matches(q))
            };
            if selected {
                let mut payload = proto::BASE_ALLOCATION_ID.to_be_bytes().to_vec();
                payload.extend_from_slice(proto::BASE_ALLOCATION.as_bytes());
                reply(s, option, rep::META_CONTEXT, &payload)?;
            }
            if set {
                *meta = MetaSelection {
                    export: name.to_string(),
                    base_allocation: selected,
                };
            }
            reply(s, option, rep::ACK, &[])?;
            Ok(Step::Continue)
        }
        _ => {
            let what = match option {
                opt::STARTTLS => "TLS is not offered by this server".to_string(),
                opt::EXTENDED_HEADERS => {
                    "extended headers are not offered by this server".to_string()
                }
                other => format!("option {other} is not supported by this server"),
            };
            refuse(s, option, rep::ERR_UNSUP, &what)?;
            Ok(Step::Continue)
        }
    }
}
