//! `trove bench net`: the workload end to end over loopback TCP, through
//! the client SDK, at the maximum rate the producers can offer (closed
//! loop: each connection keeps its window of batches in flight).
//!
//! Unless `--target` names a running server, the engine and its data plane
//! start in this process on 127.0.0.1 with a fresh data directory, so the
//! client and the server share the machine's cores, as they would on one
//! host. Events are generated before the timer starts (the generator is not
//! what is measured); the timer covers sending, applying, journaling under
//! the fsync policy and receiving every acknowledgement.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;
use trove_client::{ClientConfig, DEDUP_WINDOW_EVENTS, Producer, SendError};
use trove_hunt::{HuntEvent, TreasureHunt};
use trove_server::{Server, ServerConfig};
use trove_shard::{Engine, EngineConfig, FsyncPolicy, JournalConfig, Mode};
use trove_workload::{Generator, WorkloadSpec};

use crate::engine::LatencyUs;

#[derive(Debug, Clone)]
pub struct NetBenchArgs {
    pub mode: Mode,
    pub shards: usize,
    /// `None`: in memory.
    pub fsync: Option<FsyncPolicy>,
    pub data: Option<PathBuf>,
    pub connections: u32,
    pub events: u64,
    pub batch_events: u32,
    pub window_batches: u32,
    pub linger: Duration,
    pub outcomes: bool,
    pub io_workers: usize,
    pub client_workers: usize,
    pub target: Option<SocketAddr>,
    /// Presented by the producers (a --target with authentication on).
    pub token: Option<trove_client::Token>,
    /// The producers connect with TLS.
    pub tls: Option<trove_client::ClientTls>,
    /// The in-process server speaks TLS.
    pub server_tls: Option<trove_server::tls::ServerTls>,
}

#[derive(Debug, Serialize)]
pub struct NetReport {
    pub mode: &'static str,
    pub workload: String,
    /// `none`, or the fsync policy of the journal; `unknown` with --target.
    pub journal: String,
    pub shards: usize,
    pub connections: u32,
    pub batch_events: u32,
    pub window_batches: u32,
    pub outcomes: bool,
    pub events_sent: u64,
    pub events_acked: u64,
    pub seconds: f64,
    pub acked_events_per_s: f64,
    /// From the batch's first event handed to the SDK to its
    /// acknowledgement reaching the client, one count per event.
    pub latency_us: LatencyUs,
    pub busy: u64,
    pub reconnects: u64,
    /// CPU time of this process (client and, without --target, server)
    /// per acknowledged event, over the measured run.
    pub process_cpu_ns_per_event: f64,
    /// Per shard: busy time over busy plus idle time (in-process server).
    pub shard_busy_ratio: Vec<f64>,
}

/// A connection's events: its hunts' setup, then the measured stream.
struct Script {
    setup: Vec<HuntEvent>,
    measured: Vec<HuntEvent>,
}

fn scripts(spec: &WorkloadSpec, parts: u32, events: u64) -> Vec<Script> {
    (0..parts)
        .map(|part| {
            let mut g = Generator::partition(spec, part, parts);
            let setup = g.setup();
            let n = events / u64::from(parts) + u64::from(u64::from(part) < events % u64::from(parts));
            let measured = (0..n).map(|_| g.next_event()).collect();
            Script { setup, measured }
        })
        .collect()
}

/// What one connection measured.
struct ConnResult {
    sent: u64,
    acked: u64,
    latency: Histogram<u64>,
    busy: u64,
    reconnects: u64,
}

