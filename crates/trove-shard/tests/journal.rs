//! The journaled engine: acknowledgements only for what the journal holds,
//! restart rebuilds the same state, replay agrees with the engine.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use trove_core::Stamped;
use trove_hunt::{HuntEvent, TreasureHunt};
use trove_journal::{RecoverOptions, recover_shard, shard_dir};
use trove_shard::journaled::replay;
use trove_shard::{
    ClockMode, ConfigError, Engine, EngineConfig, FsyncPolicy, JournalConfig, MetaError, StartError, SubmitError,
};
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
        // Submits below expect no BUSY, however loaded the machine (the
        // wait bound is measured in drains, and a slow disk slows them).
        queue_wait_max: Duration::from_secs(60),
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
        ("group", FsyncPolicy::Group),
        ("always", FsyncPolicy::Always),
        ("interval", FsyncPolicy::Interval(Duration::from_millis(5))),
        ("never", FsyncPolicy::Never),
    ] {
        let dir = temp_dir(name);
        let engine = Engine::<TreasureHunt>::start(config(&dir, policy, 2)).unwrap();
        let mut p = engine.producer();
        let stream = events(0, 3000);
        let mut acked = Vec::new();
        let written_and_synced = |engine: &Engine<TreasureHunt>| {
            engine.metrics().shards.iter().map(|s| (s.journal_bytes, s.fsyncs)).collect::<Vec<_>>()
        };
        for chunk in stream.chunks(200) {
            let first = p.next_seq();
            let mut batch = chunk.to_vec();
            let before = written_and_synced(&engine);
            while p.submit(&mut batch) == Err(SubmitError::Busy) {
                std::thread::yield_now();
            }
            let c = p.complete_timeout(Duration::from_secs(10)).expect("acknowledged");
            // Except with `never`, every shard that wrote a part of this
            // batch (one batch is in flight at a time) synced after the
            // write and before the acknowledgement (both counters move
            // before it is released).
            let after = written_and_synced(&engine);
            if policy != FsyncPolicy::Never {
                for (shard, (b, a)) in before.iter().zip(&after).enumerate() {
                    assert!(a.0 == b.0 || a.1 > b.1, "{name}: shard {shard} wrote {b:?} -> {a:?} without a sync");
                }
            }
            assert!(before.iter().zip(&after).any(|(b, a)| a.0 > b.0), "{name}: the batch was written");
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

/// `group` (the default): with one producer and one batch in flight, each
/// acknowledgement comes after exactly one more `fdatasync` on every shard
/// that wrote a part of the batch, and none on a shard that did not, and
/// only after that sync (the counters move before the release; the events
/// are in the files when it arrives). That it waits for no timer is not
/// shown here (`interval=<ms>` also syncs once per lone batch, later):
/// it is the journal loop's rule, measured in docs/decisions/0009.
#[test]
fn under_group_each_acknowledgement_waits_for_exactly_one_sync() {
    assert_eq!(FsyncPolicy::default(), FsyncPolicy::Group, "group is the default");
    let dir = temp_dir("group");
    let mut cfg = config(&dir, FsyncPolicy::Group, 2);
    // No periodic snapshot in the way (its segment roll syncs too, though
    // it is not counted as a policy sync).
    cfg.journal.as_mut().unwrap().snapshot_interval = None;
    let engine = Engine::<TreasureHunt>::start(cfg).unwrap();
    let mut p = engine.producer();
    let counters = |engine: &Engine<TreasureHunt>| {
        engine.metrics().shards.iter().map(|s| (s.journal_bytes, s.fsyncs)).collect::<Vec<_>>()
    };
    let stream = events(0, 4000);
    let mut acked = Vec::new();
    let mut batches = 0;
    for chunk in stream.chunks(100) {
        let first = p.next_seq();
        let mut batch = chunk.to_vec();
        let before = counters(&engine);
        while p.submit(&mut batch) == Err(SubmitError::Busy) {
            std::thread::yield_now();
        }
        // A generous deadline: what is checked is the count, not the speed.
        let c = p.complete_timeout(Duration::from_secs(60)).expect("acknowledged");
        assert_eq!(c.outcomes.len(), chunk.len());
        let after = counters(&engine);
        for (shard, (b, a)) in before.iter().zip(&after).enumerate() {
            let (wrote, synced) = (a.0 > b.0, a.1 - b.1);
            assert_eq!(synced, u64::from(wrote), "shard {shard}: {b:?} -> {a:?} (bytes, fsyncs) for one batch");
        }
        assert!(before.iter().zip(&after).any(|(b, a)| a.0 > b.0), "the batch was written");
        acked.extend((first..first + chunk.len() as u64).map(|seq| (p.id(), seq)));
        let on_disk = journaled(&dir, 2);
        assert!(acked[acked.len() - chunk.len()..].iter().all(|a| on_disk.contains(a)), "acknowledged, not journaled");
        batches += 1;
    }
    let synced: u64 = engine.metrics().shards.iter().map(|s| s.fsyncs).sum();
    assert!(synced >= batches, "{synced} fsyncs for {batches} batches: at least one per batch");
    engine.shutdown();
    std::fs::remove_dir_all(&dir).ok();
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
            s.producers.iter().find(|p| p.id == 77).map(|p| p.last_seq)
        })
        .max();
    assert_eq!(last_77, Some(more.len() as u64));

    // The shard count of a data directory cannot change.
    let err = Engine::<TreasureHunt>::start(config(&dir, FsyncPolicy::Always, 3)).unwrap_err();
    assert!(matches!(err, StartError::Meta(MetaError::Mismatch { .. })), "{err:?}");
    assert!(err.to_string().contains("shard count"), "{err}");
    std::fs::remove_dir_all(&dir).ok();
}

