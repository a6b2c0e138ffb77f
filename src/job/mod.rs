//! A job directory: its config, its revisions, its locks and the `last` links.
//!
//! See the crate documentation for the layout, the lock order and the order in
//! which a backup makes its files durable. Every removal of a revision's files
//! is in `remove.rs`, expiry included ([`expire`]).

mod damage;
mod remove;
mod verify;

pub use damage::{SharedDamage, describe_shared};
pub use remove::{expire, expire_logging_freed};
pub use verify::{Checked, VerifyOutcome, VerifyRun, describe_bad};

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};

use crate::config::JobConfig;
use crate::error::{Error, Result};
use crate::failpoint;
use crate::revision::{self, Revision};
use crate::spec;
use crate::sys;

/// A job directory and the revisions found in it (oldest first).
pub struct Job {
    dir: PathBuf,
    /// All revisions with a readable `.rev`, complete or not, oldest first
    /// (in [`revision::order`]). Damaged ones are not among them. Changed
    /// only by the lifecycle methods (see [`Job::begin_revision`]).
    revisions: Vec<Revision>,
    /// Revisions whose files cannot be used, by id.
    pub damaged: Vec<Damaged>,
}

/// A revision whose metadata cannot be read or whose image is gone. It is never
/// chosen by a SPEC, never a parent, never removed by a backup's cleanup or by
/// expiry; `status` and `check` name it, and `forget -r ID --force` removes it.
#[derive(Debug, Clone)]
pub struct Damaged {
    /// The revision id (the file name without `.rev`).
    pub id: String,
    /// The file that is wrong (the `.rev`, or the missing image).
    pub file: PathBuf,
    /// Why it cannot be used.
    pub reason: String,
    /// The metadata, when it could be read.
    pub rev: Option<Revision>,
}

impl Damaged {
    /// One line for logs, `status` and `check`.
    pub fn describe(&self) -> String {
        format!(
            "revision {} is damaged: {}: {}; repair it, or delete it with 'backy forget -r {} --force'",
            self.id,
            self.file.display(),
            self.reason,
            self.id
        )
    }
}

/// Mode of a job directory backy creates (`init`, the scheduler): the
/// backups are the VM's data, for the owner and the backup group only.
pub const DIR_MODE: u32 = 0o750;

/// The names of the links to the newest revision.
const LINKS: [&str; 2] = ["last", "last.rev"];

/// How long a `.rev` update waits for another process's update of the same
/// job (each takes milliseconds; a longer wait means a stuck process).
const META_LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// Held while a backup runs: `.backup` exclusive, `.purge` shared.
pub struct BackupLock {
    _backup: File,
    _purge: File,
}

/// Held while a revision is read (restore, verify): `.purge` shared.
pub struct ReadLock {
    _purge: File,
}

/// Held while revisions are deleted: `.backup` and `.purge` exclusive.
pub struct PurgeLock {
    _backup: File,
    _purge: File,
}

impl Job {
    /// Opens a job directory and reads its revisions.
    pub fn open(dir: &Path) -> Result<Job> {
        let dir = std::path::absolute(dir).map_err(Error::io("cannot resolve", dir))?;
        if !dir.is_dir() {
            return Err(Error::JobMissing { dir });
        }
        let mut job = Job {
            dir,
            revisions: Vec::new(),
            damaged: Vec::new(),
        };
        job.scan()?;
        Ok(job)
    }

