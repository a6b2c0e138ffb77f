//! The `rbd export-diff` v1 stream: a parser that never trusts its input, and an
//! applier that streams records into an [`ImageWriter`] with bounded memory.
//!
//! # Format (all integers little-endian)
//!
//! ```text
//! "rbd diff v1\n"                 12-byte banner
//! 'f' u32 len, name               from-snap (only with --from-snap)
//! 't' u32 len, name               to-snap (absent when exporting the image head)
//! 's' u64 size                    image size at the end snapshot
//! 'w' u64 offset, u64 length, <length bytes of data>
//! 'z' u64 offset, u64 length      range reads as zeroes
//! 'e'                             end; nothing follows
//! ```
//!
//! Records may arrive unsorted and overlapping (Ceph bug 45601): they are applied
//! in stream order, which is what Ceph means.

use std::io::{self, Read};

use crate::image::prefetch::Prefetcher;
use crate::image::writer::ImageWriter;

const BANNER: &[u8; 12] = b"rbd diff v1\n";
/// Longest snapshot name we accept (Ceph's limit is far below).
const MAX_NAME: u32 = 4096;

/// What went wrong with a diff stream.
#[derive(Debug, thiserror::Error)]
pub enum DiffError {
    /// The stream ended before its `e` record.
    #[error("the diff stream ended after {at} bytes without its end record: it was cut short")]
    Truncated {
        /// Bytes read before the end.
        at: u64,
    },
    /// Not a v1 diff.
    #[error(
        "the diff stream does not start with 'rbd diff v1' (found {found:?}); this backy reads only v1 diffs"
    )]
    Banner {
        /// What was there instead.
        found: String,
    },
    /// A tag we do not know.
    #[error(
        "unknown record {tag:#04x} at byte {at} of the diff stream; a newer Ceph may have changed the format"
    )]
    UnknownRecord {
        /// The tag byte.
        tag: u8,
        /// Its position.
        at: u64,
    },
    /// A record contradicts what we expect.
    #[error("invalid diff stream at byte {at}: {what}")]
    Invalid {
        /// Position of the record.
        at: u64,
        /// What is wrong.
        what: String,
    },
    /// Reading the stream or writing the image failed.
    #[error("{0}")]
    Io(#[from] io::Error),
    /// Patching the image failed.
    #[error("{0}")]
    Image(#[from] crate::error::Error),
}

/// One record's header (the data of a `w` follows in the stream).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// `f`: the snapshot the diff starts from.
    FromSnap(String),
    /// `t`: the snapshot the diff ends at.
    ToSnap(String),
    /// `s`: the image size at the end snapshot.
    Size(u64),
    /// `w`: `len` bytes of data for `offset` follow.
    Write {
        /// Image offset.
        offset: u64,
        /// Data length.
        len: u64,
    },
    /// `z`: the range reads as zeros.
    Zero {
        /// Image offset.
        offset: u64,
        /// Length.
        len: u64,
    },
    /// `e`: the end.
    End,
}

/// A streaming reader of diff records.
pub struct DiffReader<R> {
    input: R,
    pos: u64,
    /// Unread data bytes of the current `w` record.
    pending: u64,
}

impl<R: Read> DiffReader<R> {
    /// Reads and checks the banner.
    pub fn new(input: R) -> Result<DiffReader<R>, DiffError> {
        let mut r = DiffReader {
            input,
            pos: 0,
            pending: 0,
        };
        let mut banner = [0u8; 12];
        let n = r.read_up_to(&mut banner)?;
        if n < banner.len() && banner[..n] == BANNER[..n] {
            return Err(DiffError::Truncated { at: n as u64 });
        }
        if &banner != BANNER {
            return Err(DiffError::Banner {
                found: String::from_utf8_lossy(&banner[..n]).into_owned(),
            });
        }
        Ok(r)
    }

