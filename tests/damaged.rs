//! Damaged job directories and clocks that were wrong (issue 9): unreadable
//! `.rev` files, images deleted behind backy's back, `last`/`last.rev` that are
//! not symlinks, and revisions dated in the future. The job keeps working,
//! nothing backy cannot read is deleted, and every command agrees on which
//! revision is the newest. On btrfs and XFS.

mod util;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use util::*;

const MIB: u64 = 1 << 20;

fn status_json(job: &Path) -> Vec<serde_json::Value> {
    let r = run_ok(backy_job(job).args(["status", "--json"]));
    serde_json::from_str(&r.stdout).unwrap_or_else(|e| r.fail(&format!("bad JSON: {e}")))
}

/// Ids of the complete, undamaged revisions, oldest first (as `status` lists them).
fn complete_ids(job: &Path) -> Vec<String> {
    status_json(job)
        .iter()
        .filter(|r| r["complete"] == true && r["damaged"].is_null())
        .map(|r| r["id"].as_str().unwrap().to_string())
        .collect()
}

/// The revision `find -r SPEC` prints.
fn find(job: &Path, spec: &str) -> PathBuf {
    let r = run_ok(backy_job(job).args(["find", "-r", spec]));
    PathBuf::from(r.stdout.trim())
}

fn backup(job: &Path, tags: &str) -> Run {
    run(backy_job(job).args(["backup", tags]))
}

/// A source of `size` bytes whose first `data` bytes hold data, at `src`, and a
/// job for it at `job` (initialised, no revision yet).
fn init_job(src: &Path, job: &Path, size: u64, data: usize) {
    write_file(src, size, &[(0, &pattern_bytes(1, data))]);
    run_ok(backy_job(job).args(["init", "file"]).arg(src));
}

/// The newest revision's id after a backup: the one that is new.
fn new_revision(job: &Path, before: &[String]) -> String {
    let ids = complete_ids(job);
    let new: Vec<&String> = ids.iter().filter(|id| !before.contains(id)).collect();
    assert_eq!(new.len(), 1, "{ids:?} vs {before:?}");
    new[0].clone()
}

/// Reads a `.rev` key's value (top level, plain scalar).
fn rev_value(job: &Path, id: &str, key: &str) -> String {
    let text = fs::read_to_string(job.join(format!("{id}.rev"))).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}: ")))
        .unwrap_or_else(|| panic!("no {key} in {text}"))
        .to_string()
}

/// Rewrites a complete (0440) `.rev`'s timestamp, as a clock that was ahead did.
fn set_timestamp(job: &Path, id: &str, timestamp: &str) {
    let path = job.join(format!("{id}.rev"));
    fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).unwrap();
    let text = fs::read_to_string(&path).unwrap();
    let text: String = text
        .lines()
        .map(|l| {
            if l.starts_with("timestamp:") {
                format!("timestamp: {timestamp}\n")
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    fs::write(&path, text).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o440)).unwrap();
}

