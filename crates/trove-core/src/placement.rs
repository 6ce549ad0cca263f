//! Which shard (in cluster mode, which partition) owns a world.
//!
//! One function for every party that must agree on it: the engine's
//! shards, a cluster's partitions, and an SDK that routes a producer's
//! events to the node owning their partition. Changing it moves worlds
//! between shards, so a journal records the shard count it was written
//! with, and a cluster its partition count.

use crate::WorldId;

/// The shard (or partition) that owns `world` among `shards`.
///
/// # Panics
/// If `shards` is 0.
#[inline]
pub fn shard_of(world: WorldId, shards: usize) -> usize {
    (((u64::from(world).wrapping_mul(0x9E37_79B9_7F4A_7C15)) >> 32) % shards as u64) as usize
}

#[cfg(test)]
mod tests {
    use super::shard_of;

    #[test]
    fn placement_is_pinned() {
        // Journals and clusters depend on these values: a change here
        // moves worlds between the shards that journaled them.
        let got: Vec<usize> = (0..8).map(|w| shard_of(w, 5)).collect();
        assert_eq!(got, [0, 4, 2, 2, 0, 4, 3, 2]);
        assert!((0..10_000).all(|w| shard_of(w, 1) == 0));
    }
}
