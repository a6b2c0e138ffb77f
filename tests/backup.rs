//! The file source end to end: the real binary on real btrfs, XFS, ext4 and tmpfs.

mod util;

use std::fs::{self, File};
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};

use util::*;

const MIB: u64 = 1 << 20;

/// A VM-like image: random data, repetitive data, zero blocks and holes.
fn make_vm_image(path: &Path, size: u64, seed: u64) {
    let file = File::create(path).unwrap();
    file.set_len(size).unwrap();
    let mut at = 0;
    let mut n = seed;
    while at < size {
        let len = MIB.min(size - at);
        match n % 4 {
            0 => {}                                                        // hole
            1 => file.write_all_at(&vec![0u8; len as usize], at).unwrap(), // allocated zeros
            2 => file
                .write_all_at(&pattern_bytes(n, len as usize), at)
                .unwrap(),
            _ => file
                .write_all_at(&b"backy ".repeat(len as usize / 6 + 1)[..len as usize], at)
                .unwrap(),
        }
        n = n
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407)
            >> 7;
        at += len;
    }
}

fn init(job: &Path, src: &Path) {
    run_ok(backy_job(job).args(["init", "file"]).arg(src));
}

fn backup(job: &Path, tags: &str) -> Run {
    run(backy_job(job).args(["backup", tags]))
}

fn status_json(job: &Path) -> Vec<serde_json::Value> {
    let r = run_ok(backy_job(job).args(["status", "--json"]));
    serde_json::from_str(&r.stdout).unwrap_or_else(|e| r.fail(&format!("bad JSON: {e}")))
}

fn newest_id(job: &Path) -> String {
    let revs = status_json(job);
    revs.last().expect("a revision")["id"]
        .as_str()
        .unwrap()
        .to_string()
}

fn restore(job: &Path, spec: &str, target: &Path) {
    run_ok(backy_job(job).args(["restore", "-r", spec]).arg(target));
}

/// 64 KiB writes at 4 KiB-aligned offsets covering about `percent` of `size`.
fn change_percent(path: &Path, size: u64, percent: u64, seed: u64) -> u64 {
    let writes = size * percent / 100 / (64 * 1024);
    let mut changed_pages = std::collections::BTreeSet::new();
    for i in 0..writes {
        let page = (pattern_bytes(seed + i, 8)
            .iter()
            .fold(0u64, |a, &b| a << 8 | b as u64))
            % ((size - 65536) / 4096);
        write_at(path, page * 4096, &pattern_bytes(seed * 1000 + i, 65536));
        changed_pages.extend(page..page + 16);
    }
    changed_pages.len() as u64 * 4096
}

