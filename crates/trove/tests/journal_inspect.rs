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
