//! `backy metrics -c CONFIG [--textfile PATH]`: the state of every configured
//! job for Prometheus, in the text format node_exporter's textfile collector
//! reads (see [`crate::metrics`]).
//!
//! Every job's samples carry the label `backy_job`, not `job`: Prometheus sets
//! `job` itself when it scrapes node_exporter and would rename ours to
//! `exported_job`.
//!
//! Where the values come from:
//!
//! - the job directories, read as `status` reads them (no backup or purge
//!   lock, so a running backup is never in the way): the newest complete
//!   revision, the revisions by trust state, the protected and damaged ones,
//!   and the space ([`crate::space::measure`]);
//! - the scheduler's status file, judged as `backy check` judges it
//!   ([`super::check::read_status`], [`super::check::job_sla`]): `backy_sla_ok`
//!   is 1 only when the file is recent enough and lists the job within SLA.
//!
//! A job whose directory cannot be read gets `backy_job_readable 0` (and a
//! warning on stderr) instead of failing the output; an unreadable scheduler
//! configuration is an error.

use std::path::Path;
use std::time::SystemTime;

use chrono::{DateTime, Utc};

use super::check::{JobSla, StatusFile, is_stale, job_sla, max_status_age, read_status};
use crate::error::{Error, Result};
use crate::job::{Job, write_atomic};
use crate::metrics::{Exposition, Value};
use crate::revision::{Revision, Trust};
use crate::schedule::config::Config;
use crate::schedule::plan::sla_limit;

/// The label that names the job in every per-job sample.
const JOB_LABEL: &str = "backy_job";

/// The trust states, in the order `backy_revisions` lists them.
const TRUST_STATES: [Trust; 3] = [Trust::Trusted, Trust::Verified, Trust::Distrusted];

/// Prints the metrics, or writes them atomically to `textfile` (mode 0644).
pub fn run(config_path: &Path, textfile: Option<&Path>) -> Result<()> {
    let config = Config::load(config_path)?;
    let text = exposition(&config, SystemTime::now()).render();
    match textfile {
        Some(path) => write_textfile(path, &text),
        None => crate::output::stdout(&text),
    }
}

/// Replaces `path` in one rename, so that the collector never reads half a
/// file; the temporary `<name>.tmp` beside it does not end in `.prom`, so
/// the collector ignores it.
fn write_textfile(path: &Path, text: &str) -> Result<()> {
    // Absolute, so that the directory synced after the rename is never "".
    let path = std::path::absolute(path).map_err(Error::io("cannot resolve", path))?;
    write_atomic(&path, text.as_bytes(), 0o644)
}

/// What one job directory says.
struct DirFacts {
    /// The newest complete revision.
    newest: Option<Revision>,
    /// Complete revisions per [`TRUST_STATES`].
    by_trust: [u64; 3],
    /// Complete revisions protected from retention and `forget`.
    protected: u64,
    /// Damaged revisions.
    damaged: u64,
    /// Complete revisions dated after now.
    future: u64,
    /// Its space, `None` when it could not be measured.
    space: Option<Space>,
}

/// What [`crate::space::measure`] found, as far as the metrics need it.
struct Space {
    /// Distinct bytes on disk of images, manifests and `.rev` files.
    physical: u64,
    /// Bytes the images map, summed over the revisions.
    logical: u64,
    /// Whether the figures are exact (not a btrfs estimate).
    exact: bool,
}

impl DirFacts {
    fn read(job: &Job, now: DateTime<Utc>) -> DirFacts {
        let complete = || job.revisions().iter().filter(|r| r.is_complete());
        DirFacts {
            newest: job.newest_complete().cloned(),
            by_trust: TRUST_STATES.map(|t| complete().filter(|r| r.trust == t).count() as u64),
            protected: complete().filter(|r| r.protected.is_some()).count() as u64,
            damaged: job.damaged.len() as u64,
            future: job.future_revisions(now).len() as u64,
            space: match crate::space::measure(job) {
                Ok(s) => Some(Space {
                    physical: s.physical + s.manifests_physical,
                    logical: s.logical,
                    exact: s.accuracy.is_exact(),
                }),
                Err(e) => {
                    tracing::warn!(
                        "Job {}: space not measured: {}",
                        job.dir().display(),
                        e.report()
                    );
                    None
                }
            },
        }
    }
}

/// One configured job.
struct JobFacts<'a> {
    name: &'a str,
    /// Whether `backy check` counts it within SLA.
    sla_ok: bool,
    /// 1.5 times the shortest interval of its schedule, in seconds.
    sla_limit: Option<u64>,
    /// `None`: the directory could not be read.
    dir: Option<DirFacts>,
}

