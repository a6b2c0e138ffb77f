//! The original Python backy 2.1.5, the peer of the interoperability tests.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::command::{is_executable, remove_backy_env, skip};

/// Path of the Python backy 2.1.5 launcher, or return from the calling test
/// when it must be skipped: `let backy21 = require_python_backy!();`.
#[macro_export]
macro_rules! require_python_backy {
    () => {
        match $crate::util::python_backy() {
            Some(path) => path,
            None => return,
        }
    };
}

/// The launcher for the original backy 2.1.5 that `scripts/setup-test-deps.sh`
/// creates: `$BACKY21`, else `target/backy21/bin/backy21` in the repository.
/// `None` (after printing why) when it is missing; panics under `CI=true`.
pub fn python_backy() -> Option<PathBuf> {
    let launcher = env::var_os("BACKY21")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("target/backy21/bin/backy21")
        });
    if is_executable(&launcher) {
        Some(launcher)
    } else {
        skip(format!(
            "the Python backy 2.1.5 launcher {} is missing (run scripts/setup-test-deps.sh, or set BACKY21)",
            launcher.display()
        ))
    }
}

/// A `Command` for the Python backy at `launcher` (see [`python_backy`]), with
/// [`BACKY_ENV_REMOVED`](super::BACKY_ENV_REMOVED) removed from its environment
/// as for ours.
pub fn python_backy_command(launcher: &Path) -> Command {
    let mut cmd = Command::new(launcher);
    remove_backy_env(&mut cmd);
    cmd
}
