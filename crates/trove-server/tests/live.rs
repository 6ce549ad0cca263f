//! The dashboard's side of the control plane, over real sockets: `/`
//! and its files, and `GET /live`, the server-sent-events feed of the
//! figures (docs/control.md): its snapshots move with the events applied,
//! its cap, the header deadline still applying to its request, and its
//! end when the plane stops. The browser side is dashboard/test/.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use trove_hunt::TreasureHunt;
use trove_server::control::{ControlConfig, ControlInfo, ControlPlane};
use trove_server::{Server, ServerConfig};
use trove_shard::{Engine, EngineConfig};
use tungstenite::Message;

struct Harness {
    engine: Arc<Engine<TreasureHunt>>,
    server: Option<Server<TreasureHunt>>,
    control: Option<ControlPlane>,
    http: SocketAddr,
    ws: SocketAddr,
}

impl Harness {
    fn start(limits: ControlConfig) -> Harness {
        let engine = EngineConfig { shards: 2, queue_wait_max: Duration::from_secs(60), ..EngineConfig::default() };
        let engine = Arc::new(Engine::<TreasureHunt>::start(engine).expect("engine"));
        let local = SocketAddr::from(([127, 0, 0, 1], 0));
        let config = ServerConfig { tcp_addr: local, ws_addr: Some(local), ..ServerConfig::default() };
        let server = Server::start(engine.clone(), config).expect("data plane");
        let info = ControlInfo {
            mode: "sharded",
            shards: 2,
            fsync: "none".into(),
            journal_dir: None,
            tcp_addr: server.tcp_addr(),
            ws_addr: server.ws_addr(),
        };
        let control = ControlPlane::start(
            local,
            limits,
            engine.clone(),
            server.metrics_handle(),
            server.runtime_handle(),
            info,
            Arc::new(AtomicBool::new(true)),
        )
        .expect("control plane");
        let (http, ws) = (control.addr(), server.ws_addr().unwrap());
        Harness { engine, server: Some(server), control: Some(control), http, ws }
    }

    fn get(&self, path: &str) -> trove_bench::http::Reply {
        trove_bench::http::get(self.http, path, Duration::from_secs(30)).unwrap_or_else(|e| panic!("GET {path}: {e}"))
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        if let Some(s) = self.server.take() {
            s.shutdown(Duration::from_secs(5));
        }
        if let Some(c) = self.control.take() {
            c.shutdown();
        }
        let _ = &self.engine;
    }
}

/// A `GET /live` stream, read as hostile: bounded chunks, a deadline on
/// every read.
struct Live {
    r: BufReader<TcpStream>,
}

/// One chunk of the stream is one snapshot (a few KiB); more is an error.
const CHUNK_BYTES_MAX: usize = 1 << 20;

/// What opening a stream got: the stream, or a refusal's status and body.
enum Opened {
    Stream(Live),
    Refused(u16, String),
}

fn open_live(addr: SocketAddr) -> Opened {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(b"GET /live HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n").unwrap();
    let mut r = BufReader::new(s);
    let mut status = String::new();
    r.read_line(&mut status).unwrap();
    let code: u16 = status.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or_else(|| panic!("{status:?}"));
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        if line == "\r\n" || line.is_empty() {
            break;
        }
        headers.push(line.trim_end().to_ascii_lowercase());
    }
    if code != 200 {
        let len = headers
            .iter()
            .find_map(|h| h.strip_prefix("content-length: "))
            .and_then(|n| n.parse::<usize>().ok())
            .unwrap_or(0);
        let mut body = vec![0; len.min(CHUNK_BYTES_MAX)];
        r.read_exact(&mut body).unwrap();
        return Opened::Refused(code, String::from_utf8_lossy(&body).into_owned());
    }
    assert!(headers.iter().any(|h| h == "content-type: text/event-stream"), "{headers:?}");
    assert!(headers.iter().any(|h| h == "transfer-encoding: chunked"), "{headers:?}");
    Opened::Stream(Live { r })
}

