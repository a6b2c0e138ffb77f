//! Bad input: every mistake an operator can make gets one clear sentence on
//! stderr that names the thing and says what to do, exit code 1 (2 for
//! command-line usage errors), never a panic, and the revisions the job
//! already had stay exactly as they were: listed complete, restorable
//! byte-identical, with no half-made revision or stray file beside them.

mod util;

use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{PermissionsExt, chown};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::Duration;

use util::*;

const MIB: u64 = 1 << 20;

/// uid and gid of `nobody` on Debian.
const NOBODY: u32 = 65534;

/// A job with one good, complete revision, and a copy of the source as it was
/// when that revision was taken.
struct Fixture {
    /// The job's filesystem (btrfs, so backups can reflink).
    fs: TestFs,
    /// The source image.
    src: PathBuf,
    /// The job directory.
    job: PathBuf,
    /// Where restores and saved copies go (outside the job directory).
    scratch: PathBuf,
    /// The good revision's id.
    good: String,
    /// The source's bytes when `good` was taken.
    state: PathBuf,
    /// Run backy as `nobody` (through `setpriv`) instead of root.
    as_nobody: bool,
}

impl Fixture {
    /// A job with a `size`-byte source, both on one fresh btrfs of `fs_mib` MiB.
    fn new(fs_mib: u64, size: u64) -> Option<Fixture> {
        let fs = TestFs::new(FsKind::Btrfs, fs_mib)?;
        let src = fs.join("src.img");
        let job = fs.join("job");
        let scratch = fs.join("scratch");
        Some(Fixture::build(fs, src, job, scratch, size, false))
    }

    /// Writes the source (data, zeros and holes), inits the job, makes the good
    /// revision and saves the source state in `scratch`.
    fn build(
        fs: TestFs,
        src: PathBuf,
        job: PathBuf,
        scratch: PathBuf,
        size: u64,
        as_nobody: bool,
    ) -> Fixture {
        make_source(&src, size, 1);
        fs::create_dir_all(&scratch).unwrap();
        if as_nobody {
            chown(&scratch, Some(NOBODY), Some(NOBODY)).unwrap();
        }
        let mut fx = Fixture {
            fs,
            src,
            job,
            scratch,
            good: String::new(),
            state: PathBuf::new(),
            as_nobody,
        };
        run_ok(fx.backy().args(["init", "file"]).arg(&fx.src));
        run_ok(fx.backy().args(["backup", "good"]));
        let revs = fx.status();
        assert_eq!(revs.len(), 1, "{revs:?}");
        fx.good = revs[0]["id"].as_str().unwrap().to_string();
        fx.state = fx.scratch.join("state-of-good");
        fs::copy(&fx.src, &fx.state).unwrap();
        fx
    }

    /// `backy -b JOB`, as root or as `nobody`.
    fn backy(&self) -> Command {
        if !self.as_nobody {
            return backy_job(&self.job);
        }
        let mut cmd = tool("setpriv");
        cmd.args([
            &format!("--reuid={NOBODY}"),
            &format!("--regid={NOBODY}"),
            "--clear-groups",
        ])
        .arg(env!("CARGO_BIN_EXE_backy"))
        .arg("-b")
        .arg(&self.job);
        remove_backy_env(&mut cmd);
        cmd
    }

    /// `status --json`, parsed.
    fn status(&self) -> Vec<serde_json::Value> {
        let r = run_ok(self.backy().args(["status", "--json"]));
        serde_json::from_str(&r.stdout).unwrap_or_else(|e| r.fail(&format!("bad JSON: {e}")))
    }

    /// The job still has exactly its good revision, complete, restorable
    /// byte-identical to the source state it was taken from, `last` pointing at
    /// it, and no other file (no incomplete revision, no temp file).
    #[track_caller]
    fn assert_untouched(&self) {
        let revs = self.status();
        assert_eq!(revs.len(), 1, "expected only the good revision: {revs:?}");
        assert_eq!(revs[0]["id"].as_str(), Some(self.good.as_str()), "{revs:?}");
        assert_eq!(revs[0]["complete"], true, "{revs:?}");
        assert_eq!(revs[0]["tags"], serde_json::json!(["good"]), "{revs:?}");

        let out = self.scratch.join("restored");
        let _ = fs::remove_file(&out);
        run_ok(self.backy().args(["restore", "-r", &self.good]).arg(&out));
        assert_same_content(&out, &self.state);
        fs::remove_file(&out).unwrap();

        let g = &self.good;
        let expected: BTreeSet<String> = [
            ".backup",
            ".meta",
            ".purge",
            "config",
            "last",
            "last.rev",
            g,
            &format!("{g}.rev"),
            &format!("{g}.sums"),
        ]
        .map(String::from)
        .into();
        assert_eq!(job_files(&self.job), expected);
        assert_eq!(
            fs::read_link(self.job.join("last")).unwrap(),
            PathBuf::from(g)
        );
    }
}

