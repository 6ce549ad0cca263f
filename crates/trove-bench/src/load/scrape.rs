//! Scraping the server's `/metrics` (Prometheus text format) over plain
//! HTTP/1.1, and the per-step figures derived from two scrapes.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use trove_shard::HistogramSnapshot;
use trove_shard::metrics::{BUCKETS, bucket_index};

use super::model::{ServerStep, StageLatency};

/// At most this much of a scrape is read (ours are tens of KiB).
const BODY_BYTES_MAX: u64 = 16 << 20;

/// One sample: name, labels as written (without braces), value.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: String,
    pub value: f64,
}

/// A parsed scrape.
#[derive(Clone, Debug, Default)]
pub struct Scrape {
    pub samples: Vec<Sample>,
}

/// GET /metrics from the control plane at `addr`.
pub fn get(addr: SocketAddr, timeout: Duration) -> Result<Scrape, String> {
    let mut s = TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("connecting to {addr}: {e}"))?;
    s.set_read_timeout(Some(timeout)).and_then(|()| s.set_write_timeout(Some(timeout))).map_err(|e| e.to_string())?;
    write!(s, "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")
        .map_err(|e| format!("GET http://{addr}/metrics: {e}"))?;
    let mut raw = Vec::new();
    s.take(BODY_BYTES_MAX).read_to_end(&mut raw).map_err(|e| format!("GET http://{addr}/metrics: {e}"))?;
    let text = String::from_utf8(raw).map_err(|_| format!("http://{addr}/metrics: not UTF-8"))?;
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(|| format!("http://{addr}/metrics: no HTTP header"))?;
    let status = head.lines().next().unwrap_or_default();
    if !status.starts_with("HTTP/1.1 200") {
        return Err(format!("http://{addr}/metrics answered `{status}`"));
    }
    if head.lines().any(|l| l.to_ascii_lowercase().starts_with("transfer-encoding: chunked")) {
        return Ok(parse(&unchunk(body)?));
    }
    Ok(parse(body))
}

fn unchunk(mut body: &str) -> Result<String, String> {
    let mut out = String::new();
    loop {
        let (size, rest) = body.split_once("\r\n").ok_or("bad chunked body")?;
        let size = usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| format!("bad chunk size `{size}`"))?;
        if size == 0 {
            return Ok(out);
        }
        let chunk = rest.get(..size).ok_or("truncated chunk")?;
        out.push_str(chunk);
        body = rest.get(size..).and_then(|r| r.strip_prefix("\r\n")).ok_or("bad chunk end")?;
    }
}

/// Parses the text format; lines that do not parse are skipped.
pub fn parse(text: &str) -> Scrape {
    let mut samples = Vec::new();
    for line in text.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let (series, value) = match line.rsplit_once(' ') {
            Some(x) => x,
            None => continue,
        };
        let Ok(value) = value.parse::<f64>() else { continue };
        let (name, labels) = match series.split_once('{') {
            Some((n, l)) => (n, l.strip_suffix('}').unwrap_or(l)),
            None => (series, ""),
        };
        samples.push(Sample { name: name.to_string(), labels: labels.to_string(), value });
    }
    Scrape { samples }
}

impl Scrape {
    /// The sum of `name`'s samples whose labels contain every one of `with`.
    pub fn sum(&self, name: &str, with: &[&str]) -> f64 {
        self.samples
            .iter()
            .filter(|s| s.name == name && with.iter().all(|w| s.labels.contains(w)))
            .map(|s| s.value)
            .sum()
    }

    pub fn has(&self, name: &str) -> bool {
        self.samples.iter().any(|s| s.name == name)
    }

    /// Cumulative bucket counts of histogram `name` summed over series
    /// whose labels contain one of `series`, by upper bound.
    fn buckets(&self, name: &str, series: &[&str]) -> Vec<(f64, f64)> {
        let mut out: Vec<(f64, f64)> = Vec::new();
        let bucket = format!("{name}_bucket");
        for s in self.samples.iter().filter(|s| s.name == bucket && series.iter().any(|r| s.labels.contains(r))) {
            let Some(le) = s.labels.split("le=\"").nth(1).and_then(|r| r.split('"').next()) else { continue };
            let le = if le == "+Inf" { f64::INFINITY } else { le.parse().unwrap_or(f64::NAN) };
            if le.is_nan() {
                continue;
            }
            match out.iter_mut().find(|(b, _)| *b == le) {
                Some((_, c)) => *c += s.value,
                None => out.push((le, s.value)),
            }
        }
        out.sort_by(|a, b| a.0.total_cmp(&b.0));
        out
    }
}

impl Scrape {
    /// The fine buckets (`trove_latency_fine_total`) of `histogram`, over
    /// the series whose labels contain every one of `with`.
    pub fn fine(&self, histogram: &str, with: &[&str]) -> HistogramSnapshot {
        let mut buckets = vec![0u64; BUCKETS];
        let which = format!("histogram=\"{histogram}\"");
        let series = self.samples.iter().filter(|s| {
            s.name == "trove_latency_fine_total"
                && s.labels.contains(&which)
                && with.iter().all(|w| s.labels.contains(w))
        });
        for s in series {
            let from = s.labels.split("from_ns=\"").nth(1).and_then(|r| r.split('"').next());
            let Some(from) = from.and_then(|f| f.parse::<u64>().ok()) else { continue };
            // A hostile or garbled count is clamped, never a panic.
            let n = if s.value.is_finite() && s.value > 0.0 { s.value.min(u64::MAX as f64) as u64 } else { 0 };
            let b = &mut buckets[bucket_index(from)];
            *b = b.saturating_add(n);
        }
        HistogramSnapshot { buckets, sum: 0 }
    }
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

/// The runtimes whose workers carry the data path: the I/O runtime and,
/// in the per-event modes, the engine's.
const HOT_RUNTIMES: [&str; 2] = ["runtime=\"data\"", "runtime=\"engine\""];

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

    #[test]
    fn parse_skips_what_it_cannot_read() {
        let s = parse("a 1\nb{x=\"1\"} 2.5\nc notanumber\n\n# c 3\nnospace\n");
        assert_eq!(s.samples.len(), 2);
        assert_eq!(s.sum("b", &["x=\"1\""]), 2.5);
    }

    #[test]
    fn chunked_bodies_are_joined() {
        assert_eq!(unchunk("3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n").unwrap(), "abcde");
        assert!(unchunk("zz\r\n").is_err());
        assert!(unchunk("9\r\nab\r\n").is_err());
    }
}
