//! Space per revision on reflink filesystems: what deleting a revision (or a
//! set of them) frees, and how much the job's revisions share.
//!
//! [`measure`] asks the kernel where every complete revision's image and
//! manifest lie on disk (FIEMAP with `FIEMAP_FLAG_SYNC`, [`crate::image::fiemap`])
//! and sweeps the physical ranges once ([`sweep`]). A range counts as freed by
//! deleting a set of revisions when all its holders in the job are in the set
//! and no file outside the job shares it. "Outside" is known where exactly one
//! revision holds a range (once) and the kernel nevertheless flags it shared: a
//! `cp --reflink` an operator made, an NBD overlay, a backup still running.
//!
//! # What is exact
//!
//! - **XFS** (and filesystems without sharing, such as ext4): the shared flag is
//!   exact per block and a block is freed as soon as no file maps it, so a single
//!   revision's freed bytes are exact. For a set, a range that two or more
//!   revisions of the set share *and* a file outside the job shares too is
//!   counted as freed although it is not: the kernel has no count of holders to
//!   tell.
//! - **btrfs** flags a whole extent as shared when any part of it is shared, and
//!   keeps a partly overwritten extent allocated until no part of it is
//!   referenced (the unreferenced part, a *bookend*, is in no file's map). So a
//!   range only one revision maps, inside an extent another revision maps another
//!   part of, is flagged shared and not counted: deleting the revision alone
//!   frees nothing there, which is right, but deleting it together with the
//!   other may free the whole extent, bookends included, which is more than
//!   predicted. btrfs figures are therefore labelled estimates
//!   ([`Accuracy::Estimate`]), lower bounds of what a set frees; the tests
//!   measure how far off they are (see the man page). Compressed extents
//!   (`FIEMAP_EXTENT_ENCODED`) report the start of their compressed data and the
//!   uncompressed length of each reference, so each counts as one unit, freed
//!   with its last reference ([`whole_extents`]), at its uncompressed size:
//!   with compression physical and freed bytes are upper bounds instead; the
//!   label says so.
//! - **XFS copy-on-write reservations**: after a backup XFS keeps reserved
//!   blocks around each changed spot (up to the CoW extent size hint, 128 KiB by
//!   default) for 5 minutes, in no file's extent map. Deleting a revision within
//!   those minutes frees them too, more than predicted; the tests drop them
//!   first (`xfs_spaceman -c 'prealloc -s'`) and measure them apart.

mod sweep;

pub use sweep::{Group, Interval, Sweep, sweep, whole_extents};

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::image::fiemap::{self, Extent};
use crate::job::Job;

/// How far the figures of a [`JobSpace`] can be trusted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Accuracy {
    /// Exact per block (XFS, ext4).
    Exact,
    /// An estimate, for the reasons given (btrfs, compressed extents, an
    /// unknown filesystem).
    Estimate {
        /// One sentence per reason.
        reasons: Vec<String>,
    },
}

impl Accuracy {
    /// Whether the figures are exact.
    pub fn is_exact(&self) -> bool {
        matches!(self, Accuracy::Exact)
    }
}

/// The space of one revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevisionSpace {
    /// The revision id.
    pub id: String,
    /// Bytes only this revision holds (image and manifest): what deleting it
    /// frees.
    pub exclusive: u64,
    /// Of those, the manifest's (`.sums`) and the `.rev`'s.
    pub exclusive_manifest: u64,
    /// Bytes only this revision holds in the job but a file outside the job
    /// shares (on btrfs also: inside an extent another revision shares): not
    /// freed by deleting it.
    pub shared_outside: u64,
    /// Bytes its image maps (what it would take alone).
    pub logical: u64,
}

/// The space of a job's complete revisions.
#[derive(Debug, Clone)]
pub struct JobSpace {
    /// Distinct bytes on disk of all revision images.
    pub physical: u64,
    /// Sum over the revision images of the bytes each maps (what they would
    /// take without sharing).
    pub logical: u64,
    /// Distinct bytes on disk of the revisions' manifests (`.sums`) and
    /// metadata (`.rev`), apart from the images.
    pub manifests_physical: u64,
    /// Per complete revision, oldest first.
    pub revisions: Vec<RevisionSpace>,
    /// How exact the figures are.
    pub accuracy: Accuracy,
    /// The filesystem's name ("btrfs", "xfs", ...).
    pub filesystem: String,
    images: Sweep,
    manifests: Sweep,
    /// Bytes without a physical location (inline data), per revision:
    /// counted as its own.
    unlocated: Vec<u64>,
}

