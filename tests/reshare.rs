//! `backy reshare` after a plain copy: the real binary on btrfs and XFS, a job
//! made by real backups, copied with `rsync -a` to a second filesystem.

mod util;

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::Path;

use util::*;

const MIB: u64 = 1 << 20;
const BLOCK: u64 = 64 << 10;

/// A small deterministic generator (the tests need no real randomness).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 17
    }
}

/// A VM-like source: data, allocated zeros and holes, one MiB at a time.
fn make_source(path: &Path, size: u64) {
    let file = File::create(path).unwrap();
    file.set_len(size).unwrap();
    for (n, at) in (0..size).step_by(MIB as usize).enumerate() {
        match n % 4 {
            0 => {}
            1 => file.write_all_at(&vec![0; MIB as usize], at).unwrap(),
            _ => file
                .write_all_at(&pattern_bytes(n as u64, MIB as usize), at)
                .unwrap(),
        }
    }
}

/// What a guest does between two backups: a few writes of 4 KiB to 192 KiB,
/// and now and then a zeroed range.
fn change_source(path: &Path, size: u64, rng: &mut Lcg) {
    let file = fs::OpenOptions::new().write(true).open(path).unwrap();
    for _ in 0..6 {
        let len = 4096 * (1 + rng.next() % 48);
        let at = (rng.next() % (size - len)) / 4096 * 4096;
        let data = if rng.next().is_multiple_of(5) {
            vec![0; len as usize]
        } else {
            pattern_bytes(rng.next(), len as usize)
        };
        file.write_all_at(&data, at).unwrap();
    }
}

/// sha256 of every image and manifest of a job, by file name (`.rev` files
/// are not compared: `verify` rewrites them).
fn contents(job: &Path) -> BTreeMap<String, String> {
    fs::read_dir(job)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let name = p.file_name().unwrap().to_str().unwrap();
            let meta = fs::symlink_metadata(p).unwrap();
            meta.is_file()
                && !name.starts_with('.')
                && !name.ends_with(".rev")
                && !["config", "backy.log"].contains(&name)
        })
        .map(|p| {
            (
                p.file_name().unwrap().to_str().unwrap().to_string(),
                sha256(&p),
            )
        })
        .collect()
}

/// A job of `revisions` backups of a `size`-byte source on `fs`.
fn make_job(fs: &TestFs, size: u64, revisions: usize) -> std::path::PathBuf {
    let src = fs.join("source.img");
    make_source(&src, size);
    let job = fs.join("job");
    run_ok(backy_job(&job).args(["init", "file"]).arg(&src));
    let mut rng = Lcg(7);
    for n in 0..revisions {
        if n > 0 {
            change_source(&src, size, &mut rng);
        }
        run_ok(backy_job(&job).args(["backup", "daily"]));
    }
    job
}

/// Bytes the filesystem holding `path` uses (statvfs, after a sync).
fn used_bytes(path: &Path) -> u64 {
    let r = run_ok(tool("sync").arg("-f").arg(path));
    drop(r);
    let r = run_ok(tool("df").args(["-B1", "--output=used"]).arg(path));
    r.stdout
        .lines()
        .nth(1)
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or_else(|| r.fail("cannot parse df"))
}

fn rsync(from: &Path, to: &Path) -> Option<()> {
    if find_tool("rsync").is_none() {
        return skip("`rsync` not found (run scripts/setup-test-deps.sh)");
    }
    let mut src = from.as_os_str().to_owned();
    src.push("/");
    run_ok(tool("rsync").arg("-a").arg(src).arg(to));
    Some(())
}