    fn read_up_to(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut got = 0;
        while got < buf.len() {
            match self.input.read(&mut buf[got..]) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        self.pos += got as u64;
        Ok(got)
    }

    fn read_exact(&mut self, buf: &mut [u8]) -> Result<(), DiffError> {
        if self.read_up_to(buf)? < buf.len() {
            return Err(DiffError::Truncated { at: self.pos });
        }
        Ok(())
    }

    fn u64(&mut self) -> Result<u64, DiffError> {
        let mut b = [0u8; 8];
        self.read_exact(&mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    fn name(&mut self, at: u64) -> Result<String, DiffError> {
        let mut b = [0u8; 4];
        self.read_exact(&mut b)?;
        let len = u32::from_le_bytes(b);
        if len > MAX_NAME {
            return Err(DiffError::Invalid {
                at,
                what: format!("a snapshot name of {len} bytes"),
            });
        }
        let mut name = vec![0u8; len as usize];
        self.read_exact(&mut name)?;
        String::from_utf8(name).map_err(|_| DiffError::Invalid {
            at,
            what: "a snapshot name that is not UTF-8".into(),
        })
    }

    /// Position in the stream (bytes consumed).
    pub fn position(&self) -> u64 {
        self.pos
    }

    /// The next record. The data of a `Write` must be consumed with
    /// [`DiffReader::read_data`] before asking for the next record.
    pub fn next_record(&mut self) -> Result<Record, DiffError> {
        if self.pending > 0 {
            return Err(DiffError::Invalid {
                at: self.pos,
                what: "data of a write record left unread (a backy bug)".into(),
            });
        }
        let at = self.pos;
        let mut tag = [0u8; 1];
        self.read_exact(&mut tag)?;
        let range = |r: &mut Self| -> Result<(u64, u64), DiffError> {
            let offset = r.u64()?;
            let len = r.u64()?;
            if offset.checked_add(len).is_none() {
                return Err(DiffError::Invalid {
                    at,
                    what: format!("extent {offset}+{len} overflows"),
                });
            }
            Ok((offset, len))
        };
        Ok(match tag[0] {
            b'f' => Record::FromSnap(self.name(at)?),
            b't' => Record::ToSnap(self.name(at)?),
            b's' => Record::Size(self.u64()?),
            b'w' => {
                let (offset, len) = range(self)?;
                self.pending = len;
                Record::Write { offset, len }
            }
            b'z' => {
                let (offset, len) = range(self)?;
                Record::Zero { offset, len }
            }
            b'e' => Record::End,
            tag => return Err(DiffError::UnknownRecord { tag, at }),
        })
    }

    /// Reads the next `buf.len()` data bytes of the current `w` record.
    pub fn read_data(&mut self, buf: &mut [u8]) -> Result<(), DiffError> {
        assert!(
            buf.len() as u64 <= self.pending,
            "read beyond the write record"
        );
        self.read_exact(buf)?;
        self.pending -= buf.len() as u64;
        Ok(())
    }

    /// Whether anything follows the end record (it must not).
    pub fn has_trailing_bytes(&mut self) -> Result<bool, DiffError> {
        let mut b = [0u8; 1];
        Ok(self.read_up_to(&mut b)? > 0)
    }
}

/// What a diff must say about its snapshots.
#[derive(Debug, Clone, Default)]
pub struct Expect {
    /// The `f` record: `Some(name)` demands it, `None` forbids it (a full diff).
    pub from_snap: Option<String>,
    /// The `t` record: `Some(name)` demands it, `None` forbids it (the image head).
    pub to_snap: Option<String>,
    /// The `s` record must say this size (as `rbd info` of the snapshot did).
    pub size: Option<u64>,
}

/// Largest image size a diff may declare (1 PiB; RBD's own limit is far below).
pub const MAX_IMAGE_SIZE: u64 = 1 << 50;

/// What applying a diff did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Applied {
    /// Sum of `w` and `z` lengths (backy 2.1's `bytes_written`).
    pub bytes_in_records: u64,
    /// The image size the diff ended with.
    pub size: u64,
}

/// Applies a whole diff stream to `writer`, checking it against `expect`.
///
/// An incremental diff (`expect.from_snap` set) patches the image as it is. A full
/// diff (no from-snapshot) describes the whole image: what it does not cover reads
/// as zeros, so blocks it never touches become holes, and the first touch of a
/// block starts from zeros, not from the parent's data. Either way every block is
/// compare-and-written, so data equal to the parent's stays shared.
///
/// Memory stays at one block plus one bit per block, whatever the record sizes.
pub fn apply<R: Read>(
    input: R,
    writer: &mut ImageWriter,
    expect: &Expect,
) -> Result<Applied, DiffError> {
    apply_records(DiffReader::new(input)?, writer, expect, &mut |_| {})
}

/// [`apply`] with the stream read and parsed ahead on a thread of its own, so the
/// producer (rbd) never waits for the image, and the image blocks that records
/// ahead will compare are read in the background (see [`Prefetch`]).
///
/// At most [`AHEAD_BATCHES`] batches of about [`BATCH_BYTES`] wait between the
/// threads, so memory stays bounded whatever the stream holds. `progress` gets the
/// stream bytes handled. If applying fails, the reader thread ends by itself once
/// the input ends or fails (the caller kills rbd).
pub fn apply_streamed<R: Read + Send + 'static>(
    input: R,
    writer: &mut ImageWriter,
    expect: &Expect,
    prefetch: Option<Prefetch>,
    progress: &mut dyn FnMut(u64),
) -> Result<Applied, DiffError> {
    apply_records(Streamed::start(input, prefetch), writer, expect, progress)
}

/// Where [`apply_records`] gets its records from: the stream itself
/// ([`DiffReader`]) or a reader thread ([`Streamed`]).
trait Records {
    /// The next record and the stream position where it starts.
    fn next_record(&mut self) -> Result<(u64, Record), DiffError>;
    /// The next `buf.len()` data bytes of the current `w` record.
    fn read_data(&mut self, buf: &mut [u8]) -> Result<(), DiffError>;
    /// After the end record: whether anything follows it.
    fn has_trailing_bytes(&mut self) -> Result<bool, DiffError>;
}

impl<R: Read> Records for DiffReader<R> {
    fn next_record(&mut self) -> Result<(u64, Record), DiffError> {
        let at = self.position();
        Ok((at, DiffReader::next_record(self)?))
    }

