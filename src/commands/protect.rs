//! `backy protect -r SPEC [--reason TEXT]` and `backy unprotect -r SPEC`:
//! keep a revision out of retention's and `forget`'s reach, or hand it back.

use std::path::Path;

use chrono::Utc;

use crate::error::Result;
use crate::job::Job;
use crate::revision::Protection;

/// Protects the revision `spec` names, under the read lock (so no forget or
/// expiry deletes it meanwhile). Protecting it again replaces the reason when
/// one is given and keeps the original date.
pub fn protect(dir: &Path, spec: &str, reason: Option<&str>) -> Result<()> {
    let mut job = Job::open(dir)?;
    let _lock = job.lock_read()?;
    let id = job.resolve(spec)?.id.clone();
    // One line of plain words: the reason is a table cell and a log line.
    let reason = reason
        .map(|r| r.split_whitespace().collect::<Vec<_>>().join(" "))
        .filter(|r| !r.is_empty());
    let mut already = false;
    let rev = job.update_rev(&id, |rev| {
        already = rev.protected.is_some();
        let old = rev.protected.take().unwrap_or_default();
        rev.protected = Some(Protection {
            reason: reason.clone().or(old.reason),
            since: old.since.or_else(|| Some(Utc::now())),
        });
    })?;
    let note = rev
        .protected
        .as_ref()
        .map(Protection::reason_note)
        .unwrap_or_default();
    if already {
        tracing::info!("Revision {id} was already protected{note}");
    } else {
        tracing::info!(
            "Protected revision {id}{note}: retention keeps it and forget needs --force"
        );
    }
    Ok(())
}

/// Removes the protection of the revision `spec` names; retention decides
/// about it again on its next run.
pub fn unprotect(dir: &Path, spec: &str) -> Result<()> {
    let mut job = Job::open(dir)?;
    let _lock = job.lock_read()?;
    let id = job.resolve(spec)?.id.clone();
    let mut was = None;
    let rev = job.update_rev(&id, |rev| was = rev.protected.take())?;
    match was {
        Some(p) => {
            let tags = if rev.tags.is_empty() {
                "; it has no tags left, so the next expiry deletes it".to_string()
            } else {
                String::new()
            };
            tracing::info!("Unprotected revision {id}{}{tags}", p.reason_note());
        }
        None => tracing::info!("Revision {id} was not protected"),
    }
    Ok(())
}
