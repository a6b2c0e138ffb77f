//! The `backy send` / `backy receive` stream: revisions of one job as the
//! blocks that changed between them, framed and checksummed end to end.
//!
//! # Layout (version 1, all integers little-endian)
//!
//! ```text
//! stream   = magic "BACKYSND" (8) | version u32 (1) | record*
//! record   = kind u8 | length u32 | payload (length bytes) | check (16)
//! check    = the first 16 bytes of BLAKE3(previous check | kind | length | payload);
//!            the "previous check" of the first record is the first 16 bytes
//!            of BLAKE3(magic | version)
//! ```
//!
//! The checks form a chain: each covers every byte before it, so a flipped,
//! missing, repeated or reordered byte or record fails the next check, and
//! the last record's check is the digest of the whole stream. `length` is at
//! most [`MAX_PAYLOAD`] (1 MiB), so a damaged length cannot make the reader
//! allocate more than that.
//!
//! Records, in this order:
//!
//! ```text
//! kind  record        payload
//!    1  Begin         JSON {"base": null | {"id", "manifest": hex}, "config": null | text,
//!                           "revisions": [id, ...]}                       once, first
//!    2  Revision      JSON {"id", "parent": null | id, "rev": .rev text (complete),
//!                           "image_size", "block_size", "manifest": hex}
//!    3  Block         block u64 | digest (32) | runs u16 | run*
//!                     run = offset u32 | len u32 | what u8 (0 data, 1 zeros) | data (len, if 0)
//!    4  Zero          first block u64 | count u64                  blocks that became zero
//!    5  RevisionEnd   block records u64 | zero blocks u64
//!    6  End           revisions u64                                once, last; then EOF
//! ```
//!
//! For each revision of `Begin.revisions` in turn: a `Revision`, its `Block`
//! and `Zero` records by increasing block number (each block at most once,
//! inside the image), and a `RevisionEnd` whose counts match. A revision's
//! `parent` is the base (for the first) or the revision before it in the
//! stream: the image it is a patch of. `manifest` is
//! [`crate::image::sums::Manifest::content_digest`] of its checksum manifest
//! after the patch. A `Block` names the block's new digest and the byte runs
//! (inside the block, by increasing offset, not overlapping, offsets at
//! 4 KiB pages) that differ from the parent; the rest of the block is the
//! parent's. A `Zero` record makes whole blocks zero.
//!
//! [`StreamReader`] checks all of this while it reads, so its caller sees only
//! records that are intact and in order; the reader never panics and holds at
//! most one record in memory.

use std::io::{Read, Write};

use serde::{Deserialize, Serialize};

use crate::image::sums::Digest;

/// The first 8 bytes of every stream.
pub const MAGIC: &[u8; 8] = b"BACKYSND";
/// The format version this backy writes and reads.
pub const VERSION: u32 = 1;
/// The largest payload of one record.
pub const MAX_PAYLOAD: u32 = 1 << 20;
/// Bytes of a record's check.
const CHECK_LEN: usize = 16;
/// Runs of a `Block` record are aligned to these.
pub const PAGE: u32 = 4096;

const KIND_BEGIN: u8 = 1;
const KIND_REVISION: u8 = 2;
const KIND_BLOCK: u8 = 3;
const KIND_ZERO: u8 = 4;
const KIND_REVISION_END: u8 = 5;
const KIND_END: u8 = 6;

/// The revision a stream is a continuation of.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BaseRef {
    /// Its id.
    pub id: String,
    /// The content digest of its manifest (hex).
    pub manifest: String,
}

/// The first record: what the stream holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Begin {
    /// The revision the first one is a patch of; `None`: the first is whole.
    pub base: Option<BaseRef>,
    /// The sending job's `config` text, for a target that has none.
    pub config: Option<String>,
    /// The ids of the revisions that follow, oldest first.
    pub revisions: Vec<String>,
}

/// The start of one revision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevisionHeader {
    /// Its id.
    pub id: String,
    /// The image it is a patch of (the base or the previous revision).
    pub parent: Option<String>,
    /// Its `.rev` text as the sender holds it (complete).
    pub rev: String,
    /// The image size in bytes.
    pub image_size: u64,
    /// The manifest's block size.
    pub block_size: u64,
    /// The content digest of its manifest (hex).
    pub manifest: String,
}