    fn read_data(&mut self, buf: &mut [u8]) -> Result<(), DiffError> {
        DiffReader::read_data(self, buf)
    }

    fn has_trailing_bytes(&mut self) -> Result<bool, DiffError> {
        DiffReader::has_trailing_bytes(self)
    }
}

fn apply_records(
    mut reader: impl Records,
    writer: &mut ImageWriter,
    expect: &Expect,
    progress: &mut dyn FnMut(u64),
) -> Result<Applied, DiffError> {
    let mut applied = Applied::default();
    let mut reported = 0;
    let (mut seen_from, mut seen_to, mut seen_size) = (None, None, false);
    let mut block = vec![0u8; writer.block_size() as usize];
    let mut old = vec![0u8; writer.block_size() as usize];
    let mut touched = expect.from_snap.is_none().then(Vec::<u64>::new);
    loop {
        let (at, record) = reader.next_record()?;
        progress(at - reported);
        reported = at;
        let invalid = |what: String| DiffError::Invalid { at, what };
        if !seen_size
            && !matches!(
                record,
                Record::FromSnap(_) | Record::ToSnap(_) | Record::Size(_)
            )
        {
            return Err(invalid(format!("{record:?} before the size record")));
        }
        match record {
            Record::FromSnap(name) => {
                if seen_from.is_some() || seen_to.is_some() || seen_size {
                    return Err(invalid("a misplaced from-snapshot record".into()));
                }
                if expect.from_snap.as_deref() != Some(name.as_str()) {
                    // The name came off the wire: show it escaped.
                    let name = name.escape_debug();
                    return Err(invalid(match &expect.from_snap {
                        Some(want) => format!(
                            "it starts from snapshot '{name}', not from '{want}' as the parent revision needs"
                        ),
                        None => format!(
                            "it starts from snapshot '{name}' but a full diff was asked for"
                        ),
                    }));
                }
                seen_from = Some(name);
            }
            Record::ToSnap(name) => {
                if seen_to.is_some() || seen_size {
                    return Err(invalid("a misplaced to-snapshot record".into()));
                }
                if expect.to_snap.as_deref() != Some(name.as_str()) {
                    let name = name.escape_debug();
                    return Err(invalid(format!(
                        "it ends at snapshot '{name}', not at '{}'",
                        expect.to_snap.as_deref().unwrap_or("(the image head)")
                    )));
                }
                seen_to = Some(name);
            }
            Record::Size(size) => {
                if seen_size {
                    return Err(invalid("a second size record".into()));
                }
                if expect.size.is_some_and(|want| want != size) || size > MAX_IMAGE_SIZE {
                    return Err(invalid(format!(
                        "it declares an image size of {size} bytes, but the snapshot has {}",
                        expect
                            .size
                            .map_or("at most 1 PiB".into(), |s| s.to_string())
                    )));
                }
                if seen_from.is_none() && expect.from_snap.is_some() {
                    return Err(invalid(
                        "it has no from-snapshot record, so it is not an incremental diff".into(),
                    ));
                }
                if seen_to.is_none() && expect.to_snap.is_some() {
                    return Err(invalid("it has no to-snapshot record".into()));
                }
                writer.resize(size)?;
                applied.size = size;
                seen_size = true;
                if let Some(t) = touched.as_mut() {
                    t.resize(writer.blocks().div_ceil(64) as usize, 0);
                }
            }
            Record::Write { offset, len } | Record::Zero { offset, len } => {
                let is_write = matches!(record, Record::Write { .. });
                if offset + len > applied.size {
                    return Err(invalid(format!(
                        "extent {offset}+{len} reaches beyond the image size {}",
                        applied.size
                    )));
                }
                apply_extent(
                    &mut reader,
                    writer,
                    offset,
                    len,
                    is_write,
                    (&mut block, &mut old),
                    touched.as_deref_mut(),
                )?;
                applied.bytes_in_records += len;
            }
            Record::End => {
                if reader.has_trailing_bytes()? {
                    return Err(invalid("data after the end record".into()));
                }
                if let Some(t) = &touched {
                    for index in (0..writer.blocks()).filter(|&i| !is_set(t, i)) {
                        writer.put_zero_block(index)?;
                    }
                }
                return Ok(applied);
            }
        }
    }
}

/// Data bytes a reader-thread batch collects before it is handed over.
pub const BATCH_BYTES: usize = 1 << 20;
/// Batches that may wait for the applier: the read-ahead, about 16 MiB.
pub const AHEAD_BATCHES: usize = 16;
/// Records a batch may hold, so small records do not make a batch unbounded.
const BATCH_RECORDS: usize = 4096;
/// Reading ahead, in the image, what the records to come will compare: each
/// extent's first and last block when it covers them only in part (their other
/// bytes must be read), and with `whole_blocks` also the blocks in between (read
/// when their data differs from the parent's digest; off for whole-object diffs,
/// which mostly resend unchanged data).
pub struct Prefetch {
    /// The patched image's prefetch threads ([`ImageWriter::prefetcher`]).
    pub threads: Prefetcher,
    /// The writer's block size.
    pub block_size: u64,
    /// Also read fully covered blocks.
    pub whole_blocks: bool,
}

impl Prefetch {
    /// The byte ranges to read for extent `offset+len` of an image of `size` bytes.
    fn ranges(&self, offset: u64, len: u64, size: u64) -> [Option<(u64, u64)>; 2] {
        let bs = self.block_size;
        let end = (offset + len).min(size);
        if offset >= end {
            return [None, None];
        }
        let (first, last) = (offset / bs, (end - 1) / bs);
        if self.whole_blocks {
            return [Some((first * bs, (last + 1 - first) * bs)), None];
        }
        let partial = |b: u64| offset > b * bs || end < (b * bs + bs).min(size);
        [
            partial(first).then_some((first * bs, bs)),
            (last != first && partial(last)).then_some((last * bs, bs)),
        ]
    }
}

/// One step of the stream as the reader thread hands it over.
enum Item {
    Record(u64, Record),
    Data(Vec<u8>),
    /// The end record (at its position), and whether bytes follow it.
    End(u64, bool),
    Failed(DiffError),
}

/// The applier's side of a reader thread that parses the stream ahead.
struct Streamed {
    batches: std::sync::mpsc::Receiver<Vec<Item>>,
    items: std::vec::IntoIter<Item>,
    /// The current data chunk and how much of it is used.
    data: Vec<u8>,
    used: usize,
    trailing: Option<bool>,
}

impl Streamed {
    fn start<R: Read + Send + 'static>(input: R, prefetch: Option<Prefetch>) -> Streamed {
        let (tx, rx) = std::sync::mpsc::sync_channel(AHEAD_BATCHES);
        std::thread::spawn(move || read_ahead(input, tx, prefetch));
        Streamed {
            batches: rx,
            items: Vec::new().into_iter(),
            data: Vec::new(),
            used: 0,
            trailing: None,
        }
    }

