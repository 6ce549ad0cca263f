//! One test per rule and per rejection reason (docs/game.md).

use trove_core::{Outcomes, Stamped};
use trove_hunt::{Band, HuntBroadcast, HuntConfig, HuntEvent, HuntOutcome, HuntState, Reject};

const HUNT: u32 = 1;

fn config() -> HuntConfig {
    HuntConfig {
        width: 64,
        height: 64,
        seed: 11,
        treasures_per_round: 8,
        value_min: 5,
        value_max: 50,
        dig_cooldown_ms: 100,
        step_max: 255,
        players_max: 100,
    }
}

/// A hunt driven one event at a time, with an explicit engine clock.
struct Table {
    state: HuntState,
    out: Outcomes<HuntOutcome, HuntBroadcast>,
    now_us: u64,
}

impl Table {
    fn new(config: HuntConfig) -> Self {
        let mut t = Table { state: HuntState::new(16), out: Outcomes::default(), now_us: 0 };
        assert_eq!(t.send(HuntEvent::create(HUNT, config)), HuntOutcome::Created { round: 1 });
        t
    }

    fn send(&mut self, event: HuntEvent) -> HuntOutcome {
        self.out.clear();
        self.state.apply(&[Stamped { time_us: self.now_us, event }], &mut self.out);
        self.state.check().unwrap();
        self.out.direct[0]
    }

    fn hunt(&self) -> &trove_hunt::Hunt {
        self.state.worlds().get(HUNT).unwrap()
    }

    fn rejected(&mut self, event: HuntEvent) -> Reject {
        match self.send(event) {
            HuntOutcome::Rejected { reason } => reason,
            other => panic!("{event:?} gave {other:?}"),
        }
    }

    /// Moves `player` to (x, y) with legal steps.
    fn walk_to(&mut self, player: u32, x: u16, y: u16) {
        let p = *self.hunt().player(player).unwrap();
        let dx = i16::try_from(i32::from(x) - i32::from(p.x)).unwrap();
        let dy = i16::try_from(i32::from(y) - i32::from(p.y)).unwrap();
        assert_eq!(self.send(HuntEvent::move_by(HUNT, player, dx, dy)), HuntOutcome::Moved { x, y });
    }

    fn advance_ms(&mut self, ms: u64) {
        self.now_us += ms * 1000;
    }

    fn unclaimed_treasures(&self) -> Vec<(u16, u16, u16)> {
        self.hunt().field().treasures().filter(|t| !t.claimed).map(|t| (t.x, t.y, t.value)).collect()
    }
}

#[test]
fn create_hunt_and_its_rejections() {
    let mut t = Table::new(config());
    assert_eq!(t.rejected(HuntEvent::create(HUNT, config())), Reject::HuntExists);
    let mut bad = config();
    bad.width = 0;
    assert_eq!(t.rejected(HuntEvent::create(2, bad)), Reject::InvalidConfig);
    assert!(t.state.worlds().get(2).is_none());
    assert_eq!(t.hunt().round(), 1);
    assert_eq!(t.hunt().treasures_left(), 8);
}

#[test]
fn too_many_hunts() {
    let mut state = HuntState::new(1);
    let mut out = Outcomes::default();
    let events =
        [HuntEvent::create(1, config()), HuntEvent::create(2, config())].map(|event| Stamped { time_us: 0, event });
    state.apply(&events, &mut out);
    assert_eq!(out.direct[1], HuntOutcome::Rejected { reason: Reject::TooManyHunts });
}

#[test]
fn unknown_hunt() {
    let mut t = Table::new(config());
    for e in [HuntEvent::join(9, 1), HuntEvent::dig(9, 1), HuntEvent::move_by(9, 1, 1, 0), HuntEvent::scan(9, 1)] {
        assert_eq!(t.rejected(e), Reject::UnknownHunt);
    }
}

#[test]
fn invalid_event_kind() {
    let mut t = Table::new(config());
    let mut bytes = [0u8; 32];
    bytes[0] = HUNT as u8;
    bytes[8] = 200; // no such kind
    let e = <HuntEvent as trove_core::Record>::decode(&bytes);
    assert_eq!(t.rejected(e), Reject::InvalidEvent);
}

