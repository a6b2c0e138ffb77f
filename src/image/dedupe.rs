//! Sharing equal ranges of two files: the `FIDEDUPERANGE` ioctl.
//!
//! `backy reshare` uses it to let a copied revision share its parent's extents
//! again. Unlike a reflink clone of a range (`FICLONERANGE`), the kernel first
//! compares the bytes of both ranges under its locks and shares them only when
//! they are equal, so a wrong manifest can never merge different data, and a
//! reader sees the same bytes before, during and after the call.
//!
//! The kernel's structures (`linux/fs.h`), pinned here:
//!
//! ```text
//! struct file_dedupe_range {            struct file_dedupe_range_info {
//!     u64 src_offset;                       s64 dest_fd;
//!     u64 src_length;                       u64 dest_offset;
//!     u16 dest_count;                       u64 bytes_deduped;   /* out */
//!     u16 reserved1;                        s32 status;          /* out */
//!     u32 reserved2;                        u32 reserved;
//!     struct file_dedupe_range_info info[]; };                   /* 32 bytes */
//! };                                    /* 24 bytes */
//! ```
//!
//! The opcode is `_IOWR(0x94, 54, struct file_dedupe_range)` = `0xC0189436`,
//! computed from the 24-byte header. `status` is `FILE_DEDUPE_RANGE_SAME` (0),
//! `FILE_DEDUPE_RANGE_DIFFERS` (1) or a negative errno. We pass one
//! destination per call.
//!
//! Permissions: the source must be open for reading; the destination may be
//! open read-only when the caller owns it or may write it, or is
//! `CAP_SYS_ADMIN` (Linux 4.19 and later), so the 0440 images need no mode
//! change. Filesystems cap the length of one call (XFS and btrfs at 16 MiB)
//! and may dedupe less than asked: [`dedupe`] loops over [`MAX_PER_CALL`]
//! pieces and continues after what each call did.

#![allow(unsafe_code)] // the one ioctl, below, with its SAFETY note

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

use rustix::ioctl::{Updater, opcode};

/// Bytes asked for per ioctl call (the cap of XFS and btrfs).
pub const MAX_PER_CALL: u64 = 16 << 20;

const STATUS_SAME: i32 = 0;
const STATUS_DIFFERS: i32 = 1;

#[repr(C)]
struct Header {
    src_offset: u64,
    src_length: u64,
    dest_count: u16,
    reserved1: u16,
    reserved2: u32,
}

#[repr(C)]
struct Info {
    dest_fd: i64,
    dest_offset: u64,
    bytes_deduped: u64,
    status: i32,
    reserved: u32,
}

#[repr(C)]
struct Request {
    header: Header,
    info: [Info; 1],
}

const FIDEDUPERANGE: rustix::ioctl::Opcode = opcode::read_write::<Header>(0x94, 54);

/// What [`dedupe`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The whole range was equal and is now shared.
    Same,
    /// The bytes differ at or after `at` (a source offset); the range before
    /// it is shared.
    Differs {
        /// Where the piece that differed starts (not the exact byte).
        at: u64,
    },
}

/// Makes `[dest_offset, dest_offset+len)` of `dest` share the extents of
/// `[src_offset, src_offset+len)` of `src` where the bytes are equal; the
/// content of both files never changes.
///
/// Offsets must be aligned to the filesystem block size; the length too,
/// unless the range ends at the end of both files. Fails with
/// `EOPNOTSUPP`/`EINVAL`/`EXDEV`/`ENOTTY` where the filesystem cannot dedupe
/// (ext4, tmpfs, two filesystems); see [`is_unsupported`].
pub fn dedupe(
    src: &File,
    src_offset: u64,
    dest: &File,
    dest_offset: u64,
    len: u64,
) -> io::Result<Outcome> {
    let mut done = 0;
    while done < len {
        let piece = (len - done).min(MAX_PER_CALL);
        let (status, deduped) =
            dedupe_once(src, src_offset + done, dest, dest_offset + done, piece)?;
        match status {
            STATUS_SAME if deduped > 0 => done += deduped.min(piece),
            STATUS_SAME => {
                // Nothing done and nothing wrong: the kernel would loop forever
                // on the same request, so say why instead.
                return Err(io::Error::other(format!(
                    "the kernel deduplicated no bytes of {piece} at offset {}",
                    src_offset + done
                )));
            }
            STATUS_DIFFERS => {
                return Ok(Outcome::Differs {
                    at: src_offset + done,
                });
            }
            errno if errno < 0 => return Err(io::Error::from_raw_os_error(-errno)),
            other => {
                return Err(io::Error::other(format!(
                    "FIDEDUPERANGE returned the unknown status {other}"
                )));
            }
        }
    }
    Ok(Outcome::Same)
}

