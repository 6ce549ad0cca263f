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
//! appends after the fence. A tick that takes several partitions (a dead
//! node's share) acquires their leases one after another, then rebuilds
//! them side by side, at most [`TAKEOVERS_IN_FLIGHT_MAX`] at once, each
//! through its own acquire, rebuild, fence, install: a rebuild waits on
//! JetStream (snapshot fetch, stream replay), so failover time does not
//! grow with the partitions per dead node. Leaving (SIGTERM) hands every
//! partition over the same clean way.
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

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::Ordering::{Relaxed, SeqCst};
use std::sync::atomic::{AtomicBool, AtomicUsize};
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

/// Partitions one node rebuilds at once when it takes several over. Each
/// rebuild holds a partition's snapshot and rebuilt state in memory and
/// keeps a JetStream consumer replaying; the bound keeps a node that
/// takes a large share over (a 64-partition cluster losing half its
/// nodes) from opening them all at once. Above the cores of a small node
/// on purpose: the rebuilds mostly wait on JetStream.
pub const TAKEOVERS_IN_FLIGHT_MAX: usize = 4;

/// The tick while some partition has no owner: the map is read this
/// often until it settles. Each read is one KV get per partition.
const UNSETTLED_TICK: Duration = Duration::from_millis(200);

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

    /// Whether this node holds `partition`'s lease, as far as it knows
    /// (set at once when it acquires one, before the takeover's replay).
    pub fn held_here(&self, partition: usize) -> bool {
        self.view().owners.get(partition).and_then(Option::as_ref).is_some_and(|(o, _)| o.node == self.me)
    }

    /// Who owns `partition`, for a `not_owner` message.
    pub fn describe_owner(&self, partition: usize) -> String {
        let view = self.view();
        match view.owners.get(partition).and_then(Option::as_ref) {
            Some((o, epoch)) if o.node != self.me => {
                format!("partition {partition} is owned by node {} at {} (epoch {epoch})", o.node, o.tcp)
            }
            Some((_, epoch)) => format!("partition {partition} is being taken over by this node (epoch {epoch})"),
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
    /// The leases this node holds, renewed by the renewal thread while the
    /// node thread replays, snapshots or hands over (each can take longer
    /// than a lease lasts).
    held: Mutex<BTreeMap<u32, Held>>,
    /// Partitions whose lease the renewal thread lost: the node thread
    /// vacates them.
    lost_leases: Mutex<Vec<u32>>,
    /// Partitions seen without an owner, since when (the node thread's).
    free_since: Mutex<BTreeMap<u32, Instant>>,
    stop: AtomicBool,
    /// Set when the node thread has handed everything over, or died: the
    /// renewal thread stops then (it renews until the last release).
    done: AtomicBool,
    /// Told each change of this node's ownership (the relay).
    on_owner_change: Option<OwnerListener>,
    /// Rebuilds under way now, and the most at once in the current batch
    /// of takeovers (for its log line: rebuilds that overlapped in time).
    rebuilding: AtomicUsize,
    rebuilding_most: AtomicUsize,
}

/// One rebuild under way: counted in `now` (and `most` raised to it) while
/// it lives.
struct Rebuilding<'a>(&'a AtomicUsize);

impl<'a> Rebuilding<'a> {
    fn start(now: &'a AtomicUsize, most: &AtomicUsize) -> Self {
        let n = now.fetch_add(1, SeqCst) + 1;
        most.fetch_max(n, SeqCst);
        Self(now)
    }
}

impl Drop for Rebuilding<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, SeqCst);
    }
}

/// Sets its flag when dropped: the node thread's `done`, set even if the
/// thread dies of a panic (the renewal thread would otherwise renew every
/// lease held, for partitions nobody serves, for ever).
struct SetOnDrop<'a>(&'a AtomicBool);

impl Drop for SetOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, SeqCst);
    }
}