async fn run_connection(
    addr: SocketAddr,
    args: NetBenchArgs,
    script: Script,
    start: Arc<Barrier>,
    setup_done: Arc<Barrier>,
) -> Result<ConnResult, String> {
    let config = ClientConfig {
        batch_events_max: args.batch_events,
        window_batches: args.window_batches,
        // A closed-loop producer measures throughput: its window is what
        // --batch and --window ask for (a bulk load's configuration), not
        // the SDK's latency default.
        unacked_events_max: args.batch_events.saturating_mul(args.window_batches).min(DEDUP_WINDOW_EVENTS),
        linger: args.linger,
        want_outcomes: args.outcomes,
        token: args.token.clone(),
        tls: args.tls.clone(),
        ..ClientConfig::new(addr.to_string())
    };
    let (mut producer, mut acks) = match Producer::<TreasureHunt>::connect(config).await {
        Ok(p) => p,
        Err(e) => {
            // The main thread and the other connections wait at both
            // barriers: pass them, so that the error is reported instead
            // of the run hanging (a refused TLS certificate, say).
            tokio::task::block_in_place(|| {
                setup_done.wait();
                start.wait();
            });
            return Err(format!("connecting to {addr}: {e}"));
        }
    };
    // Batch open times, by first sequence number, for the latency figure.
    let opened: Arc<Mutex<VecDeque<(u64, Instant)>>> = Arc::default();
    // Acknowledgements of sequences from here on are measured.
    let measure_from = Arc::new(AtomicU64::new(u64::MAX));
    let reader = {
        let opened = opened.clone();
        let measure_from = measure_from.clone();
        tokio::spawn(async move {
            let mut latency = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds");
            let mut acked = 0u64;
            while let Some(ack) = acks.next().await {
                let ack = ack.map_err(|e| format!("acknowledgements: {e}"))?;
                let now = Instant::now();
                let mut opened = opened.lock().map_err(|_| "poisoned")?;
                while let Some(&(seq, at)) = opened.front() {
                    if seq >= ack.first_seq + u64::from(ack.count) {
                        break;
                    }
                    opened.pop_front();
                    if seq >= ack.first_seq && ack.first_seq >= measure_from.load(Relaxed) {
                        let us = now.duration_since(at).as_micros() as u64;
                        let _ = latency.record_n(us.max(1), u64::from(ack.count));
                    }
                }
                drop(opened);
                if ack.first_seq >= measure_from.load(Relaxed) {
                    acked += u64::from(ack.count);
                }
            }
            Ok::<_, String>((acked, latency))
        })
    };
    send_all(&mut producer, script.setup, &opened).await?;
    // Every connection's setup is acknowledged before anyone measures.
    tokio::task::block_in_place(|| setup_done.wait());
    measure_from.store(producer.next_seq(), Relaxed);
    tokio::task::block_in_place(|| start.wait());
    let sent = script.measured.len() as u64;
    send_all(&mut producer, script.measured, &opened).await?;
    let stats = producer.stats();
    producer.close().await.map_err(|e| e.to_string())?;
    let (acked, latency) = reader.await.map_err(|e| e.to_string())??;
    Ok(ConnResult { sent, acked, latency, busy: stats.busy, reconnects: stats.reconnects })
}

/// Sends every event (waiting when the window is full), noting when each
/// batch opens, then waits for every acknowledgement.
async fn send_all(
    producer: &mut Producer<TreasureHunt>,
    events: Vec<HuntEvent>,
    opened: &Mutex<VecDeque<(u64, Instant)>>,
) -> Result<(), String> {
    for mut e in events {
        if producer.open_events() == 0 {
            let seq = producer.next_seq();
            opened.lock().map_err(|_| "poisoned")?.push_back((seq, Instant::now()));
        }
        loop {
            match producer.send(e) {
                Ok(_) => break,
                Err(SendError::Full(back)) => {
                    e = back;
                    producer.ready().await.map_err(|err| err.to_string())?;
                }
                Err(SendError::Closed(_, err)) => return Err(err.to_string()),
            }
        }
    }
    producer.drain().await.map_err(|e| e.to_string())
}

