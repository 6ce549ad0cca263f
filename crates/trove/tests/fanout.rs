//! Fan-out to many subscribers, on a real `trove serve` process (issue 27):
//! a subscriber that keeps up sees every update in order, on TCP and
//! WebSocket, each chunk encoded once per transport; one that does not
//! read gets gaps, holds up nobody and holds no more than its bound; and
//! thousands of subscribers come and go without leaking a file, a
//! subscription or memory.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc;
use std::time::{Duration, Instant};

mod common;

use common::{Serve, metric};
use serde_json::{Value, json};
use trove_hunt::{HuntEvent, TreasureHunt};
use trove_proto::WireGame;
use trove_proto::frame::{self, Frame, HEADER_LEN, Hello, Kind, Sizes, entry_kind};

/// How long anything in these tests may take before it counts as stuck.
const PATIENCE: Duration = Duration::from_secs(120);

fn sizes() -> Sizes {
    Sizes { record: <HuntEvent as trove_core::Record>::SIZE, outcome: TreasureHunt::OUTCOME_SIZE }
}

/// Starts a server (no journal) with `limits` (the `[limits]` table's
/// lines); returns it with its TCP, WebSocket and control addresses.
fn start(name: &str, limits: &str) -> (Serve, SocketAddr, SocketAddr, SocketAddr, std::path::PathBuf) {
    let dir = common::scratch_dir(name);
    let config = dir.join("trove.toml");
    std::fs::write(&config, format!("[limits]\n{limits}\n")).unwrap();
    let mut serve = Serve::spawn(&[
        "--no-journal".as_ref(),
        "--tcp".as_ref(),
        "127.0.0.1:0".as_ref(),
        "--ws".as_ref(),
        "127.0.0.1:0".as_ref(),
        "--control".as_ref(),
        "127.0.0.1:0".as_ref(),
        "--config".as_ref(),
        config.as_os_str(),
    ]);
    let at = serve.wait_listening();
    (serve, at.tcp, at.ws.expect("the WebSocket listener"), at.control, dir)
}

fn metric_now(control: SocketAddr, name: &str) -> u64 {
    metric(control, name).unwrap_or_else(|| panic!("no metric {name}"))
}

/// Polls until `name` reads `want`.
fn wait_metric(control: SocketAddr, name: &str, want: u64) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let now = metric(control, name);
        if now == Some(want) {
            return;
        }
        assert!(Instant::now() < deadline, "{name} is {now:?}, expected {want}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Connects and completes the handshake.
fn tcp_connect(addr: SocketAddr) -> TcpStream {
    tcp_handshake(TcpStream::connect(addr).expect("connect"))
}

fn tcp_handshake(mut s: TcpStream) -> TcpStream {
    s.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut b = Vec::new();
    frame::encode_hello(&mut b, &Hello::v1(0, 0));
    s.write_all(&b).unwrap();
    let (kind, _) = read_frame(&mut s);
    assert_eq!(kind, Kind::Welcome);
    s
}

/// Connects with a receive buffer of a few KiB (set before the connect,
/// so that the window is small from the start): a peer that stops
/// reading fills it, and then the server's send buffer, quickly.
fn tcp_connect_small_window(addr: SocketAddr) -> TcpStream {
    tcp_handshake(connect_small_window(addr))
}

#[allow(unsafe_code)]
fn connect_small_window(addr: SocketAddr) -> TcpStream {
    use std::os::fd::FromRawFd;
    let SocketAddr::V4(v4) = addr else { panic!("127.0.0.1 only") };
    // SAFETY: a socket made here and handed to a TcpStream once connected;
    // the structs passed are local and of the sizes given.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
        assert!(fd >= 0);
        let size: libc::c_int = 4096;
        let len = size_of::<libc::c_int>() as libc::socklen_t;
        assert_eq!(libc::setsockopt(fd, libc::SOL_SOCKET, libc::SO_RCVBUF, (&raw const size).cast(), len), 0);
        let sa = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: v4.port().to_be(),
            sin_addr: libc::in_addr { s_addr: u32::from(*v4.ip()).to_be() },
            sin_zero: [0; 8],
        };
        let sl = size_of::<libc::sockaddr_in>() as libc::socklen_t;
        assert_eq!(libc::connect(fd, (&raw const sa).cast(), sl), 0, "connect");
        TcpStream::from_raw_fd(fd)
    }
}

