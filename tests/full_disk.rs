//! Issue 16: a full filesystem on every path that writes. The job's
//! filesystem (a small btrfs or XFS) is filled with filler files (leaving
//! some slack for a backup, so it runs out inside the image), then a file
//! backup, a backup that changes one block, `verify`, `distrust`, `protect`, `receive` and writes through an
//! NBD overlay run; the scheduler's status file and a log file on a full
//! filesystem follow. Each must fail with a message that names the full
//! filesystem (its mount point and type) and exit non-zero (the NBD server
//! answers ENOSPC and keeps serving; the scheduler keeps running), leave every
//! complete revision's image, manifest and `.rev` as they were, and work again
//! once the filler is removed, with `verify` passing afterwards.
//!
//! A Ceph backup into a full job filesystem: tests/ceph.rs,
//! `a_full_job_filesystem_fails_the_backup_without_hanging`.

mod util;

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use util::*;

const MIB: u64 = 1 << 20;

/// A job with two complete revisions on a small filesystem of its own; the
/// source lives outside it.
struct Setup {
    fs: TestFs,
    tmp: tempfile::TempDir,
    job: PathBuf,
    src: PathBuf,
    filler: Vec<PathBuf>,
}

impl Setup {
    fn new(kind: FsKind) -> Option<Setup> {
        let fs = TestFs::new(kind, 300)?;
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src.img");
        fs::write(&src, pattern_bytes(1, 8 * MIB as usize)).unwrap();
        let job = fs.join("job");
        run_ok(backy_job(&job).args(["init", "file"]).arg(&src));
        run_ok(backy_job(&job).args(["backup", "daily"]));
        write_at(&src, MIB, &pattern_bytes(2, MIB as usize));
        run_ok(backy_job(&job).args(["backup", "daily"]));
        Some(Setup {
            fs,
            tmp,
            job,
            src,
            filler: Vec::new(),
        })
    }

    fn kind(&self) -> FsKind {
        self.fs.kind()
    }

    /// What every message about this filesystem must say.
    fn full_message(&self) -> String {
        format!(
            "the filesystem is full (mounted on {}, {})",
            self.fs.path().display(),
            self.kind()
        )
    }

