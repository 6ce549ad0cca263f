//! Idempotent producers: a retried event is answered, not applied again.
//!
//! Every event carries its producer's id and a sequence number; a
//! producer's events reach a shard in increasing sequence order. So a shard
//! only needs, per producer, the highest sequence it applied: an event at
//! or below it is a retry. The shard also keeps the outcomes of each
//! producer's most recent `window` events, so a retry is acknowledged again
//! with its original outcome. A retry older than that window (or from
//! before the last snapshot, after a restart) is still never applied twice;
//! it is answered with the game's `duplicate_outcome`.
//!
//! Bounds: `window` outcomes per producer, `producers_max` producers per
//! shard; past that, the producer idle the longest is forgotten (a retry
//! from it after that would be applied again).

use std::collections::{HashMap, VecDeque};

/// One producer's history on one shard.
#[derive(Debug)]
pub(crate) struct ProducerLog<O> {
    /// Highest sequence applied.
    pub last_seq: u64,
    /// Outcomes of the most recent applied events, ascending by sequence.
    recent: VecDeque<(u64, O)>,
    /// The drain in which the producer was last seen, for eviction.
    last_active: u64,
}

impl<O: Copy> ProducerLog<O> {
    fn new(last_seq: u64) -> Self {
        Self { last_seq, recent: VecDeque::new(), last_active: 0 }
    }

    /// Remembers the outcomes of applied events, in sequence order, keeping
    /// the last `window`.
    pub fn record(&mut self, window: usize, applied: impl ExactSizeIterator<Item = (u64, O)>) {
        if window == 0 {
            for (seq, _) in applied {
                self.last_seq = self.last_seq.max(seq);
            }
            return;
        }
        let n = applied.len();
        let drop = (self.recent.len() + n).saturating_sub(window).min(self.recent.len());
        self.recent.drain(..drop);
        for (seq, o) in applied {
            self.last_seq = self.last_seq.max(seq);
            self.recent.push_back((seq, o));
        }
        let extra = self.recent.len().saturating_sub(window);
        self.recent.drain(..extra);
    }

    /// The original outcome of a retried sequence, if still kept.
    pub fn lookup(&self, seq: u64) -> Option<O> {
        let i = self.recent.partition_point(|&(s, _)| s < seq);
        self.recent.get(i).filter(|&&(s, _)| s == seq).map(|&(_, o)| o)
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
            let idle = self.logs.iter().min_by_key(|(_, l)| l.last_active).map(|(&p, _)| p);
            if let Some(p) = idle {
                self.logs.remove(&p);
            }
        }
        let drain = self.drain;
        let log = self.logs.entry(producer).or_insert_with(|| ProducerLog::new(0));
        log.last_active = drain;
        log
    }

    /// Remembers the outcomes of a producer's applied events.
    pub fn record(&mut self, producer: u64, applied: impl ExactSizeIterator<Item = (u64, O)>) {
        let window = self.window;
        self.log(producer).record(window, applied);
    }

    /// Restores last sequences from a snapshot (their outcomes are gone).
    pub fn restore(&mut self, producers: impl IntoIterator<Item = (u64, u64)>) {
        for (p, seq) in producers {
            let log = self.log(p);
            log.last_seq = log.last_seq.max(seq);
        }
    }

    /// (producer, last sequence) of every producer, for a snapshot.
    pub fn last_seqs(&self) -> Vec<(u64, u64)> {
        let mut v: Vec<(u64, u64)> = self.logs.iter().map(|(&p, l)| (p, l.last_seq)).collect();
        v.sort_unstable();
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_a_window_and_evicts_the_idlest_producer() {
        let mut d: Dedup<u32> = Dedup::new(3, 2);
        d.record(7, (1u32..3).map(|seq| (u64::from(seq), seq * 10)));
        d.record(7, (3u32..6).map(|seq| (u64::from(seq), seq * 10)));
        let log = d.log(7);
        assert_eq!(log.last_seq, 5);
        assert_eq!(log.lookup(5), Some(50));
        assert_eq!(log.lookup(3), Some(30));
        assert_eq!(log.lookup(2), None, "older than the window");
        d.next_drain();
        d.record(8, [(1, 1)].into_iter());
        d.next_drain();
        d.log(8);
        d.record(9, [(1, 1)].into_iter()); // evicts 7, idle longest
        assert_eq!(d.last_seqs(), vec![(8, 1), (9, 1)]);
    }
}
