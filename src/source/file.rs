//! The `file` source: an image file or block device, read once, sequentially.
//!
//! A source that is written while it is read gives an image that matches no
//! state it ever had. This source notices such writes where it can: for a
//! regular file the size, mtime, ctime and inode before and after; for a block
//! device (whose node's times do not move) a re-read, after the patch, of the
//! blocks the backup wrote plus a random share of the rest, compared with the
//! digests taken while reading. See the man page's "Sources written during a
//! backup" for what this does and does not detect.

use std::fs::{File, FileType, OpenOptions};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use rand::Rng;

use super::{Source, SourceReport};
use crate::buf::PageBuf;
use crate::error::{Error, Result};
use crate::image::file_size;
use crate::image::reader::{Chunk, Stage, read_full_at, read_sequential_ahead_hashed};
use crate::image::sums::Digest;
use crate::image::writer::ImageWriter;

/// At most this many bytes of written blocks are re-read from a block device
/// (chosen at random when the backup wrote more).
pub const RECHECK_WRITTEN_MAX: u64 = 1 << 30;
/// One block in this many of the blocks the backup did not write is re-read
/// from a block device as well, up to [`RECHECK_WRITTEN_MAX`] bytes.
pub const RECHECK_SHARE: u64 = 100;

/// What identifies the source's state on disk, as far as `fstat` tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl Stamp {
    fn of(meta: &std::fs::Metadata, size: u64) -> Stamp {
        Stamp {
            dev: meta.dev(),
            ino: meta.ino(),
            size,
            mtime: (meta.mtime(), meta.mtime_nsec()),
            ctime: (meta.ctime(), meta.ctime_nsec()),
        }
    }
}

/// A file or block device backed up block by block.
pub struct FileSource {
    file: File,
    path: PathBuf,
    size: u64,
    block_device: bool,
    /// The source as it was opened.
    before: Stamp,
}

/// What kind of thing `ft` is, when it is not one backy can back up.
fn refused_type(ft: &FileType) -> Option<&'static str> {
    if ft.is_file() || ft.is_block_device() {
        None
    } else if ft.is_dir() {
        Some("a directory")
    } else if ft.is_fifo() {
        Some("a FIFO (named pipe), which can block a backup forever")
    } else if ft.is_socket() {
        Some("a socket")
    } else if ft.is_char_device() {
        Some("a character device (such as /dev/zero or /dev/null), which has no size to back up")
    } else {
        Some("neither a file nor a block device")
    }
}

/// Opens `path` for reading without blocking, so a FIFO swapped in after a
/// check cannot block `open` (with the job locked), refuses what it opened
/// unless it is a file or block device, then makes reads blocking again.
fn open_checked(path: &Path) -> Result<(File, std::fs::Metadata)> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
        .open(path)
        .map_err(Error::io("cannot open source", path))?;
    let meta = file
        .metadata()
        .map_err(Error::io("cannot stat source", path))?;
    if let Some(kind) = refused_type(&meta.file_type()) {
        return Err(Error::SourceType {
            path: path.to_owned(),
            kind,
        });
    }
    let flags = rustix::fs::fcntl_getfl(&file)
        .map_err(|e| Error::io("cannot set flags of source", path)(e.into()))?;
    rustix::fs::fcntl_setfl(&file, flags - rustix::fs::OFlags::NONBLOCK)
        .map_err(|e| Error::io("cannot set flags of source", path)(e.into()))?;
    Ok((file, meta))
}

