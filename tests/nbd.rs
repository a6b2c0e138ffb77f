//! `backy nbd-server` against real NBD clients: nbdinfo, nbdcopy, nbdfuse and
//! nbdsh (libnbd), qemu-img and qemu-io, nbd-client, with nbdkit serving the same
//! image as the reference; and hostile clients through raw sockets.
//!
//! These machines have no `/dev/nbd*`, so the kernel path is exercised up to
//! the end of the handshake (`nbd-client`), and block-level access goes
//! through `nbdfuse` plus a loop device, as an operator without the nbd module
//! would do.

mod util;

use std::fs::{self, File};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use util::*;

const MIB: u64 = 1 << 20;

/// The tools the tests need, or a skip (a failure under `CI=true`).
fn need(tools: &[&str]) -> Option<()> {
    for t in tools {
        if find_tool(t).is_none() {
            return skip(format!(
                "`{t}` not found (run scripts/setup-test-deps.sh to install the NBD clients)"
            ));
        }
    }
    Some(())
}

/// A running `backy nbd-server` on a free port, stopped (SIGTERM) when dropped.
struct Server {
    child: Background,
    port: u16,
    log: PathBuf,
}

impl Server {
    fn start(job: &Path, args: &[&str]) -> Server {
        let log = job.with_extension(format!("nbd-{}.log", std::process::id()));
        let _ = fs::remove_file(&log);
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
        let line = server.wait_for_log("over NBD on 127.0.0.1:", Duration::from_secs(20));
        let addr = line
            .split("over NBD on 127.0.0.1:")
            .nth(1)
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap();
        server.port = addr.parse().unwrap();
        server
    }

    fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits for `needle` in the log; returns the line holding it.
    fn wait_for_log(&mut self, needle: &str, limit: Duration) -> String {
        let start = Instant::now();
        loop {
            let log = self.log();
            if let Some(line) = log.lines().find(|l| l.contains(needle)) {
                return line.to_string();
            }
            if let Some(status) = self.child.child.try_wait().unwrap() {
                let mut err = String::new();
                let _ = self
                    .child
                    .child
                    .stderr
                    .take()
                    .unwrap()
                    .read_to_string(&mut err);
                panic!("nbd-server exited with {status} before logging {needle:?}:\n{log}\n{err}");
            }
            assert!(
                start.elapsed() < limit,
                "no {needle:?} in the nbd-server log after {limit:?}:\n{log}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn uri(&self, name: &str) -> String {
        format!("nbd://127.0.0.1:{}/{name}", self.port)
    }

    /// SIGTERM, then the exit status (it must stop within 30 s).
    fn stop(mut self) -> std::process::ExitStatus {
        let log = self.log.clone();
        self.child.terminate("nbd-server", || {
            fs::read_to_string(&log).unwrap_or_default()
        })
    }
}

/// A job with two revisions of a 32 MiB image with data and holes on `fs`;
/// returns the job directory, the source, and the ids (oldest first).
fn job_with_revisions(fs: &TestFs) -> (PathBuf, PathBuf, Vec<String>) {
    let src = fs.join("src.img");
    write_file(
        &src,
        32 * MIB,
        &[
            (4 * MIB, &pattern_bytes(1, 8 << 20)),
            (20 * MIB, &pattern_bytes(2, 1 << 20)),
        ],
    );
    let job = fs.join("job");
    run_ok(backy_job(&job).args(["init", "file"]).arg(&src));
    run_ok(backy_job(&job).args(["backup", "daily"]));
    write_at(&src, 20 * MIB, &pattern_bytes(3, 64 << 10));
    run_ok(backy_job(&job).args(["backup", "weekly"]));
    let ids = revision_ids(&job);
    assert_eq!(ids.len(), 2);
    (job, src, ids)
}

fn revision_ids(job: &Path) -> Vec<String> {
    let r = run_ok(backy_job(job).args(["status", "--json"]));
    let revs: Vec<serde_json::Value> = serde_json::from_str(&r.stdout).unwrap();
    revs.iter()
        .map(|r| r["id"].as_str().unwrap().to_string())
        .collect()
}

/// The checksums of every file of the job, to prove serving changed nothing.
fn job_fingerprint(job: &Path) -> Vec<(String, String)> {
    let mut files: Vec<(String, String)> = fs::read_dir(job)
        .unwrap()
        .flatten()
        .filter(|e| e.file_type().unwrap().is_file())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.ends_with(".log") && !n.starts_with('.'))
        .map(|n| (n.clone(), sha256(&job.join(&n))))
        .collect();
    files.sort();
    files
}

fn clients_case(kind: FsKind) {
    if need(&["nbdinfo", "nbdcopy", "qemu-img", "nbd-client", "nbdkit"]).is_none() {
        return;
    }
    let fs = require_fs!(kind, 400);
    let (job, src, ids) = job_with_revisions(&fs);
    let before = job_fingerprint(&job);
    let server = Server::start(&job, &[]);

    // LIST: bare ids, newest first, date and tags in the description.
    let list = run_ok(tool("nbdinfo").args(["--list", &server.uri("")]));
    for id in &ids {
        assert!(
            list.stdout.contains(&format!("export=\"{id}\"")),
            "{}",
            list.stdout
        );
    }
    assert!(
        list.stdout.contains("is_read_only: true"),
        "{}",
        list.stdout
    );
    assert!(
        list.stdout.contains("block_size_maximum: 33554432"),
        "{}",
        list.stdout
    );
    assert!(
        list.stdout.contains("can_multi_conn: true"),
        "{}",
        list.stdout
    );
    let weekly = list.stdout.find(&ids[1]).unwrap();
    let daily = list.stdout.find(&ids[0]).unwrap();
    assert!(weekly < daily, "newest first:\n{}", list.stdout);
    let nbd_client = run_ok(tool("nbd-client").args(["-l", "127.0.0.1", &server.port.to_string()]));
    for id in &ids {
        assert!(
            nbd_client.stdout.contains(id.as_str()),
            "{}",
            nbd_client.stdout
        );
    }
    assert!(
        nbd_client.stdout.contains("weekly"),
        "{}",
        nbd_client.stdout
    );

    // INFO with an alias: the canonical id comes back.
    let json = run_ok(tool("nbdinfo").args(["--json", &server.uri("daily")]));
    let info: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    assert_eq!(
        info["exports"][0]["export-name"],
        ids[0].as_str(),
        "{}",
        json.stdout
    );
    assert_eq!(info["exports"][0]["export-size"], 32 * MIB);
    assert_eq!(info["structured"], true);

    // The map reports the holes, as nbdkit serving the same image does.
    let revision = job.join(&ids[1]);
    let ours = run_ok(tool("nbdinfo").args(["--map", &server.uri("")])).stdout;
    let sock = fs.join("nbdkit.sock");
    let mut nbdkit = tool("nbdkit")
        .args(["-f", "-r", "-U"])
        .arg(&sock)
        .arg("file")
        .arg(format!("file={}", revision.display()))
        .spawn()
        .unwrap();
    let reference_uri = format!("nbd+unix:///?socket={}", sock.display());
    let start = Instant::now();
    while !sock.exists() && start.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let theirs = run_ok(tool("nbdinfo").args(["--map", &reference_uri])).stdout;
    let _ = nbdkit.kill();
    let _ = nbdkit.wait();
    assert_eq!(ours, theirs, "nbdinfo --map: ours, then nbdkit's");
    assert!(ours.contains("hole,zero"), "{ours}");

    // Whole-image copies are byte-identical and sparse.
    let out = fs.join("copy.img");
    run_ok(tool("nbdcopy").arg(server.uri(&ids[0])).arg(&out));
    let first = fs.join("first.img");
    run_ok(backy_job(&job).args(["restore", "-r", &ids[0]]).arg(&first));
    assert_same_content(&out, &first);
    let converted = fs.join("converted.img");
    run_ok(
        tool("qemu-img")
            .args(["convert", "-f", "raw", "-O", "raw", &server.uri("0")])
            .arg(&converted),
    );
    assert_same_content(&converted, &src);
    assert!(
        allocated_bytes(&converted) < 16 * MIB,
        "qemu-img convert wrote holes as data: {} bytes allocated",
        allocated_bytes(&converted)
    );
    let qinfo = run_ok(tool("qemu-img").args(["info", "--output=json", &server.uri("last")]));
    assert!(
        qinfo.stdout.contains("\"virtual-size\": 33554432"),
        "{}",
        qinfo.stdout
    );
    let qmap =
        run_ok(tool("qemu-img").args(["map", "--output=json", "-f", "raw", &server.uri("last")]));
    assert!(qmap.stdout.contains("\"data\": false"), "{}", qmap.stdout);

    // nbd-client negotiates (the kernel side is missing here), with and without -g.
    for extra in [&[][..], &["-g"][..]] {
        let r = run(tool("nbd-client").args(["-N", &ids[1]]).args(extra).args([
            "127.0.0.1",
            &server.port.to_string(),
            "/dev/nbd0",
        ]));
        assert!(
            r.stdout.contains("size = 32MB") || r.stderr.contains("size = 32MB"),
            "nbd-client did not finish the handshake: {r:?}"
        );
    }

    // Unknown names fail cleanly, without hurting the server.
    let bad = run(tool("nbdcopy")
        .arg(server.uri("nosuchrevision"))
        .arg(fs.join("x.img")));
    assert!(!bad.status.success());
    assert!(bad.stderr.contains("nosuchrevision"), "{bad:?}");
    let bad = run(tool("nbd-client").args([
        "-N",
        "nosuch",
        "127.0.0.1",
        &server.port.to_string(),
        "/dev/nbd0",
    ]));
    assert!(!bad.status.success(), "{bad:?}");
    run_ok(tool("nbdinfo").args(["--size", &server.uri("")]));

    let log = server.log();
    assert!(log.contains("bytes read"), "{log}");
    let status = server.stop();
    assert!(status.success(), "exit status {status}");
    assert_eq!(job_fingerprint(&job), before, "serving changed the job");
}

#[test]
fn real_clients_list_info_map_copy_btrfs() {
    clients_case(FsKind::Btrfs);
}

#[test]
fn real_clients_list_info_map_copy_xfs() {
    clients_case(FsKind::Xfs);
}

/// Builds a disk image with an MBR partition table and one ext4 partition at
/// 1 MiB holding `files`; with `dirty`, the filesystem's journal needs recovery.
fn partitioned_image(fs: &TestFs, path: &Path, files: &[(&str, Vec<u8>)], dirty: bool) -> u64 {
    let part_offset = MIB;
    let part_size = 48 * MIB;
    let tree = fs.join("tree");
    fs::create_dir_all(&tree).unwrap();
    for (name, data) in files {
        fs::write(tree.join(name), data).unwrap();
    }
    let part = fs.join("part.img");
    File::create(&part).unwrap().set_len(part_size).unwrap();
    run_ok(
        tool("mkfs.ext4")
            .args(["-q", "-F", "-d"])
            .arg(&tree)
            .arg(&part),
    );
    let part = if dirty {
        // A copy taken while the filesystem is mounted and written to needs
        // recovery: the state a crash-consistent VM snapshot is in.
        let mnt = fs.join("mnt-dirty");
        fs::create_dir_all(&mnt).unwrap();
        run_ok(tool("mount").args(["-o", "loop"]).arg(&part).arg(&mnt));
        fs::write(mnt.join("journal.txt"), b"written before the crash").unwrap();
        run_ok(&mut Command::new("sync"));
        let copy = fs.join("part-dirty.img");
        run_ok(
            Command::new("cp")
                .arg("--reflink=never")
                .arg(&part)
                .arg(&copy),
        );
        run_ok(tool("umount").arg(&mnt));
        copy
    } else {
        part
    };
    let disk = File::create(path).unwrap();
    disk.set_len(part_offset + part_size).unwrap();
    let mut mbr = [0u8; 512];
    let entry = &mut mbr[446..462];
    entry[4] = 0x83; // Linux
    entry[8..12].copy_from_slice(&((part_offset / 512) as u32).to_le_bytes());
    entry[12..16].copy_from_slice(&((part_size / 512) as u32).to_le_bytes());
    mbr[510] = 0x55;
    mbr[511] = 0xaa;
    disk.write_all_at(&mbr, 0).unwrap();
    let data = fs::read(&part).unwrap();
    disk.write_all_at(&data, part_offset).unwrap();
    part_offset
}

/// `nbdfuse` mounts an export as a file until dropped.
struct Fuse {
    child: Child,
    dir: PathBuf,
}

impl Fuse {
    fn mount(dir: &Path, uri: &str, read_only: bool) -> Fuse {
        fs::create_dir_all(dir).unwrap();
        let mut cmd = tool("nbdfuse");
        if read_only {
            cmd.arg("-r");
        }
        let child = cmd
            .arg(dir.join("disk"))
            .arg(uri)
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let start = Instant::now();
        while !dir.join("disk").exists() {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "nbdfuse did not mount {uri}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Fuse {
            child,
            dir: dir.to_owned(),
        }
    }

