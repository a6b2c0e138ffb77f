//! `backy send | backy receive` between two loop filesystems (issue 14): the
//! received revisions equal the sent ones byte for byte, manifests included,
//! share as the source shares, survive kills of either side at random
//! moments, refuse the wrong base, detect damage and a full disk.

mod util;

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::io::Read;
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use util::*;

const MIB: u64 = 1 << 20;

/// `status --json`; empty for a target a killed receive never created.
fn status_json(job: &Path) -> Vec<serde_json::Value> {
    if !job.exists() {
        return Vec::new();
    }
    let r = run_ok(backy_job(job).args(["status", "--json"]));
    serde_json::from_str(&r.stdout).unwrap()
}

fn complete_ids(job: &Path) -> Vec<String> {
    status_json(job)
        .iter()
        .filter(|r| r["complete"] == true)
        .map(|r| r["id"].as_str().unwrap().to_string())
        .collect()
}

/// A small deterministic random generator for offsets and sizes.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// A source job on `fs` with `revisions` backups of a `size`-byte file:
/// data with holes, then per revision scattered writes (4 KiB to 96 KiB at
/// 4 KiB pages), a region overwritten with zeros, and once each a growth
/// and a shrink by an unaligned amount. Returns the job directory.
fn make_history(fs: &TestFs, size: u64, revisions: usize, seed: u64) -> PathBuf {
    let source = fs.join("source.img");
    let mut rng = Rng(seed);
    let mut writes: Vec<(u64, Vec<u8>)> = Vec::new();
    for i in 0..size / MIB {
        if i % 4 != 3 {
            writes.push((i * MIB, pattern_bytes(seed ^ i, (MIB / 2) as usize)));
        }
    }
    let refs: Vec<(u64, &[u8])> = writes.iter().map(|(o, d)| (*o, &d[..])).collect();
    write_file(&source, size, &refs);
    let job = fs.join("job");
    run_ok(
        backy()
            .arg("-b")
            .arg(&job)
            .args(["init", "file"])
            .arg(&source),
    );
    let mut current = size;
    for r in 0..revisions {
        if r > 0 {
            for _ in 0..12 {
                let len = (1 + rng.below(24)) * 4096;
                let at = rng.below(current.saturating_sub(len) / 4096) * 4096;
                write_at(&source, at, &pattern_bytes(rng.next(), len as usize));
            }
            if r % 3 == 0 {
                let at = rng.below(current / 4096 - 32) * 4096;
                write_at(&source, at, &vec![0u8; 20 * 4096]);
            }
            let file = fs::OpenOptions::new().write(true).open(&source).unwrap();
            if r == revisions / 2 {
                current += 3 * 65536 + 1234;
                file.set_len(current).unwrap();
                file.write_all_at(b"grown tail", current - 10).unwrap();
            } else if r == revisions * 3 / 4 {
                current -= 65536 + 4321;
                file.set_len(current).unwrap();
            }
        }
        run_ok(backy_job(&job).args(["backup", "daily"]));
    }
    job
}

/// Runs `backy send ARGS | backy receive` and returns both runs' stderr
/// (and whether each succeeded).
fn send_receive(from: &Path, to: &Path, args: &[&str]) -> (Output, Output) {
    let (mut sender, mut receiver) = spawn_pair(from, to, args);
    let receiver_out = collect(&mut receiver);
    let sender_out = collect(&mut sender);
    (sender_out, receiver_out)
}

/// What a finished child did.
struct Output {
    ok: bool,
    stderr: String,
}

fn collect(child: &mut Child) -> Output {
    let mut stdout = Vec::new();
    let mut stderr = String::new();
    if let Some(mut s) = child.stdout.take() {
        s.read_to_end(&mut stdout).unwrap();
    }
    if let Some(mut s) = child.stderr.take() {
        s.read_to_string(&mut stderr).unwrap();
    }
    let ok = child.wait().unwrap().success();
    Output { ok, stderr }
}

/// Starts `send ARGS` on `from` piped into `receive` on `to`. Their stderr
/// goes to files read when collected, so neither can block on it.
fn spawn_pair(from: &Path, to: &Path, args: &[&str]) -> (Child, Child) {
    let mut sender = backy_job(from)
        .arg("send")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let receiver = backy_job(to)
        .arg("receive")
        .stdin(sender.stdout.take().unwrap())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    (sender, receiver)
}

