//! Retention as a plan: which tags expire, which revisions go, and why every
//! other one stays. Deciding is a pure function of the schedule, the
//! revisions and `now`; the caller acts on the plan under the job's locks,
//! and `backy expire --dry-run` prints it.
//!
//! Per tag of the schedule, take the complete revisions carrying it, oldest
//! first. If there are at least `keep` of them, the tag expires on every one
//! that is older than the newest `keep` *and* older than `now - keep *
//! interval`. Then revisions left without tags are deleted. Incomplete
//! revisions are neither counted nor touched. Tags the schedule does not name
//! (manual ones, including 2.5's `manual:` convention) never expire.
//!
//! A protected revision (`backy protect`) is never deleted. Its tags expire
//! like any other's, so the tags it still carries say which schedule slots it
//! fills, and it never holds a slot a newer revision should: it simply stays,
//! with the tags it has left (possibly none), until `backy unprotect` hands it
//! back to retention, which deletes it on the next run if no tag is left.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use chrono::{DateTime, TimeDelta, Utc};

use super::config::Schedule;
use crate::revision::{Protection, Revision};

/// What retention needs to know about a revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevisionInfo {
    /// The revision id.
    pub id: String,
    /// When the backup started (UTC).
    pub timestamp: DateTime<Utc>,
    /// Its tags.
    pub tags: BTreeSet<String>,
    /// Whether the revision is complete; incomplete ones are left alone.
    pub complete: bool,
    /// Set when the revision is protected: it is never deleted.
    pub protected: Option<Protection>,
}

impl From<&Revision> for RevisionInfo {
    fn from(rev: &Revision) -> RevisionInfo {
        RevisionInfo {
            id: rev.id.clone(),
            timestamp: rev.timestamp,
            tags: rev.tags.clone(),
            complete: rev.is_complete(),
            protected: rev.protected.clone(),
        }
    }
}

/// Why a tag stays on a revision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TagKept {
    /// The revision is the `rank`-th newest (1 = newest) of those carrying the
    /// tag, and the schedule keeps `keep` of them.
    Newest {
        /// Position among the revisions with this tag, newest first, from 1.
        rank: usize,
        /// The tag's `keep`.
        keep: u32,
    },
    /// The revision is younger than `keep * interval`.
    Young {
        /// `keep * interval` in seconds.
        window: u64,
    },
    /// A `manual:` tag: never expired.
    Manual,
    /// A tag the schedule does not name: never expired.
    NotInSchedule,
    /// The revision is incomplete: not counted, not touched.
    NotCounted,
}

/// The decision for one revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevisionPlan {
    /// The revision id.
    pub id: String,
    /// When the backup started.
    pub timestamp: DateTime<Utc>,
    /// False for an incomplete revision: not counted, not touched.
    pub complete: bool,
    /// Tags that stay, with the reason, shortest interval first, then manual ones.
    pub kept: Vec<(String, TagKept)>,
    /// Tags that expire, shortest interval first.
    pub expired: Vec<String>,
    /// Set when the revision is protected: it stays whatever its tags say.
    pub protected: Option<Protection>,
    /// The revision is deleted (complete, not protected, and no tag stays).
    pub delete: bool,
}

impl RevisionPlan {
    /// The tags the revision has after the plan is carried out.
    pub fn remaining_tags(&self) -> BTreeSet<String> {
        self.kept.iter().map(|(tag, _)| tag.clone()).collect()
    }

    /// The revision stays but loses tags: its `.rev` must be rewritten.
    pub fn needs_retag(&self) -> bool {
        !self.delete && !self.expired.is_empty()
    }
}

/// The retention decision for a whole job, oldest revision first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetentionPlan {
    /// The time the plan was made for.
    pub now: DateTime<Utc>,
    /// One entry per revision given, oldest first (ties by id).
    pub revisions: Vec<RevisionPlan>,
}

impl RetentionPlan {
    /// Revisions to delete.
    pub fn deletions(&self) -> impl Iterator<Item = &RevisionPlan> {
        self.revisions.iter().filter(|r| r.delete)
    }

    /// Revisions that stay but lose tags (write [`RevisionPlan::remaining_tags`]).
    pub fn retags(&self) -> impl Iterator<Item = &RevisionPlan> {
        self.revisions.iter().filter(|r| r.needs_retag())
    }

    /// Whether carrying out the plan changes nothing.
    pub fn changes_nothing(&self) -> bool {
        self.revisions
            .iter()
            .all(|r| r.expired.is_empty() && !r.delete)
    }
}

