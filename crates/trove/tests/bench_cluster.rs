//! `trove bench --target` pointed at one node of a cluster drives the whole
//! cluster through the SDK's routing: a real `nats-server`, two real
//! `trove serve --cluster` nodes, the bench run as a user would run it.
//! Rates are small: this checks behaviour, not speed.
//!
//! Skipped, with a message, only when `nats-server` is not installed;
//! `.ci/run` installs it, and with `CI` set a missing binary fails.

mod common;

use std::time::{Duration, Instant};

use common::{Listening, Serve, ok, read_json, trove};
use trove_bench::nats::{NatsServer, nats_server_or_skip};

/// Every wait's bound: the test checks behaviour, not speed.
const DEADLINE: Duration = Duration::from_secs(60);

/// A node on `url`; with `ws` it also listens for WebSocket (on a port of
/// its own, which its map entry gives).
fn node(url: &str, name: &str, ws: bool) -> (Serve, Listening) {
    let mut serve = Serve::spawn(&[
        "--cluster",
        url,
        "--node",
        name,
        "--partitions",
        "4",
        "--tcp",
        "127.0.0.1:0",
        "--ws",
        if ws { "127.0.0.1:0" } else { "off" },
        "--control",
        "127.0.0.1:0",
        "--lease-ms",
        "1500",
    ]);
    let at = serve.wait_listening();
    (serve, at)
}

/// Each partition's owner, as the node at `control` sees it.
fn owners(control: std::net::SocketAddr) -> Option<Vec<Option<String>>> {
    let r = trove_bench::http::get(control, "/cluster", Duration::from_secs(5)).ok()?;
    let map: serde_json::Value = serde_json::from_str(&r.body).ok()?;
    Some(map["map"].as_array()?.iter().map(|e| e["owner"]["node"].as_str().map(str::to_string)).collect())
}

/// Two nodes on `nats`, every partition owned and both owning some.
fn two_nodes(nats: &NatsServer, ws: bool) -> [(Serve, Listening); 2] {
    let (a, a_at) = node(&nats.url(), "a", ws);
    let (b, b_at) = node(&nats.url(), "b", ws);
    // Both nodes own partitions: events for b's reach a only as not_owner.
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(map) = owners(a_at.control)
            && map.iter().all(Option::is_some)
            && ["a", "b"].iter().all(|n| map.iter().any(|o| o.as_deref() == Some(*n)))
        {
            break;
        }
        assert!(Instant::now() < deadline, "the partitions never spread over both nodes:\n{}", b.stderr_now());
        std::thread::sleep(Duration::from_millis(50));
    }
    [(a, a_at), (b, b_at)]
}

#[test]
fn bench_against_one_node_of_a_cluster_drives_every_node() {
    if !nats_server_or_skip("bench_against_one_node_of_a_cluster_drives_every_node") {
        return;
    }
    let nats = NatsServer::start();
    let [(a, a_at), (b, b_at)] = two_nodes(&nats, false);
    let dir = common::scratch_dir("bench-cluster");
    let edits = [("hunts = 1000", "hunts = 40"), ("players_per_hunt = 1000", "players_per_hunt = 50")];
    let workload = common::workload_file(&dir, "small.toml", &edits);
    let json = dir.join("run.json");
    let (tcp, control) = (a_at.tcp.to_string(), a_at.control.to_string());
    let out = trove(&[
        "bench",
        "--target",
        &tcp,
        "--metrics",
        &control,
        "--workload",
        workload.to_str().unwrap(),
        "--rate",
        "10000",
        "--duration",
        "1",
        "--connections",
        "2",
        "--watch",
        "0",
        // Behaviour, not speed: a loaded test machine must not fail the step.
        "--slo-ms",
        "60000",
        "--json",
        json.to_str().unwrap(),
    ]);
    ok(&out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("driving it through the SDK's routing"), "{stderr}");
    let v = read_json(&json);
    assert_eq!(v["mode"], "cluster", "{v}");
    // Every event the schedule offered was acknowledged, none refused.
    let offered = v["events_offered"].as_u64().unwrap();
    assert!(offered > 5_000, "{v}");
    assert_eq!(v["events_acked"].as_u64(), Some(offered), "{v}");
    assert_eq!(v["events_refused"].as_u64(), Some(0), "{v}");
    // Both nodes acknowledged events of the step, each in its own figures.
    let nodes = v["server"]["nodes"].as_array().unwrap_or_else(|| panic!("no nodes in {v}"));
    let mut names: Vec<&str> = nodes.iter().map(|n| n["node"].as_str().unwrap()).collect();
    names.sort();
    assert_eq!(names, ["a", "b"], "{v}");
    for n in nodes {
        assert!(n["acknowledged_events_per_s"].as_f64().unwrap() > 0.0, "node {n} acknowledged nothing: {v}");
    }
    for (name, at) in [("a", &a_at), ("b", &b_at)] {
        let acked = common::metric(at.control, "trove_events_acknowledged_total").unwrap_or(0);
        assert!(acked > 0, "node {name} acknowledged nothing");
    }
    drop((a, b));
}

fn u(v: &serde_json::Value, key: &str) -> u64 {
    v[key].as_u64().unwrap_or_else(|| panic!("{key} in {v}"))
}

