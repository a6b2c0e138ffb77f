//! The ceph-rbd source against a real throw-away Ceph cluster (one mon, one
//! memstore OSD on loopback, started by scripts/ceph-cluster.sh per test).

mod util;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use util::ceph::{RbdOp, TestCeph};
use util::*;

const MIB: u64 = 1 << 20;

struct Setup {
    ceph: TestCeph,
    fs: TestFs,
    job: PathBuf,
}

impl Setup {
    fn backy(&self) -> Command {
        let mut cmd = backy_job(&self.job);
        self.ceph.env(&mut cmd);
        cmd
    }

    fn backup(&self, tags: &str) -> Run {
        run(self.backy().args(["backup", tags]))
    }

    fn revisions(&self) -> Vec<serde_json::Value> {
        let r = run_ok(self.backy().args(["status", "--json"]));
        serde_json::from_str(&r.stdout).unwrap()
    }

    fn newest(&self) -> serde_json::Value {
        self.revisions().last().cloned().expect("a revision")
    }

    fn backy_snaps(&self) -> Vec<String> {
        let mut snaps: Vec<String> = self
            .ceph
            .snap_ls("img")
            .into_iter()
            .filter(|s| s.starts_with("backy-"))
            .collect();
        snaps.sort();
        snaps
    }

    /// Exports the newest revision's snapshot, the truth it must restore to.
    fn export_newest(&self, name: &str) -> PathBuf {
        let id = self.newest()["id"].as_str().unwrap().to_string();
        let path = self.fs.join(name);
        self.ceph.export(&format!("img@backy-{id}"), &path);
        path
    }

    fn restore_equals(&self, spec: &str, truth: &Path) {
        let out = self.fs.join(format!("restore-{spec}"));
        let _ = fs::remove_file(&out);
        run_ok(self.backy().args(["restore", "-r", spec]).arg(&out));
        assert_same_content(&out, truth);
    }

    /// The newest revision restores to its snapshot and, measured on btrfs, holds
    /// about `changed` bytes of its own: a full backup still shares with its parent.
    fn newest_restores_and_stores_about(&self, changed: u64) {
        let truth = self.export_newest("truth");
        self.restore_equals("0", &truth);
        run_ok(&mut Command::new("sync"));
        let newest = self.newest()["id"].as_str().unwrap().to_string();
        let excl = exclusive_bytes(&self.fs, &self.job.join(&newest));
        assert!(
            excl <= changed * 12 / 10 + 64 * 1024,
            "the full backup stores {excl} bytes alone for {changed} changed"
        );
    }

    /// A `$BACKY_RBD` wrapper: `export-diff` runs through `pipeline` (a shell
    /// fragment reading the real stream on stdin); everything else is plain rbd.
    fn rbd_wrapper(&self, name: &str, pipeline: &str) -> PathBuf {
        let path = self.fs.join(name);
        let rbd = find_tool("rbd").unwrap();
        let script = format!(
            "#!/bin/bash\nif [ \"$1\" = export-diff ]; then\n  {rbd} \"$@\" | {{ {pipeline}; }}\n  exit ${{PIPESTATUS[1]}}\nfi\nexec {rbd} \"$@\"\n",
            rbd = rbd.display()
        );
        fs::write(&path, script).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
        path
    }
}

fn setup(config_extra: &str) -> Option<Setup> {
    let ceph = TestCeph::start()?;
    let fs = TestFs::new(FsKind::Btrfs, 1024)?;
    ceph.create_image("img", 64);
    ceph.write_ops(
        "img",
        &[
            RbdOp::Write(0, &pattern_bytes(1, MIB as usize)),
            RbdOp::Write(10 * MIB + 1000, &pattern_bytes(2, 300_000)),
            RbdOp::Write(40 * MIB, &[b'x'; 4 * MIB as usize]),
            RbdOp::Write(63 * MIB, &pattern_bytes(3, MIB as usize)),
        ],
    );
    let job = fs.join("job");
    let s = Setup { ceph, fs, job };
    run_ok(s.backy().args(["init", "ceph-rbd", "rbd/img"]));
    if !config_extra.is_empty() {
        let mut config = fs::read_to_string(s.job.join("config")).unwrap();
        config.push_str(config_extra);
        fs::write(s.job.join("config"), config).unwrap();
    }
    Some(s)
}

