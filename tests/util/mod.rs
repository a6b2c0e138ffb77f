//! Shared harness for integration tests: real filesystems, the real binary.
//!
//! Include it from a test file with `mod util;`. Every test gets its own
//! temporary directory and, where it asks for one, its own loop-mounted
//! filesystem ([`TestFs`]), so tests run in parallel without sharing paths.
//!
//! Skip rule: when a test cannot run here (not root, a tool or the Python
//! peer missing), the constructor prints `skipping: <why>` and returns `None`
//! (see [`require_fs!`]). With `CI=true` it panics instead, so that a green CI
//! run means the real parts ran.
#![allow(dead_code, unused_macros)]
pub mod ceph;
pub mod consul;

use std::env;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// `FIEMAP_EXTENT_SHARED`: the extent's blocks are shared with another file.
const FIEMAP_EXTENT_SHARED: u64 = 0x2000;

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

/// Create a [`TestFs`] or return from the calling test when it must be
/// skipped: `let fs = require_fs!(FsKind::Btrfs, 512);`.
#[macro_export]
macro_rules! require_fs {
    ($kind:expr, $size_mib:expr) => {
        match $crate::util::TestFs::new($kind, $size_mib) {
            Some(fs) => fs,
            None => return,
        }
    };
}

/// Path of the Python backy 2.1.5 launcher, or return from the calling test
/// when it must be skipped: `let backy21 = require_python_backy!();`.
#[macro_export]
macro_rules! require_python_backy {
    () => {
        match $crate::util::python_backy() {
            Some(path) => path,
            None => return,
        }
    };
}

fn is_root() -> bool {
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

fn is_executable(path: &Path) -> bool {
    fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The tools, or the reason to skip naming the first one missing.
fn require_tools(tools: &[&str], why: &str) -> Result<Vec<PathBuf>, String> {
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

/// A `Command` for the `backy` binary under test, with the environment
/// variables that change its behaviour removed.
pub fn backy() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_backy"));
    for var in [
        "BACKY_CMD",
        "BACKY_CP",
        "BACKY_RBD",
        "CEPH_ARGS",
        "CEPH_CLUSTER",
        "CEPH_CONF",
        "CONSUL_HTTP_ADDR",
        "CONSUL_HTTP_TOKEN",
    ] {
        cmd.env_remove(var);
    }
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

// ---------------------------------------------------------------------------
// Test filesystems

/// The filesystems a [`TestFs`] can be.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FsKind {
    /// btrfs on a loop device: reflinks.
    Btrfs,
    /// XFS with `reflink=1` on a loop device: reflinks.
    Xfs,
    /// ext4 on a loop device: no reflinks, holes.
    Ext4,
    /// tmpfs: no reflinks, holes, no loop device.
    Tmpfs,
}

impl FsKind {
    /// Every kind.
    pub const ALL: [FsKind; 4] = [FsKind::Btrfs, FsKind::Xfs, FsKind::Ext4, FsKind::Tmpfs];
    /// The kinds that support `FICLONE` (`cp --reflink=always`).
    pub const REFLINK: [FsKind; 2] = [FsKind::Btrfs, FsKind::Xfs];

    /// Whether files on this filesystem can be reflinked.
    pub fn supports_reflink(self) -> bool {
        Self::REFLINK.contains(&self)
    }

    /// The kernel's name for the filesystem type.
    pub fn name(self) -> &'static str {
        match self {
            FsKind::Btrfs => "btrfs",
            FsKind::Xfs => "xfs",
            FsKind::Ext4 => "ext4",
            FsKind::Tmpfs => "tmpfs",
        }
    }

    /// Smallest size in MiB its mkfs accepts (xfsprogs 5.19+ wants 300 MiB).
    fn min_size_mib(self) -> u64 {
        match self {
            FsKind::Btrfs => 128,
            FsKind::Xfs => 300,
            FsKind::Ext4 => 8,
            FsKind::Tmpfs => 1,
        }
    }

    /// The tools needed to make, mount and inspect it.
    fn tools(self) -> &'static [&'static str] {
        match self {
            FsKind::Btrfs => &["mkfs.btrfs", "btrfs", "losetup", "mount", "umount"],
            FsKind::Xfs => &["mkfs.xfs", "xfs_io", "losetup", "mount", "umount"],
            FsKind::Ext4 => &["mkfs.ext4", "losetup", "mount", "umount"],
            FsKind::Tmpfs => &["mount", "umount"],
        }
    }
}