#[test]
fn join_spawns_deterministically_and_rejects_duplicates() {
    let mut t = Table::new(config());
    let (x, y) = t.hunt().spawn(7);
    assert_eq!(t.send(HuntEvent::join(HUNT, 7)), HuntOutcome::Joined { x, y, score: 0 });
    assert_eq!(t.rejected(HuntEvent::join(HUNT, 7)), Reject::AlreadyJoined);
    assert_eq!(t.hunt().players_joined(), 1);
}

#[test]
fn player_out_of_range() {
    let mut t = Table::new(config());
    assert_eq!(t.rejected(HuntEvent::join(HUNT, 100)), Reject::PlayerOutOfRange);
    assert_eq!(t.rejected(HuntEvent::dig(HUNT, u32::MAX)), Reject::PlayerOutOfRange);
}

#[test]
fn not_joined_and_leave() {
    let mut t = Table::new(config());
    for e in [
        HuntEvent::leave(HUNT, 3),
        HuntEvent::move_by(HUNT, 3, 1, 1),
        HuntEvent::dig(HUNT, 3),
        HuntEvent::scan(HUNT, 3),
    ] {
        assert_eq!(t.rejected(e), Reject::NotJoined);
    }
    t.send(HuntEvent::join(HUNT, 3));
    assert_eq!(t.send(HuntEvent::leave(HUNT, 3)), HuntOutcome::Left);
    assert_eq!(t.hunt().players_joined(), 0);
    assert_eq!(t.rejected(HuntEvent::move_by(HUNT, 3, 1, 1)), Reject::NotJoined);
}

#[test]
fn move_clamps_at_the_edge_and_rejects_big_steps() {
    let mut c = config();
    c.step_max = 3;
    let mut t = Table::new(c);
    t.send(HuntEvent::join(HUNT, 1));
    assert_eq!(t.rejected(HuntEvent::move_by(HUNT, 1, 4, 0)), Reject::StepTooLarge);
    assert_eq!(t.rejected(HuntEvent::move_by(HUNT, 1, 0, -4)), Reject::StepTooLarge);
    assert_eq!(t.rejected(HuntEvent::move_by(HUNT, 1, i16::MIN, 0)), Reject::StepTooLarge);
    for _ in 0..30 {
        t.send(HuntEvent::move_by(HUNT, 1, -3, 3));
    }
    assert_eq!(t.send(HuntEvent::move_by(HUNT, 1, -3, 3)), HuntOutcome::Moved { x: 0, y: 63 });
    let p = t.hunt().player(1).unwrap();
    assert_eq!((p.x, p.y), (0, 63));
}

#[test]
fn dig_finds_scores_broadcasts_and_claims_once() {
    let mut t = Table::new(config());
    t.send(HuntEvent::join(HUNT, 1));
    t.send(HuntEvent::join(HUNT, 2));
    let (x, y, value) = t.unclaimed_treasures()[0];
    t.walk_to(1, x, y);
    t.walk_to(2, x, y);
    assert_eq!(t.send(HuntEvent::dig(HUNT, 1)), HuntOutcome::DigFound { value, score: u32::from(value) });
    assert_eq!(t.hunt().score(1), u32::from(value));
    assert!(matches!(t.out.broadcasts[0].body, HuntBroadcast::TreasureFound { player: 1, treasures_left: 7, .. }));
    match &t.out.broadcasts[1].body {
        HuntBroadcast::LeaderboardChanged { round: 1, top } => {
            assert_eq!(top.entries().len(), 1);
            assert_eq!(top.entries()[0].player, 1);
        }
        other => panic!("{other:?}"),
    }
    // The second player on the same cell finds nothing: claimed once.
    assert_eq!(t.send(HuntEvent::dig(HUNT, 2)), HuntOutcome::DigNothing);
    assert!(t.out.broadcasts.is_empty());
    assert_eq!(t.hunt().treasures_left(), 7);
}

#[test]
fn dig_cooldown_is_engine_time() {
    let mut t = Table::new(config());
    t.send(HuntEvent::join(HUNT, 1));
    let (x, y, _) = t.unclaimed_treasures()[0];
    t.walk_to(1, x, y.wrapping_add(1) % 64);
    assert_eq!(t.send(HuntEvent::dig(HUNT, 1)), HuntOutcome::DigNothing);
    t.advance_ms(99);
    assert_eq!(t.rejected(HuntEvent::dig(HUNT, 1)), Reject::OnCooldown);
    t.advance_ms(1);
    assert_eq!(t.send(HuntEvent::dig(HUNT, 1)), HuntOutcome::DigNothing);
}

