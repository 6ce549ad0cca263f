//! The command tree.

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "trove",
    version,
    about = "A deterministic game event engine",
    propagate_version = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Measure the engine.
    #[command(subcommand)]
    Bench(Bench),
}

#[derive(Debug, Subcommand)]
pub enum Bench {
    /// Apply a workload in-process on one thread: the rules' own speed.
    Apply(BenchApply),
    /// Drive a workload in-process through the executor at the maximum rate.
    Engine(BenchEngine),
}

#[derive(Debug, Args)]
pub struct BenchEngine {
    /// Execution mode: sharded, task-per-event or spawn-blocking-per-event.
    #[arg(long, default_value = "sharded")]
    pub mode: String,
    /// Shard threads (sharded) or runtime workers (per-event modes); default: one per core.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub shards: Option<u32>,
    /// Producer threads, each owning a partition of the hunts.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub producers: u32,
    /// Events to measure after setup.
    #[arg(long, default_value_t = 10_000_000, value_parser = clap::value_parser!(u64).range(1..=200_000_000))]
    pub events: u64,
    /// Events per submitted batch.
    #[arg(long, default_value_t = 4096, value_parser = clap::value_parser!(u32).range(1..=65_536))]
    pub batch: u32,
    /// Batches each producer keeps in flight.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub window: u32,
    /// Pin shard threads to cores.
    #[arg(long)]
    pub pin: bool,
    /// A built-in workload name (standard) or a workload TOML file.
    #[arg(long, default_value = "standard")]
    pub workload: String,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct BenchApply {
    /// Events to apply after setup (setup creates the hunts and joins every player).
    #[arg(long, default_value_t = 20_000_000, value_parser = clap::value_parser!(u64).range(1..=10_000_000_000))]
    pub events: u64,
    /// Events per applied batch, as a shard would drain them.
    #[arg(long, default_value_t = 4096, value_parser = clap::value_parser!(u32).range(1..=1_048_576))]
    pub batch: u32,
    /// A built-in workload name (standard) or a workload TOML file.
    #[arg(long, default_value = "standard")]
    pub workload: String,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}
