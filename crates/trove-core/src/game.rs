//! The game trait and the envelopes around it.

use crate::error::{DecodeError, InvariantError};
use crate::hash::StateHasher;
use crate::record::Record;
use crate::worlds::Worlds;

/// Identifies one world (for the treasure hunt: a hunt). Worlds are the unit
/// of sharding: all events of one world are applied by one shard, in order.
pub type WorldId = u32;

/// An event with the engine timestamp assigned when the engine accepted it.
///
/// Time enters the game only here: the rules read `time_us`, never a clock,
/// and the journal stores it, so a replay sees the same times.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stamped<E> {
    /// Engine time in microseconds. Non-decreasing along a shard's input.
    pub time_us: u64,
    pub event: E,
}

/// A broadcast addressed to a world's subscribers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Addressed<B> {
    /// Index into [`Outcomes::direct`] of the event that caused it.
    pub event_index: u32,
    pub world: WorldId,
    pub body: B,
}

/// Where a batch's results go. `apply` pushes exactly one direct outcome per
/// event, in event order, and any number of broadcasts.
#[derive(Debug)]
pub struct Outcomes<O, B> {
    /// `direct[i]` answers the i-th event applied since the last `clear`.
    pub direct: Vec<O>,
    /// World-wide news, in the order it happened.
    pub broadcasts: Vec<Addressed<B>>,
}

impl<O, B> Default for Outcomes<O, B> {
    fn default() -> Self {
        Self { direct: Vec::new(), broadcasts: Vec::new() }
    }
}

impl<O, B> Outcomes<O, B> {
    pub fn with_capacity(events: usize) -> Self {
        Self { direct: Vec::with_capacity(events), broadcasts: Vec::new() }
    }

    pub fn clear(&mut self) {
        self.direct.clear();
        self.broadcasts.clear();
    }

    /// Records a broadcast caused by the event whose direct outcome will be
    /// pushed next.
    #[inline]
    pub fn broadcast(&mut self, world: WorldId, body: B) {
        let event_index = self.direct.len() as u32;
        self.broadcasts.push(Addressed { event_index, world, body });
    }
}

/// A deterministic game the engine can run.
///
/// The engine routes each event by [`Game::world_of`], stamps it, batches it
/// and calls [`Game::apply`] on the shard that owns the world. A game must
/// not read a clock, an unseeded random source, a file or a socket: the same
/// stamped events applied to the same state must give the same state and
/// outcomes, whatever the batch boundaries.
pub trait Game: Send + 'static {
    /// A short name, used in logs and metrics.
    const NAME: &'static str;

    /// One world's state.
    type World: Send + 'static;
    /// The fixed-size event record producers send.
    type Event: Record;
    /// The answer to one event, for its producer.
    type Outcome: Copy + Send + Sync + std::fmt::Debug + PartialEq + 'static;
    /// News for everyone watching a world.
    type Broadcast: Clone + Send + Sync + std::fmt::Debug + PartialEq + 'static;

    /// The world an event belongs to (its routing key).
    fn world_of(event: &Self::Event) -> WorldId;

    /// Applies `events` in order. Pushes exactly one direct outcome per event.
    /// Never panics on any event value: nonsense is answered with a typed
    /// rejection outcome.
    fn apply(
        worlds: &mut Worlds<Self::World>,
        events: &[Stamped<Self::Event>],
        out: &mut Outcomes<Self::Outcome, Self::Broadcast>,
    );

    /// Whether an event deletes its world: with authentication on, only an
    /// admin's token may send one.
    fn deletes_world(_event: &Self::Event) -> bool {
        false
    }

    /// Whether a broadcast is a world's last: the world is gone (deleted)
    /// and its subscriptions end after it; an id created again later is
    /// another world, which no earlier subscription follows.
    fn ends_world(_broadcast: &Self::Broadcast) -> bool {
        false
    }

    /// Feeds a world's whole state, in a canonical order, to `hasher`.
    fn hash_world(world: &Self::World, hasher: &mut StateHasher);

    /// Names of the rejection reasons, indexed by [`Game::rejection`]'s
    /// code. The engine counts rejections per reason in its metrics.
    const REJECTION_NAMES: &'static [&'static str] = &[];

    /// If `outcome` is a rejection, its reason's index in
    /// [`Game::REJECTION_NAMES`].
    fn rejection(_outcome: &Self::Outcome) -> Option<usize> {
        None
    }

    /// Checks the world's invariants exhaustively; returns a description of
    /// the first one that fails. Tests call it; it may be slow.
    fn check_world(_world: &Self::World) -> Result<(), InvariantError> {
        Ok(())
    }

    /// The answer to a retried event (same producer and sequence as one
    /// already applied) whose original outcome is no longer kept.
    fn duplicate_outcome() -> Self::Outcome;

    /// Appends an outcome's bytes to `out`, for snapshots (which keep the
    /// outcomes that answer retries across a restart): at least one byte,
    /// so that a snapshot's outcome count is bounded by its size.
    fn store_outcome(outcome: &Self::Outcome, out: &mut Vec<u8>);

    /// Reads back one `store_outcome`. The bytes come from a file: check
    /// everything, never panic.
    fn load_outcome(r: &mut Reader<'_>) -> Result<Self::Outcome, DecodeError>;

    /// Appends a world's whole state to `out`, for snapshots.
    fn encode_world(world: &Self::World, out: &mut Vec<u8>);

    /// Rebuilds a world from `encode_world`'s bytes. The bytes come from a
    /// file: check everything, never panic, allocate only what they justify.
    fn decode_world(id: WorldId, bytes: &[u8]) -> Result<Self::World, DecodeError>;
}

/// A bounds-checked little-endian reader for `Game::decode_world`.
#[derive(Debug)]
pub struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    pub fn new(bytes: &'a [u8]) -> Self {
        Self { bytes, at: 0 }
    }

    pub fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.bytes.len());
        let end = end.ok_or(DecodeError::Truncated { at: self.at, wanted: n })?;
        let s = &self.bytes[self.at..end];
        self.at = end;
        Ok(s)
    }

    pub fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }

    pub fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into().expect("2 bytes")))
    }

    pub fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes")))
    }

    pub fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8 bytes")))
    }

    pub fn remaining(&self) -> usize {
        self.bytes.len() - self.at
    }

    /// Fails unless every byte was read.
    pub fn finish(self) -> Result<(), DecodeError> {
        if self.at == self.bytes.len() { Ok(()) } else { Err(DecodeError::LeftOver { bytes: self.remaining() }) }
    }
}
