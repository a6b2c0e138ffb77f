//! Space per revision (issue 12): what `status`, `forget --dry-run` and
//! `expire --dry-run` predict a deletion frees, against what `statfs` sees
//! freed, for histories made with the real `backy backup` on real XFS and btrfs.
//!
//! On XFS the prediction must be within 1 MiB of the `statfs` delta. On btrfs
//! a partly overwritten extent stays allocated until no part of it is
//! referenced, and those unreferenced parts are in no file's extent map, so
//! the prediction can only be low: it must never be more than 1 MiB above the
//! delta, and at most [`BTRFS_HIDDEN`] below it (the bytes the history
//! overwrote, which is what such extents can hide). Every comparison is
//! printed (`cargo nextest run --test space --no-capture`) for the figures in
//! the man page.
//!
//! XFS keeps copy-on-write reservations of recent writes for 5 minutes
//! (`fs.xfs.speculative_prealloc_lifetime`) in no extent map; the tests drop
//! them (`xfs_spaceman -c 'prealloc -s'`) before each measurement, and
//! [`xfs_reservations_are_freed_with_a_recent_revision`] shows their size.

mod util;

use std::path::{Path, PathBuf};
use std::thread;
use std::time::Duration;

use util::*;

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;
/// The source image of every history.
const SIZE: u64 = 64 * MIB;
/// What a history here overwrites at most, beyond the data it deletes: the
/// most a btrfs prediction may be below the `statfs` delta.
const BTRFS_HIDDEN: u64 = 20 * MIB;

/// A job on its own test filesystem, its file source beside it.
struct History {
    fs: TestFs,
    src: PathBuf,
    job: PathBuf,
}

impl History {
    fn new(kind: FsKind) -> Option<History> {
        let fs = TestFs::new(kind, 1024)?;
        let src = fs.join("vm.img");
        let job = fs.join("job");
        write_file(&src, SIZE, &[(0, &pattern_bytes(1, SIZE as usize))]);
        run_ok(backy_job(&job).args(["init", "file"]).arg(&src));
        Some(History { fs, src, job })
    }

    /// One backup; returns the new revision's id.
    fn backup(&self, tags: &str) -> String {
        run_ok(backy_job(&self.job).args(["backup", tags]));
        let revs = self.status();
        revs.last().unwrap()["id"].as_str().unwrap().to_string()
    }

    /// `len` new bytes at `offset` of the source.
    fn change(&self, offset: u64, len: u64, seed: u64) {
        write_at(&self.src, offset, &pattern_bytes(seed, len as usize));
    }

    /// `count` changes of `len` bytes at scattered 4 KiB-aligned offsets in
    /// `[lo, SIZE)`.
    fn scatter(&self, lo: u64, count: u64, len: u64, seed: u64) {
        let mut state = seed;
        for n in 0..count {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let offset = lo + ((state >> 20) % ((SIZE - lo - len) / 4096)) * 4096;
            self.change(offset, len, seed * 1000 + n);
        }
    }

    fn status(&self) -> Vec<serde_json::Value> {
        let r = run_ok(backy_job(&self.job).args(["status", "--json"]));
        serde_json::from_str(&r.stdout).unwrap_or_else(|e| r.fail(&format!("bad JSON: {e}")))
    }

    /// `freed` of revision `id` as `status --json` predicts it.
    fn predicted(&self, id: &str) -> u64 {
        let revs = self.status();
        let rev = revs
            .iter()
            .find(|r| r["id"] == id)
            .unwrap_or_else(|| panic!("no revision {id}"));
        rev["freed"]
            .as_u64()
            .unwrap_or_else(|| panic!("no freed figure: {rev}"))
    }

    /// Bytes available on the filesystem, once it settled. On XFS, first
    /// without the copy-on-write reservations of recent writes (up to 128 KiB
    /// per changed spot, which XFS releases after 5 minutes on its own, or
    /// when the file is deleted): no extent map shows them.
    fn available(&self) -> u64 {
        if self.fs.kind() == FsKind::Xfs {
            // Written back first: XFS skips inodes with dirty pages.
            available_bytes(self.fs.path());
            run_ok(
                tool("xfs_spaceman")
                    .args(["-c", "prealloc -s"])
                    .arg(self.fs.path()),
            );
        }
        available_bytes(self.fs.path())
    }

