//! The SDK under BUSY, against a real server: a producer whose batches the
//! server refuses halves the events it lets be unanswered (so that past
//! capacity the backlog stays in the application, not in flight), still
//! gets every event applied exactly once, and grows its window back once
//! the server takes what it sends. Behaviour only: no timing is asserted.

use std::sync::Arc;
use std::time::Duration;

use trove_client::{ClientConfig, Producer, UNACKED_EVENTS_MAX_DEFAULT};
use trove_hunt::{HuntEvent, TreasureHunt};
use trove_server::{Server, ServerConfig};
use trove_shard::{Engine, EngineConfig};

const BATCH: u32 = 1000;

#[test]
fn a_producer_halves_its_window_on_busy_and_grows_it_back() {
    // One shard whose queue takes 4 batches of 1,000 while it is held.
    let engine = EngineConfig {
        shards: 1,
        batch_events_max: BATCH as usize,
        queue_events_max: 4 * BATCH as usize,
        ..EngineConfig::default()
    };
    let engine = Arc::new(Engine::<TreasureHunt>::start(engine).unwrap());
    let server = ServerConfig { tcp_addr: "127.0.0.1:0".parse().unwrap(), ws_addr: None, ..ServerConfig::default() };
    // The server runs its own runtime; the client gets another (a runtime
    // cannot be dropped inside one).
    let server = Server::start(engine.clone(), server).unwrap();
    let client = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    client.block_on(produce(&engine, &server));
    drop(client);
    drop(server);
}

async fn produce(engine: &Engine<TreasureHunt>, server: &Server<TreasureHunt>) {
    let config = ClientConfig {
        batch_events_max: BATCH,
        window_batches: 64,
        want_outcomes: false,
        ..ClientConfig::new(server.tcp_addr().to_string())
    };
    let (mut p, acks) = Producer::<TreasureHunt>::connect(config).await.unwrap();
    drop(acks);
    assert_eq!(p.stats().events_allowed, u64::from(UNACKED_EVENTS_MAX_DEFAULT));

    // The shard is held in a query while 60 batches go out: all fit the
    // producer's window, and all but the first few are answered BUSY.
    let (release, held) = std::sync::mpsc::channel::<()>();
    let _held = engine.query_world(0, move |_| {
        let _ = held.recv_timeout(Duration::from_secs(120));
    });
    let mut player = 0u32;
    let mut next_event = || {
        player += 1;
        HuntEvent::join(player % 64, player)
    };
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
    assert!(halved <= u64::from(UNACKED_EVENTS_MAX_DEFAULT) / 2, "after BUSY the window is {halved} events");
    assert!(halved >= u64::from(BATCH), "never below one batch");
    assert_eq!(p.stats().events_acked, u64::from(60 * BATCH), "every event acknowledged after the resends");

    // One batch at a time now: nothing queues, nothing is refused, and
    // each ACK grows the window by about a batch per window's worth.
    let busy = p.stats().busy;
    let mut rounds = 0;
    while p.stats().events_allowed < u64::from(UNACKED_EVENTS_MAX_DEFAULT) {
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
