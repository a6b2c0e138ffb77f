//! `ImageWriter`: the one narrow interface through which sources patch a new
//! revision's image (a reflink clone of its parent) while keeping CoW sharing.
//!
//! For each block the source hands over, the writer computes its digest. When the
//! parent's manifest is trusted and holds the same digest, nothing is touched (the
//! extent stays shared). Otherwise the writer reads the clone's block and writes only
//! the 4 KiB pages that differ; pages and blocks that became zero are punched out
//! so the image stays sparse. Every digest lands in the new manifest. A run of
//! differing pages may be extended over unchanged ones (written from the new
//! data) up to an edge of the parent's extents, so revisions do not fragment as a
//! job ages ([`super::layout`]); every block a write touches counts as changed.

use std::collections::VecDeque;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

pub use super::blockset::BlockSet;
use super::layout::Bounds;
pub use super::layout::Layout;
use super::prefetch::Prefetcher;
use super::reader::read_full_at;
use super::sums::{DIGESTS_PER_PAGE, Digest, Manifest, is_zero};
use super::verify::InlineVerifier;
use super::{VerifyReport, ZEROS};
use crate::buf::PageBuf;
use crate::error::{Error, Result};
use crate::sys;

/// Granularity of writes inside a changed block: the page size of the filesystems
/// we run on, so a small change unshares one page, not a whole block.
pub const PAGE: usize = 4096;

/// What a backup changed on disk.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct WriteStats {
    /// Bytes written or punched because they differed from the parent.
    pub bytes_changed: u64,
    /// Blocks skipped because their digest matched the parent's manifest.
    pub blocks_unchanged: u64,
    /// Blocks whose previous content had to be read and compared.
    pub blocks_compared: u64,
    /// Bytes of the image read to compare them (holes of the image are known
    /// to be zeros and not read, so this follows the data, not the size).
    pub bytes_read: u64,
    /// Unchanged bytes written beside changed ones so that the writes end on
    /// the parent's extent boundaries ([`Layout`]).
    pub bytes_rewritten: u64,
}

/// The block as it was before, when the caller has read it, and the byte range
/// the new data replaced (outside it, old and new are the same).
type Known<'a> = Option<(&'a [u8], std::ops::Range<usize>)>;

/// Patches one image and its manifest.
pub struct ImageWriter {
    image: File,
    path: PathBuf,
    manifest: Manifest,
    parent_digests_trusted: bool,
    /// Without trusted digests: which blocks got a digest (one bit per block), so
    /// `finish` can hash the rest from the image.
    touched: BlockSet,
    punch_supported: bool,
    /// The image's old block, read for a comparison (page-aligned: `crate::buf`).
    old: PageBuf,
    stats: WriteStats,
    verifier: Option<InlineVerifier>,
    /// Started by the first [`ImageWriter::prefetch`].
    prefetcher: Option<Prefetcher>,
    /// What `SEEK_DATA` last said: no data in `from..to` of the image. Kept
    /// right by every write (see [`ImageWriter::wrote`]).
    hole: Option<(u64, u64)>,
    /// The filesystem answers `SEEK_DATA`.
    seek_data_supported: bool,
    /// Blocks whose bytes this backup wrote or punched (one bit per block).
    changed: BlockSet,
    layout: Layout,
    /// The parent's extent boundaries, looked up (FIEMAP) around each run
    /// before it is written.
    bounds: Bounds,
    /// The blocks put one after the other up to the current one, as
    /// `start..end`: a run may be extended back over them (the image holds
    /// their new data already, so the extension reads it back from there).
    streak: (u64, u64),
    /// A run's extension into the blocks after it: `from..to`, written when the
    /// block at `from` comes.
    carry: Option<(u64, u64)>,
    /// One past the last byte this backup wrote as data.
    last_end: Option<u64>,
    /// Blocks put but not yet handed to the verifier: a later run may still be
    /// extended back into them.
    unverified: VecDeque<(u64, usize, Digest)>,
    /// Where the current block's patch first wrote data.
    first_write: Option<u64>,
    scratch: Vec<u8>,
}

impl ImageWriter {
    /// A writer for `image` (already equal to the parent) and its `manifest`.
    ///
    /// `parent_digests_trusted` says the manifest's digests describe the image as
    /// it is now (a clone of a trusted parent's manifest); otherwise every block is
    /// compared against the image itself.
    pub fn new(
        image: File,
        path: &Path,
        manifest: Manifest,
        parent_digests_trusted: bool,
    ) -> ImageWriter {
        let block_size = manifest.block_size() as usize;
        let mut writer = ImageWriter {
            image,
            path: path.to_owned(),
            manifest,
            parent_digests_trusted,
            touched: BlockSet::default(),
            punch_supported: true,
            old: PageBuf::new(block_size),
            stats: WriteStats::default(),
            verifier: None,
            prefetcher: None,
            hole: None,
            seek_data_supported: true,
            changed: BlockSet::default(),
            layout: Layout::DEFAULT,
            bounds: Bounds::default(),
            streak: (0, 0),
            carry: None,
            last_end: None,
            unverified: VecDeque::new(),
            first_write: None,
            scratch: Vec::new(),
        };
        if !parent_digests_trusted {
            writer.resize_touched();
        }
        writer
    }

    /// Sets how runs of changed pages are laid out (before the first block).
    pub fn with_layout(mut self, layout: Layout) -> ImageWriter {
        self.layout = layout;
        self
    }

