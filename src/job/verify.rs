//! Verifying revisions against their checksum manifests and recording the
//! verdict in their `.rev`: what `backy verify` does, and what a backup does
//! afterwards for the newest distrusted revision.
//!
//! Damage spreads through sharing: a bad block of one revision is, on disk,
//! the same bytes in every revision whose image maps that block to the same
//! physical extent. [`Job::verify_revisions`] follows it (see `damage.rs`).

use chrono::Utc;
use std::collections::{BTreeMap, BTreeSet};

use super::Job;
use super::damage::{Damage, SharedDamage};
use crate::error::{Error, Result};
use crate::image::scrub::{self, BadBlock};
use crate::image::sums::Manifest;
use crate::progress::Progress;
use crate::revision::{Scope, Trust, Verification};

/// What checking one revision found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VerifyOutcome {
    /// Every block checked matches; the revision is now `verified`.
    Good,
    /// Blocks differ or the image is unreadable; the revision is now `distrusted`.
    Bad,
    /// No manifest: only the source could tell.
    NoManifest,
}

/// One revision's result in [`Job::verify_revisions`].
#[derive(Debug, Clone)]
pub struct Checked {
    /// The revision.
    pub id: String,
    /// The verdict.
    pub outcome: VerifyOutcome,
    /// What was recorded (`None` without manifest).
    pub verification: Option<Verification>,
    /// Bad blocks found by reading this revision (empty for `Scope::Shared`).
    pub bad: Vec<BadBlock>,
}

/// What [`Job::verify_revisions`] found.
#[derive(Debug, Default)]
pub struct VerifyRun {
    /// One entry per revision with a verdict, in the order they got it: those
    /// asked for, newest first, and those the damage was followed into.
    pub checked: Vec<Checked>,
    /// Per bad block: which revisions hold it in the same extent.
    pub shared: Vec<SharedDamage>,
}

impl Job {
    /// Reads revision `id` (every block, or `sample` percent of them) against
    /// its manifest and records the verdict in its `.rev`. The caller holds a
    /// lock that keeps the revision from being deleted.
    pub fn verify_revision(&mut self, id: &str, sample: Option<f64>) -> Result<Checked> {
        let sums = self.sums_path(id);
        if !sums.exists() {
            return Ok(Checked {
                id: id.to_string(),
                outcome: VerifyOutcome::NoManifest,
                verification: None,
                bad: Vec::new(),
            });
        }
        let scope = sample.map_or(Scope::Full, Scope::Sample);
        let report = Manifest::open(&sums, false).and_then(|mut manifest| {
            let path = self.image_path(id);
            let file = self.open_image(id)?;
            let blocks = sample.map(|p| scrub::sample_blocks(manifest.blocks(), p));
            let total = blocks.as_ref().map_or(manifest.image_size(), |b| {
                b.len() as u64 * manifest.block_size()
            });
            let mut progress = Progress::new("verify", total);
            scrub::scrub(&file, &path, &mut manifest, blocks.as_deref(), &mut |n| {
                progress.inc(n)
            })
        });
        let mut verification = Verification {
            time: Utc::now(),
            scope,
            blocks_checked: 0,
            bad_offsets: Vec::new(),
            bad_blocks: 0,
            damage_from: None,
            error: None,
        };
        let (outcome, bad) = match report {
            Ok(r) if r.bad.is_empty() => {
                tracing::info!(
                    "Revision {id}: {} blocks match their checksums{}",
                    r.blocks_checked,
                    sample.map_or(String::new(), |p| format!(" ({p} % sampled)"))
                );
                verification.blocks_checked = r.blocks_checked;
                (VerifyOutcome::Good, r.bad)
            }
            Ok(r) => {
                tracing::error!("Revision {id}: {}", describe_bad(&r.bad));
                verification.blocks_checked = r.blocks_checked;
                verification.bad_offsets = r.bad_offsets();
                verification.bad_blocks = r.bad.len() as u64;
                (VerifyOutcome::Bad, r.bad)
            }
            // Interrupted: nothing is decided.
            Err(e @ Error::Interrupted { .. }) => return Err(e),
            Err(e) => {
                tracing::error!("Revision {id}: {e}");
                verification.error = Some(e.to_string());
                (VerifyOutcome::Bad, Vec::new())
            }
        };
        let trust = match outcome {
            VerifyOutcome::Good => Trust::Verified,
            _ => Trust::Distrusted,
        };
        self.update_rev(id, |rev| {
            rev.trust = trust;
            rev.set_verification(&verification);
        })?;
        Ok(Checked {
            id: id.to_string(),
            outcome,
            verification: Some(verification),
            bad,
        })
    }

