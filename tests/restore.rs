//! Restores that must not lose data (issue 9): never into the job, always
//! checked against the revision's manifest, exclusive on block devices, clean
//! on a full target filesystem; and the files `init` writes.

mod util;

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use util::*;

const MIB: u64 = 1 << 20;

/// A job on its own filesystem with two complete revisions of a `size`-byte
/// source (data, zeros and a hole), oldest first.
struct Job {
    fs: TestFs,
    src: PathBuf,
    dir: PathBuf,
    /// Revision ids, oldest first.
    ids: Vec<String>,
}

impl Job {
    fn new(kind: FsKind, fs_mib: u64, size: u64, revisions: usize) -> Option<Job> {
        let fs = TestFs::new(kind, fs_mib)?;
        let src = fs.join("src.img");
        let dir = fs.join("job");
        let f = File::create(&src).unwrap();
        f.set_len(size).unwrap();
        f.write_all_at(&pattern_bytes(1, (size / 2) as usize), 0)
            .unwrap();
        f.write_all_at(&vec![0u8; MIB as usize], size / 2).unwrap();
        drop(f);
        run_ok(backy_job(&dir).args(["init", "file"]).arg(&src));
        let mut job = Job {
            fs,
            src,
            dir,
            ids: Vec::new(),
        };
        for n in 0..revisions {
            write_at(
                &job.src,
                n as u64 * 65536,
                &pattern_bytes(100 + n as u64, 65536),
            );
            run_ok(job.backy().args(["backup", &format!("t{n}")]));
            let id = job.status().last().unwrap()["id"]
                .as_str()
                .unwrap()
                .to_string();
            job.ids.push(id);
        }
        Some(job)
    }

    fn backy(&self) -> Command {
        backy_job(&self.dir)
    }

    fn status(&self) -> Vec<serde_json::Value> {
        let r = run_ok(self.backy().args(["status", "--json"]));
        serde_json::from_str(&r.stdout).unwrap_or_else(|e| r.fail(&format!("bad JSON: {e}")))
    }

    fn image(&self, id: &str) -> PathBuf {
        self.dir.join(id)
    }

    /// Name, length and SHA-256 of every file in the job directory (symlinks:
    /// their target).
    fn snapshot(&self) -> BTreeMap<String, String> {
        fs::read_dir(&self.dir)
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let p = e.path();
                let m = p.symlink_metadata().unwrap();
                let what = if m.file_type().is_symlink() {
                    format!("-> {}", fs::read_link(&p).unwrap().display())
                } else if m.is_file() {
                    format!("{} {}", m.len(), sha256(&p))
                } else {
                    "dir".into()
                };
                (e.file_name().to_string_lossy().into_owned(), what)
            })
            .collect()
    }
}

/// Runs a command on drop (unmount a bind mount, detach a loop device), so a
/// failing test does not leave the test filesystem busy.
struct OnDrop(Option<Command>);