/// The test: 20 revisions copied with `rsync -a` take about 20 times
/// the space; `reshare` brings them within 5 % of the source job's physical
/// bytes, changes no file's content, keeps the images 0440, and a second run
/// finds everything shared.
fn rsync_copy_is_reshared(kind: FsKind) {
    let Some(src_fs) = TestFs::new(kind, 400) else {
        return;
    };
    let Some(dst_fs) = TestFs::new(kind, 1024) else {
        return;
    };
    let size = 24 * MIB;
    let job = make_job(&src_fs, size, 20);
    let before = contents(&job);
    let source_bytes = physical_bytes(&job);

    let copy = dst_fs.join("job");
    let used_empty = used_bytes(dst_fs.path());
    if rsync(&job, &copy).is_none() {
        return;
    }
    let copied_bytes = physical_bytes(&copy);
    assert!(
        copied_bytes > 10 * source_bytes,
        "the copy shares nothing: {copied_bytes} vs {source_bytes}"
    );

    let r = run_ok(backy_job(&copy).arg("reshare")).stdout_has("Reshared 20 revisions");
    let reshared_bytes = physical_bytes(&copy);
    // The filesystem really freed the copy's extents (btrfs keeps an extent
    // while any part of it is referenced: reshare's step 5).
    let reshared_used = used_bytes(dst_fs.path()) - used_empty;
    eprintln!(
        "{kind}: source job {source_bytes}, rsync copy {copied_bytes}, after reshare {reshared_bytes} (df: {reshared_used} used)"
    );
    assert!(
        reshared_used < source_bytes * 12 / 10 + 8 * MIB,
        "df says {reshared_used} bytes used after reshare, the source job has {source_bytes}"
    );
    assert!(
        reshared_bytes * 100 <= source_bytes * 105,
        "after reshare {reshared_bytes} bytes, the source job has {source_bytes}\n{}",
        r.stdout
    );
    // The free space it reports as reclaimed waited for the filesystem to
    // count the freed extents (XFS frees them in a background worker).
    assert!(
        !r.stdout.contains("; 0 Bytes reclaimed"),
        "reshare freed the copy's extents but reported nothing reclaimed: {}",
        r.stdout
    );
    assert_eq!(contents(&copy), before, "reshare changed content");
    assert_eq!(before.len(), 40, "20 images and 20 manifests: {before:?}");
    for (name, _) in before.iter().filter(|(n, _)| !n.contains('.')) {
        let mode = fs::metadata(copy.join(name)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o440, "{name}");
    }
    run_ok(backy_job(&copy).arg("verify"));

    // A second run has nothing left to share.
    run_ok(backy_job(&copy).arg("reshare")).stdout_has("0 Bytes shared again in 0 ranges");
    assert_eq!(contents(&copy), before);
}

#[test]
fn rsync_copy_is_reshared_on_btrfs() {
    rsync_copy_is_reshared(FsKind::Btrfs);
}

#[test]
fn rsync_copy_is_reshared_on_xfs() {
    rsync_copy_is_reshared(FsKind::Xfs);
}

/// Manifests that lie can never merge different data: a block claimed equal to
/// the parent's and a block claimed zero keep their bytes; the run says so.
#[test]
fn a_lying_manifest_never_changes_content() {
    let Some(fs) = TestFs::new(FsKind::Btrfs, 256) else {
        return;
    };
    let job = make_job(&fs, 4 * MIB, 2);
    let copy = fs.join("copy");
    run_ok(
        tool("cp")
            .args(["-a", "--reflink=never"])
            .arg(&job)
            .arg(&copy),
    );
    let revs: Vec<String> = {
        let r = run_ok(backy_job(&copy).args(["status", "--json"]));
        let v: Vec<serde_json::Value> = serde_json::from_str(&r.stdout).unwrap();
        v.iter()
            .map(|r| r["id"].as_str().unwrap().to_string())
            .collect()
    };
    let (parent, child) = (&revs[0], &revs[1]);
    // Block 2 (data, 2..3 MiB is a pattern) gets different bytes in the child
    // while the child's manifest goes on calling it equal to the parent's;
    // block 40 (2.5 MiB, data) is declared zero.
    let image = copy.join(child);
    fs::set_permissions(&image, fs::Permissions::from_mode(0o640)).unwrap();
    let f = fs::OpenOptions::new().write(true).open(&image).unwrap();
    f.write_all_at(b"different", 2 * MIB + 100).unwrap();
    drop(f);
    let sums = copy.join(format!("{child}.sums"));
    fs::set_permissions(&sums, fs::Permissions::from_mode(0o640)).unwrap();
    let m = fs::OpenOptions::new().write(true).open(&sums).unwrap();
    let digest_at = |block: u64| 4096 + 32 * block;
    let mut parent_digest = [0u8; 32];
    File::open(copy.join(format!("{parent}.sums")))
        .unwrap()
        .read_exact_at(&mut parent_digest, digest_at(2 * MIB / BLOCK))
        .unwrap();
    m.write_all_at(&parent_digest, digest_at(2 * MIB / BLOCK))
        .unwrap();
    m.write_all_at(&[0; 32], digest_at(40)).unwrap();
    drop(m);
    let before = contents(&copy);

    run_ok(backy_job(&copy).arg("reshare"))
        .stderr_has("differ from its base")
        .stderr_has("are not zero although its manifest says so");
    assert_eq!(contents(&copy), before, "reshare changed content");
}

