//! `backy backup TAGS`: make one revision.

use std::collections::BTreeSet;
use std::fs::OpenOptions;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Instant;

use crate::config::VerificationMode;
use crate::error::{Error, Result};
use crate::failpoint;
use crate::image::sums::{BLOCK_SIZE, Manifest};
use crate::image::writer::ImageWriter;
use crate::image::{self, CloneKind};
use crate::job::{Job, VerifyOutcome};
use crate::progress::Progress;
use crate::revision::{self, Revision, Trust};
use crate::source;

/// Parses `daily,weekly` into a tag set.
pub fn parse_tags(text: &str) -> Result<BTreeSet<String>> {
    let tags: BTreeSet<String> = text
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(String::from)
        .collect();
    if tags.is_empty() {
        return Err(Error::NoTags { text: text.into() });
    }
    if let Some(bad) = tags
        .iter()
        .find(|t| t.chars().any(|c| c.is_whitespace() || c.is_control()))
    {
        return Err(Error::TagWhitespace { tag: bad.clone() });
    }
    for tag in &tags {
        check_tag(tag)?;
    }
    Ok(tags)
}

/// Refuses a tag that `-r` could never select (see [`crate::spec::tag_problem`]).
pub fn check_tag(tag: &str) -> Result<()> {
    match crate::spec::tag_problem(tag) {
        Some(reason) => Err(Error::BadTag {
            tag: tag.into(),
            reason,
        }),
        None => Ok(()),
    }
}