/// Panics unless every complete revision of `to` equals the one of `from`
/// with the same id: image, manifest and metadata, byte for byte.
fn assert_same_revisions(from: &Path, to: &Path, ids: &[String]) {
    for id in ids {
        assert_same_content(&from.join(id), &to.join(id));
        assert_same_content(
            &from.join(format!("{id}.sums")),
            &to.join(format!("{id}.sums")),
        );
        assert_eq!(
            fs::read_to_string(from.join(format!("{id}.rev"))).unwrap(),
            fs::read_to_string(to.join(format!("{id}.rev"))).unwrap(),
            "metadata of {id}"
        );
        let mode = fs::metadata(to.join(id)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o440, "mode of received image {id}");
    }
}

/// Bytes on disk that the revision files of `job` use: the union of their
/// physical extents (shared extents counted once), so two job directories
/// that share alike compare alike whatever the filesystem.
fn physical_bytes(job: &Path) -> u64 {
    run_ok(std::process::Command::new("sync").arg("-f").arg(job));
    let mut ranges: Vec<(u64, u64)> = Vec::new();
    let mut unlocated = 0;
    for entry in fs::read_dir(job).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if !path.is_file() || name.starts_with('.') || name.ends_with(".rev") || name == "config" {
            continue;
        }
        let file = File::open(&path).unwrap();
        for e in backy::image::fiemap::extents(&file, true).unwrap() {
            if e.has_location() {
                ranges.push((e.physical, e.physical + e.length));
            } else {
                unlocated += e.length;
            }
        }
    }
    ranges.sort();
    let mut total = 0;
    let mut end = 0;
    for (s, e) in ranges {
        let s = s.max(end);
        if e > s {
            total += e - s;
            end = e;
        }
    }
    total + unlocated
}

/// The "read N bytes of images" figure `send` logs.
fn bytes_read(sender_log: &str) -> u64 {
    let at = sender_log
        .find("; read ")
        .unwrap_or_else(|| panic!("no read figure in:\n{sender_log}"));
    sender_log[at + 7..]
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

fn changed_bytes(job: &Path) -> u64 {
    status_json(job)
        .iter()
        .map(|r| {
            let id = r["id"].as_str().unwrap();
            let rev = backy::revision::Revision::load(&job.join(format!("{id}.rev")), id).unwrap();
            rev.stat_u64("bytes_changed").unwrap()
        })
        .sum()
}

fn replicate_history(from_kind: FsKind, to_kind: FsKind) {
    let src = require_fs!(from_kind, 700);
    let dst = require_fs!(to_kind, 700);
    let job = make_history(&src, 32 * MIB, 20, 14);
    let target = dst.join("vm01");
    let ids = complete_ids(&job);
    assert_eq!(ids.len(), 20);

    let (sender, receiver) = send_receive(&job, &target, &[]);
    assert!(
        sender.ok && receiver.ok,
        "{}\n{}",
        sender.stderr,
        receiver.stderr
    );
    assert_eq!(complete_ids(&target), ids);
    assert_same_revisions(&job, &target, &ids);
    run_ok(backy_job(&target).arg("verify"));
    assert!(
        target.join("config").exists(),
        "the sender's config is installed"
    );

    // The sender reads at most twice what the backups changed.
    let read = bytes_read(&sender.stderr);
    let changed = changed_bytes(&job);
    assert!(
        read <= 2 * changed,
        "send read {read} bytes for {changed} changed bytes"
    );
    // The target shares as the source does.
    let (a, b) = (physical_bytes(&job), physical_bytes(&target));
    eprintln!(
        "{from_kind:?} -> {to_kind:?}: read {read} bytes for {changed} changed; on disk {a} source, {b} target"
    );
    // At most as much as the source: the source's backups also rewrote some
    // unchanged pages to end writes on extent edges (README "Where writes
    // end"), which a receive, writing only the blocks that differ, need not.
    let over = b as f64 / a as f64 - 1.0;
    assert!(
        over <= 0.02,
        "source uses {a} bytes on disk, target {b} ({:+.1} %)",
        over * 100.0
    );

    // The received job takes further backups as if it had been made there.
    run_ok(backy_job(&target).args(["backup", "daily"]));
    let revs = status_json(&target);
    let newest = revs.last().unwrap();
    assert_eq!(newest["parent"], ids.last().unwrap().as_str());
    let new_image = PathBuf::from(newest["image"].as_str().unwrap());
    assert!(
        exclusive_bytes(&dst, &new_image) < MIB,
        "the new revision shares with the received one"
    );
}

#[test]
fn twenty_revisions_btrfs_to_xfs() {
    replicate_history(FsKind::Btrfs, FsKind::Xfs);
}

#[test]
fn twenty_revisions_xfs_to_btrfs() {
    replicate_history(FsKind::Xfs, FsKind::Btrfs);
}

/// What the target holds: names of its files and the bytes of each `.rev`.
fn snapshot(job: &Path) -> BTreeMap<String, (Vec<u8>, u64)> {
    fs::read_dir(job)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file() && !p.file_name().unwrap().to_string_lossy().starts_with('.'))
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            let bytes = if name.ends_with(".rev") {
                fs::read(&p).unwrap()
            } else {
                Vec::new()
            };
            let mtime = fs::metadata(&p)
                .unwrap()
                .modified()
                .unwrap()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64;
            (name, (bytes, mtime))
        })
        .collect()
}

