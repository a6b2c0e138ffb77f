//! `backy verify` against real damage (issue 12): bytes flipped on the loop
//! device under the job's filesystem, in an extent that several revisions
//! share or in one that only the newest holds. On btrfs, whose data checksums
//! make the damaged block unreadable (EIO), and on XFS, which returns the
//! flipped bytes. Also: `--sample`, revisions without a manifest, a transient
//! misread, and the backup after a distrusted newest revision.

mod util;

use std::fs;
use std::path::{Path, PathBuf};

use util::*;

const MIB: u64 = 1 << 20;
const BS: u64 = 65536;
/// The source: 4 MiB of data.
const SIZE: u64 = 4 * MIB;
/// A block no backup after the first changes: all revisions share it.
const SHARED_BLOCK: u64 = 10 * BS;
/// A block the third backup changes: only the newest revision holds its extent.
const NEWEST_BLOCK: u64 = 40 * BS;

fn status_json(job: &Path) -> Vec<serde_json::Value> {
    let r = run_ok(backy_job(job).args(["status", "--json"]));
    serde_json::from_str(&r.stdout).unwrap_or_else(|e| r.fail(&format!("bad JSON: {e}")))
}

/// Complete revisions' ids, newest first.
fn ids_newest_first(job: &Path) -> Vec<String> {
    let mut ids: Vec<String> = status_json(job)
        .iter()
        .filter(|r| r["complete"] == true)
        .map(|r| r["id"].as_str().unwrap().to_string())
        .collect();
    ids.reverse();
    ids
}

fn trust(job: &Path, id: &str) -> String {
    let revs = status_json(job);
    let rev = revs.iter().find(|r| r["id"] == id).expect("listed");
    rev["trust"].as_str().unwrap_or("trusted").to_string()
}

/// The `.rev` file's text.
fn rev_text(job: &Path, id: &str) -> String {
    fs::read_to_string(job.join(format!("{id}.rev"))).unwrap()
}

/// A job with three revisions of a 4 MiB source: the second backup changes
/// block 20, the third block 40 ([`NEWEST_BLOCK`]); block 10 ([`SHARED_BLOCK`])
/// is one extent shared by all three. Returns (source, job, ids newest first).
fn three_revisions(fs: &TestFs) -> (PathBuf, PathBuf, Vec<String>) {
    let (src, job) = (fs.join("src.img"), fs.join("job"));
    write_file(&src, SIZE, &[(0, &pattern_bytes(1, SIZE as usize))]);
    run_ok(backy_job(&job).args(["init", "file"]).arg(&src));
    run_ok(backy_job(&job).args(["backup", "daily"]));
    write_at(&src, 20 * BS, &pattern_bytes(2, BS as usize));
    run_ok(backy_job(&job).args(["backup", "daily"]));
    write_at(&src, NEWEST_BLOCK, &pattern_bytes(3, BS as usize));
    run_ok(backy_job(&job).args(["backup", "daily"]));
    let ids = ids_newest_first(&job);
    assert_eq!(ids.len(), 3);
    (src, job, ids)
}

/// How the damage reads back on `kind`.
fn damage_words(kind: FsKind) -> &'static str {
    match kind {
        FsKind::Btrfs => "cannot be read",
        _ => "differ from their checksums",
    }
}

fn verify(job: &Path, args: &[&str]) -> Run {
    run(backy_job(job).arg("verify").args(args))
}

// ---------------------------------------------------------------------------

