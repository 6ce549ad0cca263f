//! Cluster mode end to end: real `nats-server` processes, real `trove serve
//! --cluster` nodes, producers through the SDK's `ClusterProducer`, and
//! real kills (SIGKILL) and stalls (SIGSTOP).
//!
//! What is checked is what a studio is promised: every join a producer
//! was acknowledged for is in its hunt afterwards, each exactly once (a
//! join applied twice would have been answered `AlreadyJoined`, and the
//! hunt's player count would exceed the acknowledged joins), the hunts
//! are served again after their owner dies, and every hunt's state on the
//! nodes equals an offline replay of its partition's snapshot and stream
//! (`trove replay --cluster`).
//!
//! Skipped, with a message, only when `nats-server` is not installed;
//! `.ci/run` installs it, and with `CI` set a missing binary fails.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Listening, Serve};
use trove_bench::nats::{NatsCluster, NatsServer, nats_server_or_skip};
use trove_client::{ClusterConfig, ClusterProducer};
use trove_hunt::{HuntConfig, HuntEvent, HuntOutcome, TreasureHunt};
use trove_proto::WireGame;
use trove_proto::frame::{self, ErrorCode, Frame, HEADER_LEN, Hello, Kind, Sizes};

/// Hunts the producers join players to (spread over the partitions).
const HUNTS: u32 = 24;
/// Every wait's bound: the tests check behaviour, not speed.
const DEADLINE: Duration = Duration::from_secs(60);
/// The lease TTL the first node creates the cluster with
/// (`TROVE_TEST_LEASE_MS` overrides it, to measure failover with the
/// default, 3000).
fn lease_ms() -> String {
    std::env::var("TROVE_TEST_LEASE_MS").unwrap_or_else(|_| "1500".into())
}

fn hunt_config() -> HuntConfig {
    HuntConfig { players_max: 1 << 20, ..common::hunt_config() }
}

/// A trove node of the cluster.
struct Node {
    name: String,
    serve: Serve,
    at: Listening,
}

impl Node {
    fn start(urls: &str, name: &str, extra: &[&str]) -> Node {
        let lease = lease_ms();
        let mut args = vec![
            "--cluster",
            urls,
            "--node",
            name,
            "--tcp",
            "127.0.0.1:0",
            "--ws",
            "off",
            "--control",
            "127.0.0.1:0",
            "--lease-ms",
            &lease,
            "--snapshot-ms",
            "2000",
        ];
        args.extend_from_slice(extra);
        let mut serve = Serve::spawn(&args);
        let at = serve.wait_listening();
        Node { name: name.to_string(), serve, at }
    }
}

fn get_json(addr: SocketAddr, path: &str) -> Option<serde_json::Value> {
    let r = trove_bench::http::get(addr, path, Duration::from_secs(5)).ok()?;
    (r.status == 200).then(|| serde_json::from_str(&r.body).ok()).flatten()
}

/// The partition map from `node`: each partition's owner's name.
fn owners(node: &Node) -> Option<Vec<Option<String>>> {
    let map = get_json(node.at.control, "/cluster")?;
    Some(map["map"].as_array()?.iter().map(|e| e["owner"]["node"].as_str().map(str::to_string)).collect())
}