/// Every complete revision of `target` equals the source's; hashed once per id.
fn check_consistent(job: &Path, target: &Path, checked: &mut BTreeSet<String>) {
    let complete = complete_ids(target);
    let fresh: Vec<String> = complete
        .iter()
        .filter(|id| checked.insert((*id).clone()))
        .cloned()
        .collect();
    assert_same_revisions(job, target, &fresh);
    let source_ids = complete_ids(job);
    let pos: Vec<usize> = complete
        .iter()
        .map(|id| {
            source_ids
                .iter()
                .position(|s| s == id)
                .expect("a source revision")
        })
        .collect();
    assert!(
        pos.iter().enumerate().all(|(i, &p)| p == i),
        "the target holds a gap: {complete:?}"
    );
}

/// kill -9 of the sender or the receiver at random moments, at least 20
/// times: the target keeps only complete, correct revisions (plus at most
/// one incomplete), and a resumed send completes it.
#[test]
fn killed_sender_or_receiver_leaves_the_target_consistent() {
    let src = require_fs!(FsKind::Btrfs, 600);
    let dst = require_fs!(FsKind::Xfs, 600);
    let job = make_history(&src, 16 * MIB, 6, 99);
    let all = complete_ids(&job);
    let mut rng = Rng(7);
    let mut kills = 0;
    let mut round = 0;
    let mut target = dst.join("t0");
    let mut checked = BTreeSet::new();
    // A full transfer's duration bounds the random delay.
    let started = Instant::now();
    let (s, r) = send_receive(&job, &target, &[]);
    assert!(s.ok && r.ok, "{}", r.stderr);
    let full = started.elapsed();
    while kills < 20 {
        round += 1;
        assert!(round < 200, "only {kills} kills hit a running transfer");
        if complete_ids(&target).len() == all.len() {
            check_consistent(&job, &target, &mut checked);
            target = dst.join(format!("t{round}"));
            checked.clear();
        }
        // Resume from what the target holds: half with --base, half skipping.
        let newest = run_ok(backy_job(&target).args(["receive", "--have", "--newest"]))
            .stdout
            .trim()
            .to_string();
        let base = format!("--base={newest}");
        let args: Vec<&str> = if round % 2 == 0 { vec![&base] } else { vec![] };
        let (mut sender, mut receiver) = spawn_pair(&job, &target, &args);
        let delay = Duration::from_micros(rng.below(full.as_micros() as u64 + 1));
        std::thread::sleep(delay);
        let victim = if rng.below(2) == 0 {
            &mut sender
        } else {
            &mut receiver
        };
        if victim.try_wait().unwrap().is_none() {
            victim.kill().unwrap();
            kills += 1;
        }
        collect(&mut receiver);
        collect(&mut sender);
        check_consistent(&job, &target, &mut checked);
        let incomplete = status_json(&target)
            .iter()
            .filter(|r| r["complete"] != true)
            .count();
        assert!(incomplete <= 1, "{incomplete} incomplete revisions");
    }
    // Resume until complete.
    let newest = run_ok(backy_job(&target).args(["receive", "--have", "--newest"]));
    let base = format!("--base={}", newest.stdout.trim());
    let (s, r) = send_receive(&job, &target, &[&base]);
    assert!(s.ok && r.ok, "{}", r.stderr);
    assert_eq!(complete_ids(&target), all);
    check_consistent(&job, &target, &mut checked);
    run_ok(backy_job(&target).arg("verify"));
    assert!(status_json(&target).iter().all(|r| r["complete"] == true));
}

fn send_to_file(job: &Path, args: &[&str], path: &Path) {
    let out = File::create(path).unwrap();
    let status = backy_job(job)
        .arg("send")
        .args(args)
        .stdout(out)
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
}

