//! Metrics a shard updates while it runs and anyone can read at any time.
//!
//! Counters are relaxed atomics written by one thread (the shard), updated
//! once per drained batch, not per event. Reading never stops the shard.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

const BUCKETS: usize = 48;

/// A histogram with power-of-two buckets: bucket `b` counts values `v`
/// with `2^(b-1) <= v < 2^b` (bucket 0 counts zeros).
#[derive(Debug)]
pub struct Log2Histogram {
    buckets: [AtomicU64; BUCKETS],
    /// Sum of the recorded values (wrapping), for means and Prometheus.
    sum: AtomicU64,
}

impl Default for Log2Histogram {
    fn default() -> Self {
        Self { buckets: std::array::from_fn(|_| AtomicU64::new(0)), sum: AtomicU64::new(0) }
    }
}

impl Log2Histogram {
    #[inline]
    pub fn record(&self, value: u64) {
        self.record_n(value, 1);
    }

    /// Records `value` `n` times (a batch's events share one latency).
    #[inline]
    pub fn record_n(&self, value: u64, n: u64) {
        if n == 0 {
            return;
        }
        let b = (64 - value.leading_zeros() as usize).min(BUCKETS - 1);
        self.buckets[b].fetch_add(n, Relaxed);
        self.sum.fetch_add(value.wrapping_mul(n), Relaxed);
    }

    pub fn snapshot(&self) -> HistogramSnapshot {
        HistogramSnapshot {
            buckets: self.buckets.iter().map(|b| b.load(Relaxed)).collect(),
            sum: self.sum.load(Relaxed),
        }
    }
}

/// A copy of a [`Log2Histogram`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HistogramSnapshot {
    pub buckets: Vec<u64>,
    pub sum: u64,
}

impl HistogramSnapshot {
    pub fn count(&self) -> u64 {
        self.buckets.iter().sum()
    }

    /// Upper bound of the bucket holding quantile `q` (0..=1), or 0 if empty.
    pub fn quantile_upper_bound(&self, q: f64) -> u64 {
        let total = self.count();
        if total == 0 {
            return 0;
        }
        let rank = ((q * total as f64).ceil() as u64).clamp(1, total);
        let mut seen = 0;
        for (b, &n) in self.buckets.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return if b == 0 { 0 } else { (1u64 << b) - 1 };
            }
        }
        u64::MAX
    }

    pub fn merge(&mut self, other: &HistogramSnapshot) {
        if self.buckets.len() < other.buckets.len() {
            self.buckets.resize(other.buckets.len(), 0);
        }
        for (a, b) in self.buckets.iter_mut().zip(&other.buckets) {
            *a += b;
        }
        self.sum = self.sum.wrapping_add(other.sum);
    }

    /// Prometheus-style cumulative buckets, always the same set: `(bound,
    /// count of values below it)` for every power-of-two bound; the last
    /// bucket (values from 2^46 up) is left to `+Inf`, which is `count()`.
    pub fn cumulative(&self) -> Vec<(u64, u64)> {
        let mut seen = 0;
        (0..BUCKETS - 1)
            .map(|b| {
                seen += self.buckets.get(b).copied().unwrap_or(0);
                (1u64 << b, seen)
            })
            .collect()
    }
}

/// One shard's live metrics.
#[derive(Debug)]
pub struct ShardMetrics {
    pub events_applied: AtomicU64,
    /// Drained batches applied (one `apply` call each).
    pub batches_applied: AtomicU64,
    /// Producer batches (or parts of them) taken from the queue.
    pub submissions: AtomicU64,
    /// Batches waiting in the queue now.
    pub queue_depth_batches: AtomicU64,
    /// Events waiting in the queue now.
    pub queue_depth_events: AtomicU64,
    /// Time spent stamping, applying and handing back outcomes.
    pub busy_ns: AtomicU64,
    /// Time spent parked waiting for work.
    pub idle_ns: AtomicU64,
    /// Times the shard parked and was woken.
    pub wakeups: AtomicU64,
    /// Events per applied batch.
    pub batch_events: Log2Histogram,
    /// Nanoseconds per applied batch.
    pub apply_ns: Log2Histogram,
    /// Per event: nanoseconds from `submit` accepting its batch to its
    /// batch applied.
    pub ingest_to_applied_ns: Log2Histogram,
    /// Per event, with a journal: from `submit` to the fsync policy's
    /// durability point (when its acknowledgement is released).
    pub ingest_to_durable_ns: Log2Histogram,
    /// Rejections by the game's reason index.
    pub rejections: Vec<AtomicU64>,
    /// Bytes the journal thread wrote.
    pub journal_bytes: AtomicU64,
    /// `fdatasync` calls that had something to sync.
    pub fsyncs: AtomicU64,
    /// Nanoseconds per `fdatasync`.
    pub fsync_ns: Log2Histogram,
    /// Retried events answered without being applied again.
    pub retries: AtomicU64,
    /// Snapshots written.
    pub snapshots: AtomicU64,
    /// Size of the last snapshot.
    pub snapshot_bytes: AtomicU64,
}