/// Killed in the middle (after its first FIDEDUPERANGE), reshare leaves every
/// file's content as it was, and the next run finishes the job: on btrfs
/// that includes freeing the copy's extents, which the first run had begun
/// (and its temporary file is removed).
fn an_interrupted_reshare_changes_nothing_and_can_run_again(kind: FsKind) {
    let Some(src_fs) = TestFs::new(kind, 400) else {
        return;
    };
    let Some(fs) = TestFs::new(kind, 400) else {
        return;
    };
    let job = make_job(&src_fs, 16 * MIB, 4);
    let before = contents(&job);
    let source_bytes = physical_bytes(&job);
    let copy = fs.join("copy");
    let used_empty = used_bytes(fs.path());
    if rsync(&job, &copy).is_none() {
        return;
    }
    let r = run(backy_job(&copy)
        .arg("reshare")
        .env("BACKY_FAILPOINT", "reshare-after-dedupe"));
    assert!(!r.status.success(), "the failpoint aborts");
    assert_eq!(contents(&copy), before);
    run_ok(backy_job(&copy).arg("reshare")).stdout_has("Reshared 4 revisions");
    assert_eq!(contents(&copy), before);
    let leftovers: Vec<_> = fs::read_dir(&copy)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with(".reshare."))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    let used = used_bytes(fs.path()) - used_empty;
    eprintln!(
        "{kind}: source job {source_bytes}, copy after an interrupted and a full reshare: {used} used"
    );
    assert!(
        used < source_bytes * 12 / 10 + 8 * MIB,
        "df says {used} bytes used, the source job has {source_bytes}"
    );
    run_ok(backy_job(&copy).arg("verify"));
}

#[test]
fn an_interrupted_reshare_changes_nothing_and_can_run_again_on_btrfs() {
    an_interrupted_reshare_changes_nothing_and_can_run_again(FsKind::Btrfs);
}

#[test]
fn an_interrupted_reshare_changes_nothing_and_can_run_again_on_xfs() {
    an_interrupted_reshare_changes_nothing_and_can_run_again(FsKind::Xfs);
}

/// Where the filesystem cannot share extents, reshare says so.
#[test]
fn ext4_is_refused_with_a_clear_message() {
    let Some(fs) = TestFs::new(FsKind::Btrfs, 256) else {
        return;
    };
    let Some(ext4) = TestFs::new(FsKind::Ext4, 64) else {
        return;
    };
    let job = make_job(&fs, 2 * MIB, 2);
    let copy = ext4.join("job");
    run_ok(tool("cp").arg("-a").arg(&job).arg(&copy));
    run(backy_job(&copy).arg("reshare"))
        .failure()
        .stderr_has("reshare needs btrfs or XFS");
}
