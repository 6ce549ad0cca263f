//! `trove journal inspect`, run as a user would, on a journal written by
//! an in-process engine: events with their outcomes as readable lines or
//! as JSON lines, `--limit`, and a `--hunt` with no events exits 1.

mod common;

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use trove_core::Stamped;
use trove_hunt::{Action, HuntEvent, TreasureHunt};
use trove_shard::{ClockMode, Engine, EngineConfig, FsyncPolicy, JournalConfig, SubmitError};

fn trove(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_trove")).args(args).output().expect("trove runs")
}

/// Journals, in one shard: hunt 1 created, player 4 joins, moves, digs and
/// scans, and an event for hunt 5, which does not exist; copies `data` to
/// `copy` while the engine runs.
fn write_journal(data: &Path, copy: &Path) {
    let config = EngineConfig {
        shards: 1,
        clock: ClockMode::Supplied,
        journal: Some(JournalConfig::new(data, FsyncPolicy::Always)),
        queue_wait_max: Duration::from_secs(60),
        ..EngineConfig::default()
    };
    let engine = Engine::<TreasureHunt>::start(config).unwrap();
    let mut producer = engine.producer();
    let actions = [
        (1, 0, Action::Create(common::hunt_config())),
        (1, 4, Action::Join),
        (1, 4, Action::Move { dx: 1, dy: -2 }),
        (1, 4, Action::Dig),
        (1, 4, Action::Scan),
        (5, 4, Action::Join),
    ];
    for (i, (hunt, player, action)) in actions.into_iter().enumerate() {
        let time_us = 1_000_000 + i as u64 * 250_000;
        let mut batch = vec![Stamped { time_us, event: HuntEvent { hunt, player, action } }];
        while producer.submit(&mut batch) == Err(SubmitError::Busy) {
            std::thread::yield_now();
        }
        producer.complete_timeout(Duration::from_secs(60)).expect("acknowledged");
    }
    // Every event is acknowledged, so synced: the copy holds them all, as
    // a crashed server's directory would. (A clean shutdown snapshots,
    // and the snapshot replaces the events it covers.)
    copy_journal(data, copy);
    engine.shutdown();
}

