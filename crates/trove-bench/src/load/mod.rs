//! `trove bench`: an open-loop load generator that finds the throughput
//! cliff and compares execution modes.
//!
//! Open loop: events arrive on a schedule (constant or Poisson,
//! `arrivals.rs`) whatever the server does; when the server falls behind,
//! events wait in the generator and their latency counts from when they
//! were meant to be sent (coordinated omission corrected). Latency is
//! measured to the acknowledgement and, for a sample of hunts, to the
//! event's update reaching a subscriber.
//!
//! Each producer connection owns a partition of the hunts (as
//! `Generator::partition` cuts them) and sends 1/connections of the rate.
//! A step holds one offered rate for a while; a ramp climbs steps (coarse
//! x2 until one fails, then +10% from the last that passed) to the knee:
//! the highest step whose achieved rate kept up with the offered rate and
//! whose p99 stayed within the SLO. A ramp first warms up at its first
//! rate (not counted), then runs each step as `trials` trials and judges
//! it on their medians (`judge`), so one stall of the machine in one
//! trial cannot decide a step. A probe thread (`probe.rs`) records the
//! machine's stalls, and each failing trial's tail is put down to the
//! machine, the generator's pacer, the CPUs or the pipeline. Around each step the server's /metrics
//! is scraped (`scrape.rs`), and `analyse` names the server metric that
//! crossed its saturation threshold first on the way to the knee.
//!
//! Unless `--target` names a running server, each mode gets a fresh
//! `trove serve` child on loopback (`server.rs`).
//!
//! # Layout
//!
//! - `model.rs`: the figures (JSON as-is).
//! - `arrivals.rs`: the arrival schedule.
//! - `scrape.rs`: /metrics over HTTP, per-step server figures.
//! - `probe.rs`: the machine-stall probe and the tail's attribution.
//! - `fanout.rs`: the subscribers (`--subscribers`, `--watch`) and the
//!   pacer's log of intended send times they are timed against.
//! - `server.rs`: the child server.
//! - `report.rs`: `--report DIR`, Markdown and SVG.
//! - here: connections, steps, ramps, the knee.

pub mod arrivals;
pub mod fanout;
pub mod model;
pub mod probe;
pub mod report;
pub mod scrape;
pub mod server;

use std::collections::VecDeque;
use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex, MutexGuard, mpsc};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use trove_client::{ClientConfig, ClientError, Producer, SendError};
use trove_hunt::{HuntEvent, TreasureHunt};
use trove_workload::{Generator, WorkloadSpec};

use self::arrivals::{Arrivals, SLOT_NS, Schedule};
use self::fanout::{Fleet, FleetArgs, HuntChoice, SendLog};
use self::model::{
    Comparison, FirstMoved, LatencyUs, MachineStalls, ModeRun, OverloadReport, Ratio, StepReport, TrialReport,
    WarmupReport,
};
use self::probe::{Probe, TailFigures};
use self::server::{ChildServer, ChildSpec};

/// Events per latency record: a run of consecutive events of one slot
/// shares the intended time of its middle.
const CHUNK_EVENTS: u32 = 64;

/// Achieved must reach this share of offered for a step to pass.
const KEEP_UP: f64 = 0.95;

/// Under `--overload`, goodput must stay at this share of the knee's.
const GOODPUT_KEPT_MIN: f64 = 0.95;

/// A ramp that finds no passing step comes down to this rate at the lowest.
const RAMP_FLOOR: f64 = 1000.0;

/// Latency histograms, in microseconds.
const LATENCY_US_MAX: u64 = 600_000_000;

/// Everything a run is given.
#[derive(Clone, Debug)]
pub struct LoadArgs {
    pub workload: WorkloadSpec,
    pub arrivals: Arrivals,
    /// The single run's offered rate (without `ramp`).
    pub rate: f64,
    /// The single run's length.
    pub duration: Duration,
    pub ramp: Option<RampArgs>,
    /// Modes to start fresh servers for; ignored with `target`.
    pub modes: Vec<String>,
    pub target: Option<SocketAddr>,
    /// The target's control plane, for /metrics.
    pub target_metrics: Option<SocketAddr>,
    pub server: ServerArgs,
    pub connections: u32,
    pub batch_events: u32,
    pub window_batches: u32,
    /// The SDK's `queue_delay_target` for every connection.
    pub queue_delay_target: Option<Duration>,
    /// Hunts whose updates a subscriber each measures (0: none); ignored
    /// with `fanout`.
    pub watch_hunts: u32,
    /// The subscriber fleet of `--subscribers N`.
    pub fanout: Option<FleetArgs>,
    /// With `target` and WebSocket subscribers: the target's WebSocket listener.
    pub target_ws: Option<SocketAddr>,
    pub slo_p99: Duration,
    pub client_workers: usize,
    /// How often the pacer wakes to send what has arrived.
    pub tick: Duration,
    /// How long a batch may stay open for more events.
    pub linger: Duration,
    /// How long a step's backlog and unacknowledged events may take to
    /// clear after the step; past it the mode's run ends there.
    pub drain_timeout: Duration,
    /// Live progress on stderr (when it is a terminal).
    pub progress: bool,
    /// After the knee (the ramp's, or the one given), a step at this many
    /// times it.
    pub overload: Option<OverloadArgs>,
}

#[derive(Clone, Debug)]
pub struct OverloadArgs {
    /// The overload step offers this times the knee (above 1).
    pub factor: f64,
    /// The knee's goodput, events per second; `None`: the ramp finds it.
    pub knee: Option<f64>,
}

#[derive(Clone, Debug)]
pub struct RampArgs {
    pub from: f64,
    /// Fine steps: rate x factor.
    pub factor: f64,
    /// Coarse steps until the first failure: rate x coarse.
    pub coarse: f64,
    pub max: f64,
    /// Each trial of a step.
    pub step: Duration,
    pub steps_max: u32,
    /// Trials per step (odd: the median is one of them).
    pub trials: u32,
    /// Held at `from` before the first step, not counted; zero: none.
    pub warmup: Duration,
}

/// Most trials per step.
pub const TRIALS_MAX: u32 = 15;

/// The fresh servers' settings.
#[derive(Clone, Debug)]
pub struct ServerArgs {
    pub exe: PathBuf,
    pub shards: Option<u32>,
    /// `None`: in memory.
    pub fsync: Option<String>,
    pub io_workers: u32,
    /// `[limits] subscriber_push_interval_ms`, when given.
    pub subscriber_push_interval_ms: Option<u64>,
}

/// What a run produces: one mode's runs, or several side by side.
#[derive(Debug)]
pub struct Outcome {
    pub runs: Vec<ModeRun>,
    pub comparison: Option<Comparison>,
}

/// Runs every mode (or the target) and compares them.
pub fn run(args: &LoadArgs) -> Result<Outcome, String> {
    args.workload.validate().map_err(|e| e.to_string())?;
    if args.connections == 0 || args.connections > args.workload.hunts {
        return Err(format!("--connections must be in 1..={} (each owns some hunts)", args.workload.hunts));
    }
    if !(args.rate.is_finite() && args.rate > 0.0) {
        return Err("--rate must be a positive number of events per second".into());
    }
    let mut runs = Vec::new();
    if let Some(target) = args.target {
        runs.push(run_mode(args, "target", target, args.target_ws, args.target_metrics)?);
    } else {
        for (i, mode) in args.modes.iter().enumerate() {
            let spec = ChildSpec {
                exe: args.server.exe.clone(),
                mode: mode.clone(),
                shards: args.server.shards,
                fsync: args.server.fsync.clone(),
                data: std::env::temp_dir().join(format!("trove-bench-{}-{i}", std::process::id())),
                io_workers: args.server.io_workers,
                ws: args.fanout.as_ref().is_some_and(|f| f.ws),
                connections_max: child_connections_max(args),
                subscriber_push_interval_ms: args.server.subscriber_push_interval_ms,
            };
            let child = ChildServer::start(&spec)?;
            say(&format!("{mode}: server on {} (metrics http://{}/metrics)", child.tcp, child.control));
            let run = run_mode(args, mode, child.tcp, child.ws, Some(child.control));
            child.stop(Duration::from_secs(10));
            runs.push(run?);
        }
    }
    let comparison = (runs.len() > 1).then(|| compare(&runs, args));
    Ok(Outcome { runs, comparison })
}

fn compare(runs: &[ModeRun], args: &LoadArgs) -> Comparison {
    let first = &runs[0];
    Comparison {
        workload: args.workload.name.clone(),
        slo_p99_ms: args.slo_p99.as_secs_f64() * 1e3,
        runs: runs.to_vec(),
        ratios: runs[1..]
            .iter()
            .map(|r| Ratio {
                modes: format!("{} / {}", first.mode, r.mode),
                knee_ratio: match (first.knee_events_per_s, r.knee_events_per_s) {
                    (Some(a), Some(b)) if b > 0.0 => Some(a / b),
                    _ => None,
                },
            })
            .collect(),
    }
}

fn say(line: &str) {
    eprintln!("trove bench: {line}");
}

/// Nanoseconds since the run's epoch.
#[derive(Clone, Copy, Debug)]
struct Clock {
    epoch: Instant,
}

impl Clock {
    fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    fn at(&self, ns: u64) -> Instant {
        self.epoch + Duration::from_nanos(ns)
    }
}

/// A step as the connections are told it.
#[derive(Clone, Copy, Debug)]
struct StepPlan {
    index: u32,
    /// This connection's share.
    rate: f64,
    start_ns: u64,
    end_ns: u64,
}

/// A connection's account of a step.
#[derive(Debug, Default)]
struct StepDone {
    offered: u64,
    sent_in_window: u64,
    /// The backlog and every acknowledgement cleared within the drain timeout.
    drained: bool,
    error: Option<String>,
    /// The pacer's latest wake past a tick, and how many times it woke
    /// `STALL_NS` or more late (see `StepReport::pacer_stall_max_us`).
    stall_max_ns: u64,
    stalls: u64,
}

/// A pacer this late for a tick counts as stalled: beyond the run-queue
/// waits of a busy 2-core machine (at most 2.7 ms for any thread of client
/// or server over 2 s at 5.6 M/s, by `perf sched`; 35-70 us on average).
const STALL_NS: u64 = 5_000_000;

/// Consecutive events sharing an intended time, waiting for their ack.
#[derive(Clone, Copy, Debug)]
struct Chunk {
    start_seq: u64,
    end_seq: u64,
    intended_ns: u64,
    /// When the pacer took the chunk to hand it to the SDK.
    handed_ns: u64,
    step: u32,
}

/// Two significant figures: 1% resolution, a few tens of KiB per histogram.
fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_US_MAX, 2).expect("histogram bounds")
}

/// Latency histograms of the steps not yet collected (the current one;
/// late entries of an earlier one), by step.
#[derive(Debug, Default)]
struct Latencies {
    steps: Vec<(u32, Histogram<u64>, u64)>,
}

impl Latencies {
    fn record(&mut self, step: u32, us: u64, n: u64) {
        let i = match self.steps.iter().position(|s| s.0 == step) {
            Some(i) => i,
            None => {
                self.steps.push((step, histogram(), 0));
                self.steps.len() - 1
            }
        };
        let (_, h, count) = &mut self.steps[i];
        h.saturating_record_n(us.max(1), n);
        *count += n;
    }

