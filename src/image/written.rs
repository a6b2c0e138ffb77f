//! `verification: written`: read back only what a backup wrote, prove the rest
//! by where it lives on disk.
//!
//! A new image is a reflink clone of its parent, patched where the source
//! differs. A block this backup did not write still maps, byte for byte, to the
//! same physical extent as the parent's block (FIEMAP), unless something wrote
//! it since (a write to a shared extent is copied first, so it moves), the
//! filesystem gave no location, or the data is compressed (btrfs reports one
//! address for a whole compressed extent). When the mapping is the same, the
//! bytes are the parent's bytes, the very blocks on disk that the parent's
//! verification read; and when the new manifest holds the parent's digest for
//! that block, the block matches its manifest as far as the parent does.
//!
//! So the check reads:
//!
//! * every block this backup wrote or punched, from disk (its pages are
//!   dropped from the cache first, after the image was synced);
//! * every other block whose mapping is not provably the parent's: a different
//!   address, a hole in one and data in the other, an extent flagged unknown,
//!   delayed, encoded, encrypted, inline or unaligned, a digest that differs
//!   from the parent's, a block beyond the parent's end or of another length;
//!
//! and proves the rest. A block that is a hole in the new image reads as zeros
//! whatever the parent holds: it is proven when its digest is the zero marker
//! and read (and fails) otherwise.
//!
//! What this cannot see: bit rot inside the shared extents since the parent was
//! verified (the parent would read differently now, and so would this image).
//! The scheduler's per-job scrub (`scrub: 7d 10%`) reads shared data now and then
//! for that; the man page spells out the trade-off.

use std::fs::File;
use std::path::Path;

use super::VerifyReport;
use super::blockset::BlockSet;
use super::fiemap::{self, Extent, flags};
use super::prefetch::Prefetcher;
use super::reader::read_full_at;
use super::sums::{Digest, Manifest};
use crate::buf::PageBuf;
use crate::error::{Error, Result};
use crate::sys;

/// Longest read of consecutive blocks.
const RUN: u64 = 4 << 20;
/// Bytes asked to be read ahead of the block being checked.
const AHEAD: u64 = 32 << 20;

/// Flags under which an extent's `physical` does not say where its bytes are,
/// or does not say it per byte.
const NO_PROOF: u32 = flags::UNKNOWN
    | flags::DELALLOC
    | flags::ENCODED
    | flags::DATA_ENCRYPTED
    | flags::NOT_ALIGNED
    | flags::DATA_INLINE
    | flags::DATA_TAIL;

/// What a `written` verification did.
#[derive(Debug, Clone, Default)]
pub struct WrittenReport {
    /// Blocks found bad (offsets), blocks checked (read or proven), bytes read.
    pub report: VerifyReport,
    /// Blocks read back from disk.
    pub blocks_read: u64,
    /// Blocks proven by their mapping (the parent's extent, or a hole with the
    /// zero digest).
    pub blocks_proven: u64,
    /// Blocks read because their mapping is not the parent's although this
    /// backup did not write them: if one is bad, the parent is not to blame.
    pub moved: BlockSet,
    /// Why nothing could be proven (no FIEMAP), when that happened.
    pub fallback: Option<String>,
}

/// How one block not written by the backup is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// Same physical bytes as the parent's block, same digest.
    Shared,
    /// A hole of the new image with the zero digest.
    Hole,
    /// Its mapping differs from the parent's: read it.
    Moved,
    /// Nothing to compare with (flags, sizes, digests): read it.
    Read,
}

/// Where byte `at` of a file lives, by its sorted extents: `Ok((extent, end))`
/// inside an extent, `Err(next)` in a hole that ends at `next` (the next
/// extent's start, or `u64::MAX`).
fn locate(extents: &[Extent], at: u64) -> std::result::Result<&Extent, u64> {
    let i = extents.partition_point(|e| e.end() <= at);
    match extents.get(i) {
        Some(e) if e.logical <= at => Ok(e),
        Some(e) => Err(e.logical),
        None => Err(u64::MAX),
    }
}

