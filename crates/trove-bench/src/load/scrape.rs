//! Scraping the server's `/metrics` (`crate::http`, `crate::prometheus`),
//! and the per-step figures derived from two scrapes.

use std::net::SocketAddr;
use std::time::Duration;

use super::model::{ServerStep, StageLatency};
use crate::http;
pub use crate::prometheus::{Scrape, parse};

/// GET /metrics from the control plane at `addr`.
pub fn get(addr: SocketAddr, timeout: Duration) -> Result<Scrape, String> {
    let reply = http::get(addr, "/metrics", timeout).map_err(|e| e.to_string())?;
    if reply.status != 200 {
        return Err(format!("http://{addr}/metrics answered {}", reply.status));
    }
    Ok(parse(&reply.body))
}

/// The server's stages, in path order (`trove_stage_seconds{stage}`).
pub const STAGES: [&str; 6] = ["decoded", "admitted", "applied", "written", "synced", "acknowledged"];

/// Per stage the step passed (events counted in it): the p50 and p99 of
/// the time from a frame's read to that stage, from the fine buckets
/// gained between the scrapes (upper bucket bounds: 8 us up to 524 us,
/// 3.1% above).
pub fn stage_latencies(a: &Scrape, b: &Scrape) -> Vec<StageLatency> {
    STAGES
        .iter()
        .filter_map(|&stage| {
            let with = format!("stage=\"{stage}\"");
            let step = b.fine("trove_stage_seconds", &[&with]).since(&a.fine("trove_stage_seconds", &[&with]));
            let us = |q: f64| step.quantile_upper_bound(q) as f64 / 1e3;
            (step.count() > 0).then(|| StageLatency {
                stage: stage.into(),
                events: step.count(),
                p50_us: us(0.5),
                p99_us: us(0.99),
            })
        })
        .collect()
}

/// The runtimes whose workers carry the data path: the I/O runtime, the
/// WebSocket listener's (its subscribers' writes; absent with `--ws off`)
/// and, in the per-event modes, the engine's. The server's CPU
/// (`process_cpu_seconds_total`, from /proc) is the whole process's, so
/// it counts every runtime's threads already.
const HOT_RUNTIMES: [&str; 3] = ["runtime=\"data\"", "runtime=\"ws\"", "runtime=\"engine\""];

/// The step's server figures from scrapes at its start and end, `seconds` apart.
pub fn server_step(a: &Scrape, b: &Scrape, seconds: f64) -> ServerStep {
    let d = |name: &str, with: &[&str]| (b.sum(name, with) - a.sum(name, with)).max(0.0);
    let hot = |name: &str| HOT_RUNTIMES.iter().map(|r| d(name, &[r])).sum::<f64>();
    let applied = d("trove_events_applied_total", &[]).max(1.0);
    let workers: f64 = HOT_RUNTIMES.iter().map(|r| b.sum("tokio_workers", &[r])).sum();
    let batches = d("trove_shard_batch_events_count", &[]);
    // Each park and each unpark counts once in park_unparks; a wakeup is an unpark.
    let wakeups = hot("tokio_worker_park_unparks_total") / 2.0 + d("trove_shard_wakeups_total", &[]);
    ServerStep {
        cpu_cores: d("process_cpu_seconds_total", &[]) / seconds.max(1e-9),
        queue_depth_events: b.sum("trove_shard_queue_depth_events", &[]),
        batch_events_mean: if batches > 0.0 { d("trove_shard_batch_events_sum", &[]) / batches } else { 0.0 },
        polls_per_event: hot("tokio_worker_polls_total") / applied,
        wakeups_per_event: wakeups / applied,
        worker_busy_ratio: if workers > 0.0 {
            hot("tokio_worker_busy_seconds_total") / (seconds * workers)
        } else {
            0.0
        },
        schedule_latency_p99_us: p99_us(a, b, "tokio_schedule_latency_seconds", &HOT_RUNTIMES),
        ingest_to_ack_p99_us: p99_us(a, b, "trove_ingest_to_acknowledged_seconds", &[""]),
        busy_replies: d("trove_busy_replies_total", &[]),
        fsync_max_us: max_us(a, b, "trove_journal_fsync_seconds"),
        stages: stage_latencies(a, b),
        nodes: Vec::new(),
    }
}

