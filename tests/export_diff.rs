//! `backy export-diff` into `rbd import-diff` on a real throw-away Ceph
//! cluster: forwards onto an imported revision, backwards on a ceph-rbd job's
//! own image after a rollback to its kept snapshot, and a full diff into an
//! empty image.

mod util;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use util::ceph::{RbdOp, TestCeph};
use util::*;

const MIB: u64 = 1 << 20;

struct Setup {
    ceph: TestCeph,
    fs: TestFs,
    job: PathBuf,
}

impl Setup {
    fn backy(&self) -> Command {
        let mut cmd = backy_job(&self.job);
        self.ceph.env(&mut cmd);
        cmd
    }

    fn backup(&self) -> String {
        run_ok(self.backy().args(["backup", "daily"]));
        let r = run_ok(self.backy().args(["status", "--json"]));
        let revs: Vec<serde_json::Value> = serde_json::from_str(&r.stdout).unwrap();
        revs.last().unwrap()["id"].as_str().unwrap().to_string()
    }

    fn restore(&self, id: &str) -> PathBuf {
        let path = self.fs.join(format!("{id}.restored"));
        run_ok(self.backy().args(["restore", "-r", id]).arg(&path));
        path
    }

    /// `backy export-diff ARGS | rbd import-diff - POOL/image`, through a real
    /// pipe; returns the length of the stream (from a second run into a file).
    fn export_import(&self, args: &[&str], image: &str) -> u64 {
        let mut producer = self
            .backy()
            .arg("export-diff")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stream = producer.stdout.take().unwrap();
        let import = self
            .ceph
            .rbd()
            .args(["import-diff", "--no-progress", "-", &self.ceph.spec(image)])
            .stdin(stream)
            .output()
            .unwrap();
        let export = producer.wait_with_output().unwrap();
        assert!(
            export.status.success() && import.status.success(),
            "export-diff {args:?} | rbd import-diff failed:\n{}\n{}",
            String::from_utf8_lossy(&export.stderr),
            String::from_utf8_lossy(&import.stderr)
        );
        let file = self.fs.join("stream.diff");
        let status = self
            .backy()
            .arg("export-diff")
            .args(args)
            .stdout(fs::File::create(&file).unwrap())
            .status()
            .unwrap();
        assert!(status.success());
        let len = fs::metadata(&file).unwrap().len();
        eprintln!("export-diff {args:?} into {image}: a stream of {len} bytes");
        len
    }

    /// `rbd export` of `image` equals the file `want`.
    fn assert_image_is(&self, image: &str, want: &Path) {
        let got = self.fs.join(format!("{image}.exported"));
        let _ = fs::remove_file(&got);
        self.ceph.export(image, &got);
        assert_same_content(&got, want);
    }
}

