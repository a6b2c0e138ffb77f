//! The read-ahead: a thread parses the stream ahead of the applier and queues
//! prefetches of the image blocks its records will compare.

use std::io::Read;

use super::apply::{Applied, Expect, Records, apply_records};
use super::format::{DiffError, DiffReader, Record};
use crate::buf::PageBuf;
use crate::image::prefetch::Prefetcher;
use crate::image::writer::ImageWriter;

/// [`apply`](super::apply::apply) with the stream read and parsed ahead on a thread of its own, so the
/// producer (rbd) never waits for the image, and the image blocks that records
/// ahead will compare are read in the background (see [`Prefetch`]).
///
/// At most [`AHEAD_BATCHES`] batches of about [`BATCH_BYTES`] wait between the
/// threads, so memory stays bounded whatever the stream holds. `progress` gets the
/// stream bytes handled.
///
/// The reader thread is scoped: it has ended when this returns. If applying
/// fails, `stop_input` is called first (the caller kills rbd), so a reader
/// blocked on the input sees its end; one blocked handing over a batch sees
/// the applier gone.
pub fn apply_streamed<R: Read + Send>(
    input: R,
    writer: &mut ImageWriter,
    expect: &Expect,
    prefetch: Option<Prefetch>,
    progress: &mut dyn FnMut(u64),
    stop_input: &dyn Fn(),
) -> Result<Applied, DiffError> {
    std::thread::scope(|scope| {
        let (tx, rx) = std::sync::mpsc::sync_channel(AHEAD_BATCHES);
        // Data chunks the applier is done with go back to be filled again, so
        // the reader does not allocate (and the kernel zero) fresh memory for
        // every megabyte of the stream.
        let (recycle_tx, recycle_rx) = std::sync::mpsc::sync_channel(RECYCLED);
        let reader = scope.spawn(move || read_ahead(input, tx, &recycle_rx, prefetch));
        // `apply_records` owns the receiving side and drops it when it returns.
        let started = std::time::Instant::now();
        let mut streamed = Streamed::new(rx, recycle_tx);
        let result = apply_records(&mut streamed, writer, expect, progress);
        tracing::debug!(
            "Applied the diff in {:.2} s, {:.2} s of it waiting for the stream",
            started.elapsed().as_secs_f64(),
            streamed.waited.as_secs_f64()
        );
        drop(streamed);
        if result.is_err() {
            stop_input();
        }
        if reader.join().is_err() {
            return Err(DiffError::Invalid {
                at: 0,
                what: "the thread reading the diff stream panicked (a backy bug)".into(),
            });
        }
        result
    })
}
/// Data bytes a reader-thread batch collects before it is handed over.
pub const BATCH_BYTES: usize = 1 << 20;
/// Batches that may wait for the applier: the read-ahead, about 16 MiB.
pub const AHEAD_BATCHES: usize = 16;
/// Records a batch may hold, so small records do not make a batch unbounded.
const BATCH_RECORDS: usize = 4096;
/// Used data chunks kept for the reader to fill again.
const RECYCLED: usize = 4;
/// Reading ahead, in the image, what the records to come will compare: each
/// extent's first and last block when it covers them only in part (their other
/// bytes must be read), and with `whole_blocks` also the blocks in between (read
/// when their data differs from the parent's digest; off for whole-object diffs,
/// which mostly resend unchanged data).
pub struct Prefetch {
    /// The patched image's prefetch threads ([`ImageWriter::prefetcher`]).
    pub threads: Prefetcher,
    /// The writer's block size.
    pub block_size: u64,
    /// Also read fully covered blocks.
    pub whole_blocks: bool,
}

impl Prefetch {
    /// The byte ranges to read for extent `offset+len` of an image of `size` bytes.
    pub(super) fn ranges(&self, offset: u64, len: u64, size: u64) -> [Option<(u64, u64)>; 2] {
        let bs = self.block_size;
        let end = (offset + len).min(size);
        if offset >= end {
            return [None, None];
        }
        let (first, last) = (offset / bs, (end - 1) / bs);
        if self.whole_blocks {
            return [Some((first * bs, (last + 1 - first) * bs)), None];
        }
        let partial = |b: u64| offset > b * bs || end < (b * bs + bs).min(size);
        [
            partial(first).then_some((first * bs, bs)),
            (last != first && partial(last)).then_some((last * bs, bs)),
        ]
    }
}

/// One step of the stream as the reader thread hands it over.
enum Item {
    Record(u64, Record),
    Data(PageBuf),
    /// The end record (at its position), and whether bytes follow it.
    End(u64, bool),
    Failed(DiffError),
}

/// The applier's side of a reader thread that parses the stream ahead.
struct Streamed {
    batches: std::sync::mpsc::Receiver<Vec<Item>>,
    /// Where used data chunks go back to the reader.
    recycle: std::sync::mpsc::SyncSender<PageBuf>,
    items: std::vec::IntoIter<Item>,
    /// The current data chunk and how much of it is used.
    data: PageBuf,
    used: usize,
    trailing: Option<bool>,
    /// Time spent waiting for the reader thread.
    waited: std::time::Duration,
}

