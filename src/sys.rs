//! Thin, safe wrappers around the Linux calls backy needs beyond `std`.
//!
//! Everything here goes through rustix's safe API, so this module has no `unsafe`.
//! The crate's only `unsafe` code is the librbd/librados FFI in
//! [`crate::source::rbd::librbd`] (loaded at run time with `dlopen` so that backy
//! builds without Ceph), each call with its own SAFETY note. Errors keep their
//! `io::ErrorKind` so callers can tell "not supported" (fall back) from a real
//! failure (give up).

use std::fs::File;
use std::io;
use std::path::Path;

use rustix::fs::{FallocateFlags, SeekFrom};

/// Makes `dest` share all extents of `src` (ioctl `FICLONE`).
///
/// `dest` must be empty or its content is replaced. Fails with `Unsupported`-like
/// errors (`EOPNOTSUPP`, `EXDEV`, `EINVAL`, `ENOTTY`) where the filesystem cannot
/// reflink; see [`is_reflink_unsupported`].
pub fn ficlone(dest: &File, src: &File) -> io::Result<()> {
    rustix::fs::ioctl_ficlone(dest, src).map_err(io::Error::from)
}

/// Whether an error from [`ficlone`] means "this filesystem (pair) cannot reflink"
/// rather than an I/O failure.
pub fn is_reflink_unsupported(err: &io::Error) -> bool {
    use rustix::io::Errno;
    matches!(
        err.raw_os_error().map(Errno::from_raw_os_error),
        Some(Errno::OPNOTSUPP | Errno::XDEV | Errno::INVAL | Errno::NOTTY | Errno::NOSYS)
    )
}

/// Deallocates `[offset, offset+len)` without changing the file size.
pub fn punch_hole(file: &File, offset: u64, len: u64) -> io::Result<()> {
    rustix::fs::fallocate(
        file,
        FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE,
        offset,
        len,
    )
    .map_err(io::Error::from)
}

/// Whether an error from [`punch_hole`] means punching is not supported here.
pub fn is_punch_unsupported(err: &io::Error) -> bool {
    use rustix::io::Errno;
    matches!(
        err.raw_os_error().map(Errno::from_raw_os_error),
        Some(Errno::OPNOTSUPP | Errno::NOSYS | Errno::INVAL)
    )
}

/// Result of asking where the next data starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NextData {
    /// Data starts at this offset (possibly the one asked for).
    At(u64),
    /// Only a hole follows until the end of the file.
    None,
    /// The file does not report holes (block devices, some filesystems).
    Unknown,
}

/// `lseek(SEEK_DATA)`: where the next data at or after `offset` starts.
pub fn seek_data(file: &File, offset: u64) -> io::Result<NextData> {
    use rustix::io::Errno;
    match rustix::fs::seek(file, SeekFrom::Data(offset)) {
        Ok(pos) => Ok(NextData::At(pos)),
        Err(Errno::NXIO) => Ok(NextData::None),
        Err(Errno::INVAL | Errno::OPNOTSUPP) => Ok(NextData::Unknown),
        Err(e) => Err(e.into()),
    }
}

/// `lseek(SEEK_HOLE)`: where the next hole (or the end of file) at or after
/// `offset` starts. `None` when the file does not report holes.
pub fn seek_hole(file: &File, offset: u64) -> io::Result<Option<u64>> {
    use rustix::io::Errno;
    match rustix::fs::seek(file, SeekFrom::Hole(offset)) {
        Ok(pos) => Ok(Some(pos)),
        Err(Errno::NXIO | Errno::INVAL | Errno::OPNOTSUPP) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Tells the kernel we will not read `file` again soon (drop its cached pages).
pub fn drop_page_cache(file: &File) {
    // Advisory only; a failure changes nothing but speed.
    let _ = rustix::fs::fadvise(file, 0, None, rustix::fs::Advice::DontNeed);
}

/// Asks the kernel to start reading `[offset, offset+len)` of `file` in the
/// background (`POSIX_FADV_WILLNEED`).
pub fn prefetch(file: &File, offset: u64, len: u64) {
    let _ = rustix::fs::fadvise(
        file,
        offset,
        std::num::NonZeroU64::new(len),
        rustix::fs::Advice::WillNeed,
    );
}

/// Tells the kernel `file` will be read sequentially.
pub fn advise_sequential(file: &File) {
    let _ = rustix::fs::fadvise(file, 0, None, rustix::fs::Advice::Sequential);
}

/// A human name for the filesystem holding `path` ("btrfs", "ext4", ...).
pub fn filesystem_name(path: &Path) -> String {
    let Ok(st) = rustix::fs::statfs(path) else {
        return "unknown".into();
    };
    #[allow(clippy::unnecessary_cast)]
    match st.f_type as u64 {
        0x9123_683e => "btrfs".into(),
        0x5846_5342 => "xfs".into(),
        0xef53 => "ext4".into(),
        0x0102_1994 => "tmpfs".into(),
        0x2fc1_2fc1 => "zfs".into(),
        0x6969 => "nfs".into(),
        0x794c_7630 => "overlayfs".into(),
        0xf15f => "ecryptfs".into(),
        other => format!("filesystem type {other:#x}"),
    }
}

/// The device number of the filesystem holding `path`, to tell whether two paths
/// share a filesystem.
pub fn device_of(path: &Path) -> io::Result<u64> {
    use std::os::unix::fs::MetadataExt;
    Ok(std::fs::metadata(path)?.dev())
}

/// Fsyncs a directory so that renames and unlinks in it are durable.
pub fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}