impl Live {
    /// The next snapshot, or `None` at the end of the stream (the last
    /// chunk, or the connection closed).
    fn next(&mut self) -> Option<Value> {
        let mut size = String::new();
        if self.r.read_line(&mut size).ok()? == 0 {
            return None;
        }
        let size = usize::from_str_radix(size.trim_end(), 16).unwrap_or_else(|_| panic!("chunk size {size:?}"));
        if size == 0 {
            return None;
        }
        assert!(size <= CHUNK_BYTES_MAX, "a chunk of {size} bytes");
        let mut chunk = vec![0; size + 2];
        self.r.read_exact(&mut chunk).ok()?;
        let text = std::str::from_utf8(&chunk[..size]).expect("UTF-8");
        // One event a chunk: `data: {json}\n\n`.
        let json = text.strip_prefix("data: ").and_then(|t| t.strip_suffix("\n\n"));
        let json = json.unwrap_or_else(|| panic!("not one server-sent event: {text:?}"));
        Some(serde_json::from_str(json).unwrap_or_else(|e| panic!("not JSON ({e}): {json}")))
    }

    fn expect(opened: Opened) -> Live {
        match opened {
            Opened::Stream(l) => l,
            Opened::Refused(code, body) => panic!("/live refused: {code} {body}"),
        }
    }
}

/// Sends one batch over the WebSocket endpoint and waits for its `ack`.
fn send_events(ws: &mut tungstenite::WebSocket<tungstenite::stream::MaybeTlsStream<TcpStream>>, events: Vec<Value>) {
    ws.send(Message::text(json!({"type": "events", "events": events}).to_string())).unwrap();
    loop {
        let Message::Text(t) = ws.read().unwrap() else { continue };
        let v: Value = serde_json::from_str(&t).unwrap();
        match v["type"].as_str() {
            Some("ack") => return,
            Some("welcome") => {}
            _ => panic!("expected an ack: {v}"),
        }
    }
}

#[test]
fn the_page_and_its_files_are_served() {
    let h = Harness::start(ControlConfig::default());
    let r = h.get("/");
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.header("content-type").unwrap_or_default().starts_with("text/html"));
    assert!(r.body.contains("/dashboard/app.js") && r.body.contains("/dashboard/app.css"), "{}", r.body);
    for (file, media) in [("app.js", "text/javascript"), ("app.css", "text/css")] {
        let r = h.get(&format!("/dashboard/{file}"));
        assert_eq!(r.status, 200, "{file}: {}", r.body);
        assert!(r.header("content-type").unwrap_or_default().starts_with(media), "{file}");
        assert!(r.body.len() > 100, "{file} is {} bytes", r.body.len());
    }
    for path in ["/dashboard/nope.js", "/dashboard/", "/dashboard/../Cargo.toml"] {
        assert_eq!(h.get(path).status, 404, "{path}");
    }
}