impl JobFacts<'_> {
    /// The newest complete revision, if the directory could be read.
    fn newest(&self) -> Option<&Revision> {
        self.dir.as_ref()?.newest.as_ref()
    }

    /// The measured space, if the directory could be read and measured.
    fn space(&self) -> Option<&Space> {
        self.dir.as_ref()?.space.as_ref()
    }
}

/// Seconds since the epoch, with microseconds.
fn epoch_seconds(t: DateTime<Utc>) -> f64 {
    t.timestamp() as f64 + f64::from(t.timestamp_subsec_micros()) / 1e6
}

/// When the backup of `rev` finished: its timestamp (the start) plus its
/// duration.
fn finished_at(rev: &Revision) -> f64 {
    epoch_seconds(rev.timestamp) + rev.duration().unwrap_or(0.0)
}

/// All metrics of `config`'s jobs at time `now`.
pub fn exposition(config: &Config, now: SystemTime) -> Exposition {
    let now_utc = DateTime::<Utc>::from(now);
    let status = read_status(config, now);
    let fresh_jobs = match &status {
        StatusFile::Read { age, jobs, .. } if !is_stale(config, *age) => Some(jobs.as_slice()),
        _ => None,
    };
    if let StatusFile::Unreadable(e) = &status {
        tracing::warn!("{}", e.report());
    }
    let jobs: Vec<JobFacts> = config
        .jobs
        .iter()
        .map(|(name, def)| JobFacts {
            name,
            sla_ok: fresh_jobs.is_some_and(|jobs| job_sla(jobs, name) == JobSla::Within),
            sla_limit: config
                .schedules
                .get(&def.schedule)
                .map(|s| sla_limit(s).as_secs()),
            dir: match Job::open(&config.job_dir(name)) {
                Ok(job) => Some(DirFacts::read(&job, now_utc)),
                Err(e) => {
                    tracing::warn!("Job {name}: {}", e.report());
                    None
                }
            },
        })
        .collect();

    let mut e = Exposition::new();
    e.gauge(
        "backy_metrics_generated_timestamp_seconds",
        "When backy metrics wrote these metrics.",
    )
    .sample(&[], epoch_seconds(now_utc));
    if let StatusFile::Read { modified, .. } = &status {
        e.gauge(
            "backy_status_file_timestamp_seconds",
            "When the scheduler last wrote its status file.",
        )
        .sample(&[], epoch_seconds(DateTime::<Utc>::from(*modified)));
    }
    e.gauge(
        "backy_status_file_max_age_seconds",
        "How old the status file may get before backy check calls the scheduler not running.",
    )
    .sample(&[], max_status_age(config).as_secs());
    job_gauges(&mut e, &jobs);
    e
}

/// A gauge with one sample per job that `value` gives one for.
fn per_job<V: Into<Value>>(
    e: &mut Exposition,
    name: &'static str,
    help: &'static str,
    jobs: &[JobFacts],
    value: impl Fn(&JobFacts) -> Option<V>,
) {
    let family = e.gauge(name, help);
    for j in jobs {
        if let Some(v) = value(j) {
            family.sample(&[(JOB_LABEL, j.name)], v);
        }
    }
}

