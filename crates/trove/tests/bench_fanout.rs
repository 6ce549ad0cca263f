//! `trove bench --subscribers N`: the fan-out fleet against real `trove
//! serve` processes. Small sizes and rates: behaviour, not speed.

mod common;

use common::{ok, read_json, trove};

fn workload(dir: &std::path::Path, hunts: u32) -> String {
    let edits = [("hunts = 1000", &*format!("hunts = {hunts}")), ("players_per_hunt = 1000", "players_per_hunt = 50")];
    common::workload_file(dir, "small.toml", &edits).to_str().unwrap().to_string()
}

/// Runs a single step with the subscriber flags `extra`; returns its JSON.
fn bench(name: &str, hunts: u32, extra: &[&str]) -> (serde_json::Value, std::path::PathBuf) {
    let dir = common::scratch_dir(name);
    let workload = workload(&dir, hunts);
    let json = dir.join("run.json");
    let mut args = vec!["bench", "--workload", &workload, "--rate", "5000", "--duration", "1", "--slo-ms", "60000"];
    args.extend_from_slice(&["--json", json.to_str().unwrap()]);
    args.extend_from_slice(extra);
    let out = trove(&args);
    ok(&out);
    (read_json(&json), dir)
}

fn u(v: &serde_json::Value, key: &str) -> u64 {
    v[key].as_u64().unwrap_or_else(|| panic!("{key} in {v}"))
}

/// Every subscriber that keeps up got every event of its hunt, each timed.
fn every_update_delivered(v: &serde_json::Value, watchers_per_hunt: u64) {
    let f = &v["fanout"];
    let acked = u(v, "events_acked");
    assert!(acked > 0, "{v}");
    assert_eq!(u(f, "updates_timed"), watchers_per_hunt * acked, "{f}");
    assert_eq!((u(f, "gaps"), u(f, "updates_untimed"), u(f, "desynced")), (0, 0, 0), "{f}");
    // None read more than a ring behind, or after the step was reported.
    assert_eq!((u(f, "updates_lower_bound"), u(f, "updates_late"), u(f, "updates_reordered")), (0, 0, 0), "{f}");
    let lat = &f["latency_us"];
    assert!(u(lat, "p50") <= u(lat, "p99") && u(lat, "p99") <= u(lat, "max"), "{f}");
    // Entries counted include the broadcasts the events caused.
    assert!(f["updates_per_s"].as_f64().unwrap() > 0.0 && f["bytes_per_s"].as_f64().unwrap() > 0.0, "{f}");
    assert!(f["generator_cpu_cores"].as_f64().unwrap() > 0.0, "{f}");
    // Null when a /metrics scrape did not answer in time (a loaded machine).
    if let Some(cpu) = f["server_cpu_ns_per_update"].as_f64() {
        assert!(cpu > 0.0, "{f}");
    }
    // The step's own update figures are the fleet's.
    assert_eq!(v["updates_measured"], f["updates_timed"]);
    assert_eq!(v["update_latency_us"], f["latency_us"]);
}

