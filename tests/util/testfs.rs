//! Test filesystems: loop-mounted btrfs, XFS and ext4 and tmpfs ([`TestFs`],
//! [`require_fs!`]) and loop block devices ([`TestBlockDevice`]).

use std::fmt;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::Duration;

use tempfile::TempDir;

use super::command::{Run, is_root, require_tools, run, skip, tool};

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

    /// Attach `backing` with direct I/O (`--direct-io=on`), so the device's
    /// reads reach the file's own read path instead of its page cache.
    pub fn attach_direct(backing: &Path) -> LoopDevice {
        let mut losetup = tool("losetup");
        losetup
            .args(["--find", "--show", "--direct-io=on"])
            .arg(backing);
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
