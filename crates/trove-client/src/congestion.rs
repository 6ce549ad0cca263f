//! How many events a producer lets be unanswered: its window in events,
//! sized by the time its batches take to be acknowledged.
//!
//! Past the server's capacity, whatever a producer has in flight waits in
//! front of the server (its queues, the sockets' buffers, its I/O
//! thread's backlog): the latency of what gets in is the window divided
//! by the server's rate (Little's law). The default window is fixed and
//! small (`UNACKED_EVENTS_MAX_DEFAULT`, decision 0058); it shrinks on
//! BUSY, and, with `queue_delay_target` set (off by default: on 2 shared
//! cores round trips swing too much for it to beat a fixed window), it
//! follows the queueing delay the producer sees, as delay-based
//! congestion control does (TCP Vegas, Swift):
//!
//! - each batch sent once gives a round trip (write to ACK); the least
//!   seen over the last 10-20 s is the base, the path without queues;
//! - a round trip more than `queue_delay_target` above the base shrinks
//!   the window in proportion to the excess (at most by half), once per
//!   window of batches;
//! - any other ACK of a batch sent after the last decrease grows it by one
//!   largest batch per window of ACKs (additive increase), up to
//!   `unacked_events_max`;
//! - BUSY (the server's own queue bound) halves it, once per burst of
//!   BUSY answers (the server refuses every frame behind a refused one);
//! - it never shrinks below one largest batch, so a batch always fits an
//!   empty window.
//!
//! Batches shrink with the window once it has shrunk
//! ([`EventWindow::batch_events`]), however it shrank: with a small window, full-size batches would leave events
//! waiting in the open batch for window room, their latency counted all
//! the same.

use std::time::Duration;

use tokio::time::Instant;

/// The base round trip is the least of this period and the one before.
const BASE_EPOCH: Duration = Duration::from_secs(10);
/// Of the excess over the target, the share the window gives up (Swift's
/// beta).
const DECREASE_GAIN: f64 = 0.8;
/// The most one decrease takes off.
const DECREASE_MAX: f64 = 0.5;
/// A batch closes at a quarter of the window (or the batch limit), so that
/// a window holds a few batches and room comes back a batch at a time.
const BATCHES_PER_WINDOW: usize = 4;

/// The events a producer may have unanswered now.
#[derive(Clone, Debug)]
pub(crate) struct EventWindow {
    allowed: usize,
    /// `unacked_events_max`: the most it grows to.
    max: usize,
    /// One largest batch: the least it shrinks to.
    floor: usize,
    /// The queueing delay allowed above the base round trip; `None`: the
    /// window reacts to BUSY only.
    queue_delay_target: Option<Duration>,
    /// Answers for batches below this sequence were sent before the last
    /// decrease: they are part of the same signal.
    recover_seq: u64,
    base: BaseRtt,
}

impl EventWindow {
    pub fn new(max: usize, floor: usize, queue_delay_target: Option<Duration>, now: Instant) -> Self {
        assert!(floor >= 1 && floor <= max, "the floor ({floor}) is one batch, within the window ({max})");
        Self { allowed: max, max, floor, queue_delay_target, recover_seq: 0, base: BaseRtt::new(now) }
    }

    pub fn allowed(&self) -> usize {
        self.allowed
    }

    /// Where the open batch closes: the batch limit (`floor`) while the
    /// window is whole, a quarter of it (at least 1) once it has shrunk.
    pub fn batch_events(&self) -> usize {
        if self.allowed >= self.max {
            return self.floor;
        }
        (self.allowed / BATCHES_PER_WINDOW).clamp(1, self.floor)
    }

    /// BUSY for the batch at `first_seq`, while `unanswered` events are in
    /// the window and the next batch would start at `next_seq`.
    pub fn on_busy(&mut self, first_seq: u64, unanswered: usize, next_seq: u64) {
        if first_seq < self.recover_seq {
            return;
        }
        self.allowed = (self.allowed.min(unanswered) / 2).max(self.floor);
        self.recover_seq = next_seq;
    }

    /// An ACK for `count` events from `first_seq`, with its round trip if
    /// the batch was sent once; `next_seq`: where the next batch starts.
    pub fn on_acked(&mut self, first_seq: u64, count: usize, rtt: Option<Duration>, now: Instant, next_seq: u64) {
        if let (Some(rtt), Some(target)) = (rtt, self.queue_delay_target) {
            self.base.observe(rtt, now);
            let limit = self.base.get().unwrap_or(rtt) + target;
            if rtt > limit {
                if first_seq >= self.recover_seq {
                    let excess = (rtt - limit).as_secs_f64() / rtt.as_secs_f64();
                    let keep = 1.0 - (DECREASE_GAIN * excess).min(DECREASE_MAX);
                    self.allowed = ((self.allowed as f64 * keep) as usize).max(self.floor);
                    self.recover_seq = next_seq;
                }
                return;
            }
        }
        // ACKs of batches sent before the last decrease (resends after a
        // BUSY among them) say nothing about the smaller window.
        if self.allowed < self.max && first_seq >= self.recover_seq {
            let grow = (count as u64 * self.floor as u64 / self.allowed as u64).max(1) as usize;
            self.allowed = (self.allowed + grow).min(self.max);
        }
    }

