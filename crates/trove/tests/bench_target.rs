//! `trove bench --target` against a running `trove serve` that already
//! holds a hunt: the bench plays into a hunt range it names, refuses a
//! range that is not free (before playing a single event) unless
//! `--force`, and runs in a free one (docs/decisions/0049).

mod common;

use std::time::Duration;

use common::{Serve, trove};
use trove_bench::http;

fn small_workload(dir: &std::path::Path) -> String {
    let edits = [("hunts = 1000", "hunts = 20"), ("players_per_hunt = 1000", "players_per_hunt = 20")];
    common::workload_file(dir, "small.toml", &edits).to_str().unwrap().to_string()
}

/// `GET /hunts/{id}` as JSON, or None for a 404.
fn hunt(control: std::net::SocketAddr, id: u32) -> Option<serde_json::Value> {
    let r = http::get(control, &format!("/hunts/{id}"), Duration::from_secs(10)).expect("GET /hunts/{id}");
    match r.status {
        200 => Some(serde_json::from_str(&r.body).expect("JSON")),
        404 => None,
        s => panic!("GET /hunts/{id}: {s} {}", r.body),
    }
}

fn bench(at: &common::Listening, workload: &str, extra: &[&str]) -> (std::process::Output, String) {
    let tcp = at.tcp.to_string();
    let mut args =
        vec!["bench", "--target", &tcp, "--workload", workload, "--rate", "5000", "--duration", "0.5", "--watch", "2"];
    args.extend_from_slice(&["--connections", "2", "--slo-ms", "60000"]);
    args.extend_from_slice(extra);
    let out = trove(&args);
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    (out, stderr)
}

#[test]
fn the_bench_refuses_a_range_that_holds_hunts_unless_forced_and_runs_in_a_free_one() {
    let dir = common::scratch_dir("bench-target-range");
    let workload = small_workload(&dir);
    let mut server = Serve::spawn(&[
        "--shards",
        "2",
        "--fsync",
        "never",
        "--data",
        dir.join("data").to_str().unwrap(),
        "--tcp",
        "127.0.0.1:0",
        "--ws",
        "off",
        "--control",
        "127.0.0.1:0",
    ]);
    let at = server.wait_listening();
    // A hunt made by hand: 5, in the range 0..=19 of `--hunt-base 0`.
    let body = r#"{"id": 5, "config": {"width": 64, "height": 64, "seed": 7, "treasures_per_round": 8, "value_min": 1, "value_max": 10, "dig_cooldown_ms": 0, "step_max": 4, "players_max": 1024}}"#;
    let r = http::request(at.control, "POST", "/hunts", Some(body), Duration::from_secs(10)).expect("POST /hunts");
    assert_eq!(r.status, 201, "{}", r.body);
    let before = hunt(at.control, 5).expect("hunt 5");

    // With the control plane: refused from GET /hunts, nothing written.
    let control = at.control.to_string();
    let (out, stderr) = bench(&at, &workload, &["--hunt-base", "0", "--metrics", &control]);
    assert_ne!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("hunts 0..=19") && stderr.contains("/hunts lists: 5"), "{stderr}");
    assert!(stderr.contains("--force") && stderr.contains("--hunt-base"), "{stderr}");
    assert_eq!(hunt(at.control, 5).as_ref(), Some(&before));
    assert!(hunt(at.control, 0).is_none(), "the listing refused before any create");

    // Without it: refused from the creates' answers, before play.
    let (out, stderr) = bench(&at, &workload, &["--hunt-base", "0"]);
    assert_ne!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("hunts 0..=19") && stderr.contains("hunt_exists: 5"), "{stderr}");
    assert_eq!(hunt(at.control, 5).as_ref(), Some(&before), "nothing played into hunt 5");
    assert_eq!(hunt(at.control, 0).expect("created")["players"], 0, "no player joined, nothing played");

    // The default range is free: the run goes ahead there, and names it.
    let (out, stderr) = bench(&at, &workload, &["--metrics", &control]);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("hunts 1000000000..=1000000019"), "{stderr}");
    assert!(hunt(at.control, 1_000_000_000).expect("the bench's hunt")["players"].as_u64().unwrap() > 0);
    // A single run prints its own figures, not the ramp's table of knees.
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("achieved") && stdout.contains("p99.9") && !stdout.contains("knee"), "{stdout}");
    assert_eq!(hunt(at.control, 5).as_ref(), Some(&before));

    // --force: it plays into the range, hunt 5 included.
    let (out, stderr) = bench(&at, &workload, &["--hunt-base", "0", "--force"]);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert_ne!(hunt(at.control, 5).as_ref(), Some(&before), "--force played into hunt 5");

    server.stop(Duration::from_secs(10));
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn the_range_flags_are_checked_before_anything_runs() {
    let dir = common::scratch_dir("bench-target-flags");
    let workload = small_workload(&dir);
    for (args, says) in [
        (&["--force"][..], "--force plays into a --target's existing hunts"),
        (&["--hunt-base", "4294967290"][..], "--hunt-base 4294967290: the workload's 20 hunts would pass"),
    ] {
        let mut all = vec!["bench", "--workload", &workload, "--rate", "1000", "--duration", "0.2"];
        all.extend_from_slice(args);
        let out = trove(&all);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
    std::fs::remove_dir_all(&dir).ok();
}
