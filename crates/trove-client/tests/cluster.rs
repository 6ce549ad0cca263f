//! The SDK's cluster side on real sockets: `GET /cluster` against HTTP
//! listeners started here that answer canned replies (chunked, oversize,
//! silent, cut short: the client's own parser on the wire), and a
//! `ClusterProducer` following a partition from a node that answers
//! `not_owner` to a real trove server, past maps that lag.
//!
//! The canned listeners are not stand-ins for trove's control plane (its
//! `GET /cluster` is tested in trove-server's `tests/control.rs`); they
//! give the client the answers a real one rarely gives.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use trove_client::{CLUSTER_REPLY_BYTES_MAX, ClientError, ClusterConfig, ClusterProducer, MapError, fetch_cluster_map};
use trove_core::shard_of;
use trove_hunt::{HuntEvent, TreasureHunt};
use trove_proto::frame::{self, HEADER_LEN, Sizes, Welcome, hello_flags};
use trove_proto::{ErrorCode, Frame};

/// Every test's bound: the tests check behaviour, not speed.
const DEADLINE: Duration = Duration::from_secs(120);

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

fn owner(node: &str, tcp: &str, control: &str) -> Value {
    json!({"node": node, "tcp": tcp, "ws": null, "control": control})
}

/// A map of `owners.len()` partitions: `(tcp, epoch)` per partition, or
/// `None`.
fn map(control: &str, owners: &[Option<(&str, u64)>]) -> Value {
    let entries: Vec<Value> = owners
        .iter()
        .enumerate()
        .map(|(p, o)| match o {
            Some((tcp, epoch)) => json!({"partition": p, "owner": owner(tcp, tcp, control), "epoch": epoch}),
            None => json!({"partition": p, "owner": null, "epoch": null}),
        })
        .collect();
    json!({"cluster": "trove", "partitions": owners.len(), "node": "a",
           "nodes": [owner("a", "127.0.0.1:1", control)], "map": entries})
}

/// Reads a request's head (bounded), returns it.
async fn read_head(s: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut b = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 << 10 {
        match s.read(&mut b).await {
            Ok(0) | Err(_) => break,
            Ok(n) => head.extend_from_slice(&b[..n]),
        }
    }
    String::from_utf8_lossy(&head).into_owned()
}

/// A listener that answers each connection with `reply(n)` (n counts
/// connections from 0), written in `pieces` with a pause between them,
/// then closes. Returns its address and the heads it read.
async fn canned(
    reply: impl Fn(usize) -> Vec<u8> + Send + Sync + 'static,
    pieces: usize,
) -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let heads = Arc::new(Mutex::new(Vec::new()));
    let seen = heads.clone();
    tokio::spawn(async move {
        for n in 0.. {
            let Ok((mut s, _)) = listener.accept().await else { return };
            let head = read_head(&mut s).await;
            seen.lock().unwrap().push(head);
            let bytes = reply(n);
            let step = bytes.len().div_ceil(pieces.max(1)).max(1);
            for piece in bytes.chunks(step) {
                if s.write_all(piece).await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let _ = s.shutdown().await;
        }
    });
    (addr, heads)
}

fn with_length(status: &str, body: &str) -> Vec<u8> {
    format!("HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}", body.len())
        .into_bytes()
}

