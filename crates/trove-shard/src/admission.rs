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
//!
//! A queue that passes the wait bound from calm gets a burst allowance
//! (`queue_burst_allowance`, after PIE, RFC 8033) before it answers `Busy`: a
//! shard thread that waited a few milliseconds for a core, or a slow
//! `fdatasync`, leaves a queue that drains by itself at any load below
//! capacity, and a `Busy` then would only make its producers pause, resend
//! and grow their backlog (decision 0057). Past capacity the queue does not
//! drain: once the allowance is spent every submit past the bound is
//! refused, and a new burst gets an allowance only after a submit finds
//! the queue calm (at most half the bound) when no `Busy` has been answered
//! for an allowance's length, so sustained overload is refused as before.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

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
    /// How long the expected wait may stay past `wait_max`, from calm,
    /// before `Busy` ([`Burst`]).
    pub burst_allowance: Duration,
}

/// What admission decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Admit {
    /// Within every bound.
    Taken,
    /// Past `wait_max`, on the burst allowance.
    Burst,
    Refused,
}

/// Whether a shard's queue takes the batch. `ps_per_event`: the shard's
/// recent cost per drained event ([`DrainRate::ps_per_event`]; 0 before
/// the first drain); `burst`: the queue's burst state, at `now`.
pub(crate) fn admits(q: Queue, bounds: Bounds, ps_per_event: u64, burst: &Burst, now: Instant) -> Admit {
    if q.batches_before >= bounds.batches_max {
        return Admit::Refused;
    }
    if q.events_before == 0 {
        // An empty queue takes any batch: `validate` keeps `events_max`
        // at least one largest batch, and the wait is the batch's own.
        // It is calm, too.
        return burst.admits(0, bounds, now);
    }
    if q.events_before + q.count > bounds.events_max {
        return Admit::Refused;
    }
    // The wait is for the work ahead of the batch, not its own: a batch
    // larger than the wait bound is taken behind a short queue, not only
    // by an empty one (where producers of small batches could keep it
    // out for good).
    burst.admits(expected_wait_ns(q.events_before, ps_per_event), bounds, now)
}

/// The time to work off `events` at `ps_per_event`, in nanoseconds.
pub(crate) fn expected_wait_ns(events: usize, ps_per_event: u64) -> u128 {
    events as u128 * u128::from(ps_per_event) / 1000
}

/// One queue's burst allowance, shared by every thread that submits to it.
/// Two atomics, read on every submit to a queue that has work; written
/// when a burst starts or ends and on `Busy`.
#[derive(Debug)]
pub(crate) struct Burst {
    epoch: Instant,
    /// Nanoseconds after `epoch`, plus one, of the first submit that found
    /// the expected wait past the bound since the queue was last calm; 0
    /// while it is calm.
    over_since: AtomicU64,
    /// Nanoseconds after `epoch`, plus one, of the latest `Busy`; 0: none
    /// yet.
    busy_at: AtomicU64,
}

impl Burst {
    pub fn new(epoch: Instant) -> Self {
        Self { epoch, over_since: AtomicU64::new(0), busy_at: AtomicU64::new(0) }
    }

    /// The wait bound with the allowance: `wait_ns` expected behind the
    /// queue. A burst ends at the first submit that finds the queue calm
    /// (within half the bound, or empty) when no `Busy` has been answered
    /// for an allowance's length; the next burst then gets a new
    /// allowance. Past capacity every submit past the bound is refused and
    /// the producers keep coming, so the queue gets no new allowance
    /// unless they all stay away for that long.
    fn admits(&self, wait_ns: u128, bounds: Bounds, now: Instant) -> Admit {
        let max_ns = bounds.wait_max.as_nanos();
        let now = now.saturating_duration_since(self.epoch).as_nanos() as u64 + 1;
        let allowance = bounds.burst_allowance.as_nanos() as u64;
        let within = |at: u64| at != 0 && now.saturating_sub(at) < allowance;
        if wait_ns <= max_ns {
            if wait_ns <= max_ns / 2 {
                let since = self.over_since.load(Relaxed);
                if since != 0 && !within(self.busy_at.load(Relaxed)) {
                    // Against what was read: a burst that started
                    // meanwhile keeps its start. (Written only when it
                    // changes: every submitting thread shares the line.)
                    let _ = self.over_since.compare_exchange(since, 0, Relaxed, Relaxed);
                }
            }
            return Admit::Taken;
        }
        let since = match self.over_since.compare_exchange(0, now, Relaxed, Relaxed) {
            Ok(_) => now,
            Err(since) => since,
        };
        if within(since) {
            return Admit::Burst;
        }
        // `fetch_max`: a submit that read its clock earlier and stores
        // later never moves the mark back.
        self.busy_at.fetch_max(now, Relaxed);
        Admit::Refused
    }
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

