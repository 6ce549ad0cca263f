//! The default mode: state-owning shard threads fed in batches.
//!
//! Each shard thread owns a [`ShardCore`] holding the worlds that hash to
//! it; no other thread touches that state, so applying takes no lock.
//! Producers split a batch by shard and queue each part on its shard's
//! channel. A shard parks until work arrives, drains what is queued (up to
//! `drain_events_max` events), reads the clock once, and drives its core,
//! which takes retries out, stamps and applies the batch and answers each
//! part; the thread hands each part's outcomes back to its producer (or,
//! journaling, the batch to its journal thread): one lock and one wake per
//! part, never per event. The thread decides nothing the core could.
//!
//! Admission is all-or-nothing and bounded: a submit first reserves one
//! queue slot on every shard it needs (an atomic counter per shard, at most
//! `queue_batches_max`) and room for its events there (at most
//! `queue_events_max` queued, which `validate` keeps at least one largest
//! batch, and at most `queue_wait_max` of work at the shard's measured
//! drain rate: `admission`), and if any is full it releases what it took
//! and answers `Busy`. The channel itself is unbounded, but nothing reaches
//! it without a reservation, so a shard's queue never holds more than
//! `queue_batches_max` batches nor more than `queue_events_max` events.
//! The wait bound is what keeps an admitted batch's wait short under
//! overload: past capacity, producers get `Busy` instead of a place at the
//! end of a long queue.
//!
//! A shard's input is a sequence of stamped batches; it could come from a
//! partitioned log as well as from producers.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed, Ordering::SeqCst};
use std::sync::mpsc::{Receiver, SendError, Sender, SyncSender, TryRecvError};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::Instant;

use trove_core::{Game, GameState, Stamped, WorldId};
use trove_journal::FsyncPolicy;

use crate::admission::{self, Admit, Bounds, Burst, DrainRate, Queue};
use crate::clock::{ClockMode, EngineClock};
use crate::engine::EngineConfig;
use crate::error::StartError;
use crate::journaled::{JournalJob, RecoveredShard, run_journal};
use crate::log::ShardLog;
use crate::metrics::{ShardMetrics, ShardMetricsSnapshot};
use crate::producer::{Inbox, Lost, Origin, Part, Stamps, SubmitError};
use crate::shard_core::{Answer, CoreConfig, Handoff, JournalBatch, ShardCore, WorkPart};
use crate::updates::Hub;

pub use trove_core::shard_of;

/// Applied batches (and snapshots) a shard may hand its journal thread
/// before it waits for the disk: a slow disk slows the shard, whose full
/// queue then answers producers `Busy`, instead of growing memory.
const JOURNAL_QUEUE_JOBS: usize = 64;

/// Shard counts up to this need no allocation to track a batch's shards.
const SHARDS_INLINE_MAX: usize = 64;

/// A shard index and the events of a batch that go to it.
type ShardPart<G> = (usize, Vec<Stamped<<G as Game>::Event>>);

/// A read of a shard's state, run on the shard's thread between batches.
pub(crate) type Query<G> = Box<dyn FnOnce(&GameState<G>) + Send>;

enum Msg<G: Game> {
    Work(Work<G>),
    Query(Query<G>),
    /// Cluster mode: from now on the shard owns its partition, with this
    /// state and log (`Sharded::install`).
    Install(Box<Installed<G>>),
    /// Cluster mode: the shard gives its partition up, after applying
    /// everything admitted before (`Sharded::vacate`).
    Vacate(Vacate),
    /// Sent once at shutdown, after `accepting` is cleared.
    Stop,
}

/// A partition's state and log, handed to its shard thread.
struct Installed<G: Game> {
    core: ShardCore<G>,
    journal: JournalLink<G>,
}

/// How a shard gives its partition up.
struct Vacate {
    /// Snapshot the state into the log first (a clean hand-over: the next
    /// owner replays little).
    snapshot: bool,
    /// Told when the log thread has ended: every batch applied here was
    /// acknowledged or failed.
    done: SyncSender<()>,
}