/// A revision dated in the future stays in the one order with the others:
/// the next backup warns that the clock is behind and dates its revision
/// after it, so `last`, `find -r 0`, `find` (latest), `restore -r last`, the
/// parent of the backup after that and `status` all name the revision made
/// last, and `status` shows the ones dated in the future.
fn future_dated_revision(kind: FsKind) {
    let fs = require_fs!(kind, 300);
    let (src, job) = (fs.join("src.img"), fs.join("job"));
    init_job(&src, &job, 4 * MIB, MIB as usize);
    backup(&job, "daily").success();
    let ahead = complete_ids(&job)[0].clone();
    // The clock was a long way ahead when `ahead` was made, and was then corrected.
    set_timestamp(&job, &ahead, "2099-01-01 00:00:00.000000+00:00");

    write_at(&src, MIB, &pattern_bytes(2, MIB as usize));
    backup(&job, "daily")
        .success()
        .stderr_has("is behind the newest revision")
        .stderr_has(&ahead);
    let made = new_revision(&job, std::slice::from_ref(&ahead));

    // Everything agrees that `made` is the newest.
    assert_eq!(complete_ids(&job), vec![ahead.clone(), made.clone()]);
    assert_eq!(
        fs::read_link(job.join("last")).unwrap(),
        PathBuf::from(&made)
    );
    assert_eq!(
        fs::read_link(job.join("last.rev")).unwrap(),
        PathBuf::from(format!("{made}.rev"))
    );
    assert_eq!(find(&job, "0"), job.join(&made));
    assert_eq!(find(&job, "latest"), job.join(&made));
    assert_eq!(find(&job, "last"), job.join(&made));
    assert_eq!(find(&job, "1"), job.join(&ahead));
    let out = fs.join("restored");
    run_ok(backy_job(&job).args(["restore", "-r", "last"]).arg(&out));
    assert_same_content(&out, &src);
    // Its timestamp is after the future one: backy 2.1, which orders by
    // timestamp, agrees too.
    let ts = rev_value(&job, &made, "timestamp");
    assert!(ts.as_str() > "2099-01-01 00:00:00.000000", "{ts}");

    // `status` shows both as dated in the future.
    let r = run_ok(backy_job(&job).arg("status"));
    for id in [&ahead, &made] {
        assert!(
            r.stdout.lines().any(|l| l.starts_with("Warning: revision ")
                && l.contains(id.as_str())
                && l.contains("in the future")),
            "status does not flag {id}:\n{}",
            r.stdout
        );
    }
    let json = status_json(&job);
    assert!(json.iter().all(|r| r["future"] == true), "{json:?}");

    // The backup after that takes `made` as its parent, not `ahead`.
    write_at(&src, 2 * MIB, &pattern_bytes(3, MIB as usize));
    backup(&job, "daily").success();
    let next = new_revision(&job, &[ahead.clone(), made.clone()]);
    assert_eq!(rev_value(&job, &next, "parent"), made);
    assert_eq!(find(&job, "0"), job.join(&next));
    let _ = fs::remove_file(&out);
    run_ok(backy_job(&job).args(["restore", "-r", "0"]).arg(&out));
    assert_same_content(&out, &src);
    run_ok(backy_job(&job).arg("verify"));
}

#[test]
fn future_dated_revision_btrfs() {
    future_dated_revision(FsKind::Btrfs);
}

#[test]
fn future_dated_revision_xfs() {
    future_dated_revision(FsKind::Xfs);
}

/// The bytes of every file in the list, to prove they were left alone.
fn snapshot(paths: &[PathBuf]) -> Vec<(PathBuf, Vec<u8>)> {
    paths
        .iter()
        .map(|p| (p.clone(), fs::read(p).unwrap()))
        .collect()
}

#[track_caller]
fn assert_unchanged(saved: &[(PathBuf, Vec<u8>)]) {
    for (path, bytes) in saved {
        let now = fs::read(path).unwrap_or_else(|e| panic!("{} is gone: {e}", path.display()));
        assert!(&now == bytes, "{} changed", path.display());
    }
}

