//! One run: producers on a simulated network, the real shard core, the
//! real journal on the simulated disk, crashes and the engine's recovery,
//! on a simulated clock.

use std::collections::{BTreeMap, VecDeque};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use trove_core::rng::mix64;
use trove_core::{Game, GameState, Outcomes, Record, SplitMix64, Stamped, WorldId};
use trove_hunt::{HuntEvent, HuntOutcome, TreasureHunt};
use trove_journal::segment::{covered_segments, list_segments_in};
use trove_journal::snapshot::{decode_snapshot, list_snapshots_in, remove_covered_in, write_snapshot_in};
use trove_journal::{
    Entry, FsyncPolicy, JournalWriter, RecoverOptions, Run, SimFaults, SimStorage, Storage, shard_dir,
};
use trove_shard::journaled::{ReplayError, SNAPSHOT_BYTES_MAX, check_meta};
use trove_shard::sharded::shard_of;
use trove_shard::{
    Answer, CoreConfig, Delivery, Handoff, Hub, Mailbox, MetaError, Origin, RecoveredCore, ShardCore, Update, WorkPart,
    recover_core_in,
};
use trove_workload::Generator;

use crate::config::{
    BOOTS_MAX, PRODUCERS_MAX, STREAM_DELETES, STREAM_DISK, STREAM_OPERATOR, STREAM_RUN, STREAM_SUBSCRIBERS,
    SUBSCRIBERS_MAX, SimConfig,
};

/// The data directory on the simulated disk: shard `i` journals in
/// `shard-00i` under it.
pub const DATA_DIR: &str = "/data";
const WORLDS_MAX: usize = 64;

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
        batches: sim.written.iter().map(|w| w.len() as u64).sum(),
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

/// A batch a producer sent (or will send): its first sequence and events,
/// and which shards it went to and have answered (bit per shard).
struct Sent {
    first_seq: u64,
    events: Vec<HuntEvent>,
    shards: u64,
    answered: u64,
}

struct Producer {
    id: u64,
    next_seq: u64,
    /// Every sequence up to here is acknowledged.
    acked: u64,
    /// Not yet acknowledged, in sequence order: `unacked[..sent]` are on
    /// the connection; the rest wait to be sent (after a BUSY, a dropped
    /// connection or a restart, they are sent again, with their original
    /// sequences).
    unacked: VecDeque<Sent>,
    sent: usize,
    /// The connection: answers to an earlier one are lost with it.
    epoch: u64,
    /// Every event sent, by sequence, and the shard it goes to.
    history: BTreeMap<u64, (HuntEvent, usize)>,
    /// The outcome the shards first answered each event with (kept for
    /// events a journal holds): a retry must get the same, or the
    /// documented duplicate answer once the window has forgotten it.
    outcomes: BTreeMap<u64, HuntOutcome>,
}

/// Where an answer goes: the producer (by index), its connection, the
/// batch it answers and the shard answering.
#[derive(Clone, Copy, Debug)]
struct Reply {
    producer: usize,
    epoch: u64,
    first_seq: u64,
    shard: usize,
    /// A rogue batch reusing an applied sequence with another event: it
    /// must be answered as a duplicate and never applied.
    reused: bool,
}

type Part = WorkPart<TreasureHunt, Reply>;

struct Shard {
    core: ShardCore<TreasureHunt>,
    writer: JournalWriter,
    /// Answers waiting for the durability point of what was written
    /// before them.
    pending: Vec<Answer<TreasureHunt, Reply>>,
    last_sync_us: u64,
}

/// A subscriber to one hunt's updates through the real `Hub`, for one
/// boot (a restart drops every subscription).
struct Subscriber {
    world: WorldId,
    mailbox: Arc<Mailbox<TreasureHunt>>,
    /// The number of the next update it must see (or a gap from there).
    next: u64,
    /// Its hunt's update stream this boot, up to here, is behind it: the
    /// update numbered `next` is the stream's entry `cursor`.
    cursor: usize,
}

