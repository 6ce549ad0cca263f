//! Idempotent producers: a retried event is answered, not applied again.
//!
//! Every event carries its producer's id and a sequence number; a
//! producer's events reach a shard in increasing sequence order. So a shard
//! only needs, per producer, the highest sequence it applied: an event at
//! or below it is a retry. The shard also keeps the outcomes of each
//! producer's most recent `window` events, so a retry is acknowledged again
//! with its original outcome; snapshots keep them too, so this holds across
//! restarts. A retry older than that window is still never applied twice;
//! it is answered with the game's `duplicate_outcome`.
//!
//! With each kept outcome goes its event's fingerprint
//! (`trove_core::record_fingerprint`, 4 bytes): an event at or below the
//! highest sequence whose fingerprint differs from the one applied under
//! that sequence is not a retry but a reused sequence number. It is not
//! applied, and not answered with the other event's outcome
//! ([`Retry::Reused`]). Outcomes restored from a snapshot written before
//! fingerprints were kept have none: their retries are answered as before.
//!
//! Bounds: `window` outcomes per producer, `producers_max` producers per
//! shard; past that, the producer idle the longest is forgotten (a retry
//! from it after that would be applied again).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

/// The outcomes of one applied batch part, shared with the part delivered
/// to the producer: keeping them costs no copy.
#[derive(Clone, Debug)]
pub(crate) struct AppliedPart<O> {
    /// Sequence of the first applied event.
    pub first_seq: u64,
    /// Sequence offsets of the applied events from `first_seq`; `None`: 0, 1, ...
    pub positions: Option<Arc<Vec<u32>>>,
    /// The part's outcomes: `skip` retried ones first, then the applied ones.
    pub outcomes: Arc<[O]>,
    /// The fingerprints of the part's events, indexed like `outcomes`
    /// (shared with the submitted part: no copy); `None` if not known
    /// (restored from a snapshot that kept none).
    pub fingerprints: Option<Arc<[u32]>>,
    pub skip: usize,
}

impl<O: Copy> AppliedPart<O> {
    fn len(&self) -> usize {
        self.outcomes.len() - self.skip
    }

    fn seq(&self, k: usize) -> u64 {
        self.first_seq + self.positions.as_ref().map_or(k as u64, |p| u64::from(p[k]))
    }

    fn last_seq(&self) -> u64 {
        self.seq(self.len() - 1)
    }

    fn fingerprint(&self, k: usize) -> Option<u32> {
        self.fingerprints.as_ref().map(|f| f[self.skip + k])
    }

    fn lookup(&self, seq: u64) -> Option<(O, Option<u32>)> {
        let offset = seq.checked_sub(self.first_seq)?;
        let k = match &self.positions {
            None => usize::try_from(offset).ok().filter(|&k| k < self.len())?,
            Some(p) => p.binary_search(&u32::try_from(offset).ok()?).ok()?,
        };
        Some((self.outcomes[self.skip + k], self.fingerprint(k)))
    }
}

/// How a shard answers an event at or below its producer's highest
/// applied sequence. It is never applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Retry<O> {
    /// The event applied under this sequence, again (or one whose
    /// fingerprint is not known): its original outcome.
    Original(O),
    /// Another event than the one applied under this sequence: refused.
    Reused,
    /// Older than the kept window: answered `duplicate_outcome`.
    Forgotten,
}

/// One producer's history on one shard.
#[derive(Debug)]
pub(crate) struct ProducerLog<O> {
    /// Highest sequence applied.
    pub last_seq: u64,
    /// The most recent applied parts, ascending by sequence, holding at
    /// least the last `window` events' outcomes.
    recent: VecDeque<AppliedPart<O>>,
    recent_events: usize,
    /// The drain in which the producer was last seen, for eviction.
    last_active: u64,
}

impl<O: Copy> ProducerLog<O> {
    fn new(last_seq: u64) -> Self {
        Self { last_seq, recent: VecDeque::new(), recent_events: 0, last_active: 0 }
    }

