//! A trove node's part in a cluster: which partitions it owns, and the
//! moves between owning and not owning one.
//!
//! The node's thread runs a tick every third of the lease TTL. Each tick
//! it announces itself, renews the leases it holds, gives up a partition
//! whose lease it lost or whose log was fenced or unavailable (the shard
//! is vacated, its producers told), reads the partition map, and balances:
//! with N nodes alive each aims at ceil(P / N) partitions; it takes free
//! partitions below that and hands one over (snapshot, release) per tick
//! above it. Taking a partition over is: acquire its lease (the epoch),
//! rebuild it from its snapshot and stream (`recover.rs`), append a fence
//! that expects the stream's last sequence (so a deposed owner's next
//! append is refused), and install the shard with a [`StreamLog`] that
//! appends after the fence. Leaving (SIGTERM) hands every partition over
//! the same clean way.
//!
//! The lease decides who should own a partition; the fenced stream
//! decides whose appends count. A node that stalls past its lease (a
//! SIGSTOP, a long pause) and comes back may still believe it owns a
//! partition, but its next append expects a sequence the new owner's fence
//! has passed, so it is refused and nothing it applies after that is ever
//! acknowledged (docs/cluster.md walks the cases through).
//!
//! The engine's calls that wait (`vacate_shard`) and the NATS requests
//! (through `Handle::block_on`) run on this thread, never on a runtime
//! worker.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering::{Relaxed, SeqCst};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use trove_core::Game;
use trove_shard::{CoreConfig, Engine, FsyncPolicy, ShardState};

use crate::metrics::ClusterMetrics;
use crate::recover::{RecoverError, recover_partition};
use crate::stream_log::StreamLog;
use crate::{ClusterConfig, ClusterError, Lease, Nats, Owner};

/// Fence attempts per takeover: each failed one means another writer
/// appended after the rebuild read the stream (a deposed owner's last
/// batch); the rebuild reads again.
const FENCE_ATTEMPTS_MAX: usize = 3;

/// What the node knows of the cluster, refreshed every tick: for `GET
/// /cluster` and for `not_owner` messages.
#[derive(Clone, Debug, Default)]
pub struct View {
    pub owners: Vec<Option<(Owner, u64)>>,
    pub nodes: Vec<Owner>,
}

/// The partition map as a node last read it, shared with the planes that
/// show it.
#[derive(Clone, Debug)]
pub struct MapView {
    view: Arc<Mutex<View>>,
    cluster: String,
    partitions: u32,
    me: String,
}

impl MapView {
    pub fn view(&self) -> View {
        self.view.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// `GET /cluster`'s body (docs/control.md).
    pub fn map_json(&self) -> serde_json::Value {
        let view = self.view();
        // An endpoint a node does not serve (`--ws off`) is null.
        let addr = |a: &str| (!a.is_empty()).then(|| a.to_string());
        let node = |o: &Owner| serde_json::json!({"node": o.node, "tcp": o.tcp, "ws": addr(&o.ws), "control": addr(&o.control)});
        let map: Vec<_> = (0..self.partitions as usize)
            .map(|p| match view.owners.get(p).and_then(Option::as_ref) {
                Some((o, epoch)) => serde_json::json!({"partition": p, "owner": node(o), "epoch": epoch}),
                None => serde_json::json!({"partition": p, "owner": null, "epoch": null}),
            })
            .collect();
        serde_json::json!({
            "cluster": self.cluster,
            "partitions": self.partitions,
            "node": self.me,
            "nodes": view.nodes.iter().map(node).collect::<Vec<_>>(),
            "map": map,
        })
    }

    /// Who owns `partition`, for a `not_owner` message.
    pub fn describe_owner(&self, partition: usize) -> String {
        let view = self.view();
        match view.owners.get(partition).and_then(Option::as_ref) {
            Some((o, epoch)) if o.node != self.me => {
                format!("partition {partition} is owned by node {} at {} (epoch {epoch})", o.node, o.tcp)
            }
            Some((_, epoch)) => format!("partition {partition} is being moved by this node (epoch {epoch})"),
            None => format!("partition {partition} has no owner now"),
        }
    }
}

/// A node of a cluster, running.
pub struct Node<G: Game> {
    shared: Arc<Shared<G>>,
    thread: Option<JoinHandle<()>>,
}

impl<G: Game> std::fmt::Debug for Node<G> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node").field("node", &self.shared.me.node).finish_non_exhaustive()
    }
}

struct Shared<G: Game> {
    nats: Nats,
    runtime: tokio::runtime::Handle,
    engine: Arc<Engine<G>>,
    me: Owner,
    config: ClusterConfig,
    core: CoreConfig,
    metrics: Arc<ClusterMetrics>,
    view: Arc<Mutex<View>>,
    stop: AtomicBool,
}

