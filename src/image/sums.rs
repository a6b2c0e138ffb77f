//! The checksum manifest `<id>.sums`: one BLAKE3 digest per block of an image.
//!
//! # Layout (version 1, all integers little-endian)
//!
//! ```text
//! offset  size  field
//!      0     8  magic "BACKYSUM"
//!      8     4  format version (1)
//!     12     4  hash algorithm (1 = BLAKE3-256)
//!     16     4  block size in bytes (65536)
//!     20     4  digest length in bytes (32)
//!     24     8  image size in bytes
//!     32  4064  zero (reserved)
//!   4096  32*n  digest of block i at 4096 + 32*i, n = ceil(image size / block size)
//! ```
//!
//! The last block may be short; its digest covers only its bytes. A block of zeros
//! (of any length) is stored as 32 zero bytes, the *zero marker*, which no BLAKE3
//! output takes in practice. The header fills one 4 KiB page and digests are packed
//! 128 to a page, so a new revision's manifest, a reflink clone of its parent's, only
//! unshares the pages that hold changed digests.

use std::fs::{File, OpenOptions};
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Bytes per checksummed block.
pub const BLOCK_SIZE: u64 = 64 * 1024;
/// Digests per 4 KiB page of a manifest (a hole of the file skips whole pages).
pub const DIGESTS_PER_PAGE: u64 = PAGE / DIGEST_LEN as u64;
const MAGIC: &[u8; 8] = b"BACKYSUM";
const VERSION: u32 = 1;
const HASH_BLAKE3: u32 = 1;
const HEADER_LEN: u64 = 4096;
const DIGEST_LEN: usize = 32;
const PAGE: u64 = 4096;

/// One block's digest, or the zero marker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Digest(pub [u8; DIGEST_LEN]);

impl Digest {
    /// The marker for an all-zero block.
    pub const ZERO: Digest = Digest([0; DIGEST_LEN]);

    /// The digest of a block's bytes; the zero marker when they are all zero.
    pub fn of(data: &[u8]) -> Digest {
        if is_zero(data) {
            Digest::ZERO
        } else {
            Digest(*blake3::hash(data).as_bytes())
        }
    }

    /// Lowercase hex, for JSON and messages.
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Parses 64 hex digits (either case).
    pub fn from_hex(text: &str) -> Option<Digest> {
        if text.len() != DIGEST_LEN * 2 || !text.is_ascii() {
            return None;
        }
        let mut out = [0u8; DIGEST_LEN];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
        }
        Some(Digest(out))
    }

    /// Whether this is the zero marker.
    pub fn is_zero(&self) -> bool {
        *self == Digest::ZERO
    }
}

/// Whether every byte of `data` is zero (fast: compares 16 bytes at a time).
pub fn is_zero(data: &[u8]) -> bool {
    let (chunks, rest) = data.as_chunks::<16>();
    chunks.iter().all(|c| u128::from_ne_bytes(*c) == 0) && rest.iter().all(|&b| b == 0)
}

/// Number of blocks of an image of `size` bytes.
pub fn block_count(size: u64, block_size: u64) -> u64 {
    size.div_ceil(block_size)
}

/// An open manifest with a one-page cache, for sequential reads and sparse updates.
pub struct Manifest {
    file: File,
    path: PathBuf,
    block_size: u64,
    image_size: u64,
    page_no: Option<u64>,
    page: Vec<u8>,
    dirty: bool,
}

