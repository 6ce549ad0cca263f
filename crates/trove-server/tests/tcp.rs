//! The TCP data plane over real sockets, frame by frame (the SDK's own
//! tests cover the same paths through the SDK).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

mod common;

use common::hunt_config;
use trove_core::{Record, Stamped};
use trove_hunt::{HuntEvent, HuntOutcome, Reject, TreasureHunt};
use trove_proto::frame::{self, ErrorCode, HEADER_LEN, Hello, Kind, Sizes, hello_flags};
use trove_proto::wire::{UpdateEntry, decode_entries, decode_outcomes};
use trove_proto::{Frame, WireGame};
use trove_server::{Server, ServerConfig};
use trove_shard::{Engine, EngineConfig};

const SIZES: Sizes = Sizes { record: 32, outcome: 16 };

fn start(engine: EngineConfig, server: ServerConfig) -> Server<TreasureHunt> {
    let engine = Arc::new(Engine::<TreasureHunt>::start(engine).unwrap());
    let server = ServerConfig { tcp_addr: SocketAddr::from(([127, 0, 0, 1], 0)), ws_addr: None, ..server };
    Server::start(engine, server).unwrap()
}

fn small_engine() -> EngineConfig {
    // The wait bound (`queue_wait_max`) is not what these tests are about:
    // on a loaded machine it would turn their pipelining into BUSY.
    EngineConfig { shards: 2, queue_wait_max: Duration::from_secs(60), ..EngineConfig::default() }
}

/// A blocking protocol client, written against the spec, not the SDK.
struct Raw {
    s: TcpStream,
    buf: Vec<u8>,
}

impl Raw {
    fn connect(addr: SocketAddr) -> Raw {
        let s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        s.set_nodelay(true).unwrap();
        Raw { s, buf: Vec::new() }
    }

    fn hello(addr: SocketAddr, producer_id: u64, outcomes: bool) -> (Raw, u64) {
        let mut r = Raw::connect(addr);
        let mut b = Vec::new();
        let flags = if outcomes { hello_flags::OUTCOMES } else { 0 };
        frame::encode_hello(&mut b, &Hello::v1(flags, producer_id));
        r.send(&b);
        match r.frame() {
            Some((Kind::Welcome, body, _)) => {
                let f = frame::decode(
                    frame::Header { kind: Kind::Welcome, flags: 0, len: body.len() as u32 },
                    &body,
                    SIZES,
                )
                .unwrap();
                let Frame::Welcome(w) = f else { panic!() };
                assert_eq!((w.record_size, w.outcome_size), (32, 16));
                (r, w.producer_id)
            }
            other => panic!("expected WELCOME, got {other:?}"),
        }
    }

    fn send(&mut self, bytes: &[u8]) {
        self.s.write_all(bytes).unwrap();
    }

    /// The next frame (kind, body, header flags), or None at EOF.
    fn frame(&mut self) -> Option<(Kind, Vec<u8>, u8)> {
        loop {
            if let Some((h, total)) = frame::split(&self.buf, 64 << 20).unwrap() {
                let body = self.buf[HEADER_LEN..total].to_vec();
                self.buf.drain(..total);
                return Some((h.kind, body, h.flags));
            }
            let mut chunk = [0u8; 65536];
            match self.s.read(&mut chunk) {
                Ok(0) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                // A read timeout is neither a frame nor a close.
                Err(e) if is_timeout(&e) => panic!("no frame and no close within the read timeout: {e}"),
                Err(_) => return None,
            }
        }
    }

    /// Reads to the end and checks that the server closed the connection
    /// (EOF or a reset) within the read timeout, not merely went quiet.
    fn expect_closed(&mut self, what: &str) {
        let mut sink = Vec::new();
        match self.s.read_to_end(&mut sink) {
            Ok(_) => {}
            Err(e) if is_timeout(&e) => panic!("{what}: the server did not close the connection: {e}"),
            Err(_) => {} // reset: closed with unread bytes
        }
    }

    fn decoded(&mut self) -> Option<OwnedFrame> {
        let (kind, body, flags) = self.frame()?;
        let f = frame::decode(frame::Header { kind, flags, len: body.len() as u32 }, &body, SIZES).unwrap();
        Some(match f {
            Frame::Ack { first_seq, count, outcomes } => OwnedFrame::Ack {
                first_seq,
                count,
                outcomes: outcomes.map(|o| decode_outcomes::<TreasureHunt>(o).unwrap()),
            },
            Frame::Busy { first_seq, count, .. } => OwnedFrame::Busy { first_seq, count },
            Frame::Subscribed { hunt, next_seq } => OwnedFrame::Subscribed { hunt, next_seq },
            Frame::Update { hunt, first_seq, entries, .. } => {
                OwnedFrame::Update { hunt, first_seq, entries: decode_entries::<TreasureHunt>(entries).unwrap() }
            }
            Frame::Gap { hunt, first_missed, missed } => OwnedFrame::Gap { hunt, first_missed, missed },
            Frame::Unsubscribed { hunt } => OwnedFrame::Unsubscribed { hunt },
            Frame::Pong { nonce } => OwnedFrame::Pong { nonce },
            Frame::Error { code, message } => {
                OwnedFrame::Error { code: ErrorCode::from_u16(code).unwrap(), message: message.into() }
            }
            other => panic!("unexpected {other:?}"),
        })
    }

