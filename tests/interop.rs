//! Job directories (backy 2.1's on-disk format) work both ways between us and
//! the original backy 2.1.5: a job we wrote is usable by backy 2.1.5's `status`,
//! `find`, `restore` and `backup`, and a job it wrote is usable by ours, our
//! next backup continuing its chain and sharing extents with its newest revision.
//!
//! Not covered: backy 2.1 rewrites `.rev` files only when its scheduler expires
//! revisions, and its scheduler cannot run on this Python (see
//! `scripts/setup-test-deps.sh`). That our `.rev` files survive such a rewrite
//! is left to the rule that nothing essential lives only in keys backy 2.1 does
//! not know (its rewrite keeps its five keys and drops the rest). That
//! includes our `protected` mapping: backy 2.1 knows no protection, and its
//! expiry would neither honour nor keep it.

mod util;

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use util::*;

const MIB: u64 = 1 << 20;
const KIB: u64 = 1 << 10;

/// The Python backy at `launcher` with `-b JOB`.
fn py(launcher: &Path, job: &Path) -> Command {
    let mut cmd = python_backy_command(launcher);
    cmd.arg("-b").arg(job);
    cmd
}

/// Our `status --json`, parsed.
fn status_json(job: &Path) -> Vec<serde_json::Value> {
    let r = run_ok(backy_job(job).args(["status", "--json"]));
    serde_json::from_str(&r.stdout).unwrap_or_else(|e| r.fail(&format!("bad JSON: {e}")))
}

fn ids(revs: &[serde_json::Value]) -> Vec<String> {
    revs.iter()
        .map(|r| r["id"].as_str().unwrap().to_string())
        .collect()
}

