//! The trove binary's library half: everything `main` dispatches to, so
//! integration tests can call it too.
//!
//! # Layout
//!
//! - [`cli`]: the clap command tree.
//! - [`bench_apply`]: `trove bench apply`, the single-thread rules benchmark.
//! - [`workload_arg`]: resolving `--workload NAME|FILE`.

pub mod bench_apply;
pub mod cli;
pub mod workload_arg;