#[test]
fn the_feed_moves_with_the_events_applied() {
    let h = Harness::start(ControlConfig::default());
    let mut live = Live::expect(open_live(h.http));
    // The first snapshot has no interval behind it: rates of 0.
    let first = live.next().expect("a first snapshot");
    assert_eq!(first["events_applied_per_s"], 0.0, "{first}");
    assert_eq!(first["hunts"], json!([]), "{first}");
    assert_eq!(first["shards"].as_array().map(Vec::len), Some(2), "{first}");

    let (mut ws, _) = tungstenite::connect(format!("ws://{}/", h.ws)).unwrap();
    let config = json!({"width": 64, "height": 64, "seed": 7, "treasures_per_round": 64, "value_min": 1,
        "value_max": 9, "dig_cooldown_ms": 0, "step_max": 4, "players_max": 1000});
    send_events(&mut ws, vec![json!({"hunt": 1, "action": "create", "config": config})]);
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut player = 0u32;
    let mut seen = (false, false, false);
    while !(seen.0 && seen.1 && seen.2) {
        assert!(Instant::now() < deadline, "the feed never showed the events: {seen:?}");
        // Keep events flowing, so that every interval has some.
        if player < 1000 {
            let joins = (player..player + 50).map(|p| json!({"hunt": 1, "player": p, "action": "join"})).collect();
            send_events(&mut ws, joins);
            player += 50;
        } else {
            send_events(&mut ws, (0..50).map(|p| json!({"hunt": 1, "player": p, "action": "scan"})).collect());
        }
        let s = live.next().expect("the stream goes on");
        let rates = ["events_in_per_s", "events_acknowledged_per_s", "events_applied_per_s"];
        if rates.iter().all(|r| s[*r].as_f64().unwrap_or(0.0) > 0.0) && s["ack_latency_us"]["p99"].as_f64() > Some(0.0)
        {
            assert!(s["ack_latency_us"]["p50"].as_f64() <= s["ack_latency_us"]["p99"].as_f64(), "{s}");
            assert!(s["io"]["polls_per_event"].as_f64().is_some(), "{s}");
            seen.0 = true;
        }
        if let Some(hunt) = s["hunts"].as_array().and_then(|h| h.first()) {
            assert_eq!(hunt["id"], 1, "{s}");
            if hunt["players"].as_u64() == Some(u64::from(player.min(1000)))
                && hunt["events_per_s"].as_f64() > Some(0.0)
            {
                seen.1 = true;
            }
        }
        if s["shards"].as_array().is_some_and(|sh| sh.iter().any(|x| x["busy_ratio"].as_f64() > Some(0.0))) {
            seen.2 = true;
        }
    }
}

#[test]
fn streams_are_capped_and_a_closed_one_gives_its_place_back() {
    let limits = ControlConfig { live_streams_max: 2, ..ControlConfig::default() };
    let h = Harness::start(limits);
    let mut a = Live::expect(open_live(h.http));
    let mut b = Live::expect(open_live(h.http));
    assert!(a.next().is_some() && b.next().is_some());
    match open_live(h.http) {
        Opened::Refused(503, body) => assert!(body.contains("too_many_streams"), "{body}"),
        Opened::Refused(code, body) => panic!("expected 503 too_many_streams, got {code} {body}"),
        Opened::Stream(_) => panic!("a third stream was let in past live_streams_max = 2"),
    }
    // Requests still get through at the cap.
    assert_eq!(h.get("/health").status, 200);
    drop(b);
    // The server sees the close when it next writes; then the place is free.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut c = loop {
        match open_live(h.http) {
            Opened::Stream(l) => break l,
            Opened::Refused(503, _) => {
                assert!(Instant::now() < deadline, "the closed stream never gave its place back");
                std::thread::sleep(Duration::from_millis(100));
            }
            Opened::Refused(code, body) => panic!("{code} {body}"),
        }
    };
    assert!(a.next().is_some() && c.next().is_some());
    let metrics = h.get("/metrics").body;
    assert!(metrics.contains("trove_control_live_streams_open 2\n"), "{metrics}");
    let refused =
        metrics.lines().find(|l| l.starts_with("trove_control_live_streams_closed_total{reason=\"refused\"}"));
    let refused: u64 = refused.and_then(|l| l.rsplit(' ').next()).and_then(|n| n.parse().ok()).unwrap_or(0);
    assert!(refused >= 1, "{metrics}");
}

