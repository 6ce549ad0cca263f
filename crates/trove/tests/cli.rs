//! The `trove` command line, run as a user would.

mod common;

use std::process::{Command, Output};

fn trove(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_trove")).args(args).output().expect("trove runs")
}

fn json(out: &Output) -> serde_json::Value {
    assert!(out.status.success(), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("one JSON object")
}

#[test]
fn bench_apply_json_is_deterministic() {
    let dir = common::scratch_dir("cli");
    let file = common::workload_file(&dir, "small.toml", &[("hunts = 1000", "hunts = 50")]);
    let file = file.to_str().unwrap();

    let a = json(&trove(&["bench", "apply", "--events", "300000", "--workload", file, "--json"]));
    let b = json(&trove(&["bench", "apply", "--events", "300000", "--workload", file, "--json", "--batch", "7"]));
    for key in ["workload", "events", "seconds", "events_per_s", "state_hash"] {
        assert!(a.get(key).is_some(), "missing {key} in {a}");
    }
    assert_eq!(a["workload"], "standard");
    assert_eq!(a["events"], 300_000);
    assert!(a["events_per_s"].as_f64().unwrap() > 0.0);
    assert_eq!(a["state_hash"].as_str().unwrap().len(), 16);
    // Same seed, other batch size: same state.
    assert_eq!(a["state_hash"], b["state_hash"]);
    // Other event count: other state.
    let c = json(&trove(&["bench", "apply", "--events", "300001", "--workload", file, "--json"]));
    assert_ne!(a["state_hash"], c["state_hash"]);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn bad_workload_is_a_clear_error() {
    let dir = common::scratch_dir("cli-bad");
    let file = common::workload_file(&dir, "bad.toml", &[("map_width = 256", "map_width = 9999")]);
    let out = trove(&["bench", "apply", "--workload", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("width") && stderr.contains("9999"), "{stderr}");

    let out = trove(&["bench", "apply", "--workload", "/no/such/file.toml"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/no/such/file.toml"));

    let out = trove(&["bench", "apply", "--events", "0"]);
    assert!(!out.status.success());
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn bench_engine_json_has_the_fields_and_every_mode_agrees() {
    let dir = common::scratch_dir("cli-engine");
    let edits = [("hunts = 1000", "hunts = 20"), ("players_per_hunt = 1000", "players_per_hunt = 100")];
    let file = common::workload_file(&dir, "small.toml", &edits);
    let file = file.to_str().unwrap();
    let run = |mode: &str, shards: &str| {
        json(&trove(&[
            "bench",
            "engine",
            "--mode",
            mode,
            "--shards",
            shards,
            "--producers",
            "2",
            "--events",
            "20000",
            "--batch",
            "500",
            "--workload",
            file,
            "--json",
        ]))
    };
    let sharded = run("sharded", "2");
    for key in ["mode", "events", "seconds", "events_per_s", "state_hash"] {
        assert!(sharded.get(key).is_some(), "missing {key} in {sharded}");
    }
    for key in ["p50", "p99", "p999", "max"] {
        assert!(sharded["latency_us"][key].as_u64().is_some(), "missing latency_us.{key} in {sharded}");
    }
    assert_eq!(sharded["mode"], "sharded");
    assert_eq!(sharded["events"], 20_000);
    for (mode, shards) in
        [("sharded", "1"), ("sharded", "4"), ("task-per-event", "2"), ("spawn-blocking-per-event", "2")]
    {
        let other = run(mode, shards);
        assert_eq!(other["mode"], mode);
        assert_eq!(other["state_hash"], sharded["state_hash"], "{mode} with {shards} shards");
    }
    let out = trove(&["bench", "engine", "--mode", "threads"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown mode `threads`"));
    std::fs::remove_dir_all(&dir).ok();
}

/// `--pairs N`: N interleaved pairs of the same run in memory and
/// journaled, each journaled run in a fresh directory under --data that is
/// gone afterwards; each pair's ratio is its two rates', and the journaled
/// runs hold the same events (same state hash) as the in-memory ones.
#[test]
fn bench_engine_pairs_report_each_ratio_and_the_median() {
    let dir = common::scratch_dir("cli-pairs");
    let edits = [("hunts = 1000", "hunts = 20"), ("players_per_hunt = 1000", "players_per_hunt = 100")];
    let file = common::workload_file(&dir, "small.toml", &edits);
    let data = dir.join("data");
    let run = |pairs: &str, extra: &[&str]| {
        let (file, data) = (file.to_str().unwrap(), data.to_str().unwrap());
        let mut args = vec!["bench", "engine", "--events", "20000", "--batch", "500", "--fsync", "always"];
        args.extend(["--pairs", pairs, "--workload", file, "--data", data]);
        args.extend(extra);
        trove(&args)
    };
    let out = run("3", &[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("journaled over none, pairwise: median"));
    let report = json(&run("3", &["--json"]));
    assert_eq!(report["journal"], "always");
    let pairs = report["pairs"].as_array().expect("pairs");
    assert_eq!(pairs.len(), 3);
    let mut ratios = Vec::new();
    for p in pairs {
        assert_eq!(p["none"]["journal"], "none");
        assert_eq!(p["journaled"]["journal"], "always");
        assert_eq!(p["none"]["state_hash"], p["journaled"]["state_hash"]);
        let (a, b) = (p["none_events_per_s"].as_f64().unwrap(), p["journaled_events_per_s"].as_f64().unwrap());
        assert_eq!(a, p["none"]["events_per_s"].as_f64().unwrap());
        assert_eq!(b, p["journaled"]["events_per_s"].as_f64().unwrap());
        let ratio = p["ratio"].as_f64().unwrap();
        assert!((ratio - b / a).abs() < 1e-9, "{p}");
        ratios.push(ratio);
    }
    ratios.sort_by(f64::total_cmp);
    assert_eq!(report["ratio_median"].as_f64().unwrap(), ratios[1]);
    assert_eq!(report["ratio_min"].as_f64().unwrap(), ratios[0]);
    assert_eq!(report["ratio_max"].as_f64().unwrap(), ratios[2]);
    // The pairs' directories are gone; --data itself is left.
    assert_eq!(std::fs::read_dir(&data).expect("--data").count(), 0);

    // Without --data there is nowhere to journal; a directory it did not
    // make is never reused.
    let out = trove(&["bench", "engine", "--pairs", "2"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("--pairs needs --data"));
    std::fs::create_dir_all(data.join("pair-1")).unwrap();
    let out = run("1", &[]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("pair-1 exists"));
    let out = trove(&["bench", "net", "--pairs", "1", "--fsync", "none"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("--pairs compares none with a journal"));
    std::fs::remove_dir_all(&dir).ok();
}

/// `trove`'s allocator asks for transparent huge pages for its regions
/// (MADV_HUGEPAGE: the `hg` flag in /proc/PID/smaps), unless
/// MIMALLOC_ALLOW_THP=0, which also turns THP off for the process
/// (PR_SET_THP_DISABLE: `THP_enabled: 0` in /proc/PID/status).
///
/// The advice is taken whatever the system-wide mode (`always`, `madvise`
/// or `never`), so this is checked on every kernel built with THP. On a
/// kernel without THP there is nothing to check: the test fails rather
/// than pass silently, unless TROVE_TEST_SKIP_THP=1 says to skip it.
#[cfg(target_os = "linux")]
#[test]
fn the_heap_asks_for_huge_pages_unless_told_not_to() {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;

    if !std::path::Path::new("/sys/kernel/mm/transparent_hugepage/enabled").exists() {
        if std::env::var_os("TROVE_TEST_SKIP_THP").is_some_and(|v| v == "1") {
            eprintln!("SKIPPED: this kernel has no transparent huge pages (TROVE_TEST_SKIP_THP=1)");
            return;
        }
        panic!("this kernel has no transparent huge pages: set TROVE_TEST_SKIP_THP=1 to skip this test");
    }
    for (opt_out, want) in [(None, true), (Some("0"), false)] {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_trove"));
        cmd.args(["serve", "--no-journal", "--tcp", "127.0.0.1:0", "--ws", "off", "--control", "off"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        match opt_out {
            Some(v) => cmd.env("MIMALLOC_ALLOW_THP", v),
            None => cmd.env_remove("MIMALLOC_ALLOW_THP"),
        };
        let mut child = cmd.spawn().expect("trove serve starts");
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        // Listening: the engine's state is allocated.
        assert!(lines.by_ref().map_while(Result::ok).any(|l| l.contains("protocol v1 on tcp://")));
        let smaps = std::fs::read_to_string(format!("/proc/{}/smaps", child.id())).expect("smaps");
        let status = std::fs::read_to_string(format!("/proc/{}/status", child.id())).expect("status");
        let advised = smaps
            .lines()
            .filter_map(|l| l.strip_prefix("VmFlags:"))
            .any(|flags| flags.split_whitespace().any(|f| f == "hg"));
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(advised, want, "MIMALLOC_ALLOW_THP={opt_out:?}");
        let thp = status.lines().find_map(|l| l.strip_prefix("THP_enabled:")).map(str::trim);
        if let Some(thp) = thp {
            // Kernels since 5.0 report it.
            assert_eq!(thp, if want { "1" } else { "0" }, "THP_enabled, MIMALLOC_ALLOW_THP={opt_out:?}");
        }
    }
}

#[test]
fn serve_refuses_a_tls_file_it_cannot_use_naming_it_before_touching_anything() {
    let dir = std::env::temp_dir().join(format!("trove-cli-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let not_pem = dir.join("not-a-cert.pem");
    std::fs::write(&not_pem, "hello").unwrap();
    let data = dir.join("data");
    let (cert, key) = (not_pem.to_str().unwrap(), dir.join("missing-key.pem"));
    let data_arg = data.to_str().unwrap();
    let out = trove(&["serve", "--tls-cert", cert, "--tls-key", key.to_str().unwrap(), "--data", data_arg]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    // The first file that fails is named, with what it was for.
    assert!(stderr.contains("TLS certificate") && stderr.contains("not-a-cert.pem"), "{stderr}");
    assert!(!data.exists(), "the data directory is not created");
    // One without the other is a usage error.
    let out = trove(&["serve", "--tls-cert", cert, "--data", data_arg]);
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn serve_refuses_websocket_runtime_settings_out_of_range() {
    let dir = std::env::temp_dir().join(format!("trove-cli-ws-io-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let any = ["--tcp", "127.0.0.1:0", "--ws", "127.0.0.1:0", "--control", "off"];
    // On the command line: a usage error naming the flag.
    for (flag, value) in [("--ws-io-nice", "20"), ("--ws-io-workers", "0")] {
        let out = trove(&[&["serve"][..], &any, &[flag, value]].concat());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{flag} {value}: {stderr}");
        assert!(stderr.contains(flag), "{flag} {value}: {stderr}");
    }
    // In the config file: the setting and its range.
    for (key, value, says) in [
        ("ws_io_nice", "20", "ws_io_nice must be in 0..=19"),
        ("ws_io_workers", "0", "ws_io_workers must be in 1..=256"),
    ] {
        let config = dir.join(format!("{key}.toml"));
        std::fs::write(&config, format!("[listen]\n{key} = {value}\n")).unwrap();
        let out = trove(&[&["serve"][..], &any, &["--config", config.to_str().unwrap()]].concat());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{key} = {value} was accepted");
        assert!(stderr.contains(says), "{key} = {value}: {stderr}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
