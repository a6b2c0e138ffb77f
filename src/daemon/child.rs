//! A job's backup as a child process: starting `backy -b <job> -l <job>/backy.log
//! backup <tags>`, copying its stderr into the job log, stopping it when it runs
//! longer than its run-timeout, and telling from its exit status why it failed.
//!
//! Each child has a thread that waits for it (polling, so that the loop may
//! signal its pid while it cannot have been reaped) and one that reads its
//! stderr into the job log and keeps its closing `backy: ...` line as the
//! reason of a failure. The waiting thread sends [`Event::Exited`] to the
//! scheduling loop when the child has ended.

use std::collections::BTreeSet;
use std::fs::OpenOptions;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Sender, channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{Event, status};
use crate::error::{Error, Result};
use crate::job::write_atomic;
use crate::schedule::config::JobDef;

/// Exit status of `backy backup` when the source was written while it was read.
pub const EXIT_SOURCE_WRITTEN: i32 = 75;

/// Longest wait between SIGTERM and SIGKILL for a run that timed out.
const MAX_KILL_GRACE: Duration = Duration::from_secs(30);

/// Why the latest run of a job failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Failure {
    /// The child could not be started.
    Start(String),
    /// `base-dir` is missing.
    BaseDirMissing(PathBuf),
    /// Exit status 75.
    SourceWritten,
    /// Another non-zero exit status.
    Exit(i32, Option<String>),
    /// Killed by a signal the scheduler did not send.
    Signal(i32, Option<String>),
    /// Ran longer than its run-timeout and was stopped.
    TimedOut(Duration),
}

impl Failure {
    /// A stable word for the status file and `check`.
    pub(super) fn kind(&self) -> &'static str {
        match self {
            Failure::Start(_) => "start",
            Failure::BaseDirMissing(_) => "base-dir-missing",
            Failure::SourceWritten => "source-written",
            Failure::Exit(..) => "exit",
            Failure::Signal(..) => "signal",
            Failure::TimedOut(_) => "timeout",
        }
    }

    /// What an operator reads.
    pub(super) fn describe(&self) -> String {
        let said = |line: &Option<String>| match line {
            Some(l) => format!(": {}", l.strip_prefix("backy: ").unwrap_or(l)),
            None => String::new(),
        };
        match self {
            Failure::Start(e) => format!("could not be started: {e}"),
            Failure::BaseDirMissing(dir) => format!(
                "base-dir {} does not exist; mount the backup volume or create it",
                dir.display()
            ),
            Failure::SourceWritten => {
                "the source was written during the backup (freeze or snapshot it)".into()
            }
            Failure::Exit(code, line) => format!("exit code {code}{}", said(line)),
            Failure::Signal(sig, line) => format!("killed by signal {sig}{}", said(line)),
            Failure::TimedOut(after) => format!(
                "it ran longer than its run-timeout of {} and was stopped",
                status::duration_text(*after)
            ),
        }
    }
}

/// A backup child the scheduler started and has not yet seen end.
pub(super) struct Running {
    /// Shared with the thread that waits for it; whoever holds the lock may
    /// signal the pid, which cannot be reaped (and reused) meanwhile.
    child: Arc<Mutex<Child>>,
    pub(super) pid: u32,
    started: Instant,
    timeout: Option<Duration>,
    /// When SIGTERM was sent because the run timed out.
    stopping: Option<Instant>,
    killed: bool,
    /// A scrub (`backy verify --sample`), not a backup.
    pub(super) scrub: bool,
}

/// What a child runs: a backup with its tags, or a scrub of a share in percent.
pub(super) enum Action<'a> {
    /// `backy backup TAGS`.
    Backup(&'a BTreeSet<String>),
    /// `backy verify --sample PERCENT`.
    Scrub(f64),
}