    fn disk(&self) -> PathBuf {
        self.dir.join("disk")
    }
}

impl Drop for Fuse {
    fn drop(&mut self) {
        let _ = tool("fusermount3").arg("-u").arg(&self.dir).status();
        let start = Instant::now();
        while self.child.try_wait().ok().flatten().is_none()
            && start.elapsed() < Duration::from_secs(10)
        {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A partition of an NBD export mounted through a loop device at its offset.
struct PartitionMount {
    mnt: PathBuf,
    device: String,
}

impl PartitionMount {
    fn new(disk: &Path, offset: u64, mnt: &Path, read_only: bool) -> Result<PartitionMount, Run> {
        fs::create_dir_all(mnt).unwrap();
        let mut losetup = tool("losetup");
        losetup.args(["--find", "--show", "-o", &offset.to_string()]);
        if read_only {
            losetup.arg("-r");
        }
        let device = run_ok(losetup.arg(disk)).stdout.trim().to_string();
        let mut mount = tool("mount");
        mount.args(["-t", "ext4"]);
        if read_only {
            mount.args(["-o", "ro"]);
        }
        let r = run(mount.arg(&device).arg(mnt));
        if !r.status.success() {
            let _ = tool("losetup").args(["-d", &device]).status();
            return Err(r);
        }
        Ok(PartitionMount {
            mnt: mnt.to_owned(),
            device,
        })
    }
}

impl Drop for PartitionMount {
    fn drop(&mut self) {
        let _ = tool("umount").arg(&self.mnt).status();
        let _ = tool("losetup").args(["-d", &self.device]).status();
    }
}

fn single_file_restore_case(kind: FsKind) {
    if need(&["nbdfuse", "fusermount3", "mkfs.ext4", "losetup", "mount"]).is_none() {
        return;
    }
    let fs = require_fs!(kind, 600);
    let wanted = pattern_bytes(7, 300_000);
    let img = fs.join("vm.img");
    let offset = partitioned_image(&fs, &img, &[("etc-passwd", wanted.clone())], false);
    let job = fs.join("job");
    run_ok(backy_job(&job).args(["init", "file"]).arg(&img));
    run_ok(backy_job(&job).args(["backup", "daily"]));
    let before = job_fingerprint(&job);

    let server = Server::start(&job, &[]);
    {
        let fuse = Fuse::mount(&fs.join("fuse"), &server.uri("daily"), true);
        let part = PartitionMount::new(&fuse.disk(), offset, &fs.join("restore"), true)
            .unwrap_or_else(|r| r.fail("mounting the partition of the export"));
        assert_eq!(fs::read(part.mnt.join("etc-passwd")).unwrap(), wanted);
    }
    assert!(server.stop().success());
    assert_eq!(job_fingerprint(&job), before);
}

#[test]
fn single_file_restore_through_nbdfuse_btrfs() {
    single_file_restore_case(FsKind::Btrfs);
}

#[test]
fn single_file_restore_through_nbdfuse_xfs() {
    single_file_restore_case(FsKind::Xfs);
}

fn overlay_case(kind: FsKind) {
    if need(&[
        "nbdfuse",
        "fusermount3",
        "mkfs.ext4",
        "losetup",
        "mount",
        "qemu-io",
        "nbdcopy",
    ])
    .is_none()
    {
        return;
    }
    let fs = require_fs!(kind, 700);
    let img = fs.join("vm.img");
    let offset = partitioned_image(&fs, &img, &[("kept.txt", b"kept".to_vec())], true);
    let job = fs.join("job");
    run_ok(backy_job(&job).args(["init", "file"]).arg(&img));
    run_ok(backy_job(&job).args(["backup", "daily"]));
    let id = revision_ids(&job).pop().unwrap();
    let before = job_fingerprint(&job);

    // Read-only, the dirty journal cannot be replayed: the mount fails.
    let server = Server::start(&job, &[]);
    {
        let fuse = Fuse::mount(&fs.join("fuse-ro"), &server.uri(&id), true);
        let refused = PartitionMount::new(&fuse.disk(), offset, &fs.join("ro"), true);
        assert!(
            refused.is_err(),
            "a filesystem needing recovery mounted read-only"
        );
    }
    assert!(server.stop().success());

    let mut server = Server::start(&job, &["--overlay"]);
    {
        let fuse = Fuse::mount(&fs.join("fuse-rw"), &server.uri(&id), false);
        let part = PartitionMount::new(&fuse.disk(), offset, &fs.join("rw"), false)
            .unwrap_or_else(|r| r.fail("mounting the overlay read-write"));
        assert_eq!(fs::read(part.mnt.join("kept.txt")).unwrap(), b"kept");
        assert_eq!(
            fs::read(part.mnt.join("journal.txt")).unwrap(),
            b"written before the crash",
            "the journal was not replayed"
        );
        fs::write(part.mnt.join("new.txt"), b"scratch").unwrap();
    }
    server.wait_for_log("Removed overlay", Duration::from_secs(20));

    // Two clients at once share the overlay: one's writes are the other's reads.
    let uri = server.uri(&id);
    let mut holder = Command::new("/usr/bin/python3")
        .args(["-c", HOLD_AND_WRITE, &uri])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    let mut out = std::io::BufReader::new(holder.stdout.take().unwrap());
    std::io::BufRead::read_line(&mut out, &mut line).unwrap();
    assert_eq!(line.trim(), "written", "the first client could not write");
    run_ok(tool("qemu-io").args([
        "-f",
        "raw",
        "-c",
        "read -P 0xcd 65536 4096",
        "-c",
        "write -P 0xab 0 64k",
        "-c",
        "read -P 0xab 0 64k",
        &uri,
    ]));
    holder.stdin.take().unwrap().write_all(b"check\n").unwrap();
    line.clear();
    std::io::BufRead::read_line(&mut out, &mut line).unwrap();
    assert_eq!(
        line.trim(),
        "saw 0xab",
        "the first client did not see the second's write"
    );
    assert!(holder.wait().unwrap().success());

    assert!(server.stop().success());
    assert_eq!(
        job_fingerprint(&job),
        before,
        "writes through the overlay changed the revision"
    );
    run_ok(backy_job(&job).args(["verify"]));
    let leftovers: Vec<String> = fs::read_dir(&job)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".nbd-overlay"))
        .collect();
    assert!(leftovers.is_empty(), "overlays left: {leftovers:?}");
}

/// A libnbd client that writes 0xcd at 64 KiB, says so, waits, then checks
/// that another client's 0xab reached offset 0 (python3-libnbd).
const HOLD_AND_WRITE: &str = r#"
import sys, nbd
h = nbd.NBD()
h.connect_uri(sys.argv[1])
h.pwrite(b"\xcd" * 4096, 65536)
h.flush()
print("written", flush=True)
sys.stdin.readline()
data = h.pread(65536, 0)
print("saw 0xab" if data == b"\xab" * 65536 else "saw other data", flush=True)
h.shutdown()
"#;

#[test]
fn overlay_mounts_a_dirty_journal_and_shares_writes_btrfs() {
    overlay_case(FsKind::Btrfs);
}

#[test]
fn overlay_mounts_a_dirty_journal_and_shares_writes_xfs() {
    overlay_case(FsKind::Xfs);
}

// ---------------------------------------------------------------------------
// Raw protocol: what a hostile or broken client sends.

const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
const REQUEST_MAGIC: u32 = 0x2560_9513;

/// A raw client past the greeting.
struct Raw {
    s: TcpStream,
}

impl Raw {
    fn connect(port: u16) -> Raw {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut greeting = [0u8; 18];
        s.read_exact(&mut greeting).unwrap();
        assert_eq!(&greeting[..8], b"NBDMAGIC");
        assert_eq!(&greeting[8..16], b"IHAVEOPT");
        s.write_all(&3u32.to_be_bytes()).unwrap(); // fixed newstyle, no zeroes
        Raw { s }
    }