    fn events(&mut self, first_seq: u64, events: &[HuntEvent]) {
        let mut b = Vec::new();
        frame::encode_events(&mut b, first_seq, events);
        self.send(&b);
    }

    fn subscribe(&mut self, hunt: u32) -> u64 {
        let mut b = Vec::new();
        frame::encode_u32_frame(&mut b, Kind::Subscribe, hunt);
        self.send(&b);
        match self.decoded() {
            Some(OwnedFrame::Subscribed { hunt: h, next_seq }) if h == hunt => next_seq,
            other => panic!("expected SUBSCRIBED, got {other:?}"),
        }
    }

    /// Expects an ERROR with `code`, then the close.
    fn expect_error_and_close(&mut self, code: ErrorCode) {
        match self.decoded() {
            Some(OwnedFrame::Error { code: c, message }) => assert_eq!(c, code, "{message}"),
            other => panic!("expected ERROR {code:?}, got {other:?}"),
        }
        assert!(self.frame().is_none(), "the server closes after {code:?}");
    }
}

/// Whether a read failed for want of bytes within the read timeout.
fn is_timeout(e: &std::io::Error) -> bool {
    matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut)
}

#[derive(Debug, PartialEq)]
enum OwnedFrame {
    Ack { first_seq: u64, count: u32, outcomes: Option<Vec<HuntOutcome>> },
    Busy { first_seq: u64, count: u32 },
    Subscribed { hunt: u32, next_seq: u64 },
    Update { hunt: u32, first_seq: u64, entries: Vec<UpdateEntry<TreasureHunt>> },
    Gap { hunt: u32, first_missed: u64, missed: u64 },
    Unsubscribed { hunt: u32 },
    Pong { nonce: u64 },
    Error { code: ErrorCode, message: String },
}

fn players(hunt: u32, n: u32) -> Vec<HuntEvent> {
    (0..n).map(|p| HuntEvent::join(hunt, p)).collect()
}

#[test]
fn produce_acknowledge_and_subscribe_end_to_end() {
    let server = start(small_engine(), ServerConfig::default());
    let addr = server.tcp_addr();
    let (mut watcher, _) = Raw::hello(addr, 0, false);
    let first = watcher.subscribe(1);
    assert_eq!(first, 1, "a hunt's updates are numbered from 1");

    let (mut p, id) = Raw::hello(addr, 0, true);
    assert_ne!(id, 0, "the server assigns an id");
    let mut sent = vec![HuntEvent::create(1, hunt_config())];
    sent.extend(players(1, 10));
    p.events(1, &sent);
    let more = vec![HuntEvent::move_by(1, 3, 1, 1), HuntEvent::dig(1, 3), HuntEvent::scan(1, 4), HuntEvent::join(1, 3)];
    p.events(12, &more);
    let Some(OwnedFrame::Ack { first_seq: 1, count: 11, outcomes: Some(o1) }) = p.decoded() else { panic!() };
    assert_eq!(o1[0], HuntOutcome::Created { round: 1 });
    assert!(o1[1..].iter().all(|o| matches!(o, HuntOutcome::Joined { .. })));
    let Some(OwnedFrame::Ack { first_seq: 12, count: 4, outcomes: Some(o2) }) = p.decoded() else { panic!() };
    assert!(matches!(o2[0], HuntOutcome::Moved { .. }));
    assert_eq!(o2[3], HuntOutcome::Rejected { reason: Reject::AlreadyJoined });

    // The watcher sees every applied event of hunt 1, in order, with the
    // same outcomes, numbered without a hole.
    let mut seen = Vec::new();
    let mut next = first;
    while seen.len() < 15 {
        match watcher.decoded() {
            Some(OwnedFrame::Update { hunt: 1, first_seq, entries }) => {
                assert_eq!(first_seq, next);
                next += entries.len() as u64;
                seen.extend(entries.into_iter().filter_map(|e| match e {
                    UpdateEntry::Applied { event, outcome } => Some((event.event, outcome)),
                    UpdateEntry::Broadcast(_) => None,
                }));
            }
            other => panic!("expected UPDATE, got {other:?}"),
        }
    }
    let want: Vec<_> = sent.iter().chain(&more).copied().zip(o1.iter().chain(&o2).copied()).collect();
    assert_eq!(seen, want);

    // Unsubscribe: confirmed; ping: answered.
    let mut b = Vec::new();
    frame::encode_u32_frame(&mut b, Kind::Unsubscribe, 1);
    frame::encode_u64_frame(&mut b, Kind::Ping, 99);
    watcher.send(&b);
    assert_eq!(watcher.decoded(), Some(OwnedFrame::Unsubscribed { hunt: 1 }));
    assert_eq!(watcher.decoded(), Some(OwnedFrame::Pong { nonce: 99 }));
    let m = server.metrics();
    assert_eq!(m.events_acked, 15);
    server.shutdown(Duration::from_secs(5));
}

