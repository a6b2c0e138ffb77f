//! The NBD wire format (the NBD project's `doc/proto.md`): magic numbers, option
//! and command codes, flags, and the fixed-size headers. All integers are
//! big-endian ("network byte order").
//!
//! ```text
//! Handshake (fixed newstyle)
//!   S: u64 NBDMAGIC, u64 IHAVEOPT, u16 handshake flags
//!   C: u32 client flags
//!   C: u64 IHAVEOPT, u32 option, u32 length, <length bytes>      (repeated)
//!   S: u64 REPLY_MAGIC, u32 option, u32 reply type, u32 length, <length bytes>
//!   EXPORT_NAME instead gets: u64 size, u16 transmission flags, [124 zero bytes]
//!
//! Transmission
//!   C: u32 REQUEST_MAGIC, u16 flags, u16 type, u64 cookie, u64 offset, u32 length
//!      [length bytes of data for WRITE]
//!   S: u32 SIMPLE_REPLY_MAGIC, u32 error, u64 cookie, [data for READ]
//!   S: u32 STRUCTURED_REPLY_MAGIC, u16 flags, u16 type, u64 cookie, u32 length, <payload>
//! ```

/// `NBDMAGIC`, the first bytes a server sends.
pub const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
/// `IHAVEOPT`: newstyle negotiation; also starts every option.
pub const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
/// Starts every option reply.
pub const REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
/// Starts every request.
pub const REQUEST_MAGIC: u32 = 0x2560_9513;
/// Starts a simple reply.
pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
/// Starts a structured reply chunk.
pub const STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;

/// Handshake flag: the server does fixed newstyle.
pub const FLAG_FIXED_NEWSTYLE: u16 = 1 << 0;
/// Handshake flag: the server can leave out the 124 zero bytes.
pub const FLAG_NO_ZEROES: u16 = 1 << 1;
/// Client flag: the client does fixed newstyle.
pub const FLAG_C_FIXED_NEWSTYLE: u32 = 1 << 0;
/// Client flag: leave out the 124 zero bytes after `EXPORT_NAME`.
pub const FLAG_C_NO_ZEROES: u32 = 1 << 1;

/// Options.
pub mod opt {
    /// Choose an export and enter transmission (no reply on failure).
    pub const EXPORT_NAME: u32 = 1;
    /// Soft disconnect.
    pub const ABORT: u32 = 2;
    /// List the exports.
    pub const LIST: u32 = 3;
    /// TLS (we do not offer it).
    pub const STARTTLS: u32 = 5;
    /// Describe an export.
    pub const INFO: u32 = 6;
    /// Describe an export and enter transmission.
    pub const GO: u32 = 7;
    /// Use structured replies.
    pub const STRUCTURED_REPLY: u32 = 8;
    /// List metadata contexts.
    pub const LIST_META_CONTEXT: u32 = 9;
    /// Select metadata contexts.
    pub const SET_META_CONTEXT: u32 = 10;
    /// Extended headers (we do not offer them; qemu 10 asks first).
    pub const EXTENDED_HEADERS: u32 = 11;
}

/// Option reply types.
pub mod rep {
    /// The option succeeded (the final reply).
    pub const ACK: u32 = 1;
    /// One export of a `LIST`.
    pub const SERVER: u32 = 2;
    /// One piece of information of an `INFO` or `GO`.
    pub const INFO: u32 = 3;
    /// One metadata context.
    pub const META_CONTEXT: u32 = 4;
    const ERR: u32 = 1 << 31;
    /// The option is not known or not supported.
    pub const ERR_UNSUP: u32 = ERR + 1;
    /// Refused by policy (we use it for the connection cap).
    pub const ERR_POLICY: u32 = ERR + 2;
    /// Syntactically or semantically invalid.
    pub const ERR_INVALID: u32 = ERR + 3;
    /// No such export.
    pub const ERR_UNKNOWN: u32 = ERR + 6;
    /// The server is shutting down.
    pub const ERR_SHUTDOWN: u32 = ERR + 7;
    /// The request or its data is too big.
    pub const ERR_TOO_BIG: u32 = ERR + 9;
}

/// `INFO` and `GO` information types.
pub mod info {
    /// Size and transmission flags.
    pub const EXPORT: u16 = 0;
    /// The canonical name.
    pub const NAME: u16 = 1;
    /// A human-readable description.
    pub const DESCRIPTION: u16 = 2;
    /// Minimum, preferred and maximum block sizes.
    pub const BLOCK_SIZE: u16 = 3;
}

/// Transmission flags.
pub mod tflag {
    /// Always set: the other flags mean something.
    pub const HAS_FLAGS: u16 = 1 << 0;
    /// Writes are refused.
    pub const READ_ONLY: u16 = 1 << 1;
    /// `FLUSH` is supported.
    pub const SEND_FLUSH: u16 = 1 << 2;
    /// The `FUA` command flag is supported.
    pub const SEND_FUA: u16 = 1 << 3;
    /// `TRIM` is supported.
    pub const SEND_TRIM: u16 = 1 << 5;
    /// `WRITE_ZEROES` is supported.
    pub const SEND_WRITE_ZEROES: u16 = 1 << 6;
    /// The `DF` command flag is supported (only with structured replies).
    pub const SEND_DF: u16 = 1 << 7;
    /// Several connections to one export see each other's writes.
    pub const CAN_MULTI_CONN: u16 = 1 << 8;
    /// `CACHE` is supported.
    pub const SEND_CACHE: u16 = 1 << 10;
}

