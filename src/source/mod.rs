//! Sources: where a revision's data comes from. A source patches the new image
//! through [`ImageWriter`], verifies it, and never touches the job directory.

pub mod consul;
pub mod file;
pub mod flyingcircus;
pub mod rbd;

use std::fs::File;
use std::path::Path;

use serde_norway::Value;

use crate::config::SourceConfig;
use crate::error::Result;
use crate::image::sums::Manifest;
use crate::image::writer::ImageWriter;
use crate::image::{self, VerifyReport};

/// What the backup is about to make, as a source needs to know it.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The new revision's id.
    pub id: String,
    /// The parent revision's id, if any.
    pub parent: Option<String>,
    /// The parent is distrusted: do not take shortcuts based on it.
    pub parent_distrusted: bool,
    /// How many of the newest complete revisions in a row were made from a
    /// diff (`stats.backup_mode: diff`), for `full-every`.
    pub diffs_in_a_row: u64,
}

/// What a source reports after patching an image.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceReport {
    /// `stats.bytes_written` as the original reported it (the source size for
    /// file sources and full backups, `w`+`z` lengths for diffs).
    pub bytes_written: u64,
    /// Extra statistics for the revision (`stats.<key>`).
    pub stats: Vec<(&'static str, Value)>,
}

/// How verification went.
#[derive(Debug, Clone, Default)]
pub struct Verified {
    /// Offsets of blocks that differ from the source.
    pub report: VerifyReport,
    /// Extra statistics for the revision (`stats.<key>`).
    pub stats: Vec<(&'static str, Value)>,
}

impl Verified {
    /// Every block was read back and matched.
    pub fn full(report: VerifyReport) -> Verified {
        Verified {
            report,
            stats: vec![("verification", "full".into())],
        }
    }
}

/// A backup source.
pub trait Source {
    /// Gets ready for the revision (a Ceph source takes its snapshot here).
    fn prepare(&mut self, _plan: &Plan) -> Result<()> {
        Ok(())
    }

    /// The source's size in bytes, as far as known (after `prepare`).
    fn size(&self) -> u64;

    /// Makes `writer`'s image equal to the source, writing only what differs.
    /// `progress` is called with the number of source bytes handled.
    fn patch(
        &mut self,
        writer: &mut ImageWriter,
        progress: &mut dyn FnMut(u64),
    ) -> Result<SourceReport>;

    /// Whether `patch` puts every block exactly once, in order, so the full
    /// verification can run beside it instead of after it (see
    /// [`crate::image::verify`]). `verify` is then called only if that did not work out.
    fn verifies_while_patching(&self) -> bool {
        false
    }

    /// Whether `verification: written` may stand for `verify` (the image is
    /// patched from data read here, so what it did not write is the parent's).
    fn verifies_written(&self) -> bool {
        false
    }

    /// The parent turned out damaged (see `commands::backup`): get
    /// ready to patch a new clone of it again, trusting nothing of it. `false`
    /// when this source cannot (the backup then fails and the next one, with
    /// the parent distrusted, heals).
    fn patch_again_distrusting_parent(&mut self) -> bool {
        false
    }

    /// Checks the new image. By default in full: every block against the
    /// checksums taken from the source while patching.
    fn verify(
        &mut self,
        image: &File,
        path: &Path,
        manifest: &mut Manifest,
        progress: &mut dyn FnMut(u64),
    ) -> Result<Verified> {
        Ok(Verified::full(image::verify_against_manifest(
            image, path, manifest, progress,
        )?))
    }

    /// After the revision is complete: keep only what the newest complete
    /// revision needs (a Ceph source removes older snapshots).
    fn cleanup(&mut self, _newest_complete: &str) -> Result<()> {
        Ok(())
    }

    /// After a failure: undo `prepare`. Best effort; logs instead of failing.
    fn abort(&mut self) {}
}

/// Opens the source a job's config describes.
pub fn open(config: &SourceConfig) -> Result<Box<dyn Source>> {
    match config {
        SourceConfig::File { filename } => Ok(Box::new(file::FileSource::open(filename)?)),
        SourceConfig::CephRbd { .. } | SourceConfig::FlyingCircus { .. } => {
            Ok(Box::new(rbd::CephRbd::new(config)?))
        }
    }
}