/// A shard's standing in cluster mode, shared by admission, the shard
/// thread and its log thread. Outside cluster mode a shard is always
/// owned and never lost.
#[derive(Debug, Default)]
pub(crate) struct Standing {
    /// Admission takes batches for this shard only while set.
    owned: AtomicBool,
    /// Set when the shard's log was fenced or unavailable: the shard
    /// applies nothing more until it is vacated and installed again.
    lost_flag: AtomicBool,
    lost: Mutex<Option<Lost>>,
}

impl Standing {
    fn owned() -> Self {
        Self { owned: AtomicBool::new(true), ..Self::default() }
    }

    /// The shard's log lost its partition (`Lost::Deposed` or
    /// `Lost::Unavailable`): admission stops at once, and the shard
    /// answers what it still drains with `lost`.
    pub(crate) fn lose(&self, lost: Lost) {
        self.owned.store(false, SeqCst);
        self.lost.lock().unwrap_or_else(|e| e.into_inner()).get_or_insert(lost);
        self.lost_flag.store(true, SeqCst);
    }

    fn loss(&self) -> Option<Lost> {
        if !self.lost_flag.load(Relaxed) {
            return None;
        }
        self.lost.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn clear_loss(&self) {
        *self.lost.lock().unwrap_or_else(|e| e.into_inner()) = None;
        self.lost_flag.store(false, SeqCst);
    }
}

/// A shard's state in cluster mode, as `Engine::shard_states` reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ShardState {
    /// Holds no partition: admission refuses its events (`NotOwner`).
    Vacant,
    /// Owns its partition and applies.
    Owned,
    /// Its log lost the partition (fenced or unavailable): it applies
    /// nothing until vacated.
    Lost(Lost),
}

/// Where a part's answer goes, and when it was admitted: the threaded
/// shard's reply token in its core's `WorkPart`s.
struct Reply<G: Game> {
    inbox: Arc<Inbox<G>>,
    ticket: u64,
    part: u32,
    /// When `submit` accepted the batch.
    submitted_at: Instant,
}

type Work<G> = WorkPart<G, Reply<G>>;

struct Shard<G: Game> {
    tx: Sender<Msg<G>>,
    /// Batches reserved or queued and not yet drained.
    queued: Arc<AtomicUsize>,
    /// Events of those batches: what bounds the time a newly admitted
    /// batch waits behind the queue (`queue_events_max`).
    queued_events: Arc<AtomicUsize>,
    /// The shard's recent cost per drained event, in picoseconds
    /// (`DrainRate`): what `queue_wait_max` is judged by.
    ps_per_event: Arc<AtomicU64>,
    metrics: Arc<ShardMetrics>,
    /// The queue's burst allowance (`queue_burst_allowance`).
    burst: Burst,
    standing: Arc<Standing>,
    thread: Mutex<Option<JoinHandle<Vec<(WorldId, u64)>>>>,
}

pub(crate) struct Sharded<G: Game> {
    shards: Vec<Shard<G>>,
    /// Every shard queue's bounds (from `EngineConfig`).
    bounds: Bounds,
    /// The engine's failure (set by a journal thread): once set, `submit`
    /// answers `Failed`.
    failure: Arc<OnceLock<String>>,
    /// Serialises `install` and `vacate` (cluster mode's control calls).
    ownership: Mutex<()>,
    /// Batches taken with a queue on its burst allowance.
    burst_admits: AtomicU64,
}

impl<G: Game> Sharded<G> {
    /// Batches taken with a shard's queue on its burst allowance.
    pub fn burst_admits(&self) -> u64 {
        self.burst_admits.load(Relaxed)
    }