impl RevisionHeader {
    /// Number of blocks of the image.
    pub fn blocks(&self) -> u64 {
        self.image_size.div_ceil(self.block_size)
    }

    /// Length of block `block` (the last one may be short).
    pub fn block_len(&self, block: u64) -> u64 {
        (self.image_size - block * self.block_size).min(self.block_size)
    }
}

/// What a run of a `Block` record puts into the block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunKind {
    /// These bytes (in [`BlockRecord::data`]).
    Data,
    /// Zeros (a hole where the filesystem can).
    Zeros,
}

/// One run of a block: `len` bytes at `offset` inside the block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Run {
    /// Offset inside the block (a multiple of [`PAGE`]).
    pub offset: u32,
    /// Length in bytes.
    pub len: u32,
    /// Data or zeros.
    pub kind: RunKind,
    /// Where a data run's bytes start in [`BlockRecord::data`].
    pub data_at: u32,
}

/// One changed block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockRecord {
    /// The block number.
    pub block: u64,
    /// Its digest after the runs are applied.
    pub digest: Digest,
    /// What changed, by increasing offset.
    pub runs: Vec<Run>,
    /// The bytes of the data runs, one after the other.
    pub data: Vec<u8>,
}

impl BlockRecord {
    /// An empty record for `block` (runs are added with [`BlockRecord::push`]).
    pub fn new(block: u64, digest: Digest) -> BlockRecord {
        BlockRecord {
            block,
            digest,
            runs: Vec::new(),
            data: Vec::new(),
        }
    }

    /// Appends a run (data when `bytes` is `Some`), merging it into the
    /// previous run when they touch and are of the same kind.
    pub fn push(&mut self, offset: u32, len: u32, bytes: Option<&[u8]>) {
        let kind = if bytes.is_some() {
            RunKind::Data
        } else {
            RunKind::Zeros
        };
        if let Some(bytes) = bytes {
            self.data.extend_from_slice(bytes);
        }
        if let Some(last) = self.runs.last_mut()
            && last.kind == kind
            && last.offset + last.len == offset
        {
            last.len += len;
            return;
        }
        let data_at = match kind {
            RunKind::Data => (self.data.len() - len as usize) as u32,
            RunKind::Zeros => 0,
        };
        self.runs.push(Run {
            offset,
            len,
            kind,
            data_at,
        });
    }

    /// The bytes of a data run.
    pub fn bytes(&self, run: &Run) -> &[u8] {
        &self.data[run.data_at as usize..(run.data_at + run.len) as usize]
    }
}

/// One record of the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// The first record.
    Begin(Begin),
    /// A revision starts.
    Revision(RevisionHeader),
    /// A changed block of the current revision.
    Block(BlockRecord),
    /// Blocks `first..first + count` of the current revision became zero.
    Zero {
        /// The first block.
        first: u64,
        /// How many.
        count: u64,
    },
    /// The current revision is complete.
    RevisionEnd {
        /// `Block` records sent for it.
        blocks: u64,
        /// Blocks made zero by `Zero` records.
        zero_blocks: u64,
    },
    /// The last record.
    End {
        /// Revisions in the stream.
        revisions: u64,
    },
}

/// What is wrong with a stream. Every variant names where (the byte offset
/// of the record, counted from the start of the stream).
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// Reading the input failed.
    #[error("cannot read the stream at byte {at}: {source}")]
    Read {
        /// Where.
        at: u64,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The input ended inside the stream.
    #[error(
        "the stream ends at byte {at}, before its end record (the sender stopped or the connection broke)"
    )]
    Truncated {
        /// Where it ended.
        at: u64,
    },
    /// The input does not start with the magic.
    #[error("the input is not a backy send stream (it does not start with BACKYSND)")]
    NotAStream,
    /// A version this backy cannot read.
    #[error(
        "the stream has format version {0}; this backy reads version {VERSION}: use the same backy version on both sides"
    )]
    Version(u32),
    /// A record's check does not match.
    #[error(
        "record {record} at byte {at} fails its checksum: the stream was changed or damaged in transit"
    )]
    Checksum {
        /// Which record (0 = the first).
        record: u64,
        /// Where it starts.
        at: u64,
    },
    /// A record is not what the format allows there.
    #[error("record {record} at byte {at} is malformed: {what}")]
    Malformed {
        /// Which record.
        record: u64,
        /// Where it starts.
        at: u64,
        /// What is wrong.
        what: String,
    },
    /// Bytes follow the end record.
    #[error("{extra} bytes follow the end record at byte {at}")]
    Trailing {
        /// Where the end record ended.
        at: u64,
        /// How many bytes follow (at least).
        extra: u64,
    },
}