/// The upper bound of the highest bucket of the histogram `name` (in
/// seconds, all series) that gained a count between the scrapes,
/// microseconds; `None` if none did.
fn max_us(a: &Scrape, b: &Scrape, name: &str) -> Option<f64> {
    let delta = gained(a, b, name, &[""]);
    let total = delta.last()?.1;
    if total <= 0.0 {
        return None;
    }
    bound_us(&delta, total)
}

/// p99 of the counts histogram `name` (in seconds) gained between the
/// scrapes, over series whose labels contain one of `series` ("" for all).
fn p99_us(a: &Scrape, b: &Scrape, name: &str, series: &[&str]) -> Option<f64> {
    if !b.has(&format!("{name}_bucket")) {
        return None;
    }
    let delta = gained(a, b, name, series);
    let total = delta.last()?.1;
    if total <= 0.0 {
        return Some(0.0);
    }
    bound_us(&delta, total * 0.99)
}

/// Each bucket's cumulative count gained between the scrapes.
fn gained(a: &Scrape, b: &Scrape, name: &str, series: &[&str]) -> Vec<(f64, f64)> {
    let (before, after) = (a.buckets(name, series), b.buckets(name, series));
    after.iter().map(|&(le, c)| (le, c - before.iter().find(|(b, _)| *b == le).map_or(0.0, |x| x.1))).collect()
}

