//! Self-test of the Ceph part of the harness (`tests/util/ceph.rs`,
//! `scripts/ceph-cluster.sh`): a real cluster starts, librbd writes exact
//! bytes, snapshots and `rbd export-diff` behave as the ceph-rbd source
//! assumes, clusters run side by side, and nothing is left behind.

mod util;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use util::ceph::{RbdOp, TestCeph};

const MIB: u64 = 1 << 20;
const KIB: u64 = 1 << 10;

/// Whether `pid` is a live process (zombies count as gone).
fn running(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(") ").map(|(_, rest)| rest.to_owned()))
        .is_some_and(|rest| !rest.starts_with(['Z', 'X']))
}

/// The pids in `dir/pids` (mon.a, osd.0, watchdog).
fn cluster_pids(dir: &Path) -> Vec<(String, u32)> {
    ["mon.a", "osd.0", "watchdog"]
        .iter()
        .map(|name| {
            let text = fs::read_to_string(dir.join("pids").join(name))
                .unwrap_or_else(|e| panic!("read pid file {name}: {e}"));
            ((*name).to_owned(), text.trim().parse().expect("pid"))
        })
        .collect()
}

/// Wait up to `limit` for `done`; returns whether it came true.
fn wait_for(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if done() {
            return true;
        }
        thread::sleep(Duration::from_millis(50));
    }
    done()
}

/// The mon's `127.0.0.1:PORT` from the cluster's config.
fn mon_host(conf: &Path) -> String {
    let text = fs::read_to_string(conf).expect("read ceph.conf");
    text.lines()
        .find_map(|l| l.strip_prefix("mon host = "))
        .expect("mon host in ceph.conf")
        .to_owned()
}

/// Expect the v1 header of `rbd export-diff`: banner, then `f` (when
/// `from`) and `t` records naming the snapshots.
#[track_caller]
fn assert_diff_header(diff: &[u8], from: Option<&str>, to: &str) {
    let mut expected = b"rbd diff v1\n".to_vec();
    for (tag, name) in from.map(|f| (b'f', f)).into_iter().chain([(b't', to)]) {
        expected.push(tag);
        expected.extend_from_slice(&(name.len() as u32).to_le_bytes());
        expected.extend_from_slice(name.as_bytes());
    }
    assert!(
        diff.starts_with(&expected),
        "diff starts with {:?}, expected {:?}",
        String::from_utf8_lossy(&diff[..expected.len().min(diff.len())]),
        String::from_utf8_lossy(&expected)
    );
    assert_eq!(diff.last(), Some(&b'e'), "diff must end with an `e` record");
}

/// The sample sequence of `samples/rbd-diff` on image `name` (16 MiB):
/// returns the expected raw content at s1 and at s2.
fn write_sample_history(ceph: &TestCeph, name: &str) -> (Vec<u8>, Vec<u8>) {
    let a = vec![b'A'; 4096];
    let b = vec![b'B'; 512];
    let c = util::pattern_bytes(3, 8192);
    let d = vec![b'D'; 4096];
    let e = vec![b'E'; 100];
    let mut image = vec![0u8; (16 * MIB) as usize];
    let put = |image: &mut Vec<u8>, offset: u64, data: &[u8]| {
        image[offset as usize..offset as usize + data.len()].copy_from_slice(data);
    };

    ceph.create_image(name, 16);
    ceph.write_ops(
        name,
        &[
            RbdOp::Write(0, &a),
            RbdOp::Write(4 * MIB + 1000, &b),
            RbdOp::Write(12 * MIB, &c),
        ],
    );
    put(&mut image, 0, &a);
    put(&mut image, 4 * MIB + 1000, &b);
    put(&mut image, 12 * MIB, &c);
    ceph.snap_create(name, "s1");
    let s1 = image.clone();

    ceph.write(name, 4096, &d);
    ceph.write_zeroes(name, 12 * MIB, 8192);
    ceph.write(name, 8 * MIB + 5, &e);
    put(&mut image, 4096, &d);
    put(&mut image, 12 * MIB, &[0; 8192]);
    put(&mut image, 8 * MIB + 5, &e);
    ceph.snap_create(name, "s2");
    (s1, image)
}

