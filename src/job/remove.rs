//! Removing revisions: the one answer to "where is a revision removed?".
//!
//! A backup removes incomplete revisions under its backup lock (those a crash
//! left, and its own when it fails); `forget` removes one revision, and expiry
//! ([`expire`]) carries out a retention plan, under the purge lock. All of them
//! delete the files through [`Job::remove_files`].
//!
//! Expiry computes the plan (pure, [`crate::schedule::retention`]), then, under
//! the job's purge lock, drops expired tags and deletes revisions left with
//! none. A running backup, restore or verify holds a lock that makes it wait
//! for the next run instead of deleting what they use.

use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};

use super::{BackupLock, Job, PurgeLock, TEMP_INFIX, is_temp_of, remove_stale_overlays};
use crate::error::{Error, Result};
use crate::schedule::config::Schedule;
use crate::schedule::retention::{self, RetentionPlan, RevisionInfo};
use crate::sys;

/// Plans retention for the job in `dir` at `now`, and unless `dry_run` carries
/// it out ([`Job::apply_retention`]) under the job's purge lock. The
/// scheduler's expiry: it does not measure what the deletions freed, since
/// `syncfs` on a busy backup server could stall the scheduler's loop.
pub fn expire(
    dir: &Path,
    schedule: &Schedule,
    now: DateTime<Utc>,
    dry_run: bool,
) -> Result<RetentionPlan> {
    expire_with(dir, schedule, now, dry_run, false)
}

/// [`expire`], and logs the bytes the deletions freed as `statfs` counts
/// them ([`Job::apply_retention_logging_freed`]): `backy expire`.
pub fn expire_logging_freed(
    dir: &Path,
    schedule: &Schedule,
    now: DateTime<Utc>,
    dry_run: bool,
) -> Result<RetentionPlan> {
    expire_with(dir, schedule, now, dry_run, true)
}

fn expire_with(
    dir: &Path,
    schedule: &Schedule,
    now: DateTime<Utc>,
    dry_run: bool,
    log_freed: bool,
) -> Result<RetentionPlan> {
    let mut job = Job::open(dir)?;
    let lock = if dry_run {
        None
    } else {
        Some(job.lock_purge()?)
    };
    // The purge lock has read the revisions again: a backup may have
    // finished meanwhile.
    let plan = job.retention_plan(schedule, now);
    if let Some(lock) = lock {
        if log_freed {
            job.apply_retention_logging_freed(&plan, &lock)?;
        } else {
            job.apply_retention(&plan, &lock)?;
        }
    }
    Ok(plan)
}

impl Job {
    /// Every file a revision owns: its image, manifest and `.rev` (the
    /// `.rev` last), and temp files of its `.rev` a crash left
    /// ([`super::is_temp_of`]). Called with the `.meta` lock held, so no
    /// writer's temp file is among them.
    fn owned_paths(&self, id: &str) -> Vec<PathBuf> {
        let rev_name = format!("{id}.rev");
        let sums_name = format!("{id}.sums");
        let mut paths = vec![self.image_path(id), self.sums_path(id)];
        if let Ok(entries) = std::fs::read_dir(&self.dir) {
            for entry in entries.flatten() {
                let name = entry.file_name();
                let name = name.to_string_lossy();
                if is_temp_of(&name, &rev_name) || is_temp_of(&name, &sums_name) {
                    paths.push(entry.path());
                }
            }
        }
        paths.push(self.rev_path(id));
        paths
    }

