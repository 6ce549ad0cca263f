//! Metrics a shard updates while it runs and anyone can read at any time.
//!
//! Counters are relaxed atomics written by one thread (the shard), updated
//! once per drained batch, not per event. Reading never stops the shard.

use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::{Acquire, Relaxed, Release};

/// Linear sub-buckets per power of two: 2^`SUB_BITS`. Every bucket from 32
/// up is at most 1/32 (3.1%) of its lower bound wide.
const SUB_BITS: u32 = 5;
const SUB: u64 = 1 << SUB_BITS;
/// Buckets of a [`Histogram`]: values 0..32 one each, then 32 per power of
/// two up to the last bucket, which holds everything from
/// `bucket_low(BUCKETS - 1)` (63 * 2^30, 67.6 s in nanoseconds) up.
pub const BUCKETS: usize = 1024;

/// The bucket holding `value`: the value itself below 32, then `shift * 32
/// + (value >> shift)` where `shift` keeps `value >> shift` in 32..64.
#[inline]
pub fn bucket_index(value: u64) -> usize {
    if value < SUB {
        return value as usize;
    }
    let shift = 63 - value.leading_zeros() - SUB_BITS;
    let index = ((shift as u64) << SUB_BITS) + (value >> shift);
    (index as usize).min(BUCKETS - 1)
}

/// The smallest value bucket `index` holds (clamped to the last bucket).
pub fn bucket_low(index: usize) -> u64 {
    let index = index.min(BUCKETS - 1) as u64;
    if index < SUB {
        return index;
    }
    let shift = (index >> SUB_BITS) - 1;
    (SUB + (index & (SUB - 1))) << shift
}

/// The smallest value above bucket `index` (`u64::MAX` for the last one).
pub fn bucket_high(index: usize) -> u64 {
    if index + 1 >= BUCKETS { u64::MAX } else { bucket_low(index + 1) }
}

/// A log-linear histogram of `u64` values (nanoseconds, or counts): exact
/// below 32, then 32 linear buckets per power of two, so 2 us wide at
/// 100 us, 8 us wide up to 524 us, 3.1% of the value above, up to 67.6 s.
/// Recording is two relaxed atomic adds, once per batch (`record_n`).
/// Decision 0015 says why this shape.
///
/// The sum of the recorded values (for means and Prometheus' `_sum`) is
/// exact and kept in two words so that it cannot wrap in any realistic
/// uptime: one u64 nanosecond sum would wrap in about 4 days at 5 M events/s
/// of 10 ms each, and `rate()` would read the wrap as a counter reset.
/// `sum_high` counts units of 2^[`SUM_LOW_BITS`] ns (it wraps after 2^76 ns,
/// 48 years at that rate) and `sum_low` the rest (under 2^12 a record, so
/// it wraps after 2^52 records: 140 years at a million batches a second).
#[derive(Debug)]
pub struct Histogram {
    buckets: Box<[AtomicU64; BUCKETS]>,
    sum_high: AtomicU64,
    sum_low: AtomicU64,
}

/// How the sum of a [`Histogram`] is split between its two words.
const SUM_LOW_BITS: u32 = 12;

impl Default for Histogram {
    fn default() -> Self {
        Self {
            buckets: Box::new(std::array::from_fn(|_| AtomicU64::new(0))),
            sum_high: AtomicU64::new(0),
            sum_low: AtomicU64::new(0),
        }
    }
}

impl Histogram {
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
        self.buckets[bucket_index(value)].fetch_add(n, Relaxed);
        let add = u128::from(value) * u128::from(n);
        // The high part first, and the low part released after it: a
        // reader that sees the low part sees the high part too, so a read
        // sum may miss under 2^12 ns of a record in flight but never goes back.
        self.sum_high.fetch_add(u64::try_from(add >> SUM_LOW_BITS).unwrap_or(u64::MAX), Relaxed);
        self.sum_low.fetch_add((add as u64) & ((1 << SUM_LOW_BITS) - 1), Release);
    }

    pub fn snapshot(&self) -> HistogramSnapshot {
        let low = self.sum_low.load(Acquire);
        let high = self.sum_high.load(Relaxed);
        HistogramSnapshot {
            buckets: self.buckets.iter().map(|b| b.load(Relaxed)).collect(),
            sum: (u128::from(high) << SUM_LOW_BITS) + u128::from(low),
        }
    }
}

