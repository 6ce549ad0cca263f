//! The treasure hunt on the wire (docs/protocol.md, "Treasure-hunt
//! payloads").

use trove_core::DecodeError;
use trove_hunt::{Band, Entry, HuntBroadcast, HuntOutcome, Reject, Top10, TreasureHunt};

use crate::wire::WireGame;

/// Outcome kind bytes (the same as the snapshots' storage form).
pub use trove_hunt::outcome::outcome_kind;

/// Broadcast kind bytes.
pub mod broadcast_kind {
    pub const TREASURE_FOUND: u8 = 1;
    pub const LEADERBOARD_CHANGED: u8 = 2;
    pub const ROUND_FINISHED: u8 = 3;
    pub const HUNT_DELETED: u8 = 4;
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn push_top(out: &mut Vec<u8>, round: u32, top: &Top10) {
    out.extend_from_slice(&round.to_le_bytes());
    out.push(top.entries().len() as u8);
    out.extend_from_slice(&[0; 3]);
    for e in top.entries() {
        out.extend_from_slice(&e.player.to_le_bytes());
        out.extend_from_slice(&e.score.to_le_bytes());
    }
}

fn read_top(b: &[u8]) -> Result<(u32, Top10), DecodeError> {
    if b.len() < 8 {
        return Err("leaderboard head truncated".into());
    }
    let len = usize::from(b[4]);
    if len > Top10::CAPACITY || b.len() != 8 + 8 * len {
        return Err(format!("leaderboard of {len} entries in {} bytes", b.len()).into());
    }
    let entries: Vec<Entry> =
        b[8..].chunks_exact(8).map(|c| Entry { player: u32_at(c, 0), score: u32_at(c, 4) }).collect();
    let top = Top10::from_scores(entries.iter().copied());
    if top.entries() != entries.as_slice() {
        return Err("leaderboard entries are not a ranked top-10".into());
    }
    Ok((u32_at(b, 0), top))
}

impl WireGame for TreasureHunt {
    const OUTCOME_SIZE: usize = 16;

    fn encode_outcome(outcome: &HuntOutcome, out: &mut [u8]) {
        use outcome_kind::*;
        let out = &mut out[..16];
        out.fill(0);
        let (kind, small, a, b, wide) = match *outcome {
            HuntOutcome::Created { round } => (CREATED, 0, 0, 0, round),
            HuntOutcome::Joined { x, y, score } => (JOINED, 0, x, y, score),
            HuntOutcome::Left => (LEFT, 0, 0, 0, 0),
            HuntOutcome::Moved { x, y } => (MOVED, 0, x, y, 0),
            HuntOutcome::DigFound { value, score } => (DIG_FOUND, 0, value, 0, score),
            HuntOutcome::DigNothing => (DIG_NOTHING, 0, 0, 0, 0),
            HuntOutcome::Hint { band } => (HINT, band as u8, 0, 0, 0),
            HuntOutcome::Rejected { reason } => (REJECTED, reason as u8, 0, 0, 0),
            HuntOutcome::Deleted { round } => (DELETED, 0, 0, 0, round),
        };
        out[0] = kind;
        out[1] = small;
        out[2..4].copy_from_slice(&a.to_le_bytes());
        out[4..6].copy_from_slice(&b.to_le_bytes());
        out[8..12].copy_from_slice(&wide.to_le_bytes());
    }

    fn decode_outcome(b: &[u8]) -> Result<HuntOutcome, DecodeError> {
        use outcome_kind::*;
        let b = b.get(..16).ok_or("outcome shorter than 16 bytes")?;
        let (x, y, wide) = (u16_at(b, 2), u16_at(b, 4), u32_at(b, 8));
        Ok(match b[0] {
            CREATED => HuntOutcome::Created { round: wide },
            JOINED => HuntOutcome::Joined { x, y, score: wide },
            LEFT => HuntOutcome::Left,
            MOVED => HuntOutcome::Moved { x, y },
            DIG_FOUND => HuntOutcome::DigFound { value: x, score: wide },
            DIG_NOTHING => HuntOutcome::DigNothing,
            HINT => HuntOutcome::Hint { band: Band::from_byte(b[1])? },
            REJECTED => HuntOutcome::Rejected { reason: Reject::from_byte(b[1])? },
            DELETED => HuntOutcome::Deleted { round: wide },
            k => return Err(format!("unknown outcome kind {k}").into()),
        })
    }

