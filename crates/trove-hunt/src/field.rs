//! A round's treasures and their spatial index.

use std::collections::HashSet;
use std::hash::BuildHasherDefault;

use trove_core::InvariantError;
use trove_core::SplitMix64;
use trove_core::hash::StateHasher;
use trove_core::rng::mix64;
use trove_core::worlds::IdHasher;

use crate::event::HuntConfig;
use crate::outcome::Band;

/// Buckets are 16 x 16 cells: a scan's 17 x 17 window touches at most 4.
const BUCKET_SHIFT: u32 = 4;
const HOT_CELLS: u32 = 2;
const WARM_CELLS: u32 = 8;
/// `x` of an empty slot (maps are at most 4096 wide, so no real cell).
const EMPTY: u16 = u16::MAX;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Treasure {
    pub x: u16,
    pub y: u16,
    pub value: u16,
    pub claimed: bool,
}

const EMPTY_SLOT: Treasure = Treasure { x: EMPTY, y: EMPTY, value: 0, claimed: true };

/// The treasures of one round in a uniform grid of 16 x 16-cell buckets.
///
/// Every bucket has the same number of slots (the fullest bucket's count,
/// rounded up to a power of two), stored inline and in row order, so the
/// slots of the bucket under a cell are at an address computed from the
/// cell alone: a dig reads one bucket and a scan at most four, with no
/// indirection, and the batch loop can prefetch them before applying.
/// Memory is `buckets * slots_per_bucket * 8` bytes: 8 KiB for the standard
/// 256 x 256 map with 64 treasures. Rebuilt at each round.
#[derive(Clone, Debug)]
pub struct TreasureField {
    slots: Vec<Treasure>,
    slots_per_bucket: u32,
    buckets_x: u32,
    buckets_y: u32,
    unclaimed: u32,
    claimed_value: u64,
}

impl TreasureField {
    /// Places `config.treasures_per_round` treasures on distinct cells, from
    /// (seed, round) alone.
    pub fn place(config: &HuntConfig, round: u32) -> Self {
        let (w, h) = (u32::from(config.width), u32::from(config.height));
        let count = usize::from(config.treasures_per_round);
        debug_assert!(config.validate().is_ok());
        let mut rng = SplitMix64::new(mix64((u64::from(config.seed) << 32) | u64::from(round)));
        let mut taken: HashSet<u32, BuildHasherDefault<IdHasher>> = HashSet::default();
        taken.reserve(count);
        let mut placed = Vec::with_capacity(count);
        let span = u32::from(config.value_max - config.value_min) + 1;
        while placed.len() < count {
            let (x, y) = (rng.below(w), rng.below(h));
            if !taken.insert(y * w + x) {
                continue;
            }
            let value = config.value_min + rng.below(span) as u16;
            placed.push(Treasure { x: x as u16, y: y as u16, value, claimed: false });
        }

        let buckets_x = ((w - 1) >> BUCKET_SHIFT) + 1;
        let buckets_y = ((h - 1) >> BUCKET_SHIFT) + 1;
        let buckets = (buckets_x * buckets_y) as usize;
        let bucket_of =
            |t: &Treasure| ((u32::from(t.y) >> BUCKET_SHIFT) * buckets_x + (u32::from(t.x) >> BUCKET_SHIFT)) as usize;
        let mut fill = vec![0u32; buckets];
        for t in &placed {
            fill[bucket_of(t)] += 1;
        }
        let slots_per_bucket = fill.iter().copied().max().unwrap_or(1).next_power_of_two();
        let mut slots = vec![EMPTY_SLOT; buckets * slots_per_bucket as usize];
        fill.fill(0);
        for t in placed {
            let b = bucket_of(&t);
            slots[b * slots_per_bucket as usize + fill[b] as usize] = t;
            fill[b] += 1;
        }
        Self { slots, slots_per_bucket, buckets_x, buckets_y, unclaimed: count as u32, claimed_value: 0 }
    }

    pub fn unclaimed(&self) -> u32 {
        self.unclaimed
    }

