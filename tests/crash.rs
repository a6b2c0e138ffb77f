//! Crash safety: a backup killed at any moment leaves a job whose
//! complete revisions all restore correctly, whose `last` names the newest
//! complete revision once the next backup ran, and whose leftovers the next
//! backup removes.

mod util;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use util::*;

const MIB: u64 = 1 << 20;

fn status_json(job: &Path) -> Vec<serde_json::Value> {
    let r = run_ok(backy_job(job).args(["status", "--json"]));
    serde_json::from_str(&r.stdout).unwrap()
}

/// Checks the job after a crash and after the next backup; `expected` maps a
/// tag to the sha256 of the source when the backup with that tag started.
/// Complete revisions never change, so `checked` remembers those already hashed.
fn check_consistent(
    job: &Path,
    expected: &BTreeMap<String, String>,
    recovery_tag: &str,
    checked: &mut BTreeSet<String>,
) {
    for rev in status_json(job).iter().filter(|r| r["complete"] == true) {
        if !checked.insert(rev["id"].as_str().unwrap().to_string()) {
            continue;
        }
        let tag = rev["tags"][0].as_str().unwrap();
        let image = Path::new(rev["image"].as_str().unwrap());
        assert_eq!(
            &sha256(image),
            &expected[tag],
            "complete revision {} ({tag}) is wrong",
            rev["id"]
        );
    }
    // The next backup succeeds, removes leftovers, and sets `last`.
    run_ok(backy_job(job).args(["backup", recovery_tag]));
    let revs = status_json(job);
    assert!(
        revs.iter().all(|r| r["complete"] == true),
        "incomplete revision left: {revs:?}"
    );
    let newest = revs.last().unwrap()["id"].as_str().unwrap();
    assert_eq!(
        fs::read_link(job.join("last")).unwrap().to_str(),
        Some(newest)
    );
    assert_eq!(
        fs::read_link(job.join("last.rev"))
            .unwrap()
            .to_str()
            .map(String::from),
        Some(format!("{newest}.rev"))
    );
    let mut allowed: Vec<String> = [".backup", ".meta", ".purge", "config", "last", "last.rev"]
        .map(String::from)
        .to_vec();
    for r in &revs {
        let id = r["id"].as_str().unwrap();
        allowed.extend([id.to_string(), format!("{id}.rev"), format!("{id}.sums")]);
    }
    for entry in fs::read_dir(job).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        assert!(
            allowed.contains(&name),
            "leftover file {name} after recovery"
        );
    }
}

/// Kill -9 at random moments, at least 20 times.
#[test]
fn kill_9_at_random_moments() {
    let fs = require_fs!(FsKind::Btrfs, 1024);
    let src = fs.join("src.img");
    let job = fs.join("job");
    let size = 32 * MIB;
    write_file(&src, size, &[(0, &pattern_bytes(1, (size / 2) as usize))]);
    run_ok(backy_job(&job).args(["init", "file"]).arg(&src));
    let mut expected = BTreeMap::new();
    expected.insert("t0".to_string(), sha256(&src));
    run_ok(backy_job(&job).args(["backup", "t0"]));
    // The kill window: as long as an incremental backup of this job takes.
    let start = Instant::now();
    run_ok(backy_job(&job).args(["backup", "t0"]));
    let typical = start.elapsed().max(Duration::from_millis(20));
    let mut checked = BTreeSet::new();

    let mut seed = 12345u64;
    let mut rnd = move || {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        seed >> 33
    };
    let mut killed = 0;
    let mut tries = 0;
    while killed < 20 && tries < 60 {
        tries += 1;
        let n = tries;
        // Change the source a little, as between two real backups.
        for _ in 0..8 {
            let at = rnd() % (size - 65536) / 4096 * 4096;
            write_at(&src, at, &pattern_bytes(rnd(), 65536));
        }
        let tag = format!("t{n}");
        expected.insert(tag.clone(), sha256(&src));
        let delay = Duration::from_micros(rnd() % typical.as_micros() as u64);
        let mut child = backy_job(&job)
            .args(["backup", &tag])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(delay);
        // SIGKILL, as an OOM killer or a power cut would.
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap();
            killed += 1;
        }
        child.wait().unwrap();
        let recovery = format!("r{n}");
        expected.insert(recovery.clone(), sha256(&src));
        check_consistent(&job, &expected, &recovery, &mut checked);
    }
    eprintln!("killed {killed} of {tries} backups mid-run (an incremental takes {typical:?})");
    assert!(
        killed >= 20,
        "only {killed} of {tries} backups were killed mid-run"
    );
}

/// A crash between each two durability steps, via failpoints that abort.
#[test]
fn crash_between_each_durability_step() {
    let fs = require_fs!(FsKind::Btrfs, 512);
    let src = fs.join("src.img");
    let job = fs.join("job");
    write_file(&src, 8 * MIB, &[(MIB, &pattern_bytes(1, 3 * MIB as usize))]);
    run_ok(backy_job(&job).args(["init", "file"]).arg(&src));
    let mut expected = BTreeMap::new();
    expected.insert("t0".to_string(), sha256(&src));
    run_ok(backy_job(&job).args(["backup", "t0"]));
    let mut checked = BTreeSet::new();
    let points = [
        "after-incomplete-rev",
        "after-clone",
        "after-patch",
        "after-verify",
        "after-read-only",
        "after-complete-rev",
        "after-last",
    ];
    for (n, point) in points.iter().enumerate() {
        write_at(
            &src,
            (n as u64 + 1) * 300_000,
            &pattern_bytes(n as u64 + 50, 100_000),
        );
        let tag = format!("c{n}");
        expected.insert(tag.clone(), sha256(&src));
        let r = run(backy_job(&job)
            .env("BACKY_FAILPOINT", point)
            .args(["backup", &tag]));
        assert!(r.code.is_none(), "{point}: backup was not aborted: {r:?}");
        let revs = status_json(&job);
        let complete = revs
            .iter()
            .filter(|r| r["complete"] == true && r["tags"][0] == tag.as_str())
            .count();
        let should_be_complete = matches!(*point, "after-complete-rev" | "after-last");
        assert_eq!(complete == 1, should_be_complete, "{point}: {revs:?}");
        let recovery = format!("r{n}");
        expected.insert(recovery.clone(), sha256(&src));
        check_consistent(&job, &expected, &recovery, &mut checked);
    }
}
