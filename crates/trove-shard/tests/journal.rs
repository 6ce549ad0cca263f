//! The journaled engine: acknowledgements only for what the journal holds,
//! restart rebuilds the same state, replay agrees with the engine.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use trove_core::Stamped;
use trove_hunt::{HuntEvent, TreasureHunt};
use trove_journal::{RecoverOptions, recover_shard, shard_dir};
use trove_shard::journaled::replay;
use trove_shard::{ClockMode, Engine, EngineConfig, FsyncPolicy, JournalConfig, SubmitError};
use trove_workload::{Clock, Generator, WorkloadSpec};

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("trove-engine-journal-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn config(dir: &Path, fsync: FsyncPolicy, shards: usize) -> EngineConfig {
    EngineConfig {
        shards,
        clock: ClockMode::Wall,
        journal: Some(JournalConfig { segment_bytes_max: 64 << 10, ..JournalConfig::new(dir, fsync) }),
        ..EngineConfig::default()
    }
}

fn spec() -> WorkloadSpec {
    WorkloadSpec {
        hunts: 8,
        players_per_hunt: 40,
        map_width: 32,
        map_height: 32,
        treasures_per_round: 30,
        ..WorkloadSpec::standard()
    }
}

fn events(seed_part: u32, n: usize) -> Vec<Stamped<HuntEvent>> {
    let mut g = Generator::partition(&spec(), seed_part, 2);
    let mut clock = Clock::new(1_000_000);
    let mut e = clock.stamp(g.setup());
    g.fill(&mut clock, n, &mut e);
    e
}

/// (producer, seq) of every journaled event, read from the files.
fn journaled(dir: &Path, shards: usize) -> HashSet<(u64, u64)> {
    let mut seen = HashSet::new();
    for i in 0..shards {
        let opts =
            RecoverOptions { truncate_torn_tail: false, repair: false, segment_bytes_max: 1 << 30, skip_below: 0 };
        recover_shard::<HuntEvent>(&shard_dir(dir, i), i as u32, opts, |_, entries| {
            seen.extend(entries.iter().map(|e| (e.producer, e.producer_seq)));
        })
        .unwrap();
    }
    seen
}

#[test]
fn every_acknowledged_event_is_in_the_journal_under_every_policy() {
    for (name, policy) in [
        ("always", FsyncPolicy::Always),
        ("interval", FsyncPolicy::Interval(Duration::from_millis(5))),
        ("never", FsyncPolicy::Never),
    ] {
        let dir = temp_dir(name);
        let engine = Engine::<TreasureHunt>::start(config(&dir, policy, 2)).unwrap();
        let mut p = engine.producer();
        let stream = events(0, 3000);
        let mut acked = Vec::new();
        for chunk in stream.chunks(200) {
            let first = p.next_seq();
            let mut batch = chunk.to_vec();
            while p.submit(&mut batch) == Err(SubmitError::Busy) {
                std::thread::yield_now();
            }
            let c = p.complete_timeout(Duration::from_secs(10)).expect("acknowledged");
            assert_eq!(c.outcomes.len(), chunk.len());
            acked.extend((first..first + chunk.len() as u64).map(|seq| (p.id(), seq)));
            // The moment it is acknowledged, the journal on disk holds it.
            let on_disk = journaled(&dir, 2);
            for a in &acked[acked.len() - chunk.len()..] {
                assert!(on_disk.contains(a), "{name}: acknowledged {a:?} is not in the journal");
            }
        }
        let m = engine.metrics();
        let synced: u64 = m.shards.iter().map(|s| s.fsyncs).sum();
        let bytes: u64 = m.shards.iter().map(|s| s.journal_bytes).sum();
        assert!(
            bytes > 3000 * 3,
            "{name}: {bytes} journal bytes (at least a packed record's head, hunt and player per event)"
        );
        match policy {
            FsyncPolicy::Never => assert_eq!(synced, 0, "never syncs while running"),
            _ => assert!(synced > 0, "{name}: no fdatasync"),
        }
        engine.shutdown();
        std::fs::remove_dir_all(&dir).ok();
    }
}

