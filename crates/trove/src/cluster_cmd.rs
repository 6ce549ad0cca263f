//! `trove serve --cluster`: a node of a cluster on NATS JetStream, and
//! `trove replay --cluster`: a cluster's partitions rebuilt offline from
//! their snapshots and streams (docs/cluster.md).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use trove_cluster::config::CONFIG_FORMAT;
use trove_cluster::{ClusterConfig, ClusterMetrics, MapView, Nats, Node, Owner, Relay, RelayMetrics};
use trove_core::{Game, Record};
use trove_hunt::TreasureHunt;
use trove_server::control::{ControlConfig, ControlInfo, ControlParts, ControlPlane};
use trove_server::{Listeners, Server, ServerConfig};
use trove_shard::{CoreConfig, Engine, EngineConfig};

use crate::cli::{Replay, Serve};

/// Partitions of a cluster this node creates, unless `--partitions` says.
pub const PARTITIONS_DEFAULT: u32 = 8;
/// The cluster's name unless `--cluster-name` says.
pub const CLUSTER_NAME_DEFAULT: &str = "trove";
/// Reads of one partition `trove replay --cluster` makes while its live
/// owner's snapshots purge the stream under it.
const REPLAY_ATTEMPTS_MAX: usize = 5;

/// A lease's TTL unless `--lease-ms` says.
pub const LEASE_MS_DEFAULT: u64 = 3000;

/// The `--cluster` list: NATS URLs, comma-separated.
fn urls(list: &str) -> Result<Vec<String>, String> {
    let urls: Vec<String> = list.split(',').map(str::trim).filter(|u| !u.is_empty()).map(String::from).collect();
    if urls.is_empty() {
        return Err("--cluster: no NATS server given (nats://HOST:PORT[,...])".into());
    }
    Ok(urls)
}

/// The runtime the NATS client's tasks run on: one worker, apart from the
/// data plane's, so a saturated data plane does not delay lease renewals.
fn nats_runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("trove-nats")
        .enable_all()
        .build()
        .map_err(|e| format!("NATS runtime: {e}"))
}

/// How long a starting node waits for its NATS servers to answer
/// (JetStream electing its leaders after a restart).
const START_WAIT_MAX: Duration = Duration::from_secs(30);

/// Connects to the cluster, and creates its config or adopts the one
/// there: a joining node takes the cluster's partition count, `worlds_max`
/// and dedup bounds, unless it names another count, which must then match
/// (a typed error).
async fn join(
    urls: &[String],
    name: &str,
    replicas: usize,
    lease: Duration,
    partitions: Option<u32>,
    worlds_max: u64,
    dedup: (u64, u64),
) -> Result<(Nats, ClusterConfig), trove_cluster::ClusterError> {
    let nats = Nats::connect(urls, name, replicas, lease).await?;
    let existing = trove_cluster::config::read(&nats).await.ok().flatten();
    let wanted = ClusterConfig {
        format: CONFIG_FORMAT,
        game: TreasureHunt::NAME.to_string(),
        record_size: <TreasureHunt as Game>::Event::SIZE as u32,
        partitions: partitions.or(existing.as_ref().map(|c| c.partitions)).unwrap_or(PARTITIONS_DEFAULT),
        worlds_max: existing.as_ref().map_or(worlds_max, |c| c.worlds_max),
        dedup_window_events: existing.as_ref().map_or(dedup.0, |c| c.dedup_window_events),
        dedup_producers_max: existing.as_ref().map_or(dedup.1, |c| c.dedup_producers_max),
    };
    let config = nats.ensure_config(&wanted).await?;
    Ok((nats, config))
}

/// `not_owner` messages from the node's map.
#[derive(Debug)]
struct NodeOwners(MapView);

impl trove_server::Owners for NodeOwners {
    fn describe_owner(&self, partition: usize) -> String {
        self.0.describe_owner(partition)
    }

    fn taking_over(&self, partition: usize) -> bool {
        self.0.held_here(partition)
    }
}

/// `GET /cluster` and the `trove_cluster_*` families of `/metrics`, from
/// the node's map and counters.
struct NodeView {
    map: MapView,
    metrics: Arc<ClusterMetrics>,
    relay: Arc<RelayMetrics>,
}

impl trove_server::control::ClusterView for NodeView {
    fn cluster_view(&self) -> Option<serde_json::Value> {
        Some(self.map.map_json())
    }

