//! The Rust client SDK of trove's data plane (protocol v1,
//! docs/protocol.md), on tokio.
//!
//! - [`Producer`]: sends a game's events. `send` encodes each event
//!   straight into the open batch's EVENTS frame (no allocation, lock,
//!   await or spawn per event); batches close when full, after `linger`,
//!   or on `flush`; up to `window_batches` batches and `unacked_events_max`
//!   events are in flight (8,192 by default: two batches; fewer after
//!   BUSY: the window halves, then grows back); BUSY answers and
//!   lost connections are handled in the background by resending the
//!   unanswered batches with their original sequence numbers, which the
//!   server applies exactly once.
//! - [`Acks`]: the producer's answers, in order: [`AckedBatch`] with one
//!   typed outcome per event (`G::Outcome`, for the treasure hunt
//!   [`trove_hunt::HuntOutcome`]).
//! - [`Subscriber`]: a connection that subscribes to worlds (hunts, for the
//!   treasure hunt) and yields their [`Update`]s: applied events with their
//!   outcomes, broadcasts, and gaps where the server dropped updates for a
//!   slow subscriber.
//!
//! - [`ClusterProducer`]: sends to a cluster: each event to the node that
//!   owns its world's partition (the map from `GET /cluster` on any node's
//!   control plane), through one `Producer` per partition that follows
//!   its partition when it moves (`not_owner`, a lost node), resending
//!   unanswered batches to the new owner; [`ClusterAcks`] merges their
//!   answers.
//!
//! Both are generic over the game (`G: trove_proto::WireGame`); the
//! treasure hunt is `trove_hunt::TreasureHunt`. Examples:
//! `examples/producer.rs` (a game server) and `examples/spectator.rs`.
//!
//! Runs on any tokio runtime (`connect` spawns the producer's task); on a
//! multi-thread runtime the task writes and reads while the caller sends.
//! A [`Subscriber`] has no task: it reads while awaited.
//!
//! Against a server in the same process (tests): start
//! `trove_server::Server` on `127.0.0.1:0` and connect to its
//! `tcp_addr()`; shorten `ClientConfig`'s timers and backoffs as needed.
//!
//! # Layout
//!
//! - `config.rs`: [`ClientConfig`], every bound and timer with its default.
//! - `error.rs`: [`ClientError`], [`ServerError`], [`SendError`].
//! - `conn.rs`: connect, HELLO/WELCOME, the frame read buffer.
//! - `batch.rs`: the open batch, encoded in place into its frame.
//! - `inflight.rs`: unanswered batches: send order, answer matching, BUSY
//!   pauses, resends after a reconnect, in-order completion (pure logic).
//! - `congestion.rs`: the window in events, halved on BUSY (and, opt-in,
//!   shrunk on round trips past `queue_delay_target`), grown back by
//!   ACKs; once it has shrunk, batches close at a quarter of it (pure
//!   logic).
//! - `producer.rs`: [`Producer`], [`Acks`] and the producer's task.
//! - `route.rs`: where a producer's connections go: a fixed address, or
//!   its partition's owner, found again in the cluster map after a move
//!   (the resolver, and the retry rules as pure functions).
//! - `cluster.rs`: [`ClusterMap`] and its bounded `GET /cluster` (a
//!   one-pass HTTP/1.1 reply parser, a size cap, a timeout), and the
//!   producer ids a cluster producer derives per partition.
//! - `cluster_producer.rs`: [`ClusterProducer`], [`ClusterAcks`].
//! - `subscriber.rs`: [`Subscriber`] and its per-world sequence checks.
//! - `task.rs`: the one spawn helper, which names tasks for tokio-console.

mod batch;
mod cluster;
mod cluster_producer;
mod config;
mod congestion;
mod conn;
mod error;
mod inflight;
mod producer;
mod route;
mod subscriber;
mod task;
mod tls;

pub use cluster::{
    CLUSTER_NAME_BYTES_MAX, CLUSTER_NODES_MAX, CLUSTER_PARTITIONS_MAX, CLUSTER_REPLY_BYTES_MAX, ClusterMap,
    ClusterNode, MapError, PartitionOwner, fetch_cluster_map, fetch_cluster_map_as, fetch_cluster_map_tls,
    fetch_cluster_map_using, partition_producer_id,
};
pub use cluster_producer::{
    CLUSTER_ANSWER_TIMEOUT, CLUSTER_SEEDS_MAX, ClusterAck, ClusterAcks, ClusterConfig, ClusterProducer,
};
pub use config::{
    BATCH_EVENTS_MAX_DEFAULT, ClientConfig, DEDUP_WINDOW_EVENTS, TOKEN_ENV, TOKEN_LEN, Token,
    UNACKED_EVENTS_MAX_DEFAULT, random_producer_id,
};
pub use error::{ClientError, SendError, ServerError};
pub use producer::{AckedBatch, Acks, Producer, ProducerStats};
pub use subscriber::{Subscriber, Update};
pub use tls::{ClientTls, TLS_CA_FILE_BYTES_MAX};
pub use trove_proto::{ErrorCode, UpdateEntry, WireGame};

#[cfg(test)]
mod tests {
    use super::*;
    use trove_hunt::{HuntEvent, TreasureHunt};

    fn send<T: Send>(_: T) {}

    /// Compiles only if the handles and every future of the API are
    /// `Send`, so that they can live in spawned tasks.
    #[allow(dead_code)]
    fn handles_and_futures_are_send(
        mut p: Producer<TreasureHunt>,
        mut a: Acks<TreasureHunt>,
        mut s: Subscriber<TreasureHunt>,
    ) {
        send(p.ready());
        send(p.send_wait(HuntEvent::default()));
        send(p.flush());
        send(p.drain());
        send(p.idle_until(tokio::time::Instant::now()));
        send(a.next());
        send(s.subscribe(1));
        send(s.unsubscribe(1));
        send(s.next());
        send(Producer::<TreasureHunt>::connect(ClientConfig::new("x:1")));
        send(Subscriber::<TreasureHunt>::connect(ClientConfig::new("x:1")));
        send(p.close());
        send((a, s));
    }

    #[allow(dead_code)]
    fn cluster_handles_and_futures_are_send(mut p: ClusterProducer<TreasureHunt>, mut a: ClusterAcks<TreasureHunt>) {
        send(p.ready());
        send(p.send_wait(HuntEvent::default()));
        send(p.flush());
        send(p.drain());
        send(p.idle_until(tokio::time::Instant::now()));
        send(a.next());
        send(ClusterProducer::<TreasureHunt>::connect(ClusterConfig::new(["x:1"])));
        send(fetch_cluster_map("x:1", std::time::Duration::from_secs(1)));
        send(p.close());
        send(a);
    }
}