#[test]
fn restart_rebuilds_the_state_and_replay_agrees() {
    let dir = temp_dir("restart");
    let engine =
        Engine::<TreasureHunt>::start(config(&dir, FsyncPolicy::Interval(Duration::from_millis(2)), 2)).unwrap();
    let mut p = engine.producer();
    let first_producer = p.id();
    for chunk in events(0, 5000).chunks(333) {
        let mut batch = chunk.to_vec();
        p.submit(&mut batch).unwrap();
        p.complete_timeout(Duration::from_secs(10)).unwrap();
    }
    let first = engine.shutdown();
    assert!(first.events_applied > 5000);

    // Offline replay gives the running engine's hash.
    let replayed = replay::<TreasureHunt>(&dir, |_, _, _| {}).unwrap();
    assert_eq!(replayed.state_hash, first.state_hash);
    // The final snapshot holds everything, so nothing is left to replay.
    assert_eq!(replayed.world_hashes, first.world_hashes);

    // A restarted engine comes back with the same state and goes on.
    let mut lines = Vec::new();
    let engine =
        Engine::<TreasureHunt>::start_logged(config(&dir, FsyncPolicy::Always, 2), &mut |l| lines.push(l)).unwrap();
    assert!(lines.iter().any(|l| l.contains("loaded") || l.contains("replayed")), "{lines:?}");
    let auto = engine.producer();
    assert!(auto.id() > first_producer, "a new engine's producer ids continue past the journal's");
    let mut p = engine.producer_with_id(77, 1);
    let more = events(1, 2000);
    for chunk in more.chunks(500) {
        let mut batch = chunk.to_vec();
        p.submit(&mut batch).unwrap();
        p.complete_timeout(Duration::from_secs(10)).unwrap();
    }
    let second = engine.shutdown();
    assert_eq!(replay::<TreasureHunt>(&dir, |_, _, _| {}).unwrap().state_hash, second.state_hash);
    // The final snapshots record producer 77's last sequence.
    let last_77 = (0..2)
        .filter_map(|i| {
            let snap = files(&shard_dir(&dir, i), ".tsnap").pop()?;
            let bytes = std::fs::read(snap).unwrap();
            let s = trove_journal::snapshot::decode_snapshot(&bytes).unwrap();
            s.producers.iter().find(|(p, _)| *p == 77).map(|(_, seq)| *seq)
        })
        .max();
    assert_eq!(last_77, Some(more.len() as u64));

    // The shard count of a data directory cannot change.
    let err = Engine::<TreasureHunt>::start(config(&dir, FsyncPolicy::Always, 3)).unwrap_err();
    assert!(err.contains("shard count"), "{err}");
    std::fs::remove_dir_all(&dir).ok();
}

/// A data directory of format 1 (trimmed records) or 2 (no offset bitmaps)
/// is taken over and marked format 3 before anything new is written, so an
/// older engine refuses it by name; other settings are still refused.
#[test]
fn an_older_directory_is_marked_format_three_on_start() {
    let dir = temp_dir("meta");
    let meta = |format: u32| format!("format={format}\ngame=treasure-hunt\nrecord_size=32\nshards=2\n");
    for old in [1, 2] {
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("trove.meta"), meta(old)).unwrap();
        let engine = Engine::<TreasureHunt>::start(config(&dir, FsyncPolicy::Always, 2)).unwrap();
        assert_eq!(std::fs::read_to_string(dir.join("trove.meta")).unwrap(), meta(3));
        drop(engine.shutdown());
        if old == 1 {
            std::fs::remove_dir_all(&dir).unwrap();
        }
    }
    // Another shard count is still refused, whatever the format.
    let err = Engine::<TreasureHunt>::start(config(&dir, FsyncPolicy::Always, 3)).unwrap_err();
    assert!(err.contains("cannot change"), "{err}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn journal_requires_the_sharded_mode() {
    let dir = temp_dir("mode");
    let cfg = EngineConfig { mode: trove_shard::Mode::TaskPerEvent, ..config(&dir, FsyncPolicy::Always, 1) };
    assert!(Engine::<TreasureHunt>::start(cfg).unwrap_err().contains("sharded mode only"));
}

fn files(dir: &Path, suffix: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_str().unwrap().ends_with(suffix))
        .collect();
    v.sort();
    v
}

fn run_load(engine: &Engine<TreasureHunt>, part: u32, n: usize) {
    let mut p = engine.producer();
    for chunk in events(part, n).chunks(250) {
        let mut batch = chunk.to_vec();
        p.submit(&mut batch).unwrap();
        p.complete_timeout(Duration::from_secs(10)).unwrap();
    }
}