#[test]
fn fifty_tcp_subscribers_over_five_hunts_get_every_update() {
    let (v, dir) = bench("bench-fanout-tcp", 5, &["--subscribers", "50", "--subscriber-hunts", "all"]);
    assert_eq!(v["fanout"]["transport"], "tcp");
    assert_eq!((u(&v["fanout"], "subscribers"), u(&v["fanout"], "hunts_watched")), (50, 5));
    every_update_delivered(&v, 10);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn websocket_subscribers_get_every_update() {
    let (v, dir) =
        bench("bench-fanout-ws", 5, &["--subscribers", "20", "--subscriber-hunts", "all", "--subscribers-ws"]);
    assert_eq!(v["fanout"]["transport"], "ws");
    every_update_delivered(&v, 4);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn compressed_websocket_subscribers_get_every_update() {
    let (v, dir) = bench(
        "bench-fanout-ws-deflate",
        5,
        &["--subscribers", "20", "--subscriber-hunts", "all", "--subscribers-ws", "--subscribers-ws-deflate"],
    );
    assert_eq!(v["fanout"]["transport"], "ws+deflate");
    every_update_delivered(&v, 4);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn one_hot_hunt_and_the_report_show_the_subscribers() {
    let dir = common::scratch_dir("bench-fanout-hot");
    let workload = workload(&dir, 5);
    let report = dir.join("report");
    let out = trove(&[
        "bench",
        "--workload",
        &workload,
        "--rate",
        "5000",
        "--duration",
        "1",
        "--slo-ms",
        "60000",
        "--subscribers",
        "30",
        "--subscriber-hunts",
        "2",
        "--report",
        report.to_str().unwrap(),
    ]);
    ok(&out);
    let md = std::fs::read_to_string(report.join("report.md")).unwrap();
    assert!(md.contains("### Subscribers") && md.contains("| 30 | tcp | 1 |"), "{md}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("30 tcp subscribers over 1 hunts"), "{stdout}");
    std::fs::remove_dir_all(&dir).ok();
}

/// Slow readers fall behind: the server opens gaps for them, and those
/// that keep up on the same hunt lose nothing.
#[test]
fn slow_subscribers_get_gaps_and_are_reported_apart() {
    let dir = common::scratch_dir("bench-fanout-slow");
    let workload = workload(&dir, 1);
    let config = dir.join("serve.toml");
    // A small queue (the default is 65,536) and a 5 s run, so the slow
    // readers' backlog passes it and their socket buffers by far (4,096
    // and 4 s left a margin of about a tenth, which a busy machine can
    // eat), while the fast ones still have about a second of slack.
    std::fs::write(&config, "[limits]\nsubscriber_updates_max = 1024\n").unwrap();
    let mut serve = common::Serve::spawn(&[
        "--tcp",
        "127.0.0.1:0",
        "--ws",
        "off",
        "--control",
        "127.0.0.1:0",
        "--no-journal",
        "--config",
        config.to_str().unwrap(),
    ]);
    let at = serve.wait_listening();
    let json = dir.join("run.json");
    let out = trove(&[
        "bench",
        "--workload",
        &workload,
        "--target",
        &at.tcp.to_string(),
        "--metrics",
        &at.control.to_string(),
        "--connections",
        "1",
        "--rate",
        "20000",
        "--duration",
        "5",
        "--slo-ms",
        "60000",
        "--subscribers",
        "6",
        "--subscriber-hunts",
        "0",
        "--slow-subscribers",
        "2",
        "--json",
        json.to_str().unwrap(),
    ]);
    ok(&out);
    let v = read_json(&json);
    let f = &v["fanout"];
    assert_eq!(u(f, "slow_subscribers"), 2);
    // The server dropped entries for the slow ones. (They meet their GAP
    // only after reading what was queued before it, and the server counts
    // a gap when the mailbox finds it, at its subscriber's next take:
    // within the run that may not have come.)
    assert!(u(f, "server_updates_dropped") > 0, "{f}");
    // They read at about 1 KiB/s each (a tick's budget over).
    assert!(f["slow_bytes_per_s"].as_f64().unwrap() <= 2.0 * 1500.0, "{f}");
    // The four that keep up got everything, timed.
    every_update_delivered(&v, 4);
    serve.stop(std::time::Duration::from_secs(10));
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn bad_subscriber_flags_are_clear_errors() {
    for (args, says) in [
        (&["--subscriber-hunts", "all"][..], "need --subscribers"),
        (&["--subscribers", "5", "--subscriber-hunts", "zipf:0"][..], "zipf:S"),
        (&["--subscribers", "5", "--subscriber-hunts", "1000"][..], "hunts 0..1000"),
        (&["--subscribers", "5", "--slow-subscribers", "6"][..], "more than --subscribers"),
        (&["--subscribers", "5", "--subscribers-ws", "--target", "127.0.0.1:9"][..], "--target-ws"),
        (&["--subscribers", "5", "--subscribers-ws-deflate"][..], "add --subscribers-ws"),
        (&["--subscribers-ws-deflate"][..], "need --subscribers"),
    ] {
        let mut all = vec!["bench", "--duration", "0.1"];
        all.extend_from_slice(args);
        let out = trove(&all);
        assert!(!out.status.success(), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(says), "{args:?}: {err}");
    }
}
