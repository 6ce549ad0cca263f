//! The HTTP control plane (default 127.0.0.1:7480) on its own one-thread
//! runtime, so it keeps answering when the data plane's workers and the
//! shards are saturated.
//!
//! Reads of game state run on the shard that owns the hunt, between its
//! batches (`Engine::query_world`); creating a hunt is an event like any
//! other, through the same producer path and journal. docs/control.md and
//! `/openapi.json` describe the endpoints; `/metrics` is the Prometheus
//! text format (`metrics.rs`).
//!
//! The routes are axum's; the connections are driven here, with hyper's
//! HTTP/1 connection directly, so that a peer cannot hold the plane open
//! (`ControlConfig`): every connection is in one `Phase` with a
//! deadline, the number open is capped, and at the cap the connection
//! that has waited longest for its request is closed to make room. A
//! request body is checked against [`BODY_BYTES_MAX`] on its announced
//! length, before a byte of it is read, and read under a deadline before
//! the router sees it.

// Handlers return a `Response` as their error: it is the reply, built once.
#![allow(clippy::result_large_err)]

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::poll_fn;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes, HttpBody};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, Request, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use trove_core::{Game, Stamped};
use trove_shard::{Engine, Producer, SubmitError};

use crate::conn_log::{self, ConnInfo, Listener, RefusalLog, RefusedFor};
use crate::error::{InvalidConfig, JsonError, StartError};
use crate::json::JsonGame;
use crate::live::{LIVE_INTERVAL, LIVE_STALL_TIMEOUT, LiveState};
use crate::metrics::{self, MetricsSources};
use crate::{ServerMetrics, bind};

pub use crate::json::parse_create_body;

/// Largest request body, in bytes: a longer announced length is answered
/// 413 before a byte of the body is read, and a chunked body is cut off
/// there. A create is a few hundred bytes.
pub const BODY_BYTES_MAX: usize = 64 << 10;
/// Largest request head (request line and headers), in bytes: 431 past it.
pub const HEAD_BYTES_MAX: usize = 16 << 10;
/// hyper's read and write buffers per connection (its minimum is 8 KiB):
/// with `connections_max` this bounds the plane's buffer memory.
const CONNECTION_BUFFER_BYTES_MAX: usize = 64 << 10;
/// After the last answer on a connection, its unread input is drained for
/// at most this long and this many bytes before it closes, so that the
/// answer reaches a peer still sending (an early 413, say) instead of
/// being lost to a reset.
const LINGER_TIMEOUT: Duration = Duration::from_secs(2);
const LINGER_BYTES_MAX: usize = 1 << 20;
/// How long a new connection waits at the cap for the one closed to make
/// room for it; past it, the new one is closed too.
const EVICTION_WAIT: Duration = Duration::from_secs(1);
/// `ControlConfig::live_streams_max` by default (with the default 128
/// connections).
pub const LIVE_STREAMS_MAX_DEFAULT: usize = 16;
/// Bounds of `ControlConfig::connections_max`.
pub const CONTROL_CONNECTIONS_MAX_LIMIT: usize = 65_536;
/// `ControlConfig::connections_per_address_max` unless set: a quarter of
/// the default cap, room for a scraper, probes and a browser's few
/// connections from one host.
pub const CONTROL_CONNECTIONS_PER_ADDRESS_MAX_DEFAULT: usize = 32;

/// Every bound of the control plane's connections, named.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ControlConfig {
    /// Connections open at once. At the cap, the connection that has
    /// waited longest for its request (headers or body) is closed to make
    /// room for the new one; when every open connection is inside a
    /// handler, the new one is closed at once. Descriptors for them are
    /// reserved at start (`fds.rs`).
    pub connections_max: usize,
    /// Connections open at once from one source address (an IPv6 /64).
    /// Past it, a new one from there closes the one of that address's that
    /// has waited longest for its request, never another address's (and
    /// is closed at once if all of them are in a handler): one peer cannot
    /// evict every other's connections.
    pub connections_per_address_max: usize,
    /// From the accept, or the end of the previous answer, to the end of a
    /// request's headers; past it the connection is closed unanswered.
    pub header_timeout: Duration,
    /// From the end of the headers to the end of the body; past it the
    /// request is answered 408 `request_timeout` and the connection closed.
    pub body_timeout: Duration,
    /// `GET /live` streams open at once; past it a new one is answered 503
    /// `too_many_streams` (0: every one is). A stream is never closed to
    /// make room, so this stays below `connections_max`: the rest are for
    /// requests. [`ControlConfig::live_streams_default`] when not set.
    pub live_streams_max: usize,
    /// HTTPS (`--tls-cert`, `--tls-key`): the listener speaks only TLS,
    /// and the handshake runs within `header_timeout`. `None`: HTTP.
    pub tls: Option<crate::tls::ServerTls>,
}

impl Default for ControlConfig {
    fn default() -> Self {
        Self {
            connections_max: 128,
            connections_per_address_max: CONTROL_CONNECTIONS_PER_ADDRESS_MAX_DEFAULT,
            header_timeout: Duration::from_secs(5),
            body_timeout: Duration::from_secs(10),
            live_streams_max: LIVE_STREAMS_MAX_DEFAULT,
            tls: None,
        }
    }
}

impl ControlConfig {
    /// `live_streams_max` for a plane of `connections_max` connections when
    /// none is set: 16, or half the connections if that is fewer.
    pub fn live_streams_default(connections_max: usize) -> usize {
        LIVE_STREAMS_MAX_DEFAULT.min(connections_max / 2)
    }

    pub fn validate(&self) -> Result<(), InvalidConfig> {
        let hour = Duration::from_secs(3600);
        let checks = [
            (
                (1..=CONTROL_CONNECTIONS_MAX_LIMIT).contains(&self.connections_max),
                "control_connections_max must be in 1..=65536",
            ),
            (self.connections_per_address_max >= 1, "control_connections_per_address_max must be at least 1"),
            (
                !self.header_timeout.is_zero() && self.header_timeout <= hour,
                "control_header_timeout_ms must be in 1..=3600000",
            ),
            (
                !self.body_timeout.is_zero() && self.body_timeout <= hour,
                "control_body_timeout_ms must be in 1..=3600000",
            ),
            (
                self.live_streams_max < self.connections_max,
                "control_live_streams_max must be below control_connections_max",
            ),
        ];
        checks.iter().find(|(ok, _)| !ok).map_or(Ok(()), |&(_, msg)| Err(InvalidConfig(msg)))
    }
}

/// What the control plane needs of a game beyond its JSON form: the views
/// of one of its worlds the read routes answer with, and the event that
/// creates a world. The routes keep their names (`/hunts`, docs/control.md).
pub trait ControlGame: JsonGame {
    /// A world in a listing (`GET /hunts`); its detail starts with it.
    fn world_summary(world: &Self::World) -> Value;
    /// `GET /hunts/{id}`.
    fn world_detail(world: &Self::World) -> Value;
    /// `GET /hunts/{id}/leaderboard`.
    fn world_leaderboard(world: &Self::World) -> Value;
    /// Events applied to the world since this process loaded it: the live
    /// feed's events/s per hunt (`GET /live`). 0 for a game that does not
    /// count them.
    fn world_events(_world: &Self::World) -> u64 {
        0
    }
    /// `GET /hunts/{id}/players/{player}`: `None` when the player is not
    /// in the world.
    fn world_player(world: &Self::World, player: u32) -> Option<Value>;
    /// The create event a `POST /hunts` body asks for; the bytes come from
    /// a client.
    fn create_from_body(body: &[u8]) -> Result<Self::Event, JsonError>;
    /// The answer to a create event's outcome.
    fn create_answer(event: &Self::Event, outcome: &Self::Outcome) -> CreateAnswer;
    /// The event that deletes world `id` (`DELETE /hunts/{id}`).
    fn delete_event(id: u32) -> Self::Event;
    /// The answer to a delete event's outcome: 200 with a body, or a
    /// refusal (404 for a world that does not exist).
    fn delete_answer(event: &Self::Event, outcome: &Self::Outcome) -> CreateAnswer;
}

