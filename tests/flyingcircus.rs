//! The flyingcircus source (issue 13): a backup asks the hypervisor through
//! Consul to freeze the guest and take the snapshot, and falls back to a
//! crash-consistent snapshot of its own, recorded as such, when that does not
//! happen. Against the real throw-away Ceph cluster and the Consul KV
//! stand-in of `tests/util/consul.rs` (Consul cannot be installed here).

mod util;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use util::ceph::{RbdOp, TestCeph};
use util::consul::{Answer, Behaviour, ConsulStandIn, Hypervisor};
use util::*;

const MIB: u64 = 1 << 20;
/// The ACL token the stand-in wants. Distinctive, so that a leak is found.
const TOKEN: &str = "tok-5b1e7d24-fc13-secret";
const VM: &str = "vm01";

struct Setup {
    ceph: TestCeph,
    fs: TestFs,
    job: PathBuf,
    log: PathBuf,
    consul: ConsulStandIn,
}

impl Setup {
    fn backy(&self) -> Command {
        let mut cmd = backy_job(&self.job);
        cmd.arg("-l").arg(&self.log);
        self.ceph.env(&mut cmd);
        cmd
    }

    /// `backup daily`; the log lines it wrote are added to its stderr.
    fn backup(&self) -> Run {
        let mark = self.log_len();
        let mut r = run(self.backy().args(["backup", "daily"]));
        r.stderr.push_str(&self.log_since(mark));
        self.assert_no_token(&r);
        r
    }

    /// Neither the log file nor what a command printed holds the token.
    fn assert_no_token(&self, r: &Run) {
        let log = fs::read_to_string(&self.log).unwrap_or_default();
        for (what, text) in [("log", &log), ("stderr", &r.stderr), ("stdout", &r.stdout)] {
            assert!(!text.contains(TOKEN), "the token is in the {what}:\n{text}");
            assert!(
                !text.contains("wrong-token-77"),
                "a token is in the {what}:\n{text}"
            );
        }
    }

    /// The log lines written since `mark` (the log's length before).
    fn log_since(&self, mark: usize) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()[mark..].to_string()
    }

    fn log_len(&self) -> usize {
        fs::metadata(&self.log).map_or(0, |m| m.len() as usize)
    }

    fn newest(&self) -> serde_json::Value {
        let r = run_ok(self.backy().args(["status", "--json"]));
        let revs: Vec<serde_json::Value> = serde_json::from_str(&r.stdout).unwrap();
        revs.last().cloned().expect("a revision")
    }

    fn newest_id(&self) -> String {
        self.newest()["id"].as_str().unwrap().to_string()
    }

    fn rev_text(&self) -> String {
        fs::read_to_string(self.job.join(format!("{}.rev", self.newest_id()))).unwrap()
    }

    /// The newest revision restores to `rbd export` of its snapshot.
    fn newest_restores_to_its_snapshot(&self) {
        let id = self.newest_id();
        let truth = self.fs.join(format!("truth-{id}"));
        self.ceph.export(&format!("img@backy-{id}"), &truth);
        let out = self.fs.join(format!("restored-{id}"));
        run_ok(self.backy().args(["restore", "-r", "0"]).arg(&out));
        assert_same_content(&out, &truth);
    }

    fn hypervisor(&self, answer: Answer) -> Hypervisor {
        Hypervisor::start(
            &self.consul,
            VM,
            self.ceph.conf().to_path_buf(),
            &self.ceph.spec("img"),
            answer,
        )
    }

    /// Replaces `key: ...` lines of the job config (appends when missing);
    /// `None` removes the key.
    fn set_config(&self, key: &str, value: Option<&str>) {
        let path = self.job.join("config");
        let text = fs::read_to_string(&path).unwrap();
        let mut lines: Vec<String> = text
            .lines()
            .filter(|l| !l.starts_with(&format!("{key}:")))
            .map(str::to_string)
            .collect();
        if let Some(v) = value {
            lines.push(format!("{key}: {v}"));
        }
        fs::write(&path, lines.join("\n") + "\n").unwrap();
    }
}