/// The check of the stream before its first record.
fn initial_check() -> [u8; CHECK_LEN] {
    let mut h = blake3::Hasher::new();
    h.update(MAGIC);
    h.update(&VERSION.to_le_bytes());
    first_bytes(h)
}

fn chain(prev: &[u8; CHECK_LEN], kind: u8, payload: &[u8]) -> [u8; CHECK_LEN] {
    let mut h = blake3::Hasher::new();
    h.update(prev);
    h.update(&[kind]);
    h.update(&(payload.len() as u32).to_le_bytes());
    h.update(payload);
    first_bytes(h)
}

fn first_bytes(h: blake3::Hasher) -> [u8; CHECK_LEN] {
    let mut out = [0u8; CHECK_LEN];
    out.copy_from_slice(&h.finalize().as_bytes()[..CHECK_LEN]);
    out
}

/// Writes a stream: the magic and version, then records with their checks.
pub struct StreamWriter<W: Write> {
    out: W,
    check: [u8; CHECK_LEN],
    payload: Vec<u8>,
    written: u64,
}

impl<W: Write> StreamWriter<W> {
    /// Writes the magic and version.
    pub fn new(mut out: W) -> std::io::Result<StreamWriter<W>> {
        out.write_all(MAGIC)?;
        out.write_all(&VERSION.to_le_bytes())?;
        Ok(StreamWriter {
            out,
            check: initial_check(),
            payload: Vec::new(),
            written: 12,
        })
    }

    /// Writes one record.
    pub fn write(&mut self, record: &Record) -> std::io::Result<()> {
        self.payload.clear();
        let kind = encode(record, &mut self.payload);
        if self.payload.len() > MAX_PAYLOAD as usize {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!(
                    "a record of {} bytes exceeds the stream's limit of {MAX_PAYLOAD}",
                    self.payload.len()
                ),
            ));
        }
        self.check = chain(&self.check, kind, &self.payload);
        self.out.write_all(&[kind])?;
        self.out
            .write_all(&(self.payload.len() as u32).to_le_bytes())?;
        self.out.write_all(&self.payload)?;
        self.out.write_all(&self.check)?;
        self.written += 1 + 4 + self.payload.len() as u64 + CHECK_LEN as u64;
        Ok(())
    }

    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Flushes and returns the output.
    pub fn finish(mut self) -> std::io::Result<W> {
        self.out.flush()?;
        Ok(self.out)
    }
}

/// Appends a record's payload to `out` and returns its kind.
fn encode(record: &Record, out: &mut Vec<u8>) -> u8 {
    // Strings, integers and options into a Vec: serde_json cannot fail here.
    match record {
        Record::Begin(b) => {
            let _ = serde_json::to_writer(&mut *out, b);
            KIND_BEGIN
        }
        Record::Revision(r) => {
            let _ = serde_json::to_writer(&mut *out, r);
            KIND_REVISION
        }
        Record::Block(b) => {
            out.extend_from_slice(&b.block.to_le_bytes());
            out.extend_from_slice(&b.digest.0);
            out.extend_from_slice(&(b.runs.len() as u16).to_le_bytes());
            for run in &b.runs {
                out.extend_from_slice(&run.offset.to_le_bytes());
                out.extend_from_slice(&run.len.to_le_bytes());
                match run.kind {
                    RunKind::Data => {
                        out.push(0);
                        out.extend_from_slice(b.bytes(run));
                    }
                    RunKind::Zeros => out.push(1),
                }
            }
            KIND_BLOCK
        }
        Record::Zero { first, count } => {
            out.extend_from_slice(&first.to_le_bytes());
            out.extend_from_slice(&count.to_le_bytes());
            KIND_ZERO
        }
        Record::RevisionEnd {
            blocks,
            zero_blocks,
        } => {
            out.extend_from_slice(&blocks.to_le_bytes());
            out.extend_from_slice(&zero_blocks.to_le_bytes());
            KIND_REVISION_END
        }
        Record::End { revisions } => {
            out.extend_from_slice(&revisions.to_le_bytes());
            KIND_END
        }
    }
}

