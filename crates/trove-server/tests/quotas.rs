//! Per-address and per-connection quotas over real sockets: connections
//! per source address (TCP and WebSocket together, another address
//! unaffected; 127.0.0.2 is another source address on Linux's loopback),
//! and subscriptions per connection on both endpoints.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use trove_hunt::TreasureHunt;
use trove_proto::frame::{self, ErrorCode, HEADER_LEN, Hello, Kind};
use trove_server::{Server, ServerConfig};
use trove_shard::{Engine, EngineConfig};
use tungstenite::Message;

const ME: [u8; 4] = [127, 0, 0, 1];
const OTHER: [u8; 4] = [127, 0, 0, 2];

fn start(config: ServerConfig) -> Server<TreasureHunt> {
    let engine = Arc::new(
        Engine::<TreasureHunt>::start(EngineConfig {
            shards: 1,
            queue_wait_max: Duration::from_secs(60),
            ..EngineConfig::default()
        })
        .unwrap(),
    );
    let any = SocketAddr::from((ME, 0));
    Server::start(engine, ServerConfig { tcp_addr: any, ws_addr: Some(any), ..config }).unwrap()
}

/// A blocking socket to `to` from `from` (any port).
fn connect_from(from: [u8; 4], to: SocketAddr) -> TcpStream {
    let rt = tokio::runtime::Builder::new_current_thread().enable_io().build().unwrap();
    let s = rt.block_on(async {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(SocketAddr::from((from, 0))).unwrap();
        socket.connect(to).await.unwrap()
    });
    let s = s.into_std().unwrap();
    s.set_nonblocking(false).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s
}