/// A flip in an extent all three revisions share: verify finds it with its
/// offset in the newest and distrusts the other two without reading them,
/// saying that 3 revisions share the damaged extent.
fn shared_extent_case(kind: FsKind) {
    let fs = require_fs!(kind, 300);
    let (_src, job, ids) = three_revisions(&fs);
    flip_on_disk(&fs, &job, &ids[0], SHARED_BLOCK);

    let r = verify(&job, &[]).code(1);
    let line = format!(
        "3 revisions share the damaged extent at offset {SHARED_BLOCK}: {}, {}, {}",
        ids[0], ids[1], ids[2]
    );
    assert!(r.stdout.contains(&line), "{line:?} not in\n{}", r.stdout);
    r.stdout_has(&format!(
        "{} distrusted: blocks at offsets {SHARED_BLOCK} {}",
        ids[0],
        damage_words(kind)
    ))
    .stdout_has(&format!(
        "{} distrusted: shares the damaged extents of revision {} at offsets {SHARED_BLOCK}",
        ids[1], ids[0]
    ))
    .stdout_has("0 verified, 3 distrusted")
    .stderr_has("failed verification and are now distrusted")
    .stderr_has(&format!(
        "Revision {}: not read, it shares the damaged extents of revision {}",
        ids[2], ids[0]
    ));
    for id in &ids {
        assert_eq!(trust(&job, id), "distrusted", "{id}");
        let text = rev_text(&job, id);
        assert!(text.contains("bad_offsets:"), "{text}");
        assert!(text.contains(&format!("- {SHARED_BLOCK}")), "{text}");
    }
    assert!(rev_text(&job, &ids[0]).contains("scope: full"));
    assert!(rev_text(&job, &ids[1]).contains("scope: shared"));
    assert!(rev_text(&job, &ids[1]).contains(&format!("damage_from: {}", ids[0])));
}

/// Only the `-r` revision is read; the damage is followed to its sharers.
fn one_revision_follows_the_damage_case(kind: FsKind) {
    let fs = require_fs!(kind, 300);
    let (_src, job, ids) = three_revisions(&fs);
    flip_on_disk(&fs, &job, &ids[2], SHARED_BLOCK);
    let r = verify(&job, &["-r", &ids[2]]).code(1);
    r.stdout_has(&format!(
        "3 revisions share the damaged extent at offset {SHARED_BLOCK}: {}, {}, {}",
        ids[2], ids[0], ids[1]
    ))
    .stdout_has("0 verified, 3 distrusted");
    for id in &ids {
        assert_eq!(trust(&job, id), "distrusted", "{id}");
    }
}

#[test]
fn a_flip_in_a_shared_extent_distrusts_every_sharer_on_btrfs() {
    shared_extent_case(FsKind::Btrfs);
}

#[test]
fn a_flip_in_a_shared_extent_distrusts_every_sharer_on_xfs() {
    shared_extent_case(FsKind::Xfs);
}

#[test]
fn verifying_one_revision_follows_its_damage_into_sharers_on_btrfs() {
    one_revision_follows_the_damage_case(FsKind::Btrfs);
}

#[test]
fn verifying_one_revision_follows_its_damage_into_sharers_on_xfs() {
    one_revision_follows_the_damage_case(FsKind::Xfs);
}

/// A flip in the extent only the newest revision holds distrusts only it.
fn unshared_extent_case(kind: FsKind) {
    let fs = require_fs!(kind, 300);
    let (_src, job, ids) = three_revisions(&fs);
    flip_on_disk(&fs, &job, &ids[0], NEWEST_BLOCK);
    verify(&job, &[])
        .code(1)
        .stdout_has(&format!(
            "{} distrusted: blocks at offsets {NEWEST_BLOCK} {}",
            ids[0],
            damage_words(kind)
        ))
        .stdout_has(&format!("{} verified (64 blocks)", ids[1]))
        .stdout_has(&format!("{} verified (64 blocks)", ids[2]))
        .stdout_has("2 verified, 1 distrusted");
    assert_eq!(trust(&job, &ids[0]), "distrusted");
    assert_eq!(trust(&job, &ids[1]), "verified");
    assert_eq!(trust(&job, &ids[2]), "verified");
    // With `-r`, the older revisions' own block 40 is read and found good.
    let r = verify(&job, &["-r", &ids[0]]).code(1);
    assert!(!r.stdout.contains("share the damaged"), "{}", r.stdout);
    assert_eq!(trust(&job, &ids[1]), "verified");
}

#[test]
fn a_flip_in_an_unshared_extent_distrusts_only_its_revision_on_btrfs() {
    unshared_extent_case(FsKind::Btrfs);
}

#[test]
fn a_flip_in_an_unshared_extent_distrusts_only_its_revision_on_xfs() {
    unshared_extent_case(FsKind::Xfs);
}

