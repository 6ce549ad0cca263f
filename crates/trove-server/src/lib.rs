//! The data plane's I/O layer: where trove waits on sockets.
//!
//! A small tokio runtime (`io_workers` threads, `trove-io`) accepts TCP
//! connections and runs one task per connection, never per event; the
//! WebSocket listener and its connections run the same way on a runtime of
//! their own (`ws_io_workers` threads, `trove-ws`, at a lower CPU priority:
//! [`ws_io`]). A connection's task turns each
//! EVENTS frame into one batch for the engine (`Producer::submit_at`),
//! answers it when the engine completes it (after the journal's durability
//! point), and forwards its subscriptions' updates from a bounded mailbox.
//! The game rules run on the engine's shard threads, not here.
//!
//! - [`auth`]: tokens, roles, hunt ranges, per-token quotas: the auth
//!   file and the live table every endpoint checks against.
//! - [`tcp`]: protocol v1 (docs/protocol.md) over TCP.
//! - [`ws`]: the same semantics as JSON over WebSocket.
//! - [`ws_io`]: the WebSocket listener's own runtime (`trove-ws`
//!   threads), at a lower CPU priority than ingest.
//! - `session`: the exactly-once session rules both endpoints drive
//!   (answers in frame order, BUSY then resend), free of sockets.
//! - [`json`]: the game's JSON form, for the WebSocket endpoint and the
//!   control plane's hunt routes: the one file that knows the treasure hunt.
//! - [`control`]: the HTTP control plane, on a runtime of its own.
//! - [`live`]: its `GET /live` feed of the figures, for the dashboard.
//! - `dashboard`: the dashboard's built files (`dashboard/`, from the
//!   repository's `dashboard/` source), embedded and served at `/`.
//! - [`conn_log`]: the connection lines (opened, closed, refused) every
//!   listener logs, refusals rate-limited per reason.
//! - `per_address`: open connections per source address, capped.
//! - [`error`]: the typed errors of the public API.
//! - [`fds`]: the open-file limit, checked against both planes' caps.
//! - [`metrics`]: `/metrics` in the Prometheus text format.
//! - [`tls`]: rustls on the three listeners, from PEM files.
//! - `task`: every spawn, named for tokio-console.

pub mod auth;
pub mod conn_log;
pub mod control;
mod dashboard;
pub mod error;
pub mod fds;
pub mod json;
pub mod live;
pub mod metrics;
mod per_address;
mod session;
mod task;
pub mod tcp;
pub mod tls;
pub mod ws;
pub mod ws_io;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use trove_proto::WireGame;
use trove_proto::frame::FRAME_BODY_MAX_LIMIT;
use trove_shard::Engine;
use trove_shard::Stamps;
use trove_shard::metrics::{Histogram, HistogramSnapshot};

pub use crate::error::{InvalidConfig, StartError};

/// `unfinished_frame_bytes_max` by default: 64 frames of the default
/// `frame_body_max` in the making at once.
pub const UNFINISHED_FRAME_BYTES_MAX_DEFAULT: usize = 64 << 20;

/// Every bound of the I/O layer, named.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Protocol v1 over TCP.
    pub tcp_addr: SocketAddr,
    /// JSON over WebSocket; `None` disables the endpoint.
    pub ws_addr: Option<SocketAddr>,
    /// Threads of the I/O runtime (TCP connections).
    pub io_workers: usize,
    /// Threads of the WebSocket listener's runtime (`trove-ws`): its
    /// handshakes and connections run there, not on the I/O runtime's.
    pub ws_io_workers: usize,
    /// Niceness the WebSocket threads add to the server's (0..=19; 0: the
    /// same priority as ingest): on a saturated machine the kernel serves
    /// ingest first (docs/decisions/0055-websocket-io-runtime.md).
    pub ws_io_nice: i32,
    /// Open connections (TCP and WebSocket together); past it a new one is
    /// answered TooManyConnections and closed.
    pub connections_max: usize,
    /// Open connections from one source address (an IPv6 /64), TCP and
    /// WebSocket together; past it a new one from there is answered
    /// TooManyConnections and closed, so one peer cannot take every slot.
    pub connections_per_address_max: usize,
    /// Largest frame body accepted (and sent), in bytes.
    pub frame_body_max: u32,
    /// Time a new connection has to complete its handshake.
    pub handshake_timeout: Duration,
    /// A connection that sends nothing for this long is closed.
    pub idle_timeout: Duration,
    /// EVENTS frames a connection may have unanswered; past it the server
    /// stops reading that connection until answers go out.
    pub window_batches: usize,
    /// Hunts one connection may subscribe to.
    pub subscriptions_max: usize,
    /// Updates queued for one subscriber connection before it loses some
    /// (and gets a gap notice).
    pub subscriber_updates_max: usize,
    /// A subscriber connection is woken (and writes) at most about once
    /// per interval: the first update after a quiet spell goes out at once,
    /// later ones at the next tick of one hub-wide ticker, together. Zero
    /// wakes it for every applied batch
    /// (docs/decisions/0017-paced-fan-out.md).
    pub subscriber_push_interval: Duration,
    /// The fan-out budget (docs/decisions/0050-fan-out-budget.md):
    /// subscriber wakeups (about one write each) per second, all
    /// connections together; past it wakeups wait for the push ticker,
    /// which hands the rate out in order of waiting (fewer, larger writes).
    /// Zero: no limit. Needs a push interval.
    pub subscriber_wakeups_per_sec_max: u64,
    /// The fan-out budget: updates queued for subscribers per second (a
    /// chunk to 100 subscribers counts 100 times); past it whole chunks
    /// are shed, each subscriber of them getting a GAP. Zero: no limit.
    pub subscriber_updates_per_sec_max: u64,
    /// How long a HELLO waits for another connection of the same producer
    /// id to finish before it is refused.
    pub producer_wait: Duration,
    /// Bytes the TCP connections' input buffers may hold beyond their
    /// `tcp::INBUF_BASE` each, and the WebSocket connections' input past
    /// `ws::WS_UNBUDGETED_BYTES` each, together: what partly received frames (and
    /// whole ones waiting for the window) cost. A connection that needs
    /// more waits, not reading, until others give some back; one that
    /// completes no frame for `idle_timeout` meanwhile is closed
    /// `idle_timeout`. So a peer's announced lengths never cost memory,
    /// and its bytes cost at most this much across all connections
    /// (docs/decisions/0004-unfinished-frame-budget.md).
    pub unfinished_frame_bytes_max: usize,
    /// WebSocket: largest message and frame, and the write buffer bound.
    pub ws_message_max: usize,
    pub ws_frame_max: usize,
    pub ws_write_buffer_max: usize,
    /// Authentication (`trove serve --auth FILE`): `None` serves anyone
    /// who reaches the ports (protocol version 1 and 2 alike); `Some`
    /// requires a known token on every connection and request
    /// (docs/decisions/0041-tokens-and-roles.md).
    pub auth: Option<Arc<auth::Auth>>,
    /// TLS on the TCP and WebSocket listeners (`--tls-cert`, `--tls-key`):
    /// when set they speak only TLS. `None`: plain TCP.
    pub tls: Option<tls::ServerTls>,
}