    /// Starts the shard threads, with the states and journal writers
    /// recovered from a journal if there is one.
    pub fn start(
        config: &EngineConfig,
        clock: EngineClock,
        recovered: Option<Vec<RecoveredShard<G>>>,
        hub: Arc<Hub<G>>,
        failure: Arc<OnceLock<String>>,
    ) -> Result<Self, StartError> {
        let cores = core_affinity::get_core_ids().unwrap_or_default();
        let epoch = Instant::now();
        let mut recovered = recovered.map(Vec::into_iter);
        let mut shards = Vec::with_capacity(config.shards);
        for index in 0..config.shards {
            let (tx, rx) = std::sync::mpsc::channel();
            let queued = Arc::new(AtomicUsize::new(0));
            let queued_events = Arc::new(AtomicUsize::new(0));
            let metrics = Arc::new(ShardMetrics::new(G::REJECTION_NAMES.len()));
            let core = (config.pin_cores && !cores.is_empty()).then(|| cores[index % cores.len()]);
            let core_config = core_config_of(config);
            // In cluster mode a shard starts vacant: it owns nothing until
            // its partition is installed.
            let standing = Arc::new(if config.cluster { Standing::default() } else { Standing::owned() });
            let (shard_core, journal) = match recovered.as_mut().and_then(Iterator::next) {
                Some(r) => {
                    let policy = config.journal.as_ref().expect("journal config").fsync;
                    let link = JournalLink::spawn(index, r.writer, policy, &metrics, &failure, &standing)?;
                    let shard_core = ShardCore::with_state(r.state, r.producers, core_config);
                    (shard_core, Some(link))
                }
                None => (ShardCore::new(core_config), None),
            };
            assert_eq!(journal.is_some(), config.journal.is_some(), "a journaled engine recovers every shard");
            let drain_rate = DrainRate::default();
            let ps_per_event = drain_rate.published();
            let run = ShardLoop::<G> {
                rx,
                queued: queued.clone(),
                queued_events: queued_events.clone(),
                drain_rate,
                metrics: metrics.clone(),
                core: shard_core,
                journal,
                failure: failure.clone(),
                standing: standing.clone(),
                core_config,
                started: Instant::now(),
                drain_events_max: config.drain_events_max,
                clock_mode: config.clock,
                clock,
                hub: hub.clone(),
            };
            let thread = std::thread::Builder::new()
                .name(format!("trove-shard-{index}"))
                .spawn(move || {
                    if let Some(core) = core {
                        core_affinity::set_for_current(core);
                    }
                    run.run()
                })
                .map_err(|source| StartError::Spawn { what: format!("shard thread {index}"), source })?;
            shards.push(Shard {
                tx,
                queued,
                queued_events,
                ps_per_event,
                metrics,
                burst: Burst::new(epoch),
                standing,
                thread: Mutex::new(Some(thread)),
            });
        }
        let bounds = Bounds {
            batches_max: config.queue_batches_max,
            events_max: config.queue_events_max,
            wait_max: config.queue_wait_max,
            burst_allowance: config.queue_burst_allowance,
        };
        Ok(Self { shards, bounds, failure, ownership: Mutex::new(()), burst_admits: AtomicU64::new(0) })
    }

    /// Cluster mode: shard `index` owns its partition from now on, with
    /// `core` (recovered from the partition's log, journaled) and `log` to
    /// make what it applies durable, under `policy`. Admission takes its
    /// events once this returns.
    pub fn install<L: ShardLog<G::Event>>(
        &self,
        index: usize,
        core: ShardCore<G>,
        log: L,
        policy: FsyncPolicy,
    ) -> Result<(), OwnershipError> {
        assert!(core.journaled(), "an installed shard answers only through its log");
        let _serial = self.ownership.lock().unwrap_or_else(|e| e.into_inner());
        let shard = self.shards.get(index).ok_or(OwnershipError::NoSuchShard { index, shards: self.shards.len() })?;
        if shard.standing.owned.load(SeqCst) || shard.standing.lost_flag.load(SeqCst) {
            return Err(OwnershipError::NotVacant { index });
        }
        let journal = JournalLink::spawn(index, log, policy, &shard.metrics, &self.failure, &shard.standing)
            .map_err(|e| OwnershipError::Spawn(e.to_string()))?;
        if shard.tx.send(Msg::Install(Box::new(Installed { core, journal }))).is_err() {
            return Err(OwnershipError::Stopped);
        }
        // After the message: whatever admission takes from now on is
        // queued behind the installation.
        shard.standing.owned.store(true, SeqCst);
        Ok(())
    }

