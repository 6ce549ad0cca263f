//! What a run prints and writes: the terminal summary and the JSON.

use super::model::{ModeRun, StepReport};
use super::{Outcome, fanout};
use crate::text::human;

/// The single-run JSON: one step with its mode and workload.
#[derive(Debug, serde::Serialize)]
pub struct SingleRun<'a> {
    pub mode: &'a str,
    pub workload: &'a str,
    pub arrivals: &'a str,
    pub connections: u32,
    pub batch_events: u32,
    pub unacked_events: u32,
    #[serde(flatten)]
    pub step: &'a StepReport,
}

/// The run of a single step (no ramp, no overload, one mode), if it was
/// one.
fn single(outcome: &Outcome, ramp: bool) -> Option<&ModeRun> {
    match (&outcome.comparison, outcome.runs.as_slice()) {
        (None, [run]) if !ramp && run.steps.len() == 1 && run.overload.is_none() => Some(run),
        _ => None,
    }
}

/// The JSON document of a run: a single step, one mode's ramp, or a comparison.
pub fn to_json(outcome: &Outcome, ramp: bool) -> Result<String, String> {
    let r = match (&outcome.comparison, outcome.runs.as_slice()) {
        (Some(c), _) => serde_json::to_string_pretty(c),
        (None, [run]) if single(outcome, ramp).is_some() => serde_json::to_string_pretty(&SingleRun {
            mode: &run.mode,
            workload: &run.workload,
            arrivals: &run.arrivals,
            connections: run.connections,
            batch_events: run.batch_events,
            unacked_events: run.unacked_events,
            step: &run.steps[0],
        }),
        (None, [run]) => serde_json::to_string_pretty(run),
        (None, runs) => serde_json::to_string_pretty(runs),
    };
    r.map_err(|e| e.to_string())
}

/// The terminal summary: a single run's figures, or (`ramp`, or several
/// modes) the table of knees.
pub fn summary(outcome: &Outcome, ramp: bool) -> String {
    match single(outcome, ramp) {
        Some(run) => single_summary(run, &run.steps[0]),
        None => ramp_summary(outcome),
    }
}

/// One run at one rate: what was offered and achieved, the latency to the
/// acknowledgement and where it went, what was refused, the verdict.
fn single_summary(run: &ModeRun, s: &StepReport) -> String {
    let ms = |us: u64| format!("{:.2} ms", us as f64 / 1e3);
    let pct = |l: &super::model::LatencyUs| {
        format!("p50 {}   p99 {}   p99.9 {}   max {}", ms(l.p50), ms(l.p99), ms(l.p999), ms(l.max))
    };
    let mut out = format!(
        "{} run, workload {}, {} arrivals over {} connections ({} unanswered each, batches of {}), {:.1} s\n",
        run.mode, run.workload, run.arrivals, run.connections, run.unacked_events, run.batch_events, s.seconds
    );
    out += &format!(
        "  offered     {}/s   achieved {}/s ({:.1}% of offered)\n",
        human(s.offered_events_per_s),
        human(s.achieved_events_per_s),
        if s.offered_events_per_s > 0.0 { s.achieved_events_per_s / s.offered_events_per_s * 100.0 } else { 0.0 },
    );
    out += &format!(
        "  events      {} offered, {} sent, {} acknowledged, {} refused{}\n",
        s.events_offered,
        s.events_sent,
        s.events_acked,
        s.events_refused,
        s.busy_replies_per_s.map_or(String::new(), |b| format!(", BUSY answers {}/s", human(b))),
    );
    out += &format!("  to ack      {}\n", pct(&s.latency_us));
    if let Some(u) = &s.update_latency_us {
        out += &format!("  to update   {}   ({} updates timed, {} gaps)\n", pct(u), s.updates_measured, s.update_gaps);
    }
    for b in &s.latency_breakdown {
        out += &format!("  {}\n", b.line());
    }
    // Against a cluster, each node's share (the figures above are summed).
    if run.mode == "cluster" {
        for n in s.server.iter().flat_map(|server| &server.nodes) {
            out += &format!("  {}\n", n.line());
        }
    }
    out += &fanout::summary(run);
    out += &match &s.failed_because {
        None => format!("  kept up: achieved within the offered rate and p99 within the SLO of {} ms", run.slo_p99_ms),
        Some(why) => format!("  did not keep up: {why}"),
    };
    out.trim_end().to_string()
}