    /// Forgets revision `id`; returns the `statfs` delta.
    fn forget(&self, id: &str) -> u64 {
        let before = self.available();
        let r = run_ok(backy_job(&self.job).args(["forget", "--force", "-r", id]));
        let after = self.available();
        let actual = after.saturating_sub(before);
        // backy's own statfs figure, from its log line.
        let line = r
            .stderr
            .lines()
            .find(|l| l.contains(" freed ") && l.ends_with("(statfs)"))
            .unwrap_or_else(|| r.fail("forget logs what it freed"));
        let logged = parse_bytes(line.split(" freed ").nth(1).unwrap());
        assert!(
            logged.abs_diff(actual) <= MIB + actual / 100,
            "backy logged {logged} freed, statfs says {actual}: {line}"
        );
        actual
    }

    /// Predicts, forgets and compares revision `id`; returns (predicted, actual).
    fn check_forget(&self, what: &str, id: &str) -> (u64, u64) {
        let predicted = self.predicted(id);
        let dry = run_ok(backy_job(&self.job).args(["forget", "--force", "--dry-run", "-r", id]));
        assert!(dry.stdout.contains("frees"), "{}", dry.stdout);
        assert_close(&dry.stdout, parse_bytes(&dry.stdout), predicted);
        let actual = self.forget(id);
        report(self.fs.kind(), what, predicted, actual);
        assert_within(self.fs.kind(), what, predicted, actual);
        (predicted, actual)
    }
}

/// `sync -f` and `stat -f` until two readings agree: btrfs frees at the
/// transaction commit, XFS inactivates unlinked inodes in the background.
fn available_bytes(path: &Path) -> u64 {
    let read = || {
        run_ok(std::process::Command::new("sync").arg("-f").arg(path));
        let r = run_ok(
            std::process::Command::new("stat")
                .args(["-f", "-c", "%a %S"])
                .arg(path),
        );
        let v: Vec<u64> = r
            .stdout
            .split_whitespace()
            .map(|n| n.parse().unwrap())
            .collect();
        v[0] * v[1]
    };
    let mut last = read();
    for _ in 0..20 {
        thread::sleep(Duration::from_millis(50));
        let now = read();
        if now == last {
            return now;
        }
        last = now;
    }
    last
}

fn report(kind: FsKind, what: &str, predicted: u64, actual: u64) {
    eprintln!(
        "space {kind}: {what}: predicted {predicted} actual {actual} (off by {:+} KiB)",
        (actual as i64 - predicted as i64) / KIB as i64
    );
}

/// XFS: within 1 MiB. btrfs: never more than 1 MiB high, at most
/// [`BTRFS_HIDDEN`] low.
fn assert_within(kind: FsKind, what: &str, predicted: u64, actual: u64) {
    let ok = match kind {
        FsKind::Btrfs => predicted <= actual + MIB && actual <= predicted + BTRFS_HIDDEN,
        _ => predicted.abs_diff(actual) <= MIB,
    };
    assert!(
        ok,
        "{kind}: {what}: predicted {predicted}, statfs freed {actual}"
    );
}

/// The first `N.NN UNIT` figure in `text`, in bytes (two decimals, so
/// within 0.5 % of the exact figure).
fn parse_bytes(text: &str) -> u64 {
    let words: Vec<&str> = text.split_whitespace().collect();
    for pair in words.windows(2) {
        let unit = match pair[1].trim_end_matches([',', ')']) {
            "Bytes" | "Byte" => 1,
            "kiB" => KIB,
            "MiB" => MIB,
            "GiB" => MIB * 1024,
            _ => continue,
        };
        if let Ok(n) = pair[0].parse::<f64>() {
            return (n * unit as f64).round() as u64;
        }
    }
    panic!("no byte figure in {text:?}");
}

fn assert_close(text: &str, shown: u64, exact: u64) {
    assert!(
        shown.abs_diff(exact) <= exact / 200 + 1,
        "{text:?} shows {shown}, expected about {exact}"
    );
}

