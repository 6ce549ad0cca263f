//! `--pairs N` of `trove bench engine` and `trove bench net`: what the
//! journal costs, as a measured ratio.
//!
//! One run on this machine says little (the same command varies by 20%
//! from one run to the next), so the journal's cost is measured as N
//! interleaved pairs: the run without a journal, then the same run with
//! one, each journaled run into a fresh directory. A drift of the machine
//! then lands on both sides of a pair alike. The report gives every pair's
//! ratio (journaled over none) and their median, the figure the
//! 80% target is stated in (docs/benchmarks.md; it was set for
//! `interval=5`).

use std::path::{Path, PathBuf};

use serde::Serialize;
use trove_shard::JournalConfig;
use trove_workload::WorkloadSpec;

use crate::engine::{self, EngineBenchArgs, EngineReport};
use crate::net::{self, NetBenchArgs, NetReport};

/// Most pairs one command runs.
pub const PAIRS_MAX: u32 = 100;

#[derive(Debug, Serialize)]
pub struct Pair<R> {
    pub none_events_per_s: f64,
    pub journaled_events_per_s: f64,
    /// Journaled events per second over none's.
    pub ratio: f64,
    /// The two runs' own reports.
    pub none: R,
    pub journaled: R,
}

#[derive(Debug, Serialize)]
pub struct PairsReport<R> {
    /// The journaled side's fsync policy.
    pub journal: String,
    pub pairs: Vec<Pair<R>>,
    pub none_events_per_s_median: f64,
    pub journaled_events_per_s_median: f64,
    /// The median of the pairs' ratios (not the ratio of the medians).
    pub ratio_median: f64,
    pub ratio_min: f64,
    pub ratio_max: f64,
    /// Pairs whose ratio is 0.8 or more (the target set for `interval=5`).
    pub pairs_at_80_percent: usize,
}

/// Runs `n` pairs: `one(None)` without a journal, then `one(Some(k))` with
/// one (the `k`-th pair, from 1), and reports their rates (`rate`). A line
/// per pair goes to stderr as it completes.
pub fn run<R>(
    n: u32,
    journal: &str,
    rate: impl Fn(&R) -> f64,
    mut one: impl FnMut(Option<u32>) -> Result<R, String>,
) -> Result<PairsReport<R>, String> {
    if !(1..=PAIRS_MAX).contains(&n) {
        return Err(format!("--pairs must be in 1..={PAIRS_MAX}"));
    }
    let mut pairs = Vec::new();
    for k in 1..=n {
        let none = one(None)?;
        let journaled = one(Some(k))?;
        let (a, b) = (rate(&none), rate(&journaled));
        let ratio = if a > 0.0 { b / a } else { 0.0 };
        eprintln!("pair {k}/{n}: none {:.2} M/s, {journal} {:.2} M/s: {:.1}%", a / 1e6, b / 1e6, ratio * 100.0);
        pairs.push(Pair { none_events_per_s: a, journaled_events_per_s: b, ratio, none, journaled });
    }
    let ratios: Vec<f64> = pairs.iter().map(|p| p.ratio).collect();
    Ok(PairsReport {
        journal: journal.to_string(),
        none_events_per_s_median: median(pairs.iter().map(|p| p.none_events_per_s).collect()),
        journaled_events_per_s_median: median(pairs.iter().map(|p| p.journaled_events_per_s).collect()),
        ratio_median: median(ratios.clone()),
        ratio_min: ratios.iter().copied().fold(f64::INFINITY, f64::min),
        ratio_max: ratios.iter().copied().fold(0.0, f64::max),
        pairs_at_80_percent: ratios.iter().filter(|&&r| r >= 0.8).count(),
        pairs,
    })
}

/// `trove bench engine --data DIR --pairs N`: `bench` in memory, then
/// journaled as `bench.journal` says, in a fresh directory under its `dir`.
pub fn engine(spec: &WorkloadSpec, bench: &EngineBenchArgs, n: u32) -> Result<PairsReport<EngineReport>, String> {
    let Some(journal) = &bench.journal else {
        return Err("--pairs needs --data DIR: each pair's journaled run journals under it".into());
    };
    if bench.ack_log.is_some() {
        return Err("--ack-log is for a single run: drop it or --pairs".into());
    }
    run(
        n,
        &journal.fsync.to_string(),
        |r: &EngineReport| r.events_per_s,
        |k| match k {
            None => engine::run(spec, &EngineBenchArgs { journal: None, ..bench.clone() }),
            Some(k) => in_pair_dir(&journal.dir, k, |dir| {
                let journal = Some(JournalConfig { dir: dir.to_path_buf(), ..journal.clone() });
                engine::run(spec, &EngineBenchArgs { journal, ..bench.clone() })
            }),
        },
    )
}

