//! Authentication and authorisation on every endpoint (issue 24,
//! docs/decisions/0041): each role against each action over TCP, WebSocket
//! and the control plane, allowed and refused; wrong tokens, hunt ranges,
//! a stolen producer id, version 1 with and without auth, a removed token,
//! and the per-token quotas.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use serde_json::{Value, json};
use trove_hunt::{HuntEvent, TreasureHunt};
use trove_proto::Frame;
use trove_proto::frame::{self, ErrorCode, HEADER_LEN, Hello, Kind, Sizes, hello_flags};
use trove_server::auth::{Auth, AuthTable, QuotaDefaults, TOKEN_LEN, hash_token, to_hex};
use trove_server::control::{ControlConfig, ControlInfo, ControlParts, ControlPlane};
use trove_server::{Server, ServerConfig};
use trove_shard::{Engine, EngineConfig};
use tungstenite::Message;

const SIZES: Sizes = Sizes { record: 32, outcome: 16 };

/// The tokens: 32 bytes of one value each.
const PRODUCER: [u8; TOKEN_LEN] = [1; TOKEN_LEN];
const PRODUCER_ANY: [u8; TOKEN_LEN] = [2; TOKEN_LEN];
const SPECTATOR: [u8; TOKEN_LEN] = [3; TOKEN_LEN];
const ADMIN: [u8; TOKEN_LEN] = [4; TOKEN_LEN];
const LIMITED: [u8; TOKEN_LEN] = [5; TOKEN_LEN];
const UNKNOWN: [u8; TOKEN_LEN] = [9; TOKEN_LEN];

fn entry(name: &str, role: &str, extra: &str, token: &[u8; TOKEN_LEN]) -> String {
    format!("[[token]]\nname = \"{name}\"\nrole = \"{role}\"\n{extra}sha256 = \"{}\"\n", to_hex(&hash_token(token)))
}

fn auth_file() -> String {
    entry("game", "producer", "hunts = [\"1-10\"]\n", &PRODUCER)
        + &entry("game-any", "producer", "", &PRODUCER_ANY)
        + &entry("watch", "spectator", "hunts = [\"1-10\"]\n", &SPECTATOR)
        + &entry("ops", "admin", "", &ADMIN)
        + &entry("slow", "producer", "events_per_second = 20\nconnections_max = 1\n", &LIMITED)
}

struct Harness {
    server: Option<Server<TreasureHunt>>,
    control: Option<ControlPlane>,
    auth: Option<Arc<Auth>>,
}

impl Harness {
    fn start(auth: bool) -> Harness {
        let engine = Arc::new(
            Engine::<TreasureHunt>::start(EngineConfig {
                shards: 2,
                queue_wait_max: Duration::from_secs(60),
                ..EngineConfig::default()
            })
            .unwrap(),
        );
        let auth =
            auth.then(|| Arc::new(Auth::from_table(AuthTable::parse(&auth_file()).unwrap(), QuotaDefaults::default())));
        let any = SocketAddr::from(([127, 0, 0, 1], 0));
        let config = ServerConfig { tcp_addr: any, ws_addr: Some(any), auth: auth.clone(), ..ServerConfig::default() };
        let server = Server::start(engine.clone(), config).unwrap();
        let info = ControlInfo {
            mode: "sharded",
            shards: 2,
            fsync: "none".into(),
            journal_dir: None,
            tcp_addr: server.tcp_addr(),
            ws_addr: server.ws_addr(),
        };
        let control = ControlPlane::start_on(
            std::net::TcpListener::bind(any).unwrap(),
            ControlParts {
                config: ControlConfig::default(),
                engine,
                server_metrics: server.metrics_handle(),
                data_plane: server.runtime_handle(),
                ws_plane: server.ws_runtime_handle(),
                info,
                ready: Arc::new(AtomicBool::new(true)),
                owners: None,
                auth: auth.clone(),
                metrics_only: false,
            },
        )
        .unwrap();
        Harness { server: Some(server), control: Some(control), auth }
    }

    fn tcp(&self) -> SocketAddr {
        self.server.as_ref().unwrap().tcp_addr()
    }

    fn ws(&self) -> SocketAddr {
        self.server.as_ref().unwrap().ws_addr().unwrap()
    }

    fn http(&self) -> SocketAddr {
        self.control.as_ref().unwrap().addr()
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        if let Some(s) = self.server.take() {
            s.shutdown(Duration::from_secs(2));
        }
        if let Some(c) = self.control.take() {
            c.shutdown();
        }
    }
}

// ---------------------------------------------------------------------------
// TCP, written against docs/protocol.md.

struct Raw {
    s: TcpStream,
    buf: Vec<u8>,
    next_seq: u64,
}

/// What the server answered.
#[derive(Debug, PartialEq, Eq)]
enum Answer {
    Welcome(u64),
    Ack,
    Busy(u32),
    Subscribed,
    Unsubscribed(u32),
    Update(u32),
    Error(ErrorCode),
    Closed,
    Other(Kind),
}

impl Raw {
    fn hello(addr: SocketAddr, hello: Hello) -> (Raw, Answer) {
        let s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut r = Raw { s, buf: Vec::new(), next_seq: 1 };
        let mut b = Vec::new();
        frame::encode_hello(&mut b, &hello);
        r.s.write_all(&b).unwrap();
        let a = r.answer();
        (r, a)
    }

    fn v2(addr: SocketAddr, token: &[u8; TOKEN_LEN], producer_id: u64) -> (Raw, Answer) {
        Raw::hello(addr, Hello::v2(hello_flags::OUTCOMES, producer_id, *token))
    }

