//! What happens to a job's next run after its runs: failures in a row make it
//! wait longer and longer (the backoff), a success resets that, and a failed
//! run's tags are retried together with whatever else is due. Pure functions of
//! the job's state and `now`, next to [`super::plan`] (the regular slots and
//! catch-up), which this builds on.

use std::collections::BTreeSet;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};

use super::config::Schedule;
use super::plan::{NextRun, next_run};

/// The longest wait after failures (6 hours).
pub const MAX_BACKOFF: Duration = Duration::from_secs(360 * 60);

/// How long to wait before retrying after `failures` failed runs in a row:
/// 2^failures minutes, at most [`MAX_BACKOFF`] (2, 4, 8, ... 256, 360, 360
/// minutes).
pub fn backoff(failures: u32) -> Duration {
    1u64.checked_shl(failures)
        .and_then(|minutes| minutes.checked_mul(60))
        .map_or(MAX_BACKOFF, Duration::from_secs)
        .min(MAX_BACKOFF)
}

/// A job's failures in a row and the time before which it is not retried.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Retry {
    /// Consecutive failures; a manual run does not reset them.
    failures: u32,
    /// Retry not before this, after a failure.
    until: Option<DateTime<Utc>>,
}

impl Retry {
    /// Consecutive failed runs.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// A run failed at `now`: the next one waits [`backoff`] of the failures
    /// so far. Returns that wait.
    pub fn failed(&mut self, now: DateTime<Utc>) -> Duration {
        self.failures = self.failures.saturating_add(1);
        let wait = backoff(self.failures);
        self.until = Some(
            now.checked_add_signed(TimeDelta::from_std(wait).unwrap_or_default())
                .unwrap_or(DateTime::<Utc>::MAX_UTC),
        );
        wait
    }

    /// A run succeeded: no more waiting, and the next failure counts as the first.
    pub fn succeeded(&mut self) {
        *self = Retry::default();
    }

    /// An operator asked for a run now: it does not wait for the backoff, but
    /// the failures in a row still count (a manual run does not reset them).
    pub fn run_now(&mut self) {
        self.until = None;
    }

    /// When a run planned for `planned` may start: not before the backoff ends.
    pub fn deadline(&self, planned: DateTime<Utc>) -> DateTime<Utc> {
        match self.until {
            Some(until) => until.max(planned),
            None => planned,
        }
    }
}