    /// The complete revisions, oldest first.
    fn revisions(&self) -> Vec<String> {
        let mut revs: Vec<(String, String)> = fs::read_dir(&self.job)
            .unwrap()
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                let id = name.strip_suffix(".rev")?.to_string();
                if id == "last" {
                    return None;
                }
                let text = fs::read_to_string(e.path()).ok()?;
                let time = text
                    .lines()
                    .find_map(|l| l.strip_prefix("timestamp: "))?
                    .to_string();
                text.contains("duration:").then_some((time, id))
            })
            .collect();
        revs.sort();
        revs.into_iter().map(|(_, id)| id).collect()
    }

    /// Every complete revision's image, manifest and `.rev`, hashed.
    fn state(&self) -> BTreeMap<String, String> {
        let mut state = BTreeMap::new();
        for id in self.revisions() {
            for name in [id.clone(), format!("{id}.sums"), format!("{id}.rev")] {
                state.insert(name.clone(), sha256(&self.job.join(&name)));
            }
        }
        state
    }

    /// Fills the filesystem: preallocated filler for nearly all of it, then
    /// written filler until a write fails, then small files until even those
    /// (metadata, inline data) do not fit.
    fn fill(&mut self) {
        self.fill_leaving(0);
    }

    /// [`Setup::fill`], then frees about `slack` bytes again (a file of
    /// that size written before filling is removed).
    fn fill_leaving(&mut self, slack: u64) {
        let reserve = self.fs.join("reserve");
        if slack > 0 {
            fs::write(&reserve, pattern_bytes(78, slack as usize)).unwrap();
        }
        self.fill_up();
        if slack > 0 {
            fs::remove_file(&reserve).unwrap();
            self.sync();
        }
    }

    fn sync(&self) {
        run_ok(
            std::process::Command::new("sync")
                .arg("-f")
                .arg(self.fs.path()),
        );
        // btrfs frees extents at the transaction's commit.
        if self.kind() == FsKind::Btrfs {
            run_ok(
                tool("btrfs")
                    .args(["filesystem", "sync"])
                    .arg(self.fs.path()),
            );
        }
    }

    fn fill_up(&mut self) {
        let stat = rustix::fs::statvfs(self.fs.path()).unwrap();
        let free = stat.f_bavail * stat.f_frsize;
        let big = self.fs.join("filler-0");
        let file = File::create(&big).unwrap();
        let _ = rustix::fs::fallocate(
            &file,
            rustix::fs::FallocateFlags::empty(),
            0,
            free.saturating_sub(2 * MIB),
        );
        drop(file);
        self.filler.push(big);
        let rest = self.fs.join("filler-1");
        self.filler.push(rest.clone());
        let block = pattern_bytes(77, 64 << 10);
        let mut small = 0;
        // XFS gives back speculative preallocation after an ENOSPC, so go
        // round until nothing more fits.
        for _ in 0..3 {
            let mut file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&rest)
                .unwrap();
            while file.write_all(&block).is_ok() {}
            while file.write_all(&block[..4096]).is_ok() {}
            while file.write_all(&block[..512]).is_ok() {}
            let _ = file.sync_all();
            drop(file);
            while small < 20_000 {
                let path = self.fs.join(format!("filler-s{small}"));
                small += 1;
                self.filler.push(path.clone());
                if fs::write(&path, &block[..4096]).is_err() {
                    break;
                }
            }
            run_ok(
                std::process::Command::new("sync")
                    .arg("-f")
                    .arg(self.fs.path()),
            );
        }
        run_ok(
            std::process::Command::new("sync")
                .arg("-f")
                .arg(self.fs.path()),
        );
    }

    /// Removes the filler again.
    fn free(&mut self) {
        for path in self.filler.drain(..) {
            let _ = fs::remove_file(path);
        }
        self.sync();
    }

    fn backy(&self) -> std::process::Command {
        backy_job(&self.job)
    }

    /// `args` fail on the full filesystem naming it; complete revisions stay
    /// as they were; after freeing space `args` succeed and verify passes.
    fn fails_then_recovers(&mut self, kind: FsKind, args: &[&str]) -> Run {
        self.fails_then_recovers_leaving(kind, args, 0)
    }

    /// [`Setup::fails_then_recovers`] with about `slack` bytes left free.
    fn fails_then_recovers_leaving(&mut self, kind: FsKind, args: &[&str], slack: u64) -> Run {
        let before = self.state();
        let ids = self.revisions();
        self.fill_leaving(slack);
        let r = run_timeout(self.backy().args(args), Duration::from_secs(60));
        let what = format!("{kind}: backy {}", args.join(" "));
        if r.status.success() {
            r.fail(&format!("{what} succeeded on a full filesystem"));
        }
        if !r.stderr.contains(&self.full_message()) || !r.stderr.contains("free space") {
            r.fail(&format!("{what}: expected {:?}", self.full_message()));
        }
        assert_eq!(self.revisions(), ids, "{what}: the revisions changed");
        assert_eq!(self.state(), before, "{what}: a complete revision changed");
        self.free();
        run_timeout(self.backy().args(args), Duration::from_secs(60)).success();
        run_ok(self.backy().arg("verify"));
        r
    }
}

fn each_kind(test: impl Fn(FsKind)) {
    for kind in FsKind::REFLINK {
        test(kind);
    }
}

