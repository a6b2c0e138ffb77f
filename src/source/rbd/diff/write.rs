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
                    check_blocks(
                        image.id,
                        start + lo,
                        bs,
                        &data[lo as usize..hi as usize],
                        &digests[i..j],
                    )?;
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

#[cfg(test)]
mod tests {
    use std::fs::OpenOptions;

    use proptest::prelude::*;

    use super::*;
    use crate::image::sums::{BLOCK_SIZE, Manifest, differing_blocks};
    use crate::image::writer::ImageWriter;
    use crate::source::rbd::diff::{Expect, apply};

    /// One block's content: zeros, or a pattern from a seed.
    fn block(seed: u8) -> Vec<u8> {
        if seed == 0 {
            return vec![0; BLOCK_SIZE as usize];
        }
        (0..BLOCK_SIZE as usize)
            .map(|i| (i as u8).wrapping_mul(seed) ^ seed)
            .collect()
    }

    /// An image of `blocks` (block seeds) cut to `size`, with its manifest.
    fn make(
        dir: &Path,
        name: &str,
        blocks: &[u8],
        size: u64,
    ) -> (std::path::PathBuf, std::path::PathBuf) {
        let mut data: Vec<u8> = blocks.iter().flat_map(|&s| block(s)).collect();
        data.resize(size as usize, 0);
        let image = dir.join(name);
        let sums = dir.join(format!("{name}.sums"));
        std::fs::write(&image, &data).unwrap();
        let mut m = Manifest::create(&sums, size).unwrap();
        for (n, chunk) in data.chunks(BLOCK_SIZE as usize).enumerate() {
            m.set(n as u64, Digest::of(chunk)).unwrap();
        }
        m.sync().unwrap();
        (image, sums)
    }

    /// The diff from `from` (a manifest, or none for a full diff) to `to`.
    fn diff(from: Option<&Path>, to: (&Path, &Path)) -> Vec<u8> {
        let file = File::open(to.0).unwrap();
        let mut manifest = Manifest::open(to.1, false).unwrap();
        let blocks = match from {
            Some(from) => {
                let mut base = Manifest::open(from, false).unwrap();
                let mut d = differing_blocks(&mut base, &mut manifest).unwrap();
                let end = manifest.blocks();
                d.retain_mut(|r| {
                    r.end = r.end.min(end);
                    r.start < r.end
                });
                d
            }
            None => std::iter::once(0..manifest.blocks()).collect(),
        };
        let size = manifest.image_size();
        let mut out =
            DiffWriter::new(Vec::new(), from.map(|_| "backy-a"), Some("backy-b"), size).unwrap();
        let mut image = Image {
            file: &file,
            path: to.0,
            manifest: &mut manifest,
            id: "b",
        };
        write_diff(&mut out, &mut image, &blocks, from.is_some()).unwrap();
        out.finish().unwrap()
    }

    /// Applies `stream` with backy's own parser and applier to `image`.
    fn apply_to(image: &Path, sums: &Path, stream: &[u8], from: Option<&str>) {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(image)
            .unwrap();
        let manifest = Manifest::open(sums, true).unwrap();
        let mut writer = ImageWriter::new(file, image, manifest, true);
        let expect = Expect {
            from_snap: from.map(String::from),
            to_snap: Some("backy-b".into()),
            size: None,
        };
        apply(stream, &mut writer, &expect).unwrap();
        writer.finish().unwrap();
    }

