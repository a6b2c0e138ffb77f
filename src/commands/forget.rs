//! `backy forget -r SPEC [--force] [--dry-run]`: delete one revision by exact names.

use std::path::Path;

use crate::error::{Error, Result};
use crate::job::Job;

/// Deletes the revision's files under the purge lock. A damaged revision
/// (named by its exact id) is deleted only with `force`. With `dry_run`, only
/// says which revision would go and how much that frees.
pub fn run(dir: &Path, spec: &str, force: bool, dry_run: bool) -> Result<()> {
    let mut job = Job::open(dir)?;
    if dry_run {
        return dry(&job, spec, force);
    }
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

/// What `forget` would delete and free, on stdout; changes nothing.
fn dry(job: &Job, spec: &str, force: bool) -> Result<()> {
    let text = if let Some(d) = job.find_damaged(spec) {
        if !force {
            return Err(Error::DamagedRevision {
                id: d.id.clone(),
                file: d.file.clone(),
                reason: d.reason.clone(),
            });
        }
        format!(
            "Would delete damaged revision {}: space not measured (it is not a complete revision)\n",
            d.id
        )
    } else {
        let rev = job.resolve(spec)?;
        let freed = match crate::space::measure(job) {
            Ok(space) => format!(
                "frees {}",
                space.describe(space.freed_by([rev.id.as_str()]))
            ),
            Err(e) => format!("space not measured: {e}"),
        };
        format!(
            "Would delete revision {} of {}: {freed}\n",
            rev.id,
            rev.timestamp.format("%Y-%m-%d %H:%M:%S")
        )
    };
    crate::output::stdout(&format!("{text}(dry run: nothing changed)\n"))
}
