//! A mode's run: a single step, or a ramp that climbs steps to the knee
//! (`Ladder`), each judged on the median of its trials (`judge`); then the
//! knee and the first server metric to move on the way to it (`analyse`),
//! and the `--overload` step past it.

use std::net::SocketAddr;
use std::time::Duration;

use super::model::{
    self, FirstMoved, LatencyUs, MachineStalls, ModeRun, OverloadReport, StepReport, TrialReport, WarmupReport,
};
use super::probe::{self, TailFigures};
use super::rig::Rig;
use super::step::run_step;
use super::{LoadArgs, RampArgs, say};
use crate::text::human;

/// Achieved must reach this share of offered for a step to pass.
pub(super) const KEEP_UP: f64 = 0.95;

/// Under `--overload`, goodput must stay at this share of the knee's.
pub(super) const GOODPUT_KEPT_MIN: f64 = 0.95;

/// A ramp that finds no passing step comes down to this rate at the lowest.
pub(super) const RAMP_FLOOR: f64 = 1000.0;

/// The ramp's choice of the next step: coarse steps (x `coarse`) until one
/// fails, then fine steps (x `factor`) from the last that passed, up to the
/// lowest that failed. If the first steps fail, it comes down (/ `coarse`)
/// until one passes.
#[derive(Debug)]
pub(super) struct Ladder {
    pub(super) factor: f64,
    pub(super) coarse: f64,
    pub(super) max: f64,
    pub(super) climbing_coarse: bool,
    pub(super) last_pass: Option<f64>,
    pub(super) lowest_fail: f64,
}

impl Ladder {
    pub(super) fn new(ramp: &RampArgs) -> Self {
        Self {
            factor: ramp.factor,
            coarse: ramp.coarse,
            max: ramp.max,
            climbing_coarse: ramp.coarse > ramp.factor,
            last_pass: None,
            lowest_fail: f64::INFINITY,
        }
    }

    /// The rate after a step at `rate`, or `None`: the knee is found.
    pub(super) fn next(&mut self, rate: f64, passed: bool) -> Option<f64> {
        if passed {
            self.last_pass = Some(self.last_pass.map_or(rate, |p| p.max(rate)));
        } else {
            self.lowest_fail = self.lowest_fail.min(rate);
        }
        let Some(pass) = self.last_pass else {
            let down = rate / if self.coarse > 1.0 { self.coarse } else { 2.0 };
            return (down >= RAMP_FLOOR).then_some(down);
        };
        if pass >= self.max {
            return None;
        }
        let mut next = pass * if self.climbing_coarse { self.coarse } else { self.factor };
        if self.climbing_coarse && next >= self.lowest_fail {
            self.climbing_coarse = false;
            next = pass * self.factor;
        }
        (next < self.lowest_fail).then_some(next.min(self.max))
    }
}

/// Runs one mode against the server at `addr`: a single step, or a ramp.
pub(super) fn run_mode(
    args: &LoadArgs,
    mode: &str,
    addr: SocketAddr,
    ws: Option<SocketAddr>,
    metrics: Option<SocketAddr>,
    cluster: Option<super::cluster::ClusterTarget>,
) -> Result<ModeRun, String> {
    let rig = Rig::start(args, addr, ws, cluster)?;
    let mut steps: Vec<StepReport> = Vec::new();
    let mut stopped: Option<String> = None;
    let mut warmup = None;
    match &args.ramp {
        None => {
            // With `--knee`, the single step is at the knee given.
            let rate = args.overload.as_ref().and_then(|o| o.knee).unwrap_or(args.rate);
            let (s, stop) = run_step(args, &rig, mode, metrics, 0, rate, args.duration, "step 0")?;
            steps.push(s);
            stopped = stop;
        }
        Some(ramp) => {
            // Histograms are kept by run index: one per trial.
            let mut run_index = 0;
            if !ramp.warmup.is_zero() {
                let (s, stop) = run_step(args, &rig, mode, metrics, run_index, ramp.from, ramp.warmup, "warm-up")?;
                run_index += 1;
                warmup = Some(s);
                stopped = stop;
            }
            let mut ladder = Ladder::new(ramp);
            let mut rate = ramp.from;
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
            for index in 0..ramp.steps_max {
                if stopped.is_some() {
                    break;
                }
                let mut trials = Vec::new();
                for t in 0..ramp.trials {
                    let label = format!("step {index} trial {}/{}", t + 1, ramp.trials);
                    let (s, stop) = run_step(args, &rig, mode, metrics, run_index, rate, ramp.step, &label)?;
                    run_index += 1;
                    trials.push(s);
                    if stop.is_some() {
                        stopped = stop;
                        break;
                    }
                }
                let s = judge(index, rate, trials, args.slo_p99, stopped.as_deref(), cores);
                say(&format!(
                    "{mode} step {index}: offered {}/s, {}: achieved {}/s p50 {:.2} ms p99 {:.2} ms{}",
                    human(rate),
                    judged_on(s.trials.len()),
                    human(s.achieved_events_per_s),
                    s.latency_us.p50 as f64 / 1e3,
                    s.latency_us.p99 as f64 / 1e3,
                    s.tail_cause.as_ref().map_or(String::new(), |t| format!("  FAILED: {t}")),
                ));
                let passed = s.passed;
                steps.push(s);
                if stopped.is_some() {
                    break;
                }
                match ladder.next(rate, passed) {
                    Some(next) => rate = next,
                    None => break,
                }
            }
        }
    }
    let mut overload = None;
    if let (Some(o), None) = (&args.overload, &stopped) {
        // The knee given, or the ramp's: the highest passing step.
        let knee = match o.knee {
            Some(k) => Some((k, k)),
            None => steps
                .iter()
                .filter(|s| s.passed)
                .max_by(|a, b| a.offered_events_per_s.total_cmp(&b.offered_events_per_s))
                .map(|s| (s.offered_events_per_s, s.achieved_events_per_s)),
        };
        match knee {
            None => say(&format!("{mode}: no step passed, so there is no knee to overload")),
            Some((knee_offered, knee_goodput)) => {
                // As long as a ramp step's trials together.
                let duration = args.ramp.as_ref().map_or(args.duration, |r| r.step * r.trials);
                let index = steps.iter().map(|s| s.step + 1).max().unwrap_or(0);
                // A run index no trial used: past every step's trials and the warm-up.
                let run_index = (index + 1) * args.ramp.as_ref().map_or(1, |r| r.trials) + 1;
                let label = format!("overload step {index}");
                let (step, stop) =
                    run_step(args, &rig, mode, metrics, run_index, knee_offered * o.factor, duration, &label)?;
                let step = StepReport { step: index, ..step };
                stopped = stop;
                let slo_p99_ms = args.slo_p99.as_secs_f64() * 1e3;
                let ratio = step.achieved_events_per_s / knee_goodput.max(1e-9);
                let holds = ratio >= GOODPUT_KEPT_MIN && step.admitted_latency_us.p99 as f64 / 1e3 <= slo_p99_ms;
                say(&format!(
                    "{mode} overload {:.1}x: goodput {}/s = {:.1}% of the knee's {}/s; BUSY {}/s; admitted p99 {:.2} ms{}",
                    o.factor,
                    human(step.achieved_events_per_s),
                    ratio * 100.0,
                    human(knee_goodput),
                    step.busy_replies_per_s.map_or("-".into(), human),
                    step.admitted_latency_us.p99 as f64 / 1e3,
                    if holds { "" } else { "  DOES NOT HOLD" },
                ));
                overload = Some(OverloadReport {
                    factor: o.factor,
                    knee_events_per_s: knee_goodput,
                    offered_events_per_s: step.offered_events_per_s,
                    goodput_events_per_s: step.achieved_events_per_s,
                    goodput_over_knee: ratio,
                    busy_replies_per_s: step.busy_replies_per_s,
                    admitted_p99_us: step.admitted_latency_us.p99,
                    slo_p99_ms,
                    holds,
                    step,
                });
            }
        }
    }
    drop(rig);
    if let Some(why) = &stopped {
        say(&format!("{mode}: stopped: {why}"));
    }
    Ok(ModeRun { overload, ..analyse(mode, args, warmup, steps) })
}

