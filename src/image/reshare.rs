//! Restoring the sharing between two images that a plain copy broke.
//!
//! After `cp` or `rsync` of a job directory every revision is a full copy.
//! [`reshare`] takes one revision and its base (the parent, or the revision
//! before it) and:
//!
//! 1. punches out the data extents of blocks its manifest says are zero, after
//!    reading them and finding only zeros;
//! 2. shares every run of blocks whose digests are equal (and not zero) in both
//!    manifests with the base's extents through `FIDEDUPERANGE`
//!    ([`super::dedupe`]), which compares the bytes itself;
//! 3. shares the equal 4 KiB pages of the two manifests the same way.
//!
//! Ranges whose extents are already the base's (FIEMAP: the same physical
//! place) are skipped, so a second run only asks FIEMAP. No step changes a
//! byte of content, and each ioctl is atomic, so an interruption anywhere
//! leaves both files as they were, only some of them shared.

use std::fs::{File, OpenOptions};
use std::io;
use std::ops::Range;
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::Path;

use super::dedupe::{self, Outcome};
use super::fiemap::{self, Extent};
use super::sums::{self, Manifest};
use crate::error::{Error, Result};
use crate::{interrupt, sys};

/// Manifest pages: the unit a manifest is compared and shared in.
const PAGE: u64 = 4096;
/// Bytes read at a time when checking zeros or comparing manifests.
const CHUNK: u64 = 1 << 20;

/// What [`reshare`] did, summed over the revisions of a run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Reshared {
    /// Bytes the kernel found equal and now shares with the base.
    pub bytes_deduped: u64,
    /// Ranges passed to `FIDEDUPERANGE`.
    pub ranges_deduped: u64,
    /// Bytes of equal blocks that were already shared.
    pub bytes_already_shared: u64,
    /// Bytes of zeros that were allocated and are now holes.
    pub bytes_punched: u64,
    /// Blocks (or manifest pages) the manifests call equal or zero whose bytes
    /// are not: left alone; `backy verify` tells which revision is wrong.
    pub blocks_differing: u64,
}

impl Reshared {
    /// Adds another revision's figures.
    pub fn add(&mut self, other: &Reshared) {
        self.bytes_deduped += other.bytes_deduped;
        self.ranges_deduped += other.ranges_deduped;
        self.bytes_already_shared += other.bytes_already_shared;
        self.bytes_punched += other.bytes_punched;
        self.blocks_differing += other.blocks_differing;
    }
}

/// Two files of one pair: the base (shared from) and the one reshared.
struct Pair<'a> {
    base: &'a File,
    image: &'a File,
    image_path: &'a Path,
    /// Physical ranges the two already share, as file offsets, in order.
    shared: Vec<Range<u64>>,
}

/// Makes `image` share with `base` what their manifests say is equal, and
/// punches the zero blocks it holds as data; then does the same for the two
/// manifests' equal pages. Content never changes.
pub fn reshare(
    base_path: &Path,
    base_sums: &Path,
    image_path: &Path,
    image_sums: &Path,
) -> Result<Reshared> {
    let mut done = Reshared::default();
    let mut base_manifest = Manifest::open(base_sums, false)?;
    let mut manifest = Manifest::open(image_sums, false)?;
    let base = open_checked(base_path, &base_manifest)?;
    let image = open_checked(image_path, &manifest)?;
    punch_zero_blocks(&image, image_path, &mut manifest, &mut done)?;
    let mut equal = equal_data_blocks(&mut base_manifest, &mut manifest)?;
    let size = manifest.image_size().min(base_manifest.image_size());
    let bs = manifest.block_size();
    let sizes_differ = manifest.image_size() != base_manifest.image_size();
    for run in &mut equal {
        *run = run.start * bs..(run.end * bs).min(size);
        // An unaligned end is shared only where it ends both files.
        if sizes_differ && run.end == size {
            run.end = (size / PAGE * PAGE).max(run.start);
        }
    }
    equal.retain(|run| run.start < run.end);
    let pair = Pair::new(&base, base_path, &image, image_path)?;
    pair.share(&equal, bs, &mut done)?;
    share_manifest_pages(base_sums, image_sums, &mut done)?;
    Ok(done)
}

