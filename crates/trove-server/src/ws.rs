//! The WebSocket endpoint: protocol v1's semantics as JSON text messages,
//! for browsers and tools (docs/protocol.md, "WebSocket").
//!
//! One task per connection, as on TCP. The upgrade sets every limit
//! explicitly: message size, frame size and the write buffer.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::task::Poll;

use axum::extract::State;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade, close_code};
use axum::response::Response;
use serde_json::{Value, json};
use std::future::Future;
use tokio::net::TcpListener;
use tokio::time::Instant;

use trove_core::{Stamped, WorldId};
use trove_proto::{ErrorCode, WireGame};
use trove_shard::{Completed, Delivery, Producer, SubmitError, Update};

use crate::json::JsonGame;
use crate::{Shared, Subscriptions, poll_complete};

/// Entries per JSON update message.
const JSON_ENTRIES_MAX: usize = 256;
/// The WebSocket library's read buffer per connection.
pub const WS_READ_BUFFER: usize = 16 << 10;

/// How long a closing connection waits to send its last answers and for
/// the peer's Close.
const CLOSE_LINGER: std::time::Duration = std::time::Duration::from_secs(5);

pub(crate) async fn accept_loop<G: WireGame + JsonGame>(shared: Arc<Shared<G>>, listener: TcpListener) {
    let mut stop = shared.shutdown.clone();
    let listener = SlotListener { inner: listener, shared: shared.clone() };
    let app = axum::Router::new().route("/", axum::routing::get(upgrade::<G>)).with_state(shared);
    let _ = axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let _ = stop.wait_for(|s| *s).await;
        })
        .await;
}

