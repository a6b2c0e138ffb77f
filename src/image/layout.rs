//! Where the writer lets a write end, so that revisions do not fragment as a job
//! ages (issue 15).
//!
//! Writing only the pages that differ keeps a revision as small as its changes,
//! but each run of changed pages cuts the parent's extent it lands in, and after a
//! hundred generations of scattered changes the newest image is a mosaic of
//! small extents that every reader pays for. So a run is extended over unchanged
//! pages (written from the new data, which equals the old there) when that ends
//! it on an edge that exists anyway: a boundary of the parent's extents (from
//! FIEMAP of the clone, before anything is written), or the end of the previous
//! write of this backup. A run then replaces the small remnant it would have left
//! instead of adding an extent beside it, and two nearby runs become one write.
//! An extension never covers a zero page (those stay holes), and it is given up
//! when it could not reach its edge.
//!
//! The price is the unchanged bytes rewritten, at most [`Layout::snap`] on each
//! side of a run; `benches/aging.sh` measures extents, read times and space.

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

/// The offsets where the parent's extents begin or end (holes included), in
/// order; extents that continue each other on disk count as one.
#[derive(Debug, Default, Clone)]
pub struct Bounds(Vec<u64>);

impl Bounds {
    /// From the extents of a file, in file order. Offsets that are not a
    /// multiple of `page` (the end of a short file) are left out.
    pub fn from_extents(extents: &[Extent], page: u64) -> Bounds {
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
        out.retain(|o| o % page == 0);
        out.sort_unstable();
        out.dedup();
        Bounds(out)
    }

    /// The greatest boundary at or before `offset`.
    pub fn at_or_before(&self, offset: u64) -> Option<u64> {
        let i = self.0.partition_point(|&b| b <= offset);
        i.checked_sub(1).map(|i| self.0[i])
    }

    /// The smallest boundary at or after `offset`.
    pub fn at_or_after(&self, offset: u64) -> Option<u64> {
        let i = self.0.partition_point(|&b| b < offset);
        self.0.get(i).copied()
    }
}

/// The new data just before the block being patched: what a run may be
/// extended back over.
#[derive(Debug, Default)]
pub struct Window {
    start: u64,
    data: Vec<u8>,
}

impl Window {
    /// One past the last byte held.
    pub fn end(&self) -> u64 {
        self.start + self.data.len() as u64
    }

    /// The new data of `from..to`, when held.
    pub fn get(&self, from: u64, to: u64) -> Option<&[u8]> {
        (self.start <= from && to <= self.end() && from <= to)
            .then(|| &self.data[(from - self.start) as usize..(to - self.start) as usize])
    }

    /// After block `data` at `offset`: keep the new data from `keep` on (at most
    /// what the block and the window held before), or nothing.
    pub fn keep(&mut self, offset: u64, data: &[u8], keep: Option<u64>) {
        let end = offset + data.len() as u64;
        match keep {
            Some(k) if k >= offset && k < end => {
                self.data.clear();
                self.data.extend_from_slice(&data[(k - offset) as usize..]);
                self.start = k;
            }
            Some(k) if k < offset && self.end() == offset && !self.data.is_empty() => {
                let k = k.max(self.start);
                self.data.drain(..(k - self.start) as usize);
                self.start = k;
                self.data.extend_from_slice(data);
            }
            Some(k) if k < offset => {
                self.data.clear();
                self.data.extend_from_slice(data);
                self.start = offset;
            }
            _ => {
                self.data.clear();
                self.start = end;
            }
        }
    }

    /// Forgets everything held.
    pub fn clear(&mut self) {
        self.data.clear();
        self.start = 0;
    }
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
        assert_eq!(b.0, vec![0, 8192, 16384, 20480, 24576]);
        assert_eq!(b.at_or_before(9000), Some(8192));
        assert_eq!(b.at_or_before(8192), Some(8192));
        assert_eq!(b.at_or_after(8193), Some(16384));
        assert_eq!(b.at_or_after(24577), None);
        assert_eq!(Bounds::default().at_or_before(5), None);
    }

    #[test]
    fn the_window_holds_the_tail_it_was_asked_to_keep() {
        let mut w = Window::default();
        let a: Vec<u8> = (0..16).collect();
        let b: Vec<u8> = (16..32).collect();
        w.keep(0, &a, Some(10));
        assert_eq!(w.get(10, 16), Some(&a[10..]));
        assert_eq!(w.get(9, 16), None);
        w.keep(16, &b, Some(12));
        assert_eq!(w.get(12, 32).unwrap(), &(12..32).collect::<Vec<u8>>()[..]);
        // A block that does not follow the window starts over.
        w.keep(64, &a, Some(60));
        assert_eq!(w.get(64, 80), Some(&a[..]));
        assert_eq!(w.get(60, 64), None);
        w.keep(80, &b, None);
        assert_eq!(w.get(80, 81), None);
    }
}
