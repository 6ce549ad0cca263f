//! Fault injection on what a takeover reads, against one real nats-server
//! (JetStream, R1): a partition's snapshot object corrupted, cut short,
//! of another partition or deleted after the purge it allowed; a stream
//! message that is not a frame, cut short or out of place; a message
//! deleted from the middle of the stream. Each time the rebuild a taking
//! node runs (`recover_partition`) refuses with a typed error naming the
//! partition and the damage; it never returns a state, so a node never
//! serves one other than the intact inputs give (a node gives the lease
//! up on any refusal and tries again at a later tick: `node.rs`
//! `take_over`). Once the damage is repaired the same rebuild gives the
//! intact state again.
//!
//! Without the binary a test prints why it skips and passes (`.ci/run`
//! installs it, so CI never skips).

use std::time::Duration;

use async_nats::jetstream::object_store::ObjectMetadata;
use bytes::Bytes;
use trove_bench::nats::{NatsServer, nats_server_or_skip};
use trove_cluster::stream_log::append_msg_id;
use trove_cluster::{Nats, PartitionLog, RecoverError, Snapshots};
use trove_core::Stamped;
use trove_hunt::{HuntConfig, HuntEvent, TreasureHunt};
use trove_journal::Entry;
use trove_journal::format::encode_entries;
use trove_shard::CoreConfig;
use trove_shard::journaled::Rebuild;

/// The hunt every batch plays.
const HUNT: u32 = 11;
/// The producer of every batch.
const PRODUCER: u64 = 7;

fn core() -> CoreConfig {
    CoreConfig {
        worlds_max: 16,
        dedup_window_events: 64,
        dedup_producers_max: 8,
        journaled: true,
        snapshot_interval: None,
    }
}

const HUNT_CONFIG: HuntConfig = HuntConfig {
    width: 64,
    height: 64,
    seed: 5,
    treasures_per_round: 8,
    value_min: 1,
    value_max: 10,
    dig_cooldown_ms: 0,
    step_max: 4,
    players_max: 64,
};

/// Batch `seq` (the stream sequence it lands at): the first creates the
/// hunt, each later one joins player `seq`.
fn batch(seq: u64) -> Vec<Entry<HuntEvent>> {
    let event = if seq == 1 { HuntEvent::create(HUNT, HUNT_CONFIG) } else { HuntEvent::join(HUNT, seq as u32) };
    vec![Entry { producer: PRODUCER, producer_seq: seq, stamped: Stamped { time_us: seq * 1000, event } }]
}

/// Batch `batch_no`'s frame, as an owner's `StreamLog` publishes it.
fn frame(batch_no: u64, entries: &[Entry<HuntEvent>]) -> Bytes {
    let mut out = Vec::new();
    encode_entries(batch_no, batch_no, entries, &mut out);
    Bytes::from(out)
}

/// Appends batches `from..=to`, each at its own sequence, as an owner of
/// epoch 1 would.
async fn append_batches(log: &PartitionLog, from: u64, to: u64) {
    for seq in from..=to {
        let id = append_msg_id(log.partition(), 1, seq);
        assert_eq!(log.append(seq - 1, frame(seq, &batch(seq)), &id).await.expect("append"), seq);
    }
}

/// A snapshot of partition `p` after batches `1..next`, as its owner
/// stores one.
fn snapshot_bytes(p: u32, next: u64) -> Vec<u8> {
    let mut rebuilt = Rebuild::<TreasureHunt>::new(p as usize, core());
    for seq in 1..next {
        rebuilt.apply(&batch(seq));
    }
    rebuilt.into_core(core()).snapshot(Duration::ZERO).encode(p, next)
}

/// A takeover's rebuild of `log`: the state hash and the messages replayed.
async fn recover(log: &PartitionLog, snapshots: &Snapshots) -> Result<(u64, u64), RecoverError> {
    let r = trove_cluster::recover_partition::<TreasureHunt>(log, Some(snapshots), core(), None, |_, _, _| {}).await?;
    Ok((r.rebuilt.state().state_hash(), r.replayed))
}

/// The `Damaged` message of a refused rebuild of partition `p`.
fn damaged(r: Result<(u64, u64), RecoverError>, p: u32) -> String {
    match r {
        Err(RecoverError::Damaged { partition, message }) if partition == p => message,
        r => panic!("partition {p}: a damaged input was not refused as Damaged: {r:?}"),
    }
}

async fn connect(server: &NatsServer, cluster: &str) -> Nats {
    Nats::connect(&[server.url()], cluster, 1, Duration::from_secs(3)).await.expect("connecting")
}