    fn metrics(&self, f: &mut trove_server::metrics::Families) {
        use std::sync::atomic::Ordering::Relaxed;
        let m = &self.metrics;
        f.gauge("trove_cluster_partitions_owned", "Partitions this node owns now.", m.partitions_owned.load(Relaxed));
        f.counter(
            "trove_cluster_appends_total",
            "Messages appended to partition streams and acknowledged by JetStream.",
            m.appends.load(Relaxed),
        );
        f.counter("trove_cluster_appended_bytes_total", "Bytes of those messages.", m.appended_bytes.load(Relaxed));
        f.seconds(
            "trove_cluster_append_ack_seconds",
            "From sending a write's messages to JetStream's last acknowledgement (the durability point).",
            &m.append_ack_ns.snapshot(),
        );
        f.seconds("trove_cluster_lease_renew_seconds", "A lease renewal's round trip.", &m.lease_renew_ns.snapshot());
        f.counter("trove_cluster_takeovers_total", "Partitions this node took over.", m.takeovers.load(Relaxed));
        f.counter(
            "trove_cluster_failovers_total",
            "Takeovers of a partition whose last owner did not hand it over (it died or stalled).",
            m.failovers.load(Relaxed),
        );
        f.seconds(
            "trove_cluster_takeover_seconds",
            "From acquiring a lease to serving the partition: snapshot, replay, fence.",
            &m.takeover_ns.snapshot(),
        );
        f.counter(
            "trove_cluster_replayed_messages_total",
            "Stream messages replayed by takeovers (replay progress).",
            m.replayed_messages.load(Relaxed),
        );
        f.counter("trove_cluster_leases_lost_total", "Leases this node lost.", m.leases_lost.load(Relaxed));
        f.counter(
            "trove_cluster_partitions_lost_total",
            "Partitions whose log was fenced or unavailable while owned here.",
            m.partitions_lost.load(Relaxed),
        );
        f.counter("trove_cluster_released_total", "Partitions handed over cleanly.", m.released.load(Relaxed));
        f.counter("trove_cluster_snapshots_total", "Snapshots stored in the object store.", m.snapshots.load(Relaxed));
        let r = &self.relay;
        f.gauge(
            "trove_cluster_relay_partitions",
            "Partitions whose updates this node relays to its spectators now.",
            r.partitions_relayed.load(Relaxed),
        );
        f.gauge(
            "trove_cluster_relay_hunts_exported",
            "Hunts this node, as their owner, publishes for other nodes' spectators now.",
            r.worlds_exported.load(Relaxed),
        );
        f.counter("trove_cluster_relay_published_total", "Relay messages published.", r.published.load(Relaxed));
        f.counter(
            "trove_cluster_relay_published_bytes_total",
            "Bytes of those messages.",
            r.published_bytes.load(Relaxed),
        );
        f.counter(
            "trove_cluster_relay_publish_failures_total",
            "Relay messages not published (NATS down or slow): relays see gaps.",
            r.publish_failures.load(Relaxed),
        );
        f.counter(
            "trove_cluster_relay_publisher_gaps_total",
            "Gaps of the owner's relay mailbox (it fell behind).",
            r.publisher_gaps.load(Relaxed),
        );
        f.counter("trove_cluster_relay_received_total", "Relay messages received.", r.received.load(Relaxed));
        f.counter(
            "trove_cluster_relay_refused_total",
            "Relay messages that did not decode or named a hunt of another partition.",
            r.refused.load(Relaxed),
        );
        f.counter(
            "trove_cluster_relay_stale_total",
            "Relay messages dropped as already delivered, reported missing, a deposed owner's, or owned here.",
            r.stale.load(Relaxed),
        );
        f.counter(
            "trove_cluster_relay_gaps_total",
            "Gaps injected for spectators here (numbers lost on the way, owner changes).",
            r.gaps.load(Relaxed),
        );
        f.counter("trove_cluster_relay_updates_total", "Updates relayed to spectators here.", r.updates.load(Relaxed));
        f.counter(
            "trove_cluster_snapshot_failures_total",
            "Snapshots not stored, or streams not purged after one (the stream keeps what it held).",
            m.snapshot_failures.load(Relaxed),
        );
    }
}

/// What `serve` hands over to a cluster node's start.
#[derive(Debug)]
pub struct NodeStart {
    pub engine: EngineConfig,
    pub server: ServerConfig,
    pub control_limits: ControlConfig,
    pub listeners: Listeners,
    pub control_listener: Option<std::net::TcpListener>,
    pub snapshot_interval: Duration,
}

