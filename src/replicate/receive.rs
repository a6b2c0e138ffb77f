//! The receiving side: a stream of [`super::stream`] records becomes
//! revisions of a job, through the same lifecycle a backup uses.
//!
//! Under the job's backup lock, incomplete revisions are removed first. The
//! base the stream names must be held complete, trusted and with the same
//! manifest. Then each revision of the stream, in turn:
//!
//! 1. held already (complete, same manifest digest): skipped; held with
//!    another manifest: refused;
//! 2. otherwise its `.rev` is begun (incomplete), its image made a reflink
//!    clone of its parent's (the base or the previous revision) and its
//!    manifest a clone of the parent's manifest;
//! 3. the records patch both: the pages of each `Block` written, zero runs
//!    and `Zero` blocks punched out (so the target shares what the source
//!    shares and stays sparse), each block's digest set;
//! 4. at its end record, image and manifest are fsynced, every block written
//!    is read back and compared with its digest, and the manifest's content
//!    digest must equal the one the stream names;
//! 5. image and manifest become 0440 and the revision is committed with the
//!    sender's metadata (id, timestamp, tags, trust, stats, duration).
//!
//! A stream that breaks off, or fails a check, stops the revision in
//! progress: its files are removed (or, after a crash, left incomplete for
//! the next receive or backup to remove). Revisions committed before stay:
//! each was checked against the digests the stream carried.

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::{DirBuilderExt, FileExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::buf::PageBuf;
use crate::config::JobConfig;
use crate::error::{Error, Result};
use crate::image::reader::read_full_at;
use crate::image::sums::{self, Digest, Manifest};
use crate::image::{self, CloneKind};
use crate::job::{BackupLock, Job};
use crate::revision::{Revision, Trust};
use crate::sys;

use super::stream::{
    self, Begin, BlockRecord, Record, RevisionHeader, RunKind, StreamError, StreamReader,
};

/// How to receive.
#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    /// Read and check the stream, write nothing, say what would happen.
    pub dry_run: bool,
}

/// What became of one revision of the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Received and committed (or, with `--dry-run`, would be).
    Received {
        /// Changed blocks it carried.
        blocks: u64,
        /// Bytes of page data written.
        data_bytes: u64,
    },
    /// Held already with the same manifest.
    Skipped,
}

/// What a receive did, revision by revision.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    /// The stream's revisions, in order, with what became of them.
    pub revisions: Vec<(String, Outcome)>,
    /// The sender's `config` was installed (the job had none).
    pub config_installed: bool,
    /// The job directory was created.
    pub created: bool,
}

/// One revision the target holds, for `receive --have`.
#[derive(Debug, Clone, Serialize)]
pub struct Held {
    /// Its id.
    pub id: String,
    /// Its timestamp (RFC 3339).
    pub timestamp: String,
    /// The content digest of its manifest; `null` without a usable one.
    pub manifest: Option<String>,
    /// Its trust.
    pub trust: Trust,
}

/// The complete revisions of the job in `dir`, oldest first, with their
/// manifest digests (empty when the directory does not exist yet).
pub fn held(dir: &Path) -> Result<Vec<Held>> {
    if !dir.exists() {
        return Ok(Vec::new());
    }
    let job = Job::open(dir)?;
    let mut out = Vec::new();
    for rev in job.revisions().iter().filter(|r| r.is_complete()) {
        let manifest = Manifest::open(&job.sums_path(&rev.id), false)
            .and_then(|mut m| m.content_digest())
            .ok()
            .map(|d| d.to_hex());
        out.push(Held {
            id: rev.id.clone(),
            timestamp: rev.timestamp.to_rfc3339(),
            manifest,
            trust: rev.trust,
        });
    }
    Ok(out)
}

/// Reads `input` on a thread of its own, up to [`READ_AHEAD`] chunks of 1 MiB
/// ahead of the caller, so the sender keeps sending while the receiver
/// waits for its disk (fsync, verification, the next clone).
pub struct ReadAhead {
    rx: std::sync::mpsc::Receiver<std::io::Result<PageBuf>>,
    /// Chunks read out go back to the thread, which fills them again instead
    /// of touching fresh memory for every MiB.
    recycle: std::sync::mpsc::SyncSender<PageBuf>,
    chunk: PageBuf,
    at: usize,
    done: bool,
}