impl<G: Game> Node<G> {
    /// Starts the node's thread for `engine` (in cluster mode, with
    /// `config.partitions` shards), as `me`, on `nats` (whose runtime is
    /// `runtime`). Installed shards' cores are built with `core`.
    pub fn start(
        nats: Nats,
        runtime: tokio::runtime::Handle,
        engine: Arc<Engine<G>>,
        me: Owner,
        config: ClusterConfig,
        core: CoreConfig,
        metrics: Arc<ClusterMetrics>,
    ) -> std::io::Result<Node<G>> {
        assert_eq!(engine.shard_states().len(), config.partitions as usize, "a shard per partition");
        let shared = Arc::new(Shared {
            nats,
            runtime,
            engine,
            me,
            config,
            core: CoreConfig { journaled: true, ..core },
            metrics,
            view: Arc::new(Mutex::new(View::default())),
            stop: AtomicBool::new(false),
        });
        let s = shared.clone();
        let thread = std::thread::Builder::new().name("trove-cluster".into()).spawn(move || run(&s))?;
        Ok(Node { shared, thread: Some(thread) })
    }

    /// The partition map as this node reads it, every tick: for `GET
    /// /cluster` and `not_owner` messages.
    pub fn map_view(&self) -> MapView {
        MapView {
            view: self.shared.view.clone(),
            cluster: self.shared.nats.names().cluster().to_string(),
            partitions: self.shared.config.partitions,
            me: self.shared.me.node.clone(),
        }
    }

    pub fn metrics(&self) -> &Arc<ClusterMetrics> {
        &self.shared.metrics
    }

