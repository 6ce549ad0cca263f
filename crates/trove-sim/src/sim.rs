//! One run: producers, a shard, the real journal on the simulated disk,
//! crashes and the real recovery, on a simulated clock.

use std::collections::{BTreeMap, VecDeque};
use std::path::Path;
use std::sync::Arc;

use trove_core::rng::mix64;
use trove_core::{Game, GameState, Outcomes, Record, SplitMix64, Stamped};
use trove_hunt::{HuntEvent, TreasureHunt};
use trove_journal::segment::{covered_segments, list_segments_in};
use trove_journal::snapshot::{
    SnapshotBuilder, SnapshotMeta, decode_snapshot, list_snapshots_in, remove_covered_in, write_snapshot_in,
};
use trove_journal::{
    Entry, FsyncPolicy, JournalError, JournalWriter, RecoverOptions, Recovered, Run, SimFaults, SimStorage, Storage,
    recover_shard_in,
};
use trove_workload::Generator;

use crate::config::{BOOTS_MAX, STREAM_DISK, STREAM_RUN, SimConfig};
use crate::dedup::{Admit, Dedup};

/// The shard's directory on the simulated disk.
pub const SHARD_DIR: &str = "/data/shard-000";
const SHARD: u32 = 0;
const WORLDS_MAX: usize = 64;
/// The largest snapshot file read back.
const SNAPSHOT_BYTES_MAX: u64 = 64 << 20;

/// How a run ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Every check held after every recovery.
    Passed,
    /// Damage the disk injected (bit rot, a misdirected write) was
    /// reported by recovery, and nothing damaged was applied: a pass.
    Detected(String),
    /// A check failed: the engine lost, doubled or corrupted something.
    Failed(String),
}

impl Verdict {
    pub fn failed(&self) -> bool {
        matches!(self, Verdict::Failed(_))
    }
}

/// What a run did and found.
#[derive(Debug)]
pub struct Report {
    pub seed: u64,
    pub config: SimConfig,
    pub verdict: Verdict,
    /// What the simulator did (boots, planned crashes, snapshots), one
    /// line each.
    pub events: Vec<String>,
    /// The faults the disk injected, one line each.
    pub faults: Vec<String>,
    pub boots: u32,
    pub batches: u64,
    pub acked: u64,
}

/// Runs seed `seed`.
pub fn run(seed: u64) -> Report {
    let config = SimConfig::from_seed(seed);
    let mut sim = Sim::new(config.clone());
    let verdict = sim.run_all();
    Report {
        seed,
        config,
        verdict,
        events: sim.events,
        faults: sim.disk.log(),
        boots: sim.boots,
        batches: sim.written.len() as u64,
        acked: sim.producers.iter().map(|p| p.acked).sum(),
    }
}

/// Why driving the shard stopped early.
enum Stop {
    /// The machine went down (a planned crash, or a journal error that
    /// stops the engine): restart and recover.
    Crash,
    /// The run is over.
    End(Verdict),
}

struct Producer {
    id: u64,
    next_seq: u64,
    /// Every sequence up to here is acknowledged.
    acked: u64,
    /// Sent and not yet acknowledged, in sequence order: resent after a
    /// restart.
    unacked: VecDeque<(u64, HuntEvent)>,
}

struct Shard {
    state: GameState<TreasureHunt>,
    dedup: Dedup,
    writer: JournalWriter,
    /// Batches written and not yet durable: each producer's highest
    /// sequence in it.
    pending: BTreeMap<u64, Vec<(usize, u64)>>,
    last_sync_us: u64,
}

struct Sim {
    cfg: SimConfig,
    disk: SimStorage,
    storage: Arc<dyn Storage>,
    rng: SplitMix64,
    generator: Generator,
    setup: VecDeque<HuntEvent>,
    producers: Vec<Producer>,
    /// Events sent and not yet drained by the shard.
    inbox: VecDeque<(usize, u64, HuntEvent)>,
    /// Every batch the writer took, by sequence, as the journal must give
    /// it back: cut at each recovery to what it recovered.
    written: BTreeMap<u64, Vec<Entry<HuntEvent>>>,
    events: Vec<String>,
    step: u32,
    clock_us: u64,
    boots: u32,
}

fn chance(rng: &mut SplitMix64, ppm: u32) -> bool {
    ppm > 0 && rng.below(1_000_000) < ppm
}