/// Compares the mapping of `start..end` in the new image with the parent's.
/// `Check::Hole` when the range is a hole in the new image (the caller checks
/// the digest), `Check::Shared` when every byte has the same known physical
/// address in both with the same unwritten state, else `Moved` (a different
/// address or hole/data) or `Read` (flags that prove nothing).
pub fn compare_mapping(new: &[Extent], parent: &[Extent], start: u64, end: u64) -> Check {
    let mut at = start;
    let mut any_data = false;
    let mut result = Check::Shared;
    while at < end {
        let (n, p) = (locate(new, at), locate(parent, at));
        let next = match (n, p) {
            (Err(n_next), Err(p_next)) => n_next.min(p_next),
            (Ok(n), Ok(p)) => {
                any_data = true;
                if (n.flags | p.flags) & NO_PROOF != 0 {
                    return Check::Read;
                }
                let unwritten = |e: &Extent| e.flags & flags::UNWRITTEN != 0;
                let same = n.physical.checked_add(at - n.logical)
                    == p.physical.checked_add(at - p.logical)
                    && unwritten(n) == unwritten(p);
                if !same {
                    result = Check::Moved;
                }
                n.end().min(p.end())
            }
            (Ok(n), Err(p_next)) => {
                any_data = true;
                if n.flags & NO_PROOF != 0 {
                    return Check::Read;
                }
                result = Check::Moved;
                n.end().min(p_next)
            }
            (Err(n_next), Ok(p)) => {
                if p.flags & NO_PROOF != 0 {
                    return Check::Read;
                }
                // A hole in the new image only: zeros, whatever the parent held.
                result = Check::Moved;
                n_next.min(p.end())
            }
        };
        at = next.max(at + 1);
    }
    if !any_data { Check::Hole } else { result }
}

/// Decides, for every block, whether it is read or proven. `changed` are the
/// blocks this backup wrote; `digests_agree(block)` says whether the new
/// manifest holds the parent's digest for it.
pub fn plan(
    new: &[Extent],
    parent: &[Extent],
    (size, parent_size): (u64, u64),
    block_size: u64,
    changed: &BlockSet,
    mut digest_of: impl FnMut(u64) -> Result<(Digest, Option<Digest>)>,
) -> Result<(Vec<u64>, u64, BlockSet)> {
    let blocks = size.div_ceil(block_size);
    let mut read = Vec::new();
    let mut proven = 0;
    let mut moved = BlockSet::new(blocks);
    for block in 0..blocks {
        if changed.contains(block) {
            read.push(block);
            continue;
        }
        let start = block * block_size;
        let end = (start + block_size).min(size);
        // The parent's block must be the same bytes of the same length.
        let same_extent = end <= parent_size && (end - start == block_size || size == parent_size);
        let check = compare_mapping(new, parent, start, end);
        let (digest, parent_digest) = digest_of(block)?;
        let ok = match check {
            Check::Hole => digest.is_zero(),
            Check::Shared => same_extent && parent_digest == Some(digest),
            Check::Moved => {
                moved.insert(block);
                false
            }
            Check::Read => false,
        };
        if ok {
            proven += 1;
        } else {
            read.push(block);
        }
    }
    Ok((read, proven, moved))
}

/// The image's extents and the parent's, or why there are none to compare.
fn mappings(
    image: &File,
    parent: &File,
) -> std::result::Result<(Vec<Extent>, Vec<Extent>), String> {
    let get = |f: &File, sync: bool| {
        fiemap::extents(f, sync).map_err(|e| {
            if fiemap::is_unsupported(&e) {
                "the filesystem does not report extents (FIEMAP)".to_string()
            } else {
                format!("cannot read the extents: {e}")
            }
        })
    };
    Ok((get(image, true)?, get(parent, false)?))
}

/// Checks the synced new `image` against its `manifest`, reading only the
/// blocks in `changed` and those whose mapping is not provably the parent's
/// (see the module doc). `parent` is the parent's image, `parent_manifest` its
/// (verified) manifest.
pub fn verify_written(
    (image, path): (&File, &Path),
    manifest: &mut Manifest,
    parent: &File,
    parent_manifest: &mut Manifest,
    changed: &BlockSet,
    progress: &mut dyn FnMut(u64),
) -> Result<WrittenReport> {
    let bs = manifest.block_size();
    let size = manifest.image_size();
    let parent_size = parent_manifest.image_size();
    let parent_blocks = parent_manifest.blocks();
    let mut out = WrittenReport::default();
    let (read, proven, moved) = match mappings(image, parent) {
        Ok((new, old)) => plan(&new, &old, (size, parent_size), bs, changed, |b| {
            let parent = if b < parent_blocks {
                Some(parent_manifest.get(b)?)
            } else {
                None
            };
            Ok((manifest.get(b)?, parent))
        })?,
        Err(why) => {
            out.fallback = Some(why);
            ((0..manifest.blocks()).collect(), 0, BlockSet::new(0))
        }
    };
    out.blocks_proven = proven;
    out.moved = moved;
    progress(proven * bs);
    // Read the disk, not what the page cache kept of the patch.
    image
        .sync_data()
        .map_err(Error::io("cannot sync image", path))?;
    sys::drop_page_cache(image);
    read_blocks(image, path, manifest, &read, &mut out, progress)?;
    out.report.blocks = out.blocks_read + out.blocks_proven;
    Ok(out)
}