impl Drop for OnDrop {
    fn drop(&mut self) {
        if let Some(mut cmd) = self.0.take() {
            let _ = cmd.status();
        }
    }
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

/// `backy ARGS` under `umask MASK`, from `cwd`.
fn backy_with_umask(mask: &str, cwd: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(format!("umask {mask} && exec \"$0\" \"$@\""))
        .arg(env!("CARGO_BIN_EXE_backy"))
        .args(args)
        .current_dir(cwd);
    cmd
}

// ---------------------------------------------------------------------------
// init

#[test]
fn init_writes_the_config_0640_and_the_job_directory_0750_whatever_the_umask() {
    let tmp = tempfile::tempdir().unwrap();
    for (mask, name) in [("000", "open"), ("022", "usual"), ("077", "strict")] {
        let job = tmp.path().join(name);
        let job_str = job.to_str().unwrap();
        run_ok(&mut backy_with_umask(
            mask,
            tmp.path(),
            &["-b", job_str, "init", "file", "/srv/vm.img"],
        ));
        assert_eq!(mode(&job.join("config")), 0o640, "umask {mask}");
        assert_eq!(mode(&job), 0o750, "umask {mask}");
        run_ok(&mut backy_with_umask(
            mask,
            tmp.path(),
            &[
                "-b",
                &format!("{job_str}-ceph"),
                "init",
                "ceph-rbd",
                "rbd/vm",
            ],
        ));
        assert_eq!(mode(&tmp.path().join(format!("{name}-ceph/config"))), 0o640);
    }
}

#[test]
fn init_writes_a_config_with_a_consul_token_0600() {
    let tmp = tempfile::tempdir().unwrap();
    let with = tmp.path().join("with-token");
    let r = run_ok(
        backy_job(&with)
            .args(["init", "flyingcircus"])
            .arg("rbd/vm01.root,vm01,s3cret"),
    );
    // (main logs the whole command line, token included; that is not init's.)
    let line = r
        .stderr
        .lines()
        .find(|l| l.contains("Initialized job"))
        .unwrap_or_else(|| r.fail("no 'Initialized job' line"));
    assert!(
        !line.contains("s3cret"),
        "the token reached the log: {line}"
    );
    assert!(
        fs::read_to_string(with.join("config"))
            .unwrap()
            .contains("s3cret")
    );
    assert_eq!(mode(&with.join("config")), 0o600);
    let without = tmp.path().join("without-token");
    run_ok(
        backy_job(&without)
            .args(["init", "flyingcircus"])
            .arg("rbd/vm01.root,vm01"),
    );
    assert_eq!(mode(&without.join("config")), 0o640);
}

#[test]
fn init_stores_a_relative_source_path_as_an_absolute_one() {
    let tmp = tempfile::tempdir().unwrap();
    let here = tmp.path().join("here");
    fs::create_dir_all(here.join("src")).unwrap();
    fs::write(here.join("src/one.img"), vec![7u8; 65536]).unwrap();
    let job = tmp.path().join("job");
    run_ok(
        backy()
            .arg("-b")
            .arg(&job)
            .args(["init", "file", "src/one.img"])
            .current_dir(&here),
    );
    let config = fs::read_to_string(job.join("config")).unwrap();
    let want = here.join("src/one.img");
    assert!(
        config.contains(want.to_str().unwrap()),
        "config does not hold the absolute path {}: {config}",
        want.display()
    );
    // `..` and symlinks are kept as given (only made absolute).
    let job2 = tmp.path().join("job2");
    run_ok(
        backy()
            .arg("-b")
            .arg(&job2)
            .args(["init", "file", "../here/src/one.img"])
            .current_dir(&here),
    );
    let config = fs::read_to_string(job2.join("config")).unwrap();
    assert!(
        config.contains(here.join("../here/src/one.img").to_str().unwrap()),
        "{config}"
    );
}

// ---------------------------------------------------------------------------
// Never into the job

fn never_into_the_job(kind: FsKind) {
    let Some(job) = Job::new(kind, 300, 8 * MIB, 2) else {
        return;
    };
    let (old, new) = (&job.ids[0], &job.ids[1]);
    let before = job.snapshot();
    let found = run_ok(job.backy().arg("find")).stdout.trim().to_string();
    assert_eq!(Path::new(&found), job.image(new));

    // Another way into the same files: a bind mount of the job directory.
    let bind_dir = tempfile::tempdir().unwrap();
    let bind = bind_dir.path().join("bind");
    fs::create_dir(&bind).unwrap();
    run_ok(tool("mount").arg("--bind").arg(&job.dir).arg(&bind));
    let mut umount = tool("umount");
    umount.arg(&bind);
    let _unbind = OnDrop(Some(umount));
    // A hard link and symlinks outside the job.
    let hard = job.fs.join("hardlink.img");
    fs::hard_link(job.image(new), &hard).unwrap();
    let soft = job.fs.join("symlink.img");
    std::os::unix::fs::symlink(job.dir.join("last"), &soft).unwrap();
    // A loop device over the newest image.
    let r = run_ok(
        tool("losetup")
            .args(["--find", "--show"])
            .arg(job.image(new)),
    );
    let loopdev = PathBuf::from(r.stdout.trim());
    let mut detach = tool("losetup");
    detach.arg("-d").arg(&loopdev);
    let _detach = OnDrop(Some(detach));

    let victims: Vec<(PathBuf, &str)> = vec![
        (PathBuf::from(&found), new),
        (job.dir.join("last"), new),
        (job.dir.join("last.rev"), new),
        (job.image(old), old),
        (job.dir.join(format!("{new}.sums")), new),
        (job.dir.join(format!("{old}.rev")), old),
        (bind.join(new), new),
        (bind.join("last"), new),
        (hard.clone(), new),
        (soft.clone(), new),
        (loopdev.clone(), new),
    ];
    for (target, victim) in &victims {
        for args in [
            &["restore", "-r", "0"][..],
            &["restore", "-r", "1", "--force"],
        ] {
            let r = run(job.backy().args(args).arg(target)).failure();
            let r = r.stderr_has(&format!("would destroy revision {victim}"));
            r.stderr_has("--force does not change this");
            assert_eq!(
                job.snapshot(),
                before,
                "{kind}: restore to {}",
                target.display()
            );
        }
    }
    // Files of the job that belong to no revision, and new files in it.
    let dangling = job.fs.join("dangling.img");
    std::os::unix::fs::symlink(job.dir.join("new.img"), &dangling).unwrap();
    for target in [
        job.dir.join("config"),
        job.dir.join("new.img"),
        bind.join("new.img"),
        dangling.clone(),
    ] {
        run(job.backy().args(["restore", "--force"]).arg(&target))
            .failure()
            .stderr_has("in the job directory")
            .stderr_has("restore to a path outside the job directory");
        assert_eq!(
            job.snapshot(),
            before,
            "{kind}: restore to {}",
            target.display()
        );
    }
    // stdout into a revision (opened without truncating it).
    let mut sh = Command::new("sh");
    sh.arg("-c")
        .arg("exec \"$0\" -b \"$1\" restore -r 0 - >> \"$2\"")
        .arg(env!("CARGO_BIN_EXE_backy"))
        .arg(&job.dir)
        .arg(job.image(old));
    run(&mut sh)
        .failure()
        .stderr_has(&format!("would destroy revision {old}"));
    assert_eq!(job.snapshot(), before, "{kind}: restore - into a revision");

    // Both revisions still restore byte-identical; a normal target works.
    let elsewhere = job.fs.join("restored");
    run_ok(job.backy().args(["restore", "-r", "0"]).arg(&elsewhere));
    assert!(files_equal(&elsewhere, &job.image(new)));
    for rev in job.status() {
        assert_eq!(rev["complete"], true, "{rev}");
    }
}

#[test]
fn restore_never_writes_into_the_job_on_btrfs() {
    never_into_the_job(FsKind::Btrfs);
}

#[test]
fn restore_never_writes_into_the_job_on_xfs() {
    never_into_the_job(FsKind::Xfs);
}

// ---------------------------------------------------------------------------
// Checking what is restored

/// Rewrites a `.rev` file (0440 once complete; we run as root).
fn edit_rev(job: &Job, id: &str, edit: impl FnOnce(String) -> String) {
    let path = job.dir.join(format!("{id}.rev"));
    let text = fs::read_to_string(&path).unwrap();
    let new = edit(text.clone());
    assert_ne!(new, text, "the edit changed nothing");
    fs::write(&path, new).unwrap();
}

fn trust_of(job: &Job, id: &str) -> String {
    job.status()
        .iter()
        .find(|r| r["id"] == id)
        .unwrap_or_else(|| panic!("{id} not listed"))["trust"]
        .as_str()
        .unwrap()
        .to_string()
}

fn restore_checks(kind: FsKind) {
    let Some(job) = Job::new(kind, 400, 16 * MIB, 4) else {
        return;
    };
    // Another filesystem, so that restores there are copies, not clones.
    let other = require_fs!(FsKind::Tmpfs, 64);
    let [short, bad, distrusted, sampled] = [0, 1, 2, 3].map(|i| job.ids[i].clone());

    // A good revision restores with --verify, cloned or copied, byte-identical.
    for out in [job.fs.join("good-clone"), other.join("good-copy")] {
        run_ok(
            job.backy()
                .args(["restore", "--verify", "-r", &sampled])
                .arg(&out),
        )
        .stderr_has("matched its checksum");
        assert!(files_equal(&out, &job.image(&sampled)));
        fs::remove_file(&out).unwrap();
    }

    // A truncated image is never restored, with or without --verify.
    let image = job.image(&short);
    OpenOptions::new()
        .write(true)
        .open(&image)
        .unwrap()
        .set_len(10 * MIB)
        .unwrap();
    for verify in [false, true] {
        let out = other.join("short");
        let mut cmd = job.backy();
        cmd.args(["restore", "-r", &short]);
        if verify {
            cmd.arg("--verify");
        }
        run(cmd.arg(&out))
            .failure()
            .stderr_has(&format!(
                "has {} bytes but its checksum manifest records {}",
                10 * MIB,
                16 * MIB
            ))
            .stderr_has("nothing was restored");
        assert!(!out.exists(), "a refused restore created its target");
        run(job.backy().args(["restore", "-r", &short, "-"]))
            .failure()
            .stderr_has("checksum manifest records");
    }
    assert_eq!(trust_of(&job, &short), "distrusted");

    // A damaged block: --verify stops at it, names its offset and leaves no target.
    let offset = 5 * MIB + 3 * 65536;
    write_at(&job.image(&bad), offset + 4096, &[0x5A; 4096]);
    for (out, name) in [
        (job.fs.join("bad-clone"), "clone"),
        (other.join("bad-copy"), "copy"),
    ] {
        run(job
            .backy()
            .args(["restore", "--verify", "-r", &bad])
            .arg(&out))
        .failure()
        .stderr_has(&format!("at offset {offset}"))
        .stderr_has("the partial file was removed");
        assert!(!out.exists(), "{name}: the failed restore left its target");
    }
    // --force onto an existing file: removed too (it was truncated).
    let existing = other.join("existing");
    fs::write(&existing, b"old data").unwrap();
    run(job
        .backy()
        .args(["restore", "--verify", "--force", "-r", &bad])
        .arg(&existing))
    .failure()
    .stderr_has(&format!("at offset {offset}"));
    assert!(!existing.exists());
    // To stdout: nothing from the damaged block on.
    let r = run(job.backy().args(["restore", "--verify", "-r", &bad, "-"]))
        .failure()
        .stderr_has(&format!("at offset {offset}"));
    assert!(
        r.stdout_bytes.len() as u64 <= offset,
        "{}",
        r.stdout_bytes.len()
    );
    assert_eq!(trust_of(&job, &bad), "distrusted");

    // Distrusted: a warning on stderr and in the log, even with -l.
    edit_rev(&job, &distrusted, |t| {
        let kept: String = t
            .lines()
            .filter(|l| !l.starts_with("trust:"))
            .map(|l| format!("{l}\n"))
            .collect();
        kept + "trust: distrusted\n"
    });
    let out = other.join("distrusted");
    run_ok(job.backy().args(["restore", "-r", &distrusted]).arg(&out))
        .stderr_has("WARN")
        .stderr_has(&format!("Revision {distrusted} is distrusted"));
    fs::remove_file(&out).unwrap();
    let log = other.join("restore.log");
    run_ok(
        job.backy()
            .arg("-l")
            .arg(&log)
            .args(["restore", "-r", &distrusted])
            .arg(&out),
    )
    .stderr_has(&format!("warning: Revision {distrusted} is distrusted"));
    assert!(
        fs::read_to_string(&log)
            .unwrap()
            .contains(&format!("WARN Revision {distrusted} is distrusted")),
        "the log lacks the warning"
    );
    fs::remove_file(&out).unwrap();

    // Verified only by sampling (as Ceph backups may be): a warning.
    edit_rev(&job, &sampled, |t| {
        t.replace("verification: full", "verification: sampled")
    });
    run_ok(job.backy().args(["restore", "-r", &sampled]).arg(&out))
        .stderr_has("verified it only partly (stats.verification: sampled)")
        .stderr_has("use --verify");
    fs::remove_file(&out).unwrap();

    // Without a manifest nothing can be checked: a warning, and --verify refuses.
    fs::remove_file(job.dir.join(format!("{sampled}.sums"))).unwrap();
    let r = run_ok(job.backy().args(["restore", "-r", &sampled]).arg(&out))
        .stderr_has("cannot be checked");
    assert!(!r.stderr.contains("may be damaged"), "{r:?}");
    fs::remove_file(&out).unwrap();
    // ... except against the source size a file job records in the .rev.
    edit_rev(&job, &sampled, |t| {
        t.replace(
            &format!("bytes_written: {}", 16 * MIB),
            &format!("bytes_written: {}", 32 * MIB),
        )
    });
    run_ok(job.backy().args(["restore", "-r", &sampled]).arg(&out)).stderr_has(&format!(
        "its image has {} bytes but its .rev records {} (bytes_written)",
        16 * MIB,
        32 * MIB
    ));
    fs::remove_file(&out).unwrap();
    run(job
        .backy()
        .args(["restore", "--verify", "-r", &sampled])
        .arg(&out))
    .failure()
    .stderr_has("restore it without --verify");
    assert!(!out.exists());
}

#[test]
fn restore_checks_size_trust_and_every_block_on_btrfs() {
    restore_checks(FsKind::Btrfs);
}

#[test]
fn restore_checks_size_trust_and_every_block_on_xfs() {
    restore_checks(FsKind::Xfs);
}

// ---------------------------------------------------------------------------
// Block devices, character devices, full filesystems

/// `O_EXCL` (the same value on every Linux architecture backy builds for).
const O_EXCL: i32 = 0o200;

fn busy_device(kind: FsKind) {
    let Some(job) = Job::new(kind, 300, 4 * MIB, 1) else {
        return;
    };
    // A filesystem of the same kind, mounted, with a file on it.
    let mounted = require_fs!(kind, 128);
    let marker = mounted.join("precious");
    fs::write(&marker, b"keep me").unwrap();
    run_ok(&mut Command::new("sync"));
    let dev = mounted.device().unwrap().to_owned();
    let head = |dev: &Path| {
        let mut buf = vec![0u8; MIB as usize];
        File::open(dev).unwrap().read_exact_at(&mut buf, 0).unwrap();
        sha256_bytes(&buf)
    };
    let before = head(&dev);
    run(job.backy().args(["restore", "--force"]).arg(&dev))
        .failure()
        .stderr_has(&format!("block device {}", dev.display()))
        .stderr_has(&format!("is mounted on {}", mounted.path().display()))
        .stderr_has("unmount it");
    assert_eq!(head(&dev), before, "{kind}: the mounted device was written");
    assert_eq!(fs::read(&marker).unwrap(), b"keep me");

    // In use without a mount: another exclusive opener.
    let Some(free) = TestBlockDevice::new(8) else {
        return;
    };
    let holder = OpenOptions::new()
        .read(true)
        .custom_flags(O_EXCL)
        .open(free.path())
        .unwrap();
    run(job.backy().arg("restore").arg(free.path()))
        .failure()
        .stderr_has("is in use")
        .stderr_has("nothing was written");
    drop(holder);
    run_ok(job.backy().arg("restore").arg(free.path()));
    let mut got = vec![0u8; (4 * MIB) as usize];
    File::open(free.path())
        .unwrap()
        .read_exact_at(&mut got, 0)
        .unwrap();
    assert!(got == fs::read(job.image(&job.ids[0])).unwrap());
}

fn sha256_bytes(data: &[u8]) -> String {
    let tmp = tempfile::NamedTempFile::new().unwrap();
    fs::write(tmp.path(), data).unwrap();
    sha256(tmp.path())
}

#[test]
fn restore_refuses_a_mounted_btrfs_device() {
    busy_device(FsKind::Btrfs);
}

#[test]
fn restore_refuses_a_mounted_xfs_device() {
    busy_device(FsKind::Xfs);
}

#[test]
fn restore_writes_character_devices_as_streams() {
    let Some(job) = Job::new(FsKind::Btrfs, 256, 4 * MIB, 1) else {
        return;
    };
    run_ok(job.backy().args(["restore", "-r", "0", "/dev/null"]));
    run_ok(job.backy().args(["restore", "--verify", "/dev/null"]));
    // /dev/full: the device is full, not a filesystem to expire revisions on.
    let r = run(job.backy().args(["restore", "/dev/full"]))
        .failure()
        .stderr_has("/dev/full accepts no more data");
    assert!(!r.stderr.contains("expire"), "{r:?}");
    // A socket is no target.
    let sock = job.fs.join("sock");
    let _listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    run(job.backy().arg("restore").arg(&sock))
        .failure()
        .stderr_has("is a socket; give a file, a block device or -");
}

/// Fills `fs` up to about `free` bytes (a filler file of random data).
fn fill(fs: &TestFs, free: u64) {
    let filler = fs.join("filler");
    let f = File::create(&filler).unwrap();
    let chunk = pattern_bytes(77, MIB as usize);
    let mut at = 0;
    while f.write_all_at(&chunk, at).is_ok() {
        at += MIB;
    }
    let _ = f.sync_all();
    f.set_len(at.saturating_sub(free)).unwrap();
    f.sync_all().unwrap();
    drop(f);
    run_ok(&mut Command::new("sync"));
}

fn full_target(kind: FsKind) {
    let Some(job) = Job::new(kind, 400, 48 * MIB, 1) else {
        return;
    };
    let small = require_fs!(kind, 128);
    fill(&small, 8 * MIB);
    let target = small.join("restored.img");
    let r = run(job.backy().arg("restore").arg(&target))
        .failure()
        .stderr_has(&format!("restore target {}", target.display()))
        .stderr_has(&format!(
            "the filesystem mounted on {} ({kind})",
            small.path().display()
        ))
        .stderr_has("is full")
        .stderr_has("the partial file was removed")
        .stderr_has("free space there");
    assert!(!r.stderr.contains("expire"), "{r:?}");
    assert!(
        !target.exists(),
        "{kind}: the partial target is still there"
    );
    // An existing file the restore truncated (--force) goes too; others stay.
    let existing = small.join("existing.img");
    fs::write(&existing, b"old").unwrap();
    run(job.backy().args(["restore", "--force"]).arg(&existing))
        .failure()
        .stderr_has("is full");
    assert!(
        !existing.exists(),
        "{kind}: the truncated target is still there"
    );
    assert!(small.join("filler").exists());
}

#[test]
fn restore_onto_a_full_btrfs_removes_its_file_and_names_the_filesystem() {
    full_target(FsKind::Btrfs);
}

#[test]
fn restore_onto_a_full_xfs_removes_its_file_and_names_the_filesystem() {
    full_target(FsKind::Xfs);
}

/// A revision fragmented by many small incrementals (only changed pages are
/// written, so its image is in many small extents) restores to stdout and to a
/// file on another filesystem with exactly the source's bytes: the reader that
/// reads windows out of file order puts every byte back in place.
fn fragmented_revision_restores_exactly(kind: FsKind) {
    let fs = require_fs!(kind, 300);
    let other = require_fs!(FsKind::Tmpfs, 64);
    let size = 16 * MIB + 12_345;
    let source = fs.join("source.img");
    let first: Vec<(u64, Vec<u8>)> = (0..size / MIB)
        .filter(|i| i % 5 != 2)
        .map(|i| (i * MIB, pattern_bytes(i, MIB as usize)))
        .collect();
    let refs: Vec<(u64, &[u8])> = first.iter().map(|(o, d)| (*o, &d[..])).collect();
    write_file(&source, size, &refs);
    let job = fs.join("job");
    run_ok(
        backy()
            .arg("-b")
            .arg(&job)
            .args(["init", "file"])
            .arg(&source),
    );
    let mut seed = 99u64;
    for _ in 0..6 {
        run_ok(backy_job(&job).args(["backup", "daily"]));
        for _ in 0..40 {
            seed = seed
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            let pages = 1 + (seed >> 60);
            let at = (seed >> 20) % (size / 4096 - pages) * 4096;
            write_at(&source, at, &pattern_bytes(seed, (pages * 4096) as usize));
        }
    }
    run_ok(backy_job(&job).args(["backup", "daily"]));
    let want = fs::read(&source).unwrap();
    let out = run_ok(backy_job(&job).args(["restore", "-r", "0", "--verify", "-"]));
    assert!(
        out.stdout_bytes == want,
        "{kind}: restore to stdout differs"
    );
    let target = other.join("restored.img");
    run_ok(backy_job(&job).args(["restore", "-r", "0"]).arg(&target));
    assert!(
        fs::read(&target).unwrap() == want,
        "{kind}: restore to a file differs"
    );
    run_ok(backy_job(&job).args(["verify", "-r", "0"]));
}

#[test]
fn fragmented_revision_restores_exactly_on_btrfs() {
    fragmented_revision_restores_exactly(FsKind::Btrfs);
}

#[test]
fn fragmented_revision_restores_exactly_on_xfs() {
    fragmented_revision_restores_exactly(FsKind::Xfs);
}
