//! Crash soak: SIGKILL at random moments spread over every operation that
//! writes to a job (backup, verify, distrust, protect/unprotect, forget,
//! expire, receive into a mirror job, reshare), and after each kill check that
//! - every complete revision's image and `.sums` are byte for byte what they
//!   were when it became complete, and a new complete revision holds what the
//!   source held when its backup started (a received one, what was sent);
//! - no revision is damaged (`status --json`), no image lies without its
//!   `.rev`, and no complete revision lacks its image or manifest;
//! - only the revisions the killed operation meant to delete are gone or
//!   left incomplete (and the next backup removes those leftovers);
//! - the next operation of that kind succeeds.
//!
//! A ceph-rbd backup against a real throw-away Ceph cluster is soaked the
//! same way ([`soak_ceph`]), checking its snapshots too.
//!
//! `BACKY_SOAK_POINTS` is the number of kills per filesystem (default: 10 per
//! operation, so CI kills each operation [`CI_KILLS_PER_OP`] = 20 times over
//! btrfs and XFS), `BACKY_SOAK_CEPH_POINTS` the ceph-rbd kills (default 20),
//! `BACKY_SOAK_SEED` replays a run (the seed is printed).
//! `scripts/crash-soak.sh N` runs this with N kills in total and sums up the
//! `SOAK` lines it prints.
//!
//! An operation is one entry in [`OPS`]: a function that prepares the job
//! (runs unkilled set-up commands if it needs any) and returns the command
//! line to kill plus what that command may delete.

mod util;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use util::*;

const MIB: u64 = 1 << 20;
const SIZE: u64 = 8 * MIB;
/// Above this many complete revisions the soak forgets the oldest (unkilled).
const MAX_REVS: usize = 5;

/// What an operation's run looks like.
struct Planned {
    args: Vec<String>,
    /// Revisions this run may delete (so they may be gone or incomplete after a kill).
    may_remove: BTreeSet<String>,
    /// Run on the mirror job (which `receive` fills) instead of the soaked job.
    on_mirror: bool,
    /// A file for the command's stdin.
    stdin: Option<PathBuf>,
}

impl Planned {
    fn new(args: &[&str]) -> Planned {
        Planned {
            args: args.iter().map(|s| s.to_string()).collect(),
            may_remove: BTreeSet::new(),
            on_mirror: false,
            stdin: None,
        }
    }
}

/// An operation of the soak: its name and how to prepare one run of it.
struct Op {
    name: &'static str,
    prepare: fn(&mut Soak) -> Planned,
}

/// The operations, each a small function. Receive and reshare join here.
const OPS: &[Op] = &[
    Op {
        name: "backup",
        prepare: prep_backup,
    },
    Op {
        name: "verify",
        prepare: prep_verify,
    },
    Op {
        name: "distrust",
        prepare: prep_distrust,
    },
    Op {
        name: "protect",
        prepare: prep_protect,
    },
    Op {
        name: "forget",
        prepare: prep_forget,
    },
    Op {
        name: "expire",
        prepare: prep_expire,
    },
    Op {
        name: "receive",
        prepare: prep_receive,
    },
    Op {
        name: "reshare",
        prepare: prep_reshare,
    },
];

fn prep_backup(s: &mut Soak) -> Planned {
    s.change_source();
    Planned::new(&["backup", "daily"])
}

fn prep_verify(s: &mut Soak) -> Planned {
    match s.rnd() % 3 {
        0 => {
            let id = s.random_complete();
            Planned::new(&["verify", "-r", &id])
        }
        1 => Planned::new(&["verify", "--sample", "25"]),
        _ => Planned::new(&["verify"]),
    }
}

fn prep_distrust(s: &mut Soak) -> Planned {
    match s.rnd() % 2 {
        0 => {
            let id = s.random_complete();
            Planned::new(&["distrust", "-r", &id])
        }
        _ => Planned::new(&["distrust", "--yes"]),
    }
}