/// Unparsable `.rev` files (empty, junk, binary), a complete revision whose
/// image was deleted, a regular file as `last.rev` (what `cp -rL` leaves) and
/// a directory as `last`: `status` (and `--json`) names each with its reason,
/// `find`, `verify`, `restore` and `backup` work around them, the backup
/// repairs `last`/`last.rev` keeping copies, never takes a damaged revision
/// as its parent and deletes none of them, nor does expiry; only
/// `forget -r ID --force` removes them.
fn damaged_metadata(kind: FsKind) {
    let fs = require_fs!(kind, 300);
    let (src, job) = (fs.join("src.img"), fs.join("job"));
    init_job(&src, &job, 4 * MIB, MIB as usize);
    backup(&job, "daily").success();
    write_at(&src, MIB, &pattern_bytes(2, MIB as usize));
    backup(&job, "daily").success();
    let good = complete_ids(&job)[1].clone();
    let state_of_good = fs.join("state-of-good");
    fs::copy(&src, &state_of_good).unwrap();
    write_at(&src, 2 * MIB, &pattern_bytes(3, MIB as usize));
    backup(&job, "daily").success();
    let ids = complete_ids(&job);
    let gone = ids[2].clone();

    // The damage.
    let empty = job.join("Empty1.rev");
    fs::write(&empty, "").unwrap();
    fs::write(job.join("Empty1"), pattern_bytes(9, 4096)).unwrap();
    let junk = job.join("Junk2.rev");
    fs::write(&junk, "uuid: [Junk2\n  timestamp: {{{\n").unwrap();
    let binary = job.join("Bin3.rev");
    fs::write(&binary, [0u8, 0xff, 0xfe, 7, 0, 0x9f, 0x92]).unwrap();
    fs::remove_file(job.join(&gone)).unwrap();
    let gone_rev = job.join(format!("{gone}.rev"));
    fs::remove_file(job.join("last.rev")).unwrap();
    fs::copy(&gone_rev, job.join("last.rev")).unwrap();
    let last_rev_copy = fs::read(job.join("last.rev")).unwrap();
    fs::remove_file(job.join("last")).unwrap();
    fs::create_dir(job.join("last")).unwrap();
    fs::write(job.join("last").join("note"), "operator's file").unwrap();
    let damaged_files = vec![
        empty.clone(),
        job.join("Empty1"),
        junk.clone(),
        binary.clone(),
        gone_rev.clone(),
        job.join(format!("{gone}.sums")),
    ];
    let saved = snapshot(&damaged_files);

    // status names every damaged revision with its reason, and the links.
    let r = run_ok(backy_job(&job).arg("status"));
    let warned = |needles: &[&str]| {
        assert!(
            r.stdout
                .lines()
                .any(|l| l.starts_with("Warning: ") && needles.iter().all(|n| l.contains(n))),
            "status lacks a warning with {needles:?}:\n{}",
            r.stdout
        );
    };
    warned(&[
        "Empty1",
        empty.to_str().unwrap(),
        "the file is empty",
        "--force",
    ]);
    warned(&["Junk2", junk.to_str().unwrap()]);
    warned(&["Bin3", binary.to_str().unwrap(), "binary"]);
    warned(&[&gone, "the image is missing"]);
    warned(&["last.rev is a regular file instead of a symlink"]);
    warned(&["last is a directory instead of a symlink"]);
    assert!(
        r.stdout
            .contains("2 revisions containing 8.00 MiB data (estimated)\n"),
        "{}",
        r.stdout
    );
    let json = status_json(&job);
    for id in ["Empty1", "Junk2", "Bin3", gone.as_str()] {
        let entry = json
            .iter()
            .find(|e| e["id"] == id)
            .unwrap_or_else(|| panic!("{id} not in {json:?}"));
        assert!(entry["damaged"]["reason"].is_string(), "{entry}");
        assert!(entry["damaged"]["file"].is_string(), "{entry}");
        assert_eq!(entry["complete"], false, "{entry}");
    }

    // Readers work around them; a damaged revision is never chosen.
    assert_eq!(find(&job, "0"), job.join(&good));
    assert_eq!(find(&job, "daily"), job.join(&good));
    run(backy_job(&job).args(["find", "-r", &gone]))
        .failure()
        .stderr_has("is damaged")
        .stderr_has("--force");
    run_ok(backy_job(&job).arg("verify")).stderr_has("Not verified: revision Bin3 is damaged");
    let out = fs.join("restored");
    run_ok(backy_job(&job).args(["restore", "-r", "last"]).arg(&out));
    assert_same_content(&out, &state_of_good);

    // A backup works, takes the newest good revision as its parent, repairs
    // the links keeping what they were, and deletes nothing damaged.
    let r = backup(&job, "daily").success();
    r.stderr_has("moved it to");
    let made = new_revision(&job, &ids);
    assert_eq!(rev_value(&job, &made, "parent"), good);
    assert_eq!(
        fs::read_link(job.join("last")).unwrap(),
        PathBuf::from(&made)
    );
    assert_eq!(
        fs::read_link(job.join("last.rev")).unwrap(),
        PathBuf::from(format!("{made}.rev"))
    );
    let names: Vec<String> = fs::read_dir(&job)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    let kept = |prefix: &str| {
        names
            .iter()
            .find(|n| n.starts_with(prefix))
            .map(|n| job.join(n))
            .unwrap_or_else(|| panic!("no {prefix}* in {names:?}"))
    };
    assert_eq!(fs::read(kept("last.rev.bak-")).unwrap(), last_rev_copy);
    assert_eq!(
        fs::read_to_string(kept("last.bak-").join("note")).unwrap(),
        "operator's file"
    );
    assert_unchanged(&saved);
    let _ = fs::remove_file(&out);
    run_ok(backy_job(&job).args(["restore", "-r", "0"]).arg(&out));
    assert_same_content(&out, &src);
    assert!(
        !run_ok(backy_job(&job).arg("status"))
            .stdout
            .contains("instead of a symlink")
    );

    // Expiry (keep one daily) deletes old good revisions, never damaged ones.
    let conf = fs.join("backy.conf");
    fs::write(
        &conf,
        format!(
            "global: {{base-dir: {}}}\nschedules:\n  s:\n    daily: {{interval: 1s, keep: 1}}\njobs:\n  job: {{schedule: s, source: {{type: file, filename: {}}}}}\n",
            fs.path().display(),
            src.display()
        ),
    )
    .unwrap();
    run_ok(backy_job(&job).arg("expire").arg("-c").arg(&conf));
    assert_unchanged(&saved);
    assert!(complete_ids(&job).contains(&made));

    // Only `forget -r ID --force` removes a damaged revision.
    run(backy_job(&job).args(["forget", "-r", "Junk2"]))
        .failure()
        .stderr_has("is damaged")
        .stderr_has("forget -r Junk2 --force");
    assert_unchanged(&saved);
    for id in ["Empty1", "Junk2", "Bin3", gone.as_str()] {
        run_ok(backy_job(&job).args(["forget", "-r", id, "--force"]));
        for suffix in ["", ".rev", ".sums"] {
            assert!(!job.join(format!("{id}{suffix}")).exists(), "{id}{suffix}");
        }
    }
    let r = run_ok(backy_job(&job).arg("status"));
    assert!(!r.stdout.contains("Warning:"), "{}", r.stdout);
    assert_eq!(find(&job, "0"), job.join(&made));
}