    fn answer(&mut self) -> Answer {
        loop {
            if let Some((h, total)) = frame::split(&self.buf, 64 << 20).unwrap() {
                let body = self.buf[HEADER_LEN..total].to_vec();
                self.buf.drain(..total);
                return match frame::decode(h, &body, SIZES).unwrap() {
                    Frame::Welcome(w) => Answer::Welcome(w.producer_id),
                    Frame::Ack { .. } => Answer::Ack,
                    Frame::Busy { retry_after_ms, .. } => Answer::Busy(retry_after_ms),
                    Frame::Subscribed { .. } => Answer::Subscribed,
                    Frame::Unsubscribed { hunt } => Answer::Unsubscribed(hunt),
                    Frame::Update { hunt, .. } | Frame::Gap { hunt, .. } => Answer::Update(hunt),
                    Frame::Error { code, .. } => Answer::Error(ErrorCode::from_u16(code).unwrap()),
                    _ => Answer::Other(h.kind),
                };
            }
            let mut chunk = [0u8; 65536];
            match self.s.read(&mut chunk) {
                Ok(0) | Err(_) => return Answer::Closed,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    fn events(&mut self, events: &[HuntEvent]) -> Answer {
        let mut b = Vec::new();
        frame::encode_events(&mut b, self.next_seq, events);
        self.next_seq += events.len() as u64;
        self.s.write_all(&b).unwrap();
        self.answer()
    }

    fn subscribe(&mut self, hunt: u32) -> Answer {
        let mut b = Vec::new();
        frame::encode_u32_frame(&mut b, Kind::Subscribe, hunt);
        self.s.write_all(&b).unwrap();
        self.answer()
    }

    /// The connection ends (after any frames still to come).
    fn closes(&mut self) -> bool {
        for _ in 0..1000 {
            if self.answer() == Answer::Closed {
                return true;
            }
        }
        false
    }
}

fn join(hunt: u32) -> HuntEvent {
    HuntEvent::join(hunt, 1)
}

#[test]
fn tcp_every_role_against_every_action() {
    let h = Harness::start(true);
    let addr = h.tcp();

    // Version 1 carries no token: refused with auth on.
    let (mut r, a) = Raw::hello(addr, Hello::v1(0, 0));
    assert_eq!(a, Answer::Error(ErrorCode::Unauthorized));
    assert!(r.closes());
    // A token nobody has, and version 2 with an all-zero token.
    for token in [UNKNOWN, [0; TOKEN_LEN]] {
        let (mut r, a) = Raw::v2(addr, &token, 0);
        assert_eq!(a, Answer::Error(ErrorCode::Unauthorized));
        assert!(r.closes());
    }

    // Producer within its hunts: events yes, subscriptions no.
    let (mut p, a) = Raw::v2(addr, &PRODUCER, 0);
    assert!(matches!(a, Answer::Welcome(_)), "{a:?}");
    assert_eq!(p.events(&[join(1), join(10)]), Answer::Ack);
    // One event outside its ranges: the whole batch refused, the
    // connection stays.
    assert_eq!(p.events(&[join(2), join(11)]), Answer::Error(ErrorCode::Forbidden));
    assert_eq!(p.subscribe(1), Answer::Error(ErrorCode::Forbidden));
    assert_eq!(p.events(&[join(3)]), Answer::Ack);

    // A producer without ranges sends anywhere.
    let (mut any, _) = Raw::v2(addr, &PRODUCER_ANY, 0);
    assert_eq!(any.events(&[join(500)]), Answer::Ack);

    // Spectator: subscriptions within its hunts, no events.
    let (mut s, a) = Raw::v2(addr, &SPECTATOR, 0);
    assert!(matches!(a, Answer::Welcome(_)), "{a:?}");
    assert_eq!(s.subscribe(5), Answer::Subscribed);
    assert_eq!(s.subscribe(50), Answer::Error(ErrorCode::Forbidden));
    assert_eq!(s.events(&[join(5)]), Answer::Error(ErrorCode::Forbidden));

    // Admin: everything.
    let (mut adm, _) = Raw::v2(addr, &ADMIN, 0);
    assert_eq!(adm.events(&[join(700)]), Answer::Ack);
    assert_eq!(adm.subscribe(700), Answer::Subscribed);

    // Nothing of a refused batch reached the engine: only the 5 events
    // acknowledged were taken in.
    assert_eq!(h.server.as_ref().unwrap().metrics().events_in, 5);
    let auth = h.auth.as_ref().unwrap();
    let refusals: std::collections::HashMap<_, _> = auth.refusals().into_iter().collect();
    assert_eq!(refusals["missing_token"], 1);
    assert_eq!(refusals["wrong_token"], 2);
    assert_eq!(refusals["hunt"], 2);
    assert_eq!(refusals["role"], 2);
}

#[test]
fn tcp_version_1_is_accepted_with_auth_off() {
    let h = Harness::start(false);
    let (mut r, a) = Raw::hello(h.tcp(), Hello::v1(hello_flags::OUTCOMES, 0));
    assert!(matches!(a, Answer::Welcome(_)), "{a:?}");
    assert_eq!(r.events(&[join(1)]), Answer::Ack);
    assert_eq!(r.subscribe(1), Answer::Subscribed);
    // Version 2 too, its token ignored.
    let (mut r, a) = Raw::v2(h.tcp(), &UNKNOWN, 0);
    assert!(matches!(a, Answer::Welcome(_)), "{a:?}");
    assert_eq!(r.events(&[join(2)]), Answer::Ack);
}

#[test]
fn a_stolen_producer_id_is_refused() {
    let h = Harness::start(true);
    let (mut owner, a) = Raw::v2(h.tcp(), &PRODUCER_ANY, 4242);
    assert_eq!(a, Answer::Welcome(4242));
    assert_eq!(owner.events(&[join(1)]), Answer::Ack);
    drop(owner);
    // Another token, the same id: refused (after the first connection is
    // gone, too), so it cannot be answered with the owner's outcomes.
    let (mut thief, a) = Raw::v2(h.tcp(), &ADMIN, 4242);
    assert_eq!(a, Answer::Error(ErrorCode::Forbidden));
    assert!(thief.closes());
    // The owner comes back with it.
    let (_, a) = Raw::v2(h.tcp(), &PRODUCER_ANY, 4242);
    assert_eq!(a, Answer::Welcome(4242));
}

#[test]
fn a_removed_token_is_refused_and_closed_others_stay() {
    let h = Harness::start(true);
    let (mut p, _) = Raw::v2(h.tcp(), &PRODUCER_ANY, 0);
    assert_eq!(p.events(&[join(1)]), Answer::Ack);
    let (mut s, _) = Raw::v2(h.tcp(), &SPECTATOR, 0);
    assert_eq!(s.subscribe(1), Answer::Subscribed);
    // The file without `game-any`.
    let without = auth_file().replace(&entry("game-any", "producer", "", &PRODUCER_ANY), "");
    h.auth.as_ref().unwrap().replace(AuthTable::parse(&without).unwrap());
    // Refused at once, not at its next request: the batch sent now is
    // never answered.
    assert_eq!(p.events(&[join(1)]), Answer::Error(ErrorCode::Unauthorized));
    assert!(p.closes());
    // Others keep their connections.
    assert_eq!(s.subscribe(2), Answer::Subscribed);
    let (_, a) = Raw::v2(h.tcp(), &PRODUCER_ANY, 0);
    assert_eq!(a, Answer::Error(ErrorCode::Unauthorized));
}

/// The next answer that is not an update.
fn past_updates(r: &mut Raw, seen: &mut Vec<u32>) -> Answer {
    loop {
        match r.answer() {
            Answer::Update(hunt) => seen.push(hunt),
            other => return other,
        }
    }
}

#[test]
fn a_passive_tcp_subscriber_whose_token_is_removed_is_refused_and_closed() {
    let h = Harness::start(true);
    let (mut p, _) = Raw::v2(h.tcp(), &ADMIN, 0);
    let (mut s, _) = Raw::v2(h.tcp(), &SPECTATOR, 0);
    assert_eq!(s.subscribe(3), Answer::Subscribed);
    assert_eq!(p.events(&[join(3)]), Answer::Ack);
    assert_eq!(s.answer(), Answer::Update(3));
    // The subscriber sends nothing more; its token goes.
    let without = auth_file().replace(&entry("watch", "spectator", "hunts = [\"1-10\"]\n", &SPECTATOR), "");
    h.auth.as_ref().unwrap().replace(AuthTable::parse(&without).unwrap());
    assert_eq!(p.events(&[HuntEvent::join(3, 2)]), Answer::Ack);
    // Refused at once (an update already queued may come first), then
    // closed: nothing more for it.
    let mut seen = Vec::new();
    assert_eq!(past_updates(&mut s, &mut seen), Answer::Error(ErrorCode::Unauthorized));
    assert!(seen.len() <= 1, "{seen:?}");
    assert_eq!(s.answer(), Answer::Closed);
}

#[test]
fn a_passive_tcp_subscriber_narrowed_by_a_reload_loses_the_hunts_outside() {
    let h = Harness::start(true);
    let (mut p, _) = Raw::v2(h.tcp(), &ADMIN, 0);
    let (mut s, _) = Raw::v2(h.tcp(), &SPECTATOR, 0);
    assert_eq!(s.subscribe(2), Answer::Subscribed);
    assert_eq!(s.subscribe(5), Answer::Subscribed);
    // `watch` now covers hunt 5 alone.
    let narrowed = auth_file().replace(
        &entry("watch", "spectator", "hunts = [\"1-10\"]\n", &SPECTATOR),
        &entry("watch", "spectator", "hunts = [\"5\"]\n", &SPECTATOR),
    );
    h.auth.as_ref().unwrap().replace(AuthTable::parse(&narrowed).unwrap());
    // Unsolicited: UNSUBSCRIBED for hunt 2.
    let mut seen = Vec::new();
    assert_eq!(past_updates(&mut s, &mut seen), Answer::Unsubscribed(2));
    for i in 0..5 {
        assert_eq!(p.events(&[HuntEvent::join(2, 10 + i), HuntEvent::join(5, 10 + i)]), Answer::Ack);
    }
    // Hunt 5's updates keep coming, hunt 2's do not.
    let mut fives = 0;
    while fives < 5 {
        match s.answer() {
            Answer::Update(5) => fives += 1,
            other => panic!("{other:?}"),
        }
    }
    // And it may not subscribe to it again.
    assert_eq!(s.subscribe(2), Answer::Error(ErrorCode::Forbidden));
}

#[test]
fn a_spectator_never_takes_a_producers_id() {
    let h = Harness::start(true);
    let (owner, a) = Raw::v2(h.tcp(), &PRODUCER_ANY, 4343);
    assert_eq!(a, Answer::Welcome(4343));
    drop(owner);
    // A spectator presenting the id is given another one, and the id's
    // owner is not locked out (not `producer_in_use`).
    let (mut s, a) = Raw::v2(h.tcp(), &SPECTATOR, 4343);
    assert!(matches!(a, Answer::Welcome(id) if id != 4343), "{a:?}");
    let (_, a) = Raw::v2(h.tcp(), &PRODUCER_ANY, 4343);
    assert_eq!(a, Answer::Welcome(4343));
    assert_eq!(s.subscribe(1), Answer::Subscribed);
    // Over WebSocket too.
    let mut ws = ws_connect(h.ws(), Some(&SPECTATOR)).unwrap();
    ws_send(&mut ws, json!({"type": "hello", "producer_id": 4444}));
    let welcome = ws_recv_json(&mut ws);
    assert_eq!(welcome["type"], "welcome");
    assert_ne!(welcome["producer_id"], 4444);
    let mut owner = ws_connect(h.ws(), None).unwrap();
    ws_send(&mut owner, json!({"type": "hello", "token": to_hex(&PRODUCER_ANY), "producer_id": 4444}));
    let welcome = ws_recv_json(&mut owner);
    assert_eq!((welcome["type"].as_str(), welcome["producer_id"].as_u64()), (Some("welcome"), Some(4444)));
}

#[test]
fn the_rate_quota_answers_busy_with_a_hint_and_connections_are_capped() {
    let h = Harness::start(true);
    let (mut p, a) = Raw::v2(h.tcp(), &LIMITED, 0);
    assert!(matches!(a, Answer::Welcome(_)));
    // 20 events a second: a full second's worth passes, the next batch
    // finds the bucket in debt and is answered BUSY with a hint, and the
    // connection stays.
    let batch: Vec<HuntEvent> = (0..20).map(|i| HuntEvent::join(1, i)).collect();
    assert_eq!(p.events(&batch), Answer::Ack);
    let hinted = (0..1000).find_map(|_| match p.events(&batch) {
        Answer::Busy(ms) => Some(ms),
        Answer::Ack => None,
        other => panic!("{other:?}"),
    });
    let ms = hinted.expect("a BUSY within 1000 batches of 20 at 20 events/s");
    assert!((1..=trove_server::auth::QUOTA_RETRY_MS_MAX).contains(&ms), "{ms}");
    // After the hint, it is admitted again (polling, no tight deadline).
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        std::thread::sleep(Duration::from_millis(u64::from(ms)));
        p.next_seq -= 20; // BUSY: nothing applied; resend the same numbers.
        match p.events(&batch) {
            Answer::Ack => break,
            Answer::Busy(_) => assert!(std::time::Instant::now() < deadline, "never admitted again"),
            other => panic!("{other:?}"),
        }
    }
    // One connection per this token.
    let (mut second, a) = Raw::v2(h.tcp(), &LIMITED, 0);
    assert_eq!(a, Answer::Error(ErrorCode::TooManyConnections));
    assert!(second.closes());
    let refusals: std::collections::HashMap<_, _> = h.auth.as_ref().unwrap().refusals().into_iter().collect();
    assert!(refusals["rate"] >= 1 && refusals["connections"] == 1, "{refusals:?}");
}

// ---------------------------------------------------------------------------
// WebSocket.

type Ws = tungstenite::WebSocket<tungstenite::stream::MaybeTlsStream<TcpStream>>;

fn ws_connect(addr: SocketAddr, bearer: Option<&[u8; TOKEN_LEN]>) -> Result<Ws, u16> {
    ws_connect_with(addr, bearer.map(|t| format!("Bearer {}", to_hex(t))))
}

/// With this `Authorization` header value.
fn ws_connect_with(addr: SocketAddr, authorization: Option<String>) -> Result<Ws, u16> {
    use tungstenite::client::IntoClientRequest;
    let mut req = format!("ws://{addr}/").into_client_request().unwrap();
    if let Some(v) = authorization {
        req.headers_mut().insert("Authorization", v.parse().unwrap());
    }
    match tungstenite::connect(req) {
        Ok((ws, _)) => {
            if let tungstenite::stream::MaybeTlsStream::Plain(s) = ws.get_ref() {
                s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
            }
            Ok(ws)
        }
        Err(tungstenite::Error::Http(r)) => Err(r.status().as_u16()),
        Err(e) => panic!("{e}"),
    }
}

fn ws_send(ws: &mut Ws, v: Value) {
    ws.send(Message::Text(v.to_string().into())).unwrap();
}

/// The next message as JSON; `null` at the end.
fn ws_recv_json(ws: &mut Ws) -> Value {
    loop {
        match ws.read() {
            Ok(Message::Text(t)) => return serde_json::from_str(t.as_str()).unwrap(),
            Ok(Message::Close(_)) | Err(_) => return Value::Null,
            Ok(_) => {}
        }
    }
}

/// The next message's type (and code, for an error); "closed" at the end.
fn ws_recv(ws: &mut Ws) -> String {
    loop {
        match ws.read() {
            Ok(Message::Text(t)) => {
                let v: Value = serde_json::from_str(t.as_str()).unwrap();
                let kind = v["type"].as_str().unwrap().to_string();
                return match kind.as_str() {
                    "error" => format!("error {}", v["code"].as_str().unwrap()),
                    _ => kind,
                };
            }
            Ok(Message::Close(_)) | Err(_) => return "closed".into(),
            Ok(_) => {}
        }
    }
}

fn ws_events(hunt: u32) -> Value {
    json!({"type": "events", "events": [{"hunt": hunt, "player": 1, "action": "join"}]})
}

#[test]
fn websocket_every_role_against_every_action() {
    let h = Harness::start(true);
    let addr = h.ws();

    // Events or a subscription before an authenticated hello: refused.
    for first in [ws_events(1), json!({"type": "subscribe", "hunt": 1})] {
        let mut ws = ws_connect(addr, None).unwrap();
        ws_send(&mut ws, first);
        assert_eq!(ws_recv(&mut ws), "error unauthorized");
        assert_eq!(ws_recv(&mut ws), "closed");
    }
    // A hello with a wrong token, and with none.
    for hello in [json!({"type": "hello", "token": to_hex(&UNKNOWN)}), json!({"type": "hello"})] {
        let mut ws = ws_connect(addr, None).unwrap();
        ws_send(&mut ws, hello);
        assert_eq!(ws_recv(&mut ws), "error unauthorized");
    }
    // A wrong bearer on the upgrade: 401, never upgraded.
    assert_eq!(ws_connect(addr, Some(&UNKNOWN)).unwrap_err(), 401);

    // Producer, token in the hello.
    let mut p = ws_connect(addr, None).unwrap();
    ws_send(&mut p, json!({"type": "hello", "token": to_hex(&PRODUCER)}));
    assert_eq!(ws_recv(&mut p), "welcome");
    ws_send(&mut p, ws_events(2));
    assert_eq!(ws_recv(&mut p), "ack");
    ws_send(&mut p, ws_events(20));
    assert_eq!(ws_recv(&mut p), "error forbidden");
    ws_send(&mut p, json!({"type": "subscribe", "hunt": 2}));
    assert_eq!(ws_recv(&mut p), "error forbidden");

    // Spectator, token in the upgrade's header.
    let mut s = ws_connect(addr, Some(&SPECTATOR)).unwrap();
    ws_send(&mut s, json!({"type": "subscribe", "hunt": 2}));
    assert_eq!(ws_recv(&mut s), "subscribed");
    ws_send(&mut s, json!({"type": "subscribe", "hunt": 20}));
    assert_eq!(ws_recv(&mut s), "error forbidden");
    ws_send(&mut s, ws_events(2));
    // Events without a hello start a producer (its welcome), then the
    // batch is refused.
    assert_eq!(ws_recv(&mut s), "welcome");
    assert_eq!(ws_recv(&mut s), "error forbidden");

    // Admin: both.
    let mut a = ws_connect(addr, Some(&ADMIN)).unwrap();
    ws_send(&mut a, ws_events(300));
    assert_eq!(ws_recv(&mut a), "welcome");
    assert_eq!(ws_recv(&mut a), "ack");
    ws_send(&mut a, json!({"type": "subscribe", "hunt": 300}));
    assert_eq!(ws_recv(&mut a), "subscribed");
}

/// The next message that is not an update, as [`ws_recv`] names it.
fn ws_past_updates(ws: &mut Ws, seen: &mut Vec<u64>) -> String {
    loop {
        let v = ws_recv_json(ws);
        match v["type"].as_str() {
            Some("update" | "gap") => seen.push(v["hunt"].as_u64().unwrap()),
            Some("error") => return format!("error {}", v["code"].as_str().unwrap()),
            Some("unsubscribed") => return format!("unsubscribed {}", v["hunt"]),
            Some(other) => return other.to_string(),
            None => return "closed".into(),
        }
    }
}

#[test]
fn a_passive_websocket_subscriber_is_rechecked_at_a_reload() {
    let h = Harness::start(true);
    let (mut p, _) = Raw::v2(h.tcp(), &ADMIN, 0);
    // Two admins: one becomes a spectator limited to hunt 5 (its role
    // and its ranges change), the other is removed.
    let extra = entry("ops2", "admin", "", &[6; TOKEN_LEN]) + &entry("ops3", "admin", "", &[7; TOKEN_LEN]);
    h.auth.as_ref().unwrap().replace(AuthTable::parse(&(auth_file() + &extra)).unwrap());
    let mut narrowed = ws_connect(h.ws(), Some(&[6; TOKEN_LEN])).unwrap();
    let mut removed = ws_connect(h.ws(), Some(&[7; TOKEN_LEN])).unwrap();
    for ws in [&mut narrowed, &mut removed] {
        for hunt in [2, 5] {
            ws_send(ws, json!({"type": "subscribe", "hunt": hunt}));
            assert_eq!(ws_recv(ws), "subscribed");
        }
    }
    assert_eq!(p.events(&[join(2)]), Answer::Ack);
    // Passive from here on (WebSocket pings are answered by the library).
    let extra = entry("ops2", "spectator", "hunts = [\"5\"]\n", &[6; TOKEN_LEN]);
    h.auth.as_ref().unwrap().replace(AuthTable::parse(&(auth_file() + &extra)).unwrap());
    let mut seen = Vec::new();
    assert_eq!(ws_past_updates(&mut removed, &mut seen), "error unauthorized");
    assert_eq!(ws_recv(&mut removed), "closed");
    assert_eq!(ws_past_updates(&mut narrowed, &mut seen), "unsubscribed 2");
    for i in 0..5 {
        assert_eq!(p.events(&[HuntEvent::join(2, 10 + i), HuntEvent::join(5, 10 + i)]), Answer::Ack);
    }
    let mut fives = 0;
    while fives < 5 {
        let v = ws_recv_json(&mut narrowed);
        assert_eq!((v["type"].as_str(), v["hunt"].as_u64()), (Some("update"), Some(5)), "{v}");
        fives += v["entries"].as_array().map_or(1, Vec::len);
    }
}

#[test]
fn websocket_authorization_scheme_is_case_insensitive_and_one_token_only() {
    let h = Harness::start(true);
    for scheme in ["bearer", "BEARER", "Bearer"] {
        let mut ws = ws_connect_with(h.ws(), Some(format!("{scheme} {}", to_hex(&SPECTATOR)))).unwrap();
        ws_send(&mut ws, json!({"type": "subscribe", "hunt": 1}));
        assert_eq!(ws_recv(&mut ws), "subscribed", "{scheme}");
    }
    assert_eq!(ws_connect_with(h.ws(), Some(format!("Basic {}", to_hex(&SPECTATOR)))).unwrap_err(), 401);
    // The header's token and the hello's agree: welcome; differ: refused.
    let mut ws = ws_connect(h.ws(), Some(&PRODUCER_ANY)).unwrap();
    ws_send(&mut ws, json!({"type": "hello", "token": to_hex(&PRODUCER_ANY)}));
    assert_eq!(ws_recv(&mut ws), "welcome");
    let mut ws = ws_connect(h.ws(), Some(&PRODUCER)).unwrap();
    ws_send(&mut ws, json!({"type": "hello", "token": to_hex(&ADMIN)}));
    assert_eq!(ws_recv(&mut ws), "error unauthorized");
    assert_eq!(ws_recv(&mut ws), "closed");
}

// ---------------------------------------------------------------------------
// The control plane.

fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&[u8; TOKEN_LEN]>,
    body: Option<&str>,
) -> (u16, Value) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if let Some(t) = token {
        req.push_str(&format!("Authorization: Bearer {}\r\n", to_hex(t)));
    }
    if let Some(b) = body {
        req.push_str(&format!("Content-Type: application/json\r\nContent-Length: {}\r\n", b.len()));
    }
    req.push_str("\r\n");
    req.push_str(body.unwrap_or(""));
    s.write_all(req.as_bytes()).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let reply = trove_bench::http::parse_reply(&raw).unwrap();
    let json = serde_json::from_str(&reply.body).unwrap_or(Value::Null);
    (reply.status, json)
}

