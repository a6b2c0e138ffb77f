//! Restoring the sharing between two images that a plain copy broke.
//!
//! After `cp` or `rsync` of a job directory every revision is a full copy (and
//! `rsync` without `--sparse` fills the holes with zeros). [`reshare`] takes one
//! revision and its base (the parent, or the revision before it) and:
//!
//! 1. punches out the data extents of blocks its manifest says are zero, after
//!    reading them and finding only zeros;
//! 2. shares every run of blocks whose digests are equal (and not zero) in both
//!    manifests with the base's extents through `FIDEDUPERANGE`
//!    ([`super::dedupe`]), which compares the bytes itself;
//! 3. in the blocks that differ, reads both images and shares the equal 4 KiB
//!    pages and punches the zero ones, as a backup wrote only the changed pages;
//! 4. shares the equal 4 KiB pages of the two manifests;
//! 5. on btrfs, when steps 1 to 3 changed anything, moves the data left only in
//!    the copy's own extents into new extents (written to a temporary file
//!    [`TEMP_PREFIX`]`<pid>` beside the image, then shared into the image by
//!    `FIDEDUPERANGE`, which compares again). btrfs frees an extent only when no
//!    file refers to any part of it, and `rsync` writes extents of up to
//!    128 MiB: without this step a few changed pages would keep each whole
//!    extent of the copy allocated. XFS frees per block and needs no such step.
//!
//! A revision without a base (the oldest) gets steps 1 and 3 (zero pages only).
//! Ranges whose extents are already the base's (FIEMAP: the same physical
//! place) are skipped, and step 3 reads only extents no other file shares, so
//! a second run reads only what the first could not share. No step changes a
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

/// The name of step 5's temporary file in the job directory, before the pid;
/// one left by a crash is removed by the next reshare.
pub const TEMP_PREFIX: &str = ".reshare.";

/// Pages: the unit of step 3 and of manifests.
const PAGE: u64 = 4096;
/// Bytes read at a time.
const CHUNK: u64 = 1 << 20;
/// Bytes of ranges to share that are prefetched ahead of `FIDEDUPERANGE`.
const PREFETCH_AHEAD: u64 = 64 << 20;

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
    /// Bytes moved into new extents (step 5, btrfs).
    pub bytes_relocated: u64,
    /// Blocks (or pages) the manifests call equal or zero whose bytes are
    /// not: left alone; `backy verify` tells which revision is wrong.
    pub blocks_differing: u64,
}

impl Reshared {
    /// Adds another revision's figures.
    pub fn add(&mut self, other: &Reshared) {
        self.bytes_deduped += other.bytes_deduped;
        self.ranges_deduped += other.ranges_deduped;
        self.bytes_already_shared += other.bytes_already_shared;
        self.bytes_punched += other.bytes_punched;
        self.bytes_relocated += other.bytes_relocated;
        self.blocks_differing += other.blocks_differing;
    }
}

/// An image and its manifest, as [`reshare`] is given them.
#[derive(Debug, Clone, Copy)]
pub struct Files<'a> {
    /// The image.
    pub image: &'a Path,
    /// Its manifest.
    pub sums: &'a Path,
}

/// Two files of one pair: the base (shared from) and the one reshared.
struct Pair<'a> {
    base: &'a File,
    base_path: &'a Path,
    image: &'a File,
    image_path: &'a Path,
    /// File ranges with nothing to do, in order: the two share the physical
    /// place already, or the image has a hole.
    shared: Vec<Range<u64>>,
}

/// Makes `revision` share with `base` what is equal (steps 1 to 4 of the
/// module docs); without a base, only punches its zeros. With `relocate`
/// (btrfs), step 5 follows. Content never changes.
pub fn reshare(revision: Files<'_>, base: Option<Files<'_>>, relocate: bool) -> Result<Reshared> {
    let mut done = share(revision, base)?;
    if relocate {
        let changed = done.bytes_deduped + done.bytes_punched > 0;
        relocate_own_extents(revision.image, changed, &mut done)?;
    }
    Ok(done)
}