/// Several backups with changes, growth and shrinking in between: every
/// revision restores byte-identical to `rbd export` of its snapshot, and only
/// the newest revision's snapshot (plus foreign ones) is left.
#[test]
fn incremental_backups_restore_to_their_snapshots() {
    let Some(s) = setup("") else { return };
    s.ceph.snap_create("img", "operator-snapshot");
    let mut truths = Vec::new();
    s.backup("daily").success().stderr_has("Full backup");
    truths.push(s.export_newest("t0"));
    assert_eq!(s.newest()["bytes_written"], 64 * MIB);

    s.ceph.write_ops(
        "img",
        &[
            RbdOp::Write(5 * MIB + 7, &pattern_bytes(9, 70_000)),
            RbdOp::Zero(40 * MIB, 4 * MIB),
        ],
    );
    s.backup("daily").success().stderr_has("Incremental backup");
    truths.push(s.export_newest("t1"));
    let rev = s.newest();
    assert!(rev["bytes_written"].as_u64().unwrap() < 16 * MIB, "{rev}");

    s.ceph.resize("img", 80 * MIB + 4096);
    s.ceph
        .write("img", 79 * MIB, &pattern_bytes(4, MIB as usize));
    s.backup("daily").success();
    truths.push(s.export_newest("t2"));

    s.ceph.resize("img", 20 * MIB + 512);
    s.ceph.write("img", 100, b"after shrink");
    s.backup("weekly").success();
    truths.push(s.export_newest("t3"));

    let revs = s.revisions();
    assert_eq!(revs.len(), 4);
    for (n, truth) in truths.iter().enumerate() {
        s.restore_equals(&(3 - n).to_string(), truth);
    }
    let newest = s.newest()["id"].as_str().unwrap().to_string();
    assert_eq!(s.backy_snaps(), vec![format!("backy-{newest}")]);
    assert!(
        s.ceph
            .snap_ls("img")
            .contains(&"operator-snapshot".to_string())
    );
    for rev in &revs {
        assert_eq!(rev["complete"], true);
    }
    let rev = fs::read_to_string(s.job.join(format!("{newest}.rev"))).unwrap();
    assert!(rev.contains("ceph-verification: partial"), "{rev}");
    assert!(rev.contains("verified_blocks: "), "{rev}");
    run_ok(s.backy().arg("verify"));
}

#[test]
fn full_always_keeps_no_snapshot() {
    let Some(s) = setup("full-always: true\n") else {
        return;
    };
    s.backup("daily").success();
    s.ceph.write("img", 3 * MIB, b"changed");
    s.backup("daily").success().stderr_has("Full backup");
    let truth = s.fs.join("truth");
    s.ceph.export("img", &truth);
    s.restore_equals("0", &truth);
    assert!(s.backy_snaps().is_empty(), "{:?}", s.backy_snaps());
    // ceph-rbd never freezes the guest: every revision says so (issue 13).
    let rev = s.newest();
    assert_eq!(rev["consistency"], "crash", "{rev}");
    assert!(rev["consistency_reason"].is_null(), "{rev}");
}