impl Sim {
    fn new(cfg: SimConfig) -> Self {
        let disk = SimStorage::new(mix64(cfg.seed ^ STREAM_DISK), cfg.faults);
        let mut generator = Generator::new(&cfg.spec);
        let setup = generator.setup().into();
        let producers = (0..cfg.producers)
            .map(|i| Producer { id: 100 + u64::from(i), next_seq: 1, acked: 0, unacked: VecDeque::new() })
            .collect();
        Self {
            storage: Arc::new(disk.clone()),
            disk,
            rng: SplitMix64::new(mix64(cfg.seed ^ STREAM_RUN)),
            generator,
            setup,
            producers,
            inbox: VecDeque::new(),
            written: BTreeMap::new(),
            events: Vec::new(),
            step: 0,
            clock_us: 0,
            boots: 0,
            cfg,
        }
    }

    fn note(&mut self, what: String) {
        let line = format!("step {} (disk op {}): {what}", self.step, self.disk.ops());
        self.events.push(line);
    }

    fn run_all(&mut self) -> Verdict {
        loop {
            self.boots += 1;
            if self.boots > BOOTS_MAX {
                // Enough crashes: no more planned, and no more failing
                // syncs, so the run ends.
                self.disk.set_faults(SimFaults { sync_error_ppm: 0, ..self.cfg.faults });
            } else if self.step < self.cfg.steps && chance(&mut self.rng, self.cfg.crash_ppm) {
                let window = 8 + 3 * u64::from(self.cfg.steps - self.step);
                let at = self.disk.ops() + 1 + self.rng.next_u64() % window;
                self.disk.crash_at(Some(at));
                self.note(format!("boot {}: a crash is planned at disk op {at}", self.boots));
            }
            let mut shard = match self.boot() {
                Ok(shard) => shard,
                Err(Stop::Crash) => {
                    self.restart();
                    continue;
                }
                Err(Stop::End(verdict)) => return verdict,
            };
            if self.step >= self.cfg.steps {
                self.note("recovered after the last step: every check held".into());
                return Verdict::Passed;
            }
            match self.drive(&mut shard) {
                Ok(()) => self.note("last step done: power cut".into()),
                Err(Stop::Crash) => {}
                Err(Stop::End(verdict)) => return verdict,
            }
            drop(shard);
            self.restart();
        }
    }

    /// The machine comes back: the disk keeps what a crash keeps, and the
    /// producers resend everything not acknowledged.
    fn restart(&mut self) {
        self.disk.restart();
        self.note("restart".into());
        self.inbox.clear();
        let longest = self.producers.iter().map(|p| p.unacked.len()).max().unwrap_or(0);
        for k in 0..longest {
            for (i, p) in self.producers.iter().enumerate() {
                if let Some(&(seq, event)) = p.unacked.get(k) {
                    self.inbox.push_back((i, seq, event));
                }
            }
        }
    }

    /// An I/O error from the journal: a crash, or the engine stops on a
    /// journal error (EIO); anything else is a bug.
    fn io_stop(&mut self, what: &str, e: std::io::Error) -> Stop {
        if self.disk.crashed() {
            return Stop::Crash;
        }
        if e.raw_os_error() == Some(libc::EIO) {
            self.note(format!("{what}: {e}: the engine stops"));
            self.disk.crash();
            return Stop::Crash;
        }
        Stop::End(Verdict::Failed(format!("{what}: unexpected I/O error: {e}")))
    }

    /// Recovery refused what it found: right only for damage the disk
    /// injected. A crash alone (unsynced writes lost, torn or kept out of
    /// order) never damages a synced byte, so start-up must not need the
    /// operator after one (decision 0036).
    fn refused(&mut self, reason: String) -> Stop {
        self.note(format!("recovery refused: {reason}"));
        if self.disk.damage() > 0 {
            Stop::End(Verdict::Detected(reason))
        } else {
            Stop::End(Verdict::Failed(format!("a crash alone stopped start-up: {reason}")))
        }
    }