/// `ServerConfig::connections_per_address_max` unless set: a quarter of
/// the default `connections_max`, so that it takes four addresses to fill
/// the server, while a game server's producers or a NAT's spectators fit.
pub const CONNECTIONS_PER_ADDRESS_MAX_DEFAULT: usize = 256;

/// `ServerConfig::subscriber_push_interval` unless set: about a third of a
/// 60 Hz frame (docs/decisions/0017-paced-fan-out.md).
pub const SUBSCRIBER_PUSH_INTERVAL_DEFAULT: Duration = Duration::from_millis(5);
/// Longer would hold updates back for longer than any watcher waits.
pub const SUBSCRIBER_PUSH_INTERVAL_MAX: Duration = Duration::from_secs(1);
/// `ServerConfig::subscriber_wakeups_per_sec_max` unless set: at about
/// 15 us of server CPU per subscriber write on the 2-core VM
/// (docs/benchmarks.md, "Fan-out"), about a third of a core.
pub const SUBSCRIBER_WAKEUPS_PER_SEC_MAX_DEFAULT: u64 = 20_000;
/// `ServerConfig::subscriber_updates_per_sec_max` unless set: at 80-150 ns
/// per delivered update, a fifth to a third of a core.
pub const SUBSCRIBER_UPDATES_PER_SEC_MAX_DEFAULT: u64 = 2_000_000;

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            tcp_addr: SocketAddr::from(([127, 0, 0, 1], 7400)),
            ws_addr: Some(SocketAddr::from(([127, 0, 0, 1], 7401))),
            io_workers: 1,
            ws_io_workers: 1,
            ws_io_nice: ws_io::WS_IO_NICE_DEFAULT,
            connections_max: 1024,
            connections_per_address_max: CONNECTIONS_PER_ADDRESS_MAX_DEFAULT,
            frame_body_max: trove_proto::frame::FRAME_BODY_MAX_DEFAULT,
            handshake_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(60),
            window_batches: 64,
            subscriptions_max: 64,
            subscriber_updates_max: 65_536,
            subscriber_push_interval: SUBSCRIBER_PUSH_INTERVAL_DEFAULT,
            subscriber_wakeups_per_sec_max: SUBSCRIBER_WAKEUPS_PER_SEC_MAX_DEFAULT,
            subscriber_updates_per_sec_max: SUBSCRIBER_UPDATES_PER_SEC_MAX_DEFAULT,
            producer_wait: Duration::from_secs(5),
            unfinished_frame_bytes_max: UNFINISHED_FRAME_BYTES_MAX_DEFAULT,
            ws_message_max: 1 << 20,
            ws_frame_max: 1 << 20,
            ws_write_buffer_max: 4 << 20,
            auth: None,
            tls: None,
        }
    }
}

impl ServerConfig {
    pub fn validate(&self) -> Result<(), InvalidConfig> {
        let checks = [
            (self.io_workers >= 1 && self.io_workers <= 256, "io_workers must be in 1..=256"),
            (self.ws_io_workers >= 1 && self.ws_io_workers <= 256, "ws_io_workers must be in 1..=256"),
            (
                self.ws_io_nice >= 0 && self.ws_io_nice <= ws_io::NICE_MAX,
                "ws_io_nice must be in 0..=19 (0: the ingest threads' priority)",
            ),
            (self.connections_max >= 1, "connections_max must be at least 1"),
            (self.connections_per_address_max >= 1, "connections_per_address_max must be at least 1"),
            (
                self.frame_body_max >= 4096 && self.frame_body_max <= FRAME_BODY_MAX_LIMIT,
                "frame_body_max must be in 4096..=67108864",
            ),
            (!self.handshake_timeout.is_zero(), "handshake_timeout must be above zero"),
            (!self.idle_timeout.is_zero(), "idle_timeout must be above zero"),
            (self.window_batches >= 1 && self.window_batches <= 4096, "window_batches must be in 1..=4096"),
            (self.subscriptions_max <= 65_536, "subscriptions_max must be at most 65536"),
            (self.subscriber_updates_max >= 1, "subscriber_updates_max must be at least 1"),
            (
                self.subscriber_push_interval <= SUBSCRIBER_PUSH_INTERVAL_MAX,
                "subscriber_push_interval_ms must be in 0..=1000",
            ),
            (
                self.subscriber_wakeups_per_sec_max == 0 || !self.subscriber_push_interval.is_zero(),
                "subscriber_wakeups_per_sec_max needs subscriber_push_interval_ms above 0 (or set it to 0)",
            ),
            (
                self.unfinished_frame_bytes_max >= tcp::frame_buffer_bytes_max(self.frame_body_max),
                "unfinished_frame_bytes_max must hold one largest frame: at least frame_body_max + 8",
            ),
            (self.ws_message_max >= 1024, "ws_message_max must be at least 1024"),
            (
                self.ws_addr.is_none()
                    || self.unfinished_frame_bytes_max >= ws::message_bytes_max(self.ws_message_max, self.ws_frame_max),
                "with the WebSocket endpoint on, unfinished_frame_bytes_max must hold one largest WebSocket \
                 message: at least max(ws_message_max, ws_frame_max) + 65536",
            ),
            (self.ws_frame_max >= 1024, "ws_frame_max must be at least 1024"),
            (self.ws_write_buffer_max >= 1024, "ws_write_buffer_max must be at least 1024"),
        ];
        checks.iter().find(|(ok, _)| !ok).map_or(Ok(()), |&(_, msg)| Err(InvalidConfig(msg)))
    }
}

