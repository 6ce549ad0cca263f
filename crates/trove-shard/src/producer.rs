//! A producer's side: submit batches, collect their outcomes in order.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex};
use std::task::Waker;
use std::time::{Duration, Instant};

use trove_core::{Addressed, Game, Stamped};

/// Why a batch was not accepted. Nothing of it was queued.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SubmitError {
    /// A queue it needs is full: retry later. Memory stays bounded.
    Busy,
    /// More events than `EngineConfig::batch_events_max`, or none.
    BadSize,
    /// The engine is shutting down.
    ShuttingDown,
    /// The engine stopped acknowledging: its journal could not write or
    /// sync (`Producer::failure` says why). Nothing more is accepted.
    Failed,
    /// Cluster mode: the batch has an event for a shard (a partition) that
    /// this node does not own now (`Engine::install_shard`).
    NotOwner { shard: usize },
}

/// Why batches a producer waits for will never complete (`Producer::lost`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Lost {
    /// The engine failed: its journal could not write or sync
    /// (`Engine::failure`). Nothing more is accepted.
    Failed(String),
    /// Cluster mode: another node appended to the log of a shard the batch
    /// went to before it was durable here: this node was deposed. The
    /// batch was not acknowledged; the partition's new owner takes it.
    Deposed { shard: usize, reason: String },
    /// Cluster mode: the log of a shard the batch went to could not make it
    /// durable (no quorum, a timeout). Not acknowledged; resend later.
    Unavailable { shard: usize, reason: String },
}

impl Lost {
    /// The reason, for people.
    pub fn reason(&self) -> &str {
        match self {
            Lost::Failed(r) | Lost::Deposed { reason: r, .. } | Lost::Unavailable { reason: r, .. } => r,
        }
    }
}

/// Who sent a batch: the producer and the sequence number of its first
/// event (the others follow consecutively, in submission order).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Origin {
    pub producer: u64,
    pub first_seq: u64,
}

/// The outcomes of part of a submitted batch, from one shard.
#[derive(Debug)]
pub(crate) struct Part<G: Game> {
    pub ticket: u64,
    pub part: u32,
    /// Shared with the shard's retry window: one copy per part.
    pub outcomes: Arc<[G::Outcome]>,
    /// `event_index` relative to the part's events.
    pub broadcasts: Vec<Addressed<G::Broadcast>>,
    /// Sequences of the part's events that reused a sequence number
    /// already applied with another event (not applied), ascending.
    pub reused: Vec<u64>,
    /// When `submit` accepted the batch (for stage latencies).
    pub submitted_at: Instant,
    pub stamps: Stamps,
    /// Its batch was journaled: only the journal thread delivers it, once
    /// the batch is written (and synced, as the policy says).
    pub after_journal: bool,
}

/// When a batch passed the stages after its admission, for the stage
/// latencies (`/metrics`, `trove_stage_seconds`): one clock read per
/// drained batch, write and sync, shared by the parts they cover, never
/// one per event. A stage the batch did not pass (no journal, `never`,
/// a per-event mode's write) is `None`. For a batch split over shards,
/// each stage is its last part's.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stamps {
    /// The engine accepted it (`submit`; `Completed::submitted_at` is the
    /// producer's own reading, taken after `submit` returned).
    pub admitted: Option<Instant>,
    /// The shard applied it.
    pub applied: Option<Instant>,
    /// The journal's write of it returned.
    pub written: Option<Instant>,
    /// The fdatasync covering it returned.
    pub synced: Option<Instant>,
}

impl Stamps {
    /// Each stage at the later of the two: a batch is through a stage
    /// when its last part is.
    pub fn latest(self, other: Stamps) -> Stamps {
        Stamps {
            admitted: self.admitted.max(other.admitted),
            applied: self.applied.max(other.applied),
            written: self.written.max(other.written),
            synced: self.synced.max(other.synced),
        }
    }
}

