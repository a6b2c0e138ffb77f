//! Checking an image against its manifest long after it was written (`backy
//! verify`, backy2's `scrub`): all blocks, a random sample, or a given list.
//!
//! A block is declared bad only after a second look: every block that differs
//! from its digest, or that cannot be read, is read again bypassing the page
//! cache (`O_DIRECT`; where the filesystem refuses that, after
//! `POSIX_FADV_DONTNEED`), so a transient read error or a page that went bad in
//! memory is not reported as damage on disk. A block that reads back correctly
//! is reported as [`ScrubReport::cleared`].
//!
//! A chunk the sequential reader cannot read (btrfs returns `EIO` for data
//! whose checksum fails) is read again block by block, so the error lands on
//! the blocks it belongs to and the rest of the image is still checked.
//!
//! [`block_location`] says where a block lives on disk, from the extents
//! [`super::fiemap`] reports: two images whose block maps to the same
//! physical range hold the same bytes, so damage found in one is in the other.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use super::fiemap::Extent;
use super::file_size;
use super::reader::{CHUNK, Chunk, read_full_at, read_sequential_from};
use super::sums::{DIGESTS_PER_PAGE, Digest, Manifest};
use crate::buf::PageBuf;
use crate::error::{Error, Result};
use crate::sys;

/// Alignment of `O_DIRECT` buffers, offsets and lengths (the largest logical
/// block size of the devices we run on).
const DIRECT_ALIGN: usize = 4096;
// Its buffer is a `PageBuf`, which starts at a multiple of this.
const _: () = assert!(crate::buf::ALIGN.is_multiple_of(DIRECT_ALIGN));
/// Blocks of a list asked to be read ahead at a time.
const LIST_AHEAD: usize = 64;

/// A block that failed the second look too.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadBlock {
    /// Its offset in the image.
    pub offset: u64,
    /// `None`: it reads, but differs from its digest; otherwise why it cannot be read.
    pub unreadable: Option<String>,
}

/// What a scrub found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ScrubReport {
    /// Blocks compared with the manifest.
    pub blocks_checked: u64,
    /// Bytes of the image read (holes are not read).
    pub bytes_read: u64,
    /// Blocks that differ or cannot be read, also when read again uncached; by offset.
    pub bad: Vec<BadBlock>,
    /// Offsets of blocks that differed (or failed to read) at first but were
    /// right when read again uncached.
    pub cleared: Vec<u64>,
}

impl ScrubReport {
    /// The offsets of the bad blocks.
    pub fn bad_offsets(&self) -> Vec<u64> {
        self.bad.iter().map(|b| b.offset).collect()
    }
}

/// Reads a block again, past the page cache.
pub trait Reread {
    /// Fills `buf` from `offset`; returns the bytes read (fewer at the end).
    fn reread(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<usize>;
}

/// The real second look: `O_DIRECT`, or `POSIX_FADV_DONTNEED` and a normal read.
pub struct Uncached<'a> {
    cached: &'a File,
    direct: Option<File>,
    aligned: PageBuf,
}

impl<'a> Uncached<'a> {
    /// For the image at `path`, open as `cached`.
    pub fn new(cached: &'a File, path: &Path) -> Uncached<'a> {
        let direct = OpenOptions::new()
            .read(true)
            .custom_flags((rustix::fs::OFlags::DIRECT | rustix::fs::OFlags::NOFOLLOW).bits() as i32)
            .open(path)
            .ok();
        Uncached {
            cached,
            direct,
            aligned: PageBuf::default(),
        }
    }

    fn read_direct(&mut self, direct: &File, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        let len = buf.len().div_ceil(DIRECT_ALIGN) * DIRECT_ALIGN;
        let window = self.aligned.fit(len);
        let n = read_full_at(direct, window, offset)?.min(buf.len());
        buf[..n].copy_from_slice(&window[..n]);
        Ok(n)
    }
}

impl Reread for Uncached<'_> {
    fn reread(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        if offset.is_multiple_of(DIRECT_ALIGN as u64)
            && let Some(direct) = self.direct.take()
        {
            let result = self.read_direct(&direct, offset, buf);
            let einval = rustix::io::Errno::INVAL.raw_os_error();
            let refused = matches!(&result, Err(e) if e.raw_os_error() == Some(einval));
            if !refused {
                self.direct = Some(direct);
                return result;
            }
            // The filesystem takes O_DIRECT opens but not reads: use the fallback
            // from now on.
        }
        sys::drop_cached_range(self.cached, offset, buf.len() as u64);
        read_full_at(self.cached, buf, offset)
    }
}

