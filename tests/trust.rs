//! Trust and protection (issue 12): `distrust` by SPEC, by date range and for
//! everything (asking on a terminal, `--yes` for scripts); `protect` and
//! `unprotect`; `forget` refusing a protected revision and the newest one
//! without `--force`; expiry (`backy expire` and the scheduler's
//! `backy::job::expire`) never deleting a protected revision, over a simulated
//! month. On btrfs and XFS where they touch the filesystem.

mod util;

use std::collections::BTreeSet;
use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use backy::schedule::config::Config;
use backy::schedule::retention::{self, RevisionInfo};
use chrono::{DateTime, TimeDelta, TimeZone, Utc};
use util::*;

const MIB: u64 = 1 << 20;

fn status_json(job: &Path) -> Vec<serde_json::Value> {
    let r = run_ok(backy_job(job).args(["status", "--json"]));
    serde_json::from_str(&r.stdout).unwrap_or_else(|e| r.fail(&format!("bad JSON: {e}")))
}

/// The complete, undamaged revisions' JSON, oldest first.
fn complete(job: &Path) -> Vec<serde_json::Value> {
    status_json(job)
        .into_iter()
        .filter(|r| r["complete"] == true && r["damaged"].is_null())
        .collect()
}

fn ids(job: &Path) -> Vec<String> {
    complete(job)
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_string())
        .collect()
}

/// (id, trust) of the complete revisions, oldest first.
fn trust(job: &Path) -> Vec<(String, String)> {
    complete(job)
        .iter()
        .map(|r| {
            let id = r["id"].as_str().unwrap().to_string();
            (id, r["trust"].as_str().unwrap().to_string())
        })
        .collect()
}

fn rev_text(job: &Path, id: &str) -> String {
    fs::read_to_string(job.join(format!("{id}.rev"))).unwrap()
}

/// Rewrites a complete (0440) `.rev`'s timestamp: the test's clock.
fn set_timestamp(job: &Path, id: &str, at: DateTime<Utc>) {
    let path = job.join(format!("{id}.rev"));
    let text: String = fs::read_to_string(&path)
        .unwrap()
        .lines()
        .map(|l| {
            if l.starts_with("timestamp:") {
                format!("timestamp: {}\n", at.format("%Y-%m-%d %H:%M:%S%.6f+00:00"))
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).unwrap();
    fs::write(&path, text).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o440)).unwrap();
}

/// A source and an initialised job on `fs`.
fn init_job(fs: &TestFs) -> (PathBuf, PathBuf) {
    let (src, job) = (fs.join("src.img"), fs.join("job"));
    write_file(&src, 4 * MIB, &[(0, &pattern_bytes(1, MIB as usize))]);
    run_ok(backy_job(&job).args(["init", "file"]).arg(&src));
    (src, job)
}

/// `n` daily backups, each with a change, dated 2015-11-01 10:00, 11-02 10:00, ...
fn daily_backups(src: &Path, job: &Path, n: usize) -> Vec<String> {
    for i in 0..n {
        write_at(src, 2 * MIB, &pattern_bytes(10 + i as u64, 4096));
        run_ok(backy_job(job).args(["backup", "daily"]));
        let newest = ids(job).pop().unwrap();
        let day = Utc
            .with_ymd_and_hms(2015, 11, 1 + i as u32, 10, 0, 0)
            .unwrap();
        set_timestamp(job, &newest, day);
    }
    let made = ids(job);
    assert_eq!(made.len(), n);
    made
}

/// The trust of each revision, oldest first, as "t" (trusted) or "d".
fn trust_pattern(job: &Path) -> String {
    trust(job)
        .iter()
        .map(|(_, t)| match t.as_str() {
            "trusted" => 't',
            "distrusted" => 'd',
            _ => '?',
        })
        .collect()
}

