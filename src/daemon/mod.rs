//! The scheduler daemon: runs each job's backups on time, as child processes.
//!
//! One thread owns all scheduling state and reacts to events: a child exited, the
//! console asked for a run, a signal arrived, or the next deadline passed. Backups
//! run as `backy -b <job> -l <job>/backy.log backup <tags>` child processes, so a
//! crash in one backup never takes the daemon down; the console and the status
//! file read a snapshot of the state that the loop publishes.

pub mod consistency;
pub mod console;
pub mod status;

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{File, OpenOptions};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use crate::error::{Error, Result};
use crate::expire;
use crate::job::{Job, write_atomic};
use crate::schedule::config::{Config, JobDef, Schedule};
use crate::schedule::plan::{NextRun, backoff, next_run, sla_reference, within_sla};
use crate::schedule::spread::spread;
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
    /// Consecutive failures (for backoff); a manual run does not reset it.
    failures: u32,
    /// Retry not before this, after a failure.
    backoff_until: Option<DateTime<Utc>>,
    /// Tags of the running or queued run.
    run_tags: BTreeSet<String>,
    /// Deadline the queued run had, for ordering.
    queued_deadline: Option<DateTime<Utc>>,
    pid: Option<u32>,
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
    backy: PathBuf,
    events: Receiver<Event>,
    sender: Sender<Event>,
    shared: Arc<Shared>,
    last_status_write: Option<Instant>,
    terminating: bool,
    _lock: File,
}

fn format_time(t: Option<DateTime<Utc>>) -> String {
    t.map_or("-".into(), |t| {
        t.format("%Y-%m-%d %H:%M:%S UTC").to_string()
    })
}

/// The binary the scheduler spawns: `$BACKY_CMD`, else the `backy` beside us.
pub fn backy_command() -> PathBuf {
    if let Some(cmd) = std::env::var_os("BACKY_CMD") {
        return cmd.into();
    }
    std::env::current_exe().unwrap_or_else(|_| "backy".into())
}

impl Scheduler {
    /// Loads the config, takes `<base-dir>/.lock` and prepares every job.
    pub fn new(config_path: &Path) -> Result<Scheduler> {
        let config = Config::load(config_path)?;
        for w in &config.warnings {
            tracing::warn!("{}: {w}", config_path.display());
        }
        std::fs::create_dir_all(&config.base_dir)
            .map_err(Error::io("cannot create base directory", &config.base_dir))?;
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
            backy: backy_command(),
            events,
            sender,
            shared,
            last_status_write: None,
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
                    failures: 0,
                    backoff_until: None,
                    run_tags: BTreeSet::new(),
                    queued_deadline: None,
                    pid: None,
                    history: Vec::new(),
                    warnings: Vec::new(),
                    consistency: Default::default(),
                    last_success: None,
                    started: None,
                    known_since: std::fs::metadata(dir.join("config"))
                        .and_then(|m| m.modified())
                        .map(DateTime::<Utc>::from)
                        .unwrap_or(now),
                },
            };
            (state.history, state.warnings) = load_history(&dir, now);
            state.consistency = consistency::summarize(
                &dir,
                &state.def.source,
                self.config.crash_consistent_warning,
            );
            reschedule(&mut state, now);
            self.jobs.insert(name.clone(), state);
        }
        for (name, state) in old {
            if state.phase == Phase::Running {
                tracing::info!(
                    "Job {name} was removed from the config; its running backup finishes"
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
                    std::thread::spawn(move || console::serve(listener, shared));
                }
                Err(e) => tracing::warn!("Cannot listen on {sa} for the console: {e}"),
            }
        }
    }

    /// Runs until a terminate event and all children have ended.
    pub fn run(&mut self) -> Result<()> {
        tracing::info!(
            "Scheduler started with {} jobs, {} workers, base directory {}",
            self.jobs.len(),
            self.config.worker_limit,
            self.config.base_dir.display()
        );
        loop {
            let now = Utc::now();
            if !self.terminating {
                self.queue_due(now);
                self.start_queued(now);
            }
            self.publish(now);
            if self.terminating && self.running() == 0 {
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
        self.jobs
            .values()
            .filter(|j| j.phase == Phase::Running)
            .count()
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
                .filter(|(_, j)| j.phase == Phase::Queued)
                .min_by_key(|(n, j)| (j.queued_deadline, (*n).clone()))
                .map(|(n, _)| n.clone())
            else {
                return;
            };
            if let Err(e) = self.spawn(&name, now) {
                tracing::error!("Cannot start the backup of {name}: {e}");
                let job = self.jobs.get_mut(&name).expect("queued job exists");
                fail(job, now);
            }
        }
    }

    fn spawn(&mut self, name: &str, _now: DateTime<Utc>) -> Result<()> {
        let dir = self.job_dir(name);
        let job = self.jobs.get(name).expect("queued job exists");
        write_job_config(&dir, &job.def)?;
        let log_path = dir.join("backy.log");
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(Error::io("cannot open job log", &log_path))?;
        let err = log
            .try_clone()
            .map_err(Error::io("cannot open job log", &log_path))?;
        let tags = job.run_tags.iter().cloned().collect::<Vec<_>>().join(",");
        let mut child = Command::new(&self.backy)
            .arg("-b")
            .arg(&dir)
            .arg("-l")
            .arg(&log_path)
            .args(["backup", &tags])
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .map_err(|e| Error::Other(format!("cannot run {}: {e}", self.backy.display())))?;
        let pid = child.id();
        tracing::info!("Job {name} started (pid {pid}) with tags {tags}");
        let sender = self.sender.clone();
        let job_name = name.to_string();
        std::thread::spawn(move || {
            let code = child.wait().ok().and_then(|s| s.code());
            let _ = sender.send(Event::Exited {
                job: job_name,
                code,
            });
        });
        let job = self.jobs.get_mut(name).expect("queued job exists");
        job.phase = Phase::Running;
        job.pid = Some(pid);
        job.started = Some(Utc::now());
        Ok(())
    }

    fn handle(&mut self, event: Event) {
        let now = Utc::now();
        match event {
            Event::Exited { job: name, code } => self.finished(&name, code, now),
            Event::RunNow(name) => {
                if let Some(job) = self.jobs.get_mut(&name)
                    && matches!(job.phase, Phase::Waiting | Phase::Failed | Phase::Finished)
                {
                    job.backoff_until = None;
                    job.next = NextRun {
                        time: now,
                        tags: job.next.tags.clone(),
                    };
                    tracing::info!("Immediate run of {name} requested");
                }
            }
            Event::Terminate => {
                if !self.terminating {
                    tracing::info!("Terminating: stopping {} running backups", self.running());
                    self.terminating = true;
                    for job in self.jobs.values_mut() {
                        if job.phase == Phase::Queued {
                            job.phase = Phase::Waiting;
                        }
                        if let (Phase::Running, Some(pid)) = (job.phase, job.pid) {
                            // The backup dies with an incomplete revision, which no
                            // command chooses and the next backup removes.
                            if let Some(pid) = rustix::process::Pid::from_raw(pid as i32) {
                                let _ = rustix::process::kill_process(
                                    pid,
                                    rustix::process::Signal::TERM,
                                );
                            }
                        }
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
                        "Reloaded {}: {} jobs",
                        self.config_path.display(),
                        self.jobs.len()
                    );
                }
                Err(e) => tracing::error!("Keeping the old configuration: {e}"),
            },
        }
    }

    fn finished(&mut self, name: &str, code: Option<i32>, now: DateTime<Utc>) {
        let dir = self.job_dir(name);
        let Some(job) = self.jobs.get_mut(name) else {
            return;
        };
        job.pid = None;
        if code == Some(0) {
            tracing::info!("Job {name} finished");
            job.failures = 0;
            job.backoff_until = None;
            job.phase = Phase::Finished;
            job.last_success = Some((job.started.unwrap_or(now), job.run_tags.clone()));
            match expire::expire(&dir, &job.schedule, now, false) {
                Ok(plan) => tracing::debug!("Retention for {name}:\n{plan}"),
                Err(e) => tracing::warn!("Could not expire revisions of {name}: {e}"),
            }
        } else {
            match code {
                Some(c) => tracing::error!(
                    "Job {name} failed with exit code {c} (see {}/backy.log)",
                    dir.display()
                ),
                None => tracing::error!(
                    "Job {name} was killed by a signal (see {}/backy.log)",
                    dir.display()
                ),
            }
            fail(job, now);
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
                    consistency: job.consistency.newest.clone(),
                    consistency_warning: job.consistency.warning.clone(),
                }
            })
            .collect();
        let due = self
            .last_status_write
            .is_none_or(|t| t.elapsed() >= self.config.status_interval);
        if due || self.terminating {
            if let Err(e) = write_status_file(&self.config.status_file, &statuses) {
                tracing::error!("{e}");
            }
            self.last_status_write = Some(Instant::now());
        }
        *self.shared.jobs.lock().unwrap_or_else(|e| e.into_inner()) = statuses;
    }
}

