//! The sending side: which revisions go, and for each the blocks and pages
//! that differ from the one before it (see [`super::stream`] for the format).
//!
//! The manifests decide which blocks changed without reading any image: a
//! block whose digest equals the parent's is not read. Inside a changed
//! block, pages the child shares with the parent on disk (the same physical
//! location, from FIEMAP) are unchanged without reading either; a page in a
//! hole of the child is zero without reading it. Only the remaining pages
//! are read (the child's, and the parent's where it has data) and compared,
//! so a revision a backup made costs about twice its changed bytes in reads.
//! Where FIEMAP says nothing (tmpfs, compressed extents), both blocks are read.

use std::collections::VecDeque;
use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::sync::mpsc::{SyncSender, sync_channel};

use crate::buf::PageBuf;
use crate::error::{Error, Result};
use crate::image::fiemap;
use crate::image::reader::{Chunk, read_full_at, read_sequential};
use crate::image::sums::{self, Digest, Manifest};
use crate::job::Job;
use crate::revision::{Revision, Trust};
use crate::sys;

use super::stream::{self, BaseRef, Begin, BlockRecord, Record, RevisionHeader, StreamWriter};

/// Bytes per page inside a block.
const PAGE: u64 = stream::PAGE as u64;

/// What `send` is about to send.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The revision the receiver must hold, if any.
    pub base: Option<Revision>,
    /// The revisions to send, oldest first.
    pub revisions: Vec<Revision>,
}

/// What a send did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SendStats {
    /// Revisions sent.
    pub revisions: u64,
    /// Changed blocks sent as pages.
    pub blocks: u64,
    /// Bytes of page data sent.
    pub data_bytes: u64,
    /// Bytes sent as zero runs and zero blocks.
    pub zero_bytes: u64,
    /// Bytes read from images (the real reads; holes and shared pages are not read).
    pub bytes_read: u64,
    /// Bytes of the stream.
    pub stream_bytes: u64,
}

/// The revisions from `base` (exclusive; `None`: from the first) to
/// `revision` (inclusive; `None`: the newest), oldest first.
pub fn plan(job: &Job, revision: Option<&str>, base: Option<&str>) -> Result<Plan> {
    let last = match revision {
        Some(spec) => job.resolve(spec)?.clone(),
        None => job
            .newest_complete()
            .cloned()
            .ok_or_else(|| Error::NoSuchRevision {
                spec: "latest".into(),
            })?,
    };
    let base = match base.filter(|b| !b.is_empty()) {
        Some(spec) => Some(job.resolve(spec)?.clone()),
        None => None,
    };
    let complete: Vec<&Revision> = job.revisions().iter().filter(|r| r.is_complete()).collect();
    let position = |id: &str| complete.iter().position(|r| r.id == id);
    let end = position(&last.id).ok_or_else(|| Error::Incomplete {
        id: last.id.clone(),
    })?;
    let start = match &base {
        Some(b) => {
            let at = position(&b.id).ok_or_else(|| Error::Incomplete { id: b.id.clone() })?;
            if at > end {
                return Err(Error::SendBaseNotOlder {
                    base: b.id.clone(),
                    revision: last.id.clone(),
                });
            }
            at + 1
        }
        None => 0,
    };
    let revisions: Vec<Revision> = complete[start..=end].iter().map(|r| (*r).clone()).collect();
    for rev in base.iter().chain(&revisions) {
        check_sendable(job, rev)?;
    }
    Ok(Plan {
        base,
        revisions: if start > end { Vec::new() } else { revisions },
    })
}