    /// A new connection (perhaps to another server): the base round trip
    /// is measured again; the window stays.
    pub fn reconnected(&mut self, now: Instant) {
        self.base = BaseRtt::new(now);
    }
}

/// The least round trip of the current period and the one before: the
/// path's delay without queues, forgotten within two periods if the path
/// changes (a reconnect to another server).
#[derive(Clone, Debug)]
struct BaseRtt {
    current: Option<Duration>,
    previous: Option<Duration>,
    started: Instant,
}

impl BaseRtt {
    fn new(now: Instant) -> Self {
        Self { current: None, previous: None, started: now }
    }

    fn observe(&mut self, rtt: Duration, now: Instant) {
        if now.saturating_duration_since(self.started) >= BASE_EPOCH {
            self.previous = self.current.take();
            self.started = now;
        }
        self.current = Some(self.current.map_or(rtt, |c| c.min(rtt)));
    }

    fn get(&self) -> Option<Duration> {
        match (self.current, self.previous) {
            (Some(c), Some(p)) => Some(c.min(p)),
            (c, p) => c.or(p),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn window(max: usize, floor: usize) -> EventWindow {
        EventWindow::new(max, floor, Some(ms(3)), Instant::now())
    }

    #[test]
    fn it_starts_open_and_halves_once_per_burst_of_busy() {
        let mut w = window(65_536, 4096);
        assert_eq!(w.allowed(), 65_536);
        // Frames from 1 to 60,000 in flight; the server refuses the one at
        // 20,001 and every frame behind it.
        w.on_busy(20_001, 60_000, 60_001);
        assert_eq!(w.allowed(), 30_000);
        w.on_busy(24_001, 40_000, 60_001);
        w.on_busy(50_001, 10_000, 60_001);
        assert_eq!(w.allowed(), 30_000, "the same burst");
        // A batch sent after the halving is refused too: a new signal.
        w.on_busy(60_001, 30_000, 90_001);
        assert_eq!(w.allowed(), 15_000);
    }

    #[test]
    fn it_never_shrinks_below_one_batch_nor_grows_past_the_most() {
        let now = Instant::now();
        let mut w = window(65_536, 4096);
        for k in 0..20u64 {
            w.on_busy(k * 100_000, 1_000_000, (k + 1) * 100_000);
        }
        assert_eq!(w.allowed(), 4096);
        // A base of 1 ms (this ACK grows it again), then slow round trips.
        w.on_acked(2_000_000, 4096, Some(ms(1)), now, 3_000_000);
        assert!(w.allowed() > 4096);
        for k in 3..30u64 {
            w.on_acked(k * 1_000_000, 4096, Some(ms(1000)), now, (k + 1) * 1_000_000);
        }
        assert_eq!(w.allowed(), 4096, "slow round trips cannot take it below the floor");
        for _ in 0..1_000_000 {
            w.on_acked(u64::MAX, 4096, None, now, u64::MAX);
        }
        assert_eq!(w.allowed(), 65_536);
        w.on_acked(u64::MAX, 4096, None, now, u64::MAX);
        assert_eq!(w.allowed(), 65_536);
    }

    #[test]
    fn it_grows_by_one_batch_per_window_of_acknowledgements() {
        let now = Instant::now();
        let mut w = window(1 << 20, 1000);
        w.on_busy(1, 20_000, 20_001);
        assert_eq!(w.allowed(), 10_000);
        // ACKs of batches sent before the halving (resends too) do not
        // grow it.
        w.on_acked(1, 1000, Some(ms(1)), now, 20_001);
        w.on_acked(10_001, 1000, None, now, 20_001);
        assert_eq!(w.allowed(), 10_000);
        // Ten batches of 1,000 sent after it: one window's worth.
        for k in 0..10 {
            w.on_acked(20_001 + k * 1000, 1000, Some(ms(1)), now, 40_001);
        }
        assert!((10_900..=11_000).contains(&w.allowed()), "{}", w.allowed());
        // Tiny batches still make progress.
        let before = w.allowed();
        w.on_acked(40_001, 1, None, now, 40_002);
        assert_eq!(w.allowed(), before + 1);
    }

    #[test]
    fn growth_is_one_largest_batch_per_window_whatever_the_batch_size() {
        let now = Instant::now();
        let mut w = window(1 << 20, 16_384);
        w.on_busy(1, 131_072, 131_073);
        assert_eq!(w.allowed(), 65_536);
        // Batches of a quarter of the window: a window's worth of them
        // adds about one largest batch, not a quarter of the window each.
        for k in 0..4 {
            w.on_acked(131_073 + k * 16_384, 16_384, None, now, 200_000);
        }
        assert!((65_536 + 15_000..=65_536 + 16_384).contains(&w.allowed()), "{}", w.allowed());
    }

    #[test]
    fn a_reconnect_measures_the_base_again() {
        let now = Instant::now();
        let mut w = window(65_536, 1000);
        w.on_acked(1, 1000, Some(ms(1)), now, 100_001);
        // A farther server: 20 ms round trips are its base, not queueing.
        w.reconnected(now);
        w.on_acked(1001, 1000, Some(ms(20)), now, 100_001);
        w.on_acked(2001, 1000, Some(ms(21)), now, 100_001);
        assert_eq!(w.allowed(), 65_536);
    }

    #[test]
    fn a_halving_uses_what_is_in_flight_when_that_is_less() {
        let mut w = window(65_536, 100);
        // Only 8,000 events were in flight when the server refused.
        w.on_busy(1, 8000, 8001);
        assert_eq!(w.allowed(), 4000);
    }

    #[test]
    fn round_trips_past_the_base_plus_the_target_shrink_it_once_per_window() {
        let now = Instant::now();
        let mut w = window(65_536, 1000);
        // The base: 1 ms.
        w.on_acked(1, 1000, Some(ms(1)), now, 100_001);
        assert_eq!(w.allowed(), 65_536);
        // 4 ms is within 1 + 3 ms: no change.
        w.on_acked(1001, 1000, Some(ms(4)), now, 100_001);
        assert_eq!(w.allowed(), 65_536);
        // 10 ms: 6 ms past the limit of 4, excess 0.6 of the round trip,
        // times 0.8 = 0.48 taken off.
        w.on_acked(2001, 1000, Some(ms(10)), now, 100_001);
        assert_eq!(w.allowed(), (65_536.0 * 0.52) as usize);
        // The rest of that window's batches say the same: one decrease.
        let after = w.allowed();
        w.on_acked(3001, 1000, Some(ms(50)), now, 100_001);
        assert_eq!(w.allowed(), after);
        // A batch sent after the decrease, still far too slow: at most
        // half is taken off.
        w.on_acked(100_001, 1000, Some(ms(100)), now, 200_001);
        assert_eq!(w.allowed(), after / 2);
    }

    #[test]
    fn without_a_target_only_busy_shrinks_it() {
        let now = Instant::now();
        let mut w = EventWindow::new(65_536, 1000, None, now);
        w.on_acked(1, 1000, Some(ms(1)), now, 2001);
        w.on_acked(1001, 1000, Some(ms(500)), now, 2001);
        assert_eq!(w.allowed(), 65_536);
    }

    #[test]
    fn the_base_is_the_least_of_two_periods_and_forgets_older_ones() {
        let t0 = Instant::now();
        let mut b = BaseRtt::new(t0);
        assert_eq!(b.get(), None);
        b.observe(ms(2), t0);
        b.observe(ms(5), t0);
        assert_eq!(b.get(), Some(ms(2)));
        // Next period: the old minimum still counts.
        b.observe(ms(8), t0 + BASE_EPOCH);
        assert_eq!(b.get(), Some(ms(2)));
        // The one after: 2 ms is forgotten.
        b.observe(ms(9), t0 + 2 * BASE_EPOCH);
        assert_eq!(b.get(), Some(ms(8)));
    }

    #[test]
    fn batches_close_at_a_share_of_the_window_within_the_batch_limit() {
        let mut w = window(65_536, 16_384);
        assert_eq!(w.batch_events(), 16_384);
        w.on_busy(1, 65_536, 65_537);
        assert_eq!(w.allowed(), 32_768);
        assert_eq!(w.batch_events(), 8192);
        let small = window(3, 1);
        assert_eq!(small.batch_events(), 1);
        // A window of two batches, whole: batches are not cut to a quarter
        // of it; once it shrinks, they are.
        let mut two = window(8192, 4096);
        assert_eq!(two.batch_events(), 4096);
        two.on_busy(1, 8192, 8193);
        assert_eq!(two.allowed(), 4096);
        assert_eq!(two.batch_events(), 1024);
    }
}