#[test]
fn images_snapshots_and_diffs() {
    let ceph = require_ceph!();
    let t0 = Instant::now();
    let tmp = tempfile::tempdir().unwrap();
    let (s1, s2) = write_sample_history(&ceph, "small");
    assert_eq!(ceph.snap_ls("small"), ["s1", "s2"]);

    // Exports are the bytes written, also for the unaligned write.
    for (snap, expected) in [("s1", &s1), ("s2", &s2)] {
        let path = tmp.path().join(format!("{snap}.raw"));
        ceph.export(&format!("small@{snap}"), &path);
        assert!(
            fs::read(&path).unwrap() == *expected,
            "export of @{snap} differs"
        );
    }
    let at = 4 * MIB + 990; // across the start of the unaligned write
    assert_eq!(
        ceph.read("small@s1", at, 30),
        s1[at as usize..at as usize + 30]
    );
    assert_eq!(ceph.read("small", 0, 2 * 4096), s2[..8192]);

    // Diffs: header records name the snapshots, the stream ends with `e`;
    // the zeroed object comes as a `z` record.
    let diff_path = tmp.path().join("s1-s2.diff");
    ceph.export_diff("small@s2", Some("s1"), &diff_path);
    let diff = fs::read(&diff_path).unwrap();
    assert_diff_header(&diff, Some("s1"), "s2");
    let mut zero_record = vec![b'z'];
    zero_record.extend_from_slice(&(12 * MIB).to_le_bytes());
    assert!(
        diff.windows(9).any(|w| w == &zero_record[..9]),
        "expected a `z` record at 12 MiB"
    );
    let full_path = tmp.path().join("full-s1.diff");
    ceph.export_diff("small@s1", None, &full_path);
    assert_diff_header(&fs::read(&full_path).unwrap(), None, "s1");

    // Streaming to stdout works the same (what the ceph-rbd source does).
    let r = util::run_ok(ceph.rbd().args([
        "export-diff",
        "--from-snap",
        "s1",
        &ceph.spec("small@s2"),
        "-",
    ]));
    assert!(
        r.stdout_bytes == diff,
        "export-diff to stdout differs from the file"
    );

    // Protected snapshots cannot be removed.
    ceph.snap_protect("small", "s1");
    util::run(ceph.rbd().args(["snap", "rm", &ceph.spec("small@s1")]))
        .failure()
        .stderr_has("protected");
    ceph.snap_unprotect("small", "s1");
    ceph.snap_rm("small", "s1");
    assert_eq!(ceph.snap_ls("small"), ["s2"]);

    // Resize to an odd size: grow, then shrink.
    ceph.resize("small", 20 * MIB + 1);
    let grown = tmp.path().join("grown.raw");
    ceph.export("small", &grown);
    assert_eq!(fs::metadata(&grown).unwrap().len(), 20 * MIB + 1);
    ceph.resize("small", 6 * MIB - 512);
    let shrunk = tmp.path().join("shrunk.raw");
    ceph.export("small", &shrunk);
    assert!(fs::read(&shrunk).unwrap() == s2[..(6 * MIB - 512) as usize]);

    // A missing snapshot is an error (how the source sees "no parent snapshot").
    util::run(ceph.rbd().args(["info", &ceph.spec("small@nope")])).failure();
    eprintln!(
        "images_snapshots_and_diffs: {:.1} s of rbd work",
        t0.elapsed().as_secs_f64()
    );
}

