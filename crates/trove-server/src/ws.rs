//! The WebSocket endpoint: protocol v1's semantics as JSON text messages,
//! for browsers and tools (docs/protocol.md, "WebSocket").
//!
//! One task per connection, as on TCP. The upgrade sets every limit
//! explicitly: message size, frame size and the write buffer. Input is
//! under the server-wide `unfinished_frame_bytes_max` budget, as on TCP:
//! [`Slotted`] meters the bytes read since the last whole message (see
//! [`Meter`]), so what peers announce costs nothing and what they send
//! costs at most the budget across connections.

use std::future::poll_fn;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::task::Poll;

use axum::extract::State;
use axum::extract::connect_info::{ConnectInfo, Connected};
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade, close_code};
use axum::response::Response;
use serde_json::{Value, json};
use std::future::Future;
use tokio::net::TcpListener;
use tokio::time::Instant;

use trove_core::{Stamped, WorldId};
use trove_proto::{ErrorCode, WireGame};
use trove_shard::{Chunk, Completed, Delivery, Producer, SubscribeMode, Update};

use crate::conn_log::{Counts, Listener, RefusedFor};
use crate::json::JsonGame;
use crate::session::{Admission, Answer, Batch, Refusal, Session};
use crate::{Shared, Subscriptions, poll_complete};

/// Entries per JSON update message.
const JSON_ENTRIES_MAX: usize = 256;
/// The DEFLATE level of compressed updates (`"compression": "deflate"`
/// in `hello`), 0..=9: the cheapest that compresses at every message size;
/// higher ones save at most 5% more of the bytes for 2 to 7 times the CPU
/// (docs/decisions/0054, `examples/deflate_levels.rs`).
const DEFLATE_LEVEL: u32 = 1;
/// The WebSocket library's read buffer per connection.
pub const WS_READ_BUFFER: usize = 16 << 10;
/// Bytes a connection may read past its last whole message without
/// budget: small messages, and control frames, never touch it.
pub const WS_UNBUDGETED_BYTES: usize = WS_READ_BUFFER;
/// What one message's frame headers may add to its payload on the wire
/// (a header is at most 14 bytes: some 4,600 fragments).
pub const WS_MESSAGE_HEADER_BYTES_MAX: usize = 64 << 10;

/// The budget one WebSocket connection takes, at once, when its bytes
/// since the last whole message pass [`WS_UNBUDGETED_BYTES`]: enough for
/// the largest message the library accepts (or the largest frame, which
/// it reads whole before checking the message size), with its headers.
/// `ServerConfig::validate` keeps it within `unfinished_frame_bytes_max`.
pub fn message_bytes_max(ws_message_max: usize, ws_frame_max: usize) -> usize {
    ws_message_max.max(ws_frame_max).saturating_add(WS_MESSAGE_HEADER_BYTES_MAX)
}

/// How long a closing connection waits to send its last answers and for
/// the peer's Close.
const CLOSE_LINGER: std::time::Duration = std::time::Duration::from_secs(5);

pub(crate) async fn accept_loop<G: WireGame + JsonGame>(shared: Arc<Shared<G>>, listener: TcpListener) {
    let mut stop = shared.shutdown.clone();
    let listener = SlotListener { inner: listener, shared: shared.clone() };
    let app = axum::Router::new().route("/", axum::routing::get(upgrade::<G>)).with_state(shared);
    let _ = axum::serve(listener, app.into_make_service_with_connect_info::<Meter<G>>())
        .with_graceful_shutdown(async move {
            let _ = stop.wait_for(|s| *s).await;
        })
        .await;
}

async fn upgrade<G: WireGame + JsonGame>(
    State(shared): State<Arc<Shared<G>>>,
    ConnectInfo(meter): ConnectInfo<Meter<G>>,
    headers: axum::http::HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    // The meter takes what follows the request's head for frames: a
    // request with a body is not an upgrade.
    let has_body = headers.contains_key(axum::http::header::TRANSFER_ENCODING)
        || headers.get(axum::http::header::CONTENT_LENGTH).is_some_and(|v| v != "0");
    if has_body {
        return axum::response::IntoResponse::into_response((
            axum::http::StatusCode::BAD_REQUEST,
            "an upgrade request has no body",
        ));
    }
    // A token in `Authorization: Bearer` authenticates the connection at
    // the upgrade; a wrong one is answered 401 and never upgraded. Without
    // the header, the `hello` message may carry it.
    let mut authed = None;
    if let Some(auth) = &shared.config.auth
        && let Some(value) = headers.get(axum::http::header::AUTHORIZATION)
    {
        let bearer = value.to_str().ok().and_then(crate::auth::bearer).unwrap_or("");
        match auth.authenticate_text(Some(bearer)).and_then(|s| auth.connect(&s).map(|g| (s, g))) {
            Ok(a) => authed = Some(a),
            Err(r) => {
                shared.metrics.errors[r.code() as usize].fetch_add(1, Relaxed);
                let status = match r.code() {
                    ErrorCode::Unauthorized => axum::http::StatusCode::UNAUTHORIZED,
                    ErrorCode::TooManyConnections => axum::http::StatusCode::TOO_MANY_REQUESTS,
                    _ => axum::http::StatusCode::FORBIDDEN,
                };
                let body = json!({"error": r.code().name(), "message": r.message}).to_string();
                return axum::response::IntoResponse::into_response((status, body));
            }
        }
    }
    let c = &shared.config;
    // The library reserves a frame's announced length (up to
    // `ws_frame_max`) on its header, assembles a message up to
    // `ws_message_max`, and reads in chunks of `read_buffer_size` (128 KiB
    // by default, per connection, idle or not: 16 KiB here). The bytes it
    // gets are metered against the budget by `Slotted`.
    ws.max_message_size(c.ws_message_max)
        .max_frame_size(c.ws_frame_max)
        .max_write_buffer_size(c.ws_write_buffer_max)
        .read_buffer_size(WS_READ_BUFFER)
        .on_upgrade(move |socket| async move {
            // The request's own bytes (at most WS_UNBUDGETED_BYTES) stay
            // counted until the first message is handled; what the client
            // sent behind them was held until the 101 and reaches the
            // library under the meter, as frames.
            // axum spawns this future unnamed; the connection runs in a
            // task of its own, named for tokio-console (src/task.rs).
            let name = format!("ws conn {}", meter.0.info.peer);
            let principal = authed.as_ref().map(|(s, _)| s.principal.name.clone());
            crate::conn_log::opened(&meter.0.info, None, principal.as_deref());
            let mut conn = WsConnection::new(shared, meter);
            conn.auth = authed;
            let _ = crate::task::spawn_named(&name, conn.run(socket)).await;
        })
}

/// Takes a connection slot when a connection is accepted, before a byte of
/// HTTP is read: the WebSocket port counts toward `connections_max` from
/// the start, and past it a connection is closed at once.
struct SlotListener<G: WireGame> {
    inner: TcpListener,
    shared: Arc<Shared<G>>,
}