/// `--subscribers` against a cluster: spread over its nodes, each hunt
/// watched on its owner and relayed to the other (decision 0046), every
/// update delivered and timed as on a single node.
#[test]
fn subscribers_spread_over_a_cluster_get_every_update() {
    if !nats_server_or_skip("subscribers_spread_over_a_cluster_get_every_update") {
        return;
    }
    subscribers_over_two_nodes(false);
}

/// `--subscribers-ws` against a cluster, without `--target-ws`: each
/// WebSocket subscriber connects to its node's WebSocket address from the
/// map, spread over the nodes as the TCP ones are (subscriber `i` on the
/// `i % nodes`-th), every update delivered and timed.
#[test]
fn websocket_subscribers_spread_over_a_cluster_by_its_map() {
    if !nats_server_or_skip("websocket_subscribers_spread_over_a_cluster_by_its_map") {
        return;
    }
    subscribers_over_two_nodes(true);
}

/// 10 subscribers over 5 hunts (TCP, or WebSocket with `ws`) on two nodes,
/// alternately on each: every hunt has a watcher on each node, one of them
/// relayed; every acknowledged event reaches both, timed, none lost.
fn subscribers_over_two_nodes(ws: bool) {
    let nats = NatsServer::start();
    let [(a, a_at), (b, b_at)] = two_nodes(&nats, ws);
    if ws {
        // The map gives each node's own WebSocket listener.
        let r = trove_bench::http::get(a_at.control, "/cluster", Duration::from_secs(5)).expect("GET /cluster");
        let map: serde_json::Value = serde_json::from_str(&r.body).expect("the map is JSON");
        for (name, at) in [("a", &a_at), ("b", &b_at)] {
            let entry = map["nodes"].as_array().unwrap().iter().find(|n| n["node"] == name);
            let ws = entry.and_then(|n| n["ws"].as_str()).unwrap_or_else(|| panic!("no ws for {name} in {map}"));
            assert_eq!(Some(ws.to_string()), at.ws.map(|w| w.to_string()), "{map}");
        }
    }
    let dir = common::scratch_dir(if ws { "bench-cluster-ws" } else { "bench-cluster-subscribers" });
    let edits = [("hunts = 1000", "hunts = 5"), ("players_per_hunt = 1000", "players_per_hunt = 50")];
    let workload = common::workload_file(&dir, "small.toml", &edits);
    let json = dir.join("run.json");
    let (tcp, control) = (a_at.tcp.to_string(), a_at.control.to_string());
    #[rustfmt::skip]
    let mut args = vec![
        "bench", "--target", &tcp, "--metrics", &control, "--workload", workload.to_str().unwrap(),
        "--rate", "5000", "--duration", "1", "--connections", "2",
        "--subscribers", "10", "--subscriber-hunts", "all",
        "--slo-ms", "60000", "--json", json.to_str().unwrap(),
    ];
    if ws {
        args.push("--subscribers-ws");
    }
    let out = trove(&args);
    ok(&out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let spread = if ws { "10 subscribers (WebSocket) over 2 nodes of cluster" } else { "over 2 nodes of cluster" };
    assert!(stderr.contains(spread), "{stderr}");
    let v = read_json(&json);
    assert_eq!(v["mode"], "cluster", "{v}");
    let f = &v["fanout"];
    assert_eq!((u(f, "subscribers"), u(f, "hunts_watched")), (10, 5), "{f}");
    // Every acknowledged event reached both watchers of its hunt, each
    // timed, none lost.
    let acked = u(&v, "events_acked");
    assert!(acked > 1000, "{v}");
    assert_eq!(u(f, "updates_timed"), 2 * acked, "{f}");
    assert_eq!((u(f, "gaps"), u(f, "updates_untimed"), u(f, "desynced")), (0, 0, 0), "{f}");
    assert!(f["updates_per_s"].as_f64().unwrap() > 0.0, "{f}");
    assert_eq!(v["updates_measured"], f["updates_timed"]);
    // Half of them came through the relay.
    let relayed: u64 = [&a_at, &b_at]
        .iter()
        .map(|at| common::metric(at.control, "trove_cluster_relay_updates_total").unwrap_or(0))
        .sum();
    assert!(relayed >= acked, "relayed {relayed} of {acked} events' updates");
    drop((a, b));
    std::fs::remove_dir_all(&dir).ok();
}

/// `--subscribers-ws` against a `--target` that is not in a cluster still
/// needs its WebSocket address, and says so before it plays.
#[test]
fn websocket_subscribers_of_a_single_node_need_target_ws() {
    let mut serve =
        Serve::spawn(&["--no-journal", "--tcp", "127.0.0.1:0", "--control", "127.0.0.1:0", "--ws", "127.0.0.1:0"]);
    let at = serve.wait_listening();
    let (tcp, control) = (at.tcp.to_string(), at.control.to_string());
    #[rustfmt::skip]
    let out = trove(&[
        "bench", "--target", &tcp, "--metrics", &control, "--duration", "0.1",
        "--subscribers", "2", "--subscribers-ws",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not in a cluster") && err.contains("--target-ws"), "{err}");
    serve.stop(Duration::from_secs(10));
}
