//! The `file` source: an image file or block device, read once, sequentially.

use std::fs::File;
use std::path::{Path, PathBuf};

use super::{Source, SourceReport};
use crate::error::{Error, Result};
use crate::image::file_size;
use crate::image::reader::{Chunk, read_sequential};
use crate::image::writer::ImageWriter;

/// A file or block device backed up block by block.
pub struct FileSource {
    file: File,
    path: PathBuf,
    size: u64,
}

impl FileSource {
    /// Opens the source; fails with a clear message when it is missing or unreadable.
    pub fn open(path: &Path) -> Result<FileSource> {
        let file = File::open(path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Error::Other(format!(
                "source {} does not exist; check 'filename' in the job's config",
                path.display()
            )),
            _ => Error::io("cannot open source", path)(e),
        })?;
        let meta = file
            .metadata()
            .map_err(Error::io("cannot stat source", path))?;
        if meta.is_dir() {
            return Err(Error::Other(format!(
                "source {} is a directory; backy backs up image files and block devices",
                path.display()
            )));
        }
        let size = file_size(&file, path)?;
        Ok(FileSource {
            file,
            path: path.to_owned(),
            size,
        })
    }
}

impl Source for FileSource {
    fn size(&self) -> u64 {
        self.size
    }

    fn patch(
        &mut self,
        writer: &mut ImageWriter,
        progress: &mut dyn FnMut(u64),
    ) -> Result<SourceReport> {
        writer.resize(self.size)?;
        let bs = writer.block_size();
        read_sequential(&self.file, &self.path, self.size, bs, |chunk| {
            match *chunk {
                Chunk::Data { offset, ref buf } => {
                    for (i, block) in buf.chunks(bs as usize).enumerate() {
                        writer.put_block(offset / bs + i as u64, block)?;
                    }
                    progress(buf.len() as u64);
                }
                Chunk::Hole { offset, len } => {
                    for block in offset / bs..(offset + len).div_ceil(bs) {
                        writer.put_zero_block(block)?;
                    }
                    progress(len);
                }
            }
            Ok(())
        })?;
        let after = file_size(&self.file, &self.path)?;
        if after != self.size {
            return Err(Error::SourceChangedSize {
                path: self.path.clone(),
                before: self.size,
                after,
            });
        }
        Ok(SourceReport {
            bytes_written: self.size,
        })
    }
}