/// A cluster with image `img` (16 MiB of data), the stand-in wanting
/// [`TOKEN`], and a flyingcircus job made by `init` with that token, the
/// stand-in's address and a `freeze-timeout` of `timeout` seconds.
fn setup(timeout: u64) -> Option<Setup> {
    let ceph = TestCeph::start()?;
    let fs = TestFs::new(FsKind::Btrfs, 512)?;
    ceph.create_image("img", 16);
    ceph.write_ops(
        "img",
        &[
            RbdOp::Write(0, &pattern_bytes(1, MIB as usize)),
            RbdOp::Write(9 * MIB + 100, &pattern_bytes(2, 200_000)),
        ],
    );
    let consul = ConsulStandIn::start(Some(TOKEN));
    let job = fs.join("job");
    let log = fs.join("backy.log");
    let s = Setup {
        ceph,
        fs,
        job,
        log,
        consul,
    };
    let r = run_ok(
        s.backy()
            .args(["init", "flyingcircus"])
            .arg(format!("rbd/img,{VM},{TOKEN}")),
    );
    s.assert_no_token(&r);
    s.set_config("consul-address", Some(&s.consul.address()));
    s.set_config("freeze-timeout", Some(&timeout.to_string()));
    Some(s)
}

/// The hypervisor answers in time: the revision is frozen, the request was
/// exactly the documented one (with the token in its header) and is gone, and
/// the revision restores to its snapshot; the next backup diffs from it.
/// backy 2.1.5 still reads and restores such revisions.
#[test]
fn a_frozen_snapshot_when_the_hypervisor_answers() {
    let Some(s) = setup(30) else { return };
    let hv = s.hypervisor(Answer::After(Duration::from_millis(700)));
    s.backup()
        .success()
        .stderr_has("Asking the hypervisor of vm01");
    let id = s.newest_id();
    assert_eq!(hv.taken(), vec![format!("backy-{id}")]);
    let rev = s.newest();
    assert_eq!(rev["consistency"], "frozen", "{rev}");
    assert!(rev["consistency_reason"].is_null(), "{rev}");
    assert!(s.rev_text().contains("consistency: frozen"));
    assert!(s.consul.keys().is_empty(), "{:?}", s.consul.keys());
    let put = s
        .consul
        .requests()
        .into_iter()
        .find(|r| r.method == "PUT")
        .expect("a PUT");
    let uuid = put.path.strip_prefix("/v1/kv/snapshot/").expect(&put.path);
    assert_eq!(uuid.len(), 36, "{uuid}");
    assert_eq!(uuid.as_bytes()[14], b'4', "not a uuid4: {uuid}");
    assert_eq!(put.token.as_deref(), Some(TOKEN));
    let body: serde_json::Value = serde_json::from_slice(&put.body).unwrap();
    assert_eq!(
        body,
        serde_json::json!({"vm": VM, "snapshot": format!("backy-{id}")})
    );
    assert!(
        s.consul
            .requests()
            .iter()
            .any(|r| r.method == "DELETE" && r.path == put.path)
    );
    s.newest_restores_to_its_snapshot();

    s.ceph
        .write("img", 3 * MIB, b"changed after the first backup");
    s.backup().success().stderr_has("Incremental backup");
    assert_eq!(s.newest()["consistency"], "frozen");
    assert_eq!(hv.taken().len(), 2);
    s.newest_restores_to_its_snapshot();
    let table = run_ok(s.backy().arg("status")).stdout;
    assert!(table.contains("Consistency"), "{table}");
    assert_eq!(table.matches(" frozen ").count(), 2, "{table}");

    // backy 2.1.5 reads the job and restores the frozen revision.
    if let Some(launcher) = python_backy() {
        let r = run_ok(
            python_backy_command(&launcher)
                .arg("-b")
                .arg(&s.job)
                .arg("status"),
        );
        assert!(r.stdout.contains(&s.newest_id()), "{}", r.stdout);
        let out = s.fs.join("py-restored");
        run_ok(
            python_backy_command(&launcher)
                .arg("-b")
                .arg(&s.job)
                .args(["restore", "-r", "0"])
                .arg(&out),
        );
        let truth = s.fs.join("py-truth");
        s.ceph
            .export(&format!("img@backy-{}", s.newest_id()), &truth);
        assert_same_content(&out, &truth);
    }
}

