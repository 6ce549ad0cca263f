//! The engine: one API over the three execution modes.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use trove_core::state::combine_world_hashes;
use trove_core::{Game, Stamped, WorldId};
use trove_journal::{DataDirLock, FsyncPolicy};

use crate::clock::{ClockMode, EngineClock};
use crate::error::{ConfigError, StartError, UnknownMode};
use crate::journaled::{JournalConfig, recover};
use crate::log::ShardLog;
use crate::metrics::EngineMetrics;
use crate::per_event::PerEvent;
use crate::producer::{Inbox, Intake, Origin, Producer, SubmitError};
use crate::shard_core::ShardCore;
use crate::sharded::{OwnershipError, ShardState, Sharded};
use crate::updates::Hub;

/// Producer ids from here up are assigned by the engine
/// (`Engine::producer`); producers that name themselves use ids below.
pub const ASSIGNED_PRODUCER_IDS: u64 = 1 << 63;

/// How events are executed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Mode {
    /// State-owning shard threads fed in batches. The default.
    #[default]
    Sharded,
    /// Baseline: a tokio task per event, awaiting its world's async mutex
    /// and the hand-off of its outcome.
    TaskPerEvent,
    /// Baseline: each event handed to `tokio::task::spawn_blocking` and
    /// awaited.
    SpawnBlockingPerEvent,
}

impl Mode {
    pub const ALL: [Mode; 3] = [Mode::Sharded, Mode::TaskPerEvent, Mode::SpawnBlockingPerEvent];

    pub fn name(self) -> &'static str {
        match self {
            Mode::Sharded => "sharded",
            Mode::TaskPerEvent => "task-per-event",
            Mode::SpawnBlockingPerEvent => "spawn-blocking-per-event",
        }
    }

    pub fn parse(s: &str) -> Result<Self, UnknownMode> {
        Mode::ALL.into_iter().find(|m| m.name() == s).ok_or_else(|| UnknownMode(s.to_string()))
    }
}

/// Everything the engine is started with. Every bound is named here.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    pub mode: Mode,
    /// Shard threads (sharded mode) or runtime workers (per-event modes).
    pub shards: usize,
    /// Pin shard i to CPU i % cores (Linux; ignored elsewhere).
    pub pin_cores: bool,
    /// Largest batch `submit` accepts.
    pub batch_events_max: usize,
    /// Batches a shard's queue holds before `submit` answers `Busy`.
    pub queue_batches_max: usize,
    /// Events a shard's queue holds before `submit` answers `Busy`; at
    /// least `batch_events_max`, so any batch fits an empty queue. This
    /// bounds the wait of an admitted
    /// batch behind the queue: at 10 M events/s a shard works off 262,144
    /// events in about 26 ms, against 256 batches of up to 65,536 events
    /// (seconds of work) with the batch bound alone.
    pub queue_events_max: usize,
    /// The longest a newly admitted batch may expect to wait behind a
    /// shard's queue: a shard that has work takes a batch only while its
    /// queued events, at the rate the shard has been working them off,
    /// come to at most this. `queue_events_max` bounds the queue's memory;
    /// this bounds its delay, whatever the shard's rate (past capacity,
    /// producers get `Busy` instead of a place at the end of a queue that
    /// takes longer than the latency they were promised).
    pub queue_wait_max: Duration,
    /// How long a queue's expected wait may stay past `queue_wait_max`,
    /// from calm, before it answers `Busy`: a burst that drains by itself
    /// is not refused (`admission`, decision 0057). Zero: none.
    pub queue_burst_allowance: Duration,
    /// Events a shard drains into one `apply` at most.
    pub drain_events_max: usize,
    /// Per-event modes: events in flight before `submit` answers `Busy`.
    pub in_flight_events_max: usize,
    /// Worlds one shard (or, in per-event modes, the engine) holds at most.
    pub worlds_max: usize,
    pub clock: ClockMode,
    /// Engine time at start, for `ClockMode::Wall`. A journaled engine
    /// starts after the last time in its journal if that is later.
    pub clock_base_us: u64,
    /// Journal applied batches (sharded mode only); `None` runs in memory.
    pub journal: Option<JournalConfig>,
    /// Sharded mode: outcomes kept per producer and shard to answer retries
    /// with their original outcome (see `dedup`). At least the events a
    /// producer may have unacknowledged.
    pub dedup_window_events: usize,
    /// Sharded mode: producers a shard remembers; past that, the one idle
    /// the longest is forgotten.
    pub dedup_producers_max: usize,
    /// Cluster mode (sharded, no `journal`): the shards are a cluster's
    /// partitions and start vacant; a shard applies only between
    /// `install_shard` (with its state and its partition's log) and
    /// `vacate_shard`, and admission answers `NotOwner` for the rest.
    pub cluster: bool,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            mode: Mode::Sharded,
            shards: std::thread::available_parallelism().map_or(1, |n| n.get()),
            pin_cores: false,
            batch_events_max: 65_536,
            queue_batches_max: 256,
            queue_events_max: 1 << 18,
            queue_wait_max: QUEUE_WAIT_MAX_DEFAULT,
            queue_burst_allowance: QUEUE_BURST_ALLOWANCE_DEFAULT,
            drain_events_max: 65_536,
            in_flight_events_max: 1 << 20,
            worlds_max: 1 << 20,
            clock: ClockMode::Wall,
            clock_base_us: 0,
            journal: None,
            dedup_window_events: 65_536,
            dedup_producers_max: 1024,
            cluster: false,
        }
    }
}

