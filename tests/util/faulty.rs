//! Devices that really fail reads: an `nbdkit` server (its `sh` plugin over a
//! backing file) mounted as a file through `nbdfuse` ([`FaultyDevice`]), and a
//! filesystem on a loop device over that file ([`FaultyFs`]). Reads that touch
//! a byte range given with [`FaultyDevice::fail_range`] get `EIO` from the NBD
//! server; everything else reads and writes the backing file.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::command::{is_root, require_tools, run, run_ok, skip, tool};
use super::testfs::{FsKind, LoopDevice};

/// The `sh` plugin: one shell per request; `pread` fails with `EIO` when the
/// request overlaps a `START END` line of the `bad` file.
const SCRIPT: &str = r#"#!/bin/bash
f=@BACKING@
bad=@BAD@
case "$1" in
  get_size) stat -c %s "$f" ;;
  can_write|can_flush|can_trim) exit 0 ;;
  flush|trim) exit 0 ;;
  pread)
    count=$3 off=$4
    if [ -s "$bad" ]; then
      while read -r s e; do
        if [ "$off" -lt "$e" ] && [ $((off + count)) -gt "$s" ]; then
          echo "EIO injected read error at $off+$count" >&2
          exit 1
        fi
      done < "$bad"
    fi
    exec dd if="$f" iflag=skip_bytes,count_bytes skip="$off" count="$count" status=none ;;
  pwrite) exec dd of="$f" oflag=seek_bytes conv=notrunc seek="$4" status=none ;;
  *) exit 2 ;;
esac
"#;

/// A file (`path()`) backed by an NBD server that fails reads in chosen ranges.
pub struct FaultyDevice {
    nbdfuse: Option<Child>,
    mount_dir: PathBuf,
    bad: PathBuf,
    backing: PathBuf,
    dir: TempDir,
}

impl FaultyDevice {
    /// A device of `size` bytes holding `contents` at the start (the rest
    /// zeros), or `None` to skip (panics under `CI=true`).
    pub fn new(size: u64, contents: &[u8]) -> Option<FaultyDevice> {
        if !is_root() {
            return skip("a failing NBD device through nbdfuse needs root (FUSE)");
        }
        if let Err(why) = require_tools(
            &["nbdkit", "nbdfuse", "fusermount3", "dd"],
            "a failing NBD device (scripts/setup-test-deps.sh installs them)",
        ) {
            return skip(why);
        }
        if !Path::new("/dev/fuse").exists() {
            return skip("/dev/fuse is missing (no FUSE)");
        }
        let dir = tempfile::Builder::new()
            .prefix("backy-test-faulty-")
            .tempdir()
            .expect("create temporary directory");
        let backing = dir.path().join("backing");
        let bad = dir.path().join("bad");
        let script = dir.path().join("dev.sh");
        let mount_dir = dir.path().join("mnt");
        fs::create_dir(&mount_dir).unwrap();
        let f = File::create(&backing).unwrap();
        f.set_len(size).unwrap();
        std::os::unix::fs::FileExt::write_all_at(&f, contents, 0).unwrap();
        fs::write(&bad, "").unwrap();
        let text = SCRIPT
            .replace("@BACKING@", &backing.display().to_string())
            .replace("@BAD@", &bad.display().to_string());
        fs::write(&script, text).unwrap();
        run_ok(Command::new("chmod").arg("+x").arg(&script));
        let pidfile = dir.path().join("nbdfuse.pid");
        // nbdfuse runs nbdkit as its child on a private socket and ends it
        // when unmounted.
        let child = tool("nbdfuse")
            .arg("-P")
            .arg(&pidfile)
            .arg(mount_dir.join("dev"))
            .args(["[", "nbdkit", "sh"])
            .arg(&script)
            .arg("]")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nbdfuse");
        let mut device = FaultyDevice {
            nbdfuse: Some(child),
            mount_dir,
            bad,
            backing,
            dir,
        };
        let start = Instant::now();
        while !pidfile.exists() || !device.path().exists() {
            if let Some(status) = device.nbdfuse.as_mut().unwrap().try_wait().unwrap() {
                panic!("nbdfuse ended with {status} before serving");
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "nbdfuse did not start"
            );
            thread::sleep(Duration::from_millis(20));
        }
        Some(device)
    }