    /// Remembers an applied part's outcomes (parts arrive in sequence order).
    pub fn record(&mut self, window: usize, part: AppliedPart<O>) {
        if part.len() == 0 {
            return;
        }
        self.last_seq = self.last_seq.max(part.last_seq());
        if window == 0 {
            return;
        }
        if self.recent.back().is_some_and(|p| p.last_seq() >= part.seq(0)) {
            // Sequences that do not follow the kept ones: a retry applied
            // again after its producer was forgotten (a replay of the
            // journal may not have forgotten it). The newer outcomes
            // answer from here on; the kept ones stay ascending.
            self.recent.clear();
            self.recent_events = 0;
        }
        self.recent_events += part.len();
        self.recent.push_back(part);
        while self.recent.front().is_some_and(|p| self.recent_events - p.len() >= window) {
            let dropped = self.recent.pop_front().expect("front exists");
            self.recent_events -= dropped.len();
        }
    }

    /// The original outcome of a retried sequence and its event's
    /// fingerprint (if known), if still kept.
    pub fn lookup(&self, seq: u64) -> Option<(O, Option<u32>)> {
        let i = self.recent.partition_point(|p| p.last_seq() < seq);
        self.recent.get(i)?.lookup(seq)
    }

    /// The answer to an event at sequence `seq` (at or below `last_seq`)
    /// whose fingerprint is `fingerprint`.
    #[inline]
    pub fn retry(&self, seq: u64, fingerprint: u32) -> Retry<O> {
        match self.lookup(seq) {
            None => Retry::Forgotten,
            Some((_, Some(kept))) if kept != fingerprint => Retry::Reused,
            Some((outcome, _)) => Retry::Original(outcome),
        }
    }
}

/// Every producer's history on one shard.
#[derive(Debug)]
pub(crate) struct Dedup<O> {
    logs: HashMap<u64, ProducerLog<O>>,
    window: usize,
    producers_max: usize,
    drain: u64,
}

impl<O: Copy> Dedup<O> {
    pub fn new(window: usize, producers_max: usize) -> Self {
        Self { logs: HashMap::new(), window, producers_max, drain: 0 }
    }

    /// Outcomes kept per producer (0: only last sequences).
    pub fn window(&self) -> usize {
        self.window
    }

    /// Starts a new drained batch (the clock of the eviction policy).
    pub fn next_drain(&mut self) {
        self.drain += 1;
    }

    /// A producer's log, created (and another evicted) if needed.
    pub fn log(&mut self, producer: u64) -> &mut ProducerLog<O> {
        if !self.logs.contains_key(&producer) && self.logs.len() >= self.producers_max {
            // Never one seen in this drain: its last sequence may have just
            // been raised for events about to be applied. (If every producer
            // is in this drain, the table grows past the bound for now.)
            let drain = self.drain;
            let idle = self.logs.iter().filter(|(_, l)| l.last_active < drain).min_by_key(|(_, l)| l.last_active);
            if let Some(p) = idle.map(|(&p, _)| p) {
                self.logs.remove(&p);
            }
        }
        let drain = self.drain;
        let log = self.logs.entry(producer).or_insert_with(|| ProducerLog::new(0));
        log.last_active = drain;
        log
    }

    /// Remembers an applied part of a producer.
    pub fn record(&mut self, producer: u64, part: AppliedPart<O>) {
        let window = self.window;
        self.log(producer).record(window, part);
    }

