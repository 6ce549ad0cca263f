//! Workloads: what load to offer, as data.
//!
//! # Layout
//!
//! - [`spec`]: [`WorkloadSpec`], parsed from TOML (`workloads/*.toml`) and
//!   validated with errors that name the field; [`WorkloadSpec::builtin`]
//!   gives the built-in workloads by name: `standard` (in code), `hot`
//!   (skewed hunts) and `join-storm` (bursts of joins and leaves), the
//!   last two parsed from their embedded `workloads/*.toml`.
//! - [`generator`]: [`Generator`], a seeded stream of treasure-hunt events
//!   following a spec (hunts uniform or Zipf through an alias table, a
//!   second mix during storms), and [`Clock`], synthetic engine time for
//!   in-process runs that have no engine to stamp events.
//!
//! No clock, no I/O: the caller reads files and measures time.

pub mod generator;
pub mod spec;

pub use generator::{Clock, Generator};
pub use spec::{HUNT_ZIPF_MAX, Mix, SpecError, Storm, WorkloadSpec};
