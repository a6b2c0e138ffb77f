//! Restores that must not lose data (issue 9): never into the job, always
//! checked against the revision's manifest, exclusive on block devices, clean
//! on a full target filesystem; and the files `init` writes.

mod util;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use util::*;

fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

/// `backy ARGS` under `umask MASK`, from `cwd`.
fn backy_with_umask(mask: &str, cwd: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(format!("umask {mask} && exec \"$0\" \"$@\""))
        .arg(env!("CARGO_BIN_EXE_backy"))
        .args(args)
        .current_dir(cwd);
    cmd
}

// ---------------------------------------------------------------------------
// init

#[test]
fn init_writes_the_config_0640_and_the_job_directory_0750_whatever_the_umask() {
    let tmp = tempfile::tempdir().unwrap();
    for (mask, name) in [("000", "open"), ("022", "usual"), ("077", "strict")] {
        let job = tmp.path().join(name);
        let job_str = job.to_str().unwrap();
        run_ok(&mut backy_with_umask(
            mask,
            tmp.path(),
            &["-b", job_str, "init", "file", "/srv/vm.img"],
        ));
        assert_eq!(mode(&job.join("config")), 0o640, "umask {mask}");
        assert_eq!(mode(&job), 0o750, "umask {mask}");
        run_ok(&mut backy_with_umask(
            mask,
            tmp.path(),
            &[
                "-b",
                &format!("{job_str}-ceph"),
                "init",
                "ceph-rbd",
                "rbd/vm",
            ],
        ));
        assert_eq!(mode(&tmp.path().join(format!("{name}-ceph/config"))), 0o640);
    }
}

#[test]
fn init_writes_a_config_with_a_consul_token_0600() {
    let tmp = tempfile::tempdir().unwrap();
    let with = tmp.path().join("with-token");
    run_ok(
        backy_job(&with)
            .args(["init", "flyingcircus"])
            .arg("rbd/vm01.root,vm01,s3cret"),
    );
    assert!(
        fs::read_to_string(with.join("config"))
            .unwrap()
            .contains("s3cret")
    );
    assert_eq!(mode(&with.join("config")), 0o600);
    let without = tmp.path().join("without-token");
    run_ok(
        backy_job(&without)
            .args(["init", "flyingcircus"])
            .arg("rbd/vm01.root,vm01"),
    );
    assert_eq!(mode(&without.join("config")), 0o640);
}

#[test]
fn init_stores_a_relative_source_path_as_an_absolute_one() {
    let tmp = tempfile::tempdir().unwrap();
    let here = tmp.path().join("here");
    fs::create_dir_all(here.join("src")).unwrap();
    fs::write(here.join("src/one.img"), vec![7u8; 65536]).unwrap();
    let job = tmp.path().join("job");
    run_ok(
        backy()
            .arg("-b")
            .arg(&job)
            .args(["init", "file", "src/one.img"])
            .current_dir(&here),
    );
    let config = fs::read_to_string(job.join("config")).unwrap();
    let want = here.join("src/one.img");
    assert!(
        config.contains(want.to_str().unwrap()),
        "config does not hold the absolute path {}: {config}",
        want.display()
    );
    // `..` and symlinks are kept as given (only made absolute).
    let job2 = tmp.path().join("job2");
    run_ok(
        backy()
            .arg("-b")
            .arg(&job2)
            .args(["init", "file", "../here/src/one.img"])
            .current_dir(&here),
    );
    let config = fs::read_to_string(job2.join("config")).unwrap();
    assert!(
        config.contains(here.join("../here/src/one.img").to_str().unwrap()),
        "{config}"
    );
}