/// The scripted history, deleted in an order where each step checks
/// something: data that lives on frees nothing, overwritten data frees its
/// size, the last revision frees everything.
fn predictions_match_statfs(kind: FsKind) {
    let Some(h) = History::new(kind) else { return };
    let r0 = h.backup("daily");
    h.change(8 * MIB, 8 * MIB, 2);
    let r1 = h.backup("daily");
    h.scatter(16 * MIB, 200, 16 * KIB, 3);
    let r2 = h.backup("daily");
    h.change(8 * MIB, 8 * MIB, 4);
    let r3 = h.backup("daily");
    let r4 = h.backup("daily");

    // r2's scattered changes (away from the 8 MiB that r3 overwrites) live
    // on in r3 and r4, r1's 8 MiB in r2: r2 alone frees about nothing.
    let (p, a) = h.check_forget("revision whose data lives on (r2)", &r2);
    assert!(p < 256 * KIB && a < MIB, "r2: predicted {p}, freed {a}");
    // Now r1 alone holds the 8 MiB r3 overwrote, and what the scatter changed.
    h.check_forget("overwritten 8 MiB and scatter (r1)", &r1);
    // r4 is r3 unchanged: r3 frees about nothing.
    let (p, a) = h.check_forget("unchanged successor (r3)", &r3);
    assert!(p < 256 * KIB && a < MIB, "r3: predicted {p}, freed {a}");
    h.check_forget("the first backup (r0)", &r0);
    h.check_forget("the last revision (r4)", &r4);
}

#[test]
fn predicted_freed_matches_statfs_on_xfs() {
    predictions_match_statfs(FsKind::Xfs);
}

#[test]
fn predicted_freed_matches_statfs_on_btrfs() {
    predictions_match_statfs(FsKind::Btrfs);
}

/// An expiry plan deletes a set of revisions that share data among
/// themselves: `expire --dry-run` predicts the set's bytes, the real expiry
/// frees them.
fn expire_plan_frees_what_the_dry_run_said(kind: FsKind) {
    let Some(h) = History::new(kind) else { return };
    let conf = h.fs.join("backy.conf");
    std::fs::write(
        &conf,
        format!(
            "global: {{base-dir: {}}}\nschedules:\n  s:\n    daily: {{interval: 1s, keep: 1}}\njobs:\n  job: {{schedule: s, source: {{type: file, filename: {}}}}}\n",
            h.fs.path().display(),
            h.src.display()
        ),
    )
    .unwrap();
    h.backup("daily");
    h.change(0, 4 * MIB, 10);
    let kept = h.backup("daily,manual:keep");
    // Two revisions with the same 4 MiB (only they hold it), then scatter.
    h.change(32 * MIB, 4 * MIB, 11);
    h.backup("daily");
    h.scatter(0, 100, 8 * KIB, 12);
    h.backup("daily");
    h.change(32 * MIB, 4 * MIB, 13);
    let newest = h.backup("daily");
    thread::sleep(Duration::from_millis(1100));

    let dry = run_ok(
        backy_job(&h.job)
            .args(["expire", "--dry-run", "-c"])
            .arg(&conf),
    );
    let line = dry
        .stdout
        .lines()
        .find(|l| l.starts_with("Deleting 3 revisions frees"))
        .unwrap_or_else(|| dry.fail("expected a line about 3 deletions"));
    let predicted = parse_bytes(line);
    // The set frees more than its members one by one: the 4 MiB that two of
    // them share.
    let singles: u64 = h
        .status()
        .iter()
        .filter(|r| r["id"] != kept.as_str() && r["id"] != newest.as_str())
        .map(|r| r["freed"].as_u64().unwrap())
        .sum();
    assert!(
        predicted >= singles + 4 * MIB - MIB / 2,
        "{line}; singles {singles}"
    );

    let before = h.available();
    let r = run_ok(backy_job(&h.job).args(["expire", "-c"]).arg(&conf));
    let actual = h.available().saturating_sub(before);
    let logged = r
        .stderr
        .lines()
        .find_map(|l| l.split("Expiry of 3 revisions freed ").nth(1))
        .unwrap_or_else(|| r.fail("expiry logs what it freed"));
    assert!(
        parse_bytes(logged).abs_diff(actual) <= MIB + actual / 100,
        "backy logged {logged}, statfs says {actual}"
    );
    let left: Vec<String> = h
        .status()
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(left, [kept, newest]);
    report(kind, "expire plan of 3 revisions", predicted, actual);
    assert_within(kind, "expire plan", predicted, actual + predicted / 200);
}

#[test]
fn expire_plan_frees_what_the_dry_run_said_on_xfs() {
    expire_plan_frees_what_the_dry_run_said(FsKind::Xfs);
}

