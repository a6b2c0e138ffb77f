//! `-r SPEC` resolution: a pure function over a job's revisions.
//!
//! Rules, first hit wins (as backy 2.1 resolved them): a non-negative number N is the N-th newest
//! (falling through when beyond the history); an exact id; `last`/`latest`; a tag
//! (newest carrying it); a unique id prefix. Only complete revisions are chosen,
//! except by an exact id, so that the caller can say *why* it cannot be used.

use std::fmt;

use chrono::{DateTime, NaiveDate, TimeDelta, Utc};

use crate::error::{Error, Result};
use crate::revision::Revision;

/// One end of a date range (`distrust -f/-u`): a whole UTC day, or an exact
/// time in any form a `.rev` timestamp may take (naive means UTC).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DateBound {
    /// `YYYY-MM-DD`: the whole day, UTC, included at either end.
    Day(NaiveDate),
    /// A full timestamp, included.
    Instant(DateTime<Utc>),
}

impl DateBound {
    /// Parses `YYYY-MM-DD` or a timestamp such as `2015-11-04T20:09:32Z`.
    pub fn parse(text: &str) -> std::result::Result<DateBound, String> {
        let t = text.trim();
        if let Ok(day) = NaiveDate::parse_from_str(t, "%Y-%m-%d") {
            return Ok(DateBound::Day(day));
        }
        crate::revision::parse_timestamp(&serde_norway::Value::String(t.to_string()))
            .map(DateBound::Instant)
            .map_err(|_| {
                format!(
                    "'{text}' is not a date; give YYYY-MM-DD (a UTC day) or a time such as 2015-11-04T20:09:32Z"
                )
            })
    }

    /// The first instant the bound includes.
    pub fn first(self) -> DateTime<Utc> {
        match self {
            DateBound::Day(day) => day
                .and_hms_opt(0, 0, 0)
                .map_or(DateTime::<Utc>::MIN_UTC, |t| t.and_utc()),
            DateBound::Instant(t) => t,
        }
    }

    /// Whether `t` is at or before the end of this bound (the end of its day).
    pub fn includes_up_to(self, t: DateTime<Utc>) -> bool {
        match self {
            DateBound::Day(day) => match day.checked_add_signed(TimeDelta::days(1)) {
                Some(next) => t < DateBound::Day(next).first(),
                None => true,
            },
            DateBound::Instant(end) => t <= end,
        }
    }
}

impl fmt::Display for DateBound {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DateBound::Day(day) => write!(f, "{}", day.format("%Y-%m-%d")),
            DateBound::Instant(t) => write!(f, "{}", t.format("%Y-%m-%d %H:%M:%S%.f UTC")),
        }
    }
}

/// Checks that the range from `from` to `until` can hold any time: an
/// earlier `--until` than `--from` is an operator's mistake, not "nothing".
pub fn date_range_check(from: Option<DateBound>, until: Option<DateBound>) -> Result<()> {
    if let (Some(f), Some(u)) = (from, until)
        && !u.includes_up_to(f.first())
    {
        return Err(Error::EmptyDateRange {
            from: f.to_string(),
            until: u.to_string(),
        });
    }
    Ok(())
}

/// Whether `t` lies between `from` and `until`, both included; `None` is open.
pub fn in_date_range(t: DateTime<Utc>, from: Option<DateBound>, until: Option<DateBound>) -> bool {
    from.is_none_or(|f| t >= f.first()) && until.is_none_or(|u| u.includes_up_to(t))
}

/// Why `-r TAG` could never select a revision by this tag, if so: `-r` reads a
/// number (`0`, `1`, `-1`, `+2`) as a revision number and `last`/`latest` as
/// the newest revision before it looks at tags.
pub fn tag_problem(tag: &str) -> Option<&'static str> {
    if tag.parse::<i64>().is_ok() {
        Some(
            "is a number, which '-r' reads as a revision number (0 = the newest), so '-r' could never select the tag",
        )
    } else if tag == "last" || tag == "latest" {
        Some("is what '-r' reads as the newest revision, so '-r' could never select the tag")
    } else {
        None
    }
}

