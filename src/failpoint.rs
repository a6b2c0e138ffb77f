//! Crash injection for tests: `BACKY_FAILPOINT=<name>` makes the process abort
//! (as `kill -9` would, without unwinding or cleanup) when it reaches that point.
//!
//! The points mark the steps of a backup's durability order (see the crate docs),
//! so tests can prove a crash between any two steps leaves a consistent job.

/// Aborts the process if `BACKY_FAILPOINT` names this point.
pub fn hit(name: &str) {
    if std::env::var_os("BACKY_FAILPOINT").is_some_and(|v| v == name) {
        eprintln!("backy: failpoint {name} reached, aborting");
        std::process::abort();
    }
}