/// Two clusters at once in one process: each starts, gets its own ports,
/// and sees only its own images.
#[test]
fn two_clusters_in_parallel() {
    let t0 = Instant::now();
    let starts: Vec<_> = (0..2).map(|_| thread::spawn(TestCeph::start)).collect();
    let clusters: Vec<TestCeph> = match starts
        .into_iter()
        .map(|h| h.join().expect("start thread"))
        .collect::<Option<Vec<_>>>()
    {
        Some(c) => c,
        None => return, // skipped (the reason is printed)
    };
    eprintln!("two clusters up in {:.1} s", t0.elapsed().as_secs_f64());
    let (a, b) = (&clusters[0], &clusters[1]);
    assert_ne!(mon_host(a.conf()), mon_host(b.conf()));

    thread::scope(|s| {
        for (i, ceph) in clusters.iter().enumerate() {
            s.spawn(move || {
                let name = format!("vm{i}");
                let data = util::pattern_bytes(i as u64, (256 * KIB) as usize);
                ceph.create_image(&name, 8);
                ceph.write(&name, MIB + 7, &data);
                ceph.snap_create(&name, "s");
                assert_eq!(ceph.read(&format!("{name}@s"), MIB + 7, 256 * KIB), data);
            });
        }
    });
    let list = |ceph: &TestCeph| util::run_ok(ceph.rbd().args(["ls", "rbd"])).stdout;
    assert_eq!(list(a).trim(), "vm0");
    assert_eq!(list(b).trim(), "vm1");

    let t1 = Instant::now();
    drop(clusters);
    eprintln!(
        "two clusters stopped in {:.2} s",
        t1.elapsed().as_secs_f64()
    );
}

/// Drop kills the daemons and the watchdog and removes the directory.
#[test]
fn drop_leaves_nothing_behind() {
    let ceph = require_ceph!();
    let dir = ceph.dir().to_owned();
    let pids = cluster_pids(&dir);
    for (name, pid) in &pids {
        assert!(running(*pid), "{name} ({pid}) should run");
    }
    let t0 = Instant::now();
    drop(ceph);
    eprintln!("cluster stopped in {:.2} s", t0.elapsed().as_secs_f64());
    assert!(!dir.exists(), "{} should be gone", dir.display());
    for (name, pid) in &pids {
        assert!(
            wait_for(Duration::from_secs(5), || !running(*pid)),
            "{name} ({pid}) still runs"
        );
    }
}

/// A test process that dies without dropping its cluster: the watchdog
/// kills the daemons and removes what the script made, leaving no directory.
/// Also when the directory is deleted under a running cluster.
#[test]
fn watchdog_cleans_up_after_a_dead_test() {
    // Gate on a working cluster (root, packages) like every Ceph test.
    let _gate = require_ceph!();
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/ceph-cluster.sh");

    // The watched process exits. It is a `cat` on a pipe from us, so it
    // ends with this test process even if the test dies here.
    let mut stand_in = Command::new("cat")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let dir = tempfile::Builder::new()
        .prefix("backy-test-ceph-")
        .tempdir()
        .unwrap()
        .keep();
    util::run_ok(
        Command::new(&script)
            .arg("start")
            .arg(&dir)
            .arg(stand_in.id().to_string()),
    );
    let pids = cluster_pids(&dir);
    drop(stand_in.stdin.take());
    stand_in.wait().unwrap();
    assert!(
        wait_for(Duration::from_secs(10), || !dir.exists()),
        "{} should be removed",
        dir.display()
    );
    for (name, pid) in &pids {
        assert!(!running(*pid), "{name} ({pid}) still runs");
    }

    // The directory disappears under the cluster (which also watches this
    // process, so that it goes away should the test die here).
    let dir = tempfile::Builder::new()
        .prefix("backy-test-ceph-")
        .tempdir()
        .unwrap();
    util::run_ok(
        Command::new(&script)
            .arg("start")
            .arg(dir.path())
            .arg(std::process::id().to_string()),
    );
    let pids = cluster_pids(dir.path());
    drop(dir);
    for (name, pid) in &pids {
        assert!(
            wait_for(Duration::from_secs(10), || !running(*pid)),
            "{name} ({pid}) still runs"
        );
    }
}
