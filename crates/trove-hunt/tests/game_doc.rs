//! docs/game.md as a second implementation would read it: `mix64`,
//! SplitMix64, spawn cells, treasure placement and the state hash written
//! again here from the doc's text alone, checked against the crate on many
//! seeds, and the doc's test-vector table checked against both, so neither
//! the doc nor the code can drift.

use trove_core::StateHasher;
use trove_core::state::combine_world_hashes;
use trove_hunt::{Action, Hunt, HuntConfig, HuntOutcome};

const DOC: &str = include_str!("../../../docs/game.md");

// ---- The reference, from docs/game.md ------------------------------------

fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        mix64(self.0)
    }
    fn below(&mut self, n: u32) -> u32 {
        (((self.next() >> 32) * u64::from(n)) >> 32) as u32
    }
}

fn spawn(c: &HuntConfig, player: u32) -> (u16, u16) {
    let r = mix64((u64::from(c.seed) << 32) | u64::from(player));
    let x = ((r & 0xFFFF_FFFF) * u64::from(c.width)) >> 32;
    let y = ((r >> 32) * u64::from(c.height)) >> 32;
    (x as u16, y as u16)
}

/// (x, y, value) in the order drawn.
fn draw_treasures(c: &HuntConfig, round: u32) -> Vec<(u16, u16, u16)> {
    let mut rng = Rng(mix64((u64::from(c.seed) << 32) | u64::from(round)));
    let (w, h) = (u32::from(c.width), u32::from(c.height));
    let mut out: Vec<(u16, u16, u16)> = Vec::new();
    while out.len() < usize::from(c.treasures_per_round) {
        let (x, y) = (rng.below(w) as u16, rng.below(h) as u16);
        if out.iter().any(|t| (t.0, t.1) == (x, y)) {
            continue;
        }
        let value = c.value_min + rng.below(u32::from(c.value_max - c.value_min) + 1) as u16;
        out.push((x, y, value));
    }
    out
}

/// The canonical order: by 16 x 16 bucket in row order, then drawn order.
fn canonical(c: &HuntConfig, mut drawn: Vec<(u16, u16, u16)>) -> Vec<(u16, u16, u16)> {
    let buckets_x = u32::from(c.width).div_ceil(16);
    drawn.sort_by_key(|t| (u32::from(t.1) >> 4) * buckets_x + (u32::from(t.0) >> 4)); // stable
    drawn
}

struct Hasher {
    h: u64,
    words: u64,
}

impl Hasher {
    fn new() -> Self {
        Hasher { h: 0x2716_0B1D_7465_7276, words: 0 }
    }
    fn word(&mut self, w: u64) {
        self.h = (self.h ^ w.wrapping_mul(0x9E37_79B1_85EB_CA87)).rotate_left(31).wrapping_mul(0xC2B2_AE3D_27D4_EB4F);
        self.words += 1;
    }
    fn finish(&self) -> u64 {
        let mut x = self.h ^ self.words;
        x ^= x >> 33;
        x = x.wrapping_mul(0xFF51_AFD7_ED55_8CCD);
        x ^= x >> 33;
        x = x.wrapping_mul(0xC4CE_B9FE_1A85_EC53);
        x ^ (x >> 33)
    }
}

/// The hash of a hunt in round 1 with nothing claimed, whose only
/// non-initial players are `joined` (ascending ids, just joined: score 0,
/// dig_ready_at 0) and whose leaderboard is empty.
fn hunt_hash(id: u32, c: &HuntConfig, joined: &[u32]) -> u64 {
    let mut h = Hasher::new();
    h.word(u64::from(id));
    for v in [c.width, c.height, c.treasures_per_round, c.value_min, c.value_max, c.dig_cooldown_ms] {
        h.word(u64::from(v));
    }
    h.word(u64::from(c.seed));
    h.word(u64::from(c.step_max));
    h.word(u64::from(c.players_max));
    h.word(1); // round
    h.word(joined.len() as u64);
    let treasures = canonical(c, draw_treasures(c, 1));
    h.word(treasures.len() as u64);
    for (x, y, value) in treasures {
        for w in [x, y, value] {
            h.word(u64::from(w));
        }
        h.word(0); // claimed: false
    }
    for &p in joined {
        let (x, y) = spawn(c, p);
        for w in [u64::from(p), 1, u64::from(x), u64::from(y), 0, 0] {
            h.word(w);
        }
    }
    h.word(u64::MAX);
    h.finish()
}

fn total_hash(hunts: &[(u32, u64)]) -> u64 {
    let mut h = Hasher::new();
    h.word(hunts.len() as u64);
    for &(id, hash) in hunts {
        h.word(u64::from(id));
        h.word(hash);
    }
    h.finish()
}

// ---- The crate against the reference -------------------------------------

fn config(width: u16, height: u16, seed: u32, treasures: u16) -> HuntConfig {
    HuntConfig {
        width,
        height,
        seed,
        treasures_per_round: treasures,
        value_min: 1,
        value_max: 9,
        dig_cooldown_ms: 0,
        step_max: 4,
        players_max: 1000,
    }
}

fn crate_hash(hunt: &Hunt) -> u64 {
    let mut h = StateHasher::new();
    hunt.hash_state(&mut h);
    h.finish()
}

fn join_all(hunt: &mut Hunt, players: &[u32]) {
    let mut out = Default::default();
    for &p in players {
        assert!(matches!(hunt.apply(0, p, &Action::Join, &mut out), HuntOutcome::Joined { .. }));
    }
}

