//! `--report DIR`: the figures of `trove bench` ([`super::model`]) as two
//! charts and a Markdown page.
//!
//! - `achieved.svg`: achieved against offered events/s, one line per mode,
//!   with the y = x line a mode that keeps up follows.
//! - `p99.svg`: p99 latency to acknowledgement against offered events/s, one
//!   line per mode, with the SLO.
//! - `report.md`: the command, the charts, a summary of the modes side by
//!   side (with a comparison), and per mode its steps, its knee and the
//!   first server metric to move on the way there; a legend under each
//!   table says what its columns are.
//!
//! On both charts a dotted vertical line marks each mode's knee (at its
//! offered rate), a failed step's marker is hollow, and a step that failed
//! on latency is crossed as well: on the achieved chart it sits on the
//! y = x line like a passing one, and the cross tells it apart.
//!
//! Both charts use log10 axes: the modes' knees differ by 10-50x, which a
//! linear axis would squash into its corner. Values that cannot go on a log
//! axis (zero, negative, NaN, infinite) are left out of the charts; the
//! tables show every step. The SVG is written by hand, deterministically:
//! the same runs give the same bytes.

use std::fmt::{self, Write as _};
use std::path::{Path, PathBuf};

use super::model::{Comparison, ModeRun, StepReport};
use crate::chart::{Chart, Mark, Point, Series, Units, legend_name, plottable};
use crate::text::{human, plain, setting};

/// Writes `achieved.svg`, `p99.svg` and `report.md` into `dir` (created if
/// missing) and returns their paths. `runs` are charted and tabulated;
/// `comparison`, when given, adds the side-by-side summary and the knee
/// ratios. `command` is the command line that produced the runs.
pub fn write(
    dir: &Path,
    runs: &[ModeRun],
    comparison: Option<&Comparison>,
    command: &str,
) -> Result<Vec<PathBuf>, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let rendered = (|| -> Result<[(&'static str, String); 3], fmt::Error> {
        Ok([
            ("achieved.svg", achieved_chart(runs).render()?),
            ("p99.svg", p99_chart(runs).render()?),
            ("report.md", markdown(runs, comparison, command)?),
        ])
    })()
    .map_err(|_| "rendering the report: formatting failed".to_string())?;
    let mut written = Vec::with_capacity(rendered.len());
    for (name, text) in rendered {
        let path = dir.join(name);
        std::fs::write(&path, text).map_err(|e| format!("writing {}: {e}", path.display()))?;
        written.push(path);
    }
    Ok(written)
}

/// The workload named in a chart's title, when all runs share one.
fn workload_suffix(runs: &[ModeRun]) -> String {
    match runs.first() {
        Some(first) if !first.workload.is_empty() && runs.iter().all(|r| r.workload == first.workload) => {
            format!(" ({})", first.workload)
        }
        _ => String::new(),
    }
}

fn series<'a>(
    runs: &'a [ModeRun],
    y: impl Fn(&StepReport) -> f64,
    tip: impl Fn(&StepReport, f64) -> String,
) -> Vec<Series<'a>> {
    runs.iter()
        .map(|run| Series {
            name: &run.mode,
            points: run
                .steps
                .iter()
                .filter_map(|step| {
                    let (px, py) = (step.offered_events_per_s, y(step));
                    (plottable(px) && plottable(py)).then(|| Point {
                        x: px,
                        y: py,
                        passed: step.passed,
                        flagged: failed_on_latency(step),
                        tip: format!("{} step {}: {}", run.mode, step.step, tip(step, py)),
                    })
                })
                .collect(),
        })
        .collect()
}

/// The step failed on its p99 (whatever else it failed on): the judges
/// say so as "... left the N ms SLO".
fn failed_on_latency(step: &StepReport) -> bool {
    !step.passed && step.failed_because.as_deref().is_some_and(|w| w.contains("SLO"))
}

/// A dotted line at each mode's knee, at its offered rate (the x axis).
fn knee_marks(runs: &[ModeRun]) -> Vec<Mark> {
    runs.iter()
        .enumerate()
        .filter_map(|(i, run)| {
            let (offered, knee) = (run.knee_offered_events_per_s?, run.knee_events_per_s?);
            let who = if runs.len() > 1 { format!(" {}", legend_name(&run.mode)) } else { String::new() };
            Some(Mark { x: offered, series: i, label: format!("knee{who} {}/s", human(knee)) })
        })
        .collect()
}

const MARKS_LEGEND: &str = "knee (dotted)";
const FLAG_LEGEND: &str = "failed on p99";

fn achieved_chart(runs: &[ModeRun]) -> Chart<'_> {
    Chart {
        title: format!("Achieved against offered events/s{}", workload_suffix(runs)),
        x_title: "offered events/s (log scale)",
        y_title: "achieved events/s (log scale)",
        y_units: Units::Rate,
        series: series(
            runs,
            |s| s.achieved_events_per_s,
            |s, y| format!("offered {}, achieved {}", human(s.offered_events_per_s), human(y)),
        ),
        diagonal: true,
        slo: None,
        marks: knee_marks(runs),
        marks_legend: MARKS_LEGEND,
        flag_legend: FLAG_LEGEND,
    }
}

fn p99_chart(runs: &[ModeRun]) -> Chart<'_> {
    Chart {
        title: format!("p99 latency to acknowledgement{}", workload_suffix(runs)),
        x_title: "offered events/s (log scale)",
        y_title: "p99 to ack, ms (log scale)",
        y_units: Units::Millis,
        series: series(
            runs,
            |s| s.latency_us.p99 as f64 / 1000.0,
            |s, y| format!("offered {}, p99 {} ms", human(s.offered_events_per_s), human(y)),
        ),
        diagonal: false,
        slo: runs.first().map(|r| r.slo_p99_ms).filter(|&v| plottable(v)),
        marks: knee_marks(runs),
        marks_legend: MARKS_LEGEND,
        flag_legend: FLAG_LEGEND,
    }
}

// ---------------------------------------------------------------------------
// Markdown
// ---------------------------------------------------------------------------

