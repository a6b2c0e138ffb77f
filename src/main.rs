//! The `backy` command: parse, run, turn the outcome into an exit code.

use std::io::Write;
use std::process::ExitCode;

use backy::cli::Command;
use clap::Parser;

fn main() -> ExitCode {
    let cli = backy::cli::Cli::parse();
    // Reports for scripts and people stay quiet on stderr unless asked.
    let quiet = cli.logfile.is_none() && !cli.verbose && cli.command.is_report();
    if let Err(e) = backy::logging::init(cli.logfile.as_deref(), cli.verbose, quiet) {
        let _ = writeln!(std::io::stderr(), "backy: {}", e.report());
        return ExitCode::FAILURE;
    }
    // The Consul token of `init flyingcircus` stays out of the log.
    let argv: Vec<String> = std::env::args_os()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    tracing::info!(
        "$ {}",
        backy::logging::shell_words(backy::config::loggable_argv(&argv))
    );
    // Long commands stop cleanly on SIGTERM/SIGINT (the scheduler has
    // its own handling; short reports keep the default, dying at once).
    let interruptible = matches!(
        cli.command,
        Command::Backup { .. }
            | Command::Restore { .. }
            | Command::Verify { .. }
            | Command::Expire { .. }
            | Command::Forget { .. }
            | Command::Init { .. }
            | Command::Send { .. }
            | Command::Receive { .. }
    );
    if interruptible && let Err(e) = backy::interrupt::install() {
        tracing::warn!("{}", e.report());
    }
    match backy::commands::run(&cli) {
        Ok(code) => {
            tracing::info!("Backy operation complete.");
            ExitCode::from(code)
        }
        // A reader that went away (`backy find | head`): stop quietly.
        Err(e) if e.is_broken_pipe() => ExitCode::from(e.exit_code()),
        Err(e) => {
            // The message and the causes it does not already name, on one line.
            let report = e.report();
            tracing::error!("{report}");
            tracing::info!("Backy operation failed.");
            if cli.logfile.is_some() {
                let _ = writeln!(std::io::stderr(), "backy: {report}");
            }
            ExitCode::from(e.exit_code())
        }
    }
}