    fn merge_into(&self, step: u32, into: &mut Histogram<u64>) -> u64 {
        match self.steps.iter().find(|s| s.0 == step) {
            Some((_, h, n)) => {
                into.add(h).ok();
                *n
            }
            None => 0,
        }
    }

    /// Forgets `step` and every step before it.
    fn collected(&mut self, step: u32) {
        self.steps.retain(|s| s.0 > step);
    }
}

/// Shared by a connection's sender and its ack reader.
#[derive(Debug, Default)]
struct ConnShared {
    inner: Mutex<ConnInner>,
}

#[derive(Debug, Default)]
struct ConnInner {
    chunks: VecDeque<Chunk>,
    latencies: Latencies,
    /// Intended time to handed to the SDK, per chunk.
    send_lag: Latencies,
    /// Handed to the SDK to acknowledged, per chunk.
    admitted: Latencies,
    /// The acknowledgement stream ended in an error.
    failed: Option<String>,
    /// Events of batches the server refused, by step (not in `latencies`).
    refused: Vec<(u32, u64)>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The producer side of one connection, driven by the pacer thread.
struct Conn {
    producer: Producer<TreasureHunt>,
    generator: Generator,
    shared: Arc<ConnShared>,
    seed: u64,
    /// The current step's arrivals and what is left of them.
    schedule: Option<Schedule>,
    next_slot_ns: u64,
    backlog: VecDeque<Slot>,
    /// The chunk being sent: its slot's start and size, the next event's
    /// index in the slot, and how many of the chunk's events are left.
    chunk: (u64, u32, u32, u32),
    /// An event generated but refused by a full window.
    pending: Option<HuntEvent>,
    /// When the open batch got its first event (within a tick).
    opened_ns: u64,
    done: StepDone,
    sent: u64,
    finished: bool,
}

/// A slot's arrivals, some possibly sent.
#[derive(Clone, Copy, Debug)]
struct Slot {
    start_ns: u64,
    n: u32,
    done: u32,
}

impl Conn {
    fn begin(&mut self, plan: &StepPlan, arrivals: Arrivals) {
        let seed = trove_core::rng::mix64(self.seed ^ (u64::from(plan.index) << 40));
        self.schedule = Some(Schedule::new(arrivals, plan.rate, seed));
        self.next_slot_ns = plan.start_ns;
        self.backlog.clear();
        self.done = StepDone { sent_in_window: u64::MAX, ..StepDone::default() };
        self.sent = 0;
        self.finished = false;
    }

    /// Takes in the slots that have ended by `now` (within the step), sends
    /// what the window takes, and closes the open batch. Never waits.
    fn pace(&mut self, now: u64, plan: &StepPlan, log: &SendLog, linger_ns: u64) -> Result<(), String> {
        if let Some(schedule) = &mut self.schedule {
            while self.next_slot_ns + SLOT_NS <= now.min(plan.end_ns) {
                let n = schedule.next_slot();
                if n > 0 {
                    self.backlog.push_back(Slot { start_ns: self.next_slot_ns, n, done: 0 });
                    self.done.offered += u64::from(n);
                }
                self.next_slot_ns += SLOT_NS;
            }
            if self.next_slot_ns + SLOT_NS > plan.end_ns {
                // Every arrival of the step is in.
                self.schedule = None;
            }
        }
        if now >= plan.end_ns && self.done.sent_in_window == u64::MAX {
            // The rest of the backlog goes out after the step.
            self.done.sent_in_window = self.sent;
        }
        let was_open = self.producer.open_events() > 0;
        self.pump(now, plan.index, log)?;
        if !was_open && self.producer.open_events() > 0 {
            // Close enough: the batch opened during this tick.
            self.opened_ns = now;
        }
        // A batch closes when full (in `send`), when it has lingered, or
        // once the step's arrivals are all in.
        if self.producer.open_events() > 0
            && (now.saturating_sub(self.opened_ns) >= linger_ns || now >= plan.end_ns)
            && self.producer.try_flush().map_err(|e| e.to_string())?
        {
            self.opened_ns = now;
        }
        Ok(())
    }

    /// Hands `e` to the SDK: false if the window is full, and `e` waits
    /// in `pending` for the next tick.
    #[inline]
    fn offer(&mut self, e: HuntEvent) -> Result<bool, String> {
        match self.producer.send(e) {
            Ok(_) => {
                self.sent += 1;
                Ok(true)
            }
            Err(SendError::Full(e)) => {
                self.pending = Some(e);
                Ok(false)
            }
            Err(SendError::Closed(_, err)) => Err(err.to_string()),
        }
    }

    /// Sends backlog events in order until the window is full.
    fn pump(&mut self, now: u64, step: u32, log: &SendLog) -> Result<(), String> {
        loop {
            if let Some(e) = self.pending.take()
                && !self.offer(e)?
            {
                return Ok(());
            }
            // The chunk's events straight into the SDK (not through
            // `pending`, whose store and reload cost the pacer 13%).
            let (slot_start, n, mut j, mut left) = self.chunk;
            while left > 0 {
                let e = self.generator.next_event();
                log.record(e.hunt, slot_start + arrivals::offset_ns(j, j + 1, n), step);
                j += 1;
                left -= 1;
                let sent = self.offer(e);
                if !matches!(sent, Ok(true)) {
                    self.chunk = (slot_start, n, j, left);
                    return sent.map(drop);
                }
            }
            self.chunk = (slot_start, n, j, left);
            let Some(slot) = self.backlog.front_mut() else { return Ok(()) };
            let (from, to) = (slot.done, (slot.done + CHUNK_EVENTS).min(slot.n));
            let start_seq = self.producer.next_seq();
            let intended_ns = slot.start_ns + arrivals::offset_ns(from, to, slot.n);
            // The chunk is known before its events can be acknowledged.
            let mut inner = lock(&self.shared.inner);
            let end_seq = start_seq + u64::from(to - from);
            inner.chunks.push_back(Chunk { start_seq, end_seq, intended_ns, handed_ns: now, step });
            inner.send_lag.record(step, now.saturating_sub(intended_ns) / 1000, u64::from(to - from));
            drop(inner);
            self.chunk = (slot.start_ns, slot.n, from, to - from);
            slot.done = to;
            if slot.done == slot.n {
                self.backlog.pop_front();
            }
        }
    }

    /// At the drain deadline: what is still unsent or unacknowledged gets
    /// its latency so far, so that the step's figures are lower bounds
    /// rather than silent about the worst events.
    fn abandon(&mut self, now: u64, step: u32) {
        let mut inner = lock(&self.shared.inner);
        let ConnInner { chunks, latencies, .. } = &mut *inner;
        for c in chunks.drain(..) {
            latencies.record(c.step, now.saturating_sub(c.intended_ns) / 1000, c.end_seq - c.start_seq);
        }
        // Generated or scheduled, never sent: each slot's middle.
        for slot in self.backlog.drain(..) {
            let left = slot.n - slot.done;
            if left > 0 {
                let at = slot.start_ns + arrivals::offset_ns(slot.done, slot.n, slot.n);
                latencies.record(step, now.saturating_sub(at) / 1000, u64::from(left));
            }
        }
        self.schedule = None;
        self.pending = None;
        self.chunk.3 = 0;
    }

    /// Whether everything of the step is sent and acknowledged.
    fn drained(&self) -> bool {
        self.schedule.is_none()
            && self.backlog.is_empty()
            && self.pending.is_none()
            && self.chunk.3 == 0
            && self.producer.open_events() == 0
            && lock(&self.shared.inner).chunks.is_empty()
    }
}

/// The pacer: one thread that wakes every `tick`, takes in each
/// connection's arrivals and hands them to the SDK (`send`, `try_flush`:
/// no await, no lock but the SDK's per batch). The SDK's tasks on the
/// client runtime do the I/O. A thread with `sleep` keeps a tick of a
/// few hundred microseconds; tokio's timer has a resolution of 1 ms.
struct Pacer {
    conns: Vec<Conn>,
    log: Arc<SendLog>,
    clock: Clock,
    arrivals: Arrivals,
    tick: Duration,
    linger: Duration,
    drain_timeout: Duration,
    plans: mpsc::Receiver<StepPlan>,
    replies: mpsc::Sender<StepDone>,
}

fn pacer(p: Pacer) -> Vec<Conn> {
    let Pacer { mut conns, log, clock, arrivals, tick, linger, drain_timeout, plans, replies } = p;
    'plans: while let Ok(plan) = plans.recv() {
        for c in &mut conns {
            c.begin(&plan, arrivals);
        }
        let deadline = plan.end_ns + drain_timeout.as_nanos() as u64;
        // Woken late: the thread was due to run and did not. Whatever
        // stops it stops the events' sending too.
        let (mut stall_max_ns, mut stalls) = (0u64, 0u64);
        let mut woke_late = |late: Duration| {
            let late = late.as_nanos() as u64;
            stall_max_ns = stall_max_ns.max(late);
            stalls += u64::from(late >= STALL_NS);
        };
        woke_late(sleep_until(clock.at(plan.start_ns)));
        let mut next_tick = Instant::now();
        loop {
            let now = clock.now_ns();
            let mut all = true;
            for c in conns.iter_mut().filter(|c| !c.finished) {
                if let Err(e) = c.pace(now, &plan, &log, linger.as_nanos() as u64) {
                    c.done.error = Some(e);
                    c.finished = true;
                } else if now >= plan.end_ns && c.drained() {
                    c.done.drained = true;
                    c.finished = true;
                } else if now >= deadline {
                    c.abandon(now, plan.index);
                    c.finished = true;
                }
                all &= c.finished;
            }
            if all {
                break;
            }
            next_tick += tick;
            let now = Instant::now();
            if next_tick < now {
                next_tick = now;
            }
            woke_late(sleep_until(next_tick));
        }
        let mut done = StepDone { drained: true, sent_in_window: 0, stall_max_ns, stalls, ..StepDone::default() };
        for c in &mut conns {
            let d = std::mem::take(&mut c.done);
            done.offered += d.offered;
            done.sent_in_window += if d.sent_in_window == u64::MAX { c.sent } else { d.sent_in_window };
            done.drained &= d.drained;
            done.error = done.error.take().or(d.error);
        }
        let stop = !done.drained || done.error.is_some();
        if replies.send(done).is_err() || stop {
            break 'plans;
        }
    }
    conns
}

/// Reads a connection's acknowledgements: each chunk's events get
/// `now - intended` when the batch holding them is acknowledged.
async fn read_acks(
    mut acks: trove_client::Acks<TreasureHunt>,
    shared: Arc<ConnShared>,
    acked_total: Arc<AtomicU64>,
    clock: Clock,
    on_refused: impl Fn() + Send + 'static,
) {
    while let Some(ack) = acks.next().await {
        let ack = match ack {
            Ok(a) => a,
            Err(ClientError::BatchRefused { first_seq, count, .. }) => {
                // The producer goes on; the refused events are counted, not timed.
                on_refused();
                let mut inner = lock(&shared.inner);
                let ConnInner { chunks, refused, .. } = &mut *inner;
                answered(chunks, first_seq + u64::from(count), |c, n| {
                    match refused.iter_mut().find(|r| r.0 == c.step) {
                        Some(r) => r.1 += n,
                        None => refused.push((c.step, n)),
                    }
                });
                continue;
            }
            Err(e) => {
                lock(&shared.inner).failed = Some(e.to_string());
                return;
            }
        };
        let now = clock.now_ns();
        let end = ack.first_seq + u64::from(ack.count);
        acked_total.fetch_add(u64::from(ack.count), Relaxed);
        let mut inner = lock(&shared.inner);
        let ConnInner { chunks, latencies, admitted, .. } = &mut *inner;
        answered(chunks, end, |c, n| {
            latencies.record(c.step, now.saturating_sub(c.intended_ns) / 1000, n);
            admitted.record(c.step, now.saturating_sub(c.handed_ns) / 1000, n);
        });
    }
}