/// Refuses a revision whose manifest cannot stand for its image.
fn check_sendable(job: &Job, rev: &Revision) -> Result<()> {
    let unusable = |reason: String| Error::SendUnusable {
        id: rev.id.clone(),
        reason,
    };
    if rev.trust == Trust::Distrusted {
        return Err(unusable(
            "it is distrusted, so its checksum manifest may not describe its image".into(),
        ));
    }
    let path = job.sums_path(&rev.id);
    if !path.exists() {
        return Err(unusable(
            "it has no checksum manifest (made by backy 2.1, or the .sums file is gone)".into(),
        ));
    }
    let manifest = Manifest::open(&path, false).map_err(|e| unusable(e.to_string()))?;
    let size = std::fs::metadata(job.image_path(&rev.id))
        .map_err(Error::io("cannot stat", job.image_path(&rev.id)))?
        .len();
    if manifest.block_size() != sums::BLOCK_SIZE || manifest.image_size() != size {
        return Err(unusable(format!(
            "its checksum manifest (block size {}, image size {}) does not fit its image of {size} bytes",
            manifest.block_size(),
            manifest.image_size()
        )));
    }
    Ok(())
}

/// The content digest of a revision's manifest.
pub fn manifest_digest(job: &Job, id: &str) -> Result<Digest> {
    Manifest::open(&job.sums_path(id), false)?.content_digest()
}

/// Writes the stream for `plan` to `out`. `config` is the job's `config`
/// text, for a receiver that has none.
///
/// The records are made on a second thread (manifests, FIEMAP, reads and
/// diffs) while this one encodes, chains the check over and writes them, so
/// reading and hashing overlap: a whole send of the aged XFS revision of
/// `benches/readers.sh` took 1.02 s on one thread, against 0.67 s for `cat`.
pub fn send(job: &Job, plan: &Plan, config: Option<String>, out: impl Write) -> Result<SendStats> {
    let io = |source: std::io::Error| Error::Output { source };
    let mut writer = StreamWriter::new(out).map_err(io)?;
    let base = match &plan.base {
        Some(b) => Some(BaseRef {
            id: b.id.clone(),
            manifest: manifest_digest(job, &b.id)?.to_hex(),
        }),
        None => None,
    };
    writer
        .write(&Record::Begin(Begin {
            base,
            config,
            revisions: plan.revisions.iter().map(|r| r.id.clone()).collect(),
        }))
        .map_err(io)?;
    let (tx, rx) = sync_channel::<Record>(RECORDS_QUEUED);
    let mut stats = std::thread::scope(|scope| {
        let producer = scope.spawn(move || make_records(job, plan, &tx));
        // The first write error ends the loop, which drops `rx`, so the
        // producer's next record fails and it ends too.
        let written = rx
            .into_iter()
            .try_for_each(|record| writer.write(&record))
            .map_err(io);
        let made = producer
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        written.and(made)
    })?;
    writer
        .write(&Record::End {
            revisions: stats.revisions,
        })
        .map_err(io)?;
    stats.stream_bytes = writer.written();
    writer.finish().map_err(io)?;
    Ok(stats)
}

/// Records queued between the thread that makes them and the one that writes.
const RECORDS_QUEUED: usize = 64;

/// Where records go: to the thread that writes them.
type Out = SyncSender<Record>;

/// Hands `record` to the writer; its end gone means a write failed there, and
/// that error is the one reported.
fn emit(out: &Out, record: Record) -> Result<()> {
    out.send(record).map_err(|_| Error::Output {
        source: std::io::Error::other("the stream writer stopped"),
    })
}

/// Every revision's records, in order; the stats of what was sent.
fn make_records(job: &Job, plan: &Plan, out: &Out) -> Result<SendStats> {
    let mut stats = SendStats::default();
    let mut parent = plan.base.as_ref().map(|r| r.id.clone());
    for rev in &plan.revisions {
        crate::interrupt::check()?;
        send_revision(job, rev, parent.as_deref(), out, &mut stats)?;
        stats.revisions += 1;
        parent = Some(rev.id.clone());
    }
    Ok(stats)
}

/// One image being read, with its manifest.
struct Side {
    image: File,
    path: std::path::PathBuf,
    manifest: Manifest,
    size: u64,
    /// The extents around the blocks being planned.
    window: std::cell::RefCell<ExtentWindow>,
}

impl Side {
    fn open(job: &Job, id: &str) -> Result<Side> {
        let path = job.image_path(id);
        let image = File::open(&path).map_err(Error::io("cannot open", &path))?;
        let manifest = Manifest::open(&job.sums_path(id), false)?;
        let size = manifest.image_size();
        Ok(Side {
            image,
            path,
            manifest,
            size,
            window: std::cell::RefCell::new(ExtentWindow {
                lo: 0,
                hi: 0,
                extents: Some(Vec::new()),
            }),
        })
    }