/// A cursor over a record's payload that never reads past its end.
struct Payload<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Payload<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.bytes.len());
        let Some(end) = end else {
            return Err(format!(
                "it ends after {} bytes, inside a field",
                self.bytes.len()
            ));
        };
        let out = &self.bytes[self.at..end];
        self.at = end;
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, String> {
        Ok(u16::from_le_bytes(
            self.take(2)?.try_into().unwrap_or([0; 2]),
        ))
    }

    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().unwrap_or([0; 4]),
        ))
    }

    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().unwrap_or([0; 8]),
        ))
    }

    fn end(&self) -> Result<(), String> {
        if self.at == self.bytes.len() {
            Ok(())
        } else {
            Err(format!(
                "{} bytes follow its last field",
                self.bytes.len() - self.at
            ))
        }
    }
}

/// Decodes a payload of `kind` (structure only; [`StreamReader`] checks order).
fn decode(kind: u8, payload: &[u8]) -> Result<Record, String> {
    let mut p = Payload {
        bytes: payload,
        at: 0,
    };
    let json_err = |e: serde_json::Error| format!("its JSON is invalid: {e}");
    let record = match kind {
        KIND_BEGIN => Record::Begin(serde_json::from_slice(payload).map_err(json_err)?),
        KIND_REVISION => Record::Revision(serde_json::from_slice(payload).map_err(json_err)?),
        KIND_BLOCK => {
            let block = p.u64()?;
            let digest = Digest(p.take(32)?.try_into().unwrap_or([0; 32]));
            let count = p.u16()?;
            let mut record = BlockRecord::new(block, digest);
            for _ in 0..count {
                let offset = p.u32()?;
                let len = p.u32()?;
                match p.u8()? {
                    0 => {
                        let bytes = p.take(len as usize)?;
                        record.runs.push(Run {
                            offset,
                            len,
                            kind: RunKind::Data,
                            data_at: record.data.len() as u32,
                        });
                        record.data.extend_from_slice(bytes);
                    }
                    1 => record.runs.push(Run {
                        offset,
                        len,
                        kind: RunKind::Zeros,
                        data_at: 0,
                    }),
                    other => return Err(format!("a run has the unknown kind {other}")),
                }
            }
            p.end()?;
            Record::Block(record)
        }
        KIND_ZERO => {
            let first = p.u64()?;
            let count = p.u64()?;
            p.end()?;
            Record::Zero { first, count }
        }
        KIND_REVISION_END => {
            let blocks = p.u64()?;
            let zero_blocks = p.u64()?;
            p.end()?;
            Record::RevisionEnd {
                blocks,
                zero_blocks,
            }
        }
        KIND_END => {
            let revisions = p.u64()?;
            p.end()?;
            Record::End { revisions }
        }
        other => return Err(format!("its kind {other} is unknown")),
    };
    Ok(record)
}

/// Where the reader is in the record order.
#[derive(Debug)]
enum State {
    /// Before `Begin`.
    Start,
    /// Between revisions: `next` revisions of `Begin` have been read.
    Between { next: usize },
    /// Inside a revision.
    Inside {
        next: usize,
        header: RevisionHeader,
        /// The lowest block the next record may name.
        next_block: u64,
        blocks_sent: u64,
        zero_blocks: u64,
    },
    /// After `End`.
    Done,
}

/// Reads a stream record by record, checking every check, every field and
/// the order; an error is final (the reader returns it again if asked).
pub struct StreamReader<R: Read> {
    input: R,
    check: [u8; CHECK_LEN],
    at: u64,
    records: u64,
    state: State,
    begin: Option<Begin>,
    payload: Vec<u8>,
    failed: bool,
}