/// Called with a partition and `Some(epoch)` when this node takes it
/// (before its shard serves), `None` when it gave it up (after its shard
/// stopped). It runs on the node's thread: it must not wait long.
pub type OwnerListener = Box<dyn Fn(u32, Option<u64>) + Send + Sync>;

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
        Node::start_observed(nats, runtime, engine, me, config, core, metrics, None)
    }

    /// [`Node::start`], telling `on_owner_change` of each change of this
    /// node's ownership.
    #[allow(clippy::too_many_arguments)]
    pub fn start_observed(
        nats: Nats,
        runtime: tokio::runtime::Handle,
        engine: Arc<Engine<G>>,
        me: Owner,
        config: ClusterConfig,
        core: CoreConfig,
        metrics: Arc<ClusterMetrics>,
        on_owner_change: Option<OwnerListener>,
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
            held: Mutex::new(BTreeMap::new()),
            lost_leases: Mutex::new(Vec::new()),
            free_since: Mutex::new(BTreeMap::new()),
            stop: AtomicBool::new(false),
            done: AtomicBool::new(false),
            on_owner_change,
            rebuilding: AtomicUsize::new(0),
            rebuilding_most: AtomicUsize::new(0),
        });
        let s = shared.clone();
        let renewer = std::thread::Builder::new().name("trove-leases".into()).spawn(move || renew_loop(&s))?;
        let s = shared.clone();
        let thread = std::thread::Builder::new().name("trove-cluster".into()).spawn(move || {
            let done = SetOnDrop(&s.done);
            run(&s);
            drop(done);
            let _ = renewer.join();
        })?;
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
    let tick = s.nats.lease_ttl() / 3;
    while !s.stop.load(SeqCst) {
        let began = Instant::now();
        let settled = s.tick();
        // A partition without an owner is looked at again soon: a dead
        // node's partitions are taken over within `UNSETTLED_TICK` of
        // their leases' expiry, not within a third of the TTL.
        let next = if settled { tick } else { tick.min(UNSETTLED_TICK) };
        // Sleep in small steps, so that leaving is prompt.
        while !s.stop.load(SeqCst) && began.elapsed() < next {
            std::thread::sleep(Duration::from_millis(20).min(tick));
        }
    }
    // One at a time, each taken out of `held` only when its turn comes:
    // the renewal thread keeps renewing the others while the earlier ones
    // drain and snapshot (a long leave must not let them lapse).
    loop {
        let next = {
            let mut held = s.held.lock().unwrap_or_else(|e| e.into_inner());
            let p = held.keys().next().copied();
            p.and_then(|p| held.remove(&p).map(|h| (p, h)))
        };
        let Some((p, h)) = next else { break };
        s.release(p, h, true);
    }
    s.metrics.partitions_owned.store(0, Relaxed);
    // Gone from the map at once, so that the others take its share now.
    if let Err(e) = s.block_on(s.nats.leases().depart(&s.me.node)) {
        s.log(format!("leaving the nodes list: {e} (it expires within the TTL)"));
    }
}

/// The renewal thread: every third of the TTL, announces the node and
/// renews every lease held; a lease it could not renew within its TTL,
/// or found taken, goes to `lost_leases`.
fn renew_loop<G: Game>(s: &Shared<G>) {
    let ttl = s.nats.lease_ttl();
    let tick = ttl / 3;
    let leases = s.nats.leases();
    while !s.done.load(SeqCst) {
        let began = Instant::now();
        if !s.stop.load(SeqCst)
            && let Err(e) = s.block_on(leases.announce(&s.me))
        {
            s.log(format!("announcing: {e}"));
        }
        let now_held: Vec<(u32, Lease, Instant)> = {
            let held = s.held.lock().unwrap_or_else(|e| e.into_inner());
            held.iter().map(|(&p, h)| (p, h.lease.clone(), h.renewed)).collect()
        };
        for (p, lease, renewed) in now_held {
            let started = Instant::now();
            let outcome = s.block_on(leases.renew(&lease));
            let mut held = s.held.lock().unwrap_or_else(|e| e.into_inner());
            // Released meanwhile (or taken anew): not this renewal's.
            if held.get(&p).is_none_or(|h| h.lease.epoch != lease.epoch) {
                continue;
            }
            let lost = match outcome {
                Ok(Some(lease)) => {
                    s.metrics.lease_renew_ns.record(started.elapsed().as_nanos() as u64);
                    held.insert(p, Held { lease, renewed: started });
                    None
                }
                Ok(None) => Some(format!("lost the lease of partition {p}")),
                Err(e) if renewed.elapsed() >= ttl => {
                    Some(format!("could not renew the lease of partition {p} within its TTL ({e})"))
                }
                Err(e) => {
                    s.log(format!("renewing the lease of partition {p}: {e}"));
                    None
                }
            };
            if let Some(why) = lost {
                held.remove(&p);
                drop(held);
                s.log(why);
                s.metrics.leases_lost.fetch_add(1, Relaxed);
                s.lost_leases.lock().unwrap_or_else(|e| e.into_inner()).push(p);
            }
        }
        while !s.done.load(SeqCst) && began.elapsed() < tick {
            std::thread::sleep(Duration::from_millis(20).min(tick));
        }
    }
}