impl Streamed {
    fn new(
        rx: std::sync::mpsc::Receiver<Vec<Item>>,
        recycle: std::sync::mpsc::SyncSender<PageBuf>,
    ) -> Streamed {
        Streamed {
            batches: rx,
            recycle,
            items: Vec::new().into_iter(),
            data: PageBuf::default(),
            used: 0,
            trailing: None,
            waited: std::time::Duration::ZERO,
        }
    }

    fn next_item(&mut self) -> Result<Item, DiffError> {
        loop {
            if let Some(item) = self.items.next() {
                return Ok(item);
            }
            let wait = std::time::Instant::now();
            let batch = self.batches.recv();
            self.waited += wait.elapsed();
            self.items = batch
                .map_err(|_| DiffError::Invalid {
                    at: 0,
                    what: "the thread reading the diff stream stopped (a backy bug)".into(),
                })?
                .into_iter();
        }
    }

    fn out_of_step(what: &str) -> DiffError {
        DiffError::Invalid {
            at: 0,
            what: format!("{what} out of step with the diff stream (a backy bug)"),
        }
    }
}

impl Records for Streamed {
    fn next_record(&mut self) -> Result<(u64, Record), DiffError> {
        if self.used < self.data.len() {
            return Err(Self::out_of_step("data of a write record left unread"));
        }
        match self.next_item()? {
            Item::Record(at, record) => Ok((at, record)),
            Item::End(at, trailing) => {
                self.trailing = Some(trailing);
                Ok((at, Record::End))
            }
            Item::Failed(e) => Err(e),
            Item::Data(_) => Err(Self::out_of_step("write data")),
        }
    }

    fn read_data(&mut self, mut buf: &mut [u8]) -> Result<(), DiffError> {
        while !buf.is_empty() {
            if self.used == self.data.len() {
                match self.next_item()? {
                    Item::Data(chunk) => {
                        let used = std::mem::replace(&mut self.data, chunk);
                        self.used = 0;
                        // Full (the reader has enough) or gone: just drop it.
                        let _ = self.recycle.try_send(used);
                    }
                    Item::Failed(e) => return Err(e),
                    _ => return Err(Self::out_of_step("a record")),
                }
            }
            let n = buf.len().min(self.data.len() - self.used);
            buf[..n].copy_from_slice(&self.data[self.used..self.used + n]);
            self.used += n;
            buf = &mut buf[n..];
        }
        Ok(())
    }

    fn has_trailing_bytes(&mut self) -> Result<bool, DiffError> {
        self.trailing
            .ok_or_else(|| Self::out_of_step("the end record"))
    }
}

/// The reader thread: parses `input`, hands over batches of records and data, and
/// queues the prefetches of the image ranges the records will need. Ends at the end
/// record, at the first error (handed over too), or when the applier is gone.
fn read_ahead<R: Read>(
    input: R,
    batches: std::sync::mpsc::SyncSender<Vec<Item>>,
    recycled: &std::sync::mpsc::Receiver<PageBuf>,
    prefetch: Option<Prefetch>,
) {
    let mut batch = Vec::new();
    let mut bytes = 0;
    let mut size = 0;
    let push = |item: Item, batch: &mut Vec<Item>, bytes: &mut usize| -> bool {
        let last = matches!(item, Item::End(..) | Item::Failed(_));
        if let Item::Data(d) = &item {
            *bytes += d.len();
        }
        batch.push(item);
        if last || *bytes >= BATCH_BYTES || batch.len() >= BATCH_RECORDS {
            *bytes = 0;
            return batches.send(std::mem::take(batch)).is_ok() && !last;
        }
        true
    };
    let mut reader = match DiffReader::new(input) {
        Ok(r) => r,
        Err(e) => {
            push(Item::Failed(e), &mut batch, &mut bytes);
            return;
        }
    };
    loop {
        let at = reader.position();
        let record = match reader.next_record() {
            Ok(r) => r,
            Err(e) => {
                push(Item::Failed(e), &mut batch, &mut bytes);
                return;
            }
        };
        match record {
            Record::Size(s) => size = s,
            Record::Write { offset, len } | Record::Zero { offset, len } => {
                if let Some(p) = &prefetch {
                    for (offset, len) in p.ranges(offset, len, size).into_iter().flatten() {
                        p.threads.request(offset, len);
                    }
                }
            }
            Record::End => {
                let item = match reader.has_trailing_bytes() {
                    Ok(trailing) => Item::End(at, trailing),
                    Err(e) => Item::Failed(e),
                };
                push(item, &mut batch, &mut bytes);
                return;
            }
            _ => {}
        }
        let data_len = match record {
            Record::Write { len, .. } => len,
            _ => 0,
        };
        if !push(Item::Record(at, record), &mut batch, &mut bytes) {
            return;
        }
        let mut left = data_len;
        while left > 0 {
            let n = left.min(BATCH_BYTES as u64) as usize;
            // Page-aligned, so the copy out of the pipe runs at full speed (see
            // `crate::buf`).
            let mut chunk = recycled.try_recv().unwrap_or_default();
            // Allocated at full size once, so a recycled chunk never has to grow.
            chunk.fit(BATCH_BYTES);
            chunk.set_len(n);
            if let Err(e) = reader.read_data(&mut chunk) {
                push(Item::Failed(e), &mut batch, &mut bytes);
                return;
            }
            left -= n as u64;
            if !push(Item::Data(chunk), &mut batch, &mut bytes) {
                return;
            }
        }
    }
}