/// A server metric and the value at which it counts as saturated.
pub(super) struct Threshold {
    pub(super) name: &'static str,
    pub(super) get: fn(&StepReport) -> Option<f64>,
    /// Crossed when the value is at least this...
    pub(super) at_least: f64,
    /// ...and at least this many times its value at the lowest step.
    pub(super) times_base: f64,
}

/// The saturation signals, in the order ties are broken: what saturation
/// looks like before latency shows it. Rates per event (polls, wakeups)
/// fall as batches grow with the load, so they are judged against the
/// lowest step; the client's latency is the symptom, not a cause, and is
/// left out.
pub(super) const THRESHOLDS: [Threshold; 6] = [
    Threshold {
        name: "worker_busy_ratio",
        get: |s| s.server.as_ref().map(|v| v.worker_busy_ratio),
        at_least: 0.5,
        times_base: 1.0,
    },
    Threshold {
        name: "schedule_latency_p99_us",
        get: |s| s.server.as_ref().and_then(|v| v.schedule_latency_p99_us),
        at_least: 500.0,
        times_base: 2.0,
    },
    Threshold {
        name: "queue_depth_events",
        get: |s| s.server.as_ref().map(|v| v.queue_depth_events),
        at_least: 1000.0,
        times_base: 4.0,
    },
    Threshold {
        name: "machine_cpu_cores",
        get: |s| s.server.as_ref().map(|v| v.cpu_cores + s.client_cpu_cores),
        // 3/4 of the machine's cores; see `analyse`.
        at_least: f64::NAN,
        times_base: 1.0,
    },
    Threshold {
        name: "busy_replies",
        get: |s| s.server.as_ref().map(|v| v.busy_replies),
        at_least: 1.0,
        times_base: 1.0,
    },
    Threshold {
        name: "polls_per_event",
        get: |s| s.server.as_ref().map(|v| v.polls_per_event),
        at_least: 0.0,
        times_base: 2.0,
    },
];

/// A server stage's share of the p99 (`LatencyBreakdown`) has moved when
/// it is at least this many microseconds and twice the lowest step's.
pub(super) const STAGE_MOVED_US_MIN: f64 = 250.0;

/// The parts of a step's p99 that `first_moved` can name beside the
/// `THRESHOLDS`: each server stage's share (`stage_<name>_p99_us`), the
/// client side left over (`client_and_network_p99_us`), and the
/// generator's own measures (`send_lag_p99_us`, `pacer_stall_max_us`,
/// `machine_stall_max_us`). Microseconds.
pub(super) fn p99_parts(s: &StepReport) -> Vec<(String, f64)> {
    let mut parts = Vec::new();
    if let Some(b) = s.latency_breakdown.iter().find(|b| b.percentile == "p99") {
        parts.extend(b.stages.iter().map(|st| (format!("stage_{}_p99_us", st.stage), st.us)));
        parts.push(("client_and_network_p99_us".to_string(), b.rest_us));
    }
    parts.push(("send_lag_p99_us".to_string(), s.send_lag_us.p99 as f64));
    parts.push(("pacer_stall_max_us".to_string(), s.pacer_stall_max_us as f64));
    parts.push(("machine_stall_max_us".to_string(), s.machine_stalls.max_us as f64));
    parts
}

/// The first server stage whose p99 share at `s` reached
/// `STAGE_MOVED_US_MIN` and twice its share at `base`.
pub(super) fn stage_moved(base: &StepReport, s: &StepReport) -> Option<FirstMoved> {
    let before = p99_parts(base);
    p99_parts(s).into_iter().filter(|(name, _)| name.starts_with("stage_")).find_map(|(name, to)| {
        let from = before.iter().find(|(n, _)| *n == name).map_or(0.0, |p| p.1);
        (to >= STAGE_MOVED_US_MIN && to >= 2.0 * from).then_some(FirstMoved {
            metric: name,
            step: s.step,
            offered_events_per_s: s.offered_events_per_s,
            from,
            to,
        })
    })
}

