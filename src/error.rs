//! The library's error type: every variant names the thing that failed and, where
//! the operator can do something about it, what to do.

use std::io;
use std::path::PathBuf;

/// The two configuration files, for [`Error::ConfigMissing`] and [`Error::Config`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigFile {
    /// A job's `config`.
    Job,
    /// The scheduler's configuration (`/etc/backy.conf`).
    Scheduler,
}

impl ConfigFile {
    fn missing(self, file: &std::path::Path) -> String {
        match self {
            ConfigFile::Job => format!(
                "{} does not exist; is this a job directory? Create one with 'backy -b DIR init file PATH'",
                file.display()
            ),
            ConfigFile::Scheduler => format!(
                "scheduler configuration {} does not exist; create it (see the FILES section of 'man backy') or pass another with -c",
                file.display()
            ),
        }
    }

    fn problems(self, file: &std::path::Path, problems: &[crate::config::ConfigProblem]) -> String {
        let shown: Vec<String> = problems.iter().map(ToString::to_string).collect();
        match self {
            ConfigFile::Job => format!(
                "job config {} is malformed: {}; fix it or re-create the job with 'backy init'",
                file.display(),
                shown.join("; ")
            ),
            ConfigFile::Scheduler => {
                let count = problems.len();
                let noun = if count == 1 { "problem" } else { "problems" };
                format!(
                    "scheduler configuration {} has {count} {noun}; fix and try again:\n{}",
                    file.display(),
                    shown.join("\n")
                )
            }
        }
    }
}

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
    /// A write failed because the filesystem holding `path` (or a quota on it)
    /// is full.
    #[error(
        "{what} {}: {}: {}; free space there (on a job's filesystem: expire or 'backy forget' old revisions), then run again",
        path.display(),
        plain_io(source),
        full_filesystem(mount.as_deref(), fs, source)
    )]
    NoSpace {
        /// What we were doing ("cannot write image", ...).
        what: &'static str,
        /// The file concerned.
        path: PathBuf,
        /// The mount point of the filesystem that is full.
        mount: Option<PathBuf>,
        /// The filesystem's type ("btrfs").
        fs: String,
        /// The OS error (ENOSPC or EDQUOT).
        #[source]
        source: io::Error,
    },
    /// A read failed at a known offset (a bad sector on the source, a damaged
    /// extent of a revision image).
    #[error(
        "{what} {}: the {len} bytes at offset {offset} do not read ({}); {hint}",
        path.display(),
        plain_io(source)
    )]
    ReadFailed {
        /// What we were doing ("cannot read source", ...).
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The first offset that does not read.
        offset: u64,
        /// How many bytes from `offset` were asked for.
        len: u64,
        /// What the operator can do.
        hint: String,
        /// The OS error (EIO).
        #[source]
        source: io::Error,
    },
    /// The `ceph-rbd` source failed: an rbd command, the diff stream, librbd.
    #[error(transparent)]
    Rbd(Box<crate::source::rbd::error::RbdError>),
    /// A configuration file does not exist.
    #[error("{}", which.missing(file))]
    ConfigMissing {
        /// Which configuration.
        which: ConfigFile,
        /// The file.
        file: PathBuf,
    },
    /// A configuration file has problems; all of them, each with its key path.
    #[error("{}", which.problems(file, problems))]
    Config {
        /// Which configuration.
        which: ConfigFile,
        /// The file.
        file: PathBuf,
        /// Every problem found (at least one).
        problems: Vec<crate::config::ConfigProblem>,
    },
    /// The SOURCE (or TYPE) argument of `backy init` is unusable.
    #[error("{0}")]
    SourceArgument(String),
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
    #[error("{what} is locked by {holder} ({}); wait for it to finish and try again", path.display())]
    Locked {
        /// What is locked ("job /srv/backy/vm01").
        what: String,
        /// Who holds it: "backy verify (pid 4242)", or which commands may.
        holder: String,
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
    /// A revision whose metadata or image is damaged was asked for.
    #[error(
        "revision {id} is damaged ({}: {reason}); repair the file, or delete the revision with 'backy forget -r {id} --force'",
        file.display()
    )]
    DamagedRevision {
        /// The revision.
        id: String,
        /// The file that is wrong.
        file: PathBuf,
        /// Why it cannot be used.
        reason: String,
    },
    /// A backup tag that `-r` could never select.
    #[error("tag '{tag}' {reason}; choose a word such as 'daily' or 'manual:before-upgrade'")]
    BadTag {
        /// The tag given.
        tag: String,
        /// Why it is refused.
        reason: &'static str,
    },
    // --- restore (issue 9) ---
    /// A restore target is a file of the job directory or would be created in it.
    #[error("{}", target_in_job(target, file, revision.as_deref()))]
    TargetInJob {
        /// The target as given.
        target: PathBuf,
        /// The job directory's file it is (or would be).
        file: PathBuf,
        /// The revision that file belongs to.
        revision: Option<String>,
    },
    /// A revision's image does not have the size its manifest records.
    #[error(
        "revision {id} is damaged: its image {} has {size} bytes but its checksum manifest records {expected}; nothing was restored and the revision is marked distrusted; restore another revision ('backy status' lists them)",
        path.display()
    )]
    ImageSizeMismatch {
        /// The revision.
        id: String,
        /// Its image.
        path: PathBuf,
        /// The image's size.
        size: u64,
        /// The manifest's image size.
        expected: u64,
    },
    /// `restore --verify` found a block that differs from the manifest.
    #[error(
        "revision {id} does not match its checksum manifest at offset {offset} (block {block} of {block_size} bytes); the restore stopped there, {target_note}; the revision is marked distrusted: restore another revision ('backy status' lists them)"
    )]
    RestoreMismatch {
        /// The revision.
        id: String,
        /// The first differing block's offset.
        offset: u64,
        /// Its block number.
        block: u64,
        /// The manifest's block size.
        block_size: u64,
        /// What became of the target.
        target_note: String,
    },
    /// `restore --verify` of a revision that has no usable manifest.
    #[error(
        "revision {id} cannot be checked: {reason}; restore it without --verify (revisions made by backy 2.1 have no checksum manifest)"
    )]
    NoManifestToVerify {
        /// The revision.
        id: String,
        /// Why (the manifest is missing or unusable).
        reason: String,
    },
    /// A block device target is mounted or held by something else.
    #[error("{}", device_busy(path, mounts))]
    DeviceBusy {
        /// The device.
        path: PathBuf,
        /// Where it is mounted (empty: in use otherwise).
        mounts: Vec<PathBuf>,
    },
    /// The restore target's filesystem ran out of space.
    #[error(
        "restore target {} does not fit: {} is full ({source}); {note}; free space there or restore elsewhere, then run again",
        target.display(),
        match mount { Some(m) => format!("the filesystem mounted on {} ({fs})", m.display()), None => format!("its filesystem ({fs})") }
    )]
    TargetFull {
        /// The target.
        target: PathBuf,
        /// The mount point of its filesystem.
        mount: Option<PathBuf>,
        /// The filesystem's type.
        fs: String,
        /// What became of the partial target.
        note: String,
        /// The OS error.
        #[source]
        source: io::Error,
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
    // --- issue 9, sources (keep together) ---
    /// The source was written while the backup read it (its size, times or
    /// identity moved, or a re-read sample differs): the revision would match
    /// no state the source ever had.
    #[error(
        "source {} was written during the backup ({detail}), so the revision would match no state it ever had and was removed; freeze the source while it is backed up (back up a snapshot of it, 'fsfreeze' the guest's filesystems, or stop the VM) and run the backup again",
        path.display()
    )]
    SourceChanged {
        /// The source.
        path: PathBuf,
        /// What changed ("it changed size during the backup (from 1 to 2 bytes)").
        detail: String,
    },
    /// The source is of a type that cannot be backed up (a FIFO, a socket, a
    /// character device, a directory).
    #[error(
        "source {} is {kind}; backy backs up image files and block devices: set 'filename' in the job's config to one",
        path.display()
    )]
    SourceType {
        /// The source.
        path: PathBuf,
        /// "a FIFO (named pipe)", "a socket", ...
        kind: &'static str,
    },
    /// The command was stopped by SIGTERM or SIGINT.
    #[error("interrupted by {name}; the operation was stopped before it completed")]
    Interrupted {
        /// The signal's name (`SIGTERM`).
        name: &'static str,
        /// Its number.
        number: i32,
    },
    // --- job state (src/job/) ---
    /// The job directory given with `-b` does not exist.
    #[error(
        "job directory {} does not exist; create it with 'backy -b {} init file PATH'",
        dir.display(),
        dir.display()
    )]
    JobMissing {
        /// The job directory (absolute).
        dir: PathBuf,
    },
    /// A revision was written with a backend this backy cannot read.
    #[error(
        "revision {id} in {} was written by backy 2.2+ with the '{backend}' backend, which this backy cannot read; restore it with that backy version",
        dir.display()
    )]
    UnknownBackend {
        /// The revision.
        id: String,
        /// The job directory.
        dir: PathBuf,
        /// The `.rev`'s `backend_type`.
        backend: String,
    },
    // --- image (src/image/) ---
    /// A checksum manifest's header or length is wrong.
    #[error(
        "checksum manifest {} is unusable: {reason}; it will be ignored by backups, or remove it",
        path.display()
    )]
    ManifestUnusable {
        /// The `.sums` file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// An image's size differs from the one its manifest records.
    #[error(
        "image {} has {size} bytes but its checksum manifest expects {expected}",
        path.display()
    )]
    ManifestSizeMismatch {
        /// The image.
        path: PathBuf,
        /// Its size.
        size: u64,
        /// The manifest's image size.
        expected: u64,
    },
    /// A checked copy met a block that differs from its digest. It stops the
    /// reader; [`crate::image::copy_checked`] reports the offset as its result.
    #[error("the block at offset {offset} differs from its checksum")]
    BlockMismatch {
        /// The block's offset.
        offset: u64,
    },
    /// A file being read sequentially ended before its size.
    #[error(
        "{} ended at {at} bytes while {expected} were expected: it shrank during the backup; freeze the VM or snapshot the source and run the backup again",
        path.display()
    )]
    Shrank {
        /// The file.
        path: PathBuf,
        /// Where it ended.
        at: u64,
        /// The size it had when the read began.
        expected: u64,
    },
    /// A helper thread could not be started.
    #[error("cannot start {what}: {source}")]
    ThreadSpawn {
        /// The thread ("the verification thread").
        what: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// A helper thread panicked.
    #[error("{what} panicked")]
    ThreadPanicked {
        /// The thread ("the verification thread").
        what: &'static str,
    },
    // --- restore (src/commands/restore.rs) ---
    /// The restore target is a directory.
    #[error("restore target {} is a directory; give a file name or a block device", path.display())]
    TargetIsDirectory {
        /// The target.
        path: PathBuf,
    },
    /// The restore target is a socket.
    #[error("restore target {} is a socket; give a file, a block device or - (stdout)", path.display())]
    TargetIsSocket {
        /// The target.
        path: PathBuf,
    },
    /// The restore target block device is smaller than the image.
    #[error(
        "block device {} has {size} bytes but the revision needs {needed}; grow the device first",
        path.display()
    )]
    DeviceTooSmall {
        /// The device.
        path: PathBuf,
        /// Its size.
        size: u64,
        /// The image's size.
        needed: u64,
    },
    /// A stream restore target (a pipe, a character device) took no more data.
    #[error(
        "restore target {} accepts no more data ({source}); it got only part of the image",
        path.display()
    )]
    StreamFull {
        /// The target.
        path: PathBuf,
        /// The OS error (ENOSPC, EDQUOT).
        #[source]
        source: io::Error,
    },
    // --- verify (src/commands/verify.rs) ---
    /// `verify -r` of a revision without a checksum manifest.
    #[error("{}", no_manifest(id, sums.as_deref()))]
    NoManifest {
        /// The revision.
        id: String,
        /// The manifest this backy wrote and is gone; `None`: the revision was
        /// made by backy 2.1 or earlier, which wrote none.
        sums: Option<PathBuf>,
    },
    /// Revisions that did not match their manifests (and are now distrusted).
    #[error(
        "{} revision(s) failed verification and are now distrusted: {}; the next backup compares the whole source",
        ids.len(),
        ids.join(", ")
    )]
    RevisionsDistrusted {
        /// The revisions.
        ids: Vec<String>,
    },
    /// `verify` of all revisions met revisions without a checksum manifest.
    #[error(
        "{} revision(s) have no checksum manifest and were not verified: {}; only their source could check them",
        ids.len(),
        ids.join(", ")
    )]
    RevisionsNotVerifiable {
        /// The revisions.
        ids: Vec<String>,
    },
    // --- backup (src/commands/backup.rs) ---
    /// The tags argument names no tag.
    #[error("no tags given in '{text}'; name at least one, e.g. 'backy backup daily'")]
    NoTags {
        /// The argument as given.
        text: String,
    },
    /// A tag contains whitespace or a control character.
    #[error("tag '{tag}' contains whitespace; use plain words")]
    TagWhitespace {
        /// The tag.
        tag: String,
    },
    // --- the file source (src/source/file.rs) ---
    /// The job's source file or device does not exist.
    #[error("source {} does not exist; check 'filename' in the job's config", path.display())]
    SourceMissing {
        /// The configured `filename`.
        path: PathBuf,
    },
    // --- scheduler daemon and status file (src/daemon/), expire ---
    /// The status file cannot be encoded.
    #[error("cannot encode the status file: {source}")]
    StatusEncode {
        /// The serializer's error.
        #[source]
        source: serde_norway::Error,
    },
    /// The status file cannot be parsed.
    #[error(
        "status file {} is malformed: {source}; it is rewritten by the scheduler every status-interval",
        path.display()
    )]
    StatusMalformed {
        /// The status file.
        path: PathBuf,
        /// The parser's error.
        #[source]
        source: serde_norway::Error,
    },
    /// `expire -b DIR` names a job the scheduler config does not list.
    #[error(
        "job '{name}' is not in {}; run expire with -b pointing at a job directory the scheduler config lists",
        config.display()
    )]
    JobNotScheduled {
        /// The job's name (the directory's name).
        name: String,
        /// The scheduler config.
        config: PathBuf,
    },
    // --- logging and interrupts ---
    /// The logger cannot be installed.
    #[error("cannot set up logging: {source}")]
    Logging {
        /// Why (a logger is installed already).
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// SIGTERM/SIGINT (or SIGHUP) handlers cannot be installed.
    #[error("cannot install signal handlers: {source}")]
    SignalHandlers {
        /// The OS error.
        #[source]
        source: io::Error,
    },
    // --- space accounting (src/space.rs) ---
    /// The job's filesystem cannot say where a file's bytes are (no FIEMAP).
    #[error(
        "cannot measure the space of {}: its filesystem ({filesystem}) does not report extents (FIEMAP); space figures need btrfs, XFS or ext4",
        dir.display()
    )]
    SpaceUnsupported {
        /// The job directory.
        dir: PathBuf,
        /// The filesystem's name.
        filesystem: String,
    },
    // --- the NBD server (src/nbd/, src/commands/nbd_server.rs) ---
    /// `-H` is not an IP address.
    #[error("'{host}' is not an IP address; give one with -H, e.g. 127.0.0.1 or ::1")]
    NbdBadHost {
        /// The value given.
        host: String,
    },
    /// `--max-connections 0`.
    #[error("--max-connections must be at least 1")]
    NbdNoConnections,
    /// The TCP listener cannot be bound.
    #[error("cannot listen on {addr}: {source}; choose another port with -p (0 picks a free one)")]
    NbdListen {
        /// The address.
        addr: std::net::SocketAddr,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The `--socket` path exists and is something else.
    #[error("{} exists and is not a socket; remove it or choose another --socket path", path.display())]
    NbdNotASocket {
        /// The path.
        path: PathBuf,
    },
    /// Another server listens on the `--socket` path.
    #[error("another server listens on {}; stop it or choose another --socket path", path.display())]
    NbdSocketInUse {
        /// The path.
        path: PathBuf,
    },
    // --- send and receive (src/replicate/) ---
    /// `send --base` names a revision that is not older than `-r`.
    #[error(
        "base revision {base} is not older than revision {revision}; give a --base before -r (or leave --base out to send everything up to -r)"
    )]
    SendBaseNotOlder {
        /// The base.
        base: String,
        /// The last revision to send.
        revision: String,
    },
    /// A revision cannot be sent because its manifest cannot stand for it.
    #[error(
        "revision {id} cannot be sent: {reason}; run 'backy verify -r {id}' (a verified revision can be sent), or send from a later --base"
    )]
    SendUnusable {
        /// The revision.
        id: String,
        /// Why.
        reason: String,
    },
    /// `send` would write its binary stream to a terminal.
    #[error(
        "refusing to write the send stream to a terminal; pipe it, e.g. 'backy send | ssh HOST backy -b DIR receive'"
    )]
    SendToTerminal,
    /// The send stream is damaged, cut off or not a stream.
    #[error(
        "the send stream is unusable: {source}; the revision in progress was not completed (revisions completed before it are intact); send again"
    )]
    ReceiveStream {
        /// What is wrong.
        #[source]
        source: crate::replicate::stream::StreamError,
    },
    /// The stream continues from a revision the target does not hold.
    #[error(
        "the stream continues from revision {id}, which {} does not hold complete; send with --base set to a revision it holds ('backy -b {} receive --have --newest'), or without --base for everything",
        dir.display(),
        dir.display()
    )]
    ReceiveBaseMissing {
        /// The base.
        id: String,
        /// The target job.
        dir: PathBuf,
    },
    /// The stream's base is held with another manifest.
    #[error(
        "revision {id} in {} has a different checksum manifest than the sender's revision of that id, so the stream does not fit it; nothing was received; check that both sides are the same job, then send with another --base",
        dir.display()
    )]
    ReceiveBaseMismatch {
        /// The base.
        id: String,
        /// The target job.
        dir: PathBuf,
    },
    /// The stream's base is distrusted on the target.
    #[error(
        "base revision {id} is distrusted in {}, so a stream built on it is not received; run 'backy -b {} verify -r {id}', or send with an older --base",
        dir.display(),
        dir.display()
    )]
    ReceiveBaseDistrusted {
        /// The base.
        id: String,
        /// The target job.
        dir: PathBuf,
    },
    /// A revision of the stream is held with another manifest.
    #[error(
        "revision {id} exists in {} with a different checksum manifest than the one sent; nothing more was received; check that both sides are the same job",
        dir.display()
    )]
    ReceiveRevisionMismatch {
        /// The revision.
        id: String,
        /// The target job.
        dir: PathBuf,
    },
    /// A received revision does not match the digests that came with it.
    #[error("received revision {id} failed verification: {detail}; it was removed; send again")]
    ReceiveVerifyFailed {
        /// The revision.
        id: String,
        /// What differs.
        detail: String,
    },
    /// The target filesystem filled up during a receive.
    #[error(
        "the filesystem of {} is full ({}; {}); revision {id} was not completed and was removed, complete revisions are untouched; free space (or expire revisions), then send again with --base set to the newest revision held",
        dir.display(),
        match mount { Some(m) => format!("mounted on {}, {fs}", m.display()), None => fs.clone() },
        plain_io(source)
    )]
    ReceiveFull {
        /// The target job.
        dir: PathBuf,
        /// The mount point of its filesystem.
        mount: Option<PathBuf>,
        /// The filesystem's type.
        fs: String,
        /// The revision in progress.
        id: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// A revision's lifecycle was used wrongly (a bug in backy, not in the
    /// job): beginning a revision that exists, or an update that changed a
    /// revision's id or completeness.
    #[error("internal error in revision {id}: {what}; please report this as a bug")]
    Lifecycle {
        /// The revision.
        id: String,
        /// What went wrong.
        what: &'static str,
    },
    /// `forget` of a protected revision without `--force`.
    #[error(
        "revision {id} is protected{}; unprotect it first ('backy unprotect -r {id}') or use --force",
        reason.as_deref().map(|r| format!(" (reason: {r})")).unwrap_or_default()
    )]
    ForgetProtected {
        /// The revision.
        id: String,
        /// Why it was protected, if given.
        reason: Option<String>,
    },
    /// `forget` of the newest complete revision without `--force`.
    #[error(
        "revision {id} is the newest complete revision (what 'last' points to and the next backup's parent); use --force to delete it anyway"
    )]
    ForgetNewest {
        /// The revision.
        id: String,
    },
    /// `distrust` without a revision or a date range, not confirmed.
    #[error(
        "distrusting all {} of job {} needs confirmation and stdin is not a terminal; pass --yes, or choose revisions with -r or -f/-u",
        crate::units::count(*count, "revision"),
        dir.display()
    )]
    DistrustAllUnconfirmed {
        /// How many complete revisions there are.
        count: usize,
        /// The job directory.
        dir: PathBuf,
    },
    /// The operator answered no to `distrust`'s question.
    #[error("not confirmed: no revision of job {} was distrusted", dir.display())]
    DistrustDeclined {
        /// The job directory.
        dir: PathBuf,
    },
    /// `distrust -f FROM -u UNTIL` with FROM after UNTIL.
    #[error("--from {from} is after --until {until}; give the earlier date with --from")]
    EmptyDateRange {
        /// The --from value as given.
        from: String,
        /// The --until value as given.
        until: String,
    },
    // --- issue 14, reshare and export-diff (keep together) ---
    /// The job's filesystem cannot share extents of two files (`FIDEDUPERANGE`).
    #[error(
        "cannot share extents of {} with its base: {}; reshare needs btrfs or XFS with reflink=1, with the job on one filesystem",
        path.display(),
        plain_io(source)
    )]
    DedupeUnsupported {
        /// The image being reshared.
        path: PathBuf,
        /// The OS error (EOPNOTSUPP, EINVAL, EXDEV).
        #[source]
        source: io::Error,
    },
    /// `export-diff` would write its binary stream to a terminal.
    #[error(
        "export-diff writes a binary rbd diff stream to stdout, which is a terminal; pipe it into 'rbd import-diff - POOL/IMAGE' or redirect it to a file"
    )]
    DiffToTerminal,
    /// `export-diff` needs the manifests of both revisions.
    #[error(
        "revision {id} has no usable checksum manifest ({reason}), so export-diff cannot tell which blocks differ; restore it in full with 'backy restore -r {id} - | rbd import - POOL/IMAGE'"
    )]
    DiffNeedsManifest {
        /// The revision.
        id: String,
        /// Why its manifest cannot be used.
        reason: String,
    },
    /// A block `export-diff` read does not match the revision's manifest.
    #[error(
        "revision {id} does not match its checksum manifest at offset {offset}; the diff stream was cut off before its end record, so 'rbd import-diff' rejects it; run 'backy verify -r {id}'"
    )]
    DiffSourceDamaged {
        /// The revision.
        id: String,
        /// The block's offset.
        offset: u64,
    },
    /// Anything else, already phrased for the operator.
    #[error("{0}")]
    Other(String),
}