    /// Re-reads the revisions from disk. A `.rev` that cannot be read, or a
    /// complete revision without its image, is recorded in [`Job::damaged`]
    /// instead of stopping the job.
    pub fn scan(&mut self) -> Result<()> {
        let mut revisions = Vec::new();
        let mut damaged = Vec::new();
        // A `.rev` renamed into place while the directory is listed can be
        // missing from the listing (btrfs lists only the entries that existed
        // when the listing began, and a rename makes a new entry), so the
        // listing holds `.meta` shared, which each `.rev` write holds
        // exclusively.
        let _listing = self.lock_meta_shared()?;
        let entries = std::fs::read_dir(&self.dir).map_err(Error::io("cannot list", &self.dir))?;
        // (id, path of the `.rev`, whether it is a symbolic link)
        let mut listed = Vec::new();
        for entry in entries {
            let entry = entry.map_err(Error::io("cannot list", &self.dir))?;
            let name = entry.file_name();
            let Some(id) = name.to_str().and_then(|n| n.strip_suffix(".rev")) else {
                continue;
            };
            // `last.rev` is a link to a real one (or a copy of one, which
            // `update_last` replaces).
            if LINKS.contains(&id) || id.is_empty() {
                continue;
            }
            let symlink = entry.file_type().map(|t| t.is_symlink()).unwrap_or(true);
            listed.push((id.to_string(), entry.path(), symlink));
        }
        // Each `.rev` and image is a small read of its own, cold a wait on the
        // disk: with several in flight, a cold restore of a 100-revision XFS
        // job had its first byte 17 ms sooner (104 -> 87 ms); a few threads
        // cost nothing against one cold read.
        let threads = if listed.len() < 8 {
            1
        } else {
            sys::io_threads()
        };
        let loaded = sys::parallel_map(&listed, threads, |(id, path, symlink)| {
            if *symlink {
                return None;
            }
            let rev = Revision::load(path, id);
            let image = match &rev {
                Ok(r) if r.is_complete() => Some(std::fs::symlink_metadata(self.image_path(id))),
                _ => None,
            };
            Some((rev, image))
        });
        for ((id, path, _), loaded) in listed.into_iter().zip(loaded) {
            // Any other `.rev` that is a symlink is never followed: the
            // revision is damaged.
            let Some((rev, image_meta)) = loaded else {
                damaged.push(Damaged {
                    id,
                    file: path,
                    reason:
                        "it is a symbolic link, and backy does not follow links in a job directory"
                            .into(),
                    rev: None,
                });
                continue;
            };
            let rev = match rev {
                Ok(rev) => rev,
                Err(Error::Io { source, .. })
                    if source.kind() == std::io::ErrorKind::PermissionDenied =>
                {
                    return Err(Error::io("cannot read revision metadata", &path)(source));
                }
                Err(e) => {
                    let reason = match e {
                        Error::BadRevision { reason, .. } => reason,
                        Error::Io { source, .. } => format!("cannot read it: {source}"),
                        other => other.to_string(),
                    };
                    damaged.push(Damaged {
                        id,
                        file: path,
                        reason,
                        rev: None,
                    });
                    continue;
                }
            };
            if rev.backend_type() != "cowfile" {
                return Err(Error::UnknownBackend {
                    id,
                    dir: self.dir.clone(),
                    backend: rev.backend_type().to_string(),
                });
            }
            if let Some(meta) = image_meta {
                let image = self.image_path(&id);
                let problem = match meta {
                    Ok(m) if m.is_file() => None,
                    Ok(m) if m.file_type().is_symlink() => Some(
                        "it is a symbolic link, and backy does not follow links in a job directory"
                            .to_string(),
                    ),
                    Ok(_) => Some("it is not a regular file".to_string()),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        Some("the image is missing".to_string())
                    }
                    Err(e) => Some(format!("cannot read it: {e}")),
                };
                if let Some(reason) = problem {
                    damaged.push(Damaged {
                        id,
                        file: image,
                        reason,
                        rev: Some(rev),
                    });
                    continue;
                }
            }
            revisions.push(rev);
        }
        revisions.sort_by(|a, b| revision::order((&a.timestamp, &a.id), (&b.timestamp, &b.id)));
        damaged.sort_by(|a, b| a.id.cmp(&b.id));
        self.revisions = revisions;
        self.damaged = damaged;
        Ok(())
    }

    /// All revisions with a readable `.rev`, complete or not, oldest first
    /// (in [`revision::order`]); damaged ones are in [`Job::damaged`].
    pub fn revisions(&self) -> &[Revision] {
        &self.revisions
    }

    /// The revision (complete or not) with exactly this id, as last read.
    pub fn revision(&self, id: &str) -> Option<&Revision> {
        self.revisions.iter().find(|r| r.id == id)
    }

    /// Puts a revision into the list as last read, keeping the one order.
    fn remember(&mut self, rev: Revision) {
        self.revisions.retain(|r| r.id != rev.id);
        let at = self.revisions.partition_point(|r| {
            revision::order((&r.timestamp, &r.id), (&rev.timestamp, &rev.id)).is_lt()
        });
        self.revisions.insert(at, rev);
    }

    /// The damaged revision with exactly this id.
    pub fn find_damaged(&self, id: &str) -> Option<&Damaged> {
        self.damaged.iter().find(|d| d.id == id)
    }

    /// Complete revisions dated after `now` (the clock was ahead when they were
    /// made, or is behind now).
    pub fn future_revisions(&self, now: DateTime<Utc>) -> Vec<&Revision> {
        self.revisions
            .iter()
            .filter(|r| r.is_complete() && r.timestamp > now)
            .collect()
    }

    /// What is wrong with `last` and `last.rev`: anything but the symlinks
    /// backy writes (to the newest complete revision, or absent when there is
    /// none). The next backup, `forget` or expiry repairs them.
    pub fn link_problems(&self) -> Vec<String> {
        let newest = self.newest_complete().map(|r| r.id.clone());
        let mut problems = Vec::new();
        for (link, target) in self.link_targets(newest) {
            let path = self.dir.join(link);
            let problem = match std::fs::symlink_metadata(&path) {
                Err(_) if target.is_none() => None,
                Err(_) => Some("is missing".to_string()),
                Ok(m) if m.file_type().is_symlink() => {
                    let current = std::fs::read_link(&path).ok();
                    match &target {
                        Some(t) if current.as_deref() == Some(Path::new(t)) => None,
                        Some(t) => Some(format!(
                            "points to {} instead of {t}",
                            current.map(|c| c.display().to_string()).unwrap_or_default()
                        )),
                        None => Some("exists although there is no complete revision".into()),
                    }
                }
                Ok(m) => Some(format!(
                    "is {} instead of a symlink",
                    describe_type(&m.file_type())
                )),
            };
            if let Some(p) = problem {
                problems.push(format!(
                    "{} {p}; the next backup replaces it{}",
                    path.display(),
                    if p.contains("instead of a symlink") {
                        " (keeping it as a .bak copy)"
                    } else {
                        ""
                    }
                ));
            }
        }
        problems
    }

    /// What `check` reports about the job: one line per damaged revision,
    /// one for the revisions dated after `now`, if any, and the files others
    /// may read ([`Job::exposure`]).
    pub fn warnings(&self, now: DateTime<Utc>) -> Vec<String> {
        let mut lines: Vec<String> = self.damaged.iter().map(Damaged::describe).collect();
        lines.extend(self.exposure());
        let future = self.future_revisions(now);
        match future.as_slice() {
            [] => {}
            [one] => lines.push(future_note(one)),
            [.., newest] => lines.push(format!(
                "{} revisions are dated in the future; the newest: {}",
                future.len(),
                future_note(newest)
            )),
        }
        lines
    }

    /// The job directory and revision images that users other than the
    /// owner and group may read or enter: VM disks hold secrets (keys,
    /// password hashes, databases). One line for the directory, one for the
    /// images (naming up to three).
    pub fn exposure(&self) -> Vec<String> {
        use std::os::unix::fs::MetadataExt;
        let mut lines = Vec::new();
        if let Ok(meta) = std::fs::metadata(&self.dir)
            && meta.mode() & 0o007 != 0
        {
            lines.push(format!(
                "job directory {} is open to other users (mode {:04o}); VM disks hold secrets: chmod o-rwx {}",
                self.dir.display(),
                meta.mode() & 0o7777,
                self.dir.display()
            ));
        }
        let open: Vec<String> = self
            .revisions
            .iter()
            .filter(|r| r.is_complete())
            .filter(|r| {
                std::fs::symlink_metadata(self.image_path(&r.id))
                    .is_ok_and(|m| m.is_file() && m.mode() & 0o004 != 0)
            })
            .map(|r| r.id.clone())
            .collect();
        if !open.is_empty() {
            let shown: Vec<&str> = open.iter().take(3).map(String::as_str).collect();
            lines.push(format!(
                "{} revision image{} of job {} {} readable by other users ({}{}); VM disks hold secrets: chmod o-r {}/*",
                open.len(),
                if open.len() == 1 { "" } else { "s" },
                self.dir.display(),
                if open.len() == 1 { "is" } else { "are" },
                shown.join(", "),
                if open.len() > 3 { ", ..." } else { "" },
                self.dir.display()
            ));
        }
        lines
    }

    fn link_targets(&self, newest: Option<String>) -> [(&'static str, Option<String>); 2] {
        [
            (LINKS[0], newest.clone()),
            (LINKS[1], newest.map(|id| format!("{id}.rev"))),
        ]
    }

    /// The job directory (absolute).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The job's source configuration.
    pub fn config(&self) -> Result<JobConfig> {
        JobConfig::load(&self.dir.join("config"))
    }

    /// Path of a revision's image.
    pub fn image_path(&self, id: &str) -> PathBuf {
        self.dir.join(id)
    }

    /// Opens a revision's image for reading, never through a symbolic link
    /// and only when it is a regular file ([`sys::open_regular`]).
    pub fn open_image(&self, id: &str) -> Result<File> {
        let path = self.image_path(id);
        sys::open_regular(&path, false).map_err(Error::io("cannot open revision image", &path))
    }

    /// Path of a revision's metadata.
    pub fn rev_path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.rev"))
    }

    /// Path of a revision's checksum manifest.
    pub fn sums_path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.sums"))
    }

    /// The newest complete revision.
    pub fn newest_complete(&self) -> Option<&Revision> {
        self.revisions.iter().rev().find(|r| r.is_complete())
    }

    /// Resolves `-r SPEC` to a complete revision; never a damaged one.
    pub fn resolve(&self, spec_text: &str) -> Result<&Revision> {
        if let Some(d) = self.find_damaged(spec_text) {
            return Err(Error::DamagedRevision {
                id: d.id.clone(),
                file: d.file.clone(),
                reason: d.reason.clone(),
            });
        }
        let rev = spec::resolve(&self.revisions, spec_text)?;
        if !rev.is_complete() {
            return Err(Error::Incomplete { id: rev.id.clone() });
        }
        Ok(rev)
    }

    /// Opens (creating) and flocks `<job>/<name>` without waiting; `holders`
    /// says which commands may hold it, for the error message when `/proc`
    /// cannot name the process ([`lock_holder`]).
    fn try_lock(&self, name: &str, exclusive: bool, holders: &str) -> Result<File> {
        let path = self.dir.join(name);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o640)
            .open(&path)
            .map_err(Error::io("cannot open lock file", &path))?;
        // A holder that `/proc` no longer lists has just let go: try again
        // (a few times, never waiting) rather than refuse naming nobody.
        let mut attempts = 0;
        loop {
            let locked = if exclusive {
                file.try_lock()
            } else {
                file.try_lock_shared()
            };
            match locked {
                Ok(()) => return Ok(file),
                Err(std::fs::TryLockError::WouldBlock) => {
                    attempts += 1;
                    let holder = lock_holder(&file);
                    if holder.is_none() && attempts < 3 {
                        continue;
                    }
                    return Err(Error::Locked {
                        what: format!("job {}", self.dir.display()),
                        holder: holder.unwrap_or_else(|| holders.to_string()),
                        path,
                    });
                }
                Err(std::fs::TryLockError::Error(e)) => {
                    return Err(Error::io("cannot lock", path)(e));
                }
            }
        }
    }

    // Each lock reads the revisions again once it is held: what a command
    // chooses (a SPEC, a parent, what to expire) is then what the lock
    // protects, not a list an expiry or forget changed between `open` and
    // the lock.

    /// Takes the backup lock: `.backup` exclusive, then `.purge` shared, and
    /// reads the revisions again. Never waits.
    pub fn lock_backup(&mut self) -> Result<BackupLock> {
        let lock = BackupLock {
            _backup: self.try_lock(".backup", true, HOLDS_BACKUP)?,
            _purge: self.try_lock(".purge", false, HOLDS_PURGE)?,
        };
        self.scan()?;
        Ok(lock)
    }

    /// Takes the read lock (`.purge` shared) so no revision is deleted under a
    /// reader, and reads the revisions again. Never waits.
    pub fn lock_read(&mut self) -> Result<ReadLock> {
        let lock = ReadLock {
            _purge: self.try_lock(".purge", false, HOLDS_PURGE)?,
        };
        self.scan()?;
        Ok(lock)
    }

    /// Takes the purge lock: `.backup` and `.purge` exclusive, and reads the
    /// revisions again. Never waits.
    pub fn lock_purge(&mut self) -> Result<PurgeLock> {
        let lock = PurgeLock {
            _backup: self.try_lock(".backup", true, HOLDS_BACKUP)?,
            _purge: self.try_lock(".purge", true, HOLDS_READ)?,
        };
        self.scan()?;
        Ok(lock)
    }

    // The lifecycle of a revision. Every `.rev` write goes through one of
    // these: a backup begins a revision and commits it ([`Job::begin_revision`],
    // [`Job::commit_revision`]); verify, distrust, protect, expiry's re-tagging
    // and a backup's re-check change a complete one ([`Job::update_rev`]); the
    // removals are in `remove.rs`. Each write holds the `.meta` lock, so two
    // processes never interleave a read-modify-write of the same `.rev`.

    /// Begins a revision: writes its incomplete `.rev` (no `duration`), which
    /// must not exist yet. Until [`Job::commit_revision`] the revision is
    /// invisible to SPECs, and the next backup removes it.
    pub fn begin_revision(&mut self, rev: &Revision, _lock: &BackupLock) -> Result<()> {
        if rev.is_complete() {
            return Err(Error::Lifecycle {
                id: rev.id.clone(),
                what: "it was begun complete",
            });
        }
        let _meta = self.lock_meta()?;
        let path = self.rev_path(&rev.id);
        if std::fs::symlink_metadata(&path).is_ok() {
            return Err(Error::Lifecycle {
                id: rev.id.clone(),
                what: "it was begun although its .rev exists",
            });
        }
        self.write_rev(rev)?;
        self.remember(rev.clone());
        Ok(())
    }

    /// Commits a revision whose image and manifest are written and synced:
    /// records `duration` (the marker of completeness, written last), makes
    /// the `.rev` read-only, and points `last` at the newest complete revision.
    pub fn commit_revision(
        &mut self,
        rev: &mut Revision,
        duration: f64,
        _lock: &BackupLock,
    ) -> Result<()> {
        rev.set_stat("duration", (duration * 10.0).round() / 10.0);
        {
            let _meta = self.lock_meta()?;
            self.write_rev(rev)?;
        }
        failpoint::hit("after-complete-rev");
        self.remember(rev.clone());
        self.update_last()
    }

    /// Changes a complete revision's metadata: under the `.meta` lock, reads
    /// its `.rev` again from disk (another process may have changed it since
    /// this one scanned), applies `change`, and when anything changed writes
    /// it atomically (unique temp file, fsync, rename, fsync dir). Returns the
    /// revision as now stored. The caller holds a lock that keeps the revision
    /// from being deleted (read, backup or purge lock).
    pub fn update_rev(&mut self, id: &str, change: impl FnOnce(&mut Revision)) -> Result<Revision> {
        let rev = {
            let _meta = self.lock_meta()?;
            let path = self.rev_path(id);
            if std::fs::symlink_metadata(&path).is_err() {
                return Err(Error::NoSuchRevision { spec: id.into() });
            }
            let before = Revision::load(&path, id)?;
            if !before.is_complete() {
                return Err(Error::Incomplete { id: id.into() });
            }
            let mut rev = before.clone();
            change(&mut rev);
            if !rev.is_complete() || rev.id != before.id {
                return Err(Error::Lifecycle {
                    id: id.into(),
                    what: "an update changed its id or completeness",
                });
            }
            if rev.to_yaml() != before.to_yaml() {
                self.write_rev(&rev)?;
            }
            rev
        };
        self.remember(rev.clone());
        Ok(rev)
    }

    /// Takes the `.meta` lock (exclusive), held for the few milliseconds of
    /// one `.rev` write. Waits up to [`META_LOCK_WAIT`] for another writer.
    fn lock_meta(&self) -> Result<File> {
        let deadline = std::time::Instant::now() + META_LOCK_WAIT;
        loop {
            match self.try_lock(".meta", true, HOLDS_META) {
                Err(Error::Locked { .. }) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(2));
                }
                other => return other,
            }
        }
    }

    /// Takes the `.meta` lock shared, for a consistent listing of the `.rev`
    /// files. A job directory this user cannot write (a monitoring user's
    /// `status`) is listed with `.meta` opened read-only, or without the lock
    /// when `.meta` does not exist there.
    fn lock_meta_shared(&self) -> Result<Option<File>> {
        let path = self.dir.join(".meta");
        let opened = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o640)
            .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
            .open(&path)
            .or_else(|_| {
                OpenOptions::new()
                    .read(true)
                    .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
                    .open(&path)
            });
        let Ok(file) = opened else {
            return Ok(None);
        };
        let deadline = std::time::Instant::now() + META_LOCK_WAIT;
        loop {
            match file.try_lock_shared() {
                Ok(()) => return Ok(Some(file)),
                Err(std::fs::TryLockError::WouldBlock) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(2));
                }
                Err(std::fs::TryLockError::WouldBlock) => {
                    return Err(Error::Locked {
                        what: format!("job {}", self.dir.display()),
                        holder: lock_holder(&file).unwrap_or_else(|| HOLDS_META.to_string()),
                        path,
                    });
                }
                Err(std::fs::TryLockError::Error(e)) => {
                    return Err(Error::io("cannot lock", path)(e));
                }
            }
        }
    }

    /// Writes a revision's `.rev` atomically; complete revisions read-only
    /// (0440). Only the lifecycle methods call this, holding the `.meta` lock.
    fn write_rev(&self, rev: &Revision) -> Result<()> {
        let mode = if rev.is_complete() { 0o440 } else { 0o640 };
        write_atomic(&self.rev_path(&rev.id), rev.to_yaml().as_bytes(), mode)
    }

    /// Points `last` and `last.rev` at the newest complete revision (or removes
    /// them). Whatever is there and is not a symlink (a regular file left by
    /// `cp -rL` or `rsync -L`, a directory) is renamed to `<link>.bak-<time>`,
    /// never deleted.
    pub fn update_last(&self) -> Result<()> {
        let newest = self.newest_complete().map(|r| r.id.clone());
        for (link, target) in self.link_targets(newest) {
            let path = self.dir.join(link);
            match std::fs::symlink_metadata(&path) {
                Ok(m) if m.file_type().is_symlink() => {
                    let current = std::fs::read_link(&path).ok();
                    if current.as_deref() == target.as_deref().map(Path::new) {
                        continue;
                    }
                    match std::fs::remove_file(&path) {
                        Ok(()) => {}
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                        Err(e) => return Err(Error::io("cannot replace", &path)(e)),
                    }
                }
                Ok(m) => {
                    let backup = self.free_backup_name(link);
                    std::fs::rename(&path, &backup)
                        .map_err(Error::io("cannot move aside", &path))?;
                    tracing::warn!(
                        "{} was {} instead of the symlink backy writes; moved it to {}",
                        path.display(),
                        describe_type(&m.file_type()),
                        backup.display()
                    );
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io("cannot inspect", &path)(e)),
            }
            if let Some(target) = target {
                std::os::unix::fs::symlink(&target, &path)
                    .map_err(Error::io("cannot create symlink", &path))?;
            }
        }
        sys::fsync_dir(&self.dir).map_err(Error::io("cannot sync", &self.dir))
    }

    /// `<link>.bak-<UTC time>`, with a counter when that exists already.
    fn free_backup_name(&self, link: &str) -> PathBuf {
        let stamp = Utc::now().format("%Y%m%dT%H%M%SZ");
        let mut path = self.dir.join(format!("{link}.bak-{stamp}"));
        let mut n = 1;
        while std::fs::symlink_metadata(&path).is_ok() {
            path = self.dir.join(format!("{link}.bak-{stamp}-{n}"));
            n += 1;
        }
        path
    }
}