    /// The real recovery: the newest snapshot, then the journal after it,
    /// then the checks, then a writer appending where it ends.
    fn boot(&mut self) -> Result<Shard, Stop> {
        let storage = Arc::clone(&self.storage);
        let dir = Path::new(SHARD_DIR);
        let mut state = GameState::<TreasureHunt>::new(WORLDS_MAX);
        let mut dedup = Dedup::default();
        let (snapshots, leftovers) = list_snapshots_in(&*storage, dir).map_err(|e| self.io_stop("listing", e))?;
        for tmp in leftovers {
            storage.remove(&tmp).map_err(|e| self.io_stop("removing an unfinished snapshot", e))?;
        }
        let mut skip_below = 0;
        if let Some(path) = snapshots.last() {
            let bytes = storage.read(path, SNAPSHOT_BYTES_MAX).map_err(|e| self.io_stop("reading a snapshot", e))?;
            let snap = match decode_snapshot(&bytes) {
                Ok(snap) => snap,
                Err(e) => return Err(self.refused(format!("snapshot {} is damaged: {e}", path.display()))),
            };
            for (id, world) in &snap.worlds {
                let restored = TreasureHunt::decode_world(*id, world)
                    .and_then(|w| state.restore_world(*id, w).map_err(|e| format!("{e:?}")));
                if let Err(e) = restored {
                    return Err(self.refused(format!("snapshot {}: world {id}: {e}", path.display())));
                }
            }
            state.restore_time(snap.meta.last_time_us);
            for p in &snap.producers {
                dedup.restore(p.id, p.last_seq);
            }
            skip_below = snap.meta.next_batch;
        }
        let options = RecoverOptions {
            truncate_torn_tail: true,
            repair: false,
            segment_bytes_max: self.cfg.segment_bytes_max,
            skip_below,
        };
        // The first batch applied that is not the one written under its
        // sequence, and the sequence the next applied batch must have.
        let (mut differs, mut next_applied) = (None, skip_below.max(1));
        let (mut out, mut stamped) = (Outcomes::default(), Vec::new());
        let written = &self.written;
        let recovered = recover_shard_in::<HuntEvent>(&*storage, dir, SHARD, options, |batch, entries| {
            if differs.is_none() && (batch != next_applied || written.get(&batch).map(Vec::as_slice) != Some(entries)) {
                differs = Some(batch);
            }
            next_applied = batch + 1;
            stamped.clear();
            stamped.extend(entries.iter().map(|e| e.stamped));
            state.apply(&stamped, &mut out);
            out.clear();
            for e in entries {
                dedup.replayed(e.producer, e.producer_seq);
            }
        });
        let recovered = match recovered {
            Ok(r) => r,
            Err(JournalError::Io { source, .. }) => return Err(self.io_stop("recovery", source)),
            Err(e) => return Err(self.refused(e.to_string())),
        };
        if let Some(batch) = differs {
            return Err(Stop::End(Verdict::Failed(format!(
                "recovery applied batch {batch}, which is not the batch written as {batch} or not the next one: \
                 damaged or misplaced data applied"
            ))));
        }
        if next_applied < recovered.next_batch {
            return Err(Stop::End(Verdict::Failed(format!(
                "recovery continues at batch {}, but applied batches only up to {}",
                recovered.next_batch,
                next_applied - 1
            ))));
        }
        self.note(format!(
            "boot {}: recovered through batch {} (snapshot at {skip_below}, {} segments, {} torn tails, {} damaged \
             last frames)",
            self.boots,
            recovered.next_batch - 1,
            recovered.segments,
            recovered.torn_tails,
            recovered.damaged_last_frames
        ));
        self.check(&recovered, &state, &dedup)?;
        let writer = JournalWriter::open_in(
            Arc::clone(&self.storage),
            dir,
            SHARD,
            HuntEvent::SIZE as u32,
            recovered.next_batch,
            recovered.tail.clone(),
            self.cfg.segment_bytes_max,
            self.cfg.io,
        )
        .map_err(|e| self.io_stop("opening the journal", e))?;
        Ok(Shard { state, dedup, writer, pending: BTreeMap::new(), last_sync_us: self.now_us() })
    }

