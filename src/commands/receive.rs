//! `backy receive [--dry-run | --have [--newest]]`: a send stream from stdin
//! into the job.

use std::path::Path;

use crate::error::Result;
use crate::output::stdout_line;
use crate::replicate::receive::{self, Options, Outcome};
use crate::units::format_bytes;

/// What `receive` was asked to do.
#[derive(Debug, Clone, Copy)]
pub enum Mode {
    /// Receive the stream on stdin.
    Receive,
    /// Check the stream and say what would happen.
    DryRun,
    /// Print what the job holds, as JSON.
    Have,
    /// Print the newest complete revision's id (empty when none).
    Newest,
}

/// Runs `receive` in `mode` on the job in `dir`.
pub fn run(dir: &Path, mode: Mode) -> Result<()> {
    match mode {
        Mode::Have => {
            let held = receive::held(dir)?;
            let text = serde_json::to_string_pretty(&held).unwrap_or_default();
            stdout_line(&text)
        }
        Mode::Newest => {
            let held = receive::held(dir)?;
            stdout_line(held.last().map_or("", |h| h.id.as_str()))
        }
        Mode::Receive | Mode::DryRun => {
            let dry_run = matches!(mode, Mode::DryRun);
            let input = std::io::BufReader::with_capacity(
                1 << 20,
                receive::ReadAhead::new(std::io::stdin())?,
            );
            let summary = receive::receive(dir, input, Options { dry_run })?;
            let would = if dry_run { "would be " } else { "" };
            if summary.created {
                report(
                    dry_run,
                    &format!("job directory {} {would}created", dir.display()),
                )?;
            }
            if summary.config_installed {
                report(dry_run, &format!("the sender's config {would}installed"))?;
            }
            // A real run logged each revision as it was received or skipped.
            for (id, outcome) in summary.revisions.iter().filter(|_| dry_run) {
                let line = match outcome {
                    Outcome::Received { blocks, data_bytes } => format!(
                        "revision {id} {would}received: {blocks} changed blocks, {} of data",
                        format_bytes(*data_bytes)
                    ),
                    Outcome::Skipped => format!(
                        "revision {id} would be skipped: held already with the same checksum manifest"
                    ),
                };
                report(dry_run, &line)?;
            }
            if summary.revisions.is_empty() {
                report(dry_run, "the stream holds no revisions")?;
            }
            Ok(())
        }
    }
}

/// A dry run's plan goes to stdout; a real run's outcome to the log.
fn report(dry_run: bool, line: &str) -> Result<()> {
    if dry_run {
        stdout_line(line)
    } else {
        tracing::info!("{line}");
        Ok(())
    }
}