#[test]
fn damaged_metadata_btrfs() {
    damaged_metadata(FsKind::Btrfs);
}

#[test]
fn damaged_metadata_xfs() {
    damaged_metadata(FsKind::Xfs);
}

/// A backup's cleanup removes incomplete revisions, but not one whose `.rev`
/// it cannot read (it cannot tell whether that one is complete); a `last`
/// pointing to the wrong revision is replaced without a copy.
fn cleanup_keeps_unreadable(kind: FsKind) {
    let fs = require_fs!(kind, 300);
    let (src, job) = (fs.join("src.img"), fs.join("job"));
    init_job(&src, &job, 2 * MIB, MIB as usize);
    backup(&job, "daily").success();
    let good = complete_ids(&job)[0].clone();
    // A copy of the good revision whose .rev a tool truncated.
    fs::copy(job.join(&good), job.join("Trunc1")).unwrap();
    let text = fs::read_to_string(job.join(format!("{good}.rev"))).unwrap();
    fs::write(job.join("Trunc1.rev"), &text[..text.len() / 3]).unwrap();
    let saved = snapshot(&[job.join("Trunc1"), job.join("Trunc1.rev")]);
    // And `last` points to the wrong revision: a symlink is simply replaced.
    fs::remove_file(job.join("last")).unwrap();
    std::os::unix::fs::symlink("Trunc1", job.join("last")).unwrap();
    run_ok(backy_job(&job).arg("status")).stdout_has("points to Trunc1 instead of");
    backup(&job, "daily").success();
    assert_unchanged(&saved);
    let ids = complete_ids(&job);
    assert_eq!(ids.len(), 2);
    assert_eq!(
        fs::read_link(job.join("last")).unwrap(),
        PathBuf::from(&ids[1])
    );
    let names: Vec<String> = fs::read_dir(&job)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(!names.iter().any(|n| n.contains(".bak-")), "{names:?}");
}

#[test]
fn cleanup_keeps_unreadable_btrfs() {
    cleanup_keeps_unreadable(FsKind::Btrfs);
}

#[test]
fn cleanup_keeps_unreadable_xfs() {
    cleanup_keeps_unreadable(FsKind::Xfs);
}

/// Tags `-r` could never select are refused, and nothing is made.
#[test]
fn tags_that_specs_shadow_are_refused() {
    let fs = require_fs!(FsKind::Btrfs, 300);
    let (src, job) = (fs.join("src.img"), fs.join("job"));
    init_job(&src, &job, MIB, 4096);
    for tags in ["1", "daily,0", "last", "latest", "daily,-3", "weekly,+2"] {
        run(backy_job(&job).args(["backup", tags]))
            .code(1)
            .stderr_has("could never select the tag");
    }
    assert!(complete_ids(&job).is_empty());
    backup(&job, "daily,v1").success();
    backup(&job, "daily").success();
    assert_eq!(
        find(&job, "v1"),
        job.join(&complete_ids(&job)[0]),
        "-r TAG picks the tagged revision"
    );
}