#[test]
fn a_second_implementation_from_the_doc_agrees_with_the_crate() {
    let mut seeds = trove_core::SplitMix64::new(0x5EED);
    let mut sizes = vec![(1, 4, 1), (64, 64, 64), (256, 256, 64), (100, 37, 200), (4096, 4096, 1000)];
    for _ in 0..20 {
        let w = 2 + seeds.below(300) as u16;
        let h = 2 + seeds.below(300) as u16;
        let n = 1 + seeds.below(u32::from(w) * u32::from(h) / 4) as u16;
        sizes.push((w, h, n.min(500)));
    }
    for (w, h, n) in sizes {
        let c = config(w, h, seeds.next_u64() as u32, n);
        assert!(c.validate().is_ok(), "{c:?}");
        let mut hunt = Hunt::new(11, c);
        for p in [0, 1, 5, 999] {
            assert_eq!(hunt.spawn(p), spawn(&c, p), "spawn of {p} in {c:?}");
        }
        for round in [1, 2, 77] {
            let mine = canonical(&c, draw_treasures(&c, round));
            let field = trove_hunt::field::TreasureField::place(&c, round);
            let theirs: Vec<_> = field.treasures().map(|t| (t.x, t.y, t.value)).collect();
            assert_eq!(theirs, mine, "treasures of round {round} in {c:?}");
        }
        assert_eq!(crate_hash(&hunt), hunt_hash(11, &c, &[]), "{c:?}");
        join_all(&mut hunt, &[3, 0, 900]);
        assert_eq!(crate_hash(&hunt), hunt_hash(11, &c, &[0, 3, 900]), "{c:?}");
    }
}

#[test]
fn the_docs_test_vectors_hold() {
    let vectors = vectors();
    for line in &vectors {
        assert!(DOC.contains(line.as_str()), "docs/game.md lacks (or has another value for):\n{line}");
    }
}

/// The lines of the table in docs/game.md, computed by the crate; each is
/// also computed by the reference above and must agree.
fn vectors() -> Vec<String> {
    let mut lines = Vec::new();
    let row = |what: String, value: String| format!("| {what} | {value} |");
    for x in [0u64, 1, 0x0000_0007_0000_0001, u64::MAX] {
        let v = trove_core::rng::mix64(x);
        assert_eq!(v, mix64(x));
        lines.push(row(format!("`mix64(0x{x:016X})`"), format!("`0x{v:016X}`")));
    }
    let mut r = trove_core::SplitMix64::new(7);
    let mut reference = Rng(7);
    let (a, b) = (r.next_u64(), r.below(100));
    assert_eq!((a, b), (reference.next(), reference.below(100)));
    lines.push(row("SplitMix64 seeded 7: first `next`, then `below(100)`".into(), format!("`0x{a:016X}`, `{b}`")));

    let c = config(64, 64, 7, 4);
    let hunt = Hunt::new(1, c);
    for p in [0u32, 5] {
        let (x, y) = hunt.spawn(p);
        assert_eq!((x, y), spawn(&c, p));
        lines.push(row(format!("spawn cell of player {p} (seed 7, 64 x 64)"), format!("`({x}, {y})`")));
    }
    let drawn = draw_treasures(&c, 1);
    let shown: Vec<String> = drawn.iter().map(|(x, y, v)| format!("({x}, {y}, {v})")).collect();
    lines.push(row("round 1 treasures as drawn (x, y, value) (seed 7, 64 x 64, 4 treasures, values 1..=9)".into(), {
        format!("`{}`", shown.join(" "))
    }));
    let canon = canonical(&c, drawn);
    let field = trove_hunt::field::TreasureField::place(&c, 1);
    assert_eq!(field.treasures().map(|t| (t.x, t.y, t.value)).collect::<Vec<_>>(), canon);
    let shown: Vec<String> = canon.iter().map(|(x, y, v)| format!("({x}, {y}, {v})")).collect();
    lines.push(row("the same in canonical (bucket) order".into(), format!("`{}`", shown.join(" "))));

    let empty = StateHasher::new().finish();
    assert_eq!(empty, Hasher::new().finish());
    lines.push(row("state hasher: no word".into(), format!("`0x{empty:016X}`")));
    let mut h = StateHasher::new();
    h.u64(1);
    h.u32(2);
    let mut reference = Hasher::new();
    reference.word(1);
    reference.word(2);
    assert_eq!(h.finish(), reference.finish());
    lines.push(row("state hasher: words 1, 2".into(), format!("`0x{:016X}`", h.finish())));

    let mut hunt = hunt;
    let fresh = crate_hash(&hunt);
    assert_eq!(fresh, hunt_hash(1, &c, &[]));
    lines.push(row(
        "hash of hunt 1 just created (that config, `dig_cooldown_ms` 0, `step_max` 4, `players_max` 1000)".into(),
        format!("`0x{fresh:016X}`"),
    ));
    join_all(&mut hunt, &[5]);
    let joined = crate_hash(&hunt);
    assert_eq!(joined, hunt_hash(1, &c, &[5]));
    lines.push(row("the same after player 5 joined".into(), format!("`0x{joined:016X}`")));
    let total = combine_world_hashes(vec![(1, joined)]);
    assert_eq!(total, total_hash(&[(1, joined)]));
    lines.push(row("total state hash of that one hunt".into(), format!("`0x{total:016X}`")));
    lines
}

/// Prints the table for the doc: `cargo test -p trove-hunt --test game_doc
/// print_vectors -- --ignored --nocapture`.
#[test]
#[ignore]
fn print_vectors() {
    for line in vectors() {
        println!("{line}");
    }
}