/// The next frame (kind, body), or None at the end.
fn read_frame(s: &mut TcpStream, buf: &mut Vec<u8>) -> Option<(Kind, Vec<u8>)> {
    loop {
        if let Some((h, total)) = frame::split(buf, 1 << 20).unwrap() {
            let body = buf[HEADER_LEN..total].to_vec();
            buf.drain(..total);
            return Some((h.kind, body));
        }
        let mut chunk = [0u8; 4096];
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// A TCP producer from `from`, past its WELCOME.
fn tcp_hello(from: [u8; 4], to: SocketAddr) -> (TcpStream, Vec<u8>) {
    let mut s = connect_from(from, to);
    let mut b = Vec::new();
    frame::encode_hello(&mut b, &Hello::v1(0, 0));
    s.write_all(&b).unwrap();
    let mut buf = Vec::new();
    match read_frame(&mut s, &mut buf) {
        Some((Kind::Welcome, _)) => (s, buf),
        other => panic!("expected WELCOME, got {other:?}"),
    }
}

/// A TCP connection from `from` that is refused: its ERROR's code and
/// message, then the close.
fn tcp_refused(from: [u8; 4], to: SocketAddr) -> (ErrorCode, String) {
    let mut s = connect_from(from, to);
    let mut buf = Vec::new();
    let (kind, body) = read_frame(&mut s, &mut buf).expect("an ERROR before the close");
    assert_eq!(kind, Kind::Error, "refused with an ERROR");
    let code = ErrorCode::from_u16(u16::from_le_bytes([body[0], body[1]])).unwrap();
    let message = String::from_utf8_lossy(&body[4..]).into_owned();
    assert!(read_frame(&mut s, &mut buf).is_none(), "then closed");
    (code, message)
}

type Ws = tungstenite::WebSocket<TcpStream>;

/// A WebSocket from `from`, upgraded.
fn ws_open(from: [u8; 4], to: SocketAddr) -> Ws {
    let s = connect_from(from, to);
    let (ws, _) = tungstenite::client(format!("ws://{to}/"), s).expect("upgraded");
    ws
}

/// A WebSocket connection from `from` that is refused before its request
/// is read: the raw answer (a 503 with the error's JSON), then the close.
/// The request is not sent, so that the close cannot reset the answer.
fn ws_refused(from: [u8; 4], to: SocketAddr) -> String {
    let mut s = connect_from(from, to);
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    String::from_utf8_lossy(&answer).into_owned()
}

fn ws_send(ws: &mut Ws, v: Value) {
    ws.send(Message::Text(v.to_string().into())).unwrap();
}

fn ws_recv(ws: &mut Ws) -> Value {
    loop {
        match ws.read().unwrap() {
            Message::Text(t) => return serde_json::from_str(t.as_str()).unwrap(),
            Message::Close(c) => panic!("closed: {c:?}"),
            _ => {}
        }
    }
}

fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !f() {
        assert!(Instant::now() < deadline, "{what} never happened");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn connections_per_address_count_tcp_and_websocket_together_and_another_address_is_not_refused() {
    let server = start(ServerConfig { connections_per_address_max: 2, ..ServerConfig::default() });
    let (tcp, ws) = (server.tcp_addr(), server.ws_addr().unwrap());
    // One of each from this address: its two.
    let (held_tcp, _) = tcp_hello(ME, tcp);
    let held_ws = ws_open(ME, ws);

    // A third from here is refused on both listeners, typed.
    let (code, message) = tcp_refused(ME, tcp);
    assert_eq!(code, ErrorCode::TooManyConnections, "{message}");
    assert!(message.contains("connections_per_address_max 2"), "{message}");
    let answer = ws_refused(ME, ws);
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("\"code\":\"too_many_connections\""), "{answer}");
    let m = server.metrics();
    assert_eq!((m.connections_refused_address, m.connections_refused), (2, 2), "{m:?}");

    // Another address has its own count: served on both.
    let (mut other_tcp, _) = tcp_hello(OTHER, tcp);
    let mut other_ws = ws_open(OTHER, ws);
    ws_send(&mut other_ws, json!({"type": "ping", "nonce": 7}));
    assert_eq!(ws_recv(&mut other_ws)["type"], "pong");
    let mut b = Vec::new();
    frame::encode_u64_frame(&mut b, Kind::Ping, 9);
    other_tcp.write_all(&b).unwrap();
    assert!(matches!(read_frame(&mut other_tcp, &mut Vec::new()), Some((Kind::Pong, _))));

    // A connection that closes gives its address's place back.
    drop(held_tcp);
    eventually("the closed connection's place is given back", || server.metrics().connections_open == 3);
    let (_again, _) = tcp_hello(ME, tcp);
    assert_eq!(tcp_refused(ME, tcp).0, ErrorCode::TooManyConnections, "and the cap holds again");
    drop(held_ws);
    server.shutdown(Duration::from_secs(5));
}

#[test]
fn a_flood_from_one_address_is_refused_and_leaves_room_for_others() {
    let server = start(ServerConfig { connections_per_address_max: 4, ..ServerConfig::default() });
    let tcp = server.tcp_addr();
    let held: Vec<_> = (0..4).map(|_| tcp_hello(ME, tcp)).collect();
    const FLOOD: u64 = 300;
    for _ in 0..FLOOD {
        assert_eq!(tcp_refused(ME, tcp).0, ErrorCode::TooManyConnections);
    }
    let m = server.metrics();
    assert_eq!(m.connections_refused_address, FLOOD, "{m:?}");
    assert_eq!(m.connections_open, 4, "the flood holds nothing: {m:?}");
    // The connection limit (1024) was never what refused them: another
    // address still gets in.
    let _other = tcp_hello(OTHER, tcp);
    drop(held);
    server.shutdown(Duration::from_secs(5));
}

#[test]
fn subscriptions_per_connection_are_capped_on_tcp() {
    let server = start(ServerConfig { subscriptions_max: 2, ..ServerConfig::default() });
    let (mut s, mut buf) = tcp_hello(ME, server.tcp_addr());
    let subscribe = |s: &mut TcpStream, buf: &mut Vec<u8>, kind: Kind, hunt: u32| {
        let mut b = Vec::new();
        frame::encode_u32_frame(&mut b, kind, hunt);
        s.write_all(&b).unwrap();
        read_frame(s, buf).expect("an answer")
    };
    assert_eq!(subscribe(&mut s, &mut buf, Kind::Subscribe, 1).0, Kind::Subscribed);
    assert_eq!(subscribe(&mut s, &mut buf, Kind::Subscribe, 2).0, Kind::Subscribed);
    // The same hunt again is not another subscription.
    assert_eq!(subscribe(&mut s, &mut buf, Kind::Subscribe, 2).0, Kind::Subscribed);
    let (kind, body) = subscribe(&mut s, &mut buf, Kind::Subscribe, 3);
    assert_eq!(kind, Kind::Error);
    assert_eq!(u16::from_le_bytes([body[0], body[1]]), ErrorCode::TooManySubscriptions as u16);
    // Refused, not closed: one fewer makes room.
    assert_eq!(subscribe(&mut s, &mut buf, Kind::Unsubscribe, 1).0, Kind::Unsubscribed);
    assert_eq!(subscribe(&mut s, &mut buf, Kind::Subscribe, 3).0, Kind::Subscribed);
    let m = server.metrics();
    assert_eq!(m.subscribers, 2, "{m:?}");
    let refused = m.errors.iter().find(|(c, _)| *c == "too_many_subscriptions").unwrap().1;
    assert_eq!(refused, 1);
    drop(s);
    eventually("the subscriptions end with the connection", || server.metrics().subscribers == 0);
    server.shutdown(Duration::from_secs(5));
}

#[test]
fn subscriptions_per_connection_are_capped_on_websocket() {
    let server = start(ServerConfig { subscriptions_max: 2, ..ServerConfig::default() });
    let mut ws = ws_open(ME, server.ws_addr().unwrap());
    for hunt in [1, 2, 2] {
        ws_send(&mut ws, json!({"type": "subscribe", "hunt": hunt}));
        assert_eq!(ws_recv(&mut ws)["type"], "subscribed");
    }
    ws_send(&mut ws, json!({"type": "subscribe", "hunt": 3}));
    let e = ws_recv(&mut ws);
    assert_eq!((e["type"].as_str(), e["code"].as_str()), (Some("error"), Some("too_many_subscriptions")), "{e}");
    ws_send(&mut ws, json!({"type": "unsubscribe", "hunt": 1}));
    assert_eq!(ws_recv(&mut ws)["type"], "unsubscribed");
    ws_send(&mut ws, json!({"type": "subscribe", "hunt": 3}));
    assert_eq!(ws_recv(&mut ws)["type"], "subscribed");
    assert_eq!(server.metrics().subscribers, 2);
    drop(ws);
    eventually("the subscriptions end with the connection", || server.metrics().subscribers == 0);
    server.shutdown(Duration::from_secs(5));
}

#[test]
fn per_address_limit_must_be_at_least_one() {
    let c = ServerConfig { connections_per_address_max: 0, ..ServerConfig::default() };
    assert!(c.validate().unwrap_err().to_string().contains("connections_per_address_max"));
}

/// Whether the server closed `s` (the end of the stream, or a reset)
/// before `wait` passed.
fn closed_within(s: &mut TcpStream, wait: Duration) -> bool {
    s.set_read_timeout(Some(wait)).unwrap();
    let mut buf = [0u8; 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                return false;
            }
            Err(_) => return true,
        }
    }
}

