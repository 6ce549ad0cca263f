//! The engine contract shared by every trove game.
//!
//! # Layout
//!
//! - [`record`]: [`Record`], a fixed-size, little-endian, total (never
//!   failing) byte encoding. Every event a game accepts is a `Record`, so the
//!   wire codec and the journal move events without knowing the game.
//! - [`game`]: the [`Game`] trait (one world type, one event record, one
//!   outcome per event, hunt-wide broadcasts, a batch `apply`), the
//!   [`Stamped`] envelope that carries the engine's timestamp, and
//!   [`Outcomes`], the sink a batch writes into.
//! - [`worlds`]: [`Worlds`], the id-to-world table a shard owns.
//! - [`state`]: [`GameState`], worlds plus the engine clock high-water mark;
//!   the unit a shard, a replay or a test applies batches to and hashes.
//! - [`hash`]: [`StateHasher`], a stable 64-bit hash used to compare states
//!   across runs, machines, replays and batchings.
//! - [`error`]: [`DecodeError`] (bytes that do not decode) and
//!   [`InvariantError`] (a check that fails), written by hand: this crate
//!   has no dependencies.
//! - [`rng`]: [`SplitMix64`], the only source of randomness a game may use,
//!   always seeded from journaled data.
//!
//! # Invariants
//!
//! This crate and every game built on it read no clock, no unseeded random
//! source, no file and no socket. Time and seeds arrive inside events.

pub mod error;
pub mod game;
pub mod hash;
pub mod placement;
pub mod record;
pub mod rng;
pub mod state;
pub mod worlds;

pub use error::{DecodeError, InvariantError};
pub use game::{Addressed, Game, Outcomes, Reader, Stamped, WorldId};
pub use hash::{StateHasher, record_fingerprint, record_fingerprints};
pub use placement::shard_of;
pub use record::Record;
pub use rng::SplitMix64;
pub use state::GameState;
pub use worlds::{InsertError, Worlds};