    /// The image's prefetch threads (started on first use), for a source that
    /// decides on another thread what to read ahead.
    pub fn prefetcher(&mut self) -> Result<Prefetcher> {
        if let Some(p) = &self.prefetcher {
            return Ok(p.clone());
        }
        let p = Prefetcher::start(&self.image)
            .map_err(Error::io("cannot start reading ahead in", &self.path))?;
        self.prefetcher = Some(p.clone());
        Ok(p)
    }

    /// Bytes per block.
    pub fn block_size(&self) -> u64 {
        self.manifest.block_size()
    }

    /// The image size.
    pub fn size(&self) -> u64 {
        self.manifest.image_size()
    }

    /// Number of blocks.
    pub fn blocks(&self) -> u64 {
        self.manifest.blocks()
    }

    /// The digest block `block` has in the new manifest now.
    pub fn digest(&mut self, block: u64) -> Result<Digest> {
        self.manifest.get(block)
    }

    /// What has been changed so far.
    pub fn stats(&self) -> WriteStats {
        self.stats
    }

    /// Grows (with a hole) or shrinks the image.
    pub fn resize(&mut self, size: u64) -> Result<()> {
        let old = self.size();
        let bs = self.block_size();
        if let Some(v) = &mut self.verifier
            && size != old
        {
            v.resized();
        }
        self.image
            .set_len(size)
            .map_err(Error::io("cannot resize image", &self.path))?;
        self.hole = None;
        self.streak = (0, 0);
        self.carry = None;
        self.last_end = None;
        self.manifest.resize(size)?;
        self.changed.resize(self.manifest.blocks());
        // The block whose length changed (the old tail on a grow, the new tail on
        // a shrink) keeps a digest of its old length; a source that does not
        // rewrite it (a diff) would leave that digest stale.
        let boundary = match size.cmp(&old) {
            std::cmp::Ordering::Greater if !old.is_multiple_of(bs) => Some(old / bs),
            std::cmp::Ordering::Less if !size.is_multiple_of(bs) => Some(size / bs),
            _ => None,
        };
        if self.parent_digests_trusted {
            if let Some(block) = boundary {
                let mut buf = PageBuf::zeroed(self.block_len(block));
                self.read_block(block, &mut buf)?;
                self.manifest.set(block, Digest::of(&buf))?;
            }
        } else {
            self.resize_touched();
            if let Some(block) = boundary {
                self.touched.remove(block);
            }
        }
        Ok(())
    }

    /// Fits the touched set to the block count; blocks beyond the end leave it.
    fn resize_touched(&mut self) {
        self.touched.resize(self.blocks());
    }

    /// Makes block `block` equal to `data` (a full block, or the short tail block).
    pub fn put_block(&mut self, block: u64, data: &[u8]) -> Result<()> {
        let digest = Digest::of(data);
        self.put_block_with_digest(block, data, digest)
    }

    /// Starts reading, in the background, the image blocks that the next calls
    /// will have to compare: those whose new digest differs from the manifest
    /// (all of them without trusted digests). Many requests in flight are far
    /// faster than one random read at a time.
    pub fn prefetch(&mut self, first_block: u64, digests: &[Digest]) -> Result<()> {
        self.prefetcher()?;
        let mut run: Option<(u64, u64)> = None;
        for (i, digest) in digests.iter().enumerate() {
            let block = first_block + i as u64;
            let needed = !self.parent_digests_trusted || self.manifest.get(block)? != *digest;
            run = match (run, needed) {
                (Some((start, end)), true) if end == block => Some((start, block + 1)),
                (prev, true) => {
                    self.request(prev);
                    Some((block, block + 1))
                }
                (prev, false) => prev,
            };
        }
        self.request(run);
        Ok(())
    }

    /// Asks the prefetch threads for a run of blocks.
    fn request(&self, run: Option<(u64, u64)>) {
        if let (Some((start, end)), Some(p)) = (run, &self.prefetcher) {
            let bs = self.block_size();
            p.request(start * bs, (end - start) * bs);
        }
    }

    /// Makes block `block` all zeros (a hole in the source).
    pub fn put_zero_block(&mut self, block: u64) -> Result<()> {
        let len = self.block_len(block);
        self.put_block_with_digest(block, &ZEROS[..len], Digest::ZERO)
    }

    /// Makes blocks `first..end` all zeros (a hole of the source), as
    /// [`ImageWriter::put_zero_block`] for each would, but runs of whole blocks
    /// that need nothing (zero markers in the manifest, found with `SEEK_DATA` on
    /// it, and, unless the digests are trusted, a hole in the image) cost one
    /// step each: a sparse image costs what its data costs, not its size.
    pub fn put_zero_blocks(&mut self, first: u64, end: u64) -> Result<()> {
        let mut block = first;
        while block < end {
            crate::interrupt::check()?;
            let run_end = self.zero_run_end(block, end)?;
            if run_end > block {
                if self.parent_digests_trusted {
                    self.stats.blocks_unchanged += run_end - block;
                } else {
                    self.touched.insert_range(block, run_end);
                }
                // Blocks put before the run are final: no later run reaches
                // back over whole zero blocks (extensions stop at zeros, and
                // a run reaches back only over blocks put one after the other), and the verifier
                // must see blocks in order.
                self.release_verification(None);
                if let Some(v) = &mut self.verifier {
                    v.record_zeros(block, run_end - block);
                }
                block = run_end;
            }
            // The rest of a manifest page that holds digests, block by block.
            let page_end = (block / DIGESTS_PER_PAGE + 1) * DIGESTS_PER_PAGE;
            while block < end.min(page_end) {
                self.put_zero_block(block)?;
                block += 1;
            }
        }
        Ok(())
    }