/// The issue's test: forwards, backwards and full, each image afterwards
/// `rbd export`-equal to the revision, moving only what differs.
#[test]
fn export_diff_takes_an_rbd_image_to_another_revision() {
    let Some(ceph) = TestCeph::start() else {
        return;
    };
    let Some(fs) = TestFs::new(FsKind::Btrfs, 1024) else {
        return;
    };
    ceph.create_image("img", 32);
    ceph.write_ops(
        "img",
        &[
            RbdOp::Write(0, &pattern_bytes(1, MIB as usize)),
            RbdOp::Write(10 * MIB + 1000, &pattern_bytes(2, 300_000)),
            RbdOp::Write(20 * MIB, &[b'x'; 4 * MIB as usize]),
            RbdOp::Write(31 * MIB, &pattern_bytes(3, MIB as usize)),
        ],
    );
    let job = fs.join("job");
    let s = Setup { ceph, fs, job };
    run_ok(s.backy().args(["init", "ceph-rbd", "rbd/img"]));
    let a = s.backup();
    s.ceph.write_ops(
        "img",
        &[
            RbdOp::Write(5 * MIB + 7, &pattern_bytes(9, 70_000)),
            RbdOp::Zero(20 * MIB, 4 * MIB),
        ],
    );
    let b = s.backup();
    s.ceph.resize("img", 40 * MIB + 4096);
    s.ceph
        .write("img", 39 * MIB, &pattern_bytes(4, MIB as usize));
    s.ceph.write("img", 100, b"newest");
    let c = s.backup();
    let (a_img, b_img, c_img) = (s.restore(&a), s.restore(&b), s.restore(&c));

    // Forwards: an image holding A (with its snapshot) becomes C; only the
    // changed blocks travel, not the 40 MiB.
    run_ok(
        s.ceph
            .rbd()
            .args(["import", "--no-progress"])
            .arg(&a_img)
            .arg(s.ceph.spec("fwd")),
    );
    s.ceph.snap_create("fwd", &format!("backy-{a}"));
    let sent = s.export_import(&["-r", &c, "--from", &a], "fwd");
    assert!(sent < 8 * MIB, "forward diff of {sent} bytes");
    s.assert_image_is("fwd", &c_img);
    assert!(s.ceph.snap_ls("fwd").contains(&format!("backy-{c}")));

    // Backwards on the job's own image: the VM went on writing, the operator
    // rolls back to the kept snapshot of the newest revision, and the diff
    // takes it back to A (shrinking it again).
    assert_eq!(
        s.ceph.snap_ls("img"),
        vec![format!("backy-{c}")],
        "the job keeps the newest snapshot"
    );
    s.ceph
        .write("img", 2 * MIB, b"written after the last backup");
    run_ok(
        s.ceph
            .rbd()
            .args(["snap", "rollback", "--no-progress"])
            .arg(s.ceph.spec(&format!("img@backy-{c}"))),
    );
    let sent = s.export_import(&["-r", &a, "--from", &c], "img");
    assert!(sent < 8 * MIB, "backward diff of {sent} bytes");
    s.assert_image_is("img", &a_img);

    // Full: an empty image becomes B.
    s.ceph.create_image_bytes("full", 4096);
    let sent = s.export_import(&["-r", &b], "full");
    assert!(
        sent < 32 * MIB,
        "a full diff leaves zeros out: {sent} bytes"
    );
    s.assert_image_is("full", &b_img);

    run(s
        .backy()
        .args(["export-diff", "-r", &b, "--from", "nosuch"]))
    .failure()
    .stderr_has("nosuch");
}

/// Without Ceph: the stream names both snapshots, and a revision without a
/// manifest is refused with a message that says what to do instead.
#[test]
fn export_diff_names_the_snapshots_and_needs_manifests() {
    let Some(fs) = TestFs::new(FsKind::Btrfs, 256) else {
        return;
    };
    let src = fs.join("source.img");
    write_file(&src, 4 * MIB, &[(0, &pattern_bytes(1, MIB as usize))]);
    let job = fs.join("job");
    run_ok(backy_job(&job).args(["init", "file"]).arg(&src));
    run_ok(backy_job(&job).args(["backup", "daily"]));
    write_at(&src, 2 * MIB, b"changed");
    run_ok(backy_job(&job).args(["backup", "daily"]));
    let r = run_ok(backy_job(&job).args(["status", "--json"]));
    let revs: Vec<serde_json::Value> = serde_json::from_str(&r.stdout).unwrap();
    let (old, new) = (
        revs[0]["id"].as_str().unwrap().to_string(),
        revs[1]["id"].as_str().unwrap().to_string(),
    );
    let stream =
        run_ok(backy_job(&job).args(["export-diff", "-r", &new, "--from", &old])).stdout_bytes;
    assert!(stream.starts_with(b"rbd diff v1\nf"), "{:?}", &stream[..20]);
    let find = |needle: &str| stream.windows(needle.len()).any(|w| w == needle.as_bytes());
    assert!(find(&format!("backy-{old}")) && find(&format!("backy-{new}")));
    assert_eq!(stream.last(), Some(&b'e'));
    // One 64 KiB block changed: the stream is that block and its framing.
    assert!(stream.len() < 70_000, "{} bytes", stream.len());

    fs::remove_file(job.join(format!("{old}.sums"))).unwrap();
    run(backy_job(&job).args(["export-diff", "-r", &new, "--from", &old]))
        .failure()
        .stderr_has("has no usable checksum manifest")
        .stderr_has("backy restore");
}