impl Manifest {
    /// Creates a new manifest for an image of `image_size` bytes, all blocks marked zero.
    pub fn create(path: &Path, image_size: u64) -> Result<Manifest> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(path)
            .map_err(Error::io("cannot create checksum manifest", path))?;
        let mut m = Manifest::from_file(file, path, BLOCK_SIZE, 0);
        m.resize(image_size)?;
        Ok(m)
    }

    /// Opens an existing manifest for reading (and updating, if `writable`).
    pub fn open(path: &Path, writable: bool) -> Result<Manifest> {
        let file = crate::sys::open_regular(path, writable)
            .map_err(Error::io("cannot open checksum manifest", path))?;
        let mut header = [0u8; 32];
        file.read_exact_at(&mut header, 0)
            .map_err(|_| bad(path, "it is shorter than its header"))?;
        if &header[0..8] != MAGIC {
            return Err(bad(path, "it does not start with BACKYSUM"));
        }
        let word = |i: usize| u32::from_le_bytes(header[i..i + 4].try_into().unwrap());
        if word(8) != VERSION {
            return Err(bad(
                path,
                &format!(
                    "format version {} is not supported (this backy reads version {VERSION})",
                    word(8)
                ),
            ));
        }
        if word(12) != HASH_BLAKE3 || word(20) as usize != DIGEST_LEN {
            return Err(bad(path, "it uses an unknown hash"));
        }
        let block_size = u64::from(word(16));
        if block_size == 0 || block_size % PAGE != 0 {
            return Err(bad(path, "its block size is invalid"));
        }
        let image_size = u64::from_le_bytes(header[24..32].try_into().unwrap());
        // An image size whose digests would not fit in a file (a damaged or
        // hostile header) is refused before anything is computed from it.
        if block_count(image_size, block_size)
            .checked_mul(DIGEST_LEN as u64)
            .and_then(|n| n.checked_add(HEADER_LEN))
            .is_none_or(|n| n > i64::MAX as u64)
        {
            return Err(bad(path, "its image size is impossibly large"));
        }
        let m = Manifest::from_file(file, path, block_size, image_size);
        let len = m
            .file
            .metadata()
            .map_err(Error::io("cannot stat", path))?
            .len();
        if len < m.expected_len() {
            return Err(bad(path, "it is shorter than its image needs"));
        }
        Ok(m)
    }

    fn from_file(file: File, path: &Path, block_size: u64, image_size: u64) -> Manifest {
        Manifest {
            file,
            path: path.to_owned(),
            block_size,
            image_size,
            page_no: None,
            page: vec![0; PAGE as usize],
            dirty: false,
        }
    }

    fn expected_len(&self) -> u64 {
        HEADER_LEN + block_count(self.image_size, self.block_size) * DIGEST_LEN as u64
    }

    /// The block size this manifest was written with.
    pub fn block_size(&self) -> u64 {
        self.block_size
    }

    /// The image size recorded in the header.
    pub fn image_size(&self) -> u64 {
        self.image_size
    }

    /// Number of blocks.
    pub fn blocks(&self) -> u64 {
        block_count(self.image_size, self.block_size)
    }

    /// Changes the image size; new blocks read as zero (as the image's new tail does).
    pub fn resize(&mut self, image_size: u64) -> Result<()> {
        self.flush()?;
        self.page_no = None;
        let old_blocks = self.blocks();
        self.image_size = image_size;
        let mut header = vec![0u8; HEADER_LEN as usize];
        header[0..8].copy_from_slice(MAGIC);
        header[8..12].copy_from_slice(&VERSION.to_le_bytes());
        header[12..16].copy_from_slice(&HASH_BLAKE3.to_le_bytes());
        header[16..20].copy_from_slice(&(self.block_size as u32).to_le_bytes());
        header[20..24].copy_from_slice(&(DIGEST_LEN as u32).to_le_bytes());
        header[24..32].copy_from_slice(&image_size.to_le_bytes());
        let io = Error::io("cannot write checksum manifest", &self.path);
        self.file.write_all_at(&header, 0).map_err(io)?;
        // Shrinking keeps no stale digests beyond the end, growing starts from zero markers.
        let keep = HEADER_LEN + old_blocks.min(self.blocks()) * DIGEST_LEN as u64;
        self.file
            .set_len(keep)
            .and_then(|_| self.file.set_len(self.expected_len()))
            .map_err(Error::io("cannot resize checksum manifest", &self.path))
    }

    fn load_page(&mut self, page_no: u64) -> Result<()> {
        if self.page_no == Some(page_no) {
            return Ok(());
        }
        self.flush()?;
        self.page.fill(0);
        let mut got = 0;
        let offset = HEADER_LEN + page_no * PAGE;
        while got < self.page.len() {
            let n = self
                .file
                .read_at(&mut self.page[got..], offset + got as u64)
                .map_err(Error::io("cannot read checksum manifest", &self.path))?;
            if n == 0 {
                break;
            }
            got += n;
        }
        self.page_no = Some(page_no);
        Ok(())
    }

    fn locate(&self, block: u64) -> (u64, usize) {
        let byte = block * DIGEST_LEN as u64;
        (byte / PAGE, (byte % PAGE) as usize)
    }

    /// The digest recorded for `block`.
    pub fn get(&mut self, block: u64) -> Result<Digest> {
        debug_assert!(block < self.blocks());
        let (page_no, at) = self.locate(block);
        self.load_page(page_no)?;
        Ok(Digest(self.page[at..at + DIGEST_LEN].try_into().unwrap()))
    }

    /// The first block at or after `block` whose digest may be other than the
    /// zero marker: the ones before it lie in a hole of the manifest file, so
    /// they are zero markers without reading them. `block` itself where the file
    /// does not report holes; [`Manifest::blocks`] when only zero markers follow.
    pub fn next_maybe_nonzero(&mut self, block: u64) -> Result<u64> {
        let blocks = self.blocks();
        if block >= blocks {
            return Ok(blocks);
        }
        // The file must hold what the cached page says.
        self.flush()?;
        let byte = HEADER_LEN + block * DIGEST_LEN as u64;
        let io = Error::io("cannot look for data in checksum manifest", &self.path);
        match crate::sys::seek_data(&self.file, byte).map_err(io)? {
            crate::sys::NextData::At(data) if data > byte => {
                Ok(((data - HEADER_LEN) / DIGEST_LEN as u64).min(blocks))
            }
            crate::sys::NextData::None => Ok(blocks),
            _ => Ok(block),
        }
    }

    /// Records `digest` for `block`; writes nothing when it is already there.
    pub fn set(&mut self, block: u64, digest: Digest) -> Result<()> {
        debug_assert!(block < self.blocks());
        let (page_no, at) = self.locate(block);
        self.load_page(page_no)?;
        if self.page[at..at + DIGEST_LEN] != digest.0 {
            self.page[at..at + DIGEST_LEN].copy_from_slice(&digest.0);
            self.dirty = true;
        }
        Ok(())
    }

    /// Writes the cached page back if it changed.
    pub fn flush(&mut self) -> Result<()> {
        if let (true, Some(page_no)) = (self.dirty, self.page_no) {
            let offset = HEADER_LEN + page_no * PAGE;
            let end = self.expected_len();
            let len = (end.saturating_sub(offset)).min(PAGE) as usize;
            self.file
                .write_all_at(&self.page[..len], offset)
                .map_err(Error::io("cannot write checksum manifest", &self.path))?;
            self.dirty = false;
        }
        Ok(())
    }

    /// The digest of the whole manifest: BLAKE3 over its first `4096 + 32*n`
    /// bytes (header and digests; anything past them is ignored), flushed
    /// first. Two manifests with the same content digest describe the same
    /// image size, block size and block digests; `send`/`receive` use it to
    /// name a base revision, to check it and to skip a revision already held.
    pub fn content_digest(&mut self) -> Result<Digest> {
        self.flush()?;
        let mut hasher = blake3::Hasher::new();
        let mut buf = vec![0u8; 1 << 20];
        let end = self.expected_len();
        let mut at = 0;
        while at < end {
            let n = (end - at).min(buf.len() as u64) as usize;
            self.file
                .read_exact_at(&mut buf[..n], at)
                .map_err(Error::io("cannot read checksum manifest", &self.path))?;
            hasher.update(&buf[..n]);
            at += n as u64;
        }
        Ok(Digest(*hasher.finalize().as_bytes()))
    }

    /// Flushes and fsyncs.
    pub fn sync(&mut self) -> Result<()> {
        self.flush()?;
        self.file
            .sync_all()
            .map_err(Error::io("cannot sync checksum manifest", &self.path))
    }
}

