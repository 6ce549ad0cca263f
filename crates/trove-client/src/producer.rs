//! The producer: batching on the caller's side, one background task per
//! producer for the socket, resends and reconnects.
//!
//! Work per event is one record encoding into the open batch's frame
//! buffer. Everything else happens per batch: closing it (one lock, one
//! wakeup of the task), writing it, matching its ACK, decoding its
//! outcomes, handing it to [`Acks`] (one lock, one wakeup).

use std::collections::VecDeque;
use std::fmt;
use std::ops::Range;
use std::pin::Pin;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::{Instant, Sleep};

use trove_core::Record;
use trove_proto::frame::{self, ACK_HEAD_LEN, EVENTS_HEAD_LEN, Hello, Welcome, hello_flags};
use trove_proto::{ErrorCode, Frame, Kind, WireGame};

use crate::batch::{Batch, OpenBatch};
use crate::config::ClientConfig;
use crate::congestion::EventWindow;
use crate::conn::{self, Conn, FrameBuf};
use crate::error::{ClientError, SendError, ServerError};
use crate::inflight::{Answer, Inflight};
use crate::route::{Route, Why};

/// `send` looks at the clock (for `linger`) once per this many events.
const LINGER_CHECK_EVERY: u32 = 64;

/// One acknowledged batch: events `first_seq .. first_seq + count` are
/// applied and durable under the server's fsync policy.
pub struct AckedBatch<G: WireGame> {
    pub first_seq: u64,
    pub count: u32,
    /// With `want_outcomes`: `outcomes[i]` answers the event with sequence
    /// `first_seq + i` (the number [`Producer::send`] returned for it).
    pub outcomes: Option<Vec<G::Outcome>>,
}

impl<G: WireGame> AckedBatch<G> {
    /// The sequence numbers of the batch's events.
    pub fn seqs(&self) -> Range<u64> {
        self.first_seq..self.first_seq + u64::from(self.count)
    }

    /// The outcome of the event numbered `seq`, if it is in this batch and
    /// outcomes were asked for.
    pub fn outcome(&self, seq: u64) -> Option<&G::Outcome> {
        let i = usize::try_from(seq.checked_sub(self.first_seq)?).ok()?;
        self.outcomes.as_ref()?.get(i)
    }
}

impl<G: WireGame> Clone for AckedBatch<G> {
    fn clone(&self) -> Self {
        Self { first_seq: self.first_seq, count: self.count, outcomes: self.outcomes.clone() }
    }
}

impl<G: WireGame> fmt::Debug for AckedBatch<G> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AckedBatch")
            .field("first_seq", &self.first_seq)
            .field("count", &self.count)
            .field("outcomes", &self.outcomes)
            .finish()
    }
}

/// Counters of one producer (a copy; see [`Producer::stats`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProducerStats {
    /// EVENTS frames written, resends included.
    pub batches_sent: u64,
    /// Of those, resends (after BUSY or a reconnect).
    pub batches_resent: u64,
    pub batches_acked: u64,
    pub events_acked: u64,
    /// Batches refused for good (BadBatch, BadSequence, SequenceReused).
    pub batches_refused: u64,
    /// BUSY answers.
    pub busy: u64,
    /// Connections made after the first.
    pub reconnects: u64,
    /// Events the producer lets be unanswered now: `unacked_events_max`,
    /// halved when the server answers BUSY, grown back by ACKs.
    pub events_allowed: u64,
}

#[derive(Debug, Default)]
struct Counters {
    batches_sent: AtomicU64,
    batches_resent: AtomicU64,
    batches_acked: AtomicU64,
    events_acked: AtomicU64,
    batches_refused: AtomicU64,
    busy: AtomicU64,
    reconnects: AtomicU64,
}

type Ready<G> = (Result<AckedBatch<G>, ClientError>, Option<u32>);

/// What the producer handle, its task and its [`Acks`] share. Locked once
/// per batch at most, never per event.
struct State<G: WireGame> {
    /// Closed batches the task has not taken yet.
    outbox: VecDeque<Batch>,
    /// Frame buffers of acknowledged batches, for the next batches.
    free: Vec<Vec<u8>>,
    /// Batches closed and not released (released: taken from `Acks`, or
    /// acknowledged when nobody holds the `Acks`), and their events.
    window_batches: usize,
    window_events: usize,
    /// What `window_events` may reach (see `congestion`).
    events_allowed: EventWindow,
    /// The sequence after the last closed batch.
    closed_end_seq: u64,
    /// Every sequence up to this one is answered.
    answered_through: u64,
    /// Answered batches for `Acks`, in sequence order, with the events to
    /// release from the window when taken (`None`: nothing to release).
    ready: VecDeque<Ready<G>>,
    acks_open: bool,
    /// Why the task stopped, if it failed.
    failed: Option<ClientError>,
    /// The producer asked the task to stop.
    closing: bool,
    /// The task stopped; nothing more will be answered.
    finished: bool,
}

struct Shared<G: WireGame> {
    state: Mutex<State<G>>,
    /// Producer to task: a batch closed, or closing.
    wake_task: Notify,
    /// Task or `Acks` to producer: window room, progress, failure.
    wake_producer: Notify,
    /// Task to `Acks`: answers ready, or the end.
    wake_acks: Notify,
    counters: Counters,
}