    fn option(&mut self, option: u32, data: &[u8]) {
        let mut b = IHAVEOPT.to_be_bytes().to_vec();
        b.extend_from_slice(&option.to_be_bytes());
        b.extend_from_slice(&(data.len() as u32).to_be_bytes());
        b.extend_from_slice(data);
        self.s.write_all(&b).unwrap();
    }

    /// One option reply: (option, type, data); `None` when the server closed.
    fn reply(&mut self) -> Option<(u32, u32, Vec<u8>)> {
        let mut h = [0u8; 20];
        self.s.read_exact(&mut h).ok()?;
        assert_eq!(
            u64::from_be_bytes(h[..8].try_into().unwrap()),
            0x0003_e889_0455_65a9
        );
        let len = u32::from_be_bytes(h[16..20].try_into().unwrap());
        let mut data = vec![0u8; len as usize];
        self.s.read_exact(&mut data).ok()?;
        Some((
            u32::from_be_bytes(h[8..12].try_into().unwrap()),
            u32::from_be_bytes(h[12..16].try_into().unwrap()),
            data,
        ))
    }

    /// Replies up to and including the final one (ACK or an error).
    fn final_reply(&mut self) -> Option<u32> {
        loop {
            let (_, kind, _) = self.reply()?;
            if kind == 1 || kind & (1 << 31) != 0 {
                return Some(kind);
            }
        }
    }

