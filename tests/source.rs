//! The file source under an operator's feet (issue 9): sources written during a
//! backup, parents damaged on disk, huge sparse sources. The real binary on
//! loop-mounted btrfs and XFS.

mod util;

use std::fs::{self, File};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::Duration;

use util::*;

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

fn init(job: &Path, src: &Path) {
    run_ok(backy_job(job).args(["init", "file"]).arg(src));
}

fn backup_verbose(job: &Path) -> Run {
    run(backy_job(job).args(["-v", "backup", "daily"]))
}

fn status_json(job: &Path) -> Vec<serde_json::Value> {
    let r = run_ok(backy_job(job).args(["status", "--json"]));
    serde_json::from_str(&r.stdout).unwrap_or_else(|e| r.fail(&format!("bad JSON: {e}")))
}

/// The number after `label` in the first line of `text` that has it.
fn number_after(run: &Run, label: &str) -> u64 {
    let Some(at) = run.stderr.find(label) else {
        run.fail(&format!("no {label:?} in the output"))
    };
    run.stderr[at + label.len()..]
        .trim_start()
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| run.fail(&format!("no number after {label:?}")))
}

/// What a backup read of the new image: to compare (`bytes_read` of the
/// writer's statistics) and to verify (the "bytes of the image read back").
fn image_bytes_read(run: &Run) -> (u64, u64) {
    let compared = number_after(run, "bytes_read:");
    let at = run
        .stderr
        .find(" bytes of the image read back")
        .unwrap_or_else(|| run.fail("no verification line"));
    let line_start = run.stderr[..at].rfind(", ").expect("a comma before") + 2;
    let verified = run.stderr[line_start..at].parse().unwrap();
    (compared, verified)
}

// ---------------------------------------------------------------------------
// Bullet: the cost of a sparse source follows its data, not its size.

fn sparse_source_case(kind: FsKind) {
    let fs = require_fs!(kind, 400);
    let src = fs.join("src.img");
    let data: Vec<(u64, Vec<u8>)> = (0..6u64)
        .map(|i| {
            (
                i * 8 * GIB + 12_345 * 4096,
                pattern_bytes(i, MIB as usize / 2),
            )
        })
        .collect();
    let writes: Vec<(u64, &[u8])> = data.iter().map(|(o, d)| (*o, d.as_slice())).collect();
    write_file(&src, 50 * GIB, &writes);
    let job = fs.join("job");
    init(&job, &src);

    // The first backup: the new image is one big hole before the patch.
    let r = backup_verbose(&job).success();
    let (compared, verified) = image_bytes_read(&r);
    assert!(
        compared <= 8 * MIB,
        "compared {compared} bytes of the image"
    );
    assert!(
        verified <= 8 * MIB,
        "read back {verified} bytes of the image"
    );

    // A parent without a manifest is compared by reading its image: its holes
    // are not read either.
    let id = status_json(&job)[0]["id"].as_str().unwrap().to_string();
    fs::remove_file(job.join(format!("{id}.sums"))).unwrap();
    write_at(&src, 20 * GIB, b"a change");
    let r = backup_verbose(&job)
        .success()
        .stderr_has("has no checksum manifest");
    let (compared, verified) = image_bytes_read(&r);
    assert!(
        compared <= 8 * MIB,
        "compared {compared} bytes of the parent"
    );
    assert!(
        verified <= 8 * MIB,
        "read back {verified} bytes of the image"
    );

    // And `verify` afterwards still checks every block (holes included); the
    // parent without a manifest is not verifiable, so `verify` exits 1.
    run(backy_job(&job).arg("verify"))
        .code(1)
        .stdout_has("1 verified, 0 distrusted, 1 not verifiable (no manifest)");
    let newest = status_json(&job).last().unwrap().clone();
    assert_eq!(newest["trust"], "verified");
    let out = fs.join("restored");
    run_ok(backy_job(&job).args(["restore", "-r", "0"]).arg(&out));
    assert_eq!(fs::metadata(&out).unwrap().len(), 50 * GIB);
    let f = File::open(&out).unwrap();
    for (offset, bytes) in &data {
        let mut buf = vec![0u8; bytes.len()];
        f.read_exact_at(&mut buf, *offset).unwrap();
        assert!(buf == *bytes, "data at {offset} differs");
    }
    let mut buf = [0u8; 8];
    f.read_exact_at(&mut buf, 20 * GIB).unwrap();
    assert_eq!(&buf, b"a change");
}

#[test]
fn a_sparse_50_gib_source_reads_only_its_data_on_btrfs() {
    sparse_source_case(FsKind::Btrfs);
}

#[test]
fn a_sparse_50_gib_source_reads_only_its_data_on_xfs() {
    sparse_source_case(FsKind::Xfs);
}

// ---------------------------------------------------------------------------
// Bullet: a source that shrinks to 0 bytes is backed up, with a warning and a stat.