/// A data directory of format 1 (trimmed records), 2 (no offset bitmaps)
/// or 3 (no sync marks) is taken over and marked format 4 before anything
/// new is written, so an older engine refuses it by name; other settings
/// are still refused.
#[test]
fn an_older_directory_is_marked_format_four_on_start() {
    let dir = temp_dir("meta");
    let meta = |format: u32| format!("format={format}\ngame=treasure-hunt\nrecord_size=32\nshards=2\n");
    for old in [1, 2, 3] {
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("trove.meta"), meta(old)).unwrap();
        let engine = Engine::<TreasureHunt>::start(config(&dir, FsyncPolicy::Always, 2)).unwrap();
        // Marked format 4, and the engine's worlds_max recorded (a meta
        // without one records none), then the CRC32C of those lines.
        let now = format!("{}worlds_max=1048576\n", meta(4));
        let now = format!("{now}check={:08x}\n", crc32c::crc32c(now.as_bytes()));
        assert_eq!(std::fs::read_to_string(dir.join("trove.meta")).unwrap(), now);
        drop(engine.shutdown());
        if old < 3 {
            std::fs::remove_dir_all(&dir).unwrap();
        }
    }
    // Another shard count is still refused, whatever the format.
    let err = Engine::<TreasureHunt>::start(config(&dir, FsyncPolicy::Always, 3)).unwrap_err();
    assert!(matches!(err, StartError::Meta(MetaError::Mismatch { .. })), "{err:?}");
    assert!(err.to_string().contains("cannot change"), "{err}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn journal_requires_the_sharded_mode() {
    let dir = temp_dir("mode");
    let cfg = EngineConfig { mode: trove_shard::Mode::TaskPerEvent, ..config(&dir, FsyncPolicy::Always, 1) };
    let err = Engine::<TreasureHunt>::start(cfg).unwrap_err();
    assert!(matches!(err, StartError::Config(ConfigError::JournalNeedsSharded(_))), "{err:?}");
    assert!(err.to_string().contains("sharded mode only"));
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
    assert!(matches!(err, StartError::Corrupt(_)), "{err:?}");
    let err = err.to_string();
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
            // After a restart (its final snapshot holds everything) a retry
            // still gets its original outcome, and is not applied again.
            let engine = Engine::<TreasureHunt>::start(cfg.clone()).unwrap();
            let mut p = engine.producer_with_id(5, 1);
            let mut again = stream[..10].to_vec();
            p.submit_at(1, &mut again).unwrap();
            let answers = p.complete_timeout(Duration::from_secs(10)).unwrap().outcomes;
            assert_eq!(answers, original[..10]);
            let mut again = stream[n - 100..].to_vec();
            again.extend(events(1, 50).into_iter().take(50));
            p.submit_at(n as u64 - 99, &mut again).unwrap();
            assert_eq!(p.complete_timeout(Duration::from_secs(10)).unwrap().outcomes, mixed);
            assert_eq!(engine.shutdown().state_hash, end.state_hash, "the retries changed nothing");

            // Beyond the window, a retry is answered `duplicate`, still not
            // applied: a restart with a window of 5 keeps only the last 5.
            let engine = Engine::<TreasureHunt>::start(EngineConfig { dedup_window_events: 5, ..cfg }).unwrap();
            let mut p = engine.producer_with_id(5, 1);
            let mut again = stream[..10].to_vec();
            p.submit_at(1, &mut again).unwrap();
            let answers = p.complete_timeout(Duration::from_secs(10)).unwrap().outcomes;
            let duplicate = trove_hunt::HuntOutcome::Rejected { reason: trove_hunt::Reject::Duplicate };
            assert!(answers.iter().all(|o| *o == duplicate), "{answers:?}");
            assert_eq!(engine.shutdown().state_hash, end.state_hash, "the retry changed nothing");
        }
        std::fs::remove_dir_all(&dir).ok();
    }
}