impl<G: WireGame> Shared<G> {
    fn lock(&self) -> MutexGuard<'_, State<G>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn wake_all(&self) {
        self.wake_task.notify_one();
        self.wake_producer.notify_one();
        self.wake_acks.notify_one();
    }
}

/// Sends a game's events to a trove server: batched, pipelined, resent
/// after BUSY or a reconnect, each event applied exactly once.
///
/// [`send`](Self::send) encodes the event into the open batch and returns
/// its sequence number; it never waits and never allocates. The open batch
/// is closed and handed to the producer's task when it is full (at
/// `batch_events_max`, or a quarter of the window in events once the
/// window has shrunk: see below), when
/// [`flush`](Self::flush) (or [`drain`](Self::drain), [`close`](Self::close))
/// is called, or once it has been open for `linger` — noticed by `send`
/// (every 64 events) and by [`idle_until`](Self::idle_until). A producer
/// that stops sending for a while should `flush` or `idle_until` (a sleep
/// that honours `linger`), or its last events wait for the next `send`.
///
/// At most `window_batches` batches (and `unacked_events_max` events; after
/// a BUSY, or round trips past `queue_delay_target` if set, fewer: shrunk,
/// then grown back one batch per window of ACKs) are closed and not yet
/// released; a batch is released when its answer is
/// taken from [`Acks`], or when it is answered if the `Acks` was dropped.
/// When the window is full and the open batch too, `send` returns
/// [`SendError::Full`]; await [`ready`](Self::ready) (or use
/// [`send_wait`](Self::send_wait)). So: keep reading `Acks`, or drop it.
///
/// Connection failures (I/O errors, EOF, a closing server ERROR such as
/// `idle_timeout` or `shutting_down`) are handled in the background:
/// reconnect with exponential backoff, HELLO with the same producer id,
/// resend every unanswered batch with its original sequence numbers, in
/// order. Events the server had applied are not applied again; their ACK
/// carries the original outcomes. Unrecoverable failures (protocol
/// violations, an incompatible server, reconnect attempts exhausted) end
/// the producer: every method returns the error, and `Acks` yields it.
///
/// ```no_run
/// # async fn demo() -> Result<(), trove_client::ClientError> {
/// use trove_client::{ClientConfig, Producer};
/// use trove_hunt::{HuntEvent, TreasureHunt};
///
/// let (mut producer, mut acks) = Producer::<TreasureHunt>::connect(ClientConfig::new("127.0.0.1:7400")).await?;
/// let reader = tokio::spawn(async move {
///     while let Some(ack) = acks.next().await {
///         let ack = ack?;
///         println!("{} events from {} acknowledged", ack.count, ack.first_seq);
///     }
///     Ok::<_, trove_client::ClientError>(())
/// });
/// for player in 0..1000 {
///     producer.send_wait(HuntEvent::join(7, player)).await?;
/// }
/// producer.close().await?; // flush, wait for every ACK, disconnect
/// reader.await.expect("reader task")?;
/// # Ok(()) }
/// ```
pub struct Producer<G: WireGame> {
    shared: Arc<Shared<G>>,
    open: OpenBatch<G::Event>,
    opened_at: Instant,
    linger: Duration,
    window_batches_max: usize,
    /// The open batch closes at this many events: the batch limit, or less
    /// while the window is small (`EventWindow::batch_events`).
    close_at: u32,
    producer_id: u64,
    task: Option<JoinHandle<()>>,
}

impl<G: WireGame> fmt::Debug for Producer<G> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Producer")
            .field("game", &G::NAME)
            .field("producer_id", &self.producer_id)
            .field("next_seq", &self.open.next_seq())
            .field("open_events", &self.open.len())
            .field("batch_events_max", &self.open.cap())
            .finish_non_exhaustive()
    }
}

impl<G: WireGame> Producer<G> {
    /// Connects, handshakes and starts the producer's task. The first
    /// connection is not retried: its failure is returned.
    ///
    /// Returns the producer and the stream of its acknowledgements.
    pub async fn connect(config: ClientConfig) -> Result<(Producer<G>, Acks<G>), ClientError> {
        Self::connect_routed(config, Route::Fixed).await
    }