impl Running {
    /// Starts the backup of job `name` (directory `dir`) with `tags`, after
    /// writing the job's `config` from `def`: `backy` runs it, its stdout goes
    /// to the job log, its stderr through [`forward_stderr`]. When it ends, an
    /// [`Event::Exited`] goes to `events`. A run longer than `timeout` is
    /// stopped by [`Running::stop_if_overdue`].
    pub(super) fn start(
        backy: &Path,
        name: &str,
        dir: &Path,
        def: &JobDef,
        action: Action<'_>,
        timeout: Option<Duration>,
        events: Sender<Event>,
    ) -> std::result::Result<Running, Failure> {
        let start = |e: Error| Failure::Start(e.to_string());
        write_job_config(dir, def).map_err(start)?;
        let log_path = dir.join("backy.log");
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| start(Error::io("cannot open job log", &log_path)(e)))?;
        let (args, what) = match action {
            Action::Backup(tags) => {
                let tags = tags.iter().cloned().collect::<Vec<_>>().join(",");
                (
                    vec!["backup".to_string(), tags.clone()],
                    format!("with tags {tags}"),
                )
            }
            Action::Scrub(percent) => (
                vec!["verify".into(), "--sample".into(), percent.to_string()],
                format!("scrubbing {percent} %"),
            ),
        };
        let scrub = args[0] == "verify";
        let mut command = Command::new(backy);
        command
            .arg("-b")
            .arg(dir)
            .arg("-l")
            .arg(&log_path)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(Stdio::piped());
        let mut child = command
            .spawn()
            .map_err(|e| Failure::Start(format!("cannot run {}: {e}", backy.display())))?;
        let pid = child.id();
        tracing::info!(
            "Job {name} started (pid {pid}) {what}: {}",
            crate::logging::shell_words(
                std::iter::once(command.get_program()).chain(command.get_args())
            )
        );
        let stderr = child.stderr.take();
        let child = Arc::new(Mutex::new(child));
        let (last_tx, last_rx) = channel();
        if let Some(stderr) = stderr {
            let job_name = name.to_string();
            std::thread::spawn(move || {
                let _ = last_tx.send(forward_stderr(&job_name, stderr, &log_path));
            });
        }
        let job_name = name.to_string();
        let waited = child.clone();
        std::thread::spawn(move || {
            let status = loop {
                let status = waited.lock().unwrap_or_else(|e| e.into_inner()).try_wait();
                match status {
                    Ok(Some(status)) => break Some(status),
                    Ok(None) => std::thread::sleep(Duration::from_millis(100)),
                    Err(_) => break None,
                }
            };
            // The reader ends with the pipe, unless a grandchild still holds it.
            let last_line = last_rx.recv_timeout(Duration::from_secs(2)).ok().flatten();
            let _ = events.send(Event::Exited {
                job: job_name,
                code: status.and_then(|s| s.code()),
                signal: status.and_then(|s| s.signal()),
                last_line,
            });
        });
        Ok(Running {
            child,
            pid,
            started: Instant::now(),
            timeout,
            stopping: None,
            killed: false,
            scrub,
        })
    }

    /// Sends `signal` unless the child has ended already.
    pub(super) fn signal(&self, signal: rustix::process::Signal) {
        let mut child = self.child.lock().unwrap_or_else(|e| e.into_inner());
        if matches!(child.try_wait(), Ok(None))
            && let Some(pid) = rustix::process::Pid::from_raw(self.pid as i32)
        {
            let _ = rustix::process::kill_process(pid, signal);
        }
    }

    /// Stops job `name`'s run if it took longer than its run-timeout: SIGTERM,
    /// then SIGKILL after a grace period (the timeout, at most 30 s).
    pub(super) fn stop_if_overdue(&mut self, name: &str) {
        let Some(timeout) = self.timeout else {
            return;
        };
        match self.stopping {
            None if self.started.elapsed() >= timeout => {
                tracing::error!(
                    "Job {name} has run longer than its run-timeout of {}; stopping it (SIGTERM to pid {})",
                    status::duration_text(timeout),
                    self.pid
                );
                self.signal(rustix::process::Signal::TERM);
                self.stopping = Some(Instant::now());
            }
            Some(at) if !self.killed && at.elapsed() >= timeout.min(MAX_KILL_GRACE) => {
                tracing::error!(
                    "Job {name} did not stop after SIGTERM; killing it (SIGKILL to pid {})",
                    self.pid
                );
                self.signal(rustix::process::Signal::KILL);
                self.killed = true;
            }
            _ => {}
        }
    }

    /// The run-timeout, when the scheduler stopped this run for exceeding it.
    pub(super) fn timed_out(&self) -> Option<Duration> {
        self.stopping.and(self.timeout)
    }
}

/// Why a child's run failed, from its exit status, the reason it gave and
/// whether the scheduler stopped it after `timed_out` (`None`: success).
pub(super) fn classify(
    code: Option<i32>,
    signal: Option<i32>,
    last_line: Option<String>,
    timed_out: Option<Duration>,
) -> Option<Failure> {
    match (code, timed_out) {
        (Some(0), _) => None,
        (_, Some(after)) => Some(Failure::TimedOut(after)),
        (Some(EXIT_SOURCE_WRITTEN), _) => Some(Failure::SourceWritten),
        (Some(c), _) => Some(Failure::Exit(c, last_line)),
        (None, _) => Some(Failure::Signal(signal.unwrap_or(0), last_line)),
    }
}

