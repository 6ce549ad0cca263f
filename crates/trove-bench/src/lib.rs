//! trove's benchmark harnesses, behind `trove bench`: the `trove` binary
//! flattens [`cli::Bench`] into its command tree and hands what it parsed
//! to [`run`]; a failure is an [`Error`].
//!
//! # Layout
//!
//! - [`cli`]: the clap arguments of `trove bench` and its subcommands.
//! - [`command`]: a parsed `trove bench ...` turned into a harness run.
//! - [`error`]: [`Error`], what a run fails with.
//! - [`apply`]: `trove bench apply`, the single-thread rules benchmark.
//! - [`engine`]: `trove bench engine`, the workload through the executor.
//! - [`net`]: `trove bench net`, end to end over loopback through the SDK.
//! - [`pairs`]: their `--pairs N`: the journal's cost as interleaved pairs.
//! - [`load`]: `trove bench` itself, the open-loop load generator.
//! - [`load_cmd`]: its flags checked and turned into a run.
//! - [`workload_arg`]: resolving `--workload NAME|FILE`.

pub mod apply;
pub mod cli;
pub mod command;
pub mod engine;
pub mod error;
pub mod load;
pub mod load_cmd;
pub mod net;
pub mod pairs;
pub mod workload_arg;

pub use command::{ServeShards, run};
pub use error::Error;

/// `n` and `word`, plural unless `n` is 1: "1 shard", "2 shards",
/// "2 batches" (a word ending in s, x, z, ch or sh takes -es).
pub fn plural(n: u64, word: &str) -> String {
    if n == 1 {
        return format!("1 {word}");
    }
    let es = ["s", "x", "z", "ch", "sh"].iter().any(|end| word.ends_with(end));
    format!("{n} {word}{}", if es { "es" } else { "s" })
}
