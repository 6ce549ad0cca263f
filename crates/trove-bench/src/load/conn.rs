//! A producer connection of the load generator: its arrivals turned into
//! events handed to the SDK (`Conn`, driven by the pacer), and its
//! acknowledgements read back and timed against each event's intended
//! send time (`read_acks`).
//!
//! A connection drives one node (`Sink::Node`, a `Producer`: one sequence
//! space) or a whole cluster (`Sink::Cluster`, a `ClusterProducer`: one
//! sequence space per partition, each event routed to its partition's
//! owner). The chunks waiting for their ack are kept per sequence space.

use std::collections::VecDeque;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex, MutexGuard};

use trove_client::{AckedBatch, Acks, ClientError, ClusterAcks, ClusterProducer, Producer, SendError};
use trove_hunt::{HuntEvent, TreasureHunt};
use trove_workload::Generator;

use super::Clock;
use super::arrivals::{self, Arrivals, SLOT_NS, Schedule};
use super::fanout::SendLog;
use super::latency::Latencies;
use super::pacer::{StepDone, StepPlan};

/// Events per latency record: a run of consecutive events of one slot
/// shares the intended time of its middle.
pub(super) const CHUNK_EVENTS: u32 = 64;

/// Consecutive events sharing an intended time, waiting for their ack.
#[derive(Clone, Copy, Debug)]
pub(super) struct Chunk {
    pub(super) start_seq: u64,
    pub(super) end_seq: u64,
    pub(super) intended_ns: u64,
    /// When the pacer took the chunk to hand it to the SDK.
    pub(super) handed_ns: u64,
    pub(super) step: u32,
}

/// Shared by a connection's sender and its ack reader.
#[derive(Debug, Default)]
pub(super) struct ConnShared {
    pub(super) inner: Mutex<ConnInner>,
}

#[derive(Debug, Default)]
pub(super) struct ConnInner {
    /// By sequence space: one for a node, one per partition for a cluster
    /// (grown as partitions are first sent to, at most the cluster's
    /// partition count, itself bounded by `CLUSTER_PARTITIONS_MAX`).
    pub(super) chunks: Vec<VecDeque<Chunk>>,
    pub(super) latencies: Latencies,
    /// Intended time to handed to the SDK, per chunk.
    pub(super) send_lag: Latencies,
    /// Handed to the SDK to acknowledged, per chunk.
    pub(super) admitted: Latencies,
    /// The acknowledgement stream ended in an error.
    pub(super) failed: Option<String>,
    /// Events of batches the server refused, by step (not in `latencies`).
    pub(super) refused: Vec<(u32, u64)>,
}

impl ConnInner {
    /// The chunks of sequence space `space`.
    pub(super) fn queue(&mut self, space: u32) -> &mut VecDeque<Chunk> {
        let i = space as usize;
        if self.chunks.len() <= i {
            self.chunks.resize_with(i + 1, VecDeque::new);
        }
        &mut self.chunks[i]
    }
}

/// Where a connection's events go: one node, or a cluster through the
/// SDK's routing.
pub(super) enum Sink {
    Node(Producer<TreasureHunt>),
    /// Boxed: a third of a kilobyte beside the node's producer.
    Cluster(Box<ClusterProducer<TreasureHunt>>),
}

impl Sink {
    pub(super) fn open_events(&self) -> u32 {
        match self {
            Sink::Node(p) => p.open_events(),
            Sink::Cluster(p) => p.open_events(),
        }
    }

    pub(super) fn try_flush(&mut self) -> Result<bool, ClientError> {
        match self {
            Sink::Node(p) => p.try_flush(),
            Sink::Cluster(p) => p.try_flush(),
        }
    }

    pub(super) async fn send_wait(&mut self, e: HuntEvent) -> Result<(), ClientError> {
        match self {
            Sink::Node(p) => p.send_wait(e).await.map(drop),
            Sink::Cluster(p) => p.send_wait(e).await.map(drop),
        }
    }

    pub(super) async fn drain(&mut self) -> Result<(), ClientError> {
        match self {
            Sink::Node(p) => p.drain().await,
            Sink::Cluster(p) => p.drain().await,
        }
    }