    /// Hands every partition over (a snapshot each, the lease released)
    /// and stops the node's thread. Producers of those partitions are
    /// told `not_owner` and find the next owners.
    pub fn leave(mut self) {
        self.shared.stop.store(true, SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl<G: Game> Drop for Node<G> {
    fn drop(&mut self) {
        self.shared.stop.store(true, SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A lease held, and when it was last renewed.
struct Held {
    lease: Lease,
    renewed: Instant,
}

fn run<G: Game>(s: &Shared<G>) {
    let ttl = s.nats.lease_ttl();
    let tick = ttl / 3;
    let mut held: BTreeMap<u32, Held> = BTreeMap::new();
    while !s.stop.load(SeqCst) {
        let began = Instant::now();
        s.tick(&mut held, ttl);
        s.metrics.partitions_owned.store(held.len() as u64, Relaxed);
        // Sleep in small steps, so that leaving is prompt.
        while !s.stop.load(SeqCst) && began.elapsed() < tick {
            std::thread::sleep(Duration::from_millis(20).min(tick));
        }
    }
    for (p, h) in std::mem::take(&mut held) {
        s.release(p, h, true);
    }
    s.metrics.partitions_owned.store(0, Relaxed);
}

impl<G: Game> Shared<G> {
    fn block_on<T>(&self, f: impl Future<Output = T>) -> T {
        self.runtime.block_on(f)
    }

    fn log(&self, line: String) {
        eprintln!("trove: cluster node {}: {line}", self.me.node);
    }

    fn tick(&self, held: &mut BTreeMap<u32, Held>, ttl: Duration) {
        let leases = self.nats.leases();
        if let Err(e) = self.block_on(leases.announce(&self.me)) {
            self.log(format!("announcing: {e}"));
        }
        // Renew; a lease not renewed within its TTL is gone, whatever the
        // reason.
        let partitions: Vec<u32> = held.keys().copied().collect();
        for p in partitions {
            let h = held.get_mut(&p).expect("listed");
            let started = Instant::now();
            match self.block_on(leases.renew(&h.lease)) {
                Ok(Some(lease)) => {
                    self.metrics.lease_renew_ns.record(started.elapsed().as_nanos() as u64);
                    *h = Held { lease, renewed: Instant::now() };
                }
                Ok(None) => {
                    self.log(format!("lost the lease of partition {p}"));
                    self.metrics.leases_lost.fetch_add(1, Relaxed);
                    let h = held.remove(&p).expect("listed");
                    self.drop_partition(p, h, false);
                }
                Err(e) if h.renewed.elapsed() >= ttl => {
                    self.log(format!("could not renew the lease of partition {p} within its TTL ({e})"));
                    self.metrics.leases_lost.fetch_add(1, Relaxed);
                    let h = held.remove(&p).expect("listed");
                    self.drop_partition(p, h, false);
                }
                Err(e) => self.log(format!("renewing the lease of partition {p}: {e}")),
            }
        }
        // A shard whose log was fenced or unavailable gives its partition
        // up: its state is not what the stream holds any more.
        for (p, state) in self.engine.shard_states().into_iter().enumerate() {
            if let ShardState::Lost(lost) = state {
                self.log(format!("partition {p}: {}", lost.reason()));
                self.metrics.partitions_lost.fetch_add(1, Relaxed);
                match held.remove(&(p as u32)) {
                    Some(h) => self.release(p as u32, h, false),
                    None => {
                        let _ = self.engine.vacate_shard(p, false);
                    }
                }
            }
        }
        // The map, then the balance.
        let partitions = self.config.partitions;
        let view = match (self.block_on(leases.owners(partitions)), self.block_on(leases.nodes())) {
            (Ok(owners), Ok(nodes)) => View { owners, nodes },
            (Err(e), _) | (_, Err(e)) => {
                self.log(format!("reading the partition map: {e}"));
                return;
            }
        };
        *self.view.lock().unwrap_or_else(|e| e.into_inner()) = view.clone();
        let alive = view.nodes.len().max(1) as u32;
        let target = partitions.div_ceil(alive) as usize;
        if held.len() < target {
            // Free partitions, from a point of this node's own so that
            // nodes starting together do not all race for the same ones.
            let start = (crc32c::crc32c(self.me.node.as_bytes()) % partitions) as u32;
            for k in 0..partitions {
                let p = (start + k) % partitions;
                if held.len() >= target || self.stop.load(SeqCst) {
                    break;
                }
                if view.owners[p as usize].is_none() && !held.contains_key(&p) {
                    match self.take_over(p) {
                        Ok(Some(h)) => {
                            held.insert(p, h);
                        }
                        Ok(None) => {}
                        Err(e) => self.log(format!("taking partition {p} over: {e}")),
                    }
                }
            }
        } else if held.len() > target && view.owners.iter().all(Option::is_some) {
            // A node joined: hand one partition over per tick, cleanly, so
            // that the cluster converges without a stampede.
            if let Some((&p, _)) = held.iter().next_back() {
                let h = held.remove(&p).expect("listed");
                self.log(format!("handing partition {p} over ({} held, {target} wanted)", held.len() + 1));
                self.release(p, h, true);
            }
        }
    }

    /// Acquires partition `p`'s lease and, if it got it, rebuilds and
    /// installs the partition. `None`: another node holds it.
    fn take_over(&self, p: u32) -> Result<Option<Held>, TakeoverError> {
        let leases = self.nats.leases();
        let Some(lease) = self.block_on(leases.acquire(p, &self.me))? else { return Ok(None) };
        let started = Instant::now();
        match self.install(p, &lease) {
            Ok(replayed) => {
                let took = started.elapsed();
                self.metrics.takeovers.fetch_add(1, Relaxed);
                if replayed > 0 {
                    // Messages after the last snapshot: the last owner did
                    // not hand over (it died or stalled).
                    self.metrics.failovers.fetch_add(1, Relaxed);
                }
                self.metrics.takeover_ns.record(took.as_nanos() as u64);
                self.log(format!(
                    "serving partition {p} (epoch {}, {replayed} messages replayed in {:.3} s)",
                    lease.epoch,
                    took.as_secs_f64()
                ));
                Ok(Some(Held { lease, renewed: started }))
            }
            Err(e) => {
                let _ = self.block_on(leases.release(lease));
                Err(e)
            }
        }
    }

    /// Rebuilds partition `p`, fences its stream for `lease`, and installs
    /// the shard; returns the messages replayed.
    fn install(&self, p: u32, lease: &Lease) -> Result<u64, TakeoverError> {
        let log = self.block_on(self.nats.log(p))?;
        let snapshots = self.block_on(self.nats.snapshots())?;
        for _ in 0..FENCE_ATTEMPTS_MAX {
            let recovered =
                self.block_on(recover_partition::<G>(&log, &snapshots, self.core, Some(&self.metrics), |_, _, _| {}))?;
            let fence = match self.block_on(log.fence(recovered.last, lease.epoch)) {
                Ok(seq) => seq,
                // Another writer appended after the read: read again.
                Err(e) if e.is_fenced() => continue,
                Err(e) => return Err(e.into()),
            };
            let stream_log = StreamLog::<G::Event>::new(
                log,
                snapshots,
                self.runtime.clone(),
                lease.epoch,
                fence,
                self.nats.payload_max(),
                self.metrics.clone(),
            );
            let core = recovered.rebuilt.into_core(self.core);
            self.engine
                .install_shard(p as usize, core, stream_log, FsyncPolicy::Group)
                .map_err(|e| TakeoverError::Install(e.to_string()))?;
            return Ok(recovered.replayed);
        }
        Err(TakeoverError::Install(format!("the stream kept moving under {FENCE_ATTEMPTS_MAX} fences")))
    }

    /// Gives partition `p` up: its shard vacated (with a snapshot on a
    /// clean hand-over), then its lease released.
    fn release(&self, p: u32, h: Held, snapshot: bool) {
        if let Err(e) = self.engine.vacate_shard(p as usize, snapshot) {
            self.log(format!("vacating partition {p}: {e}"));
        }
        match self.block_on(self.nats.leases().release(h.lease)) {
            Ok(_) => {
                if snapshot {
                    self.metrics.released.fetch_add(1, Relaxed);
                }
            }
            Err(e) => self.log(format!("releasing partition {p}: {e} (it expires within the TTL)")),
        }
    }

    /// A partition whose lease is gone: its shard vacated without a
    /// snapshot (another node may own it already).
    fn drop_partition(&self, p: u32, _h: Held, snapshot: bool) {
        if let Err(e) = self.engine.vacate_shard(p as usize, snapshot) {
            self.log(format!("vacating partition {p}: {e}"));
        }
    }
}

/// Why a takeover did not happen.
#[derive(Debug, thiserror::Error)]
pub enum TakeoverError {
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    #[error(transparent)]
    Recover(#[from] RecoverError),
    #[error("installing the shard: {0}")]
    Install(String),
}