impl fmt::Display for FsKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A fresh filesystem of one [`FsKind`], mounted in its own temporary
/// directory; unmounted and removed on drop.
///
/// Layout: `<tmp>/fs.img` (sparse backing file) and `<tmp>/mnt` (mount point).
#[derive(Debug)]
pub struct TestFs {
    kind: FsKind,
    mount_point: PathBuf,
    device: Option<LoopDevice>,
    /// `None` once dropped or deliberately leaked.
    dir: Option<TempDir>,
}

impl TestFs {
    /// Make and mount a filesystem of `size_mib` MiB (raised to the smallest
    /// size its mkfs accepts). Returns `None` after printing why when the test
    /// must be skipped (panics instead under `CI=true`); panics when setting
    /// up fails for any other reason.
    pub fn new(kind: FsKind, size_mib: u64) -> Option<TestFs> {
        if !is_root() {
            return skip(format!("test filesystems ({kind}) need root"));
        }
        if let Err(why) = require_tools(kind.tools(), &format!("test filesystems ({kind})")) {
            return skip(why);
        }
        if kind != FsKind::Tmpfs && !Path::new("/dev/loop-control").exists() {
            return skip("/dev/loop-control is missing (no loop device support)");
        }
        let size_mib = size_mib.max(kind.min_size_mib());
        let dir = tempfile::Builder::new()
            .prefix(&format!("backy-test-{kind}-"))
            .tempdir()
            .expect("create temporary directory");
        let mount_point = dir.path().join("mnt");
        fs::create_dir(&mount_point).expect("create mount point");
        let mut test_fs = TestFs {
            kind,
            mount_point,
            device: None,
            dir: Some(dir),
        };
        let backing = test_fs.dir.as_ref().expect("dir").path().join("fs.img");

        if kind == FsKind::Tmpfs {
            let size = format!("size={size_mib}m");
            let mut mount = tool("mount");
            mount
                .args(["-t", "tmpfs", "-o", &size, "tmpfs"])
                .arg(&test_fs.mount_point);
            checked(&mut mount);
            return Some(test_fs);
        }

        File::create(&backing)
            .and_then(|f| f.set_len(size_mib << 20))
            .expect("create sparse backing file");
        let (mkfs, options): (&str, &[&str]) = match kind {
            FsKind::Btrfs => ("mkfs.btrfs", &["-q"]),
            FsKind::Xfs => ("mkfs.xfs", &["-q", "-m", "reflink=1"]),
            FsKind::Ext4 => ("mkfs.ext4", &["-q", "-F"]),
            FsKind::Tmpfs => unreachable!("tmpfs returned above"),
        };
        let mut mkfs = tool(mkfs);
        mkfs.args(options);
        checked(mkfs.arg(&backing));

        let device = LoopDevice::attach(&backing);
        let mut mount = tool("mount");
        mount
            .args(["-t", kind.name()])
            .arg(device.path())
            .arg(&test_fs.mount_point);
        test_fs.device = Some(device);
        let result = retry(3, || run(&mut mount));
        if !result.status.success() {
            if !kernel_knows(kind.name()) {
                // Drop detaches the device and removes the directory.
                return skip(format!("the kernel does not support {kind}"));
            }
            result.fail(&format!("cannot mount the {kind} test filesystem"));
        }
        Some(test_fs)
    }