/// The blocks whose digests differ between `a` and `b`, as coalesced ranges of
/// block numbers, in order, over the longer of the two.
///
/// A block beyond one manifest's end counts as the zero marker there (a grown
/// image's new tail reads as zeros), so growing with zeros differs nowhere.
/// Equal digests mean equal bytes of equal length: a short last block has a
/// digest of its own, except when all zero. Both manifests must have the same
/// block size.
pub fn differing_blocks(a: &mut Manifest, b: &mut Manifest) -> Result<Vec<Range<u64>>> {
    if a.block_size() != b.block_size() {
        return Err(bad(
            &b.path,
            &format!(
                "its block size {} differs from {}'s {}",
                b.block_size(),
                a.path.display(),
                a.block_size()
            ),
        ));
    }
    let (a_blocks, b_blocks) = (a.blocks(), b.blocks());
    let mut runs: Vec<Range<u64>> = Vec::new();
    for block in 0..a_blocks.max(b_blocks) {
        let da = if block < a_blocks {
            a.get(block)?
        } else {
            Digest::ZERO
        };
        let db = if block < b_blocks {
            b.get(block)?
        } else {
            Digest::ZERO
        };
        if da == db {
            continue;
        }
        match runs.last_mut() {
            Some(run) if run.end == block => run.end += 1,
            _ => runs.push(block..block + 1),
        }
    }
    Ok(runs)
}

