//! `backy export-diff -r SPEC [--from SPEC]`: an `rbd export-diff` v1 stream
//! on stdout that takes an RBD image from revision FROM to revision SPEC.
//!
//! The blocks to send are those whose digests differ between the two
//! manifests ([`sums::differing_blocks`]), so the direction in time does not
//! matter: after `rbd snap rollback POOL/IMAGE@backy-<newest>`, a diff from the
//! newest to an older revision takes the image back moving only what differs.
//! The stream names `backy-<FROM id>` (which `rbd import-diff` requires on the
//! image) and `backy-<SPEC id>` (which it creates). Without `--from` it is a
//! full diff of the revision's data for an empty image.
//!
//! Every block sent is checked against the revision's manifest as it is read;
//! a mismatch ends the stream without its end record, so the import fails
//! instead of writing damaged data.

use std::fs::File;
use std::io::{BufWriter, IsTerminal};
use std::path::Path;

use crate::error::{Error, Result};
use crate::image::sums::{self, Manifest};
use crate::job::Job;
use crate::revision::Revision;
use crate::source::rbd::diff::write::{DiffWriter, Image, write_diff};
use crate::units::format_bytes;

/// Writes the diff from `from` (or from an empty image) to `spec` to stdout.
pub fn run(dir: &Path, spec: &str, from: Option<&str>) -> Result<()> {
    let stdout = std::io::stdout();
    if stdout.is_terminal() {
        return Err(Error::DiffToTerminal);
    }
    let mut job = Job::open(dir)?;
    let _lock = job.lock_read()?;
    let target = job.resolve(spec)?.clone();
    let from = from.map(|s| job.resolve(s).cloned()).transpose()?;
    let path = job.image_path(&target.id);
    let file = File::open(&path).map_err(Error::io("cannot open revision image", &path))?;
    let mut manifest = manifest_of(&job, &target)?;
    let size = crate::image::file_size(&file, &path)?;
    if size != manifest.image_size() {
        return Err(Error::ManifestSizeMismatch {
            path,
            size,
            expected: manifest.image_size(),
        });
    }
    let blocks = match &from {
        Some(from) => {
            let mut base = manifest_of(&job, from)?;
            let mut differing = sums::differing_blocks(&mut base, &mut manifest)?;
            // Blocks past the target's end go with the size record.
            let end = manifest.blocks();
            differing.retain_mut(|r| {
                r.end = r.end.min(end);
                r.start < r.end
            });
            differing
        }
        None => std::iter::once(0..manifest.blocks()).collect(),
    };
    let from_snap = from.as_ref().map(|r| format!("backy-{}", r.id));
    let to_snap = format!("backy-{}", target.id);
    tracing::info!(
        "Export diff {} -> {}: {} of {} blocks differ",
        from.as_ref().map_or("(empty image)", |r| r.id.as_str()),
        target.id,
        blocks.iter().map(|r| r.end - r.start).sum::<u64>(),
        manifest.blocks()
    );
    let output = |source| Error::Output { source };
    let out = BufWriter::with_capacity(1 << 20, stdout.lock());
    let mut out =
        DiffWriter::new(out, from_snap.as_deref(), Some(&to_snap), size).map_err(output)?;
    let mut image = Image {
        file: &file,
        path: &path,
        manifest: &mut manifest,
        id: &target.id,
    };
    let written = write_diff(&mut out, &mut image, &blocks, from.is_some())?;
    out.finish().map_err(output)?;
    tracing::info!(
        "Wrote {} of data and {} of zero records",
        format_bytes(written.data_bytes),
        format_bytes(written.zero_bytes)
    );
    Ok(())
}

/// The revision's manifest; export-diff cannot work without one.
fn manifest_of(job: &Job, rev: &Revision) -> Result<Manifest> {
    let path = job.sums_path(&rev.id);
    if !path.exists() {
        return Err(Error::DiffNeedsManifest {
            id: rev.id.clone(),
            reason: format!("{} does not exist", path.display()),
        });
    }
    Manifest::open(&path, false).map_err(|e| Error::DiffNeedsManifest {
        id: rev.id.clone(),
        reason: e.to_string(),
    })
}