    /// `GO` to `name` (structured replies first when `structured`).
    fn go(port: u16, name: &str, structured: bool) -> Raw {
        let mut raw = Raw::connect(port);
        if structured {
            raw.option(8, &[]);
            assert_eq!(raw.final_reply(), Some(1));
        }
        let mut data = (name.len() as u32).to_be_bytes().to_vec();
        data.extend_from_slice(name.as_bytes());
        data.extend_from_slice(&0u16.to_be_bytes());
        raw.option(7, &data);
        assert_eq!(raw.final_reply(), Some(1), "GO {name} failed");
        raw
    }

    fn request(&mut self, kind: u16, cookie: u64, offset: u64, len: u32, payload: &[u8]) {
        let mut b = REQUEST_MAGIC.to_be_bytes().to_vec();
        b.extend_from_slice(&0u16.to_be_bytes());
        b.extend_from_slice(&kind.to_be_bytes());
        b.extend_from_slice(&cookie.to_be_bytes());
        b.extend_from_slice(&offset.to_be_bytes());
        b.extend_from_slice(&len.to_be_bytes());
        b.extend_from_slice(payload);
        self.s.write_all(&b).unwrap();
    }

    /// A simple reply: (error, cookie), reading `data_len` bytes of data on success.
    fn simple(&mut self, data_len: usize) -> (u32, u64, Vec<u8>) {
        let mut h = [0u8; 16];
        self.s.read_exact(&mut h).unwrap();
        assert_eq!(u32::from_be_bytes(h[..4].try_into().unwrap()), 0x6744_6698);
        let error = u32::from_be_bytes(h[4..8].try_into().unwrap());
        let mut data = vec![0u8; if error == 0 { data_len } else { 0 }];
        self.s.read_exact(&mut data).unwrap();
        (error, u64::from_be_bytes(h[8..].try_into().unwrap()), data)
    }