/// The upper bound of the first bucket holding `want` counts, in
/// microseconds; the last finite bound if that is +Inf.
fn bound_us(delta: &[(f64, f64)], want: f64) -> Option<f64> {
    let (le, _) = delta.iter().find(|(_, c)| *c >= want)?;
    let le = if le.is_finite() { *le } else { delta.iter().rev().find(|(b, _)| b.is_finite()).map_or(0.0, |x| x.0) };
    Some(le * 1e6)
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "# HELP x y\n# TYPE trove_events_applied_total counter\ntrove_events_applied_total 1000\n\
process_cpu_seconds_total 1.5\n\
tokio_workers{runtime=\"data\"} 1\ntokio_workers{runtime=\"control\"} 1\n\
tokio_worker_polls_total{runtime=\"data\",worker=\"0\"} 10\n\
tokio_worker_polls_total{runtime=\"control\",worker=\"0\"} 99\n\
tokio_worker_busy_seconds_total{runtime=\"data\",worker=\"0\"} 0.5\n\
tokio_worker_park_unparks_total{runtime=\"data\",worker=\"0\"} 4\n\
trove_shard_wakeups_total{shard=\"0\"} 3\n\
trove_shard_batch_events_sum{shard=\"0\"} 100\ntrove_shard_batch_events_count{shard=\"0\"} 1\n\
trove_shard_queue_depth_events{shard=\"0\"} 7\n\
tokio_schedule_latency_seconds_bucket{runtime=\"data\",worker=\"0\",le=\"0.0001\"} 10\n\
tokio_schedule_latency_seconds_bucket{runtime=\"data\",worker=\"0\",le=\"0.001\"} 10\n\
tokio_schedule_latency_seconds_bucket{runtime=\"data\",worker=\"0\",le=\"+Inf\"} 10\n\
garbage line\n";

    const B: &str = "trove_events_applied_total 3000\nprocess_cpu_seconds_total 3.5\n\
tokio_workers{runtime=\"data\"} 1\n\
tokio_worker_polls_total{runtime=\"data\",worker=\"0\"} 410\n\
tokio_worker_polls_total{runtime=\"control\",worker=\"0\"} 1000\n\
tokio_worker_busy_seconds_total{runtime=\"data\",worker=\"0\"} 1.5\n\
tokio_worker_park_unparks_total{runtime=\"data\",worker=\"0\"} 204\n\
trove_shard_wakeups_total{shard=\"0\"} 103\n\
trove_shard_batch_events_sum{shard=\"0\"} 2100\ntrove_shard_batch_events_count{shard=\"0\"} 5\n\
trove_shard_queue_depth_events{shard=\"0\"} 9\n\
tokio_schedule_latency_seconds_bucket{runtime=\"data\",worker=\"0\",le=\"0.0001\"} 60\n\
tokio_schedule_latency_seconds_bucket{runtime=\"data\",worker=\"0\",le=\"0.001\"} 110\n\
tokio_schedule_latency_seconds_bucket{runtime=\"data\",worker=\"0\",le=\"+Inf\"} 110\n\
trove_journal_fsync_seconds_bucket{shard=\"0\",le=\"0.001\"} 5\n\
trove_journal_fsync_seconds_bucket{shard=\"0\",le=\"0.016\"} 6\n\
trove_journal_fsync_seconds_bucket{shard=\"0\",le=\"+Inf\"} 6\n";

    #[test]
    fn the_websocket_runtime_is_on_the_data_path() {
        let ws = |polls: u32, busy: f64| {
            format!(
                "tokio_workers{{runtime=\"ws\"}} 1\ntokio_worker_polls_total{{runtime=\"ws\",worker=\"0\"}} {polls}\n\
                 tokio_worker_busy_seconds_total{{runtime=\"ws\",worker=\"0\"}} {busy}\n"
            )
        };
        let (a, b) = (format!("{A}\n{}", ws(0, 0.0)), format!("{B}{}", ws(200, 1.0)));
        let s = server_step(&parse(&a), &parse(&b), 2.0);
        // The data runtime's 400 polls and the WebSocket runtime's 200.
        assert_eq!(s.polls_per_event, 600.0 / 2000.0);
        // One busy second on each of the two runtimes' one worker, in 2 s.
        assert_eq!(s.worker_busy_ratio, 0.5);
    }

    #[test]
    fn a_step_is_the_difference_of_two_scrapes() {
        let s = server_step(&parse(A), &parse(B), 2.0);
        assert_eq!(s.cpu_cores, 1.0);
        assert_eq!(s.queue_depth_events, 9.0);
        assert_eq!(s.batch_events_mean, 500.0);
        // The control runtime's polls are not the data path's.
        assert_eq!(s.polls_per_event, 400.0 / 2000.0);
        assert_eq!(s.wakeups_per_event, (100.0 + 100.0) / 2000.0);
        assert_eq!(s.worker_busy_ratio, 0.5);
        // 100 schedules in the step: 50 under 100 us, 50 under 1 ms.
        assert_eq!(s.schedule_latency_p99_us, Some(1000.0));
        // Five syncs under 1 ms, one under 16 ms; none before.
        assert_eq!(s.fsync_max_us, Some(16_000.0));
        // In memory: no journal histogram.
        assert_eq!(server_step(&parse(A), &parse(A), 1.0).fsync_max_us, None);
        let later = B.replace("le=\"0.001\"} 5", "le=\"0.001\"} 7").replace("} 6\n", "} 8\n");
        // Two more syncs, both under 1 ms: the step's longest is 1 ms.
        assert_eq!(server_step(&parse(B), &parse(&later), 1.0).fsync_max_us, Some(1000.0));
    }

    #[test]
    fn stage_percentiles_come_from_the_fine_buckets_gained_in_the_step() {
        let fine = |stage: &str, from_ns: u64, n: u64| {
            format!(
                "trove_latency_fine_total{{histogram=\"trove_stage_seconds\",stage=\"{stage}\",from_ns=\"{from_ns}\"}} {n}\n"
            )
        };
        // Before the step: 100 slow events that must not count.
        let a = parse(&(fine("applied", 4_980_736, 100) + &fine("acknowledged", 4_980_736, 100)));
        // The step: applied at 120 us (90) and 250 us (10); acknowledged
        // at 300 us (99) and 2 ms (1); nothing decoded; garbage skipped.
        let b = parse(
            &(fine("applied", 4_980_736, 100)
                + &fine("applied", 120_832, 90)
                + &fine("applied", 249_856, 10)
                + &fine("acknowledged", 4_980_736, 100)
                + &fine("acknowledged", 299_008, 99)
                + &fine("acknowledged", 1_998_848, 1)
                + "trove_latency_fine_total{histogram=\"trove_stage_seconds\",stage=\"applied\",from_ns=\"x\"} 5\n"
                + "trove_latency_fine_total{histogram=\"trove_stage_seconds\",stage=\"applied\",from_ns=\"7\"} -5\n"),
        );
        let s = stage_latencies(&a, &b);
        assert_eq!(s.iter().map(|s| s.stage.as_str()).collect::<Vec<_>>(), ["applied", "acknowledged"]);
        assert_eq!(s[0].events, 100);
        // Upper bucket bounds: within 10 us of the values.
        assert!((120.0..=125.0).contains(&s[0].p50_us), "{:?}", s[0]);
        assert!((250.0..=258.0).contains(&s[0].p99_us), "{:?}", s[0]);
        assert!((300.0..=310.0).contains(&s[1].p99_us), "{:?}", s[1]);
        // No fine buckets at all (an older server): no stages.
        assert!(stage_latencies(&parse(A), &parse(B)).is_empty());
    }
}
