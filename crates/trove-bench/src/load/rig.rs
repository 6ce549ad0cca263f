//! The client side of a mode's run (`Rig`): the SDK's connections on a
//! runtime, set up and handed to the pacer thread, the subscribers, the
//! machine-stall probe.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use trove_client::{ClientConfig, ClusterConfig, ClusterProducer, Producer};
use trove_hunt::TreasureHunt;
use trove_workload::Generator;

use super::cluster::ClusterTarget;
use super::conn::{AckSource, ChunkTimes, Conn, ConnShared, Sink, lock, read_acks};
use super::fanout::{Fleet, FleetArgs, HuntChoice, SendLog};
use super::latency::histogram;
use super::pacer::{Pacer, StepDone, StepPlan, pacer};
use super::probe::Probe;
use super::{Clock, LoadArgs, say};

/// Client process CPU time.
pub(crate) fn cpu_time() -> Duration {
    // utime + stime of this process from /proc/self/stat, in clock ticks.
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: u64 = [11, 12].iter().filter_map(|&i| fields.get(i)?.parse::<u64>().ok()).sum();
    Duration::from_millis(ticks * 10)
}

/// The runtime the SDK's tasks run on, `workers` threads named
/// `bench-client`.
pub(crate) fn client_runtime(workers: usize) -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .thread_name("bench-client")
        .enable_all()
        .build()
        .map_err(|e| format!("client runtime: {e}"))
}

/// The client side of a mode's run: the SDK's tasks on a runtime, the
/// pacer thread, the subscribers.
pub(super) struct Rig {
    /// Taken by `drop`, which stops the SDK's and the subscriber's tasks.
    pub(super) runtime: Option<tokio::runtime::Runtime>,
    pub(super) plans: Option<mpsc::Sender<StepPlan>>,
    pub(super) replies: mpsc::Receiver<StepDone>,
    pub(super) pacer: Option<std::thread::JoinHandle<Vec<Conn>>>,
    pub(super) shared: Vec<Arc<ConnShared>>,
    /// The subscribers, if any.
    pub(super) fleet: Option<Fleet>,
    pub(super) acked_total: Arc<AtomicU64>,
    pub(super) clock: Clock,
    /// Stalls of the machine over the whole run.
    pub(super) probe: Probe,
    /// The cluster the producers drive through the SDK's routing (a
    /// `--target` in a cluster); `None`: the one node at `addr`.
    pub(super) cluster: Option<ClusterTarget>,
}