    /// Where the run of whole blocks from `block` (below `end`) that become
    /// zeros without any work ends ([`ImageWriter::put_zero_blocks`]).
    fn zero_run_end(&mut self, block: u64, end: u64) -> Result<u64> {
        let bs = self.block_size();
        // The short last block goes the usual way.
        let end = end.min(self.size() / bs);
        if block >= end {
            return Ok(block);
        }
        let mut run_end = self.manifest.next_maybe_nonzero(block)?.min(end);
        if run_end > block && !self.parent_digests_trusted {
            // Without trusted digests the image itself must hold no data there.
            if !self.seek_data_supported {
                return Ok(block);
            }
            match sys::seek_data(&self.image, block * bs)
                .map_err(Error::io("cannot look for data in image", &self.path))?
            {
                sys::NextData::At(data) => run_end = run_end.min(data / bs),
                sys::NextData::None => {}
                sys::NextData::Unknown => {
                    self.seek_data_supported = false;
                    return Ok(block);
                }
            }
        }
        Ok(run_end.max(block))
    }

    /// Reads block `block` as the image holds it now (for partial updates).
    pub fn read_block(&mut self, block: u64, buf: &mut [u8]) -> Result<()> {
        let offset = block * self.block_size();
        self.read_image(buf, offset)
    }

    /// Reads `buf.len()` bytes of the image at `offset` (zeros past its end);
    /// a range in a hole of the image is zeros without reading it.
    fn read_image(&mut self, buf: &mut [u8], offset: u64) -> Result<()> {
        if self.is_hole(offset, buf.len() as u64)? {
            buf.fill(0);
            return Ok(());
        }
        let n = read_full_at(&self.image, buf, offset)
            .map_err(Error::io("cannot read image", &self.path))?;
        self.stats.bytes_read += n as u64;
        buf[n..].fill(0);
        Ok(())
    }

    /// Whether `offset..offset + len` of the image holds no data (a hole, or
    /// past its end), by `SEEK_DATA`, remembered while blocks come in order.
    fn is_hole(&mut self, offset: u64, len: u64) -> Result<bool> {
        if !self.seek_data_supported {
            return Ok(false);
        }
        if let Some((from, to)) = self.hole
            && from <= offset
            && offset < to
        {
            return Ok(offset + len <= to);
        }
        match sys::seek_data(&self.image, offset)
            .map_err(Error::io("cannot look for data in image", &self.path))?
        {
            sys::NextData::At(data) => {
                self.hole = Some((offset, data));
                Ok(offset + len <= data)
            }
            sys::NextData::None => {
                self.hole = Some((offset, u64::MAX));
                Ok(true)
            }
            sys::NextData::Unknown => {
                self.seek_data_supported = false;
                Ok(false)
            }
        }
    }

    /// Bytes at `offset..offset + len` were written (as data) and block
    /// `block` changed: keep the remembered hole right.
    fn wrote(&mut self, offset: u64, len: u64) {
        if let Some((from, to)) = self.hole
            && offset < to
            && offset + len > from
        {
            self.hole = (offset > from).then_some((from, offset));
        }
        self.mark_changed(offset, len);
    }

    fn mark_changed(&mut self, offset: u64, len: u64) {
        let bs = self.block_size();
        let blocks = self.blocks();
        if self.changed.limit() != blocks {
            self.changed.resize(blocks);
        }
        for block in offset / bs..(offset + len).div_ceil(bs).min(blocks) {
            self.changed.insert(block);
        }
    }

    /// The blocks this backup wrote or punched (so far).
    pub fn changed(&self) -> BlockSet {
        let mut set = self.changed.clone();
        set.resize(self.blocks());
        set
    }

    /// Whether block `block` was written or punched by this backup.
    pub fn is_changed(&self, block: u64) -> bool {
        self.changed.contains(block)
    }

    /// Length of block `block` (the last one may be short).
    pub fn block_len(&self, block: u64) -> usize {
        let bs = self.block_size();
        (self.size() - block * bs).min(bs) as usize
    }

    /// Starts full verification beside the patch (see [`super::verify`]): every
    /// block put from now on is read back and checked against its digest by a
    /// second thread, shortly after it is final. For sources that put every block
    /// once, in order; [`ImageWriter::end_verification`] says whether that held.
    pub fn verify_while_writing(&mut self) -> Result<()> {
        self.verifier = Some(InlineVerifier::start(&self.path, self.block_size())?);
        Ok(())
    }

    /// Waits for the verification [`ImageWriter::verify_while_writing`] started.
    /// `None` when none ran or it did not see every block exactly once, in order:
    /// then the image still needs a full verification.
    pub fn end_verification(&mut self) -> Result<Option<VerifyReport>> {
        self.release_verification(None);
        match self.verifier.take() {
            Some(v) => v.finish(self.blocks()),
            None => Ok(None),
        }
    }

    /// Makes block `block` equal to `data` whose digest the caller computed.
    pub fn put_block_with_digest(&mut self, block: u64, data: &[u8], digest: Digest) -> Result<()> {
        self.patch_block(block, data, digest, None)
    }

    /// Makes block `block` equal to `data`, which is `old` (the block as
    /// [`ImageWriter::read_block`] gave it) with only the bytes in `changed`
    /// replaced: the block is not read again and only the pages of `changed` are
    /// compared.
    pub fn put_block_over(
        &mut self,
        block: u64,
        data: &[u8],
        old: &[u8],
        changed: std::ops::Range<usize>,
    ) -> Result<()> {
        debug_assert_eq!(data.len(), old.len());
        let digest = Digest::of(data);
        self.patch_block(block, data, digest, Some((old, changed)))
    }

