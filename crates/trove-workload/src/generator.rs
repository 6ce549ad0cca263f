//! A deterministic event stream.

use trove_core::{SplitMix64, Stamped};
use trove_hunt::HuntEvent;

use crate::spec::WorkloadSpec;

/// Generates a workload's events from its seed.
///
/// It tracks which players are in their hunt, so the join/leave share of the
/// mix is half leaves of players who are in and half joins of players who
/// are out, as a game server with a steady population would send. Hunts are
/// numbered `0..hunts` and players `0..players_per_hunt`.
#[derive(Debug, Clone)]
pub struct Generator {
    spec: WorkloadSpec,
    rng: SplitMix64,
    /// One bit per (hunt, player): in the hunt or not.
    joined: Vec<u64>,
    /// The (hunt, player) pairs that are out, as `hunt * players + player`.
    out: Vec<u64>,
    thresholds: [u32; 3],
    mix_total: u32,
    /// This generator produces events for hunts `h` with
    /// `h % parts == part` only (see [`Generator::partition`]).
    part: u32,
    parts: u32,
}

impl Generator {
    /// `spec` must be valid.
    pub fn new(spec: &WorkloadSpec) -> Self {
        Self::partition(spec, 0, 1)
    }

    /// The share of the workload for hunts `h % parts == part`, with its own
    /// seed: `parts` producers, one per partition, together offer the whole
    /// workload, and since no two of them touch the same hunt, the final
    /// state does not depend on how their streams interleave.
    pub fn partition(spec: &WorkloadSpec, part: u32, parts: u32) -> Self {
        assert!(spec.validate().is_ok(), "Generator with an invalid spec");
        assert!(part < parts && parts <= spec.hunts, "partition {part} of {parts} over {} hunts", spec.hunts);
        let m = spec.mix;
        let bits = u64::from(spec.hunts) * u64::from(spec.players_per_hunt);
        Self {
            spec: spec.clone(),
            rng: SplitMix64::new(if parts == 1 {
                spec.seed
            } else {
                trove_core::rng::mix64(spec.seed ^ (u64::from(part) << 32) ^ (u64::from(parts) << 48))
            }),
            joined: vec![0; bits.div_ceil(64) as usize],
            out: (0..bits)
                .filter(|b| (b / u64::from(spec.players_per_hunt)) % u64::from(parts) == u64::from(part))
                .collect(),
            thresholds: [m.moves, m.moves + m.dig, m.moves + m.dig + m.scan],
            mix_total: m.moves + m.dig + m.scan + m.join_leave,
            part,
            parts,
        }
    }

    pub fn spec(&self) -> &WorkloadSpec {
        &self.spec
    }

    /// The events that create every hunt and join every player, in order.
    /// Marks every player as joined.
    pub fn setup(&mut self) -> Vec<HuntEvent> {
        let spec = &self.spec;
        let hunts: Vec<u32> = (self.part..spec.hunts).step_by(self.parts as usize).collect();
        let mut events = Vec::with_capacity(hunts.len() * (1 + spec.players_per_hunt as usize));
        for &h in &hunts {
            events.push(HuntEvent::create(h, spec.hunt_config(h)));
        }
        for &h in &hunts {
            for p in 0..spec.players_per_hunt {
                events.push(HuntEvent::join(h, p));
            }
        }
        self.joined.fill(u64::MAX);
        self.out.clear();
        events
    }

    /// The next event of the mix.
    #[inline]
    pub fn next_event(&mut self) -> HuntEvent {
        let share = (self.spec.hunts - self.part).div_ceil(self.parts);
        let hunt = self.part + self.rng.below(share) * self.parts;
        let player = self.rng.below(self.spec.players_per_hunt);
        let pick = self.rng.below(self.mix_total);
        if pick < self.thresholds[0] {
            let span = u32::from(self.spec.step_max) * 2 + 1;
            let r = self.rng.next_u64();
            let step = i16::from(self.spec.step_max);
            let dx = (((r & 0xFFFF_FFFF) * u64::from(span)) >> 32) as i16 - step;
            let dy = (((r >> 32) * u64::from(span)) >> 32) as i16 - step;
            HuntEvent::move_by(hunt, player, dx, dy)
        } else if pick < self.thresholds[1] {
            HuntEvent::dig(hunt, player)
        } else if pick < self.thresholds[2] {
            HuntEvent::scan(hunt, player)
        } else {
            let players = u64::from(self.spec.players_per_hunt);
            let drawn = u64::from(hunt) * players + u64::from(player);
            let want_join = self.rng.next_u64() & 1 == 1;
            let bit = if (want_join || !self.is_joined(drawn)) && !self.out.is_empty() {
                let i = self.rng.below(self.out.len() as u32) as usize;
                self.out.swap_remove(i)
            } else {
                self.out.push(drawn);
                drawn
            };
            self.joined[(bit / 64) as usize] ^= 1 << (bit % 64);
            let (hunt, player) = ((bit / players) as u32, (bit % players) as u32);
            if self.is_joined(bit) { HuntEvent::join(hunt, player) } else { HuntEvent::leave(hunt, player) }
        }
    }

    #[inline]
    fn is_joined(&self, bit: u64) -> bool {
        self.joined[(bit / 64) as usize] & (1 << (bit % 64)) != 0
    }