/// `full-every: 2` makes every second backup compare the whole snapshot
/// although a diff was possible (so a diff that misses changes cannot hide them
/// for long); it still shares unchanged extents.
#[test]
fn full_every_compares_the_whole_snapshot_periodically() {
    let Some(s) = setup("full-every: 2\n") else {
        return;
    };
    let mode = |s: &Setup| {
        let id = s.newest()["id"].as_str().unwrap().to_string();
        let rev = fs::read_to_string(s.job.join(format!("{id}.rev"))).unwrap();
        let line = rev.lines().find(|l| l.contains("backup_mode:")).unwrap();
        line.split(':').nth(1).unwrap().trim().to_string()
    };
    let mut modes = Vec::new();
    for n in 0..4u64 {
        s.ceph
            .write("img", (n * 8 + 2) * MIB, &pattern_bytes(n + 20, 128 * 1024));
        let r = s.backup("daily").success();
        modes.push(mode(&s));
        if n == 2 {
            r.stderr_has("comparing the whole snapshot this time");
            s.newest_restores_and_stores_about(128 * 1024);
        }
    }
    assert_eq!(modes, ["full", "diff", "full", "diff"]);
    let newest = s.newest()["id"].as_str().unwrap().to_string();
    assert_eq!(s.backy_snaps(), vec![format!("backy-{newest}")]);
}

/// A job filesystem that fills up while the diff streams in: the backup fails
/// with the filesystem's error instead of hanging (the reader thread and rbd
/// must both stop), and leaves neither a revision nor its snapshot.
#[test]
fn a_full_job_filesystem_fails_the_backup_without_hanging() {
    let Some(ceph) = TestCeph::start() else {
        return;
    };
    let Some(fs) = TestFs::new(FsKind::Btrfs, 128) else {
        return;
    };
    ceph.create_image("img", 256);
    let data: Vec<Vec<u8>> = (0..4)
        .map(|n| pattern_bytes(300 + n, 64 * MIB as usize))
        .collect();
    let ops: Vec<RbdOp> = data
        .iter()
        .enumerate()
        .map(|(n, d)| RbdOp::Write(n as u64 * 64 * MIB, d))
        .collect();
    ceph.write_ops("img", &ops);
    let job = fs.join("job");
    let s = Setup { ceph, fs, job };
    run_ok(s.backy().args(["init", "ceph-rbd", "rbd/img"]));
    run_timeout(
        s.backy().args(["backup", "daily"]),
        std::time::Duration::from_secs(120),
    )
    .code(1)
    .stderr_has("No space left on device")
    .stderr_has(&format!(
        "the filesystem is full (mounted on {}, btrfs)",
        s.fs.path().display()
    ));
    assert!(s.revisions().is_empty());
    assert!(s.backy_snaps().is_empty(), "{:?}", s.backy_snaps());
}

/// A deleted base snapshot falls back to a full backup that still shares the
/// unchanged extents with the parent (measured on btrfs).
#[test]
fn lost_base_snapshot_falls_back_to_a_full_backup_that_shares() {
    let Some(s) = setup("") else { return };
    s.backup("daily").success();
    let first = s.newest()["id"].as_str().unwrap().to_string();
    s.ceph.snap_rm("img", &format!("backy-{first}"));
    s.ceph.write("img", 20 * MIB, &pattern_bytes(7, 256 * 1024));
    s.backup("daily")
        .success()
        .stderr_has("is gone: making a full backup");
    s.newest_restores_and_stores_about(256 * 1024);
}

/// rbd killed mid-stream, a non-zero exit after complete-looking output, a
/// stream without its end record, and a diff from the wrong snapshot: none may
/// complete a revision; earlier revisions and the parent's snapshot stay.
#[test]
fn broken_diff_streams_never_complete_a_revision() {
    let Some(s) = setup("") else { return };
    s.backup("daily").success();
    let good = s.newest()["id"].as_str().unwrap().to_string();
    let truth = s.export_newest("truth");
    s.ceph
        .write("img", 30 * MIB, &pattern_bytes(8, 2 * MIB as usize));
    let cases = [
        ("killed", "head -c 100000; kill -KILL $$", "cut short"),
        ("exit3", "cat; exit 3", "exited with status 3"),
        ("no-end", "head -c -1", "without its end record"),
        (
            "wrong-base",
            "sed 's/backy-[A-Za-z0-9]*/backy-wrongbase/'",
            "starts from snapshot 'backy-wrongbase",
        ),
    ];
    for (name, pipeline, needle) in cases {
        let wrapper = s.rbd_wrapper(name, pipeline);
        let r = run(s
            .backy()
            .env("BACKY_RBD", &wrapper)
            .args(["backup", "daily"]));
        let r = r.code(1);
        if !r.stderr.contains(needle) {
            r.fail(&format!("{name}: expected {needle:?}"));
        }
        let revs = s.revisions();
        assert_eq!(revs.len(), 1, "{name}: {revs:?}");
        assert_eq!(s.backy_snaps(), vec![format!("backy-{good}")], "{name}");
        s.restore_equals("0", &truth);
    }
    s.backup("daily").success().stderr_has("Incremental backup");
}