/// Steps 1 to 4.
fn share(revision: Files<'_>, base: Option<Files<'_>>) -> Result<Reshared> {
    let mut done = Reshared::default();
    let mut manifest = Manifest::open(revision.sums, false)?;
    let image = open_checked(revision.image, &manifest)?;
    let map = |file: &File, path: &Path| {
        fiemap::extents(file, true).map_err(Error::io("cannot map extents of", path))
    };
    let mut puncher = Puncher {
        path: revision.image,
        extents: map(&image, revision.image)?,
        writable: None,
    };
    puncher.zero_blocks(&image, &mut manifest, &mut done)?;
    let bs = manifest.block_size();
    let size = manifest.image_size();
    let to_bytes = |runs: Vec<Range<u64>>, end: u64| -> Vec<Range<u64>> {
        runs.into_iter()
            .map(|r| r.start * bs..(r.end * bs).min(end))
            .filter(|r| r.start < r.end)
            .collect()
    };
    let Some(base) = base else {
        let mut data = Vec::new();
        let blocks = manifest.blocks();
        push_runs(&mut data, &mut manifest, 0..blocks, |d| !d.is_zero())?;
        let unshared = puncher.unshared(&to_bytes(data, size));
        return page_pass(&image, None, &unshared, &mut puncher, &mut done).map(|()| done);
    };
    let mut base_manifest = Manifest::open(base.sums, false)?;
    let base_file = open_checked(base.image, &base_manifest)?;
    let common = size.min(base_manifest.image_size());
    let mut equal = to_bytes(
        equal_data_blocks(&mut base_manifest, &mut manifest)?,
        common,
    );
    if size != base_manifest.image_size() {
        // An unaligned end is shared only where it ends both files.
        for run in &mut equal {
            if run.end == common {
                run.end = (common / PAGE * PAGE).max(run.start);
            }
        }
    }
    let pair = Pair::new(&base_file, base.image, &image, revision.image)?;
    pair.share(&equal, bs, &mut done)?;
    let mut differing = sums::differing_blocks(&mut base_manifest, &mut manifest)?;
    differing.retain_mut(|r| {
        r.end = r.end.min(manifest.blocks());
        r.start < r.end
    });
    let unshared = puncher.unshared(&to_bytes(differing, size));
    page_pass(
        &image,
        Some((&pair, base_manifest.image_size())),
        &unshared,
        &mut puncher,
        &mut done,
    )?;
    share_manifest_pages(base.sums, revision.sums, &mut done)?;
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
    for gap in differing
        .iter()
        .map(|d| d.start..d.end)
        .chain(std::iter::once(blocks..blocks))
    {
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
        push_range(runs, block..block + 1);
    }
    Ok(())
}

/// Appends `range` to `runs`, merged with the last one where they touch.
fn push_range(runs: &mut Vec<Range<u64>>, range: Range<u64>) {
    match runs.last_mut() {
        Some(run) if run.end == range.start => run.end = range.end,
        _ => runs.push(range),
    }
}

/// Step 3: reads `runs` (byte ranges) of `image`, and of the base where it
/// has them; punches the allocated zero pages and shares the pages equal to
/// the base's.
fn page_pass(
    image: &File,
    base: Option<(&Pair<'_>, u64)>,
    runs: &[Range<u64>],
    puncher: &mut Puncher<'_>,
    done: &mut Reshared,
) -> Result<()> {
    let (mut mine, mut theirs) = (vec![0u8; CHUNK as usize], vec![0u8; CHUNK as usize]);
    let (mut zero, mut equal) = (Vec::new(), Vec::new());
    let image_size = super::file_size(image, puncher.path)?;
    for run in runs {
        let mut at = run.start;
        while at < run.end {
            interrupt::check()?;
            let len = (run.end - at).min(CHUNK);
            let data = &mut mine[..len as usize];
            image
                .read_exact_at(data, at)
                .map_err(Error::io("cannot read revision image", puncher.path))?;
            let mut base_len = 0;
            if let Some((pair, base_size)) = base {
                base_len = len.min(base_size.saturating_sub(at));
                pair.base
                    .read_exact_at(&mut theirs[..base_len as usize], at)
                    .map_err(Error::io("cannot read revision image", pair.base_path))?;
                // A partial last page is shared only where it ends both files.
                if base_size != image_size && at + base_len == base_size.min(image_size) {
                    base_len = base_len / PAGE * PAGE;
                }
            }
            for page in (0..len).step_by(PAGE as usize) {
                let stop = (page + PAGE).min(len);
                let bytes = &data[page as usize..stop as usize];
                if sums::is_zero(bytes) {
                    push_range(&mut zero, at + page..at + stop);
                } else if stop <= base_len && theirs[page as usize..stop as usize] == *bytes {
                    push_range(&mut equal, at + page..at + stop);
                }
            }
            at += len;
        }
    }
    for range in zero {
        puncher.punch_known_zero(&range, done)?;
    }
    if let Some((pair, _)) = base {
        pair.share(&equal, PAGE, done)?;
    }
    Ok(())
}

/// Punches holes into one image, only where it has data extents.
struct Puncher<'a> {
    path: &'a Path,
    /// The image's extents when the reshare started, in file order.
    extents: Vec<Extent>,
    /// Opened on the first punch.
    writable: Option<File>,
}