/// For a failing step nothing crossed a threshold on the way to: the part
/// of its p99 that grew most since `base` (the largest part if `base` is
/// the step itself). With no server stage growing, that is one of the
/// generator's or the client side's measures, which it then names.
pub(super) fn grew_most(base: &StepReport, failed: &StepReport) -> Option<FirstMoved> {
    let before = p99_parts(base);
    let same = base.step == failed.step;
    p99_parts(failed)
        .into_iter()
        .map(|(name, to)| {
            let from = if same { 0.0 } else { before.iter().find(|(n, _)| *n == name).map_or(0.0, |p| p.1) };
            (name, from, to)
        })
        .max_by(|a, b| (a.2 - a.1).total_cmp(&(b.2 - b.1)))
        .map(|(metric, from, to)| FirstMoved {
            metric,
            step: failed.step,
            offered_events_per_s: failed.offered_events_per_s,
            from,
            to,
        })
}

/// Names the generator's own stalls of a step, if it had any.
pub(super) fn stall_note(step: &StepReport) -> String {
    match step.pacer_stalls {
        0 => String::new(),
        1 => format!(" [the generator stalled once, {:.1} ms]", step.pacer_stall_max_us as f64 / 1e3),
        n => format!(" [the generator stalled {n} times, up to {:.1} ms]", step.pacer_stall_max_us as f64 / 1e3),
    }
}

/// Names the stalls during a step, if the probes saw any: a normal
/// thread's, and of those the whole guest's (the real-time probe's, with
/// the CPU time the hypervisor stole) where that probe runs.
pub(super) fn machine_note(m: &MachineStalls) -> String {
    let ms = |us: u64| us as f64 / 1e3;
    let host = match m.host {
        None => String::new(),
        Some(h) if h.count == 0 => format!("; the guest itself never stopped 1 ms, {:.0} ms stolen", ms(h.steal_us)),
        Some(h) => format!(
            "; the guest itself stopped {} times, up to {:.1} ms, {:.0} ms stolen",
            h.count,
            ms(h.max_us),
            ms(h.steal_us)
        ),
    };
    match m.count {
        0 => String::new(),
        n => format!(
            " [a thread waited {n} times for 1 ms or more, up to {:.1} ms, {:.1} ms lost{host}]",
            ms(m.max_us),
            ms(m.lost_us)
        ),
    }
}

/// The middle of `v` sorted by `key`; of an even count, the upper middle
/// (the worse, for latencies).
pub(super) fn median_by<T: Copy>(v: &[T], key: impl Fn(&T) -> f64) -> T {
    assert!(!v.is_empty(), "a median of nothing");
    let mut sorted = v.to_vec();
    sorted.sort_by(|a, b| key(a).total_cmp(&key(b)));
    sorted[v.len() / 2]
}

/// Each percentile's median, percentile by percentile.
pub(super) fn median_latency(v: &[LatencyUs]) -> LatencyUs {
    LatencyUs {
        p50: median_by(v, |l| l.p50 as f64).p50,
        p99: median_by(v, |l| l.p99 as f64).p99,
        p999: median_by(v, |l| l.p999 as f64).p999,
        max: median_by(v, |l| l.max as f64).max,
    }
}

