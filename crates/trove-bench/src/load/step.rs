//! One step of a run (or one trial of a ramp step): the plan handed to
//! the pacer, the wait while it runs, the figures drawn and collected
//! after it, the step judged, and whether the run must stop.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use super::conn::lock;
use super::fanout::{self, Fleet};
use super::latency::latency;
use super::model::{self, LatencyUs, MachineStalls, StepReport, TrialReport};
use super::pacer::{StepDone, StepPlan, sleep_until};
use super::probe::{self, TailFigures};
use super::ramp::{KEEP_UP, machine_note, stall_note};
use super::rig::{Rig, cpu_time};
use super::{LoadArgs, say, scrape};
use crate::text::human;

/// Runs one step (or one trial of a ramp step) on `rig` and reports it as
/// a step of one trial; `index` keys its histograms and must not repeat,
/// `label` names it on the progress lines. The second value says why the
/// run cannot go on (a connection failed, or the step did not drain).
///
/// In stages: the plan goes to the pacer; `wait` holds the step's window,
/// drawing the figures at its ends (`Drawn`); `collect` takes in what the
/// pacer and the connections kept of it once it drained; `judge` says
/// whether it passed; `report` puts it together; `stop` says whether the
/// run goes on.
#[allow(clippy::too_many_arguments)]
pub(super) fn run_step(
    args: &LoadArgs,
    rig: &Rig,
    mode: &str,
    metrics: Option<SocketAddr>,
    index: u32,
    rate: f64,
    duration: Duration,
    label: &str,
) -> Result<(StepReport, Option<String>), String> {
    let duration = duration.max(Duration::from_millis(100));
    let start_ns = rig.clock.now_ns() + 50_000_000;
    let end_ns = start_ns + duration.as_nanos() as u64;
    let conns = args.connections as f64;
    rig.plans
        .as_ref()
        .and_then(|p| p.send(StepPlan { index, rate: rate / conns, start_ns, end_ns }).ok())
        .ok_or("the pacer thread ended")?;
    let window = Window { index, rate, duration, start_ns, end_ns };
    let (before, after) = wait(args, rig, metrics, &window);
    let wait_max = args.drain_timeout + Duration::from_secs(5);
    let done = rig.replies.recv_timeout(wait_max).map_err(|_| "the pacer did not finish the step")?;
    let collected = collect(args, rig, &window);
    let seconds = after.at.duration_since(before.at).as_secs_f64().max(1e-9);
    let achieved = (after.acked - before.acked) as f64 / seconds;
    let offered = done.offered as f64 / duration.as_secs_f64();
    let why = judge(args, achieved, offered, &collected, &done);
    let step = report(rig, &window, &before, &after, &done, &collected, achieved, offered, why);
    say(&format!(
        "{mode} {label}: offered {}/s achieved {}/s p50 {:.2} ms p99 {:.2} ms p99.9 {:.2} ms{}{}{}{}",
        human(rate),
        human(achieved),
        step.latency_us.p50 as f64 / 1e3,
        step.latency_us.p99 as f64 / 1e3,
        step.latency_us.p999 as f64 / 1e3,
        step.fanout.as_ref().map_or(String::new(), fanout_note),
        stall_note(&step),
        machine_note(&step.machine_stalls),
        step.tail_cause.as_ref().map_or(String::new(), |t| format!("  FAILED: {t}")),
    ));
    for b in &step.latency_breakdown {
        say(&format!("  {}", b.line()));
    }
    for n in step.server.iter().flat_map(|s| &s.nodes) {
        say(&format!("  {}", n.line()));
    }
    Ok((step, stop(args, done, collected.failed)))
}

/// A step's place in the run: its histograms' key, its offered rate and
/// its window on the run's clock.
struct Window {
    index: u32,
    rate: f64,
    duration: Duration,
    start_ns: u64,
    end_ns: u64,
}

/// The figures drawn at one end of a step's window.
struct Drawn {
    at: Instant,
    acked: u64,
    cpu: Duration,
    scrape: Option<scrape::Scrape>,
    fanout: Option<fanout::Snapshot>,
    /// Against a cluster: each node's scrape (`scrape` is then theirs merged).
    nodes: Vec<(usize, scrape::Scrape)>,
}

