//! Where a file's bytes live on disk: the `FS_IOC_FIEMAP` ioctl.
//!
//! Space accounting ("what would deleting this revision free?") and damage
//! tracking ("which revisions share the bad extent?") both start from the
//! physical extents of revision images. This module is the one place that asks
//! the kernel for them.
//!
//! The kernel's structures (`linux/fiemap.h`), pinned here:
//!
//! ```text
//! struct fiemap {                       struct fiemap_extent {
//!     u64 fm_start;                         u64 fe_logical;
//!     u64 fm_length;                        u64 fe_physical;
//!     u32 fm_flags;                         u64 fe_length;
//!     u32 fm_mapped_extents;                u64 fe_reserved64[2];
//!     u32 fm_extent_count;                  u32 fe_flags;
//!     u32 fm_reserved;                      u32 fe_reserved[3];
//!     struct fiemap_extent fm_extents[];  };                 /* 56 bytes */
//! };                                    /* 32 bytes */
//! ```
//!
//! The opcode is `_IOWR('f', 11, struct fiemap)`, computed from the 32-byte
//! header. We ask for up to `BATCH` extents per call and continue after the
//! last one returned until an extent carries `FIEMAP_EXTENT_LAST` or the range
//! is covered.

#![allow(unsafe_code)] // the one ioctl, below, with its SAFETY note

use std::fs::File;
use std::io;

use rustix::ioctl::{Updater, opcode};

/// `FIEMAP_FLAG_SYNC`: write dirty data first, so delayed allocations have
/// their final place.
const FLAG_SYNC: u32 = 0x1;

/// Extent flags (`FIEMAP_EXTENT_*`).
pub mod flags {
    /// The last extent of the file.
    pub const LAST: u32 = 0x1;
    /// The location is not known yet.
    pub const UNKNOWN: u32 = 0x2;
    /// Delayed allocation (implies `UNKNOWN`).
    pub const DELALLOC: u32 = 0x4;
    /// The data is encoded (btrfs compression): lengths are logical.
    pub const ENCODED: u32 = 0x8;
    /// The data is encrypted.
    pub const DATA_ENCRYPTED: u32 = 0x80;
    /// Offsets are not block aligned.
    pub const NOT_ALIGNED: u32 = 0x100;
    /// Data stored inline in metadata (btrfs small files).
    pub const DATA_INLINE: u32 = 0x200;
    /// Data packed into a tail block.
    pub const DATA_TAIL: u32 = 0x400;
    /// Allocated but unwritten (reads as zeros).
    pub const UNWRITTEN: u32 = 0x800;
    /// The filesystem merged several extents into this one.
    pub const MERGED: u32 = 0x1000;
    /// Space shared with another file (reflink or snapshot).
    pub const SHARED: u32 = 0x2000;
}

/// Extents asked for per ioctl call.
const BATCH: usize = 512;

#[repr(C)]
struct Header {
    start: u64,
    length: u64,
    flags: u32,
    mapped_extents: u32,
    extent_count: u32,
    reserved: u32,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct RawExtent {
    logical: u64,
    physical: u64,
    length: u64,
    reserved64: [u64; 2],
    flags: u32,
    reserved: [u32; 3],
}

#[repr(C)]
struct Request {
    header: Header,
    extents: [RawExtent; BATCH],
}

const FS_IOC_FIEMAP: rustix::ioctl::Opcode = opcode::read_write::<Header>(b'f', 11);

/// One mapped range of a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    /// Offset in the file.
    pub logical: u64,
    /// Offset on the device.
    pub physical: u64,
    /// Length in bytes (for `ENCODED` extents the logical length).
    pub length: u64,
    /// `FIEMAP_EXTENT_*` bits, see [`flags`].
    pub flags: u32,
}

impl Extent {
    /// An extent with no flags, for tests of what reads extent maps.
    #[cfg(test)]
    pub(crate) fn plain(logical: u64, physical: u64, length: u64) -> Extent {
        Extent {
            logical,
            physical,
            length,
            flags: 0,
        }
    }

    /// Whether the filesystem says another file shares these blocks.
    pub fn is_shared(&self) -> bool {
        self.flags & flags::SHARED != 0
    }

    /// Whether `physical` is meaningful (not delayed, inline or unknown), so
    /// two extents with the same physical range really are the same blocks.
    pub fn has_location(&self) -> bool {
        self.flags & (flags::UNKNOWN | flags::DELALLOC | flags::DATA_INLINE | flags::NOT_ALIGNED)
            == 0
    }

    /// Whether the length is the logical one of compressed data (btrfs), so
    /// the bytes on disk are fewer.
    pub fn is_encoded(&self) -> bool {
        self.flags & flags::ENCODED != 0
    }