/// Text safe on one Markdown line and in a table cell.
fn md(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '|' => out.push_str("\\|"),
            '<' => out.push_str("&lt;"),
            '&' => out.push_str("&amp;"),
            '\n' | '\r' | '\t' => out.push(' '),
            c if c.is_control() => out.push('\u{fffd}'),
            c => out.push(c),
        }
    }
    out
}

/// `v` with `decimals` decimals, or `-` when it is not a number.
fn num(v: f64, decimals: usize) -> String {
    if v.is_finite() {
        // No "-0.000".
        let v = if v == 0.0 { 0.0 } else { v };
        format!("{v:.decimals$}")
    } else {
        "-".to_string()
    }
}

/// Events per second as millions per second.
fn mega(v: f64) -> String {
    num(v / 1e6, 3)
}

/// Microseconds as milliseconds, exactly.
fn ms(us: u64) -> String {
    format!("{}.{:03}", us / 1000, us % 1000)
}

fn ratio(r: f64) -> String {
    if r.is_finite() { format!("{}x", human(r)) } else { "-".to_string() }
}

/// The step the knee was measured at: the passing step at the knee's
/// offered rate, else the highest passing step.
fn knee_step(run: &ModeRun) -> Option<&StepReport> {
    run.knee_events_per_s?;
    let passed = || run.steps.iter().filter(|s| s.passed);
    run.knee_offered_events_per_s
        .and_then(|o| passed().find(|s| (s.offered_events_per_s - o).abs() <= o.abs() * 1e-9))
        .or_else(|| run.steps.iter().rev().find(|s| s.passed))
}

/// What the summary table's columns are.
pub(crate) const SUMMARY_LEGEND: &str = "Legend: *knee M/s*: the achieved rate of the highest passing step, millions of \
     events per second; *p99 at knee ms*: that step's p99 latency to acknowledgement; *ratio*: the first mode's knee \
     over this mode's (2.00x: the first mode carries twice the load within the SLO).";

/// What the steps table's columns are.
pub(crate) const STEPS_LEGEND: &str = "Legend: *offered*, *achieved M/s*: millions of events per second the schedule \
     offered and the server acknowledged; *p50/p99/p99.9 ack ms*: latency from each event's intended send time to \
     its acknowledgement; *p99 update ms*: to its update at a subscriber watching its hunt; *p99 send lag ms*: how \
     late the generator handed events to the SDK (its own share); *pacer stall max ms*: the pacer's latest wake-up; \
     *client cores*, *server cores*: CPU seconds per second of the generator and the server; *server p99 ack ms*: \
     the server's own p99 from admitting an event to writing its ACK; *queue depth*: events waiting in the shard \
     queues at the step's end; *batch mean*: events per shard batch; *polls/event*, *wakeups/event*: task polls \
     and thread wake-ups per applied event; *worker busy*: the runtime workers' busy share; *schedule p99 us*: how \
     long a woken task waited for a worker; *passed*: achieved kept up with offered and p99 stayed within the SLO. \
     `-`: not measured (no subscriber timed, no server scrape).";

/// What the latency breakdown table's columns are.
pub(crate) const BREAKDOWN_LEGEND: &str = "Legend: *client*: the percentile of the latency to acknowledgement as the \
     generator measured it; *send lag*: the generator's own delay; one column per server stage, its share; \
     *server*: the stages together; *client+network*: the rest (the SDK, the sockets, the kernel).";

/// What the trials table's columns are.
pub(crate) const TRIALS_LEGEND: &str = "Legend: one row per trial of the step; *machine stall max ms*, *machine \
     stalls*, *machine lost ms*: the probe thread's longest stall, their number and the time lost, the whole \
     machine's (not the server's) share; *tail*: what the trial's p99 is put down to.";

fn legend(s: &mut String, text: &str) -> fmt::Result {
    writeln!(s)?;
    writeln!(s, "{text}")
}

fn code_block(s: &mut String, text: &str) -> fmt::Result {
    // A fence longer than any run of backticks in the text.
    let mut longest = 0;
    let mut current = 0;
    for c in text.chars() {
        current = if c == '`' { current + 1 } else { 0 };
        longest = longest.max(current);
    }
    let fence = "`".repeat(longest.max(2) + 1);
    writeln!(s, "{fence}sh")?;
    writeln!(s, "{}", text.trim_end())?;
    writeln!(s, "{fence}")
}

fn markdown(runs: &[ModeRun], comparison: Option<&Comparison>, command: &str) -> Result<String, fmt::Error> {
    let mut s = String::new();
    writeln!(s, "# trove bench report{}", md(&workload_suffix(runs)))?;
    writeln!(s)?;
    writeln!(s, "Produced by:")?;
    writeln!(s)?;
    code_block(&mut s, command)?;
    writeln!(s)?;
    writeln!(s, "![Achieved against offered events/s, per mode](achieved.svg)")?;
    writeln!(s)?;
    writeln!(s, "![p99 latency to acknowledgement against offered events/s, per mode](p99.svg)")?;
    writeln!(s)?;
    writeln!(
        s,
        "Latencies run from each event's intended send time (coordinated omission corrected). \
         A step passes when achieved keeps up with offered and p99 to ack stays within the SLO; \
         the knee is the achieved rate of the highest passing step. On the charts a dotted vertical line marks \
         each mode's knee (at its offered rate), a hollow marker is a step that failed, and a crossed one a step \
         that failed on p99 latency (on the achieved chart it may sit on the y = x line all the same)."
    )?;

    if let Some(comparison) = comparison {
        summary(&mut s, comparison)?;
    }
    if runs.is_empty() {
        writeln!(s)?;
        writeln!(s, "No runs.")?;
    }
    for run in runs {
        mode_section(&mut s, run)?;
    }
    Ok(s)
}