#[test]
fn a_resent_batch_is_answered_with_its_outcomes_and_applied_once() {
    let server = start(small_engine(), ServerConfig::default());
    let addr = server.tcp_addr();
    let (mut p, _) = Raw::hello(addr, 4242, true);
    let mut events = vec![HuntEvent::create(5, hunt_config())];
    events.extend(players(5, 100));
    p.events(1, &events);
    let Some(OwnedFrame::Ack { outcomes: Some(first), .. }) = p.decoded() else { panic!() };
    // A second batch, then the connection drops before its ACK is read.
    let digs: Vec<_> = (0..100).map(|i| HuntEvent::dig(5, i)).collect();
    p.events(102, &digs);
    drop(p);
    // Reconnect as the same producer and resend everything: the server
    // answers with the original outcomes and applies nothing twice.
    let (mut p, id) = Raw::hello(addr, 4242, true);
    assert_eq!(id, 4242);
    p.events(1, &events);
    p.events(102, &digs);
    let Some(OwnedFrame::Ack { first_seq: 1, outcomes: Some(again), .. }) = p.decoded() else { panic!() };
    assert_eq!(again, first);
    let Some(OwnedFrame::Ack { first_seq: 102, count: 100, .. }) = p.decoded() else { panic!() };
    drop(p);
    let engine = server.engine().clone();
    server.shutdown(Duration::from_secs(5));
    let fin = Arc::try_unwrap(engine).unwrap().shutdown();
    assert_eq!(fin.events_applied, 201, "every event exactly once");
}