/// Takes the chunk events below sequence `end` off the front of `chunks`
/// (answers come in sequence order), calling `f` with each chunk and how
/// many of its events were answered; a chunk answered in part keeps the rest.
fn answered(chunks: &mut VecDeque<Chunk>, end: u64, mut f: impl FnMut(&Chunk, u64)) {
    while let Some(c) = chunks.front_mut() {
        if c.start_seq >= end {
            break;
        }
        let upto = c.end_seq.min(end);
        f(c, upto - c.start_seq);
        if upto == c.end_seq {
            chunks.pop_front();
        } else {
            c.start_seq = upto;
        }
    }
}

/// Client process CPU time.
pub(crate) fn cpu_time() -> Duration {
    // utime + stime of this process from /proc/self/stat, in clock ticks.
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: u64 = [11, 12].iter().filter_map(|&i| fields.get(i)?.parse::<u64>().ok()).sum();
    Duration::from_millis(ticks * 10)
}

/// The client side of a mode's run: the SDK's tasks on a runtime, the
/// pacer thread, the subscribers.
struct Rig {
    /// Taken by `drop`, which stops the SDK's and the subscriber's tasks.
    runtime: Option<tokio::runtime::Runtime>,
    plans: Option<mpsc::Sender<StepPlan>>,
    replies: mpsc::Receiver<StepDone>,
    pacer: Option<std::thread::JoinHandle<Vec<Conn>>>,
    shared: Vec<Arc<ConnShared>>,
    /// The subscribers, if any.
    fleet: Option<Fleet>,
    acked_total: Arc<AtomicU64>,
    clock: Clock,
    /// Stalls of the machine over the whole run.
    probe: Probe,
}

impl Rig {
    fn start(args: &LoadArgs, addr: SocketAddr, ws: Option<SocketAddr>) -> Result<Self, String> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(args.client_workers)
            .thread_name("bench-client")
            .enable_all()
            .build()
            .map_err(|e| format!("client runtime: {e}"))?;
        let clock = Clock { epoch: Instant::now() };
        let spec = &args.workload;
        let fleet_args = fleet_args(args);
        let (hunts, log) = match &fleet_args {
            Some(f) => Fleet::plan(f, spec.hunts, spec.seed)?,
            None => (Vec::new(), Arc::new(SendLog::none())),
        };
        let acked_total = Arc::new(AtomicU64::new(0));
        let began = Instant::now();
        say(&format!("setting up {} hunts and their players over {} connections", spec.hunts, args.connections));
        let setups: Vec<_> = (0..args.connections)
            .map(|part| {
                let config = ClientConfig {
                    batch_events_max: args.batch_events,
                    window_batches: args.window_batches,
                    queue_delay_target: args.queue_delay_target,
                    // The pacer closes batches; this only backs it up.
                    linger: Duration::from_millis(5),
                    // Acknowledgements only: a game server that needs each
                    // event's outcome reads it from the update stream.
                    want_outcomes: false,
                    ..ClientConfig::new(addr.to_string())
                };
                let mut generator = Generator::partition(spec, part, args.connections);
                let acked_total = acked_total.clone();
                // Its watched hunts' logs no longer follow their streams.
                let (log, parts) = (log.clone(), args.connections);
                let on_refused = move || log.refused(part, parts);
                runtime.spawn(async move {
                    let (mut producer, acks) = Producer::<TreasureHunt>::connect(config)
                        .await
                        .map_err(|e| format!("connecting to {addr}: {e}"))?;
                    let shared = Arc::new(ConnShared::default());
                    tokio::spawn(read_acks(acks, shared.clone(), acked_total, clock, on_refused));
                    for e in generator.setup() {
                        producer.send_wait(e).await.map_err(|e| format!("setup: {e}"))?;
                    }
                    producer.drain().await.map_err(|e| format!("setup: {e}"))?;
                    Ok::<_, String>((producer, generator, shared))
                })
            })
            .collect();
        let mut conns = Vec::new();
        for (part, h) in setups.into_iter().enumerate() {
            let (producer, generator, shared) = runtime.block_on(h).map_err(|e| e.to_string())??;
            conns.push(Conn {
                producer,
                generator,
                shared,
                seed: trove_core::rng::mix64(spec.seed ^ part as u64),
                schedule: None,
                next_slot_ns: 0,
                backlog: VecDeque::new(),
                chunk: (0, 0, 0, 0),
                pending: None,
                opened_ns: 0,
                done: StepDone::default(),
                sent: 0,
                finished: false,
            });
        }
        say(&format!("setup acknowledged in {:.1} s", began.elapsed().as_secs_f64()));
        // Subscribed before the pacer sends anything: every subscriber's
        // stream and its hunt's log start together, at index 0.
        let fleet =
            fleet_args.map(|f| start_fleet(&f, hunts, log.clone(), addr, ws, clock, args.connections)).transpose()?;
        let shared = conns.iter().map(|c| c.shared.clone()).collect();
        let (plans, plans_rx) = mpsc::channel();
        let (replies_tx, replies) = mpsc::channel();
        let p = Pacer {
            conns,
            log,
            clock,
            arrivals: args.arrivals,
            tick: args.tick,
            linger: args.linger,
            drain_timeout: args.drain_timeout,
            plans: plans_rx,
            replies: replies_tx,
        };
        let pacer = std::thread::Builder::new()
            .name("bench-pacer".into())
            .spawn(move || pacer(p))
            .map_err(|e| format!("pacer thread: {e}"))?;
        let probe = Probe::start(clock.epoch)?;
        Ok(Self {
            runtime: Some(runtime),
            plans: Some(plans),
            replies,
            pacer: Some(pacer),
            shared,
            fleet,
            acked_total,
            clock,
            probe,
        })
    }

    fn step_latency(&self, step: u32) -> (Histogram<u64>, u64) {
        let mut h = histogram();
        let n = self.shared.iter().map(|s| lock(&s.inner).latencies.merge_into(step, &mut h)).sum();
        (h, n)
    }

    fn step_send_lag(&self, step: u32) -> Histogram<u64> {
        let mut h = histogram();
        for s in &self.shared {
            lock(&s.inner).send_lag.merge_into(step, &mut h);
        }
        h
    }

    fn step_admitted(&self, step: u32) -> Histogram<u64> {
        let mut h = histogram();
        for s in &self.shared {
            lock(&s.inner).admitted.merge_into(step, &mut h);
        }
        h
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        self.fleet.take();
        // The pacer ends when its plans do, handing back the producers.
        self.plans.take();
        let conns = self.pacer.take().and_then(|p| p.join().ok()).unwrap_or_default();
        if let Some(rt) = self.runtime.take() {
            // Close cleanly if the server answers soon; drop otherwise.
            rt.block_on(async {
                let close_all = async {
                    for c in conns {
                        let _ = c.producer.close().await;
                    }
                };
                let _ = tokio::time::timeout(Duration::from_secs(2), close_all).await;
            });
            rt.shutdown_timeout(Duration::from_secs(2));
        }
    }
}

fn latency(h: &Histogram<u64>) -> LatencyUs {
    LatencyUs {
        p50: h.value_at_quantile(0.50),
        p99: h.value_at_quantile(0.99),
        p999: h.value_at_quantile(0.999),
        max: h.max(),
    }
}

/// The ramp's choice of the next step: coarse steps (x `coarse`) until one
/// fails, then fine steps (x `factor`) from the last that passed, up to the
/// lowest that failed. If the first steps fail, it comes down (/ `coarse`)
/// until one passes.
#[derive(Debug)]
struct Ladder {
    factor: f64,
    coarse: f64,
    max: f64,
    climbing_coarse: bool,
    last_pass: Option<f64>,
    lowest_fail: f64,
}

impl Ladder {
    fn new(ramp: &RampArgs) -> Self {
        Self {
            factor: ramp.factor,
            coarse: ramp.coarse,
            max: ramp.max,
            climbing_coarse: ramp.coarse > ramp.factor,
            last_pass: None,
            lowest_fail: f64::INFINITY,
        }
    }

    /// The rate after a step at `rate`, or `None`: the knee is found.
    fn next(&mut self, rate: f64, passed: bool) -> Option<f64> {
        if passed {
            self.last_pass = Some(self.last_pass.map_or(rate, |p| p.max(rate)));
        } else {
            self.lowest_fail = self.lowest_fail.min(rate);
        }
        let Some(pass) = self.last_pass else {
            let down = rate / if self.coarse > 1.0 { self.coarse } else { 2.0 };
            return (down >= RAMP_FLOOR).then_some(down);
        };
        if pass >= self.max {
            return None;
        }
        let mut next = pass * if self.climbing_coarse { self.coarse } else { self.factor };
        if self.climbing_coarse && next >= self.lowest_fail {
            self.climbing_coarse = false;
            next = pass * self.factor;
        }
        (next < self.lowest_fail).then_some(next.min(self.max))
    }
}