fn sharing_case(kind: FsKind) {
    let fs = require_fs!(kind, 600);
    let src = fs.join("src.img");
    let job = fs.join("job");
    let size = 96 * MIB;
    make_vm_image(&src, size, 7);
    init(&job, &src);
    backup(&job, "daily,weekly").success();
    let first = newest_id(&job);
    let state0 = fs.join("state0");
    fs::copy(&src, &state0).unwrap();

    let changed = change_percent(&src, size, 1, 42);
    backup(&job, "daily").success();
    let second = newest_id(&job);
    run_ok(&mut std::process::Command::new("sync"));

    // Sharing is measured: the new image holds about the changed bytes only.
    let image_excl = exclusive_bytes(&fs, &job.join(&second));
    assert!(
        image_excl <= changed * 12 / 10 + 64 * 1024,
        "{kind}: new revision has {image_excl} exclusive bytes for {changed} changed bytes"
    );
    let sums_excl = exclusive_bytes(&fs, &job.join(format!("{second}.sums")));
    let sums_size = fs::metadata(job.join(format!("{second}.sums")))
        .unwrap()
        .len();
    assert!(
        sums_excl <= (changed / 65536 + 2) * 4096 && sums_excl < sums_size,
        "{kind}: manifest has {sums_excl} exclusive bytes of {sums_size}"
    );
    let revs = status_json(&job);
    let reported = revs[1]["bytes_changed"].as_u64().unwrap();
    assert!(
        reported <= changed && reported >= changed / 2,
        "bytes_changed {reported} vs {changed}"
    );
    assert_eq!(revs[1]["parent"].as_str(), Some(first.as_str()));

    // Every revision restores byte-identical, by number, tag and id prefix.
    let out = fs.join("r");
    restore(&job, "1", &out);
    assert_same_content(&out, &state0);
    fs::remove_file(&out).unwrap();
    restore(&job, "weekly", &out);
    assert_same_content(&out, &state0);
    fs::remove_file(&out).unwrap();
    restore(&job, &second[..8], &out);
    assert_same_content(&out, &src);
    // On the same filesystem the restore is a reflink clone: nothing copied.
    run_ok(&mut std::process::Command::new("sync"));
    assert!(
        exclusive_bytes(&fs, &out) <= 64 * 1024,
        "{kind}: restore copied data instead of cloning"
    );

    // find, last, modes, and the .rev format the original reads.
    let found = run_ok(backy_job(&job).args(["find", "-r", "daily"])).stdout;
    assert_eq!(found.trim(), job.join(&second).to_str().unwrap());
    assert_eq!(
        fs::read_link(job.join("last")).unwrap(),
        PathBuf::from(&second)
    );
    assert_eq!(
        fs::read_link(job.join("last.rev")).unwrap(),
        PathBuf::from(format!("{second}.rev"))
    );
    for name in [
        second.clone(),
        format!("{second}.rev"),
        format!("{second}.sums"),
    ] {
        let mode = fs::metadata(job.join(&name)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o440, "{name}");
    }
    let rev = fs::read_to_string(job.join(format!("{first}.rev"))).unwrap();
    assert!(rev.contains("\nparent: null\n"), "{rev}");
    let ts = rev.lines().find(|l| l.starts_with("timestamp: ")).unwrap();
    assert!(ts.ends_with("+00:00") && !ts.contains(['\'', '"']), "{ts}");

    let table = run_ok(backy_job(&job).arg("status")).stdout;
    // Ids are usually 22 characters, but shortuuid 0.4 (the original's) does not
    // pad, so about one in 50 has 21 and the column is as wide as the longest.
    let w = first.len().max(second.len());
    assert!(
        table.starts_with(&format!("+---------------------+{}+", "-".repeat(w + 2))),
        "{table}"
    );
    assert!(
        table.contains(&format!("| Date (UTC)          | {:<w$} |", "ID")),
        "{table}"
    );
    assert!(
        table.contains(&format!("| {first:<w$} | 96.00 MiB |")),
        "{table}"
    );
    assert!(table.contains("| daily,weekly |"), "{table}");
    assert!(
        table.contains("2 revisions containing 192.00 MiB data (estimated)\n"),
        "{table}"
    );

    // A backup without changes writes nothing.
    backup(&job, "daily").success();
    let revs = status_json(&job);
    assert_eq!(revs[2]["bytes_changed"].as_u64(), Some(0));
}

#[test]
fn backup_restore_and_sharing_on_btrfs() {
    sharing_case(FsKind::Btrfs);
}

#[test]
fn backup_restore_and_sharing_on_xfs() {
    sharing_case(FsKind::Xfs);
}

/// Without reflink, refuse unless copies are allowed, and record it (a silent full
/// copy per revision, as backy 2.1 made when reflink failed, fills the disk).
fn no_reflink_case(kind: FsKind) {
    let fs = require_fs!(kind, 128);
    let src = fs.join("src.img");
    let job = fs.join("job");
    make_vm_image(&src, 8 * MIB, 3);
    init(&job, &src);
    let r = backup(&job, "daily").failure().code(1);
    for needle in [kind.name(), "cannot make reflink copies", "--allow-copy"] {
        if !r.stderr.contains(needle) {
            r.fail(&format!("expected {needle:?} in the refusal"));
        }
    }
    assert!(
        status_json(&job).is_empty(),
        "a refused backup left a revision"
    );
    let mut names: Vec<String> = fs::read_dir(&job)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, [".backup", ".meta", ".purge", "config"]);

    run_ok(backy_job(&job).args(["backup", "daily", "--allow-copy"])).stderr_has("shares no data");
    write_at(&src, 5 * MIB, b"changed");
    // The config key allows it as well.
    let mut config = fs::read_to_string(job.join("config")).unwrap();
    config.push_str("allow-copy: true\n");
    fs::write(job.join("config"), config).unwrap();
    backup(&job, "daily").success();
    let revs = status_json(&job);
    assert_eq!(revs.len(), 2);
    assert!(revs.iter().all(|r| r["reflink"] == false), "{revs:?}");
    let out = fs.join("out");
    restore(&job, "0", &out);
    assert_same_content(&out, &src);
    // The copy is sparse: holes and zero blocks take no space.
    let newest = job.join(newest_id(&job));
    assert!(
        allocated_bytes(&newest) < 8 * MIB * 3 / 4,
        "copy is not sparse"
    );
}

