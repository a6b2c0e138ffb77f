//! `verification: written` (issue 15) on real btrfs and XFS loop filesystems:
//! a backup reads back only the blocks it wrote and proves the rest by their
//! mapping to the verified parent's extents; a byte changed behind backy's back
//! in a block it wrote, or in one it did not write, is caught; damage to an
//! extent the parent shares is not noticed by the backup (only by a scrub,
//! `backy verify`), which is the documented trade-off, and a full-mode backup
//! over the same damage notices it.

mod util;

use std::fs;
use std::path::{Path, PathBuf};

use util::*;

const MIB: u64 = 1 << 20;
const BS: u64 = 65536;
const SIZE: u64 = 4 * MIB;
/// A block no backup after the first changes.
const SHARED_BLOCK: u64 = 10 * BS;
/// The block the second backup changes.
const CHANGED_BLOCK: u64 = 40 * BS;

fn status_json(job: &Path) -> Vec<serde_json::Value> {
    let r = run_ok(backy_job(job).args(["status", "--json"]));
    serde_json::from_str(&r.stdout).unwrap_or_else(|e| r.fail(&format!("bad JSON: {e}")))
}

/// Complete revisions' JSON, oldest first.
fn complete(job: &Path) -> Vec<serde_json::Value> {
    status_json(job)
        .into_iter()
        .filter(|r| r["complete"] == true)
        .collect()
}

/// A job with `verification: written` over a 4 MiB source, backed up once.
fn written_job(fs: &TestFs) -> (PathBuf, PathBuf) {
    let (src, job) = (fs.join("src.img"), fs.join("job"));
    write_file(
        &src,
        SIZE,
        &[
            (0, &pattern_bytes(1, 2 * MIB as usize)),
            (3 * MIB, &pattern_bytes(2, MIB as usize / 2)),
        ],
    );
    run_ok(backy_job(&job).args(["init", "file"]).arg(&src));
    let config = job.join("config");
    let mut text = fs::read_to_string(&config).unwrap();
    text.push_str("verification: written\n");
    fs::write(&config, text).unwrap();
    // The first backup has no parent to share with: it reads everything.
    run_ok(backy_job(&job).args(["backup", "daily"]))
        .stderr_has("in full instead of what it wrote: there is no parent");
    let first = &complete(&job)[0];
    assert_eq!(first["verification"], "full", "{first}");
    (src, job)
}

/// An incremental reads back the blocks it wrote (the change spans two 64 KiB
/// blocks) and proves every other block; status shows it; the restored image
/// is the source.
fn reads_only_what_it_wrote(kind: FsKind) {
    let fs = require_fs!(kind, 300);
    let (src, job) = written_job(&fs);
    write_at(&src, CHANGED_BLOCK + BS / 2, &pattern_bytes(7, BS as usize));
    run_ok(backy_job(&job).args(["backup", "daily"]));
    let revs = complete(&job);
    let newest = &revs[1];
    assert_eq!(newest["verification"], "written", "{newest}");
    assert_eq!(newest["verification_blocks_read"], 2, "{newest}");
    assert_eq!(
        newest["verification_blocks_proven"],
        SIZE / BS - 2,
        "{newest}"
    );
    run_ok(backy_job(&job).arg("status")).stdout_has("written (2 read, 62 by mapping)");
    let out = fs.join("restored");
    run_ok(
        backy_job(&job)
            .args(["restore", "-r", "0"])
            .arg(&out)
            .env("BACKY_LOG", "info"),
    );
    assert_same_content(&src, &out);
    // A full read of the newest finds it sound.
    run_ok(backy_job(&job).args(["verify", "-r", "0"]));
}

