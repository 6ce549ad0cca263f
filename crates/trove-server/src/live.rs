//! `GET /live`: the figures `/metrics` has, as a server-sent-events stream
//! of JSON snapshots (one every [`LIVE_INTERVAL`]), for the dashboard
//! (docs/control.md, decision 0045).
//!
//! Each stream keeps the totals of its previous snapshot and sends what
//! changed since, as rates and interval percentiles: the browser never
//! parses the Prometheus text, and never sees a histogram. A snapshot is
//! made only when the connection asks for the next chunk of the body
//! (hyper polls it when its write buffer has room), so a slow reader holds
//! a bounded few: nothing queues up behind them. The control plane
//! caps the stream's socket send buffer, closes a stream whose reader took
//! nothing for [`LIVE_STALL_TIMEOUT`] (`control.rs`), and caps the streams
//! open at once
//! (`ControlConfig::live_streams_max`).

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use trove_core::Game;
use trove_shard::HistogramSnapshot;

use crate::control::ControlGame;
use crate::metrics::MetricsSources;

/// Time between two snapshots of a stream.
pub const LIVE_INTERVAL: Duration = Duration::from_millis(500);
/// A stream whose reader has taken no snapshot for this long is closed
/// (its reader is gone, or too slow to be watching).
pub const LIVE_STALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Hunts in a snapshot: the first ones by id; `hunts_more` says when
/// there are others.
pub const LIVE_HUNTS_MAX: usize = 100;
/// How long a snapshot waits for the shards' answer about their hunts;
/// past it the snapshot carries the previous list.
const HUNTS_WAIT: Duration = Duration::from_secs(1);

/// Cumulative figures at one instant; two of them make a snapshot.
#[derive(Clone, Debug, Default)]
struct Totals {
    events_in: u64,
    events_acked: u64,
    events_applied: u64,
    shard_applied: Vec<u64>,
    shard_busy_ns: Vec<u64>,
    shard_idle_ns: Vec<u64>,
    shard_wakeups: u64,
    ingest_to_ack_ns: HistogramSnapshot,
    fsync_ns: HistogramSnapshot,
    polls: u64,
    park_unparks: u64,
    busy_replies: u64,
    /// (hunt, events applied to it).
    hunt_events: Vec<(u32, u64)>,
}

/// One stream's state: the previous totals and hunt list.
#[derive(Debug)]
pub(crate) struct LiveState {
    previous: Option<(Instant, Totals)>,
    hunts: Vec<(u32, Value, u64)>,
    hunts_more: bool,
    started: Instant,
}

impl LiveState {
    pub(crate) fn new(started: Instant) -> Self {
        Self { previous: None, hunts: Vec::new(), hunts_more: false, started }
    }

    /// The next snapshot: figures since the previous one (the first one
    /// has rates of 0 and no percentiles), serialized as one SSE event.
    pub(crate) async fn next_event<G: ControlGame>(&mut self, src: &MetricsSources<G>) -> String {
        self.refresh_hunts(src).await;
        let now = Instant::now();
        let totals = totals(src, &self.hunts);
        let value = snapshot(src, self.started, now, self.previous.as_ref(), &totals, &self.hunts, self.hunts_more);
        self.previous = Some((now, totals));
        sse_event(&value)
    }

    async fn refresh_hunts<G: ControlGame>(&mut self, src: &MetricsSources<G>) {
        let mut rx = src
            .engine
            .query_world_page(None, LIVE_HUNTS_MAX + 1, |id, h| (id, G::world_summary(h), G::world_events(h)));
        let mut hunts = Vec::new();
        let collect = async {
            while let Some(x) = rx.recv().await {
                hunts.push(x);
            }
        };
        if tokio::time::timeout(HUNTS_WAIT, collect).await.is_ok() {
            hunts.sort_unstable_by_key(|(id, _, _)| *id);
            self.hunts_more = hunts.len() > LIVE_HUNTS_MAX;
            hunts.truncate(LIVE_HUNTS_MAX);
            self.hunts = hunts;
        }
    }
}

/// `data: {json}\n\n`: one server-sent event (a JSON text has no newline).
fn sse_event(value: &Value) -> String {
    format!("data: {value}\n\n")
}

fn totals<G: Game>(src: &MetricsSources<G>, hunts: &[(u32, Value, u64)]) -> Totals {
    let e = src.engine.metrics();
    let s = src.server.snapshot();
    let mut fsync_ns = HistogramSnapshot::default();
    for sh in &e.shards {
        fsync_ns.merge(&sh.fsync_ns);
    }
    // The runtimes on the data path: the I/O runtime, the WebSocket
    // listener's and, in the per-event modes, the engine's (as `trove
    // bench` counts them).
    let mut runtimes = vec![src.data_plane.clone()];
    runtimes.extend(src.ws_plane.clone());
    runtimes.extend(src.engine.runtime_handle());
    let (mut polls, mut park_unparks) = (0u64, 0u64);
    for h in &runtimes {
        let m = h.metrics();
        for w in 0..m.num_workers() {
            #[cfg(tokio_unstable)]
            {
                polls += m.worker_poll_count(w);
            }
            park_unparks += m.worker_park_unpark_count(w);
        }
    }
    Totals {
        events_in: s.events_in,
        events_acked: s.events_acked,
        events_applied: e.events_applied(),
        shard_applied: e.shards.iter().map(|sh| sh.events_applied).collect(),
        shard_busy_ns: e.shards.iter().map(|sh| sh.busy_ns).collect(),
        shard_idle_ns: e.shards.iter().map(|sh| sh.idle_ns).collect(),
        shard_wakeups: e.shards.iter().map(|sh| sh.wakeups).sum(),
        ingest_to_ack_ns: s.ingest_to_ack_ns,
        fsync_ns,
        polls,
        park_unparks,
        busy_replies: s.busy_replies,
        hunt_events: hunts.iter().map(|(id, _, n)| (*id, *n)).collect(),
    }
}

