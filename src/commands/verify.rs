//! `backy verify [-r SPEC]`: re-read revisions and compare them with their manifests.

use std::fs::File;
use std::path::Path;

use crate::error::{Error, Result};
use crate::image::{self, sums::Manifest};
use crate::job::Job;
use crate::progress::Progress;
use crate::revision::Trust;

/// What checking one revision found.
pub(crate) enum Outcome {
    /// Every block matches; the revision is now `verified`.
    Good,
    /// Blocks differ or the image is unreadable; the revision is now `distrusted`.
    Bad,
    /// No manifest: only the source could tell.
    NoManifest,
}

/// Verifies one revision or all complete ones, newest first.
pub fn run(dir: &Path, spec: Option<&str>) -> Result<()> {
    let job = Job::open(dir)?;
    let _lock = job.lock_read()?;
    let ids: Vec<String> = match spec {
        Some(s) => vec![job.resolve(s)?.id.clone()],
        None => job
            .revisions
            .iter()
            .rev()
            .filter(|r| r.is_complete())
            .map(|r| r.id.clone())
            .collect(),
    };
    if spec.is_none() {
        for d in &job.damaged {
            tracing::warn!("Not verified: {}", d.describe());
        }
        if ids.is_empty() {
            tracing::warn!(
                "Nothing to verify: job {} has no complete revision",
                job.dir().display()
            );
        }
    }
    let mut failed = Vec::new();
    for id in &ids {
        match verify_revision(&job, id)? {
            Outcome::Good => {}
            Outcome::Bad => failed.push(id.clone()),
            Outcome::NoManifest => {
                let ours = job
                    .revisions
                    .iter()
                    .find(|r| &r.id == id)
                    .is_some_and(|r| r.made_by_us());
                let why = if ours {
                    format!(
                        "its manifest {} is missing (this backy wrote one; was it deleted?)",
                        job.sums_path(id).display()
                    )
                } else {
                    "it was made by backy 2.1 or earlier, which wrote none".to_string()
                };
                let msg = format!(
                    "revision {id} has no checksum manifest: {why}; it can only be checked against its source"
                );
                if spec.is_some() {
                    return Err(Error::Other(msg));
                }
                tracing::warn!("{msg}");
            }
        }
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(Error::Other(format!(
            "{} revision(s) failed verification and are now distrusted: {}; the next backup compares the whole source",
            failed.len(),
            failed.join(", ")
        )))
    }
}

/// Reads revision `id` against its manifest and records the verdict in its `.rev`.
/// The caller holds a lock that keeps the revision from being deleted.
pub(crate) fn verify_revision(job: &Job, id: &str) -> Result<Outcome> {
    let sums = job.sums_path(id);
    if !sums.exists() {
        return Ok(Outcome::NoManifest);
    }
    let report = Manifest::open(&sums, false).and_then(|mut manifest| {
        let path = job.image_path(id);
        let file = File::open(&path).map_err(Error::io("cannot open revision image", &path))?;
        let mut progress = Progress::new("verify", manifest.image_size());
        image::verify_against_manifest(&file, &path, &mut manifest, &mut |n| progress.inc(n))
    });
    let Some(mut rev) = job.revisions.iter().find(|r| r.id == id).cloned() else {
        return Err(Error::NoSuchRevision { spec: id.into() });
    };
    let outcome = match report {
        Ok(r) if r.bad_offsets.is_empty() => {
            tracing::info!("Revision {id}: {} blocks match their checksums", r.blocks);
            rev.trust = Trust::Verified;
            Outcome::Good
        }
        Ok(r) => {
            let offsets: Vec<String> = r.bad_offsets.iter().map(u64::to_string).collect();
            tracing::error!(
                "Revision {id}: blocks at offsets {} differ from their checksums",
                offsets.join(", ")
            );
            rev.trust = Trust::Distrusted;
            Outcome::Bad
        }
        Err(e) => {
            tracing::error!("Revision {id}: {e}");
            rev.trust = Trust::Distrusted;
            Outcome::Bad
        }
    };
    job.write_rev(&rev)?;
    Ok(outcome)
}