/// A distrusted newest revision: the next backup compares the whole source
/// with it, writes every block that differs (also one it cannot read), and
/// the new revision verifies; the restored image is the source.
fn heal_case(kind: FsKind) {
    let fs = require_fs!(kind, 300);
    let (src, job, ids) = three_revisions(&fs);
    flip_on_disk(&fs, &job, &ids[0], SHARED_BLOCK);
    verify(&job, &["-r", "0"]).code(1);
    assert_eq!(trust(&job, &ids[0]), "distrusted");

    let r = run_ok(backy_job(&job).args(["-v", "backup", "daily"])).stderr_has(&format!(
        "Parent {} is distrusted: comparing the whole source",
        ids[0]
    ));
    if kind == FsKind::Btrfs {
        // btrfs refuses the damaged block (its checksum fails): it is written
        // from the source without comparing.
        r.stderr_has(&format!(
            "The block at offset {SHARED_BLOCK} of the parent's data is unreadable"
        ));
    }
    let now = ids_newest_first(&job);
    assert_eq!(now.len(), 4);
    let healed = &now[0];
    // The damaged block was written anew; the others are still shared.
    let at = |id: &str, offset: u64| {
        device_offset_on(fs.kind(), fs.device().unwrap(), &job.join(id), offset)
    };
    assert_ne!(at(healed, SHARED_BLOCK), at(&ids[0], SHARED_BLOCK));
    assert_eq!(at(healed, 0), at(&ids[0], 0));
    verify(&job, &["-r", healed])
        .success()
        .stdout_has(&format!("{healed} verified (64 blocks)"))
        .stdout_has("1 verified, 0 distrusted");
    assert_eq!(trust(&job, healed), "verified");
    let out = fs.join("restored");
    run_ok(backy_job(&job).args(["restore", "-r", healed]).arg(&out));
    assert_same_content(&out, &src);
}

#[test]
fn the_backup_after_a_distrusted_newest_revision_is_good_on_btrfs() {
    heal_case(FsKind::Btrfs);
}

#[test]
fn the_backup_after_a_distrusted_newest_revision_is_good_on_xfs() {
    heal_case(FsKind::Xfs);
}

/// `--sample 10` checks a tenth of the blocks (at least one) and records the
/// check as partial; a bad percentage is refused.
fn sample_case(kind: FsKind) {
    let fs = require_fs!(kind, 300);
    let (_src, job, ids) = three_revisions(&fs);
    verify(&job, &["--sample", "10"])
        .success()
        .stdout_has(&format!("{} verified (10 % sampled, 7 blocks)", ids[0]))
        .stdout_has("3 verified, 0 distrusted");
    for id in &ids {
        let text = rev_text(&job, id);
        assert!(text.contains("scope: sample"), "{text}");
        assert!(text.contains("sample_percent: 10"), "{text}");
        assert!(text.contains("blocks_checked: 7"), "{text}");
        assert_eq!(trust(&job, id), "verified");
    }
    let table = run_ok(backy_job(&job).arg("status")).stdout;
    assert!(table.contains("| verified (10 %) |"), "{table}");
    for bad in ["0", "101", "ten"] {
        run(backy_job(&job).args(["verify", "--sample", bad]))
            .code(2)
            .stderr_has("--sample");
    }
    // A sample of 100 % is all blocks, still recorded as a sample.
    verify(&job, &["-r", "0", "--sample", "100"])
        .success()
        .stdout_has("(100 % sampled, 64 blocks)");
}

#[test]
fn a_sample_is_recorded_as_partial_on_btrfs() {
    sample_case(FsKind::Btrfs);
}

#[test]
fn a_sample_is_recorded_as_partial_on_xfs() {
    sample_case(FsKind::Xfs);
}

/// A revision without a manifest is not verifiable and not reported as good.
fn no_manifest_case(kind: FsKind) {
    let fs = require_fs!(kind, 300);
    let (_src, job, ids) = three_revisions(&fs);
    fs::remove_file(job.join(format!("{}.sums", ids[1]))).unwrap();
    verify(&job, &[])
        .code(1)
        .stdout_has(&format!("{} not verifiable", ids[1]))
        .stdout_has("2 verified, 0 distrusted, 1 not verifiable (no manifest)")
        .stderr_has("have no checksum manifest and were not verified");
    assert_eq!(trust(&job, &ids[1]), "trusted");
    verify(&job, &["-r", &ids[1]])
        .code(1)
        .stderr_has("checksum manifest");
}

#[test]
fn a_revision_without_manifest_is_not_reported_as_good_on_btrfs() {
    no_manifest_case(FsKind::Btrfs);
}