    /// One past the last file offset.
    pub fn end(&self) -> u64 {
        self.logical + self.length
    }
}

/// The extents of `file` that overlap `[start, start+len)`, in file order.
/// Holes have no extent. With `sync`, dirty data is written first
/// (`FIEMAP_FLAG_SYNC`), so every extent has its final location.
///
/// Fails with `Unsupported`-like errors (`EOPNOTSUPP`, `ENOTTY`) on
/// filesystems without FIEMAP (tmpfs).
pub fn extents_in(file: &File, start: u64, len: u64, sync: bool) -> io::Result<Vec<Extent>> {
    let end = start.saturating_add(len);
    let mut out = Vec::new();
    let mut next = start;
    let mut request = Box::new(Request {
        header: Header {
            start: 0,
            length: 0,
            flags: 0,
            mapped_extents: 0,
            extent_count: 0,
            reserved: 0,
        },
        extents: [RawExtent {
            logical: 0,
            physical: 0,
            length: 0,
            reserved64: [0; 2],
            flags: 0,
            reserved: [0; 3],
        }; BATCH],
    });
    while next < end {
        request.header = Header {
            start: next,
            length: end - next,
            flags: if sync && out.is_empty() { FLAG_SYNC } else { 0 },
            mapped_extents: 0,
            extent_count: BATCH as u32,
            reserved: 0,
        };
        // SAFETY: FS_IOC_FIEMAP is _IOWR('f', 11, struct fiemap) and takes a
        // `struct fiemap` followed by `fm_extent_count` extents; `Request` is
        // that layout (repr(C), 32-byte header, BATCH 56-byte extents), and
        // `extent_count` says how many the kernel may fill.
        unsafe {
            let ioctl = Updater::<FS_IOC_FIEMAP, Request>::new(&mut request);
            rustix::ioctl::ioctl(file, ioctl)?;
        }
        let mapped = (request.header.mapped_extents as usize).min(BATCH);
        if mapped == 0 {
            break;
        }
        let mut last = false;
        for raw in &request.extents[..mapped] {
            out.push(Extent {
                logical: raw.logical,
                physical: raw.physical,
                length: raw.length,
                flags: raw.flags,
            });
            last |= raw.flags & flags::LAST != 0;
        }
        let tail = out.last().map(Extent::end).unwrap_or(end);
        if last || tail <= next {
            break;
        }
        next = tail;
    }
    Ok(out)
}

/// All extents of `file`, in file order (see [`extents_in`]).
pub fn extents(file: &File, sync: bool) -> io::Result<Vec<Extent>> {
    extents_in(file, 0, u64::MAX, sync)
}

/// Whether an error from [`extents_in`] means the filesystem has no FIEMAP.
pub fn is_unsupported(err: &io::Error) -> bool {
    use rustix::io::Errno;
    matches!(
        err.raw_os_error().map(Errno::from_raw_os_error),
        Some(Errno::OPNOTSUPP | Errno::NOTTY | Errno::NOSYS)
    )
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    #[test]
    fn the_layout_matches_the_kernel() {
        assert_eq!(std::mem::size_of::<Header>(), 32);
        assert_eq!(std::mem::size_of::<RawExtent>(), 56);
        assert_eq!(FS_IOC_FIEMAP, 0xC020_660B);
    }

    /// A sparse file: data at two places, holes elsewhere; extents cover
    /// exactly the data (where the temp filesystem has FIEMAP).
    #[test]
    fn extents_cover_the_data_and_skip_holes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let mut f = File::create(&path).unwrap();
        f.write_all(&[1u8; 65536]).unwrap();
        f.set_len(16 << 20).unwrap();
        use std::os::unix::fs::FileExt;
        f.write_all_at(&[2u8; 65536], 8 << 20).unwrap();
        let f = File::open(&path).unwrap();
        let list = match extents(&f, true) {
            Ok(l) => l,
            Err(e) if is_unsupported(&e) => return,
            Err(e) => panic!("fiemap: {e}"),
        };
        let covered: u64 = list.iter().map(|e| e.length).sum();
        assert!(covered >= 2 * 65536, "{list:?}");
        assert!(
            list.iter()
                .any(|e| e.logical <= 8 << 20 && e.end() > 8 << 20)
        );
        assert!(
            list.iter()
                .all(|e| e.end() <= 16 << 20 || e.logical < 16 << 20)
        );
        assert!(list.last().unwrap().flags & flags::LAST != 0);
        // A range query sees only the second piece.
        let part = extents_in(&f, 4 << 20, 8 << 20, false).unwrap();
        assert!(part.iter().all(|e| e.end() > 4 << 20), "{part:?}");
        assert!(
            part.iter()
                .any(|e| e.logical <= 8 << 20 && e.end() > 8 << 20)
        );
    }
}
