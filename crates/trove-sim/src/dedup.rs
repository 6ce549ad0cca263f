//! The per-producer bookkeeping a shard keeps to apply each event once:
//! the last sequence applied per producer. Minimal on purpose, and the
//! only place the simulator keeps it, so that the shard core
//! (`ShardCore`, issue 22) can take its place.
//!
//! A producer sends its events in sequence order and resends every event
//! not yet acknowledged after a restart; an event is applied when its
//! sequence is the next one, answered as a duplicate when it is not above
//! the last one applied.

use std::collections::BTreeMap;

use trove_journal::planted::{Planted, on as planted};

/// What to do with an arriving event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admit {
    /// The next sequence of its producer: apply it.
    Apply,
    /// Applied before (a retry): answer it, apply nothing.
    Duplicate,
    /// Past the next sequence: an earlier event is missing. Dropped; the
    /// producer resends from its last acknowledged one.
    Gap,
}

/// The last applied sequence of each producer.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Dedup {
    last_seq: BTreeMap<u64, u64>,
}

impl Dedup {
    /// Decides on event `seq` of `producer`, and counts it as applied if
    /// it is to be.
    pub fn admit(&mut self, producer: u64, seq: u64) -> Admit {
        let last = self.last_seq(producer);
        if seq == last + 1 {
            self.last_seq.insert(producer, seq);
            Admit::Apply
        } else if seq <= last {
            if seq == last && seq > 0 && planted(Planted::ApplyRetryTwice) {
                return Admit::Apply;
            }
            Admit::Duplicate
        } else {
            Admit::Gap
        }
    }

    /// An event applied again at recovery (from the journal).
    pub fn replayed(&mut self, producer: u64, seq: u64) {
        let last = self.last_seq.entry(producer).or_insert(0);
        *last = (*last).max(seq);
    }

    pub fn last_seq(&self, producer: u64) -> u64 {
        self.last_seq.get(&producer).copied().unwrap_or(0)
    }

    /// What a snapshot keeps: every producer's last sequence, by id.
    pub fn export(&self) -> Vec<(u64, u64)> {
        if planted(Planted::ForgetDedupAtSnapshot) {
            return Vec::new();
        }
        self.last_seq.iter().map(|(&p, &s)| (p, s)).collect()
    }

    /// Puts back a producer from a snapshot.
    pub fn restore(&mut self, producer: u64, last_seq: u64) {
        self.last_seq.insert(producer, last_seq);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn applies_in_order_answers_retries_and_drops_gaps() {
        let mut d = Dedup::default();
        assert_eq!(d.admit(7, 1), Admit::Apply);
        assert_eq!(d.admit(7, 1), Admit::Duplicate);
        assert_eq!(d.admit(7, 3), Admit::Gap);
        assert_eq!(d.admit(7, 2), Admit::Apply);
        assert_eq!(d.last_seq(7), 2);
        d.replayed(8, 5);
        assert_eq!(d.export(), vec![(7, 2), (8, 5)]);
    }
}