fn summary(s: &mut String, comparison: &Comparison) -> fmt::Result {
    writeln!(s)?;
    writeln!(s, "## Summary")?;
    writeln!(s)?;
    writeln!(s, "Workload {}, SLO p99 {} ms.", md(&comparison.workload), setting(comparison.slo_p99_ms))?;
    writeln!(s)?;
    writeln!(s, "| mode | knee M/s | p99 at knee ms | ratio |")?;
    writeln!(s, "|---|---:|---:|---:|")?;
    let first = comparison.runs.first();
    for run in &comparison.runs {
        let knee = run.knee_events_per_s.map_or_else(|| "-".to_string(), mega);
        let p99 = knee_step(run).map_or_else(|| "-".to_string(), |step| ms(step.latency_us.p99));
        // The first mode's knee over this one's, as the comparison has it.
        let r = first.and_then(|first| {
            let modes = format!("{} / {}", first.mode, run.mode);
            match comparison.ratios.iter().find(|r| r.modes == modes) {
                Some(r) => r.knee_ratio,
                None => Some(first.knee_events_per_s? / run.knee_events_per_s?),
            }
        });
        writeln!(s, "| {} | {knee} | {p99} | {} |", md(&run.mode), r.map_or_else(|| "-".to_string(), ratio))?;
    }
    legend(s, SUMMARY_LEGEND)?;
    writeln!(s)?;
    if comparison.ratios.is_empty() {
        writeln!(s, "No knee ratios (one mode).")?;
    } else {
        writeln!(s, "Knee ratios (the first mode's knee over each other mode's, same SLO):")?;
        writeln!(s)?;
        for r in &comparison.ratios {
            let value = r.knee_ratio.map_or_else(|| "n/a (a mode has no knee)".to_string(), ratio);
            writeln!(s, "- {}: {value}", md(&r.modes))?;
        }
    }
    Ok(())
}

fn mode_section(s: &mut String, run: &ModeRun) -> fmt::Result {
    writeln!(s)?;
    writeln!(s, "## {}", md(&run.mode))?;
    writeln!(s)?;
    writeln!(
        s,
        "Workload {}, {} arrivals, {} connections (each with batches of at most {} events and {} unanswered), SLO p99 {} ms.",
        md(&run.workload),
        md(&run.arrivals),
        run.connections,
        run.batch_events,
        run.unacked_events,
        setting(run.slo_p99_ms)
    )?;
    writeln!(s)?;
    if run.steps.is_empty() {
        writeln!(s, "No steps ran.")?;
    } else {
        writeln!(
            s,
            "| step | offered M/s | achieved M/s | p50 ack ms | p99 ack ms | p99.9 ack ms | p99 update ms \
             | p99 send lag ms | pacer stall max ms | client cores | server cores | server p99 ack ms | queue depth | batch mean \
             | polls/event | wakeups/event | worker busy | schedule p99 us | passed |"
        )?;
        writeln!(
            s,
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|:---:|"
        )?;
        for step in &run.steps {
            let l = &step.latency_us;
            let update = step.update_latency_us.map_or_else(|| "-".to_string(), |u| ms(u.p99));
            write!(
                s,
                "| {} | {} | {} | {} | {} | {} | {update} | {} | {} | {} ",
                step.step,
                mega(step.offered_events_per_s),
                mega(step.achieved_events_per_s),
                ms(l.p50),
                ms(l.p99),
                ms(l.p999),
                ms(step.send_lag_us.p99),
                ms(step.pacer_stall_max_us),
                num(step.client_cpu_cores, 2)
            )?;
            match &step.server {
                Some(server) => write!(
                    s,
                    "| {} | {} | {} | {} | {} | {} | {} | {} ",
                    num(server.cpu_cores, 2),
                    server.ingest_to_ack_p99_us.map_or_else(|| "-".to_string(), |v| num(v / 1e3, 2)),
                    num(server.queue_depth_events, 0),
                    num(server.batch_events_mean, 1),
                    num(server.polls_per_event, 2),
                    num(server.wakeups_per_event, 2),
                    num(server.worker_busy_ratio, 2),
                    server.schedule_latency_p99_us.map_or_else(|| "-".to_string(), |v| num(v, 1))
                )?,
                None => write!(s, "| - | - | - | - | - | - | - | - ")?,
            }
            writeln!(s, "| {} |", if step.passed { "yes" } else { "no" })?;
        }
        legend(s, STEPS_LEGEND)?;
    }
    breakdown_section(s, run)?;
    writeln!(s)?;
    let reason = run.knee_reason.as_deref().map(md);
    match run.knee_events_per_s {
        Some(knee) => {
            let offered = run.knee_offered_events_per_s.map_or_else(|| "-".to_string(), mega);
            write!(s, "knee: {} M events/s achieved at {offered} M events/s offered", mega(knee))?;
            if let Some(step) = knee_step(run) {
                write!(s, " (p99 to ack {} ms)", ms(step.latency_us.p99))?;
            }
            match reason {
                Some(reason) => writeln!(s, "; the step above failed because {reason}")?,
                None => writeln!(s, "; no step above it failed")?,
            }
        }
        None => match reason {
            Some(reason) => writeln!(s, "knee: no step passed; the lowest step failed because {reason}")?,
            None => writeln!(s, "knee: no step passed")?,
        },
    }
    writeln!(s)?;
    match &run.first_moved {
        Some(f) => writeln!(
            s,
            "first metric to move: {} at step {} ({} M events/s offered): {} -> {}",
            md(&f.metric),
            f.step,
            mega(f.offered_events_per_s),
            plain(f.from),
            plain(f.to)
        ),
        None => writeln!(s, "first metric to move: none detected"),
    }?;
    trials_section(s, run)?;
    super::fanout::markdown(s, run)
}

/// Where each step's p50 and p99 go (`LatencyBreakdown`): the generator's
/// send lag, each server stage's share, the client and network's rest.
/// Nothing when no step has the server's stage metrics.
fn breakdown_section(s: &mut String, run: &ModeRun) -> fmt::Result {
    let stages: Vec<&str> = super::scrape::STAGES
        .iter()
        .copied()
        .filter(|st| {
            run.steps.iter().flat_map(|x| &x.latency_breakdown).any(|b| b.stages.iter().any(|v| v.stage == *st))
        })
        .collect();
    if stages.is_empty() {
        return Ok(());
    }
    writeln!(s)?;
    writeln!(
        s,
        "Where the latency goes, ms: each server stage's share of the percentile (that stage's percentile from the \
         frame's read, less the stage before's), from the server's fine histograms over the step; the rest is the \
         client and the network. Percentiles of parts do not add up exactly to the whole's."
    )?;
    writeln!(s)?;
    write!(s, "| step | percentile | client | send lag |")?;
    for st in &stages {
        write!(s, " {st} |")?;
    }
    writeln!(s, " server | client+network |")?;
    write!(s, "|---:|:---:|---:|---:|")?;
    for _ in &stages {
        write!(s, "---:|")?;
    }
    writeln!(s, "---:|---:|")?;
    for step in &run.steps {
        for b in &step.latency_breakdown {
            write!(s, "| {} | {} | {} | {} |", step.step, b.percentile, ms(b.client_us), ms(b.send_lag_us))?;
            for st in &stages {
                let share = b.stages.iter().find(|v| v.stage == *st);
                write!(s, " {} |", share.map_or_else(|| "-".to_string(), |v| num(v.us / 1e3, 3)))?;
            }
            writeln!(s, " {} | {} |", num(b.server_us / 1e3, 3), num(b.rest_us / 1e3, 3))?;
        }
    }
    legend(s, BREAKDOWN_LEGEND)
}