/// The hypervisor never answers: backy waits freeze-timeout, takes the
/// snapshot itself, says why, records `crash` with the reason, and removes its
/// request.
#[test]
fn a_silent_hypervisor_means_a_crash_consistent_fallback() {
    let Some(s) = setup(3) else { return };
    let hv = s.hypervisor(Answer::Never);
    s.backup()
        .success()
        .stderr_has("did not take snapshot backy-")
        .stderr_has("within freeze-timeout (3 s)")
        .stderr_has("only crash-consistent");
    assert!(hv.taken().is_empty());
    let rev = s.newest();
    assert_eq!(rev["consistency"], "crash", "{rev}");
    assert!(
        rev["consistency_reason"]
            .as_str()
            .unwrap()
            .contains("freeze-timeout (3 s)"),
        "{rev}"
    );
    assert!(s.rev_text().contains("consistency: crash"));
    assert!(s.consul.keys().is_empty(), "{:?}", s.consul.keys());
    s.newest_restores_to_its_snapshot();
    let table = run_ok(s.backy().arg("status")).stdout;
    assert!(table.contains("| crash "), "{table}");
    // backy 2.1.5 reads a revision with a consistency_reason too.
    if let Some(launcher) = python_backy() {
        let r = run_ok(
            python_backy_command(&launcher)
                .arg("-b")
                .arg(&s.job)
                .arg("status"),
        );
        assert!(r.stdout.contains(&s.newest_id()), "{}", r.stdout);
    }
}

/// The hypervisor takes the snapshot just after backy stopped waiting (when
/// the request is deleted, before backy's own `rbd snap create`): the
/// "exists" failure is handled and the revision counts as frozen, noting it.
#[test]
fn a_late_hypervisor_snapshot_is_used_and_recorded_as_frozen() {
    // The DELETE that makes the hypervisor act waits for its snapshot: 5 s
    // (requests get at most freeze-timeout) leave room for a loaded machine.
    let Some(s) = setup(5) else { return };
    let hv = s.hypervisor(Answer::WhenDeleted);
    s.backup()
        .success()
        .stderr_has("exists already: the hypervisor took it");
    let id = s.newest_id();
    assert_eq!(hv.taken(), vec![format!("backy-{id}")]);
    let rev = s.newest();
    assert_eq!(rev["consistency"], "frozen", "{rev}");
    let reason = rev["consistency_reason"].as_str().unwrap();
    assert!(
        reason.contains("late") && reason.contains("freeze-timeout"),
        "{reason}"
    );
    assert!(s.consul.keys().is_empty());
    s.newest_restores_to_its_snapshot();
}

/// A failure case: its name, how to bring it about, the reason expected.
type Case<'a> = (&'a str, &'a dyn Fn(&Setup), &'a str);