impl Error {
    /// The process exit code for this error: 69 for a running scheduler (as the
    /// original, for init scripts), 75 (EX_TEMPFAIL) for a source written during
    /// the backup (the next try may work), 128 + the signal for an interrupted
    /// command and 141 for a closed output pipe (as a shell shows them), else 1.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::SchedulerRunning { .. } => 69,
            Error::SourceChanged { .. } => 75,
            // As a shell reports a command that SIGPIPE or another signal ended.
            Error::Output { source } if source.kind() == io::ErrorKind::BrokenPipe => 141,
            Error::Interrupted { number, .. } => 128u8.saturating_add(*number as u8),
            _ => 1,
        }
    }

    /// Wraps an I/O error with what we were doing and the file concerned.
    pub fn io(what: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> Error {
        let path = path.into();
        move |source| {
            if crate::sys::is_no_space(&source) {
                Error::no_space(what, path, source)
            } else {
                Error::Io { what, path, source }
            }
        }
    }

    /// [`Error::NoSpace`] for `path`, with the mount point and type of the
    /// filesystem holding it (or its nearest existing parent).
    pub fn no_space(what: &'static str, path: PathBuf, source: io::Error) -> Error {
        let probe = path
            .ancestors()
            .find(|p| !p.as_os_str().is_empty() && p.exists())
            .unwrap_or(std::path::Path::new("."))
            .to_owned();
        Error::NoSpace {
            what,
            mount: crate::sys::mount_point_of(&probe),
            fs: crate::sys::filesystem_name(&probe),
            path,
            source,
        }
    }

    /// The OS error of an I/O failure ([`Error::Io`], [`Error::NoSpace`],
    /// [`Error::ReadFailed`]).
    pub fn io_source(&self) -> Option<&io::Error> {
        match self {
            Error::Io { source, .. }
            | Error::NoSpace { source, .. }
            | Error::ReadFailed { source, .. } => Some(source),
            _ => None,
        }
    }
}

