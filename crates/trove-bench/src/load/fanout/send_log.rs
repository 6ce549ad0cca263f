//! The pacer's log of intended send times per watched hunt ([`SendLog`]):
//! one ring per hunt, one writer (the pacer), many readers (the
//! subscribers), read by index; an entry overwritten before it is read is
//! told apart from one not written yet.

use std::sync::atomic::Ordering::{Acquire, Relaxed, Release};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64};

use trove_hunt::{Action, HuntEvent};

use super::{LOG_ENTRIES_MAX, LOG_ENTRIES_PER_SUBSCRIBER, RING_MAX, RING_MIN};

/// Intended time, step and lap packed in a ring slot.
pub(super) const STEP_BITS: u32 = 16;
pub(super) const LAP_BITS: u32 = 12;
pub(super) const US_BITS: u32 = 64 - STEP_BITS - LAP_BITS;

/// A watched hunt's intended send times: slot `k & mask` holds the k-th
/// event's, tagged with its lap so a reader can tell it was overwritten.
#[derive(Debug)]
pub(super) struct Ring {
    pub(super) head: AtomicU64,
    /// The stream no longer follows the log: a batch holding some of its
    /// logged events was refused (logged, never applied).
    pub(super) desynced: AtomicBool,
    pub(super) mask: u64,
    pub(super) shift: u32,
    pub(super) slots: Box<[AtomicU64]>,
    /// Per slot, for broadcasts-only subscribers ([`SendLog::with_digs`]):
    /// the digging player plus one, 0 for any other event; empty when not
    /// kept.
    pub(super) digs: Box<[AtomicU32]>,
}

/// Where a broadcast's cause is in a hunt's log ([`Ring::find_dig`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Cause {
    /// The one dig of the player since the cursor: the cause, its index,
    /// intended time and step.
    Exact(u64, u32, u64),
    /// Several digs of the player since the cursor (or the cursor was
    /// overwritten): the cause is one of them, so the latency is at least
    /// the one from the last. The first candidate's index (a bound for
    /// the next cause), the last one's intended time and step.
    AtLeast(u64, u32, u64),
    /// No dig of the player logged since the cursor.
    None,
}

/// What a reader finds at an index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Logged {
    /// Intended time (us since the run's epoch) and step.
    At(u64, u32),
    /// Overwritten: the reader is more than a ring behind.
    Overwritten,
    /// Not logged yet: the stream has more entries than events were sent.
    Ahead,
}

impl Ring {
    pub(super) fn new(size: usize) -> Self {
        assert!(size.is_power_of_two() && (RING_MIN..=RING_MAX).contains(&size), "ring size {size}");
        Self {
            head: AtomicU64::new(0),
            desynced: AtomicBool::new(false),
            mask: size as u64 - 1,
            shift: size.trailing_zeros(),
            slots: (0..size).map(|_| AtomicU64::new(u64::MAX)).collect(),
            digs: Box::new([]),
        }
    }

    fn with_digs(mut self) -> Self {
        self.digs = (0..self.slots.len()).map(|_| AtomicU32::new(0)).collect();
        self
    }

    pub(super) fn lap(&self, k: u64) -> u64 {
        (k >> self.shift) & ((1 << LAP_BITS) - 1)
    }

    /// The pacer only. `dig`: the digging player plus one, or 0.
    pub(super) fn push(&self, us: u64, step: u32, dig: u32) {
        let k = self.head.load(Relaxed);
        let v = if us < 1 << US_BITS && step < 1 << STEP_BITS {
            (us << (STEP_BITS + LAP_BITS)) | (u64::from(step) << LAP_BITS) | self.lap(k)
        } else {
            // Past what a slot holds (19 hours, 65536 steps): untimed.
            u64::MAX
        };
        self.slots[(k & self.mask) as usize].store(v, Relaxed);
        if let Some(d) = self.digs.get((k & self.mask) as usize) {
            // After the time: a reader that sees this dig sees its time
            // (or a later lap's, which it tells apart).
            d.store(dig, Release);
        }
        self.head.store(k + 1, Release);
    }