    /// Restores a producer from a snapshot: its last sequence and its
    /// kept outcomes, of which the newest `window` are kept.
    pub fn restore(&mut self, producer: u64, last_seq: u64, run: KeptRun<O>) {
        let window = self.window;
        let log = self.log(producer);
        log.last_seq = log.last_seq.max(last_seq);
        let n = run.outcomes.len();
        let drop = n.saturating_sub(window);
        if drop == n {
            return;
        }
        debug_assert!(run.fingerprints.len() <= n, "fingerprints answer kept outcomes");
        let fingerprinted = run.fingerprints.len().min(n);
        let known = &run.fingerprints[run.fingerprints.len() - fingerprinted..];
        let seq = |i: usize| run.first_seq + run.offsets.as_ref().map_or(i as u64, |o| u64::from(o[i]));
        // At most two parts: the oldest outcomes without fingerprints (from
        // a snapshot that kept none), then those with.
        let split = (n - fingerprinted).max(drop);
        for (from, to) in [(drop, split), (split, n)] {
            if from == to {
                continue;
            }
            let first_seq = seq(from);
            let positions =
                run.offsets.as_ref().map(|_| Arc::new((from..to).map(|i| (seq(i) - first_seq) as u32).collect()));
            let fingerprints = (from >= n - fingerprinted).then(|| Arc::from(&known[from - (n - fingerprinted)..]));
            let outcomes = Arc::from(&run.outcomes[from..to]);
            log.record(window, AppliedPart { first_seq, positions, outcomes, fingerprints, skip: 0 });
        }
    }

    /// (producer, last sequence) of every producer, ascending by producer.
    pub fn last_seqs(&self) -> Vec<(u64, u64)> {
        let mut v: Vec<(u64, u64)> = self.logs.iter().map(|(&p, l)| (p, l.last_seq)).collect();
        v.sort_unstable();
        v
    }

    /// Every producer's last sequence and kept outcomes, ascending by
    /// producer, for a snapshot. The parts are shared, not copied: this
    /// runs on the shard thread, the encoding on the journal thread.
    pub fn export(&self) -> Vec<KeptProducer<O>> {
        #[cfg(feature = "planted")]
        if trove_journal::planted::on(trove_journal::planted::Planted::ForgetDedupAtSnapshot) {
            return Vec::new();
        }
        let mut v: Vec<KeptProducer<O>> = self
            .logs
            .iter()
            .map(|(&id, l)| KeptProducer { id, last_seq: l.last_seq, parts: l.recent.iter().cloned().collect() })
            .collect();
        v.sort_unstable_by_key(|p| p.id);
        v
    }
}

/// One producer as `Dedup::export` hands it to a snapshot.
#[derive(Debug)]
pub(crate) struct KeptProducer<O> {
    pub id: u64,
    pub last_seq: u64,
    /// Its kept parts, ascending by sequence.
    pub parts: Vec<AppliedPart<O>>,
}

/// A producer's kept outcomes as one run, the form a snapshot stores.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct KeptRun<O> {
    /// The sequence of the first kept outcome (0 if none is kept).
    pub first_seq: u64,
    /// Sequence offsets from `first_seq`, one per outcome; `None`: 0, 1, ...
    pub offsets: Option<Vec<u32>>,
    pub outcomes: Vec<O>,
    /// The fingerprints of the newest `fingerprints.len()` outcomes' events
    /// (the older ones have none known).
    pub fingerprints: Vec<u32>,
}

