//! Sources: where a revision's data comes from. A source patches the new image
//! through [`ImageWriter`] and never touches the job directory.

pub mod file;
pub mod rbd;

use crate::config::SourceConfig;
use crate::error::{Error, Result};
use crate::image::writer::ImageWriter;

/// What a source reports after patching an image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceReport {
    /// `stats.bytes_written` as the original reported it (the source size for
    /// file sources and full backups).
    pub bytes_written: u64,
}

/// A backup source.
pub trait Source {
    /// Makes `writer`'s image equal to the source, writing only what differs.
    /// `progress` is called with the number of source bytes handled.
    fn patch(
        &mut self,
        writer: &mut ImageWriter,
        progress: &mut dyn FnMut(u64),
    ) -> Result<SourceReport>;

    /// The source's size in bytes, as far as known before patching.
    fn size(&self) -> u64;
}

/// Opens the source a job's config describes.
pub fn open(config: &SourceConfig) -> Result<Box<dyn Source>> {
    match config {
        SourceConfig::File { filename } => Ok(Box::new(file::FileSource::open(filename)?)),
        other => Err(Error::Other(format!(
            "the {} source is not available in this build yet; back up this job with backy 2.1 for now",
            other.type_name()
        ))),
    }
}
