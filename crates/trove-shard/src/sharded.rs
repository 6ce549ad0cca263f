//! The default mode: state-owning shard threads fed in batches.
//!
//! Each shard thread owns a `GameState` holding the worlds that hash to it;
//! no other thread touches that state, so applying takes no lock. Producers
//! split a batch by shard and queue each part on its shard's channel. A
//! shard parks until work arrives, drains what is queued (up to
//! `drain_events_max` events), stamps it, applies it as one batch, and hands
//! each part's outcomes back to its producer: one lock and one wake per
//! part, never per event.
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

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed, Ordering::SeqCst};
use std::sync::mpsc::{Receiver, SendError, Sender, SyncSender, TryRecvError};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use trove_core::{Game, GameState, Outcomes, Stamped, WorldId, record_fingerprints};

use crate::admission::{self, Bounds, DrainRate, Queue};
use crate::clock::{ClockMode, EngineClock};
use crate::dedup::{AppliedPart, Dedup, Retry};
use crate::engine::{EngineConfig, Inner};
use crate::error::StartError;
use crate::journaled::{JournalJob, RecoveredShard, Source, run_journal, snapshot_of};
use crate::metrics::{ShardMetrics, ShardMetricsSnapshot};
use crate::producer::{Inbox, Origin, Part, Stamps, SubmitError};
use crate::updates::{Hub, Staging};

/// The shard that owns `world` among `shards`.
#[inline]
pub fn shard_of(world: WorldId, shards: usize) -> usize {
    (((u64::from(world).wrapping_mul(0x9E37_79B9_7F4A_7C15)) >> 32) % shards as u64) as usize
}

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
    /// Sent once at shutdown, after `accepting` is cleared.
    Stop,
}

struct Work<G: Game> {
    inbox: Arc<Inbox<G>>,
    ticket: u64,
    part: u32,
    origin: Origin,
    /// The part's positions in its batch (its events' sequence offsets);
    /// `None` for a whole batch.
    positions: Option<Arc<Vec<u32>>>,
    /// Sequences of the part's first events that were retries of events
    /// already applied (filled by the shard).
    retried: Vec<u64>,
    events: Vec<Stamped<G::Event>>,
    /// The fingerprint of each of the part's events as submitted (retried
    /// ones first), computed by the submitting thread: the shard keeps
    /// them to tell a retry from a reused sequence number.
    fingerprints: Arc<[u32]>,
    /// When `submit` accepted the batch.
    submitted_at: Instant,
}

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
    thread: Mutex<Option<JoinHandle<Vec<(WorldId, u64)>>>>,
}

pub(crate) struct Sharded<G: Game> {
    shards: Vec<Shard<G>>,
}

impl<G: Game> Sharded<G> {
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
        let mut recovered = recovered.map(Vec::into_iter);
        let mut shards = Vec::with_capacity(config.shards);
        for index in 0..config.shards {
            let (tx, rx) = std::sync::mpsc::channel();
            let queued = Arc::new(AtomicUsize::new(0));
            let queued_events = Arc::new(AtomicUsize::new(0));
            let metrics = Arc::new(ShardMetrics::new(G::REJECTION_NAMES.len()));
            let core = (config.pin_cores && !cores.is_empty()).then(|| cores[index % cores.len()]);
            let (state, journal, producers) = match recovered.as_mut().and_then(Iterator::next) {
                Some(r) => {
                    let policy = config.journal.as_ref().expect("journal config").fsync;
                    let (jtx, jrx) = std::sync::mpsc::sync_channel(JOURNAL_QUEUE_JOBS);
                    let (m, f) = (metrics.clone(), failure.clone());
                    let writer = r.writer;
                    let thread = std::thread::Builder::new()
                        .name(format!("trove-journal-{index}"))
                        .spawn(move || run_journal::<G>(jrx, writer, policy, m, &f))
                        .map_err(|source| StartError::Spawn { what: format!("journal thread {index}"), source })?;
                    (r.state, Some(JournalLink { jobs: jtx, thread }), r.producers)
                }
                None => (
                    GameState::new(config.worlds_max),
                    None,
                    Dedup::new(config.dedup_window_events, config.dedup_producers_max),
                ),
            };
            let drain_rate = DrainRate::default();
            let ps_per_event = drain_rate.published();
            let run = ShardLoop::<G> {
                rx,
                queued: queued.clone(),
                queued_events: queued_events.clone(),
                drain_rate,
                metrics: metrics.clone(),
                state,
                journal,
                failure: failure.clone(),
                producers,
                snapshot_interval: config.journal.as_ref().and_then(|j| j.snapshot_interval),
                last_snapshot: Instant::now(),
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
            shards.push(Shard { tx, queued, queued_events, ps_per_event, metrics, thread: Mutex::new(Some(thread)) });
        }
        Ok(Self { shards })
    }