#[test]
fn overload_is_answered_busy_and_resends_are_applied_exactly_once() {
    // One shard with room for one queued batch: a window of batches sent
    // at once overflows it.
    let engine = EngineConfig { shards: 1, queue_batches_max: 1, ..EngineConfig::default() };
    let server = start(engine, ServerConfig { window_batches: 256, ..ServerConfig::default() });
    let addr = server.tcp_addr();
    let (mut p, _) = Raw::hello(addr, 77, false);
    let mut setup = vec![HuntEvent::create(1, hunt_config())];
    setup.extend(players(1, 1000));
    p.events(1, &setup);
    assert!(matches!(p.decoded(), Some(OwnedFrame::Ack { first_seq: 1, .. })));
    let batch: Vec<HuntEvent> = (0..4000).map(|i| HuntEvent::scan(1, i % 1000)).collect();
    let batches = 100u64;
    let first = 1 + setup.len() as u64;
    let mut pending: std::collections::VecDeque<u64> = (0..batches).map(|k| first + k * 4000).collect();
    let mut busy = 0;
    let mut acked = 0;
    while !pending.is_empty() {
        for &seq in &pending {
            p.events(seq, &batch);
        }
        let mut retry = std::collections::VecDeque::new();
        for _ in 0..pending.len() {
            match p.decoded() {
                Some(OwnedFrame::Ack { first_seq, count: 4000, .. }) => {
                    acked += 1;
                    assert!(!retry.contains(&first_seq));
                }
                Some(OwnedFrame::Busy { first_seq, count: 4000 }) => {
                    busy += 1;
                    retry.push_back(first_seq);
                }
                other => panic!("{other:?}"),
            }
        }
        pending = retry;
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(acked, batches);
    assert!(busy > 0, "the bounded queue refused some batches");
    assert!(server.metrics().busy_replies > 0);
    drop(p);
    let engine = server.engine().clone();
    server.shutdown(Duration::from_secs(5));
    let fin = Arc::try_unwrap(engine).unwrap().shutdown();
    assert_eq!(fin.events_applied, setup.len() as u64 + batches * 4000);
}

#[test]
fn a_slow_subscriber_gets_a_gap_notice_and_never_slows_the_engine() {
    let server = start(small_engine(), ServerConfig { subscriber_updates_max: 64, ..ServerConfig::default() });
    let addr = server.tcp_addr();
    let (mut slow, _) = Raw::hello(addr, 0, false);
    let first = slow.subscribe(3);
    let (mut fast, _) = Raw::hello(addr, 0, false);
    fast.subscribe(3);
    let (mut p, _) = Raw::hello(addr, 0, false);
    let mut events = vec![HuntEvent::create(3, hunt_config())];
    events.extend(players(3, 1000));
    p.events(1, &events);
    let mut seq = 1 + events.len() as u64;
    let moves: Vec<_> = (0..1000).map(|i| HuntEvent::move_by(3, i, 1, 0)).collect();
    // The slow subscriber reads nothing meanwhile; the producer is never
    // held back by it.
    for _ in 0..200 {
        p.events(seq, &moves);
        seq += 1000;
    }
    for _ in 0..201 {
        assert!(matches!(p.decoded(), Some(OwnedFrame::Ack { .. })));
    }
    // Joins and moves cause no broadcasts: one update per event.
    let total = seq - 1;
    // Each subscriber gets updates and gap notices that together account
    // for every update, numbered without a hole; the slow one was told of
    // losses, and neither held the producer back.
    let mut gaps = [0u64; 2];
    for (k, sub) in [&mut fast, &mut slow].into_iter().enumerate() {
        let mut next = first;
        while next < first + total {
            match sub.decoded() {
                Some(OwnedFrame::Update { first_seq, entries, .. }) => {
                    assert_eq!(first_seq, next, "updates continue right after a gap");
                    next += entries.len() as u64;
                }
                Some(OwnedFrame::Gap { first_missed, missed, .. }) => {
                    assert_eq!(first_missed, next, "a gap starts where the stream stopped");
                    assert!(missed > 0);
                    next += missed;
                    gaps[k] += 1;
                }
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(next, first + total);
    }
    let gaps = gaps[1];
    assert!(gaps > 0, "a subscriber 64 updates deep that reads nothing falls behind");
    server.shutdown(Duration::from_secs(5));
}

#[test]
fn bad_input_gets_typed_errors_and_never_disturbs_other_connections() {
    let server = start(
        small_engine(),
        // Long enough that a loaded machine never times out a HELLO sent at once.
        ServerConfig { handshake_timeout: Duration::from_secs(3), frame_body_max: 4096, ..ServerConfig::default() },
    );
    let addr = server.tcp_addr();
    // A healthy producer, used between every attack.
    let (mut good, _) = Raw::hello(addr, 0, true);
    good.events(1, &[HuntEvent::create(9, hunt_config())]);
    assert!(matches!(good.decoded(), Some(OwnedFrame::Ack { .. })));
    let mut seq = 2;
    let mut check_good = |good: &mut Raw| {
        good.events(seq, &[HuntEvent::join(9, seq as u32)]);
        seq += 1;
        match good.decoded() {
            Some(OwnedFrame::Ack { outcomes: Some(o), .. }) => assert!(matches!(o[0], HuntOutcome::Joined { .. })),
            other => panic!("the healthy connection was disturbed: {other:?}"),
        }
    };

    // Bad magic.
    let mut r = Raw::connect(addr);
    let mut b = Vec::new();
    frame::encode_hello(&mut b, &Hello::v1(0, 0));
    b[HEADER_LEN] ^= 0xFF;
    r.send(&b);
    r.expect_error_and_close(ErrorCode::BadMagic);
    check_good(&mut good);

    // Unsupported version.
    let mut r = Raw::connect(addr);
    let mut b = Vec::new();
    frame::encode_hello(&mut b, &Hello { version: 3, flags: 0, producer_id: 0, token: None });
    r.send(&b);
    r.expect_error_and_close(ErrorCode::UnsupportedVersion);

    // A producer id from the server's own range (one an earlier run may
    // have handed out): its producer continues under it.
    let (_r, id) = Raw::hello(addr, (1 << 63) + 5, false);
    assert_eq!(id, (1 << 63) + 5);

    // Something other than HELLO first.
    let mut r = Raw::connect(addr);
    r.events(1, &[HuntEvent::join(9, 1)]);
    r.expect_error_and_close(ErrorCode::HandshakeRequired);

    // A header announcing a huge body: refused on the header alone.
    let (mut r, _) = Raw::hello(addr, 0, false);
    r.send(&[0xFF, 0xFF, 0xFF, 0x7F, Kind::Events as u8, 0, 0, 0]);
    r.expect_error_and_close(ErrorCode::FrameTooLarge);
    check_good(&mut good);

    // Unknown kind; a server-only kind.
    for kind in [0x7Fu8, Kind::Ack as u8] {
        let (mut r, _) = Raw::hello(addr, 0, false);
        r.send(&[0, 0, 0, 0, kind, 0, 0, 0]);
        r.expect_error_and_close(ErrorCode::UnknownFrameKind);
    }

    // A body that does not match its count.
    let (mut r, _) = Raw::hello(addr, 0, false);
    let mut b = Vec::new();
    frame::encode_events(&mut b, 1, &[HuntEvent::join(9, 1), HuntEvent::join(9, 2)]);
    b[HEADER_LEN + 8] = 3; // count 3, two records
    r.send(&b);
    r.expect_error_and_close(ErrorCode::Malformed);

    // Batch and sequence errors refuse the batch and keep the connection.
    let (mut r, _) = Raw::hello(addr, 0, false);
    let mut b = Vec::new();
    frame::encode_events(&mut b, 0, &[HuntEvent::join(9, 1)]);
    frame::encode_events::<HuntEvent>(&mut b, 1, &[]);
    frame::encode_u64_frame(&mut b, Kind::Ping, 5);
    r.send(&b);
    assert!(matches!(r.decoded(), Some(OwnedFrame::Error { code: ErrorCode::BadSequence, .. })));
    assert!(matches!(r.decoded(), Some(OwnedFrame::Error { code: ErrorCode::BadBatch, .. })));
    assert_eq!(r.decoded(), Some(OwnedFrame::Pong { nonce: 5 }));

    // Silence: the handshake times out.
    let mut r = Raw::connect(addr);
    r.expect_error_and_close(ErrorCode::HandshakeTimeout);

    // Random and truncated bytes, many connections: never a panic, always
    // an error or a close, and the healthy connection keeps working.
    let mut rng = trove_core::SplitMix64::new(1234);
    for i in 0..200 {
        let mut r = Raw::connect(addr);
        let mut bytes = Vec::new();
        if i % 2 == 0 {
            frame::encode_hello(&mut bytes, &Hello::v1(0, 0));
        }
        let n = (rng.next_u64() % 300) as usize;
        bytes.extend((0..n).map(|_| rng.next_u64() as u8));
        if i % 3 == 0 {
            // A valid frame cut short.
            frame::encode_events(&mut bytes, 1, &[HuntEvent::join(9, 1); 4]);
            bytes.truncate(bytes.len() - 1 - (rng.next_u64() % 100) as usize);
        }
        let _ = r.s.write_all(&bytes);
        let _ = r.s.shutdown(std::net::Shutdown::Write);
        // Read to the end: the server must close every such connection
        // (at the latest on the EOF that follows the bytes).
        r.s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        r.expect_closed(&format!("random connection {i}"));
        if i % 20 == 0 {
            check_good(&mut good);
        }
    }
    check_good(&mut good);
    let m = server.metrics();
    assert!(m.errors.iter().any(|(name, n)| *name == "malformed" && *n > 0));
    server.shutdown(Duration::from_secs(5));
}

#[test]
fn connection_limit_and_idle_timeout() {
    let server = start(
        small_engine(),
        // Long enough that `_a` is still open when `c` connects, however
        // slowly a loaded machine runs the test.
        ServerConfig { connections_max: 2, idle_timeout: Duration::from_secs(3), ..ServerConfig::default() },
    );
    let addr = server.tcp_addr();
    let (_a, _) = Raw::hello(addr, 0, false);
    let (mut b, _) = Raw::hello(addr, 0, false);
    let mut c = Raw::connect(addr);
    c.expect_error_and_close(ErrorCode::TooManyConnections);
    // `b` says nothing: closed for idleness (and `_a` with it).
    b.expect_error_and_close(ErrorCode::IdleTimeout);
    server.shutdown(Duration::from_secs(5));
}

#[test]
fn the_same_producer_cannot_produce_on_two_connections_at_once() {
    let server =
        start(small_engine(), ServerConfig { producer_wait: Duration::from_millis(200), ..ServerConfig::default() });
    let addr = server.tcp_addr();
    let (_first, _) = Raw::hello(addr, 99, false);
    let mut second = Raw::connect(addr);
    let mut b = Vec::new();
    frame::encode_hello(&mut b, &Hello::v1(0, 99));
    second.send(&b);
    second.expect_error_and_close(ErrorCode::ProducerInUse);
    server.shutdown(Duration::from_secs(5));
}

#[test]
fn update_chunks_are_split_to_the_frame_limit() {
    let mut events: Vec<Stamped<HuntEvent>> = Vec::new();
    for i in 0..5000 {
        events.push(Stamped { time_us: i, event: HuntEvent::join(1, i as u32) });
    }
    let chunk = trove_shard::Chunk::<TreasureHunt>::new(
        1,
        10,
        events.iter().map(|e| trove_shard::Update::Applied { event: *e, outcome: HuntOutcome::Left }).collect(),
        std::time::Instant::now(),
    );
    let bytes = trove_server::tcp::encode_chunk::<TreasureHunt>(&chunk, 4096);
    let mut at = 0;
    let mut next = 10;
    while at < bytes.len() {
        let (h, total) = frame::split(&bytes[at..], 4096).unwrap().unwrap();
        let Frame::Update { first_seq, count, entries, .. } =
            frame::decode(h, &bytes[at + HEADER_LEN..at + total], SIZES).unwrap()
        else {
            panic!()
        };
        assert_eq!(first_seq, next);
        assert_eq!(decode_entries::<TreasureHunt>(entries).unwrap().len(), count as usize);
        next += u64::from(count);
        at += total;
    }
    assert_eq!(next, 5010);
    assert_eq!(TreasureHunt::OUTCOME_SIZE, 16);
    assert_eq!(HuntEvent::SIZE, 32);
}

#[test]
fn a_frame_is_refused_on_its_header_before_any_body_arrives() {
    // Long timeouts: an answer can only come from the header itself.
    let server = start(
        small_engine(),
        ServerConfig {
            handshake_timeout: Duration::from_secs(120),
            idle_timeout: Duration::from_secs(120),
            ..ServerConfig::default()
        },
    );
    let addr = server.tcp_addr();
    let header = |len: u32, kind: u8| {
        let mut h = len.to_le_bytes().to_vec();
        h.extend_from_slice(&[kind, 0, 0, 0]);
        h
    };
    // Before HELLO: a client kind other than HELLO, small or large body.
    for (len, kind) in [(8, Kind::Ping as u8), (1 << 20, Kind::Events as u8), (4, Kind::Subscribe as u8)] {
        let mut r = Raw::connect(addr);
        r.send(&header(len, kind));
        r.expect_error_and_close(ErrorCode::HandshakeRequired);
    }
    // Before HELLO: a server kind, and an unknown one.
    for kind in [Kind::Welcome as u8, Kind::Ack as u8, 0x7F] {
        let mut r = Raw::connect(addr);
        r.send(&header(32, kind));
        r.expect_error_and_close(ErrorCode::UnknownFrameKind);
    }
    // After WELCOME: a server kind announcing a body, and a second HELLO.
    let (mut r, _) = Raw::hello(addr, 0, false);
    r.send(&header(1000, Kind::Ack as u8));
    r.expect_error_and_close(ErrorCode::UnknownFrameKind);
    let (mut r, _) = Raw::hello(addr, 0, false);
    r.send(&header(24, Kind::Hello as u8));
    r.expect_error_and_close(ErrorCode::HandshakeRequired);
    server.shutdown(Duration::from_secs(5));
}

/// Polls `f` until it holds, for at most a minute.
fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !f() {
        assert!(std::time::Instant::now() < deadline, "never: {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn unfinished_frames_share_one_budget_and_give_it_back() {
    // Room for one frame of 20,000 events (640 KiB) at a time, not two.
    let server =
        start(small_engine(), ServerConfig { unfinished_frame_bytes_max: 1 << 20 | 8, ..ServerConfig::default() });
    let addr = server.tcp_addr();
    let frame_of = |first_seq| {
        let mut b = Vec::new();
        frame::encode_events(&mut b, first_seq, &players(5, 20_000));
        b
    };
    let (a_frame, b_frame) = (frame_of(1), frame_of(1));
    // A sends all of its frame but the last byte: it holds the budget.
    let (mut a, _) = Raw::hello(addr, 0, true);
    a.send(&a_frame[..a_frame.len() - 1]);
    eventually("A's frame holds the budget", || server.metrics().unfinished_frame_bytes > 0);
    // B's whole frame waits for it, unread past its first 16 KiB.
    let (mut b, _) = Raw::hello(addr, 0, true);
    b.send(&b_frame);
    eventually("B waits for the budget", || server.metrics().unfinished_frame_waits > 0);
    let m = server.metrics();
    assert!(m.unfinished_frame_bytes <= 1 << 20 | 8, "the budget bounds what is held: {m:?}");
    // A's last byte: its frame is answered, the budget moves to B.
    a.send(&a_frame[a_frame.len() - 1..]);
    for r in [&mut a, &mut b] {
        match r.decoded() {
            Some(OwnedFrame::Ack { first_seq: 1, count: 20_000, outcomes: Some(o) }) => assert_eq!(o.len(), 20_000),
            other => panic!("expected the ACK, got {other:?}"),
        }
    }
    // Both buffers are back at their base; closed connections hold nothing.
    eventually("the budget comes back", || server.metrics().unfinished_frame_bytes == 0);
    let (mut c, _) = Raw::hello(addr, 0, false);
    c.send(&frame_of(1)[..100_000]);
    eventually("C holds the budget", || server.metrics().unfinished_frame_bytes > 0);
    drop(c);
    eventually("a closed connection gives the budget back", || server.metrics().unfinished_frame_bytes == 0);
    drop((a, b));
    server.shutdown(Duration::from_secs(5));
}

#[test]
fn the_budget_must_hold_one_largest_frame() {
    // TCP's bound alone (the WebSocket endpoint adds its own, below).
    let with =
        |budget: usize| ServerConfig { unfinished_frame_bytes_max: budget, ws_addr: None, ..ServerConfig::default() };
    let err = with(1 << 20).validate().expect_err("a 1 MiB frame could never be buffered").to_string();
    assert!(err.contains("unfinished_frame_bytes_max"), "{err}");
    assert!(with((1 << 20) + HEADER_LEN).validate().is_ok());
    assert!(ServerConfig::default().validate().is_ok());
}

/// A copy of `from` (what a `kill -9` would leave of a running server's
/// data directory: the kernel holds every acknowledged write).
fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let path = e.unwrap().path();
        let target = to.join(path.file_name().unwrap());
        if path.is_dir() { copy_dir(&path, &target) } else { std::fs::copy(&path, &target).map(drop).unwrap() }
    }
}

/// Sends EVENTS and expects ERROR `sequence_reused` naming `seq`, with
/// the connection left open.
fn expect_reused(p: &mut Raw, first_seq: u64, events: &[HuntEvent], seq: u64) {
    p.events(first_seq, events);
    match p.decoded() {
        Some(OwnedFrame::Error { code: ErrorCode::SequenceReused, message }) => {
            assert!(message.contains(&format!("sequence {seq}")), "{message}");
        }
        other => panic!("expected ERROR sequence_reused for {seq}, got {other:?}"),
    }
}

/// Sends EVENTS and returns the ACK's outcomes.
fn expect_ack(p: &mut Raw, first_seq: u64, events: &[HuntEvent]) -> Vec<HuntOutcome> {
    p.events(first_seq, events);
    match p.decoded() {
        Some(OwnedFrame::Ack { first_seq: f, count, outcomes: Some(o) }) if f == first_seq => {
            assert_eq!(count as usize, events.len());
            o
        }
        other => panic!("expected the ACK of {first_seq}, got {other:?}"),
    }
}

/// A producer that resends sequence N with another event gets
/// `sequence_reused`, never the first event's outcome, and the event is not
/// applied; the same event again gets its original outcome. So after a
/// restart from a snapshot, and after a crash (the journal replayed).
#[test]
fn a_reused_sequence_number_is_refused_not_answered_with_another_events_outcome() {
    let dir = std::env::temp_dir().join(format!("trove-tcp-reused-{}", std::process::id()));
    let crashed = dir.with_extension("crash");
    for d in [&dir, &crashed] {
        let _ = std::fs::remove_dir_all(d);
    }
    let journal = trove_shard::JournalConfig {
        snapshot_interval: None,
        ..trove_shard::JournalConfig::new(&dir, trove_shard::FsyncPolicy::Always)
    };
    let engine = EngineConfig { journal: Some(journal), ..small_engine() };
    let server = start(engine.clone(), ServerConfig::default());
    let (mut p, _) = Raw::hello(server.tcp_addr(), 31, true);
    let first = [HuntEvent::create(1, hunt_config()), HuntEvent::join(1, 1), HuntEvent::join(1, 2)];
    let original = expect_ack(&mut p, 1, &first);
    assert!(matches!(original[1], HuntOutcome::Joined { .. }), "{original:?}");

    // `join(player 5)` under player 1's sequence: refused, not "joined".
    expect_reused(&mut p, 2, &[HuntEvent::join(1, 5)], 2);
    // The same event again: its original outcome.
    assert_eq!(expect_ack(&mut p, 2, &[HuntEvent::join(1, 1)]), original[1..2]);
    // A batch reusing sequence 3 and going on with 4: the new event is
    // applied, the reused one is not.
    expect_reused(&mut p, 3, &[HuntEvent::join(1, 6), HuntEvent::join(1, 7)], 3);
    assert_eq!(expect_ack(&mut p, 3, &[HuntEvent::join(1, 2), HuntEvent::join(1, 7)])[0], original[2]);
    // Players 5 and 6 never joined; 7 did.
    let o = expect_ack(&mut p, 5, &[HuntEvent::join(1, 5), HuntEvent::join(1, 6), HuntEvent::join(1, 7)]);
    assert!(matches!(o[..2], [HuntOutcome::Joined { .. }, HuntOutcome::Joined { .. }]), "{o:?}");
    assert_eq!(o[2], HuntOutcome::Rejected { reason: Reject::AlreadyJoined });
    let acked = expect_ack(&mut p, 1, &first);
    assert_eq!(acked, original, "a retry of the first batch");
    let seven = expect_ack(&mut p, 4, &[HuntEvent::join(1, 7)]);
    drop(p);
    // What a crash would leave now: the journal alone, no snapshot.
    copy_dir(&dir, &crashed);
    let m = server.metrics();
    assert!(m.errors.contains(&("sequence_reused", 2)), "{:?}", m.errors);
    let engine_arc = server.engine().clone();
    server.shutdown(Duration::from_secs(5));
    Arc::try_unwrap(engine_arc).unwrap().shutdown();

    for (label, from) in [("a snapshot", &dir), ("the journal", &crashed)] {
        let mut engine = engine.clone();
        engine.journal.as_mut().unwrap().dir = from.clone();
        let server = start(engine, ServerConfig::default());
        let (mut p, _) = Raw::hello(server.tcp_addr(), 31, true);
        expect_reused(&mut p, 2, &[HuntEvent::join(1, 9)], 2);
        expect_reused(&mut p, 4, &[HuntEvent::join(1, 9)], 4);
        assert_eq!(expect_ack(&mut p, 1, &first), original, "restarted from {label}");
        assert_eq!(expect_ack(&mut p, 4, &[HuntEvent::join(1, 7)]), seven, "restarted from {label}");
        // Player 9 never joined.
        let o = expect_ack(&mut p, 8, &[HuntEvent::join(1, 9)]);
        assert!(matches!(o[0], HuntOutcome::Joined { .. }), "restarted from {label}: {o:?}");
        drop(p);
        let engine_arc = server.engine().clone();
        server.shutdown(Duration::from_secs(5));
        Arc::try_unwrap(engine_arc).unwrap().shutdown();
    }
    for d in [&dir, &crashed] {
        std::fs::remove_dir_all(d).ok();
    }
}

#[test]
fn refused_connections_spawn_no_task_and_leave_the_server_answering() {
    let server = start(small_engine(), ServerConfig { connections_max: 1, ..ServerConfig::default() });
    let addr = server.tcp_addr();
    let (mut held, _) = Raw::hello(addr, 0, false);
    let runtime = server.runtime_handle();
    let spawned_before = runtime.metrics().spawned_tasks_count();
    const REFUSED: u64 = 300;
    for _ in 0..REFUSED {
        Raw::connect(addr).expect_error_and_close(ErrorCode::TooManyConnections);
    }
    let spawned = runtime.metrics().spawned_tasks_count() - spawned_before;
    // A task per refused connection would be REFUSED more; a few are the
    // runtime's own or the held connection's.
    assert!(spawned < REFUSED / 10, "{spawned} tasks spawned for {REFUSED} refused connections");
    let m = server.metrics();
    assert!(m.connections_refused >= REFUSED, "{m:?}");
    // The held connection is still served, and its slot goes to the next.
    held.events(1, &[HuntEvent::join(5, 1)]);
    assert!(matches!(held.decoded(), Some(OwnedFrame::Ack { first_seq: 1, count: 1, .. })));
    drop(held);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let mut next = Raw::connect(addr);
        let mut b = Vec::new();
        frame::encode_hello(&mut b, &Hello::v1(0, 0));
        next.send(&b);
        match next.frame() {
            Some((Kind::Welcome, _, _)) => break,
            // The held connection's slot is given back once its task ends.
            Some((Kind::Error, _, _)) => {}
            other => panic!("expected WELCOME, got {other:?}"),
        }
        assert!(std::time::Instant::now() < deadline, "the slot never came back");
        std::thread::sleep(Duration::from_millis(20));
    }
    server.shutdown(Duration::from_secs(5));
}

#[test]
fn with_the_websocket_endpoint_on_the_budget_must_hold_one_largest_message() {
    let ws = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
    let with =
        |budget: usize| ServerConfig { unfinished_frame_bytes_max: budget, ws_addr: ws, ..ServerConfig::default() };
    let err = with((1 << 20) + HEADER_LEN).validate().expect_err("a 1 MiB message could never be read").to_string();
    assert!(err.contains("WebSocket"), "{err}");
    assert!(with((1 << 20) + (64 << 10)).validate().is_ok());
    let off = ServerConfig { ws_addr: None, ..with((1 << 20) + HEADER_LEN) };
    assert!(off.validate().is_ok(), "without the endpoint, TCP's bound alone");
}