impl<R: Read> StreamReader<R> {
    /// Reads and checks the magic and version.
    pub fn new(mut input: R) -> Result<StreamReader<R>, StreamError> {
        let mut head = [0u8; 12];
        let got = read_fully(&mut input, &mut head, 0)?;
        if got < 8 || &head[..8] != MAGIC {
            return Err(if got < 8 && head[..got] == MAGIC[..got] {
                StreamError::Truncated { at: got as u64 }
            } else {
                StreamError::NotAStream
            });
        }
        if got < 12 {
            return Err(StreamError::Truncated { at: got as u64 });
        }
        let version = u32::from_le_bytes([head[8], head[9], head[10], head[11]]);
        if version != VERSION {
            return Err(StreamError::Version(version));
        }
        Ok(StreamReader {
            input,
            check: initial_check(),
            at: 12,
            records: 0,
            state: State::Start,
            begin: None,
            payload: Vec::new(),
            failed: false,
        })
    }

    /// Bytes read so far.
    pub fn position(&self) -> u64 {
        self.at
    }

    /// The `Begin` record, once read.
    pub fn begin(&self) -> Option<&Begin> {
        self.begin.as_ref()
    }

    /// The next record, or `None` after `End` when the input ends there.
    pub fn next_record(&mut self) -> Result<Option<Record>, StreamError> {
        if self.failed {
            return Err(StreamError::Malformed {
                record: self.records,
                at: self.at,
                what: "the stream was already found unusable".into(),
            });
        }
        let result = self.read_record();
        if result.is_err() {
            self.failed = true;
        }
        result
    }

    fn read_record(&mut self) -> Result<Option<Record>, StreamError> {
        let start = self.at;
        if matches!(self.state, State::Done) {
            let mut probe = [0u8; 1];
            let extra = read_fully(&mut self.input, &mut probe, self.at)?;
            if extra > 0 {
                return Err(StreamError::Trailing {
                    at: self.at,
                    extra: extra as u64,
                });
            }
            return Ok(None);
        }
        let mut frame = [0u8; 5];
        let got = read_fully(&mut self.input, &mut frame, start)?;
        if got < frame.len() {
            return Err(StreamError::Truncated {
                at: start + got as u64,
            });
        }
        let kind = frame[0];
        let len = u32::from_le_bytes([frame[1], frame[2], frame[3], frame[4]]);
        let malformed = |what: String| StreamError::Malformed {
            record: self.records,
            at: start,
            what,
        };
        if len > MAX_PAYLOAD {
            // A flipped bit in the length most likely; the check would fail too.
            return Err(malformed(format!(
                "its length {len} exceeds the limit of {MAX_PAYLOAD} bytes"
            )));
        }
        self.payload.resize(len as usize + CHECK_LEN, 0);
        let got = read_fully(&mut self.input, &mut self.payload, start + 5)?;
        if got < self.payload.len() {
            return Err(StreamError::Truncated {
                at: start + 5 + got as u64,
            });
        }
        let (payload, check) = self.payload.split_at(len as usize);
        let expected = chain(&self.check, kind, payload);
        if check != expected {
            return Err(StreamError::Checksum {
                record: self.records,
                at: start,
            });
        }
        let record = decode(kind, payload).map_err(malformed)?;
        self.check = expected;
        self.at = start + 5 + self.payload.len() as u64;
        self.order(&record).map_err(|what| StreamError::Malformed {
            record: self.records,
            at: start,
            what,
        })?;
        self.records += 1;
        Ok(Some(record))
    }

