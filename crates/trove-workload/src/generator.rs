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
///
/// Players are drawn uniformly. Hunts are too, unless the spec's
/// `hunt_zipf` skews them: then the partition's hunts, ranked in hunt
/// order, are drawn from a Zipf distribution through an alias table built
/// once, so an event still costs one draw and one table load. During the
/// spec's storms (event `i` with `i % period_events < burst_events`) the
/// kind is drawn from the storm's mix.
#[derive(Debug, Clone)]
pub struct Generator {
    spec: WorkloadSpec,
    rng: SplitMix64,
    /// One bit per (hunt, player): in the hunt or not.
    joined: Vec<u64>,
    /// The (hunt, player) pairs that are out, as `hunt * players + player`.
    out: Vec<u64>,
    /// The mix outside storms (`[0]`) and during them (`[1]`).
    mixes: [MixTable; 2],
    /// The next event's position in the storm period; events at positions
    /// below `storm_burst` use `mixes[1]`. Without storms the period is
    /// `u64::MAX` and the burst 0.
    storm_pos: u64,
    storm_period: u64,
    storm_burst: u64,
    /// This generator produces events for hunts `h` with
    /// `h % parts == part` only (see [`Generator::partition`]).
    part: u32,
    parts: u32,
    /// The number of hunts in this partition.
    share: u32,
    /// Column `k` of the Zipf alias table over the partition's hunt ranks;
    /// empty when hunts are drawn uniformly.
    hunt_alias: Box<[AliasEntry]>,
    /// Added to every hunt id on the way out (see
    /// [`Generator::with_hunt_base`]); 0 by default.
    hunt_base: u32,
}

/// Cumulative thresholds of a [`crate::Mix`] for one `below(total)` draw.
#[derive(Debug, Clone, Copy)]
struct MixTable {
    thresholds: [u32; 3],
    total: u32,
}

impl MixTable {
    fn new(m: &crate::Mix) -> Self {
        Self {
            thresholds: [m.moves, m.moves + m.dig, m.moves + m.dig + m.scan],
            total: m.moves + m.dig + m.scan + m.join_leave,
        }
    }
}

/// One column of an alias table: the column's own rank when the 32-bit
/// coin is below `keep_below`, `alias` otherwise. A full column has
/// `alias` equal to its own rank, so the coin does not matter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct AliasEntry {
    keep_below: u32,
    alias: u32,
}

impl Generator {
    /// `spec` must be valid.
    pub fn new(spec: &WorkloadSpec) -> Self {
        Self::partition(spec, 0, 1)
    }

