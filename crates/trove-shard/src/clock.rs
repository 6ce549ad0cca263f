//! Engine time.

use std::time::Instant;

/// Where event timestamps come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ClockMode {
    /// The engine stamps each event when a shard takes it: microseconds of
    /// a monotonic clock since the engine started (plus `base_us`), never
    /// going backwards along a shard's input. Production.
    #[default]
    Wall,
    /// Events arrive stamped and keep their stamps: replay of a journal,
    /// deterministic tests and benchmarks. The submitter keeps each world's
    /// times non-decreasing.
    Supplied,
}

/// A monotonic microsecond clock starting at `base_us`.
#[derive(Clone, Copy, Debug)]
pub struct EngineClock {
    started: Instant,
    base_us: u64,
}

impl EngineClock {
    pub fn new(base_us: u64) -> Self {
        Self { started: Instant::now(), base_us }
    }

    #[inline]
    pub fn now_us(&self) -> u64 {
        self.base_us + self.started.elapsed().as_micros() as u64
    }
}