    /// Appends `n` events of the mix, stamped by `clock`.
    pub fn fill(&mut self, clock: &mut Clock, n: usize, out: &mut Vec<Stamped<HuntEvent>>) {
        out.reserve(n);
        for _ in 0..n {
            let event = self.next_event();
            out.push(Stamped { time_us: clock.tick(), event });
        }
    }
}

/// Synthetic engine time for in-process runs: event i is stamped
/// `i * 1e6 / events_per_s` microseconds.
#[derive(Debug, Clone)]
pub struct Clock {
    events: u64,
    events_per_s: u64,
}

impl Clock {
    pub fn new(events_per_s: u64) -> Self {
        assert!(events_per_s > 0);
        Self { events: 0, events_per_s }
    }

    #[inline]
    pub fn tick(&mut self) -> u64 {
        let t = (u128::from(self.events) * 1_000_000 / u128::from(self.events_per_s)) as u64;
        self.events += 1;
        t
    }

    /// Stamps a batch of events at the clock's current times.
    pub fn stamp(&mut self, events: impl IntoIterator<Item = HuntEvent>) -> Vec<Stamped<HuntEvent>> {
        events.into_iter().map(|event| Stamped { time_us: self.tick(), event }).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use trove_hunt::Action;

    fn small() -> WorkloadSpec {
        WorkloadSpec { hunts: 10, players_per_hunt: 100, ..WorkloadSpec::standard() }
    }

    #[test]
    fn same_seed_same_stream() {
        let (mut a, mut b) = (Generator::new(&small()), Generator::new(&small()));
        for _ in 0..10_000 {
            assert_eq!(a.next_event(), b.next_event());
        }
    }

    #[test]
    fn mix_matches_the_spec() {
        let mut g = Generator::new(&small());
        g.setup();
        let mut counts = [0u32; 5];
        let n = 200_000;
        for _ in 0..n {
            let e = g.next_event();
            assert!(e.hunt < 10 && e.player < 100);
            let i = match e.action {
                Action::Move { dx, dy } => {
                    assert!(dx.abs() <= 4 && dy.abs() <= 4);
                    0
                }
                Action::Dig => 1,
                Action::Scan => 2,
                Action::Join | Action::Leave => 3,
                _ => 4,
            };
            counts[i] += 1;
        }
        let pct = |c: u32| f64::from(c) * 100.0 / f64::from(n);
        assert!((pct(counts[0]) - 70.0).abs() < 0.5, "{counts:?}");
        assert!((pct(counts[1]) - 20.0).abs() < 0.5, "{counts:?}");
        assert!((pct(counts[2]) - 9.0).abs() < 0.5, "{counts:?}");
        assert!((pct(counts[3]) - 1.0).abs() < 0.2, "{counts:?}");
        assert_eq!(counts[4], 0);
    }

    #[test]
    fn join_leave_keeps_the_population_steady() {
        let spec = WorkloadSpec {
            hunts: 1,
            players_per_hunt: 1,
            mix: crate::Mix { moves: 0, dig: 0, scan: 0, join_leave: 1 },
            ..WorkloadSpec::standard()
        };
        let mut g = Generator::new(&spec);
        g.setup();
        // One player: it can only leave, then join, then leave...
        let kinds: Vec<_> = (0..4).map(|_| g.next_event().action).collect();
        assert_eq!(kinds, [Action::Leave, Action::Join, Action::Leave, Action::Join]);

        // Many players: the out population stays small, and every join is of
        // a player who is out and every leave of one who is in.
        let spec = WorkloadSpec { hunts: 10, players_per_hunt: 100, ..spec };
        let mut g = Generator::new(&spec);
        g.setup();
        let mut joined = vec![true; 1000];
        let mut out_max = 0;
        for _ in 0..100_000 {
            let e = g.next_event();
            let slot = &mut joined[(e.hunt * 100 + e.player) as usize];
            match e.action {
                Action::Join => assert!(!std::mem::replace(slot, true)),
                Action::Leave => assert!(std::mem::replace(slot, false)),
                other => panic!("{other:?}"),
            }
            out_max = out_max.max(joined.iter().filter(|j| !**j).count());
        }
        assert!(out_max < 100, "out population grew to {out_max}");
    }

    #[test]
    fn partitions_split_the_hunts() {
        let spec = small();
        let mut seen = [false; 10];
        for part in 0..3 {
            let mut g = Generator::partition(&spec, part, 3);
            for e in g.setup() {
                assert_eq!(e.hunt % 3, part);
                seen[e.hunt as usize] = true;
            }
            for _ in 0..10_000 {
                assert_eq!(g.next_event().hunt % 3, part);
            }
        }
        assert!(seen.iter().all(|s| *s));
    }

    #[test]
    fn clock_is_monotonic_at_the_virtual_rate() {
        let mut c = Clock::new(10_000_000);
        let times: Vec<u64> = (0..21).map(|_| c.tick()).collect();
        assert_eq!(times[0], 0);
        assert_eq!(times[10], 1);
        assert_eq!(times[20], 2);
        assert!(times.windows(2).all(|w| w[0] <= w[1]));
    }
}
