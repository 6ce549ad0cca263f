//! How a game's outcomes and broadcasts travel: the game-specific half of
//! the protocol. Events are [`trove_core::Record`]s already.

use trove_core::{DecodeError, Game, Record, Stamped};

use crate::frame::{self, entry_kind};

/// A game the data plane can carry.
pub trait WireGame: Game {
    /// Encoded size of one outcome.
    const OUTCOME_SIZE: usize;

    /// Writes exactly `OUTCOME_SIZE` bytes to the front of `out`.
    fn encode_outcome(outcome: &Self::Outcome, out: &mut [u8]);
    /// Reads an outcome; the bytes come from a peer: check everything.
    fn decode_outcome(bytes: &[u8]) -> Result<Self::Outcome, DecodeError>;
    /// Appends a broadcast (at most `u16::MAX` bytes).
    fn encode_broadcast(broadcast: &Self::Broadcast, out: &mut Vec<u8>);
    /// Reads a broadcast; the bytes come from a peer: check everything.
    fn decode_broadcast(bytes: &[u8]) -> Result<Self::Broadcast, DecodeError>;
}

/// One entry of a hunt's update stream.
#[derive(Clone, Debug)]
pub enum UpdateEntry<G: Game> {
    /// An event applied to the hunt, with its engine time and outcome.
    Applied { event: Stamped<G::Event>, outcome: G::Outcome },
    /// Hunt-wide news caused by the applied event before it.
    Broadcast(G::Broadcast),
}

// By hand: a derive would ask the game type itself to be comparable.
impl<G: Game> PartialEq for UpdateEntry<G> {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Self::Applied { event: a, outcome: x }, Self::Applied { event: b, outcome: y }) => a == b && x == y,
            (Self::Broadcast(a), Self::Broadcast(b)) => a == b,
            _ => false,
        }
    }
}

/// Size of an APPLIED entry's payload.
pub fn applied_len<G: WireGame>() -> usize {
    8 + G::Event::SIZE + G::OUTCOME_SIZE
}

/// Appends an APPLIED entry.
pub fn push_applied<G: WireGame>(out: &mut Vec<u8>, event: &Stamped<G::Event>, outcome: &G::Outcome) {
    frame::push_entry(out, entry_kind::APPLIED, |o| {
        let at = o.len();
        o.resize(at + applied_len::<G>(), 0);
        o[at..at + 8].copy_from_slice(&event.time_us.to_le_bytes());
        event.event.encode(&mut o[at + 8..]);
        G::encode_outcome(outcome, &mut o[at + 8 + G::Event::SIZE..]);
    });
}

/// Appends a BROADCAST entry.
pub fn push_broadcast<G: WireGame>(out: &mut Vec<u8>, broadcast: &G::Broadcast) {
    frame::push_entry(out, entry_kind::BROADCAST, |o| G::encode_broadcast(broadcast, o));
}

/// Decodes an UPDATE's entries (as checked by `frame::decode`).
pub fn decode_entries<G: WireGame>(entries: &[u8]) -> Result<Vec<UpdateEntry<G>>, DecodeError> {
    let mut out = Vec::new();
    for e in frame::entries(entries) {
        let (kind, payload) = e?;
        out.push(match kind {
            entry_kind::APPLIED => {
                if payload.len() != applied_len::<G>() {
                    return Err(
                        format!("applied entry of {} bytes, expected {}", payload.len(), applied_len::<G>()).into()
                    );
                }
                let time_us = u64::from_le_bytes(payload[..8].try_into().expect("8 bytes"));
                let event = G::Event::decode(&payload[8..]);
                let outcome = G::decode_outcome(&payload[8 + G::Event::SIZE..])?;
                UpdateEntry::Applied { event: Stamped { time_us, event }, outcome }
            }
            _ => UpdateEntry::Broadcast(G::decode_broadcast(payload)?),
        });
    }
    Ok(out)
}

/// Decodes an ACK's outcomes.
pub fn decode_outcomes<G: WireGame>(bytes: &[u8]) -> Result<Vec<G::Outcome>, DecodeError> {
    if !bytes.len().is_multiple_of(G::OUTCOME_SIZE) {
        return Err(format!("{} bytes is not a whole number of outcomes", bytes.len()).into());
    }
    // A loop into a vector of the right size: `collect` into a `Result`
    // cannot size it from the start.
    let mut out = Vec::with_capacity(bytes.len() / G::OUTCOME_SIZE);
    for b in bytes.chunks_exact(G::OUTCOME_SIZE) {
        out.push(G::decode_outcome(b)?);
    }
    Ok(out)
}

/// Appends the encodings of `outcomes` to `out`.
pub fn encode_outcomes<G: WireGame>(outcomes: &[G::Outcome], out: &mut Vec<u8>) {
    let at = out.len();
    out.resize(at + outcomes.len() * G::OUTCOME_SIZE, 0);
    for (o, slot) in outcomes.iter().zip(out[at..].chunks_exact_mut(G::OUTCOME_SIZE)) {
        G::encode_outcome(o, slot);
    }
}
