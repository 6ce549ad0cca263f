//! Protocol v1 over TCP: one task per connection.
//!
//! The task reads whole frames into one buffer, submits each EVENTS frame
//! as one batch, and answers frames in their order: an ACK when the engine
//! completes the batch, or BUSY or an ERROR at once (queued behind the
//! answers still owed). Per event it only decodes the record.
//!
//! A frame's header is judged alone, before any of its body is buffered
//! (kind, reserved bytes, length against the limit). The buffer then grows
//! with the bytes that arrive, never to the announced length up front: from
//! [`INBUF_BASE`] it doubles, at most to the frame's end, and every byte of
//! capacity beyond the base is drawn from the server-wide budget
//! `unfinished_frame_bytes_max` (waiting, not reading, while it is spent)
//! and given back when the buffer shrinks or the connection closes.

use std::future::poll_fn;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

use trove_core::{Record, Stamped};
use trove_proto::frame::{
    self, ErrorCode, FrameError, HEADER_LEN, HELLO_BODY_MAX, Hello, Kind, MAGIC, Sizes, VERSION, VERSION_1, VERSIONS,
    Welcome, hello_flags,
};
use trove_proto::{Frame, WireGame};
use trove_shard::{Completed, Delivery, Producer, SubscribeMode};

use crate::conn_log::{self, ConnInfo, Counts, Listener, RefusedFor};
use crate::session::{Admission, Answer, Batch, Refusal, Session};
use crate::{Arrival, Shared, Staged, Subscriptions, json::JsonGame, poll_complete};

/// Input buffer capacity every connection has without drawing on the
/// budget: room for small frames and many of them per read.
pub const INBUF_BASE: usize = 16 << 10;

/// The most budget one connection can hold: a buffer of one largest frame.
pub(crate) fn frame_buffer_bytes_max(frame_body_max: u32) -> usize {
    HEADER_LEN + frame_body_max as usize
}

pub(crate) async fn accept_loop<G: WireGame + JsonGame>(shared: Arc<Shared<G>>, listener: TcpListener) {
    let mut stop = shared.shutdown.clone();
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stop.changed() => return,
        };
        let Ok((stream, peer)) = accepted else {
            // Out of file descriptors, say: back off instead of spinning.
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            continue;
        };
        let slot = match shared.connection_slot(Listener::Tcp, peer) {
            Ok(slot) => slot,
            Err(why) => {
                // A TLS port speaks only TLS: the peer sees the close alone.
                if shared.config.tls.is_none() {
                    refuse_full(&shared, &stream, &shared.refusal_message(why));
                }
                shared.refusals.refused(Listener::Tcp, peer, None, why);
                continue;
            }
        };
        let shared = shared.clone();
        crate::task::spawn_named(&format!("tcp conn {peer}"), async move {
            let _ = stream.set_nodelay(true);
            // The TLS handshake and HELLO share one deadline.
            let deadline = Instant::now() + shared.config.handshake_timeout;
            let info = slot.info;
            match shared.config.tls.clone() {
                // Plain TCP: the stream's own halves, no dispatch.
                None => {
                    let (rd, wr) = stream.into_split();
                    Connection::new(shared, info, deadline).run(rd, wr).await;
                }
                Some(tls) => match tokio::time::timeout_at(deadline, tls.acceptor().accept(stream)).await {
                    Ok(Ok(stream)) => {
                        let (rd, wr) = tokio::io::split(stream);
                        Connection::new(shared, info, deadline).run(rd, wr).await;
                    }
                    // Garbage, a plaintext client, an untrusting peer, or
                    // no handshake in time: closed (rustls sent its alert).
                    Ok(Err(_)) | Err(_) => {
                        shared.metrics.tls_handshakes_failed.fetch_add(1, Relaxed);
                        shared.refusals.refused(Listener::Tcp, info.peer, None, RefusedFor::ClosedBeforeHandshake);
                    }
                },
            }
            drop(slot);
        });
    }
}

/// Refuses a connection past `connections_max` (or its address's
/// `connections_per_address_max`) from the accept loop itself, with no
/// task: one non-blocking write of the typed ERROR (a new socket's send
/// buffer takes it whole; if not, the peer sees the close alone), then
/// what the peer already sent (its HELLO, say) is read and dropped,
/// without waiting, so that the close is a FIN, not a reset that could
/// discard the ERROR; then the socket closes as it is dropped. A flood
/// of refused connections costs the loop a write and a few reads each,
/// nothing that outlives it.
fn refuse_full<G: WireGame>(shared: &Shared<G>, stream: &TcpStream, message: &str) {
    let mut out = Vec::with_capacity(HEADER_LEN + 128);
    frame::encode_error(&mut out, ErrorCode::TooManyConnections, message);
    shared.metrics.errors[ErrorCode::TooManyConnections as usize].fetch_add(1, Relaxed);
    let _ = stream.try_write(&out);
    drain_refused(stream);
}