/// Who may hold `.backup` (exclusive): the writers of a job.
const HOLDS_BACKUP: &str = "another backy process (a backup, receive, reshare, expire or forget)";
/// Who may hold `.purge` exclusively: the removers.
const HOLDS_PURGE: &str = "another backy process removing revisions (an expire or forget)";
/// Who may hold `.purge` shared when a remover wants it: the readers.
const HOLDS_READ: &str = "another backy process reading revisions (a restore, verify, send, export-diff, distrust, protect or backup)";
/// Who may hold `.meta`.
const HOLDS_META: &str = "another backy process writing revision metadata";

/// Who holds the lock on `file`, for [`Error::Locked`]: "backy verify (pid
/// 4242)" as `/proc` names the holders ([`sys::flock_holders`]); `None` when
/// it names none.
fn lock_holder(file: &File) -> Option<String> {
    use clap::CommandFactory;
    let commands = crate::cli::Cli::command();
    let own = std::process::id();
    let named: Vec<String> = sys::flock_holders(file)
        .into_iter()
        .filter(|(pid, _)| *pid != own)
        .map(|(pid, args)| {
            let program = args
                .first()
                .and_then(|a| Path::new(a).file_name())
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let command = args.iter().skip(1).find(|a| {
                commands
                    .get_subcommands()
                    .any(|c| c.get_name() == a.as_str())
            });
            match command {
                Some(c) if program == "backy" => format!("backy {c} (pid {pid})"),
                _ => format!("process {pid} ({program})"),
            }
        })
        .collect();
    match named.as_slice() {
        [] => None,
        [one] => Some(one.clone()),
        [first @ .., last] => Some(format!("{} and {last}", first.join(", "))),
    }
}

