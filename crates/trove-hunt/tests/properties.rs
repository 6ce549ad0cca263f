//! Property tests of the rules' invariants (docs/game.md, "Invariants").

use std::collections::HashSet;

use proptest::prelude::*;
use trove_core::{Outcomes, Stamped};
use trove_hunt::{HuntBroadcast, HuntConfig, HuntEvent, HuntOutcome, HuntState};

/// Small, dense hunts so that finds and round ends happen often: an even
/// seed gives many treasures a round (many finds), an odd one two (many
/// round ends).
fn config(seed: u32) -> HuntConfig {
    HuntConfig {
        width: 8,
        height: 6,
        seed,
        treasures_per_round: if seed.is_multiple_of(2) { 12 } else { 2 },
        value_min: 1,
        value_max: 20,
        dig_cooldown_ms: 2,
        step_max: 3,
        players_max: 8,
    }
}

fn event() -> impl Strategy<Value = HuntEvent> {
    let hunt = 0u32..3; // hunt 2 is never created: unknown-hunt paths
    let player = 0u32..10; // 8 and 9 are out of range
    (hunt, player, 0u8..100, -4i16..=4, -4i16..=4).prop_map(|(h, p, k, dx, dy)| match k {
        0..=9 => HuntEvent::join(h, p),
        10..=12 => HuntEvent::leave(h, p),
        13..=49 => HuntEvent::move_by(h, p, dx, dy),
        50..=84 => HuntEvent::dig(h, p),
        // Rare, so that hunts live long enough for their rounds to end.
        97 if dx == 4 => HuntEvent::delete(h),
        85..=97 => HuntEvent::scan(h, p),
        _ => HuntEvent::create(h, config(p)),
    })
}

/// Stamped events with non-decreasing times (steps of 0..1500 µs).
fn history() -> impl Strategy<Value = Vec<Stamped<HuntEvent>>> {
    proptest::collection::vec((event(), 0u64..1500), 1..600).prop_map(|v| {
        let mut now = 0;
        let mut out = vec![
            Stamped { time_us: 0, event: HuntEvent::create(0, config(1)) },
            Stamped { time_us: 0, event: HuntEvent::create(1, config(2)) },
        ];
        for (event, dt) in v {
            now += dt;
            out.push(Stamped { time_us: now, event });
        }
        out
    })
}

fn run(events: &[Stamped<HuntEvent>], cuts: &[usize]) -> (HuntState, Outcomes<HuntOutcome, HuntBroadcast>) {
    let mut state = HuntState::new(8);
    let mut out = Outcomes::default();
    let mut start = 0;
    let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (events.len() + 1)).collect();
    cuts.push(events.len());
    cuts.sort_unstable();
    for end in cuts {
        state.apply(&events[start..end], &mut out);
        start = end;
    }
    (state, out)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    /// Positions on the map, scores == claimed values, leaderboard exact:
    /// `check` verifies them from scratch after every event.
    #[test]
    fn invariants_hold_after_every_event(events in history()) {
        let mut state = HuntState::new(8);
        let mut out = Outcomes::default();
        for e in &events {
            state.apply(std::slice::from_ref(e), &mut out);
            state.check().map_err(|e| TestCaseError::fail(e.to_string()))?;
        }
        prop_assert_eq!(out.direct.len(), events.len());
    }

    /// A treasure is claimed at most once per round (of one hunt: a hunt
    /// deleted and created again starts its rounds afresh).
    #[test]
    fn treasure_claimed_at_most_once_per_round(events in history()) {
        let (_, out) = run(&events, &[]);
        let mut claimed = HashSet::new();
        let mut generation = std::collections::HashMap::new();
        for b in &out.broadcasts {
            let g = *generation.get(&b.world).unwrap_or(&0u32);
            match b.body {
                HuntBroadcast::TreasureFound { round, x, y, .. } => {
                    prop_assert!(claimed.insert((b.world, g, round, x, y)), "claimed twice: {:?}", b);
                }
                HuntBroadcast::HuntDeleted { .. } => {
                    generation.insert(b.world, g + 1);
                }
                _ => {}
            }
        }
    }

    /// Same events, any batch boundaries: same outcomes, same state hash.
    #[test]
    fn batch_boundaries_do_not_matter(events in history(), cuts in proptest::collection::vec(any::<usize>(), 0..20)) {
        let (whole, whole_out) = run(&events, &[]);
        let (split, split_out) = run(&events, &cuts);
        prop_assert_eq!(whole.state_hash(), split.state_hash());
        prop_assert_eq!(whole_out.direct, split_out.direct);
        prop_assert_eq!(whole_out.broadcasts, split_out.broadcasts);
    }

    /// One-at-a-time equals one batch (the prefetching chunk loop included).
    #[test]
    fn single_steps_equal_one_batch(events in history()) {
        let (batch, _) = run(&events, &[]);
        let every: Vec<usize> = (0..events.len()).collect();
        let (single, _) = run(&events, &every);
        prop_assert_eq!(batch.state_hash(), single.state_hash());
    }
}

#[test]
fn different_histories_hash_differently() {
    let e = |event| Stamped { time_us: 0, event };
    let mut a = HuntState::new(4);
    let mut b = HuntState::new(4);
    let mut out = Outcomes::default();
    a.apply(&[e(HuntEvent::create(0, config(1))), e(HuntEvent::join(0, 1))], &mut out);
    b.apply(&[e(HuntEvent::create(0, config(1))), e(HuntEvent::join(0, 2))], &mut out);
    assert_ne!(a.state_hash(), b.state_hash());
}

/// Guards the properties above against vacuity: their histories do reach
/// finds, leaderboard changes, round ends and deletes.
#[test]
fn histories_exercise_finds_and_round_ends() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let (mut found, mut finished, mut deleted) = (0, 0, 0);
    for _ in 0..50 {
        let events = history().new_tree(&mut runner).unwrap().current();
        let (_, out) = run(&events, &[]);
        for b in &out.broadcasts {
            match b.body {
                HuntBroadcast::TreasureFound { .. } => found += 1,
                HuntBroadcast::RoundFinished { .. } => finished += 1,
                HuntBroadcast::LeaderboardChanged { .. } => {}
                HuntBroadcast::HuntDeleted { .. } => deleted += 1,
            }
        }
    }
    assert!(found > 50, "only {found} finds");
    assert!(deleted > 3, "only {deleted} deletes");
    assert!(finished > 2, "only {finished} round ends");
}
