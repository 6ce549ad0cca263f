//! What the rules answer.

use trove_core::DecodeError;

use crate::leaderboard::Top10;

/// The answer to one event, for the producer that sent it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HuntOutcome {
    /// The hunt exists; its first round has been placed.
    Created {
        round: u32,
    },
    /// The player is in, at its spawn cell, with its score this round.
    Joined {
        x: u16,
        y: u16,
        score: u32,
    },
    Left,
    /// The player's position after the move (clamped to the map).
    Moved {
        x: u16,
        y: u16,
    },
    /// The dig claimed a treasure worth `value`; `score` is the new score.
    DigFound {
        value: u16,
        score: u32,
    },
    /// Nothing (left) at this cell.
    DigNothing,
    /// How far the nearest unclaimed treasure is.
    Hint {
        band: Band,
    },
    Rejected {
        reason: Reject,
    },
    /// The hunt is deleted: its id is unknown until it is created again.
    /// `round` is the round it was in.
    Deleted {
        round: u32,
    },
}

/// Outcome kind bytes: of the storage form (`HuntOutcome::encode`, for
/// snapshots) and of the wire's outcome records (docs/protocol.md).
pub mod outcome_kind {
    pub const CREATED: u8 = 1;
    pub const JOINED: u8 = 2;
    pub const LEFT: u8 = 3;
    pub const MOVED: u8 = 4;
    pub const DIG_FOUND: u8 = 5;
    pub const DIG_NOTHING: u8 = 6;
    pub const HINT: u8 = 7;
    pub const REJECTED: u8 = 8;
    pub const DELETED: u8 = 9;
}

use outcome_kind::*;

impl HuntOutcome {
    /// Appends the storage form (snapshots): a kind byte, then the
    /// variant's fields in order, little-endian.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match *self {
            HuntOutcome::Created { round } => {
                out.push(CREATED);
                out.extend_from_slice(&round.to_le_bytes());
            }
            HuntOutcome::Joined { x, y, score } => {
                out.push(JOINED);
                out.extend_from_slice(&x.to_le_bytes());
                out.extend_from_slice(&y.to_le_bytes());
                out.extend_from_slice(&score.to_le_bytes());
            }
            HuntOutcome::Left => out.push(LEFT),
            HuntOutcome::Moved { x, y } => {
                out.push(MOVED);
                out.extend_from_slice(&x.to_le_bytes());
                out.extend_from_slice(&y.to_le_bytes());
            }
            HuntOutcome::DigFound { value, score } => {
                out.push(DIG_FOUND);
                out.extend_from_slice(&value.to_le_bytes());
                out.extend_from_slice(&score.to_le_bytes());
            }
            HuntOutcome::DigNothing => out.push(DIG_NOTHING),
            HuntOutcome::Hint { band } => out.extend_from_slice(&[HINT, band as u8]),
            HuntOutcome::Rejected { reason } => out.extend_from_slice(&[REJECTED, reason as u8]),
            HuntOutcome::Deleted { round } => {
                out.push(DELETED);
                out.extend_from_slice(&round.to_le_bytes());
            }
        }
    }

    /// Reads one `encode`d outcome.
    pub fn decode(r: &mut trove_core::Reader<'_>) -> Result<HuntOutcome, DecodeError> {
        Ok(match r.u8()? {
            CREATED => HuntOutcome::Created { round: r.u32()? },
            JOINED => HuntOutcome::Joined { x: r.u16()?, y: r.u16()?, score: r.u32()? },
            LEFT => HuntOutcome::Left,
            MOVED => HuntOutcome::Moved { x: r.u16()?, y: r.u16()? },
            DIG_FOUND => HuntOutcome::DigFound { value: r.u16()?, score: r.u32()? },
            DIG_NOTHING => HuntOutcome::DigNothing,
            HINT => HuntOutcome::Hint { band: Band::from_byte(r.u8()?)? },
            REJECTED => HuntOutcome::Rejected { reason: Reject::from_byte(r.u8()?)? },
            DELETED => HuntOutcome::Deleted { round: r.u32()? },
            kind => return Err(format!("unknown outcome kind {kind}").into()),
        })
    }
}