/// "a regular file", "a directory", ... for messages.
fn describe_type(t: &std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if t.is_file() {
        "a regular file"
    } else if t.is_dir() {
        "a directory"
    } else if t.is_symlink() {
        "a symlink"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_socket() {
        "a socket"
    } else {
        "a device node"
    }
}

/// The note for a revision dated in the future.
pub fn future_note(rev: &Revision) -> String {
    format!(
        "revision {} is dated {}, in the future: the clock was ahead when it was made, or is behind now; until the clock passes the newest revision's date, new revisions are dated just after it; check the system clock",
        rev.id,
        rev.timestamp.format("%Y-%m-%d %H:%M:%S UTC")
    )
}

/// File names of the throw-away overlays `nbd-server --overlay` writes to start
/// with this; a running server holds an exclusive `flock` on each of its own.
pub const OVERLAY_PREFIX: &str = ".nbd-overlay.";

/// Removes overlays that no running server holds (left by a crash) and returns
/// their paths. Safe while a server runs: its overlays are locked.
pub fn remove_stale_overlays(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut removed = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if !entry
            .file_name()
            .to_string_lossy()
            .starts_with(OVERLAY_PREFIX)
            || !entry.file_type()?.is_file()
        {
            continue;
        }
        let path = entry.path();
        let Ok(file) = OpenOptions::new()
            .read(true)
            .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
            .open(&path)
        else {
            continue;
        };
        if file.try_lock().is_ok() {
            std::fs::remove_file(&path)?;
            removed.push(path);
        }
    }
    Ok(removed)
}