    fn encode_broadcast(broadcast: &HuntBroadcast, out: &mut Vec<u8>) {
        use broadcast_kind::*;
        match broadcast {
            HuntBroadcast::TreasureFound { round, player, x, y, value, score, treasures_left } => {
                out.extend_from_slice(&[TREASURE_FOUND, 0, 0, 0]);
                out.extend_from_slice(&round.to_le_bytes());
                out.extend_from_slice(&player.to_le_bytes());
                out.extend_from_slice(&x.to_le_bytes());
                out.extend_from_slice(&y.to_le_bytes());
                out.extend_from_slice(&value.to_le_bytes());
                out.extend_from_slice(&[0, 0]);
                out.extend_from_slice(&score.to_le_bytes());
                out.extend_from_slice(&treasures_left.to_le_bytes());
            }
            HuntBroadcast::LeaderboardChanged { round, top } => {
                out.extend_from_slice(&[LEADERBOARD_CHANGED, 0, 0, 0]);
                push_top(out, *round, top);
            }
            HuntBroadcast::RoundFinished { round, top } => {
                out.extend_from_slice(&[ROUND_FINISHED, 0, 0, 0]);
                push_top(out, *round, top);
            }
            HuntBroadcast::HuntDeleted { round, top } => {
                out.extend_from_slice(&[HUNT_DELETED, 0, 0, 0]);
                push_top(out, *round, top);
            }
        }
    }

    fn decode_broadcast(b: &[u8]) -> Result<HuntBroadcast, DecodeError> {
        use broadcast_kind::*;
        if b.len() < 4 {
            return Err("broadcast shorter than its head".into());
        }
        let body = &b[4..];
        Ok(match b[0] {
            TREASURE_FOUND => {
                if body.len() != 24 {
                    return Err(format!("treasure_found of {} bytes, expected 24", body.len()).into());
                }
                HuntBroadcast::TreasureFound {
                    round: u32_at(body, 0),
                    player: u32_at(body, 4),
                    x: u16_at(body, 8),
                    y: u16_at(body, 10),
                    value: u16_at(body, 12),
                    score: u32_at(body, 16),
                    treasures_left: u32_at(body, 20),
                }
            }
            LEADERBOARD_CHANGED => {
                let (round, top) = read_top(body)?;
                HuntBroadcast::LeaderboardChanged { round, top }
            }
            ROUND_FINISHED => {
                let (round, top) = read_top(body)?;
                HuntBroadcast::RoundFinished { round, top }
            }
            HUNT_DELETED => {
                let (round, top) = read_top(body)?;
                HuntBroadcast::HuntDeleted { round, top }
            }
            k => return Err(format!("unknown broadcast kind {k}").into()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_round_trip() {
        let all = [
            HuntOutcome::Created { round: 3 },
            HuntOutcome::Joined { x: 1, y: 2, score: 3 },
            HuntOutcome::Left,
            HuntOutcome::Moved { x: 4095, y: 7 },
            HuntOutcome::DigFound { value: 9, score: 99 },
            HuntOutcome::DigNothing,
            HuntOutcome::Hint { band: Band::Warm },
            HuntOutcome::Rejected { reason: Reject::Duplicate },
            HuntOutcome::Deleted { round: 4 },
        ];
        for o in all {
            let mut b = [0u8; 16];
            TreasureHunt::encode_outcome(&o, &mut b);
            assert_eq!(TreasureHunt::decode_outcome(&b), Ok(o));
        }
        assert!(TreasureHunt::decode_outcome(&[0; 16]).is_err());
        assert!(TreasureHunt::decode_outcome(&[7, 9, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]).is_err());
    }

    #[test]
    fn broadcasts_round_trip() {
        let top = Top10::from_scores([Entry { player: 1, score: 5 }, Entry { player: 2, score: 9 }]);
        let all = [
            HuntBroadcast::TreasureFound { round: 1, player: 2, x: 3, y: 4, value: 5, score: 6, treasures_left: 7 },
            HuntBroadcast::LeaderboardChanged { round: 2, top },
            HuntBroadcast::RoundFinished { round: 3, top: Top10::default() },
            HuntBroadcast::HuntDeleted { round: 4, top },
        ];
        for b in all {
            let mut v = Vec::new();
            TreasureHunt::encode_broadcast(&b, &mut v);
            assert_eq!(TreasureHunt::decode_broadcast(&v), Ok(b));
        }
        // An unranked board from a peer is refused.
        let mut v = vec![broadcast_kind::LEADERBOARD_CHANGED, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0];
        v.extend_from_slice(&[1, 0, 0, 0, 5, 0, 0, 0, 2, 0, 0, 0, 9, 0, 0, 0]);
        assert!(TreasureHunt::decode_broadcast(&v).is_err());
    }
}
