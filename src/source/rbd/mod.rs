//! The `ceph-rbd` source: a snapshot `backy-<id>` per revision, the changes since
//! the parent's snapshot streamed from `rbd export-diff` into the clone, and
//! sampled verification against the snapshot through librbd.

pub mod cli;
pub mod diff;
pub mod error;
pub mod librbd;

use std::fs::File;
use std::path::Path;
use std::time::{Duration, Instant};

use super::flyingcircus::{Freeze, Outcome};
use super::{Plan, Source, SourceReport, Verified};
use crate::config::{CephOptions, SourceConfig};
use crate::error::{Error, Result};
use crate::image::reader::read_full_at;
use crate::image::sums::{Digest, Manifest};
use crate::image::writer::ImageWriter;
use crate::image::{VerifyReport, file_size};
use cli::Rbd;
use error::RbdError;

/// Bytes per verification sample (a RADOS object).
pub const SAMPLE_SIZE: u64 = 4 << 20;
/// Default time budget of sampled verification.
pub const DEFAULT_VERIFY_BUDGET: Duration = Duration::from_secs(300);
/// At most this many bytes of the snapshot's samples are read while the diff
/// streams (the rest when verifying).
pub const EARLY_SAMPLE_BYTES: u64 = 64 << 20;

/// What a thread prepares for sampled verification while the diff streams: the
/// librbd connection (its start-up is a good part of the verification's time),
/// the samples chosen, and the snapshot's bytes of the first of them.
struct Early {
    source: librbd::RbdImage,
    samples: Vec<u64>,
    /// The snapshot's bytes of `samples[..read.len()]`.
    read: Vec<Vec<u8>>,
    /// When the thread had connected and when it was done.
    connected: Duration,
    done: Duration,
}

/// Opens `pool/image@snap` through librbd, chooses the samples of a `size`
/// byte image and reads the snapshot's first ones (at most
/// [`EARLY_SAMPLE_BYTES`]).
fn prepare_verification(pool: &str, image: &str, snap: &str, size: u64) -> Result<Early> {
    let started = Instant::now();
    let source = librbd::RbdImage::open(pool, image, snap)?;
    let connected = started.elapsed();
    let samples = choose_samples(size);
    let mut read = Vec::new();
    let mut bytes = 0;
    for &index in &samples {
        let offset = index * SAMPLE_SIZE;
        let len = SAMPLE_SIZE.min(size - offset);
        if bytes + len > EARLY_SAMPLE_BYTES {
            break;
        }
        let mut buf = vec![0u8; len as usize];
        let n = source.read_at(offset, &mut buf)?;
        buf.truncate(n);
        read.push(buf);
        bytes += len;
    }
    Ok(Early {
        source,
        samples,
        read,
        connected,
        done: started.elapsed(),
    })
}

/// A Ceph RBD image as a backup source.
pub struct CephRbd {
    rbd: Rbd,
    pool: String,
    image: String,
    full_always: bool,
    whole_object: bool,
    full_every: Option<u64>,
    budget: Duration,
    /// The new revision's snapshot, once taken.
    snap: Option<String>,
    /// The parent's snapshot when it exists and may be trusted: diff from it.
    from: Option<String>,
    /// The image's snapshots (name, size) right after the new one was taken.
    snaps: Vec<(String, u64)>,
    size: u64,
    /// For `flyingcircus`: how to have the hypervisor take the snapshot.
    freeze: Option<Freeze>,
    /// The new revision's image starts as a clone of a parent's (else empty).
    has_parent: bool,
    /// Started by `patch`: the verification's connection and first samples.
    early: Option<std::thread::JoinHandle<Result<Early>>>,
    /// `stats.consistency` and `stats.consistency_reason` of the new revision.
    consistency: (&'static str, Option<String>),
}

/// Snapshot name of a revision.
pub fn snap_name(id: &str) -> String {
    format!("backy-{id}")
}

impl CephRbd {
    /// A source for a `ceph-rbd` config.
    pub fn new(config: &SourceConfig) -> Result<CephRbd> {
        let new = |pool: &String, image: &String, options: &CephOptions, freeze: Option<Freeze>| {
            CephRbd {
                rbd: Rbd::from_env(),
                pool: pool.clone(),
                image: image.clone(),
                full_always: options.full_always,
                whole_object: options.whole_object,
                full_every: options.full_every,
                budget: options
                    .verification_timeout
                    .map_or(DEFAULT_VERIFY_BUDGET, Duration::from_secs),
                snap: None,
                from: None,
                snaps: Vec::new(),
                size: 0,
                freeze,
                early: None,
                has_parent: false,
                consistency: ("crash", None),
            }
        };
        match config {
            SourceConfig::CephRbd {
                pool,
                image,
                options,
            } => Ok(new(pool, image, options, None)),
            SourceConfig::FlyingCircus {
                pool,
                image,
                vm,
                consul_acl_token,
                consul_address,
                freeze_timeout,
                options,
            } => Ok(new(
                pool,
                image,
                options,
                Some(Freeze::new(
                    vm,
                    consul_acl_token.as_deref(),
                    consul_address.as_deref(),
                    *freeze_timeout,
                )),
            )),
            other => Err(RbdError::NotCeph {
                kind: other.type_name(),
            }
            .into()),
        }
    }