fn receive_file(target: &Path, stream: &Path, extra: &[&str]) -> Run {
    run(std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "exec \"$0\" -b \"$1\" receive {} < \"$2\"",
            extra.join(" ")
        ))
        .arg(env!("CARGO_BIN_EXE_backy"))
        .arg(target)
        .arg(stream))
}

/// A flipped byte anywhere is refused and completes nothing in doubt; the
/// intact stream then arrives, and replaying it changes nothing.
#[test]
fn a_flipped_byte_is_detected_and_a_replay_changes_nothing() {
    let src = require_fs!(FsKind::Btrfs, 400);
    let job = make_history(&src, 8 * MIB, 4, 3);
    let stream = src.join("stream");
    send_to_file(&job, &[], &stream);
    let good = fs::read(&stream).unwrap();
    let target = src.join("target");
    let mut checked = BTreeSet::new();
    let mut rng = Rng(5);
    for _ in 0..12 {
        let mut bad = good.clone();
        let at = rng.below(bad.len() as u64) as usize;
        bad[at] ^= 1 << rng.below(8);
        let bad_path = src.join("bad");
        fs::write(&bad_path, &bad).unwrap();
        receive_file(&target, &bad_path, &[])
            .failure()
            .stderr_has("stream");
        if target.exists() {
            check_consistent(&job, &target, &mut checked);
        }
    }
    // Cut short: refused too.
    fs::write(src.join("cut"), &good[..good.len() / 2]).unwrap();
    receive_file(&target, &src.join("cut"), &[])
        .failure()
        .stderr_has("ends at byte");
    receive_file(&target, &stream, &[]).success();
    assert_eq!(complete_ids(&target), complete_ids(&job));
    check_consistent(&job, &target, &mut checked);
    assert!(status_json(&target).iter().all(|r| r["complete"] == true));
    let before = snapshot(&target);
    receive_file(&target, &stream, &[]).success();
    receive_file(&target, &stream, &["--dry-run"])
        .success()
        .stdout_has("would be skipped");
    assert_eq!(snapshot(&target), before, "a replay changed the target");
}

/// The receiver refuses a base it does not hold, holds with another
/// manifest (the same id), or distrusts; `--dry-run` says what it would do
/// and changes nothing.
#[test]
fn the_wrong_base_is_refused() {
    let src = require_fs!(FsKind::Btrfs, 400);
    let job = make_history(&src, 8 * MIB, 4, 11);
    let ids = complete_ids(&job);
    let target = src.join("target");
    let (s, r) = send_receive(&job, &target, &["-r", &ids[1]]);
    assert!(s.ok && r.ok, "{}", r.stderr);
    assert_eq!(complete_ids(&target), ids[..2]);

    // A base newer than -r: refused by the sender.
    run(backy_job(&job)
        .args(["send", "-r", &ids[0], "--base", &ids[1]])
        .stdout(Stdio::null()))
    .failure()
    .stderr_has("is not older than");

    // A base the target does not hold.
    let stream = src.join("from2");
    send_to_file(&job, &["--base", &ids[2]], &stream);
    receive_file(&target, &stream, &[])
        .failure()
        .stderr_has(&format!("continues from revision {}", ids[2]));

    // Dry run of a fitting stream: says what, changes nothing.
    send_to_file(&job, &["--base", &ids[1]], &stream);
    let before = snapshot(&target);
    receive_file(&target, &stream, &["--dry-run"])
        .success()
        .stdout_has(&format!("revision {} would be received", ids[2]))
        .stdout_has(&format!("revision {} would be received", ids[3]));
    assert_eq!(snapshot(&target), before);

    // The same id with another manifest.
    let sums = target.join(format!("{}.sums", ids[1]));
    fs::set_permissions(&sums, fs::Permissions::from_mode(0o640)).unwrap();
    let f = fs::OpenOptions::new().write(true).open(&sums).unwrap();
    f.write_all_at(&[0xAB; 32], 4096 + 32 * 5).unwrap();
    drop(f);
    receive_file(&target, &stream, &[])
        .failure()
        .stderr_has("different checksum manifest");
    receive_file(&target, &stream, &["--dry-run"])
        .failure()
        .stderr_has("different checksum manifest");
    assert_eq!(complete_ids(&target), ids[..2]);

    // A distrusted base.
    let rev_path = target.join(format!("{}.rev", ids[0]));
    let text = fs::read_to_string(&rev_path).unwrap();
    fs::set_permissions(&rev_path, fs::Permissions::from_mode(0o640)).unwrap();
    fs::write(&rev_path, format!("{text}trust: distrusted\n")).unwrap();
    send_to_file(&job, &["--base", &ids[0], "-r", &ids[1]], &stream);
    receive_file(&target, &stream, &[])
        .failure()
        .stderr_has("distrusted");
}

