//! The treasure hunt as a `trove_core::Game`.

use trove_core::{DecodeError, Game, InsertError, InvariantError, Outcomes, Stamped, StateHasher, WorldId, Worlds};

use crate::event::{Action, HuntEvent};
use crate::hunt::Hunt;
use crate::outcome::{HuntBroadcast, HuntOutcome, Reject};

/// The treasure-hunt game.
#[derive(Debug, Clone, Copy, Default)]
pub struct TreasureHunt;

/// How far apart the stages of the batch loop run, in events.
///
/// With a million players, player slots and treasure buckets do not fit in
/// cache, so the loop is a four-stage software pipeline over the batch.
/// At step `j`: event `j` has its hunt resolved and the hunt's hot fields
/// prefetched; event `j - LAG` (hunt now in cache) has its player slot
/// prefetched; event `j - 2 * LAG` (slot now in cache) has the treasure
/// bucket its dig or scan will read prefetched; event `j - 3 * LAG` is
/// applied. The misses of many events overlap instead of being paid one
/// after another. Prefetching changes no result, only timing.
const LAG: usize = 8;
/// Resolved hunt indices of the events in flight (a power of two > 3 * LAG).
const RING: usize = 64;
const _: () = assert!(RING.is_power_of_two() && RING > 3 * LAG);
const NO_HUNT: u32 = u32::MAX;

/// `Reject` names by `Reject as usize - 1` (the codes run 1..=10).
const REJECTION_NAMES: [&str; Reject::ALL.len()] = {
    let mut names = [""; Reject::ALL.len()];
    let mut i = 0;
    while i < names.len() {
        assert!(Reject::ALL[i] as usize == i + 1);
        names[i] = Reject::ALL[i].name();
        i += 1;
    }
    names
};

impl Game for TreasureHunt {
    const NAME: &'static str = "treasure-hunt";
    type World = Hunt;
    type Event = HuntEvent;
    type Outcome = HuntOutcome;
    type Broadcast = HuntBroadcast;

    #[inline]
    fn world_of(event: &HuntEvent) -> WorldId {
        event.hunt
    }

    fn apply(worlds: &mut Worlds<Hunt>, events: &[Stamped<HuntEvent>], out: &mut Outcomes<HuntOutcome, HuntBroadcast>) {
        out.direct.reserve(events.len());
        let mut resolved = [NO_HUNT; RING];
        let n = events.len();
        // Steps 0..3*LAG and n..n+3*LAG fill and empty the pipeline and
        // check which stages have an event; the steps between run all four.
        let fill_end = n.min(3 * LAG);
        for j in 0..fill_end {
            step::<true>(worlds, events, &mut resolved, j, out);
        }
        for j in fill_end..n {
            step::<false>(worlds, events, &mut resolved, j, out);
        }
        for j in n.max(fill_end)..n + 3 * LAG {
            step::<true>(worlds, events, &mut resolved, j, out);
        }
    }

    const REJECTION_NAMES: &'static [&'static str] = &REJECTION_NAMES;

    #[inline]
    fn rejection(outcome: &HuntOutcome) -> Option<usize> {
        match outcome {
            HuntOutcome::Rejected { reason } => Some(*reason as usize - 1),
            _ => None,
        }
    }

    fn deletes_world(event: &HuntEvent) -> bool {
        matches!(event.action, Action::Delete)
    }

    fn ends_world(broadcast: &HuntBroadcast) -> bool {
        matches!(broadcast, HuntBroadcast::HuntDeleted { .. })
    }

    fn hash_world(world: &Hunt, hasher: &mut StateHasher) {
        world.hash_state(hasher);
    }

    fn check_world(world: &Hunt) -> Result<(), InvariantError> {
        world.check()
    }

    fn duplicate_outcome() -> HuntOutcome {
        HuntOutcome::Rejected { reason: Reject::Duplicate }
    }

    fn store_outcome(outcome: &HuntOutcome, out: &mut Vec<u8>) {
        outcome.encode(out);
    }

    fn load_outcome(r: &mut trove_core::Reader<'_>) -> Result<HuntOutcome, DecodeError> {
        HuntOutcome::decode(r)
    }

    fn encode_world(world: &Hunt, out: &mut Vec<u8>) {
        world.encode_state(out);
    }

    fn decode_world(id: WorldId, bytes: &[u8]) -> Result<Hunt, DecodeError> {
        Hunt::decode_state(id, bytes)
    }
}