/// Opens an image for reading and checks its size against its manifest.
fn open_checked(path: &Path, manifest: &Manifest) -> Result<File> {
    let file = File::open(path).map_err(Error::io("cannot open revision image", path))?;
    let size = super::file_size(&file, path)?;
    if size != manifest.image_size() {
        return Err(Error::ManifestSizeMismatch {
            path: path.to_owned(),
            size,
            expected: manifest.image_size(),
        });
    }
    Ok(file)
}

/// Runs of blocks that hold data (not the zero marker) and are equal in both
/// manifests: the complement of [`sums::differing_blocks`], less zero blocks.
fn equal_data_blocks(base: &mut Manifest, image: &mut Manifest) -> Result<Vec<Range<u64>>> {
    let differing = sums::differing_blocks(base, image)?;
    let blocks = image.blocks().min(base.blocks());
    let mut equal = Vec::new();
    let mut at = 0;
    for gap in differing.iter().map(|d| d.start..d.end).chain([blocks..blocks]) {
        let stop = gap.start.min(blocks);
        push_runs(&mut equal, image, at..stop, |d| !d.is_zero())?;
        at = gap.end;
        if at >= blocks {
            break;
        }
    }
    Ok(equal)
}

/// Appends to `runs` the coalesced runs of blocks in `range` whose digest
/// satisfies `keep`.
fn push_runs(
    runs: &mut Vec<Range<u64>>,
    manifest: &mut Manifest,
    range: Range<u64>,
    keep: impl Fn(&sums::Digest) -> bool,
) -> Result<()> {
    for block in range {
        if !keep(&manifest.get(block)?) {
            continue;
        }
        match runs.last_mut() {
            Some(run) if run.end == block => run.end += 1,
            _ => runs.push(block..block + 1),
        }
    }
    Ok(())
}

/// Punches the allocated parts of blocks the manifest says are zero, each
/// piece only after reading it back as zeros.
fn punch_zero_blocks(
    image: &File,
    path: &Path,
    manifest: &mut Manifest,
    done: &mut Reshared,
) -> Result<()> {
    let mut zero = Vec::new();
    push_runs(&mut zero, manifest, 0..manifest.blocks(), sums::Digest::is_zero)?;
    if zero.is_empty() {
        return Ok(());
    }
    let extents = fiemap::extents(image, true).map_err(Error::io("cannot map extents of", path))?;
    let bs = manifest.block_size();
    let size = manifest.image_size();
    let mut writable: Option<File> = None;
    let mut buf = vec![0u8; CHUNK as usize];
    for run in zero {
        let run = run.start * bs..(run.end * bs).min(size);
        for piece in intersect(&extents, &run) {
            let mut at = piece.start;
            while at < piece.end {
                interrupt::check()?;
                let len = (piece.end - at).min(CHUNK);
                let data = &mut buf[..len as usize];
                image
                    .read_exact_at(data, at)
                    .map_err(Error::io("cannot read revision image", path))?;
                if !sums::is_zero(data) {
                    tracing::warn!(
                        "{}: bytes {at}..{} are not zero although its manifest says so; left as they are (run 'backy verify')",
                        path.display(),
                        at + len
                    );
                    done.blocks_differing += len.div_ceil(bs);
                } else {
                    if writable.is_none() {
                        writable = Some(open_writable(path)?);
                    }
                    let file = writable.as_ref().unwrap();
                    sys::punch_hole(file, at, len)
                        .map_err(Error::io("cannot punch a hole into", path))?;
                    done.bytes_punched += len;
                }
                at += len;
            }
        }
    }
    Ok(())
}

/// The parts of `range` that `extents` (in file order) cover.
fn intersect(extents: &[Extent], range: &Range<u64>) -> Vec<Range<u64>> {
    extents
        .iter()
        .filter_map(|e| {
            let start = e.logical.max(range.start);
            let end = e.end().min(range.end);
            (start < end).then_some(start..end)
        })
        .collect()
}

