//! A real, throw-away Ceph cluster per test: [`TestCeph`].
//!
//! `scripts/ceph-cluster.sh` starts one mon and one memstore OSD on
//! 127.0.0.1, everything in a temporary directory of their own, so tests
//! (and test processes) run clusters side by side. Authentication is off:
//! clients need only `CEPH_CONF`. The pool [`POOL`] exists and is
//! initialised for RBD.
//!
//! ```ignore
//! let ceph = require_ceph!();
//! ceph.create_image("vm", 16);
//! ceph.write("vm", 4096, b"hello");
//! ceph.snap_create("vm", "s1");
//! ceph.export("vm@s1", &dir.join("s1.raw"));
//! util::run_ok(ceph.rbd().args(["info", &ceph.spec("vm")]));
//! ```
//!
//! Exact bytes are written with librbd through its Python binding
//! (`python3-rbd`, run as `/usr/bin/python3 -I` so that a pyenv or venv
//! `python3` on `PATH` cannot hide it): the `rbd` CLI can only import whole
//! files or diffs, and this machine has neither krbd (`rbd device map`) nor a
//! QEMU with the rbd driver.
//!
//! Startup takes about 1.5 s. Drop stops the daemons (SIGKILL: the data is
//! thrown away) and removes the directory; if the test process dies without
//! dropping, the script's watchdog does both within a second.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use tempfile::TempDir;

use super::command::{is_root, run, run_ok, skip, tool};

/// The RBD pool every test cluster has.
pub const POOL: &str = "rbd";

/// The interpreter that has the Debian `python3-rbd` module.
const PYTHON: &str = "/usr/bin/python3";

/// Exit status of `ceph-cluster.sh` when Ceph is not installed and cannot be.
const EXIT_UNAVAILABLE: i32 = 3;

/// librbd I/O for [`TestCeph::write_ops`] and [`TestCeph::read`].
///
/// `io CONF POOL IMAGE write OPS_FILE`: apply the records in OPS_FILE in
/// order, each `tag: u8, offset: u64 LE, length: u64 LE`, then for `w` the
/// `length` bytes to write; `z` is `write_zeroes`, `d` is `discard`.
/// `io CONF POOL IMAGE read SNAP OFFSET LENGTH`: the bytes to stdout (SNAP
/// `-` for the image head).
const PY_IO: &str = r#"
import struct, sys
import rados, rbd

conf, pool, image, mode = sys.argv[1:5]
with rados.Rados(conffile=conf) as cluster, cluster.open_ioctx(pool) as ioctx:
    if mode == "write":
        with rbd.Image(ioctx, image) as img, open(sys.argv[5], "rb") as ops:
            while head := ops.read(17):
                tag, offset, length = struct.unpack("<cQQ", head)
                if tag == b"w":
                    data = ops.read(length)
                    assert len(data) == length, "short ops file"
                    assert img.write(data, offset) == length, "short write"
                elif tag == b"z":
                    img.write_zeroes(offset, length)
                elif tag == b"d":
                    img.discard(offset, length)
                else:
                    sys.exit(f"unknown op {tag!r}")
            img.flush()
    elif mode == "read":
        snap, offset, length = sys.argv[5], int(sys.argv[6]), int(sys.argv[7])
        with rbd.Image(ioctx, image, snapshot=None if snap == "-" else snap, read_only=True) as img:
            end = offset + length
            while offset < end:
                n = min(end - offset, 4 << 20)
                data = img.read(offset, n)
                assert len(data) == n, "short read"
                sys.stdout.buffer.write(data)
                offset += n
    else:
        sys.exit(f"unknown mode {mode}")
"#;

/// One change to an image, for [`TestCeph::write_ops`].
#[derive(Clone, Copy, Debug)]
pub enum RbdOp<'a> {
    /// Write these bytes at this offset.
    Write(u64, &'a [u8]),
    /// `write_zeroes(offset, length)`: reads back as zeroes; a whole object
    /// becomes a `z` record in `rbd export-diff`.
    Zero(u64, u64),
    /// `discard(offset, length)`. librbd trims discards to its 64 KiB
    /// granularity, so a smaller one may do nothing at all.
    Discard(u64, u64),
}

/// A running single-node Ceph cluster in its own temporary directory.
#[derive(Debug)]
pub struct TestCeph {
    conf: PathBuf,
    /// `None` once dropped.
    dir: Option<TempDir>,
}

/// Start a [`TestCeph`] or return from the calling test when it must be
/// skipped: `let ceph = require_ceph!();`.
#[macro_export]
macro_rules! require_ceph {
    () => {
        match $crate::util::ceph::TestCeph::start() {
            Some(ceph) => ceph,
            None => return,
        }
    };
}

/// `scripts/ceph-cluster.sh` in this source tree.
fn cluster_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/ceph-cluster.sh")
}

