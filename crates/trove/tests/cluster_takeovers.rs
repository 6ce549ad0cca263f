//! A node that takes several partitions over after a failure rebuilds them
//! side by side: a real `nats-server`, two real `trove serve --cluster`
//! nodes over 8 partitions, producers through the SDK's `ClusterProducer`,
//! one node killed (SIGKILL). Checks behaviour, not speed: every partition
//! of the dead node is served again, nothing acknowledged is lost or
//! applied twice, and the survivor's rebuilds overlapped.
//!
//! Skipped, with a message, only when `nats-server` is not installed;
//! `.ci/run` installs it, and with `CI` set a missing binary fails.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Listening, Serve};
use trove_bench::nats::{NatsServer, nats_server_or_skip};
use trove_client::{ClusterConfig, ClusterProducer};
use trove_hunt::{HuntConfig, HuntEvent, HuntOutcome, TreasureHunt};

/// Every wait's bound: the test checks behaviour, not speed.
const DEADLINE: Duration = Duration::from_secs(60);
const PARTITIONS: usize = 8;
/// Hunts joined to, spread over the partitions.
const HUNTS: u32 = 32;

/// How often the nodes snapshot (`TROVE_TEST_SNAPSHOT_MS` overrides it:
/// a long one leaves more to replay, to measure rebuilds that take a
/// while).
fn snapshot_ms() -> String {
    std::env::var("TROVE_TEST_SNAPSHOT_MS").unwrap_or_else(|_| "2000".into())
}

fn node(url: &str, name: &str) -> (Serve, Listening) {
    let snapshot = snapshot_ms();
    let mut serve = Serve::spawn(&[
        "--cluster",
        url,
        "--node",
        name,
        "--partitions",
        "8",
        "--tcp",
        "127.0.0.1:0",
        "--ws",
        "off",
        "--control",
        "127.0.0.1:0",
        "--lease-ms",
        "1500",
        "--snapshot-ms",
        &snapshot,
    ]);
    let at = serve.wait_listening();
    (serve, at)
}

fn get_json(addr: std::net::SocketAddr, path: &str) -> Option<serde_json::Value> {
    let r = trove_bench::http::get(addr, path, Duration::from_secs(5)).ok()?;
    (r.status == 200).then(|| serde_json::from_str(&r.body).ok()).flatten()
}

/// Each partition's owner, as the node at `control` sees it.
fn owners(control: std::net::SocketAddr) -> Option<Vec<Option<String>>> {
    let map = get_json(control, "/cluster")?;
    Some(map["map"].as_array()?.iter().map(|e| e["owner"]["node"].as_str().map(str::to_string)).collect())
}

/// Waits until `ok` holds of the map as the node at `control` sees it.
fn wait_map(control: std::net::SocketAddr, what: &str, ok: impl Fn(&[Option<String>]) -> bool) -> Vec<String> {
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(map) = owners(control)
            && map.len() == PARTITIONS
            && ok(&map)
        {
            return map.into_iter().map(Option::unwrap_or_default).collect();
        }
        assert!(Instant::now() < deadline, "{what}: never; last map {:?}", owners(control));
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[derive(Default)]
struct Seen {
    joined: BTreeMap<u32, u64>,
    last_ack: HashMap<u32, Instant>,
    wrong: Vec<String>,
    acked: u64,
}

/// Joins players to the hunts through a `ClusterProducer` until `stop`;
/// returns when every event sent is answered.
async fn produce(seeds: Vec<String>, seen: Arc<Mutex<Seen>>, stop: Arc<AtomicBool>) {
    let mut config = ClusterConfig { failover_timeout: DEADLINE, ..ClusterConfig::new(seeds) };
    config.client.want_outcomes = true;
    config.client.linger = Duration::from_millis(2);
    let (mut producer, mut acks) = ClusterProducer::<TreasureHunt>::connect(config).await.expect("connects");
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
                        other => seen.wrong.push(format!("hunt {hunt}: {other:?}")),
                    }
                }
                seen.acked += u64::from(batch.count);
                seen.last_ack.insert(partition, Instant::now());
            }
        })
    };
    let config = HuntConfig { players_max: 1 << 20, ..common::hunt_config() };
    let mut n: u64 = 0;
    let send = async |producer: &mut ClusterProducer<TreasureHunt>, hunt: u32, event: HuntEvent| {
        let (partition, seq) = producer.send_wait(event).await.expect("sent");
        sent.lock().unwrap().insert((partition, seq), hunt);
    };
    for hunt in 1..=HUNTS {
        send(&mut producer, hunt, HuntEvent::create(hunt, config)).await;
    }
    let started = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        let hunt = 1 + (n % u64::from(HUNTS)) as u32;
        send(&mut producer, hunt, HuntEvent::join(hunt, (n / u64::from(HUNTS)) as u32)).await;
        n += 1;
        // About 5,000 events per second.
        if let Some(wait) = (started + Duration::from_micros(n * 200)).checked_duration_since(Instant::now()) {
            tokio::time::sleep(wait).await;
        }
    }
    producer.close().await.expect("every event answered at close");
    reader.await.expect("the reader ends");
}

