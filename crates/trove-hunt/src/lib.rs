//! The treasure-hunt game, trove's flagship. Rules: `docs/game.md`.
//!
//! # Layout
//!
//! - [`event`]: [`HuntEvent`], its 32-byte record encoding, and
//!   [`HuntConfig`] with its validation.
//! - [`outcome`]: [`HuntOutcome`] (one per event), [`HuntBroadcast`]
//!   (hunt-wide news), [`Reject`] and [`Band`].
//! - [`field`]: this round's treasures and their spatial index.
//! - [`leaderboard`]: the incremental top-10.
//! - [`hunt`]: [`Hunt`], one hunt's state, and the rules per event.
//! - [`game`]: [`TreasureHunt`], the `trove_core::Game` implementation: the
//!   batch loop that resolves hunts and prefetches player slots.
//!
//! Depends on `trove-core` only: no clock, no I/O, no async runtime.

pub mod event;
pub mod field;
pub mod game;
pub mod hunt;
pub mod leaderboard;
pub mod outcome;

pub use event::{Action, ConfigError, HuntConfig, HuntEvent, PLAYERS_PER_HUNT_MAX};
pub use game::TreasureHunt;
pub use hunt::Hunt;
pub use leaderboard::{Entry, Top10};
pub use outcome::{Band, HuntBroadcast, HuntOutcome, Reject};

/// The treasure hunt's full state on one shard.
pub type HuntState = trove_core::GameState<TreasureHunt>;