/// A VM-like source: random data, zeros and holes, one MiB each in turn.
fn make_source(path: &Path, size: u64, seed: u64) {
    let file = File::create(path).unwrap();
    file.set_len(size).unwrap();
    let mut at = 0;
    let mut n = seed;
    while at < size {
        let len = MIB.min(size - at) as usize;
        match n % 3 {
            0 => write_at(path, at, &pattern_bytes(n, len)),
            1 => write_at(path, at, &vec![0; len]),
            _ => {} // a hole
        }
        n += 1;
        at += len as u64;
    }
}

/// The names in a directory.
fn job_files(dir: &Path) -> BTreeSet<String> {
    fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("list {}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect()
}

/// Neither a panic message nor a backtrace hint.
#[track_caller]
fn assert_no_panic(r: &Run) {
    for needle in ["panicked", "RUST_BACKTRACE", "stack backtrace"] {
        if r.stderr.contains(needle) || r.stdout.contains(needle) {
            r.fail(&format!("{needle:?} in the output: a panic on user input"));
        }
    }
}

/// Expect exit code 1 and exactly one `ERROR` line that holds every needle.
#[track_caller]
fn expect_error(r: Run, needles: &[&str]) -> Run {
    expect_error_code(r, 1, needles)
}

/// Expect exit code `code` and exactly one `ERROR` line that holds every needle.
#[track_caller]
fn expect_error_code(r: Run, code: i32, needles: &[&str]) -> Run {
    let r = r.code(code);
    assert_no_panic(&r);
    let errors: Vec<&str> = r.stderr.lines().filter(|l| l.contains(" ERROR ")).collect();
    let [line] = errors.as_slice() else {
        r.fail(&format!("expected one ERROR line, found {}", errors.len()));
    };
    for needle in needles {
        if !line.contains(needle) {
            r.fail(&format!("expected {needle:?} in the error line"));
        }
    }
    r
}

/// Expect a clap usage error: exit code 2, `error:` with the needle, and a
/// pointer to `--help`.
#[track_caller]
fn expect_usage_error(r: Run, needle: &str) -> Run {
    let r = r.code(2);
    assert_no_panic(&r);
    for n in ["error:", needle, "--help"] {
        if !r.stderr.contains(n) {
            r.fail(&format!("expected {n:?} in the usage error"));
        }
    }
    r
}

fn path_str(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn missing_source() {
    let Some(fx) = Fixture::new(256, 4 * MIB) else {
        return;
    };
    let moved = fx.scratch.join("moved-away.img");
    fs::rename(&fx.src, &moved).unwrap();
    expect_error(
        run(fx.backy().args(["backup", "daily"])),
        &[path_str(&fx.src), "does not exist", "'filename'", "config"],
    );
    fx.assert_untouched();
}

/// As root, permissions do not stop reads, so backy runs as `nobody`.
#[test]
fn unreadable_source() {
    if find_tool("setpriv").is_none() {
        skip::<()>("`setpriv` (util-linux) is missing");
        return;
    }
    let fs = require_fs!(FsKind::Btrfs, 256);
    // The test filesystem's private temporary directory must let nobody pass.
    let parent = fs.path().parent().unwrap().to_owned();
    fs::set_permissions(&parent, fs::Permissions::from_mode(0o711)).unwrap();
    let job = fs.join("job");
    let scratch = fs.join("scratch");
    fs::create_dir(&job).unwrap();
    chown(&job, Some(NOBODY), Some(NOBODY)).unwrap();
    let src = fs.join("src.img");
    let fx = Fixture::build(fs, src, job, scratch, 4 * MIB, true);
    fs::set_permissions(&fx.src, fs::Permissions::from_mode(0o000)).unwrap();
    expect_error(
        run(fx.backy().args(["backup", "daily"])),
        &[path_str(&fx.src), "Permission denied", "permissions"],
    );
    fx.assert_untouched();
}

#[test]
fn source_is_a_directory() {
    let Some(fx) = Fixture::new(256, 4 * MIB) else {
        return;
    };
    fs::remove_file(&fx.src).unwrap();
    fs::create_dir(&fx.src).unwrap();
    expect_error(
        run(fx.backy().args(["backup", "daily"])),
        &[
            path_str(&fx.src),
            "is a directory",
            "image files and block devices",
        ],
    );
    fx.assert_untouched();
}

/// Issue 9: a FIFO as source blocked `backup` in `open()` with the job locked.
#[test]
fn source_is_a_fifo() {
    let Some(fx) = Fixture::new(256, 4 * MIB) else {
        return;
    };
    fs::remove_file(&fx.src).unwrap();
    run_ok(Command::new("mkfifo").arg(&fx.src));
    let r = run_timeout(
        fx.backy().args(["backup", "daily"]),
        Duration::from_secs(120),
    );
    expect_error(
        r,
        &[
            path_str(&fx.src),
            "is a FIFO",
            "image files and block devices",
        ],
    );
    fx.assert_untouched();
}

#[test]
fn source_is_a_socket() {
    let Some(fx) = Fixture::new(256, 4 * MIB) else {
        return;
    };
    fs::remove_file(&fx.src).unwrap();
    let _listener = std::os::unix::net::UnixListener::bind(&fx.src).unwrap();
    expect_error(
        run_timeout(
            fx.backy().args(["backup", "daily"]),
            Duration::from_secs(120),
        ),
        &[
            path_str(&fx.src),
            "is a socket",
            "image files and block devices",
        ],
    );
    fx.assert_untouched();
}

/// Issue 9: /dev/zero, /dev/urandom and /dev/null gave a 0-byte "complete"
/// revision. Reached through a symlink, as LVM's /dev/vg/lv are.
#[test]
fn source_is_a_character_device() {
    let Some(fx) = Fixture::new(256, 4 * MIB) else {
        return;
    };
    fs::remove_file(&fx.src).unwrap();
    for dev in ["/dev/zero", "/dev/urandom", "/dev/null"] {
        let _ = fs::remove_file(&fx.src);
        std::os::unix::fs::symlink(dev, &fx.src).unwrap();
        expect_error(
            run_timeout(
                fx.backy().args(["backup", "daily"]),
                Duration::from_secs(120),
            ),
            &[path_str(&fx.src), "is a character device", "block devices"],
        );
        fx.assert_untouched();
    }
}

/// A thread changes the source's size by 4 KiB every millisecond, from before
/// the backup starts until backy has exited.
fn source_changes_size_during_backup(grow: bool) {
    let Some(fx) = Fixture::new(512, 64 * MIB) else {
        return;
    };
    let stop = Arc::new(AtomicBool::new(false));
    let steps = Arc::new(AtomicU64::new(0));
    let changer = {
        let (stop, steps, src) = (Arc::clone(&stop), Arc::clone(&steps), fx.src.clone());
        thread::spawn(move || {
            let mut file = OpenOptions::new()
                .append(grow)
                .write(true)
                .open(&src)
                .unwrap();
            let page = pattern_bytes(99, 4096);
            while !stop.load(Ordering::Relaxed) {
                if grow {
                    file.write_all(&page).unwrap();
                } else {
                    let len = file.metadata().unwrap().len();
                    file.set_len(len.saturating_sub(4096)).unwrap();
                }
                steps.fetch_add(1, Ordering::Relaxed);
                thread::sleep(Duration::from_millis(1));
            }
        })
    };
    while steps.load(Ordering::Relaxed) < 3 {
        thread::sleep(Duration::from_millis(1));
    }
    let r = run(fx.backy().args(["backup", "daily"]));
    stop.store(true, Ordering::Relaxed);
    changer.join().unwrap();
    // Issue 9: a source written during the backup exits 75 (EX_TEMPFAIL).
    let r = expect_error_code(
        r,
        75,
        &[
            &format!("source {} was written during the backup", path_str(&fx.src)),
            "freeze",
            "snapshot",
        ],
    );
    let line = r.stderr.lines().find(|l| l.contains(" ERROR ")).unwrap();
    if !(line.contains("changed size") || line.contains("shrank")) {
        r.fail("expected the error to say the source changed size or shrank");
    }
    fx.assert_untouched();
}

#[test]
fn source_grows_during_backup() {
    source_changes_size_during_backup(true);
}

#[test]
fn source_shrinks_during_backup() {
    source_changes_size_during_backup(false);
}

/// The job's filesystem fills up mid-backup: the backup fails naming the full
/// filesystem and leaves no incomplete revision; the first revision restores.
#[test]
fn target_filesystem_fills_up() {
    let job_fs = require_fs!(FsKind::Btrfs, 128);
    let src_fs = require_fs!(FsKind::Btrfs, 512);
    let src = src_fs.join("src.img");
    let scratch = src_fs.join("scratch");
    let job = job_fs.join("job");
    let fx = Fixture::build(job_fs, src, job, scratch, 16 * MIB, false);
    // About 200 MiB of incompressible data more than the filesystem holds.
    let file = OpenOptions::new().append(true).open(&fx.src).unwrap();
    let mut file = std::io::BufWriter::new(file);
    for n in 0..200 {
        file.write_all(&pattern_bytes(1000 + n, MIB as usize))
            .unwrap();
    }
    file.into_inner().unwrap().sync_all().unwrap();

    // A hang is a failure too: the backup must give up, not wait for space.
    expect_error(
        run_timeout(
            fx.backy().args(["backup", "daily"]),
            Duration::from_secs(120),
        ),
        &[
            path_str(&fx.job),
            "No space left on device",
            "filesystem is full",
            "free space",
        ],
    );
    fx.assert_untouched();
}

#[test]
fn unknown_spec() {
    let Some(fx) = Fixture::new(256, 4 * MIB) else {
        return;
    };
    let out = fx.scratch.join("out");
    for spec in ["nope", "monthly", "1", "Zz"] {
        let r = expect_error(
            run(fx.backy().args(["find", "-r", spec])),
            &[
                &format!("no complete revision matches '{spec}'"),
                "backy status",
            ],
        );
        assert!(r.stdout.is_empty(), "find printed {:?}", r.stdout);
        expect_error(
            run(fx.backy().args(["restore", "-r", spec]).arg(&out)),
            &[&format!("'{spec}'"), "backy status"],
        );
        assert!(!out.exists(), "a failed restore created its target");
        expect_error(
            run(fx.backy().args(["verify", "-r", spec])),
            &[&format!("'{spec}'"), "backy status"],
        );
    }
    fx.assert_untouched();
}

#[test]
fn negative_number_spec() {
    let Some(fx) = Fixture::new(256, 4 * MIB) else {
        return;
    };
    let out = fx.scratch.join("out");
    for args in [
        &["find", "-r=-1"][..],
        &["find", "--revision=-3"],
        &["restore", "-r=-1", "OUT"],
    ] {
        let args: Vec<&str> = args
            .iter()
            .map(|a| if *a == "OUT" { path_str(&out) } else { a })
            .collect();
        let r = expect_error(
            run(fx.backy().args(&args)),
            &["invalid revision '-", "cannot be negative"],
        );
        assert!(r.stdout.is_empty(), "{r:?}");
        assert!(!out.exists(), "a failed restore created its target");
    }
    fx.assert_untouched();
}

/// `-r -1` as two words, as the original's argparse accepted it: the message
/// must be about the negative number, not an unknown option.
#[test]
fn negative_number_spec_as_separate_argument() {
    let Some(fx) = Fixture::new(256, 4 * MIB) else {
        return;
    };
    let out = fx.scratch.join("out");
    expect_error(
        run(fx.backy().args(["find", "-r", "-1"])),
        &["invalid revision '-1'", "cannot be negative"],
    );
    expect_error(
        run(fx.backy().args(["restore", "-r", "-2"]).arg(&out)),
        &["invalid revision '-2'", "cannot be negative"],
    );
    assert!(!out.exists(), "a failed restore created its target");
    fx.assert_untouched();
}

/// Two revisions whose ids share a prefix: copies of the good one's files under
/// the ids `Pfx1aaaa` and `Pfx2bbbb`.
#[test]
fn ambiguous_prefix() {
    let Some(fx) = Fixture::new(256, 4 * MIB) else {
        return;
    };
    let g = &fx.good;
    let rev_text = fs::read_to_string(fx.job.join(format!("{g}.rev"))).unwrap();
    assert!(rev_text.contains(&format!("uuid: {g}\n")), "{rev_text}");
    let crafted = ["Pfx1aaaa", "Pfx2bbbb"];
    for id in crafted {
        fs::copy(fx.job.join(g), fx.job.join(id)).unwrap();
        fs::copy(
            fx.job.join(format!("{g}.sums")),
            fx.job.join(format!("{id}.sums")),
        )
        .unwrap();
        write_text(
            &fx.job.join(format!("{id}.rev")),
            &rev_text.replace(&format!("uuid: {g}\n"), &format!("uuid: {id}\n")),
        );
    }
    assert_eq!(fx.status().len(), 3);

    let out = fx.scratch.join("out");
    let r = expect_error(
        run(fx.backy().args(["find", "-r", "Pfx"])),
        &[
            "'Pfx'",
            "ambiguous",
            "Pfx1aaaa",
            "Pfx2bbbb",
            "more characters",
        ],
    );
    assert!(r.stdout.is_empty(), "{r:?}");
    expect_error(
        run(fx.backy().args(["restore", "-r", "Pfx"]).arg(&out)),
        &["ambiguous", "Pfx1aaaa", "Pfx2bbbb"],
    );
    assert!(!out.exists(), "a failed restore created its target");
    // A longer prefix is unique again.
    let found = run_ok(fx.backy().args(["find", "-r", "Pfx2"])).stdout;
    assert_eq!(found.trim(), path_str(&fx.job.join("Pfx2bbbb")));

    for id in crafted {
        for suffix in ["", ".rev", ".sums"] {
            fs::remove_file(fx.job.join(format!("{id}{suffix}"))).unwrap();
        }
    }
    fx.assert_untouched();
}

#[test]
fn init_where_config_exists() {
    let Some(fx) = Fixture::new(256, 4 * MIB) else {
        return;
    };
    let config = fx.job.join("config");
    let before = fs::read(&config).unwrap();
    let mode = fs::metadata(&config).unwrap().permissions().mode();
    for args in [
        &["init", "file", "/somewhere/else.img"][..],
        &["init", "ceph-rbd", "rbd/vm01.root"],
    ] {
        expect_error(
            run(fx.backy().args(args)),
            &["config", "already exists", "edit or remove"],
        );
    }
    assert_eq!(fs::read(&config).unwrap(), before, "config changed");
    assert_eq!(fs::metadata(&config).unwrap().permissions().mode(), mode);
    fx.assert_untouched();
}

/// A `.rev` that cannot be read no longer stops the job (issue 9): every
/// command works around it, `status` names the file, what is wrong with it and
/// what to do, a backup leaves it alone; once moved away, the job is as it was.
#[test]
fn malformed_rev_files() {
    let Some(fx) = Fixture::new(256, 4 * MIB) else {
        return;
    };
    let g = &fx.good;
    let good_rev = fs::read_to_string(fx.job.join(format!("{g}.rev"))).unwrap();
    let cases = [
        (
            "Garbage1",
            "uuid: [Garbage1\n  timestamp: {{{\n".to_string(),
        ),
        // A copy of the good revision's metadata under another name.
        ("Mismatch2", good_rev.clone()),
        (
            "Duration3",
            good_rev
                .replace(&format!("uuid: {g}\n"), "uuid: Duration3\n")
                .lines()
                .map(|l| {
                    if l.trim_start().starts_with("duration:") {
                        "  duration: fast".to_string()
                    } else {
                        l.to_string()
                    }
                })
                .collect::<Vec<_>>()
                .join("\n"),
        ),
    ];
    let out = fx.scratch.join("out");
    for (id, text) in &cases {
        let bad = fx.job.join(format!("{id}.rev"));
        write_text(&bad, text);
        let r = run_ok(fx.backy().arg("status"));
        assert_no_panic(&r);
        let line = r
            .stdout
            .lines()
            .find(|l| l.contains(path_str(&bad)))
            .unwrap_or_else(|| r.fail("status does not name the damaged file"));
        for needle in [
            "is damaged",
            "repair it",
            &format!("forget -r {id} --force"),
        ] {
            if !line.contains(needle) {
                r.fail(&format!("expected {needle:?} in the status line"));
            }
        }
        let why_ok = match *id {
            "Mismatch2" => line.contains(&format!("its uuid '{g}' does not match")),
            "Duration3" => line.contains("'stats.duration' is not a number"),
            _ => true,
        };
        if !why_ok {
            r.fail("status does not say what is wrong with the file");
        }
        let json = run_ok(fx.backy().args(["status", "--json"]));
        assert!(json.stdout.contains(path_str(&bad)), "{}", json.stdout);
        let found = run_ok(fx.backy().args(["find", "-r", "0"]));
        assert_eq!(found.stdout.trim(), path_str(&fx.job.join(g)));
        run_ok(fx.backy().arg("verify"));
        run_ok(fx.backy().args(["restore", "-r", "0"]).arg(&out));
        assert_same_content(&out, &fx.state);
        fs::remove_file(&out).unwrap();
        let before = fs::read(&bad).unwrap();
        run_ok(fx.backy().args(["backup", "daily"]));
        assert_eq!(
            fs::read(&bad).unwrap(),
            before,
            "the backup changed {id}.rev"
        );
        run_ok(fx.backy().args(["forget", "-r", "daily", "--force"]));
        fs::rename(&bad, fx.scratch.join(format!("{id}.rev"))).unwrap();
        fx.assert_untouched();
    }
}

/// A `config` that cannot be used stops a backup with its name and what to do.
#[test]
fn malformed_config() {
    let Some(fx) = Fixture::new(256, 4 * MIB) else {
        return;
    };
    let config = fx.job.join("config");
    let saved = fs::read(&config).unwrap();
    let cases = [
        ("filename: [\n  {type: file", "malformed"),
        ("type: file\n", "'filename' is missing"),
        ("- type\n- file\n", "not a YAML mapping"),
        // The typo in the 2.0 man page's example, in both config layouts.
        (
            "type: flyingcircus,\npool: test\nimage: test03.root\nvm: test03\n",
            "unknown source type 'flyingcircus,'",
        ),
        (
            "schedule: hourly\nsource:\n    type: flyingcircus,\n    consul_acl_token: a211c244\n    vm: test03,\n    pool: test\n    image: test03.root\n",
            "unknown source type 'flyingcircus,'",
        ),
        ("type: nfs\nfilename: /x\n", "unknown source type 'nfs'"),
        // Bad values are named readably, not as `String("")`.
        (
            "type: file\nfilename: ''\n",
            "'filename' must be a non-empty string, not an empty string",
        ),
        (
            "type: file\nfilename: /x\nallow-copy: 7\n",
            "'allow-copy' must be true or false, not 7",
        ),
    ];
    for (text, why) in cases {
        write_text(&config, text);
        expect_error(
            run(fx.backy().args(["backup", "daily"])),
            &[path_str(&config), why, "fix it"],
        );
        assert_eq!(fs::read_to_string(&config).unwrap(), text);
        fs::write(&config, &saved).unwrap();
        fx.assert_untouched();
    }
    // A missing config is not a job.
    fs::rename(&config, fx.scratch.join("config")).unwrap();
    expect_error(
        run(fx.backy().args(["backup", "daily"])),
        &[path_str(&config), "does not exist", "init"],
    );
    fs::rename(fx.scratch.join("config"), &config).unwrap();
    fx.assert_untouched();
}

#[test]
fn backup_without_tags() {
    let Some(fx) = Fixture::new(256, 4 * MIB) else {
        return;
    };
    for tags in ["", ",", " , "] {
        expect_error(
            run(fx.backy().args(["backup", tags])),
            &["no tags given", "backy backup daily"],
        );
    }
    expect_error(
        run(fx.backy().args(["backup", "daily,two words"])),
        &["'two words'", "whitespace"],
    );
    fx.assert_untouched();
}

#[test]
fn job_directory_missing() {
    let Some(fx) = Fixture::new(256, 4 * MIB) else {
        return;
    };
    let missing = fx.fs.join("no-such-job");
    let out = fx.scratch.join("out");
    for args in [
        &["status"][..],
        &["status", "--json"],
        &["find"],
        &["backup", "daily"],
        &["verify"],
        &["forget", "-r", "0"],
        &["restore", "OUT"],
    ] {
        let args: Vec<&str> = args
            .iter()
            .map(|a| if *a == "OUT" { path_str(&out) } else { a })
            .collect();
        let r = expect_error(
            run(backy_job(&missing).args(&args)),
            &[path_str(&missing), "does not exist", "init"],
        );
        assert!(r.stdout.is_empty(), "{r:?}");
        assert!(!missing.exists(), "{args:?} created the job directory");
        assert!(!out.exists(), "a failed restore created its target");
    }
    fx.assert_untouched();
}

#[test]
fn usage_errors() {
    let Some(fx) = Fixture::new(256, 4 * MIB) else {
        return;
    };
    expect_usage_error(
        run(fx.backy().arg("frobnicate")),
        "unrecognized subcommand 'frobnicate'",
    );
    expect_usage_error(run(fx.backy().args(["init", "file"])), "<SOURCE>");
    expect_usage_error(run(fx.backy().arg("init")), "<TYPE>");
    expect_usage_error(run(fx.backy().arg("backup")), "<TAGS>");
    expect_usage_error(run(fx.backy().arg("restore")), "<TARGET>");
    expect_usage_error(run(fx.backy().arg("forget")), "--revision");
    expect_usage_error(run(fx.backy().args(["find", "-r"])), "value is required");
    expect_usage_error(
        run(fx.backy().args(["init", "nfs", "/x"])),
        "invalid value 'nfs'",
    );
    expect_usage_error(
        run(fx.backy().args(["status", "--colour"])),
        "unexpected argument '--colour'",
    );
    // No subcommand at all: the help, as a usage error.
    let r = run(&mut backy()).code(2);
    assert_no_panic(&r);
    if !r.stderr.contains("Usage: backy") {
        r.fail("expected the usage");
    }
    fx.assert_untouched();
}

#[test]
fn restore_of_a_job_without_revisions() {
    let fs = require_fs!(FsKind::Btrfs, 128);
    let src = fs.join("src.img");
    make_source(&src, 2 * MIB, 1);
    let job = fs.join("job");
    run_ok(backy_job(&job).args(["init", "file"]).arg(&src));
    let out = fs.join("out");
    expect_error(
        run(backy_job(&job).arg("restore").arg(&out)),
        &["no complete revision matches 'latest'", "backy status"],
    );
    assert!(!out.exists(), "a failed restore created its target");
    let r = expect_error(
        run(backy_job(&job).args(["restore", "-"])),
        &["no complete revision matches 'latest'"],
    );
    assert!(r.stdout_bytes.is_empty(), "restore - wrote to stdout");
    let r = expect_error(
        run(backy_job(&job).arg("find")),
        &["no complete revision matches 'latest'"],
    );
    assert!(r.stdout.is_empty(), "{r:?}");
    let status: Vec<serde_json::Value> =
        serde_json::from_str(&run_ok(backy_job(&job).args(["status", "--json"])).stdout).unwrap();
    assert!(status.is_empty(), "{status:?}");
    let files = job_files(&job);
    assert!(
        files.is_subset(
            &[".backup", ".meta", ".purge", "config"]
                .map(String::from)
                .into()
        ),
        "{files:?}"
    );
}

/// Issue 9: output that cannot be written (a full disk, a reader that went
/// away) is a clear error or a quiet non-zero exit, never a panic.
#[test]
fn output_errors_are_not_panics() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src.img");
    make_source(&src, 4 * MIB, 3);
    let job = dir.path().join("job");
    run_ok(backy_job(&job).args(["init", "file"]).arg(&src));
    run_ok(backy_job(&job).args(["backup", "--allow-copy", "daily"]));
    // The logged command line quotes what has spaces, as a shell takes it back.
    let spaced = dir.path().join("job two");
    let r = run_ok(backy_job(&spaced).args(["init", "file"]).arg(&src));
    if !r.stderr.contains(&format!(
        "INFO $ {} -b '{}' init file {}",
        env!("CARGO_BIN_EXE_backy"),
        spaced.display(),
        src.display()
    )) {
        r.fail("expected the quoted command line");
    }
    let full = || File::create("/dev/full").unwrap();
    let conf = dir.path().join("backy.conf");
    fs::write(
        &conf,
        format!(
            "global: {{base-dir: {}}}\nschedules: {{s: {{daily: {{interval: 1d, keep: 1}}}}}}\njobs: {{job: {{schedule: s, source: {{type: file, filename: {}}}}}}}\n",
            dir.path().display(),
            src.display()
        ),
    )
    .unwrap();
    fs::write(dir.path().join("status"), "[]\n").unwrap();
    let commands: [&[&str]; 5] = [
        &["find"],
        &["status"],
        &["status", "--json"],
        &["completions", "bash"],
        &["expire", "--dry-run", "-c", path_str(&conf)],
    ];
    // `run` captures stdout itself; these commands get their own.
    let with_stdout = |cmd: &mut Command, out: std::process::Stdio| {
        let o = cmd
            .stdout(out)
            .stderr(std::process::Stdio::piped())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
        assert!(
            !stderr.contains("panicked") && !stderr.contains("RUST_BACKTRACE"),
            "{cmd:?} panicked: {stderr}"
        );
        (o.status.code(), stderr)
    };
    for args in commands {
        let (code, stderr) = with_stdout(backy_job(&job).args(args), full().into());
        assert_eq!(code, Some(1), "{args:?}: {stderr}");
        assert!(
            stderr.contains("cannot write to stdout: No space left on device"),
            "{args:?}: {stderr}"
        );
        // Into a pipe whose reader is gone: quiet, 141 as a shell shows SIGPIPE.
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let (code, stderr) = with_stdout(backy_job(&job).args(args), writer.into());
        assert_eq!(code, Some(141), "{args:?}: {stderr}");
        assert!(!stderr.contains("ERROR"), "{args:?}: {stderr}");
    }
    let (code, stderr) = with_stdout(backy().arg("check").arg("-c").arg(&conf), full().into());
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("cannot write to stdout"), "{stderr}");
    // `restore - | head`: the reader going away ends the restore quietly too; a
    // full stdout names the filesystem that is full.
    let restore = || {
        let mut c = backy_job(&job);
        c.args(["restore", "-r", "0", "-"]);
        c
    };
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let (code, stderr) = with_stdout(&mut restore(), writer.into());
    assert_eq!(code, Some(141), "{stderr}");
    assert!(!stderr.contains("ERROR"), "{stderr}");
    let (code, stderr) = with_stdout(&mut restore(), full().into());
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("is full"), "{stderr}");
}