    /// The checks after a recovery, against what the simulator knows was
    /// written and acknowledged.
    fn check(&mut self, r: &Recovered, state: &GameState<TreasureHunt>, dedup: &Dedup) -> Result<(), Stop> {
        let fail = |why: String| Err(Stop::End(Verdict::Failed(why)));
        let next = r.next_batch;
        let below = self.written.range(..next).count() as u64;
        if below != next - 1 {
            return fail(format!("recovery continues at batch {next}, but only {below} batches below it were written"));
        }
        // Batches at and after `next` are lost (never durable): forget them.
        self.written.split_off(&next);
        // Exactly once, in order: each producer's sequences in the
        // recovered history are 1, 2, 3, ...
        let mut last = vec![0u64; self.producers.len()];
        let mut replay = GameState::<TreasureHunt>::new(WORLDS_MAX);
        let mut out = Outcomes::default();
        for (batch, entries) in &self.written {
            for e in entries {
                let i = (e.producer - 100) as usize;
                if e.producer_seq != last[i] + 1 {
                    return fail(format!(
                        "batch {batch} holds event {} of producer {} after event {}: applied twice or out of order",
                        e.producer_seq, e.producer, last[i]
                    ));
                }
                last[i] = e.producer_seq;
            }
            let stamped: Vec<Stamped<HuntEvent>> = entries.iter().map(|e| e.stamped).collect();
            replay.apply(&stamped, &mut out);
            out.clear();
        }
        for (i, p) in self.producers.iter().enumerate() {
            if dedup.last_seq(p.id) != last[i] {
                return fail(format!(
                    "producer {}: the recovered dedup state says last sequence {}, the recovered journal {}",
                    p.id,
                    dedup.last_seq(p.id),
                    last[i]
                ));
            }
        }
        let lost: Vec<String> = self
            .producers
            .iter()
            .enumerate()
            .filter(|(i, p)| p.acked > last[*i])
            .map(|(i, p)| format!("producer {} events {}..={}", p.id, last[i] + 1, p.acked))
            .collect();
        if !lost.is_empty() {
            let what = format!("acknowledged events lost: {}", lost.join(", "));
            // Damage to the last frame is cut off like a torn write (the
            // format cannot tell them apart: decision 0006), and reported
            // by this recovery: recovery cuts nothing itself, the writer
            // opened after it does, so a crash cannot make a cut durable
            // without its note.
            if self.disk.damage() > 0 && !r.notes.is_empty() {
                self.note(format!("{what} (to damage the recovery reported: {})", r.notes.join("; ")));
                return Err(Stop::End(Verdict::Detected(what)));
            }
            return fail(what);
        }
        if state.state_hash() != replay.state_hash() {
            return fail(format!(
                "the recovered state (snapshot and journal) hashes to {:016x}, a replay of the recovered journal \
                 from batch 1 to {:016x}",
                state.state_hash(),
                replay.state_hash()
            ));
        }
        if let Err(e) = state.check() {
            return fail(format!("the recovered state breaks the rules' invariants: {e}"));
        }
        // What was recovered is durable: retries of it are answered.
        for (i, p) in self.producers.iter_mut().enumerate() {
            p.acked = p.acked.max(last[i]);
            while p.unacked.front().is_some_and(|&(seq, _)| seq <= p.acked) {
                p.unacked.pop_front();
            }
        }
        Ok(())
    }

    fn now_us(&self) -> u64 {
        self.clock_us + self.disk.time_us()
    }

    fn next_event(&mut self) -> HuntEvent {
        self.setup.pop_front().unwrap_or_else(|| self.generator.next_event())
    }

    /// Runs steps until the last one (then syncs and returns) or a stop.
    fn drive(&mut self, shard: &mut Shard) -> Result<(), Stop> {
        let (mut out, mut admitted, mut stamped) = (Outcomes::default(), Vec::new(), Vec::new());
        while self.step < self.cfg.steps {
            self.step += 1;
            self.clock_us += self.cfg.step_us;
            let now = self.now_us();
            for i in 0..self.producers.len() {
                for _ in 0..self.rng.below(self.cfg.send_max + 1) {
                    let event = self.next_event();
                    let p = &mut self.producers[i];
                    let seq = p.next_seq;
                    p.next_seq += 1;
                    p.unacked.push_back((seq, event));
                    self.inbox.push_back((i, seq, event));
                }
            }
            admitted.clear();
            for _ in 0..self.cfg.batch_events_max {
                let Some((i, seq, event)) = self.inbox.pop_front() else { break };
                let producer = self.producers[i].id;
                if shard.dedup.admit(producer, seq) == Admit::Apply {
                    admitted.push(Entry { producer, producer_seq: seq, stamped: Stamped { time_us: now, event } });
                }
            }
            if !admitted.is_empty() {
                stamped.clear();
                stamped.extend(admitted.iter().map(|e: &Entry<HuntEvent>| e.stamped));
                shard.state.apply(&stamped, &mut out);
                out.clear();
                let runs = runs_of(&admitted);
                let batches = shard.writer.append_parts(&runs, &[stamped.as_slice()], None);
                assert_eq!(batches.end - batches.start, 1, "a simulated batch fits one frame");
                self.written.insert(batches.start, admitted.clone());
                let mut highest: Vec<(usize, u64)> = Vec::new();
                for e in &admitted {
                    let i = (e.producer - 100) as usize;
                    match highest.iter_mut().find(|(j, _)| *j == i) {
                        Some(h) => h.1 = h.1.max(e.producer_seq),
                        None => highest.push((i, e.producer_seq)),
                    }
                }
                shard.pending.insert(batches.start, highest);
                shard.writer.flush().map_err(|e| self.io_stop("write", e))?;
            }
            let due = match self.cfg.fsync {
                FsyncPolicy::Interval(every) => now - shard.last_sync_us >= every.as_micros() as u64,
                FsyncPolicy::Group | FsyncPolicy::Always | FsyncPolicy::Never => true,
            };
            if due {
                shard.writer.sync().map_err(|e| self.io_stop("fdatasync", e))?;
                shard.last_sync_us = now;
                self.acknowledge(shard);
            }
            if chance(&mut self.rng, self.cfg.snapshot_ppm) {
                self.snapshot(shard)?;
            }
        }
        shard.writer.flush().map_err(|e| self.io_stop("write", e))?;
        shard.writer.sync().map_err(|e| self.io_stop("fdatasync", e))?;
        self.acknowledge(shard);
        Ok(())
    }

