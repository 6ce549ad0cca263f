//! The execution layer: how events get from producers to the rules.
//!
//! # Layout
//!
//! - [`engine`]: [`Engine`], started in one of three [`Mode`]s behind one
//!   API: `producer()`, `metrics()`, `shutdown()`.
//! - [`producer`]: [`Producer`], one producer's handle: `submit` a batch
//!   (or get [`SubmitError::Busy`] at once), then collect [`Completed`]
//!   batches, in submission order, with one outcome per event. It submits
//!   through `Intake`, which the engine implements: nothing below
//!   `engine` knows the engine's state.
//! - [`shard_core`]: [`ShardCore`], one shard's decisions with no I/O:
//!   given a drained batch of [`WorkPart`]s and the engine time, it takes
//!   retries out, applies, and returns each part's [`Answer`], to deliver
//!   now or inside the [`JournalBatch`] that must be durable first
//!   ([`Handoff`]); it says when a snapshot is due by a `now` its caller
//!   passes. The shard thread drives it; so can a simulator.
//! - `admission`: the rule a shard's queue takes a batch by (bounded in
//!   batches, events and expected wait) and the drain rate it judges the
//!   wait by.
//! - [`sharded`]: the default mode. N named threads, each owning the worlds
//!   that hash to it (in its `ShardCore`); bounded admission; a shard
//!   drains what is queued, reads the clock once, drives its core, and
//!   hands outcomes back (or to its journal thread) per batch.
//! - [`journaled`]: recovery from the journal at start, and the journal
//!   thread per shard that releases acknowledgements only when the fsync
//!   policy's durability point is reached; [`recover_core_in`], one
//!   shard's start-up recovery on any `Storage`, returning the
//!   [`ShardCore`] that continues (the simulator's way in).
//! - [`per_event`]: the two baseline modes the engine exists to beat: a
//!   tokio task per event awaiting its world's async mutex and the hand-off
//!   of its outcome, and a `spawn_blocking` per event.
//! - `dedup`: idempotent producers: per producer and shard, the last
//!   applied sequence and a window of outcomes to answer retries with.
//! - [`metrics`]: per-shard counters and log2 histograms, lock-free to read
//!   while the shard runs.
//! - [`clock`]: engine time.
//! - [`updates`]: subscriptions: each world's update stream, published by
//!   the shards once per batch into bounded per-subscriber mailboxes.
//!
//! Nothing on the sharded path spawns, awaits or locks per event: locks and
//! allocations happen per batch.

mod admission;
pub mod clock;
mod dedup;
pub mod engine;
pub mod error;
pub mod journaled;
pub mod log;
pub mod metrics;
pub mod per_event;
pub mod producer;
pub mod shard_core;
pub mod sharded;
pub mod updates;

pub use clock::ClockMode;
pub use engine::{ASSIGNED_PRODUCER_IDS, Engine, EngineConfig, FinalState, Mode};
pub use error::{BudgetRefused, ConfigError, MetaError, PushIntervalSet, StartError, UnknownMode};
pub use journaled::{JournalConfig, RecoveredCore, recover_core_in};
pub use log::{LogError, LogErrorKind, ShardLog};
pub use metrics::{EngineMetrics, Histogram, HistogramSnapshot, ShardMetricsSnapshot};
pub use producer::Lost;
pub use producer::{Completed, Origin, Producer, Stamps, SubmitError};
pub use shard_core::{Answer, Applied, CoreConfig, Handoff, JournalBatch, ShardCore, Snapshot, WorkPart};
pub use sharded::{OwnershipError, ShardState};
pub use trove_journal::{FsyncPolicy, WriteIo};
pub use updates::{Chunk, Delivery, FanOutBudget, Hub, HubMetrics, Mailbox, SubscribeMode, Update};
