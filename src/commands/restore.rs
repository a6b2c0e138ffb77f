//! `backy restore [-r SPEC] [--force] TARGET`.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileTypeExt;
use std::path::Path;

use crate::error::{Error, Result};
use crate::image;
use crate::job::Job;
use crate::progress::Progress;
use crate::sys;

/// Copies a revision to `target`: `-` (stdout), a block device, or a file.
pub fn run(dir: &Path, spec: &str, target: &Path, force: bool) -> Result<()> {
    let job = Job::open(dir)?;
    let _lock = job.lock_read()?;
    let rev = job.resolve(spec)?;
    let src_path = job.image_path(&rev.id);
    let src = File::open(&src_path).map_err(Error::io("cannot open revision image", &src_path))?;
    let size = image::file_size(&src, &src_path)?;
    tracing::info!(
        "Restoring revision {} ({} bytes) to {}",
        rev.id,
        size,
        target.display()
    );

    if target == Path::new("-") {
        let stdout = std::io::stdout();
        let mut out = stdout.lock();
        let mut progress = Progress::new("restore", size);
        image::copy_dense(&src, &src_path, &mut out, Path::new("stdout"), &mut |n| {
            progress.inc(n)
        })?;
        return out.flush().map_err(Error::io("cannot write", "stdout"));
    }

    match std::fs::metadata(target) {
        Ok(meta) if meta.file_type().is_block_device() => {
            return restore_to_device(&src, &src_path, size, target);
        }
        Ok(meta) if meta.is_dir() => {
            return Err(Error::Other(format!(
                "restore target {} is a directory; give a file name or a block device",
                target.display()
            )));
        }
        Ok(meta) if meta.len() > 0 && !force => {
            return Err(Error::TargetExists {
                path: target.to_owned(),
            });
        }
        _ => {}
    }
    let out = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(target)
        .map_err(Error::io("cannot open restore target", target))?;
    match sys::ficlone(&out, &src) {
        Ok(()) => {
            tracing::info!("Restored as a reflink clone (no data copied)");
        }
        Err(e) if sys::is_reflink_unsupported(&e) => {
            image::copy_sparse(&src, &src_path, &out, target)?;
        }
        Err(e) => return Err(Error::io("cannot clone into", target)(e)),
    }
    out.sync_all().map_err(Error::io("cannot sync", target))
}

fn restore_to_device(src: &File, src_path: &Path, size: u64, target: &Path) -> Result<()> {
    let mut dev = OpenOptions::new()
        .write(true)
        .open(target)
        .map_err(Error::io("cannot open restore target", target))?;
    let dev_size = image::file_size(&dev, target)?;
    if dev_size < size {
        return Err(Error::Other(format!(
            "block device {} has {dev_size} bytes but the revision needs {size}; grow the device first",
            target.display()
        )));
    }
    let mut progress = Progress::new("restore", size);
    image::copy_dense(src, src_path, &mut dev, target, &mut |n| progress.inc(n))?;
    dev.sync_all().map_err(Error::io("cannot sync", target))
}