    pub(super) async fn close(self) -> Result<(), ClientError> {
        match self {
            Sink::Node(p) => p.close().await.map(drop),
            Sink::Cluster(p) => (*p).close().await.map(drop),
        }
    }
}

/// A connection's answers: a node's, or every partition's of a cluster.
pub(super) enum AckSource {
    Node(Acks<TreasureHunt>),
    Cluster(ClusterAcks<TreasureHunt>),
}

impl AckSource {
    /// The next answer and its sequence space.
    async fn next(&mut self) -> Option<(u32, Result<AckedBatch<TreasureHunt>, ClientError>)> {
        match self {
            AckSource::Node(a) => a.next().await.map(|r| (0, r)),
            AckSource::Cluster(a) => a.next().await,
        }
    }
}

/// When the events of the chunk being sent were meant to go, and when the
/// pacer took the chunk (`Sink::Cluster`: its events are put in their
/// partitions' queues as they are sent).
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct ChunkTimes {
    pub(super) intended_ns: u64,
    pub(super) handed_ns: u64,
    pub(super) step: u32,
}

pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The producer side of one connection, driven by the pacer thread.
pub(super) struct Conn {
    pub(super) producer: Sink,
    pub(super) generator: Generator,
    pub(super) shared: Arc<ConnShared>,
    pub(super) seed: u64,
    /// The current step's arrivals and what is left of them.
    pub(super) schedule: Option<Schedule>,
    pub(super) next_slot_ns: u64,
    pub(super) backlog: VecDeque<Slot>,
    /// The chunk being sent: its slot's start and size, the next event's
    /// index in the slot, and how many of the chunk's events are left.
    pub(super) chunk: (u64, u32, u32, u32),
    /// An event generated but refused by a full window.
    pub(super) pending: Option<HuntEvent>,
    /// The timing of the chunk being sent (`Sink::Cluster`).
    pub(super) times: ChunkTimes,
    /// When the open batch got its first event (within a tick).
    pub(super) opened_ns: u64,
    pub(super) done: StepDone,
    pub(super) sent: u64,
    pub(super) finished: bool,
}

/// A slot's arrivals, some possibly sent.
#[derive(Clone, Copy, Debug)]
pub(super) struct Slot {
    pub(super) start_ns: u64,
    pub(super) n: u32,
    pub(super) done: u32,
}

impl Conn {
    pub(super) fn begin(&mut self, plan: &StepPlan, arrivals: Arrivals) {
        let seed = trove_core::rng::mix64(self.seed ^ (u64::from(plan.index) << 40));
        self.schedule = Some(Schedule::new(arrivals, plan.rate, seed));
        self.next_slot_ns = plan.start_ns;
        self.backlog.clear();
        self.done = StepDone { sent_in_window: u64::MAX, ..StepDone::default() };
        self.sent = 0;
        self.finished = false;
    }

    /// Takes in the slots that have ended by `now` (within the step), sends
    /// what the window takes, and closes the open batch. Never waits.
    pub(super) fn pace(&mut self, now: u64, plan: &StepPlan, log: &SendLog, linger_ns: u64) -> Result<(), String> {
        if let Some(schedule) = &mut self.schedule {
            while self.next_slot_ns + SLOT_NS <= now.min(plan.end_ns) {
                let n = schedule.next_slot();
                if n > 0 {
                    self.backlog.push_back(Slot { start_ns: self.next_slot_ns, n, done: 0 });
                    self.done.offered += u64::from(n);
                }
                self.next_slot_ns += SLOT_NS;
            }
            if self.next_slot_ns + SLOT_NS > plan.end_ns {
                // Every arrival of the step is in.
                self.schedule = None;
            }
        }
        if now >= plan.end_ns && self.done.sent_in_window == u64::MAX {
            // The rest of the backlog goes out after the step.
            self.done.sent_in_window = self.sent;
        }
        let was_open = self.producer.open_events() > 0;
        self.pump(now, plan.index, log)?;
        if !was_open && self.producer.open_events() > 0 {
            // Close enough: the batch opened during this tick.
            self.opened_ns = now;
        }
        // A batch closes when full (in `send`), when it has lingered, or
        // once the step's arrivals are all in.
        if self.producer.open_events() > 0
            && (now.saturating_sub(self.opened_ns) >= linger_ns || now >= plan.end_ns)
            && self.producer.try_flush().map_err(|e| e.to_string())?
        {
            self.opened_ns = now;
        }
        Ok(())
    }

