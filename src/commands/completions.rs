//! `backy completions SHELL`: shell completion scripts from the clap definitions.

use clap::CommandFactory;

use crate::cli::Cli;
use crate::error::Result;

/// Writes the completion script for `shell` to stdout.
pub fn run(shell: clap_complete::Shell) -> Result<()> {
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "backy", &mut script);
    crate::output::stdout(&String::from_utf8_lossy(&script))
}
