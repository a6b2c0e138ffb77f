//! Concurrency: every pair of commands that can run at once on one job
//! (backup, restore, verify, distrust, protect, expire, forget, status,
//! nbd-server, send, receive; each also with itself) runs together for a
//! few rounds on btrfs and XFS, and after each round:
//!
//! - each command succeeded, or was refused with the one sentence naming the
//!   job, the process that holds the lock (its command and pid) and the lock
//!   file; a reader whose revision the other command removed first says that
//!   no such revision exists; nothing else;
//! - a refusal names the other command of the pair (nothing else runs);
//! - every revision of the job's start is there with its image and manifest
//!   unchanged, unless a `forget` or `expire` of the pair succeeded (and then
//!   only the one they target is gone); what a reader read (a restore, an NBD
//!   client) is exactly that revision, even when it was removed meanwhile;
//! - a new revision (backup, receive) holds what its source held;
//! - nothing is damaged or incomplete, no temp file or overlay is left,
//!   `last` names the newest revision, a protect is not lost to another
//!   command's `.rev` write; after the last round `verify` passes.
//!
//! The behaviour this pins down (README, "What backy guarantees"): a reader
//! (restore, verify, send, distrust, protect) holds the revisions it reads,
//! so a remover started meanwhile refuses, naming it; a reader started after
//! a removal finds no such revision. `nbd-server` takes no lock: a client
//! connected keeps reading the revision it opened after `forget` or
//! `expire` removed it, and a new connection to a removed revision is
//! refused. `receive` and `backup` exclude each other like two backups.
//!
//! Each round runs on a fresh reflink copy of one job made per filesystem;
//! pairs run side by side on a few threads. `BACKY_CONC_ROUNDS` sets the
//! rounds per pair and filesystem (default 1: each pair runs twice, once on
//! each filesystem, each side of it starting a moment later once).

mod util;

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

use util::*;

const MIB: u64 = 1 << 20;
const SIZE: u64 = 4 * MIB;
/// Pairs run side by side on this many threads per filesystem.
const WORKERS: usize = 5;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Cmd {
    Backup,
    Restore,
    Verify,
    Distrust,
    Protect,
    Expire,
    Forget,
    Status,
    NbdServer,
    Send,
    Receive,
}

const ALL: [Cmd; 11] = [
    Cmd::Backup,
    Cmd::Restore,
    Cmd::Verify,
    Cmd::Distrust,
    Cmd::Protect,
    Cmd::Expire,
    Cmd::Forget,
    Cmd::Status,
    Cmd::NbdServer,
    Cmd::Send,
    Cmd::Receive,
];

impl Cmd {
    /// The subcommand a lock refusal names for it (None: it takes no lock).
    fn locks_as(self) -> Option<&'static str> {
        match self {
            Cmd::Backup => Some("backup"),
            Cmd::Restore => Some("restore"),
            Cmd::Verify => Some("verify"),
            Cmd::Distrust => Some("distrust"),
            Cmd::Protect => Some("protect"),
            Cmd::Expire => Some("expire"),
            Cmd::Forget => Some("forget"),
            Cmd::Send => Some("send"),
            Cmd::Receive => Some("receive"),
            Cmd::Status | Cmd::NbdServer => None,
        }
    }

    fn removes(self) -> bool {
        matches!(self, Cmd::Forget | Cmd::Expire)
    }
}

/// The job every round starts from, and what its revisions hold.
struct Setup {
    root: PathBuf,
    template: PathBuf,
    src: PathBuf,
    /// The `send` stream of the origin's newest revision, after the
    /// template's newest.
    stream: PathBuf,
    /// The template's revisions, oldest first: the oldest is `hourly` only
    /// (expiry's one victim), the others `daily`.
    ids: Vec<String>,
    /// id -> (bytes of image, of `.sums`).
    contents: BTreeMap<String, (Vec<u8>, Vec<u8>)>,
    /// The revision the stream carries, and its image.
    received: (String, Vec<u8>),
    source: Vec<u8>,
}