    /// Deletes a revision's files by exact name, `.rev` last, so a crash leaves an
    /// incomplete-looking revision rather than an orphan image. The one place
    /// where a revision's files are deleted: `forget` (of a revision or a
    /// damaged one), expiry and a backup's cleanup of incomplete revisions all
    /// come here.
    fn remove_files(&self, id: &str) -> Result<()> {
        let _meta = self.lock_meta()?;
        for path in self.owned_paths(id) {
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io("cannot remove", &path)(e)),
            }
        }
        sys::fsync_dir(&self.dir).map_err(Error::io("cannot sync", &self.dir))
    }

    /// Removes a complete or incomplete revision (needs the purge lock) and
    /// fixes `last`; logs the bytes the filesystem freed (`Job::log_freed`).
    pub fn remove_revision(&mut self, id: &str, lock: &PurgeLock) -> Result<()> {
        let before = self.available_bytes(false);
        self.remove_revision_unmeasured(id, lock)?;
        self.log_freed(before, &format!("Removing revision {id}"));
        Ok(())
    }

    /// Free bytes of the job's filesystem: before a removal one reading
    /// ([`sys::available_bytes`]), since nothing this command deleted is being
    /// freed yet; after it, `settled` ([`sys::settled_available_bytes`]).
    /// `None` (and a debug line) when `statfs` fails.
    fn available_bytes(&self, settled: bool) -> Option<u64> {
        let read = if settled {
            sys::settled_available_bytes
        } else {
            sys::available_bytes
        };
        read(&self.dir)
            .inspect_err(|e| tracing::debug!("statfs of {}: {e}", self.dir.display()))
            .ok()
    }

    /// Logs how much free space `what` gained since `before`, as `statfs`
    /// counts it: the bytes actually freed, to compare with what `status`
    /// predicted.
    fn log_freed(&self, before: Option<u64>, what: &str) {
        let (Some(before), Some(after)) = (before, self.available_bytes(true)) else {
            return;
        };
        match after.checked_sub(before) {
            Some(freed) => tracing::info!(
                "{what} freed {} on the filesystem (statfs)",
                crate::units::format_bytes(freed)
            ),
            None => tracing::info!(
                "{what} freed nothing on the filesystem (statfs: {} less free space, written meanwhile)",
                crate::units::format_bytes(before - after)
            ),
        }
    }

    fn remove_revision_unmeasured(&mut self, id: &str, _lock: &PurgeLock) -> Result<()> {
        // Mark it incomplete first: a crash half-way must not leave a "complete"
        // revision without its image.
        if let Some(rev) = self.revision(id) {
            let mut rev = rev.clone();
            rev.stats.shift_remove("duration");
            let _meta = self.lock_meta()?;
            match self.write_rev(&rev) {
                Ok(()) => {}
                // A full filesystem has no room for the rewritten `.rev` (and
                // removing revisions is how the operator makes room): take the
                // revision out of sight by renaming its `.rev` to a temp name
                // instead, which needs no space. Stopped half-way, it is an
                // image beside a `.rev` temp file, which the next backup's
                // cleanup removes.
                Err(Error::NoSpace { .. }) => {
                    let path = self.rev_path(id);
                    let aside = self.dir.join(format!("{id}.rev{TEMP_INFIX}removing"));
                    std::fs::rename(&path, &aside).map_err(Error::io("cannot rename", &path))?;
                    sys::fsync_dir(&self.dir).map_err(Error::io("cannot sync", &self.dir))?;
                }
                Err(e) => return Err(e),
            }
        }
        self.remove_files(id)?;
        self.revisions.retain(|r| r.id != id);
        self.update_last()
    }

    /// The retention plan for the revisions as last read, at `now`.
    pub fn retention_plan(&self, schedule: &Schedule, now: DateTime<Utc>) -> RetentionPlan {
        let infos: Vec<RevisionInfo> = self.revisions.iter().map(RevisionInfo::from).collect();
        retention::plan(schedule, &infos, now)
    }

    /// Carries out a retention plan (needs the purge lock): rewrites the
    /// `.rev` of revisions that lose tags, and removes those left with none.
    pub fn apply_retention(&mut self, plan: &RetentionPlan, lock: &PurgeLock) -> Result<()> {
        self.apply_retention_with(plan, lock, false)
    }

    /// [`Job::apply_retention`], and logs the bytes the deletions freed
    /// (`Job::log_freed`).
    pub fn apply_retention_logging_freed(
        &mut self,
        plan: &RetentionPlan,
        lock: &PurgeLock,
    ) -> Result<()> {
        self.apply_retention_with(plan, lock, true)
    }

    fn apply_retention_with(
        &mut self,
        plan: &RetentionPlan,
        lock: &PurgeLock,
        log_freed: bool,
    ) -> Result<()> {
        // Deletions first: on a full filesystem they make the room that the
        // rewritten `.rev` files of the retags need.
        let deletions: Vec<&str> = plan.deletions().map(|s| s.id.as_str()).collect();
        if !deletions.is_empty() {
            let before = if log_freed {
                self.available_bytes(false)
            } else {
                None
            };
            for id in &deletions {
                self.remove_revision_unmeasured(id, lock)?;
                tracing::info!("Revision {id} expired: no tags left");
            }
            if log_freed {
                let what = format!(
                    "Expiry of {}",
                    crate::units::count(deletions.len(), "revision")
                );
                self.log_freed(before, &what);
            }
        }
        for step in plan.retags() {
            if self.revision(&step.id).is_some() {
                self.update_rev(&step.id, |rev| {
                    rev.tags.retain(|t| !step.expired.contains(t));
                })?;
                tracing::info!(
                    "Revision {}: removed expired tags {}",
                    step.id,
                    step.expired.join(",")
                );
            }
        }
        Ok(())
    }

    /// Deletes a damaged revision's files (`forget -r ID --force`; needs the purge lock).
    pub fn remove_damaged(&mut self, id: &str, _lock: &PurgeLock) -> Result<()> {
        self.remove_files(id)?;
        self.damaged.retain(|d| d.id != id);
        self.update_last()
    }

    /// Removes every incomplete revision (needs the backup lock); returns their ids.
    pub fn remove_incomplete(&mut self, _lock: &BackupLock) -> Result<Vec<String>> {
        let incomplete: Vec<String> = self
            .revisions
            .iter()
            .filter(|r| !r.is_complete())
            .map(|r| r.id.clone())
            .collect();
        for id in &incomplete {
            self.remove_files(id)?;
        }
        // The files of a revision whose first `.rev` write never landed: an
        // image and a temp file of its `.rev`, but no `.rev`.
        let mut orphans = std::collections::BTreeSet::new();
        if let Ok(entries) = std::fs::read_dir(&self.dir) {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if let Some(at) = name.find(".rev.tmp") {
                    let id = &name[..at];
                    if is_temp_of(&name, &format!("{id}.rev")) && !self.rev_path(id).exists() {
                        orphans.insert(id.to_string());
                    }
                }
            }
        }
        for id in orphans {
            self.remove_files(&id)?;
        }
        // Temp files of `.rev` updates that a killed verify, distrust or
        // protect left (each is otherwise removed only when that `.rev` is
        // written again).
        super::remove_all_stale_temps(&self.dir);
        self.revisions.retain(|r| r.is_complete());
        match remove_stale_overlays(&self.dir) {
            Ok(paths) => {
                for path in paths {
                    tracing::info!(
                        "Removed NBD overlay {} left by a crashed server",
                        path.display()
                    );
                }
            }
            Err(e) => tracing::warn!(
                "Could not look for stale NBD overlays in {}: {e}",
                self.dir.display()
            ),
        }
        Ok(incomplete)
    }

    /// Removes the files of a revision that failed before completion.
    pub fn discard_incomplete(&self, id: &str, _lock: &BackupLock) -> Result<()> {
        self.remove_files(id)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use chrono::{TimeDelta, TimeZone};

    use super::*;
    use crate::revision::Revision;
    use crate::schedule::config::TagRule;

    const DAY: u64 = 86_400;

    fn tags(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|t| t.to_string()).collect()
    }

    /// Writes a revision with its image and manifest.
    fn make(job: &Job, id: &str, at: DateTime<Utc>, names: &[&str], complete: bool) {
        std::fs::write(job.image_path(id), b"image").unwrap();
        std::fs::write(job.sums_path(id), b"sums").unwrap();
        let mut rev = Revision::new(id.into(), None, tags(names));
        rev.timestamp = at;
        if complete {
            rev.set_stat("duration", 1.0);
        }
        job.write_rev(&rev).unwrap();
    }

    fn files(job: &Job) -> BTreeSet<String> {
        std::fs::read_dir(job.dir())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| !n.starts_with('.'))
            .collect()
    }

    fn owned(id: &str) -> BTreeSet<String> {
        ["", ".rev", ".sums"]
            .iter()
            .map(|s| format!("{id}{s}"))
            .collect()
    }

    /// Expiry, a backup's cleanup, `forget` and `forget --force` each remove
    /// every file of the revisions they remove, and nothing else.
    #[test]
    fn every_removal_takes_all_files_of_a_revision_and_nothing_else() {
        let tmp = tempfile::tempdir().unwrap();
        let mut job = Job::open(tmp.path()).unwrap();
        let now = Utc.with_ymd_and_hms(2015, 11, 13, 12, 0, 0).unwrap();
        let ago = |h: i64| now - TimeDelta::hours(h);
        make(&job, "a", ago(72), &["daily"], true);
        make(&job, "b", ago(48), &["daily", "weekly"], true);
        make(&job, "c", ago(1), &["daily"], true);
        make(&job, "d", now, &["daily"], false);
        job.scan().unwrap();
        job.update_last().unwrap();
        let schedule = Schedule {
            tags: [("daily", DAY), ("weekly", 7 * DAY)]
                .into_iter()
                .map(|(t, interval)| (t.to_string(), TagRule { interval, keep: 1 }))
                .collect(),
        };
        let all = files(&job);

        // A dry run only plans.
        let plan = expire(job.dir(), &schedule, now, true).unwrap();
        let ids = |steps: Vec<&retention::RevisionPlan>| -> Vec<String> {
            steps.into_iter().map(|s| s.id.clone()).collect()
        };
        assert_eq!(ids(plan.deletions().collect()), ["a"]);
        assert_eq!(ids(plan.retags().collect()), ["b"]);
        assert_eq!(files(&job), all);

        // Expiry deletes a, takes daily from b, leaves the incomplete d alone.
        let carried_out = expire(job.dir(), &schedule, now, false).unwrap();
        assert_eq!(carried_out, plan);
        let mut left = all.clone();
        left.retain(|f| !owned("a").contains(f));
        assert_eq!(files(&job), left);
        job.scan().unwrap();
        let b = job.revisions.iter().find(|r| r.id == "b").unwrap();
        assert_eq!(b.tags, tags(&["weekly"]));
        assert_eq!(
            std::fs::read_link(job.dir().join("last")).unwrap(),
            Path::new("c")
        );

        // A backup's cleanup: the incomplete d, and the files of a revision
        // whose first `.rev` write never landed.
        std::fs::write(job.image_path("e"), b"image").unwrap();
        std::fs::write(job.dir().join("e.rev.tmp"), b"id: e").unwrap();
        {
            let lock = job.lock_backup().unwrap();
            assert_eq!(job.remove_incomplete(&lock).unwrap(), ["d"]);
        }
        left.retain(|f| !owned("d").contains(f));
        assert_eq!(files(&job), left);

        // `forget` of the newest complete revision moves `last` back.
        {
            let lock = job.lock_purge().unwrap();
            job.remove_revision("c", &lock).unwrap();
        }
        left.retain(|f| !owned("c").contains(f));
        assert_eq!(files(&job), left);
        assert_eq!(
            std::fs::read_link(job.dir().join("last")).unwrap(),
            Path::new("b")
        );

        // `forget --force` of a damaged revision.
        std::fs::write(job.rev_path("f"), b"not: [yaml").unwrap();
        std::fs::write(job.image_path("f"), b"image").unwrap();
        job.scan().unwrap();
        assert!(job.find_damaged("f").is_some());
        {
            let lock = job.lock_purge().unwrap();
            job.remove_damaged("f", &lock).unwrap();
        }
        assert_eq!(files(&job), left);
        assert!(job.damaged.is_empty());
    }
}
