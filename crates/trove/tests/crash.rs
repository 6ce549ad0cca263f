//! Durability under `kill -9`: a real engine process journals a workload,
//! snapshotting every 40 ms, and logs every acknowledgement it receives; it
//! is killed with SIGKILL at random points (mid-batch, mid-sync,
//! mid-snapshot, mid-segment-removal) and restarted, again and again.
//! Afterwards every acknowledged event must be durable: in its shard's
//! journal segments, or covered by its shard's snapshot (the snapshot's
//! last sequence of that producer is at or past it). The state a restarted
//! engine recovers must hash like an offline replay.
//!
//! Each cycle waits (with a generous deadline) until the run has
//! acknowledged something, then kills it a random moment later, so what is
//! checked does not depend on the machine's speed: whatever was
//! acknowledged survives, nothing is journaled twice, and at least one
//! cycle was killed while acknowledging.
//!
//! 20 cycles by default; `TROVE_CRASH_CYCLES=200 cargo test --test crash`
//! for more.

mod common;

use std::collections::HashSet;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use std::collections::HashMap;

use trove_core::SplitMix64;
use trove_hunt::{HuntEvent, TreasureHunt};
use trove_journal::snapshot::{decode_snapshot, list_snapshots};
use trove_journal::{RecoverOptions, recover_shard, shard_dir};
use trove_shard::sharded::shard_of;
use trove_shard::{ClockMode, Engine, EngineConfig, FsyncPolicy, JournalConfig};
use trove_workload::{Generator, WorkloadSpec};

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

/// Per shard: the (producer, sequence) pairs in its segments, and its
/// snapshot's last sequence per producer.
fn durable(data: &Path) -> Vec<(HashSet<(u64, u64)>, HashMap<u64, u64>)> {
    (0..SHARDS)
        .map(|shard| {
            let (snapshots, _) = list_snapshots(&shard_dir(data, shard)).unwrap();
            let (next_batch, covered) = snapshots.last().map_or_else(
                || (0, HashMap::new()),
                |path| {
                    let bytes = std::fs::read(path).unwrap();
                    let s = decode_snapshot(&bytes).expect("snapshots are never torn");
                    (s.meta.next_batch, s.producers.into_iter().map(|p| (p.id, p.last_seq)).collect())
                },
            );
            (journaled(data, shard, next_batch), covered)
        })
        .collect()
}

/// The (producer, sequence) pairs of the journal after the snapshot's
/// batch. Each is there once: a pair journaled twice would be applied twice
/// by every recovery.
fn journaled(data: &Path, shard: usize, skip_below: u64) -> HashSet<(u64, u64)> {
    let mut set = HashSet::new();
    let mut twice = Vec::new();
    {
        let opts = RecoverOptions { truncate_torn_tail: false, repair: false, segment_bytes_max: 1 << 30, skip_below };
        recover_shard::<HuntEvent>(&shard_dir(data, shard), shard as u32, opts, |_, entries| {
            for e in entries {
                if !set.insert((e.producer, e.producer_seq)) {
                    twice.push((e.producer, e.producer_seq));
                }
            }
        })
        .expect("the journal reads back (a torn tail is not an error)");
    }
    assert!(twice.is_empty(), "shard {shard} journals events twice: {:?}", &twice[..twice.len().min(5)]);
    set
}

/// Lines in the ack log so far (the log only grows).
fn ack_lines(log: &Path) -> usize {
    std::fs::read_to_string(log).map_or(0, |t| t.lines().count())
}

#[test]
fn acknowledged_events_survive_sigkill() {
    let cycles: u64 = std::env::var("TROVE_CRASH_CYCLES").ok().and_then(|c| c.parse().ok()).unwrap_or(20);
    let dir = common::scratch_dir("crash");
    let data = dir.join("data");
    let acks = dir.join("acks.log");
    let edits = [("hunts = 1000", "hunts = 16"), ("players_per_hunt = 1000", "players_per_hunt = 200")];
    let workload = common::workload_file(&dir, "small.toml", &edits);

    let spec = WorkloadSpec::from_toml(&std::fs::read_to_string(&workload).unwrap()).unwrap();

    let mut rng = SplitMix64::new(0xC0FFEE);
    // Runs killed after they had acknowledged something in this cycle.
    let mut killed_mid_load = 0;
    for cycle in 0..cycles {
        let lines_before = ack_lines(&acks);
        // `group`, the default, first and most often.
        let fsync = ["group", "always", "group", "interval=5", "never"][(cycle % 5) as usize];
        let mut child = Command::new(env!("CARGO_BIN_EXE_trove"))
            .args(["bench", "engine", "--shards", "2", "--events", "3000000", "--batch", "512", "--window", "8"])
            .args(["--clock", "wall", "--fsync", fsync, "--snapshot-ms", "40"])
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
        // Recovery and setup first, at whatever speed the machine has:
        // the run is under load once it acknowledges. Then a random moment.
        let deadline = Instant::now() + Duration::from_secs(180);
        while ack_lines(&acks) == lines_before && child.try_wait().unwrap().is_none() {
            assert!(Instant::now() < deadline, "cycle {cycle}: nothing acknowledged within 180 s");
            std::thread::sleep(Duration::from_millis(5));
        }
        std::thread::sleep(Duration::from_millis(u64::from(rng.below(600))));
        if child.try_wait().unwrap().is_none() {
            child.kill().expect("SIGKILL");
            killed_mid_load += u32::from(ack_lines(&acks) > lines_before);
        }
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains("corrupt"), "cycle {cycle}: {stderr}");
    }
    assert!(killed_mid_load > 0, "no run of {cycles} was killed while acknowledging: nothing was tested");

    let acked = acked(&acks);
    assert!(!acked.is_empty(), "nothing was acknowledged");
    eprintln!("{killed_mid_load} of {cycles} runs killed mid-load; {} events acknowledged", acked.len());
    // Every run offers the same event stream (one producer, the whole
    // workload), so sequence s is the s-th event of it, and its hunt names
    // the shard that applied it.
    let mut generator = Generator::new(&spec);
    let mut hunts: Vec<u32> = generator.setup().iter().map(|e| e.hunt).collect();
    let seq_max = acked.iter().map(|&(_, s)| s).max().unwrap();
    while (hunts.len() as u64) < seq_max {
        hunts.push(generator.next_event().hunt);
    }
    let durable = durable(&data);
    // Nothing is applied twice by a recovery: no event journaled after a
    // snapshot is one the snapshot already holds.
    for (shard, (segments, snapshot)) in durable.iter().enumerate() {
        for &(producer, seq) in segments {
            let last = snapshot.get(&producer).copied().unwrap_or(0);
            assert!(seq > last, "shard {shard}: ({producer}, {seq}) is journaled after a snapshot that holds it");
        }
    }
    let mut by_snapshot = 0;
    let mut lost = Vec::new();
    for &(producer, seq) in &acked {
        let (segments, snapshot) = &durable[shard_of(hunts[seq as usize - 1], SHARDS)];
        if segments.contains(&(producer, seq)) {
            continue;
        }
        if snapshot.get(&producer).is_some_and(|&last| last >= seq) {
            by_snapshot += 1;
            continue;
        }
        lost.push((producer, seq));
    }
    assert!(lost.is_empty(), "acknowledged but not durable: {:?} ({} acked)", &lost[..lost.len().min(5)], acked.len());
    assert!(by_snapshot > 0, "no acknowledged event was covered by a snapshot: snapshots untested");

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
    assert_eq!(recovered.events_applied, 0, "recovery applies the journal; nothing new was submitted");
    std::fs::remove_dir_all(&dir).ok();
}