/// Writes `path` atomically with `mode`: a temp file of its own beside it
/// (`<name>.tmp-<pid>-<n>`, flocked while written), fsync, rename, fsync dir.
/// Two processes writing the same file at once each rename a whole file of
/// their own; the last rename wins. Temp files a crash left (unlocked and
/// older than a minute) are removed on the way.
pub fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> Result<()> {
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let dir = path.parent().unwrap_or(Path::new("."));
    remove_stale_temps(dir, &name);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = dir.join(format!("{name}{TEMP_INFIX}{}-{n}", std::process::id()));
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o640)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(&tmp)
        .map_err(Error::io("cannot create", &tmp))?;
    let _ = file.try_lock();
    let written = (|| {
        file.write_all(contents)
            .map_err(Error::io("cannot write", &tmp))?;
        file.set_permissions(std::fs::Permissions::from_mode(mode))
            .map_err(Error::io("cannot chmod", &tmp))?;
        file.sync_all().map_err(Error::io("cannot sync", &tmp))?;
        std::fs::rename(&tmp, path).map_err(Error::io("cannot rename into place", path))
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written?;
    sys::fsync_dir(dir).map_err(Error::io("cannot sync", dir))
}

/// What [`write_atomic`] puts between a file's name and its temp file's
/// pid and counter.
pub const TEMP_INFIX: &str = ".tmp-";

/// Whether `file_name` is a temp file [`write_atomic`] makes for `target`
/// (or the fixed `<target>.tmp` of backy versions before 2026-12).
pub fn is_temp_of(file_name: &str, target: &str) -> bool {
    file_name
        .strip_prefix(target)
        .is_some_and(|rest| rest == ".tmp" || rest.starts_with(TEMP_INFIX))
}

/// Removes every temp file of [`write_atomic`] in `dir` that no writer
/// holds and that is older than a minute, whatever file it was for: what
/// killed metadata commands left (a backup's cleanup calls this).
pub fn remove_all_stale_temps(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let targets: std::collections::BTreeSet<String> = entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.find(TEMP_INFIX).map(|at| name[..at].to_string())
        })
        .collect();
    for target in targets {
        remove_stale_temps(dir, &target);
    }
}