/// Chunks of 1 MiB [`ReadAhead`] holds at most.
pub const READ_AHEAD: usize = 32;

impl ReadAhead {
    /// Starts the reading thread.
    pub fn new(mut input: impl Read + Send + 'static) -> Result<ReadAhead> {
        let (tx, rx) = std::sync::mpsc::sync_channel(READ_AHEAD);
        let (recycle, recycled) = std::sync::mpsc::sync_channel::<PageBuf>(2);
        std::thread::Builder::new()
            .name("stream-reader".into())
            .spawn(move || {
                loop {
                    // Page-aligned: the copy out of the pipe or socket runs at
                    // full speed (`crate::buf`).
                    let mut buf = recycled.try_recv().unwrap_or_default();
                    buf.fit(1 << 20);
                    let got = match input.read(&mut buf) {
                        Ok(n) => n,
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                        Err(e) => {
                            let _ = tx.send(Err(e));
                            return;
                        }
                    };
                    buf.set_len(got);
                    // The receiver hung up (an error ended the receive): stop.
                    if tx.send(Ok(buf)).is_err() || got == 0 {
                        return;
                    }
                }
            })
            .map_err(|source| Error::ThreadSpawn {
                what: "the stream reading thread",
                source,
            })?;
        Ok(ReadAhead {
            rx,
            recycle,
            chunk: PageBuf::default(),
            at: 0,
            done: false,
        })
    }
}

