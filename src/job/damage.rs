//! Following damage through shared extents.
//!
//! Revisions are reflink clones of each other, so one bad extent on disk is a
//! bad block in every revision that still maps it. When block B of revision R
//! is bad, each other complete revision S is looked at, at B:
//!
//! - S maps B to the same physical extent as R (FIEMAP, [`block_location`])
//!   and its manifest expects the same checksum there (or it has no manifest):
//!   S holds the same bad bytes. It is distrusted without being read
//!   (`verification.scope: shared`).
//! - Otherwise S's block B is its own bytes. If S is not being verified in
//!   full anyway, its block B is read against its own manifest; a bad one is
//!   distrusted (`scope: blocks`) and followed further in turn; revisions
//!   that share *its* bytes there are then distrusted without being read.
//!
//! A block found bad is never read again in the same run, in no revision that
//! is known to hold it.
//!
//! Where the filesystem has no FIEMAP nothing is shared, and nothing spreads.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

use chrono::Utc;

use super::Job;
use super::verify::{Checked, VerifyOutcome, describe_bad};
use crate::error::{Error, Result};
use crate::image::fiemap::{self, Extent};
use crate::image::scrub::{self, BadBlock, block_location};
use crate::image::sums::{BLOCK_SIZE, Digest, Manifest};
use crate::revision::{Scope, Trust, Verification};

/// Revisions that hold one bad block in the same extent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedDamage {
    /// The block's offset.
    pub offset: u64,
    /// The revision it was found in, then those that share its extent.
    pub revisions: Vec<String>,
}

/// What [`Damage::follow`] found.
#[derive(Debug, Default)]
pub(super) struct Followed {
    /// The revisions it distrusted (recorded in their `.rev` already).
    pub checked: Vec<Checked>,
    /// Bad blocks that other revisions share.
    pub shared: Vec<SharedDamage>,
}

/// A revision the damage reached, while following.
#[derive(Clone)]
struct Reached {
    from: String,
    offsets: BTreeSet<u64>,
    blocks_read: u64,
    bad: Vec<BadBlock>,
}

/// What is known while following damage in one `verify` run.
#[derive(Default)]
pub(super) struct Damage {
    /// Per revision: its image's extents (`None`: no FIEMAP there).
    extents: HashMap<String, Option<Vec<Extent>>>,
    /// Per revision: its manifest (`None`: none, or unusable).
    manifests: HashMap<String, Option<Manifest>>,
    /// Per revision: the offsets known to be bad.
    known_bad: HashMap<String, BTreeSet<u64>>,
    /// Per revision: the offsets read on their own and found good.
    known_good: HashMap<String, BTreeSet<u64>>,
    /// The revisions the damage reached so far, over every `follow`.
    reached: BTreeMap<String, Reached>,
}

/// Whether two revisions hold the same bytes at a block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sharing {
    /// Same extent, same expected checksum: the same bad bytes.
    Same,
    /// Its own bytes (or nothing there): check it on its own.
    Own,
    /// The revision has no block there.
    Absent,
}

impl Damage {
    /// Nothing known yet.
    pub fn new() -> Damage {
        Damage::default()
    }