/// Reads `blocks` (sorted) of the image in runs, a few runs in flight, and
/// compares each with the manifest.
fn read_blocks(
    image: &File,
    path: &Path,
    manifest: &mut Manifest,
    blocks: &[u64],
    out: &mut WrittenReport,
    progress: &mut dyn FnMut(u64),
) -> Result<()> {
    let bs = manifest.block_size();
    let size = manifest.image_size();
    // Runs of consecutive blocks, at most RUN bytes each.
    let mut runs: Vec<(u64, u64)> = Vec::new();
    for &b in blocks {
        match runs.last_mut() {
            Some((start, end)) if *end == b && (b + 1 - *start) * bs <= RUN => *end = b + 1,
            _ => runs.push((b, b + 1)),
        }
    }
    let prefetcher = (runs.len() > 1)
        .then(|| Prefetcher::start(image))
        .transpose()
        .map_err(Error::io("cannot start reading ahead in", path))?;
    let span = |&(start, end): &(u64, u64)| (start * bs, (end * bs).min(size) - start * bs);
    let mut asked = 0;
    let mut ahead = 0u64;
    let mut buf = PageBuf::default();
    for (i, run) in runs.iter().enumerate() {
        if let Some(p) = &prefetcher {
            while asked < runs.len() && (asked <= i || ahead < AHEAD) {
                let (offset, len) = span(&runs[asked]);
                p.request(offset, len);
                ahead += len;
                asked += 1;
            }
        }
        let (offset, len) = span(run);
        ahead = ahead.saturating_sub(len);
        buf.fit(len as usize);
        match read_full_at(image, &mut buf, offset) {
            Ok(n) => check(manifest, run.0, &buf, n, out)?,
            // A block that does not read (btrfs: its checksum fails) is bad.
            Err(_) => {
                for block in run.0..run.1 {
                    let at = block * bs;
                    let len = bs.min(size - at) as usize;
                    match read_full_at(image, &mut buf[..len], at) {
                        Ok(n) => check(manifest, block, &buf[..len], n, out)?,
                        Err(_) => {
                            out.blocks_read += 1;
                            out.report.bad_offsets.push(at);
                        }
                    }
                }
            }
        }
        progress(len);
    }
    Ok(())
}

