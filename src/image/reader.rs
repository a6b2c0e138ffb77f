//! Reading a file or block device once, sequentially, skipping holes.
//!
//! A reader thread fills 4 MiB buffers while the caller hashes and writes the
//! previous ones, so I/O and CPU overlap on machines with two cores or more.
//! Buffers are recycled through a return channel, so memory stays at a handful of
//! chunks whatever the image size.
//!
//! The reads stay sequential for the kernel's readahead, which does better than
//! anything asked for on top (`POSIX_FADV_WILLNEED` fills the page cache with
//! single pages, and cost twice the system time for no gain): holes shorter than
//! [`MIN_HOLE`] (for a copy, [`COPY_MIN_HOLE`]) are read as the zeros they are
//! instead of jumped over, since an aged revision is full of small ones and every
//! jump restarts the readahead.
//! Measured on the 100-generation XFS history of `benches/aging.sh`, cold, median
//! of 5: 0.80 s with both, 0.68 s without, against 0.60 s for `dd bs=4M`.
//!
//! On btrfs one sequential reader is not enough: its buffered reads of a file in
//! thousands of extents keep about one request in flight, and the newest of
//! `benches/readers.sh`'s 100 generations read with `cat` in up to 1.7x the time
//! of a fresh copy of it. There `BTRFS_READERS` threads each read every n-th
//! chunk (still through the page cache), and the chunks are taken back in order:
//! `restore -r 0 -` of that revision 0.83 -> 0.64 s, `verify` 0.95 -> 0.74 s,
//! `cat` of the fresh copy 0.62 s (cold, alternating, medians of 5). A plain C
//! loop of 4 MiB reads on that revision: one thread 0.74 s, two 0.70, three
//! 0.63, four 0.62, six 0.58; on a fresh revision one 0.60 s, four 0.53. On XFS
//! the same loop goes the other way (one 0.47 s, two 0.54, four 0.58 on its aged
//! revision), as does `O_DIRECT` with four threads (0.64 s), so everywhere else
//! one thread reads.

use std::fs::File;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::sync::mpsc::{Receiver, sync_channel};

use crate::buf::PageBuf;
use crate::error::{Error, Result};
use crate::image::sums::Digest;
use crate::sys::{self, NextData};

/// Bytes per chunk handed to the consumer (a multiple of every block size we use).
pub const CHUNK: u64 = 4 * 1024 * 1024;
const IN_FLIGHT: usize = 3;
/// Reader threads on btrfs (see the module).
const BTRFS_READERS: usize = 4;
/// Holes shorter than this are read rather than skipped (see the module).
pub const MIN_HOLE: u64 = 1024 * 1024;
/// The same for [`read_for_copy`]: a reader that copies the image out reads
/// holes up to 8 MiB as zeros, as `cat` does. A fresh revision of a source with
/// 15 % of its 1 MiB regions empty (about 150 holes of exactly 1 MiB, each a jump
/// that restarted the kernel's readahead) restored in 0.65 s with 1 MiB and in
/// 0.59 s with this, `cat` 0.46 s (cold, XFS, alternating, medians of 5). The
/// other readers keep [`MIN_HOLE`]: send counts the holes it reads through as
/// bytes read, and with 8 MiB for every reader `tests/replicate.rs` found it
/// reading more than twice what the backups changed.
pub const COPY_MIN_HOLE: u64 = 8 * 1024 * 1024;
/// How far [`HoleMap::next_data`] maps ahead when it joins data across small
/// holes: whole chunks, so reads stay aligned to them.
const LOOKAHEAD: u64 = 8 * CHUNK;
/// Buffers in circulation: those in flight, the two the consumer may hold (the
/// chunk it looks ahead at and the one it consumes) and the one being filled.
/// They are allocated once and reused, never freed midway: freed memory goes back
/// to the system (and, on a guest that reports free pages, to the host), and
/// touching new memory for every chunk cost as much system time as the reads.
const POOL: usize = IN_FLIGHT + 3;

/// A piece of the file, in order, covering it without gaps.
pub enum Chunk {
    /// Bytes read at `offset`.
    Data {
        /// Where they start.
        offset: u64,
        /// The bytes (recycled after the consumer returns).
        buf: PageBuf,
    },
    /// `len` bytes at `offset` that the file reports as a hole (read as zeros).
    Hole {
        /// Where the hole starts.
        offset: u64,
        /// Its length.
        len: u64,
    },
}

