//! The HTTP control plane (axum, default 127.0.0.1:7480) on its own
//! one-thread runtime, so it keeps answering when the data plane's workers
//! and the shards are saturated.
//!
//! Reads of game state run on the shard that owns the hunt, between its
//! batches (`Engine::query_world`); creating a hunt is an event like any
//! other, through the same producer path and journal. docs/control.md and
//! `/openapi.json` describe the endpoints; `/metrics` is the Prometheus
//! text format (`metrics.rs`).

// Handlers return a `Response` as their error: it is the reply, built once.
#![allow(clippy::result_large_err)]

use std::future::poll_fn;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};
use trove_core::Stamped;
use trove_hunt::{HuntEvent, HuntOutcome, Reject, TreasureHunt};
use trove_shard::{Engine, Producer, SubmitError};

use crate::ServerMetrics;
use crate::json::{JsonGame, config_json, top_json};
use crate::metrics::{self, MetricsSources};

/// What the control plane reports about the engine it serves.
#[derive(Clone, Debug)]
pub struct ControlInfo {
    pub mode: &'static str,
    pub shards: usize,
    /// `none`, or the fsync policy.
    pub fsync: String,
    pub journal_dir: Option<String>,
    pub tcp_addr: SocketAddr,
    pub ws_addr: Option<SocketAddr>,
}

struct Ctx {
    engine: Arc<Engine<TreasureHunt>>,
    /// One producer for every state-changing request, so the engine's
    /// per-producer tables hold one entry for the control plane.
    producer: tokio::sync::Mutex<Producer<TreasureHunt>>,
    info: ControlInfo,
    started: Instant,
    sources: MetricsSources,
    ready: Arc<std::sync::atomic::AtomicBool>,
}

/// A running control plane.
pub struct ControlPlane {
    runtime: Option<tokio::runtime::Runtime>,
    addr: SocketAddr,
    stop: tokio::sync::watch::Sender<bool>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl std::fmt::Debug for ControlPlane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlPlane").field("addr", &self.addr).finish()
    }
}

impl ControlPlane {
    /// Binds `addr` and serves on a runtime of its own.
    pub fn start(
        addr: SocketAddr,
        engine: Arc<Engine<TreasureHunt>>,
        server_metrics: Arc<ServerMetrics>,
        data_plane: tokio::runtime::Handle,
        info: ControlInfo,
        ready: Arc<std::sync::atomic::AtomicBool>,
    ) -> Result<Self, String> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("trove-control")
            .enable_io()
            .enable_time()
            .build()
            .map_err(|e| format!("starting the control runtime: {e}"))?;
        let std_listener =
            std::net::TcpListener::bind(addr).map_err(|e| format!("control plane listener on {addr}: {e}"))?;
        std_listener.set_nonblocking(true).map_err(|e| format!("control plane listener: {e}"))?;
        let addr = std_listener.local_addr().map_err(|e| format!("control plane listener: {e}"))?;
        let ctx = Arc::new(Ctx {
            producer: tokio::sync::Mutex::new(engine.producer()),
            engine: engine.clone(),
            info,
            started: Instant::now(),
            sources: MetricsSources {
                engine,
                server: server_metrics,
                data_plane,
                control_plane: runtime.handle().clone(),
            },
            ready,
        });
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let task = {
            let _guard = runtime.enter();
            let listener =
                tokio::net::TcpListener::from_std(std_listener).map_err(|e| format!("control plane listener: {e}"))?;
            runtime.spawn(async move {
                let _ = axum::serve(listener, router(ctx))
                    .with_graceful_shutdown(async move {
                        let _ = stopped.wait_for(|s| *s).await;
                    })
                    .await;
            })
        };
        Ok(Self { runtime: Some(runtime), addr, stop, task: Some(task) })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn shutdown(mut self) {
        let _ = self.stop.send(true);
        if let (Some(rt), Some(task)) = (self.runtime.take(), self.task.take()) {
            let _ = rt.block_on(async { tokio::time::timeout(Duration::from_secs(2), task).await });
            rt.shutdown_timeout(Duration::from_millis(100));
        }
    }
}