fn hunt_config(seed: u32) -> trove_hunt::HuntConfig {
    trove_hunt::HuntConfig {
        width: 32,
        height: 32,
        seed,
        treasures_per_round: 8,
        value_min: 1,
        value_max: 10,
        dig_cooldown_ms: 0,
        step_max: 4,
        players_max: 64,
    }
}

/// Creates hunts `ids` and a join and a dig in each; returns the creates'
/// outcomes.
fn create_hunts(engine: &Engine<TreasureHunt>, ids: std::ops::Range<u32>) -> Vec<trove_hunt::HuntOutcome> {
    let mut p = engine.producer();
    let mut batch: Vec<Stamped<HuntEvent>> = ids
        .flat_map(|h| [HuntEvent::create(h, hunt_config(h)), HuntEvent::join(h, 1), HuntEvent::dig(h, 1)])
        .map(|event| Stamped { time_us: 0, event })
        .collect();
    p.submit(&mut batch).unwrap();
    p.complete_timeout(Duration::from_secs(10)).unwrap().outcomes.into_iter().step_by(3).collect()
}

/// What a process crash (`kill -9`) would leave of `dir` now: a copy of
/// its files as the kernel holds them, in `dir` + `-crash`.
fn crash_image(dir: &Path) -> PathBuf {
    fn copy(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for e in std::fs::read_dir(from).unwrap() {
            let path = e.unwrap().path();
            let target = to.join(path.file_name().unwrap());
            if path.is_dir() { copy(&path, &target) } else { std::fs::copy(&path, &target).map(drop).unwrap() }
        }
    }
    let image = PathBuf::from(format!("{}-crash", dir.display()));
    let _ = std::fs::remove_dir_all(&image);
    copy(dir, &image);
    image
}

/// The rules refuse creates past `worlds_max`, so the journal records the
/// bound it was written with: a replay uses it, and a new bound takes
/// effect through a snapshot of every shard, never by replaying old events
/// under it.
#[test]
fn worlds_max_is_recorded_and_a_new_one_starts_after_a_snapshot() {
    let dir = temp_dir("worlds-max");
    let cfg = |dir: &Path, worlds_max| EngineConfig { worlds_max, ..config(dir, FsyncPolicy::Always, 1) };
    let too_many = trove_hunt::HuntOutcome::Rejected { reason: trove_hunt::Reject::TooManyHunts };
    let engine = Engine::<TreasureHunt>::start(cfg(&dir, 3)).unwrap();
    let creates = create_hunts(&engine, 0..5);
    assert_eq!(creates.iter().filter(|o| **o == too_many).count(), 2, "{creates:?}");
    // A crash: no final snapshot, the journal holds the refused creates.
    let crashed = crash_image(&dir);
    let running = engine.shutdown().state_hash;
    let replayed = replay::<TreasureHunt>(&crashed, |_, _, _| {}).unwrap();
    assert_eq!(replayed.state_hash, running, "replayed with the recorded bound of 3");
    assert_eq!(replayed.world_hashes.len(), 3);

    // Restarted with room for 10: the journal is still read with 3, and
    // then 7 more hunts fit.
    let mut lines = Vec::new();
    let engine = Engine::<TreasureHunt>::start_logged(cfg(&crashed, 10), &mut |l| lines.push(l)).unwrap();
    assert!(lines.iter().any(|l| l.contains("worlds_max changed from 3 to 10")), "{lines:?}");
    assert!(std::fs::read_to_string(crashed.join("trove.meta")).unwrap().contains("worlds_max=10\n"));
    let creates = create_hunts(&engine, 5..14);
    assert_eq!(creates.iter().filter(|o| **o == too_many).count(), 2, "{creates:?}");
    let crashed_again = crash_image(&crashed);
    let end = engine.shutdown();
    for dir in [&crashed, &crashed_again] {
        let replayed = replay::<TreasureHunt>(dir, |_, _, _| {}).unwrap();
        assert_eq!((replayed.state_hash, replayed.world_hashes.len()), (end.state_hash, 10));
    }

    // A bound below what a shard holds is refused by name.
    let err = Engine::<TreasureHunt>::start(cfg(&crashed, 4)).unwrap_err();
    assert!(matches!(err, StartError::TooManyWorlds { held: 10, to: 4, .. }), "{err:?}");
    let err = err.to_string();
    assert!(err.contains("holds 10 worlds") && err.contains("worlds_max = 4"), "{err}");
    assert!(std::fs::read_to_string(crashed.join("trove.meta")).unwrap().contains("worlds_max=10\n"));
    for d in [&dir, &crashed, &crashed_again] {
        std::fs::remove_dir_all(d).ok();
    }
}