#[test]
fn on_the_control_plane_one_address_evicts_only_its_own_connections() {
    use trove_server::control::{ControlConfig, ControlInfo, ControlPlane};
    let server = start(ServerConfig { ws_addr: None, ..ServerConfig::default() });
    let limits = ControlConfig {
        connections_max: 4,
        connections_per_address_max: 2,
        header_timeout: Duration::from_secs(120),
        live_streams_max: ControlConfig::live_streams_default(4),
        ..ControlConfig::default()
    };
    let info = ControlInfo {
        mode: "sharded",
        shards: 1,
        fsync: "none".into(),
        journal_dir: None,
        tcp_addr: server.tcp_addr(),
        ws_addr: None,
    };
    let ready = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let control = ControlPlane::start(
        SocketAddr::from((ME, 0)),
        limits,
        server.engine().clone(),
        server.metrics_handle(),
        server.runtime_handle(),
        info,
        ready,
    )
    .unwrap();
    let http = control.addr();
    // Another address's connection, idle (waiting for its headers): the
    // one that has waited longest.
    let mut other = connect_from(OTHER, http);
    eventually("the other address's connection is admitted", || control.connections_open() == 1);
    // A flood of idle connections from this address: each new one past
    // its two closes this address's oldest, never the other's.
    let mut mine = Vec::new();
    for i in 0..12 {
        mine.push(connect_from(ME, http));
        eventually("the flood's connection is admitted", || control.connections_open() == (i + 2).min(3));
    }
    assert!(!closed_within(&mut other, Duration::from_millis(300)), "another address's connection was evicted");
    assert!(control.connections_open() <= 3, "{} open", control.connections_open());
    // Its connection still gets answers.
    other.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
    let mut answer = String::new();
    other.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    other.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    // Of this address's, all but the last two were closed to make room.
    let closed = mine.iter_mut().map(|s| closed_within(s, Duration::from_secs(2))).filter(|c| *c).count();
    assert_eq!(closed, 10, "the flood keeps its own two");
    drop(mine);
    control.shutdown();
    server.shutdown(Duration::from_secs(5));
}
