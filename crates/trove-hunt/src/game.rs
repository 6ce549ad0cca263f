//! The treasure hunt as a `trove_core::Game`.

use trove_core::{Game, InsertError, Outcomes, Stamped, StateHasher, WorldId, Worlds};

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
        for j in 0..events.len() + 3 * LAG {
            if let Some(s) = events.get(j) {
                let slot = &mut resolved[j % RING];
                *slot = NO_HUNT;
                if let Some(i) = worlds.index_of(s.event.hunt) {
                    worlds.at(i).prefetch_hot();
                    *slot = i as u32;
                }
            }
            if let Some(s) = j.checked_sub(LAG).and_then(|k| events.get(k)) {
                let slot = resolved[(j - LAG) % RING];
                if slot != NO_HUNT {
                    worlds.at(slot as usize).prefetch_player(s.event.player);
                }
            }
            if let Some(s) = j.checked_sub(2 * LAG).and_then(|k| events.get(k)) {
                let slot = resolved[(j - 2 * LAG) % RING];
                if slot != NO_HUNT {
                    worlds
                        .at(slot as usize)
                        .prefetch_treasures(s.event.player, s.event.action);
                }
            }
            let Some(k) = j.checked_sub(3 * LAG) else { continue };
            let Some(s) = events.get(k) else { continue };
            let e = &s.event;
            let slot = resolved[k % RING];
            // A hunt created earlier in this window was not resolved yet.
            let index = if slot != NO_HUNT {
                Some(slot as usize)
            } else {
                worlds.index_of(e.hunt)
            };
            let outcome = match (&e.action, index) {
                (Action::Create(config), None) => create(worlds, e.hunt, *config),
                (Action::Create(_), Some(_)) => HuntOutcome::Rejected {
                    reason: Reject::HuntExists,
                },
                (_, None) => HuntOutcome::Rejected {
                    reason: Reject::UnknownHunt,
                },
                (action, Some(i)) => worlds.at_mut(i).apply(s.time_us, e.player, *action, out),
            };
            out.direct.push(outcome);
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

    fn hash_world(world: &Hunt, hasher: &mut StateHasher) {
        world.hash_state(hasher);
    }

    fn check_world(world: &Hunt) -> Result<(), String> {
        world.check()
    }
}

fn create(worlds: &mut Worlds<Hunt>, id: WorldId, config: crate::event::HuntConfig) -> HuntOutcome {
    if config.validate().is_err() {
        return HuntOutcome::Rejected {
            reason: Reject::InvalidConfig,
        };
    }
    match worlds.insert(id, Hunt::new(id, config)) {
        Ok(_) => HuntOutcome::Created { round: 1 },
        Err(InsertError::Exists) => HuntOutcome::Rejected {
            reason: Reject::HuntExists,
        },
        Err(InsertError::Full) => HuntOutcome::Rejected {
            reason: Reject::TooManyHunts,
        },
    }
}