#[test]
fn scan_reports_bands() {
    let mut c = config();
    c.treasures_per_round = 1;
    let mut t = Table::new(c);
    t.send(HuntEvent::join(HUNT, 1));
    let (x, y, _) = t.unclaimed_treasures()[0];
    // Walk along the axis that has room, 2, 8 and 9 cells away.
    let away = |d: u16| if x >= 9 { (x - d, y) } else { (x + d, y) };
    for (d, band) in [(0, Band::Hot), (2, Band::Hot), (3, Band::Warm), (8, Band::Warm), (9, Band::Cold)] {
        let (px, py) = away(d);
        t.walk_to(1, px, py);
        assert_eq!(t.send(HuntEvent::scan(HUNT, 1)), HuntOutcome::Hint { band }, "distance {d}");
    }
}

#[test]
fn last_treasure_finishes_the_round_and_places_the_next() {
    let mut c = config();
    c.treasures_per_round = 2;
    let mut t = Table::new(c);
    t.send(HuntEvent::join(HUNT, 1));
    t.send(HuntEvent::join(HUNT, 2));
    let first_round = t.unclaimed_treasures();
    let (x0, y0, v0) = first_round[0];
    let (x1, y1, v1) = first_round[1];
    t.walk_to(1, x0, y0);
    t.send(HuntEvent::dig(HUNT, 1));
    // Player 2 leaves and comes back: its (zero) score and player 1's stay.
    t.send(HuntEvent::leave(HUNT, 2));
    t.send(HuntEvent::join(HUNT, 2));
    t.walk_to(2, x1, y1);
    assert_eq!(t.send(HuntEvent::dig(HUNT, 2)), HuntOutcome::DigFound { value: v1, score: u32::from(v1) });
    let finished = t.out.broadcasts.iter().find_map(|b| match &b.body {
        HuntBroadcast::RoundFinished { round, top } => Some((*round, *top)),
        _ => None,
    });
    let (round, top) = finished.expect("round finished broadcast");
    assert_eq!(round, 1);
    let mut expected = vec![(1, u32::from(v0)), (2, u32::from(v1))];
    expected.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let got: Vec<_> = top.entries().iter().map(|e| (e.player, e.score)).collect();
    assert_eq!(got, expected);
    // Round 2: new treasures, scores back to zero, empty leaderboard.
    assert_eq!(t.hunt().round(), 2);
    assert_eq!(t.hunt().treasures_left(), 2);
    assert_ne!(t.unclaimed_treasures(), first_round);
    assert_eq!(t.hunt().score(1), 0);
    assert!(t.hunt().leaderboard().entries().is_empty());
}

#[test]
fn leaving_keeps_the_round_score() {
    let mut t = Table::new(config());
    t.send(HuntEvent::join(HUNT, 4));
    let (x, y, v) = t.unclaimed_treasures()[0];
    t.walk_to(4, x, y);
    t.send(HuntEvent::dig(HUNT, 4));
    t.send(HuntEvent::leave(HUNT, 4));
    assert_eq!(t.hunt().leaderboard().entries()[0].score, u32::from(v));
    let (sx, sy) = t.hunt().spawn(4);
    assert_eq!(t.send(HuntEvent::join(HUNT, 4)), HuntOutcome::Joined { x: sx, y: sy, score: u32::from(v) });
}