    fn patch_block(&mut self, block: u64, data: &[u8], digest: Digest, known: Known) -> Result<()> {
        // Sources that do not read through `read_sequential` (Ceph diffs) stop
        // here on SIGTERM/SIGINT.
        crate::interrupt::check()?;
        let offset = block * self.block_size();
        if self.layout.reach() > 0 {
            self.first_write = None;
        }
        self.patch(block, data, digest, known)?;
        if self.layout.reach() > 0 {
            self.write_carry(offset, data)?;
            let end = offset + data.len() as u64;
            self.streak = if self.streak.1 == offset {
                (self.streak.0, end)
            } else {
                (offset, end)
            };
        }
        // Only now is the block final on disk (or, when later runs may reach
        // back into it, once they no longer can), ready for the verifier to read.
        if self.verifier.is_some() {
            self.unverified.push_back((block, data.len(), digest));
            self.release_verification(Some(block));
        }
        Ok(())
    }

    /// Hands the verifier the blocks no run can reach back into any more once
    /// `current` is put (all of them for `None`).
    fn release_verification(&mut self, current: Option<u64>) {
        let back = self.layout.reach().div_ceil(self.block_size());
        while let Some(&(block, len, digest)) = self.unverified.front() {
            if current.is_some_and(|c| block + back > c) {
                break;
            }
            self.unverified.pop_front();
            if let Some(v) = &mut self.verifier {
                v.record(block, len, digest);
            }
        }
    }

    /// Looks up the parent's extent boundaries in `from..=to` not known yet
    /// (nothing of this backup is written there yet: every write is of a run
    /// whose surroundings were looked up first, or punches a hole, an edge
    /// anyway).
    fn load_bounds(&mut self, from: u64, to: u64) {
        for region in self.bounds.missing(from, to) {
            let (start, len) = Bounds::query(region, PAGE as u64);
            match super::fiemap::extents_in(&self.image, start, len, false) {
                Ok(extents) => self.bounds.add_region(region, &extents, PAGE as u64),
                Err(e) => {
                    tracing::debug!(
                        "No extent map of {} ({e}): writes end where changes end",
                        self.path.display()
                    );
                    self.bounds = Bounds::none();
                    return;
                }
            }
        }
    }

    /// Writes the part of a run's extension that falls in the block at
    /// `offset` (holding `data`, patched already), up to its first zero page or
    /// what the patch wrote: only unchanged pages are left there.
    fn write_carry(&mut self, offset: u64, data: &[u8]) -> Result<()> {
        let Some((from, to)) = self.carry else {
            return Ok(());
        };
        if from > offset {
            // Set by this block's own runs, for the next one.
            return Ok(());
        }
        self.carry = None;
        if from < offset {
            // The blocks in between were not handed over (a diff).
            return Ok(());
        }
        let block_end = offset + data.len() as u64;
        let end = to.min(block_end).min(self.first_write.unwrap_or(u64::MAX));
        if end <= offset {
            return Ok(());
        }
        let want = (end - offset) as usize;
        let n = nonzero_prefix(&data[..want]);
        if n == 0 {
            return Ok(());
        }
        if n == want && end == block_end && to > block_end {
            self.carry = Some((block_end, to));
        }
        self.stats.bytes_rewritten += n as u64;
        self.write_data(offset, &data[..n])
    }

    fn patch(&mut self, block: u64, data: &[u8], digest: Digest, known: Known) -> Result<()> {
        debug_assert_eq!(data.len(), self.block_len(block));
        if self.parent_digests_trusted && self.manifest.get(block)? == digest {
            self.stats.blocks_unchanged += 1;
            return Ok(());
        }
        let offset = block * self.block_size();
        if self.parent_digests_trusted && digest.is_zero() {
            // The manifest says the block holds data: no need to read it.
            self.stats.bytes_changed += data.len() as u64;
            self.zero_range(offset, data.len() as u64)?;
            return self.manifest.set(block, digest);
        }
        if !self.parent_digests_trusted {
            self.touched.insert(block);
        }
        if digest.is_zero() && known.is_none() && self.is_hole(offset, data.len() as u64)? {
            // A hole of the source over a hole of the image: nothing to read or do.
            return self.manifest.set(block, digest);
        }
        self.stats.blocks_compared += 1;
        let mut own = std::mem::take(&mut self.old);
        let (old, pages) = match known {
            // Outside `changed` the data is the old block: compare its pages only.
            Some((old, changed)) => (
                old,
                changed.start / PAGE * PAGE
                    ..changed
                        .end
                        .div_ceil(PAGE)
                        .saturating_mul(PAGE)
                        .min(data.len()),
            ),
            None => {
                own.fit(data.len());
                match self.read_image(&mut own, offset) {
                    Ok(()) => {}
                    Err(e) if is_unreadable_data(&e) => {
                        self.old = own;
                        return self.rewrite_unreadable(block, data, digest, &e);
                    }
                    Err(e) => {
                        self.old = own;
                        return Err(e);
                    }
                }
                (&own[..], 0..data.len())
            }
        };
        let result = if digest.is_zero() {
            if is_zero(old) {
                Ok(())
            } else {
                self.stats.bytes_changed += data.len() as u64;
                self.zero_range(offset, data.len() as u64)
            }
        } else {
            self.write_differing_pages(offset, data, old, pages)
        };
        self.old = own;
        result?;
        self.manifest.set(block, digest)
    }

