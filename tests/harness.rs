//! Self-test of the shared harness in `tests/util`: the filesystems mount,
//! reflinks and extent accounting behave as the other tests assume, teardown
//! leaves nothing behind even under parallel load, and the Python peer runs.

mod util;

use std::fs;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;

use util::{FsKind, TestFs};

const MIB: u64 = 1 << 20;
const KIB: u64 = 1 << 10;

/// The filesystem type `/proc/self/mounts` lists for `mount_point`, if any.
fn mounted_fs_type(mount_point: &Path) -> Option<String> {
    let mount_point = mount_point.canonicalize().ok()?;
    let mounts = fs::read_to_string("/proc/self/mounts").unwrap();
    mounts.lines().find_map(|l| {
        let cols: Vec<&str> = l.split_whitespace().collect();
        (Path::new(cols[1]) == mount_point).then(|| cols[2].to_owned())
    })
}

/// Whether any loop device is still attached to `backing`.
fn loop_attached_to(backing: &Path) -> bool {
    let Ok(entries) = fs::read_dir("/sys/block") else {
        return false;
    };
    entries.flatten().any(|e| {
        fs::read_to_string(e.path().join("loop/backing_file"))
            .is_ok_and(|f| f.trim_end().trim_end_matches(" (deleted)") == backing.to_str().unwrap())
    })
}

/// Mount, use and drop one filesystem, checking the mount is what was asked
/// for and that nothing is left afterwards.
fn mount_use_and_clean_up(kind: FsKind) {
    let fs = require_fs!(kind, 0);
    let mount_point = fs.path().to_owned();
    let root = mount_point.parent().unwrap().to_owned();
    assert_eq!(mounted_fs_type(&mount_point).as_deref(), Some(kind.name()));
    assert_eq!(fs.kind(), kind);
    assert_eq!(fs.device().is_some(), kind != FsKind::Tmpfs);
    assert!(fs::read_dir(fs.path()).unwrap().all(|e| {
        // mkfs.ext4 leaves lost+found; nothing else may be there.
        e.unwrap().file_name() == "lost+found"
    }));

    let file = fs.join("data");
    util::write_file(&file, 4 * MIB, &[(MIB, &util::pattern_bytes(1, 64 * 1024))]);
    assert_eq!(fs::metadata(&file).unwrap().len(), 4 * MIB);
    assert!(
        util::allocated_bytes(&file) < 4 * MIB,
        "holes stay holes on {kind}"
    );

    let backing = root.join("fs.img");
    drop(fs);
    assert_eq!(mounted_fs_type(&mount_point), None, "{kind} still mounted");
    assert!(!root.exists(), "{} left behind", root.display());
    assert!(
        !loop_attached_to(&backing),
        "loop device still attached to {}",
        backing.display()
    );
}

#[test]
fn btrfs_mounts_and_cleans_up() {
    mount_use_and_clean_up(FsKind::Btrfs);
}

#[test]
fn xfs_mounts_and_cleans_up() {
    mount_use_and_clean_up(FsKind::Xfs);
}

#[test]
fn ext4_mounts_and_cleans_up() {
    mount_use_and_clean_up(FsKind::Ext4);
}

#[test]
fn tmpfs_mounts_and_cleans_up() {
    mount_use_and_clean_up(FsKind::Tmpfs);
}

#[test]
fn teardown_survives_a_busy_mount() {
    let fs = require_fs!(FsKind::Ext4, 16);
    let mount_point = fs.path().to_owned();
    let file = fs.join("open");
    util::write_file(&file, 4096, &[]);
    // A process holding a file open keeps the mount busy for a moment.
    let mut holder = Command::new("sh")
        .arg("-c")
        .arg("exec 3<\"$1\"; sleep 0.5")
        .arg("sh")
        .arg(&file)
        .spawn()
        .unwrap();
    thread::sleep(std::time::Duration::from_millis(100));
    drop(fs);
    holder.wait().unwrap();
    assert_eq!(mounted_fs_type(&mount_point), None);
}

#[test]
fn reflink_works_on_btrfs_and_xfs_only() {
    for kind in [FsKind::Btrfs, FsKind::Xfs, FsKind::Ext4] {
        let fs = require_fs!(kind, 0);
        let src = fs.join("src");
        util::write_file(&src, MIB, &[(0, &util::pattern_bytes(2, MIB as usize))]);
        let cloned = util::reflink_copy(&src, &fs.join("clone"));
        assert_eq!(
            cloned,
            kind.supports_reflink(),
            "cp --reflink=always on {kind}"
        );
        if cloned {
            util::assert_same_content(&src, &fs.join("clone"));
        }
    }
}

