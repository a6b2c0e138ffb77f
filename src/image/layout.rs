//! Where the writer lets a write end, so that revisions do not fragment as a job
//! ages (issue 15).
//!
//! Writing only the pages that differ keeps a revision as small as its changes,
//! but each run of changed pages cuts the parent's extent it lands in, and after a
//! hundred generations of scattered changes the newest image is a mosaic of
//! small extents that every reader pays for. So a run is extended over unchanged
//! pages (written from the new data, which equals the old there) when that ends
//! it on an edge that exists anyway: a boundary of the parent's extents (from
//! FIEMAP of the clone, looked up around each run before it is written), or the
//! end of the previous write of this backup. A run then replaces the small remnant it would have left
//! instead of adding an extent beside it, and two nearby runs become one write.
//! An extension never covers a zero page (those stay holes), and it is given up
//! when it could not reach its edge.
//!
//! The price is the unchanged bytes rewritten, at most [`Layout::snap`] on each
//! side of a run; `benches/aging.sh` measures extents, read times and space.

use std::collections::{BTreeSet, HashSet};

use super::fiemap::Extent;

/// How far a run of changed pages may be extended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// Bytes of unchanged data a run may be extended over, on each side, to reach
    /// a boundary of the parent's extents; 0 writes only the differing pages.
    pub snap: u64,
    /// Bytes of unchanged data between two runs of this backup that are written
    /// too, so they become one write.
    pub gap: u64,
}

impl Layout {
    /// The default: 128 KiB, chosen from `benches/aging.sh` (README, Performance).
    pub const DEFAULT: Layout = Layout {
        snap: 128 << 10,
        gap: 128 << 10,
    };

    /// Only the pages that differ are written.
    pub const EXACT: Layout = Layout { snap: 0, gap: 0 };

    /// How far back (or forward) any extension may reach.
    pub fn reach(&self) -> u64 {
        self.snap.max(self.gap)
    }
}

impl Default for Layout {
    fn default() -> Layout {
        Layout::DEFAULT
    }
}

/// The offsets where the parent's extents begin or end (holes included);
/// extents that continue each other on disk count as one.
///
/// Looked up one [`Bounds::REGION`] at a time, as runs come near (see
/// [`Bounds::missing`]): a cold FIEMAP of a whole aged image walks thousands of
/// extents (a second on btrfs, which also works out which are shared) for the
/// few dozen places a backup changes.
#[derive(Debug, Default, Clone)]
pub struct Bounds {
    edges: BTreeSet<u64>,
    /// Regions (by index) whose edges are in `edges`.
    loaded: HashSet<u64>,
    /// Every edge of the file is known.
    complete: bool,
}

impl Bounds {
    /// Bytes looked up at a time.
    pub const REGION: u64 = 1 << 20;

    /// From all extents of a file, in file order. Offsets that are not a
    /// multiple of `page` (the end of a short file) are left out.
    pub fn from_extents(extents: &[Extent], page: u64) -> Bounds {
        Bounds {
            edges: edges_of(extents, page).collect(),
            loaded: HashSet::new(),
            complete: true,
        }
    }

    /// The start of each region overlapping `from..=to` whose edges are not
    /// known yet: what to look up, [`Bounds::query`] says how.
    pub fn missing(&self, from: u64, to: u64) -> Vec<u64> {
        if self.complete {
            return Vec::new();
        }
        (from / Self::REGION..=to / Self::REGION)
            .filter(|r| !self.loaded.contains(r))
            .map(|r| r * Self::REGION)
            .collect()
    }

    /// The range to ask FIEMAP for to learn the edges of the region at
    /// `region`: one page more on each side, so that an extent continuing its
    /// neighbour across the region's edge on disk is seen as doing so.
    pub fn query(region: u64, page: u64) -> (u64, u64) {
        let start = region.saturating_sub(page);
        (start, region + Self::REGION + page - start)
    }