fn tags(rev: &serde_json::Value) -> BTreeSet<String> {
    rev["tags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap().to_string())
        .collect()
}

fn tag_set(tags: &str) -> BTreeSet<String> {
    tags.split(',').map(String::from).collect()
}

/// One row of backy 2.1.5's status table.
#[derive(Debug)]
struct PyRow {
    id: String,
    size: String,
    tags: BTreeSet<String>,
}

/// The rows of backy 2.1.5's `status` table, oldest first (it lists tags in
/// set order, so they come back as a set).
fn python_status(launcher: &Path, job: &Path) -> (Vec<PyRow>, String) {
    let r = run_ok(py(launcher, job).arg("status"));
    let rows = r
        .stdout
        .lines()
        .filter(|l| l.starts_with("| ") && !l.contains("Date (UTC)"))
        .map(|l| {
            let cols: Vec<&str> = l.split('|').map(str::trim).collect();
            PyRow {
                id: cols[2].to_string(),
                size: cols[3].to_string(),
                tags: tag_set(cols[5]),
            }
        })
        .collect();
    let summary = r
        .stdout
        .lines()
        .last()
        .unwrap_or_else(|| r.fail("empty status"));
    (rows, summary.to_string())
}

/// A VM-like source: random data, zeros and holes, one MiB each in turn.
fn make_source(path: &Path, size: u64) {
    let file = File::create(path).unwrap();
    file.set_len(size).unwrap();
    drop(file);
    for (n, at) in (0..size).step_by(MIB as usize).enumerate() {
        let len = MIB.min(size - at) as usize;
        match n % 3 {
            0 => write_at(path, at, &pattern_bytes(n as u64, len)),
            1 => write_at(path, at, &vec![0; len]),
            _ => {} // a hole
        }
    }
}

/// Overwrites `count` scattered 64 KiB runs (4 KiB aligned) with new random
/// data; returns the bytes changed.
fn change_source(path: &Path, count: u64, seed: u64) -> u64 {
    let size = fs::metadata(path).unwrap().len();
    let stride = size / count / 4096 * 4096;
    for i in 0..count {
        // Inside each stride, at a page offset that differs from run to run.
        let at = i * stride + (seed * 7 + i * 3) % 8 * 4096;
        write_at(path, at, &pattern_bytes(seed * 1000 + i, 64 * KIB as usize));
    }
    count * 64 * KIB
}

fn save(fs: &TestFs, src: &Path, name: &str) -> PathBuf {
    let copy = fs.join(name);
    fs::copy(src, &copy).unwrap();
    copy
}

/// Restores `spec` with our backy to a fresh file and compares it with `expected`.
#[track_caller]
fn assert_we_restore(job: &Path, spec: &str, expected: &Path) {
    let out = job.with_file_name(format!("ours-restored-{spec}"));
    let _ = fs::remove_file(&out);
    run_ok(backy_job(job).args(["restore", "-r", spec]).arg(&out));
    assert_same_content(&out, expected);
    fs::remove_file(&out).unwrap();
}

/// Restores `spec` with backy 2.1.5 to a fresh file and compares it.
#[track_caller]
fn assert_python_restores(launcher: &Path, job: &Path, spec: &str, expected: &Path) {
    let out = job.with_file_name(format!("py-restored-{spec}"));
    let _ = fs::remove_file(&out);
    run_ok(py(launcher, job).args(["restore", "-r", spec]).arg(&out));
    assert_same_content(&out, expected);
    fs::remove_file(&out).unwrap();
}

/// A job we wrote (init and two backups) works with backy 2.1.5, whose own
/// backup continues our chain; afterwards ours still works and our next
/// backup, whose parent has no checksum manifest, is correct.
#[test]
fn backy_21_uses_a_job_we_wrote() {
    let launcher = require_python_backy!();
    let fs = require_fs!(FsKind::Btrfs, 512);
    let src = fs.join("src.img");
    let job = fs.join("job");
    make_source(&src, 32 * MIB);
    run_ok(backy_job(&job).args(["init", "file"]).arg(&src));
    run_ok(backy_job(&job).args(["backup", "daily,weekly"]));
    let state0 = save(&fs, &src, "state0");
    change_source(&src, 8, 1);
    run_ok(backy_job(&job).args(["backup", "daily"]));
    let state1 = save(&fs, &src, "state1");
    let ours = ids(&status_json(&job));
    assert_eq!(ours.len(), 2);

    // Its status lists both, oldest first, with their tags and sizes.
    let (rows, summary) = python_status(&launcher, &job);
    assert_eq!(
        rows.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
        ours,
        "{rows:?}"
    );
    assert_eq!(rows[0].tags, tag_set("daily,weekly"), "{rows:?}");
    assert_eq!(rows[1].tags, tag_set("daily"), "{rows:?}");
    assert!(rows.iter().all(|r| r.size == "32.00 MiB"), "{rows:?}");
    assert_eq!(summary, "2 revisions containing 64.00 MiB data (estimated)");

    // Its find prints our image paths; its restore gives our bytes.
    for (spec, id) in [("0", &ours[1]), ("1", &ours[0])] {
        let found = run_ok(py(&launcher, &job).args(["find", "-r", spec])).stdout;
        assert_eq!(
            found.trim(),
            job.join(id).to_str().unwrap(),
            "find -r {spec}"
        );
    }
    assert_python_restores(&launcher, &job, "1", &state0);
    assert_python_restores(&launcher, &job, "0", &state1);

    // Its backup continues our chain.
    change_source(&src, 8, 2);
    run_ok(py(&launcher, &job).args(["backup", "hourly"]));
    let state2 = save(&fs, &src, "state2");
    let revs = status_json(&job);
    assert_eq!(revs.len(), 3, "{revs:?}");
    let theirs = revs[2]["id"].as_str().unwrap().to_string();
    assert!(!ours.contains(&theirs));
    assert_eq!(revs[2]["parent"].as_str(), Some(ours[1].as_str()));
    assert_eq!(revs[2]["complete"], true);
    assert_eq!(tags(&revs[2]), tag_set("hourly"));
    assert!(!job.join(format!("{theirs}.sums")).exists());
    assert_same_content(&job.join(&theirs), &state2);

    // Ours still reads everything, old and new.
    assert_we_restore(&job, "0", &state2);
    assert_we_restore(&job, "1", &state1);
    assert_we_restore(&job, "2", &state0);
    assert_we_restore(&job, "hourly", &state2);

    // Our next backup: its parent has no manifest, so the image is compared.
    change_source(&src, 8, 3);
    let r = run_ok(backy_job(&job).args(["backup", "daily"]));
    let expected = format!("Parent {theirs} has no checksum manifest");
    if !r.stderr.contains(&expected) {
        r.fail(&format!("expected {expected:?}"));
    }
    let revs = status_json(&job);
    assert_eq!(revs.len(), 4, "{revs:?}");
    let newest = revs[3]["id"].as_str().unwrap().to_string();
    assert_eq!(revs[3]["parent"].as_str(), Some(theirs.as_str()));
    assert!(job.join(format!("{newest}.sums")).exists());
    assert_we_restore(&job, "0", &src);
    run_ok(backy_job(&job).args(["verify", "-r", "0"]));

    // And backy 2.1.5 still sees the whole chain.
    let (rows, _) = python_status(&launcher, &job);
    assert_eq!(rows.len(), 4, "{rows:?}");
    assert_eq!(rows[3].id, newest);
    assert_python_restores(&launcher, &job, "0", &src);
}

/// A job backy 2.1.5 wrote (init and two backups) works with ours: status, find
/// by number, tag and id prefix, restore of each revision; our next backup
/// continues its chain, writes a manifest and shares extents with its parent.
#[test]
fn we_use_a_job_backy_21_wrote() {
    let launcher = require_python_backy!();
    let fs = require_fs!(FsKind::Btrfs, 512);
    let src = fs.join("src.img");
    let job = fs.join("job");
    let size = 32 * MIB;
    make_source(&src, size);
    run_ok(py(&launcher, &job).args(["init", "file"]).arg(&src));
    run_ok(py(&launcher, &job).args(["backup", "daily,weekly"]));
    let state0 = save(&fs, &src, "state0");
    change_source(&src, 8, 4);
    run_ok(py(&launcher, &job).args(["backup", "daily"]));
    let state1 = save(&fs, &src, "state1");
    // What backy 2.1.5 leaves: read-only config and metadata, no manifests.
    let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&job.join("config")), 0o440);

    let revs = status_json(&job);
    assert_eq!(revs.len(), 2, "{revs:?}");
    let theirs = ids(&revs);
    assert!(revs.iter().all(|r| r["complete"] == true), "{revs:?}");
    assert_eq!(tags(&revs[0]), tag_set("daily,weekly"));
    assert_eq!(tags(&revs[1]), tag_set("daily"));
    assert_eq!(revs[0]["parent"], serde_json::Value::Null);
    assert_eq!(revs[1]["parent"].as_str(), Some(theirs[0].as_str()));
    assert!(revs.iter().all(|r| r["bytes_written"] == size), "{revs:?}");
    for id in &theirs {
        assert_eq!(mode(&job.join(format!("{id}.rev"))), 0o440);
        assert!(!job.join(format!("{id}.sums")).exists());
    }

    let table = run_ok(backy_job(&job).arg("status")).stdout;
    for id in &theirs {
        assert!(table.contains(&format!("| {id} ")), "{table}");
    }
    assert!(table.contains("| daily,weekly |"), "{table}");
    assert!(
        table.contains("2 revisions containing 64.00 MiB data (estimated)\n"),
        "{table}"
    );

    // find by number, tag, exact id and id prefix.
    let find = |spec: &str| {
        let r = run_ok(backy_job(&job).args(["find", "-r", spec]));
        PathBuf::from(r.stdout.trim_end_matches('\n'))
    };
    for (spec, id) in [
        ("0", &theirs[1]),
        ("1", &theirs[0]),
        ("latest", &theirs[1]),
        ("last", &theirs[1]),
        ("daily", &theirs[1]),
        ("weekly", &theirs[0]),
        (&theirs[0][..], &theirs[0]),
        (&theirs[0][..8], &theirs[0]),
        (&theirs[1][..8], &theirs[1]),
    ] {
        assert_eq!(find(spec), job.join(id), "find -r {spec}");
    }

    // Each revision restores byte-identical.
    assert_we_restore(&job, "1", &state0);
    assert_we_restore(&job, "0", &state1);
    assert_we_restore(&job, &theirs[0][..8], &state0);

    // Our backup continues the chain, comparing against the parent's image.
    let changed = change_source(&src, 8, 5);
    let r = run_ok(backy_job(&job).args(["backup", "daily"]));
    let expected = format!("Parent {} has no checksum manifest", theirs[1]);
    if !r.stderr.contains(&expected) {
        r.fail(&format!("expected {expected:?}"));
    }
    let revs = status_json(&job);
    assert_eq!(revs.len(), 3, "{revs:?}");
    let ours = revs[2]["id"].as_str().unwrap().to_string();
    assert_eq!(revs[2]["parent"].as_str(), Some(theirs[1].as_str()));
    assert_eq!(revs[2]["reflink"], true);
    let image = job.join(&ours);
    assert_same_content(&image, &src);
    assert!(job.join(format!("{ours}.sums")).exists());
    run_ok(backy_job(&job).args(["verify", "-r", &ours]));

    // Only the changed bytes are its own, and what the writer's layout adds
    // (each of the 8 runs may be extended by up to 128 KiB on either side, to
    // an edge of the parent's extents, README "Where writes end"): the rest is
    // shared with the parent.
    run_ok(&mut Command::new("sync"));
    let exclusive = exclusive_bytes(&fs, &image);
    assert!(
        exclusive <= changed * 12 / 10 + 64 * KIB + 8 * 2 * 128 * KIB,
        "our revision has {exclusive} exclusive bytes for {changed} changed bytes"
    );
    let reported = revs[2]["bytes_changed"].as_u64().unwrap();
    assert!(
        reported <= changed && reported >= changed / 2,
        "bytes_changed {reported} for {changed} changed bytes"
    );

    // Its own tools still read the job, including our revision.
    let (rows, _) = python_status(&launcher, &job);
    assert_eq!(
        rows.iter().map(|r| r.id.clone()).collect::<Vec<_>>(),
        [theirs[0].clone(), theirs[1].clone(), ours.clone()]
    );
    let found = run_ok(py(&launcher, &job).args(["find", "-r", "0"])).stdout;
    assert_eq!(found.trim(), image.to_str().unwrap());
    assert_python_restores(&launcher, &job, "0", &src);
}