impl FileSource {
    /// Opens the source; fails with a clear message when it is missing,
    /// unreadable, or not an image file or block device.
    pub fn open(path: &Path) -> Result<FileSource> {
        let not_found = || Error::SourceMissing {
            path: path.to_owned(),
        };
        let meta = std::fs::metadata(path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => not_found(),
            _ => Error::io("cannot stat source", path)(e),
        })?;
        if let Some(kind) = refused_type(&meta.file_type()) {
            return Err(Error::SourceType {
                path: path.to_owned(),
                kind,
            });
        }
        let (file, meta) = open_checked(path).map_err(|e| match e {
            Error::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
                not_found()
            }
            e => e,
        })?;
        let size = file_size(&file, path)?;
        Ok(FileSource {
            before: Stamp::of(&meta, size),
            block_device: meta.file_type().is_block_device(),
            file,
            path: path.to_owned(),
            size,
        })
    }

    fn changed(&self, detail: String) -> Error {
        Error::SourceChanged {
            path: self.path.clone(),
            detail,
        }
    }

    /// The source as it is now, by the open file; a size change is an error.
    fn stamp_now(&self) -> Result<Stamp> {
        let meta = self
            .file
            .metadata()
            .map_err(Error::io("cannot stat source", &self.path))?;
        let size = file_size(&self.file, &self.path)?;
        if size != self.size {
            return Err(self.changed(format!(
                "it changed size during the backup (from {} to {size} bytes)",
                self.size
            )));
        }
        Ok(Stamp::of(&meta, size))
    }

    /// After reading: fails when the source is not as it was opened.
    fn check_unchanged(&self, writer: &mut ImageWriter) -> Result<()> {
        let now = self.stamp_now()?;
        // The name may point elsewhere now (an image renamed over it).
        match std::fs::metadata(&self.path) {
            Ok(m) if (m.dev(), m.ino()) != (self.before.dev, self.before.ino) => {
                return Err(self.changed(
                    "its path now names another file than the one that was read".to_string(),
                ));
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(self.changed("its path was removed while it was read".to_string()));
            }
            Err(e) => return Err(Error::io("cannot stat source", &self.path)(e)),
        }
        if self.block_device {
            self.recheck_sample(writer)?;
        } else {
            if now.mtime != self.before.mtime {
                return Err(
                    self.changed("its modification time moved while it was read".to_string())
                );
            }
            if now.ctime != self.before.ctime {
                return Err(self.changed("its change time moved while it was read".to_string()));
            }
        }
        Ok(())
    }

    /// Re-reads the blocks the backup wrote and a random share of the others
    /// and compares them with the digests taken while reading.
    fn recheck_sample(&self, writer: &mut ImageWriter) -> Result<()> {
        let bs = writer.block_size();
        let blocks = writer.blocks();
        let max = (RECHECK_WRITTEN_MAX / bs).max(1) as usize;
        let mut rng = rand::rng();
        // The written blocks, or a uniform random `max` of them (reservoir).
        let changed = writer.changed();
        let mut sample: Vec<u64> = Vec::new();
        let mut seen = 0u64;
        for block in changed.iter() {
            seen += 1;
            if sample.len() < max {
                sample.push(block);
            } else {
                let j = rng.random_range(0..seen);
                if j < max as u64 {
                    sample[j as usize] = block;
                }
            }
        }
        let others = blocks - seen;
        let written = sample.len();
        // A random share of the blocks the backup did not write, drawn until
        // enough distinct ones are found (bounded, so a mostly written device
        // cannot keep it drawing).
        let want = (others.div_ceil(RECHECK_SHARE) as usize).min(max);
        let mut extra = std::collections::BTreeSet::new();
        let mut draws = 0;
        while extra.len() < want && draws < 4 * want + 64 {
            draws += 1;
            let block = rng.random_range(0..blocks);
            if !changed.contains(block) {
                extra.insert(block);
            }
        }
        sample.extend(extra);
        sample.sort_unstable();
        // Read the device, not what the page cache kept of the first pass.
        crate::sys::drop_page_cache(&self.file);
        let mut buf = PageBuf::zeroed(bs as usize);
        let mut differ = Vec::new();
        for &block in &sample {
            let len = writer.block_len(block);
            let n = read_full_at(&self.file, &mut buf[..len], block * bs)
                .map_err(Error::io("cannot read source", &self.path))?;
            if n != len || Digest::of(&buf[..len]) != writer.digest(block)? {
                differ.push(block * bs);
            }
        }
        tracing::debug!(
            "Re-read {} blocks of {} ({written} written by this backup): {} differ",
            sample.len(),
            self.path.display(),
            differ.len()
        );
        if !differ.is_empty() {
            let shown: Vec<String> = differ.iter().take(5).map(u64::to_string).collect();
            return Err(self.changed(format!(
                "{} of {} blocks read again after the backup differ from what was read (offsets {}{})",
                differ.len(),
                sample.len(),
                shown.join(", "),
                if differ.len() > 5 { ", ..." } else { "" }
            )));
        }
        Ok(())
    }
}

impl Source for FileSource {
    fn size(&self) -> u64 {
        self.size
    }

    fn verifies_while_patching(&self) -> bool {
        true
    }

    fn verifies_written(&self) -> bool {
        true
    }

    fn patch_again_distrusting_parent(&mut self) -> bool {
        // Every patch reads the whole source and compares each block with the
        // image; the checks against the state at `open` still hold.
        true
    }

