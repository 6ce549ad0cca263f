//! One hunt's state and the rule for each event.

use trove_core::hash::StateHasher;
use trove_core::rng::mix64;
use trove_core::{DecodeError, InvariantError, Outcomes, WorldId};

use crate::event::{Action, HuntConfig};
use crate::field::TreasureField;
use crate::leaderboard::{Entry, Top10};
use crate::outcome::{HuntBroadcast, HuntOutcome, Reject};

/// A player's slot, indexed by player id. 16 bytes, so four share a cache
/// line and none straddles two: with a million players, this table is what
/// the batch loop misses on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Player {
    pub x: u16,
    pub y: u16,
    /// Score in the current round (reset when the round ends).
    pub score: u32,
    /// Bit 63: joined. Bits 0..63: engine time (µs) from which the next dig
    /// is allowed. Engine time stays below 2^63 µs (292,000 years).
    state: u64,
}

const JOINED: u64 = 1 << 63;

impl Player {
    #[inline]
    pub fn joined(&self) -> bool {
        self.state & JOINED != 0
    }

    #[inline]
    pub fn dig_ready_at_us(&self) -> u64 {
        self.state & !JOINED
    }

    #[inline]
    fn set_joined(&mut self, joined: bool) {
        self.state = (self.state & !JOINED) | if joined { JOINED } else { 0 };
    }

    #[inline]
    fn set_dig_ready_at_us(&mut self, t: u64) {
        self.state = (self.state & JOINED) | (t & !JOINED);
    }
}

const _: () = assert!(size_of::<Player>() == 16);

/// One hunt: its config, round, players, treasures and leaderboard.
///
/// `repr(C)` keeps the fields every event reads (players, config, field) in
/// the first two cache lines, which the batch loop prefetches.
#[derive(Clone, Debug)]
#[repr(C)]
pub struct Hunt {
    /// Grows (by doubling, capped at `players_max`) to cover the highest
    /// player id that joined.
    players: Vec<Player>,
    /// Events applied to this hunt since this process built or loaded it
    /// (rejected ones too): what the dashboard's events/s per hunt is
    /// computed from. Not game state: neither hashed nor snapshotted, so
    /// a replay's hash does not depend on it. Written by every event, so
    /// it sits in the first cache line, which every event touches anyway.
    events_applied: u64,
    config: HuntConfig,
    field: TreasureField,
    // Read by finds, joins and leaves only.
    id: WorldId,
    /// Starts at 1.
    round: u32,
    players_joined: u32,
    /// Players with a positive score this round, in order of first find.
    /// At most `treasures_per_round` long; ending a round zeroes just these,
    /// so it costs O(treasures), not O(players).
    scorers: Vec<u32>,
    top: Top10,
    /// Sum of all players' scores this round; equals the field's claimed
    /// value (asserted at every claim).
    round_score_total: u64,
}

pub type HuntOutcomes = Outcomes<HuntOutcome, HuntBroadcast>;

impl Hunt {
    /// A new hunt at round 1. `config` must be valid.
    pub fn new(id: WorldId, config: HuntConfig) -> Self {
        assert!(config.validate().is_ok(), "Hunt::new with an invalid config");
        Self {
            id,
            config,
            round: 1,
            players: Vec::new(),
            players_joined: 0,
            scorers: Vec::new(),
            field: TreasureField::place(&config, 1),
            top: Top10::default(),
            round_score_total: 0,
            events_applied: 0,
        }
    }

    pub fn id(&self) -> WorldId {
        self.id
    }
    pub fn config(&self) -> &HuntConfig {
        &self.config
    }
    /// Events applied since this process built or loaded the hunt.
    pub fn events_applied(&self) -> u64 {
        self.events_applied
    }
    pub fn round(&self) -> u32 {
        self.round
    }
    pub fn players_joined(&self) -> u32 {
        self.players_joined
    }
    pub fn treasures_left(&self) -> u32 {
        self.field.unclaimed()
    }
    pub fn leaderboard(&self) -> &Top10 {
        &self.top
    }
    pub fn field(&self) -> &TreasureField {
        &self.field
    }

    pub fn player(&self, id: u32) -> Option<&Player> {
        self.players.get(id as usize)
    }

    /// A player's score in the current round.
    pub fn score(&self, id: u32) -> u32 {
        self.players.get(id as usize).map_or(0, |p| p.score)
    }

    /// Hints the CPU to load the hunt's hot fields (see the struct's doc).
    #[inline]
    pub fn prefetch_hot(&self) {
        let first = (self as *const Self).cast::<u8>();
        prefetch_addr(first);
        prefetch_addr(first.wrapping_add(64));
    }

    /// Hints the CPU to load a player's slot; the batch loop calls this a
    /// few events ahead of applying them.
    #[inline]
    pub fn prefetch_player(&self, id: u32) {
        if let Some(p) = self.players.get(id as usize) {
            prefetch(p);
        }
    }