/// Default `queue_wait_max`: half of a 10 ms p99 target, so that an
/// admitted batch's wait in the queue leaves the rest to the network, the
/// apply, the journal and the ACK. (BUSY costs a producer a pause and a
/// resend of everything behind the refused batch: a 2 ms bound answered
/// 570 BUSY/s past capacity and cost 10% of goodput; decision 0012.)
pub const QUEUE_WAIT_MAX_DEFAULT: Duration = Duration::from_millis(5);
/// Default `queue_burst_allowance`: longer than the stalls measured on a
/// loaded 2-vCPU machine (a shard thread's run-queue waits and the guest's
/// stops, 5-25 ms), which leave queues that drain by themselves below
/// capacity; `queue_events_max` still bounds the queue within it (262,144
/// events: 13-27 ms of work at 10-20 M events/s). PIE (RFC 8033) allows
/// 150 ms.
pub const QUEUE_BURST_ALLOWANCE_DEFAULT: Duration = Duration::from_millis(50);
/// The range `validate` allows for `queue_burst_allowance`.
pub const QUEUE_BURST_ALLOWANCE_MAX: Duration = Duration::from_secs(10);
/// The range `validate` allows for `queue_wait_max`.
pub const QUEUE_WAIT_MAX_RANGE: std::ops::RangeInclusive<Duration> =
    Duration::from_micros(100)..=Duration::from_secs(60);

/// The largest `batch_events_max` and `drain_events_max` allowed.
const BATCH_EVENTS_LIMIT: usize = 1 << 20;
const DRAIN_EVENTS_LIMIT: usize = 1 << 20;
/// The largest `dedup_window_events`: a snapshot counts a producer's kept
/// outcomes, and their bytes, in u32s.
const DEDUP_WINDOW_LIMIT: usize = 1 << 24;

// The largest drain `validate` allows (up to the drain limit, plus one
// batch) fits in one journal frame.
const _: () = assert!(DRAIN_EVENTS_LIMIT - 1 + BATCH_EVENTS_LIMIT <= trove_journal::format::FRAME_EVENTS_MAX);

impl EngineConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        let checks = [
            (self.shards >= 1 && self.shards <= 1024, "shards must be in 1..=1024"),
            ((1..=BATCH_EVENTS_LIMIT).contains(&self.batch_events_max), "batch_events_max must be in 1..=2^20"),
            (
                self.queue_batches_max >= 1 && self.queue_batches_max <= 1 << 16,
                "queue_batches_max must be in 1..=65536",
            ),
            (
                self.queue_events_max >= self.batch_events_max && self.queue_events_max <= 1 << 30,
                "queue_events_max must be in batch_events_max..=2^30 (a batch larger than it would wait for an empty queue)",
            ),
            (QUEUE_WAIT_MAX_RANGE.contains(&self.queue_wait_max), "queue_wait_max must be in 100 us..=60 s"),
            (self.queue_burst_allowance <= QUEUE_BURST_ALLOWANCE_MAX, "queue_burst_allowance must be at most 10 s"),
            ((1..=DRAIN_EVENTS_LIMIT).contains(&self.drain_events_max), "drain_events_max must be in 1..=2^20"),
            (self.dedup_window_events <= DEDUP_WINDOW_LIMIT, "dedup_window_events must be at most 2^24"),
            (
                self.in_flight_events_max >= self.batch_events_max,
                "in_flight_events_max must be at least batch_events_max",
            ),
            (self.worlds_max >= 1, "worlds_max must be at least 1"),
        ];
        checks.iter().find(|(ok, _)| !ok).map_or(Ok(()), |&(_, msg)| Err(ConfigError::OutOfRange(msg)))?;
        if self.journal.is_some() && self.mode != Mode::Sharded {
            return Err(ConfigError::JournalNeedsSharded(self.mode));
        }
        if self.cluster && (self.journal.is_some() || self.mode != Mode::Sharded) {
            return Err(ConfigError::ClusterAlone);
        }
        Ok(())
    }
}