impl<G: Game> Shared<G> {
    fn block_on<T>(&self, f: impl Future<Output = T>) -> T {
        self.runtime.block_on(f)
    }

    fn log(&self, line: String) {
        tracing::info!(target: "trove::cluster", "cluster node {}: {line}", self.me.node);
    }

    /// One tick; returns whether the map looked settled (every partition
    /// owned).
    fn tick(&self) -> bool {
        let leases = self.nats.leases();
        // The engine failed (a local fault, e.g. a panic in a journal
        // thread): nothing here will be acknowledged again, so everything
        // is given up for the others to take, as if this node had died.
        if let Some(reason) = self.engine.failure() {
            let held = std::mem::take(&mut *self.held.lock().unwrap_or_else(|e| e.into_inner()));
            if !held.is_empty() {
                self.log(format!("the engine failed ({reason}): giving every partition up"));
            }
            for (p, h) in held {
                self.set_owner(p, None);
                let _ = self.block_on(leases.release(h.lease));
            }
            return true;
        }
        // Leases the renewal thread lost: another node may own those
        // partitions already, so no snapshot.
        let lost = std::mem::take(&mut *self.lost_leases.lock().unwrap_or_else(|e| e.into_inner()));
        for p in lost {
            self.drop_partition(p);
        }
        // A shard whose log was fenced or unavailable gives its partition
        // up: its state is not what the stream holds any more.
        for (p, state) in self.engine.shard_states().into_iter().enumerate() {
            if let ShardState::Lost(lost) = state {
                self.log(format!("partition {p}: {}", lost.reason()));
                self.metrics.partitions_lost.fetch_add(1, Relaxed);
                let held = self.held.lock().unwrap_or_else(|e| e.into_inner()).remove(&(p as u32));
                match held {
                    Some(h) => self.release(p as u32, h, false),
                    None => self.drop_partition(p as u32),
                }
            }
        }
        // The map, then the balance.
        let partitions = self.config.partitions;
        let view = match (self.block_on(leases.owners(partitions)), self.block_on(leases.nodes())) {
            (Ok(owners), Ok(nodes)) => View { owners, nodes },
            (Err(e), _) | (_, Err(e)) => {
                self.log(format!("reading the partition map: {e}"));
                return false;
            }
        };
        *self.view.lock().unwrap_or_else(|e| e.into_inner()) = view.clone();
        let alive = view.nodes.len().max(1) as u32;
        let target = partitions.div_ceil(alive) as usize;
        let settled = view.owners.iter().all(Option::is_some);
        let held_now = || self.held.lock().unwrap_or_else(|e| e.into_inner()).len();
        let holds = |p: u32| self.held.lock().unwrap_or_else(|e| e.into_inner()).contains_key(&p);
        // How long each partition has been seen without an owner: one free
        // for a whole TTL is taken whatever the balance says (its rightful
        // taker may be alive in the nodes list but unable to serve).
        let now = Instant::now();
        let stale = {
            let mut free = self.free_since.lock().unwrap_or_else(|e| e.into_inner());
            free.retain(|p, _| view.owners[*p as usize].is_none());
            for (p, o) in view.owners.iter().enumerate() {
                if o.is_none() {
                    free.entry(p as u32).or_insert(now);
                }
            }
            let ttl = self.nats.lease_ttl();
            free.iter().filter(|(_, since)| now.duration_since(**since) >= ttl).map(|(&p, _)| p).collect::<Vec<_>>()
        };
        if held_now() < target || !stale.is_empty() {
            // Free partitions, from a point of this node's own so that
            // nodes starting together do not all race for the same ones.
            // The leases one after another (each counts in `held` at once,
            // so the balance sees it), then the rebuilds side by side.
            let start = crc32c::crc32c(self.me.node.as_bytes()) % partitions;
            let mut acquired = Vec::new();
            for k in 0..partitions {
                let p = (start + k) % partitions;
                if self.stop.load(SeqCst) {
                    break;
                }
                let wanted = held_now() < target || stale.contains(&p);
                if wanted && view.owners[p as usize].is_none() && !holds(p) {
                    match self.acquire(p) {
                        Ok(Some(lease)) => acquired.push((p, lease, Instant::now())),
                        Ok(None) => {}
                        Err(e) => self.log(format!("taking partition {p} over: {e}")),
                    }
                }
            }
            self.take_over_all(acquired);
        } else if held_now() > target && settled {
            // A node joined: hand one partition over per tick, cleanly, so
            // that the cluster converges without a stampede.
            let last = {
                let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
                let p = held.keys().next_back().copied();
                p.and_then(|p| held.remove(&p).map(|h| (p, h)))
            };
            if let Some((p, h)) = last {
                self.log(format!("handing partition {p} over ({} held, {target} wanted)", held_now() + 1));
                self.release(p, h, true);
            }
        }
        self.metrics.partitions_owned.store(held_now() as u64, Relaxed);
        settled
    }