    /// Hints the CPU to load the treasure buckets a dig or scan by `id`
    /// will read. Reads the player slot, so call it after `prefetch_player`
    /// has had time to work.
    #[inline]
    pub fn prefetch_treasures(&self, id: u32, action: &Action) {
        let Some(p) = self.players.get(id as usize) else { return };
        match action {
            Action::Dig => self.field.prefetch_dig(p.x, p.y),
            Action::Scan => self.field.prefetch_scan(p.x, p.y),
            _ => {}
        }
    }

    /// The spawn cell of a player: a function of (seed, player) only.
    pub fn spawn(&self, player: u32) -> (u16, u16) {
        let r = mix64((u64::from(self.config.seed) << 32) | u64::from(player));
        let x = ((r & 0xFFFF_FFFF) * u64::from(self.config.width)) >> 32;
        let y = ((r >> 32) * u64::from(self.config.height)) >> 32;
        (x as u16, y as u16)
    }

    /// Applies one non-create event at engine time `now_us`.
    #[inline(always)]
    pub fn apply(&mut self, now_us: u64, player: u32, action: &Action, out: &mut HuntOutcomes) -> HuntOutcome {
        self.events_applied = self.events_applied.wrapping_add(1);
        let reject = |reason| HuntOutcome::Rejected { reason };
        if player >= self.config.players_max {
            return reject(Reject::PlayerOutOfRange);
        }
        match action {
            Action::Join => self.join(player),
            Action::Leave => match self.joined_mut(player) {
                Some(p) => {
                    p.set_joined(false);
                    self.players_joined -= 1;
                    HuntOutcome::Left
                }
                None => reject(Reject::NotJoined),
            },
            &Action::Move { dx, dy } => {
                let step_max = i32::from(self.config.step_max);
                let (w, h) = (i32::from(self.config.width), i32::from(self.config.height));
                let Some(p) = self.joined_mut(player) else {
                    return reject(Reject::NotJoined);
                };
                if i32::from(dx).abs() > step_max || i32::from(dy).abs() > step_max {
                    return reject(Reject::StepTooLarge);
                }
                // max/min rather than clamp: clamp's panic check keeps it
                // out of line, and w, h >= 1 so the bounds are ordered.
                p.x = (i32::from(p.x) + i32::from(dx)).max(0).min(w - 1) as u16;
                p.y = (i32::from(p.y) + i32::from(dy)).max(0).min(h - 1) as u16;
                HuntOutcome::Moved { x: p.x, y: p.y }
            }
            Action::Dig => self.dig(now_us, player, out),
            Action::Scan => match self.joined_mut(player) {
                Some(p) => {
                    let (x, y) = (p.x, p.y);
                    HuntOutcome::Hint { band: self.field.scan(x, y) }
                }
                None => reject(Reject::NotJoined),
            },
            // Create and delete are handled by the game loop, which owns
            // the hunt table; a hunt never sees them.
            Action::Create(_) => reject(Reject::HuntExists),
            Action::Delete => reject(Reject::InvalidEvent),
            Action::Invalid => reject(Reject::InvalidEvent),
        }
    }

    #[inline]
    fn joined_mut(&mut self, player: u32) -> Option<&mut Player> {
        self.players.get_mut(player as usize).filter(|p| p.joined())
    }

    fn join(&mut self, player: u32) -> HuntOutcome {
        let index = player as usize;
        if index >= self.players.len() {
            let len = (index + 1).next_power_of_two().min(self.config.players_max as usize);
            self.players.resize(len, Player::default());
        }
        let (x, y) = self.spawn(player);
        let p = &mut self.players[index];
        if p.joined() {
            return HuntOutcome::Rejected { reason: Reject::AlreadyJoined };
        }
        p.set_joined(true);
        p.x = x;
        p.y = y;
        self.players_joined += 1;
        HuntOutcome::Joined { x, y, score: p.score }
    }