/// Checks `image` against `manifest`: every block when `blocks` is `None`,
/// otherwise the listed block numbers (ascending). Sizes must agree.
pub fn scrub(
    image: &File,
    path: &Path,
    manifest: &mut Manifest,
    blocks: Option<&[u64]>,
    progress: &mut dyn FnMut(u64),
) -> Result<ScrubReport> {
    let mut uncached = Uncached::new(image, path);
    scrub_with(image, path, manifest, blocks, progress, &mut uncached)
}

/// [`scrub`] with the second look given.
pub fn scrub_with(
    image: &File,
    path: &Path,
    manifest: &mut Manifest,
    blocks: Option<&[u64]>,
    progress: &mut dyn FnMut(u64),
    reread: &mut dyn Reread,
) -> Result<ScrubReport> {
    let size = file_size(image, path)?;
    if size != manifest.image_size() {
        return Err(Error::ManifestSizeMismatch {
            path: path.to_owned(),
            size,
            expected: manifest.image_size(),
        });
    }
    let mut report = ScrubReport::default();
    let mut suspects = Vec::new();
    match blocks {
        None => read_all(image, path, manifest, &mut report, &mut suspects, progress)?,
        Some(list) => read_list(image, manifest, list, &mut report, &mut suspects, progress)?,
    }
    second_look(manifest, suspects, &mut report, reread)?;
    Ok(report)
}

/// A block that failed the first look: its number and the read error, if any.
type Suspect = (u64, Option<io::Error>);

/// Whether the first look at block `index` should see a flipped byte (the
/// `verify-misread` failpoint: a transient misread, as bad RAM or a flaky
/// cable cause, on the first data block read).
fn misread(first_data_block: &mut bool) -> bool {
    std::mem::replace(first_data_block, false) && crate::failpoint::active("verify-misread")
}

