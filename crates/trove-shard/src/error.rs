//! Typed errors at the engine's boundary: one enum per thing a caller asks
//! for (parse a mode, validate a configuration, read a data directory's
//! meta, start an engine), so a caller can tell a meta mismatch from
//! corruption or an I/O error. Each message is the line `trove` prints
//! (docs/decisions/0022-typed-errors.md).

use std::path::PathBuf;

use trove_journal::LockError;

use crate::engine::Mode;

/// [`Mode::parse`] was given a name it does not know.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown mode `{0}`: expected sharded, task-per-event or spawn-blocking-per-event")]
pub struct UnknownMode(pub String);

/// Why [`EngineConfig::validate`](crate::EngineConfig::validate) refused a
/// configuration.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// A bound outside its range; the message names the field and the range.
    #[error("{0}")]
    OutOfRange(&'static str),
    /// A journal asked for in a mode that does not journal.
    #[error("the journal runs in sharded mode only, not {}", .0.name())]
    JournalNeedsSharded(Mode),
    /// Cluster mode is sharded and journals to each partition's log, not a
    /// data directory.
    #[error("cluster mode runs sharded, with no local journal")]
    ClusterAlone,
}

/// Why a data directory's meta file (`trove.meta`: the game, record size,
/// shard count and format its journal was written with) cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum MetaError {
    /// Written by an engine with other settings (another game, record size
    /// or shard count): the journal belongs to another configuration.
    #[error(
        "{path} was written by an engine with other settings:\n{found}this engine has:\n{want}(the shard count of \
         a data directory cannot change)"
    )]
    Mismatch { path: PathBuf, found: String, want: String },
    /// Not a meta file of this game that this engine reads.
    #[error("{path} describes no {game} journal this engine reads:\n{found}")]
    Unknown { path: PathBuf, game: &'static str, found: String },
    /// Reading, writing or syncing the meta or its directory failed.
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// [`Hub::set_push_interval`](crate::Hub::set_push_interval) was asked for
/// another interval than the one it has.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the push interval is set already")]
pub struct PushIntervalSet;

/// Why [`Hub::set_budget`](crate::Hub::set_budget) refused a budget.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BudgetRefused {
    #[error("a wakeup budget needs a push interval above zero")]
    WakeupsNeedAPushInterval,
    #[error("the fan-out budget is set already")]
    Set,
}

/// Why an engine did not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// [`Engine::start_with_lock`](crate::Engine::start_with_lock) was given
    /// the lock of another directory (a bug in the caller).
    #[error("the engine's data directory is {dir:?} but the lock given is {lock:?}")]
    WrongLock { dir: Option<PathBuf>, lock: Option<PathBuf> },
    /// The data directory could not be locked: another process holds it,
    /// or locking failed.
    #[error(transparent)]
    Locked(#[from] LockError),
    #[error(transparent)]
    Meta(#[from] MetaError),
    /// The journal or a snapshot is damaged, incomplete or holds a file of
    /// another journal: the message says where, and whether `--repair`
    /// would mend it.
    #[error("{0}")]
    Corrupt(String),
    /// Reading the journal or a snapshot, or opening the journal for
    /// appending, failed.
    #[error("{0}")]
    Io(String),
    /// A journal written with a larger `worlds_max` holds more worlds in a
    /// shard than this engine's bound allows.
    #[error("shard {shard} holds {held} worlds, more than worlds_max = {to} (the journal was written with {from})")]
    TooManyWorlds { shard: usize, held: usize, to: usize, from: usize },
    /// Moving the journal to a new `worlds_max` failed while snapshotting.
    #[error("shard {shard}: changing worlds_max: {reason}")]
    Snapshot { shard: usize, reason: String },
    /// The journal holds sequences for the highest assignable producer id.
    #[error("every assignable producer id is used")]
    ProducerIdsExhausted,
    /// A thread or runtime could not be started (`what` names it).
    #[error("starting {what}: {source}")]
    Spawn {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// A recovery thread panicked (a bug).
    #[error("recovery thread panicked")]
    Panicked,
}
