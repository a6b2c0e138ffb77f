//! Image operations: cloning, sparse copies, compare-and-write, verification.
//!
//! Everything that reads or writes revision images goes through this module;
//! sources see only [`writer::ImageWriter`].

pub mod blockset;
pub mod dedupe;
pub mod fiemap;
pub mod layout;
pub mod prefetch;
pub mod reader;
pub mod reshare;
pub mod scrub;
pub mod sums;
pub mod verify;
pub mod writer;
pub mod written;

/// 1 MiB of zeros, for writing zeros without allocating them.
pub(crate) static ZEROS: [u8; 1 << 20] = [0; 1 << 20];

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;

use crate::error::{Error, Result};
use crate::sys;
use reader::Chunk;
use sums::{Digest, Manifest};

/// How a new image came to share (or not) its parent's data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloneKind {
    /// `FICLONE`: all extents shared.
    Reflink,
    /// A sparse byte copy: nothing shared.
    Copy,
}

/// Creates `dest` (which must not exist) as a clone of `src`: a reflink where the
/// filesystem can, otherwise a sparse copy if `allow_copy`, otherwise `NoReflink`.
pub fn clone_or_copy_sparse(src: &Path, dest: &Path, allow_copy: bool) -> Result<CloneKind> {
    let src_file = sys::open_regular(src, false).map_err(Error::io("cannot open", src))?;
    let dest_file = create_new(dest)?;
    reflink_or(&src_file, &dest_file, dest, || {
        if !allow_copy {
            return Err(no_reflink(dest));
        }
        copy_sparse(&src_file, src, &dest_file, dest)
    })
}

/// Makes `dest` a reflink clone of `src` where the filesystem can; where it
/// cannot (another filesystem, no reflink support), runs `copy` instead.
pub fn reflink_or(
    src: &File,
    dest: &File,
    dest_path: &Path,
    copy: impl FnOnce() -> Result<()>,
) -> Result<CloneKind> {
    match sys::ficlone(dest, src) {
        Ok(()) => Ok(CloneKind::Reflink),
        Err(e) if sys::is_reflink_unsupported(&e) => {
            copy()?;
            Ok(CloneKind::Copy)
        }
        Err(e) => Err(Error::io("cannot reflink-clone into", dest_path)(e)),
    }
}

/// Whether the filesystem holding `dir` can reflink, by cloning an empty probe file.
pub fn probe_reflink(dir: &Path) -> Result<bool> {
    let a = dir.join(".reflink-probe-a");
    let b = dir.join(".reflink-probe-b");
    let cleanup = || {
        let _ = std::fs::remove_file(&a);
        let _ = std::fs::remove_file(&b);
    };
    cleanup();
    let result = (|| -> Result<bool> {
        let fa = create_new(&a)?;
        fa.write_all_at(b"probe", 0)
            .map_err(Error::io("cannot write", &a))?;
        let fb = create_new(&b)?;
        match sys::ficlone(&fb, &fa) {
            Ok(()) => Ok(true),
            Err(e) if sys::is_reflink_unsupported(&e) => Ok(false),
            Err(e) => Err(Error::io("cannot reflink-clone into", &b)(e)),
        }
    })();
    cleanup();
    result
}

/// The refusal for a job directory whose filesystem cannot reflink.
pub fn no_reflink(path_in_job: &Path) -> Error {
    let dir = path_in_job.parent().unwrap_or(path_in_job);
    Error::NoReflink {
        fs: sys::filesystem_name(dir),
        path: dir.to_owned(),
    }
}

fn create_new(path: &Path) -> Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o640)
        .open(path)
        .map_err(Error::io("cannot create", path))
}

/// Copies `src` into `dest`, writing only non-zero data (a sparse result).
pub fn copy_sparse(src: &File, src_path: &Path, dest: &File, dest_path: &Path) -> Result<()> {
    copy_checked(
        src,
        src_path,
        None,
        Sink::Sparse(dest, dest_path),
        &mut |_| {},
    )
    .map(|_| ())
}

/// Streams every byte of `src` (holes as zeros) into `out`, calling `progress`
/// with the bytes done.
pub fn copy_dense(
    src: &File,
    src_path: &Path,
    out: &mut dyn Write,
    out_name: &Path,
    progress: &mut dyn FnMut(u64),
) -> Result<()> {
    copy_checked(src, src_path, None, Sink::Dense(out, out_name), progress).map(|_| ())
}

/// Where [`copy_checked`] puts the bytes it read.
pub enum Sink<'a> {
    /// Nowhere: the data is there already (a reflink clone of `src`); only check.
    Nothing,
    /// A regular file, made sparse: emptied first, only non-zero blocks written,
    /// then sized and fsynced.
    Sparse(&'a File, &'a Path),
    /// A stream or device: every byte, holes as zeros, in order.
    Dense(&'a mut dyn Write, &'a Path),
}

