//! A game's whole state on one shard.

use crate::error::InvariantError;
use crate::game::{Game, Outcomes, Stamped, WorldId};
use crate::hash::StateHasher;
use crate::worlds::Worlds;

/// The worlds one shard (or one replay) owns, and the engine time it has
/// reached. Everything a shard needs to apply a batch and hash the result.
#[derive(Debug)]
pub struct GameState<G: Game> {
    worlds: Worlds<G::World>,
    /// Highest event time applied so far.
    time_us: u64,
    events_applied: u64,
}

impl<G: Game> GameState<G> {
    pub fn new(worlds_max: usize) -> Self {
        Self { worlds: Worlds::new(worlds_max), time_us: 0, events_applied: 0 }
    }

    pub fn worlds(&self) -> &Worlds<G::World> {
        &self.worlds
    }

    pub fn time_us(&self) -> u64 {
        self.time_us
    }

    pub fn events_applied(&self) -> u64 {
        self.events_applied
    }

    /// Applies a batch. Outcomes are appended to `out`.
    ///
    /// Times are taken as stamped. The engine keeps each world's times
    /// non-decreasing (a shard stamps from a monotonic clock; a replay uses
    /// the journaled stamps; a producer supplying its own stamps keeps its
    /// worlds' in order); the rules do not compare times across worlds.
    ///
    /// # Panics
    /// If the game breaks its contract of one outcome per event.
    pub fn apply(&mut self, events: &[Stamped<G::Event>], out: &mut Outcomes<G::Outcome, G::Broadcast>) {
        if events.is_empty() {
            return;
        }
        let direct_before = out.direct.len();
        G::apply(&mut self.worlds, events, out);
        assert_eq!(out.direct.len() - direct_before, events.len(), "one outcome per event");
        self.time_us = events.iter().fold(self.time_us, |t, e| t.max(e.time_us));
        self.events_applied += events.len() as u64;
    }

    /// Puts back a world from a snapshot.
    pub fn restore_world(&mut self, id: WorldId, world: G::World) -> Result<(), crate::InsertError> {
        self.worlds.insert(id, world).map(|_| ())
    }

    /// Changes the most worlds this state holds (see
    /// [`Worlds::set_worlds_max`]).
    pub fn set_worlds_max(&mut self, worlds_max: usize) -> Result<(), usize> {
        self.worlds.set_worlds_max(worlds_max)
    }

    /// Puts back the engine time a snapshot recorded.
    pub fn restore_time(&mut self, time_us: u64) {
        self.time_us = self.time_us.max(time_us);
    }

    /// Stable hash of one world, if it exists.
    pub fn world_hash(&self, id: WorldId) -> Option<u64> {
        self.worlds.get(id).map(|w| {
            let mut h = StateHasher::new();
            G::hash_world(w, &mut h);
            h.finish()
        })
    }

    /// Per-world hashes in ascending world id order.
    pub fn world_hashes(&self) -> Vec<(WorldId, u64)> {
        self.worlds
            .iter_sorted()
            .map(|(id, w)| {
                let mut h = StateHasher::new();
                G::hash_world(w, &mut h);
                (id, h.finish())
            })
            .collect()
    }

    /// Stable hash of every world. It depends only on the worlds (not on the
    /// shard that holds them), so states split over any number of shards
    /// combine with [`combine_world_hashes`] to the same value.
    pub fn state_hash(&self) -> u64 {
        combine_world_hashes(self.world_hashes())
    }

    /// Runs the game's exhaustive invariant check on every world.
    pub fn check(&self) -> Result<(), InvariantError> {
        self.worlds.check().map_err(InvariantError::new)?;
        for (id, w) in self.worlds.iter_sorted() {
            G::check_world(w).map_err(|e| e.in_world(id))?;
        }
        Ok(())
    }
}

/// Combines per-world hashes into the total state hash. The input may come
/// from several shards in any order; it is sorted by world id first.
pub fn combine_world_hashes(mut hashes: Vec<(WorldId, u64)>) -> u64 {
    hashes.sort_unstable_by_key(|&(id, _)| id);
    let mut h = StateHasher::new();
    h.u64(hashes.len() as u64);
    for (id, wh) in hashes {
        h.u32(id);
        h.u64(wh);
    }
    h.finish()
}