    fn seeds() -> impl Strategy<Value = Vec<u8>> {
        prop::collection::vec(prop_oneof![Just(0u8), 1u8..4], 0..24)
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 40, ..ProptestConfig::default() })]

        /// A diff written from two manifests, parsed and applied to a copy of
        /// revision A, gives revision B, in either direction and as a full
        /// diff onto an empty image.
        #[test]
        fn written_diffs_take_a_to_b(
            a in seeds(), b in seeds(), a_tail in 0u64..BLOCK_SIZE, b_tail in 0u64..BLOCK_SIZE,
        ) {
            let dir = tempfile::tempdir().unwrap();
            let a_size = (a.len() as u64 * BLOCK_SIZE).saturating_sub(a_tail);
            let b_size = (b.len() as u64 * BLOCK_SIZE).saturating_sub(b_tail);
            let (a_img, a_sums) = make(dir.path(), "a", &a, a_size);
            let (b_img, b_sums) = make(dir.path(), "b", &b, b_size);
            let want_b = std::fs::read(&b_img).unwrap();
            let want_a = std::fs::read(&a_img).unwrap();

            // Forwards: a copy of A (and its manifest) becomes B.
            let (img, sums) = (dir.path().join("x"), dir.path().join("x.sums"));
            std::fs::copy(&a_img, &img).unwrap();
            std::fs::copy(&a_sums, &sums).unwrap();
            apply_to(&img, &sums, &diff(Some(&a_sums), (&b_img, &b_sums)), Some("backy-a"));
            prop_assert_eq!(&std::fs::read(&img).unwrap(), &want_b);

            // Backwards: the B we now have goes back to A.
            // (The test's streams always name backy-a and backy-b.)
            let back = diff(Some(&b_sums), (&a_img, &a_sums));
            apply_to(&img, &sums, &back, Some("backy-a"));
            prop_assert_eq!(&std::fs::read(&img).unwrap(), &want_a);

            // Full: an empty image becomes B.
            let (empty, empty_sums) = (dir.path().join("e"), dir.path().join("e.sums"));
            File::create(&empty).unwrap();
            Manifest::create(&empty_sums, 0).unwrap();
            apply_to(&empty, &empty_sums, &diff(None, (&b_img, &b_sums)), None);
            prop_assert_eq!(&std::fs::read(&empty).unwrap(), &want_b);
        }
    }

    /// A block that does not match its manifest ends the stream before `e`,
    /// so the parser reports it truncated.
    #[test]
    fn a_damaged_block_cuts_the_stream_short() {
        let dir = tempfile::tempdir().unwrap();
        let (img, sums) = make(dir.path(), "a", &[1, 2, 3], 3 * BLOCK_SIZE);
        std::fs::OpenOptions::new()
            .write(true)
            .open(&img)
            .unwrap()
            .write_all_at(b"rot", BLOCK_SIZE + 7)
            .unwrap();
        let file = File::open(&img).unwrap();
        let mut manifest = Manifest::open(&sums, false).unwrap();
        let mut out = DiffWriter::new(Vec::new(), None, Some("backy-a"), 3 * BLOCK_SIZE).unwrap();
        let mut image = Image {
            file: &file,
            path: &img,
            manifest: &mut manifest,
            id: "a",
        };
        let all = std::iter::once(0..3).collect::<Vec<_>>();
        let e = write_diff(&mut out, &mut image, &all, false).unwrap_err();
        assert!(
            matches!(e, Error::DiffSourceDamaged { offset, .. } if offset == BLOCK_SIZE),
            "{e}"
        );
    }

    #[test]
    fn records_are_laid_out_as_rbd_writes_them() {
        let mut out = DiffWriter::new(Vec::new(), Some("f1"), Some("t22"), 0x1234).unwrap();
        out.write(7, b"ab").unwrap();
        out.zero(9, 3).unwrap();
        let bytes = out.finish().unwrap();
        let mut want = b"rbd diff v1\n".to_vec();
        want.extend(b"f\x02\0\0\0f1t\x03\0\0\0t22s\x34\x12\0\0\0\0\0\0");
        want.extend(b"w\x07\0\0\0\0\0\0\0\x02\0\0\0\0\0\0\0ab");
        want.extend(b"z\x09\0\0\0\0\0\0\0\x03\0\0\0\0\0\0\0e");
        assert_eq!(bytes, want);
    }
}
