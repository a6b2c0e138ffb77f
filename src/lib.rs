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
//!     .meta                   held for each `.rev` write (a read-modify-write)
//!     .reshare.<pid>          temporary file of a running `reshare` on btrfs
//!     config                  YAML source mapping ({type: file, filename: ...})
//!     <id>                    raw sparse image of revision <id>   (0440 once complete)
//!     <id>.rev                YAML metadata (see [`revision`])    (0440 once complete)
//!     <id>.sums               checksum manifest (see [`image::sums`], ours only)
//!     last -> <id>            newest complete revision (relative symlink)
//!     last.rev -> <id>.rev    (a file or directory there is renamed to `.bak-<time>`)
//!     backy.log               per-job log
//!     .nbd-overlay.<id>.<pid>.<n>  throw-away overlay of a running `nbd-server --overlay`
//! ```
//!
//! A revision is complete exactly when its `.rev` carries `stats.duration`; that
//! key is written last, in one atomic rename. Anything else is incomplete, ignored
//! by every reader, and removed by the next backup.
//!
//! A revision whose `.rev` cannot be read, or a complete one whose image is
//! missing, is *damaged* ([`job::Damaged`]): shown by `status` and `check`, never
//! chosen, never a parent, never removed except by `forget --force`. A backup
//! cannot tell whether it is complete, so it never deletes it.
//!
//! # The order of revisions
//!
//! One order everywhere ([`revision::order`]): by timestamp, then by id. The
//! newest complete revision is what `-r 0`, `last`/`latest`, the `last` links,
//! the next backup's parent, retention and the scheduler's SLA mean. A backup
//! never dates its revision before its parent ([`revision::timestamp_after`]):
//! when the clock is behind (it was ahead, then corrected) it warns and dates the
//! new revision just after the parent, so the newest is always the one made last.
//! A revision dated in the future proves nothing about the job's freshness, so
//! the SLA counts the scheduler's last successful run instead
//! ([`schedule::plan::sla_reference`]).
//!
//! # Lock order
//!
//! Locks are `flock`s taken without waiting; a held lock is an error that names
//! the job, the process holding it (`backy verify (pid 4242)`, from `/proc/locks`)
//! and the lock file. Once a command holds its locks it reads the revisions
//! again, so what it chooses (a SPEC, a parent, what to expire) is what the lock
//! protects: a reader started after a `forget` finds no such revision.
//!
//! | operation                          | `.backup`  | `.purge`   |
//! |------------------------------------|------------|------------|
//! | backup, receive, reshare           | exclusive  | shared     |
//! | restore, verify, send, export-diff | -          | shared     |
//! | distrust, (un)protect              | -          | shared     |
//! | expire, forget                     | exclusive  | exclusive  |
//! | nbd-server                         | -          | -          |
//!
//! Always `.backup` before `.purge`. Each `.rev` write also takes `.meta`
//! exclusively for its few milliseconds (waiting up to 30 s for another
//! writer), after the others and never while waiting for one of them.
//!
//! # The lifecycle of a revision
//!
//! [`job::Job`] owns it; nothing else writes a `.rev`. A backup *begins* a
//! revision ([`job::Job::begin_revision`]: the incomplete `.rev`) and *commits*
//! it ([`job::Job::commit_revision`]: `duration`, then `last`). A complete
//! revision's metadata changes only through [`job::Job::update_rev`]: under
//! `.meta` it re-reads the `.rev` from disk, applies the change and writes the
//! result with a temp file of its own (`<id>.rev.tmp-<pid>-<n>`, flocked), fsync
//! and rename; so `verify`, `distrust`, `protect`, expiry's re-tagging and a
//! backup's re-check, run at the same time on one job, never lose each other's
//! change. Removal is in `src/job/remove.rs` (below).
//!
//! `nbd-server` takes no job lock, so it never stands in the way of a backup or
//! an expiry: a complete revision's image never changes, and the file descriptor
//! a connection holds keeps its data readable even after `forget` or `expire`
//! deleted the revision (a new connection to a deleted revision is refused; a
//! client that needs a revision kept should hold it with `protect` first). Its writable overlays (`.nbd-overlay.<id>.<pid>.<n>`,
//! reflink clones beside the revisions) are `flock`ed exclusively while in use;
//! the next backup or server removes those a crash left unlocked.
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
//!
//! # Where things are decided
//!
//! - A revision's files are removed in one place, `src/job/remove.rs`: by
//!   `forget` ([`job::Job::remove_revision`], [`job::Job::remove_damaged`]), by
//!   expiry ([`job::expire`] plans with [`schedule::retention`] and carries the
//!   plan out with [`job::Job::apply_retention`]) and by a backup's cleanup of
//!   incomplete revisions ([`job::Job::remove_incomplete`],
//!   [`job::Job::discard_incomplete`]), all through one function that deletes
//!   the `.rev` last.
//! - When a job runs next: [`schedule::plan`] (its slots and catch-up) and
//!   [`schedule::backoff`] (the wait after failures in a row, and the retry of a
//!   failed run's tags). Both are pure and take `now`, so tests inject the clock.
//! - The scheduler: [`daemon`] is the event loop; [`daemon::child`] starts a
//!   job's `backy backup`, copies its stderr into the job log, stops it after
//!   its run-timeout and tells from its exit status why it failed.
//! - What went wrong: [`error::Error`], one variant per failure, grouped by
//!   area, naming the file or revision and keeping the underlying error as its
//!   `source`; `main` prints it with [`error::Error::report`], which adds the
//!   causes its message does not already name.
//! - What deleting revisions frees and how much they share: [`space::measure`]
//!   (the physical extents of the job's files, one sweep in [`space::sweep`]),
//!   for `status`, the dry runs of `forget` and `expire`, and metrics.
//! - What moves between two job directories: [`replicate`] (`send` diffs
//!   revisions by their manifests and shared extents, `receive` applies the
//!   stream through the same lifecycle a backup uses; the stream format is in
//!   [`replicate::stream`]).
//! - Whether a revision matches its manifest: [`job::Job::verify_revision`],
//!   used by `verify` and by a backup for the newest distrusted revision; a
//!   block is bad only after a second read past the page cache
//!   ([`image::scrub`]). Which other revisions a bad block makes bad (the
//!   same physical extent, by FIEMAP): [`job::Job::verify_revisions`], in
//!   `src/job/damage.rs`.

pub mod buf;
pub mod cli;
pub mod commands;
pub mod config;
pub mod daemon;
pub mod error;
pub mod failpoint;
pub mod image;
pub mod interrupt;
pub mod job;
pub mod logging;
pub mod manpage;
pub mod metrics;
pub mod nbd;
pub mod output;
pub mod progress;
pub mod replicate;
pub mod revision;
pub mod schedule;
pub mod source;
pub mod space;
pub mod spec;
pub mod sys;
pub mod units;

pub use error::{Error, Result};