/// What a producer submits through: the engine's admission, whichever
/// mode runs it. The producer holds only this, not the engine: admission
/// (`Sharded::submit`, `PerEvent::submit`) takes the queues, bounds and
/// flags it needs, and the engine (`engine.rs`, above every mode) ties
/// them together.
pub(crate) trait Intake<G: Game>: Send + Sync + std::fmt::Debug {
    /// Queues a batch; returns the positions of each part's events. Takes
    /// the events only on success.
    fn submit(
        &self,
        inbox: &Arc<Inbox<G>>,
        ticket: u64,
        origin: Origin,
        events: &mut Vec<Stamped<G::Event>>,
    ) -> Result<Vec<Vec<u32>>, SubmitError>;

    /// The largest batch `submit` takes (`EngineConfig::batch_events_max`).
    fn batch_events_max(&self) -> usize;

    /// Why the engine stopped acknowledging, if it did.
    fn failure(&self) -> Option<&str>;
}

/// Where shards put a producer's finished parts. One lock per part, never
/// per event.
#[derive(Debug)]
pub(crate) struct Inbox<G: Game> {
    parts: Mutex<InboxState<G>>,
    ready: Condvar,
}

#[derive(Debug)]
struct InboxState<G: Game> {
    parts: Vec<Part<G>>,
    waker: Option<Waker>,
    /// Some of this producer's batches will never complete: the engine
    /// failed (see `Intake::failure`; `Lost::Failed`), or, in cluster
    /// mode, a shard lost its partition (the first loss is kept).
    lost: Option<Lost>,
}

impl<G: Game> Inbox<G> {
    pub fn new() -> Self {
        Self { parts: Mutex::new(InboxState { parts: Vec::new(), waker: None, lost: None }), ready: Condvar::new() }
    }

    /// Tells the producer that batches it waits for will never complete,
    /// and why, and wakes it. The first loss is the one kept.
    pub fn lose(&self, lost: Lost) {
        let waker = {
            let mut state = self.parts.lock().unwrap_or_else(|e| e.into_inner());
            state.lost.get_or_insert(lost);
            state.waker.take()
        };
        self.ready.notify_all();
        if let Some(w) = waker {
            w.wake();
        }
    }

    pub fn deliver(&self, part: Part<G>) {
        // No acknowledgement before its durability point: the journal
        // thread stamps every part it releases as written first.
        assert!(
            !part.after_journal || part.stamps.written.is_some(),
            "a journaled batch's answer was delivered before the journal wrote it"
        );
        let waker = {
            let mut state = self.parts.lock().unwrap_or_else(|e| e.into_inner());
            state.parts.push(part);
            state.waker.take()
        };
        self.ready.notify_one();
        if let Some(w) = waker {
            w.wake();
        }
    }
}

/// A finished batch: one outcome per submitted event, in submission order.
#[derive(Debug)]
pub struct Completed<G: Game> {
    pub ticket: u64,
    pub outcomes: Vec<G::Outcome>,
    /// Broadcasts the batch caused; `event_index` indexes `outcomes`.
    pub broadcasts: Vec<Addressed<G::Broadcast>>,
    /// Sequence numbers of the batch's events that were not applied
    /// because the producer had already used them for other events (their
    /// fingerprints differ from the applied ones'), ascending; their
    /// outcomes answer nothing. Empty for a batch of new events and true
    /// retries. A server refuses such a batch (`sequence_reused`).
    pub reused: Vec<u64>,
    /// When `submit` accepted the batch.
    pub submitted_at: Instant,
    /// When it passed the later stages.
    pub stamps: Stamps,
}

#[derive(Debug)]
struct Pending<G: Game> {
    ticket: u64,
    events: usize,
    /// Per part: the positions of its events in the submitted batch.
    layout: Vec<Vec<u32>>,
    parts: Vec<Option<Part<G>>>,
    parts_missing: usize,
    submitted_at: Instant,
}

/// One producer's handle. Use it from one thread or task at a time; make
/// one per producer (per connection). Batches from one producer are applied
/// in submission order per world, and complete in submission order.
#[derive(Debug)]
pub struct Producer<G: Game> {
    engine: Arc<dyn Intake<G>>,
    inbox: Arc<Inbox<G>>,
    /// Journaled with every event, with its sequence number.
    id: u64,
    /// Sequence number of the next event submitted.
    next_seq: u64,
    next_ticket: u64,
    pending: VecDeque<Pending<G>>,
    /// Parts taken from the inbox, by ticket offset from the front.
    scratch: Vec<Part<G>>,
}