/// Reads `file` from 0 to `size`, calling `consume` for each chunk in order.
///
/// Holes are reported only in whole multiples of `align` at `align` boundaries, so
/// a consumer working in blocks of `align` never sees a block split between a hole
/// and data. A file that ends before `size` is an error naming `path`.
pub fn read_sequential(
    file: &File,
    path: &Path,
    size: u64,
    align: u64,
    consume: impl FnMut(&Chunk) -> Result<()>,
) -> Result<()> {
    read_sequential_from(file, path, 0, size, align, consume)
}

/// As [`read_sequential`], for a reader that copies the whole image out
/// (restore): holes under [`COPY_MIN_HOLE`] are read as zeros.
pub fn read_for_copy(
    file: &File,
    path: &Path,
    size: u64,
    align: u64,
    consume: impl FnMut(&Chunk) -> Result<()>,
) -> Result<()> {
    read_plain(file, path, (0, size), align, COPY_MIN_HOLE, consume)
}

/// As [`read_sequential`], from `start` (a multiple of `align`) instead of 0:
/// for a reader that resumes after a chunk it could not read.
pub fn read_sequential_from(
    file: &File,
    path: &Path,
    start: u64,
    size: u64,
    align: u64,
    consume: impl FnMut(&Chunk) -> Result<()>,
) -> Result<()> {
    read_plain(file, path, (start, size), align, MIN_HOLE, consume)
}

/// The readers above: every chunk consumed, none looked at ahead.
fn read_plain(
    file: &File,
    path: &Path,
    (start, size): (u64, u64),
    align: u64,
    min_hole: u64,
    mut consume: impl FnMut(&Chunk) -> Result<()>,
) -> Result<()> {
    read_ahead_from(
        file,
        path,
        (start, size),
        align,
        min_hole,
        |stage, chunk| match stage {
            Stage::Ahead => Ok(()),
            Stage::Consume => consume(chunk),
        },
    )
}

/// Which look a chunk gets in [`read_sequential_ahead`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// A first look, while the previous chunk has yet to be consumed.
    Ahead,
    /// Its turn.
    Consume,
}

/// As [`read_sequential`], but shows `handle` each chunk twice: first with
/// [`Stage::Ahead`] before the previous chunk is consumed, then with
/// [`Stage::Consume`]. So the caller can start work the chunk will wait for (such
/// as prefetching what it must compare) one chunk early.
pub fn read_sequential_ahead(
    file: &File,
    path: &Path,
    size: u64,
    align: u64,
    handle: impl FnMut(Stage, &Chunk) -> Result<()>,
) -> Result<()> {
    read_ahead_from(file, path, (0, size), align, MIN_HOLE, handle)
}

/// As [`read_sequential_ahead`], and with the digest of every `align`-sized
/// block of each data chunk (none for a hole). Where several threads read
/// (btrfs), each hashes what it read, so the hashing of a backup's source runs
/// beside its patch instead of before it on the same thread; with one reader
/// the digests are taken on the calling thread, while the reader goes on
/// reading.
pub fn read_sequential_ahead_hashed(
    file: &File,
    path: &Path,
    size: u64,
    align: u64,
    mut handle: impl FnMut(Stage, &Chunk, &[Digest]) -> Result<()>,
) -> Result<()> {
    let mode = Mode {
        min_hole: MIN_HOLE,
        readers: readers_for(file),
    };
    read_post(
        file,
        path,
        (0, size),
        align,
        mode,
        &|chunk| block_digests(chunk, align),
        |stage, chunk, digests| handle(stage, chunk, digests),
    )
}

/// The digest of every `block`-sized piece of a data chunk; none for a hole.
fn block_digests(chunk: &Chunk, block: u64) -> Vec<Digest> {
    match chunk {
        Chunk::Data { buf, .. } => buf.chunks(block as usize).map(Digest::of).collect(),
        Chunk::Hole { .. } => Vec::new(),
    }
}

/// Reader threads for `file`: several on btrfs, one elsewhere (see the module).
fn readers_for(file: &File) -> usize {
    if sys::on_btrfs(file) {
        BTRFS_READERS
    } else {
        1
    }
}