    /// The location of each page of `len` bytes at `offset` (see
    /// [`page_locations`]), from extents fetched [`EXTENTS_AHEAD`] at a time.
    fn page_locations(&self, offset: u64, len: u64) -> Vec<Loc> {
        let mut w = self.window.borrow_mut();
        if offset < w.lo || offset + len > w.hi {
            let hi = offset + len.max(EXTENTS_AHEAD);
            *w = ExtentWindow {
                lo: offset,
                hi,
                extents: fiemap::extents_in(&self.image, offset, hi - offset, false).ok(),
            };
        }
        page_locations(w.extents.as_deref(), offset, len)
    }

    fn block_len(&self, block: u64) -> u64 {
        let bs = self.manifest.block_size();
        self.size.saturating_sub(block * bs).min(bs)
    }
}

fn send_revision(
    job: &Job,
    rev: &Revision,
    parent: Option<&str>,
    out: &Out,
    stats: &mut SendStats,
) -> Result<()> {
    let mut child = Side::open(job, &rev.id)?;
    let mut parent_side = parent.map(|p| Side::open(job, p)).transpose()?;
    let bs = child.manifest.block_size();
    emit(
        out,
        Record::Revision(RevisionHeader {
            id: rev.id.clone(),
            parent: parent.map(String::from),
            rev: rev.to_yaml(),
            image_size: child.size,
            block_size: bs,
            manifest: child.manifest.content_digest()?.to_hex(),
        }),
    )?;
    if parent_side.is_none() {
        let counts = send_whole(&mut child, out, stats)?;
        return end_revision(out, &counts);
    }
    let parent_blocks = parent_side.as_ref().map_or(0, |p| p.manifest.blocks());
    let mut zero_run: Option<(u64, u64)> = None;
    let mut counts = Counts::default();
    // Blocks planned and asked for (read ahead), not yet read and written.
    let mut window: VecDeque<BlockPlan> = VecDeque::new();
    for block in 0..child.manifest.blocks() {
        let digest = child.manifest.get(block)?;
        let before = match &mut parent_side {
            Some(p) if block < parent_blocks => p.manifest.get(block)?,
            _ => Digest::ZERO,
        };
        if digest == before {
            continue;
        }
        if digest.is_zero() {
            match &mut zero_run {
                Some((first, count)) if *first + *count == block => *count += 1,
                _ => {
                    drain(
                        &mut window,
                        0,
                        &child,
                        parent_side.as_ref(),
                        out,
                        stats,
                        &mut counts,
                    )?;
                    flush_zeros(&mut zero_run, out, &mut counts)?;
                    zero_run = Some((block, 1));
                }
            }
            stats.zero_bytes += child.block_len(block);
            continue;
        }
        if zero_run.is_some() {
            drain(
                &mut window,
                0,
                &child,
                parent_side.as_ref(),
                out,
                stats,
                &mut counts,
            )?;
            flush_zeros(&mut zero_run, out, &mut counts)?;
        }
        if block % 256 == 0 {
            crate::interrupt::check()?;
        }
        let parent = parent_side.as_ref().filter(|_| !before.is_zero());
        window.push_back(plan_block(&child, parent, block, digest));
        drain(
            &mut window,
            WINDOW,
            &child,
            parent_side.as_ref(),
            out,
            stats,
            &mut counts,
        )?;
    }
    drain(
        &mut window,
        0,
        &child,
        parent_side.as_ref(),
        out,
        stats,
        &mut counts,
    )?;
    flush_zeros(&mut zero_run, out, &mut counts)?;
    end_revision(out, &counts)
}