pub(crate) enum Backend<G: Game> {
    Sharded(Sharded<G>),
    PerEvent(Box<PerEvent<G>>),
}

/// State shared by the engine and its producers.
pub(crate) struct Inner<G: Game> {
    pub config: EngineConfig,
    pub clock: EngineClock,
    /// Cleared at shutdown before the queues are closed; `submit` checks it
    /// after reserving queue space (see `Sharded::submit`).
    pub accepting: AtomicBool,
    pub busy_replies: AtomicU64,
    /// Ids for `Engine::producer`; producers that name themselves bring
    /// their own.
    pub next_producer_id: AtomicU64,
    pub hub: Arc<Hub<G>>,
    pub backend: Backend<G>,
    /// Set once, by a journal thread whose disk refused a write or a sync:
    /// from then on nothing is acknowledged or accepted (fail-stop), and
    /// producers are told why.
    pub failure: Arc<OnceLock<String>>,
    /// The data directory's lock (journaled engines), let go at shutdown;
    /// each journal writer holds it too, until its thread ends.
    pub data_lock: Mutex<Option<Arc<DataDirLock>>>,
}

impl<G: Game> std::fmt::Debug for Inner<G> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inner").field("config", &self.config).finish_non_exhaustive()
    }
}

impl<G: Game> Intake<G> for Inner<G> {
    fn submit(
        &self,
        inbox: &Arc<Inbox<G>>,
        ticket: u64,
        origin: Origin,
        events: &mut Vec<Stamped<G::Event>>,
    ) -> Result<Vec<Vec<u32>>, SubmitError> {
        let result = match &self.backend {
            Backend::Sharded(s) => s.submit(&self.accepting, inbox, ticket, origin, events),
            Backend::PerEvent(p) => p.submit(&self.accepting, self.clock, inbox, ticket, origin, events),
        };
        if result == Err(SubmitError::Busy) {
            self.busy_replies.fetch_add(1, Ordering::Relaxed);
        }
        result
    }

    fn batch_events_max(&self) -> usize {
        self.config.batch_events_max
    }

    fn failure(&self) -> Option<&str> {
        self.failure.get().map(String::as_str)
    }
}

/// A running engine.
pub struct Engine<G: Game> {
    inner: Arc<Inner<G>>,
}

impl<G: Game> std::fmt::Debug for Engine<G> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").field("inner", &self.inner).finish()
    }
}

/// What is left when an engine has stopped.
#[derive(Debug)]
pub struct FinalState {
    /// Per-world state hashes, ascending by world id.
    pub world_hashes: Vec<(WorldId, u64)>,
    /// The total state hash (independent of shard count and mode).
    pub state_hash: u64,
    pub events_applied: u64,
    pub metrics: EngineMetrics,
}

impl<G: Game> Engine<G> {
    /// Starts an engine; recovery progress and repairs are logged as
    /// `tracing` events (target `trove::engine`).
    pub fn start(config: EngineConfig) -> Result<Self, StartError> {
        Self::start_logged(config, &mut |line| tracing::info!(target: "trove::engine", "{line}"))
    }

    /// Starts an engine: locks its data directory (if it journals), then
    /// recovers its state from the journal and starts the shards. `log`
    /// gets one line per repair and progress lines during a long replay.
    pub fn start_logged(config: EngineConfig, log: &mut dyn FnMut(String)) -> Result<Self, StartError> {
        config.validate()?;
        let lock = match &config.journal {
            Some(j) => Some(DataDirLock::acquire(&j.dir)?),
            None => None,
        };
        Self::start_with_lock(config, lock, log)
    }