    /// Checks that `record` may come now and moves the state on.
    fn order(&mut self, record: &Record) -> Result<(), String> {
        let state = std::mem::replace(&mut self.state, State::Done);
        self.state = match (state, record) {
            (State::Start, Record::Begin(b)) => {
                check_begin(b)?;
                self.begin = Some(b.clone());
                State::Between { next: 0 }
            }
            (State::Start, _) => {
                return Err("the stream does not start with its begin record".into());
            }
            (State::Between { next }, Record::Revision(h)) => {
                let begin = self.begin.as_ref().ok_or("no begin record")?;
                let Some(expected) = begin.revisions.get(next) else {
                    return Err(format!(
                        "revision {} is one more than the {} the begin record announced",
                        h.id,
                        begin.revisions.len()
                    ));
                };
                if &h.id != expected {
                    return Err(format!(
                        "revision {} comes where the begin record announced {expected}",
                        h.id
                    ));
                }
                let parent = match next {
                    0 => begin.base.as_ref().map(|b| b.id.clone()),
                    n => Some(begin.revisions[n - 1].clone()),
                };
                if h.parent != parent {
                    return Err(format!(
                        "revision {} names parent {:?} instead of {:?}",
                        h.id, h.parent, parent
                    ));
                }
                check_revision_header(h)?;
                State::Inside {
                    next: next + 1,
                    header: h.clone(),
                    next_block: 0,
                    blocks_sent: 0,
                    zero_blocks: 0,
                }
            }
            (State::Between { next }, Record::End { revisions }) => {
                let announced = self.begin.as_ref().map_or(0, |b| b.revisions.len());
                if next != announced || *revisions != announced as u64 {
                    return Err(format!(
                        "the end record comes after {next} of {announced} revisions (it counts {revisions})"
                    ));
                }
                State::Done
            }
            (
                State::Inside {
                    next,
                    header,
                    next_block,
                    blocks_sent,
                    zero_blocks,
                },
                record,
            ) => match record {
                Record::Block(b) => {
                    check_block(&header, next_block, b)?;
                    State::Inside {
                        next,
                        next_block: b.block + 1,
                        header,
                        blocks_sent: blocks_sent + 1,
                        zero_blocks,
                    }
                }
                Record::Zero { first, count } => {
                    let end = first.checked_add(*count).ok_or("its range overflows")?;
                    if *count == 0 || *first < next_block || end > header.blocks() {
                        return Err(format!(
                            "zero blocks {first}..{end} are empty, out of order or outside the image of {} blocks",
                            header.blocks()
                        ));
                    }
                    State::Inside {
                        next,
                        next_block: end,
                        header,
                        blocks_sent,
                        zero_blocks: zero_blocks + count,
                    }
                }
                Record::RevisionEnd {
                    blocks,
                    zero_blocks: z,
                } => {
                    if *blocks != blocks_sent || *z != zero_blocks {
                        return Err(format!(
                            "the end of revision {} counts {blocks} blocks and {z} zero blocks, but {blocks_sent} and {zero_blocks} came",
                            header.id
                        ));
                    }
                    State::Between { next }
                }
                _ => {
                    return Err(format!(
                        "revision {} is not ended before the next revision or the end",
                        header.id
                    ));
                }
            },
            (State::Between { .. }, _) => {
                return Err("a block record comes outside of a revision".into());
            }
            (State::Done, _) => return Err("a record follows the end record".into()),
        };
        Ok(())
    }
}

fn check_begin(b: &Begin) -> Result<(), String> {
    if let Some(base) = &b.base {
        check_id(&base.id)?;
        parse_digest(&base.manifest)?;
    }
    let mut seen = std::collections::BTreeSet::new();
    for id in &b.revisions {
        check_id(id)?;
        if !seen.insert(id) || b.base.as_ref().is_some_and(|base| &base.id == id) {
            return Err(format!("revision {id} is announced twice"));
        }
    }
    Ok(())
}

fn check_revision_header(h: &RevisionHeader) -> Result<(), String> {
    parse_digest(&h.manifest)?;
    if h.block_size == 0 || !h.block_size.is_multiple_of(u64::from(PAGE)) || h.block_size > 1 << 24
    {
        return Err(format!("block size {} is invalid", h.block_size));
    }
    if h.image_size > 1 << 60 {
        return Err(format!("image size {} is invalid", h.image_size));
    }
    Ok(())
}

fn check_block(h: &RevisionHeader, next_block: u64, b: &BlockRecord) -> Result<(), String> {
    if b.block < next_block || b.block >= h.blocks() {
        return Err(format!(
            "block {} is out of order or outside the image of {} blocks",
            b.block,
            h.blocks()
        ));
    }
    let len = h.block_len(b.block);
    let mut end = 0u64;
    for run in &b.runs {
        let (offset, run_len) = (u64::from(run.offset), u64::from(run.len));
        if run_len == 0
            || !offset.is_multiple_of(u64::from(PAGE))
            || offset < end
            || offset + run_len > len
        {
            return Err(format!(
                "block {}: a run of {run_len} bytes at {offset} is empty, unaligned, overlapping or past the block's {len} bytes",
                b.block
            ));
        }
        end = offset + run_len;
    }
    Ok(())
}

