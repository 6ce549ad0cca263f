//! What `trove bench` (the open-loop load generator) measures: the figures
//! of one step of offered load, of a ramp of steps for one execution mode,
//! and of several modes side by side. Serialized as-is by `--json FILE`;
//! rendered by `report.rs` for `--report DIR`.

use serde::Serialize;

/// Latency percentiles in microseconds, measured from each event's intended
/// send time (its place in the arrival schedule), so time an event spent
/// waiting in the generator behind a slow server counts (coordinated
/// omission corrected).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct LatencyUs {
    pub p50: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
}

/// The server's side of one step, from `/metrics` scraped at the step's
/// start and end (differences of counters over the step).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct ServerStep {
    /// Server process CPU seconds per wall second (2.0 = two cores busy).
    pub cpu_cores: f64,
    /// Events waiting in the shard queues at the end of the step, summed over shards.
    pub queue_depth_events: f64,
    /// Mean events per shard batch over the step.
    pub batch_events_mean: f64,
    /// Tokio task polls (data-plane and, in the per-event modes, engine
    /// runtimes) per applied event.
    pub polls_per_event: f64,
    /// Thread wakeups (tokio worker unparks and shard wakeups) per applied event.
    pub wakeups_per_event: f64,
    /// Busy time over wall time, averaged over the data-plane (and, in the
    /// per-event modes, engine) runtimes' workers.
    pub worker_busy_ratio: f64,
    /// p99 of the tokio schedule latency (time a woken task waited for a
    /// worker) over the step, microseconds; absent without tokio_unstable.
    pub schedule_latency_p99_us: Option<f64>,
    /// Batches answered BUSY over the step.
    pub busy_replies: f64,
    /// p99 of the server's own admission-to-ACK-written time over the
    /// step, microseconds (bucket bound): what of `latency_us` the server
    /// holds itself.
    pub ingest_to_ack_p99_us: Option<f64>,
    /// The longest journal `fdatasync` of the step, microseconds (the
    /// upper bound of the highest histogram bucket it reached); absent in
    /// memory or if no sync ran.
    pub fsync_max_us: Option<f64>,
    /// The server's stages over the step, in path order, each cumulative
    /// from the frame's read (`trove_stage_seconds`); only the stages the
    /// step's events passed (no `written`/`synced` in memory), empty
    /// from a server without them.
    pub stages: Vec<StageLatency>,
    /// Against a cluster: each node's share of the step (the figures
    /// above are then the nodes' summed, or their stages' merged); empty
    /// against one node.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<NodeStep>,
}

/// One cluster node over a step, from its own `/metrics`.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct NodeStep {
    /// Its name (`--node`).
    pub node: String,
    /// Its control plane, as the cluster map gives it.
    pub control: String,
    /// Events it acknowledged (`trove_events_acknowledged_total`), per
    /// second of the step.
    pub acknowledged_events_per_s: f64,
    /// Its process's CPU over the step.
    pub cpu_cores: f64,
    /// Partitions it owned at the step's end (`trove_cluster_partitions_owned`).
    pub partitions_owned: f64,
}

/// One server stage over a step: percentiles of the time from an event's
/// frame read to the stage, microseconds (upper bucket bounds).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct StageLatency {
    /// decoded, admitted, applied, written, synced or acknowledged.
    pub stage: String,
    /// Events counted in the stage during the step.
    pub events: u64,
    pub p50_us: f64,
    pub p99_us: f64,
}

/// Where one percentile of a step's latency goes: the client's latency at
/// that percentile, the generator's send lag, each server stage's share
/// (the stage's cumulative percentile less the one before it; read to
/// decoded first), and the rest. Percentiles of parts do not add up to
/// the percentile of the whole: this is an attribution, exact only when
/// the slow events are slow in every part. `rest_us` is the client's
/// latency less the send lag and the server's read-to-ACK-written time:
/// the SDK, the network and both kernels (never below 0).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct LatencyBreakdown {
    /// "p50" or "p99".
    pub percentile: String,
    /// `latency_us` at this percentile: intended send to ACK read.
    pub client_us: u64,
    /// `send_lag_us` at this percentile: the generator's own delay.
    pub send_lag_us: u64,
    /// Read to ACK written, at this percentile.
    pub server_us: f64,
    /// Per stage, in path order: its share of `server_us`.
    pub stages: Vec<StageShare>,
    pub rest_us: f64,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct StageShare {
    /// The stage reached (its share is the time from the stage before).
    pub stage: String,
    pub us: f64,
}

