//! Command-line definitions (also the source of the man page and completions).

// The doc comments here are clap's help text, written for a terminal, where
// `[,TOKEN]` and `backy-<id>` mean what they say.
#![allow(rustdoc::broken_intra_doc_links, rustdoc::invalid_html_tags)]

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// Backup of virtual machine disk images as reflinked, sparse raw revisions.
#[derive(Debug, Parser)]
#[command(name = "backy", version, about, propagate_version = true)]
pub struct Cli {
    /// Include diagnostic (debug) messages in the log.
    #[arg(short, long, global = true)]
    pub verbose: bool,
    /// Append log lines to this file (reopened after logrotate); default: stderr.
    #[arg(short = 'l', long = "logfile", value_name = "LOGFILE", global = true)]
    pub logfile: Option<PathBuf>,
    /// The job directory.
    #[arg(
        short = 'b',
        long = "backupdir",
        value_name = "DIR",
        default_value = ".",
        global = true
    )]
    pub backupdir: PathBuf,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Source types `init` knows (defined with the source configuration).
pub use crate::config::SourceKind as SourceType;

/// The actions.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a job directory and its config (refused if a config exists).
    Init {
        /// The source type.
        #[arg(value_name = "TYPE")]
        source_type: SourceType,
        /// The source: a path, POOL/IMAGE, or POOL/IMAGE,VM[,TOKEN].
        source: String,
    },
    /// Make one new revision.
    Backup {
        /// Comma-separated tags for retention, as one argument (e.g. daily,weekly).
        tags: String,
        /// Where the filesystem cannot reflink, make a full sparse copy of the parent
        /// instead of refusing (each revision then costs its full size).
        #[arg(long)]
        allow_copy: bool,
    },
    /// Copy a revision to a file, a block device, or - (stdout).
    Restore {
        /// The revision (see SPEC in the man page).
        #[arg(
            short,
            long,
            value_name = "SPEC",
            allow_negative_numbers = true,
            default_value = "latest"
        )]
        revision: String,
        /// Overwrite an existing non-empty target file (never a file of the job).
        #[arg(short, long)]
        force: bool,
        /// Check every block against the revision's checksum manifest while
        /// restoring; stop at the first mismatch (a partial file target is removed).
        #[arg(long)]
        verify: bool,
        /// Target file or device, or - for stdout.
        target: PathBuf,
    },
    /// Print the absolute path of a revision's image.
    Find {
        /// The revision.
        #[arg(
            short,
            long,
            value_name = "SPEC",
            allow_negative_numbers = true,
            default_value = "latest"
        )]
        revision: String,
    },
    /// Show all revisions.
    Status {
        /// Print JSON instead of the table.
        #[arg(long)]
        json: bool,
    },
    /// Check revisions against their checksum manifests.
    Verify {
        /// Only this revision (default: every complete revision, newest first).
        #[arg(short, long, value_name = "SPEC", allow_negative_numbers = true)]
        revision: Option<String>,
        /// Check only this percentage of each revision's blocks, chosen at
        /// random (at least one); the check is recorded as partial.
        #[arg(long, value_name = "PERCENT", value_parser = parse_percent)]
        sample: Option<f64>,
    },
    /// Delete one revision.
    ///
    /// A protected revision and the newest complete revision are deleted only
    /// with --force.
    Forget {
        /// The revision.
        #[arg(short, long, value_name = "SPEC", allow_negative_numbers = true)]
        revision: String,
        /// Also delete a protected revision, the newest complete revision, or
        /// a damaged revision (unreadable metadata or a missing image, named by
        /// its exact id; `status` lists them).
        #[arg(long)]
        force: bool,
        /// Say which revision would be deleted and how much space that frees;
        /// change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Mark revisions distrusted: the next backup compares the whole source
    /// against such a parent instead of trusting its checksums.
    ///
    /// Without -r, -f or -u every complete revision is distrusted, after a
    /// question when stdin is a terminal (--yes for scripts). Damaged
    /// revisions are skipped with a note.
    Distrust {
        /// Only this revision.
        #[arg(
            short,
            long,
            value_name = "SPEC",
            allow_negative_numbers = true,
            conflicts_with_all = ["from", "until"]
        )]
        revision: Option<String>,
        /// Only revisions made on or after this UTC day (YYYY-MM-DD) or time.
        #[arg(short, long, value_name = "DATE", value_parser = crate::spec::DateBound::parse)]
        from: Option<crate::spec::DateBound>,
        /// Only revisions made on or before this UTC day (YYYY-MM-DD) or time.
        #[arg(short, long, value_name = "DATE", value_parser = crate::spec::DateBound::parse)]
        until: Option<crate::spec::DateBound>,
        /// Distrust all revisions without asking.
        #[arg(short, long)]
        yes: bool,
    },
    /// Protect a revision: retention never deletes it, and forget refuses it
    /// without --force.
    Protect {
        /// The revision.
        #[arg(short, long, value_name = "SPEC", allow_negative_numbers = true)]
        revision: String,
        /// Why (shown by status and expire --dry-run).
        #[arg(long, value_name = "TEXT")]
        reason: Option<String>,
    },
    /// Hand a protected revision back to retention.
    Unprotect {
        /// The revision.
        #[arg(short, long, value_name = "SPEC", allow_negative_numbers = true)]
        revision: String,
    },
    /// After a plain copy of the job directory (cp, rsync): share each
    /// revision's unchanged blocks with its parent again.
    ///
    /// The manifests say which blocks are equal; the kernel compares the bytes
    /// before it shares them (FIDEDUPERANGE), so content never changes. Safe to
    /// interrupt and to run again (a second run only checks).
    Reshare,
    /// Write an `rbd export-diff` (v1) stream that takes an RBD image from one
    /// revision to another, to stdout, for `rbd import-diff - POOL/IMAGE`.
    ///
    /// Only the blocks whose checksums differ are sent, in either direction in
    /// time. The image must hold revision FROM and a snapshot `backy-<FROM id>`;
    /// the import creates the snapshot `backy-<SPEC id>`. Without --from, a full
    /// diff for an empty image.
    ExportDiff {
        /// The revision the image is to hold afterwards.
        #[arg(
            short,
            long,
            value_name = "SPEC",
            allow_negative_numbers = true,
            default_value = "latest"
        )]
        revision: String,
        /// The revision the image holds now (its snapshot backy-<id> must exist).
        #[arg(long, value_name = "SPEC", allow_negative_numbers = true)]
        from: Option<String>,
    },
    /// Run the scheduler daemon in the foreground.
    Scheduler {
        /// The scheduler configuration.
        #[arg(short, long, value_name = "CONFIG", default_value = "/etc/backy.conf")]
        config: PathBuf,
    },
    /// Nagios check of all jobs (exit 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN).
    Check {
        /// The scheduler configuration.
        #[arg(short, long, value_name = "CONFIG", default_value = "/etc/backy.conf")]
        config: PathBuf,
    },
    /// Write the state of every job for Prometheus (node_exporter's textfile format).
    Metrics {
        /// The scheduler configuration.
        #[arg(short, long, value_name = "CONFIG", default_value = "/etc/backy.conf")]
        config: PathBuf,
        /// Replace this file atomically (mode 0644) instead of printing to stdout,
        /// e.g. /var/lib/prometheus/node-exporter/backy.prom.
        #[arg(long, value_name = "PATH")]
        textfile: Option<PathBuf>,
    },
    /// Apply the job's retention rules now (the scheduler does this after each run).
    Expire {
        /// The scheduler configuration that holds the job's schedule.
        #[arg(short, long, value_name = "CONFIG", default_value = "/etc/backy.conf")]
        config: PathBuf,
        /// Show, per revision, which tag keeps it or why it goes, and how much
        /// space the deletions free; change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Serve the job's revisions to NBD clients (nbd-client, qemu-img, nbdcopy, nbdfuse).
    ///
    /// Export names are revision SPECs; the empty name is the newest revision.
    /// Runs in the foreground until SIGINT or SIGTERM.
    NbdServer {
        /// Address to listen on (a non-loopback address gets a warning: NBD has
        /// no authentication).
        #[arg(short = 'H', long, value_name = "ADDR", default_value = "127.0.0.1")]
        host: String,
        /// TCP port (0 picks a free port; the log says which).
        #[arg(short, long, value_name = "PORT", default_value_t = 9000)]
        port: u16,
        /// Listen on this Unix socket instead of TCP.
        #[arg(long, value_name = "PATH", conflicts_with_all = ["host", "port"])]
        socket: Option<PathBuf>,
        /// Make exports writable through a throw-away reflink overlay (so a
        /// filesystem with a dirty journal can be mounted); the revision never changes.
        #[arg(long)]
        overlay: bool,
        /// Connections served at once; more are refused with a message.
        #[arg(long, value_name = "N", default_value_t = 16)]
        max_connections: usize,
    },
    /// Write revisions to stdout as one stream of the blocks that changed, for `receive`.
    ///
    /// The revisions after --base up to -r, oldest first; each carries only the
    /// 4 KiB pages that differ from the one before it (found from the checksum
    /// manifests and the shared extents, without reading unchanged data).
    /// Intended use: `backy send | ssh HOST backy -b DIR receive`.
    Send {
        /// The last revision to send (default: the newest).
        #[arg(short, long, value_name = "SPEC", allow_negative_numbers = true)]
        revision: Option<String>,
        /// The revision the target holds already (the stream continues from
        /// it); default: none, the first revision is sent whole. Empty means none.
        #[arg(long, value_name = "SPEC", allow_negative_numbers = true)]
        base: Option<String>,
    },
    /// Read a `send` stream from stdin into this job (created if missing).
    ///
    /// Each revision is a reflink clone of its parent patched with the pages
    /// sent, verified against the checksums that came with it, and completed
    /// like a backup. Revisions held already are skipped after their manifest
    /// is compared; a base held with another manifest, or distrusted, is refused.
    Receive {
        /// Check the whole stream and say what would be received; change nothing.
        #[arg(long, conflicts_with = "have")]
        dry_run: bool,
        /// Print the complete revisions held (ids and manifest digests) as JSON
        /// and read no stream.
        #[arg(long)]
        have: bool,
        /// With --have: print only the newest revision's id (empty if none),
        /// for `send --base`.
        #[arg(long, requires = "have")]
        newest: bool,
    },
    /// Print a shell completion script.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

impl Command {
    /// Commands whose output is a report on stdout (no progress log needed).
    pub fn is_report(&self) -> bool {
        matches!(
            self,
            Command::Find { .. }
                | Command::Status { .. }
                | Command::Check { .. }
                | Command::Metrics { .. }
                | Command::Completions { .. }
                | Command::Receive { have: true, .. }
        )
    }
}

/// A percentage for `verify --sample`: more than 0, at most 100.
fn parse_percent(text: &str) -> Result<f64, String> {
    let value: f64 =
        text.trim_end_matches('%').trim().parse().map_err(|_| {
            format!("'{text}' is not a number; give a percentage such as 10 or 0.5")
        })?;
    if value > 0.0 && value <= 100.0 {
        Ok(value)
    } else {
        Err(format!(
            "{text} is not a percentage above 0 and at most 100; give for example 10"
        ))
    }
}