/// Consul down, a wrong token, a server that speaks no HTTP, a web server
/// instead of Consul, a server that hangs: each time the backup succeeds
/// crash-consistent with the reason in the log and the revision. Then
/// `$CONSUL_HTTP_TOKEN` and `$CONSUL_HTTP_ADDR` stand in for missing config
/// keys and the guest is frozen again.
#[test]
fn consul_failures_fall_back_and_the_backup_succeeds() {
    let Some(s) = setup(3) else { return };
    let hv = s.hypervisor(Answer::After(Duration::from_millis(300)));
    let nothing_there = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    let cases: [Case; 5] = [
        (
            "consul down",
            &|s| s.set_config("consul-address", Some(&nothing_there)),
            "cannot reach Consul at 127.0.0.1:",
        ),
        (
            "wrong token",
            &|s| {
                s.set_config("consul-address", Some(&s.consul.address()));
                s.set_config("consul_acl_token", Some("wrong-token-77"));
            },
            "refused the request (HTTP 403: the ACL token is not accepted)",
        ),
        (
            "garbage",
            &|s| {
                s.set_config("consul_acl_token", Some(TOKEN));
                s.consul.set_behaviour(Behaviour::Garbage);
            },
            "is not Consul's KV API: it does not speak HTTP",
        ),
        (
            "html",
            &|s| s.consul.set_behaviour(Behaviour::Html),
            "is not Consul's KV API: PUT snapshot/",
        ),
        (
            "hang",
            &|s| s.consul.set_behaviour(Behaviour::Hang),
            "did not answer within 3 s",
        ),
    ];
    for (n, (name, prepare, reason)) in cases.iter().enumerate() {
        prepare(&s);
        let mark = s.log_len();
        s.backup().success().stderr_has(reason);
        let log = s.log_since(mark);
        assert!(
            log.contains("WARN") && log.contains(reason),
            "{name}: {log}"
        );
        let rev = s.newest();
        assert_eq!(rev["consistency"], "crash", "{name}: {rev}");
        assert!(
            rev["consistency_reason"].as_str().unwrap().contains(reason),
            "{name}: {rev}"
        );
        assert_eq!(hv.taken().len(), 0, "{name}");
        if n == 0 {
            s.newest_restores_to_its_snapshot();
        }
    }
    // The environment supplies what the config leaves out.
    s.consul.set_behaviour(Behaviour::Kv);
    s.set_config("consul_acl_token", None);
    s.set_config("consul-address", None);
    s.set_config("freeze-timeout", Some("30"));
    let r = run(s
        .backy()
        .env("CONSUL_HTTP_TOKEN", TOKEN)
        .env("CONSUL_HTTP_ADDR", format!("http://{}", s.consul.address()))
        .args(["backup", "daily"]));
    s.assert_no_token(&r);
    r.success();
    assert_eq!(s.newest()["consistency"], "frozen");
    assert_eq!(hv.taken().len(), 1);
    assert!(s.consul.keys().is_empty(), "{:?}", s.consul.keys());
    s.newest_restores_to_its_snapshot();
}

/// Requests for this VM left by crashed runs (snapshot `backy-*`) are removed;
/// those of other VMs, of other snapshots and outside `snapshot/` stay.
#[test]
fn stale_requests_of_the_same_vm_are_removed() {
    let Some(s) = setup(30) else { return };
    let stale = [
        (
            "snapshot/0b1c8a3e-0000-4000-8000-000000000001",
            r#"{"vm": "vm01", "snapshot": "backy-OLDRUN1"}"#,
        ),
        (
            "snapshot/0b1c8a3e-0000-4000-8000-000000000002",
            r#"{"vm": "vm01", "snapshot": "backy-OLDRUN2"}"#,
        ),
    ];
    let kept = [
        (
            "snapshot/0b1c8a3e-0000-4000-8000-000000000003",
            r#"{"vm": "vm02", "snapshot": "backy-OTHERVM"}"#,
        ),
        (
            "snapshot/0b1c8a3e-0000-4000-8000-000000000004",
            r#"{"vm": "vm01", "snapshot": "operator-before-upgrade"}"#,
        ),
        ("snapshot/0b1c8a3e-0000-4000-8000-000000000005", "not json"),
        (
            "other/0b1c8a3e-0000-4000-8000-000000000006",
            r#"{"vm": "vm01", "snapshot": "backy-ELSEWHERE"}"#,
        ),
    ];
    for (k, v) in stale.iter().chain(&kept) {
        s.consul.insert(k, v);
    }
    let hv = s.hypervisor(Answer::After(Duration::ZERO));
    s.backup().success().stderr_has(
        "Removed the stale Consul request snapshot/0b1c8a3e-0000-4000-8000-000000000001 for vm01",
    );
    assert_eq!(s.newest()["consistency"], "frozen");
    assert_eq!(hv.taken().len(), 1, "{:?}", hv.taken());
    let left: Vec<String> = s.consul.keys().into_keys().collect();
    let want: Vec<String> = {
        let mut w: Vec<String> = kept.iter().map(|(k, _)| k.to_string()).collect();
        w.sort();
        w
    };
    assert_eq!(left, want);
}