    fn closed(&mut self) -> bool {
        let mut b = [0u8; 1];
        matches!(self.s.read(&mut b), Ok(0) | Err(_))
    }
}

fn hostile_case(kind: FsKind) {
    let fs = require_fs!(kind, 400);
    let (job, _src, ids) = job_with_revisions(&fs);
    let image = fs::read(job.join(&ids[1])).unwrap();
    let server = Server::start(&job, &["--max-connections", "4"]);
    let port = server.port;

    // Unsupported options (qemu 10 sends EXTENDED_HEADERS first, STARTTLS, junk)
    // get ERR_UNSUP and the handshake goes on.
    let mut raw = Raw::connect(port);
    for option in [11u32, 5, 0xdead] {
        raw.option(option, &[]);
        assert_eq!(raw.final_reply(), Some((1 << 31) + 1), "option {option}");
    }
    raw.option(3, &[]);
    assert_eq!(raw.final_reply(), Some(1), "LIST after unsupported options");
    drop(raw);

    // An option flood: more than 64 options end the connection.
    let mut raw = Raw::connect(port);
    let mut closed = false;
    for _ in 0..100 {
        raw.option(0xdead, &[]);
        if raw.final_reply().is_none() {
            closed = true;
            break;
        }
    }
    assert!(closed, "100 options in one handshake were accepted");
    drop(raw);

    // A huge option length gets ERR_TOO_BIG (its data is skipped).
    let mut raw = Raw::connect(port);
    raw.option(0xdead, &vec![0u8; 70 << 10]);
    assert_eq!(raw.final_reply(), Some((1 << 31) + 9));
    // A 5000-byte name is invalid; an unknown one is unknown.
    for (name, want) in [
        ("x".repeat(5000), (1u32 << 31) + 3),
        ("nosuch".to_string(), (1 << 31) + 6),
    ] {
        let mut data = (name.len() as u32).to_be_bytes().to_vec();
        data.extend_from_slice(name.as_bytes());
        data.extend_from_slice(&0u16.to_be_bytes());
        raw.option(7, &data);
        assert_eq!(
            raw.final_reply(),
            Some(want),
            "GO with a {}-byte name",
            name.len()
        );
    }
    // EXPORT_NAME with an unknown name closes the connection, as the protocol says.
    raw.option(1, b"nosuch");
    assert!(raw.closed());

    // Transmission: out of range, zero length, writes to a read-only export,
    // cookies echoed, pipelined requests answered in order.
    let mut raw = Raw::go(port, "", false);
    let size = 32 * MIB;
    raw.request(0, 1, size - 4096, 8192, &[]);
    raw.request(0, 2, u64::MAX - 10, 4096, &[]);
    raw.request(0, 3, 0, 0, &[]);
    raw.request(1, 4, 0, 4096, &[0xee; 4096]);
    raw.request(4, 5, 0, 4096, &[]);
    raw.request(0, 6, 4 * MIB, 65536, &[]);
    assert_eq!(raw.simple(8192).0, 22, "read beyond the end");
    assert_eq!(raw.simple(4096).0, 22, "overflowing offset");
    assert_eq!(raw.simple(0).0, 22, "zero-length read");
    assert_eq!(raw.simple(0).0, 1, "write to a read-only export");
    assert_eq!(raw.simple(0).0, 1, "trim on a read-only export");
    let (error, cookie, data) = raw.simple(65536);
    assert_eq!((error, cookie), (0, 6));
    assert_eq!(data[..], image[4 * MIB as usize..4 * MIB as usize + 65536]);
    // A request with a bad magic ends the connection.
    raw.s.write_all(&[0u8; 28]).unwrap();
    assert!(raw.closed());
    drop(raw);

    // Disconnect with requests in flight: the server carries on.
    let mut raw = Raw::go(port, &ids[0], true);
    for cookie in 0..32 {
        raw.request(0, cookie, cookie * MIB, 1 << 20, &[]);
    }
    drop(raw);

    // More clients than the cap: the extra one is refused with a message.
    std::thread::sleep(Duration::from_millis(300));
    let held: Vec<Raw> = (0..4).map(|_| Raw::go(port, "", false)).collect();
    let mut extra = Raw::connect(port);
    extra.option(3, &[]);
    let (_, kind, message) = extra.reply().expect("a reply to the refused client");
    assert_eq!(kind, (1 << 31) + 2, "ERR_POLICY");
    assert!(String::from_utf8_lossy(&message).contains("max-connections"));
    drop(held);

    // None of this hurt the server: a normal client still works.
    std::thread::sleep(Duration::from_millis(300));
    let mut raw = Raw::go(port, "last", false);
    raw.request(0, 99, 0, 4096, &[]);
    assert_eq!(raw.simple(4096).0, 0);
    raw.request(2, 100, 0, 0, &[]);
    assert!(raw.closed());
    assert!(server.stop().success());
}

#[test]
fn hostile_clients_get_errors_not_panics_btrfs() {
    hostile_case(FsKind::Btrfs);
}

#[test]
fn hostile_clients_get_errors_not_panics_xfs() {
    hostile_case(FsKind::Xfs);
}

/// Serving never blocks a backup or expiry: a client keeps reading a revision
/// that `forget` removed, and `LIST` no longer shows it.
#[test]
fn serving_never_blocks_backups_or_removal() {
    let fs = require_fs!(FsKind::Btrfs, 400);
    let (job, src, ids) = job_with_revisions(&fs);
    let image = fs::read(job.join(&ids[0])).unwrap();
    let server = Server::start(&job, &[]);
    let mut raw = Raw::go(server.port, &ids[0], false);
    write_at(&src, 0, &pattern_bytes(9, 4096));
    run_ok(backy_job(&job).args(["backup", "daily"]));
    run_ok(backy_job(&job).args(["forget", "-r", &ids[0]]));
    assert!(!job.join(&ids[0]).exists());
    raw.request(0, 1, 4 * MIB, 65536, &[]);
    let (error, _, data) = raw.simple(65536);
    assert_eq!(error, 0);
    assert_eq!(data[..], image[4 * MIB as usize..4 * MIB as usize + 65536]);
    let mut lister = Raw::connect(server.port);
    lister.option(3, &[]);
    let mut names = Vec::new();
    loop {
        let (_, kind, data) = lister.reply().unwrap();
        if kind != 2 {
            break;
        }
        let len = u32::from_be_bytes(data[..4].try_into().unwrap()) as usize;
        names.push(String::from_utf8(data[4..4 + len].to_vec()).unwrap());
    }
    assert_eq!(names.len(), 2, "{names:?}");
    assert!(
        !names.contains(&ids[0]),
        "a removed revision is still listed: {names:?}"
    );
    drop(raw);
    assert!(server.stop().success());
}

/// A job directory that is not one, a busy port and a bad address are clear errors.
#[test]
fn bad_arguments_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope");
    let r = run(backy_job(&missing).args(["nbd-server", "-p", "0"]));
    assert!(!r.status.success());
    assert!(r.stderr.contains("does not exist"), "{r:?}");
    let job = dir.path().join("job");
    fs::create_dir(&job).unwrap();
    fs::write(dir.path().join("src"), b"x").unwrap();
    run_ok(
        backy_job(&job)
            .args(["init", "file"])
            .arg(dir.path().join("src")),
    );
    let r = run(backy_job(&job).args(["nbd-server", "-H", "localhost:9", "-p", "0"]));
    assert!(r.stderr.contains("is not an IP address"), "{r:?}");
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().port().to_string();
    let r = run(backy_job(&job).args(["nbd-server", "-p", &port]));
    assert!(!r.status.success());
    assert!(r.stderr.contains("cannot listen on 127.0.0.1:"), "{r:?}");
    assert!(!r.stderr.contains("panicked"), "{r:?}");
}

/// An overlay left by a killed server is removed by the next backup (and the
/// next server); a live one, locked by its server, is not.
#[test]
fn stale_overlays_are_removed_live_ones_kept() {
    let fs = require_fs!(FsKind::Xfs, 400);
    let (job, _src, ids) = job_with_revisions(&fs);
    let overlays = |job: &Path| -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(job)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(".nbd-overlay."))
            .collect();
        v.sort();
        v
    };
    // A server killed with SIGKILL leaves its overlay behind.
    let mut server = Server::start(&job, &["--overlay"]);
    let raw = Raw::go(server.port, &ids[1], false);
    server.wait_for_log("Created overlay", Duration::from_secs(10));
    let _ = server.child.child.kill();
    let _ = server.child.child.wait();
    drop(raw);
    let stale = overlays(&job);
    assert_eq!(stale.len(), 1, "{stale:?}");

    // A live overlay of a second server survives a backup; the stale one goes.
    let mut server = Server::start(&job, &["--overlay"]);
    assert!(
        overlays(&job).is_empty(),
        "the new server did not remove the stale overlay"
    );
    fs::write(job.join(&stale[0]), b"left by a crash").unwrap();
    let raw = Raw::go(server.port, &ids[0], false);
    server.wait_for_log("Created overlay", Duration::from_secs(10));
    assert_eq!(overlays(&job).len(), 2);
    run_ok(backy_job(&job).args(["backup", "daily"]));
    let left = overlays(&job);
    assert_eq!(left.len(), 1, "{left:?}");
    assert!(left[0].contains(&ids[0]), "{left:?}");
    drop(raw);
    assert!(server.stop().success());
    assert!(overlays(&job).is_empty());
}