/// Reads and drops what a refused peer already sent, without waiting, so
/// that the close is a FIN, not a reset that could discard the answer.
pub(crate) fn drain_refused(stream: &TcpStream) {
    let mut sink = [0u8; REFUSED_DRAIN_CHUNK];
    for _ in 0..REFUSED_DRAIN_READS_MAX {
        match stream.try_read(&mut sink) {
            Ok(n) if n > 0 => {}
            // The end, nothing more yet (WouldBlock), or an error.
            _ => break,
        }
    }
}

/// What a refused connection's drain reads at a time, on the accept
/// loop's stack.
const REFUSED_DRAIN_CHUNK: usize = 1024;
/// At most this many reads per refused connection (64 KiB): a peer that
/// keeps sending still gets its reset, and the accept loop moves on.
const REFUSED_DRAIN_READS_MAX: usize = 64;

/// Why a connection ends early.
enum Close {
    /// Tell the peer why, then close.
    Error(ErrorCode, String),
    /// The socket failed; nothing more can be said.
    Io,
}

impl From<FrameError> for Close {
    fn from(e: FrameError) -> Self {
        Close::Error(e.code(), e.to_string())
    }
}

struct Connection<G: WireGame> {
    shared: Arc<Shared<G>>,
    /// Who it is, for its log lines.
    info: ConnInfo,
    /// What it carried, for its close line.
    counts: Counts,
    /// Its producer id, once its HELLO is answered (then it is open).
    producer_id: Option<u64>,
    /// Frames as they arrive; its capacity beyond [`INBUF_BASE`] is
    /// `charged` to the server's unfinished-frame budget.
    inbuf: Vec<u8>,
    /// Bytes of the budget this connection holds: the whole length (less
    /// the base) of the large frame being received, or 0. Covers
    /// `inbuf.capacity() - INBUF_BASE`.
    charged: usize,
    /// Bytes of `inbuf` already consumed.
    consumed: usize,
    /// Bytes to write: answers and updates, written whole (one write while
    /// the socket takes them) before anything more is read or taken from
    /// the mailbox. A peer that does not read leaves its updates in the
    /// mailbox, which is bounded, so this holds at most one take.
    out: Vec<u8>,
    /// Bytes of `out` that are updates (in the `update_bytes_queued` gauge).
    out_update_bytes: usize,
    /// Answers owed in frame order, and the BUSY rule.
    session: Session,
    outcomes: bool,
    events: Vec<Stamped<G::Event>>,
    subscriptions: Subscriptions<G>,
    deliveries: Vec<Delivery<G>>,
    /// When the last read returned: the frames it completed were read then.
    read_at: std::time::Instant,
    /// Batches answered in `out`, for the stage latencies once it is written.
    staged: Vec<Staged>,
    /// Cluster mode: a batch was refused `not_owner`; nothing more is read,
    /// the answers owed before it go out, then this ERROR, and the
    /// connection closes.
    closing: Option<(ErrorCode, String)>,
    /// With authentication on: the token this connection presented, and
    /// its slot in the token's connection quota.
    auth: Option<(crate::auth::Session, crate::auth::ConnectionGrant)>,
    /// HELLO must be in by then (from the accept: a TLS handshake counts).
    handshake_deadline: Instant,
}

impl<G: WireGame> Connection<G> {
    fn new(shared: Arc<Shared<G>>, info: ConnInfo, handshake_deadline: Instant) -> Self {
        Self {
            session: Session::new(shared.config.window_batches),
            shared,
            info,
            counts: Counts::default(),
            producer_id: None,
            inbuf: Vec::with_capacity(INBUF_BASE),
            charged: 0,
            consumed: 0,
            // Grows with the answers owed; an idle connection holds none.
            out: Vec::new(),
            out_update_bytes: 0,
            outcomes: false,
            events: Vec::new(),
            subscriptions: Subscriptions::new(),
            deliveries: Vec::new(),
            read_at: std::time::Instant::now(),
            staged: Vec::new(),
            closing: None,
            auth: None,
            handshake_deadline,
        }
    }

    fn sizes() -> Sizes {
        Sizes { record: G::Event::SIZE, outcome: G::OUTCOME_SIZE }
    }

