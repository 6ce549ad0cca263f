//! `trove bench engine`: the workload through the executor, in-process, at
//! the maximum rate the producers can offer.
//!
//! Producer threads each own a partition of the hunts (so the final state
//! does not depend on how their streams interleave) and stamp their own
//! events with a virtual clock (`ClockMode::Supplied`), so every mode and
//! shard count must print the same state hash. Events are generated before
//! the timer starts; the timer covers submitting, applying and collecting
//! outcomes. Each producer keeps up to `window` batches in flight.

use std::io::Write;
use std::path::PathBuf;
use std::sync::{Barrier, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;
use trove_core::Stamped;
use trove_hunt::{HuntEvent, TreasureHunt};
use trove_shard::{ClockMode, Engine, EngineConfig, JournalConfig, Mode, Producer, SubmitError};
use trove_workload::{Clock, Generator, WorkloadSpec};

#[derive(Debug, Clone)]
pub struct EngineBenchArgs {
    pub mode: Mode,
    pub shards: usize,
    pub producers: u32,
    pub events: u64,
    pub batch_events: usize,
    pub window: usize,
    pub pin_cores: bool,
    pub clock: ClockMode,
    pub journal: Option<JournalConfig>,
    pub ack_log: Option<PathBuf>,
    pub dedup_window: usize,
}

#[derive(Debug, Serialize)]
pub struct LatencyUs {
    pub p50: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
}

#[derive(Debug, Serialize)]
pub struct EngineReport {
    pub mode: &'static str,
    pub workload: String,
    pub shards: usize,
    pub producers: u32,
    pub batch_events: usize,
    pub window_batches: usize,
    pub events: u64,
    pub seconds: f64,
    pub events_per_s: f64,
    /// From `submit` accepting a batch to its outcomes being available to
    /// the producer, per event.
    pub latency_us: LatencyUs,
    pub busy_replies: u64,
    /// `none`, or the fsync policy of the journal.
    pub journal: String,
    /// Time to start the engine, recovery from the data directory included.
    pub start_seconds: f64,
    /// Per shard, over the measured run: busy time over busy plus idle
    /// time. Empty in the per-event modes, which have no shards.
    pub shard_busy_ratio: Vec<f64>,
    /// Per shard, over the measured run: mean events per applied batch.
    /// Empty in the per-event modes (every batch is one event).
    pub shard_mean_batch_events: Vec<f64>,
    pub state_hash: String,
}

/// Batches to submit: the setup (untimed) and the measured events.
struct Script {
    setup: Vec<Vec<Stamped<HuntEvent>>>,
    measured: Vec<Vec<Stamped<HuntEvent>>>,
}

fn script(spec: &WorkloadSpec, part: u32, parts: u32, events: u64, batch: usize) -> Script {
    let mut generator = Generator::partition(spec, part, parts);
    let mut clock = Clock::new((spec.virtual_events_per_s / u64::from(parts)).max(1));
    let setup = clock.stamp(generator.setup()).chunks(batch).map(<[_]>::to_vec).collect();
    let mut measured = Vec::new();
    let mut left = events;
    while left > 0 {
        let n = left.min(batch as u64) as usize;
        let mut b = Vec::with_capacity(n);
        generator.fill(&mut clock, n, &mut b);
        measured.push(b);
        left -= n as u64;
    }
    Script { setup, measured }
}

/// Submits every batch keeping at most `window` in flight; returns a latency
/// histogram (µs, one count per event) when `record` is set.
fn run_batches(
    producer: &mut Producer<TreasureHunt>,
    batches: Vec<Vec<Stamped<HuntEvent>>>,
    window: usize,
    latency: &mut Option<Histogram<u64>>,
    ack_log: Option<&Mutex<std::fs::File>>,
) -> Result<(), String> {
    // Batches complete in submission order, so the acknowledged sequence
    // numbers advance batch by batch from here.
    let mut acked_next = producer.next_seq();
    let id = producer.id();
    let mut collect = |producer: &mut Producer<TreasureHunt>, wait: bool| -> Result<(), String> {
        let completed = if wait {
            producer.complete_timeout(Duration::from_secs(60)).ok_or("no batch completed within 60 s")?
        } else {
            match producer.try_complete() {
                Some(c) => c,
                None => return Ok(()),
            }
        };
        if let Some(h) = latency {
            let us = completed.submitted_at.elapsed().as_micros() as u64;
            h.record_n(us.max(1), completed.outcomes.len() as u64).map_err(|e| e.to_string())?;
        }
        let n = completed.outcomes.len() as u64;
        if let Some(log) = ack_log {
            let mut f = log.lock().map_err(|_| "ack log lock poisoned")?;
            writeln!(f, "{id} {} {}", acked_next, acked_next + n - 1)
                .map_err(|e| format!("writing the ack log: {e}"))?;
        }
        acked_next += n;
        Ok(())
    };
    for batch in batches {
        while producer.in_flight() >= window {
            collect(producer, true)?;
        }
        let mut batch = batch;
        loop {
            match producer.submit(&mut batch) {
                Ok(_) => break,
                Err(SubmitError::Busy) => {
                    if producer.in_flight() > 0 {
                        collect(producer, true)?;
                    } else {
                        std::thread::yield_now();
                    }
                }
                Err(e) => return Err(format!("submit failed: {e:?}")),
            }
        }
        collect(producer, false)?;
    }
    while producer.in_flight() > 0 {
        collect(producer, true)?;
    }
    Ok(())
}

pub fn run(spec: &WorkloadSpec, args: &EngineBenchArgs) -> Result<EngineReport, String> {
    if args.producers == 0 || args.producers > spec.hunts {
        return Err(format!("--producers must be in 1..={} (the workload's hunts)", spec.hunts));
    }
    let config = EngineConfig {
        mode: args.mode,
        shards: args.shards,
        pin_cores: args.pin_cores,
        batch_events_max: args.batch_events,
        // The served default, or room for one batch of the size asked for.
        queue_events_max: EngineConfig::default().queue_events_max.max(args.batch_events),
        clock: args.clock,
        worlds_max: spec.hunts as usize,
        journal: args.journal.clone(),
        dedup_window_events: args.dedup_window,
        ..EngineConfig::default()
    };
    let starting = Instant::now();
    let engine = Engine::<TreasureHunt>::start(config).map_err(|e| e.to_string())?;
    let start_seconds = starting.elapsed().as_secs_f64();
    let ack_log = match &args.ack_log {
        Some(path) => Some(Mutex::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| format!("opening the ack log {}: {e}", path.display()))?,
        )),
        None => None,
    };
    // Producer ids must not repeat across runs on one journal, or the
    // journal could not tell their events apart: number them from the
    // wall clock when journaling.
    let id_base = if args.journal.is_some() {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_micros() as u64) << 8
    } else {
        0
    };
    let parts = args.producers;
    let per_producer = args.events / u64::from(parts);
    let scripts: Vec<Script> = (0..parts)
        .map(|p| {
            let extra = u64::from(p == 0) * (args.events % u64::from(parts));
            script(spec, p, parts, per_producer + extra, args.batch_events)
        })
        .collect();

    let barrier = Barrier::new(parts as usize + 1);
    let mut before = None;
    let (seconds, histograms) = std::thread::scope(|scope| -> Result<(f64, Vec<Histogram<u64>>), String> {
        let handles: Vec<_> = scripts
            .into_iter()
            .zip(0u32..)
            .map(|(s, part)| {
                let (engine, barrier, ack_log) = (&engine, &barrier, ack_log.as_ref());
                scope.spawn(move || -> Result<Histogram<u64>, String> {
                    let mut producer = if id_base == 0 {
                        engine.producer()
                    } else {
                        engine.producer_with_id(id_base + u64::from(part), 1)
                    };
                    run_batches(&mut producer, s.setup, args.window, &mut None, ack_log)?;
                    barrier.wait(); // setup done
                    barrier.wait(); // go
                    let mut h = Some(Histogram::new(3).map_err(|e| e.to_string())?);
                    run_batches(&mut producer, s.measured, args.window, &mut h, ack_log)?;
                    Ok(h.expect("histogram"))
                })
            })
            .collect();
        barrier.wait();
        before = Some(engine.metrics());
        let started = Instant::now();
        barrier.wait();
        let mut histograms = Vec::new();
        for h in handles {
            histograms.push(h.join().map_err(|_| "producer thread panicked")??);
        }
        Ok((started.elapsed().as_secs_f64(), histograms))
    })?;

    let after = engine.metrics();
    let mut before = before.expect("taken after setup");
    if args.mode != Mode::Sharded {
        before.shards.clear();
    }
    let end = engine.shutdown();
    let mut latency = Histogram::<u64>::new(3).map_err(|e| e.to_string())?;
    for h in &histograms {
        latency.add(h).map_err(|e| e.to_string())?;
    }
    Ok(EngineReport {
        mode: args.mode.name(),
        workload: spec.name.clone(),
        shards: args.shards,
        producers: args.producers,
        batch_events: args.batch_events,
        window_batches: args.window,
        events: args.events,
        seconds,
        events_per_s: args.events as f64 / seconds,
        latency_us: LatencyUs {
            p50: latency.value_at_quantile(0.5),
            p99: latency.value_at_quantile(0.99),
            p999: latency.value_at_quantile(0.999),
            max: latency.max(),
        },
        busy_replies: after.busy_replies - before.busy_replies,
        journal: args.journal.as_ref().map_or_else(|| "none".to_string(), |j| j.fsync.to_string()),
        start_seconds,
        shard_busy_ratio: after
            .shards
            .iter()
            .zip(&before.shards)
            .map(|(a, b)| {
                let (busy, idle) = (a.busy_ns - b.busy_ns, a.idle_ns - b.idle_ns);
                let ratio = if busy + idle == 0 { 0.0 } else { busy as f64 / (busy + idle) as f64 };
                (ratio * 1000.0).round() / 1000.0
            })
            .collect(),
        shard_mean_batch_events: after
            .shards
            .iter()
            .zip(&before.shards)
            .map(|(a, b)| {
                let batches = a.batches_applied - b.batches_applied;
                let mean =
                    if batches == 0 { 0.0 } else { (a.events_applied - b.events_applied) as f64 / batches as f64 };
                (mean * 10.0).round() / 10.0
            })
            .collect(),
        state_hash: format!("{:016x}", end.state_hash),
    })
}

impl std::fmt::Display for EngineReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "mode {}: {}, {}, batches of {}, window {}, journal {} (started in {:.2} s)",
            self.mode,
            crate::plural(self.shards as u64, "shard"),
            crate::plural(self.producers as u64, "producer"),
            self.batch_events,
            self.window_batches,
            self.journal,
            self.start_seconds
        )?;
        writeln!(
            f,
            "{} events in {:.3} s: {:.2} M events/s (workload {})",
            self.events,
            self.seconds,
            self.events_per_s / 1e6,
            self.workload
        )?;
        let l = &self.latency_us;
        writeln!(f, "submit to outcome, us: p50 {} p99 {} p99.9 {} max {}", l.p50, l.p99, l.p999, l.max)?;
        writeln!(
            f,
            "busy replies {}; shard busy ratio {:?}; mean batch {:?}",
            self.busy_replies, self.shard_busy_ratio, self.shard_mean_batch_events
        )?;
        write!(f, "state hash {}", self.state_hash)
    }
}