/// The limits that end a connection or get an error: a handshake that never
/// finishes is closed after 30 s; a read over 32 MiB is EINVAL; a write over
/// 32 MiB closes the connection (its payload cannot be skipped safely); the
/// server carries on for everybody else.
#[test]
fn request_size_and_handshake_deadline_limits() {
    let fs = require_fs!(FsKind::Btrfs, 400);
    let (job, _src, _ids) = job_with_revisions(&fs);
    let mut server = Server::start(&job, &[]);
    let port = server.port;

    let mut idle = TcpStream::connect(("127.0.0.1", port)).unwrap();
    idle.set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let started = Instant::now();

    let mut raw = Raw::go(port, "", false);
    raw.request(0, 1, 0, (32 << 20) + 1, &[]);
    assert_eq!(raw.simple(0).0, 22, "a read over 32 MiB");
    raw.request(0, 2, 0, 32 << 20, &[]);
    let (error, cookie, data) = raw.simple(32 << 20);
    assert_eq!(
        (error, cookie, data.len()),
        (0, 2, 32 << 20),
        "a read of exactly 32 MiB"
    );
    // Block status without a negotiated context is an error, not a disconnect.
    raw.request(7, 3, 0, 4096, &[]);
    assert_eq!(raw.simple(0).0, 22);
    raw.request(1, 4, 0, (32 << 20) + 1, &[]);
    assert!(raw.closed(), "a write over 32 MiB must end the connection");

    // The idle client gets the greeting, then nothing until the deadline closes it.
    let mut greeting = [0u8; 18];
    idle.read_exact(&mut greeting).unwrap();
    let mut rest = [0u8; 1];
    let end = idle.read(&mut rest);
    assert!(matches!(end, Ok(0) | Err(_)), "{end:?}");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(25) && waited < Duration::from_secs(55),
        "the handshake deadline closed the connection after {waited:?}"
    );
    server.wait_for_log(
        "did not finish the handshake in time",
        Duration::from_secs(10),
    );
    let mut raw = Raw::go(port, "", false);
    raw.request(0, 5, 0, 4096, &[]);
    assert_eq!(raw.simple(4096).0, 0);
    drop(raw);
    assert!(server.stop().success());
}