/// The token never shows: not in the logged command line of `init`, not in
/// messages, and a config holding it that others can read gets a warning.
#[test]
fn the_token_stays_out_of_logs_and_messages() {
    let fs = require_fs!(FsKind::Tmpfs, 16);
    let job = fs.join("job");
    let log = fs.join("backy.log");
    let init = |job: &Path| {
        run(backy_job(job)
            .arg("-l")
            .arg(&log)
            .args(["init", "flyingcircus"])
            .arg(format!("rbd/img,{VM},{TOKEN}")))
    };
    init(&job).success();
    // A second init fails: its message and log lines do not show the token.
    let again = init(&job).failure();
    // A token with a comma is refused without being repeated.
    let comma = run(backy_job(&fs.join("job2"))
        .arg("-l")
        .arg(&log)
        .args(["init", "flyingcircus"])
        .arg(format!("rbd/img,{VM},{TOKEN},more")))
    .failure()
    .stderr_has("'rbd/img,vm01,***' is not POOL/IMAGE,VM[,TOKEN]");
    let config = job.join("config");
    assert_eq!(
        fs::metadata(&config).unwrap().permissions().mode() & 0o777,
        0o600
    );
    fs::set_permissions(&config, fs::Permissions::from_mode(0o644)).unwrap();
    // A backup reads the config (here it fails: no Ceph, no Consul).
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string();
    let mut text = fs::read_to_string(&config).unwrap();
    text.push_str(&format!("consul-address: {dead}\nfreeze-timeout: 1\n"));
    fs::write(&config, text).unwrap();
    let status = run(backy_job(&job)
        .arg("-l")
        .arg(&log)
        .env("BACKY_RBD", "/bin/false")
        .args(["backup", "daily"]))
    .failure();
    let text = fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("init flyingcircus 'rbd/img,vm01,***'"),
        "the command line is not masked:\n{text}"
    );
    assert!(
        text.contains("holds the Consul ACL token and is readable by others"),
        "{text}"
    );
    for t in [
        &text,
        &again.stderr,
        &comma.stderr,
        &status.stderr,
        &status.stdout,
    ] {
        assert!(!t.contains(TOKEN), "the token leaked:\n{t}");
    }
}

