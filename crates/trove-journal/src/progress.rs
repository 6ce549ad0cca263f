//! How far recovery has read, for a progress display (`trove replay`, a
//! long recovery at `trove serve` start): process-wide counters that
//! [`crate::recover_shard_in`] adds to as it lists and reads each shard's
//! segments, and that a caller polls from another thread.
//!
//! Display only: nothing reads them to decide anything, and they never
//! touch a clock (the caller times its own redraws). They only grow; a
//! caller that wants one recovery's share takes a [`Tally::counts`] before
//! it starts and subtracts ([`Counts::since`]).

use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;

/// Recovery's progress in this process, over every recovery so far.
pub static RECOVERY: Tally = Tally::new();

/// Counters recovery adds to.
#[derive(Debug)]
pub struct Tally {
    segments_listed: AtomicU64,
    segments_read: AtomicU64,
    bytes_read: AtomicU64,
    events_read: AtomicU64,
}

/// The counters at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Segments recovery found to read (each shard adds its own as it
    /// starts).
    pub segments_listed: u64,
    pub segments_read: u64,
    /// Bytes of the segments read.
    pub bytes_read: u64,
    /// Events in the frames read.
    pub events_read: u64,
}

impl Tally {
    const fn new() -> Self {
        Self {
            segments_listed: AtomicU64::new(0),
            segments_read: AtomicU64::new(0),
            bytes_read: AtomicU64::new(0),
            events_read: AtomicU64::new(0),
        }
    }

    pub fn counts(&self) -> Counts {
        Counts {
            segments_listed: self.segments_listed.load(Relaxed),
            segments_read: self.segments_read.load(Relaxed),
            bytes_read: self.bytes_read.load(Relaxed),
            events_read: self.events_read.load(Relaxed),
        }
    }

    pub(crate) fn listed(&self, segments: usize) {
        self.segments_listed.fetch_add(segments as u64, Relaxed);
    }

    /// A segment read to its end: `bytes` and `events` are what was not
    /// already added by [`Tally::reading`] as it was read.
    pub(crate) fn read(&self, bytes: u64, events: u64) {
        self.segments_read.fetch_add(1, Relaxed);
        self.reading(bytes, events);
    }

    /// Part of a segment read (a long segment moves the display before
    /// its end).
    pub(crate) fn reading(&self, bytes: u64, events: u64) {
        self.bytes_read.fetch_add(bytes, Relaxed);
        self.events_read.fetch_add(events, Relaxed);
    }
}

impl Counts {
    /// What was added since `earlier`.
    pub fn since(&self, earlier: &Counts) -> Counts {
        Counts {
            segments_listed: self.segments_listed.saturating_sub(earlier.segments_listed),
            segments_read: self.segments_read.saturating_sub(earlier.segments_read),
            bytes_read: self.bytes_read.saturating_sub(earlier.bytes_read),
            events_read: self.events_read.saturating_sub(earlier.events_read),
        }
    }
}