#[test]
fn delete_ends_the_hunt_and_frees_its_id() {
    let mut t = Table::new(config());
    t.send(HuntEvent::join(HUNT, 1));
    let (x, y, value) = t.unclaimed_treasures()[0];
    t.walk_to(1, x, y);
    t.send(HuntEvent::dig(HUNT, 1));
    let before = t.state.state_hash();
    // The delete answers with the round, and tells the subscribers last.
    assert_eq!(t.send(HuntEvent::delete(HUNT)), HuntOutcome::Deleted { round: 1 });
    match &t.out.broadcasts[..] {
        [b] => match &b.body {
            HuntBroadcast::HuntDeleted { round: 1, top } => {
                assert_eq!(top.entries().len(), 1);
                assert_eq!(top.entries()[0].score, u32::from(value));
            }
            other => panic!("{other:?}"),
        },
        other => panic!("{other:?}"),
    }
    assert!(t.state.worlds().get(HUNT).is_none());
    assert!(t.state.worlds().is_empty());
    assert_ne!(t.state.state_hash(), before);
    // The hash of a table whose only hunt was deleted is the empty table's.
    assert_eq!(t.state.state_hash(), HuntState::new(16).state_hash());
    // Every later event of the id is answered as for a hunt that never was.
    for e in [
        HuntEvent::join(HUNT, 1),
        HuntEvent::move_by(HUNT, 1, 1, 0),
        HuntEvent::dig(HUNT, 1),
        HuntEvent::scan(HUNT, 1),
        HuntEvent::leave(HUNT, 1),
        HuntEvent::delete(HUNT),
    ] {
        assert_eq!(t.rejected(e), Reject::UnknownHunt, "{e:?}");
    }
    // Created again, it starts fresh: round 1, no players, no scores.
    assert_eq!(t.send(HuntEvent::create(HUNT, config())), HuntOutcome::Created { round: 1 });
    assert_eq!(t.hunt().players_joined(), 0);
    assert_eq!(t.hunt().score(1), 0);
    assert_eq!(t.hunt().treasures_left(), 8);
    assert!(t.hunt().leaderboard().entries().is_empty());
    assert_eq!(t.rejected(HuntEvent::dig(HUNT, 1)), Reject::NotJoined);
    let mut fresh = Table::new(config());
    assert_eq!(t.state.state_hash(), fresh.state.state_hash());
    assert!(matches!(t.send(HuntEvent::join(HUNT, 1)), HuntOutcome::Joined { .. }));
    assert!(matches!(fresh.send(HuntEvent::join(HUNT, 1)), HuntOutcome::Joined { .. }));
    assert_eq!(t.state.state_hash(), fresh.state.state_hash());
}

#[test]
fn delete_frees_the_place_under_worlds_max() {
    let mut state = HuntState::new(2);
    let mut out = Outcomes::default();
    // A studio running hunt after hunt: 50 hunts through a table of 2.
    for id in 0..50u32 {
        let events = [HuntEvent::create(id, config()), HuntEvent::join(id, 3), HuntEvent::delete(id)]
            .map(|event| Stamped { time_us: 0, event });
        out.clear();
        state.apply(&events, &mut out);
        assert_eq!(out.direct[0], HuntOutcome::Created { round: 1 }, "hunt {id}");
        assert_eq!(out.direct[2], HuntOutcome::Deleted { round: 1 }, "hunt {id}");
    }
    assert!(state.worlds().is_empty());
    state.check().unwrap();
}

/// A delete moves the last hunt of the table into the deleted one's place:
/// the events the batch loop resolved ahead of it must not be applied to
/// the wrong hunt. Applied in one batch, one event at a time and cut
/// everywhere, the outcomes and the state are the same.
#[test]
fn delete_within_a_batch_resolves_the_events_behind_it_again() {
    let mut events = Vec::new();
    for id in 0..4 {
        events.push(HuntEvent::create(id, config()));
    }
    for p in 0..40 {
        events.push(HuntEvent::join(p % 4, p));
        if p == 10 {
            // Hunt 3 (the last) moves into hunt 0's place.
            events.push(HuntEvent::delete(0));
        }
        if p == 25 {
            events.push(HuntEvent::delete(3));
            events.push(HuntEvent::create(0, config()));
        }
    }
    let stamped: Vec<_> = events.iter().map(|&event| Stamped { time_us: 0, event }).collect();
    let mut whole = HuntState::new(8);
    let mut whole_out = Outcomes::default();
    whole.apply(&stamped, &mut whole_out);
    whole.check().unwrap();
    let mut single = HuntState::new(8);
    let mut single_out = Outcomes::default();
    for e in &stamped {
        single.apply(std::slice::from_ref(e), &mut single_out);
    }
    assert_eq!(whole_out.direct, single_out.direct);
    assert_eq!(whole_out.broadcasts, single_out.broadcasts);
    assert_eq!(whole.state_hash(), single.state_hash());
    // Joins to hunt 3 after its delete are refused; to 1 and 2, applied.
    let joined: Vec<u32> = (1..3).map(|id| whole.worlds().get(id).unwrap().players_joined()).collect();
    assert_eq!(joined, vec![10, 10]);
    assert_eq!(whole.worlds().get(0).unwrap().players_joined(), 3);
    assert!(whole.worlds().get(3).is_none());
}