impl Read for ReadAhead {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.at == self.chunk.len() {
            if self.done {
                return Ok(0);
            }
            match self.rx.recv() {
                Ok(Ok(chunk)) => {
                    self.done = chunk.is_empty();
                    // Full or gone: the old chunk is just dropped.
                    let _ = self
                        .recycle
                        .try_send(std::mem::replace(&mut self.chunk, chunk));
                    self.at = 0;
                }
                Ok(Err(e)) => return Err(e),
                Err(_) => {
                    self.done = true;
                    return Ok(0);
                }
            }
        }
        let n = buf.len().min(self.chunk.len() - self.at);
        buf[..n].copy_from_slice(&self.chunk[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

/// Receives the stream on `input` into the job in `dir` (created if missing).
pub fn receive(dir: &Path, input: impl Read, options: Options) -> Result<Summary> {
    let mut reader = StreamReader::new(input).map_err(stream_error)?;
    let begin = match reader.next_record().map_err(stream_error)? {
        Some(Record::Begin(b)) => b,
        _ => unreachable_begin()?,
    };
    let mut summary = Summary::default();
    if !dir.exists() {
        summary.created = true;
        if !options.dry_run {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o750)
                .create(dir)
                .map_err(Error::io("cannot create job directory", dir))?;
        }
    }
    if options.dry_run {
        return dry_run(dir, &begin, &mut reader, summary);
    }
    let mut job = Job::open(dir)?;
    let lock = job.lock_backup()?;
    for id in job.remove_incomplete(&lock)? {
        tracing::warn!("Removed incomplete revision {id}");
    }
    job.update_last()?;
    summary.config_installed = install_config(&job, &begin)?;
    check_base(&job, &begin)?;
    let allow_copy = job.config().map(|c| c.allow_copy).unwrap_or(false);
    let mut receiver = Receiver {
        job: &mut job,
        lock: &lock,
        allow_copy,
        parent: begin.base.as_ref().map(|b| b.id.clone()),
    };
    loop {
        crate::interrupt::check()?;
        match reader.next_record().map_err(stream_error)? {
            Some(Record::Revision(header)) => {
                let outcome = receiver.revision(&header, &mut reader)?;
                summary.revisions.push((header.id.clone(), outcome));
                receiver.parent = Some(header.id);
            }
            Some(Record::End { .. }) => {}
            None => break,
            Some(_) => unreachable_order()?,
        }
    }
    Ok(summary)
}

/// The reader lets only `Begin` come first; this is never reached.
fn unreachable_begin<T>() -> Result<T> {
    Err(Error::Other("the stream has no begin record".into()))
}

/// The reader checks the order; this is never reached.
fn unreachable_order<T>() -> Result<T> {
    Err(Error::Other(
        "a stream record came out of order (the reader should have refused it)".into(),
    ))
}

fn stream_error(source: StreamError) -> Error {
    Error::ReceiveStream { source }
}

/// Writes the sender's `config` when the job has none; returns whether it did.
fn install_config(job: &Job, begin: &Begin) -> Result<bool> {
    let path = job.dir().join("config");
    let Some(text) = &begin.config else {
        return Ok(false);
    };
    if std::fs::symlink_metadata(&path).is_ok() {
        return Ok(false);
    }
    let config = JobConfig::parse(text).map_err(|problems| Error::Config {
        which: crate::error::ConfigFile::Job,
        file: path.clone(),
        problems: problems.0,
    })?;
    crate::job::write_atomic(&path, text.as_bytes(), config.file_mode())?;
    tracing::info!("Installed the sender's config in {}", path.display());
    Ok(true)
}

/// Refuses a base the job does not hold complete, holds with another
/// manifest, or distrusts.
fn check_base(job: &Job, begin: &Begin) -> Result<()> {
    let Some(base) = &begin.base else {
        return Ok(());
    };
    let Some(rev) = job.revision(&base.id).filter(|r| r.is_complete()) else {
        return Err(Error::ReceiveBaseMissing {
            id: base.id.clone(),
            dir: job.dir().to_owned(),
        });
    };
    if rev.trust == Trust::Distrusted {
        return Err(Error::ReceiveBaseDistrusted {
            id: base.id.clone(),
            dir: job.dir().to_owned(),
        });
    }
    let held = Manifest::open(&job.sums_path(&base.id), false).and_then(|mut m| m.content_digest());
    let expected = stream::parse_digest(&base.manifest).ok();
    if held.ok() != expected {
        return Err(Error::ReceiveBaseMismatch {
            id: base.id.clone(),
            dir: job.dir().to_owned(),
        });
    }
    Ok(())
}

/// Whether the job holds `header`'s revision complete with the same
/// manifest (`Ok(true)`: skip it), not at all (`Ok(false)`), or otherwise
/// (an error).
fn already_held(job: &Job, header: &RevisionHeader) -> Result<bool> {
    if let Some(d) = job.find_damaged(&header.id) {
        return Err(Error::DamagedRevision {
            id: d.id.clone(),
            file: d.file.clone(),
            reason: d.reason.clone(),
        });
    }
    let Some(rev) = job.revision(&header.id).filter(|r| r.is_complete()) else {
        return Ok(false);
    };
    let held = Manifest::open(&job.sums_path(&rev.id), false).and_then(|mut m| m.content_digest());
    if held.ok() == stream::parse_digest(&header.manifest).ok() {
        Ok(true)
    } else {
        Err(Error::ReceiveRevisionMismatch {
            id: header.id.clone(),
            dir: job.dir().to_owned(),
        })
    }
}

/// Receives revisions into a locked job.
struct Receiver<'a> {
    job: &'a mut Job,
    lock: &'a BackupLock,
    allow_copy: bool,
    /// The image the next revision is a patch of.
    parent: Option<String>,
}

/// A revision being written.
struct Incoming {
    rev: Revision,
    duration: f64,
    image: File,
    image_path: PathBuf,
    manifest: Manifest,
    sums_path: PathBuf,
    /// The blocks written, as (first, count) runs in increasing order: as
    /// many as the stream's records (a bit per block of the image could be
    /// gigabytes for a hostile image size).
    written: Vec<(u64, u64)>,
    data_bytes: u64,
    blocks: u64,
}

impl Incoming {
    /// Blocks `first..first + count` were written (records come in order).
    fn wrote(&mut self, first: u64, count: u64) {
        match self.written.last_mut() {
            Some((f, c)) if *f + *c == first => *c += count,
            _ => self.written.push((first, count)),
        }
    }
}

impl Receiver<'_> {
    /// Receives one revision whose header was just read, up to its end record.
    fn revision<R: Read>(
        &mut self,
        header: &RevisionHeader,
        reader: &mut StreamReader<R>,
    ) -> Result<Outcome> {
        if already_held(self.job, header)? {
            skip_revision(reader)?;
            tracing::info!(
                "Revision {} is here already with the same manifest: skipped",
                header.id
            );
            return Ok(Outcome::Skipped);
        }
        let mut rev =
            Revision::parse(&header.rev, &header.id).map_err(|reason| Error::ReceiveStream {
                source: StreamError::Malformed {
                    record: 0,
                    at: reader.position(),
                    what: format!("the metadata of revision {}: {reason}", header.id),
                },
            })?;
        let Some(duration) = rev.duration() else {
            return Err(Error::ReceiveStream {
                source: StreamError::Malformed {
                    record: 0,
                    at: reader.position(),
                    what: format!("revision {} is sent incomplete", header.id),
                },
            });
        };
        rev.stats.remove("duration");
        self.job.begin_revision(&rev, self.lock)?;
        crate::failpoint::hit("receive-after-incomplete-rev");
        let result = self
            .make(header, rev, duration)
            .and_then(|incoming| self.patch(header, incoming, reader))
            .and_then(|incoming| self.commit(header, incoming));
        match result {
            Ok(outcome) => Ok(outcome),
            Err(e) => {
                if let Err(cleanup) = self.job.discard_incomplete(&header.id, self.lock) {
                    tracing::warn!(
                        "Could not remove incomplete revision {}: {cleanup}",
                        header.id
                    );
                }
                Err(full_disk(e, self.job.dir(), &header.id))
            }
        }
    }

