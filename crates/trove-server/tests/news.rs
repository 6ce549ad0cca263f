//! Broadcasts-only subscriptions over real sockets (TCP and WebSocket):
//! such a subscriber gets exactly the hunt's BROADCAST entries, in order,
//! numbered consecutively by themselves, while a full subscriber of the
//! same hunt gets every entry.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use trove_hunt::{HuntBroadcast, HuntConfig, HuntEvent, TreasureHunt};
use trove_proto::Frame;
use trove_proto::frame::{self, HEADER_LEN, Hello, Sizes};
use trove_proto::wire::UpdateEntry;
use trove_server::{Server, ServerConfig};
use trove_shard::{Engine, EngineConfig};

mod ws_client;
use tungstenite::Message;
use ws_client::{Ws, recv as ws_recv};

const SIZES: Sizes = Sizes { record: 32, outcome: 16 };
const HUNT: u32 = 1;

fn start() -> Server<TreasureHunt> {
    start_with(ServerConfig::default())
}

fn start_with(config: ServerConfig) -> Server<TreasureHunt> {
    let engine = EngineConfig { shards: 2, queue_wait_max: Duration::from_secs(60), ..EngineConfig::default() };
    let engine = Arc::new(Engine::<TreasureHunt>::start(engine).unwrap());
    let any = SocketAddr::from(([127, 0, 0, 1], 0));
    Server::start(engine, ServerConfig { tcp_addr: any, ws_addr: Some(any), ..config }).unwrap()
}

/// A small map, dense with treasures: digging every cell finds them all.
fn small_hunt() -> HuntConfig {
    HuntConfig {
        width: 8,
        height: 8,
        seed: 11,
        treasures_per_round: 16,
        value_min: 1,
        value_max: 9,
        dig_cooldown_ms: 0,
        step_max: 1,
        players_max: 100,
    }
}

/// What a subscription got, in order.
#[derive(Debug, PartialEq)]
enum Got {
    Applied,
    Broadcast(HuntBroadcast),
    Gap { first_missed: u64, missed: u64 },
}

/// A blocking protocol client, written against the spec.
struct Raw {
    s: TcpStream,
    buf: Vec<u8>,
    next_seq: u64,
}

impl Raw {
    fn hello(addr: SocketAddr) -> Raw {
        let s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        s.set_nodelay(true).unwrap();
        let mut r = Raw { s, buf: Vec::new(), next_seq: 1 };
        let mut b = Vec::new();
        frame::encode_hello(&mut b, &Hello::v1(0, 0));
        r.s.write_all(&b).unwrap();
        r.frame(|f| assert!(matches!(f, Frame::Welcome(_)), "{f:?}"));
        r
    }

    fn frame<T>(&mut self, f: impl FnOnce(Frame<'_>) -> T) -> T {
        loop {
            if let Some((h, total)) = frame::split(&self.buf, 64 << 20).unwrap() {
                let body = self.buf[HEADER_LEN..total].to_vec();
                self.buf.drain(..total);
                return f(frame::decode(h, &body, SIZES).unwrap());
            }
            let mut chunk = [0u8; 65536];
            match self.s.read(&mut chunk) {
                Ok(0) => panic!("closed"),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) => panic!("no frame within the read timeout: {e}"),
            }
        }
    }

    fn subscribe(&mut self, hunt: u32, broadcasts_only: bool) -> u64 {
        let mut b = Vec::new();
        frame::encode_subscribe(&mut b, hunt, broadcasts_only);
        self.s.write_all(&b).unwrap();
        self.frame(|f| match f {
            Frame::Subscribed { next_seq, .. } => next_seq,
            other => panic!("expected SUBSCRIBED, got {other:?}"),
        })
    }

    /// Sends a batch and waits for its ACK.
    fn events(&mut self, events: &[HuntEvent]) {
        let mut b = Vec::new();
        frame::encode_events(&mut b, self.next_seq, events);
        self.next_seq += events.len() as u64;
        self.s.write_all(&b).unwrap();
        self.frame(|f| assert!(matches!(f, Frame::Ack { .. }), "{f:?}"));
    }

