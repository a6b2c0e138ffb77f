//! When a job runs next and with which tags; whether it is within its SLA.
//! Pure functions of the schedule, the job's history and `now`. How failures
//! delay the next run is [`super::backoff`].
//!
//! Each tag has ideal times `epoch + k * interval + (spread mod interval)`, with
//! the epoch 0001-01-01 00:00 UTC (Python's `datetime.min`, as backy 2.x): daily
//! slots are a fixed time of day, 7-day slots a fixed weekday. The next run is
//! the earliest ideal time over the schedule's tags and carries every tag ideal
//! at that moment, so a weekly slot also makes the daily revision.

use std::collections::BTreeSet;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};

use super::config::Schedule;

/// The scheduler's epoch, 0001-01-01 00:00:00 UTC, in Unix seconds.
const EPOCH_UNIX: i64 = -62_135_596_800;

/// Missed tags wait for the next ideal run when it is at most this far away;
/// otherwise they run at once (as backy 2.2+).
pub const CATCH_UP_GRACE: Duration = Duration::from_secs(5 * 60);

/// A planned run: when, and with which tags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NextRun {
    /// When the backup should start.
    pub time: DateTime<Utc>,
    /// The tags the new revision gets.
    pub tags: BTreeSet<String>,
}

/// The scheduler's epoch, 0001-01-01 00:00 UTC, from which all slots count.
pub fn epoch() -> DateTime<Utc> {
    DateTime::from_timestamp(EPOCH_UNIX, 0).unwrap_or(DateTime::<Utc>::MIN_UTC)
}