/// Issue 9: SIGTERM or SIGINT stops a backup cleanly: the incomplete revision
/// is removed as on any failure, the log says "Backy operation failed.", and the
/// exit status is 128 + the signal, on btrfs and XFS.
#[test]
fn an_interrupted_backup_says_so_and_cleans_up() {
    for kind in FsKind::REFLINK {
        for (signal, code) in [("TERM", 143), ("INT", 130)] {
            let Some(fs) = TestFs::new(kind, 512) else {
                return;
            };
            let (src, job, scratch) = (fs.join("src.img"), fs.join("job"), fs.join("scratch"));
            let fx = Fixture::build(fs, src, job, scratch, 4 * MIB, false);
            // 64 MiB read slowly (the failpoint waits per 4 MiB chunk).
            make_source(&fx.src, 64 * MIB, 7);
            let log = fx.scratch.join("backup.log");
            let mut child = fx
                .backy()
                .arg("-l")
                .arg(&log)
                .args(["backup", "daily"])
                .env("BACKY_FAILPOINT", "slow-read")
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap();
            let start = std::time::Instant::now();
            while !fs::read_to_string(&log)
                .unwrap_or_default()
                .contains("Creating revision")
            {
                assert!(
                    start.elapsed() < Duration::from_secs(30),
                    "no backup started"
                );
                thread::sleep(Duration::from_millis(20));
            }
            run_ok(Command::new("kill").args([&format!("-{signal}"), &child.id().to_string()]));
            let status = child.wait().unwrap();
            let text = fs::read_to_string(&log).unwrap();
            assert_eq!(status.code(), Some(code), "{kind} SIG{signal}:\n{text}");
            for needle in [
                format!("ERROR interrupted by SIG{signal}"),
                "INFO Backy operation failed.".to_string(),
            ] {
                assert!(
                    text.contains(needle.as_str()),
                    "{kind}: {needle:?} not in\n{text}"
                );
            }
            assert!(!text.contains("did not stop by itself"), "{kind}:\n{text}");
            fx.assert_untouched();
        }
    }
}
