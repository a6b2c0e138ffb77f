//! Fault injection for tests: `BACKY_FAILPOINT=<name>` makes the process abort
//! (as `kill -9` would, without unwinding or cleanup) when it reaches that point,
//! or, for the few faults that are not crashes, makes the code misbehave there.
//!
//! The crash points mark the steps of a backup's durability order (see the crate
//! docs), so tests can prove a crash between any two steps leaves a consistent job.

use std::ffi::OsString;
use std::sync::LazyLock;

static ACTIVE: LazyLock<Option<OsString>> = LazyLock::new(|| std::env::var_os("BACKY_FAILPOINT"));

/// Whether `BACKY_FAILPOINT` names this point.
pub fn active(name: &str) -> bool {
    ACTIVE.as_deref().is_some_and(|v| v == name)
}

/// Aborts the process if `BACKY_FAILPOINT` names this point; stops it
/// (`SIGSTOP`, as a debugger would) if it names `<name>:stop`, so a test can
/// change the world at that step (fill the filesystem, say) and let it go on
/// with `SIGCONT`.
pub fn hit(name: &str) {
    if ACTIVE
        .as_deref()
        .and_then(|v| v.to_str())
        .and_then(|v| v.strip_suffix(":stop"))
        .is_some_and(|v| v == name)
    {
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "backy: failpoint {name} reached, stopping"
        );
        let _ =
            rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::STOP);
        return;
    }
    if active(name) {
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "backy: failpoint {name} reached, aborting"
        );
        std::process::abort();
    }
}