impl Puncher<'_> {
    /// Step 1: the allocated parts of the blocks the manifest says are zero,
    /// each piece punched after it was read back as zeros.
    fn zero_blocks(
        &mut self,
        image: &File,
        manifest: &mut Manifest,
        done: &mut Reshared,
    ) -> Result<()> {
        let mut zero = Vec::new();
        let blocks = manifest.blocks();
        push_runs(&mut zero, manifest, 0..blocks, sums::Digest::is_zero)?;
        let bs = manifest.block_size();
        let size = manifest.image_size();
        let mut buf = vec![0u8; CHUNK as usize];
        for run in zero {
            let run = run.start * bs..(run.end * bs).min(size);
            for piece in intersect(&self.extents, &run, false) {
                let mut at = piece.start;
                while at < piece.end {
                    interrupt::check()?;
                    let len = (piece.end - at).min(CHUNK);
                    let data = &mut buf[..len as usize];
                    image
                        .read_exact_at(data, at)
                        .map_err(Error::io("cannot read revision image", self.path))?;
                    if sums::is_zero(data) {
                        self.punch(at..at + len, done)?;
                    } else {
                        tracing::warn!(
                            "{}: bytes {at}..{} are not zero although its manifest says so; left as they are (run 'backy verify')",
                            self.path.display(),
                            at + len
                        );
                        done.blocks_differing += len.div_ceil(bs);
                    }
                    at += len;
                }
            }
        }
        Ok(())
    }

    /// Punches the allocated parts of `range`, which was just read as zeros.
    fn punch_known_zero(&mut self, range: &Range<u64>, done: &mut Reshared) -> Result<()> {
        for piece in intersect(&self.extents, range, false) {
            self.punch(piece, done)?;
        }
        Ok(())
    }

    fn punch(&mut self, range: Range<u64>, done: &mut Reshared) -> Result<()> {
        if self.writable.is_none() {
            self.writable = Some(open_writable(self.path)?);
        }
        let file = self.writable.as_ref().expect("opened above");
        sys::punch_hole(file, range.start, range.end - range.start)
            .map_err(Error::io("cannot punch a hole into", self.path))?;
        done.bytes_punched += range.end - range.start;
        Ok(())
    }

    /// The parts of `runs` in data extents that no other file shares.
    fn unshared(&self, runs: &[Range<u64>]) -> Vec<Range<u64>> {
        let mut out = Vec::new();
        for run in runs {
            for piece in intersect(&self.extents, run, true) {
                push_range(&mut out, piece);
            }
        }
        out
    }
}

/// The parts of `range` that `extents` (in file order) cover; with
/// `unshared_only`, only extents no other file shares.
fn intersect(extents: &[Extent], range: &Range<u64>, unshared_only: bool) -> Vec<Range<u64>> {
    let first = extents.partition_point(|e| e.end() <= range.start);
    extents[first..]
        .iter()
        .take_while(|e| e.logical < range.end)
        .filter(|e| !(unshared_only && e.is_shared()))
        .filter_map(|e| {
            let start = e.logical.max(range.start);
            let end = e.end().min(range.end);
            (start < end).then_some(start..end)
        })
        .collect()
}