/// Runs one mode against the server at `addr`: a single step, or a ramp.
fn run_mode(
    args: &LoadArgs,
    mode: &str,
    addr: SocketAddr,
    ws: Option<SocketAddr>,
    metrics: Option<SocketAddr>,
) -> Result<ModeRun, String> {
    let rig = Rig::start(args, addr, ws)?;
    let mut steps: Vec<StepReport> = Vec::new();
    let mut stopped: Option<String> = None;
    let mut warmup = None;
    match &args.ramp {
        None => {
            // With `--knee`, the single step is at the knee given.
            let rate = args.overload.as_ref().and_then(|o| o.knee).unwrap_or(args.rate);
            let (s, stop) = run_step(args, &rig, mode, metrics, 0, rate, args.duration, "step 0")?;
            steps.push(s);
            stopped = stop;
        }
        Some(ramp) => {
            // Histograms are kept by run index: one per trial.
            let mut run_index = 0;
            if !ramp.warmup.is_zero() {
                let (s, stop) = run_step(args, &rig, mode, metrics, run_index, ramp.from, ramp.warmup, "warm-up")?;
                run_index += 1;
                warmup = Some(s);
                stopped = stop;
            }
            let mut ladder = Ladder::new(ramp);
            let mut rate = ramp.from;
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
            for index in 0..ramp.steps_max {
                if stopped.is_some() {
                    break;
                }
                let mut trials = Vec::new();
                for t in 0..ramp.trials {
                    let label = format!("step {index} trial {}/{}", t + 1, ramp.trials);
                    let (s, stop) = run_step(args, &rig, mode, metrics, run_index, rate, ramp.step, &label)?;
                    run_index += 1;
                    trials.push(s);
                    if stop.is_some() {
                        stopped = stop;
                        break;
                    }
                }
                let s = judge(index, rate, trials, args.slo_p99, stopped.as_deref(), cores);
                say(&format!(
                    "{mode} step {index}: offered {}/s, judged on the median of {} trials: achieved {}/s p50 {:.2} ms p99 {:.2} ms{}",
                    human(rate),
                    s.trials.len(),
                    human(s.achieved_events_per_s),
                    s.latency_us.p50 as f64 / 1e3,
                    s.latency_us.p99 as f64 / 1e3,
                    s.tail_cause.as_ref().map_or(String::new(), |t| format!("  FAILED: {t}")),
                ));
                let passed = s.passed;
                steps.push(s);
                if stopped.is_some() {
                    break;
                }
                match ladder.next(rate, passed) {
                    Some(next) => rate = next,
                    None => break,
                }
            }
        }
    }
    let mut overload = None;
    if let (Some(o), None) = (&args.overload, &stopped) {
        // The knee given, or the ramp's: the highest passing step.
        let knee = match o.knee {
            Some(k) => Some((k, k)),
            None => steps
                .iter()
                .filter(|s| s.passed)
                .max_by(|a, b| a.offered_events_per_s.total_cmp(&b.offered_events_per_s))
                .map(|s| (s.offered_events_per_s, s.achieved_events_per_s)),
        };
        match knee {
            None => say(&format!("{mode}: no step passed, so there is no knee to overload")),
            Some((knee_offered, knee_goodput)) => {
                // As long as a ramp step's trials together.
                let duration = args.ramp.as_ref().map_or(args.duration, |r| r.step * r.trials);
                let index = steps.iter().map(|s| s.step + 1).max().unwrap_or(0);
                // A run index no trial used: past every step's trials and the warm-up.
                let run_index = (index + 1) * args.ramp.as_ref().map_or(1, |r| r.trials) + 1;
                let label = format!("overload step {index}");
                let (step, stop) =
                    run_step(args, &rig, mode, metrics, run_index, knee_offered * o.factor, duration, &label)?;
                let step = StepReport { step: index, ..step };
                stopped = stop;
                let slo_p99_ms = args.slo_p99.as_secs_f64() * 1e3;
                let ratio = step.achieved_events_per_s / knee_goodput.max(1e-9);
                let holds = ratio >= GOODPUT_KEPT_MIN && step.admitted_latency_us.p99 as f64 / 1e3 <= slo_p99_ms;
                say(&format!(
                    "{mode} overload {:.1}x: goodput {}/s = {:.1}% of the knee's {}/s; BUSY {}/s; admitted p99 {:.2} ms{}",
                    o.factor,
                    human(step.achieved_events_per_s),
                    ratio * 100.0,
                    human(knee_goodput),
                    step.busy_replies_per_s.map_or("-".into(), human),
                    step.admitted_latency_us.p99 as f64 / 1e3,
                    if holds { "" } else { "  DOES NOT HOLD" },
                ));
                overload = Some(OverloadReport {
                    factor: o.factor,
                    knee_events_per_s: knee_goodput,
                    offered_events_per_s: step.offered_events_per_s,
                    goodput_events_per_s: step.achieved_events_per_s,
                    goodput_over_knee: ratio,
                    busy_replies_per_s: step.busy_replies_per_s,
                    admitted_p99_us: step.admitted_latency_us.p99,
                    slo_p99_ms,
                    holds,
                    step,
                });
            }
        }
    }
    drop(rig);
    if let Some(why) = &stopped {
        say(&format!("{mode}: stopped: {why}"));
    }
    Ok(ModeRun { overload, ..analyse(mode, args, warmup, steps) })
}

/// Runs one step (or one trial of a ramp step) on `rig` and reports it as
/// a step of one trial; `index` keys its histograms and must not repeat,
/// `label` names it on the progress lines. The second value says why the
/// run cannot go on (a connection failed, or the step did not drain).
#[allow(clippy::too_many_arguments)]
fn run_step(
    args: &LoadArgs,
    rig: &Rig,
    mode: &str,
    metrics: Option<SocketAddr>,
    index: u32,
    rate: f64,
    duration: Duration,
    label: &str,
) -> Result<(StepReport, Option<String>), String> {
    let duration = duration.max(Duration::from_millis(100));
    let start_ns = rig.clock.now_ns() + 50_000_000;
    let end_ns = start_ns + duration.as_nanos() as u64;
    let conns = args.connections as f64;
    rig.plans
        .as_ref()
        .and_then(|p| p.send(StepPlan { index, rate: rate / conns, start_ns, end_ns }).ok())
        .ok_or("the pacer thread ended")?;
    let scrape = |m: Option<SocketAddr>| m.and_then(|a| scrape::get(a, Duration::from_secs(2)).ok());
    sleep_until(rig.clock.at(start_ns));
    let (scrape0, acked0, cpu0, t0) = (scrape(metrics), rig.acked_total.load(Relaxed), cpu_time(), Instant::now());
    let fan0 = rig.fleet.as_ref().map(Fleet::snapshot);
    let live = args.progress && std::io::stderr().is_terminal();
    while rig.clock.now_ns() < end_ns {
        let left = end_ns.saturating_sub(rig.clock.now_ns());
        std::thread::sleep(Duration::from_nanos(left.min(500_000_000)));
        if live {
            let secs = t0.elapsed().as_secs_f64().max(1e-9);
            let achieved = (rig.acked_total.load(Relaxed) - acked0) as f64 / secs;
            let p99 = rig.step_latency(index).0.value_at_quantile(0.99);
            eprint!(
                "\r  step {index}: {secs:4.1}/{:.1} s  offered {}/s  achieved {}/s  p99 {:.2} ms   ",
                duration.as_secs_f64(),
                human(rate),
                human(achieved),
                p99 as f64 / 1e3
            );
        }
    }
    // Read together, before the scrape (which may take a while).
    let (acked1, cpu1, seconds) = (rig.acked_total.load(Relaxed), cpu_time(), t0.elapsed().as_secs_f64().max(1e-9));
    let fan1 = rig.fleet.as_ref().map(Fleet::snapshot);
    let scrape1 = scrape(metrics);
    if live {
        eprint!("\r{:100}\r", "");
    }
    let wait = args.drain_timeout + Duration::from_secs(5);
    let done = rig.replies.recv_timeout(wait).map_err(|_| "the pacer did not finish the step")?;
    // The step's events were sent and acknowledged up to now: a stall
    // while they drained held them up too.
    let machine = rig.probe.within(start_ns, rig.clock.now_ns());
    // The updates of the step's last events are on their way.
    if let Some(f) = &rig.fleet {
        f.settle(args.drain_timeout);
    }
    let (ack_hist, acked) = rig.step_latency(index);
    let send_lag = latency(&rig.step_send_lag(index));
    let admitted = latency(&rig.step_admitted(index));
    let mut refused = 0;
    for s in &rig.shared {
        let mut inner = lock(&s.inner);
        inner.latencies.collected(index);
        inner.send_lag.collected(index);
        inner.admitted.collected(index);
        refused += inner.refused.iter().filter(|r| r.0 == index).map(|r| r.1).sum::<u64>();
        inner.refused.retain(|r| r.0 > index);
    }
    let failed = rig.shared.iter().find_map(|s| lock(&s.inner).failed.clone());
    let failed = failed.or_else(|| rig.fleet.as_ref().and_then(Fleet::error));
    let achieved = (acked1 - acked0) as f64 / seconds;
    let offered = done.offered as f64 / duration.as_secs_f64();
    let lat = latency(&ack_hist);
    let slo_ms = args.slo_p99.as_secs_f64() * 1e3;
    let mut why = Vec::new();
    if achieved < KEEP_UP * offered {
        why.push(format!("achieved {}/s fell behind offered {}/s", human(achieved), human(offered)));
    }
    if lat.p99 as f64 / 1e3 > slo_ms {
        why.push(format!("p99 {:.1} ms left the {slo_ms} ms SLO", lat.p99 as f64 / 1e3));
    }
    if refused > 0 {
        why.push(format!("{refused} events refused"));
    }
    if !done.drained {
        why.push(format!("not drained within {:?} (latencies are lower bounds)", args.drain_timeout));
    }
    if let Some(e) = done.error.as_ref().or(failed.as_ref()) {
        why.push(format!("a connection failed: {e}"));
    }
    let passed = why.is_empty();
    let server = match (&scrape0, &scrape1) {
        (Some(a), Some(b)) => Some(scrape::server_step(a, b, seconds)),
        _ => None,
    };
    let client_cpu_cores = cpu1.saturating_sub(cpu0).as_secs_f64() / seconds;
    let fanout = fanout_step(
        rig,
        index,
        fan0.as_ref().zip(fan1.as_ref()),
        scrape0.as_ref().zip(scrape1.as_ref()),
        server.as_ref(),
    );
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let tail_cause = (!passed).then(|| {
        probe::tail_cause(
            &TailFigures {
                p99_us: lat.p99,
                send_lag_p99_us: send_lag.p99,
                pacer_stall_max_us: done.stall_max_ns / 1000,
                admitted_p99_us: admitted.p99,
                machine,
                cpu_cores_busy: server.as_ref().map(|v| v.cpu_cores + client_cpu_cores),
                cores,
                fsync_max_us: server.as_ref().and_then(|v| v.fsync_max_us).map(|us| us as u64),
                server_p99_us: None,
                stage_p99_max: None,
            }
            .with_stages(&model::LatencyBreakdown::of_step(&lat, &send_lag, server.as_ref())),
        )
    });
    let trial = TrialReport {
        trial: 0,
        scheduled_events_per_s: offered,
        achieved_events_per_s: achieved,
        latency_us: lat,
        send_lag_us: send_lag,
        admitted_latency_us: admitted,
        pacer_stall_max_us: done.stall_max_ns / 1000,
        machine_stalls: machine,
        client_cpu_cores,
        server_cpu_cores: server.as_ref().map(|v| v.cpu_cores),
        passed,
        failed_because: (!passed).then(|| why.join("; ")),
        tail_cause: tail_cause.clone(),
    };
    let step = StepReport {
        step: index,
        offered_events_per_s: rate,
        achieved_events_per_s: achieved,
        seconds,
        events_offered: done.offered,
        events_sent: done.sent_in_window,
        events_acked: acked,
        latency_us: lat,
        admitted_latency_us: admitted,
        send_lag_us: send_lag,
        update_latency_us: fanout.as_ref().and_then(|f| f.latency_us),
        updates_measured: fanout.as_ref().map_or(0, |f| f.updates_timed),
        update_gaps: fanout.as_ref().map_or(0, |f| f.gaps),
        events_refused: refused,
        passed,
        failed_because: (!passed).then(|| why.join("; ")),
        client_cpu_cores,
        pacer_stall_max_us: done.stall_max_ns / 1000,
        pacer_stalls: done.stalls,
        latency_breakdown: model::LatencyBreakdown::of_step(&lat, &send_lag, server.as_ref()),
        server,
        busy_replies_per_s: None,
        machine_stalls: machine,
        tail_cause,
        trials: vec![trial],
        fanout,
    };
    let step = StepReport { busy_replies_per_s: step.server.as_ref().map(|v| v.busy_replies / seconds), ..step };
    say(&format!(
        "{mode} {label}: offered {}/s achieved {}/s p50 {:.2} ms p99 {:.2} ms p99.9 {:.2} ms{}{}{}{}",
        human(rate),
        human(achieved),
        lat.p50 as f64 / 1e3,
        lat.p99 as f64 / 1e3,
        lat.p999 as f64 / 1e3,
        step.fanout.as_ref().map_or(String::new(), fanout_note),
        stall_note(&step),
        machine_note(&step.machine_stalls),
        step.tail_cause.as_ref().map_or(String::new(), |t| format!("  FAILED: {t}")),
    ));
    for b in &step.latency_breakdown {
        say(&format!("  {}", b.line()));
    }
    let stop = match (done.error, failed) {
        (Some(e), _) | (None, Some(e)) => Some(format!("a connection failed: {e}")),
        (None, None) if !done.drained => {
            Some(format!("the backlog did not clear within {:?} after the step", args.drain_timeout))
        }
        _ => None,
    };
    Ok((step, stop))
}

