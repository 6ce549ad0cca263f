//! `trove bench`: an open-loop load generator that finds the throughput
//! cliff and compares execution modes.
//!
//! Open loop: events arrive on a schedule (constant or Poisson,
//! `arrivals.rs`) whatever the server does; when the server falls behind,
//! events wait in the generator and their latency counts from when they
//! were meant to be sent (coordinated omission corrected). Latency is
//! measured to the acknowledgement and, for a sample of hunts, to the
//! event's update reaching a subscriber.
//!
//! Each producer connection owns a partition of the hunts (as
//! `Generator::partition` cuts them) and sends 1/connections of the rate.
//! A step holds one offered rate for a while; a ramp climbs steps (coarse
//! x2 until one fails, then +10% from the last that passed) to the knee:
//! the highest step whose achieved rate kept up with the offered rate and
//! whose p99 stayed within the SLO. A ramp first warms up at its first
//! rate (not counted), then runs each step as `trials` trials and judges
//! it on their medians (`judge`), so one stall of the machine in one
//! trial cannot decide a step. A probe thread (`probe.rs`) records the
//! machine's stalls, and each failing trial's tail is put down to the
//! machine, the generator's pacer, the CPUs or the pipeline. Around each step the server's /metrics
//! is scraped (`scrape.rs`), and `analyse` names the server metric that
//! crossed its saturation threshold first on the way to the knee.
//!
//! Unless `--target` names a running server, each mode gets a fresh
//! `trove serve` child on loopback (`server.rs`). A `--target` whose
//! control plane (`--metrics`) answers `GET /cluster` with a map is a
//! cluster node: the producers then drive the whole cluster through the
//! SDK's `ClusterProducer` (`cluster.rs`).
//!
//! # Layout
//!
//! - `model.rs`: the figures (JSON as-is).
//! - `arrivals.rs`: the arrival schedule.
//! - `scrape.rs`: /metrics over HTTP, per-step server figures.
//! - `probe.rs`: the machine-stall probe and the tail's attribution.
//! - `fanout.rs`: the subscribers (`--subscribers`, `--watch`) and the
//!   pacer's log of intended send times they are timed against.
//! - `server.rs`: the child server.
//! - `report.rs`: `--report DIR`, Markdown and SVG.
//! - `cluster.rs`: a `--target` in a cluster: found from its control
//!   plane, every node's /metrics, each node's share of a step.
//! - `conn.rs`: a producer connection: its arrivals sent, its acks timed.
//! - `pacer.rs`: the pacer thread that drives every connection.
//! - `latency.rs`: the per-step latency histograms.
//! - `rig.rs`: the client side of a mode's run (connections, pacer,
//!   subscribers, probe).
//! - `step.rs`: one step: wait, draw, collect, judge, stop.
//! - `ramp.rs`: a mode's run: the ramp's ladder, the judging of a step on
//!   its trials, the knee and the first metric to move, the overload step.
//! - `summary.rs`: the terminal summary and the JSON.
//! - `claim.rs`: the hunt range on a `--target`, checked free and created
//!   before play.
//! - here: the run's arguments, one run per mode, the comparison.

pub mod arrivals;
pub mod claim;
mod cluster;
mod conn;
pub mod fanout;
mod latency;
pub mod model;
mod pacer;
pub mod probe;
mod ramp;
pub mod report;
mod rig;
pub mod scrape;
pub mod server;
mod step;
mod summary;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use trove_workload::WorkloadSpec;

use self::arrivals::Arrivals;
use self::conn::lock;
use self::fanout::FleetArgs;
use self::latency::{Latencies, histogram, latency};
use self::model::{Comparison, LatencyUs, ModeRun, Ratio};
use self::ramp::run_mode;
use self::rig::child_connections_max;
pub(crate) use self::rig::{client_runtime, cpu_time};
use self::server::{ChildServer, ChildSpec};
pub use self::summary::{summary, to_json};

