//! Cluster mode's engine side: shards that own their partition only
//! between `install_shard` and `vacate_shard`, acknowledgements only at
//! their log's sync, and a log that is fenced or unavailable stopping its
//! shard alone.
//!
//! The log here is an in-memory `ShardLog` that keeps what it was given and
//! can be told to refuse: the engine's seam is what is under test. The
//! JetStream log behind the same seam is tested against real nats-server
//! processes in `crates/trove-cluster`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use trove_core::{Stamped, shard_of};
use trove_hunt::{HuntConfig, HuntEvent, TreasureHunt};
use trove_journal::Run;
use trove_shard::journaled::Rebuild;
use trove_shard::{
    ClockMode, CoreConfig, Engine, EngineConfig, FsyncPolicy, LogError, LogErrorKind, Lost, ShardLog, ShardState,
    SubmitError,
};

const SHARDS: usize = 3;
const WAIT: Duration = Duration::from_secs(30);

/// What a `MemLog` holds and how it behaves, shared with the test.
#[derive(Default)]
struct Held {
    /// (producer, seq) of every event made durable, in order.
    durable: Vec<(u64, u64)>,
    /// Appended, not yet synced.
    pending: Vec<(u64, u64)>,
    snapshots: usize,
    /// The next sync fails with this.
    refuse: Option<LogErrorKind>,
}

struct MemLog {
    shard: u32,
    held: Arc<Mutex<Held>>,
}

impl ShardLog<HuntEvent> for MemLog {
    fn shard(&self) -> u32 {
        self.shard
    }