/// backy 2.1.5 still uses a job with a protected and a distrusted revision
/// (issue 12): it ignores our `protected` mapping and the `trust` key, and its
/// `status`, `find` and `restore` work on every revision.
#[test]
fn backy_21_reads_protected_and_distrusted_revisions() {
    let launcher = require_python_backy!();
    let fs = require_fs!(FsKind::Btrfs, 512);
    let src = fs.join("src.img");
    let job = fs.join("job");
    make_source(&src, 16 * MIB);
    run_ok(backy_job(&job).args(["init", "file"]).arg(&src));
    let mut states = Vec::new();
    for (n, tags) in ["daily,weekly", "daily", "daily"].into_iter().enumerate() {
        change_source(&src, 4, 10 + n as u64);
        run_ok(backy_job(&job).args(["backup", tags]));
        states.push(save(&fs, &src, &format!("state{n}")));
    }
    let ours = ids(&status_json(&job));
    run_ok(backy_job(&job).args([
        "protect",
        "-r",
        &ours[0],
        "--reason",
        "audit: keep until 2027, \"really\"",
    ]));
    run_ok(backy_job(&job).args(["distrust", "-r", &ours[1]]));
    run_ok(backy_job(&job).args(["protect", "-r", &ours[1]]));
    let revs = status_json(&job);
    assert_eq!(
        revs[0]["protected_reason"],
        "audit: keep until 2027, \"really\""
    );
    assert_eq!(revs[1]["trust"], "distrusted");
    assert_eq!(revs[1]["protected"], true);
    let rev1 = fs::read_to_string(job.join(format!("{}.rev", ours[1]))).unwrap();
    assert!(rev1.contains("\ntrust: distrusted\nprotected:\n"), "{rev1}");

    let (rows, summary) = python_status(&launcher, &job);
    assert_eq!(
        rows.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
        ours,
        "{rows:?}"
    );
    assert_eq!(rows[0].tags, tag_set("daily,weekly"), "{rows:?}");
    assert!(rows.iter().all(|r| r.size == "16.00 MiB"), "{rows:?}");
    assert_eq!(summary, "3 revisions containing 48.00 MiB data (estimated)");
    for (spec, id) in [("0", &ours[2]), ("1", &ours[1]), ("2", &ours[0])] {
        let found = run_ok(py(&launcher, &job).args(["find", "-r", spec])).stdout;
        assert_eq!(
            found.trim(),
            job.join(id).to_str().unwrap(),
            "find -r {spec}"
        );
    }
    assert_python_restores(&launcher, &job, "2", &states[0]);
    assert_python_restores(&launcher, &job, "1", &states[1]);
    assert_python_restores(&launcher, &job, "0", &states[2]);

    // Its backup on top leaves our keys alone (it never rewrites old .rev files
    // outside its expiry), and ours still sees both marks.
    change_source(&src, 4, 20);
    run_ok(py(&launcher, &job).args(["backup", "hourly"]));
    let revs = status_json(&job);
    assert_eq!(revs.len(), 4, "{revs:?}");
    assert_eq!(revs[0]["protected"], true);
    assert_eq!(revs[1]["trust"], "distrusted");
    assert_eq!(revs[3]["parent"].as_str(), Some(ours[2].as_str()));
    assert_we_restore(&job, "0", &src);
}