    pub(super) fn get(&self, k: u64) -> Logged {
        let head = self.head.load(Acquire);
        if k >= head {
            return Logged::Ahead;
        }
        if head - k > self.mask + 1 {
            return Logged::Overwritten;
        }
        let v = self.slots[(k & self.mask) as usize].load(Relaxed);
        if v == u64::MAX || v & ((1 << LAP_BITS) - 1) != self.lap(k) {
            return Logged::Overwritten;
        }
        Logged::At(v >> (STEP_BITS + LAP_BITS), ((v >> LAP_BITS) & ((1 << STEP_BITS) - 1)) as u32)
    }

    /// The cause of a `treasure_found` broadcast to `player`: its dig,
    /// among the digs logged from index `from` (the cause of the hunt's
    /// broadcast before, plus one: a hunt's broadcasts come in the order of
    /// their causes). The broadcast names the player, not the event: one
    /// dig of the player since `from` is the cause; with several, the
    /// latency is at least the one from the last of them.
    pub(super) fn find_dig(&self, from: u64, player: u32) -> Cause {
        if self.digs.is_empty() {
            return Cause::None;
        }
        let key = player.wrapping_add(1);
        let head = self.head.load(Acquire);
        let oldest = head.saturating_sub(self.mask + 1);
        let (mut first, mut last, mut found) = (None, None, 0u32);
        for k in from.max(oldest)..head {
            if self.digs[(k & self.mask) as usize].load(Acquire) != key {
                continue;
            }
            if let Logged::At(us, step) = self.get(k) {
                first.get_or_insert(k);
                last = Some((us, step));
                found += 1;
            }
        }
        match (first, last) {
            (Some(k), Some((us, step))) if found == 1 && from >= oldest => Cause::Exact(k, step, us),
            (Some(k), Some((us, step))) => Cause::AtLeast(k, step, us),
            _ => Cause::None,
        }
    }

    /// For an overwritten index: a later entry still held (the oldest
    /// one, else the newest), whose intended time is no earlier than the
    /// lost one's (the pacer logs a hunt's events in intended-time
    /// order), so `now` less it is a lower bound of the lost latency.
    pub(super) fn held_after_overwritten(&self) -> Option<(u64, u32)> {
        let head = self.head.load(Acquire);
        let oldest = head.saturating_sub(self.mask + 1);
        [oldest, oldest + ((self.mask + 1) >> 1), head.saturating_sub(1)].into_iter().find_map(|k| match self.get(k) {
            Logged::At(us, step) => Some((us, step)),
            _ => None,
        })
    }
}

/// The intended send times of the watched hunts' events, written by the
/// pacer as it generates them. Bounded: at most [`LOG_ENTRIES_MAX`]
/// entries over all hunts and [`LOG_ENTRIES_PER_SUBSCRIBER`] per
/// subscriber (at least [`RING_MIN`] per hunt).
#[derive(Debug)]
pub struct SendLog {
    /// By the workload's hunt number (the id less `base`): index into
    /// `rings`, or u32::MAX.
    pub(super) index: Vec<u32>,
    pub(super) rings: Vec<Ring>,
    /// The id of the workload's hunt 0 (`--hunt-base`).
    base: u32,
}

impl SendLog {
    pub fn new(hunts: u32, watched: &[u32]) -> Self {
        let mut index = vec![u32::MAX; hunts as usize];
        let mut distinct = 0usize;
        for &h in watched {
            if index[h as usize] == u32::MAX {
                index[h as usize] = distinct as u32;
                distinct += 1;
            }
        }
        let budget = LOG_ENTRIES_MAX.min(watched.len().saturating_mul(LOG_ENTRIES_PER_SUBSCRIBER));
        let per = budget.checked_div(distinct).unwrap_or(RING_MIN).max(1);
        let size = (1usize << per.ilog2()).clamp(RING_MIN, RING_MAX);
        Self { index, rings: (0..distinct).map(|_| Ring::new(size)).collect(), base: 0 }
    }

    /// The same log keeping which player each dig is from, so that a
    /// broadcasts-only subscriber can time a `treasure_found` from its
    /// dig's intended send time (half as much memory again).
    pub fn with_digs(mut self) -> Self {
        self.rings = std::mem::take(&mut self.rings).into_iter().map(Ring::with_digs).collect();
        self
    }

    /// The same log for hunt ids from `base`: the methods taking a hunt
    /// take its id, `base + h` for the workload's hunt `h`.
    pub fn with_base(mut self, base: u32) -> Self {
        self.base = base;
        self
    }