fn read_ahead_from(
    file: &File,
    path: &Path,
    (start, size): (u64, u64),
    align: u64,
    min_hole: u64,
    handle: impl FnMut(Stage, &Chunk) -> Result<()>,
) -> Result<()> {
    let mode = Mode {
        min_hole,
        readers: readers_for(file),
    };
    read_with(file, path, (start, size), align, mode, handle)
}

/// How [`read_with`] goes: which holes it jumps, and how many threads read.
#[derive(Clone, Copy, Debug)]
struct Mode {
    min_hole: u64,
    readers: usize,
}

/// What the planning thread hands on, in the file's order: a chunk as it is
/// (a hole, an error), or a read of `buf.len()` bytes at `pos` into `buf`.
enum Job {
    Ready(Result<Chunk>),
    Read { pos: u64, buf: PageBuf },
}

/// Does `job`: the chunk it gives.
fn run(job: Job, file: &File, path: &Path, size: u64) -> Result<Chunk> {
    let (pos, mut buf) = match job {
        Job::Ready(chunk) => return chunk,
        Job::Read { pos, buf } => (pos, buf),
    };
    let len = buf.len();
    match read_full_at(file, &mut buf, pos) {
        Ok(n) if n == len => Ok(Chunk::Data { offset: pos, buf }),
        Ok(n) => Err(Error::Shrank {
            path: path.to_owned(),
            at: pos + n as u64,
            expected: size,
        }),
        Err(e) => Err(unreadable(file, path, pos, len as u64, e)),
    }
}

/// The readers' common body ([`read_post`] with nothing computed per chunk).
fn read_with(
    file: &File,
    path: &Path,
    range: (u64, u64),
    align: u64,
    mode: Mode,
    mut handle: impl FnMut(Stage, &Chunk) -> Result<()>,
) -> Result<()> {
    read_post(
        file,
        path,
        range,
        align,
        mode,
        &|_| (),
        |stage, chunk, ()| handle(stage, chunk),
    )
}

/// One thread plans (holes, buffers); with one reader it reads too, with more
/// each of `mode.readers` threads takes every n-th job, and the chunks are
/// taken from them in the same turn, so they come in the file's order without
/// sorting. `post` of every chunk is handed along with it: computed by the
/// reader threads when there are several, else on this thread.
fn read_post<X: Send>(
    file: &File,
    path: &Path,
    (start, size): (u64, u64),
    align: u64,
    mode: Mode,
    post: &(impl Fn(&Chunk) -> X + Sync),
    mut handle: impl FnMut(Stage, &Chunk, &X) -> Result<()>,
) -> Result<()> {
    let file = file.try_clone().map_err(Error::io("cannot read", path))?;
    sys::advise_sequential(&file);
    let readers = mode.readers.max(1);
    let pool = POOL + readers - 1;
    let (recycle_tx, recycle_rx) = sync_channel::<PageBuf>(pool);
    std::thread::scope(|scope| {
        let file = &file;
        let planner = Planner {
            file,
            path,
            range: (start, size),
            align,
            min_hole: mode.min_hole,
            pool,
        };
        let mut results = Vec::with_capacity(readers);
        if readers == 1 {
            let (tx, rx) = sync_channel::<Result<(Chunk, Option<X>)>>(IN_FLIGHT);
            results.push(rx);
            scope.spawn(move || {
                planner.plan(&recycle_rx, |job| {
                    tx.send(run(job, file, path, size).map(|c| (c, None)))
                        .is_ok()
                })
            });
        } else {
            let mut jobs = Vec::with_capacity(readers);
            for _ in 0..readers {
                let (job_tx, job_rx) = sync_channel::<Job>(1);
                let (tx, rx) = sync_channel::<Result<(Chunk, Option<X>)>>(1);
                jobs.push(job_tx);
                results.push(rx);
                scope.spawn(move || {
                    for job in job_rx {
                        let item = run(job, file, path, size).map(|c| {
                            let x = post(&c);
                            (c, Some(x))
                        });
                        if tx.send(item).is_err() {
                            break;
                        }
                    }
                });
            }
            scope.spawn(move || {
                let mut turn = 0;
                planner.plan(&recycle_rx, |job| {
                    let sent = jobs[turn % readers].send(job).is_ok();
                    turn += 1;
                    sent
                })
            });
        }
        // Owned here, so an early return drops them and the threads' next send
        // (or wait for a buffer) fails instead of blocking the scope's join forever.
        let results = results;
        let recycle_tx = recycle_tx;
        let done = |chunk: Chunk| {
            if let Chunk::Data { buf, .. } = chunk {
                let _ = recycle_tx.try_send(buf);
            }
        };
        let mut turn = 0;
        let mut next = || {
            let item = results[turn % readers].recv().ok();
            turn += 1;
            item
        };
        let mut held: Option<(Chunk, X)> = None;
        while let Some(item) = next() {
            // A long read stops at the next chunk on SIGTERM/SIGINT.
            crate::interrupt::check()?;
            if crate::failpoint::active("slow-read") {
                std::thread::sleep(std::time::Duration::from_millis(200));
            }
            let (chunk, x) = item?;
            let x = x.unwrap_or_else(|| post(&chunk));
            handle(Stage::Ahead, &chunk, &x)?;
            if let Some((previous, px)) = held.replace((chunk, x)) {
                handle(Stage::Consume, &previous, &px)?;
                done(previous);
            }
        }
        if let Some((last, x)) = held {
            handle(Stage::Consume, &last, &x)?;
            done(last);
        }
        Ok(())
    })
}

