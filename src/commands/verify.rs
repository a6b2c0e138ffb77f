//! `backy verify [-r SPEC]`: re-read revisions and compare them with their manifests.

use std::path::Path;

use crate::error::{Error, Result};
use crate::job::{Job, VerifyOutcome};

/// Verifies one revision or all complete ones, newest first.
pub fn run(dir: &Path, spec: Option<&str>) -> Result<()> {
    let mut job = Job::open(dir)?;
    let _lock = job.lock_read()?;
    let ids: Vec<String> = match spec {
        Some(s) => vec![job.resolve(s)?.id.clone()],
        None => job
            .revisions()
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
        match job.verify_revision(id)? {
            VerifyOutcome::Good => {}
            VerifyOutcome::Bad => failed.push(id.clone()),
            VerifyOutcome::NoManifest => {
                let ours = job
                    .revisions()
                    .iter()
                    .find(|r| &r.id == id)
                    .is_some_and(|r| r.made_by_us());
                let err = Error::NoManifest {
                    id: id.clone(),
                    sums: ours.then(|| job.sums_path(id)),
                };
                if spec.is_some() {
                    return Err(err);
                }
                tracing::warn!("{err}");
            }
        }
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(Error::RevisionsDistrusted { ids: failed })
    }
}
