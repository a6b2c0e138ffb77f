//! Thin, safe wrappers around the Linux calls backy needs beyond `std`.
//!
//! Everything here goes through rustix's safe API, so this module has no `unsafe`.
//! The crate's only `unsafe` code is the librbd/librados FFI in
//! [`crate::source::rbd::librbd`] (loaded at run time with `dlopen` so that backy
//! builds without Ceph) and the `FS_IOC_FIEMAP` and `FIDEDUPERANGE` ioctls in
//! [`crate::image::fiemap`] and [`crate::image::dedupe`], which rustix does not
//! wrap; each has its own SAFETY note. Errors keep their
//! `io::ErrorKind` so callers can tell "not supported" (fall back) from a real
//! failure (give up).

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

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

/// Drops the cached pages of `len` bytes of `file` at `offset`, so the next read
/// of them goes to the disk (`POSIX_FADV_DONTNEED`; clean pages only).
pub fn drop_cached_range(file: &File, offset: u64, len: u64) {
    // Advisory only; at worst the read comes from the cache.
    let _ = rustix::fs::fadvise(
        file,
        offset,
        std::num::NonZeroU64::new(len),
        rustix::fs::Advice::DontNeed,
    );
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

/// `f` applied to every item, on up to `threads` threads, results in the
/// items' order. For work that waits on the disk per item (reading many small
/// files, asking for extent maps): several requests in flight instead of one.
/// With one thread, or fewer than two items, it runs on the caller's thread. A
/// panic in `f` is resumed on the caller's thread.
pub fn parallel_map<T: Sync, R: Send>(
    items: &[T],
    threads: usize,
    f: impl Fn(&T) -> R + Sync,
) -> Vec<R> {
    let threads = threads.clamp(1, items.len().max(1));
    if threads == 1 {
        return items.iter().map(f).collect();
    }
    let next = std::sync::atomic::AtomicUsize::new(0);
    let done: Vec<Vec<(usize, R)>> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| {
                    let mut out = Vec::new();
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some(item) = items.get(i) else { break };
                        out.push((i, f(item)));
                    }
                    out
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| {
                w.join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            })
            .collect()
    });
    let mut slots: Vec<Option<R>> = (0..items.len()).map(|_| None).collect();
    for (i, r) in done.into_iter().flatten() {
        slots[i] = Some(r);
    }
    slots
        .into_iter()
        .map(|slot| slot.expect("every item was mapped"))
        .collect()
}

/// Threads for [`parallel_map`] over disk-bound work: the CPUs, at least 1, at
/// most 8.
pub fn io_threads() -> usize {
    std::thread::available_parallelism()
        .map_or(1, usize::from)
        .clamp(1, 8)
}

/// `statfs`'s `f_type` of btrfs.
const BTRFS_MAGIC: u64 = 0x9123_683e;

/// Whether `file` lives on btrfs, whose reads of a file in many extents go
/// faster with several requests in flight (see [`crate::image::reader`]).
pub fn on_btrfs(file: &File) -> bool {
    #[allow(clippy::unnecessary_cast)]
    rustix::fs::fstatfs(file).is_ok_and(|st| st.f_type as u64 == BTRFS_MAGIC)
}

/// A human name for the filesystem holding `path` ("btrfs", "ext4", ...).
pub fn filesystem_name(path: &Path) -> String {
    let Ok(st) = rustix::fs::statfs(path) else {
        return "unknown".into();
    };
    #[allow(clippy::unnecessary_cast)]
    match st.f_type as u64 {
        BTRFS_MAGIC => "btrfs".into(),
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

/// Opens a file of a job directory without following a symbolic link in its
/// last component (`O_NOFOLLOW`) and refuses anything but a regular file, so
/// a link planted in the job never makes backy read or write outside it.
/// Errors say which: "it is a symbolic link" or "it is not a regular file".
pub fn open_regular(path: &Path, write: bool) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(write)
        .custom_flags((rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::NONBLOCK).bits() as i32)
        .open(path)
        .map_err(|e| {
            if e.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error()) {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "it is a symbolic link, and backy does not follow links in a job directory",
                )
            } else {
                e
            }
        })?;
    if !file.metadata()?.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "it is not a regular file",
        ));
    }
    // O_NONBLOCK only kept a FIFO from blocking the open; regular files ignore it.
    Ok(file)
}

/// Fsyncs a directory so that renames and unlinks in it are durable.
pub fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Opens a block device for writing with `O_EXCL`, which Linux grants only while
/// nothing else holds the device: a mounted filesystem, a device-mapper or RAID
/// member, another exclusive opener. Fails with `EBUSY` (see [`is_busy`]) then.
pub fn open_block_device_exclusive(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(rustix::fs::OFlags::EXCL.bits() as i32)
        .open(path)
}

/// Whether an error is `EBUSY`.
pub fn is_busy(err: &io::Error) -> bool {
    err.raw_os_error() == Some(rustix::io::Errno::BUSY.raw_os_error())
}

