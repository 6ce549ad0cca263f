//! `trove serve --log-format json`: every line on stderr is one JSON
//! object, and the connection lines say who connected, how each
//! connection ended and why anyone was refused (docs/decisions/0043),
//! with a flood of refusals logged in bounded lines and memory.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use serde_json::Value;
use trove_proto::frame::{self, Hello};

mod common;

use common::Serve;

/// Every line of `stderr` as JSON; a line that is not one fails the test.
fn json_lines(stderr: &str) -> Vec<Value> {
    stderr
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}"));
            for field in ["timestamp", "level", "target", "message"] {
                assert!(v.get(field).is_some(), "no `{field}` in {l}");
            }
            v
        })
        .collect()
}

fn message(v: &Value) -> &str {
    v["message"].as_str().unwrap_or("")
}

/// The address a line whose message starts with `marker` announced.
fn announced(lines: &[Value], marker: &str) -> Option<SocketAddr> {
    lines.iter().find_map(|v| message(v).strip_prefix(marker)?.split('/').next()?.parse().ok())
}

/// Starts `trove serve --log-format json ARGS` in memory on ports of its
/// own; returns it with its TCP, WebSocket and control addresses.
fn serve_json(extra: &[&str]) -> (Serve, SocketAddr, SocketAddr, SocketAddr) {
    let mut args = vec![
        "--no-journal",
        "--tcp",
        "127.0.0.1:0",
        "--ws",
        "127.0.0.1:0",
        "--control",
        "127.0.0.1:0",
        "--log-format",
        "json",
    ];
    args.extend_from_slice(extra);
    let mut serve = Serve::spawn(&args);
    let deadline = Instant::now() + common::READY_TIMEOUT;
    loop {
        let lines = json_lines(&serve.stderr_now());
        let tcp = announced(&lines, "protocol v1 on tcp://");
        let ws = announced(&lines, "websocket (JSON) on ws://");
        let control = announced(&lines, "control plane on http://");
        if let (Some(tcp), Some(ws), Some(control)) = (tcp, ws, control) {
            return (serve, tcp, ws, control);
        }
        assert!(serve.exited().is_none(), "trove serve exited:\n{}", serve.stderr_now());
        assert!(Instant::now() < deadline, "never ready:\n{}", serve.stderr_now());
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The connection lines (target `trove::connection`) so far.
fn connection_lines(serve: &Serve) -> Vec<Value> {
    json_lines(&serve.stderr_now()).into_iter().filter(|v| v["target"] == "trove::connection").collect()
}

/// Waits (generously) until a connection line matches `want`; returns it.
fn wait_line(serve: &Serve, what: &str, want: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(v) = connection_lines(serve).into_iter().find(|v| want(v)) {
            return v;
        }
        assert!(Instant::now() < deadline, "no line for {what}; stderr:\n{}", serve.stderr_now());
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn is(v: &Value, msg: &str, listener: &str, reason: Option<&str>) -> bool {
    message(v) == msg && v["listener"] == listener && reason.is_none_or(|r| v["reason"] == r)
}

/// A TCP producer past its WELCOME (read as raw bytes: the frame's kind
/// is not what this test is about).
fn tcp_hello(addr: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut b = Vec::new();
    frame::encode_hello(&mut b, &Hello::v1(0, 0));
    s.write_all(&b).unwrap();
    let mut head = [0u8; 8];
    s.read_exact(&mut head).expect("a WELCOME");
    assert_eq!(head[4], frame::Kind::Welcome as u8, "WELCOME");
    let mut body = vec![0u8; u32::from_le_bytes(head[..4].try_into().unwrap()) as usize];
    s.read_exact(&mut body).unwrap();
    s
}

/// A connection that the server closes first (refused): reads to the end.
fn refused(addr: SocketAddr) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    assert!(!answer.is_empty(), "refused with an answer");
}

#[test]
fn json_lines_say_who_connected_how_they_left_and_why_anyone_was_refused() {
    let dir = common::scratch_dir("logging-json");
    let config = dir.join("trove.toml");
    std::fs::write(&config, "[limits]\nhandshake_timeout_ms = 500\n").unwrap();
    let (mut serve, tcp, ws, control) =
        serve_json(&["--config", config.to_str().unwrap(), "--connections-per-address-max", "2"]);

    // A producer that says HELLO, sends a PING and leaves.
    let mut p = tcp_hello(tcp);
    let mut ping = Vec::new();
    frame::encode_u64_frame(&mut ping, frame::Kind::Ping, 1);
    p.write_all(&ping).unwrap();
    let mut pong = [0u8; 16];
    p.read_exact(&mut pong).unwrap();
    let opened = wait_line(&serve, "the producer's open", |v| is(v, "connection opened", "tcp", None));
    assert!(opened["peer"].as_str().unwrap().starts_with("127.0.0.1:"), "{opened}");
    assert!(opened["producer"].as_u64().is_some(), "the producer id: {opened}");
    let conn = opened["conn"].as_u64().expect("a connection id");
    drop(p);
    let closed = wait_line(&serve, "the producer's close", |v| {
        is(v, "connection closed", "tcp", None) && v["conn"].as_u64() == Some(conn)
    });
    assert_eq!(closed["reason"], "peer_closed", "{closed}");
    assert_eq!(closed["frames_in"], 2, "HELLO and PING: {closed}");
    assert!(closed["bytes_in"].as_u64() > Some(0) && closed["bytes_out"].as_u64() > Some(0), "{closed}");
    assert_eq!(closed["peer"], opened["peer"]);

    // One that never says HELLO: refused at the handshake's deadline.
    let mut silent = TcpStream::connect(tcp).unwrap();
    let timeout =
        wait_line(&serve, "the handshake timeout", |v| is(v, "connection refused", "tcp", Some("handshake_timeout")));
    assert!(timeout["conn"].as_u64().is_some(), "{timeout}");
    let _ = silent.read_to_end(&mut Vec::new());
    drop(silent);
    // A closed connection holds its place until its task has ended.
    let deadline = Instant::now() + Duration::from_secs(60);
    while common::metric(control, "trove_connections_open") != Some(0) {
        assert!(Instant::now() < deadline, "the closed connections' places never came back");
        std::thread::sleep(Duration::from_millis(20));
    }

    // Two held from this address (TCP and WebSocket), then a third on
    // each listener: refused for the address.
    let held_tcp = tcp_hello(tcp);
    let held_ws = common::ws_connect(ws, Duration::from_secs(30));
    wait_line(&serve, "the WebSocket's open", |v| is(v, "connection opened", "ws", None));
    refused(tcp);
    refused(ws);
    for listener in ["tcp", "ws"] {
        let line =
            wait_line(&serve, "the address refusal", |v| is(v, "connection refused", listener, Some("address_limit")));
        assert_eq!(line["level"], "WARN", "{line}");
        assert!(line["peer"].as_str().unwrap().starts_with("127.0.0.1:"), "{line}");
    }

    // The control plane: one request, one connection.
    let reply = trove_bench::http::get(control, "/health", Duration::from_secs(30)).unwrap();
    assert_eq!(reply.status, 200);
    let c = wait_line(&serve, "the control connection's close", |v| is(v, "connection closed", "control", None));
    assert_eq!((c["reason"].as_str(), c["requests"].as_u64()), (Some("done"), Some(1)), "{c}");
    assert!(
        connection_lines(&serve).iter().any(|v| is(v, "connection opened", "control", None) && v["conn"] == c["conn"])
    );

    // Shutdown closes what is held, and says so.
    let (status, stderr) = serve.terminate(Duration::from_secs(60));
    assert!(status.success(), "{status}\n{stderr}");
    let lines = json_lines(&stderr);
    for listener in ["tcp", "ws"] {
        assert!(
            lines.iter().any(|v| is(v, "connection closed", listener, Some("shutting_down"))),
            "no {listener} shutdown close in:\n{stderr}"
        );
    }
    assert!(lines.iter().any(|v| message(v).starts_with("stopped;")), "{stderr}");
    // Nothing was logged per frame or per batch at the default level.
    assert!(lines.iter().all(|v| v["level"] != "DEBUG" && v["level"] != "TRACE"), "{stderr}");
    drop((held_tcp, held_ws));
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn a_flood_of_refusals_is_logged_in_bounded_lines_and_leaves_memory_bounded() {
    let (mut serve, tcp, _ws, control) = serve_json(&["--connections-per-address-max", "1"]);
    let held = tcp_hello(tcp);
    let started = Instant::now();
    // Warm up (buffers, the allocator's pages), then measure.
    for _ in 0..200 {
        refused(tcp);
    }
    let rss_before = serve.rss();
    const FLOOD: u64 = 3000;
    for _ in 0..FLOOD {
        refused(tcp);
    }
    let flood_secs = started.elapsed().as_secs() + 1;
    let rss_after = serve.rss();
    assert!(
        rss_after <= rss_before + (16 << 20),
        "RSS grew from {} to {} MiB over {FLOOD} refused connections",
        rss_before >> 20,
        rss_after >> 20
    );
    let total = FLOOD + 200;
    assert_eq!(common::metric(control, "trove_connections_refused_address_total"), Some(total));
    assert_eq!(common::metric(control, "trove_connections_open"), Some(1), "the flood holds no slot");

    // Once its second has passed, the next connection to open reports
    // what was left out (no refusal comes after the flood).
    std::thread::sleep(Duration::from_millis(1100));
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(60);
    while common::metric(control, "trove_connections_open") != Some(0) {
        assert!(Instant::now() < deadline, "the held connection's place never came back");
        std::thread::sleep(Duration::from_millis(20));
    }
    let again = tcp_hello(tcp);
    // At most 10 lines a second, and with the suppressed counts they
    // carry (the next line of the reason, or a summary line) they account
    // for every refusal.
    let refused_now = common::metric(control, "trove_connections_refused_address_total").unwrap();
    let account = || {
        let all = connection_lines(&serve);
        let refusal = |v: &&Value| is(v, "connection refused", "tcp", Some("address_limit"));
        let summary = |v: &&Value| message(v) == "connection refusals suppressed" && v["reason"] == "address_limit";
        let logged = all.iter().filter(refusal).count() as u64;
        let suppressed: u64 =
            all.iter().filter(|v| refusal(v) || summary(v)).map(|v| v["suppressed"].as_u64().unwrap()).sum();
        (logged, suppressed)
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    let (logged, suppressed) = loop {
        let (logged, suppressed) = account();
        if logged + suppressed == refused_now || Instant::now() > deadline {
            break (logged, suppressed);
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(logged + suppressed, refused_now, "every refusal is a line or counted in one");
    let secs = started.elapsed().as_secs() + 1;
    assert!(logged <= 10 * (secs + 1), "{logged} refusal lines in about {secs} s");
    assert!(suppressed > 0, "a flood of {FLOOD} in {flood_secs} s is mostly suppressed");
    drop(again);
    let (status, stderr) = serve.terminate(Duration::from_secs(60));
    assert!(status.success(), "{status}\n{stderr}");
}

#[test]
fn the_log_level_filters_lines_and_a_bad_one_is_refused() {
    // Connection lines only from warnings up: the opens and closes go.
    let (mut serve, tcp, _ws, _control) = serve_json(&["--log-level", "info,trove::connection=warn"]);
    drop(tcp_hello(tcp));
    let (status, stderr) = serve.terminate(Duration::from_secs(60));
    assert!(status.success(), "{status}\n{stderr}");
    let lines = json_lines(&stderr);
    assert!(lines.iter().all(|v| message(v) != "connection opened" && message(v) != "connection closed"), "{stderr}");
    assert!(lines.iter().any(|v| message(v).starts_with("stopped;")), "the rest stays at info: {stderr}");

    let out = common::trove(&["serve", "--no-journal", "--log-level", "trove=loud"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--log-level `trove=loud`"), "{stderr}");
}
