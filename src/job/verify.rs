//! Verifying one revision against its checksum manifest and recording the
//! verdict in its `.rev`: what `backy verify` does for each revision it checks,
//! and what a backup does afterwards for the newest distrusted revision.

use std::fs::File;

use super::Job;
use crate::error::{Error, Result};
use crate::image::{self, sums::Manifest};
use crate::progress::Progress;
use crate::revision::Trust;

/// What checking one revision found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VerifyOutcome {
    /// Every block matches; the revision is now `verified`.
    Good,
    /// Blocks differ or the image is unreadable; the revision is now `distrusted`.
    Bad,
    /// No manifest: only the source could tell.
    NoManifest,
}

impl Job {
    /// Reads revision `id` against its manifest and records the verdict in its
    /// `.rev`. The caller holds a lock that keeps the revision from being deleted.
    pub fn verify_revision(&mut self, id: &str) -> Result<VerifyOutcome> {
        let sums = self.sums_path(id);
        if !sums.exists() {
            return Ok(VerifyOutcome::NoManifest);
        }
        let report = Manifest::open(&sums, false).and_then(|mut manifest| {
            let path = self.image_path(id);
            let file = File::open(&path).map_err(Error::io("cannot open revision image", &path))?;
            let mut progress = Progress::new("verify", manifest.image_size());
            image::verify_against_manifest(&file, &path, &mut manifest, &mut |n| progress.inc(n))
        });
        let outcome = match report {
            Ok(r) if r.bad_offsets.is_empty() => {
                tracing::info!("Revision {id}: {} blocks match their checksums", r.blocks);
                VerifyOutcome::Good
            }
            Ok(r) => {
                let offsets: Vec<String> = r.bad_offsets.iter().map(u64::to_string).collect();
                tracing::error!(
                    "Revision {id}: blocks at offsets {} differ from their checksums",
                    offsets.join(", ")
                );
                VerifyOutcome::Bad
            }
            Err(e) => {
                tracing::error!("Revision {id}: {e}");
                VerifyOutcome::Bad
            }
        };
        let trust = match outcome {
            VerifyOutcome::Good => Trust::Verified,
            _ => Trust::Distrusted,
        };
        self.update_rev(id, |rev| rev.trust = trust)?;
        Ok(outcome)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A job directory that does not exist is a typed error naming it.
    #[test]
    fn a_missing_job_directory_is_named() {
        let dir = std::env::temp_dir().join(format!("backy-no-job-{}", std::process::id()));
        match Job::open(&dir) {
            Err(Error::JobMissing { dir: named }) => assert_eq!(named, dir),
            Err(e) => panic!("unexpected error: {e}"),
            Ok(_) => panic!("opened a missing job"),
        }
    }

    /// Without a manifest nothing is read and nothing is recorded.
    #[test]
    fn a_revision_without_manifest_is_reported_as_such() {
        let dir = std::env::temp_dir().join(format!("backy-verify-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut job = Job::open(&dir).unwrap();
        assert_eq!(
            job.verify_revision("nope").unwrap(),
            VerifyOutcome::NoManifest
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