/// `trove bench net --pairs N`: `bench` in memory, then with its fsync
/// policy, in a fresh directory under its `data` if given (else the
/// benchmark's own temporary one).
pub fn net(spec: &WorkloadSpec, bench: &NetBenchArgs, n: u32) -> Result<PairsReport<NetReport>, String> {
    let Some(policy) = bench.fsync else {
        return Err("--pairs compares none with a journal: give --fsync group, always, interval=<ms> or never".into());
    };
    if bench.target.is_some() {
        return Err("--pairs starts its own servers, without a journal and with one: drop --target".into());
    }
    run(
        n,
        &policy.to_string(),
        |r: &NetReport| r.acked_events_per_s,
        |k| match (k, &bench.data) {
            (None, _) => net::run(spec, &NetBenchArgs { fsync: None, data: None, ..bench.clone() }),
            (Some(_), None) => net::run(spec, bench),
            (Some(k), Some(base)) => in_pair_dir(base, k, |dir| {
                net::run(spec, &NetBenchArgs { data: Some(dir.to_path_buf()), ..bench.clone() })
            }),
        },
    )
}

/// Runs `f` with a fresh directory for pair `k` under `base`, removed after.
fn in_pair_dir<R>(base: &Path, k: u32, f: impl FnOnce(&Path) -> Result<R, String>) -> Result<R, String> {
    let dir = pair_dir(base, k)?;
    let report = f(&dir);
    remove_pair_dir(&dir)?;
    report
}

/// The middle value; the mean of the two middle ones for an even count.
fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// A fresh directory for pair `k`'s journal under `base`. An existing one
/// is refused rather than reused or removed: it may hold someone's journal.
fn pair_dir(base: &Path, k: u32) -> Result<PathBuf, String> {
    let dir = base.join(format!("pair-{k}"));
    if dir.exists() {
        return Err(format!(
            "{} exists: --pairs journals each pair into a fresh directory under --data, and does not reuse or \
             remove one it did not make",
            dir.display()
        ));
    }
    std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    Ok(dir)
}

/// Removes a directory `pair_dir` made, after its run.
fn remove_pair_dir(dir: &Path) -> Result<(), String> {
    std::fs::remove_dir_all(dir).map_err(|e| format!("removing {}: {e}", dir.display()))
}

impl<R> std::fmt::Display for PairsReport<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (k, p) in self.pairs.iter().enumerate() {
            writeln!(
                f,
                "pair {}: none {:.2} M events/s, {} {:.2} M events/s: {:.1}%",
                k + 1,
                p.none_events_per_s / 1e6,
                self.journal,
                p.journaled_events_per_s / 1e6,
                p.ratio * 100.0
            )?;
        }
        writeln!(
            f,
            "medians: none {:.2} M events/s, {} {:.2} M events/s",
            self.none_events_per_s_median / 1e6,
            self.journal,
            self.journaled_events_per_s_median / 1e6
        )?;
        write!(
            f,
            "journaled over none, pairwise: median {:.1}% ({:.1}-{:.1}%), {} of {} pairs at 80% or more",
            self.ratio_median * 100.0,
            self.ratio_min * 100.0,
            self.ratio_max * 100.0,
            self.pairs_at_80_percent,
            self.pairs.len()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_median_of_the_ratios_is_reported() {
        // Rates by call: none, journaled, none, journaled, ...
        let rates = [10.0, 9.0, 20.0, 10.0, 10.0, 7.0, 10.0, 8.0];
        let mut calls = rates.iter();
        let mut sides = Vec::new();
        let r = run(
            4,
            "interval=5",
            |&x: &f64| x,
            |k| {
                sides.push(k);
                Ok(*calls.next().expect("4 pairs"))
            },
        )
        .expect("runs");
        assert_eq!(sides, [None, Some(1), None, Some(2), None, Some(3), None, Some(4)]);
        let ratios: Vec<f64> = r.pairs.iter().map(|p| p.ratio).collect();
        assert_eq!(ratios, [0.9, 0.5, 0.7, 0.8]);
        assert!((r.ratio_median - 0.75).abs() < 1e-12);
        assert_eq!((r.ratio_min, r.ratio_max, r.pairs_at_80_percent), (0.5, 0.9, 2));
        assert_eq!((r.none_events_per_s_median, r.journaled_events_per_s_median), (10.0, 8.5));
    }

    #[test]
    fn a_failed_run_stops_the_series() {
        let mut n = 0;
        let r = run(
            3,
            "always",
            |&x: &f64| x,
            |_| {
                n += 1;
                if n == 3 { Err("disk full".into()) } else { Ok(1.0) }
            },
        );
        assert_eq!(r.unwrap_err(), "disk full");
        assert_eq!(n, 3);
    }

    #[test]
    fn pair_counts_out_of_range_are_refused() {
        for n in [0, PAIRS_MAX + 1] {
            let err = run(n, "never", |&x: &f64| x, |_| Ok(1.0)).unwrap_err();
            assert!(err.contains("--pairs"), "{err}");
        }
    }

    #[test]
    fn a_pair_directory_is_never_reused() {
        let base = std::env::temp_dir().join(format!("trove-pairs-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let dir = pair_dir(&base, 1).expect("fresh");
        std::fs::write(dir.join("kept"), b"someone's").expect("write");
        let err = pair_dir(&base, 1).unwrap_err();
        assert!(err.contains("pair-1 exists"), "{err}");
        assert!(dir.join("kept").exists());
        remove_pair_dir(&dir).expect("remove");
        assert!(!dir.exists());
        std::fs::remove_dir_all(&base).expect("cleanup");
    }
}
