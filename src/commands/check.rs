//! `backy check -c CONFIG`: the Nagios check of all jobs.
//!
//! One status line first, with performance data after the `|`, then details;
//! exit 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN. The status file is compared
//! with the configuration: a configured job the scheduler does not list is
//! not being backed up, and a status file older than its `status-interval`
//! allows means the scheduler is not running.

use std::path::Path;
use std::time::{Duration, SystemTime};

use chrono::{DateTime, NaiveDateTime, Utc};

use crate::daemon::status::{JobStatus, count, duration_text, read_status_file};
use crate::error::Result;
use crate::schedule::config::Config;

/// How bad a finding is, as Nagios ranks it (the exit code).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    /// Fine.
    Ok = 0,
    /// Needs a look.
    Warning = 1,
    /// Backups are not happening.
    Critical = 2,
    /// The state cannot be told.
    Unknown = 3,
}

impl Severity {
    fn word(self) -> &'static str {
        match self {
            Severity::Ok => "OK",
            Severity::Warning => "WARNING",
            Severity::Critical => "CRITICAL",
            Severity::Unknown => "UNKNOWN",
        }
    }
}

/// One thing the check found: a part of the status line and detail lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// How bad it is.
    pub severity: Severity,
    /// Its part of the first line.
    pub summary: String,
    /// Lines below the first, one per job or file concerned.
    pub details: Vec<String>,
}

impl Finding {
    fn new(severity: Severity, summary: String, details: Vec<String>) -> Finding {
        Finding {
            severity,
            summary,
            details,
        }
    }
}

/// The least age a status file may reach before the scheduler counts as not
/// running (the original's fixed limit).
const MIN_MAX_AGE: Duration = Duration::from_secs(5 * 60);

/// Prints the check result and returns its exit code.
pub fn run(config_path: &Path) -> Result<u8> {
    let (text, code) = evaluate(config_path, SystemTime::now());
    crate::output::stdout_line(&text)?;
    Ok(code)
}

/// How old the status file may be: 5 minutes, or two status intervals when
/// those are longer.
pub fn max_status_age(config: &Config) -> Duration {
    MIN_MAX_AGE.max(config.status_interval * 2)
}

/// An age to the whole unit below it: `90 seconds`, `10 minutes`, `3 hours`.
fn age_text(age: Duration) -> String {
    let s = age.as_secs();
    match s {
        0..120 => count(s as usize, "second"),
        120..7200 => count((s / 60) as usize, "minute"),
        _ => count((s / 3600) as usize, "hour"),
    }
}

fn parse_time(text: &str) -> Option<DateTime<Utc>> {
    NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S UTC")
        .ok()
        .map(|t| t.and_utc())
}

/// The scheduler's status file, as read at one moment.
pub enum StatusFile {
    /// There is none at the configured path.
    Missing,
    /// It exists but cannot be read or parsed; the error says why.
    Unreadable(crate::error::Error),
    /// Its jobs, and how long ago it was written.
    Read {
        /// When it was last written.
        modified: SystemTime,
        /// Its age at the moment of reading (0 when dated in the future).
        age: Duration,
        /// Its jobs.
        jobs: Vec<JobStatus>,
    },
}

/// Reads the status file that `config` names, at time `now`.
pub fn read_status(config: &Config, now: SystemTime) -> StatusFile {
    let path = &config.status_file;
    let Ok(modified) = std::fs::metadata(path).and_then(|m| m.modified()) else {
        return StatusFile::Missing;
    };
    let jobs = match std::fs::read_to_string(path) {
        // An empty file is an empty list (the configured jobs are then missing).
        Ok(text) if text.trim().is_empty() => Vec::new(),
        _ => match read_status_file(path) {
            Ok(jobs) => jobs,
            Err(e) => return StatusFile::Unreadable(e),
        },
    };
    StatusFile::Read {
        modified,
        age: now.duration_since(modified).unwrap_or_default(),
        jobs,
    }
}

/// Whether a status file of age `age` is too old: the scheduler is not running.
pub fn is_stale(config: &Config, age: Duration) -> bool {
    age > max_status_age(config)
}

/// Where a configured job stands, by the status file's jobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobSla {
    /// Listed and within its SLA.
    Within,
    /// Listed and out of its SLA.
    TooOld,
    /// Not listed: the running scheduler does not back it up.
    NotScheduled,
}