    /// The image's block `block` (the parent's bytes) cannot be read: the disk
    /// under it is damaged (btrfs fails data whose checksum does not match with
    /// `EIO`). Its old content does not matter, the source's does: write all of
    /// it, so the new revision is good where the parent is not.
    fn rewrite_unreadable(
        &mut self,
        block: u64,
        data: &[u8],
        digest: Digest,
        error: &Error,
    ) -> Result<()> {
        let offset = block * self.block_size();
        tracing::warn!(
            "The block at offset {offset} of the parent's data is unreadable ({error}): writing it from the source"
        );
        self.stats.bytes_changed += data.len() as u64;
        if digest.is_zero() {
            self.zero_range(offset, data.len() as u64)?;
        } else {
            self.wrote(offset, data.len() as u64);
            self.image
                .write_all_at(data, offset)
                .map_err(Error::io("cannot write image", &self.path))?;
        }
        self.manifest.set(block, digest)
    }

    /// Writes the runs of pages of `pages` where block `new` (at `offset`)
    /// differs from `old`; zero runs are punched.
    fn write_differing_pages(
        &mut self,
        offset: u64,
        new: &[u8],
        old: &[u8],
        pages: std::ops::Range<usize>,
    ) -> Result<()> {
        let page = |i: usize| i * PAGE..((i + 1) * PAGE).min(new.len());
        let differs = |i: usize| new[page(i)] != old[page(i)];
        let (first, last) = (pages.start / PAGE, pages.end.div_ceil(PAGE));
        let mut i = first;
        while i < last {
            if !differs(i) {
                i += 1;
                continue;
            }
            let zero = is_zero(&new[page(i)]);
            let start = i;
            while i < last && differs(i) && is_zero(&new[page(i)]) == zero {
                i += 1;
            }
            let run = page(start).start..page(i - 1).end;
            self.stats.bytes_changed += run.len() as u64;
            if zero {
                self.zero_range(offset + run.start as u64, run.len() as u64)?;
            } else {
                // The next differing page of this block, where an extension stops.
                let next = (i..last).find(|&j| differs(j)).map(|j| page(j).start);
                self.write_run(offset, new, run, next)?;
            }
        }
        Ok(())
    }

    /// Writes `run` of block `data` (at `offset`), extended as [`Layout`] says
    /// over unchanged pages to an edge of the parent's extents or to the end of
    /// the previous write, never past `next` (the next differing page).
    fn write_run(
        &mut self,
        offset: u64,
        data: &[u8],
        run: std::ops::Range<usize>,
        next: Option<usize>,
    ) -> Result<()> {
        let block_end = offset + data.len() as u64;
        let (mut from, mut to) = (offset + run.start as u64, offset + run.end as u64);
        // Unchanged bytes of the blocks before, read back, to write first.
        let mut before: Option<Vec<u8>> = None;
        if self.layout.reach() > 0 {
            let reach = self.layout.reach();
            self.load_bounds(from.saturating_sub(reach), to.saturating_add(reach));
            // Back: to the parent's boundary or the previous write, if near.
            let bound = self
                .bounds
                .at_or_before(from)
                .filter(|&b| from - b <= self.layout.snap);
            let last = self
                .last_end
                .filter(|&e| e <= from && from - e <= self.layout.gap);
            // Never back over what this backup wrote already.
            let done = self.last_end.filter(|&e| e <= from);
            if let Some(edge) = bound
                .max(last)
                .map(|e| e.max(done.unwrap_or(0)))
                .filter(|&e| e < from)
            {
                let in_block = edge.max(offset);
                let zeros =
                    nonzero_suffix(&data[(in_block - offset) as usize..(from - offset) as usize]);
                let reached = in_block + ((from - in_block) as usize - zeros) as u64;
                if reached > in_block || edge >= offset {
                    // Stopped by a zero page (an edge itself), or all in this block.
                    self.stats.bytes_rewritten += from - reached;
                    from = reached;
                } else if self.streak.1 == offset && self.streak.0 <= edge {
                    // The blocks back to `edge` were put in this backup, so
                    // the image holds their new data: read it back. The page
                    // before `offset` may be zero (n = 0): then the block's
                    // start is an edge.
                    let mut held = std::mem::take(&mut self.scratch);
                    held.resize((offset - edge) as usize, 0);
                    if let Err(e) = self.read_image(&mut held, edge) {
                        self.scratch = held;
                        return Err(e);
                    }
                    let n = nonzero_suffix(&held);
                    self.stats.bytes_rewritten += from - (offset - n as u64);
                    if n > 0 {
                        held.drain(..held.len() - n);
                        before = Some(held);
                    } else {
                        self.scratch = held;
                    }
                    from = offset;
                }
            }
            // Forward: to the parent's boundary if near, not past the next change.
            let limit = next.map_or(u64::MAX, |n| offset + n as u64);
            if let Some(edge) = self
                .bounds
                .at_or_after(to)
                .filter(|&b| b > to && b - to <= self.layout.snap && b <= limit)
            {
                let in_block = edge.min(block_end);
                let n = nonzero_prefix(&data[(to - offset) as usize..(in_block - offset) as usize]);
                self.stats.bytes_rewritten += n as u64;
                if to + n as u64 == in_block && edge > block_end {
                    self.carry = Some((block_end, edge));
                }
                to += n as u64;
            }
        }
        match before {
            Some(mut buf) => {
                let start = offset - buf.len() as u64;
                buf.extend_from_slice(&data[(from - offset) as usize..(to - offset) as usize]);
                let result = self.write_data(start, &buf);
                self.scratch = buf;
                result
            }
            None => self.write_data(
                from,
                &data[(from - offset) as usize..(to - offset) as usize],
            ),
        }
    }