fn prep_protect(s: &mut Soak) -> Planned {
    let id = s.random_complete();
    let protected = s
        .seen
        .iter()
        .any(|r| r["id"] == id.as_str() && r["protected"] == true);
    if protected {
        Planned::new(&["unprotect", "-r", &id])
    } else {
        Planned::new(&["protect", "-r", &id, "--reason", "soak"])
    }
}

fn prep_forget(s: &mut Soak) -> Planned {
    // Any revision, the newest too (which moves `last`), with two left.
    if s.complete_ids().len() < 3 {
        s.backup_unkilled();
    }
    let ids = s.complete_ids();
    let id = ids[s.rnd() as usize % ids.len()].clone();
    let mut p = Planned::new(&["forget", "-r", &id, "--force"]);
    p.may_remove.insert(id);
    p
}

fn prep_expire(s: &mut Soak) -> Planned {
    if s.complete_ids().len() < 4 {
        s.backup_unkilled();
    }
    let conf = s.conf.to_str().unwrap().to_string();
    // What the plan deletes now, and what it keeps only for being young,
    // since the run plans again a moment later, when that may have aged out.
    let dry = run_ok(backy_job(&s.job).args(["expire", "--dry-run", "-c", &conf]));
    let may_remove = dry
        .stdout
        .lines()
        .filter_map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            let young = l.contains("younger than") && !l.contains("protected");
            (w.len() >= 4 && (w[3] == "delete" || young)).then(|| w[2].to_string())
        })
        .collect();
    let mut p = Planned::new(&["expire", "-c", &conf]);
    p.may_remove = may_remove;
    p
}

/// `receive` into the mirror job of what it lacks, from a `send` stream
/// written beforehand (unkilled) from the soaked job.
fn prep_receive(s: &mut Soak) -> Planned {
    // The base: the newest revision both hold (the soak may have forgotten
    // the mirror's newest since), or none.
    let base = s
        .complete_ids()
        .into_iter()
        .rev()
        .find(|id| s.mirror_known.contains_key(id))
        .unwrap_or_default();
    let base = format!("--base={base}");
    // `send` refuses distrusted revisions: verify them first.
    if s.seen.iter().any(|r| r["trust"] == "distrusted") {
        run_ok(backy_job(&s.job).arg("verify"));
        s.seen = s.status();
    }
    let stream = s.job.with_file_name("stream");
    let out = fs::File::create(&stream).unwrap();
    let sent = backy_job(&s.job)
        .args(["send", &base])
        .stdout(out)
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert!(
        sent.status.success(),
        "send {base} failed: {}",
        String::from_utf8_lossy(&sent.stderr)
    );
    let mut p = Planned::new(&["receive"]);
    p.on_mirror = true;
    p.stdin = Some(stream);
    p
}

/// `reshare` after one revision's image was replaced by a plain copy (as
/// `cp` or `rsync` to another server would leave it), so there is work to do.
fn prep_reshare(s: &mut Soak) -> Planned {
    let ids = s.complete_ids();
    if ids.len() >= 2 {
        let id = &ids[1 + s.rnd() as usize % (ids.len() - 1)];
        let image = s.job.join(id);
        let copy = s.job.with_file_name("plain-copy");
        run_ok(
            tool("cp")
                .arg("--reflink=never")
                .arg("-p")
                .arg(&image)
                .arg(&copy),
        );
        fs::rename(&copy, &image).unwrap();
    }
    Planned::new(&["reshare"])
}

#[derive(Default, Clone)]
struct Tally {
    time: Duration,
    kills: u32,
    mid: u32,
    after: u32,
    failures: u32,
}