/// The next run at `now`, from the schedule and the job's complete revisions
/// (`history`, oldest first; see [`next_run`]).
///
/// `last_success` (when the scheduler last saw a run succeed, and its tags)
/// counts as a revision when it is newer than all of them, so a run that made
/// none (a `$BACKY_CMD` that makes none) is not re-run in a loop. After a
/// failure, `failed_tags` (the failed run's tags) are retried with whatever
/// else is due; the [`Retry::deadline`] says when.
pub fn next_attempt(
    schedule: &Schedule,
    spread: u64,
    history: &[(DateTime<Utc>, BTreeSet<String>)],
    last_success: Option<&(DateTime<Utc>, BTreeSet<String>)>,
    failed_tags: Option<&BTreeSet<String>>,
    now: DateTime<Utc>,
) -> NextRun {
    let mut next = match last_success {
        Some(success) if history.last().is_none_or(|(newest, _)| *newest < success.0) => {
            let mut history = history.to_vec();
            history.push(success.clone());
            next_run(schedule, spread, &history, now)
        }
        _ => next_run(schedule, spread, history, now),
    };
    if let Some(tags) = failed_tags {
        next.tags.extend(tags.iter().cloned());
    }
    next
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    const DAY: u64 = 86_400;
    const SPREAD: u64 = 639_092;

    fn schedule() -> Schedule {
        Schedule::from_rules(&[("daily", DAY, 9), ("weekly", 7 * DAY, 5)])
    }

    fn at(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, mo, d, h, mi, s).unwrap()
    }

    fn tags(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|t| t.to_string()).collect()
    }

    fn minutes(m: i64) -> TimeDelta {
        TimeDelta::minutes(m)
    }

    #[test]
    fn backoff_doubles_to_six_hours() {
        let minutes: Vec<u64> = (0..12).map(|f| backoff(f).as_secs() / 60).collect();
        assert_eq!(minutes, [1, 2, 4, 8, 16, 32, 64, 128, 256, 360, 360, 360]);
        assert_eq!(backoff(63), MAX_BACKOFF);
        assert_eq!(backoff(64), MAX_BACKOFF);
        assert_eq!(backoff(u32::MAX), MAX_BACKOFF);
    }

    #[test]
    fn the_first_failure_waits_two_minutes() {
        let now = at(2015, 11, 5, 12, 0, 0);
        let mut retry = Retry::default();
        assert_eq!(retry.deadline(now), now);
        assert_eq!(retry.failed(now), Duration::from_secs(120));
        assert_eq!(retry.failures(), 1);
        assert_eq!(retry.deadline(now), now + minutes(2));
        // A run planned after the backoff keeps its time.
        let later = now + TimeDelta::hours(1);
        assert_eq!(retry.deadline(later), later);
    }

    #[test]
    fn each_failure_in_a_row_waits_twice_as_long_up_to_the_cap() {
        let mut now = at(2015, 11, 5, 12, 0, 0);
        let mut retry = Retry::default();
        let mut waits = Vec::new();
        for _ in 0..12 {
            let wait = retry.failed(now);
            // Each retry starts when its backoff ends, and fails again.
            now = retry.deadline(now);
            waits.push(wait.as_secs() / 60);
        }
        assert_eq!(waits, [2, 4, 8, 16, 32, 64, 128, 256, 360, 360, 360, 360]);
        assert_eq!(retry.failures(), 12);
        // The count saturates instead of overflowing; the wait stays capped.
        let mut retry = Retry {
            failures: u32::MAX,
            until: None,
        };
        assert_eq!(retry.failed(now), MAX_BACKOFF);
        assert_eq!(retry.failures(), u32::MAX);
        assert_eq!(retry.deadline(now), now + minutes(360));
        // Far-off dates do not overflow.
        let end = DateTime::<Utc>::MAX_UTC - TimeDelta::seconds(1);
        retry.failed(end);
        assert_eq!(retry.deadline(end), DateTime::<Utc>::MAX_UTC);
    }

    #[test]
    fn a_success_resets_the_backoff() {
        let now = at(2015, 11, 5, 12, 0, 0);
        let mut retry = Retry::default();
        for _ in 0..3 {
            retry.failed(now);
        }
        assert_eq!(retry.deadline(now), now + minutes(8));
        retry.succeeded();
        assert_eq!(retry, Retry::default());
        assert_eq!(retry.deadline(now), now);
        // The next failure counts as the first again.
        assert_eq!(retry.failed(now), Duration::from_secs(120));
    }

    #[test]
    fn a_manual_run_skips_the_wait_but_keeps_the_count() {
        let now = at(2015, 11, 5, 12, 0, 0);
        let mut retry = Retry::default();
        retry.failed(now);
        retry.failed(now);
        retry.run_now();
        assert_eq!(retry.deadline(now), now);
        assert_eq!(retry.failures(), 2);
        assert_eq!(retry.failed(now), Duration::from_secs(8 * 60));
    }

    /// The scheduler was down for three days; the catch-up run fails. It is
    /// retried after the backoff, with its tags, not at once in a loop; once it
    /// succeeds the regular slots follow.
    #[test]
    fn a_failure_during_catch_up_is_retried_after_the_backoff() {
        let s = schedule();
        let history = vec![
            (at(2015, 11, 9, 9, 31, 32), tags(&["daily", "weekly"])),
            (at(2015, 11, 10, 9, 31, 32), tags(&["daily"])),
        ];
        let now = at(2015, 11, 13, 12, 0, 0);
        let mut retry = Retry::default();
        let run = next_attempt(&s, SPREAD, &history, None, None, now);
        assert_eq!(
            run,
            NextRun {
                time: now,
                tags: tags(&["daily"]),
            }
        );
        assert_eq!(retry.deadline(run.time), now);

        // It fails: the missed daily is still due, but waits for the backoff.
        retry.failed(now);
        let after = now + TimeDelta::seconds(30);
        let next = next_attempt(&s, SPREAD, &history, None, Some(&run.tags), after);
        assert_eq!(next.tags, tags(&["daily"]));
        assert_eq!(retry.deadline(next.time), now + minutes(2));

        // The retry fails too: it waits longer.
        let retried = now + minutes(2);
        retry.failed(retried);
        let next = next_attempt(&s, SPREAD, &history, None, Some(&run.tags), retried);
        assert_eq!(retry.deadline(next.time), retried + minutes(4));

        // Then it succeeds (without a revision the scheduler could see): the
        // success counts, so the next run is the regular slot.
        let done = retried + minutes(5);
        retry.succeeded();
        let success = (retried + minutes(4), run.tags.clone());
        let next = next_attempt(&s, SPREAD, &history, Some(&success), None, done);
        assert_eq!(
            next,
            NextRun {
                time: at(2015, 11, 14, 9, 31, 32),
                tags: tags(&["daily"]),
            }
        );
        assert_eq!(retry.deadline(next.time), next.time);
    }

    /// A failed run's tags join the next regular run when nothing is missed,
    /// and a success older than the newest revision changes nothing.
    #[test]
    fn failed_tags_join_the_next_run() {
        let s = schedule();
        let slot = at(2015, 11, 9, 9, 31, 32);
        let history = vec![(slot, tags(&["daily", "weekly"]))];
        let now = slot + minutes(10);
        let regular = next_attempt(&s, SPREAD, &history, None, None, now);
        assert_eq!(
            regular,
            NextRun {
                time: at(2015, 11, 10, 9, 31, 32),
                tags: tags(&["daily"]),
            }
        );
        let old_success = (slot - minutes(60), tags(&["daily"]));
        assert_eq!(
            next_attempt(&s, SPREAD, &history, Some(&old_success), None, now),
            regular
        );
        let manual = tags(&["manual:x", "weekly"]);
        let next = next_attempt(&s, SPREAD, &history, None, Some(&manual), now);
        assert_eq!(next.time, regular.time);
        assert_eq!(next.tags, tags(&["daily", "manual:x", "weekly"]));
    }
}
