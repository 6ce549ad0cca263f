//! One shard's decisions, with no I/O: what the shard thread (or a
//! simulator) drives.
//!
//! A [`ShardCore`] owns a shard's `GameState`, its producers' dedup state,
//! its publish staging, its outcome buffers and its rejection counts. Its
//! caller drains work parts from wherever they come from, and per drained
//! batch calls, in this order:
//!
//! 1. [`ShardCore::apply`] with the parts and the engine time: retries are
//!    taken out (answered, never applied twice), the rest is stamped and
//!    applied as one batch;
//! 2. [`ShardCore::publish`] (optional) to hand the batch's updates to a
//!    [`Hub`]'s subscribers;
//! 3. [`ShardCore::hand_off`]: one [`Answer`] per part, in drain order,
//!    either to deliver now ([`Handoff::Deliver`], no journal) or packed
//!    with the batch's [`JournalBatch`] ([`Handoff::Journal`]), to be
//!    released only once the journal has made it durable.
//!
//! and between batches, [`ShardCore::snapshot_due`] /
//! [`ShardCore::snapshot`] with a monotonic `now` the caller reads.
//!
//! The core reads no clock, owns no channel, thread or file: the engine
//! time and `now` come in as arguments, timings are measured by the caller
//! around these calls, and what must happen comes back as values
//! (docs/decisions/0018-shard-core.md). A simulator drives it on one
//! thread with a simulated clock, disk and network.
//!
//! Invariants, asserted: a part's new events continue its producer's
//! sequence strictly upward (retries are a prefix, taken out); every part
//! is answered with exactly one outcome per submitted event, and every
//! outcome of the batch goes to exactly one part; a journaled core never
//! answers but through its journal batch; a failed core applies nothing.

use std::sync::Arc;
use std::time::{Duration, Instant};

use trove_core::{Addressed, Game, GameState, Outcomes, Stamped, WorldId, record_fingerprints};

use crate::dedup::{AppliedPart, Dedup, Retry};
use crate::journaled::{PendingSnapshot, Source, snapshot_of};
use crate::producer::Origin;
use crate::updates::{Hub, Staging};

/// What a shard core is started with.
#[derive(Clone, Copy, Debug)]
pub struct CoreConfig {
    /// Worlds the shard holds at most (`EngineConfig::worlds_max`).
    pub worlds_max: usize,
    /// Outcomes kept per producer to answer retries with
    /// (`EngineConfig::dedup_window_events`).
    pub dedup_window_events: usize,
    /// Producers remembered (`EngineConfig::dedup_producers_max`).
    pub dedup_producers_max: usize,
    /// Whether answers wait for the journal ([`Handoff::Journal`]).
    pub journaled: bool,
    /// How often a journaled shard snapshots (`None`: only when asked).
    pub snapshot_interval: Option<Duration>,
}

/// One producer batch's part for this shard, as drained: its events (in
/// sequence order), where they sit in the batch, and `reply`, the caller's
/// token for where the answer goes (the core never looks inside it).
#[derive(Debug)]
pub struct WorkPart<G: Game, R> {
    pub reply: R,
    origin: Origin,
    /// The part's positions in its batch (its events' sequence offsets
    /// from `origin.first_seq`); `None` for a whole batch.
    positions: Option<Arc<Vec<u32>>>,
    events: Vec<Stamped<G::Event>>,
    /// The fingerprint of each event as submitted (retried ones first):
    /// what tells a retry from a reused sequence number. Computed by
    /// whoever builds the part (the submitting thread), not the shard.
    fingerprints: Arc<[u32]>,
    /// Sequences of the part's first events that were retries of events
    /// already applied (filled by `apply`).
    retried: Vec<u64>,
}

impl<G: Game, R> WorkPart<G, R> {
    /// A part of producer `origin.producer`'s batch. `positions`: each
    /// event's offset from `origin.first_seq`, strictly ascending (`None`:
    /// 0, 1, 2, ...). Computes the events' fingerprints, so call it on the
    /// submitting side.
    pub fn new(reply: R, origin: Origin, positions: Option<Arc<Vec<u32>>>, events: Vec<Stamped<G::Event>>) -> Self {
        assert!(positions.as_ref().is_none_or(|p| p.len() == events.len()), "one position per event");
        let fingerprints = record_fingerprints(events.iter().map(|e| &e.event));
        Self { reply, origin, positions, events, fingerprints, retried: Vec::new() }
    }