#[test]
fn a_revision_without_manifest_is_not_reported_as_good_on_xfs() {
    no_manifest_case(FsKind::Xfs);
}

/// A block that differs when first read but is right when read again past
/// the page cache (the `verify-misread` failpoint garbles the first read of
/// the first data block) is a transient error, not damage.
fn transient_case(kind: FsKind) {
    let fs = require_fs!(kind, 300);
    let (_src, job, ids) = three_revisions(&fs);
    run(backy_job(&job)
        .args(["verify", "-r", "0"])
        .env("BACKY_FAILPOINT", "verify-misread"))
    .success()
    .stderr_has("The block at offset 0 differed from its checksum but is right when read again past the page cache")
    .stdout_has(&format!("{} verified (64 blocks)", ids[0]));
    assert_eq!(trust(&job, &ids[0]), "verified");
}

#[test]
fn a_transient_misread_is_not_reported_as_damage_on_btrfs() {
    transient_case(FsKind::Btrfs);
}

#[test]
fn a_transient_misread_is_not_reported_as_damage_on_xfs() {
    transient_case(FsKind::Xfs);
}

/// Damage nobody verified yet: the next backup's own verification finds the
/// inherited bad block (on btrfs an unreadable one), distrusts the parent and
/// makes the revision again against the whole source, which is then good.
fn undetected_damage_case(kind: FsKind) {
    let fs = require_fs!(kind, 300);
    let (src, job, ids) = three_revisions(&fs);
    flip_on_disk(&fs, &job, &ids[0], SHARED_BLOCK);
    run_ok(backy_job(&job).args(["-v", "backup", "daily"]))
        .stderr_has(&format!("Parent {} is damaged on disk", ids[0]))
        .stderr_has(&format!("(offsets {SHARED_BLOCK})"))
        .stderr_has("is healed");
    assert_eq!(trust(&job, &ids[0]), "distrusted");
    let healed = ids_newest_first(&job)[0].clone();
    verify(&job, &["-r", &healed])
        .success()
        .stdout_has(&format!("{healed} verified (64 blocks)"));
    let out = fs.join("restored");
    run_ok(backy_job(&job).args(["restore", "-r", &healed]).arg(&out));
    assert_same_content(&out, &src);
}

#[test]
fn a_backup_over_undetected_damage_heals_on_btrfs() {
    undetected_damage_case(FsKind::Btrfs);
}

#[test]
fn a_backup_over_undetected_damage_heals_on_xfs() {
    undetected_damage_case(FsKind::Xfs);
}

/// `-r` of the newest with damage at block 40, which the older two hold in
/// another extent, damaged too: their block 40 is read on its own (scope
/// `blocks`), found bad, and followed further into the revision sharing it.
fn followed_into_own_damage_case(kind: FsKind) {
    let fs = require_fs!(kind, 300);
    let (_src, job, ids) = three_revisions(&fs);
    flip_on_disk(&fs, &job, &ids[0], NEWEST_BLOCK);
    flip_on_disk(&fs, &job, &ids[1], NEWEST_BLOCK);
    verify(&job, &["-r", &ids[0]])
        .code(1)
        .stdout_has(&format!(
            "{} distrusted (following the damage of revision {}): blocks at offsets {NEWEST_BLOCK} {}",
            ids[1],
            ids[0],
            damage_words(kind)
        ))
        .stdout_has(&format!(
            "2 revisions share the damaged extent at offset {NEWEST_BLOCK}: {}, {}",
            ids[1], ids[2]
        ))
        .stdout_has("0 verified, 3 distrusted");
    let text = rev_text(&job, &ids[1]);
    assert!(
        text.contains("scope: blocks") && text.contains("blocks_checked: 1"),
        "{text}"
    );
    let text = rev_text(&job, &ids[2]);
    assert!(text.contains("scope: shared"), "{text}");
    assert!(text.contains(&format!("damage_from: {}", ids[1])), "{text}");
}

#[test]
fn damage_is_followed_through_blocks_read_on_their_own_on_btrfs() {
    followed_into_own_damage_case(FsKind::Btrfs);
}

#[test]
fn damage_is_followed_through_blocks_read_on_their_own_on_xfs() {
    followed_into_own_damage_case(FsKind::Xfs);
}