async fn upgrade<G: WireGame + JsonGame>(State(shared): State<Arc<Shared<G>>>, ws: WebSocketUpgrade) -> Response {
    let c = &shared.config;
    // The library reserves a frame's announced length (up to
    // `ws_frame_max`) on its header, assembles a message up to
    // `ws_message_max`, and reads in chunks of `read_buffer_size` (128 KiB
    // by default, per connection, idle or not: 16 KiB here).
    ws.max_message_size(c.ws_message_max)
        .max_frame_size(c.ws_frame_max)
        .max_write_buffer_size(c.ws_write_buffer_max)
        .read_buffer_size(WS_READ_BUFFER)
        .on_upgrade(move |socket| async move {
            WsConnection::new(shared).run(socket).await;
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
                    if let Some(slot) = self.shared.connection_slot() {
                        let first = Instant::now() + self.shared.config.handshake_timeout;
                        let quiet = self.shared.config.idle_timeout;
                        let deadline = Box::pin(tokio::time::sleep_until(first));
                        return (Slotted { stream, _slot: slot, quiet, deadline }, addr);
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

/// A WebSocket port's connection: holds its slot, and fails a read that
/// waits longer than the handshake timeout for its first bytes or the idle
/// timeout for later ones (a request that never ends holds nothing long).
struct Slotted<G: WireGame> {
    stream: tokio::net::TcpStream,
    _slot: crate::ConnectionSlot<G>,
    quiet: std::time::Duration,
    deadline: std::pin::Pin<Box<tokio::time::Sleep>>,
}

impl<G: WireGame> tokio::io::AsyncRead for Slotted<G> {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match std::pin::Pin::new(&mut this.stream).poll_read(cx, buf) {
            Poll::Ready(r) => {
                if buf.filled().len() > before {
                    this.deadline.as_mut().reset(Instant::now() + this.quiet);
                }
                Poll::Ready(r)
            }
            Poll::Pending => match this.deadline.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "no bytes within the handshake or idle timeout",
                ))),
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

impl<G: WireGame> tokio::io::AsyncWrite for Slotted<G> {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
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
        std::pin::Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

enum Owed {
    Batch { first_seq: u64, count: u32 },
    Ready(String),
}

struct WsConnection<G: WireGame + JsonGame> {
    shared: Arc<Shared<G>>,
    producer: Option<Producer<G>>,
    /// Held while `producer` is.
    claim: Option<crate::ProducerClaim<G>>,
    outcomes: bool,
    owed: VecDeque<Owed>,
    busy_from: Option<u64>,
    out: Vec<String>,
    subscriptions: Subscriptions<G>,
    deliveries: Vec<Delivery<G>>,
}

fn error_json(code: ErrorCode, message: &str) -> String {
    json!({"type": "error", "code": code.name(), "message": message}).to_string()
}

impl<G: WireGame + JsonGame> WsConnection<G> {
    fn new(shared: Arc<Shared<G>>) -> Self {
        Self {
            shared,
            producer: None,
            claim: None,
            outcomes: true,
            owed: VecDeque::new(),
            busy_from: None,
            out: Vec::new(),
            subscriptions: Subscriptions::new(),
            deliveries: Vec::new(),
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
        let close = match result {
            Ok(()) => None,
            Err((code, message)) => {
                if code != ErrorCode::Internal {
                    self.complete_owed().await;
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
        for m in self.out.drain(..) {
            if !matches!(tokio::time::timeout_at(linger, socket.send(Message::Text(m.into()))).await, Ok(Ok(()))) {
                sent = false;
                break;
            }
        }
        self.subscriptions.close(&self.shared);
        self.claim = None;
        if sent && matches!(tokio::time::timeout_at(linger, socket.send(Message::Close(close))).await, Ok(Ok(()))) {
            // Until the peer's Close (the library answers nothing more), its
            // end of the stream, or the linger.
            while let Ok(Some(Ok(m))) = tokio::time::timeout_at(linger, socket.recv()).await {
                if matches!(m, Message::Close(_)) {
                    break;
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
        loop {
            for m in self.out.drain(..) {
                self.shared.metrics.frames_out.fetch_add(1, Relaxed);
                let send = tokio::time::timeout(config.idle_timeout, socket.send(Message::Text(m.into())));
                send.await
                    .map_err(|_| (ErrorCode::IdleTimeout, String::new()))?
                    .map_err(|_| (ErrorCode::Internal, String::new()))?;
            }
            let in_flight = self.producer.as_ref().map_or(0, Producer::in_flight);
            if stopping && in_flight == 0 {
                return Err((ErrorCode::ShuttingDown, "the server is shutting down".into()));
            }
            let can_read = !stopping && self.owed.len() < config.window_batches;
            let subscribed = self.subscriptions.mailbox();
            let producer = &mut self.producer;
            tokio::select! {
                c = poll_fn(|cx| match producer.as_mut() {
                    Some(p) => poll_complete(p, cx),
                    None => Poll::Pending,
                }), if in_flight > 0 => {
                    self.completed(c.map_err(|reason| (ErrorCode::Internal, reason))?);
                    while let Some(c) = self.producer.as_mut().and_then(Producer::try_complete) {
                        self.completed(c);
                    }
                }
                _ = async { subscribed.as_ref().expect("guarded").ready().await }, if subscribed.is_some() => {
                    self.deliver();
                }
                msg = socket.recv(), if can_read => {
                    idle_deadline = Instant::now() + config.idle_timeout;
                    match msg {
                        None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return Ok(()),
                        Some(Ok(Message::Text(text))) => {
                            self.shared.metrics.frames_in.fetch_add(1, Relaxed);
                            self.shared.metrics.bytes_in.fetch_add(text.len() as u64, Relaxed);
                            self.message(text.as_str()).await?;
                        }
                        Some(Ok(Message::Binary(_))) => {
                            return Err((ErrorCode::Malformed, "messages are JSON text".into()));
                        }
                        Some(Ok(_)) => {} // ping and pong frames: answered by the library
                    }
                }
                _ = tokio::time::sleep_until(idle_deadline), if !stopping && in_flight == 0 => {
                    return Err((ErrorCode::IdleTimeout, format!("no message for {:?}", config.idle_timeout)));
                }
                _ = stop.changed(), if !stopping => stopping = true,
            }
        }
    }

    async fn message(&mut self, text: &str) -> Result<(), (ErrorCode, String)> {
        let malformed = |m: String| (ErrorCode::Malformed, m);
        let v: Value = serde_json::from_str(text).map_err(|e| malformed(format!("not JSON: {e}")))?;
        let kind =
            v.get("type").and_then(Value::as_str).ok_or_else(|| malformed("missing string field `type`".into()))?;
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
                let max = self.shared.engine.config().batch_events_max;
                if list.is_empty() || list.len() > max {
                    self.refuse(ErrorCode::BadBatch, format!("{} events: a batch holds 1..={max}", list.len()));
                    return Ok(());
                }
                let mut events = Vec::with_capacity(list.len());
                for (i, e) in list.iter().enumerate() {
                    match G::event_from_json(e) {
                        Ok(event) => events.push(Stamped { time_us: 0, event }),
                        Err(why) => {
                            self.refuse(ErrorCode::Malformed, format!("events[{i}]: {why}"));
                            return Ok(());
                        }
                    }
                }
                let producer = self.producer.as_mut().expect("started above");
                let first_seq = match v.get("first_seq") {
                    // After a BUSY, implicit numbering would give the next
                    // batch the refused one's numbers and let it overtake:
                    // only an explicit resend clears the refusal.
                    None | Some(Value::Null) if self.busy_from.is_some() => {
                        let from = self.busy_from.unwrap_or(0);
                        self.busy(from, events.len() as u32);
                        return Ok(());
                    }
                    None | Some(Value::Null) => producer.next_seq(),
                    Some(x) => x.as_u64().ok_or_else(|| malformed("`first_seq` must be an integer".into()))?,
                };
                let count = events.len() as u32;
                if first_seq == 0 || first_seq.checked_add(u64::from(count)).is_none() {
                    self.refuse(ErrorCode::BadSequence, format!("sequence {first_seq} + {count} is not valid"));
                    return Ok(());
                }
                if self.busy_from.is_some_and(|from| first_seq > from) {
                    self.busy(first_seq, count);
                    return Ok(());
                }
                self.shared.metrics.events_in.fetch_add(u64::from(count), Relaxed);
                match producer.submit_at(first_seq, &mut events) {
                    Ok(_) => {
                        self.busy_from = None;
                        self.owed.push_back(Owed::Batch { first_seq, count });
                    }
                    Err(SubmitError::Busy) => {
                        self.busy_from = Some(self.busy_from.map_or(first_seq, |f| f.min(first_seq)));
                        self.busy(first_seq, count);
                    }
                    Err(SubmitError::BadSize) => self.refuse(ErrorCode::BadBatch, "refused by the engine".into()),
                    Err(SubmitError::ShuttingDown) => {
                        return Err((ErrorCode::ShuttingDown, "the server is shutting down".into()));
                    }
                    Err(SubmitError::Failed) => {
                        return Err((ErrorCode::Internal, crate::failure_reason(producer)));
                    }
                }
            }
            "subscribe" | "unsubscribe" => {
                let hunt = v
                    .get("hunt")
                    .and_then(Value::as_u64)
                    .and_then(|h| u32::try_from(h).ok())
                    .ok_or_else(|| malformed("`hunt` must be an integer in 0..=4294967295".into()))?;
                if kind == "subscribe" {
                    self.subscribe(hunt);
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
        if id >= trove_shard::ASSIGNED_PRODUCER_IDS && !engine.assigned(id) {
            return Err((
                ErrorCode::Malformed,
                format!("producer id {id}: ids from 2^63 up are assigned by the server (omit it)"),
            ));
        }
        let producer = if id == 0 { engine.producer() } else { engine.producer_with_id(id, 1) };
        let claim =
            self.shared.claim_producer(producer.id()).await.ok_or_else(|| {
                (ErrorCode::ProducerInUse, format!("producer {} is connected elsewhere", producer.id()))
            })?;
        self.out.push(
            json!({"type": "welcome", "version": trove_proto::frame::VERSION, "producer_id": producer.id(),
                "batch_events_max": engine.config().batch_events_max, "outcomes": self.outcomes})
            .to_string(),
        );
        self.producer = Some(producer);
        self.claim = Some(claim);
        Ok(())
    }

    fn subscribe(&mut self, hunt: WorldId) {
        match self.subscriptions.subscribe(&self.shared, hunt) {
            Some(next_seq) => {
                self.out.push(json!({"type": "subscribed", "hunt": hunt, "next_seq": next_seq}).to_string());
            }
            None => {
                let max = self.shared.config.subscriptions_max;
                self.out.push(error_json(ErrorCode::TooManySubscriptions, &format!("at most {max} subscriptions")));
            }
        }
    }

    fn refuse(&mut self, code: ErrorCode, message: String) {
        self.shared.metrics.errors[code as usize].fetch_add(1, Relaxed);
        self.answer(error_json(code, &message));
    }

    fn busy(&mut self, first_seq: u64, count: u32) {
        self.shared.metrics.busy_replies.fetch_add(1, Relaxed);
        self.answer(json!({"type": "busy", "first_seq": first_seq, "count": count, "retry_after_ms": 1}).to_string());
    }

    fn answer(&mut self, text: String) {
        if self.owed.is_empty() {
            self.out.push(text);
        } else {
            self.owed.push_back(Owed::Ready(text));
        }
    }

    fn completed(&mut self, c: Completed<G>) {
        let Some(Owed::Batch { first_seq, count }) = self.owed.pop_front() else {
            unreachable!("ready answers are sent as soon as nothing is owed before them")
        };
        if c.reused.is_empty() {
            self.shared.metrics.events_acked.fetch_add(u64::from(count), Relaxed);
            let waited = c.submitted_at.elapsed().as_nanos() as u64;
            self.shared.metrics.ingest_to_ack_ns.record_n(waited, u64::from(count));
        }
        if !c.reused.is_empty() {
            // Not an ack: the outcomes of those events would be another
            // event's (docs/protocol.md, `sequence_reused`).
            self.shared.metrics.errors[ErrorCode::SequenceReused as usize].fetch_add(1, Relaxed);
            self.out.push(error_json(ErrorCode::SequenceReused, &crate::sequence_reused_message(&c.reused)));
        } else {
            let mut ack = json!({"type": "ack", "first_seq": first_seq, "count": count});
            if self.outcomes {
                ack["outcomes"] = Value::Array(c.outcomes.iter().map(G::outcome_to_json).collect());
            }
            self.out.push(ack.to_string());
        }
        while let Some(Owed::Ready(_)) = self.owed.front() {
            let Some(Owed::Ready(t)) = self.owed.pop_front() else { unreachable!() };
            self.out.push(t);
        }
    }

    fn deliver(&mut self) {
        self.subscriptions.take(&mut self.deliveries);
        for d in self.deliveries.drain(..) {
            match d {
                Delivery::Chunk(chunk) => {
                    // Messages of at most JSON_ENTRIES_MAX entries, so that one
                    // stays far below the write buffer bound.
                    let texts = chunk.encoded_text.get_or_init(|| {
                        chunk
                            .updates
                            .chunks(JSON_ENTRIES_MAX)
                            .enumerate()
                            .map(|(i, piece)| {
                                let entries: Vec<Value> = piece
                                    .iter()
                                    .map(|u| match u {
                                        Update::Applied { event, outcome } => json!({"kind": "applied",
                                    "time_us": event.time_us, "event": G::event_to_json(&event.event),
                                    "outcome": G::outcome_to_json(outcome)}),
                                        Update::Broadcast(b) => {
                                            json!({"kind": "broadcast", "body": G::broadcast_to_json(b)})
                                        }
                                    })
                                    .collect();
                                json!({"type": "update", "hunt": chunk.world,
                            "first_seq": chunk.first_seq + (i * JSON_ENTRIES_MAX) as u64, "entries": entries})
                                .to_string()
                            })
                            .collect()
                    });
                    self.out.extend(texts.iter().cloned());
                    let waited = chunk.ingested_at.elapsed().as_nanos() as u64;
                    self.shared.metrics.ingest_to_update_ns.record_n(waited, chunk.updates.len() as u64);
                }
                Delivery::Gap { world, first_missed, missed } => self.out.push(
                    json!({"type": "gap", "hunt": world, "first_missed": first_missed, "missed": missed}).to_string(),
                ),
            }
        }
    }
}