    /// The events still to apply (all of them before `apply`).
    pub fn events(&self) -> &[Stamped<G::Event>] {
        &self.events
    }

    pub fn origin(&self) -> Origin {
        self.origin
    }

    /// The producer sequence of the part's `k`-th (remaining) event.
    #[inline]
    fn seq(&self, k: usize) -> u64 {
        self.origin.first_seq + self.positions.as_ref().map_or(k as u64, |p| u64::from(p[k]))
    }
}

/// A part's answer: one outcome per event of the part as submitted
/// (retries included, with their original outcomes), and `reply` back.
#[derive(Debug)]
pub struct Answer<G: Game, R> {
    pub reply: R,
    /// Shared with the shard's retry window: one copy per part.
    pub outcomes: Arc<[G::Outcome]>,
    /// `event_index` relative to the part's events as submitted.
    pub broadcasts: Vec<Addressed<G::Broadcast>>,
    /// Sequences of the part's events that reused a sequence number
    /// already applied with another event (not applied), ascending.
    pub reused: Vec<u64>,
}

/// A drained batch's journal record, and the answers that wait for it.
#[derive(Debug)]
#[must_use = "a journal batch holds acknowledgements: write it, then release them"]
pub struct JournalBatch<G: Game, R> {
    /// The batch's new events (retries taken out) as the producers' parts
    /// held them, in apply order, one per source: uncopied.
    pub parts: Vec<Vec<Stamped<G::Event>>>,
    /// The engine time every event was stamped with, or `None` when they
    /// carry their own (`apply` was given no time).
    pub time_us: Option<u64>,
    pub sources: Vec<Source>,
    /// Every part's answer, in drain order (parts of retries only
    /// included): released only once `parts` is durable, never before.
    pub waiting: Vec<Answer<G, R>>,
}

/// What must happen with a drained batch's answers.
#[derive(Debug)]
#[must_use = "answers must be delivered, or journaled and then delivered"]
pub enum Handoff<G: Game, R> {
    /// No journal: deliver these now, in order.
    Deliver(Vec<Answer<G, R>>),
    /// Journaled: write the batch; its answers are released at its
    /// durability point. A journaled core answers only this way.
    Journal(JournalBatch<G, R>),
}

/// Counts of one applied batch, for the caller's metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Applied {
    /// New events applied.
    pub events: usize,
    /// Events answered as retries (not applied).
    pub retried: usize,
}

/// The core has failed (`ShardCore::fail`): it applies nothing more; the
/// caller tells the parts' producers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Failed;

/// A shard's state as of the end of a batch, encoded for a snapshot (its
/// worlds, its producers' last sequences and kept outcomes): the journal
/// writes it, and drops the segments it covers.
pub struct Snapshot<G: Game>(pub(crate) PendingSnapshot<G>);

impl<G: Game> Snapshot<G> {
    /// The snapshot file's bytes (`docs/journal.md`), for shard `shard`
    /// of a journal whose next batch is `next_batch`: what a journal
    /// writes, real or simulated.
    pub fn encode(self, shard: u32, next_batch: u64) -> Vec<u8> {
        crate::journaled::snapshot_bytes(self.0, shard, next_batch)
    }
}

impl<G: Game> std::fmt::Debug for Snapshot<G> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshot").finish_non_exhaustive()
    }
}

