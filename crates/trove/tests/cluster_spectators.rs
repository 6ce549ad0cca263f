//! Spectators on any node of a cluster (issue 23, docs/cluster.md
//! "Spectators on any node"): real `nats-server`, real `trove serve
//! --cluster` nodes, producers through the SDK's `ClusterProducer`, and
//! subscribers speaking the protocol (TCP) and JSON (WebSocket) to nodes
//! that do not own the hunt they watch.
//!
//! What a spectator is promised: every update of the hunt, in order,
//! numbered without holes except where a gap notice says what was lost;
//! the same updates as a spectator on the owner; and across an owner's
//! death or a clean hand-over, the stream goes on (with a gap at the
//! owner change), never repeating an update.
//!
//! Skipped, with a message, only when `nats-server` is not installed.

mod common;

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::Ordering::{Relaxed, SeqCst};
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Listening, Serve};
use serde_json::{Value, json};
use trove_bench::nats::{NatsServer, nats_server_or_skip};
use trove_client::{ClusterConfig, ClusterProducer};
use trove_hunt::{Action, HuntConfig, HuntEvent, TreasureHunt};
use trove_proto::WireGame;
use trove_proto::frame::{self, Frame, HEADER_LEN, Hello, Kind, Sizes};
use trove_proto::wire::{UpdateEntry, decode_entries};

/// Every wait's bound: the tests check behaviour, not speed.
const DEADLINE: Duration = Duration::from_secs(60);
/// The cluster's partitions (the default).
const PARTITIONS: usize = 8;

fn sizes() -> Sizes {
    Sizes { record: <HuntEvent as trove_core::Record>::SIZE, outcome: TreasureHunt::OUTCOME_SIZE }
}

/// A trove node of the cluster, with TCP, WebSocket and control listeners.
struct Node {
    serve: Serve,
    at: Listening,
}

impl Node {
    fn start(url: &str, name: &str) -> Node {
        let mut serve = Serve::spawn(&[
            "--cluster",
            url,
            "--node",
            name,
            "--tcp",
            "127.0.0.1:0",
            "--ws",
            "127.0.0.1:0",
            "--control",
            "127.0.0.1:0",
            "--lease-ms",
            "1500",
            "--snapshot-ms",
            "2000",
        ]);
        let at = serve.wait_listening();
        Node { serve, at }
    }
}

fn get_json(addr: SocketAddr, path: &str) -> Option<Value> {
    let r = trove_bench::http::get(addr, path, Duration::from_secs(5)).ok()?;
    (r.status == 200).then(|| serde_json::from_str(&r.body).ok()).flatten()
}