/// Distance band of a scan, by Chebyshev distance (king moves).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum Band {
    /// Within 2 cells.
    Hot = 1,
    /// Within 8 cells.
    Warm = 2,
    /// Farther, or no treasure left.
    Cold = 3,
}

/// Why an event was rejected. The byte values are part of the wire format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
pub enum Reject {
    /// No hunt with this id (on this engine).
    UnknownHunt = 1,
    /// The player has not joined this hunt (or has left it).
    NotJoined = 2,
    /// Join by a player who is already in the hunt.
    AlreadyJoined = 3,
    /// Dig before the player's cooldown has passed.
    OnCooldown = 4,
    /// Move with |dx| or |dy| above the hunt's step_max.
    StepTooLarge = 5,
    /// Create for an id that exists.
    HuntExists = 6,
    /// Create with a config that fails `HuntConfig::validate`.
    InvalidConfig = 7,
    /// Create beyond the engine's hunt limit.
    TooManyHunts = 8,
    /// Player id at or above the hunt's players_max.
    PlayerOutOfRange = 9,
    /// The record's kind names no action.
    InvalidEvent = 10,
    /// A retry of an event already applied, whose original outcome the
    /// engine no longer keeps; the event was not applied again.
    Duplicate = 11,
}

impl Band {
    /// The band whose byte value is `b`.
    pub fn from_byte(b: u8) -> Result<Band, DecodeError> {
        [Band::Hot, Band::Warm, Band::Cold]
            .into_iter()
            .find(|x| *x as u8 == b)
            .ok_or_else(|| format!("unknown band {b}").into())
    }
}

impl Reject {
    /// The reason whose byte value is `b`.
    pub fn from_byte(b: u8) -> Result<Reject, DecodeError> {
        Reject::ALL.into_iter().find(|x| *x as u8 == b).ok_or_else(|| format!("unknown rejection reason {b}").into())
    }

    pub const ALL: [Reject; 11] = [
        Reject::UnknownHunt,
        Reject::NotJoined,
        Reject::AlreadyJoined,
        Reject::OnCooldown,
        Reject::StepTooLarge,
        Reject::HuntExists,
        Reject::InvalidConfig,
        Reject::TooManyHunts,
        Reject::PlayerOutOfRange,
        Reject::InvalidEvent,
        Reject::Duplicate,
    ];

    /// A stable snake_case name, for metrics labels and JSON.
    pub const fn name(self) -> &'static str {
        match self {
            Reject::UnknownHunt => "unknown_hunt",
            Reject::NotJoined => "not_joined",
            Reject::AlreadyJoined => "already_joined",
            Reject::OnCooldown => "on_cooldown",
            Reject::StepTooLarge => "step_too_large",
            Reject::HuntExists => "hunt_exists",
            Reject::InvalidConfig => "invalid_config",
            Reject::TooManyHunts => "too_many_hunts",
            Reject::PlayerOutOfRange => "player_out_of_range",
            Reject::InvalidEvent => "invalid_event",
            Reject::Duplicate => "duplicate",
        }
    }
}

/// Hunt-wide news, for every subscriber of the hunt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HuntBroadcast {
    TreasureFound {
        round: u32,
        player: u32,
        x: u16,
        y: u16,
        value: u16,
        score: u32,
        treasures_left: u32,
    },
    /// The top-10 of `round` changed; this is the new one.
    LeaderboardChanged {
        round: u32,
        top: Top10,
    },
    /// The last treasure of `round` was claimed. `top` is the final top-10;
    /// round `round + 1` has been placed and starts with all scores at 0.
    RoundFinished {
        round: u32,
        top: Top10,
    },
    /// The hunt was deleted in `round`; `top` is that round's top-10 as it
    /// stood. The last entry of the hunt's stream: the subscription ends
    /// after it (a hunt created again under the id is another hunt).
    HuntDeleted {
        round: u32,
        top: Top10,
    },
}