/// I/O-layer counters.
#[derive(Debug, Default)]
pub struct ServerMetrics {
    pub connections_accepted: AtomicU64,
    /// Refused at `connections_max` or `connections_per_address_max`.
    pub connections_refused: AtomicU64,
    /// Of `connections_refused`, those at `connections_per_address_max`.
    pub connections_refused_address: AtomicU64,
    pub connections_open: AtomicU64,
    pub frames_in: AtomicU64,
    pub frames_out: AtomicU64,
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
    pub events_in: AtomicU64,
    pub events_acked: AtomicU64,
    pub busy_replies: AtomicU64,
    /// TLS handshakes on the protocol v1 listener that failed or did not
    /// finish within the handshake timeout.
    pub tls_handshakes_failed: AtomicU64,
    /// ERROR frames sent, by `ErrorCode` value (index 0 unused; the codes
    /// are 1..=ALL.len(), a test in trove-proto checks).
    pub errors: [AtomicU64; trove_proto::ErrorCode::ALL.len() + 1],
    pub subscribers: AtomicU64,
    /// Bytes of the unfinished-frame budget held now, and the times a
    /// connection found it spent and waited.
    pub unfinished_frame_bytes: AtomicU64,
    pub unfinished_frame_waits: AtomicU64,
    /// Per event: admission to its ACK written to the connection.
    pub ingest_to_ack_ns: Histogram,
    /// Per update and subscriber: admission of the oldest batch in its
    /// chunk to the update written to the connection.
    pub ingest_to_update_ns: Histogram,
    /// Per acknowledged event, by [`Stage`]: from its frame read to the
    /// stage (cumulative, so every stage's percentile is comparable with
    /// the whole path's). Recorded once per batch, when its ACK is written.
    pub stage_ns: [Histogram; Stage::ALL.len()],
    /// Chunks encoded for the wire, by encoding (0 TCP, 1 WebSocket JSON,
    /// 2 WebSocket JSON compressed, from 1's): once per chunk and encoding,
    /// shared by its subscribers.
    pub update_encodings: [AtomicU64; 3],
    /// Chunks queued for writing on connections (one per subscriber).
    pub update_chunks_sent: AtomicU64,
    /// Update bytes (UPDATE and GAP frames, or JSON messages) taken from
    /// mailboxes and not yet written, all connections together, and the
    /// most one connection ever held: a connection whose socket does not
    /// drain stops taking, so this stays within one take of its mailbox
    /// (`subscriber_updates_max` entries, encoded).
    pub update_bytes_queued: AtomicU64,
    pub update_bytes_queued_connection_max: AtomicU64,
}

/// The stages of an event's path through the server, in order
/// (`trove_stage_seconds{stage}`; docs/control.md).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// Its frame (or WebSocket message) decoded into events.
    Decoded,
    /// Its batch queued to the shard (`submit` accepted it).
    Admitted,
    /// Its batch applied by the shard.
    Applied,
    /// The journal's write covering it returned (journaled engines).
    Written,
    /// The fdatasync covering it returned (journaled, unless `never`).
    Synced,
    /// Its ACK written to the socket (TCP: the write returned; WebSocket:
    /// the ACK queued to be sent next).
    Acknowledged,
}

impl Stage {
    pub const ALL: [Stage; 6] =
        [Stage::Decoded, Stage::Admitted, Stage::Applied, Stage::Written, Stage::Synced, Stage::Acknowledged];

    pub fn name(self) -> &'static str {
        match self {
            Stage::Decoded => "decoded",
            Stage::Admitted => "admitted",
            Stage::Applied => "applied",
            Stage::Written => "written",
            Stage::Synced => "synced",
            Stage::Acknowledged => "acknowledged",
        }
    }
}

/// When a batch's frame was read (the read that brought its last bytes
/// returned) and decoded: kept beside the batch until its ACK is written.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Arrival {
    pub read: std::time::Instant,
    pub decoded: std::time::Instant,
}

/// One acknowledged batch's stage times, waiting for its ACK's write.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Staged {
    pub arrival: Arrival,
    pub admitted: std::time::Instant,
    pub stamps: Stamps,
    pub events: u64,
}

impl Staged {
    pub fn of<G: trove_core::Game>(arrival: Arrival, c: &trove_shard::Completed<G>, events: u32) -> Self {
        let admitted = c.stamps.admitted.unwrap_or(c.submitted_at);
        Staged { arrival, admitted, stamps: c.stamps, events: u64::from(events) }
    }
}

/// Records an ACK about to be sent: the events acknowledged, the
/// admission-to-ACK latency, and the batch's stage times, kept in `staged`
/// until the ACK is written (`ServerMetrics::record_stages`).
pub(crate) fn record_ack<G: trove_core::Game>(
    metrics: &ServerMetrics,
    staged: &mut Vec<Staged>,
    batch: &session::Batch,
    c: &trove_shard::Completed<G>,
) {
    debug_assert_eq!(c.outcomes.len(), batch.count as usize, "one outcome per event of the batch");
    let events = u64::from(batch.count);
    metrics.events_acked.fetch_add(events, Relaxed);
    metrics.ingest_to_ack_ns.record_n(c.submitted_at.elapsed().as_nanos() as u64, events);
    staged.push(Staged::of(batch.arrival, c, batch.count));
}

