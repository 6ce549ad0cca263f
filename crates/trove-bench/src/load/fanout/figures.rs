//! The fan-out figures as printed: the terminal summary's lines and
//! report.md's table.

use super::super::LatencyUs;
use super::super::model::ModeRun;
use super::FanoutStep;

pub(super) fn ms(us: u64) -> String {
    format!("{:.2}", us as f64 / 1e3)
}

/// A fleet thread this busy may itself hold the subscribers back.
pub const GENERATOR_BOUND_CORES: f64 = 0.9;

/// The step's busiest fleet thread was near a full core.
pub fn generator_bound(f: &FanoutStep) -> bool {
    f.generator_busiest_thread_cores >= GENERATOR_BOUND_CORES
}

pub(super) fn per_update(ns: Option<f64>) -> String {
    ns.map_or("-".into(), |v| format!("{v:.0}"))
}

/// The terminal summary's fan-out lines: one per step with subscribers.
pub fn summary(run: &ModeRun) -> String {
    let mut out = String::new();
    for step in &run.steps {
        let Some(f) = &step.fanout else { continue };
        let lat =
            f.latency_us.map_or("-".into(), |l| format!("p50 {} p99 {} max {} ms", ms(l.p50), ms(l.p99), ms(l.max)));
        out += &format!(
            "{} step {}: {} {} subscribers over {} hunts: {} updates/s ({}B/s), update {lat} \
             ({} timed, {} of them lower bounds; {} untimed, {} late), gaps {}; \
             server (all of it) {} ns and generator {} ns of CPU per update \
             (generator {:.2} cores, busiest thread {:.2}{})",
            run.mode,
            step.step,
            f.subscribers,
            f.transport,
            f.hunts_watched,
            crate::text::human(f.updates_per_s),
            crate::text::human(f.bytes_per_s),
            f.updates_timed,
            f.updates_lower_bound,
            f.updates_untimed,
            f.updates_late,
            f.gaps,
            per_update(f.server_cpu_ns_per_update),
            per_update(f.generator_cpu_ns_per_update),
            f.generator_cpu_cores,
            f.generator_busiest_thread_cores,
            if generator_bound(f) { ": GENERATOR-BOUND" } else { "" },
        );
        if f.slow_subscribers > 0 {
            out += &format!(
                "; {} slow: {} updates/s, gaps seen {}, server gaps {}",
                f.slow_subscribers,
                crate::text::human(f.slow_updates_per_s),
                f.slow_gaps,
                f.server_gaps.map_or("-".into(), |g| g.to_string())
            );
        }
        out += "\n";
    }
    out
}

/// report.md's fan-out table, for a run with subscribers.
pub fn markdown(s: &mut String, run: &ModeRun) -> std::fmt::Result {
    use std::fmt::Write;
    if run.steps.iter().all(|st| st.fanout.is_none()) {
        return Ok(());
    }
    writeln!(s)?;
    writeln!(s, "### Subscribers")?;
    writeln!(s)?;
    writeln!(
        s,
        "Updates delivered to the subscribers that keep up, their latency from each event's intended send time, \
         gaps, and the CPU per delivered update (fast and slow subscribers together) of the server (all of its \
         CPU, ingest included) and of the generator's subscriber threads. Lower bounds: updates read more than \
         the log's ring behind, in the latency as at least that late; untimed: after a gap, desynced or \
         reordered; late: read after their step was reported. A busiest fleet thread at {GENERATOR_BOUND_CORES} \
         cores or more may be what held the subscribers back."
    )?;
    writeln!(s)?;
    writeln!(
        s,
        "| step | subscribers | transport | hunts | updates M/s | MB/s | p50 ms | p99 ms | max ms | lower bounds \
         | untimed | late | gaps | slow | slow updates/s | slow gaps | server gaps | server ns/update \
         | generator ns/update | generator cores | busiest thread |"
    )?;
    writeln!(
        s,
        "|---:|---:|:---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    )?;
    for step in &run.steps {
        let Some(f) = &step.fanout else { continue };
        let l = |g: fn(&LatencyUs) -> u64| f.latency_us.as_ref().map_or("-".into(), |x| ms(g(x)));
        writeln!(
            s,
            "| {} | {} | {} | {} | {:.3} | {:.1} | {} | {} | {} | {} | {} | {} | {} | {} | {:.0} | {} | {} | {} | {} \
             | {:.2} | {:.2}{} |",
            step.step,
            f.subscribers,
            f.transport,
            f.hunts_watched,
            f.updates_per_s / 1e6,
            f.bytes_per_s / 1e6,
            l(|x| x.p50),
            l(|x| x.p99),
            l(|x| x.max),
            f.updates_lower_bound,
            f.updates_untimed,
            f.updates_late,
            f.gaps,
            f.slow_subscribers,
            f.slow_updates_per_s,
            f.slow_gaps,
            f.server_gaps.map_or("-".into(), |g| g.to_string()),
            per_update(f.server_cpu_ns_per_update),
            per_update(f.generator_cpu_ns_per_update),
            f.generator_cpu_cores,
            f.generator_busiest_thread_cores,
            if generator_bound(f) { " (bound?)" } else { "" },
        )?;
    }
    Ok(())
}