    /// The share of the workload for hunts `h % parts == part`, with its own
    /// seed: `parts` producers, one per partition, together offer the whole
    /// workload, and since no two of them touch the same hunt, the final
    /// state does not depend on how their streams interleave. A skewed
    /// workload (`hunt_zipf`) is skewed within each partition: hunt `part`
    /// is the hottest of its partition.
    pub fn partition(spec: &WorkloadSpec, part: u32, parts: u32) -> Self {
        assert!(spec.validate().is_ok(), "Generator with an invalid spec");
        assert!(part < parts && parts <= spec.hunts, "partition {part} of {parts} over {} hunts", spec.hunts);
        let bits = u64::from(spec.hunts) * u64::from(spec.players_per_hunt);
        let share = (spec.hunts - part).div_ceil(parts);
        let mix = MixTable::new(&spec.mix);
        let (storm_mix, storm_period, storm_burst) = match &spec.storm {
            Some(storm) => (MixTable::new(&storm.mix), storm.period_events, storm.burst_events),
            None => (mix, u64::MAX, 0),
        };
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
            mixes: [mix, storm_mix],
            storm_pos: 0,
            storm_period,
            storm_burst,
            part,
            parts,
            share,
            hunt_alias: if spec.hunt_zipf == 0.0 { Box::default() } else { zipf_alias(share, spec.hunt_zipf).into() },
            hunt_base: 0,
        }
    }

    /// The same stream for hunts `base..base + hunts` instead of
    /// `0..hunts`: hunt `h` of the workload goes out as `base + h`, with
    /// `h`'s config (so a shifted workload plays the same game), leaving
    /// the hunts below `base` to whoever else uses the server (`trove
    /// bench --hunt-base`). `base + hunts` must fit in a hunt id.
    pub fn with_hunt_base(mut self, base: u32) -> Self {
        assert!(base.checked_add(self.spec.hunts).is_some(), "hunt base {base} + {} hunts overflows", self.spec.hunts);
        self.hunt_base = base;
        self
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
        let base = self.hunt_base;
        for &h in &hunts {
            events.push(HuntEvent::create(base + h, spec.hunt_config(h)));
        }
        for &h in &hunts {
            for p in 0..spec.players_per_hunt {
                events.push(HuntEvent::join(base + h, p));
            }
        }
        self.joined.fill(u64::MAX);
        self.out.clear();
        events
    }

    /// The next event of the mix.
    #[inline]
    pub fn next_event(&mut self) -> HuntEvent {
        let index = self.part + self.hunt_rank() * self.parts;
        let hunt = self.hunt_base + index;
        let player = self.rng.below(self.spec.players_per_hunt);
        let pos = self.storm_pos;
        self.storm_pos = if pos + 1 == self.storm_period { 0 } else { pos + 1 };
        let mix = self.mixes[usize::from(pos < self.storm_burst)];
        let pick = self.rng.below(mix.total);
        if pick < mix.thresholds[0] {
            let span = u32::from(self.spec.step_max) * 2 + 1;
            let r = self.rng.next_u64();
            let step = i16::from(self.spec.step_max);
            let dx = (((r & 0xFFFF_FFFF) * u64::from(span)) >> 32) as i16 - step;
            let dy = (((r >> 32) * u64::from(span)) >> 32) as i16 - step;
            HuntEvent::move_by(hunt, player, dx, dy)
        } else if pick < mix.thresholds[1] {
            HuntEvent::dig(hunt, player)
        } else if pick < mix.thresholds[2] {
            HuntEvent::scan(hunt, player)
        } else {
            let players = u64::from(self.spec.players_per_hunt);
            let drawn = u64::from(index) * players + u64::from(player);
            let want_join = self.rng.next_u64() & 1 == 1;
            let bit = if (want_join || !self.is_joined(drawn)) && !self.out.is_empty() {
                let i = self.rng.below(self.out.len() as u32) as usize;
                self.out.swap_remove(i)
            } else {
                self.out.push(drawn);
                drawn
            };
            self.joined[(bit / 64) as usize] ^= 1 << (bit % 64);
            let (hunt, player) = (self.hunt_base + (bit / players) as u32, (bit % players) as u32);
            if self.is_joined(bit) { HuntEvent::join(hunt, player) } else { HuntEvent::leave(hunt, player) }
        }
    }

    /// The rank of the next event's hunt within the partition: one draw,
    /// uniform or through the Zipf alias table.
    #[inline]
    fn hunt_rank(&mut self) -> u32 {
        if self.hunt_alias.is_empty() {
            return self.rng.below(self.share);
        }
        let r = self.rng.next_u64();
        let column = ((r >> 32) * u64::from(self.share)) >> 32;
        let entry = self.hunt_alias[column as usize];
        if (r as u32) < entry.keep_below { column as u32 } else { entry.alias }
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

/// Vose's alias table for ranks `0..n` with rank `k` weighted
/// `1 / (k + 1)^s`, in 32-bit fixed point: each rank's share of
/// `n * 2^32` is rounded to an integer (the top rank absorbs the rounding)
/// and the table is built from those integers exactly. The weights use
/// [`pow_neg`], which needs only correctly rounded arithmetic, so every
/// platform builds the same table and the same workload gives the same
/// stream everywhere.
fn zipf_alias(n: u32, s: f64) -> Vec<AliasEntry> {
    const ONE: u64 = 1 << 32;
    let weights: Vec<f64> = (1..=n).map(|k| pow_neg(f64::from(k), s)).collect();
    let total = weights.iter().fold(0.0, |sum, w| sum + w);
    let target = u64::from(n) * ONE;
    let scale = target as f64 / total;
    let mut mass: Vec<u64> = weights.iter().map(|w| (w * scale).round() as u64).collect();
    let rounded: u64 = mass.iter().sum();
    // Off by at most n / 2 plus float error; rank 0 holds at least ONE.
    mass[0] = (mass[0] + target).checked_sub(rounded).expect("Zipf rounding");
    let mut table: Vec<AliasEntry> = (0..n).map(|k| AliasEntry { keep_below: u32::MAX, alias: k }).collect();
    let (mut small, mut large): (Vec<u32>, Vec<u32>) = (0..n).partition(|&k| mass[k as usize] < ONE);
    // Invariant: the unplaced ranks' mass is exactly ONE per unplaced rank.
    // So when `large` runs out `small` has too, and what is left in `large`
    // is full columns, which `table` already holds.
    while let (Some(&l), Some(&g)) = (small.last(), large.last()) {
        small.pop();
        let (l, g) = (l as usize, g as usize);
        table[l] = AliasEntry { keep_below: mass[l] as u32, alias: g as u32 };
        mass[g] -= ONE - mass[l];
        if mass[g] < ONE {
            large.pop();
            small.push(g as u32);
        }
    }
    debug_assert!(small.is_empty() && large.iter().all(|&g| mass[g as usize] == ONE));
    table
}

/// `x^-s` for `1 <= x <= 2^32` and `0 <= s <= 4`: within a few ulps of
/// `x.powf(-s)`, but computed with `+ - * /` only (std's `powf`, `ln` and
/// `exp` call the platform's libm, whose last bits differ between
/// platforms).
fn pow_neg(x: f64, s: f64) -> f64 {
    use std::f64::consts::LN_2;
    debug_assert!((1.0..=4_294_967_296.0).contains(&x) && (0.0..=4.0).contains(&s));
    // ln x = e ln 2 + ln m with x = m 2^e, m in [1, 2) (exact), and
    // ln m = 2 atanh(z) = 2 (z + z^3/3 + z^5/5 + ...), z = (m-1)/(m+1) < 1/3.
    let bits = x.to_bits();
    let e = ((bits >> 52) & 0x7FF) as i32 - 1023;
    let m = f64::from_bits((bits & ((1 << 52) - 1)) | (1023 << 52));
    let z = (m - 1.0) / (m + 1.0);
    let (z2, mut term, mut atanh) = (z * z, z, 0.0);
    for i in 0..24 {
        atanh += term / f64::from(2 * i + 1);
        term *= z2;
    }
    let y = -s * (f64::from(e) * LN_2 + 2.0 * atanh);
    // e^y = 2^j e^r with j = round(y / ln 2), |r| <= ln 2 / 2 (Taylor).
    let j = (y / LN_2).round();
    let r = y - j * LN_2;
    let (mut term, mut exp) = (1.0, 1.0);
    for i in 1..=22 {
        term *= r / f64::from(i);
        exp += term;
    }
    exp * f64::from_bits(((1023 + j as i64) as u64) << 52)
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
    fn a_hunt_base_shifts_every_hunt_and_nothing_else() {
        let spec = small();
        let base = 1_000_000_000;
        let (mut a, mut b) =
            (Generator::partition(&spec, 1, 3), Generator::partition(&spec, 1, 3).with_hunt_base(base));
        for (x, y) in a.setup().into_iter().zip(b.setup()) {
            assert_eq!(HuntEvent { hunt: x.hunt + base, ..x }, y);
        }
        for _ in 0..20_000 {
            let (x, y) = (a.next_event(), b.next_event());
            assert_eq!(HuntEvent { hunt: x.hunt + base, ..x }, y);
        }
    }

    /// A digest of the next `n` events.
    fn stream_hash(g: &mut Generator, n: usize) -> u64 {
        let mut h = 0u64;
        for _ in 0..n {
            let HuntEvent { hunt, player, action } = g.next_event();
            let kind = match action {
                Action::Move { dx, dy } => 1 | u64::from(dx as u16) << 8 | u64::from(dy as u16) << 24,
                Action::Dig => 2,
                Action::Scan => 3,
                Action::Join => 4,
                Action::Leave => 5,
                _ => 6,
            };
            for v in [u64::from(hunt), u64::from(player), kind] {
                h = trove_core::rng::mix64(h ^ v);
            }
        }
        h
    }

    #[test]
    fn without_skew_or_storms_the_stream_is_unchanged() {
        // Digests of the streams the generator produced before `hunt_zipf`
        // and `[storm]` existed: benchmark state hashes stay comparable.
        let mut g = Generator::new(&WorkloadSpec::standard());
        g.setup();
        assert_eq!(stream_hash(&mut g, 300_000), 0x34aa_06e8_f231_245d);
        let mut g = Generator::partition(&small(), 1, 3);
        g.setup();
        assert_eq!(stream_hash(&mut g, 300_000), 0xfd1c_5861_7d18_7c53);

        // A storm whose mix is the normal mix draws exactly the same.
        let storm = crate::Storm { period_events: 1000, burst_events: 300, mix: small().mix };
        let mut a = Generator::new(&small());
        let mut b = Generator::new(&WorkloadSpec { storm: Some(storm), ..small() });
        for _ in 0..10_000 {
            assert_eq!(a.next_event(), b.next_event());
        }
    }

    #[test]
    fn pow_neg_matches_powf() {
        for s in [0.0, 0.001, 0.5, 1.0, 1.1, 2.0, 3.7, 4.0] {
            for x in (1..=2000).chain([4095, 4096, 65_537, 999_999, 1 << 20, u32::MAX]) {
                let (got, want) = (pow_neg(f64::from(x), s), f64::from(x).powf(-s));
                assert!(((got - want) / want).abs() < 1e-13, "{x}^-{s}: {got} vs {want}");
            }
        }
    }

    #[test]
    fn zipf_alias_table_is_exact() {
        for (n, s) in [(1, 1.1), (2, 0.5), (10, 1.1), (334, 1.1), (1000, 2.0), (5000, 4.0)] {
            let table = zipf_alias(n, s);
            assert_eq!(table.len(), n as usize);
            // Each rank's probability, in units of 2^-32 / n.
            let mut mass = vec![0u64; n as usize];
            for (k, e) in table.iter().enumerate() {
                if e.alias == k as u32 {
                    mass[k] += 1 << 32;
                } else {
                    mass[k] += u64::from(e.keep_below);
                    mass[e.alias as usize] += (1 << 32) - u64::from(e.keep_below);
                }
            }
            let total: f64 = (1..=n).map(|k| f64::from(k).powf(-s)).sum();
            for (k, m) in mass.iter().enumerate() {
                let want = f64::from(k as u32 + 1).powf(-s) / total;
                let got = *m as f64 / (f64::from(n) * 4_294_967_296.0);
                assert!((got - want).abs() < 1e-9, "n {n} s {s} rank {k}: {got} vs {want}");
            }
        }
    }

    #[test]
    fn zipf_skews_hunts_within_the_partition() {
        let spec = WorkloadSpec { hunts: 30, players_per_hunt: 10, hunt_zipf: 1.1, ..WorkloadSpec::standard() };
        // Partition 1 of 3 owns hunts 1, 4, .., 28: ranks 1..=10.
        let mut g = Generator::partition(&spec, 1, 3);
        g.setup();
        let n = 200_000;
        let mut counts = [0u32; 10];
        for _ in 0..n {
            let e = g.next_event();
            assert_eq!(e.hunt % 3, 1);
            assert!(e.player < 10);
            counts[(e.hunt / 3) as usize] += 1;
        }
        let total: f64 = (1..=10).map(|k| f64::from(k).powf(-1.1)).sum();
        for (k, c) in counts.iter().enumerate() {
            let want = f64::from(k as u32 + 1).powf(-1.1) / total;
            let got = f64::from(*c) / f64::from(n);
            assert!((got - want).abs() < 0.01, "rank {}: {got:.4} vs {want:.4}, {counts:?}", k + 1);
        }
        // Uniform would give each 10%; the top hunt gets about a third.
        assert!(counts[0] > n / 4, "{counts:?}");
        assert!(counts.windows(2).all(|w| w[0] > w[1]), "{counts:?}");

        // The same seed gives the same skewed stream.
        let (mut a, mut b) = (Generator::new(&spec), Generator::new(&spec));
        assert_eq!(stream_hash(&mut a, 10_000), stream_hash(&mut b, 10_000));
    }

    /// An event's kind: 0 move, 1 dig, 2 scan, 3 join or leave.
    fn kind(e: &HuntEvent) -> usize {
        match e.action {
            Action::Move { .. } => 0,
            Action::Dig => 1,
            Action::Scan => 2,
            Action::Join | Action::Leave => 3,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn storms_use_their_mix_in_bursts_only() {
        let dig_only = crate::Mix { moves: 0, dig: 1, scan: 0, join_leave: 0 };
        let spec = WorkloadSpec {
            storm: Some(crate::Storm { period_events: 1000, burst_events: 100, mix: dig_only }),
            ..small()
        };
        let mut g = Generator::new(&spec);
        g.setup();
        let mut calm = [0u32; 4];
        for i in 0..200_000u32 {
            let k = kind(&g.next_event());
            if i % 1000 < 100 {
                assert_eq!(k, 1, "event {i} is in a burst");
            } else {
                calm[k] += 1;
            }
        }
        let pct = |c: u32| f64::from(c) * 100.0 / 180_000.0;
        assert!((pct(calm[0]) - 70.0).abs() < 0.7, "{calm:?}");
        assert!((pct(calm[1]) - 20.0).abs() < 0.7, "{calm:?}");
        assert!((pct(calm[2]) - 9.0).abs() < 0.7, "{calm:?}");
        assert!((pct(calm[3]) - 1.0).abs() < 0.3, "{calm:?}");

        // A burst as long as the period is a storm that never ends.
        let spec =
            WorkloadSpec { storm: Some(crate::Storm { period_events: 1, burst_events: 1, mix: dig_only }), ..small() };
        let mut g = Generator::new(&spec);
        assert!((0..10_000).all(|_| g.next_event().action == Action::Dig));
    }

    #[test]
    fn join_storm_bursts_are_mostly_joins_and_leaves() {
        let spec = WorkloadSpec { hunts: 10, players_per_hunt: 100, ..WorkloadSpec::join_storm() };
        let mut g = Generator::new(&spec);
        g.setup();
        // [burst, calm, burst] of the built-in 2M-event period.
        let mut windows = [[0u32; 4]; 3];
        for i in 0..2_200_000u32 {
            let w = match i {
                0..200_000 => 0,
                200_000..2_000_000 => 1,
                _ => 2,
            };
            windows[w][kind(&g.next_event())] += 1;
        }
        let share = |w: [u32; 4], k: usize| f64::from(w[k]) / f64::from(w.iter().sum::<u32>());
        for w in [windows[0], windows[2]] {
            assert!((share(w, 3) - 0.9).abs() < 0.01 && (share(w, 0) - 0.1).abs() < 0.01, "{windows:?}");
            assert_eq!(w[1] + w[2], 0, "{windows:?}");
        }
        assert!((share(windows[1], 3) - 0.01).abs() < 0.002, "{windows:?}");
        assert!((share(windows[1], 0) - 0.7).abs() < 0.01, "{windows:?}");
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