    /// Revision `from` has bad blocks at `offsets`: distrusts the revisions that
    /// share them (reading, at those blocks, the ones not in `checking`).
    pub fn follow(
        &mut self,
        job: &mut Job,
        from: &str,
        offsets: &[u64],
        checking: &BTreeSet<String>,
    ) -> Result<Followed> {
        self.known_bad
            .entry(from.to_string())
            .or_default()
            .extend(offsets);
        let others: Vec<String> = job
            .revisions()
            .iter()
            .rev()
            .filter(|r| r.is_complete())
            .map(|r| r.id.clone())
            .collect();
        let mut reached = std::mem::take(&mut self.reached);
        let mut order: Vec<String> = Vec::new();
        let mut shared: Vec<SharedDamage> = Vec::new();
        let mut work = VecDeque::from([(from.to_string(), offsets.to_vec())]);
        while let Some((source, bad)) = work.pop_front() {
            let mut sharers: BTreeMap<(String, u64), Vec<String>> = BTreeMap::new();
            for other in others.iter().filter(|o| **o != source) {
                let mut own = Vec::new();
                for &offset in &bad {
                    if self.is_known_bad(other, offset)
                        || self
                            .known_good
                            .get(other)
                            .is_some_and(|g| g.contains(&offset))
                    {
                        continue;
                    }
                    let holder = match self.sharing(job, &source, other, offset)? {
                        Sharing::Same => Some(source.clone()),
                        // Found bad on its own meanwhile, and shared by `other`?
                        Sharing::Own => self.bad_sharer(job, other, offset, &source)?,
                        Sharing::Absent => None,
                    };
                    match holder {
                        Some(holder) => {
                            self.mark_bad(other, offset);
                            sharers
                                .entry((holder.clone(), offset))
                                .or_default()
                                .push(other.clone());
                            reach(&mut reached, &mut order, other, &holder)
                                .offsets
                                .insert(offset);
                        }
                        None if !checking.contains(other)
                            && self.block_len(job, other, offset).is_some() =>
                        {
                            own.push(offset)
                        }
                        None => {}
                    }
                }
                if own.is_empty() || self.manifest(job, other).is_none() {
                    continue;
                }
                let (read, found) = self.check_blocks(job, other, &own)?;
                let good = self.known_good.entry(other.clone()).or_default();
                good.extend(
                    own.iter()
                        .filter(|o| !found.iter().any(|b| b.offset == **o)),
                );
                let entry = reach(&mut reached, &mut order, other, &source);
                entry.blocks_read += read;
                if found.is_empty() {
                    continue;
                }
                tracing::error!(
                    "Revision {other} (following the damage of revision {source}): {}",
                    describe_bad(&found)
                );
                let offsets: Vec<u64> = found.iter().map(|b| b.offset).collect();
                for &o in &offsets {
                    self.mark_bad(other, o);
                    entry.offsets.insert(o);
                }
                entry.bad.extend(found);
                work.push_back((other.clone(), offsets));
            }
            for ((holder, offset), list) in sharers {
                let mut revisions = vec![holder];
                revisions.extend(list);
                shared.push(SharedDamage { offset, revisions });
            }
        }
        log_shared(&shared);
        let mut checked = Vec::new();
        for id in order {
            let r = reached[&id].clone();
            if !r.offsets.is_empty() {
                checked.push(record(job, &id, r)?);
            }
        }
        self.reached = reached;
        Ok(Followed { checked, shared })
    }

    /// A revision other than `source` known bad at `offset` whose bytes there
    /// `other` shares.
    fn bad_sharer(
        &mut self,
        job: &Job,
        other: &str,
        offset: u64,
        source: &str,
    ) -> Result<Option<String>> {
        let mut holders: Vec<String> = self
            .known_bad
            .iter()
            .filter(|(id, bad)| *id != other && *id != source && bad.contains(&offset))
            .map(|(id, _)| id.clone())
            .collect();
        holders.sort();
        for holder in holders {
            if self.sharing(job, &holder, other, offset)? == Sharing::Same {
                return Ok(Some(holder));
            }
        }
        Ok(None)
    }

    fn is_known_bad(&self, id: &str, offset: u64) -> bool {
        self.known_bad.get(id).is_some_and(|s| s.contains(&offset))
    }

    fn mark_bad(&mut self, id: &str, offset: u64) {
        self.known_bad
            .entry(id.to_string())
            .or_default()
            .insert(offset);
    }

    /// Whether `other` holds the bytes `source` holds at `offset`.
    fn sharing(&mut self, job: &Job, source: &str, other: &str, offset: u64) -> Result<Sharing> {
        let (Some(source_len), Some(other_len)) = (
            self.block_len(job, source, offset),
            self.block_len(job, other, offset),
        ) else {
            return Ok(Sharing::Absent);
        };
        let here = self
            .extents(job, source)
            .and_then(|e| block_location(e, offset, source_len));
        let there = self
            .extents(job, other)
            .and_then(|e| block_location(e, offset, other_len));
        if here.is_none() || here != there {
            return Ok(Sharing::Own);
        }
        let block = offset / BLOCK_SIZE;
        let expected = self.digest(job, source, block)?;
        Ok(match self.digest(job, other, block)? {
            // Without a manifest the bytes are all we know: the same bad ones.
            None => Sharing::Same,
            Some(d) if Some(d) == expected => Sharing::Same,
            Some(_) => Sharing::Own,
        })
    }

    /// Length of the block at `offset` of `id`'s image; `None` past its end.
    fn block_len(&mut self, job: &Job, id: &str, offset: u64) -> Option<u64> {
        let meta = std::fs::symlink_metadata(job.image_path(id)).ok()?;
        let size = meta.is_file().then_some(meta.len())?;
        (offset < size).then(|| (size - offset).min(BLOCK_SIZE))
    }

    fn extents(&mut self, job: &Job, id: &str) -> Option<&[Extent]> {
        self.extents
            .entry(id.to_string())
            .or_insert_with(|| {
                let path = job.image_path(id);
                let found = crate::sys::open_regular(&path, false)
                    .and_then(|f| fiemap::extents(&f, false));
                match found {
                    Ok(list) => Some(list),
                    Err(e) => {
                        if !fiemap::is_unsupported(&e) {
                            tracing::warn!(
                                "Cannot tell which extents {} shares ({e}): damage is not followed into it",
                                path.display()
                            );
                        }
                        None
                    }
                }
            })
            .as_deref()
    }