/// The subscribers a run opens: `--subscribers`, or one per `--watch` hunt.
fn fleet_args(args: &LoadArgs) -> Option<FleetArgs> {
    args.fanout.clone().or_else(|| {
        (args.watch_hunts > 0).then(|| FleetArgs {
            subscribers: args.watch_hunts.min(args.workload.hunts),
            hunts: HuntChoice::All,
            ws: false,
            slow: 0,
            slow_bytes_per_s: 1024,
            threads: 1,
            read_interval: Duration::ZERO,
        })
    })
}

/// A fresh server's `connections_max` that admits the producers and the
/// subscribers, when the default (1024) does not.
fn child_connections_max(args: &LoadArgs) -> Option<u32> {
    let need = args.connections + fleet_args(args).map_or(0, |f| f.subscribers) + 64;
    (need > 1024).then_some(need)
}

fn start_fleet(
    f: &FleetArgs,
    hunts: Vec<u32>,
    log: Arc<SendLog>,
    tcp: SocketAddr,
    ws: Option<SocketAddr>,
    clock: Clock,
    producers: u32,
) -> Result<Fleet, String> {
    let addr =
        if f.ws { ws.ok_or("WebSocket subscribers need the server's WebSocket address (--target-ws)")? } else { tcp };
    let began = Instant::now();
    let fleet = Fleet::start(f, hunts, log, addr, clock, producers)?;
    say(&format!(
        "{} subscribers ({}{}) subscribed in {:.1} s",
        f.subscribers,
        if f.ws { "WebSocket" } else { "TCP" },
        if f.slow > 0 { format!(", {} slow", f.slow) } else { String::new() },
        began.elapsed().as_secs_f64()
    ));
    Ok(fleet)
}

/// The fan-out figures of step `index` between two snapshots.
fn fanout_step(
    rig: &Rig,
    index: u32,
    snaps: Option<(&fanout::Snapshot, &fanout::Snapshot)>,
    scrapes: Option<(&scrape::Scrape, &scrape::Scrape)>,
    server: Option<&model::ServerStep>,
) -> Option<fanout::FanoutStep> {
    let (f, snaps) = (rig.fleet.as_ref()?, snaps?);
    let seconds = snaps.1.seconds_since(snaps.0);
    Some(f.step(index, snaps, scrapes, server.map(|v| v.cpu_cores * seconds)))
}

/// The progress line's fan-out part.
fn fanout_note(f: &fanout::FanoutStep) -> String {
    let p99 = f.latency_us.map_or("-".into(), |u| format!("{:.2} ms", u.p99 as f64 / 1e3));
    // Updates read more than the log behind are in it as lower bounds.
    let bound = if f.updates_lower_bound > 0 { " or more" } else { "" };
    format!(
        " (updates {}/s to {} subscribers, update p99 {p99}{bound}, gaps {}{})",
        human(f.updates_per_s),
        f.subscribers,
        f.gaps,
        if f.slow_subscribers > 0 { format!(", slow ones' gaps {}", f.slow_gaps) } else { String::new() }
    )
}

/// Sleeps until `t`; returns how late it woke, past `t` (or past the
/// call, if `t` had gone by).
fn sleep_until(t: Instant) -> Duration {
    let slept_at = Instant::now();
    if t > slept_at {
        std::thread::sleep(t - slept_at);
    }
    Instant::now().saturating_duration_since(t.max(slept_at))
}

/// 1.25M, 250k, 900.
pub fn human(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.2}M", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.0}k", v / 1e3)
    } else {
        format!("{v:.0}")
    }
}

/// A server metric and the value at which it counts as saturated.
struct Threshold {
    name: &'static str,
    get: fn(&StepReport) -> Option<f64>,
    /// Crossed when the value is at least this...
    at_least: f64,
    /// ...and at least this many times its value at the lowest step.
    times_base: f64,
}

/// The saturation signals, in the order ties are broken: what saturation
/// looks like before latency shows it. Rates per event (polls, wakeups)
/// fall as batches grow with the load, so they are judged against the
/// lowest step; the client's latency is the symptom, not a cause, and is
/// left out.
const THRESHOLDS: [Threshold; 6] = [
    Threshold {
        name: "worker_busy_ratio",
        get: |s| s.server.as_ref().map(|v| v.worker_busy_ratio),
        at_least: 0.5,
        times_base: 1.0,
    },
    Threshold {
        name: "schedule_latency_p99_us",
        get: |s| s.server.as_ref().and_then(|v| v.schedule_latency_p99_us),
        at_least: 500.0,
        times_base: 2.0,
    },
    Threshold {
        name: "queue_depth_events",
        get: |s| s.server.as_ref().map(|v| v.queue_depth_events),
        at_least: 1000.0,
        times_base: 4.0,
    },
    Threshold {
        name: "machine_cpu_cores",
        get: |s| s.server.as_ref().map(|v| v.cpu_cores + s.client_cpu_cores),
        // 3/4 of the machine's cores; see `analyse`.
        at_least: f64::NAN,
        times_base: 1.0,
    },
    Threshold {
        name: "busy_replies",
        get: |s| s.server.as_ref().map(|v| v.busy_replies),
        at_least: 1.0,
        times_base: 1.0,
    },
    Threshold {
        name: "polls_per_event",
        get: |s| s.server.as_ref().map(|v| v.polls_per_event),
        at_least: 0.0,
        times_base: 2.0,
    },
];

/// A server stage's share of the p99 (`LatencyBreakdown`) has moved when
/// it is at least this many microseconds and twice the lowest step's.
const STAGE_MOVED_US_MIN: f64 = 250.0;

/// The parts of a step's p99 that `first_moved` can name beside the
/// `THRESHOLDS`: each server stage's share (`stage_<name>_p99_us`), the
/// client side left over (`client_and_network_p99_us`), and the
/// generator's own measures (`send_lag_p99_us`, `pacer_stall_max_us`,
/// `machine_stall_max_us`). Microseconds.
fn p99_parts(s: &StepReport) -> Vec<(String, f64)> {
    let mut parts = Vec::new();
    if let Some(b) = s.latency_breakdown.iter().find(|b| b.percentile == "p99") {
        parts.extend(b.stages.iter().map(|st| (format!("stage_{}_p99_us", st.stage), st.us)));
        parts.push(("client_and_network_p99_us".to_string(), b.rest_us));
    }
    parts.push(("send_lag_p99_us".to_string(), s.send_lag_us.p99 as f64));
    parts.push(("pacer_stall_max_us".to_string(), s.pacer_stall_max_us as f64));
    parts.push(("machine_stall_max_us".to_string(), s.machine_stalls.max_us as f64));
    parts
}

/// The first server stage whose p99 share at `s` reached
/// `STAGE_MOVED_US_MIN` and twice its share at `base`.
fn stage_moved(base: &StepReport, s: &StepReport) -> Option<FirstMoved> {
    let before = p99_parts(base);
    p99_parts(s).into_iter().filter(|(name, _)| name.starts_with("stage_")).find_map(|(name, to)| {
        let from = before.iter().find(|(n, _)| *n == name).map_or(0.0, |p| p.1);
        (to >= STAGE_MOVED_US_MIN && to >= 2.0 * from).then_some(FirstMoved {
            metric: name,
            step: s.step,
            offered_events_per_s: s.offered_events_per_s,
            from,
            to,
        })
    })
}

/// For a failing step nothing crossed a threshold on the way to: the part
/// of its p99 that grew most since `base` (the largest part if `base` is
/// the step itself). With no server stage growing, that is one of the
/// generator's or the client side's measures, which it then names.
fn grew_most(base: &StepReport, failed: &StepReport) -> Option<FirstMoved> {
    let before = p99_parts(base);
    let same = base.step == failed.step;
    p99_parts(failed)
        .into_iter()
        .map(|(name, to)| {
            let from = if same { 0.0 } else { before.iter().find(|(n, _)| *n == name).map_or(0.0, |p| p.1) };
            (name, from, to)
        })
        .max_by(|a, b| (a.2 - a.1).total_cmp(&(b.2 - b.1)))
        .map(|(metric, from, to)| FirstMoved {
            metric,
            step: failed.step,
            offered_events_per_s: failed.offered_events_per_s,
            from,
            to,
        })
}

/// Names the generator's own stalls of a step, if it had any.
fn stall_note(step: &StepReport) -> String {
    match step.pacer_stalls {
        0 => String::new(),
        1 => format!(" [the generator stalled once, {:.1} ms]", step.pacer_stall_max_us as f64 / 1e3),
        n => format!(" [the generator stalled {n} times, up to {:.1} ms]", step.pacer_stall_max_us as f64 / 1e3),
    }
}

/// Names the machine's stalls during a step, if the probe saw any.
fn machine_note(m: &MachineStalls) -> String {
    match m.count {
        0 => String::new(),
        n => format!(
            " [the machine stalled {n} times for 1 ms or more, up to {:.1} ms, {:.1} ms lost]",
            m.max_us as f64 / 1e3,
            m.lost_us as f64 / 1e3
        ),
    }
}

/// The middle of `v` sorted by `key`; of an even count, the upper middle
/// (the worse, for latencies).
fn median_by<T: Copy>(v: &[T], key: impl Fn(&T) -> f64) -> T {
    assert!(!v.is_empty(), "a median of nothing");
    let mut sorted = v.to_vec();
    sorted.sort_by(|a, b| key(a).total_cmp(&key(b)));
    sorted[v.len() / 2]
}

/// Each percentile's median, percentile by percentile.
fn median_latency(v: &[LatencyUs]) -> LatencyUs {
    LatencyUs {
        p50: median_by(v, |l| l.p50 as f64).p50,
        p99: median_by(v, |l| l.p99 as f64).p99,
        p999: median_by(v, |l| l.p999 as f64).p999,
        max: median_by(v, |l| l.max as f64).max,
    }
}