/// Opens a complete (0440) image for punching. Root may; an owner who may
/// not gets `u+w` for the moment of the `open` only, and the old mode back.
fn open_writable(path: &Path) -> Result<File> {
    let open = || OpenOptions::new().write(true).open(path);
    match open() {
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
            let chmod = Error::io("cannot change the mode of", path);
            let mode = std::fs::metadata(path)
                .map_err(Error::io("cannot stat", path))?
                .permissions()
                .mode();
            std::fs::set_permissions(path, PermissionsExt::from_mode(mode | 0o200))
                .map_err(chmod)?;
            let file = open();
            std::fs::set_permissions(path, PermissionsExt::from_mode(mode))
                .map_err(Error::io("cannot restore the mode of", path))?;
            file.map_err(Error::io("cannot open for punching holes", path))
        }
        file => file.map_err(Error::io("cannot open for punching holes", path)),
    }
}

impl<'a> Pair<'a> {
    fn new(base: &'a File, base_path: &Path, image: &'a File, image_path: &'a Path) -> Result<Self> {
        let map = |file: &File, path: &Path| {
            fiemap::extents(file, true).map_err(Error::io("cannot map extents of", path))
        };
        let shared = shared_ranges(&map(base, base_path)?, &map(image, image_path)?);
        Ok(Pair {
            base,
            image,
            image_path,
            shared,
        })
    }

    /// Dedupes each of `runs` (byte ranges, equal offsets in both files),
    /// less what is already shared, rounded out to `unit`.
    fn share(&self, runs: &[Range<u64>], unit: u64, done: &mut Reshared) -> Result<()> {
        for run in runs {
            let pieces = subtract(run, &self.shared, unit);
            let todo: u64 = pieces.iter().map(|p| p.end - p.start).sum();
            done.bytes_already_shared += (run.end - run.start) - todo;
            for piece in pieces {
                self.dedupe(piece, unit, done)?;
            }
        }
        Ok(())
    }

    /// Dedupes one range in calls of at most [`dedupe::MAX_PER_CALL`]; a call
    /// that finds different bytes is retried `unit` by `unit`, so only the
    /// units that differ stay unshared.
    fn dedupe(&self, range: Range<u64>, unit: u64, done: &mut Reshared) -> Result<()> {
        let mut at = range.start;
        while at < range.end {
            interrupt::check()?;
            let len = (range.end - at).min(dedupe::MAX_PER_CALL);
            if self.dedupe_once(at, len)? == Outcome::Same {
                done.bytes_deduped += len;
                done.ranges_deduped += 1;
            } else {
                let mut unit_at = at;
                while unit_at < at + len {
                    let unit_len = (at + len - unit_at).min(unit);
                    if self.dedupe_once(unit_at, unit_len)? == Outcome::Same {
                        done.bytes_deduped += unit_len;
                        done.ranges_deduped += 1;
                    } else {
                        tracing::warn!(
                            "{}: bytes {unit_at}..{} differ from its base although the manifests say they are equal; left unshared (run 'backy verify')",
                            self.image_path.display(),
                            unit_at + unit_len
                        );
                        done.blocks_differing += 1;
                    }
                    unit_at += unit_len;
                }
            }
            at += len;
        }
        Ok(())
    }

    fn dedupe_once(&self, at: u64, len: u64) -> Result<Outcome> {
        dedupe::dedupe(self.base, at, self.image, at, len).map_err(|source| {
            if dedupe::is_unsupported(&source) {
                Error::DedupeUnsupported {
                    path: self.image_path.to_owned(),
                    source,
                }
            } else {
                Error::io("cannot deduplicate", self.image_path)(source)
            }
        })
    }
}

/// The file ranges where both files map to the same physical place: already
/// shared. Both extent lists are in file order.
fn shared_ranges(a: &[Extent], b: &[Extent]) -> Vec<Range<u64>> {
    let mut out: Vec<Range<u64>> = Vec::new();
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() {
        let (x, y) = (&a[i], &b[j]);
        let start = x.logical.max(y.logical);
        let end = x.end().min(y.end());
        let same_place = x.has_location()
            && y.has_location()
            && !x.is_encoded()
            && !y.is_encoded()
            && x.physical.wrapping_sub(x.logical) == y.physical.wrapping_sub(y.logical);
        if start < end && same_place {
            match out.last_mut() {
                Some(last) if last.end == start => last.end = end,
                _ => out.push(start..end),
            }
        }
        if x.end() <= y.end() {
            i += 1;
        } else {
            j += 1;
        }
    }
    out
}