impl ServerMetrics {
    /// Records the stages of batches whose ACKs were written at `acked`:
    /// one histogram update per stage and batch, never per event.
    pub(crate) fn record_stages(&self, batches: impl IntoIterator<Item = Staged>, acked: std::time::Instant) {
        for b in batches {
            let read = b.arrival.read;
            let since = |t: std::time::Instant| t.saturating_duration_since(read).as_nanos() as u64;
            let at = [
                Some(b.arrival.decoded),
                Some(b.admitted),
                b.stamps.applied,
                b.stamps.written,
                b.stamps.synced,
                Some(acked),
            ];
            for (h, t) in self.stage_ns.iter().zip(at) {
                if let Some(t) = t {
                    h.record_n(since(t), b.events);
                }
            }
        }
    }

    /// A connection has `bytes` more update bytes waiting in its output,
    /// `pending` in all.
    pub(crate) fn updates_queued(&self, bytes: usize, pending: usize) {
        self.update_bytes_queued.fetch_add(bytes as u64, Relaxed);
        self.update_bytes_queued_connection_max.fetch_max(pending as u64, Relaxed);
    }

    /// A connection wrote (or dropped) its `pending` update bytes.
    pub(crate) fn updates_written(&self, pending: &mut usize) {
        self.update_bytes_queued.fetch_sub(std::mem::take(pending) as u64, Relaxed);
    }
}

/// A plain copy of [`ServerMetrics`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServerMetricsSnapshot {
    pub connections_accepted: u64,
    pub connections_refused: u64,
    pub connections_refused_address: u64,
    pub connections_open: u64,
    pub frames_in: u64,
    pub frames_out: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub events_in: u64,
    pub events_acked: u64,
    pub busy_replies: u64,
    pub tls_handshakes_failed: u64,
    pub errors: Vec<(&'static str, u64)>,
    pub subscribers: u64,
    pub unfinished_frame_bytes: u64,
    pub unfinished_frame_waits: u64,
    pub ingest_to_ack_ns: HistogramSnapshot,
    pub ingest_to_update_ns: HistogramSnapshot,
    /// By [`Stage::ALL`].
    pub stage_ns: Vec<HistogramSnapshot>,
    pub update_encodings_tcp: u64,
    pub update_encodings_ws: u64,
    pub update_encodings_ws_deflate: u64,
    pub update_chunks_sent: u64,
    pub update_bytes_queued: u64,
    pub update_bytes_queued_connection_max: u64,
}

impl ServerMetrics {
    pub fn snapshot(&self) -> ServerMetricsSnapshot {
        ServerMetricsSnapshot {
            connections_accepted: self.connections_accepted.load(Relaxed),
            connections_refused: self.connections_refused.load(Relaxed),
            connections_refused_address: self.connections_refused_address.load(Relaxed),
            connections_open: self.connections_open.load(Relaxed),
            frames_in: self.frames_in.load(Relaxed),
            frames_out: self.frames_out.load(Relaxed),
            bytes_in: self.bytes_in.load(Relaxed),
            bytes_out: self.bytes_out.load(Relaxed),
            events_in: self.events_in.load(Relaxed),
            events_acked: self.events_acked.load(Relaxed),
            busy_replies: self.busy_replies.load(Relaxed),
            tls_handshakes_failed: self.tls_handshakes_failed.load(Relaxed),
            errors: trove_proto::ErrorCode::ALL
                .iter()
                .map(|c| (c.name(), self.errors[*c as usize].load(Relaxed)))
                .collect(),
            subscribers: self.subscribers.load(Relaxed),
            unfinished_frame_bytes: self.unfinished_frame_bytes.load(Relaxed),
            unfinished_frame_waits: self.unfinished_frame_waits.load(Relaxed),
            ingest_to_ack_ns: self.ingest_to_ack_ns.snapshot(),
            ingest_to_update_ns: self.ingest_to_update_ns.snapshot(),
            stage_ns: self.stage_ns.iter().map(Histogram::snapshot).collect(),
            update_encodings_tcp: self.update_encodings[0].load(Relaxed),
            update_encodings_ws: self.update_encodings[1].load(Relaxed),
            update_encodings_ws_deflate: self.update_encodings[2].load(Relaxed),
            update_chunks_sent: self.update_chunks_sent.load(Relaxed),
            update_bytes_queued: self.update_bytes_queued.load(Relaxed),
            update_bytes_queued_connection_max: self.update_bytes_queued_connection_max.load(Relaxed),
        }
    }
}

/// What connections share.
pub(crate) struct Shared<G: WireGame> {
    pub engine: Arc<Engine<G>>,
    pub config: ServerConfig,
    pub metrics: Arc<ServerMetrics>,
    /// Producer ids with a live connection: one connection per producer at
    /// a time keeps its sequence numbers in order.
    producers: Mutex<HashSet<u64>>,
    producer_released: tokio::sync::Notify,
    connections: AtomicUsize,
    /// Open connections per source address (`connections_per_address_max`).
    per_address: per_address::PerAddress,
    /// Numbers connections for their log lines, from their accept.
    next_connection_id: AtomicU64,
    /// `connection refused` lines, rate-limited per reason.
    pub refusals: conn_log::RefusalLog,
    /// Bytes the connections' input buffers hold beyond their base.
    pub frame_budget: FrameBudget,
    pub shutdown: tokio::sync::watch::Receiver<bool>,
    /// Cluster mode: who owns the partitions this node does not.
    pub owners: Option<Arc<dyn Owners>>,
}