/// A target filesystem that fills up: a clear message, the revision in
/// progress removed, the complete ones untouched; space freed, it resumes.
#[test]
fn a_full_target_disk_fails_clearly() {
    let src = require_fs!(FsKind::Btrfs, 700);
    let dst = require_fs!(FsKind::Btrfs, 128);
    let source = src.join("source.img");
    write_file(
        &source,
        200 * MIB,
        &[(0, &pattern_bytes(1, (8 * MIB) as usize))],
    );
    let job = src.join("job");
    run_ok(
        backy()
            .arg("-b")
            .arg(&job)
            .args(["init", "file"])
            .arg(&source),
    );
    run_ok(backy_job(&job).args(["backup", "daily"]));
    write_at(&source, 16 * MIB, &pattern_bytes(2, (150 * MIB) as usize));
    run_ok(backy_job(&job).args(["backup", "daily"]));
    let ids = complete_ids(&job);
    let target = dst.join("vm01");
    let (_, r) = send_receive(&job, &target, &[]);
    assert!(!r.ok, "the receive fit: {}", r.stderr);
    assert!(
        r.stderr.contains("is full") && r.stderr.contains(&ids[1]),
        "{}",
        r.stderr
    );
    assert!(!r.stderr.contains("panicked"), "{}", r.stderr);
    assert_eq!(complete_ids(&target), ids[..1]);
    assert!(status_json(&target).iter().all(|r| r["complete"] == true));
    assert_same_revisions(&job, &target, &ids[..1]);
    run_ok(backy_job(&target).arg("verify"));
}

/// `receive --have` of a job that does not exist yet is an empty list.
#[test]
fn have_of_a_missing_job_is_empty() {
    let dir = tempfile::tempdir().unwrap();
    let job = dir.path().join("job");
    let have = run_ok(backy_job(&job).args(["receive", "--have"]));
    assert_eq!(have.stdout.trim(), "[]");
    let newest = run_ok(backy_job(&job).args(["receive", "--have", "--newest"]));
    assert_eq!(newest.stdout.trim(), "");
    assert!(!job.exists());
}

/// The fuzz seeds (`fuzz/seeds/send_stream/`) are real streams of a small job
/// (under the 16 KiB the fuzz script feeds): `BACKY_REGENERATE_SEEDS=1`
/// writes them anew; otherwise every committed seed must be a stream that
/// `receive --dry-run` accepts.
#[test]
fn fuzz_seeds_come_from_real_streams() {
    let seeds = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds/send_stream");
    if std::env::var_os("BACKY_REGENERATE_SEEDS").is_some() {
        let fs = require_fs!(FsKind::Btrfs, 128);
        let source = fs.join("source.img");
        let size = 3 * 65536 + 3000;
        write_file(&source, size, &[(size - 5, b"tail!")]);
        let job = fs.join("job");
        run_ok(
            backy()
                .arg("-b")
                .arg(&job)
                .args(["init", "file"])
                .arg(&source),
        );
        run_ok(backy_job(&job).args(["backup", "daily"]));
        write_at(&source, 0, &[0u8; 10]);
        write_at(&source, 2 * 65536 + 8192, b"changed page");
        run_ok(backy_job(&job).args(["backup", "daily"]));
        let grown = fs::OpenOptions::new().write(true).open(&source).unwrap();
        grown.set_len(size + 65536 + 100).unwrap();
        grown.write_all_at(b"grown", size + 65536 + 95).unwrap();
        drop(grown);
        run_ok(backy_job(&job).args(["backup", "weekly"]));
        let ids = complete_ids(&job);
        fs::create_dir_all(&seeds).unwrap();
        // Whole streams (no base), which the fuzz target can receive into an empty job.
        for (name, args) in [
            ("first", vec!["-r", ids[0].as_str()]),
            ("three-revisions", vec![]),
        ] {
            send_to_file(&job, &args, &seeds.join(format!("{name}.stream")));
        }
    }
    let mut count = 0;
    for entry in fs::read_dir(&seeds).unwrap() {
        let path = entry.unwrap().path();
        assert!(
            fs::metadata(&path).unwrap().len() <= 16384,
            "{}",
            path.display()
        );
        let target = tempfile::tempdir().unwrap();
        receive_file(&target.path().join("job"), &path, &["--dry-run"]).success();
        count += 1;
    }
    assert!(count >= 2, "{count} seeds in {}", seeds.display());
}
