//! A producer connection of the load generator: its arrivals turned into
//! events handed to the SDK (`Conn`, driven by the pacer), and its
//! acknowledgements read back and timed against each event's intended
//! send time (`read_acks`).

use std::collections::VecDeque;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex, MutexGuard};

use trove_client::{ClientError, Producer, SendError};
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
    pub(super) chunks: VecDeque<Chunk>,
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

pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The producer side of one connection, driven by the pacer thread.
pub(super) struct Conn {
    pub(super) producer: Producer<TreasureHunt>,
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
        match self.producer.send(e) {
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
                log.record(e.hunt, slot_start + arrivals::offset_ns(j, j + 1, n), step);
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
            let start_seq = self.producer.next_seq();
            let intended_ns = slot.start_ns + arrivals::offset_ns(from, to, slot.n);
            // The chunk is known before its events can be acknowledged.
            let mut inner = lock(&self.shared.inner);
            let end_seq = start_seq + u64::from(to - from);
            inner.chunks.push_back(Chunk { start_seq, end_seq, intended_ns, handed_ns: now, step });
            inner.send_lag.record(step, now.saturating_sub(intended_ns) / 1000, u64::from(to - from));
            drop(inner);
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
        for c in chunks.drain(..) {
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
            && lock(&self.shared.inner).chunks.is_empty()
    }
}

/// Reads a connection's acknowledgements: each chunk's events get
/// `now - intended` when the batch holding them is acknowledged.
pub(super) async fn read_acks(
    mut acks: trove_client::Acks<TreasureHunt>,
    shared: Arc<ConnShared>,
    acked_total: Arc<AtomicU64>,
    clock: Clock,
    on_refused: impl Fn() + Send + 'static,
) {
    while let Some(ack) = acks.next().await {
        let ack = match ack {
            Ok(a) => a,
            Err(ClientError::BatchRefused { first_seq, count, .. }) => {
                // The producer goes on; the refused events are counted, not timed.
                on_refused();
                let mut inner = lock(&shared.inner);
                let ConnInner { chunks, refused, .. } = &mut *inner;
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
        answered(chunks, end, |c, n| {
            latencies.record(c.step, now.saturating_sub(c.intended_ns) / 1000, n);
            admitted.record(c.step, now.saturating_sub(c.handed_ns) / 1000, n);
        });
    }
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
}