#[test]
fn ext4_refuses_without_reflink_and_allows_sparse_copies() {
    no_reflink_case(FsKind::Ext4);
}

#[test]
fn tmpfs_refuses_without_reflink_and_allows_sparse_copies() {
    no_reflink_case(FsKind::Tmpfs);
}

#[test]
fn block_device_source_and_restore_targets() {
    let fs = require_fs!(FsKind::Btrfs, 256);
    let Some(dev) = TestBlockDevice::new(24) else {
        return;
    };
    let Some(target_dev) = TestBlockDevice::new(32) else {
        return;
    };
    let data = pattern_bytes(9, (3 * MIB) as usize);
    let devfile = fs::OpenOptions::new().write(true).open(dev.path()).unwrap();
    devfile.write_all_at(&data, 5 * MIB + 4096).unwrap();
    devfile.sync_all().unwrap();
    let job = fs.join("job");
    init(&job, dev.path());
    backup(&job, "daily").success();
    let image = job.join(newest_id(&job));
    assert_eq!(fs::metadata(&image).unwrap().len(), 24 * MIB);
    assert_same_content(&image, dev.path());

    // To a block device: written fully, the device keeps its size.
    fs::OpenOptions::new()
        .write(true)
        .open(target_dev.path())
        .unwrap()
        .write_all_at(&[0xAA; 4096], 0)
        .unwrap();
    restore(&job, "0", target_dev.path());
    let mut head = vec![0u8; (24 * MIB) as usize];
    File::open(target_dev.path())
        .unwrap()
        .read_exact_at(&mut head, 0)
        .unwrap();
    assert!(head == fs::read(&image).unwrap(), "device content differs");

    // To stdout: the raw bytes and nothing else.
    let r = run_ok(backy_job(&job).args(["restore", "-"]));
    assert!(
        r.stdout_bytes == fs::read(&image).unwrap(),
        "stdout is not the image"
    );

    // An existing non-empty file needs --force and is untouched without it.
    let target = fs.join("target");
    fs::write(&target, b"precious").unwrap();
    run(backy_job(&job).args(["restore"]).arg(&target))
        .code(1)
        .stderr_has("use --force");
    assert_eq!(fs::read(&target).unwrap(), b"precious");
    run_ok(backy_job(&job).args(["restore", "--force"]).arg(&target));
    assert_same_content(&target, &image);
    run(backy_job(&job).args(["restore"]).arg(fs.path()))
        .code(1)
        .stderr_has("is a directory");
}

#[test]
fn restore_to_another_filesystem_is_sparse() {
    let fs = require_fs!(FsKind::Btrfs, 256);
    let other = require_fs!(FsKind::Ext4, 64);
    let src = fs.join("src.img");
    make_vm_image(&src, 32 * MIB, 11);
    let job = fs.join("job");
    init(&job, &src);
    backup(&job, "daily").success();
    let out = other.join("restored");
    restore(&job, "latest", &out);
    assert_same_content(&out, &src);
    assert!(
        allocated_bytes(&out) <= allocated_bytes(&src),
        "restore is not sparse"
    );
}

#[test]
fn a_second_backup_of_the_same_job_is_refused() {
    let fs = require_fs!(FsKind::Btrfs, 256);
    let src = fs.join("src.img");
    make_vm_image(&src, 4 * MIB, 1);
    let job = fs.join("job");
    init(&job, &src);
    backup(&job, "daily").success();
    // Another process (here: this test) holds the job's backup lock.
    let lock = File::open(job.join(".backup")).unwrap();
    lock.try_lock().unwrap();
    backup(&job, "daily")
        .code(1)
        .stderr_has(&format!("is locked by process {} (", std::process::id()));
    drop(lock);
    backup(&job, "daily").success();
    assert_eq!(status_json(&job).len(), 2);
}