/// The status line's code alone (a HEAD answer has no body).
fn status_of(addr: SocketAddr, method: &str, path: &str, token: Option<&[u8; TOKEN_LEN]>) -> u16 {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if let Some(t) = token {
        req.push_str(&format!("Authorization: Bearer {}\r\n", to_hex(t)));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let line = String::from_utf8_lossy(&raw);
    line.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or_else(|| panic!("{line}"))
}

#[test]
fn control_plane_every_role_against_every_route() {
    let h = Harness::start(true);
    let addr = h.http();
    let create = |id: u32| {
        json!({"id": id, "config": {"width": 16, "height": 16, "seed": 1, "treasures_per_round": 4,
            "value_min": 1, "value_max": 2, "dig_cooldown_ms": 0, "step_max": 2, "players_max": 10}})
        .to_string()
    };
    // Probes stay open.
    for path in ["/health", "/ready"] {
        assert_eq!(http(addr, "GET", path, None, None).0, 200, "{path}");
    }
    // No token, a wrong one: 401 `unauthorized`, everywhere else.
    for path in ["/status", "/metrics", "/hunts", "/hunts/1", "/cluster", "/openapi.json", "/nowhere"] {
        for token in [None, Some(&UNKNOWN)] {
            let (status, body) = http(addr, "GET", path, token, None);
            assert_eq!((status, body["error"].as_str()), (401, Some("unauthorized")), "{path}");
        }
    }
    let (status, body) = http(addr, "POST", "/hunts", None, Some(&create(1)));
    assert_eq!((status, body["error"].as_str()), (401, Some("unauthorized")));

    // Writes: admin only.
    for token in [&PRODUCER, &PRODUCER_ANY, &SPECTATOR] {
        let (status, body) = http(addr, "POST", "/hunts", Some(token), Some(&create(2)));
        assert_eq!((status, body["error"].as_str()), (403, Some("forbidden")));
    }
    assert_eq!(http(addr, "POST", "/hunts", Some(&ADMIN), Some(&create(2))).0, 201);
    assert_eq!(http(addr, "POST", "/hunts", Some(&ADMIN), Some(&create(50))).0, 201);

    // Reads: spectator (within its hunts) and admin; not producers.
    for path in ["/status", "/metrics", "/hunts/2", "/hunts/2/leaderboard"] {
        for token in [&PRODUCER, &PRODUCER_ANY] {
            assert_eq!(http(addr, "GET", path, Some(token), None).0, 403, "{path}");
        }
        assert_eq!(http(addr, "GET", path, Some(&SPECTATOR), None).0, 200, "{path}");
        assert_eq!(http(addr, "GET", path, Some(&ADMIN), None).0, 200, "{path}");
    }
    assert_eq!(http(addr, "GET", "/hunts/50", Some(&SPECTATOR), None).0, 403);
    assert_eq!(http(addr, "GET", "/hunts/50", Some(&ADMIN), None).0, 200);
    // The ranges hold on the id as the router decodes it: percent-encoded
    // (`%35%30` is 50), with leading zeros, by HEAD, on every hunt route.
    let outside = [
        "/hunts/%35%30",
        "/hunts/050",
        "/hunts/%35%30/leaderboard",
        "/hunts/50/players/1",
        "/hunts/%35%30/players/1",
        "/hunts/%35%30/players/%31",
    ];
    for path in outside {
        for method in ["GET", "HEAD"] {
            assert_eq!(status_of(addr, method, path, Some(&SPECTATOR)), 403, "{method} {path}");
        }
        assert_ne!(status_of(addr, "GET", path, Some(&ADMIN)), 403, "{path}");
    }
    assert_eq!(status_of(addr, "HEAD", "/hunts/50", Some(&SPECTATOR)), 403);
    assert_eq!(status_of(addr, "HEAD", "/hunts/%35%30", Some(&ADMIN)), 200);
    // Inside its ranges, encoded or not: allowed.
    for path in ["/hunts/%32", "/hunts/%32/leaderboard"] {
        assert_eq!(status_of(addr, "GET", path, Some(&SPECTATOR)), 200, "{path}");
    }
    assert_eq!(status_of(addr, "GET", "/hunts/2/players/1", Some(&SPECTATOR)), 404);
    // The scheme's case does not matter.
    for scheme in ["bearer", "BEARER"] {
        let mut s = TcpStream::connect(addr).unwrap();
        let req = format!(
            "GET /hunts/2 HTTP/1.1\r\nHost: x\r\nAuthorization: {scheme} {}\r\nConnection: close\r\n\r\n",
            to_hex(&SPECTATOR)
        );
        s.write_all(req.as_bytes()).unwrap();
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).unwrap();
        assert!(raw.starts_with(b"HTTP/1.1 200"), "{scheme}: {}", String::from_utf8_lossy(&raw));
    }
    // A listing would show hunts outside the spectator's ranges.
    assert_eq!(http(addr, "GET", "/hunts", Some(&SPECTATOR), None).0, 403);
    assert_eq!(http(addr, "GET", "/hunts", Some(&ADMIN), None).0, 200);
    // The cluster map: any token (404 `not_a_cluster` here, past the gate).
    for token in [&PRODUCER, &SPECTATOR, &ADMIN] {
        assert_eq!(http(addr, "GET", "/cluster", Some(token), None).0, 404);
    }

    // The refusals are counted in /metrics.
    let text = {
        let mut s = TcpStream::connect(addr).unwrap();
        let req = format!(
            "GET /metrics HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nConnection: close\r\n\r\n",
            to_hex(&ADMIN)
        );
        s.write_all(req.as_bytes()).unwrap();
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).unwrap();
        trove_bench::http::parse_reply(&raw).unwrap().body
    };
    trove_bench::prometheus::promtool_check(&text);
    let sample = |reason: &str| {
        let line = format!("trove_auth_refusals_total{{reason=\"{reason}\"}} ");
        text.lines().find_map(|l| l.strip_prefix(line.as_str())).map(|v| v.parse::<u64>().unwrap())
    };
    assert_eq!(sample("missing_token"), Some(8));
    assert_eq!(sample("wrong_token"), Some(7));
    assert!(sample("role").unwrap() >= 11 && sample("hunt") == Some(2 + 13), "{text}");
}