/// Step 5: the image's data in extents no other file shares is written to a
/// temporary file at the same offsets, and shared from there into the image,
/// so the extents the copy made are no longer referenced and btrfs frees them.
///
/// Done when steps 1 to 3 `changed` the image, or when its own extents show
/// remnants of a larger one (a run that was interrupted before this step).
fn relocate_own_extents(path: &Path, changed: bool, done: &mut Reshared) -> Result<()> {
    let image = File::open(path).map_err(Error::io("cannot open revision image", path))?;
    let extents =
        fiemap::extents(&image, true).map_err(Error::io("cannot map extents of", path))?;
    let own_extents: Vec<Extent> = extents.into_iter().filter(|e| !e.is_shared()).collect();
    if !changed && !has_remnants(&own_extents) {
        return Ok(());
    }
    let own = merge(own_extents.iter().map(|e| e.logical..e.end()).collect());
    if own.is_empty() {
        return Ok(());
    }
    let temp_path = path.with_file_name(format!("{TEMP_PREFIX}{}", std::process::id()));
    let result = relocate_through(&image, path, &temp_path, &own, done);
    let removed = std::fs::remove_file(&temp_path);
    result?;
    removed.map_err(Error::io("cannot remove temporary file", &temp_path))
}

fn relocate_through(
    image: &File,
    path: &Path,
    temp_path: &Path,
    own: &[Range<u64>],
    done: &mut Reshared,
) -> Result<()> {
    let temp = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(temp_path)
        .map_err(Error::io("cannot create temporary file", temp_path))?;
    let mut buf = vec![0u8; CHUNK as usize];
    for range in own {
        let mut at = range.start;
        while at < range.end {
            interrupt::check()?;
            let len = (range.end - at).min(CHUNK);
            let data = &mut buf[..len as usize];
            image
                .read_exact_at(data, at)
                .map_err(Error::io("cannot read revision image", path))?;
            temp.write_all_at(data, at)
                .map_err(Error::io("cannot write temporary file", temp_path))?;
            at += len;
        }
    }
    temp.sync_data()
        .map_err(Error::io("cannot sync temporary file", temp_path))?;
    let pair = Pair::new(&temp, temp_path, image, path)?;
    let mut moved = Reshared::default();
    pair.share(own, PAGE, &mut moved)?;
    done.bytes_relocated += moved.bytes_deduped;
    done.blocks_differing += moved.blocks_differing;
    Ok(())
}

/// Whether two of `extents` (in file order) with a gap between them lie at the
/// same distance between file offset and disk address: pieces of one extent
/// whose middle is referenced no more, which btrfs keeps allocated in full.
/// (Data step 5 moved is packed on disk, so its pieces lie at different
/// distances.)
fn has_remnants(extents: &[Extent]) -> bool {
    extents.windows(2).any(|pair| {
        let (x, y) = (&pair[0], &pair[1]);
        y.logical > x.end()
            && x.has_location()
            && y.has_location()
            && x.physical.wrapping_sub(x.logical) == y.physical.wrapping_sub(y.logical)
    })
}

/// Opens a complete (0440) image for punching. Root may; an owner who may
/// not gets `u+w` for the moment of the `open` only, and the old mode back.
fn open_writable(path: &Path) -> Result<File> {
    let open = || OpenOptions::new().write(true).open(path);
    match open() {
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
            let mode = std::fs::metadata(path)
                .map_err(Error::io("cannot stat", path))?
                .permissions()
                .mode();
            std::fs::set_permissions(path, PermissionsExt::from_mode(mode | 0o200))
                .map_err(Error::io("cannot change the mode of", path))?;
            let file = open();
            std::fs::set_permissions(path, PermissionsExt::from_mode(mode))
                .map_err(Error::io("cannot restore the mode of", path))?;
            file.map_err(Error::io("cannot open for punching holes", path))
        }
        file => file.map_err(Error::io("cannot open for punching holes", path)),
    }
}