/// The server-wide budget for unfinished frames
/// (`ServerConfig::unfinished_frame_bytes_max`): what announced lengths
/// cannot make the server allocate, bytes that did arrive can cost at most
/// this much across connections.
pub(crate) struct FrameBudget {
    /// What is held is the `unfinished_frame_bytes` gauge itself.
    max: usize,
    released: tokio::sync::Notify,
    metrics: Arc<ServerMetrics>,
}

impl FrameBudget {
    fn new(max: usize, metrics: Arc<ServerMetrics>) -> Self {
        Self { max, released: tokio::sync::Notify::new(), metrics }
    }

    fn try_take(&self, bytes: usize) -> bool {
        let (bytes, max) = (bytes as u64, self.max as u64);
        let held = &self.metrics.unfinished_frame_bytes;
        held.fetch_update(Relaxed, Relaxed, |h| h.checked_add(bytes).filter(|&t| t <= max)).is_ok()
    }

    /// Takes `bytes`, waiting for other connections to give some back.
    /// Cancel-safe: a wait dropped takes nothing.
    pub async fn take(&self, bytes: usize) {
        assert!(bytes <= self.max, "validate() keeps one frame's buffer within the budget");
        loop {
            let released = self.released.notified();
            tokio::pin!(released);
            // Registered before the check: a give_back in between wakes it.
            released.as_mut().enable();
            if self.try_take(bytes) {
                return;
            }
            self.metrics.unfinished_frame_waits.fetch_add(1, Relaxed);
            released.await;
        }
    }

    pub fn give_back(&self, bytes: usize) {
        if bytes == 0 {
            return;
        }
        let before = self.metrics.unfinished_frame_bytes.fetch_sub(bytes as u64, Relaxed);
        assert!(before >= bytes as u64, "gave back more budget than was taken");
        self.released.notify_waiters();
    }
}

impl<G: WireGame> Shared<G> {
    /// Takes a connection slot for `peer`, or says why not: all are
    /// taken, or all its address may have. Refusals are counted, not
    /// logged (the caller logs them once it has answered).
    pub fn connection_slot(
        self: &Arc<Self>,
        listener: conn_log::Listener,
        peer: SocketAddr,
    ) -> Result<ConnectionSlot<G>, conn_log::RefusedFor> {
        let open = self.connections.fetch_add(1, Relaxed);
        if open >= self.config.connections_max {
            self.connections.fetch_sub(1, Relaxed);
            self.metrics.connections_refused.fetch_add(1, Relaxed);
            return Err(conn_log::RefusedFor::ConnectionLimit);
        }
        let key = per_address::source_key(peer.ip());
        if !self.per_address.try_take(key) {
            self.connections.fetch_sub(1, Relaxed);
            self.metrics.connections_refused.fetch_add(1, Relaxed);
            self.metrics.connections_refused_address.fetch_add(1, Relaxed);
            return Err(conn_log::RefusedFor::AddressLimit);
        }
        self.metrics.connections_accepted.fetch_add(1, Relaxed);
        self.metrics.connections_open.fetch_add(1, Relaxed);
        let id = self.next_connection_id.fetch_add(1, Relaxed);
        let info = conn_log::ConnInfo { id, listener, peer, opened: std::time::Instant::now() };
        self.refusals.flush(listener);
        Ok(ConnectionSlot { shared: self.clone(), key, info })
    }

    /// The message of a `too_many_connections` refusal.
    pub(crate) fn refusal_message(&self, why: conn_log::RefusedFor) -> String {
        match why {
            conn_log::RefusedFor::AddressLimit => format!(
                "too many connections from this address (connections_per_address_max {})",
                self.config.connections_per_address_max
            ),
            _ => "the server is at its connection limit".to_string(),
        }
    }

    /// Claims a producer id for this connection, waiting up to
    /// `producer_wait` for a previous connection with it to finish.
    pub async fn claim_producer(self: &Arc<Self>, id: u64) -> Option<ProducerClaim<G>> {
        let deadline = tokio::time::Instant::now() + self.config.producer_wait;
        loop {
            let released = self.producer_released.notified();
            if self.producers.lock().unwrap_or_else(|e| e.into_inner()).insert(id) {
                return Some(ProducerClaim { shared: self.clone(), id });
            }
            if tokio::time::timeout_at(deadline, released).await.is_err() {
                return None;
            }
        }
    }
}

/// Held while a connection is open.
pub(crate) struct ConnectionSlot<G: WireGame> {
    shared: Arc<Shared<G>>,
    /// Its source address's count (`per_address::source_key`).
    key: std::net::IpAddr,
    pub info: conn_log::ConnInfo,
}

impl<G: WireGame> Drop for ConnectionSlot<G> {
    fn drop(&mut self) {
        self.shared.per_address.give_back(self.key);
        self.shared.connections.fetch_sub(1, Relaxed);
        self.shared.metrics.connections_open.fetch_sub(1, Relaxed);
    }
}

/// Held while a connection produces as `id`.
pub(crate) struct ProducerClaim<G: WireGame> {
    shared: Arc<Shared<G>>,
    id: u64,
}

impl<G: WireGame> Drop for ProducerClaim<G> {
    fn drop(&mut self) {
        self.shared.producers.lock().unwrap_or_else(|e| e.into_inner()).remove(&self.id);
        self.shared.producer_released.notify_waiters();
    }
}

/// A running data plane.
pub struct Server<G: WireGame + json::JsonGame> {
    runtime: Option<tokio::runtime::Runtime>,
    /// The WebSocket listener's (`None` with the endpoint off).
    ws_runtime: Option<tokio::runtime::Runtime>,
    shared: Arc<Shared<G>>,
    stop: tokio::sync::watch::Sender<bool>,
    tcp_addr: SocketAddr,
    ws_addr: Option<SocketAddr>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl<G: WireGame + json::JsonGame> std::fmt::Debug for Server<G> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server").field("tcp_addr", &self.tcp_addr).field("ws_addr", &self.ws_addr).finish()
    }
}

