//! The scheduler daemon: runs each job's backups on time, as child processes.
//!
//! One thread owns all scheduling state and reacts to events: a child exited, the
//! console asked for a run, a signal arrived, or the next deadline passed. Backups
//! run as `backy -b <job> -l <job>/backy.log backup <tags>` child processes, so a
//! crash in one backup never takes the daemon down; the console and the status
//! file read a snapshot of the state that the loop publishes.
//!
//! This module is the loop; [`child`] starts and watches the children (job
//! log, run-timeout, exit status), [`crate::schedule::backoff`] says when a
//! job runs again after a failure.

pub mod child;
pub mod consistency;
pub mod console;
pub mod status;

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{File, OpenOptions};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use crate::error::{Error, Result};
use crate::job::Job;
use crate::schedule::backoff::{Retry, next_attempt};
use crate::schedule::config::{Config, JobDef, Schedule};
use crate::schedule::plan::{NextRun, next_scrub, sla_reference, within_sla};
use crate::schedule::spread::spread;
use child::{Action, Failure, Running, classify};
pub use child::{EXIT_SOURCE_WRITTEN, backy_command};
use status::{JobStatus, write_status_file};

/// What wakes the scheduling loop.
#[derive(Debug)]
pub enum Event {
    /// A backup child ended.
    Exited {
        /// The job.
        job: String,
        /// Exit code (`None`: killed by a signal).
        code: Option<i32>,
        /// The signal that killed it.
        signal: Option<i32>,
        /// The reason the child gave on stderr (its `backy: ...` line), else
        /// its last line there.
        last_line: Option<String>,
    },
    /// The console asked for an immediate run.
    RunNow(String),
    /// SIGTERM, SIGINT or SIGQUIT.
    Terminate,
    /// SIGHUP: reload the configuration.
    Reload,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Waiting,
    Queued,
    Running,
    Failed,
    Finished,
}

impl Phase {
    fn word(self) -> &'static str {
        match self {
            Phase::Waiting => "waiting for deadline",
            Phase::Queued => "queued for execution",
            Phase::Running => "running",
            Phase::Failed => "failed",
            Phase::Finished => "finished",
        }
    }
}

struct JobState {
    def: JobDef,
    schedule: Schedule,
    spread: u64,
    next: NextRun,
    phase: Phase,
    /// Failures in a row and the backoff they cause.
    retry: Retry,
    /// Tags of the running or queued run.
    run_tags: BTreeSet<String>,
    /// Deadline the queued run had, for ordering.
    queued_deadline: Option<DateTime<Utc>>,
    /// Why the latest run failed (`None` after a success).
    failure: Option<Failure>,
    /// Complete revisions (timestamp, tags, duration), oldest first.
    history: Vec<(DateTime<Utc>, BTreeSet<String>, Option<f64>)>,
    /// Damaged revisions and revisions dated in the future, for the status file.
    warnings: Vec<String>,
    /// Whether the guests were frozen (Ceph jobs), for the status file.
    consistency: consistency::Summary,
    /// When the last successful run started and its tags: planning counts it even
    /// if no revision shows it (a `$BACKY_CMD` that makes none), so a job is never
    /// re-run in a loop.
    last_success: Option<(DateTime<Utc>, BTreeSet<String>)>,
    /// When the current run started.
    started: Option<DateTime<Utc>>,
    known_since: DateTime<Utc>,
    /// The newest verification recorded in the job's revisions (a scrub, or
    /// `backy verify` by hand), and when the next scrub is due (`scrub:` set).
    last_scrub: Option<DateTime<Utc>>,
    next_scrub: Option<DateTime<Utc>>,
    /// How the latest scrub ended, for the status file.
    scrub_result: Option<String>,
    /// When the running scrub started.
    scrub_started: Option<DateTime<Utc>>,
}

/// The daemon's published view, shared with the console.
struct Shared {
    jobs: Mutex<Vec<JobStatus>>,
    events: Mutex<Sender<Event>>,
    names: Mutex<BTreeSet<String>>,
}