    /// Cluster mode: shard `index` gives its partition up. Admission stops
    /// taking its events at once; everything admitted before is applied
    /// and handed to the log, `snapshot` asks for a snapshot after it, and
    /// this returns when the log thread has ended (every batch
    /// acknowledged or failed). Then the shard is vacant and holds no
    /// state. Vacating a vacant shard does nothing.
    pub fn vacate(&self, index: usize, snapshot: bool) -> Result<(), OwnershipError> {
        let _serial = self.ownership.lock().unwrap_or_else(|e| e.into_inner());
        let shard = self.shards.get(index).ok_or(OwnershipError::NoSuchShard { index, shards: self.shards.len() })?;
        shard.standing.owned.store(false, SeqCst);
        let (done, wait) = std::sync::mpsc::sync_channel(1);
        if shard.tx.send(Msg::Vacate(Vacate { snapshot, done })).is_err() {
            return Err(OwnershipError::Stopped);
        }
        wait.recv().map_err(|_| OwnershipError::Stopped)?;
        shard.standing.clear_loss();
        Ok(())
    }

    /// Whether shard `index` owns its partition now (and its log has not
    /// lost it).
    pub fn owns(&self, index: usize) -> bool {
        let s = &self.shards[index].standing;
        s.owned.load(SeqCst) && !s.lost_flag.load(SeqCst)
    }

    /// Each shard's standing (cluster mode; outside it every shard is
    /// `Owned`).
    pub fn states(&self) -> Vec<ShardState> {
        self.shards
            .iter()
            .map(|s| match s.standing.loss() {
                Some(lost) => ShardState::Lost(lost),
                None if s.standing.owned.load(SeqCst) => ShardState::Owned,
                None => ShardState::Vacant,
            })
            .collect()
    }