struct Soak {
    job: PathBuf,
    /// The job `receive` fills from the soaked job.
    mirror: PathBuf,
    /// id -> (image hash, `.sums` hash) of the mirror's complete revisions.
    mirror_known: BTreeMap<String, (String, String)>,
    src: PathBuf,
    conf: PathBuf,
    seed: u64,
    /// id -> (sha256 of image, sha256 of `.sums`) when it became complete.
    known: BTreeMap<String, (String, String)>,
    /// sha256 of the source when the latest backup started.
    source_hash: String,
    /// Revisions a killed forget or expire may have left incomplete, until a
    /// backup removes them.
    doomed: BTreeSet<String>,
    failures: Vec<String>,
    /// `status --json` as the last check saw it.
    seen: Vec<serde_json::Value>,
}

impl Soak {
    fn rnd(&mut self) -> u64 {
        self.seed = self
            .seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.seed >> 33
    }

    fn status(&self) -> Vec<serde_json::Value> {
        let r = run_ok(backy_job(&self.job).args(["status", "--json"]));
        serde_json::from_str(&r.stdout).unwrap()
    }

    /// Complete revisions as the last check saw them, oldest first.
    fn complete_ids(&self) -> Vec<String> {
        self.seen
            .iter()
            .filter(|r| r["complete"] == true)
            .map(|r| r["id"].as_str().unwrap().to_string())
            .collect()
    }

    fn random_complete(&mut self) -> String {
        let ids = self.complete_ids();
        ids[self.rnd() as usize % ids.len()].clone()
    }

    /// Changes the source a little, as between two real backups.
    fn change_source(&mut self) {
        for _ in 0..4 {
            let at = self.rnd() % (SIZE - 65536) / 4096 * 4096;
            let seed = self.rnd();
            write_at(&self.src, at, &pattern_bytes(seed, 65536));
        }
        self.source_hash = sha256(&self.src);
    }

    fn backup_unkilled(&mut self) {
        self.change_source();
        run_ok(backy_job(&self.job).args(["backup", "daily"]));
        self.check("set-up backup", &BTreeSet::new());
    }

    fn fail(&mut self, what: String) {
        eprintln!("SOAK FAILURE: {what}");
        self.failures.push(what);
    }

    /// Checks the invariants; `may_remove` are the revisions the operation
    /// just run may have deleted. Returns whether everything held.
    fn check(&mut self, after: &str, may_remove: &BTreeSet<String>) -> bool {
        let before = self.failures.len();
        let revs = self.status();
        let mut present = BTreeSet::new();
        let mut complete = Vec::new();
        for r in &revs {
            let id = r["id"].as_str().unwrap().to_string();
            if !r["damaged"].is_null() {
                self.fail(format!(
                    "{after}: revision {id} is damaged: {}",
                    r["damaged"]
                ));
            }
            if r["complete"] == true {
                complete.push(id.clone());
            } else if self.known.contains_key(&id)
                && !may_remove.contains(&id)
                && !self.doomed.contains(&id)
            {
                self.fail(format!("{after}: complete revision {id} became incomplete"));
            }
            present.insert(id);
        }
        for orphan in orphans(&self.job) {
            self.fail(format!("{after}: {orphan}"));
        }
        let mut paths = Vec::new();
        for id in &complete {
            paths.push(self.job.join(id));
            paths.push(self.job.join(format!("{id}.sums")));
        }
        let hashes = sha256_many(&paths);
        for (i, id) in complete.iter().enumerate() {
            let (Some(image), Some(sums)) = (hashes[2 * i].clone(), hashes[2 * i + 1].clone())
            else {
                self.fail(format!(
                    "{after}: complete revision {id} lacks its image or manifest"
                ));
                continue;
            };
            match self.known.get(id).cloned() {
                Some((i0, s0)) => {
                    if i0 != image {
                        self.fail(format!("{after}: image of {id} changed"));
                    }
                    if s0 != sums {
                        self.fail(format!("{after}: manifest of {id} changed"));
                    }
                }
                None => {
                    if image != self.source_hash {
                        self.fail(format!(
                            "{after}: new revision {id} does not hold what the source held"
                        ));
                    }
                    // Its manifest matches its image.
                    let r = run(backy_job(&self.job).args(["verify", "-r", id]));
                    if !r.status.success() {
                        self.fail(format!("{after}: new revision {id} does not verify: {r:?}"));
                    }
                    self.known.insert(id.clone(), (image, sums));
                }
            }
        }
        // What disappeared was meant to.
        let gone: Vec<String> = self
            .known
            .keys()
            .filter(|id| !present.contains(*id))
            .cloned()
            .collect();
        for id in gone {
            if !may_remove.contains(&id) && !self.doomed.contains(&id) {
                self.fail(format!("{after}: revision {id} disappeared"));
            }
            self.known.remove(&id);
        }
        for id in &present {
            if !complete.contains(id) && self.known.contains_key(id) {
                // Left incomplete by a killed removal: the next backup removes it.
                self.known.remove(id);
                self.doomed.insert(id.clone());
            }
        }
        self.doomed.retain(|id| present.contains(id));
        self.seen = revs;
        self.failures.len() == before
    }

