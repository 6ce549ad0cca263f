//! The trove binary's library half: everything `main` dispatches to, so
//! integration tests can call it too.
//!
//! # Layout
//!
//! - [`cli`]: the clap command tree.
//! - [`bench_apply`]: `trove bench apply`, the single-thread rules benchmark.
//! - [`bench_engine`]: `trove bench engine`, the workload through the executor.
//! - [`serve`]: `trove serve`, the engine behind its data plane.
//! - [`bench_net`]: `trove bench net`, end to end over loopback through the SDK.
//! - [`pairs`]: their `--pairs N`: the journal's cost as interleaved pairs.
//! - [`load`]: `trove bench` itself, the open-loop load generator.
//! - [`load_cmd`]: its flags checked and turned into a run.
//! - [`journal_cmd`]: `trove journal verify|inspect` and `trove replay`.
//! - [`workload_arg`]: resolving `--workload NAME|FILE`.

pub mod bench_apply;
pub mod bench_engine;
pub mod bench_net;
pub mod cli;
pub mod journal_cmd;
pub mod load;
pub mod load_cmd;
pub mod pairs;
pub mod serve;
pub mod workload_arg;

/// `n` and `word`, plural unless `n` is 1: "1 shard", "2 shards",
/// "2 batches" (a word ending in s, x, z, ch or sh takes -es).
pub fn plural(n: u64, word: &str) -> String {
    if n == 1 {
        return format!("1 {word}");
    }
    let es = ["s", "x", "z", "ch", "sh"].iter().any(|end| word.ends_with(end));
    format!("{n} {word}{}", if es { "es" } else { "s" })
}