/// How the steps were judged, the warm-up, and each failing step's trials
/// with what their tails are put down to.
fn trials_section(s: &mut String, run: &ModeRun) -> fmt::Result {
    writeln!(s)?;
    writeln!(s, "Steps judged on: {}.", md(&run.judge))?;
    if let Some(w) = &run.warmup {
        writeln!(
            s,
            "Warm-up (not counted): {} s at {} M events/s offered, {} achieved, p99 to ack {} ms, longest machine stall {} ms.",
            plain(w.seconds),
            mega(w.offered_events_per_s),
            mega(w.achieved_events_per_s),
            ms(w.latency_us.p99),
            ms(w.machine_stalls.max_us)
        )?;
    }
    for step in run.steps.iter().filter(|step| !step.passed) {
        writeln!(s)?;
        writeln!(
            s,
            "Step {} ({} M events/s offered) failed: {}.",
            step.step,
            mega(step.offered_events_per_s),
            step.failed_because.as_deref().map_or_else(|| "-".to_string(), md)
        )?;
        if let Some(t) = &step.tail_cause {
            writeln!(s, "Its tail: {}.", md(t))?;
        }
        if !step.trials.is_empty() {
            writeln!(s)?;
            writeln!(
                s,
                "| trial | achieved M/s | p50 ack ms | p99 ack ms | max ack ms | p99 send lag ms | pacer stall max ms \
                 | machine stall max ms | machine stalls | machine lost ms | passed | tail |"
            )?;
            writeln!(s, "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|:---:|---|")?;
            for t in &step.trials {
                writeln!(
                    s,
                    "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                    t.trial,
                    mega(t.achieved_events_per_s),
                    ms(t.latency_us.p50),
                    ms(t.latency_us.p99),
                    ms(t.latency_us.max),
                    ms(t.send_lag_us.p99),
                    ms(t.pacer_stall_max_us),
                    ms(t.machine_stalls.max_us),
                    t.machine_stalls.count,
                    ms(t.machine_stalls.lost_us),
                    if t.passed { "yes" } else { "no" },
                    t.tail_cause.as_deref().map_or_else(|| "-".to_string(), md)
                )?;
            }
            legend(s, TRIALS_LEGEND)?;
        }
    }
    Ok(())
}

#[cfg(test)]
pub(super) mod tests {
    use super::super::model::{FirstMoved, LatencyBreakdown, LatencyUs, Ratio, ServerStep, StageLatency};
    use super::*;
    use crate::dev::TempDir;

    /// A directory of its own under the temp dir, removed on drop.
    pub(in super::super) fn step(step: u32, offered: f64, achieved: f64, p99_us: u64, passed: bool) -> StepReport {
        StepReport {
            step,
            offered_events_per_s: offered,
            achieved_events_per_s: achieved,
            seconds: 5.0,
            events_offered: (offered * 5.0) as u64,
            events_sent: (achieved * 5.0) as u64,
            events_acked: (achieved * 5.0) as u64,
            admitted_latency_us: LatencyUs::default(),
            latency_us: LatencyUs {
                p50: p99_us / 4,
                p99: p99_us,
                p999: p99_us.saturating_mul(2),
                max: p99_us.saturating_mul(3),
            },
            update_latency_us: step.is_multiple_of(2).then_some(LatencyUs {
                p50: 900,
                p99: 2500,
                p999: 4000,
                max: 9000,
            }),
            send_lag_us: LatencyUs { p50: 100, p99: 400, p999: 800, max: 900 },
            updates_measured: 100,
            update_gaps: 0,
            events_refused: 0,
            failed_because: (!passed).then(|| "p99 42.000 ms > SLO 10 ms".to_string()),
            passed,
            client_cpu_cores: 0.8,
            pacer_stall_max_us: u64::from(step) * 3000,
            pacer_stalls: u64::from(step >= 2),
            server: (step != 1).then(|| ServerStep {
                cpu_cores: 1.5,
                queue_depth_events: f64::from(step) * 10.0,
                batch_events_mean: 64.0,
                polls_per_event: 0.02,
                wakeups_per_event: 0.01,
                worker_busy_ratio: 0.4,
                schedule_latency_p99_us: (step > 2).then_some(35.0),
                busy_replies: 0.0,
                ingest_to_ack_p99_us: Some(1048.576),
                fsync_max_us: None,
                stages: Vec::new(),
                nodes: Vec::new(),
            }),
            latency_breakdown: Vec::new(),
            busy_replies_per_s: None,
            machine_stalls: Default::default(),
            tail_cause: None,
            trials: Vec::new(),
            fanout: None,
        }
    }

    pub(in super::super) fn run(mode: &str, steps: Vec<StepReport>) -> ModeRun {
        let knee = steps.iter().rev().find(|s| s.passed);
        ModeRun {
            mode: mode.to_string(),
            workload: "treasure-hunt".to_string(),
            arrivals: "constant".to_string(),
            connections: 64,
            batch_events: 4096,
            unacked_events: 8192,
            slo_p99_ms: 10.0,
            knee_events_per_s: knee.map(|k| k.achieved_events_per_s),
            knee_offered_events_per_s: knee.map(|k| k.offered_events_per_s),
            knee_reason: steps.iter().any(|s| !s.passed).then(|| "p99 42.000 ms > SLO 10 ms".to_string()),
            first_moved: knee.map(|k| FirstMoved {
                metric: "queue_depth_events".to_string(),
                step: k.step,
                offered_events_per_s: k.offered_events_per_s,
                from: 0.0,
                to: 1234.5,
            }),
            overload: None,
            steps,
            trials_per_step: 1,
            judge: "one run".to_string(),
            warmup: None,
        }
    }