    /// `connect`, through `route`. A cluster route retries the first
    /// connection as it retries a reconnect (the partition's owner may be
    /// moving); a fixed one does not.
    pub(crate) async fn connect_routed(
        mut config: ClientConfig,
        mut route: Route,
    ) -> Result<(Producer<G>, Acks<G>), ClientError> {
        config.validate()?;
        let flags = if config.want_outcomes { hello_flags::OUTCOMES } else { 0 };
        let mut hello = config.hello(flags, config.initial_producer_id());
        let conn = match route.failover_timeout() {
            None => route.connect::<G>(&config, hello, Why::First).await?,
            Some(timeout) => first_connection::<G>(&mut route, &config, hello, timeout).await?,
        };
        if let Route::Cluster(c) = &route
            && let Some(target) = &c.current
        {
            config.addr.clone_from(&target.tcp);
        }
        let welcome = conn.welcome;
        // Later connections present the id the server assigned, if it did.
        hello.producer_id = welcome.producer_id;
        let cap = batch_cap::<G>(&config, &welcome)?;
        let first_seq = config.first_seq;
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                outbox: VecDeque::new(),
                free: Vec::new(),
                window_batches: 0,
                window_events: 0,
                events_allowed: EventWindow::new(
                    config.unacked_events_max as usize,
                    cap as usize,
                    config.queue_delay_target,
                    Instant::now(),
                ),
                closed_end_seq: first_seq,
                answered_through: first_seq - 1,
                ready: VecDeque::new(),
                acks_open: true,
                failed: None,
                closing: false,
                finished: false,
            }),
            wake_task: Notify::new(),
            wake_producer: Notify::new(),
            wake_acks: Notify::new(),
            counters: Counters::default(),
        });
        let task = Task::<G> {
            shared: shared.clone(),
            hello,
            batch_cap: cap,
            window_batches_max: config.window_batches as usize,
            config: config.clone(),
            route,
            streak: None,
            inflight: Inflight::default(),
            control: Vec::new(),
            writing: None,
            ping_nonce: 0,
            acked: Vec::new(),
        };
        let name = match task.route.partition() {
            None => format!("trove-client producer {} -> {}", welcome.producer_id, config.addr),
            Some(p) => format!("trove-client producer {} partition {p} -> {}", welcome.producer_id, config.addr),
        };
        let handle = crate::task::spawn_named(&name, task.run(conn));
        let producer = Producer {
            shared: shared.clone(),
            open: OpenBatch::new(cap, first_seq),
            opened_at: Instant::now(),
            linger: config.linger,
            window_batches_max: config.window_batches as usize,
            close_at: cap,
            producer_id: welcome.producer_id,
            task: Some(handle),
        };
        Ok((producer, Acks { shared }))
    }

    /// The id the server knows this producer by.
    pub fn producer_id(&self) -> u64 {
        self.producer_id
    }

    /// The sequence number the next event will get.
    pub fn next_seq(&self) -> u64 {
        self.open.next_seq()
    }

    /// Most events per batch: the configured limit, lowered to what the
    /// server accepts.
    pub fn batch_events_max(&self) -> u32 {
        self.open.cap()
    }

    /// Events in the open batch (not yet handed to the task).
    pub fn open_events(&self) -> u32 {
        self.open.len()
    }

    pub fn stats(&self) -> ProducerStats {
        let c = &self.shared.counters;
        ProducerStats {
            batches_sent: c.batches_sent.load(Relaxed),
            batches_resent: c.batches_resent.load(Relaxed),
            batches_acked: c.batches_acked.load(Relaxed),
            events_acked: c.events_acked.load(Relaxed),
            batches_refused: c.batches_refused.load(Relaxed),
            busy: c.busy.load(Relaxed),
            reconnects: c.reconnects.load(Relaxed),
            events_allowed: self.shared.lock().events_allowed.allowed() as u64,
        }
    }

    /// Appends `event` to the open batch and returns its sequence number.
    /// Never waits. Fails with [`SendError::Full`] when the open batch is
    /// full and the window has no room to close it, and with
    /// [`SendError::Closed`] once the producer has failed (noticed when a
    /// batch closes: the events of the open batch are then lost with the
    /// rest); the event is handed back either way.
    #[inline]
    pub fn send(&mut self, event: G::Event) -> Result<u64, SendError<G::Event>> {
        let n = self.open.len();
        if (n >= self.close_at || (n.is_multiple_of(LINGER_CHECK_EVERY) && n > 0))
            && let Err(e) = self.before_push()
        {
            return Err(if let Some(e) = e { SendError::Closed(event, e) } else { SendError::Full(event) });
        }
        if self.open.is_empty() {
            self.opened_at = Instant::now();
        }
        let seq = self.open.push(&event);
        if self.open.len() >= self.close_at {
            // Out it goes now, if the window has room; if not, the next
            // call tries again (and reports any failure).
            let _ = self.try_close_batch();
        }
        Ok(seq)
    }

    /// The slow part of `send`: closes the open batch if it is full or has
    /// lingered. `Err(None)`: no room; `Err(Some(e))`: failed.
    #[cold]
    fn before_push(&mut self) -> Result<(), Option<ClientError>> {
        let full = self.open.len() >= self.close_at;
        if full || self.opened_at.elapsed() >= self.linger {
            match self.try_close_batch() {
                Ok(true) => {}
                Ok(false) if full => return Err(None),
                Ok(false) => {}
                Err(e) => return Err(Some(e)),
            }
        }
        Ok(())
    }

    /// Sends `event`, waiting for room first if needed.
    pub async fn send_wait(&mut self, event: G::Event) -> Result<u64, ClientError> {
        let mut event = event;
        loop {
            match self.send(event) {
                Ok(seq) => return Ok(seq),
                Err(SendError::Full(e)) => {
                    event = e;
                    self.ready().await?;
                }
                Err(SendError::Closed(_, e)) => return Err(e),
            }
        }
    }

    /// Waits until `send` will take at least one event. Returns at once
    /// (without a lock or a clock read) while the open batch has room.
    #[inline]
    pub async fn ready(&mut self) -> Result<(), ClientError> {
        if self.open.len() < self.close_at {
            return Ok(());
        }
        self.wait_to_close_batch().await
    }

    /// Closes the open batch (if it holds events), waiting for window room.
    /// Does not wait for the acknowledgement; see [`drain`](Self::drain).
    pub async fn flush(&mut self) -> Result<(), ClientError> {
        self.wait_to_close_batch().await
    }

    /// Closes the open batch now if the window has room, never waiting:
    /// `Ok(false)` if it has none (the batch stays open). With [`send`](Self::send)
    /// and [`Acks::try_next`] it lets a thread of its own, outside any
    /// runtime, pace a producer (as `trove bench` does).
    pub fn try_flush(&mut self) -> Result<bool, ClientError> {
        self.try_close_batch()
    }

    /// Flushes, then waits until every event sent so far is answered.
    pub async fn drain(&mut self) -> Result<(), ClientError> {
        self.flush().await?;
        let last = self.open.next_seq() - 1;
        loop {
            {
                let st = self.shared.lock();
                if let Some(e) = &st.failed {
                    return Err(e.clone());
                }
                if st.answered_through >= last {
                    return Ok(());
                }
                if st.finished {
                    return Err(ClientError::Closed);
                }
            }
            self.shared.wake_producer.notified().await;
        }
    }

    /// Sleeps until `deadline`, closing the open batch when its `linger`
    /// runs out meanwhile: what a producer that paces its events awaits
    /// between them, instead of a plain sleep.
    pub async fn idle_until(&mut self, deadline: Instant) -> Result<(), ClientError> {
        while !self.open.is_empty() {
            let due = self.opened_at + self.linger;
            if due >= deadline {
                break;
            }
            tokio::time::sleep_until(due).await;
            if self.try_close_batch()? {
                break;
            }
            // No room in the window: wait for some, or for the deadline.
            tokio::select! {
                _ = self.shared.wake_producer.notified() => {}
                _ = tokio::time::sleep_until(deadline) => return Ok(()),
            }
        }
        tokio::time::sleep_until(deadline).await;
        Ok(())
    }

    /// Drains (every event sent is answered), then disconnects. The
    /// [`Acks`] yields what is left, then ends. Returns the final counters.
    pub async fn close(mut self) -> Result<ProducerStats, ClientError> {
        self.drain().await?;
        self.shared.lock().closing = true;
        self.shared.wake_task.notify_one();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
        Ok(self.stats())
    }

    async fn wait_to_close_batch(&mut self) -> Result<(), ClientError> {
        loop {
            if self.try_close_batch()? {
                return Ok(());
            }
            self.shared.wake_producer.notified().await;
        }
    }

    /// Closes the open batch if the window has room: `Ok(false)` if not.
    fn try_close_batch(&mut self) -> Result<bool, ClientError> {
        if self.open.is_empty() {
            return Ok(true);
        }
        let count = self.open.len() as usize;
        let mut st = self.shared.lock();
        if let Some(e) = &st.failed {
            return Err(e.clone());
        }
        if st.finished || st.closing {
            return Err(ClientError::Closed);
        }
        if st.window_batches >= self.window_batches_max || st.window_events + count > st.events_allowed.allowed() {
            return Ok(false);
        }
        st.window_batches += 1;
        st.window_events += count;
        st.closed_end_seq = self.open.next_seq();
        self.close_at = st.events_allowed.batch_events() as u32;
        let fresh = st.free.pop().unwrap_or_else(|| vec![0; OpenBatch::<G::Event>::buf_len(self.open.cap())]);
        st.outbox.push_back(self.open.seal(fresh));
        drop(st);
        self.shared.wake_task.notify_one();
        Ok(true)
    }
}

