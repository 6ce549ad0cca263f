//! Durability under `kill -9`: a real engine process journals a workload
//! and logs every acknowledgement it receives; it is killed with SIGKILL at
//! random points and restarted, again and again. Afterwards every
//! acknowledged event must be in the journal, and the state the engine
//! recovers must hash like an offline replay of the journal.
//!
//! 20 cycles by default; `TROVE_CRASH_CYCLES=200 cargo test --test crash`
//! for more.

use std::collections::HashSet;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use trove_core::SplitMix64;
use trove_hunt::{HuntEvent, TreasureHunt};
use trove_journal::{RecoverOptions, recover_shard, shard_dir};
use trove_shard::{ClockMode, Engine, EngineConfig, FsyncPolicy, JournalConfig};

const SHARDS: usize = 2;

fn acked(log: &Path) -> HashSet<(u64, u64)> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let mut set = HashSet::new();
    for line in text.lines() {
        // The last line may be cut short by the kill.
        let f: Vec<u64> = line.split(' ').filter_map(|x| x.parse().ok()).collect();
        if let [producer, first, last] = f[..] {
            set.extend((first..=last).map(|seq| (producer, seq)));
        }
    }
    set
}

fn journaled(data: &Path) -> HashSet<(u64, u64)> {
    let mut set = HashSet::new();
    for shard in 0..SHARDS {
        let opts =
            RecoverOptions { truncate_torn_tail: false, repair: false, segment_bytes_max: 1 << 30, skip_below: 0 };
        recover_shard::<HuntEvent>(&shard_dir(data, shard), shard as u32, opts, |_, entries| {
            set.extend(entries.iter().map(|e| (e.producer, e.producer_seq)));
        })
        .expect("the journal reads back (a torn tail is not an error)");
    }
    set
}

#[test]
fn acknowledged_events_survive_sigkill() {
    let cycles: u64 = std::env::var("TROVE_CRASH_CYCLES").ok().and_then(|c| c.parse().ok()).unwrap_or(20);
    let dir = std::env::temp_dir().join(format!("trove-crash-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let data = dir.join("data");
    let acks = dir.join("acks.log");
    let workload = dir.join("small.toml");
    let standard = include_str!("../../../workloads/standard.toml");
    std::fs::write(
        &workload,
        standard.replace("hunts = 1000", "hunts = 16").replace("players_per_hunt = 1000", "players_per_hunt = 200"),
    )
    .unwrap();

    let mut rng = SplitMix64::new(0xC0FFEE);
    let mut killed = 0;
    for cycle in 0..cycles {
        let fsync = ["always", "interval=5", "never"][(cycle % 3) as usize];
        let mut child = Command::new(env!("CARGO_BIN_EXE_trove"))
            .args(["bench", "engine", "--shards", "2", "--events", "3000000", "--batch", "512", "--window", "8"])
            .args(["--clock", "wall", "--fsync", fsync])
            .arg("--data")
            .arg(&data)
            .arg("--ack-log")
            .arg(&acks)
            .arg("--workload")
            .arg(&workload)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("trove starts");
        std::thread::sleep(Duration::from_millis(150 + u64::from(rng.below(600))));
        if child.try_wait().unwrap().is_none() {
            child.kill().expect("SIGKILL");
            killed += 1;
        }
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains("corrupt"), "cycle {cycle}: {stderr}");
    }
    assert!(killed >= cycles * 3 / 4, "only {killed} of {cycles} runs were killed mid-way");

    let acked = acked(&acks);
    let journaled = journaled(&data);
    assert!(acked.len() > 10_000, "too few acknowledgements ({}) to prove anything", acked.len());
    let lost: Vec<_> = acked.difference(&journaled).take(5).collect();
    assert!(lost.is_empty(), "acknowledged but not journaled: {lost:?} ({} acked)", acked.len());

    // The state a restarted engine recovers equals an offline replay.
    let replay =
        Command::new(env!("CARGO_BIN_EXE_trove")).args(["replay", "--json", "--data"]).arg(&data).output().unwrap();
    assert!(replay.status.success(), "{}", String::from_utf8_lossy(&replay.stderr));
    let replayed: serde_json::Value = serde_json::from_slice(&replay.stdout).unwrap();
    let config = EngineConfig {
        shards: SHARDS,
        clock: ClockMode::Wall,
        journal: Some(JournalConfig::new(&data, FsyncPolicy::Always)),
        ..EngineConfig::default()
    };
    let engine = Engine::<TreasureHunt>::start_logged(config, &mut |_| {}).unwrap();
    let recovered = engine.shutdown();
    assert_eq!(replayed["state_hash"].as_str().unwrap(), format!("{:016x}", recovered.state_hash));
    assert!(replayed["events"].as_u64().unwrap() as usize >= journaled.len());
    assert_eq!(recovered.events_applied, 0, "recovery applies the journal; nothing new was submitted");
    std::fs::remove_dir_all(&dir).ok();
}
