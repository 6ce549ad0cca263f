//! Capture the flag, as small as a trove game gets.
//!
//! A world is a match between team 0 and team 1. Events: create a match
//! (with a capture limit), and capture (a player of a team brings the flag
//! home). The first team to reach the limit wins the match; the scores go
//! back to zero and the next game of the match starts. Everything the engine
//! needs is here: a 16-byte record, a world type, an outcome per event, a
//! broadcast, a batch apply and a state hash. Running it applies a seeded
//! stream in one batch and in many, then through the sharded executor with
//! two shards, and checks the hashes agree.

use std::time::Duration;

use trove_core::record::le;
use trove_core::{Game, GameState, Outcomes, Record, SplitMix64, Stamped, StateHasher, WorldId, Worlds};
use trove_shard::{ClockMode, Engine, EngineConfig};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlagEvent {
    pub match_id: u32,
    pub player: u32,
    /// 1 create (the player field carries the capture limit), 2 capture.
    pub kind: u8,
    pub team: u8,
}

/// | offset | size | field |
/// |---|---|---|
/// | 0 | 4 | match_id |
/// | 4 | 4 | player (create: capture limit) |
/// | 8 | 1 | kind |
/// | 9 | 1 | team |
/// | 10 | 6 | zero |
impl Record for FlagEvent {
    const SIZE: usize = 16;
    fn encode(&self, out: &mut [u8]) {
        out[..16].fill(0);
        le::put(out, 0, &self.match_id.to_le_bytes());
        le::put(out, 4, &self.player.to_le_bytes());
        out[8] = self.kind;
        out[9] = self.team;
    }
    fn decode(b: &[u8]) -> Self {
        Self { match_id: le::u32_at(b, 0), player: le::u32_at(b, 4), kind: b[8], team: b[9] }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlagOutcome {
    Created,
    Captured { team: u8, captures: u32 },
    Rejected,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FlagBroadcast {
    Won { team: u8, game: u32, at_us: u64 },
}

#[derive(Debug)]
pub struct FlagMatch {
    limit: u32,
    captures: [u32; 2],
    games_won: [u32; 2],
}

#[derive(Debug)]
pub struct CaptureTheFlag;

impl Game for CaptureTheFlag {
    const NAME: &'static str = "capture-the-flag";
    type World = FlagMatch;
    type Event = FlagEvent;
    type Outcome = FlagOutcome;
    type Broadcast = FlagBroadcast;

    fn world_of(event: &FlagEvent) -> WorldId {
        event.match_id
    }

    fn apply(
        worlds: &mut Worlds<FlagMatch>,
        events: &[Stamped<FlagEvent>],
        out: &mut Outcomes<FlagOutcome, FlagBroadcast>,
    ) {
        for s in events {
            let e = s.event;
            let outcome = match (e.kind, worlds.get_mut(e.match_id)) {
                (1, None) if e.player > 0 => {
                    let m = FlagMatch { limit: e.player, captures: [0; 2], games_won: [0; 2] };
                    worlds.insert(e.match_id, m).map_or(FlagOutcome::Rejected, |_| FlagOutcome::Created)
                }
                (2, Some(m)) if e.team < 2 => {
                    let team = usize::from(e.team);
                    m.captures[team] += 1;
                    let captures = m.captures[team];
                    if captures == m.limit {
                        m.games_won[team] += 1;
                        let game = m.games_won[0] + m.games_won[1];
                        out.broadcast(e.match_id, FlagBroadcast::Won { team: e.team, game, at_us: s.time_us });
                        m.captures = [0; 2];
                    }
                    FlagOutcome::Captured { team: e.team, captures }
                }
                _ => FlagOutcome::Rejected,
            };
            out.direct.push(outcome);
        }
    }

    fn hash_world(m: &FlagMatch, h: &mut StateHasher) {
        h.u32(m.limit);
        m.captures.iter().chain(&m.games_won).for_each(|&c| h.u32(c));
    }

    fn duplicate_outcome() -> FlagOutcome {
        FlagOutcome::Rejected
    }

    fn store_outcome(o: &FlagOutcome, out: &mut Vec<u8>) {
        match *o {
            FlagOutcome::Created => out.push(1),
            FlagOutcome::Captured { team, captures } => {
                out.extend_from_slice(&[2, team]);
                out.extend_from_slice(&captures.to_le_bytes());
            }
            FlagOutcome::Rejected => out.push(3),
        }
    }

    fn load_outcome(r: &mut trove_core::Reader<'_>) -> Result<FlagOutcome, trove_core::DecodeError> {
        match r.u8()? {
            1 => Ok(FlagOutcome::Created),
            2 => Ok(FlagOutcome::Captured { team: r.u8()?, captures: r.u32()? }),
            3 => Ok(FlagOutcome::Rejected),
            k => Err(format!("unknown outcome kind {k}").into()),
        }
    }

    fn encode_world(m: &FlagMatch, out: &mut Vec<u8>) {
        for v in [m.limit, m.captures[0], m.captures[1], m.games_won[0], m.games_won[1]] {
            out.extend_from_slice(&v.to_le_bytes());
        }
    }

    fn decode_world(_id: WorldId, bytes: &[u8]) -> Result<FlagMatch, trove_core::DecodeError> {
        let mut r = trove_core::Reader::new(bytes);
        let m = FlagMatch { limit: r.u32()?, captures: [r.u32()?, r.u32()?], games_won: [r.u32()?, r.u32()?] };
        r.finish()?;
        if m.limit == 0 || m.captures.iter().any(|&c| c >= m.limit) {
            return Err(format!("impossible match state {m:?}").into());
        }
        Ok(m)
    }
}

fn stream(seed: u64, n: usize) -> Vec<Stamped<FlagEvent>> {
    let mut rng = SplitMix64::new(seed);
    let mut events: Vec<_> = (0..4)
        .map(|m| FlagEvent { match_id: m, player: 3 + m, kind: 1, team: 0 })
        .map(|event| Stamped { time_us: 0, event })
        .collect();
    for i in 0..n as u64 {
        let event = FlagEvent { match_id: rng.below(5), player: rng.below(100), kind: 2, team: rng.below(2) as u8 };
        events.push(Stamped { time_us: i * 1000, event });
    }
    events
}

fn run(events: &[Stamped<FlagEvent>], batch: usize) -> (u64, usize, usize) {
    let mut state = GameState::<CaptureTheFlag>::new(16);
    let mut out = Outcomes::default();
    for b in events.chunks(batch) {
        state.apply(b, &mut out);
    }
    let rejected = out.direct.iter().filter(|o| **o == FlagOutcome::Rejected).count();
    (state.state_hash(), out.broadcasts.len(), rejected)
}

fn main() {
    let events = stream(42, 10_000);
    let (hash, wins, rejected) = run(&events, events.len());
    println!(
        "capture-the-flag: {} events, {wins} games won, {rejected} rejected, state hash {hash:016x}",
        events.len()
    );
    for batch in [1, 7, 64] {
        let (h, w, r) = run(&events, batch);
        assert_eq!((h, w, r), (hash, wins, rejected), "batch size {batch} changed the result");
    }
    println!("same hash with batches of 1, 7 and 64 events");

    // The same stream through the engine's executor, split over two shards.
    let config = EngineConfig { shards: 2, clock: ClockMode::Supplied, ..EngineConfig::default() };
    let engine = Engine::<CaptureTheFlag>::start(config).expect("engine starts");
    let mut producer = engine.producer();
    for chunk in events.chunks(100) {
        let mut batch = chunk.to_vec();
        while producer.submit(&mut batch).is_err() {
            producer.complete_timeout(Duration::from_secs(10));
        }
    }
    let end = engine.shutdown();
    assert_eq!(end.state_hash, hash, "the sharded executor changed the result");
    println!("same hash through the sharded executor with 2 shards ({} events applied)", end.events_applied);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batching_does_not_change_the_result_and_games_are_won() {
        let events = stream(7, 2_000);
        let whole = run(&events, events.len());
        assert_eq!(whole, run(&events, 3));
        assert!(whole.1 > 0, "no game was won");
        assert!(whole.2 > 0, "match 4 does not exist: its captures are rejected");
    }

    #[test]
    fn record_round_trips() {
        let e = FlagEvent { match_id: 9, player: 5, kind: 2, team: 1 };
        let mut b = [0u8; 16];
        e.encode(&mut b);
        assert_eq!(FlagEvent::decode(&b), e);
    }
}