/// Backups into a filesystem filled up but for each of `slacks` bytes: each
/// must fail with the typed error, change no complete revision and succeed
/// once the filler is gone (with `changed`, the whole 8 MiB source changes
/// each time, else one block). Returns the files the errors named.
fn backups_into_a_full_filesystem(
    kind: FsKind,
    changed: bool,
    slacks: &[u64],
) -> Option<Vec<String>> {
    let mut s = Setup::new(kind)?;
    let mut named = Vec::new();
    for (n, &slack) in slacks.iter().enumerate() {
        if changed {
            fs::write(&s.src, pattern_bytes(10 + n as u64, 8 * MIB as usize)).unwrap();
        } else {
            write_at(&s.src, 3 * MIB, &pattern_bytes(40 + n as u64, 64 << 10));
        }
        let before = s.revisions().len();
        let r = s.fails_then_recovers_leaving(kind, &["backup", "daily"], slack);
        assert_eq!(s.revisions().len(), before + 1);
        let full = s.full_message();
        let line = r.stderr.lines().find(|l| l.contains(&full)).unwrap();
        let job = path_of(&s.job);
        let file = line
            .split_whitespace()
            .find(|w| w.starts_with(&job))
            .map(|w| w.trim_end_matches(':').rsplit('/').next().unwrap())
            .unwrap_or_default();
        named.push(file.to_string());
    }
    Some(named)
}

/// What kinds of file `named` holds: ".rev", ".sums", "image".
fn kinds_of(named: &[String]) -> Vec<&'static str> {
    let mut kinds: Vec<&'static str> = named
        .iter()
        .map(|f| {
            if f.contains(".rev") {
                ".rev"
            } else if f.ends_with(".sums") {
                ".sums"
            } else {
                "image"
            }
        })
        .collect();
    kinds.sort();
    kinds.dedup();
    kinds
}

/// A backup whose new data does not fit: the image's writes fail.
#[test]
fn a_file_backup_into_a_full_job_filesystem() {
    each_kind(|kind| {
        let Some(named) = backups_into_a_full_filesystem(kind, true, &[0, 1 << 20]) else {
            return;
        };
        eprintln!("{kind}: the writes that failed: {named:?}");
        let kinds = kinds_of(&named);
        assert!(
            kinds.contains(&"image") && kinds.contains(&".rev"),
            "{kind}: {named:?}"
        );
    });
}

/// A backup that changes one 64 KiB block: besides the `.rev` files, the
/// image's one copied-on-write block and the new manifest (8 KiB for this
/// 8 MiB image) need room. Which write fails depends on the filesystem's
/// allocator (seen: the image's block on btrfs, creating the `.rev` on XFS;
/// the manifest's write is not singled out), each is the typed error.
#[test]
fn a_small_backup_into_a_full_job_filesystem() {
    each_kind(|kind| {
        let Some(named) = backups_into_a_full_filesystem(kind, false, &[64 << 10]) else {
            return;
        };
        eprintln!("{kind}: the writes that failed: {named:?}");
    });
}

/// `.rev` updates: verify, distrust and protect rewrite a `.rev` atomically.
#[test]
fn rev_updates_on_a_full_job_filesystem() {
    each_kind(|kind| {
        let Some(mut s) = Setup::new(kind) else {
            return;
        };
        let id = s.revisions()[0].clone();
        s.fails_then_recovers(kind, &["verify", "-r", &id]);
        s.fails_then_recovers(kind, &["distrust", "-r", &id]);
        s.fails_then_recovers(kind, &["protect", "-r", &id]);
    });
}