/// Commands.
pub mod cmd {
    /// Read.
    pub const READ: u16 = 0;
    /// Write (data follows the request).
    pub const WRITE: u16 = 1;
    /// Disconnect.
    pub const DISC: u16 = 2;
    /// Flush.
    pub const FLUSH: u16 = 3;
    /// Discard.
    pub const TRIM: u16 = 4;
    /// Prefetch.
    pub const CACHE: u16 = 5;
    /// Write zeroes.
    pub const WRITE_ZEROES: u16 = 6;
    /// Block status of a metadata context.
    pub const BLOCK_STATUS: u16 = 7;
}

/// Command flags.
pub mod cflag {
    /// Force unit access: persist before replying.
    pub const FUA: u16 = 1 << 0;
    /// `WRITE_ZEROES` must not punch holes.
    pub const NO_HOLE: u16 = 1 << 1;
    /// Do not fragment a structured `READ` reply.
    pub const DF: u16 = 1 << 2;
    /// `BLOCK_STATUS`: one extent only.
    pub const REQ_ONE: u16 = 1 << 3;
}

/// Structured reply chunk types and flags.
pub mod chunk {
    /// The last chunk of a reply.
    pub const FLAG_DONE: u16 = 1 << 0;
    /// No payload (a final chunk).
    pub const NONE: u16 = 0;
    /// u64 offset, data.
    pub const OFFSET_DATA: u16 = 1;
    /// u64 offset, u32 length: reads as zeros.
    pub const OFFSET_HOLE: u16 = 2;
    /// u32 context id, then (u32 length, u32 flags) descriptors.
    pub const BLOCK_STATUS: u16 = 5;
    /// u32 error, u16 message length, message.
    pub const ERROR: u16 = (1 << 15) + 1;
}

/// The `base:allocation` context's extent flags.
pub mod alloc {
    /// Not allocated.
    pub const HOLE: u32 = 1 << 0;
    /// Reads as zeros.
    pub const ZERO: u32 = 1 << 1;
}

/// The one metadata context we serve.
pub const BASE_ALLOCATION: &str = "base:allocation";
/// Its id in our replies.
pub const BASE_ALLOCATION_ID: u32 = 1;

/// Errors in replies (Linux errno values, as the protocol defines them).
pub mod errno {
    /// Operation not permitted (a write to a read-only export).
    pub const EPERM: u32 = 1;
    /// I/O error.
    pub const EIO: u32 = 5;
    /// Out of memory (a request we will not buffer).
    pub const ENOMEM: u32 = 12;
    /// Invalid argument.
    pub const EINVAL: u32 = 22;
    /// No space left.
    pub const ENOSPC: u32 = 28;
    /// Value too large (an offset beyond the export).
    pub const EOVERFLOW: u32 = 75;
    /// Not supported.
    pub const ENOTSUP: u32 = 95;
    /// The server is shutting down.
    pub const ESHUTDOWN: u32 = 108;
}

/// A transmission request header (28 bytes on the wire).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    /// Command flags.
    pub flags: u16,
    /// Command type.
    pub kind: u16,
    /// Echoed in the reply.
    pub cookie: u64,
    /// Byte offset in the export.
    pub offset: u64,
    /// Length in bytes.
    pub length: u32,
}

/// Size of a request header.
pub const REQUEST_LEN: usize = 28;

impl Request {
    /// Parses a request header; `None` when the magic is wrong.
    pub fn parse(b: &[u8; REQUEST_LEN]) -> Option<Request> {
        let u16_at = |i: usize| u16::from_be_bytes([b[i], b[i + 1]]);
        let u32_at = |i: usize| u32::from_be_bytes(b[i..i + 4].try_into().unwrap());
        let u64_at = |i: usize| u64::from_be_bytes(b[i..i + 8].try_into().unwrap());
        (u32_at(0) == REQUEST_MAGIC).then(|| Request {
            flags: u16_at(4),
            kind: u16_at(6),
            cookie: u64_at(8),
            offset: u64_at(16),
            length: u32_at(24),
        })
    }
}

/// A simple reply header.
pub fn simple_reply(error: u32, cookie: u64) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[..4].copy_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
    b[4..8].copy_from_slice(&error.to_be_bytes());
    b[8..].copy_from_slice(&cookie.to_be_bytes());
    b
}

