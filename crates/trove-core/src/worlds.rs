//! The id-to-world table a shard owns.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use crate::game::WorldId;

/// Worlds by id, with stable dense indices.
///
/// Lookups happen once per event. Ids below [`DIRECT_IDS`] (the common case:
/// games number their worlds from 0) resolve through a flat table, one load;
/// larger ids go through a hash map keyed by one multiplication, not SipHash.
///
/// Invariant (checked by [`Worlds::check`], asserted on every remove):
/// `ids[i]` is the id of `worlds[i]`, and `index_of(ids[i]) == Some(i)` for
/// every dense index `i`; no other id resolves. An index handed out by
/// [`Worlds::index_of`] stays valid until the next [`Worlds::remove`] (which
/// moves the last world into the freed place): a batch can resolve its
/// events' worlds up front (to prefetch their state) and use the indices
/// afterwards, as long as it resolves them again after a remove.
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

    /// Removes a world and frees its place under `worlds_max`; returns it
    /// (dropping it frees its memory). The last world moves into the
    /// freed dense index: every index handed out before is stale.
    pub fn remove(&mut self, id: WorldId) -> Option<W> {
        let index = self.index_of(id)?;
        let last = self.worlds.len() - 1;
        if id < DIRECT_IDS {
            self.direct[id as usize] = NONE;
        } else {
            self.index.remove(&id);
        }
        let world = self.worlds.swap_remove(index);
        let removed = self.ids.swap_remove(index);
        assert_eq!(removed, id, "ids[i] is the id of worlds[i]");
        if index != last {
            let moved = self.ids[index];
            if moved < DIRECT_IDS {
                self.direct[moved as usize] = index as u32;
            } else {
                self.index.insert(moved, index as u32);
            }
            assert_eq!(self.index_of(moved), Some(index), "the moved world resolves to its new index");
        }
        assert_eq!(self.index_of(id), None, "a removed id resolves to nothing");
        Some(world)
    }

    /// Checks the table's invariant from scratch (see the type's doc);
    /// tests call it.
    pub fn check(&self) -> Result<(), String> {
        if self.ids.len() != self.worlds.len() {
            return Err(format!("{} ids for {} worlds", self.ids.len(), self.worlds.len()));
        }
        for (i, &id) in self.ids.iter().enumerate() {
            if self.index_of(id) != Some(i) {
                return Err(format!("id {id} at index {i} resolves to {:?}", self.index_of(id)));
            }
        }
        let direct = self.direct.iter().filter(|&&i| i != NONE).count();
        if direct + self.index.len() != self.worlds.len() {
            return Err(format!(
                "{direct} direct and {} hashed ids for {} worlds",
                self.index.len(),
                self.worlds.len()
            ));
        }
        Ok(())
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
    fn remove_frees_the_place_and_moves_the_last() {
        let mut w: Worlds<u32> = Worlds::new(3);
        for id in [4, DIRECT_IDS + 9, 1] {
            w.insert(id, id).unwrap();
        }
        assert_eq!(w.insert(2, 2), Err(InsertError::Full));
        assert_eq!(w.remove(7), None);
        assert_eq!(w.remove(4), Some(4));
        w.check().unwrap();
        assert_eq!(w.len(), 2);
        assert_eq!(w.get(4), None);
        // The last world (id 1) took index 0.
        assert_eq!(w.index_of(1), Some(0));
        assert_eq!(w.get(DIRECT_IDS + 9), Some(&(DIRECT_IDS + 9)));
        // Its place under worlds_max is free again, and the id too.
        assert_eq!(w.insert(4, 40), Ok(2));
        assert_eq!(w.get(4), Some(&40));
        assert_eq!(w.remove(DIRECT_IDS + 9), Some(DIRECT_IDS + 9));
        assert_eq!(w.remove(1), Some(1));
        assert_eq!(w.remove(4), Some(40));
        w.check().unwrap();
        assert!(w.is_empty());
    }

    #[test]
    fn removes_and_inserts_keep_the_invariant() {
        let mut rng = crate::SplitMix64::new(5);
        let mut w: Worlds<u32> = Worlds::new(64);
        let mut model = std::collections::BTreeMap::new();
        for _ in 0..5000 {
            let r = rng.next_u64();
            let id = if r & 1 == 0 { (r >> 8) as u32 % 100 } else { DIRECT_IDS + (r >> 8) as u32 % 100 };
            if r & 2 == 0 {
                let _ = w.insert(id, id).map(|_| model.insert(id, id));
            } else {
                assert_eq!(w.remove(id), model.remove(&id));
            }
            assert_eq!(w.len(), model.len());
        }
        w.check().unwrap();
        let sorted: Vec<_> = w.iter_sorted().map(|(id, &v)| (id, v)).collect();
        assert_eq!(sorted, model.into_iter().collect::<Vec<_>>());
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