#[test]
fn expire_plan_frees_what_the_dry_run_said_on_btrfs() {
    expire_plan_frees_what_the_dry_run_said(FsKind::Btrfs);
}

/// A `cp --reflink` of a revision's image made outside the job keeps that
/// revision's data: it is never counted as freed, and deleting the revision
/// indeed frees about nothing.
fn reflink_copy_outside_is_never_freed(kind: FsKind) {
    let Some(h) = History::new(kind) else { return };
    h.backup("daily");
    h.change(16 * MIB, 8 * MIB, 20);
    let newest = h.backup("daily");
    let alone = h.predicted(&newest);
    assert!(alone >= 8 * MIB, "before the copy: {alone}");

    let copy = h.fs.join("operator-copy.img");
    let image = PathBuf::from(
        run_ok(backy_job(&h.job).args(["find", "-r", &newest]))
            .stdout
            .trim(),
    );
    assert!(reflink_copy(&image, &copy));
    let revs = h.status();
    let rev = revs.iter().find(|r| r["id"] == newest.as_str()).unwrap();
    let freed = rev["freed"].as_u64().unwrap();
    assert!(freed < 256 * KIB, "after the copy: {rev}");
    assert!(rev["shared_outside"].as_u64().unwrap() >= 8 * MIB, "{rev}");
    let (_, actual) = h.check_forget("revision with an outside reflink copy", &newest);
    assert!(actual < MIB, "freed {actual}");
}

#[test]
fn a_reflink_copy_outside_the_job_is_never_counted_as_freed_on_xfs() {
    reflink_copy_outside_is_never_freed(FsKind::Xfs);
}

#[test]
fn a_reflink_copy_outside_the_job_is_never_counted_as_freed_on_btrfs() {
    reflink_copy_outside_is_never_freed(FsKind::Btrfs);
}

/// The table and the summary lines: backy 2.1's summary first, unchanged,
/// then physical and logical bytes and the sharing factor.
#[test]
fn status_shows_freed_and_the_sharing_factor() {
    let Some(h) = History::new(FsKind::Xfs) else {
        return;
    };
    h.backup("daily");
    h.change(0, 4 * MIB, 30);
    h.backup("daily");
    let out = run_ok(backy_job(&h.job).arg("status")).stdout;
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines[1].contains("| Freed |") || lines[1].contains("Freed"),
        "{out}"
    );
    let summary = lines
        .iter()
        .position(|l| l.ends_with("revisions containing 128.00 MiB data (estimated)"))
        .unwrap_or_else(|| panic!("{out}"));
    let space = lines[summary + 1];
    assert!(space.starts_with("Space: 68.0"), "{out}");
    assert!(
        space.contains("on disk for 128.00 MiB of revision data (sharing factor 1.9x)"),
        "{out}"
    );
    assert!(lines[summary + 2].ends_with("(exact)"), "{out}");
    let revs = h.status();
    let job_space = &revs[0]["job_space"];
    assert_eq!(job_space["logical"], 128 * MIB, "{job_space}");
    assert_eq!(job_space["exact"], true);
    assert_eq!(job_space["filesystem"], "xfs");
    assert!(job_space["physical"].as_u64().unwrap() >= 68 * MIB);
}

/// On a filesystem without FIEMAP, `status` still works and says why there
/// are no space figures.
#[test]
fn status_without_extents_says_so_and_works() {
    let fs = require_fs!(FsKind::Tmpfs, 64);
    let src = fs.join("vm.img");
    let job = fs.join("job");
    write_file(&src, 4 * MIB, &[(0, &pattern_bytes(5, MIB as usize))]);
    run_ok(backy_job(&job).args(["init", "file"]).arg(&src));
    run_ok(backy_job(&job).args(["backup", "--allow-copy", "daily"]));
    let r = run_ok(backy_job(&job).arg("status"));
    assert!(!r.stdout.contains("Freed"), "{}", r.stdout);
    assert!(
        r.stdout.contains("Space: not measured: ") && r.stdout.contains("tmpfs"),
        "{}",
        r.stdout
    );
    let json: Vec<serde_json::Value> =
        serde_json::from_str(&run_ok(backy_job(&job).args(["status", "--json"])).stdout).unwrap();
    assert!(json[0]["freed"].is_null());
    assert!(
        json[0]["job_space"]["error"]
            .as_str()
            .unwrap()
            .contains("FIEMAP")
    );
}