impl JobSpace {
    /// Logical bytes per physical byte (1.0 without sharing; 0 for an empty job).
    pub fn sharing_factor(&self) -> f64 {
        if self.physical == 0 {
            return 0.0;
        }
        self.logical as f64 / self.physical as f64
    }

    /// The space of the revision with this id.
    pub fn revision(&self, id: &str) -> Option<&RevisionSpace> {
        self.revisions.iter().find(|r| r.id == id)
    }

    /// Bytes freed by deleting all revisions in `ids` (images and manifests):
    /// ranges all of whose holders in the job are in the set and that nothing
    /// outside the job shares. Ids that are not complete revisions of the job
    /// add nothing.
    pub fn freed_by<'a>(&self, ids: impl IntoIterator<Item = &'a str>) -> u64 {
        let mut in_set = vec![false; self.revisions.len()];
        for id in ids {
            if let Some(i) = self.revisions.iter().position(|r| r.id == id) {
                in_set[i] = true;
            }
        }
        let member = |h: u32| in_set[h as usize];
        let unlocated: u64 = (0..self.revisions.len())
            .filter(|&i| in_set[i])
            .map(|i| self.unlocated[i])
            .sum();
        self.images.freed(member) + self.manifests.freed(member) + unlocated
    }

    /// `bytes` with how exact it is, for dry runs: "1.00 MiB (exact)".
    pub fn describe(&self, bytes: u64) -> String {
        let amount = crate::units::format_bytes(bytes);
        match self.caveat().as_str() {
            "" => format!("{amount} (exact)"),
            caveat => format!("{amount} (an estimate: {caveat})"),
        }
    }

    /// One sentence saying what the figures are, for `status` and dry runs:
    /// empty when they are exact.
    pub fn caveat(&self) -> String {
        match &self.accuracy {
            Accuracy::Exact => String::new(),
            Accuracy::Estimate { reasons } => reasons.join("; "),
        }
    }
}

/// The extents of one file, or `None` when it does not exist (a manifest
/// backy 2.1 never wrote).
fn file_extents(path: &Path, dir: &Path, filesystem: &str) -> Result<Option<Vec<Extent>>> {
    let file = match crate::sys::open_regular(path, false) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io("cannot open", path)(e)),
    };
    match fiemap::extents(&file, true) {
        Ok(list) => Ok(Some(list)),
        Err(e) if fiemap::is_unsupported(&e) => Err(Error::SpaceUnsupported {
            dir: dir.to_owned(),
            filesystem: filesystem.to_owned(),
        }),
        Err(e) => Err(Error::io("cannot read the extents of", path)(e)),
    }
}

/// Intervals of one file for holder `holder`; compressed extents go to
/// `encoded` (see [`sweep::whole_extents`]), what has no location to
/// `unlocated`, and every byte to `logical`.
fn add_file(
    extents: &[Extent],
    holder: u32,
    out: &mut Vec<Interval>,
    encoded: &mut Vec<Interval>,
    unlocated: &mut u64,
    logical: &mut u64,
) {
    for e in extents {
        *logical += e.length;
        if !e.has_location() {
            *unlocated += e.length;
            continue;
        }
        let interval = Interval {
            start: e.physical,
            end: e.physical + e.length,
            holder,
            shared: e.is_shared(),
        };
        if e.is_encoded() {
            encoded.push(interval);
        } else {
            out.push(interval);
        }
    }
}

/// The extent maps of a revision's image, manifest and `.rev`.
type FileMaps = [Option<Vec<Extent>>; 3];

/// The extents of every file in `paths` (see [`file_extents`]), in the same
/// order, asked for on several threads: the kernel's work per extent (the
/// shared check walks btrfs back references or the XFS refcount tree)
/// dominates, and revisions are independent. The first error, in `paths`
/// order, wins.
fn read_extents(paths: &[[PathBuf; 3]], dir: &Path, filesystem: &str) -> Result<Vec<FileMaps>> {
    crate::sys::parallel_map(paths, crate::sys::io_threads(), |files| {
        let mut maps: FileMaps = Default::default();
        for (map, path) in maps.iter_mut().zip(files) {
            *map = file_extents(path, dir, filesystem)?;
        }
        Ok(maps)
    })
    .into_iter()
    .collect()
}