/// `distrust` by SPEC, by UTC day range (inclusive, or exact times), and
/// everything: refused without a terminal or `--yes`, with `--yes` every
/// complete revision, skipping a damaged one with a note. Usage errors exit 2.
fn distrust(kind: FsKind) {
    let fs = require_fs!(kind, 300);
    let (src, job) = init_job(&fs);
    let made = daily_backups(&src, &job, 5);

    run_ok(backy_job(&job).args(["distrust", "-r", "1"]))
        .stderr_has(&format!("Distrusted revision {}", made[3]));
    assert_eq!(trust_pattern(&job), "tttdt");

    // Whole UTC days at both ends.
    let r = run_ok(backy_job(&job).args(["distrust", "-f", "2015-11-02", "-u", "2015-11-03"]));
    assert!(
        r.stderr
            .contains(&format!("Distrusted revision {}", made[1])),
        "{r:?}"
    );
    assert_eq!(trust_pattern(&job), "tdddt");
    // A timestamp bound is exact; --until alone is open towards the past.
    run_ok(backy_job(&job).args(["distrust", "--until", "2015-11-01T09:59:59Z"]))
        .stderr_has("Nothing to distrust");
    assert_eq!(trust_pattern(&job), "tdddt");
    run_ok(backy_job(&job).args(["distrust", "--until", "2015-11-01T10:00:00Z"]));
    assert_eq!(trust_pattern(&job), "ddddt");
    // Again: nothing new, said so.
    run_ok(backy_job(&job).args(["distrust", "-r", &made[0]])).stderr_has("was already distrusted");

    // Mistakes: an empty range, a bad date, -r with a date.
    run(backy_job(&job).args(["distrust", "-f", "2015-11-05", "-u", "2015-11-04"]))
        .failure()
        .stderr_has("--from 2015-11-05 is after --until 2015-11-04");
    run(backy_job(&job).args(["distrust", "-f", "last tuesday"]))
        .code(2)
        .stderr_has("YYYY-MM-DD");
    run(backy_job(&job).args(["distrust", "-r", "0", "-f", "2015-11-01"])).code(2);
    run(backy_job(&job).args(["distrust", "-r", "nosuch"]))
        .failure()
        .stderr_has("no complete revision matches 'nosuch'");
    assert_eq!(trust_pattern(&job), "ddddt");

    // Everything: no terminal, no --yes, nothing changes.
    let junk = job.join("Junk1.rev");
    fs::write(&junk, b"uuid: [not").unwrap();
    run(backy_job(&job).arg("distrust"))
        .failure()
        .stderr_has("distrusting all 5 revisions of job")
        .stderr_has("pass --yes");
    assert_eq!(trust_pattern(&job), "ddddt");
    let r = run_ok(backy_job(&job).args(["distrust", "--yes"]));
    assert!(
        r.stderr.contains("Skipped: revision Junk1 is damaged"),
        "{r:?}"
    );
    assert!(r.stderr.contains("1 revision of job"), "{r:?}");
    assert_eq!(trust_pattern(&job), "ddddd");
    assert_eq!(fs::read(&junk).unwrap(), b"uuid: [not");
    fs::remove_file(&junk).unwrap();

    // status shows it; the next backup trusts nothing of its parent and is
    // correct; the .rev still says `distrusted` where backy 2.5 reads it.
    let table = run_ok(backy_job(&job).arg("status")).stdout;
    assert!(table.contains("| Trust "), "{table}");
    assert!(table.contains("| distrusted |"), "{table}");
    assert!(rev_text(&job, &made[4]).contains("\ntrust: distrusted\n"));
    write_at(&src, 3 * MIB, &pattern_bytes(99, 4096));
    run_ok(backy_job(&job).args(["backup", "daily"]));
    let out = fs.join("restored");
    run_ok(backy_job(&job).args(["restore", "-r", "0"]).arg(&out));
    assert_same_content(&out, &src);
}

#[test]
fn distrust_btrfs() {
    distrust(FsKind::Btrfs);
}

#[test]
fn distrust_xfs() {
    distrust(FsKind::Xfs);
}