impl<G: Game> Producer<G> {
    pub(crate) fn new(engine: Arc<dyn Intake<G>>, id: u64, next_seq: u64) -> Self {
        Self {
            engine,
            inbox: Arc::new(Inbox::new()),
            id,
            next_seq,
            next_ticket: 0,
            pending: VecDeque::new(),
            scratch: Vec::new(),
        }
    }

    pub fn id(&self) -> u64 {
        self.id
    }

    /// The sequence number the next submitted event gets; a batch's events
    /// get consecutive numbers.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Queues a batch; returns its ticket. All or nothing: on success the
    /// events are moved out of `events` (left empty); on any error none was
    /// queued and `events` is as it was, ready to retry. With
    /// `ClockMode::Wall` the stamps are overwritten by the engine; with
    /// `Supplied` they are kept.
    pub fn submit(&mut self, events: &mut Vec<Stamped<G::Event>>) -> Result<u64, SubmitError> {
        if events.is_empty() || events.len() > self.engine.batch_events_max() {
            return Err(SubmitError::BadSize);
        }
        if self.next_seq.checked_add(events.len() as u64).is_none() {
            return Err(SubmitError::BadSize);
        }
        let ticket = self.next_ticket;
        let len = events.len();
        let origin = Origin { producer: self.id, first_seq: self.next_seq };
        let layout = self.engine.submit(&self.inbox, ticket, origin, events)?;
        self.next_ticket += 1;
        self.next_seq += len as u64;
        let parts = layout.len();
        self.pending.push_back(Pending {
            ticket,
            events: len,
            layout,
            parts: (0..parts).map(|_| None).collect(),
            parts_missing: parts,
            submitted_at: Instant::now(),
        });
        Ok(ticket)
    }

    /// Like `submit`, with the producer's own sequence numbers: the events
    /// get `first_seq, first_seq + 1, ...`. A producer that resends events
    /// it is unsure about (after a reconnect, say) resends them with their
    /// original numbers; those already applied are answered with their
    /// original outcomes (while the engine keeps them, see
    /// `EngineConfig::dedup_window_events`) and are not applied again.
    /// Sharded mode only; the baseline modes apply whatever they are given.
    pub fn submit_at(&mut self, first_seq: u64, events: &mut Vec<Stamped<G::Event>>) -> Result<u64, SubmitError> {
        if first_seq == 0 {
            return Err(SubmitError::BadSize);
        }
        let next = self.next_seq;
        self.next_seq = first_seq;
        let result = self.submit(events);
        self.next_seq = if result.is_ok() { next.max(self.next_seq) } else { next };
        result
    }

    /// Batches submitted and not yet returned by `try_complete`.
    pub fn in_flight(&self) -> usize {
        self.pending.len()
    }

    /// The oldest batch, if all its outcomes are in. Never blocks.
    pub fn try_complete(&mut self) -> Option<Completed<G>> {
        if self.pending.front().is_none_or(|p| p.parts_missing > 0) {
            self.collect();
        }
        let front = self.pending.front()?;
        if front.parts_missing > 0 {
            return None;
        }
        let p = self.pending.pop_front()?;
        Some(assemble(p))
    }

    /// Why the engine stopped acknowledging, if it did (its journal could
    /// not write or sync). Batches still in flight then never complete, and
    /// every later `submit` answers `SubmitError::Failed`.
    pub fn failure(&self) -> Option<&str> {
        self.engine.failure()
    }

    /// Why batches in flight will never complete, if some will not: the
    /// engine's failure first, else the first shard loss this producer
    /// was told of (cluster mode).
    pub fn lost(&self) -> Option<Lost> {
        if let Some(reason) = self.engine.failure() {
            return Some(Lost::Failed(reason.to_string()));
        }
        let state = self.inbox.parts.lock().unwrap_or_else(|e| e.into_inner());
        state.lost.clone().filter(|l| !matches!(l, Lost::Failed(_)))
    }