/// The first ideal time of a tag strictly after `now`: the smallest
/// `epoch + k * interval + (spread mod interval)` later than `now`.
///
/// An interval of 0 (which a parsed configuration never has) counts as 1 s.
pub fn next_tag_time(interval: u64, spread: u64, now: DateTime<Utc>) -> DateTime<Utc> {
    let interval = i128::from(interval.max(1));
    let offset = i128::from(spread) % interval;
    // `timestamp()` rounds down, which keeps "strictly after" exact for
    // sub-second `now`: the slots are whole seconds.
    let since_slot_base = i128::from(now.timestamp()) - i128::from(EPOCH_UNIX) - offset;
    let k = since_slot_base.div_euclid(interval) + 1;
    let next = i128::from(EPOCH_UNIX) + k * interval + offset;
    i64::try_from(next)
        .ok()
        .and_then(|secs| DateTime::from_timestamp(secs, 0))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// The next regular run after `now`: the earliest ideal time over the
/// schedule's tags, with every tag ideal at that time.
///
/// A schedule without tags never runs: its next run is the end of time, with
/// no tags.
pub fn next_ideal(schedule: &Schedule, spread: u64, now: DateTime<Utc>) -> NextRun {
    let mut next = NextRun {
        time: DateTime::<Utc>::MAX_UTC,
        tags: BTreeSet::new(),
    };
    for (tag, rule) in &schedule.tags {
        let time = next_tag_time(rule.interval, spread, now);
        if time < next.time {
            next.time = time;
            next.tags.clear();
        }
        if time == next.time {
            next.tags.insert(tag.clone());
        }
    }
    next
}

/// The schedule's tags that no complete revision newer than one interval
/// carries. `history` holds the job's complete revisions (time and tags).
pub fn missed_tags(
    schedule: &Schedule,
    history: &[(DateTime<Utc>, BTreeSet<String>)],
    now: DateTime<Utc>,
) -> BTreeSet<String> {
    schedule
        .tags
        .iter()
        .filter(|(tag, rule)| {
            let since = now
                .checked_sub_signed(seconds(rule.interval))
                .unwrap_or(DateTime::<Utc>::MIN_UTC);
            !history
                .iter()
                .any(|(time, tags)| *time > since && tags.contains(*tag))
        })
        .map(|(tag, _)| tag.clone())
        .collect()
}

/// The next run, catching up on missed tags.
///
/// `history` holds the job's *complete* revisions (time and tags); incomplete
/// ones must not be passed, they prove nothing. A job without any runs now
/// with all tags (as backy 2.1). Otherwise missed tags (see [`missed_tags`])
/// run now, alone, when the next ideal run is more than [`CATCH_UP_GRACE`]
/// away, and else join that run (as backy 2.2+).
pub fn next_run(
    schedule: &Schedule,
    spread: u64,
    history: &[(DateTime<Utc>, BTreeSet<String>)],
    now: DateTime<Utc>,
) -> NextRun {
    if history.is_empty() {
        return NextRun {
            time: now,
            tags: schedule.tags.keys().cloned().collect(),
        };
    }
    let mut next = next_ideal(schedule, spread, now);
    let missed = missed_tags(schedule, history, now);
    if missed.is_empty() {
        return next;
    }
    let grace = TimeDelta::from_std(CATCH_UP_GRACE).unwrap_or(TimeDelta::MAX);
    if next.time
        > now
            .checked_add_signed(grace)
            .unwrap_or(DateTime::<Utc>::MAX_UTC)
    {
        NextRun {
            time: now,
            tags: missed,
        }
    } else {
        next.tags.extend(missed);
        next
    }
}

/// How old the newest complete revision may get: 1.5 times the schedule's
/// shortest interval.
pub fn sla_limit(schedule: &Schedule) -> Duration {
    Duration::from_millis(schedule.min_interval().saturating_mul(1500))
}

/// Whether a job is within its SLA: its newest complete revision is at most
/// [`sla_limit`] old. **We differ** from the original, which called a job that
/// never completed a backup OK forever: such a job is out of SLA once it has
/// been known (configured) for longer than the limit.
pub fn within_sla(
    schedule: &Schedule,
    newest_complete: Option<DateTime<Utc>>,
    job_known_since: DateTime<Utc>,
    now: DateTime<Utc>,
) -> bool {
    let limit = TimeDelta::from_std(sla_limit(schedule)).unwrap_or(TimeDelta::MAX);
    let reference = newest_complete.unwrap_or(job_known_since);
    now.signed_duration_since(reference) <= limit
}

/// The time the SLA counts from: the newest complete revision's timestamp,
/// unless it lies after `now`. A revision dated in the future (the clock was
/// ahead when it was made) proves nothing about how recent the job's backups
/// are, so then the start of the newest run the scheduler saw succeed counts,
/// or, without one, nothing (the job's `known_since`).
pub fn sla_reference(
    newest_complete: Option<DateTime<Utc>>,
    last_success: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    match newest_complete {
        Some(t) if t > now => last_success.filter(|s| *s <= now),
        other => other,
    }
}

/// Whole seconds as a time delta, saturating far beyond any real interval.
fn seconds(secs: u64) -> TimeDelta {
    i64::try_from(secs)
        .ok()
        .and_then(TimeDelta::try_seconds)
        .unwrap_or(TimeDelta::MAX)
}

/// When a job's scrub (`scrub: INTERVAL SHARE`) is due next: the first slot
/// `epoch + k * interval + (spread mod interval)` at least `interval` after
/// the last scrub (so scrubs are spread like backups and never closer than the
/// interval), or the first slot after `now` when the job was never scrubbed.
/// A slot in the past means: due now.
pub fn next_scrub(
    interval: u64,
    spread: u64,
    last: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> DateTime<Utc> {
    match last {
        None => next_tag_time(interval, spread, now),
        Some(last) => {
            let earliest = last
                .checked_add_signed(TimeDelta::seconds(
                    i64::try_from(interval.max(1)).unwrap_or(i64::MAX) - 1,
                ))
                .unwrap_or(DateTime::<Utc>::MAX_UTC);
            next_tag_time(interval, spread, earliest)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schedule::spread::spread;
    use chrono::{Datelike, TimeZone, Weekday};
    use proptest::prelude::*;

    const DAY: u64 = 86_400;

    fn schedule(rules: &[(&str, u64, u32)]) -> Schedule {
        Schedule::from_rules(rules)
    }

    fn default_schedule() -> Schedule {
        schedule(&[
            ("daily", DAY, 9),
            ("weekly", 7 * DAY, 5),
            ("monthly", 30 * DAY, 4),
        ])
    }

    fn at(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, mo, d, h, mi, s).unwrap()
    }

    fn tags(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|t| t.to_string()).collect()
    }

    /// Next runs of a schedule as backy 2.x computed them for the same inputs.
    #[test]
    fn next_runs_match_backy_2() {
        let s = default_schedule();
        let spread = spread("test01", s.max_interval());
        assert_eq!(spread, 639_092);
        let now = at(2015, 11, 5, 12, 0, 0);
        assert_eq!(next_tag_time(DAY, spread, now), at(2015, 11, 6, 9, 31, 32));
        assert_eq!(
            next_tag_time(7 * DAY, spread, now),
            at(2015, 11, 9, 9, 31, 32)
        );
        assert_eq!(
            next_tag_time(30 * DAY, spread, now),
            at(2015, 11, 6, 9, 31, 32)
        );
        assert_eq!(
            next_ideal(&s, spread, now),
            NextRun {
                time: at(2015, 11, 6, 9, 31, 32),
                tags: tags(&["daily", "monthly"]),
            }
        );
        // The Monday slot carries daily and weekly.
        let monday = next_ideal(&s, spread, at(2015, 11, 8, 12, 0, 0));
        assert_eq!(monday.time, at(2015, 11, 9, 9, 31, 32));
        assert_eq!(monday.tags, tags(&["daily", "weekly"]));
    }

    #[test]
    fn strictly_after_now() {
        let slot = at(2015, 11, 6, 9, 31, 32);
        let spread = 639_092;
        assert_eq!(next_tag_time(DAY, spread, slot), slot + TimeDelta::days(1));
        let just_before = slot - TimeDelta::nanoseconds(1);
        assert_eq!(next_tag_time(DAY, spread, just_before), slot);
        let just_after = slot + TimeDelta::milliseconds(500);
        assert_eq!(
            next_tag_time(DAY, spread, just_after),
            slot + TimeDelta::days(1)
        );
        assert_eq!(epoch(), at(1, 1, 1, 0, 0, 0));
        // A spread of 0 puts daily slots at midnight; a spread beyond the
        // interval wraps.
        assert_eq!(next_tag_time(DAY, 0, slot), at(2015, 11, 7, 0, 0, 0));
        assert_eq!(next_tag_time(DAY, DAY + 60, slot), at(2015, 11, 7, 0, 1, 0));
    }

    #[test]
    fn empty_schedule_never_runs() {
        let next = next_ideal(&Schedule::default(), 0, at(2020, 1, 1, 0, 0, 0));
        assert_eq!(next.time, DateTime::<Utc>::MAX_UTC);
        assert!(next.tags.is_empty());
        // Far-off dates do not overflow.
        let late = DateTime::<Utc>::MAX_UTC - TimeDelta::seconds(10);
        assert_eq!(next_tag_time(DAY, 0, late), DateTime::<Utc>::MAX_UTC);
        let _ = next_tag_time(u64::MAX, u64::MAX, DateTime::<Utc>::MIN_UTC);
        let huge = schedule(&[("t", u64::MAX, 1)]);
        let history = [(DateTime::<Utc>::MIN_UTC, tags(&["t"]))];
        for now in [DateTime::<Utc>::MIN_UTC, DateTime::<Utc>::MAX_UTC] {
            let _ = next_run(&huge, u64::MAX, &history, now);
            let _ = within_sla(&huge, Some(now), now, now);
        }
    }

    #[test]
    fn a_job_without_revisions_runs_at_once_with_all_tags() {
        let now = at(2015, 11, 5, 12, 0, 0);
        assert_eq!(
            next_run(&default_schedule(), 639_092, &[], now),
            NextRun {
                time: now,
                tags: tags(&["daily", "weekly", "monthly"]),
            }
        );
    }

    /// The scheduler was down for three days: one catch-up run with the missed
    /// tags, then the regular slots again.
    #[test]
    fn catch_up_after_a_three_day_outage() {
        let s = default_schedule();
        let spread = 639_092;
        let mut history = vec![
            (at(2015, 11, 6, 9, 31, 32), tags(&["daily", "monthly"])),
            (at(2015, 11, 9, 9, 31, 32), tags(&["daily", "weekly"])),
            (at(2015, 11, 10, 9, 31, 32), tags(&["daily"])),
        ];
        // Down from 11-10 12:00 to 11-13 12:00.
        let now = at(2015, 11, 13, 12, 0, 0);
        assert_eq!(missed_tags(&s, &history, now), tags(&["daily"]));
        let run = next_run(&s, spread, &history, now);
        assert_eq!(
            run,
            NextRun {
                time: now,
                tags: tags(&["daily"]),
            }
        );
        // Once that revision exists, the next run is the regular slot.
        history.push((now, run.tags));
        let after = now + TimeDelta::minutes(10);
        assert_eq!(
            next_run(&s, spread, &history, after),
            NextRun {
                time: at(2015, 11, 14, 9, 31, 32),
                tags: tags(&["daily"]),
            }
        );
    }

    #[test]
    fn missed_tags_join_a_run_that_is_near() {
        let s = default_schedule();
        let spread = 639_092;
        let history = vec![(at(2015, 11, 1, 9, 31, 32), tags(&["daily"]))];
        let slot = at(2015, 11, 6, 9, 31, 32);
        // Five minutes or less before the slot: join it.
        for before in [TimeDelta::minutes(5), TimeDelta::seconds(1)] {
            assert_eq!(
                next_run(&s, spread, &history, slot - before),
                NextRun {
                    time: slot,
                    tags: tags(&["daily", "weekly", "monthly"]),
                },
                "{before}"
            );
        }
        // More than five minutes: the missed tags run now, alone.
        let now = slot - TimeDelta::minutes(5) - TimeDelta::seconds(1);
        assert_eq!(
            next_run(&s, spread, &history, now),
            NextRun {
                time: now,
                tags: tags(&["daily", "weekly", "monthly"]),
            }
        );
    }

    #[test]
    fn only_complete_revisions_with_schedule_tags_count() {
        let s = default_schedule();
        let now = at(2015, 11, 13, 12, 0, 0);
        // A manual revision an hour ago does not cover any schedule tag.
        let history = vec![(now - TimeDelta::hours(1), tags(&["manual:upgrade"]))];
        assert_eq!(
            next_run(&s, 639_092, &history, now).tags,
            tags(&["daily", "weekly", "monthly"])
        );
        // A revision exactly one interval old is missed; a second younger is not.
        let history = vec![(now - TimeDelta::days(1), tags(&["daily"]))];
        assert!(missed_tags(&s, &history, now).contains("daily"));
        let history = vec![(
            now - TimeDelta::days(1) + TimeDelta::seconds(1),
            tags(&["daily"]),
        )];
        assert!(!missed_tags(&s, &history, now).contains("daily"));
    }

    #[test]
    fn sla() {
        let s = default_schedule();
        let now = at(2015, 11, 13, 12, 0, 0);
        let since = now - TimeDelta::days(100);
        assert_eq!(sla_limit(&s), Duration::from_secs(36 * 3600));
        let ok = |age: TimeDelta| within_sla(&s, Some(now - age), since, now);
        assert!(ok(TimeDelta::hours(35)));
        assert!(ok(TimeDelta::hours(36)));
        assert!(!ok(TimeDelta::hours(36) + TimeDelta::seconds(1)));
        // A revision from the future (clock skew) is not overdue.
        assert!(ok(-TimeDelta::hours(1)));
        // Never completed: fine while new, out of SLA once older than the limit.
        assert!(within_sla(&s, None, now - TimeDelta::hours(10), now));
        assert!(!within_sla(&s, None, now - TimeDelta::hours(37), now));
        let hourly = schedule(&[("hourly", 3600, 24), ("daily", DAY, 7)]);
        assert!(!within_sla(
            &hourly,
            Some(now - TimeDelta::hours(2)),
            since,
            now
        ));
    }

    #[test]
    fn a_revision_dated_in_the_future_does_not_keep_the_sla() {
        let s = default_schedule();
        let now = at(2015, 11, 13, 12, 0, 0);
        let since = now - TimeDelta::days(100);
        let future = Some(now + TimeDelta::days(365));
        // Backups keep failing: only the future revision, no success seen.
        assert_eq!(sla_reference(future, None, now), None);
        assert!(!within_sla(
            &s,
            sla_reference(future, None, now),
            since,
            now
        ));
        // A run the scheduler saw succeed an hour ago counts.
        let success = Some(now - TimeDelta::hours(1));
        assert_eq!(sla_reference(future, success, now), success);
        assert!(within_sla(
            &s,
            sla_reference(future, success, now),
            since,
            now
        ));
        let stale = Some(now - TimeDelta::hours(40));
        assert!(!within_sla(
            &s,
            sla_reference(future, stale, now),
            since,
            now
        ));
        // A revision dated in the past is what counts, as always.
        let past = Some(now - TimeDelta::hours(2));
        assert_eq!(sla_reference(past, None, now), past);
        assert_eq!(sla_reference(None, success, now), None);
    }

    proptest! {
        /// Slots are fixed: every tag's next time is after now, within one
        /// interval, at the same offset; the run takes exactly the earliest tags.
        #[test]
        fn ideal_times(
            secs in 0i64..4_000_000_000,
            nanos in 0u32..1_000_000_000,
            spread_secs in 0u64..3_000_000,
            daily in 1u64..=3 * DAY,
            weekly_factor in 1u64..10,
        ) {
            let now = DateTime::from_timestamp(secs, nanos).unwrap();
            let s = schedule(&[("a", daily, 1), ("b", daily * weekly_factor, 1)]);
            let next = next_ideal(&s, spread_secs, now);
            prop_assert!(next.time > now);
            for (tag, rule) in &s.tags {
                let t = next_tag_time(rule.interval, spread_secs, now);
                prop_assert!(t > now);
                prop_assert!(t - now <= seconds(rule.interval));
                let since_epoch = (t - epoch()).num_seconds() as u64;
                prop_assert_eq!(since_epoch % rule.interval, spread_secs % rule.interval);
                prop_assert_eq!(next.tags.contains(tag), t == next.time);
            }
        }
    }

    #[test]
    fn daily_slots_keep_their_time_and_weekly_their_weekday() {
        let s = default_schedule();
        let spread = spread("vm01", s.max_interval());
        let mut now = at(2016, 1, 1, 0, 0, 0);
        let first = next_tag_time(7 * DAY, spread, now);
        for _ in 0..400 {
            let daily = next_tag_time(DAY, spread, now);
            assert_eq!(daily.time(), first.time());
            let weekly = next_tag_time(7 * DAY, spread, now);
            assert_eq!(weekly.weekday(), first.weekday());
            now += TimeDelta::days(1);
        }
        // vm01's spread 2039477 s: 2039477 mod 7 d = 2 d 14:31:17 after the
        // epoch's Monday.
        assert_eq!(first.weekday(), Weekday::Wed);
        assert_eq!(
            first.time(),
            chrono::NaiveTime::from_hms_opt(14, 31, 17).unwrap()
        );
    }

    #[test]
    fn scrubs_keep_their_slot_and_never_come_closer_than_the_interval() {
        let week = 7 * 86_400;
        let at = |s: &str| DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc);
        let now = at("2026-12-02T06:00:00Z");
        // Never scrubbed: the next slot, less than an interval away.
        let first = next_scrub(week, 12_345, None, now);
        assert!(first > now && first <= now + TimeDelta::seconds(week as i64));
        assert_eq!(first, next_tag_time(week, 12_345, now));
        // Scrubbed in its slot: the next slot, exactly an interval later.
        assert_eq!(
            next_scrub(week, 12_345, Some(first), first),
            first + TimeDelta::seconds(week as i64)
        );
        // Scrubbed late (the workers were busy): the slot after, not sooner
        // than an interval.
        let late = first + TimeDelta::seconds(3600);
        let next = next_scrub(week, 12_345, Some(late), late);
        assert_eq!(next, first + TimeDelta::seconds(2 * week as i64));
        // Last scrubbed long ago: due at once (a slot in the past), once.
        let old = now - TimeDelta::days(30);
        assert!(next_scrub(week, 12_345, Some(old), now) <= now);
        // Two jobs with other spreads get other slots.
        assert_ne!(
            next_scrub(week, 1, None, now),
            next_scrub(week, 400_000, None, now)
        );
    }
}