/// Removes temp files of `target` in `dir` that no writer holds and that are
/// older than a minute (a crash left them; a live writer holds its flock
/// from a moment after creating it).
fn remove_stale_temps(dir: &Path, target: &str) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if !is_temp_of(name, target) {
            continue;
        }
        let path = entry.path();
        let old = entry
            .metadata()
            .ok()
            .and_then(|m| m.modified().ok())
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > std::time::Duration::from_secs(60));
        if !old {
            continue;
        }
        if let Ok(file) = OpenOptions::new()
            .read(true)
            .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
            .open(&path)
            && file.try_lock().is_ok()
        {
            let _ = std::fs::remove_file(&path);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    /// A job with one complete revision "r".
    fn job_with_one_revision() -> (tempfile::TempDir, Job) {
        let tmp = tempfile::tempdir().unwrap();
        let mut job = Job::open(tmp.path()).unwrap();
        std::fs::write(job.image_path("r"), b"image").unwrap();
        let rev = Revision::new("r".into(), None, BTreeSet::new());
        let lock = job.lock_backup().unwrap();
        job.begin_revision(&rev, &lock).unwrap();
        assert!(matches!(
            job.begin_revision(&rev, &lock),
            Err(Error::Lifecycle { .. })
        ));
        let mut rev = rev;
        job.commit_revision(&mut rev, 1.04, &lock).unwrap();
        assert_eq!(rev.duration(), Some(1.0));
        (tmp, job)
    }

    /// A job large enough to be read on several threads sorts and classifies
    /// its revisions as one read in the listing's order would: good ones in
    /// order, a symlinked `.rev`, an unparsable one and a missing image as
    /// damaged.
    #[test]
    fn a_large_job_is_read_whole_and_in_order() {
        let tmp = tempfile::tempdir().unwrap();
        let mut job = Job::open(tmp.path()).unwrap();
        let lock = job.lock_backup().unwrap();
        for i in 0..30 {
            let id = format!("r{i:02}");
            std::fs::write(job.image_path(&id), b"image").unwrap();
            let mut rev = Revision::new(id, None, BTreeSet::new());
            rev.timestamp = DateTime::from_timestamp(1_700_000_000 + i, 0).unwrap();
            job.begin_revision(&rev, &lock).unwrap();
            job.commit_revision(&mut rev, 1.0, &lock).unwrap();
        }
        drop(lock);
        std::fs::remove_file(job.image_path("r07")).unwrap();
        std::fs::write(tmp.path().join("bad.rev"), b"\xff\xfe").unwrap();
        std::os::unix::fs::symlink(job.rev_path("r01"), tmp.path().join("link.rev")).unwrap();
        job.scan().unwrap();
        let ids: Vec<&str> = job.revisions().iter().map(|r| r.id.as_str()).collect();
        let expected: Vec<String> = (0..30)
            .filter(|&i| i != 7)
            .map(|i| format!("r{i:02}"))
            .collect();
        assert_eq!(ids, expected);
        let damaged: Vec<(&str, &str)> = job
            .damaged
            .iter()
            .map(|d| (d.id.as_str(), d.reason.as_str()))
            .collect();
        assert_eq!(damaged.len(), 3, "{damaged:?}");
        assert_eq!(damaged[0].0, "bad");
        assert!(damaged[0].1.contains("not text"), "{damaged:?}");
        assert_eq!(damaged[1].0, "link");
        assert!(damaged[1].1.contains("symbolic link"), "{damaged:?}");
        assert_eq!(damaged[2], ("r07", "the image is missing"));
    }

    /// Many writers, each with its own `Job` (its own lock file
    /// descriptions, as separate processes have), add one tag each to the
    /// same revision: every tag lands, and no temp file is left.
    #[test]
    fn concurrent_updates_lose_nothing() {
        let (tmp, job) = job_with_one_revision();
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let dir = job.dir().to_owned();
                std::thread::spawn(move || {
                    let mut job = Job::open(&dir).unwrap();
                    for i in 0..25 {
                        job.update_rev("r", |rev| {
                            rev.tags.insert(format!("t{t}-{i}"));
                        })
                        .unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let rev = Revision::load(&job.rev_path("r"), "r").unwrap();
        assert_eq!(rev.tags.len(), 8 * 25);
        assert!(rev.is_complete());
        let names: Vec<String> = std::fs::read_dir(tmp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains(".tmp"))
            .collect();
        assert!(names.is_empty(), "left over: {names:?}");
    }

    /// An update re-reads the file: a change another process made after this
    /// one scanned is kept, and the cached list shows the result.
    #[test]
    fn an_update_builds_on_what_is_on_disk() {
        let (_tmp, mut job) = job_with_one_revision();
        let mut other = Job::open(job.dir()).unwrap();
        other
            .update_rev("r", |rev| rev.trust = revision::Trust::Distrusted)
            .unwrap();
        let rev = job
            .update_rev("r", |rev| {
                rev.tags.insert("daily".into());
            })
            .unwrap();
        assert_eq!(rev.trust, revision::Trust::Distrusted);
        assert_eq!(
            job.revision("r").unwrap().trust,
            revision::Trust::Distrusted
        );
        assert!(matches!(
            job.update_rev("nope", |_| {}),
            Err(Error::NoSuchRevision { .. })
        ));
        assert!(matches!(
            job.update_rev("r", |rev| {
                rev.stats.remove("duration");
            }),
            Err(Error::Lifecycle { .. })
        ));
    }

    /// Temp files: a crash's leftovers (unlocked, old) go on the next write;
    /// a young or locked one stays (a writer may be busy with it).
    #[test]
    fn stale_temp_files_are_removed_and_live_ones_kept() {
        let tmp = tempfile::tempdir().unwrap();
        let target = tmp.path().join("status");
        let old = tmp.path().join(format!("status{TEMP_INFIX}1-0"));
        let young = tmp.path().join(format!("status{TEMP_INFIX}2-0"));
        let legacy = tmp.path().join("status.tmp");
        for p in [&old, &young, &legacy] {
            std::fs::write(p, b"half").unwrap();
        }
        let past = std::time::SystemTime::now() - std::time::Duration::from_secs(120);
        for p in [&old, &legacy] {
            File::options()
                .write(true)
                .open(p)
                .unwrap()
                .set_modified(past)
                .unwrap();
        }
        write_atomic(&target, b"whole", 0o644).unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"whole");
        assert!(!old.exists() && !legacy.exists());
        assert!(young.exists());
        // A backup's sweep takes old ones of any file, and keeps young ones.
        let other = tmp.path().join(format!("x.rev{TEMP_INFIX}3-0"));
        std::fs::write(&other, b"half").unwrap();
        File::options()
            .write(true)
            .open(&other)
            .unwrap()
            .set_modified(past)
            .unwrap();
        remove_all_stale_temps(tmp.path());
        assert!(!other.exists());
        assert!(young.exists());
        assert!(is_temp_of("a.rev.tmp-12-3", "a.rev"));
        assert!(is_temp_of("a.rev.tmp", "a.rev"));
        assert!(!is_temp_of("a.rev", "a.rev"));
        assert!(!is_temp_of("ab.rev.tmp-1-1", "a.rev"));
    }
}