    /// Hands `e` to the SDK: false if the window is full, and `e` waits
    /// in `pending` for the next tick.
    #[inline]
    pub(super) fn offer(&mut self, e: HuntEvent) -> Result<bool, String> {
        let Sink::Node(producer) = &mut self.producer else { unreachable!("a node's connection") };
        match producer.send(e) {
            Ok(_) => {
                self.sent += 1;
                Ok(true)
            }
            Err(SendError::Full(e)) => {
                self.pending = Some(e);
                Ok(false)
            }
            Err(SendError::Closed(_, err)) => Err(err.to_string()),
        }
    }

    /// Sends backlog events in order until the window is full.
    pub(super) fn pump(&mut self, now: u64, step: u32, log: &SendLog) -> Result<(), String> {
        if matches!(self.producer, Sink::Cluster(_)) {
            return self.pump_cluster(now, step, log);
        }
        loop {
            if let Some(e) = self.pending.take()
                && !self.offer(e)?
            {
                return Ok(());
            }
            // The chunk's events straight into the SDK (not through
            // `pending`, whose store and reload cost the pacer 13%:
            // docs/decisions/0033).
            let (slot_start, n, mut j, mut left) = self.chunk;
            while left > 0 {
                let e = self.generator.next_event();
                log.record_event(&e, slot_start + arrivals::offset_ns(j, j + 1, n), step);
                j += 1;
                left -= 1;
                let sent = self.offer(e);
                if !matches!(sent, Ok(true)) {
                    self.chunk = (slot_start, n, j, left);
                    return sent.map(drop);
                }
            }
            self.chunk = (slot_start, n, j, left);
            let Some(slot) = self.backlog.front_mut() else { return Ok(()) };
            let (from, to) = (slot.done, (slot.done + CHUNK_EVENTS).min(slot.n));
            let Sink::Node(producer) = &self.producer else { unreachable!("a node's connection") };
            let start_seq = producer.next_seq();
            let intended_ns = slot.start_ns + arrivals::offset_ns(from, to, slot.n);
            // The chunk is known before its events can be acknowledged.
            let mut inner = lock(&self.shared.inner);
            let end_seq = start_seq + u64::from(to - from);
            inner.queue(0).push_back(Chunk { start_seq, end_seq, intended_ns, handed_ns: now, step });
            inner.send_lag.record(step, now.saturating_sub(intended_ns) / 1000, u64::from(to - from));
            drop(inner);
            self.chunk = (slot.start_ns, slot.n, from, to - from);
            slot.done = to;
            if slot.done == slot.n {
                self.backlog.pop_front();
            }
        }
    }

