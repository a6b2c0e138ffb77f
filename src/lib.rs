//! backy: backups of virtual machine disk images as reflinked, sparse raw revisions.
//!
//! # The job directory (compatible with backy 2.1)
//!
//! ```text
//! <base-dir>/                 default /srv/backy
//!   .lock                     scheduler single-instance lock (flock)
//!   status                    YAML status dump written by the scheduler
//!   <job>/
//!     .backup                 backup lock (flock, exclusive while a backup runs)
//!     .purge                  shared by backup/restore/verify, exclusive to delete
//!     config                  YAML source mapping ({type: file, filename: ...})
//!     <id>                    raw sparse image of revision <id>   (0440 once complete)
//!     <id>.rev                YAML metadata (see [`revision`])    (0440 once complete)
//!     <id>.sums               checksum manifest (see [`image::sums`], ours only)
//!     last -> <id>            newest complete revision (relative symlink)
//!     last.rev -> <id>.rev
//!     backy.log               per-job log
//! ```
//!
//! A revision is complete exactly when its `.rev` carries `stats.duration`; that
//! key is written last, in one atomic rename. Anything else is incomplete, ignored
//! by every reader, and removed by the next backup.
//!
//! # Lock order
//!
//! Locks are `flock`s taken without waiting; a held lock is an error that names it.
//!
//! | operation            | `.backup`  | `.purge`   |
//! |----------------------|------------|------------|
//! | backup               | exclusive  | shared     |
//! | restore, verify, nbd | -          | shared     |
//! | expire, forget       | exclusive  | exclusive  |
//!
//! Always `.backup` before `.purge`.
//!
//! # Durability order of a backup
//!
//! 1. `<id>.rev` without `duration` (temp file, fsync, rename, fsync dir);
//! 2. `<id>` as a reflink clone of the parent, `<id>.sums` as a clone of its manifest;
//! 3. the source patches both; both are fsynced;
//! 4. the image is verified against the manifest;
//! 5. image and manifest become 0440, then `<id>.rev` with `duration` (the commit point);
//! 6. `last` and `last.rev` are replaced (unlink, symlink) and the directory fsynced.
//!
//! A crash anywhere before 5 leaves an incomplete revision; after 5, at worst a
//! stale `last`, which the next backup repairs.

pub mod cli;
pub mod commands;
pub mod config;
pub mod daemon;
pub mod error;
pub mod expire;
pub mod failpoint;
pub mod image;
pub mod interrupt;
pub mod job;
pub mod logging;
pub mod manpage;
pub mod output;
pub mod progress;
pub mod revision;
pub mod schedule;
pub mod source;
pub mod spec;
pub mod sys;
pub mod units;

pub use error::{Error, Result};