impl<G: WireGame + JsonGame> axum::serve::Listener for SlotListener<G> {
    type Io = Slotted<G>;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.inner.accept().await {
                Ok((stream, addr)) => {
                    let _ = stream.set_nodelay(true);
                    let slot = match self.shared.connection_slot(Listener::Ws, addr) {
                        Ok(slot) => slot,
                        Err(why) => {
                            refuse_full(&stream, &self.shared.refusal_message(why));
                            self.shared.refusals.refused(Listener::Ws, addr, None, why);
                            continue;
                        }
                    };
                    // The connection this slot is held for.
                    {
                        let first = Instant::now() + self.shared.config.handshake_timeout;
                        let quiet = self.shared.config.idle_timeout;
                        let deadline = Box::pin(tokio::time::sleep_until(first));
                        let meter = Meter(Arc::new(MeterState {
                            shared: self.shared.clone(),
                            info: slot.info,
                            read: AtomicUsize::new(0),
                            mark: AtomicUsize::new(0),
                            charged: AtomicUsize::new(0),
                            read_at_ns: AtomicU64::new(0),
                            origin: std::time::Instant::now(),
                        }));
                        // With TLS, the first read drives the handshake,
                        // under the handshake deadline below.
                        let stream = crate::tls::Transport::new(stream, self.shared.config.tls.as_ref());
                        let io = Slotted {
                            stream,
                            _slot: slot,
                            quiet,
                            deadline,
                            meter,
                            waiting: None,
                            framing: Framing::default(),
                            held: Vec::new(),
                            charge_for: 0,
                            read_waker: None,
                            timed_out: false,
                        };
                        return (io, addr);
                    }
                }
                // Out of file descriptors, say: back off instead of spinning.
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(10)).await,
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// Refuses a connection past `connections_max` (or its address's
/// `connections_per_address_max`) from the accept loop, with no task: a
/// 503 whose body is the `too_many_connections` error, in one
/// non-blocking write, then what already arrived is drained (as TCP's
/// `refuse_full` does) and the socket closes as it is dropped.
fn refuse_full(stream: &tokio::net::TcpStream, message: &str) {
    let body = error_json(ErrorCode::TooManyConnections, message);
    let answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
         connection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.try_write(answer.as_bytes());
    crate::tcp::drain_refused(stream);
}

/// A WebSocket port's connection: holds its slot, serves one HTTP request,
/// meters its input against the unfinished-frame budget, and fails a read
/// once the handshake timeout has passed since the accept without an
/// upgrade (however the request's bytes trickle in), or, upgraded, once no
/// byte arrived for the idle timeout.
struct Slotted<G: WireGame> {
    stream: crate::tls::Transport,
    _slot: crate::ConnectionSlot<G>,
    quiet: std::time::Duration,
    deadline: std::pin::Pin<Box<tokio::time::Sleep>>,
    meter: Meter<G>,
    /// A wait for budget under way (kept across polls: a read dropped by a
    /// `select!` resumes it).
    waiting: Option<std::pin::Pin<Box<dyn Future<Output = ()> + Send>>>,
    framing: Framing,
    /// Bytes read but held back from the reader: from the last byte of a
    /// large frame's header on, until the budget is taken (at most one
    /// read, `WS_READ_BUFFER`), or after the request's head until it is
    /// answered.
    held: Vec<u8>,
    /// The data message the charge covers ([`Framing::current_message`]
    /// when it was taken): a later message's large header waits for the
    /// charge to be given back and taken again.
    charge_for: u64,
    /// A read waiting for the request's answer, woken when it is written.
    read_waker: Option<std::task::Waker>,
    /// The handshake deadline passed before an upgrade (for the log).
    timed_out: bool,
}

/// A connection that was never upgraded is logged as refused here (an
/// upgraded one logs its own lines, `WsConnection::run`).
impl<G: WireGame> Drop for Slotted<G> {
    fn drop(&mut self) {
        if !self.framing.in_frames() {
            let why = if self.timed_out {
                RefusedFor::Handshake(ErrorCode::HandshakeTimeout)
            } else {
                RefusedFor::NotUpgraded
            };
            let m = &self.meter.0;
            m.shared.refusals.refused(Listener::Ws, m.info.peer, Some(m.info.id), why);
        }
    }
}

/// One connection's input meter, shared by its [`Slotted`] stream (which
/// reads) and its [`WsConnection`] (which sees whole messages), both on the
/// connection's one task.
///
/// The library reserves a frame's announced length on its header, but the
/// memory it touches follows the bytes read (plus its read chunk), and a
/// message's bytes are freed once the message is. So the bytes read since
/// the last data message was handled bound what the connection holds: the
/// first [`WS_UNBUDGETED_BYTES`] of them are free; past them the stream
/// takes [`message_bytes_max`] of the budget at once (waiting, not
/// reading, while it is spent, as a TCP connection does: it waits holding
/// none, so the wait ends), reads no further than that, and gives it back
/// when the message has been handled or the connection closes. A peer that
/// sends more bytes than the largest message could take is closed.
struct Meter<G: WireGame>(Arc<MeterState<G>>);

impl<G: WireGame> Clone for Meter<G> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

/// How the upgrade handler finds its connection's meter.
impl<G: WireGame + JsonGame> Connected<axum::serve::IncomingStream<'_, SlotListener<G>>> for Meter<G> {
    fn connect_info(stream: axum::serve::IncomingStream<'_, SlotListener<G>>) -> Self {
        stream.io().meter.clone()
    }
}

struct MeterState<G: WireGame> {
    shared: Arc<Shared<G>>,
    /// Who the connection is (its peer names its task too).
    info: crate::conn_log::ConnInfo,
    /// Bytes read from the socket, all told.
    read: AtomicUsize,
    /// `read` when the last data message was handled (less the control
    /// frames handled since, which hold nothing once answered).
    mark: AtomicUsize,
    /// Budget held: 0 or `message_bytes_max`.
    charged: AtomicUsize,
    /// When the last read that passed bytes to the library returned, in
    /// nanoseconds since `origin`. The library reads only when it holds no
    /// whole message, so when it hands one over, this is the read that
    /// brought its last bytes.
    read_at_ns: AtomicU64,
    origin: std::time::Instant,
}

impl<G: WireGame> Meter<G> {
    fn charge_bytes(&self) -> usize {
        let c = &self.0.shared.config;
        message_bytes_max(c.ws_message_max, c.ws_frame_max)
    }

    /// A data message was handled and dropped: what was read before now
    /// is free again (the library keeps less than one read chunk of the
    /// next frames, within `WS_UNBUDGETED_BYTES`), and the budget goes back.
    fn message_done(&self) {
        let m = &self.0;
        m.mark.store(m.read.load(Relaxed), Relaxed);
        m.shared.frame_budget.give_back(m.charged.swap(0, Relaxed));
    }

    /// When the last read that passed bytes returned: for the message
    /// being handled, the read that brought its last bytes (the same point
    /// as a TCP connection's `read_at`; bytes held back for budget count
    /// when they pass).
    fn read_at(&self) -> std::time::Instant {
        let m = &self.0;
        m.origin + std::time::Duration::from_nanos(m.read_at_ns.load(Relaxed))
    }

    /// Bytes passed to the library now.
    fn passed(&self, n: usize) {
        let m = &self.0;
        m.read.fetch_add(n, Relaxed);
        let since = m.origin.elapsed().as_nanos().min(u128::from(u64::MAX)) as u64;
        m.read_at_ns.store(since, Relaxed);
    }

    /// The connection holds a charge (a message over
    /// [`WS_UNBUDGETED_BYTES`] is under way).
    fn charged(&self) -> bool {
        self.0.charged.load(Relaxed) > 0
    }

    /// A control frame of `payload` bytes was handled: its wire bytes
    /// (a masked client header is 6 bytes) are free again, but not what an
    /// unfinished fragmented message around it holds.
    fn control_done(&self, payload: usize) {
        let m = &self.0;
        let read = m.read.load(Relaxed);
        let _ = m.mark.fetch_update(Relaxed, Relaxed, |mark| Some((mark + payload + 6).min(read)));
    }
}

impl<G: WireGame> Drop for MeterState<G> {
    fn drop(&mut self) {
        self.shared.frame_budget.give_back(*self.charged.get_mut());
    }
}

/// Where a connection's bytes are: in the HTTP request, waiting for its
/// answer, or in WebSocket frames (their headers parsed, so that a large
/// frame's header can be held back until its budget is taken: the library
/// reserves the announced length on the header, and with transparent huge
/// pages touching any of it can make 2 MiB resident). No I/O: [`Slotted`]
/// feeds it what it reads and what it writes.
#[derive(Debug, Default)]
struct Framing {
    phase: Phase,
    /// Head scanning: a non-empty line was seen; then 1 after a `\n`, 2
    /// after `\n\r`.
    head_started: bool,
    head_state: u8,
    /// The first bytes written on the connection, up to the status code
    /// (`HTTP/1.1 101`).
    status: [u8; STATUS_LINE_PREFIX],
    status_len: usize,
    /// The current frame header's bytes so far.
    header: [u8; 14],
    header_len: usize,
    /// Payload bytes of the current frame still to pass.
    payload_left: u64,
    /// The current frame is the final one of a data message: the message
    /// ends with its payload.
    payload_ends_message: bool,
    /// Data messages whose first frame's header has passed.
    messages_started: u64,
    /// A data message has started and its last payload byte not passed.
    message_open: bool,
}

/// Bytes of a response's status line that say whether it is an upgrade:
/// `HTTP/1.1 101`.
const STATUS_LINE_PREFIX: usize = 12;

/// Where a connection is, for [`Framing`].
#[derive(Debug, Default, PartialEq, Eq, Clone, Copy)]
enum Phase {
    /// Reading the one request's head (an empty line after a non-empty
    /// one ends it, as the HTTP parser reads it).
    #[default]
    Head,
    /// The head is over; nothing more passes until the answer's status
    /// line says whether it upgrades (HTTP/1.1 keeps a connection alive
    /// and reads pipelined requests: one request per connection here, so
    /// that what follows a head is frames, or nothing).
    Answer,
    /// Upgraded (101): frames follow. The handler refuses an upgrade
    /// request with a body.
    Frames,
    /// Answered with anything but 101: nothing more is read.
    Refused,
}