fn router(ctx: Arc<Ctx>) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/status", get(status))
        .route("/metrics", get(prometheus))
        .route("/openapi.json", get(openapi))
        .route("/hunts", get(list_hunts).post(create_hunt))
        .route("/hunts/{id}", get(hunt_detail))
        .route("/hunts/{id}/leaderboard", get(leaderboard))
        .route("/hunts/{id}/players/{player}", get(player_detail))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "not_found", "no such endpoint".into()) })
        .method_not_allowed_fallback(|| async {
            error(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "method not allowed here".into())
        })
        // A create is a few hundred bytes; refuse big bodies early.
        .layer(axum::extract::DefaultBodyLimit::max(64 << 10))
        .with_state(ctx)
}

/// A JSON error body: `{"error": code, "message": ...}`.
fn error(status: StatusCode, code: &str, message: String) -> Response {
    (status, axum::Json(json!({"error": code, "message": message}))).into_response()
}

fn ok(value: Value) -> Response {
    axum::Json(value).into_response()
}

/// Live unless the engine failed (its journal could not write or sync):
/// then it will never acknowledge again, and a restart is what recovers.
async fn health(State(ctx): State<Arc<Ctx>>) -> Response {
    match ctx.engine.failure() {
        None => ok(json!({"status": "ok"})),
        Some(reason) => error(StatusCode::SERVICE_UNAVAILABLE, "failed", reason.to_string()),
    }
}

async fn ready(State(ctx): State<Arc<Ctx>>) -> Response {
    if let Some(reason) = ctx.engine.failure() {
        return error(StatusCode::SERVICE_UNAVAILABLE, "failed", reason.to_string());
    }
    if ctx.ready.load(std::sync::atomic::Ordering::Relaxed) {
        ok(json!({"status": "ready"}))
    } else {
        error(StatusCode::SERVICE_UNAVAILABLE, "not_ready", "the engine is starting or stopping".into())
    }
}

async fn status(State(ctx): State<Arc<Ctx>>) -> Response {
    let m = ctx.engine.metrics();
    let s = ctx.sources.server.snapshot();
    ok(json!({
        "version": env!("CARGO_PKG_VERSION"),
        "game": "treasure-hunt",
        "mode": ctx.info.mode,
        "shards": ctx.info.shards,
        "fsync": ctx.info.fsync,
        "journal_dir": ctx.info.journal_dir,
        "tcp_addr": ctx.info.tcp_addr.to_string(),
        "ws_addr": ctx.info.ws_addr.map(|a| a.to_string()),
        "uptime_seconds": ctx.started.elapsed().as_secs_f64(),
        "events_applied": m.events_applied(),
        "journal": m.shards.iter().enumerate().map(|(i, sh)| json!({
            "shard": i,
            "bytes_written": sh.journal_bytes,
            "fsyncs": sh.fsyncs,
            "snapshots": sh.snapshots,
            "events_applied": sh.events_applied,
        })).collect::<Vec<_>>(),
        "connections_open": s.connections_open,
        "subscribers": s.subscribers,
    }))
}

async fn prometheus(State(ctx): State<Arc<Ctx>>) -> Response {
    let text = metrics::render(&ctx.sources);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], text).into_response()
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], include_str!("openapi.json")).into_response()
}

fn parse_id(raw: &str, what: &str) -> Result<u32, Response> {
    raw.parse::<u32>().map_err(|_| {
        error(StatusCode::BAD_REQUEST, "bad_request", format!("{what} `{raw}` is not an integer in 0..=4294967295"))
    })
}

/// Reads a hunt on its shard, or answers 404.
async fn with_hunt(
    ctx: &Ctx,
    raw: &str,
    f: impl FnOnce(&trove_hunt::Hunt) -> Value + Send + 'static,
) -> Result<Value, Response> {
    let id = parse_id(raw, "hunt id")?;
    let answer = ctx.engine.query_world(id, move |h| h.map(f));
    match tokio::time::timeout(Duration::from_secs(10), answer).await {
        Ok(Ok(Some(v))) => Ok(v),
        Ok(Ok(None)) => Err(error(StatusCode::NOT_FOUND, "unknown_hunt", format!("no hunt {id}"))),
        Ok(Err(_)) | Err(_) => {
            Err(error(StatusCode::SERVICE_UNAVAILABLE, "unavailable", "the engine did not answer in time".into()))
        }
    }
}

