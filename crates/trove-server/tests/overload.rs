//! Overload degrades without collapse (issue 19, item 4): a real server
//! whose engine has room for a single queued batch is driven by three
//! producers that each pipeline far more than that, round after round.
//! What must hold, however fast or slow the machine: every EVENTS frame is
//! answered (ACK or BUSY, in order), every BUSY carries a usable retry
//! hint, some batch is acknowledged in every round (goodput never drops to
//! zero), the server keeps answering other connections, every acknowledged
//! event is applied exactly once, and once the overload stops the server
//! serves normally again. Behaviour only: no timing is asserted.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use trove_hunt::{HuntConfig, HuntEvent, TreasureHunt};
use trove_proto::Frame;
use trove_proto::frame::{self, HEADER_LEN, Hello, Kind, Sizes};
use trove_server::{Server, ServerConfig};
use trove_shard::{Engine, EngineConfig};

const SIZES: Sizes = Sizes { record: 32, outcome: 16 };
/// Producers pushing at once.
const PRODUCERS: u32 = 3;
/// Batches each producer pipelines per round, and events per batch.
const PIPELINE: u64 = 16;
const BATCH: u64 = 256;
/// Batches each producer must get acknowledged.
const BATCHES: u64 = 48;
/// Rounds after which a producer that still has BUSY batches fails the test
/// (each round acknowledges at least one batch, so this is never reached
/// by a server that keeps serving).
const ROUNDS_MAX: u32 = 10_000;
/// A retry hint above this is no hint (a minute).
const RETRY_AFTER_MS_MAX: u32 = 60_000;

#[derive(Debug, PartialEq)]
enum Answer {
    Ack { first_seq: u64, count: u32 },
    Busy { first_seq: u64, count: u32, retry_after_ms: u32 },
    Pong { nonce: u64 },
}

struct Raw {
    s: TcpStream,
    buf: Vec<u8>,
}

impl Raw {
    fn hello(addr: SocketAddr) -> Raw {
        let s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        s.set_nodelay(true).unwrap();
        let mut r = Raw { s, buf: Vec::new() };
        let mut b = Vec::new();
        frame::encode_hello(&mut b, &Hello::v1(0, 0));
        r.s.write_all(&b).unwrap();
        let (kind, _) = r.frame();
        assert_eq!(kind, Kind::Welcome);
        r
    }