    /// Releases the acknowledgements of every batch the writer has made
    /// durable: all it took, after a successful sync.
    fn acknowledge(&mut self, shard: &mut Shard) {
        let durable = shard.writer.next_batch() - 1;
        let later = shard.pending.split_off(&(durable + 1));
        for (_, highest) in std::mem::replace(&mut shard.pending, later) {
            for (i, seq) in highest {
                let p = &mut self.producers[i];
                p.acked = p.acked.max(seq);
                while p.unacked.front().is_some_and(|&(s, _)| s <= p.acked) {
                    p.unacked.pop_front();
                }
            }
        }
    }

    /// A snapshot as the engine takes one (`take_snapshot` in
    /// trove-shard's journaled.rs): every batch before it written and
    /// synced with a segment starting at its batch, then the snapshot made
    /// durable, then what it covers removed.
    fn snapshot(&mut self, shard: &mut Shard) -> Result<(), Stop> {
        let next_batch = shard.writer.next_batch();
        let mut b = SnapshotBuilder::default();
        for (id, world) in shard.state.worlds().iter_sorted() {
            b.add(id, |out| TreasureHunt::encode_world(world, out));
        }
        for (producer, last_seq) in shard.dedup.export() {
            b.add_producer(producer, last_seq, 0, None, 0, &[], |_| {});
        }
        let bytes = b.finish(SnapshotMeta { shard: SHARD, next_batch, last_time_us: shard.state.time_us() });
        if let Err(e) = decode_snapshot(&bytes) {
            return Err(Stop::End(Verdict::Failed(format!("a snapshot fails its own check: {e}"))));
        }
        let storage = Arc::clone(&self.storage);
        let dir = Path::new(SHARD_DIR);
        shard.writer.roll_at_snapshot().map_err(|e| self.io_stop("starting a segment for a snapshot", e))?;
        write_snapshot_in(&*storage, dir, next_batch, &bytes).map_err(|e| self.io_stop("writing a snapshot", e))?;
        let removed = remove_covered_in(&*storage, dir, next_batch).map_err(|e| {
            self.note(format!("snapshot at batch {next_batch} renamed, then stopped while removing what it covers"));
            self.io_stop("removing what a snapshot covers", e)
        })?;
        self.note(format!("snapshot at batch {next_batch}, {} files removed", removed.len()));
        let segments = list_segments_in(&*storage, dir).map_err(|e| self.io_stop("listing", e))?;
        let covered = covered_segments(&segments, next_batch);
        if covered > 0 {
            return Err(Stop::End(Verdict::Failed(format!(
                "{covered} segments the snapshot at batch {next_batch} covers are still there after its removal"
            ))));
        }
        Ok(())
    }
}

/// The runs of a batch: consecutive events of one producer with
/// consecutive sequences.
fn runs_of(entries: &[Entry<HuntEvent>]) -> Vec<Run<'static>> {
    let mut runs: Vec<Run<'static>> = Vec::new();
    for e in entries {
        match runs.last_mut() {
            Some(r) if r.producer == e.producer && r.first_seq + r.len as u64 == e.producer_seq => r.len += 1,
            _ => runs.push(Run { producer: e.producer, first_seq: e.producer_seq, len: 1, offsets: None }),
        }
    }
    runs
}