/// Runs one backup of the job in `dir`.
pub fn run(dir: &Path, tags: &str, allow_copy_flag: bool) -> Result<()> {
    let started = Instant::now();
    let tags = parse_tags(tags)?;
    let mut job = Job::open(dir)?;
    let config = job.config()?;
    let lock = job.lock_backup()?;
    for id in job.remove_incomplete(&lock)? {
        tracing::warn!("Removed incomplete revision {id}");
    }
    job.update_last()?;
    let mut source = source::open(&config.source)?;
    let allow_copy = allow_copy_flag || config.allow_copy;

    for d in &job.damaged {
        tracing::warn!("{}", d.describe());
    }
    let parent = job.newest_complete().cloned();
    let mut rev = Revision::new(
        revision::new_id(),
        parent.as_ref().map(|p| p.id.clone()),
        tags,
    );
    let (timestamp, moved) =
        revision::timestamp_after(rev.timestamp, parent.as_ref().map(|p| p.timestamp));
    if let (true, Some(p)) = (moved, &parent) {
        tracing::warn!(
            "The clock ({}) is behind the newest revision {} ({}): dating revision {} {} so it stays the newest; check the system clock",
            rev.timestamp.format("%Y-%m-%d %H:%M:%S UTC"),
            p.id,
            p.timestamp.format("%Y-%m-%d %H:%M:%S UTC"),
            rev.id,
            timestamp.format("%Y-%m-%d %H:%M:%S%.6f UTC"),
        );
    }
    rev.timestamp = timestamp;
    tracing::info!(
        "Creating revision {} (parent {}) with tags {}",
        rev.id,
        rev.parent.as_deref().unwrap_or("none"),
        rev.tags.iter().cloned().collect::<Vec<_>>().join(",")
    );
    job.begin_revision(&rev, &lock)?;
    failpoint::hit("after-incomplete-rev");

    let plan = source::Plan {
        id: rev.id.clone(),
        parent: rev.parent.clone(),
        parent_distrusted: parent
            .as_ref()
            .is_some_and(|p| p.trust == Trust::Distrusted),
        diffs_in_a_row: job
            .revisions()
            .iter()
            .rev()
            .filter(|r| r.is_complete())
            .take_while(|r| r.stats.get("backup_mode").and_then(|m| m.as_str()) == Some("diff"))
            .count() as u64,
    };
    let result = source.prepare(&plan).and_then(|()| {
        let how = (allow_copy, config.verification);
        match make_revision(&job, &mut rev, parent.as_ref(), source.as_mut(), how)? {
            Made::Complete => Ok(()),
            Made::ParentDamaged { detail, failure } => heal(
                &mut job,
                &mut rev,
                parent.as_ref().expect("damaged parent"),
                source.as_mut(),
                how,
                (detail, failure),
            ),
        }
    });
    match result {
        Ok(()) => {}
        Err(e) => {
            // Leave nothing that looks like a revision behind; if even that fails the
            // next backup removes it, since it has no duration.
            source.abort();
            if let Err(cleanup) = job.discard_incomplete(&rev.id, &lock) {
                tracing::warn!("Could not remove incomplete revision {}: {cleanup}", rev.id);
            }
            return Err(e);
        }
    }

    job.commit_revision(&mut rev, started.elapsed().as_secs_f64(), &lock)?;
    failpoint::hit("after-last");
    if let Err(e) = source.cleanup(&rev.id) {
        tracing::warn!(
            "Revision {} is complete, but cleaning up the source failed: {e}",
            rev.id
        );
    }
    verify_newest_distrusted(&mut job);
    tracing::info!(
        "Revision {} complete: {} bytes changed in {:.1} s",
        rev.id,
        rev.stat_u64("bytes_changed").unwrap_or(0),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// How [`make_revision`] ended, short of an error.
enum Made {
    /// Verified and sealed.
    Complete,
    /// Verification failed in blocks this backup did not write: they came from
    /// the parent's image, which no longer matches its manifest. The new image
    /// and manifest are removed; `failure` is what to report if not healed.
    ParentDamaged {
        /// Which of the parent's blocks differ.
        detail: String,
        /// The verification error.
        failure: Error,
    },
}

/// The parent is damaged on disk: mark it distrusted (so no later backup trusts
/// its manifest and `status` shows it) and, where the source can, make the
/// revision again comparing every block against the source, so the job heals
/// in this run instead of failing verification forever.
fn heal(
    job: &mut Job,
    rev: &mut Revision,
    parent: &Revision,
    source: &mut dyn source::Source,
    how: (bool, VerificationMode),
    (detail, failure): (String, Error),
) -> Result<()> {
    let damaged = job.update_rev(&parent.id, |r| r.trust = Trust::Distrusted)?;
    if !source.patch_again_distrusting_parent() {
        tracing::warn!(
            "Parent {} is damaged on disk: {detail}; marked it distrusted, so the next backup compares the whole source",
            damaged.id
        );
        return Err(failure);
    }
    tracing::warn!(
        "Parent {} is damaged on disk: {detail}; marked it distrusted; making revision {} again, comparing the whole source",
        damaged.id,
        rev.id
    );
    match make_revision(job, rev, Some(&damaged), source, how)? {
        Made::Complete => {
            tracing::info!(
                "Revision {} is healed: it matches the source although parent {} is damaged",
                rev.id,
                damaged.id
            );
            Ok(())
        }
        Made::ParentDamaged { failure, .. } => Err(failure),
    }
}

/// The error for a revision whose verification found differing blocks.
fn verification_failed(id: &str, report: &image::VerifyReport, detail: &str) -> Error {
    let bad = &report.bad_offsets;
    let shown: Vec<String> = bad.iter().take(10).map(u64::to_string).collect();
    Error::VerificationFailed {
        id: id.to_string(),
        detail: format!(
            "{} of {} blocks checked differ from the source (offsets {}{}){detail}",
            bad.len(),
            report.blocks,
            shown.join(", "),
            if bad.len() > 10 { ", ..." } else { "" }
        ),
    }
}

/// Why `verification: written` cannot stand for a full read of this revision
/// (see [`crate::image::written`]); `None` when it can.
fn written_refused(
    parent: Option<&Revision>,
    trusted: bool,
    kind: CloneKind,
    source: &dyn source::Source,
) -> Option<&'static str> {
    let Some(parent) = parent else {
        return Some("there is no parent to share data with");
    };
    let parent_checked = match parent.stats.get("verification").and_then(|v| v.as_str()) {
        Some("full" | "written") => true,
        _ => {
            parent.trust == Trust::Verified
                && parent
                    .verification()
                    .is_some_and(|v| v.scope == revision::verification::Scope::Full)
        }
    };
    if !source.verifies_written() {
        Some("this source does not support it")
    } else if !trusted || parent.trust == Trust::Distrusted {
        Some("the parent is not trusted")
    } else if kind != CloneKind::Reflink {
        Some("the image is a copy, not a reflink of its parent")
    } else if !parent_checked {
        Some("the parent was not verified in full")
    } else {
        None
    }
}

/// Test faults: change the synced image behind backy's back, in the first
/// block this backup wrote (`tamper-written`) or the first data block it did
/// not write (`tamper-unwritten`); verification must notice either.
fn tamper(path: &Path, manifest: &mut Manifest, changed: &image::writer::BlockSet) -> Result<()> {
    let written = failpoint::active("tamper-written");
    if !written && !failpoint::active("tamper-unwritten") {
        return Ok(());
    }
    let mut target = None;
    for block in 0..manifest.blocks() {
        if changed.contains(block) == written && !manifest.get(block)?.is_zero() {
            target = Some(block * manifest.block_size());
            break;
        }
    }
    let Some(at) = target else { return Ok(()) };
    use std::os::unix::fs::FileExt;
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(Error::io("cannot open", path))?;
    let mut byte = [0u8; 1];
    f.read_exact_at(&mut byte, at)
        .and_then(|()| f.write_all_at(&[!byte[0]], at))
        .and_then(|()| f.sync_all())
        .map_err(Error::io("cannot tamper with", path))?;
    tracing::warn!(
        "Failpoint: flipped the byte at offset {at} of {}",
        path.display()
    );
    Ok(())
}

/// Clones, patches, verifies and seals the revision's image and manifest; on
/// success `rev.stats` holds everything but `duration`. `how` is whether full
/// copies are allowed and how to verify.
fn make_revision(
    job: &Job,
    rev: &mut Revision,
    parent: Option<&Revision>,
    source: &mut dyn source::Source,
    (allow_copy, mode): (bool, VerificationMode),
) -> Result<Made> {
    let image_path = job.image_path(&rev.id);
    let sums_path = job.sums_path(&rev.id);

    let kind = match parent {
        Some(p) => image::clone_or_copy_sparse(&job.image_path(&p.id), &image_path, allow_copy)?,
        None => {
            OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&image_path)
                .map_err(Error::io("cannot create", &image_path))?;
            if image::probe_reflink(job.dir())? {
                CloneKind::Reflink
            } else if allow_copy {
                CloneKind::Copy
            } else {
                return Err(image::no_reflink(&image_path));
            }
        }
    };
    if kind == CloneKind::Copy {
        tracing::warn!(
            "{} cannot reflink: revision {} is a full copy and shares no data with its parent",
            job.dir().display(),
            rev.id
        );
    }

    failpoint::hit("after-clone");
    let phase = Instant::now();
    let (manifest, trusted) = parent_manifest(job, parent, &sums_path, allow_copy)?;
    let image_file = crate::sys::open_regular(&image_path, true)
        .map_err(Error::io("cannot open", &image_path))?;
    let written = mode == VerificationMode::Written
        && match written_refused(parent, trusted, kind, source) {
            None => true,
            Some(why) => {
                tracing::info!(
                    "Verifying revision {} in full instead of what it wrote: {why}",
                    rev.id
                );
                false
            }
        };
    let mut writer = ImageWriter::new(image_file, &image_path, manifest, trusted);
    if source.verifies_while_patching() && !written {
        writer.verify_while_writing()?;
    }

    if source.size() == 0
        && let Some(p) = parent
    {
        let parent_size = std::fs::metadata(job.image_path(&p.id)).map_or(0, |m| m.len());
        if parent_size > 0 {
            tracing::warn!(
                "The source is empty (0 bytes) but parent {} has {parent_size}: revision {} will be empty; check the source (a truncated image, the wrong device?) before the revisions that hold its data expire",
                p.id,
                rev.id
            );
            rev.set_stat("source_shrunk_to_zero", true);
        }
    }
    let mut progress = Progress::new("backup", source.size());
    let report = source.patch(&mut writer, &mut |n| progress.inc(n))?;
    progress.finish();
    let verified_inline = writer.end_verification()?;
    let changed = writer.changed();
    let (image_file, mut manifest, stats) = writer.finish()?;
    failpoint::hit("after-patch");
    tamper(&image_path, &mut manifest, &changed)?;
    tracing::debug!(
        "Patched {}the image in {:.2} s: {stats:?}",
        if verified_inline.is_some() {
            "and verified "
        } else {
            ""
        },
        phase.elapsed().as_secs_f64()
    );
    let phase = Instant::now();

    let mut moved = image::writer::BlockSet::default();
    let verified = match verified_inline {
        Some(report) => source::Verified::full(report),
        None if written => {
            let parent = parent.expect("written verification has a parent");
            let parent_path = job.image_path(&parent.id);
            let parent_image = crate::sys::open_regular(&parent_path, false)
                .map_err(Error::io("cannot open", &parent_path))?;
            let mut parent_manifest = Manifest::open(&job.sums_path(&parent.id), false)?;
            let mut progress = Progress::new("verify", manifest.image_size());
            let w = image::written::verify_written(
                (&image_file, &image_path),
                &mut manifest,
                &parent_image,
                &mut parent_manifest,
                &changed,
                &mut |n| progress.inc(n),
            )?;
            progress.finish();
            if let Some(why) = &w.fallback {
                tracing::info!("Read revision {} back in full: {why}", rev.id);
            }
            moved = w.moved;
            source::Verified {
                report: w.report,
                stats: vec![
                    (
                        "verification",
                        if w.blocks_proven > 0 {
                            "written"
                        } else {
                            "full"
                        }
                        .into(),
                    ),
                    ("verification_blocks_read", w.blocks_read.into()),
                    ("verification_blocks_proven", w.blocks_proven.into()),
                ],
            }
        }
        None => {
            let mut progress = Progress::new("verify", manifest.image_size());
            let verified = source.verify(&image_file, &image_path, &mut manifest, &mut |n| {
                progress.inc(n)
            })?;
            progress.finish();
            verified
        }
    };
    let bad = &verified.report.bad_offsets;
    if !bad.is_empty() {
        // With the parent's manifest trusted, a block this backup did not write
        // is the parent's: its image no longer holds what its manifest says.
        let bs = manifest.block_size();
        let inherited: Vec<u64> = bad
            .iter()
            .copied()
            .filter(|&at| !changed.contains(at / bs) && !moved.contains(at / bs))
            .collect();
        if trusted && !inherited.is_empty() {
            let parent = parent.expect("a trusted manifest comes from a parent");
            drop(image_file);
            for path in [&image_path, &sums_path] {
                std::fs::remove_file(path).map_err(Error::io("cannot remove", path))?;
            }
            let shown: Vec<String> = inherited.iter().take(10).map(u64::to_string).collect();
            return Ok(Made::ParentDamaged {
                detail: format!(
                    "{} of its blocks, which this backup shared unchanged, differ from its checksums (offsets {}{})",
                    inherited.len(),
                    shown.join(", "),
                    if inherited.len() > 10 { ", ..." } else { "" }
                ),
                failure: verification_failed(
                    &rev.id,
                    &verified.report,
                    &format!(
                        ", {} of them shared unchanged with parent {}, which is damaged and now distrusted",
                        inherited.len(),
                        parent.id
                    ),
                ),
            });
        }
        return Err(verification_failed(&rev.id, &verified.report, ""));
    }

    failpoint::hit("after-verify");
    tracing::debug!(
        "Verified in {:.2} s: {} blocks checked, {} bytes of the image read back",
        phase.elapsed().as_secs_f64(),
        verified.report.blocks,
        verified.report.bytes_read
    );
    for path in [&image_path, &sums_path] {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o440))
            .map_err(Error::io("cannot make read-only", path))?;
    }
    failpoint::hit("after-read-only");
    rev.set_stat("bytes_written", report.bytes_written);
    rev.set_stat("bytes_changed", stats.bytes_changed);
    rev.set_stat("blocks_unchanged", stats.blocks_unchanged);
    rev.set_stat("reflink", kind == CloneKind::Reflink);
    for (key, value) in report.stats.into_iter().chain(verified.stats) {
        rev.set_stat(key, value);
    }
    Ok(Made::Complete)
}