impl<G: WireGame> Drop for Producer<G> {
    /// Stops the task at once. Events not yet acknowledged may or may not
    /// be applied; [`close`](Producer::close) first to know.
    fn drop(&mut self) {
        let Some(task) = self.task.take() else { return };
        task.abort();
        let mut st = self.shared.lock();
        st.closing = true;
        if !st.finished {
            st.finished = true;
            let unanswered = st.answered_through + 1 < self.open.next_seq();
            if unanswered && st.acks_open && st.failed.is_none() {
                st.ready.push_back((Err(ClientError::Closed), None));
            }
        }
        drop(st);
        self.shared.wake_all();
    }
}

/// The answers to a producer's batches, in sequence order.
///
/// Holding an `Acks` makes it part of the window: a batch's room is
/// released when its answer is taken here. Drop it to have batches
/// released as soon as they are acknowledged.
pub struct Acks<G: WireGame> {
    shared: Arc<Shared<G>>,
}

impl<G: WireGame> fmt::Debug for Acks<G> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Acks").field("ready", &self.shared.lock().ready.len()).finish()
    }
}

impl<G: WireGame> Acks<G> {
    /// The next answer, in sequence order: `Ok` for an acknowledged batch,
    /// `Err(ClientError::BatchRefused)` or `Err(ClientError::SequenceReused)`
    /// for a batch the server refused (the producer goes on), or the error
    /// that ended the producer.
    /// `None` once the producer is closed and every answer was taken.
    /// Cancel-safe.
    pub async fn next(&mut self) -> Option<Result<AckedBatch<G>, ClientError>> {
        loop {
            if let Some(r) = self.poll_ready() {
                return r;
            }
            self.shared.wake_acks.notified().await;
        }
    }