/// A structured reply chunk header for a payload of `len` bytes.
pub fn chunk_header(flags: u16, kind: u16, cookie: u64, len: u32) -> [u8; 20] {
    let mut b = [0u8; 20];
    b[..4].copy_from_slice(&STRUCTURED_REPLY_MAGIC.to_be_bytes());
    b[4..6].copy_from_slice(&flags.to_be_bytes());
    b[6..8].copy_from_slice(&kind.to_be_bytes());
    b[8..16].copy_from_slice(&cookie.to_be_bytes());
    b[16..].copy_from_slice(&len.to_be_bytes());
    b
}

/// An option reply header for a payload of `len` bytes.
pub fn option_reply_header(option: u32, kind: u32, len: u32) -> [u8; 20] {
    let mut b = [0u8; 20];
    b[..8].copy_from_slice(&REPLY_MAGIC.to_be_bytes());
    b[8..12].copy_from_slice(&option.to_be_bytes());
    b[12..16].copy_from_slice(&kind.to_be_bytes());
    b[16..].copy_from_slice(&len.to_be_bytes());
    b
}

/// Protocol strings (names, error messages) are at most this many bytes.
pub const MAX_STRING: usize = 4096;

/// `text` cut to [`MAX_STRING`] bytes at a character boundary, as the protocol
/// requires of strings.
pub fn protocol_string(text: &str) -> &str {
    let mut end = text.len().min(MAX_STRING);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// Reads big-endian fields from an option's data, never beyond its end.
#[derive(Debug)]
pub struct Fields<'a> {
    data: &'a [u8],
}

impl<'a> Fields<'a> {
    /// Reads from `data`.
    pub fn new(data: &'a [u8]) -> Fields<'a> {
        Fields { data }
    }

    /// The next `n` bytes, or `None` when fewer remain.
    pub fn bytes(&mut self, n: usize) -> Option<&'a [u8]> {
        if n > self.data.len() {
            return None;
        }
        let (head, tail) = self.data.split_at(n);
        self.data = tail;
        Some(head)
    }

    /// The next u16.
    pub fn u16(&mut self) -> Option<u16> {
        self.bytes(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }

    /// The next u32.
    pub fn u32(&mut self) -> Option<u32> {
        self.bytes(4)
            .map(|b| u32::from_be_bytes(b.try_into().unwrap()))
    }

    /// A u32 length followed by that many bytes of UTF-8 (at most `max` bytes).
    pub fn string(&mut self, max: usize) -> Option<&'a str> {
        let len = self.u32()? as usize;
        if len > max {
            return None;
        }
        std::str::from_utf8(self.bytes(len)?).ok()
    }

    /// Whether everything was read.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_headers_parse_and_wrong_magic_is_refused() {
        let mut b = [0u8; REQUEST_LEN];
        b[..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
        b[4..6].copy_from_slice(&cflag::DF.to_be_bytes());
        b[6..8].copy_from_slice(&cmd::READ.to_be_bytes());
        b[8..16].copy_from_slice(&0x0102_0304_0506_0708u64.to_be_bytes());
        b[16..24].copy_from_slice(&4096u64.to_be_bytes());
        b[24..].copy_from_slice(&512u32.to_be_bytes());
        assert_eq!(
            Request::parse(&b),
            Some(Request {
                flags: cflag::DF,
                kind: cmd::READ,
                cookie: 0x0102_0304_0506_0708,
                offset: 4096,
                length: 512
            })
        );
        b[0] ^= 1;
        assert_eq!(Request::parse(&b), None);
    }

    #[test]
    fn fields_never_read_past_the_end() {
        let data = [0, 0, 0, 3, b'a', b'b', b'c', 0, 7];
        let mut f = Fields::new(&data);
        assert_eq!(f.string(4096), Some("abc"));
        assert_eq!(f.u16(), Some(7));
        assert!(f.is_empty());
        assert_eq!(f.u32(), None);
        // A length beyond the data or beyond the limit.
        assert_eq!(Fields::new(&[0, 0, 0, 9, b'a']).string(4096), None);
        assert_eq!(Fields::new(&[0, 0, 0, 3, b'a', b'b', b'c']).string(2), None);
        assert_eq!(Fields::new(&[0, 0, 0, 2, 0xff, 0xfe]).string(10), None);
    }

    #[test]
    fn protocol_strings_are_cut_at_a_character_boundary() {
        assert_eq!(protocol_string("short"), "short");
        let long = "é".repeat(3000);
        let cut = protocol_string(&long);
        assert!(cut.len() <= MAX_STRING && cut.len() >= MAX_STRING - 1);
        assert!(cut.chars().all(|c| c == 'é'));
    }

    #[test]
    fn reply_headers_are_big_endian() {
        assert_eq!(
            simple_reply(errno::EPERM, 9),
            [0x67, 0x44, 0x66, 0x98, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 9]
        );
        let h = option_reply_header(opt::GO, rep::ACK, 0);
        assert_eq!(&h[..8], &REPLY_MAGIC.to_be_bytes());
        assert_eq!(&h[8..12], &[0, 0, 0, 7]);
        let c = chunk_header(chunk::FLAG_DONE, chunk::OFFSET_HOLE, 1, 12);
        assert_eq!(&c[4..8], &[0, 1, 0, 2]);
    }
}
