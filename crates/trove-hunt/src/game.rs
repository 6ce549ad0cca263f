//! The treasure hunt as a `trove_core::Game`.

use trove_core::{Game, InsertError, Outcomes, Stamped, StateHasher, WorldId, Worlds};

use crate::event::{Action, HuntEvent};
use crate::hunt::Hunt;
use crate::outcome::{HuntBroadcast, HuntOutcome, Reject};

/// The treasure-hunt game.
#[derive(Debug, Clone, Copy, Default)]
pub struct TreasureHunt;

/// Events resolved and prefetched at a time. With a million players their
/// slots do not fit in cache; issuing a chunk's loads before using any of
/// them overlaps the misses instead of paying them one after another.
const CHUNK: usize = 32;
const NO_HUNT: u32 = u32::MAX;

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

    fn apply(
        worlds: &mut Worlds<Hunt>,
        events: &[Stamped<HuntEvent>],
        out: &mut Outcomes<HuntOutcome, HuntBroadcast>,
    ) {
        out.direct.reserve(events.len());
        let mut resolved = [NO_HUNT; CHUNK];
        for chunk in events.chunks(CHUNK) {
            for (slot, s) in resolved.iter_mut().zip(chunk) {
                *slot = match worlds.index_of(s.event.hunt) {
                    Some(i) => {
                        worlds.at(i).prefetch_player(s.event.player);
                        i as u32
                    }
                    None => NO_HUNT,
                };
            }
            for (&slot, s) in resolved.iter().zip(chunk) {
                let e = &s.event;
                // A hunt created earlier in this chunk was not resolved yet.
                let index = if slot != NO_HUNT {
                    Some(slot as usize)
                } else {
                    worlds.index_of(e.hunt)
                };
                let outcome = match (e.action, index) {
                    (Action::Create(config), None) => create(worlds, e.hunt, config),
                    (Action::Create(_), Some(_)) => HuntOutcome::Rejected {
                        reason: Reject::HuntExists,
                    },
                    (_, None) => HuntOutcome::Rejected {
                        reason: Reject::UnknownHunt,
                    },
                    (action, Some(i)) => worlds.at_mut(i).apply(s.time_us, e.player, action, out),
                };
                out.direct.push(outcome);
            }
        }
    }

    fn hash_world(world: &Hunt, hasher: &mut StateHasher) {
        world.hash(hasher);
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