/// A crash between a snapshot's rename and the removal of the segments it
/// covers leaves them behind. Start-up must not read them: damage in one
/// would otherwise stop it, and `--repair` would cut the journal after the
/// snapshot, losing acknowledged batches.
#[test]
fn segments_a_snapshot_covers_are_never_read() {
    let dir = temp_dir("covered");
    let cfg = |dir: &Path, repair| {
        let mut cfg = config(dir, FsyncPolicy::Always, 1);
        let j = cfg.journal.as_mut().unwrap();
        (j.segment_bytes_max, j.snapshot_interval, j.repair) = (8 << 10, None, repair);
        cfg
    };
    let engine = Engine::<TreasureHunt>::start(cfg(&dir, false)).unwrap();
    run_load(&engine, 0, 12_000);
    let old: Vec<(PathBuf, Vec<u8>)> =
        files(&shard_dir(&dir, 0), ".tjl").into_iter().map(|p| (p.clone(), std::fs::read(&p).unwrap())).collect();
    assert!(old.len() >= 3, "{} segments", old.len());
    engine.shutdown(); // a snapshot, which removes those segments

    // Load after the snapshot, then a crash.
    let engine = Engine::<TreasureHunt>::start(cfg(&dir, false)).unwrap();
    run_load(&engine, 1, 2000);
    let crashed = crash_image(&dir);
    let running = engine.shutdown().state_hash;
    for repair in [false, true] {
        // The covered segments back, as a crash leaves them, one damaged
        // in the middle.
        for (k, (path, bytes)) in old.iter().enumerate() {
            let mut bytes = bytes.clone();
            if k == 1 {
                let mid = bytes.len() / 2;
                bytes[mid] ^= 0x10;
            }
            std::fs::write(crashed.join("shard-000").join(path.file_name().unwrap()), bytes).unwrap();
        }
        assert_eq!(replay::<TreasureHunt>(&crashed, |_, _, _| {}).unwrap().state_hash, running);
        let mut lines = Vec::new();
        let engine = Engine::<TreasureHunt>::start_logged(cfg(&crashed, repair), &mut |l| lines.push(l)).unwrap();
        assert!(!lines.iter().any(|l| l.contains("repair") || l.contains("torn")), "{lines:?}");
        assert_eq!(engine.shutdown().state_hash, running, "repair={repair}");
    }
    for d in [&dir, &crashed] {
        std::fs::remove_dir_all(d).ok();
    }
}

