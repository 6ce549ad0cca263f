//! The id-to-world table a shard owns.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use crate::game::WorldId;

/// Worlds by id, with stable dense indices.
///
/// Lookups happen once per event. Ids below [`DIRECT_IDS`] (the common case:
/// games number their worlds from 0) resolve through a flat table, one load;
/// larger ids go through a hash map keyed by one multiplication, not SipHash. Worlds are never removed, so an index
/// handed out by [`Worlds::index_of`] stays valid: a batch can resolve its
/// events' worlds up front (to prefetch their state) and use the indices
/// afterwards.
#[derive(Debug)]
pub struct Worlds<W> {
    /// `direct[id]` is the index of world `id`, or `NONE`; covers the ids
    /// below `DIRECT_IDS` seen so far.
    direct: Vec<u32>,
    /// Worlds with ids of `DIRECT_IDS` and above.
    index: HashMap<WorldId, u32, BuildHasherDefault<IdHasher>>,
    ids: Vec<WorldId>,
    worlds: Vec<W>,
    worlds_max: usize,
}

/// Ids below this resolve through a flat table (at most 256 KiB).
pub const DIRECT_IDS: u32 = 1 << 16;
const NONE: u32 = u32::MAX;

/// Why a world could not be inserted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InsertError {
    /// A world with this id already exists.
    Exists,
    /// The table holds `worlds_max` worlds already.
    Full,
}

impl<W> Worlds<W> {
    /// An empty table that will hold at most `worlds_max` worlds.
    pub fn new(worlds_max: usize) -> Self {
        Self { direct: Vec::new(), index: HashMap::default(), ids: Vec::new(), worlds: Vec::new(), worlds_max }
    }

    pub fn len(&self) -> usize {
        self.worlds.len()
    }

    pub fn is_empty(&self) -> bool {
        self.worlds.is_empty()
    }

    pub fn worlds_max(&self) -> usize {
        self.worlds_max
    }

    /// Changes the bound; refused (with the count held) if the table
    /// already holds more worlds than `worlds_max`.
    pub fn set_worlds_max(&mut self, worlds_max: usize) -> Result<(), usize> {
        if self.worlds.len() > worlds_max {
            return Err(self.worlds.len());
        }
        self.worlds_max = worlds_max;
        Ok(())
    }

    #[inline]
    pub fn index_of(&self, id: WorldId) -> Option<usize> {
        if let Some(&i) = self.direct.get(id as usize) {
            return (i != NONE).then_some(i as usize);
        }
        if id < DIRECT_IDS {
            return None;
        }
        self.index.get(&id).map(|&i| i as usize)
    }

    /// The world at a dense index from [`Worlds::index_of`].
    ///
    /// # Panics
    /// If `index` was not handed out by this table.
    #[inline]
    pub fn at(&self, index: usize) -> &W {
        &self.worlds[index]
    }

    /// See [`Worlds::at`].
    #[inline]
    pub fn at_mut(&mut self, index: usize) -> &mut W {
        &mut self.worlds[index]
    }

    pub fn get(&self, id: WorldId) -> Option<&W> {
        self.index_of(id).map(|i| &self.worlds[i])
    }

    pub fn get_mut(&mut self, id: WorldId) -> Option<&mut W> {
        self.index_of(id).map(|i| &mut self.worlds[i])
    }

    /// Adds a world; returns its dense index.
    pub fn insert(&mut self, id: WorldId, world: W) -> Result<usize, InsertError> {
        if self.index_of(id).is_some() {
            return Err(InsertError::Exists);
        }
        if self.worlds.len() >= self.worlds_max {
            return Err(InsertError::Full);
        }
        let index = self.worlds.len();
        if id < DIRECT_IDS {
            if self.direct.len() <= id as usize {
                self.direct.resize(id as usize + 1, NONE);
            }
            self.direct[id as usize] = index as u32;
        } else {
            self.index.insert(id, index as u32);
        }
        self.ids.push(id);
        self.worlds.push(world);
        Ok(index)
    }