impl<'a> Pair<'a> {
    fn new(
        base: &'a File,
        base_path: &'a Path,
        image: &'a File,
        image_path: &'a Path,
    ) -> Result<Self> {
        let map = |file: &File, path: &Path| {
            fiemap::extents(file, true).map_err(Error::io("cannot map extents of", path))
        };
        let extents = map(image, image_path)?;
        let mut shared = shared_ranges(&map(base, base_path)?, &extents);
        // Where the image has a hole there is nothing to share (an equal
        // block with a hole holds zeros; sharing the base's data would only
        // allocate them).
        shared.extend(holes(&extents));
        shared.sort_unstable_by_key(|r| r.start);
        let shared = merge(shared);
        Ok(Pair {
            base,
            base_path,
            image,
            image_path,
            shared,
        })
    }

    /// Dedupes each of `runs` (byte ranges, equal offsets in both files),
    /// less what is already shared, rounded out to `unit`.
    ///
    /// The kernel reads the pages it compares one at a time, so both files'
    /// ranges are prefetched ([`PREFETCH_AHEAD`] bytes ahead of the calls).
    fn share(&self, runs: &[Range<u64>], unit: u64, done: &mut Reshared) -> Result<()> {
        let mut pieces = Vec::new();
        for run in runs {
            let todo = subtract(run, &self.shared, unit);
            let todo_bytes: u64 = todo.iter().map(|p| p.end - p.start).sum();
            done.bytes_already_shared += (run.end - run.start) - todo_bytes;
            pieces.extend(todo);
        }
        let (mut next, mut ahead) = (0, 0);
        for (n, piece) in pieces.iter().enumerate() {
            while next < pieces.len() && (next <= n || ahead < PREFETCH_AHEAD) {
                let p = &pieces[next];
                sys::prefetch(self.base, p.start, p.end - p.start);
                sys::prefetch(self.image, p.start, p.end - p.start);
                ahead += p.end - p.start;
                next += 1;
            }
            self.dedupe(piece.clone(), unit, done)?;
            ahead -= piece.end - piece.start;
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
                crate::failpoint::hit("reshare-after-dedupe");
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

/// The holes between `extents` (in file order), up to the largest offset.
fn holes(extents: &[Extent]) -> Vec<Range<u64>> {
    let mut out = Vec::new();
    let mut at = 0;
    for e in extents {
        if e.logical > at {
            out.push(at..e.logical);
        }
        at = at.max(e.end());
    }
    out.push(at..u64::MAX);
    out
}

/// Sorted ranges, overlapping or touching ones merged.
fn merge(sorted: Vec<Range<u64>>) -> Vec<Range<u64>> {
    let mut out: Vec<Range<u64>> = Vec::new();
    for r in sorted {
        match out.last_mut() {
            Some(last) if last.end >= r.start => last.end = last.end.max(r.end),
            _ => out.push(r),
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
        Extent::plain(logical, physical, length)
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
    fn remnants_are_pieces_of_one_extent_with_a_gap() {
        // One extent at disk 1000 for file 0.., its middle gone.
        assert!(has_remnants(&[ext(0, 1000, 10), ext(50, 1050, 10)]));
        // Packed pieces (moved by step 5) and adjacent pieces are not.
        assert!(!has_remnants(&[ext(0, 1000, 10), ext(50, 1010, 10)]));
        assert!(!has_remnants(&[ext(0, 1000, 10), ext(10, 1010, 10)]));
    }

    #[test]
    fn holes_are_the_gaps_between_extents() {
        let e = [ext(4096, 0, 4096), ext(8192, 0, 4096), ext(20480, 0, 4096)];
        assert_eq!(holes(&e), vec![0..4096, 12288..20480, 24576..u64::MAX]);
        assert_eq!(merge(vec![0..5, 3..8, 8..9, 10..12]), vec![0..9, 10..12]);
    }

    #[test]
    fn subtract_rounds_out_to_units_inside_the_run() {
        let shared = [0..4096, 8192..12288, 70_000..80_000];
        assert_eq!(
            subtract(&(0..16384), &shared, 4096),
            vec![4096..8192, 12288..16384]
        );
        assert_eq!(subtract(&(0..65536), &[], 65536), vec![0..65536]);
        let all = std::iter::once(0..65536).collect::<Vec<_>>();
        assert_eq!(subtract(&(0..65536), &all, 65536), vec![]);
        // A piece inside a unit becomes the whole unit; the run's end holds.
        assert_eq!(
            subtract(&(65536..100_000), &shared, 65536),
            vec![65536..100_000]
        );
    }
}