    /// [`Engine::start_logged`] on a data directory the caller has locked
    /// already (`trove serve` locks it before it reads the directory's
    /// shard count). `lock` must be the lock of `config.journal`'s
    /// directory (`None` without a journal). If the start fails, a data
    /// directory this start created is removed: a failed start leaves no
    /// new directory behind.
    pub fn start_with_lock(
        config: EngineConfig,
        lock: Option<DataDirLock>,
        log: &mut dyn FnMut(String),
    ) -> Result<Self, StartError> {
        match (&config.journal, &lock) {
            (Some(j), Some(l)) if l.dir() == j.dir => {}
            (None, None) => {}
            (j, l) => {
                return Err(StartError::WrongLock {
                    dir: j.as_ref().map(|j| j.dir.clone()),
                    lock: l.as_ref().map(|l| l.dir().to_path_buf()),
                });
            }
        }
        let lock = lock.map(Arc::new);
        match Self::start_locked(config, lock.clone(), log) {
            Ok(engine) => Ok(engine),
            Err(e) => {
                if let Some(lock) = lock {
                    remove_if_created(lock, log);
                }
                Err(e)
            }
        }
    }

    fn start_locked(
        config: EngineConfig,
        lock: Option<Arc<DataDirLock>>,
        log: &mut dyn FnMut(String),
    ) -> Result<Self, StartError> {
        config.validate()?;
        let recovered = match (&config.journal, &lock) {
            (Some(j), Some(lock)) => Some(recover::<G>(
                j,
                lock,
                config.shards,
                config.worlds_max,
                (config.dedup_window_events, config.dedup_producers_max),
                log,
            )?),
            _ => None,
        };
        let journal_time_us = recovered.iter().flatten().map(|r| r.last_time_us.saturating_add(1)).max().unwrap_or(0);
        // Ids handed out by `Engine::producer` live apart from the ids
        // producers choose (the top half of the range). Each start hands
        // them out from a random point of [2^63, 2^63 + 2^62), and past
        // every assigned id its journal holds: an id an earlier run handed
        // to a producer that had nothing journaled yet (it may still present
        // it after a reconnect) is not handed to another producer, but for a
        // collision of odds about 2^-62 an id; and in a cluster, a
        // partition's producers come from every node, which never hand out
        // the same ids.
        let journal_next = match recovered
            .iter()
            .flatten()
            .flat_map(|r| r.producers.last_seqs())
            .map(|(p, _)| p)
            .filter(|&p| p >= ASSIGNED_PRODUCER_IDS)
            .max()
        {
            None => ASSIGNED_PRODUCER_IDS,
            Some(m) => m.checked_add(1).ok_or(StartError::ProducerIdsExhausted)?,
        };
        let random_start = {
            use std::hash::{BuildHasher, Hasher};
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u128(
                std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos(),
            );
            h.write_u32(std::process::id());
            ASSIGNED_PRODUCER_IDS + (h.finish() >> 2)
        };
        let producer_id_next = journal_next.max(random_start);
        let clock = EngineClock::new(config.clock_base_us.max(journal_time_us));
        let hub = Arc::new(Hub::default());
        let failure = Arc::new(OnceLock::new());
        let backend = match config.mode {
            Mode::Sharded => Backend::Sharded(Sharded::start(&config, clock, recovered, hub.clone(), failure.clone())?),
            Mode::TaskPerEvent | Mode::SpawnBlockingPerEvent => {
                Backend::PerEvent(Box::new(PerEvent::start(&config, hub.clone())?))
            }
        };
        Ok(Self {
            inner: Arc::new(Inner {
                config,
                clock,
                accepting: AtomicBool::new(true),
                busy_replies: AtomicU64::new(0),
                next_producer_id: AtomicU64::new(producer_id_next),
                hub,
                backend,
                failure,
                data_lock: Mutex::new(lock),
            }),
        })
    }

    pub fn config(&self) -> &EngineConfig {
        &self.inner.config
    }