/// A revision without a parent, whole: every block whose digest is not zero,
/// with its pages that are not zero. The image is read in order by
/// [`read_sequential`] (large reads, the kernel's readahead), which is what
/// a plan per block with FIEMAP and `POSIX_FADV_WILLNEED` cannot match when
/// every block is read: 1.3 s for the aged 1 GiB XFS revision of
/// `benches/readers.sh`, against 0.67 s for `cat` of it. Holes read as zeros
/// and are not sent, as the plan does.
fn send_whole(child: &mut Side, out: &Out, stats: &mut SendStats) -> Result<Counts> {
    let bs = child.manifest.block_size();
    let page = PAGE as usize;
    let mut counts = Counts::default();
    let (image, path, size) = (&child.image, &child.path, child.size);
    let manifest = &mut child.manifest;
    let mut send = |record: BlockRecord, stats: &mut SendStats| {
        counts.blocks += 1;
        stats.blocks += 1;
        emit(out, Record::Block(record))
    };
    read_sequential(image, path, size, bs, |chunk| {
        crate::interrupt::check()?;
        match chunk {
            Chunk::Data { offset, buf } => {
                stats.bytes_read += buf.len() as u64;
                for (i, bytes) in buf.chunks(bs as usize).enumerate() {
                    let block = offset / bs + i as u64;
                    let digest = manifest.get(block)?;
                    if digest.is_zero() {
                        continue;
                    }
                    let mut record = BlockRecord::new(block, digest);
                    for (p, new) in bytes.chunks(page).enumerate() {
                        if !sums::is_zero(new) {
                            record.push((p * page) as u32, new.len() as u32, Some(new));
                            stats.data_bytes += new.len() as u64;
                        }
                    }
                    send(record, stats)?;
                }
            }
            // A block in a hole whose digest is not zero goes without pages,
            // as the plan sends it; the receiver's check of the digest fails.
            Chunk::Hole { offset, len } => {
                for block in offset / bs..(offset + len).div_ceil(bs) {
                    let digest = manifest.get(block)?;
                    if !digest.is_zero() {
                        send(BlockRecord::new(block, digest), stats)?;
                    }
                }
            }
        }
        Ok(())
    })?;
    Ok(counts)
}

/// Ends the current revision's records.
fn end_revision(out: &Out, counts: &Counts) -> Result<()> {
    emit(
        out,
        Record::RevisionEnd {
            blocks: counts.blocks,
            zero_blocks: counts.zero_blocks,
        },
    )
}

/// Changed blocks planned and read ahead before the first of them is read:
/// enough requests in flight to keep a disk busy, at most 16 MiB of reads.
const WINDOW: usize = 128;

/// Records written for the current revision.
#[derive(Default)]
struct Counts {
    blocks: u64,
    zero_blocks: u64,
}

/// Reads, diffs and writes planned blocks until at most `keep` are left.
fn drain(
    window: &mut VecDeque<BlockPlan>,
    keep: usize,
    child: &Side,
    parent: Option<&Side>,
    out: &Out,
    stats: &mut SendStats,
    counts: &mut Counts,
) -> Result<()> {
    while window.len() > keep {
        let Some(plan) = window.pop_front() else {
            break;
        };
        let parent = parent.filter(|_| plan.parent_len > 0);
        let record = diff_block(child, parent, &plan, stats)?;
        emit(out, Record::Block(record))?;
        counts.blocks += 1;
        stats.blocks += 1;
    }
    Ok(())
}

/// Writes the pending run of zero blocks, if any.
fn flush_zeros(run: &mut Option<(u64, u64)>, out: &Out, counts: &mut Counts) -> Result<()> {
    if let Some((first, count)) = run.take() {
        emit(out, Record::Zero { first, count })?;
        counts.zero_blocks += count;
    }
    Ok(())
}

/// Where a page of an image is, as far as FIEMAP tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Loc {
    /// No data: reads as zeros.
    Hole,
    /// Stored at this physical address (shared pages have the same one).
    At(u64),
    /// Data whose place is not known: must be read.
    Unknown,
}

/// Bytes of an image whose extents one FIEMAP call fetches for
/// [`Side::page_locations`]: one call per block cost more than the diff.
const EXTENTS_AHEAD: u64 = 8 << 20;

/// The extents of `lo..hi` of an image, as FIEMAP gave them (`None`: it is
/// not supported).
struct ExtentWindow {
    lo: u64,
    hi: u64,
    extents: Option<Vec<fiemap::Extent>>,
}