/// A file's bytes: what the rounds compare (memcmp is far faster than
/// hashing in a debug build).
fn content(path: &Path) -> Vec<u8> {
    fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn status(job: &Path) -> Vec<serde_json::Value> {
    let r = run_ok(backy_job(job).args(["status", "--json"]));
    serde_json::from_str(&r.stdout).unwrap()
}

fn ids_of(revs: &[serde_json::Value]) -> Vec<String> {
    revs.iter()
        .map(|r| r["id"].as_str().unwrap().to_string())
        .collect()
}

/// Runs a `send` with its stream into `path`.
fn send_to(cmd: &mut std::process::Command, path: &Path) {
    let status = cmd
        .stdout(fs::File::create(path).unwrap())
        .status()
        .unwrap();
    assert!(status.success(), "{cmd:?}: {status}");
}

fn setup(fs: &TestFs) -> Setup {
    let root = fs.path().to_path_buf();
    let src = fs.join("src.img");
    write_file(&src, SIZE, &[(0, &pattern_bytes(1, (SIZE / 2) as usize))]);
    // The origin: four revisions; the template receives the first three.
    let origin = fs.join("origin");
    run_ok(backy_job(&origin).args(["init", "file"]).arg(&src));
    for (n, tag) in ["hourly", "hourly", "daily", "daily"].iter().enumerate() {
        write_at(&src, n as u64 * MIB, &pattern_bytes(10 + n as u64, 65536));
        run_ok(backy_job(&origin).args(["backup", tag]));
    }
    let all = ids_of(&status(&origin));
    assert_eq!(all.len(), 4);
    let first = fs.join("first.stream");
    send_to(backy_job(&origin).args(["send", "-r", &all[2]]), &first);
    let template = fs.join("template");
    let received = backy_job(&template)
        .arg("receive")
        .stdin(fs::File::open(&first).unwrap())
        .status()
        .unwrap();
    assert!(received.success(), "receive into the template: {received}");
    let ids = ids_of(&status(&template));
    assert_eq!(ids, all[..3], "the template holds the first three");
    let stream = fs.join("next.stream");
    send_to(
        backy_job(&origin).args(["send", "-r", &all[3], "--base", &all[2]]),
        &stream,
    );
    let contents_of = |job: &Path, id: &str| {
        (
            content(&job.join(id)),
            content(&job.join(format!("{id}.sums"))),
        )
    };
    let contents = ids
        .iter()
        .map(|id| (id.clone(), contents_of(&template, id)))
        .collect();
    let received = (all[3].clone(), contents_of(&origin, &all[3]).0);
    // The backups of the rounds back up this.
    write_at(&src, 3 * MIB, &pattern_bytes(99, 65536));
    let source = content(&src);
    Setup {
        root,
        template,
        src,
        stream,
        ids,
        contents,
        received,
        source,
    }
}

/// What one command of a round did.
struct Outcome {
    cmd: Cmd,
    ok: bool,
    /// Its error line (`backy: ...`), or what an NBD client said.
    error: String,
    /// For restore and the NBD client: the bytes it read.
    read: Option<Vec<u8>>,
    /// stdout (status, send).
    stdout: String,
}

/// A round's job, its own files beside it.
struct Round<'a> {
    setup: &'a Setup,
    job: PathBuf,
    conf: PathBuf,
    tag: String,
}