    /// The command for a planned run, stdout and stderr captured or discarded.
    fn command(&self, p: &Planned) -> Command {
        let mut cmd = backy_job(if p.on_mirror { &self.mirror } else { &self.job });
        cmd.args(&p.args);
        cmd.stdin(match &p.stdin {
            Some(path) => Stdio::from(fs::File::open(path).unwrap()),
            None => Stdio::null(),
        });
        cmd
    }

    /// The mirror after a (killed) receive: nothing damaged or orphaned,
    /// its complete revisions unchanged and equal to the soaked job's of the
    /// same id; with `settled` (after a successful receive) nothing incomplete.
    fn check_mirror(&mut self, after: &str, settled: bool) -> bool {
        let before = self.failures.len();
        let r = run_ok(backy_job(&self.mirror).args(["status", "--json"]));
        let revs: Vec<serde_json::Value> = serde_json::from_str(&r.stdout).unwrap();
        for orphan in orphans(&self.mirror) {
            self.fail(format!("{after}: mirror: {orphan}"));
        }
        let mut complete = Vec::new();
        for r in &revs {
            let id = r["id"].as_str().unwrap().to_string();
            if !r["damaged"].is_null() {
                self.fail(format!(
                    "{after}: mirror revision {id} is damaged: {}",
                    r["damaged"]
                ));
            } else if r["complete"] == true {
                complete.push(id);
            } else if self.mirror_known.contains_key(&id) {
                self.fail(format!(
                    "{after}: complete mirror revision {id} became incomplete"
                ));
            } else if settled {
                self.fail(format!(
                    "{after}: receive left mirror revision {id} incomplete"
                ));
            }
        }
        for id in self.mirror_known.keys().cloned().collect::<Vec<_>>() {
            if !complete.contains(&id) {
                self.fail(format!("{after}: mirror revision {id} disappeared"));
                self.mirror_known.remove(&id);
            }
        }
        let mut paths = Vec::new();
        for id in &complete {
            paths.push(self.mirror.join(id));
            paths.push(self.mirror.join(format!("{id}.sums")));
        }
        let hashes = sha256_many(&paths);
        for (i, id) in complete.iter().enumerate() {
            let (Some(image), Some(sums)) = (hashes[2 * i].clone(), hashes[2 * i + 1].clone())
            else {
                self.fail(format!(
                    "{after}: mirror revision {id} lacks its image or manifest"
                ));
                continue;
            };
            let expected = self
                .mirror_known
                .get(id)
                .or_else(|| self.known.get(id))
                .cloned();
            match expected {
                Some(e) if e == (image.clone(), sums.clone()) => {}
                Some(_) => self.fail(format!(
                    "{after}: mirror revision {id} differs from what was sent"
                )),
                None => self.fail(format!("{after}: mirror revision {id} was never sent")),
            }
            self.mirror_known.insert(id.clone(), (image, sums));
        }
        // Housekeeping, as for the soaked job.
        if settled && complete.len() > MAX_REVS {
            run_ok(backy_job(&self.mirror).args(["forget", "-r", &complete[0], "--force"]));
            self.mirror_known.remove(&complete[0]);
        }
        self.failures.len() == before
    }