/// A diff that misses a change (as Ceph object-map bugs did) is caught by
/// sampled verification, which also samples what the diff called unchanged.
#[test]
fn a_corrupted_diff_is_caught_by_sampled_verification() {
    let Some(s) = setup("") else { return };
    // A 4 MiB image has one sample block, so it is always checked.
    s.ceph.resize("img", 4 * MIB);
    s.backup("daily").success();
    let good = s.newest()["id"].as_str().unwrap().to_string();
    s.ceph.write("img", 1000, b"ABCDEFGH");
    let wrapper = s.rbd_wrapper("corrupt", "sed 's/ABCDEFGH/ABCDEFGX/'");
    run(s
        .backy()
        .env("BACKY_RBD", &wrapper)
        .args(["backup", "daily"]))
    .code(1)
    .stderr_has("verification of revision")
    .stderr_has("the revision was removed");
    assert_eq!(s.revisions().len(), 1);
    assert_eq!(s.backy_snaps(), vec![format!("backy-{good}")]);
}

/// Running out of the verification budget is reported as partial,
/// with the count, never as a pass.
#[test]
fn an_exhausted_verification_budget_is_reported() {
    let Some(s) = setup("verification-timeout: 0\n") else {
        return;
    };
    s.backup("daily")
        .success()
        .stderr_has("ran out of its 0ns budget after 0 of");
    let id = s.newest()["id"].as_str().unwrap().to_string();
    let rev = fs::read_to_string(s.job.join(format!("{id}.rev"))).unwrap();
    assert!(
        rev.contains("verification_budget_exhausted: true") && rev.contains("verified_blocks: 0"),
        "{rev}"
    );
}

/// A snapshot that cannot be removed (protected) is logged and does not fail the run.
#[test]
fn a_protected_old_snapshot_does_not_fail_the_backup() {
    let Some(s) = setup("") else { return };
    s.backup("daily").success();
    let first = s.newest()["id"].as_str().unwrap().to_string();
    s.ceph.snap_protect("img", &format!("backy-{first}"));
    s.backup("daily").success().stderr_has("protected?");
    let second = s.newest()["id"].as_str().unwrap().to_string();
    assert_eq!(
        s.backy_snaps(),
        vec![format!("backy-{first}"), format!("backy-{second}")]
            .into_iter()
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect::<Vec<_>>()
    );
    s.ceph.snap_unprotect("img", &format!("backy-{first}"));
    s.backup("daily").success();
    assert_eq!(s.backy_snaps().len(), 1);
}

/// Whole-object diffs resend unchanged data; blocks equal to the parent's
/// checksums are not rewritten, so the revision still stores only the change.
#[test]
fn whole_object_diffs_rewrite_only_what_changed() {
    let Some(s) = setup("whole-object: true\n") else {
        return;
    };
    s.backup("daily").success();
    s.ceph.write("img", 40 * MIB + 8192, b"one small change");
    s.backup("daily").success().stderr_has("Incremental backup");
    let rev = s.newest();
    assert!(rev["bytes_written"].as_u64().unwrap() >= 4 * MIB, "{rev}");
    assert!(rev["bytes_changed"].as_u64().unwrap() <= 4096, "{rev}");
    let truth = s.export_newest("truth");
    s.restore_equals("0", &truth);
    run_ok(&mut Command::new("sync"));
    let id = rev["id"].as_str().unwrap();
    assert!(exclusive_bytes(&s.fs, &s.job.join(id)) <= 64 * 1024);
}
