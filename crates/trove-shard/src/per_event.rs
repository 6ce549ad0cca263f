//! The baseline modes: what the engine is measured against.
//!
//! Written the way a capable engineer writes the per-event async design,
//! so the comparison is honest:
//!
//! - every event becomes a tokio task on a multi-thread runtime;
//! - a world's state sits behind an async mutex (one `GameState` per
//!   world, so events of different worlds never contend);
//! - events of one world run in submission order: each task waits for its
//!   predecessor in that world through a oneshot chain (the mutex alone
//!   does not order tasks that different workers poll);
//! - `task-per-event` applies the event inside the task, holding the lock;
//!   `spawn-blocking-per-event` hands the apply to `spawn_blocking` and
//!   awaits it;
//! - then the task hands its outcome to the writer task over a bounded
//!   channel and awaits its acknowledgement (where the journal writer sits
//!   in this design), and records the outcome in its batch; the last event
//!   of a batch delivers the batch to its producer.
//!
//! Backpressure: at most `in_flight_events_max` events in flight; beyond
//! that `submit` answers `Busy`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};
use trove_core::{Addressed, Game, GameState, Outcomes, Stamped, WorldId};

use crate::clock::{ClockMode, EngineClock};
use crate::engine::{EngineConfig, Mode};
use crate::error::StartError;
use crate::metrics::{ShardMetrics, ShardMetricsSnapshot};
use crate::producer::{Inbox, Origin, Part, Stamps, SubmitError};
use crate::updates::{Hub, Staging};

const STRIPES: usize = 64;
const WRITER_QUEUE: usize = 4096;

struct WorldCell<G: Game> {
    state: tokio::sync::Mutex<GameState<G>>,
    /// Completes when the world's latest submitted event has applied.
    tail: Mutex<Option<oneshot::Receiver<()>>>,
}

impl<G: Game> WorldCell<G> {
    fn new(worlds_max: usize) -> Arc<Self> {
        Arc::new(Self { state: tokio::sync::Mutex::new(GameState::new(worlds_max)), tail: Mutex::new(None) })
    }
}

/// World cells by id, in lock stripes so producers rarely contend.
struct WorldTable<G: Game> {
    stripes: Vec<Mutex<HashMap<WorldId, Arc<WorldCell<G>>>>>,
    cells: AtomicUsize,
    worlds_max: usize,
    /// Where events for new worlds go once the table is full: a state that
    /// holds no world, so the game answers as it would on a full shard.
    overflow: Arc<WorldCell<G>>,
}

impl<G: Game> WorldTable<G> {
    fn cell(&self, world: WorldId) -> Arc<WorldCell<G>> {
        let mut stripe = self.stripes[world as usize % STRIPES].lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = stripe.get(&world) {
            return c.clone();
        }
        if self.cells.fetch_add(1, SeqCst) >= self.worlds_max {
            self.cells.fetch_sub(1, SeqCst);
            return self.overflow.clone();
        }
        stripe.entry(world).or_insert_with(|| WorldCell::new(1)).clone()
    }
}

struct WriterMsg {
    ack: oneshot::Sender<()>,
}

/// One submitted batch, filled in by its events' tasks.
struct BatchSlot<G: Game> {
    ticket: u64,
    submitted_at: Instant,
    inbox: Arc<Inbox<G>>,
    done: Mutex<(Vec<Option<G::Outcome>>, Vec<Addressed<G::Broadcast>>)>,
    remaining: AtomicUsize,
}

impl<G: Game> BatchSlot<G> {
    fn complete(&self, index: usize, outcome: G::Outcome, broadcasts: Vec<Addressed<G::Broadcast>>) {
        let finished = {
            let mut done = self.done.lock().unwrap_or_else(|e| e.into_inner());
            done.0[index] = Some(outcome);
            done.1.extend(broadcasts.into_iter().map(|mut b| {
                b.event_index = index as u32;
                b
            }));
            if self.remaining.fetch_sub(1, SeqCst) == 1 { Some(std::mem::take(&mut *done)) } else { None }
        };
        if let Some((outcomes, mut broadcasts)) = finished {
            broadcasts.sort_by_key(|b| b.event_index);
            let outcomes: Vec<G::Outcome> = outcomes.into_iter().map(|o| o.expect("every event completed")).collect();
            let outcomes = outcomes.into();
            self.inbox.deliver(Part {
                ticket: self.ticket,
                part: 0,
                outcomes,
                broadcasts,
                // The per-event modes keep no dedup window.
                reused: Vec::new(),
                submitted_at: self.submitted_at,
                stamps: Stamps {
                    admitted: Some(self.submitted_at),
                    applied: Some(Instant::now()),
                    ..Stamps::default()
                },
                after_journal: false,
            });
        }
    }
}

