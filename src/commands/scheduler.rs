//! `backy scheduler -c CONFIG`: the daemon, in the foreground.

use std::path::Path;

use crate::error::Result;

/// Runs the scheduler until it is told to stop.
pub fn run(config: &Path, _cli: &crate::cli::Cli) -> Result<()> {
    crate::daemon::run_forever(config)
}