    /// Admits a batch, all or nothing (see the module docs). `accepting`
    /// is the engine's: cleared at shutdown, before the queues close.
    pub fn submit(
        &self,
        accepting: &AtomicBool,
        inbox: &Arc<Inbox<G>>,
        ticket: u64,
        origin: Origin,
        events: &mut Vec<Stamped<G::Event>>,
    ) -> Result<Vec<Vec<u32>>, SubmitError> {
        if self.failure.get().is_some() {
            return Err(SubmitError::Failed);
        }
        let n = self.shards.len();
        // How many of the batch's events each shard gets: one queue slot on
        // each shard involved, or none.
        let mut counts = [0u32; SHARDS_INLINE_MAX];
        let mut counts_heap = Vec::new();
        let counts: &mut [u32] = if n <= SHARDS_INLINE_MAX {
            &mut counts[..n]
        } else {
            counts_heap.resize(n, 0);
            &mut counts_heap
        };
        if n == 1 {
            counts[0] = events.len() as u32;
        } else {
            for e in events.iter() {
                counts[shard_of(G::world_of(&e.event), n)] += 1;
            }
        }
        let involved = |s: usize| counts[s] > 0;
        let bounds = self.bounds;
        let mut on_allowance = false;
        let release = |upto: usize| {
            for u in (0..upto).filter(|&u| involved(u)) {
                self.shards[u].queued.fetch_sub(1, SeqCst);
                self.shards[u].queued_events.fetch_sub(counts[u] as usize, SeqCst);
            }
        };
        for (s, (shard, &count)) in self.shards.iter().zip(counts.iter()).enumerate() {
            if count == 0 {
                continue;
            }
            if !shard.standing.owned.load(Relaxed) {
                release(s);
                return Err(SubmitError::NotOwner { shard: s });
            }
            let batches_before = shard.queued.fetch_add(1, SeqCst);
            let events_before = shard.queued_events.fetch_add(count as usize, SeqCst);
            // A queue takes a batch only while it stays within its bounds
            // (`admission`), so what is admitted waits behind a bounded
            // amount of work instead of growing the tail.
            let queue = Queue { batches_before, events_before, count: count as usize };
            // The clock after the reservation: what the queue looked like
            // then, not before a preemption in between.
            match admission::admits(queue, bounds, shard.ps_per_event.load(Relaxed), &shard.burst, Instant::now()) {
                Admit::Taken => {}
                Admit::Burst => on_allowance = true,
                Admit::Refused => {
                    release(s + 1);
                    return Err(SubmitError::Busy);
                }
            }
        }
        // Checked after reserving: shutdown clears `accepting` and then waits
        // for `queued` to drain, so a reservation that sees `accepting` set
        // is always drained (see `ShardLoop::run`).
        if !accepting.load(SeqCst) {
            release(n);
            return Err(SubmitError::ShuttingDown);
        }
        // Checked again after reserving, for the same reason: `vacate`
        // clears `owned` and then waits for the reservations to drain.
        if let Some(s) = (0..n).find(|&s| involved(s) && !self.shards[s].standing.owned.load(SeqCst)) {
            release(n);
            return Err(SubmitError::NotOwner { shard: s });
        }

        // Committed: split by shard, remembering where each event came from.
        let events = std::mem::take(events);
        let (parts, layout): (Vec<ShardPart<G>>, Vec<Vec<u32>>) = if n == 1 {
            (vec![(0, events)], vec![Vec::new()])
        } else {
            let mut by_shard: Vec<Vec<Stamped<G::Event>>> =
                counts.iter().map(|&c| Vec::with_capacity(c as usize)).collect();
            let mut positions: Vec<Vec<u32>> = counts.iter().map(|&c| Vec::with_capacity(c as usize)).collect();
            for (i, e) in events.into_iter().enumerate() {
                let s = shard_of(G::world_of(&e.event), n);
                by_shard[s].push(e);
                positions[s].push(i as u32);
            }
            by_shard
                .into_iter()
                .zip(positions)
                .enumerate()
                .filter(|(_, (e, _))| !e.is_empty())
                .map(|(s, (e, p))| ((s, e), p))
                .unzip()
        };
        let split = layout.len() > 1;
        let submitted_at = Instant::now();
        if on_allowance {
            self.burst_admits.fetch_add(1, Relaxed);
        }
        for (part, (s, events)) in parts.into_iter().enumerate() {
            let shard = &self.shards[s];
            shard.metrics.queue_depth_batches.fetch_add(1, Relaxed);
            shard.metrics.queue_depth_events.fetch_add(events.len() as u64, Relaxed);
            let positions = split.then(|| Arc::new(layout[part].clone()));
            let reply = Reply { inbox: inbox.clone(), ticket, part: part as u32, submitted_at };
            // Here, on the producer's thread, not on the shard's: the
            // events' fingerprints.
            let work = WorkPart::new(reply, origin, positions, events);
            // The receiver lives until every reservation is drained.
            if shard.tx.send(Msg::Work(work)).is_err() {
                unreachable!("shard {s} stopped while holding a reservation");
            }
        }
        Ok(layout)
    }

    /// Queues `q` on shard `shard`; false if the shard has stopped.
    pub fn query(&self, shard: usize, q: Query<G>) -> bool {
        self.shards[shard].tx.send(Msg::Query(q)).is_ok()
    }

    pub fn shard_count(&self) -> usize {
        self.shards.len()
    }

    pub fn metrics(&self) -> Vec<ShardMetricsSnapshot> {
        self.shards.iter().map(|s| s.metrics.snapshot(G::REJECTION_NAMES)).collect()
    }

    /// Stops every shard after it has applied everything queued.
    pub fn shutdown(&self) -> Vec<(WorldId, u64)> {
        for shard in &self.shards {
            let _ = shard.tx.send(Msg::Stop);
        }
        let mut hashes = Vec::new();
        for shard in &self.shards {
            let thread = shard.thread.lock().unwrap_or_else(|e| e.into_inner()).take();
            if let Some(t) = thread {
                hashes.extend(t.join().expect("shard thread panicked"));
            }
        }
        hashes.sort_unstable_by_key(|&(id, _)| id);
        hashes
    }
}

/// A shard's side of its journal thread.
struct JournalLink<G: Game> {
    /// Applied batches go there, and their acknowledgements with them.
    jobs: SyncSender<JournalJob<G>>,
    thread: JoinHandle<()>,
}

