//! trove's benchmark harnesses, behind `trove bench`: the `trove` binary
//! parses the command line and dispatches here.
//!
//! # Layout
//!
//! - [`apply`]: `trove bench apply`, the single-thread rules benchmark.
//! - [`engine`]: `trove bench engine`, the workload through the executor.
//! - [`net`]: `trove bench net`, end to end over loopback through the SDK.
//! - [`pairs`]: their `--pairs N`: the journal's cost as interleaved pairs.
//! - [`load`]: `trove bench` itself, the open-loop load generator.
//! - [`workload_arg`]: resolving `--workload NAME|FILE`.

pub mod apply;
pub mod engine;
pub mod load;
pub mod net;
pub mod pairs;
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
