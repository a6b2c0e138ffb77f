//! The pure part of space accounting: physical intervals of several holders
//! (files) in, bytes per set of holders out, in one sweep over the sorted
//! interval ends.
//!
//! Each point of the device lies in some intervals; the holders of those
//! intervals are the point's *holder set*. The sweep adds up, per distinct
//! holder set, the bytes that have it ([`Sweep::groups`]), and the bytes that
//! have any holder at all ([`Sweep::union`]). A set of holders frees a group's
//! bytes when every holder of the group is in the set, unless the kernel said
//! the bytes are shared and the group's only holder holds them once: then
//! something outside the holders we were given shares them ([`Group::outside`]).

use std::collections::HashMap;

/// One physical range of one holder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Interval {
    /// First byte on the device.
    pub start: u64,
    /// One past the last byte.
    pub end: u64,
    /// Which holder (an index below the holder count given to [`sweep`]).
    pub holder: u32,
    /// Whether the kernel flagged the range as shared (`FIEMAP_EXTENT_SHARED`).
    pub shared: bool,
}

/// Bytes that have the same holders.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    /// The holders, ascending, each once.
    pub holders: Vec<u32>,
    /// Whether a file outside the holders shares these bytes: one holder,
    /// holding them once, and the kernel says they are shared.
    pub outside: bool,
    /// How many bytes.
    pub bytes: u64,
}

/// The outcome of [`sweep`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sweep {
    /// Bytes held by at least one holder.
    pub union: u64,
    /// Bytes per distinct (holder set, outside), in the order first met.
    pub groups: Vec<Group>,
}

impl Sweep {
    /// Bytes freed when every holder for which `in_set` is true is deleted:
    /// those whose holders are all in the set and that nothing outside shares.
    pub fn freed(&self, in_set: impl Fn(u32) -> bool) -> u64 {
        self.groups
            .iter()
            .filter(|g| !g.outside && g.holders.iter().all(|&h| in_set(h)))
            .map(|g| g.bytes)
            .sum()
    }

    /// Per holder (index), the bytes only it holds and nothing outside shares.
    pub fn exclusive(&self, holders: usize) -> Vec<u64> {
        self.per_single_holder(holders, false)
    }

    /// Per holder (index), the bytes only it holds among the holders but a
    /// file outside shares.
    pub fn shared_outside(&self, holders: usize) -> Vec<u64> {
        self.per_single_holder(holders, true)
    }

    fn per_single_holder(&self, holders: usize, outside: bool) -> Vec<u64> {
        let mut out = vec![0; holders];
        for g in &self.groups {
            if let [h] = g.holders[..]
                && g.outside == outside
            {
                out[h as usize] += g.bytes;
            }
        }
        out
    }
}