fn shrunk_to_zero_case(kind: FsKind) {
    let fs = require_fs!(kind, 300);
    let src = fs.join("src.img");
    write_file(&src, 4 * MIB, &[(MIB, &pattern_bytes(1, MIB as usize))]);
    let job = fs.join("job");
    init(&job, &src);
    run_ok(backy_job(&job).args(["backup", "daily"]));
    File::options()
        .write(true)
        .open(&src)
        .unwrap()
        .set_len(0)
        .unwrap();
    let r = run_ok(backy_job(&job).args(["backup", "daily"]));
    let warning = r
        .stderr
        .lines()
        .find(|l| l.contains(" WARN ") && l.contains("The source is empty (0 bytes)"))
        .unwrap_or_else(|| r.fail("no warning about the empty source"));
    assert!(warning.contains(&(4 * MIB).to_string()), "{warning}");
    let revs = status_json(&job);
    assert_eq!(revs.len(), 2, "{revs:?}");
    let rev = |i: usize| {
        let id = revs[i]["id"].as_str().unwrap();
        fs::read_to_string(job.join(format!("{id}.rev"))).unwrap()
    };
    assert!(rev(1).contains("source_shrunk_to_zero: true"), "{}", rev(1));
    assert!(!rev(0).contains("source_shrunk_to_zero"), "{}", rev(0));
    // Empty again: the parent is empty too, nothing to warn about.
    let r = run_ok(backy_job(&job).args(["backup", "daily"]));
    assert!(!r.stderr.contains("The source is empty"), "{}", r.stderr);
}

#[test]
fn a_source_shrunk_to_zero_warns_and_is_recorded_on_btrfs() {
    shrunk_to_zero_case(FsKind::Btrfs);
}

#[test]
fn a_source_shrunk_to_zero_warns_and_is_recorded_on_xfs() {
    shrunk_to_zero_case(FsKind::Xfs);
}

// ---------------------------------------------------------------------------
// Bullet: a source written during the backup fails it (exit 75), leaving nothing.

/// A thread that rewrites the same 64 blocks of 64 KiB of `path` with new data,
/// round after round, until stopped; started and one round done on return.
struct Writer {
    stop: Arc<AtomicBool>,
    rounds: Arc<AtomicU64>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Writer {
    fn start(path: &Path, size: u64) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let rounds = Arc::new(AtomicU64::new(0));
        let thread = {
            let (stop, rounds, path) = (Arc::clone(&stop), Arc::clone(&rounds), path.to_owned());
            thread::spawn(move || {
                let file = File::options().write(true).open(&path).unwrap();
                let blocks = size / 65536;
                let mut round = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    for i in 0..64u64 {
                        let block = (i * 2_654_435_761 + 17) % blocks;
                        let data = pattern_bytes(round * 64 + i + 1_000_000, 65536);
                        file.write_all_at(&data, block * 65536).unwrap();
                    }
                    round += 1;
                    rounds.store(round, Ordering::Relaxed);
                    thread::sleep(Duration::from_millis(1));
                }
            })
        };
        while rounds.load(Ordering::Relaxed) < 1 {
            thread::sleep(Duration::from_millis(1));
        }
        Writer {
            stop,
            rounds,
            thread: Some(thread),
        }
    }

    /// Stops the thread; returns how many rounds it wrote.
    fn stop(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap();
        self.rounds.load(Ordering::Relaxed)
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Fills `path` (a file or device of `size` bytes) with data.
fn fill(path: &Path, size: u64) {
    let file = File::options().write(true).open(path).unwrap();
    for i in 0..size / MIB {
        file.write_all_at(&pattern_bytes(i, MIB as usize), i * MIB)
            .unwrap();
    }
    file.sync_all().unwrap();
}

/// The names in the job directory.
fn job_files(job: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(job)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n != "backy.log")
        .collect();
    names.sort();
    names
}

/// A good first backup, then one with `src` written all along: it fails with
/// exit 75 and the freezing advice, and leaves the job as it was; once the
/// writer stops, backups succeed again.
fn written_during_backup(job: &Path, src: &Path, size: u64, needle: &str) {
    init(job, src);
    run_ok(backy_job(job).args(["backup", "daily"]));
    let before = job_files(job);
    let good = status_json(job);

    let writer = Writer::start(src, size);
    let r = run(backy_job(job).args(["-v", "backup", "daily"]));
    let rounds = writer.stop();
    let r = r.code(75).stderr_has(&format!(
        "source {} was written during the backup",
        src.display()
    ));
    let line = r
        .stderr
        .lines()
        .find(|l| l.contains(" ERROR "))
        .unwrap_or_else(|| r.fail("no ERROR line"));
    for word in [needle, "fsfreeze", "snapshot", "stop the VM", "removed"] {
        assert!(line.contains(word), "{word:?} missing in {line:?}");
    }
    assert!(rounds > 1, "the writer wrote {rounds} rounds");
    assert_eq!(job_files(job), before, "the failed backup left files");
    let after = status_json(job);
    assert_eq!(after.len(), 1);
    assert_eq!(after[0]["id"], good[0]["id"]);

    run_ok(backy_job(job).args(["backup", "daily"]));
    assert_eq!(status_json(job).len(), 2);
    let out = job.parent().unwrap().join("restored");
    run_ok(backy_job(job).args(["restore", "-r", "0"]).arg(&out));
    assert_same_content(&out, src);
}

