//! The `file` source: an image file or block device, read once, sequentially.

use std::collections::VecDeque;
use std::fs::File;
use std::path::{Path, PathBuf};

use super::{Source, SourceReport};
use crate::error::{Error, Result};
use crate::image::file_size;
use crate::image::reader::{Chunk, Stage, read_sequential_ahead};
use crate::image::sums::Digest;
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

    fn verifies_while_patching(&self) -> bool {
        true
    }

    fn patch(
        &mut self,
        writer: &mut ImageWriter,
        progress: &mut dyn FnMut(u64),
    ) -> Result<SourceReport> {
        writer.resize(self.size)?;
        let bs = writer.block_size();
        // Digests of the data chunks seen ahead and not yet consumed.
        let mut pending: VecDeque<Vec<Digest>> = VecDeque::with_capacity(2);
        let mut spare: Vec<Vec<Digest>> = Vec::new();
        read_sequential_ahead(&self.file, &self.path, self.size, bs, |stage, chunk| {
            match (stage, chunk) {
                (Stage::Ahead, &Chunk::Data { offset, ref buf }) => {
                    let mut digests = spare.pop().unwrap_or_default();
                    digests.clear();
                    digests.extend(buf.chunks(bs as usize).map(Digest::of));
                    // Blocks that differ must be read from the image before
                    // they are compared; ask for them now, a chunk early.
                    writer.prefetch(offset / bs, &digests)?;
                    pending.push_back(digests);
                }
                (Stage::Ahead, Chunk::Hole { .. }) => {}
                (Stage::Consume, &Chunk::Data { offset, ref buf }) => {
                    let first = offset / bs;
                    let digests = pending.pop_front().expect("seen ahead");
                    for (i, (block, digest)) in buf.chunks(bs as usize).zip(&digests).enumerate() {
                        writer.put_block_with_digest(first + i as u64, block, *digest)?;
                    }
                    spare.push(digests);
                    progress(buf.len() as u64);
                }
                (Stage::Consume, &Chunk::Hole { offset, len }) => {
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
            stats: Vec::new(),
        })
    }
}

#[cfg(test)]
mod tests {
    //! LESSONS 1 and 2: random write/zero/punch/grow/shrink sequences against an
    //! in-memory model, compared after every backup step, with trusted and
    //! untrusted parent digests.

    use super::*;
    use crate::image::sums::Manifest;
    use crate::image::verify_against_manifest;
    use crate::sys;
    use proptest::prelude::*;
    use std::os::unix::fs::FileExt;

    #[derive(Debug, Clone)]
    enum Op {
        Write { offset: u64, len: u64, seed: u8 },
        Zero { offset: u64, len: u64 },
        Punch { offset: u64, len: u64 },
        Resize { size: u64 },
    }

    /// Offsets near page and block edges are where bugs live.
    fn offset() -> impl Strategy<Value = u64> {
        prop_oneof![
            0u64..700_000,
            (0u64..10, -3i64..=3).prop_map(|(b, d)| (b * 65536).saturating_add_signed(d)),
            (0u64..160, -1i64..=1).prop_map(|(p, d)| (p * 4096).saturating_add_signed(d)),
        ]
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (offset(), 1u64..150_000, any::<u8>()).prop_map(|(offset, len, seed)| Op::Write { offset, len, seed }),
            2 => (offset(), 1u64..200_000).prop_map(|(offset, len)| Op::Zero { offset, len }),
            2 => (offset(), 1u64..200_000).prop_map(|(offset, len)| Op::Punch { offset, len }),
            1 => offset().prop_map(|size| Op::Resize { size }),
        ]
    }

    fn apply(op: &Op, file: &File, model: &mut Vec<u8>) {
        match *op {
            Op::Write { offset, len, seed } => {
                let data: Vec<u8> = (0..len)
                    .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) | 1)
                    .collect();
                file.write_all_at(&data, offset).unwrap();
                let end = (offset + len) as usize;
                if model.len() < end {
                    model.resize(end, 0);
                }
                model[offset as usize..end].copy_from_slice(&data);
            }
            Op::Zero { offset, len } | Op::Punch { offset, len } => {
                let end = ((offset + len) as usize).min(model.len());
                if (offset as usize) < end {
                    if matches!(op, Op::Punch { .. }) {
                        sys::punch_hole(file, offset, end as u64 - offset).unwrap();
                    } else {
                        file.write_all_at(&vec![0; end - offset as usize], offset)
                            .unwrap();
                    }
                    model[offset as usize..end].fill(0);
                }
            }
            Op::Resize { size } => {
                file.set_len(size).unwrap();
                model.resize(size as usize, 0);
            }
        }
    }

    fn backup(dir: &Path, n: usize, src: &Path, trusted: bool) -> PathBuf {
        let image = dir.join(format!("r{n}"));
        let sums = dir.join(format!("r{n}.sums"));
        let manifest = if n > 0 && trusted {
            std::fs::copy(dir.join(format!("r{}", n - 1)), &image).unwrap();
            std::fs::copy(dir.join(format!("r{}.sums", n - 1)), &sums).unwrap();
            Manifest::open(&sums, true).unwrap()
        } else {
            if n > 0 {
                std::fs::copy(dir.join(format!("r{}", n - 1)), &image).unwrap();
            } else {
                File::create(&image).unwrap();
            }
            Manifest::create(&sums, 0).unwrap()
        };
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&image)
            .unwrap();
        let mut writer = ImageWriter::new(file, &image, manifest, n > 0 && trusted);
        let mut source = FileSource::open(src).unwrap();
        source.patch(&mut writer, &mut |_| {}).unwrap();
        let (file, mut manifest, _) = writer.finish().unwrap();
        let report = verify_against_manifest(&file, &image, &mut manifest, &mut |_| {}).unwrap();
        assert!(
            report.bad_offsets.is_empty(),
            "manifest disagrees at {:?}",
            report.bad_offsets
        );
        image
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]
        #[test]
        fn image_equals_source_after_every_backup(ops in prop::collection::vec(op(), 1..8), trusted in any::<bool>()) {
            let dir = tempfile::tempdir().unwrap();
            let src = dir.path().join("src");
            let file = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&src).unwrap();
            let mut model = Vec::new();
            for (n, op) in ops.iter().enumerate() {
                apply(op, &file, &mut model);
                let image = backup(dir.path(), n, &src, trusted);
                let got = std::fs::read(&image).unwrap();
                prop_assert_eq!(got.len(), model.len());
                prop_assert!(got == model, "image differs from the model after {:?}", &ops[..=n]);
            }
        }
    }
}