    pub fn none() -> Self {
        Self { index: Vec::new(), rings: Vec::new(), base: 0 }
    }

    pub(super) fn ring(&self, hunt: u32) -> Option<&Ring> {
        let i = *self.index.get(hunt.checked_sub(self.base)? as usize)?;
        self.rings.get(i as usize)
    }

    /// The pacer's record of an event to `hunt` meant for `intended_ns`
    /// (tests: the pacer records events, [`SendLog::record_event`]).
    #[cfg(test)]
    pub fn record(&self, hunt: u32, intended_ns: u64, step: u32) {
        if let Some(r) = self.ring(hunt) {
            r.push(intended_ns / 1000, step, 0);
        }
    }

    /// The pacer's record of event `e` meant for `intended_ns`, with who
    /// digs (kept with [`SendLog::with_digs`]).
    #[inline]
    pub fn record_event(&self, e: &HuntEvent, intended_ns: u64, step: u32) {
        if let Some(r) = self.ring(e.hunt) {
            let dig = if matches!(e.action, Action::Dig) { e.player.wrapping_add(1) } else { 0 };
            r.push(intended_ns / 1000, step, dig);
        }
    }

    pub(super) fn head(&self, hunt: u32) -> u64 {
        self.ring(hunt).map_or(0, |r| r.head.load(Acquire))
    }

    /// Producer connection `part` of `parts` (which sends the hunts `h`
    /// with `h % parts == part`, as `Generator::partition` cuts them) had
    /// a batch refused: its events were logged but never applied, so its
    /// watched hunts' streams no longer line up with the log. Their
    /// subscribers stop timing them.
    pub fn refused(&self, part: u32, parts: u32) {
        for (h, &i) in self.index.iter().enumerate() {
            if i != u32::MAX && (h as u64) % u64::from(parts.max(1)) == u64::from(part) {
                self.rings[i as usize].desynced.store(true, Relaxed);
            }
        }
    }

    pub(super) fn desynced(&self, hunt: u32) -> bool {
        self.ring(hunt).is_some_and(|r| r.desynced.load(Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_times_what_it_holds_and_tells_what_it_lost() {
        let log = SendLog::new(4, &[1, 1, 3]);
        assert_eq!(log.rings.len(), 2);
        let r = log.ring(1).unwrap();
        let size = r.mask + 1;
        assert_eq!(r.get(0), Logged::Ahead);
        for k in 0..size + 3 {
            log.record(1, k * 1000, 7);
        }
        log.record(0, 5, 0); // not watched: nothing
        assert_eq!(log.head(1), size + 3);
        assert_eq!(r.get(0), Logged::Overwritten);
        assert_eq!(r.get(2), Logged::Overwritten);
        assert_eq!(r.get(3), Logged::At(3, 7));
        assert_eq!(r.get(size + 2), Logged::At(size + 2, 7));
        assert_eq!(r.get(size + 3), Logged::Ahead);
        assert_eq!(log.ring(3).unwrap().get(0), Logged::Ahead);
        // Memory is bounded whatever the watched hunts.
        let many: Vec<u32> = (0..100_000).collect();
        let big = SendLog::new(100_000, &many);
        assert!(big.rings.iter().map(|r| r.slots.len()).sum::<usize>() <= LOG_ENTRIES_MAX.max(RING_MIN * 100_000));
        // A few watchers (`--watch 8`) get a few MiB, not the whole 64.
        let eight: Vec<u32> = (0..8).map(|i| i * 125).collect();
        let small = SendLog::new(1000, &eight);
        assert_eq!(small.rings.iter().map(|r| r.slots.len()).sum::<usize>(), 8 * LOG_ENTRIES_PER_SUBSCRIBER);
        // With a base, hunts are known by id.
        let based = SendLog::new(4, &[1]).with_base(1000);
        based.record(1001, 5000, 0);
        based.record(1, 5000, 0); // below the base: not a hunt of the run
        assert_eq!((based.head(1001), based.head(1)), (1, 0));
        // A hot hunt's many watchers get the largest ring.
        assert_eq!(SendLog::new(10, &[2; 5000]).rings[0].slots.len(), RING_MAX);
    }
}
