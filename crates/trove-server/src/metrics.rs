//! `/metrics`: everything in the Prometheus text format (version 0.0.4),
//! named by Prometheus conventions: base units in names (seconds, bytes),
//! `_total` for counters, one family per name with HELP and TYPE.
//!
//! Rendering reads atomics and snapshots only; it never stops a shard.

use std::fmt::Write;
use std::sync::Arc;

use trove_core::Game;
use trove_shard::{Engine, HistogramSnapshot, ShardMetricsSnapshot};

use crate::ServerMetrics;

/// Where the figures come from.
#[derive(Clone, Debug)]
pub struct MetricsSources<G: Game> {
    pub engine: Arc<Engine<G>>,
    pub server: Arc<ServerMetrics>,
    pub data_plane: tokio::runtime::Handle,
    /// The WebSocket listener's runtime (`None` with the endpoint off).
    pub ws_plane: Option<tokio::runtime::Handle>,
    pub control_plane: tokio::runtime::Handle,
}

struct Out {
    text: String,
}

impl Out {
    /// A family with one sample per shard, labelled `shard`.
    fn per_shard<T: std::fmt::Display>(
        &mut self,
        name: &str,
        kind: &str,
        help: &str,
        shards: &[ShardMetricsSnapshot],
        value: impl Fn(&ShardMetricsSnapshot) -> T,
    ) {
        self.family(name, kind, help);
        for (i, sh) in shards.iter().enumerate() {
            self.sample(name, &format!("shard=\"{i}\""), value(sh));
        }
    }

    /// A histogram family with one histogram per shard, labelled `shard`.
    fn per_shard_histogram(
        &mut self,
        name: &str,
        help: &str,
        shards: &[ShardMetricsSnapshot],
        unit: Unit,
        histogram: impl Fn(&ShardMetricsSnapshot) -> &HistogramSnapshot,
    ) {
        self.family(name, "histogram", help);
        for (i, sh) in shards.iter().enumerate() {
            self.histogram_samples(name, &format!("shard=\"{i}\""), histogram(sh), unit);
        }
    }

    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.text, "# HELP {name} {help}");
        let _ = writeln!(self.text, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &str, value: impl std::fmt::Display) {
        if labels.is_empty() {
            let _ = writeln!(self.text, "{name} {value}");
        } else {
            let _ = writeln!(self.text, "{name}{{{labels}}} {value}");
        }
    }

    /// Families of one sample each: `families` holds a line `name kind
    /// help` per value of `values`, in order.
    fn ones(&mut self, families: &str, values: &[u64]) {
        assert_eq!(families.lines().count(), values.len(), "a family per value");
        for (line, value) in families.lines().zip(values) {
            let mut words = line.splitn(3, ' ');
            let (Some(name), Some(kind), Some(help)) = (words.next(), words.next(), words.next()) else {
                unreachable!("a family line is `name kind help`: {line}")
            };
            self.one(name, kind, help, value);
        }
    }

    fn one(&mut self, name: &str, kind: &str, help: &str, value: impl std::fmt::Display) {
        self.family(name, kind, help);
        self.sample(name, "", value);
    }

    /// A histogram of nanoseconds (shown in seconds, `le` at
    /// [`LATENCY_BOUNDS_NS`]) or of plain counts (`le` at [`COUNT_BOUNDS`]),
    /// as cumulative buckets. `le` is a bucket edge less one, so that it
    /// counts the values less than or equal to it, as Prometheus reads it
    /// ([`HistogramSnapshot::cumulative_at`]).
    fn histogram_samples(&mut self, name: &str, labels: &str, h: &HistogramSnapshot, unit: Unit) {
        let sep = if labels.is_empty() { "" } else { "," };
        let bounds: &[u64] = match unit {
            Unit::Count => &COUNT_BOUNDS,
            Unit::Nanoseconds => &LATENCY_BOUNDS_NS,
        };
        for (le, count) in h.cumulative_at(bounds) {
            let _ = match unit {
                Unit::Count => writeln!(self.text, "{name}_bucket{{{labels}{sep}le=\"{le}\"}} {count}"),
                Unit::Nanoseconds => writeln!(self.text, "{name}_bucket{{{labels}{sep}le=\"{}\"}} {count}", secs(le)),
            };
        }
        let total = h.count();
        let _ = writeln!(self.text, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {total}");
        let braces = if labels.is_empty() { String::new() } else { format!("{{{labels}}}") };
        let _ = match unit {
            Unit::Count => writeln!(self.text, "{name}_sum{braces} {}", h.sum),
            Unit::Nanoseconds => writeln!(self.text, "{name}_sum{braces} {}", h.sum as f64 / NS_PER_S),
        };
        let _ = writeln!(self.text, "{name}_count{braces} {total}");
    }
}

