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

    fn lookup(&self, seq: u64) -> Option<O> {
        let offset = seq.checked_sub(self.first_seq)?;
        let k = match &self.positions {
            None => usize::try_from(offset).ok().filter(|&k| k < self.len())?,
            Some(p) => p.binary_search(&u32::try_from(offset).ok()?).ok()?,
        };
        Some(self.outcomes[self.skip + k])
    }
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

    /// The original outcome of a retried sequence, if still kept.
    pub fn lookup(&self, seq: u64) -> Option<O> {
        let i = self.recent.partition_point(|p| p.last_seq() < seq);
        self.recent.get(i)?.lookup(seq)
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
    /// kept outcomes (`outcomes[i]` answers `first_seq + offsets[i]`, or
    /// `first_seq + i` without offsets), of which the newest `window` are
    /// kept.
    pub fn restore(
        &mut self,
        producer: u64,
        last_seq: u64,
        first_seq: u64,
        offsets: Option<Vec<u32>>,
        outcomes: Vec<O>,
    ) {
        let window = self.window;
        let log = self.log(producer);
        log.last_seq = log.last_seq.max(last_seq);
        let drop = outcomes.len().saturating_sub(window);
        if drop == outcomes.len() {
            return;
        }
        let (first_seq, positions) = match offsets {
            None => (first_seq + drop as u64, None),
            Some(o) => {
                let base = o[drop];
                (first_seq + u64::from(base), Some(Arc::new(o[drop..].iter().map(|&x| x - base).collect())))
            }
        };
        log.record(window, AppliedPart { first_seq, positions, outcomes: Arc::from(&outcomes[drop..]), skip: 0 });
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

impl<O: Copy> KeptProducer<O> {
    /// The kept outcomes as one run: the first sequence, offsets from it
    /// (`None` if the sequences are consecutive) and the outcomes. Only
    /// the newest outcomes, in increasing sequence within 2^32 of the
    /// newest, are kept (a producer's window spans far less).
    pub fn flatten(&self) -> (u64, Option<Vec<u32>>, Vec<O>) {
        let mut seqs = Vec::new();
        let mut outcomes = Vec::new();
        for part in &self.parts {
            for k in 0..part.len() {
                seqs.push(part.seq(k));
                outcomes.push(part.outcomes[part.skip + k]);
            }
        }
        let Some(&last) = seqs.last() else {
            return (0, None, outcomes);
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
        (first, offsets, outcomes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(first_seq: u64, positions: Option<Vec<u32>>, outcomes: &[u32], skip: usize) -> AppliedPart<u32> {
        AppliedPart { first_seq, positions: positions.map(Arc::new), outcomes: outcomes.into(), skip }
    }

    #[test]
    fn keeps_a_window_and_evicts_the_idlest_producer() {
        let mut d: Dedup<u32> = Dedup::new(3, 2);
        d.record(7, part(1, None, &[10, 20], 0));
        // Sequences 3, 5 and 6 (offsets 0, 2, 3 from 3), after one retried.
        d.record(7, part(3, Some(vec![0, 2, 3]), &[99, 30, 50, 60], 1));
        let log = d.log(7);
        assert_eq!(log.last_seq, 6);
        assert_eq!(log.lookup(5), Some(50));
        assert_eq!(log.lookup(3), Some(30));
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
    fn a_part_that_does_not_follow_replaces_the_kept_ones() {
        // Replay may remember a producer the running engine forgot and
        // then applied a retry of again: its sequences go back.
        let mut d: Dedup<u32> = Dedup::new(8, 8);
        d.record(7, part(1, None, &[1, 2, 3, 4, 5, 6], 0));
        d.record(7, part(5, None, &[50, 60], 0));
        let log = d.log(7);
        assert_eq!((log.last_seq, log.lookup(5), log.lookup(6), log.lookup(2)), (6, Some(50), Some(60), None));
        assert_eq!(d.export()[0].flatten(), (5, None, vec![50, 60]));
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
        let (first, offsets, outcomes) = exported[0].flatten();
        assert_eq!(
            (first, offsets.as_deref(), outcomes.as_slice()),
            (1, Some(&[0, 1, 2, 4, 5][..]), &[10, 20, 30, 50, 60][..])
        );
        assert_eq!(exported[1].flatten(), (4, None, vec![1, 2]));

        // Restored into a smaller window, only the newest are kept.
        let mut r: Dedup<u32> = Dedup::new(2, 8);
        r.restore(7, 6, first, offsets, outcomes);
        let log = r.log(7);
        assert_eq!((log.last_seq, log.lookup(5), log.lookup(6), log.lookup(3)), (6, Some(50), Some(60), None));
        r.restore(9, 3, 0, None, Vec::new());
        assert_eq!(r.last_seqs(), vec![(7, 6), (9, 3)]);
    }
}
