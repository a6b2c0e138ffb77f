//! `backy forget -r SPEC [--force]`: delete one revision by exact names.
//!
//! Without `--force` it refuses a protected revision, the newest complete
//! revision (the next backup's parent) and a damaged one.

use std::path::Path;

use crate::error::{Error, Result};
use crate::job::Job;

/// Deletes the revision's files under the purge lock. A damaged revision
/// (named by its exact id), a protected one and the newest complete one are
/// deleted only with `force`.
pub fn run(dir: &Path, spec: &str, force: bool) -> Result<()> {
    let mut job = Job::open(dir)?;
    let lock = job.lock_purge()?;
    job.scan()?;
    if let Some(d) = job.find_damaged(spec).cloned() {
        if !force {
            return Err(Error::DamagedRevision {
                id: d.id,
                file: d.file,
                reason: d.reason,
            });
        }
        job.remove_damaged(&d.id, &lock)?;
        tracing::info!(
            "Forgot damaged revision {} ({}: {})",
            d.id,
            d.file.display(),
            d.reason
        );
        return Ok(());
    }
    let rev = job.resolve(spec)?;
    let id = rev.id.clone();
    if !force {
        if let Some(p) = &rev.protected {
            return Err(Error::ForgetProtected {
                id,
                reason: p.reason.clone(),
            });
        }
        if job.newest_complete().is_some_and(|newest| newest.id == id) {
            return Err(Error::ForgetNewest { id });
        }
    }
    let protected = rev.protected.is_some();
    job.remove_revision(&id, &lock)?;
    if protected {
        tracing::info!("Forgot protected revision {id}");
    } else {
        tracing::info!("Forgot revision {id}");
    }
    Ok(())
}