pub(crate) struct PerEvent<G: Game> {
    runtime: Mutex<Option<tokio::runtime::Runtime>>,
    handle: tokio::runtime::Handle,
    table: Arc<WorldTable<G>>,
    in_flight: Arc<AtomicUsize>,
    writer: mpsc::Sender<WriterMsg>,
    metrics: Arc<ShardMetrics>,
    blocking: bool,
    hub: Arc<Hub<G>>,
    /// `EngineConfig::in_flight_events_max`: admission's bound.
    in_flight_events_max: usize,
    clock_mode: ClockMode,
}

impl<G: Game> PerEvent<G> {
    pub fn handle(&self) -> &tokio::runtime::Handle {
        &self.handle
    }

    pub fn start(config: &EngineConfig, hub: Arc<Hub<G>>) -> Result<Self, StartError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(config.shards)
            .thread_name("trove-worker")
            .build()
            .map_err(|source| StartError::Spawn { what: "the tokio runtime".into(), source })?;
        let handle = runtime.handle().clone();
        let (writer, mut rx) = mpsc::channel::<WriterMsg>(WRITER_QUEUE);
        handle.spawn(async move {
            while let Some(m) = rx.recv().await {
                let _ = m.ack.send(());
            }
        });
        Ok(Self {
            runtime: Mutex::new(Some(runtime)),
            handle,
            table: Arc::new(WorldTable {
                stripes: (0..STRIPES).map(|_| Mutex::new(HashMap::new())).collect(),
                cells: AtomicUsize::new(0),
                worlds_max: config.worlds_max,
                overflow: WorldCell::new(0),
            }),
            in_flight: Arc::new(AtomicUsize::new(0)),
            writer,
            metrics: Arc::new(ShardMetrics::new(G::REJECTION_NAMES.len())),
            blocking: config.mode == Mode::SpawnBlockingPerEvent,
            hub,
            in_flight_events_max: config.in_flight_events_max,
            clock_mode: config.clock,
        })
    }

    /// Admits a batch: `accepting` is the engine's (cleared at shutdown),
    /// `clock` its engine time.
    pub fn submit(
        &self,
        accepting: &AtomicBool,
        clock: EngineClock,
        inbox: &Arc<Inbox<G>>,
        ticket: u64,
        _origin: Origin,
        events: &mut Vec<Stamped<G::Event>>,
    ) -> Result<Vec<Vec<u32>>, SubmitError> {
        let n = events.len();
        if self.in_flight.fetch_add(n, SeqCst) + n > self.in_flight_events_max {
            self.in_flight.fetch_sub(n, SeqCst);
            return Err(SubmitError::Busy);
        }
        if !accepting.load(SeqCst) {
            self.in_flight.fetch_sub(n, SeqCst);
            return Err(SubmitError::ShuttingDown);
        }
        let slot = Arc::new(BatchSlot::<G> {
            ticket,
            submitted_at: Instant::now(),
            inbox: inbox.clone(),
            done: Mutex::new((vec![None; n], Vec::new())),
            remaining: AtomicUsize::new(n),
        });
        let clock = (self.clock_mode == ClockMode::Wall).then_some(clock);
        for (index, stamped) in std::mem::take(events).into_iter().enumerate() {
            let cell = self.table.cell(G::world_of(&stamped.event));
            let (next, mine) = oneshot::channel();
            let prev = cell.tail.lock().unwrap_or_else(|e| e.into_inner()).replace(mine);
            let task = EventTask {
                cell,
                prev,
                next,
                stamped,
                clock,
                slot: slot.clone(),
                index,
                writer: self.writer.clone(),
                metrics: self.metrics.clone(),
                in_flight: self.in_flight.clone(),
                hub: self.hub.clone(),
            };
            if self.blocking {
                self.handle.spawn(task.run_blocking());
            } else {
                self.handle.spawn(task.run_inline());
            }
        }
        Ok(vec![Vec::new()])
    }

    /// Runs `q` on every world cell's state (each holds one world), on the
    /// runtime, each under its world's lock.
    pub fn query_all(&self, q: Arc<dyn Fn(&GameState<G>) + Send + Sync>) {
        let cells: Vec<Arc<WorldCell<G>>> = self
            .table
            .stripes
            .iter()
            .flat_map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).values().cloned().collect::<Vec<_>>())
            .collect();
        self.handle.spawn(async move {
            for cell in cells {
                let state = cell.state.lock().await;
                q(&state);
            }
        });
    }

    /// Runs `q` on the state of `world`'s cell, if it has one.
    pub fn query_world(&self, world: WorldId, q: Box<dyn FnOnce(Option<&GameState<G>>) + Send>) {
        let cell =
            self.table.stripes[world as usize % STRIPES].lock().unwrap_or_else(|e| e.into_inner()).get(&world).cloned();
        match cell {
            Some(cell) => {
                self.handle.spawn(async move {
                    let state = cell.state.lock().await;
                    q(Some(&state));
                });
            }
            None => q(None),
        }
    }

    pub fn metrics(&self) -> Vec<ShardMetricsSnapshot> {
        let mut m = self.metrics.snapshot(G::REJECTION_NAMES);
        let in_flight = self.in_flight.load(Relaxed) as u64;
        m.queue_depth_events = in_flight;
        vec![m]
    }

    /// Waits for every accepted event, then stops the runtime.
    pub fn shutdown(&self) -> Vec<(WorldId, u64)> {
        while self.in_flight.load(SeqCst) > 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
        let mut hashes = Vec::new();
        for stripe in &self.table.stripes {
            for cell in stripe.lock().unwrap_or_else(|e| e.into_inner()).values() {
                let state = cell.state.try_lock().expect("no event in flight");
                hashes.extend(state.world_hashes());
            }
        }
        if let Some(rt) = self.runtime.lock().unwrap_or_else(|e| e.into_inner()).take() {
            rt.shutdown_timeout(Duration::from_secs(5));
        }
        hashes.sort_unstable_by_key(|&(id, _)| id);
        hashes
    }
}