    /// The new revision's image and manifest as clones of the parent's (or
    /// empty), sized as the stream says.
    fn make(&self, header: &RevisionHeader, rev: Revision, duration: f64) -> Result<Incoming> {
        let image_path = self.job.image_path(&header.id);
        let sums_path = self.job.sums_path(&header.id);
        if header.block_size != sums::BLOCK_SIZE {
            return Err(Error::ReceiveStream {
                source: StreamError::Malformed {
                    record: 0,
                    at: 0,
                    what: format!(
                        "revision {} has block size {}; this backy uses {}",
                        header.id,
                        header.block_size,
                        sums::BLOCK_SIZE
                    ),
                },
            });
        }
        let (kind, mut manifest) = match &self.parent {
            Some(p) => {
                let kind = image::clone_or_copy_sparse(
                    &self.job.image_path(p),
                    &image_path,
                    self.allow_copy,
                )?;
                image::clone_or_copy_sparse(&self.job.sums_path(p), &sums_path, self.allow_copy)?;
                std::fs::set_permissions(&sums_path, std::fs::Permissions::from_mode(0o640))
                    .map_err(Error::io("cannot make writable", &sums_path))?;
                (kind, Manifest::open(&sums_path, true)?)
            }
            None => {
                OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&image_path)
                    .map_err(Error::io("cannot create", &image_path))?;
                let kind = if image::probe_reflink(self.job.dir())? {
                    CloneKind::Reflink
                } else if self.allow_copy {
                    CloneKind::Copy
                } else {
                    return Err(image::no_reflink(&image_path));
                };
                (kind, Manifest::create(&sums_path, 0)?)
            }
        };
        if kind == CloneKind::Copy {
            tracing::warn!(
                "{} cannot reflink: revision {} is a full copy and shares no data with its parent",
                self.job.dir().display(),
                header.id
            );
        }
        crate::failpoint::hit("receive-after-clone");
        let image = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&image_path)
            .map_err(Error::io("cannot open", &image_path))?;
        if manifest.image_size() != header.image_size {
            image
                .set_len(header.image_size)
                .map_err(Error::io("cannot resize image", &image_path))?;
            manifest.resize(header.image_size)?;
        }
        Ok(Incoming {
            rev,
            duration,
            image,
            image_path,
            manifest,
            sums_path,
            written: Vec::new(),
            data_bytes: 0,
            blocks: 0,
        })
    }

    /// Applies the revision's records up to its end record.
    fn patch<R: Read>(
        &self,
        header: &RevisionHeader,
        mut incoming: Incoming,
        reader: &mut StreamReader<R>,
    ) -> Result<Incoming> {
        let bs = header.block_size;
        loop {
            match reader.next_record().map_err(stream_error)? {
                Some(Record::Block(block)) => {
                    if block.block % 256 == 0 {
                        crate::interrupt::check()?;
                    }
                    apply_block(&mut incoming, &block, bs)?;
                }
                Some(Record::Zero { first, count }) => {
                    let start = first * bs;
                    let end = ((first + count) * bs).min(header.image_size);
                    zero_range(&incoming.image, &incoming.image_path, start, end - start)?;
                    for b in first..first + count {
                        incoming.manifest.set(b, Digest::ZERO)?;
                    }
                    incoming.wrote(first, count);
                }
                Some(Record::RevisionEnd { .. }) => return Ok(incoming),
                _ => unreachable_order()?,
            }
        }
    }

    /// Syncs, verifies every written block and the manifest, seals and commits.
    fn commit(&mut self, header: &RevisionHeader, mut incoming: Incoming) -> Result<Outcome> {
        incoming.manifest.sync()?;
        incoming
            .image
            .sync_all()
            .map_err(Error::io("cannot sync", &incoming.image_path))?;
        crate::failpoint::hit("receive-after-patch");
        verify_written(&mut incoming, &header.id)?;
        let digest = incoming.manifest.content_digest()?;
        if Some(digest) != stream::parse_digest(&header.manifest).ok() {
            return Err(Error::ReceiveVerifyFailed {
                id: header.id.clone(),
                detail: "its checksum manifest differs from the sender's".into(),
            });
        }
        for path in [&incoming.image_path, &incoming.sums_path] {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o440))
                .map_err(Error::io("cannot make read-only", path))?;
        }
        crate::failpoint::hit("receive-after-read-only");
        let mut rev = incoming.rev;
        self.job
            .commit_revision(&mut rev, incoming.duration, self.lock)?;
        tracing::info!(
            "Received revision {}: {} changed blocks, {} bytes written",
            header.id,
            incoming.blocks,
            incoming.data_bytes
        );
        Ok(Outcome::Received {
            blocks: incoming.blocks,
            data_bytes: incoming.data_bytes,
        })
    }
}

