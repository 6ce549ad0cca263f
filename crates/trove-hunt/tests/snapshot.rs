//! A hunt's snapshot encoding: exact round trip, and hostile bytes answered
//! with an error, never a panic.

use proptest::prelude::*;
use trove_core::{Game, Outcomes, Stamped};
use trove_hunt::{Hunt, HuntConfig, HuntEvent, HuntState, TreasureHunt};

fn config() -> HuntConfig {
    HuntConfig {
        width: 10,
        height: 8,
        seed: 5,
        treasures_per_round: 15,
        value_min: 1,
        value_max: 9,
        dig_cooldown_ms: 1,
        step_max: 3,
        players_max: 12,
    }
}

/// A hunt with history: joins, leaves, moves, finds and round ends.
fn played(seed: u64, events: usize) -> HuntState {
    let mut rng = trove_core::SplitMix64::new(seed);
    let mut state = HuntState::new(4);
    let mut out = Outcomes::default();
    let mut batch = vec![Stamped { time_us: 0, event: HuntEvent::create(3, config()) }];
    for i in 0..events as u64 {
        let p = rng.below(12);
        let event = match rng.below(10) {
            0 => HuntEvent::join(3, p),
            1 => HuntEvent::leave(3, p),
            2..=5 => HuntEvent::move_by(3, p, rng.below(7) as i16 - 3, rng.below(7) as i16 - 3),
            _ => HuntEvent::dig(3, p),
        };
        batch.push(Stamped { time_us: i * 700, event });
    }
    state.apply(&batch, &mut out);
    state
}

#[test]
fn a_snapshot_rebuilds_the_same_hunt() {
    let mut rounds_max = 0;
    for seed in 0..20 {
        let state = played(seed, 2000);
        let hunt = state.worlds().get(3).unwrap();
        let mut bytes = Vec::new();
        TreasureHunt::encode_world(hunt, &mut bytes);
        let back = TreasureHunt::decode_world(3, &bytes).unwrap();
        let (mut a, mut b) = (trove_core::StateHasher::new(), trove_core::StateHasher::new());
        TreasureHunt::hash_world(hunt, &mut a);
        TreasureHunt::hash_world(&back, &mut b);
        assert_eq!(a.finish(), b.finish(), "seed {seed}");
        assert_eq!(back.round(), hunt.round());
        rounds_max = rounds_max.max(hunt.round());
    }
    assert!(rounds_max > 1, "histories should reach later rounds, got {rounds_max}");
}

#[test]
fn damaged_snapshots_are_refused() {
    let state = played(1, 500);
    let mut bytes = Vec::new();
    TreasureHunt::encode_world(state.worlds().get(3).unwrap(), &mut bytes);
    assert!(Hunt::decode_state(4, &bytes).unwrap_err().to_string().contains("stored under"));
    assert!(Hunt::decode_state(3, &bytes[..bytes.len() - 1]).is_err());
    let mut longer = bytes.clone();
    longer.push(0);
    assert!(Hunt::decode_state(3, &longer).is_err());
}

proptest! {
    /// Any byte changed, any prefix, any garbage: an error or a hunt whose
    /// invariants hold, never a panic.
    #[test]
    fn hostile_bytes_never_panic(at in any::<prop::sample::Index>(), value: u8, cut in any::<prop::sample::Index>()) {
        let state = played(2, 300);
        let mut bytes = Vec::new();
        TreasureHunt::encode_world(state.worlds().get(3).unwrap(), &mut bytes);
        let i = at.index(bytes.len());
        bytes[i] = value;
        if let Ok(h) = Hunt::decode_state(3, &bytes) {
            prop_assert!(h.check().is_ok());
        }
        let _ = Hunt::decode_state(3, &bytes[..cut.index(bytes.len())]);
    }

    #[test]
    fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        let _ = Hunt::decode_state(3, &bytes);
    }

    /// Snapshots keep outcomes to answer retries: every outcome reads back
    /// as itself, using up exactly its bytes; garbage is an error or an
    /// outcome, never a panic.
    #[test]
    fn outcomes_round_trip_and_garbage_never_panics(
        kind in 0usize..8, a: u16, b: u16, c: u32, pick: u8,
        bytes in proptest::collection::vec(any::<u8>(), 0..16),
    ) {
        use trove_hunt::{Band, HuntOutcome as O, Reject};
        let outcome = [
            O::Created { round: c },
            O::Joined { x: a, y: b, score: c },
            O::Left,
            O::Moved { x: a, y: b },
            O::DigFound { value: a, score: c },
            O::DigNothing,
            O::Hint { band: [Band::Hot, Band::Warm, Band::Cold][pick as usize % 3] },
            O::Rejected { reason: Reject::ALL[pick as usize % Reject::ALL.len()] },
        ][kind];
        let mut stored = Vec::new();
        TreasureHunt::store_outcome(&outcome, &mut stored);
        let mut r = trove_core::Reader::new(&stored);
        prop_assert_eq!(TreasureHunt::load_outcome(&mut r), Ok(outcome));
        prop_assert_eq!(r.remaining(), 0);
        let _ = TreasureHunt::load_outcome(&mut trove_core::Reader::new(&bytes));
    }
}
