//! The real scheduler end to end: file jobs with schedules of a few seconds on
//! a loop-mounted btrfs, run for a bounded time.

mod util;

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use util::*;

const MIB: u64 = 1 << 20;

struct Daemon {
    child: Background,
    log: PathBuf,
}

impl Daemon {
    fn start(config: &Path, log: &Path, env: &[(&str, &Path)]) -> Daemon {
        let mut cmd = backy();
        cmd.arg("-l")
            .arg(log)
            .arg("scheduler")
            .arg("-c")
            .arg(config);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        Daemon {
            child: Background { child },
            log: log.to_owned(),
        }
    }

    fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn wait_for_log(&self, needle: &str, limit: Duration) -> String {
        let start = Instant::now();
        loop {
            let log = self.log();
            if log.contains(needle) {
                return log;
            }
            assert!(
                start.elapsed() < limit,
                "no {needle:?} in the scheduler log after {limit:?}:\n{log}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn signal(&self, sig: &str) {
        run_ok(Command::new("kill").args([&format!("-{sig}"), &self.child.child.id().to_string()]));
    }

    fn console_port(&self) -> u16 {
        let log = self.wait_for_log("Console listening on 127.0.0.1:", Duration::from_secs(10));
        let line = log
            .lines()
            .find(|l| l.contains("Console listening on 127.0.0.1:"))
            .unwrap();
        line.rsplit(':').next().unwrap().trim().parse().unwrap()
    }

    fn stop(mut self) -> std::process::ExitStatus {
        let log = self.log.clone();
        self.child
            .terminate("scheduler", || fs::read_to_string(&log).unwrap_or_default())
    }
}

fn status_json(job: &Path) -> Vec<serde_json::Value> {
    serde_json::from_str(&run_ok(backy_job(job).args(["status", "--json"])).stdout).unwrap()
}

/// A `$BACKY_CMD` that records when each backup starts and ends, then runs the
/// real backy, so the test can observe concurrency.
fn recording_backy(dir: &Path) -> (PathBuf, PathBuf) {
    let record = dir.join("runs.log");
    let script = dir.join("backy-recording");
    fs::write(
        &script,
        format!(
            "#!/bin/bash\necho \"start $(date +%s.%N) $2\" >> {rec}\n{backy} \"$@\"\nrc=$?\necho \"end $(date +%s.%N) $2\" >> {rec}\nexit $rc\n",
            rec = record.display(),
            backy = env!("CARGO_BIN_EXE_backy")
        ),
    )
    .unwrap();
    fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).unwrap();
    (script, record)
}

fn max_concurrency(record: &Path) -> usize {
    let mut events: Vec<(f64, i32)> = fs::read_to_string(record)
        .unwrap_or_default()
        .lines()
        .map(|l| {
            let mut w = l.split_whitespace();
            let kind = w.next().unwrap();
            let t: f64 = w.next().unwrap().parse().unwrap();
            (t, if kind == "start" { 1 } else { -1 })
        })
        .collect();
    events.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let (mut now, mut max) = (0i32, 0i32);
    for (_, d) in events {
        now += d;
        max = max.max(now);
    }
    max as usize
}

fn console(port: u16, commands: &[&str]) -> String {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut transcript = String::new();
    let prompt = format!("backy-{} % ", env!("CARGO_PKG_VERSION"));
    let read_to_prompt = |reader: &mut BufReader<TcpStream>, out: &mut String| {
        let mut buf = Vec::new();
        while !buf.ends_with(prompt.as_bytes()) {
            let mut b = [0u8; 1];
            if reader.read(&mut b).unwrap() == 0 {
                break;
            }
            buf.push(b[0]);
        }
        out.push_str(&String::from_utf8_lossy(&buf));
    };
    read_to_prompt(&mut reader, &mut transcript);
    for cmd in commands {
        stream.write_all(format!("{cmd}\r\n").as_bytes()).unwrap();
        transcript.push_str(cmd);
        transcript.push('\n');
        if *cmd == "quit" {
            let mut rest = String::new();
            let _ = reader.read_line(&mut rest);
            assert!(
                rest.is_empty(),
                "the connection stays open after quit: {rest:?}"
            );
            break;
        }
        read_to_prompt(&mut reader, &mut transcript);
    }
    transcript
}

/// A scheduler config with a schedule of seconds. Its run-timeout is set: the
/// default, the shortest interval (2 s), would stop backups of a busy machine.
fn config(base: &Path, jobs: &str, workers: usize) -> String {
    format!(
        "global:\n  base-dir: {base}\n  worker-limit: {workers}\n  run-timeout: 10m\n  status-interval: 1\n  telnet-addrs: \"127.0.0.1\"\n  telnet-port: 0\nschedules:\n  fast:\n    often: {{interval: 2s, keep: 2}}\n    rarely: {{interval: 6s, keep: 1}}\njobs:\n{jobs}",
        base = base.display()
    )
}

#[test]
fn scheduler_backs_up_expires_reports_and_answers() {
    let fs = require_fs!(FsKind::Btrfs, 512);
    let base = fs.join("base");
    let mut jobs = String::new();
    for n in 1..=3 {
        let src = fs.join(format!("src{n}.img"));
        write_file(&src, 4 * MIB, &[(0, &pattern_bytes(n, MIB as usize))]);
        jobs.push_str(&format!(
            "  job{n}: {{schedule: fast, source: {{type: file, filename: {}}}}}\n",
            src.display()
        ));
    }
    jobs.push_str(
        "  broken: {schedule: fast, source: {type: file, filename: /nonexistent/disk.img}}\n",
    );
    fs::create_dir(&base).unwrap();
    let conf = fs.join("backy.conf");
    fs::write(&conf, config(&base, &jobs, 2)).unwrap();
    let (cmd, record) = recording_backy(fs.path());
    let daemon = Daemon::start(&conf, &fs.join("scheduler.log"), &[("BACKY_CMD", &cmd)]);
    let port = daemon.console_port();

    // A second scheduler on the same base directory refuses with 69.
    run(backy().arg("scheduler").arg("-c").arg(&conf))
        .code(69)
        .stderr_has("another backy scheduler is running");

    daemon.wait_for_log("Job broken failed", Duration::from_secs(20));
    std::thread::sleep(Duration::from_secs(9));

    let session = console(
        port,
        &[
            "jobs",
            "jobs ^job[12]$",
            "status",
            "run job3",
            "run nosuch",
            "frobnicate",
            "quit",
        ],
    );
    eprintln!("{session}");
    for needle in [
        "| Job    | SLA     | Status",
        "4 jobs shown",
        "2 jobs shown",
        "Triggered immediate run for job3",
        "Unknown job nosuch",
        "frobnicate: command not found.",
        "| failed ",
    ] {
        assert!(
            session.contains(needle),
            "console lacks {needle:?}:\n{session}"
        );
    }

    // Junk and a client vanishing mid-line do not disturb the daemon.
    let mut junk = TcpStream::connect(("127.0.0.1", port)).unwrap();
    junk.write_all(&[255, 251, 1, 0, 200, 13, 10]).unwrap();
    junk.write_all(&vec![b'x'; 100_000]).unwrap();
    junk.write_all(b"\r\nhalf a comm").unwrap();
    drop(junk);
    assert!(console(port, &["jobs job1"]).contains("\n1 job shown"));

    // Status file and check agree: the broken job is out of SLA, the others in.
    let status = fs::read_to_string(base.join("status")).unwrap();
    assert!(
        status.contains("- job: broken\n  sla: TOO OLD\n  status: failed"),
        "{status}"
    );
    let r = run(backy().arg("check").arg("-c").arg(&conf)).code(2);
    assert!(
        r.stdout.starts_with(
            "CRITICAL: 1 job not within SLA | jobs=4 out_of_sla=1 oldest_backup_age="
        ) && r.stdout.contains(
            "\nbroken (last time: -), last run failed: exit code 1: source /nonexistent/disk.img "
        ),
        "{}",
        r.stdout
    );

    // SIGHUP with a bad config keeps the old one; with a good one, reloads.
    fs::write(&conf, "global: {worker-limit: many}\n").unwrap();
    daemon.signal("HUP");
    daemon.wait_for_log("Keeping the old configuration", Duration::from_secs(10));
    let jobs_without_broken: String = jobs
        .lines()
        .filter(|l| !l.contains("broken"))
        .map(|l| format!("{l}\n"))
        .collect();
    fs::write(&conf, config(&base, &jobs_without_broken, 2)).unwrap();
    daemon.signal("HUP");
    daemon.wait_for_log(": 3 jobs", Duration::from_secs(10));
    std::thread::sleep(Duration::from_secs(2));
    let r = run(backy().arg("check").arg("-c").arg(&conf)).code(0);
    assert!(
        r.stdout
            .starts_with("OK: 3 jobs within SLA | jobs=3 out_of_sla=0 oldest_backup_age=")
            && r.stdout.ends_with("s\n")
            && r.stdout.lines().count() == 1,
        "{}",
        r.stdout
    );

    let status = daemon.stop();
    assert!(status.success(), "scheduler exited with {status}");
    let log = fs::read_to_string(fs.join("scheduler.log")).unwrap();
    assert!(log.contains("Scheduler stopped"), "{log}");
    assert!(
        log.contains("Job broken failed with exit code 1: source /nonexistent/disk.img ")
            && log.contains("Job broken: retrying in 2 minutes"),
        "{log}"
    );

    // Each failed run's error is in the job's log once, with its timestamp
    // (before, the child's stderr summary was appended beside it).
    let job_log = fs::read_to_string(base.join("broken/backy.log")).unwrap();
    let runs = job_log.matches("Backy operation failed.").count();
    assert!(runs >= 1, "{job_log}");
    assert_eq!(
        job_log
            .matches("/nonexistent/disk.img does not exist")
            .count(),
        runs,
        "{job_log}"
    );
    assert!(!job_log.contains("\nbacky: "), "{job_log}");

    // worker-limit 2 held; backups happened with the right tags; retention kept
    // at most `keep` of each tag beyond the newest run.
    let most = max_concurrency(&record);
    assert!(
        (1..=2).contains(&most),
        "{most} backups ran at once with worker-limit 2"
    );
    for n in 1..=3 {
        let job = base.join(format!("job{n}"));
        let revs = status_json(&job);
        assert!(revs.len() >= 2, "job{n}: {revs:?}");
        assert!(
            revs.iter().all(|r| r["complete"] == true),
            "job{n}: {revs:?}"
        );
        let count = |tag: &str| {
            revs.iter()
                .filter(|r| r["tags"].as_array().unwrap().iter().any(|t| t == tag))
                .count()
        };
        // The daemon still runs: a backup may have committed its revision
        // just before this look and its expiry not yet run, so one more
        // than retention keeps may be there.
        assert!(
            count("often") >= 1 && count("often") <= 4,
            "job{n}: {revs:?}"
        );
        assert!(
            count("rarely") >= 1 && count("rarely") <= 3,
            "job{n}: {revs:?}"
        );
        // The first run carried every tag, as a job without history does.
        let config = fs::read_to_string(job.join("config")).unwrap();
        assert!(config.contains(&format!("src{n}.img")), "{config}");
    }
}

#[test]
fn worker_limit_one_serialises_and_sigterm_leaves_nothing_complete_that_is_not() {
    let fs = require_fs!(FsKind::Btrfs, 1024);
    let base = fs.join("base");
    let mut jobs = String::new();
    for n in 1..=3 {
        let src = fs.join(format!("src{n}.img"));
        write_file(&src, 64 * MIB, &[(0, &pattern_bytes(n, 48 * MIB as usize))]);
        jobs.push_str(&format!(
            "  job{n}: {{schedule: fast, source: {{type: file, filename: {}}}}}\n",
            src.display()
        ));
    }
    fs::create_dir(&base).unwrap();
    let conf = fs.join("backy.conf");
    fs::write(&conf, config(&base, &jobs, 1)).unwrap();
    let (cmd, record) = recording_backy(fs.path());
    let daemon = Daemon::start(&conf, &fs.join("scheduler.log"), &[("BACKY_CMD", &cmd)]);
    daemon.wait_for_log("Job job3 finished", Duration::from_secs(60));
    // Stop while a backup is likely running.
    daemon.wait_for_log("started (pid", Duration::from_secs(10));
    let status = daemon.stop();
    assert!(status.success());
    assert_eq!(max_concurrency(&record), 1);
    for n in 1..=3 {
        let job = base.join(format!("job{n}"));
        for rev in status_json(&job) {
            if rev["complete"] == true {
                let image = Path::new(rev["image"].as_str().unwrap());
                run_ok(backy_job(&job).args(["verify", "-r", rev["id"].as_str().unwrap()]));
                assert!(image.exists());
            }
        }
    }
}

#[test]
fn check_reports_missing_and_stale_status_files() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("backy.conf");
    let base = dir.path().join("base");
    fs::write(
        &conf,
        config(
            &base,
            "  a: {schedule: fast, source: {type: file, filename: /x.img}}\n",
            1,
        ),
    )
    .unwrap();
    let r = run(backy().arg("check").arg("-c").arg(&conf)).code(3);
    assert_eq!(
        r.stdout,
        format!(
            "UNKNOWN: No status file found at {}\n",
            base.join("status").display()
        )
    );
    fs::create_dir_all(&base).unwrap();
    // An empty status file (or one without a configured job) is not OK.
    for empty in ["", "[]\n"] {
        fs::write(base.join("status"), empty).unwrap();
        let r = run(backy().arg("check").arg("-c").arg(&conf)).code(2);
        assert!(
            r.stdout
                .starts_with("CRITICAL: 1 job configured but not scheduled | jobs=1 ")
                && r.stdout
                    .contains("\na is in the configuration but not in the status file"),
            "{}",
            r.stdout
        );
    }
    fs::write(base.join("status"), "- job: a\n  sla: OK\n  status: finished\n  last_time: '-'\n  last_tags: ''\n  last_duration: '-'\n  next_time: '-'\n  next_tags: ''\n").unwrap();
    let r = run(backy().arg("check").arg("-c").arg(&conf)).code(0);
    assert_eq!(
        r.stdout,
        "OK: 1 job within SLA | jobs=1 out_of_sla=0 oldest_backup_age=U\n"
    );
    run_ok(
        Command::new("touch")
            .args(["-d", "10 minutes ago"])
            .arg(base.join("status")),
    );
    let r = run(backy().arg("check").arg("-c").arg(&conf)).code(2);
    assert!(
        r.stdout.starts_with(&format!(
            "CRITICAL: Status file {} is older than 5 minutes (written 10 minutes ago; the scheduler rewrites it every 1 second): is the scheduler running? |",
            base.join("status").display()
        )),
        "{}",
        r.stdout
    );
    fs::write(&conf, "jobs: [").unwrap();
    let r = run(backy().arg("check").arg("-c").arg(&conf)).code(3);
    assert!(r.stdout.starts_with("UNKNOWN: "), "{}", r.stdout);
}