    pub fn submit(
        &self,
        inner: &Inner<G>,
        inbox: &Arc<Inbox<G>>,
        ticket: u64,
        origin: Origin,
        events: &mut Vec<Stamped<G::Event>>,
    ) -> Result<Vec<Vec<u32>>, SubmitError> {
        if inner.failure.get().is_some() {
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
        let c = &inner.config;
        let bounds =
            Bounds { batches_max: c.queue_batches_max, events_max: c.queue_events_max, wait_max: c.queue_wait_max };
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
            let batches_before = shard.queued.fetch_add(1, SeqCst);
            let events_before = shard.queued_events.fetch_add(count as usize, SeqCst);
            // A queue takes a batch only while it stays within its bounds
            // (`admission`), so what is admitted waits behind a bounded
            // amount of work instead of growing the tail.
            let queue = Queue { batches_before, events_before, count: count as usize };
            if !admission::admits(queue, bounds, shard.ps_per_event.load(Relaxed)) {
                release(s + 1);
                return Err(SubmitError::Busy);
            }
        }
        // Checked after reserving: shutdown clears `accepting` and then waits
        // for `queued` to drain, so a reservation that sees `accepting` set
        // is always drained (see `ShardLoop::run`).
        if !inner.accepting.load(SeqCst) {
            release(n);
            return Err(SubmitError::ShuttingDown);
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
        for (part, (s, events)) in parts.into_iter().enumerate() {
            let shard = &self.shards[s];
            shard.metrics.queue_depth_batches.fetch_add(1, Relaxed);
            shard.metrics.queue_depth_events.fetch_add(events.len() as u64, Relaxed);
            let positions = split.then(|| Arc::new(layout[part].clone()));
            // Here, on the producer's thread, not on the shard's.
            let fingerprints = record_fingerprints(events.iter().map(|e| &e.event));
            let work = Work {
                submitted_at,
                inbox: inbox.clone(),
                ticket,
                part: part as u32,
                origin,
                positions,
                retried: Vec::new(),
                events,
                fingerprints,
            };
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

impl<G: Game> Work<G> {
    /// The producer sequence of the part's `k`-th (remaining) event.
    #[inline]
    fn seq(&self, k: usize) -> u64 {
        self.origin.first_seq + self.positions.as_ref().map_or(k as u64, |p| u64::from(p[k]))
    }
}

/// A shard's side of its journal thread.
struct JournalLink<G: Game> {
    /// Applied batches go there, and their acknowledgements with them.
    jobs: SyncSender<JournalJob<G>>,
    thread: JoinHandle<()>,
}

struct ShardLoop<G: Game> {
    rx: Receiver<Msg<G>>,
    queued: Arc<AtomicUsize>,
    queued_events: Arc<AtomicUsize>,
    drain_rate: DrainRate,
    metrics: Arc<ShardMetrics>,
    state: GameState<G>,
    /// The journal thread, if the engine journals.
    journal: Option<JournalLink<G>>,
    /// The engine's failure (see `Inner::failure`): once set, work is
    /// answered with it, not applied.
    failure: Arc<OnceLock<String>>,
    /// Every producer's last applied sequence and recent outcomes: retries
    /// are answered, never applied twice.
    producers: Dedup<G::Outcome>,
    snapshot_interval: Option<Duration>,
    last_snapshot: Instant,
    drain_events_max: usize,
    clock_mode: ClockMode,
    clock: EngineClock,
    /// Subscribers get each applied batch's updates before it is durable.
    hub: Arc<Hub<G>>,
}

impl<G: Game> ShardLoop<G> {
    fn run(mut self) -> Vec<(WorldId, u64)> {
        let mut work: Vec<Work<G>> = Vec::new();
        let mut batch: Vec<Stamped<G::Event>> = Vec::new();
        let mut out = Outcomes::default();
        let mut rejections = vec![0u64; G::REJECTION_NAMES.len()];
        let mut stopping = false;
        let mut time_us = 0u64;
        let mut staging = Staging::default();
        loop {
            if !stopping {
                // Park until there is work: an idle shard costs nothing.
                let idle = Instant::now();
                match self.rx.recv() {
                    Ok(Msg::Work(w)) => work.push(w),
                    Ok(Msg::Query(q)) => q(&self.state),
                    Ok(Msg::Stop) | Err(_) => stopping = true,
                }
                self.metrics.idle_ns.fetch_add(idle.elapsed().as_nanos() as u64, Relaxed);
                self.metrics.wakeups.fetch_add(1, Relaxed);
            }
            let busy = Instant::now();
            let mut events: usize = work.iter().map(|w| w.events.len()).sum();
            while events < self.drain_events_max {
                match self.rx.try_recv() {
                    Ok(Msg::Work(w)) => {
                        events += w.events.len();
                        work.push(w);
                    }
                    // Between batches: it sees everything applied so far.
                    Ok(Msg::Query(q)) => q(&self.state),
                    Ok(Msg::Stop) | Err(TryRecvError::Disconnected) => stopping = true,
                    Err(TryRecvError::Empty) => break,
                }
            }
            if work.is_empty() {
                if stopping {
                    // A producer may hold a reservation it has not sent yet.
                    if self.queued.load(SeqCst) == 0 {
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
            if self.failure.get().is_some() {
                // The journal failed: nothing more can be made durable, so
                // nothing more is applied; its producers are told.
                for w in work.drain(..) {
                    w.inbox.fail();
                }
                continue;
            }

            // Retries: a producer's events reach this shard in increasing
            // sequence order, so the retried events of a part are a prefix
            // of it. Take them out; they are answered after the apply.
            self.producers.next_drain();
            for w in &mut work {
                let log = self.producers.log(w.origin.producer);
                let retried = (0..w.events.len()).take_while(|&k| w.seq(k) <= log.last_seq).count();
                if retried > 0 {
                    w.retried = (0..retried).map(|k| w.seq(k)).collect();
                    w.events.drain(..retried);
                    match &mut w.positions {
                        Some(p) => w.positions = Some(Arc::new(p[retried..].to_vec())),
                        None => w.origin.first_seq += retried as u64,
                    }
                }
                if let Some(k) = w.events.len().checked_sub(1) {
                    log.last_seq = log.last_seq.max(w.seq(k));
                }
            }

            // Stamp: one clock read per drained batch.
            if self.clock_mode == ClockMode::Wall {
                time_us = time_us.max(self.clock.now_us());
            }
            for w in &work {
                match self.clock_mode {
                    ClockMode::Wall => batch.extend(w.events.iter().map(|e| Stamped { time_us, event: e.event })),
                    ClockMode::Supplied => batch.extend_from_slice(&w.events),
                }
            }

            let applied = batch.len() as u64;
            let apply = Instant::now();
            self.state.apply(&batch, &mut out);
            let applied_at = Instant::now();
            self.metrics.apply_ns.record(applied_at.duration_since(apply).as_nanos() as u64);
            for w in &work {
                let waited = applied_at.saturating_duration_since(w.submitted_at).as_nanos() as u64;
                self.metrics.ingest_to_applied_ns.record_n(waited, w.events.len() as u64);
            }
            let ingested_at = work.iter().map(|w| w.submitted_at).min().unwrap_or(applied_at);
            self.hub.publish(&batch, &out, &mut staging, ingested_at);
            for o in &out.direct {
                if let Some(r) = G::rejection(o) {
                    rejections[r] += 1;
                }
            }
            // Counted before any outcome is handed back, so a producer that
            // sees its outcomes sees them counted.
            let m = &self.metrics;
            m.events_applied.fetch_add(applied, Relaxed);
            m.batches_applied.fetch_add(1, Relaxed);
            m.submissions.fetch_add(work.len() as u64, Relaxed);
            m.batch_events.record(events as u64);
            for (counter, n) in m.rejections.iter().zip(&mut rejections) {
                if *n > 0 {
                    counter.fetch_add(std::mem::take(n), Relaxed);
                }
            }

            // Each part's outcomes and broadcasts: to its producer now, or,
            // when journaling, once the journal has made the batch durable.
            let mut offset = 0;
            let mut next_broadcast = 0;
            let mut deliveries = Vec::with_capacity(if self.journal.is_some() { work.len() } else { 0 });
            let mut sources = Vec::with_capacity(deliveries.capacity());
            let mut parts = Vec::with_capacity(deliveries.capacity());
            for w in work.drain(..) {
                let end = offset + w.events.len();
                let retried = w.retried.len();
                let mut reused = Vec::new();
                let outcomes: Arc<[G::Outcome]> = if retried == 0 {
                    Arc::from(&out.direct[offset..end])
                } else {
                    let log = self.producers.log(w.origin.producer);
                    let mut v: Vec<G::Outcome> = Vec::with_capacity(retried + w.events.len());
                    for (&seq, &fingerprint) in w.retried.iter().zip(w.fingerprints.iter()) {
                        v.push(match log.retry(seq, fingerprint) {
                            Retry::Original(o) => o,
                            Retry::Forgotten => G::duplicate_outcome(),
                            // Never delivered: the batch is refused.
                            Retry::Reused => {
                                reused.push(seq);
                                G::duplicate_outcome()
                            }
                        });
                    }
                    v.extend_from_slice(&out.direct[offset..end]);
                    self.metrics.retries.fetch_add(retried as u64, Relaxed);
                    v.into()
                };
                let applied = AppliedPart {
                    first_seq: w.origin.first_seq,
                    positions: w.positions.clone(),
                    outcomes: outcomes.clone(),
                    fingerprints: Some(w.fingerprints.clone()),
                    skip: retried,
                };
                self.producers.record(w.origin.producer, applied);
                let mut broadcasts = Vec::new();
                while let Some(b) = out.broadcasts.get(next_broadcast) {
                    if b.event_index as usize >= end {
                        break;
                    }
                    let mut b = b.clone();
                    b.event_index = b.event_index - offset as u32 + retried as u32;
                    broadcasts.push(b);
                    next_broadcast += 1;
                }
                let stamps = Stamps { admitted: Some(w.submitted_at), applied: Some(applied_at), ..Stamps::default() };
                let part = Part {
                    ticket: w.ticket,
                    part: w.part,
                    outcomes,
                    broadcasts,
                    reused,
                    submitted_at: w.submitted_at,
                    stamps,
                };
                if self.journal.is_some() && !w.events.is_empty() {
                    sources.push(Source { origin: w.origin, positions: w.positions, len: w.events.len() });
                    parts.push(w.events);
                    deliveries.push((w.inbox, part));
                } else if self.journal.is_some() {
                    // Only retries: nothing new to make durable, but earlier
                    // parts of this batch may still be on their way; keep
                    // the acknowledgement in order behind them.
                    deliveries.push((w.inbox, part));
                } else {
                    w.inbox.deliver(part);
                }
                offset = end;
            }
            out.clear();
            // The drain buffer stays here, warm for the next drain: the
            // journal gets the producers' parts (`JournalJob::Batch`). A
            // buffer that went to the journal thread and came back was cold:
            // that cost the shard 7-11 ns per event (docs/benchmarks.md).
            batch.clear();
            if let Some(JournalLink { jobs: journal, .. }) = &self.journal {
                let time_us = (self.clock_mode == ClockMode::Wall).then_some(time_us);
                // The journal thread only stops early when the disk failed
                // (fail-stop, `failure` set): then this batch is never
                // acknowledged, and later work is not applied.
                if let Err(SendError(job)) = journal.send(JournalJob::Batch { parts, time_us, sources, deliveries }) {
                    job.fail_producers();
                }
            }
            // The drain's own work, for the rate admission judges a queue's
            // wait by. A periodic snapshot (a copy of every world, once a
            // minute by default) is left out: counted, it would multiply
            // one drain's cost per event and answer BUSY to the queue
            // behind it for the next 20-30 drains, once a minute.
            self.drain_rate.record(events, busy.elapsed());
            if let Some(JournalLink { jobs: journal, .. }) = &self.journal
                && self.snapshot_interval.is_some_and(|every| self.last_snapshot.elapsed() >= every)
            {
                let _ = journal.send(JournalJob::Snapshot(snapshot_of(&self.state, &self.producers)));
                self.last_snapshot = Instant::now();
            }

            self.metrics.busy_ns.fetch_add(busy.elapsed().as_nanos() as u64, Relaxed);
        }
        if let Some(JournalLink { jobs: journal, thread, .. }) = self.journal.take() {
            // A final snapshot makes the next start quick.
            let _ = journal.send(JournalJob::Snapshot(snapshot_of(&self.state, &self.producers)));
            drop(journal);
            // Everything written, synced and acknowledged before shutdown
            // returns.
            thread.join().expect("journal thread panicked");
        }
        self.state.world_hashes()
    }
}