/// How `POST /hunts` answers a create's outcome (and `DELETE
/// /hunts/{id}` a delete's).
#[derive(Clone, Debug, PartialEq)]
pub enum CreateAnswer {
    /// 201 (a delete: 200) with this body.
    Created(Value),
    /// An error body `{"error": code, "message": ...}` with this status.
    Refused { status: StatusCode, code: &'static str, message: String },
}

/// What `GET /cluster` answers: this node's view of its cluster, as
/// docs/control.md shows it (`{"cluster", "partitions", "node", "nodes",
/// "map"}`), or `None` while the node is not in a cluster (404
/// `not_a_cluster`). The cluster side implements it; it is asked once per
/// request on the control plane's one thread, so it answers from memory
/// (a copy of the lease table), never by waiting on the network.
pub trait ClusterView: Send + Sync + 'static {
    fn cluster_view(&self) -> Option<Value>;

    /// The cluster side's figures for `/metrics` (`trove_cluster_*`),
    /// written after the engine's and the server's.
    fn metrics(&self, _families: &mut metrics::Families) {}
}

impl<F: Fn() -> Option<Value> + Send + Sync + 'static> ClusterView for F {
    fn cluster_view(&self) -> Option<Value> {
        self()
    }
}

/// The view `GET /cluster` renders, set once the node knows its cluster
/// (`ControlPlane::set_cluster_view`); `None` until then.
type ClusterSlot = Arc<RwLock<Option<Arc<dyn ClusterView>>>>;

/// What the control plane reports about the engine it serves.
#[derive(Clone, Debug)]
pub struct ControlInfo {
    pub mode: &'static str,
    pub shards: usize,
    /// `none`, or the fsync policy.
    pub fsync: String,
    pub journal_dir: Option<String>,
    pub tcp_addr: SocketAddr,
    pub ws_addr: Option<SocketAddr>,
}

struct Ctx<G: Game> {
    engine: Arc<Engine<G>>,
    /// One producer for every state-changing request, so the engine's
    /// per-producer tables hold one entry for the control plane.
    producer: tokio::sync::Mutex<Producer<G>>,
    info: ControlInfo,
    started: Instant,
    sources: MetricsSources<G>,
    ready: Arc<AtomicBool>,
    conns: Arc<Conns>,
    /// Cluster mode: who owns the partitions this node does not.
    owners: Option<Arc<dyn crate::Owners>>,
    cluster: ClusterSlot,
    /// Ends the live streams when the plane stops (their bodies never end
    /// by themselves).
    stopped: tokio::sync::watch::Receiver<bool>,
    /// `None`: every route open (no `--auth`).
    auth: Option<Arc<crate::auth::Auth>>,
}

/// A running control plane.
pub struct ControlPlane {
    runtime: Option<tokio::runtime::Runtime>,
    addr: SocketAddr,
    stop: tokio::sync::watch::Sender<bool>,
    task: Option<tokio::task::JoinHandle<()>>,
    conns: Arc<Conns>,
    cluster: ClusterSlot,
}

impl std::fmt::Debug for ControlPlane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlPlane").field("addr", &self.addr).finish()
    }
}

/// What a control plane serves and reports on, besides its listener.
#[derive(Debug)]
pub struct ControlParts<G: Game> {
    pub config: ControlConfig,
    pub engine: Arc<Engine<G>>,
    /// The data plane's counters, for `/metrics` and `/status`.
    pub server_metrics: Arc<ServerMetrics>,
    /// The data plane's runtime, for its tokio metrics.
    pub data_plane: tokio::runtime::Handle,
    /// The WebSocket listener's runtime (`Server::ws_runtime_handle`), for
    /// its tokio metrics (`runtime="ws"`).
    pub ws_plane: Option<tokio::runtime::Handle>,
    pub info: ControlInfo,
    /// `/ready` answers 200 while it holds.
    pub ready: Arc<AtomicBool>,
    /// Cluster mode: who owns the partitions this node does not (`None`
    /// outside a cluster).
    pub owners: Option<Arc<dyn crate::Owners>>,
    /// `Some`: every route but the open ones ([`access`]) takes
    /// `Authorization: Bearer` with a token whose role allows it.
    pub auth: Option<Arc<crate::auth::Auth>>,
    /// Serve `/metrics` alone, with no token (`--metrics-listen`): for a
    /// scraper on an address the operator keeps private.
    pub metrics_only: bool,
}

impl ControlPlane {
    /// Binds `addr` and serves on a runtime of its own. Its `/metrics`
    /// leave out a WebSocket runtime (`ControlParts::ws_plane` has it).
    pub fn start<G: ControlGame>(
        addr: SocketAddr,
        config: ControlConfig,
        engine: Arc<Engine<G>>,
        server_metrics: Arc<ServerMetrics>,
        data_plane: tokio::runtime::Handle,
        info: ControlInfo,
        ready: Arc<AtomicBool>,
    ) -> Result<Self, StartError> {
        let listener = bind(addr, "control plane")?;
        let parts = ControlParts {
            config,
            engine,
            server_metrics,
            data_plane,
            ws_plane: None,
            info,
            ready,
            owners: None,
            auth: None,
            metrics_only: false,
        };
        Self::start_on(listener, parts)
    }

    /// Serves on a listener bound already (`trove serve` binds it before
    /// the engine recovers anything), on a runtime of its own.
    pub fn start_on<G: ControlGame>(
        std_listener: std::net::TcpListener,
        parts: ControlParts<G>,
    ) -> Result<Self, StartError> {
        let ControlParts {
            config,
            engine,
            server_metrics,
            data_plane,
            ws_plane,
            info,
            ready,
            owners,
            auth,
            metrics_only,
        } = parts;
        config.validate()?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("trove-control")
            .enable_io()
            .enable_time()
            .build()
            .map_err(|source| StartError::Runtime { what: "control", source })?;
        let listener_error = |source| StartError::Listener { what: "control plane", source };
        std_listener.set_nonblocking(true).map_err(listener_error)?;
        let addr = std_listener.local_addr().map_err(listener_error)?;
        let conns = Arc::new(Conns::new(config));
        let cluster: ClusterSlot = Arc::new(RwLock::new(None));
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let ctx = Arc::new(Ctx {
            producer: tokio::sync::Mutex::new(engine.producer()),
            engine: engine.clone(),
            info,
            started: Instant::now(),
            sources: MetricsSources {
                engine,
                server: server_metrics,
                data_plane,
                ws_plane,
                control_plane: runtime.handle().clone(),
            },
            ready,
            conns: conns.clone(),
            owners,
            cluster: cluster.clone(),
            stopped: stopped.clone(),
            auth,
        });
        let app = if metrics_only { metrics_router(ctx) } else { router(ctx) };
        let task = {
            let _guard = runtime.enter();
            let listener = tokio::net::TcpListener::from_std(std_listener).map_err(listener_error)?;
            let name = format!("control accept {addr}");
            crate::task::spawn_named_on(runtime.handle(), &name, accept_loop(conns.clone(), listener, app, stopped))
        };
        Ok(Self { runtime: Some(runtime), addr, stop, task: Some(task), conns, cluster })
    }