/// Waits out the step's window, showing its progress on a terminal, and
/// draws the figures at both ends.
fn wait(args: &LoadArgs, rig: &Rig, metrics: Option<SocketAddr>, w: &Window) -> (Drawn, Drawn) {
    // A cluster's nodes are scraped one by one, merged at the end.
    let scrape = |m: Option<SocketAddr>| match &rig.cluster {
        Some(c) => (None, c.scrape()),
        None => (m.and_then(|a| scrape::get(a, Duration::from_secs(2)).ok()), Vec::new()),
    };
    sleep_until(rig.clock.at(w.start_ns));
    let ((scrape0, nodes), acked, cpu, at) =
        (scrape(metrics), rig.acked_total.load(Relaxed), cpu_time(), Instant::now());
    let mut before = Drawn { at, acked, cpu, scrape: scrape0, fanout: rig.fleet.as_ref().map(Fleet::snapshot), nodes };
    let live = args.progress && std::io::stderr().is_terminal();
    while rig.clock.now_ns() < w.end_ns {
        let left = w.end_ns.saturating_sub(rig.clock.now_ns());
        std::thread::sleep(Duration::from_nanos(left.min(500_000_000)));
        if live {
            let secs = before.at.elapsed().as_secs_f64().max(1e-9);
            let achieved = (rig.acked_total.load(Relaxed) - before.acked) as f64 / secs;
            let p99 = rig.step_latency(w.index).0.value_at_quantile(0.99);
            eprint!(
                "\r  step {}: {secs:4.1}/{:.1} s  offered {}/s  achieved {}/s  p99 {:.2} ms   ",
                w.index,
                w.duration.as_secs_f64(),
                human(w.rate),
                human(achieved),
                p99 as f64 / 1e3
            );
        }
    }
    // Read together, before the scrape (which may take a while).
    let (acked, cpu, at) = (rig.acked_total.load(Relaxed), cpu_time(), Instant::now());
    let fanout = rig.fleet.as_ref().map(Fleet::snapshot);
    let (scrape1, nodes) = scrape(metrics);
    let mut after = Drawn { at, acked, cpu, scrape: scrape1, fanout, nodes };
    if rig.cluster.is_some()
        && let Some((a, b)) = super::cluster::ClusterTarget::merged(&before.nodes, &after.nodes)
    {
        (before.scrape, after.scrape) = (Some(a), Some(b));
    }
    if live {
        eprint!("\r{:100}\r", "");
    }
    (before, after)
}

/// What the connections kept of a drained step, taken out of them.
struct Collected {
    /// The acknowledgement latency and the events it counts.
    acks: (hdrhistogram::Histogram<u64>, u64),
    send_lag: LatencyUs,
    admitted: LatencyUs,
    refused: u64,
    /// A connection's or the subscribers' failure.
    failed: Option<String>,
    machine: MachineStalls,
}

/// Takes the step's figures out of the connections (and lets the
/// subscribers read the updates of its last events).
fn collect(args: &LoadArgs, rig: &Rig, w: &Window) -> Collected {
    // The step's events were sent and acknowledged up to now: a stall
    // while they drained held them up too.
    let machine = rig.probe.within(w.start_ns, rig.clock.now_ns());
    // The updates of the step's last events are on their way.
    if let Some(f) = &rig.fleet {
        f.settle(args.drain_timeout);
    }
    let index = w.index;
    let acks = rig.step_latency(index);
    let send_lag = latency(&rig.step_send_lag(index));
    let admitted = latency(&rig.step_admitted(index));
    let mut refused = 0;
    for s in &rig.shared {
        let mut inner = lock(&s.inner);
        inner.latencies.collected(index);
        inner.send_lag.collected(index);
        inner.admitted.collected(index);
        refused += inner.refused.iter().filter(|r| r.0 == index).map(|r| r.1).sum::<u64>();
        inner.refused.retain(|r| r.0 > index);
    }
    let failed = rig.shared.iter().find_map(|s| lock(&s.inner).failed.clone());
    let failed = failed.or_else(|| rig.fleet.as_ref().and_then(Fleet::error));
    Collected { acks, send_lag, admitted, refused, failed, machine }
}

/// Why the step failed; empty if it passed.
fn judge(args: &LoadArgs, achieved: f64, offered: f64, c: &Collected, done: &StepDone) -> Vec<String> {
    let p99 = c.acks.0.value_at_quantile(0.99);
    let slo_ms = args.slo_p99.as_secs_f64() * 1e3;
    let mut why = Vec::new();
    if achieved < KEEP_UP * offered {
        why.push(format!("achieved {}/s fell behind offered {}/s", human(achieved), human(offered)));
    }
    if p99 as f64 / 1e3 > slo_ms {
        why.push(format!("p99 {:.1} ms left the {slo_ms} ms SLO", p99 as f64 / 1e3));
    }
    if c.refused > 0 {
        why.push(format!("{} events refused", c.refused));
    }
    if !done.drained {
        why.push(format!("not drained within {:?} (latencies are lower bounds)", args.drain_timeout));
    }
    if let Some(e) = done.error.as_ref().or(c.failed.as_ref()) {
        why.push(format!("a connection failed: {e}"));
    }
    why
}

