//! Deterministic simulation of the journal under disk faults.
//!
//! One seed decides everything: the workload (trove-workload's
//! `Generator`, the treasure hunt), the producers' sends, the shard's
//! batches, the fsync policy, the snapshots, the crashes and every fault
//! of the simulated disk. The shard applies batches with trove-core's
//! `GameState` and hands them to the REAL `JournalWriter` on a
//! `SimStorage`; acknowledgements leave only at the durability point the
//! writer reports. After each crash the REAL recovery (the newest
//! snapshot, then `recover_shard`) runs on what the disk kept, and the
//! checks run: every acknowledged event is in the recovered state exactly
//! once; the recovered state hashes as a replay of the recovered journal
//! does; nothing damaged is applied (damage must be reported). No clock,
//! no thread, no file: a seed replays exactly.
//!
//! # Layout
//!
//! - [`config`]: [`SimConfig`], one run's settings drawn from its seed.
//! - [`dedup`]: [`Dedup`], the per-producer bookkeeping that applies each
//!   event once: minimal, and alone in its module so that the shard core
//!   can take its place.
//! - [`sim`]: [`run`], one run: producers, shard, journal, crashes,
//!   recovery and the checks; its [`Report`] and [`Verdict`].
//! - `main.rs`: the `trove-sim` binary (`--seed S`, `--seeds N`).

pub mod config;
pub mod dedup;
pub mod sim;

pub use config::SimConfig;
pub use dedup::Dedup;
pub use sim::{Report, Verdict, run};

/// The first failing seed of `count` seeds from `from`, and how many ran.
pub fn first_failure(from: u64, count: u64) -> (Option<Report>, u64) {
    for (i, seed) in (from..from.saturating_add(count)).enumerate() {
        let report = run(seed);
        if report.verdict.failed() {
            return (Some(report), i as u64 + 1);
        }
    }
    (None, count)
}