/// What [`Framing::scan`] found.
#[derive(Debug, PartialEq, Eq)]
enum Scan {
    /// All the bytes may go to the reader.
    All,
    /// Only the first n: the byte at n completes the header of a frame of
    /// this many payload bytes, which needs budget first (or, charged, the
    /// charge covers an earlier message: it must be given back and taken
    /// again).
    HoldFrom(usize, u64),
    /// Only the first n: the request's head ends there, and what follows
    /// waits for the answer ([`Framing::answered`]).
    AwaitAnswer(usize),
    /// None: the request was refused, the connection reads no more.
    Refused,
}

/// A frame header's length: 2 bytes, then 0, 2 or 8 of extended length,
/// then 4 of mask when the mask bit is set. None until the second byte.
fn frame_header_len(first_two: &[u8]) -> Option<usize> {
    let b = *first_two.get(1)?;
    let ext = match b & 0x7f {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    Some(2 + ext + if b & 0x80 != 0 { 4 } else { 0 })
}

fn frame_payload_len(header: &[u8]) -> u64 {
    match header[1] & 0x7f {
        126 => u64::from(u16::from_be_bytes([header[2], header[3]])),
        127 => u64::from_be_bytes(header[2..10].try_into().expect("8 bytes")),
        n => u64::from(n),
    }
}

impl Framing {
    /// The data message the next data frame belongs to: the open one, or
    /// the next to start. A charge taken now covers it.
    fn current_message(&self) -> u64 {
        if self.message_open { self.messages_started } else { self.messages_started + 1 }
    }

    /// The connection is reading frames (upgraded).
    fn in_frames(&self) -> bool {
        self.phase == Phase::Frames
    }

    /// Bytes the server wrote (`written`, the next ones on the connection):
    /// the answer's status line decides the phase once the head is over.
    fn answered(&mut self, written: &[u8]) {
        if self.status_len == STATUS_LINE_PREFIX {
            return;
        }
        let n = written.len().min(STATUS_LINE_PREFIX - self.status_len);
        self.status[self.status_len..self.status_len + n].copy_from_slice(&written[..n]);
        self.status_len += n;
        if self.status_len < STATUS_LINE_PREFIX {
            return;
        }
        let upgrade = self.status.starts_with(b"HTTP/1.1 ") && self.status.ends_with(b"101");
        // hyper answers only once the head is read: an answer before its
        // end (none, in hyper) refuses too.
        self.phase = if upgrade && self.phase == Phase::Answer { Phase::Frames } else { Phase::Refused };
    }

    /// Passes `bytes` (the next ones on the connection), stopping at the
    /// end of the request's head until it is answered, and before the last
    /// byte of a header that announces more than `free` payload bytes (and
    /// no more than `frame_max`, which the library refuses on the header,
    /// before reserving) unless `charged_for` names the data message it
    /// belongs to ([`Framing::current_message`] when the charge was
    /// taken). State advances only over the bytes let through.
    fn scan(&mut self, bytes: &[u8], free: u64, frame_max: u64, charged_for: Option<u64>) -> Scan {
        let mut i = 0;
        while i < bytes.len() {
            match self.phase {
                Phase::Head => {}
                Phase::Answer => return Scan::AwaitAnswer(i),
                Phase::Refused => return Scan::Refused,
                Phase::Frames => {
                    if self.payload_left > 0 {
                        let n = self.payload_left.min((bytes.len() - i) as u64);
                        self.payload_left -= n;
                        i += n as usize;
                        if self.payload_left == 0 && self.payload_ends_message {
                            self.message_open = false;
                        }
                        continue;
                    }
                    self.header[self.header_len] = bytes[i];
                    let complete = frame_header_len(&self.header[..self.header_len + 1]) == Some(self.header_len + 1);
                    if !complete {
                        self.header_len += 1;
                        i += 1;
                        continue;
                    }
                    let len = frame_payload_len(&self.header[..self.header_len + 1]);
                    if len > free && len <= frame_max && charged_for != Some(self.current_message()) {
                        return Scan::HoldFrom(i, len);
                    }
                    // Opcodes 8 and up are control frames, which may come
                    // between a message's fragments; the others carry data.
                    let data = self.header[0] & 0x08 == 0;
                    let fin = self.header[0] & 0x80 != 0;
                    if data {
                        if !self.message_open {
                            self.messages_started += 1;
                            self.message_open = true;
                        }
                        self.payload_ends_message = fin;
                        if fin && len == 0 {
                            self.message_open = false;
                        }
                    } else {
                        self.payload_ends_message = false;
                    }
                    self.payload_left = len;
                    self.header_len = 0;
                    i += 1;
                    continue;
                }
            }
            let b = bytes[i];
            i += 1;
            self.head_state = match (self.head_state, b) {
                (_, b'\n') if self.head_state != 0 || !self.head_started => {
                    if self.head_started {
                        self.phase = Phase::Answer;
                    }
                    0
                }
                (_, b'\n') => 1,
                (1, b'\r') => 2,
                (_, b'\r') if !self.head_started => 0,
                _ => {
                    self.head_started = true;
                    0
                }
            };
        }
        Scan::All
    }
}

/// Why [`Slotted::passable`] stopped short of the bytes it was given.
#[derive(Debug, PartialEq, Eq)]
enum Stop {
    /// It did not: all pass.
    None,
    /// A large frame's header: budget first.
    Charge,
    /// The request's head is over: its answer first.
    Answer,
    /// The request was refused: nothing more passes.
    Refused,
}

impl<G: WireGame> Slotted<G> {
    /// Takes the connection's budget charge, or says it is waiting.
    fn poll_charge(&mut self, cx: &mut std::task::Context<'_>) -> Poll<()> {
        let m = &self.meter.0;
        if m.charged.load(Relaxed) > 0 {
            return Poll::Ready(());
        }
        let bytes = self.meter.charge_bytes();
        let shared = m.shared.clone();
        let wait = self.waiting.get_or_insert_with(|| Box::pin(async move { shared.frame_budget.take(bytes).await }));
        match wait.as_mut().poll(cx) {
            Poll::Ready(()) => {
                self.waiting = None;
                self.meter.0.charged.store(bytes, Relaxed);
                // Every message the library completed has been handled
                // (it reads only for a frame it lacks), so the charge
                // covers the message under way, or the next one.
                self.charge_for = self.framing.current_message();
                Poll::Ready(())
            }
            Poll::Pending => Poll::Pending,
        }
    }

    /// Bytes this connection may pass to its reader now (at least one),
    /// after taking the budget if it needs it; an error once it passed
    /// more without a whole message than the largest message takes, or a
    /// request head longer than [`WS_UNBUDGETED_BYTES`] (heads are not
    /// charged: a slow one would hold budget until the handshake timeout).
    fn poll_allowance(&mut self, cx: &mut std::task::Context<'_>) -> Poll<std::io::Result<usize>> {
        let m = &self.meter.0;
        let since = m.read.load(Relaxed) - m.mark.load(Relaxed);
        match self.framing.phase {
            Phase::Head if since >= WS_UNBUDGETED_BYTES => {
                return Poll::Ready(Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    "a request head longer than WS_UNBUDGETED_BYTES",
                )));
            }
            Phase::Head => return Poll::Ready(Ok(WS_UNBUDGETED_BYTES - since)),
            // What follows the head is held, at most one read, until the
            // answer: it passes (as frames) under the allowance then.
            Phase::Answer | Phase::Refused => return Poll::Ready(Ok(WS_READ_BUFFER)),
            Phase::Frames => {}
        }
        let charged = m.charged.load(Relaxed);
        if since < WS_UNBUDGETED_BYTES + charged {
            return Poll::Ready(Ok(WS_UNBUDGETED_BYTES + charged - since));
        }
        if charged > 0 {
            return Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "more bytes without a whole message than the largest message takes",
            )));
        }
        match self.poll_charge(cx) {
            Poll::Ready(()) => self.poll_allowance(cx),
            Poll::Pending => Poll::Pending,
        }
    }

    fn poll_deadline(&mut self, cx: &mut std::task::Context<'_>) -> Poll<std::io::Result<()>> {
        if self.deadline.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        self.timed_out = !self.framing.in_frames();
        Poll::Ready(Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "no upgrade within the handshake timeout, or no bytes within the idle timeout",
        )))
    }

    /// Scans `bytes` (about to go to the reader): how many may go now, and
    /// why not all.
    fn passable(&mut self, bytes: &[u8]) -> (usize, Stop) {
        let charged_for = (self.meter.0.charged.load(Relaxed) > 0).then_some(self.charge_for);
        let frame_max = self.meter.0.shared.config.ws_frame_max as u64;
        match self.framing.scan(bytes, WS_UNBUDGETED_BYTES as u64, frame_max, charged_for) {
            Scan::All => (bytes.len(), Stop::None),
            Scan::HoldFrom(n, _) => (n, Stop::Charge),
            Scan::AwaitAnswer(n) => (n, Stop::Answer),
            Scan::Refused => (0, Stop::Refused),
        }
    }

    /// Nothing can pass now (`stop` says why): wait for the budget or the
    /// answer (the handshake or idle deadline still runs), or end.
    fn poll_stopped(&mut self, cx: &mut std::task::Context<'_>, stop: Stop) -> Poll<std::io::Result<bool>> {
        match stop {
            Stop::None => unreachable!("bytes pass unless stopped"),
            // The end of input: hyper closes after its answer.
            Stop::Refused => Poll::Ready(Ok(false)),
            Stop::Answer => {
                self.read_waker = Some(cx.waker().clone());
                self.poll_deadline(cx).map_ok(|()| false)
            }
            // Held while charged: the charge covers an earlier message,
            // which the library returned without reading on (it reads only
            // for a frame it lacks) and which was not handled. Not hyper's
            // and tungstenite's order: close rather than wait for nothing.
            Stop::Charge if self.meter.0.charged.load(Relaxed) > 0 => Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "a large frame's header read before the previous message was handled",
            ))),
            Stop::Charge => match self.poll_charge(cx) {
                Poll::Ready(()) => Poll::Ready(Ok(true)),
                Poll::Pending => self.poll_deadline(cx).map_ok(|()| false),
            },
        }
    }
}