/// Reads one whole frame: its kind, flags and body.
fn read_frame(s: &mut TcpStream) -> (Kind, Vec<u8>) {
    let mut head = [0u8; HEADER_LEN];
    s.read_exact(&mut head).expect("a frame's header");
    let len = u32::from_le_bytes(head[..4].try_into().unwrap()) as usize;
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).expect("a frame's body");
    assert_eq!(head[5], 0, "no flags asked for");
    (Kind::from_u8(head[4]).expect("a known kind"), body)
}

/// Decodes a frame read by [`read_frame`].
fn decode(kind: Kind, body: &[u8]) -> Frame<'_> {
    let h = frame::Header { kind, flags: 0, len: body.len() as u32 };
    frame::decode(h, body, sizes()).expect("a valid frame")
}

fn tcp_subscribe(s: &mut TcpStream, hunt: u32) -> u64 {
    let mut b = Vec::new();
    frame::encode_u32_frame(&mut b, Kind::Subscribe, hunt);
    s.write_all(&b).unwrap();
    let (kind, body) = read_frame(s);
    match decode(kind, &body) {
        Frame::Subscribed { hunt: h, next_seq } if h == hunt => next_seq,
        other => panic!("expected SUBSCRIBED, got {other:?}"),
    }
}

/// One subscription's stream as a subscriber follows it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Stream {
    /// The number the next entry (or gap) must carry.
    next: u64,
    applied: u64,
    gaps: u64,
    missed: u64,
}

impl Stream {
    fn update(&mut self, first_seq: u64, count: u64, applied: u64) {
        assert_eq!(first_seq, self.next, "an update continues the stream: {self:?}");
        self.next += count;
        self.applied += applied;
    }

    fn gap(&mut self, first_missed: u64, missed: u64) {
        assert_eq!(first_missed, self.next, "a gap continues the stream: {self:?}");
        assert!(missed > 0);
        self.next += missed;
        self.gaps += 1;
        self.missed += missed;
    }
}

/// Reads a TCP subscription's frames until `done` says so.
fn tcp_follow(s: &mut TcpStream, hunt: u32, stream: &mut Stream, done: impl Fn(&Stream) -> bool) {
    while !done(stream) {
        let (kind, body) = read_frame(s);
        match decode(kind, &body) {
            Frame::Update { hunt: h, first_seq, count, entries } => {
                assert_eq!(h, hunt);
                let mut applied = 0;
                let mut n = 0;
                for e in frame::entries(entries) {
                    let (k, _) = e.expect("a valid entry");
                    n += 1;
                    applied += u64::from(k == entry_kind::APPLIED);
                }
                assert_eq!(n, count);
                stream.update(first_seq, u64::from(count), applied);
            }
            Frame::Gap { hunt: h, first_missed, missed } => {
                assert_eq!(h, hunt);
                stream.gap(first_missed, missed);
            }
            other => panic!("a subscriber got {other:?}"),
        }
    }
}

/// Connects to the WebSocket endpoint and completes the upgrade.
fn ws_connect(addr: SocketAddr) -> TcpStream {
    common::ws_connect(addr, PATIENCE)
}

fn ws_upgrade(s: TcpStream) -> TcpStream {
    common::ws_upgrade(s, PATIENCE)
}

/// Sends one text message (masked with a zero key: the payload as it is).
fn ws_send(s: &mut TcpStream, v: &Value) {
    let text = v.to_string();
    let mut f = vec![0x81];
    assert!(text.len() < 126);
    f.push(0x80 | text.len() as u8);
    f.extend_from_slice(&[0; 4]);
    f.extend_from_slice(text.as_bytes());
    s.write_all(&f).unwrap();
}