/// Waits until every partition is owned by one of `alive`, as `ask` sees it.
fn wait_owned(ask: &Node, alive: &[&str]) -> Vec<String> {
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(map) = owners(ask)
            && map.iter().all(|o| o.as_deref().is_some_and(|n| alive.contains(&n)))
        {
            return map.into_iter().map(Option::unwrap).collect();
        }
        assert!(Instant::now() < deadline, "the partitions never all had a live owner; {}", ask.serve.stderr_now());
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// What the producer side saw.
#[derive(Default)]
struct Seen {
    /// Joins acknowledged, per hunt.
    joined: BTreeMap<u32, u64>,
    /// The last time each partition acknowledged something.
    last_ack: HashMap<u32, Instant>,
    /// Answers that were not `Joined` / `Created` (each one a failure).
    wrong: Vec<String>,
    acked: u64,
}

/// Joins players to the hunts through a `ClusterProducer` until `stop`,
/// at about `rate` events/s; returns when every sent event is answered.
async fn produce(seeds: Vec<String>, rate: u64, seen: Arc<Mutex<Seen>>, stop: Arc<std::sync::atomic::AtomicBool>) {
    let mut config = ClusterConfig { failover_timeout: DEADLINE, ..ClusterConfig::new(seeds) };
    config.client.want_outcomes = true;
    config.client.linger = Duration::from_millis(2);
    let (mut producer, mut acks) = ClusterProducer::<TreasureHunt>::connect(config).await.expect("connects");
    // Which hunt each (partition, sequence) joined a player to.
    let sent: Arc<Mutex<HashMap<(u32, u64), u32>>> = Arc::default();
    let reader = {
        let (sent, seen) = (sent.clone(), seen.clone());
        tokio::spawn(async move {
            while let Some((partition, answer)) = acks.next().await {
                let batch = answer.expect("every batch is acknowledged (the SDK follows the partition)");
                let outcomes = batch.outcomes.as_ref().expect("outcomes asked for");
                let mut seen = seen.lock().unwrap();
                let sent = sent.lock().unwrap();
                for (seq, outcome) in batch.seqs().zip(outcomes) {
                    let hunt = sent[&(partition, seq)];
                    match outcome {
                        HuntOutcome::Joined { .. } => *seen.joined.entry(hunt).or_default() += 1,
                        HuntOutcome::Created { .. } => {}
                        other => seen.wrong.push(format!("hunt {hunt} p{partition} seq {seq}: {other:?}")),
                    }
                }
                seen.acked += u64::from(batch.count);
                seen.last_ack.insert(partition, Instant::now());
            }
        })
    };
    let send = async |producer: &mut ClusterProducer<TreasureHunt>, hunt: u32, event: HuntEvent| {
        let (partition, seq) = producer.send_wait(event).await.expect("sent");
        sent.lock().unwrap().insert((partition, seq), hunt);
    };
    for hunt in 1..=HUNTS {
        send(&mut producer, hunt, HuntEvent::create(hunt, hunt_config())).await;
    }
    let started = Instant::now();
    let mut n: u64 = 0;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        let hunt = 1 + (n % u64::from(HUNTS)) as u32;
        let player = (n / u64::from(HUNTS)) as u32;
        send(&mut producer, hunt, HuntEvent::join(hunt, player)).await;
        n += 1;
        let due = started + Duration::from_secs_f64(n as f64 / rate as f64);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            tokio::time::sleep(wait).await;
        }
    }
    producer.close().await.expect("every event answered at close");
    reader.await.expect("the reader ends");
}

/// Runs `produce` on a runtime of its own thread.
fn start_producing(
    seeds: Vec<String>,
    rate: u64,
) -> (Arc<Mutex<Seen>>, Arc<std::sync::atomic::AtomicBool>, std::thread::JoinHandle<()>) {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (s, st) = (seen.clone(), stop.clone());
    let thread = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        rt.block_on(produce(seeds, rate, s, st));
    });
    (seen, stop, thread)
}