impl Rig {
    pub(super) fn start(
        args: &LoadArgs,
        addr: SocketAddr,
        ws: Option<SocketAddr>,
        cluster: Option<ClusterTarget>,
    ) -> Result<Self, String> {
        let runtime = client_runtime(args.client_workers)?;
        let clock = Clock { epoch: Instant::now() };
        let spec = &args.workload;
        // Against a cluster the subscribers spread over its nodes (`start_fleet`).
        let fleet_args = fleet_args(args);
        if let Some(c) = &cluster {
            say(&format!(
                "{addr} is a node of cluster {} ({} partitions over {} nodes): driving it through the SDK's routing",
                c.name,
                c.partitions,
                c.nodes.len()
            ));
        }
        let (hunts, log) = match &fleet_args {
            Some(f) => Fleet::plan(f, spec.hunts, args.hunt_base, spec.seed)?,
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
                    unacked_events_max: args.unacked_events,
                    queue_delay_target: args.queue_delay_target,
                    // The pacer closes batches; this only backs it up.
                    linger: Duration::from_millis(5),
                    // Acknowledgements only: a game server that needs each
                    // event's outcome reads it from the update stream.
                    want_outcomes: false,
                    token: args.token.clone(),
                    tls: args.tls.clone(),
                    ..ClientConfig::new(addr.to_string())
                };
                let mut generator = Generator::partition(spec, part, args.connections).with_hunt_base(args.hunt_base);
                // Against a target the hunts were created (and found new)
                // before: the setup joins the players.
                let claimed = args.creates_claimed();
                let acked_total = acked_total.clone();
                // Its watched hunts' logs no longer follow their streams.
                let (log, parts) = (log.clone(), args.connections);
                let on_refused = move || log.refused(part, parts);
                let seeds = cluster.as_ref().map(|c| c.seeds.clone());
                runtime.spawn(async move {
                    let (mut producer, acks) = match seeds {
                        None => {
                            let (p, a) = Producer::<TreasureHunt>::connect(config)
                                .await
                                .map_err(|e| format!("connecting to {addr}: {e}"))?;
                            (Sink::Node(p), AckSource::Node(a))
                        }
                        Some(seeds) => {
                            // A cluster's producers give up on a stalled node
                            // and follow its partitions: `ClusterConfig::new`'s
                            // timers, the bench's batching.
                            let base = ClusterConfig::new(seeds);
                            let client = ClientConfig {
                                addr: base.client.addr.clone(),
                                answer_timeout: base.client.answer_timeout,
                                reconnect_backoff_max: base.client.reconnect_backoff_max,
                                reconnect_attempts_max: base.client.reconnect_attempts_max,
                                ..config
                            };
                            let config = ClusterConfig { client, ..base };
                            let (p, a) = ClusterProducer::<TreasureHunt>::connect(config)
                                .await
                                .map_err(|e| format!("connecting to the cluster of {addr}: {e}"))?;
                            (Sink::Cluster(Box::new(p)), AckSource::Cluster(a))
                        }
                    };
                    let shared = Arc::new(ConnShared::default());
                    tokio::spawn(read_acks(acks, shared.clone(), acked_total, clock, on_refused));
                    for e in generator.setup() {
                        if claimed && matches!(e.action, trove_hunt::Action::Create(_)) {
                            continue;
                        }
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
                times: ChunkTimes::default(),
                opened_ns: 0,
                done: StepDone::default(),
                sent: 0,
                finished: false,
            });
        }
        say(&format!("setup acknowledged in {:.1} s", began.elapsed().as_secs_f64()));
        // Subscribed before the pacer sends anything: every subscriber's
        // stream and its hunt's log start together, at index 0.
        let fleet = fleet_args
            .map(|f| start_fleet(&f, hunts, log.clone(), (addr, ws), cluster.as_ref(), clock, args.connections))
            .transpose()?;
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
            cluster,
        })
    }

    pub(super) fn step_latency(&self, step: u32) -> (Histogram<u64>, u64) {
        let mut h = histogram();
        let n = self.shared.iter().map(|s| lock(&s.inner).latencies.merge_into(step, &mut h)).sum();
        (h, n)
    }

    pub(super) fn step_send_lag(&self, step: u32) -> Histogram<u64> {
        let mut h = histogram();
        for s in &self.shared {
            lock(&s.inner).send_lag.merge_into(step, &mut h);
        }
        h
    }

    pub(super) fn step_admitted(&self, step: u32) -> Histogram<u64> {
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

/// The subscribers a run opens: `--subscribers`, or one per `--watch` hunt.
pub(super) fn fleet_args(args: &LoadArgs) -> Option<FleetArgs> {
    args.fanout.clone().or_else(|| {
        (args.watch_hunts > 0).then(|| FleetArgs {
            subscribers: args.watch_hunts.min(args.workload.hunts),
            hunts: HuntChoice::All,
            ws: false,
            deflate: false,
            slow: 0,
            slow_bytes_per_s: 1024,
            threads: 1,
            read_interval: Duration::ZERO,
            token: args.token.clone(),
            broadcasts_only: false,
        })
    })
}

/// The connections a fresh server must admit from the generator's one
/// address (producers, subscribers and room), when its defaults
/// (`connections_per_address_max` 256, `connections_max` 1024) do not.
pub(super) fn child_connections_max(args: &LoadArgs) -> Option<u32> {
    let need = args.connections + fleet_args(args).map_or(0, |f| f.subscribers) + 64;
    (need as usize > trove_server::CONNECTIONS_PER_ADDRESS_MAX_DEFAULT).then_some(need)
}

/// Starts the subscribers: all on the one node (`tcp`, or `ws` for
/// WebSocket ones), or spread over a cluster's nodes, waiting then until
/// each hunt watched on a node that does not own it is relayed there.
pub(super) fn start_fleet(
    f: &FleetArgs,
    hunts: Vec<u32>,
    log: Arc<SendLog>,
    (tcp, ws): (SocketAddr, Option<SocketAddr>),
    cluster: Option<&ClusterTarget>,
    clock: Clock,
    producers: u32,
) -> Result<Fleet, String> {
    let n = hunts.len();
    let (at, on): (Vec<SocketAddr>, Vec<usize>) = match cluster {
        Some(c) => {
            let nodes = c.subscriber_nodes(f.ws)?;
            (0..n).map(|i| (nodes[i % nodes.len()].1, nodes[i % nodes.len()].0)).unzip()
        }
        None => {
            let addr = if f.ws {
                ws.ok_or("WebSocket subscribers need the server's WebSocket address (--target-ws)")?
            } else {
                tcp
            };
            (vec![addr; n], vec![0; n])
        }
    };
    let began = Instant::now();
    let needed = cluster.map(|c| c.exports_needed(&hunts, &on));
    let fleet = Fleet::start(f, hunts, log, &at, clock, producers)?;
    if let (Some(c), Some(needed)) = (cluster, needed) {
        c.wait_relays(&needed)?;
    }
    let spread = match cluster {
        Some(c) => {
            let mut nodes: Vec<usize> = on.clone();
            nodes.sort_unstable();
            nodes.dedup();
            format!(" over {} nodes of cluster {}", nodes.len(), c.name)
        }
        None => String::new(),
    };
    say(&format!(
        "{} subscribers ({}{}){spread} subscribed in {:.1} s",
        f.subscribers,
        if f.ws { "WebSocket" } else { "TCP" },
        if f.slow > 0 { format!(", {} slow", f.slow) } else { String::new() },
        began.elapsed().as_secs_f64()
    ));
    Ok(fleet)
}
