//! Admission to a shard's queue: the rule `submit` applies per shard, and
//! the drain rate it judges a queue's delay by.
//!
//! A queue is bounded three ways. `queue_batches_max` and
//! `queue_events_max` bound its memory; `queue_wait_max` bounds the time a
//! newly admitted batch can expect to wait behind it, at the rate the
//! shard has been working its queue off ([`DrainRate`]). The time bound is
//! what matters past capacity: a queue of 262,144 events is 10 ms of work
//! for a shard applying 25 M events/s and 100 ms for one at 2.5 M (a
//! journal on a slow disk, a loaded machine). A queue with nothing in it
//! takes any batch, so every producer makes progress whatever the bounds.
//!
//! The rate is a measurement, not configuration: the shard thread records
//! each drain's events and busy time; admission reads one atomic. It is
//! never part of the game state and never journaled: it only decides
//! whether a batch is taken now or answered `Busy`, and a refused batch
//! was never applied.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// What `submit` saw on one shard: the queue before this batch's
/// reservation, and the batch's share of events.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Queue {
    pub batches_before: usize,
    pub events_before: usize,
    pub count: usize,
}

/// The bounds of one shard's queue (from `EngineConfig`).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Bounds {
    pub batches_max: usize,
    pub events_max: usize,
    pub wait_max: Duration,
}

/// Whether a shard's queue takes the batch. `ps_per_event`: the shard's
/// recent cost per drained event ([`DrainRate::ps_per_event`]; 0 before
/// the first drain).
pub(crate) fn admits(q: Queue, bounds: Bounds, ps_per_event: u64) -> bool {
    if q.batches_before >= bounds.batches_max {
        return false;
    }
    if q.events_before == 0 {
        // An empty queue takes any batch: `validate` keeps `events_max`
        // at least one largest batch, and the wait is the batch's own.
        return true;
    }
    if q.events_before + q.count > bounds.events_max {
        return false;
    }
    // The wait is for the work ahead of the batch, not its own: a batch
    // larger than the wait bound is taken behind a short queue, not only
    // by an empty one (where producers of small batches could keep it
    // out for good).
    expected_wait_ns(q.events_before, ps_per_event) <= bounds.wait_max.as_nanos()
}

/// The time to work off `events` at `ps_per_event`, in nanoseconds.
pub(crate) fn expected_wait_ns(events: usize, ps_per_event: u64) -> u128 {
    events as u128 * u128::from(ps_per_event) / 1000
}

/// A shard's recent drain rate: busy time per drained event, averaged over
/// drains of at least [`DRAIN_EVENTS_MEASURED_MIN`] events, weighted by
/// their events (each drain's time and events decay by an eighth per
/// drain). Small drains are left out: their fixed cost (a wakeup, a
/// stamp, a hand-off) divided by a few events says nothing about the rate
/// at which a queue is worked off, and a queue only forms when drains are
/// large. The busy time counts what the shard did in the drain, queries
/// included (they delay the queue as much as events do), but not the
/// periodic snapshot: one copy of every world a minute would multiply a
/// drain's cost per event and answer BUSY behind it for the next 20-30
/// drains.
///
/// Kept by the shard thread; read by submitting threads through
/// [`published`](Self::published).
#[derive(Debug, Default)]
pub(crate) struct DrainRate {
    /// The decayed sums (shard thread only).
    busy_ns: f64,
    events: f64,
    /// `busy_ns / events` in picoseconds per event, for readers.
    ps_per_event: Arc<AtomicU64>,
}

/// Of the averages, what each new drain replaces.
const DECAY: f64 = 1.0 / 8.0;
/// Smaller drains are not measured. A wakeup's 5-20 us over 1,024 events
/// is 5-20 ns each, against 40-100 ns of work per event.
pub(crate) const DRAIN_EVENTS_MEASURED_MIN: usize = 1024;

impl DrainRate {
    /// After a drain of `events` that kept the shard busy `busy`.
    pub fn record(&mut self, events: usize, busy: Duration) {
        if events < DRAIN_EVENTS_MEASURED_MIN {
            return;
        }
        self.busy_ns += DECAY * (busy.as_nanos() as f64 - self.busy_ns);
        self.events += DECAY * (events as f64 - self.events);
        let ps = (self.busy_ns * 1000.0 / self.events).round();
        // Finite and non-negative: both sums are positive after a drain.
        debug_assert!(ps.is_finite() && ps >= 0.0);
        self.ps_per_event.store(ps as u64, Relaxed);
    }

