//! `backy forget -r SPEC [--force] [--dry-run]`: delete one revision by exact names.
//!
//! Without `--force` it refuses a protected revision, the newest complete
//! revision (the next backup's parent) and a damaged one. `--dry-run` makes the
//! same checks and says what the deletion would free.

use std::path::Path;

use crate::error::{Error, Result};
use crate::job::{Damaged, Job};
use crate::revision::Revision;

/// What `forget -r SPEC` deletes, once the guards passed.
enum Target<'a> {
    Damaged(&'a Damaged),
    Revision(&'a Revision),
}

/// The revision `spec` names, or the error that refuses it: a damaged one (by
/// exact id), a protected one and the newest complete one need `force`.
fn target<'a>(job: &'a Job, spec: &str, force: bool) -> Result<Target<'a>> {
    if let Some(d) = job.find_damaged(spec) {
        if !force {
            return Err(Error::DamagedRevision {
                id: d.id.clone(),
                file: d.file.clone(),
                reason: d.reason.clone(),
            });
        }
        return Ok(Target::Damaged(d));
    }
    let rev = job.resolve(spec)?;
    if !force {
        if let Some(p) = &rev.protected {
            return Err(Error::ForgetProtected {
                id: rev.id.clone(),
                reason: p.reason.clone(),
            });
        }
        if job
            .newest_complete()
            .is_some_and(|newest| newest.id == rev.id)
        {
            return Err(Error::ForgetNewest { id: rev.id.clone() });
        }
    }
    Ok(Target::Revision(rev))
}

/// Deletes the revision's files under the purge lock (see [`target`] for
/// what needs `force`). With `dry_run`, only says which revision would go and
/// how much that frees.
pub fn run(dir: &Path, spec: &str, force: bool, dry_run: bool) -> Result<()> {
    let mut job = Job::open(dir)?;
    if dry_run {
        return dry(&job, spec, force);
    }
    let lock = job.lock_purge()?;
    match target(&job, spec, force)? {
        Target::Damaged(d) => {
            let d = d.clone();
            job.remove_damaged(&d.id, &lock)?;
            tracing::info!(
                "Forgot damaged revision {} ({}: {})",
                d.id,
                d.file.display(),
                d.reason
            );
        }
        Target::Revision(rev) => {
            let id = rev.id.clone();
            let protected = rev.protected.is_some();
            job.remove_revision(&id, &lock)?;
            if protected {
                tracing::info!("Forgot protected revision {id}");
            } else {
                tracing::info!("Forgot revision {id}");
            }
        }
    }
    Ok(())
}

/// What `forget` would delete and free, on stdout; changes nothing.
fn dry(job: &Job, spec: &str, force: bool) -> Result<()> {
    let text = match target(job, spec, force)? {
        Target::Damaged(d) => format!(
            "Would delete damaged revision {}: space not measured (it is not a complete revision)\n",
            d.id
        ),
        Target::Revision(rev) => {
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
        }
    };
    crate::output::stdout(&format!("{text}(dry run: nothing changed)\n"))
}