pub fn run(spec: &WorkloadSpec, args: &NetBenchArgs) -> Result<NetReport, String> {
    spec.validate().map_err(|e| e.to_string())?;
    if args.connections == 0 || args.connections > spec.hunts {
        return Err(format!("--connections must be in 1..={} (each owns some hunts)", spec.hunts));
    }
    eprintln!("trove bench net: generating {} events for {} connections", args.events, args.connections);
    let scripts = scripts(spec, args.connections, args.events);

    // The server, unless one is given.
    let mut scratch = None;
    let mut local = None;
    let addr = match args.target {
        Some(a) => a,
        None => {
            let journal = match args.fsync {
                Some(policy) => {
                    let dir = match &args.data {
                        Some(d) => d.clone(),
                        None => {
                            let d = std::env::temp_dir().join(format!("trove-bench-net-{}", std::process::id()));
                            let _ = std::fs::remove_dir_all(&d);
                            scratch = Some(d.clone());
                            d
                        }
                    };
                    Some(JournalConfig::new(dir, policy))
                }
                None => None,
            };
            let engine = EngineConfig { mode: args.mode, shards: args.shards, journal, ..EngineConfig::default() };
            let engine = Arc::new(Engine::<TreasureHunt>::start(engine).map_err(|e| e.to_string())?);
            let server = ServerConfig {
                tcp_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
                ws_addr: None,
                io_workers: args.io_workers,
                connections_max: 4096,
                // Every connection comes from this process's one address.
                connections_per_address_max: 4096,
                tls: args.server_tls.clone(),
                ..ServerConfig::default()
            };
            let server = Server::start(engine, server).map_err(|e| e.to_string())?;
            let a = server.tcp_addr();
            local = Some(server);
            a
        }
    };

    let runtime = crate::load::client_runtime(args.client_workers)?;
    let n = args.connections as usize;
    let start = Arc::new(Barrier::new(n + 1));
    let setup_done = Arc::new(Barrier::new(n + 1));
    let handles: Vec<_> = scripts
        .into_iter()
        .map(|s| runtime.spawn(run_connection(addr, args.clone(), s, start.clone(), setup_done.clone())))
        .collect();
    setup_done.wait();
    eprintln!("trove bench net: setup acknowledged; measuring");
    let shard_before = local.as_ref().map(|s| s.engine().metrics());
    let cpu_before = crate::load::cpu_time();
    let began = Instant::now();
    start.wait();
    let results: Vec<ConnResult> = runtime.block_on(async {
        let mut out = Vec::new();
        for h in handles {
            out.push(h.await.map_err(|e| e.to_string())??);
        }
        Ok::<_, String>(out)
    })?;
    let seconds = began.elapsed().as_secs_f64();
    let cpu = crate::load::cpu_time().saturating_sub(cpu_before);
    let shard_busy_ratio = match (&local, shard_before) {
        (Some(server), Some(before)) => {
            let after = server.engine().metrics();
            after
                .shards
                .iter()
                .zip(&before.shards)
                .map(|(a, b)| {
                    let busy = a.busy_ns.saturating_sub(b.busy_ns) as f64;
                    let idle = a.idle_ns.saturating_sub(b.idle_ns) as f64;
                    if busy + idle > 0.0 { busy / (busy + idle) } else { 0.0 }
                })
                .collect()
        }
        _ => Vec::new(),
    };
    drop(runtime);
    if let Some(server) = local {
        let engine = server.engine().clone();
        server.shutdown(Duration::from_secs(10));
        if let Ok(engine) = Arc::try_unwrap(engine) {
            engine.shutdown();
        }
    }
    if let Some(d) = scratch {
        let _ = std::fs::remove_dir_all(d);
    }

    let mut latency = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds");
    for r in &results {
        latency.add(&r.latency).map_err(|e| e.to_string())?;
    }
    let sent: u64 = results.iter().map(|r| r.sent).sum();
    let acked: u64 = results.iter().map(|r| r.acked).sum();
    Ok(NetReport {
        mode: args.mode.name(),
        workload: spec.name.clone(),
        journal: match (args.target, args.fsync) {
            (Some(_), _) => "unknown".into(),
            (None, Some(p)) => p.to_string(),
            (None, None) => "none".into(),
        },
        shards: args.shards,
        connections: args.connections,
        batch_events: args.batch_events,
        window_batches: args.window_batches,
        outcomes: args.outcomes,
        events_sent: sent,
        events_acked: acked,
        seconds,
        acked_events_per_s: acked as f64 / seconds,
        latency_us: LatencyUs {
            p50: latency.value_at_quantile(0.50),
            p99: latency.value_at_quantile(0.99),
            p999: latency.value_at_quantile(0.999),
            max: latency.max(),
        },
        busy: results.iter().map(|r| r.busy).sum(),
        reconnects: results.iter().map(|r| r.reconnects).sum(),
        process_cpu_ns_per_event: cpu.as_nanos() as f64 / acked.max(1) as f64,
        shard_busy_ratio,
    })
}

impl std::fmt::Display for NetReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "mode {}: {}, journal {}, {}, batches of {}, window {}, outcomes {}",
            self.mode,
            crate::plural(self.shards as u64, "shard"),
            self.journal,
            crate::plural(self.connections as u64, "connection"),
            self.batch_events,
            self.window_batches,
            self.outcomes
        )?;
        writeln!(
            f,
            "{} of {} events acknowledged in {:.3} s: {:.2} M events/s (workload {})",
            self.events_acked,
            self.events_sent,
            self.seconds,
            self.acked_events_per_s / 1e6,
            self.workload
        )?;
        let l = &self.latency_us;
        writeln!(f, "batch open to ack, us: p50 {} p99 {} p99.9 {} max {}", l.p50, l.p99, l.p999, l.max)?;
        write!(
            f,
            "busy {}; reconnects {}; process CPU {:.0} ns/event; shard busy ratio {:?}",
            self.busy, self.reconnects, self.process_cpu_ns_per_event, self.shard_busy_ratio
        )
    }
}