    /// The mount point: an empty filesystem root at first.
    pub fn path(&self) -> &Path {
        &self.mount_point
    }

    /// `self.path().join(rel)`.
    pub fn join(&self, rel: impl AsRef<Path>) -> PathBuf {
        self.mount_point.join(rel)
    }

    /// Which filesystem this is.
    pub fn kind(&self) -> FsKind {
        self.kind
    }

    /// The loop device under the filesystem (`None` for tmpfs).
    pub fn device(&self) -> Option<&Path> {
        self.device.as_ref().map(LoopDevice::path)
    }

    /// Unmount, retrying while busy; lazily as the last resort. Returns
    /// whether the mount point is free (so the directory may be removed).
    fn unmount(&self) -> bool {
        if !is_mount_point(&self.mount_point) {
            return true;
        }
        for _ in 0..20 {
            let r = run(tool("umount").arg(&self.mount_point));
            if r.status.success() {
                return true;
            }
            thread::sleep(Duration::from_millis(100));
        }
        eprintln!(
            "warning: {} still busy, unmounting lazily",
            self.mount_point.display()
        );
        run(tool("umount").arg("-l").arg(&self.mount_point))
            .status
            .success()
    }
}

impl Drop for TestFs {
    fn drop(&mut self) {
        // Never panic here: we may already be unwinding from a failed test.
        let unmounted = self.unmount();
        drop(self.device.take());
        if let Some(dir) = self.dir.take() {
            if unmounted {
                if let Err(e) = dir.close() {
                    eprintln!("warning: cannot remove test filesystem directory: {e}");
                }
            } else {
                let kept = dir.keep();
                eprintln!("warning: cannot unmount; leaving {}", kept.display());
            }
        }
    }
}

/// A loop block device over a file; detached on drop.
#[derive(Debug)]
pub struct LoopDevice {
    path: PathBuf,
}

impl LoopDevice {
    /// Attach `backing` to a free loop device, retrying when parallel tests
    /// race for the same device or all devices are taken for a moment.
    fn attach(backing: &Path) -> LoopDevice {
        let mut losetup = tool("losetup");
        losetup.args(["--find", "--show"]).arg(backing);
        let r = retry(10, || run(&mut losetup));
        if !r.status.success() {
            r.fail("cannot attach a loop device");
        }
        LoopDevice {
            path: PathBuf::from(r.stdout.trim()),
        }
    }

    /// The device node, e.g. `/dev/loop3`.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        // A device still in use (lazy unmount) gets autoclear instead.
        let mut last = None;
        for _ in 0..10 {
            let r = run(tool("losetup").arg("-d").arg(&self.path));
            if r.status.success() {
                return;
            }
            last = Some(r.stderr);
            thread::sleep(Duration::from_millis(100));
        }
        eprintln!(
            "warning: cannot detach {}: {}",
            self.path.display(),
            last.unwrap_or_default()
        );
    }
}

/// A block device of `size_mib` MiB (a loop device over a sparse temporary
/// file), for tests of block-device sources and restore targets.
#[derive(Debug)]
pub struct TestBlockDevice {
    device: Option<LoopDevice>,
    _dir: TempDir,
}

impl TestBlockDevice {
    /// Attach a zero-filled device, or `None` to skip (panics under `CI=true`).
    pub fn new(size_mib: u64) -> Option<TestBlockDevice> {
        if !is_root() {
            return skip("a loop block device needs root");
        }
        if let Err(why) = require_tools(&["losetup"], "a loop block device") {
            return skip(why);
        }
        let dir = tempfile::Builder::new()
            .prefix("backy-test-blockdev-")
            .tempdir()
            .expect("create temporary directory");
        let backing = dir.path().join("dev.img");
        File::create(&backing)
            .and_then(|f| f.set_len(size_mib << 20))
            .expect("create sparse backing file");
        Some(TestBlockDevice {
            device: Some(LoopDevice::attach(&backing)),
            _dir: dir,
        })
    }

