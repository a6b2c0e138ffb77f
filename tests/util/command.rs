//! Running commands: the `backy` binary under test ([`backy`], [`backy_job`]),
//! any command with a time limit and both streams captured ([`run`], [`Run`]),
//! system tools ([`tool`], [`find_tool`]) and the skip rule ([`skip`], [`in_ci`]).

use std::env;
use std::fmt;
use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::thread;
use std::time::{Duration, Instant};
/// How long [`run`] lets a command run before it kills it and fails the test.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);

// ---------------------------------------------------------------------------
// Skipping

/// True when the environment says we run in CI (`CI=true`), where skipping
/// a test for lack of root or tools is an error.
pub fn in_ci() -> bool {
    env::var("CI").is_ok_and(|v| matches!(v.to_ascii_lowercase().as_str(), "true" | "1" | "yes"))
}

/// Report that a test cannot run here: print `skipping: <reason>` and return
/// `None`, or panic when [`in_ci`].
pub fn skip<T>(reason: impl fmt::Display) -> Option<T> {
    if in_ci() {
        panic!("CI=true, so refusing to skip: {reason}");
    }
    eprintln!("skipping: {reason}");
    None
}

pub(super) fn is_root() -> bool {
    // The effective uid is the second field of `Uid:`.
    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1))
        == Some("0")
}