/// A fresh 8 MiB file is all exclusive; its reflink clone is all shared
/// until 64 KiB of it are overwritten, and then exactly those are exclusive.
fn exclusive_bytes_follow_sharing(kind: FsKind) {
    let fs = require_fs!(kind, 0);
    let original = fs.join("original");
    let clone = fs.join("clone");
    util::write_file(
        &original,
        8 * MIB,
        &[(0, &util::pattern_bytes(3, 8 * MIB as usize))],
    );
    let fresh = util::exclusive_bytes(&fs, &original);
    assert!(
        fresh.abs_diff(8 * MIB) <= 64 * KIB,
        "fresh 8 MiB file on {kind}: {fresh} exclusive"
    );

    assert!(util::reflink_copy(&original, &clone));
    assert_eq!(
        util::exclusive_bytes(&fs, &clone),
        0,
        "fresh clone on {kind}"
    );

    util::write_at(&clone, 3 * MIB, &util::pattern_bytes(4, 64 * KIB as usize));
    let changed = util::exclusive_bytes(&fs, &clone);
    assert!(
        (64 * KIB..=128 * KIB).contains(&changed),
        "clone with 64 KiB overwritten on {kind}: {changed} exclusive"
    );
}

#[test]
fn btrfs_exclusive_bytes_follow_sharing() {
    exclusive_bytes_follow_sharing(FsKind::Btrfs);
}

#[test]
fn xfs_exclusive_bytes_follow_sharing() {
    exclusive_bytes_follow_sharing(FsKind::Xfs);
}

#[test]
fn exclusive_bytes_without_reflink_is_allocation() {
    let fs = require_fs!(FsKind::Tmpfs, 64);
    let file = fs.join("f");
    util::write_file(
        &file,
        8 * MIB,
        &[(MIB, &util::pattern_bytes(5, MIB as usize))],
    );
    assert_eq!(util::exclusive_bytes(&fs, &file), MIB);
    assert_eq!(util::exclusive_bytes(&fs, fs.path()), MIB);
}

/// Many filesystems set up and torn down at once, from threads of one
/// process, must not trip over each other's loop devices or directories.
#[test]
fn parallel_filesystems_do_not_collide() {
    let kinds = [FsKind::Btrfs, FsKind::Xfs, FsKind::Ext4, FsKind::Tmpfs];
    let workers: Vec<_> = (0..12)
        .map(|i| {
            let kind = kinds[i % kinds.len()];
            thread::spawn(move || {
                let fs = TestFs::new(kind, 0)?;
                let data = util::pattern_bytes(i as u64, 256 * 1024);
                let file = fs.join("f");
                util::write_file(&file, data.len() as u64, &[(0, &data)]);
                assert_eq!(fs::read(&file).unwrap(), data, "{kind} #{i}");
                let mount_point: PathBuf = fs.path().to_owned();
                let device = fs.device().map(Path::to_owned);
                drop(fs);
                Some((mount_point, device))
            })
        })
        .collect();
    let mut devices = Vec::new();
    for w in workers {
        if let Some((mount_point, device)) = w.join().unwrap() {
            assert_eq!(mounted_fs_type(&mount_point), None);
            devices.extend(device);
        }
    }
    // Nine of the twelve are loop-backed (tmpfs is not), or none when skipped.
    assert!(devices.is_empty() || devices.len() == 9, "{devices:?}");
}

#[test]
fn block_device_is_a_block_device() {
    let Some(dev) = util::TestBlockDevice::new(16) else {
        return;
    };
    let meta = fs::metadata(dev.path()).unwrap();
    assert!(meta.file_type().is_block_device());
    let r = util::run_ok(Command::new("blockdev").arg("--getsize64").arg(dev.path()));
    assert_eq!(r.stdout.trim(), (16 * MIB).to_string());
}

#[test]
fn pattern_bytes_are_deterministic() {
    assert_eq!(util::pattern_bytes(7, 1000), util::pattern_bytes(7, 1000));
    assert_ne!(util::pattern_bytes(7, 1000), util::pattern_bytes(8, 1000));
    assert_eq!(
        util::pattern_bytes(7, 13),
        util::pattern_bytes(7, 1000)[..13]
    );
}

#[test]
fn content_comparison_finds_first_difference() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    util::write_file(&a, 3 * MIB, &[(5, b"x")]);
    util::write_file(&b, 3 * MIB, &[(5, b"x")]);
    assert!(util::files_equal(&a, &b));
    assert_eq!(util::sha256(&a), util::sha256(&b));
    util::write_at(&b, 2 * MIB + 17, b"y");
    assert!(!util::files_equal(&a, &b));
    assert_ne!(util::sha256(&a), util::sha256(&b));
    let panic = std::panic::catch_unwind(|| util::assert_same_content(&a, &b)).unwrap_err();
    let message = panic.downcast_ref::<String>().unwrap();
    assert!(
        message.contains(&format!("differ at byte {}", 2 * MIB + 17)),
        "{message}"
    );
    assert_eq!(
        util::sha256(&dir.path().join("a")).len(),
        64,
        "sha256 is lowercase hex of 32 bytes"
    );
}