    fn next_item(&mut self) -> Result<Item, DiffError> {
        loop {
            if let Some(item) = self.items.next() {
                return Ok(item);
            }
            self.items = self
                .batches
                .recv()
                .map_err(|_| DiffError::Invalid {
                    at: 0,
                    what: "the thread reading the diff stream stopped (a backy bug)".into(),
                })?
                .into_iter();
        }
    }

    fn out_of_step(what: &str) -> DiffError {
        DiffError::Invalid {
            at: 0,
            what: format!("{what} out of step with the diff stream (a backy bug)"),
        }
    }
}

impl Records for Streamed {
    fn next_record(&mut self) -> Result<(u64, Record), DiffError> {
        if self.used < self.data.len() {
            return Err(Self::out_of_step("data of a write record left unread"));
        }
        match self.next_item()? {
            Item::Record(at, record) => Ok((at, record)),
            Item::End(at, trailing) => {
                self.trailing = Some(trailing);
                Ok((at, Record::End))
            }
            Item::Failed(e) => Err(e),
            Item::Data(_) => Err(Self::out_of_step("write data")),
        }
    }

    fn read_data(&mut self, mut buf: &mut [u8]) -> Result<(), DiffError> {
        while !buf.is_empty() {
            if self.used == self.data.len() {
                match self.next_item()? {
                    Item::Data(chunk) => (self.data, self.used) = (chunk, 0),
                    Item::Failed(e) => return Err(e),
                    _ => return Err(Self::out_of_step("a record")),
                }
            }
            let n = buf.len().min(self.data.len() - self.used);
            buf[..n].copy_from_slice(&self.data[self.used..self.used + n]);
            self.used += n;
            buf = &mut buf[n..];
        }
        Ok(())
    }

    fn has_trailing_bytes(&mut self) -> Result<bool, DiffError> {
        self.trailing
            .ok_or_else(|| Self::out_of_step("the end record"))
    }
}