/// Absolute path of `tool` from `PATH`, falling back to the sbin directories
/// that a non-login root shell may lack.
pub fn find_tool(tool: &str) -> Option<PathBuf> {
    let path = env::var_os("PATH").unwrap_or_default();
    env::split_paths(&path)
        .chain(["/usr/local/sbin", "/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|dir| dir.join(tool))
        .find(|p| is_executable(p))
}

/// A `Command` for a system tool, by its absolute path where [`find_tool`]
/// finds it (sbin may be missing from `PATH`).
pub fn tool(name: &str) -> Command {
    Command::new(find_tool(name).unwrap_or_else(|| PathBuf::from(name)))
}

pub(super) fn is_executable(path: &Path) -> bool {
    fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The tools, or the reason to skip naming the first one missing.
pub(super) fn require_tools(tools: &[&str], why: &str) -> Result<Vec<PathBuf>, String> {
    tools
        .iter()
        .map(|t| {
            find_tool(t).ok_or_else(|| {
                format!("`{t}` not found (needed for {why}; run scripts/setup-test-deps.sh)")
            })
        })
        .collect()
}

// ---------------------------------------------------------------------------
// Running commands

/// The environment variables that change what the `backy` binary does (the
/// commands it runs, where Ceph is), removed from every command that runs it
/// so the caller's environment cannot leak into a test.
pub const BACKY_ENV_REMOVED: &[&str] = &[
    "BACKY_CMD",
    "BACKY_CP",
    "BACKY_RBD",
    "CEPH_ARGS",
    "CEPH_CLUSTER",
    "CEPH_CONF",
    "CONSUL_HTTP_ADDR",
    "CONSUL_HTTP_TOKEN",
];

/// Remove [`BACKY_ENV_REMOVED`] from `cmd`'s environment, for commands that
/// run the binary some other way than [`backy`] (e.g. through `setpriv`).
pub fn remove_backy_env(cmd: &mut Command) -> &mut Command {
    for var in BACKY_ENV_REMOVED {
        cmd.env_remove(var);
    }
    cmd
}

/// A `Command` for the `backy` binary under test, with
/// [`BACKY_ENV_REMOVED`] removed from its environment.
pub fn backy() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_backy"));
    remove_backy_env(&mut cmd);
    cmd
}

/// [`backy`] with `-b JOB_DIR`.
pub fn backy_job(job_dir: &Path) -> Command {
    let mut cmd = backy();
    cmd.arg("-b").arg(job_dir);
    cmd
}

/// What a finished command did: its exit code and both output streams.
///
/// The expectation methods panic with the command line, the exit status and
/// both streams, so a failing test shows why.
pub struct Run {
    /// The command line, for messages.
    pub cmd: String,
    /// The exit code, or `None` when a signal ended the process.
    pub code: Option<i32>,
    /// The full exit status.
    pub status: ExitStatus,
    /// Standard output, lossily decoded.
    pub stdout: String,
    /// Standard output, as bytes (for binary output such as `restore -`).
    pub stdout_bytes: Vec<u8>,
    /// Standard error, lossily decoded.
    pub stderr: String,
}

impl fmt::Debug for Run {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Leave out `stdout_bytes`: it repeats stdout as a list of numbers.
        f.debug_struct("Run")
            .field("cmd", &self.cmd)
            .field("status", &self.status)
            .field("stdout", &self.stdout)
            .field("stderr", &self.stderr)
            .finish()
    }
}

impl Run {
    /// Panic with everything we know, prefixed by `what` went wrong.
    #[track_caller]
    pub fn fail(&self, what: &str) -> ! {
        panic!(
            "\n\n==========\n{what}\
             \n\ncommand: {}\
             \n\nstatus: {}\
             \n\nstdout:\n{}\
             \n\nstderr:\n{}\
             \n==========\n",
            self.cmd, self.status, self.stdout, self.stderr
        )
    }

    /// Expect exit code 0.
    #[track_caller]
    pub fn success(self) -> Self {
        if !self.status.success() {
            self.fail("command failed but expected success!");
        }
        self
    }

    /// Expect a non-zero exit (or death by signal).
    #[track_caller]
    pub fn failure(self) -> Self {
        if self.status.success() {
            self.fail("command succeeded but expected failure!");
        }
        self
    }

    /// Expect exactly exit code `code`.
    #[track_caller]
    pub fn code(self, code: i32) -> Self {
        if self.code != Some(code) {
            self.fail(&format!("expected exit code {code}"));
        }
        self
    }

    /// Expect `needle` in standard output.
    #[track_caller]
    pub fn stdout_has(self, needle: &str) -> Self {
        if !self.stdout.contains(needle) {
            self.fail(&format!("expected stdout to contain {needle:?}"));
        }
        self
    }

    /// Expect `needle` in standard error.
    #[track_caller]
    pub fn stderr_has(self, needle: &str) -> Self {
        if !self.stderr.contains(needle) {
            self.fail(&format!("expected stderr to contain {needle:?}"));
        }
        self
    }
}

/// Run `cmd` to completion (stdin closed), capturing both streams; panic only
/// if it cannot start or runs longer than 10 minutes. Check the result with
/// [`Run`]'s methods.
#[track_caller]
pub fn run(cmd: &mut Command) -> Run {
    run_timeout(cmd, DEFAULT_TIMEOUT)
}

/// [`run`] and expect success.
#[track_caller]
pub fn run_ok(cmd: &mut Command) -> Run {
    run(cmd).success()
}

/// [`run`] with an explicit time limit; on expiry the child is killed and the
/// test fails with what it printed so far.
#[track_caller]
pub fn run_timeout(cmd: &mut Command, limit: Duration) -> Run {
    let cmd_line = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {cmd_line}: {e}"));
    // Drain both pipes on threads so a chatty child cannot block on a full pipe.
    let out = PipeReader::spawn(child.stdout.take().expect("piped stdout"));
    let err = PipeReader::spawn(child.stderr.take().expect("piped stderr"));
    let deadline = Instant::now() + limit;
    let (status, timed_out) = loop {
        if let Some(status) = child.try_wait().expect("wait for child") {
            break (status, false);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            break (child.wait().expect("wait for killed child"), true);
        }
        thread::sleep(Duration::from_millis(10));
    };
    // A grandchild that inherited the pipes may keep them open; take what
    // came within a grace period rather than waiting for it to exit.
    let grace_end = Instant::now()
        + if timed_out {
            PIPE_GRACE / 5
        } else {
            PIPE_GRACE
        };
    let stdout_bytes = out.finish(grace_end);
    let stderr = err.finish(grace_end);
    let run = Run {
        cmd: cmd_line,
        code: status.code(),
        status,
        stdout: String::from_utf8_lossy(&stdout_bytes).into_owned(),
        stdout_bytes,
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
    };
    if timed_out {
        run.fail(&format!("command ran longer than {limit:?} and was killed"));
    }
    run
}

/// How long [`run`] waits for the pipes to close after the child exited.
const PIPE_GRACE: Duration = Duration::from_secs(5);

/// Reads a child's pipe to the end on its own thread.
struct PipeReader {
    buf: Arc<Mutex<Vec<u8>>>,
    done: mpsc::Receiver<()>,
}

impl PipeReader {
    fn spawn(mut pipe: impl Read + Send + 'static) -> PipeReader {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let (tx, done) = mpsc::channel();
        let shared = Arc::clone(&buf);
        thread::spawn(move || {
            let mut chunk = [0u8; 64 * 1024];
            loop {
                match pipe.read(&mut chunk) {
                    Ok(0) => break,
                    Ok(n) => shared
                        .lock()
                        .expect("pipe buffer")
                        .extend_from_slice(&chunk[..n]),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => break,
                }
            }
            let _ = tx.send(());
        });
        PipeReader { buf, done }
    }

    /// Everything read once the pipe closed, or by `deadline`.
    fn finish(self, deadline: Instant) -> Vec<u8> {
        let _ = self
            .done
            .recv_timeout(deadline.saturating_duration_since(Instant::now()));
        std::mem::take(&mut *self.buf.lock().expect("pipe buffer"))
    }
}

/// A long-running child (a server, the scheduler) that is killed and reaped
/// when dropped, unless it has ended.
pub struct Background {
    /// The process.
    pub child: std::process::Child,
}

impl Background {
    /// Sends SIGTERM and waits up to 30 s for the exit status; `what` and
    /// `log` (its log so far) go into the failure message.
    pub fn terminate(&mut self, what: &str, log: impl Fn() -> String) -> ExitStatus {
        run_ok(Command::new("kill").args(["-TERM", &self.child.id().to_string()]));
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for child") {
                return status;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "{what} did not stop on SIGTERM:\n{}",
                log()
            );
            thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Background {
    /// The port an `nbd-server` started with `-p 0 -l LOG` listens on, from
    /// its "over NBD on 127.0.0.1:PORT" log line (up to 30 s); fails with
    /// the log and its stderr (when piped) if it exits first.
    pub fn nbd_port(&mut self, log: &Path) -> u16 {
        let needle = "over NBD on 127.0.0.1:";
        let start = Instant::now();
        loop {
            let text = fs::read_to_string(log).unwrap_or_default();
            if let Some(rest) = text.split(needle).nth(1) {
                let port = rest.split_whitespace().next().unwrap_or_default();
                return port.parse().unwrap_or_else(|_| {
                    panic!("no port in nbd-server's {needle:?} line:\n{text}")
                });
            }
            if let Some(status) = self.child.try_wait().expect("wait for nbd-server") {
                let mut err = String::new();
                if let Some(mut stderr) = self.child.stderr.take() {
                    let _ = stderr.read_to_string(&mut err);
                }
                panic!("nbd-server exited with {status}:\n{text}\n{err}");
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "no {needle:?} in the nbd-server log:\n{text}"
            );
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