#[test]
fn a_dead_nodes_partitions_are_rebuilt_side_by_side_and_nothing_acknowledged_is_lost() {
    if !nats_server_or_skip("a_dead_nodes_partitions_are_rebuilt_side_by_side_and_nothing_acknowledged_is_lost") {
        return;
    }
    let nats = NatsServer::start();
    let (a, a_at) = node(&nats.url(), "a");
    let (mut b, b_at) = node(&nats.url(), "b");
    let map = wait_map(a_at.control, "4 partitions on each node", |m| {
        ["a", "b"].iter().all(|n| m.iter().filter(|o| o.as_deref() == Some(*n)).count() == PARTITIONS / 2)
    });
    let moved: Vec<u32> = (0..PARTITIONS as u32).filter(|&p| map[p as usize] == "b").collect();
    let seen = Arc::new(Mutex::new(Seen::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let producer = {
        let seeds = vec![a_at.control.to_string(), b_at.control.to_string()];
        let (seen, stop) = (seen.clone(), stop.clone());
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
            rt.block_on(produce(seeds, seen, stop));
        })
    };
    // Load on every partition before the kill.
    let deadline = Instant::now() + DEADLINE;
    while seen.lock().unwrap().last_ack.len() < PARTITIONS {
        assert!(Instant::now() < deadline, "not every partition acknowledged before the kill");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(500));
    b.signal("KILL");
    let killed = Instant::now();
    let _ = b.wait_exit(DEADLINE);
    // Every partition of b is served again: by a, acknowledging after the kill.
    wait_map(a_at.control, "every partition on a", |m| m.iter().all(|o| o.as_deref() == Some("a")));
    loop {
        let served = {
            let s = seen.lock().unwrap();
            moved.iter().all(|p| s.last_ack.get(p).is_some_and(|&t| t > killed))
        };
        if served {
            break;
        }
        assert!(killed.elapsed() < DEADLINE, "partitions {moved:?} were not served again");
        std::thread::sleep(Duration::from_millis(10));
    }
    eprintln!("failover of {} partitions: {:?} from the kill", moved.len(), killed.elapsed());
    stop.store(true, Ordering::Relaxed);
    producer.join().expect("the producer finished: every event answered");
    let seen = seen.lock().unwrap();
    assert!(seen.wrong.is_empty(), "answers other than Joined: {:?}", &seen.wrong[..seen.wrong.len().min(5)]);
    // Nothing acknowledged is lost, nothing applied twice: each hunt has
    // exactly the joins acknowledged.
    for hunt in 1..=HUNTS {
        let joined = seen.joined.get(&hunt).copied().unwrap_or(0);
        let detail = get_json(a_at.control, &format!("/hunts/{hunt}")).unwrap_or_else(|| panic!("hunt {hunt} on a"));
        assert_eq!(detail["players"].as_u64(), Some(joined), "hunt {hunt}: players against acknowledged joins");
    }
    // The rebuilds overlapped in time: the survivor took b's partitions in
    // one go, and the node counts rebuilds (snapshot fetch and stream
    // replay) under way at once, not threads started.
    let log = a.stderr_now();
    // The survivor's takeovers, for the record (docs/benchmarks.md).
    for line in log.lines().filter(|l| l.contains("serving partition") || l.contains("partitions over in")) {
        eprintln!("{line}");
    }
    let most = log
        .lines()
        .filter(|l| l.contains("rebuilds overlapping"))
        .filter_map(|l| l.split("at most ").nth(1)?.split(' ').next()?.parse::<usize>().ok())
        .max()
        .unwrap_or_else(|| panic!("a never took several partitions over at once:\n{log}"));
    assert!(most >= 2, "the rebuilds did not overlap (at most {most} at once):\n{log}");
}