impl LatencyBreakdown {
    /// The breakdown of percentile `name` (p50 or p99) of a step.
    pub fn of(name: &str, client: &LatencyUs, send_lag: &LatencyUs, stages: &[StageLatency]) -> Self {
        let pick = |l: &LatencyUs| if name == "p50" { l.p50 } else { l.p99 };
        let at = |s: &StageLatency| if name == "p50" { s.p50_us } else { s.p99_us };
        let mut before = 0.0;
        let shares = stages
            .iter()
            .map(|s| {
                // Cumulative percentiles of different stages may dip (a
                // stage passed by fewer events): a share is never negative.
                let us = (at(s) - before).max(0.0);
                before = before.max(at(s));
                StageShare { stage: s.stage.clone(), us }
            })
            .collect();
        let server_us = stages.iter().find(|s| s.stage == "acknowledged").map_or(before, at);
        let (client_us, send_lag_us) = (pick(client), pick(send_lag));
        LatencyBreakdown {
            percentile: name.into(),
            client_us,
            send_lag_us,
            server_us,
            stages: shares,
            rest_us: (client_us as f64 - send_lag_us as f64 - server_us).max(0.0),
        }
    }

    /// One line: `p99 12.3 ms = send lag 0.1 + decoded 0.0 + ... + rest 1.2`
    /// (milliseconds).
    pub fn line(&self) -> String {
        let ms = |us: f64| format!("{:.3}", us / 1e3);
        let mut parts = vec![format!("send lag {}", ms(self.send_lag_us as f64))];
        parts.extend(self.stages.iter().map(|st| format!("{} {}", st.stage, ms(st.us))));
        parts.push(format!("client+network {}", ms(self.rest_us)));
        format!("{} {} ms = {}", self.percentile, ms(self.client_us as f64), parts.join(" + "))
    }

    /// The p50 and p99 breakdowns of a step; empty without server stages.
    pub fn of_step(client: &LatencyUs, send_lag: &LatencyUs, server: Option<&ServerStep>) -> Vec<Self> {
        match server {
            Some(v) if !v.stages.is_empty() => {
                ["p50", "p99"].iter().map(|p| Self::of(p, client, send_lag, &v.stages)).collect()
            }
            _ => Vec::new(),
        }
    }
}

