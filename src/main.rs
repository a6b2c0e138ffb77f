//! The `backy` command: parse, run, turn the outcome into an exit code.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = backy::cli::Cli::parse();
    // Reports for scripts and people stay quiet on stderr unless asked.
    let quiet = cli.logfile.is_none() && !cli.verbose && cli.command.is_report();
    if let Err(e) = backy::logging::init(cli.logfile.as_deref(), cli.verbose, quiet) {
        eprintln!("backy: {e}");
        return ExitCode::FAILURE;
    }
    let argv: Vec<String> = std::env::args().collect();
    // The Consul token of `init flyingcircus` stays out of the log.
    tracing::info!("$ {}", backy::config::loggable_argv(&argv));
    match backy::commands::run(&cli) {
        Ok(code) => {
            tracing::info!("Backy operation complete.");
            ExitCode::from(code)
        }
        Err(e) => {
            tracing::error!("{e}");
            tracing::info!("Backy operation failed.");
            if cli.logfile.is_some() {
                eprintln!("backy: {e}");
            }
            ExitCode::from(e.exit_code())
        }
    }
}