    /// A new producer handle with an id of its own, at or above
    /// [`ASSIGNED_PRODUCER_IDS`] (unique within this engine, above every
    /// such id its journal holds, from a random start each run), and
    /// sequence numbers from 1.
    pub fn producer(&self) -> Producer<G> {
        let id = self.inner.next_producer_id.fetch_add(1, Ordering::Relaxed);
        Producer::new(self.inner.clone(), id, 1)
    }

    /// A producer handle for a producer that names itself (a game server
    /// reconnecting, say), continuing from `next_seq`.
    pub fn producer_with_id(&self, id: u64, next_seq: u64) -> Producer<G> {
        Producer::new(self.inner.clone(), id, next_seq)
    }

    /// Reads `world` on the thread that owns it, between batches, and
    /// answers with `f`'s result (`None`: no such world). The read sees
    /// every batch applied before it; it never blocks a shard for longer
    /// than `f` runs.
    pub fn query_world<R: Send + 'static>(
        &self,
        world: WorldId,
        f: impl FnOnce(Option<&G::World>) -> R + Send + 'static,
    ) -> tokio::sync::oneshot::Receiver<R> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        match &self.inner.backend {
            Backend::Sharded(s) => {
                let shard = crate::sharded::shard_of(world, s.shard_count());
                s.query(
                    shard,
                    Box::new(move |state| {
                        let _ = tx.send(f(state.worlds().get(world)));
                    }),
                );
            }
            Backend::PerEvent(p) => p.query_world(
                world,
                Box::new(move |state| {
                    let _ = tx.send(f(state.and_then(|s| s.worlds().get(world))));
                }),
            ),
        }
        rx
    }

    /// Runs `f` on a page of worlds, on the threads that own them: each
    /// shard's first `limit` worlds with ids above `after`, ascending per
    /// shard (the caller merges: the engine-wide page is the first `limit`
    /// of the union). A shard sorts only its page, not every world.
    pub fn query_world_page<R: Send + 'static>(
        &self,
        after: Option<WorldId>,
        limit: usize,
        f: impl Fn(WorldId, &G::World) -> R + Send + Sync + 'static,
    ) -> tokio::sync::mpsc::UnboundedReceiver<R> {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let f = Arc::new(f);
        match &self.inner.backend {
            Backend::Sharded(s) => {
                for shard in 0..s.shard_count() {
                    let (tx, f) = (tx.clone(), f.clone());
                    s.query(
                        shard,
                        Box::new(move |state| {
                            for (id, w) in state.worlds().page(after, limit) {
                                let _ = tx.send(f(id, w));
                            }
                        }),
                    );
                }
            }
            Backend::PerEvent(p) => p.query_all(Arc::new(move |state| {
                for (id, w) in state.worlds().page(after, limit) {
                    let _ = tx.send(f(id, w));
                }
            })),
        }
        rx
    }

    /// The tokio runtime that applies events in the per-event modes
    /// (`None` when sharded: shards are plain threads), for its metrics.
    pub fn runtime_handle(&self) -> Option<tokio::runtime::Handle> {
        match &self.inner.backend {
            Backend::Sharded(_) => None,
            Backend::PerEvent(p) => Some(p.handle().clone()),
        }
    }

    /// Subscriptions to worlds' update streams.
    pub fn hub(&self) -> &Arc<Hub<G>> {
        &self.inner.hub
    }

    /// Why the engine stopped acknowledging, if it did: a journal write or
    /// sync failed. Nothing more is accepted (`SubmitError::Failed`); a
    /// restart recovers what was durable.
    pub fn failure(&self) -> Option<&str> {
        self.inner.failure.get().map(String::as_str)
    }

    /// Cluster mode: shard `index` owns its partition from now on, with
    /// `core` (the partition's state, recovered from its log, journaled)
    /// and `log` to make what it applies durable under `policy`.
    /// Admission takes its events once this returns.
    pub fn install_shard<L: ShardLog<G::Event>>(
        &self,
        index: usize,
        core: ShardCore<G>,
        log: L,
        policy: FsyncPolicy,
    ) -> Result<(), OwnershipError> {
        match &self.inner.backend {
            Backend::Sharded(s) if self.inner.config.cluster => s.install(index, core, log, policy),
            _ => Err(OwnershipError::NotACluster),
        }
    }

    /// Cluster mode: shard `index` gives its partition up: admission stops
    /// at once, what was admitted is applied and made durable (or failed),
    /// with a snapshot after it if `snapshot`; returns when its log
    /// thread has ended. Then the shard is vacant.
    pub fn vacate_shard(&self, index: usize, snapshot: bool) -> Result<(), OwnershipError> {
        match &self.inner.backend {
            Backend::Sharded(s) if self.inner.config.cluster => s.vacate(index, snapshot),
            _ => Err(OwnershipError::NotACluster),
        }
    }

    /// Each shard's standing: `Vacant`, `Owned`, or `Lost` (its log was
    /// fenced or unavailable: vacate it). Outside cluster mode every shard
    /// is `Owned`.
    pub fn shard_states(&self) -> Vec<ShardState> {
        match &self.inner.backend {
            Backend::Sharded(s) => s.states(),
            Backend::PerEvent(_) => vec![ShardState::Owned],
        }
    }

    /// Whether this engine serves `world` now: always, outside cluster
    /// mode; in it, while the shard of the world's partition is owned.
    pub fn owns_world(&self, world: WorldId) -> bool {
        match &self.inner.backend {
            Backend::Sharded(s) if self.inner.config.cluster => {
                s.owns(crate::sharded::shard_of(world, s.shard_count()))
            }
            _ => true,
        }
    }

    /// A snapshot of every shard's metrics; never stops a shard.
    pub fn metrics(&self) -> EngineMetrics {
        let shards = match &self.inner.backend {
            Backend::Sharded(s) => s.metrics(),
            Backend::PerEvent(p) => p.metrics(),
        };
        EngineMetrics {
            mode: self.inner.config.mode.name(),
            shards,
            busy_replies: self.inner.busy_replies.load(Ordering::Relaxed),
            burst_admits: match &self.inner.backend {
                Backend::Sharded(s) => s.burst_admits(),
                Backend::PerEvent(_) => 0,
            },
        }
    }

    /// Stops accepting, applies everything accepted, delivers its outcomes,
    /// and stops; then lets go of the data directory's lock. Producers'
    /// later submits answer `ShuttingDown`.
    pub fn shutdown(self) -> FinalState {
        self.stop().0
    }

    /// Stops an engine whose start failed after it was up (a listener,
    /// the control plane) and removes its data directory if this start
    /// created it and nothing was applied: a connection accepted from the
    /// listen backlog before the failure may have had events applied and
    /// acknowledged, and then the directory is kept. `log` says what was
    /// removed or kept.
    pub fn abandon(self, log: &mut dyn FnMut(String)) {
        let (fin, lock) = self.stop();
        let Some(lock) = lock else { return };
        if fin.events_applied == 0 {
            remove_if_created(lock, log);
        } else {
            log(format!(
                "kept {}: {} events were applied before the start failed",
                lock.dir().display(),
                fin.events_applied
            ));
        }
    }

    /// `shutdown`, handing back the data directory's lock.
    fn stop(self) -> (FinalState, Option<Arc<DataDirLock>>) {
        self.inner.accepting.store(false, Ordering::SeqCst);
        let world_hashes = match &self.inner.backend {
            Backend::Sharded(s) => s.shutdown(),
            Backend::PerEvent(p) => p.shutdown(),
        };
        let metrics = self.metrics();
        // The journal threads have ended: no one writes any more. The lock
        // goes with this value, not with the last producer handle.
        let lock = self.inner.data_lock.lock().unwrap_or_else(|e| e.into_inner()).take();
        let fin = FinalState {
            state_hash: combine_world_hashes(world_hashes.clone()),
            world_hashes,
            events_applied: metrics.events_applied(),
            metrics,
        };
        (fin, lock)
    }
}

/// Removes the data directory `lock` holds if this start created it (see
/// [`DataDirLock::remove_created`]); says what happened in `log`. A lock
/// still shared (a journal thread that has not ended) is kept, and so is
/// the directory.
fn remove_if_created(lock: Arc<DataDirLock>, log: &mut dyn FnMut(String)) {
    let dir = lock.dir().to_path_buf();
    match Arc::try_unwrap(lock) {
        Ok(lock) => match lock.remove_created() {
            Ok(true) => log(format!("removed {}, which this failed start created", dir.display())),
            Ok(false) => {}
            Err(e) => log(e.to_string()),
        },
        Err(_) => log(format!("{} was left in place: a journal thread still holds it", dir.display())),
    }
}