impl<G: WireGame> tokio::io::AsyncRead for Slotted<G> {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        if this.framing.phase == Phase::Refused {
            // The end of input: one request per connection.
            this.held = Vec::new();
            return Poll::Ready(Ok(()));
        }
        let allowed = match this.poll_allowance(cx) {
            Poll::Ready(Ok(n)) => n.min(buf.remaining()).min(WS_READ_BUFFER),
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            // Waiting for budget: the idle timeout still runs.
            Poll::Pending => return this.poll_deadline(cx),
        };
        assert!(allowed > 0, "an allowance is at least one byte");
        // Bytes held back (before a large frame's header, or after the
        // request's head) go first, once the budget is taken or the
        // request answered.
        if !this.held.is_empty() {
            let mut held = std::mem::take(&mut this.held);
            let take = allowed.min(held.len());
            let (mut n, stop) = this.passable(&held[..take]);
            if n == 0 {
                match this.poll_stopped(cx, stop) {
                    Poll::Ready(Ok(true)) => {
                        n = this.passable(&held[..take]).0;
                        assert!(n > 0, "a connection charged for the message under way passes its headers");
                    }
                    Poll::Ready(Ok(false)) => return Poll::Ready(Ok(())),
                    other => {
                        this.held = held;
                        return other.map_ok(|_| ());
                    }
                }
            }
            buf.put_slice(&held[..n]);
            held.drain(..n);
            // Kept only while it holds something.
            this.held = if held.is_empty() { Vec::new() } else { held };
            this.meter.passed(n);
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let mut part = tokio::io::ReadBuf::new(buf.initialize_unfilled_to(allowed));
        let result = std::pin::Pin::new(&mut this.stream).poll_read(cx, &mut part);
        let got = part.filled().len();
        match result {
            Poll::Ready(Ok(())) if got > 0 => {
                // Until the upgrade, the handshake deadline stays fixed:
                // a request sent a byte at a time ends with it.
                if this.framing.in_frames() {
                    this.deadline.as_mut().reset(Instant::now() + this.quiet);
                }
                let fresh = &buf.initialize_unfilled_to(allowed)[..got];
                let (n, stop) = this.passable(fresh);
                if n < got {
                    this.held.extend_from_slice(&fresh[n..]);
                }
                buf.set_filled(before + n);
                if n > 0 {
                    this.meter.passed(n);
                }
                if n == 0 {
                    // Nothing to give yet: wait (and wake) for the budget
                    // or the answer.
                    return match this.poll_stopped(cx, stop) {
                        Poll::Ready(Ok(true)) => {
                            cx.waker().wake_by_ref();
                            Poll::Pending
                        }
                        other => other.map_ok(|_| ()),
                    };
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Ok(())) => Poll::Ready(Ok(())),
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => this.poll_deadline(cx),
        }
    }
}

impl<G: WireGame> Slotted<G> {
    /// `written` went out: until the answer's status line is whole, it
    /// decides whether frames follow. A 101 starts the idle timeout and
    /// releases what was held behind the head; anything else ends input.
    fn wrote(&mut self, written: &[u8]) {
        let before = self.framing.phase;
        self.framing.answered(written);
        if self.framing.phase != before {
            if self.framing.in_frames() {
                self.deadline.as_mut().reset(Instant::now() + self.quiet);
            }
            if let Some(w) = self.read_waker.take() {
                w.wake();
            }
        }
    }
}

impl<G: WireGame> tokio::io::AsyncWrite for Slotted<G> {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let result = std::pin::Pin::new(&mut this.stream).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = result {
            this.wrote(&buf[..n]);
        }
        result
    }