    /// Like [`next`](Self::next), without waiting: `None` if no answer is
    /// ready now.
    pub fn try_next(&mut self) -> Option<Result<AckedBatch<G>, ClientError>> {
        self.poll_ready().flatten()
    }

    fn poll_ready(&mut self) -> Option<Option<Result<AckedBatch<G>, ClientError>>> {
        let mut st = self.shared.lock();
        if let Some((item, release)) = st.ready.pop_front() {
            if let Some(count) = release {
                st.window_batches -= 1;
                st.window_events -= count as usize;
                drop(st);
                self.shared.wake_producer.notify_one();
            }
            return Some(Some(item));
        }
        if st.finished {
            return Some(None);
        }
        None
    }
}

impl<G: WireGame> Drop for Acks<G> {
    fn drop(&mut self) {
        let mut st = self.shared.lock();
        st.acks_open = false;
        while let Some((_, release)) = st.ready.pop_front() {
            if let Some(count) = release {
                st.window_batches -= 1;
                st.window_events -= count as usize;
            }
        }
        drop(st);
        self.shared.wake_producer.notify_one();
    }
}

/// The largest batch this client will send to the server that sent
/// `welcome`.
fn batch_cap<G: WireGame>(config: &ClientConfig, welcome: &Welcome) -> Result<u32, ClientError> {
    if config.want_outcomes && welcome.flags & hello_flags::OUTCOMES == 0 {
        return Err(ClientError::Incompatible("the server does not send outcomes".into()));
    }
    let body = welcome.frame_body_max as usize;
    let mut cap = config.batch_events_max.min(welcome.batch_events_max).min(config.unacked_events_max) as usize;
    cap = cap.min(body.saturating_sub(EVENTS_HEAD_LEN) / G::Event::SIZE);
    if config.want_outcomes {
        cap = cap.min(body.saturating_sub(ACK_HEAD_LEN) / G::OUTCOME_SIZE.max(1));
    }
    if cap == 0 {
        return Err(ClientError::Incompatible(format!(
            "a frame body of {body} bytes holds no event of {} bytes",
            G::Event::SIZE
        )));
    }
    Ok(cap as u32)
}

/// Why a connection ended.
enum End {
    /// The producer closed.
    Closed,
    /// Reconnect.
    Retry(ClientError),
    /// Give up.
    Fatal(ClientError),
}

/// A run of reconnects without an answer to a batch in between.
#[derive(Clone, Copy, Debug)]
struct Streak {
    since: Instant,
    attempts: u32,
    /// The wait before the next attempt.
    delay: Duration,
}

/// What is being written.
#[derive(Clone, Copy, Debug)]
enum Writing {
    /// `control[at..]`.
    Control { at: usize },
    /// The batch starting at `first_seq`, from byte `at`.
    Batch { first_seq: u64, at: usize },
}

/// The producer's task: owns the socket and the unanswered batches.
struct Task<G: WireGame> {
    shared: Arc<Shared<G>>,
    config: ClientConfig,
    /// Where (re)connections go.
    route: Route,
    /// Reconnects since the last answer to a batch. They share one budget
    /// of attempts, one backoff and one failover deadline, so a server
    /// that takes connections and refuses every batch (`unavailable`, a
    /// node that keeps answering `not_owner`) ends the producer in bounded
    /// time too, not one connection at a time forever.
    streak: Option<Streak>,
    /// What every connection presents.
    hello: Hello,
    batch_cap: u32,
    window_batches_max: usize,
    inflight: Inflight<G::Outcome>,
    /// Small frames (PING) to write between batches.
    control: Vec<u8>,
    writing: Option<Writing>,
    ping_nonce: u64,
    /// ACKs read and not yet shown to the window (`first_seq`, `count`,
    /// round trip): `deliver` applies them under the lock it takes anyway.
    acked: Vec<(u64, u32, Option<Duration>)>,
}

impl<G: WireGame> Task<G> {
    async fn run(mut self, mut conn: Conn) {
        loop {
            let Err(end) = self.serve(&mut conn).await;
            let end = match end {
                End::Retry(cause) => match self.reconnect(cause).await {
                    Ok(c) => {
                        conn = c;
                        self.inflight.reconnected();
                        self.shared.lock().events_allowed.reconnected(Instant::now());
                        self.writing = None;
                        self.control.clear();
                        continue;
                    }
                    Err(end) => end,
                },
                end => end,
            };
            let mut st = self.shared.lock();
            st.finished = true;
            if let End::Fatal(e) | End::Retry(e) = end {
                st.failed = Some(e.clone());
                if st.acks_open {
                    st.ready.push_back((Err(e), None));
                }
            }
            drop(st);
            self.shared.wake_all();
            return;
        }
    }