/// The step's report, as a step of one trial.
#[allow(clippy::too_many_arguments)]
fn report(
    rig: &Rig,
    w: &Window,
    before: &Drawn,
    after: &Drawn,
    done: &StepDone,
    c: &Collected,
    achieved: f64,
    offered: f64,
    why: Vec<String>,
) -> StepReport {
    let (index, seconds) = (w.index, after.at.duration_since(before.at).as_secs_f64().max(1e-9));
    let (lat, send_lag, admitted, machine) = (latency(&c.acks.0), c.send_lag, c.admitted, c.machine);
    let passed = why.is_empty();
    let server = match (&before.scrape, &after.scrape) {
        (Some(a), Some(b)) => Some(model::ServerStep {
            nodes: rig.cluster.as_ref().map_or_else(Vec::new, |c| c.node_steps(&before.nodes, &after.nodes, seconds)),
            ..scrape::server_step(a, b, seconds)
        }),
        _ => None,
    };
    let client_cpu_cores = after.cpu.saturating_sub(before.cpu).as_secs_f64() / seconds;
    let fanout = fanout_step(
        rig,
        index,
        before.fanout.as_ref().zip(after.fanout.as_ref()),
        before.scrape.as_ref().zip(after.scrape.as_ref()),
        server.as_ref(),
    );
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let tail_cause = (!passed).then(|| {
        probe::tail_cause(
            &TailFigures {
                p99_us: lat.p99,
                send_lag_p99_us: send_lag.p99,
                pacer_stall_max_us: done.stall_max_ns / 1000,
                admitted_p99_us: admitted.p99,
                machine,
                cpu_cores_busy: server.as_ref().map(|v| v.cpu_cores + client_cpu_cores),
                cores,
                fsync_max_us: server.as_ref().and_then(|v| v.fsync_max_us).map(|us| us as u64),
                server_p99_us: None,
                stage_p99_max: None,
            }
            .with_stages(&model::LatencyBreakdown::of_step(&lat, &send_lag, server.as_ref())),
        )
    });
    let trial = TrialReport {
        trial: 0,
        scheduled_events_per_s: offered,
        achieved_events_per_s: achieved,
        latency_us: lat,
        send_lag_us: send_lag,
        admitted_latency_us: admitted,
        pacer_stall_max_us: done.stall_max_ns / 1000,
        machine_stalls: machine,
        client_cpu_cores,
        server_cpu_cores: server.as_ref().map(|v| v.cpu_cores),
        passed,
        failed_because: (!passed).then(|| why.join("; ")),
        tail_cause: tail_cause.clone(),
    };
    let busy_replies_per_s = server.as_ref().map(|v| v.busy_replies / seconds);
    StepReport {
        step: index,
        offered_events_per_s: w.rate,
        achieved_events_per_s: achieved,
        seconds,
        events_offered: done.offered,
        events_sent: done.sent_in_window,
        events_acked: c.acks.1,
        latency_us: lat,
        admitted_latency_us: admitted,
        send_lag_us: send_lag,
        update_latency_us: fanout.as_ref().and_then(|f| f.latency_us),
        updates_measured: fanout.as_ref().map_or(0, |f| f.updates_timed),
        update_gaps: fanout.as_ref().map_or(0, |f| f.gaps),
        events_refused: c.refused,
        passed,
        failed_because: (!passed).then(|| why.join("; ")),
        client_cpu_cores,
        pacer_stall_max_us: done.stall_max_ns / 1000,
        pacer_stalls: done.stalls,
        latency_breakdown: model::LatencyBreakdown::of_step(&lat, &send_lag, server.as_ref()),
        server,
        busy_replies_per_s,
        machine_stalls: machine,
        tail_cause,
        trials: vec![trial],
        fanout,
    }
}

/// Why the run cannot go on after the step: a connection failed, or the
/// backlog did not clear.
fn stop(args: &LoadArgs, done: StepDone, failed: Option<String>) -> Option<String> {
    match (done.error, failed) {
        (Some(e), _) | (None, Some(e)) => Some(format!("a connection failed: {e}")),
        (None, None) if !done.drained => {
            Some(format!("the backlog did not clear within {:?} after the step", args.drain_timeout))
        }
        _ => None,
    }
}

/// The fan-out figures of step `index` between two snapshots.
pub(super) fn fanout_step(
    rig: &Rig,
    index: u32,
    snaps: Option<(&fanout::Snapshot, &fanout::Snapshot)>,
    scrapes: Option<(&scrape::Scrape, &scrape::Scrape)>,
    server: Option<&model::ServerStep>,
) -> Option<fanout::FanoutStep> {
    let (f, snaps) = (rig.fleet.as_ref()?, snaps?);
    let seconds = snaps.1.seconds_since(snaps.0);
    Some(f.step(index, snaps, scrapes, server.map(|v| v.cpu_cores * seconds)))
}

/// The progress line's fan-out part.
pub(super) fn fanout_note(f: &fanout::FanoutStep) -> String {
    let p99 = f.latency_us.map_or("-".into(), |u| format!("{:.2} ms", u.p99 as f64 / 1e3));
    // Updates read more than the log behind are in it as lower bounds.
    let bound = if f.updates_lower_bound > 0 { " or more" } else { "" };
    format!(
        " (updates {}/s to {} subscribers, update p99 {p99}{bound}, gaps {}{})",
        human(f.updates_per_s),
        f.subscribers,
        f.gaps,
        if f.slow_subscribers > 0 { format!(", slow ones' gaps {}", f.slow_gaps) } else { String::new() }
    )
}