    /// Makes `GET /cluster` answer `view` (until now: 404 `not_a_cluster`).
    /// A node joins its cluster after its control plane is up, so this is
    /// set on the running plane.
    pub fn set_cluster_view(&self, view: Arc<dyn ClusterView>) {
        *self.cluster.write().unwrap_or_else(|e| e.into_inner()) = Some(view);
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Connections open now (at most `connections_max`).
    pub fn connections_open(&self) -> usize {
        self.conns.open()
    }

    /// Stops accepting, lets requests under way finish (for at most 2 s),
    /// then closes every connection.
    pub fn shutdown(mut self) {
        let _ = self.stop.send(true);
        if let (Some(rt), Some(task)) = (self.runtime.take(), self.task.take()) {
            let _ = rt.block_on(async { tokio::time::timeout(Duration::from_secs(2), task).await });
            rt.shutdown_timeout(Duration::from_millis(100));
        }
    }
}

// ---------------------------------------------------------------------------
// Connections.

/// Where a connection is in its current request; each phase but `Handler`
/// has a deadline, and only a connection in `Handler` is never closed to
/// make room.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
enum Phase {
    /// Waiting for a request's headers (`header_timeout`), including
    /// between requests and while the last answer is written.
    Head = 0,
    /// Reading the body (`body_timeout`, enforced by `read_body`).
    Body = 1,
    /// The router is answering (the handlers bound their own waits).
    Handler = 2,
    /// Writing a live stream (`GET /live`): `phase_since_ms` is when its
    /// reader last took a snapshot, and [`LIVE_STALL_TIMEOUT`] after that
    /// the connection is closed. Never closed to make room
    /// (`live_streams_max` keeps streams below the cap).
    Stream = 3,
}

/// One open connection's shared state.
struct Conn {
    phase: AtomicU8,
    /// When `phase` began, in milliseconds since the plane started.
    phase_since_ms: AtomicU64,
    /// Chosen to make room: no longer a candidate.
    evicted: AtomicBool,
    /// Tells the connection's task to close at once.
    close: tokio::sync::Notify,
    /// Its socket (-1 until the connection's task has it): a live
    /// stream's send buffer is capped through it.
    fd: std::sync::atomic::AtomicI32,
    /// Requests answered, for its close line.
    requests: AtomicU64,
    /// Its source address's count (`per_address::source_key`).
    key: std::net::IpAddr,
}

impl Conn {
    fn phase(&self) -> Phase {
        match self.phase.load(Relaxed) {
            0 => Phase::Head,
            1 => Phase::Body,
            2 => Phase::Handler,
            _ => Phase::Stream,
        }
    }