    /// Serves the connection on its read and write halves: a plain
    /// `TcpStream`'s own, or a TLS stream's (monomorphised, so the plain
    /// path is the same code it was before TLS).
    async fn run<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(mut self, mut rd: R, mut wr: W) {
        let result = self.serve(&mut rd, &mut wr).await;
        let reason = match &result {
            Ok(()) => "peer_closed",
            Err(Close::Io) => "io_error",
            Err(Close::Error(code, _)) => code.name(),
        };
        if let Err(Close::Error(code, message)) = &result {
            frame::encode_error(&mut self.out, *code, message);
            self.shared.metrics.errors[*code as usize].fetch_add(1, Relaxed);
        }
        if !self.out.is_empty() {
            let write = async {
                wr.write_all(&self.out).await?;
                wr.flush().await
            };
            if matches!(tokio::time::timeout(std::time::Duration::from_secs(1), write).await, Ok(Ok(()))) {
                self.counts.bytes_out += self.out.len() as u64;
            }
        }
        let _ = wr.shutdown().await;
        match (self.producer_id, result) {
            (Some(producer), _) => {
                let principal = self.auth.as_ref().map(|(s, _)| s.principal.name.as_str());
                conn_log::closed(&self.info, reason, &self.counts, Some(producer), principal)
            }
            // Never opened: its handshake failed.
            (None, Err(Close::Error(code, _))) => {
                self.shared.refusals.refused(
                    Listener::Tcp,
                    self.info.peer,
                    Some(self.info.id),
                    RefusedFor::Handshake(code),
                );
            }
            (None, _) => self.shared.refusals.refused(
                Listener::Tcp,
                self.info.peer,
                Some(self.info.id),
                RefusedFor::ClosedBeforeHandshake,
            ),
        }
        self.shared.metrics.updates_written(&mut self.out_update_bytes);
        self.unsubscribe_all();
        // What the buffer held goes back to the budget now, not after the
        // linger below (which reads into the base capacity alone).
        self.consumed = 0;
        self.inbuf.clear();
        self.release_inbuf();
        self.out = Vec::new();
        // Closing a socket with unread input makes the kernel reset it and
        // drop output not yet sent: the answers above could be lost. Read
        // and discard until the peer closes (it does on our FIN), briefly.
        let linger = Instant::now() + std::time::Duration::from_secs(1);
        loop {
            self.inbuf.clear();
            match tokio::time::timeout_at(linger, rd.read_buf(&mut self.inbuf)).await {
                Ok(Ok(n)) if n > 0 => {}
                _ => break,
            }
        }
    }

    /// Moves the buffered bytes into a buffer of exactly `capacity`
    /// (which the budget already covers).
    fn resize_inbuf(&mut self, capacity: usize) {
        assert!(capacity >= self.inbuf.len() && capacity >= INBUF_BASE);
        assert!(capacity - INBUF_BASE <= self.charged, "capacity beyond the base is budgeted");
        if capacity == self.inbuf.capacity() {
            return;
        }
        let mut fresh = Vec::with_capacity(capacity);
        fresh.extend_from_slice(&self.inbuf);
        self.inbuf = fresh;
    }

    /// Shrinks the buffer back to its base and gives the budget back.
    fn release_inbuf(&mut self) {
        self.resize_inbuf(INBUF_BASE);
        self.shared.frame_budget.give_back(std::mem::take(&mut self.charged));
    }

    /// Where the frame at the front of the buffer ends, once its header is
    /// in. The header is judged here, before its body is read: a kind this
    /// connection never accepts is refused on its header alone.
    fn front_frame_end(&self, max_body: u32, handshake: bool) -> Result<Option<usize>, Close> {
        let Some(head) = self.inbuf.get(..HEADER_LEN) else { return Ok(None) };
        match Kind::from_u8(head[4]) {
            Some(kind) if !kind.from_client() => {
                return Err(Close::Error(ErrorCode::UnknownFrameKind, format!("{kind:?} is not a client frame")));
            }
            Some(kind) if handshake && kind != Kind::Hello => {
                return Err(Close::Error(ErrorCode::HandshakeRequired, format!("expected HELLO, got {kind:?}")));
            }
            Some(Kind::Hello) if !handshake => {
                return Err(Close::Error(ErrorCode::HandshakeRequired, "HELLO came twice".into()));
            }
            _ => {}
        }
        // Unknown kinds, reserved bytes and the length limit.
        frame::split(head, max_body)?;
        let len = u32::from_le_bytes(head[..4].try_into().expect("4 bytes"));
        Ok(Some(HEADER_LEN + len as usize))
    }

    fn unsubscribe_all(&mut self) {
        self.subscriptions.close(&self.shared);
    }