/// Prometheus families kept outside the engine and the server (a cluster
/// node's, `trove_cluster_*`), written after the server's own
/// ([`crate::control::ClusterView::metrics`]).
pub struct Families {
    out: Out,
}

impl std::fmt::Debug for Families {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Families").field("bytes", &self.out.text.len()).finish()
    }
}

impl Families {
    pub(crate) fn new() -> Self {
        Self { out: Out { text: String::new() } }
    }

    pub(crate) fn into_text(self) -> String {
        self.out.text
    }

    pub fn counter(&mut self, name: &str, help: &str, value: u64) {
        self.out.one(name, "counter", help, value);
    }

    pub fn gauge(&mut self, name: &str, help: &str, value: u64) {
        self.out.one(name, "gauge", help, value);
    }

    /// A histogram of nanoseconds, shown in seconds.
    pub fn seconds(&mut self, name: &str, help: &str, h: &HistogramSnapshot) {
        self.out.family(name, "histogram", help);
        self.out.histogram_samples(name, "", h, Unit::Nanoseconds);
    }
}

/// What a histogram's values are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Unit {
    Nanoseconds,
    Count,
}

const NS_PER_S: f64 = 1e9;

/// Nanoseconds in seconds, divided (not multiplied by 1e-9) so that the
/// shortest form prints: 9983 ns is `0.000009983`, not
/// `0.000009983000000000001`.
fn secs(ns: u64) -> f64 {
    ns as f64 / NS_PER_S
}

/// The `le` bounds of every latency histogram, in nanoseconds, each moved
/// down to the bucket edge at or below it and printed less one nanosecond
/// (10 us reads `le="0.000009983"`: values up to 9983 ns): every
/// 10 us to 100 us, finer steps to 1 ms, then 1-2-5 to 10 s. 31 bounds and
/// `+Inf`; the full resolution is in `trove_latency_fine_total`
/// (decision 0015).
const LATENCY_BOUNDS_NS: [u64; 31] = [
    5_000,
    10_000,
    20_000,
    30_000,
    40_000,
    50_000,
    60_000,
    70_000,
    80_000,
    90_000,
    100_000,
    150_000,
    200_000,
    250_000,
    300_000,
    400_000,
    500_000,
    750_000,
    1_000_000,
    2_000_000,
    5_000_000,
    10_000_000,
    20_000_000,
    50_000_000,
    100_000_000,
    200_000_000,
    500_000_000,
    1_000_000_000,
    2_000_000_000,
    5_000_000_000,
    10_000_000_000,
];

/// The `le` bounds of count histograms (events per batch): powers of two,
/// bucket edges all, printed less one (`le="0"`, `"1"`, `"3"`, `"7"`, ...:
/// a batch of exactly 2^k events is under `le` 2^(k+1)-1).
const COUNT_BOUNDS: [u64; 21] = {
    let mut b = [0; 21];
    let mut i = 0;
    while i < b.len() {
        b[i] = 1 << i;
        i += 1;
    }
    b
};

impl Out {
    /// The buckets of `h` that hold anything, one counter each, labelled
    /// with the histogram and the bucket's lower edge in nanoseconds: what
    /// `trove bench` reads percentiles from (to 8 us up to 524 us, 3.1%
    /// above). At most `trove_shard::metrics::BUCKETS` series per histogram;
    /// a step's latencies fill a few dozen.
    fn fine_samples(&mut self, histogram: &str, labels: &str, h: &HistogramSnapshot) {
        let sep = if labels.is_empty() { "" } else { "," };
        for (index, n) in h.nonzero() {
            let from = trove_shard::metrics::bucket_low(index);
            let _ = writeln!(
                self.text,
                "trove_latency_fine_total{{histogram=\"{histogram}\"{sep}{labels},from_ns=\"{from}\"}} {n}"
            );
        }
    }
}