    fn enter(&self, phase: Phase, now_ms: u64) {
        self.phase_since_ms.store(now_ms, Relaxed);
        self.phase.store(phase as u8, Relaxed);
    }
}

/// Why the plane closed a connection itself, for `/metrics`.
#[derive(Debug, Default)]
struct ConnCounters {
    accepted: AtomicU64,
    /// Closed at once: at the cap with every connection in a handler.
    refused: AtomicU64,
    /// Closed at once: its address had `connections_per_address_max` open,
    /// every one of them in a handler.
    address_limit: AtomicU64,
    /// Closed to make room for a new one.
    evicted: AtomicU64,
    header_timeouts: AtomicU64,
    body_timeouts: AtomicU64,
    bodies_too_large: AtomicU64,
    /// Live streams closed because their reader took nothing for
    /// `LIVE_STALL_TIMEOUT`.
    live_stalled: AtomicU64,
    /// Live streams refused at `live_streams_max`.
    live_refused: AtomicU64,
}

/// The open connections: the cap, the phases, the deadlines.
struct Conns {
    config: ControlConfig,
    epoch: Instant,
    open: Mutex<HashMap<u64, Arc<Conn>>>,
    next_id: AtomicU64,
    /// A slot was given back.
    released: tokio::sync::Notify,
    counters: ConnCounters,
    /// Live streams open now (at most `config.live_streams_max`).
    streams_open: std::sync::atomic::AtomicUsize,
    /// Open connections per source address.
    per_address: crate::per_address::PerAddress,
    /// `connection refused` lines, rate-limited per reason.
    refusals: RefusalLog,
}

/// A connection's place under the cap; given back when dropped.
struct Slot {
    conns: Arc<Conns>,
    id: u64,
    conn: Arc<Conn>,
    info: ConnInfo,
}

impl Drop for Slot {
    fn drop(&mut self) {
        // Both under the lock `admit` checks them under.
        let mut open = self.conns.lock();
        open.remove(&self.id);
        self.conns.per_address.give_back(self.conn.key);
        drop(open);
        self.conns.released.notify_one();
    }
}

impl Conns {
    fn new(config: ControlConfig) -> Self {
        Self {
            epoch: Instant::now(),
            open: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
            released: tokio::sync::Notify::new(),
            counters: ConnCounters::default(),
            streams_open: std::sync::atomic::AtomicUsize::new(0),
            per_address: crate::per_address::PerAddress::new(config.connections_per_address_max),
            refusals: RefusalLog::new(),
            config,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<Conn>>> {
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn open(&self) -> usize {
        self.lock().len()
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn at_ms(&self, ms: u64) -> tokio::time::Instant {
        tokio::time::Instant::from_std(self.epoch + Duration::from_millis(ms))
    }

    /// A slot for a connection from `peer`: a free one, or one made by
    /// closing the connection that has waited longest for its request.
    /// At the plane's cap that is any connection; when `peer`'s address
    /// has `connections_per_address_max` open, only one of that address's
    /// own, so that one peer cannot evict every other's connections.
    /// Refused when every candidate is in a handler (or the one closed did
    /// not go within `EVICTION_WAIT`): the new connection is then closed.
    async fn admit(self: &Arc<Self>, peer: SocketAddr) -> Result<Slot, RefusedFor> {
        let key = crate::per_address::source_key(peer.ip());
        let deadline = tokio::time::Instant::now() + EVICTION_WAIT;
        loop {
            // Made before the check, so a slot given back after it wakes us.
            let released = self.released.notified();
            let why = {
                let mut open = self.lock();
                let address_full = self.per_address.open(key) >= self.config.connections_per_address_max;
                if !address_full && open.len() < self.config.connections_max && self.per_address.try_take(key) {
                    let id = self.next_id.fetch_add(1, Relaxed);
                    let conn = Arc::new(Conn {
                        phase: AtomicU8::new(Phase::Head as u8),
                        phase_since_ms: AtomicU64::new(self.now_ms()),
                        evicted: AtomicBool::new(false),
                        close: tokio::sync::Notify::new(),
                        fd: std::sync::atomic::AtomicI32::new(-1),
                        requests: AtomicU64::new(0),
                        key,
                    });
                    open.insert(id, conn.clone());
                    drop(open);
                    self.counters.accepted.fetch_add(1, Relaxed);
                    let info = ConnInfo { id, listener: Listener::Control, peer, opened: Instant::now() };
                    self.refusals.flush(Listener::Control);
                    return Ok(Slot { conns: self.clone(), id, conn, info });
                }
                let why = if address_full { RefusedFor::AddressLimit } else { RefusedFor::ConnectionLimit };
                // One eviction at a time: a wake-up before the evicted
                // connection has closed must not close another one.
                if !open.values().any(|c| c.evicted.load(Relaxed)) {
                    let victim = open
                        .values()
                        .filter(|c| {
                            !matches!(c.phase(), Phase::Handler | Phase::Stream) && (!address_full || c.key == key)
                        })
                        .min_by_key(|c| c.phase_since_ms.load(Relaxed));
                    let Some(victim) = victim else {
                        // Every candidate is inside a handler.
                        self.count_refusal(why);
                        return Err(why);
                    };
                    victim.evicted.store(true, Relaxed);
                    victim.close.notify_one();
                    self.counters.evicted.fetch_add(1, Relaxed);
                }
                why
            };
            if tokio::time::timeout_at(deadline, released).await.is_err() {
                self.count_refusal(why);
                return Err(why);
            }
        }
    }

    fn count_refusal(&self, why: RefusedFor) {
        let counter = match why {
            RefusedFor::AddressLimit => &self.counters.address_limit,
            _ => &self.counters.refused,
        };
        counter.fetch_add(1, Relaxed);
    }

    /// When the connection's deadline passes, if it is waiting for
    /// headers or writing a live stream (which phase, then); else when to
    /// look again.
    fn head_deadline(&self, conn: &Conn) -> (Option<Phase>, tokio::time::Instant) {
        let since_ms = conn.phase_since_ms.load(Relaxed);
        match conn.phase() {
            phase @ Phase::Head => {
                let timeout_ms = self.config.header_timeout.as_millis() as u64;
                (Some(phase), self.at_ms(since_ms.saturating_add(timeout_ms)))
            }
            phase @ Phase::Stream => {
                let timeout_ms = LIVE_STALL_TIMEOUT.as_millis() as u64;
                (Some(phase), self.at_ms(since_ms.saturating_add(timeout_ms)))
            }
            _ => (None, tokio::time::Instant::now() + self.config.header_timeout),
        }
    }
}

/// Accepts until `stop`, then waits (bounded by `ControlPlane::shutdown`)
/// for the open connections to finish.
async fn accept_loop(
    conns: Arc<Conns>,
    listener: tokio::net::TcpListener,
    router: Router,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stop.wait_for(|s| *s) => break,
        };
        let Ok((stream, peer)) = accepted else {
            // Out of file descriptors, say: back off instead of spinning.
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let slot = match conns.admit(peer).await {
            Ok(slot) => slot,
            Err(why) => {
                drop(stream);
                conns.refusals.refused(Listener::Control, peer, None, why);
                continue;
            }
        };
        // With TLS, hyper's first read drives the handshake, under the
        // header deadline (`Phase::Head`).
        let stream = {
            let _ = stream.set_nodelay(true);
            // A live stream's send buffer is capped through it.
            slot.conn.fd.store(std::os::fd::AsRawFd::as_raw_fd(&stream), Relaxed);
            crate::tls::Transport::new(stream, conns.config.tls.as_ref())
        };
        let connection = serve_connection(conns.clone(), slot, stream, router.clone(), stop.clone());
        crate::task::spawn_named(&format!("control conn {peer}"), connection);
    }
    drop(listener);
    while conns.open() > 0 {
        let released = conns.released.notified();
        let _ = tokio::time::timeout(Duration::from_millis(50), released).await;
    }
}

/// How a connection's wait ended.
enum Wake {
    Evicted,
    Deadline,
    Stop,
}

async fn serve_connection(
    conns: Arc<Conns>,
    slot: Slot,
    stream: crate::tls::Transport,
    router: Router,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let conn = slot.conn.clone();
    conn_log::opened(&slot.info, None, None);
    let reason = serve_requests(&conns, &conn, stream, router, &mut stop).await;
    let counts = conn_log::Counts { frames_in: conn.requests.load(Relaxed), ..conn_log::Counts::default() };
    conn_log::closed(&slot.info, reason, &counts, None, None);
    drop(slot);
}

/// Serves a connection's requests until it ends; returns why: `done`
/// (the peer closed, or the last answer said close), `evicted`,
/// `header_timeout`, `stalled` (a live stream's reader), `shutting_down`.
async fn serve_requests(
    conns: &Arc<Conns>,
    conn: &Arc<Conn>,
    stream: crate::tls::Transport,
    router: Router,
    stop: &mut tokio::sync::watch::Receiver<bool>,
) -> &'static str {
    let service = {
        let (conns, conn) = (conns.clone(), conn.clone());
        hyper::service::service_fn(move |req: Request<Incoming>| {
            let (conns, conn, router) = (conns.clone(), conn.clone(), router.clone());
            Box::pin(async move { Ok::<_, Infallible>(answer(conns, conn, router, req).await) })
                as Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>
        })
    };
    let mut http = hyper::server::conn::http1::Builder::new();
    // The header deadline is ours (`Phase::Head`): it also covers a peer
    // that connects and sends nothing.
    http.header_read_timeout(None).max_header_size(HEAD_BYTES_MAX).max_buf_size(CONNECTION_BUFFER_BYTES_MAX);
    let mut connection = http.serve_connection(TokioIo::new(stream), service);
    let mut stopping = false;
    loop {
        let (waiting, deadline) = conns.head_deadline(conn);
        let wake = tokio::select! {
            // Done, or failed (a malformed request, answered 400 by hyper;
            // a reset): either way the socket is ours again.
            _ = poll_fn(|cx| connection.poll_without_shutdown(cx)) => break,
            _ = conn.close.notified() => Wake::Evicted,
            _ = tokio::time::sleep_until(deadline) => Wake::Deadline,
            _ = stop.wait_for(|s| *s), if !stopping => Wake::Stop,
        };
        match wake {
            // A peer that held a slot without a request: dropped unanswered.
            Wake::Evicted => return "evicted",
            Wake::Deadline => {
                let (now_waiting, deadline) = conns.head_deadline(conn);
                if waiting.is_some() && now_waiting == waiting && deadline <= tokio::time::Instant::now() {
                    if waiting == Some(Phase::Stream) {
                        conns.counters.live_stalled.fetch_add(1, Relaxed);
                        return "stalled";
                    }
                    conns.counters.header_timeouts.fetch_add(1, Relaxed);
                    return "header_timeout";
                }
            }
            Wake::Stop => {
                stopping = true;
                Pin::new(&mut connection).graceful_shutdown();
            }
        }
    }
    let mut stream = connection.into_parts().io.into_inner();
    tokio::select! {
        _ = linger(&mut stream) => {}
        _ = conn.close.notified() => {}
    }
    if stopping { "shutting_down" } else { "done" }
}

/// Sends FIN after the last answer, then reads and drops what the peer
/// still sends (bounded), so closing does not reset the connection under
/// an answer the peer has not read yet.
async fn linger(stream: &mut crate::tls::Transport) {
    let _ = stream.shutdown().await;
    let drain = async {
        let mut buf = [0u8; 4096];
        let mut drained = 0usize;
        while drained < LINGER_BYTES_MAX {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => drained += n,
            }
        }
    };
    let _ = tokio::time::timeout(LINGER_TIMEOUT, drain).await;
}

/// Why a body was not read.
enum BodyError {
    TooLarge,
    Timeout,
    Read(hyper::Error),
}

/// One request: its body read (bounded in size and time) while the
/// connection may still be closed to make room, then the router.
async fn answer(conns: Arc<Conns>, conn: Arc<Conn>, router: Router, req: Request<Incoming>) -> Response {
    conn.requests.fetch_add(1, Relaxed);
    conn.enter(Phase::Body, conns.now_ms());
    let (mut parts, body) = req.into_parts();
    let reply = match read_body(body, conns.config.body_timeout).await {
        Ok(bytes) => {
            conn.enter(Phase::Handler, conns.now_ms());
            // What `GET /live` needs to hold a stream on this connection.
            parts.extensions.insert(StreamSlot { conns: conns.clone(), conn: conn.clone() });
            let service = TowerToHyperService::new(router);
            match hyper::service::Service::call(&service, Request::from_parts(parts, Body::from(bytes))).await {
                Ok(r) => r,
                Err(never) => match never {},
            }
        }
        Err(BodyError::TooLarge) => {
            conns.counters.bodies_too_large.fetch_add(1, Relaxed);
            closing(error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                format!("the body is above {} KiB", BODY_BYTES_MAX >> 10),
            ))
        }
        Err(BodyError::Timeout) => {
            conns.counters.body_timeouts.fetch_add(1, Relaxed);
            closing(error(
                StatusCode::REQUEST_TIMEOUT,
                "request_timeout",
                format!("the body did not arrive within {} ms", conns.config.body_timeout.as_millis()),
            ))
        }
        Err(BodyError::Read(e)) => {
            closing(error(StatusCode::BAD_REQUEST, "bad_request", format!("reading the body: {e}")))
        }
    };
    // A live stream's body is written from now on, under its own
    // deadline; any other answer ends the request.
    let phase = if reply.extensions().get::<LiveStream>().is_some() { Phase::Stream } else { Phase::Head };
    if phase == Phase::Stream {
        cap_send_buffer(conn.fd.load(Relaxed));
    }
    conn.enter(phase, conns.now_ms());
    reply
}

/// A live stream's socket send buffer, in bytes (the kernel doubles it
/// for its own bookkeeping). Without a cap the kernel grows it to
/// megabytes for a reader that does not read, and the stall deadline,
/// which runs only once hyper stops asking for snapshots, would start
/// an hour later; with it, a stalled reader holds this, hyper's own
/// buffer of a few snapshots, and nothing more, and is closed
/// `LIVE_STALL_TIMEOUT` after that.
const LIVE_SEND_BUFFER_BYTES: libc::c_int = 16 << 10;

/// Caps `fd`'s send buffer at [`LIVE_SEND_BUFFER_BYTES`] (which also turns
/// the kernel's autotuning off for it). A failure leaves the socket as it
/// was: the stream still works, and is still closed once it stalls.
fn cap_send_buffer(fd: std::os::fd::RawFd) {
    if fd < 0 {
        return;
    }
    let bytes = LIVE_SEND_BUFFER_BYTES;
    // SAFETY: `fd` is the connection's own socket, open while its task
    // (which answers this request) runs; the option value is a c_int
    // whose size is passed with it.
    #[allow(unsafe_code)]
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_SNDBUF,
            (&bytes as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

/// Marks an answer as the connection's last.
fn closing(mut r: Response) -> Response {
    r.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
    r
}

/// Reads a whole body of at most `BODY_BYTES_MAX` bytes within `timeout`.
/// An announced length past the limit is refused before anything is read;
/// the buffer grows with the bytes that arrive.
async fn read_body(mut body: Incoming, timeout: Duration) -> Result<Bytes, BodyError> {
    if body.size_hint().lower() > BODY_BYTES_MAX as u64 {
        return Err(BodyError::TooLarge);
    }
    let read = async {
        let mut bytes = Vec::new();
        while let Some(frame) = poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
            let Ok(data) = frame.map_err(BodyError::Read)?.into_data() else { continue };
            if bytes.len() + data.len() > BODY_BYTES_MAX {
                return Err(BodyError::TooLarge);
            }
            bytes.extend_from_slice(&data);
        }
        Ok(Bytes::from(bytes))
    };
    tokio::time::timeout(timeout, read).await.unwrap_or(Err(BodyError::Timeout))
}

/// The connection figures, in the Prometheus text format.
fn render_connections(conns: &Conns, out: &mut String) {
    use std::fmt::Write;
    let c = &conns.counters;
    let _ = writeln!(
        out,
        "# HELP trove_control_connections_open Open control-plane connections (at most control_connections_max).\n\
         # TYPE trove_control_connections_open gauge\ntrove_control_connections_open {}",
        conns.open()
    );
    let _ = writeln!(
        out,
        "# HELP trove_control_connections_accepted_total Control-plane connections given a slot.\n\
         # TYPE trove_control_connections_accepted_total counter\ntrove_control_connections_accepted_total {}",
        c.accepted.load(Relaxed)
    );
    let _ = writeln!(
        out,
        "# HELP trove_control_live_streams_open Live streams (GET /live) open (at most \
         control_live_streams_max).\n# TYPE trove_control_live_streams_open gauge\ntrove_control_live_streams_open {}",
        conns.streams_open.load(Relaxed)
    );
    let _ = writeln!(
        out,
        "# HELP trove_control_live_streams_closed_total Live streams the server ended itself, by reason: refused \
         (at control_live_streams_max), stalled (the reader took nothing for 10 s).\n\
         # TYPE trove_control_live_streams_closed_total counter\n\
         trove_control_live_streams_closed_total{{reason=\"refused\"}} {}\n\
         trove_control_live_streams_closed_total{{reason=\"stalled\"}} {}",
        c.live_refused.load(Relaxed),
        c.live_stalled.load(Relaxed)
    );
    let _ = writeln!(
        out,
        "# HELP trove_control_connections_closed_total Control-plane connections the server closed itself, by \
         reason: refused (at the cap, every slot in a handler), address_limit (at \
         control_connections_per_address_max, every one of the address's in a handler), evicted (to make room), header_timeout, body_timeout, \
         body_too_large.\n# TYPE trove_control_connections_closed_total counter"
    );
    for (reason, n) in [
        ("refused", &c.refused),
        ("address_limit", &c.address_limit),
        ("evicted", &c.evicted),
        ("header_timeout", &c.header_timeouts),
        ("body_timeout", &c.body_timeouts),
        ("body_too_large", &c.bodies_too_large),
    ] {
        let _ = writeln!(out, "trove_control_connections_closed_total{{reason=\"{reason}\"}} {}", n.load(Relaxed));
    }
}

/// Every route, behind the authentication gate: a route added to
/// [`routes`] passes through [`gate`] by default.
/// `trove_auth_refusals_total{reason}`: zeros while authentication is off.
fn render_auth(auth: Option<&crate::auth::Auth>, out: &mut String) {
    use std::fmt::Write as _;
    let _ = writeln!(
        out,
        "# HELP trove_auth_refusals_total Requests refused by authentication or authorisation, by reason.\n\
         # TYPE trove_auth_refusals_total counter"
    );
    let refusals = auth
        .map(crate::auth::Auth::refusals)
        .unwrap_or_else(|| crate::auth::RefusalReason::ALL.iter().map(|r| (r.name(), 0)).collect());
    for (reason, n) in refusals {
        let _ = writeln!(out, "trove_auth_refusals_total{{reason=\"{reason}\"}} {n}");
    }
}

fn router<G: ControlGame>(ctx: Arc<Ctx<G>>) -> Router {
    routes(ctx.clone()).layer(axum::middleware::from_fn_with_state(ctx, gate::<G>))
}

/// `--metrics-listen`: `/metrics` alone, no token.
fn metrics_router<G: ControlGame>(ctx: Arc<Ctx<G>>) -> Router {
    Router::new()
        .route("/metrics", get(prometheus::<G>))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "not_found", "this address serves /metrics only".into()) })
        .with_state(ctx)
}