    /// The device node.
    pub fn path(&self) -> &Path {
        self.device.as_ref().expect("attached").path()
    }
}

impl Drop for TestBlockDevice {
    fn drop(&mut self) {
        // Detach before the temporary directory goes.
        drop(self.device.take());
    }
}

/// Run a setup command that must succeed.
#[track_caller]
fn checked(cmd: &mut Command) -> Run {
    run(cmd).success()
}

/// Run `attempt` until it succeeds, at most `times` times, sleeping a bit
/// longer after each failure; returns the last result.
fn retry(times: u32, mut attempt: impl FnMut() -> Run) -> Run {
    let mut n = 1;
    loop {
        let r = attempt();
        if r.status.success() || n >= times {
            return r;
        }
        thread::sleep(Duration::from_millis(50 * u64::from(n)));
        n += 1;
    }
}

fn kernel_knows(fs_name: &str) -> bool {
    fs::read_to_string("/proc/filesystems").is_ok_and(|s| {
        s.lines()
            .any(|l| l.split_whitespace().last() == Some(fs_name))
    })
}

fn is_mount_point(path: &Path) -> bool {
    let Ok(path) = path.canonicalize() else {
        return false;
    };
    let mounts = fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    mounts.lines().any(|l| {
        l.split_whitespace()
            .nth(1)
            .is_some_and(|m| unescape_mount_field(m) == path.as_os_str())
    })
}