/// Process CPU seconds and resident bytes, from /proc (Linux).
fn process_stats() -> Option<(f64, u64)> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let after = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    // /proc reports times in USER_HZ, which Linux fixes at 100.
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let rss = status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?;
    let rss_kib: u64 = rss.trim().trim_end_matches("kB").trim().parse().ok()?;
    Some((ticks as f64 / 100.0, rss_kib * 1024))
}

/// Families of one sample each, one a line: `name kind help`, in the
/// order of the values `render` passes with them.
const CONNECTION_FAMILIES: &str = "\
trove_connections_open gauge Open data-plane connections (TCP and WebSocket).
trove_connections_accepted_total counter Data-plane connections accepted.
trove_connections_refused_total counter Connections refused at connections_max or connections_per_address_max.
trove_connections_refused_address_total counter Of trove_connections_refused_total, those at connections_per_address_max (one source address's share).
trove_frames_received_total counter Frames (and JSON messages) received.
trove_frames_sent_total counter Frames (and JSON messages) sent.
trove_received_bytes_total counter Bytes read from data-plane sockets.
trove_sent_bytes_total counter Bytes written to TCP data-plane sockets.
trove_unfinished_frame_bytes gauge Input-buffer bytes held for frames being received, against unfinished_frame_bytes_max.
trove_unfinished_frame_waits_total counter Times a connection found the unfinished-frame budget spent and stopped reading.
";

/// Families of one sample each, one a line: `name kind help`, in the
/// order of the values `render` passes with them.
const SUBSCRIPTION_FAMILIES: &str = "\
trove_subscriptions gauge Subscriptions (a connection subscribed to two hunts counts twice).
trove_subscribed_hunts gauge Hunts with at least one subscriber.
trove_updates_published_total counter Updates published to subscribed hunts.
trove_updates_dropped_total counter Updates dropped for subscribers that fell behind.
trove_update_gaps_total counter Gap notices handed to subscribers that fell behind (counted when found: at the subscriber's next update of the hunt or next take).
trove_update_chunks_published_total counter Chunks published: one per applied batch and subscribed hunt it touched.
trove_update_chunk_deliveries_total counter Chunks (one batch's updates of one hunt) pushed to subscribers' queues, one per subscriber.
trove_subscriber_wakeups_total counter Subscriber connections woken for updates (one per queue that was empty, however many chunks follow).
trove_subscriber_wakeups_deferred_total counter Of trove_subscriber_wakeups_total, those the push ticker made (woken in its interval already).
trove_updates_shed_total counter Of trove_updates_dropped_total, those the fan-out budget shed (subscriber_updates_per_sec_max).
trove_subscriber_wakeups_budgeted_total counter Wakeups the fan-out budget held back for the push ticker (subscriber_wakeups_per_sec_max).
";

/// Families of one sample each, one a line: `name kind help`, in the
/// order of the values `render` passes with them.
const UPDATE_BYTES_FAMILIES: &str = "\
trove_update_chunks_sent_total counter Chunks queued for writing on subscriber connections.
trove_update_bytes_queued gauge Update bytes taken from subscribers' queues and not yet written, all connections.
trove_update_bytes_queued_connection_max gauge The most update bytes one connection held unwritten since the start.
";

pub fn render<G: Game>(src: &MetricsSources<G>) -> String {
    let mut o = Out { text: String::with_capacity(16 << 10) };
    let e = src.engine.metrics();
    let s = src.server.snapshot();
    let hub = src.engine.hub().metrics();

    o.one("trove_events_received_total", "counter", "Events received in EVENTS frames and JSON batches.", s.events_in);
    o.per_shard("trove_events_applied_total", "counter", "Events applied, per shard.", &e.shards, |sh| {
        sh.events_applied
    });
    o.family("trove_events_rejected_total", "counter", "Events the rules rejected, by reason.");
    let mut reasons: Vec<(&str, u64)> = Vec::new();
    for sh in &e.shards {
        for &(name, n) in &sh.rejections {
            match reasons.iter_mut().find(|(r, _)| *r == name) {
                Some((_, total)) => *total += n,
                None => reasons.push((name, n)),
            }
        }
    }
    for (reason, n) in reasons {
        o.sample("trove_events_rejected_total", &format!("reason=\"{reason}\""), n);
    }
    o.one("trove_events_acknowledged_total", "counter", "Events acknowledged to producers.", s.events_acked);
    o.one("trove_events_retried_total", "counter", "Resent events answered without being applied again.", {
        e.shards.iter().map(|sh| sh.retries).sum::<u64>()
    });
    o.one(
        "trove_busy_replies_total",
        "counter",
        "BUSY replies sent to data-plane clients (the engine's queues were full).",
        s.busy_replies,
    );
    o.one(
        "trove_queue_burst_admits_total",
        "counter",
        "Batches a shard's queue took past queue_wait_max on its burst allowance.",
        e.burst_admits,
    );
    o.one(
        "trove_tls_handshakes_failed_total",
        "counter",
        "TLS handshakes on the protocol v1 listener that failed or timed out.",
        s.tls_handshakes_failed,
    );

    // Stage latencies, per event, from the batch's admission.
    let merged = |f: fn(&ShardMetricsSnapshot) -> &HistogramSnapshot| {
        let mut h = HistogramSnapshot::default();
        for sh in &e.shards {
            h.merge(f(sh));
        }
        h
    };
    o.family("trove_ingest_to_applied_seconds", "histogram", "Per event: admission to its batch applied.");
    o.histogram_samples(
        "trove_ingest_to_applied_seconds",
        "",
        &merged(|sh| &sh.ingest_to_applied_ns),
        Unit::Nanoseconds,
    );
    o.family(
        "trove_ingest_to_durable_seconds",
        "histogram",
        "Per event: admission to the fsync policy's durability point (journaled engines).",
    );
    o.histogram_samples(
        "trove_ingest_to_durable_seconds",
        "",
        &merged(|sh| &sh.ingest_to_durable_ns),
        Unit::Nanoseconds,
    );
    o.family("trove_ingest_to_acknowledged_seconds", "histogram", "Per event: admission to its ACK written.");
    o.histogram_samples("trove_ingest_to_acknowledged_seconds", "", &s.ingest_to_ack_ns, Unit::Nanoseconds);
    o.family(
        "trove_ingest_to_update_pushed_seconds",
        "histogram",
        "Per update and subscriber: admission of the oldest batch in its chunk to the update written.",
    );
    o.histogram_samples("trove_ingest_to_update_pushed_seconds", "", &s.ingest_to_update_ns, Unit::Nanoseconds);
    stage_metrics(&mut o, &s);

    // Shards.
    o.per_shard("trove_shard_queue_depth_batches", "gauge", "Batches waiting in the shard's queue.", &e.shards, |sh| {
        sh.queue_depth_batches
    });
    o.per_shard("trove_shard_queue_depth_events", "gauge", "Events waiting in the shard's queue.", &e.shards, |sh| {
        sh.queue_depth_events
    });
    o.per_shard(
        "trove_shard_busy_seconds_total",
        "counter",
        "Time the shard spent stamping, applying and handing back.",
        &e.shards,
        |sh| secs(sh.busy_ns),
    );
    o.per_shard(
        "trove_shard_idle_seconds_total",
        "counter",
        "Time the shard spent parked, waiting for work.",
        &e.shards,
        |sh| secs(sh.idle_ns),
    );
    o.per_shard(
        "trove_shard_busy_ratio",
        "gauge",
        "Busy time over busy plus idle time since start.",
        &e.shards,
        |sh| sh.busy_ratio(),
    );
    o.per_shard("trove_shard_wakeups_total", "counter", "Times the shard parked and was woken.", &e.shards, |sh| {
        sh.wakeups
    });
    o.per_shard_histogram("trove_shard_batch_events", "Events per applied batch.", &e.shards, Unit::Count, |sh| {
        &sh.batch_events
    });
    o.per_shard_histogram(
        "trove_shard_apply_seconds",
        "Time to apply one batch.",
        &e.shards,
        Unit::Nanoseconds,
        |sh| &sh.apply_ns,
    );

    // Journal.
    o.per_shard("trove_journal_written_bytes_total", "counter", "Bytes written to the journal.", &e.shards, |sh| {
        sh.journal_bytes
    });
    o.per_shard_histogram(
        "trove_journal_fsync_seconds",
        "Time per fdatasync of the journal.",
        &e.shards,
        Unit::Nanoseconds,
        |sh| &sh.fsync_ns,
    );
    o.per_shard("trove_snapshots_total", "counter", "Snapshots written.", &e.shards, |sh| sh.snapshots);

    // Connections and subscriptions.
    o.ones(
        CONNECTION_FAMILIES,
        &[
            s.connections_open,
            s.connections_accepted,
            s.connections_refused,
            s.connections_refused_address,
            s.frames_in,
            s.frames_out,
            s.bytes_in,
            s.bytes_out,
            s.unfinished_frame_bytes,
            s.unfinished_frame_waits,
        ],
    );
    o.family("trove_protocol_errors_total", "counter", "ERROR frames sent, by code.");
    for (code, n) in &s.errors {
        o.sample("trove_protocol_errors_total", &format!("code=\"{code}\""), n);
    }
    o.ones(
        SUBSCRIPTION_FAMILIES,
        &[
            hub.subscriptions,
            hub.topics,
            hub.updates_published,
            hub.updates_dropped,
            hub.gaps,
            hub.chunks_published,
            hub.chunk_deliveries,
            hub.wakeups,
            hub.wakeups_deferred,
            hub.updates_shed,
            hub.wakeups_budgeted,
        ],
    );
    o.family(
        "trove_update_encodings_total",
        "counter",
        "Chunks encoded for the wire, by transport (ws_deflate: WebSocket updates compressed, from ws's text): once per chunk, shared by every subscriber.",
    );
    o.sample("trove_update_encodings_total", "transport=\"tcp\"", s.update_encodings_tcp);
    o.sample("trove_update_encodings_total", "transport=\"ws\"", s.update_encodings_ws);
    o.sample("trove_update_encodings_total", "transport=\"ws_deflate\"", s.update_encodings_ws_deflate);
    o.ones(UPDATE_BYTES_FAMILIES, &[s.update_chunks_sent, s.update_bytes_queued, s.update_bytes_queued_connection_max]);

    // The process.
    if let Some((cpu, rss)) = process_stats() {
        o.one("process_cpu_seconds_total", "counter", "User and system CPU time of the process.", cpu);
        o.one("process_resident_memory_bytes", "gauge", "Resident memory of the process.", rss);
    }

    // The per-event modes apply events on a runtime of their own.
    let engine_runtime = src.engine.runtime_handle();
    let mut runtimes = vec![("data", &src.data_plane)];
    if let Some(h) = &src.ws_plane {
        runtimes.push(("ws", h));
    }
    runtimes.push(("control", &src.control_plane));
    if let Some(h) = &engine_runtime {
        runtimes.push(("engine", h));
    }
    runtime_metrics(&mut o, &runtimes);
    o.text
}

/// The whole path's stages, cumulative from the frame's read, and the
/// fine buckets of the latencies `trove bench` breaks down.
fn stage_metrics(o: &mut Out, s: &crate::ServerMetricsSnapshot) {
    o.family(
        "trove_stage_seconds",
        "histogram",
        "Per acknowledged event: from its frame read to the stage (decoded, admitted, applied, written, synced, \
         acknowledged).",
    );
    for (stage, h) in crate::Stage::ALL.iter().zip(&s.stage_ns) {
        o.histogram_samples("trove_stage_seconds", &format!("stage=\"{}\"", stage.name()), h, Unit::Nanoseconds);
    }
    o.family(
        "trove_latency_fine_total",
        "counter",
        "Events per fine bucket (from_ns: the bucket's lower edge, nanoseconds; 32 buckets per power of two) of \
         trove_stage_seconds and trove_ingest_to_*_seconds; only buckets that hold anything.",
    );
    for (stage, h) in crate::Stage::ALL.iter().zip(&s.stage_ns) {
        o.fine_samples("trove_stage_seconds", &format!("stage=\"{}\"", stage.name()), h);
    }
    o.fine_samples("trove_ingest_to_acknowledged_seconds", "", &s.ingest_to_ack_ns);
    o.fine_samples("trove_ingest_to_update_pushed_seconds", "", &s.ingest_to_update_ns);
}

/// The tokio runtimes' own metrics; with `--cfg tokio_unstable` (the
/// workspace builds with it) also polls, steals, spawned tasks and
/// schedule counts.
fn runtime_metrics(o: &mut Out, runtimes: &[(&str, &tokio::runtime::Handle)]) {
    o.family("tokio_workers", "gauge", "Worker threads of the runtime.");
    for (rt, h) in runtimes {
        o.sample("tokio_workers", &format!("runtime=\"{rt}\""), h.metrics().num_workers());
    }
    o.family("tokio_alive_tasks", "gauge", "Tasks alive in the runtime.");
    for (rt, h) in runtimes {
        o.sample("tokio_alive_tasks", &format!("runtime=\"{rt}\""), h.metrics().num_alive_tasks());
    }
    o.family("tokio_global_queue_depth", "gauge", "Tasks waiting in the runtime's global queue.");
    for (rt, h) in runtimes {
        o.sample("tokio_global_queue_depth", &format!("runtime=\"{rt}\""), h.metrics().global_queue_depth());
    }
    type PerWorker = fn(&tokio::runtime::RuntimeMetrics, usize) -> f64;
    let per_worker: &[(&str, &str, PerWorker)] = &[
        ("tokio_worker_busy_seconds_total", "Time the worker spent running tasks.", |m, w| {
            m.worker_total_busy_duration(w).as_secs_f64()
        }),
        ("tokio_worker_parks_total", "Times the worker parked (went idle).", |m, w| m.worker_park_count(w) as f64),
        ("tokio_worker_park_unparks_total", "Times the worker parked or was unparked (woken).", |m, w| {
            m.worker_park_unpark_count(w) as f64
        }),
        #[cfg(tokio_unstable)]
        ("tokio_worker_polls_total", "Task polls by the worker.", |m, w| m.worker_poll_count(w) as f64),
        #[cfg(tokio_unstable)]
        ("tokio_worker_steals_total", "Tasks the worker stole from other workers.", |m, w| {
            m.worker_steal_count(w) as f64
        }),
        #[cfg(tokio_unstable)]
        ("tokio_worker_local_schedules_total", "Tasks scheduled onto the worker's local queue.", |m, w| {
            m.worker_local_schedule_count(w) as f64
        }),
        #[cfg(tokio_unstable)]
        ("tokio_worker_mean_poll_time_seconds", "Moving mean of the worker's task poll times.", |m, w| {
            m.worker_mean_poll_time(w).as_secs_f64()
        }),
    ];
    for (name, help, f) in per_worker {
        let kind = if name.ends_with("_total") { "counter" } else { "gauge" };
        o.family(name, kind, help);
        for (rt, h) in runtimes {
            let m = h.metrics();
            for w in 0..m.num_workers() {
                o.sample(name, &format!("runtime=\"{rt}\",worker=\"{w}\""), f(&m, w));
            }
        }
    }
    #[cfg(tokio_unstable)]
    {
        o.family("tokio_spawned_tasks_total", "counter", "Tasks spawned on the runtime.");
        for (rt, h) in runtimes {
            o.sample("tokio_spawned_tasks_total", &format!("runtime=\"{rt}\""), h.metrics().spawned_tasks_count());
        }
        o.family(
            "tokio_schedule_latency_seconds",
            "histogram",
            "Time from a task's wakeup to its poll, per worker (tokio keeps no sum: _sum reads 0).",
        );
        for (rt, h) in runtimes {
            let m = h.metrics();
            if !m.schedule_latency_histogram_enabled() {
                continue;
            }
            for w in 0..m.num_workers() {
                let mut cumulative = 0;
                let labels = format!("runtime=\"{rt}\",worker=\"{w}\"");
                let buckets = m.schedule_latency_histogram_num_buckets();
                for b in 0..buckets {
                    cumulative += m.schedule_latency_histogram_bucket_count(w, b);
                    // The last bucket is open-ended: it is `+Inf` below.
                    if b + 1 < buckets {
                        let le = m.schedule_latency_histogram_bucket_range(b).end.as_secs_f64();
                        o.sample("tokio_schedule_latency_seconds_bucket", &format!("{labels},le=\"{le}\""), cumulative);
                    }
                }
                o.sample("tokio_schedule_latency_seconds_bucket", &format!("{labels},le=\"+Inf\""), cumulative);
                // Tokio keeps no sum of these latencies; Prometheus requires
                // the series, so it reads 0 (quantiles use the buckets).
                o.sample("tokio_schedule_latency_seconds_sum", &labels, 0);
                o.sample("tokio_schedule_latency_seconds_count", &labels, cumulative);
            }
        }
        o.family(
            "tokio_remote_schedules_total",
            "counter",
            "Tasks scheduled from outside the runtime (shard wakeups).",
        );
        for (rt, h) in runtimes {
            o.sample("tokio_remote_schedules_total", &format!("runtime=\"{rt}\""), h.metrics().remote_schedule_count());
        }
    }
}

#[cfg(test)]
mod tests {
    use trove_shard::metrics::Histogram;

    use super::{Out, Unit};

    fn render(values: &[u64], unit: Unit) -> String {
        let h = Histogram::default();
        for &v in values {
            h.record(v);
        }
        let mut out = Out { text: String::new() };
        out.histogram_samples("h", "x=\"1\"", &h.snapshot(), unit);
        out.text
    }

    /// `le` counts the values less than or equal to it, as Prometheus
    /// reads it: a batch of 0 events is under `le="0"`, one of exactly 2
    /// under `le="3"` (not `le="1"`).
    #[test]
    fn count_buckets_are_less_or_equal() {
        let text = render(&[0, 1, 2, 2, 4], Unit::Count);
        for line in [
            "h_bucket{x=\"1\",le=\"0\"} 1\n",
            "h_bucket{x=\"1\",le=\"1\"} 2\n",
            "h_bucket{x=\"1\",le=\"3\"} 4\n",
            "h_bucket{x=\"1\",le=\"7\"} 5\n",
            "h_bucket{x=\"1\",le=\"1048575\"} 5\n",
            "h_bucket{x=\"1\",le=\"+Inf\"} 5\n",
            "h_sum{x=\"1\"} 9\n",
            "h_count{x=\"1\"} 5\n",
        ] {
            assert!(text.contains(line), "{line:?} in\n{text}");
        }
    }

    /// Each line of a family table names the value at its place.
    #[test]
    fn family_tables_pair_each_line_with_its_value() {
        let mut out = Out { text: String::new() };
        out.ones("a_total counter The a's.\nb gauge The b's, with spaces.\n", &[1, 2]);
        assert_eq!(
            out.text,
            "# HELP a_total The a's.\n# TYPE a_total counter\na_total 1\n\
             # HELP b The b's, with spaces.\n# TYPE b gauge\nb 2\n"
        );
        for table in [super::CONNECTION_FAMILIES, super::SUBSCRIPTION_FAMILIES, super::UPDATE_BYTES_FAMILIES] {
            for line in table.lines() {
                let words: Vec<&str> = line.splitn(3, ' ').collect();
                assert!(words.len() == 3 && ["counter", "gauge"].contains(&words[1]), "{line}");
                assert_eq!(words[0].ends_with("_total"), words[1] == "counter", "{line}");
            }
        }
    }

    /// Latency bounds in seconds, in their shortest form: 10 us is moved
    /// down to the bucket edge 9984 ns, and `le` is 9983 ns.
    #[test]
    fn latency_buckets_print_short_exact_bounds() {
        let text = render(&[9_983, 9_984, 1_000_000_000], Unit::Nanoseconds);
        for line in [
            "h_bucket{x=\"1\",le=\"0.000004991\"} 0\n",
            "h_bucket{x=\"1\",le=\"0.000009983\"} 1\n",
            "h_bucket{x=\"1\",le=\"0.000019967\"} 2\n",
            "h_bucket{x=\"1\",le=\"0.989855743\"} 2\n",
            "h_bucket{x=\"1\",le=\"1.979711487\"} 3\n",
            "h_bucket{x=\"1\",le=\"+Inf\"} 3\n",
            "h_sum{x=\"1\"} 1.000019967\n",
            "h_count{x=\"1\"} 3\n",
        ] {
            assert!(text.contains(line), "{line:?} in\n{text}");
        }
        assert!(!text.contains("00000000001"), "no float noise:\n{text}");
    }
}