/// p50 and p99 of what `h` gained over the interval, in microseconds (the
/// upper bound of the bucket that holds each, 3% resolution), or `null`
/// when nothing was recorded in it.
fn percentiles_us(h: &HistogramSnapshot) -> Value {
    if h.count() == 0 {
        return Value::Null;
    }
    let us = |q| h.quantile_upper_bound(q) as f64 / 1000.0;
    json!({"p50": us(0.5), "p99": us(0.99), "count": h.count()})
}

fn snapshot<G: Game>(
    src: &MetricsSources<G>,
    started: Instant,
    now: Instant,
    previous: Option<&(Instant, Totals)>,
    t: &Totals,
    hunts: &[(u32, Value, u64)],
    hunts_more: bool,
) -> Value {
    let empty = Totals::default();
    let (seconds, p) = match previous {
        Some((at, p)) => (now.saturating_duration_since(*at).as_secs_f64(), p),
        // The first snapshot: no interval yet, so every rate is 0.
        None => (0.0, t),
    };
    let p = if previous.is_some() { p } else { &empty };
    let first = previous.is_none();
    let rate = |now: u64, before: u64| {
        if first || seconds <= 0.0 { 0.0 } else { now.saturating_sub(before) as f64 / seconds }
    };
    let applied = t.events_applied.saturating_sub(p.events_applied);
    let per_event = |now: u64, before: u64, divisor: f64| {
        if first || applied == 0 {
            Value::Null
        } else {
            json!(now.saturating_sub(before) as f64 / divisor / applied as f64)
        }
    };
    let s = src.server.snapshot();
    let e = src.engine.metrics();
    let shards: Vec<Value> = e
        .shards
        .iter()
        .enumerate()
        .map(|(i, sh)| {
            let get = |v: &[u64]| v.get(i).copied().unwrap_or(0);
            let busy = get(&t.shard_busy_ns).saturating_sub(get(&p.shard_busy_ns));
            let idle = get(&t.shard_idle_ns).saturating_sub(get(&p.shard_idle_ns));
            // Busy over busy plus idle in the interval: the share of the
            // shard's thread the work took.
            let busy_ratio = if first || busy + idle == 0 { 0.0 } else { busy as f64 / (busy + idle) as f64 };
            json!({
                "shard": i,
                "events_per_s": rate(get(&t.shard_applied), get(&p.shard_applied)),
                "queue_events": sh.queue_depth_events,
                "queue_batches": sh.queue_depth_batches,
                "busy_ratio": busy_ratio,
            })
        })
        .collect();
    let hunt_rate = |id: u32, n: u64| {
        let before = p.hunt_events.iter().find(|(h, _)| *h == id).map(|(_, n)| *n);
        // A hunt new since the last snapshot counts from 0.
        rate(n, before.unwrap_or(0))
    };
    let hunts: Vec<Value> = hunts
        .iter()
        .map(|(id, summary, n)| {
            let mut v = summary.clone();
            if let Value::Object(fields) = &mut v {
                fields.insert("events_per_s".into(), json!(hunt_rate(*id, *n)));
                fields.insert("events_applied".into(), json!(n));
            }
            v
        })
        .collect();
    let fsync = t.fsync_ns.since(&p.fsync_ns);
    json!({
        "uptime_ms": now.saturating_duration_since(started).as_millis() as u64,
        "interval_s": seconds,
        "events_in_per_s": rate(t.events_in, p.events_in),
        "events_acknowledged_per_s": rate(t.events_acked, p.events_acked),
        "events_applied_per_s": rate(t.events_applied, p.events_applied),
        "busy_replies_per_s": rate(t.busy_replies, p.busy_replies),
        "ack_latency_us": if first { Value::Null } else { percentiles_us(&t.ingest_to_ack_ns.since(&p.ingest_to_ack_ns)) },
        "journal_sync_us": if first { Value::Null } else { percentiles_us(&fsync) },
        "journal_syncs_per_s": rate(t.fsync_ns.count(), p.fsync_ns.count()),
        "queue_events": e.shards.iter().map(|sh| sh.queue_depth_events).sum::<u64>(),
        "shards": shards,
        "io": {
            "polls_per_event": per_event(t.polls, p.polls, 1.0),
            // A park and an unpark each count once: a wakeup is an unpark.
            "wakeups_per_event": if first || applied == 0 { Value::Null } else {
                json!((t.park_unparks.saturating_sub(p.park_unparks) as f64 / 2.0
                    + t.shard_wakeups.saturating_sub(p.shard_wakeups) as f64) / applied as f64)
            },
        },
        "totals": {
            "events_in": t.events_in,
            "events_acknowledged": t.events_acked,
            "events_applied": t.events_applied,
        },
        "connections_open": s.connections_open,
        "subscribers": s.subscribers,
        "hunts": hunts,
        "hunts_more": hunts_more,
    })
}