/// Compares `data` (blocks from `first`, `n` bytes of it read) with the manifest.
fn check(
    manifest: &mut Manifest,
    first: u64,
    data: &[u8],
    n: usize,
    out: &mut WrittenReport,
) -> Result<()> {
    let bs = manifest.block_size() as usize;
    out.report.bytes_read += n as u64;
    for (i, block) in data.chunks(bs).enumerate() {
        let index = first + i as u64;
        out.blocks_read += 1;
        let held = i * bs + block.len() <= n;
        if !held || Digest::of(block) != manifest.get(index)? {
            out.report.bad_offsets.push(index * bs as u64);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const BS: u64 = 65536;

    fn ext(logical: u64, physical: u64, length: u64, flags: u32) -> Extent {
        Extent {
            flags,
            ..Extent::plain(logical, physical, length)
        }
    }

    #[test]
    fn the_same_address_for_every_byte_is_shared() {
        let parent = [ext(0, 1 << 30, 4 * BS, 0)];
        // Split differently (the new image's extent was cut by a write elsewhere)
        // but the same address for every byte.
        let new = [
            ext(0, 1 << 30, BS + 4096, flags::SHARED),
            ext(BS + 4096, (1 << 30) + BS + 4096, 3 * BS - 4096, 0),
        ];
        assert_eq!(compare_mapping(&new, &parent, 0, 4 * BS), Check::Shared);
        assert_eq!(compare_mapping(&new, &parent, BS, 2 * BS), Check::Shared);
    }

    #[test]
    fn one_page_elsewhere_or_a_hole_against_data_is_moved() {
        let parent = [ext(0, 1 << 30, 2 * BS, 0)];
        let new = [
            ext(0, 1 << 30, 4096, 0),
            ext(4096, 5 << 30, 4096, 0),
            ext(8192, (1 << 30) + 8192, 2 * BS - 8192, 0),
        ];
        assert_eq!(compare_mapping(&new, &parent, 0, BS), Check::Moved);
        assert_eq!(compare_mapping(&new, &parent, BS, 2 * BS), Check::Shared);
        // The parent has data where the new image has a hole, and the reverse.
        let holey = [ext(0, 1 << 30, 4096, 0)];
        assert_eq!(compare_mapping(&holey, &parent, 0, BS), Check::Moved);
        assert_eq!(compare_mapping(&parent, &holey, 0, BS), Check::Moved);
        // Shifted by one page: same extent, other offset within it.
        let shifted = [ext(0, (1 << 30) + 4096, 2 * BS, 0)];
        assert_eq!(compare_mapping(&shifted, &parent, 0, BS), Check::Moved);
    }

    #[test]
    fn holes_in_both_are_holes_and_unwritten_must_agree() {
        let parent = [ext(2 * BS, 1 << 30, BS, 0)];
        let new = [ext(2 * BS, 1 << 30, BS, flags::UNWRITTEN)];
        assert_eq!(compare_mapping(&new, &parent, 0, BS), Check::Hole);
        assert_eq!(compare_mapping(&[], &[], 0, BS), Check::Hole);
        assert_eq!(compare_mapping(&new, &parent, 2 * BS, 3 * BS), Check::Moved);
        assert_eq!(compare_mapping(&new, &new, 2 * BS, 3 * BS), Check::Shared);
    }

    #[test]
    fn flags_without_a_per_byte_address_prove_nothing() {
        for flag in [
            flags::ENCODED,
            flags::UNKNOWN | flags::DELALLOC,
            flags::DATA_INLINE,
            flags::NOT_ALIGNED,
            flags::DATA_ENCRYPTED,
        ] {
            let e = [ext(0, 1 << 30, BS, flag)];
            assert_eq!(compare_mapping(&e, &e, 0, BS), Check::Read, "{flag:#x}");
            let plain = [ext(0, 1 << 30, BS, 0)];
            assert_eq!(compare_mapping(&plain, &e, 0, BS), Check::Read, "{flag:#x}");
        }
    }

    #[test]
    fn the_plan_reads_written_moved_and_undecided_blocks() {
        // Blocks: 0 shared, 1 written, 2 shared but another digest, 3 moved,
        // 4 a hole with zero digest, 5 a hole with data digest, 6 beyond the
        // parent's end (the image grew), shared mapping notwithstanding.
        let parent = [ext(0, 1 << 30, 7 * BS, 0)];
        let new = [
            ext(0, 1 << 30, 3 * BS, 0),
            ext(3 * BS, 9 << 30, BS, 0),
            ext(6 * BS, (1 << 30) + 6 * BS, BS, 0),
        ];
        let mut changed = BlockSet::new(7);
        changed.insert(1);
        let d = |n: u8| Digest([n; 32]);
        let (read, proven, moved) = plan(&new, &parent, (7 * BS, 6 * BS), BS, &changed, |b| {
            Ok(match b {
                2 => (d(2), Some(d(9))),
                4 => (Digest::ZERO, Some(d(4))),
                6 => (d(6), None),
                b => (d(b as u8), Some(d(b as u8))),
            })
        })
        .unwrap();
        assert_eq!(read, vec![1, 2, 3, 5, 6]);
        assert_eq!(proven, 2);
        assert_eq!(moved.iter().collect::<Vec<_>>(), vec![3]);
    }

    /// A tail block shorter than the parent's is not the parent's block.
    #[test]
    fn a_tail_of_another_length_is_read() {
        let parent = [ext(0, 1 << 30, 2 * BS, 0)];
        let changed = BlockSet::new(2);
        let same = |_| Ok((Digest([1; 32]), Some(Digest([1; 32]))));
        let (read, proven, _) =
            plan(&parent, &parent, (2 * BS - 100, 2 * BS), BS, &changed, same).unwrap();
        assert_eq!((read, proven), (vec![1], 1));
        let (read, proven, _) = plan(
            &parent,
            &parent,
            (2 * BS - 100, 2 * BS - 100),
            BS,
            &changed,
            same,
        )
        .unwrap();
        assert_eq!((read, proven), (vec![], 2));
    }
}