/// One shard's state and decisions; see the module docs.
pub struct ShardCore<G: Game> {
    state: GameState<G>,
    /// Every producer's last applied sequence and recent outcomes: retries
    /// are answered, never applied twice.
    producers: Dedup<G::Outcome>,
    journaled: bool,
    snapshot_interval: Option<Duration>,
    /// The caller's `now` at the last snapshot (its epoch at first).
    last_snapshot: Duration,
    /// The latest engine time stamped: stamps never go backwards.
    time_us: u64,
    /// The time the batch in hand was stamped with, if `apply` stamped it.
    stamped_us: Option<u64>,
    /// The drain buffer: stamped copies of the batch's new events. It
    /// stays here, warm for the next drain: the journal gets the parts'
    /// own vectors. (A buffer that went to the journal thread and came
    /// back was cold: that cost the shard 7-11 ns per event;
    /// docs/decisions/0029.)
    batch: Vec<Stamped<G::Event>>,
    out: Outcomes<G::Outcome, G::Broadcast>,
    staging: Staging<G>,
    /// Rejections by `G::REJECTION_NAMES` index, since the last take.
    rejections: Vec<u64>,
    /// A batch is applied and not yet handed off.
    in_hand: bool,
    failed: bool,
}

impl<G: Game> std::fmt::Debug for ShardCore<G> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardCore")
            .field("journaled", &self.journaled)
            .field("time_us", &self.time_us)
            .field("in_hand", &self.in_hand)
            .field("failed", &self.failed)
            .finish_non_exhaustive()
    }
}

impl<G: Game> ShardCore<G> {
    /// An empty shard.
    pub fn new(config: CoreConfig) -> Self {
        let producers = Dedup::new(config.dedup_window_events, config.dedup_producers_max);
        Self::with_state(GameState::new(config.worlds_max), producers, config)
    }

    /// A shard that starts from a recovered state and dedup history.
    pub(crate) fn with_state(state: GameState<G>, producers: Dedup<G::Outcome>, config: CoreConfig) -> Self {
        // Stamps continue from the state's last time: a partition that
        // moves to a node whose clock is behind never goes back in time.
        let time_us = state.time_us();
        Self {
            state,
            producers,
            journaled: config.journaled,
            snapshot_interval: config.snapshot_interval,
            last_snapshot: Duration::ZERO,
            time_us,
            stamped_us: None,
            batch: Vec::new(),
            out: Outcomes::default(),
            staging: Staging::default(),
            rejections: vec![0; G::REJECTION_NAMES.len()],
            in_hand: false,
            failed: false,
        }
    }

    /// The shard's state: everything applied so far.
    pub fn state(&self) -> &GameState<G> {
        &self.state
    }

    /// Per-world state hashes, ascending by world id.
    pub fn world_hashes(&self) -> Vec<(WorldId, u64)> {
        self.state.world_hashes()
    }

    /// The highest sequence of `producer` applied here (0: none known).
    pub fn last_seq(&self, producer: u64) -> u64 {
        self.producers.last_seqs().into_iter().find(|&(p, _)| p == producer).map_or(0, |(_, s)| s)
    }

    /// Fail-stop: nothing more can be made durable (the journal failed).
    /// From now on `apply` refuses every batch.
    pub fn fail(&mut self) {
        self.failed = true;
    }

    pub fn failed(&self) -> bool {
        self.failed
    }

    /// Whether answers wait for a log ([`Handoff::Journal`]).
    pub fn journaled(&self) -> bool {
        self.journaled
    }