    fn sharded() -> ModeRun {
        let offered = [0.5e6, 1e6, 2e6, 3e6, 4e6, 6e6, 8e6, 10e6, 12e6, 14e6];
        let steps = offered
            .iter()
            .enumerate()
            .map(|(i, &o)| {
                let last = i == offered.len() - 1;
                step(
                    i as u32,
                    o,
                    if last { 12.4e6 } else { o * 0.999 },
                    if last { 42_000 } else { 800 + i as u64 * 300 },
                    !last,
                )
            })
            .collect();
        run("sharded", steps)
    }

    fn task_per_event() -> ModeRun {
        let offered = [0.1e6, 0.2e6, 0.3e6, 0.4e6, 0.5e6];
        let steps = offered
            .iter()
            .enumerate()
            .map(|(i, &o)| {
                let failed = i >= 3;
                step(
                    i as u32,
                    o,
                    if failed { 0.31e6 } else { o * 0.998 },
                    if failed { 250_000 } else { 2_000 },
                    !failed,
                )
            })
            .collect();
        run("task-per-event", steps)
    }

    fn comparison(runs: &[ModeRun]) -> Comparison {
        Comparison {
            workload: "treasure-hunt".to_string(),
            slo_p99_ms: 10.0,
            runs: runs.to_vec(),
            ratios: runs[1..]
                .iter()
                .map(|r| Ratio {
                    modes: format!("{} / {}", runs[0].mode, r.mode),
                    knee_ratio: Some(runs[0].knee_events_per_s.unwrap() / r.knee_events_per_s.unwrap()),
                })
                .collect(),
        }
    }