impl ShardMetrics {
    pub fn new(rejection_reasons: usize) -> Self {
        Self {
            events_applied: AtomicU64::new(0),
            batches_applied: AtomicU64::new(0),
            submissions: AtomicU64::new(0),
            queue_depth_batches: AtomicU64::new(0),
            queue_depth_events: AtomicU64::new(0),
            busy_ns: AtomicU64::new(0),
            idle_ns: AtomicU64::new(0),
            wakeups: AtomicU64::new(0),
            batch_events: Log2Histogram::default(),
            apply_ns: Log2Histogram::default(),
            ingest_to_applied_ns: Log2Histogram::default(),
            ingest_to_durable_ns: Log2Histogram::default(),
            rejections: (0..rejection_reasons).map(|_| AtomicU64::new(0)).collect(),
            journal_bytes: AtomicU64::new(0),
            fsyncs: AtomicU64::new(0),
            fsync_ns: Log2Histogram::default(),
            retries: AtomicU64::new(0),
            snapshots: AtomicU64::new(0),
            snapshot_bytes: AtomicU64::new(0),
        }
    }

    pub fn snapshot(&self, names: &'static [&'static str]) -> ShardMetricsSnapshot {
        ShardMetricsSnapshot {
            events_applied: self.events_applied.load(Relaxed),
            batches_applied: self.batches_applied.load(Relaxed),
            submissions: self.submissions.load(Relaxed),
            queue_depth_batches: self.queue_depth_batches.load(Relaxed),
            queue_depth_events: self.queue_depth_events.load(Relaxed),
            busy_ns: self.busy_ns.load(Relaxed),
            idle_ns: self.idle_ns.load(Relaxed),
            wakeups: self.wakeups.load(Relaxed),
            batch_events: self.batch_events.snapshot(),
            apply_ns: self.apply_ns.snapshot(),
            ingest_to_applied_ns: self.ingest_to_applied_ns.snapshot(),
            ingest_to_durable_ns: self.ingest_to_durable_ns.snapshot(),
            rejections: names.iter().zip(&self.rejections).map(|(n, c)| (*n, c.load(Relaxed))).collect(),
            journal_bytes: self.journal_bytes.load(Relaxed),
            fsyncs: self.fsyncs.load(Relaxed),
            fsync_ns: self.fsync_ns.snapshot(),
            retries: self.retries.load(Relaxed),
            snapshots: self.snapshots.load(Relaxed),
            snapshot_bytes: self.snapshot_bytes.load(Relaxed),
        }
    }
}

/// A copy of one shard's metrics.
#[derive(Clone, Debug, Default)]
pub struct ShardMetricsSnapshot {
    pub events_applied: u64,
    pub batches_applied: u64,
    pub submissions: u64,
    pub queue_depth_batches: u64,
    pub queue_depth_events: u64,
    pub busy_ns: u64,
    pub idle_ns: u64,
    pub wakeups: u64,
    pub batch_events: HistogramSnapshot,
    pub apply_ns: HistogramSnapshot,
    pub ingest_to_applied_ns: HistogramSnapshot,
    pub ingest_to_durable_ns: HistogramSnapshot,
    pub rejections: Vec<(&'static str, u64)>,
    pub journal_bytes: u64,
    pub fsyncs: u64,
    pub fsync_ns: HistogramSnapshot,
    pub retries: u64,
    pub snapshots: u64,
    pub snapshot_bytes: u64,
}

impl ShardMetricsSnapshot {
    /// Busy time over busy plus idle time.
    pub fn busy_ratio(&self) -> f64 {
        let total = self.busy_ns + self.idle_ns;
        if total == 0 { 0.0 } else { self.busy_ns as f64 / total as f64 }
    }
}

/// Every shard's metrics plus the engine's own counters.
#[derive(Clone, Debug, Default)]
pub struct EngineMetrics {
    pub mode: &'static str,
    pub shards: Vec<ShardMetricsSnapshot>,
    /// Submissions answered `Busy`.
    pub busy_replies: u64,
}

impl EngineMetrics {
    pub fn events_applied(&self) -> u64 {
        self.shards.iter().map(|s| s.events_applied).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log2_buckets_and_quantiles() {
        let h = Log2Histogram::default();
        for v in [0, 1, 2, 3, 1000, 1000, 1000, 1000] {
            h.record(v);
        }
        let s = h.snapshot();
        assert_eq!(s.count(), 8);
        assert_eq!(s.buckets[0], 1);
        assert_eq!(s.buckets[1], 1);
        assert_eq!(s.buckets[2], 2);
        assert_eq!(s.buckets[10], 4);
        assert_eq!(s.quantile_upper_bound(0.25), 1);
        assert_eq!(s.quantile_upper_bound(0.5), 3);
        assert_eq!(s.quantile_upper_bound(0.75), 1023);
        h.record(u64::MAX);
        assert_eq!(h.snapshot().buckets[BUCKETS - 1], 1);
    }
}