struct EventTask<G: Game> {
    cell: Arc<WorldCell<G>>,
    prev: Option<oneshot::Receiver<()>>,
    next: oneshot::Sender<()>,
    stamped: Stamped<G::Event>,
    /// `Some` in `ClockMode::Wall`: stamp when applied.
    clock: Option<EngineClock>,
    slot: Arc<BatchSlot<G>>,
    index: usize,
    writer: mpsc::Sender<WriterMsg>,
    metrics: Arc<ShardMetrics>,
    in_flight: Arc<AtomicUsize>,
    hub: Arc<Hub<G>>,
}

type Applied<G> = (<G as Game>::Outcome, Vec<Addressed<<G as Game>::Broadcast>>);

fn apply_one<G: Game>(
    state: &mut GameState<G>,
    mut stamped: Stamped<G::Event>,
    clock: Option<EngineClock>,
    metrics: &ShardMetrics,
    hub: &Hub<G>,
) -> Applied<G> {
    if let Some(clock) = clock {
        stamped.time_us = clock.now_us().max(state.time_us());
    }
    let started = Instant::now();
    let mut out = Outcomes::with_capacity(1);
    state.apply(std::slice::from_ref(&stamped), &mut out);
    metrics.apply_ns.record(started.elapsed().as_nanos() as u64);
    // Under the world's lock, so the world's updates stay in order.
    hub.publish(std::slice::from_ref(&stamped), &out, &mut Staging::default(), started);
    (out.direct[0], out.broadcasts)
}

impl<G: Game> EventTask<G> {
    async fn run_inline(mut self) {
        if let Some(prev) = self.prev.take() {
            let _ = prev.await;
        }
        let applied = {
            let mut state = self.cell.state.lock().await;
            apply_one::<G>(&mut state, self.stamped, self.clock, &self.metrics, &self.hub)
        };
        self.finish(applied).await;
    }

    async fn run_blocking(mut self) {
        if let Some(prev) = self.prev.take() {
            let _ = prev.await;
        }
        let (cell, stamped, clock, metrics, hub) =
            (self.cell.clone(), self.stamped, self.clock, self.metrics.clone(), self.hub.clone());
        let applied = tokio::task::spawn_blocking(move || {
            let mut state = cell.state.blocking_lock();
            apply_one::<G>(&mut state, stamped, clock, &metrics, &hub)
        })
        .await
        .expect("apply never panics");
        self.finish(applied).await;
    }

    async fn finish(self, (outcome, broadcasts): Applied<G>) {
        // The world's next event may go.
        let _ = self.next.send(());
        let (ack, acked) = oneshot::channel();
        if self.writer.send(WriterMsg { ack }).await.is_ok() {
            let _ = acked.await;
        }
        let m = &self.metrics;
        m.events_applied.fetch_add(1, Relaxed);
        m.batches_applied.fetch_add(1, Relaxed);
        m.batch_events.record(1);
        if let Some(r) = G::rejection(&outcome) {
            m.rejections[r].fetch_add(1, Relaxed);
        }
        self.slot.complete(self.index, outcome, broadcasts);
        self.in_flight.fetch_sub(1, SeqCst);
    }
}
