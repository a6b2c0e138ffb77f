//! `backy forget -r SPEC [--force]`: delete one revision by exact names.

use std::path::Path;

use crate::error::{Error, Result};
use crate::job::Job;

/// Deletes the revision's files under the purge lock. A damaged revision
/// (named by its exact id) is deleted only with `force`.
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
    let id = job.resolve(spec)?.id.clone();
    job.remove_revision(&id, &lock)?;
    tracing::info!("Forgot revision {id}");
    Ok(())
}