    /// Reads UPDATE and GAP frames until the stream reaches `until`,
    /// checking the numbering has no hole a GAP does not name.
    fn read_until(&mut self, next: &mut u64, until: u64, got: &mut Vec<Got>) {
        while *next < until {
            self.frame(|f| match f {
                Frame::Update { first_seq, entries, .. } => {
                    assert_eq!(first_seq, *next, "in order, with no hole");
                    for e in trove_proto::wire::decode_entries::<TreasureHunt>(entries).unwrap() {
                        *next += 1;
                        got.push(match e {
                            UpdateEntry::Applied { .. } => Got::Applied,
                            UpdateEntry::Broadcast(b) => Got::Broadcast(b),
                        });
                    }
                }
                Frame::Gap { first_missed, missed, .. } => {
                    assert_eq!(first_missed, *next, "a gap names the hole");
                    *next += missed;
                    got.push(Got::Gap { first_missed, missed });
                }
                other => panic!("expected UPDATE or GAP, got {other:?}"),
            });
        }
    }
}

/// Every cell of the map dug by player 1, walking it row by row (moves of
/// one step; the join's position does not matter: a move off the map is
/// rejected and the walk goes on).
fn sweep(config: &HuntConfig) -> Vec<Vec<HuntEvent>> {
    let mut batches = vec![vec![HuntEvent::join(HUNT, 1)]];
    // To the top left corner first.
    let home: Vec<_> = (0..config.width.max(config.height))
        .flat_map(|_| [HuntEvent::move_by(HUNT, 1, -1, 0), HuntEvent::move_by(HUNT, 1, 0, -1)])
        .collect();
    batches.push(home);
    for y in 0..config.height {
        let mut row = Vec::new();
        let dx = if y % 2 == 0 { 1 } else { -1 };
        for x in 0..config.width {
            row.push(HuntEvent::dig(HUNT, 1));
            if x + 1 < config.width {
                row.push(HuntEvent::move_by(HUNT, 1, dx, 0));
            }
        }
        row.push(HuntEvent::move_by(HUNT, 1, 0, 1));
        batches.push(row);
    }
    batches
}

fn broadcasts(got: &[Got]) -> Vec<&HuntBroadcast> {
    got.iter()
        .filter_map(|g| match g {
            Got::Broadcast(b) => Some(b),
            Got::Applied => None,
            Got::Gap { .. } => panic!("no gap expected: {got:?}"),
        })
        .collect()
}

fn ws_connect(server: &Server<TreasureHunt>) -> Ws {
    let (ws, _) = tungstenite::connect(format!("ws://{}/", server.ws_addr().unwrap())).unwrap();
    if let tungstenite::stream::MaybeTlsStream::Plain(s) = ws.get_ref() {
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    }
    ws
}

