//! What the scheduler knows about each job, as the status file, `backy check`
//! and the console show it.

use std::path::Path;

use comfy_table::{CellAlignment, ContentArrangement, Table};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::job::write_atomic;

/// One job's line in the status file, in backy 2.x's key order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobStatus {
    /// Job name.
    pub job: String,
    /// `OK` or `TOO OLD`.
    pub sla: String,
    /// `waiting for deadline`, `queued for execution`, `running`, `failed`, `finished`.
    pub status: String,
    /// Newest complete revision, `%Y-%m-%d %H:%M:%S UTC`, or `-`.
    pub last_time: String,
    /// Its tags, comma-joined by interval.
    pub last_tags: String,
    /// Its duration (`50.7 s`) or `-`.
    pub last_duration: String,
    /// Next run, same format as `last_time`.
    pub next_time: String,
    /// Tags of the next run.
    pub next_tags: String,
    /// Damaged revisions and revisions dated in the future, one line each;
    /// `backy check` reports them as WARNING.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// Why the latest run failed, for people (absent after a success; we add it).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub last_failure: String,
    /// The same as a word for programs: `source-written`, `timeout`, `exit`,
    /// `signal`, `start` or `base-dir-missing` (absent after a success).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub last_failure_kind: String,
    /// Ceph jobs: the newest revision's `stats.consistency` (`frozen`, `crash`, `-`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consistency: Option<String>,
    /// A flyingcircus job whose last revisions were all crash-consistent;
    /// `backy check` reports it as WARNING.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consistency_warning: Option<String>,
    /// Jobs with `scrub:`: when the last scrub (or verification) ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_scrub: Option<String>,
    /// When the next scrub is due.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_scrub: Option<String>,
    /// How the latest scrub ended: `ok`, `damage found: ...`, `failed: ...`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scrub_result: Option<String>,
}

impl JobStatus {
    /// Whether the job is within its SLA.
    pub fn ok(&self) -> bool {
        self.sla == "OK"
    }

    /// Whether the latest run failed because the source was written meanwhile.
    pub fn source_written(&self) -> bool {
        self.last_failure_kind == "source-written"
    }
}

/// A duration in the largest whole unit: `10 minutes`, `1 hour`, `90 seconds`.
pub fn duration_text(d: std::time::Duration) -> String {
    let s = d.as_secs();
    if s >= 3600 && s.is_multiple_of(3600) {
        count((s / 3600) as usize, "hour")
    } else if s >= 60 && s.is_multiple_of(60) {
        count((s / 60) as usize, "minute")
    } else {
        count(s as usize, "second")
    }
}

pub use crate::units::count;

/// Writes the status file atomically.
pub fn write_status_file(path: &Path, jobs: &[JobStatus]) -> Result<()> {
    let text = serde_norway::to_string(jobs).map_err(|source| Error::StatusEncode { source })?;
    write_atomic(path, text.as_bytes(), 0o644)
}

/// Reads a status file.
pub fn read_status_file(path: &Path) -> Result<Vec<JobStatus>> {
    let text = std::fs::read_to_string(path).map_err(Error::io("cannot read status file", path))?;
    serde_norway::from_str(&text).map_err(|source| Error::StatusMalformed {
        path: path.to_owned(),
        source,
    })
}

/// The console's `jobs` table (as backy 2.x printed it; times without ` UTC`). When
/// Ceph jobs are among them, a last column says whether their newest
/// revision's guest was frozen, and marks the flyingcircus jobs `check` warns about.
pub fn jobs_table(jobs: &[JobStatus]) -> String {
    let mut table = Table::new();
    let any_ceph = jobs.iter().any(|j| j.consistency.is_some());
    let mut header = vec![
        "Job",
        "SLA",
        "Status",
        "Last Backup (UTC)",
        "Last Tags",
        "Last Dur",
        "Next Backup (UTC)",
        "Next Tags",
    ];
    if any_ceph {
        header.push("Consistency");
    }
    table
        .load_preset("||--+-++|    ++++++")
        .set_content_arrangement(ContentArrangement::Disabled)
        .set_header(header);
    let bare = |t: &str| t.trim_end_matches(" UTC").to_string();
    for j in jobs {
        let mut row = vec![
            j.job.clone(),
            j.sla.clone(),
            j.status.clone(),
            bare(&j.last_time),
            j.last_tags.clone(),
            j.last_duration.clone(),
            bare(&j.next_time),
            j.next_tags.clone(),
        ];
        if any_ceph {
            row.push(consistency_cell(j));
        }
        table.add_row(row);
    }
    if let Some(c) = table.column_mut(5) {
        c.set_cell_alignment(CellAlignment::Right);
    }
    table.to_string()
}