    /// Serves one connection until it ends.
    async fn serve(&mut self, conn: &mut Conn) -> Result<std::convert::Infallible, End> {
        let ping_interval = self.config.ping_interval;
        let mut last_write = Instant::now();
        let mut ping: Pin<Box<Sleep>> = Box::pin(tokio::time::sleep_until(last_write + ping_interval));
        let (mut rd, mut wr) = conn.stream.split();
        let frames = &mut conn.frames;
        loop {
            self.take_outbox()?;
            self.inflight.resume(Instant::now());
            if self.writing.is_none() {
                self.writing = self.next_write();
            }
            let out: &[u8] = match self.writing {
                None => &[],
                Some(Writing::Control { at }) => &self.control[at..],
                Some(Writing::Batch { first_seq, at }) => match self.inflight.frame(first_seq) {
                    Some(f) => &f[at..],
                    None => {
                        return Err(End::Fatal(ClientError::Protocol(
                            "a batch was answered before it was sent".into(),
                        )));
                    }
                },
            };
            let resume_at = self.inflight.resume_deadline();
            let answer_due =
                self.config.answer_timeout.and_then(|t| self.inflight.oldest_unanswered_at().map(|at| at + t));
            tokio::select! {
                biased;
                n = frames.fill(&mut rd) => {
                    match n {
                        Ok(0) => return Err(End::Retry(eof("reading"))),
                        Ok(_) => {}
                        Err(e) => return Err(End::Retry(ClientError::io("reading")(e))),
                    }
                    // Answers read before a closing error still reach `Acks`.
                    let read = self.read_frames(frames);
                    self.deliver();
                    read?;
                }
                n = wr.write(out), if !out.is_empty() => {
                    let n = n.map_err(|e| End::Retry(ClientError::io("writing")(e)))?;
                    if n == 0 {
                        return Err(End::Retry(eof("writing")));
                    }
                    last_write = Instant::now();
                    self.wrote(n);
                }
                _ = self.shared.wake_task.notified() => {}
                _ = async { tokio::time::sleep_until(resume_at.expect("guarded")).await }, if resume_at.is_some() => {}
                _ = async { tokio::time::sleep_until(answer_due.expect("guarded")).await }, if answer_due.is_some() => {
                    // Still the same batch unanswered (the loop recomputes
                    // the deadline from the oldest one each pass).
                    if self.inflight.oldest_unanswered_at().is_some_and(|at| at + self.config.answer_timeout.unwrap_or_default() <= Instant::now()) {
                        return Err(End::Retry(ClientError::Timeout { during: "waiting for an answer" }));
                    }
                }
                _ = &mut ping => {
                    let due = last_write + ping_interval;
                    if due <= Instant::now() {
                        self.ping_nonce += 1;
                        frame::encode_u64_frame(&mut self.control, Kind::Ping, self.ping_nonce);
                        ping.as_mut().reset(Instant::now() + ping_interval);
                    } else {
                        ping.as_mut().reset(due);
                    }
                }
            }
        }
    }

    /// Moves closed batches from the producer into `inflight`.
    fn take_outbox(&mut self) -> Result<(), End> {
        let mut st = self.shared.lock();
        if st.closing {
            return Err(End::Closed);
        }
        while let Some(b) = st.outbox.pop_front() {
            self.inflight.push(b);
        }
        Ok(())
    }

    /// Control frames first (they are small), then the next batch.
    fn next_write(&mut self) -> Option<Writing> {
        if !self.control.is_empty() {
            return Some(Writing::Control { at: 0 });
        }
        let (first_seq, resend) = self.inflight.next_to_send()?;
        let c = &self.shared.counters;
        c.batches_sent.fetch_add(1, Relaxed);
        if resend {
            c.batches_resent.fetch_add(1, Relaxed);
        }
        Some(Writing::Batch { first_seq, at: 0 })
    }

    fn wrote(&mut self, n: usize) {
        match &mut self.writing {
            Some(Writing::Control { at }) => {
                *at += n;
                if *at == self.control.len() {
                    self.control.clear();
                    self.writing = None;
                }
            }
            Some(Writing::Batch { first_seq, at }) => {
                *at += n;
                if self.inflight.frame(*first_seq).is_some_and(|f| *at == f.len()) {
                    self.writing = None;
                }
            }
            None => unreachable!("wrote nothing"),
        }
    }

    fn read_frames(&mut self, frames: &mut FrameBuf) -> Result<(), End> {
        while let Some((header, body)) = frames.next_frame().map_err(End::Fatal)? {
            let f = conn::decode_server_frame::<G>(header, body).map_err(End::Fatal)?;
            self.handle(f)?;
        }
        Ok(())
    }