    /// Verifies `ids` (complete revisions, newest first) and follows the damage
    /// found into the revisions that share it: those whose image maps a bad
    /// block to the same physical extent, with the same checksum, are
    /// distrusted without reading them; the others are checked at that block
    /// on their own (or in full, when they are among `ids`).
    pub fn verify_revisions(&mut self, ids: &[String], sample: Option<f64>) -> Result<VerifyRun> {
        let mut run = VerifyRun::default();
        let checking: BTreeSet<String> = ids.iter().cloned().collect();
        let mut damage = Damage::new();
        // Revisions distrusted through sharing, not to be read again.
        let mut known: BTreeMap<String, Checked> = BTreeMap::new();
        for id in ids {
            if let Some(found) = known.remove(id) {
                tracing::info!(
                    "Revision {id}: not read, it shares the damaged extents of revision {}",
                    found
                        .verification
                        .as_ref()
                        .and_then(|v| v.damage_from.as_deref())
                        .unwrap_or("?")
                );
                run.checked.push(found);
                continue;
            }
            let checked = self.verify_revision(id, sample)?;
            let bad: Vec<u64> = checked.bad.iter().map(|b| b.offset).collect();
            run.checked.push(checked);
            if bad.is_empty() {
                continue;
            }
            let followed = damage.follow(self, id, &bad, &checking)?;
            run.shared.extend(followed.shared);
            for c in followed.checked {
                if let Some(earlier) = run.checked.iter_mut().find(|e| e.id == c.id) {
                    // Read before (and found good at these blocks, from a stale
                    // cache) or reached before: the disk holds the shared bytes.
                    *earlier = c;
                } else if checking.contains(&c.id) {
                    known.insert(c.id.clone(), c);
                } else {
                    run.checked.push(c);
                }
            }
        }
        // Reached through sharing but not among the rest of `ids` (not left).
        run.checked.extend(known.into_values());
        Ok(run)
    }
}

/// "blocks at offsets 0, 65536 differ from their checksums; the block at
/// offset 131072 cannot be read (Input/output error)".
pub fn describe_bad(bad: &[BadBlock]) -> String {
    let list = |blocks: Vec<&BadBlock>| -> String {
        let shown: Vec<String> = blocks
            .iter()
            .take(20)
            .map(|b| b.offset.to_string())
            .collect();
        format!(
            "{}{}",
            shown.join(", "),
            if blocks.len() > 20 {
                format!(" and {} more", blocks.len() - 20)
            } else {
                String::new()
            }
        )
    };
    let differ: Vec<&BadBlock> = bad.iter().filter(|b| b.unreadable.is_none()).collect();
    let unreadable: Vec<&BadBlock> = bad.iter().filter(|b| b.unreadable.is_some()).collect();
    let mut parts = Vec::new();
    if !differ.is_empty() {
        parts.push(format!(
            "blocks at offsets {} differ from their checksums",
            list(differ)
        ));
    }
    if let Some(first) = unreadable.first() {
        let why = first.unreadable.clone().unwrap_or_default();
        parts.push(format!(
            "blocks at offsets {} cannot be read ({why})",
            list(unreadable)
        ));
    }
    parts.join("; ")
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
            job.verify_revision("nope", None).unwrap().outcome,
            VerifyOutcome::NoManifest
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn bad_blocks_are_described_with_their_offsets() {
        let bad = vec![
            BadBlock {
                offset: 65536,
                unreadable: None,
            },
            BadBlock {
                offset: 131072,
                unreadable: Some("Input/output error (os error 5)".into()),
            },
        ];
        assert_eq!(
            describe_bad(&bad),
            "blocks at offsets 65536 differ from their checksums; blocks at offsets 131072 cannot be read (Input/output error (os error 5))"
        );
    }
}