/// Writes one block's runs and records its digest.
fn apply_block(incoming: &mut Incoming, block: &BlockRecord, bs: u64) -> Result<()> {
    let offset = block.block * bs;
    for run in &block.runs {
        let at = offset + u64::from(run.offset);
        match run.kind {
            RunKind::Data => incoming
                .image
                .write_all_at(block.bytes(run), at)
                .map_err(Error::io("cannot write image", &incoming.image_path))?,
            RunKind::Zeros => zero_range(
                &incoming.image,
                &incoming.image_path,
                at,
                u64::from(run.len),
            )?,
        }
        if run.kind == RunKind::Data {
            incoming.data_bytes += u64::from(run.len);
        }
    }
    incoming.manifest.set(block.block, block.digest)?;
    incoming.wrote(block.block, 1);
    incoming.blocks += 1;
    Ok(())
}

/// Makes `len` bytes at `offset` zeros: a hole where the filesystem can punch.
fn zero_range(image: &File, path: &Path, offset: u64, len: u64) -> Result<()> {
    match sys::punch_hole(image, offset, len) {
        Ok(()) => Ok(()),
        Err(e) if sys::is_punch_unsupported(&e) => {
            let mut at = offset;
            while at < offset + len {
                let n = (offset + len - at).min(image::ZEROS.len() as u64) as usize;
                image
                    .write_all_at(&image::ZEROS[..n], at)
                    .map_err(Error::io("cannot write image", path))?;
                at += n as u64;
            }
            Ok(())
        }
        Err(e) => Err(Error::io("cannot punch a hole in", path)(e)),
    }
}

