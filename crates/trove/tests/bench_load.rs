//! `trove bench` (the open-loop load generator) run as a user would: it
//! starts real `trove serve` children, drives them over TCP and writes its
//! JSON and report. Rates are small: these check behaviour, not speed.

mod common;

use common::{ok, read_json, trove};

fn small_workload(dir: &std::path::Path) -> String {
    let edits = [("hunts = 1000", "hunts = 40"), ("players_per_hunt = 1000", "players_per_hunt = 50")];
    common::workload_file(dir, "small.toml", &edits).to_str().unwrap().to_string()
}

#[test]
fn a_single_run_reports_every_figure() {
    let dir = common::scratch_dir("bench-load-single");
    let workload = small_workload(&dir);
    let json = dir.join("run.json");
    let out = trove(&[
        "bench",
        "--workload",
        &workload,
        "--rate",
        "20000",
        "--duration",
        "1",
        "--connections",
        "4",
        "--watch",
        "4",
        // Behaviour, not speed: a loaded test machine must not fail the step.
        "--slo-ms",
        "60000",
        "--json",
        json.to_str().unwrap(),
    ]);
    ok(&out);
    let v = read_json(&json);
    for key in [
        "mode",
        "workload",
        "offered_events_per_s",
        "achieved_events_per_s",
        "events_sent",
        "events_acked",
        "latency_us",
        "update_latency_us",
        "pacer_stall_max_us",
        "pacer_stalls",
        "server",
    ] {
        assert!(v.get(key).is_some(), "missing {key} in {v}");
    }
    for key in ["p50", "p99", "p999", "max"] {
        assert!(v["latency_us"][key].as_u64().is_some(), "latency_us.{key} in {v}");
    }
    assert_eq!(v["mode"], "sharded");
    assert_eq!(v["offered_events_per_s"], 20_000.0);
    // The schedule offers a second's worth of arrivals whatever the
    // machine's speed; every one is sent and acknowledged (how fast is the
    // machine's business: a loaded one may fall behind in the window).
    let offered = v["events_offered"].as_u64().unwrap();
    assert!((19_000..=21_000).contains(&offered), "{v}");
    assert_eq!(v["events_acked"].as_u64().unwrap(), offered, "{v}");
    assert_eq!(v["events_refused"].as_u64().unwrap(), 0, "{v}");
    assert!(v["achieved_events_per_s"].as_f64().unwrap() > 0.0, "{v}");
    let lat = &v["latency_us"];
    assert!(lat["p50"].as_u64() <= lat["p99"].as_u64() && lat["p99"].as_u64() <= lat["max"].as_u64(), "{v}");
    // The subscriber saw the watched hunts' events.
    assert!(v["updates_measured"].as_u64().unwrap() > 0, "{v}");
    // The server's side came from its /metrics.
    assert!(v["server"]["cpu_cores"].as_f64().unwrap() > 0.0, "{v}");
    assert!(v["server"]["batch_events_mean"].as_f64().unwrap() > 0.0, "{v}");
    // The server's stages over the step, in path order (the bench's
    // server runs in memory: no written, no synced; tests/control.rs
    // checks those with a journal), and where the p50 and the p99 went.
    let stages: Vec<&str> =
        v["server"]["stages"].as_array().expect("stages").iter().map(|s| s["stage"].as_str().unwrap()).collect();
    assert_eq!(stages, ["decoded", "admitted", "applied", "acknowledged"], "{v}");
    for s in v["server"]["stages"].as_array().unwrap() {
        assert!(s["events"].as_u64().unwrap() > 0, "{s}");
        assert!(s["p50_us"].as_f64().unwrap() <= s["p99_us"].as_f64().unwrap(), "{s}");
    }
    let breakdown = v["latency_breakdown"].as_array().expect("latency_breakdown");
    assert_eq!(breakdown.iter().map(|b| b["percentile"].as_str().unwrap()).collect::<Vec<_>>(), ["p50", "p99"]);
    for b in breakdown {
        assert_eq!(b["stages"].as_array().unwrap().len(), 4, "{b}");
        assert!(b["server_us"].as_f64().unwrap() > 0.0, "{b}");
        assert!(b["rest_us"].as_f64().unwrap() >= 0.0, "{b}");
        assert!(b["client_us"].as_u64().is_some() && b["send_lag_us"].as_u64().is_some(), "{b}");
    }
    step_verdict_is_consistent(&v);

    // `--json -`: stdout is the JSON alone.
    let out = trove(&["bench", "--workload", &workload, "--rate", "5000", "--duration", "0.3", "--json", "-"]);
    ok(&out);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("stdout is one JSON document");
    assert_eq!(v["offered_events_per_s"], 5000.0);
    std::fs::remove_dir_all(&dir).ok();
}

/// A step passes exactly when nothing is given as a reason to fail, and at
/// these low rates the only admissible reason is the machine's speed: no
/// refusal, no failed connection, no backlog left behind.
fn step_verdict_is_consistent(step: &serde_json::Value) {
    let why = step["failed_because"].as_str();
    assert_eq!(step["passed"] == true, why.is_none(), "{step}");
    if let Some(why) = why {
        for bad in ["refused", "failed:", "not drained"] {
            assert!(!why.contains(bad), "a step failed for more than speed ({bad}): {step}");
        }
        eprintln!("note: a step fell behind on this machine (speed is not checked here): {why}");
    }
}