#[test]
fn a_live_request_is_under_the_header_deadline_and_streams_end_when_the_plane_stops() {
    let limits = ControlConfig { header_timeout: Duration::from_secs(1), ..ControlConfig::default() };
    let mut h = Harness::start(limits);
    // Headers never finished: closed unanswered after the deadline, like
    // any other request.
    let mut stalled = TcpStream::connect(h.http).unwrap();
    stalled.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    stalled.write_all(b"GET /live HTTP/1.1\r\nHost: 127.0.0.1\r\n").unwrap();
    let mut buf = [0u8; 64];
    assert_eq!(stalled.read(&mut buf).unwrap_or(0), 0, "a request without its end of headers was answered");

    // A stream lives past the header deadline (its reader keeps reading)...
    let mut live = Live::expect(open_live(h.http));
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(3) {
        assert!(live.next().is_some(), "the stream ended after {:?}", started.elapsed());
    }
    // ...and ends when the plane stops.
    let control = h.control.take().unwrap();
    let stopper = std::thread::spawn(move || control.shutdown());
    let deadline = Instant::now() + Duration::from_secs(60);
    while live.next().is_some() {
        assert!(Instant::now() < deadline, "the stream outlived the plane");
    }
    stopper.join().unwrap();
}

#[test]
fn the_stream_cap_is_below_the_connection_cap_and_zero_refuses_every_stream() {
    let with = |connections_max, live_streams_max| {
        ControlConfig { connections_max, live_streams_max, ..ControlConfig::default() }.validate()
    };
    assert!(with(128, 16).is_ok());
    assert!(with(128, 0).is_ok());
    let refused = with(128, 128).expect_err("a stream cap at the connection cap");
    assert!(refused.to_string().contains("control_live_streams_max"), "{refused}");
    assert_eq!(ControlConfig::live_streams_default(128), 16);
    assert_eq!(ControlConfig::live_streams_default(8), 4);
    assert_eq!(ControlConfig::live_streams_default(1), 0);
    assert!(with(1, ControlConfig::live_streams_default(1)).is_ok());

    let h = Harness::start(ControlConfig { live_streams_max: 0, ..ControlConfig::default() });
    match open_live(h.http) {
        Opened::Refused(503, body) => assert!(body.contains("too_many_streams"), "{body}"),
        Opened::Refused(code, body) => panic!("expected 503 too_many_streams, got {code} {body}"),
        Opened::Stream(_) => panic!("a stream was let in with live_streams_max = 0"),
    }
}

/// A reader that stops reading is closed as stalled within a bound that
/// does not depend on how far the kernel would grow the socket's send
/// buffer: the stream's buffer is capped, so the stall deadline starts
/// once a few snapshots are queued, not after megabytes of them.
#[test]
fn a_reader_that_stops_reading_is_closed_as_stalled() {
    let h = Harness::start(ControlConfig::default());
    // A hundred hunts: every snapshot carries their summaries (kilobytes).
    let (mut ws, _) = tungstenite::connect(format!("ws://{}/", h.ws)).unwrap();
    let config = json!({"width": 64, "height": 64, "seed": 7, "treasures_per_round": 64, "value_min": 1,
        "value_max": 9, "dig_cooldown_ms": 0, "step_max": 4, "players_max": 1000});
    send_events(&mut ws, (1..=100).map(|hunt| json!({"hunt": hunt, "action": "create", "config": config})).collect());
    let mut live = Live::expect(open_live(h.http));
    assert!(live.next().is_some());
    // From now on nothing is read.
    let started = Instant::now();
    let stalled = |h: &Harness| {
        let metrics = h.get("/metrics").body;
        let line =
            metrics.lines().find(|l| l.starts_with("trove_control_live_streams_closed_total{reason=\"stalled\"}"));
        line.and_then(|l| l.rsplit(' ').next()).and_then(|n| n.parse::<u64>().ok()).unwrap_or(0)
    };
    // Uncapped, the kernel's buffer grew by about 20 KB/s here for minutes
    // before the deadline even started; capped, the stream is closed in
    // LIVE_STALL_TIMEOUT plus the seconds a few snapshots take.
    while stalled(&h) == 0 {
        assert!(started.elapsed() < Duration::from_secs(120), "a stream nobody reads was never closed");
        std::thread::sleep(Duration::from_millis(500));
    }
    drop(live);
}
