//! The client SDK against a real `trove serve` process, for what only a
//! server can answer: a producer that reuses a sequence number with
//! another event gets `ClientError::SequenceReused` through the public
//! API (docs/protocol.md, `sequence_reused`), goes on with its next batch,
//! and the event it tried to pass off is not applied.

mod common;

use std::time::Duration;

use common::Serve;
use trove_client::{ClientConfig, ClientError, Producer};
use trove_hunt::{HuntEvent, HuntOutcome, TreasureHunt};
use trove_proto::ErrorCode;

/// A producer id of this test's own.
const PRODUCER: u64 = 0x5e9_2e05ed;
const HUNT: u32 = 19;

/// A producer with the fixed id, numbering from `first_seq`, sending one
/// event per batch.
fn config(addr: std::net::SocketAddr, first_seq: u64) -> ClientConfig {
    let mut c = ClientConfig::new(addr.to_string());
    c.producer_id = Some(PRODUCER);
    c.first_seq = first_seq;
    c.batch_events_max = 1;
    c.reconnect_attempts_max = Some(0);
    c
}

#[test]
fn a_reused_sequence_number_with_another_event_is_a_typed_error_through_the_sdk() {
    let mut serve = Serve::spawn(&["--no-journal", "--tcp", "127.0.0.1:0", "--ws", "off", "--control", "127.0.0.1:0"]);
    let addr = serve.wait_ready();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(120), async {
            // The first run: a hunt, and player 1 joins it at sequence 2.
            let (mut producer, mut acks) = Producer::<TreasureHunt>::connect(config(addr, 1)).await.expect("connects");
            assert_eq!(producer.send_wait(HuntEvent::create(HUNT, common::hunt_config())).await.expect("send"), 1);
            assert_eq!(producer.send_wait(HuntEvent::join(HUNT, 1)).await.expect("send"), 2);
            producer.close().await.expect("close");
            let created = acks.next().await.expect("an answer").expect("acknowledged");
            assert_eq!(created.outcome(1), Some(&HuntOutcome::Created { round: 1 }));
            let joined = acks.next().await.expect("an answer").expect("acknowledged");
            assert!(matches!(joined.outcome(2), Some(HuntOutcome::Joined { .. })), "{:?}", joined.outcomes);

            // A second run of the same producer id starts over at 2 with
            // another event (player 5), then goes on at 3 with player 6.
            let (mut producer, mut acks) = Producer::<TreasureHunt>::connect(config(addr, 2)).await.expect("connects");
            assert_eq!(producer.send_wait(HuntEvent::join(HUNT, 5)).await.expect("send"), 2);
            assert_eq!(producer.send_wait(HuntEvent::join(HUNT, 6)).await.expect("send"), 3);
            producer.close().await.expect("close");
            match acks.next().await.expect("an answer") {
                Err(ClientError::SequenceReused { first_seq: 2, count: 1, error }) => {
                    assert_eq!(error.code(), Some(ErrorCode::SequenceReused));
                }
                other => panic!("expected SequenceReused for sequence 2, got {other:?}"),
            }
            // The producer went on: its next batch was applied as usual.
            let next = acks.next().await.expect("an answer").expect("the next batch is acknowledged");
            assert_eq!(next.first_seq, 3);
            assert!(matches!(next.outcome(3), Some(HuntOutcome::Joined { .. })), "{:?}", next.outcomes);
            assert!(acks.next().await.is_none(), "no more answers");

            // Player 5 never joined: a resend of sequence 2's real event is
            // answered with its original outcome, and player 5 joining now
            // is new.
            let (mut producer, mut acks) = Producer::<TreasureHunt>::connect(config(addr, 2)).await.expect("connects");
            producer.send_wait(HuntEvent::join(HUNT, 1)).await.expect("send");
            producer.close().await.expect("close");
            let resend = acks.next().await.expect("an answer").expect("a resend is acknowledged");
            assert_eq!(resend.outcome(2), joined.outcome(2), "a resend gets the original outcome");
            let (mut producer, mut acks) = Producer::<TreasureHunt>::connect(config(addr, 4)).await.expect("connects");
            producer.send_wait(HuntEvent::join(HUNT, 5)).await.expect("send");
            producer.close().await.expect("close");
            let five = acks.next().await.expect("an answer").expect("acknowledged");
            assert!(
                matches!(five.outcome(4), Some(HuntOutcome::Joined { .. })),
                "player 5 joins now: {:?}",
                five.outcomes
            );
        })
        .await
        .expect("the test finishes in time")
    });
    let (status, stderr) = serve.terminate(Duration::from_secs(60));
    assert!(status.success(), "{status}; stderr:\n{stderr}");
}