    /// Sum of the values claimed this round.
    pub fn claimed_value(&self) -> u64 {
        self.claimed_value
    }

    /// Marks the `i`-th treasure (canonical order) claimed, as a snapshot
    /// records it; returns false if there is no such unclaimed treasure.
    pub fn restore_claim(&mut self, i: usize) -> bool {
        let Some(t) = self.slots.iter_mut().filter(|t| t.x != EMPTY).nth(i) else { return false };
        if t.claimed {
            return false;
        }
        t.claimed = true;
        self.unclaimed -= 1;
        self.claimed_value += u64::from(t.value);
        true
    }

    /// This round's treasures, in canonical (bucket, placement) order.
    pub fn treasures(&self) -> impl Iterator<Item = &Treasure> {
        self.slots.iter().filter(|t| t.x != EMPTY)
    }

    #[inline]
    fn bucket_start(&self, bx: u32, by: u32) -> usize {
        ((by * self.buckets_x + bx) * self.slots_per_bucket) as usize
    }

    #[inline]
    fn bucket_of_cell(&self, x: u16, y: u16) -> usize {
        self.bucket_start(u32::from(x) >> BUCKET_SHIFT, u32::from(y) >> BUCKET_SHIFT)
    }

    /// Hints the CPU to load what a dig at (x, y) reads.
    #[inline]
    pub fn prefetch_dig(&self, x: u16, y: u16) {
        if let Some(t) = self.slots.get(self.bucket_of_cell(x, y)) {
            crate::hunt::prefetch(t);
        }
    }

    /// Hints the CPU to load what a scan at (x, y) reads: the first bucket
    /// of each bucket row of the window (the rest of a row follows it).
    #[inline]
    pub fn prefetch_scan(&self, x: u16, y: u16) {
        let (bx0, _, by0, by1) = self.window(x, y);
        for by in by0..=by1 {
            if let Some(t) = self.slots.get(self.bucket_start(bx0, by)) {
                crate::hunt::prefetch(t);
            }
        }
    }

    /// Claims the unclaimed treasure at (x, y), if any; returns its value.
    #[inline]
    pub fn claim(&mut self, x: u16, y: u16) -> Option<u16> {
        let start = self.bucket_of_cell(x, y);
        let bucket = &mut self.slots[start..start + self.slots_per_bucket as usize];
        let t = bucket.iter_mut().find(|t| t.x == x && t.y == y)?;
        if t.claimed {
            return None;
        }
        t.claimed = true;
        self.unclaimed -= 1;
        self.claimed_value += u64::from(t.value);
        Some(t.value)
    }

    /// Bucket columns bx0..=bx1 and rows by0..=by1 of the scan window.
    #[inline]
    fn window(&self, x: u16, y: u16) -> (u32, u32, u32, u32) {
        let (x, y) = (u32::from(x), u32::from(y));
        (
            x.saturating_sub(WARM_CELLS) >> BUCKET_SHIFT,
            ((x + WARM_CELLS) >> BUCKET_SHIFT).min(self.buckets_x - 1),
            y.saturating_sub(WARM_CELLS) >> BUCKET_SHIFT,
            ((y + WARM_CELLS) >> BUCKET_SHIFT).min(self.buckets_y - 1),
        )
    }

    /// The band of the nearest unclaimed treasure from (x, y), by Chebyshev
    /// distance. Empty slots count as claimed.
    #[inline]
    pub fn scan(&self, x: u16, y: u16) -> Band {
        let (bx0, bx1, by0, by1) = self.window(x, y);
        let (x, y) = (u32::from(x), u32::from(y));
        let mut nearest = u32::MAX;
        for by in by0..=by1 {
            let row = self.bucket_start(bx0, by)..self.bucket_start(bx1, by) + self.slots_per_bucket as usize;
            for t in &self.slots[row] {
                if t.claimed {
                    continue;
                }
                let d = x.abs_diff(u32::from(t.x)).max(y.abs_diff(u32::from(t.y)));
                if d <= HOT_CELLS {
                    return Band::Hot;
                }
                nearest = nearest.min(d);
            }
        }
        if nearest <= WARM_CELLS { Band::Warm } else { Band::Cold }
    }