    fn handle(&mut self, f: Frame<'_>) -> Result<(), End> {
        let protocol = |m: String| End::Fatal(ClientError::Protocol(m));
        match f {
            Frame::Ack { first_seq, count, outcomes } => {
                let outcomes = match (outcomes, self.config.want_outcomes) {
                    (Some(bytes), true) => {
                        Some(trove_proto::wire::decode_outcomes::<G>(bytes).map_err(|e| protocol(e.to_string()))?)
                    }
                    (None, false) => None,
                    (Some(_), false) => return Err(protocol("ACK with outcomes that were not asked for".into())),
                    (None, true) => return Err(protocol("ACK without the outcomes asked for".into())),
                };
                let rtt = self.inflight.on_ack(first_seq, count, outcomes, Instant::now()).map_err(End::Fatal)?;
                self.acked.push((first_seq, count, rtt));
                self.streak = None;
            }
            Frame::Busy { first_seq, count, retry_after_ms } => {
                let wait = Duration::from_millis(u64::from(retry_after_ms));
                self.inflight.on_busy(first_seq, count, wait, Instant::now()).map_err(End::Fatal)?;
                self.shared.counters.busy.fetch_add(1, Relaxed);
                let mut st = self.shared.lock();
                let (unanswered, next_seq) = (st.window_events, st.closed_end_seq);
                st.events_allowed.on_busy(first_seq, unanswered, next_seq);
            }
            Frame::Pong { .. } => {}
            Frame::Error { code, message } => {
                let error = ServerError { raw_code: code, message: message.to_string() };
                match error.code() {
                    // `forbidden`: the token may not send one of the batch's
                    // events (a hunt outside its ranges); that batch alone.
                    Some(
                        ErrorCode::BadBatch | ErrorCode::BadSequence | ErrorCode::SequenceReused | ErrorCode::Forbidden,
                    ) => {
                        self.inflight.on_refused(error).map_err(End::Fatal)?;
                        self.shared.counters.batches_refused.fetch_add(1, Relaxed);
                        self.streak = None;
                    }
                    _ if !error.closes() => {
                        return Err(protocol(format!("unexpected ERROR for a producer: {error}")));
                    }
                    _ => {
                        let e = ClientError::Server(error);
                        return Err(if self.route.retryable(&e) { End::Retry(e) } else { End::Fatal(e) });
                    }
                }
            }
            other => return Err(protocol(format!("unexpected {:?} frame", conn::kind_of(&other)))),
        }
        Ok(())
    }

    /// Hands answered batches, oldest first, to `Acks` (or releases them),
    /// and recycles their buffers.
    /// Shows the window the ACKs read (one lock for both).
    fn deliver(&mut self) {
        let first = self.inflight.pop_answered();
        if first.is_none() && self.acked.is_empty() {
            return;
        }
        let mut st = self.shared.lock();
        let (now, next_seq) = (Instant::now(), st.closed_end_seq);
        for (first_seq, count, rtt) in self.acked.drain(..) {
            st.events_allowed.on_acked(first_seq, count as usize, rtt, now, next_seq);
        }
        let mut next = first;
        let (mut batches, mut events) = (0, 0);
        while let Some((batch, answer)) = next {
            st.answered_through = batch.end_seq() - 1;
            let (first_seq, count) = (batch.first_seq, batch.count);
            let item = match answer {
                Answer::Acked(outcomes) => {
                    batches += 1;
                    events += u64::from(count);
                    Ok(AckedBatch { first_seq, count, outcomes })
                }
                Answer::Refused(error) if error.code() == Some(ErrorCode::SequenceReused) => {
                    Err(ClientError::SequenceReused { first_seq, count, error })
                }
                Answer::Refused(error) => Err(ClientError::BatchRefused { first_seq, count, error }),
            };
            if st.acks_open {
                st.ready.push_back((item, Some(count)));
            } else {
                st.window_batches -= 1;
                st.window_events -= count as usize;
            }
            if st.free.len() < self.window_batches_max {
                st.free.push(batch.buf);
            }
            next = self.inflight.pop_answered();
        }
        drop(st);
        let c = &self.shared.counters;
        c.batches_acked.fetch_add(batches, Relaxed);
        c.events_acked.fetch_add(events, Relaxed);
        self.shared.wake_producer.notify_one();
        self.shared.wake_acks.notify_one();
    }

    /// New connections, with exponential backoff, until one is made (and
    /// can take this producer's batches) or the attempts run out.
    ///
    /// With nothing to send or resend, it first waits for a batch: an idle
    /// producer holds no connection it does not need.
    async fn reconnect(&mut self, cause: ClientError) -> Result<Conn, End> {
        loop {
            {
                let st = self.shared.lock();
                if st.closing {
                    return Err(End::Closed);
                }
                if !st.outbox.is_empty() || !self.inflight.is_empty() {
                    break;
                }
            }
            self.shared.wake_task.notified().await;
        }
        // The first attempt of a streak goes at once (after `unavailable`:
        // after the initial backoff), the next ones after a backoff.
        let mut streak =
            self.streak.take().unwrap_or(Streak { since: Instant::now(), attempts: 0, delay: Duration::ZERO });
        if cause.server_code() == Some(ErrorCode::Unavailable) {
            streak.delay = streak.delay.max(self.config.reconnect_backoff_initial);
        }
        let mut last = cause;
        let give_up_at = self.route.failover_timeout().map(|t| streak.since + t);
        loop {
            let delay = streak.delay;
            if self.config.reconnect_attempts_max.is_some_and(|max| streak.attempts >= max)
                || give_up_at.is_some_and(|at| Instant::now() + delay >= at)
            {
                let attempts = streak.attempts;
                return Err(End::Fatal(ClientError::ReconnectFailed { attempts, last: Box::new(last) }));
            }
            streak.attempts += 1;
            let wake_at = Instant::now() + delay;
            loop {
                tokio::select! {
                    _ = tokio::time::sleep_until(wake_at) => break,
                    _ = self.shared.wake_task.notified() => {
                        if self.shared.lock().closing {
                            return Err(End::Closed);
                        }
                    }
                }
            }
            match self.route.connect::<G>(&self.config, self.hello, Why::after(&last)).await {
                Ok(c) => {
                    self.check_limits(&c.welcome).map_err(End::Fatal)?;
                    self.shared.counters.reconnects.fetch_add(1, Relaxed);
                    // Until an answer shows progress, a new loss continues
                    // this streak, with the next backoff.
                    streak.delay = next_backoff(delay, &self.config);
                    self.streak = Some(streak);
                    return Ok(c);
                }
                Err(e) if self.route.retryable(&e) => {
                    last = e;
                    streak.delay = next_backoff(delay, &self.config);
                }
                Err(e) => return Err(End::Fatal(e)),
            }
        }
    }

