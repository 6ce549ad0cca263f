//! `trove journal verify`: what it reports and its exit statuses (0 clean,
//! 1 damage found, 2 nothing checked), on a real engine's journal.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use trove_core::Stamped;
use trove_hunt::{HuntEvent, TreasureHunt};
use trove_shard::{Engine, EngineConfig, FsyncPolicy, JournalConfig, WriteIo};

fn verify(dir: &Path, json: bool) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_trove"));
    cmd.args(["journal", "verify", "--data"]).arg(dir);
    if json {
        cmd.arg("--json");
    }
    cmd.output().expect("trove runs")
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let path = e.unwrap().path();
        let target = to.join(path.file_name().unwrap());
        if path.is_dir() { copy_dir(&path, &target) } else { std::fs::copy(&path, &target).map(drop).unwrap() }
    }
}

/// A journal of three acknowledged batches (three frames) in one segment,
/// as a crash would leave it (no final snapshot); returns its directory,
/// its segment and the offset of its last frame.
fn journal(name: &str) -> (PathBuf, PathBuf, usize) {
    let dir = std::env::temp_dir().join(format!("trove-verify-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let running = PathBuf::from(format!("{}-running", dir.display()));
    let _ = std::fs::remove_dir_all(&running);
    let mut journal = JournalConfig::new(&running, FsyncPolicy::Always);
    (journal.io, journal.snapshot_interval) = (WriteIo::Buffered, None);
    let engine = Engine::<TreasureHunt>::start(EngineConfig {
        shards: 1,
        journal: Some(journal),
        // Submits below expect no BUSY, however loaded the machine.
        queue_wait_max: Duration::from_secs(60),
        ..Default::default()
    })
    .unwrap();
    let mut p = engine.producer();
    for b in 0..3u32 {
        let mut batch: Vec<_> = (0..5).map(|i| Stamped { time_us: 0, event: HuntEvent::dig(b, i) }).collect();
        p.submit(&mut batch).unwrap();
        p.complete_timeout(Duration::from_secs(60)).expect("acknowledged");
    }
    copy_dir(&running, &dir);
    engine.shutdown();
    let _ = std::fs::remove_dir_all(&running);
    let segment = trove_journal::segment::list_segments(&dir.join("shard-000")).unwrap().pop().unwrap();
    let bytes = std::fs::read(&segment).unwrap();
    let mut offsets = Vec::new();
    trove_journal::segment::scan::<HuntEvent, ()>(&bytes, |at, _| {
        offsets.push(at as usize);
        Ok(())
    })
    .unwrap();
    assert_eq!(offsets.len(), 3);
    (dir, segment, offsets[2])
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn json(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", stdout(out)))
}

#[test]
fn verify_reports_damage_by_kind_with_distinct_exit_statuses() {
    let (dir, segment, last) = journal("kinds");
    let good = std::fs::read(&segment).unwrap();

    // Clean: 0.
    let out = verify(&dir, false);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    assert!(stdout(&out).contains("15 events") && stdout(&out).ends_with("ok\n"), "{}", stdout(&out));
    let j = json(&verify(&dir, true));
    assert_eq!((j["status"].as_str(), j["ok"].as_bool(), j["torn_tails"].as_u64()), (Some("ok"), Some(true), Some(0)));

    // A write cut short in the last frame: a torn tail, 1.
    std::fs::write(&segment, &good[..good.len() - 3]).unwrap();
    let out = verify(&dir, false);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert!(stdout(&out).contains("torn tails: 1") && !stdout(&out).contains("damaged last"), "{}", stdout(&out));
    let j = json(&verify(&dir, true));
    assert_eq!(
        (j["status"].as_str(), j["torn_tails"].as_u64(), j["damaged_last_frames"].as_u64()),
        (Some("damaged"), Some(1), Some(0))
    );

    // A flipped bit in the whole last frame: cannot be told from a torn
    // write, and says so; 1.
    let mut flipped = good.clone();
    flipped[last + 16 + 8] ^= 0x01;
    std::fs::write(&segment, &flipped).unwrap();
    let out = verify(&dir, false);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert!(
        stdout(&out)
            .contains("damaged last frames: 1 (a frame's checksum fails and nothing after it was written after a sync"),
        "{}",
        stdout(&out)
    );
    assert!(!stdout(&out).contains("torn tails:"), "{}", stdout(&out));
    let j = json(&verify(&dir, true));
    assert_eq!((j["torn_tails"].as_u64(), j["damaged_last_frames"].as_u64()), (Some(0), Some(1)));

    // A flipped bit in the middle: corruption start-up refuses; 1, naming
    // the file.
    let mut middle = good.clone();
    middle[last - 4] ^= 0x01;
    std::fs::write(&segment, &middle).unwrap();
    let out = verify(&dir, false);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert!(stdout(&out).contains("damaged:") && stdout(&out).contains("segment-"), "{}", stdout(&out));
    assert_eq!(json(&verify(&dir, true))["status"].as_str(), Some("damaged"));
    assert_eq!(std::fs::read(&segment).unwrap(), middle, "verify changes nothing");

    // Nothing to check: 2, for a missing journal and a usage error alike.
    let missing = dir.join("no-such-dir");
    let out = verify(&missing, false);
    assert_eq!(out.status.code(), Some(2), "{}", stdout(&out));
    assert_eq!(json(&verify(&missing, true))["status"].as_str(), Some("unchecked"));
    let out = Command::new(env!("CARGO_BIN_EXE_trove")).args(["journal", "verify", "--no-such-flag"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    std::fs::remove_dir_all(&dir).ok();
}
