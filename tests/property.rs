//! Property: random sequences of source changes (writes, zeroing, hole punching,
//! growth, shrinking), each followed by a backup with the real binary on btrfs
//! and XFS; afterwards every revision restores byte-identical to the source as
//! it was at its backup, and `verify` passes.

mod util;

use std::fs::{self, File};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

use proptest::prelude::*;
use util::*;

#[derive(Debug, Clone)]
enum Change {
    Write { offset: u64, len: u64, seed: u64 },
    Zero { offset: u64, len: u64 },
    Punch { offset: u64, len: u64 },
    Resize { size: u64 },
}

fn offset() -> impl Strategy<Value = u64> {
    prop_oneof![
        0u64..3_000_000,
        (0u64..48, -2i64..=2).prop_map(|(b, d)| (b * 65536).saturating_add_signed(d)),
    ]
}

fn change() -> impl Strategy<Value = Change> {
    prop_oneof![
        5 => (offset(), 1u64..400_000, any::<u64>()).prop_map(|(offset, len, seed)| Change::Write { offset, len, seed }),
        2 => (offset(), 1u64..300_000).prop_map(|(offset, len)| Change::Zero { offset, len }),
        2 => (offset(), 1u64..300_000).prop_map(|(offset, len)| Change::Punch { offset, len }),
        1 => (0u64..3_500_000).prop_map(|size| Change::Resize { size }),
    ]
}

fn apply(path: &Path, change: &Change) {
    let f = File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .unwrap();
    let size = f.metadata().unwrap().len();
    match *change {
        Change::Write { offset, len, seed } => f
            .write_all_at(&pattern_bytes(seed, len as usize), offset)
            .unwrap(),
        Change::Zero { offset, len } => {
            let end = (offset + len).min(size);
            if offset < end {
                f.write_all_at(&vec![0; (end - offset) as usize], offset)
                    .unwrap();
            }
        }
        Change::Punch { offset, len } => {
            let r = run(tool("fallocate")
                .args(["-p", "-o", &offset.to_string(), "-l", &len.to_string()])
                .arg(path));
            r.success();
        }
        Change::Resize { size } => f.set_len(size).unwrap(),
    }
    f.sync_all().unwrap();
}

fn check_sequence(fs: &TestFs, changes: &[Change]) -> Result<(), TestCaseError> {
    static CASE: AtomicUsize = AtomicUsize::new(0);
    let dir = fs.join(format!("case{}", CASE.fetch_add(1, Ordering::SeqCst)));
    fs::create_dir(&dir).unwrap();
    let src = dir.join("src.img");
    let job = dir.join("job");
    File::create(&src).unwrap();
    run_ok(backy_job(&job).args(["init", "file"]).arg(&src));
    let mut states = Vec::new();
    for (n, change) in changes.iter().enumerate() {
        apply(&src, change);
        run_ok(backy_job(&job).args(["backup", &format!("step{n}")]));
        states.push(sha256(&src));
    }
    for (n, want) in states.iter().enumerate() {
        let out = dir.join(format!("out{n}"));
        run_ok(
            backy_job(&job)
                .args(["restore", "-r", &format!("step{n}")])
                .arg(&out),
        );
        prop_assert_eq!(
            &sha256(&out),
            want,
            "revision step{} after {:?}",
            n,
            &changes[..=n]
        );
        fs::remove_file(&out).unwrap();
    }
    run_ok(backy_job(&job).arg("verify"));
    fs::remove_dir_all(&dir).unwrap();
    Ok(())
}

fn property(kind: FsKind) {
    let fs = require_fs!(kind, 600);
    let config = ProptestConfig {
        cases: 24,
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    proptest!(config, |(changes in prop::collection::vec(change(), 1..7))| {
        check_sequence(&fs, &changes)?;
    });
}

#[test]
fn every_revision_restores_as_the_source_was_on_btrfs() {
    property(FsKind::Btrfs);
}

#[test]
fn every_revision_restores_as_the_source_was_on_xfs() {
    property(FsKind::Xfs);
}