/// Waits until every partition is owned by one of `alive`, as `ask` sees
/// it; returns each partition's owner.
fn wait_owned(ask: &Node, alive: &[&str]) -> Vec<String> {
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(map) = get_json(ask.at.control, "/cluster")
            && let Some(owners) = map["map"]
                .as_array()
                .map(|m| m.iter().map(|e| e["owner"]["node"].as_str().map(str::to_string)).collect::<Vec<_>>())
            && owners.iter().all(|o| o.as_deref().is_some_and(|n| alive.contains(&n)))
        {
            return owners.into_iter().map(Option::unwrap).collect();
        }
        assert!(Instant::now() < deadline, "the partitions never all had a live owner; {}", ask.serve.stderr_now());
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until the partitions are owned by `alive` in equal shares (no
/// hand-over under way); returns each partition's owner.
fn wait_balanced(ask: &Node, alive: &[&str]) -> Vec<String> {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let map = wait_owned(ask, alive);
        let share = PARTITIONS.div_ceil(alive.len());
        if alive.iter().all(|n| map.iter().filter(|o| o == n).count() <= share) {
            return map;
        }
        assert!(Instant::now() < deadline, "the partitions were never balanced: {map:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A hunt of partition `p`.
fn hunt_in(p: usize) -> u32 {
    (1..).find(|&h| trove_core::placement::shard_of(h, PARTITIONS) == p).unwrap()
}

/// What a spectator saw of one hunt, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Seen {
    /// An applied join: its engine time and player.
    Applied {
        time_us: u64,
        player: u32,
    },
    Gap {
        missed: u64,
    },
}

/// One spectator's stream, followed on a thread of its own.
struct Spectator {
    seen: Arc<Mutex<Vec<Seen>>>,
    /// When each applied entry of `seen` arrived.
    arrived: Arc<Mutex<Vec<Instant>>>,
    thread: std::thread::JoinHandle<()>,
}

impl Spectator {
    fn applied(&self) -> Vec<(u64, u32)> {
        applied(&self.seen.lock().unwrap())
    }

    fn players(&self) -> Vec<u32> {
        self.applied().into_iter().map(|(_, p)| p).collect()
    }

    fn gaps(&self) -> u64 {
        self.seen.lock().unwrap().iter().filter(|s| matches!(s, Seen::Gap { .. })).count() as u64
    }

    /// Waits until it has seen `player` joined (or panicked: its stream
    /// broke a promise).
    fn wait_for(&self, player: u32, what: &str) {
        let deadline = Instant::now() + DEADLINE;
        while !self.players().contains(&player) {
            assert!(!self.thread.is_finished(), "{what}: the spectator stopped");
            assert!(Instant::now() < deadline, "{what}: player {player} never seen; saw {:?}", self.tail());
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn tail(&self) -> Vec<Seen> {
        let s = self.seen.lock().unwrap();
        s[s.len().saturating_sub(5)..].to_vec()
    }
}

fn applied(seen: &[Seen]) -> Vec<(u64, u32)> {
    seen.iter()
        .filter_map(|s| match *s {
            Seen::Applied { time_us, player } => Some((time_us, player)),
            Seen::Gap { .. } => None,
        })
        .collect()
}

/// Checks a stream's numbering: each update or gap starts where the last
/// ended.
struct Numbering {
    next: u64,
}

impl Numbering {
    fn continues(&mut self, first: u64, count: u64, what: &str) {
        assert_eq!(first, self.next, "{what}: an update or gap out of its place in the stream");
        self.next = first + count;
    }
}

/// Reads one whole frame; `None` when the node closed the connection (it
/// was stopped: the spectator's thread ends).
fn try_read_frame(s: &mut TcpStream) -> Option<(Kind, Vec<u8>)> {
    let mut head = [0u8; HEADER_LEN];
    s.read_exact(&mut head).ok()?;
    let len = u32::from_le_bytes(head[..4].try_into().unwrap()) as usize;
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).ok()?;
    Some((Kind::from_u8(head[4]).expect("a known kind"), body))
}

fn read_frame(s: &mut TcpStream) -> (Kind, Vec<u8>) {
    try_read_frame(s).expect("a frame")
}

fn decode(kind: Kind, body: &[u8]) -> Frame<'_> {
    frame::decode(frame::Header { kind, flags: 0, len: body.len() as u32 }, body, sizes()).expect("a valid frame")
}

/// A TCP spectator of `hunt` on `addr`.
fn tcp_spectator(addr: SocketAddr, hunt: u32) -> Spectator {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut b = Vec::new();
    frame::encode_hello(&mut b, &Hello::v1(0, 0));
    frame::encode_u32_frame(&mut b, Kind::Subscribe, hunt);
    s.write_all(&b).unwrap();
    assert_eq!(read_frame(&mut s).0, Kind::Welcome);
    let (kind, body) = read_frame(&mut s);
    let next = match decode(kind, &body) {
        Frame::Subscribed { hunt: h, next_seq } if h == hunt => next_seq,
        other => panic!("expected SUBSCRIBED, got {other:?}"),
    };
    let seen = Arc::new(Mutex::new(Vec::new()));
    let arrived = Arc::new(Mutex::new(Vec::new()));
    let (out, times) = (seen.clone(), arrived.clone());
    let thread = std::thread::spawn(move || {
        let mut numbering = Numbering { next };
        while let Some((kind, body)) = try_read_frame(&mut s) {
            let now = Instant::now();
            match decode(kind, &body) {
                Frame::Update { hunt: h, first_seq, count, entries } => {
                    assert_eq!(h, hunt);
                    numbering.continues(first_seq, u64::from(count), "TCP");
                    let entries = decode_entries::<TreasureHunt>(entries).expect("entries");
                    let mut out = out.lock().unwrap();
                    for e in entries {
                        if let UpdateEntry::Applied { event, .. } = e
                            && event.event.action == Action::Join
                        {
                            out.push(Seen::Applied { time_us: event.time_us, player: event.event.player });
                            times.lock().unwrap().push(now);
                        }
                    }
                }
                Frame::Gap { hunt: h, first_missed, missed } => {
                    assert_eq!(h, hunt);
                    numbering.continues(first_missed, missed, "TCP gap");
                    out.lock().unwrap().push(Seen::Gap { missed });
                }
                other => panic!("a spectator got {other:?}"),
            }
        }
    });
    Spectator { seen, arrived, thread }
}

fn ws_send(s: &mut TcpStream, v: &Value) {
    let text = v.to_string();
    let mut f = vec![0x81];
    assert!(text.len() < 126);
    f.push(0x80 | text.len() as u8);
    f.extend_from_slice(&[0; 4]);
    f.extend_from_slice(text.as_bytes());
    s.write_all(&f).unwrap();
}

fn ws_recv(s: &mut TcpStream) -> Value {
    let (first, payload) = common::ws_read_frame(s);
    assert_eq!(first, 0x81, "a final text frame");
    serde_json::from_slice(&payload).expect("JSON")
}

/// A WebSocket (JSON) spectator of `hunt` on `addr`.
fn ws_spectator(addr: SocketAddr, hunt: u32) -> Spectator {
    let mut s = common::ws_connect(addr, DEADLINE);
    ws_send(&mut s, &json!({"type": "subscribe", "hunt": hunt}));
    let v = ws_recv(&mut s);
    assert_eq!(v["type"], "subscribed", "{v}");
    let next = v["next_seq"].as_u64().expect("next_seq");
    let seen = Arc::new(Mutex::new(Vec::new()));
    let arrived = Arc::new(Mutex::new(Vec::new()));
    let (out, times) = (seen.clone(), arrived.clone());
    let thread = std::thread::spawn(move || {
        let mut numbering = Numbering { next };
        // Ends when the node closes the connection (it was stopped).
        while s.peek(&mut [0u8; 1]).is_ok_and(|n| n > 0) {
            let v = ws_recv(&mut s);
            let now = Instant::now();
            assert_eq!(v["hunt"], hunt, "{v}");
            match v["type"].as_str() {
                Some("update") => {
                    let entries = v["entries"].as_array().expect("entries");
                    numbering.continues(v["first_seq"].as_u64().unwrap(), entries.len() as u64, "WebSocket");
                    let mut out = out.lock().unwrap();
                    for e in entries.iter().filter(|e| e["kind"] == "applied" && e["event"]["action"] == "join") {
                        let time_us = e["time_us"].as_u64().unwrap();
                        let player = e["event"]["player"].as_u64().unwrap() as u32;
                        out.push(Seen::Applied { time_us, player });
                        times.lock().unwrap().push(now);
                    }
                }
                Some("gap") => {
                    let missed = v["missed"].as_u64().unwrap();
                    numbering.continues(v["first_missed"].as_u64().unwrap(), missed, "WebSocket gap");
                    out.lock().unwrap().push(Seen::Gap { missed });
                }
                _ => panic!("a spectator got {v}"),
            }
        }
    });
    Spectator { seen, arrived, thread }
}

/// A producer joining players 0, 1, 2, ... to one hunt through the SDK,
/// about `rate` a second, on a thread of its own.
struct Producer {
    /// Players acknowledged (each join answered), in order of sending.
    acked: Arc<AtomicU64>,
    /// The next player to send.
    sent: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<()>,
}

impl Producer {
    fn start(seeds: Vec<String>, hunt: u32, rate: u64) -> Producer {
        let acked = Arc::new(AtomicU64::new(0));
        let sent = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (a, s, st) = (acked.clone(), sent.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
            rt.block_on(async move {
                let mut config = ClusterConfig { failover_timeout: DEADLINE, ..ClusterConfig::new(seeds) };
                config.client.linger = Duration::from_millis(1);
                let (mut producer, mut acks) =
                    ClusterProducer::<TreasureHunt>::connect(config).await.expect("connects");
                let reader = tokio::spawn(async move {
                    while let Some((_, answer)) = acks.next().await {
                        let batch = answer.expect("every batch is acknowledged");
                        a.fetch_add(u64::from(batch.count), SeqCst);
                    }
                });
                let config = HuntConfig { players_max: 1 << 20, ..common::hunt_config() };
                producer.send_wait(HuntEvent::create(hunt, config)).await.expect("sent");
                let started = Instant::now();
                let mut n: u64 = 0;
                while !st.load(Relaxed) {
                    producer.send_wait(HuntEvent::join(hunt, n as u32)).await.expect("sent");
                    n += 1;
                    s.store(n, SeqCst);
                    let due = started + Duration::from_secs_f64(n as f64 / rate as f64);
                    if let Some(wait) = due.checked_duration_since(Instant::now()) {
                        tokio::time::sleep(wait).await;
                    }
                }
                producer.close().await.expect("every event answered at close");
                reader.await.expect("the reader ends");
            });
        });
        Producer { acked, sent, stop, thread }
    }

    /// Stops, once every event sent is answered; returns the last player.
    fn finish(self) -> u32 {
        self.stop.store(true, Relaxed);
        self.thread.join().expect("the producer finished: every event answered");
        let sent = self.sent.load(SeqCst);
        assert!(sent > 0 && self.acked.load(SeqCst) >= sent, "every join acknowledged");
        (sent - 1) as u32
    }

    /// Waits until `more` further events are sent.
    fn wait_sent(&self, more: u64) {
        let target = self.sent.load(SeqCst) + more;
        let deadline = Instant::now() + DEADLINE;
        while self.sent.load(SeqCst) < target {
            assert!(!self.thread.is_finished(), "the producer stopped");
            assert!(Instant::now() < deadline, "the producer did not send {more} more");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// Waits until `node` publishes at least one hunt for other nodes'
/// spectators (they announced interest), a bounded time: a node without
/// the relay never does, and the test then fails on what its spectators
/// see, not here.
fn wait_exported(node: &Node) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while common::metric(node.at.control, "trove_cluster_relay_hunts_exported").unwrap_or(0) == 0
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// No player is seen joined twice, and in the order they were sent (one
/// producer, one hunt, joins sent one after the other).
fn assert_once_in_order(players: &[u32], what: &str) {
    let mut set = HashSet::new();
    for p in players {
        assert!(set.insert(*p), "{what}: player {p} seen twice");
    }
    assert!(players.windows(2).all(|w| w[0] < w[1]), "{what}: players out of order");
}

/// Two nodes; a hunt owned by one: a TCP and a WebSocket spectator on the
/// other see every update of it, in order, the same as a spectator on
/// the owner, with no gap.
#[test]
fn spectators_on_a_node_that_does_not_own_the_hunt_see_every_update_in_order() {
    if !nats_server_or_skip("spectators_on_a_node_that_does_not_own_the_hunt_see_every_update_in_order") {
        return;
    }
    common::raise_file_limit();
    let nats = NatsServer::start();
    let url = nats.url();
    let nodes = [Node::start(&url, "a"), Node::start(&url, "b")];
    let map = wait_balanced(&nodes[0], &["a", "b"]);
    let p = map.iter().position(|o| o == "a").expect("a owns a partition");
    let hunt = hunt_in(p);
    let (owner, other) = (&nodes[0], &nodes[1]);
    let on_owner = tcp_spectator(owner.at.tcp, hunt);
    let tcp = tcp_spectator(other.at.tcp, hunt);
    let ws = ws_spectator(other.at.ws.unwrap(), hunt);
    wait_exported(owner);
    let seeds = nodes.iter().map(|n| n.at.control.to_string()).collect();
    let producer = Producer::start(seeds, hunt, 2000);
    producer.wait_sent(3000);
    let last = producer.finish();
    for (s, what) in [(&on_owner, "on the owner"), (&tcp, "TCP elsewhere"), (&ws, "WebSocket elsewhere")] {
        s.wait_for(last, what);
    }
    let expected = on_owner.applied();
    assert_eq!(expected.len() as u32, last + 1, "the owner's spectator saw every join");
    assert_once_in_order(&on_owner.players(), "on the owner");
    assert_eq!(tcp.applied(), expected, "a TCP spectator on another node: the owner's updates, in order");
    assert_eq!(ws.applied(), expected, "a WebSocket spectator on another node: the owner's updates, in order");
    assert_eq!((on_owner.gaps(), tcp.gaps(), ws.gaps()), (0, 0, 0), "no gap without a fault");
    // What the relay adds: each update's arrival elsewhere less its
    // arrival on the owner (provisional: a shared, noisy machine).
    let owner_times = on_owner.arrived.lock().unwrap().clone();
    for (s, what) in [(&tcp, "TCP"), (&ws, "WebSocket")] {
        let times = s.arrived.lock().unwrap();
        let mut delay: Vec<i128> = times
            .iter()
            .zip(&owner_times)
            .map(|(t, o)| {
                t.saturating_duration_since(*o).as_micros() as i128
                    - o.saturating_duration_since(*t).as_micros() as i128
            })
            .collect();
        delay.sort_unstable();
        let at = |q: f64| delay[((delay.len() - 1) as f64 * q) as usize];
        eprintln!(
            "relayed {what} spectator's delay behind the owner's TCP spectator, {} updates: p50 {} us, p99 {} us, max {} us",
            delay.len(),
            at(0.5),
            at(0.99),
            at(1.0)
        );
    }
    let relayed = common::metric(other.at.control, "trove_cluster_relay_updates_total").unwrap_or(0);
    assert!(relayed > 0, "the updates came through the relay");
}

/// Checks a spectator that lived through an owner change: it saw updates
/// before and after it, the change as a gap, and between gaps no player
/// twice and in order. Across a gap a player may come again only if it
/// is `durable_below` or above: an owner killed may have applied (and
/// relayed) events that never landed in its stream, which the producer
/// resends to the next owner (updates go out before durability, as on a
/// single node). Nothing relayed is delivered twice.
fn assert_went_on(s: &Spectator, before: u32, last: u32, durable_below: u32, what: &str) {
    s.wait_for(last, what);
    let seen = s.seen.lock().unwrap().clone();
    let segments: Vec<Vec<u32>> = seen
        .split(|x| matches!(x, Seen::Gap { .. }))
        .map(|seg| applied(seg).into_iter().map(|(_, p)| p).collect())
        .collect();
    for seg in &segments {
        assert_once_in_order(seg, what);
    }
    let mut all = HashSet::new();
    for p in segments.iter().flatten() {
        assert!(all.insert(*p) || *p >= durable_below, "{what}: player {p}, durable, seen twice");
    }
    assert!(all.iter().any(|&p| p <= before), "{what}: saw updates before the change");
    assert!(s.gaps() > 0, "{what}: the owner change is a gap");
}

/// Three nodes; the owner of a watched hunt is killed (SIGKILL): the
/// spectators on the two others (one of which takes the hunt over) keep
/// getting its updates, with the loss reported as a gap, and no update
/// twice.
#[test]
fn spectators_keep_their_hunt_after_its_owner_is_killed() {
    if !nats_server_or_skip("spectators_keep_their_hunt_after_its_owner_is_killed") {
        return;
    }
    common::raise_file_limit();
    let nats = NatsServer::start();
    let url = nats.url();
    let mut nodes = vec![Node::start(&url, "a"), Node::start(&url, "b"), Node::start(&url, "c")];
    let map = wait_balanced(&nodes[0], &["a", "b", "c"]);
    let p = map.iter().position(|o| o == "a").expect("a owns a partition");
    let hunt = hunt_in(p);
    let b_tcp = tcp_spectator(nodes[1].at.tcp, hunt);
    let c_ws = ws_spectator(nodes[2].at.ws.unwrap(), hunt);
    wait_exported(&nodes[0]);
    let seeds = nodes.iter().map(|n| n.at.control.to_string()).collect();
    let producer = Producer::start(seeds, hunt, 1000);
    producer.wait_sent(500);
    let before = producer.sent.load(SeqCst) as u32 - 1;
    b_tcp.wait_for(before, "b before the kill");
    c_ws.wait_for(before, "c before the kill");
    // Joins acknowledged before the kill are in the stream (the create
    // was the first event acknowledged).
    let durable_below = producer.acked.load(SeqCst).saturating_sub(1) as u32;
    nodes[0].serve.signal("KILL");
    let _ = nodes[0].serve.wait_exit(DEADLINE);
    wait_owned(&nodes[1], &["b", "c"]);
    producer.wait_sent(1000);
    let last = producer.finish();
    assert_went_on(&b_tcp, before, last, durable_below, "TCP on b");
    assert_went_on(&c_ws, before, last, durable_below, "WebSocket on c");
    nodes.remove(0);
}

/// Two nodes; a third joins, and the partition of a watched hunt is
/// handed over to it cleanly: the spectators on the old owner and on the
/// other node keep getting its updates (a gap at the change), no update
/// twice.
#[test]
fn spectators_keep_their_hunt_when_it_is_handed_over_to_a_joining_node() {
    if !nats_server_or_skip("spectators_keep_their_hunt_when_it_is_handed_over_to_a_joining_node") {
        return;
    }
    common::raise_file_limit();
    let nats = NatsServer::start();
    let url = nats.url();
    let mut nodes = vec![Node::start(&url, "a"), Node::start(&url, "b")];
    let map = wait_balanced(&nodes[0], &["a", "b"]);
    // A node above its share hands over its highest partition first.
    let p = map.iter().rposition(|o| o == "a").expect("a owns a partition");
    let hunt = hunt_in(p);
    let on_a = tcp_spectator(nodes[0].at.tcp, hunt);
    let on_b = ws_spectator(nodes[1].at.ws.unwrap(), hunt);
    wait_exported(&nodes[0]);
    let seeds = nodes.iter().map(|n| n.at.control.to_string()).collect();
    let producer = Producer::start(seeds, hunt, 1000);
    producer.wait_sent(500);
    let before = producer.sent.load(SeqCst) as u32 - 1;
    on_a.wait_for(before, "a before the hand-over");
    on_b.wait_for(before, "b before the hand-over");
    nodes.push(Node::start(&url, "c"));
    let deadline = Instant::now() + DEADLINE;
    while wait_owned(&nodes[1], &["a", "b", "c"])[p] != "c" {
        assert!(Instant::now() < deadline, "partition {p} was never handed over to c");
        std::thread::sleep(Duration::from_millis(50));
    }
    producer.wait_sent(1000);
    let last = producer.finish();
    // A clean hand-over makes everything applied durable first: no
    // player may come twice.
    assert_went_on(&on_a, before, last, u32::MAX, "TCP on the old owner");
    assert_went_on(&on_b, before, last, u32::MAX, "WebSocket on the other node");
}