    fn frame(&mut self) -> (Kind, Vec<u8>) {
        loop {
            if let Some((h, total)) = frame::split(&self.buf, 1 << 20).unwrap() {
                let body = self.buf[HEADER_LEN..total].to_vec();
                self.buf.drain(..total);
                return (h.kind, body);
            }
            let mut chunk = [0u8; 65536];
            // A read timeout fails the test: the server stopped answering.
            let n = self.s.read(&mut chunk).expect("the server answers within the read timeout");
            assert!(n > 0, "the server closed the connection");
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    fn answer(&mut self) -> Answer {
        let (kind, body) = self.frame();
        let f = frame::decode(frame::Header { kind, flags: 0, len: body.len() as u32 }, &body, SIZES).unwrap();
        match f {
            Frame::Ack { first_seq, count, .. } => Answer::Ack { first_seq, count },
            Frame::Busy { first_seq, count, retry_after_ms } => Answer::Busy { first_seq, count, retry_after_ms },
            Frame::Pong { nonce } => Answer::Pong { nonce },
            other => panic!("expected ACK, BUSY or PONG, got {other:?}"),
        }
    }
}

fn config() -> HuntConfig {
    HuntConfig {
        width: 256,
        height: 256,
        seed: 3,
        treasures_per_round: 64,
        value_min: 1,
        value_max: 9,
        dig_cooldown_ms: 0,
        step_max: 4,
        players_max: 1 << 20,
    }
}

/// Batch `k` of producer `p`: joins of players no other batch names, so a
/// batch applied twice would show in the count of applied events.
fn batch(p: u32, k: u64) -> Vec<HuntEvent> {
    (0..BATCH).map(|i| HuntEvent::join(p + 1, (k * BATCH + i) as u32)).collect()
}

struct Producer {
    conn: Raw,
    hunt_created: bool,
    /// Batches acknowledged so far (batch k has sequence 2 + k * BATCH; the
    /// create is sequence 1).
    acked: u64,
}

fn seq_of(k: u64) -> u64 {
    2 + k * BATCH
}

#[test]
fn overload_degrades_without_collapse_and_recovers() {
    let engine = EngineConfig { shards: 1, queue_batches_max: 1, ..EngineConfig::default() };
    let engine = Arc::new(Engine::<TreasureHunt>::start(engine).unwrap());
    let any = SocketAddr::from(([127, 0, 0, 1], 0));
    let server_config = ServerConfig { tcp_addr: any, ws_addr: None, window_batches: 256, ..ServerConfig::default() };
    let server = Server::start(engine, server_config).unwrap();
    let addr = server.tcp_addr();

    let mut producers: Vec<Producer> =
        (0..PRODUCERS).map(|_| Producer { conn: Raw::hello(addr), hunt_created: false, acked: 0 }).collect();
    for (p, prod) in producers.iter_mut().enumerate() {
        let mut b = Vec::new();
        frame::encode_events(&mut b, 1, &[HuntEvent::create(p as u32 + 1, config())]);
        prod.conn.s.write_all(&b).unwrap();
        assert_eq!(prod.conn.answer(), Answer::Ack { first_seq: 1, count: 1 });
        prod.hunt_created = true;
    }
    // Another connection that only pings: the server must keep answering it.
    let mut pinger = Raw::hello(addr);

    let (mut busy_seen, mut rounds) = (0u64, 0u32);
    while producers.iter().any(|p| p.acked < BATCHES) {
        rounds += 1;
        assert!(rounds <= ROUNDS_MAX, "still BUSY after {ROUNDS_MAX} rounds");
        // Everyone writes a whole pipeline first, so the batches meet in
        // the engine's one-batch queue.
        let mut sent = Vec::new();
        for (p, prod) in producers.iter_mut().enumerate() {
            let upto = (prod.acked + PIPELINE).min(BATCHES);
            let mut b = Vec::new();
            for k in prod.acked..upto {
                frame::encode_events(&mut b, seq_of(k), &batch(p as u32, k));
            }
            prod.conn.s.write_all(&b).unwrap();
            sent.push(prod.acked..upto);
        }
        let mut b = Vec::new();
        frame::encode_u64_frame(&mut b, Kind::Ping, u64::from(rounds));
        pinger.s.write_all(&b).unwrap();

        // One answer per frame, in order: ACKs for a prefix, then BUSY for
        // the first refused batch and every batch after it.
        let (mut acked_this_round, mut retry_after_ms) = (0u64, 0u32);
        for (prod, range) in producers.iter_mut().zip(sent) {
            let mut refused = false;
            for k in range {
                match prod.conn.answer() {
                    Answer::Ack { first_seq, count } => {
                        assert!(!refused, "an ACK after a BUSY on the same connection");
                        assert_eq!((first_seq, u64::from(count)), (seq_of(k), BATCH));
                        prod.acked = k + 1;
                        acked_this_round += 1;
                    }
                    Answer::Busy { first_seq, count, retry_after_ms: hint } => {
                        assert_eq!((first_seq, u64::from(count)), (seq_of(k), BATCH));
                        assert!((1..=RETRY_AFTER_MS_MAX).contains(&hint), "BUSY carries a retry hint: {hint} ms");
                        retry_after_ms = retry_after_ms.max(hint);
                        refused = true;
                        busy_seen += 1;
                    }
                    other => panic!("{other:?}"),
                }
            }
        }
        // The first batch to reach an empty queue is always taken.
        assert!(acked_this_round > 0, "round {rounds}: nothing acknowledged, goodput collapsed");
        assert_eq!(pinger.answer(), Answer::Pong { nonce: u64::from(rounds) }, "the server keeps answering");
        // As a producer must: wait the hint, then resend from the first BUSY.
        std::thread::sleep(Duration::from_millis(u64::from(retry_after_ms)));
    }
    assert!(busy_seen > 0, "the one-batch queue refused nothing: the server was never overloaded");
    assert_eq!(server.metrics().busy_replies, busy_seen, "every BUSY sent was one the producers saw");
    assert!(producers.iter().all(|p| p.hunt_created));

    // Overload over: one batch at a time is accepted at once, on a
    // connection that was refused and on a new one.
    let mut fresh = Raw::hello(addr);
    let mut b = Vec::new();
    frame::encode_events(&mut b, 1, &[HuntEvent::create(99, config())]);
    fresh.s.write_all(&b).unwrap();
    assert_eq!(fresh.answer(), Answer::Ack { first_seq: 1, count: 1 });
    for k in 0..8 {
        let mut b = Vec::new();
        let events: Vec<HuntEvent> = (0..BATCH).map(|i| HuntEvent::join(99, (k * BATCH + i) as u32)).collect();
        frame::encode_events(&mut b, seq_of(k), &events);
        fresh.s.write_all(&b).unwrap();
        assert_eq!(fresh.answer(), Answer::Ack { first_seq: seq_of(k), count: BATCH as u32 }, "after the overload");
        let prod = &mut producers[0];
        let mut b = Vec::new();
        frame::encode_events(&mut b, seq_of(BATCHES + k), &batch(0, BATCHES + k));
        prod.conn.s.write_all(&b).unwrap();
        assert_eq!(prod.conn.answer(), Answer::Ack { first_seq: seq_of(BATCHES + k), count: BATCH as u32 });
    }

    // Exactly once: every acknowledged event applied, none twice.
    drop((producers, pinger, fresh));
    let engine = server.engine().clone();
    server.shutdown(Duration::from_secs(30));
    let fin = Arc::try_unwrap(engine).unwrap().shutdown();
    let creates = u64::from(PRODUCERS) + 1;
    let joins = u64::from(PRODUCERS) * BATCHES * BATCH + 2 * 8 * BATCH;
    assert_eq!(fin.events_applied, creates + joins, "every acknowledged event applied exactly once");
}