/// On a terminal, `distrust` without arguments asks; only "y" or "yes" goes on.
/// (`script` gives the command a pseudo-terminal.)
#[test]
fn distrust_everything_asks_on_a_terminal() {
    let fs = require_fs!(FsKind::Btrfs, 300);
    let (src, job) = init_job(&fs);
    daily_backups(&src, &job, 2);
    let Some(script) = find_tool("script") else {
        return skip("`script` (util-linux) not found").unwrap_or(());
    };
    let ask = |answer: &str| {
        let line = format!(
            "{} -b {} distrust",
            env!("CARGO_BIN_EXE_backy"),
            job.display()
        );
        let mut child = std::process::Command::new(&script)
            .args(["-qec", &line, "/dev/null"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(format!("{answer}\n").as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (ok, out) = ask("n");
    assert!(!ok, "{out}");
    assert!(out.contains("Distrust all 2 revisions of job"), "{out}");
    assert!(out.contains("not confirmed"), "{out}");
    assert_eq!(trust_pattern(&job), "tt");
    let (ok, out) = ask("y");
    assert!(ok, "{out}");
    assert_eq!(trust_pattern(&job), "dd");
}

/// `protect` / `unprotect` and the `forget` guard: a protected revision and
/// the newest complete one are refused with what to do, `--force` deletes
/// either; protection shows in `status` and its JSON and lives in the `.rev`.
fn protect_and_forget(kind: FsKind) {
    let fs = require_fs!(kind, 300);
    let (src, job) = init_job(&fs);
    let made = daily_backups(&src, &job, 4);
    let files = |id: &str| ["", ".rev", ".sums"].map(|s| job.join(format!("{id}{s}")));

    run_ok(backy_job(&job).args(["protect", "-r", &made[1], "--reason", "before the upgrade"]))
        .stderr_has(&format!("Protected revision {}", made[1]));
    let json = complete(&job);
    assert_eq!(json[1]["protected"], true);
    assert_eq!(json[1]["protected_reason"], "before the upgrade");
    let since = json[1]["protected_since"].as_str().unwrap().to_string();
    assert!(json[0]["protected"] == false && json[0]["protected_reason"].is_null());
    let rev = rev_text(&job, &made[1]);
    assert!(
        rev.contains("\nprotected:\n  reason: \"before the upgrade\"\n  since: "),
        "{rev}"
    );
    let table = run_ok(backy_job(&job).arg("status")).stdout;
    assert!(table.contains("| Protected "), "{table}");
    assert!(table.contains("| before the upgrade |"), "{table}");
    assert!(table.starts_with("+"), "{table}");
    let header = table.lines().nth(1).unwrap();
    assert!(
        header.starts_with("| Date (UTC)          | ID                     |"),
        "{header}"
    );

    // forget refuses it, and the newest; nothing is deleted.
    run(backy_job(&job).args(["forget", "-r", &made[1]]))
        .failure()
        .stderr_has(&format!(
            "revision {} is protected (reason: before the upgrade); unprotect it first ('backy unprotect -r {}') or use --force",
            made[1], made[1]
        ));
    run(backy_job(&job).args(["forget", "-r", "0"]))
        .failure()
        .stderr_has(&format!(
            "revision {} is the newest complete revision",
            made[3]
        ))
        .stderr_has("use --force");
    assert!(
        files(&made[1])
            .iter()
            .chain(&files(&made[3]))
            .all(|f| f.exists())
    );
    // An older, unprotected one goes as before.
    run_ok(backy_job(&job).args(["forget", "-r", &made[2]]));
    assert!(files(&made[2]).iter().all(|f| !f.exists()));

    // Protecting again keeps the date and, without --reason, the reason.
    run_ok(backy_job(&job).args(["protect", "-r", &made[1]])).stderr_has("already protected");
    let json = complete(&job);
    assert_eq!(json[1]["protected_reason"], "before the upgrade");
    assert_eq!(json[1]["protected_since"], since.as_str());
    run_ok(backy_job(&job).args(["unprotect", "-r", &made[1]]))
        .stderr_has(&format!("Unprotected revision {}", made[1]));
    assert!(!rev_text(&job, &made[1]).contains("protected"));
    run_ok(backy_job(&job).args(["unprotect", "-r", &made[1]])).stderr_has("was not protected");
    run_ok(backy_job(&job).args(["forget", "-r", &made[1]]));
    assert!(files(&made[1]).iter().all(|f| !f.exists()));

    // --force deletes a protected newest revision; `last` moves back.
    run_ok(backy_job(&job).args(["protect", "-r", "0"]));
    run_ok(backy_job(&job).args(["forget", "-r", "0", "--force"]))
        .stderr_has(&format!("Forgot protected revision {}", made[3]));
    assert_eq!(ids(&job), [made[0].clone()]);
    assert_eq!(
        fs::read_link(job.join("last")).unwrap(),
        Path::new(&made[0])
    );
    // A reason is one line of words, for the table and the log.
    run_ok(backy_job(&job).args(["protect", "-r", "0", "--reason", " line one\n\tline two "]));
    assert_eq!(complete(&job)[0]["protected_reason"], "line one line two");
    run(backy_job(&job).args(["protect", "-r", "nosuch"]))
        .failure()
        .stderr_has("no complete revision matches 'nosuch'");
    run(backy_job(&job).arg("protect")).code(2);
}

#[test]
fn protect_and_forget_btrfs() {
    protect_and_forget(FsKind::Btrfs);
}

#[test]
fn protect_and_forget_xfs() {
    protect_and_forget(FsKind::Xfs);
}

/// A scheduler config whose schedule `s` keeps `daily` for one day, for the
/// job directory `job`.
fn expire_config(fs: &TestFs, job: &Path, src: &Path) -> PathBuf {
    let conf = fs.join("backy.conf");
    fs::write(
        &conf,
        format!(
            "global: {{base-dir: {}}}\nschedules:\n  s:\n    daily: {{interval: 1d, keep: 1}}\njobs:\n  {}: {{schedule: s, source: {{type: file, filename: {}}}}}\n",
            job.parent().unwrap().display(),
            job.file_name().unwrap().to_string_lossy(),
            src.display()
        ),
    )
    .unwrap();
    conf
}

/// `backy expire` keeps a protected revision (its tag expires, it stays) and
/// `--dry-run` says why; after `unprotect` the next expiry deletes it.
#[test]
fn expire_keeps_protected_revisions() {
    let fs = require_fs!(FsKind::Btrfs, 300);
    let (src, job) = init_job(&fs);
    let made = daily_backups(&src, &job, 3);
    let conf = expire_config(&fs, &job, &src);
    run_ok(backy_job(&job).args(["protect", "-r", &made[0], "--reason", "audit 2015"]));

    let r = run_ok(
        backy_job(&job)
            .args(["expire", "--dry-run", "-c"])
            .arg(&conf),
    );
    let line = |id: &str| {
        r.stdout
            .lines()
            .find(|l| l.contains(id))
            .unwrap_or_else(|| r.fail(&format!("no line for {id}")))
            .to_string()
    };
    assert!(
        line(&made[0]).ends_with("keep    protected (reason: audit 2015); expires daily"),
        "{}",
        r.stdout
    );
    assert!(
        line(&made[1]).ends_with("delete  expires daily"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout.ends_with("(dry run: nothing changed)\n"),
        "{}",
        r.stdout
    );
    assert_eq!(ids(&job), made);

    run_ok(backy_job(&job).arg("expire").arg("-c").arg(&conf));
    assert_eq!(ids(&job), [made[0].clone(), made[2].clone()]);
    let json = complete(&job);
    assert_eq!(json[0]["tags"], serde_json::json!([]));
    assert_eq!(json[0]["protected"], true);
    // backy 2.1 reads a .rev without tags; ours keeps the job usable.
    let out = fs.join("restored");
    run_ok(backy_job(&job).args(["restore", "-r", &made[0]]).arg(&out));

    run_ok(backy_job(&job).args(["unprotect", "-r", &made[0]]))
        .stderr_has("no tags left, so the next expiry deletes it");
    run_ok(backy_job(&job).arg("expire").arg("-c").arg(&conf));
    assert_eq!(ids(&job), [made[2].clone()]);
}

/// The scheduler's expiry over a simulated month, on real files: the runs
/// the scheduler would make for job `test01` with the default schedule
/// (daily 9, weekly 5, monthly 4) from 2015-11-05 for 30 days, each a real
/// `backy backup` dated at its run, each followed by `backy::job::expire`
/// (what the daemon calls after a backup) at the run's end. The revision of
/// 11-10 is protected when it is made. It survives every expiry (losing its
/// daily tag when that expires), and the others end exactly as retention
/// alone decides (a model without protection, planned with the same rules).
#[test]
fn a_month_of_scheduler_expiry_keeps_the_protected_revision() {
    let fs = require_fs!(FsKind::Btrfs, 400);
    let src = fs.join("src.img");
    let job = fs.join("test01");
    write_file(&src, 4 * MIB, &[(0, &pattern_bytes(1, MIB as usize))]);
    run_ok(backy_job(&job).args(["init", "file"]).arg(&src));
    let config = Config::parse(&format!(
        "global: {{base-dir: {}}}\nschedules:\n  default:\n    daily: {{interval: 1d, keep: 9}}\n    weekly: {{interval: 7d, keep: 5}}\n    monthly: {{interval: 30d, keep: 4}}\njobs:\n  test01: {{schedule: default, source: {{type: file, filename: {}}}}}\n",
        fs.path().display(),
        src.display()
    ))
    .unwrap();
    let schedule = config.schedule_of("test01").unwrap();
    let spread = backy::schedule::spread::spread("test01", schedule.max_interval());

    let at = |mo, d, h, mi, s| Utc.with_ymd_and_hms(2015, mo, d, h, mi, s).unwrap();
    let (start, end) = (at(11, 5, 12, 0, 0), at(12, 5, 12, 0, 0));
    let protect_on = at(11, 10, 0, 0, 0);
    let mut protected: Option<String> = None;
    // The model: what retention alone leaves (no protection).
    let mut model: Vec<RevisionInfo> = Vec::new();
    let mut now = start;
    let mut runs = 0;
    loop {
        let history: Vec<(DateTime<Utc>, BTreeSet<String>)> = complete(&job)
            .iter()
            .map(|r| {
                let t = DateTime::parse_from_rfc3339(r["timestamp"].as_str().unwrap());
                let tags = r["tags"].as_array().unwrap().iter();
                let tags = tags.map(|t| t.as_str().unwrap().to_string()).collect();
                (t.unwrap().with_timezone(&Utc), tags)
            })
            .collect();
        let run = backy::schedule::plan::next_run(schedule, spread, &history, now);
        let time = run.time.max(now);
        if time >= end {
            break;
        }
        runs += 1;
        let tags: Vec<&str> = run.tags.iter().map(String::as_str).collect();
        write_at(&src, 2 * MIB, &pattern_bytes(100 + runs, 4096));
        run_ok(backy_job(&job).args(["backup", &tags.join(",")]));
        let id = ids(&job).pop().unwrap();
        set_timestamp(&job, &id, time);
        if protected.is_none() && time >= protect_on {
            run_ok(backy_job(&job).args(["protect", "-r", &id, "--reason", "audit"]));
            protected = Some(id.clone());
        }
        model.push(RevisionInfo {
            id: id.clone(),
            timestamp: time,
            tags: run.tags.clone(),
            complete: true,
            protected: None,
        });
        now = time + TimeDelta::minutes(10);

        let plan = backy::job::expire(&job, schedule, now, false).unwrap();
        let expected = retention::plan(schedule, &model, now);
        for decision in &expected.revisions {
            if decision.delete {
                model.retain(|r| r.id != decision.id);
            } else if let Some(r) = model.iter_mut().find(|r| r.id == decision.id) {
                r.tags = decision.remaining_tags();
            }
        }
        if let Some(p) = &protected {
            let kept = plan.revisions.iter().find(|r| &r.id == p).unwrap();
            assert!(!kept.delete, "{plan}");
            assert!(
                kept.to_string()
                    .contains("keep    protected (reason: audit)"),
                "{kept}"
            );
            assert!(job.join(p).exists() && job.join(format!("{p}.rev")).exists());
        }
        // On disk: the model, plus the protected revision once the model lost it.
        let on_disk: Vec<(String, BTreeSet<String>)> = complete(&job)
            .iter()
            .filter(|r| Some(r["id"].as_str().unwrap()) != protected.as_deref())
            .map(|r| {
                let tags = r["tags"].as_array().unwrap().iter();
                let tags = tags.map(|t| t.as_str().unwrap().to_string()).collect();
                (r["id"].as_str().unwrap().to_string(), tags)
            })
            .collect();
        let modelled: Vec<(String, BTreeSet<String>)> = model
            .iter()
            .filter(|r| Some(r.id.as_str()) != protected.as_deref())
            .map(|r| (r.id.clone(), r.tags.clone()))
            .collect();
        assert_eq!(on_disk, modelled, "after the run at {time}");
    }
    assert_eq!(runs, 31);
    let protected = protected.unwrap();
    // Retention alone would have deleted it; on disk it stays, without tags.
    assert!(model.iter().all(|r| r.id != protected));
    let json = complete(&job);
    let kept = json.iter().find(|r| r["id"] == protected.as_str()).unwrap();
    assert_eq!(kept["tags"], serde_json::json!([]));
    assert_eq!(kept["protected_reason"], "audit");
    assert_eq!(json.len(), model.len() + 1);
    // It still restores.
    let out = fs.join("restored");
    run_ok(
        backy_job(&job)
            .args(["restore", "-r", &protected])
            .arg(&out),
    );
}

/// The real scheduler daemon: with a schedule of seconds (`often` every 2 s,
/// keep 2; `rarely` every 6 s, keep 1) a revision protected right after the
/// first run survives the expiry after every later run, losing its tags,
/// while the others are expired as usual.
#[test]
fn the_scheduler_daemon_never_expires_a_protected_revision() {
    let fs = require_fs!(FsKind::Btrfs, 512);
    let base = fs.join("base");
    let src = fs.join("src.img");
    write_file(&src, 4 * MIB, &[(0, &pattern_bytes(5, MIB as usize))]);
    fs::create_dir(&base).unwrap();
    let conf = fs.join("backy.conf");
    fs::write(
        &conf,
        format!(
            "global:\n  base-dir: {}\n  worker-limit: 1\n  run-timeout: 10m\n  status-interval: 1\n  telnet-addrs: \"127.0.0.1\"\n  telnet-port: 0\nschedules:\n  fast:\n    often: {{interval: 2s, keep: 2}}\n    rarely: {{interval: 6s, keep: 1}}\njobs:\n  job1: {{schedule: fast, source: {{type: file, filename: {}}}}}\n",
            base.display(),
            src.display()
        ),
    )
    .unwrap();
    let log = fs.join("scheduler.log");
    let child = backy()
        .arg("-l")
        .arg(&log)
        .arg("scheduler")
        .arg("-c")
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut daemon = Background { child };
    let read_log = || fs::read_to_string(&log).unwrap_or_default();
    let job = base.join("job1");
    let wait = |what: &str, done: &dyn Fn() -> bool| {
        let start = std::time::Instant::now();
        while !done() {
            assert!(
                start.elapsed() < std::time::Duration::from_secs(60),
                "{what} did not happen:\n{}",
                read_log()
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    };
    wait("the first backup", &|| {
        job.is_dir() && !ids(&job).is_empty()
    });
    let first = ids(&job)[0].clone();
    // An expiry holds the purge lock for a moment: try again then.
    wait("protect", &|| {
        run(backy_job(&job).args(["protect", "-r", &first, "--reason", "keep me"]))
            .status
            .success()
    });
    // Runs every 2 s, each followed by expiry: let a dozen seconds pass
    // and wait until the first revision has lost its tags (after 6 s).
    wait("expiry of the protected revision's tags", &|| {
        complete(&job)
            .iter()
            .any(|r| r["id"] == first.as_str() && r["tags"] == serde_json::json!([]))
    });
    let runs_then = read_log().matches("Job job1 finished").count();
    wait("three more runs", &|| {
        read_log().matches("Job job1 finished").count() >= runs_then + 3
    });
    let status = daemon.terminate("scheduler", read_log);
    assert!(status.success(), "{}", read_log());

    let after = complete(&job);
    let kept = after.iter().find(|r| r["id"] == first.as_str());
    let kept = kept.unwrap_or_else(|| panic!("the protected revision is gone: {after:?}"));
    assert_eq!(kept["protected_reason"], "keep me");
    // Everything else follows retention: at most the 6 s window of `rarely`
    // (4 runs) plus the newest, and fewer than were made.
    let made = read_log().matches("Job job1 finished").count();
    let others = after.len() - 1;
    assert!(
        others <= 5 && others < made,
        "{others} unprotected revisions left of {made} runs: {after:?}"
    );
    let r = run_ok(
        backy_job(&job)
            .arg("expire")
            .arg("-c")
            .arg(&conf)
            .arg("--dry-run"),
    );
    assert!(
        r.stdout
            .contains("keep    protected (reason: keep me); no tags"),
        "{}",
        r.stdout
    );
}