/// The reader thread: parses `input`, hands over batches of records and data, and
/// queues the prefetches of the image ranges the records will need. Ends at the end
/// record, at the first error (handed over too), or when the applier is gone.
fn read_ahead<R: Read>(
    input: R,
    batches: std::sync::mpsc::SyncSender<Vec<Item>>,
    prefetch: Option<Prefetch>,
) {
    let mut batch = Vec::new();
    let mut bytes = 0;
    let mut size = 0;
    let push = |item: Item, batch: &mut Vec<Item>, bytes: &mut usize| -> bool {
        let last = matches!(item, Item::End(..) | Item::Failed(_));
        if let Item::Data(d) = &item {
            *bytes += d.len();
        }
        batch.push(item);
        if last || *bytes >= BATCH_BYTES || batch.len() >= BATCH_RECORDS {
            *bytes = 0;
            return batches.send(std::mem::take(batch)).is_ok() && !last;
        }
        true
    };
    let mut reader = match DiffReader::new(input) {
        Ok(r) => r,
        Err(e) => {
            push(Item::Failed(e), &mut batch, &mut bytes);
            return;
        }
    };
    loop {
        let at = reader.position();
        let record = match reader.next_record() {
            Ok(r) => r,
            Err(e) => {
                push(Item::Failed(e), &mut batch, &mut bytes);
                return;
            }
        };
        match record {
            Record::Size(s) => size = s,
            Record::Write { offset, len } | Record::Zero { offset, len } => {
                if let Some(p) = &prefetch {
                    for (offset, len) in p.ranges(offset, len, size).into_iter().flatten() {
                        p.threads.request(offset, len);
                    }
                }
            }
            Record::End => {
                let item = match reader.has_trailing_bytes() {
                    Ok(trailing) => Item::End(at, trailing),
                    Err(e) => Item::Failed(e),
                };
                push(item, &mut batch, &mut bytes);
                return;
            }
            _ => {}
        }
        let data_len = match record {
            Record::Write { len, .. } => len,
            _ => 0,
        };
        if !push(Item::Record(at, record), &mut batch, &mut bytes) {
            return;
        }
        let mut left = data_len;
        while left > 0 {
            let n = left.min(BATCH_BYTES as u64) as usize;
            let mut chunk = vec![0u8; n];
            if let Err(e) = reader.read_data(&mut chunk) {
                push(Item::Failed(e), &mut batch, &mut bytes);
                return;
            }
            left -= n as u64;
            if !push(Item::Data(chunk), &mut batch, &mut bytes) {
                return;
            }
        }
    }
}

fn is_set(bits: &[u64], i: u64) -> bool {
    bits[(i / 64) as usize] & (1 << (i % 64)) != 0
}