    /// Writes `bytes` (new data, no zero page) at `at`.
    fn write_data(&mut self, at: u64, bytes: &[u8]) -> Result<()> {
        self.first_write.get_or_insert(at);
        self.wrote(at, bytes.len() as u64);
        self.last_end = Some(at + bytes.len() as u64);
        self.image
            .write_all_at(bytes, at)
            .map_err(Error::io("cannot write image", &self.path))?;
        if crate::failpoint::active("garble-write") {
            // Test fault: the write lands with one byte flipped, as a bad
            // disk or filesystem bug would leave it; verification must notice.
            let byte = [!bytes[0]];
            self.image
                .write_all_at(&byte, at)
                .map_err(Error::io("cannot write image", &self.path))?;
        }
        Ok(())
    }

    /// Makes a range read as zeros: a hole where the filesystem can punch one.
    pub fn zero_range(&mut self, offset: u64, len: u64) -> Result<()> {
        self.mark_changed(offset, len);
        if self.punch_supported {
            match sys::punch_hole(&self.image, offset, len) {
                Ok(()) => return Ok(()),
                Err(e) if sys::is_punch_unsupported(&e) => self.punch_supported = false,
                Err(e) => return Err(Error::io("cannot punch hole in image", &self.path)(e)),
            }
        }
        self.wrote(offset, len);
        let mut at = offset;
        while at < offset + len {
            let n = (offset + len - at).min(ZEROS.len() as u64) as usize;
            self.image
                .write_all_at(&ZEROS[..n], at)
                .map_err(Error::io("cannot write image", &self.path))?;
            at += n as u64;
        }
        Ok(())
    }

    /// Flushes and fsyncs image and manifest; returns them for verification.
    ///
    /// Without trusted parent digests, blocks the source never handed over (a diff
    /// covers only changes) are hashed from the image here, so the manifest is
    /// complete either way.
    pub fn finish(mut self) -> Result<(File, Manifest, WriteStats)> {
        if !self.parent_digests_trusted {
            let mut buf = PageBuf::zeroed(self.block_size() as usize);
            let missing: Vec<u64> = self.touched.missing().collect();
            for block in missing {
                let len = self.block_len(block);
                self.read_block(block, &mut buf[..len])?;
                self.manifest.set(block, Digest::of(&buf[..len]))?;
            }
        }
        let started = std::time::Instant::now();
        self.image
            .sync_all()
            .map_err(Error::io("cannot sync image", &self.path))?;
        self.manifest.sync()?;
        tracing::debug!(
            "Synced the image and its manifest in {:.2} s",
            started.elapsed().as_secs_f64()
        );
        Ok((self.image, self.manifest, self.stats))
    }
}

/// Bytes at the start of `bytes` before its first zero page (pages counted
/// from its start).
fn nonzero_prefix(bytes: &[u8]) -> usize {
    bytes
        .chunks(PAGE)
        .position(is_zero)
        .map_or(bytes.len(), |i| i * PAGE)
}

/// Bytes at the end of `bytes` (a whole number of pages) after its last zero page.
fn nonzero_suffix(bytes: &[u8]) -> usize {
    let pages = bytes.len() / PAGE;
    (0..pages)
        .rev()
        .position(|i| is_zero(&bytes[i * PAGE..(i + 1) * PAGE]))
        .map_or(bytes.len(), |n| n * PAGE)
}