/// Decides retention for a job's revisions at `now`. See the module docs for
/// the rules.
pub fn plan(schedule: &Schedule, revisions: &[RevisionInfo], now: DateTime<Utc>) -> RetentionPlan {
    let mut order: Vec<&RevisionInfo> = revisions.iter().collect();
    // The one order of revisions (crate::revision::order), as `-r` and `last` see it.
    order.sort_by(|a, b| crate::revision::order((&a.timestamp, &a.id), (&b.timestamp, &b.id)));

    // Per revision (by position in `order`): tag -> kept reason or None (expired).
    let mut verdicts: Vec<BTreeMap<&str, Option<TagKept>>> = vec![BTreeMap::new(); order.len()];
    for (tag, rule) in &schedule.tags {
        if tag.starts_with("manual:") {
            continue;
        }
        let holders: Vec<usize> = (0..order.len())
            .filter(|&i| order[i].complete && order[i].tags.contains(tag))
            .collect();
        let window = rule.interval.saturating_mul(u64::from(rule.keep));
        let threshold = i64::try_from(window)
            .ok()
            .and_then(TimeDelta::try_seconds)
            .and_then(|w| now.checked_sub_signed(w))
            .unwrap_or(DateTime::<Utc>::MIN_UTC);
        let keep = rule.keep as usize;
        for (position, &i) in holders.iter().enumerate() {
            let rank = holders.len() - position;
            let verdict = if rank <= keep {
                Some(TagKept::Newest {
                    rank,
                    keep: rule.keep,
                })
            } else if order[i].timestamp >= threshold {
                Some(TagKept::Young { window })
            } else {
                None
            };
            verdicts[i].insert(tag.as_str(), verdict);
        }
    }

    let revisions = order
        .iter()
        .zip(verdicts)
        .map(|(rev, verdicts)| revision_plan(schedule, rev, &verdicts))
        .collect();
    RetentionPlan { now, revisions }
}

fn revision_plan(
    schedule: &Schedule,
    rev: &RevisionInfo,
    verdicts: &BTreeMap<&str, Option<TagKept>>,
) -> RevisionPlan {
    let mut kept = Vec::new();
    let mut expired = Vec::new();
    for tag in schedule.sorted_tags(rev.tags.iter().map(String::as_str)) {
        let verdict = match verdicts.get(tag) {
            Some(verdict) => *verdict,
            None if tag.starts_with("manual:") => Some(TagKept::Manual),
            None if !rev.complete => Some(TagKept::NotCounted),
            None => Some(TagKept::NotInSchedule),
        };
        match verdict {
            Some(reason) => kept.push((tag.to_string(), reason)),
            None => expired.push(tag.to_string()),
        }
    }
    RevisionPlan {
        id: rev.id.clone(),
        timestamp: rev.timestamp,
        complete: rev.complete,
        delete: rev.complete && kept.is_empty() && rev.protected.is_none(),
        protected: rev.protected.clone(),
        kept,
        expired,
    }
}

/// `9d`, `36h`, `90m` or `45s`: the largest unit that divides exactly.
fn format_seconds(secs: u64) -> String {
    for (unit, size) in [("d", 86_400), ("h", 3600), ("m", 60)] {
        if secs >= size && secs.is_multiple_of(size) {
            return format!("{}{unit}", secs / size);
        }
    }
    format!("{secs}s")
}

impl fmt::Display for TagKept {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TagKept::Newest { rank, keep } => write!(f, "newest {rank} of {keep}"),
            TagKept::Young { window } => {
                write!(f, "younger than {}", format_seconds(*window))
            }
            TagKept::Manual => f.write_str("manual tag, never expired"),
            TagKept::NotInSchedule => f.write_str("not in the schedule, never expired"),
            TagKept::NotCounted => f.write_str("incomplete: not counted"),
        }
    }
}

impl fmt::Display for RevisionPlan {
    /// One line: time, id, `keep` or `delete`, and why.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let action = if self.delete { "delete" } else { "keep" };
        write!(
            f,
            "{}  {:<22}  {action:<6}  ",
            self.timestamp.format("%Y-%m-%d %H:%M:%S"),
            self.id
        )?;
        if !self.complete {
            return f.write_str("incomplete: not counted");
        }
        let protected = self
            .protected
            .iter()
            .map(|p| format!("protected{}", p.reason_note()));
        let mut reasons: Vec<String> = protected
            .chain(self.kept.iter().map(|(tag, why)| match why {
                TagKept::Manual => format!("manual tag {tag}"),
                other => format!("{tag}: {other}"),
            }))
            .collect();
        if self.kept.is_empty() && self.expired.is_empty() {
            reasons.push("no tags".into());
        }
        if !self.expired.is_empty() {
            reasons.push(format!("expires {}", self.expired.join(", ")));
        }
        f.write_str(&reasons.join("; "))
    }
}