    /// After a successful run: `last` and `last.rev` name the newest
    /// complete revision.
    fn check_last(&mut self, after: &str) -> bool {
        let Some(newest) = self
            .seen
            .iter()
            .rfind(|r| r["complete"] == true)
            .map(|r| r["id"].as_str().unwrap().to_string())
        else {
            return true;
        };
        let last = fs::read_link(self.job.join("last")).ok();
        let last_rev = fs::read_link(self.job.join("last.rev")).ok();
        if last.as_deref() != Some(Path::new(&newest))
            || last_rev != Some(PathBuf::from(format!("{newest}.rev")))
        {
            self.fail(format!(
                "{after}: last is {last:?} and last.rev {last_rev:?}, the newest revision is {newest}"
            ));
            return false;
        }
        true
    }

    /// After a successful backup: nothing incomplete.
    fn check_after_backup(&mut self) {
        let revs = self.seen.clone();
        if let Some(r) = revs.iter().find(|r| r["complete"] != true) {
            self.fail(format!("backup left an incomplete revision: {}", r["id"]));
        }
        // Housekeeping: a bounded number of revisions keeps each check fast.
        let ids = self.complete_ids();
        if ids.len() > MAX_REVS {
            run_ok(backy_job(&self.job).args(["forget", "-r", &ids[0], "--force"]));
            self.known.remove(&ids[0]);
            self.seen = self.status();
        }
    }
}

/// Images and manifests in `dir` without their `.rev`.
fn orphans(dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    let Ok(entries) = fs::read_dir(dir) else {
        return found;
    };
    for entry in entries {
        let name = entry.unwrap().file_name().into_string().unwrap();
        if name.starts_with('.') || ["config", "last", "last.rev"].contains(&name.as_str()) {
            continue;
        }
        let id = name.strip_suffix(".sums").unwrap_or(&name);
        if !id.contains('.') && !dir.join(format!("{id}.rev")).exists() {
            found.push(format!("{name} lies without {id}.rev"));
        }
    }
    found
}