impl TestCeph {
    /// Start a cluster (installing Ceph first when it is missing and we are
    /// root, unless `CEPH_NO_INSTALL=1`). Returns `None` after printing why
    /// when the test must be skipped (not root, Ceph unavailable); panics
    /// instead under `CI=true`, and always when starting fails otherwise.
    pub fn start() -> Option<TestCeph> {
        if !is_root() {
            return skip("a test Ceph cluster needs root");
        }
        let script = cluster_script();
        if !script.is_file() {
            return skip(format!("{} is missing", script.display()));
        }
        let dir = tempfile::Builder::new()
            .prefix("backy-test-ceph-")
            .tempdir()
            .expect("create temporary directory");
        let started = Instant::now();
        // The watchdog stops the cluster when this process exits undropped.
        let r = run(Command::new(&script)
            .arg("start")
            .arg(dir.path())
            .arg(std::process::id().to_string()));
        if r.code == Some(EXIT_UNAVAILABLE) {
            return skip(format!("no Ceph here: {}", r.stderr.trim()));
        }
        let r = r.success();
        let conf = PathBuf::from(r.stdout.trim());
        assert_eq!(conf, dir.path().join("ceph.conf"), "{r:?}");
        eprintln!(
            "test Ceph cluster up in {:.1} s ({})",
            started.elapsed().as_secs_f64(),
            dir.path().display()
        );
        Some(TestCeph {
            conf,
            dir: Some(dir),
        })
    }

    /// `DIR/ceph.conf`, what `CEPH_CONF` names.
    pub fn conf(&self) -> &Path {
        &self.conf
    }

    /// The cluster's directory (config, mon store, logs in `log/`).
    pub fn dir(&self) -> &Path {
        self.dir.as_ref().expect("cluster not dropped").path()
    }