    /// Takes snapshot `snap`: through the hypervisor with the guest frozen
    /// (`flyingcircus`), else (or when that does not happen) by ourselves.
    fn take_snapshot(&mut self, snap: &str) -> Result<()> {
        let spec = self.spec(snap);
        let create = |rbd: &Rbd| rbd.run(&["snap", "create", &spec]);
        let Some(freeze) = &self.freeze else {
            create(&self.rbd)?;
            self.consistency = ("crash", None);
            return Ok(());
        };
        let image = self.image_spec();
        let rbd = &self.rbd;
        let outcome = freeze.request(snap, || {
            Ok(rbd.snap_list(&image)?.iter().any(|(name, _)| name == snap))
        })?;
        self.consistency = match outcome {
            Outcome::Frozen => ("frozen", None),
            Outcome::Fallback(reason) => {
                tracing::warn!(
                    "Taking snapshot {spec} without freezing the guest of {}: the revision is only crash-consistent",
                    freeze.vm()
                );
                match create(rbd) {
                    Ok(_) => ("crash", Some(reason)),
                    Err(e) if snapshot_exists(&e) => {
                        tracing::info!(
                            "Snapshot {spec} exists already: the hypervisor took it (frozen) after freeze-timeout; using it"
                        );
                        (
                            "frozen",
                            Some(format!(
                                "the hypervisor took the snapshot late (after: {reason})"
                            )),
                        )
                    }
                    Err(e) => return Err(e),
                }
            }
        };
        Ok(())
    }

    fn spec(&self, snap: &str) -> String {
        format!("{}/{}@{snap}", self.pool, self.image)
    }

    fn image_spec(&self) -> String {
        format!("{}/{}", self.pool, self.image)
    }
}

impl Source for CephRbd {
    fn prepare(&mut self, plan: &Plan) -> Result<()> {
        let snap = snap_name(&plan.id);
        // One listing after the new snapshot serves three purposes: the parent's
        // snapshot exists, the new one's size, and (afterwards) what to remove.
        self.take_snapshot(&snap)?;
        self.snap = Some(snap.clone());
        self.snaps = self.rbd.snap_list(&self.image_spec())?;
        self.size = self
            .snaps
            .iter()
            .find(|(name, _)| *name == snap)
            .map(|&(_, size)| size)
            .ok_or_else(|| RbdError::SnapshotVanished {
                snapshot: self.spec(&snap),
            })?;
        self.has_parent = plan.parent.is_some();
        self.from = match &plan.parent {
            Some(_)
                if self
                    .full_every
                    .is_some_and(|n| plan.diffs_in_a_row + 1 >= n) =>
            {
                tracing::info!(
                    "The last {} backups used diffs and full-every is {}: comparing the whole snapshot this time",
                    plan.diffs_in_a_row,
                    self.full_every.unwrap_or_default()
                );
                None
            }
            Some(parent) if !self.full_always && !plan.parent_distrusted => {
                let from = snap_name(parent);
                if self.snaps.iter().any(|(name, _)| *name == from) {
                    Some(from)
                } else {
                    tracing::info!(
                        "Snapshot {} is gone: making a full backup",
                        self.spec(&from)
                    );
                    None
                }
            }
            Some(_) if plan.parent_distrusted => {
                tracing::info!("The parent revision is distrusted: making a full backup");
                None
            }
            _ => None,
        };
        Ok(())
    }

    fn size(&self) -> u64 {
        self.size
    }

