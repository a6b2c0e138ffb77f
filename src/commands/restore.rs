//! `backy restore [-r SPEC] [--force] [--verify] TARGET`.
//!
//! What a restore guarantees:
//! - it never writes into the job: a target that is (after symlinks, hard links,
//!   bind mounts, `last`) a file of the job directory, or a new file in it, is
//!   refused, whatever `--force` says;
//! - the image has the size its manifest records, or nothing is restored;
//! - distrusted or not fully verified revisions are warned about (log and stderr);
//! - `--verify` checks every block against the manifest before it is written (or,
//!   after a reflink clone, reads the clone back) and stops at the first mismatch;
//! - block devices are opened exclusively (`O_EXCL`): never over a mounted
//!   filesystem;
//! - a file target that fails midway (full filesystem, mismatch) is removed if
//!   the restore created or truncated it; character devices and FIFOs are
//!   written as streams, without truncation.

use std::fs::{File, Metadata, OpenOptions};
use std::io::Write;
use std::os::fd::AsFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::image::{self, Sink, sums::Manifest};
use crate::job::Job;
use crate::progress::Progress;
use crate::revision::{Revision, Trust};
use crate::sys;

/// How `restore` was asked to work.
#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    /// Overwrite an existing non-empty file.
    pub force: bool,
    /// Check every block against the manifest while restoring.
    pub verify: bool,
    /// Log lines already go to stderr (no `-l`): warnings need no second copy.
    pub log_on_stderr: bool,
}

/// What the target is.
enum Target {
    Stdout,
    BlockDevice {
        rdev: u64,
    },
    /// A character device or a FIFO: written as a stream, never truncated.
    Stream,
    /// A regular file, or nothing yet.
    File {
        existing: Option<Metadata>,
    },
}

/// The revision being restored, with what is needed to check it.
struct Restore<'a> {
    job: &'a mut Job,
    rev: Revision,
    src: File,
    src_path: PathBuf,
    size: u64,
    /// Set with `--verify` only: the manifest every block is checked against.
    check: Option<Manifest>,
}

/// Copies a revision to `target`: `-` (stdout), a block device, a character
/// device or FIFO, or a file.
pub fn run(dir: &Path, spec: &str, target: &Path, opts: Options) -> Result<()> {
    let mut job = Job::open(dir)?;
    let _lock = job.lock_read()?;
    let rev = job.resolve(spec)?.clone();
    let src_path = job.image_path(&rev.id);
    let src = job.open_image(&rev.id)?;
    let size = image::file_size(&src, &src_path)?;
    let manifest = load_manifest(&mut job, &rev, &src_path, size, opts)?;
    warn_about_trust(&rev, manifest.is_some(), opts);
    let kind = classify(target)?;
    tracing::info!(
        "Restoring revision {} ({} bytes) to {}{}",
        rev.id,
        size,
        target.display(),
        if opts.verify {
            ", checking every block"
        } else {
            ""
        }
    );
    let mut restore = Restore {
        job: &mut job,
        rev,
        src,
        src_path,
        size,
        check: if opts.verify { manifest } else { None },
    };
    match kind {
        Target::Stdout => restore.write_stdout(),
        Target::BlockDevice { rdev } => restore.write_device(target, rdev),
        Target::Stream => restore.write_stream(target),
        Target::File { existing } => restore.write_file(target, existing, opts.force),
    }
}

/// The revision's manifest, after comparing its image size with the image's.
/// `None` when there is none (backy 2.1) or it is unusable, which `--verify`
/// refuses.
fn load_manifest(
    job: &mut Job,
    rev: &Revision,
    image_path: &Path,
    size: u64,
    opts: Options,
) -> Result<Option<Manifest>> {
    let sums = job.sums_path(&rev.id);
    let manifest = match Manifest::open(&sums, false) {
        Ok(m) => m,
        Err(e) => {
            let reason = if sums.exists() {
                e.to_string()
            } else {
                format!("its checksum manifest {} does not exist", sums.display())
            };
            if opts.verify {
                return Err(Error::NoManifestToVerify {
                    id: rev.id.clone(),
                    reason,
                });
            }
            // File sources (ours and backy 2.1's) record the source size as
            // `bytes_written`: the one size check left. Ceph diffs record less.
            let is_file_job = job.config().is_ok_and(|c| c.source.type_name() == "file");
            let recorded = rev.bytes_written();
            let size_note = if is_file_job && recorded > 0 && recorded != size {
                format!(
                    "; its image has {size} bytes but its .rev records {recorded} (bytes_written), so it may be damaged"
                )
            } else {
                String::new()
            };
            warn(
                opts,
                &format!(
                    "Revision {}: {reason}, so its content cannot be checked{size_note}",
                    rev.id
                ),
            );
            return Ok(None);
        }
    };
    if manifest.image_size() != size {
        distrust(job, rev);
        return Err(Error::ImageSizeMismatch {
            id: rev.id.clone(),
            path: image_path.to_owned(),
            size,
            expected: manifest.image_size(),
        });
    }
    Ok(Some(manifest))
}