impl<G: Game> JournalLink<G> {
    /// Starts shard `index`'s journal thread over `log`.
    fn spawn<L: ShardLog<G::Event>>(
        index: usize,
        log: L,
        policy: FsyncPolicy,
        metrics: &Arc<ShardMetrics>,
        failure: &Arc<OnceLock<String>>,
        standing: &Arc<Standing>,
    ) -> Result<Self, StartError> {
        let (jobs, rx) = std::sync::mpsc::sync_channel(JOURNAL_QUEUE_JOBS);
        let (m, f, st) = (metrics.clone(), failure.clone(), standing.clone());
        let thread = std::thread::Builder::new()
            .name(format!("trove-journal-{index}"))
            .spawn(move || run_journal::<G, L>(rx, log, policy, m, &f, &st))
            .map_err(|source| StartError::Spawn { what: format!("journal thread {index}"), source })?;
        Ok(Self { jobs, thread })
    }

    /// Sends a final snapshot if asked, hangs up and waits for the thread:
    /// everything sent was written, synced and acknowledged, or failed.
    fn close<F: FnOnce() -> JournalJob<G>>(self, snapshot: Option<F>) {
        if let Some(s) = snapshot {
            let _ = self.jobs.send(s());
        }
        drop(self.jobs);
        self.thread.join().expect("journal thread panicked");
    }
}

/// What every shard core of `config` is built with.
fn core_config_of(config: &EngineConfig) -> CoreConfig {
    CoreConfig {
        worlds_max: config.worlds_max,
        dedup_window_events: config.dedup_window_events,
        dedup_producers_max: config.dedup_producers_max,
        journaled: config.journal.is_some(),
        snapshot_interval: config.journal.as_ref().and_then(|j| j.snapshot_interval),
    }
}

/// Why `install` or `vacate` refused.
#[derive(Debug, thiserror::Error)]
pub enum OwnershipError {
    #[error("there is no shard {index} (the engine has {shards})")]
    NoSuchShard { index: usize, shards: usize },
    #[error("shard {index} is not vacant: vacate it first")]
    NotVacant { index: usize },
    #[error("the engine is stopping")]
    Stopped,
    #[error("the engine is not in cluster mode")]
    NotACluster,
    #[error("{0}")]
    Spawn(String),
}

/// The shard thread: parks, drains, reads the clock, and drives its
/// [`ShardCore`], which decides; this loop does the rest (queues, metrics,
/// the journal hand-off, deliveries, snapshot timing).
struct ShardLoop<G: Game> {
    rx: Receiver<Msg<G>>,
    queued: Arc<AtomicUsize>,
    queued_events: Arc<AtomicUsize>,
    drain_rate: DrainRate,
    metrics: Arc<ShardMetrics>,
    core: ShardCore<G>,
    /// The journal thread, if the engine journals (in cluster mode: while
    /// the shard owns its partition).
    journal: Option<JournalLink<G>>,
    /// The engine's failure: once set, work is answered with it, not
    /// applied (`ShardCore::fail`).
    failure: Arc<OnceLock<String>>,
    /// Cluster mode: whether the shard owns its partition, and whether its
    /// log lost it.
    standing: Arc<Standing>,
    /// What a vacated shard's empty core is built with.
    core_config: CoreConfig,
    /// The epoch of the `now` the core's snapshot timing is given.
    started: Instant,
    drain_events_max: usize,
    clock_mode: ClockMode,
    clock: EngineClock,
    /// Subscribers get each applied batch's updates before it is durable.
    hub: Arc<Hub<G>>,
}

impl<G: Game> ShardLoop<G> {
    /// Handles a message that is not work; `Stop` sets `stopping`.
    fn control(&mut self, msg: Msg<G>, stopping: &mut bool, vacating: &mut Option<Vacate>) {
        match msg {
            Msg::Work(_) => unreachable!("work is drained by the loop"),
            // Between batches: it sees everything applied so far.
            Msg::Query(q) => q(self.core.state()),
            Msg::Install(installed) => {
                let Installed { core, journal } = *installed;
                assert!(self.journal.is_none(), "a shard is installed only while vacant");
                self.core = core;
                self.journal = Some(journal);
                self.started = Instant::now();
            }
            Msg::Vacate(v) => {
                *vacating = Some(v);
            }
            Msg::Stop => *stopping = true,
        }
    }