    fn patch(
        &mut self,
        writer: &mut ImageWriter,
        progress: &mut dyn FnMut(u64),
    ) -> Result<SourceReport> {
        let snap = self.snap.clone().expect("prepare takes the snapshot");
        let to = self.spec(&snap);
        let mut args = vec!["export-diff".to_string()];
        if let Some(from) = &self.from {
            args.extend(["--from-snap".into(), from.clone()]);
            if self.whole_object {
                args.push("--whole-object".into());
            }
        }
        args.extend([to.clone(), "-".into()]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let expect = diff::Expect {
            from_snap: self.from.clone(),
            to_snap: Some(snap),
            size: Some(self.size),
        };
        tracing::info!(
            "{} backup of {to}{}",
            if self.from.is_some() {
                "Incremental"
            } else {
                "Full"
            },
            self.from
                .as_ref()
                .map(|f| format!(" since {f}"))
                .unwrap_or_default()
        );
        // Connect for the verification now, beside the stream: librbd's start-up
        // and the snapshot's samples then cost nothing after the patch.
        let (pool, image, snap_name, size) = (
            self.pool.clone(),
            self.image.clone(),
            self.snap.clone().expect("prepare takes the snapshot"),
            self.size,
        );
        self.early = std::thread::Builder::new()
            .name("rbd-verify".into())
            .spawn(move || prepare_verification(&pool, &image, &snap_name, size))
            .ok();
        // A new image (no parent) holds no data: reading ahead in it would only
        // make the kernel fill pages with zeros for its holes.
        let prefetch = if !self.has_parent {
            None
        } else {
            Some(diff::Prefetch {
                threads: writer.prefetcher()?,
                block_size: writer.block_size(),
                whole_blocks: !self.whole_object,
            })
        };
        let applied = self.rbd.stream(&args, |out, kill_rbd| {
            diff::apply_streamed(out, writer, &expect, prefetch, progress, kill_rbd).map_err(
                |source| {
                    RbdError::Diff {
                        snapshot: to.to_string(),
                        source,
                    }
                    .into()
                },
            )
        })?;
        let full = self.from.is_none();
        let mut stats = vec![
            ("backup_mode", if full { "full" } else { "diff" }.into()),
            ("consistency", self.consistency.0.into()),
        ];
        if let Some(reason) = &self.consistency.1 {
            stats.push(("consistency_reason", reason.clone().into()));
        }
        Ok(SourceReport {
            bytes_written: if full {
                applied.size
            } else {
                applied.bytes_in_records
            },
            stats,
        })
    }

    fn verify(
        &mut self,
        image: &File,
        path: &Path,
        manifest: &mut Manifest,
        progress: &mut dyn FnMut(u64),
    ) -> Result<Verified> {
        let snap = self.snap.clone().expect("prepare takes the snapshot");
        let started = Instant::now();
        let early = match self.early.take().map(std::thread::JoinHandle::join) {
            Some(Ok(early)) => {
                let early = early?;
                tracing::debug!(
                    "librbd connected in {:.2} s and read {} samples in {:.2} s beside the diff; waited {:.2} s for it",
                    early.connected.as_secs_f64(),
                    early.read.len(),
                    early.done.as_secs_f64(),
                    started.elapsed().as_secs_f64()
                );
                early
            }
            // The thread could not start or panicked (a bug): connect now.
            _ => prepare_verification(&self.pool, &self.image, &snap, self.size)?,
        };
        let Early {
            source,
            samples,
            read: mut early_read,
            ..
        } = early;
        let size = file_size(image, path)?;
        let snap_size = source.size()?;
        if size != snap_size {
            return Err(RbdError::SizeMismatch {
                snapshot: self.spec(&snap),
                image_size: size,
                snapshot_size: snap_size,
            }
            .into());
        }
        let mut report = VerifyReport::default();
        let mut early_read = early_read.drain(..);
        let (mut ours, mut theirs) = (
            vec![0u8; SAMPLE_SIZE as usize],
            vec![0u8; SAMPLE_SIZE as usize],
        );
        let mut checked = 0u64;
        for &index in &samples {
            if started.elapsed() > self.budget {
                break;
            }
            let offset = index * SAMPLE_SIZE;
            let len = SAMPLE_SIZE.min(size - offset) as usize;
            let n = read_full_at(image, &mut ours[..len], offset)
                .map_err(Error::io("cannot read", path))?;
            let same = match early_read.next() {
                Some(read) => read.len() == len && ours[..len] == read[..],
                None => {
                    let m = source.read_at(offset, &mut theirs[..len])?;
                    m == len && ours[..len] == theirs[..len]
                }
            };
            if n != len || !same {
                report.bad_offsets.push(offset);
            } else if let Some(bad) = check_digests(manifest, offset, &ours[..len])? {
                report.bad_offsets.push(bad);
            }
            checked += 1;
            progress(len as u64);
        }
        report.blocks = checked;
        let exhausted = checked < samples.len() as u64;
        if exhausted {
            tracing::warn!(
                "Sampled verification ran out of its {:?} budget after {checked} of {} blocks: the revision is only partly verified",
                self.budget,
                samples.len()
            );
        } else {
            tracing::info!(
                "Sampled verification: {checked} blocks of 4 MiB match snapshot {}",
                self.spec(&snap)
            );
        }
        let mut stats = vec![
            ("ceph-verification", "partial".into()),
            ("verification", "sampled".into()),
            ("verified_blocks", checked.into()),
        ];
        if exhausted {
            stats.push(("verification_budget_exhausted", true.into()));
        }
        Ok(Verified { report, stats })
    }

    fn cleanup(&mut self, newest_complete: &str) -> Result<()> {
        let keep = (!self.full_always).then(|| snap_name(newest_complete));
        // The listing prepare took: only this backup (holding the job's lock)
        // has made backy snapshots of this image since.
        for (snap, _) in std::mem::take(&mut self.snaps) {
            if !snap.starts_with("backy-") || Some(&snap) == keep.as_ref() {
                continue;
            }
            match self.rbd.run(&["snap", "rm", &self.spec(&snap)]) {
                Ok(_) => tracing::info!("Removed snapshot {}", self.spec(&snap)),
                Err(e) => tracing::warn!(
                    "Could not remove snapshot {} (protected?): {e}",
                    self.spec(&snap)
                ),
            }
        }
        Ok(())
    }

    fn abort(&mut self) {
        if let Some(snap) = self.snap.take()
            && let Err(e) = self.rbd.run(&["snap", "rm", &self.spec(&snap)])
        {
            tracing::warn!(
                "Could not remove snapshot {} of the failed backup: {e}",
                self.spec(&snap)
            );
        }
    }
}

/// Whether `rbd snap create` failed because the snapshot exists.
fn snapshot_exists(e: &Error) -> bool {
    match e {
        Error::Rbd(rbd) => match rbd.as_ref() {
            RbdError::Command(c) => {
                c.status.and_then(|s| s.code()) == Some(17)
                    || c.stderr.contains("(17)")
                    || c.stderr.contains("File exists")
            }
            _ => false,
        },
        _ => false,
    }
}

/// Which 4 MiB blocks to check: 1 % of them at random, at least one, plus the
/// tail block (often partial, and where size bugs show).
pub fn choose_samples(size: u64) -> Vec<u64> {
    let blocks = size.div_ceil(SAMPLE_SIZE);
    if blocks == 0 {
        return Vec::new();
    }
    let want = (blocks / 100).max(1) as usize;
    let mut picked: Vec<u64> =
        rand::seq::index::sample(&mut rand::rng(), blocks as usize, want.min(blocks as usize))
            .into_iter()
            .map(|i| i as u64)
            .collect();
    if !picked.contains(&(blocks - 1)) {
        picked.insert(0, blocks - 1);
    }
    picked
}

/// Compares the manifest's digests with a sample read from the image; returns the
/// offset of the first block that differs.
fn check_digests(manifest: &mut Manifest, offset: u64, data: &[u8]) -> Result<Option<u64>> {
    let bs = manifest.block_size();
    for (i, block) in data.chunks(bs as usize).enumerate() {
        let at = offset + i as u64 * bs;
        if manifest.get(at / bs)? != Digest::of(block) {
            return Ok(Some(at));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_cover_one_percent_and_the_tail() {
        assert!(choose_samples(0).is_empty());
        assert_eq!(choose_samples(1), vec![0]);
        let s = choose_samples(SAMPLE_SIZE * 1000 + 5);
        assert_eq!(s.len(), 11);
        assert_eq!(s[0], 1000);
        let mut d = s.clone();
        d.sort();
        d.dedup();
        assert_eq!(d.len(), s.len());
        let s = choose_samples(SAMPLE_SIZE * 50);
        assert!(s.len() <= 2 && s.contains(&49));
    }
}