/// `send | receive` into a job on a full filesystem.
#[test]
fn a_receive_into_a_full_job_filesystem() {
    each_kind(|kind| {
        let Some(mut s) = Setup::new(kind) else {
            return;
        };
        // The sender: a job of its own with a revision the target lacks.
        let sender = s.tmp.path().join("sender");
        let src = s.tmp.path().join("sender.img");
        fs::write(&src, pattern_bytes(9, 8 * MIB as usize)).unwrap();
        run_ok(backy_job(&sender).args(["init", "file"]).arg(&src));
        run_ok(backy_job(&sender).args(["backup", "--allow-copy", "daily"]));
        let stream = s.tmp.path().join("stream");
        let out = File::create(&stream).unwrap();
        let r = backy_job(&sender)
            .arg("send")
            .stdout(out)
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
        let target = s.fs.join("received");
        run_ok(backy_job(&target).args(["init", "file"]).arg(&src));
        let before = s.state();
        s.fill();
        let receive = |target: &Path| {
            let r = backy_job(target)
                .arg("receive")
                .stdin(File::open(&stream).unwrap())
                .output()
                .unwrap();
            (r.status, String::from_utf8_lossy(&r.stderr).into_owned())
        };
        let (status, stderr) = receive(&target);
        assert!(!status.success(), "{kind}: receive succeeded:\n{stderr}");
        assert!(
            stderr.contains("is full") && stderr.contains(&path_of(s.fs.path())),
            "{kind}: {stderr}"
        );
        assert!(
            !fs::read_dir(&target)
                .unwrap()
                .flatten()
                .any(|e| e.file_name().to_string_lossy().ends_with(".rev")),
            "{kind}: the failed receive left a revision"
        );
        assert_eq!(s.state(), before);
        s.free();
        let (status, stderr) = receive(&target);
        assert!(status.success(), "{kind}: {stderr}");
        run_ok(backy_job(&target).arg("verify"));
        run_ok(s.backy().arg("verify"));
    });
}