impl<G: WireGame + json::JsonGame> Server<G> {
    /// Binds the listeners and starts serving `engine`.
    pub fn start(engine: Arc<Engine<G>>, config: ServerConfig) -> Result<Self, StartError> {
        config.validate()?;
        let listeners = Listeners::bind(&config)?;
        Self::start_on(listeners, engine, config)
    }

    /// Starts serving `engine` on listeners bound already (`trove serve`
    /// binds them before the engine recovers anything, so that a busy port
    /// fails a start before it has changed the data directory). The
    /// addresses in `config` are not used: the listeners' are.
    pub fn start_on(listeners: Listeners, engine: Arc<Engine<G>>, config: ServerConfig) -> Result<Self, StartError> {
        Self::start_node(listeners, engine, config, None)
    }

    /// [`Server::start_on`] for a node of a cluster: `owners` names the
    /// owner of a partition this node refuses events for (`not_owner`).
    pub fn start_node(
        listeners: Listeners,
        engine: Arc<Engine<G>>,
        config: ServerConfig,
        owners: Option<Arc<dyn Owners>>,
    ) -> Result<Self, StartError> {
        config.validate()?;
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder.worker_threads(config.io_workers).thread_name("trove-io").enable_io().enable_time();
        // How long a woken task waits for a worker: the runtime's own
        // queueing, exported by /metrics (two clock reads per wakeup).
        #[cfg(tokio_unstable)]
        builder.enable_metrics_schedule_latency_histogram();
        let runtime = builder.build().map_err(|source| StartError::Runtime { what: "I/O", source })?;
        let (stop, shutdown) = tokio::sync::watch::channel(false);
        engine
            .hub()
            .set_push_interval(config.subscriber_push_interval)
            .map_err(|e| StartError::PushInterval(e.to_string()))?;
        engine
            .hub()
            .set_budget(trove_shard::FanOutBudget {
                wakeups_per_sec_max: config.subscriber_wakeups_per_sec_max,
                updates_per_sec_max: config.subscriber_updates_per_sec_max,
            })
            .map_err(|e| StartError::PushInterval(e.to_string()))?;
        let metrics = Arc::new(ServerMetrics::default());
        let shared = Arc::new(Shared {
            engine,
            config: config.clone(),
            metrics: metrics.clone(),
            producers: Mutex::new(HashSet::new()),
            producer_released: tokio::sync::Notify::new(),
            connections: AtomicUsize::new(0),
            per_address: per_address::PerAddress::new(config.connections_per_address_max),
            next_connection_id: AtomicU64::new(0),
            refusals: conn_log::RefusalLog::new(),
            frame_budget: FrameBudget::new(config.unfinished_frame_bytes_max, metrics),
            shutdown,
            owners,
        });
        let Listeners { tcp, ws } = listeners;
        let tcp_addr = tcp.local_addr().map_err(|source| StartError::Listener { what: "TCP", source })?;
        let mut tasks = Vec::new();
        let _entered = runtime.enter();
        let listener =
            tokio::net::TcpListener::from_std(tcp).map_err(|source| StartError::Listener { what: "TCP", source })?;
        let name = format!("tcp accept {tcp_addr}");
        tasks.push(task::spawn_named_on(runtime.handle(), &name, tcp::accept_loop(shared.clone(), listener)));
        drop(_entered);
        let (mut ws_addr, mut ws_runtime) = (None, None);
        if let Some(ws) = ws {
            // The accept loop, each handshake and each connection: all on
            // the WebSocket runtime (axum spawns on the one it runs on).
            let rt = ws_io::runtime(config.ws_io_workers, config.ws_io_nice)?;
            let addr = ws.local_addr().map_err(|source| StartError::Listener { what: "WebSocket", source })?;
            ws_addr = Some(addr);
            let _entered = rt.enter();
            let listener = tokio::net::TcpListener::from_std(ws)
                .map_err(|source| StartError::Listener { what: "WebSocket", source })?;
            let name = format!("ws accept {addr}");
            tasks.push(task::spawn_named_on(rt.handle(), &name, ws::accept_loop(shared.clone(), listener)));
            drop(_entered);
            ws_runtime = Some(rt);
        }
        Ok(Self { runtime: Some(runtime), ws_runtime, shared, stop, tcp_addr, ws_addr, tasks })
    }

    pub fn tcp_addr(&self) -> SocketAddr {
        self.tcp_addr
    }

    pub fn ws_addr(&self) -> Option<SocketAddr> {
        self.ws_addr
    }

    pub fn engine(&self) -> &Arc<Engine<G>> {
        &self.shared.engine
    }

    pub fn metrics(&self) -> ServerMetricsSnapshot {
        self.shared.metrics.snapshot()
    }

    /// The live counters (the control plane renders them).
    pub fn metrics_handle(&self) -> Arc<ServerMetrics> {
        self.shared.metrics.clone()
    }

    /// The I/O runtime (the control plane reports its metrics).
    pub fn runtime_handle(&self) -> tokio::runtime::Handle {
        self.runtime.as_ref().expect("running").handle().clone()
    }

    /// The WebSocket listener's runtime, `None` with the endpoint off (the
    /// control plane reports its metrics as `runtime="ws"`).
    pub fn ws_runtime_handle(&self) -> Option<tokio::runtime::Handle> {
        self.ws_runtime.as_ref().map(|rt| rt.handle().clone())
    }