/// A copy of a [`Histogram`]: `buckets[i]` counts the values of bucket `i`
/// (see [`bucket_low`]); shorter than [`BUCKETS`] means the rest are 0.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HistogramSnapshot {
    pub buckets: Vec<u64>,
    /// The sum of the recorded values: exact, and in a `u128` so that sums
    /// of sums cannot wrap either.
    pub sum: u128,
}

impl HistogramSnapshot {
    pub fn count(&self) -> u64 {
        self.buckets.iter().fold(0u64, |a, &n| a.saturating_add(n))
    }

    /// Upper bound of the bucket holding quantile `q` (0..=1): the
    /// smallest value above it, less one (the value itself below 32); 0
    /// if empty, `u64::MAX` in the last bucket.
    pub fn quantile_upper_bound(&self, q: f64) -> u64 {
        let total = self.count();
        if total == 0 {
            return 0;
        }
        let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).clamp(1, total);
        let mut seen = 0u64;
        for (b, &n) in self.buckets.iter().enumerate() {
            seen = seen.saturating_add(n);
            if seen >= rank {
                return if b + 1 >= BUCKETS { u64::MAX } else { bucket_low(b + 1) - 1 };
            }
        }
        u64::MAX
    }

    pub fn merge(&mut self, other: &HistogramSnapshot) {
        if self.buckets.len() < other.buckets.len() {
            self.buckets.resize(other.buckets.len(), 0);
        }
        for (a, b) in self.buckets.iter_mut().zip(&other.buckets) {
            *a = a.saturating_add(*b);
        }
        self.sum = self.sum.saturating_add(other.sum);
    }

    /// What was recorded after `earlier` (a snapshot of the same
    /// histogram taken before): counts never go below 0.
    pub fn since(&self, earlier: &HistogramSnapshot) -> HistogramSnapshot {
        let buckets = self
            .buckets
            .iter()
            .enumerate()
            .map(|(i, &n)| n.saturating_sub(earlier.buckets.get(i).copied().unwrap_or(0)));
        HistogramSnapshot { buckets: buckets.collect(), sum: self.sum.saturating_sub(earlier.sum) }
    }

    /// Cumulative counts at `bounds` (ascending), as Prometheus reads a
    /// bucket's `le`: `(le, count of values <= le)`. Each bound is first
    /// moved down to the bucket edge at or below it, and `le` is that edge
    /// less one (the largest value below it), so every count is exact:
    /// 10_000 gives `le` 9_983, 2 gives 1. Bounds that fall on the same
    /// edge are given once; a bound below 1 is left out (no value is
    /// below 0).
    pub fn cumulative_at(&self, bounds: &[u64]) -> Vec<(u64, u64)> {
        let mut out: Vec<(u64, u64)> = Vec::with_capacity(bounds.len());
        let mut seen = 0u64;
        let mut next = 0usize;
        for &bound in bounds {
            let index = bucket_index(bound);
            let Some(le) = bucket_low(index).checked_sub(1) else { continue };
            if out.last().is_some_and(|&(l, _)| l >= le) {
                continue;
            }
            while next < index {
                seen = seen.saturating_add(self.buckets.get(next).copied().unwrap_or(0));
                next += 1;
            }
            out.push((le, seen));
        }
        out
    }

    /// The buckets that hold anything: `(index, count)`.
    pub fn nonzero(&self) -> impl Iterator<Item = (usize, u64)> + '_ {
        self.buckets.iter().copied().enumerate().filter(|&(_, n)| n > 0)
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
    pub batch_events: Histogram,
    /// Nanoseconds per applied batch.
    pub apply_ns: Histogram,
    /// Per event: nanoseconds from `submit` accepting its batch to its
    /// batch applied.
    pub ingest_to_applied_ns: Histogram,
    /// Per event, with a journal: from `submit` to the fsync policy's
    /// durability point (when its acknowledgement is released).
    pub ingest_to_durable_ns: Histogram,
    /// Rejections by the game's reason index.
    pub rejections: Vec<AtomicU64>,
    /// Bytes the journal thread wrote.
    pub journal_bytes: AtomicU64,
    /// `fdatasync` calls that had something to sync.
    pub fsyncs: AtomicU64,
    /// Nanoseconds per `fdatasync`.
    pub fsync_ns: Histogram,
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
            batch_events: Histogram::default(),
            apply_ns: Histogram::default(),
            ingest_to_applied_ns: Histogram::default(),
            ingest_to_durable_ns: Histogram::default(),
            rejections: (0..rejection_reasons).map(|_| AtomicU64::new(0)).collect(),
            journal_bytes: AtomicU64::new(0),
            fsyncs: AtomicU64::new(0),
            fsync_ns: Histogram::default(),
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
    /// Batches taken with a shard's queue past `queue_wait_max`, on its
    /// burst allowance.
    pub burst_admits: u64,
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
    fn buckets_are_exact_below_32_then_32_per_power_of_two() {
        for v in 0..32 {
            assert_eq!(bucket_index(v), v as usize);
            assert_eq!(bucket_low(v as usize), v);
        }
        assert_eq!(bucket_index(32), 32);
        assert_eq!(bucket_index(63), 63);
        assert_eq!(bucket_index(64), 64);
        assert_eq!(bucket_index(65), 64);
        assert_eq!(bucket_index(66), 65);
        // Every bucket's edges hold: low is in it, low - 1 is not, and
        // the edges climb without a gap.
        for i in 1..BUCKETS {
            let low = bucket_low(i);
            assert_eq!(bucket_index(low), i, "bucket {i}");
            assert_eq!(bucket_index(low - 1), i - 1, "below bucket {i}");
            assert!(bucket_high(i) > low);
        }
        assert_eq!(bucket_low(BUCKETS - 1), 63 << 30);
        assert_eq!(bucket_index(u64::MAX), BUCKETS - 1);
        assert_eq!(bucket_high(BUCKETS - 1), u64::MAX);
    }

    #[test]
    fn ten_microseconds_are_resolved_up_to_300_and_three_per_cent_above() {
        // Nanoseconds: every bucket from 0 to 524 us is at most 8.2 us wide.
        for i in 0..bucket_index(524_000) {
            assert!(bucket_high(i) - bucket_low(i) <= 8_192, "bucket {i} at {} ns", bucket_low(i));
        }
        // 100, 110, ..., 300 us land in different buckets.
        let steps: Vec<usize> = (10..=30).map(|k| bucket_index(k * 10_000)).collect();
        assert!(steps.windows(2).all(|w| w[0] < w[1]), "{steps:?}");
        // Above: no bucket wider than 1/32 of its lower bound, up to 60 s.
        for i in 32..bucket_index(60_000_000_000) {
            let (low, high) = (bucket_low(i), bucket_high(i));
            assert!((high - low) * 32 <= low, "bucket {i}: {low}..{high}");
        }
    }

    #[test]
    fn quantiles_and_extremes() {
        let h = Histogram::default();
        for v in [0, 1, 2, 3, 1000, 1000, 1000, 1000] {
            h.record(v);
        }
        let s = h.snapshot();
        assert_eq!(s.count(), 8);
        assert_eq!(s.quantile_upper_bound(0.25), 1);
        assert_eq!(s.quantile_upper_bound(0.5), 3);
        // 1000 is in 992..1024 (shift 4: 16 wide).
        assert_eq!(s.quantile_upper_bound(0.75), 1007);
        assert!(s.quantile_upper_bound(0.75) >= 1000);
        assert_eq!(HistogramSnapshot::default().quantile_upper_bound(0.99), 0);
        // No panic at the ends, nor with nonsense quantiles.
        h.record(u64::MAX);
        h.record_n(u64::MAX, 1 << 40);
        h.record_n(5, 0);
        let s = h.snapshot();
        assert_eq!(s.quantile_upper_bound(1.0), u64::MAX);
        assert_eq!(s.quantile_upper_bound(f64::NAN), 0);
        assert_eq!(s.quantile_upper_bound(-1.0), 0);
        assert_eq!(s.quantile_upper_bound(2.0), u64::MAX);
    }

    #[test]
    fn percentiles_from_the_difference_of_two_snapshots() {
        let h = Histogram::default();
        // Before the step: a slow start that must not count in it.
        h.record_n(5_000_000, 100);
        let before = h.snapshot();
        // The step: 90 events at 120 us, 10 at 250 us (one batch each).
        h.record_n(120_000, 90);
        h.record_n(250_000, 10);
        let step = h.snapshot().since(&before);
        assert_eq!(step.count(), 100);
        assert_eq!(step.sum, 90 * 120_000 + 10 * 250_000);
        let p50 = step.quantile_upper_bound(0.5);
        let p99 = step.quantile_upper_bound(0.99);
        assert!((120_000..122_000).contains(&p50), "{p50}");
        assert!((250_000..254_000).contains(&p99), "{p99}");
        // Counts that went backwards (a restarted server) read 0, not a panic.
        assert_eq!(before.since(&h.snapshot()).count(), 0);
    }

    #[test]
    fn cumulative_counts_sit_on_bucket_edges() {
        let h = Histogram::default();
        for v in [5_000, 9_000, 10_000, 10_100, 2_000_000] {
            h.record(v);
        }
        let c = h.snapshot().cumulative_at(&[10_000, 10_050, 1_000_000, u64::MAX]);
        // 10 us is moved down to 9984 (39 * 256), `le` 9983; 10_050 falls
        // on the same edge.
        assert_eq!(c[0], (9_983, 2));
        assert_eq!(c[1], (999_423, 4));
        assert_eq!(c[2], ((63 << 30) - 1, 5));
        assert_eq!(c.len(), 3);
    }

    /// `le` counts values less than or equal to it: a value of exactly
    /// 2^k is under `le` 2^(k+1)-1, not 2^k-1, and values of 0 are under
    /// `le` 0 only.
    #[test]
    fn cumulative_counts_are_less_or_equal() {
        let h = Histogram::default();
        for v in [0, 1, 2, 4, 4, 64] {
            h.record(v);
        }
        let c = h.snapshot().cumulative_at(&[0, 1, 2, 4, 8, 64, 128]);
        assert_eq!(c, [(0, 1), (1, 2), (3, 3), (7, 5), (63, 5), (127, 6)]);
    }

    /// The sum is exact far past where one u64 of nanoseconds wraps.
    #[test]
    fn the_sum_does_not_wrap() {
        let h = Histogram::default();
        let (value, n) = (10_000_000u64, 5_000_000u64); // 10 ms, 5 M events
        let rounds = 400_000u64; // 400k seconds at 5 M events/s: 4.6 days
        for _ in 0..rounds {
            h.record_n(value, n);
        }
        h.record_n(4095, 1);
        let expected = u128::from(value) * u128::from(n) * u128::from(rounds) + 4095;
        assert!(expected > u128::from(u64::MAX));
        assert_eq!(h.snapshot().sum, expected);
        let earlier = h.snapshot();
        h.record_n(7, 3);
        assert_eq!(h.snapshot().since(&earlier).sum, 21);
    }
}