fn summary(h: &trove_hunt::Hunt) -> Value {
    json!({"id": h.id(), "round": h.round(), "players": h.players_joined(), "treasures_left": h.treasures_left()})
}

type PathArg<T> = Result<Path<T>, axum::extract::rejection::PathRejection>;

fn path_error(e: axum::extract::rejection::PathRejection) -> Response {
    error(StatusCode::BAD_REQUEST, "bad_request", e.body_text())
}

async fn hunt_detail(State(ctx): State<Arc<Ctx>>, id: PathArg<String>) -> Response {
    let id = match id {
        Ok(Path(id)) => id,
        Err(e) => return path_error(e),
    };
    let detail = with_hunt(&ctx, &id, |h| {
        let mut v = summary(h);
        v["config"] = config_json(h.config());
        v["leaderboard"] = top_json(h.leaderboard());
        v
    });
    detail.await.map_or_else(|e| e, ok)
}

async fn leaderboard(State(ctx): State<Arc<Ctx>>, id: PathArg<String>) -> Response {
    let id = match id {
        Ok(Path(id)) => id,
        Err(e) => return path_error(e),
    };
    let board = with_hunt(&ctx, &id, |h| json!({"id": h.id(), "round": h.round(), "top": top_json(h.leaderboard())}));
    board.await.map_or_else(|e| e, ok)
}

async fn player_detail(State(ctx): State<Arc<Ctx>>, ids: PathArg<(String, String)>) -> Response {
    let (id, player) = match ids {
        Ok(Path(ids)) => ids,
        Err(e) => return path_error(e),
    };
    let player = match parse_id(&player, "player id") {
        Ok(p) => p,
        Err(e) => return e,
    };
    let found = with_hunt(&ctx, &id, move |h| match h.player(player).filter(|p| p.joined()) {
        Some(p) => json!({"hunt": h.id(), "player": player, "x": p.x, "y": p.y, "score": p.score, "round": h.round()}),
        None => Value::Null,
    });
    match found.await {
        Ok(Value::Null) => {
            error(StatusCode::NOT_FOUND, "unknown_player", format!("player {player} is not in hunt {id}"))
        }
        Ok(v) => ok(v),
        Err(e) => e,
    }
}

#[derive(Debug, serde::Deserialize)]
struct Page {
    after: Option<u32>,
    limit: Option<usize>,
}

const LIST_LIMIT_MAX: usize = 1000;

async fn list_hunts(
    State(ctx): State<Arc<Ctx>>,
    page: Result<Query<Page>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Ok(Query(page)) = page else {
        return error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "`after` and `limit` must be non-negative integers".into(),
        );
    };
    let limit = page.limit.unwrap_or(100);
    if limit == 0 || limit > LIST_LIMIT_MAX {
        return error(StatusCode::BAD_REQUEST, "bad_request", format!("`limit` must be in 1..={LIST_LIMIT_MAX}"));
    }
    // Every shard sends its first `limit + 1` hunts past `after` (one past
    // the page, to know whether there is a next); keep the lowest ids.
    let mut rx = ctx.engine.query_world_page(page.after, limit + 1, |id, h| (id, summary(h)));
    let mut hunts: Vec<(u32, Value)> = Vec::new();
    let collect = async {
        while let Some(x) = rx.recv().await {
            hunts.push(x);
        }
    };
    if tokio::time::timeout(Duration::from_secs(10), collect).await.is_err() {
        return error(StatusCode::SERVICE_UNAVAILABLE, "unavailable", "the engine did not answer in time".into());
    }
    hunts.sort_unstable_by_key(|(id, _)| *id);
    let more = hunts.len() > limit;
    hunts.truncate(limit);
    let next = if more { hunts.last().map(|(id, _)| *id) } else { None };
    ok(json!({"hunts": hunts.into_iter().map(|(_, v)| v).collect::<Vec<_>>(), "next_after": next}))
}