#[test]
fn a_bad_config_stops_the_scheduler_from_starting() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("backy.conf");
    fs::write(
        &conf,
        "global: {base-dir: /tmp/x, wroker-limit: 2}\nschedules: {s: {daily: {interval: 1x, keep: 0}}}\njobs: {a/b: {schedule: t, source: {type: flyingcircus,}}}\n",
    )
    .unwrap();
    let r = run(backy().arg("scheduler").arg("-c").arg(&conf)).code(1);
    for needle in [
        "global.wroker-limit",
        "schedules.s.daily.interval",
        "schedules.s.daily.keep",
        "jobs.a/b",
    ] {
        if !r.stderr.contains(needle) {
            r.fail(&format!("expected {needle:?} in the error"));
        }
    }
}

/// A storm of SIGHUPs leaves the daemon working; expiry
/// never deletes what a reader (restore, NBD) holds, and waits for the next run;
/// `expire --dry-run` says per revision which tag keeps it.
#[test]
fn sighup_storm_locked_expiry_and_dry_run() {
    let fs = require_fs!(FsKind::Btrfs, 512);
    let base = fs.join("base");
    let src = fs.join("src.img");
    write_file(&src, 4 * MIB, &[(0, &pattern_bytes(5, MIB as usize))]);
    let jobs = format!(
        "  job1: {{schedule: fast, source: {{type: file, filename: {}}}}}\n",
        src.display()
    );
    fs::create_dir(&base).unwrap();
    let conf = fs.join("backy.conf");
    fs::write(&conf, config(&base, &jobs, 1)).unwrap();
    let daemon = Daemon::start(&conf, &fs.join("scheduler.log"), &[]);
    let port = daemon.console_port();
    for _ in 0..30 {
        daemon.signal("HUP");
    }
    daemon.wait_for_log("Reloaded", Duration::from_secs(10));
    assert!(console(port, &["jobs"]).contains("\n1 job shown"));

    // A reader holds the job's purge lock (shared), as a restore does.
    let job = base.join("job1");
    daemon.wait_for_log("Job job1 finished", Duration::from_secs(20));
    let reader = fs::File::open(job.join(".purge")).unwrap();
    reader.try_lock_shared().unwrap();
    let before = status_json(&job).len();
    let log = daemon.wait_for_log(
        "Could not expire revisions of job1",
        Duration::from_secs(30),
    );
    assert!(
        log.contains(&format!("is locked by process {} (", std::process::id())),
        "{log}"
    );
    // The first refusal may belong to the run whose backup finished just
    // before the reader took the lock; backups go on every 2 s regardless.
    let start = Instant::now();
    let held = loop {
        let held = status_json(&job).len();
        if held > before {
            break held;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "no backup ran while the reader held the lock"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    drop(reader);
    std::thread::sleep(Duration::from_secs(5));
    let status = daemon.stop();
    assert!(status.success());
    let after = status_json(&job);
    // Retention keeps what is younger than keep*interval (6 s for `rarely`):
    // with a backup every 2 s that is at most 4 revisions, plus the newest.
    assert!(
        after.len() <= 5 && after.len() < held.max(6),
        "expiry did not catch up after the reader left: {after:?}"
    );

    let r = run_ok(
        backy_job(&job)
            .arg("expire")
            .arg("-c")
            .arg(&conf)
            .arg("--dry-run"),
    );
    assert!(
        r.stdout.contains("(dry run: nothing changed)"),
        "{}",
        r.stdout
    );
    // One line per revision, what the deletions free, the dry-run note.
    assert_eq!(r.stdout.lines().count(), after.len() + 2, "{}", r.stdout);
    assert!(r.stdout.contains("keep"), "{}", r.stdout);
}

/// A `$BACKY_CMD` that plays a different child per job (chosen by the job
/// directory's name in `-b DIR`) and runs the real backy for the others.
fn scripted_backy(dir: &Path, cases: &str) -> PathBuf {
    let script = dir.join("backy-scripted");
    fs::write(
        &script,
        format!(
            "#!/bin/bash\ncase \"$2\" in\n{cases}\nesac\nexec {backy} \"$@\"\n",
            backy = env!("CARGO_BIN_EXE_backy")
        ),
    )
    .unwrap();
    fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).unwrap();
    script
}

fn pid_in(line_start: &str, log: &str) -> i32 {
    let line = log
        .lines()
        .find(|l| l.contains(line_start))
        .unwrap_or_else(|| panic!("no {line_start:?} in\n{log}"));
    let after = line.split("pid ").nth(1).unwrap();
    after
        .trim_end_matches(|c: char| !c.is_ascii_digit())
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

fn alive(pid: i32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && !fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z ")
}

/// Issue 9: a child that never ends (here one that even ignores SIGTERM) is
/// stopped after its run-timeout, counts as failed with backoff, and the other
/// job keeps being backed up with worker-limit 1; exit status 75 gets its own
/// line and is told apart by the status file, the console and check; a job a
/// reload removed still gets a line when its backup ends.
#[test]
fn run_timeout_source_written_and_removed_jobs() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base");
    fs::create_dir(&base).unwrap();
    let src = dir.path().join("good source.img");
    write_file(&src, MIB, &[(0, &pattern_bytes(9, MIB as usize))]);
    let cmd = scripted_backy(
        dir.path(),
        "  */stuck) trap '' TERM; exec sleep 600 ;;\n  */written) echo 'backy: source changed' >&2; exit 75 ;;\n  */slow) sleep 3; exit 0 ;;",
    );
    let job = |name: &str, extra: &str| {
        format!(
            "  {name}: {{schedule: fast, allow-copy: true{extra}, source: {{type: file, filename: '{}'}}}}\n",
            src.display()
        )
    };
    let all = [
        job("good", ""),
        job("slow", ", run-timeout: 1h"),
        job("stuck", ", run-timeout: 2s"),
        job("written", ""),
    ];
    let conf = dir.path().join("backy.conf");
    let write_conf = |jobs: &[String]| {
        fs::write(&conf, config(&base, &jobs.concat(), 1)).unwrap();
    };
    write_conf(&all);
    let daemon = Daemon::start(
        &conf,
        &dir.path().join("scheduler.log"),
        &[("BACKY_CMD", &cmd)],
    );
    let port = daemon.console_port();

    // The slow job's backup outlives its removal from the configuration.
    daemon.wait_for_log("Job slow started", Duration::from_secs(20));
    write_conf(&[all[0].clone(), all[2].clone(), all[3].clone()]);
    daemon.signal("HUP");
    daemon.wait_for_log("Reloaded", Duration::from_secs(10));
    daemon.wait_for_log(
        "Job slow (removed from the config) finished",
        Duration::from_secs(20),
    );

    let log = daemon.wait_for_log(
        "Job stuck did not stop after SIGTERM; killing it (SIGKILL",
        Duration::from_secs(30),
    );
    assert!(
        log.contains("Job stuck has run longer than its run-timeout of 2 seconds; stopping it (SIGTERM to pid"),
        "{log}"
    );
    let pid = pid_in("Job stuck started (pid", &log);
    let log = daemon.wait_for_log("Job stuck: retrying in 2 minutes", Duration::from_secs(20));
    assert!(
        log.contains(
            "Job stuck failed: it ran longer than its run-timeout of 2 seconds and was stopped"
        ),
        "{log}"
    );
    assert!(!alive(pid), "the stuck child {pid} still runs");
    let log = daemon.wait_for_log(
        "Job written: backup failed: the source was written during the backup (freeze or snapshot it)",
        Duration::from_secs(20),
    );
    // The other job goes on after the stuck one was stopped.
    let killed_at = log.find("killing it (SIGKILL").unwrap();
    let start = Instant::now();
    while !daemon.log()[killed_at..].contains("Job good finished") {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{}",
            daemon.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // The logged command line quotes what has spaces.
    assert!(
        log.contains(&format!("-b {}/good -l", base.display())),
        "{log}"
    );

    // Status file, console and check tell the reasons apart.
    let start = Instant::now();
    loop {
        let status = fs::read_to_string(base.join("status")).unwrap_or_default();
        let needles = [
            "- job: stuck\n  sla: ",
            "last_failure_kind: timeout",
            "last_failure_kind: source-written",
            "last_failure: the source was written during the backup (freeze or snapshot it)",
        ];
        if needles.iter().all(|n| status.contains(n)) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{needles:?} not all in\n{status}\n{}",
            daemon.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let session = console(port, &["jobs"]);
    assert!(
        session.contains("\nwritten: last run failed: the source was written during the backup")
            && session.contains("\nstuck: last run failed: it ran longer than its run-timeout")
            && session.contains("3 jobs shown"),
        "{session}"
    );
    let r = run(backy().arg("check").arg("-c").arg(&conf));
    assert!(
        r.stdout
            .contains("written: last run failed: the source was written during the backup")
            || r.stdout.contains(
                "written (last time: -), last run failed: the source was written during the backup"
            ),
        "{}",
        r.stdout
    );
    let status = daemon.stop();
    assert!(status.success());
    // Each error of the good job's runs is in its log once (none failed here);
    // the child's own `backy: ...` summary is not copied in beside its entry.
    let job_log = fs::read_to_string(base.join("written/backy.log")).unwrap_or_default();
    assert!(!job_log.contains("backy: source changed"), "{job_log}");
}

/// Issue 9: 32 idle console clients no longer lock operators out: each is
/// told and disconnected after console-timeout.
#[test]
fn idle_console_clients_are_disconnected() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base");
    fs::create_dir(&base).unwrap();
    let conf = dir.path().join("backy.conf");
    fs::write(
        &conf,
        config(&base, "", 1).replace(
            "  telnet-port: 0\n",
            "  telnet-port: 0\n  console-timeout: 4\n",
        ),
    )
    .unwrap();
    let daemon = Daemon::start(&conf, &dir.path().join("scheduler.log"), &[]);
    let port = daemon.console_port();
    let idle: Vec<TcpStream> = (0..32)
        .map(|_| TcpStream::connect(("127.0.0.1", port)).unwrap())
        .collect();
    // Each idle client got its prompt; the 33rd is turned away.
    let mut first = idle[0].try_clone().unwrap();
    first
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut refused = String::new();
    let mut extra = TcpStream::connect(("127.0.0.1", port)).unwrap();
    extra
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let _ = extra.read_to_string(&mut refused);
    assert!(refused.contains("Too many console clients"), "{refused:?}");
    // Idle ones are told why, then closed.
    let mut text = String::new();
    first.read_to_string(&mut text).unwrap();
    assert!(
        text.ends_with("\r\nClosing the connection: no input for 4 seconds.\r\n"),
        "{text:?}"
    );
    for mut s in idle.into_iter().skip(1) {
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut rest = String::new();
        s.read_to_string(&mut rest).unwrap();
        assert!(rest.contains("Closing the connection"), "{rest:?}");
    }
    // Now there is room again.
    assert!(console(port, &["status", "quit"]).contains("| Status | # |"));
    assert!(daemon.stop().success());
}

/// Issue 9: an unmounted backup volume (a missing base-dir) is never created
/// by the scheduler: it refuses to start, and a run after base-dir vanished
/// fails without creating it.
#[test]
fn a_missing_base_dir_is_never_created() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("mnt/backy");
    let conf = dir.path().join("backy.conf");
    let jobs = "  j: {schedule: fast, source: {type: file, filename: /x.img}}\n";
    fs::write(&conf, config(&base, jobs, 1)).unwrap();
    let r = run(backy().arg("scheduler").arg("-c").arg(&conf)).code(1);
    assert!(
        r.stderr.contains(&format!(
            "base-dir {} does not exist; mount the backup volume there or create the directory",
            base.display()
        )),
        "{}",
        r.stderr
    );
    assert!(!base.exists() && !base.parent().unwrap().exists());

    fs::create_dir_all(&base).unwrap();
    let truth = Path::new("/bin/true");
    let daemon = Daemon::start(
        &conf,
        &dir.path().join("scheduler.log"),
        &[("BACKY_CMD", truth)],
    );
    daemon.wait_for_log("Job j finished", Duration::from_secs(20));
    fs::remove_dir_all(&base).unwrap();
    let log = daemon.wait_for_log("Job j failed: base-dir", Duration::from_secs(20));
    assert!(
        log.contains(&format!(
            "Job j failed: base-dir {} does not exist; mount the backup volume or create it",
            base.display()
        )),
        "{log}"
    );
    assert!(!base.exists(), "the scheduler created {}", base.display());
    assert!(daemon.stop().success());
    assert!(!base.exists());
}

/// Fills `fs` until a write fails for lack of space.
fn fill_up(fs: &TestFs) {
    let mut file = fs::File::create(fs.join("filler")).unwrap();
    let block = pattern_bytes(77, MIB as usize);
    while file.write_all(&block).is_ok() {}
    let _ = file.sync_all();
    // Metadata reserves: keep writing small pieces until even those fail.
    let mut n = 0;
    while n < 10_000 && fs::write(fs.join(format!("f{n}")), &block[..4096]).is_ok() {
        n += 1;
    }
}

/// Issue 9: a backup that fails because the job filesystem is full (so its
/// log cannot be written either) is reported by the scheduler with the reason,
/// never as a panic's exit status 101 with an empty log; btrfs and XFS.
#[test]
fn a_full_job_filesystem_fails_the_run_with_its_reason() {
    for kind in FsKind::REFLINK {
        let Some(fs) = TestFs::new(kind, 320) else {
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src.img");
        write_file(&src, 32 * MIB, &[(0, &pattern_bytes(3, 32 * MIB as usize))]);
        let base = fs.join("base");
        fs::create_dir(&base).unwrap();
        let conf = dir.path().join("backy.conf");
        let jobs = format!(
            "  j: {{schedule: fast, source: {{type: file, filename: {}}}}}\n",
            src.display()
        );
        fs::write(
            &conf,
            config(&base, &jobs, 1).replace(
                "status-interval: 1\n",
                &format!(
                    "status-interval: 1\n  status-file: {}\n",
                    dir.path().join("status").display()
                ),
            ),
        )
        .unwrap();
        // A first run writes the job's config; then the filesystem fills up.
        let log = dir.path().join("scheduler.log");
        let daemon = Daemon::start(&conf, &log, &[("BACKY_CMD", Path::new("/bin/true"))]);
        daemon.wait_for_log("Job j finished", Duration::from_secs(20));
        assert!(daemon.stop().success());
        fill_up(&fs);
        fs::write(&log, "").unwrap();
        let daemon = Daemon::start(&conf, &log, &[]);
        let text = daemon.wait_for_log("Job j failed", Duration::from_secs(60));
        let line = text.lines().find(|l| l.contains("Job j failed")).unwrap();
        assert!(
            line.contains("Job j failed with exit code 1: ")
                && line.contains("No space left on device"),
            "{kind}: {text}"
        );
        assert!(!text.contains("exit code 101"), "{kind}: {text}");
        assert!(daemon.stop().success());
    }
}

/// `scrub: 3s 50%` runs `verify --sample 50` on the job between its backups,
/// within the worker limit, logs it and records it in the status file and in
/// the revisions; `verification: written` reaches the job's `config`.
#[test]
fn scrubs_run_between_backups_and_are_recorded() {
    let fs = require_fs!(FsKind::Btrfs, 512);
    let base = fs.join("base");
    let src = fs.join("src.img");
    write_file(&src, 4 * MIB, &[(0, &pattern_bytes(5, MIB as usize))]);
    let jobs = format!(
        "  job1: {{schedule: fast, verification: written, scrub: 3s 50%, source: {{type: file, filename: {}}}}}\n",
        src.display()
    );
    fs::create_dir(&base).unwrap();
    let conf = fs.join("backy.conf");
    fs::write(&conf, config(&base, &jobs, 1)).unwrap();
    let (cmd, record) = recording_backy(fs.path());
    let daemon = Daemon::start(&conf, &fs.join("scheduler.log"), &[("BACKY_CMD", &cmd)]);
    let log = daemon.wait_for_log(
        "Job job1: scrub finished, the sampled blocks match",
        Duration::from_secs(30),
    );
    assert!(log.contains("scrubbing 50 %"), "{log}");
    // The status file says when it ran and how it ended.
    let status_file = base.join("status");
    let start = Instant::now();
    let status = loop {
        let text = fs::read_to_string(&status_file).unwrap_or_default();
        if text.contains("scrub_result: ok") || start.elapsed() > Duration::from_secs(10) {
            break text;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(status.contains("scrub_result: ok"), "{status}");
    assert!(status.contains("last_scrub:"), "{status}");
    assert!(status.contains("next_scrub:"), "{status}");
    let status = daemon.stop();
    assert!(status.success());
    // The scrub ran inside the worker limit of 1 and left its record.
    assert_eq!(max_concurrency(&record), 1);
    let job = base.join("job1");
    assert!(
        fs::read_to_string(job.join("config"))
            .unwrap()
            .contains("verification: written")
    );
    let revs = status_json(&job);
    assert!(
        revs.iter().any(|r| {
            let id = r["id"].as_str().unwrap();
            fs::read_to_string(job.join(format!("{id}.rev")))
                .unwrap()
                .contains("scope: sample")
        }),
        "{revs:?}"
    );
}
