//! The writer: a v1 stream (the format in [the module docs](super)) made from
//! a revision image and its manifest, for `rbd import-diff`.
//!
//! [`DiffWriter`] writes records; [`write_diff`] sends the given blocks of an
//! image: a `w` record of the data for blocks that hold data, checked against
//! the manifest as they are read, and (in an incremental diff) a `z` record
//! for blocks the manifest says are zero. Records cover runs of blocks up to
//! [`MAX_RECORD`] bytes, so `rbd import-diff` needs little memory.

use std::fs::File;
use std::io::{self, Write};
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::format::BANNER;
use crate::error::{Error, Result};
use crate::image::sums::{Digest, Manifest};
use crate::interrupt;

/// Largest `w` record: what `rbd export-diff` sends at most (one 4 MiB object).
pub const MAX_RECORD: u64 = 4 << 20;

/// Writes the records of one v1 diff stream, in order.
pub struct DiffWriter<W: Write> {
    out: W,
}

impl<W: Write> DiffWriter<W> {
    /// Writes the banner, the `f` record (with `from`), the `t` record (with
    /// `to`) and the `s` record.
    pub fn new(mut out: W, from: Option<&str>, to: Option<&str>, size: u64) -> io::Result<Self> {
        out.write_all(BANNER)?;
        for (tag, name) in [(b'f', from), (b't', to)] {
            if let Some(name) = name {
                let len = u32::try_from(name.len()).map_err(io::Error::other)?;
                out.write_all(&[tag])?;
                out.write_all(&len.to_le_bytes())?;
                out.write_all(name.as_bytes())?;
            }
        }
        out.write_all(b"s")?;
        out.write_all(&size.to_le_bytes())?;
        Ok(DiffWriter { out })
    }

    fn extent(&mut self, tag: u8, offset: u64, len: u64) -> io::Result<()> {
        self.out.write_all(&[tag])?;
        self.out.write_all(&offset.to_le_bytes())?;
        self.out.write_all(&len.to_le_bytes())
    }

    /// A `w` record: `data` belongs at `offset`.
    pub fn write(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.extent(b'w', offset, data.len() as u64)?;
        self.out.write_all(data)
    }

    /// A `z` record: `[offset, offset+len)` reads as zeros.
    pub fn zero(&mut self, offset: u64, len: u64) -> io::Result<()> {
        self.extent(b'z', offset, len)
    }

    /// Writes the `e` record and flushes; returns the output.
    pub fn finish(mut self) -> io::Result<W> {
        self.out.write_all(b"e")?;
        self.out.flush()?;
        Ok(self.out)
    }
}

/// What [`write_diff`] sent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Written {
    /// Bytes of data in `w` records.
    pub data_bytes: u64,
    /// Bytes covered by `z` records.
    pub zero_bytes: u64,
}

/// The image a diff is made from: the file, its path and its manifest.
pub struct Image<'a> {
    /// The revision's image.
    pub file: &'a File,
    /// Its path (for errors).
    pub path: &'a Path,
    /// Its manifest, whose image size the file has.
    pub manifest: &'a mut Manifest,
    /// The revision id (for errors).
    pub id: &'a str,
}

/// Sends `blocks` (ranges of block numbers, in order, within the image) of
/// `image` into `out`: data as `w` records, each block's bytes checked against
/// the manifest first; zero blocks as `z` records when `zeros` is set (an
/// incremental diff), else not at all (a full diff for an empty image).
///
/// A block that does not match its digest stops the stream before its `e`
/// record ([`Error::DiffSourceDamaged`]), so an import of it fails.
pub fn write_diff<W: Write>(
    out: &mut DiffWriter<W>,
    image: &mut Image<'_>,
    blocks: &[Range<u64>],
    zeros: bool,
) -> Result<Written> {
    let bs = image.manifest.block_size();
    let size = image.manifest.image_size();
    let per_chunk = (MAX_RECORD / bs).max(1);
    let mut written = Written::default();
    let mut buf = vec![0u8; (per_chunk * bs) as usize];
    let output = |source| Error::Output { source };
    for range in blocks {
        let mut first = range.start;
        while first < range.end {
            interrupt::check()?;
            let last = range.end.min(first + per_chunk);
            let digests: Vec<Digest> = (first..last)
                .map(|b| image.manifest.get(b))
                .collect::<Result<_>>()?;
            let start = first * bs;
            let end = (last * bs).min(size);
            let data = &mut buf[..(end - start) as usize];
            if digests.iter().any(|d| !d.is_zero()) {
                image
                    .file
                    .read_exact_at(data, start)
                    .map_err(Error::io("cannot read revision image", image.path))?;
            }
            // Runs of blocks of one kind (data or zero) become one record.
            let mut i = 0;
            while i < digests.len() {
                let is_zero = digests[i].is_zero();
                let mut j = i;
                while j < digests.len() && digests[j].is_zero() == is_zero {
                    j += 1;
                }
                let (lo, hi) = (i as u64 * bs, (j as u64 * bs).min(end - start));
                if is_zero {
                    if zeros {
                        out.zero(start + lo, hi - lo).map_err(output)?;
                        written.zero_bytes += hi - lo;
                    }
                } else {
                    check_blocks(image.id, start + lo, bs, &data[lo as usize..hi as usize], &digests[i..j])?;
                    out.write(start + lo, &data[lo as usize..hi as usize])
                        .map_err(output)?;
                    written.data_bytes += hi - lo;
                }
                i = j;
            }
            first = last;
        }
    }
    Ok(written)
}

/// Checks each block of `data`, which starts at image offset `offset`,
/// against its digest.
fn check_blocks(id: &str, offset: u64, bs: u64, data: &[u8], digests: &[Digest]) -> Result<()> {
    for (n, (block, want)) in data.chunks(bs as usize).zip(digests).enumerate() {
        if Digest::of(block) != *want {
            return Err(Error::DiffSourceDamaged {
                id: id.to_string(),
                offset: offset + n as u64 * bs,
            });
        }
    }
    Ok(())
}
