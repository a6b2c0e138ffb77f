//! Issue 16: read errors from real failing devices. `nbdkit` serves a file
//! whose reads fail (EIO) in a chosen byte range, mounted as a file through
//! `nbdfuse` (tests/util/faulty.rs). A source with a bad sector fails the
//! backup naming the offset and leaves no revision; a revision whose extent
//! fails (a btrfs or XFS job filesystem on a loop device over such a file,
//! failing only the device range FIEMAP shows for the image's data) makes
//! `restore`, `verify` and the NBD server name the offset, and `verify`
//! distrusts the revision.

mod util;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use util::faulty::{FaultyDevice, FaultyFs};
use util::*;

const MIB: u64 = 1 << 20;

fn revisions(job: &Path) -> Vec<String> {
    let mut ids: Vec<String> = fs::read_dir(job)
        .unwrap()
        .flatten()
        .filter_map(|e| {
            e.file_name()
                .to_str()?
                .strip_suffix(".rev")
                .filter(|id| *id != "last")
                .map(str::to_string)
        })
        .collect();
    ids.sort();
    ids
}

/// The job directory's file names, sorted.
fn listing(job: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(job)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// The job directory's files that are not logs or locks, with their hashes.
fn contents(job: &Path) -> Vec<(String, String)> {
    listing(job)
        .into_iter()
        .filter(|n| !n.ends_with(".log") && !n.starts_with('.'))
        .map(|n| {
            let path = job.join(&n);
            let hash = if path.is_file() {
                sha256(&path)
            } else {
                String::new()
            };
            (n, hash)
        })
        .collect()
}

/// A source (`block`: read as a block device, a loop device over the file)
/// whose sectors at 3 MiB + 8 KiB fail: the first backup and one after a
/// good revision both fail naming the source and that offset, and leave the
/// job directory as it was (no revision, no partial file); the backup after
/// the device reads again succeeds.
fn source_read_error(block: bool) {
    let fs = require_fs!(FsKind::Btrfs, 128);
    let data = pattern_bytes(16, 4 * MIB as usize);
    let Some(dev) = FaultyDevice::new(4 * MIB, &data) else {
        return;
    };
    let loop_device = block.then(|| LoopDevice::attach_direct(&dev.path()));
    let source = match &loop_device {
        Some(l) => l.path().to_owned(),
        None => dev.path(),
    };
    let bad = 3 * MIB + 8192;
    let job = fs.join("job");
    run_ok(backy_job(&job).args(["init", "file"]).arg(&source));
    for round in 0..2 {
        dev.fail_range(bad, bad + 4096);
        let before = contents(&job);
        let ids = revisions(&job);
        let r = run_timeout(
            backy_job(&job).args(["backup", "daily"]),
            Duration::from_secs(120),
        )
        .failure()
        .stderr_has(&format!("cannot read source {}", source.display()))
        .stderr_has(&format!("at offset {bad}"))
        .stderr_has("Input/output error")
        .stderr_has("kept no revision");
        assert_eq!(revisions(&job), ids, "round {round}: {}", r.stderr);
        assert_eq!(
            contents(&job),
            before,
            "round {round}: the failed backup left files"
        );

        dev.heal();
        run_ok(backy_job(&job).args(["backup", "daily"]));
        let ids = revisions(&job);
        assert_eq!(ids.len(), round + 1, "{:?}", listing(&job));
        let out = fs.join("restored");
        let _ = fs::remove_file(&out);
        run_ok(backy_job(&job).args(["restore", "-r", "0"]).arg(&out));
        assert_eq!(fs::read(&out).unwrap(), data);
    }
    run_ok(backy_job(&job).arg("verify"));
}

#[test]
fn a_source_file_read_error_fails_the_backup_naming_the_offset() {
    source_read_error(false);
}

#[test]
fn a_source_block_device_read_error_fails_the_backup_naming_the_offset() {
    source_read_error(true);
}

/// A running `backy nbd-server` on a free port.
struct Server {
    child: Background,
    port: u16,
    log: PathBuf,
}

impl Server {
    fn start(job: &Path, log: PathBuf, args: &[&str]) -> Server {
        let child = backy_job(job)
            .arg("-l")
            .arg(&log)
            .args(["nbd-server", "-p", "0"])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut server = Server {
            child: Background { child },
            port: 0,
            log,
        };
        server.port = server.child.nbd_port(&server.log);
        server
    }

    fn uri(&self, name: &str) -> String {
        format!("nbd://127.0.0.1:{}/{name}", self.port)
    }

    fn running(&mut self) -> bool {
        self.child.child.try_wait().unwrap().is_none()
    }
}

/// A revision whose image has an unreadable extent (the device under the
/// job's filesystem fails reads there): restore, verify and an NBD client's
/// read name the offset; verify distrusts the revision; the server keeps
/// serving the rest.
fn unreadable_revision(kind: FsKind) {
    let Some(fs) = FaultyFs::new(kind, if kind == FsKind::Xfs { 300 } else { 128 }) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src.img");
    let data = pattern_bytes(61, 8 * MIB as usize);
    fs::write(&src, &data).unwrap();
    let job = fs.join("job");
    run_ok(backy_job(&job).args(["init", "file"]).arg(&src));
    run_ok(backy_job(&job).args(["backup", "daily"]));
    let ids = revisions(&job);
    let id = &ids[0];
    let image = job.join(id);
    let bad = 5 * MIB;
    let at = fs.device_offset(&image, bad);
    let rev_before = fs::read_to_string(job.join(format!("{id}.rev"))).unwrap();
    fs.remount();
    fs.device.fail_range(at, at + 4096);

    let out = tmp.path().join("restored");
    run_timeout(
        backy_job(&job).args(["restore", "-r", id]).arg(&out),
        Duration::from_secs(120),
    )
    .failure()
    .stderr_has(&format!("at offset {bad}"))
    .stderr_has("Input/output error")
    .stderr_has(&format!("backy verify -r {id}"));
    assert!(!out.exists(), "the failed restore left its partial target");

    let log = tmp.path().join("nbd.log");
    let mut server = Server::start(&job, log.clone(), &[]);
    let read = |offset: u64| {
        let r = run_timeout(
            tool("qemu-io")
                .args(["-r", "-f", "raw", "-c"])
                .arg(format!("read {offset} 4096"))
                .arg(server.uri(id)),
            Duration::from_secs(30),
        );
        format!("{}{}", r.stdout, r.stderr)
    };
    let failed = read(bad);
    assert!(
        failed.contains("read failed: Input/output error"),
        "{failed}"
    );
    let fine = read(0);
    assert!(fine.contains("read 4096/4096 bytes"), "{fine}");
    assert!(server.running(), "the NBD server ended after a read error");
    let text = fs::read_to_string(&log).unwrap();
    assert!(text.contains(&format!("at {bad}+")), "{text}");
    drop(server);

    let r = run_timeout(
        backy_job(&job).args(["verify", "-r", id]),
        Duration::from_secs(120),
    )
    .failure();
    assert!(
        r.stdout.contains(&format!(
            "{id} distrusted: blocks at offsets {bad} cannot be read"
        )),
        "verify does not name offset {bad}:\n{}\n{}",
        r.stdout,
        r.stderr
    );
    let rev = fs::read_to_string(job.join(format!("{id}.rev"))).unwrap();
    assert_ne!(rev, rev_before);
    assert!(rev.contains("trust: distrusted"), "{rev}");
}

#[test]
fn an_unreadable_revision_extent_is_reported_by_offset_xfs() {
    unreadable_revision(FsKind::Xfs);
}

#[test]
fn an_unreadable_revision_extent_is_reported_by_offset_btrfs() {
    unreadable_revision(FsKind::Btrfs);
}