/// The SLA state of the job `name` in the status file's `jobs`.
pub fn job_sla(jobs: &[JobStatus], name: &str) -> JobSla {
    match jobs.iter().find(|j| j.job == name) {
        None => JobSla::NotScheduled,
        Some(j) if j.ok() => JobSla::Within,
        Some(_) => JobSla::TooOld,
    }
}

/// The check's output and exit code at time `now`.
pub fn evaluate(config_path: &Path, now: SystemTime) -> (String, u8) {
    let config = match Config::load(config_path) {
        Ok(c) => c,
        Err(e) => return (format!("UNKNOWN: {e}"), Severity::Unknown as u8),
    };
    let (age, jobs) = match read_status(&config, now) {
        StatusFile::Missing => {
            return (
                format!(
                    "UNKNOWN: No status file found at {}",
                    config.status_file.display()
                ),
                Severity::Unknown as u8,
            );
        }
        StatusFile::Unreadable(e) => return (format!("UNKNOWN: {e}"), Severity::Unknown as u8),
        StatusFile::Read { age, jobs, .. } => (age, jobs),
    };
    let (findings, perf) = assess(&config, &jobs, age, DateTime::<Utc>::from(now));
    render(&findings, &count(config.jobs.len(), "job"), &perf)
}

/// The findings about a status file of age `age` (and its jobs), and the
/// performance data.
pub fn assess(
    config: &Config,
    jobs: &[JobStatus],
    age: Duration,
    now: DateTime<Utc>,
) -> (Vec<Finding>, String) {
    let mut findings = Vec::new();
    if is_stale(config, age) {
        let max_age = max_status_age(config);
        findings.push(Finding::new(
            Severity::Critical,
            format!(
                "Status file {} is older than {} (written {} ago; the scheduler rewrites it every {}): is the scheduler running?",
                config.status_file.display(),
                duration_text(max_age),
                age_text(age),
                duration_text(config.status_interval)
            ),
            Vec::new(),
        ));
    }

    let missing: Vec<&String> = config
        .jobs
        .keys()
        .filter(|n| job_sla(jobs, n) == JobSla::NotScheduled)
        .collect();
    if !missing.is_empty() {
        // Not in the status file means not scheduled: no backups are made, and
        // the check cannot tell their age. CRITICAL, since nothing heals it
        // until the scheduler is reloaded (SIGHUP) or restarted.
        findings.push(Finding::new(
            Severity::Critical,
            format!(
                "{} configured but not scheduled",
                count(missing.len(), "job")
            ),
            missing
                .iter()
                .map(|n| {
                    format!(
                        "{n} is in the configuration but not in the status file: the running scheduler does not back it up; reload it (SIGHUP) or restart it"
                    )
                })
                .collect(),
        ));
    }
    let unknown: Vec<&JobStatus> = jobs
        .iter()
        .filter(|j| !config.jobs.contains_key(&j.job))
        .collect();
    if !unknown.is_empty() {
        findings.push(Finding::new(
            Severity::Warning,
            format!(
                "{} scheduled but not configured",
                count(unknown.len(), "job")
            ),
            unknown
                .iter()
                .map(|j| {
                    format!(
                        "{} is in the status file but not in the configuration: the scheduler runs an older configuration; reload it (SIGHUP)",
                        j.job
                    )
                })
                .collect(),
        ));
    }

    let configured = || jobs.iter().filter(|j| config.jobs.contains_key(&j.job));
    let late: Vec<&JobStatus> = configured().filter(|j| !j.ok()).collect();
    if !late.is_empty() {
        findings.push(Finding::new(
            Severity::Critical,
            format!("{} not within SLA", count(late.len(), "job")),
            late.iter()
                .map(|j| {
                    let mut line = format!("{} (last time: {})", j.job, j.last_time);
                    if !j.last_failure.is_empty() {
                        line.push_str(&format!(", last run failed: {}", j.last_failure));
                    }
                    line
                })
                .collect(),
        ));
    }
    let written: Vec<&JobStatus> = configured()
        .filter(|j| j.ok() && j.source_written())
        .collect();
    if !written.is_empty() {
        findings.push(Finding::new(
            Severity::Warning,
            format!(
                "{} whose last backup failed because the source was written during it",
                count(written.len(), "job")
            ),
            written
                .iter()
                .map(|j| format!("{}: last run failed: {}", j.job, j.last_failure))
                .collect(),
        ));
    }

    let unfrozen: Vec<&JobStatus> = configured()
        .filter(|j| j.consistency_warning.is_some())
        .collect();
    if !unfrozen.is_empty() {
        let names: Vec<&str> = unfrozen.iter().map(|j| j.job.as_str()).collect();
        findings.push(Finding::new(
            Severity::Warning,
            format!(
                "{} not frozen: {}",
                count(unfrozen.len(), "flyingcircus job"),
                names.join(", ")
            ),
            unfrozen
                .iter()
                .filter_map(|j| {
                    j.consistency_warning
                        .as_ref()
                        .map(|w| format!("{}: {w}", j.job))
                })
                .collect(),
        ));
    }
    let damaged: Vec<&JobStatus> = configured().filter(|j| !j.warnings.is_empty()).collect();
    if !damaged.is_empty() {
        findings.push(Finding::new(
            Severity::Warning,
            format!(
                "{} of {} {} warnings (damaged or future-dated revisions, files open to other users)",
                damaged.len(),
                count(config.jobs.len(), "job"),
                if damaged.len() == 1 { "has" } else { "have" }
            ),
            damaged
                .iter()
                .flat_map(|j| j.warnings.iter().map(move |w| format!("{}: {w}", j.job)))
                .collect(),
        ));
    }

    let oldest = configured()
        .filter_map(|j| parse_time(&j.last_time))
        .map(|t| (now - t).num_seconds().max(0))
        .max();
    let perf = format!(
        "jobs={} out_of_sla={} oldest_backup_age={}",
        config.jobs.len(),
        late.len(),
        oldest.map_or("U".to_string(), |s| format!("{s}s"))
    );
    (findings, perf)
}