/// A ramp step holds its trials, each with its own figures, and the
/// judged latency is one of theirs (the median); a failing step names its
/// tail's cause.
fn trials_are_reported(step: &serde_json::Value, trials: usize) {
    let t = step["trials"].as_array().expect("trials");
    assert_eq!(t.len(), trials, "{step}");
    let mut p99s: Vec<u64> = t.iter().map(|t| t["latency_us"]["p99"].as_u64().expect("a trial's p99")).collect();
    p99s.sort_unstable();
    assert_eq!(step["latency_us"]["p99"].as_u64(), Some(p99s[trials / 2]), "{step}");
    assert!(step["latency_us"]["p50"].as_u64().is_some(), "{step}");
    for t in t {
        for key in ["achieved_events_per_s", "send_lag_us", "pacer_stall_max_us", "machine_stalls", "passed"] {
            assert!(t.get(key).is_some(), "missing {key} in a trial: {step}");
        }
        for key in ["max_us", "count", "lost_us"] {
            assert!(t["machine_stalls"][key].as_u64().is_some(), "machine_stalls.{key}: {step}");
        }
    }
    assert!(step["machine_stalls"]["max_us"].as_u64().is_some(), "{step}");
    assert_eq!(step["passed"] == false, step["tail_cause"].is_string(), "{step}");
}