    /// The first `limit` worlds with ids above `after` (all ids if `None`),
    /// ascending. Costs a pass over the ids and a sort of `limit` of them,
    /// not a sort of every world: a listing page stays cheap for the shard
    /// that owns a million worlds.
    pub fn page(&self, after: Option<WorldId>, limit: usize) -> Vec<(WorldId, &W)> {
        if limit == 0 {
            return Vec::new();
        }
        let mut order: Vec<u32> =
            (0..self.ids.len() as u32).filter(|&i| after.is_none_or(|a| self.ids[i as usize] > a)).collect();
        if order.len() > limit {
            order.select_nth_unstable_by_key(limit - 1, |&i| self.ids[i as usize]);
            order.truncate(limit);
        }
        order.sort_unstable_by_key(|&i| self.ids[i as usize]);
        order.into_iter().map(|i| (self.ids[i as usize], &self.worlds[i as usize])).collect()
    }

    /// Worlds in ascending id order: the canonical order for hashing.
    pub fn iter_sorted(&self) -> impl Iterator<Item = (WorldId, &W)> {
        let mut order: Vec<u32> = (0..self.worlds.len() as u32).collect();
        order.sort_unstable_by_key(|&i| self.ids[i as usize]);
        order.into_iter().map(move |i| (self.ids[i as usize], &self.worlds[i as usize]))
    }
}

/// A hasher for `u32` keys: Fibonacci multiplication, high bits folded down
/// so that hashbrown's bucket bits (low) and tag bits (high) both vary.
#[derive(Default, Debug, Clone, Copy)]
pub struct IdHasher(u64);

impl Hasher for IdHasher {
    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }

    #[inline]
    fn write_u32(&mut self, n: u32) {
        self.write_u64(u64::from(n));
    }

    #[inline]
    fn write_u64(&mut self, n: u64) {
        let h = (self.0 ^ n).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        self.0 = h ^ (h >> 29);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_lookup_and_limits() {
        let mut w: Worlds<&str> = Worlds::new(2);
        assert_eq!(w.insert(7, "a"), Ok(0));
        assert_eq!(w.insert(7, "b"), Err(InsertError::Exists));
        assert_eq!(w.insert(3, "c"), Ok(1));
        assert_eq!(w.insert(9, "d"), Err(InsertError::Full));
        assert_eq!(w.get(7), Some(&"a"));
        assert_eq!(w.index_of(3), Some(1));
        assert_eq!(w.get(4), None);
        let order: Vec<_> = w.iter_sorted().map(|(id, _)| id).collect();
        assert_eq!(order, vec![3, 7]);
    }

    #[test]
    fn pages_match_a_filtered_sorted_listing() {
        let mut rng = crate::SplitMix64::new(11);
        let mut w: Worlds<u32> = Worlds::new(500);
        while w.len() < 300 {
            let id = (rng.next_u64() % 2000) as u32;
            let _ = w.insert(id, id * 2);
        }
        let all: Vec<u32> = w.iter_sorted().map(|(id, _)| id).collect();
        for after in [None, Some(0), Some(all[0]), Some(all[150]), Some(all[299]), Some(1999), Some(u32::MAX)] {
            for limit in [0, 1, 7, 150, 299, 300, 1000] {
                let page: Vec<(u32, u32)> = w.page(after, limit).into_iter().map(|(id, &v)| (id, v)).collect();
                let want: Vec<(u32, u32)> = all
                    .iter()
                    .filter(|&&id| after.is_none_or(|a| id > a))
                    .take(limit)
                    .map(|&id| (id, id * 2))
                    .collect();
                assert_eq!(page, want, "after {after:?} limit {limit}");
            }
        }
    }

    #[test]
    fn small_and_large_ids() {
        let mut w: Worlds<u32> = Worlds::new(10);
        for id in [0, 5, DIRECT_IDS - 1, DIRECT_IDS, u32::MAX] {
            assert_eq!(w.index_of(id), None);
            w.insert(id, id).unwrap();
            assert_eq!(w.get(id), Some(&id));
            assert_eq!(w.insert(id, 0), Err(InsertError::Exists));
        }
        assert_eq!(w.index_of(1), None);
        assert_eq!(w.index_of(DIRECT_IDS + 1), None);
        assert_eq!(w.len(), 5);
    }
}