/// Whether reading the image failed because the data on disk is bad (`EIO`),
/// not for a reason that writing cannot fix.
fn is_unreadable_data(e: &Error) -> bool {
    e.io_source()
        .is_some_and(|source| source.raw_os_error() == Some(rustix::io::Errno::IO.raw_os_error()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn writer(dir: &Path, size: u64) -> ImageWriter {
        let path = dir.join("img");
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        let manifest = Manifest::create(&dir.join("img.sums"), 0).unwrap();
        let mut w = ImageWriter::new(file, &path, manifest, false);
        w.resize(size).unwrap();
        w
    }

    /// Holes of the source over holes of the image are neither read nor
    /// written; data lands, and later blocks after it are still known as holes.
    #[test]
    fn holes_over_holes_cost_nothing_and_the_changed_set_is_exact() {
        let dir = tempfile::tempdir().unwrap();
        let bs = 65536u64;
        let mut w = writer(dir.path(), 1000 * bs);
        let data = vec![9u8; bs as usize];
        for block in 0..1000 {
            if block == 10 || block == 500 {
                w.put_block(block, &data).unwrap();
            } else {
                w.put_zero_block(block).unwrap();
            }
        }
        let changed = w.changed();
        assert_eq!(changed.iter().collect::<Vec<_>>(), vec![10, 500]);
        assert_eq!(changed.len(), 2);
        assert!(changed.contains(500) && !changed.contains(501));
        let (file, mut manifest, stats) = w.finish().unwrap();
        assert_eq!(stats.bytes_changed, 2 * bs);
        // Where the filesystem reports holes (every one backy runs on does).
        let probe = File::create(dir.path().join("probe")).unwrap();
        probe.set_len(bs).unwrap();
        if matches!(sys::seek_data(&probe, 0), Ok(sys::NextData::None)) {
            assert_eq!(stats.blocks_compared, 2);
            assert_eq!(stats.bytes_read, 0);
        }
        let report = super::super::verify_against_manifest(
            &file,
            &dir.path().join("img"),
            &mut manifest,
            &mut |_| {},
        )
        .unwrap();
        assert!(report.bad_offsets.is_empty());
        let image = std::fs::read(dir.path().join("img")).unwrap();
        assert_eq!(&image[(10 * bs) as usize..(11 * bs) as usize], &data[..]);
        assert!(
            image[(11 * bs) as usize..(500 * bs) as usize]
                .iter()
                .all(|&b| b == 0)
        );
    }

    const P: u64 = PAGE as u64;

    /// A writer over a parent image of `pages` pages (blocks of 16 pages) whose
    /// data pages are `parent` (page -> byte; other pages are holes), synced so
    /// its extents are final; returns it with the parent's bytes.
    fn over_parent(
        dir: &Path,
        pages: u64,
        parent: &[(u64, u8)],
        layout: Layout,
    ) -> (ImageWriter, Vec<u8>) {
        let w = writer(dir, pages * P).with_layout(layout);
        let mut bytes = vec![0u8; (pages * P) as usize];
        for &(page, b) in parent {
            let at = (page * P) as usize;
            bytes[at..at + PAGE].fill(b);
        }
        // One write per run of data pages: one extent each (on ext4, XFS, btrfs).
        let mut page = 0;
        while page < pages {
            if parent.iter().all(|&(p, _)| p != page) {
                page += 1;
                continue;
            }
            let start = page;
            while page < pages && parent.iter().any(|&(p, _)| p == page) {
                page += 1;
            }
            let range = (start * P) as usize..(page * P) as usize;
            w.image.write_all_at(&bytes[range], start * P).unwrap();
        }
        w.image.sync_all().unwrap();
        (w, bytes)
    }

    /// Puts every block of `new`, finishes, and checks image and manifest.
    fn put_all(dir: &Path, mut w: ImageWriter, new: &[u8]) -> (WriteStats, Vec<u64>) {
        let bs = w.block_size() as usize;
        for (block, data) in new.chunks(bs).enumerate() {
            w.put_block(block as u64, data).unwrap();
        }
        let changed = w.changed().iter().collect();
        let (file, mut manifest, stats) = w.finish().unwrap();
        let report = super::super::verify_against_manifest(
            &file,
            &dir.join("img"),
            &mut manifest,
            &mut |_| {},
        )
        .unwrap();
        assert!(report.bad_offsets.is_empty());
        assert!(
            std::fs::read(dir.join("img")).unwrap() == new,
            "the image is not the new data"
        );
        (stats, changed)
    }

    fn pages(from: u64, to: u64, b: u8) -> Vec<(u64, u8)> {
        (from..to).map(|p| (p, b)).collect()
    }

    /// Whether FIEMAP works here (not on tmpfs): the layout needs extent maps.
    fn has_fiemap(dir: &Path) -> bool {
        let f = File::create(dir.join("probe")).unwrap();
        f.write_all_at(&[1], 0).unwrap();
        let supported = super::super::fiemap::extents(&f, true).is_ok();
        // A laptop's tmpfs /tmp may skip these; CI must run them.
        assert!(
            supported || std::env::var_os("CI").is_none_or(|v| v != "true"),
            "no FIEMAP in {}: the layout tests need a temp dir on ext4, XFS or btrfs",
            dir.display()
        );
        supported
    }

    fn layout(snap_pages: u64) -> Layout {
        Layout {
            snap: snap_pages * P,
            gap: snap_pages * P,
        }
    }

    /// A run near the end of a parent extent is extended to that end, into the
    /// next block too; the blocks it rewrote count as changed.
    #[test]
    fn a_run_is_extended_forward_to_the_parents_extent_end_across_blocks() {
        let dir = tempfile::tempdir().unwrap();
        if !has_fiemap(dir.path()) {
            return;
        }
        let (w, mut new) = over_parent(dir.path(), 64, &pages(0, 34, 7), layout(4));
        new[(30 * P) as usize..(31 * P) as usize].fill(9);
        let (stats, changed) = put_all(dir.path(), w, &new);
        assert_eq!(stats.bytes_changed, P);
        assert_eq!(stats.bytes_rewritten, 3 * P, "pages 31, 32 and 33");
        assert_eq!(changed, vec![1, 2]);

        // Writing only the differing pages, the same change touches block 1 alone.
        let dir = tempfile::tempdir().unwrap();
        let (w, mut new) = over_parent(dir.path(), 64, &pages(0, 34, 7), Layout::EXACT);
        new[(30 * P) as usize..(31 * P) as usize].fill(9);
        let (stats, changed) = put_all(dir.path(), w, &new);
        assert_eq!((stats.bytes_changed, stats.bytes_rewritten), (P, 0));
        assert_eq!(changed, vec![1]);
    }

    /// A run just after the start of a parent extent is extended back to it,
    /// into the block before (held from the new data).
    #[test]
    fn a_run_is_extended_back_to_the_parents_extent_start_across_blocks() {
        let dir = tempfile::tempdir().unwrap();
        if !has_fiemap(dir.path()) {
            return;
        }
        let (w, mut new) = over_parent(dir.path(), 64, &pages(14, 48, 7), layout(4));
        new[(17 * P) as usize..(18 * P) as usize].fill(9);
        let (stats, changed) = put_all(dir.path(), w, &new);
        assert_eq!(stats.bytes_rewritten, 3 * P, "pages 14, 15 and 16");
        assert_eq!(changed, vec![0, 1]);
    }

    /// An extension stops at a zero page (it stays as it was, a hole or zeros)
    /// and before the next change; two nearby runs become one write.
    #[test]
    fn extensions_stop_at_zero_pages_and_join_nearby_runs() {
        let dir = tempfile::tempdir().unwrap();
        if !has_fiemap(dir.path()) {
            return;
        }
        // The parent holds written zeros at page 35 (as backy 2.1 wrote them).
        let mut parent = pages(0, 40, 7);
        parent[35].1 = 0;
        let (w, mut new) = over_parent(dir.path(), 64, &parent, layout(8));
        new[(33 * P) as usize..(34 * P) as usize].fill(9);
        let (stats, _) = put_all(dir.path(), w, &new);
        assert_eq!(stats.bytes_rewritten, P, "page 34 only");

        let dir = tempfile::tempdir().unwrap();
        let (w, mut new) = over_parent(dir.path(), 64, &pages(0, 64, 7), layout(4));
        for page in [18, 21] {
            new[(page * P) as usize..((page + 1) * P) as usize].fill(9);
        }
        let (stats, changed) = put_all(dir.path(), w, &new);
        assert_eq!(stats.bytes_changed, 2 * P);
        assert_eq!(
            stats.bytes_rewritten,
            2 * P,
            "pages 19 and 20 join the two runs"
        );
        assert_eq!(changed, vec![1]);
    }

    /// Inline verification is handed each block only once no later run can
    /// reach back into it, and still sees every block in order.
    #[test]
    fn inline_verification_sees_every_block_after_extensions() {
        let dir = tempfile::tempdir().unwrap();
        if !has_fiemap(dir.path()) {
            return;
        }
        let (mut w, mut new) = over_parent(dir.path(), 64, &pages(14, 48, 7), layout(4));
        w.verify_while_writing().unwrap();
        new[(17 * P) as usize..(18 * P) as usize].fill(9);
        let bs = w.block_size() as usize;
        for (block, data) in new.chunks(bs).enumerate() {
            w.put_block(block as u64, data).unwrap();
        }
        let report = w
            .end_verification()
            .unwrap()
            .expect("verified every block in order");
        assert!(report.bad_offsets.is_empty());
    }

    /// A hole of the source over a sparse image costs a step per run, not per
    /// block, verified inline all the same; data in the range is still zeroed,
    /// and a trusted second pass over the same holes changes nothing.
    #[test]
    fn zero_runs_over_a_large_sparse_image() {
        let dir = tempfile::tempdir().unwrap();
        let bs = 65536u64;
        let blocks = 1u64 << 24; // 1 TiB
        let path = dir.path().join("img");
        let mut w = writer(dir.path(), blocks * bs + 100);
        w.verify_while_writing().unwrap();
        w.image
            .write_all_at(&[7u8; 10], 5_000_000 * bs + 3)
            .unwrap();
        let data = vec![9u8; bs as usize];
        let started = std::time::Instant::now();
        w.put_block(0, &data).unwrap();
        w.put_zero_blocks(1, blocks - 1).unwrap();
        w.put_block(blocks - 1, &data).unwrap();
        w.put_zero_blocks(blocks, blocks + 1).unwrap();
        let report = w
            .end_verification()
            .unwrap()
            .expect("a full inline verification");
        assert!(report.bad_offsets.is_empty(), "{:?}", report.bad_offsets);
        assert_eq!(report.blocks, blocks + 1);
        assert!(w.is_changed(5_000_000));
        let (_, _, stats) = w.finish().unwrap();
        assert_eq!(stats.bytes_changed, 2 * bs + bs);
        assert!(started.elapsed().as_secs() < 20, "{:?}", started.elapsed());
        // Again with the manifest trusted, as the next backup would.
        let sums = dir.path().join("img.sums");
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        let mut w = ImageWriter::new(file, &path, Manifest::open(&sums, true).unwrap(), true);
        w.verify_while_writing().unwrap();
        w.put_block(0, &data).unwrap();
        w.put_zero_blocks(1, blocks - 1).unwrap();
        w.put_block(blocks - 1, &data).unwrap();
        w.put_zero_blocks(blocks, blocks + 1).unwrap();
        let report = w
            .end_verification()
            .unwrap()
            .expect("a full inline verification");
        assert!(report.bad_offsets.is_empty());
        let (_, _, stats) = w.finish().unwrap();
        assert_eq!(stats.bytes_changed, 0);
        assert_eq!(stats.blocks_unchanged, blocks + 1);
        let image = File::open(&path).unwrap();
        let mut buf = [1u8; 10];
        image.read_exact_at(&mut buf, 5_000_000 * bs + 3).unwrap();
        assert_eq!(buf, [0u8; 10]);
    }

    /// A zero block over data in the image is still punched.
    #[test]
    fn a_zero_block_over_data_is_punched() {
        let dir = tempfile::tempdir().unwrap();
        let bs = 65536u64;
        let path = dir.path().join("img");
        let mut w = writer(dir.path(), 4 * bs);
        w.image.write_all_at(&[1u8; 100], 2 * bs + 5).unwrap();
        for block in 0..4 {
            w.put_zero_block(block).unwrap();
        }
        assert_eq!(w.changed().iter().collect::<Vec<_>>(), vec![2]);
        w.finish().unwrap();
        assert!(std::fs::read(&path).unwrap().iter().all(|&b| b == 0));
    }
}
