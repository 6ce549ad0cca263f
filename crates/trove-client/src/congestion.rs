//! How many events a producer lets be unanswered: its window in events,
//! halved when the server answers BUSY and grown back by acknowledgements
//! (additive increase, multiplicative decrease, as TCP does with its
//! congestion window).
//!
//! BUSY means the server's queue for some shard already holds what it can
//! work off within its `queue_wait_max`. A producer that kept its whole
//! window in flight would keep the server's queues at that bound, and the
//! events waiting in its own window would add their time to every
//! acknowledgement: past capacity, the latency of what gets in is the
//! window divided by the server's rate. Halving on BUSY keeps the backlog
//! in the application (where `send` says `Full` and the application can
//! choose what to do) instead of in flight.
//!
//! The BUSY answers to one burst of frames (the server refuses every frame
//! behind a refused one) are one signal: the window halves once per burst,
//! not once per frame.

/// The events a producer may have unanswered now.
#[derive(Clone, Debug)]
pub(crate) struct EventWindow {
    allowed: usize,
    /// `unacked_events_max`: the most it grows to.
    max: usize,
    /// One largest batch: the least it shrinks to, so a batch always fits
    /// an empty window.
    floor: usize,
    /// BUSY answers to batches below this sequence belong to the burst
    /// already halved for.
    recover_seq: u64,
}

impl EventWindow {
    pub fn new(max: usize, floor: usize) -> Self {
        assert!(floor >= 1 && floor <= max, "the floor ({floor}) is one batch, within the window ({max})");
        Self { allowed: max, max, floor, recover_seq: 0 }
    }

    pub fn allowed(&self) -> usize {
        self.allowed
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

    /// A batch of `count` events acknowledged: about one batch more per
    /// window's worth of acknowledgements.
    pub fn on_acked(&mut self, count: usize) {
        if self.allowed < self.max {
            let grow = (count * count / self.allowed).max(1);
            self.allowed = (self.allowed + grow).min(self.max);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn it_starts_open_and_halves_once_per_burst_of_busy() {
        let mut w = EventWindow::new(65_536, 4096);
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
        let mut w = EventWindow::new(65_536, 4096);
        for k in 0..20u64 {
            w.on_busy(k * 100_000, 1_000_000, (k + 1) * 100_000);
        }
        assert_eq!(w.allowed(), 4096);
        for _ in 0..1_000_000 {
            w.on_acked(4096);
        }
        assert_eq!(w.allowed(), 65_536);
        w.on_acked(4096);
        assert_eq!(w.allowed(), 65_536);
    }

    #[test]
    fn it_grows_by_about_one_batch_per_window_of_acknowledgements() {
        let mut w = EventWindow::new(1 << 20, 1000);
        w.on_busy(1, 20_000, 20_001);
        assert_eq!(w.allowed(), 10_000);
        // Ten batches of 1,000: one window's worth.
        for _ in 0..10 {
            w.on_acked(1000);
        }
        assert!((10_900..=11_000).contains(&w.allowed()), "{}", w.allowed());
        // Tiny batches still make progress.
        let before = w.allowed();
        w.on_acked(1);
        assert_eq!(w.allowed(), before + 1);
    }

    #[test]
    fn a_halving_uses_what_is_in_flight_when_that_is_less() {
        let mut w = EventWindow::new(65_536, 100);
        // Only 8,000 events were in flight when the server refused.
        w.on_busy(1, 8000, 8001);
        assert_eq!(w.allowed(), 4000);
    }
}