/// `verify` says what it did not do: no revisions at all, or a manifest of
/// our own making that was deleted (not "made by backy 2.1").
#[test]
fn verify_says_what_it_cannot_check() {
    let fs = require_fs!(FsKind::Btrfs, 300);
    let (src, job) = (fs.join("src.img"), fs.join("job"));
    init_job(&src, &job, MIB, 4096);
    run_ok(backy_job(&job).arg("verify")).stderr_has("Nothing to verify");
    run(backy_job(&job).args(["verify", "-r", "0"]))
        .code(1)
        .stderr_has("no complete revision matches '0'");
    backup(&job, "daily").success();
    let id = complete_ids(&job)[0].clone();
    fs::remove_file(job.join(format!("{id}.sums"))).unwrap();
    let r = run(backy_job(&job).args(["verify", "-r", "0"])).code(1);
    let r = r
        .stderr_has("manifest")
        .stderr_has("is missing")
        .stderr_has(&format!("{id}.sums"));
    assert!(!r.stderr.contains("2.1"), "{}", r.stderr);
    // `status` counts only complete revisions in its total.
    let rev = job.join("Crash1.rev");
    fs::write(
        &rev,
        "uuid: Crash1\ntimestamp: 2020-01-01 00:00:00+00:00\nparent: null\ntags: [daily]\nstats: {bytes_written: 999999999}\n",
    )
    .unwrap();
    run_ok(backy_job(&job).arg("status")).stdout_has(
        "1 revision containing 1.00 MiB data (estimated); 1 incomplete revision not counted\n",
    );
}

/// A scheduler child process, killed by pid when the test ends.
struct Scheduler(Child);

