//! The applier: records, in stream order, compare-and-written into an [`ImageWriter`].

use std::io::Read;

use super::format::{DiffError, DiffReader, Record};
use crate::buf::PageBuf;
use crate::image::blockset::BlockSet;
use crate::image::writer::ImageWriter;

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
/// Where [`apply_records`] gets its records from: the stream itself
/// ([`DiffReader`]) or a reader thread ([`Streamed`]).
pub(super) trait Records {
    /// The next record and the stream position where it starts.
    fn next_record(&mut self) -> Result<(u64, Record), DiffError>;
    /// The next `buf.len()` data bytes of the current `w` record.
    fn read_data(&mut self, buf: &mut [u8]) -> Result<(), DiffError>;
    /// After the end record: whether anything follows it.
    fn has_trailing_bytes(&mut self) -> Result<bool, DiffError>;
}

impl<T: Records> Records for &mut T {
    fn next_record(&mut self) -> Result<(u64, Record), DiffError> {
        (**self).next_record()
    }

    fn read_data(&mut self, buf: &mut [u8]) -> Result<(), DiffError> {
        (**self).read_data(buf)
    }

    fn has_trailing_bytes(&mut self) -> Result<bool, DiffError> {
        (**self).has_trailing_bytes()
    }
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

pub(super) fn apply_records(
    mut reader: impl Records,
    writer: &mut ImageWriter,
    expect: &Expect,
    progress: &mut dyn FnMut(u64),
) -> Result<Applied, DiffError> {
    let mut applied = Applied::default();
    let mut reported = 0;
    let (mut seen_from, mut seen_to, mut seen_size) = (None, None, false);
    let mut block = PageBuf::zeroed(writer.block_size() as usize);
    let mut old = PageBuf::zeroed(writer.block_size() as usize);
    let mut touched = expect.from_snap.is_none().then(BlockSet::default);
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
                    t.resize(writer.blocks());
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
                    touched.as_mut(),
                )?;
                applied.bytes_in_records += len;
            }
            Record::End => {
                if reader.has_trailing_bytes()? {
                    return Err(invalid("data after the end record".into()));
                }
                if let Some(t) = &touched {
                    // In runs: where the new image has holes they cost nothing.
                    let mut run: Option<(u64, u64)> = None;
                    for index in t.missing() {
                        run = match run {
                            Some((from, to)) if to == index => Some((from, index + 1)),
                            Some((from, to)) => {
                                writer.put_zero_blocks(from, to)?;
                                Some((index, index + 1))
                            }
                            None => Some((index, index + 1)),
                        };
                    }
                    if let Some((from, to)) = run {
                        writer.put_zero_blocks(from, to)?;
                    }
                }
                return Ok(applied);
            }
        }
    }
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
    mut touched: Option<&mut BlockSet>,
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
        let first_touch = touched.as_deref_mut().is_some_and(|t| t.insert(index));
        let changed = (pos - start) as usize..(stop - start) as usize;
        let over = !first_touch && !whole;
        if over {
            writer.read_block(index, &mut old[..blen])?;
            buf.copy_from_slice(&old[..blen]);
        } else if first_touch && !whole {
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