    /// Reads what the buffer has room for, making room first. The caller
    /// has checked that no whole frame is buffered, so all the buffer holds
    /// is the start of the frame at its front.
    ///
    /// A frame longer than the base takes its whole length of the budget
    /// when its first [`INBUF_BASE`] bytes are in (waiting for it, holding
    /// none, if it is spent), and the buffer then doubles as its bytes
    /// arrive, up to the frame's end and never past it. So a connection
    /// never waits while it holds budget: every holder can finish its frame
    /// with its peer's bytes alone, and the budget cannot deadlock. Once the
    /// frame is processed, the buffer is empty; it shrinks back to the base
    /// and the budget goes back.
    async fn read_some(
        &mut self,
        rd: &mut (impl AsyncRead + Unpin),
        max_body: u32,
        handshake: bool,
    ) -> Result<usize, Close> {
        if self.consumed > 0 {
            self.inbuf.drain(..self.consumed);
            self.consumed = 0;
        }
        let frame_end = self.front_frame_end(max_body, handshake)?;
        if self.charged > 0 && frame_end.is_none_or(|e| e <= INBUF_BASE) {
            self.release_inbuf();
        }
        let len = self.inbuf.len();
        if len == self.inbuf.capacity() {
            let end = frame_end.expect("a buffer of INBUF_BASE is full only inside a frame");
            assert!(end > len, "a whole frame is buffered: it is processed, not read past");
            if self.charged == 0 {
                self.shared.frame_budget.take(end - INBUF_BASE).await;
                self.charged = end - INBUF_BASE;
            }
            assert_eq!(self.charged, end - INBUF_BASE, "one frame's reservation at a time");
            self.resize_inbuf((len * 2).min(end));
        }
        assert!(self.inbuf.capacity() > self.inbuf.len(), "a read needs room");
        let n = rd.read_buf(&mut self.inbuf).await.map_err(|_| Close::Io)?;
        self.read_at = std::time::Instant::now();
        debug_assert!(self.charged == 0 || self.inbuf.len() <= frame_end.unwrap_or(0), "not past a large frame");
        self.shared.metrics.bytes_in.fetch_add(n as u64, Relaxed);
        self.counts.bytes_in += n as u64;
        Ok(n)
    }

    async fn handshake(&mut self, rd: &mut (impl AsyncRead + Unpin)) -> Result<Hello, Close> {
        loop {
            self.front_frame_end(HELLO_BODY_MAX, true)?;
            if let Some((h, total)) = frame::split(&self.inbuf, HELLO_BODY_MAX)? {
                debug_assert_eq!(h.kind, Kind::Hello, "judged on its header");
                let body = &self.inbuf[HEADER_LEN..total];
                if body.len() >= MAGIC.len() && body[..MAGIC.len()] != MAGIC {
                    return Err(Close::Error(ErrorCode::BadMagic, "HELLO does not start with the trove magic".into()));
                }
                let Frame::Hello(hello) = frame::decode(h, body, Self::sizes())? else { unreachable!("kind checked") };
                self.consumed = total;
                self.shared.metrics.frames_in.fetch_add(1, Relaxed);
                self.counts.frames_in += 1;
                if !VERSIONS.contains(&hello.version) {
                    return Err(Close::Error(
                        ErrorCode::UnsupportedVersion,
                        format!(
                            "version {} is not supported; this server speaks {VERSION_1} and {VERSION}",
                            hello.version
                        ),
                    ));
                }
                return Ok(hello);
            }
            if self.read_some(rd, HELLO_BODY_MAX, true).await? == 0 {
                return Err(Close::Io);
            }
        }
    }