/// Copies a data directory's meta and shard files, not its lock.
fn copy_journal(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap();
        if path.is_dir() {
            copy_journal(&path, &to.join(name));
        } else if name != "trove.lock" {
            std::fs::copy(&path, to.join(name)).unwrap();
        }
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn inspect_prints_events_with_their_outcomes_as_text_and_as_json_lines() {
    let root = common::scratch_dir("journal-inspect");
    let (live, data) = (root.join("live"), root.join("data"));
    write_journal(&live, &data);
    let dir = data.to_str().unwrap();

    let out = trove(&["journal", "inspect", "--data", dir]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 6, "one line per event:\n{stdout}");
    assert!(lines[0].contains("t=1.000000s") && lines[0].contains("hunt 1 create 64x64"), "{}", lines[0]);
    assert!(lines[0].contains(" (durable below "), "the frame's sync mark: {}", lines[0]);
    assert!(lines[0].contains("-> created, round "), "{}", lines[0]);
    assert!(lines[1].contains("hunt 1 player 4 join -> joined at ("), "{}", lines[1]);
    assert!(lines[2].contains("move +1 -2 -> now at ("), "{}", lines[2]);
    assert!(lines[3].contains(" dig -> found"), "{}", lines[3]);
    assert!(lines[4].contains(" scan -> "), "{}", lines[4]);
    assert!(lines[5].contains("hunt 5 player 4 join -> rejected: unknown_hunt"), "{}", lines[5]);
    // Not Rust's Debug form.
    assert!(!stdout.contains("Create(") && !stdout.contains("HuntConfig"), "{stdout}");

    let out = trove(&["journal", "inspect", "--data", dir, "--json"]);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    let objects: Vec<serde_json::Value> =
        text(&out.stdout).lines().map(|l| serde_json::from_str(l).expect("each line one JSON object")).collect();
    assert_eq!(objects.len(), 6);
    let actions: Vec<&str> = objects.iter().map(|o| o["event"]["action"].as_str().unwrap()).collect();
    assert_eq!(actions, ["create", "join", "move", "dig", "scan", "join"]);
    assert_eq!(objects[0]["time_us"], 1_000_000);
    assert_eq!(objects[0]["shard"], 0);
    assert_eq!(objects[0]["outcome"]["outcome"], "created");
    assert_eq!(objects[1]["outcome"]["outcome"], "joined");
    assert_eq!(objects[2]["event"]["dy"], -2);
    assert_eq!(objects[5]["outcome"], serde_json::json!({"outcome": "rejected", "reason": "unknown_hunt"}));
    for o in &objects {
        for key in ["batch", "producer", "seq"] {
            assert!(o[key].is_u64(), "{key} in {o}");
        }
        // The frame's sync mark: at most its own batch.
        assert!(o["durable_below"].as_u64().is_some_and(|d| d <= o["batch"].as_u64().unwrap()), "{o}");
    }

    // One hunt, and a limit: the rest is counted on stderr.
    let out = trove(&["journal", "inspect", "--data", dir, "--hunt", "1", "--limit", "2"]);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    assert_eq!(text(&out.stdout).lines().count(), 2);
    assert!(text(&out.stderr).contains("printed the first 2 of 5 events"), "{}", text(&out.stderr));

    // A hunt with no events says so and fails.
    let out = trove(&["journal", "inspect", "--data", dir, "--hunt", "999"]);
    assert_eq!(out.status.code(), Some(1), "stderr: {}", text(&out.stderr));
    assert!(out.stdout.is_empty());
    assert!(text(&out.stderr).contains("hunt 999 has no events"), "{}", text(&out.stderr));
    let out = trove(&["journal", "inspect", "--data", dir, "--hunt", "999", "--json"]);
    assert_eq!(out.status.code(), Some(1), "stderr: {}", text(&out.stderr));

    // The other tools count one shard as "1 shard".
    let out = trove(&["journal", "verify", "--data", dir]);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    assert!(text(&out.stdout).contains(": 1 shard, 6 batches, 6 events,"), "{}", text(&out.stdout));
    let out = trove(&["replay", "--data", dir]);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    assert!(text(&out.stdout).contains("replayed 6 events in 6 batches from 1 shard in"), "{}", text(&out.stdout));

    // After the clean shutdown, the snapshot holds the state and no
    // event is journaled: said, not an error.
    let out = trove(&["journal", "inspect", "--data", live.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    assert!(out.stdout.is_empty());
    assert!(text(&out.stderr).contains("no journaled events since the latest snapshot"), "{}", text(&out.stderr));

    // No journal there: an error, not "no events".
    let out = trove(&["journal", "inspect", "--data", root.join("missing").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "stderr: {}", text(&out.stderr));
    std::fs::remove_dir_all(&root).ok();
}

/// Journals, in `shards` shards: `hunts` hunts created, then `rounds`
/// submits of one join per hunt (so every shard journals about `rounds`
/// batches); copies `data` to `copy` while the engine runs. Returns how
/// many events were journaled.
fn write_sharded_journal(data: &Path, copy: &Path, shards: usize, hunts: u32, rounds: u32) -> usize {
    let config = EngineConfig {
        shards,
        clock: ClockMode::Supplied,
        journal: Some(JournalConfig::new(data, FsyncPolicy::Group)),
        queue_wait_max: Duration::from_secs(60),
        ..EngineConfig::default()
    };
    let engine = Engine::<TreasureHunt>::start(config).unwrap();
    let mut producer = engine.producer();
    let mut events = 0;
    for round in 0..=rounds {
        let time_us = 1_000_000 + u64::from(round) * 1_000;
        let mut batch: Vec<_> = (1..=hunts)
            .map(|hunt| {
                let action = if round == 0 { Action::Create(common::hunt_config()) } else { Action::Join };
                Stamped { time_us, event: HuntEvent { hunt, player: round, action } }
            })
            .collect();
        events += batch.len();
        while producer.submit(&mut batch) == Err(SubmitError::Busy) {
            std::thread::yield_now();
        }
        producer.complete_timeout(Duration::from_secs(60)).expect("acknowledged");
    }
    copy_journal(data, copy);
    engine.shutdown();
    events
}

/// With several shards, the replay runs shard after shard: the lines come
/// shard 0 first, each shard's batches oldest first, the same on every run,
/// and `--limit N` prints the first N of them.
#[test]
fn inspect_prints_shard_by_shard_in_the_same_order_every_run() {
    let root = common::scratch_dir("journal-inspect-shards");
    let (live, data) = (root.join("live"), root.join("data"));
    let events = write_sharded_journal(&live, &data, 4, 16, 60);
    let dir = data.to_str().unwrap();

    let all = ["journal", "inspect", "--data", dir, "--limit", "1000000"];
    let out = trove(&all);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    let full = text(&out.stdout);
    let lines: Vec<&str> = full.lines().collect();
    assert_eq!(lines.len(), events, "one line per event");
    // `shard S batch B ...`: (S, B) never goes back.
    let keys: Vec<(u64, u64)> = lines
        .iter()
        .map(|l| {
            let w: Vec<&str> = l.split(' ').collect();
            assert_eq!((w[0], w[2]), ("shard", "batch"), "{l}");
            (w[1].parse().unwrap(), w[3].parse().unwrap())
        })
        .collect();
    assert!(keys.windows(2).all(|k| k[0] <= k[1]), "shard by shard, oldest first:\n{full}");
    let shards_seen: std::collections::BTreeSet<u64> = keys.iter().map(|k| k.0).collect();
    assert!(shards_seen.len() >= 2, "the hunts spread over several shards: {shards_seen:?}");

    for _ in 0..3 {
        let again = trove(&all);
        assert_eq!(again.status.code(), Some(0), "stderr: {}", text(&again.stderr));
        assert_eq!(text(&again.stdout), full, "the same lines in the same order on every run");
        let limited = trove(&["journal", "inspect", "--data", dir, "--limit", "25"]);
        assert_eq!(limited.status.code(), Some(0), "stderr: {}", text(&limited.stderr));
        assert_eq!(text(&limited.stdout).lines().collect::<Vec<_>>(), lines[..25], "--limit prints the first lines");
        assert!(text(&limited.stderr).contains(&format!("printed the first 25 of {events} events")));
    }
    std::fs::remove_dir_all(&root).ok();
}

/// `trove journal inspect | head`: the reader closing the pipe ends the
/// output quietly, exit 0, not a failed journal read.
#[test]
fn inspect_into_a_closed_pipe_stops_quietly() {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;

    let root = common::scratch_dir("journal-inspect-pipe");
    let (live, data) = (root.join("live"), root.join("data"));
    // Far more output than a pipe buffers (64 KiB on Linux), so the writer
    // meets the closed pipe.
    write_sharded_journal(&live, &data, 2, 16, 300);
    let mut child = Command::new(env!("CARGO_BIN_EXE_trove"))
        .args(["journal", "inspect", "--data", data.to_str().unwrap(), "--limit", "1000000"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("trove runs");
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    stdout.read_line(&mut first).unwrap();
    assert!(first.starts_with("shard 0 batch "), "{first}");
    drop(stdout);
    let out = child.wait_with_output().unwrap();
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "stderr: {stderr}");
    assert!(!stderr.contains("panicked") && !stderr.contains("error"), "{stderr}");
    std::fs::remove_dir_all(&root).ok();
}