/// A fixed pseudo-random 64-bit key per holder (splitmix64), so that the XOR
/// of the keys of the active holders identifies the active set in O(1) per
/// change (Zobrist hashing); equal hashes are confirmed by comparing the sets.
fn holder_key(holder: u32) -> u64 {
    let mut z = u64::from(holder)
        .wrapping_add(1)
        .wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The state between two interval ends.
struct Active {
    /// Per holder, how many of its intervals cover the current point.
    count: Vec<u32>,
    /// The holders with a non-zero count, ascending.
    holders: Vec<u32>,
    /// XOR of [`holder_key`] over `holders`.
    hash: u64,
    /// Intervals covering the point, and how many of them are flagged shared.
    intervals: u32,
    shared: u32,
}

impl Active {
    fn apply(&mut self, holder: u32, shared: bool, opening: bool) {
        let count = &mut self.count[holder as usize];
        if opening {
            *count += 1;
            self.intervals += 1;
            self.shared += u32::from(shared);
            if *count == 1 {
                let at = self.holders.partition_point(|&h| h < holder);
                self.holders.insert(at, holder);
                self.hash ^= holder_key(holder);
            }
        } else {
            *count -= 1;
            self.intervals -= 1;
            self.shared -= u32::from(shared);
            if *count == 0 {
                let at = self.holders.partition_point(|&h| h < holder);
                self.holders.remove(at);
                self.hash ^= holder_key(holder);
            }
        }
    }

    /// One holder with one interval here, flagged shared by the kernel.
    fn outside(&self) -> bool {
        self.intervals == 1 && self.shared == 1
    }
}

/// Sweeps `intervals` of holders `0..holders` (empty intervals are ignored):
/// sorts their ends once, O(n log n), then walks them, adding each stretch
/// between two ends to the group of the holders active there.
///
/// Panics when an interval names a holder not below `holders` (a bug of the
/// caller, which numbers them).
pub fn sweep(intervals: &[Interval], holders: usize) -> Sweep {
    // (position, is_opening, interval index): closings sort before openings
    // at the same position, which does not matter for the bytes (the stretch
    // between is empty) but keeps the counts small.
    let mut ends: Vec<(u64, bool, u32)> = Vec::with_capacity(intervals.len() * 2);
    for (i, iv) in intervals.iter().enumerate() {
        if iv.end > iv.start {
            ends.push((iv.start, true, i as u32));
            ends.push((iv.end, false, i as u32));
        }
    }
    ends.sort_unstable();

    let mut active = Active {
        count: vec![0; holders],
        holders: Vec::new(),
        hash: 0,
        intervals: 0,
        shared: 0,
    };
    let mut out = Sweep::default();
    // Groups by hash; a bucket lists the indices of groups with that hash.
    let mut index: HashMap<u64, Vec<usize>> = HashMap::new();
    let mut at = 0u64;
    for (pos, opening, i) in ends {
        if pos > at && !active.holders.is_empty() {
            let bytes = pos - at;
            out.union += bytes;
            let outside = active.outside();
            let key = active.hash ^ u64::from(outside);
            let bucket = index.entry(key).or_default();
            match bucket.iter().find(|&&g| {
                out.groups[g].outside == outside && out.groups[g].holders == active.holders
            }) {
                Some(&g) => out.groups[g].bytes += bytes,
                None => {
                    bucket.push(out.groups.len());
                    out.groups.push(Group {
                        holders: active.holders.clone(),
                        outside,
                        bytes,
                    });
                }
            }
        }
        at = pos;
        let iv = &intervals[i as usize];
        active.apply(iv.holder, iv.shared, opening);
    }
    out
}

/// Where [`whole_extents`] puts compressed extents: far above any device
/// address, so they never overlap real ranges.
const ENCODED_BASE: u64 = 1 << 62;

/// Compressed (btrfs `ENCODED`) extents as whole units. FIEMAP reports such an
/// extent at the start of its compressed data with the *logical* length of
/// each file's reference, so two references to different parts of it have the
/// same `start` and different lengths, and two neighbouring extents seem to
/// overlap. btrfs frees a compressed extent only when no reference is left, so
/// each distinct `start` becomes one interval of the longest length seen, held
/// by every holder that references it, placed side by side above
/// `ENCODED_BASE`.
pub fn whole_extents(mut encoded: Vec<Interval>) -> Vec<Interval> {
    encoded.sort_unstable_by_key(|iv| iv.start);
    let mut out = Vec::with_capacity(encoded.len());
    let mut base = ENCODED_BASE;
    for unit in encoded.chunk_by(|a, b| a.start == b.start) {
        let len = unit.iter().map(|iv| iv.end - iv.start).max().unwrap_or(0);
        out.extend(unit.iter().map(|iv| Interval {
            start: base,
            end: base + len,
            ..*iv
        }));
        base += len;
    }
    out
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;

    const BLOCK: u64 = 4096;

    fn iv(start: u64, end: u64, holder: u32, shared: bool) -> Interval {
        Interval {
            start: start * BLOCK,
            end: end * BLOCK,
            holder,
            shared,
        }
    }

    /// The same accounting, block by block: per block, the holders (with
    /// multiplicity) and whether any covering interval is flagged shared.
    fn reference(intervals: &[Interval]) -> (u64, BTreeMap<(Vec<u32>, bool), u64>) {
        let mut blocks: BTreeMap<u64, (Vec<u32>, bool)> = BTreeMap::new();
        for iv in intervals {
            for b in iv.start / BLOCK..iv.end / BLOCK {
                let e = blocks.entry(b).or_default();
                e.0.push(iv.holder);
                e.1 |= iv.shared;
            }
        }
        let mut groups = BTreeMap::new();
        for (_, (mut held, shared)) in blocks.clone() {
            let once = held.len() == 1;
            held.sort_unstable();
            held.dedup();
            *groups.entry((held, once && shared)).or_default() += BLOCK;
        }
        (blocks.len() as u64 * BLOCK, groups)
    }

    fn as_map(s: &Sweep) -> BTreeMap<(Vec<u32>, bool), u64> {
        let mut m = BTreeMap::new();
        for g in &s.groups {
            let old = m.insert((g.holders.clone(), g.outside), g.bytes);
            assert!(old.is_none(), "group listed twice: {g:?}");
        }
        m
    }

    #[test]
    fn a_clone_patched_in_the_middle() {
        // Revision 0 wrote blocks 0..16; revision 1 is its clone with blocks
        // 4..6 rewritten (new blocks 100..102).
        let s = sweep(
            &[
                iv(0, 16, 0, true),
                iv(0, 4, 1, true),
                iv(100, 102, 1, false),
                iv(6, 16, 1, true),
            ],
            2,
        );
        assert_eq!(s.union, 18 * BLOCK);
        // 4..6 is held by revision 0 alone, but its extent is flagged shared
        // (btrfs flags whole extents): not counted as freed.
        assert_eq!(s.exclusive(2), [0, 2 * BLOCK]);
        assert_eq!(s.shared_outside(2), [2 * BLOCK, 0]);
        assert_eq!(s.freed(|_| true), 16 * BLOCK);
        assert_eq!(s.freed(|h| h == 0), 0);
    }

    #[test]
    fn exact_flags_make_exact_exclusive_bytes() {
        // XFS flags per block: the same history with exact flags.
        let s = sweep(
            &[
                iv(0, 4, 0, true),
                iv(4, 6, 0, false),
                iv(6, 16, 0, true),
                iv(0, 4, 1, true),
                iv(100, 102, 1, false),
                iv(6, 16, 1, true),
            ],
            2,
        );
        assert_eq!(s.exclusive(2), [2 * BLOCK, 2 * BLOCK]);
        assert_eq!(s.freed(|_| true), 18 * BLOCK);
    }

    #[test]
    fn a_copy_outside_keeps_the_bytes() {
        let s = sweep(&[iv(0, 8, 0, true), iv(8, 10, 0, false)], 1);
        assert_eq!(s.exclusive(1), [2 * BLOCK]);
        assert_eq!(s.freed(|_| true), 2 * BLOCK);
    }

    #[test]
    fn the_same_bytes_twice_in_one_file_are_not_outside() {
        let s = sweep(&[iv(0, 8, 0, true), iv(0, 8, 0, true)], 1);
        assert_eq!(s.exclusive(1), [8 * BLOCK]);
    }

    #[test]
    fn nothing_in_nothing_out() {
        assert_eq!(sweep(&[], 3), Sweep::default());
        assert_eq!(sweep(&[iv(5, 5, 0, false)], 1), Sweep::default());
    }

    #[test]
    fn compressed_extents_count_whole() {
        // One compressed extent at 0, referenced whole by holder 0 and in part
        // by holder 1 (same start, shorter length); another right after it
        // whose logical length seems to overlap the first.
        let list = whole_extents(vec![
            iv(0, 32, 0, true),
            iv(0, 8, 1, true),
            iv(8, 40, 1, false),
        ]);
        let s = sweep(&list, 2);
        assert_eq!(s.union, 64 * BLOCK);
        assert_eq!(s.exclusive(2), [0, 32 * BLOCK]);
        // Freed only with both of its holders.
        assert_eq!(s.freed(|h| h == 0), 0);
        assert_eq!(s.freed(|_| true), 64 * BLOCK);
    }

    fn intervals() -> impl Strategy<Value = Vec<Interval>> {
        prop::collection::vec((0u64..64, 1u64..12, 0u32..5, any::<bool>()), 0..40).prop_map(|v| {
            v.into_iter()
                .map(|(start, len, holder, shared)| iv(start, start + len, holder, shared))
                .collect()
        })
    }

    proptest! {
        /// Against the block-by-block reference: the same union, the same
        /// bytes per holder set, and the same freed bytes for every set.
        #[test]
        fn the_sweep_matches_counting_block_by_block(list in intervals(), set in 0u32..32) {
            let s = sweep(&list, 5);
            let (union, groups) = reference(&list);
            prop_assert_eq!(s.union, union);
            prop_assert_eq!(as_map(&s), groups.clone());
            let in_set = |h: u32| set & (1 << h) != 0;
            let expected: u64 = groups
                .iter()
                .filter(|((held, outside), _)| !outside && held.iter().all(|&h| in_set(h)))
                .map(|(_, b)| b)
                .sum();
            prop_assert_eq!(s.freed(in_set), expected);
            let exclusive = s.exclusive(5);
            for h in 0..5u32 {
                prop_assert_eq!(exclusive[h as usize], groups.get(&(vec![h], false)).copied().unwrap_or(0));
            }
        }
    }
}