    fn patch(
        &mut self,
        writer: &mut ImageWriter,
        progress: &mut dyn FnMut(u64),
    ) -> Result<SourceReport> {
        writer.resize(self.size)?;
        let bs = writer.block_size();
        let read = read_sequential_ahead_hashed(
            &self.file,
            &self.path,
            self.size,
            bs,
            |stage, chunk, digests| {
                match (stage, chunk) {
                    (Stage::Ahead, &Chunk::Data { offset, .. }) => {
                        // Blocks that differ must be read from the image before
                        // they are compared; ask for them now, a chunk early.
                        writer.prefetch(offset / bs, digests)?;
                    }
                    (Stage::Ahead, Chunk::Hole { .. }) => {}
                    (Stage::Consume, &Chunk::Data { offset, ref buf }) => {
                        let first = offset / bs;
                        for (i, (block, digest)) in buf.chunks(bs as usize).zip(digests).enumerate()
                        {
                            writer.put_block_with_digest(first + i as u64, block, *digest)?;
                        }
                        progress(buf.len() as u64);
                    }
                    (Stage::Consume, &Chunk::Hole { offset, len }) => {
                        writer.put_zero_blocks(offset / bs, (offset + len).div_ceil(bs))?;
                        progress(len);
                    }
                }
                Ok(())
            },
        );
        if let Err(e) = read {
            // A source that shrank ends early: say that it was written.
            self.stamp_now()?;
            return Err(match e {
                Error::ReadFailed {
                    path,
                    offset,
                    len,
                    source,
                    ..
                } => Error::ReadFailed {
                    what: "cannot read source",
                    path,
                    offset,
                    len,
                    hint: "the disk under it reports a read error there (see the kernel log, dmesg); the backup stopped and kept no revision; repair or replace the source, then run the backup again".into(),
                    source,
                },
                other => other,
            });
        }
        self.check_unchanged(writer)?;
        Ok(SourceReport {
            bytes_written: self.size,
            stats: Vec::new(),
        })
    }
}

#[cfg(test)]
mod tests {
    //! Backup tools have lost data by writing stale or missing blocks after a
    //! shrink, a punch or a grow: random write/zero/punch/grow/shrink sequences against an
    //! in-memory model, compared after every backup step, with trusted and
    //! untrusted parent digests.

    use super::*;
    use crate::image::sums::Manifest;
    use crate::image::verify_against_manifest;
    use crate::sys;
    use proptest::prelude::*;

    /// A FIFO that replaces the source between the type check and `open`
    /// neither blocks the open nor passes the check after it.
    #[test]
    fn a_fifo_swapped_in_after_the_check_is_refused_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &fifo,
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let path = fifo.clone();
        std::thread::spawn(move || tx.send(open_checked(&path).map(|_| ())).unwrap());
        let result = rx
            .recv_timeout(std::time::Duration::from_secs(20))
            .expect("open_checked blocked on a FIFO");
        let err = result.unwrap_err().to_string();
        assert!(err.contains("is a FIFO"), "{err}");
        assert!(err.contains(&fifo.display().to_string()), "{err}");
        let err = FileSource::open(&fifo).err().unwrap().to_string();
        assert!(err.contains("is a FIFO"), "{err}");
        let err = FileSource::open(Path::new("/dev/zero"))
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("is a character device"), "{err}");
    }
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

    /// A first-backup writer for a new image in `dir`.
    fn new_writer(dir: &Path) -> ImageWriter {
        let image = dir.join("img");
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&image)
            .unwrap();
        let manifest = Manifest::create(&dir.join("img.sums"), 0).unwrap();
        ImageWriter::new(file, &image, manifest, false)
    }

    /// Patches from a source opened on `src`, after `meddle` ran between the
    /// open and the patch.
    fn patch_after(src: &Path, meddle: impl FnOnce()) -> Result<SourceReport> {
        let dir = tempfile::tempdir().unwrap();
        let mut source = FileSource::open(src).unwrap();
        meddle();
        let mut writer = new_writer(dir.path());
        source.patch(&mut writer, &mut |_| {})
    }

    #[test]
    fn a_file_written_renamed_over_or_resized_after_open_is_a_source_change() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        std::fs::write(&src, vec![5u8; 300_000]).unwrap();
        assert!(patch_after(&src, || {}).is_ok());

        let err = patch_after(&src, || {
            let f = std::fs::OpenOptions::new().write(true).open(&src).unwrap();
            f.write_all_at(b"new", 1000).unwrap();
        })
        .unwrap_err();
        assert_eq!(err.exit_code(), 75);
        let text = err.to_string();
        assert!(
            text.starts_with(&format!(
                "source {} was written during the backup (",
                src.display()
            )),
            "{text}"
        );
        for word in ["time moved", "fsfreeze", "snapshot", "stop the VM"] {
            assert!(text.contains(word), "{word:?} in {text}");
        }

        let other = dir.path().join("other");
        let err = patch_after(&src, || {
            std::fs::write(&other, vec![5u8; 300_000]).unwrap();
            std::fs::rename(&other, &src).unwrap();
        })
        .unwrap_err();
        assert!(err.to_string().contains("names another file"), "{err}");

        let err = patch_after(&src, || {
            let f = std::fs::OpenOptions::new().write(true).open(&src).unwrap();
            f.set_len(100_000).unwrap();
        })
        .unwrap_err();
        assert_eq!(err.exit_code(), 75);
        assert!(
            err.to_string()
                .contains("changed size during the backup (from 300000 to 100000 bytes)"),
            "{err}"
        );
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