    /// The device as a file.
    pub fn path(&self) -> PathBuf {
        self.mount_dir.join("dev")
    }

    /// The file behind the NBD server (reads of it never fail).
    pub fn backing(&self) -> &Path {
        &self.backing
    }

    /// A scratch directory beside the device, removed with it.
    pub fn scratch(&self) -> &Path {
        self.dir.path()
    }

    /// From now on, reads touching bytes `start..end` of the device fail.
    pub fn fail_range(&self, start: u64, end: u64) {
        let mut text = fs::read_to_string(&self.bad).unwrap();
        text.push_str(&format!("{start} {end}\n"));
        fs::write(&self.bad, text).unwrap();
    }

    /// Every read works again.
    pub fn heal(&self) {
        fs::write(&self.bad, "").unwrap();
    }
}

impl Drop for FaultyDevice {
    fn drop(&mut self) {
        let _ = run(tool("fusermount3").arg("-u").arg(&self.mount_dir));
        if let Some(mut child) = self.nbdfuse.take() {
            let start = Instant::now();
            while child.try_wait().ok().flatten().is_none() {
                if start.elapsed() > Duration::from_secs(10) {
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
                thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

/// A filesystem on a loop device over a [`FaultyDevice`]; unmounted on drop.
pub struct FaultyFs {
    kind: FsKind,
    mount_point: PathBuf,
    loop_device: Option<LoopDevice>,
    /// The failing device (dropped last).
    pub device: FaultyDevice,
}

impl FaultyFs {
    /// A fresh `kind` filesystem of `size_mib` MiB, or `None` to skip.
    pub fn new(kind: FsKind, size_mib: u64) -> Option<FaultyFs> {
        let mkfs = match kind {
            FsKind::Btrfs => "mkfs.btrfs",
            FsKind::Xfs => "mkfs.xfs",
            other => panic!("FaultyFs supports btrfs and XFS, not {other}"),
        };
        if let Err(why) = require_tools(
            &[mkfs, "losetup", "mount", "umount"],
            "a failing filesystem",
        ) {
            return skip(why);
        }
        let device = FaultyDevice::new(size_mib << 20, &[])?;
        let options: &[&str] = match kind {
            FsKind::Btrfs => &["-q"],
            _ => &["-q", "-m", "reflink=1"],
        };
        run_ok(tool(mkfs).args(options).arg(device.backing()));
        let loop_device = LoopDevice::attach_direct(&device.path());
        let mount_point = device.scratch().join("fs");
        fs::create_dir(&mount_point).unwrap();
        let fs = FaultyFs {
            kind,
            mount_point,
            loop_device: Some(loop_device),
            device,
        };
        fs.mount();
        Some(fs)
    }

    fn mount(&self) {
        let dev = self.loop_device.as_ref().unwrap().path();
        run_ok(
            tool("mount")
                .args(["-t", self.kind.name()])
                .arg(dev)
                .arg(&self.mount_point),
        );
    }

    /// The mount point.
    pub fn path(&self) -> &Path {
        &self.mount_point
    }

    /// `self.path().join(rel)`.
    pub fn join(&self, rel: impl AsRef<Path>) -> PathBuf {
        self.mount_point.join(rel)
    }

    /// Unmounts and mounts again, so nothing is read from the page cache.
    pub fn remount(&self) {
        run_ok(tool("umount").arg(&self.mount_point));
        self.mount();
    }

    /// The device offset holding byte `offset` of `file`.
    pub fn device_offset(&self, file: &Path, offset: u64) -> u64 {
        let dev = self.loop_device.as_ref().unwrap().path();
        super::device_offset_on(self.kind, dev, file, offset)
    }
}

impl Drop for FaultyFs {
    fn drop(&mut self) {
        for _ in 0..20 {
            if run(tool("umount").arg(&self.mount_point)).status.success() {
                break;
            }
            thread::sleep(Duration::from_millis(100));
        }
        drop(self.loop_device.take());
    }
}