impl From<crate::source::rbd::error::RbdError> for Error {
    fn from(e: crate::source::rbd::error::RbdError) -> Error {
        Error::Rbd(Box::new(e))
    }
}

/// An OS error's message without the " (os error N)" suffix.
pub fn plain_io(err: &io::Error) -> String {
    without_os_error(&err.to_string()).to_string()
}

/// `text` without a trailing " (os error N)".
fn without_os_error(text: &str) -> &str {
    match text.rfind(" (os error ") {
        Some(i) if text.ends_with(')') => &text[..i],
        _ => text,
    }
}

/// An error followed by the causes in its [`source`](std::error::Error::source)
/// chain, joined with ": ", as `main` prints and logs it. Most messages say
/// their cause where the sentence needs it ("cannot read X: No such file or
/// directory (os error 2); ..."), so a cause whose text the line already holds
/// (with or without its " (os error N)") is not repeated.
pub struct Report<'a>(pub &'a (dyn std::error::Error + 'static));

impl std::fmt::Display for Report<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut line = self.0.to_string();
        let mut next = self.0.source();
        while let Some(cause) = next {
            let text = cause.to_string();
            let plain = without_os_error(&text);
            if !plain.is_empty() && !line.contains(plain) {
                line.push_str(": ");
                line.push_str(&text);
            }
            next = cause.source();
        }
        f.write_str(&line)
    }
}