/// Issue 19, 8b: the frame limit is in bytes, the drain bound in events.
/// With `drain_events_max` and `batch_events_max` both at 2^20 (which
/// `EngineConfig::validate` accepts), one drain can hold 2^21 - 1 creates,
/// 33 bytes each packed: more than a 64 MiB frame. The journal splits the
/// drain over several frames (it used to assert, and its thread died with
/// the producers waiting): every event is acknowledged, in the journal,
/// and replayed to the same state.
#[test]
fn a_drain_larger_than_a_frame_is_journaled_over_several_frames() {
    let dir = temp_dir("large-creates");
    let mut cfg = config(&dir, FsyncPolicy::Always, 1);
    (cfg.batch_events_max, cfg.drain_events_max, cfg.in_flight_events_max) = (1 << 20, 1 << 20, 1 << 21);
    // Both batches must be admitted behind each other.
    cfg.queue_events_max = 1 << 21;
    // Few worlds: the creates past them are refused, and journaled all
    // the same; the test needs their bytes, not hunts.
    cfg.worlds_max = 4;
    let j = cfg.journal.as_mut().unwrap();
    (j.segment_bytes_max, j.snapshot_interval) = (256 << 20, None);
    cfg.validate().unwrap();
    let engine = Engine::<TreasureHunt>::start(cfg.clone()).unwrap();
    let creates = |from: u32, n: u32| {
        (from..from + n)
            .map(|h| Stamped { time_us: 0, event: HuntEvent::create(h, hunt_config(h)) })
            .collect::<Vec<_>>()
    };
    // Both batches queued while the shard is held in a query, so that it
    // drains them together: 2^20 - 1 events, then 2^20 more.
    let (release, held) = std::sync::mpsc::channel::<()>();
    let _answered = engine.query_world(0, move |_| {
        let _ = held.recv_timeout(Duration::from_secs(120));
    });
    let mut p = engine.producer();
    let (first, second) = ((1u32 << 20) - 1, 1u32 << 20);
    p.submit(&mut creates(0, first)).unwrap();
    p.submit(&mut creates(first, second)).unwrap();
    release.send(()).unwrap();
    let mut acknowledged = 0;
    for _ in 0..2 {
        let c = p.complete_timeout(Duration::from_secs(300)).expect("acknowledged");
        acknowledged += c.outcomes.len();
    }
    assert!(engine.failure().is_none(), "{:?}", engine.failure());
    assert_eq!(acknowledged, (first + second) as usize);
    let m = engine.metrics();
    assert_eq!(m.shards[0].batches_applied, 1, "one drain of both batches");

    // Every acknowledged event is in the journal, over more than one frame.
    let mut frames = 0;
    let mut seqs = Vec::new();
    let opts = RecoverOptions { truncate_torn_tail: false, repair: false, segment_bytes_max: 1 << 30, skip_below: 0 };
    recover_shard::<HuntEvent>(&shard_dir(&dir, 0), 0, opts, |_, entries| {
        frames += 1;
        seqs.extend(entries.iter().map(|e| e.producer_seq));
    })
    .unwrap();
    assert!(frames >= 2, "{frames} frames");
    assert_eq!(seqs, (1..=u64::from(first + second)).collect::<Vec<_>>());

    // Replaying those frames one by one rebuilds the state the one drain
    // made.
    let crashed = crash_image(&dir);
    let running = engine.shutdown().state_hash;
    assert_eq!(replay::<TreasureHunt>(&crashed, |_, _, _| {}).unwrap().state_hash, running);
    let restarted = Engine::<TreasureHunt>::start(cfg_for(&cfg, &crashed)).unwrap();
    assert_eq!(restarted.shutdown().state_hash, running);
    for d in [&dir, &crashed] {
        std::fs::remove_dir_all(d).ok();
    }
}

fn cfg_for(cfg: &EngineConfig, dir: &Path) -> EngineConfig {
    let mut cfg = cfg.clone();
    cfg.journal.as_mut().unwrap().dir = dir.to_path_buf();
    cfg
}