    /// A server met after a reconnect must take the batches already made.
    fn check_limits(&self, welcome: &Welcome) -> Result<(), ClientError> {
        let cap = batch_cap::<G>(&self.config, welcome)?;
        if cap < self.batch_cap {
            return Err(ClientError::Incompatible(format!(
                "after a reconnect the server takes batches of {cap} events, this producer made them of up to {}",
                self.batch_cap
            )));
        }
        Ok(())
    }
}

/// The wait before the next connection attempt: the initial backoff,
/// then doubled per failure up to the most.
fn next_backoff(delay: Duration, config: &ClientConfig) -> Duration {
    (delay * 2).clamp(config.reconnect_backoff_initial, config.reconnect_backoff_max)
}

/// A cluster producer's first connection to its partition's owner: tried
/// again (with the map fetched again, and backoff) while the errors are
/// ones a failover explains, for at most `timeout` and the configured
/// attempts.
async fn first_connection<G: WireGame>(
    route: &mut Route,
    config: &ClientConfig,
    hello: Hello,
    timeout: Duration,
) -> Result<Conn, ClientError> {
    let give_up_at = Instant::now() + timeout;
    let mut why = Why::First;
    let mut delay = Duration::ZERO;
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        let last = match route.connect::<G>(config, hello, why).await {
            Ok(c) => return Ok(c),
            Err(e) if route.retryable(&e) => e,
            Err(e) => return Err(e),
        };
        delay = next_backoff(delay, config);
        if config.reconnect_attempts_max.is_some_and(|max| attempts >= max) || Instant::now() + delay >= give_up_at {
            return Err(ClientError::ReconnectFailed { attempts, last: Box::new(last) });
        }
        why = Why::after(&last);
        tokio::time::sleep(delay).await;
    }
}

fn eof(during: &'static str) -> ClientError {
    ClientError::Io { during, source: Arc::new(std::io::ErrorKind::UnexpectedEof.into()) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use trove_hunt::{HuntOutcome, TreasureHunt};

    /// A server that takes batches larger than any the client builds.
    fn welcome() -> Welcome {
        Welcome { batch_events_max: 65_536, ..conn::test_welcome() }
    }

    #[test]
    fn the_batch_cap_honours_every_limit() {
        let c = ClientConfig::new("x:1");
        assert_eq!(batch_cap::<TreasureHunt>(&c, &welcome()).unwrap(), 4096);
        let w = Welcome { batch_events_max: 100, ..welcome() };
        assert_eq!(batch_cap::<TreasureHunt>(&c, &w).unwrap(), 100);
        let big = ClientConfig { batch_events_max: 1 << 20, unacked_events_max: 1 << 20, ..c.clone() };
        // (1 MiB - 16) / 32 records fit one frame.
        assert_eq!(batch_cap::<TreasureHunt>(&big, &welcome()).unwrap(), 32_767);
        let w = Welcome { frame_body_max: 16 + 31, ..welcome() };
        assert!(batch_cap::<TreasureHunt>(&c, &w).is_err());
        let w = Welcome { flags: 0, ..welcome() };
        assert!(batch_cap::<TreasureHunt>(&c, &w).is_err(), "outcomes asked for, not granted");
        let no_outcomes = ClientConfig { want_outcomes: false, ..c };
        assert_eq!(batch_cap::<TreasureHunt>(&no_outcomes, &w).unwrap(), 4096);
    }

    #[test]
    fn acked_batches_find_outcomes_by_sequence() {
        let a = AckedBatch::<TreasureHunt> {
            first_seq: 10,
            count: 2,
            outcomes: Some(vec![HuntOutcome::Left, HuntOutcome::DigNothing]),
        };
        assert_eq!(a.seqs(), 10..12);
        assert_eq!(a.outcome(11), Some(&HuntOutcome::DigNothing));
        assert_eq!(a.outcome(9), None);
        assert_eq!(a.outcome(12), None);
    }
}