/// The per-job families.
fn job_gauges(e: &mut Exposition, jobs: &[JobFacts]) {
    per_job(
        e,
        "backy_job_readable",
        "1 when the job directory could be read, 0 when it is missing or unreadable (its other per-directory metrics are then absent).",
        jobs,
        |j| Some(j.dir.is_some()),
    );
    per_job(
        e,
        "backy_sla_ok",
        "1 when backy check counts the job within its SLA: the status file is recent and lists it as OK; 0 otherwise.",
        jobs,
        |j| Some(j.sla_ok),
    );
    per_job(
        e,
        "backy_sla_limit_seconds",
        "How old the newest complete revision may get: 1.5 times the shortest interval of the job's schedule.",
        jobs,
        |j| j.sla_limit,
    );
    per_job(
        e,
        "backy_last_success_timestamp_seconds",
        "When the newest complete revision's backup finished: its timestamp (the start) plus its duration.",
        jobs,
        |j| j.newest().map(finished_at),
    );
    per_job(
        e,
        "backy_last_backup_duration_seconds",
        "How long the backup of the newest complete revision took.",
        jobs,
        |j| j.newest()?.duration(),
    );
    per_job(
        e,
        "backy_last_backup_changed_bytes",
        "Bytes the backup of the newest complete revision changed (stats.bytes_changed; absent for revisions of backy 2.x).",
        jobs,
        |j| j.newest()?.stat_u64("bytes_changed"),
    );
    let revisions = e.gauge(
        "backy_revisions",
        "Complete revisions of the job, by trust state.",
    );
    for j in jobs {
        let Some(d) = &j.dir else { continue };
        for (trust, n) in TRUST_STATES.iter().zip(d.by_trust) {
            revisions.sample(&[(JOB_LABEL, j.name), ("trust", trust.as_str())], n);
        }
    }
    per_job(
        e,
        "backy_protected_revisions",
        "Complete revisions protected from retention and forget (backy protect).",
        jobs,
        |j| j.dir.as_ref().map(|d| d.protected),
    );
    per_job(
        e,
        "backy_physical_bytes",
        "Distinct bytes on disk of the job's complete revisions: images, manifests and .rev files, each shared byte once.",
        jobs,
        |j| j.space().map(|s| s.physical),
    );
    per_job(
        e,
        "backy_logical_bytes",
        "Bytes the complete revisions' images map, summed (what they would take without sharing).",
        jobs,
        |j| j.space().map(|s| s.logical),
    );
    per_job(
        e,
        "backy_space_exact",
        "1 when the space figures are exact (XFS, ext4), 0 when they are an estimate (btrfs, compression; see SPACE in man backy).",
        jobs,
        |j| j.space().map(|s| s.exact),
    );
    per_job(
        e,
        "backy_damaged_revisions",
        "Revisions whose metadata cannot be read or whose image is missing (backy status lists them).",
        jobs,
        |j| j.dir.as_ref().map(|d| d.damaged),
    );
    per_job(
        e,
        "backy_future_revisions",
        "Complete revisions dated in the future (made while the clock was ahead).",
        jobs,
        |j| j.dir.as_ref().map(|d| d.future),
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::status::{JobStatus, write_status_file};
    use std::time::{Duration, UNIX_EPOCH};

    fn status(job: &str, sla: &str) -> JobStatus {
        JobStatus {
            job: job.into(),
            sla: sla.into(),
            status: "finished".into(),
            last_time: "-".into(),
            last_tags: String::new(),
            last_duration: "-".into(),
            next_time: "-".into(),
            next_tags: String::new(),
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

    /// A revision written by hand: `<id>.rev` and an empty image.
    fn revision(dir: &Path, id: &str, timestamp: &str, stats: &str, trust: &str) {
        std::fs::write(dir.join(id), b"").unwrap();
        std::fs::write(
            dir.join(format!("{id}.rev")),
            format!("uuid: {id}\ntimestamp: {timestamp}\nparent: null\ntags: [daily]\nstats: {stats}\ntrust: {trust}\n"),
        )
        .unwrap();
    }

    /// The value of the sample whose line starts with `series` (name and labels).
    fn value(text: &str, series: &str) -> Option<String> {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
            .map(str::to_owned)
    }

    fn setup() -> (tempfile::TempDir, Config) {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("base");
        let conf = format!(
            "global: {{base-dir: {}}}\nschedules: {{s: {{daily: {{interval: 1d, keep: 3}}, hourly: {{interval: 1h, keep: 3}}}}}}\njobs:\n  a: {{schedule: s, source: {{type: file, filename: /a}}}}\n  b: {{schedule: s, source: {{type: file, filename: /b}}}}\n  c: {{schedule: s, source: {{type: file, filename: /c}}}}\n",
            base.display()
        );
        let config = Config::parse(&conf).unwrap();
        let a = base.join("a");
        std::fs::create_dir_all(&a).unwrap();
        std::fs::write(a.join("config"), "{type: file, filename: /a}\n").unwrap();
        revision(
            &a,
            "old",
            "2026-01-01 00:00:00+00:00",
            "{duration: 9.0}\nprotected: {reason: audit}",
            "distrusted",
        );
        revision(
            &a,
            "new",
            "2026-01-02 00:00:00.25+00:00",
            "{bytes_written: 100, bytes_changed: 4096, duration: 2.5}",
            "verified",
        );
        // Incomplete (no duration): not counted, not the newest.
        revision(&a, "running", "2026-01-03 00:00:00+00:00", "{}", "trusted");
        std::fs::write(a.join("broken.rev"), "not: [yaml").unwrap();
        // c's directory exists but is empty: readable, without revisions.
        std::fs::create_dir_all(base.join("c")).unwrap();
        write_status_file(
            &config.status_file,
            &[status("a", "OK"), status("c", "TOO OLD")],
        )
        .unwrap();
        (dir, config)
    }

    #[test]
    fn values_come_from_the_job_directories_and_the_status_file() {
        let (_dir, config) = setup();
        let now = SystemTime::now();
        let text = exposition(&config, now).render();
        let v = |series: &str| value(&text, series);
        assert_eq!(
            v(r#"backy_last_success_timestamp_seconds{backy_job="a"}"#).as_deref(),
            // 2026-01-02 00:00:00.25 UTC + 2.5 s
            Some("1767312002.75"),
            "{text}"
        );
        assert_eq!(
            v(r#"backy_last_backup_duration_seconds{backy_job="a"}"#).as_deref(),
            Some("2.5")
        );
        assert_eq!(
            v(r#"backy_last_backup_changed_bytes{backy_job="a"}"#).as_deref(),
            Some("4096")
        );
        for (trust, n) in [("trusted", "0"), ("verified", "1"), ("distrusted", "1")] {
            let series = format!(r#"backy_revisions{{backy_job="a",trust="{trust}"}}"#);
            assert_eq!(v(&series).as_deref(), Some(n), "{series}\n{text}");
        }
        assert_eq!(
            v(r#"backy_damaged_revisions{backy_job="a"}"#).as_deref(),
            Some("1")
        );
        assert_eq!(
            v(r#"backy_future_revisions{backy_job="a"}"#).as_deref(),
            Some("0")
        );
        assert_eq!(
            v(r#"backy_protected_revisions{backy_job="a"}"#).as_deref(),
            Some("1")
        );
        // 1.5 times the shortest interval (1 hour).
        assert_eq!(
            v(r#"backy_sla_limit_seconds{backy_job="b"}"#).as_deref(),
            Some("5400")
        );
        for (job, readable, sla) in [("a", "1", "1"), ("b", "0", "0"), ("c", "1", "0")] {
            let r = format!(r#"backy_job_readable{{backy_job="{job}"}}"#);
            assert_eq!(v(&r).as_deref(), Some(readable), "{r}\n{text}");
            let s = format!(r#"backy_sla_ok{{backy_job="{job}"}}"#);
            assert_eq!(v(&s).as_deref(), Some(sla), "{s}\n{text}");
        }
        // Nothing per revision for the unreadable job and the empty one.
        assert!(!text.contains(r#"backy_revisions{backy_job="b""#), "{text}");
        assert!(!text.contains(r#"backy_last_backup_duration_seconds{backy_job="c""#));
        assert_eq!(
            v(r#"backy_revisions{backy_job="c",trust="trusted"}"#).as_deref(),
            Some("0")
        );
        let generated: f64 = v("backy_metrics_generated_timestamp_seconds")
            .unwrap()
            .parse()
            .unwrap();
        let expected = now.duration_since(UNIX_EPOCH).unwrap().as_secs_f64();
        assert!(
            (generated - expected).abs() < 1e-3,
            "{generated} {expected}"
        );
        assert!(v("backy_status_file_timestamp_seconds").is_some());
        assert_eq!(
            v("backy_status_file_max_age_seconds").as_deref(),
            Some("300")
        );
    }

    /// A stale status file means the scheduler is not running: `check` is
    /// CRITICAL, so no job counts as within SLA; without a status file neither.
    #[test]
    fn a_stale_or_missing_status_file_puts_every_job_out_of_sla() {
        let (_dir, config) = setup();
        let later = SystemTime::now() + Duration::from_secs(301);
        let text = exposition(&config, later).render();
        assert_eq!(
            value(&text, r#"backy_sla_ok{backy_job="a"}"#).as_deref(),
            Some("0"),
            "{text}"
        );
        std::fs::remove_file(&config.status_file).unwrap();
        let text = exposition(&config, SystemTime::now()).render();
        assert_eq!(
            value(&text, r#"backy_sla_ok{backy_job="a"}"#).as_deref(),
            Some("0")
        );
        assert!(
            !text.contains("backy_status_file_timestamp_seconds"),
            "{text}"
        );
    }

    #[test]
    fn the_textfile_is_replaced_whole_with_mode_0644() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("backy.prom");
        std::fs::write(&path, "old\n").unwrap();
        write_textfile(&path, "# HELP x y\n").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "# HELP x y\n");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o644);
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["backy.prom"], "no temporary file is left");
    }
}
