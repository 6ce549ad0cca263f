//! The SDK's window in events, against a real server (docs/protocol.md,
//! "BUSY"): a producer whose batches the server refuses, or whose batches
//! wait far longer than its `queue_delay_target` past the least round trip
//! it has seen, lets fewer events be unanswered (so that past capacity the
//! backlog stays in the application, not in the server's queues), still
//! gets every event applied exactly once, and grows its window back once
//! the server takes what it sends promptly. The shard is held in a query
//! to make the server slow or full: only what that guarantees is asserted
//! (a hold of 2 s against round trips the test measured), never a speed.

use std::sync::Arc;
use std::time::Duration;

use trove_client::{ClientConfig, DEDUP_WINDOW_EVENTS, Producer};
use trove_hunt::{HuntEvent, TreasureHunt};
use trove_server::{Server, ServerConfig};
use trove_shard::{Engine, EngineConfig};

const BATCH: u32 = 1000;
/// The producers' window: the most the server's retries allow, so that a
/// held shard's queue fills long before the window does.
const WINDOW: u32 = DEDUP_WINDOW_EVENTS;

/// Runs `test` with a producer connected to a fresh one-shard server.
fn with_server<F>(queue_events_max: usize, queue_delay_target: Option<Duration>, test: F)
where
    F: AsyncFnOnce(&Engine<TreasureHunt>, Producer<TreasureHunt>),
{
    let engine = EngineConfig {
        shards: 1,
        batch_events_max: BATCH as usize,
        queue_events_max,
        // The engine's wait bound is not what these tests are about.
        queue_wait_max: Duration::from_secs(60),
        ..EngineConfig::default()
    };
    let engine = Arc::new(Engine::<TreasureHunt>::start(engine).unwrap());
    let server = ServerConfig { tcp_addr: "127.0.0.1:0".parse().unwrap(), ws_addr: None, ..ServerConfig::default() };
    // The server runs its own runtime; the client gets another (a runtime
    // cannot be dropped inside one).
    let server = Server::start(engine.clone(), server).unwrap();
    let client = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let config = ClientConfig {
        batch_events_max: BATCH,
        window_batches: 64,
        unacked_events_max: WINDOW,
        want_outcomes: false,
        queue_delay_target,
        ..ClientConfig::new(server.tcp_addr().to_string())
    };
    client.block_on(async {
        let (p, acks) = Producer::<TreasureHunt>::connect(config).await.unwrap();
        drop(acks);
        assert_eq!(p.stats().events_allowed, u64::from(WINDOW));
        test(&engine, p).await;
    });
    drop(client);
    drop(server);
}

/// Holds the shard (in a query) until the sender is used or dropped.
fn hold(engine: &Engine<TreasureHunt>) -> std::sync::mpsc::Sender<()> {
    let (release, held) = std::sync::mpsc::channel::<()>();
    let _answered = engine.query_world(0, move |_| {
        let _ = held.recv_timeout(Duration::from_secs(120));
    });
    release
}

fn events() -> impl FnMut() -> HuntEvent {
    let mut player = 0u32;
    move || {
        player += 1;
        HuntEvent::join(player % 64, player)
    }
}

#[test]
fn a_producer_halves_its_window_on_busy_and_grows_it_back() {
    // The queue takes 4 batches of 1,000 while the shard is held. No
    // delay target: this is BUSY's part alone.
    with_server(4 * BATCH as usize, None, async |engine, p| busy_then_growth(engine, p).await);
}

async fn busy_then_growth(engine: &Engine<TreasureHunt>, mut p: Producer<TreasureHunt>) {
    // The shard is held while 60 batches go out: all fit the producer's
    // window, and all but the first few are answered BUSY.
    let release = hold(engine);
    let mut next_event = events();
    for _ in 0..60 * BATCH {
        p.send(next_event()).unwrap();
    }
    p.flush().await.unwrap();
    // Answers come in order: the BUSY answers wait behind the batches the
    // held shard took, so they reach the producer once it is released.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while engine.metrics().busy_replies == 0 {
        assert!(tokio::time::Instant::now() < deadline, "no BUSY while the shard was held");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(p.stats().busy, 0);
    release.send(()).unwrap();
    p.drain().await.unwrap();
    assert!(p.stats().busy > 0);
    let halved = p.stats().events_allowed;
    assert!(halved <= u64::from(WINDOW) / 2, "after BUSY the window is {halved} events");
    assert_eq!(p.stats().events_acked, u64::from(60 * BATCH), "every event acknowledged after the resends");

    // One batch at a time now: nothing queues, nothing is refused, and
    // the ACKs grow the window by a batch per window's worth.
    let busy = p.stats().busy;
    let mut rounds = 0;
    while p.stats().events_allowed < u64::from(WINDOW) {
        rounds += 1;
        assert!(rounds <= 20_000, "the window stopped growing at {}", p.stats().events_allowed);
        for _ in 0..BATCH {
            p.send(next_event()).unwrap();
        }
        p.drain().await.unwrap();
        assert!(p.stats().events_allowed > halved);
    }
    assert_eq!(p.stats().busy, busy, "a producer alone with an idle shard is never refused");
    let stats = p.close().await.unwrap();
    let end = engine.metrics();
    assert_eq!(end.events_applied(), stats.events_acked, "each event applied exactly once");
}

#[test]
fn a_producer_shrinks_its_window_when_round_trips_pass_its_target() {
    // Room for everything: no BUSY, only slow answers.
    let target = Duration::from_millis(3);
    with_server(1 << 18, Some(target), async |engine, p| slow_round_trips(engine, p, target).await);
}

async fn slow_round_trips(engine: &Engine<TreasureHunt>, mut p: Producer<TreasureHunt>, target: Duration) {
    let mut next_event = events();
    // The base: batches one at a time; the producer's least round trip is
    // at most the fastest of these.
    let mut fastest = Duration::MAX;
    for _ in 0..20 {
        let t = std::time::Instant::now();
        for _ in 0..BATCH {
            p.send(next_event()).unwrap();
        }
        p.drain().await.unwrap();
        fastest = fastest.min(t.elapsed());
    }
    let before = p.stats().events_allowed;
    // Ten batches wait in the held shard's queue for longer than the base
    // plus the target, whatever the machine's speed.
    let held_for = (2 * fastest + 10 * target).max(Duration::from_secs(2));
    let release = hold(engine);
    for _ in 0..10 * BATCH {
        p.send(next_event()).unwrap();
    }
    p.flush().await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while engine.metrics().shards[0].queue_depth_events < u64::from(10 * BATCH) {
        assert!(tokio::time::Instant::now() < deadline, "the batches never reached the shard's queue");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::time::sleep(held_for).await;
    release.send(()).unwrap();
    p.drain().await.unwrap();
    let after = p.stats().events_allowed;
    assert!(after < before, "round trips of {held_for:?} against a base of at most {fastest:?}: {before} -> {after}");
    assert_eq!(p.stats().busy, 0);
    let stats = p.close().await.unwrap();
    assert_eq!(engine.metrics().events_applied(), stats.events_acked, "each event applied exactly once");
}