/// Runs a cluster node until `wait` returns (a signal), then hands its
/// partitions over and stops.
pub fn serve(args: &Serve, start: NodeStart, wait: impl FnOnce() -> &'static str) -> Result<(), String> {
    let NodeStart { mut engine, server, control_limits, listeners, control_listener, snapshot_interval } = start;
    let server_auth = server.auth.clone();
    let list = args.cluster.as_deref().expect("cluster mode");
    let urls = urls(list)?;
    let tcp = listeners.tcp.local_addr().map_err(|e| format!("TCP listener: {e}"))?;
    let ws = listeners.ws.as_ref().and_then(|l| l.local_addr().ok());
    let control = control_listener.as_ref().and_then(|l| l.local_addr().ok());
    let node = args.node.clone().unwrap_or_else(|| format!("node-{}", tcp.port()));
    trove_cluster::names::validate_token("--node", &node).map_err(|e| e.to_string())?;
    let name = args.cluster_name.as_deref().unwrap_or(CLUSTER_NAME_DEFAULT);
    let replicas = args.replicas.unwrap_or(1) as usize;
    let lease = Duration::from_millis(args.lease_ms.unwrap_or(LEASE_MS_DEFAULT));
    let runtime = nats_runtime()?;
    let worlds_max = engine.worlds_max as u64;
    let dedup = (engine.dedup_window_events as u64, engine.dedup_producers_max as u64);
    // A cluster just started (or electing its leaders) answers "no
    // responders" for a moment: a start waits for it, a bounded time, and
    // fails with anything else at once.
    let joined = runtime.block_on(async {
        let started = std::time::Instant::now();
        loop {
            match join(&urls, name, replicas, lease, args.partitions, worlds_max, dedup).await {
                Err(e) if e.is_unavailable() && started.elapsed() < START_WAIT_MAX => {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                r => break r,
            }
        }
    });
    let (nats, config) = joined.map_err(|e| e.to_string())?;
    // The first node's TTL holds for the cluster.
    let ttl = nats.lease_ttl();
    engine.cluster = true;
    engine.journal = None;
    // Engine time on a cluster's nodes counts from one origin (the wall
    // clock's), so that a partition moving between nodes started at
    // different times keeps its times close to what they were; a shard
    // never stamps below its partition's last time in any case.
    engine.clock_base_us =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64);
    engine.shards = config.partitions as usize;
    engine.worlds_max = usize::try_from(config.worlds_max).map_err(|_| "the cluster's worlds_max is too large")?;
    // Checked with the rest by `validate` (the stored config is outside
    // data).
    engine.dedup_window_events =
        usize::try_from(config.dedup_window_events).map_err(|_| "the cluster's dedup_window_events is too large")?;
    engine.dedup_producers_max =
        usize::try_from(config.dedup_producers_max).map_err(|_| "the cluster's dedup_producers_max is too large")?;
    engine.validate().map_err(|e| e.to_string())?;
    let core = CoreConfig {
        worlds_max: engine.worlds_max,
        dedup_window_events: engine.dedup_window_events,
        dedup_producers_max: engine.dedup_producers_max,
        journaled: true,
        snapshot_interval: Some(snapshot_interval),
    };
    let shards = engine.shards;
    let engine = Arc::new(Engine::<TreasureHunt>::start(engine).map_err(|e| e.to_string())?);
    let me = Owner {
        node: node.clone(),
        tcp: tcp.to_string(),
        ws: ws.map(|a| a.to_string()).unwrap_or_default(),
        control: control.map(|a| a.to_string()).unwrap_or_default(),
    };
    let metrics = Arc::new(ClusterMetrics::default());
    // Spectators on any node: the relay follows this node's ownership
    // (told before a taken partition's shard serves).
    let relay = Relay::start(&urls, nats.names().clone(), config.partitions, engine.hub().clone(), runtime.handle())
        .map_err(|e| format!("the spectator relay: {e}"))?;
    let relay_metrics = relay.metrics().clone();
    let cluster_node = Node::start_observed(
        nats,
        runtime.handle().clone(),
        engine.clone(),
        me,
        config.clone(),
        core,
        metrics,
        Some(Box::new(relay.owner_listener())),
    )
    .map_err(|e| format!("the cluster thread: {e}"))?;
    let view = cluster_node.map_view();
    let owners: Arc<dyn trove_server::Owners> = Arc::new(NodeOwners(view.clone()));
    let tls = server.tls.is_some();
    let server =
        Server::start_node(listeners, engine.clone(), server, Some(owners.clone())).map_err(|e| e.to_string())?;
    let ready = Arc::new(AtomicBool::new(false));
    let info = ControlInfo {
        mode: "sharded",
        shards,
        fsync: format!("cluster {name}"),
        journal_dir: None,
        tcp_addr: server.tcp_addr(),
        ws_addr: server.ws_addr(),
    };
    let control = match control_listener {
        Some(listener) => {
            let parts = ControlParts {
                config: control_limits,
                engine: engine.clone(),
                server_metrics: server.metrics_handle(),
                data_plane: server.runtime_handle(),
                ws_plane: server.ws_runtime_handle(),
                info,
                ready: ready.clone(),
                owners: Some(owners),
                auth: server_auth.clone(),
                metrics_only: false,
            };
            let plane = ControlPlane::start_on(listener, parts).map_err(|e| e.to_string())?;
            plane.set_cluster_view(Arc::new(NodeView {
                map: view.clone(),
                metrics: cluster_node.metrics().clone(),
                relay: relay_metrics,
            }));
            Some(plane)
        }
        None => None,
    };
    ready.store(true, Ordering::Relaxed);
    tracing::info!(
        "node {node} of cluster {name} on {} ({} partitions, {replicas} replica(s), lease {} ms)",
        urls.join(","),
        config.partitions,
        ttl.as_millis()
    );
    let (tcp, ws_scheme, http) = if tls { ("tls", "wss", "https") } else { ("tcp", "ws", "http") };
    tracing::info!("protocol v1 on {tcp}://{}", server.tcp_addr());
    if let Some(ws) = server.ws_addr() {
        tracing::info!("websocket (JSON) on {ws_scheme}://{ws}/");
    }
    if let Some(c) = &control {
        tracing::info!("control plane on {http}://{}/ (/cluster, /metrics, /openapi.json)", c.addr());
    }
    let signal = wait();
    tracing::info!("{signal}: handing partitions over");
    ready.store(false, Ordering::Relaxed);
    cluster_node.leave();
    server.shutdown(Duration::from_secs(10));
    drop(relay);
    if let Some(c) = control {
        c.shutdown();
    }
    let engine = Arc::try_unwrap(engine).map_err(|_| "the engine is still in use after the server stopped")?;
    let fin = engine.shutdown();
    runtime.shutdown_timeout(Duration::from_secs(1));
    tracing::info!("stopped; {} events applied here", fin.events_applied);
    Ok(())
}