    /// A tiny well-formedness check: tags balance (`<a>` closed by `</a>`
    /// or `/>`), attribute values are quoted and hold no `<`, every `&`
    /// starts an entity, and there is one root element.
    fn check_xml(text: &str) -> Result<(), String> {
        fn check_amp(text: &str, at: usize) -> Result<(), String> {
            let rest = &text[at..];
            let ok = ["&amp;", "&lt;", "&gt;", "&quot;", "&apos;"].iter().any(|e| rest.starts_with(e))
                || rest.strip_prefix("&#").and_then(|r| r.split_once(';')).is_some_and(|(digits, _)| {
                    !digits.is_empty()
                        && (digits.bytes().all(|b| b.is_ascii_digit())
                            || digits
                                .strip_prefix('x')
                                .is_some_and(|h| !h.is_empty() && h.bytes().all(|b| b.is_ascii_hexdigit())))
                });
            if ok { Ok(()) } else { Err(format!("raw & at byte {at}")) }
        }
        let bytes = text.as_bytes();
        let mut stack: Vec<&str> = Vec::new();
        let mut roots = 0;
        let mut i = 0;
        while i < bytes.len() {
            match bytes[i] {
                b'&' => {
                    check_amp(text, i)?;
                    i += 1;
                }
                b'<' if text[i..].starts_with("</") => {
                    let end = text[i..].find('>').ok_or("unterminated end tag")? + i;
                    let name = text[i + 2..end].trim();
                    match stack.pop() {
                        Some(open) if open == name => {}
                        other => return Err(format!("</{name}> closes {other:?}")),
                    }
                    i = end + 1;
                }
                b'<' => {
                    let name_end = text[i + 1..]
                        .find(|c: char| c.is_whitespace() || c == '/' || c == '>')
                        .ok_or("unterminated tag")?
                        + i
                        + 1;
                    let name = &text[i + 1..name_end];
                    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == ':') {
                        return Err(format!("bad tag name {name:?} at byte {i}"));
                    }
                    // Attributes: name="value" pairs up to > or />.
                    let mut j = name_end;
                    let mut quote = None;
                    let self_closing = loop {
                        let Some(&b) = bytes.get(j) else { return Err(format!("unterminated <{name}")) };
                        match (quote, b) {
                            (Some(q), b) if b == q => quote = None,
                            (Some(_), b'<') => return Err(format!("< in an attribute of <{name}>")),
                            (Some(_), b'&') => check_amp(text, j)?,
                            (Some(_), _) => {}
                            (None, b'"' | b'\'') => {
                                if bytes[j - 1] != b'=' {
                                    return Err(format!("stray quote in <{name}>"));
                                }
                                quote = Some(b);
                            }
                            (None, b'>') => break false,
                            (None, b'/') if bytes.get(j + 1) == Some(&b'>') => {
                                j += 1;
                                break true;
                            }
                            (None, b'<' | b'&' | b'/') => return Err(format!("bad character in <{name}>")),
                            (None, _) => {}
                        }
                        j += 1;
                    };
                    if stack.is_empty() {
                        roots += 1;
                    }
                    if !self_closing {
                        stack.push(name);
                    }
                    i = j + 1;
                }
                b'>' => return Err(format!("raw > at byte {i}")),
                _ => i += 1,
            }
        }
        if let Some(open) = stack.last() {
            return Err(format!("<{open}> never closed"));
        }
        if roots != 1 {
            return Err(format!("{roots} root elements"));
        }
        Ok(())
    }

    /// The opening tags of `svg` that start with `start` (`<line class="mark"`).
    fn tags<'a>(svg: &'a str, start: &str) -> Vec<&'a str> {
        svg.match_indices(start).map(|(i, _)| &svg[i..i + svg[i..].find('>').expect("tag ends")]).collect()
    }

    /// A number-valued attribute of a tag.
    fn attr(tag: &str, name: &str) -> f64 {
        let at = tag.find(&format!(" {name}=\"")).unwrap_or_else(|| panic!("{name} in {tag}")) + name.len() + 3;
        tag[at..at + tag[at..].find('"').unwrap()].parse().unwrap_or_else(|e| panic!("{name} in {tag}: {e}"))
    }

    /// The centre of the marker of `mode`'s step `step`.
    fn marker(svg: &str, mode: &str, step: u32) -> (f64, f64) {
        let title = format!("<title>{mode} step {step}: ");
        let at = svg.find(&title).unwrap_or_else(|| panic!("{title} in\n{svg}"));
        let circle = &svg[svg[..at].rfind("<circle").unwrap()..at];
        (attr(circle, "cx"), attr(circle, "cy"))
    }

    #[test]
    fn the_charts_mark_the_knee_and_cross_the_steps_that_failed_on_latency() {
        let tmp = TempDir::new("report-marks");
        let runs = [sharded(), task_per_event()];
        let written = write(&tmp.0, &runs, Some(&comparison(&runs)), "trove bench --ramp").unwrap();
        for path in &written[..2] {
            let svg = read(path);
            // A dotted line through each mode's knee step (sharded: step 8,
            // task-per-event: step 2), labelled.
            let marks = tags(&svg, r#"<line class="mark""#);
            assert_eq!(marks.len(), 2, "{svg}");
            for (mark, (mode, step)) in marks.iter().zip([("sharded", 8), ("task-per-event", 2)]) {
                let (cx, _) = marker(&svg, mode, step);
                assert!((attr(mark, "x1") - cx).abs() < 0.05 && attr(mark, "x1") == attr(mark, "x2"), "{mark}");
                assert!(attr(mark, "y1") < attr(mark, "y2"), "{mark}");
            }
            let labels: Vec<&str> = svg
                .match_indices(r#"<text class="mark""#)
                .map(|(i, _)| {
                    let text = &svg[i..];
                    &text[text.find('>').unwrap() + 1..text.find("</text>").unwrap()]
                })
                .collect();
            assert_eq!(labels.len(), 2);
            assert!(
                labels[0].starts_with("knee sharded ") && labels[1].starts_with("knee task-per-event "),
                "{labels:?}"
            );
            // The steps that failed on p99 are crossed through their markers:
            // sharded's step 9, task-per-event's 3 and 4.
            let crosses = tags(&svg, r#"<path class="flagged""#);
            assert_eq!(crosses.len(), 3, "{svg}");
            for (cross, (mode, step)) in
                crosses.iter().zip([("sharded", 9), ("task-per-event", 3), ("task-per-event", 4)])
            {
                let (cx, cy) = marker(&svg, mode, step);
                assert!(
                    cross.contains(&format!("d=\"M{:.1} {:.1}L{:.1} {:.1}", cx - 6.0, cy - 6.0, cx + 6.0, cy + 6.0)),
                    "{cross}"
                );
            }
            assert!(svg.contains(">knee (dotted)</text>") && svg.contains(">crossed: failed on p99</text>"), "legend");
        }
        // A step that failed only on its rate is hollow, not crossed.
        let mut behind = step(1, 2e6, 1e6, 500, false);
        behind.failed_because = Some("achieved 1.00M/s fell behind offered 2.00M/s".to_string());
        let r = run("sharded", vec![step(0, 1e6, 1e6, 500, true), behind]);
        let written = write(&tmp.0.join("behind"), &[r], None, "trove bench --ramp").unwrap();
        let svg = read(&written[0]);
        assert!(tags(&svg, r#"<path class="flagged""#).is_empty() && svg.contains("hollow marker"), "{svg}");
        assert_eq!(tags(&svg, r#"<line class="mark""#).len(), 1);

        let report = read(&written[2]);
        for legend in [STEPS_LEGEND, "dotted vertical line marks each mode's knee"] {
            assert!(report.contains(legend), "{legend} in {report}");
        }
    }

    #[test]
    fn every_table_of_the_report_has_its_legend() {
        let tmp = TempDir::new("report-legends");
        let mut runs = [sharded(), task_per_event()];
        let nine = runs[0].steps.iter_mut().find(|s| s.step == 9).unwrap();
        let stages = vec![StageLatency { stage: "applied".into(), events: 10, p50_us: 200.0, p99_us: 900.0 }];
        nine.server.as_mut().unwrap().stages = stages;
        nine.latency_breakdown = LatencyBreakdown::of_step(&nine.latency_us, &nine.send_lag_us, nine.server.as_ref());
        nine.trials = vec![super::super::model::TrialReport {
            trial: 0,
            scheduled_events_per_s: 14e6,
            achieved_events_per_s: 12e6,
            latency_us: LatencyUs::default(),
            send_lag_us: LatencyUs::default(),
            admitted_latency_us: LatencyUs::default(),
            pacer_stall_max_us: 0,
            machine_stalls: Default::default(),
            client_cpu_cores: 0.3,
            server_cpu_cores: None,
            passed: false,
            failed_because: None,
            tail_cause: None,
        }];
        let written = write(&tmp.0, &runs, Some(&comparison(&runs)), "trove bench --ramp").unwrap();
        let report = read(&written[2]);
        // Each table is followed by its legend: the first line after the
        // table's last row.
        for (header, legend) in [
            ("| mode | knee M/s |", SUMMARY_LEGEND),
            ("| step | offered M/s |", STEPS_LEGEND),
            ("| step | percentile |", BREAKDOWN_LEGEND),
            ("| trial | achieved M/s |", TRIALS_LEGEND),
        ] {
            let at = report.find(header).unwrap_or_else(|| panic!("{header} in {report}"));
            let after: Vec<&str> = report[at..].lines().skip_while(|l| l.starts_with('|')).collect();
            assert_eq!((after[0], after[1]), ("", legend), "after {header}");
        }
    }

    fn read(path: &Path) -> String {
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
    }

    #[test]
    fn the_checker_catches_bad_xml() {
        assert!(check_xml("<svg><g></g><line/></svg>").is_ok());
        assert!(check_xml(r#"<svg a="x&amp;y"><text>a &lt; b &#8230;</text></svg>"#).is_ok());
        assert!(check_xml("<svg><g></svg>").is_err());
        assert!(check_xml("<svg><g></g>").is_err());
        assert!(check_xml("<svg>a & b</svg>").is_err());
        assert!(check_xml(r#"<svg a="<"/>"#).is_err());
        assert!(check_xml(r#"<svg a="&"/>"#).is_err());
        assert!(check_xml("<svg/><svg/>").is_err());
        assert!(check_xml("<svg>a > b</svg>").is_err());
    }

    #[test]
    fn writes_charts_and_report_for_two_modes() {
        let tmp = TempDir::new("report-two-modes");
        let mut runs = [sharded(), task_per_event()];
        // One step with the server's stages (in memory: no written, synced).
        let nine = runs[0].steps.iter_mut().find(|s| s.step == 9).unwrap();
        let stages: Vec<StageLatency> =
            [("decoded", 15.0), ("admitted", 40.0), ("applied", 900.0), ("acknowledged", 1_000.0)]
                .iter()
                .map(|&(stage, p99_us)| StageLatency { stage: stage.into(), events: 10, p50_us: p99_us / 4.0, p99_us })
                .collect();
        nine.server.as_mut().unwrap().stages = stages;
        nine.latency_breakdown = LatencyBreakdown::of_step(&nine.latency_us, &nine.send_lag_us, nine.server.as_ref());
        let comparison = comparison(&runs);
        let command = "trove bench load --modes sharded,task-per-event --report out";
        let written = write(&tmp.0, &runs, Some(&comparison), command).unwrap();
        let names: Vec<_> = written.iter().map(|p| p.file_name().unwrap().to_str().unwrap()).collect();
        assert_eq!(names, ["achieved.svg", "p99.svg", "report.md"]);
        for path in &written {
            assert!(path.is_file(), "{} missing", path.display());
            assert!(path.starts_with(&tmp.0));
        }

        for path in &written[..2] {
            let svg = read(path);
            check_xml(&svg).unwrap_or_else(|e| panic!("{}: {e}\n{svg}", path.display()));
            assert!(svg.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 720 420\""));
            assert_eq!(svg.matches("<polyline").count(), 2, "{}", path.display());
            assert!(svg.contains(">sharded</text>") && svg.contains(">task-per-event</text>"), "legend");
            assert!(svg.contains(r##"stroke="#1f77b4""##) && svg.contains(r##"stroke="#d62728""##), "palette");
            // One marker per step in each chart, plus one per legend entry.
            assert_eq!(svg.matches("<circle").count(), 15 + 2);
            assert!(svg.contains("stroke-dasharray"), "reference line");
            assert!(!svg.contains("NaN") && !svg.contains("inf"));
        }
        let achieved = read(&written[0]);
        // 0.1M to 14M: decades labelled, x and y.
        for tick in [">1M</text>", ">10M</text>", ">100k</text>"] {
            assert_eq!(achieved.matches(tick).count(), 2, "{tick}");
        }
        assert!(achieved.contains("y = x"));
        let p99 = read(&written[1]);
        assert!(p99.contains(">SLO 10 ms</text>"));
        assert!(p99.contains("SLO: p99"));

        let report = read(&written[2]);
        assert!(report.starts_with("# trove bench report"));
        assert!(report.contains(&format!("```sh\n{command}\n```")));
        // What each producer kept in flight is part of the setting.
        assert!(report.contains("64 connections (each with batches of at most 4096 events and 8192 unanswered)"));
        let json = serde_json::to_value(&runs[0]).unwrap();
        assert_eq!((json["batch_events"].as_u64(), json["unacked_events"].as_u64()), (Some(4096), Some(8192)));
        assert!(report.contains("![Achieved against offered events/s, per mode](achieved.svg)"));
        assert!(report.contains("](p99.svg)"));
        assert!(report.contains(
            "knee: 11.988 M events/s achieved at 12.000 M events/s offered (p99 to ack 3.200 ms); \
             the step above failed because p99 42.000 ms > SLO 10 ms"
        ));
        assert!(report.contains("knee: 0.299 M events/s achieved at 0.300 M events/s offered"));
        assert!(
            report
                .contains("first metric to move: queue_depth_events at step 8 (12.000 M events/s offered): 0 -> 1234")
        );
        assert!(report.contains("## sharded") && report.contains("## task-per-event") && report.contains("## Summary"));
        assert!(report.contains("| sharded | 11.988 | 3.200 | 1.00x |"));
        assert!(report.contains("| task-per-event | 0.299 | 2.000 | 40.0x |"));
        assert!(report.contains("- sharded / task-per-event: 40.0x"));
        // A step row: without a server scrape, with one; failed.
        assert!(report.contains(
            "| 1 | 1.000 | 0.999 | 0.275 | 1.100 | 2.200 | - | 0.400 | 3.000 | 0.80 | - | - | - | - | - | - | - | - | yes |"
        ));
        assert!(report.contains("| 9 | 14.000 | 12.400 | 10.500 | 42.000 | 84.000 | - | 0.400 | 27.000 | 0.80 | 1.50 | 1.05 | 90 | 64.0 | 0.02 | 0.01 | 0.40 | 35.0 | no |"));
        // Where step 9's latency went: only the stages it has.
        assert!(report.contains("| step | percentile | client | send lag | decoded | admitted | applied | acknowledged | server | client+network |"), "{report}");
        assert!(
            report.contains("| 9 | p50 | 10.500 | 0.100 | 0.004 | 0.006 | 0.215 | 0.025 | 0.250 | 10.150 |"),
            "{report}"
        );
        assert!(
            report.contains("| 9 | p99 | 42.000 | 0.400 | 0.015 | 0.025 | 0.860 | 0.100 | 1.000 | 40.600 |"),
            "{report}"
        );
        assert_eq!(report.matches("Where the latency goes").count(), 1, "only the run with stages");
        // 10 + 5 step rows, each with 19 columns.
        let rows: Vec<_> = report.lines().filter(|l| l.starts_with("| ") && l.matches(" | ").count() == 18).collect();
        assert_eq!(rows.len(), 2 + 15, "{rows:#?}");

        // Deterministic.
        let again = TempDir::new("report-two-modes-again");
        let written_again = write(&again.0, &runs, Some(&comparison), command).unwrap();
        for (a, b) in written.iter().zip(&written_again) {
            assert_eq!(read(a), read(b));
        }
    }

    #[test]
    fn the_report_states_the_rule_the_warm_up_and_each_failing_steps_trials() {
        use super::super::model::{MachineStalls, TrialReport, WarmupReport};
        let mut failing = step(1, 2e6, 2e6, 12_600, false);
        let lat = LatencyUs { p50: 900, p99: 12_600, p999: 13_000, max: 14_000 };
        let stall = MachineStalls { max_us: 13_300, count: 1, lost_us: 13_300, host: None };
        let cause = "the machine: p99 12.6 ms; the machine stopped for 13.3 ms during this trial";
        failing.tail_cause = Some(cause.to_string());
        failing.trials = (0..3)
            .map(|trial| TrialReport {
                trial,
                scheduled_events_per_s: 2e6,
                achieved_events_per_s: 2e6,
                latency_us: lat,
                send_lag_us: LatencyUs::default(),
                admitted_latency_us: lat,
                pacer_stall_max_us: 200,
                machine_stalls: stall,
                client_cpu_cores: 0.3,
                server_cpu_cores: Some(0.5),
                passed: false,
                failed_because: Some("p99".to_string()),
                tail_cause: Some(cause.to_string()),
            })
            .collect();
        let mut r = run("sharded", vec![step(0, 1e6, 1e6, 2_000, true), failing]);
        r.judge = "median of 3 trials of 1 s each".to_string();
        r.warmup = Some(WarmupReport {
            seconds: 2.0,
            offered_events_per_s: 1e6,
            achieved_events_per_s: 0.9e6,
            latency_us: lat,
            machine_stalls: stall,
        });
        let tmp = TempDir::new("report-trials");
        let written = write(&tmp.0, &[r], None, "trove bench --ramp").unwrap();
        let report = read(&written[2]);
        assert!(report.contains("Steps judged on: median of 3 trials of 1 s each."), "{report}");
        assert!(report.contains("Warm-up (not counted): 2 s at 1.000 M events/s offered"), "{report}");
        assert!(report.contains("Step 1 (2.000 M events/s offered) failed: p99 42.000 ms"), "{report}");
        assert!(report.contains(&format!("Its tail: {cause}.")), "{report}");
        assert!(
            report.contains(
                "| 2 | 2.000 | 0.900 | 12.600 | 14.000 | 0.000 | 0.200 | 13.300 | 1 | 13.300 | no | the machine"
            ),
            "{report}"
        );
        // The passing step has no such section.
        assert!(!report.contains("Step 0 ("), "{report}");
    }

    #[test]
    fn degenerate_inputs_do_not_panic() {
        let tmp = TempDir::new("report-degenerate");
        let mut weird = run("a<b & \"c\" | d\n", vec![step(0, 1e6, 1e6, 500, true)]);
        weird.workload = "w&<>".to_string();
        let mut bad_values = run(
            "bad-values",
            vec![
                step(0, 0.0, 0.0, 0, false),
                step(1, -5.0, f64::NAN, 100, false),
                step(2, f64::INFINITY, 1e6, 100, false),
                step(3, f64::NAN, -1.0, u64::MAX, false),
            ],
        );
        bad_values.slo_p99_ms = f64::NAN;
        let mut all_equal = run("all-equal", (0..4).map(|i| step(i, 2e6, 2e6, 1000, true)).collect::<Vec<_>>());
        all_equal.slo_p99_ms = 1.0;
        let cases: Vec<(&str, Vec<ModeRun>)> = vec![
            ("none", vec![]),
            ("no-steps", vec![run("empty", vec![])]),
            ("one-step", vec![run("one", vec![step(0, 3e5, 3e5, 2000, true)])]),
            ("one-failed-step", vec![run("one", vec![step(0, 3e5, 1e5, 90_000, false)])]),
            ("bad-values", vec![bad_values]),
            ("all-equal", vec![all_equal]),
            ("escaping", vec![weird]),
            (
                "tiny-and-huge",
                vec![run("wide", vec![step(0, 1e-150, 1e-150, 1, true), step(1, 1e150, 1e150, 1, true)])],
            ),
            ("many-modes", (0..13).map(|i| run(&format!("mode-{i}-with-a-rather-long-name"), vec![])).collect()),
        ];
        for (name, runs) in cases {
            let dir = tmp.0.join(name);
            let comparison =
                Comparison { workload: String::new(), slo_p99_ms: 0.0, runs: runs.clone(), ratios: vec![] };
            for comparison in [None, Some(&comparison)] {
                let written = write(&dir, &runs, comparison, "trove ```bench``` & <x>").unwrap();
                for path in &written[..2] {
                    let svg = read(path);
                    check_xml(&svg).unwrap_or_else(|e| panic!("{name} {}: {e}\n{svg}", path.display()));
                    assert_eq!(svg.matches("<polyline").count(), runs.len(), "{name}");
                    assert!(!svg.contains("NaN") && !svg.contains("inf"), "{name}\n{svg}");
                }
                let report = read(&written[2]);
                assert!(report.contains("````sh\ntrove ```bench``` & <x>\n````"), "{name}");
            }
        }

        let report = read(&tmp.0.join("one-failed-step/report.md"));
        assert!(report.contains("knee: no step passed; the lowest step failed because"));
        let report = read(&tmp.0.join("no-steps/report.md"));
        assert!(report.contains("No steps ran.") && report.contains("knee: no step passed"));
        assert!(read(&tmp.0.join("none/report.md")).contains("No runs."));
        assert!(read(&tmp.0.join("none/achieved.svg")).contains(">no data</text>"));
        let escaped = read(&tmp.0.join("escaping/achieved.svg"));
        assert!(escaped.contains("a&lt;b &amp; &quot;c&quot; | d"));
        assert!(read(&tmp.0.join("escaping/report.md")).contains("## a&lt;b &amp; \"c\" \\| d"));
        let p99 = read(&tmp.0.join("all-equal/p99.svg"));
        assert!(p99.contains(">SLO 1 ms</text>"));
    }

    #[test]
    fn report_numbers_are_exact_or_marked() {
        assert_eq!(ms(1_234_567), "1234.567");
        assert_eq!(num(-0.0, 2), "0.00");
        assert_eq!(setting(10.0), "10");
        assert_eq!(setting(2.5), "2.5");
        assert_eq!(setting(f64::NAN), "-");
    }
}