/// Where holes and data alternate, as far as the file tells.
pub(crate) struct HoleMap<'a> {
    file: &'a File,
    supported: bool,
    /// Holes shorter than this are part of the data around them.
    min_hole: u64,
}

impl<'a> HoleMap<'a> {
    /// A map of `file`'s holes.
    pub(crate) fn new(file: &'a File) -> HoleMap<'a> {
        HoleMap {
            file,
            supported: true,
            min_hole: 0,
        }
    }

    /// The same map, but holes shorter than `min_hole` count as data (read as
    /// the zeros they are).
    pub(crate) fn skipping_only(self, min_hole: u64) -> HoleMap<'a> {
        HoleMap { min_hole, ..self }
    }

    /// The data range starting at or after `pos` and before `size`, as (start,
    /// end), aligned outwards to `align` (but within `pos..size`); `None` when only
    /// a hole remains. Without hole support all of `pos..size` is data.
    pub(crate) fn next_data(
        &mut self,
        pos: u64,
        size: u64,
        align: u64,
    ) -> std::io::Result<Option<(u64, u64)>> {
        if !self.supported {
            return Ok(Some((pos, size)));
        }
        let start = match sys::seek_data(self.file, pos)? {
            NextData::At(s) if s < size => s,
            NextData::At(_) | NextData::None => return Ok(None),
            NextData::Unknown => {
                self.supported = false;
                return Ok(Some((pos, size)));
            }
        };
        let mut end = sys::seek_hole(self.file, start)?.unwrap_or(size).min(size);
        // Joining data across small holes looks only so far ahead: an aged
        // image has no large hole, and mapping all of it before the first read
        // (thousands of `SEEK_DATA`/`SEEK_HOLE`, its extent tree read cold)
        // held back the first read; on the 100-generation XFS image the restore
        // went from 0.93 to 0.89 s (cold, median of 7).
        let limit = (start / LOOKAHEAD + 1).saturating_mul(LOOKAHEAD).min(size);
        let mut last_data = start;
        while self.min_hole > 0 && end < limit {
            let next = match sys::seek_data(self.file, end)? {
                NextData::At(s) if s < size => s,
                _ => break,
            };
            if next - end >= self.min_hole {
                break;
            }
            last_data = next;
            end = sys::seek_hole(self.file, next)?.unwrap_or(size).min(size);
        }
        if self.min_hole > 0 && end > limit {
            // Cut inside data (where the next call goes on without a jump), or
            // at the start of the last data run when the limit fell in the
            // small hole before it.
            end = limit.max(last_data);
        }
        let start = (start / align * align).max(pos);
        let end = end
            .div_ceil(align)
            .saturating_mul(align)
            .min(size)
            .max(start);
        Ok(Some((start, end)))
    }
}

/// What [`Planner::plan`] plans: the reads of `range` of `file`, holes
/// reported at multiples of `align` and jumped from `min_hole`, with up to
/// `pool` buffers.
struct Planner<'a> {
    file: &'a File,
    path: &'a Path,
    range: (u64, u64),
    align: u64,
    min_hole: u64,
    pool: usize,
}