/// Paths open without a token: probes, and the static files listed in
/// [`STATIC_OPEN_PATHS`].
pub const OPEN_PATHS: [&str; 2] = ["/health", "/ready"];
/// Static files (a dashboard's HTML, scripts, styles) served without a
/// token: they hold no data; the data they fetch goes through the gate.
/// Listed one by one, so that nothing is open by accident.
pub const STATIC_OPEN_PATHS: [&str; 3] = ["/", "/dashboard/app.js", "/dashboard/app.css"];

/// What a request needs, by method and path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// No token.
    Open,
    /// Any known token (the cluster map: producers need it to route).
    AnyToken,
    /// A spectator's or an admin's token (within the spectator's hunts).
    Read,
    /// An admin's token.
    Write,
}

/// The gate's table: probes and listed static files are open, `GET
/// /cluster` takes any token, other reads (GET, HEAD) a reader's, every
/// other method an admin's. An unknown path falls under the same rules
/// (its 404 is for those who may ask).
pub fn access(method: &axum::http::Method, path: &str) -> Access {
    use axum::http::Method;
    if OPEN_PATHS.contains(&path) || STATIC_OPEN_PATHS.contains(&path) {
        return Access::Open;
    }
    let read = *method == Method::GET || *method == Method::HEAD;
    match (read, path) {
        (true, "/cluster") => Access::AnyToken,
        (true, _) => Access::Read,
        (false, _) => Access::Write,
    }
}