/// Everything a run is given.
#[derive(Clone, Debug)]
pub struct LoadArgs {
    pub workload: WorkloadSpec,
    pub arrivals: Arrivals,
    /// The single run's offered rate (without `ramp`).
    pub rate: f64,
    /// The single run's length.
    pub duration: Duration,
    pub ramp: Option<RampArgs>,
    /// Modes to start fresh servers for; ignored with `target`.
    pub modes: Vec<String>,
    pub target: Option<SocketAddr>,
    /// The target's control plane, for /metrics.
    pub target_metrics: Option<SocketAddr>,
    /// The target's producers connect with TLS.
    pub tls: Option<trove_client::ClientTls>,
    pub server: ServerArgs,
    pub connections: u32,
    pub batch_events: u32,
    pub window_batches: u32,
    /// The SDK's `unacked_events_max` for every connection.
    pub unacked_events: u32,
    /// The SDK's `queue_delay_target` for every connection.
    pub queue_delay_target: Option<Duration>,
    /// Hunts whose updates a subscriber each measures (0: none); ignored
    /// with `fanout`.
    pub watch_hunts: u32,
    /// The subscriber fleet of `--subscribers N`.
    pub fanout: Option<FleetArgs>,
    /// With `target` and WebSocket subscribers: the target's WebSocket
    /// listener (unused on a cluster: the map gives each node's).
    pub target_ws: Option<SocketAddr>,
    pub slo_p99: Duration,
    pub client_workers: usize,
    /// How often the pacer wakes to send what has arrived.
    pub tick: Duration,
    /// How long a batch may stay open for more events.
    pub linger: Duration,
    /// How long a step's backlog and unacknowledged events may take to
    /// clear after the step; past it the mode's run ends there.
    pub drain_timeout: Duration,
    /// Live progress on stderr (when it is a terminal).
    pub progress: bool,
    /// After the knee (the ramp's, or the one given), a step at this many
    /// times it.
    pub overload: Option<OverloadArgs>,
    /// Presented by the producers (a --target with authentication on).
    pub token: Option<trove_client::Token>,
    /// The run's hunts are `hunt_base..hunt_base + workload.hunts`
    /// (`claim::TARGET_HUNT_BASE_DEFAULT` against a target, 0 on the fresh
    /// servers, unless `--hunt-base`).
    pub hunt_base: u32,
    /// Against a target: play into the range whatever it holds.
    pub force: bool,
}

impl LoadArgs {
    /// The hunts the run creates and plays into.
    pub fn hunts(&self) -> Result<claim::HuntRange, String> {
        claim::HuntRange::new(self.hunt_base, self.workload.hunts)
    }

    /// The hunts were created (and checked free) by `claim::claim`
    /// before the connections' setup, which then only joins the players.
    pub(crate) fn creates_claimed(&self) -> bool {
        self.target.is_some() && !self.force
    }
}

#[derive(Clone, Debug)]
pub struct OverloadArgs {
    /// The overload step offers this times the knee (above 1).
    pub factor: f64,
    /// The knee's goodput, events per second; `None`: the ramp finds it.
    pub knee: Option<f64>,
}

#[derive(Clone, Debug)]
pub struct RampArgs {
    pub from: f64,
    /// Fine steps: rate x factor.
    pub factor: f64,
    /// Coarse steps until the first failure: rate x coarse.
    pub coarse: f64,
    pub max: f64,
    /// Each trial of a step.
    pub step: Duration,
    pub steps_max: u32,
    /// Trials per step (odd: the median is one of them).
    pub trials: u32,
    /// Held at `from` before the first step, not counted; zero: none.
    pub warmup: Duration,
}

/// Most trials per step.
pub const TRIALS_MAX: u32 = 15;