    async fn serve(
        &mut self,
        rd: &mut (impl AsyncRead + Unpin),
        wr: &mut (impl AsyncWrite + Unpin),
    ) -> Result<(), Close> {
        let config = self.shared.config.clone();
        let hello = match tokio::time::timeout_at(self.handshake_deadline, self.handshake(rd)).await {
            Ok(h) => h?,
            Err(_) => return Err(Close::Error(ErrorCode::HandshakeTimeout, "no HELLO in time".into())),
        };
        if let Some(auth) = &self.shared.config.auth {
            // Version 1 carries no token: refused as a missing one.
            let session = auth.authenticate(hello.token.as_ref()).map_err(refused)?;
            let grant = auth.connect(&session).map_err(refused)?;
            self.auth = Some((session, grant));
        }
        let engine = self.shared.engine.clone();
        if let Some(reason) = engine.failure() {
            // Refused at the handshake, so that a client counts it as a
            // failed connection attempt rather than reconnecting forever.
            return Err(Close::Error(ErrorCode::Internal, reason.to_string()));
        }
        // A role that may not produce never takes a client-chosen producer
        // id (it could lock the id's owner out with `producer_in_use`): it
        // is given a server-assigned one, as for 0.
        let reads_only = self.auth.as_ref().is_some_and(|(s, _)| !s.principal.role.produces());
        let mut producer = match hello.producer_id {
            _ if reads_only => engine.producer(),
            0 => engine.producer(),
            // Any other id continues its producer, one this server named
            // (in this run or an earlier one: 2^63 and up) or one the
            // producer chose.
            id => engine.producer_with_id(id, 1),
        };
        // A producer id belongs to the token that first used it: another
        // token cannot acknowledge or replay its sequence space.
        // Held while connected: a held binding is never evicted.
        let _binding = match (&self.shared.config.auth, &self.auth) {
            (Some(auth), Some((session, _))) if session.principal.role.produces() => {
                Some(auth.bind_producer(session, producer.id()).map_err(refused)?)
            }
            _ => None,
        };
        // A reload wakes the connection to check its token at once: a
        // passive subscriber is not left receiving what it may no longer.
        let mut auth_changes = self.shared.config.auth.as_ref().map(|a| a.changes());
        // A reload between the HELLO's check and the line above.
        self.reauthorize();
        let Some(_claim) = self.shared.claim_producer(producer.id()).await else {
            return Err(Close::Error(
                ErrorCode::ProducerInUse,
                format!("producer {} is connected elsewhere", producer.id()),
            ));
        };
        self.outcomes = hello.flags & hello_flags::OUTCOMES != 0;
        let batch_events_max = engine.config().batch_events_max.min(
            ((config.frame_body_max as usize - frame::EVENTS_HEAD_LEN) / G::Event::SIZE)
                .min((config.frame_body_max as usize - frame::ACK_HEAD_LEN) / G::OUTCOME_SIZE),
        );
        frame::encode_welcome(
            &mut self.out,
            &Welcome {
                // The version the client spoke.
                version: hello.version,
                flags: hello.flags & hello_flags::KNOWN,
                producer_id: producer.id(),
                frame_body_max: config.frame_body_max,
                batch_events_max: batch_events_max as u32,
                record_size: G::Event::SIZE as u16,
                outcome_size: G::OUTCOME_SIZE as u16,
            },
        );
        self.flush(wr).await?;
        self.producer_id = Some(producer.id());
        let principal = self.auth.as_ref().map(|(s, _)| s.principal.name.as_str());
        conn_log::opened(&self.info, self.producer_id, principal);

        let mut stop = self.shared.shutdown.clone();
        let mut stopping = *stop.borrow();
        let mut eof = false;
        let mut idle_deadline = Instant::now() + config.idle_timeout;
        loop {
            // Frames already buffered first: a read may bring many.
            if !stopping {
                let before = self.consumed;
                self.process(&mut producer, batch_events_max)?;
                if self.consumed != before {
                    idle_deadline = Instant::now() + config.idle_timeout;
                }
            }
            self.flush(wr).await?;
            if let Some(reason) = producer.failure() {
                // The journal failed: what completed before is sent, then
                // the connection closes with the reason. Nothing more will
                // be acknowledged here; a restarted server recovers.
                let reason = reason.to_string();
                while let Some(c) = producer.try_complete() {
                    self.completed(c);
                }
                self.flush(wr).await?;
                return Err(Close::Error(ErrorCode::Internal, reason));
            }
            let in_flight = producer.in_flight();
            if in_flight == 0
                && let Some((code, message)) = self.closing.take()
            {
                // The answers owed before the refused batch are out.
                return Err(Close::Error(code, message));
            }
            if (eof || stopping) && in_flight == 0 {
                assert_eq!(self.session.owed(), 0, "no batch in flight: every answer owed went out");
                if stopping && !eof {
                    return Err(Close::Error(ErrorCode::ShuttingDown, "the server is shutting down".into()));
                }
                return Ok(());
            }
            // Answers owed (batches in the engine and refusals queued
            // behind them) bound what is read: a flood of refused frames
            // cannot grow `owed` while a batch waits for its durability.
            let can_read =
                !eof && !stopping && self.closing.is_none() && self.session.window_open() && !self.frame_buffered();
            let subscribed = self.subscriptions.mailbox();
            // Not biased: a busy subscription must not starve reading, the
            // idle timer or shutdown.
            tokio::select! {
                c = poll_fn(|cx| poll_complete(&mut producer, cx)), if in_flight > 0 => {
                    let c = c.map_err(|lost| {
                        let (code, message) = self.shared.lost(lost);
                        Close::Error(code, message)
                    })?;
                    self.completed(c);
                    while let Some(c) = producer.try_complete() {
                        self.completed(c);
                    }
                }
                _ = async { subscribed.as_ref().expect("guarded").ready().await }, if subscribed.is_some() => {
                    self.deliver();
                }
                n = self.read_some(rd, config.frame_body_max, false), if can_read => {
                    if n? == 0 {
                        eof = true;
                    }
                }
                _ = tokio::time::sleep_until(idle_deadline), if !eof && !stopping && in_flight == 0 => {
                    return Err(Close::Error(ErrorCode::IdleTimeout, format!("no frame for {:?}", config.idle_timeout)));
                }
                _ = stop.changed(), if !stopping => {
                    stopping = true;
                }
                changed = async { auth_changes.as_mut().expect("guarded").changed().await },
                    if auth_changes.is_some() && self.closing.is_none() =>
                {
                    if changed.is_err() {
                        auth_changes = None;
                    }
                    self.reauthorize();
                }
            }
        }
    }