    /// Adds the edges of the region at `region` from `extents` (FIEMAP of
    /// [`Bounds::query`], in file order).
    pub fn add_region(&mut self, region: u64, extents: &[Extent], page: u64) {
        let end = region + Self::REGION;
        self.edges
            .extend(edges_of(extents, page).filter(|&e| region <= e && e < end));
        self.loaded.insert(region / Self::REGION);
    }

    /// No edges are known, nor will be looked up (no FIEMAP here).
    pub fn none() -> Bounds {
        Bounds {
            complete: true,
            ..Bounds::default()
        }
    }

    /// The greatest boundary at or before `offset`.
    pub fn at_or_before(&self, offset: u64) -> Option<u64> {
        self.edges.range(..=offset).next_back().copied()
    }

    /// The smallest boundary at or after `offset`.
    pub fn at_or_after(&self, offset: u64) -> Option<u64> {
        self.edges.range(offset..).next().copied()
    }
}

/// The edges of `extents` (in file order), page-aligned ones only.
fn edges_of(extents: &[Extent], page: u64) -> impl Iterator<Item = u64> {
    let mut out: Vec<u64> = Vec::with_capacity(extents.len() * 2);
    let mut prev: Option<&Extent> = None;
    for e in extents {
        let continues = prev.is_some_and(|p| {
            p.end() == e.logical
                && p.has_location()
                && e.has_location()
                && p.physical + p.length == e.physical
        });
        if !continues {
            if let Some(p) = prev {
                out.push(p.end());
            }
            out.push(e.logical);
        }
        prev = Some(e);
    }
    if let Some(p) = prev {
        out.push(p.end());
    }
    out.into_iter().filter(move |o| o % page == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ext(logical: u64, physical: u64, length: u64) -> Extent {
        Extent::plain(logical, physical, length)
    }

    #[test]
    fn bounds_merge_extents_that_continue_on_disk() {
        let b = Bounds::from_extents(
            &[
                ext(0, 1000, 4096),
                ext(4096, 5096, 4096), // continues the first on disk
                ext(8192, 90000, 8192),
                ext(20480, 100000, 4096), // after a hole
            ],
            4096,
        );
        assert_eq!(
            b.edges.iter().copied().collect::<Vec<_>>(),
            vec![0, 8192, 16384, 20480, 24576]
        );
        assert_eq!(b.at_or_before(9000), Some(8192));
        assert_eq!(b.at_or_before(8192), Some(8192));
        assert_eq!(b.at_or_after(8193), Some(16384));
        assert_eq!(b.at_or_after(24577), None);
        assert_eq!(Bounds::default().at_or_before(5), None);
        assert!(b.missing(0, 1 << 30).is_empty());
    }

    #[test]
    fn regions_are_looked_up_once_and_see_across_their_edges() {
        const R: u64 = Bounds::REGION;
        let page = 4096;
        let mut b = Bounds::default();
        assert_eq!(b.missing(R - 1, R + 1), vec![0, R]);
        assert_eq!(Bounds::query(R, page), (R - page, R + 2 * page));
        // An extent that continues its neighbour on disk across R: no edge at R.
        b.add_region(
            R,
            &[
                ext(R - 2 * page, 7 * page, 4 * page),
                ext(R + 2 * page, 0, page),
            ],
            page,
        );
        assert_eq!(b.missing(R - 1, R + 1), vec![0]);
        assert_eq!(b.at_or_after(R), Some(R + 2 * page));
        // Edges outside the region are left to their own regions.
        assert_eq!(b.at_or_before(R), None);
        b.add_region(0, &[ext(R - 2 * page, 7 * page, 4 * page)], page);
        assert_eq!(b.at_or_before(R), Some(R - 2 * page));
        assert!(b.missing(0, 2 * R - 1).is_empty());
        assert!(Bounds::none().missing(0, 10 * R).is_empty());
    }
}
