//! A set of block numbers, one bit per block, for "which blocks did this
//! backup touch / change" questions over images of millions of blocks.

/// A set of block numbers below a limit (one bit per block).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BlockSet {
    words: Vec<u64>,
    limit: u64,
}

impl BlockSet {
    /// An empty set for blocks `0..limit`.
    pub fn new(limit: u64) -> BlockSet {
        BlockSet {
            words: vec![0; limit.div_ceil(64) as usize],
            limit,
        }
    }

    /// Changes the limit; blocks at or beyond the new limit leave the set (so a
    /// set that grows again starts them out absent).
    pub fn resize(&mut self, limit: u64) {
        if let Some(w) = self.words.get_mut((limit / 64) as usize) {
            *w &= (1u64 << (limit % 64)).wrapping_sub(1);
        }
        self.words.truncate(limit.div_ceil(64) as usize);
        self.words.resize(limit.div_ceil(64) as usize, 0);
        self.limit = limit;
    }

    /// The limit: blocks are below it.
    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// Adds `block` (below the limit); returns whether it was absent.
    pub fn insert(&mut self, block: u64) -> bool {
        assert!(
            block < self.limit,
            "block {block} beyond the set's limit {}",
            self.limit
        );
        let (w, bit) = ((block / 64) as usize, 1u64 << (block % 64));
        let absent = self.words[w] & bit == 0;
        self.words[w] |= bit;
        absent
    }

    /// Adds the blocks `from..to` (`to` at most the limit), a word at a time.
    pub fn insert_range(&mut self, from: u64, to: u64) {
        assert!(
            to <= self.limit,
            "block {to} beyond the set's limit {}",
            self.limit
        );
        let mut block = from;
        while block < to {
            let (w, bit) = ((block / 64) as usize, block % 64);
            let n = (64 - bit).min(to - block);
            let mask = if n == 64 {
                u64::MAX
            } else {
                ((1u64 << n) - 1) << bit
            };
            self.words[w] |= mask;
            block += n;
        }
    }

    /// Removes `block` (a no-op beyond the limit).
    pub fn remove(&mut self, block: u64) {
        if let Some(w) = self.words.get_mut((block / 64) as usize) {
            *w &= !(1u64 << (block % 64));
        }
    }

    /// Whether `block` is in the set.
    pub fn contains(&self, block: u64) -> bool {
        block < self.limit
            && self
                .words
                .get((block / 64) as usize)
                .is_some_and(|w| w & (1 << (block % 64)) != 0)
    }

    /// How many blocks are in the set.
    pub fn len(&self) -> u64 {
        self.words.iter().map(|w| u64::from(w.count_ones())).sum()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.words.iter().all(|&w| w == 0)
    }

    /// The blocks in the set, in order.
    pub fn iter(&self) -> impl Iterator<Item = u64> + '_ {
        self.words.iter().enumerate().flat_map(|(i, &w)| {
            let mut w = w;
            std::iter::from_fn(move || {
                if w == 0 {
                    return None;
                }
                let bit = i as u64 * 64 + u64::from(w.trailing_zeros());
                w &= w - 1;
                Some(bit)
            })
        })
    }

    /// The blocks below the limit that are not in the set, in order.
    pub fn missing(&self) -> impl Iterator<Item = u64> + '_ {
        let limit = self.limit;
        self.words
            .iter()
            .enumerate()
            .filter(|&(_, &w)| w != u64::MAX)
            .flat_map(move |(i, &w)| {
                let mut w = !w;
                std::iter::from_fn(move || {
                    if w == 0 {
                        return None;
                    }
                    let bit = i as u64 * 64 + u64::from(w.trailing_zeros());
                    w &= w - 1;
                    Some(bit)
                })
            })
            .take_while(move |&b| b < limit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_remove_resize_and_iterate() {
        let mut s = BlockSet::new(130);
        assert!(s.is_empty());
        assert!(s.insert(0));
        assert!(s.insert(64));
        assert!(s.insert(129));
        assert!(!s.insert(64));
        assert_eq!(s.iter().collect::<Vec<_>>(), [0, 64, 129]);
        assert_eq!(s.len(), 3);
        s.remove(64);
        assert!(!s.contains(64));
        // Shrinking drops what lies beyond; growing again brings it back absent.
        s.resize(100);
        assert!(!s.contains(129));
        s.resize(200);
        assert!(!s.contains(129));
        assert_eq!(s.iter().collect::<Vec<_>>(), [0]);
        assert_eq!(s.missing().count(), 199);
        s.resize(65);
        assert!(s.insert(64));
        s.resize(64);
        s.resize(65);
        assert!(!s.contains(64), "a bit beyond a shrink must not come back");
        assert!(!s.contains(1000));
        s.remove(1000);
    }

    #[test]
    fn ranges_fill_whole_words_and_edges() {
        let mut s = BlockSet::new(300);
        s.insert_range(3, 3);
        assert!(s.is_empty());
        s.insert_range(60, 200);
        s.insert_range(299, 300);
        assert_eq!(s.len(), 141);
        assert!(!s.contains(59) && s.contains(60) && s.contains(199) && !s.contains(200));
        let missing: Vec<u64> = s.missing().collect();
        assert_eq!(missing.len(), 300 - 141);
        assert_eq!(missing.first(), Some(&0));
        assert_eq!(missing.last(), Some(&298));
        assert!(missing.iter().all(|&b| !s.contains(b)));
        s.insert_range(0, 300);
        assert_eq!(s.missing().count(), 0);
    }
}
