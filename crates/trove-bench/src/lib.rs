//! trove's benchmark harnesses, behind `trove bench`: the `trove` binary
//! flattens [`cli::Bench`] into its command tree and hands what it parsed
//! to [`run`]; a failure is an [`Error`]. The harnesses are private:
//! [`run`] is the way in.
//!
//! # Layout
//!
//! - [`cli`]: the clap arguments of `trove bench` and its subcommands.
//! - `command`: a parsed `trove bench ...` turned into a harness run.
//! - [`error`]: [`Error`], what a run fails with.
//! - `apply`: `trove bench apply`, the single-thread rules benchmark.
//! - `engine`: `trove bench engine`, the workload through the executor.
//! - `net`: `trove bench net`, end to end over loopback through the SDK.
//! - `pairs`: their `--pairs N`: the journal's cost as interleaved pairs.
//! - `load`: `trove bench` itself, the open-loop load generator.
//! - `load_cmd`: its flags checked and turned into a run.
//! - `workload_arg`: resolving `--workload NAME|FILE`.
//! - [`dev`]: helpers for tests (`TempDir`), shared with the other crates'.
//! - [`nats`]: real `nats-server` processes for tests (`NatsServer`,
//!   `NatsCluster`), the JetStream under cluster mode's tests.
//! - [`text`]: numbers and counts as the reports print them.
//! - `chart`: a small SVG line chart on log axes (the `--report` charts).
//! - [`http`], [`prometheus`]: a small HTTP/1.1 client and the Prometheus
//!   text format, for `/metrics` (and the tests that drive a server).

mod apply;
mod chart;
pub mod cli;
mod command;
pub mod dev;
mod engine;
pub mod error;
pub mod http;
mod load;
mod load_cmd;
pub mod nats;
mod net;
mod pairs;
pub mod prometheus;
pub mod text;
mod workload_arg;

pub use command::{ServeShards, run};
pub use error::Error;
pub use text::plural;