    /// Takes retries out of `work` and applies the rest as one batch.
    ///
    /// `time_us`: `Some(now)` stamps every new event with the engine time
    /// `now` (or the latest time stamped, if later: stamps never go
    /// backwards); `None` keeps the events' own stamps. On `Err(Failed)`
    /// nothing was applied and `work` is as it was.
    pub fn apply<R>(&mut self, work: &mut [WorkPart<G, R>], time_us: Option<u64>) -> Result<Applied, Failed> {
        assert!(!self.in_hand, "the previous batch was not handed off");
        if self.failed {
            return Err(Failed);
        }
        // Retries: a producer's events reach the shard in increasing
        // sequence order, so the retried events of a part are a prefix of
        // it. Take them out; they are answered by `hand_off`.
        self.producers.next_drain();
        let mut retried_total = 0;
        for w in work.iter_mut() {
            debug_assert!(w.retried.is_empty(), "a part is applied once");
            debug_assert!(
                w.positions.as_ref().is_none_or(|p| p.windows(2).all(|s| s[0] < s[1])),
                "a part's sequences do not continue strictly upward"
            );
            let log = self.producers.log(w.origin.producer);
            #[cfg_attr(not(feature = "planted"), allow(unused_mut))]
            let mut retried = (0..w.events.len()).take_while(|&k| w.seq(k) <= log.last_seq).count();
            // Planted (the simulator's tests only; compiled out otherwise):
            // a retry of the producer's last applied event is applied again.
            #[cfg(feature = "planted")]
            let planted_again = retried > 0
                && w.seq(retried - 1) == log.last_seq
                && trove_journal::planted::on(trove_journal::planted::Planted::ApplyRetryTwice);
            #[cfg(feature = "planted")]
            if planted_again {
                retried -= 1;
                log.last_seq -= 1;
            }
            if retried > 0 {
                w.retried = (0..retried).map(|k| w.seq(k)).collect();
                w.events.drain(..retried);
                match &mut w.positions {
                    Some(p) => w.positions = Some(Arc::new(p[retried..].to_vec())),
                    None => w.origin.first_seq += retried as u64,
                }
                retried_total += retried;
            }
            if let Some(k) = w.events.len().checked_sub(1) {
                // The part's new events continue the producer's sequence
                // strictly upward (two reads per part: cheap enough for
                // release builds).
                let (first, last) = (w.seq(0), w.seq(k));
                assert!(
                    first > log.last_seq && last >= first,
                    "producer {}: sequence {first}..={last} does not continue after {}",
                    w.origin.producer,
                    log.last_seq
                );
                log.last_seq = last;
            }
        }

        // Stamp into the drain buffer.
        debug_assert!(self.batch.is_empty() && self.out.direct.is_empty());
        self.stamped_us = time_us.map(|now| {
            self.time_us = self.time_us.max(now);
            self.time_us
        });
        for w in work.iter() {
            match self.stamped_us {
                Some(time_us) => self.batch.extend(w.events.iter().map(|e| Stamped { time_us, event: e.event })),
                None => self.batch.extend_from_slice(&w.events),
            }
        }
        self.state.apply(&self.batch, &mut self.out);
        assert_eq!(self.out.direct.len(), self.batch.len(), "one outcome per event");
        self.in_hand = true;
        Ok(Applied { events: self.batch.len(), retried: retried_total })
    }

    /// Publishes the batch in hand to `hub`'s subscribers (before its
    /// answers go out). `ingested_at`: when its first part was admitted,
    /// for the update-latency histogram.
    pub fn publish(&mut self, hub: &Hub<G>, ingested_at: Instant) {
        assert!(self.in_hand, "publish follows apply");
        hub.publish(&self.batch, &self.out, &mut self.staging, ingested_at);
    }

