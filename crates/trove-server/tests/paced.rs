//! Paced fan-out (`ServerConfig::subscriber_push_interval`) over real
//! sockets: a subscriber connection is woken about once per interval, gets
//! every update in order, and the first update after a quiet spell goes
//! out at once.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use trove_hunt::{HuntEvent, TreasureHunt};
mod common;

use common::hunt_config;
use trove_proto::Frame;
use trove_proto::frame::{self, HEADER_LEN, Hello, Kind, Sizes};
use trove_server::{Server, ServerConfig};
use trove_shard::{Engine, EngineConfig};

const SIZES: Sizes = Sizes { record: 32, outcome: 16 };

fn start(push_interval: Duration) -> Server<TreasureHunt> {
    // The wait bound is not what these tests are about: on a loaded
    // machine it would turn pipelining into BUSY.
    let engine = EngineConfig { shards: 2, queue_wait_max: Duration::from_secs(60), ..EngineConfig::default() };
    let engine = Arc::new(Engine::<TreasureHunt>::start(engine).unwrap());
    let server = ServerConfig {
        tcp_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        ws_addr: None,
        subscriber_push_interval: push_interval,
        ..ServerConfig::default()
    };
    Server::start(engine, server).unwrap()
}

/// What the tests read: which frame, and for an UPDATE its numbers.
#[derive(Debug, PartialEq)]
enum Got {
    Ack,
    Subscribed { next_seq: u64 },
    Update { first_seq: u64, count: u64 },
    Other(Kind),
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
        assert_eq!(r.next(), Got::Other(Kind::Welcome));
        r
    }

    fn next(&mut self) -> Got {
        loop {
            if let Some((h, total)) = frame::split(&self.buf, 64 << 20).unwrap() {
                let body = self.buf[HEADER_LEN..total].to_vec();
                self.buf.drain(..total);
                let got = match frame::decode(h, &body, SIZES).unwrap() {
                    Frame::Ack { .. } => Got::Ack,
                    Frame::Subscribed { next_seq, .. } => Got::Subscribed { next_seq },
                    Frame::Update { first_seq, entries, .. } => {
                        let count = trove_proto::wire::decode_entries::<TreasureHunt>(entries).unwrap().len();
                        Got::Update { first_seq, count: count as u64 }
                    }
                    _ => Got::Other(h.kind),
                };
                return got;
            }
            let mut chunk = [0u8; 65536];
            match self.s.read(&mut chunk) {
                Ok(0) => panic!("closed"),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) => panic!("no frame within the read timeout: {e}"),
            }
        }
    }

    fn subscribe(&mut self, hunt: u32) -> u64 {
        let mut b = Vec::new();
        frame::encode_u32_frame(&mut b, Kind::Subscribe, hunt);
        self.s.write_all(&b).unwrap();
        match self.next() {
            Got::Subscribed { next_seq } => next_seq,
            other => panic!("expected SUBSCRIBED, got {other:?}"),
        }
    }

    /// Sends a batch and waits for its ACK.
    fn events(&mut self, events: &[HuntEvent]) {
        let mut b = Vec::new();
        frame::encode_events(&mut b, self.next_seq, events);
        self.next_seq += events.len() as u64;
        self.s.write_all(&b).unwrap();
        assert_eq!(self.next(), Got::Ack);
    }
}

/// Reads updates until `next` reaches `until`, checking that they come in
/// order with no hole; returns how many UPDATE frames there were.
fn read_in_order(sub: &mut Raw, next: &mut u64, until: u64) -> u64 {
    let mut frames = 0;
    while *next < until {
        match sub.next() {
            Got::Update { first_seq, count } => {
                assert_eq!(first_seq, *next, "updates in order, with no hole");
                *next += count;
                frames += 1;
            }
            other => panic!("expected UPDATE, got {other:?}"),
        }
    }
    assert_eq!(*next, until);
    frames
}

#[test]
fn paced_a_busy_subscriber_is_woken_far_less_often_than_batches_and_misses_nothing() {
    const BATCHES: u64 = 400;
    let server = start(Duration::from_millis(250));
    let addr = server.tcp_addr();
    let mut sub = Raw::hello(addr);
    let mut next = sub.subscribe(1);
    let mut p = Raw::hello(addr);
    let mut setup = vec![HuntEvent::create(1, hunt_config())];
    setup.extend((0..10).map(|i| HuntEvent::join(1, i)));
    p.events(&setup);
    let before = server.engine().hub().metrics();
    // One batch at a time (each waits for its ACK): each is applied on its
    // own, one chunk each.
    for b in 0..BATCHES {
        p.events(&[HuntEvent::move_by(1, (b % 10) as u32, 1, 0), HuntEvent::move_by(1, (b % 10) as u32, -1, 0)]);
    }
    // Joins and moves cause no broadcasts: one update per event.
    let total = setup.len() as u64 + 2 * BATCHES;
    read_in_order(&mut sub, &mut next, 1 + total);
    let m = server.engine().hub().metrics();
    let chunks = m.chunk_deliveries - before.chunk_deliveries;
    let wakeups = m.wakeups - before.wakeups;
    assert!(chunks >= BATCHES, "{chunks} chunks for {BATCHES} batches acknowledged one by one");
    // Unpaced, a subscriber that the server writes to at once is woken for
    // nearly every chunk.
    assert!(wakeups * 4 <= chunks, "{wakeups} wakeups for {chunks} chunks");
    server.shutdown(Duration::from_secs(5));
}

#[test]
fn paced_the_first_update_after_a_quiet_spell_is_pushed_at_once() {
    // Far longer than an update takes to arrive unpaced.
    const INTERVAL: Duration = Duration::from_secs(1);
    let server = start(INTERVAL);
    let addr = server.tcp_addr();
    let mut sub = Raw::hello(addr);
    let mut next = sub.subscribe(1);
    let mut p = Raw::hello(addr);
    p.events(&[HuntEvent::create(1, hunt_config())]);
    let first = Instant::now();
    read_in_order(&mut sub, &mut next, 2);
    assert!(first.elapsed() < INTERVAL / 2, "the first update took {:?}", first.elapsed());
    // A second at once waits for the ticker (the connection was woken in
    // this interval already) and arrives whole.
    let second = Instant::now();
    p.events(&[HuntEvent::join(1, 1)]);
    read_in_order(&mut sub, &mut next, 3);
    assert!(second.elapsed() >= INTERVAL / 4, "the second update was not held for the tick");
    // Quiet for longer than a tick: the next goes out at once again.
    std::thread::sleep(2 * INTERVAL);
    let third = Instant::now();
    p.events(&[HuntEvent::join(1, 2)]);
    read_in_order(&mut sub, &mut next, 4);
    assert!(third.elapsed() < INTERVAL / 2, "after a quiet spell the update took {:?}", third.elapsed());
    server.shutdown(Duration::from_secs(5));
}

#[test]
fn a_push_interval_over_the_limit_is_refused() {
    let config = ServerConfig { subscriber_push_interval: Duration::from_millis(1001), ..ServerConfig::default() };
    assert!(config.validate().unwrap_err().to_string().contains("subscriber_push_interval_ms"));
}
