//! Workloads: what load to offer, as data.
//!
//! # Layout
//!
//! - [`spec`]: [`WorkloadSpec`], parsed from TOML (`workloads/*.toml`) and
//!   validated with errors that name the field; [`WorkloadSpec::standard`]
//!   is the standard workload in code.
//! - [`generator`]: [`Generator`], a seeded stream of treasure-hunt events
//!   following a spec, and [`Clock`], synthetic engine time for in-process
//!   runs that have no engine to stamp events.
//!
//! No clock, no I/O: the caller reads files and measures time.

pub mod generator;
pub mod spec;

pub use generator::{Clock, Generator};
pub use spec::{Mix, SpecError, WorkloadSpec};