/// Warns (log and stderr) about a distrusted revision, or one whose backup did
/// not check every block.
fn warn_about_trust(rev: &Revision, has_manifest: bool, opts: Options) {
    let id = &rev.id;
    let advice = if opts.verify {
        "--verify checks every block against its manifest"
    } else {
        "use --verify to check every block against its manifest"
    };
    if rev.trust == Trust::Distrusted {
        warn(
            opts,
            &format!(
                "Revision {id} is distrusted (a check found it damaged or could not read it); its data may be wrong; {advice}, or restore another revision"
            ),
        );
        return;
    }
    if rev.trust == Trust::Verified || !has_manifest {
        return;
    }
    let why = match rev.stats.get("verification").and_then(|v| v.as_str()) {
        // `written` proved what it did not read by its mapping to the verified parent.
        Some("full" | "written") => return,
        Some(how) => {
            format!("its backup verified it only partly (stats.verification: {how})")
        }
        None => "it records no verification at backup time".to_string(),
    };
    let msg = format!("Revision {id}: {why}; {advice}");
    if opts.verify {
        tracing::info!("{msg}");
    } else {
        warn(opts, &msg);
    }
}

fn warn(opts: Options, msg: &str) {
    tracing::warn!("{msg}");
    if !opts.log_on_stderr {
        eprintln!("backy: warning: {msg}");
    }
}

/// Marks a revision found damaged as distrusted (best effort: a read-only job
/// directory still gets the restore's error).
fn distrust(job: &mut Job, rev: &Revision) {
    if rev.trust == Trust::Distrusted {
        return;
    }
    match job.update_rev(&rev.id, |r| r.trust = Trust::Distrusted) {
        Ok(_) => tracing::warn!("Revision {} is now distrusted", rev.id),
        Err(e) => tracing::warn!("Could not mark revision {} distrusted: {e}", rev.id),
    }
}