#[test]
fn run_shows_both_streams_when_an_expectation_fails() {
    let r = util::run(Command::new("sh").args(["-c", "echo out; echo err >&2; exit 3"]));
    assert_eq!(r.code, Some(3));
    assert_eq!((r.stdout.as_str(), r.stderr.as_str()), ("out\n", "err\n"));
    let panic = std::panic::catch_unwind(|| r.success()).unwrap_err();
    let message = panic.downcast_ref::<String>().unwrap();
    for part in [
        "command failed but expected success",
        "exit status: 3",
        "out",
        "err",
    ] {
        assert!(message.contains(part), "{part:?} missing from: {message}");
    }
    util::run(&mut Command::new("false")).failure().code(1);
}

#[test]
fn run_kills_a_command_that_hangs() {
    let panic = std::panic::catch_unwind(|| {
        util::run_timeout(
            Command::new("sh").args(["-c", "echo started; sleep 30"]),
            std::time::Duration::from_millis(300),
        )
    })
    .unwrap_err();
    let message = panic.downcast_ref::<String>().unwrap();
    assert!(
        message.contains("was killed") && message.contains("started"),
        "{message}"
    );
}

#[test]
fn backy_binary_is_built() {
    let path = util::backy().get_program().to_owned();
    assert!(Path::new(&path).is_file(), "{path:?}");
}

#[test]
fn parses_btrfs_du() {
    let out = "     Total   Exclusive  Set shared  Filename\n\
               \x20  4390912       65536     4325376  job/6hbsLczXmD8LZycs8B8DAX\n\
               \x20        0           0           0  job/config\n\
               \x20  8781824      131072     4325376  job\n";
    assert_eq!(util::parse_btrfs_du_exclusive(out), Some(131072));
    assert_eq!(util::parse_btrfs_du_exclusive("garbage\n"), None);
}

#[test]
fn parses_xfs_fiemap() {
    let out = "b:\n \
               EXT: FILE-OFFSET      BLOCK-RANGE      TOTAL FLAGS\n   \
               0: [0..639]:        192..831           640 0x2000\n   \
               1: [640..767]:      16704..16831       128   0x0\n   \
               2: [768..1023]:     hole               256\n   \
               3: [1024..16383]:   960..16575       15360 0x2001\n";
    assert_eq!(util::parse_fiemap_exclusive(out), Some(128 * 512));
    assert_eq!(util::parse_fiemap_exclusive("f:\n"), Some(0), "empty file");
    assert_eq!(
        util::parse_fiemap_exclusive("f:\n   0: [0..7]: delalloc 8\n"),
        None
    );
}

#[test]
fn python_backy_shows_help() {
    let backy21 = require_python_backy!();
    util::run_ok(util::python_backy_command(&backy21).arg("--help"))
        .stdout_has("init")
        .stdout_has("restore");
}

/// The peer works for what interoperability tests need: init, backup,
/// status, find and restore on a reflink filesystem.
#[test]
fn python_backy_backs_up_and_restores_on_btrfs() {
    let backy21 = require_python_backy!();
    let fs = require_fs!(FsKind::Btrfs, 0);
    let job = fs.join("job");
    let source = fs.join("source.img");
    let first = fs.join("first.img");
    util::write_file(
        &source,
        8 * MIB,
        &[(0, &util::pattern_bytes(6, MIB as usize))],
    );
    fs::copy(&source, &first).unwrap();
    let peer = |args: &[&str]| {
        let mut cmd = util::python_backy_command(&backy21);
        cmd.arg("-b").arg(&job).args(args);
        util::run_ok(&mut cmd)
    };
    peer(&["init", "file", source.to_str().unwrap()]);
    peer(&["backup", "daily"]).stdout_has("verification OK");
    util::write_at(&source, 4 * MIB, &util::pattern_bytes(7, 4096));
    peer(&["backup", "daily,weekly"]);
    peer(&["status"]).stdout_has("2 revisions containing 16.00 MiB data");

    let newest = PathBuf::from(peer(&["find"]).stdout.trim());
    let older = PathBuf::from(peer(&["find", "-r", "1"]).stdout.trim());
    assert_eq!(newest.parent(), Some(job.as_path()));
    assert_eq!(
        fs::read_link(job.join("last")).unwrap(),
        newest.file_name().unwrap()
    );
    assert!(
        util::exclusive_bytes(&fs, &newest) <= 128 * KIB,
        "the peer reflinks"
    );

    let restored = fs.join("restored.img");
    peer(&["restore", "-r", "1", restored.to_str().unwrap()]);
    util::assert_same_content(&restored, &first);
    util::assert_same_content(&older, &first);
    let restored = fs.join("restored0.img");
    peer(&["restore", "-r", "0", restored.to_str().unwrap()]);
    util::assert_same_content(&restored, &source);
}