impl<O: Copy> KeptProducer<O> {
    /// The kept outcomes as one run. Only the newest outcomes, in
    /// increasing sequence within 2^32 of the newest, are kept (a
    /// producer's window spans far less).
    pub fn flatten(&self) -> KeptRun<O> {
        let mut seqs = Vec::new();
        let mut outcomes = Vec::new();
        let mut fingerprints = Vec::new();
        for part in &self.parts {
            for k in 0..part.len() {
                seqs.push(part.seq(k));
                outcomes.push(part.outcomes[part.skip + k]);
                fingerprints.push(part.fingerprint(k));
            }
        }
        let Some(&last) = seqs.last() else {
            return KeptRun { first_seq: 0, offsets: None, outcomes, fingerprints: Vec::new() };
        };
        // The strictly increasing suffix (`record` keeps them so) within
        // 2^32 of the newest.
        let mut from = seqs.len() - 1;
        while from > 0 && seqs[from - 1] < seqs[from] && last - seqs[from - 1] <= u64::from(u32::MAX) {
            from -= 1;
        }
        let (seqs, outcomes) = (&seqs[from..], outcomes.split_off(from));
        let first = seqs[0];
        let consecutive = seqs.iter().enumerate().all(|(i, &s)| s == first + i as u64);
        let offsets = (!consecutive).then(|| seqs.iter().map(|&s| (s - first) as u32).collect());
        // Known fingerprints are a suffix: only restored outcomes lack them,
        // and those are a producer's oldest.
        let known = fingerprints[from..].iter().rev().take_while(|f| f.is_some()).count();
        let fingerprints = fingerprints[fingerprints.len() - known..].iter().map(|f| f.expect("known")).collect();
        KeptRun { first_seq: first, offsets, outcomes, fingerprints }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A part whose events have fingerprints `1000 + outcome` (a retried
    /// one's too).
    fn part(first_seq: u64, positions: Option<Vec<u32>>, outcomes: &[u32], skip: usize) -> AppliedPart<u32> {
        let fingerprints = Some(outcomes.iter().map(|o| 1000 + o).collect());
        AppliedPart { first_seq, positions: positions.map(Arc::new), outcomes: outcomes.into(), fingerprints, skip }
    }

    fn run(first_seq: u64, offsets: Option<Vec<u32>>, outcomes: Vec<u32>, fingerprints: Vec<u32>) -> KeptRun<u32> {
        KeptRun { first_seq, offsets, outcomes, fingerprints }
    }

    #[test]
    fn keeps_a_window_and_evicts_the_idlest_producer() {
        let mut d: Dedup<u32> = Dedup::new(3, 2);
        d.record(7, part(1, None, &[10, 20], 0));
        // Sequences 3, 5 and 6 (offsets 0, 2, 3 from 3), after one retried.
        d.record(7, part(3, Some(vec![0, 2, 3]), &[99, 30, 50, 60], 1));
        let log = d.log(7);
        assert_eq!(log.last_seq, 6);
        assert_eq!(log.lookup(5), Some((50, Some(1050))));
        assert_eq!(log.lookup(3), Some((30, Some(1030))));
        assert_eq!(log.lookup(4), None, "not one of its sequences");
        assert_eq!(log.lookup(1), None, "older than the window");
        d.next_drain();
        d.record(8, part(1, None, &[1], 0));
        d.next_drain();
        d.log(8);
        d.record(9, part(1, None, &[1], 0)); // evicts 7, idle longest
        assert_eq!(d.last_seqs(), vec![(8, 1), (9, 1)]);
    }

    #[test]
    fn a_reused_sequence_is_told_from_a_retry() {
        let mut d: Dedup<u32> = Dedup::new(4, 8);
        d.record(7, part(1, None, &[10, 20], 0));
        d.record(7, part(3, Some(vec![0, 2]), &[99, 30, 50], 1));
        let log = d.log(7);
        // The same events again: their original outcomes.
        assert_eq!(log.retry(1, 1010), Retry::Original(10));
        assert_eq!(log.retry(5, 1050), Retry::Original(50));
        // Other events under the same numbers: refused, whatever the part.
        assert_eq!(log.retry(1, 1020), Retry::Reused);
        assert_eq!(log.retry(3, 0), Retry::Reused);
        assert_eq!(log.retry(5, 1030), Retry::Reused);
        // Not kept (a gap in the sequences, or older than the window).
        assert_eq!(log.retry(4, 1), Retry::Forgotten);
        let mut d: Dedup<u32> = Dedup::new(1, 8);
        d.record(7, part(1, None, &[10, 20], 0));
        d.record(7, part(3, None, &[30], 0));
        assert_eq!(d.log(7).retry(1, 5), Retry::Forgotten, "older than the window: as before");
        // Without a fingerprint (restored from an older snapshot): the
        // outcome, as before fingerprints were kept.
        let mut d: Dedup<u32> = Dedup::new(4, 8);
        d.record(7, AppliedPart { fingerprints: None, ..part(1, None, &[10], 0) });
        assert_eq!(d.log(7).retry(1, 12345), Retry::Original(10));
    }

    #[test]
    fn a_part_that_does_not_follow_replaces_the_kept_ones() {
        // Replay may remember a producer the running engine forgot and
        // then applied a retry of again: its sequences go back.
        let mut d: Dedup<u32> = Dedup::new(8, 8);
        d.record(7, part(1, None, &[1, 2, 3, 4, 5, 6], 0));
        d.record(7, part(5, None, &[50, 60], 0));
        let log = d.log(7);
        assert_eq!(
            (log.last_seq, log.lookup(5), log.lookup(6), log.lookup(2)),
            (6, Some((50, Some(1050))), Some((60, Some(1060))), None)
        );
        assert_eq!(d.export()[0].flatten(), run(5, None, vec![50, 60], vec![1050, 1060]));
    }

    #[test]
    fn kept_outcomes_survive_an_export_and_a_restore() {
        let mut d: Dedup<u32> = Dedup::new(4, 8);
        d.record(7, part(1, None, &[10, 20], 0));
        d.record(7, part(3, Some(vec![0, 2, 3]), &[99, 30, 50, 60], 1));
        d.record(8, part(4, None, &[1, 2], 0));
        let exported = d.export();
        assert_eq!(exported.iter().map(|p| (p.id, p.last_seq)).collect::<Vec<_>>(), vec![(7, 6), (8, 5)]);
        // Producer 7 keeps whole parts holding at least its window of 4:
        // sequences 1, 2, 3, 5, 6.
        let kept = exported[0].flatten();
        assert_eq!(
            kept,
            run(1, Some(vec![0, 1, 2, 4, 5]), vec![10, 20, 30, 50, 60], vec![1010, 1020, 1030, 1050, 1060])
        );
        assert_eq!(exported[1].flatten(), run(4, None, vec![1, 2], vec![1001, 1002]));

        // Restored into a smaller window, only the newest are kept, with
        // their fingerprints.
        let mut r: Dedup<u32> = Dedup::new(2, 8);
        r.restore(7, 6, kept);
        let log = r.log(7);
        assert_eq!(
            (log.last_seq, log.lookup(5), log.lookup(6), log.lookup(3)),
            (6, Some((50, Some(1050))), Some((60, Some(1060))), None)
        );
        assert_eq!((log.retry(6, 1060), log.retry(6, 1050)), (Retry::Original(60), Retry::Reused));
        r.restore(9, 3, run(0, None, Vec::new(), Vec::new()));
        assert_eq!(r.last_seqs(), vec![(7, 6), (9, 3)]);
    }

    #[test]
    fn outcomes_without_fingerprints_are_restored_and_kept_so() {
        // A snapshot of the older form: outcomes, no fingerprints; then the
        // running shard adds parts with them.
        let mut d: Dedup<u32> = Dedup::new(8, 8);
        d.restore(7, 12, run(10, Some(vec![0, 2]), vec![10, 12], Vec::new()));
        d.record(7, part(13, None, &[13, 14], 0));
        let log = d.log(7);
        assert_eq!((log.retry(12, 1), log.retry(13, 1)), (Retry::Original(12), Retry::Reused));
        // Exported, only the newest two have fingerprints; restored, the
        // older two still answer without one, the newer two check theirs.
        let kept = d.export()[0].flatten();
        assert_eq!(kept, run(10, Some(vec![0, 2, 3, 4]), vec![10, 12, 13, 14], vec![1013, 1014]));
        for window in [8, 3, 1] {
            let mut r: Dedup<u32> = Dedup::new(window, 8);
            r.restore(7, 14, kept.clone());
            let log = r.log(7);
            assert_eq!(log.retry(14, 1014), Retry::Original(14), "window {window}");
            assert_eq!(log.retry(14, 1013), Retry::Reused, "window {window}");
            let expect = if window >= 3 { Retry::Original(12) } else { Retry::Forgotten };
            assert_eq!(log.retry(12, 1), expect, "window {window}");
            assert_eq!(log.retry(11, 1), Retry::Forgotten, "window {window}");
        }
    }
}