/// `DELETE /hunts/{id}`: an admin's (an admin covers every hunt: the
/// auth file refuses ranges on one, so the range check the route makes
/// cannot refuse it).
#[test]
fn deleting_a_hunt_takes_an_admin_within_its_ranges() {
    let h = Harness::start(true);
    let addr = h.http();
    let create = |id: u32| {
        json!({"id": id, "config": {"width": 16, "height": 16, "seed": 1, "treasures_per_round": 4,
            "value_min": 1, "value_max": 2, "dig_cooldown_ms": 0, "step_max": 2, "players_max": 10}})
        .to_string()
    };
    for id in [3, 20] {
        assert_eq!(http(addr, "POST", "/hunts", Some(&ADMIN), Some(&create(id))).0, 201);
    }
    let (status, body) = http(addr, "DELETE", "/hunts/3", None, None);
    assert_eq!((status, body["error"].as_str()), (401, Some("unauthorized")));
    for token in [&PRODUCER, &PRODUCER_ANY, &SPECTATOR] {
        let (status, body) = http(addr, "DELETE", "/hunts/3", Some(token), None);
        assert_eq!((status, body["error"].as_str()), (403, Some("forbidden")));
    }
    // A spectator or a producer of the hunt's range may not either.
    let (status, _) = http(addr, "DELETE", "/hunts/%33", Some(&SPECTATOR), None);
    assert_eq!(status, 403);
    assert_eq!(http(addr, "GET", "/hunts/3", Some(&ADMIN), None).0, 200, "still there");
    assert_eq!(http(addr, "DELETE", "/hunts/3", Some(&ADMIN), None), (200, json!({"id": 3, "round": 1})));
    assert_eq!(http(addr, "DELETE", "/hunts/%32%30", Some(&ADMIN), None).0, 200);
    for id in [3, 20] {
        assert_eq!(http(addr, "DELETE", &format!("/hunts/{id}"), Some(&ADMIN), None).0, 404);
        assert_eq!(http(addr, "GET", &format!("/hunts/{id}"), Some(&ADMIN), None).0, 404);
    }
    // Over TCP and WebSocket: a delete event is an admin's too. A
    // producer's batch holding one is refused whole, even for its hunts.
    assert_eq!(http(addr, "POST", "/hunts", Some(&ADMIN), Some(&create(5))).0, 201);
    let (mut p, _) = Raw::v2(h.tcp(), &PRODUCER, 0);
    assert_eq!(p.events(&[join(5), HuntEvent::delete(5)]), Answer::Error(ErrorCode::Forbidden));
    assert_eq!(http(addr, "GET", "/hunts/5", Some(&ADMIN), None).1["players"], 0, "nothing of it applied");
    let mut ws = ws_connect(h.ws(), Some(&PRODUCER_ANY)).unwrap();
    ws_send(&mut ws, json!({"type": "events", "events": [{"hunt": 5, "action": "delete"}]}));
    assert_eq!(ws_recv(&mut ws), "welcome");
    assert_eq!(ws_recv(&mut ws), "error forbidden");
    let (mut admin, _) = Raw::v2(h.tcp(), &ADMIN, 0);
    assert_eq!(admin.events(&[HuntEvent::delete(5)]), Answer::Ack);
    assert_eq!(http(addr, "GET", "/hunts/5", Some(&ADMIN), None).0, 404);
}

