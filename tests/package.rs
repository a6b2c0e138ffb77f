//! The Debian package `scripts/build-deb.sh` builds holds what an operator
//! installs (binary, man page, completions, systemd units, logrotate, example
//! configuration), and the binary extracted from it runs.

mod util;

use std::fs;
use std::io::Read;
use std::path::Path;
use std::process::Command;

use util::{find_tool, run_ok, skip};

/// Every file the package must contain, as `dpkg-deb -c` lists it.
const CONTENTS: &[&str] = &[
    "./usr/bin/backy",
    "./usr/share/man/man1/backy.1.gz",
    "./usr/share/bash-completion/completions/backy",
    "./usr/share/zsh/vendor-completions/_backy",
    "./usr/share/fish/vendor_completions.d/backy.fish",
    "./lib/systemd/system/backy-scheduler.service",
    "./lib/systemd/system/backy-metrics.service",
    "./lib/systemd/system/backy-metrics.timer",
    "./etc/logrotate.d/backy",
    "./usr/share/doc/backy/examples/backy.conf",
    "./usr/share/doc/backy/copyright",
    "./usr/share/doc/backy/changelog.gz",
];

fn gunzip(path: &Path) -> Vec<u8> {
    let out = run_ok(Command::new("gzip").arg("-dc").arg(path));
    out.stdout_bytes
}

#[test]
fn debian_package_holds_what_an_operator_installs_and_runs() {
    for tool in ["dpkg-deb", "dpkg", "gzip", "strip"] {
        if find_tool(tool).is_none() {
            return skip(format!(
                "`{tool}` not found (needed to build the Debian package)"
            ))
            .unwrap_or(());
        }
    }
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = tempfile::tempdir().unwrap();
    let built = run_ok(
        Command::new(repo.join("scripts/build-deb.sh"))
            .arg("--binary")
            .arg(env!("CARGO_BIN_EXE_backy"))
            .arg("--out")
            .arg(out.path()),
    );
    let deb = Path::new(built.stdout.trim());
    assert!(deb.is_file(), "build-deb.sh printed {deb:?}, not a file");
    assert!(
        deb.file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .starts_with("backy_"),
        "{deb:?}"
    );

    let listing = run_ok(Command::new("dpkg-deb").arg("-c").arg(deb));
    let listing = listing.stdout;
    for want in CONTENTS {
        assert!(
            listing.lines().any(|l| l.ends_with(want)),
            "the package lacks {want}:\n{listing}"
        );
    }
    assert!(
        listing.lines().all(|l| l.contains(" root/root ")),
        "files in the package must belong to root:\n{listing}"
    );

    let control = run_ok(Command::new("dpkg-deb").args(["-f"]).arg(deb));
    let control = control.stdout;
    for field in ["Package: backy", "Depends: libc6", "Architecture: "] {
        assert!(
            control.contains(field),
            "control lacks '{field}':\n{control}"
        );
    }
    let conffiles = run_ok(Command::new("sh").arg("-c").arg(format!(
        "dpkg-deb --ctrl-tarfile '{}' | tar -xO ./conffiles",
        deb.display()
    )));
    assert_eq!(conffiles.stdout.trim(), "/etc/logrotate.d/backy");

    let root = tempfile::tempdir().unwrap();
    run_ok(Command::new("dpkg-deb").arg("-x").arg(deb).arg(root.path()));

    let binary = root.path().join("usr/bin/backy");
    let version = run_ok(Command::new(&binary).arg("--version"));
    assert!(
        version.stdout.contains(env!("CARGO_PKG_VERSION")),
        "{version:?}"
    );
    // The extracted binary does real work: init a job and show its (empty) status.
    let job = tempfile::tempdir().unwrap();
    let image = job.path().join("disk.img");
    fs::write(&image, b"data").unwrap();
    let job_dir = job.path().join("job");
    run_ok(
        Command::new(&binary)
            .arg("-b")
            .arg(&job_dir)
            .args(["init", "file"])
            .arg(&image),
    );
    run_ok(Command::new(&binary).arg("-b").arg(&job_dir).arg("status"));

    assert_eq!(
        gunzip(&root.path().join("usr/share/man/man1/backy.1.gz")),
        fs::read(repo.join("man/backy.1")).unwrap(),
        "the packaged man page is not man/backy.1"
    );
    for (packaged, committed) in [
        (
            "usr/share/bash-completion/completions/backy",
            "completions/backy.bash",
        ),
        (
            "usr/share/zsh/vendor-completions/_backy",
            "completions/_backy",
        ),
        (
            "usr/share/fish/vendor_completions.d/backy.fish",
            "completions/backy.fish",
        ),
        ("etc/logrotate.d/backy", "contrib/logrotate.d/backy"),
        (
            "lib/systemd/system/backy-metrics.timer",
            "contrib/backy-metrics.timer",
        ),
        (
            "usr/share/doc/backy/examples/backy.conf",
            "contrib/backy.conf.example",
        ),
    ] {
        assert_eq!(
            fs::read(root.path().join(packaged)).unwrap(),
            fs::read(repo.join(committed)).unwrap(),
            "{packaged} differs from {committed}"
        );
    }
    for name in ["backy-scheduler.service", "backy-metrics.service"] {
        let mut unit = String::new();
        fs::File::open(root.path().join("lib/systemd/system").join(name))
            .unwrap()
            .read_to_string(&mut unit)
            .unwrap();
        assert!(
            unit.contains("ExecStart=/usr/bin/backy "),
            "the packaged {name} must run the packaged binary:\n{unit}"
        );
        assert!(!unit.contains("/usr/local/bin/backy"), "{unit}");
    }
}