    fn manifest(&mut self, job: &Job, id: &str) -> Option<&mut Manifest> {
        self.manifests
            .entry(id.to_string())
            .or_insert_with(|| {
                Manifest::open(&job.sums_path(id), false)
                    .ok()
                    .filter(|m| m.block_size() == BLOCK_SIZE)
            })
            .as_mut()
    }

    fn digest(&mut self, job: &Job, id: &str, block: u64) -> Result<Option<Digest>> {
        match self.manifest(job, id) {
            Some(m) if block < m.blocks() => Ok(Some(m.get(block)?)),
            _ => Ok(None),
        }
    }

    /// Reads blocks at `offsets` of `id` against its manifest: the blocks
    /// read and the bad ones.
    fn check_blocks(
        &mut self,
        job: &Job,
        id: &str,
        offsets: &[u64],
    ) -> Result<(u64, Vec<BadBlock>)> {
        let path = job.image_path(id);
        let file = job.open_image(id)?;
        let manifest = self.manifest(job, id).expect("checked by the caller");
        let mut blocks: Vec<u64> = offsets
            .iter()
            .map(|o| o / BLOCK_SIZE)
            .filter(|&b| b < manifest.blocks())
            .collect();
        blocks.sort_unstable();
        blocks.dedup();
        match scrub::scrub(&file, &path, manifest, Some(&blocks), &mut |_| {}) {
            Ok(report) => Ok((report.blocks_checked, report.bad)),
            Err(e @ Error::Interrupted { .. }) => Err(e),
            Err(e) => {
                tracing::warn!("Cannot follow the damage into revision {id}: {e}");
                Ok((0, Vec::new()))
            }
        }
    }
}

/// The record of `id` in `reached`, made (from `source`) if new; `order`
/// lists each revision touched in this `follow` once.
fn reach<'r>(
    reached: &'r mut BTreeMap<String, Reached>,
    order: &mut Vec<String>,
    id: &str,
    source: &str,
) -> &'r mut Reached {
    if !order.iter().any(|o| o == id) {
        order.push(id.to_string());
    }
    reached.entry(id.to_string()).or_insert_with(|| Reached {
        from: source.to_string(),
        offsets: BTreeSet::new(),
        blocks_read: 0,
        bad: Vec::new(),
    })
}

/// "3 revisions share the damaged extent at offset 65536: A, B, C", one line
/// per set of revisions.
fn log_shared(shared: &[SharedDamage]) {
    let mut by_set: BTreeMap<&[String], Vec<u64>> = BTreeMap::new();
    for s in shared {
        by_set.entry(&s.revisions).or_default().push(s.offset);
    }
    for (revisions, offsets) in by_set {
        tracing::error!("{}", describe_shared(revisions, &offsets));
    }
}

/// The sentence for revisions that share damaged extents at `offsets`.
pub fn describe_shared(revisions: &[String], offsets: &[u64]) -> String {
    let shown: Vec<String> = offsets.iter().take(20).map(u64::to_string).collect();
    let more = if offsets.len() > 20 {
        format!(" and {} more", offsets.len() - 20)
    } else {
        String::new()
    };
    format!(
        "{} revisions share the damaged extent{} at offset{} {}{more}: {}",
        revisions.len(),
        if offsets.len() > 1 { "s" } else { "" },
        if offsets.len() > 1 { "s" } else { "" },
        shown.join(", "),
        revisions.join(", ")
    )
}

/// Distrusts `id`, reached by following damage, and records how.
fn record(job: &mut Job, id: &str, r: Reached) -> Result<Checked> {
    let verification = Verification {
        time: Utc::now(),
        scope: if r.blocks_read > 0 {
            Scope::Blocks
        } else {
            Scope::Shared
        },
        blocks_checked: r.blocks_read,
        bad_blocks: r.offsets.len() as u64,
        bad_offsets: r.offsets.into_iter().collect(),
        damage_from: Some(r.from),
        error: None,
    };
    job.update_rev(id, |rev| {
        rev.trust = Trust::Distrusted;
        rev.set_verification(&verification);
    })?;
    Ok(Checked {
        id: id.to_string(),
        outcome: VerifyOutcome::Bad,
        verification: Some(verification),
        bad: r.bad,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_damage_is_described_with_count_offsets_and_ids() {
        let ids = vec!["a".to_string(), "b".into(), "c".into()];
        assert_eq!(
            describe_shared(&ids, &[65536]),
            "3 revisions share the damaged extent at offset 65536: a, b, c"
        );
        assert_eq!(
            describe_shared(&ids[..2], &[0, 65536]),
            "2 revisions share the damaged extents at offsets 0, 65536: a, b"
        );
    }
}