/// Growing and shrinking sources, trailing holes, zero blocks versus
/// unallocated ones, hole/data edges inside a block.
#[test]
fn size_changes_and_hole_edges() {
    let fs = require_fs!(FsKind::Btrfs, 256);
    let src = fs.join("src.img");
    let job = fs.join("job");
    type Step = Box<dyn Fn(&Path)>;
    let steps: Vec<Step> = vec![
        Box::new(|p| {
            write_file(
                p,
                MIB + 123,
                &[(0, &pattern_bytes(1, 70_000)), (MIB, b"tail")],
            )
        }),
        Box::new(|p| {
            File::options()
                .write(true)
                .open(p)
                .unwrap()
                .set_len(3 * MIB)
                .unwrap()
        }),
        Box::new(|p| write_at(p, 2 * MIB + 65536 - 10, &pattern_bytes(2, 20))),
        Box::new(|p| {
            File::options()
                .write(true)
                .open(p)
                .unwrap()
                .set_len(100 * 1024 + 1)
                .unwrap()
        }),
        Box::new(|p| write_at(p, 4096 * 3, &[0u8; 4096 * 5])),
        Box::new(|p| {
            let f = File::options().write(true).open(p).unwrap();
            f.set_len(5 * MIB).unwrap();
            f.write_all_at(b"end", 5 * MIB - 3).unwrap();
        }),
        Box::new(|p| {
            File::options()
                .write(true)
                .open(p)
                .unwrap()
                .set_len(0)
                .unwrap()
        }),
        Box::new(|p| write_at(p, 0, &pattern_bytes(3, 65536 * 2 + 7))),
    ];
    let mut states = Vec::new();
    for (n, step) in steps.iter().enumerate() {
        step(&src);
        if n == 0 {
            init(&job, &src);
        }
        backup(&job, &format!("s{n}")).success();
        let copy = fs.join(format!("state{n}"));
        fs::copy(&src, &copy).unwrap();
        states.push(copy);
    }
    for (n, state) in states.iter().enumerate() {
        let out = fs.join(format!("out{n}"));
        restore(&job, &format!("s{n}"), &out);
        assert_same_content(&out, state);
    }
    run_ok(backy_job(&job).arg("verify"));
}