impl Error {
    /// The error with its chain of causes, for the one line `main` prints.
    pub fn report(&self) -> Report<'_> {
        Report(self)
    }

    /// Whether the error is a closed output pipe, which ends a command quietly.
    pub fn is_broken_pipe(&self) -> bool {
        matches!(self, Error::Output { source } if source.kind() == io::ErrorKind::BrokenPipe)
    }
}

/// "the filesystem is full (mounted on /srv, btrfs)", or the quota's wording.
fn full_filesystem(mount: Option<&std::path::Path>, fs: &str, err: &io::Error) -> String {
    let at = match mount {
        Some(m) => format!("mounted on {}, {fs}", m.display()),
        None => fs.to_string(),
    };
    if err.raw_os_error() == Some(rustix::io::Errno::DQUOT.raw_os_error()) {
        format!("the quota on the filesystem ({at}) is used up")
    } else {
        format!("the filesystem is full ({at})")
    }
}

fn io_hint(err: &io::Error) -> &'static str {
    match err.raw_os_error() {
        Some(28) => " (the filesystem is full: free space or expire revisions, then run again)",
        Some(13) | Some(1) => " (check the file's permissions)",
        _ => "",
    }
}

fn target_in_job(
    target: &std::path::Path,
    file: &std::path::Path,
    revision: Option<&str>,
) -> String {
    let what = match revision {
        Some(id) => format!(
            "is {} of revision {id}; restoring onto it would destroy revision {id}",
            file.display()
        ),
        None => format!("is {} in the job directory", file.display()),
    };
    format!(
        "restore target {} {what}; restore to a path outside the job directory (--force does not change this)",
        target.display()
    )
}