/// The fresh servers' settings, every mode's the same.
#[derive(Clone, Debug)]
pub struct ServerArgs {
    /// The trove binary.
    pub exe: PathBuf,
    pub shards: Option<u32>,
    /// `None`: in memory.
    pub fsync: Option<String>,
    pub io_workers: u32,
    /// `--ws-io-workers` and `--ws-io-nice`, when given.
    pub ws_io_workers: Option<u32>,
    pub ws_io_nice: Option<u32>,
    /// `[limits] subscriber_push_interval_ms`, when given.
    pub subscriber_push_interval_ms: Option<u64>,
    /// `[limits] subscriber_wakeups_per_sec_max` and
    /// `subscriber_updates_per_sec_max` (the fan-out budget), when given.
    pub subscriber_budget: Option<(u64, u64)>,
}

/// What a run produces: one mode's runs, or several side by side.
#[derive(Debug)]
pub struct Outcome {
    pub runs: Vec<ModeRun>,
    pub comparison: Option<Comparison>,
}

/// Runs every mode (or the target) and compares them.
pub fn run(args: &LoadArgs) -> Result<Outcome, String> {
    args.workload.validate().map_err(|e| e.to_string())?;
    if args.connections == 0 || args.connections > args.workload.hunts {
        return Err(format!("--connections must be in 1..={} (each owns some hunts)", args.workload.hunts));
    }
    if !(args.rate.is_finite() && args.rate > 0.0) {
        return Err("--rate must be a positive number of events per second".into());
    }
    let range = args.hunts()?;
    let mut runs = Vec::new();
    if let Some(target) = args.target {
        let cluster = match args.target_metrics {
            Some(metrics) => cluster::detect(metrics, args.token.as_ref())?,
            None => None,
        };
        let ws_subscribers = args.fanout.as_ref().is_some_and(|f| f.ws);
        if ws_subscribers && cluster.is_none() && args.target_ws.is_none() {
            let which = if args.target_metrics.is_some() {
                "which is not in a cluster"
            } else {
                "without --metrics (for a cluster node, whose map gives every node's)"
            };
            return Err(format!(
                "--subscribers-ws against {target}, {which}, needs its WebSocket address: --target-ws HOST:PORT"
            ));
        }
        let mode = if cluster.is_some() { "cluster" } else { "target" };
        say(&format!("playing into {range} of {target} (--hunt-base {})", range.base));
        claim::claim(args, target, range, cluster.as_ref())?;
        runs.push(run_mode(args, mode, target, args.target_ws, args.target_metrics, cluster)?);
    } else {
        for (i, mode) in args.modes.iter().enumerate() {
            let spec = ChildSpec {
                server: args.server.clone(),
                mode: mode.clone(),
                data: std::env::temp_dir().join(format!("trove-bench-{}-{i}", std::process::id())),
                ws: args.fanout.as_ref().is_some_and(|f| f.ws),
                connections_max: child_connections_max(args),
            };
            let child = ChildServer::start(&spec)?;
            say(&format!("{mode}: server on {} (metrics http://{}/metrics)", child.tcp, child.control));
            let run = run_mode(args, mode, child.tcp, child.ws, Some(child.control), None);
            child.stop(Duration::from_secs(10));
            runs.push(run?);
        }
    }
    let comparison = (runs.len() > 1).then(|| compare(&runs, args));
    Ok(Outcome { runs, comparison })
}

fn compare(runs: &[ModeRun], args: &LoadArgs) -> Comparison {
    let first = &runs[0];
    Comparison {
        workload: args.workload.name.clone(),
        slo_p99_ms: args.slo_p99.as_secs_f64() * 1e3,
        runs: runs.to_vec(),
        ratios: runs[1..]
            .iter()
            .map(|r| Ratio {
                modes: format!("{} / {}", first.mode, r.mode),
                knee_ratio: match (first.knee_events_per_s, r.knee_events_per_s) {
                    (Some(a), Some(b)) if b > 0.0 => Some(a / b),
                    _ => None,
                },
            })
            .collect(),
    }
}

fn say(line: &str) {
    eprintln!("trove bench: {line}");
}

/// Nanoseconds since the run's epoch.
#[derive(Clone, Copy, Debug)]
struct Clock {
    epoch: Instant,
}

impl Clock {
    fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    fn at(&self, ns: u64) -> Instant {
        self.epoch + Duration::from_nanos(ns)
    }
}