/// An incomplete revision is invisible to find, latest, tags and
/// numbers; it shows `0 s` in status; the next backup removes it.
#[test]
fn incomplete_revisions_are_invisible_and_removed() {
    let fs = require_fs!(FsKind::Btrfs, 256);
    let src = fs.join("src.img");
    make_vm_image(&src, 4 * MIB, 5);
    let job = fs.join("job");
    init(&job, &src);
    backup(&job, "daily").success();
    let good = newest_id(&job);
    // What a crashed backup leaves: a newer .rev without duration, an image, sums.
    let bad = "ZZZcrashedRevision";
    let text = fs::read_to_string(job.join(format!("{good}.rev"))).unwrap();
    let text: String = text
        .replace(&good, bad)
        .lines()
        .filter(|l| !l.contains("duration"))
        .map(|l| {
            if l.starts_with("timestamp:") {
                "timestamp: 2999-01-01 00:00:00+00:00".to_string()
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    fs::write(job.join(format!("{bad}.rev")), text).unwrap();
    fs::write(job.join(bad), b"partial").unwrap();
    fs::write(job.join(format!("{bad}.sums")), b"partial").unwrap();

    for spec in ["latest", "last", "0", "daily"] {
        let found = run_ok(backy_job(&job).args(["find", "-r", spec])).stdout;
        assert!(found.trim().ends_with(&good), "{spec} found {found}");
    }
    run(backy_job(&job).args(["find", "-r", "ZZZ"]))
        .code(1)
        .stderr_has("no complete revision matches 'ZZZ'");
    run(backy_job(&job).args(["find", "-r", bad]))
        .code(1)
        .stderr_has("incomplete");
    run(backy_job(&job).args(["restore", "-r", bad, "-"]))
        .code(1)
        .stderr_has("incomplete");
    let table = run_ok(backy_job(&job).arg("status")).stdout;
    assert!(
        table.contains(&format!("| {bad} ")) && table.contains("|   0 s |"),
        "{table}"
    );

    backup(&job, "daily")
        .success()
        .stderr_has(&format!("Removed incomplete revision {bad}"));
    for name in [bad.to_string(), format!("{bad}.rev"), format!("{bad}.sums")] {
        assert!(!job.join(&name).exists(), "{name} survived");
    }
    let revs = status_json(&job);
    assert_eq!(revs.len(), 2);
    assert_eq!(revs[1]["parent"].as_str(), Some(good.as_str()));
}

/// A parent without a manifest (made by backy 2.1) is compared by its image.
#[test]
fn parent_without_manifest_is_compared_by_image() {
    let fs = require_fs!(FsKind::Btrfs, 256);
    let src = fs.join("src.img");
    make_vm_image(&src, 8 * MIB, 8);
    let job = fs.join("job");
    init(&job, &src);
    backup(&job, "daily").success();
    let first = newest_id(&job);
    fs::remove_file(job.join(format!("{first}.sums"))).unwrap();
    change_percent(&src, 8 * MIB, 2, 5);
    backup(&job, "daily")
        .success()
        .stderr_has("has no checksum manifest");
    let second = newest_id(&job);
    assert!(job.join(format!("{second}.sums")).exists());
    let out = fs.join("out");
    restore(&job, "0", &out);
    assert_same_content(&out, &src);
    run_ok(backy_job(&job).args(["verify", "-r", "0"]));
    run(backy_job(&job).args(["verify", "-r", "1"]))
        .code(1)
        .stderr_has("can only be checked against its source");
}

/// `verify` finds a corrupted block, distrusts the revision, and the next
/// backup compares the whole source instead of trusting its checksums.
#[test]
fn verify_detects_corruption_and_distrust_forces_full_compare() {
    let fs = require_fs!(FsKind::Btrfs, 256);
    let src = fs.join("src.img");
    make_vm_image(&src, 8 * MIB, 2);
    let job = fs.join("job");
    init(&job, &src);
    backup(&job, "daily").success();
    let id = newest_id(&job);
    run_ok(backy_job(&job).arg("verify"));
    assert_eq!(status_json(&job)[0]["trust"], "verified");
    let image = job.join(&id);
    fs::set_permissions(&image, fs::Permissions::from_mode(0o640)).unwrap();
    File::options()
        .write(true)
        .open(&image)
        .unwrap()
        .write_all_at(b"bitrot", 3 * 65536 + 5)
        .unwrap();
    run(backy_job(&job).arg("verify"))
        .code(1)
        .stderr_has(&format!("{}", 3 * 65536))
        .stderr_has("distrusted");
    assert_eq!(status_json(&job)[0]["trust"], "distrusted");
    assert!(
        run_ok(backy_job(&job).arg("status"))
            .stdout
            .contains("| distrusted |")
    );
    backup(&job, "daily")
        .success()
        .stderr_has("is distrusted")
        .stderr_has("stays distrusted");
    assert_eq!(status_json(&job)[0]["trust"], "distrusted");
    let out = fs.join("out");
    restore(&job, "0", &out);
    assert_same_content(&out, &src);
}

/// A manifest from a future format version is not trusted blindly.
#[test]
fn manifest_of_unknown_version_is_not_trusted() {
    let fs = require_fs!(FsKind::Btrfs, 256);
    let src = fs.join("src.img");
    make_vm_image(&src, 4 * MIB, 4);
    let job = fs.join("job");
    init(&job, &src);
    backup(&job, "daily").success();
    let id = newest_id(&job);
    let sums = job.join(format!("{id}.sums"));
    fs::set_permissions(&sums, fs::Permissions::from_mode(0o640)).unwrap();
    File::options()
        .write(true)
        .open(&sums)
        .unwrap()
        .write_all_at(&99u32.to_le_bytes(), 8)
        .unwrap();
    run(backy_job(&job).args(["verify", "-r", &id]))
        .code(1)
        .stderr_has("format version 99 is not supported");
    write_at(&src, 65536, b"new");
    backup(&job, "daily")
        .success()
        .stderr_has("format version 99");
    let out = fs.join("out");
    restore(&job, "0", &out);
    assert_same_content(&out, &src);
}

#[test]
fn log_file_gets_argv_and_outcome_and_is_reopened_after_rotation() {
    let fs = require_fs!(FsKind::Btrfs, 256);
    let src = fs.join("src.img");
    make_vm_image(&src, 2 * MIB, 4);
    let job = fs.join("job");
    let log = fs.join("backy.log");
    init(&job, &src);
    let r = run_ok(
        backy_job(&job)
            .arg("-l")
            .arg(&log)
            .args(["backup", "daily"]),
    );
    assert!(r.stdout.is_empty() && r.stderr.is_empty(), "{r:?}");
    fs::rename(&log, fs.join("backy.log.1")).unwrap();
    run_ok(
        backy_job(&job)
            .arg("-l")
            .arg(&log)
            .args(["backup", "daily"]),
    );
    let line_re =
        regex::Regex::new(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d \[\d+\] (INFO|WARN|DEBUG|ERROR) ")
            .unwrap();
    for path in [log.clone(), fs.join("backy.log.1")] {
        let text = fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines.iter().all(|l| line_re.is_match(l)), "{text}");
        assert!(
            lines[0].contains(" $ ") && lines[0].contains("backup daily"),
            "{text}"
        );
        assert!(
            lines.last().unwrap().ends_with("Backy operation complete."),
            "{text}"
        );
        assert_eq!(text.matches("$ ").count(), 1, "{text}");
    }
    run(backy_job(&job)
        .arg("-l")
        .arg(&log)
        .args(["find", "-r", "nope"]))
    .code(1);
    let text = fs::read_to_string(&log).unwrap();
    assert!(
        text.trim_end().ends_with("Backy operation failed."),
        "{text}"
    );
}

/// A progress bar on a terminal (here a pty from `script`), plain log lines
/// otherwise.
#[test]
fn progress_bar_only_on_a_terminal() {
    let fs = require_fs!(FsKind::Btrfs, 256);
    let src = fs.join("src.img");
    make_vm_image(&src, 64 * MIB, 9);
    let job = fs.join("job");
    init(&job, &src);
    let r = backup(&job, "daily").success();
    assert!(
        !r.stderr.contains('\u{1b}'),
        "escape codes without a terminal: {}",
        r.stderr
    );
    let Some(script) = find_tool("script") else {
        let _: Option<()> = skip("`script` (util-linux) is needed for a pty");
        return;
    };
    let inner = format!(
        "{} -b {} restore -r 0 - > /dev/null",
        env!("CARGO_BIN_EXE_backy"),
        job.display()
    );
    let r = run_ok(std::process::Command::new(script).args(["-qec", &inner, "/dev/null"]));
    assert!(
        r.stdout.contains("restore") && r.stdout.contains("=>"),
        "no progress bar on the pty: {:?}",
        r.stdout
    );
}

/// A write that lands garbled (a bad disk, a filesystem bug; injected here) is
/// caught by the verification that reads the image back beside the patch: the
/// backup exits 1 naming the block, leaves no revision behind, and the earlier
/// revision and the next backup are fine.
#[test]
fn a_garbled_write_fails_verification_and_leaves_no_revision() {
    let fs = require_fs!(FsKind::Btrfs, 256);
    let src = fs.join("src.img");
    make_vm_image(&src, 8 * MIB, 3);
    let job = fs.join("job");
    init(&job, &src);
    backup(&job, "daily").success();
    let first = newest_id(&job);
    write_at(&src, 5 * 65536 + 100, b"changed");
    run(backy_job(&job)
        .args(["backup", "daily"])
        .env("BACKY_FAILPOINT", "garble-write"))
    .code(1)
    .stderr_has(&format!("offsets {}", 5 * 65536));
    let revs = status_json(&job);
    assert_eq!(revs.len(), 1, "{revs:?}");
    assert_eq!(revs[0]["id"], first.as_str());
    let out = fs.join("out");
    backup(&job, "daily").success();
    restore(&job, "0", &out);
    assert_same_content(&out, &src);
}