    /// Checks the token again after a reload. Removed: refused
    /// `unauthorized` (its subscriptions end now; the answers owed go out,
    /// then the ERROR, then the connection closes). Still there: its new
    /// role and ranges apply, and each subscription they no longer allow
    /// ends with UNSUBSCRIBED (after the updates already queued for it).
    fn reauthorize(&mut self) {
        let (Some(auth), Some((session, _))) = (&self.shared.config.auth, &mut self.auth) else { return };
        match auth.recheck_moved(session) {
            Ok(false) => {}
            Ok(true) => {
                let p = session.principal.clone();
                let revoked = p.revoked(self.subscriptions.hunts());
                if revoked.is_empty() {
                    return;
                }
                for &hunt in &revoked {
                    self.subscriptions.unsubscribe(&self.shared, hunt);
                }
                // What was queued for them, and a gap their ends leave, go
                // out before UNSUBSCRIBED (nothing of a hunt after it).
                self.deliver();
                for hunt in revoked {
                    frame::encode_u32_frame(&mut self.out, Kind::Unsubscribed, hunt);
                }
            }
            Err(r) => {
                self.unsubscribe_all();
                self.closing = Some((r.code(), r.message));
            }
        }
    }

    /// A whole frame is buffered but was not processed (the window is full).
    fn frame_buffered(&self) -> bool {
        matches!(frame::split(&self.inbuf[self.consumed..], self.shared.config.frame_body_max), Ok(Some(_)))
    }

    async fn flush(&mut self, wr: &mut (impl AsyncWrite + Unpin)) -> Result<(), Close> {
        if self.out.is_empty() {
            return Ok(());
        }
        // A peer that stops reading (or vanished) cannot hold the task, its
        // connection slot and its producer claim past the idle timeout.
        // `flush` sends what a TLS stream buffered (a no-op on TCP).
        let write = async {
            wr.write_all(&self.out).await?;
            wr.flush().await
        };
        let write = tokio::time::timeout(self.shared.config.idle_timeout, write);
        write.await.map_err(|_| Close::Io)?.map_err(|_| Close::Io)?;
        self.shared.metrics.bytes_out.fetch_add(self.out.len() as u64, Relaxed);
        self.counts.bytes_out += self.out.len() as u64;
        self.shared.metrics.updates_written(&mut self.out_update_bytes);
        self.out.clear();
        if !self.staged.is_empty() {
            self.shared.metrics.record_stages(self.staged.drain(..), std::time::Instant::now());
        }
        Ok(())
    }

    /// Handles the whole frames buffered, while the window has room.
    fn process(&mut self, producer: &mut Producer<G>, batch_events_max: usize) -> Result<(), Close> {
        let max = self.shared.config.frame_body_max;
        while self.session.window_open() && self.closing.is_none() {
            let Some((h, total)) = frame::split(&self.inbuf[self.consumed..], max)? else { return Ok(()) };
            let start = self.consumed;
            self.consumed += total;
            self.shared.metrics.frames_in.fetch_add(1, Relaxed);
            self.counts.frames_in += 1;
            if !h.kind.from_client() {
                // A frame shorter than the bytes of one read comes whole.
                return Err(Close::Error(ErrorCode::UnknownFrameKind, format!("{:?} is not a client frame", h.kind)));
            }
            let inbuf = std::mem::take(&mut self.inbuf);
            let result = match frame::decode(h, &inbuf[start + HEADER_LEN..start + total], Self::sizes()) {
                Ok(f) => self.handle(f, producer, batch_events_max),
                Err(e) => Err(e.into()),
            };
            self.inbuf = inbuf;
            result?;
        }
        Ok(())
    }

    fn handle(&mut self, f: Frame<'_>, producer: &mut Producer<G>, batch_events_max: usize) -> Result<(), Close> {
        // A reload not yet seen by the wakeup in the connection loop: the
        // same check before this frame (removed: the answers owed go out,
        // then the ERROR, then the connection closes).
        if self.auth.is_some() {
            self.reauthorize();
            if self.closing.is_some() {
                return Ok(());
            }
        }
        match f {
            Frame::Hello(_) => Err(Close::Error(ErrorCode::HandshakeRequired, "HELLO came twice".into())),
            Frame::Events { first_seq, count, records } => {
                self.events_frame(producer, first_seq, count, records, batch_events_max);
                Ok(())
            }
            Frame::Subscribe { hunt, broadcasts_only } => {
                if let (Some(auth), Some((session, _))) = (&self.shared.config.auth, &mut self.auth)
                    && let Err(r) = auth.admit_subscribe(session, hunt)
                {
                    self.shared.metrics.errors[r.code() as usize].fetch_add(1, Relaxed);
                    frame::encode_error(&mut self.out, r.code(), &r.message);
                    return Ok(());
                }
                // Straight to `out`, refusal included: subscription answers
                // keep their order among themselves, not behind batches, and
                // SUBSCRIBED goes out before any update (written after `out`).
                let mode = if broadcasts_only { SubscribeMode::BroadcastsOnly } else { SubscribeMode::Full };
                match self.subscriptions.subscribe(&self.shared, hunt, mode) {
                    Some(next_seq) => frame::encode_subscribed(&mut self.out, hunt, next_seq),
                    None => frame::encode_error(
                        &mut self.out,
                        ErrorCode::TooManySubscriptions,
                        &format!("at most {} subscriptions per connection", self.shared.config.subscriptions_max),
                    ),
                }
                Ok(())
            }
            Frame::Unsubscribe { hunt } => {
                self.subscriptions.unsubscribe(&self.shared, hunt);
                // Updates already queued still go out before UNSUBSCRIBED.
                self.deliver();
                frame::encode_u32_frame(&mut self.out, Kind::Unsubscribed, hunt);
                Ok(())
            }
            Frame::Ping { nonce } => {
                frame::encode_u64_frame(&mut self.out, Kind::Pong, nonce);
                Ok(())
            }
            _ => unreachable!("server frames are refused before decoding"),
        }
    }