    /// Stops accepting; lets every connection finish its accepted batches
    /// (their acknowledgements go out) within `drain`, then closes them.
    /// The wait counts TCP and WebSocket connections together; then the
    /// WebSocket runtime stops, then the I/O runtime.
    pub fn shutdown(mut self, drain: Duration) {
        let _ = self.stop.send(true);
        let ws_runtime = self.ws_runtime.take();
        if let Some(rt) = self.runtime.take() {
            let tasks = std::mem::take(&mut self.tasks);
            let shared = self.shared.clone();
            rt.block_on(async move {
                let deadline = tokio::time::Instant::now() + drain;
                // The accept loops stop at once; an HTTP connection that never
                // finishes its request must not hold the shutdown past `drain`.
                for mut t in tasks {
                    if tokio::time::timeout_at(deadline, &mut t).await.is_err() {
                        t.abort();
                    }
                }
                while shared.connections.load(Relaxed) > 0 && tokio::time::Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            });
            // Returns once the workers have dropped their tasks (each holds
            // the engine through `shared`; the caller unwraps it next); the
            // bound is for a worker that does not stop. The WebSocket
            // threads run at a lower priority: on a busy machine they may
            // take a while to be scheduled at all.
            if let Some(ws) = ws_runtime {
                ws.shutdown_timeout(RUNTIME_STOP_MAX);
            }
            rt.shutdown_timeout(RUNTIME_STOP_MAX);
        }
    }
}

/// How long `Server::shutdown` waits for a runtime's workers to drop their
/// tasks once the drain is over.
const RUNTIME_STOP_MAX: Duration = Duration::from_secs(2);

/// The data plane's listeners, bound (and so checked) before anything is
/// started: [`Server::start_on`] serves on them.
#[derive(Debug)]
pub struct Listeners {
    pub tcp: std::net::TcpListener,
    /// `None` when the WebSocket endpoint is off.
    pub ws: Option<std::net::TcpListener>,
}

impl Listeners {
    /// Binds `config`'s TCP address and, unless it is off, its WebSocket
    /// one.
    pub fn bind(config: &ServerConfig) -> Result<Self, StartError> {
        let tcp = bind(config.tcp_addr, "TCP")?;
        let ws = config.ws_addr.map(|addr| bind(addr, "WebSocket")).transpose()?;
        Ok(Self { tcp, ws })
    }
}

/// Binds a nonblocking listener (tokio takes it over).
pub(crate) fn bind(addr: SocketAddr, what: &'static str) -> Result<std::net::TcpListener, StartError> {
    let bound = |source| StartError::Bind { what, addr, source };
    let l = std::net::TcpListener::bind(addr).map_err(bound)?;
    l.set_nonblocking(true).map_err(bound)?;
    Ok(l)
}

/// Why a `submit` answered `SubmitError::Failed`, for the client: the
/// engine's own reason (its journal could not write or sync).
pub(crate) fn failure_reason<G: trove_core::Game>(producer: &trove_shard::Producer<G>) -> String {
    producer.failure().unwrap_or("the engine failed").to_string()
}

/// What a node of a cluster tells clients about partitions' owners
/// (cluster mode; `trove-cluster` implements it).
pub trait Owners: Send + Sync + std::fmt::Debug + 'static {
    /// Who owns `partition` now, for people: `partition 3 is owned by node
    /// b at 127.0.0.1:7400 (epoch 12)`, or `partition 3 has no owner now`.
    fn describe_owner(&self, partition: usize) -> String;

    /// Whether this node holds `partition`'s lease while its shard is not
    /// serving yet (a takeover under way): then a refused batch is told
    /// `unavailable` (resend here shortly), not `not_owner` (which sends
    /// the client to look for another owner).
    fn taking_over(&self, _partition: usize) -> bool {
        false
    }
}

/// What `not_owner` says (the data plane's ERROR and the control plane's
/// 421): this node does not own `shard`'s partition, and who does.
pub(crate) fn not_owner_message(owners: Option<&dyn Owners>, shard: usize) -> String {
    let owner = match owners {
        Some(o) => o.describe_owner(shard),
        None => format!("partition {shard} is not served here"),
    };
    format!("this node does not own partition {shard}: {owner}")
}

impl<G: WireGame> Shared<G> {
    /// The ERROR for a batch refused because this node does not own
    /// `shard`'s partition.
    pub(crate) fn not_owner(&self, shard: usize) -> (trove_proto::ErrorCode, String) {
        if self.owners.as_ref().is_some_and(|o| o.taking_over(shard)) {
            return (
                trove_proto::ErrorCode::Unavailable,
                format!("partition {shard} is being taken over by this node; resend shortly"),
            );
        }
        (trove_proto::ErrorCode::NotOwner, not_owner_message(self.owners.as_deref(), shard))
    }

    /// The ERROR for batches in flight that will never complete.
    pub(crate) fn lost(&self, lost: trove_shard::Lost) -> (trove_proto::ErrorCode, String) {
        match lost {
            trove_shard::Lost::Failed(reason) => (trove_proto::ErrorCode::Internal, reason),
            trove_shard::Lost::Deposed { shard, reason } => {
                let (code, owner) = self.not_owner(shard);
                (code, format!("{reason}; {owner}"))
            }
            trove_shard::Lost::Unavailable { reason, .. } => (trove_proto::ErrorCode::Unavailable, reason),
        }
    }
}

/// Polls a producer for its oldest completed batch, registering the task's
/// waker with the engine when none is ready.
pub(crate) fn poll_complete<G: trove_core::Game>(
    producer: &mut trove_shard::Producer<G>,
    cx: &mut std::task::Context<'_>,
) -> std::task::Poll<Result<trove_shard::Completed<G>, trove_shard::Lost>> {
    if let Some(c) = producer.try_complete() {
        return std::task::Poll::Ready(Ok(c));
    }
    producer.register_waker(cx.waker());
    match producer.try_complete() {
        Some(c) => std::task::Poll::Ready(Ok(c)),
        // Batches in flight that will never complete: the connection is
        // told why and closed (its producer retries elsewhere or later).
        None => match producer.lost() {
            Some(lost) => std::task::Poll::Ready(Err(lost)),
            None => std::task::Poll::Pending,
        },
    }
}

