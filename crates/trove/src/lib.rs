//! The trove binary's library half: everything `main` dispatches to, so
//! integration tests can call it too.
//!
//! # Layout
//!
//! - [`cli`]: the clap command tree.
//! - [`serve`]: `trove serve`, the engine behind its data plane.
//! - [`journal_cmd`]: `trove journal verify|inspect` and `trove replay`.
//! - [`watch`], [`send`]: `trove watch` and `trove send`, clients on the
//!   Rust SDK.
//! - [`progress`]: the progress line of `trove replay` and of a long
//!   recovery at `trove serve` start (on a terminal only).
//! - [`logging`]: the `tracing` subscriber `trove serve` installs (human
//!   or JSON lines, a level filter).
//!
//! The benchmarks themselves are the `trove-bench` crate.

pub mod cli;
pub mod cluster_cmd;
pub mod journal_cmd;
pub mod logging;
pub mod progress;
pub mod send;
pub mod serve;
pub mod watch;

pub use trove_bench::plural;