    /// Point `cmd` at this cluster: set `CEPH_CONF`, and remove `CEPH_ARGS`
    /// and `CEPH_CLUSTER`, which could point it elsewhere.
    pub fn env<'c>(&self, cmd: &'c mut Command) -> &'c mut Command {
        cmd.env("CEPH_CONF", &self.conf)
            .env_remove("CEPH_ARGS")
            .env_remove("CEPH_CLUSTER")
    }

    /// An `rbd` command for this cluster; add the arguments.
    ///
    /// `--no-progress` is not a global option: only the commands that show
    /// progress accept it (`create`, `resize`, `rm`, `snap create`, `snap rm`,
    /// `export`, `export-diff`, `import`, `import-diff`, ...), and the others
    /// (`ls`, `info`, `snap ls`, `snap protect`, `diff`) fail with
    /// "unrecognised option". Add it where it applies, as the helpers here do.
    pub fn rbd(&self) -> Command {
        let mut cmd = tool("rbd");
        self.env(&mut cmd);
        cmd
    }

    /// [`rbd`](Self::rbd) with `args`, then `--no-progress`, for a command
    /// that takes it.
    fn rbd_quiet(&self, args: &[&str]) -> Command {
        let mut cmd = self.rbd();
        cmd.args(args).arg("--no-progress");
        cmd
    }

    /// `POOL/name` (`name` may carry `@snap`).
    pub fn spec(&self, name: &str) -> String {
        format!("{POOL}/{name}")
    }

    /// Create a format 2 image of `size_mib` MiB (all zeroes, nothing
    /// allocated) with the default features (object-map, fast-diff).
    pub fn create_image(&self, name: &str, size_mib: u64) {
        self.create_image_bytes(name, size_mib << 20);
    }

    /// [`create_image`](Self::create_image) with a size in bytes, which
    /// need not be a multiple of anything.
    pub fn create_image_bytes(&self, name: &str, size: u64) {
        let size = format!("{size}B");
        let spec = self.spec(name);
        run_ok(&mut self.rbd_quiet(&["create", "--image-format", "2", "--size", &size, &spec]));
    }

    /// Grow or shrink image `name` to `size` bytes.
    pub fn resize(&self, name: &str, size: u64) {
        let size = format!("{size}B");
        let spec = self.spec(name);
        run_ok(&mut self.rbd_quiet(&["resize", "--allow-shrink", "--size", &size, &spec]));
    }

    /// Write `bytes` at `offset` into the head of image `name`.
    pub fn write(&self, name: &str, offset: u64, bytes: &[u8]) {
        self.write_ops(name, &[RbdOp::Write(offset, bytes)]);
    }

    /// `write_zeroes` over `len` bytes at `offset`.
    pub fn write_zeroes(&self, name: &str, offset: u64, len: u64) {
        self.write_ops(name, &[RbdOp::Zero(offset, len)]);
    }

    /// Apply `ops` in order to the head of image `name`, in one librbd
    /// session (one process start instead of one per op), then flush.
    pub fn write_ops(&self, name: &str, ops: &[RbdOp<'_>]) {
        let mut file = tempfile::NamedTempFile::new_in(self.dir()).expect("create ops file");
        let mut buf = Vec::new();
        for op in ops {
            let (tag, offset, len, data): (u8, u64, u64, &[u8]) = match *op {
                RbdOp::Write(offset, data) => (b'w', offset, data.len() as u64, data),
                RbdOp::Zero(offset, len) => (b'z', offset, len, &[]),
                RbdOp::Discard(offset, len) => (b'd', offset, len, &[]),
            };
            buf.push(tag);
            buf.extend_from_slice(&offset.to_le_bytes());
            buf.extend_from_slice(&len.to_le_bytes());
            buf.extend_from_slice(data);
        }
        file.write_all(&buf).expect("write ops file");
        file.flush().expect("flush ops file");
        let mut cmd = self.python_io(name, "write");
        run_ok(cmd.arg(file.path()));
    }

    /// `len` bytes at `offset` of `name` or `name@snap`, read with librbd.
    pub fn read(&self, spec: &str, offset: u64, len: u64) -> Vec<u8> {
        let (name, snap) = spec.split_once('@').unwrap_or((spec, "-"));
        let mut cmd = self.python_io(name, "read");
        cmd.args([snap, &offset.to_string(), &len.to_string()]);
        run_ok(&mut cmd).stdout_bytes
    }

    fn python_io(&self, image: &str, mode: &str) -> Command {
        let mut cmd = Command::new(PYTHON);
        self.env(&mut cmd)
            .args(["-I", "-c", PY_IO])
            .arg(&self.conf)
            .args([POOL, image, mode]);
        cmd
    }

    /// `rbd snap create name@snap`.
    pub fn snap_create(&self, name: &str, snap: &str) {
        let spec = self.spec(&format!("{name}@{snap}"));
        run_ok(&mut self.rbd_quiet(&["snap", "create", &spec]));
    }

    /// The snapshot names of image `name`, oldest first.
    pub fn snap_ls(&self, name: &str) -> Vec<String> {
        let spec = self.spec(name);
        let r = run_ok(self.rbd().args(["snap", "ls", "--format", "json", &spec]));
        let snaps: Vec<serde_json::Value> = serde_json::from_str(&r.stdout)
            .unwrap_or_else(|e| r.fail(&format!("bad JSON from rbd snap ls: {e}")));
        snaps
            .iter()
            .map(|s| s["name"].as_str().expect("snapshot name").to_owned())
            .collect()
    }

    /// `rbd snap rm name@snap` (fails for a protected snapshot).
    pub fn snap_rm(&self, name: &str, snap: &str) {
        let spec = self.spec(&format!("{name}@{snap}"));
        run_ok(&mut self.rbd_quiet(&["snap", "rm", &spec]));
    }

    /// `rbd snap protect name@snap`: `snap rm` then fails.
    pub fn snap_protect(&self, name: &str, snap: &str) {
        let spec = self.spec(&format!("{name}@{snap}"));
        run_ok(self.rbd().args(["snap", "protect", &spec]));
    }

    /// `rbd snap unprotect name@snap`.
    pub fn snap_unprotect(&self, name: &str, snap: &str) {
        let spec = self.spec(&format!("{name}@{snap}"));
        run_ok(self.rbd().args(["snap", "unprotect", &spec]));
    }

    /// `rbd export` of `name` or `name@snap` into the file `path` (raw,
    /// sparse where the image reads as zeroes).
    pub fn export(&self, spec: &str, path: &Path) {
        let spec = self.spec(spec);
        run_ok(self.rbd_quiet(&["export", &spec]).arg(path));
    }

    /// `rbd export-diff [--from-snap FROM] POOL/spec path`: a v1 diff stream.
    pub fn export_diff(&self, spec: &str, from_snap: Option<&str>, path: &Path) {
        let spec = self.spec(spec);
        let mut cmd = match from_snap {
            Some(from) => self.rbd_quiet(&["export-diff", "--from-snap", from, &spec]),
            None => self.rbd_quiet(&["export-diff", &spec]),
        };
        run_ok(cmd.arg(path));
    }

    /// The last `lines` lines of the mon and OSD logs, for failure messages.
    pub fn log_tail(&self, lines: usize) -> String {
        let mut out = String::new();
        for name in ["mon.a.log", "osd.0.log"] {
            let text = fs::read_to_string(self.dir().join("log").join(name)).unwrap_or_default();
            let all: Vec<&str> = text.lines().collect();
            out.push_str(&format!("--- {name}\n"));
            for line in &all[all.len().saturating_sub(lines)..] {
                out.push_str(line);
                out.push('\n');
            }
        }
        out
    }

    /// Stop the daemons and remove the directory (what drop does).
    fn stop(&mut self) {
        let Some(dir) = self.dir.take() else {
            return;
        };
        let r = run(Command::new(cluster_script()).arg("stop").arg(dir.path()));
        if !r.status.success() {
            // Never panic here: we may be unwinding. With ceph.conf gone the
            // watchdog kills the daemons anyway.
            eprintln!("warning: stopping the test Ceph cluster failed: {r:?}");
        }
        if let Err(e) = dir.close() {
            eprintln!("warning: cannot remove the test Ceph directory: {e}");
        }
    }
}

impl Drop for TestCeph {
    fn drop(&mut self) {
        self.stop();
    }
}