/// The authenticated token of a request, put in its extensions by the
/// gate: the hunt routes check its ranges on the hunt id as the router
/// decoded it ([`with_hunt`]), not on the raw path.
type Viewer = Option<axum::Extension<Arc<crate::auth::Principal>>>;

/// The one check every route passes through (see [`access`]): 401
/// `unauthorized` without a known token, 403 `forbidden` when its role
/// does not allow the request. Hunt ranges are checked where the hunt id
/// is parsed ([`with_hunt`], [`list_hunts`]).
async fn gate<G: ControlGame>(
    State(ctx): State<Arc<Ctx<G>>>,
    mut req: Request<Body>,
    next: axum::middleware::Next,
) -> Response {
    let Some(auth) = &ctx.auth else { return next.run(req).await };
    let needs = access(req.method(), req.uri().path());
    if needs == Access::Open {
        return next.run(req).await;
    }
    let bearer = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(|v| crate::auth::bearer(v).unwrap_or(""));
    let session = match auth.authenticate_text(bearer) {
        Ok(s) => s,
        Err(r) => {
            let mut answer = error(StatusCode::UNAUTHORIZED, "unauthorized", r.message);
            answer.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return answer;
        }
    };
    let p = &session.principal;
    use crate::auth::RefusalReason;
    let refusal = match needs {
        Access::Open | Access::AnyToken => None,
        Access::Read if !p.role.reads() => {
            Some((RefusalReason::Role, format!("token `{}` is a {}: it may not read", p.name, p.role.name())))
        }
        Access::Read => None,
        Access::Write if !p.role.writes() => {
            Some((RefusalReason::Role, format!("token `{}` is a {}: only an admin may write", p.name, p.role.name())))
        }
        Access::Write => None,
    };
    match refusal {
        Some((reason, message)) => error(StatusCode::FORBIDDEN, "forbidden", auth.refuse(reason, message).message),
        None => {
            req.extensions_mut().insert(session.principal.clone());
            next.run(req).await
        }
    }
}

/// With authentication on, may the request's token read hunt `id`? 403
/// `forbidden` if not, and when no token reached the route (fail closed).
fn check_hunt<G: ControlGame>(ctx: &Ctx<G>, viewer: &Viewer, id: u32) -> Result<(), Response> {
    check_hunt_for(ctx, viewer, id, false)
}

/// [`check_hunt`], for reading hunt `id` or (`write`) changing it: a
/// write needs a role that writes (the gate checked it already) and the
/// hunt within the token's ranges.
fn check_hunt_for<G: ControlGame>(ctx: &Ctx<G>, viewer: &Viewer, id: u32, write: bool) -> Result<(), Response> {
    let Some(auth) = &ctx.auth else { return Ok(()) };
    use crate::auth::RefusalReason;
    let verb = if write { "change" } else { "read" };
    let refusal = match viewer {
        None => (RefusalReason::MissingToken, "no authenticated token reached this route".to_string()),
        Some(axum::Extension(p)) if (if write { p.role.writes() } else { p.role.reads() }) && p.allows_hunt(id) => {
            return Ok(());
        }
        Some(axum::Extension(p)) => (RefusalReason::Hunt, format!("token `{}` may not {verb} hunt {id}", p.name)),
    };
    Err(error(StatusCode::FORBIDDEN, "forbidden", auth.refuse(refusal.0, refusal.1).message))
}

fn routes<G: ControlGame>(ctx: Arc<Ctx<G>>) -> Router {
    Router::new()
        .route("/", get(crate::dashboard::index))
        .route("/dashboard/{file}", get(crate::dashboard::file))
        .route("/live", get(live::<G>))
        .route("/health", get(health::<G>))
        .route("/ready", get(ready::<G>))
        .route("/status", get(status::<G>))
        .route("/metrics", get(prometheus::<G>))
        .route("/openapi.json", get(openapi))
        .route("/cluster", get(cluster::<G>))
        .route("/hunts", get(list_hunts::<G>).post(create_hunt::<G>))
        .route("/hunts/{id}", get(hunt_detail::<G>).delete(delete_hunt::<G>))
        .route("/hunts/{id}/leaderboard", get(leaderboard::<G>))
        .route("/hunts/{id}/players/{player}", get(player_detail::<G>))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "not_found", "no such endpoint".into()) })
        .method_not_allowed_fallback(|| async {
            error(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "method not allowed here".into())
        })
        // `answer` has read the body already, bounded by BODY_BYTES_MAX.
        .layer(axum::extract::DefaultBodyLimit::max(BODY_BYTES_MAX))
        .with_state(ctx)
}

/// The connection a request came on, for a handler that turns it into a
/// live stream (`answer` inserts it into every request's extensions).
#[derive(Clone)]
struct StreamSlot {
    conns: Arc<Conns>,
    conn: Arc<Conn>,
}

/// Marks a response whose body is a live stream: `answer` puts its
/// connection in `Phase::Stream`.
#[derive(Clone, Copy)]
struct LiveStream;

/// A live stream's place under `live_streams_max`; given back (and the
/// connection's request ended) when its body is dropped.
struct StreamGuard {
    slot: StreamSlot,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.slot.conns.streams_open.fetch_sub(1, Relaxed);
        // The header deadline counts from the end of this answer.
        self.slot.conn.enter(Phase::Head, self.slot.conns.now_ms());
    }
}

/// `GET /live`: a server-sent-events stream of the engine's figures, one
/// JSON snapshot every `LIVE_INTERVAL` (`live.rs`). A snapshot is made
/// when hyper asks for the next chunk, so a slow reader is sent fewer, not
/// queued more; one that takes nothing for `LIVE_STALL_TIMEOUT` is
/// closed. The stream ends when the plane stops.
async fn live<G: ControlGame>(State(ctx): State<Arc<Ctx<G>>>, slot: Option<axum::Extension<StreamSlot>>) -> Response {
    let Some(axum::Extension(slot)) = slot else {
        return error(StatusCode::INTERNAL_SERVER_ERROR, "internal", "no connection for the stream".into());
    };
    let max = slot.conns.config.live_streams_max;
    if slot.conns.streams_open.fetch_add(1, Relaxed) >= max {
        slot.conns.streams_open.fetch_sub(1, Relaxed);
        slot.conns.counters.live_refused.fetch_add(1, Relaxed);
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "too_many_streams",
            format!("{max} live streams are open (control_live_streams_max)"),
        );
    }
    let guard = StreamGuard { slot };
    let stopped = ctx.stopped.clone();
    let state = (ctx, guard, LiveState::new(Instant::now()), true);
    let events = futures_util::stream::unfold(state, move |(ctx, guard, mut live, first)| {
        let mut stopped = stopped.clone();
        async move {
            if !first {
                tokio::select! {
                    _ = tokio::time::sleep(LIVE_INTERVAL) => {}
                    _ = stopped.wait_for(|s| *s) => return None,
                }
            }
            if *stopped.borrow() {
                return None;
            }
            let event = live.next_event(&ctx.sources).await;
            // The reader took a snapshot: its stall deadline starts again.
            guard.slot.conn.enter(Phase::Stream, guard.slot.conns.now_ms());
            Some((Ok::<_, Infallible>(Bytes::from(event)), (ctx, guard, live, false)))
        }
    });
    let mut response = Response::new(Body::from_stream(events));
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response.extensions_mut().insert(LiveStream);
    response
}

/// A JSON error body: `{"error": code, "message": ...}`.
fn error(status: StatusCode, code: &str, message: String) -> Response {
    (status, axum::Json(json!({"error": code, "message": message}))).into_response()
}

fn ok(value: Value) -> Response {
    axum::Json(value).into_response()
}

