//! What can go wrong talking to Ceph, as data: the failed rbd command with its
//! exit status and stderr, the diff stream's own error, librbd's errno.

use std::io;
use std::process::ExitStatus;

use super::diff::DiffError;

/// A failure of the `ceph-rbd` source.
#[derive(Debug, thiserror::Error)]
pub enum RbdError {
    /// The rbd program could not be started.
    #[error("cannot run '{program}': {source}; install ceph-common or set BACKY_RBD")]
    Spawn {
        /// The program (`$BACKY_RBD` or `rbd`).
        program: String,
        /// Why it did not start.
        #[source]
        source: io::Error,
    },
    /// An rbd command ran and failed.
    #[error(transparent)]
    Command(#[from] CommandError),
    /// An rbd command succeeded, but what it printed is not what we expect.
    #[error("cannot read 'rbd {command}' output for {image}: {what}")]
    Output {
        /// The subcommand (`snap ls`).
        command: &'static str,
        /// The image concerned.
        image: String,
        /// What is wrong with the output.
        what: String,
    },
    /// Reading rbd's stream failed, and rbd said why on stderr.
    #[error("{source} (rbd said: {stderr})")]
    WithStderr {
        /// The consumer's error.
        #[source]
        source: Box<crate::error::Error>,
        /// rbd's stderr, trimmed.
        stderr: String,
    },
    /// The `rbd export-diff` stream was malformed or could not be applied.
    #[error("rbd export-diff of {snapshot}: {source}")]
    Diff {
        /// The snapshot the diff ends at.
        snapshot: String,
        /// What the parser or applier found.
        #[source]
        source: DiffError,
    },
    /// The snapshot a backup just made is not listed.
    #[error("snapshot {snapshot} is missing right after 'rbd snap create' made it")]
    SnapshotVanished {
        /// `pool/image@snap`.
        snapshot: String,
    },
    /// The image and its snapshot disagree in size.
    #[error("the new image has {image_size} bytes but snapshot {snapshot} has {snapshot_size}")]
    SizeMismatch {
        /// `pool/image@snap`.
        snapshot: String,
        /// The new revision's image size.
        image_size: u64,
        /// The snapshot's size.
        snapshot_size: u64,
    },
    /// librados or librbd could not be loaded (only sampled verification needs them).
    #[error("cannot load {library} for sampled verification: {reason}; install {packages}")]
    Load {
        /// The shared library.
        library: &'static str,
        /// The loader's message.
        reason: String,
        /// The Debian packages that provide it.
        packages: &'static str,
    },
    /// A symbol is missing from librados or librbd.
    #[error("librbd: symbol {symbol} missing: {reason}")]
    Symbol {
        /// The C function.
        symbol: &'static str,
        /// The loader's message.
        reason: String,
    },
    /// A librados or librbd call returned an error.
    #[error("librbd: {call} failed: {source}")]
    Call {
        /// The C function.
        call: &'static str,
        /// The errno it returned.
        #[source]
        source: io::Error,
    },
    /// A job whose source is not Ceph was handed to the Ceph source.
    #[error("the {kind} source is not a Ceph source")]
    NotCeph {
        /// The source's type (`file`).
        kind: &'static str,
    },
    /// A name passed to librbd contains a NUL byte.
    #[error("'{0}' contains a NUL byte")]
    NulByte(String),
}

/// An rbd command that ran and failed, with what it said (after ripgrep's
/// `CommandError`, which keeps stderr as data).
#[derive(Debug)]
pub struct CommandError {
    /// The arguments after `rbd`.
    pub args: Vec<String>,
    /// How it ended, when it could be waited for.
    pub status: Option<ExitStatus>,
    /// Its stderr, trimmed.
    pub stderr: String,
}

impl std::error::Error for CommandError {}

impl std::fmt::Display for CommandError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use std::os::unix::process::ExitStatusExt;
        write!(f, "'rbd {}' ", self.args.join(" "))?;
        match self.status {
            Some(s) => match (s.code(), s.signal()) {
                (Some(code), _) => write!(f, "exited with status {code}")?,
                (None, Some(sig)) => write!(f, "was killed by signal {sig}")?,
                _ => write!(f, "ended with {s}")?,
            },
            None => write!(f, "could not be waited for")?,
        }
        if !self.stderr.is_empty() {
            write!(f, ": {}", self.stderr)?;
        }
        Ok(())
    }
}