/// A WebSocket subscriber of a deleted hunt gets its last update, then an
/// unasked `unsubscribed` with the reason; a hunt created again under the
/// id does not reach it.
#[test]
fn a_websocket_subscriber_of_a_deleted_hunt_sees_the_end() {
    let h = Harness::start(false);
    let addr = h.http();
    let create = json!({"id": 4, "config": {"width": 16, "height": 16, "seed": 1, "treasures_per_round": 4,
        "value_min": 1, "value_max": 2, "dig_cooldown_ms": 0, "step_max": 2, "players_max": 10}})
    .to_string();
    assert_eq!(http(addr, "POST", "/hunts", None, Some(&create)).0, 201);
    let mut sub = ws_connect(h.ws(), None).unwrap();
    ws_send(&mut sub, json!({"type": "subscribe", "hunt": 4}));
    assert_eq!(ws_recv(&mut sub), "subscribed");
    // The delete through the WebSocket endpoint itself, by a producer.
    let mut p = ws_connect(h.ws(), None).unwrap();
    ws_send(
        &mut p,
        json!({"type": "events", "events": [{"hunt": 4, "player": 1, "action": "join"},
        {"hunt": 4, "action": "delete"}, {"hunt": 4, "player": 2, "action": "join"}]}),
    );
    assert_eq!(ws_recv(&mut p), "welcome");
    let ack = ws_recv_json(&mut p);
    assert_eq!(ack["type"], "ack", "{ack}");
    assert_eq!(ack["outcomes"][1], json!({"outcome": "deleted", "round": 1}), "{ack}");
    assert_eq!(ack["outcomes"][2], json!({"outcome": "rejected", "reason": "unknown_hunt"}), "{ack}");
    let mut entries = Vec::new();
    let end = loop {
        let v = ws_recv_json(&mut sub);
        match v["type"].as_str() {
            Some("update") => entries.extend(v["entries"].as_array().unwrap().iter().cloned()),
            _ => break v,
        }
    };
    assert_eq!(end, json!({"type": "unsubscribed", "hunt": 4, "reason": "deleted"}));
    let last = entries.last().unwrap();
    assert_eq!(last["kind"], "broadcast", "{entries:?}");
    assert_eq!(last["body"]["broadcast"], "hunt_deleted", "{entries:?}");
    assert_eq!(entries[entries.len() - 2]["event"], json!({"hunt": 4, "action": "delete"}));
    // Created again and played: the old subscriber hears nothing of it.
    assert_eq!(http(addr, "POST", "/hunts", None, Some(&create)).0, 201);
    ws_send(&mut p, json!({"type": "events", "events": [{"hunt": 4, "player": 1, "action": "join"}]}));
    assert_eq!(ws_recv_json(&mut p)["outcomes"][0]["outcome"], "joined");
    ws_send(&mut sub, json!({"type": "ping", "nonce": 5}));
    assert_eq!(ws_recv_json(&mut sub), json!({"type": "pong", "nonce": 5}));
}

