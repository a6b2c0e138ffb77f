//! `backy check -c CONFIG`: the Nagios check of all jobs (SPEC section 8).
//!
//! One status line first, then details; exit 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN.

use std::path::Path;
use std::time::{Duration, SystemTime};

use crate::daemon::status::read_status_file;
use crate::error::Result;
use crate::schedule::config::Config;

/// Nagios exit codes.
const OK: u8 = 0;
const WARNING: u8 = 1;
const CRITICAL: u8 = 2;
const UNKNOWN: u8 = 3;

/// A status file older than this means the scheduler is not running.
const MAX_AGE: Duration = Duration::from_secs(5 * 60);

/// Prints the check result and returns its exit code.
pub fn run(config_path: &Path) -> Result<u8> {
    let (text, code) = evaluate(config_path, SystemTime::now());
    println!("{text}");
    Ok(code)
}

/// The check's output and exit code at time `now`.
pub fn evaluate(config_path: &Path, now: SystemTime) -> (String, u8) {
    let config = match Config::load(config_path) {
        Ok(c) => c,
        Err(e) => return (format!("UNKNOWN: {e}"), UNKNOWN),
    };
    let path = &config.status_file;
    let modified = match std::fs::metadata(path).and_then(|m| m.modified()) {
        Ok(t) => t,
        Err(_) => {
            return (
                format!("UNKNOWN: No status file found at {}", path.display()),
                UNKNOWN,
            );
        }
    };
    if now.duration_since(modified).unwrap_or_default() > MAX_AGE {
        return (
            "CRITICAL: Status file is older than 5 minutes".into(),
            CRITICAL,
        );
    }
    let jobs = match read_status_file(path) {
        Ok(jobs) => jobs,
        Err(e) => return (format!("UNKNOWN: {e}"), UNKNOWN),
    };
    let late: Vec<_> = jobs.iter().filter(|j| !j.ok()).collect();
    if late.is_empty() {
        if let Some(warning) = all_warnings(&jobs) {
            return (warning, WARNING);
        }
        return (format!("OK: {} jobs within SLA", jobs.len()), OK);
    }
    let mut text = format!("CRITICAL: {} jobs not within SLA", late.len());
    for j in late {
        text.push_str(&format!("\n{} (last time: {})", j.job, j.last_time));
    }
    if let Some(warning) = all_warnings(&jobs) {
        text.push('\n');
        text.push_str(&warning);
    }
    (text, CRITICAL)
}

/// The WARNING lines: damaged revisions, then unfrozen flyingcircus jobs.
fn all_warnings(jobs: &[crate::daemon::status::JobStatus]) -> Option<String> {
    let parts: Vec<String> = [damaged_warning(jobs), consistency_warning(jobs)]
        .into_iter()
        .flatten()
        .collect();
    (!parts.is_empty()).then(|| parts.join("\n"))
}

/// `WARNING: ...` naming each flyingcircus job whose last revisions (global
/// `crash-consistent-warning`, default 3) were all crash-consistent.
fn consistency_warning(jobs: &[crate::daemon::status::JobStatus]) -> Option<String> {
    let with: Vec<_> = jobs
        .iter()
        .filter_map(|j| j.consistency_warning.as_ref().map(|w| (&j.job, w)))
        .collect();
    if with.is_empty() {
        return None;
    }
    let names: Vec<&str> = with.iter().map(|(j, _)| j.as_str()).collect();
    let mut text = format!(
        "WARNING: {} flyingcircus jobs are not frozen: {}",
        with.len(),
        names.join(", ")
    );
    for (job, w) in with {
        text.push_str(&format!("\n{job}: {w}"));
    }
    Some(text)
}

/// `WARNING: ...` and one line per damaged or future-dated revision file the
/// scheduler found, or `None` when there are none.
fn damaged_warning(jobs: &[crate::daemon::status::JobStatus]) -> Option<String> {
    let with: Vec<_> = jobs.iter().filter(|j| !j.warnings.is_empty()).collect();
    if with.is_empty() {
        return None;
    }
    let mut text = format!(
        "WARNING: {} of {} jobs have damaged or future-dated revisions",
        with.len(),
        jobs.len()
    );
    for j in with {
        for w in &j.warnings {
            text.push_str(&format!("\n{}: {w}", j.job));
        }
    }
    Some(text)
}

#[cfg(test)]
mod consistency_tests {
    use super::*;
    use crate::daemon::status::{JobStatus, write_status_file};

    fn job(name: &str, sla: &str, warning: Option<&str>) -> JobStatus {
        JobStatus {
            job: name.into(),
            sla: sla.into(),
            status: "finished".into(),
            last_time: "2026-12-01 10:00:00 UTC".into(),
            last_tags: "daily".into(),
            last_duration: "1.0 s".into(),
            next_time: "2026-12-02 10:00:00 UTC".into(),
            next_tags: "daily".into(),
            warnings: Vec::new(),
            consistency: Some(if warning.is_some() { "crash" } else { "frozen" }.into()),
            consistency_warning: warning.map(String::from),
        }
    }

    /// Unfrozen flyingcircus jobs are a WARNING; an SLA breach stays CRITICAL,
    /// with the warning after the late jobs.
    #[test]
    fn unfrozen_jobs_warn_and_late_jobs_stay_critical() {
        let dir = tempfile::tempdir().unwrap();
        let status = dir.path().join("status");
        let conf = dir.path().join("backy.conf");
        std::fs::write(
            &conf,
            format!(
                "global: {{base-dir: {}, status-file: {}}}\nschedules: {{s: {{daily: {{interval: 1d, keep: 1}}}}}}\njobs: {{}}\n",
                dir.path().display(),
                status.display()
            ),
        )
        .unwrap();
        let now = SystemTime::now();
        write_status_file(
            &status,
            &[
                job("a", "OK", None),
                job(
                    "fc",
                    "OK",
                    Some("the last 3 revisions are only crash-consistent"),
                ),
            ],
        )
        .unwrap();
        let (text, code) = evaluate(&conf, now);
        assert_eq!(code, WARNING, "{text}");
        assert_eq!(
            text,
            "WARNING: 1 flyingcircus jobs are not frozen: fc\nfc: the last 3 revisions are only crash-consistent"
        );
        write_status_file(
            &status,
            &[job("a", "TOO OLD", None), job("fc", "OK", Some("w"))],
        )
        .unwrap();
        let (text, code) = evaluate(&conf, now);
        assert_eq!(code, CRITICAL, "{text}");
        assert!(
            text.starts_with("CRITICAL: 1 jobs not within SLA\na (last time: "),
            "{text}"
        );
        assert!(
            text.ends_with("\nWARNING: 1 flyingcircus jobs are not frozen: fc\nfc: w"),
            "{text}"
        );
        write_status_file(&status, &[job("a", "OK", None), job("fc", "OK", None)]).unwrap();
        assert_eq!(evaluate(&conf, now), ("OK: 2 jobs within SLA".into(), OK));
    }
}