    fn events_frame(
        &mut self,
        producer: &mut Producer<G>,
        first_seq: u64,
        count: u32,
        records: &[u8],
        batch_events_max: usize,
    ) {
        let checked = Session::check_count(count as usize, batch_events_max)
            .and_then(|_| self.session.check_sequence(first_seq, count));
        if let Err(refusal) = checked {
            return self.refuse(refusal);
        }
        self.events.clear();
        self.events
            .extend(records.chunks_exact(G::Event::SIZE).map(|r| Stamped { time_us: 0, event: G::Event::decode(r) }));
        if let (Some(auth), Some((session, _))) = (&self.shared.config.auth, &mut self.auth) {
            // Before anything of the batch is applied: its role, every
            // event's hunt, its rate.
            let hunts = self.events.iter().map(|e| G::world_of(&e.event));
            let deletes = self.events.iter().any(|e| G::deletes_world(&e.event));
            match auth.admit_events(session, hunts, deletes, count, std::time::Instant::now()) {
                Ok(None) => {}
                Ok(Some(retry_after_ms)) => return self.refuse(Refusal::Busy { first_seq, count, retry_after_ms }),
                Err(r) if r.code().closes() => {
                    self.closing = Some((r.code(), r.message));
                    return;
                }
                Err(r) => return self.refuse(Refusal::error(r.code(), r.message)),
            }
        }
        self.shared.metrics.events_in.fetch_add(u64::from(count), Relaxed);
        self.counts.events_in += u64::from(count);
        let arrival = Arrival { read: self.read_at, decoded: std::time::Instant::now() };
        let submitted = producer.submit_at(first_seq, &mut self.events).map(drop);
        match self.session.submitted(Batch { first_seq, count, arrival }, submitted) {
            Admission::Owed => {}
            Admission::Refused(refusal) => self.refuse(refusal),
            Admission::ShuttingDown => {
                self.refuse(Refusal::error(ErrorCode::ShuttingDown, "the server is shutting down".into()));
            }
            // Not accepted; the connection loop closes the connection with
            // the failure's reason once what was acknowledged is sent.
            Admission::Failed => {}
            Admission::NotOwner { shard } => self.closing = Some(self.shared.not_owner(shard)),
        }
    }

    /// Sends a refusal now, or after the batches still owed before it.
    fn refuse(&mut self, refusal: Refusal) {
        if let Some(refusal) = self.session.answer(refusal) {
            encode_refusal(&self.shared.metrics, &mut self.out, &refusal);
        }
    }

    fn completed(&mut self, c: Completed<G>) {
        let metrics = &self.shared.metrics;
        for answer in self.session.completed(&c.reused) {
            match answer {
                Answer::Ack(batch) => {
                    crate::record_ack(metrics, &mut self.staged, &batch, &c);
                    encode_ack::<G>(metrics, &mut self.out, &batch, self.outcomes.then_some(&c.outcomes[..]));
                }
                Answer::Refusal(refusal) => encode_refusal(metrics, &mut self.out, &refusal),
            }
        }
    }