/// Reads a `POST /hunts` body, `{"id": 7, "config": {...}}`, into the
/// create event it asks for; the error names what is wrong (answered as
/// 400 `bad_request`). Public for the fuzz target (fuzz/).
pub fn parse_create_body(body: &[u8]) -> Result<HuntEvent, String> {
    let v: Value = serde_json::from_slice(body).map_err(|e| format!("the body is not JSON: {e}"))?;
    let id = v.get("id").ok_or("missing field `id`")?;
    if id.as_u64().and_then(|i| u32::try_from(i).ok()).is_none() {
        return Err(format!("`id` must be an integer in 0..=4294967295, not {id}"));
    }
    let config = v.get("config").ok_or("missing field `config`")?;
    TreasureHunt::event_from_json(&json!({"hunt": id, "action": "create", "config": config}))
}

/// Creates a hunt: `{"id": 7, "config": {...}}`. The create is an event
/// like any other: journaled, and answered once durable.
async fn create_hunt(
    State(ctx): State<Arc<Ctx>>,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Response {
    let bad = |m: String| error(StatusCode::BAD_REQUEST, "bad_request", m);
    let body = match body {
        Ok(b) => b,
        Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            return error(e.status(), "payload_too_large", "the body is above 64 KiB".into());
        }
        Err(e) => return error(e.status(), "bad_request", e.body_text()),
    };
    let event = match parse_create_body(&body) {
        Ok(e) => e,
        Err(why) => return bad(why),
    };
    let outcome = match submit_one(&ctx, event).await {
        Ok(o) => o,
        Err(response) => return response,
    };
    match outcome {
        HuntOutcome::Created { round } => {
            (StatusCode::CREATED, axum::Json(json!({"id": event.hunt, "round": round}))).into_response()
        }
        HuntOutcome::Rejected { reason: Reject::HuntExists } => {
            error(StatusCode::CONFLICT, "hunt_exists", format!("hunt {} exists", event.hunt))
        }
        HuntOutcome::Rejected { reason: Reject::TooManyHunts } => error(
            StatusCode::INSUFFICIENT_STORAGE,
            "too_many_hunts",
            "the engine holds as many hunts as it is configured for".into(),
        ),
        HuntOutcome::Rejected { reason } => error(StatusCode::UNPROCESSABLE_ENTITY, reason.name(), "rejected".into()),
        other => error(StatusCode::INTERNAL_SERVER_ERROR, "internal", format!("unexpected outcome {other:?}")),
    }
}

/// Submits one event through the control plane's producer and waits for
/// its outcome (after the journal's durability point).
async fn submit_one(ctx: &Ctx, event: HuntEvent) -> Result<HuntOutcome, Response> {
    let mut producer = ctx.producer.lock().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    // A request that timed out left its batch in flight: take its answer
    // first, so this one gets its own.
    while producer.in_flight() > 0 {
        if tokio::time::timeout_at(deadline, poll_fn(|cx| crate::poll_complete(&mut producer, cx))).await.is_err() {
            return Err(error(StatusCode::GATEWAY_TIMEOUT, "timeout", "an earlier request is still unanswered".into()));
        }
    }
    loop {
        let mut batch = vec![Stamped { time_us: 0, event }];
        match producer.submit(&mut batch) {
            Ok(_) => break,
            Err(SubmitError::Busy) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            Err(SubmitError::Busy) => {
                return Err(error(StatusCode::SERVICE_UNAVAILABLE, "busy", "the engine is saturated; retry".into()));
            }
            Err(SubmitError::Failed) => {
                return Err(error(StatusCode::INTERNAL_SERVER_ERROR, "internal", crate::failure_reason(&producer)));
            }
            Err(e) => return Err(error(StatusCode::SERVICE_UNAVAILABLE, "unavailable", format!("{e:?}"))),
        }
    }
    let done = tokio::time::timeout_at(deadline, poll_fn(|cx| crate::poll_complete(&mut producer, cx))).await;
    match done {
        Ok(Ok(c)) => Ok(c.outcomes[0]),
        Ok(Err(reason)) => Err(error(StatusCode::INTERNAL_SERVER_ERROR, "internal", reason)),
        Err(_) => Err(error(StatusCode::GATEWAY_TIMEOUT, "timeout", "the event was not answered in time".into())),
    }
}