fn chunked(body: &str, chunk: usize) -> Vec<u8> {
    let mut out = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
    for c in body.as_bytes().chunks(chunk) {
        out.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
        out.extend_from_slice(c);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}

#[test]
fn the_map_is_fetched_with_a_length_or_in_chunks_and_the_request_closes() {
    runtime().block_on(async {
        tokio::time::timeout(DEADLINE, async {
            let body = map("x:1", &[Some(("127.0.0.1:7400", 41)), None]).to_string();
            let b = body.clone();
            let (addr, heads) = canned(move |_| with_length("200 OK", &b), 7).await;
            let m = fetch_cluster_map(&addr.to_string(), Duration::from_secs(30)).await.expect("a map");
            assert_eq!((m.partitions, m.owner_of(0).map(|o| o.epoch)), (2, Some(41)));
            assert_eq!(m.owner_of(1), None);
            let head = heads.lock().unwrap()[0].clone();
            assert!(head.starts_with("GET /cluster HTTP/1.1\r\n"), "{head}");
            assert!(head.to_ascii_lowercase().contains("\r\nconnection: close\r\n"), "{head}");
            assert!(head.to_ascii_lowercase().contains(&format!("\r\nhost: {addr}\r\n")), "{head}");

            // Chunks of 10 bytes, written in 13 pieces that cut through them.
            let b = body.clone();
            let (addr, _) = canned(move |_| chunked(&b, 10), 13).await;
            let m2 = fetch_cluster_map(&addr.to_string(), Duration::from_secs(30)).await.expect("a chunked map");
            assert_eq!(m2, m);
        })
        .await
        .expect("within the deadline");
    });
}

#[test]
fn oversize_silent_cut_and_refusing_answers_are_typed_errors() {
    runtime().block_on(async {
        tokio::time::timeout(DEADLINE, async {
            let fetch = |addr: SocketAddr, timeout| async move { fetch_cluster_map(&addr.to_string(), timeout).await };
            let long = Duration::from_secs(30);
            // A length above the cap: refused from the head.
            let (addr, _) = canned(
                |_| format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", CLUSTER_REPLY_BYTES_MAX + 1).into_bytes(),
                1,
            )
            .await;
            assert!(matches!(fetch(addr, long).await, Err(MapError::TooLarge { .. })));
            // Chunks that never end: cut off at the cap.
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let endless = listener.local_addr().unwrap();
            tokio::spawn(async move {
                let Ok((mut s, _)) = listener.accept().await else { return };
                read_head(&mut s).await;
                let _ = s.write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n").await;
                let chunk = [b"4000\r\n".as_slice(), &[b' '; 0x4000], b"\r\n"].concat();
                // Bounded: twice the cap, then it stops by itself.
                for _ in 0..(2 * CLUSTER_REPLY_BYTES_MAX / 0x4000) {
                    if s.write_all(&chunk).await.is_err() {
                        return;
                    }
                }
            });
            assert!(matches!(fetch(endless, long).await, Err(MapError::TooLarge { .. })));
            // A server that accepts and says nothing: the timeout.
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let silent = listener.local_addr().unwrap();
            let held = tokio::spawn(async move {
                let conn = listener.accept().await;
                tokio::time::sleep(Duration::from_secs(60)).await;
                drop(conn);
            });
            assert!(matches!(fetch(silent, Duration::from_millis(300)).await, Err(MapError::Timeout)));
            held.abort();
            // Cut short: closed in the middle of the body.
            let (addr, _) = canned(|_| b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n{\"cluster\"".to_vec(), 1).await;
            assert!(matches!(fetch(addr, long).await, Err(MapError::Http(_))));
            // Not a cluster, another status, not the map's JSON.
            let (addr, _) = canned(
                |_| {
                    with_length(
                        "404 Not Found",
                        r#"{"error":"not_a_cluster","message":"this node is not in a cluster"}"#,
                    )
                },
                1,
            )
            .await;
            assert!(matches!(fetch(addr, long).await, Err(MapError::NotACluster)));
            let (addr, _) = canned(|_| with_length("503 Service Unavailable", r#"{"error":"failed"}"#), 1).await;
            match fetch(addr, long).await {
                Err(MapError::Status { status: 503, error }) => assert_eq!(error.as_deref(), Some("failed")),
                other => panic!("{other:?}"),
            }
            let (addr, _) = canned(|_| with_length("200 OK", r#"{"cluster": 5}"#), 1).await;
            assert!(matches!(fetch(addr, long).await, Err(MapError::Json(_))));
            // Nothing listening.
            let gone = TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
            assert!(matches!(fetch(gone, long).await, Err(MapError::Io { .. })));
        })
        .await
        .expect("within the deadline");
    });
}

#[test]
fn a_cluster_producer_asks_each_seed_in_turn_and_names_the_last_failure() {
    runtime().block_on(async {
        tokio::time::timeout(DEADLINE, async {
            let gone = TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap().to_string();
            let body = map("x:1", &[None, None, None]).to_string();
            let (good, _) = canned(move |_| with_length("200 OK", &body), 1).await;
            let config = ClusterConfig::new([gone.clone(), good.to_string()]);
            let (producer, _acks) = ClusterProducer::<TreasureHunt>::connect(config).await.expect("the second seed");
            assert_eq!(producer.partitions(), 3);
            let (bad, _) = canned(|_| with_length("200 OK", "[]"), 1).await;
            match ClusterProducer::<TreasureHunt>::connect(ClusterConfig::new([gone, bad.to_string()])).await {
                Err(ClientError::Map { addr, error: MapError::Json(_) }) => assert_eq!(addr, bad.to_string()),
                other => panic!("{other:?}"),
            }
        })
        .await
        .expect("within the deadline");
    });
}

/// A node that refuses every batch with `code` (`not_owner`: it no longer
/// owns partition 0; `unavailable`: its log has no quorum): it answers
/// HELLO with WELCOME and the first EVENTS frame with the error, then
/// closes. Counts its
/// connections and records the producer id and first sequence presented.
struct Refuser {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    producer_id: Arc<AtomicU64>,
    first_seq: Arc<AtomicU64>,
    refused: Arc<AtomicBool>,
}

async fn refuser(code: ErrorCode) -> Refuser {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let r = Refuser {
        addr: listener.local_addr().unwrap(),
        connections: Arc::default(),
        producer_id: Arc::default(),
        first_seq: Arc::default(),
        refused: Arc::default(),
    };
    let (connections, producer_id, first_seq, refused) =
        (r.connections.clone(), r.producer_id.clone(), r.first_seq.clone(), r.refused.clone());
    tokio::spawn(async move {
        let sizes = Sizes { record: 32, outcome: 16 };
        loop {
            let Ok((mut s, _)) = listener.accept().await else { return };
            connections.fetch_add(1, Ordering::SeqCst);
            let mut buf = Vec::new();
            let mut b = vec![0u8; 64 << 10];
            'conn: loop {
                while let Ok(Some((header, total))) = frame::split(&buf, 1 << 20) {
                    let body = buf[HEADER_LEN..total].to_vec();
                    buf.drain(..total);
                    let mut out = Vec::new();
                    match frame::decode(header, &body, sizes) {
                        Ok(Frame::Hello(h)) => {
                            producer_id.store(h.producer_id, Ordering::SeqCst);
                            let w = Welcome {
                                version: 1,
                                flags: h.flags & hello_flags::OUTCOMES,
                                producer_id: h.producer_id,
                                frame_body_max: 1 << 20,
                                batch_events_max: 65_536,
                                record_size: 32,
                                outcome_size: 16,
                            };
                            frame::encode_welcome(&mut out, &w);
                        }
                        Ok(Frame::Events { first_seq: f, .. }) => {
                            first_seq.store(f, Ordering::SeqCst);
                            frame::encode_error(&mut out, code, "partition 0 is owned by node b, or no quorum");
                            let _ = s.write_all(&out).await;
                            refused.store(true, Ordering::SeqCst);
                            break 'conn;
                        }
                        _ => {}
                    }
                    if s.write_all(&out).await.is_err() {
                        break 'conn;
                    }
                }
                match s.read(&mut b).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => buf.extend_from_slice(&b[..n]),
                }
            }
        }
    });
    r
}

/// Partition 0 starts at a node that refuses it (`not_owner`); the maps
/// still name that node for the next two fetches (they lag), then name a
/// real trove server with a later epoch, which owns partition 1 already.
/// Every event of both partitions is acknowledged, partition 0's by the
/// real server from sequence 1 under the same producer id the refusing
/// node saw, and the producer never went back to the node that refused.
#[test]
fn a_partition_follows_not_owner_to_the_later_owner_past_lagging_maps() {
    let engine = trove_shard::EngineConfig { shards: 2, ..trove_shard::EngineConfig::default() };
    let engine = Arc::new(trove_shard::Engine::<TreasureHunt>::start(engine).expect("engine"));
    let config = trove_server::ServerConfig {
        tcp_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        ws_addr: None,
        ..trove_server::ServerConfig::default()
    };
    let server = trove_server::Server::start(engine.clone(), config).expect("data plane");
    let real = server.tcp_addr().to_string();
    runtime().block_on(async {
        tokio::time::timeout(DEADLINE, async {
            let refuser = refuser(ErrorCode::NotOwner).await;
            let old = refuser.addr.to_string();
            // The maps: partition 0 at the refusing node (epoch 3) until it
            // has refused and two more maps were served, then at the real
            // one (epoch 7). Partition 1 is at the real node throughout.
            let refused = refuser.refused.clone();
            let served_after = Arc::new(AtomicUsize::new(0));
            let (before, after) = (
                map("x:1", &[Some((&old, 3)), Some((&real, 5))]).to_string(),
                map("x:1", &[Some((&real, 7)), Some((&real, 5))]).to_string(),
            );
            let counter = served_after.clone();
            let (seed, _) = canned(
                move |_| {
                    let lagging = !refused.load(Ordering::SeqCst) || counter.fetch_add(1, Ordering::SeqCst) < 2;
                    with_length("200 OK", if lagging { &before } else { &after })
                },
                1,
            )
            .await;
            let mut config = ClusterConfig::new([seed.to_string()]);
            config.producer_id = Some(0x0c1a_57e4);
            config.client.reconnect_backoff_initial = Duration::from_millis(10);
            config.client.reconnect_backoff_max = Duration::from_millis(100);
            config.client.batch_events_max = 16;
            let (mut producer, mut acks) = ClusterProducer::<TreasureHunt>::connect(config).await.expect("the map");
            assert_eq!(producer.partitions(), 2);
            let hunts: Vec<u32> = (1..).filter(|&h| shard_of(h, 2) == 0).take(3).collect();
            let other: Vec<u32> = (1..).filter(|&h| shard_of(h, 2) == 1).take(3).collect();
            let mut sent = [0u64; 2];
            for i in 0..40u32 {
                for h in [hunts[i as usize % 3], other[i as usize % 3]] {
                    let (p, seq) = producer.send_wait(HuntEvent::join(h, i)).await.expect("sent");
                    assert_eq!(p, shard_of(h, 2) as u32, "routed by the engine's placement");
                    sent[p as usize] += 1;
                    assert_eq!(seq, sent[p as usize], "numbered per partition from 1");
                }
            }
            let stats = producer.close().await.expect("every partition drains");
            let mut acked = [Vec::new(), Vec::new()];
            while let Some((p, answer)) = acks.next().await {
                let batch = answer.unwrap_or_else(|e| panic!("partition {p}: {e}"));
                acked[p as usize].extend(batch.seqs());
            }
            for p in 0..2 {
                assert_eq!(acked[p], (1..=sent[p]).collect::<Vec<_>>(), "partition {p}: each event acknowledged once");
            }
            assert!(refuser.refused.load(Ordering::SeqCst), "partition 0 went to the refusing node first");
            assert_eq!(refuser.first_seq.load(Ordering::SeqCst), 1);
            let id = trove_client::partition_producer_id(0x0c1a_57e4, 0);
            assert_eq!(refuser.producer_id.load(Ordering::SeqCst), id, "the derived id for partition 0");
            assert_eq!(refuser.connections.load(Ordering::SeqCst), 1, "never back to the node that refused");
            assert!(served_after.load(Ordering::SeqCst) >= 3, "the lagging maps were fetched and passed over");
            let p0 = stats.iter().find(|(p, _)| *p == 0).expect("partition 0's counters").1;
            assert_eq!(p0.reconnects, 1);
            assert!(p0.batches_resent >= 1, "the refused batch went again: {p0:?}");
        })
        .await
        .expect("within the deadline");
    });
    server.shutdown(Duration::from_secs(5));
}

/// A real trove server on loopback (in memory), as one node of a cluster.
struct Node {
    server: trove_server::Server<TreasureHunt>,
}

impl Node {
    fn start() -> Node {
        let engine = trove_shard::EngineConfig { shards: 1, ..trove_shard::EngineConfig::default() };
        let engine = Arc::new(trove_shard::Engine::<TreasureHunt>::start(engine).expect("engine"));
        let config = trove_server::ServerConfig {
            tcp_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            ws_addr: None,
            ..trove_server::ServerConfig::default()
        };
        Node { server: trove_server::Server::start(engine, config).expect("data plane") }
    }

    fn tcp(&self) -> String {
        self.server.tcp_addr().to_string()
    }
}

/// The owner of the one partition stops (its connections end with
/// `shutting_down`, then nothing listens there); the maps name it until
/// it has stopped, then another node with a later epoch. The producer
/// reconnects there and every event, before and after, is acknowledged
/// once, in order.
#[test]
fn a_partition_follows_a_lost_node_to_its_next_owner() {
    let (first, second) = (Node::start(), Node::start());
    let (old, new) = (first.tcp(), second.tcp());
    runtime().block_on(async {
        tokio::time::timeout(DEADLINE, async {
            let moved = Arc::new(AtomicBool::new(false));
            let is_moved = moved.clone();
            let (before, after) =
                (map("x:1", &[Some((&old, 1))]).to_string(), map("x:1", &[Some((&new, 2))]).to_string());
            let (seed, _) = canned(
                move |_| with_length("200 OK", if is_moved.load(Ordering::SeqCst) { &after } else { &before }),
                1,
            )
            .await;
            let mut config = ClusterConfig::new([seed.to_string()]);
            config.client.reconnect_backoff_initial = Duration::from_millis(10);
            config.client.reconnect_backoff_max = Duration::from_millis(100);
            config.client.batch_events_max = 8;
            let (mut producer, mut acks) = ClusterProducer::<TreasureHunt>::connect(config).await.expect("the map");
            for i in 0..20 {
                assert_eq!(producer.send_wait(HuntEvent::join(1, i)).await.expect("sent"), (0, u64::from(i) + 1));
            }
            producer.drain().await.expect("the first node answers");
            // Off the runtime's threads: shutting down blocks.
            tokio::task::spawn_blocking(move || first.server.shutdown(Duration::from_secs(5))).await.unwrap();
            moved.store(true, Ordering::SeqCst);
            for i in 20..40 {
                assert_eq!(producer.send_wait(HuntEvent::join(1, i)).await.expect("sent"), (0, u64::from(i) + 1));
            }
            let stats = producer.close().await.expect("drains at the next owner");
            let mut acked = Vec::new();
            while let Some((p, answer)) = acks.next().await {
                assert_eq!(p, 0);
                acked.extend(answer.expect("acknowledged").seqs());
            }
            assert_eq!(acked, (1..=40).collect::<Vec<_>>());
            assert_eq!(stats[0].1.reconnects, 1, "{stats:?}");
        })
        .await
        .expect("within the deadline");
    });
    second.server.shutdown(Duration::from_secs(5));
}

/// While no node owns the partition, the producer looks again with
/// backoff, and gives up after `failover_timeout` with a typed error that
/// says why.
#[test]
fn no_owner_for_longer_than_the_failover_timeout_is_a_typed_error() {
    runtime().block_on(async {
        tokio::time::timeout(DEADLINE, async {
            let body = map("x:1", &[None, None]).to_string();
            let (seed, heads) = canned(move |_| with_length("200 OK", &body), 1).await;
            let mut config = ClusterConfig::new([seed.to_string()]);
            config.failover_timeout = Duration::from_millis(500);
            config.client.reconnect_backoff_initial = Duration::from_millis(10);
            config.client.reconnect_backoff_max = Duration::from_millis(50);
            let (mut producer, _acks) = ClusterProducer::<TreasureHunt>::connect(config).await.expect("the map");
            let hunt = (1..).find(|&h| shard_of(h, 2) == 1).unwrap();
            match producer.send_wait(HuntEvent::join(hunt, 1)).await {
                Err(ClientError::ReconnectFailed { attempts, last }) => {
                    assert!(attempts >= 2, "it looked again: {attempts}");
                    assert!(matches!(*last, ClientError::NoOwner { partition: 1 }), "{last:?}");
                }
                other => panic!("{other:?}"),
            }
            assert!(heads.lock().unwrap().len() >= 2, "the map was fetched again");
        })
        .await
        .expect("within the deadline");
    });
}

/// A node that takes every connection and refuses every batch
/// (`unavailable`): the producer resends after a backoff, and the
/// connections that got no answer count against `reconnect_attempts_max`,
/// so it ends with a typed error instead of reconnecting forever.
#[test]
fn a_node_that_refuses_every_batch_ends_the_producer_in_bounded_attempts() {
    runtime().block_on(async {
        tokio::time::timeout(DEADLINE, async {
            let refuser = refuser(ErrorCode::Unavailable).await;
            let mut config = trove_client::ClientConfig::new(refuser.addr.to_string());
            config.reconnect_backoff_initial = Duration::from_millis(5);
            config.reconnect_backoff_max = Duration::from_millis(20);
            config.reconnect_attempts_max = Some(3);
            let (mut producer, _acks) =
                trove_client::Producer::<TreasureHunt>::connect(config).await.expect("connects");
            producer.send_wait(HuntEvent::join(1, 1)).await.expect("sent");
            match producer.drain().await {
                Err(ClientError::ReconnectFailed { attempts: 3, last }) => {
                    assert_eq!(last.server_code(), Some(ErrorCode::Unavailable), "{last}");
                }
                other => panic!("{other:?}"),
            }
            assert_eq!(refuser.connections.load(Ordering::SeqCst), 4, "the first connection and 3 attempts");
        })
        .await
        .expect("within the deadline");
    });
}

/// The only seed's maps lag for good (they name the node that refused),
/// but they list another node's control plane, whose map names the later
/// owner: the producer learns that source from the map and finds the
/// owner there.
#[test]
fn maps_are_also_fetched_from_the_control_planes_a_map_lists() {
    let node = Node::start();
    let real = node.tcp();
    runtime().block_on(async {
        tokio::time::timeout(DEADLINE, async {
            let refuser = refuser(ErrorCode::NotOwner).await;
            let after = map("x:1", &[Some((&real, 7))]).to_string();
            let (fresh, fresh_heads) = canned(move |_| with_length("200 OK", &after), 1).await;
            let before = map(&fresh.to_string(), &[Some((&refuser.addr.to_string(), 3))]).to_string();
            let (lagging, _) = canned(move |_| with_length("200 OK", &before), 1).await;
            let mut config = ClusterConfig::new([lagging.to_string()]);
            config.client.reconnect_backoff_initial = Duration::from_millis(10);
            config.client.reconnect_backoff_max = Duration::from_millis(100);
            let (mut producer, mut acks) = ClusterProducer::<TreasureHunt>::connect(config).await.expect("the map");
            assert!(fresh_heads.lock().unwrap().is_empty(), "the first map came from the seed");
            for i in 0..10 {
                assert_eq!(producer.send_wait(HuntEvent::join(1, i)).await.expect("sent"), (0, u64::from(i) + 1));
            }
            producer.close().await.expect("drains at the later owner");
            let mut acked = Vec::new();
            while let Some((_, answer)) = acks.next().await {
                acked.extend(answer.expect("acknowledged").seqs());
            }
            assert_eq!(acked, (1..=10).collect::<Vec<_>>());
            assert_eq!(refuser.connections.load(Ordering::SeqCst), 1);
            assert!(!fresh_heads.lock().unwrap().is_empty(), "the listed control plane was asked");
        })
        .await
        .expect("within the deadline");
    });
    node.server.shutdown(Duration::from_secs(5));
}

/// A node that loses its partition after applying batches it never
/// acknowledged: a proxy in front of a trove server that forwards the
/// first `forward` ACKs, swallows the next `swallow` (the server applied
/// those batches), then closes both sides. Reports when it has closed.
async fn lossy_proxy(upstream: SocketAddr, forward: usize, swallow: usize) -> (SocketAddr, Arc<AtomicBool>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let closed = Arc::new(AtomicBool::new(false));
    let done = closed.clone();
    tokio::spawn(async move {
        let Ok((client, _)) = listener.accept().await else { return };
        let server = TcpStream::connect(upstream).await.unwrap();
        let (mut cr, mut cw) = client.into_split();
        let (mut sr, mut sw) = server.into_split();
        let up = tokio::spawn(async move {
            let _ = tokio::io::copy(&mut cr, &mut sw).await;
        });
        let (mut buf, mut b) = (Vec::new(), vec![0u8; 64 << 10]);
        let (mut acks, mut swallowed) = (0, 0);
        'pump: loop {
            match sr.read(&mut b).await {
                Ok(0) | Err(_) => break,
                Ok(n) => buf.extend_from_slice(&b[..n]),
            }
            while let Ok(Some((header, total))) = frame::split(&buf, 1 << 20) {
                let bytes: Vec<u8> = buf.drain(..total).collect();
                if header.kind == trove_proto::Kind::Ack {
                    acks += 1;
                    if acks > forward {
                        swallowed += 1;
                        if swallowed == swallow {
                            break 'pump;
                        }
                        continue;
                    }
                }
                if cw.write_all(&bytes).await.is_err() {
                    break 'pump;
                }
            }
        }
        // The map names the next owner, and nothing listens here, before
        // the producer can notice the loss.
        done.store(true, Ordering::SeqCst);
        drop(listener);
        up.abort();
        drop((cw, sr));
    });
    (addr, closed)
}

/// The partition's state moves with it: two servers on one engine stand
/// for the old and the new owner. The old one applies batches it never
/// acknowledges and goes away; the producer follows the map to the new
/// one and resends them with their original sequence numbers, and each
/// event is applied once: every join is answered `Joined` (a second join
/// of a player would be refused), and the hunt holds exactly the players
/// sent.
#[test]
fn resends_after_a_move_are_applied_once_where_the_state_moved_to() {
    let engine = trove_shard::EngineConfig { shards: 1, ..trove_shard::EngineConfig::default() };
    let engine = Arc::new(trove_shard::Engine::<TreasureHunt>::start(engine).expect("engine"));
    let start = |engine: &Arc<trove_shard::Engine<TreasureHunt>>| {
        let config = trove_server::ServerConfig {
            tcp_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            ws_addr: None,
            ..trove_server::ServerConfig::default()
        };
        trove_server::Server::start(engine.clone(), config).expect("data plane")
    };
    let (old_server, new_server) = (start(&engine), start(&engine));
    const PLAYERS: u32 = 60;
    const HUNT: u32 = 77;
    let hunt_config = trove_hunt::HuntConfig {
        width: 64,
        height: 64,
        seed: 7,
        treasures_per_round: 8,
        value_min: 1,
        value_max: 10,
        dig_cooldown_ms: 0,
        step_max: 4,
        players_max: 1 << 10,
    };
    runtime().block_on(async {
        tokio::time::timeout(DEADLINE, async {
            let (proxy, closed) = lossy_proxy(old_server.tcp_addr(), 3, 2).await;
            let new = new_server.tcp_addr().to_string();
            let (before, after) =
                (map("x:1", &[Some((&proxy.to_string(), 1))]).to_string(), map("x:1", &[Some((&new, 2))]).to_string());
            let (seed, _) =
                canned(move |_| with_length("200 OK", if closed.load(Ordering::SeqCst) { &after } else { &before }), 1)
                    .await;
            let mut config = ClusterConfig::new([seed.to_string()]);
            config.client.batch_events_max = 4;
            config.client.reconnect_backoff_initial = Duration::from_millis(10);
            config.client.reconnect_backoff_max = Duration::from_millis(100);
            let (mut producer, mut acks) = ClusterProducer::<TreasureHunt>::connect(config).await.expect("the map");
            producer.send_wait(HuntEvent::create(HUNT, hunt_config)).await.expect("sent");
            for player in 0..PLAYERS {
                producer.send_wait(HuntEvent::join(HUNT, player)).await.expect("sent");
            }
            let stats = producer.close().await.expect("drains at the new owner");
            let mut outcomes = Vec::new();
            while let Some((_, answer)) = acks.next().await {
                let batch = answer.expect("acknowledged");
                assert_eq!(batch.first_seq, outcomes.len() as u64 + 1, "in order, none twice");
                outcomes.extend(batch.outcomes.expect("outcomes"));
            }
            assert_eq!(outcomes.len() as u32, PLAYERS + 1);
            assert!(matches!(outcomes[0], trove_hunt::HuntOutcome::Created { .. }), "{:?}", outcomes[0]);
            for (i, o) in outcomes[1..].iter().enumerate() {
                assert!(matches!(o, trove_hunt::HuntOutcome::Joined { .. }), "join {i} answered {o:?}");
            }
            let s = stats[0].1;
            assert_eq!(s.reconnects, 1, "{s:?}");
            assert!(s.batches_resent >= 2, "the swallowed batches went again: {s:?}");
        })
        .await
        .expect("within the deadline");
    });
    let joined = runtime().block_on(engine.query_world(HUNT, |h| h.map(trove_hunt::Hunt::players_joined)));
    assert_eq!(joined.expect("the shard answers"), Some(PLAYERS), "each player joined once");
    old_server.shutdown(Duration::from_secs(5));
    new_server.shutdown(Duration::from_secs(5));
}