    fn poll_flush(self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let result = std::pin::Pin::new(&mut this.stream).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = result {
            let mut left = n;
            for b in bufs {
                if left == 0 || this.framing.status_len == STATUS_LINE_PREFIX {
                    break;
                }
                let k = left.min(b.len());
                this.wrote(&b[..k]);
                left -= k;
            }
        }
        result
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

struct WsConnection<G: WireGame + JsonGame> {
    shared: Arc<Shared<G>>,
    meter: Meter<G>,
    producer: Option<Producer<G>>,
    /// Held while `producer` is.
    claim: Option<crate::ProducerClaim<G>>,
    outcomes: bool,
    /// Answers owed in frame order, and the BUSY rule.
    session: Session,
    /// Messages to write, all before anything more is read or taken from
    /// the mailbox (see [`WsConnection::write_out`]).
    out: Outbox,
    /// Its `hello` asked for `"compression": "deflate"`: updates go as
    /// binary messages, each the raw DEFLATE of the update's JSON text.
    deflate: bool,
    /// Bytes of `out` that are updates (in the `update_bytes_queued` gauge).
    out_update_bytes: usize,
    subscriptions: Subscriptions<G>,
    deliveries: Vec<Delivery<G>>,
    /// Batches answered in `out`, for the stage latencies once it is
    /// flushed (as TCP records them once its write returns).
    staged: Vec<crate::Staged>,
    /// With authentication on: the token this connection presented (in
    /// the upgrade's `Authorization` header or its `hello`), and its slot
    /// in the token's connection quota.
    auth: Option<(crate::auth::Session, crate::auth::ConnectionGrant)>,
    /// What it carried, for its close line.
    counts: Counts,
    /// Held while `producer` is: its id's binding to the token.
    binding: Option<crate::auth::ProducerBinding>,
}

/// Messages queued for the socket: JSON text, and for a connection that
/// asked for compression its updates as binary messages.
#[derive(Default)]
struct Outbox(Vec<Message>);

impl Outbox {
    fn push(&mut self, text: String) {
        self.0.push(Message::Text(text.into()));
    }

    fn push_binary(&mut self, bytes: Vec<u8>) {
        self.0.push(Message::Binary(bytes.into()));
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn drain(&mut self) -> std::vec::Drain<'_, Message> {
        self.0.drain(..)
    }
}

/// A data message's payload bytes (what `bytes_out` counts).
fn message_len(m: &Message) -> usize {
    match m {
        Message::Text(t) => t.len(),
        Message::Binary(b) => b.len(),
        _ => 0,
    }
}

/// A chunk's `update` messages: its updates as JSON text, at most
/// [`JSON_ENTRIES_MAX`] entries per message.
pub fn update_texts<G: JsonGame>(chunk: &Chunk<G>) -> Vec<String> {
    chunk
        .updates
        .chunks(JSON_ENTRIES_MAX)
        .enumerate()
        .map(|(i, piece)| {
            let entries: Vec<Value> = piece
                .iter()
                .map(|u| match u {
                    Update::Applied { event, outcome } => json!({"kind": "applied", "time_us": event.time_us,
                        "event": G::event_to_json(&event.event), "outcome": G::outcome_to_json(outcome)}),
                    Update::Broadcast(b) => json!({"kind": "broadcast", "body": G::broadcast_to_json(b)}),
                })
                .collect();
            json!({"type": "update", "hunt": chunk.world,
                "first_seq": chunk.first_seq + (i * JSON_ENTRIES_MAX) as u64, "entries": entries})
            .to_string()
        })
        .collect()
}

thread_local! {
    /// One compressor per I/O worker, reset for each message: its state
    /// (some 300 KiB in miniz_oxide) is allocated once, not per chunk.
    static DEFLATER: std::cell::RefCell<flate2::Compress> =
        std::cell::RefCell::new(flate2::Compress::new(flate2::Compression::new(DEFLATE_LEVEL), false));
}

/// The raw DEFLATE (RFC 1951: no zlib header or trailer, what
/// `DecompressionStream('deflate-raw')` reads) of `text`, one stream.
pub fn deflate_raw(text: &[u8]) -> Vec<u8> {
    DEFLATER.with_borrow_mut(|c| deflate_raw_with(c, text))
}

/// [`deflate_raw`] with a compressor of the caller's (raw: made with
/// `zlib_header` false), reset first; `examples/deflate_levels.rs` times
/// the levels with it.
pub fn deflate_raw_with(c: &mut flate2::Compress, text: &[u8]) -> Vec<u8> {
    c.reset();
    let mut out = Vec::with_capacity(text.len() / 2 + 64);
    loop {
        let read = usize::try_from(c.total_in()).expect("within the input's length");
        // Compressing into a Vec's spare room has no failure case: the
        // state was reset and the input is a byte slice.
        let status =
            c.compress_vec(&text[read..], &mut out, flate2::FlushCompress::Finish).expect("raw deflate into memory");
        if status == flate2::Status::StreamEnd {
            return out;
        }
        out.reserve(out.capacity().max(64));
    }
}

fn error_json(code: ErrorCode, message: &str) -> String {
    json!({"type": "error", "code": code.name(), "message": message}).to_string()
}

/// A refusal as its message (`busy` or `error`), counted as sent.
fn refusal_json(metrics: &crate::ServerMetrics, refusal: &Refusal) -> String {
    match refusal {
        Refusal::Busy { first_seq, count, retry_after_ms } => {
            metrics.busy_replies.fetch_add(1, Relaxed);
            json!({"type": "busy", "first_seq": first_seq, "count": count, "retry_after_ms": retry_after_ms})
                .to_string()
        }
        Refusal::Error { code, message } => {
            metrics.errors[*code as usize].fetch_add(1, Relaxed);
            error_json(*code, message)
        }
    }
}

impl<G: WireGame + JsonGame> WsConnection<G> {
    fn new(shared: Arc<Shared<G>>, meter: Meter<G>) -> Self {
        Self {
            session: Session::new(shared.config.window_batches),
            shared,
            meter,
            producer: None,
            claim: None,
            outcomes: true,
            out: Outbox::default(),
            deflate: false,
            out_update_bytes: 0,
            subscriptions: Subscriptions::new(),
            deliveries: Vec::new(),
            staged: Vec::new(),
            auth: None,
            counts: Counts::default(),
            binding: None,
        }
    }

    /// Serves the connection, then closes it so that the reason reaches
    /// the peer: the answers owed before the error (batches in the engine
    /// complete first), the error, a Close frame naming it, and then the
    /// peer's messages still in flight are read and dropped until it closes
    /// too (closing with unread input would reset the connection and lose
    /// what was sent).
    async fn run(mut self, mut socket: WebSocket) {
        let result = self.serve(&mut socket).await;
        let reason = match &result {
            Ok(()) => "peer_closed",
            Err((code, _)) => code.name(),
        };
        let close = match result {
            Ok(()) => None,
            Err((code, message)) => {
                if code != ErrorCode::Internal {
                    self.complete_owed().await;
                } else {
                    // The engine failed: what completed before the failure
                    // is still answered (as on TCP); nothing more will be.
                    while let Some(c) = self.producer.as_mut().and_then(Producer::try_complete) {
                        self.completed(c);
                    }
                }
                self.shared.metrics.errors[code as usize].fetch_add(1, Relaxed);
                self.out.push(error_json(code, &message));
                let close_code = match code {
                    ErrorCode::ShuttingDown | ErrorCode::IdleTimeout => close_code::AWAY,
                    ErrorCode::Internal => close_code::ERROR,
                    _ => close_code::POLICY,
                };
                Some(CloseFrame { code: close_code, reason: code.name().into() })
            }
        };
        let linger = Instant::now() + CLOSE_LINGER;
        let mut sent = true;
        for m in self.out.drain() {
            if !matches!(tokio::time::timeout_at(linger, socket.send(m)).await, Ok(Ok(()))) {
                sent = false;
                break;
            }
        }
        self.shared.metrics.updates_written(&mut self.out_update_bytes);
        if sent && !self.staged.is_empty() {
            self.shared.metrics.record_stages(self.staged.drain(..), std::time::Instant::now());
        }
        self.subscriptions.close(&self.shared);
        self.claim = None;
        let producer = self.producer.as_ref().map(Producer::id);
        let principal = self.auth.as_ref().map(|(s, _)| s.principal.name.as_str());
        crate::conn_log::closed(&self.meter.0.info, reason, &self.counts, producer, principal);
        if sent && matches!(tokio::time::timeout_at(linger, socket.send(Message::Close(close))).await, Ok(Ok(()))) {
            // Until the peer's Close (the library answers nothing more), its
            // end of the stream, or the linger.
            while let Ok(Some(Ok(m))) = tokio::time::timeout_at(linger, socket.recv()).await {
                match m {
                    Message::Close(_) => break,
                    // A control frame between a message's fragments: the
                    // message's charge stays.
                    Message::Ping(b) | Message::Pong(b) => self.meter.control_done(b.len()),
                    Message::Text(_) | Message::Binary(_) => {
                        drop(m);
                        self.meter.message_done();
                    }
                }
            }
        }
    }

    /// Waits for the batches in the engine, queueing their answers (and
    /// those queued behind them), for at most the idle timeout.
    async fn complete_owed(&mut self) {
        let deadline = Instant::now() + self.shared.config.idle_timeout;
        while let Some(producer) = self.producer.as_mut().filter(|p| p.in_flight() > 0) {
            match tokio::time::timeout_at(deadline, poll_fn(|cx| poll_complete(producer, cx))).await {
                Ok(Ok(c)) => self.completed(c),
                _ => return,
            }
        }
    }

    async fn serve(&mut self, socket: &mut WebSocket) -> Result<(), (ErrorCode, String)> {
        let config = self.shared.config.clone();
        let mut stop = self.shared.shutdown.clone();
        let mut stopping = *stop.borrow();
        let mut idle_deadline = Instant::now() + config.idle_timeout;
        // A reload wakes the connection to check its token at once: a
        // passive subscriber is not left receiving what it may no longer.
        let mut auth_changes = self.shared.config.auth.as_ref().map(|a| a.changes());
        // A reload between the upgrade's check and the line above.
        self.reauthorize()?;
        loop {
            self.write_out(socket).await?;
            let in_flight = self.producer.as_ref().map_or(0, Producer::in_flight);
            if stopping && in_flight == 0 {
                assert_eq!(self.session.owed(), 0, "no batch in flight: every answer owed went out");
                return Err((ErrorCode::ShuttingDown, "the server is shutting down".into()));
            }
            let can_read = !stopping && self.session.window_open();
            let subscribed = self.subscriptions.mailbox();
            let producer = &mut self.producer;
            tokio::select! {
                c = poll_fn(|cx| match producer.as_mut() {
                    Some(p) => poll_complete(p, cx),
                    None => Poll::Pending,
                }), if in_flight > 0 => {
                    self.completed(c.map_err(|lost| self.shared.lost(lost))?);
                    while let Some(c) = self.producer.as_mut().and_then(Producer::try_complete) {
                        self.completed(c);
                    }
                }
                _ = async { subscribed.as_ref().expect("guarded").ready().await }, if subscribed.is_some() => {
                    self.deliver();
                }
                msg = socket.recv(), if can_read => {
                    // A control frame keeps an idle connection open, but
                    // not a charge: a message under way (control frames
                    // come between its fragments) finishes within the idle
                    // timeout of the last data message, or the connection
                    // closes and gives its charge back.
                    let control = matches!(msg, Some(Ok(Message::Ping(_) | Message::Pong(_))));
                    if !control || !self.meter.charged() {
                        idle_deadline = Instant::now() + config.idle_timeout;
                    }
                    match msg {
                        None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return Ok(()),
                        Some(Ok(Message::Text(text))) => {
                            self.shared.metrics.frames_in.fetch_add(1, Relaxed);
                            self.shared.metrics.bytes_in.fetch_add(text.len() as u64, Relaxed);
                            self.counts.frames_in += 1;
                            self.counts.bytes_in += text.len() as u64;
                            let handled = self.message(text.as_str()).await;
                            drop(text);
                            self.meter.message_done();
                            handled?;
                        }
                        Some(Ok(Message::Binary(b))) => {
                            // Its charge goes back now, not after the
                            // answers owed and the close's linger.
                            drop(b);
                            self.meter.message_done();
                            return Err((ErrorCode::Malformed, "messages are JSON text".into()));
                        }
                        // Ping and pong frames: answered by the library.
                        Some(Ok(Message::Ping(b) | Message::Pong(b))) => self.meter.control_done(b.len()),
                    }
                }
                _ = tokio::time::sleep_until(idle_deadline), if !stopping && in_flight == 0 => {
                    return Err((ErrorCode::IdleTimeout, format!("no message for {:?}", config.idle_timeout)));
                }
                _ = stop.changed(), if !stopping => stopping = true,
                changed = async { auth_changes.as_mut().expect("guarded").changed().await }, if auth_changes.is_some() => {
                    if changed.is_err() {
                        auth_changes = None;
                    }
                    self.reauthorize()?;
                }
            }
        }
    }

    /// Checks the token again after a reload (before a hello with a token
    /// there is none to check). Removed: its subscriptions end now and it
    /// is refused `unauthorized` (the answers owed go out, then the error,
    /// then the connection closes). Still there: its new role and ranges
    /// apply, and each subscription they no longer allow ends with an
    /// `unsubscribed` message (after the updates already queued for it).
    fn reauthorize(&mut self) -> Result<(), (ErrorCode, String)> {
        let (Some(auth), Some((session, _))) = (&self.shared.config.auth, &mut self.auth) else { return Ok(()) };
        match auth.recheck_moved(session) {
            Ok(false) => Ok(()),
            Ok(true) => {
                let p = session.principal.clone();
                let revoked = p.revoked(self.subscriptions.hunts());
                for &hunt in &revoked {
                    self.subscriptions.unsubscribe(&self.shared, hunt);
                }
                // What was queued for them, and a gap their ends leave, go
                // out before `unsubscribed` (nothing of a hunt after it).
                if !revoked.is_empty() {
                    self.deliver();
                }
                for hunt in revoked {
                    self.out.push(json!({"type": "unsubscribed", "hunt": hunt}).to_string());
                }
                Ok(())
            }
            Err(r) => {
                self.subscriptions.close(&self.shared);
                Err((r.code(), r.message))
            }
        }
    }

    /// Writes `out`: every message queued (the library frames them into
    /// its write buffer, writing when it passes `write_buffer_size`), then
    /// one flush. While the socket does not drain, this waits, and nothing
    /// more is taken from the mailbox: `out` holds at most one take.
    async fn write_out(&mut self, socket: &mut WebSocket) -> Result<(), (ErrorCode, String)> {
        if self.out.is_empty() {
            return Ok(());
        }
        let idle_timeout = self.shared.config.idle_timeout;
        let metrics = self.shared.metrics.clone();
        let out = &mut self.out;
        let bytes_out = &mut self.counts.bytes_out;
        let write = async {
            let mut socket = std::pin::Pin::new(socket);
            for m in out.drain() {
                metrics.frames_out.fetch_add(1, Relaxed);
                *bytes_out += message_len(&m) as u64;
                poll_fn(|cx| futures_sink::Sink::poll_ready(socket.as_mut(), cx)).await?;
                futures_sink::Sink::start_send(socket.as_mut(), m)?;
            }
            poll_fn(|cx| futures_sink::Sink::poll_flush(socket.as_mut(), cx)).await
        };
        let written = tokio::time::timeout(idle_timeout, write).await;
        // Written, or the connection ends: either way no longer queued.
        self.shared.metrics.updates_written(&mut self.out_update_bytes);
        written
            .map_err(|_| (ErrorCode::IdleTimeout, String::new()))?
            .map_err(|_| (ErrorCode::Internal, String::new()))?;
        // The flush returned: the ACKs are with the kernel, as a TCP
        // connection's are when its write returns.
        if !self.staged.is_empty() {
            self.shared.metrics.record_stages(self.staged.drain(..), std::time::Instant::now());
        }
        Ok(())
    }

    async fn message(&mut self, text: &str) -> Result<(), (ErrorCode, String)> {
        // The read that brought the message's last bytes (not now: the
        // library may have held it while earlier ones were handled).
        let read = self.meter.read_at();
        let malformed = |m: String| (ErrorCode::Malformed, m);
        let v: Value = serde_json::from_str(text).map_err(|e| malformed(format!("not JSON: {e}")))?;
        let kind =
            v.get("type").and_then(Value::as_str).ok_or_else(|| malformed("missing string field `type`".into()))?;
        if let Some(auth) = &self.shared.config.auth {
            match &mut self.auth {
                // A hello naming another token than the upgrade's header:
                // refused, not silently ignored.
                Some((session, _))
                    if kind == "hello"
                        && v.get("token")
                            .is_some_and(|t| !t.is_null() && !t.as_str().is_some_and(|t| session.presented(t))) =>
                {
                    let r = auth.refuse(
                        crate::auth::RefusalReason::WrongToken,
                        "the hello's token is not the one in the Authorization header",
                    );
                    return Err((r.code(), r.message));
                }
                // A token removed by a reload: refused, and the connection
                // closes (after the answers owed).
                Some(_) => self.reauthorize()?,
                None if kind == "hello" => {
                    let token = match v.get("token") {
                        None | Some(Value::Null) => None,
                        Some(t) => Some(t.as_str().ok_or_else(|| malformed("`token` must be a string".into()))?),
                    };
                    let session = auth.authenticate_text(token).map_err(|r| (r.code(), r.message))?;
                    let grant = auth.connect(&session).map_err(|r| (r.code(), r.message))?;
                    self.auth = Some((session, grant));
                }
                None if kind == "ping" => {}
                None => {
                    let r = auth.refuse(
                        crate::auth::RefusalReason::MissingToken,
                        format!("authentication is on: `{kind}` needs a hello with a token first"),
                    );
                    return Err((r.code(), r.message));
                }
            }
        }
        match kind {
            "hello" => {
                if self.producer.is_some() {
                    return Err((ErrorCode::HandshakeRequired, "hello must come first, and once".into()));
                }
                let id = match v.get("producer_id") {
                    None | Some(Value::Null) => 0,
                    Some(x) => x.as_u64().ok_or_else(|| malformed("`producer_id` must be an integer".into()))?,
                };
                if let Some(o) = v.get("outcomes") {
                    self.outcomes = o.as_bool().ok_or_else(|| malformed("`outcomes` must be a boolean".into()))?;
                }
                self.deflate = match v.get("compression") {
                    None | Some(Value::Null) => false,
                    Some(Value::String(c)) if c == "deflate" => true,
                    Some(_) => return Err(malformed("`compression` must be \"deflate\" or absent".into())),
                };
                self.start_producer(id).await?;
            }
            "events" => {
                if self.producer.is_none() {
                    self.start_producer(0).await?;
                }
                let list = v
                    .get("events")
                    .and_then(Value::as_array)
                    .ok_or_else(|| malformed("missing array `events`".into()))?;
                let count = match Session::check_count(list.len(), self.shared.engine.config().batch_events_max) {
                    Ok(count) => count,
                    Err(refusal) => {
                        self.refuse(refusal);
                        return Ok(());
                    }
                };
                let mut events = Vec::with_capacity(list.len());
                for (i, e) in list.iter().enumerate() {
                    match G::event_from_json(e) {
                        Ok(event) => events.push(Stamped { time_us: 0, event }),
                        Err(why) => {
                            self.refuse(Refusal::error(ErrorCode::Malformed, format!("events[{i}]: {why}")));
                            return Ok(());
                        }
                    }
                }
                if let (Some(auth), Some((session, _))) = (&self.shared.config.auth, &mut self.auth) {
                    // Before anything of the batch is applied: its role,
                    // every event's hunt, its rate.
                    let hunts = events.iter().map(|e| G::world_of(&e.event));
                    let deletes = events.iter().any(|e| G::deletes_world(&e.event));
                    match auth.admit_events(session, hunts, deletes, count, std::time::Instant::now()) {
                        Ok(None) => {}
                        Ok(Some(retry_after_ms)) => {
                            let producer = self.producer.as_ref().expect("started above");
                            let first_seq = match v.get("first_seq").and_then(Value::as_u64) {
                                Some(s) => s,
                                None => self.session.implicit_sequence(producer.next_seq(), count).unwrap_or(0),
                            };
                            self.refuse(Refusal::Busy { first_seq, count, retry_after_ms });
                            return Ok(());
                        }
                        Err(r) if r.code().closes() => return Err((r.code(), r.message)),
                        Err(r) => {
                            self.refuse(Refusal::error(r.code(), r.message));
                            return Ok(());
                        }
                    }
                }
                let producer = self.producer.as_mut().expect("started above");
                let first_seq = match v.get("first_seq") {
                    None | Some(Value::Null) => self.session.implicit_sequence(producer.next_seq(), count),
                    Some(x) => Ok(x.as_u64().ok_or_else(|| malformed("`first_seq` must be an integer".into()))?),
                };
                let checked =
                    first_seq.and_then(|first_seq| self.session.check_sequence(first_seq, count).map(|()| first_seq));
                let first_seq = match checked {
                    Ok(first_seq) => first_seq,
                    Err(refusal) => {
                        self.refuse(refusal);
                        return Ok(());
                    }
                };
                self.shared.metrics.events_in.fetch_add(u64::from(count), Relaxed);
                self.counts.events_in += u64::from(count);
                let arrival = crate::Arrival { read, decoded: std::time::Instant::now() };
                let submitted = producer.submit_at(first_seq, &mut events).map(drop);
                match self.session.submitted(Batch { first_seq, count, arrival }, submitted) {
                    Admission::Owed => {}
                    Admission::Refused(refusal) => self.refuse(refusal),
                    Admission::ShuttingDown => {
                        return Err((ErrorCode::ShuttingDown, "the server is shutting down".into()));
                    }
                    Admission::Failed => return Err((ErrorCode::Internal, crate::failure_reason(producer))),
                    Admission::NotOwner { shard } => return Err(self.shared.not_owner(shard)),
                }
            }
            "subscribe" | "unsubscribe" => {
                let hunt = v
                    .get("hunt")
                    .and_then(Value::as_u64)
                    .and_then(|h| u32::try_from(h).ok())
                    .ok_or_else(|| malformed("`hunt` must be an integer in 0..=4294967295".into()))?;
                if kind == "subscribe"
                    && let (Some(auth), Some((session, _))) = (&self.shared.config.auth, &mut self.auth)
                    && let Err(r) = auth.admit_subscribe(session, hunt)
                {
                    if r.code().closes() {
                        return Err((r.code(), r.message));
                    }
                    self.shared.metrics.errors[r.code() as usize].fetch_add(1, Relaxed);
                    self.out.push(error_json(r.code(), &r.message));
                } else if kind == "subscribe" {
                    let mode = match v.get("broadcasts_only") {
                        None | Some(Value::Null) | Some(Value::Bool(false)) => SubscribeMode::Full,
                        Some(Value::Bool(true)) => SubscribeMode::BroadcastsOnly,
                        Some(_) => return Err(malformed("`broadcasts_only` must be a boolean".into())),
                    };
                    self.subscribe(hunt, mode);
                } else {
                    self.subscriptions.unsubscribe(&self.shared, hunt);
                    self.deliver();
                    self.out.push(json!({"type": "unsubscribed", "hunt": hunt}).to_string());
                }
            }
            "ping" => {
                let nonce = v.get("nonce").cloned().unwrap_or(Value::Null);
                self.out.push(json!({"type": "pong", "nonce": nonce}).to_string());
            }
            other => return Err(malformed(format!("unknown message type `{other}`"))),
        }
        Ok(())
    }

    async fn start_producer(&mut self, id: u64) -> Result<(), (ErrorCode, String)> {
        let engine = self.shared.engine.clone();
        // A role that may not produce never takes a client-chosen producer
        // id (it could lock the id's owner out with `producer_in_use`): it
        // is given a server-assigned one, as when the id is omitted.
        let reads_only = self.auth.as_ref().is_some_and(|(s, _)| !s.principal.role.produces());
        let producer = if id == 0 || reads_only { engine.producer() } else { engine.producer_with_id(id, 1) };
        // A producer id belongs to the token that first used it; held
        // while connected, its binding is never evicted.
        let binding = match (&self.shared.config.auth, &self.auth) {
            (Some(auth), Some((session, _))) if session.principal.role.produces() => {
                Some(auth.bind_producer(session, producer.id()).map_err(|r| (r.code(), r.message))?)
            }
            _ => None,
        };
        let claim =
            self.shared.claim_producer(producer.id()).await.ok_or_else(|| {
                (ErrorCode::ProducerInUse, format!("producer {} is connected elsewhere", producer.id()))
            })?;
        // The JSON messages have one version (the token and compression
        // in `hello` are optional fields), so this stays 1.
        let mut welcome = json!({"type": "welcome", "version": trove_proto::frame::VERSION_1,
            "producer_id": producer.id(), "batch_events_max": engine.config().batch_events_max,
            "outcomes": self.outcomes});
        if self.deflate {
            welcome["compression"] = json!("deflate");
        }
        self.out.push(welcome.to_string());
        self.producer = Some(producer);
        self.claim = Some(claim);
        self.binding = binding;
        Ok(())
    }

    fn subscribe(&mut self, hunt: WorldId, mode: SubscribeMode) {
        match self.subscriptions.subscribe(&self.shared, hunt, mode) {
            Some(next_seq) => {
                self.out.push(json!({"type": "subscribed", "hunt": hunt, "next_seq": next_seq}).to_string());
            }
            None => {
                let max = self.shared.config.subscriptions_max;
                self.out.push(error_json(ErrorCode::TooManySubscriptions, &format!("at most {max} subscriptions")));
            }
        }
    }

    /// Sends a refusal now, or after the batches still owed before it.
    fn refuse(&mut self, refusal: Refusal) {
        if let Some(refusal) = self.session.answer(refusal) {
            self.out.push(refusal_json(&self.shared.metrics, &refusal));
        }
    }

    fn completed(&mut self, c: Completed<G>) {
        let metrics = &self.shared.metrics;
        for answer in self.session.completed(&c.reused) {
            let text = match answer {
                Answer::Ack(batch) => {
                    // Its stages are recorded once `out` is flushed (`write_out`).
                    crate::record_ack(metrics, &mut self.staged, &batch, &c);
                    let mut ack = json!({"type": "ack", "first_seq": batch.first_seq, "count": batch.count});
                    if self.outcomes {
                        ack["outcomes"] = Value::Array(c.outcomes.iter().map(G::outcome_to_json).collect());
                    }
                    ack.to_string()
                }
                Answer::Refusal(refusal) => refusal_json(metrics, &refusal),
            };
            self.out.push(text);
        }
    }

    /// Moves the mailbox's deliveries into `out` (all of them: one wakeup,
    /// one flush). Each chunk is encoded once, by the first connection
    /// that sends it, and copied by the others.
    fn deliver(&mut self) {
        self.subscriptions.take(&mut self.deliveries);
        let (mut added, mut chunks) = (0, 0);
        // One clock read per take, not per chunk.
        let now = std::time::Instant::now();
        let mut ending = crate::Ending::default();
        loop {
            for d in self.deliveries.drain(..) {
                match ending.look(d) {
                    crate::Sent::Chunk(chunk) => {
                        // Messages of at most JSON_ENTRIES_MAX entries, so that one
                        // stays far below the write buffer bound.
                        let texts = chunk.encoded_text.get_or_init(|| {
                            self.shared.metrics.update_encodings[1].fetch_add(1, Relaxed);
                            update_texts(&chunk)
                        });
                        if self.deflate {
                            // Compressed once per chunk too, from the texts.
                            let packed = chunk.encoded_deflate.get_or_init(|| {
                                self.shared.metrics.update_encodings[2].fetch_add(1, Relaxed);
                                texts.iter().map(|t| deflate_raw(t.as_bytes())).collect()
                            });
                            added += packed.iter().map(Vec::len).sum::<usize>();
                            for p in packed {
                                self.out.push_binary(p.clone());
                            }
                        } else {
                            added += texts.iter().map(String::len).sum::<usize>();
                            for t in texts {
                                self.out.push(t.clone());
                            }
                        }
                        chunks += 1;
                        let waited = now.saturating_duration_since(chunk.ingested_at).as_nanos() as u64;
                        self.shared.metrics.ingest_to_update_ns.record_n(waited, chunk.updates.len() as u64);
                    }
                    crate::Sent::Gap { world, first_missed, missed } => {
                        let gap = json!({"type": "gap", "hunt": world, "first_missed": first_missed, "missed": missed});
                        let text = gap.to_string();
                        added += text.len();
                        self.out.push(text);
                    }
                    crate::Sent::Skip => {}
                }
            }
            // A deleted hunt's subscription ends after its last entry, as on
            // TCP (`tcp.rs`, `deliver`), with the reason.
            let ended = ending.take_pending();
            if ended.is_empty() {
                break;
            }
            for hunt in ended {
                self.subscriptions.unsubscribe(&self.shared, hunt);
                let text = json!({"type": "unsubscribed", "hunt": hunt, "reason": "deleted"}).to_string();
                added += text.len();
                self.out.push(text);
            }
            self.subscriptions.take(&mut self.deliveries);
        }
        // Once per take: the counter's cache line is every worker's.
        if chunks > 0 {
            self.shared.metrics.update_chunks_sent.fetch_add(chunks, Relaxed);
        }
        if added > 0 {
            self.out_update_bytes += added;
            self.shared.metrics.updates_queued(added, self.out_update_bytes);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{Framing, Phase, Scan};

    #[test]
    fn raw_deflate_inflates_back_whatever_its_room_at_first() {
        use std::io::Read;
        // Text that compresses, and bytes that do not (more than the room
        // reserved at first), one after the other on the same compressor.
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let noise: Vec<u8> = (0..200_000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let text = br#"{"kind":"applied","time_us":1}"#.repeat(5000);
        for input in [&text[..], &noise[..], b"", &text[..]] {
            let packed = super::deflate_raw(input);
            let mut back = Vec::new();
            flate2::read::DeflateDecoder::new(&packed[..]).read_to_end(&mut back).unwrap();
            assert_eq!(back, input);
        }
    }

    const HEAD: &[u8] = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
    const FREE: u64 = 16 << 10;
    const MAX: u64 = 1 << 20;

    /// A masked client frame header: `first` is FIN and opcode.
    fn header_with(first: u8, len: u64) -> Vec<u8> {
        let mut h = vec![first];
        if len < 126 {
            h.push(0x80 | len as u8);
        } else if len <= 0xffff {
            h.push(0x80 | 126);
            h.extend_from_slice(&(len as u16).to_be_bytes());
        } else {
            h.push(0x80 | 127);
            h.extend_from_slice(&len.to_be_bytes());
        }
        h.extend_from_slice(&[1, 2, 3, 4]);
        h
    }

    /// A final binary frame's header.
    fn header(len: u64) -> Vec<u8> {
        header_with(0x82, len)
    }

    /// Framing past an upgrade request answered 101.
    fn upgraded() -> Framing {
        let mut f = Framing::default();
        assert_eq!(f.scan(HEAD, FREE, MAX, None), Scan::All);
        f.answered(b"HTTP/1.1 101 Switching Protocols\r\n");
        assert_eq!(f.phase, Phase::Frames);
        f
    }

    #[test]
    fn the_head_ends_at_the_first_empty_line_after_a_non_empty_one() {
        for head in [&b"\r\nGET / HTTP/1.1\r\n\r\n"[..], b"GET / HTTP/1.1\n\n", b"GET / HTTP/1.1\r\nA: b\n\r\n"] {
            let mut f = Framing::default();
            let mut bytes = head.to_vec();
            bytes.extend_from_slice(&header(1 << 20));
            assert_eq!(f.scan(&bytes, FREE, MAX, None), Scan::AwaitAnswer(head.len()));
            f.answered(b"HTTP/1.1 101 Switching Protocols\r\n");
            let rest = &bytes[head.len()..];
            assert_eq!(f.scan(rest, FREE, MAX, None), Scan::HoldFrom(rest.len() - 1, 1 << 20));
        }
    }

    #[test]
    fn what_follows_a_head_waits_for_its_answer_and_a_refusal_ends_input() {
        // A request pipelined behind one that is not an upgrade: nothing
        // of it passes, whatever the answer's pieces.
        let mut f = Framing::default();
        let mut bytes = b"GET /nowhere HTTP/1.1\r\nHost: x\r\n\r\n".to_vec();
        let first = bytes.len();
        bytes.extend_from_slice(HEAD);
        bytes.extend_from_slice(&header(1 << 20));
        assert_eq!(f.scan(&bytes, FREE, MAX, None), Scan::AwaitAnswer(first));
        assert_eq!(f.scan(&bytes[first..], FREE, MAX, None), Scan::AwaitAnswer(0));
        f.answered(b"HTTP/1.1 4");
        assert_eq!(f.scan(&bytes[first..], FREE, MAX, None), Scan::AwaitAnswer(0));
        f.answered(b"04 Not Found\r\n");
        assert_eq!(f.phase, Phase::Refused);
        assert_eq!(f.scan(&bytes[first..], FREE, MAX, None), Scan::Refused);
        // A 101 answered before the head ended is no upgrade either.
        let mut f = Framing::default();
        assert_eq!(f.scan(&HEAD[..5], FREE, MAX, None), Scan::All);
        f.answered(b"HTTP/1.1 101 Switching Protocols\r\n");
        assert_eq!(f.scan(&HEAD[5..], FREE, MAX, None), Scan::Refused);
    }

    #[test]
    fn a_large_frames_header_is_held_back_until_charged_small_ones_pass() {
        let mut f = upgraded();
        // Small frames, split anywhere, pass.
        let mut small = header(100);
        small.extend_from_slice(&[b'x'; 100]);
        for piece in small.chunks(3) {
            assert_eq!(f.scan(piece, FREE, MAX, None), Scan::All);
        }
        // A large one stops at its header's last byte, even split.
        let big = header(1 << 20);
        assert_eq!(f.scan(&big[..5], FREE, MAX, None), Scan::All);
        assert_eq!(f.scan(&big[5..], FREE, MAX, None), Scan::HoldFrom(big.len() - 6, 1 << 20));
        // Charged for it (the next message), it passes, with its payload.
        assert_eq!(f.current_message(), 2);
        assert_eq!(f.scan(&big[big.len() - 1..], FREE, MAX, Some(2)), Scan::All);
        assert_eq!(f.scan(&vec![0; 1 << 20], FREE, MAX, None), Scan::All);
        // Past the frame limit the library refuses it on the header: no charge.
        assert_eq!(f.scan(&header(2 << 20), FREE, MAX, None), Scan::All);
    }

    #[test]
    fn the_next_messages_large_header_waits_for_a_charge_of_its_own() {
        let mut f = upgraded();
        // Message 1: a large first fragment, charged for it.
        let mut a = header_with(0x02, 100 << 10);
        a.resize(a.len() + (100 << 10), b'a');
        assert_eq!(f.current_message(), 1);
        assert_eq!(f.scan(&a, FREE, MAX, Some(1)), Scan::All);
        // A ping between its fragments changes nothing.
        let mut ping = header_with(0x89, 4);
        ping.extend_from_slice(b"ping");
        assert_eq!(f.scan(&ping, FREE, MAX, Some(1)), Scan::All);
        // Its final fragment's last bytes, then message 2's 1 MiB header,
        // in one read: the header is held though the connection is charged.
        let mut last = header_with(0x80, 20 << 10);
        last.resize(last.len() + (20 << 10), b'a');
        let mut read = last.clone();
        read.extend_from_slice(&header(1 << 20));
        let hold = read.len() - 1;
        assert_eq!(f.scan(&read, FREE, MAX, Some(1)), Scan::HoldFrom(hold, 1 << 20));
        // Message 1 is over; a charge taken again covers message 2.
        assert_eq!(f.current_message(), 2);
        assert_eq!(f.scan(&read[hold..], FREE, MAX, Some(1)), Scan::HoldFrom(0, 1 << 20));
        assert_eq!(f.scan(&read[hold..], FREE, MAX, Some(2)), Scan::All);
        // A large continuation of message 2 passes under its charge.
        assert_eq!(f.scan(&vec![0; 1 << 20], FREE, MAX, Some(2)), Scan::All);
        assert_eq!(f.current_message(), 3);
        // An empty final frame ends a message too.
        assert_eq!(f.scan(&header_with(0x81, 0), FREE, MAX, None), Scan::All);
        assert_eq!(f.current_message(), 4);
    }
}
