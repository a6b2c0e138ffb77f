//! Removing revisions: the one answer to "where is a revision removed?".
//!
//! A backup removes incomplete revisions under its backup lock (those a crash
//! left, and its own when it fails); `forget` removes one revision, and expiry
//! those a retention plan deletes, under the purge lock. All of them delete the
//! files through [`Job::remove_files`].

use std::path::PathBuf;

use super::{BackupLock, Job, PurgeLock, remove_stale_overlays};
use crate::error::{Error, Result};
use crate::sys;

impl Job {
    /// Every file name a revision may own, including temp files from a crash.
    fn owned_paths(&self, id: &str) -> Vec<PathBuf> {
        ["", ".rev", ".sums", ".rev.tmp", ".sums.tmp"]
            .iter()
            .map(|suffix| self.dir.join(format!("{id}{suffix}")))
            .collect()
    }

    /// Deletes a revision's files by exact name, `.rev` last, so a crash leaves an
    /// incomplete-looking revision rather than an orphan image. The one place
    /// where a revision's files are deleted: `forget` (of a revision or a
    /// damaged one), expiry and a backup's cleanup of incomplete revisions all
    /// come here.
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

    /// Deletes a damaged revision's files (`forget -r ID --force`; needs the purge lock).
    pub fn remove_damaged(&mut self, id: &str, _lock: &PurgeLock) -> Result<()> {
        self.remove_files(id)?;
        self.damaged.retain(|d| d.id != id);
        self.update_last()
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
        match remove_stale_overlays(&self.dir) {
            Ok(paths) => {
                for path in paths {
                    tracing::info!(
                        "Removed NBD overlay {} left by a crashed server",
                        path.display()
                    );
                }
            }
            Err(e) => tracing::warn!(
                "Could not look for stale NBD overlays in {}: {e}",
                self.dir.display()
            ),
        }
        Ok(incomplete)
    }

    /// Removes the files of a revision that failed before completion.
    pub fn discard_incomplete(&self, id: &str, _lock: &BackupLock) -> Result<()> {
        self.remove_files(id)
    }
}