/// `frozen`, `crash`, `-`, or `crash (WARNING)` for a flyingcircus job whose
/// last revisions were all crash-consistent; empty for file jobs.
fn consistency_cell(j: &JobStatus) -> String {
    match (&j.consistency, &j.consistency_warning) {
        (Some(c), Some(_)) => format!("{c} (WARNING)"),
        (Some(c), None) => c.clone(),
        (None, _) => String::new(),
    }
}

/// The console's `status` table: jobs per status.
pub fn status_counts(jobs: &[JobStatus]) -> String {
    let mut counts = std::collections::BTreeMap::<&str, usize>::new();
    for j in jobs {
        *counts.entry(j.status.as_str()).or_default() += 1;
    }
    let mut table = Table::new();
    table
        .load_preset("||--+-++|    ++++++")
        .set_content_arrangement(ContentArrangement::Disabled)
        .set_header(["Status", "#"]);
    for (status, n) in counts {
        table.add_row([status.to_string(), n.to_string()]);
    }
    if let Some(c) = table.column_mut(1) {
        c.set_cell_alignment(CellAlignment::Right);
    }
    table.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(name: &str, sla: &str) -> JobStatus {
        JobStatus {
            job: name.into(),
            sla: sla.into(),
            status: "waiting for deadline".into(),
            last_time: "2015-11-05 11:56:10 UTC".into(),
            last_tags: "daily".into(),
            last_duration: "50.7 s".into(),
            next_time: "2015-11-06 11:56:10 UTC".into(),
            next_tags: "daily,weekly".into(),
            warnings: Vec::new(),
            last_failure: String::new(),
            last_failure_kind: String::new(),
            consistency: None,
            consistency_warning: None,
            last_scrub: None,
            next_scrub: None,
            scrub_result: None,
        }
    }

    #[test]
    fn status_file_round_trips_in_key_order() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("status");
        let jobs = vec![job("test01", "OK"), job("test02", "TOO OLD")];
        write_status_file(&p, &jobs).unwrap();
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(text.starts_with("- job: test01\n  sla: OK\n  status: waiting for deadline\n  last_time: 2015-11-05 11:56:10 UTC\n"), "{text}");
        assert_eq!(read_status_file(&p).unwrap(), jobs);
        assert!(!text.contains("last_failure"), "{text}");
        // A failure is told apart; files without the keys (older versions) read.
        let mut failed = job("test03", "OK");
        failed.status = "failed".into();
        failed.last_failure = "the source was written during the backup".into();
        failed.last_failure_kind = "source-written".into();
        write_status_file(&p, std::slice::from_ref(&failed)).unwrap();
        let back = read_status_file(&p).unwrap();
        assert!(back[0].source_written());
        assert_eq!(back, [failed]);
    }

    #[test]
    fn jobs_table_looks_like_the_original() {
        let t = jobs_table(&[job("test01", "OK")]);
        assert!(
            t.contains("| Job    | SLA | Status               | Last Backup (UTC)   |"),
            "{t}"
        );
        assert!(t.contains("| test01 | OK  | waiting for deadline | 2015-11-05 11:56:10 | daily     |   50.7 s |"), "{t}");
        assert!(!t.contains("Consistency"), "{t}");
    }

    #[test]
    fn jobs_table_shows_consistency_of_ceph_jobs() {
        let mut fc = job("fc01", "OK");
        fc.consistency = Some("crash".into());
        fc.consistency_warning = Some("the last 3 revisions are only crash-consistent".into());
        let mut rbd = job("rbd01", "OK");
        rbd.consistency = Some("frozen".into());
        let t = jobs_table(&[job("test01", "OK"), fc, rbd]);
        assert!(t.contains("| Next Tags    | Consistency     |"), "{t}");
        assert!(t.contains("| daily,weekly | crash (WARNING) |"), "{t}");
        assert!(t.contains("| daily,weekly | frozen          |"), "{t}");
    }
}