/// `run` less the `shared` ranges (in order), each remaining piece rounded out
/// to multiples of `unit` (but kept inside `run`) and merged.
fn subtract(run: &Range<u64>, shared: &[Range<u64>], unit: u64) -> Vec<Range<u64>> {
    let mut out: Vec<Range<u64>> = Vec::new();
    let mut push = |start: u64, end: u64| {
        if start >= end {
            return;
        }
        let start = (start / unit * unit).max(run.start);
        let end = end.div_ceil(unit).saturating_mul(unit).min(run.end);
        match out.last_mut() {
            Some(last) if last.end >= start => last.end = last.end.max(end),
            _ => out.push(start..end),
        }
    };
    let mut at = run.start;
    let first = shared.partition_point(|s| s.end <= run.start);
    for s in &shared[first..] {
        if s.start >= run.end {
            break;
        }
        push(at, s.start.min(run.end));
        at = at.max(s.end);
    }
    push(at, run.end);
    out
}

/// Shares the equal 4 KiB pages of two manifests (a copy broke their sharing
/// as it did the images').
fn share_manifest_pages(base_sums: &Path, image_sums: &Path, done: &mut Reshared) -> Result<()> {
    let open = |p: &Path| File::open(p).map_err(Error::io("cannot open checksum manifest", p));
    let (base, image) = (open(base_sums)?, open(image_sums)?);
    let len = |f: &File, p: &Path| super::file_size(f, p);
    let (base_len, image_len) = (len(&base, base_sums)?, len(&image, image_sums)?);
    // A partial last page can be shared only where it ends both files.
    let end = if base_len == image_len {
        image_len
    } else {
        base_len.min(image_len) / PAGE * PAGE
    };
    let mut equal: Vec<Range<u64>> = Vec::new();
    let (mut a, mut b) = (vec![0u8; CHUNK as usize], vec![0u8; CHUNK as usize]);
    let mut at = 0;
    while at < end {
        let n = (end - at).min(CHUNK) as usize;
        let read = |f: &File, buf: &mut [u8], p: &Path| {
            f.read_exact_at(buf, at)
                .map_err(Error::io("cannot read checksum manifest", p))
        };
        read(&base, &mut a[..n], base_sums)?;
        read(&image, &mut b[..n], image_sums)?;
        for page in (0..n).step_by(PAGE as usize) {
            let stop = (page + PAGE as usize).min(n);
            if a[page..stop] != b[page..stop] {
                continue;
            }
            let (start, stop) = (at + page as u64, at + stop as u64);
            match equal.last_mut() {
                Some(run) if run.end == start => run.end = stop,
                _ => equal.push(start..stop),
            }
        }
        at += n as u64;
    }
    let pair = Pair::new(&base, base_sums, &image, image_sums)?;
    let mut pages = Reshared::default();
    pair.share(&equal, PAGE, &mut pages)?;
    done.bytes_deduped += pages.bytes_deduped;
    done.ranges_deduped += pages.ranges_deduped;
    done.blocks_differing += pages.blocks_differing;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ext(logical: u64, physical: u64, length: u64) -> Extent {
        Extent {
            logical,
            physical,
            length,
            flags: 0,
        }
    }

    #[test]
    fn shared_ranges_need_the_same_place_at_the_same_offset() {
        let a = [ext(0, 1000, 100), ext(100, 5000, 100), ext(300, 9000, 50)];
        let b = [ext(0, 1000, 50), ext(50, 1050, 150), ext(300, 8000, 50)];
        // 0..100 same place (two extents of b), 100..200 not, 300..350 not.
        assert_eq!(shared_ranges(&a, &b), vec![0..100]);
        assert_eq!(shared_ranges(&b, &a), vec![0..100]);
        let c = [ext(20, 1020, 30)];
        assert_eq!(shared_ranges(&a, &c), vec![20..50]);
    }

    #[test]
    fn subtract_rounds_out_to_units_inside_the_run() {
        let shared = [0..4096, 8192..12288, 70_000..80_000];
        assert_eq!(subtract(&(0..16384), &shared, 4096), vec![4096..8192, 12288..16384]);
        assert_eq!(subtract(&(0..65536), &[], 65536), vec![0..65536]);
        assert_eq!(subtract(&(0..65536), &[0..65536], 65536), vec![]);
        // A piece inside a unit becomes the whole unit; the run's end holds.
        assert_eq!(
            subtract(&(65536..100_000), &shared, 65536),
            vec![65536..100_000]
        );
    }
}