/// Runs `backy check -c CONFIG` until it exits `code` (the scheduler writes its
/// status file every second), for at most `limit`.
fn check_until(conf: &Path, code: i32, limit: Duration) -> Run {
    let started = std::time::Instant::now();
    loop {
        let r = run(backy().arg("check").arg("-c").arg(conf));
        if r.code == Some(code) {
            return r;
        }
        assert!(
            started.elapsed() < limit,
            "check did not exit {code} within {limit:?}; last: {r:?}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// The console's answer to `jobs`.
fn console_jobs(port: u16) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream.write_all(b"jobs\r\nquit\r\n").unwrap();
    let mut out = Vec::new();
    let _ = stream.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

/// The real scheduler runs a flyingcircus job from its `source:` (with
/// `consul-address` and `freeze-timeout`): after three crash-consistent
/// revisions in a row `check` is a WARNING (exit 1) naming the job, and the
/// console's job table marks it; after a frozen one `check` is OK again.
#[test]
fn check_warns_after_three_crash_consistent_revisions_in_a_row() {
    let Some(s) = setup(1) else { return };
    let hv = s.hypervisor(Answer::Never);
    let base = s.fs.join("base");
    // The scheduler never creates its base-dir (an unmounted volume must not fill
    // the filesystem below it).
    fs::create_dir_all(&base).unwrap();
    let conf = s.fs.join("backy.conf");
    fs::write(
        &conf,
        format!(
            "global:\n  base-dir: {base}\n  status-interval: 1\n  run-timeout: 10m\n  telnet-addrs: \"127.0.0.1\"\n  telnet-port: 0\n  crash-consistent-warning: 3\nschedules:\n  fast:\n    often: {{interval: 6s, keep: 20}}\njobs:\n  fc:\n    schedule: fast\n    source:\n      type: flyingcircus\n      pool: rbd\n      image: img\n      vm: {VM}\n      consul_acl_token: {TOKEN}\n      consul-address: {addr}\n      freeze-timeout: 1\n",
            base = base.display(),
            addr = s.consul.address()
        ),
    )
    .unwrap();
    let sched_log = s.fs.join("scheduler.log");
    let mut cmd = backy();
    s.ceph.env(&mut cmd);
    let mut child = cmd
        .arg("-l")
        .arg(&sched_log)
        .args(["scheduler", "-c"])
        .arg(&conf)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    struct Stop<'a>(&'a mut std::process::Child);
    impl Drop for Stop<'_> {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _stop = Stop(&mut child);
    let job = base.join("fc");
    let revisions = || -> Vec<serde_json::Value> {
        if !job.join("config").exists() {
            return Vec::new();
        }
        let r = run(backy_job(&job).args(["status", "--json"]));
        serde_json::from_str(&r.stdout).unwrap_or_default()
    };
    let wait_for = |what: &str, done: &dyn Fn(&[serde_json::Value]) -> bool| {
        let started = std::time::Instant::now();
        loop {
            let revs = revisions();
            if done(&revs) {
                return;
            }
            assert!(
                started.elapsed() < Duration::from_secs(180),
                "no {what} after 180 s: {revs:#?}"
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    };
    let complete = |revs: &[serde_json::Value], c: &str| {
        revs.iter()
            .filter(|r| r["complete"] == true && r["consistency"] == c)
            .count()
    };
    wait_for("three crash-consistent revisions", &|revs| {
        complete(revs, "crash") >= 3
    });
    let r = check_until(&conf, 1, Duration::from_secs(60));
    assert!(
        r.stdout
            .starts_with("WARNING: 1 flyingcircus job not frozen: fc"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout.contains("revisions are only crash-consistent"),
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains("freeze-timeout (1 s)"), "{}", r.stdout);
    let log = fs::read_to_string(&sched_log).unwrap();
    let port: u16 = log
        .lines()
        .find_map(|l| l.split("Console listening on 127.0.0.1:").nth(1))
        .expect("the console's port in the log")
        .trim()
        .parse()
        .unwrap();
    let table = console_jobs(port);
    assert!(table.contains("Consistency"), "{table}");
    assert!(table.contains("crash (WARNING)"), "{table}");
    // The scheduler wrote the token-holding config for owner only.
    assert_eq!(
        fs::metadata(job.join("config"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o600
    );

    hv.set_answer(Answer::After(Duration::ZERO));
    wait_for("frozen revision", &|revs| {
        revs.iter()
            .rev()
            .find(|r| r["complete"] == true)
            .is_some_and(|r| r["consistency"] == "frozen")
    });
    let r = check_until(&conf, 0, Duration::from_secs(60));
    assert!(r.stdout.starts_with("OK: 1 job within SLA"), "{}", r.stdout);
    assert!(!hv.taken().is_empty());
    for log in [sched_log.clone(), job.join("backy.log")] {
        let text = fs::read_to_string(&log).unwrap();
        assert!(!text.contains(TOKEN), "the token is in {}", log.display());
    }
}