/// A sequence number reused for another event is refused
/// (`Completed::reused`): never answered with the other event's outcome,
/// never applied. The same event again still gets its original outcome.
/// This holds in memory, after a restart from a snapshot, and after a crash
/// (the journal replayed, no snapshot), for batches split across shards.
#[test]
fn a_reused_sequence_number_is_refused_in_memory_and_after_restarts() {
    use trove_hunt::HuntOutcome;
    let dir = temp_dir("reused");
    let mut cfg = config(&dir, FsyncPolicy::Always, 2);
    cfg.journal.as_mut().unwrap().snapshot_interval = None;
    // Two hunts on different shards, so that batches split.
    let a = 1;
    let b = (2..100).find(|&h| trove_shard::sharded::shard_of(h, 2) != trove_shard::sharded::shard_of(a, 2)).unwrap();
    let stamped = |events: &[HuntEvent]| events.iter().map(|&event| Stamped { time_us: 0, event }).collect::<Vec<_>>();
    let run = |p: &mut trove_shard::Producer<TreasureHunt>, first_seq: u64, events: &[HuntEvent]| {
        p.submit_at(first_seq, &mut stamped(events)).unwrap();
        p.complete_timeout(Duration::from_secs(10)).expect("answered")
    };
    // Sequences 1..=6.
    let first = [
        HuntEvent::create(a, hunt_config(1)),
        HuntEvent::create(b, hunt_config(2)),
        HuntEvent::join(a, 1),
        HuntEvent::join(b, 1),
        HuntEvent::join(a, 2),
        HuntEvent::join(b, 2),
    ];
    let engine = Engine::<TreasureHunt>::start(cfg.clone()).unwrap();
    let mut p = engine.producer_with_id(9, 1);
    let original = run(&mut p, 1, &first);
    assert!(original.reused.is_empty());
    assert!(original.outcomes[2..].iter().all(|o| matches!(o, HuntOutcome::Joined { .. })), "{original:?}");

    // Round `r` reuses sequences 3..=6 and 7 + 2(r - 1) with players of
    // its own, then shows they never joined.
    let check = |engine: &Engine<TreasureHunt>, round: u64, label: &str| {
        let mut p = engine.producer_with_id(9, 1);
        let (pa, pb) = (10 + round as u32, 20 + round as u32);
        // Sequences 3 and 6 reused with other players; 4 and 5 the same
        // events again.
        let c = run(
            &mut p,
            3,
            &[HuntEvent::join(a, pa), HuntEvent::join(b, 1), HuntEvent::join(a, 2), HuntEvent::join(b, pb)],
        );
        assert_eq!(c.reused, vec![3, 6], "{label}");
        assert_eq!(&c.outcomes[1..3], &original.outcomes[3..5], "{label}: the same events get their outcomes");
        // The whole first batch again: a retry, answered as before.
        let c = run(&mut p, 1, &first);
        assert!(c.reused.is_empty(), "{label}");
        assert_eq!(c.outcomes, original.outcomes, "{label}");
        if round > 0 {
            // What the previous round applied, in the previous process:
            // the same events are retries, another one is refused.
            let seq = 7 + 2 * (round - 1);
            let (qa, qb) = (10 + round as u32 - 1, 20 + round as u32 - 1);
            let c = run(&mut p, seq, &[HuntEvent::join(a, qa), HuntEvent::join(b, qb)]);
            assert!(c.reused.is_empty(), "{label}: {c:?}");
            assert!(c.outcomes.iter().all(|o| matches!(o, HuntOutcome::Joined { .. })), "{label}: {c:?}");
            let c = run(&mut p, seq, &[HuntEvent::join(a, 99), HuntEvent::join(b, qb)]);
            assert_eq!(c.reused, vec![seq], "{label}");
        }
        // The refused players never joined: under new numbers they do now.
        let seq = 7 + 2 * round;
        let c = run(&mut p, seq, &[HuntEvent::join(a, pa), HuntEvent::join(b, pb)]);
        assert!(c.reused.is_empty(), "{label}");
        assert!(c.outcomes.iter().all(|o| matches!(o, HuntOutcome::Joined { .. })), "{label}: {c:?}");
    };
    drop(p);
    check(&engine, 0, "in memory");
    // A crash now leaves the journal alone (no snapshot was taken).
    let crashed = crash_image(&dir);
    assert!(files(&shard_dir(&crashed, 0), ".tsnap").is_empty());
    engine.shutdown();

    // Restarted from its final snapshot.
    assert!(!files(&shard_dir(&dir, 0), ".tsnap").is_empty());
    let engine = Engine::<TreasureHunt>::start(cfg.clone()).unwrap();
    check(&engine, 1, "from a snapshot");
    engine.shutdown();
    // Restarted from the journal alone.
    let mut crash_cfg = cfg.clone();
    crash_cfg.journal.as_mut().unwrap().dir = crashed.clone();
    let engine = Engine::<TreasureHunt>::start(crash_cfg).unwrap();
    check(&engine, 1, "from the journal");
    engine.shutdown();
    std::fs::remove_dir_all(&dir).ok();
    std::fs::remove_dir_all(&crashed).ok();
}

