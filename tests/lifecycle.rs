//! One owner for a revision's lifecycle (issue 12): commands that change a
//! revision's metadata at the same time on one job never lose each other's
//! change, and every `.rev` stays readable.
//!
//! Each round runs `protect` (with a reason naming the round), `distrust` and
//! `verify` of the same revision at once, and every few rounds a backup, whose
//! re-check of the newest distrusted revision rewrites that `.rev` too. After
//! each round the revision must carry that round's protection reason (only
//! `protect` writes it, so a writer that renamed a stale copy into place would
//! show as an older reason or none), a trust that one of the writers set, and
//! parse; at the end no temp file is left and nothing is damaged.

mod util;

use std::fs;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use util::*;

const MIB: u64 = 1 << 20;
/// Rounds of three (or four) commands at once: a few hundred updates.
const ROUNDS: usize = 80;

fn status_json(job: &Path) -> Vec<serde_json::Value> {
    let r = run_ok(backy_job(job).args(["status", "--json"]));
    serde_json::from_str(&r.stdout).unwrap_or_else(|e| r.fail(&format!("bad JSON: {e}")))
}

fn spawn(cmd: &mut Command) -> Child {
    cmd.stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn backy")
}

/// Waits for a child; `Ok` for exit 0, the stderr otherwise.
fn finish(child: Child) -> Result<(), String> {
    let out = child.wait_with_output().expect("wait for backy");
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn concurrent_updates(kind: FsKind) {
    let fs = require_fs!(kind, 400);
    let (src, job) = (fs.join("src.img"), fs.join("job"));
    write_file(&src, 8 * MIB, &[(0, &pattern_bytes(1, 2 * MIB as usize))]);
    run_ok(backy_job(&job).args(["init", "file"]).arg(&src));
    run_ok(backy_job(&job).args(["backup", "daily"]));
    let target = status_json(&job)[0]["id"].as_str().unwrap().to_string();
    write_at(&src, 3 * MIB, &pattern_bytes(2, MIB as usize));
    run_ok(backy_job(&job).args(["backup", "daily"]));

    let rev_path = job.join(format!("{target}.rev"));
    for round in 0..ROUNDS {
        let reason = format!("round {round}");
        let mut children = vec![
            (
                "protect",
                spawn(backy_job(&job).args(["protect", "-r", &target, "--reason", &reason])),
            ),
            (
                "distrust",
                spawn(backy_job(&job).args(["distrust", "-r", &target])),
            ),
            (
                "verify",
                spawn(backy_job(&job).args(["verify", "-r", &target])),
            ),
        ];
        if round % 10 == 5 {
            write_at(&src, 5 * MIB, &pattern_bytes(10 + round as u64, 4096));
            children.push(("backup", spawn(backy_job(&job).args(["backup", "hourly"]))));
        }
        for (what, child) in children {
            // verify may find the revision distrusted meanwhile and still
            // verify it; none of them may fail.
            if let Err(stderr) = finish(child) {
                panic!("round {round}: {what} failed:\n{stderr}");
            }
        }
        let text = fs::read_to_string(&rev_path).unwrap();
        let rev: serde_json::Value = status_json(&job)
            .into_iter()
            .find(|r| r["id"] == target.as_str())
            .unwrap_or_else(|| panic!("round {round}: {target} is gone:\n{text}"));
        assert!(
            rev["damaged"].is_null(),
            "round {round}: the .rev is damaged:\n{text}"
        );
        assert!(
            text.contains(&reason),
            "round {round}: the protection of this round was lost:\n{text}"
        );
        let trust = rev["trust"].as_str().unwrap_or_default();
        assert!(
            ["distrusted", "verified"].contains(&trust),
            "round {round}: trust {trust:?}:\n{text}"
        );
    }
    let left: Vec<String> = fs::read_dir(&job)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tmp"))
        .collect();
    assert!(left.is_empty(), "temp files left: {left:?}");
    assert!(
        status_json(&job).iter().all(|r| r["damaged"].is_null()),
        "a revision is damaged"
    );
}

#[test]
fn concurrent_verify_distrust_protect_and_backup_lose_nothing_on_btrfs() {
    concurrent_updates(FsKind::Btrfs);
}

#[test]
fn concurrent_verify_distrust_protect_and_backup_lose_nothing_on_xfs() {
    concurrent_updates(FsKind::Xfs);
}