/// A ramp step judged from its trials (in the order they ran, at least
/// one): achieved, each latency percentile and the client's CPU are the
/// trials' medians (of an even count, the worse middle); the server's
/// figures and the tail's cause are those of the trial whose p99 is the
/// median. The step passes when the median achieved keeps up with the
/// median scheduled rate, the median p99 is within the SLO, no event was
/// refused and nothing ended the run (`stopped`). Counts are summed.
fn judge(
    index: u32,
    rate: f64,
    trials: Vec<StepReport>,
    slo: Duration,
    stopped: Option<&str>,
    cores: f64,
) -> StepReport {
    assert!(!trials.is_empty(), "a step runs at least one trial");
    let n = trials.len();
    let lat = |f: &dyn Fn(&StepReport) -> LatencyUs| median_latency(&trials.iter().map(f).collect::<Vec<_>>());
    let f64s = |f: &dyn Fn(&StepReport) -> f64| trials.iter().map(f).collect::<Vec<f64>>();
    // The worse middle of an even count: the lower achieved.
    let lower = |v: Vec<f64>| median_by(&v, |&x| -x);
    let achieved = lower(f64s(&|s| s.achieved_events_per_s));
    let keep_up = lower(f64s(&|s| {
        let scheduled = s.trials.first().map_or(s.offered_events_per_s, |t| t.scheduled_events_per_s);
        s.achieved_events_per_s / scheduled.max(1e-9)
    }));
    let latency = lat(&|s| s.latency_us);
    let updates: Vec<LatencyUs> = trials.iter().filter_map(|s| s.update_latency_us).collect();
    let update_latency_us = (!updates.is_empty()).then(|| median_latency(&updates));
    let order: Vec<usize> = (0..n).collect();
    let mid = &trials[median_by(&order, |&i| trials[i].latency_us.p99 as f64)];
    let refused: u64 = trials.iter().map(|s| s.events_refused).sum();
    let slo_ms = slo.as_secs_f64() * 1e3;
    let p99s = trials.iter().map(|s| format!("{:.1}", s.latency_us.p99 as f64 / 1e3)).collect::<Vec<_>>().join(", ");
    let mut why = Vec::new();
    if keep_up < KEEP_UP {
        why.push(format!(
            "median achieved {}/s fell behind offered {}/s ({:.1}% of the arrivals)",
            human(achieved),
            human(rate),
            keep_up * 100.0
        ));
    }
    if latency.p99 as f64 / 1e3 > slo_ms {
        why.push(format!(
            "median p99 {:.1} ms left the {slo_ms} ms SLO (the trials' p99: {p99s} ms)",
            latency.p99 as f64 / 1e3
        ));
    }
    if refused > 0 {
        why.push(format!("{refused} events refused"));
    }
    if let Some(stop) = stopped {
        why.push(stop.to_string());
    }
    let passed = why.is_empty();
    let machine_stalls = MachineStalls {
        max_us: trials.iter().map(|s| s.machine_stalls.max_us).max().unwrap_or(0),
        count: trials.iter().map(|s| s.machine_stalls.count).sum(),
        lost_us: trials.iter().map(|s| s.machine_stalls.lost_us).sum(),
    };
    let send_lag_us = lat(&|s| s.send_lag_us);
    let admitted_latency_us = lat(&|s| s.admitted_latency_us);
    let client_cpu_cores = median_by(&f64s(&|s| s.client_cpu_cores), |&x| x);
    let tail_cause = (!passed).then(|| {
        mid.tail_cause.clone().or_else(|| trials.iter().find_map(|s| s.tail_cause.clone())).unwrap_or_else(|| {
            probe::tail_cause(
                &TailFigures {
                    p99_us: latency.p99,
                    send_lag_p99_us: send_lag_us.p99,
                    pacer_stall_max_us: mid.pacer_stall_max_us,
                    admitted_p99_us: admitted_latency_us.p99,
                    machine: mid.machine_stalls,
                    cpu_cores_busy: mid.server.as_ref().map(|v| v.cpu_cores + mid.client_cpu_cores),
                    cores,
                    fsync_max_us: mid.server.as_ref().and_then(|v| v.fsync_max_us).map(|us| us as u64),
                    server_p99_us: None,
                    stage_p99_max: None,
                }
                .with_stages(&model::LatencyBreakdown::of_step(
                    &latency,
                    &send_lag_us,
                    mid.server.as_ref(),
                )),
            )
        })
    });
    StepReport {
        step: index,
        offered_events_per_s: rate,
        achieved_events_per_s: achieved,
        seconds: trials.iter().map(|s| s.seconds).sum(),
        events_offered: trials.iter().map(|s| s.events_offered).sum(),
        events_sent: trials.iter().map(|s| s.events_sent).sum(),
        events_acked: trials.iter().map(|s| s.events_acked).sum(),
        latency_us: latency,
        admitted_latency_us,
        send_lag_us,
        update_latency_us,
        updates_measured: trials.iter().map(|s| s.updates_measured).sum(),
        update_gaps: trials.iter().map(|s| s.update_gaps).sum(),
        events_refused: refused,
        passed,
        failed_because: (!passed).then(|| why.join("; ")),
        client_cpu_cores,
        pacer_stall_max_us: trials.iter().map(|s| s.pacer_stall_max_us).max().unwrap_or(0),
        pacer_stalls: trials.iter().map(|s| s.pacer_stalls).sum(),
        latency_breakdown: model::LatencyBreakdown::of_step(&latency, &send_lag_us, mid.server.as_ref()),
        server: mid.server.clone(),
        busy_replies_per_s: mid.busy_replies_per_s,
        machine_stalls,
        tail_cause,
        fanout: mid.fanout.clone(),
        trials: trials
            .iter()
            .enumerate()
            .flat_map(|(i, s)| s.trials.iter().map(move |t| TrialReport { trial: i as u32, ..t.clone() }))
            .collect(),
    }
}

/// The rule `judge` applies, in words, for the report.
fn judge_rule(args: &LoadArgs) -> (u32, String) {
    match &args.ramp {
        None => (1, format!("one run of {} s", args.duration.as_secs_f64())),
        Some(r) => (
            r.trials,
            format!(
                "median of {} trials of {} s each: achieved, each latency percentile and the client's CPU are the \
                 trials' medians, the server's figures those of the median-p99 trial; a step passes when the median \
                 achieved is at least {}% of the arrivals, the median p99 is within the SLO, no event was refused and \
                 every trial drained; a warm-up of {} s at the first rate runs first and is not counted",
                r.trials,
                r.step.as_secs_f64(),
                KEEP_UP * 100.0,
                r.warmup.as_secs_f64()
            ),
        ),
    }
}

/// Sorts the steps, finds the knee and the first metric to move. The
/// warm-up is reported apart and never judged.
fn analyse(mode: &str, args: &LoadArgs, warmup: Option<StepReport>, mut steps: Vec<StepReport>) -> ModeRun {
    steps.sort_by(|a, b| a.offered_events_per_s.total_cmp(&b.offered_events_per_s));
    let knee = steps.iter().rposition(|s| s.passed);
    let slo_ms = args.slo_p99.as_secs_f64() * 1e3;
    // The first failing step above the knee.
    let above = steps.iter().skip(knee.map_or(0, |k| k + 1)).find(|s| !s.passed);
    let knee_reason = above.map(|s| {
        let why = s.failed_because.as_deref().unwrap_or("it failed");
        let tail = s.tail_cause.as_ref().map_or(String::new(), |t| format!("; the tail: {t}"));
        format!("at {}/s offered: {why}{}{tail}", human(s.offered_events_per_s), stall_note(s))
    });
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    // Up to the first failing step: what gave way on the way there.
    let upto = steps.iter().position(|s| !s.passed).map_or(steps.len(), |p| p + 1);
    let mut first_moved: Option<FirstMoved> = None;
    if let Some(base) = steps.first() {
        'steps: for s in &steps[..upto] {
            for t in &THRESHOLDS {
                let at_least = if t.name == "machine_cpu_cores" { 0.75 * cores } else { t.at_least };
                let (Some(from), Some(to)) = ((t.get)(base), (t.get)(s)) else { continue };
                if to >= at_least && to >= from * t.times_base && (t.times_base <= 1.0 || to > from) {
                    first_moved = Some(FirstMoved {
                        metric: t.name.into(),
                        step: s.step,
                        offered_events_per_s: s.offered_events_per_s,
                        from,
                        to,
                    });
                    break 'steps;
                }
            }
            if let Some(m) = stage_moved(base, s) {
                first_moved = Some(m);
                break 'steps;
            }
        }
        // A failing step always names something: what grew most on the
        // way to it.
        if first_moved.is_none() && steps[..upto].last().is_some_and(|s| !s.passed) {
            first_moved = grew_most(base, &steps[upto - 1]);
        }
    }
    ModeRun {
        mode: mode.into(),
        workload: args.workload.name.clone(),
        arrivals: args.arrivals.name().into(),
        connections: args.connections,
        slo_p99_ms: slo_ms,
        knee_events_per_s: knee.map(|k| steps[k].achieved_events_per_s),
        knee_offered_events_per_s: knee.map(|k| steps[k].offered_events_per_s),
        knee_reason,
        first_moved,
        steps,
        trials_per_step: judge_rule(args).0,
        judge: judge_rule(args).1,
        warmup: warmup.map(|w| WarmupReport {
            seconds: w.seconds,
            offered_events_per_s: w.offered_events_per_s,
            achieved_events_per_s: w.achieved_events_per_s,
            latency_us: w.latency_us,
            machine_stalls: w.machine_stalls,
        }),
        overload: None,
    }
}

/// The single-run JSON: one step with its mode and workload.
#[derive(Debug, serde::Serialize)]
pub struct SingleRun<'a> {
    pub mode: &'a str,
    pub workload: &'a str,
    pub arrivals: &'a str,
    pub connections: u32,
    #[serde(flatten)]
    pub step: &'a StepReport,
}

/// The JSON document of a run: a single step, one mode's ramp, or a comparison.
pub fn to_json(outcome: &Outcome, ramp: bool) -> Result<String, String> {
    let r = match (&outcome.comparison, outcome.runs.as_slice()) {
        (Some(c), _) => serde_json::to_string_pretty(c),
        (None, [run]) if !ramp && run.steps.len() == 1 && run.overload.is_none() => {
            serde_json::to_string_pretty(&SingleRun {
                mode: &run.mode,
                workload: &run.workload,
                arrivals: &run.arrivals,
                connections: run.connections,
                step: &run.steps[0],
            })
        }
        (None, [run]) => serde_json::to_string_pretty(run),
        (None, runs) => serde_json::to_string_pretty(runs),
    };
    r.map_err(|e| e.to_string())
}