    const BOUNDS: Bounds = Bounds {
        batches_max: 4,
        events_max: 1000,
        wait_max: Duration::from_millis(2),
        burst_allowance: Duration::ZERO,
    };

    /// The bounds alone: no burst allowance.
    fn admits(q: Queue, bounds: Bounds, ps_per_event: u64) -> bool {
        let now = Instant::now();
        super::admits(q, bounds, ps_per_event, &Burst::new(now), now) == Admit::Taken
    }

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

    const MS: Duration = Duration::from_millis(1);

    /// 1 us per event against a 2 ms bound with a 50 ms allowance: 3,000
    /// events ahead are past the bound, 1,500 within it, 500 calm.
    fn burst_case() -> (Bounds, u64, impl Fn(&Burst, Instant, usize) -> bool) {
        let bounds = Bounds { events_max: 1 << 20, burst_allowance: 50 * MS, ..BOUNDS };
        (bounds, 1_000_000, move |b: &Burst, at: Instant, ahead: usize| {
            super::admits(q(1, ahead, 1), bounds, 1_000_000, b, at) != Admit::Refused
        })
    }

    #[test]
    fn a_burst_from_calm_is_admitted_for_the_allowance_then_refused() {
        let (_, _, take) = burst_case();
        let t0 = Instant::now();
        let b = Burst::new(t0);
        assert!(take(&b, t0, 500));
        let past = super::admits(q(1, 3000, 1), burst_case().0, 1_000_000, &b, t0 + MS);
        assert_eq!(past, Admit::Burst, "the burst starts: admitted on the allowance");
        assert!(take(&b, t0 + 50 * MS, 3000), "49 ms into it");
        assert!(!take(&b, t0 + 51 * MS, 3000), "the allowance is spent");
        assert!(take(&b, t0 + 52 * MS, 1500), "within the bound is always taken");
        assert!(!take(&b, t0 + 53 * MS, 3000), "a dip within the bound is not calm");
    }

    #[test]
    fn the_allowance_comes_back_only_after_calm_without_busy() {
        let (_, _, take) = burst_case();
        let t0 = Instant::now();
        let b = Burst::new(t0);
        assert!(take(&b, t0, 3000));
        assert!(!take(&b, t0 + 60 * MS, 3000), "past the allowance");
        // Calm soon after a Busy: sustained overload's dips do not count.
        assert!(take(&b, t0 + 70 * MS, 500));
        assert!(!take(&b, t0 + 71 * MS, 3000), "no new allowance 11 ms after a Busy");
        // Within the bound but past half of it: not calm.
        assert!(take(&b, t0 + 130 * MS, 1500));
        assert!(!take(&b, t0 + 131 * MS, 3000), "still the burst of t0");
        // Calm with no Busy for an allowance: the next burst gets one.
        assert!(take(&b, t0 + 190 * MS, 500));
        assert!(take(&b, t0 + 191 * MS, 3000), "a new burst, a new allowance");
        assert!(take(&b, t0 + 240 * MS, 3000));
        assert!(!take(&b, t0 + 242 * MS, 3000));
    }

    #[test]
    fn an_empty_queue_is_calm() {
        let (bounds, ps, take) = burst_case();
        let t0 = Instant::now();
        let b = Burst::new(t0);
        assert!(take(&b, t0, 3000));
        assert_eq!(
            super::admits(q(0, 0, 1), bounds, ps, &b, t0 + 10 * MS),
            Admit::Taken,
            "an empty queue takes any batch"
        );
        assert!(take(&b, t0 + 55 * MS, 3000), "the burst ended at the empty queue: a new one");
        assert!(!take(&b, t0 + 106 * MS, 3000), "and it is spent in turn");
        assert_eq!(super::admits(q(0, 0, 1), bounds, ps, &b, t0 + 120 * MS), Admit::Taken);
        assert!(!take(&b, t0 + 121 * MS, 3000), "empty 14 ms after a Busy: no new allowance");
    }

    #[test]
    fn the_memory_bounds_hold_within_an_allowance() {
        let (bounds, ps, take) = burst_case();
        let t0 = Instant::now();
        let b = Burst::new(t0);
        // A burst: 3,000 events ahead at 1 us is past the 2 ms bound.
        assert!(take(&b, t0, 3000));
        let small = Bounds { events_max: 3500, batches_max: 4, ..bounds };
        assert_eq!(super::admits(q(1, 3000, 400), small, ps, &b, t0 + MS), Admit::Burst, "on the allowance");
        assert_eq!(super::admits(q(1, 3000, 501), small, ps, &b, t0 + MS), Admit::Refused, "events");
        assert_eq!(super::admits(q(4, 3000, 1), small, ps, &b, t0 + MS), Admit::Refused, "batches");
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