impl Planner<'_> {
    /// A job per hole jumped and per chunk of data, in order, each handed to
    /// `dispatch` (false: nobody takes them any more), with buffers from
    /// `recycle` or new ones.
    fn plan(self, recycle: &Receiver<PageBuf>, mut dispatch: impl FnMut(Job) -> bool) {
        let Planner {
            file,
            path,
            range: (start, size),
            align,
            min_hole,
            pool,
        } = self;
        let mut allocated = 0;
        let mut holes = HoleMap::new(file).skipping_only(min_hole);
        let mut pos = start;
        while pos < size {
            let (data_start, data_end) = match holes.next_data(pos, size, align) {
                Ok(Some(range)) => range,
                Ok(None) => (size, size),
                Err(e) => {
                    dispatch(Job::Ready(Err(Error::io("cannot read", path)(e))));
                    return;
                }
            };
            if data_start > pos {
                let hole = Chunk::Hole {
                    offset: pos,
                    len: data_start - pos,
                };
                if !dispatch(Job::Ready(Ok(hole))) {
                    return;
                }
                pos = data_start;
            }
            while pos < data_end {
                let len = (data_end - pos).min(CHUNK - pos % CHUNK) as usize;
                let mut buf = match recycle.try_recv() {
                    Ok(buf) => buf,
                    Err(_) if allocated < pool => {
                        allocated += 1;
                        PageBuf::new(CHUNK as usize)
                    }
                    // The consumer is done with none yet: wait for one (or, when it
                    // stopped, end).
                    Err(_) => match recycle.recv() {
                        Ok(buf) => buf,
                        Err(_) => return,
                    },
                };
                buf.set_len(len);
                if !dispatch(Job::Read { pos, buf }) {
                    return;
                }
                pos += len as u64;
            }
        }
    }
}

/// What a read of `len` bytes at `pos` that failed with `err` becomes: for an
/// `EIO`, [`Error::ReadFailed`] naming the first 4 KiB block in the range that
/// does not read (found by reading it block by block), else [`Error::io`].
pub fn unreadable(file: &File, path: &Path, pos: u64, len: u64, err: std::io::Error) -> Error {
    const BLOCK: u64 = 4096;
    if err.raw_os_error() != Some(rustix::io::Errno::IO.raw_os_error()) {
        return Error::io("cannot read", path)(err);
    }
    // The first block that fails a buffered read (on a fresh descriptor
    // without readahead; cheap where the page cache holds the blocks before
    // it), then, since a block device's readahead or a large page-cache folio
    // fails the blocks before the bad one with it, the first from there that
    // fails a read past the page cache (`O_DIRECT`, where the file allows it).
    let fresh = File::open(path).ok();
    if let Some(f) = &fresh {
        let _ = rustix::fs::fadvise(f, 0, None, rustix::fs::Advice::Random);
    }
    let buffered = fresh.as_ref().unwrap_or(file);
    let end = pos + len;
    // Coarse steps first: on a file without a page cache (FUSE) every read
    // is a request to the device.
    const COARSE: u64 = 64 * BLOCK;
    let mut buf = PageBuf::zeroed(COARSE as usize);
    let mut at = pos / BLOCK * BLOCK;
    for step in [COARSE, BLOCK] {
        while at < end {
            let n = (end - at).min(step) as usize;
            if read_full_at(buffered, &mut buf[..n], at).is_err() {
                break;
            }
            at += step;
        }
    }
    let mut offset = if at < end { at.max(pos) } else { pos };
    let direct = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(rustix::fs::OFlags::DIRECT.bits() as i32)
        .open(path);
    if let Ok(direct) = direct {
        let mut at = offset / BLOCK * BLOCK;
        let limit = end.min(at + 64 * BLOCK);
        while at < limit {
            match direct.read_at(&mut buf[..BLOCK as usize], at) {
                Ok(_) => at += BLOCK,
                Err(e) if e.raw_os_error() == Some(rustix::io::Errno::IO.raw_os_error()) => {
                    offset = at.max(pos);
                    break;
                }
                // O_DIRECT refused after all (EINVAL): keep the buffered answer.
                Err(_) => break,
            }
        }
    }
    Error::ReadFailed {
        what: "cannot read",
        path: path.to_owned(),
        offset,
        len: BLOCK.min(end - offset),
        hint: "the disk under it reports a read error there (see the kernel log, dmesg)".into(),
        source: err,
    }
}