/// One step of offered load. A ramp step's figures are judged from its
/// trials (`trials`): achieved, latencies and client CPU are their
/// medians, counts their sums, stalls their worst, and the server's
/// figures those of the median-p99 trial.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct StepReport {
    /// 0-based, in the order the steps ran.
    pub step: u32,
    pub offered_events_per_s: f64,
    /// Events acknowledged during the step's window, per second of it.
    pub achieved_events_per_s: f64,
    pub seconds: f64,
    /// Events the arrival schedule put in the step.
    pub events_offered: u64,
    /// Of those, events the generator sent within the step (the rest waited
    /// in it behind a full window and went out after).
    pub events_sent: u64,
    /// Of those offered, events acknowledged (in the step or while draining after it).
    pub events_acked: u64,
    /// Intended send time to acknowledgement.
    pub latency_us: LatencyUs,
    /// Latency of the acknowledged events from when the generator handed
    /// them to the SDK (after any wait in its own backlog) to their
    /// acknowledgement: what an admitted event costs, BUSY resends and the
    /// server's queues included. Equals `latency_us` less the send lag
    /// while the generator keeps up; past the knee `latency_us` grows with
    /// the backlog and this does not.
    pub admitted_latency_us: LatencyUs,
    /// Intended send time to the event handed to the SDK: the generator's
    /// own delay (its tick, a full window, a busy client CPU).
    pub send_lag_us: LatencyUs,
    /// Intended send time to the event's update reaching a subscriber;
    /// absent when no update of a watched hunt was measured.
    pub update_latency_us: Option<LatencyUs>,
    pub updates_measured: u64,
    /// GAP notices the subscriber got (it fell behind); a watched hunt is
    /// not timed after its first gap.
    pub update_gaps: u64,
    /// Events of batches the server refused with an error.
    pub events_refused: u64,
    /// Achieved kept up with offered, p99 stayed within the SLO, nothing
    /// was refused and the step drained.
    pub passed: bool,
    /// Why not, in words.
    pub failed_because: Option<String>,
    /// Client process CPU seconds per wall second.
    pub client_cpu_cores: f64,
    /// How late the pacer thread woke for a tick, at most, during the
    /// step: time it was due to run and did not. Either the CPUs were busy
    /// (a run-queue wait, usually well under a few ms) or the machine did
    /// not run it at all (a paused VM, which stops the server too:
    /// `scripts/pause-probe.py`). Only its sleeps are timed, so a pause
    /// that lands while it works is not seen here: a lower bound. A step
    /// that failed on p99 with stalls of tens of milliseconds says more
    /// about the machine than about the server.
    pub pacer_stall_max_us: u64,
    /// Times in the step the pacer woke 5 ms or more late.
    pub pacer_stalls: u64,
    /// Absent when the server's /metrics could not be scraped.
    pub server: Option<ServerStep>,
    /// Where the p50 and the p99 of `latency_us` go: the generator, each
    /// server stage, the rest (client and network); empty without the
    /// server's stage metrics.
    pub latency_breakdown: Vec<LatencyBreakdown>,
    /// Batches the server answered BUSY per second of the step (from its
    /// /metrics; absent without them).
    pub busy_replies_per_s: Option<f64>,
    /// Stalls of the whole machine seen by the generator's probe thread
    /// during the step (summed over its trials; `max_us` the longest).
    pub machine_stalls: MachineStalls,
    /// For a failing step: what its tail is put down to (the machine, the
    /// generator's pacer, the CPUs, or the pipeline), with the figures.
    /// The median trial's (see `trials`).
    pub tail_cause: Option<String>,
    /// The trials the step was judged on, in the order they ran. A ramp
    /// step runs `ModeRun::trials_per_step` of them and takes the median
    /// of each figure (see `ModeRun::judge`); a single run has one.
    pub trials: Vec<TrialReport>,
    /// The subscribers' side (`--subscribers`, or `--watch`'s): updates
    /// delivered, their latency, gaps, and what delivering them cost the
    /// server and the generator. A ramp step's is its median-p99 trial's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fanout: Option<super::fanout::FanoutStep>,
}

/// Stalls during a trial, as the generator's two probe threads saw them.
/// Each sleeps `PROBE_INTERVAL` in a loop and records how late each
/// wake-up is; a wake-up 1 ms or more late counts as a stall. The first
/// runs at normal priority, so it is late when the VM is paused and also
/// when runnable threads outnumber the cores (the guest's own scheduler
/// let it wait: CPU contention, ours included). The second (`host`) runs
/// at real-time priority (`SCHED_FIFO`), which the guest's scheduler runs
/// ahead of every normal thread: it is late only when the guest itself
/// did not run (the hypervisor took the CPU, or an interrupt storm).
/// Since the probes only sleep, they see every stall longer than their
/// interval, whatever the other threads do.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct MachineStalls {
    /// The longest stall of the normal-priority probe overlapping the
    /// trial, microseconds.
    pub max_us: u64,
    /// Its stalls of 1 ms or more overlapping the trial.
    pub count: u64,
    /// Their total length, microseconds.
    pub lost_us: u64,
    /// The real-time probe's: stalls of the whole guest. Absent where the
    /// generator may not use `SCHED_FIFO` (not root, no `CAP_SYS_NICE`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<HostStalls>,
}

impl MachineStalls {
    /// The stalls of several trials together: the longest, the counts and
    /// times summed.
    pub fn merged(all: impl IntoIterator<Item = MachineStalls>) -> MachineStalls {
        all.into_iter().fold(MachineStalls::default(), |a, b| MachineStalls {
            max_us: a.max_us.max(b.max_us),
            count: a.count + b.count,
            lost_us: a.lost_us + b.lost_us,
            host: match (a.host, b.host) {
                (Some(x), Some(y)) => Some(HostStalls {
                    max_us: x.max_us.max(y.max_us),
                    count: x.count + y.count,
                    lost_us: x.lost_us + y.lost_us,
                    steal_us: x.steal_us + y.steal_us,
                }),
                (x, y) => x.or(y),
            },
        })
    }
}

/// Stalls of the whole guest: the real-time probe's late wake-ups, and the
/// CPU time the hypervisor reported stolen (`/proc/stat`'s `steal`, summed
/// over the CPUs, at its 10 ms resolution).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct HostStalls {
    pub max_us: u64,
    pub count: u64,
    pub lost_us: u64,
    pub steal_us: u64,
}