    /// Gives the partition up once nothing admitted is left: a snapshot if
    /// asked, the log thread closed (every batch acknowledged or failed),
    /// an empty core in place of the state.
    fn vacate(&mut self, v: Vacate) {
        if let Some(link) = self.journal.take() {
            let snapshot = (v.snapshot && !self.core.failed()).then(|| {
                let s = self.core.snapshot(self.started.elapsed()).0;
                move || JournalJob::Snapshot(s)
            });
            link.close(snapshot);
        }
        self.core = ShardCore::new(self.core_config);
        let _ = v.done.send(());
    }

    fn run(mut self) -> Vec<(WorldId, u64)> {
        let mut work: Vec<Work<G>> = Vec::new();
        let mut stopping = false;
        let mut vacating: Option<Vacate> = None;
        loop {
            if !stopping && vacating.is_none() {
                // Park until there is work: an idle shard costs nothing.
                let idle = Instant::now();
                match self.rx.recv() {
                    Ok(Msg::Work(w)) => work.push(w),
                    Ok(msg) => self.control(msg, &mut stopping, &mut vacating),
                    Err(_) => stopping = true,
                }
                self.metrics.idle_ns.fetch_add(idle.elapsed().as_nanos() as u64, Relaxed);
                self.metrics.wakeups.fetch_add(1, Relaxed);
            }
            let busy = Instant::now();
            let mut events: usize = work.iter().map(|w| w.events().len()).sum();
            while events < self.drain_events_max {
                match self.rx.try_recv() {
                    Ok(Msg::Work(w)) => {
                        events += w.events().len();
                        work.push(w);
                    }
                    Ok(msg) => self.control(msg, &mut stopping, &mut vacating),
                    Err(TryRecvError::Disconnected) => stopping = true,
                    Err(TryRecvError::Empty) => break,
                }
            }
            if work.is_empty() {
                if stopping || vacating.is_some() {
                    // A producer may hold a reservation it has not sent yet.
                    if self.queued.load(SeqCst) == 0 {
                        if let Some(v) = vacating.take() {
                            self.vacate(v);
                            continue;
                        }
                        break;
                    }
                    std::thread::yield_now();
                }
                continue;
            }
            self.queued.fetch_sub(work.len(), SeqCst);
            self.queued_events.fetch_sub(events, SeqCst);
            self.metrics.queue_depth_batches.fetch_sub(work.len() as u64, Relaxed);
            self.metrics.queue_depth_events.fetch_sub(events as u64, Relaxed);
            let lost = self.standing.loss();
            if self.failure.get().is_some() || lost.is_some() {
                self.core.fail();
            }

            // Stamp: one clock read per drained batch.
            let time_us = (self.clock_mode == ClockMode::Wall).then(|| self.clock.now_us());
            let apply = Instant::now();
            let Ok(applied) = self.core.apply(&mut work, time_us) else {
                // The journal failed (or, in cluster mode, the partition's
                // log was lost): nothing more can be made durable, so
                // nothing more is applied; its producers are told.
                let lost = self
                    .standing
                    .loss()
                    .unwrap_or_else(|| Lost::Failed(self.failure.get().cloned().unwrap_or_default()));
                for w in work.drain(..) {
                    w.reply.inbox.lose(lost.clone());
                }
                continue;
            };
            let applied_at = Instant::now();
            self.metrics.apply_ns.record(applied_at.duration_since(apply).as_nanos() as u64);
            for w in &work {
                let waited = applied_at.saturating_duration_since(w.reply.submitted_at).as_nanos() as u64;
                self.metrics.ingest_to_applied_ns.record_n(waited, w.events().len() as u64);
            }
            let ingested_at = work.iter().map(|w| w.reply.submitted_at).min().unwrap_or(applied_at);
            self.core.publish(&self.hub, ingested_at);
            let submissions = work.len() as u64;
            let handoff = self.core.hand_off(&mut work);
            // Counted before any outcome is handed back, so a producer that
            // sees its outcomes sees them counted.
            let m = &self.metrics;
            m.events_applied.fetch_add(applied.events as u64, Relaxed);
            m.batches_applied.fetch_add(1, Relaxed);
            m.submissions.fetch_add(submissions, Relaxed);
            m.batch_events.record(events as u64);
            if applied.retried > 0 {
                m.retries.fetch_add(applied.retried as u64, Relaxed);
            }
            for (r, n) in self.core.take_rejections() {
                m.rejections[r].fetch_add(n, Relaxed);
            }

            // Each part's outcomes and broadcasts: to its producer now, or,
            // when journaling, once the journal has made the batch durable.
            match (handoff, &self.journal) {
                (Handoff::Deliver(answers), None) => {
                    for a in answers {
                        let (inbox, part) = part_of(a, applied_at, false);
                        inbox.deliver(part);
                    }
                }
                (Handoff::Journal(batch), Some(JournalLink { jobs, .. })) => {
                    // The journal thread only stops early when the disk
                    // failed (fail-stop, `failure` set): then this batch is
                    // never acknowledged, and later work is not applied.
                    if let Err(SendError(job)) = jobs.send(journal_job(batch, applied_at)) {
                        let lost = self
                            .standing
                            .loss()
                            .unwrap_or_else(|| Lost::Failed(self.failure.get().cloned().unwrap_or_default()));
                        job.fail_producers(&lost);
                    }
                }
                _ => unreachable!("a core is journaled exactly when its shard has a journal"),
            }
            // The drain's own work, for the rate admission judges a queue's
            // wait by. A periodic snapshot (a copy of every world, once a
            // minute by default) is left out: counted, it would multiply
            // one drain's cost per event and answer BUSY to the queue
            // behind it for the next 20-30 drains, once a minute.
            self.drain_rate.record(events, busy.elapsed());
            if let Some(JournalLink { jobs, .. }) = &self.journal {
                let now = self.started.elapsed();
                if self.core.snapshot_due(now) {
                    let _ = jobs.send(JournalJob::Snapshot(self.core.snapshot(now).0));
                }
            }

            self.metrics.busy_ns.fetch_add(busy.elapsed().as_nanos() as u64, Relaxed);
        }
        if let Some(link) = self.journal.take() {
            // A final snapshot makes the next start quick. Everything
            // written, synced and acknowledged before shutdown returns.
            let s = self.core.snapshot(self.started.elapsed()).0;
            link.close(Some(move || JournalJob::Snapshot(s)));
        }
        self.core.world_hashes()
    }
}