/// `trove replay --cluster`: every partition rebuilt from its snapshot
/// and stream, as a node taking it over would; prints each hunt's hash
/// and the state hash, as `trove replay` does for a data directory.
pub fn replay(args: &Replay) -> Result<(), String> {
    let urls = urls(args.cluster.as_deref().expect("cluster replay"))?;
    let name = args.cluster_name.as_deref().unwrap_or(CLUSTER_NAME_DEFAULT);
    let runtime = nats_runtime()?;
    let started = std::time::Instant::now();
    let (hashes, messages, partitions) = runtime.block_on(async {
        // A reader's connection: nothing is created, no lease taken.
        let nats = Nats::connect_reader(&urls, name).await.map_err(|e| e.to_string())?;
        let config = trove_cluster::config::read(&nats)
            .await
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("cluster {name} has no config: it was never created on these servers"))?;
        let snapshots = nats.open_snapshots().await.map_err(|e| e.to_string())?;
        let core = CoreConfig {
            worlds_max: usize::try_from(config.worlds_max).unwrap_or(usize::MAX),
            dedup_window_events: 0,
            dedup_producers_max: 1,
            journaled: true,
            snapshot_interval: None,
        };
        let mut hashes = Vec::new();
        let mut messages = 0;
        for p in 0..config.partitions {
            // A partition never written has no stream yet: it holds no hunt.
            let Some(log) = nats.open_log(p).await.map_err(|e| e.to_string())? else { continue };
            // A live owner may snapshot and purge under the read: read
            // again from its newer snapshot.
            let mut attempt = 0;
            let r = loop {
                match trove_cluster::recover_partition::<TreasureHunt>(
                    &log,
                    snapshots.as_ref(),
                    core,
                    None,
                    |_, _, _| {},
                )
                .await
                {
                    Err(trove_cluster::RecoverError::Raced { .. }) if attempt < REPLAY_ATTEMPTS_MAX => attempt += 1,
                    r => break r.map_err(|e| e.to_string())?,
                }
            };
            messages += r.replayed;
            hashes.extend(r.rebuilt.state().world_hashes());
        }
        Ok::<_, String>((hashes, messages, config.partitions))
    })?;
    runtime.shutdown_timeout(Duration::from_secs(1));
    let state_hash = trove_core::state::combine_world_hashes(hashes.clone());
    let mut hashes = hashes;
    hashes.sort_unstable_by_key(|&(id, _)| id);
    if args.json {
        let hunts: Vec<_> = hashes
            .iter()
            .map(|&(hunt, h)| serde_json::json!({"hunt": hunt, "state_hash": format!("{h:016x}")}))
            .collect();
        let report = serde_json::json!({
            "cluster": name,
            "partitions": partitions,
            "messages": messages,
            "seconds": started.elapsed().as_secs_f64(),
            "hunts": hunts,
            "state_hash": format!("{state_hash:016x}"),
        });
        println!("{report}");
    } else {
        for (hunt, h) in &hashes {
            println!("hunt {hunt} {h:016x}");
        }
        println!(
            "replayed {} from {} partitions of cluster {name} in {:.2} s; state hash {state_hash:016x}",
            crate::plural(messages, "message"),
            partitions,
            started.elapsed().as_secs_f64()
        );
    }
    Ok(())
}