    fn dig(&mut self, now_us: u64, player: u32, out: &mut HuntOutcomes) -> HuntOutcome {
        let cooldown_us = u64::from(self.config.dig_cooldown_ms) * 1000;
        let round = self.round;
        let Some(p) = self.joined_mut(player) else {
            return HuntOutcome::Rejected { reason: Reject::NotJoined };
        };
        if now_us < p.dig_ready_at_us() {
            return HuntOutcome::Rejected { reason: Reject::OnCooldown };
        }
        p.set_dig_ready_at_us(now_us + cooldown_us);
        let (x, y) = (p.x, p.y);
        let Some(value) = self.field.claim(x, y) else {
            return HuntOutcome::DigNothing;
        };

        let p = &mut self.players[player as usize];
        if p.score == 0 {
            self.scorers.push(player);
        }
        p.score += u32::from(value);
        let score = p.score;
        self.round_score_total += u64::from(value);
        assert_eq!(self.round_score_total, self.field.claimed_value(), "scores == claimed value");

        let treasures_left = self.field.unclaimed();
        out.broadcast(self.id, HuntBroadcast::TreasureFound { round, player, x, y, value, score, treasures_left });
        if self.top.offer(player, score) {
            out.broadcast(self.id, HuntBroadcast::LeaderboardChanged { round, top: self.top });
        }
        if treasures_left == 0 {
            out.broadcast(self.id, HuntBroadcast::RoundFinished { round, top: self.top });
            self.round += 1;
            self.field = TreasureField::place(&self.config, self.round);
            self.top.clear();
            for &s in &self.scorers {
                self.players[s as usize].score = 0;
            }
            self.scorers.clear();
            self.round_score_total = 0;
        }
        HuntOutcome::DigFound { value, score }
    }

    /// Feeds the whole state to `h` in canonical order. Player slots that
    /// are still default are skipped, so how far the slot table has grown
    /// (an allocation detail) does not change the hash.
    pub fn hash_state(&self, h: &mut StateHasher) {
        let c = &self.config;
        h.u32(self.id);
        for v in [c.width, c.height, c.treasures_per_round, c.value_min, c.value_max, c.dig_cooldown_ms] {
            h.u16(v);
        }
        h.u32(c.seed);
        h.u32(u32::from(c.step_max));
        h.u32(c.players_max);
        h.u32(self.round);
        h.u32(self.players_joined);
        self.field.hash_state(h);
        for (i, p) in self.players.iter().enumerate() {
            if *p == Player::default() {
                continue;
            }
            h.u32(i as u32);
            h.bool(p.joined());
            h.u16(p.x);
            h.u16(p.y);
            h.u32(p.score);
            h.u64(p.dig_ready_at_us());
        }
        h.u64(u64::MAX); // end of players
        for e in self.top.entries() {
            h.u32(e.player);
            h.u32(e.score);
        }
    }

    /// Appends the whole state for a snapshot (format version 1): the create
    /// record of the config, round, players (the slots that are not
    /// initial), scorers, which treasures are claimed, and the leaderboard.
    /// The treasures themselves follow from (seed, round) and are placed
    /// again on decode.
    pub fn encode_state(&self, out: &mut Vec<u8>) {
        let mut record = [0u8; 32];
        trove_core::Record::encode(&crate::event::HuntEvent::create(self.id, self.config), &mut record);
        out.push(1); // version
        out.extend_from_slice(&record);
        out.extend_from_slice(&self.round.to_le_bytes());
        out.extend_from_slice(&(self.players.len() as u32).to_le_bytes());
        let used: Vec<(usize, &Player)> =
            self.players.iter().enumerate().filter(|(_, p)| **p != Player::default()).collect();
        out.extend_from_slice(&(used.len() as u32).to_le_bytes());
        for (i, p) in used {
            out.extend_from_slice(&(i as u32).to_le_bytes());
            out.extend_from_slice(&p.x.to_le_bytes());
            out.extend_from_slice(&p.y.to_le_bytes());
            out.extend_from_slice(&p.score.to_le_bytes());
            out.extend_from_slice(&p.state.to_le_bytes());
        }
        out.extend_from_slice(&(self.scorers.len() as u32).to_le_bytes());
        for s in &self.scorers {
            out.extend_from_slice(&s.to_le_bytes());
        }
        let claimed: Vec<u32> =
            self.field.treasures().enumerate().filter(|(_, t)| t.claimed).map(|(i, _)| i as u32).collect();
        out.extend_from_slice(&(claimed.len() as u32).to_le_bytes());
        for i in claimed {
            out.extend_from_slice(&i.to_le_bytes());
        }
        let top = self.top.entries();
        out.push(top.len() as u8);
        for e in top {
            out.extend_from_slice(&e.player.to_le_bytes());
            out.extend_from_slice(&e.score.to_le_bytes());
        }
    }