    /// `pump` for a cluster: a chunk's events go to several partitions,
    /// each with its own sequence numbers, known only as each is sent. So
    /// the connection's lock is held while a chunk's events are sent and
    /// each is put in its partition's queue as `send` numbers it: no
    /// acknowledgement can be read before its events are queued. (The ack
    /// reader waits for the lock a few microseconds at most: a chunk is
    /// `CHUNK_EVENTS` sends, none of which waits.)
    fn pump_cluster(&mut self, now: u64, step: u32, log: &SendLog) -> Result<(), String> {
        let Sink::Cluster(producer) = &mut self.producer else { unreachable!("a cluster's connection") };
        loop {
            let mut inner = lock(&self.shared.inner);
            let times = self.times;
            let mut offer = |e: HuntEvent, pending: &mut Option<HuntEvent>| match producer.send(e) {
                Ok((partition, seq)) => {
                    queue_event(inner.queue(partition), seq, times);
                    Ok(true)
                }
                Err(SendError::Full(e)) => {
                    *pending = Some(e);
                    Ok(false)
                }
                Err(SendError::Closed(_, err)) => Err(err.to_string()),
            };
            if let Some(e) = self.pending.take() {
                if !offer(e, &mut self.pending)? {
                    return Ok(());
                }
                self.sent += 1;
            }
            let (slot_start, n, mut j, mut left) = self.chunk;
            while left > 0 {
                let e = self.generator.next_event();
                log.record_event(&e, slot_start + arrivals::offset_ns(j, j + 1, n), step);
                j += 1;
                left -= 1;
                let sent = offer(e, &mut self.pending);
                if !matches!(sent, Ok(true)) {
                    self.chunk = (slot_start, n, j, left);
                    return sent.map(drop);
                }
                self.sent += 1;
            }
            self.chunk = (slot_start, n, j, left);
            let Some(slot) = self.backlog.front_mut() else { return Ok(()) };
            let (from, to) = (slot.done, (slot.done + CHUNK_EVENTS).min(slot.n));
            let intended_ns = slot.start_ns + arrivals::offset_ns(from, to, slot.n);
            inner.send_lag.record(step, now.saturating_sub(intended_ns) / 1000, u64::from(to - from));
            drop(inner);
            self.times = ChunkTimes { intended_ns, handed_ns: now, step };
            self.chunk = (slot.start_ns, slot.n, from, to - from);
            slot.done = to;
            if slot.done == slot.n {
                self.backlog.pop_front();
            }
        }
    }

    /// At the drain deadline: what is still unsent or unacknowledged gets
    /// its latency so far, so that the step's figures are lower bounds
    /// rather than silent about the worst events.
    pub(super) fn abandon(&mut self, now: u64, step: u32) {
        let mut inner = lock(&self.shared.inner);
        let ConnInner { chunks, latencies, .. } = &mut *inner;
        for c in chunks.iter_mut().flat_map(|q| q.drain(..)) {
            latencies.record(c.step, now.saturating_sub(c.intended_ns) / 1000, c.end_seq - c.start_seq);
        }
        // Generated or scheduled, never sent: each slot's middle.
        for slot in self.backlog.drain(..) {
            let left = slot.n - slot.done;
            if left > 0 {
                let at = slot.start_ns + arrivals::offset_ns(slot.done, slot.n, slot.n);
                latencies.record(step, now.saturating_sub(at) / 1000, u64::from(left));
            }
        }
        self.schedule = None;
        self.pending = None;
        self.chunk.3 = 0;
    }

    /// Whether everything of the step is sent and acknowledged.
    pub(super) fn drained(&self) -> bool {
        self.schedule.is_none()
            && self.backlog.is_empty()
            && self.pending.is_none()
            && self.chunk.3 == 0
            && self.producer.open_events() == 0
            && lock(&self.shared.inner).chunks.iter().all(VecDeque::is_empty)
    }
}

/// Reads a connection's acknowledgements: each chunk's events get
/// `now - intended` when the batch holding them is acknowledged.
pub(super) async fn read_acks(
    mut acks: AckSource,
    shared: Arc<ConnShared>,
    acked_total: Arc<AtomicU64>,
    clock: Clock,
    on_refused: impl Fn() + Send + 'static,
) {
    while let Some((space, ack)) = acks.next().await {
        let ack = match ack {
            Ok(a) => a,
            Err(ClientError::BatchRefused { first_seq, count, .. }) => {
                // The producer goes on; the refused events are counted, not timed.
                on_refused();
                let mut inner = lock(&shared.inner);
                let ConnInner { chunks, refused, .. } = &mut *inner;
                let Some(chunks) = chunks.get_mut(space as usize) else { continue };
                answered(chunks, first_seq + u64::from(count), |c, n| {
                    match refused.iter_mut().find(|r| r.0 == c.step) {
                        Some(r) => r.1 += n,
                        None => refused.push((c.step, n)),
                    }
                });
                continue;
            }
            Err(e) => {
                lock(&shared.inner).failed = Some(e.to_string());
                return;
            }
        };
        let now = clock.now_ns();
        let end = ack.first_seq + u64::from(ack.count);
        acked_total.fetch_add(u64::from(ack.count), Relaxed);
        let mut inner = lock(&shared.inner);
        let ConnInner { chunks, latencies, admitted, .. } = &mut *inner;
        // Setup batches answered before any chunk of their space: nothing to time.
        let Some(chunks) = chunks.get_mut(space as usize) else { continue };
        answered(chunks, end, |c, n| {
            latencies.record(c.step, now.saturating_sub(c.intended_ns) / 1000, n);
            admitted.record(c.step, now.saturating_sub(c.handed_ns) / 1000, n);
        });
    }
}