/// Whether an error means the filesystem (or quota) is full.
pub fn is_no_space(err: &io::Error) -> bool {
    use rustix::io::Errno;
    matches!(
        err.raw_os_error().map(Errno::from_raw_os_error),
        Some(Errno::NOSPC | Errno::DQUOT)
    )
}

/// One line of `/proc/self/mountinfo`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// `st_dev` of the filesystem's files (major, minor).
    pub dev: (u32, u32),
    /// Where it is mounted.
    pub mount_point: PathBuf,
    /// What was mounted (`/dev/loop3`, `tmpfs`).
    pub source: String,
}

/// The mounts of this process's namespace, in mount order (later ones hide
/// earlier ones on the same mount point). Empty when `/proc` cannot be read.
pub fn mounts() -> Vec<Mount> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .map(|text| parse_mountinfo(&text))
        .unwrap_or_default()
}

/// Parses `/proc/self/mountinfo` (see proc(5)); malformed lines are skipped.
pub fn parse_mountinfo(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            let (major, minor) = fields.get(2)?.split_once(':')?;
            let dev = (major.parse().ok()?, minor.parse().ok()?);
            let mount_point = PathBuf::from(unescape_mount_field(fields.get(4)?));
            // Optional fields end with "-", then fstype and source.
            let dash = fields.iter().skip(6).position(|f| *f == "-")? + 6;
            let source = unescape_mount_field(fields.get(dash + 2)?);
            Some(Mount {
                dev,
                mount_point,
                source,
            })
        })
        .collect()
}

/// Undoes the kernel's octal escapes (`\040` for a space) in a mountinfo field.
fn unescape_mount_field(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| bytes[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match octal.and_then(|d| u8::from_str_radix(std::str::from_utf8(d).ok()?, 8).ok()) {
            Some(b) => {
                out.push(b);
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The mount point of the filesystem holding `path` (which must exist): the
/// longest mount point that is a prefix of its canonical path.
pub fn mount_point_of(path: &Path) -> Option<PathBuf> {
    let real = std::fs::canonicalize(path).ok()?;
    mount_point_in(&mounts(), &real)
}

/// The longest (on ties: the latest) mount point in `mounts` that holds `real`.
pub fn mount_point_in(mounts: &[Mount], real: &Path) -> Option<PathBuf> {
    mounts
        .iter()
        .filter(|m| real.starts_with(&m.mount_point))
        .max_by_key(|m| m.mount_point.components().count())
        .map(|m| m.mount_point.clone())
}

/// Where the block device `device` (`st_rdev` = `rdev`) is mounted: mounts
/// whose files carry its device number or whose source is the device.
pub fn mount_points_of_device(device: &Path, rdev: u64) -> Vec<PathBuf> {
    let dev = (rustix::fs::major(rdev), rustix::fs::minor(rdev));
    let real = std::fs::canonicalize(device).unwrap_or_else(|_| device.to_owned());
    let mut found: Vec<PathBuf> = Vec::new();
    for m in mounts() {
        let same_source =
            m.source.starts_with('/') && std::fs::canonicalize(&m.source).is_ok_and(|s| s == real);
        if (m.dev == dev || same_source) && !found.contains(&m.mount_point) {
            found.push(m.mount_point);
        }
    }
    found
}

/// The file behind a loop device (`/sys/dev/block/MAJ:MIN/loop/backing_file`),
/// if `rdev` is a loop device with one.
pub fn loop_backing_file(rdev: u64) -> Option<PathBuf> {
    let sys = format!(
        "/sys/dev/block/{}:{}/loop/backing_file",
        rustix::fs::major(rdev),
        rustix::fs::minor(rdev)
    );
    let text = std::fs::read_to_string(sys).ok()?;
    let name = text.trim_end_matches('\n');
    (!name.is_empty()).then(|| PathBuf::from(name))
}

/// Free bytes for unprivileged users of the filesystem holding `dir`
/// (`f_bavail * f_frsize`) after a `syncfs`, one reading.
pub fn available_bytes(dir: &Path) -> io::Result<u64> {
    available_after_sync(&File::open(dir)?)
}

fn available_after_sync(fd: &File) -> io::Result<u64> {
    rustix::fs::syncfs(fd)?;
    let st = rustix::fs::fstatvfs(fd)?;
    Ok(st.f_bavail.saturating_mul(st.f_frsize))
}

/// [`available_bytes`] once what was just deleted is counted: btrfs frees
/// extents at the transaction commit, which `syncfs` waits for; XFS frees an
/// unlinked file's blocks in a background worker, which `statfs` starts but
/// does not wait for. So this reads every 50 ms until two readings in a row
/// equal the first (100 ms unchanged), for at most 5 s. (With 250 ms, every
/// `forget` took half a second, most of it waiting on a figure that had
/// long settled.)
pub fn settled_available_bytes(dir: &Path) -> io::Result<u64> {
    use std::time::{Duration, Instant};
    let fd = File::open(dir)?;
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut last = available_after_sync(&fd)?;
    let mut unchanged = 0;
    while unchanged < 2 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        let now = available_after_sync(&fd)?;
        if now == last {
            unchanged += 1;
        } else {
            unchanged = 0;
            last = now;
        }
    }
    Ok(last)
}

/// The processes holding a `flock` on `file` (as `/proc/locks` lists
/// them), each as its pid and command line; empty when `/proc` does not
/// say. A pid is named only when that process has the same file open, so
/// an equal inode number on another filesystem is never taken for it.
pub fn flock_holders(file: &File) -> Vec<(u32, Vec<String>)> {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = file.metadata() else {
        return Vec::new();
    };
    let Ok(locks) = std::fs::read_to_string("/proc/locks") else {
        return Vec::new();
    };
    let mut pids: Vec<u32> = parse_proc_locks(&locks, meta.ino());
    pids.sort_unstable();
    pids.dedup();
    pids.into_iter()
        .filter(|pid| has_open(*pid, meta.dev(), meta.ino()))
        .filter_map(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let args = cmdline
                .split(|b| *b == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            Some((pid, args))
        })
        .collect()
}

/// The pids `/proc/locks` names as holding a FLOCK on inode `ino` (waiters,
/// the `->` lines, hold nothing). Lines: `1: FLOCK ADVISORY WRITE 1234
/// 00:2e:5678 0 EOF`.
pub fn parse_proc_locks(text: &str, ino: u64) -> Vec<u32> {
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.get(1) != Some(&"FLOCK") {
                return None;
            }
            let inode = fields.get(5)?.rsplit(':').next()?.parse::<u64>().ok()?;
            (inode == ino).then(|| fields.get(4)?.parse().ok())?
        })
        .collect()
}

/// Whether process `pid` has the file `dev`/`ino` open.
fn has_open(pid: u32, dev: u64, ino: u64) -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.flatten()
        .any(|fd| std::fs::metadata(fd.path()).is_ok_and(|m| m.dev() == dev && m.ino() == ino))
}

