//! Latency histograms: per step, in microseconds.

use hdrhistogram::Histogram;

use super::model::LatencyUs;

/// Latency histograms, in microseconds.
pub(super) const LATENCY_US_MAX: u64 = 600_000_000;

/// Two significant figures: 1% resolution, a few tens of KiB per histogram.
pub(super) fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_US_MAX, 2).expect("histogram bounds")
}

/// Latency histograms of the steps not yet collected (the current one;
/// late entries of an earlier one), by step.
#[derive(Debug, Default)]
pub(super) struct Latencies {
    pub(super) steps: Vec<(u32, Histogram<u64>, u64)>,
}

impl Latencies {
    pub(super) fn record(&mut self, step: u32, us: u64, n: u64) {
        let i = match self.steps.iter().position(|s| s.0 == step) {
            Some(i) => i,
            None => {
                self.steps.push((step, histogram(), 0));
                self.steps.len() - 1
            }
        };
        let (_, h, count) = &mut self.steps[i];
        h.saturating_record_n(us.max(1), n);
        *count += n;
    }

    pub(super) fn merge_into(&self, step: u32, into: &mut Histogram<u64>) -> u64 {
        match self.steps.iter().find(|s| s.0 == step) {
            Some((_, h, n)) => {
                into.add(h).ok();
                *n
            }
            None => 0,
        }
    }

    /// Forgets `step` and every step before it.
    pub(super) fn collected(&mut self, step: u32) {
        self.steps.retain(|s| s.0 > step);
    }
}

pub(super) fn latency(h: &Histogram<u64>) -> LatencyUs {
    LatencyUs {
        p50: h.value_at_quantile(0.50),
        p99: h.value_at_quantile(0.99),
        p999: h.value_at_quantile(0.999),
        max: h.max(),
    }
}
