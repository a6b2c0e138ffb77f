//! `backy forget -r SPEC`: delete one revision by exact names.

use std::path::Path;

use crate::error::Result;
use crate::job::Job;

/// Deletes the revision's files under the purge lock.
pub fn run(dir: &Path, spec: &str) -> Result<()> {
    let mut job = Job::open(dir)?;
    let lock = job.lock_purge()?;
    let id = job.resolve(spec)?.id.clone();
    job.remove_revision(&id, &lock)?;
    tracing::info!("Forgot revision {id}");
    Ok(())
}