    pub fn hash_state(&self, h: &mut StateHasher) {
        h.u64(self.treasures().count() as u64);
        for t in self.treasures() {
            h.u16(t.x);
            h.u16(t.y);
            h.u16(t.value);
            h.bool(t.claimed);
        }
    }

    /// Exhaustive check of the field's own bookkeeping.
    pub fn check(&self, config: &HuntConfig) -> Result<(), InvariantError> {
        let unclaimed = self.treasures().filter(|t| !t.claimed).count() as u32;
        if unclaimed != self.unclaimed {
            return Err(format!("unclaimed count {} but {} flags", self.unclaimed, unclaimed).into());
        }
        let claimed: u64 = self.treasures().filter(|t| t.claimed).map(|t| u64::from(t.value)).sum();
        if claimed != self.claimed_value {
            return Err(format!("claimed value {} but treasures sum to {}", self.claimed_value, claimed).into());
        }
        let mut cells = HashSet::new();
        for t in self.treasures() {
            if t.x >= config.width || t.y >= config.height {
                return Err(format!("treasure off the map at ({}, {})", t.x, t.y).into());
            }
            if !cells.insert((t.x, t.y)) {
                return Err(format!("two treasures at ({}, {})", t.x, t.y).into());
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn config(width: u16, height: u16, treasures: u16, seed: u32) -> HuntConfig {
        HuntConfig {
            width,
            height,
            seed,
            treasures_per_round: treasures,
            value_min: 1,
            value_max: 9,
            dig_cooldown_ms: 0,
            step_max: 1,
            players_max: 10,
        }
    }

    #[test]
    fn placement_is_deterministic_and_round_dependent() {
        let c = config(256, 256, 64, 1);
        let a = TreasureField::place(&c, 1);
        let list = |f: &TreasureField| f.treasures().copied().collect::<Vec<_>>();
        assert_eq!(list(&a), list(&TreasureField::place(&c, 1)));
        assert_ne!(list(&a), list(&TreasureField::place(&c, 2)));
        a.check(&c).unwrap();
    }

    #[test]
    fn densest_map_places_every_treasure() {
        let c = config(2, 2, 1, 3);
        TreasureField::place(&c, 1).check(&c).unwrap();
        let c = config(64, 64, 1024, 3);
        let f = TreasureField::place(&c, 9);
        assert_eq!(f.unclaimed(), 1024);
        f.check(&c).unwrap();
    }

    /// Brute-force band: the definition the index must agree with.
    fn band_brute(f: &TreasureField, x: u16, y: u16) -> Band {
        let d = f
            .treasures()
            .filter(|t| !t.claimed)
            .map(|t| x.abs_diff(t.x).max(y.abs_diff(t.y)))
            .min()
            .unwrap_or(u16::MAX);
        if d <= 2 {
            Band::Hot
        } else if d <= 8 {
            Band::Warm
        } else {
            Band::Cold
        }
    }

    proptest! {
        #[test]
        fn scan_agrees_with_brute_force(
            w in 2u16..80, h in 2u16..80, seed: u32, n in 1u16..40,
            probes in proptest::collection::vec((any::<u16>(), any::<u16>(), any::<bool>()), 1..60),
        ) {
            let n = n.min(w * h / 4).max(1);
            prop_assume!(u32::from(w) * u32::from(h) >= 4);
            let c = config(w, h, n, seed);
            let mut f = TreasureField::place(&c, 1);
            for (px, py, dig) in probes {
                let (x, y) = (px % w, py % h);
                prop_assert_eq!(f.scan(x, y), band_brute(&f, x, y));
                if dig {
                    let before = f.unclaimed();
                    let got = f.claim(x, y);
                    prop_assert_eq!(before - f.unclaimed(), u32::from(got.is_some()));
                    prop_assert_eq!(f.claim(x, y), None, "claimed at most once");
                }
            }
            f.check(&c).map_err(|e| TestCaseError::fail(e.to_string()))?;
        }
    }
}