fn file_written_during_backup_case(kind: FsKind) {
    let fs = require_fs!(kind, 900);
    let src = fs.join("src.img");
    let size = 256 * MIB;
    File::create(&src).unwrap().set_len(size).unwrap();
    fill(&src, size);
    written_during_backup(&fs.join("job"), &src, size, "time moved while it was read");
}

#[test]
fn a_file_written_during_the_backup_fails_it_on_btrfs() {
    file_written_during_backup_case(FsKind::Btrfs);
}

#[test]
fn a_file_written_during_the_backup_fails_it_on_xfs() {
    file_written_during_backup_case(FsKind::Xfs);
}

/// A block device's times do not move: the blocks the backup wrote (and a
/// random share of the rest) are read again and compared.
#[test]
fn a_block_device_written_during_the_backup_fails_it() {
    let fs = require_fs!(FsKind::Btrfs, 700);
    let Some(dev) = TestBlockDevice::new(256) else {
        return;
    };
    let src: PathBuf = dev.path().to_owned();
    fill(&src, 256 * MIB);
    written_during_backup(
        &fs.join("job"),
        &src,
        256 * MIB,
        "blocks read again after the backup differ",
    );
}

// ---------------------------------------------------------------------------
// Bullet: a parent damaged on disk is distrusted and the backup heals in the same run.

fn damaged_parent_case(kind: FsKind) {
    let fs = require_fs!(kind, 400);
    let src = fs.join("src.img");
    let size = 16 * MIB;
    File::create(&src).unwrap().set_len(size).unwrap();
    fill(&src, size);
    let job = fs.join("job");
    init(&job, &src);
    run_ok(backy_job(&job).args(["backup", "daily"]));
    let parent = status_json(&job)[0]["id"].as_str().unwrap().to_string();

    // One 4 KiB page of the parent's image rots on disk; the source changes elsewhere.
    let image = job.join(&parent);
    File::options()
        .write(true)
        .open(&image)
        .unwrap()
        .write_all_at(&pattern_bytes(77, 4096), 37 * 65536 + 4096)
        .unwrap();
    write_at(&src, 3 * MIB, &pattern_bytes(78, 8192));

    let r = run_ok(backy_job(&job).args(["-v", "backup", "daily"]))
        .stderr_has(&format!("Parent {parent} is damaged"))
        .stderr_has("marked it distrusted")
        .stderr_has(&format!("(offsets {})", 37 * 65536))
        .stderr_has("is healed");
    // The only error logged is the re-check of the damaged parent.
    for line in r.stderr.lines().filter(|l| l.contains(" ERROR ")) {
        assert!(line.contains(&format!("Revision {parent}: ")), "{line}");
    }
    let revs = status_json(&job);
    assert_eq!(revs.len(), 2, "{revs:?}");
    assert_eq!(revs[0]["id"], parent.as_str());
    assert_eq!(revs[0]["trust"], "distrusted");
    assert_eq!(revs[1]["complete"], true);
    assert_ne!(revs[1]["trust"], "distrusted");
    let healed = revs[1]["id"].as_str().unwrap().to_string();
    assert_same_content(&job.join(&healed), &src);
    let table = run_ok(backy_job(&job).arg("status")).stdout;
    assert!(table.contains("distrusted"), "{table}");

    // The next backup is a normal one against the healed revision.
    write_at(&src, 9 * MIB, &pattern_bytes(79, 4096));
    let r = run_ok(backy_job(&job).args(["-v", "backup", "daily"]));
    for word in [
        "is damaged",
        "comparing the whole source",
        "has no checksum manifest",
    ] {
        assert!(!r.stderr.contains(word), "{word:?} in {}", r.stderr);
    }
    let revs = status_json(&job);
    assert_eq!(revs.len(), 3, "{revs:?}");
    assert_eq!(revs[1]["id"], healed.as_str());
    assert_ne!(revs[1]["trust"], "distrusted");
    let out = fs.join("restored");
    run_ok(backy_job(&job).args(["restore", "-r", "0"]).arg(&out));
    assert_same_content(&out, &src);
}

#[test]
fn a_damaged_parent_is_distrusted_and_the_backup_heals_on_btrfs() {
    damaged_parent_case(FsKind::Btrfs);
}

#[test]
fn a_damaged_parent_is_distrusted_and_the_backup_heals_on_xfs() {
    damaged_parent_case(FsKind::Xfs);
}