/// The new revision's manifest: a clone of the parent's when the parent has a
/// usable one and is trusted, else a fresh one whose digests are not trusted.
fn parent_manifest(
    job: &Job,
    parent: Option<&Revision>,
    sums_path: &Path,
    allow_copy: bool,
) -> Result<(Manifest, bool)> {
    if let Some(p) = parent {
        let parent_sums = job.sums_path(&p.id);
        let usable = p.trust != Trust::Distrusted
            && match Manifest::open(&parent_sums, false) {
                Ok(m) => m.block_size() == BLOCK_SIZE,
                Err(e) if parent_sums.exists() => {
                    tracing::warn!("{e}");
                    false
                }
                Err(_) => false,
            };
        if usable {
            image::clone_or_copy_sparse(&parent_sums, sums_path, allow_copy)?;
            std::fs::set_permissions(sums_path, std::fs::Permissions::from_mode(0o640))
                .map_err(Error::io("cannot make writable", sums_path))?;
            return Ok((Manifest::open(sums_path, true)?, true));
        }
        if p.trust == Trust::Distrusted {
            tracing::info!(
                "Parent {} is distrusted: comparing the whole source against it",
                p.id
            );
        } else {
            tracing::info!(
                "Parent {} has no checksum manifest: comparing against its image",
                p.id
            );
        }
    }
    Ok((Manifest::create(sums_path, 0)?, false))
}

/// As backy 2.5: after a backup, re-check the newest distrusted revision, so a
/// false alarm clears itself and a real one stays on record. Never fails the backup.
fn verify_newest_distrusted(job: &mut Job) {
    let Some(rev) = job
        .revisions()
        .iter()
        .rev()
        .find(|r| r.is_complete() && r.trust == Trust::Distrusted)
        .cloned()
    else {
        return;
    };
    tracing::info!("Verifying distrusted revision {}", rev.id);
    match job.verify_revision(&rev.id, None).map(|c| c.outcome) {
        Ok(VerifyOutcome::Good) => tracing::info!("Revision {} is now verified", rev.id),
        Ok(VerifyOutcome::Bad) => tracing::warn!("Revision {} stays distrusted", rev.id),
        Ok(VerifyOutcome::NoManifest) => {
            tracing::info!(
                "Revision {} has no checksum manifest to verify against",
                rev.id
            )
        }
        Err(e) => tracing::warn!("Could not verify revision {}: {e}", rev.id),
    }
}