impl Round<'_> {
    fn new<'a>(setup: &'a Setup, tag: String) -> Round<'a> {
        let job = setup.root.join(&tag);
        run_ok(
            tool("cp")
                .args(["-a", "--reflink=always"])
                .arg(&setup.template)
                .arg(&job),
        );
        let conf = setup.root.join(format!("{tag}.conf"));
        fs::write(
            &conf,
            format!(
                "global: {{base-dir: {}}}\nschedules:\n  s:\n    hourly: {{interval: 1s, keep: 1}}\n    daily: {{interval: 1d, keep: 100}}\njobs:\n  {tag}: {{schedule: s, source: {{type: file, filename: {}}}}}\n",
                setup.root.display(),
                setup.src.display()
            ),
        )
        .unwrap();
        Round {
            setup,
            job,
            conf,
            tag,
        }
    }

    fn oldest(&self) -> &str {
        &self.setup.ids[0]
    }

    fn out(&self, cmd: Cmd, n: usize) -> PathBuf {
        self.setup.root.join(format!("{}.{cmd:?}{n}.out", self.tag))
    }

    fn outcome(cmd: Cmd, output: std::process::Output) -> Outcome {
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        let error = error_of(&stderr);
        Outcome {
            cmd,
            ok: output.status.success(),
            error: if output.status.success() || !error.is_empty() {
                error
            } else {
                format!("{}: {stderr}", output.status)
            },
            read: None,
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        }
    }

    /// Runs `cmd` once (side `n` of the pair).
    fn run(&self, cmd: Cmd, n: usize) -> Outcome {
        let oldest = self.oldest().to_string();
        let mut c = backy_job(&self.job);
        c.stdin(Stdio::null()).stdout(Stdio::piped());
        match cmd {
            Cmd::Backup => c.args(["backup", "daily"]),
            Cmd::Restore => c.args(["restore", "-r", &oldest]).arg(self.out(cmd, n)),
            Cmd::Verify => c.args(["verify", "-r", &oldest]),
            Cmd::Distrust => c.args(["distrust", "-r", &oldest]),
            Cmd::Protect => c.args(["protect", "-r", &oldest, "--reason", "conc"]),
            Cmd::Expire => c.args(["expire", "-c"]).arg(&self.conf),
            Cmd::Forget => c.args(["forget", "-r", &oldest, "--force"]),
            Cmd::Status => c.args(["status", "--json"]),
            Cmd::Send => c
                .args(["send", "-r", &oldest])
                .stdout(fs::File::create(self.out(cmd, n)).unwrap()),
            Cmd::Receive => c
                .arg("receive")
                .stdin(fs::File::open(&self.setup.stream).unwrap()),
            Cmd::NbdServer => return self.nbd(n),
        };
        let mut outcome = Self::outcome(cmd, c.stderr(Stdio::piped()).output().unwrap());
        if cmd == Cmd::Restore && outcome.ok {
            outcome.read = Some(content(&self.out(cmd, n)));
        }
        outcome
    }

    /// Serves the job over NBD and copies the oldest revision with nbdcopy.
    fn nbd(&self, n: usize) -> Outcome {
        let log = self.setup.root.join(format!("{}.nbd{n}.log", self.tag));
        let child = backy_job(&self.job)
            .arg("-l")
            .arg(&log)
            .args(["nbd-server", "-p", "0"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut server = Background { child };
        let port = server.nbd_port(&log);
        let out = self.out(Cmd::NbdServer, n);
        let copied = tool("nbdcopy")
            .arg(format!("nbd://127.0.0.1:{port}/{}", self.oldest()))
            .arg(&out)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        let status = server.terminate("nbd-server", || {
            fs::read_to_string(&log).unwrap_or_default()
        });
        assert!(
            status.success(),
            "nbd-server: {status}: {}",
            fs::read_to_string(&log).unwrap_or_default()
        );
        let mut outcome = Self::outcome(Cmd::NbdServer, copied);
        if outcome.ok {
            outcome.read = Some(content(&out));
        }
        outcome
    }
}

/// The error a command reported: its `backy: ` line, or its log's ERROR
/// line when the log went to stderr; without that prefix.
fn error_of(stderr: &str) -> String {
    stderr
        .lines()
        .filter_map(|l| {
            l.strip_prefix("backy: ")
                .or_else(|| l.split_once(" ERROR ").map(|(_, m)| m))
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Why `o` (next to `other`) is wrong, if it is.
fn judge(round: &Round, o: &Outcome, other: &Outcome, problems: &mut Vec<String>) {
    let job = round.job.display().to_string();
    let oldest = round.oldest();
    if o.ok {
        return;
    }
    let removed_first = other.cmd.removes() && other.ok;
    // The one sentence of a held lock, naming the holder: the other command.
    let lock = regex_lite_lock(&o.error, &job);
    if let Some((holder, file)) = lock {
        let expected = other.cmd.locks_as();
        if expected != Some(holder.as_str()) {
            problems.push(format!(
                "{:?} was refused by a lock held by backy {holder}, but {:?} ran beside it: {}",
                o.cmd, other.cmd, o.error
            ));
        }
        if ![".backup", ".purge", ".meta"].contains(&file.as_str()) {
            problems.push(format!("{:?}: unexpected lock file {file}", o.cmd));
        }
        return;
    }
    // A reader that came after a removal of its revision.
    let gone =
        format!("no complete revision matches '{oldest}'; run 'backy status' to list revisions");
    let reader = matches!(
        o.cmd,
        Cmd::Restore | Cmd::Verify | Cmd::Distrust | Cmd::Protect | Cmd::Send | Cmd::Forget
    );
    if reader && removed_first && o.error == gone {
        return;
    }
    // The NBD client (nbdcopy) asked for a revision removed first.
    if o.cmd == Cmd::NbdServer
        && removed_first
        && o.error
            .contains(&format!("server has no export named '{oldest}'"))
    {
        return;
    }
    // `send` refuses a revision distrusted first.
    if o.cmd == Cmd::Send
        && other.cmd == Cmd::Distrust
        && other.ok
        && o.error.contains("it is distrusted")
    {
        return;
    }
    problems.push(format!(
        "{:?} failed beside {:?} (which {}): {}",
        o.cmd,
        other.cmd,
        if other.ok { "succeeded" } else { "failed" },
        o.error
    ));
}

/// `(holder command, lock file name)` when `error` is exactly the lock
/// sentence for `job`: `job JOB is locked by backy CMD (pid N)
/// (JOB/.LOCK); wait for it to finish and try again`.
fn regex_lite_lock(error: &str, job: &str) -> Option<(String, String)> {
    let rest = error.strip_prefix(&format!("job {job} is locked by backy "))?;
    let (cmd, rest) = rest.split_once(" (pid ")?;
    let (pid, rest) = rest.split_once(") (")?;
    pid.parse::<u32>().ok()?;
    let rest = rest.strip_prefix(&format!("{job}/"))?;
    let file = rest.strip_suffix("); wait for it to finish and try again")?;
    Some((cmd.to_string(), file.to_string()))
}

/// Checks the job after a round; returns the problems.
fn check_round(round: &Round, a: &Outcome, b: &Outcome, last: bool) -> Vec<String> {
    let mut problems = Vec::new();
    judge(round, a, b, &mut problems);
    judge(round, b, a, &mut problems);
    let setup = round.setup;
    let oldest = round.oldest();
    let revs = status(&round.job);
    let present = ids_of(&revs);
    let removed = [a, b].iter().any(|o| o.cmd.removes() && o.ok);
    for r in &revs {
        let id = r["id"].as_str().unwrap();
        if !r["damaged"].is_null() {
            problems.push(format!("revision {id} is damaged: {}", r["damaged"]));
        }
        if r["complete"] != true {
            problems.push(format!("revision {id} was left incomplete"));
        }
    }
    for (id, (image, sums)) in &setup.contents {
        if !present.contains(id) {
            if !(id == oldest && removed) {
                problems.push(format!("revision {id} disappeared"));
            }
            continue;
        }
        if &content(&round.job.join(id)) != image {
            problems.push(format!("the image of {id} changed"));
        }
        if &content(&round.job.join(format!("{id}.sums"))) != sums {
            problems.push(format!("the manifest of {id} changed"));
        }
    }
    let forgot = [a, b].iter().any(|o| o.cmd == Cmd::Forget && o.ok);
    if forgot && present.iter().any(|id| id == oldest) {
        problems.push(format!("forget succeeded but {oldest} is still there"));
    }
    // New revisions hold their source.
    let backups = [a, b]
        .iter()
        .filter(|o| o.cmd == Cmd::Backup && o.ok)
        .count();
    let received = [a, b].iter().any(|o| o.cmd == Cmd::Receive && o.ok);
    let mut new = 0;
    for id in &present {
        if setup.contents.contains_key(id) {
            continue;
        }
        let image = content(&round.job.join(id));
        if *id == setup.received.0 {
            if !received || image != setup.received.1 {
                problems.push(format!("received revision {id} is wrong"));
            }
        } else {
            new += 1;
            if image != setup.source {
                problems.push(format!("new revision {id} does not hold the source"));
            }
        }
    }
    if new != backups {
        problems.push(format!("{backups} backups succeeded, {new} new revisions"));
    }
    if received && !present.contains(&setup.received.0) {
        problems.push("receive succeeded but its revision is missing".into());
    }
    // What the readers read is exactly the revision.
    for o in [a, b] {
        if let Some(read) = &o.read
            && read != &setup.contents[oldest].0
        {
            problems.push(format!("{:?} read something else than {oldest}", o.cmd));
        }
        if o.cmd == Cmd::Status
            && o.ok
            && let Err(e) = serde_json::from_str::<serde_json::Value>(&o.stdout)
        {
            problems.push(format!("status --json printed no JSON: {e}"));
        }
    }
    // A protect is not lost to a concurrent `.rev` write.
    let protected = [a, b].iter().any(|o| o.cmd == Cmd::Protect && o.ok);
    if protected
        && let Some(r) = revs.iter().find(|r| r["id"] == oldest)
        && r["protected"] != true
    {
        problems.push(format!("protect succeeded but {oldest} is not protected"));
    }
    // No leftovers.
    for entry in fs::read_dir(&round.job).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        if name.contains(".tmp") || name.starts_with(".nbd-overlay.") || name.contains(".bak-") {
            problems.push(format!("{name} was left in the job"));
        }
    }
    if let Some(newest) = present.last() {
        let last = fs::read_link(round.job.join("last")).ok();
        if last.as_deref() != Some(Path::new(newest)) {
            problems.push(format!("last is {last:?}, the newest is {newest}"));
        }
    }
    if last {
        let r = run(backy_job(&round.job).arg("verify"));
        if !r.status.success() {
            problems.push(format!("verify failed afterwards: {}", r.stderr));
        }
    }
    problems
}

fn concurrency(kind: FsKind) {
    if find_tool("nbdcopy").is_none() {
        skip::<()>("`nbdcopy` not found (run scripts/setup-test-deps.sh)");
        return;
    }
    let fs = require_fs!(kind, 1024);
    let started = Instant::now();
    let setup = setup(&fs);
    // The oldest revision's `hourly` tag must be older than its 1 s interval.
    std::thread::sleep(Duration::from_millis(1100));
    let rounds: usize = std::env::var("BACKY_CONC_ROUNDS")
        .ok()
        .map(|v| v.parse().expect("BACKY_CONC_ROUNDS is a number"))
        .unwrap_or(1);
    // btrfs delays the second command of a pair, XFS the first.
    let first_late = usize::from(kind == FsKind::Xfs);
    let mut pairs = Vec::new();
    for (i, a) in ALL.iter().enumerate() {
        for b in &ALL[i..] {
            pairs.push((*a, *b));
        }
    }
    assert_eq!(pairs.len(), 66);
    let queue = Arc::new(Mutex::new(pairs));
    let problems = Mutex::new(Vec::<String>::new());
    let tally = Mutex::new(BTreeMap::<String, u32>::new());
    std::thread::scope(|scope| {
        for _ in 0..WORKERS {
            let queue = queue.clone();
            let setup = &setup;
            let problems = &problems;
            let tally = &tally;
            scope.spawn(move || {
                loop {
                    let Some((a, b)) = queue.lock().unwrap().pop() else {
                        return;
                    };
                    for n in 0..rounds {
                        let round = Round::new(setup, format!("{a:?}-{b:?}-{n}"));
                        let barrier = Barrier::new(2);
                        // Who starts a moment later changes from round to
                        // round, and between the filesystems.
                        let late = (n + first_late) % 2;
                        let delay = Duration::from_millis(5 + (n as u64 * 7) % 20);
                        let (oa, ob) = std::thread::scope(|s| {
                            let ta = s.spawn(|| {
                                barrier.wait();
                                if late == 0 {
                                    std::thread::sleep(delay);
                                }
                                round.run(a, 0)
                            });
                            let tb = s.spawn(|| {
                                barrier.wait();
                                if late == 1 {
                                    std::thread::sleep(delay);
                                }
                                round.run(b, 1)
                            });
                            (ta.join().unwrap(), tb.join().unwrap())
                        });
                        for o in [&oa, &ob] {
                            let key = if o.ok { "succeeded" } else { "refused" };
                            *tally.lock().unwrap().entry(key.into()).or_default() += 1;
                        }
                        let found = check_round(&round, &oa, &ob, n + 1 == rounds);
                        if !found.is_empty() {
                            let mut p = problems.lock().unwrap();
                            for f in found {
                                p.push(format!("{a:?} with {b:?}, round {n}: {f}"));
                            }
                        } else {
                            let _ = fs::remove_dir_all(&round.job);
                        }
                    }
                }
            });
        }
    });
    eprintln!(
        "concurrency on {}: 66 pairs x {rounds} rounds in {:?}: {:?}",
        kind.name(),
        started.elapsed(),
        tally.lock().unwrap()
    );
    let problems = problems.into_inner().unwrap();
    assert!(
        problems.is_empty(),
        "{} problems:\n{}",
        problems.len(),
        problems.join("\n")
    );
}

#[test]
fn every_pair_of_commands_btrfs() {
    concurrency(FsKind::Btrfs);
}

#[test]
fn every_pair_of_commands_xfs() {
    concurrency(FsKind::Xfs);
}

/// A remover refuses with one sentence naming the reader that holds the
/// revision, and the reader (here a restore to a FIFO nobody reads yet)
/// still has it afterwards.
#[test]
fn a_remover_names_the_reader_holding_the_revision() {
    let fs = require_fs!(FsKind::Btrfs, 256);
    let src = fs.join("src.img");
    write_file(&src, SIZE, &[(0, &pattern_bytes(5, SIZE as usize))]);
    let job = fs.join("job");
    run_ok(backy_job(&job).args(["init", "file"]).arg(&src));
    run_ok(backy_job(&job).args(["backup", "daily"]));
    let id = ids_of(&status(&job)).remove(0);
    let fifo = fs.join("fifo");
    run_ok(tool("mkfifo").arg(&fifo));
    let log = fs.join("restore.log");
    let restore = backy_job(&job)
        .arg("-l")
        .arg(&log)
        .args(["restore", "-r", &id])
        .arg(&fifo)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut restore = Background { child: restore };
    let pid = restore.child.id();
    // It logs this holding its lock, then waits for a reader of the FIFO.
    let start = Instant::now();
    while !fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("Restoring revision")
    {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "restore did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let refused = run(backy_job(&job).args(["forget", "-r", &id, "--force"]));
    assert!(
        !refused.status.success(),
        "forget removed what a restore holds"
    );
    let job_s = job.display();
    assert_eq!(
        error_of(&refused.stderr),
        format!(
            "job {job_s} is locked by backy restore (pid {pid}) ({job_s}/.purge); wait for it to finish and try again"
        )
    );
    let mut reader = fs::File::open(&fifo).unwrap();
    let mut data = Vec::new();
    reader.read_to_end(&mut data).unwrap();
    assert!(restore.child.wait().unwrap().success());
    assert_eq!(data.len() as u64, SIZE);
    assert_eq!(data, pattern_bytes(5, SIZE as usize));
    run_ok(backy_job(&job).args(["forget", "-r", &id, "--force"]));
}