    fn append(&mut self, runs: &[Run<'_>], parts: &[Vec<Stamped<HuntEvent>>], _time_us: Option<u64>) {
        assert_eq!(runs.iter().map(|r| r.len).sum::<usize>(), parts.iter().map(Vec::len).sum::<usize>());
        let mut held = self.held.lock().unwrap();
        for r in runs {
            for k in 0..r.len {
                let offset = r.offsets.map_or(k as u64, |o| u64::from(o[k]));
                held.pending.push((r.producer, r.first_seq + offset));
            }
        }
    }

    fn write(&mut self) -> Result<u64, LogError> {
        Ok(0)
    }

    fn sync(&mut self) -> Result<bool, LogError> {
        let mut held = self.held.lock().unwrap();
        if let Some(kind) = held.refuse.take() {
            return Err(LogError { kind, message: "refused by the test".into() });
        }
        let pending = std::mem::take(&mut held.pending);
        let any = !pending.is_empty();
        held.durable.extend(pending);
        Ok(any)
    }

    fn snapshot(&mut self, bytes: &mut dyn FnMut(u64) -> Vec<u8>) -> Result<usize, LogError> {
        let b = bytes(0);
        self.held.lock().unwrap().snapshots += 1;
        Ok(b.len())
    }
}

fn config() -> EngineConfig {
    EngineConfig {
        shards: SHARDS,
        cluster: true,
        clock: ClockMode::Wall,
        queue_wait_max: Duration::from_secs(60),
        ..EngineConfig::default()
    }
}

fn core_config(c: &EngineConfig) -> CoreConfig {
    CoreConfig {
        worlds_max: c.worlds_max,
        dedup_window_events: c.dedup_window_events,
        dedup_producers_max: c.dedup_producers_max,
        journaled: true,
        snapshot_interval: None,
    }
}

/// A hunt on `shard`.
fn hunt_on(shard: usize) -> u32 {
    (1..).find(|&h| shard_of(h, SHARDS) == shard).unwrap()
}

fn create(hunt: u32) -> Vec<Stamped<HuntEvent>> {
    vec![Stamped { time_us: 0, event: HuntEvent::create(hunt, HuntConfig::default()) }]
}

fn install(engine: &Engine<TreasureHunt>, shard: usize) -> Arc<Mutex<Held>> {
    let held = Arc::new(Mutex::new(Held::default()));
    let core =
        Rebuild::<TreasureHunt>::new(shard, core_config(engine.config())).into_core(core_config(engine.config()));
    let log = MemLog { shard: shard as u32, held: held.clone() };
    engine.install_shard(shard, core, log, FsyncPolicy::Group).unwrap();
    held
}

#[test]
fn a_vacant_shard_refuses_and_an_installed_one_acknowledges_after_its_log() {
    let engine = Engine::<TreasureHunt>::start(config()).unwrap();
    assert!(engine.shard_states().iter().all(|s| *s == ShardState::Vacant));
    let mut p = engine.producer();
    let (a, b) = (hunt_on(0), hunt_on(1));
    assert_eq!(p.submit(&mut create(a)), Err(SubmitError::NotOwner { shard: 0 }));

    let held = install(&engine, 0);
    assert_eq!(engine.shard_states()[0], ShardState::Owned);
    p.submit(&mut create(a)).unwrap();
    let done = p.complete_timeout(WAIT).expect("acknowledged");
    assert_eq!(done.outcomes.len(), 1);
    assert_eq!(held.lock().unwrap().durable, vec![(p.id(), 1)], "acknowledged only once durable");

    // A batch over an owned and a vacant shard is refused whole.
    let mut both = create(a);
    both.extend(create(b));
    assert_eq!(p.submit(&mut both), Err(SubmitError::NotOwner { shard: 1 }));
    assert_eq!(held.lock().unwrap().durable.len(), 1);

    // Vacating applies and acknowledges what was admitted, snapshots, and
    // refuses from then on.
    let mut more = vec![Stamped { time_us: 0, event: HuntEvent::join(a, 1) }];
    p.submit(&mut more).unwrap();
    engine.vacate_shard(0, true).unwrap();
    assert!(p.complete_timeout(WAIT).is_some(), "admitted before the vacate: answered");
    assert_eq!(held.lock().unwrap().snapshots, 1);
    assert_eq!(held.lock().unwrap().durable.len(), 2);
    assert_eq!(engine.shard_states()[0], ShardState::Vacant);
    assert_eq!(p.submit(&mut create(a)), Err(SubmitError::NotOwner { shard: 0 }));
    // The vacated shard holds nothing: its hunt is gone from this node.
    let found = engine.query_world(a, |w| w.is_some()).blocking_recv().unwrap();
    assert!(!found);
    engine.shutdown();
}

#[test]
fn a_fenced_log_stops_its_shard_alone_and_tells_the_producers() {
    for (kind, deposed) in [(LogErrorKind::Fenced, true), (LogErrorKind::Unavailable, false)] {
        let engine = Engine::<TreasureHunt>::start(config()).unwrap();
        let held0 = install(&engine, 0);
        let held1 = install(&engine, 1);
        let mut p = engine.producer();
        let mut q = engine.producer();
        let (a, b) = (hunt_on(0), hunt_on(1));
        held0.lock().unwrap().refuse = Some(kind);
        p.submit(&mut create(a)).unwrap();
        assert!(p.complete_timeout(WAIT).is_none(), "never acknowledged");
        let lost = p.lost().expect("told why");
        match (&lost, deposed) {
            (Lost::Deposed { shard: 0, .. }, true) | (Lost::Unavailable { shard: 0, .. }, false) => {}
            other => panic!("{kind:?}: {other:?}"),
        }
        assert!(held0.lock().unwrap().durable.is_empty());
        assert!(matches!(engine.shard_states()[0], ShardState::Lost(_)));
        assert_eq!(engine.failure(), None, "a cluster log's loss is not the engine's failure");
        // Admission refuses the lost shard; the other shard goes on.
        assert_eq!(q.submit(&mut create(a)), Err(SubmitError::NotOwner { shard: 0 }));
        q.submit(&mut create(b)).unwrap();
        assert!(q.complete_timeout(WAIT).is_some());
        assert_eq!(held1.lock().unwrap().durable.len(), 1);
        // Vacated and installed again (as a node does once it has the
        // lease back and the state recovered), the shard serves.
        engine.vacate_shard(0, true).unwrap();
        assert_eq!(held0.lock().unwrap().snapshots, 0, "a lost shard's state is not snapshotted");
        assert_eq!(engine.shard_states()[0], ShardState::Vacant);
        let again = install(&engine, 0);
        let mut r = engine.producer();
        r.submit(&mut create(a)).unwrap();
        assert!(r.complete_timeout(WAIT).is_some());
        assert_eq!(again.lock().unwrap().durable.len(), 1);
        engine.shutdown();
    }
}

#[test]
fn install_and_vacate_are_refused_outside_cluster_mode_and_twice() {
    let plain = Engine::<TreasureHunt>::start(EngineConfig { shards: SHARDS, ..EngineConfig::default() }).unwrap();
    assert!(plain.shard_states().iter().all(|s| *s == ShardState::Owned));
    assert!(plain.vacate_shard(0, false).is_err());
    plain.shutdown();

    let engine = Engine::<TreasureHunt>::start(config()).unwrap();
    let _held = install(&engine, 2);
    let core = Rebuild::<TreasureHunt>::new(2, core_config(engine.config())).into_core(core_config(engine.config()));
    let log = MemLog { shard: 2, held: Arc::default() };
    assert!(engine.install_shard(2, core, log, FsyncPolicy::Group).is_err(), "installed twice");
    let core = Rebuild::<TreasureHunt>::new(9, core_config(engine.config())).into_core(core_config(engine.config()));
    let log = MemLog { shard: 9, held: Arc::default() };
    assert!(engine.install_shard(9, core, log, FsyncPolicy::Group).is_err(), "no such shard");
    engine.vacate_shard(1, false).unwrap(); // vacant already: nothing to do
    engine.shutdown();
}