/// The location of each page of `len` bytes at `offset`, from the extents
/// that overlap it (in file order, as FIEMAP gives them); all `Unknown`
/// without extents (FIEMAP not supported).
fn page_locations(extents: Option<&[fiemap::Extent]>, offset: u64, len: u64) -> Vec<Loc> {
    let pages = len.div_ceil(PAGE) as usize;
    let Some(extents) = extents else {
        return vec![Loc::Unknown; pages];
    };
    let mut locs = vec![Loc::Hole; pages];
    let first = extents.partition_point(|e| e.end() <= offset);
    for e in extents[first..]
        .iter()
        .take_while(|e| e.logical < offset + len)
    {
        let located = e.has_location()
            && !e.is_encoded()
            && e.flags & (fiemap::flags::UNWRITTEN | fiemap::flags::DATA_ENCRYPTED) == 0;
        for (i, loc) in locs.iter_mut().enumerate() {
            let start = offset + i as u64 * PAGE;
            let end = (start + PAGE).min(offset + len);
            if e.end() <= start || e.logical >= end {
                continue;
            }
            let whole = e.logical <= start && end <= e.end();
            *loc = if located && whole {
                Loc::At(e.physical + (start - e.logical))
            } else {
                Loc::Unknown
            };
        }
    }
    locs
}

/// What must be read of one changed block, decided from FIEMAP alone.
struct BlockPlan {
    block: u64,
    digest: Digest,
    /// The child's block length.
    len: u64,
    /// The parent's block length; 0 when its block is all zeros.
    parent_len: u64,
    child_locs: Vec<Loc>,
    parent_locs: Vec<Loc>,
}

impl BlockPlan {
    fn pages(&self) -> usize {
        self.len.div_ceil(PAGE) as usize
    }

    fn parent_loc(&self, i: usize) -> Loc {
        self.parent_locs.get(i).copied().unwrap_or(Loc::Hole)
    }

    /// Whether page `i` is the same in both without reading: holes in
    /// both, or the same blocks on disk.
    fn same(&self, i: usize) -> bool {
        match (self.child_locs[i], self.parent_loc(i)) {
            (Loc::Hole, Loc::Hole) => true,
            (Loc::At(a), Loc::At(b)) => a == b,
            _ => false,
        }
    }

    /// Pages of the child to read: those not known to be the same, with data.
    fn need_child(&self) -> Vec<bool> {
        (0..self.pages())
            .map(|i| !self.same(i) && self.child_locs[i] != Loc::Hole)
            .collect()
    }

    /// Pages of the parent to read: those the child's are compared with.
    fn need_parent(&self) -> Vec<bool> {
        let child = self.need_child();
        (0..self.pages())
            .map(|i| child[i] && self.parent_loc(i) != Loc::Hole)
            .collect()
    }
}

/// Plans block `block` of `child` against `parent` (`None`: the parent's
/// block is all zeros) and asks the kernel to start reading what the plan
/// needs, so the reads are in flight before [`diff_block`] waits for them.
fn plan_block(child: &Side, parent: Option<&Side>, block: u64, digest: Digest) -> BlockPlan {
    let offset = block * child.manifest.block_size();
    let len = child.block_len(block);
    let parent_len = parent.map_or(0, |p| p.block_len(block));
    let plan = BlockPlan {
        block,
        digest,
        len,
        parent_len,
        child_locs: child.page_locations(offset, len),
        parent_locs: match parent {
            Some(p) if parent_len > 0 => p.page_locations(offset, parent_len),
            _ => Vec::new(),
        },
    };
    for_each_run(&plan.need_child(), len, |range| {
        sys::prefetch(
            &child.image,
            offset + range.start as u64,
            range.len() as u64,
        )
    });
    if let Some(p) = parent {
        for_each_run(&plan.need_parent(), parent_len.min(len), |range| {
            sys::prefetch(&p.image, offset + range.start as u64, range.len() as u64)
        });
    }
    plan
}

