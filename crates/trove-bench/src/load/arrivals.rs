//! The arrival schedule: when each event is meant to be sent, independent of
//! when the generator manages to send it.
//!
//! Time is cut into slots of [`SLOT`]. Each slot gets a number of arrivals:
//! `rate x SLOT` with the fraction carried to the next slot (constant), or
//! a Poisson draw of that mean (poisson). Within a slot the arrivals are
//! spread evenly, so event `j` of `n` in the slot starting at `t` is
//! intended for `t + (j + 0.5) x SLOT / n`. The generator sends a slot's
//! events once the slot has ended, never before their intended time.

use std::time::Duration;

use trove_core::SplitMix64;

/// The schedule's resolution. Shorter slots cost more bookkeeping; the
/// latency figures are exact to within half a slot.
pub const SLOT: Duration = Duration::from_micros(100);

pub const SLOT_NS: u64 = SLOT.as_nanos() as u64;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arrivals {
    Constant,
    Poisson,
}

impl Arrivals {
    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "constant" => Ok(Self::Constant),
            "poisson" => Ok(Self::Poisson),
            other => Err(format!("unknown arrival process `{other}`: expected constant or poisson")),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Constant => "constant",
            Self::Poisson => "poisson",
        }
    }
}

/// Arrival counts per slot for one producer at one rate.
#[derive(Debug)]
pub struct Schedule {
    arrivals: Arrivals,
    /// Mean arrivals per slot.
    mean: f64,
    carry: f64,
    /// exp(-mean), for small means (Knuth's method).
    exp_neg_mean: f64,
    rng: SplitMix64,
}

/// Above this mean a Poisson count is drawn from its normal approximation
/// (the error is far below the run-to-run noise of a benchmark).
const KNUTH_MEAN_MAX: f64 = 30.0;

impl Schedule {
    pub fn new(arrivals: Arrivals, events_per_s: f64, seed: u64) -> Self {
        let mean = (events_per_s.max(0.0) * SLOT.as_secs_f64()).min(1e9);
        Self { arrivals, mean, carry: 0.0, exp_neg_mean: (-mean).exp(), rng: SplitMix64::new(seed) }
    }

    /// The number of arrivals in the next slot.
    pub fn next_slot(&mut self) -> u32 {
        match self.arrivals {
            Arrivals::Constant => {
                self.carry += self.mean;
                let n = self.carry.floor();
                self.carry -= n;
                n as u32
            }
            Arrivals::Poisson if self.mean <= KNUTH_MEAN_MAX => {
                let mut n = 0u32;
                let mut p = self.uniform();
                while p > self.exp_neg_mean {
                    n += 1;
                    p *= self.uniform();
                }
                n
            }
            Arrivals::Poisson => {
                // Box-Muller.
                let (u1, u2) = (self.uniform().max(f64::MIN_POSITIVE), self.uniform());
                let z = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
                (self.mean + self.mean.sqrt() * z).round().max(0.0) as u32
            }
        }
    }

    /// Uniform in [0, 1).
    fn uniform(&mut self) -> f64 {
        (self.rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// The intended time, in ns from the slot's start, of the middle of events
/// `from..to` of a slot holding `n`.
pub fn offset_ns(from: u32, to: u32, n: u32) -> u64 {
    debug_assert!(from < to && to <= n);
    // Event j sits at (j + 0.5) / n of the slot; the middle of from..to at
    // ((from + to) / 2) / n.
    (u64::from(from + to) * SLOT_NS) / (2 * u64::from(n))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn total(arrivals: Arrivals, rate: f64, slots: u32) -> u64 {
        let mut s = Schedule::new(arrivals, rate, 7);
        (0..slots).map(|_| u64::from(s.next_slot())).sum()
    }

    #[test]
    fn constant_hits_the_rate_exactly() {
        // 10 s of slots.
        let slots = 100_000;
        for rate in [1.0, 333.0, 12_345.0, 1e6, 2.5e7] {
            let n = total(Arrivals::Constant, rate, slots) as f64;
            assert!((n - rate * 10.0).abs() <= 1.0, "rate {rate}: {n}");
        }
        // Spread evenly: at 1M/s every slot holds 100.
        let mut s = Schedule::new(Arrivals::Constant, 1e6, 0);
        assert!((0..1000).all(|_| s.next_slot() == 100));
    }

    #[test]
    fn poisson_has_the_mean_and_variance() {
        for rate in [5_000.0, 100_000.0, 1e6, 1e7] {
            let slots = 50_000u32;
            let mut s = Schedule::new(Arrivals::Poisson, rate, 99);
            let counts: Vec<f64> = (0..slots).map(|_| f64::from(s.next_slot())).collect();
            let mean = counts.iter().sum::<f64>() / f64::from(slots);
            let var = counts.iter().map(|c| (c - mean).powi(2)).sum::<f64>() / f64::from(slots);
            let want = rate * SLOT.as_secs_f64();
            assert!((mean - want).abs() < 0.02 * want + 0.05, "rate {rate}: mean {mean} want {want}");
            // A Poisson count's variance equals its mean.
            assert!((var - want).abs() < 0.1 * want + 0.1, "rate {rate}: variance {var} want {want}");
        }
    }

    #[test]
    fn zero_rate_has_no_arrivals() {
        assert_eq!(total(Arrivals::Constant, 0.0, 1000), 0);
        assert_eq!(total(Arrivals::Poisson, 0.0, 1000), 0);
    }

    #[test]
    fn offsets_sit_inside_the_slot() {
        assert_eq!(offset_ns(0, 1, 1), SLOT_NS / 2);
        assert_eq!(offset_ns(0, 100, 100), SLOT_NS / 2);
        assert!(offset_ns(99, 100, 100) < SLOT_NS);
        assert!(offset_ns(0, 1, 100) > 0);
    }
}