/// Step `j` of the batch pipeline (see `LAG`). With `CHECKED` false the
/// caller guarantees `3 * LAG <= j < events.len()`, so every stage has an
/// event.
#[inline(always)]
fn step<const CHECKED: bool>(
    worlds: &mut Worlds<Hunt>,
    events: &[Stamped<HuntEvent>],
    resolved: &mut [u32; RING],
    j: usize,
    out: &mut Outcomes<HuntOutcome, HuntBroadcast>,
) {
    let n = events.len();
    if !CHECKED || j < n {
        let e = &events[j].event;
        let slot = &mut resolved[j % RING];
        *slot = NO_HUNT;
        if let Some(i) = worlds.index_of(e.hunt) {
            worlds.at(i).prefetch_hot();
            *slot = i as u32;
        }
    }
    if !CHECKED || (j >= LAG && j - LAG < n) {
        let k = j - LAG;
        let slot = resolved[k % RING];
        if slot != NO_HUNT {
            worlds.at(slot as usize).prefetch_player(events[k].event.player);
        }
    }
    if !CHECKED || (j >= 2 * LAG && j - 2 * LAG < n) {
        let k = j - 2 * LAG;
        let slot = resolved[k % RING];
        if slot != NO_HUNT {
            let e = &events[k].event;
            worlds.at(slot as usize).prefetch_treasures(e.player, &e.action);
        }
    }
    if !CHECKED || j >= 3 * LAG {
        let k = j - 3 * LAG;
        let s = &events[k];
        let e = &s.event;
        let slot = resolved[k % RING];
        // A hunt created earlier in the pipeline was not resolved yet.
        let index = if slot != NO_HUNT { Some(slot as usize) } else { worlds.index_of(e.hunt) };
        let outcome = match (&e.action, index) {
            (Action::Create(config), None) => create(worlds, e.hunt, *config),
            (Action::Create(_), Some(_)) => HuntOutcome::Rejected { reason: Reject::HuntExists },
            (_, None) => HuntOutcome::Rejected { reason: Reject::UnknownHunt },
            (Action::Delete, Some(i)) => {
                // The remove moves the last hunt into index `i`: every index
                // resolved ahead is stale, so the events in flight resolve
                // theirs again when applied (and go without prefetches).
                resolved.fill(NO_HUNT);
                delete(worlds, i, out)
            }
            (action, Some(i)) => worlds.at_mut(i).apply(s.time_us, e.player, action, out),
        };
        out.direct.push(outcome);
    }
}

/// Deletes the hunt at dense index `index`: its last word to its
/// subscribers, then it is gone, memory and place under `worlds_max`.
fn delete(worlds: &mut Worlds<Hunt>, index: usize, out: &mut Outcomes<HuntOutcome, HuntBroadcast>) -> HuntOutcome {
    let hunt = worlds.at(index);
    let (id, round, top) = (hunt.id(), hunt.round(), *hunt.leaderboard());
    out.broadcast(id, HuntBroadcast::HuntDeleted { round, top });
    let removed = worlds.remove(id);
    assert!(removed.is_some_and(|h| h.id() == id), "the hunt at the index is the one removed");
    HuntOutcome::Deleted { round }
}

fn create(worlds: &mut Worlds<Hunt>, id: WorldId, config: crate::event::HuntConfig) -> HuntOutcome {
    if config.validate().is_err() {
        return HuntOutcome::Rejected { reason: Reject::InvalidConfig };
    }
    match worlds.insert(id, Hunt::new(id, config)) {
        Ok(_) => HuntOutcome::Created { round: 1 },
        Err(InsertError::Exists) => HuntOutcome::Rejected { reason: Reject::HuntExists },
        Err(InsertError::Full) => HuntOutcome::Rejected { reason: Reject::TooManyHunts },
    }
}