impl fmt::Display for RetentionPlan {
    /// One line per revision, oldest first.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for rev in &self.revisions {
            writeln!(f, "{rev}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schedule::config::TagRule;
    use crate::schedule::plan::next_run;
    use crate::schedule::spread::spread;
    use chrono::TimeZone;
    use proptest::prelude::*;

    const HOUR: u64 = 3600;
    const DAY: u64 = 86_400;

    fn schedule(rules: &[(&str, u64, u32)]) -> Schedule {
        Schedule {
            tags: rules
                .iter()
                .map(|(t, interval, keep)| {
                    let rule = TagRule {
                        interval: *interval,
                        keep: *keep,
                    };
                    (t.to_string(), rule)
                })
                .collect(),
        }
    }

    fn default_schedule() -> Schedule {
        schedule(&[
            ("daily", DAY, 9),
            ("weekly", 7 * DAY, 5),
            ("monthly", 30 * DAY, 4),
        ])
    }

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2016, 3, 1, 12, 0, 0).unwrap()
    }

    fn tags(list: &str) -> BTreeSet<String> {
        list.split(',')
            .filter(|t| !t.is_empty())
            .map(str::to_string)
            .collect()
    }

    /// A revision `age_h` hours before [`now`].
    fn rev(id: &str, age_h: i64, list: &str, complete: bool) -> RevisionInfo {
        RevisionInfo {
            id: id.to_string(),
            timestamp: now() - TimeDelta::hours(age_h),
            tags: tags(list),
            complete,
            protected: None,
        }
    }

    /// [`rev`], protected with `reason`.
    fn protected(id: &str, age_h: i64, list: &str, reason: &str) -> RevisionInfo {
        RevisionInfo {
            protected: Some(Protection {
                reason: Some(reason.to_string()).filter(|r| !r.is_empty()),
                since: None,
            }),
            ..rev(id, age_h, list, true)
        }
    }

    /// (id, remaining tags, deleted) per revision, oldest first.
    fn outcome(plan: &RetentionPlan) -> Vec<(String, String, bool)> {
        plan.revisions
            .iter()
            .map(|r| {
                let remaining: Vec<String> = r.remaining_tags().into_iter().collect();
                (r.id.clone(), remaining.join(","), r.delete)
            })
            .collect()
    }

    struct Case {
        name: &'static str,
        rules: &'static [(&'static str, u64, u32)],
        revisions: Vec<RevisionInfo>,
        /// (id, remaining tags, deleted), oldest first.
        expect: &'static [(&'static str, &'static str, bool)],
    }

    #[test]
    fn table() {
        let daily3: &[(&str, u64, u32)] = &[("daily", DAY, 3)];
        let cases = [
            Case {
                name: "fewer than keep: nothing expires, however old",
                rules: daily3,
                revisions: vec![rev("a", 2400, "daily", true), rev("b", 2000, "daily", true)],
                expect: &[("a", "daily", false), ("b", "daily", false)],
            },
            Case {
                name: "exactly keep: nothing expires",
                rules: daily3,
                revisions: vec![
                    rev("a", 2400, "daily", true),
                    rev("b", 2000, "daily", true),
                    rev("c", 1000, "daily", true),
                ],
                expect: &[
                    ("a", "daily", false),
                    ("b", "daily", false),
                    ("c", "daily", false),
                ],
            },
            Case {
                name: "beyond keep and older than keep*interval: expires and goes",
                rules: daily3,
                revisions: vec![
                    rev("a", 96, "daily", true),
                    rev("b", 48, "daily", true),
                    rev("c", 24, "daily", true),
                    rev("d", 0, "daily", true),
                ],
                expect: &[
                    ("a", "", true),
                    ("b", "daily", false),
                    ("c", "daily", false),
                    ("d", "daily", false),
                ],
            },
            Case {
                name: "beyond keep but younger than keep*interval: stays",
                rules: daily3,
                revisions: vec![
                    rev("a", 70, "daily", true),
                    rev("b", 3, "daily", true),
                    rev("c", 2, "daily", true),
                    rev("d", 1, "daily", true),
                ],
                expect: &[
                    ("a", "daily", false),
                    ("b", "daily", false),
                    ("c", "daily", false),
                    ("d", "daily", false),
                ],
            },
            Case {
                name: "exactly keep*interval old stays, a second more goes",
                rules: daily3,
                revisions: vec![
                    RevisionInfo {
                        timestamp: now() - TimeDelta::hours(72) - TimeDelta::seconds(1),
                        ..rev("a", 0, "daily", true)
                    },
                    rev("b", 72, "daily", true),
                    rev("c", 2, "daily", true),
                    rev("d", 1, "daily", true),
                    rev("e", 0, "daily", true),
                ],
                expect: &[
                    ("a", "", true),
                    ("b", "daily", false),
                    ("c", "daily", false),
                    ("d", "daily", false),
                    ("e", "daily", false),
                ],
            },
            Case {
                name: "a revision keeps its other schedule tags",
                rules: &[("daily", DAY, 2), ("weekly", 7 * DAY, 2)],
                revisions: vec![
                    rev("a", 200, "daily,weekly", true),
                    rev("b", 100, "daily", true),
                    rev("c", 50, "daily", true),
                    rev("d", 0, "daily", true),
                ],
                expect: &[
                    ("a", "weekly", false),
                    ("b", "", true),
                    ("c", "daily", false),
                    ("d", "daily", false),
                ],
            },
            Case {
                name: "incomplete revisions are not counted and never touched",
                rules: &[("daily", DAY, 2)],
                revisions: vec![
                    rev("a", 300, "daily", false),
                    rev("b", 200, "daily", true),
                    rev("c", 100, "daily", true),
                    rev("d", 0, "daily", false),
                ],
                expect: &[
                    ("a", "daily", false),
                    ("b", "daily", false),
                    ("c", "daily", false),
                    ("d", "daily", false),
                ],
            },
            Case {
                name: "manual tags and tags outside the schedule never expire",
                rules: &[("daily", DAY, 1)],
                revisions: vec![
                    rev("a", 300, "daily,manual:before-upgrade", true),
                    rev("b", 200, "daily,hourly", true),
                    rev("c", 100, "daily", true),
                    rev("d", 0, "daily", true),
                ],
                expect: &[
                    ("a", "manual:before-upgrade", false),
                    ("b", "hourly", false),
                    ("c", "", true),
                    ("d", "daily", false),
                ],
            },
            Case {
                name: "a complete revision without any tag goes",
                rules: &[("daily", DAY, 1)],
                revisions: vec![rev("a", 1, "", true), rev("b", 0, "", false)],
                expect: &[("a", "", true), ("b", "", false)],
            },
            Case {
                name: "input order does not matter; equal times order by id",
                rules: &[("daily", DAY, 1)],
                revisions: vec![
                    rev("d", 0, "daily", true),
                    rev("b", 100, "daily", true),
                    rev("a", 100, "daily", true),
                ],
                expect: &[("a", "", true), ("b", "", true), ("d", "daily", false)],
            },
            Case {
                name: "a protected revision loses expired tags but stays",
                rules: &[("daily", DAY, 1), ("weekly", 7 * DAY, 2)],
                revisions: vec![
                    protected("a", 300, "daily", "audit"),
                    protected("b", 200, "daily,weekly", ""),
                    protected("c", 150, "", ""),
                    rev("d", 100, "daily", true),
                    rev("e", 0, "daily", true),
                ],
                expect: &[
                    ("a", "", false),
                    ("b", "weekly", false),
                    ("c", "", false),
                    ("d", "", true),
                    ("e", "daily", false),
                ],
            },
            Case {
                name: "a protected revision takes no slot from newer ones",
                rules: &[("daily", DAY, 2)],
                revisions: vec![
                    rev("a", 300, "daily", true),
                    protected("b", 200, "daily", ""),
                    rev("c", 100, "daily", true),
                    rev("d", 0, "daily", true),
                ],
                expect: &[
                    ("a", "", true),
                    ("b", "", false),
                    ("c", "daily", false),
                    ("d", "daily", false),
                ],
            },
        ];
        for case in cases {
            let plan = plan(&schedule(case.rules), &case.revisions, now());
            let expect: Vec<(String, String, bool)> = case
                .expect
                .iter()
                .map(|(id, t, d)| (id.to_string(), t.to_string(), *d))
                .collect();
            assert_eq!(outcome(&plan), expect, "{}", case.name);
        }
    }

    #[test]
    fn dry_run_says_why() {
        let revisions = vec![
            rev(
                "Q5N5Ng5kFzNFVv6FDDDCHi",
                24 * 40,
                "daily,weekly,monthly",
                true,
            ),
            rev(
                "FqZGAe6iG2hadwJoHdpigW",
                24 * 12,
                "daily,manual:keep-me",
                true,
            ),
            rev("ENpdQfhQVgzoiWwT4KuQqP", 24 * 11, "daily", true),
            rev("ojtLPmKfGNhJQbaJYo6a4C", 24 * 8 + 1, "daily,weekly", true),
            rev("a", 24 * 7, "daily", true),
            rev("b", 24 * 6, "daily", true),
            rev("c", 24 * 5, "daily", true),
            rev("d", 24 * 4, "daily", true),
            rev("e", 24 * 3, "daily", true),
            rev("f", 24 * 2, "daily", true),
            rev("g", 24, "daily", true),
            rev("h", 1, "daily,adhoc", true),
            rev("i", 0, "daily", false),
        ];
        let mut revisions = revisions;
        revisions.insert(
            3,
            protected("Kept1", 24 * 10, "daily", "before the upgrade"),
        );
        revisions.insert(4, protected("Kept2", 24 * 9, "", ""));
        let plan = plan(&default_schedule(), &revisions, now());
        let expected = "\
2016-01-21 12:00:00  Q5N5Ng5kFzNFVv6FDDDCHi  keep    weekly: newest 2 of 5; monthly: newest 1 of 4; expires daily
2016-02-18 12:00:00  FqZGAe6iG2hadwJoHdpigW  keep    manual tag manual:keep-me; expires daily
2016-02-19 12:00:00  ENpdQfhQVgzoiWwT4KuQqP  delete  expires daily
2016-02-20 12:00:00  Kept1                   keep    protected (reason: before the upgrade); expires daily
2016-02-21 12:00:00  Kept2                   keep    protected; no tags
2016-02-22 11:00:00  ojtLPmKfGNhJQbaJYo6a4C  keep    daily: newest 9 of 9; weekly: newest 1 of 5
2016-02-23 12:00:00  a                       keep    daily: newest 8 of 9
2016-02-24 12:00:00  b                       keep    daily: newest 7 of 9
2016-02-25 12:00:00  c                       keep    daily: newest 6 of 9
2016-02-26 12:00:00  d                       keep    daily: newest 5 of 9
2016-02-27 12:00:00  e                       keep    daily: newest 4 of 9
2016-02-28 12:00:00  f                       keep    daily: newest 3 of 9
2016-02-29 12:00:00  g                       keep    daily: newest 2 of 9
2016-03-01 11:00:00  h                       keep    daily: newest 1 of 9; adhoc: not in the schedule, never expired
2016-03-01 12:00:00  i                       keep    incomplete: not counted
";
        assert_eq!(plan.to_string(), expected);
        let deleted: Vec<&str> = plan.deletions().map(|r| r.id.as_str()).collect();
        assert_eq!(deleted, ["ENpdQfhQVgzoiWwT4KuQqP"]);
        let retagged: Vec<&str> = plan.retags().map(|r| r.id.as_str()).collect();
        assert_eq!(
            retagged,
            ["Q5N5Ng5kFzNFVv6FDDDCHi", "FqZGAe6iG2hadwJoHdpigW", "Kept1"]
        );
        assert!(!plan.changes_nothing());

        // A tenth daily inside the 9-day window stays for its age.
        let mut more = revisions.clone();
        more.push(rev("j", 24 * 8 + 2, "daily", true));
        let plan = super::plan(&default_schedule(), &more, now());
        let j = plan.revisions.iter().find(|r| r.id == "j").unwrap();
        assert_eq!(
            j.to_string(),
            "2016-02-22 10:00:00  j                       keep    daily: younger than 9d"
        );
    }

    fn apply(revisions: &mut Vec<RevisionInfo>, plan: &RetentionPlan) {
        for decision in &plan.revisions {
            if decision.delete {
                revisions.retain(|r| r.id != decision.id);
            } else if let Some(r) = revisions.iter_mut().find(|r| r.id == decision.id) {
                r.tags = decision.remaining_tags();
            }
        }
    }

    /// Backups made: when, with which tags.
    type Runs = Vec<(DateTime<Utc>, BTreeSet<String>)>;

    fn history(revisions: &[RevisionInfo]) -> Runs {
        revisions
            .iter()
            .filter(|r| r.complete)
            .map(|r| (r.timestamp, r.tags.clone()))
            .collect()
    }

    /// The scheduler's setting for [`simulate`].
    struct Scenario<'a> {
        schedule: &'a Schedule,
        job: &'a str,
        start: DateTime<Utc>,
        end: DateTime<Utc>,
        /// How long each backup takes.
        duration: TimeDelta,
        /// When the scheduler is down (it re-plans when it comes back).
        outages: &'a [(DateTime<Utc>, DateTime<Utc>)],
        /// The run whose revision is protected as soon as it is made.
        protect: Option<DateTime<Utc>>,
    }

    /// Runs the scheduler's decisions from `start` to `end`: back up when
    /// `next_run` says (taking `duration`), expire after each backup.
    fn simulate(
        scenario: &Scenario,
        mut check: impl FnMut(&[RevisionInfo], &RetentionPlan),
    ) -> (Vec<RevisionInfo>, Runs) {
        let Scenario {
            schedule,
            job,
            start,
            end,
            duration,
            outages,
            protect,
        } = *scenario;
        let spread = spread(job, schedule.max_interval());
        let mut revisions: Vec<RevisionInfo> = Vec::new();
        let mut runs = Vec::new();
        let mut now = start;
        loop {
            let run = next_run(schedule, spread, &history(&revisions), now);
            let time = run.time.max(now);
            if time >= end {
                break;
            }
            if let Some((_, up)) = outages
                .iter()
                .find(|(down, up)| *down <= time && time < *up)
            {
                now = *up;
                continue;
            }
            runs.push((time, run.tags.clone()));
            revisions.push(RevisionInfo {
                id: time.format("%m-%d %H:%M").to_string(),
                timestamp: time,
                tags: run.tags,
                complete: true,
                protected: (protect == Some(time)).then(|| Protection {
                    reason: Some("audit".into()),
                    since: Some(time),
                }),
            });
            now = time + duration;
            let plan = plan(schedule, &revisions, now);
            check(&revisions, &plan);
            apply(&mut revisions, &plan);
        }
        (revisions, runs)
    }

    /// A month of the `default` schedule for test01 (slots at 09:31:32, weekly
    /// on Mondays, 30-day slot on 11-06), with the scheduler down for three
    /// days from 11-19 12:00.
    #[test]
    fn a_month_of_the_default_schedule() {
        let at = |mo, d, h, mi, s| Utc.with_ymd_and_hms(2015, mo, d, h, mi, s).unwrap();
        let (revisions, runs) = simulate(
            &Scenario {
                schedule: &default_schedule(),
                job: "test01",
                start: at(11, 5, 12, 0, 0),
                end: at(12, 5, 12, 0, 0),
                duration: TimeDelta::minutes(10),
                outages: &[(at(11, 19, 12, 0, 0), at(11, 22, 12, 0, 0))],
                protect: None,
            },
            |_, _| {},
        );
        // The first run is at once with every tag; the catch-up after the
        // outage runs once, alone, with the daily tag it missed.
        assert_eq!(runs[0], (at(11, 5, 12, 0, 0), tags("daily,weekly,monthly")));
        assert_eq!(runs[1], (at(11, 6, 9, 31, 32), tags("daily,monthly")));
        let catch_up = runs
            .iter()
            .position(|(t, _)| *t == at(11, 22, 12, 0, 0))
            .unwrap();
        assert_eq!(runs[catch_up].1, tags("daily"));
        assert_eq!(
            runs[catch_up + 1],
            (at(11, 23, 9, 31, 32), tags("daily,weekly"))
        );
        assert_eq!(runs.len(), 29);

        let survivors: Vec<(String, String)> = revisions
            .iter()
            .map(|r| {
                let t = default_schedule().format_tags(&r.tags);
                (r.id.clone(), t)
            })
            .collect();
        let expected = [
            ("11-05 12:00", "weekly,monthly"),
            ("11-06 09:31", "monthly"),
            ("11-09 09:31", "weekly"),
            ("11-16 09:31", "weekly"),
            ("11-23 09:31", "weekly"),
            ("11-27 09:31", "daily"),
            ("11-28 09:31", "daily"),
            ("11-29 09:31", "daily"),
            ("11-30 09:31", "daily,weekly"),
            ("12-01 09:31", "daily"),
            ("12-02 09:31", "daily"),
            ("12-03 09:31", "daily"),
            ("12-04 09:31", "daily"),
            ("12-05 09:31", "daily"),
        ];
        let expected: Vec<(String, String)> = expected
            .iter()
            .map(|(id, t)| (id.to_string(), t.to_string()))
            .collect();
        assert_eq!(survivors, expected);
    }

    /// The same month with one protected daily revision (11-10): it survives
    /// every expiry, losing its daily tag when that expires, and everything
    /// else ends as without it.
    #[test]
    fn a_month_with_one_protected_revision() {
        let at = |mo, d, h, mi, s| Utc.with_ymd_and_hms(2015, mo, d, h, mi, s).unwrap();
        let schedule = default_schedule();
        let outages = [(at(11, 19, 12, 0, 0), at(11, 22, 12, 0, 0))];
        let scenario = |protect| Scenario {
            schedule: &schedule,
            job: "test01",
            start: at(11, 5, 12, 0, 0),
            end: at(12, 5, 12, 0, 0),
            duration: TimeDelta::minutes(10),
            outages: &outages,
            protect,
        };
        let protected_at = at(11, 10, 9, 31, 32);
        let mut plans = 0;
        let (with, runs) = simulate(&scenario(Some(protected_at)), |revisions, plan| {
            if revisions.iter().any(|r| r.timestamp == protected_at) {
                plans += 1;
                let kept = plan.revisions.iter().find(|r| r.timestamp == protected_at);
                let kept = kept.expect("the protected revision is gone");
                assert!(!kept.delete, "{plan}");
                assert!(
                    kept.to_string()
                        .contains("keep    protected (reason: audit)"),
                    "{kept}"
                );
            }
        });
        let (without, runs_without) = simulate(&scenario(None), |_, _| {});
        assert_eq!(runs, runs_without);
        assert_eq!(plans, 24);
        let protected: Vec<&RevisionInfo> = with.iter().filter(|r| r.protected.is_some()).collect();
        assert_eq!(protected.len(), 1);
        assert_eq!(protected[0].timestamp, protected_at);
        assert!(protected[0].tags.is_empty(), "{:?}", protected[0].tags);
        // Without the protection the same revision is gone, and the rest is equal.
        assert!(without.iter().all(|r| r.timestamp != protected_at));
        let others: Vec<RevisionInfo> = with
            .iter()
            .filter(|r| r.protected.is_none())
            .cloned()
            .collect();
        assert_eq!(others, without);
    }

    /// The invariants every plan must hold.
    fn check_invariants(
        schedule: &Schedule,
        revisions: &[RevisionInfo],
        plan: &RetentionPlan,
    ) -> std::result::Result<(), TestCaseError> {
        prop_assert_eq!(plan.revisions.len(), revisions.len());
        let now = plan.now;
        for decision in &plan.revisions {
            let rev = revisions.iter().find(|r| r.id == decision.id).unwrap();
            let remaining = decision.remaining_tags();
            let expired: BTreeSet<String> = decision.expired.iter().cloned().collect();
            // Tags are split between kept and expired, and only schedule tags expire.
            prop_assert_eq!(&remaining | &expired, rev.tags.clone());
            prop_assert!(remaining.is_disjoint(&expired));
            prop_assert!(expired.iter().all(|t| schedule.tags.contains_key(t)));
            prop_assert!(expired.iter().all(|t| !t.starts_with("manual:")));
            // Incomplete revisions are never touched.
            if !rev.complete {
                prop_assert!(expired.is_empty() && !decision.delete);
            }
            prop_assert_eq!(
                decision.delete,
                rev.complete && remaining.is_empty() && rev.protected.is_none()
            );
            // A protected revision is never deleted, and says so.
            if rev.protected.is_some() && rev.complete {
                prop_assert!(!decision.delete);
                prop_assert!(decision.to_string().contains("keep    protected"));
            }
            // No revision younger than keep*interval loses a schedule tag.
            for tag in &expired {
                let rule = schedule.tags[tag];
                let window = TimeDelta::seconds((rule.interval * u64::from(rule.keep)) as i64);
                prop_assert!(
                    rev.timestamp < now - window,
                    "{} lost {} too young",
                    rev.id,
                    tag
                );
            }
        }
        // The newest `keep` complete revisions of each tag keep it.
        for (tag, rule) in &schedule.tags {
            let mut holders: Vec<&RevisionInfo> = revisions
                .iter()
                .filter(|r| r.complete && r.tags.contains(tag))
                .collect();
            holders.sort_by(|a, b| (b.timestamp, &b.id).cmp(&(a.timestamp, &a.id)));
            for newest in holders.iter().take(rule.keep as usize) {
                let d = plan.revisions.iter().find(|d| d.id == newest.id).unwrap();
                prop_assert!(
                    d.remaining_tags().contains(tag),
                    "{} lost {}",
                    newest.id,
                    tag
                );
            }
        }
        Ok(())
    }

    fn arb_schedule() -> impl Strategy<Value = Schedule> {
        let tag = (
            prop::sample::select(vec![HOUR, 6 * HOUR, DAY, 7 * DAY, 30 * DAY]),
            1u32..10,
        );
        prop::collection::vec(tag, 1..4).prop_map(|rules| Schedule {
            tags: rules
                .into_iter()
                .enumerate()
                .map(|(i, (interval, keep))| (format!("t{i}"), TagRule { interval, keep }))
                .collect(),
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

        /// Arbitrary histories across month ends (and Feb 29), with manual
        /// tags and incomplete revisions.
        #[test]
        fn plans_keep_the_invariants(
            schedule in arb_schedule(),
            start in 0i64..(4 * 365 * 86_400),
            steps in prop::collection::vec(
                (0i64..(10 * 86_400), prop::collection::vec(0usize..5, 0..4), any::<bool>(), 0u8..10, 0u8..8),
                0..60,
            ),
            later in 0i64..(60 * 86_400),
        ) {
            // From 2015-01-28, so month ends and 2016-02-29 come by.
            let mut time = Utc.with_ymd_and_hms(2015, 1, 28, 0, 0, 0).unwrap() + TimeDelta::seconds(start);
            let mut revisions = Vec::new();
            for (n, (gap, picks, manual, incomplete, protect)) in steps.into_iter().enumerate() {
                time += TimeDelta::seconds(gap);
                let mut tags: BTreeSet<String> = picks.into_iter().map(|i| format!("t{i}")).collect();
                if manual {
                    tags.insert("manual:x".into());
                }
                revisions.push(RevisionInfo {
                    id: format!("r{n:03}"),
                    timestamp: time,
                    tags,
                    complete: incomplete != 0,
                    protected: (protect == 0).then(Protection::default),
                });
            }
            let now = time + TimeDelta::seconds(later);
            let first = plan(&schedule, &revisions, now);
            check_invariants(&schedule, &revisions, &first)?;
            // Carrying out the plan and planning again at the same time
            // changes nothing more.
            apply(&mut revisions, &first);
            prop_assert!(plan(&schedule, &revisions, now).changes_nothing());
        }

        /// The scheduler's own decisions over 100 days from a random start,
        /// with random outages and backup durations: every plan along the way
        /// keeps the invariants, and each tag keeps at least `keep` revisions
        /// once it has made that many.
        #[test]
        fn scheduled_runs_keep_the_invariants(
            start in 0i64..(3 * 365 * 86_400),
            job in "[a-z]{1,8}[0-9]{0,2}",
            duration_min in 1i64..180,
            outages in prop::collection::vec((0i64..(100 * 24), 1i64..(10 * 24)), 0..4),
        ) {
            let schedule = default_schedule();
            let start = Utc.with_ymd_and_hms(2015, 1, 20, 0, 0, 0).unwrap() + TimeDelta::seconds(start);
            let end = start + TimeDelta::days(100);
            let outages: Vec<(DateTime<Utc>, DateTime<Utc>)> = outages
                .into_iter()
                .map(|(from_h, len_h)| {
                    let down = start + TimeDelta::hours(from_h);
                    (down, down + TimeDelta::hours(len_h))
                })
                .collect();
            let mut failure = None;
            let (revisions, runs) = simulate(
                &Scenario {
                    schedule: &schedule,
                    job: &job,
                    start,
                    end,
                    duration: TimeDelta::minutes(duration_min),
                    outages: &outages,
                    protect: None,
                },
                |revisions, plan| {
                    if failure.is_none() {
                        failure = check_invariants(&schedule, revisions, plan).err();
                    }
                },
            );
            if let Some(e) = failure {
                return Err(e);
            }
            for (tag, rule) in &schedule.tags {
                let made = runs.iter().filter(|(_, t)| t.contains(tag)).count();
                let kept = revisions.iter().filter(|r| r.tags.contains(tag)).count();
                prop_assert!(kept >= made.min(rule.keep as usize), "{tag}: made {made}, kept {kept}");
            }
            // Runs never overlap, and the newest revision always survives.
            for pair in runs.windows(2) {
                prop_assert!(pair[1].0 >= pair[0].0 + TimeDelta::minutes(duration_min));
            }
            let last = runs.last().map(|(t, _)| *t);
            prop_assert_eq!(revisions.last().map(|r| r.timestamp), last);
        }
    }
}