/// A byte changed in a block the backup wrote, after the patch was synced and
/// before verification, is read back and caught; so is one in a block it did
/// not write (the write moved it off the parent's extent, so it is read too),
/// and the parent is not blamed for it.
fn tampering_is_caught(kind: FsKind) {
    let fs = require_fs!(kind, 300);
    let (src, job) = written_job(&fs);
    for (n, failpoint) in ["tamper-written", "tamper-unwritten"].iter().enumerate() {
        write_at(&src, CHANGED_BLOCK, &pattern_bytes(20 + n as u64, 4096));
        let r = run(backy_job(&job)
            .args(["backup", "daily"])
            .env("BACKY_FAILPOINT", failpoint))
        .failure();
        assert!(
            r.stderr.contains("differ from the source"),
            "{failpoint}: {}",
            r.stderr
        );
        assert!(!r.stderr.contains("now distrusted"), "{}", r.stderr);
        let revs = complete(&job);
        assert_eq!(revs.len(), 1, "{failpoint}: {revs:?}");
        assert_eq!(revs[0]["trust"], "trusted", "{failpoint}");
    }
    // Without the fault the same change backs up.
    run_ok(backy_job(&job).args(["backup", "daily"]));
    assert_eq!(complete(&job)[1]["verification"], "written");
}

/// Damage to an extent the parent shares with the new image: the written-mode
/// backup proves the block by its mapping and does not read it (the trade-off
/// the man page documents); `backy verify` (what the scrub runs) finds it in
/// both revisions; a full-mode backup over the same damage notices it.
fn shared_damage_needs_the_scrub(kind: FsKind) {
    let fs = require_fs!(kind, 300);
    let (src, job) = written_job(&fs);
    let parent = complete(&job)[0]["id"].as_str().unwrap().to_string();
    flip_on_disk(&fs, &job, &parent, SHARED_BLOCK);
    write_at(&src, CHANGED_BLOCK, &pattern_bytes(30, 4096));
    run_ok(backy_job(&job).args(["backup", "daily"]));
    let revs = complete(&job);
    assert_eq!(revs[1]["verification"], "written");
    assert_eq!(revs[1]["verification_blocks_read"], 1);

    let r = run(backy_job(&job).arg("verify")).code(1);
    r.stdout_has("0 verified, 2 distrusted");

    // Full mode reads the shared block and finds the damage at backup time.
    let (fs2_src, job2) = (src.clone(), fs.join("job2"));
    run_ok(backy_job(&job2).args(["init", "file"]).arg(&fs2_src));
    run_ok(backy_job(&job2).args(["backup", "daily"]));
    let parent2 = complete(&job2)[0]["id"].as_str().unwrap().to_string();
    flip_on_disk(&fs, &job2, &parent2, SHARED_BLOCK);
    write_at(&src, CHANGED_BLOCK, &pattern_bytes(31, 4096));
    let r = run(backy_job(&job2).args(["backup", "daily"]));
    assert!(
        r.stderr
            .contains(&format!("Parent {parent2} is damaged on disk")),
        "{}",
        r.stderr
    );
}

/// Ceph sources refuse the key with one sentence.
#[test]
fn ceph_jobs_refuse_written_verification() {
    let dir = tempfile::tempdir().unwrap();
    let job = dir.path().join("job");
    fs::create_dir(&job).unwrap();
    fs::write(
        job.join("config"),
        "type: ceph-rbd\npool: rbd\nimage: vm\nverification: written\n",
    )
    .unwrap();
    let r = run(backy_job(&job).args(["backup", "daily"])).failure();
    r.stderr_has("written is for file sources only; ceph-rbd jobs check a sample");
}

#[test]
fn reads_only_what_it_wrote_on_btrfs() {
    reads_only_what_it_wrote(FsKind::Btrfs);
}

#[test]
fn reads_only_what_it_wrote_on_xfs() {
    reads_only_what_it_wrote(FsKind::Xfs);
}

#[test]
fn tampering_is_caught_on_btrfs() {
    tampering_is_caught(FsKind::Btrfs);
}

#[test]
fn tampering_is_caught_on_xfs() {
    tampering_is_caught(FsKind::Xfs);
}

#[test]
fn shared_damage_needs_the_scrub_on_btrfs() {
    shared_damage_needs_the_scrub(FsKind::Btrfs);
}

#[test]
fn shared_damage_needs_the_scrub_on_xfs() {
    shared_damage_needs_the_scrub(FsKind::Xfs);
}