fn read_all(
    image: &File,
    path: &Path,
    manifest: &mut Manifest,
    report: &mut ScrubReport,
    suspects: &mut Vec<Suspect>,
    progress: &mut dyn FnMut(u64),
) -> Result<()> {
    let size = manifest.image_size();
    let bs = manifest.block_size();
    let mut first_data = true;
    let mut pos = 0;
    while pos < size {
        let mut done = pos;
        let read = read_sequential_from(image, path, pos, size, bs, |chunk| {
            match chunk {
                Chunk::Data { offset, buf } => {
                    for (i, block) in buf.chunks(bs as usize).enumerate() {
                        let index = offset / bs + i as u64;
                        let digest = if misread(&mut first_data) {
                            let mut garbled = block.to_vec();
                            garbled[0] ^= 0x01;
                            Digest::of(&garbled)
                        } else {
                            Digest::of(block)
                        };
                        if manifest.get(index)? != digest {
                            suspects.push((index, None));
                        }
                        report.blocks_checked += 1;
                    }
                    report.bytes_read += buf.len() as u64;
                    done = offset + buf.len() as u64;
                    progress(buf.len() as u64);
                }
                Chunk::Hole { offset, len } => {
                    let (first, end) = (offset / bs, (offset + len).div_ceil(bs));
                    // Digests in a hole of the manifest are zero markers: skip
                    // them, so a sparse image costs what its data costs.
                    let mut index = first;
                    while index < end {
                        index = manifest.next_maybe_nonzero(index)?.min(end);
                        let page_end = (index / DIGESTS_PER_PAGE + 1) * DIGESTS_PER_PAGE;
                        for index in index..page_end.min(end) {
                            if !manifest.get(index)?.is_zero() {
                                suspects.push((index, None));
                            }
                        }
                        index = page_end;
                    }
                    report.blocks_checked += end - first;
                    done = offset + len;
                    progress(*len);
                }
            }
            Ok(())
        });
        match read {
            Ok(()) => return Ok(()),
            // The chunk at `done` did not read: take it block by block.
            Err(Error::Io { .. } | Error::ReadFailed { .. }) if done < size => {
                let end = ((done / CHUNK + 1) * CHUNK).min(size);
                let list: Vec<u64> = (done / bs..end.div_ceil(bs)).collect();
                read_list(image, manifest, &list, report, suspects, progress)?;
                pos = end;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn read_list(
    image: &File,
    manifest: &mut Manifest,
    list: &[u64],
    report: &mut ScrubReport,
    suspects: &mut Vec<Suspect>,
    progress: &mut dyn FnMut(u64),
) -> Result<()> {
    let bs = manifest.block_size();
    let mut buf = PageBuf::zeroed(bs as usize);
    for (i, &index) in list.iter().enumerate() {
        if i % LIST_AHEAD == 0 {
            // Many reads in flight are far faster than one at a time.
            for &ahead in &list[i..(i + LIST_AHEAD).min(list.len())] {
                sys::prefetch(image, ahead * bs, bs);
            }
        }
        crate::interrupt::check()?;
        let len = block_len(manifest, index);
        let block = &mut buf[..len];
        report.blocks_checked += 1;
        match read_full_at(image, block, index * bs) {
            Ok(n) if n == len => {
                report.bytes_read += n as u64;
                if manifest.get(index)? != Digest::of(block) {
                    suspects.push((index, None));
                }
            }
            Ok(n) => suspects.push((
                index,
                Some(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("the image ends {n} bytes into the block"),
                )),
            )),
            Err(e) => suspects.push((index, Some(e))),
        }
        progress(len as u64);
    }
    Ok(())
}

fn block_len(manifest: &Manifest, index: u64) -> usize {
    let bs = manifest.block_size();
    (manifest.image_size() - index * bs).min(bs) as usize
}

fn second_look(
    manifest: &mut Manifest,
    suspects: Vec<Suspect>,
    report: &mut ScrubReport,
    reread: &mut dyn Reread,
) -> Result<()> {
    let bs = manifest.block_size();
    let mut buf = PageBuf::zeroed(bs as usize);
    for (index, first_error) in suspects {
        let offset = index * bs;
        let len = block_len(manifest, index);
        let block = &mut buf[..len];
        let unreadable = match reread.reread(offset, block) {
            Ok(n) if n == len => {
                if manifest.get(index)? == Digest::of(block) {
                    let first = match &first_error {
                        Some(e) => format!("could not be read ({e})"),
                        None => "differed from its checksum".into(),
                    };
                    tracing::warn!(
                        "The block at offset {offset} {first} but is right when read again past the page cache: a transient error, not counted as damage"
                    );
                    report.cleared.push(offset);
                    continue;
                }
                None
            }
            Ok(n) => Some(format!("the image ends {n} bytes into the block")),
            Err(e) => Some(e.to_string()),
        };
        report.bad.push(BadBlock { offset, unreadable });
    }
    Ok(())
}

/// `n` of `blocks` block numbers (`percent` of them, at least one), chosen at
/// random, ascending.
pub fn sample_blocks(blocks: u64, percent: f64) -> Vec<u64> {
    if blocks == 0 {
        return Vec::new();
    }
    let n = ((blocks as f64 * percent / 100.0).ceil() as u64).clamp(1, blocks);
    let mut chosen: Vec<u64> =
        rand::seq::index::sample(&mut rand::rng(), blocks as usize, n as usize)
            .into_iter()
            .map(|i| i as u64)
            .collect();
    chosen.sort_unstable();
    chosen
}

/// One piece of a block on disk: the extent's physical start, how far into the
/// extent the piece starts, and its length. Two pieces that are equal are the
/// same bytes on disk.
pub type Piece = (u64, u64, u64);

/// Where `offset..offset + len` of a file lives, from its `extents` (in file
/// order, as [`super::fiemap::extents`] returns them): the pieces in order, or
/// `None` when part of the range is a hole or has no known location (then no
/// other file can be said to share it).
pub fn block_location(extents: &[Extent], offset: u64, len: u64) -> Option<Vec<Piece>> {
    let end = offset + len;
    let first = extents.partition_point(|e| e.end() <= offset);
    let mut pieces: Vec<Piece> = Vec::new();
    let mut last_encoded = false;
    let mut at = offset;
    for e in &extents[first..] {
        if at >= end {
            break;
        }
        if e.logical > at || !e.has_location() {
            return None;
        }
        let piece_end = e.end().min(end);
        let into = at - e.logical;
        // Compressed (encoded) extents: the physical start names the extent,
        // the distance into it is logical.
        let piece = if e.is_encoded() {
            (e.physical, into, piece_end - at)
        } else {
            (e.physical + into, 0, piece_end - at)
        };
        // Filesystems split extents differently in different files (one
        // shared range may be two extents in one of them): join what is
        // contiguous on disk, so equal bytes give equal pieces.
        match pieces.last_mut() {
            Some(last) if !e.is_encoded() && !last_encoded && last.0 + last.2 == piece.0 => {
                last.2 += piece.2;
            }
            _ => pieces.push(piece),
        }
        last_encoded = e.is_encoded();
        at = piece_end;
    }
    (at >= end).then_some(pieces)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::fiemap::flags;
    use std::os::unix::fs::FileExt;
    use std::path::PathBuf;

    const BS: u64 = crate::image::sums::BLOCK_SIZE;

    /// An image of `blocks` (0 = hole) and its manifest.
    fn image_and_manifest(dir: &Path, blocks: &[u8]) -> (PathBuf, Manifest) {
        let path = dir.join("img");
        let f = File::create(&path).unwrap();
        let size = blocks.len() as u64 * BS;
        f.set_len(size).unwrap();
        let mut m = Manifest::create(&dir.join("img.sums"), size).unwrap();
        for (i, &b) in blocks.iter().enumerate() {
            if b != 0 {
                let data = vec![b; BS as usize];
                f.write_all_at(&data, i as u64 * BS).unwrap();
                m.set(i as u64, Digest::of(&data)).unwrap();
            }
        }
        m.sync().unwrap();
        (path, m)
    }

    /// A second look that answers from a script: per offset, the bytes or an error.
    struct Scripted(Vec<(u64, io::Result<Vec<u8>>)>);

    impl Reread for Scripted {
        fn reread(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
            let i = self
                .0
                .iter()
                .position(|(o, _)| *o == offset)
                .expect("scripted");
            match self.0.remove(i).1 {
                Ok(data) => {
                    buf.copy_from_slice(&data);
                    Ok(buf.len())
                }
                Err(e) => Err(e),
            }
        }
    }

    /// A block that differs at first and is right when read again uncached is
    /// cleared, not bad; one that differs both times is bad, at its offset; one
    /// that fails to read again (EIO) is bad with the error.
    #[test]
    fn only_blocks_that_fail_the_second_look_are_bad() {
        let dir = tempfile::tempdir().unwrap();
        let (path, mut m) = image_and_manifest(dir.path(), &[1, 2, 0, 4, 5, 6]);
        let f = File::options().write(true).open(&path).unwrap();
        for b in [1, 3, 4] {
            f.write_all_at(b"rot", b * BS + 100).unwrap();
        }
        let file = File::open(&path).unwrap();
        let mut second = Scripted(vec![
            (BS, Ok(vec![2; BS as usize])),
            (3 * BS, Ok(vec![9; BS as usize])),
            (4 * BS, Err(io::Error::from_raw_os_error(5))),
        ]);
        let report = scrub_with(&file, &path, &mut m, None, &mut |_| {}, &mut second).unwrap();
        assert_eq!(report.blocks_checked, 6);
        assert_eq!(report.cleared, vec![BS]);
        assert_eq!(report.bad_offsets(), vec![3 * BS, 4 * BS]);
        assert_eq!(report.bad[0].unreadable, None);
        let why = report.bad[1].unreadable.as_deref().unwrap();
        assert!(why.contains("os error 5"), "{why}");
        assert!(second.0.is_empty(), "every suspect was read again");
    }

    /// The real second look (O_DIRECT where the filesystem takes it) reads what
    /// is on disk; a listed scrub checks only the listed blocks.
    #[test]
    fn a_list_is_checked_and_read_again_uncached() {
        let dir = tempfile::tempdir().unwrap();
        let (path, mut m) = image_and_manifest(dir.path(), &[1, 2, 3, 4]);
        let f = File::options().write(true).open(&path).unwrap();
        f.write_all_at(b"rot", 2 * BS + 7).unwrap();
        f.sync_all().unwrap();
        let file = File::open(&path).unwrap();
        let report = scrub(&file, &path, &mut m, Some(&[0, 2]), &mut |_| {}).unwrap();
        assert_eq!(report.blocks_checked, 2);
        assert_eq!(report.bad_offsets(), vec![2 * BS]);
        assert!(report.cleared.is_empty());
        let report = scrub(&file, &path, &mut m, Some(&[1, 3]), &mut |_| {}).unwrap();
        assert!(report.bad.is_empty());
        let mut uncached = Uncached::new(&file, &path);
        let mut buf = vec![0u8; BS as usize];
        assert_eq!(uncached.reread(3 * BS, &mut buf).unwrap(), BS as usize);
        assert!(buf.iter().all(|&b| b == 4));
    }

    #[test]
    fn samples_are_a_share_and_at_least_one() {
        assert_eq!(sample_blocks(0, 10.0), Vec::<u64>::new());
        assert_eq!(sample_blocks(5, 0.001).len(), 1);
        assert_eq!(sample_blocks(1000, 10.0).len(), 100);
        assert_eq!(sample_blocks(7, 100.0), (0..7).collect::<Vec<_>>());
        let s = sample_blocks(100_000, 1.5);
        assert_eq!(s.len(), 1500);
        assert!(s.windows(2).all(|w| w[0] < w[1]));
    }

    fn extent(logical: u64, physical: u64, length: u64, flags: u32) -> Extent {
        Extent {
            logical,
            physical,
            length,
            flags,
        }
    }

    #[test]
    fn a_block_location_is_its_pieces_on_disk() {
        let list = [
            extent(0, 1 << 20, 96 << 10, 0),
            extent(96 << 10, 8 << 20, 32 << 10, flags::SHARED),
            extent(256 << 10, 9 << 20, 64 << 10, flags::ENCODED),
            extent(320 << 10, 0, 64 << 10, flags::DELALLOC | flags::UNKNOWN),
        ];
        assert_eq!(block_location(&list, 0, BS), Some(vec![((1 << 20), 0, BS)]));
        assert_eq!(
            block_location(&list, BS, BS),
            Some(vec![((1 << 20) + BS, 0, 32 << 10), (8 << 20, 0, 32 << 10)])
        );
        // Extents split where another file has one: the same pieces.
        let split = [
            extent(0, 1 << 20, 32 << 10, 0),
            extent(32 << 10, (1 << 20) + (32 << 10), 96 << 10, 0),
        ];
        assert_eq!(block_location(&split, 0, BS), block_location(&list, 0, BS));
        // A hole, a compressed extent, no location.
        assert_eq!(block_location(&list, 2 * BS, BS), None);
        assert_eq!(
            block_location(&list, 4 * BS, BS),
            Some(vec![(9 << 20, 0, BS)])
        );
        assert_eq!(block_location(&list, 5 * BS, BS), None);
        assert_eq!(block_location(&list, 6 * BS, BS), None);
    }
}