/// Measures the space of the job's complete revisions (see the module
/// documentation for what is exact). Fails with [`Error::SpaceUnsupported`]
/// where the filesystem has no FIEMAP (tmpfs).
pub fn measure(job: &Job) -> Result<JobSpace> {
    let dir = job.dir();
    let filesystem = crate::sys::filesystem_name(dir);
    let revisions: Vec<&crate::revision::Revision> =
        job.revisions().iter().filter(|r| r.is_complete()).collect();
    let n = revisions.len();
    let mut image_intervals = Vec::new();
    let mut manifest_intervals = Vec::new();
    let mut unlocated = vec![0u64; n];
    let mut unlocated_manifests = 0u64;
    let mut image_logical = vec![0u64; n];
    let mut manifest_logical = 0u64;
    let mut image_encoded = Vec::new();
    let mut manifest_encoded = Vec::new();
    let paths: Vec<[PathBuf; 3]> = revisions
        .iter()
        .map(|rev| {
            [
                job.image_path(&rev.id),
                job.sums_path(&rev.id),
                job.rev_path(&rev.id),
            ]
        })
        .collect();
    let maps = read_extents(&paths, dir, &filesystem)?;
    for (i, [image, sums, rev]) in maps.into_iter().enumerate() {
        let holder = i as u32;
        if let Some(list) = image {
            add_file(
                &list,
                holder,
                &mut image_intervals,
                &mut image_encoded,
                &mut unlocated[i],
                &mut image_logical[i],
            );
        }
        // Deleting a revision deletes its manifest and its `.rev` too.
        for list in [sums, rev].into_iter().flatten() {
            let mut inline = 0;
            add_file(
                &list,
                holder,
                &mut manifest_intervals,
                &mut manifest_encoded,
                &mut inline,
                &mut manifest_logical,
            );
            unlocated[i] += inline;
            unlocated_manifests += inline;
        }
    }
    let encoded = !image_encoded.is_empty() || !manifest_encoded.is_empty();
    image_intervals.extend(whole_extents(image_encoded));
    manifest_intervals.extend(whole_extents(manifest_encoded));
    let images = sweep(&image_intervals, n);
    let manifests = sweep(&manifest_intervals, n);
    let image_exclusive = images.exclusive(n);
    let manifest_exclusive = manifests.exclusive(n);
    let image_outside = images.shared_outside(n);
    let manifest_outside = manifests.shared_outside(n);
    let per_revision = revisions
        .iter()
        .enumerate()
        .map(|(i, rev)| RevisionSpace {
            id: rev.id.clone(),
            exclusive: image_exclusive[i] + manifest_exclusive[i] + unlocated[i],
            exclusive_manifest: manifest_exclusive[i],
            shared_outside: image_outside[i] + manifest_outside[i],
            logical: image_logical[i],
        })
        .collect();
    let unlocated_images = unlocated.iter().sum::<u64>() - unlocated_manifests;
    Ok(JobSpace {
        physical: images.union + unlocated_images,
        logical: image_logical.iter().sum(),
        manifests_physical: manifests.union + unlocated_manifests,
        revisions: per_revision,
        accuracy: accuracy(&filesystem, encoded),
        filesystem,
        images,
        manifests,
        unlocated,
    })
}

/// What is exact on `filesystem`; `encoded` when any extent was compressed.
fn accuracy(filesystem: &str, encoded: bool) -> Accuracy {
    let mut reasons = Vec::new();
    match filesystem {
        "xfs" | "ext4" => {}
        "btrfs" => reasons.push(
            "btrfs keeps a partly overwritten extent until no part of it is used, so deleting \
             several revisions can free more than shown"
                .to_string(),
        ),
        other => reasons.push(format!("sharing on {other} is not known to be exact")),
    }
    if encoded {
        reasons.push(
            "compressed extents are counted at their uncompressed size, so less is used and freed"
                .to_string(),
        );
    }
    if reasons.is_empty() {
        Accuracy::Exact
    } else {
        Accuracy::Estimate { reasons }
    }
}