/// Every hunt's player count on the nodes equals its acknowledged joins,
/// and its state hash equals the offline replay's.
fn check_hunts(nodes: &[&Node], urls: &str, seen: &Seen) {
    assert!(seen.wrong.is_empty(), "answers other than Joined: {:?}", &seen.wrong[..seen.wrong.len().min(5)]);
    let replay = common::trove(&["replay", "--cluster", urls, "--json"]);
    common::ok(&replay);
    let replayed: serde_json::Value = serde_json::from_slice(&replay.stdout).expect("replay JSON");
    let replayed: HashMap<u64, String> = replayed["hunts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| (h["hunt"].as_u64().unwrap(), h["state_hash"].as_str().unwrap().to_string()))
        .collect();
    for hunt in 1..=HUNTS {
        let joined = seen.joined.get(&hunt).copied().unwrap_or(0);
        // The owner answers; the others say not_owner (421). A partition
        // may be moving (the last restarted node takes its share).
        let deadline = Instant::now() + DEADLINE;
        let detail = loop {
            if let Some(d) = nodes.iter().find_map(|n| get_json(n.at.control, &format!("/hunts/{hunt}"))) {
                break d;
            }
            assert!(Instant::now() < deadline, "no node serves hunt {hunt}");
            std::thread::sleep(Duration::from_millis(50));
        };
        assert_eq!(detail["players"].as_u64(), Some(joined), "hunt {hunt}: players against acknowledged joins");
        assert_eq!(
            detail["state_hash"].as_str(),
            replayed.get(&u64::from(hunt)).map(String::as_str),
            "hunt {hunt}: the node's state against the replay of its stream"
        );
    }
}

/// The owner of the most partitions, among `nodes`.
fn busiest(map: &[String], nodes: &[Node]) -> usize {
    (0..nodes.len()).max_by_key(|&i| map.iter().filter(|o| **o == nodes[i].name).count()).unwrap()
}

/// Three nodes on three NATS servers (every stream and bucket with 3
/// replicas); 20 times the owner of the most partitions is killed with
/// SIGKILL under load and started again.
#[test]
fn a_killed_owners_partitions_move_and_nothing_acknowledged_is_lost() {
    if !nats_server_or_skip("a_killed_owners_partitions_move_and_nothing_acknowledged_is_lost") {
        return;
    }
    common::raise_file_limit();
    let nats = NatsCluster::start(3);
    let urls = nats.urls().join(",");
    let replicas = ["--replicas", "3"];
    let mut nodes: Vec<Node> = ["a", "b", "c"].iter().map(|n| Node::start(&urls, n, &replicas)).collect();
    wait_owned(&nodes[0], &["a", "b", "c"]);
    let seeds: Vec<String> = nodes.iter().map(|n| n.at.control.to_string()).collect();
    let (seen, stop, producer) = start_producing(seeds, 20_000);
    let mut failovers = Vec::new();
    for cycle in 0..20 {
        // Load flowing to every partition before the kill.
        std::thread::sleep(Duration::from_millis(300));
        let map = wait_owned(&nodes[0], &["a", "b", "c"]);
        let victim = busiest(&map, &nodes);
        let moved: Vec<u32> = (0..map.len() as u32).filter(|&p| map[p as usize] == nodes[victim].name).collect();
        nodes[victim].serve.signal("KILL");
        let killed = Instant::now();
        let _ = nodes[victim].serve.wait_exit(DEADLINE);
        // Served again: each moved partition acknowledges after the kill.
        let deadline = killed + DEADLINE;
        loop {
            let served = {
                let s = seen.lock().unwrap();
                moved.iter().all(|p| s.last_ack.get(p).is_some_and(|&t| t > killed))
            };
            if served {
                break;
            }
            assert!(Instant::now() < deadline, "cycle {cycle}: partitions {moved:?} were not served again");
            std::thread::sleep(Duration::from_millis(10));
        }
        failovers.push(killed.elapsed());
        let name = nodes[victim].name.clone();
        nodes[victim] = Node::start(&urls, &name, &replicas);
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    producer.join().expect("the producer finished: every event answered");
    let seen = seen.lock().unwrap();
    assert!(seen.acked > 10_000, "load flowed: {} events acknowledged", seen.acked);
    failovers.sort();
    eprintln!(
        "failover (kill to the first acknowledgement of every moved partition), 20 cycles: min {:?} median {:?} max {:?}",
        failovers[0], failovers[10], failovers[19]
    );
    let refs: Vec<&Node> = nodes.iter().collect();
    check_hunts(&refs, &urls, &seen);
    // The cluster's figures are in /metrics (issue 23's list: partitions
    // owned, lease renew latency, publish-ack latency, failovers, replay
    // progress): the nodes that survived took partitions over from killed
    // ones, replaying what those had appended.
    let (mut failovers, mut replayed) = (0, 0);
    for n in &nodes {
        let text = trove_bench::http::get(n.at.control, "/metrics", Duration::from_secs(5)).unwrap().body;
        for family in [
            "trove_cluster_partitions_owned",
            "trove_cluster_lease_renew_seconds_count",
            "trove_cluster_append_ack_seconds_count",
            "trove_cluster_failovers_total",
            "trove_cluster_replayed_messages_total",
            "trove_cluster_takeover_seconds_count",
        ] {
            assert!(text.contains(family), "{family} missing from {}'s /metrics", n.name);
        }
        trove_bench::prometheus::promtool_check(&text);
        failovers += common::metric(n.at.control, "trove_cluster_failovers_total").unwrap_or(0);
        replayed += common::metric(n.at.control, "trove_cluster_replayed_messages_total").unwrap_or(0);
    }
    assert!(failovers > 0, "no node counted a failover");
    assert!(replayed > 0, "no node counted a replayed message");
}

/// Acknowledgements counted so far.
fn acked(seen: &Mutex<Seen>) -> u64 {
    seen.lock().unwrap().acked
}

/// Waits until more than `since` events are acknowledged.
fn wait_acks_past(seen: &Mutex<Seen>, since: u64, what: &str) {
    let deadline = Instant::now() + DEADLINE;
    while acked(seen) <= since {
        assert!(Instant::now() < deadline, "{what}: no acknowledgement within {DEADLINE:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Two nodes on a 3-server NATS cluster, every stream and bucket with 3
/// replicas. One NATS server killed: the cluster keeps acknowledging. A
/// second one killed: no quorum, so nothing is acknowledged (the nodes'
/// logs say the batches could not be made durable, or the leases could
/// not be renewed, and the producers wait and resend). Both back: it
/// acknowledges again, and nothing acknowledged before was lost.
#[test]
fn with_three_replicas_one_nats_server_may_die_and_two_stop_the_acknowledgements() {
    if !nats_server_or_skip("with_three_replicas_one_nats_server_may_die_and_two_stop_the_acknowledgements") {
        return;
    }
    common::raise_file_limit();
    let mut nats = NatsCluster::start(3);
    let urls = nats.urls().join(",");
    let nodes: Vec<Node> = ["a", "b"].iter().map(|n| Node::start(&urls, n, &["--replicas", "3"])).collect();
    wait_owned(&nodes[0], &["a", "b"]);
    let seeds: Vec<String> = nodes.iter().map(|n| n.at.control.to_string()).collect();
    let (seen, stop, producer) = start_producing(seeds, 5_000);
    wait_acks_past(&seen, 1_000, "before any kill");

    nats.kill(2);
    let before = acked(&seen);
    wait_acks_past(&seen, before + 2_000, "with one NATS server of three dead");

    nats.kill(1);
    // What was in flight settles (acknowledged or refused); then nothing
    // more is acknowledged while the quorum is gone.
    std::thread::sleep(Duration::from_secs(4));
    let stalled = acked(&seen);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(acked(&seen), stalled, "acknowledged without a quorum");
    let logs: String = nodes.iter().map(|n| n.serve.stderr_now()).collect();
    assert!(
        logs.contains("could not make a batch durable") || logs.contains("could not renew the lease"),
        "the nodes never said the cluster's log was unavailable:\n{logs}"
    );
    // A producer of its own on each node, without the SDK's retries: its
    // batch is answered with a typed error (the log is `unavailable`, or
    // the node gave the partition up: `not_owner`), never an ACK.
    for node in &nodes {
        let code = answer_without_quorum(node.at.tcp);
        assert!(
            code == ErrorCode::Unavailable as u16 || code == ErrorCode::NotOwner as u16,
            "node {} answered error code {code} without a quorum",
            node.name
        );
    }

    nats.restart(1);
    nats.restart(2);
    wait_acks_past(&seen, stalled + 2_000, "after the quorum came back");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    producer.join().expect("the producer finished: every event answered");
    let seen = seen.lock().unwrap();
    wait_owned(&nodes[0], &["a", "b"]);
    let refs: Vec<&Node> = nodes.iter().collect();
    check_hunts(&refs, &urls, &seen);
}

/// One batch (a join to a hunt the producers do not use, so the checks of
/// their hunts stay exact whether it ever becomes durable or not) on a
/// connection of its own to `tcp`: the ERROR code it is answered with.
/// Panics on an ACK, a BUSY or no answer within the deadline.
fn answer_without_quorum(tcp: SocketAddr) -> u16 {
    let mut s = std::net::TcpStream::connect(tcp).expect("connect");
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut out = Vec::new();
    frame::encode_hello(&mut out, &Hello::v1(0, 0));
    frame::encode_events(&mut out, 1, &[HuntEvent::join(HUNTS + 1, 1)]);
    s.write_all(&out).expect("HELLO and EVENTS");
    let sizes = Sizes { record: <HuntEvent as trove_core::Record>::SIZE, outcome: TreasureHunt::OUTCOME_SIZE };
    let mut welcomed = false;
    loop {
        let mut head = [0u8; HEADER_LEN];
        s.read_exact(&mut head).expect("an answer within the deadline");
        let (len, kind) = (u32::from_le_bytes(head[..4].try_into().unwrap()), head[4]);
        let mut body = vec![0u8; len as usize];
        s.read_exact(&mut body).expect("the answer's body");
        let kind = Kind::from_u8(kind).expect("a known kind");
        match frame::decode(frame::Header { kind, flags: head[5], len }, &body, sizes).expect("a valid frame") {
            Frame::Welcome(_) if !welcomed => welcomed = true,
            Frame::Error { code, .. } => return code,
            other => panic!("answered {other:?} without a quorum"),
        }
    }
}

/// The owner of the most partitions stops (SIGSTOP) for twice its lease:
/// the other node takes its partitions over and fences their streams.
/// When it resumes (SIGCONT) it still holds batches it applied before the
/// stop; their appends are refused, it gives those partitions up, and
/// its producers follow the partitions to the new owner. Nothing
/// acknowledged is lost, nothing is applied twice.
#[test]
fn a_deposed_owner_that_comes_back_cannot_append() {
    if !nats_server_or_skip("a_deposed_owner_that_comes_back_cannot_append") {
        return;
    }
    common::raise_file_limit();
    let nats = NatsServer::start();
    let urls = nats.url();
    let nodes: Vec<Node> = ["a", "b"].iter().map(|n| Node::start(&urls, n, &[])).collect();
    wait_owned(&nodes[0], &["a", "b"]);
    let seeds: Vec<String> = nodes.iter().map(|n| n.at.control.to_string()).collect();
    let (seen, stop, producer) = start_producing(seeds, 20_000);
    wait_acks_past(&seen, 2_000, "before the stop");
    let map = wait_owned(&nodes[0], &["a", "b"]);
    let victim = busiest(&map, &nodes);
    let other = 1 - victim;
    nodes[victim].serve.signal("STOP");
    // The other node takes every partition over.
    let deadline = Instant::now() + DEADLINE;
    loop {
        if owners(&nodes[other]).is_some_and(|m| m.iter().all(|o| o.as_deref() == Some(nodes[other].name.as_str()))) {
            break;
        }
        assert!(Instant::now() < deadline, "the partitions never moved off the stopped node");
        std::thread::sleep(Duration::from_millis(50));
    }
    let moved = acked(&seen);
    wait_acks_past(&seen, moved + 2_000, "with the owner stopped");
    nodes[victim].serve.signal("CONT");
    // Back, it learns it lost its leases (or is refused by a fence) and
    // gives the partitions up; the cluster rebalances.
    let deadline = Instant::now() + DEADLINE;
    loop {
        let log = nodes[victim].serve.stderr_now();
        if log.contains("lost the lease") || log.contains("taken over by another node") {
            break;
        }
        assert!(Instant::now() < deadline, "the resumed node never noticed it was deposed:\n{log}");
        std::thread::sleep(Duration::from_millis(50));
    }
    wait_owned(&nodes[0], &["a", "b"]);
    let resumed = acked(&seen);
    wait_acks_past(&seen, resumed + 2_000, "after the resume");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    producer.join().expect("the producer finished: every event answered");
    let seen = seen.lock().unwrap();
    let refs: Vec<&Node> = nodes.iter().collect();
    check_hunts(&refs, &urls, &seen);
}

/// The owner of the most partitions leaves cleanly (SIGTERM) under load:
/// it hands each partition over (a snapshot, the lease released), the
/// other node takes them with nothing to replay (no failover counted), and
/// the producers follow. Started again, it joins and the cluster
/// rebalances to it, again by clean hand-overs. Nothing acknowledged is
/// lost, nothing is applied twice.
#[test]
fn a_node_that_leaves_cleanly_hands_over_and_one_that_joins_gets_its_share() {
    if !nats_server_or_skip("a_node_that_leaves_cleanly_hands_over_and_one_that_joins_gets_its_share") {
        return;
    }
    common::raise_file_limit();
    let nats = NatsServer::start();
    let urls = nats.url();
    let mut nodes: Vec<Node> = ["a", "b"].iter().map(|n| Node::start(&urls, n, &[])).collect();
    wait_owned(&nodes[0], &["a", "b"]);
    let seeds: Vec<String> = nodes.iter().map(|n| n.at.control.to_string()).collect();
    let (seen, stop, producer) = start_producing(seeds, 20_000);
    wait_acks_past(&seen, 2_000, "before the leave");
    let map = wait_owned(&nodes[0], &["a", "b"]);
    let leaver = busiest(&map, &nodes);
    let stayer = 1 - leaver;
    let (left, name) = (nodes[leaver].name.clone(), nodes[stayer].name.clone());
    let (status, log) = nodes[leaver].serve.terminate(DEADLINE);
    assert!(status.success(), "node {left} did not leave cleanly ({status}):\n{log}");
    wait_owned(&nodes[stayer], &[name.as_str()]);
    let moved = acked(&seen);
    wait_acks_past(&seen, moved + 2_000, "after the leave");
    let failovers = |n: &Node| common::metric(n.at.control, "trove_cluster_failovers_total");
    assert_eq!(failovers(&nodes[stayer]), Some(0), "a hand-over left messages to replay:\n{log}");

    nodes[leaver] = Node::start(&urls, &left, &[]);
    let deadline = Instant::now() + DEADLINE;
    loop {
        let map = wait_owned(&nodes[stayer], &["a", "b"]);
        if map.contains(&left) && map.contains(&name) {
            break;
        }
        assert!(Instant::now() < deadline, "node {left} never got a share back: {map:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let joined = acked(&seen);
    wait_acks_past(&seen, joined + 2_000, "after the join");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    producer.join().expect("the producer finished: every event answered");
    for n in &nodes {
        assert_eq!(failovers(n), Some(0), "node {}: a hand-over left messages to replay", n.name);
    }
    let seen = seen.lock().unwrap();
    let refs: Vec<&Node> = nodes.iter().collect();
    check_hunts(&refs, &urls, &seen);
}