/// Finds the revision `spec` names among `revisions` (sorted oldest first).
pub fn resolve<'a>(revisions: &'a [Revision], spec: &str) -> Result<&'a Revision> {
    let complete: Vec<&Revision> = revisions.iter().filter(|r| r.is_complete()).collect();
    let newest_first = || complete.iter().rev().copied();

    if let Ok(n) = spec.parse::<i64>() {
        if n < 0 {
            return Err(Error::BadSpec {
                spec: spec.into(),
                reason: "a revision number counts back from the newest and cannot be negative",
            });
        }
        if let Some(r) = newest_first().nth(n as usize) {
            return Ok(r);
        }
    }
    if let Some(r) = revisions.iter().find(|r| r.id == spec) {
        return Ok(r);
    }
    if spec == "last" || spec == "latest" {
        return newest_first()
            .next()
            .ok_or_else(|| Error::NoSuchRevision { spec: spec.into() });
    }
    if let Some(r) = newest_first().find(|r| r.tags.contains(spec)) {
        return Ok(r);
    }
    if !spec.is_empty() {
        let matches: Vec<&Revision> = complete
            .iter()
            .copied()
            .filter(|r| r.id.starts_with(spec))
            .collect();
        match matches.as_slice() {
            [one] => return Ok(one),
            [] => {}
            many => {
                return Err(Error::AmbiguousRevision {
                    spec: spec.into(),
                    candidates: many.iter().map(|r| r.id.clone()).collect(),
                });
            }
        }
    }
    Err(Error::NoSuchRevision { spec: spec.into() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{Duration, TimeZone, Utc};

    fn rev(id: &str, age_days: i64, tags: &[&str], complete: bool) -> Revision {
        let mut r = Revision::new(
            id.into(),
            None,
            tags.iter().map(|t| t.to_string()).collect(),
        );
        r.timestamp =
            Utc.with_ymd_and_hms(2020, 1, 31, 0, 0, 0).unwrap() - Duration::days(age_days);
        if complete {
            r.set_stat("duration", 1.0);
        }
        r
    }

    fn history() -> Vec<Revision> {
        vec![
            rev("Aaa1", 4, &["daily", "weekly"], true),
            rev("Abb2", 3, &["daily"], true),
            rev("Bcc3", 2, &["daily"], true),
            rev("Bdd4", 1, &["weekly"], true),
            rev("Cee5", 0, &["daily"], false), // running or crashed
        ]
    }

    fn id(spec: &str) -> String {
        resolve(&history(), spec)
            .map(|r| r.id.clone())
            .unwrap_or_else(|e| format!("ERR {e}"))
    }

    #[test]
    fn numbers_count_complete_revisions_from_the_newest() {
        assert_eq!(id("0"), "Bdd4");
        assert_eq!(id("1"), "Bcc3");
        assert_eq!(id("3"), "Aaa1");
        assert!(id("4").starts_with("ERR no complete revision"));
        assert!(id("-1").starts_with("ERR invalid revision '-1'"));
    }

    #[test]
    fn last_and_tags_skip_incomplete() {
        assert_eq!(id("last"), "Bdd4");
        assert_eq!(id("latest"), "Bdd4");
        assert_eq!(id("daily"), "Bcc3");
        assert_eq!(id("weekly"), "Bdd4");
    }

    #[test]
    fn exact_ids_and_prefixes() {
        assert_eq!(id("Aaa1"), "Aaa1");
        assert_eq!(id("Cee5"), "Cee5"); // exact: returned, callers refuse incomplete
        assert_eq!(id("Ab"), "Abb2");
        assert_eq!(
            id("C"),
            "ERR no complete revision matches 'C'; run 'backy status' to list revisions"
        );
        let err = id("B");
        assert!(
            err.contains("ambiguous") && err.contains("Bcc3") && err.contains("Bdd4"),
            "{err}"
        );
        assert!(id("").starts_with("ERR no complete revision"));
    }

    #[test]
    fn tags_that_specs_shadow_are_refused() {
        for tag in ["0", "1", "-1", "+2", "007", "last", "latest"] {
            assert!(tag_problem(tag).is_some(), "{tag}");
        }
        for tag in ["daily", "1d", "v1.0", "lastweek", "manual:1", "1e3x"] {
            assert_eq!(tag_problem(tag), None, "{tag}");
        }
    }

    #[test]
    fn a_number_beyond_history_falls_through_to_ids_and_tags() {
        let mut h = history();
        h.push(rev("77", 5, &["12"], true));
        h.sort_by_key(|r| r.timestamp);
        assert_eq!(resolve(&h, "12").unwrap().id, "77");
        assert_eq!(resolve(&h, "77").unwrap().id, "77");
    }

    #[test]
    fn date_ranges_include_whole_days_and_exact_times() {
        let t = |s: &str| DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc);
        let day = |s: &str| DateBound::parse(s).unwrap();
        assert_eq!(
            day("2015-11-04"),
            DateBound::Day(NaiveDate::from_ymd_opt(2015, 11, 4).unwrap())
        );
        assert_eq!(
            day("2015-11-04T20:09:32Z"),
            DateBound::Instant(t("2015-11-04T20:09:32Z"))
        );
        assert_eq!(
            day("2015-11-04 21:09:32+01:00"),
            DateBound::Instant(t("2015-11-04T20:09:32Z"))
        );
        for bad in ["yesterday", "2015-13-01", "2015-11-31", ""] {
            let e = DateBound::parse(bad).unwrap_err();
            assert!(e.contains("YYYY-MM-DD"), "{bad}: {e}");
        }
        let (from, until) = (Some(day("2015-11-04")), Some(day("2015-11-05")));
        for (at, inside) in [
            ("2015-11-03T23:59:59.999999Z", false),
            ("2015-11-04T00:00:00Z", true),
            ("2015-11-05T23:59:59.999999Z", true),
            ("2015-11-06T00:00:00Z", false),
        ] {
            assert_eq!(in_date_range(t(at), from, until), inside, "{at}");
        }
        assert!(in_date_range(t("1999-01-01T00:00:00Z"), None, until));
        assert!(!in_date_range(t("2099-01-01T00:00:00Z"), None, until));
        assert!(in_date_range(t("2099-01-01T00:00:00Z"), from, None));
        let exact = Some(day("2015-11-04T12:00:00Z"));
        assert!(in_date_range(t("2015-11-04T12:00:00Z"), exact, exact));
        assert!(!in_date_range(t("2015-11-04T12:00:01Z"), None, exact));
        // One day is a range; until before from is an error that names both.
        date_range_check(from, from).unwrap();
        date_range_check(exact, from).unwrap();
        let e = date_range_check(until, from).unwrap_err().to_string();
        assert!(e.contains("2015-11-05") && e.contains("2015-11-04"), "{e}");
    }
}