/// The pages of a planned block that differ between child and parent, as one record.
fn diff_block(
    child: &Side,
    parent: Option<&Side>,
    plan: &BlockPlan,
    stats: &mut SendStats,
) -> Result<BlockRecord> {
    let offset = plan.block * child.manifest.block_size();
    let len = plan.len as usize;
    let mut child_buf = PageBuf::zeroed(len);
    read_pages(child, offset, &mut child_buf, &plan.need_child(), stats)?;
    let mut parent_buf = PageBuf::zeroed(len);
    if let Some(p) = parent {
        let upto = plan.parent_len.min(plan.len) as usize;
        read_pages(
            p,
            offset,
            &mut parent_buf[..upto],
            &plan.need_parent(),
            stats,
        )?;
    }
    let mut record = BlockRecord::new(plan.block, plan.digest);
    for (i, loc) in plan.child_locs.iter().enumerate() {
        if plan.same(i) {
            continue;
        }
        let range = i * PAGE as usize..((i + 1) * PAGE as usize).min(len);
        let page_len = range.len() as u32;
        let new = &child_buf[range.clone()];
        let at = (i as u64 * PAGE) as u32;
        if *loc == Loc::Hole {
            // The parent has data here (else `same`): the page became zeros.
            record.push(at, page_len, None);
            stats.zero_bytes += u64::from(page_len);
        } else if new != &parent_buf[range] {
            if sums::is_zero(new) {
                record.push(at, page_len, None);
                stats.zero_bytes += u64::from(page_len);
            } else {
                record.push(at, page_len, Some(new));
                stats.data_bytes += u64::from(page_len);
            }
        }
    }
    Ok(record)
}

/// Calls `f` with the byte range (inside a block of `len` bytes) of each run
/// of consecutive pages marked in `need`.
fn for_each_run(need: &[bool], len: u64, mut f: impl FnMut(std::ops::Range<usize>)) {
    let page = PAGE as usize;
    let len = len as usize;
    let mut i = 0;
    while i < need.len() {
        if !need[i] || i * page >= len {
            i += 1;
            continue;
        }
        let mut j = i;
        while j < need.len() && need[j] {
            j += 1;
        }
        f(i * page..(j * page).min(len));
        i = j;
    }
}

/// Reads the pages marked in `need` into `buf` (the block at `offset`), one
/// read per run of consecutive pages; counts the bytes read.
fn read_pages(
    side: &Side,
    offset: u64,
    buf: &mut [u8],
    need: &[bool],
    stats: &mut SendStats,
) -> Result<()> {
    let mut result = Ok(());
    for_each_run(need, buf.len() as u64, |range| {
        if result.is_err() {
            return;
        }
        let at = offset + range.start as u64;
        result = read_full_at(&side.image, &mut buf[range], at)
            .map(|n| stats.bytes_read += n as u64)
            .map_err(Error::io("cannot read image", &side.path));
    });
    result
}

/// The job's `config` text, if it has one.
pub fn config_text(dir: &Path) -> Result<Option<String>> {
    let path = dir.join("config");
    match std::fs::read_to_string(&path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io("cannot read job config", &path)(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fiemap::Extent;

    #[test]
    fn page_locations_come_from_the_extents_overlapping_the_block() {
        // Extents at 0..8 KiB and 16..20 KiB of a window, a hole between.
        let extents = [
            Extent::plain(0, 1 << 20, 8192),
            Extent::plain(16384, 2 << 20, 4096),
        ];
        let locs = page_locations(Some(&extents), 4096, 16384);
        assert_eq!(
            locs,
            vec![
                Loc::At((1 << 20) + 4096),
                Loc::Hole,
                Loc::Hole,
                Loc::At(2 << 20)
            ]
        );
        // A block past every extent is a hole; no extents at all: unknown.
        assert_eq!(page_locations(Some(&extents), 65536, 4096), vec![Loc::Hole]);
        assert_eq!(page_locations(None, 0, 8192), vec![Loc::Unknown; 2]);
    }

    #[test]
    fn a_page_an_extent_covers_only_in_part_must_be_read() {
        let extents = [Extent::plain(0, 1 << 20, 6144)];
        assert_eq!(
            page_locations(Some(&extents), 0, 8192),
            vec![Loc::At(1 << 20), Loc::Unknown]
        );
    }
}