fn effective_deadline(job: &JobState) -> DateTime<Utc> {
    match job.backoff_until {
        Some(b) => b.max(job.next.time),
        None => job.next.time,
    }
}

fn fail(job: &mut JobState, now: DateTime<Utc>) {
    job.failures += 1;
    job.phase = Phase::Failed;
    let wait = backoff(job.failures);
    job.backoff_until = Some(now + chrono::Duration::from_std(wait).unwrap_or_default());
    tracing::info!("Retrying in {} minutes", wait.as_secs() / 60);
}

/// Sets the next run from the schedule and the history; after a failure the
/// failed run's tags are retried (at the backoff time) with whatever else is due.
fn reschedule(job: &mut JobState, now: DateTime<Utc>) {
    let mut history: Vec<(DateTime<Utc>, BTreeSet<String>)> = job
        .history
        .iter()
        .map(|(t, tags, _)| (*t, tags.clone()))
        .collect();
    if let Some((t, tags)) = &job.last_success
        && history.last().is_none_or(|(newest, _)| newest < t)
    {
        history.push((*t, tags.clone()));
    }
    job.next = next_run(&job.schedule, job.spread, &history, now);
    if job.phase == Phase::Failed {
        job.next.tags.extend(job.run_tags.iter().cloned());
    }
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
            job.revisions
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

/// Writes a job's `config` before its run, only when it changed.
fn write_job_config(dir: &Path, def: &JobDef) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(Error::io("cannot create job directory", dir))?;
    let config = def.job_config();
    let text = config.to_yaml();
    let path = dir.join("config");
    // A Consul token is a secret: 0600, also for a config an older version wrote.
    let secret = matches!(
        &config.source,
        crate::config::SourceConfig::FlyingCircus {
            consul_acl_token: Some(_),
            ..
        }
    );
    let mode = if secret { 0o600 } else { 0o644 };
    let too_open = secret
        && std::fs::metadata(&path)
            .is_ok_and(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o077 != 0);
    if too_open || std::fs::read_to_string(&path).ok().as_deref() != Some(text.as_str()) {
        write_atomic(&path, text.as_bytes(), mode)?;
    }
    Ok(())
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
    .map_err(|e| Error::Other(format!("cannot install signal handlers: {e}")))?;
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