/// The ramp's (or the comparison's) summary: one row per mode at its knee.
fn ramp_summary(outcome: &Outcome) -> String {
    let mut out = String::new();
    // Side by side: one row per mode, the knee's figures and the ratio of
    // the first mode's knee to this one's.
    let first_knee = outcome.runs.first().and_then(|r| r.knee_events_per_s);
    out += &format!(
        "{:<26} {:>12} {:>10} {:>10} {:>8}  {}\n",
        "mode", "knee ev/s", "p50 ms", "p99 ms", "ratio", "first to move"
    );
    for run in &outcome.runs {
        let at_knee = run.steps.iter().find(|s| Some(s.offered_events_per_s) == run.knee_offered_events_per_s);
        let ms = |us: u64| format!("{:.2}", us as f64 / 1e3);
        let ratio = match (first_knee, run.knee_events_per_s) {
            (Some(a), Some(b)) if b > 0.0 => format!("{:.1}x", a / b),
            _ => "-".into(),
        };
        out += &format!(
            "{:<26} {:>12} {:>10} {:>10} {:>8}  {}\n",
            run.mode,
            run.knee_events_per_s.map_or("none".into(), human),
            at_knee.map_or("-".into(), |s| ms(s.latency_us.p50)),
            at_knee.map_or("-".into(), |s| ms(s.latency_us.p99)),
            ratio,
            run.first_moved.as_ref().map_or("-".into(), |m| format!(
                "{} at {}/s ({:.3} -> {:.3})",
                m.metric,
                human(m.offered_events_per_s),
                m.from,
                m.to
            )),
        );
    }
    for run in &outcome.runs {
        if let Some(o) = &run.overload {
            out += &format!(
                "{}: overload {:.1}x the knee: offered {}/s, goodput {}/s = {:.1}% of the knee's {}/s, BUSY {}/s, admitted p99 {:.2} ms (SLO {} ms): {}\n",
                run.mode,
                o.factor,
                human(o.offered_events_per_s),
                human(o.goodput_events_per_s),
                o.goodput_over_knee * 100.0,
                human(o.knee_events_per_s),
                o.busy_replies_per_s.map_or("-".into(), human),
                o.admitted_p99_us as f64 / 1e3,
                o.slo_p99_ms,
                if o.holds { "holds" } else { "does not hold" },
            );
        }
    }
    for run in &outcome.runs {
        if let Some(w) = &run.warmup {
            out += &format!(
                "{}: warm-up {:.1} s at {}/s (not counted): p99 {:.2} ms\n",
                run.mode,
                w.seconds,
                human(w.offered_events_per_s),
                w.latency_us.p99 as f64 / 1e3
            );
        }
        if run.trials_per_step > 1 {
            out += &format!("{}: each step judged on the median of {} trials\n", run.mode, run.trials_per_step);
        }
    }
    for run in &outcome.runs {
        out += &fanout::summary(run);
    }
    for run in &outcome.runs {
        if let Some(r) = &run.knee_reason {
            out += &format!("{}: the step above the knee failed {r}\n", run.mode);
        }
    }
    if let Some(c) = &outcome.comparison {
        for r in &c.ratios {
            out += &format!("knee ratio {}: {}\n", r.modes, r.knee_ratio.map_or("-".into(), |x| format!("{x:.1}x")));
        }
    }
    out.trim_end().to_string()
}

#[cfg(test)]
mod tests {
    use super::super::model::NodeStep;
    use super::super::report::tests::{run, step};
    use super::*;

    #[test]
    fn a_single_cluster_run_prints_each_node() {
        let node = |name: &str, acked: f64| NodeStep {
            node: name.to_string(),
            control: "127.0.0.1:1".to_string(),
            acknowledged_events_per_s: acked,
            cpu_cores: 0.5,
            partitions_owned: 4.0,
        };
        let mut s = step(0, 1000.0, 1000.0, 2000, true);
        s.server.as_mut().expect("step 0 has server figures").nodes = vec![node("a", 600.0), node("b", 400.0)];
        let r = run("cluster", vec![s]);
        let out = single_summary(&r, &r.steps[0]);
        assert!(out.contains("node a: acknowledged") && out.contains("node b: acknowledged"), "{out}");
    }
}