    /// Picoseconds of shard time per event (0 before any drain).
    #[cfg(test)]
    pub fn ps_per_event(&self) -> u64 {
        self.ps_per_event.load(Relaxed)
    }

    /// What readers load: picoseconds per event, as `ps_per_event`.
    pub fn published(&self) -> Arc<AtomicU64> {
        self.ps_per_event.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOUNDS: Bounds = Bounds { batches_max: 4, events_max: 1000, wait_max: Duration::from_millis(2) };

    fn q(batches_before: usize, events_before: usize, count: usize) -> Queue {
        Queue { batches_before, events_before, count }
    }

    #[test]
    fn an_empty_queue_takes_any_batch_however_slow_the_shard() {
        assert!(admits(q(0, 0, 1000), BOUNDS, u64::MAX / 2));
        assert!(admits(q(0, 0, 1), BOUNDS, 0));
    }

    #[test]
    fn each_bound_refuses_on_its_own() {
        // 1 us per event: 1,000 events is 1 ms, within the wait.
        let us = 1_000_000;
        assert!(admits(q(3, 500, 500), BOUNDS, us));
        assert!(!admits(q(4, 1, 1), BOUNDS, 0), "batches");
        assert!(!admits(q(1, 999, 2), BOUNDS, 0), "events");
        // 5 us per event: 500 events ahead is 2.5 ms, past the wait.
        assert!(!admits(q(1, 500, 1), BOUNDS, 5 * us), "wait");
        assert!(admits(q(1, 400, 1), BOUNDS, 5 * us));
    }

    #[test]
    fn the_wait_is_for_the_work_ahead_not_the_batch_itself() {
        // 10 us per event: a batch of 500 is 5 ms of its own work, but
        // behind 100 events (1 ms) it is taken.
        assert!(admits(q(1, 100, 500), BOUNDS, 10_000_000));
        assert!(!admits(q(1, 201, 1), BOUNDS, 10_000_000));
    }

    #[test]
    fn before_the_first_drain_only_the_memory_bounds_apply() {
        assert!(admits(q(3, 900, 100), BOUNDS, 0));
    }

    #[test]
    fn the_rate_follows_the_drains_and_weights_them_by_events() {
        let mut r = DrainRate::default();
        assert_eq!(r.ps_per_event(), 0);
        r.record(0, Duration::from_millis(5));
        assert_eq!(r.ps_per_event(), 0, "an empty drain says nothing");
        r.record(10_000, Duration::from_millis(1));
        assert_eq!(r.ps_per_event(), 100_000, "100 ns per event");
        for _ in 0..200 {
            r.record(10_000, Duration::from_millis(2));
        }
        assert!((199_000..=201_000).contains(&r.ps_per_event()), "{}", r.ps_per_event());
        // Drains weigh by their events: one of 40,000 at 400 ns among the
        // 10,000s at 200 ns moves the average to 273 ns (an average of
        // per-drain rates would move to 225 ns).
        r.record(40_000, Duration::from_millis(16));
        assert_eq!(r.ps_per_event(), 272_727);
    }

    #[test]
    fn small_drains_are_not_measured() {
        let mut r = DrainRate::default();
        // A wakeup's fixed cost over a few events: 20 us per event.
        for _ in 0..100 {
            r.record(1, Duration::from_micros(20));
            r.record(DRAIN_EVENTS_MEASURED_MIN - 1, Duration::from_millis(20));
        }
        assert_eq!(r.ps_per_event(), 0);
        r.record(DRAIN_EVENTS_MEASURED_MIN, Duration::from_micros(1024 * 50));
        assert_eq!(r.ps_per_event(), 50_000_000, "50 us per event");
    }

    #[test]
    fn the_wait_is_exact_in_integers() {
        assert_eq!(expected_wait_ns(1_000_000, 40_000), 40_000_000);
        assert_eq!(expected_wait_ns(usize::MAX, u64::MAX), usize::MAX as u128 * u64::MAX as u128 / 1000);
    }
}
