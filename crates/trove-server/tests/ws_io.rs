//! The WebSocket listener's own runtime (docs/decisions/0055): its
//! connections are served by `trove-ws` threads, nicer than ingest's by
//! `ws_io_nice`, and its settings' bounds are refused. A test binary of
//! its own: the threads it counts are this one server's.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use trove_hunt::TreasureHunt;
use trove_server::{Server, ServerConfig};
use trove_shard::{Engine, EngineConfig};

mod ws_client;
use tungstenite::Message;
use ws_client::recv;

/// (name, niceness) of every thread of this process, from /proc.
fn threads() -> Vec<(String, i32)> {
    let mut out = Vec::new();
    for task in std::fs::read_dir("/proc/self/task").unwrap() {
        let dir = task.unwrap().path();
        // A thread may end between the listing and the reads.
        let (Ok(comm), Ok(stat)) =
            (std::fs::read_to_string(dir.join("comm")), std::fs::read_to_string(dir.join("stat")))
        else {
            continue;
        };
        // `pid (comm) state ...`: field 19, the niceness, is the 17th after
        // the name's closing parenthesis (a name may hold one itself).
        let after = &stat[stat.rfind(')').unwrap() + 1..];
        let nice = after.split_whitespace().nth(16).unwrap().parse().unwrap();
        out.push((comm.trim_end().to_string(), nice));
    }
    out
}

#[test]
fn websocket_connections_run_on_nicer_threads_of_their_own() {
    let engine =
        Arc::new(Engine::<TreasureHunt>::start(EngineConfig { shards: 1, ..EngineConfig::default() }).unwrap());
    let any = SocketAddr::from(([127, 0, 0, 1], 0));
    let config =
        ServerConfig { tcp_addr: any, ws_addr: Some(any), ws_io_workers: 2, ws_io_nice: 7, ..Default::default() };
    let server = Server::start(engine, config).unwrap();
    let (mut ws, _) = tungstenite::connect(format!("ws://{}/", server.ws_addr().unwrap())).unwrap();
    if let tungstenite::stream::MaybeTlsStream::Plain(s) = ws.get_ref() {
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    }
    ws.send(Message::Text(json!({"type": "hello", "producer_id": 5}).to_string().into())).unwrap();
    assert_eq!(recv(&mut ws)["type"], "welcome");

    // The connection is a task of the WebSocket runtime; the I/O runtime
    // holds its TCP accept loop alone.
    let ws_rt = server.ws_runtime_handle().expect("the WebSocket endpoint is on");
    assert_eq!(ws_rt.metrics().num_workers(), 2);
    let on_ws = ws_rt.metrics().num_alive_tasks();
    assert!(on_ws >= 2, "the accept loop and the connection: {on_ws} tasks on the WebSocket runtime");
    assert_eq!(server.runtime_handle().metrics().num_alive_tasks(), 1, "the I/O runtime: its TCP accept loop");

    // A thread names itself when it first runs: on a loaded machine the
    // idle I/O worker may not have yet.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let all = loop {
        let all = threads();
        let named = |name: &str| all.iter().filter(|(n, _)| n == name).count();
        if (named("trove-io") >= 1 && named("trove-ws") >= 2) || std::time::Instant::now() > deadline {
            break all;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let ingest: Vec<i32> = all.iter().filter(|(n, _)| n == "trove-io").map(|t| t.1).collect();
    let fan_out: Vec<i32> = all.iter().filter(|(n, _)| n == "trove-ws").map(|t| t.1).collect();
    assert_eq!(ingest.len(), 1, "one I/O worker: {all:?}");
    assert!(fan_out.len() >= 2, "two WebSocket workers: {all:?}");
    let base = ingest[0];
    assert!(fan_out.iter().all(|&n| n == (base + 7).min(19)), "niceness {base} + 7 on every trove-ws thread: {all:?}");

    // `/metrics` lists it as `runtime="ws"` beside the I/O runtime's.
    let text = trove_server::metrics::render(&trove_server::metrics::MetricsSources {
        engine: server.engine().clone(),
        server: server.metrics_handle(),
        data_plane: server.runtime_handle(),
        ws_plane: server.ws_runtime_handle(),
        control_plane: server.runtime_handle(),
    });
    assert!(text.lines().any(|l| l == "tokio_workers{runtime=\"ws\"} 2"), "{text}");
    assert!(text.lines().any(|l| l == "tokio_workers{runtime=\"data\"} 1"), "{text}");
    assert!(text.contains("tokio_worker_busy_seconds_total{runtime=\"ws\",worker=\"1\"}"), "{text}");

    // Shut down as before: the connection is told, and closed once the
    // client answers its Close, within the drain.
    let stopping = std::thread::spawn(move || {
        let t = std::time::Instant::now();
        server.shutdown(Duration::from_secs(10));
        t.elapsed()
    });
    assert_eq!(recv(&mut ws)["code"], "shutting_down");
    let closed = loop {
        match ws.read() {
            Ok(Message::Close(_)) => continue,
            Ok(m) => panic!("after shutting_down: {m:?}"),
            Err(e) => break e,
        }
    };
    assert!(
        matches!(closed, tungstenite::Error::ConnectionClosed | tungstenite::Error::Io(_)),
        "the close handshake: {closed}"
    );
    let took = stopping.join().unwrap();
    assert!(took < Duration::from_secs(10), "the drain ended with the connection, not at its deadline: {took:?}");
}

#[test]
fn the_websocket_runtime_settings_are_bounded() {
    let ok = ServerConfig::default();
    assert!(ok.validate().is_ok());
    let refused = |c: ServerConfig| c.validate().unwrap_err().to_string();
    assert_eq!(refused(ServerConfig { ws_io_workers: 0, ..ok.clone() }), "ws_io_workers must be in 1..=256");
    for nice in [20, -1] {
        let msg = refused(ServerConfig { ws_io_nice: nice, ..ok.clone() });
        assert!(msg.starts_with("ws_io_nice must be in 0..=19"), "{nice}: {msg}");
    }
    assert!(ServerConfig { ws_io_nice: 0, ..ok.clone() }.validate().is_ok(), "0: ingest's priority");
    assert!(ServerConfig { ws_io_nice: 19, ..ok }.validate().is_ok());
}
