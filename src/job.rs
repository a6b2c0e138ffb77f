//! A job directory: its config, its revisions, its locks and the `last` links.
//!
//! See the crate documentation for the layout, the lock order and the order in
//! which a backup makes its files durable.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::config::JobConfig;
use crate::error::{Error, Result};
use crate::revision::Revision;
use crate::spec;
use crate::sys;

/// A job directory and the revisions found in it (oldest first).
pub struct Job {
    dir: PathBuf,
    /// All revisions with a readable `.rev`, complete or not, oldest first.
    pub revisions: Vec<Revision>,
}

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
            return Err(Error::Other(format!(
                "job directory {} does not exist; create it with 'backy -b {} init file PATH'",
                dir.display(),
                dir.display()
            )));
        }
        let mut job = Job {
            dir,
            revisions: Vec::new(),
        };
        job.scan()?;
        Ok(job)
    }

    /// Re-reads the revisions from disk.
    pub fn scan(&mut self) -> Result<()> {
        let mut revisions = Vec::new();
        let entries = std::fs::read_dir(&self.dir).map_err(Error::io("cannot list", &self.dir))?;
        for entry in entries {
            let entry = entry.map_err(Error::io("cannot list", &self.dir))?;
            let name = entry.file_name();
            let Some(id) = name.to_str().and_then(|n| n.strip_suffix(".rev")) else {
                continue;
            };
            // `last.rev` is a symlink to a real one.
            if entry.file_type().map(|t| t.is_symlink()).unwrap_or(true) || id.is_empty() {
                continue;
            }
            let rev = Revision::load(&entry.path(), id)?;
            if rev.backend_type() != "cowfile" {
                return Err(Error::Other(format!(
                    "revision {id} in {} was written by backy 2.2+ with the '{}' backend, which this backy cannot read; restore it with that backy version",
                    self.dir.display(),
                    rev.backend_type()
                )));
            }
            revisions.push(rev);
        }
        revisions.sort_by(|a, b| a.timestamp.cmp(&b.timestamp).then_with(|| a.id.cmp(&b.id)));
        self.revisions = revisions;
        Ok(())
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

    /// Path of a revision's metadata.
    pub fn rev_path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.rev"))
    }

    /// Path of a revision's checksum manifest.
    pub fn sums_path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.sums"))
    }

    /// Every file name a revision may own, including temp files from a crash.
    fn owned_paths(&self, id: &str) -> Vec<PathBuf> {
        ["", ".rev", ".sums", ".rev.tmp", ".sums.tmp"]
            .iter()
            .map(|suffix| self.dir.join(format!("{id}{suffix}")))
            .collect()
    }

    /// The newest complete revision.
    pub fn newest_complete(&self) -> Option<&Revision> {
        self.revisions.iter().rev().find(|r| r.is_complete())
    }

    /// Resolves `-r SPEC` to a complete revision.
    pub fn resolve(&self, spec_text: &str) -> Result<&Revision> {
        let rev = spec::resolve(&self.revisions, spec_text)?;
        if !rev.is_complete() {
            return Err(Error::Incomplete { id: rev.id.clone() });
        }
        Ok(rev)
    }

    /// Opens (creating) and flocks `<job>/<name>` without waiting; `what` names
    /// the holder we would be waiting for, for the error message.
    fn try_lock(&self, name: &str, exclusive: bool, what: &str) -> Result<File> {
        let path = self.dir.join(name);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o640)
            .open(&path)
            .map_err(Error::io("cannot open lock file", &path))?;
        let locked = if exclusive {
            file.try_lock()
        } else {
            file.try_lock_shared()
        };
        match locked {
            Ok(()) => Ok(file),
            Err(std::fs::TryLockError::WouldBlock) => Err(Error::Locked {
                what: format!("{what} {}", self.dir.display()),
                path,
            }),
            Err(std::fs::TryLockError::Error(e)) => Err(Error::io("cannot lock", path)(e)),
        }
    }

    /// Takes the backup lock: `.backup` exclusive, then `.purge` shared. Never waits.
    pub fn lock_backup(&self) -> Result<BackupLock> {
        Ok(BackupLock {
            _backup: self.try_lock(".backup", true, "a backup of job")?,
            _purge: self.try_lock(".purge", false, "revision removal in job")?,
        })
    }

    /// Takes the read lock (`.purge` shared) so no revision is deleted under a reader.
    pub fn lock_read(&self) -> Result<ReadLock> {
        Ok(ReadLock {
            _purge: self.try_lock(".purge", false, "revision removal in job")?,
        })
    }

    /// Takes the purge lock: `.backup` and `.purge` exclusive. Never waits.
    pub fn lock_purge(&self) -> Result<PurgeLock> {
        Ok(PurgeLock {
            _backup: self.try_lock(".backup", true, "a backup of job")?,
            _purge: self.try_lock(".purge", true, "a restore or export of job")?,
        })
    }

    /// Removes every incomplete revision (needs the backup lock); returns their ids.
    pub fn remove_incomplete(&mut self, _lock: &BackupLock) -> Result<Vec<String>> {
        let incomplete: Vec<String> = self
            .revisions
            .iter()
            .filter(|r| !r.is_complete())
            .map(|r| r.id.clone())
            .collect();
        for id in &incomplete {
            self.remove_files(id)?;
        }
        // Temp files of a `.rev` whose first write never landed.
        if let Ok(entries) = std::fs::read_dir(&self.dir) {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if let Some(id) = name.strip_suffix(".rev.tmp")
                    && !self.rev_path(id).exists()
                {
                    self.remove_files(id)?;
                }
            }
        }
        self.revisions.retain(|r| r.is_complete());
        Ok(incomplete)
    }

    /// Deletes a revision's files by exact name, `.rev` last, so a crash leaves an
    /// incomplete-looking revision rather than an orphan image.
    fn remove_files(&self, id: &str) -> Result<()> {
        let mut paths = self.owned_paths(id);
        let rev = paths.remove(1);
        paths.push(rev);
        for path in paths {
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io("cannot remove", &path)(e)),
            }
        }
        sys::fsync_dir(&self.dir).map_err(Error::io("cannot sync", &self.dir))
    }

    /// Removes a complete or incomplete revision (needs the purge lock) and fixes `last`.
    pub fn remove_revision(&mut self, id: &str, _lock: &PurgeLock) -> Result<()> {
        // Mark it incomplete first: a crash half-way must not leave a "complete"
        // revision without its image.
        if let Some(rev) = self.revisions.iter().find(|r| r.id == id) {
            let mut rev = rev.clone();
            rev.stats.remove("duration");
            self.write_rev(&rev)?;
        }
        self.remove_files(id)?;
        self.revisions.retain(|r| r.id != id);
        self.update_last()
    }

    /// Writes a revision's `.rev` atomically (temp file, fsync, rename, fsync dir).
    /// Complete revisions are written read-only (0440).
    pub fn write_rev(&self, rev: &Revision) -> Result<()> {
        let mode = if rev.is_complete() { 0o440 } else { 0o640 };
        write_atomic(&self.rev_path(&rev.id), rev.to_yaml().as_bytes(), mode)
    }

    /// Points `last` and `last.rev` at the newest complete revision (or removes them).
    pub fn update_last(&self) -> Result<()> {
        let newest = self.newest_complete().map(|r| r.id.clone());
        for (link, target) in [
            ("last", newest.clone()),
            ("last.rev", newest.map(|id| format!("{id}.rev"))),
        ] {
            let path = self.dir.join(link);
            let current = std::fs::read_link(&path).ok();
            if current.as_deref() == target.as_deref().map(Path::new) {
                continue;
            }
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io("cannot replace", &path)(e)),
            }
            if let Some(target) = target {
                std::os::unix::fs::symlink(&target, &path)
                    .map_err(Error::io("cannot create symlink", &path))?;
            }
        }
        sys::fsync_dir(&self.dir).map_err(Error::io("cannot sync", &self.dir))
    }
}

/// Writes `path` atomically with `mode`: temp file beside it, fsync, rename, fsync dir.
pub fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> Result<()> {
    let tmp = path.with_file_name(format!(
        "{}.tmp",
        path.file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default()
    ));
    let _ = std::fs::remove_file(&tmp);
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o640)
        .open(&tmp)
        .map_err(Error::io("cannot create", &tmp))?;
    file.write_all(contents)
        .map_err(Error::io("cannot write", &tmp))?;
    file.set_permissions(std::fs::Permissions::from_mode(mode))
        .map_err(Error::io("cannot chmod", &tmp))?;
    file.sync_all().map_err(Error::io("cannot sync", &tmp))?;
    std::fs::rename(&tmp, path).map_err(Error::io("cannot rename into place", path))?;
    let dir = path.parent().unwrap_or(Path::new("."));
    sys::fsync_dir(dir).map_err(Error::io("cannot sync", dir))
}

impl Job {
    /// Removes the files of a revision that failed before completion.
    pub fn discard_incomplete(&self, id: &str, _lock: &BackupLock) -> Result<()> {
        self.remove_files(id)
    }
}