    /// Rebuilds a hunt from `encode_state`'s bytes, checking everything:
    /// the bytes come from a file.
    pub fn decode_state(id: WorldId, bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = trove_core::Reader::new(bytes);
        let version = r.u8()?;
        if version != 1 {
            return Err(format!("hunt state version {version} is not 1").into());
        }
        let create = <crate::event::HuntEvent as trove_core::Record>::decode(r.take(32)?);
        let Action::Create(config) = create.action else { return Err("no hunt config".into()) };
        config.validate().map_err(|e| DecodeError::from(e.to_string()).within("hunt config"))?;
        if create.hunt != id {
            return Err(format!("hunt id {} stored under id {id}", create.hunt).into());
        }
        let round = r.u32()?;
        if round == 0 {
            return Err("round 0".into());
        }
        let mut hunt = Hunt::new(id, config);
        if round != 1 {
            hunt.round = round;
            hunt.field = TreasureField::place(&config, round);
        }
        let len = r.u32()? as usize;
        if len > config.players_max as usize {
            return Err(format!("{len} player slots above players_max {}", config.players_max).into());
        }
        let used = r.u32()? as usize;
        if used > len || used.saturating_mul(20) > r.remaining() {
            return Err(format!("{used} used player slots of {len}").into());
        }
        hunt.players = vec![Player::default(); len];
        let mut previous = None;
        for _ in 0..used {
            let i = r.u32()? as usize;
            if i >= len || previous.is_some_and(|p| p >= i) {
                return Err(format!("player slot {i} out of order or range").into());
            }
            previous = Some(i);
            let p = Player { x: r.u16()?, y: r.u16()?, score: r.u32()?, state: r.u64()? };
            if p.joined() {
                hunt.players_joined += 1;
            }
            hunt.round_score_total += u64::from(p.score);
            hunt.players[i] = p;
        }
        let scorers = r.u32()? as usize;
        if scorers > usize::from(config.treasures_per_round) {
            return Err(format!("{scorers} scorers in a round of {} treasures", config.treasures_per_round).into());
        }
        hunt.scorers = (0..scorers).map(|_| r.u32()).collect::<Result<_, _>>()?;
        let claimed = r.u32()? as usize;
        if claimed > usize::from(config.treasures_per_round) {
            return Err(format!("{claimed} claimed treasures of {}", config.treasures_per_round).into());
        }
        for _ in 0..claimed {
            let i = r.u32()? as usize;
            if !hunt.field.restore_claim(i) {
                return Err(format!("treasure {i} cannot be claimed").into());
            }
        }
        let top = usize::from(r.u8()?);
        if top > Top10::CAPACITY {
            return Err(format!("leaderboard of {top} entries").into());
        }
        let entries: Vec<Entry> =
            (0..top).map(|_| Ok(Entry { player: r.u32()?, score: r.u32()? })).collect::<Result<_, DecodeError>>()?;
        // Rebuilt from the stored entries; `check` below compares it with
        // the board the players' scores give.
        hunt.top = Top10::from_scores(entries);
        r.finish()?;
        // Everything the rules assume, checked from scratch.
        hunt.check()?;
        Ok(hunt)
    }

    /// Checks every invariant from scratch (slow; tests call it).
    pub fn check(&self) -> Result<(), InvariantError> {
        self.field.check(&self.config)?;
        let mut total = 0u64;
        let mut joined = 0u32;
        for (i, p) in self.players.iter().enumerate() {
            if p.joined() {
                joined += 1;
                if p.x >= self.config.width || p.y >= self.config.height {
                    return Err(format!("player {i} off the map at ({}, {})", p.x, p.y).into());
                }
            }
            total += u64::from(p.score);
            if (p.score > 0) != self.scorers.contains(&(i as u32)) {
                return Err(format!("player {i} has score {} but scorers list says otherwise", p.score).into());
            }
        }
        if self.scorers.len() > usize::from(self.config.treasures_per_round) {
            return Err(format!(
                "{} scorers in a round of {} treasures",
                self.scorers.len(),
                self.config.treasures_per_round
            )
            .into());
        }
        if joined != self.players_joined {
            return Err(format!("{joined} players joined but count says {}", self.players_joined).into());
        }
        if total != self.field.claimed_value() || total != self.round_score_total {
            return Err(format!(
                "scores sum to {total}, claimed value is {}, running total {}",
                self.field.claimed_value(),
                self.round_score_total
            )
            .into());
        }
        let brute = Top10::from_scores(
            self.players.iter().enumerate().map(|(i, p)| Entry { player: i as u32, score: p.score }),
        );
        if brute != self.top {
            return Err(format!("leaderboard {:?} but scores give {:?}", self.top, brute).into());
        }
        Ok(())
    }
}

/// A read prefetch hint: no effect on results, only on cache misses.
#[inline(always)]
pub fn prefetch<T>(r: &T) {
    prefetch_addr((r as *const T).cast::<u8>());
}

/// A read prefetch hint for any address: a hint never faults, so the
/// address need not be valid.
#[inline(always)]
#[allow(unsafe_code)]
pub fn prefetch_addr(p: *const u8) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        // SAFETY: `_mm_prefetch` needs SSE, which every x86_64 CPU has, and
        // it never dereferences its argument: a prefetch cannot fault.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(p.cast::<i8>()) };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

// The fields every event reads or writes stay in the two cache lines the
// batch loop prefetches.
const _: () = assert!(std::mem::offset_of!(Hunt, events_applied) < 64);
const _: () = assert!(std::mem::offset_of!(Hunt, field) + size_of::<TreasureField>() <= 128);