/// Puts the event numbered `seq` of the chunk timed `t` in its space's
/// queue: onto the last chunk there if it follows on, else as a chunk of
/// its own.
pub(super) fn queue_event(queue: &mut VecDeque<Chunk>, seq: u64, t: ChunkTimes) {
    if let Some(last) = queue.back_mut()
        && last.end_seq == seq
        && last.intended_ns == t.intended_ns
        && last.step == t.step
    {
        last.end_seq += 1;
        return;
    }
    queue.push_back(Chunk {
        start_seq: seq,
        end_seq: seq + 1,
        intended_ns: t.intended_ns,
        handed_ns: t.handed_ns,
        step: t.step,
    });
}

/// Takes the chunk events below sequence `end` off the front of `chunks`
/// (answers come in sequence order), calling `f` with each chunk and how
/// many of its events were answered; a chunk answered in part keeps the rest.
pub(super) fn answered(chunks: &mut VecDeque<Chunk>, end: u64, mut f: impl FnMut(&Chunk, u64)) {
    while let Some(c) = chunks.front_mut() {
        if c.start_seq >= end {
            break;
        }
        let upto = c.end_seq.min(end);
        f(c, upto - c.start_seq);
        if upto == c.end_seq {
            chunks.pop_front();
        } else {
            c.start_seq = upto;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_take_chunks_whole_or_in_part() {
        let chunk =
            |start_seq, end_seq| Chunk { start_seq, end_seq, intended_ns: start_seq, handed_ns: start_seq, step: 0 };
        let mut chunks: VecDeque<Chunk> = [chunk(1, 5), chunk(5, 9)].into();
        let mut seen = Vec::new();
        answered(&mut chunks, 7, |c, n| seen.push((c.start_seq, n)));
        assert_eq!(seen, [(1, 4), (5, 2)]);
        assert_eq!((chunks[0].start_seq, chunks[0].end_seq, chunks[0].intended_ns), (7, 9, 5));
        // Answers below every chunk (the setup's) take nothing.
        let mut none = VecDeque::from([chunk(10, 12)]);
        answered(&mut none, 10, |_, _| panic!("nothing is answered"));
        assert_eq!(none.len(), 1);
    }

    #[test]
    fn a_cluster_chunk_is_queued_per_partition_as_its_events_are_numbered() {
        let t = |intended_ns| ChunkTimes { intended_ns, handed_ns: intended_ns, step: 0 };
        let mut inner = ConnInner::default();
        // A chunk's events over partitions 0 and 2, numbered in each.
        for (partition, seq) in [(0, 5), (2, 1), (0, 6), (2, 2), (0, 7)] {
            queue_event(inner.queue(partition), seq, t(100));
        }
        // The next chunk follows on in partition 0's numbers, at another time.
        queue_event(inner.queue(0), 8, t(200));
        assert_eq!(inner.chunks.len(), 3);
        let spans = |q: &VecDeque<Chunk>| q.iter().map(|c| (c.start_seq, c.end_seq, c.intended_ns)).collect::<Vec<_>>();
        assert_eq!(spans(&inner.chunks[0]), [(5, 8, 100), (8, 9, 200)]);
        assert!(inner.chunks[1].is_empty());
        assert_eq!(spans(&inner.chunks[2]), [(1, 3, 100)]);
        // Partition 0 answered to 7: its first chunk in part.
        let mut seen = Vec::new();
        answered(&mut inner.chunks[0], 7, |c, n| seen.push((c.intended_ns, n)));
        assert_eq!(seen, [(100, 2)]);
    }
}