/// Reads `src` once and writes it to `sink`. With a `manifest`, each block is
/// compared with its digest before it is written, and the copy stops at the first
/// block that differs: `Ok(Some(offset))` names it (the sink then holds only what
/// came before). `Ok(None)`: everything was copied (and matched).
pub fn copy_checked(
    src: &File,
    src_path: &Path,
    mut manifest: Option<&mut Manifest>,
    mut sink: Sink<'_>,
    progress: &mut dyn FnMut(u64),
) -> Result<Option<u64>> {
    let size = file_size(src, src_path)?;
    let bs = manifest
        .as_ref()
        .map_or(sums::BLOCK_SIZE, |m| m.block_size());
    if let Some(m) = &manifest
        && m.image_size() != size
    {
        return Err(Error::ManifestSizeMismatch {
            path: src_path.to_owned(),
            size,
            expected: m.image_size(),
        });
    }
    if let Sink::Sparse(dest, dest_path) = &sink {
        dest.set_len(0)
            .map_err(Error::io("cannot truncate", *dest_path))?;
    }
    let mut mismatch = None;
    let read = reader::read_for_copy(src, src_path, size, bs, |chunk| {
        if let Some(m) = manifest.as_deref_mut()
            && let Some(at) = first_mismatch(m, chunk)?
        {
            mismatch = Some(at);
            // Stops the reader; reported as the result, not as an error.
            return Err(Error::BlockMismatch { offset: at });
        }
        let done = match (chunk, &mut sink) {
            (Chunk::Data { buf, .. }, Sink::Nothing) => buf.len() as u64,
            (Chunk::Hole { len, .. }, Sink::Nothing | Sink::Sparse(..)) => *len,
            (Chunk::Data { offset, buf }, Sink::Sparse(dest, dest_path)) => {
                for (i, block) in buf.chunks(bs as usize).enumerate() {
                    if !sums::is_zero(block) {
                        dest.write_all_at(block, offset + i as u64 * bs)
                            .map_err(Error::io("cannot write", *dest_path))?;
                    }
                }
                buf.len() as u64
            }
            (Chunk::Data { buf, .. }, Sink::Dense(out, out_name)) => {
                out.write_all(buf)
                    .map_err(Error::io("cannot write", *out_name))?;
                buf.len() as u64
            }
            (Chunk::Hole { len, .. }, Sink::Dense(out, out_name)) => {
                let mut left = *len;
                while left > 0 {
                    let n = left.min(ZEROS.len() as u64) as usize;
                    out.write_all(&ZEROS[..n])
                        .map_err(Error::io("cannot write", *out_name))?;
                    left -= n as u64;
                }
                *len
            }
        };
        progress(done);
        Ok(())
    });
    match (read, mismatch) {
        (_, Some(at)) => return Ok(Some(at)),
        (Err(e), None) => return Err(e),
        (Ok(()), None) => {}
    }
    match sink {
        Sink::Nothing => {}
        Sink::Sparse(dest, dest_path) => {
            dest.set_len(size)
                .map_err(Error::io("cannot resize", dest_path))?;
            dest.sync_all()
                .map_err(Error::io("cannot sync", dest_path))?;
        }
        Sink::Dense(out, out_name) => out.flush().map_err(Error::io("cannot write", out_name))?,
    }
    Ok(None)
}

/// The offset of the first block of `chunk` that differs from `manifest`.
fn first_mismatch(manifest: &mut Manifest, chunk: &Chunk) -> Result<Option<u64>> {
    let bs = manifest.block_size();
    match chunk {
        Chunk::Data { offset, buf } => {
            for (i, block) in buf.chunks(bs as usize).enumerate() {
                let at = offset + i as u64 * bs;
                if manifest.get(at / bs)? != Digest::of(block) {
                    return Ok(Some(at));
                }
            }
        }
        Chunk::Hole { offset, len } => {
            for block in offset / bs..(offset + len).div_ceil(bs) {
                if !manifest.get(block)?.is_zero() {
                    return Ok(Some(block * bs));
                }
            }
        }
    }
    Ok(None)
}

/// The size of a file or block device.
pub fn file_size(file: &File, path: &Path) -> Result<u64> {
    use std::io::Seek;
    let meta = file.metadata().map_err(Error::io("cannot stat", path))?;
    if meta.is_file() {
        return Ok(meta.len());
    }
    // Block devices: seek to the end, then back, leaving the position as it was.
    let mut f = file;
    let io = || Error::io("cannot find the size of", path);
    let pos = f.stream_position().map_err(io())?;
    let size = f.seek(std::io::SeekFrom::End(0)).map_err(io())?;
    f.seek(std::io::SeekFrom::Start(pos)).map_err(io())?;
    Ok(size)
}

/// Outcome of reading an image against its manifest.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    /// Offsets of blocks whose content does not match their digest.
    pub bad_offsets: Vec<u64>,
    /// Blocks compared.
    pub blocks: u64,
    /// Bytes of the image read to compare them (holes are not read).
    pub bytes_read: u64,
}