/// The terminal summary.
pub fn summary(outcome: &Outcome) -> String {
    let mut out = String::new();
    // Side by side: one row per mode, the knee's figures and the ratio of
    // the first mode's knee to this one's.
    let first_knee = outcome.runs.first().and_then(|r| r.knee_events_per_s);
    out += &format!(
        "{:<26} {:>12} {:>10} {:>10} {:>8}  {}\n",
        "mode", "knee ev/s", "p50 ms", "p99 ms", "ratio", "first to move"
    );
    for run in &outcome.runs {
        let at_knee = run.steps.iter().find(|s| Some(s.offered_events_per_s) == run.knee_offered_events_per_s);
        let ms = |us: u64| format!("{:.2}", us as f64 / 1e3);
        let ratio = match (first_knee, run.knee_events_per_s) {
            (Some(a), Some(b)) if b > 0.0 => format!("{:.1}x", a / b),
            _ => "-".into(),
        };
        out += &format!(
            "{:<26} {:>12} {:>10} {:>10} {:>8}  {}\n",
            run.mode,
            run.knee_events_per_s.map_or("none".into(), human),
            at_knee.map_or("-".into(), |s| ms(s.latency_us.p50)),
            at_knee.map_or("-".into(), |s| ms(s.latency_us.p99)),
            ratio,
            run.first_moved.as_ref().map_or("-".into(), |m| format!(
                "{} at {}/s ({:.3} -> {:.3})",
                m.metric,
                human(m.offered_events_per_s),
                m.from,
                m.to
            )),
        );
    }
    for run in &outcome.runs {
        if let Some(o) = &run.overload {
            out += &format!(
                "{}: overload {:.1}x the knee: offered {}/s, goodput {}/s = {:.1}% of the knee's {}/s, BUSY {}/s, admitted p99 {:.2} ms (SLO {} ms): {}\n",
                run.mode,
                o.factor,
                human(o.offered_events_per_s),
                human(o.goodput_events_per_s),
                o.goodput_over_knee * 100.0,
                human(o.knee_events_per_s),
                o.busy_replies_per_s.map_or("-".into(), human),
                o.admitted_p99_us as f64 / 1e3,
                o.slo_p99_ms,
                if o.holds { "holds" } else { "does not hold" },
            );
        }
    }
    for run in &outcome.runs {
        if let Some(w) = &run.warmup {
            out += &format!(
                "{}: warm-up {:.1} s at {}/s (not counted): p99 {:.2} ms\n",
                run.mode,
                w.seconds,
                human(w.offered_events_per_s),
                w.latency_us.p99 as f64 / 1e3
            );
        }
        if run.trials_per_step > 1 {
            out += &format!("{}: each step judged on the median of {} trials\n", run.mode, run.trials_per_step);
        }
    }
    for run in &outcome.runs {
        out += &fanout::summary(run);
    }
    for run in &outcome.runs {
        if let Some(r) = &run.knee_reason {
            out += &format!("{}: the step above the knee failed {r}\n", run.mode);
        }
    }
    if let Some(c) = &outcome.comparison {
        for r in &c.ratios {
            out += &format!("knee ratio {}: {}\n", r.modes, r.knee_ratio.map_or("-".into(), |x| format!("{x:.1}x")));
        }
    }
    out.trim_end().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ramp(from: f64, max: f64) -> RampArgs {
        RampArgs {
            from,
            factor: 1.1,
            coarse: 2.0,
            max,
            step: Duration::from_secs(1),
            steps_max: 100,
            trials: 3,
            warmup: Duration::from_secs(2),
        }
    }

    /// The rates a ramp offers against a server that keeps up to `capacity`.
    fn climb(r: &RampArgs, capacity: f64) -> Vec<f64> {
        let mut ladder = Ladder::new(r);
        let mut rate = r.from;
        let mut offered = vec![rate];
        while let Some(next) = ladder.next(rate, rate <= capacity) {
            rate = next;
            offered.push(rate);
            assert!(offered.len() < 100, "{offered:?}");
        }
        offered
    }

    #[test]
    fn the_ramp_climbs_coarse_then_fine_to_the_knee() {
        let offered = climb(&ramp(200_000.0, 1e8), 5_000_000.0);
        // 0.2, 0.4, 0.8, 1.6, 3.2, 6.4 (fails), then 3.2 x 1.1^k up to the
        // first above 5M.
        assert_eq!(&offered[..6], &[200_000.0, 400_000.0, 800_000.0, 1_600_000.0, 3_200_000.0, 6_400_000.0]);
        let fine = &offered[6..];
        assert!((fine[0] - 3_520_000.0).abs() < 1.0, "{offered:?}");
        assert!(fine.windows(2).all(|w| (w[1] / w[0] - 1.1).abs() < 1e-9), "{offered:?}");
        let last = *fine.last().unwrap();
        assert!(last > 5_000_000.0 && last / 1.1 <= 5_000_000.0, "{offered:?}");
    }

    #[test]
    fn the_ramp_comes_down_when_the_first_step_fails() {
        let offered = climb(&ramp(200_000.0, 1e8), 30_000.0);
        assert_eq!(&offered[..4], &[200_000.0, 100_000.0, 50_000.0, 25_000.0]);
        // Then up from 25k in fine steps to the first above 30k.
        assert_eq!(offered.len(), 4 + 2, "{offered:?}");
        assert!(*offered.last().unwrap() > 30_000.0);
        // Nothing ever passes: it stops at the floor.
        let offered = climb(&ramp(200_000.0, 1e8), 0.0);
        assert!(*offered.last().unwrap() >= RAMP_FLOOR && offered.len() < 12, "{offered:?}");
    }

    fn args() -> LoadArgs {
        LoadArgs {
            workload: WorkloadSpec::standard(),
            arrivals: Arrivals::Constant,
            rate: 1.0,
            duration: Duration::from_secs(1),
            ramp: None,
            modes: vec!["sharded".into()],
            target: None,
            target_metrics: None,
            server: ServerArgs {
                exe: PathBuf::new(),
                shards: None,
                fsync: None,
                io_workers: 1,
                subscriber_push_interval_ms: None,
            },
            connections: 8,
            batch_events: 16,
            window_batches: 1,
            queue_delay_target: None,
            watch_hunts: 0,
            fanout: None,
            target_ws: None,
            slo_p99: Duration::from_millis(10),
            client_workers: 1,
            tick: Duration::from_micros(200),
            linger: Duration::from_micros(1000),
            drain_timeout: Duration::from_secs(1),
            progress: false,
            overload: None,
        }
    }

    fn step(i: u32, offered: f64, achieved: f64, p99_us: u64, busy: f64) -> StepReport {
        let lat = LatencyUs { p50: p99_us / 2, p99: p99_us, p999: p99_us, max: p99_us };
        StepReport {
            step: i,
            offered_events_per_s: offered,
            achieved_events_per_s: achieved,
            seconds: 1.0,
            events_offered: offered as u64,
            events_sent: offered as u64,
            events_acked: achieved as u64,
            latency_us: lat,
            admitted_latency_us: lat,
            send_lag_us: lat,
            update_latency_us: None,
            updates_measured: 0,
            update_gaps: 0,
            events_refused: 0,
            passed: achieved >= KEEP_UP * offered && p99_us <= 10_000,
            failed_because: Some(format!("p99 {:.1} ms", p99_us as f64 / 1e3)),
            client_cpu_cores: 0.1,
            pacer_stall_max_us: 0,
            pacer_stalls: 0,
            server: Some(model::ServerStep {
                worker_busy_ratio: busy,
                schedule_latency_p99_us: Some(100.0),
                ..Default::default()
            }),
            latency_breakdown: Vec::new(),
            busy_replies_per_s: None,
            machine_stalls: MachineStalls::default(),
            tail_cause: None,
            trials: Vec::new(),
            fanout: None,
        }
    }

    #[test]
    fn the_knee_is_the_highest_passing_step_and_names_what_moved() {
        // Run in ramp order: coarse up, a failure, fine steps.
        let steps = vec![
            step(0, 1e6, 1e6, 2000, 0.1),
            step(1, 2e6, 2e6, 2500, 0.3),
            step(2, 4e6, 3e6, 90_000, 0.95),
            step(3, 2.2e6, 2.2e6, 3000, 0.55),
            step(4, 2.42e6, 2.42e6, 12_000, 0.6),
        ];
        let run = analyse("sharded", &args(), None, steps);
        let offered: Vec<f64> = run.steps.iter().map(|s| s.offered_events_per_s).collect();
        assert_eq!(offered, [1e6, 2e6, 2.2e6, 2.42e6, 4e6]);
        assert_eq!(run.knee_events_per_s, Some(2.2e6));
        assert_eq!(run.knee_offered_events_per_s, Some(2.2e6));
        let reason = run.knee_reason.unwrap();
        assert!(reason.contains("2.42M/s") && reason.contains("p99 12.0 ms"), "{reason}");
        // Worker busy crossed 0.5 first, at 2.2M offered.
        let moved = run.first_moved.unwrap();
        assert_eq!((moved.metric.as_str(), moved.step), ("worker_busy_ratio", 3));
        assert_eq!((moved.from, moved.to), (0.1, 0.55));
    }

    /// `s` with server stages at these p99s (cumulative from the read, us;
    /// p50 a tenth) and the breakdown they give.
    fn staged(mut s: StepReport, p99s: [f64; 6]) -> StepReport {
        let stages = scrape::STAGES
            .iter()
            .zip(p99s)
            .map(|(stage, p99)| model::StageLatency {
                stage: stage.to_string(),
                events: 100,
                p50_us: p99 / 10.0,
                p99_us: p99,
            })
            .collect();
        let server = s.server.as_mut().expect("a server");
        server.stages = stages;
        s.latency_breakdown = model::LatencyBreakdown::of_step(&s.latency_us, &s.send_lag_us, s.server.as_ref());
        s
    }

    #[test]
    fn a_failing_step_below_saturation_names_the_stage_that_grew_first() {
        // Nothing of THRESHOLDS moves (busy 0.1-0.2, no queue, no BUSY).
        let quiet = [20.0, 30.0, 60.0, 80.0, 400.0, 450.0];
        let mut steps = vec![staged(step(0, 1e6, 1e6, 2000, 0.1), quiet)];
        // At 2M the sync's share doubles past 250 us: it moved first,
        // before the step at 4M failed on it.
        steps.push(staged(step(1, 2e6, 2e6, 3000, 0.1), [20.0, 30.0, 60.0, 80.0, 1_400.0, 1_450.0]));
        steps.push(staged(step(2, 4e6, 4e6, 12_000, 0.2), [20.0, 30.0, 60.0, 80.0, 11_000.0, 11_100.0]));
        let run = analyse("sharded", &args(), None, steps);
        let moved = run.first_moved.expect("a failing step names what moved");
        assert_eq!((moved.metric.as_str(), moved.step), ("stage_synced_p99_us", 1));
        assert_eq!((moved.from, moved.to), (320.0, 1_320.0));
        let b = &run.steps[2].latency_breakdown[1];
        assert_eq!(
            b.line(),
            "p99 12.000 ms = send lag 12.000 + decoded 0.020 + admitted 0.010 + applied 0.030 + written 0.020 + synced 10.920 + acknowledged 0.100 + client+network 0.000"
        );

        // Nothing grew on the server: the generator's side is named, with
        // the measure that points there.
        let mut calm = step(1, 2e6, 2e6, 30_000, 0.1);
        calm.send_lag_us = LatencyUs { p50: 100, p99: 25_000, p999: 26_000, max: 27_000 };
        let mut base = step(0, 1e6, 1e6, 2000, 0.1);
        base.send_lag_us = LatencyUs { p50: 100, p99: 300, p999: 400, max: 500 };
        let run = analyse("sharded", &args(), None, vec![staged(base, quiet), staged(calm, quiet)]);
        let moved = run.first_moved.expect("named");
        assert_eq!((moved.metric.as_str(), moved.step, moved.from, moved.to), ("send_lag_p99_us", 1, 300.0, 25_000.0));

        // Without any server figures, a lone failing step still names one.
        let mut alone = step(0, 1e6, 1e6, 30_000, 0.1);
        alone.server = None;
        let moved = analyse("sharded", &args(), None, vec![alone]).first_moved.expect("named");
        assert_eq!(moved.metric, "send_lag_p99_us");
        // A run that never failed may name nothing.
        assert!(analyse("sharded", &args(), None, vec![step(0, 1e6, 1e6, 2000, 0.1)]).first_moved.is_none());
    }

    #[test]
    fn the_summary_is_a_side_by_side_table() {
        let a = analyse("sharded", &args(), None, vec![step(0, 4e6, 4e6, 3000, 0.3), step(1, 8e6, 5e6, 90_000, 0.9)]);
        let b = analyse("task-per-event", &args(), None, vec![step(0, 1e5, 1e5, 4000, 0.7)]);
        let runs = vec![a, b];
        let comparison = Some(compare(&runs, &args()));
        let text = summary(&Outcome { runs, comparison });
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("mode") && lines[0].contains("ratio"), "{text}");
        assert!(lines[1].starts_with("sharded") && lines[1].contains("4.00M") && lines[1].contains("1.0x"), "{text}");
        assert!(lines[2].starts_with("task-per-event") && lines[2].contains("100k") && lines[2].contains("40.0x"));
        assert!(lines[2].contains("worker_busy_ratio"), "{text}");
        assert!(text.contains("knee ratio sharded / task-per-event: 40.0x"), "{text}");
    }

    #[test]
    fn the_knee_reason_names_a_stall_of_the_generator() {
        let mut above = step(1, 2e6, 2e6, 40_000, 0.3);
        (above.pacer_stall_max_us, above.pacer_stalls) = (28_400, 2);
        let run = analyse("sharded", &args(), None, vec![step(0, 1e6, 1e6, 2000, 0.1), above]);
        let reason = run.knee_reason.unwrap();
        assert!(reason.ends_with("p99 40.0 ms [the generator stalled 2 times, up to 28.4 ms]"), "{reason}");
        // A step without stalls says nothing of them.
        let mut quiet = step(0, 1e6, 1e6, 2000, 0.1);
        quiet.pacer_stall_max_us = 4_900;
        assert_eq!(stall_note(&quiet), "");
        (quiet.pacer_stall_max_us, quiet.pacer_stalls) = (5_100, 1);
        assert_eq!(stall_note(&quiet), " [the generator stalled once, 5.1 ms]");
    }

    /// A trial as `run_step` reports it: a step of one trial.
    fn trial(i: u32, rate: f64, achieved: f64, p99_us: u64, stall_us: u64) -> StepReport {
        let mut s = step(i, rate, achieved, p99_us, 0.2);
        s.machine_stalls = MachineStalls { max_us: stall_us, count: u64::from(stall_us > 0), lost_us: stall_us };
        s.tail_cause = (!s.passed).then(|| format!("tail of trial {i}"));
        s.send_lag_us = LatencyUs { p50: 100, p99: 200, p999: 300, max: 400 };
        s.trials = vec![TrialReport {
            trial: 0,
            scheduled_events_per_s: rate,
            achieved_events_per_s: achieved,
            latency_us: s.latency_us,
            send_lag_us: s.send_lag_us,
            admitted_latency_us: s.admitted_latency_us,
            pacer_stall_max_us: 0,
            machine_stalls: s.machine_stalls,
            client_cpu_cores: 0.1,
            server_cpu_cores: None,
            passed: s.passed,
            failed_because: s.failed_because.clone(),
            tail_cause: s.tail_cause.clone(),
        }];
        s
    }

    const SLO: Duration = Duration::from_millis(10);

    #[test]
    fn one_stalled_trial_of_three_does_not_fail_a_step() {
        // The second trial met a 13.3 ms stop of the machine.
        let trials =
            vec![trial(7, 1e6, 1e6, 2_000, 0), trial(8, 1e6, 1e6, 12_600, 13_300), trial(9, 1e6, 1e6, 3_000, 0)];
        let s = judge(2, 1e6, trials, SLO, None, 2.0);
        assert!(s.passed, "{s:?}");
        assert_eq!((s.step, s.failed_because, s.tail_cause), (2, None, None));
        // The judged figures are the medians; every trial is kept.
        assert_eq!(s.latency_us.p99, 3_000);
        assert_eq!(s.latency_us.p50, 1_500);
        assert_eq!(s.trials.len(), 3);
        assert_eq!(s.trials.iter().map(|t| t.trial).collect::<Vec<_>>(), [0, 1, 2]);
        assert_eq!(s.trials[1].latency_us.p99, 12_600);
        assert!(!s.trials[1].passed);
        assert_eq!(s.machine_stalls, MachineStalls { max_us: 13_300, count: 1, lost_us: 13_300 });
        assert_eq!(s.events_offered, 3_000_000);
        // A single trial (the old rule) would have failed on it.
        let one = judge(2, 1e6, vec![trial(8, 1e6, 1e6, 12_600, 13_300)], SLO, None, 2.0);
        assert!(!one.passed);
    }

    #[test]
    fn two_bad_trials_of_three_fail_a_step_and_name_the_tail() {
        let trials = vec![trial(0, 1e6, 1e6, 14_000, 0), trial(1, 1e6, 1e6, 2_000, 0), trial(2, 1e6, 1e6, 12_000, 0)];
        let s = judge(0, 1e6, trials, SLO, None, 2.0);
        assert!(!s.passed);
        assert_eq!(s.latency_us.p99, 12_000);
        let why = s.failed_because.unwrap();
        assert!(why.contains("median p99 12.0 ms") && why.contains("14.0, 2.0, 12.0 ms"), "{why}");
        // The tail's cause is the median trial's.
        assert_eq!(s.tail_cause.as_deref(), Some("tail of trial 2"));
        // Achieved: the median, against the arrivals.
        let trials = vec![trial(0, 1e6, 0.5e6, 2_000, 0), trial(1, 1e6, 1e6, 2_000, 0), trial(2, 1e6, 0.9e6, 2_000, 0)];
        let s = judge(0, 1e6, trials, SLO, None, 2.0);
        assert!(!s.passed && s.achieved_events_per_s == 0.9e6, "{s:?}");
        assert!(s.failed_because.unwrap().contains("median achieved 900k/s"));
        // Failing without a failing median trial still names a cause.
        assert!(s.tail_cause.is_some());
        // Refusals, and a trial that ended the run, fail the step whatever the medians.
        let mut refused = trial(1, 1e6, 1e6, 2_000, 0);
        refused.events_refused = 5;
        let s =
            judge(0, 1e6, vec![trial(0, 1e6, 1e6, 2_000, 0), refused, trial(2, 1e6, 1e6, 2_000, 0)], SLO, None, 2.0);
        assert!(!s.passed && s.failed_because.unwrap().contains("5 events refused"));
        let s = judge(0, 1e6, vec![trial(0, 1e6, 1e6, 2_000, 0)], SLO, Some("a connection failed: x"), 2.0);
        assert!(!s.passed && s.tail_cause.unwrap().starts_with("the pipeline"));
    }

    /// A ramp over judged steps against a server that keeps up to 5 M/s,
    /// on a machine that stalls once, in trial `stalled` of the 2 M/s step.
    fn ramp_with_a_stall(trials: u32, stalled: u32) -> ModeRun {
        let r = ramp(1e6, 1e8);
        let mut ladder = Ladder::new(&r);
        let (mut rate, mut steps) = (r.from, Vec::new());
        for k in 0..40u32 {
            let p99 = |t: u32| match rate {
                _ if rate > 5e6 => 20_000,
                _ if rate == 2e6 && t == stalled => 13_000,
                _ => 3_000,
            };
            let ts = (0..trials).map(|t| trial(k * trials + t, rate, rate, p99(t), 0)).collect();
            let s = judge(k, rate, ts, SLO, None, 2.0);
            let passed = s.passed;
            steps.push(s);
            match ladder.next(rate, passed) {
                Some(next) => rate = next,
                None => break,
            }
        }
        analyse("sharded", &args(), None, steps)
    }

    #[test]
    fn one_stall_cannot_cap_the_knee() {
        // Judged on three trials, wherever the stall lands: 1, 2, 4, 8
        // (fails), then 4 x 1.1^k up to the first above 5 M.
        for stalled in 0..3 {
            let run = ramp_with_a_stall(3, stalled);
            let knee = run.knee_offered_events_per_s.unwrap();
            assert!((knee - 4.84e6).abs() < 1.0, "stall in trial {stalled}: {knee}");
        }
        // One trial per step (the old rule): the stalled 2 M/s step fails
        // and the ramp climbs from 1 M/s in fine steps below it.
        let run = ramp_with_a_stall(1, 0);
        let knee = run.knee_offered_events_per_s.unwrap();
        assert!(knee < 2e6, "{knee}");
    }

    #[test]
    fn the_warm_up_is_reported_apart_and_never_judged() {
        // A cold start: the warm-up at the first rate fails badly.
        let warmup = step(0, 1e6, 0.6e6, 50_000, 0.1);
        let steps = vec![step(0, 1e6, 1e6, 2000, 0.1), step(1, 2e6, 2e6, 2500, 0.3), step(2, 4e6, 3e6, 90_000, 0.9)];
        let run = analyse("sharded", &args(), Some(warmup), steps);
        assert_eq!(run.steps.len(), 3);
        assert_eq!(run.knee_offered_events_per_s, Some(2e6));
        assert!(run.knee_reason.unwrap().contains("4.00M/s"));
        let w = run.warmup.unwrap();
        assert_eq!((w.offered_events_per_s, w.latency_us.p99), (1e6, 50_000));
        assert_eq!(run.trials_per_step, 1);
        // With a ramp, the rule is stated.
        let mut a = args();
        a.ramp = Some(ramp(1e6, 1e8));
        let run = analyse("sharded", &a, None, vec![]);
        assert_eq!(run.trials_per_step, 3);
        assert!(run.judge.starts_with("median of 3 trials of 1 s each"), "{}", run.judge);
        assert!(run.judge.contains("warm-up of 2 s"), "{}", run.judge);
        assert_eq!(run.warmup, None);
    }

    #[test]
    fn no_passing_step_means_no_knee() {
        let run = analyse("x", &args(), None, vec![step(0, 1e6, 1e5, 50_000, 0.2)]);
        assert_eq!(run.knee_events_per_s, None);
        let reason = run.knee_reason.unwrap();
        assert!(reason.contains("1.00M/s offered") && reason.contains("p99 50.0 ms"), "{reason}");
        // A failing step always names something: here its largest part,
        // the generator's send lag (the fixture's equals its latency).
        assert_eq!(run.first_moved.map(|m| m.metric).as_deref(), Some("send_lag_p99_us"));
    }

    #[test]
    fn answers_take_chunks_whole_or_in_part() {
        let chunk =
            |start_seq, end_seq| Chunk { start_seq, end_seq, intended_ns: start_seq, handed_ns: start_seq, step: 0 };
        let mut chunks: VecDeque<Chunk> = [chunk(1, 5), chunk(5, 9)].into();
        let mut seen = Vec::new();
        answered(&mut chunks, 7, |c, n| seen.push((c.start_seq, n)));
        assert_eq!(seen, [(1, 4), (5, 2)]);
        assert_eq!((chunks[0].start_seq, chunks[0].end_seq, chunks[0].intended_ns), (7, 9, 5));
        // Answers below every chunk (the setup's) take nothing.
        let mut none = VecDeque::from([chunk(10, 12)]);
        answered(&mut none, 10, |_, _| panic!("nothing is answered"));
        assert_eq!(none.len(), 1);
    }

    #[test]
    fn the_ramp_stops_at_its_maximum() {
        assert_eq!(climb(&ramp(5_000.0, 20_000.0), 1e9), [5_000.0, 10_000.0, 20_000.0]);
        assert_eq!(climb(&ramp(5_000.0, 15_000.0), 1e9), [5_000.0, 10_000.0, 15_000.0]);
    }
}