/// Reads pipelined on one connection are answered (in whatever order; the
/// client matches cookies) each once and with the right bytes; a write after
/// them is answered only after them, and a read after the write sees it.
#[test]
fn pipelined_reads_come_back_whole_and_a_write_stays_in_order() {
    let fs = require_fs!(FsKind::Btrfs, 400);
    let (job, _src, ids) = job_with_revisions(&fs);
    let image = fs::read(job.join(&ids[1])).unwrap();
    let server = Server::start(&job, &["--overlay"]);
    let mut raw = Raw::go(server.port, "", false);
    const LEN: usize = 256 << 10;
    let span = (image.len() - LEN) as u64 / 4096;
    let offsets: Vec<u64> = (0..64u64).map(|i| (i * 7919 % span) * 4096).collect();
    for (i, &o) in offsets.iter().enumerate() {
        raw.request(0, i as u64, o, LEN as u32, &[]);
    }
    let new = vec![0x5au8; 4096];
    raw.request(1, 100, offsets[1], 4096, &new);
    raw.request(0, 101, offsets[1], LEN as u32, &[]);
    let mut seen = std::collections::HashSet::new();
    for _ in 0..offsets.len() {
        let (error, cookie, data) = raw.simple(LEN);
        assert_eq!(error, 0, "read {cookie}");
        let o = offsets[cookie as usize] as usize;
        assert!(data == image[o..o + LEN], "read {cookie} at {o}");
        assert!(seen.insert(cookie), "read {cookie} answered twice");
    }
    let (error, cookie, _) = raw.simple(0);
    assert_eq!(
        (error, cookie),
        (0, 100),
        "the write, after the reads before it"
    );
    let (error, cookie, data) = raw.simple(LEN);
    assert_eq!((error, cookie), (0, 101));
    let o = offsets[1] as usize;
    assert!(data[..4096] == new[..], "the read after the write sees it");
    assert!(data[4096..] == image[o + 4096..o + LEN]);
    drop(raw);
    assert!(server.stop().success());
}

/// `BLOCK_STATUS` with `REQ_ONE` answers one extent; without it, the extents
/// cover the range and say hole,zero where the image has holes.
#[test]
fn block_status_honours_req_one() {
    let fs = require_fs!(FsKind::Xfs, 400);
    let (job, _src, _ids) = job_with_revisions(&fs);
    let server = Server::start(&job, &[]);
    let mut raw = Raw::connect(server.port);
    raw.option(8, &[]);
    assert_eq!(raw.final_reply(), Some(1));
    let mut data = 0u32.to_be_bytes().to_vec();
    data.extend_from_slice(&1u32.to_be_bytes());
    data.extend_from_slice(&(15u32).to_be_bytes());
    data.extend_from_slice(b"base:allocation");
    raw.option(10, &data);
    let (_, kind, ctx) = raw.reply().unwrap();
    assert_eq!(kind, 4, "META_CONTEXT");
    assert_eq!(&ctx[4..], b"base:allocation");
    let id = u32::from_be_bytes(ctx[..4].try_into().unwrap());
    assert_eq!(raw.final_reply(), Some(1));
    let mut go = 0u32.to_be_bytes().to_vec();
    go.extend_from_slice(&0u16.to_be_bytes());
    raw.option(7, &go);
    assert_eq!(raw.final_reply(), Some(1));

    let status = |raw: &mut Raw, flags: u16, cookie: u64| -> Vec<(u32, u32)> {
        let mut b = REQUEST_MAGIC.to_be_bytes().to_vec();
        b.extend_from_slice(&flags.to_be_bytes());
        b.extend_from_slice(&7u16.to_be_bytes());
        b.extend_from_slice(&cookie.to_be_bytes());
        b.extend_from_slice(&0u64.to_be_bytes());
        b.extend_from_slice(&((32 * MIB) as u32).to_be_bytes());
        raw.s.write_all(&b).unwrap();
        let mut h = [0u8; 20];
        raw.s.read_exact(&mut h).unwrap();
        assert_eq!(u32::from_be_bytes(h[..4].try_into().unwrap()), 0x668e_33ef);
        assert_eq!(u16::from_be_bytes([h[6], h[7]]), 5, "a BLOCK_STATUS chunk");
        assert_eq!(u64::from_be_bytes(h[8..16].try_into().unwrap()), cookie);
        let len = u32::from_be_bytes(h[16..20].try_into().unwrap()) as usize;
        let mut p = vec![0u8; len];
        raw.s.read_exact(&mut p).unwrap();
        assert_eq!(u32::from_be_bytes(p[..4].try_into().unwrap()), id);
        p[4..]
            .chunks(8)
            .map(|c| {
                (
                    u32::from_be_bytes(c[..4].try_into().unwrap()),
                    u32::from_be_bytes(c[4..].try_into().unwrap()),
                )
            })
            .collect()
    };
    let one = status(&mut raw, 1 << 3, 1);
    assert_eq!(one.len(), 1, "{one:?}");
    assert_eq!(one[0].1, 3, "the image starts with a hole: {one:?}");
    let all = status(&mut raw, 0, 2);
    assert_eq!(
        all.iter().map(|e| u64::from(e.0)).sum::<u64>(),
        32 * MIB,
        "{all:?}"
    );
    assert!(
        all.iter().any(|e| e.1 == 0) && all.iter().any(|e| e.1 == 3),
        "{all:?}"
    );
    drop(raw);
    assert!(server.stop().success());
}

/// A non-loopback address works but warns that NBD has no authentication.
#[test]
fn a_non_loopback_address_is_served_with_a_warning() {
    let fs = require_fs!(FsKind::Btrfs, 400);
    let (job, _src, _ids) = job_with_revisions(&fs);
    let log = job.with_extension("wide.log");
    let mut child = backy_job(&job)
        .arg("-l")
        .arg(&log)
        .args(["nbd-server", "-H", "0.0.0.0", "-p", "0"])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    let text = loop {
        let text = fs::read_to_string(&log).unwrap_or_default();
        if text.contains("over NBD on") {
            break text;
        }
        assert!(start.elapsed() < Duration::from_secs(20), "{text}");
        std::thread::sleep(Duration::from_millis(50));
    };
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        text.contains("not a loopback address: NBD has no authentication"),
        "{text}"
    );
}