/// Partition 2's snapshot covers batches 1..=4 and its stream was purged
/// below it; then the snapshot object is damaged in the object store in
/// each way a taker can meet.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_or_missing_snapshot_is_refused_never_read_around() {
    if !nats_server_or_skip("a_damaged_or_missing_snapshot_is_refused_never_read_around") {
        return;
    }
    let server = NatsServer::start();
    let nats = connect(&server, "faults").await;
    let p = 2;
    let log = nats.log(p).await.unwrap();
    let snapshots = nats.snapshots().await.unwrap();
    append_batches(&log, 1, 6).await;
    let (intact, replayed) = recover(&log, &snapshots).await.expect("the intact stream");
    assert_eq!(replayed, 6);

    // The owner's snapshot at 5, then the purge it allows: the takeover
    // loads it and replays 5 and 6, to the same state.
    let good = snapshot_bytes(p, 5);
    assert!(snapshots.put_newer(p, 5, &good).await.unwrap());
    log.purge_below(5).await.unwrap();
    assert_eq!(recover(&log, &snapshots).await.expect("snapshot and stream"), (intact, 2));

    // The object itself, rewritten in place under its name.
    let store = nats.jetstream().get_object_store(nats.names().snapshots_bucket()).await.unwrap();
    let name = format!("{}-{:020}", nats.names().snapshot_object(p), 5);
    let put = |bytes: Vec<u8>| {
        let (store, name) = (store.clone(), name.clone());
        async move {
            let meta = ObjectMetadata { name, description: Some("next=5".into()), ..Default::default() };
            store.put(meta, &mut &bytes[..]).await.expect("rewriting the snapshot object");
        }
    };

    // A flipped byte in the middle.
    let mut flipped = good.clone();
    let mid = flipped.len() / 2;
    flipped[mid] ^= 0x40;
    put(flipped).await;
    let why = damaged(recover(&log, &snapshots).await, p);
    assert!(why.contains("its snapshot"), "{why}");

    // Cut short.
    put(good[..good.len() - 3].to_vec()).await;
    let why = damaged(recover(&log, &snapshots).await, p);
    assert!(why.contains("its snapshot"), "{why}");

    // Whole and valid, but another partition's.
    put(snapshot_bytes(p + 1, 5)).await;
    let why = damaged(recover(&log, &snapshots).await, p);
    assert!(why.contains("its snapshot") && why.contains("shard 3"), "{why}");

    // Deleted: the stream starts at 5 and nothing holds 1..=4.
    store.delete(name.as_str()).await.unwrap();
    let why = damaged(recover(&log, &snapshots).await, p);
    assert!(why.contains("the stream starts at 5"), "{why}");

    // Repaired (the snapshot stored again), the takeover gives the
    // intact state.
    put(good).await;
    assert_eq!(recover(&log, &snapshots).await.expect("repaired"), (intact, 2));
}

/// A message of the stream that is not its batch's whole frame, or a gap
/// in the stream: the replay stops there, nothing after it applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_message_or_a_gap_in_the_stream_stops_the_replay() {
    if !nats_server_or_skip("a_damaged_message_or_a_gap_in_the_stream_stops_the_replay") {
        return;
    }
    let server = NatsServer::start();
    let nats = connect(&server, "gaps").await;
    let snapshots = nats.snapshots().await.unwrap();

    // Partition 0: message 4 is not a frame.
    let log = nats.log(0).await.unwrap();
    append_batches(&log, 1, 3).await;
    log.append(3, Bytes::from_static(b"not a journal frame"), "garbage").await.unwrap();
    let why = damaged(recover(&log, &snapshots).await, 0);
    assert!(why.starts_with("message 4:"), "{why}");

    // Partition 1: message 3 is batch 3's frame cut short by a byte.
    let log = nats.log(1).await.unwrap();
    append_batches(&log, 1, 2).await;
    let whole = frame(3, &batch(3));
    log.append(2, whole.slice(..whole.len() - 1), "short").await.unwrap();
    let why = damaged(recover(&log, &snapshots).await, 1);
    assert!(why.starts_with("message 3:"), "{why}");

    // Partition 2: message 3 is a whole frame of batch 7 (out of place).
    let log = nats.log(2).await.unwrap();
    append_batches(&log, 1, 2).await;
    log.append(2, frame(7, &batch(3)), "misplaced").await.unwrap();
    let why = damaged(recover(&log, &snapshots).await, 2);
    assert!(why.contains("out of place"), "{why}");

    // Partition 3: message 2 deleted from the middle of the stream.
    let log = nats.log(3).await.unwrap();
    append_batches(&log, 1, 4).await;
    let (intact, _) = recover(&log, &snapshots).await.expect("the intact stream");
    let stream = nats.jetstream().get_stream(nats.names().stream(3)).await.unwrap();
    assert!(stream.delete_message(2).await.unwrap());
    let why = damaged(recover(&log, &snapshots).await, 3);
    assert!(why.contains("message 2 is missing"), "{why}");
    assert_ne!(intact, 0);
}