/// What the prediction leaves out on XFS: a revision written minutes ago
/// holds copy-on-write reservations around each changed spot until XFS
/// releases them (after 5 minutes) or the file is deleted. Deleting it at
/// once frees them too; measured here so the man page can say how much.
#[test]
fn xfs_reservations_are_freed_with_a_recent_revision() {
    let Some(h) = History::new(FsKind::Xfs) else {
        return;
    };
    h.backup("daily");
    h.scatter(0, 100, 8 * KIB, 40);
    let id = h.backup("daily");
    h.backup("daily");
    let predicted = h.predicted(&id);
    let before = available_bytes(h.fs.path());
    run_ok(backy_job(&h.job).args(["forget", "-r", &id]));
    let actual = available_bytes(h.fs.path()).saturating_sub(before);
    report(
        FsKind::Xfs,
        "recent revision with its CoW reservations",
        predicted,
        actual,
    );
    // 100 changed spots: at most 128 KiB each beyond the prediction.
    assert!(
        predicted <= actual + MIB,
        "predicted {predicted}, freed {actual}"
    );
    assert!(
        actual <= predicted + 100 * 128 * KIB + MIB,
        "predicted {predicted}, freed {actual}"
    );
}

/// Half-compressible data: each 4 KiB page is 2 KiB of random bytes, then zeros.
fn half_compressible(seed: u64, len: u64) -> Vec<u8> {
    let mut out = vec![0u8; len as usize];
    for (n, page) in out.chunks_mut(4096).enumerate() {
        let half = page.len().min(2048);
        page[..half].copy_from_slice(&pattern_bytes(seed * 100_000 + n as u64, half));
    }
    out
}

/// btrfs with `compress-force=zstd`: FIEMAP reports compressed extents with
/// their uncompressed length, so the figures are labelled and the prediction
/// is above what `statfs` sees freed, by about the compression ratio.
#[test]
fn compressed_btrfs_figures_are_labelled_and_high() {
    let Some(h) = History::new(FsKind::Btrfs) else {
        return;
    };
    run_ok(
        tool("mount")
            .args(["-o", "remount,compress-force=zstd"])
            .arg(h.fs.path()),
    );
    write_at(&h.src, 0, &half_compressible(50, SIZE));
    h.backup("daily");
    write_at(&h.src, 8 * MIB, &half_compressible(51, 8 * MIB));
    let r1 = h.backup("daily");
    write_at(&h.src, 8 * MIB, &half_compressible(52, 8 * MIB));
    h.backup("daily");

    let revs = h.status();
    let job_space = &revs[0]["job_space"];
    assert_eq!(job_space["exact"], false, "{job_space}");
    assert!(
        job_space["caveat"].as_str().unwrap().contains("compressed"),
        "{job_space}"
    );
    // r1 alone holds the 8 MiB the last backup overwrote.
    let predicted = h.predicted(&r1);
    assert!(predicted >= 8 * MIB, "predicted {predicted}");
    let actual = h.forget(&r1);
    report(
        FsKind::Btrfs,
        "compressed (zstd, about 2:1) 8 MiB",
        predicted,
        actual,
    );
    assert!(
        actual <= predicted + MIB,
        "predicted {predicted}, freed {actual}"
    );
    assert!(actual >= 2 * MIB, "freed {actual}");
}

/// ext4 shares nothing (backups there are full sparse copies): the figures
/// are exact, the sharing factor is 1, and a revision frees its whole size.
#[test]
fn ext4_copies_free_their_whole_size() {
    let Some(h) = History::new(FsKind::Ext4) else {
        return;
    };
    run_ok(backy_job(&h.job).args(["backup", "--allow-copy", "daily"]));
    h.change(0, 4 * MIB, 60);
    run_ok(backy_job(&h.job).args(["backup", "--allow-copy", "daily"]));
    let revs = h.status();
    let job_space = &revs[0]["job_space"];
    assert_eq!(job_space["exact"], true, "{job_space}");
    assert_eq!(job_space["sharing_factor"], 1.0, "{job_space}");
    let first = revs[0]["id"].as_str().unwrap().to_string();
    let (predicted, _) = h.check_forget("a full copy on ext4", &first);
    assert!(predicted >= SIZE, "predicted {predicted}");
}