struct Sim {
    cfg: SimConfig,
    hub: Hub<TreasureHunt>,
    subscribers: Vec<Subscriber>,
    /// The subscribers' own stream: they move no other draw of a seed.
    subscriber_rng: SplitMix64,
    /// The operator's own stream (restarts with another shard count).
    operator_rng: SplitMix64,
    /// The deletes' own stream.
    delete_rng: SplitMix64,
    /// Each hunt's update stream this boot, as the hub must number it:
    /// each applied event (`Some`), then its broadcasts to the hunt
    /// (`None`).
    applied: BTreeMap<WorldId, Vec<Option<HuntEvent>>>,
    /// The hub stamps chunks with when their batch came in, for a latency
    /// histogram the simulation never reads: one reading per run, never an
    /// input to a decision.
    hub_stamp: std::time::Instant,
    disk: SimStorage,
    storage: Arc<dyn Storage>,
    rng: SplitMix64,
    generator: Generator,
    setup: VecDeque<HuntEvent>,
    producers: Vec<Producer>,
    /// Each shard's queue: parts arrived and not yet drained.
    inbox: Vec<VecDeque<Part>>,
    /// Every batch each shard's writer took, by sequence, as its journal
    /// must give it back: cut at each recovery to what it recovered.
    written: Vec<BTreeMap<u64, Vec<Entry<HuntEvent>>>>,
    events: Vec<String>,
    step: u32,
    clock_us: u64,
    boots: u32,
}

fn chance(rng: &mut SplitMix64, ppm: u32) -> bool {
    ppm > 0 && rng.below(1_000_000) < ppm
}

fn fail<T>(why: String) -> Result<T, Stop> {
    Err(Stop::End(Verdict::Failed(why)))
}

impl Sim {
    fn new(cfg: SimConfig) -> Self {
        let disk = SimStorage::new(mix64(cfg.seed ^ STREAM_DISK), cfg.faults);
        let mut generator = Generator::new(&cfg.spec);
        let setup = generator.setup().into();
        let producers = (0..cfg.producers)
            .map(|i| Producer {
                id: 100 + u64::from(i),
                next_seq: 1,
                acked: 0,
                unacked: VecDeque::new(),
                sent: 0,
                epoch: 0,
                history: BTreeMap::new(),
                outcomes: BTreeMap::new(),
            })
            .collect();
        Self {
            hub: Hub::default(),
            subscribers: Vec::new(),
            subscriber_rng: SplitMix64::new(mix64(cfg.seed ^ STREAM_SUBSCRIBERS)),
            operator_rng: SplitMix64::new(mix64(cfg.seed ^ STREAM_OPERATOR)),
            delete_rng: SplitMix64::new(mix64(cfg.seed ^ STREAM_DELETES)),
            applied: BTreeMap::new(),
            hub_stamp: std::time::Instant::now(), // not an input: see `hub_stamp`
            storage: Arc::new(disk.clone()),
            disk,
            rng: SplitMix64::new(mix64(cfg.seed ^ STREAM_RUN)),
            generator,
            setup,
            producers,
            inbox: (0..cfg.shards).map(|_| VecDeque::new()).collect(),
            written: (0..cfg.shards).map(|_| BTreeMap::new()).collect(),
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
                let window = 8 + 3 * u64::from(self.cfg.steps - self.step) * u64::from(self.cfg.shards);
                let at = self.disk.ops() + 1 + self.rng.next_u64() % window;
                self.disk.crash_at(Some(at));
                self.note(format!("boot {}: a crash is planned at disk op {at}", self.boots));
            }
            let mut shards = match self.boot() {
                Ok(shards) => shards,
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
            match self.drive(&mut shards) {
                Ok(()) => self.note("last step done: power cut".into()),
                Err(Stop::Crash) => {}
                Err(Stop::End(verdict)) => return verdict,
            }
            // What the subscribers were sent before the machine went down.
            for k in 0..self.subscribers.len() {
                if let Err(Stop::End(verdict)) = self.take_updates(k) {
                    return verdict;
                }
            }
            drop(shards);
            self.restart();
        }
    }

