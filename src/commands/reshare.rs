//! `backy reshare`: after a plain copy of a job directory (`cp`, `rsync`), make
//! each revision share its unchanged blocks with its parent again.
//!
//! Every complete revision with a manifest is reshared with its base
//! ([`crate::image::reshare`]), oldest first, so a block unchanged for many
//! revisions ends up as one extent: revision 2 shares with 1, then 3 with 2
//! (and so with 1). The base is the parent, or where the parent is gone
//! (expired) or has no manifest, the newest older revision that has one.
//!
//! The backup lock keeps a backup, an expiry or a second reshare out; readers
//! (restore, verify, nbd-server) go on, since no byte of content changes.

use std::path::Path;

use crate::error::{Error, Result};
use crate::image::reshare::{Files, Reshared, TEMP_PREFIX, reshare};
use crate::job::Job;
use crate::revision::Revision;
use crate::units::format_bytes;
use crate::{output, sys};

/// Reshares every complete revision of the job with its base; prints what it did.
pub fn run(dir: &Path) -> Result<()> {
    let mut job = Job::open(dir)?;
    let _lock = job.lock_backup()?;
    let free_before = sys::available_bytes(job.dir())
        .map_err(Error::io("cannot read the free space of", job.dir()))?;
    remove_stale_temp_files(job.dir())?;
    let relocate = sys::filesystem_name(job.dir()) == "btrfs";
    let complete: Vec<&Revision> = job.revisions().iter().filter(|r| r.is_complete()).collect();
    let mut total = Reshared::default();
    let mut reshared = 0;
    for (n, rev) in complete.iter().enumerate() {
        if !job.sums_path(&rev.id).exists() {
            tracing::info!(
                "Revision {} has no checksum manifest (made by backy 2.1?): skipped",
                rev.id
            );
            continue;
        }
        let base = base_of(&job, rev, &complete[..n]);
        let (image, sums) = (job.image_path(&rev.id), job.sums_path(&rev.id));
        let base_files = base.map(|b| (job.image_path(&b.id), job.sums_path(&b.id)));
        let done = reshare(
            Files {
                image: &image,
                sums: &sums,
            },
            base_files
                .as_ref()
                .map(|(image, sums)| Files { image, sums }),
            relocate,
        )?;
        tracing::info!(
            "Revision {} with {}: {} shared again, {} already shared, {} of zeros punched, {} moved out of the copy's extents",
            rev.id,
            base.map_or("no base", |b| b.id.as_str()),
            format_bytes(done.bytes_deduped),
            format_bytes(done.bytes_already_shared),
            format_bytes(done.bytes_punched),
            format_bytes(done.bytes_relocated)
        );
        total.add(&done);
        reshared += 1;
    }
    // Freed extents show in statfs once the filesystem committed them.
    let reclaimed = sys::settled_available_bytes(job.dir())
        .map_err(Error::io("cannot read the free space of", job.dir()))?
        .saturating_sub(free_before);
    if total.blocks_differing > 0 {
        tracing::warn!(
            "{} blocks differ from what their manifests say and were left alone; run 'backy verify'",
            total.blocks_differing
        );
    }
    output::stdout_line(&format!(
        "Reshared {reshared} revisions: {} shared again in {} ranges, {} already shared, {} of zeros punched, {} moved out of the copy's extents; {} reclaimed",
        format_bytes(total.bytes_deduped),
        total.ranges_deduped,
        format_bytes(total.bytes_already_shared),
        format_bytes(total.bytes_punched),
        format_bytes(total.bytes_relocated),
        format_bytes(reclaimed)
    ))
}

/// The revision `rev` shares with: its parent if that is an `older` revision
/// with a manifest, else the newest older one with a manifest.
fn base_of<'a>(job: &Job, rev: &Revision, older: &[&'a Revision]) -> Option<&'a Revision> {
    let has_manifest = |r: &&&Revision| job.sums_path(&r.id).exists();
    let parent = rev
        .parent
        .as_deref()
        .and_then(|p| older.iter().find(|r| r.id == p))
        .filter(has_manifest);
    parent
        .or_else(|| older.iter().rev().find(has_manifest))
        .copied()
}

/// Removes temporary files a crashed reshare left (under the backup lock no
/// other reshare runs).
fn remove_stale_temp_files(dir: &Path) -> Result<()> {
    let entries = std::fs::read_dir(dir).map_err(Error::io("cannot list", dir))?;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let is_temp = name.to_str().is_some_and(|n| {
            n.strip_prefix(TEMP_PREFIX)
                .is_some_and(|pid| !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()))
        });
        if is_temp {
            let path = entry.path();
            tracing::info!(
                "Removing {}, left by an interrupted reshare",
                path.display()
            );
            std::fs::remove_file(&path).map_err(Error::io("cannot remove", &path))?;
        }
    }
    Ok(())
}