/// The check's text (status line with performance data, then details) and
/// exit code; `ok_jobs` names the jobs when nothing was found.
pub fn render(findings: &[Finding], ok_jobs: &str, perf: &str) -> (String, u8) {
    let mut sorted: Vec<&Finding> = findings.iter().collect();
    sorted.sort_by_key(|f| std::cmp::Reverse(f.severity));
    let worst = sorted.first().map_or(Severity::Ok, |f| f.severity);
    let summary = if sorted.is_empty() {
        format!("{ok_jobs} within SLA")
    } else {
        sorted
            .iter()
            .map(|f| f.summary.as_str())
            .collect::<Vec<_>>()
            .join("; ")
    };
    let mut text = format!("{}: {summary} | {perf}", worst.word());
    for f in sorted {
        for line in &f.details {
            text.push('\n');
            text.push_str(line);
        }
    }
    (text, worst as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(status_interval: &str) -> Config {
        Config::parse(&format!(
            "global: {{base-dir: /b, status-interval: {status_interval}}}\nschedules: {{s: {{daily: {{interval: 1d, keep: 1}}}}}}\njobs:\n  a: {{schedule: s, source: {{type: file, filename: /a}}}}\n  b: {{schedule: s, source: {{type: file, filename: /b}}}}\n"
        ))
        .unwrap()
    }

    fn job(name: &str, sla: &str, last: &str) -> JobStatus {
        JobStatus {
            job: name.into(),
            sla: sla.into(),
            status: "finished".into(),
            last_time: last.into(),
            last_tags: "daily".into(),
            last_duration: "1.0 s".into(),
            next_time: "-".into(),
            next_tags: "daily".into(),
            last_failure: String::new(),
            last_failure_kind: String::new(),
            warnings: Vec::new(),
            consistency: None,
            consistency_warning: None,
            last_scrub: None,
            next_scrub: None,
            scrub_result: None,
        }
    }

    fn check(config: &Config, jobs: &[JobStatus], age: u64) -> (String, u8) {
        let now = parse_time("2026-01-02 00:00:00 UTC").unwrap();
        let (findings, perf) = assess(config, jobs, Duration::from_secs(age), now);
        render(&findings, &count(config.jobs.len(), "job"), &perf)
    }

    #[test]
    fn all_configured_jobs_within_sla() {
        let c = config("30");
        let jobs = [
            job("a", "OK", "2026-01-01 23:00:00 UTC"),
            job("b", "OK", "2026-01-01 12:00:00 UTC"),
        ];
        assert_eq!(
            check(&c, &jobs, 10),
            (
                "OK: 2 jobs within SLA | jobs=2 out_of_sla=0 oldest_backup_age=43200s".into(),
                0
            )
        );
    }

    #[test]
    fn an_empty_or_partial_status_file_is_critical() {
        let c = config("30");
        let (text, code) = check(&c, &[], 10);
        assert_eq!(code, 2, "{text}");
        assert!(
            text.starts_with(
                "CRITICAL: 2 jobs configured but not scheduled | jobs=2 out_of_sla=0 oldest_backup_age=U\na is in the configuration but not in the status file"
            ),
            "{text}"
        );
        let (text, code) = check(&c, &[job("a", "OK", "-")], 10);
        assert_eq!(code, 2, "{text}");
        assert!(
            text.starts_with("CRITICAL: 1 job configured but not scheduled |"),
            "{text}"
        );
        assert!(text.contains("\nb is in the configuration"), "{text}");
        assert!(!text.contains("\na is"), "{text}");
    }

    #[test]
    fn a_stale_status_file_is_named_with_its_interval() {
        let c = config("30");
        let jobs = [job("a", "OK", "-"), job("b", "OK", "-")];
        assert_eq!(check(&c, &jobs, 299).1, 0);
        let (text, code) = check(&c, &jobs, 301);
        assert_eq!(code, 2);
        assert!(
            text.starts_with("CRITICAL: Status file /b/status is older than 5 minutes (written 5 minutes ago; the scheduler rewrites it every 30 seconds): is the scheduler running?"),
            "{text}"
        );
        // A long status-interval allows an older file.
        let c = config("10m");
        assert_eq!(check(&c, &jobs, 1000).1, 0);
        let (text, code) = check(&c, &jobs, 1300);
        assert_eq!(code, 2);
        assert!(text.contains("older than 20 minutes"), "{text}");
    }

    #[test]
    fn out_of_sla_unknown_jobs_and_source_written() {
        let c = config("30");
        let mut b = job("b", "TOO OLD", "2026-01-01 00:00:00 UTC");
        b.last_failure = "exit code 1: cannot open source".into();
        b.last_failure_kind = "exit".into();
        let mut a = job("a", "OK", "2026-01-01 23:00:00 UTC");
        a.last_failure = "the source was written during the backup".into();
        a.last_failure_kind = "source-written".into();
        let (text, code) = check(&c, &[a.clone(), b, job("gone", "OK", "-")], 10);
        assert_eq!(code, 2);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "CRITICAL: 1 job not within SLA; 1 job scheduled but not configured; 1 job whose last backup failed because the source was written during it | jobs=2 out_of_sla=1 oldest_backup_age=86400s"
        );
        assert_eq!(
            lines[1],
            "b (last time: 2026-01-01 00:00:00 UTC), last run failed: exit code 1: cannot open source"
        );
        assert!(lines[2].starts_with("gone is in the status file"), "{text}");
        assert_eq!(
            lines[3],
            "a: last run failed: the source was written during the backup"
        );
        let (text, code) = check(&c, &[a, job("b", "OK", "-")], 10);
        assert_eq!(code, 1, "{text}");
        assert!(
            text.starts_with("WARNING: 1 job whose last backup"),
            "{text}"
        );
    }

    /// Unfrozen flyingcircus jobs are a WARNING; an SLA breach stays CRITICAL,
    /// with the warning after it.
    #[test]
    fn unfrozen_jobs_warn_and_late_jobs_stay_critical() {
        let c = config("30");
        let mut fc = job("b", "OK", "2026-01-01 23:00:00 UTC");
        fc.consistency = Some("crash".into());
        fc.consistency_warning = Some("the last 3 revisions are only crash-consistent".into());
        let (text, code) = check(
            &c,
            &[job("a", "OK", "2026-01-01 23:00:00 UTC"), fc.clone()],
            10,
        );
        assert_eq!(code, 1, "{text}");
        assert_eq!(
            text,
            "WARNING: 1 flyingcircus job not frozen: b | jobs=2 out_of_sla=0 oldest_backup_age=3600s\nb: the last 3 revisions are only crash-consistent"
        );
        let (text, code) = check(
            &c,
            &[job("a", "TOO OLD", "2026-01-01 00:00:00 UTC"), fc],
            10,
        );
        assert_eq!(code, 2, "{text}");
        assert!(
            text.starts_with("CRITICAL: 1 job not within SLA; 1 flyingcircus job not frozen: b |"),
            "{text}"
        );
        assert!(
            text.ends_with("\nb: the last 3 revisions are only crash-consistent"),
            "{text}"
        );
    }
}