impl Drop for Scheduler {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The scheduler does not count a revision dated in the future as a recent
/// backup: a job whose backups fail goes TOO OLD, and `check` also names the
/// revisions dated in the future and the damaged revision files as WARNING.
#[test]
fn scheduler_sla_ignores_future_dates_and_check_names_damage() {
    let fs = require_fs!(FsKind::Btrfs, 300);
    let base = fs.join("base");
    let mut jobs = String::new();
    for name in ["broken", "calm"] {
        let (src, job) = (fs.join(format!("{name}.img")), base.join(name));
        init_job(&src, &job, MIB, 4096);
        backup(&job, "often,rarely").success();
        let id = complete_ids(&job)[0].clone();
        set_timestamp(&job, &id, "2099-01-01 00:00:00.000000+00:00");
        jobs.push_str(&format!(
            "  {name}: {{schedule: {}, source: {{type: file, filename: {}}}}}\n",
            if name == "broken" { "fast" } else { "slow" },
            src.display()
        ));
    }
    // `broken`'s backups fail from now on; `calm` has a damaged revision file.
    fs::remove_file(fs.join("broken.img")).unwrap();
    let damaged = base.join("calm").join("Junk1.rev");
    fs::write(&damaged, "not: [yaml").unwrap();
    let conf = fs.join("backy.conf");
    fs::write(
        &conf,
        format!(
            "global:\n  base-dir: {}\n  status-interval: 1\n  run-timeout: 10m\n  telnet-addrs: \"127.0.0.1\"\n  telnet-port: 0\nschedules:\n  fast:\n    often: {{interval: 2s, keep: 2}}\n  slow:\n    rarely: {{interval: 1d, keep: 2}}\njobs:\n{jobs}",
            base.display()
        ),
    )
    .unwrap();
    let _daemon = Scheduler(
        backy()
            .arg("-l")
            .arg(fs.join("scheduler.log"))
            .arg("scheduler")
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let status = base.join("status");
    let start = Instant::now();
    loop {
        let text = fs::read_to_string(&status).unwrap_or_default();
        if text.contains("- job: broken\n  sla: TOO OLD\n") {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "broken never went TOO OLD:\n{text}\n{}",
            fs::read_to_string(fs.join("scheduler.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let r = run(backy().arg("check").arg("-c").arg(&conf)).code(2);
    assert!(r.stdout.starts_with("CRITICAL: 1 job"), "{}", r.stdout);
    for needle in [
        "\nbroken (last time: 2099-01-01 00:00:00 UTC)",
        "; 2 of 2 jobs have warnings (damaged or future-dated revisions, files open to other users) |",
        damaged.to_str().unwrap(),
        "broken: revision ",
        "in the future",
    ] {
        assert!(
            r.stdout.contains(needle),
            "check lacks {needle:?}:\n{}",
            r.stdout
        );
    }
}

/// Links planted in a job directory are never followed (issue 16): an image or
/// a `.rev` that is a symlink makes its revision damaged, a manifest that is
/// one is refused, and the files they point to are neither read into a
/// restore nor written.
fn links_are_never_followed(kind: FsKind) {
    let fs = require_fs!(kind, 300);
    let (src, job) = (fs.join("src.img"), fs.join("job"));
    init_job(&src, &job, 4 * MIB, MIB as usize);
    for n in 0..3u64 {
        write_at(&src, n * MIB, &pattern_bytes(20 + n, MIB as usize));
        backup(&job, "daily").success();
    }
    let ids = complete_ids(&job);
    let outside = fs.join("outside");
    fs::create_dir(&outside).unwrap();

    // Revision 0: its image becomes a link to a secret outside the job.
    let secret = outside.join("secret.img");
    write_file(&secret, 4 * MIB, &[(0, &pattern_bytes(99, MIB as usize))]);
    fs::remove_file(job.join(&ids[0])).unwrap();
    std::os::unix::fs::symlink(&secret, job.join(&ids[0])).unwrap();
    // Revision 1: its `.rev` becomes a link to a copy outside.
    let rev_copy = outside.join("copy.rev");
    fs::copy(job.join(format!("{}.rev", ids[1])), &rev_copy).unwrap();
    fs::remove_file(job.join(format!("{}.rev", ids[1]))).unwrap();
    std::os::unix::fs::symlink(&rev_copy, job.join(format!("{}.rev", ids[1]))).unwrap();
    // Revision 2 (the newest): its manifest becomes a link to a copy outside.
    let sums_copy = outside.join("copy.sums");
    fs::copy(job.join(format!("{}.sums", ids[2])), &sums_copy).unwrap();
    fs::remove_file(job.join(format!("{}.sums", ids[2]))).unwrap();
    std::os::unix::fs::symlink(&sums_copy, job.join(format!("{}.sums", ids[2]))).unwrap();
    let before = snapshot(&[secret.clone(), rev_copy.clone(), sums_copy.clone()]);

    let r = run_ok(backy_job(&job).arg("status"));
    for id in &ids[..2] {
        assert!(
            r.stdout.lines().any(|l| l.starts_with("Warning: revision ")
                && l.contains(id.as_str())
                && l.contains("symbolic link")),
            "status does not name {id} as a link:\n{}",
            r.stdout
        );
    }
    let out = fs.join("restored");
    run(backy_job(&job).args(["restore", "-r", &ids[0]]).arg(&out))
        .failure()
        .stderr_has("damaged");
    assert!(!out.exists());
    run(backy_job(&job).args(["verify", "-r", &ids[2]]))
        .failure()
        .stderr_has("symbolic link");
    // The next backup does not trust the linked manifest, compares with the
    // parent's image instead, and makes a good revision.
    write_at(&src, 3 * MIB, &pattern_bytes(30, MIB as usize));
    backup(&job, "daily").success();
    let newest = complete_ids(&job).last().unwrap().clone();
    run_ok(backy_job(&job).args(["verify", "-r", &newest]));
    run_ok(backy_job(&job).args(["restore", "-r", &newest]).arg(&out));
    assert_same_content(&out, &src);
    assert_eq!(
        snapshot(&[secret, rev_copy, sums_copy]),
        before,
        "a file outside the job changed"
    );
}

#[test]
fn links_are_never_followed_btrfs() {
    links_are_never_followed(FsKind::Btrfs);
}

#[test]
fn links_are_never_followed_xfs() {
    links_are_never_followed(FsKind::Xfs);
}

/// A job directory or revision images that others may read are reported by
/// `status` (and, through the same `Job::warnings`, by `check`, which
/// `scheduler_sla_ignores_future_dates_and_check_names_damage` covers): VM
/// disks hold secrets.
#[test]
fn files_open_to_other_users_are_reported() {
    let fs = require_fs!(FsKind::Xfs, 300);
    let (src, job) = (fs.join("src.img"), fs.join("job"));
    init_job(&src, &job, 4 * MIB, MIB as usize);
    backup(&job, "daily").success();
    let r = run_ok(backy_job(&job).arg("status"));
    assert!(!r.stdout.contains("other users"), "{}", r.stdout);

    let id = complete_ids(&job)[0].clone();
    fs::set_permissions(&job, fs::Permissions::from_mode(0o755)).unwrap();
    fs::set_permissions(job.join(&id), fs::Permissions::from_mode(0o444)).unwrap();
    let r = run_ok(backy_job(&job).arg("status"));
    for needle in [
        "is open to other users (mode 0755)",
        "chmod o-rwx",
        &format!(
            "1 revision image of job {} is readable by other users ({id})",
            job.display()
        ),
    ] {
        assert!(r.stdout.contains(needle), "no {needle:?} in:\n{}", r.stdout);
    }
}