/// A connection's subscriptions, one mailbox for all its hunts: the
/// bookkeeping the TCP and WebSocket endpoints share.
pub(crate) struct Subscriptions<G: WireGame> {
    mailbox: Option<Arc<trove_shard::Mailbox<G>>>,
    worlds: Vec<trove_core::WorldId>,
}

impl<G: WireGame> Subscriptions<G> {
    pub fn new() -> Self {
        Self { mailbox: None, worlds: Vec::new() }
    }

    /// Subscribes to `hunt` in `mode`; returns the number of its next
    /// update (in the numbering of the mode the hunt is watched in: a
    /// second SUBSCRIBE changes nothing), or `None` past the connection's
    /// limit (counted as an error sent).
    pub fn subscribe(
        &mut self,
        shared: &Shared<G>,
        hunt: trove_core::WorldId,
        mode: trove_shard::SubscribeMode,
    ) -> Option<u64> {
        let new = !self.worlds.contains(&hunt);
        if new && self.worlds.len() >= shared.config.subscriptions_max {
            shared.metrics.errors[trove_proto::ErrorCode::TooManySubscriptions as usize].fetch_add(1, Relaxed);
            return None;
        }
        let updates_max = shared.config.subscriber_updates_max;
        let mailbox = self.mailbox.get_or_insert_with(|| trove_shard::Mailbox::new(updates_max));
        let (_, next_seq) = shared.engine.hub().subscribe_as(hunt, mailbox, mode);
        if new {
            self.worlds.push(hunt);
            shared.metrics.subscribers.fetch_add(1, Relaxed);
        }
        Some(next_seq)
    }

    /// Unsubscribes (a no-op for a hunt not subscribed). Updates already
    /// in the mailbox stay there.
    pub fn unsubscribe(&mut self, shared: &Shared<G>, hunt: trove_core::WorldId) {
        if let Some(at) = self.worlds.iter().position(|&w| w == hunt) {
            self.worlds.swap_remove(at);
            shared.metrics.subscribers.fetch_sub(1, Relaxed);
            if let Some(m) = &self.mailbox {
                shared.engine.hub().unsubscribe(hunt, m);
            }
        }
    }

    /// Ends every subscription; the hub drops the mailbox. Closed first,
    /// the mailbox refuses pushes: the unsubscribes do not wait for a
    /// push under way (one to thousands of subscribers).
    pub fn close(&mut self, shared: &Shared<G>) {
        if let Some(m) = self.mailbox.take() {
            m.close();
            for w in self.worlds.drain(..) {
                shared.engine.hub().unsubscribe_closed(w, &m);
                shared.metrics.subscribers.fetch_sub(1, Relaxed);
            }
        }
    }

    /// The hunts subscribed.
    pub fn hunts(&self) -> &[trove_core::WorldId] {
        &self.worlds
    }

    /// The mailbox, once something was subscribed.
    pub fn mailbox(&self) -> Option<Arc<trove_shard::Mailbox<G>>> {
        self.mailbox.clone()
    }

    /// Moves what the mailbox holds to `into`.
    pub fn take(&self, into: &mut Vec<trove_shard::Delivery<G>>) {
        if let Some(m) = &self.mailbox {
            m.take(into);
        }
    }
}

/// A delivery as a connection sends it, after [`Ending`] has looked at it.
pub(crate) enum Sent<G: trove_core::Game> {
    /// Send the chunk (cut after the entry that ends its world, when one
    /// does; the subscription then ends: [`Ending::take_pending`]).
    Chunk(Arc<trove_shard::Chunk<G>>),
    Gap {
        world: trove_core::WorldId,
        first_missed: u64,
        missed: u64,
    },
    /// Nothing: the delivery follows the end of its world's subscription.
    Skip,
}

/// The ends of worlds (deleted hunts: `Game::ends_world`) among a
/// connection's deliveries: the TCP and WebSocket endpoints send a
/// world's last entry, then end its subscription (UNSUBSCRIBED, unasked)
/// and send nothing more of it, though a world created again under the
/// id may have queued entries behind the end before the hub took the
/// subscription off its list.
#[derive(Default)]
pub(crate) struct Ending {
    /// Worlds ended within this delivery round, subscriptions not yet
    /// taken off the hub.
    pending: Vec<trove_core::WorldId>,
    /// Worlds ended within this delivery round.
    ended: Vec<trove_core::WorldId>,
}

impl Ending {
    /// What to send of `d`.
    pub fn look<G: trove_core::Game>(&mut self, d: trove_shard::Delivery<G>) -> Sent<G> {
        use trove_shard::{Delivery, Update};
        let world = match &d {
            Delivery::Gap { world, .. } => *world,
            Delivery::Chunk(c) => c.world,
        };
        if self.ended.contains(&world) {
            return Sent::Skip;
        }
        match d {
            Delivery::Gap { world, first_missed, missed } => Sent::Gap { world, first_missed, missed },
            Delivery::Chunk(chunk) => {
                let Some(end) = chunk.end_of_world() else {
                    return Sent::Chunk(chunk);
                };
                self.pending.push(chunk.world);
                self.ended.push(chunk.world);
                if end + 1 == chunk.updates.len() {
                    return Sent::Chunk(chunk);
                }
                // Entries of the world after its end (a create again in the
                // same batch) are not this subscription's: cut them off.
                let updates = chunk.updates[..=end]
                    .iter()
                    .map(|u| match u {
                        Update::Applied { event, outcome } => Update::Applied { event: *event, outcome: *outcome },
                        Update::Broadcast(b) => Update::Broadcast(b.clone()),
                    })
                    .collect();
                let cut = trove_shard::Chunk::new(chunk.world, chunk.first_seq, updates, chunk.ingested_at);
                Sent::Chunk(Arc::new(cut))
            }
        }
    }

    /// The worlds whose subscriptions end now (each once).
    pub fn take_pending(&mut self) -> Vec<trove_core::WorldId> {
        std::mem::take(&mut self.pending)
    }
}