/// Reads `image` once and compares every block with `manifest`; sizes must agree.
///
/// This is [`scrub::scrub`] of every block: a block that cannot be read is bad
/// (not an error that ends the check), and a block is bad only when a second
/// read past the page cache fails too.
pub fn verify_against_manifest(
    image: &File,
    path: &Path,
    manifest: &mut Manifest,
    progress: &mut dyn FnMut(u64),
) -> Result<VerifyReport> {
    let report = scrub::scrub(image, path, manifest, None, progress)?;
    Ok(VerifyReport {
        bad_offsets: report.bad_offsets(),
        blocks: report.blocks_checked,
        bytes_read: report.bytes_read,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    const BS: u64 = sums::BLOCK_SIZE;

    /// An image of `blocks` (0 = hole) with a short last block, and its manifest.
    fn image_and_manifest(dir: &Path, blocks: &[u8]) -> (PathBuf, Manifest) {
        let path = dir.join("img");
        let f = File::create(&path).unwrap();
        let size = blocks.len() as u64 * BS - 100;
        f.set_len(size).unwrap();
        let mut m = Manifest::create(&dir.join("img.sums"), size).unwrap();
        for (i, &b) in blocks.iter().enumerate() {
            let len = (size - i as u64 * BS).min(BS) as usize;
            if b != 0 {
                let data = vec![b; len];
                f.write_all_at(&data, i as u64 * BS).unwrap();
                m.set(i as u64, Digest::of(&data)).unwrap();
            }
        }
        m.sync().unwrap();
        (path, m)
    }

    #[test]
    fn checked_copies_match_and_stop_at_the_first_bad_block() {
        let dir = tempfile::tempdir().unwrap();
        let blocks: Vec<u8> = (0..150u32)
            .map(|i| if i % 5 == 0 { 0 } else { i as u8 })
            .collect();
        let (path, mut m) = image_and_manifest(dir.path(), &blocks);
        let src = File::open(&path).unwrap();

        // Sparse and dense copies of a good image are identical to it.
        let out_path = dir.path().join("out");
        let out = File::create(&out_path).unwrap();
        let got = copy_checked(
            &src,
            &path,
            Some(&mut m),
            Sink::Sparse(&out, &out_path),
            &mut |_| {},
        );
        assert_eq!(got.unwrap(), None);
        assert!(std::fs::read(&out_path).unwrap() == std::fs::read(&path).unwrap());
        let mut dense = Vec::new();
        let got = copy_checked(
            &src,
            &path,
            Some(&mut m),
            Sink::Dense(&mut dense, &out_path),
            &mut |_| {},
        );
        assert_eq!(got.unwrap(), None);
        assert!(dense == std::fs::read(&path).unwrap());

        // A changed byte in block 77 and zeros where block 91 had data.
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        f.write_all_at(b"x", 77 * BS + 5).unwrap();
        f.write_all_at(&vec![0; BS as usize], 91 * BS).unwrap();
        let _ = sys::punch_hole(&f, 91 * BS, BS); // a hole where the filesystem can
        let mut dense = Vec::new();
        let got = copy_checked(
            &src,
            &path,
            Some(&mut m),
            Sink::Dense(&mut dense, &out_path),
            &mut |_| {},
        );
        assert_eq!(got.unwrap(), Some(77 * BS));
        assert!(dense.len() as u64 <= 77 * BS, "wrote past the bad block");
        f.write_all_at(&[77], 77 * BS + 5).unwrap();
        let got = copy_checked(&src, &path, Some(&mut m), Sink::Nothing, &mut |_| {});
        assert_eq!(got.unwrap(), Some(91 * BS));
        // Without a manifest nothing is checked.
        let got = copy_checked(&src, &path, None, Sink::Nothing, &mut |_| {});
        assert_eq!(got.unwrap(), None);
        // A size that differs from the manifest's is an error.
        f.set_len(10 * BS).unwrap();
        assert!(copy_checked(&src, &path, Some(&mut m), Sink::Nothing, &mut |_| {}).is_err());
    }

    /// Verifying a sparse image reads its data, not its holes (issue 9: 50 GiB
    /// with 2 MiB of data took 71 s).
    #[test]
    fn verifying_a_sparse_image_reads_only_its_data() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("img");
        let file = File::create(&path).unwrap();
        let size = 8u64 << 30;
        file.set_len(size).unwrap();
        let data = vec![7u8; 1 << 20];
        file.write_all_at(&data, 3 << 30).unwrap();
        let mut manifest = Manifest::create(&dir.path().join("img.sums"), size).unwrap();
        for i in 0..(data.len() as u64 / sums::BLOCK_SIZE) {
            let block = (3 << 30) / sums::BLOCK_SIZE + i;
            manifest
                .set(block, Digest::of(&data[..sums::BLOCK_SIZE as usize]))
                .unwrap();
        }
        let file = File::open(&path).unwrap();
        let report = verify_against_manifest(&file, &path, &mut manifest, &mut |_| {}).unwrap();
        assert!(report.bad_offsets.is_empty(), "{:?}", report.bad_offsets);
        assert_eq!(report.blocks, size / sums::BLOCK_SIZE);
        if matches!(sys::seek_data(&file, 0), Ok(sys::NextData::At(o)) if o > 0) {
            assert!(report.bytes_read < 16 << 20, "read {}", report.bytes_read);
        }
    }
}