/// Live unless the engine failed (its journal could not write or sync):
/// then it will never acknowledge again, and a restart is what recovers.
async fn health<G: ControlGame>(State(ctx): State<Arc<Ctx<G>>>) -> Response {
    match ctx.engine.failure() {
        None => ok(json!({"status": "ok"})),
        Some(reason) => error(StatusCode::SERVICE_UNAVAILABLE, "failed", reason.to_string()),
    }
}

async fn ready<G: ControlGame>(State(ctx): State<Arc<Ctx<G>>>) -> Response {
    if let Some(reason) = ctx.engine.failure() {
        return error(StatusCode::SERVICE_UNAVAILABLE, "failed", reason.to_string());
    }
    if ctx.ready.load(Relaxed) {
        ok(json!({"status": "ready"}))
    } else {
        error(StatusCode::SERVICE_UNAVAILABLE, "not_ready", "the engine is starting or stopping".into())
    }
}

async fn status<G: ControlGame>(State(ctx): State<Arc<Ctx<G>>>) -> Response {
    let m = ctx.engine.metrics();
    let s = ctx.sources.server.snapshot();
    ok(json!({
        "version": env!("CARGO_PKG_VERSION"),
        "game": G::NAME,
        "mode": ctx.info.mode,
        "shards": ctx.info.shards,
        "fsync": ctx.info.fsync,
        "journal_dir": ctx.info.journal_dir,
        "tcp_addr": ctx.info.tcp_addr.to_string(),
        "ws_addr": ctx.info.ws_addr.map(|a| a.to_string()),
        "uptime_seconds": ctx.started.elapsed().as_secs_f64(),
        "events_applied": m.events_applied(),
        "journal": m.shards.iter().enumerate().map(|(i, sh)| json!({
            "shard": i,
            "bytes_written": sh.journal_bytes,
            "fsyncs": sh.fsyncs,
            "snapshots": sh.snapshots,
            "events_applied": sh.events_applied,
        })).collect::<Vec<_>>(),
        "connections_open": s.connections_open,
        "subscribers": s.subscribers,
    }))
}

async fn prometheus<G: ControlGame>(State(ctx): State<Arc<Ctx<G>>>) -> Response {
    let mut text = metrics::render(&ctx.sources);
    render_connections(&ctx.conns, &mut text);
    render_auth(ctx.auth.as_deref(), &mut text);
    let view = ctx.cluster.read().unwrap_or_else(|e| e.into_inner()).clone();
    if let Some(view) = view {
        let mut families = metrics::Families::new();
        view.metrics(&mut families);
        text.push_str(&families.into_text());
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], text).into_response()
}

/// The partition map, from the view the cluster side gave the plane.
async fn cluster<G: ControlGame>(State(ctx): State<Arc<Ctx<G>>>) -> Response {
    let view = ctx.cluster.read().unwrap_or_else(|e| e.into_inner()).clone();
    match view.and_then(|v| v.cluster_view()) {
        Some(map) => ok(map),
        None => error(StatusCode::NOT_FOUND, "not_a_cluster", "this node is not in a cluster".into()),
    }
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], include_str!("openapi.json")).into_response()
}

fn parse_id(raw: &str, what: &str) -> Result<u32, Response> {
    raw.parse::<u32>().map_err(|_| {
        error(StatusCode::BAD_REQUEST, "bad_request", format!("{what} `{raw}` is not an integer in 0..=4294967295"))
    })
}

/// Reads a hunt on its shard, or answers 404. Every hunt route reads
/// through here: the token's hunt ranges are checked on the id parsed.
async fn with_hunt<G: ControlGame>(
    ctx: &Ctx<G>,
    viewer: &Viewer,
    raw: &str,
    f: impl FnOnce(&G::World) -> Value + Send + 'static,
) -> Result<Value, Response> {
    let id = parse_id(raw, "hunt id")?;
    check_hunt(ctx, viewer, id)?;
    // Cluster mode: a hunt of a partition another node owns is not
    // "unknown" here; the answer names the owner (asked again after the
    // read, for a partition that moved meanwhile).
    let not_owner = || not_owner_error(ctx, trove_core::shard_of(id, ctx.info.shards.max(1)));
    if !ctx.engine.owns_world(id) {
        return Err(not_owner());
    }
    let answer = ctx.engine.query_world(id, move |h| h.map(f));
    match tokio::time::timeout(Duration::from_secs(10), answer).await {
        Ok(Ok(Some(v))) => Ok(v),
        Ok(Ok(None)) if !ctx.engine.owns_world(id) => Err(not_owner()),
        Ok(Ok(None)) => Err(error(StatusCode::NOT_FOUND, "unknown_hunt", format!("no hunt {id}"))),
        Ok(Err(_)) | Err(_) => {
            Err(error(StatusCode::SERVICE_UNAVAILABLE, "unavailable", "the engine did not answer in time".into()))
        }
    }
}

/// 421 `not_owner`: another node owns `shard`'s partition (cluster mode).
fn not_owner_error<G: Game>(ctx: &Ctx<G>, shard: usize) -> Response {
    let message = crate::not_owner_message(ctx.owners.as_deref(), shard);
    error(StatusCode::MISDIRECTED_REQUEST, "not_owner", message)
}

type PathArg<T> = Result<Path<T>, axum::extract::rejection::PathRejection>;

fn path_error(e: axum::extract::rejection::PathRejection) -> Response {
    error(StatusCode::BAD_REQUEST, "bad_request", e.body_text())
}

/// A hunt's view on its shard: `GET /hunts/{id}` and its leaderboard.
async fn hunt_view<G: ControlGame>(
    ctx: &Ctx<G>,
    viewer: &Viewer,
    id: PathArg<String>,
    view: fn(&G::World) -> Value,
) -> Response {
    match id {
        Ok(Path(id)) => with_hunt(ctx, viewer, &id, view).await.map_or_else(|e| e, ok),
        Err(e) => path_error(e),
    }
}

async fn hunt_detail<G: ControlGame>(State(ctx): State<Arc<Ctx<G>>>, viewer: Viewer, id: PathArg<String>) -> Response {
    hunt_view(&ctx, &viewer, id, detail_with_hash::<G>).await
}

/// A hunt's detail and its state hash (the hash `trove replay` prints for
/// it: a running node and an offline replay of its journal or stream can
/// be compared hunt by hunt).
fn detail_with_hash<G: ControlGame>(world: &G::World) -> Value {
    let mut detail = G::world_detail(world);
    let mut h = trove_core::StateHasher::new();
    G::hash_world(world, &mut h);
    if let Value::Object(fields) = &mut detail {
        fields.insert("state_hash".into(), Value::String(format!("{:016x}", h.finish())));
    }
    detail
}

async fn leaderboard<G: ControlGame>(State(ctx): State<Arc<Ctx<G>>>, viewer: Viewer, id: PathArg<String>) -> Response {
    hunt_view(&ctx, &viewer, id, G::world_leaderboard).await
}

async fn player_detail<G: ControlGame>(
    State(ctx): State<Arc<Ctx<G>>>,
    viewer: Viewer,
    ids: PathArg<(String, String)>,
) -> Response {
    let (id, player) = match ids {
        Ok(Path(ids)) => ids,
        Err(e) => return path_error(e),
    };
    let player = match parse_id(&player, "player id") {
        Ok(p) => p,
        Err(e) => return e,
    };
    let found = with_hunt(&ctx, &viewer, &id, move |h| G::world_player(h, player).unwrap_or(Value::Null));
    match found.await {
        Ok(Value::Null) => {
            error(StatusCode::NOT_FOUND, "unknown_player", format!("player {player} is not in hunt {id}"))
        }
        Ok(v) => ok(v),
        Err(e) => e,
    }
}

#[derive(Debug, serde::Deserialize)]
struct Page {
    after: Option<u32>,
    limit: Option<usize>,
}