/// `/proc/self/mounts` escapes space, tab, newline and backslash as octal.
fn unescape_mount_field(field: &str) -> std::ffi::OsString {
    use std::os::unix::ffi::OsStringExt;
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && bytes[i + 1..i + 4].iter().all(u8::is_ascii_digit)
        {
            let oct = std::str::from_utf8(&bytes[i + 1..i + 4]).expect("ascii");
            out.push(u8::from_str_radix(oct, 8).unwrap_or(b'?'));
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    std::ffi::OsString::from_vec(out)
}

// ---------------------------------------------------------------------------
// File content

/// `len` deterministic pseudo-random bytes for `seed` (splitmix64), so a test
/// can rebuild the same content without storing it.
pub fn pattern_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        out.extend_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Create (or truncate) `path` as a sparse file of `size` bytes, then write
/// each `(offset, bytes)`; everything not written is a hole. The file may grow
/// past `size` if a write ends beyond it.
pub fn write_file(path: &Path, size: u64, writes: &[(u64, &[u8])]) {
    let file = File::create(path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
    file.set_len(size)
        .unwrap_or_else(|e| panic!("truncate {}: {e}", path.display()));
    for (offset, data) in writes {
        file.write_all_at(data, *offset)
            .unwrap_or_else(|e| panic!("write {} at {offset}: {e}", path.display()));
    }
    file.sync_all()
        .unwrap_or_else(|e| panic!("fsync {}: {e}", path.display()));
}

/// Overwrite `data` at `offset` in an existing file (created if missing),
/// without truncating it, and fsync.
pub fn write_at(path: &Path, offset: u64, data: &[u8]) {
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    file.write_all_at(data, offset)
        .unwrap_or_else(|e| panic!("write {} at {offset}: {e}", path.display()));
    file.sync_all()
        .unwrap_or_else(|e| panic!("fsync {}: {e}", path.display()));
}

/// Lowercase hex SHA-256 of a file's content (via coreutils `sha256sum`).
pub fn sha256(path: &Path) -> String {
    let r = run_ok(Command::new("sha256sum").arg("-b").arg(path));
    r.stdout
        .split_whitespace()
        .next()
        .expect("sha256sum prints a digest")
        .to_owned()
}

/// Whether two files have the same size and bytes.
pub fn files_equal(a: &Path, b: &Path) -> bool {
    first_difference(a, b).is_none()
}

/// Panic unless two files have the same bytes, naming the first offset where
/// they differ and both sizes.
#[track_caller]
pub fn assert_same_content(a: &Path, b: &Path) {
    if let Some(offset) = first_difference(a, b) {
        let size = |p: &Path| fs::metadata(p).map(|m| m.len()).unwrap_or(0);
        panic!(
            "{} ({} bytes) and {} ({} bytes) differ at byte {offset}",
            a.display(),
            size(a),
            b.display(),
            size(b)
        );
    }
}

/// Offset of the first differing byte (or the shorter length), `None` if equal.
fn first_difference(a: &Path, b: &Path) -> Option<u64> {
    let open = |p: &Path| File::open(p).unwrap_or_else(|e| panic!("open {}: {e}", p.display()));
    let (mut fa, mut fb) = (open(a), open(b));
    let (mut ba, mut bb) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    let mut offset = 0u64;
    loop {
        let na = read_full(&mut fa, &mut ba);
        let nb = read_full(&mut fb, &mut bb);
        let n = na.min(nb);
        if let Some(i) = ba[..n].iter().zip(&bb[..n]).position(|(x, y)| x != y) {
            return Some(offset + i as u64);
        }
        if na != nb {
            return Some(offset + n as u64);
        }
        if na == 0 {
            return None;
        }
        offset += n as u64;
    }
}

/// Fill `buf` as far as the file allows; returns the bytes read.
fn read_full(file: &mut File, buf: &mut [u8]) -> usize {
    let mut n = 0;
    while n < buf.len() {
        match file.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => panic!("read: {e}"),
        }
    }
    n
}

// ---------------------------------------------------------------------------
// Storage accounting

/// Bytes allocated to a file (`st_blocks * 512`): what holes save.
pub fn allocated_bytes(path: &Path) -> u64 {
    let meta = fs::metadata(path).unwrap_or_else(|e| panic!("stat {}: {e}", path.display()));
    meta.blocks() * 512
}

/// Bytes of `path` (a file or a directory tree) stored in extents no other
/// file shares, on whatever filesystem `fs` is. On ext4 and tmpfs nothing is
/// shared, so this is the allocated size.
pub fn exclusive_bytes(fs: &TestFs, path: &Path) -> u64 {
    match fs.kind() {
        FsKind::Btrfs => btrfs_exclusive_bytes(path),
        FsKind::Xfs => xfs_exclusive_bytes(path),
        FsKind::Ext4 | FsKind::Tmpfs => walk_files(path).iter().map(|f| allocated_bytes(f)).sum(),
    }
}

/// The `Exclusive` column of `btrfs filesystem du --raw PATH` for PATH
/// itself (for a directory, btrfs sums its files).
pub fn btrfs_exclusive_bytes(path: &Path) -> u64 {
    sync_fs(path);
    let r = run_ok(tool("btrfs").args(["filesystem", "du", "--raw"]).arg(path));
    parse_btrfs_du_exclusive(&r.stdout)
        .unwrap_or_else(|| r.fail("cannot parse `btrfs filesystem du`"))
}

/// Sum over the files under `path` of their FIEMAP extents without
/// `FIEMAP_EXTENT_SHARED`, as listed by `xfs_io -c 'fiemap -v'`.
pub fn xfs_exclusive_bytes(path: &Path) -> u64 {
    sync_fs(path);
    walk_files(path)
        .iter()
        .map(|file| {
            let r = run_ok(tool("xfs_io").args(["-r", "-c", "fiemap -v"]).arg(file));
            parse_fiemap_exclusive(&r.stdout)
                .unwrap_or_else(|| r.fail("cannot parse `xfs_io -c 'fiemap -v'`"))
        })
        .sum()
}

/// Parse `btrfs filesystem du --raw` output: the last row is PATH itself.
pub fn parse_btrfs_du_exclusive(out: &str) -> Option<u64> {
    let mut lines = out.lines().filter(|l| !l.trim().is_empty());
    let header = lines.next()?;
    if !header.contains("Exclusive") {
        return None;
    }
    lines.next_back()?.split_whitespace().nth(1)?.parse().ok()
}

/// Parse `xfs_io -c 'fiemap -v'` output (512-byte units; flags in hex):
///
/// ```text
/// a:
///  EXT: FILE-OFFSET      BLOCK-RANGE      TOTAL FLAGS
///    0: [0..639]:        192..831           640 0x2000
///    1: [640..767]:      hole               128
/// ```
///
/// Returns `None` on any row it does not understand, so a format change
/// fails loudly instead of miscounting.
pub fn parse_fiemap_exclusive(out: &str) -> Option<u64> {
    let mut bytes = 0;
    for line in out.lines().skip(1) {
        let cols: Vec<&str> = line.split_whitespace().collect();
        match cols.as_slice() {
            [] => {}
            ["EXT:", ..] => {}
            [ext, _, "hole", _] if ext.ends_with(':') => {}
            [ext, _, _, total, flags] if ext.ends_with(':') => {
                let sectors: u64 = total.parse().ok()?;
                let flags = u64::from_str_radix(flags.strip_prefix("0x")?, 16).ok()?;
                if flags & FIEMAP_EXTENT_SHARED == 0 {
                    bytes += sectors * 512;
                }
            }
            _ => return None,
        }
    }
    Some(bytes)
}

/// Flush the filesystem holding `path`, so delayed allocation is resolved
/// before extents are counted.
fn sync_fs(path: &Path) {
    run_ok(Command::new("sync").arg("-f").arg(path));
}

/// Regular files at or under `path` (not following symlinks).
fn walk_files(path: &Path) -> Vec<PathBuf> {
    let meta =
        fs::symlink_metadata(path).unwrap_or_else(|e| panic!("stat {}: {e}", path.display()));
    if meta.is_file() {
        return vec![path.to_owned()];
    }
    if !meta.is_dir() {
        return Vec::new();
    }
    let mut files = Vec::new();
    for entry in fs::read_dir(path).unwrap_or_else(|e| panic!("list {}: {e}", path.display())) {
        files.extend(walk_files(&entry.expect("directory entry").path()));
    }
    files
}

/// Make `dst` a reflink clone of `src` with `cp --reflink=always`; false when
/// the filesystem refuses.
pub fn reflink_copy(src: &Path, dst: &Path) -> bool {
    run(Command::new("cp").arg("--reflink=always").arg(src).arg(dst))
        .status
        .success()
}

// ---------------------------------------------------------------------------
// The original Python backy 2.1.5

/// The launcher for the original backy 2.1.5 that `scripts/setup-test-deps.sh`
/// creates: `$BACKY21`, else `target/backy21/bin/backy21` in the repository.
/// `None` (after printing why) when it is missing; panics under `CI=true`.
pub fn python_backy() -> Option<PathBuf> {
    let launcher = env::var_os("BACKY21")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("target/backy21/bin/backy21")
        });
    if is_executable(&launcher) {
        Some(launcher)
    } else {
        skip(format!(
            "the Python backy 2.1.5 launcher {} is missing (run scripts/setup-test-deps.sh, or set BACKY21)",
            launcher.display()
        ))
    }
}

/// A `Command` for the Python backy at `launcher` (see [`python_backy`]).
pub fn python_backy_command(launcher: &Path) -> Command {
    let mut cmd = Command::new(launcher);
    for var in ["BACKY_CMD", "BACKY_CP", "BACKY_RBD"] {
        cmd.env_remove(var);
    }
    cmd
}

/// Write `contents` to `path` (for configs and small fixtures).
pub fn write_text(path: &Path, contents: &str) {
    let mut f = File::create(path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
    f.write_all(contents.as_bytes())
        .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}