/// Copies a child's stderr into its job log, except its closing `backy: ...`
/// summary, which the child logged already (so no error is in the log twice).
/// A log that cannot be written gets one line in the scheduler's own log.
/// Returns the summary's first line, else the last line seen.
fn forward_stderr(job: &str, stderr: impl std::io::Read, log_path: &Path) -> Option<String> {
    let mut log = OpenOptions::new().append(true).open(log_path).ok();
    let mut complained = false;
    let mut write = |lines: &[String]| {
        for line in lines {
            let result = match &mut log {
                Some(f) => f.write_all(format!("{line}\n").as_bytes()),
                None => Err(std::io::Error::other("it could not be opened")),
            };
            if let Err(e) = result
                && !complained
            {
                complained = true;
                tracing::warn!(
                    "Job {job}: cannot write its output to {}: {}; dropped: {line}",
                    log_path.display(),
                    crate::error::plain_io(&e)
                );
            }
        }
    };
    let (mut held, mut summary, mut last) = (Vec::<String>::new(), None, None);
    let mut reader = BufReader::new(stderr);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match reader.read_until(b'\n', &mut buf) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        let line = String::from_utf8_lossy(&buf).trim_end().to_string();
        if !line.is_empty() {
            last = Some(line.clone());
        }
        if line.starts_with("backy: ") {
            write(&std::mem::take(&mut held));
            summary = Some(line.clone());
            held.push(line);
        } else if !held.is_empty() {
            held.push(line);
        } else {
            write(&[line]);
        }
    }
    summary.or(last)
}

/// Writes a job's `config` before its run, only when it changed.
fn write_job_config(dir: &Path, def: &JobDef) -> Result<()> {
    // 0750, as `init` makes it: VM disks hold secrets.
    std::os::unix::fs::DirBuilderExt::mode(&mut std::fs::DirBuilder::new(), crate::job::DIR_MODE)
        .create(dir)
        .or_else(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                Ok(())
            } else {
                Err(e)
            }
        })
        .map_err(Error::io("cannot create job directory", dir))?;
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
    let mode = if secret { 0o600 } else { 0o640 };
    let too_open = secret
        && std::fs::metadata(&path)
            .is_ok_and(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o077 != 0);
    if too_open || std::fs::read_to_string(&path).ok().as_deref() != Some(text.as_str()) {
        write_atomic(&path, text.as_bytes(), mode)?;
    }
    Ok(())
}

/// The binary the scheduler spawns: `$BACKY_CMD`, else the `backy` beside us.
pub fn backy_command() -> PathBuf {
    if let Some(cmd) = std::env::var_os("BACKY_CMD") {
        return cmd.into();
    }
    std::env::current_exe().unwrap_or_else(|_| "backy".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_are_told_apart() {
        let said = Some("backy: cannot open source /x: No such file".to_string());
        assert_eq!(classify(Some(0), None, said.clone(), None), None);
        // A run that ended well just after its timeout still counts.
        assert_eq!(
            classify(Some(0), None, None, Some(Duration::from_secs(5))),
            None
        );
        let f = classify(Some(143), None, said.clone(), Some(Duration::from_secs(60))).unwrap();
        assert_eq!(f.kind(), "timeout");
        assert_eq!(
            f.describe(),
            "it ran longer than its run-timeout of 1 minute and was stopped"
        );
        let f = classify(Some(75), None, said.clone(), None).unwrap();
        assert_eq!(f.kind(), "source-written");
        assert_eq!(
            f.describe(),
            "the source was written during the backup (freeze or snapshot it)"
        );
        let f = classify(Some(1), None, said.clone(), None).unwrap();
        assert_eq!(
            f.describe(),
            "exit code 1: cannot open source /x: No such file"
        );
        let f = classify(None, Some(9), None, None).unwrap();
        assert_eq!(
            (f.kind(), f.describe().as_str()),
            ("signal", "killed by signal 9")
        );
    }

    #[test]
    fn stderr_goes_to_the_job_log_except_the_closing_summary() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("backy.log");
        std::fs::write(&log, "").unwrap();
        let stderr =
            "thread noise\nbacky: first\nsecond line of it\nmore\nbacky: the error\nits detail\n";
        let reason = forward_stderr("j", stderr.as_bytes(), &log);
        assert_eq!(reason.as_deref(), Some("backy: the error"));
        assert_eq!(
            std::fs::read_to_string(&log).unwrap(),
            "thread noise\nbacky: first\nsecond line of it\nmore\n"
        );
        // Without a summary the last line is the reason; a log that cannot be
        // written loses the lines, not the reason.
        let reason = forward_stderr("j", "a\nb\n\n".as_bytes(), &dir.path().join("none/log"));
        assert_eq!(reason.as_deref(), Some("b"));
    }
}