const LIST_LIMIT_MAX: usize = 1000;

async fn list_hunts<G: ControlGame>(
    State(ctx): State<Arc<Ctx<G>>>,
    viewer: Viewer,
    page: Result<Query<Page>, axum::extract::rejection::QueryRejection>,
) -> Response {
    // A listing would show hunts outside a limited token's ranges.
    if let Some(auth) = &ctx.auth {
        use crate::auth::RefusalReason;
        let refusal = match &viewer {
            None => Some((RefusalReason::MissingToken, "no authenticated token reached this route".to_string())),
            Some(axum::Extension(p)) if p.hunts.is_some() || !p.role.reads() => Some((
                RefusalReason::Hunt,
                format!("token `{}` is limited to some hunts: it may not list them all", p.name),
            )),
            Some(_) => None,
        };
        if let Some((reason, message)) = refusal {
            return error(StatusCode::FORBIDDEN, "forbidden", auth.refuse(reason, message).message);
        }
    }
    let Ok(Query(page)) = page else {
        return error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "`after` and `limit` must be non-negative integers".into(),
        );
    };
    let limit = page.limit.unwrap_or(100);
    if limit == 0 || limit > LIST_LIMIT_MAX {
        return error(StatusCode::BAD_REQUEST, "bad_request", format!("`limit` must be in 1..={LIST_LIMIT_MAX}"));
    }
    // Every shard sends its first `limit + 1` hunts past `after` (one past
    // the page, to know whether there is a next); keep the lowest ids.
    let mut rx = ctx.engine.query_world_page(page.after, limit + 1, |id, h| (id, G::world_summary(h)));
    let mut hunts: Vec<(u32, Value)> = Vec::new();
    let collect = async {
        while let Some(x) = rx.recv().await {
            hunts.push(x);
        }
    };
    if tokio::time::timeout(Duration::from_secs(10), collect).await.is_err() {
        return error(StatusCode::SERVICE_UNAVAILABLE, "unavailable", "the engine did not answer in time".into());
    }
    hunts.sort_unstable_by_key(|(id, _)| *id);
    let more = hunts.len() > limit;
    hunts.truncate(limit);
    let next = if more { hunts.last().map(|(id, _)| *id) } else { None };
    ok(json!({"hunts": hunts.into_iter().map(|(_, v)| v).collect::<Vec<_>>(), "next_after": next}))
}

/// Creates a hunt: `{"id": 7, "config": {...}}`. The create is an event
/// like any other: journaled, and answered once durable.
async fn create_hunt<G: ControlGame>(
    State(ctx): State<Arc<Ctx<G>>>,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Response {
    let body = match body {
        Ok(b) => b,
        Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            return error(e.status(), "payload_too_large", "the body is above 64 KiB".into());
        }
        Err(e) => return error(e.status(), "bad_request", e.body_text()),
    };
    let event = match G::create_from_body(&body) {
        Ok(e) => e,
        Err(why) => return error(StatusCode::BAD_REQUEST, "bad_request", why.to_string()),
    };
    let outcome = match submit_one(&ctx, event).await {
        Ok(o) => o,
        Err(response) => return response,
    };
    match G::create_answer(&event, &outcome) {
        CreateAnswer::Created(v) => (StatusCode::CREATED, axum::Json(v)).into_response(),
        CreateAnswer::Refused { status, code, message } => error(status, code, message),
    }
}

/// Deletes a hunt: a delete event like any other, journaled and applied
/// in order with the hunt's other events, answered once durable (200 with
/// `{"id", "round"}`, the round it was in; 404 `unknown_hunt` for a hunt
/// that does not exist, or no longer does). Its subscribers get a last
/// `hunt_deleted` entry and their subscription ends; the id is unknown
/// until it is created again (DELETE then POST resets a hunt).
async fn delete_hunt<G: ControlGame>(State(ctx): State<Arc<Ctx<G>>>, viewer: Viewer, id: PathArg<String>) -> Response {
    let raw = match id {
        Ok(Path(raw)) => raw,
        Err(e) => return path_error(e),
    };
    let id = match parse_id(&raw, "hunt id") {
        Ok(id) => id,
        Err(response) => return response,
    };
    if let Err(response) = check_hunt_for(&ctx, &viewer, id, true) {
        return response;
    }
    if !ctx.engine.owns_world(id) {
        return not_owner_error(&ctx, trove_core::shard_of(id, ctx.info.shards.max(1)));
    }
    let event = G::delete_event(id);
    let outcome = match submit_one(&ctx, event).await {
        Ok(o) => o,
        Err(response) => return response,
    };
    match G::delete_answer(&event, &outcome) {
        CreateAnswer::Created(v) => ok(v),
        CreateAnswer::Refused { status, code, message } => error(status, code, message),
    }
}

/// Submits one event through the control plane's producer and waits for
/// its outcome (after the journal's durability point).
async fn submit_one<G: ControlGame>(ctx: &Ctx<G>, event: G::Event) -> Result<G::Outcome, Response> {
    let mut producer = ctx.producer.lock().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    // The engine failed: its batches in flight never complete, and
    // `poll_complete` says so at once (Ready(Err)) every time it is asked,
    // so each wait below must end on that answer, not loop on it.
    let failed = |lost: trove_shard::Lost| match lost {
        trove_shard::Lost::Deposed { .. } => error(StatusCode::MISDIRECTED_REQUEST, "not_owner", lost.reason().into()),
        _ => error(StatusCode::SERVICE_UNAVAILABLE, "failed", lost.reason().into()),
    };
    // A request that timed out left its batch in flight: take its answer
    // first, so this one gets its own.
    while producer.in_flight() > 0 {
        match tokio::time::timeout_at(deadline, poll_fn(|cx| crate::poll_complete(&mut producer, cx))).await {
            Ok(Ok(_)) => {}
            // Cluster mode: that batch's partition was lost; this request
            // starts afresh on a new producer (the loss stays with the old).
            Ok(Err(trove_shard::Lost::Deposed { .. } | trove_shard::Lost::Unavailable { .. })) => {
                *producer = ctx.engine.producer();
            }
            Ok(Err(reason)) => return Err(failed(reason)),
            Err(_) => {
                return Err(error(
                    StatusCode::GATEWAY_TIMEOUT,
                    "timeout",
                    "an earlier request is still unanswered".into(),
                ));
            }
        }
    }
    loop {
        let mut batch = vec![Stamped { time_us: 0, event }];
        match producer.submit(&mut batch) {
            Ok(_) => break,
            Err(SubmitError::Busy) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            Err(SubmitError::Busy) => {
                return Err(error(StatusCode::SERVICE_UNAVAILABLE, "busy", "the engine is saturated; retry".into()));
            }
            Err(SubmitError::Failed) => {
                return Err(failed(trove_shard::Lost::Failed(crate::failure_reason(&producer))));
            }
            Err(SubmitError::NotOwner { shard }) => return Err(not_owner_error(ctx, shard)),
            Err(e) => return Err(error(StatusCode::SERVICE_UNAVAILABLE, "unavailable", format!("{e:?}"))),
        }
    }
    let done = tokio::time::timeout_at(deadline, poll_fn(|cx| crate::poll_complete(&mut producer, cx))).await;
    match done {
        Ok(Ok(c)) => Ok(c.outcomes[0]),
        Ok(Err(lost @ (trove_shard::Lost::Deposed { .. } | trove_shard::Lost::Unavailable { .. }))) => {
            // The next request must not inherit this loss.
            *producer = ctx.engine.producer();
            Err(failed(lost))
        }
        Ok(Err(reason)) => Err(failed(reason)),
        Err(_) => Err(error(StatusCode::GATEWAY_TIMEOUT, "timeout", "the event was not answered in time".into())),
    }
}
