//! The library's error type: every variant names the thing that failed and, where
//! the operator can do something about it, what to do.

use std::io;
use std::path::PathBuf;

/// Result alias for the library.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in backy's library.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An I/O operation on a named file failed.
    #[error("{what} {}: {}{}", path.display(), source, io_hint(source))]
    Io {
        /// What we were doing ("cannot read source", ...).
        what: &'static str,
        /// The file concerned.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The job's `config` is missing or malformed.
    #[error("{0}")]
    Config(String),
    /// A `.rev` file cannot be read.
    #[error(
        "cannot read revision metadata {}: {reason}; repair the file or move it out of the job directory",
        path.display()
    )]
    BadRevision {
        /// The `.rev` file.
        path: PathBuf,
        /// Why it cannot be read.
        reason: String,
    },
    /// `-r SPEC` matches nothing.
    #[error("no complete revision matches '{spec}'; run 'backy status' to list revisions")]
    NoSuchRevision {
        /// The spec given.
        spec: String,
    },
    /// `-r SPEC` is an ambiguous prefix.
    #[error("revision '{spec}' is ambiguous: it matches {}; give more characters", candidates.join(", "))]
    AmbiguousRevision {
        /// The spec given.
        spec: String,
        /// The revisions it matches.
        candidates: Vec<String>,
    },
    /// `-r SPEC` is malformed.
    #[error("invalid revision '{spec}': {reason}")]
    BadSpec {
        /// The spec given.
        spec: String,
        /// Why it is rejected.
        reason: &'static str,
    },
    /// Another process holds a lock we need.
    #[error("{what} is locked by another backy process ({}); wait for it to finish and try again", path.display())]
    Locked {
        /// What is locked ("job /srv/backy/vm01").
        what: String,
        /// The lock file.
        path: PathBuf,
    },
    /// The job directory's filesystem cannot reflink and copies were not allowed.
    #[error(
        "the job directory {} is on {fs}, which cannot make reflink copies; move the job to btrfs, XFS (reflink=1) or ZFS, or allow full copies with --allow-copy (each revision then uses the full image size)",
        path.display()
    )]
    NoReflink {
        /// Filesystem name.
        fs: String,
        /// The job directory.
        path: PathBuf,
    },
    /// The source changed size while it was read.
    #[error(
        "source {} changed size during the backup (from {before} to {after} bytes); freeze the VM or snapshot the source and run the backup again",
        path.display()
    )]
    SourceChangedSize {
        /// The source.
        path: PathBuf,
        /// Size at the start.
        before: u64,
        /// Size at the end.
        after: u64,
    },
    /// The new image does not match the checksums taken from the source.
    #[error("verification of revision {id} failed: {detail}; the revision was removed")]
    VerificationFailed {
        /// The revision.
        id: String,
        /// Which blocks or sizes differ.
        detail: String,
    },
    /// A revision that is not complete was asked for.
    #[error(
        "revision {id} is incomplete (a backup is running or crashed); choose a complete revision"
    )]
    Incomplete {
        /// The revision.
        id: String,
    },
    /// A restore would overwrite existing data.
    #[error("restore target {} exists and is not empty; use --force to overwrite it", path.display())]
    TargetExists {
        /// The target.
        path: PathBuf,
    },
    /// Another scheduler holds the base directory's lock.
    #[error("another backy scheduler is running on {} (it holds {}); stop it first", base_dir.display(), lock.display())]
    SchedulerRunning {
        /// The base directory.
        base_dir: PathBuf,
        /// Its lock file.
        lock: PathBuf,
    },
    // Scheduler, output and interruption (issue 9, daemon side).
    /// The scheduler's `base-dir` does not exist (an unmounted backup volume).
    #[error(
        "base-dir {} does not exist; mount the backup volume there or create the directory (mkdir -p), then try again",
        path.display()
    )]
    BaseDirMissing {
        /// The configured base directory.
        path: PathBuf,
    },
    /// Writing a command's output to stdout failed (a full disk, a closed pipe).
    #[error("cannot write to stdout: {}", plain_io(source))]
    Output {
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The command was stopped by SIGTERM or SIGINT.
    #[error("interrupted by {name}; the operation was stopped before it completed")]
    Interrupted {
        /// The signal's name (`SIGTERM`).
        name: &'static str,
        /// Its number.
        number: i32,
    },
    /// Anything else, already phrased for the operator.
    #[error("{0}")]
    Other(String),
}

impl Error {
    /// The process exit code for this error: 69 for a running scheduler (as the
    /// original, for init scripts), 128 + the signal for an interrupted command
    /// and 141 for a closed output pipe (as a shell shows them), else 1.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::SchedulerRunning { .. } => 69,
            // As a shell reports a command that SIGPIPE or another signal ended.
            Error::Output { source } if source.kind() == io::ErrorKind::BrokenPipe => 141,
            Error::Interrupted { number, .. } => 128u8.saturating_add(*number as u8),
            _ => 1,
        }
    }

    /// Wraps an I/O error with what we were doing and the file concerned.
    pub fn io(what: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { what, path, source }
    }
}

/// An OS error's message without the " (os error N)" suffix.
pub fn plain_io(err: &io::Error) -> String {
    let text = err.to_string();
    match text.rfind(" (os error ") {
        Some(i) if text.ends_with(')') => text[..i].to_string(),
        _ => text,
    }
}

impl Error {
    /// Whether the error is a closed output pipe, which ends a command quietly.
    pub fn is_broken_pipe(&self) -> bool {
        matches!(self, Error::Output { source } if source.kind() == io::ErrorKind::BrokenPipe)
    }
}

fn io_hint(err: &io::Error) -> &'static str {
    match err.raw_os_error() {
        Some(28) => " (the filesystem is full: free space or expire revisions, then run again)",
        Some(13) | Some(1) => " (check the file's permissions)",
        _ => "",
    }
}
