//! Deterministic simulation of a shard under network and disk faults.
//!
//! One seed decides everything: the workload (trove-workload's
//! `Generator`, the treasure hunt), the producers' batches, the network
//! (connection drops, after which a producer resends every unanswered
//! batch with its original sequences; a bounded queue refusing whole
//! batches, BUSY; batches reusing an applied sequence with another
//! event), the fsync policy, the snapshots, the crashes and every fault of
//! the simulated disk. The REAL shard core (trove-shard's `ShardCore`)
//! takes the batches as `WorkPart`s, deduplicates, applies and hands its
//! journal batches to the REAL `JournalWriter` on a `SimStorage`; answers
//! are released only at the durability point the writer reports, and
//! snapshots are the core's, written as the engine writes them. After each
//! crash the engine's own recovery (`trove_shard::recover_core_in`: the
//! newest snapshot, `recover_shard`, the dedup state rebuilt) runs on what
//! the disk kept and builds the next core, and the checks run: every
//! acknowledged event is in the recovered state exactly once; the
//! recovered state hashes as a replay of the recovered journal does; the
//! recovered dedup state matches the journal; a retry gets its original
//! outcome (or `duplicate` once the window forgot it); a reused sequence
//! is answered `duplicate` and never applied; nothing damaged is applied
//! (damage must be reported). No clock, no thread, no file: a seed
//! replays exactly.
//!
//! # Layout
//!
//! - [`config`]: [`SimConfig`], one run's settings drawn from its seed.
//! - [`sim`]: [`run`], one run: producers, shard, journal, crashes,
//!   network, recovery and the checks; its [`Report`] and [`Verdict`].
//! - [`cluster`]: [`run_cluster`], the cluster mode: nodes owning
//!   partitions through leases, each partition's log a simulated
//!   JetStream stream ([`stream`]: `SimStream` and `SimLog`, the
//!   `ShardLog` over it), crashes, stalls past the lease, takeovers through
//!   the real `Rebuild`, fences; decision 0039.
//! - `main.rs`: the `trove-sim` binary (`--seed S`, `--seeds N`,
//!   `--cluster`).

pub mod cluster;
pub mod config;
pub mod sim;
pub mod stream;

pub use cluster::{ClusterReport, first_cluster_failure, run_cluster, run_cluster_with};
pub use config::SimConfig;
pub use sim::{Report, Verdict, run};
pub use stream::ClusterBug;

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