#[test]
fn snapshots_replace_old_segments_and_restarts_load_them() {
    let dir = temp_dir("snap");
    let mut cfg = config(&dir, FsyncPolicy::Interval(Duration::from_millis(2)), 2);
    cfg.journal.as_mut().unwrap().segment_bytes_max = 16 << 10;
    cfg.journal.as_mut().unwrap().snapshot_interval = Some(Duration::from_millis(20));
    let engine = Engine::<TreasureHunt>::start(cfg.clone()).unwrap();
    for round in 0..10 {
        run_load(&engine, 0, 1500);
        std::thread::sleep(Duration::from_millis(5 * (round % 3)));
    }
    assert!(engine.metrics().shards.iter().all(|s| s.snapshots > 0), "no snapshot taken");
    let first = engine.shutdown();

    let shard0 = shard_dir(&dir, 0);
    let snapshots = files(&shard0, ".tsnap");
    assert_eq!(snapshots.len(), 1, "older snapshots are removed: {snapshots:?}");
    // Every segment before the snapshot's batch is gone; the journal is
    // bounded by the snapshot interval, not by history.
    assert!(files(&shard0, ".tjl").len() <= 2, "{:?}", files(&shard0, ".tjl"));

    // Replay (snapshot + tail) and a restart agree with the running engine.
    assert_eq!(replay::<TreasureHunt>(&dir, |_, _, _| {}).unwrap().state_hash, first.state_hash);
    let mut lines = Vec::new();
    let engine = Engine::<TreasureHunt>::start_logged(cfg.clone(), &mut |l| lines.push(l)).unwrap();
    assert!(lines.iter().any(|l| l.contains("loaded") && l.contains(".tsnap")), "{lines:?}");
    run_load(&engine, 1, 1000);
    let second = engine.shutdown();
    assert_eq!(replay::<TreasureHunt>(&dir, |_, _, _| {}).unwrap().state_hash, second.state_hash);

    // A crash while a snapshot was being written leaves a temporary file:
    // it is removed and never read.
    let tmp = shard0.join("snapshot-99999999999999999999.tsnap.tmp");
    std::fs::write(&tmp, b"half a snapshot").unwrap();
    let mut lines = Vec::new();
    let engine = Engine::<TreasureHunt>::start_logged(cfg.clone(), &mut |l| lines.push(l)).unwrap();
    assert!(!tmp.exists());
    assert!(lines.iter().any(|l| l.contains("unfinished snapshot")), "{lines:?}");
    assert_eq!(engine.shutdown().state_hash, second.state_hash);

    // A damaged snapshot stops start-up, naming it.
    let snap = files(&shard0, ".tsnap").pop().unwrap();
    let mut bytes = std::fs::read(&snap).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 1;
    std::fs::write(&snap, &bytes).unwrap();
    let err = Engine::<TreasureHunt>::start(cfg).unwrap_err();
    assert!(err.contains("damaged") && err.contains(snap.file_name().unwrap().to_str().unwrap()), "{err}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn retried_events_get_their_original_outcomes_and_are_not_applied_twice() {
    for journaled in [false, true] {
        let dir = temp_dir(if journaled { "retry-journal" } else { "retry-memory" });
        let mut cfg = config(&dir, FsyncPolicy::Always, 2);
        cfg.clock = ClockMode::Supplied;
        if !journaled {
            cfg.journal = None;
        }
        let engine = Engine::<TreasureHunt>::start(cfg.clone()).unwrap();
        let stream = events(0, 3000);
        let mut p = engine.producer_with_id(5, 1);
        let mut batch = stream.clone();
        p.submit(&mut batch).unwrap();
        let original = p.complete_timeout(Duration::from_secs(10)).unwrap().outcomes;

        // The whole batch again, with its sequence numbers: same answers.
        let mut again = stream.clone();
        p.submit_at(1, &mut again).unwrap();
        let retried = p.complete_timeout(Duration::from_secs(10)).unwrap().outcomes;
        assert_eq!(retried, original, "journaled={journaled}");

        // Overlapping: the last 100 events again plus 50 new ones.
        let n = stream.len();
        let mut overlap = stream[n - 100..].to_vec();
        overlap.extend(events(1, 50).into_iter().take(50));
        p.submit_at(n as u64 - 99, &mut overlap).unwrap();
        let mixed = p.complete_timeout(Duration::from_secs(10)).unwrap().outcomes;
        assert_eq!(&mixed[..100], &original[n - 100..]);
        assert_eq!(p.next_seq(), n as u64 + 51);
        let end = engine.shutdown();
        // Every event applied once: the retries were answered, not applied.
        assert_eq!(end.events_applied, n as u64 + 50, "journaled={journaled}");
        let retries: u64 = end.metrics.shards.iter().map(|s| s.retries).sum();
        assert_eq!(retries, n as u64 + 100);

        if journaled {
            // After a restart the snapshot still knows the sequences: a retry
            // is not applied again (its outcome is no longer kept).
            let engine = Engine::<TreasureHunt>::start(cfg).unwrap();
            let mut p = engine.producer_with_id(5, 1);
            let mut again = stream[..10].to_vec();
            p.submit_at(1, &mut again).unwrap();
            let answers = p.complete_timeout(Duration::from_secs(10)).unwrap().outcomes;
            assert!(
                answers
                    .iter()
                    .all(|o| *o == trove_hunt::HuntOutcome::Rejected { reason: trove_hunt::Reject::Duplicate }),
                "{answers:?}"
            );
            assert_eq!(engine.shutdown().state_hash, end.state_hash, "the retry changed nothing");
        }
        std::fs::remove_dir_all(&dir).ok();
    }
}
