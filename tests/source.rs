//! The file source under an operator's feet (issue 9): sources written during a
//! backup, parents damaged on disk, huge sparse sources. The real binary on
//! loop-mounted btrfs and XFS.

mod util;

use std::fs::{self, File};
use std::os::unix::fs::FileExt;
use std::path::Path;

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

    // And `verify` afterwards still checks every block (holes included).
    run_ok(backy_job(&job).arg("verify"));
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