/// Reads until `buf` is full or the file ends; returns the bytes read.
pub fn read_full_at(file: &File, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match file.read_at(&mut buf[got..], offset + got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect(file: &File, size: u64, align: u64) -> (Vec<u8>, u64) {
        collect_with(MIN_HOLE, file, size, align)
    }

    /// The bytes read (holes as zeros) and the bytes jumped as holes, jumping
    /// holes from `min_hole`; the same with one reader thread and with three.
    fn collect_with(min_hole: u64, file: &File, size: u64, align: u64) -> (Vec<u8>, u64) {
        let one = collect_by(
            Mode {
                min_hole,
                readers: 1,
            },
            file,
            size,
            align,
        );
        let three = collect_by(
            Mode {
                min_hole,
                readers: 3,
            },
            file,
            size,
            align,
        );
        assert!(one == three, "three reader threads read what one reads");
        one
    }

    fn collect_by(mode: Mode, file: &File, size: u64, align: u64) -> (Vec<u8>, u64) {
        let mut out = vec![0xAAu8; size as usize];
        let mut hole_bytes = 0;
        let mut next = 0;
        let consume = |stage: Stage, c: &Chunk| {
            if stage == Stage::Ahead {
                return Ok(());
            }
            match *c {
                Chunk::Data { offset, ref buf } => {
                    assert_eq!(offset, next);
                    out[offset as usize..offset as usize + buf.len()].copy_from_slice(buf);
                    next += buf.len() as u64;
                }
                Chunk::Hole { offset, len } => {
                    assert_eq!(offset, next);
                    assert_eq!(offset % align, 0);
                    assert!(len % align == 0 || offset + len == size);
                    out[offset as usize..(offset + len) as usize].fill(0);
                    hole_bytes += len;
                    next += len;
                }
            }
            Ok(())
        };
        read_with(file, Path::new("t"), (0, size), align, mode, consume).unwrap();
        assert_eq!(next, size);
        (out, hole_bytes)
    }

    #[test]
    fn reads_sparse_files_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        let f = File::create(&p).unwrap();
        let size = 20 * 1024 * 1024 + 123;
        f.set_len(size).unwrap();
        f.write_all_at(b"start", 0).unwrap();
        f.write_all_at(&[7u8; 5000], 9 * 1024 * 1024 + 100).unwrap();
        f.write_all_at(b"end", size - 3).unwrap();
        let f = File::open(&p).unwrap();
        let (got, holes) = collect(&f, size, 65536);
        assert_eq!(got, std::fs::read(&p).unwrap());
        // Whether the filesystem reports holes is its business; correctness is not.
        assert!(holes <= size);
    }

    /// Data with small holes everywhere (an aged image) over several lookahead
    /// windows: every byte comes back, and where the filesystem reports the holes,
    /// none of them, nor a window's end, becomes a jump; a large hole still is one.
    #[test]
    fn small_holes_are_read_across_lookahead_windows() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        let f = File::create(&p).unwrap();
        let size = 3 * LOOKAHEAD + 8 * MIN_HOLE + 4096;
        f.set_len(size).unwrap();
        let big_hole = 2 * LOOKAHEAD + 64 * 1024..2 * LOOKAHEAD + 64 * 1024 + 4 * MIN_HOLE;
        // 8 KiB of data every 68 KiB (a 60 KiB hole between), so window ends
        // fall in data and in holes.
        const STRIDE: u64 = 69632;
        let (mut at, mut n) = (0, 0u8);
        let (mut before, mut after) = (0, None);
        while at < size {
            if !big_hole.contains(&at) {
                let len = 8192.min(size - at);
                f.write_all_at(&vec![n | 1; len as usize], at).unwrap();
                n = n.wrapping_add(1);
                if at < big_hole.start {
                    before = at + len;
                } else if after.is_none() {
                    after = Some(at);
                }
            }
            at += STRIDE;
        }
        let f = File::open(&p).unwrap();
        let (got, holes) = collect(&f, size, 4096);
        assert_eq!(got, std::fs::read(&p).unwrap());
        if sys::seek_hole(&f, 0).unwrap() != Some(size) {
            let tail = size - (at - STRIDE + 8192).min(size);
            assert_eq!(
                holes,
                after.unwrap() - before + tail,
                "only the large hole is jumped"
            );
        }
    }

    /// Restore reads holes under `COPY_MIN_HOLE` through, as `cat` does, and
    /// jumps the larger ones; the other readers jump everything from `MIN_HOLE`.
    #[test]
    fn the_copy_reader_reads_small_holes_through() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        let f = File::create(&p).unwrap();
        let small = 2 * MIN_HOLE;
        let large = 2 * COPY_MIN_HOLE;
        let size = 3 * CHUNK + small + large;
        f.set_len(size).unwrap();
        f.write_all_at(&vec![1u8; CHUNK as usize], 0).unwrap();
        f.write_all_at(&vec![2u8; CHUNK as usize], CHUNK + small)
            .unwrap();
        f.write_all_at(&vec![3u8; CHUNK as usize], 2 * CHUNK + small + large)
            .unwrap();
        let f = File::open(&p).unwrap();
        let want = std::fs::read(&p).unwrap();
        let (got, jumped) = collect_with(MIN_HOLE, &f, size, 4096);
        assert_eq!(got, want);
        let (got, copy_jumped) = collect_with(COPY_MIN_HOLE, &f, size, 4096);
        assert_eq!(got, want);
        // And `read_for_copy` is the reader that jumps only the large hole.
        let mut copy_api_jumped = 0;
        read_for_copy(&f, &p, size, 4096, |c| {
            if let Chunk::Hole { len, .. } = *c {
                copy_api_jumped += len;
            }
            Ok(())
        })
        .unwrap();
        if sys::seek_hole(&f, 0).unwrap() != Some(size) {
            assert_eq!(jumped, small + large);
            assert_eq!(copy_jumped, large);
            assert_eq!(copy_api_jumped, large);
        }
    }

    /// A consumer that fails early must not leave the producer blocked on a full
    /// channel (it did: the backup hung when the job's filesystem filled up).
    #[test]
    fn a_failing_consumer_stops_the_reader() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, vec![1u8; 40 << 20]).unwrap();
        let f = File::open(&p).unwrap();
        for readers in [1, 3] {
            let mode = Mode {
                min_hole: MIN_HOLE,
                readers,
            };
            let err = read_with(&f, &p, (0, 40 << 20), 4096, mode, |_, _| {
                Err(Error::Other("disk full".into()))
            })
            .unwrap_err();
            assert_eq!(err.to_string(), "disk full");
        }
    }

    /// The hashed reader hands every data chunk with the digests of its blocks,
    /// the same at both looks and with one reader thread (digests taken on the
    /// consumer) as with three (taken on the readers); holes come without.
    #[test]
    fn hashed_chunks_carry_the_digests_of_their_blocks() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        let f = File::create(&p).unwrap();
        let size = 9 * CHUNK + 3 * 65536 + 100;
        f.set_len(size).unwrap();
        for (i, at) in [0, CHUNK + 4096, 5 * CHUNK, size - 5000]
            .into_iter()
            .enumerate()
        {
            let data: Vec<u8> = (0..3 * 65536u32)
                .map(|b| (b % 251) as u8 ^ i as u8)
                .collect();
            let len = data.len().min((size - at) as usize);
            f.write_all_at(&data[..len], at).unwrap();
        }
        let f = File::open(&p).unwrap();
        let want = std::fs::read(&p).unwrap();
        let hash = |chunk: &Chunk| block_digests(chunk, 65536);
        let mut seen = Vec::new();
        for readers in [1, 3] {
            let mut events = Vec::new();
            read_post(
                &f,
                &p,
                (0, size),
                65536,
                Mode {
                    min_hole: MIN_HOLE,
                    readers,
                },
                &hash,
                |stage, chunk, digests: &Vec<Digest>| {
                    match chunk {
                        Chunk::Data { offset, buf } => {
                            let expect: Vec<Digest> = want
                                [*offset as usize..*offset as usize + buf.len()]
                                .chunks(65536)
                                .map(Digest::of)
                                .collect();
                            assert!(*digests == expect, "digests of the chunk at {offset}");
                            events.push((stage, *offset, digests.len()));
                        }
                        Chunk::Hole { offset, .. } => {
                            assert!(digests.is_empty());
                            events.push((stage, *offset, 0));
                        }
                    }
                    Ok(())
                },
            )
            .unwrap();
            assert!(events.iter().any(|e| e.2 > 0));
            seen.push(events);
        }
        assert_eq!(seen[0], seen[1], "one reader and three agree");
        // And the public entry point, on whatever this filesystem picks.
        let mut blocks = 0;
        read_sequential_ahead_hashed(&f, &p, size, 65536, |stage, chunk, digests| {
            if let (Stage::Consume, Chunk::Data { buf, .. }) = (stage, chunk) {
                assert_eq!(digests.len(), buf.len().div_ceil(65536));
                blocks += digests.len();
            }
            Ok(())
        })
        .unwrap();
        assert!(blocks > 0);
    }

    /// Every chunk is seen ahead exactly once, one chunk before it is consumed.
    #[test]
    fn chunks_are_seen_one_ahead_then_consumed_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        let f = File::create(&p).unwrap();
        let size = 5 * CHUNK + 999;
        f.set_len(size).unwrap();
        f.write_all_at(&[3u8; 100], 2 * CHUNK + 7).unwrap();
        f.write_all_at(&[4u8; 100], size - 100).unwrap();
        let f = File::open(&p).unwrap();
        let mut events = Vec::new();
        read_sequential_ahead(&f, &p, size, 4096, |stage, chunk| {
            let offset = match *chunk {
                Chunk::Data { offset, .. } | Chunk::Hole { offset, .. } => offset,
            };
            events.push((stage, offset));
            Ok(())
        })
        .unwrap();
        let ahead: Vec<u64> = events
            .iter()
            .filter(|e| e.0 == Stage::Ahead)
            .map(|e| e.1)
            .collect();
        let consumed: Vec<u64> = events
            .iter()
            .filter(|e| e.0 == Stage::Consume)
            .map(|e| e.1)
            .collect();
        assert_eq!(ahead, consumed);
        assert!(ahead.windows(2).all(|w| w[0] < w[1]));
        for (i, &offset) in consumed.iter().enumerate() {
            let consumed_at = events
                .iter()
                .position(|&e| e == (Stage::Consume, offset))
                .unwrap();
            if let Some(&next) = ahead.get(i + 1) {
                let next_seen = events
                    .iter()
                    .position(|&e| e == (Stage::Ahead, next))
                    .unwrap();
                assert!(next_seen < consumed_at, "{events:?}");
            }
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 32, ..Default::default() })]
        /// Whatever the file's layout of data and holes, the hole minimum, the
        /// alignment and the number of reader threads, the chunks cover the file
        /// in order with its bytes, and the thread counts agree on the holes.
        #[test]
        fn every_layout_reads_back_whole(
            runs in proptest::collection::vec((0u64..3 * CHUNK, 0u64..2 * CHUNK), 1..12),
            tail in 0u64..3 * CHUNK,
            min_hole_pick in 0usize..3,
            align_pick in 0usize..2,
            readers in 1usize..6,
        ) {
            let dir = tempfile::tempdir().unwrap();
            let p = dir.path().join("f");
            let f = File::create(&p).unwrap();
            let mut at = 0;
            for (i, (hole, data)) in runs.iter().enumerate() {
                at += hole / 4096 * 4096;
                let data = data / 4096 * 4096;
                f.write_all_at(&vec![i as u8 + 1; data as usize], at).unwrap();
                at += data;
            }
            let size = at + tail + 123;
            f.set_len(size).unwrap();
            let f = File::open(&p).unwrap();
            let want = std::fs::read(&p).unwrap();
            let min_hole = [4096, MIN_HOLE, COPY_MIN_HOLE][min_hole_pick];
            let align = [4096, 65536][align_pick];
            let one = collect_by(Mode { min_hole, readers: 1 }, &f, size, align);
            let many = collect_by(Mode { min_hole, readers }, &f, size, align);
            proptest::prop_assert!(one.0 == want);
            proptest::prop_assert!(many == one);
        }
    }

    #[test]
    fn short_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, vec![1u8; 1000]).unwrap();
        let f = File::open(&p).unwrap();
        for readers in [1, 3] {
            let mode = Mode {
                min_hole: MIN_HOLE,
                readers,
            };
            let err = read_with(&f, &p, (0, 5000), 4096, mode, |_, _| Ok(())).unwrap_err();
            assert!(
                err.to_string().contains("shrank during the backup"),
                "{err}"
            );
        }
    }
}