/// Writes one `w` (data from the stream) or `z` extent, block by block. With
/// `touched` (a full diff), a block's first touch starts from zeros.
fn apply_extent(
    reader: &mut impl Records,
    writer: &mut ImageWriter,
    offset: u64,
    len: u64,
    is_write: bool,
    (block, old): (&mut [u8], &mut [u8]),
    mut touched: Option<&mut [u64]>,
) -> Result<(), DiffError> {
    let bs = writer.block_size();
    let end = offset + len;
    let mut pos = offset;
    while pos < end {
        let index = pos / bs;
        let start = index * bs;
        let blen = writer.block_len(index);
        let stop = end.min(start + blen as u64);
        let buf = &mut block[..blen];
        let whole = pos == start && stop == start + blen as u64;
        let first_touch = match touched.as_deref_mut() {
            Some(bits) => {
                let first = !is_set(bits, index);
                bits[(index / 64) as usize] |= 1 << (index % 64);
                first
            }
            None => false,
        };
        let changed = (pos - start) as usize..(stop - start) as usize;
        let over = !first_touch && !whole;
        if over {
            writer.read_block(index, &mut old[..blen])?;
            buf.copy_from_slice(&old[..blen]);
        } else if first_touch {
            buf.fill(0);
        }
        let part = &mut buf[changed.clone()];
        if is_write {
            reader.read_data(part)?;
        } else {
            part.fill(0);
        }
        if over {
            writer.put_block_over(index, buf, &old[..blen], changed)?;
        } else {
            writer.put_block(index, buf)?;
        }
        pos = stop;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::sums::Manifest;
    use sha2::{Digest as _, Sha256};
    use std::fs::{File, OpenOptions};
    use std::path::{Path, PathBuf};

    fn data(name: &str) -> Vec<u8> {
        let p = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/data/rbd-diff")
            .join(name);
        std::fs::read(p).unwrap()
    }

    fn expected_sha(snap: &str) -> String {
        let text = String::from_utf8(data("raw.sha256")).unwrap();
        text.lines()
            .find(|l| l.ends_with(&format!("small@{snap}.raw")))
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap()
            .to_string()
    }

    fn sha(path: &Path) -> String {
        format!("{:x}", Sha256::digest(std::fs::read(path).unwrap()))
    }

    struct Chain {
        _dir: tempfile::TempDir,
        image: PathBuf,
        sums: PathBuf,
        n: usize,
    }

    impl Chain {
        fn new() -> Chain {
            let dir = tempfile::tempdir().unwrap();
            let image = dir.path().join("img");
            let sums = dir.path().join("img.sums");
            File::create(&image).unwrap();
            Manifest::create(&sums, 0).unwrap();
            Chain {
                _dir: dir,
                image,
                sums,
                n: 0,
            }
        }

        fn apply(
            &mut self,
            diff: &[u8],
            from: Option<&str>,
            to: Option<&str>,
        ) -> Result<Applied, DiffError> {
            self.apply_with(diff, from, to, true)
        }

        /// `trusted: false` starts from a fresh manifest, as after a parent made by
        /// backy 2.1: `finish` must hash what the diff did not touch.
        fn apply_with(
            &mut self,
            diff: &[u8],
            from: Option<&str>,
            to: Option<&str>,
            trusted: bool,
        ) -> Result<Applied, DiffError> {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .open(&self.image)
                .unwrap();
            let manifest = if trusted {
                Manifest::open(&self.sums, true).unwrap()
            } else {
                std::fs::remove_file(&self.sums).unwrap();
                Manifest::create(&self.sums, 0).unwrap()
            };
            let mut writer = ImageWriter::new(file, &self.image, manifest, trusted);
            let expect = Expect {
                from_snap: from.map(String::from),
                to_snap: to.map(String::from),
                size: None,
            };
            // Alternate between the two ways in, so both are tested throughout:
            // the reader thread (with both kinds of prefetch) and the plain parser.
            let r = match self.n % 3 {
                0 => apply(diff, &mut writer, &expect),
                n => {
                    let prefetch = Prefetch {
                        threads: writer.prefetcher().unwrap(),
                        block_size: writer.block_size(),
                        whole_blocks: n == 1,
                    };
                    let mut seen = 0;
                    let r = apply_streamed(
                        std::io::Cursor::new(diff.to_vec()),
                        &mut writer,
                        &expect,
                        Some(prefetch),
                        &mut |n| seen += n,
                    );
                    if r.is_ok() {
                        assert_eq!(seen, diff.len() as u64 - 1, "progress covers the stream");
                    }
                    r
                }
            };
            let (file, mut manifest, _) = writer.finish().unwrap();
            if r.is_ok() {
                let report = crate::image::verify_against_manifest(
                    &file,
                    &self.image,
                    &mut manifest,
                    &mut |_| {},
                )
                .unwrap();
                assert!(
                    report.bad_offsets.is_empty(),
                    "manifest wrong at {:?}",
                    report.bad_offsets
                );
            }
            self.n += 1;
            r
        }
    }

    #[test]
    fn applying_the_sample_chain_gives_the_exported_images() {
        let mut c = Chain::new();
        let a = c.apply(&data("full-s1.v1.diff"), None, Some("s1")).unwrap();
        assert_eq!(a.size, 16 << 20);
        assert_eq!(sha(&c.image), expected_sha("s1"));
        c.apply(&data("s1-s2.v1.diff"), Some("s1"), Some("s2"))
            .unwrap();
        assert_eq!(sha(&c.image), expected_sha("s2"));
        c.apply(&data("s2-s3.grow.v1.diff"), Some("s2"), Some("s3"))
            .unwrap();
        assert_eq!(sha(&c.image), expected_sha("s3"));
        c.apply(&data("s3-s4.shrink.v1.diff"), Some("s3"), Some("s4"))
            .unwrap();
        assert_eq!(sha(&c.image), expected_sha("s4"));
        let a = c.apply(&data("s4-head.v1.diff"), Some("s4"), None).unwrap();
        assert_eq!(a.bytes_in_records, 0);
        assert_eq!(sha(&c.image), expected_sha("s4"));
    }

    #[test]
    fn an_incremental_diff_without_trusted_digests_still_gets_a_full_manifest() {
        let mut c = Chain::new();
        c.apply(&data("full-s1.v1.diff"), None, Some("s1")).unwrap();
        c.apply_with(&data("s1-s2.v1.diff"), Some("s1"), Some("s2"), false)
            .unwrap();
        c.apply_with(&data("s2-s3.grow.v1.diff"), Some("s2"), Some("s3"), false)
            .unwrap();
        c.apply_with(&data("s3-s4.shrink.v1.diff"), Some("s3"), Some("s4"), false)
            .unwrap();
        assert_eq!(sha(&c.image), expected_sha("s4"));
    }

    /// A full backup onto a clone of another revision: what the diff does not
    /// cover must read as zeros afterwards, even where the parent had data.
    #[test]
    fn a_full_diff_onto_a_populated_clone_gives_the_snapshot() {
        let mut c = Chain::new();
        c.apply(&data("full-s1.v1.diff"), None, Some("s1")).unwrap();
        c.apply(&data("s1-s2.v1.diff"), Some("s1"), Some("s2"))
            .unwrap();
        c.apply(&data("s2-s3.grow.v1.diff"), Some("s2"), Some("s3"))
            .unwrap();
        // Now the image is s3 (20 MiB with data at 18M); a full s1 diff must undo it all.
        c.apply(&data("full-s1.v1.diff"), None, Some("s1")).unwrap();
        assert_eq!(sha(&c.image), expected_sha("s1"));
    }

    #[test]
    fn whole_object_diff_gives_the_same_image() {
        let mut c = Chain::new();
        c.apply(&data("full-s1.v1.diff"), None, Some("s1")).unwrap();
        let a = c
            .apply(&data("s1-s2.whole-object.v1.diff"), Some("s1"), Some("s2"))
            .unwrap();
        assert_eq!(a.bytes_in_records, 3 * (4 << 20));
        assert_eq!(sha(&c.image), expected_sha("s2"));
    }

    #[test]
    fn a_diff_from_the_wrong_snapshot_is_refused() {
        let mut c = Chain::new();
        c.apply(&data("full-s1.v1.diff"), None, Some("s1")).unwrap();
        let e = c
            .apply(&data("s2-s3.grow.v1.diff"), Some("s1"), Some("s3"))
            .unwrap_err();
        assert!(
            e.to_string()
                .contains("starts from snapshot 's2', not from 's1'"),
            "{e}"
        );
        let e = c
            .apply(&data("s1-s2.v1.diff"), None, Some("s2"))
            .unwrap_err();
        assert!(e.to_string().contains("a full diff was asked for"), "{e}");
        let e = c
            .apply(&data("s1-s2.v1.diff"), Some("s1"), Some("s9"))
            .unwrap_err();
        assert!(e.to_string().contains("not at 's9'"), "{e}");
    }

    #[test]
    fn the_reader_thread_reports_errors_as_the_parser_does() {
        let full = data("s1-s2.v1.diff");
        let mut bad = full.clone();
        let end = bad.len() - 1;
        bad[end] = b'q';
        for input in [
            full[..full.len() / 2].to_vec(),
            bad,
            b"rbd diff v2\n".to_vec(),
        ] {
            let mut c = Chain::new();
            c.apply(&data("full-s1.v1.diff"), None, Some("s1")).unwrap();
            let plain = c.apply(&input, Some("s1"), Some("s2")).unwrap_err();
            let streamed = c.apply(&input, Some("s1"), Some("s2")).unwrap_err();
            assert_eq!(plain.to_string(), streamed.to_string());
        }
    }

    #[test]
    fn prefetch_reads_partly_covered_edge_blocks_or_all() {
        let threads = Prefetcher::start(&tempfile::tempfile().unwrap()).unwrap();
        let edges = Prefetch {
            threads: threads.clone(),
            block_size: 100,
            whole_blocks: false,
        };
        let all = Prefetch {
            threads,
            block_size: 100,
            whole_blocks: true,
        };
        let flat =
            |p: &Prefetch, o, l, s| p.ranges(o, l, s).into_iter().flatten().collect::<Vec<_>>();
        assert_eq!(flat(&edges, 50, 300, 1000), [(0, 100), (300, 100)]);
        assert_eq!(flat(&edges, 100, 200, 1000), []);
        assert_eq!(flat(&edges, 110, 20, 1000), [(100, 100)]);
        // The short last block counts as covered when the extent reaches the end.
        assert_eq!(flat(&edges, 900, 50, 950), []);
        assert_eq!(flat(&edges, 0, 0, 950), []);
        assert_eq!(flat(&edges, 2000, 10, 950), []);
        assert_eq!(flat(&all, 50, 300, 1000), [(0, 400)]);
        assert_eq!(flat(&all, 100, 100, 1000), [(100, 100)]);
    }

    #[test]
    fn every_truncation_is_an_error() {
        let full = data("s1-s2.v1.diff");
        for cut in (0..full.len()).step_by(7).chain([full.len() - 1]) {
            let mut c = Chain::new();
            c.apply(&data("full-s1.v1.diff"), None, Some("s1")).unwrap();
            let e = c.apply(&full[..cut], Some("s1"), Some("s2")).unwrap_err();
            assert!(
                matches!(e, DiffError::Truncated { .. }),
                "cut at {cut}: {e}"
            );
        }
    }

    #[test]
    fn corrupted_streams_are_errors() {
        let good = data("s1-s2.v1.diff");
        let mut c = Chain::new();
        c.apply(&data("full-s1.v1.diff"), None, Some("s1")).unwrap();
        let mut bad = good.clone();
        bad[0] = b'R';
        assert!(matches!(
            c.apply(&bad, Some("s1"), Some("s2")),
            Err(DiffError::Banner { .. })
        ));
        let mut bad = good.clone();
        bad.insert(bad.len() - 1, b'q');
        assert!(matches!(
            c.apply(&bad, Some("s1"), Some("s2")),
            Err(DiffError::UnknownRecord { tag: b'q', .. })
        ));
        let mut bad = good.clone();
        bad.push(0);
        assert!(
            c.apply(&bad, Some("s1"), Some("s2"))
                .unwrap_err()
                .to_string()
                .contains("after the end record")
        );
        // A size other than the snapshot's, or absurdly large.
        let mut bad = b"rbd diff v1\nt\x02\x00\x00\x00s2s".to_vec();
        bad.extend(u64::MAX.to_le_bytes());
        bad.push(b'e');
        let e = c.apply(&bad, None, Some("s2")).unwrap_err();
        assert!(e.to_string().contains("declares an image size of"), "{e}");
        // A write beyond the size the stream declared.
        let mut bad = b"rbd diff v1\nt\x02\x00\x00\x00s2s".to_vec();
        bad.extend(4096u64.to_le_bytes());
        bad.push(b'w');
        bad.extend(4000u64.to_le_bytes());
        bad.extend(200u64.to_le_bytes());
        bad.extend([1u8; 200]);
        bad.push(b'e');
        let e = c.apply(&bad, None, Some("s2")).unwrap_err();
        assert!(e.to_string().contains("beyond the image size"), "{e}");
    }

    /// Ceph #45601: extents unsorted and overlapping are applied in stream order.
    #[test]
    fn unsorted_overlapping_extents_apply_in_order() {
        let mut s = b"rbd diff v1\nt\x01\x00\x00\x00xs".to_vec();
        s.extend((300_000u64).to_le_bytes());
        let mut model = vec![0u8; 300_000];
        let records: [(u8, u64, u64, u8); 5] = [
            (b'w', 200_000, 50_000, 7),
            (b'w', 10, 100_000, 3),
            (b'z', 50_000, 10, 0),
            (b'w', 60_000, 150_000, 9),
            (b'z', 199_990, 100, 0),
        ];
        for (tag, off, len, byte) in records {
            s.push(tag);
            s.extend(off.to_le_bytes());
            s.extend(len.to_le_bytes());
            if tag == b'w' {
                s.extend(std::iter::repeat_n(byte, len as usize));
            }
            model[off as usize..(off + len) as usize].fill(byte);
        }
        s.push(b'e');
        let mut c = Chain::new();
        c.apply(&s, None, Some("x")).unwrap();
        assert!(std::fs::read(&c.image).unwrap() == model);
    }

    fn stream(size: u64, records: &[(bool, u64, u64, u8)]) -> Vec<u8> {
        let mut s = b"rbd diff v1\nt\x01\x00\x00\x00xs".to_vec();
        s.extend(size.to_le_bytes());
        for &(write, off, len, byte) in records {
            s.push(if write { b'w' } else { b'z' });
            s.extend(off.to_le_bytes());
            s.extend(len.to_le_bytes());
            if write {
                s.extend(std::iter::repeat_n(byte, len as usize));
            }
        }
        s.push(b'e');
        s
    }

    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

        /// Random, unsorted, overlapping w/z records onto a random previous
        /// image, with trusted or untrusted digests: the image equals the model
        /// and the manifest describes it.
        #[test]
        fn applying_random_records_matches_a_model(
            size in 1u64..600_000,
            before in prop::collection::vec((0u64..600_000, 1u64..100_000, 1u8..255), 0..4),
            records in prop::collection::vec((any::<bool>(), 0u64..600_000, 1u64..150_000, prop_oneof![Just(0u8), 1u8..255]), 0..10),
            trusted in any::<bool>(),
        ) {
            let mut c = Chain::new();
            let mut model = vec![0u8; size as usize];
            let clip = |off: u64, len: u64| (off.min(size), (off + len).min(size));
            let before: Vec<(bool, u64, u64, u8)> = before.into_iter().map(|(o, l, b)| { let (a, e) = clip(o, l); (true, a, e - a, b) }).filter(|r| r.2 > 0).collect();
            c.apply(&stream(size, &before), None, Some("x")).unwrap();
            for &(_, off, len, byte) in &before {
                model[off as usize..(off + len) as usize].fill(byte);
            }
            let records: Vec<(bool, u64, u64, u8)> = records.into_iter().map(|(w, o, l, b)| { let (a, e) = clip(o, l); (w, a, e - a, b) }).filter(|r| r.2 > 0).collect();
            let mut diff = stream(size, &records);
            // Make it incremental: from-snap "x", to-snap "y".
            diff.splice(12..12, b"f\x01\x00\x00\x00x".iter().copied());
            let at = diff.iter().position(|&b| b == b't').unwrap();
            diff[at + 5] = b'y';
            c.apply_with(&diff, Some("x"), Some("y"), trusted).unwrap();
            for &(w, off, len, byte) in &records {
                model[off as usize..(off + len) as usize].fill(if w { byte } else { 0 });
            }
            prop_assert!(std::fs::read(&c.image).unwrap() == model);
        }

        /// Whatever the bytes, the parser and applier return; they never panic.
        #[test]
        fn arbitrary_bytes_never_panic(tail in prop::collection::vec(any::<u8>(), 0..300)) {
            let mut c = Chain::new();
            let mut input = b"rbd diff v1\n".to_vec();
            input.extend(tail);
            let _ = c.apply(&input, None, Some("s1"));
        }
    }

    fn incremental(size: u64) -> Vec<u8> {
        let mut d = stream(size, &[]);
        d.splice(12..12, b"f\x01\x00\x00\x00x".iter().copied());
        let at = d.iter().position(|&b| b == b't').unwrap();
        d[at + 5] = b'y';
        d
    }

    /// Found by the fuzzer: an incremental diff that only resizes an image whose
    /// old or new size is not a multiple of the block size left the boundary
    /// block's digest stale, and verification failed.
    #[test]
    fn resizing_to_and_from_unaligned_sizes_keeps_digests_right() {
        for (from, to) in [
            (199_608, 199_609),
            (199_608, 100_000),
            (199_608, 59_000),
            (199_608, 6 << 20),
            (131_072, 100_001),
        ] {
            for trusted in [true, false] {
                let mut c = Chain::new();
                c.apply(&stream(from, &[(true, 0, from, 7)]), None, Some("x"))
                    .unwrap();
                c.apply_with(&incremental(to), Some("x"), Some("y"), trusted)
                    .unwrap();
                let mut want = vec![7u8; from.min(to) as usize];
                want.resize(to as usize, 0);
                assert!(std::fs::read(&c.image).unwrap() == want, "{from} -> {to}");
            }
        }
    }
}