    /// Moves the mailbox's deliveries into `out` (all of them: one wakeup,
    /// one write). Each chunk is encoded once, by the first connection
    /// that sends it, and copied by the others.
    fn deliver(&mut self) {
        self.subscriptions.take(&mut self.deliveries);
        if self.deliveries.is_empty() {
            return;
        }
        let max = self.shared.config.frame_body_max;
        let before = self.out.len();
        let mut chunks = 0;
        // One clock read per take, not per chunk.
        let now = std::time::Instant::now();
        let mut ending = crate::Ending::default();
        loop {
            self.shared.metrics.frames_out.fetch_add(self.deliveries.len() as u64, Relaxed);
            for d in self.deliveries.drain(..) {
                match ending.look(d) {
                    crate::Sent::Chunk(chunk) => {
                        let bytes = chunk.encoded.get_or_init(|| {
                            self.shared.metrics.update_encodings[0].fetch_add(1, Relaxed);
                            encode_chunk::<G>(&chunk, max)
                        });
                        self.out.extend_from_slice(bytes);
                        chunks += 1;
                        let waited = now.saturating_duration_since(chunk.ingested_at).as_nanos() as u64;
                        self.shared.metrics.ingest_to_update_ns.record_n(waited, chunk.updates.len() as u64);
                    }
                    crate::Sent::Gap { world, first_missed, missed } => {
                        frame::encode_gap(&mut self.out, world, first_missed, missed);
                    }
                    crate::Sent::Skip => {}
                }
            }
            // A world that ended (a deleted hunt): its subscription ends
            // with an unasked UNSUBSCRIBED after its last entry. Once the
            // hub has taken it off the list, nothing more of the world
            // reaches the mailbox; what did before is skipped, in one more
            // round.
            let ended = ending.take_pending();
            if ended.is_empty() {
                break;
            }
            for hunt in ended {
                self.subscriptions.unsubscribe(&self.shared, hunt);
                frame::encode_u32_frame(&mut self.out, Kind::Unsubscribed, hunt);
            }
            self.subscriptions.take(&mut self.deliveries);
        }
        // Once per take: the counter's cache line is every worker's.
        if chunks > 0 {
            self.shared.metrics.update_chunks_sent.fetch_add(chunks, Relaxed);
        }
        let added = self.out.len() - before;
        self.out_update_bytes += added;
        self.shared.metrics.updates_queued(added, self.out_update_bytes);
    }
}

/// An ACK frame, with the batch's outcomes when the producer asked for
/// them, counted as sent.
fn encode_ack<G: WireGame>(
    metrics: &crate::ServerMetrics,
    out: &mut Vec<u8>,
    batch: &Batch,
    outcomes: Option<&[G::Outcome]>,
) {
    metrics.frames_out.fetch_add(1, Relaxed);
    let Some(outcomes) = outcomes else {
        return frame::encode_ack(out, batch.first_seq, batch.count, None);
    };
    let s = frame::begin(out, Kind::Ack, frame::ACK_WITH_OUTCOMES);
    out.extend_from_slice(&batch.first_seq.to_le_bytes());
    out.extend_from_slice(&batch.count.to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    trove_proto::wire::encode_outcomes::<G>(outcomes, out);
    frame::end(out, s);
}

/// A refusal as its frame (BUSY or ERROR), counted as sent.
/// An authentication refusal at the handshake: the connection closes.
fn refused(r: crate::auth::Refused) -> Close {
    Close::Error(r.code(), r.message)
}

fn encode_refusal(metrics: &crate::ServerMetrics, out: &mut Vec<u8>, refusal: &Refusal) {
    metrics.frames_out.fetch_add(1, Relaxed);
    match refusal {
        Refusal::Busy { first_seq, count, retry_after_ms } => {
            metrics.busy_replies.fetch_add(1, Relaxed);
            frame::encode_busy(out, *first_seq, *count, *retry_after_ms);
        }
        Refusal::Error { code, message } => {
            metrics.errors[*code as usize].fetch_add(1, Relaxed);
            frame::encode_error(out, *code, message);
        }
    }
}

impl<G: WireGame> Drop for Connection<G> {
    fn drop(&mut self) {
        // A task dropped mid-read (the runtime stopping) gives back too.
        self.shared.frame_budget.give_back(std::mem::take(&mut self.charged));
    }
}

/// A chunk as UPDATE frames of at most `max` body bytes each.
pub fn encode_chunk<G: WireGame>(chunk: &trove_shard::Chunk<G>, max: u32) -> Vec<u8> {
    // Entries are far below this; a frame closes when one more might not fit.
    const ENTRY_MAX: usize = 4096;
    let mut out = Vec::with_capacity(chunk.updates.len() * (8 + trove_proto::wire::applied_len::<G>()) + 64);
    let mut start = frame::begin_update(&mut out, chunk.world, chunk.first_seq);
    let mut n = 0u32;
    for (i, u) in chunk.updates.iter().enumerate() {
        if n > 0 && out.len() - start - HEADER_LEN + ENTRY_MAX > max as usize {
            frame::end_update(&mut out, start, n);
            start = frame::begin_update(&mut out, chunk.world, chunk.first_seq + i as u64);
            n = 0;
        }
        match u {
            trove_shard::Update::Applied { event, outcome } => {
                trove_proto::wire::push_applied::<G>(&mut out, event, outcome);
            }
            trove_shard::Update::Broadcast(b) => trove_proto::wire::push_broadcast::<G>(&mut out, b),
        }
        n += 1;
    }
    frame::end_update(&mut out, start, n);
    out
}