fn classify(target: &Path) -> Result<Target> {
    if target == Path::new("-") {
        return Ok(Target::Stdout);
    }
    match std::fs::metadata(target) {
        Ok(meta) => {
            let t = meta.file_type();
            if t.is_block_device() {
                Ok(Target::BlockDevice { rdev: meta.rdev() })
            } else if t.is_char_device() || t.is_fifo() {
                Ok(Target::Stream)
            } else if meta.is_dir() {
                Err(Error::TargetIsDirectory {
                    path: target.to_owned(),
                })
            } else if meta.is_file() {
                Ok(Target::File {
                    existing: Some(meta),
                })
            } else {
                Err(Error::TargetIsSocket {
                    path: target.to_owned(),
                })
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Target::File { existing: None }),
        Err(e) => Err(Error::io("cannot inspect restore target", target)(e)),
    }
}

/// The revision a file name of the job directory belongs to.
fn owner(job: &Job, name: &str) -> Option<String> {
    // Strip a temp file's tail (`.rev.tmp-<pid>-<n>`), then the suffix.
    let base = name
        .find(crate::job::TEMP_INFIX)
        .map_or(name, |at| &name[..at]);
    let base = base.strip_suffix(".tmp").unwrap_or(base);
    ["", ".rev", ".sums"]
        .iter()
        .filter_map(|suffix| base.strip_suffix(suffix))
        .find(|stem| {
            !stem.is_empty()
                && *stem != "last"
                && (job.revision(stem).is_some()
                    || job.rev_path(stem).exists()
                    || job.sums_path(stem).exists())
        })
        .map(str::to_string)
}

/// Refuses a target whose file (`meta`, after following symlinks) is one of the
/// job directory's: same device and inode catches hard links, symlinks, `last`
/// and other mounts of the same filesystem (bind mounts).
fn refuse_job_file(job: &Job, target: &Path, meta: &Metadata) -> Result<()> {
    let dir = job.dir();
    let entries = std::fs::read_dir(dir).map_err(Error::io("cannot list", dir))?;
    for entry in entries.flatten() {
        let Ok(m) = entry.path().symlink_metadata() else {
            continue;
        };
        if m.file_type().is_symlink() || (m.dev(), m.ino()) != (meta.dev(), meta.ino()) {
            continue;
        }
        return Err(Error::TargetInJob {
            target: target.to_owned(),
            file: entry.path(),
            revision: owner(job, &entry.file_name().to_string_lossy()),
        });
    }
    Ok(())
}

/// Refuses to create `target` (which does not exist) directly in the job directory.
fn refuse_new_in_job(job: &Job, target: &Path) -> Result<()> {
    let parent = match target.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let (Ok(p), Ok(d)) = (std::fs::metadata(parent), std::fs::metadata(job.dir())) else {
        return Ok(());
    };
    if (p.dev(), p.ino()) == (d.dev(), d.ino()) {
        let name = target.file_name().unwrap_or_default();
        return Err(Error::TargetInJob {
            target: target.to_owned(),
            file: job.dir().join(name),
            revision: owner(job, &name.to_string_lossy()),
        });
    }
    Ok(())
}

/// Turns a full filesystem (or quota) while writing `target` into an error that
/// names the target's filesystem; other errors pass.
fn full_target(e: Error, target: &Path, real: Option<&Path>, note: &str) -> Error {
    match e {
        Error::NoSpace { source, .. } => {
            let probe = real
                .and_then(Path::parent)
                .or_else(|| target.parent())
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            Error::TargetFull {
                target: target.to_owned(),
                mount: sys::mount_point_of(probe),
                fs: sys::filesystem_name(probe),
                note: note.to_string(),
                source,
            }
        }
        other => other,
    }
}

impl Restore<'_> {
    /// Copies the image into `sink`, checking it with `--verify`.
    fn copy(&mut self, source: Option<(&File, &Path)>, sink: Sink<'_>, note: &str) -> Result<()> {
        let (file, path) = source.unwrap_or((&self.src, &self.src_path));
        let mut progress = Progress::new("restore", self.size);
        let mismatch = image::copy_checked(file, path, self.check.as_mut(), sink, &mut |n| {
            progress.inc(n)
        })
        .map_err(|e| match e {
            Error::ReadFailed {
                path,
                offset,
                len,
                source,
                ..
            } => Error::ReadFailed {
                what: "cannot read revision image",
                path,
                offset,
                len,
                hint: format!(
                    "the disk under the job reports a read error there (see the kernel log, dmesg); the restore stopped, {note}; run 'backy verify -r {id}' (it marks the revision distrusted) and restore another revision ('backy status' lists them)",
                    id = self.rev.id
                ),
                source,
            },
            other => other,
        })?;
        progress.finish();
        match mismatch {
            None => {
                if self.check.is_some() {
                    tracing::info!(
                        "Every block of revision {} matched its checksum",
                        self.rev.id
                    );
                }
                Ok(())
            }
            Some(offset) => {
                distrust(self.job, &self.rev);
                let block_size = self.check.as_ref().map_or(1, |m| m.block_size());
                Err(Error::RestoreMismatch {
                    id: self.rev.id.clone(),
                    offset,
                    block: offset / block_size,
                    block_size,
                    target_note: note.to_string(),
                })
            }
        }
    }

    fn write_stdout(&mut self) -> Result<()> {
        let name = Path::new("stdout");
        // The image goes to (a duplicate of) the descriptor itself: Rust's
        // stdout is line-buffered, which split every chunk into a write up to its
        // last newline byte and a short one for the rest. Nothing else of a
        // restore writes to stdout.
        let mut out = std::io::stdout()
            .as_fd()
            .try_clone_to_owned()
            .map(File::from)
            .map_err(Error::io("cannot write", name))?;
        // `restore - > JOB/last` must not write into the revision either (the
        // shell has truncated it already, but more can still be lost).
        if let Ok(meta) = out.metadata()
            && meta.is_file()
        {
            refuse_job_file(self.job, name, &meta)?;
        }
        let real = std::fs::read_link("/proc/self/fd/1").ok();
        let note = "stdout got only part of the image";
        self.copy(None, Sink::Dense(&mut out, name), note)
            .and_then(|()| out.flush().map_err(Error::io("cannot write", name)))
            .map_err(|e| match (e, &real) {
                // A reader that went away (`restore - | head`) ends the restore quietly.
                (Error::Io { source, .. }, _)
                    if source.kind() == std::io::ErrorKind::BrokenPipe =>
                {
                    Error::Output { source }
                }
                (e, Some(p)) if p.is_absolute() => full_target(e, p, Some(p), note),
                (e, _) => e,
            })
    }

    fn write_device(&mut self, target: &Path, rdev: u64) -> Result<()> {
        // A loop device over a file of the job is that file.
        if let Some(backing) = sys::loop_backing_file(rdev)
            && let Ok(meta) = std::fs::metadata(&backing)
        {
            refuse_job_file(self.job, target, &meta)?;
        }
        let mut dev = sys::open_block_device_exclusive(target).map_err(|e| {
            if sys::is_busy(&e) {
                Error::DeviceBusy {
                    path: target.to_owned(),
                    mounts: sys::mount_points_of_device(target, rdev),
                }
            } else {
                Error::io("cannot open restore target", target)(e)
            }
        })?;
        let dev_size = image::file_size(&dev, target)?;
        if dev_size < self.size {
            return Err(Error::DeviceTooSmall {
                path: target.to_owned(),
                size: dev_size,
                needed: self.size,
            });
        }
        self.copy(
            None,
            Sink::Dense(&mut dev, target),
            "the device holds the image only up to there",
        )?;
        dev.sync_all().map_err(Error::io("cannot sync", target))
    }

    fn write_stream(&mut self, target: &Path) -> Result<()> {
        let mut out = OpenOptions::new()
            .write(true)
            .open(target)
            .map_err(Error::io("cannot open restore target", target))?;
        self.copy(
            None,
            Sink::Dense(&mut out, target),
            "the target got only part of the image",
        )
        .map_err(|e| match e {
            Error::NoSpace { source, .. } => Error::StreamFull {
                path: target.to_owned(),
                source,
            },
            other => other,
        })
    }

    fn write_file(&mut self, target: &Path, existing: Option<Metadata>, force: bool) -> Result<()> {
        match &existing {
            Some(meta) => {
                refuse_job_file(self.job, target, meta)?;
                if meta.len() > 0 && !force {
                    return Err(Error::TargetExists {
                        path: target.to_owned(),
                    });
                }
            }
            None => refuse_new_in_job(self.job, target)?,
        }
        let created = existing.is_none();
        // Not truncated on open: what was opened is checked first.
        let out = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(target)
            .map_err(Error::io("cannot open restore target", target))?;
        let real = std::fs::canonicalize(target).ok();
        let meta = out
            .metadata()
            .map_err(Error::io("cannot inspect restore target", target))?;
        // A symlink that pointed nowhere may have created the file in the job.
        if let Err(e) = refuse_job_file(self.job, target, &meta) {
            if created
                && meta.len() == 0
                && let Some(real) = &real
            {
                let _ = std::fs::remove_file(real);
            }
            return Err(e);
        }
        let truncated = meta.len() > 0;
        if truncated {
            out.set_len(0)
                .map_err(Error::io("cannot truncate restore target", target))?;
        }
        let (note, remove) = match (created || truncated, &real) {
            (true, Some(real)) => ("the partial file was removed", Some(real.clone())),
            _ => ("the file was emptied again", None),
        };
        let result = self
            .fill_file(&out, target, note)
            .and_then(|()| out.sync_all().map_err(Error::io("cannot sync", target)));
        if let Err(e) = result {
            let e = full_target(e, target, real.as_deref(), note);
            match &remove {
                Some(path) => {
                    if let Err(re) = std::fs::remove_file(path) {
                        tracing::warn!("Could not remove {}: {re}", path.display());
                    }
                }
                None => {
                    let _ = out.set_len(0);
                }
            }
            return Err(e);
        }
        Ok(())
    }

    /// Reflinks the image into `out` where the filesystem can (then, with
    /// `--verify`, reads the clone back against the manifest), else writes a
    /// sparse copy, checked block by block with `--verify`.
    fn fill_file(&mut self, out: &File, target: &Path, note: &str) -> Result<()> {
        let src = self
            .src
            .try_clone()
            .map_err(Error::io("cannot open", &self.src_path))?;
        let kind = image::reflink_or(&src, out, target, || {
            self.copy(None, Sink::Sparse(out, target), note)
        })?;
        if kind == image::CloneKind::Reflink {
            tracing::info!("Restored as a reflink clone (no data copied)");
            if self.check.is_some() {
                self.copy(Some((out, target)), Sink::Nothing, note)?;
            }
        }
        Ok(())
    }
}