/// An id handed to a producer that had nothing journaled when the engine
/// stopped (an idle producer, which will present it again when it
/// reconnects) is not handed to another producer by the next run: each
/// run hands ids out from a random start, past the journal's.
#[test]
fn an_idle_producers_assigned_id_is_not_handed_out_again_after_a_restart() {
    let dir = temp_dir("idle-ids");
    let engine = Engine::<TreasureHunt>::start(config(&dir, FsyncPolicy::Always, 2)).unwrap();
    let idle: Vec<u64> = (0..4).map(|_| engine.producer().id()).collect();
    assert!(idle.iter().all(|&id| id >= trove_shard::ASSIGNED_PRODUCER_IDS));
    engine.shutdown();
    let engine = Engine::<TreasureHunt>::start(config(&dir, FsyncPolicy::Always, 2)).unwrap();
    let next: Vec<u64> = (0..4).map(|_| engine.producer().id()).collect();
    assert!(next.iter().all(|id| !idle.contains(id)), "ids handed out again: {idle:?} then {next:?}");
    engine.shutdown();
}

/// Deletes (issue 25) through the journal: hunt after hunt created and
/// deleted on a table of two, snapshots taken between, then a crash
/// (`kill -9`) after the last delete was acknowledged. Replay of the crash
/// image gives the running engine's hash, the deleted hunts stay deleted,
/// and their places were free for the creates that followed.
#[test]
fn deletes_replay_through_snapshots_and_a_crash_keeps_them() {
    let dir = temp_dir("deletes");
    let mut cfg = EngineConfig { worlds_max: 2, ..config(&dir, FsyncPolicy::Always, 1) };
    cfg.journal.as_mut().unwrap().snapshot_interval = Some(Duration::from_millis(10));
    let engine = Engine::<TreasureHunt>::start(cfg.clone()).unwrap();
    let mut p = engine.producer();
    let mut send = |events: Vec<HuntEvent>| {
        let mut batch: Vec<Stamped<HuntEvent>> =
            events.into_iter().map(|event| Stamped { time_us: 0, event }).collect();
        p.submit(&mut batch).unwrap();
        p.complete_timeout(Duration::from_secs(10)).unwrap().outcomes
    };
    assert!(matches!(send(vec![HuntEvent::create(100, hunt_config(100))])[0], trove_hunt::HuntOutcome::Created { .. }));
    for k in 0..12u32 {
        let o = send(vec![HuntEvent::create(k, hunt_config(k)), HuntEvent::join(k, 1), HuntEvent::join(100, k)]);
        assert!(matches!(o[0], trove_hunt::HuntOutcome::Created { .. }), "hunt {k}: {o:?}");
        std::thread::sleep(Duration::from_millis(12));
        let o = send(vec![HuntEvent::dig(k, 1), HuntEvent::delete(k)]);
        assert_eq!(o[1], trove_hunt::HuntOutcome::Deleted { round: 1 }, "hunt {k}");
    }
    assert!(engine.metrics().shards.iter().all(|s| s.snapshots > 0), "no snapshot taken");
    // A crash right after the last delete's acknowledgement.
    let crashed = crash_image(&dir);
    let running = engine.shutdown();
    let replayed = replay::<TreasureHunt>(&crashed, |_, _, _| {}).unwrap();
    assert_eq!(replayed.state_hash, running.state_hash);
    assert_eq!(replayed.world_hashes.iter().map(|(id, _)| *id).collect::<Vec<_>>(), vec![100]);
    // Restarted on the crash image: still deleted, and the id free.
    let mut again = cfg.clone();
    again.journal.as_mut().unwrap().dir = crashed.clone();
    let engine = Engine::<TreasureHunt>::start(again).unwrap();
    let mut p = engine.producer();
    let mut batch = vec![
        Stamped { time_us: 0, event: HuntEvent::join(11, 2) },
        Stamped { time_us: 0, event: HuntEvent::create(11, hunt_config(11)) },
    ];
    p.submit(&mut batch).unwrap();
    let o = p.complete_timeout(Duration::from_secs(10)).unwrap().outcomes;
    assert_eq!(o[0], trove_hunt::HuntOutcome::Rejected { reason: trove_hunt::Reject::UnknownHunt });
    assert!(matches!(o[1], trove_hunt::HuntOutcome::Created { .. }), "{o:?}");
    engine.shutdown();
    for d in [&dir, &crashed] {
        std::fs::remove_dir_all(d).ok();
    }
}