/// A ramp step judged from its trials (in the order they ran, at least
/// one): achieved, each latency percentile and the client's CPU are the
/// trials' medians (of an even count, the worse middle); the server's
/// figures and the tail's cause are those of the trial whose p99 is the
/// median. The step passes when the median achieved keeps up with the
/// median scheduled rate, the median p99 is within the SLO, no event was
/// refused and nothing ended the run (`stopped`). Counts are summed.
pub(super) fn judge(
    index: u32,
    rate: f64,
    trials: Vec<StepReport>,
    slo: Duration,
    stopped: Option<&str>,
    cores: f64,
) -> StepReport {
    assert!(!trials.is_empty(), "a step runs at least one trial");
    let n = trials.len();
    let lat = |f: &dyn Fn(&StepReport) -> LatencyUs| median_latency(&trials.iter().map(f).collect::<Vec<_>>());
    let f64s = |f: &dyn Fn(&StepReport) -> f64| trials.iter().map(f).collect::<Vec<f64>>();
    // The worse middle of an even count: the lower achieved.
    let lower = |v: Vec<f64>| median_by(&v, |&x| -x);
    let achieved = lower(f64s(&|s| s.achieved_events_per_s));
    let keep_up = lower(f64s(&|s| {
        let scheduled = s.trials.first().map_or(s.offered_events_per_s, |t| t.scheduled_events_per_s);
        s.achieved_events_per_s / scheduled.max(1e-9)
    }));
    let latency = lat(&|s| s.latency_us);
    let updates: Vec<LatencyUs> = trials.iter().filter_map(|s| s.update_latency_us).collect();
    let update_latency_us = (!updates.is_empty()).then(|| median_latency(&updates));
    let order: Vec<usize> = (0..n).collect();
    let mid = &trials[median_by(&order, |&i| trials[i].latency_us.p99 as f64)];
    let refused: u64 = trials.iter().map(|s| s.events_refused).sum();
    let slo_ms = slo.as_secs_f64() * 1e3;
    let p99s = trials.iter().map(|s| format!("{:.1}", s.latency_us.p99 as f64 / 1e3)).collect::<Vec<_>>().join(", ");
    let mut why = Vec::new();
    if keep_up < KEEP_UP {
        why.push(format!(
            "median achieved {}/s fell behind offered {}/s ({:.1}% of the arrivals)",
            human(achieved),
            human(rate),
            keep_up * 100.0
        ));
    }
    if latency.p99 as f64 / 1e3 > slo_ms {
        why.push(format!(
            "median p99 {:.1} ms left the {slo_ms} ms SLO (the trials' p99: {p99s} ms)",
            latency.p99 as f64 / 1e3
        ));
    }
    if refused > 0 {
        why.push(format!("{refused} events refused"));
    }
    if let Some(stop) = stopped {
        why.push(stop.to_string());
    }
    let passed = why.is_empty();
    let machine_stalls = MachineStalls::merged(trials.iter().map(|s| s.machine_stalls));
    let send_lag_us = lat(&|s| s.send_lag_us);
    let admitted_latency_us = lat(&|s| s.admitted_latency_us);
    let client_cpu_cores = median_by(&f64s(&|s| s.client_cpu_cores), |&x| x);
    let tail_cause = (!passed).then(|| {
        mid.tail_cause.clone().or_else(|| trials.iter().find_map(|s| s.tail_cause.clone())).unwrap_or_else(|| {
            probe::tail_cause(
                &TailFigures {
                    p99_us: latency.p99,
                    send_lag_p99_us: send_lag_us.p99,
                    pacer_stall_max_us: mid.pacer_stall_max_us,
                    admitted_p99_us: admitted_latency_us.p99,
                    machine: mid.machine_stalls,
                    cpu_cores_busy: mid.server.as_ref().map(|v| v.cpu_cores + mid.client_cpu_cores),
                    cores,
                    fsync_max_us: mid.server.as_ref().and_then(|v| v.fsync_max_us).map(|us| us as u64),
                    server_p99_us: None,
                    stage_p99_max: None,
                }
                .with_stages(&model::LatencyBreakdown::of_step(
                    &latency,
                    &send_lag_us,
                    mid.server.as_ref(),
                )),
            )
        })
    });
    StepReport {
        step: index,
        offered_events_per_s: rate,
        achieved_events_per_s: achieved,
        seconds: trials.iter().map(|s| s.seconds).sum(),
        events_offered: trials.iter().map(|s| s.events_offered).sum(),
        events_sent: trials.iter().map(|s| s.events_sent).sum(),
        events_acked: trials.iter().map(|s| s.events_acked).sum(),
        latency_us: latency,
        admitted_latency_us,
        send_lag_us,
        update_latency_us,
        updates_measured: trials.iter().map(|s| s.updates_measured).sum(),
        update_gaps: trials.iter().map(|s| s.update_gaps).sum(),
        events_refused: refused,
        passed,
        failed_because: (!passed).then(|| why.join("; ")),
        client_cpu_cores,
        pacer_stall_max_us: trials.iter().map(|s| s.pacer_stall_max_us).max().unwrap_or(0),
        pacer_stalls: trials.iter().map(|s| s.pacer_stalls).sum(),
        latency_breakdown: model::LatencyBreakdown::of_step(&latency, &send_lag_us, mid.server.as_ref()),
        server: mid.server.clone(),
        busy_replies_per_s: mid.busy_replies_per_s,
        machine_stalls,
        tail_cause,
        fanout: mid.fanout.clone(),
        trials: trials
            .iter()
            .enumerate()
            .flat_map(|(i, s)| s.trials.iter().map(move |t| TrialReport { trial: i as u32, ..t.clone() }))
            .collect(),
    }
}

/// How a step of `trials` trials was judged, for its line: one trial is no
/// median.
fn judged_on(trials: usize) -> String {
    match trials {
        1 => "one trial".to_string(),
        n => format!("judged on the median of {n} trials"),
    }
}

/// The rule `judge` applies, in words, for the report.
pub(super) fn judge_rule(args: &LoadArgs) -> (u32, String) {
    match &args.ramp {
        None => (1, format!("one run of {} s", args.duration.as_secs_f64())),
        Some(r) if r.trials == 1 => (
            1,
            format!(
                "one trial of {} s per step: a step passes when it achieved at least {}% of the arrivals, its p99 \
                 is within the SLO, no event was refused and it drained; a warm-up of {} s at the first rate runs \
                 first and is not counted",
                r.step.as_secs_f64(),
                KEEP_UP * 100.0,
                r.warmup.as_secs_f64()
            ),
        ),
        Some(r) => (
            r.trials,
            format!(
                "median of {} trials of {} s each: achieved, each latency percentile and the client's CPU are the \
                 trials' medians, the server's figures those of the median-p99 trial; a step passes when the median \
                 achieved is at least {}% of the arrivals, the median p99 is within the SLO, no event was refused and \
                 every trial drained; a warm-up of {} s at the first rate runs first and is not counted",
                r.trials,
                r.step.as_secs_f64(),
                KEEP_UP * 100.0,
                r.warmup.as_secs_f64()
            ),
        ),
    }
}