/// A core's answer as the part its producer's inbox gets; `after_journal`:
/// its batch goes to the journal, which alone may deliver it.
fn part_of<G: Game>(a: Answer<G, Reply<G>>, applied_at: Instant, after_journal: bool) -> (Arc<Inbox<G>>, Part<G>) {
    let Reply { inbox, ticket, part, submitted_at } = a.reply;
    let part = Part {
        ticket,
        part,
        outcomes: a.outcomes,
        broadcasts: a.broadcasts,
        reused: a.reused,
        submitted_at,
        stamps: Stamps { admitted: Some(submitted_at), applied: Some(applied_at), ..Stamps::default() },
        after_journal,
    };
    (inbox, part)
}

/// The journal thread's job for a core's journal batch: its answers go
/// with it, released by the journal thread at the batch's durability
/// point. (The drain buffer stays in the core, warm for the next drain:
/// the journal gets the producers' parts.)
fn journal_job<G: Game>(batch: JournalBatch<G, Reply<G>>, applied_at: Instant) -> JournalJob<G> {
    let JournalBatch { parts, time_us, sources, waiting } = batch;
    let deliveries = waiting.into_iter().map(|a| part_of(a, applied_at, true)).collect();
    JournalJob::Batch { parts, time_us, sources, deliveries }
}