/// Reads one text message (the server sends each in one frame).
fn ws_recv(s: &mut TcpStream) -> Value {
    let (first, payload) = common::ws_read_frame(s);
    assert_eq!(first, 0x81, "a final text frame");
    serde_json::from_slice(&payload).expect("JSON")
}

fn ws_subscribe(s: &mut TcpStream, hunt: u32) -> u64 {
    ws_send(s, &json!({"type": "subscribe", "hunt": hunt}));
    let v = ws_recv(s);
    assert_eq!(v["type"], "subscribed", "{v}");
    v["next_seq"].as_u64().expect("next_seq")
}

fn ws_follow(s: &mut TcpStream, hunt: u32, stream: &mut Stream, done: impl Fn(&Stream) -> bool) {
    while !done(stream) {
        let v = ws_recv(s);
        assert_eq!(v["hunt"], hunt, "{v}");
        match v["type"].as_str() {
            Some("update") => {
                let entries = v["entries"].as_array().expect("entries");
                let applied = entries.iter().filter(|e| e["kind"] == "applied").count() as u64;
                stream.update(v["first_seq"].as_u64().unwrap(), entries.len() as u64, applied);
            }
            Some("gap") => stream.gap(v["first_missed"].as_u64().unwrap(), v["missed"].as_u64().unwrap()),
            _ => panic!("a subscriber got {v}"),
        }
    }
}

/// Submits `batches` one at a time on a producer connection, each
/// answered by its ACK (a BUSY is retried after its pause).
fn produce(s: &mut TcpStream, first_seq: &mut u64, batches: &[Vec<HuntEvent>]) {
    produce_paced(s, first_seq, batches, |_| {});
}

/// The same, calling `acked` with the events acknowledged so far after
/// each ACK.
fn produce_paced(s: &mut TcpStream, first_seq: &mut u64, batches: &[Vec<HuntEvent>], acked: impl Fn(u64)) {
    let deadline = Instant::now() + PATIENCE;
    let mut total = 0;
    for events in batches {
        let mut b = Vec::new();
        frame::encode_events(&mut b, *first_seq, events);
        loop {
            assert!(Instant::now() < deadline, "producing took longer than {PATIENCE:?}");
            s.write_all(&b).unwrap();
            let (kind, body) = read_frame(s);
            match decode(kind, &body) {
                Frame::Ack { first_seq: f, count, .. } => {
                    assert_eq!((f, count as usize), (*first_seq, events.len()));
                    break;
                }
                Frame::Busy { .. } => std::thread::sleep(Duration::from_millis(5)),
                other => panic!("a producer got {other:?}"),
            }
        }
        *first_seq += events.len() as u64;
        total += events.len() as u64;
        acked(total);
    }
}

/// `rounds` batches of `per_hunt` events for each of `hunts`: a create,
/// then joins (players 0..) and moves.
fn batches(hunts: &[u32], rounds: usize, per_hunt: usize) -> Vec<Vec<HuntEvent>> {
    let mut player = 0u32;
    (0..rounds)
        .map(|r| {
            let mut batch = Vec::new();
            for &h in hunts {
                for i in 0..per_hunt {
                    batch.push(match (r, i) {
                        (0, 0) => HuntEvent::create(h, common::hunt_config()),
                        (_, i) if i % 2 == 0 => HuntEvent::join(h, player % 1000),
                        _ => HuntEvent::move_by(h, player % 1000, 1, 0),
                    });
                    player += 1;
                }
            }
            batch
        })
        .collect()
}

