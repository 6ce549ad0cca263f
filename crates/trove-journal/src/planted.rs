//! Mistakes planted on purpose, to show that the simulator
//! (`crates/trove-sim`) finds them. Off unless a test switches one on for
//! its own thread; without the `planted` feature every check is a
//! constant `false` and compiles away.

/// A planted mistake.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Planted {
    None,
    /// `JournalWriter::sync` reports a sync it never made: batches are
    /// acknowledged before they are durable.
    AckBeforeSync,
    /// Reading a frame ignores a body whose CRC does not match.
    SkipCrc,
    /// `remove_covered` keeps the segments a snapshot covers.
    KeepCovered,
    /// `remove_covered` also removes the segment the snapshot's batch
    /// starts (which the writer is appending to).
    RemoveUncovered,
    /// A new segment's directory entry is not synced: a crash can take
    /// the segment away with its synced, acknowledged frames.
    SkipSegmentDirSync,
    /// The shard core's dedup (trove-shard, with its `planted` feature)
    /// leaves its producers out of a snapshot.
    ForgetDedupAtSnapshot,
    /// The shard core (trove-shard, with its `planted` feature) applies a
    /// retry of a producer's last applied event again.
    ApplyRetryTwice,
}

impl std::str::FromStr for Planted {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "none" => Self::None,
            "ack-before-sync" => Self::AckBeforeSync,
            "skip-crc" => Self::SkipCrc,
            "keep-covered" => Self::KeepCovered,
            "remove-uncovered" => Self::RemoveUncovered,
            "skip-segment-dir-sync" => Self::SkipSegmentDirSync,
            "forget-dedup-at-snapshot" => Self::ForgetDedupAtSnapshot,
            "apply-retry-twice" => Self::ApplyRetryTwice,
            _ => {
                return Err(format!(
                    "unknown planted bug `{s}`: none, ack-before-sync, skip-crc, keep-covered, remove-uncovered, \
                     skip-segment-dir-sync, forget-dedup-at-snapshot, apply-retry-twice"
                ));
            }
        })
    }
}

#[cfg(feature = "planted")]
thread_local! {
    static ON: std::cell::Cell<Planted> = const { std::cell::Cell::new(Planted::None) };
}

/// Whether `bug` is switched on for this thread.
#[inline(always)]
pub fn on(bug: Planted) -> bool {
    #[cfg(feature = "planted")]
    {
        ON.with(|c| c.get() == bug)
    }
    #[cfg(not(feature = "planted"))]
    {
        let _ = bug;
        false
    }
}

/// Switches `bug` on for this thread (`Planted::None`: all off).
#[cfg(feature = "planted")]
pub fn set(bug: Planted) {
    ON.with(|c| c.set(bug));
}