/// One trial of a step: the step's rate held for `--step-seconds`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TrialReport {
    pub trial: u32,
    /// Arrivals the schedule put in the trial, per second of it (the
    /// offered rate, up to the arrivals' randomness).
    pub scheduled_events_per_s: f64,
    pub achieved_events_per_s: f64,
    pub latency_us: LatencyUs,
    /// The generator's own delay (its pacer): intended time to handed to the SDK.
    pub send_lag_us: LatencyUs,
    /// Handed to the SDK to acknowledged: the pipeline's share.
    pub admitted_latency_us: LatencyUs,
    /// The pacer thread's latest wake-up, microseconds.
    pub pacer_stall_max_us: u64,
    pub machine_stalls: MachineStalls,
    pub client_cpu_cores: f64,
    /// Absent without /metrics.
    pub server_cpu_cores: Option<f64>,
    /// This trial alone would have passed.
    pub passed: bool,
    pub failed_because: Option<String>,
    /// For a failing trial: what its tail is put down to.
    pub tail_cause: Option<String>,
}

/// The warm-up before a ramp's first measured step: held at the first
/// step's rate, run like a step, and not counted (not in `steps`, not in
/// the knee).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct WarmupReport {
    pub seconds: f64,
    pub offered_events_per_s: f64,
    pub achieved_events_per_s: f64,
    pub latency_us: LatencyUs,
    pub machine_stalls: MachineStalls,
}

/// `--overload FACTOR`: a step at FACTOR times the knee, against the knee.
/// Goodput is the acknowledged events per second of that step
/// (`step.achieved_events_per_s`).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct OverloadReport {
    pub factor: f64,
    /// The knee's goodput: `--knee`, or the ramp's knee.
    pub knee_events_per_s: f64,
    pub offered_events_per_s: f64,
    pub goodput_events_per_s: f64,
    pub goodput_over_knee: f64,
    pub busy_replies_per_s: Option<f64>,
    pub admitted_p99_us: u64,
    pub slo_p99_ms: f64,
    /// Goodput stayed at `GOODPUT_KEPT_MIN` of the knee or more and the
    /// admitted events' p99 within the SLO.
    pub holds: bool,
    pub step: StepReport,
}

/// Which server metric moved first on the way to the knee.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FirstMoved {
    /// A `ServerStep` field name, or `machine_cpu_cores` (server plus client CPU).
    pub metric: String,
    /// The step at which it first moved past its threshold.
    pub step: u32,
    pub offered_events_per_s: f64,
    /// Its value at the lowest step, and at `step`.
    pub from: f64,
    pub to: f64,
}

/// A ramp (or a single step) of one execution mode.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ModeRun {
    /// sharded, task-per-event, spawn-blocking-per-event, or `target` for --target.
    pub mode: String,
    pub workload: String,
    /// constant or poisson.
    pub arrivals: String,
    pub connections: u32,
    /// The SDK's `batch_events_max` and `unacked_events_max` on every
    /// producer connection: what each keeps in flight (decision 0058; a
    /// batch is at most the window).
    pub batch_events: u32,
    pub unacked_events: u32,
    pub slo_p99_ms: f64,
    /// Steps sorted by offered rate.
    pub steps: Vec<StepReport>,
    /// Achieved rate of the highest passing step; absent if none passed.
    pub knee_events_per_s: Option<f64>,
    /// Offered rate of that step.
    pub knee_offered_events_per_s: Option<f64>,
    /// Why the first step above the knee failed, in words.
    pub knee_reason: Option<String>,
    pub first_moved: Option<FirstMoved>,
    /// Trials each step ran (1 for a single run).
    pub trials_per_step: u32,
    /// How a step is judged from its trials, in words.
    pub judge: String,
    /// The warm-up before the first step; absent if none ran.
    pub warmup: Option<WarmupReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub overload: Option<OverloadReport>,
}

/// `--modes a,b,...`: one ramp per mode, each on a fresh server.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Comparison {
    pub workload: String,
    pub slo_p99_ms: f64,
    pub runs: Vec<ModeRun>,
    /// The first mode's knee over each other mode's knee (equal SLO).
    pub ratios: Vec<Ratio>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Ratio {
    /// "sharded / task-per-event".
    pub modes: String,
    pub knee_ratio: Option<f64>,
}