    /// Acquires partition `p`'s lease: `None` if another node has it. The
    /// lease is renewed (by the renewal thread) from the moment it is
    /// acquired, through the replay.
    fn acquire(&self, p: u32) -> Result<Option<Lease>, ClusterError> {
        let Some(lease) = self.block_on(self.nats.leases().acquire(p, &self.me))? else { return Ok(None) };
        let held = Held { lease: lease.clone(), renewed: Instant::now() };
        self.held.lock().unwrap_or_else(|e| e.into_inner()).insert(p, held);
        // Ours from now on, in what this node tells clients: a batch that
        // reaches it before the shard serves is told to resend here.
        self.set_owner(p, Some((self.me.clone(), lease.epoch)));
        Ok(Some(lease))
    }

    /// Rebuilds and installs the partitions whose leases this tick
    /// acquired (`take_over` each), up to [`TAKEOVERS_IN_FLIGHT_MAX`] at
    /// once on threads of their own; returns when every one is served or
    /// given up. Each partition keeps its own order (rebuild, fence,
    /// install, or its lease released); none waits for another's.
    fn take_over_all(&self, acquired: Vec<(u32, Lease, Instant)>) {
        let count = acquired.len();
        if count <= 1 {
            for (p, lease, started) in acquired {
                self.take_over_guarded(p, lease, started);
            }
            return;
        }
        let began = Instant::now();
        self.rebuilding_most.store(0, SeqCst);
        let queue = Mutex::new(VecDeque::from(acquired));
        std::thread::scope(|scope| {
            for _ in 0..count.min(TAKEOVERS_IN_FLIGHT_MAX) {
                scope.spawn(|| {
                    loop {
                        let next = queue.lock().unwrap_or_else(|e| e.into_inner()).pop_front();
                        let Some((p, lease, started)) = next else { break };
                        self.take_over_guarded(p, lease, started);
                    }
                });
            }
        });
        self.log(format!(
            "took {count} partitions over in {:.3} s, at most {} rebuilds overlapping",
            began.elapsed().as_secs_f64(),
            self.rebuilding_most.load(SeqCst)
        ));
    }

    /// Why the takeover of `p` (lease at `epoch`) must stop now, if it
    /// must: the node is leaving, the engine failed, or the lease is no
    /// longer held at that epoch (the renewal thread lost it).
    fn must_stop(&self, p: u32, epoch: u64) -> Option<String> {
        if self.stop.load(SeqCst) {
            Some("the node is leaving".into())
        } else if let Some(reason) = self.engine.failure() {
            Some(format!("the engine failed ({reason})"))
        } else if !self.still_held(p, epoch) {
            Some(format!("its lease (epoch {epoch}) was lost"))
        } else {
            None
        }
    }

    /// Whether this node still holds `p`'s lease at `epoch`.
    fn still_held(&self, p: u32, epoch: u64) -> bool {
        self.held.lock().unwrap_or_else(|e| e.into_inner()).get(&p).is_some_and(|h| h.lease.epoch == epoch)
    }

