//! `backy expire -c CONFIG [--dry-run]`: apply the job's retention now.

use std::path::Path;

use chrono::Utc;

use crate::error::{Error, Result};
use crate::job::Job;
use crate::schedule::config::Config;
use crate::schedule::retention::RetentionPlan;

/// Expires the job in `dir`, whose schedule the scheduler config names by the
/// directory's name; with `dry_run`, only prints the plan.
pub fn run(dir: &Path, config_path: &Path, dry_run: bool) -> Result<()> {
    let config = Config::load(config_path)?;
    let dir = std::path::absolute(dir).map_err(Error::io("cannot resolve", dir))?;
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let schedule = config
        .schedule_of(&name)
        .ok_or_else(|| Error::JobNotScheduled {
            name: name.clone(),
            config: config_path.to_owned(),
        })?;
    let plan = crate::job::expire_logging_freed(&dir, schedule, Utc::now(), dry_run)?;
    let mut text = plan.to_string();
    if dry_run {
        text.push_str(&freed_by_plan(&dir, &plan));
        text.push_str("(dry run: nothing changed)\n");
    }
    crate::output::stdout(&text)
}

/// One line: how many revisions the plan deletes and what that frees.
fn freed_by_plan(dir: &Path, plan: &RetentionPlan) -> String {
    let ids: Vec<&str> = plan.deletions().map(|s| s.id.as_str()).collect();
    let what = format!("Deleting {}", crate::units::count(ids.len(), "revision"));
    if ids.is_empty() {
        return format!("{what}: nothing to free\n");
    }
    match Job::open(dir).and_then(|job| crate::space::measure(&job)) {
        Ok(space) => format!("{what} frees {}\n", space.describe(space.freed_by(ids))),
        Err(e) => format!("{what}: space not measured: {e}\n"),
    }
}
