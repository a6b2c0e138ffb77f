//! Carrying out retention: compute the plan (pure, [`crate::schedule::retention`]),
//! then, under the job's purge lock, drop expired tags and delete revisions left
//! with none. A running backup, restore or NBD export holds a lock that makes
//! this wait for the next run instead of deleting what it uses (LESSONS 13).

use std::path::Path;

use chrono::{DateTime, Utc};

use crate::error::Result;
use crate::job::Job;
use crate::schedule::config::Schedule;
use crate::schedule::retention::{self, RetentionPlan, RevisionInfo};

/// Plans retention for the job in `dir` at `now`, and unless `dry_run` carries it out.
pub fn expire(
    dir: &Path,
    schedule: &Schedule,
    now: DateTime<Utc>,
    dry_run: bool,
) -> Result<RetentionPlan> {
    let mut job = Job::open(dir)?;
    let lock = if dry_run {
        None
    } else {
        Some(job.lock_purge()?)
    };
    // Read again under the lock: a backup may have finished meanwhile.
    job.scan()?;
    let infos: Vec<RevisionInfo> = job.revisions.iter().map(RevisionInfo::from).collect();
    let plan = retention::plan(schedule, &infos, now);
    let Some(lock) = lock else { return Ok(plan) };
    for step in plan.retags() {
        if let Some(rev) = job.revisions.iter().find(|r| r.id == step.id) {
            let mut rev = rev.clone();
            rev.tags = step.remaining_tags();
            job.write_rev(&rev)?;
            tracing::info!(
                "Revision {}: removed expired tags {}",
                rev.id,
                step.expired.join(",")
            );
        }
    }
    for step in plan.deletions() {
        job.remove_revision(&step.id, &lock)?;
        tracing::info!("Revision {} expired: no tags left", step.id);
    }
    Ok(plan)
}