/// Sorts the steps, finds the knee and the first metric to move. The
/// warm-up is reported apart and never judged.
pub(super) fn analyse(mode: &str, args: &LoadArgs, warmup: Option<StepReport>, mut steps: Vec<StepReport>) -> ModeRun {
    steps.sort_by(|a, b| a.offered_events_per_s.total_cmp(&b.offered_events_per_s));
    let knee = steps.iter().rposition(|s| s.passed);
    let slo_ms = args.slo_p99.as_secs_f64() * 1e3;
    // The first failing step above the knee.
    let above = steps.iter().skip(knee.map_or(0, |k| k + 1)).find(|s| !s.passed);
    let knee_reason = above.map(|s| {
        let why = s.failed_because.as_deref().unwrap_or("it failed");
        let tail = s.tail_cause.as_ref().map_or(String::new(), |t| format!("; the tail: {t}"));
        format!("at {}/s offered: {why}{}{tail}", human(s.offered_events_per_s), stall_note(s))
    });
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    // Up to the first failing step: what gave way on the way there.
    let upto = steps.iter().position(|s| !s.passed).map_or(steps.len(), |p| p + 1);
    let mut first_moved: Option<FirstMoved> = None;
    if let Some(base) = steps.first() {
        'steps: for s in &steps[..upto] {
            for t in &THRESHOLDS {
                let at_least = if t.name == "machine_cpu_cores" { 0.75 * cores } else { t.at_least };
                let (Some(from), Some(to)) = ((t.get)(base), (t.get)(s)) else { continue };
                if to >= at_least && to >= from * t.times_base && (t.times_base <= 1.0 || to > from) {
                    first_moved = Some(FirstMoved {
                        metric: t.name.into(),
                        step: s.step,
                        offered_events_per_s: s.offered_events_per_s,
                        from,
                        to,
                    });
                    break 'steps;
                }
            }
            if let Some(m) = stage_moved(base, s) {
                first_moved = Some(m);
                break 'steps;
            }
        }
        // A failing step always names something: what grew most on the
        // way to it.
        if first_moved.is_none() && steps[..upto].last().is_some_and(|s| !s.passed) {
            first_moved = grew_most(base, &steps[upto - 1]);
        }
    }
    ModeRun {
        mode: mode.into(),
        workload: args.workload.name.clone(),
        arrivals: args.arrivals.name().into(),
        connections: args.connections,
        batch_events: args.batch_events.min(args.unacked_events),
        unacked_events: args.unacked_events,
        slo_p99_ms: slo_ms,
        knee_events_per_s: knee.map(|k| steps[k].achieved_events_per_s),
        knee_offered_events_per_s: knee.map(|k| steps[k].offered_events_per_s),
        knee_reason,
        first_moved,
        steps,
        trials_per_step: judge_rule(args).0,
        judge: judge_rule(args).1,
        warmup: warmup.map(|w| WarmupReport {
            seconds: w.seconds,
            offered_events_per_s: w.offered_events_per_s,
            achieved_events_per_s: w.achieved_events_per_s,
            latency_us: w.latency_us,
            machine_stalls: w.machine_stalls,
        }),
        overload: None,
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use trove_workload::WorkloadSpec;

    use super::*;
    use crate::load::arrivals::Arrivals;
    use crate::load::{Outcome, ServerArgs, compare, scrape, summary};

    fn ramp(from: f64, max: f64) -> RampArgs {
        RampArgs {
            from,
            factor: 1.1,
            coarse: 2.0,
            max,
            step: Duration::from_secs(1),
            steps_max: 100,
            trials: 3,
            warmup: Duration::from_secs(2),
        }
    }

    /// The rates a ramp offers against a server that keeps up to `capacity`.
    fn climb(r: &RampArgs, capacity: f64) -> Vec<f64> {
        let mut ladder = Ladder::new(r);
        let mut rate = r.from;
        let mut offered = vec![rate];
        while let Some(next) = ladder.next(rate, rate <= capacity) {
            rate = next;
            offered.push(rate);
            assert!(offered.len() < 100, "{offered:?}");
        }
        offered
    }

    #[test]
    fn the_ramp_climbs_coarse_then_fine_to_the_knee() {
        let offered = climb(&ramp(200_000.0, 1e8), 5_000_000.0);
        // 0.2, 0.4, 0.8, 1.6, 3.2, 6.4 (fails), then 3.2 x 1.1^k up to the
        // first above 5M.
        assert_eq!(&offered[..6], &[200_000.0, 400_000.0, 800_000.0, 1_600_000.0, 3_200_000.0, 6_400_000.0]);
        let fine = &offered[6..];
        assert!((fine[0] - 3_520_000.0).abs() < 1.0, "{offered:?}");
        assert!(fine.windows(2).all(|w| (w[1] / w[0] - 1.1).abs() < 1e-9), "{offered:?}");
        let last = *fine.last().unwrap();
        assert!(last > 5_000_000.0 && last / 1.1 <= 5_000_000.0, "{offered:?}");
    }

    #[test]
    fn the_ramp_comes_down_when_the_first_step_fails() {
        let offered = climb(&ramp(200_000.0, 1e8), 30_000.0);
        assert_eq!(&offered[..4], &[200_000.0, 100_000.0, 50_000.0, 25_000.0]);
        // Then up from 25k in fine steps to the first above 30k.
        assert_eq!(offered.len(), 4 + 2, "{offered:?}");
        assert!(*offered.last().unwrap() > 30_000.0);
        // Nothing ever passes: it stops at the floor.
        let offered = climb(&ramp(200_000.0, 1e8), 0.0);
        assert!(*offered.last().unwrap() >= RAMP_FLOOR && offered.len() < 12, "{offered:?}");
    }

    fn args() -> LoadArgs {
        LoadArgs {
            workload: WorkloadSpec::standard(),
            arrivals: Arrivals::Constant,
            rate: 1.0,
            duration: Duration::from_secs(1),
            ramp: None,
            modes: vec!["sharded".into()],
            target: None,
            target_metrics: None,
            tls: None,
            server: ServerArgs {
                exe: PathBuf::new(),
                shards: None,
                fsync: None,
                io_workers: 1,
                ws_io_workers: None,
                ws_io_nice: None,
                subscriber_push_interval_ms: None,
                subscriber_budget: None,
            },
            connections: 8,
            batch_events: 16,
            window_batches: 1,
            unacked_events: 1,
            queue_delay_target: None,
            watch_hunts: 0,
            fanout: None,
            target_ws: None,
            slo_p99: Duration::from_millis(10),
            client_workers: 1,
            tick: Duration::from_micros(200),
            linger: Duration::from_micros(1000),
            drain_timeout: Duration::from_secs(1),
            progress: false,
            hunt_base: 0,
            force: false,
            token: None,
            overload: None,
        }
    }

    fn step(i: u32, offered: f64, achieved: f64, p99_us: u64, busy: f64) -> StepReport {
        let lat = LatencyUs { p50: p99_us / 2, p99: p99_us, p999: p99_us, max: p99_us };
        StepReport {
            step: i,
            offered_events_per_s: offered,
            achieved_events_per_s: achieved,
            seconds: 1.0,
            events_offered: offered as u64,
            events_sent: offered as u64,
            events_acked: achieved as u64,
            latency_us: lat,
            admitted_latency_us: lat,
            send_lag_us: lat,
            update_latency_us: None,
            updates_measured: 0,
            update_gaps: 0,
            events_refused: 0,
            passed: achieved >= KEEP_UP * offered && p99_us <= 10_000,
            failed_because: Some(format!("p99 {:.1} ms", p99_us as f64 / 1e3)),
            client_cpu_cores: 0.1,
            pacer_stall_max_us: 0,
            pacer_stalls: 0,
            server: Some(model::ServerStep {
                worker_busy_ratio: busy,
                schedule_latency_p99_us: Some(100.0),
                ..Default::default()
            }),
            latency_breakdown: Vec::new(),
            busy_replies_per_s: None,
            machine_stalls: MachineStalls::default(),
            tail_cause: None,
            trials: Vec::new(),
            fanout: None,
        }
    }

    #[test]
    fn the_knee_is_the_highest_passing_step_and_names_what_moved() {
        // Run in ramp order: coarse up, a failure, fine steps.
        let steps = vec![
            step(0, 1e6, 1e6, 2000, 0.1),
            step(1, 2e6, 2e6, 2500, 0.3),
            step(2, 4e6, 3e6, 90_000, 0.95),
            step(3, 2.2e6, 2.2e6, 3000, 0.55),
            step(4, 2.42e6, 2.42e6, 12_000, 0.6),
        ];
        let run = analyse("sharded", &args(), None, steps);
        let offered: Vec<f64> = run.steps.iter().map(|s| s.offered_events_per_s).collect();
        assert_eq!(offered, [1e6, 2e6, 2.2e6, 2.42e6, 4e6]);
        assert_eq!(run.knee_events_per_s, Some(2.2e6));
        assert_eq!(run.knee_offered_events_per_s, Some(2.2e6));
        let reason = run.knee_reason.unwrap();
        assert!(reason.contains("2.42M/s") && reason.contains("p99 12.0 ms"), "{reason}");
        // Worker busy crossed 0.5 first, at 2.2M offered.
        let moved = run.first_moved.unwrap();
        assert_eq!((moved.metric.as_str(), moved.step), ("worker_busy_ratio", 3));
        assert_eq!((moved.from, moved.to), (0.1, 0.55));
    }

    /// `s` with server stages at these p99s (cumulative from the read, us;
    /// p50 a tenth) and the breakdown they give.
    fn staged(mut s: StepReport, p99s: [f64; 6]) -> StepReport {
        let stages = scrape::STAGES
            .iter()
            .zip(p99s)
            .map(|(stage, p99)| model::StageLatency {
                stage: stage.to_string(),
                events: 100,
                p50_us: p99 / 10.0,
                p99_us: p99,
            })
            .collect();
        let server = s.server.as_mut().expect("a server");
        server.stages = stages;
        s.latency_breakdown = model::LatencyBreakdown::of_step(&s.latency_us, &s.send_lag_us, s.server.as_ref());
        s
    }

    #[test]
    fn a_failing_step_below_saturation_names_the_stage_that_grew_first() {
        // Nothing of THRESHOLDS moves (busy 0.1-0.2, no queue, no BUSY).
        let quiet = [20.0, 30.0, 60.0, 80.0, 400.0, 450.0];
        let mut steps = vec![staged(step(0, 1e6, 1e6, 2000, 0.1), quiet)];
        // At 2M the sync's share doubles past 250 us: it moved first,
        // before the step at 4M failed on it.
        steps.push(staged(step(1, 2e6, 2e6, 3000, 0.1), [20.0, 30.0, 60.0, 80.0, 1_400.0, 1_450.0]));
        steps.push(staged(step(2, 4e6, 4e6, 12_000, 0.2), [20.0, 30.0, 60.0, 80.0, 11_000.0, 11_100.0]));
        let run = analyse("sharded", &args(), None, steps);
        let moved = run.first_moved.expect("a failing step names what moved");
        assert_eq!((moved.metric.as_str(), moved.step), ("stage_synced_p99_us", 1));
        assert_eq!((moved.from, moved.to), (320.0, 1_320.0));
        let b = &run.steps[2].latency_breakdown[1];
        assert_eq!(
            b.line(),
            "p99 12.000 ms = send lag 12.000 + decoded 0.020 + admitted 0.010 + applied 0.030 + written 0.020 + synced 10.920 + acknowledged 0.100 + client+network 0.000"
        );

        // Nothing grew on the server: the generator's side is named, with
        // the measure that points there.
        let mut calm = step(1, 2e6, 2e6, 30_000, 0.1);
        calm.send_lag_us = LatencyUs { p50: 100, p99: 25_000, p999: 26_000, max: 27_000 };
        let mut base = step(0, 1e6, 1e6, 2000, 0.1);
        base.send_lag_us = LatencyUs { p50: 100, p99: 300, p999: 400, max: 500 };
        let run = analyse("sharded", &args(), None, vec![staged(base, quiet), staged(calm, quiet)]);
        let moved = run.first_moved.expect("named");
        assert_eq!((moved.metric.as_str(), moved.step, moved.from, moved.to), ("send_lag_p99_us", 1, 300.0, 25_000.0));

        // Without any server figures, a lone failing step still names one.
        let mut alone = step(0, 1e6, 1e6, 30_000, 0.1);
        alone.server = None;
        let moved = analyse("sharded", &args(), None, vec![alone]).first_moved.expect("named");
        assert_eq!(moved.metric, "send_lag_p99_us");
        // A run that never failed may name nothing.
        assert!(analyse("sharded", &args(), None, vec![step(0, 1e6, 1e6, 2000, 0.1)]).first_moved.is_none());
    }

    #[test]
    fn a_single_run_prints_its_own_figures_not_the_ramps_table() {
        let one = || vec![analyse("sharded", &args(), None, vec![step(0, 1e6, 9.9e5, 3000, 0.3)])];
        let text = summary(&Outcome { runs: one(), comparison: None }, false);
        for says in ["offered", "achieved", "p50 ", "p99 ", "p99.9 ", "refused", "sharded run"] {
            assert!(text.contains(says), "{says} in {text}");
        }
        for table in ["knee", "ratio", "first to move"] {
            assert!(!text.contains(table), "{table} in {text}");
        }
        // The same figures as a ramp's: the table.
        let text = summary(&Outcome { runs: one(), comparison: None }, true);
        assert!(text.starts_with("mode") && text.contains("knee ev/s"), "{text}");
    }

    #[test]
    fn the_summary_is_a_side_by_side_table() {
        let a = analyse("sharded", &args(), None, vec![step(0, 4e6, 4e6, 3000, 0.3), step(1, 8e6, 5e6, 90_000, 0.9)]);
        let b = analyse("task-per-event", &args(), None, vec![step(0, 1e5, 1e5, 4000, 0.7)]);
        let runs = vec![a, b];
        let comparison = Some(compare(&runs, &args()));
        let text = summary(&Outcome { runs, comparison }, true);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("mode") && lines[0].contains("ratio"), "{text}");
        assert!(lines[1].starts_with("sharded") && lines[1].contains("4.00M") && lines[1].contains("1.0x"), "{text}");
        assert!(lines[2].starts_with("task-per-event") && lines[2].contains("100k") && lines[2].contains("40.0x"));
        assert!(lines[2].contains("worker_busy_ratio"), "{text}");
        assert!(text.contains("knee ratio sharded / task-per-event: 40.0x"), "{text}");
    }

    #[test]
    fn the_knee_reason_names_a_stall_of_the_generator() {
        let mut above = step(1, 2e6, 2e6, 40_000, 0.3);
        (above.pacer_stall_max_us, above.pacer_stalls) = (28_400, 2);
        let run = analyse("sharded", &args(), None, vec![step(0, 1e6, 1e6, 2000, 0.1), above]);
        let reason = run.knee_reason.unwrap();
        assert!(reason.ends_with("p99 40.0 ms [the generator stalled 2 times, up to 28.4 ms]"), "{reason}");
        // A step without stalls says nothing of them.
        let mut quiet = step(0, 1e6, 1e6, 2000, 0.1);
        quiet.pacer_stall_max_us = 4_900;
        assert_eq!(stall_note(&quiet), "");
        (quiet.pacer_stall_max_us, quiet.pacer_stalls) = (5_100, 1);
        assert_eq!(stall_note(&quiet), " [the generator stalled once, 5.1 ms]");
    }

    /// A trial as `run_step` reports it: a step of one trial.
    fn trial(i: u32, rate: f64, achieved: f64, p99_us: u64, stall_us: u64) -> StepReport {
        let mut s = step(i, rate, achieved, p99_us, 0.2);
        s.machine_stalls =
            MachineStalls { max_us: stall_us, count: u64::from(stall_us > 0), lost_us: stall_us, host: None };
        s.tail_cause = (!s.passed).then(|| format!("tail of trial {i}"));
        s.send_lag_us = LatencyUs { p50: 100, p99: 200, p999: 300, max: 400 };
        s.trials = vec![TrialReport {
            trial: 0,
            scheduled_events_per_s: rate,
            achieved_events_per_s: achieved,
            latency_us: s.latency_us,
            send_lag_us: s.send_lag_us,
            admitted_latency_us: s.admitted_latency_us,
            pacer_stall_max_us: 0,
            machine_stalls: s.machine_stalls,
            client_cpu_cores: 0.1,
            server_cpu_cores: None,
            passed: s.passed,
            failed_because: s.failed_because.clone(),
            tail_cause: s.tail_cause.clone(),
        }];
        s
    }

    const SLO: Duration = Duration::from_millis(10);

    #[test]
    fn one_stalled_trial_of_three_does_not_fail_a_step() {
        // The second trial met a 13.3 ms stop of the machine.
        let trials =
            vec![trial(7, 1e6, 1e6, 2_000, 0), trial(8, 1e6, 1e6, 12_600, 13_300), trial(9, 1e6, 1e6, 3_000, 0)];
        let s = judge(2, 1e6, trials, SLO, None, 2.0);
        assert!(s.passed, "{s:?}");
        assert_eq!((s.step, s.failed_because, s.tail_cause), (2, None, None));
        // The judged figures are the medians; every trial is kept.
        assert_eq!(s.latency_us.p99, 3_000);
        assert_eq!(s.latency_us.p50, 1_500);
        assert_eq!(s.trials.len(), 3);
        assert_eq!(s.trials.iter().map(|t| t.trial).collect::<Vec<_>>(), [0, 1, 2]);
        assert_eq!(s.trials[1].latency_us.p99, 12_600);
        assert!(!s.trials[1].passed);
        assert_eq!(s.machine_stalls, MachineStalls { max_us: 13_300, count: 1, lost_us: 13_300, host: None });
        assert_eq!(s.events_offered, 3_000_000);
        // A single trial (the old rule) would have failed on it.
        let one = judge(2, 1e6, vec![trial(8, 1e6, 1e6, 12_600, 13_300)], SLO, None, 2.0);
        assert!(!one.passed);
    }

    #[test]
    fn two_bad_trials_of_three_fail_a_step_and_name_the_tail() {
        let trials = vec![trial(0, 1e6, 1e6, 14_000, 0), trial(1, 1e6, 1e6, 2_000, 0), trial(2, 1e6, 1e6, 12_000, 0)];
        let s = judge(0, 1e6, trials, SLO, None, 2.0);
        assert!(!s.passed);
        assert_eq!(s.latency_us.p99, 12_000);
        let why = s.failed_because.unwrap();
        assert!(why.contains("median p99 12.0 ms") && why.contains("14.0, 2.0, 12.0 ms"), "{why}");
        // The tail's cause is the median trial's.
        assert_eq!(s.tail_cause.as_deref(), Some("tail of trial 2"));
        // Achieved: the median, against the arrivals.
        let trials = vec![trial(0, 1e6, 0.5e6, 2_000, 0), trial(1, 1e6, 1e6, 2_000, 0), trial(2, 1e6, 0.9e6, 2_000, 0)];
        let s = judge(0, 1e6, trials, SLO, None, 2.0);
        assert!(!s.passed && s.achieved_events_per_s == 0.9e6, "{s:?}");
        assert!(s.failed_because.unwrap().contains("median achieved 900k/s"));
        // Failing without a failing median trial still names a cause.
        assert!(s.tail_cause.is_some());
        // Refusals, and a trial that ended the run, fail the step whatever the medians.
        let mut refused = trial(1, 1e6, 1e6, 2_000, 0);
        refused.events_refused = 5;
        let s =
            judge(0, 1e6, vec![trial(0, 1e6, 1e6, 2_000, 0), refused, trial(2, 1e6, 1e6, 2_000, 0)], SLO, None, 2.0);
        assert!(!s.passed && s.failed_because.unwrap().contains("5 events refused"));
        let s = judge(0, 1e6, vec![trial(0, 1e6, 1e6, 2_000, 0)], SLO, Some("a connection failed: x"), 2.0);
        assert!(!s.passed && s.tail_cause.unwrap().starts_with("the pipeline"));
    }

    /// A ramp over judged steps against a server that keeps up to 5 M/s,
    /// on a machine that stalls once, in trial `stalled` of the 2 M/s step.
    fn ramp_with_a_stall(trials: u32, stalled: u32) -> ModeRun {
        let r = ramp(1e6, 1e8);
        let mut ladder = Ladder::new(&r);
        let (mut rate, mut steps) = (r.from, Vec::new());
        for k in 0..40u32 {
            let p99 = |t: u32| match rate {
                _ if rate > 5e6 => 20_000,
                _ if rate == 2e6 && t == stalled => 13_000,
                _ => 3_000,
            };
            let ts = (0..trials).map(|t| trial(k * trials + t, rate, rate, p99(t), 0)).collect();
            let s = judge(k, rate, ts, SLO, None, 2.0);
            let passed = s.passed;
            steps.push(s);
            match ladder.next(rate, passed) {
                Some(next) => rate = next,
                None => break,
            }
        }
        analyse("sharded", &args(), None, steps)
    }

    #[test]
    fn one_stall_cannot_cap_the_knee() {
        // Judged on three trials, wherever the stall lands: 1, 2, 4, 8
        // (fails), then 4 x 1.1^k up to the first above 5 M.
        for stalled in 0..3 {
            let run = ramp_with_a_stall(3, stalled);
            let knee = run.knee_offered_events_per_s.unwrap();
            assert!((knee - 4.84e6).abs() < 1.0, "stall in trial {stalled}: {knee}");
        }
        // One trial per step (the old rule): the stalled 2 M/s step fails
        // and the ramp climbs from 1 M/s in fine steps below it.
        let run = ramp_with_a_stall(1, 0);
        let knee = run.knee_offered_events_per_s.unwrap();
        assert!(knee < 2e6, "{knee}");
    }

    #[test]
    fn the_warm_up_is_reported_apart_and_never_judged() {
        // A cold start: the warm-up at the first rate fails badly.
        let warmup = step(0, 1e6, 0.6e6, 50_000, 0.1);
        let steps = vec![step(0, 1e6, 1e6, 2000, 0.1), step(1, 2e6, 2e6, 2500, 0.3), step(2, 4e6, 3e6, 90_000, 0.9)];
        let run = analyse("sharded", &args(), Some(warmup), steps);
        assert_eq!(run.steps.len(), 3);
        assert_eq!(run.knee_offered_events_per_s, Some(2e6));
        assert!(run.knee_reason.unwrap().contains("4.00M/s"));
        let w = run.warmup.unwrap();
        assert_eq!((w.offered_events_per_s, w.latency_us.p99), (1e6, 50_000));
        assert_eq!(run.trials_per_step, 1);
        // With a ramp, the rule is stated.
        let mut a = args();
        a.ramp = Some(ramp(1e6, 1e8));
        let run = analyse("sharded", &a, None, vec![]);
        assert_eq!(run.trials_per_step, 3);
        assert!(run.judge.starts_with("median of 3 trials of 1 s each"), "{}", run.judge);
        assert!(run.judge.contains("warm-up of 2 s"), "{}", run.judge);
        assert_eq!(run.warmup, None);
        // One trial a step is no median ("median of 1 trials").
        a.ramp.as_mut().unwrap().trials = 1;
        let run = analyse("sharded", &a, None, vec![]);
        assert!(run.judge.starts_with("one trial of 1 s per step"), "{}", run.judge);
        assert_eq!(judged_on(1), "one trial");
        assert_eq!(judged_on(3), "judged on the median of 3 trials");
    }

    #[test]
    fn no_passing_step_means_no_knee() {
        let run = analyse("x", &args(), None, vec![step(0, 1e6, 1e5, 50_000, 0.2)]);
        assert_eq!(run.knee_events_per_s, None);
        let reason = run.knee_reason.unwrap();
        assert!(reason.contains("1.00M/s offered") && reason.contains("p99 50.0 ms"), "{reason}");
        // A failing step always names something: here its largest part,
        // the generator's send lag (the fixture's equals its latency).
        assert_eq!(run.first_moved.map(|m| m.metric).as_deref(), Some("send_lag_p99_us"));
    }

    #[test]
    fn the_ramp_stops_at_its_maximum() {
        assert_eq!(climb(&ramp(5_000.0, 20_000.0), 1e9), [5_000.0, 10_000.0, 20_000.0]);
        assert_eq!(climb(&ramp(5_000.0, 15_000.0), 1e9), [5_000.0, 10_000.0, 15_000.0]);
    }
}