#[test]
fn a_broadcasts_only_subscriber_gets_exactly_the_hunts_broadcasts_in_order_over_tcp_and_websocket() {
    let server = start();
    let addr = server.tcp_addr();
    let mut full = Raw::hello(addr);
    let mut news = Raw::hello(addr);
    let mut full_next = full.subscribe(HUNT, false);
    let news_first = news.subscribe(HUNT, true);
    let mut news_next = news_first;
    let mut ws = ws_connect(&server);
    ws.send(Message::Text(json!({"type": "subscribe", "hunt": HUNT, "broadcasts_only": true}).to_string().into()))
        .unwrap();
    let v = ws_recv(&mut ws);
    assert_eq!(v["type"], "subscribed", "{v}");
    let ws_first = v["next_seq"].as_u64().unwrap();
    // A broadcasts_only that is not a boolean is malformed.
    let mut bad = ws_connect(&server);
    bad.send(Message::Text(json!({"type": "subscribe", "hunt": HUNT, "broadcasts_only": 1}).to_string().into()))
        .unwrap();
    let v = ws_recv(&mut bad);
    assert_eq!((v["type"].as_str(), v["code"].as_str()), (Some("error"), Some("malformed")), "{v}");

    let config = small_hunt();
    let mut p = Raw::hello(addr);
    p.events(&[HuntEvent::create(HUNT, config)]);
    let mut events = 1;
    for batch in sweep(&config) {
        events += batch.len() as u64;
        p.events(&batch);
    }
    // The full stream: every event once, and the broadcasts among them.
    let mut got_full = Vec::new();
    while got_full.iter().filter(|g| **g == Got::Applied).count() < events as usize {
        let until = full_next + 1;
        full.read_until(&mut full_next, until, &mut got_full);
    }
    let want = broadcasts(&got_full);
    assert!(want.len() >= 4, "the sweep found treasures: {} broadcasts", want.len());

    let mut got_news = Vec::new();
    news.read_until(&mut news_next, news_first + want.len() as u64, &mut got_news);
    assert_eq!(broadcasts(&got_news), want, "TCP: the broadcasts, in order, nothing else");

    let mut got_ws = Vec::new();
    let mut ws_next = ws_first;
    while got_ws.len() < want.len() {
        let v = ws_recv(&mut ws);
        assert_eq!(v["type"], "update", "{v}");
        assert_eq!(v["first_seq"].as_u64(), Some(ws_next), "WebSocket: in order, with no hole");
        for e in v["entries"].as_array().unwrap() {
            assert_eq!(e["kind"], "broadcast", "WebSocket: broadcasts only: {e}");
            got_ws.push(e["body"].clone());
            ws_next += 1;
        }
    }
    assert_eq!(got_ws.len(), want.len());
    for (w, b) in got_ws.iter().zip(&want) {
        let name = match b {
            HuntBroadcast::TreasureFound { .. } => "treasure_found",
            HuntBroadcast::LeaderboardChanged { .. } => "leaderboard_changed",
            HuntBroadcast::RoundFinished { .. } => "round_finished",
            HuntBroadcast::HuntDeleted { .. } => "hunt_deleted",
        };
        assert_eq!(w["broadcast"], name, "WebSocket: the same broadcasts in the same order");
    }
    server.shutdown(Duration::from_secs(5));
}

#[test]
fn past_a_tiny_fan_out_budget_producers_are_all_answered_and_subscribers_get_gaps() {
    // One update a second for all subscribers together, one wakeup a
    // second: the first chunk goes out, the rest are shed.
    let server = start_with(ServerConfig {
        subscriber_updates_per_sec_max: 1,
        subscriber_wakeups_per_sec_max: 1,
        ..ServerConfig::default()
    });
    let addr = server.tcp_addr();
    let mut full = Raw::hello(addr);
    let mut news = Raw::hello(addr);
    let full_first = full.subscribe(HUNT, false);
    let news_first = news.subscribe(HUNT, true);
    let config = small_hunt();
    let mut p = Raw::hello(addr);
    // Every batch answered (`events` waits for each ACK), however little
    // the subscribers may have.
    p.events(&[HuntEvent::create(HUNT, config)]);
    let mut events = 1;
    for batch in sweep(&config) {
        events += batch.len() as u64;
        p.events(&batch);
    }
    let broadcasts = server.engine().hub().metrics().news_published;
    assert!(broadcasts >= 4, "{broadcasts} broadcasts");
    // The full subscriber: its stream accounts for every event, but most
    // of it as gaps. (Broadcasts are entries too: the stream is longer
    // than the events.)
    let mut got = Vec::new();
    let mut next = full_first;
    full.read_until(&mut next, full_first + events + broadcasts, &mut got);
    let gaps = got.iter().filter(|g| matches!(g, Got::Gap { .. })).count();
    let applied = got.iter().filter(|g| **g == Got::Applied).count() as u64;
    assert!(gaps >= 1 && applied < events, "{gaps} gaps, {applied} of {events} events delivered");
    // The broadcasts-only subscriber likewise, in its own numbering.
    let mut got = Vec::new();
    let mut next = news_first;
    news.read_until(&mut next, news_first + broadcasts, &mut got);
    assert!(got.iter().any(|g| matches!(g, Got::Gap { .. })), "{got:?}");
    let m = server.engine().hub().metrics();
    assert!(m.updates_shed > 0, "{m:?}");
    server.shutdown(Duration::from_secs(5));
}
