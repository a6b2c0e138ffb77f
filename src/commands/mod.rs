//! One module per subcommand; [`run`] dispatches.

mod backup;
mod check;
mod completions;
mod distrust;
mod expire;
mod export_diff;
mod find;
mod forget;
mod init;
mod nbd_server;
mod protect;
mod receive;
mod reshare;
mod restore;
mod scheduler;
mod send;
mod status;
mod verify;

use crate::cli::{Cli, Command};
use crate::error::Result;

/// Runs the parsed command line; returns the exit code of a successful run
/// (0, or `check`'s Nagios code).
pub fn run(cli: &Cli) -> Result<u8> {
    let dir = &cli.backupdir;
    let done = match &cli.command {
        Command::Check { config } => return check::run(config),
        Command::Scheduler { config } => scheduler::run(config, cli),
        Command::Expire { config, dry_run } => expire::run(dir, config, *dry_run),
        Command::Completions { shell } => completions::run(*shell),
        Command::Init {
            source_type,
            source,
        } => init::run(dir, *source_type, source),
        Command::Backup { tags, allow_copy } => backup::run(dir, tags, *allow_copy),
        Command::Restore {
            revision,
            force,
            verify,
            target,
        } => restore::run(
            dir,
            revision,
            target,
            restore::Options {
                force: *force,
                verify: *verify,
                log_on_stderr: cli.logfile.is_none(),
            },
        ),
        Command::Find { revision } => find::run(dir, revision),
        Command::Reshare => reshare::run(dir),
        Command::ExportDiff { revision, from } => export_diff::run(dir, revision, from.as_deref()),
        Command::Status { json } => status::run(dir, *json),
        Command::Verify { revision, sample } => verify::run(dir, revision.as_deref(), *sample),
        Command::Forget {
            revision,
            force,
            dry_run,
        } => forget::run(dir, revision, *force, *dry_run),
        Command::Distrust {
            revision,
            from,
            until,
            yes,
        } => distrust::run(
            dir,
            &distrust::Selection {
                revision: revision.clone(),
                from: *from,
                until: *until,
            },
            *yes,
        ),
        Command::Protect { revision, reason } => protect::protect(dir, revision, reason.as_deref()),
        Command::Unprotect { revision } => protect::unprotect(dir, revision),
        Command::Send { revision, base } => send::run(dir, revision.as_deref(), base.as_deref()),
        Command::Receive {
            dry_run,
            have,
            newest,
        } => receive::run(
            dir,
            match (*have, *newest, *dry_run) {
                (true, true, _) => receive::Mode::Newest,
                (true, false, _) => receive::Mode::Have,
                (false, _, true) => receive::Mode::DryRun,
                (false, _, false) => receive::Mode::Receive,
            },
        ),
        Command::NbdServer {
            host,
            port,
            socket,
            overlay,
            max_connections,
        } => nbd_server::run(
            dir,
            &nbd_server::Options {
                host: host.clone(),
                port: *port,
                socket: socket.clone(),
                overlay: *overlay,
                max_connections: *max_connections,
            },
        ),
    };
    done.map(|()| 0)
}