fn device_busy(path: &std::path::Path, mounts: &[PathBuf]) -> String {
    let why = if mounts.is_empty() {
        "is in use (a mounted filesystem, a device-mapper or RAID member, a VM or another exclusive opener holds it)".to_string()
    } else {
        let list: Vec<String> = mounts.iter().map(|m| m.display().to_string()).collect();
        format!("is mounted on {}", list.join(", "))
    };
    format!(
        "block device {} {why}, so it cannot be opened exclusively; nothing was written; unmount it (or stop what uses it) first",
        path.display()
    )
}

fn no_manifest(id: &str, sums: Option<&std::path::Path>) -> String {
    let why = match sums {
        Some(path) => format!(
            "its manifest {} is missing (this backy wrote one; was it deleted?)",
            path.display()
        ),
        None => "it was made by backy 2.1 or earlier, which wrote none".to_string(),
    };
    format!(
        "revision {id} has no checksum manifest: {why}; it can only be checked against its source"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The typed variants keep the wording the `Error::Other` strings had.
    #[test]
    fn typed_variants_keep_their_messages() {
        let cases: Vec<(Error, &str)> = vec![
            (
                Error::JobMissing {
                    dir: "/srv/backy/vm01".into(),
                },
                "job directory /srv/backy/vm01 does not exist; create it with 'backy -b /srv/backy/vm01 init file PATH'",
            ),
            (
                Error::NoManifest {
                    id: "abc".into(),
                    sums: None,
                },
                "revision abc has no checksum manifest: it was made by backy 2.1 or earlier, which wrote none; it can only be checked against its source",
            ),
            (
                Error::NoManifest {
                    id: "abc".into(),
                    sums: Some("/j/abc.sums".into()),
                },
                "revision abc has no checksum manifest: its manifest /j/abc.sums is missing (this backy wrote one; was it deleted?); it can only be checked against its source",
            ),
            (
                Error::RevisionsDistrusted {
                    ids: vec!["a".into(), "b".into()],
                },
                "2 revision(s) failed verification and are now distrusted: a, b; the next backup compares the whole source",
            ),
            (
                Error::Shrank {
                    path: "/dev/x".into(),
                    at: 5,
                    expected: 9,
                },
                "/dev/x ended at 5 bytes while 9 were expected: it shrank during the backup; freeze the VM or snapshot the source and run the backup again",
            ),
            (
                Error::NbdListen {
                    addr: "127.0.0.1:10809".parse().unwrap(),
                    source: io::Error::from_raw_os_error(98),
                },
                "cannot listen on 127.0.0.1:10809: Address already in use (os error 98); choose another port with -p (0 picks a free one)",
            ),
        ];
        for (err, text) in cases {
            assert_eq!(err.to_string(), text);
        }
    }

    /// The cause stays data: the OS error of a failed listen is its source.
    #[test]
    fn causes_are_kept_as_sources() {
        let err = Error::NbdListen {
            addr: "127.0.0.1:1".parse().unwrap(),
            source: io::Error::from_raw_os_error(98),
        };
        let source = std::error::Error::source(&err).expect("a source");
        let io = source.downcast_ref::<io::Error>().expect("an io::Error");
        assert_eq!(io.kind(), io::ErrorKind::AddrInUse);
    }

    /// An error whose message leaves out its cause.
    #[derive(Debug, thiserror::Error)]
    #[error("cannot do the thing")]
    struct Terse {
        #[source]
        source: Error,
    }

    /// The printed line adds each cause the message does not already hold, once.
    #[test]
    fn the_report_adds_causes_not_yet_in_the_message() {
        let io_err = || Error::io("cannot read source", "/x")(io::Error::from_raw_os_error(2));
        // The message holds its cause: printed as it is.
        assert_eq!(
            io_err().report().to_string(),
            "cannot read source /x: No such file or directory (os error 2)"
        );
        // One without it gets the chain, each cause once.
        let terse = Terse { source: io_err() };
        assert_eq!(
            Report(&terse).to_string(),
            "cannot do the thing: cannot read source /x: No such file or directory (os error 2)"
        );
        // A cause shown without " (os error N)" is not repeated either.
        let out = Error::Output {
            source: io::Error::from_raw_os_error(28),
        };
        assert_eq!(
            out.report().to_string(),
            "cannot write to stdout: No space left on device"
        );
        // Nested sources whose text is already there stay out.
        let rbd = Error::from(crate::source::rbd::error::RbdError::WithStderr {
            source: Box::new(io_err()),
            stderr: "rbd: error".into(),
        });
        assert_eq!(rbd.report().to_string(), rbd.to_string());
    }

    /// A full filesystem is its own variant, naming where it is mounted; a
    /// quota says so; other errors stay `Io`.
    #[test]
    fn a_full_filesystem_names_its_mount_point() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing").join("file");
        let mount = crate::sys::mount_point_of(dir.path()).expect("a mount point");
        let err = Error::io("cannot write", &path)(io::Error::from_raw_os_error(28));
        let text = err.to_string();
        assert!(matches!(err, Error::NoSpace { .. }), "{err:?}");
        assert!(
            text.starts_with(&format!(
                "cannot write {}: No space left on device: the filesystem is full (mounted on {},",
                path.display(),
                mount.display()
            )),
            "{text}"
        );
        assert!(text.contains("free space there"), "{text}");
        let quota = Error::io("cannot write", &path)(io::Error::from_raw_os_error(122));
        assert!(
            quota.to_string().contains("the quota on the filesystem"),
            "{quota}"
        );
        let other = Error::io("cannot write", &path)(io::Error::from_raw_os_error(5));
        assert!(matches!(other, Error::Io { .. }), "{other:?}");
    }

    /// The enum stays small enough to pass around by value.
    #[test]
    fn error_stays_small() {
        assert!(std::mem::size_of::<Error>() <= 128);
    }
}