/// sha256 of each file (None where it is missing), in one `sha256sum` run.
fn sha256_many(paths: &[PathBuf]) -> Vec<Option<String>> {
    if paths.is_empty() {
        return Vec::new();
    }
    let out = Command::new("sha256sum")
        .arg("-b")
        .args(paths)
        .stderr(Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let mut by_path = BTreeMap::new();
    for line in text.lines() {
        if let Some((hash, path)) = line.split_once(" *") {
            by_path.insert(PathBuf::from(path), hash.to_string());
        }
    }
    paths.iter().map(|p| by_path.get(p).cloned()).collect()
}

/// Runs the job's command once unkilled; how long it took, or why it failed.
fn timed(s: &Soak, p: &Planned) -> Result<Duration, String> {
    let start = Instant::now();
    let out = s.command(p).output().unwrap();
    if out.status.success() {
        Ok(start.elapsed())
    } else {
        Err(format!(
            "{:?}: {}, stderr: {}",
            p.args,
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// `BACKY_SOAK_SEED`, or one drawn from the clock.
fn soak_seed() -> u64 {
    std::env::var("BACKY_SOAK_SEED")
        .ok()
        .map(|v| v.parse().expect("BACKY_SOAK_SEED is a number"))
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                % 1_000_000_007
        })
}

/// Kills per operation in CI (no `BACKY_SOAK_POINTS`): half of them on
/// btrfs and half on XFS for the file operations, all of them for ceph-rbd.
const CI_KILLS_PER_OP: usize = 20;

fn soak(kind: FsKind) {
    let fs = require_fs!(kind, 1024);
    let points: usize = std::env::var("BACKY_SOAK_POINTS")
        .ok()
        .map(|v| v.parse().expect("BACKY_SOAK_POINTS is a number"))
        .unwrap_or(CI_KILLS_PER_OP / 2 * OPS.len());
    let seed = soak_seed();
    eprintln!(
        "crash soak on {}: {points} kills, BACKY_SOAK_SEED={seed}",
        kind.name()
    );
    let src = fs.join("src.img");
    let job = fs.join("job");
    let conf = fs.join("backy.conf");
    write_file(&src, SIZE, &[(0, &pattern_bytes(1, (SIZE / 2) as usize))]);
    fs::write(
        &conf,
        format!(
            "global: {{base-dir: {}}}\nschedules:\n  s:\n    daily: {{interval: 1s, keep: 2}}\njobs:\n  job: {{schedule: s, source: {{type: file, filename: {}}}}}\n",
            fs.path().display(),
            src.display()
        ),
    )
    .unwrap();
    run_ok(backy_job(&job).args(["init", "file"]).arg(&src));
    let mut s = Soak {
        job: job.clone(),
        mirror: fs.join("mirror"),
        mirror_known: BTreeMap::new(),
        src,
        conf,
        seed,
        known: BTreeMap::new(),
        source_hash: String::new(),
        doomed: BTreeSet::new(),
        failures: Vec::new(),
        seen: Vec::new(),
    };
    for _ in 0..3 {
        s.backup_unkilled();
    }
    // Each operation's typical duration, kept up to date with the unkilled runs.
    let mut typical: Vec<Duration> = Vec::new();
    for op in OPS {
        let p = (op.prepare)(&mut s);
        let d = timed(&s, &p).unwrap_or_else(|e| panic!("{}: {e}", op.name));
        s.check(op.name, &p.may_remove);
        if p.on_mirror {
            s.check_mirror(op.name, true);
        }
        typical.push(d.max(Duration::from_millis(2)));
    }
    let mut tally = vec![Tally::default(); OPS.len()];
    let started = Instant::now();
    let mut order: Vec<usize> = (0..OPS.len()).collect();
    for n in 0..points {
        // Equal shares, in random order within each round.
        if n % OPS.len() == 0 {
            for k in (1..order.len()).rev() {
                let j = s.rnd() as usize % (k + 1);
                order.swap(k, j);
            }
        }
        let i = order[n % OPS.len()];
        let op = &OPS[i];
        let point_start = Instant::now();
        let p = (op.prepare)(&mut s);
        // Mostly inside the operation: under load a short one (protect takes
        // about 20 ms) varies a lot, and one slow run inflates `typical`; runs
        // faster than that still give kills just after the end.
        let window = typical[i].mul_f64(0.9);
        let delay = Duration::from_micros(s.rnd() % (window.as_micros() as u64).max(1));
        let mut child = s
            .command(&p)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(delay);
        tally[i].kills += 1;
        // SIGKILL, as an OOM killer or a power cut would: our own child only.
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap();
            tally[i].mid += 1;
        } else {
            tally[i].after += 1;
        }
        child.wait().unwrap();
        let what = format!("kill {n} in {} {:?} after {delay:?}", op.name, p.args);
        let mut ok = s.check(&what, &p.may_remove);
        if p.on_mirror {
            ok &= s.check_mirror(&what, false);
        }
        // The next operation of that kind succeeds.
        let next = (op.prepare)(&mut s);
        match timed(&s, &next) {
            Ok(d) => typical[i] = (typical[i] * 3 + d) / 4,
            Err(e) => {
                s.fail(format!("{what}: the next {} failed: {e}", op.name));
                ok = false;
            }
        }
        ok &= s.check(&format!("{what}, then {:?}", next.args), &next.may_remove);
        if next.on_mirror {
            ok &= s.check_mirror(&format!("{what}, then {:?}", next.args), true);
        }
        if op.name == "backup" || !s.doomed.is_empty() {
            // A backup removes what the kill left.
            if op.name != "backup" {
                s.change_source();
                if let Err(e) = timed(&s, &Planned::new(&["backup", "daily"])) {
                    s.fail(format!("{what}: the next backup failed: {e}"));
                }
                ok &= s.check(&format!("{what}, then a backup"), &BTreeSet::new());
            }
            let before = s.failures.len();
            s.check_after_backup();
            ok &= s.failures.len() == before;
        }
        ok &= s.check_last(&what);
        if !ok {
            tally[i].failures += 1;
        }
        tally[i].time += point_start.elapsed();
    }
    eprintln!(
        "crash soak on {}: {points} kills in {:?}, BACKY_SOAK_SEED={seed}",
        kind.name(),
        started.elapsed()
    );
    eprintln!(
        "{:<10} {:>6} {:>6} {:>6} {:>8}  {:>10}  time",
        "operation", "kills", "mid", "after", "failures", "window"
    );
    for (i, op) in OPS.iter().enumerate() {
        let t = &tally[i];
        eprintln!(
            "{:<10} {:>6} {:>6} {:>6} {:>8}  {:>10.1?}  {:.1?}",
            op.name,
            t.kills,
            t.mid,
            t.after,
            t.failures,
            typical[i].mul_f64(1.2),
            t.time
        );
        // For scripts/crash-soak.sh.
        eprintln!(
            "SOAK {} {} {} {} {} {}",
            kind.name(),
            op.name,
            t.kills,
            t.mid,
            t.after,
            t.failures
        );
    }
    assert!(
        s.failures.is_empty(),
        "{} failures (replay with BACKY_SOAK_SEED={seed}):\n{}",
        s.failures.len(),
        s.failures.join("\n")
    );
    // Kills must land mid-operation often, or the soak tests little.
    for (i, op) in OPS.iter().enumerate() {
        let t = &tally[i];
        assert!(
            t.kills < 10 || t.mid * 4 >= t.kills,
            "only {} of {} kills landed inside {}",
            t.mid,
            t.kills,
            op.name
        );
    }
}

/// Size of the ceph-rbd soak's image.
const CEPH_SIZE: u64 = 8 * MIB;

/// ceph-rbd backups killed at random moments, against a real throw-away
/// cluster (`scripts/ceph-cluster.sh`), the job on btrfs: after each kill the
/// checks of the file soak hold ([`Soak::check`]); the next backup succeeds,
/// holds what the image held, and leaves exactly one `backy-` snapshot, its
/// own (the killed backup's snapshot is removed). `BACKY_SOAK_CEPH_POINTS`
/// kills (default [`CI_KILLS_PER_OP`]).
fn soak_ceph() {
    let Some(ceph) = util::ceph::TestCeph::start() else {
        return;
    };
    let fs = require_fs!(FsKind::Btrfs, 512);
    let points: usize = std::env::var("BACKY_SOAK_CEPH_POINTS")
        .ok()
        .map(|v| v.parse().expect("BACKY_SOAK_CEPH_POINTS is a number"))
        .unwrap_or(CI_KILLS_PER_OP);
    let seed = soak_seed();
    eprintln!("crash soak on ceph: {points} kills, BACKY_SOAK_SEED={seed}");
    ceph.create_image_bytes("img", CEPH_SIZE);
    let job = fs.join("job");
    run_ok(
        ceph.env(&mut backy_job(&job))
            .args(["init", "ceph-rbd", "rbd/img"]),
    );
    let mut s = Soak {
        job: job.clone(),
        mirror: fs.join("mirror"),
        mirror_known: BTreeMap::new(),
        src: fs.join("unused"),
        conf: fs.join("unused.conf"),
        seed,
        known: BTreeMap::new(),
        source_hash: String::new(),
        doomed: BTreeSet::new(),
        failures: Vec::new(),
        seen: Vec::new(),
    };
    let backup = |s: &Soak| {
        let mut cmd = backy_job(&s.job);
        ceph.env(&mut cmd).args(["backup", "daily"]);
        cmd
    };
    // A few writes, and the image's head as the next backup must see it
    // (kept here as well: the image was created zeroed).
    let mut head = vec![0u8; CEPH_SIZE as usize];
    let mut change = |s: &mut Soak| {
        let writes: Vec<(u64, Vec<u8>)> = (0..4)
            .map(|_| {
                let at = s.rnd() % (CEPH_SIZE - 65536) / 4096 * 4096;
                (at, pattern_bytes(s.rnd(), 65536))
            })
            .collect();
        let ops: Vec<util::ceph::RbdOp> = writes
            .iter()
            .map(|(at, data)| util::ceph::RbdOp::Write(*at, data))
            .collect();
        ceph.write_ops("img", &ops);
        for (at, data) in &writes {
            head[*at as usize..*at as usize + data.len()].copy_from_slice(data);
        }
        use sha2::Digest;
        s.source_hash = sha2::Sha256::digest(&head)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
    };
    let snapshots_are_right = |s: &mut Soak, after: &str| {
        let newest = s.complete_ids().last().cloned();
        let snaps: Vec<String> = ceph
            .snap_ls("img")
            .into_iter()
            .filter(|n| n.starts_with("backy-"))
            .collect();
        let expected: Vec<String> = newest.iter().map(|id| format!("backy-{id}")).collect();
        if snaps != expected {
            s.fail(format!(
                "{after}: the image's backy snapshots are {snaps:?}, expected {expected:?}"
            ));
            return false;
        }
        true
    };
    let mut typical = Duration::ZERO;
    for _ in 0..2 {
        change(&mut s);
        let start = Instant::now();
        run_ok(&mut backup(&s));
        typical = start.elapsed();
        s.check("set-up backup", &BTreeSet::new());
    }
    let mut tally = Tally::default();
    let started = Instant::now();
    for n in 0..points {
        let point_start = Instant::now();
        change(&mut s);
        let window = typical.mul_f64(1.2);
        let delay = Duration::from_micros(s.rnd() % (window.as_micros() as u64).max(1));
        let mut child = backup(&s)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(delay);
        tally.kills += 1;
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap();
            tally.mid += 1;
        } else {
            tally.after += 1;
        }
        child.wait().unwrap();
        let what = format!("kill {n} in a ceph-rbd backup after {delay:?}");
        let mut ok = s.check(&what, &BTreeSet::new());
        let start = Instant::now();
        let next = backup(&s).output().unwrap();
        if next.status.success() {
            typical = (typical * 3 + start.elapsed()) / 4;
        } else {
            s.fail(format!(
                "{what}: the next backup failed: {}",
                String::from_utf8_lossy(&next.stderr)
            ));
            ok = false;
        }
        ok &= s.check(&format!("{what}, then a backup"), &BTreeSet::new());
        let before = s.failures.len();
        s.check_after_backup();
        ok &= s.failures.len() == before;
        ok &= s.check_last(&what);
        ok &= snapshots_are_right(&mut s, &what);
        if !ok {
            tally.failures += 1;
        }
        tally.time += point_start.elapsed();
    }
    eprintln!(
        "crash soak on ceph: {points} kills in {:?} ({} mid-backup, {} after it, {} failures), BACKY_SOAK_SEED={seed}",
        started.elapsed(),
        tally.mid,
        tally.after,
        tally.failures
    );
    eprintln!(
        "SOAK ceph ceph-rbd {} {} {} {}",
        tally.kills, tally.mid, tally.after, tally.failures
    );
    assert!(
        s.failures.is_empty(),
        "{} failures (replay with BACKY_SOAK_SEED={seed}):\n{}",
        s.failures.len(),
        s.failures.join("\n")
    );
    assert!(
        tally.kills < 10 || tally.mid * 4 >= tally.kills,
        "only {} of {} kills landed inside a ceph-rbd backup",
        tally.mid,
        tally.kills
    );
}

#[test]
fn crash_soak_ceph_rbd() {
    soak_ceph();
}

#[test]
fn crash_soak_btrfs() {
    soak(FsKind::Btrfs);
}

#[test]
fn crash_soak_xfs() {
    soak(FsKind::Xfs);
}
