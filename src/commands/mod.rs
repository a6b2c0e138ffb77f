//! One module per subcommand; [`run`] dispatches.

mod backup;
mod find;
mod forget;
mod init;
mod restore;
mod status;
mod verify;

use crate::cli::{Cli, Command};
use crate::error::Result;

/// Runs the parsed command line.
pub fn run(cli: &Cli) -> Result<()> {
    let dir = &cli.backupdir;
    match &cli.command {
        Command::Init {
            source_type,
            source,
        } => init::run(dir, source_type.name(), source),
        Command::Backup { tags, allow_copy } => backup::run(dir, tags, *allow_copy),
        Command::Restore {
            revision,
            force,
            target,
        } => restore::run(dir, revision, target, *force),
        Command::Find { revision } => find::run(dir, revision),
        Command::Status { json } => status::run(dir, *json),
        Command::Verify { revision } => verify::run(dir, revision.as_deref()),
        Command::Forget { revision } => forget::run(dir, revision),
    }
}