    /// Answers every part of the batch in hand, in drain order, and
    /// empties `work`: the parts `apply` was given, as it left them.
    pub fn hand_off<R>(&mut self, work: &mut Vec<WorkPart<G, R>>) -> Handoff<G, R> {
        assert!(self.in_hand, "hand_off follows apply");
        self.in_hand = false;
        for o in &self.out.direct {
            if let Some(r) = G::rejection(o) {
                self.rejections[r] += 1;
            }
        }
        let journaled = self.journaled;
        let mut answers = Vec::with_capacity(work.len());
        let mut sources = Vec::with_capacity(if journaled { work.len() } else { 0 });
        let mut parts = Vec::with_capacity(sources.capacity());
        let mut offset = 0;
        let mut next_broadcast = 0;
        for w in work.drain(..) {
            let end = offset + w.events.len();
            let retried = w.retried.len();
            let mut reused = Vec::new();
            let outcomes: Arc<[G::Outcome]> = if retried == 0 {
                Arc::from(&self.out.direct[offset..end])
            } else {
                let log = self.producers.log(w.origin.producer);
                let mut v: Vec<G::Outcome> = Vec::with_capacity(retried + w.events.len());
                for (&seq, &fingerprint) in w.retried.iter().zip(w.fingerprints.iter()) {
                    v.push(match log.retry(seq, fingerprint) {
                        Retry::Original(o) => o,
                        Retry::Forgotten => G::duplicate_outcome(),
                        // Never applied: the batch is refused.
                        Retry::Reused => {
                            reused.push(seq);
                            G::duplicate_outcome()
                        }
                    });
                }
                v.extend_from_slice(&self.out.direct[offset..end]);
                v.into()
            };
            // Exactly one outcome per event submitted.
            assert_eq!(outcomes.len(), w.fingerprints.len(), "one outcome per event of a part");
            self.producers.record(
                w.origin.producer,
                AppliedPart {
                    first_seq: w.origin.first_seq,
                    positions: w.positions.clone(),
                    outcomes: outcomes.clone(),
                    fingerprints: Some(w.fingerprints.clone()),
                    skip: retried,
                },
            );
            let mut broadcasts = Vec::new();
            while let Some(b) = self.out.broadcasts.get(next_broadcast) {
                if b.event_index as usize >= end {
                    break;
                }
                let mut b = b.clone();
                b.event_index = b.event_index - offset as u32 + retried as u32;
                broadcasts.push(b);
                next_broadcast += 1;
            }
            if journaled && !w.events.is_empty() {
                sources.push(Source { origin: w.origin, positions: w.positions, len: w.events.len() });
                parts.push(w.events);
            }
            answers.push(Answer { reply: w.reply, outcomes, broadcasts, reused });
            offset = end;
        }
        // Every outcome and broadcast of the batch went to one part.
        assert_eq!(offset, self.out.direct.len(), "every outcome answers one part");
        assert_eq!(next_broadcast, self.out.broadcasts.len(), "every broadcast goes to one part");
        self.out.clear();
        self.batch.clear();
        if journaled {
            Handoff::Journal(JournalBatch { parts, time_us: self.stamped_us, sources, waiting: answers })
        } else {
            Handoff::Deliver(answers)
        }
    }