    /// The machine comes back: the disk keeps what a crash keeps, every
    /// connection is gone (and the answers on it), and the producers will
    /// resend everything not acknowledged.
    fn restart(&mut self) {
        self.disk.restart();
        self.note("restart".into());
        (self.hub, self.subscribers) = (Hub::default(), Vec::new());
        self.applied.clear();
        for inbox in &mut self.inbox {
            inbox.clear();
        }
        for p in &mut self.producers {
            p.epoch += 1;
            p.sent = 0;
            for b in &mut p.unacked {
                b.answered = 0;
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

    fn core_config(&self) -> CoreConfig {
        CoreConfig {
            worlds_max: WORLDS_MAX,
            dedup_window_events: self.cfg.dedup_window_events,
            dedup_producers_max: PRODUCERS_MAX as usize,
            journaled: true,
            // Snapshots are the seed's to time (`snapshot_ppm`).
            snapshot_interval: None,
        }
    }

    /// The engine's recovery of every shard (`recover_core_in`: the
    /// newest snapshot, the journal after it, the dedup state rebuilt),
    /// then the checks, then writers appending where the journals end.
    fn boot(&mut self) -> Result<Vec<Shard>, Stop> {
        let data = Path::new(DATA_DIR);
        let shards = self.cfg.shards as usize;
        // The operator restarts with another shard count: the meta check
        // must refuse it (the shard count decides which shard owns which
        // world), before anything is read or written.
        if self.disk.exists(&data.join("trove.meta")) && chance(&mut self.operator_rng, self.cfg.reshard_ppm) {
            let wrong = if shards == 1 { 2 } else { shards - 1 };
            match check_meta::<TreasureHunt>(&*self.storage, data, wrong, WORLDS_MAX) {
                Err(MetaError::Mismatch { .. }) => {
                    self.note(format!("a start with {wrong} shards instead of {shards} is refused by the meta check"))
                }
                Err(MetaError::Io { source, .. }) => return Err(self.io_stop("reading the meta", source)),
                other => {
                    return fail(format!(
                        "a start with {wrong} shards over a journal of {shards} was not refused: {other:?}"
                    ));
                }
            }
        }
        match check_meta::<TreasureHunt>(&*self.storage, data, shards, WORLDS_MAX) {
            Ok(WORLDS_MAX) => {}
            // The meta ends in a checksum (format 4): rot that still
            // parses is refused like any other, never read as another
            // bound.
            Ok(n) => {
                return fail(format!("the meta check says worlds_max {n}, the journal was written with {WORLDS_MAX}"));
            }
            Err(MetaError::Io { source, .. }) => return Err(self.io_stop("checking the meta", source)),
            Err(e) => return Err(self.refused(e.to_string())),
        }
        let mut recovered = Vec::with_capacity(self.cfg.shards as usize);
        for index in 0..self.cfg.shards as usize {
            recovered.push(self.recover(index)?);
        }
        self.check(&recovered)?;
        let mut shards = Vec::with_capacity(recovered.len());
        for (index, RecoveredCore { core, journal, .. }) in recovered.into_iter().enumerate() {
            let writer = JournalWriter::open_in(
                Arc::clone(&self.storage),
                &shard_dir(Path::new(DATA_DIR), index),
                index as u32,
                HuntEvent::SIZE as u32,
                journal.next_batch,
                journal.tail.clone(),
                self.cfg.segment_bytes_max,
                self.cfg.io,
            )
            .map_err(|e| self.io_stop("opening the journal", e))?;
            shards.push(Shard { core, writer, pending: Vec::new(), last_sync_us: self.now_us() });
        }
        Ok(shards)
    }

    /// Recovers shard `index` and checks that it applied the batches the
    /// writer took, in order, from its newest snapshot's on.
    fn recover(&mut self, index: usize) -> Result<RecoveredCore<TreasureHunt>, Stop> {
        let storage = Arc::clone(&self.storage);
        let dir = shard_dir(Path::new(DATA_DIR), index);
        let options = RecoverOptions {
            truncate_torn_tail: true,
            repair: false,
            segment_bytes_max: self.cfg.segment_bytes_max,
            skip_below: 0,
        };
        // The first batch applied that is not the one written under its
        // sequence, and the first and last batches applied.
        let (mut differs, mut first_applied, mut last_applied) = (None, None, 0);
        let written = &self.written[index];
        let recovered = recover_core_in::<TreasureHunt>(
            &*storage,
            &dir,
            index,
            self.core_config(),
            options,
            |batch, entries, _| {
                if differs.is_none()
                    && ((last_applied > 0 && batch != last_applied + 1)
                        || written.get(&batch).map(Vec::as_slice) != Some(entries))
                {
                    differs = Some(batch);
                }
                first_applied.get_or_insert(batch);
                last_applied = batch;
            },
        );
        let recovered = match recovered {
            Ok(r) => r,
            Err(ReplayError::Damaged(reason)) => return Err(self.refused(reason)),
            Err(ReplayError::Unreadable(reason)) => {
                if self.disk.crashed() {
                    return Err(Stop::Crash);
                }
                if reason.contains(&format!("os error {}", libc::EIO)) {
                    self.note(format!("recovery: {reason}: the engine stops"));
                    self.disk.crash();
                    return Err(Stop::Crash);
                }
                return fail(format!("recovery: unexpected I/O error: {reason}"));
            }
        };
        if let Some(batch) = differs {
            return fail(format!(
                "shard {index}: recovery applied batch {batch}, which is not the batch written as {batch} or not \
                 the next one: damaged or misplaced data applied"
            ));
        }
        let r = &recovered.journal;
        // The newest snapshot covers everything below its batch: replay
        // starts there, none skipped.
        let from = self.snapshot_batch(&dir)?;
        if first_applied.is_some_and(|b| b != from) || (first_applied.is_some() && last_applied + 1 != r.next_batch) {
            return fail(format!(
                "shard {index}: recovery continues at batch {} after the snapshot at {from}, but applied batches \
                 {first_applied:?} to {last_applied}",
                r.next_batch
            ));
        }
        for line in &recovered.log {
            self.events.push(format!("step {}: recovery: {line}", self.step));
        }
        let line = format!(
            "boot {}: shard {index} recovered through batch {} (replayed from {from}, {} segments, {} torn tails, \
             {} damaged last frames)",
            self.boots,
            r.next_batch - 1,
            r.segments,
            r.torn_tails,
            r.damaged_last_frames
        );
        self.note(line);
        Ok(recovered)
    }

    /// The batch the newest snapshot in `dir` continues at (1: none).
    fn snapshot_batch(&mut self, dir: &Path) -> Result<u64, Stop> {
        let (snapshots, _) = list_snapshots_in(&*self.storage, dir).map_err(|e| self.io_stop("listing", e))?;
        let Some(path) = snapshots.last() else { return Ok(1) };
        let bytes = self.storage.read(path, SNAPSHOT_BYTES_MAX).map_err(|e| self.io_stop("reading a snapshot", e))?;
        decode_snapshot(&bytes)
            .map(|s| s.meta.next_batch)
            .map_err(|e| Stop::End(Verdict::Failed(format!("recovery used a damaged snapshot: {e}"))))
    }

    /// The checks after a recovery of every shard, against what the
    /// simulator knows was written and acknowledged.
    fn check(&mut self, recovered: &[RecoveredCore<TreasureHunt>]) -> Result<(), Stop> {
        let mut notes = Vec::new();
        // Each producer's sequences each shard's recovered journal holds,
        // in order.
        let mut held: Vec<Vec<Vec<u64>>> = vec![vec![Vec::new(); self.producers.len()]; recovered.len()];
        for (index, rc) in recovered.iter().enumerate() {
            let r = &rc.journal;
            notes.extend(r.notes.iter().cloned());
            let next = r.next_batch;
            let written = &mut self.written[index];
            let below = written.range(..next).count() as u64;
            if below != next - 1 {
                return fail(format!(
                    "shard {index}: recovery continues at batch {next}, but only {below} batches below it were written"
                ));
            }
            // Batches at and after `next` are lost (never durable).
            written.split_off(&next);
            let mut replay = GameState::<TreasureHunt>::new(WORLDS_MAX);
            let mut out = Outcomes::default();
            for entries in written.values() {
                for e in entries {
                    held[index][(e.producer - 100) as usize].push(e.producer_seq);
                }
                let stamped: Vec<Stamped<HuntEvent>> = entries.iter().map(|e| e.stamped).collect();
                replay.apply(&stamped, &mut out);
                out.clear();
            }
            let state = rc.core.state();
            if state.state_hash() != replay.state_hash() {
                return fail(format!(
                    "shard {index}: the recovered state (snapshot and journal) hashes to {:016x}, a replay of the \
                     recovered journal from batch 1 to {:016x}",
                    state.state_hash(),
                    replay.state_hash()
                ));
            }
            if let Err(e) = state.check() {
                return fail(format!("shard {index}: the recovered state breaks the rules' invariants: {e}"));
            }
        }
        // Exactly once, in order: what a shard holds of a producer is the
        // start of what the producer sent it, every event once (a batch
        // reaches a shard in sequence order, on one connection).
        let mut lost = Vec::new();
        for (i, p) in self.producers.iter().enumerate() {
            for (index, rc) in recovered.iter().enumerate() {
                let sent: Vec<u64> = p.history.iter().filter(|(_, (_, s))| *s == index).map(|(&seq, _)| seq).collect();
                let got = &held[index][i];
                if !sent.starts_with(got) {
                    let at = got.iter().zip(&sent).position(|(a, b)| a != b).unwrap_or(sent.len());
                    return fail(format!(
                        "shard {index} holds event {} of producer {} where event {:?} was due: applied twice, out of \
                         order, or never sent",
                        got[at],
                        p.id,
                        sent.get(at)
                    ));
                }
                let last = got.last().copied().unwrap_or(0);
                if rc.core.last_seq(p.id) != last {
                    return fail(format!(
                        "shard {index}, producer {}: the recovered dedup state says last sequence {}, the recovered \
                         journal {last}",
                        p.id,
                        rc.core.last_seq(p.id)
                    ));
                }
                let acked = sent.iter().take_while(|&&seq| seq <= p.acked).count();
                if acked > got.len() {
                    let (n, first) = (acked - got.len(), sent[got.len()]);
                    lost.push(format!("producer {}: {n} events on shard {index}, from event {first}", p.id));
                }
            }
        }
        if !lost.is_empty() {
            let what = format!("acknowledged events lost: {}", lost.join(", "));
            // Damage to the last frame is cut off like a torn write (the
            // format cannot tell them apart: decision 0006), and reported
            // by this recovery: recovery cuts nothing itself, the writer
            // opened after it does, so a crash cannot make a cut durable
            // without its note.
            if self.disk.damage() > 0 && !notes.is_empty() {
                self.note(format!("{what} (to damage the recovery reported: {})", notes.join("; ")));
                return Err(Stop::End(Verdict::Detected(what)));
            }
            return fail(what);
        }
        // Outcomes of events no journal kept were never durable: a resend
        // applies them afresh.
        for (i, p) in self.producers.iter_mut().enumerate() {
            p.outcomes.retain(|seq, _| p.history.get(seq).is_some_and(|&(_, s)| held[s][i].binary_search(seq).is_ok()));
        }
        Ok(())
    }

    fn now_us(&self) -> u64 {
        self.clock_us + self.disk.time_us()
    }

    fn next_event(&mut self) -> HuntEvent {
        if let Some(e) = self.setup.pop_front() {
            return e;
        }
        let e = self.generator.next_event();
        // Drawn from a stream of its own: a seed's other draws stay put.
        if !chance(&mut self.delete_rng, self.cfg.delete_ppm) {
            return e;
        }
        // The hunt is deleted, then created again afresh, its players
        // joining again: deletes go through the journal, snapshots,
        // crashes and retries like every event.
        let hunt = e.hunt;
        self.setup.push_back(HuntEvent::create(hunt, self.cfg.spec.hunt_config(hunt)));
        self.setup.extend((0..self.cfg.spec.players_per_hunt).map(|p| HuntEvent::join(hunt, p)));
        HuntEvent::delete(hunt)
    }

    fn shard_of(&self, event: &HuntEvent) -> usize {
        shard_of(TreasureHunt::world_of(event), self.cfg.shards as usize)
    }

    /// One step of the network: producers make new batches, connections
    /// drop (the producer resends every unanswered batch), and what is
    /// unsent goes to the shards' queues, split by shard, until one
    /// refuses (BUSY).
    fn network(&mut self) {
        for i in 0..self.producers.len() {
            let n = self.rng.below(self.cfg.send_max + 1);
            if n > 0 {
                let events: Vec<HuntEvent> = (0..n).map(|_| self.next_event()).collect();
                let shards: Vec<usize> = events.iter().map(|e| self.shard_of(e)).collect();
                let p = &mut self.producers[i];
                let first_seq = p.next_seq;
                p.next_seq += u64::from(n);
                for (k, (&e, &s)) in events.iter().zip(&shards).enumerate() {
                    p.history.insert(first_seq + k as u64, (e, s));
                }
                let mask = shards.iter().fold(0, |m, &s| m | 1 << s);
                p.unacked.push_back(Sent { first_seq, events, shards: mask, answered: 0 });
            }
            if chance(&mut self.rng, self.cfg.drop_ppm) {
                let p = &mut self.producers[i];
                p.epoch += 1;
                p.sent = 0;
                for b in &mut p.unacked {
                    b.answered = 0;
                }
                let id = p.id;
                for inbox in &mut self.inbox {
                    inbox.retain(|w| w.origin().producer != id);
                }
                self.note(format!("producer {id}'s connection drops: it resends every unanswered batch"));
            }
            if chance(&mut self.rng, self.cfg.reuse_ppm) && self.producers[i].acked > 0 {
                let seq = 1 + self.rng.next_u64() % self.producers[i].acked;
                let event = self.next_event();
                let p = &self.producers[i];
                // To the shard that applied the sequence: there it is known.
                let Some(&(original, shard)) = p.history.get(&seq) else { continue };
                if original != event && self.inbox[shard].len() < self.cfg.queue_parts_max {
                    let reply = Reply { producer: i, epoch: p.epoch, first_seq: seq, shard, reused: true };
                    let origin = Origin { producer: p.id, first_seq: seq };
                    self.inbox[shard].push_back(WorkPart::new(
                        reply,
                        origin,
                        None,
                        vec![Stamped { time_us: 0, event }],
                    ));
                    let id = p.id;
                    self.note(format!("producer {id} reuses sequence {seq} on shard {shard} with another event"));
                }
            }
            loop {
                let p = &self.producers[i];
                let Some(batch) = p.unacked.get(p.sent) else { break };
                let targets = (0..self.cfg.shards as usize).filter(|&s| batch.shards & (1 << s) != 0);
                if targets.clone().any(|s| self.inbox[s].len() >= self.cfg.queue_parts_max) {
                    // BUSY: the whole batch refused; sent again next step.
                    break;
                }
                for s in targets {
                    let ks: Vec<u32> = (0..batch.events.len() as u32)
                        .filter(|&k| p.history[&(batch.first_seq + u64::from(k))].1 == s)
                        .collect();
                    let events = ks.iter().map(|&k| Stamped { time_us: 0, event: batch.events[k as usize] }).collect();
                    let positions = (ks.len() < batch.events.len()).then(|| Arc::new(ks));
                    let reply =
                        Reply { producer: i, epoch: p.epoch, first_seq: batch.first_seq, shard: s, reused: false };
                    let origin = Origin { producer: p.id, first_seq: batch.first_seq };
                    self.inbox[s].push_back(WorkPart::new(reply, origin, positions, events));
                }
                self.producers[i].sent += 1;
            }
        }
    }

    /// Runs steps until the last one (then syncs and returns) or a stop.
    fn drive(&mut self, shards: &mut [Shard]) -> Result<(), Stop> {
        let mut work: Vec<Part> = Vec::new();
        while self.step < self.cfg.steps {
            self.step += 1;
            self.clock_us += self.cfg.step_us;
            self.network();
            self.subscribe();
            for (index, shard) in shards.iter_mut().enumerate() {
                let now = self.now_us();
                let mut events = 0;
                while events < self.cfg.batch_events_max as usize {
                    let Some(part) = self.inbox[index].pop_front() else { break };
                    events += part.events().len();
                    work.push(part);
                }
                if !work.is_empty() {
                    if shard.core.apply(&mut work, Some(now)).is_err() {
                        return fail("the core failed without a journal error".into());
                    }
                    let news: Vec<Vec<HuntEvent>> =
                        work.iter().map(|w| w.events().iter().map(|e| e.event).collect()).collect();
                    shard.core.publish(&self.hub, self.hub_stamp);
                    let batch = match shard.core.hand_off(&mut work) {
                        Handoff::Journal(batch) => batch,
                        Handoff::Deliver(_) => return fail("a journaled core answered without its journal".into()),
                    };
                    self.answered(&batch.waiting)?;
                    self.stream(&batch.waiting, &news);
                    if !batch.parts.is_empty() {
                        let runs: Vec<Run<'_>> = batch.sources.iter().map(|s| s.run()).collect();
                        let batches = shard.writer.append_parts(&runs, &batch.parts, batch.time_us);
                        assert_eq!(batches.end - batches.start, 1, "a simulated batch fits one frame");
                        let mut entries = Vec::new();
                        for (s, part) in batch.sources.iter().zip(&batch.parts) {
                            for (k, e) in part.iter().enumerate() {
                                let seq =
                                    s.origin.first_seq + s.positions.as_ref().map_or(k as u64, |p| u64::from(p[k]));
                                let stamped = Stamped { time_us: batch.time_us.unwrap_or(e.time_us), event: e.event };
                                entries.push(Entry { producer: s.origin.producer, producer_seq: seq, stamped });
                            }
                        }
                        self.written[index].insert(batches.start, entries);
                    }
                    shard.pending.extend(batch.waiting);
                    shard.writer.flush().map_err(|e| self.io_stop("write", e))?;
                }
                let due = match self.cfg.fsync {
                    FsyncPolicy::Interval(every) => now - shard.last_sync_us >= every.as_micros() as u64,
                    FsyncPolicy::Group | FsyncPolicy::Always | FsyncPolicy::Never => true,
                };
                if due {
                    shard.writer.sync().map_err(|e| self.io_stop("fdatasync", e))?;
                    shard.last_sync_us = now;
                    self.acknowledge(shard)?;
                }
                if chance(&mut self.rng, self.cfg.snapshot_ppm) {
                    self.snapshot(index, shard, now)?;
                }
            }
            for k in 0..self.subscribers.len() {
                if self.subscriber_rng.below(2) == 0 {
                    self.take_updates(k)?;
                }
            }
        }
        for shard in shards.iter_mut() {
            shard.writer.flush().map_err(|e| self.io_stop("write", e))?;
            shard.writer.sync().map_err(|e| self.io_stop("fdatasync", e))?;
            self.acknowledge(shard)?;
        }
        Ok(())
    }

    /// Perhaps a new subscriber, to a hunt the seed picks.
    fn subscribe(&mut self) {
        if self.subscribers.len() >= SUBSCRIBERS_MAX || !chance(&mut self.subscriber_rng, self.cfg.subscribe_ppm) {
            return;
        }
        let world = self.subscriber_rng.below(self.cfg.spec.hunts);
        let mailbox = Mailbox::new(self.cfg.mailbox_updates_max);
        let next = self.hub.subscribe(world, &mailbox);
        let cursor = self.applied.get(&world).map_or(0, Vec::len);
        self.subscribers.push(Subscriber { world, mailbox, next, cursor });
        self.note(format!("a subscriber to hunt {world} (mailbox of {} updates)", self.cfg.mailbox_updates_max));
    }

    /// Extends each hunt's update stream with a batch: every new event of
    /// every part in drain order (`news`), each followed by its broadcasts
    /// (the answers carry them, numbered from the part's first submitted
    /// event: retries first).
    fn stream(&mut self, answers: &[Answer<TreasureHunt, Reply>], news: &[Vec<HuntEvent>]) {
        for (a, events) in answers.iter().zip(news) {
            let retried = a.outcomes.len() - events.len();
            for (i, e) in events.iter().enumerate() {
                self.applied.entry(TreasureHunt::world_of(e)).or_default().push(Some(*e));
                for b in a.broadcasts.iter().filter(|b| b.event_index as usize == retried + i) {
                    self.applied.entry(b.world).or_default().push(None);
                }
            }
        }
    }

    /// Subscriber `k` takes what its mailbox holds: its hunt's updates, in
    /// order, numbered consecutively, each the hunt's applied event or
    /// broadcast under that number, or a gap notice in their place.
    fn take_updates(&mut self, k: usize) -> Result<(), Stop> {
        let mut got = Vec::new();
        self.subscribers[k].mailbox.take(&mut got);
        let sub = &mut self.subscribers[k];
        let stream = self.applied.get(&sub.world).map_or(&[][..], Vec::as_slice);
        for d in got {
            match d {
                Delivery::Gap { world, first_missed, missed } => {
                    if world != sub.world || first_missed != sub.next || missed == 0 {
                        return fail(format!(
                            "a subscriber to hunt {} at update {} got a gap of {missed} in hunt {world} from \
                             {first_missed}",
                            sub.world, sub.next
                        ));
                    }
                    sub.next += missed;
                    sub.cursor += missed as usize;
                    if !self.events.last().is_some_and(|l| l.ends_with("a gap notice")) {
                        let line = format!("step {}: a subscriber to hunt {world} gets a gap notice", self.step);
                        self.events.push(line);
                    }
                }
                Delivery::Chunk(c) => {
                    if c.world != sub.world || c.first_seq != sub.next {
                        return fail(format!(
                            "a subscriber to hunt {} at update {} got updates of hunt {} from {}: out of order",
                            sub.world, sub.next, c.world, c.first_seq
                        ));
                    }
                    for u in &c.updates {
                        let due = stream.get(sub.cursor);
                        let right = match u {
                            Update::Applied { event, .. } => due == Some(&Some(event.event)),
                            Update::Broadcast(_) => due == Some(&None),
                        };
                        if !right {
                            return fail(format!(
                                "a subscriber to hunt {} got as update {} {u:?}, where the hunt's stream has {due:?}",
                                sub.world, sub.next
                            ));
                        }
                        sub.next += 1;
                        sub.cursor += 1;
                    }
                }
            }
        }
        Ok(())
    }

    /// Checks a batch's answers as a core made them (before any is
    /// released): a reused sequence is answered as a duplicate; a retry
    /// gets its original outcome (or the duplicate answer, once the window
    /// has forgotten it).
    fn answered(&mut self, answers: &[Answer<TreasureHunt, Reply>]) -> Result<(), Stop> {
        let duplicate = TreasureHunt::duplicate_outcome();
        for a in answers {
            let r = a.reply;
            let p = &mut self.producers[r.producer];
            if r.reused {
                if *a.outcomes != [duplicate] {
                    return fail(format!(
                        "producer {}: sequence {} reused with another event was answered {:?}, not as a duplicate",
                        p.id, r.first_seq, a.outcomes
                    ));
                }
                continue;
            }
            if !a.reused.is_empty() {
                return fail(format!(
                    "producer {}: a resend of sequences from {} was taken for a reuse: {:?}",
                    p.id, r.first_seq, a.reused
                ));
            }
            let seqs = p.history.range(r.first_seq..).filter(|(_, (_, s))| *s == r.shard).map(|(&seq, _)| seq);
            for (seq, o) in seqs.zip(a.outcomes.iter()) {
                match p.outcomes.get(&seq) {
                    Some(first) if first != o && *o != duplicate => {
                        return fail(format!(
                            "producer {}: event {seq} answered {o:?}, first answered {first:?}: a retry must get its \
                             original outcome",
                            p.id
                        ));
                    }
                    Some(_) => {}
                    // `duplicate` is no event's own outcome: a window that
                    // forgot it may remember it again after a restart
                    // (replayed from the journal), with the original.
                    None if *o == duplicate => {}
                    None => {
                        p.outcomes.insert(seq, *o);
                    }
                }
            }
        }
        Ok(())
    }

    /// Releases every answer waiting on `shard`: its writer has made
    /// everything before them durable. An answer on a connection since
    /// dropped is lost with it; a batch is acknowledged once every shard
    /// it went to has answered.
    fn acknowledge(&mut self, shard: &mut Shard) -> Result<(), Stop> {
        for a in shard.pending.drain(..) {
            let r = a.reply;
            let p = &mut self.producers[r.producer];
            if r.reused || r.epoch != p.epoch {
                continue;
            }
            let bit = 1 << r.shard;
            // Answers from one shard come in the order it was sent.
            let oldest = p.unacked.iter_mut().find(|b| b.shards & bit != 0 && b.answered & bit == 0);
            match oldest {
                Some(b) if b.first_seq == r.first_seq => b.answered |= bit,
                other => {
                    return fail(format!(
                        "producer {}: shard {}'s answer to the batch from {} arrived while its oldest unanswered is \
                         from {:?}",
                        p.id,
                        r.shard,
                        r.first_seq,
                        other.map(|b| b.first_seq)
                    ));
                }
            }
            while p.unacked.front().is_some_and(|b| b.answered == b.shards) {
                let b = p.unacked.pop_front().expect("a front");
                p.acked = p.acked.max(b.first_seq + b.events.len() as u64 - 1);
                p.sent -= 1;
            }
        }
        Ok(())
    }

    /// A snapshot as the engine takes one (`take_snapshot` in
    /// trove-shard's journaled.rs): the core's state encoded for the
    /// writer's next batch, every batch before it written and synced with
    /// a segment starting at its batch, then the snapshot made durable,
    /// then what it covers removed.
    fn snapshot(&mut self, index: usize, shard: &mut Shard, now: u64) -> Result<(), Stop> {
        let next_batch = shard.writer.next_batch();
        let bytes = shard.core.snapshot(Duration::from_micros(now)).encode(index as u32, next_batch);
        if let Err(e) = decode_snapshot(&bytes) {
            return fail(format!("a snapshot fails its own check: {e}"));
        }
        let storage = Arc::clone(&self.storage);
        let dir = shard_dir(Path::new(DATA_DIR), index);
        shard.writer.roll_at_snapshot().map_err(|e| self.io_stop("starting a segment for a snapshot", e))?;
        write_snapshot_in(&*storage, &dir, next_batch, &bytes).map_err(|e| self.io_stop("writing a snapshot", e))?;
        let removed = remove_covered_in(&*storage, &dir, next_batch).map_err(|e| {
            self.note(format!(
                "shard {index}: snapshot at batch {next_batch} renamed, then stopped while removing what it covers"
            ));
            self.io_stop("removing what a snapshot covers", e)
        })?;
        self.note(format!("shard {index}: snapshot at batch {next_batch}, {} files removed", removed.len()));
        let segments = list_segments_in(&*storage, &dir).map_err(|e| self.io_stop("listing", e))?;
        let covered = covered_segments(&segments, next_batch);
        if covered > 0 {
            return fail(format!(
                "shard {index}: {covered} segments the snapshot at batch {next_batch} covers are still there after \
                 its removal"
            ));
        }
        Ok(())
    }
}