fn bad(path: &Path, why: &str) -> Error {
    Error::ManifestUnusable {
        path: path.to_owned(),
        reason: why.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_detection() {
        assert!(is_zero(&[0; 100]));
        let mut v = vec![0u8; 100];
        v[99] = 1;
        assert!(!is_zero(&v));
        v[99] = 0;
        v[3] = 1;
        assert!(!is_zero(&v));
        assert_eq!(Digest::of(&[0; 7]), Digest::ZERO);
        assert_ne!(Digest::of(&[1]), Digest::of(&[1, 0]));
    }

    #[test]
    fn create_set_resize_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.sums");
        let mut m = Manifest::create(&p, 300 * BLOCK_SIZE + 5).unwrap();
        assert_eq!(m.blocks(), 301);
        let d = Digest::of(b"hello");
        m.set(0, d).unwrap();
        m.set(200, d).unwrap();
        m.set(300, d).unwrap();
        m.sync().unwrap();
        let mut m = Manifest::open(&p, true).unwrap();
        assert_eq!(m.get(0).unwrap(), d);
        assert_eq!(m.get(1).unwrap(), Digest::ZERO);
        assert_eq!(m.get(200).unwrap(), d);
        assert_eq!(m.get(300).unwrap(), d);
        m.resize(250 * BLOCK_SIZE).unwrap();
        m.resize(400 * BLOCK_SIZE).unwrap();
        assert_eq!(m.get(200).unwrap(), d);
        assert_eq!(
            m.get(300).unwrap(),
            Digest::ZERO,
            "shrink then grow forgets"
        );
        m.sync().unwrap();
        let m = Manifest::open(&p, false).unwrap();
        assert_eq!(m.image_size(), 400 * BLOCK_SIZE);
        assert_eq!(std::fs::metadata(&p).unwrap().len(), 4096 + 400 * 32);
    }

    #[test]
    fn content_digests_follow_the_digests_and_hex_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = Manifest::create(&dir.path().join("a.sums"), 3 * BLOCK_SIZE).unwrap();
        let mut b = Manifest::create(&dir.path().join("b.sums"), 3 * BLOCK_SIZE).unwrap();
        assert_eq!(a.content_digest().unwrap(), b.content_digest().unwrap());
        a.set(2, Digest::of(b"x")).unwrap();
        assert_ne!(a.content_digest().unwrap(), b.content_digest().unwrap());
        b.set(2, Digest::of(b"x")).unwrap();
        assert_eq!(a.content_digest().unwrap(), b.content_digest().unwrap());
        b.resize(4 * BLOCK_SIZE).unwrap();
        assert_ne!(a.content_digest().unwrap(), b.content_digest().unwrap());
        let d = Digest::of(b"hex");
        assert_eq!(Digest::from_hex(&d.to_hex()), Some(d));
        assert_eq!(Digest::from_hex("00"), None);
        assert_eq!(Digest::from_hex(&"g".repeat(64)), None);
    }

    #[test]
    fn differing_blocks_are_coalesced_and_zero_growth_is_equal() {
        let dir = tempfile::tempdir().unwrap();
        let (pa, pb) = (dir.path().join("a.sums"), dir.path().join("b.sums"));
        let mut a = Manifest::create(&pa, 10 * BLOCK_SIZE).unwrap();
        let mut b = Manifest::create(&pb, 14 * BLOCK_SIZE + 100).unwrap();
        let (x, y) = (Digest::of(b"x"), Digest::of(b"y"));
        for block in 0..10 {
            a.set(block, x).unwrap();
            b.set(block, x).unwrap();
        }
        for block in [2, 3, 4, 7] {
            b.set(block, y).unwrap();
        }
        b.set(9, Digest::ZERO).unwrap();
        b.set(12, y).unwrap();
        b.set(14, y).unwrap();
        let runs = differing_blocks(&mut a, &mut b).unwrap();
        assert_eq!(runs, vec![2..5, 7..8, 9..10, 12..13, 14..15]);
        assert_eq!(differing_blocks(&mut b, &mut a).unwrap(), runs, "symmetric");
        a.sync().unwrap();
        let mut again = Manifest::open(&pa, false).unwrap();
        assert!(differing_blocks(&mut a, &mut again).unwrap().is_empty());
    }

    /// Digests in a hole of the manifest are known zero markers without
    /// reading them; a page that holds a digest stops the skip.
    #[test]
    fn holes_of_the_manifest_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.sums");
        let blocks = 1 << 20;
        let mut m = Manifest::create(&p, blocks * BLOCK_SIZE).unwrap();
        let probe = File::create(dir.path().join("probe")).unwrap();
        probe.set_len(1 << 20).unwrap();
        let holes = matches!(
            crate::sys::seek_data(&probe, 0),
            Ok(crate::sys::NextData::None)
        );
        let first = m.next_maybe_nonzero(0).unwrap();
        assert!(first == 0 || (holes && first == blocks), "{first}");
        m.set(700_000, Digest::of(b"x")).unwrap();
        let next = m.next_maybe_nonzero(5).unwrap();
        assert!(next <= 700_000, "{next}");
        if holes {
            // The digest's page starts at a multiple of 128 blocks at most.
            assert!(next > 600_000, "{next}");
        }
        for b in 5..next {
            assert_eq!(m.get(b).unwrap(), Digest::ZERO);
        }
        assert_eq!(m.next_maybe_nonzero(blocks).unwrap(), blocks);
    }

    #[test]
    fn rejects_foreign_files() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.sums");
        std::fs::write(
            &p,
            b"not a manifest at all, but long enough to hold a header",
        )
        .unwrap();
        assert!(Manifest::open(&p, false).is_err());
        std::fs::write(&p, b"short").unwrap();
        assert!(Manifest::open(&p, false).is_err());
    }
}