/// One call: `(status, bytes_deduped)`.
fn dedupe_once(
    src: &File,
    src_offset: u64,
    dest: &File,
    dest_offset: u64,
    len: u64,
) -> io::Result<(i32, u64)> {
    let mut request = Request {
        header: Header {
            src_offset,
            src_length: len,
            dest_count: 1,
            reserved1: 0,
            reserved2: 0,
        },
        info: [Info {
            dest_fd: i64::from(dest.as_raw_fd()),
            dest_offset,
            bytes_deduped: 0,
            status: 0,
            reserved: 0,
        }],
    };
    // SAFETY: FIDEDUPERANGE is _IOWR(0x94, 54, struct file_dedupe_range) and
    // takes a `struct file_dedupe_range` followed by `dest_count` infos;
    // `Request` is that layout (repr(C), a 24-byte header and one 32-byte
    // info) with `dest_count` 1. `dest_fd` is an open descriptor that `dest`
    // keeps alive for the call; the kernel writes only the infos' out fields.
    unsafe {
        let ioctl = Updater::<FIDEDUPERANGE, Request>::new(&mut request);
        rustix::ioctl::ioctl(src, ioctl)?;
    }
    Ok((request.info[0].status, request.info[0].bytes_deduped))
}

/// Whether an error from [`dedupe`] means this filesystem (pair) cannot
/// dedupe, rather than an I/O failure.
pub fn is_unsupported(err: &io::Error) -> bool {
    use rustix::io::Errno;
    matches!(
        err.raw_os_error().map(Errno::from_raw_os_error),
        Some(Errno::OPNOTSUPP | Errno::XDEV | Errno::INVAL | Errno::NOTTY | Errno::NOSYS)
    )
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::FileExt;

    use super::*;

    #[test]
    fn the_layout_matches_the_kernel() {
        assert_eq!(std::mem::size_of::<Header>(), 24);
        assert_eq!(std::mem::size_of::<Info>(), 32);
        assert_eq!(FIDEDUPERANGE, 0xC018_9436);
    }

    /// Equal ranges are reported the same, different ones differ, and the
    /// content stays (where the temp filesystem can dedupe at all).
    #[test]
    fn equal_ranges_are_same_and_different_ones_differ() {
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..1 << 20).map(|i: u32| (i * 7 % 251) as u8).collect();
        let a_path = dir.path().join("a");
        let b_path = dir.path().join("b");
        std::fs::write(&a_path, &data).unwrap();
        let mut other = data.clone();
        other[600_000] ^= 1;
        std::fs::write(&b_path, &other).unwrap();
        let a = File::open(&a_path).unwrap();
        let b = File::open(&b_path).unwrap();
        match dedupe(&a, 0, &b, 0, 512 << 10) {
            Ok(outcome) => assert_eq!(outcome, Outcome::Same),
            Err(e) if is_unsupported(&e) => return,
            Err(e) => panic!("dedupe: {e}"),
        }
        assert!(matches!(
            dedupe(&a, 0, &b, 0, 1 << 20).unwrap(),
            Outcome::Differs { .. }
        ));
        let mut back = vec![0u8; 1 << 20];
        b.read_exact_at(&mut back, 0).unwrap();
        assert_eq!(back, other);
    }
}