#[test]
fn a_ramp_of_two_modes_finds_knees_and_writes_a_report() {
    let dir = common::scratch_dir("bench-load-ramp");
    let workload = small_workload(&dir);
    let json = dir.join("ramp.json");
    let report = dir.join("report");
    let out = trove(&[
        "bench",
        "--workload",
        &workload,
        "--modes",
        "sharded,task-per-event",
        "--ramp-from",
        "5000",
        "--ramp-max",
        "20000",
        // Three trials of 0.5 s per step, after a 0.5 s warm-up.
        "--step-seconds",
        "0.5",
        "--warmup",
        "0.5",
        // Behaviour, not speed: a loaded test machine must not fail a step.
        "--slo-ms",
        "60000",
        "--arrivals",
        "poisson",
        "--connections",
        "2",
        "--json",
        json.to_str().unwrap(),
        "--report",
        report.to_str().unwrap(),
    ]);
    ok(&out);
    let v = read_json(&json);
    let runs = v["runs"].as_array().expect("runs");
    assert_eq!(runs.len(), 2);
    for (run, mode) in runs.iter().zip(["sharded", "task-per-event"]) {
        assert_eq!(run["mode"], mode);
        assert_eq!(run["arrivals"], "poisson");
        let steps = run["steps"].as_array().unwrap();
        // Which steps run depends on which pass, which depends on the
        // machine's speed; what holds on any machine: steps are sorted,
        // within the ramp's bounds, every event is acknowledged, and the
        // knee is the highest passing step.
        assert!(!steps.is_empty(), "{run}");
        let offered: Vec<f64> = steps.iter().map(|s| s["offered_events_per_s"].as_f64().unwrap()).collect();
        assert!(offered.windows(2).all(|w| w[0] < w[1]), "{offered:?}");
        assert!(offered.iter().all(|&o| (1000.0..=20000.0).contains(&o)), "{offered:?}");
        for s in steps {
            assert_eq!(s["events_acked"], s["events_offered"], "{s}");
            step_verdict_is_consistent(s);
            trials_are_reported(s, 3);
            // Where its p50 and p99 went, from the median trial's scrapes.
            let b = s["latency_breakdown"].as_array().expect("latency_breakdown");
            assert_eq!(b.len(), 2, "{s}");
            assert!(b[1]["stages"].as_array().unwrap().iter().any(|x| x["stage"] == "applied"), "{s}");
        }
        // The rule is stated, and the warm-up reported apart from the steps.
        assert_eq!(run["trials_per_step"], 3, "{run}");
        assert!(run["judge"].as_str().unwrap().starts_with("median of 3 trials"), "{run}");
        let warmup = &run["warmup"];
        assert_eq!(warmup["offered_events_per_s"], 5000.0, "{run}");
        assert!(warmup["seconds"].as_f64().unwrap() > 0.0, "{run}");
        assert!(warmup["machine_stalls"]["max_us"].as_u64().is_some(), "{run}");
        let knee = steps.iter().rev().find(|s| s["passed"] == true);
        assert_eq!(
            run["knee_offered_events_per_s"],
            knee.map_or(serde_json::Value::Null, |s| s["offered_events_per_s"].clone())
        );
        if knee.is_none() {
            eprintln!("note: no step of {mode} kept up on this machine");
        }
    }
    assert_eq!(v["ratios"][0]["modes"], "sharded / task-per-event");
    for f in ["report.md", "achieved.svg", "p99.svg"] {
        assert!(report.join(f).is_file(), "{f} missing");
    }
    let md = std::fs::read_to_string(report.join("report.md")).unwrap();
    assert!(md.contains("task-per-event") && md.contains("knee"), "{md}");
    assert!(md.contains("Steps judged on: median of 3 trials") && md.contains("Warm-up (not counted)"), "{md}");
    assert!(md.contains("Where the latency goes, ms") && md.contains("| client+network |"), "{md}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("trove bench:   p99 ") && stderr.contains(" + client+network "), "{stderr}");
    assert!(stdout.contains("knee ratio sharded / task-per-event: "), "{stdout}");
    assert!(stdout.contains("sharded: each step judged on the median of 3 trials"), "{stdout}");
    // The warm-up's length as measured (0.5 s and a little).
    assert!(stdout.contains("sharded: warm-up 0.") && stdout.contains(" s at 5.00k/s (not counted)"), "{stdout}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn an_overload_step_reports_goodput_busy_answers_and_admitted_latency() {
    let dir = common::scratch_dir("bench-load-overload");
    let workload = small_workload(&dir);
    let json = dir.join("overload.json");
    let out = trove(&[
        "bench",
        "--workload",
        &workload,
        "--overload",
        "2",
        "--knee",
        "5000",
        "--duration",
        "0.5",
        "--connections",
        "2",
        "--slo-ms",
        "60000",
        "--json",
        json.to_str().unwrap(),
    ]);
    ok(&out);
    let v = read_json(&json);
    // A step at the knee given, then one at twice it.
    let steps = v["steps"].as_array().expect("steps");
    assert_eq!(steps.len(), 1, "{v}");
    assert_eq!(steps[0]["offered_events_per_s"], 5000.0, "{v}");
    let o = &v["overload"];
    assert_eq!(o["factor"], 2.0, "{v}");
    assert_eq!(o["knee_events_per_s"], 5000.0, "{v}");
    assert_eq!(o["offered_events_per_s"], 10000.0, "{v}");
    assert_eq!(o["step"]["offered_events_per_s"], 10000.0, "{v}");
    // Far below this server's capacity: everything is acknowledged.
    assert_eq!(o["step"]["events_acked"], o["step"]["events_offered"], "{v}");
    let goodput = o["goodput_events_per_s"].as_f64().unwrap();
    assert!(goodput > 0.0, "{v}");
    // Both came through JSON's shortest round-trip form: equal to within
    // the last digit, not bit for bit.
    let over = o["goodput_over_knee"].as_f64().unwrap();
    assert!((over - goodput / 5000.0).abs() <= 1e-9 * over.abs(), "{v}");
    assert!(o["busy_replies_per_s"].as_f64().is_some(), "the server's BUSY count comes from /metrics: {v}");
    let admitted = &o["step"]["admitted_latency_us"];
    assert!(admitted["p99"].as_u64() <= admitted["max"].as_u64(), "{v}");
    assert_eq!(o["admitted_p99_us"], admitted["p99"], "{v}");
    assert_eq!(o["holds"], o["goodput_over_knee"].as_f64().unwrap() >= 0.95, "{v}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("overload 2.0x the knee"), "{stdout}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn bad_flags_and_workloads_are_clear_errors() {
    let dir = common::scratch_dir("bench-load-bad");
    let bad = common::workload_file(&dir, "bad.toml", &[("step_max = 4", "step_max = 4\nstep_maxx = 1")]);
    let out = trove(&["bench", "--workload", bad.to_str().unwrap(), "--rate", "1000", "--duration", "0.2"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("step_maxx"), "{stderr}");

    for (args, says) in [
        (&["--modes", "sharded,warp-speed"][..], "warp-speed"),
        (&["--modes", "sharded,sharded"][..], "twice"),
        (&["--modes", "task-per-event", "--fsync", "always"][..], "without a journal"),
        (&["--rate", "0"][..], "--rate"),
        (&["--arrivals", "bursty"][..], "bursty"),
        (&["--target", "127.0.0.1:9", "--modes", "task-per-event"][..], "--target"),
        (&["--metrics", "127.0.0.1:9"][..], "--metrics"),
        (&["--ramp", "--ramp-factor", "1"][..], "--ramp-factor"),
        (&["--ramp", "--trials", "2"][..], "--trials must be odd"),
        (&["--ramp", "--trials", "99"][..], "--trials"),
        (&["--ramp", "--warmup=-1"][..], "--warmup"),
        (&["--slo-ms", "1e30"][..], "--slo-ms"),
        (&["--knee", "5000"][..], "--overload"),
        (&["--overload", "1"][..], "--overload"),
        (&["--overload", "2", "--knee", "0"][..], "--knee"),
    ] {
        let mut all = vec!["bench"];
        all.extend_from_slice(args);
        let out = trove(&all);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
    // Nothing listens there: a clear error, not a hang.
    let out = trove(&["bench", "--target", "127.0.0.1:9", "--rate", "1000", "--duration", "0.2"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("127.0.0.1:9"));
    std::fs::remove_dir_all(&dir).ok();
}