impl console::Daemon for Shared {
    fn jobs(&self) -> Vec<JobStatus> {
        self.jobs.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn run(&self, job: &str) -> bool {
        if !self
            .names
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(job)
        {
            return false;
        }
        let _ = self
            .events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .send(Event::RunNow(job.into()));
        true
    }
}

/// The running scheduler.
pub struct Scheduler {
    config_path: PathBuf,
    config: Config,
    jobs: BTreeMap<String, JobState>,
    /// Running children by job, including jobs a reload removed.
    children: BTreeMap<String, Running>,
    backy: PathBuf,
    events: Receiver<Event>,
    sender: Sender<Event>,
    shared: Arc<Shared>,
    last_status_write: Option<Instant>,
    /// The last error writing the status file, logged once.
    status_error: Option<String>,
    terminating: bool,
    _lock: File,
}

fn format_time(t: Option<DateTime<Utc>>) -> String {
    t.map_or("-".into(), |t| {
        t.format("%Y-%m-%d %H:%M:%S UTC").to_string()
    })
}

impl Scheduler {
    /// Loads the config, takes `<base-dir>/.lock` and prepares every job.
    pub fn new(config_path: &Path) -> Result<Scheduler> {
        let config = Config::load(config_path)?;
        for w in &config.warnings {
            tracing::warn!("{}: {w}", config_path.display());
        }
        // Never create it: an unmounted backup volume would fill its parent.
        if !config.base_dir.is_dir() {
            return Err(Error::BaseDirMissing {
                path: config.base_dir.clone(),
            });
        }
        let lock_path = config.base_dir.join(".lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(Error::io("cannot open", &lock_path))?;
        if lock.try_lock().is_err() {
            return Err(Error::SchedulerRunning {
                base_dir: config.base_dir.clone(),
                lock: lock_path,
            });
        }
        let (sender, events) = channel();
        let shared = Arc::new(Shared {
            jobs: Mutex::new(Vec::new()),
            events: Mutex::new(sender.clone()),
            names: Mutex::new(BTreeSet::new()),
        });
        let mut s = Scheduler {
            config_path: config_path.to_owned(),
            config,
            jobs: BTreeMap::new(),
            children: BTreeMap::new(),
            backy: backy_command(),
            events,
            sender,
            shared,
            last_status_write: None,
            status_error: None,
            terminating: false,
            _lock: lock,
        };
        s.apply_config(Utc::now());
        Ok(s)
    }

    /// A sender for events (signals, tests).
    pub fn sender(&self) -> Sender<Event> {
        self.sender.clone()
    }

    fn job_dir(&self, name: &str) -> PathBuf {
        self.config.base_dir.join(name)
    }

    /// (Re)builds job states from the config, keeping the state of known jobs.
    fn apply_config(&mut self, now: DateTime<Utc>) {
        let mut old = std::mem::take(&mut self.jobs);
        for (name, def) in &self.config.jobs {
            let Some(schedule) = self.config.schedules.get(&def.schedule).cloned() else {
                continue; // validated by Config::parse
            };
            let spread = spread(name, schedule.max_interval());
            let dir = self.config.base_dir.join(name);
            let mut state = match old.remove(name) {
                Some(mut s) => {
                    s.def = def.clone();
                    s.schedule = schedule;
                    s.spread = spread;
                    s
                }
                None => JobState {
                    def: def.clone(),
                    schedule,
                    spread,
                    next: NextRun {
                        time: now,
                        tags: BTreeSet::new(),
                    },
                    phase: Phase::Waiting,
                    retry: Retry::default(),
                    run_tags: BTreeSet::new(),
                    queued_deadline: None,
                    failure: None,
                    history: Vec::new(),
                    warnings: Vec::new(),
                    consistency: Default::default(),
                    last_success: None,
                    started: None,
                    last_scrub: None,
                    next_scrub: None,
                    scrub_result: None,
                    scrub_started: None,
                    known_since: std::fs::metadata(dir.join("config"))
                        .and_then(|m| m.modified())
                        .map(DateTime::<Utc>::from)
                        .unwrap_or(now),
                },
            };
            (state.history, state.warnings) = load_history(&dir, now);
            state.last_scrub = state.last_scrub.max(last_verification(&dir));
            plan_scrub(name, &mut state, now);
            if self.children.contains_key(name) {
                // Removed and added back while its backup still runs.
                state.phase = Phase::Running;
            }
            state.consistency = consistency::summarize(
                &dir,
                &state.def.source,
                self.config.crash_consistent_warning,
            );
            reschedule(&mut state, now);
            self.jobs.insert(name.clone(), state);
        }
        for name in old.keys() {
            if let Some(child) = self.children.get(name) {
                tracing::info!(
                    "Job {name} was removed from the config; its running backup (pid {}) finishes",
                    child.pid
                );
            }
        }
        *self.shared.names.lock().unwrap_or_else(|e| e.into_inner()) =
            self.jobs.keys().cloned().collect();
    }

    /// Starts the console listeners.
    pub fn start_console(&self) {
        for addr in &self.config.telnet_addrs {
            let sa = SocketAddr::new(*addr, self.config.telnet_port);
            match TcpListener::bind(sa) {
                Ok(listener) => {
                    let bound = listener.local_addr().unwrap_or(sa);
                    tracing::info!("Console listening on {bound}");
                    let shared: Arc<dyn console::Daemon> = self.shared.clone();
                    let idle = self.config.console_timeout;
                    std::thread::spawn(move || console::serve(listener, shared, idle));
                }
                Err(e) => tracing::warn!("Cannot listen on {sa} for the console: {e}"),
            }
        }
    }

    /// Runs until a terminate event and all children have ended.
    pub fn run(&mut self) -> Result<()> {
        tracing::info!(
            "Scheduler started with {}, {} workers, base directory {}",
            status::count(self.jobs.len(), "job"),
            self.config.worker_limit,
            self.config.base_dir.display()
        );
        loop {
            let now = Utc::now();
            self.stop_overdue();
            if !self.terminating {
                self.queue_due(now);
                self.start_queued(now);
                self.start_scrubs(now);
            }
            self.publish(now);
            if self.terminating && self.children.is_empty() {
                self.publish(Utc::now());
                tracing::info!("Scheduler stopped");
                return Ok(());
            }
            let wait = self.time_to_next_deadline(now).min(Duration::from_secs(1));
            match self.events.recv_timeout(wait) {
                Ok(event) => self.handle(event),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return Ok(()),
            }
        }
    }

    fn running(&self) -> usize {
        self.children.len()
    }

    /// Stops runs that took longer than their run-timeout: SIGTERM, then
    /// SIGKILL after a grace period (the timeout, at most 30 s).
    fn stop_overdue(&mut self) {
        for (name, child) in &mut self.children {
            child.stop_if_overdue(name);
        }
    }

    fn time_to_next_deadline(&self, now: DateTime<Utc>) -> Duration {
        self.jobs
            .values()
            .filter(|j| {
                j.phase == Phase::Waiting || j.phase == Phase::Failed || j.phase == Phase::Finished
            })
            .map(|j| (effective_deadline(j) - now).to_std().unwrap_or_default())
            .min()
            .unwrap_or(Duration::from_secs(1))
    }

    fn queue_due(&mut self, now: DateTime<Utc>) {
        for (name, job) in &mut self.jobs {
            let idle = matches!(job.phase, Phase::Waiting | Phase::Failed | Phase::Finished);
            let deadline = effective_deadline(job);
            if idle && deadline <= now {
                job.phase = Phase::Queued;
                job.run_tags = job.next.tags.clone();
                job.queued_deadline = Some(deadline);
                tracing::info!(
                    "Job {name} queued with tags {}",
                    join_tags(&job.schedule, &job.run_tags)
                );
            }
        }
    }

    fn start_queued(&mut self, now: DateTime<Utc>) {
        while self.running() < self.config.worker_limit {
            let Some(name) = self
                .jobs
                .iter()
                .filter(|(n, j)| j.phase == Phase::Queued && !self.children.contains_key(*n))
                .min_by_key(|(n, j)| (j.queued_deadline, (*n).clone()))
                .map(|(n, _)| n.clone())
            else {
                return;
            };
            if let Err(failure) = self.spawn(&name, now) {
                tracing::error!("Job {name} failed: {}", failure.describe());
                let job = self.jobs.get_mut(&name).expect("queued job exists");
                job.failure = Some(failure);
                fail(&name, job, now);
                reschedule(job, now);
            }
        }
    }

    fn spawn(&mut self, name: &str, _now: DateTime<Utc>) -> std::result::Result<(), Failure> {
        if !self.config.base_dir.is_dir() {
            return Err(Failure::BaseDirMissing(self.config.base_dir.clone()));
        }
        let dir = self.job_dir(name);
        let job = self.jobs.get(name).expect("queued job exists");
        let child = Running::start(
            &self.backy,
            name,
            &dir,
            &job.def,
            Action::Backup(&job.run_tags),
            self.config.run_timeout(name),
            self.sender.clone(),
        )?;
        self.children.insert(name.to_string(), child);
        let job = self.jobs.get_mut(name).expect("queued job exists");
        job.phase = Phase::Running;
        job.started = Some(Utc::now());
        Ok(())
    }

    /// Starts due scrubs of idle jobs while workers are free (after the
    /// backups: a queued backup goes first).
    fn start_scrubs(&mut self, now: DateTime<Utc>) {
        while self.running() < self.config.worker_limit {
            let Some(name) = self
                .jobs
                .iter()
                .filter(|(n, j)| {
                    matches!(j.phase, Phase::Waiting | Phase::Failed | Phase::Finished)
                        && !self.children.contains_key(*n)
                        && !j.history.is_empty()
                        && j.next_scrub.is_some_and(|t| t <= now)
                })
                .min_by_key(|(n, j)| (j.next_scrub, (*n).clone()))
                .map(|(n, _)| n.clone())
            else {
                return;
            };
            let dir = self.job_dir(&name);
            let job = self.jobs.get_mut(&name).expect("due job exists");
            let percent = job.def.scrub.map_or(100.0, |s| s.percent);
            match Running::start(
                &self.backy,
                &name,
                &dir,
                &job.def,
                Action::Scrub(percent),
                self.config.run_timeout(&name),
                self.sender.clone(),
            ) {
                Ok(child) => {
                    job.scrub_started = Some(now);
                    self.children.insert(name, child);
                }
                Err(failure) => {
                    tracing::error!("Job {name}: scrub failed: {}", failure.describe());
                    job.scrub_result = Some(format!("failed: {}", failure.describe()));
                    job.last_scrub = Some(now);
                    plan_scrub(&name, job, now);
                }
            }
        }
    }

    /// A scrub child ended: log and record it; the backup schedule is untouched.
    fn scrub_finished(&mut self, name: &str, failure: Option<Failure>, now: DateTime<Utc>) {
        let dir = self.job_dir(name);
        let Some(job) = self.jobs.get_mut(name) else {
            return;
        };
        let result = match &failure {
            None => {
                tracing::info!("Job {name}: scrub finished, the sampled blocks match");
                "ok".to_string()
            }
            Some(Failure::Exit(1, line)) => {
                let f = failure.as_ref().expect("matched");
                tracing::error!(
                    "Job {name}: scrub found damage ({}; see {})",
                    f.describe(),
                    dir.join("backy.log").display()
                );
                format!("damage found: {}", line.clone().unwrap_or_default())
            }
            Some(f) => {
                tracing::error!("Job {name}: scrub failed: {}", f.describe());
                format!("failed: {}", f.describe())
            }
        };
        job.scrub_result = Some(result);
        job.last_scrub = Some(job.scrub_started.take().unwrap_or(now));
        (job.history, job.warnings) = load_history(&dir, now);
        plan_scrub(name, job, now);
    }

    fn handle(&mut self, event: Event) {
        let now = Utc::now();
        match event {
            Event::Exited {
                job: name,
                code,
                signal,
                last_line,
            } => self.finished(&name, code, signal, last_line, now),
            Event::RunNow(name) => {
                if let Some(job) = self.jobs.get_mut(&name)
                    && matches!(job.phase, Phase::Waiting | Phase::Failed | Phase::Finished)
                {
                    job.retry.run_now();
                    job.next = NextRun {
                        time: now,
                        tags: job.next.tags.clone(),
                    };
                    tracing::info!("Immediate run of {name} requested");
                }
            }
            Event::Terminate => {
                if !self.terminating {
                    tracing::info!(
                        "Terminating: stopping {}",
                        status::count(self.running(), "running backup")
                    );
                    self.terminating = true;
                    for job in self.jobs.values_mut() {
                        if job.phase == Phase::Queued {
                            job.phase = Phase::Waiting;
                        }
                    }
                    // A stopped backup removes its incomplete revision (or the
                    // next backup does), which no command chooses meanwhile.
                    for child in self.children.values() {
                        child.signal(rustix::process::Signal::TERM);
                    }
                }
            }
            Event::Reload => match Config::load(&self.config_path) {
                Ok(config) => {
                    for w in &config.warnings {
                        tracing::warn!("{}: {w}", self.config_path.display());
                    }
                    if config.base_dir != self.config.base_dir {
                        tracing::warn!(
                            "base-dir changed in the config; restart the scheduler to use it"
                        );
                    }
                    let base_dir = self.config.base_dir.clone();
                    self.config = config;
                    self.config.base_dir = base_dir;
                    self.apply_config(now);
                    tracing::info!(
                        "Reloaded {}: {}",
                        self.config_path.display(),
                        status::count(self.jobs.len(), "job")
                    );
                }
                Err(e) => tracing::error!("Keeping the old configuration: {e}"),
            },
        }
    }

    fn finished(
        &mut self,
        name: &str,
        code: Option<i32>,
        signal: Option<i32>,
        last_line: Option<String>,
        now: DateTime<Utc>,
    ) {
        let dir = self.job_dir(name);
        let child = self.children.remove(name);
        let timed_out = child.as_ref().and_then(Running::timed_out);
        let failure = classify(code, signal, last_line, timed_out);
        if child.as_ref().is_some_and(|c| c.scrub) {
            return self.scrub_finished(name, failure, now);
        }
        let log_hint = format!("see {}", dir.join("backy.log").display());
        let Some(job) = self.jobs.get_mut(name) else {
            match &failure {
                None => tracing::info!("Job {name} (removed from the config) finished"),
                Some(f) => tracing::error!(
                    "Job {name} (removed from the config) failed: {} ({log_hint})",
                    f.describe()
                ),
            }
            return;
        };
        match failure {
            None => {
                tracing::info!("Job {name} finished");
                job.retry.succeeded();
                job.phase = Phase::Finished;
                job.failure = None;
                job.last_success = Some((job.started.unwrap_or(now), job.run_tags.clone()));
                match crate::job::expire(&dir, &job.schedule, now, false) {
                    Ok(plan) => tracing::debug!("Retention for {name}:\n{plan}"),
                    Err(e) => tracing::warn!("Could not expire revisions of {name}: {e}"),
                }
            }
            Some(failure) => {
                match &failure {
                    Failure::SourceWritten => tracing::error!(
                        "Job {name}: backup failed: {} ({log_hint})",
                        failure.describe()
                    ),
                    Failure::Exit(..) => tracing::error!(
                        "Job {name} failed with {} ({log_hint})",
                        failure.describe()
                    ),
                    f => tracing::error!("Job {name} failed: {} ({log_hint})", f.describe()),
                }
                job.failure = Some(failure);
                fail(name, job, now);
            }
        }
        (job.history, job.warnings) = load_history(&dir, now);
        job.consistency =
            consistency::summarize(&dir, &job.def.source, self.config.crash_consistent_warning);
        reschedule(job, now);
    }

    fn publish(&mut self, now: DateTime<Utc>) {
        let statuses: Vec<JobStatus> = self
            .jobs
            .iter()
            .map(|(name, job)| {
                let last = job.history.last();
                JobStatus {
                    job: name.clone(),
                    sla: if within_sla(
                        &job.schedule,
                        sla_reference(
                            last.map(|l| l.0),
                            job.last_success.as_ref().map(|s| s.0),
                            now,
                        ),
                        job.known_since,
                        now,
                    ) {
                        "OK".into()
                    } else {
                        "TOO OLD".into()
                    },
                    status: job.phase.word().into(),
                    last_time: format_time(last.map(|l| l.0)),
                    last_tags: last
                        .map(|l| join_tags(&job.schedule, &l.1))
                        .unwrap_or_default(),
                    last_duration: last
                        .and_then(|l| l.2)
                        .map_or("-".into(), |d| format!("{d:.1} s")),
                    next_time: format_time(Some(effective_deadline(job))),
                    next_tags: join_tags(&job.schedule, &job.next.tags),
                    warnings: job.warnings.clone(),
                    last_failure: job
                        .failure
                        .as_ref()
                        .map(Failure::describe)
                        .unwrap_or_default(),
                    last_failure_kind: job
                        .failure
                        .as_ref()
                        .map(|f| f.kind().to_string())
                        .unwrap_or_default(),
                    consistency: job.consistency.newest.clone(),
                    consistency_warning: job.consistency.warning.clone(),
                    last_scrub: job
                        .def
                        .scrub
                        .map(|_| format_time(job.last_scrub))
                        .filter(|t| t != "-"),
                    next_scrub: job.next_scrub.map(|t| format_time(Some(t))),
                    scrub_result: job.scrub_result.clone(),
                }
            })
            .collect();
        let due = self
            .last_status_write
            .is_none_or(|t| t.elapsed() >= self.config.status_interval);
        if due || self.terminating {
            // Said once per new problem, not every status-interval.
            match write_status_file(&self.config.status_file, &statuses) {
                Ok(()) => self.status_error = None,
                Err(e) => {
                    let text = e.to_string();
                    if self.status_error.as_ref() != Some(&text) {
                        tracing::error!("{text}");
                        self.status_error = Some(text);
                    }
                }
            }
            self.last_status_write = Some(Instant::now());
        }
        *self.shared.jobs.lock().unwrap_or_else(|e| e.into_inner()) = statuses;
    }
}

fn effective_deadline(job: &JobState) -> DateTime<Utc> {
    job.retry.deadline(job.next.time)
}

fn fail(name: &str, job: &mut JobState, now: DateTime<Utc>) {
    job.phase = Phase::Failed;
    let wait = job.retry.failed(now);
    tracing::info!(
        "Job {name}: retrying in {}",
        status::count((wait.as_secs() / 60) as usize, "minute")
    );
}

/// Sets the next run from the schedule and the history; after a failure the
/// failed run's tags are retried (at the backoff time) with whatever else is due.
fn reschedule(job: &mut JobState, now: DateTime<Utc>) {
    let history: Vec<(DateTime<Utc>, BTreeSet<String>)> = job
        .history
        .iter()
        .map(|(t, tags, _)| (*t, tags.clone()))
        .collect();
    let failed = (job.phase == Phase::Failed).then_some(&job.run_tags);
    job.next = next_attempt(
        &job.schedule,
        job.spread,
        &history,
        job.last_success.as_ref(),
        failed,
        now,
    );
}

/// Sets when the job's next scrub is due (`None` without `scrub:`). Scrubs
/// are spread over their interval by the job's name, as backups are, with a
/// spread of their own so they do not start with the job's backups.
fn plan_scrub(name: &str, job: &mut JobState, now: DateTime<Utc>) {
    job.next_scrub = job.def.scrub.map(|scrub| {
        let spread = spread(&format!("{name} scrub"), scrub.interval);
        next_scrub(scrub.interval, spread, job.last_scrub, now)
    });
}

/// The newest verification recorded in the job's revisions.
fn last_verification(dir: &Path) -> Option<DateTime<Utc>> {
    let job = Job::open(dir).ok()?;
    job.revisions()
        .iter()
        .filter_map(|r| r.verification().map(|v| v.time))
        .max()
}

fn join_tags(schedule: &Schedule, tags: &BTreeSet<String>) -> String {
    schedule.format_tags(tags)
}

/// A job's complete revisions (oldest first) and what `check` should warn about.
type History = Vec<(DateTime<Utc>, BTreeSet<String>, Option<f64>)>;

fn load_history(dir: &Path, now: DateTime<Utc>) -> (History, Vec<String>) {
    if !dir.join("config").exists() {
        return (Vec::new(), Vec::new());
    }
    match Job::open(dir) {
        Ok(job) => (
            job.revisions()
                .iter()
                .filter(|r| r.is_complete())
                .map(|r| (r.timestamp, r.tags.clone(), r.duration()))
                .collect(),
            job.warnings(now),
        ),
        Err(e) => {
            tracing::warn!("Cannot read revisions of {}: {e}", dir.display());
            (Vec::new(), Vec::new())
        }
    }
}

/// Runs the scheduler in the foreground until SIGTERM/SIGINT/SIGQUIT.
pub fn run_forever(config_path: &Path) -> Result<()> {
    let mut scheduler = Scheduler::new(config_path)?;
    let sender = scheduler.sender();
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGQUIT,
        signal_hook::consts::SIGHUP,
    ])
    .map_err(|source| Error::SignalHandlers { source })?;
    std::thread::spawn(move || {
        for sig in signals.forever() {
            let event = if sig == signal_hook::consts::SIGHUP {
                Event::Reload
            } else {
                Event::Terminate
            };
            if sender.send(event).is_err() {
                return;
            }
        }
    });
    scheduler.start_console();
    scheduler.run()
}