    /// Rejections counted since the last call, by `G::REJECTION_NAMES`
    /// index (zeros left out); the counts restart from zero.
    pub fn take_rejections(&mut self) -> impl Iterator<Item = (usize, u64)> + '_ {
        self.rejections.iter_mut().enumerate().filter(|(_, n)| **n > 0).map(|(r, n)| (r, std::mem::take(n)))
    }

    /// Whether a periodic snapshot is due at `now` (the caller's monotonic
    /// time, from the same epoch as every `now` it passes; the core starts
    /// at zero). Only a journaled core with an interval has any.
    pub fn snapshot_due(&self, now: Duration) -> bool {
        self.journaled && self.snapshot_interval.is_some_and(|every| now.saturating_sub(self.last_snapshot) >= every)
    }

    /// The shard's state for a snapshot, between batches; the next
    /// periodic one is due an interval after `now`.
    pub fn snapshot(&mut self, now: Duration) -> Snapshot<G> {
        assert!(!self.in_hand, "a snapshot is taken between batches");
        self.last_snapshot = now;
        Snapshot(snapshot_of(&self.state, &self.producers))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use trove_core::Stamped;
    use trove_hunt::{HuntConfig, HuntEvent, HuntOutcome, Reject, TreasureHunt};

    use super::*;

    type Hunt = TreasureHunt;
    const HUNT: u32 = 7;

    fn core(journaled: bool) -> ShardCore<Hunt> {
        ShardCore::new(CoreConfig {
            worlds_max: 16,
            dedup_window_events: 1024,
            dedup_producers_max: 16,
            journaled,
            snapshot_interval: Some(Duration::from_secs(60)),
        })
    }

    fn create() -> HuntEvent {
        let config = HuntConfig {
            width: 16,
            height: 16,
            seed: 1,
            treasures_per_round: 4,
            value_min: 1,
            value_max: 10,
            dig_cooldown_ms: 0,
            step_max: 4,
            players_max: 100,
        };
        HuntEvent::create(HUNT, config)
    }

    /// A part of `producer`'s batch from `first_seq`, answered to `reply`.
    fn part(reply: u32, producer: u64, first_seq: u64, events: &[HuntEvent]) -> WorkPart<Hunt, u32> {
        let events = events.iter().map(|&event| Stamped { time_us: 5, event }).collect();
        WorkPart::new(reply, Origin { producer, first_seq }, None, events)
    }

    fn deliver(h: Handoff<Hunt, u32>) -> Vec<Answer<Hunt, u32>> {
        match h {
            Handoff::Deliver(answers) => answers,
            Handoff::Journal(_) => panic!("a core without a journal answers at once"),
        }
    }

    fn journal(h: Handoff<Hunt, u32>) -> JournalBatch<Hunt, u32> {
        match h {
            Handoff::Journal(batch) => batch,
            Handoff::Deliver(_) => panic!("a journaled core answers only through its journal batch"),
        }
    }

    /// Applies `work` as one drained batch and hands it off.
    fn drain(core: &mut ShardCore<Hunt>, mut work: Vec<WorkPart<Hunt, u32>>) -> (Applied, Handoff<Hunt, u32>) {
        let applied = core.apply(&mut work, Some(1_000)).expect("not failed");
        let handoff = core.hand_off(&mut work);
        assert!(work.is_empty(), "hand_off takes every part");
        (applied, handoff)
    }

    fn joined(o: &HuntOutcome) -> bool {
        matches!(o, HuntOutcome::Joined { .. })
    }

    #[test]
    fn parts_are_answered_in_drain_order_with_one_outcome_per_event() {
        let mut c = core(false);
        let work =
            vec![part(10, 1, 1, &[create(), HuntEvent::join(HUNT, 1)]), part(11, 2, 1, &[HuntEvent::join(HUNT, 1)])];
        let (applied, handoff) = drain(&mut c, work);
        assert_eq!(applied, Applied { events: 3, retried: 0 });
        let answers = deliver(handoff);
        assert_eq!(answers.iter().map(|a| a.reply).collect::<Vec<_>>(), [10, 11]);
        assert_eq!(answers[0].outcomes.len(), 2);
        assert!(matches!(answers[0].outcomes[0], HuntOutcome::Created { .. }));
        assert!(joined(&answers[0].outcomes[1]));
        // Applied after the first part: player 1 is in already.
        assert_eq!(*answers[1].outcomes, [HuntOutcome::Rejected { reason: Reject::AlreadyJoined }]);
        assert!(answers.iter().all(|a| a.reused.is_empty()));
        assert_eq!(c.take_rejections().collect::<Vec<_>>(), [(Reject::AlreadyJoined as usize - 1, 1)]);
        assert_eq!(c.take_rejections().count(), 0, "counts restart after a take");
        assert_eq!((c.last_seq(1), c.last_seq(2)), (2, 1));
    }

    #[test]
    fn a_retry_in_the_same_drain_gets_the_original_outcomes_and_is_not_applied() {
        let batch = [create(), HuntEvent::join(HUNT, 1), HuntEvent::join(HUNT, 2)];
        let mut once = core(false);
        let _ = drain(&mut once, vec![part(0, 1, 1, &batch)]);

        let mut c = core(false);
        let (applied, handoff) = drain(&mut c, vec![part(0, 1, 1, &batch), part(1, 1, 1, &batch)]);
        assert_eq!(applied, Applied { events: 3, retried: 3 });
        let answers = deliver(handoff);
        assert_eq!(answers[0].outcomes, answers[1].outcomes, "the retry answers with the originals");
        assert!(joined(&answers[1].outcomes[2]));
        assert_eq!(c.world_hashes(), once.world_hashes(), "applied once");
    }

    #[test]
    fn a_retry_in_a_later_drain_gets_the_original_outcomes_and_new_events_apply() {
        let mut c = core(false);
        let first = deliver(drain(&mut c, vec![part(0, 1, 1, &[create(), HuntEvent::join(HUNT, 1)])]).1);
        // Resent from sequence 2 with one new event after the retried one.
        let (applied, handoff) =
            drain(&mut c, vec![part(1, 1, 2, &[HuntEvent::join(HUNT, 1), HuntEvent::join(HUNT, 3)])]);
        assert_eq!(applied, Applied { events: 1, retried: 1 });
        let answers = deliver(handoff);
        assert_eq!(answers[0].outcomes[0], first[0].outcomes[1], "the original, not AlreadyJoined");
        assert!(joined(&answers[0].outcomes[1]), "the new event applied");
        assert_eq!(c.last_seq(1), 3);
        // The same again: everything is a retry now, nothing applies.
        let again =
            deliver(drain(&mut c, vec![part(2, 1, 2, &[HuntEvent::join(HUNT, 1), HuntEvent::join(HUNT, 3)])]).1);
        assert_eq!(again[0].outcomes, answers[0].outcomes);
    }

    #[test]
    fn a_reused_sequence_is_reported_and_not_applied() {
        let mut c = core(false);
        let _ = drain(&mut c, vec![part(0, 1, 1, &[create(), HuntEvent::join(HUNT, 1)])]);
        let before = c.world_hashes();
        // Sequence 2 again, with another event.
        let (applied, handoff) = drain(&mut c, vec![part(1, 1, 2, &[HuntEvent::join(HUNT, 9)])]);
        assert_eq!(applied, Applied { events: 0, retried: 1 });
        let answers = deliver(handoff);
        assert_eq!(answers[0].reused, [2]);
        assert_eq!(*answers[0].outcomes, [Hunt::duplicate_outcome()]);
        assert_eq!(c.world_hashes(), before, "not applied");
    }

    #[test]
    fn a_split_part_is_deduplicated_by_its_positions() {
        let mut c = core(false);
        let _ = drain(&mut c, vec![part(0, 1, 1, &[create()])]);
        // Events at sequences 1 (retry), 3 and 6 of producer 1's batch.
        let events = [create(), HuntEvent::join(HUNT, 1), HuntEvent::join(HUNT, 2)]
            .map(|event| Stamped { time_us: 0, event })
            .to_vec();
        let split = WorkPart::new(0, Origin { producer: 1, first_seq: 1 }, Some(Arc::new(vec![0, 2, 5])), events);
        let (applied, handoff) = drain(&mut c, vec![split]);
        assert_eq!(applied, Applied { events: 2, retried: 1 });
        let answers = deliver(handoff);
        assert!(matches!(answers[0].outcomes[0], HuntOutcome::Created { .. }), "the retry's original");
        assert_eq!(c.last_seq(1), 6);
    }

    #[test]
    fn a_journaled_core_answers_only_through_its_journal_batch() {
        let mut c = core(true);
        let batch =
            journal(drain(&mut c, vec![part(0, 1, 1, &[create()]), part(1, 2, 1, &[HuntEvent::join(HUNT, 1)])]).1);
        assert_eq!(batch.parts.iter().map(Vec::len).collect::<Vec<_>>(), [1, 1]);
        assert_eq!(
            batch.sources.iter().map(|s| (s.origin, s.len)).collect::<Vec<_>>(),
            [(Origin { producer: 1, first_seq: 1 }, 1), (Origin { producer: 2, first_seq: 1 }, 1)]
        );
        assert_eq!(batch.time_us, Some(1_000), "the engine time the batch was stamped with");
        assert_eq!(batch.waiting.iter().map(|a| a.reply).collect::<Vec<_>>(), [0, 1]);

        // Only a retry: nothing to write, but its answer still waits
        // behind the journal (earlier writes may not be durable yet).
        let retry = journal(drain(&mut c, vec![part(2, 1, 1, &[create()])]).1);
        assert!(retry.parts.is_empty() && retry.sources.is_empty());
        assert_eq!(retry.waiting.len(), 1);
        assert!(matches!(retry.waiting[0].outcomes[0], HuntOutcome::Created { .. }));
    }

    #[test]
    fn stamps_never_go_backwards_and_supplied_times_are_kept() {
        let mut c = core(true);
        let mut work = vec![part(0, 1, 1, &[create()])];
        c.apply(&mut work, Some(2_000)).unwrap();
        assert_eq!(journal(c.hand_off(&mut work)).time_us, Some(2_000));
        // An earlier reading (another clock, a restart): the later stamp holds.
        let mut work = vec![part(1, 1, 2, &[HuntEvent::join(HUNT, 1)])];
        c.apply(&mut work, Some(1_500)).unwrap();
        let batch = journal(c.hand_off(&mut work));
        assert_eq!(batch.time_us, Some(2_000));
        assert_eq!(c.state().time_us(), 2_000);
        // No time given: the events keep their own stamps (5 us here),
        // and the journal batch says so.
        let mut c = core(true);
        let mut work = vec![part(0, 1, 1, &[create()])];
        c.apply(&mut work, None).unwrap();
        let batch = journal(c.hand_off(&mut work));
        assert_eq!(batch.time_us, None);
        assert_eq!(batch.parts[0][0].time_us, 5);
    }

    #[test]
    fn snapshots_fall_due_by_the_clock_the_caller_passes() {
        let s = Duration::from_secs;
        let mut c = core(true);
        assert!(!c.snapshot_due(s(59)));
        assert!(c.snapshot_due(s(60)));
        let _snapshot = c.snapshot(s(61));
        assert!(!c.snapshot_due(s(61)) && !c.snapshot_due(s(120)));
        assert!(c.snapshot_due(s(121)));
        // A clock read on another thread may lag: never due early.
        assert!(!c.snapshot_due(s(3)));
        assert!(!core(false).snapshot_due(s(1_000)), "no journal, no snapshots");
        let mut config = CoreConfig {
            worlds_max: 1,
            dedup_window_events: 0,
            dedup_producers_max: 1,
            journaled: true,
            snapshot_interval: None,
        };
        assert!(!ShardCore::<Hunt>::new(config).snapshot_due(s(1_000)), "no interval: only when asked");
        config.snapshot_interval = Some(s(1));
        assert!(ShardCore::<Hunt>::new(config).snapshot_due(s(1)));
    }

    #[test]
    fn a_snapshot_holds_the_state_and_the_producers_after_the_last_batch() {
        let mut c = core(true);
        let _ = drain(&mut c, vec![part(0, 1, 1, &[create(), HuntEvent::join(HUNT, 1)])]);
        let bytes = c.snapshot(Duration::from_secs(1)).encode(3, 9);
        let decoded = trove_journal::snapshot::decode_snapshot(&bytes).expect("a snapshot reads back");
        assert_eq!((decoded.meta.shard, decoded.meta.next_batch, decoded.meta.last_time_us), (3, 9, 1_000));
        assert_eq!(decoded.worlds.iter().map(|&(id, _)| id).collect::<Vec<_>>(), [HUNT]);
        assert_eq!(decoded.producers.len(), 1);
        assert_eq!((decoded.producers[0].id, decoded.producers[0].last_seq), (1, 2));
    }

    #[test]
    fn a_failed_core_applies_nothing_and_stays_failed() {
        let mut c = core(true);
        let _ = drain(&mut c, vec![part(0, 1, 1, &[create()])]);
        let before = c.world_hashes();
        c.fail();
        let mut work = vec![part(1, 1, 2, &[HuntEvent::join(HUNT, 1)])];
        assert_eq!(c.apply(&mut work, Some(5_000)), Err(Failed));
        assert_eq!(work.len(), 1, "the parts are left for the caller to refuse");
        assert_eq!(work[0].events().len(), 1);
        assert_eq!(c.apply(&mut work, Some(6_000)), Err(Failed), "fail-stop");
        assert!(c.failed());
        assert_eq!(c.world_hashes(), before);
        assert_eq!(c.last_seq(1), 1, "no sequence taken");
    }

    #[test]
    #[should_panic(expected = "not continue")]
    fn a_part_whose_sequences_descend_is_refused_by_an_assertion() {
        let mut c = core(false);
        let events = [create(), HuntEvent::join(HUNT, 1)].map(|event| Stamped { time_us: 0, event }).to_vec();
        let mut work = vec![WorkPart::new(0, Origin { producer: 1, first_seq: 1 }, Some(Arc::new(vec![2, 0])), events)];
        // Debug builds catch it at the positions; release builds at the
        // sequence check. Either way nothing is applied out of order.
        let _ = c.apply(&mut work, None);
    }

    #[test]
    #[should_panic(expected = "hand_off follows apply")]
    fn answers_come_only_from_an_applied_batch() {
        let mut c = core(false);
        let _ = c.hand_off(&mut Vec::<WorkPart<Hunt, u32>>::new());
    }
}