    /// `take_over`, logged, with a panic inside it (e.g. while decoding a
    /// hostile snapshot) caught: the partition is abandoned and the node
    /// goes on (a panic through the scope would end the node's thread
    /// with leases still held).
    fn take_over_guarded(&self, p: u32, lease: Lease, started: Instant) {
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.take_over(p, &lease, started)));
        match outcome {
            Ok(Ok(())) => {}
            Ok(Err(e)) => self.log(format!("taking partition {p} over: {e}")),
            Err(panic) => {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "a panic".into());
                self.log(format!("taking partition {p} over panicked ({what}): giving it up"));
                self.abandon(p);
            }
        }
    }

    /// Rebuilds and installs partition `p`, whose lease this node acquired
    /// at `started`; a takeover that fails releases the lease.
    fn take_over(&self, p: u32, lease: &Lease, started: Instant) -> Result<(), TakeoverError> {
        let epoch = lease.epoch;
        match self.install(p, lease) {
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
                    "serving partition {p} (epoch {epoch}, {replayed} messages replayed in {:.3} s)",
                    took.as_secs_f64()
                ));
                Ok(())
            }
            Err(e) => {
                self.abandon(p);
                Err(e)
            }
        }
    }

    /// Lets go of partition `p`, acquired but not installed: out of
    /// `held` and the view, its lease released (if the renewal thread has
    /// not lost it meanwhile).
    fn abandon(&self, p: u32) {
        let held = self.held.lock().unwrap_or_else(|e| e.into_inner()).remove(&p);
        self.set_owner(p, None);
        if let Some(h) = held {
            let _ = self.block_on(self.nats.leases().release(h.lease));
        }
    }

    /// Records `p`'s owner in the view at once (the next tick reads the
    /// whole map again).
    fn set_owner(&self, p: u32, owner: Option<(Owner, u64)>) {
        let here = owner.as_ref().filter(|(o, _)| o.node == self.me.node).map(|&(_, epoch)| epoch);
        {
            let mut view = self.view.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(slot) = view.owners.get_mut(p as usize) {
                *slot = owner;
            }
        }
        if let Some(listener) = &self.on_owner_change {
            listener(p, here);
        }
    }

    /// Rebuilds partition `p`, fences its stream for `lease`, and installs
    /// the shard; returns the messages replayed.
    fn install(&self, p: u32, lease: &Lease) -> Result<u64, TakeoverError> {
        let epoch = lease.epoch;
        let abandoned = |why: String| TakeoverError::Abandoned(why);
        let log = self.block_on(self.nats.log(p))?;
        let snapshots = self.block_on(self.nats.snapshots())?;
        for _ in 0..FENCE_ATTEMPTS_MAX {
            // Checked before each step that costs or commits: a takeover
            // queued behind others may find its lease gone, the engine
            // failed or the node leaving by the time its turn comes.
            if let Some(why) = self.must_stop(p, epoch) {
                return Err(abandoned(why));
            }
            let recovered = {
                // Counted down when dropped, a panic in the rebuild included.
                let _rebuilding = Rebuilding::start(&self.rebuilding, &self.rebuilding_most);
                self.block_on(recover_partition::<G>(
                    &log,
                    Some(&snapshots),
                    self.core,
                    Some(&self.metrics),
                    |_, _, _| {},
                ))?
            };
            if let Some(why) = self.must_stop(p, epoch) {
                return Err(abandoned(why));
            }
            // A newer owner fenced the stream while this one waited: the
            // fence below would be accepted (it expects only the last
            // sequence), so the epochs are compared here.
            if recovered.fence_epoch_max > epoch {
                return Err(abandoned(format!(
                    "the stream holds a fence of epoch {}, newer than this lease's {epoch}",
                    recovered.fence_epoch_max
                )));
            }
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
            if !self.still_held(p, epoch) {
                return Err(abandoned(format!("its lease (epoch {epoch}) was lost after the fence")));
            }
            self.engine
                .install_shard(p as usize, core, stream_log, FsyncPolicy::Group)
                .map_err(|e| TakeoverError::Install(e.to_string()))?;
            return Ok(recovered.replayed);
        }
        Err(TakeoverError::Install(format!("the stream kept moving under {FENCE_ATTEMPTS_MAX} fences")))
    }

    /// Gives partition `p` up (already out of `held`): its shard vacated
    /// (with a snapshot on a clean hand-over), then its lease released.
    fn release(&self, p: u32, h: Held, snapshot: bool) {
        self.vacate(p, snapshot);
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
    fn drop_partition(&self, p: u32) {
        self.vacate(p, false);
    }

    /// Vacates `p`'s shard (a snapshot first if `snapshot`) and clears it
    /// from the view.
    fn vacate(&self, p: u32, snapshot: bool) {
        if let Err(e) = self.engine.vacate_shard(p as usize, snapshot) {
            self.log(format!("vacating partition {p}: {e}"));
        }
        self.set_owner(p, None);
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
    #[error("abandoned: {0}")]
    Abandoned(String),
}