#[cfg(test)]
mod tests {
    #[test]
    fn parallel_map_keeps_the_order() {
        let items: Vec<u32> = (0..1000).collect();
        for threads in [1, 2, 8, 5000] {
            let out = super::parallel_map(&items, threads, |&x| x * 2);
            assert_eq!(out, items.iter().map(|x| x * 2).collect::<Vec<_>>());
        }
        assert!(super::parallel_map(&[] as &[u32], 8, |&x| x).is_empty());
    }

    use super::*;

    #[test]
    fn mountinfo_lines_parse_with_escapes_and_optional_fields() {
        let text = "22 1 0:21 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n\
                    98 22 7:3 / /mnt/my\\040backups rw shared:40 master:2 - xfs /dev/loop3 rw\n\
                    99 22 0:45 /sub /srv rw - btrfs /dev/loop4 rw,subvol=/sub\n\
                    garbage\n";
        let m = parse_mountinfo(text);
        assert_eq!(m.len(), 3, "{m:?}");
        assert_eq!(m[0].dev, (0, 21));
        assert_eq!(m[1].mount_point, PathBuf::from("/mnt/my backups"));
        assert_eq!(m[1].source, "/dev/loop3");
        assert_eq!(m[1].dev, (7, 3));
        assert_eq!(m[2].source, "/dev/loop4");
        assert_eq!(
            mount_point_in(&m, Path::new("/mnt/my backups/x/y")),
            Some(PathBuf::from("/mnt/my backups"))
        );
        assert_eq!(
            mount_point_in(&m, Path::new("/mnt/other")),
            Some(PathBuf::from("/"))
        );
        assert_eq!(
            mount_point_in(&m, Path::new("/srvx")),
            Some(PathBuf::from("/")),
            "prefixes are whole components"
        );
    }

    #[test]
    fn unescapes_only_octal_escapes() {
        assert_eq!(unescape_mount_field("a\\040b\\011c"), "a b\tc");
        assert_eq!(unescape_mount_field("a\\9b\\04"), "a\\9b\\04");
        assert_eq!(unescape_mount_field("\\134"), "\\");
    }

    #[test]
    fn proc_locks_name_the_holders_of_one_inode() {
        let text = "1: FLOCK  ADVISORY  WRITE 4242 00:2e:5678 0 EOF\n\
                    2: FLOCK  ADVISORY  READ  17 08:01:5678 0 EOF\n\
                    2: -> FLOCK  ADVISORY  WRITE 99 08:01:5678 0 EOF\n\
                    3: POSIX  ADVISORY  WRITE 5 08:01:5678 0 EOF\n\
                    4: FLOCK  ADVISORY  WRITE 6 08:01:1234 0 EOF\n";
        assert_eq!(parse_proc_locks(text, 5678), [4242, 17]);
        assert!(parse_proc_locks("garbage\n1: FLOCK\n", 5678).is_empty());
    }
}