#[test]
fn with_auth_off_the_control_plane_is_open() {
    let h = Harness::start(false);
    assert_eq!(http(h.http(), "GET", "/status", None, None).0, 200);
    let (status, _) = http(h.http(), "GET", "/metrics", None, None);
    assert_eq!(status, 200);
}

// ---------------------------------------------------------------------------
// The Rust SDK.

#[test]
fn the_sdk_presents_its_token() {
    use trove_client::{ClientConfig, ClientError, ErrorCode as Code, Producer, Subscriber, Token};
    let h = Harness::start(true);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let addr = h.tcp().to_string();
    rt.block_on(async {
        // No token: version 1, refused, not retried.
        let e = Producer::<TreasureHunt>::connect(ClientConfig::new(addr.clone())).await.unwrap_err();
        assert_eq!(e.server_code(), Some(Code::Unauthorized), "{e}");
        // A producer's token: events acknowledged.
        let config = ClientConfig { token: Some(Token(PRODUCER)), ..ClientConfig::new(addr.clone()) };
        let (mut p, mut acks) = Producer::<TreasureHunt>::connect(config).await.unwrap();
        p.send_wait(join(1)).await.unwrap();
        p.flush().await.unwrap();
        assert!(acks.next().await.unwrap().is_ok());
        // Outside its hunts: that batch is refused, typed.
        p.send_wait(join(99)).await.unwrap();
        p.flush().await.unwrap();
        match acks.next().await.unwrap() {
            Err(ClientError::BatchRefused { error, .. }) => assert_eq!(error.code(), Some(Code::Forbidden)),
            other => panic!("{other:?}"),
        }
        // A spectator's token subscribes.
        let config = ClientConfig { token: Some(Token(SPECTATOR)), ..ClientConfig::new(addr.clone()) };
        let mut s = Subscriber::<TreasureHunt>::connect(config).await.unwrap();
        s.subscribe(1).await.unwrap();
        // Outside its hunts: that subscription alone is refused, typed.
        let e = s.subscribe(50).await.unwrap_err();
        assert_eq!(e.server_code(), Some(Code::Forbidden), "{e}");
        s.subscribe(2).await.unwrap();
    });
}