    /// Like `try_complete`, waiting up to `timeout` for the oldest batch.
    /// `None` at once if the engine failed (see `failure`).
    pub fn complete_timeout(&mut self, timeout: Duration) -> Option<Completed<G>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(c) = self.try_complete() {
                return Some(c);
            }
            if self.pending.is_empty() {
                return None;
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            let state = self.inbox.parts.lock().unwrap_or_else(|e| e.into_inner());
            if state.lost.is_some() && state.parts.is_empty() {
                return None;
            }
            if state.parts.is_empty() {
                let _unused = self.inbox.ready.wait_timeout(state, deadline - now);
            }
        }
    }

    /// Registers a waker to be woken when outcomes arrive (for async
    /// callers; the tokio I/O layer uses this).
    pub fn register_waker(&self, waker: &Waker) {
        let mut state = self.inbox.parts.lock().unwrap_or_else(|e| e.into_inner());
        if state.parts.is_empty() && state.lost.is_none() {
            state.waker = Some(waker.clone());
        } else {
            waker.wake_by_ref();
        }
    }

    /// Moves delivered parts into their pending batches.
    fn collect(&mut self) {
        {
            let mut state = self.inbox.parts.lock().unwrap_or_else(|e| e.into_inner());
            std::mem::swap(&mut state.parts, &mut self.scratch);
        }
        let first = self.pending.front().map_or(0, |p| p.ticket);
        for part in self.scratch.drain(..) {
            let p = &mut self.pending[(part.ticket - first) as usize];
            debug_assert_eq!(p.ticket, part.ticket);
            let slot = &mut p.parts[part.part as usize];
            debug_assert!(slot.is_none(), "part delivered twice");
            *slot = Some(part);
            p.parts_missing -= 1;
        }
    }
}

/// Puts a batch's parts back in submission order.
fn assemble<G: Game>(p: Pending<G>) -> Completed<G> {
    let mut parts = p.parts.into_iter().map(|x| x.expect("every part arrived"));
    if p.layout.len() == 1 {
        // One part (the common case with one shard, and in per-event modes):
        // its positions are 0..n, nothing to reorder.
        let part = parts.next().expect("one part");
        return Completed {
            ticket: p.ticket,
            outcomes: part.outcomes.to_vec(),
            broadcasts: part.broadcasts,
            reused: part.reused,
            submitted_at: p.submitted_at,
            stamps: part.stamps,
        };
    }
    let mut outcomes: Vec<Option<G::Outcome>> = vec![None; p.events];
    let mut broadcasts = Vec::new();
    let mut reused = Vec::new();
    let mut stamps = Stamps::default();
    for (part, positions) in parts.zip(&p.layout) {
        reused.extend_from_slice(&part.reused);
        stamps = stamps.latest(part.stamps);
        for (&o, &at) in part.outcomes.iter().zip(positions) {
            outcomes[at as usize] = Some(o);
        }
        for mut b in part.broadcasts {
            b.event_index = positions[b.event_index as usize];
            broadcasts.push(b);
        }
    }
    // Broadcasts of different shards interleave in event order.
    broadcasts.sort_by_key(|b| b.event_index);
    reused.sort_unstable();
    Completed {
        ticket: p.ticket,
        outcomes: outcomes.into_iter().map(|o| o.expect("one outcome per event")).collect(),
        broadcasts,
        reused,
        submitted_at: p.submitted_at,
        stamps,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use trove_hunt::TreasureHunt;

    use super::*;

    fn part(after_journal: bool, written: Option<Instant>) -> Part<TreasureHunt> {
        Part {
            ticket: 0,
            part: 0,
            outcomes: Arc::from(Vec::new()),
            broadcasts: Vec::new(),
            reused: Vec::new(),
            submitted_at: Instant::now(),
            stamps: Stamps { written, ..Stamps::default() },
            after_journal,
        }
    }

    #[test]
    fn a_journaled_answer_is_delivered_once_written_and_others_at_once() {
        let inbox = Inbox::<TreasureHunt>::new();
        inbox.deliver(part(false, None));
        inbox.deliver(part(true, Some(Instant::now())));
        assert_eq!(inbox.parts.lock().unwrap().parts.len(), 2);
    }

    #[test]
    #[should_panic(expected = "before the journal wrote it")]
    fn a_journaled_answer_is_never_delivered_before_the_journal_wrote_it() {
        Inbox::<TreasureHunt>::new().deliver(part(true, None));
    }
}