/// Reads back every block the stream wrote and compares it with its digest.
fn verify_written(incoming: &mut Incoming, id: &str) -> Result<()> {
    let bs = incoming.manifest.block_size();
    let size = incoming.manifest.image_size();
    let mut buf = PageBuf::zeroed(bs as usize);
    let mut bad = Vec::new();
    let written = std::mem::take(&mut incoming.written);
    for block in written
        .iter()
        .flat_map(|&(first, count)| first..first + count)
    {
        let len = (size - block * bs).min(bs) as usize;
        let n = read_full_at(&incoming.image, &mut buf[..len], block * bs)
            .map_err(Error::io("cannot read image", &incoming.image_path))?;
        buf[n..len].fill(0);
        if Digest::of(&buf[..len]) != incoming.manifest.get(block)? {
            bad.push(block * bs);
        }
    }
    if bad.is_empty() {
        return Ok(());
    }
    let shown: Vec<String> = bad.iter().take(10).map(u64::to_string).collect();
    Err(Error::ReceiveVerifyFailed {
        id: id.to_string(),
        detail: format!(
            "{} written blocks differ from the digests the stream carried (offsets {}{})",
            bad.len(),
            shown.join(", "),
            if bad.len() > 10 { ", ..." } else { "" }
        ),
    })
}

/// Reads a revision's records up to its end record without applying them
/// (each is still checked).
fn skip_revision<R: Read>(reader: &mut StreamReader<R>) -> Result<(u64, u64)> {
    let (mut blocks, mut data) = (0, 0);
    loop {
        match reader.next_record().map_err(stream_error)? {
            Some(Record::Block(b)) => {
                blocks += 1;
                data += b.data.len() as u64;
            }
            Some(Record::Zero { .. }) => {}
            Some(Record::RevisionEnd { .. }) => return Ok((blocks, data)),
            _ => unreachable_order()?,
        }
    }
}

/// An error of a full filesystem, as one clear message.
fn full_disk(e: Error, dir: &Path, id: &str) -> Error {
    match e {
        Error::NoSpace {
            source, mount, fs, ..
        } => Error::ReceiveFull {
            dir: dir.to_owned(),
            mount,
            fs,
            id: id.to_string(),
            source,
        },
        other => other,
    }
}

/// `--dry-run`: checks the stream through to its end and the base, and says
/// what would be received or skipped; writes nothing.
fn dry_run<R: Read>(
    dir: &Path,
    begin: &Begin,
    reader: &mut StreamReader<R>,
    mut summary: Summary,
) -> Result<Summary> {
    let job = if summary.created {
        None
    } else {
        Some(Job::open(dir)?)
    };
    match &job {
        Some(job) => {
            check_base(job, begin)?;
            summary.config_installed =
                begin.config.is_some() && std::fs::symlink_metadata(dir.join("config")).is_err();
        }
        None => {
            if let Some(base) = &begin.base {
                return Err(Error::ReceiveBaseMissing {
                    id: base.id.clone(),
                    dir: dir.to_owned(),
                });
            }
            summary.config_installed = begin.config.is_some();
        }
    }
    loop {
        match reader.next_record().map_err(stream_error)? {
            Some(Record::Revision(header)) => {
                let held = match &job {
                    Some(job) => already_held(job, &header)?,
                    None => false,
                };
                let (blocks, data_bytes) = skip_revision(reader)?;
                let outcome = if held {
                    Outcome::Skipped
                } else {
                    Outcome::Received { blocks, data_bytes }
                };
                summary.revisions.push((header.id, outcome));
            }
            Some(Record::End { .. }) => {}
            None => return Ok(summary),
            Some(_) => unreachable_order()?,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The read-ahead thread hands over every byte, in order, then EOF.
    #[test]
    fn read_ahead_passes_everything_through() {
        let data: Vec<u8> = (0..(3 << 20) + 12345)
            .map(|i| (i * 7 % 251) as u8)
            .collect();
        let mut reader = ReadAhead::new(std::io::Cursor::new(data.clone())).unwrap();
        let mut out = Vec::new();
        let mut buf = vec![0u8; 70_000];
        loop {
            let n = reader.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
        }
        assert!(out == data);
        assert_eq!(reader.read(&mut buf).unwrap(), 0);
    }
}