/// Subscribers on TCP and WebSocket, many per hunt over several hunts, all
/// reading as fast as they can: each sees every entry of its hunt, in
/// order, numbered consecutively, without a gap; and each chunk was
/// encoded once per transport, however many subscribers it went to.
#[test]
fn subscribers_that_keep_up_see_every_update_in_order_on_tcp_and_websocket() {
    const HUNTS: [u32; 3] = [101, 102, 103];
    const TCP_PER_HUNT: usize = 20;
    const WS_PER_HUNT: usize = 4;
    const ROUNDS: usize = 60;
    const PER_HUNT: usize = 40;
    let (serve, tcp, ws, control, dir) = start("fanout-keep-up", "idle_timeout_ms = 600000");
    let (ready_tx, ready_rx) = mpsc::channel::<u64>();
    let mut readers = Vec::new();
    for &hunt in &HUNTS {
        for i in 0..TCP_PER_HUNT + WS_PER_HUNT {
            let ready = ready_tx.clone();
            readers.push(std::thread::spawn(move || {
                let want = (ROUNDS * PER_HUNT) as u64;
                let mut stream = Stream::default();
                if i < TCP_PER_HUNT {
                    let mut s = tcp_connect(tcp);
                    stream.next = tcp_subscribe(&mut s, hunt);
                    ready.send(stream.next).unwrap();
                    tcp_follow(&mut s, hunt, &mut stream, |st| st.applied >= want);
                } else {
                    let mut s = ws_connect(ws);
                    stream.next = ws_subscribe(&mut s, hunt);
                    ready.send(stream.next).unwrap();
                    ws_follow(&mut s, hunt, &mut stream, |st| st.applied >= want);
                }
                (hunt, stream)
            }));
        }
    }
    drop(ready_tx);
    let subscribers = HUNTS.len() * (TCP_PER_HUNT + WS_PER_HUNT);
    assert_eq!(ready_rx.iter().take(subscribers).count(), subscribers);

    let mut producer = tcp_connect(tcp);
    let mut seq = 1;
    produce(&mut producer, &mut seq, &batches(&HUNTS, ROUNDS, PER_HUNT));

    let mut ends: std::collections::HashMap<u32, Stream> = std::collections::HashMap::new();
    for r in readers {
        let (hunt, stream) = r.join().expect("a subscriber saw its stream whole");
        assert_eq!(stream.applied, (ROUNDS * PER_HUNT) as u64, "every applied event of hunt {hunt}");
        assert_eq!((stream.gaps, stream.missed), (0, 0), "a subscriber that keeps up has no gap");
        // Every subscriber of a hunt saw the same numbers.
        let first = *ends.entry(hunt).or_insert(stream);
        assert_eq!(first.next, stream.next, "hunt {hunt}: the same stream for every subscriber");
    }

    // Every chunk went to TCP and WebSocket subscribers; each transport
    // encoded it once.
    let chunks = metric_now(control, "trove_update_chunks_published_total");
    assert!(chunks >= ROUNDS as u64 * HUNTS.len() as u64, "{chunks} chunks");
    assert_eq!(metric_now(control, "trove_update_encodings_total{transport=\"tcp\"}"), chunks);
    assert_eq!(metric_now(control, "trove_update_encodings_total{transport=\"ws\"}"), chunks);
    let deliveries = metric_now(control, "trove_update_chunk_deliveries_total");
    assert_eq!(deliveries, chunks * (TCP_PER_HUNT + WS_PER_HUNT) as u64);
    assert_eq!(metric_now(control, "trove_update_chunks_sent_total"), deliveries);
    assert_eq!(metric_now(control, "trove_updates_dropped_total"), 0);
    drop(serve);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A subscriber that stops reading, among fast ones on the same hot hunt:
/// the producer keeps getting its ACKs, the fast subscribers (TCP and
/// WebSocket) get every entry, the slow one's unwritten updates stay
/// within one mailbox's worth, and when it reads again it finds gaps in
/// the place of what it missed and a stream that ends where the others'
/// does.
#[test]
fn a_subscriber_that_does_not_read_gets_gaps_and_holds_up_nobody() {
    const HUNT: u32 = 201;
    const UPDATES_MAX: u64 = 1000;
    const ROUNDS: usize = 400;
    const PER_HUNT: usize = 500;
    let (serve, tcp, ws, control, dir) =
        start("fanout-slow", &format!("idle_timeout_ms = 600000\nsubscriber_updates_max = {UPDATES_MAX}"));
    let mut slow = tcp_connect_small_window(tcp);
    let mut slow_stream = Stream { next: tcp_subscribe(&mut slow, HUNT), ..Stream::default() };
    let mut slow_ws = ws_upgrade(connect_small_window(ws));
    let mut slow_ws_stream = Stream { next: ws_subscribe(&mut slow_ws, HUNT), ..Stream::default() };

    let want = (ROUNDS * PER_HUNT) as u64;
    // What each fast subscriber has seen: the producer waits for them
    // before its next batch, so that "fast" does not depend on how this
    // machine schedules their threads (a mailbox holds two batches).
    let seen: std::sync::Arc<[AtomicU64; 3]> = std::sync::Arc::default();
    let (ready_tx, ready_rx) = mpsc::channel::<()>();
    let fast: Vec<_> = (0..3)
        .map(|i| {
            let ready = ready_tx.clone();
            let seen = seen.clone();
            std::thread::spawn(move || {
                let mut stream = Stream::default();
                let done = |st: &Stream| {
                    seen[i].store(st.applied, Relaxed);
                    st.applied >= want
                };
                if i < 2 {
                    let mut s = tcp_connect(tcp);
                    stream.next = tcp_subscribe(&mut s, HUNT);
                    ready.send(()).unwrap();
                    tcp_follow(&mut s, HUNT, &mut stream, done);
                } else {
                    let mut s = ws_connect(ws);
                    stream.next = ws_subscribe(&mut s, HUNT);
                    ready.send(()).unwrap();
                    ws_follow(&mut s, HUNT, &mut stream, done);
                }
                stream
            })
        })
        .collect();
    drop(ready_tx);
    assert_eq!(ready_rx.iter().take(3).count(), 3);

    let mut producer = tcp_connect(tcp);
    let mut seq = 1;
    produce_paced(&mut producer, &mut seq, &batches(&[HUNT], ROUNDS, PER_HUNT), |acked| {
        let deadline = Instant::now() + PATIENCE;
        while seen.iter().any(|s| s.load(Relaxed) < acked) {
            assert!(Instant::now() < deadline, "the fast subscribers stopped at {seen:?}, {acked} acknowledged");
            std::thread::sleep(Duration::from_millis(1));
        }
    });
    let mut end = None;
    for f in fast {
        let stream = f.join().expect("a fast subscriber saw its stream whole");
        assert_eq!((stream.applied, stream.gaps), (want, 0), "a fast subscriber misses nothing");
        assert_eq!(*end.get_or_insert(stream.next), stream.next);
    }
    let end = end.expect("three fast subscribers");

    // The slow ones' updates were dropped in the hub, not queued in the
    // server: what a connection held unwritten stays within one take of
    // its mailbox (its bound in entries, plus the one chunk an empty
    // mailbox always accepts), encoded (as JSON, at most 512 bytes an
    // entry here, on the WebSocket; 44 on TCP).
    assert!(metric_now(control, "trove_updates_dropped_total") > 0, "the slow subscribers fell behind");
    let entry_max = 512;
    let bound = 2 * (UPDATES_MAX + PER_HUNT as u64) * entry_max + (64 << 10);
    let held = metric_now(control, "trove_update_bytes_queued_connection_max");
    assert!(held <= bound, "a connection held {held} update bytes unwritten, over {bound}");

    slow.set_read_timeout(Some(PATIENCE)).unwrap();
    tcp_follow(&mut slow, HUNT, &mut slow_stream, |st| st.next >= end);
    assert_eq!(slow_stream.next, end, "the slow stream ends where the others' does");
    assert!(slow_stream.gaps > 0 && slow_stream.missed > 0, "the slow subscriber learns what it missed");
    assert!(slow_stream.applied < want, "the gaps stand for applied events");
    slow_ws.set_read_timeout(Some(PATIENCE)).unwrap();
    ws_follow(&mut slow_ws, HUNT, &mut slow_ws_stream, |st| st.next >= end);
    assert_eq!(slow_ws_stream.next, end, "the slow WebSocket stream ends where the others' does");
    assert!(slow_ws_stream.gaps > 0 && slow_ws_stream.applied < want, "the slow WebSocket subscriber has gaps");
    // Once every connection has written what it took, nothing is queued.
    wait_metric(control, "trove_update_bytes_queued", 0);
    drop(serve);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The server's open files, from /proc.
fn open_files(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).expect("/proc").count()
}

fn wait_open_files(pid: u32, want: usize) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let now = open_files(pid);
        if now == want {
            return;
        }
        assert!(Instant::now() < deadline, "the server has {now} open files, expected {want}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// 2,000 TCP subscribers and 100 WebSocket ones over 40 hunts connect,
/// subscribe, get an update and disconnect, six times: every time the
/// server goes back to its open files, connections, subscriptions and
/// watched hunts from before, and its memory does not grow round after
/// round.
#[test]
fn thousands_of_subscribers_come_and_go_without_leaking() {
    const TCP_SUBSCRIBERS: usize = 2000;
    const WS_SUBSCRIBERS: usize = 100;
    const HUNTS: u32 = 40;
    const ROUNDS: usize = 6;
    assert!(
        common::raise_file_limit() >= 2 * (TCP_SUBSCRIBERS + WS_SUBSCRIBERS) as u64 + 200,
        "the test needs more files"
    );
    let (serve, tcp, ws, control, dir) =
        start("fanout-churn", "connections_max = 2200\nconnections_per_address_max = 2200\nidle_timeout_ms = 600000");
    let pid = serve.pid();
    let hunts: Vec<u32> = (0..HUNTS).map(|h| 300 + h).collect();
    let mut producer = tcp_connect(tcp);
    let mut seq = 1;
    produce(&mut producer, &mut seq, &batches(&hunts, 1, 2));
    // What is open with the producer alone.
    std::thread::sleep(Duration::from_millis(200));
    let files = open_files(pid);
    let mut rss_first = 0;
    for round in 0..ROUNDS {
        let mut tcp_subs: Vec<TcpStream> = (0..TCP_SUBSCRIBERS)
            .map(|i| {
                let mut s = tcp_connect(tcp);
                tcp_subscribe(&mut s, hunts[i % hunts.len()]);
                s
            })
            .collect();
        let mut ws_subs: Vec<TcpStream> = (0..WS_SUBSCRIBERS)
            .map(|i| {
                let mut s = ws_connect(ws);
                ws_subscribe(&mut s, hunts[i % hunts.len()]);
                s
            })
            .collect();
        wait_metric(control, "trove_subscriptions", (TCP_SUBSCRIBERS + WS_SUBSCRIBERS) as u64);
        wait_metric(control, "trove_subscribed_hunts", u64::from(HUNTS));
        produce(&mut producer, &mut seq, &batches(&hunts, 2, 2)[1..]);
        // Each subscriber gets its update; half of them read it, the others
        // close with it unread.
        for s in tcp_subs.iter_mut().step_by(2) {
            let (kind, _) = read_frame(s);
            assert_eq!(kind, Kind::Update);
        }
        for s in ws_subs.iter_mut().step_by(2) {
            assert_eq!(ws_recv(s)["type"], "update");
        }
        drop(tcp_subs);
        drop(ws_subs);
        wait_metric(control, "trove_connections_open", 1);
        wait_metric(control, "trove_subscriptions", 0);
        wait_metric(control, "trove_subscribed_hunts", 0);
        wait_open_files(pid, files);
        // From round 1 on (the allocator has kept what round 0 freed for
        // reuse): a connection's state leaked would be tens of KiB each,
        // some 50 MiB a round.
        let rss = serve.rss();
        if round == 1 {
            rss_first = rss;
        } else if round > 1 {
            assert!(rss <= rss_first + (64 << 20), "round {round}: {rss} bytes resident, after {rss_first} in round 1");
        }
    }
    drop(serve);
    let _ = std::fs::remove_dir_all(&dir);
}