/// Writes through an NBD overlay on a full job filesystem get ENOSPC; the
/// server names the filesystem in its log and keeps serving.
#[test]
fn nbd_overlay_writes_on_a_full_job_filesystem() {
    if find_tool("qemu-io").is_none() {
        skip::<()>("qemu-io is missing (scripts/setup-test-deps.sh installs qemu-utils)");
        return;
    }
    each_kind(|kind| {
        let Some(mut s) = Setup::new(kind) else {
            return;
        };
        let before = s.state();
        let id = s.revisions()[1].clone();
        let log = s.tmp.path().join("nbd.log");
        let child = s
            .backy()
            .arg("-l")
            .arg(&log)
            .args(["nbd-server", "-p", "0", "--overlay"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut server = Background { child };
        let port = server.nbd_port(&log);
        let uri = format!("nbd://127.0.0.1:{port}/{id}");
        // One client connects (the overlay is made then), the filesystem
        // fills up, its writes fail with ENOSPC and it still reads.
        let mut client = tool("qemu-io")
            .args(["-f", "raw", &uri])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = client.stdin.take().unwrap();
        let lines = {
            let (tx, rx) = std::sync::mpsc::channel::<String>();
            for pipe in [
                Box::new(client.stdout.take().unwrap()) as Box<dyn Read + Send>,
                Box::new(client.stderr.take().unwrap()),
            ] {
                let tx = tx.clone();
                std::thread::spawn(move || {
                    for line in std::io::BufRead::lines(std::io::BufReader::new(pipe)) {
                        let Ok(line) = line else { break };
                        if tx.send(line).is_err() {
                            break;
                        }
                    }
                });
            }
            rx
        };
        let mut seen = String::new();
        let mut expect = |cmd: &str, needle: &str| {
            writeln!(stdin, "{cmd}").unwrap();
            let start = Instant::now();
            while !seen.contains(needle) {
                let left = Duration::from_secs(60).saturating_sub(start.elapsed());
                match lines.recv_timeout(left) {
                    Ok(line) => {
                        seen.push_str(&line);
                        seen.push('\n');
                    }
                    Err(_) => panic!("{kind}: no {needle:?} after {cmd:?}:\n{seen}"),
                }
            }
        };
        expect("write -P 0xab 0 4096", "wrote 4096/4096 bytes");
        s.fill();
        expect("write -P 0xcd 0 8M", "No space left on device");
        expect("read -P 0xab 0 4096", "read 4096/4096 bytes");
        drop(stdin);
        let _ = client.wait();
        let io = |cmds: &[&str]| {
            let mut cmd = tool("qemu-io");
            cmd.args(["-f", "raw"]);
            for c in cmds {
                cmd.args(["-c", c]);
            }
            let r = run_timeout(cmd.arg(&uri), Duration::from_secs(60));
            format!("{}{}", r.stdout, r.stderr)
        };
        assert!(
            server.child.try_wait().unwrap().is_none(),
            "{kind}: the server ended"
        );
        let text = fs::read_to_string(&log).unwrap();
        assert!(text.contains(&s.full_message()), "{kind}: {text}");
        s.free();
        let out = io(&["write -P 0xab 0 1M"]);
        assert!(out.contains("wrote 1048576/1048576 bytes"), "{kind}: {out}");
        server.terminate("nbd-server", || {
            fs::read_to_string(&log).unwrap_or_default()
        });
        assert_eq!(
            s.state(),
            before,
            "{kind}: overlay writes changed a revision"
        );
        run_ok(s.backy().arg("verify"));
    });
}

/// The scheduler's status file on a full filesystem: the scheduler logs why,
/// naming the filesystem, keeps running, and writes the file once there is
/// room again.
#[test]
fn the_scheduler_status_file_on_a_full_filesystem() {
    let Some(mut s) = Setup::new(FsKind::Btrfs) else {
        return;
    };
    let status = s.fs.join("status");
    let conf = s.tmp.path().join("backy.conf");
    let base = s.tmp.path().join("base");
    fs::create_dir(&base).unwrap();
    fs::write(
        &conf,
        format!(
            "global:\n  base-dir: {}\n  status-file: {}\n  status-interval: 1\n  telnet-addrs: \"127.0.0.1\"\n  telnet-port: 0\nschedules:\n  slow:\n    daily: {{interval: 1d, keep: 1}}\njobs:\n  j: {{schedule: slow, source: {{type: file, filename: {}}}}}\n",
            base.display(),
            status.display(),
            s.src.display()
        ),
    )
    .unwrap();
    s.fill();
    let log = s.tmp.path().join("scheduler.log");
    let child = backy()
        .arg("-l")
        .arg(&log)
        .args(["scheduler", "-c"])
        .arg(&conf)
        .env("BACKY_CMD", "/bin/true")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut daemon = Background { child };
    let text = wait_for(&log, &s.full_message(), Duration::from_secs(30));
    assert!(text.contains(&path_of(&status)), "{text}");
    assert!(!status.exists());
    assert!(
        daemon.child.try_wait().unwrap().is_none(),
        "the scheduler ended"
    );
    s.free();
    let start = Instant::now();
    while !status.exists() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no status file after freeing space"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let status = daemon.terminate("scheduler", || fs::read_to_string(&log).unwrap_or_default());
    assert!(status.success(), "{status}");
}

/// A log file on a full filesystem: the messages go to stderr with one line
/// that names the filesystem; the command's own result decides the exit
/// status; once there is room the log is written again.
#[test]
fn a_log_file_on_a_full_filesystem() {
    let Some(mut s) = Setup::new(FsKind::Xfs) else {
        return;
    };
    let job = s.tmp.path().join("other-job");
    run_ok(backy_job(&job).args(["init", "file"]).arg(&s.src));
    let log = s.fs.join("backy.log");
    fs::write(&log, "").unwrap();
    s.fill();
    // A backup (on another filesystem) whose log cannot be written.
    let r = run(backy_job(&job)
        .arg("-l")
        .arg(&log)
        .args(["backup", "--allow-copy", "daily"]));
    assert!(
        r.stderr.contains("cannot write to log file")
            && r.stderr.contains(&s.full_message())
            && r.stderr.contains("logging to stderr"),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr.contains("Backy operation complete"),
        "{}",
        r.stderr
    );
    // A failing command still fails, its error on stderr.
    let r = run(backy_job(&job)
        .arg("-l")
        .arg(&log)
        .args(["restore", "-r", "nope", "/dev/null"]));
    assert!(!r.status.success());
    assert!(
        r.stderr.contains("no complete revision matches 'nope'"),
        "{}",
        r.stderr
    );
    s.free();
    run_ok(backy_job(&job).arg("-l").arg(&log).arg("status"));
    let text = fs::read_to_string(&log).unwrap();
    assert!(text.contains(" status"), "{text}");
}

fn wait_for(log: &Path, needle: &str, limit: Duration) -> String {
    let start = Instant::now();
    loop {
        let mut text = String::new();
        if let Ok(mut f) = OpenOptions::new().read(true).open(log) {
            let _ = f.read_to_string(&mut text);
        }
        if text.contains(needle) {
            return text;
        }
        assert!(
            start.elapsed() < limit,
            "no {needle:?} after {limit:?}:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn path_of(p: &Path) -> String {
    p.display().to_string()
}

/// The way out that the messages name: `forget` (and so expiry, which
/// removes revisions the same way, before it rewrites any `.rev`) frees space
/// on a full job filesystem, where the `.rev` that marks the revision as on
/// its way out does not fit (it renames that `.rev` aside instead).
#[test]
fn forget_works_on_a_full_job_filesystem() {
    each_kind(|kind| {
        let Some(mut s) = Setup::new(kind) else {
            return;
        };
        let ids = s.revisions();
        s.fill();
        run_ok(s.backy().args(["forget", "-r", &ids[0]]));
        let left: Vec<String> = fs::read_dir(&s.job)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(ids[0].as_str()))
            .collect();
        assert!(left.is_empty(), "{kind}: forget left {left:?}");
        assert_eq!(s.revisions(), ids[1..]);
        s.free();
        run_ok(s.backy().arg("verify"));
    });
}

/// The manifest's write singled out: the backup stops right after cloning the
/// parent's image (`after-clone:stop`; its `.rev` already exists), the
/// filesystem is filled while it waits, and the only change of the source is a
/// block that became zeros, so the image needs no new space (the block is
/// punched) and the first write that needs room is the manifest's: seen on
/// btrfs, writing a page of the reflinked copy of the parent's manifest; on
/// XFS, making that copy.
#[test]
fn a_manifest_write_on_a_full_job_filesystem() {
    each_kind(|kind| {
        let Some(mut s) = Setup::new(kind) else {
            return;
        };
        let before = s.state();
        let ids = s.revisions();
        write_at(&s.src, 5 * MIB, &vec![0u8; 64 << 10]);
        let child = s
            .backy()
            .args(["backup", "daily"])
            .env("BACKY_FAILPOINT", "after-clone:stop")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stat = format!("/proc/{}/stat", child.id());
        let started = Instant::now();
        loop {
            let text = fs::read_to_string(&stat).unwrap_or_default();
            let state = text.rsplit(')').next().unwrap_or("").trim_start();
            if state.starts_with('T') {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(60) && !state.starts_with('Z'),
                "{kind}: the backup did not stop at after-clone ({state:?})"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        s.fill();
        let pid = rustix::process::Pid::from_raw(child.id() as i32).unwrap();
        rustix::process::kill_process(pid, rustix::process::Signal::CONT).unwrap();
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(
            !out.status.success(),
            "{kind}: succeeded on a full filesystem"
        );
        let full = s.full_message();
        let line = stderr
            .lines()
            .find(|l| l.contains(&full))
            .unwrap_or_else(|| panic!("{kind}: expected {full:?} in {stderr}"));
        eprintln!("{kind}: {line}");
        assert!(
            line.contains(".sums"),
            "{kind}: not the manifest's write: {line}"
        );
        assert_eq!(s.revisions(), ids, "{kind}: the revisions changed");
        assert_eq!(s.state(), before, "{kind}: a complete revision changed");
        s.free();
        run_ok(s.backy().args(["backup", "daily"]));
        run_ok(s.backy().arg("verify"));
    });
}
