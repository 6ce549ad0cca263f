//! A round's treasures and their spatial index.

use std::collections::HashSet;
use std::hash::BuildHasherDefault;

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

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Treasure {
    pub x: u16,
    pub y: u16,
    pub value: u16,
    pub claimed: bool,
}

/// The treasures of one round, grouped by bucket (a uniform grid, stored as
/// compressed rows: `bucket_start[b]..bucket_start[b + 1]` are bucket b's
/// treasures). Dig looks in one bucket; scan in at most four. Rebuilt at
/// each round, never resized in between.
#[derive(Clone, Debug)]
pub struct TreasureField {
    treasures: Vec<Treasure>,
    bucket_start: Vec<u32>,
    buckets_x: u32,
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
            placed.push(Treasure {
                x: x as u16,
                y: y as u16,
                value,
                claimed: false,
            });
        }

        let buckets_x = ((w - 1) >> BUCKET_SHIFT) + 1;
        let buckets_y = ((h - 1) >> BUCKET_SHIFT) + 1;
        let buckets = (buckets_x * buckets_y) as usize;
        let bucket_of = |t: &Treasure| {
            ((u32::from(t.y) >> BUCKET_SHIFT) * buckets_x + (u32::from(t.x) >> BUCKET_SHIFT))
                as usize
        };
        // Counting sort into buckets, stable in placement order.
        let mut bucket_start = vec![0u32; buckets + 1];
        for t in &placed {
            bucket_start[bucket_of(t) + 1] += 1;
        }
        for b in 0..buckets {
            bucket_start[b + 1] += bucket_start[b];
        }
        let mut next = bucket_start.clone();
        let mut treasures = vec![placed[0]; count];
        for t in placed {
            let b = bucket_of(&t);
            treasures[next[b] as usize] = t;
            next[b] += 1;
        }
        Self {
            treasures,
            bucket_start,
            buckets_x,
            unclaimed: count as u32,
            claimed_value: 0,
        }
    }

    pub fn unclaimed(&self) -> u32 {
        self.unclaimed
    }

    /// Sum of the values claimed this round.
    pub fn claimed_value(&self) -> u64 {
        self.claimed_value
    }

    pub fn treasures(&self) -> &[Treasure] {
        &self.treasures
    }

    #[inline]
    fn bucket(&self, bx: u32, by: u32) -> &[Treasure] {
        let b = (by * self.buckets_x + bx) as usize;
        &self.treasures[self.bucket_start[b] as usize..self.bucket_start[b + 1] as usize]
    }

    /// Claims the unclaimed treasure at (x, y), if any; returns its value.
    pub fn claim(&mut self, x: u16, y: u16) -> Option<u16> {
        let b = ((u32::from(y) >> BUCKET_SHIFT) * self.buckets_x + (u32::from(x) >> BUCKET_SHIFT))
            as usize;
        let range = self.bucket_start[b] as usize..self.bucket_start[b + 1] as usize;
        let t = self.treasures[range]
            .iter_mut()
            .find(|t| t.x == x && t.y == y)?;
        if t.claimed {
            return None;
        }
        t.claimed = true;
        self.unclaimed -= 1;
        self.claimed_value += u64::from(t.value);
        Some(t.value)
    }

    /// The band of the nearest unclaimed treasure from (x, y).
    pub fn scan(&self, x: u16, y: u16) -> Band {
        let (x, y) = (u32::from(x), u32::from(y));
        let bx_max = self.buckets_x - 1;
        let by_max = (self.bucket_start.len() as u32 - 1) / self.buckets_x - 1;
        let bx0 = x.saturating_sub(WARM_CELLS) >> BUCKET_SHIFT;
        let bx1 = ((x + WARM_CELLS) >> BUCKET_SHIFT).min(bx_max);
        let by0 = y.saturating_sub(WARM_CELLS) >> BUCKET_SHIFT;
        let by1 = ((y + WARM_CELLS) >> BUCKET_SHIFT).min(by_max);
        let mut nearest = u32::MAX;
        for by in by0..=by1 {
            for bx in bx0..=bx1 {
                for t in self.bucket(bx, by) {
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
        }
        if nearest <= WARM_CELLS {
            Band::Warm
        } else {
            Band::Cold
        }
    }

    pub fn hash(&self, h: &mut StateHasher) {
        h.u64(self.treasures.len() as u64);
        for t in &self.treasures {
            h.u16(t.x);
            h.u16(t.y);
            h.u16(t.value);
            h.bool(t.claimed);
        }
    }

    /// Exhaustive check of the field's own bookkeeping.
    pub fn check(&self, config: &HuntConfig) -> Result<(), String> {
        let unclaimed = self.treasures.iter().filter(|t| !t.claimed).count() as u32;
        if unclaimed != self.unclaimed {
            return Err(format!(
                "unclaimed count {} but {} flags",
                self.unclaimed, unclaimed
            ));
        }
        let claimed: u64 = self
            .treasures
            .iter()
            .filter(|t| t.claimed)
            .map(|t| u64::from(t.value))
            .sum();
        if claimed != self.claimed_value {
            return Err(format!(
                "claimed value {} but treasures sum to {}",
                self.claimed_value, claimed
            ));
        }
        let mut cells = HashSet::new();
        for t in &self.treasures {
            if t.x >= config.width || t.y >= config.height {
                return Err(format!("treasure off the map at ({}, {})", t.x, t.y));
            }
            if !cells.insert((t.x, t.y)) {
                return Err(format!("two treasures at ({}, {})", t.x, t.y));
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
        assert_eq!(a.treasures(), TreasureField::place(&c, 1).treasures());
        assert_ne!(a.treasures(), TreasureField::place(&c, 2).treasures());
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
            .iter()
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
            f.check(&c).map_err(TestCaseError::fail)?;
        }
    }
}