/// Parses a hex digest field.
pub fn parse_digest(text: &str) -> Result<Digest, String> {
    Digest::from_hex(text).ok_or_else(|| format!("'{text}' is not a manifest digest"))
}

/// Refuses ids that are not plain file names in a job directory.
fn check_id(id: &str) -> Result<(), String> {
    let plain = !id.is_empty()
        && id.len() <= 100
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        && !matches!(id, "last" | "config");
    if plain {
        Ok(())
    } else {
        Err(format!("'{id}' is not a revision id"))
    }
}

/// Reads until `buf` is full or the input ends; returns the bytes read.
fn read_fully(input: &mut impl Read, buf: &mut [u8], at: u64) -> Result<usize, StreamError> {
    let mut got = 0;
    while got < buf.len() {
        match input.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(source) => {
                return Err(StreamError::Read {
                    at: at + got as u64,
                    source,
                });
            }
        }
    }
    Ok(got)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const BS: u64 = 65536;

    fn header(id: &str, parent: Option<&str>, image_size: u64) -> RevisionHeader {
        RevisionHeader {
            id: id.into(),
            parent: parent.map(String::from),
            rev: format!("uuid: {id}\n"),
            image_size,
            block_size: BS,
            manifest: Digest::of(id.as_bytes()).to_hex(),
        }
    }

    /// A valid stream of two revisions with data, zero runs and zero blocks.
    fn sample() -> Vec<Record> {
        let mut block = BlockRecord::new(1, Digest::of(b"b1"));
        block.push(0, 4096, Some(&[7u8; 4096]));
        block.push(4096, 4096, Some(&[8u8; 4096]));
        block.push(12288, 8192, None);
        let mut tail = BlockRecord::new(9, Digest::of(b"b9"));
        tail.push(0, 1000, Some(&[9u8; 1000]));
        vec![
            Record::Begin(Begin {
                base: Some(BaseRef {
                    id: "base1".into(),
                    manifest: Digest::of(b"m").to_hex(),
                }),
                config: Some("type: file\nfilename: /x\n".into()),
                revisions: vec!["r1".into(), "r2".into()],
            }),
            Record::Revision(header("r1", Some("base1"), 9 * BS + 1000)),
            Record::Block(block),
            Record::Zero { first: 3, count: 4 },
            Record::Block(tail),
            Record::RevisionEnd {
                blocks: 2,
                zero_blocks: 4,
            },
            Record::Revision(header("r2", Some("r1"), 2 * BS)),
            Record::RevisionEnd {
                blocks: 0,
                zero_blocks: 0,
            },
            Record::End { revisions: 2 },
        ]
    }

    fn encode_all(records: &[Record]) -> Vec<u8> {
        let mut w = StreamWriter::new(Vec::new()).unwrap();
        for r in records {
            w.write(r).unwrap();
        }
        let n = w.written();
        let out = w.finish().unwrap();
        assert_eq!(out.len() as u64, n);
        out
    }

    fn read_all(bytes: &[u8]) -> Result<Vec<Record>, StreamError> {
        let mut r = StreamReader::new(bytes)?;
        let mut out = Vec::new();
        while let Some(rec) = r.next_record()? {
            out.push(rec);
        }
        Ok(out)
    }

    #[test]
    fn round_trip() {
        let records = sample();
        let bytes = encode_all(&records);
        assert_eq!(read_all(&bytes).unwrap(), records);
        assert_eq!(&bytes[..8], MAGIC);
    }

    #[test]
    fn every_truncation_is_an_error() {
        let bytes = encode_all(&sample());
        for cut in 0..bytes.len() {
            let got = read_all(&bytes[..cut]);
            assert!(
                matches!(got, Err(StreamError::Truncated { .. })),
                "cut at {cut}: {got:?}"
            );
        }
    }

    #[test]
    fn every_single_bit_flip_is_an_error() {
        let bytes = encode_all(&sample());
        for at in 0..bytes.len() {
            for bit in [0, 3, 7] {
                let mut bad = bytes.clone();
                bad[at] ^= 1 << bit;
                assert!(read_all(&bad).is_err(), "flip at {at} bit {bit} passed");
            }
        }
    }

    #[test]
    fn order_and_trailing_bytes_are_checked() {
        let records = sample();
        // Records swapped, dropped or repeated (each re-encoded with valid checks).
        let mut swapped = records.clone();
        swapped.swap(2, 4);
        let mut dropped = records.clone();
        dropped.remove(5);
        let mut repeated = records.clone();
        repeated.insert(3, records[2].clone());
        let mut no_begin = records.clone();
        no_begin.remove(0);
        for (name, recs) in [
            ("swapped", swapped),
            ("dropped", dropped),
            ("repeated", repeated),
            ("no begin", no_begin),
        ] {
            let got = read_all(&encode_all(&recs));
            assert!(
                matches!(got, Err(StreamError::Malformed { .. })),
                "{name}: {got:?}"
            );
        }
        let mut bytes = encode_all(&records);
        bytes.push(0);
        assert!(matches!(
            read_all(&bytes),
            Err(StreamError::Trailing { .. })
        ));
        assert!(matches!(
            read_all(b"GIF89a..........."),
            Err(StreamError::NotAStream)
        ));
        let mut v2 = encode_all(&records);
        v2[8] = 2;
        assert!(matches!(read_all(&v2), Err(StreamError::Version(2))));
    }

    #[test]
    fn a_huge_length_allocates_nothing() {
        let mut bytes = MAGIC.to_vec();
        bytes.extend_from_slice(&VERSION.to_le_bytes());
        bytes.push(KIND_BLOCK);
        bytes.extend_from_slice(&u32::MAX.to_le_bytes());
        let got = read_all(&bytes);
        assert!(matches!(got, Err(StreamError::Malformed { .. })), "{got:?}");
    }

    #[test]
    fn runs_past_the_block_or_unaligned_are_refused() {
        for (offset, len) in [(0u32, 70_000u32), (100, 4096), (0, 0)] {
            let mut recs = sample();
            let mut b = BlockRecord::new(1, Digest::of(b"x"));
            b.runs.push(Run {
                offset,
                len,
                kind: RunKind::Zeros,
                data_at: 0,
            });
            recs[2] = Record::Block(b);
            assert!(read_all(&encode_all(&recs)).is_err(), "{offset} {len}");
        }
    }

    proptest! {
        /// Arbitrary bytes after a valid header never panic, and a stream
        /// cut or flipped anywhere never reads as valid.
        #[test]
        fn arbitrary_input_never_panics(tail in proptest::collection::vec(any::<u8>(), 0..2000)) {
            let mut bytes = MAGIC.to_vec();
            bytes.extend_from_slice(&VERSION.to_le_bytes());
            bytes.extend_from_slice(&tail);
            let _ = read_all(&bytes);
        }

        #[test]
        fn damage_is_detected(at in any::<prop::sample::Index>(), byte in 1u8..=255, cut in any::<prop::sample::Index>()) {
            let bytes = encode_all(&sample());
            let mut bad = bytes.clone();
            let i = at.index(bad.len());
            bad[i] ^= byte;
            prop_assert!(read_all(&bad).is_err());
            let c = cut.index(bytes.len());
            prop_assert!(read_all(&bytes[..c]).is_err());
        }

        #[test]
        fn blocks_round_trip(pages in proptest::collection::vec((0u32..16, any::<bool>(), any::<u8>()), 0..16)) {
            let mut b = BlockRecord::new(0, Digest::of(b"p"));
            let mut used = std::collections::BTreeSet::new();
            let mut sorted: Vec<_> = pages.into_iter().filter(|p| used.insert(p.0)).collect();
            sorted.sort();
            for (page, data, fill) in sorted {
                let bytes = vec![fill; 4096];
                b.push(page * 4096, 4096, data.then_some(&bytes[..]));
            }
            let mut recs = sample();
            recs[2] = Record::Block(b.clone());
            let got = read_all(&encode_all(&recs)).unwrap();
            prop_assert_eq!(&got[2], &Record::Block(b));
        }
    }
}
