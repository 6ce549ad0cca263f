//! The simulator over the cluster's log: two or three simulated nodes own
//! one to three partitions through leases (epochs, expiry in simulated
//! time), each partition's log a [`SimStream`] with JetStream's semantics
//! and faults, and the REAL shard cores apply producers' batches and hand
//! them to a `ShardLog` ([`SimLog`], framed as `StreamLog` frames).
//! Nodes crash (their state lost) and stall past their leases (the deposed
//! node, back, keeps applying and appending: fencing must refuse it).
//! Taking a partition over is what trove-cluster's node does: acquire the
//! lease, rebuild from the snapshot and the stream through the real
//! `Rebuild` (each message decoded by trove-cluster's own
//! `recover::decode_message`), append a fence expecting the last sequence
//! read (read again if another writer appended meanwhile), then serve.
//!
//! The checks: every acknowledged event is in the stream's history exactly
//! once, and each producer's events on a partition are there in order,
//! none twice; a rebuilt state and the final owners' states hash as a
//! replay of the whole stream from sequence 1 does; no answer is released
//! to a node whose lease epoch is older than the epoch that last fenced
//! and served its partition (a deposed owner never gets an append
//! acknowledged after the new owner's fence); a retry gets its original
//! outcome (or `duplicate`, once the window forgot it). No clock, no
//! thread: a seed replays exactly.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use trove_core::rng::mix64;
use trove_core::{Game, GameState, Outcomes, SplitMix64, Stamped};
use trove_hunt::{HuntEvent, HuntOutcome, TreasureHunt};
use trove_journal::Run;
use trove_shard::journaled::Rebuild;
use trove_shard::sharded::shard_of;
use trove_shard::{Answer, CoreConfig, Handoff, Hub, LogErrorKind, Origin, ShardCore, ShardLog, WorkPart};
use trove_workload::{Generator, WorkloadSpec};

use crate::Verdict;
use crate::stream::{ClusterBug, SimLog, SimStream, StreamError, StreamFaults};

const STREAM_CLUSTER_CONFIG: u64 = 0xC105_7E80;
const STREAM_CLUSTER_RUN: u64 = 0xC105_7E81;
const STREAM_CLUSTER_LOG: u64 = 0xC105_7E82;

pub const NODES_MAX: u32 = 3;
pub const PARTITIONS_MAX: u32 = 3;
pub const PRODUCERS_MAX: u32 = 3;
pub const STEPS_MAX: u32 = 160;
/// Steps after the last, with every fault off, for the cluster to settle
/// (every producer acknowledged), at most.
pub const SETTLE_STEPS_MAX: u32 = 400;
/// A takeover's fence attempts (trove-cluster node.rs's
/// `FENCE_ATTEMPTS_MAX`): each failed one reads the stream again.
pub const FENCE_ATTEMPTS_MAX: usize = 3;
const WORLDS_MAX: usize = 64;
/// Parts a node's queue for one partition holds: more is BUSY.
const INBOX_PARTS_MAX: usize = 16;

/// One cluster run's settings, drawn from its seed.
#[derive(Clone, Debug)]
pub struct ClusterConfig {
    pub seed: u64,
    pub nodes: u32,
    pub partitions: u32,
    pub producers: u32,
    pub steps: u32,
    /// Events a producer sends per step, at most.
    pub send_max: u32,
    /// Events a shard drains per batch, at most.
    pub batch_events_max: u32,
    /// A lease lives this many steps unless renewed (each step a node
    /// ticks).
    pub lease_ttl: u32,
    /// A message's payload (`max_payload` less headers): small ones split
    /// a batch into several messages.
    pub payload_max: usize,
    pub dedup_window_events: usize,
    /// Per node and step, in parts per million.
    pub crash_ppm: u32,
    pub stall_ppm: u32,
    /// Per partition served and step.
    pub snapshot_ppm: u32,
    /// Per producer and step: its connections drop (it resends every
    /// unanswered batch).
    pub drop_ppm: u32,
    pub faults: StreamFaults,
    pub spec: WorkloadSpec,
}

fn pick<T: Copy>(rng: &mut SplitMix64, items: &[T]) -> T {
    items[rng.below(items.len() as u32) as usize]
}

fn sometimes(rng: &mut SplitMix64, share: u32, ppm_max: u32) -> u32 {
    if rng.below(1000) < share { 1 + rng.below(ppm_max) } else { 0 }
}

fn chance(rng: &mut SplitMix64, ppm: u32) -> bool {
    ppm > 0 && rng.below(1_000_000) < ppm
}

impl ClusterConfig {
    pub fn from_seed(seed: u64) -> Self {
        let mut rng = SplitMix64::new(mix64(seed ^ STREAM_CLUSTER_CONFIG));
        let mut spec = WorkloadSpec::standard();
        spec.name = "sim-cluster".into();
        spec.seed = mix64(seed);
        spec.hunts = 1 + rng.below(5);
        spec.players_per_hunt = 2 + rng.below(8);
        spec.map_width = 16;
        spec.map_height = 16;
        spec.treasures_per_round = 4;
        spec.dig_cooldown_ms = 1;
        spec.mix.join_leave = 5;
        debug_assert!(spec.validate().is_ok());
        Self {
            seed,
            nodes: 2 + rng.below(NODES_MAX - 1),
            partitions: 1 + rng.below(PARTITIONS_MAX),
            producers: 1 + rng.below(PRODUCERS_MAX),
            steps: 30 + rng.below(STEPS_MAX - 30),
            send_max: 1 + rng.below(6),
            batch_events_max: 1 + rng.below(24),
            lease_ttl: 3 + rng.below(8),
            payload_max: pick(&mut rng, &[128, 256, 1024, 1 << 20]),
            dedup_window_events: pick(&mut rng, &[0, 4, 64, 1024]),
            crash_ppm: sometimes(&mut rng, 700, 40_000),
            stall_ppm: sometimes(&mut rng, 700, 40_000),
            snapshot_ppm: pick(&mut rng, &[0, 30_000, 100_000, 300_000]),
            drop_ppm: sometimes(&mut rng, 400, 60_000),
            faults: StreamFaults {
                unavailable_ppm: sometimes(&mut rng, 400, 60_000),
                ack_lost_ppm: sometimes(&mut rng, 500, 80_000),
                uncommitted_ppm: sometimes(&mut rng, 500, 80_000),
            },
            spec,
        }
    }

    pub fn summary(&self) -> String {
        let f = &self.faults;
        format!(
            "{} nodes, {} partitions, {} producers, {} steps, {} hunts x {} players, lease {} steps, payload {} B, \
             dedup window {}, crashes {} ppm, stalls {} ppm, snapshots {} ppm, drops {} ppm; stream faults ppm: \
             unavailable {} ack-lost {} uncommitted {}",
            self.nodes,
            self.partitions,
            self.producers,
            self.steps,
            self.spec.hunts,
            self.spec.players_per_hunt,
            self.lease_ttl,
            self.payload_max,
            self.dedup_window_events,
            self.crash_ppm,
            self.stall_ppm,
            self.snapshot_ppm,
            self.drop_ppm,
            f.unavailable_ppm,
            f.ack_lost_ppm,
            f.uncommitted_ppm
        )
    }
}

/// What a cluster run did and found.
#[derive(Debug)]
pub struct ClusterReport {
    pub seed: u64,
    pub config: ClusterConfig,
    pub verdict: Verdict,
    pub events: Vec<String>,
    /// The faults the streams injected.
    pub faults: Vec<String>,
    pub takeovers: u64,
    pub messages: u64,
    pub acked: u64,
}

/// Runs cluster seed `seed`.
pub fn run_cluster(seed: u64) -> ClusterReport {
    run_cluster_with(seed, ClusterBug::None)
}

/// Runs cluster seed `seed` with a planted mistake.
pub fn run_cluster_with(seed: u64, bug: ClusterBug) -> ClusterReport {
    let config = ClusterConfig::from_seed(seed);
    let mut sim = Cluster::new(config.clone(), bug);
    let verdict = match sim.run_all() {
        Ok(()) => Verdict::Passed,
        Err(why) => {
            sim.note(format!("FAILED: {why}"));
            Verdict::Failed(why)
        }
    };
    let mut faults = Vec::new();
    let mut messages = 0;
    for s in &sim.streams {
        let s = s.lock().unwrap_or_else(|e| e.into_inner());
        faults.extend(s.log.iter().cloned());
        messages += s.history().len() as u64;
    }
    ClusterReport {
        seed,
        config,
        verdict,
        events: sim.events,
        faults,
        takeovers: sim.takeovers,
        messages,
        acked: sim.producers.iter().map(|p| p.acked.len() as u64).sum(),
    }
}

/// The first failing cluster seed of `count` from `from`, and how many ran.
pub fn first_cluster_failure(from: u64, count: u64, bug: ClusterBug) -> (Option<ClusterReport>, u64) {
    for (i, seed) in (from..from.saturating_add(count)).enumerate() {
        let report = run_cluster_with(seed, bug);
        if report.verdict.failed() {
            return (Some(report), i as u64 + 1);
        }
    }
    (None, count)
}

type Fail<T = ()> = Result<T, String>;

/// Why a rebuild stopped (`RecoverError`'s two kinds).
#[derive(Debug)]
enum RebuildError {
    Unavailable(String),
    Damaged(String),
}

/// Where an answer goes.
#[derive(Clone, Copy, Debug)]
struct Reply {
    producer: usize,
    partition: usize,
    /// The producer's connection to the partition's owner it went on.
    conn: u64,
    /// The part, by its index in the producer's parts.
    part: usize,
    node: usize,
    epoch: u64,
}

type Part = WorkPart<TreasureHunt, Reply>;

/// A producer's batch as it goes to one partition: its events there, by
/// sequence.
struct PartRec {
    partition: usize,
    seqs: Vec<u64>,
    events: Vec<HuntEvent>,
}

struct Producer {
    id: u64,
    next_seq: u64,
    parts: Vec<PartRec>,
    /// Per partition: parts not yet acknowledged, in order; how many of
    /// them are on the current connection; the connection (node, its
    /// number).
    unacked: Vec<VecDeque<usize>>,
    sent: Vec<usize>,
    conn: Vec<(Option<(usize, u64)>, u64)>,
    history: BTreeMap<u64, HuntEvent>,
    acked: BTreeSet<u64>,
    /// The outcome each acknowledged event was answered with.
    outcomes: BTreeMap<u64, HuntOutcome>,
}

struct Owned {
    epoch: u64,
    core: ShardCore<TreasureHunt>,
    log: SimLog,
    inbox: VecDeque<Part>,
}

struct Node {
    alive: bool,
    stalled_until: u32,
    down_until: u32,
    /// Its announcement (node list entry) lives until here.
    announced_until: u32,
    owned: BTreeMap<usize, Owned>,
}

#[derive(Clone, Copy, Debug, Default)]
struct LeaseEntry {
    owner: Option<usize>,
    epoch: u64,
    expires: u32,
}

struct Cluster {
    cfg: ClusterConfig,
    bug: ClusterBug,
    rng: SplitMix64,
    generator: Generator,
    setup: VecDeque<HuntEvent>,
    streams: Vec<Arc<Mutex<SimStream>>>,
    leases: Vec<LeaseEntry>,
    /// The epoch of the owner that last fenced (and so serves) each
    /// partition.
    serving: Vec<u64>,
    nodes: Vec<Node>,
    producers: Vec<Producer>,
    hub: Hub<TreasureHunt>,
    hub_stamp: std::time::Instant,
    step: u32,
    settling: bool,
    takeovers: u64,
    events: Vec<String>,
}

impl Cluster {
    fn new(cfg: ClusterConfig, bug: ClusterBug) -> Self {
        let mut generator = Generator::new(&cfg.spec);
        let setup = generator.setup().into();
        let partitions = cfg.partitions as usize;
        let streams = (0..cfg.partitions)
            .map(|p| {
                let seed = mix64(cfg.seed ^ STREAM_CLUSTER_LOG ^ (u64::from(p) << 40));
                Arc::new(Mutex::new(SimStream::new(p, seed, cfg.faults)))
            })
            .collect();
        let producers = (0..cfg.producers)
            .map(|i| Producer {
                id: 100 + u64::from(i),
                next_seq: 1,
                parts: Vec::new(),
                unacked: vec![VecDeque::new(); partitions],
                sent: vec![0; partitions],
                conn: vec![(None, 0); partitions],
                history: BTreeMap::new(),
                acked: BTreeSet::new(),
                outcomes: BTreeMap::new(),
            })
            .collect();
        let nodes = (0..cfg.nodes)
            .map(|_| Node { alive: true, stalled_until: 0, down_until: 0, announced_until: 0, owned: BTreeMap::new() })
            .collect();
        Self {
            rng: SplitMix64::new(mix64(cfg.seed ^ STREAM_CLUSTER_RUN)),
            generator,
            setup,
            streams,
            leases: vec![LeaseEntry::default(); partitions],
            serving: vec![0; partitions],
            nodes,
            producers,
            hub: Hub::default(),
            hub_stamp: std::time::Instant::now(), // not an input: the hub's latency histogram only
            step: 0,
            settling: false,
            takeovers: 0,
            events: Vec::new(),
            bug,
            cfg,
        }
    }

    fn note(&mut self, what: String) {
        self.events.push(format!("step {}: {what}", self.step));
    }

    fn core_config(&self) -> CoreConfig {
        CoreConfig {
            worlds_max: WORLDS_MAX,
            dedup_window_events: self.cfg.dedup_window_events,
            dedup_producers_max: PRODUCERS_MAX as usize,
            journaled: true,
            snapshot_interval: None,
        }
    }

    fn now_us(&self) -> u64 {
        u64::from(self.step) * 1000
    }

    fn run_all(&mut self) -> Fail {
        while self.step < self.cfg.steps {
            self.step += 1;
            self.faults();
            self.producers_send(true);
            self.nodes_act()?;
        }
        // Every fault off; the cluster must settle with everything sent
        // acknowledged.
        self.settling = true;
        for s in &self.streams {
            s.lock().unwrap_or_else(|e| e.into_inner()).set_faults(StreamFaults::default());
        }
        self.note("last step: faults off, settling".into());
        let end = self.step + SETTLE_STEPS_MAX;
        loop {
            let settled = self.producers.iter().all(|p| p.unacked.iter().all(VecDeque::is_empty))
                && (0..self.cfg.partitions as usize).all(|p| self.owner_of(p).is_some());
            if settled {
                break;
            }
            if self.step >= end {
                return Err(format!("the cluster did not settle in {SETTLE_STEPS_MAX} steps without faults"));
            }
            self.step += 1;
            self.faults();
            self.producers_send(false);
            self.nodes_act()?;
        }
        self.final_checks()
    }

    /// Crashes, stalls and comebacks.
    fn faults(&mut self) {
        for n in 0..self.nodes.len() {
            let node = &mut self.nodes[n];
            if !node.alive {
                if node.down_until <= self.step || self.settling {
                    node.alive = true;
                    node.announced_until = 0;
                    self.note(format!("node {n} restarts, owning nothing"));
                }
                continue;
            }
            if self.settling {
                node.stalled_until = node.stalled_until.min(self.step);
                continue;
            }
            if node.stalled_until > self.step {
                continue;
            }
            if chance(&mut self.rng, self.cfg.crash_ppm) {
                let down = 1 + self.rng.below(2 * self.cfg.lease_ttl);
                let node = &mut self.nodes[n];
                node.alive = false;
                node.owned.clear();
                node.down_until = self.step + down;
                self.note(format!("node {n} crashes (its state lost), down {down} steps"));
            } else if chance(&mut self.rng, self.cfg.stall_ppm) {
                let stall = 1 + self.rng.below(3 * self.cfg.lease_ttl);
                self.nodes[n].stalled_until = self.step + stall;
                let past = if stall > self.cfg.lease_ttl { " (past its lease)" } else { "" };
                self.note(format!("node {n} stalls {stall} steps{past}"));
            }
        }
    }

    /// The node a producer's map names as `partition`'s owner, and its
    /// epoch, if it serves it (a stalled node still takes batches into its
    /// queue). A shard lost and taken again by the same node is another
    /// owner: its producers were told, and resend.
    fn owner_of(&self, partition: usize) -> Option<(usize, u64)> {
        let lease = self.leases[partition];
        let n = lease.owner?;
        let node = &self.nodes[n];
        (node.alive && node.owned.get(&partition).is_some_and(|o| o.epoch == lease.epoch)).then_some((n, lease.epoch))
    }

    fn next_event(&mut self) -> HuntEvent {
        self.setup.pop_front().unwrap_or_else(|| self.generator.next_event())
    }

    fn producers_send(&mut self, new: bool) {
        let partitions = self.cfg.partitions as usize;
        for i in 0..self.producers.len() {
            let n = if new { self.rng.below(self.cfg.send_max + 1) } else { 0 };
            if n > 0 {
                let events: Vec<HuntEvent> = (0..n).map(|_| self.next_event()).collect();
                let p = &mut self.producers[i];
                let first = p.next_seq;
                p.next_seq += u64::from(n);
                let mut split: Vec<PartRec> = (0..partitions)
                    .map(|partition| PartRec { partition, seqs: Vec::new(), events: Vec::new() })
                    .collect();
                for (k, e) in events.into_iter().enumerate() {
                    let seq = first + k as u64;
                    p.history.insert(seq, e);
                    let part = &mut split[shard_of(TreasureHunt::world_of(&e), partitions)];
                    part.seqs.push(seq);
                    part.events.push(e);
                }
                for part in split.into_iter().filter(|s| !s.seqs.is_empty()) {
                    p.unacked[part.partition].push_back(p.parts.len());
                    p.parts.push(part);
                }
            }
            if chance(&mut self.rng, if self.settling { 0 } else { self.cfg.drop_ppm }) {
                let p = &mut self.producers[i];
                for c in &mut p.conn {
                    *c = (None, c.1 + 1);
                }
                let id = p.id;
                self.note(format!("producer {id}'s connections drop: it resends every unanswered batch"));
            }
            for partition in 0..partitions {
                let owner = self.owner_of(partition);
                let p = &mut self.producers[i];
                if p.conn[partition].0 != owner {
                    // A new owner (or none): resend every unanswered batch
                    // with its original sequences.
                    p.conn[partition] = (owner, p.conn[partition].1 + 1);
                    p.sent[partition] = 0;
                }
                let Some((n, epoch)) = owner else { continue };
                let conn = p.conn[partition].1;
                while let Some(&part) = p.unacked[partition].get(p.sent[partition]) {
                    let owned = self.nodes[n].owned.get_mut(&partition).expect("the owner serves it");
                    if owned.inbox.len() >= INBOX_PARTS_MAX {
                        break; // BUSY: sent again next step.
                    }
                    let rec = &p.parts[part];
                    let first_seq = rec.seqs[0];
                    let contiguous = rec.seqs.iter().enumerate().all(|(k, &s)| s == first_seq + k as u64);
                    let positions = (!contiguous)
                        .then(|| Arc::new(rec.seqs.iter().map(|&s| (s - first_seq) as u32).collect::<Vec<u32>>()));
                    let events = rec.events.iter().map(|&event| Stamped { time_us: 0, event }).collect();
                    let reply = Reply { producer: i, partition, conn, part, node: n, epoch };
                    owned.inbox.push_back(WorkPart::new(
                        reply,
                        Origin { producer: p.id, first_seq },
                        positions,
                        events,
                    ));
                    p.sent[partition] += 1;
                }
            }
        }
    }

    fn nodes_act(&mut self) -> Fail {
        for n in 0..self.nodes.len() {
            let node = &self.nodes[n];
            if !node.alive || node.stalled_until > self.step {
                continue;
            }
            // The journal threads run apart from the node's tick: a node
            // back from a stall applies and appends what it holds before
            // it finds its leases gone.
            let serve_first = self.rng.below(2) == 0;
            if serve_first {
                self.serve(n)?;
            }
            self.tick(n)?;
            if !serve_first {
                self.serve(n)?;
            }
        }
        Ok(())
    }

    /// The node's tick (trove-cluster node.rs `tick`): announce, renew,
    /// give up what it lost, balance.
    fn tick(&mut self, n: usize) -> Fail {
        let (step, ttl) = (self.step, self.cfg.lease_ttl);
        self.nodes[n].announced_until = step + ttl;
        let owned: Vec<(usize, u64)> = self.nodes[n].owned.iter().map(|(&p, o)| (p, o.epoch)).collect();
        for (p, epoch) in owned {
            let lease = &mut self.leases[p];
            if lease.owner == Some(n) && lease.epoch == epoch && lease.expires > step {
                lease.expires = step + ttl;
            } else {
                self.nodes[n].owned.remove(&p);
                self.note(format!("node {n} lost the lease of partition {p} (epoch {epoch}): it drops the shard"));
            }
        }
        let alive = self.nodes.iter().filter(|x| x.alive && x.announced_until > step).count().max(1);
        let partitions = self.cfg.partitions as usize;
        let target = partitions.div_ceil(alive);
        let held = self.nodes[n].owned.len();
        if held < target {
            for k in 0..partitions {
                let p = (n + k) % partitions;
                if self.nodes[n].owned.len() >= target {
                    break;
                }
                let lease = self.leases[p];
                let free = lease.owner.is_none() || lease.expires <= step;
                if free && !self.nodes[n].owned.contains_key(&p) {
                    self.take_over(n, p)?;
                }
            }
        } else if held > target && self.leases.iter().all(|l| l.owner.is_some() && l.expires > step) {
            let p = *self.nodes[n].owned.keys().next_back().expect("held");
            self.hand_over(n, p);
        }
        Ok(())
    }

    /// Acquire, rebuild from snapshot and stream, fence, serve.
    fn take_over(&mut self, n: usize, p: usize) -> Fail {
        let lease = &mut self.leases[p];
        lease.epoch += 1;
        *lease = LeaseEntry { owner: Some(n), epoch: lease.epoch, expires: self.step + self.cfg.lease_ttl };
        let epoch = lease.epoch;
        let stream = Arc::clone(&self.streams[p]);
        for _ in 0..FENCE_ATTEMPTS_MAX {
            let (rebuilt, last, replayed) = match self.rebuild(p) {
                Ok(r) => r,
                Err(RebuildError::Unavailable(why)) => {
                    self.release(p, n, epoch);
                    self.note(format!("node {n}: taking partition {p} over (epoch {epoch}): {why}"));
                    return Ok(());
                }
                Err(RebuildError::Damaged(why)) => {
                    return Err(format!("partition {p} cannot be rebuilt (epoch {epoch}): {why}"));
                }
            };
            let fenced = if self.bug == ClusterBug::SkipFence {
                Ok(last)
            } else {
                let id = trove_cluster::log::fence_msg_id(epoch);
                stream.lock().unwrap_or_else(|e| e.into_inner()).append(last, None, Vec::new(), id, Some(epoch), epoch)
            };
            // The rebuild is what a replay of the whole stream to `last`
            // makes: the snapshot and the purge lost nothing.
            let full = self.replay_hash(p, last)?;
            if rebuilt.state().state_hash() != full {
                return Err(format!(
                    "partition {p}: a rebuild from snapshot and stream to {last} hashes to {:016x}, a replay of the \
                     stream from 1 to {full:016x}",
                    rebuilt.state().state_hash()
                ));
            }
            match fenced {
                Ok(fence) => {
                    let fence_id = (self.bug != ClusterBug::SkipFence).then(|| trove_cluster::log::fence_msg_id(epoch));
                    let log = SimLog::new(
                        Arc::clone(&stream),
                        p as u32,
                        epoch,
                        fence,
                        fence_id,
                        self.cfg.payload_max,
                        self.bug,
                    );
                    let core = rebuilt.into_core(self.core_config());
                    self.nodes[n].owned.insert(p, Owned { epoch, core, log, inbox: VecDeque::new() });
                    self.serving[p] = self.serving[p].max(epoch);
                    self.takeovers += 1;
                    self.note(format!(
                        "node {n} serves partition {p} (epoch {epoch}, fence at {fence}, {replayed} messages replayed)"
                    ));
                    return Ok(());
                }
                Err(StreamError::Fenced { .. }) => {
                    self.note(format!("node {n}: partition {p}'s fence for epoch {epoch} refused: reading again"));
                }
                Err(StreamError::Unavailable(why)) => {
                    self.release(p, n, epoch);
                    self.note(format!("node {n}: fencing partition {p} (epoch {epoch}): {why}"));
                    return Ok(());
                }
            }
        }
        self.release(p, n, epoch);
        self.note(format!("node {n}: partition {p} kept moving under {FENCE_ATTEMPTS_MAX} fences"));
        Ok(())
    }

    fn release(&mut self, p: usize, n: usize, epoch: u64) {
        let lease = &mut self.leases[p];
        if lease.owner == Some(n) && lease.epoch == epoch {
            lease.owner = None;
        }
    }

    /// `recover_partition` on the model: the snapshot, then every message
    /// after it through `decode_message` and the real `Rebuild`; checked
    /// against a replay of the whole history.
    fn rebuild(&mut self, p: usize) -> Result<(Rebuild<TreasureHunt>, u64, u64), RebuildError> {
        let mut rebuilt = Rebuild::<TreasureHunt>::new(p, self.core_config());
        let mut stream = self.streams[p].lock().unwrap_or_else(|e| e.into_inner());
        let mut from = 1;
        if let Some(bytes) = stream.snapshot() {
            let bytes = bytes.to_vec();
            let (meta, _) = rebuilt.load_snapshot(&bytes).map_err(RebuildError::Damaged)?;
            from = meta.next_batch.max(1);
        }
        // As `recover_partition`: a stream that starts past the snapshot
        // lost messages nothing holds.
        let (first, last) = stream.bounds();
        if first > from && last >= first {
            return Err(RebuildError::Damaged(format!(
                "the stream starts at {first} but the snapshot covers only what is below {from}"
            )));
        }
        let (messages, last) = stream.read(from).map_err(|e| RebuildError::Unavailable(e.to_string()))?;
        drop(stream);
        let mut entries = Vec::new();
        let mut replayed = 0;
        for m in messages.iter().filter(|m| m.fence.is_none()) {
            trove_cluster::recover::decode_message::<HuntEvent>(m.seq, &m.payload, &mut entries)
                .map_err(RebuildError::Damaged)?;
            rebuilt.apply(&entries);
            replayed += 1;
        }
        Ok((rebuilt, last, replayed))
    }

    /// The state hash of a replay of partition `p`'s whole history, every
    /// message to `last`.
    fn replay_hash(&self, p: usize, last: u64) -> Fail<u64> {
        let stream = self.streams[p].lock().unwrap_or_else(|e| e.into_inner());
        let mut replay = GameState::<TreasureHunt>::new(WORLDS_MAX);
        let (mut out, mut entries) = (Outcomes::default(), Vec::new());
        for m in stream.history().range(..=last).map(|(_, m)| m).filter(|m| m.fence.is_none()) {
            trove_cluster::recover::decode_message::<HuntEvent>(m.seq, &m.payload, &mut entries)
                .map_err(|e| format!("partition {p}: {e}"))?;
            let stamped: Vec<Stamped<HuntEvent>> = entries.iter().map(|e| e.stamped).collect();
            replay.apply(&stamped, &mut out);
            out.clear();
        }
        Ok(replay.state_hash())
    }

    /// A clean hand-over: a snapshot, then the lease released.
    fn hand_over(&mut self, n: usize, p: usize) {
        let mut owned = self.nodes[n].owned.remove(&p).expect("held");
        let snap = owned.core.snapshot(Duration::from_micros(self.now_us()));
        let mut snap = Some(snap);
        let r = owned.log.snapshot(&mut |next| snap.take().expect("once").encode(p as u32, next));
        let how = match r {
            Ok(bytes) => format!("snapshot of {bytes} B"),
            Err(e) => format!("no snapshot: {e}"),
        };
        self.release(p, n, owned.epoch);
        self.note(format!("node {n} hands partition {p} over (epoch {}, {how})", owned.epoch));
    }

    /// Each partition the node serves: drain its queue into the real core,
    /// hand the batch to the log, write and sync it, release the answers.
    fn serve(&mut self, n: usize) -> Fail {
        let owned: Vec<usize> = self.nodes[n].owned.keys().copied().collect();
        let now = self.now_us();
        for p in owned {
            let mut o = self.nodes[n].owned.remove(&p).expect("listed");
            let mut work: Vec<Part> = Vec::new();
            let mut events = 0;
            while events < self.cfg.batch_events_max as usize {
                let Some(part) = o.inbox.pop_front() else { break };
                events += part.events().len();
                work.push(part);
            }
            let mut keep = true;
            if !work.is_empty() {
                if o.core.apply(&mut work, Some(now)).is_err() {
                    return Err("the core failed without a log error".into());
                }
                o.core.publish(&self.hub, self.hub_stamp);
                let batch = match o.core.hand_off(&mut work) {
                    Handoff::Journal(batch) => batch,
                    Handoff::Deliver(_) => return Err("a journaled core answered without its log".into()),
                };
                if !batch.parts.is_empty() {
                    let runs: Vec<Run<'_>> = batch.sources.iter().map(|s| s.run()).collect();
                    ShardLog::<HuntEvent>::append(&mut o.log, &runs, &batch.parts, batch.time_us);
                }
                let synced =
                    ShardLog::<HuntEvent>::write(&mut o.log).and_then(|_| ShardLog::<HuntEvent>::sync(&mut o.log));
                match synced {
                    Ok(appended) => self.release_answers(n, p, o.epoch, appended, batch.waiting)?,
                    Err(e) => {
                        let what = match e.kind {
                            LogErrorKind::Fenced => "fenced",
                            LogErrorKind::Unavailable => "unavailable",
                            LogErrorKind::Io => return Err(format!("a stream's log said Io: {e}")),
                        };
                        self.note(format!(
                            "node {n}: partition {p}'s log {what} (epoch {}): the shard is lost, its answers never \
                             released ({e})",
                            o.epoch
                        ));
                        keep = false;
                    }
                }
            }
            if keep && chance(&mut self.rng, if self.settling { 0 } else { self.cfg.snapshot_ppm }) {
                let snap = o.core.snapshot(Duration::from_micros(now));
                let mut snap = Some(snap);
                match o.log.snapshot(&mut |next| snap.take().expect("once").encode(p as u32, next)) {
                    Ok(bytes) => {
                        self.note(format!("node {n}: partition {p} snapshot at {} ({bytes} B)", o.log.last() + 1))
                    }
                    Err(e) => {
                        self.note(format!("node {n}: partition {p}'s snapshot failed: {e}: the shard is lost"));
                        keep = false;
                    }
                }
            }
            if keep {
                self.nodes[n].owned.insert(p, o);
            } else {
                // As the node's tick does with a lost shard: release.
                self.release(p, n, o.epoch);
            }
        }
        Ok(())
    }

    /// Answers released at the log's durability point (`appended`: the
    /// sync acknowledged appends): checked, then to their producers (lost
    /// if on a connection since dropped).
    fn release_answers(
        &mut self,
        n: usize,
        p: usize,
        epoch: u64,
        appended: bool,
        answers: Vec<Answer<TreasureHunt, Reply>>,
    ) -> Fail {
        // A deposed owner may still answer retries of what it made durable
        // before (nothing appended: their outcomes stand), never have an
        // append acknowledged.
        if appended && self.serving[p] > epoch {
            return Err(format!(
                "node {n}, deposed from partition {p} (epoch {epoch}), had an append acknowledged after epoch {} \
                 took the partition over (and fenced it)",
                self.serving[p]
            ));
        }
        let duplicate = TreasureHunt::duplicate_outcome();
        for a in answers {
            let r = a.reply;
            debug_assert_eq!((r.node, r.epoch, r.partition), (n, epoch, p));
            let prod = &mut self.producers[r.producer];
            let rec = &prod.parts[r.part];
            if a.outcomes.len() != rec.seqs.len() {
                return Err(format!(
                    "producer {}: {} outcomes for {} events",
                    prod.id,
                    a.outcomes.len(),
                    rec.seqs.len()
                ));
            }
            for (&seq, o) in rec.seqs.iter().zip(a.outcomes.iter()) {
                match prod.outcomes.get(&seq) {
                    Some(first) if first != o && *o != duplicate => {
                        return Err(format!(
                            "producer {}: event {seq} answered {o:?}, first answered {first:?}: a retry must get its \
                             original outcome",
                            prod.id
                        ));
                    }
                    Some(_) => {}
                    None if *o == duplicate => {}
                    None => {
                        prod.outcomes.insert(seq, *o);
                    }
                }
            }
            if prod.conn[p] != (Some((n, epoch)), r.conn) {
                continue; // the connection it went on is gone
            }
            // Answers on one connection come in the order sent.
            if prod.unacked[p].front() != Some(&r.part) {
                return Err(format!(
                    "producer {}: partition {p}'s answer to part {} arrived while its oldest unanswered is {:?}",
                    prod.id,
                    r.part,
                    prod.unacked[p].front()
                ));
            }
            prod.unacked[p].pop_front();
            prod.sent[p] -= 1;
            let seqs = prod.parts[r.part].seqs.clone();
            prod.acked.extend(seqs);
        }
        Ok(())
    }

    /// After settling: the streams against what was acknowledged and what
    /// the owners hold.
    fn final_checks(&mut self) -> Fail {
        let partitions = self.cfg.partitions as usize;
        for p in 0..partitions {
            let history: Vec<_> = {
                let s = self.streams[p].lock().unwrap_or_else(|e| e.into_inner());
                s.history().values().cloned().collect()
            };
            // Exactly once, in order: each producer's events on `p`.
            let mut held: Vec<Vec<u64>> = vec![Vec::new(); self.producers.len()];
            let mut replay = GameState::<TreasureHunt>::new(WORLDS_MAX);
            let mut out = Outcomes::default();
            let mut entries = Vec::new();
            let mut last_fence = 0;
            for m in &history {
                if let Some(e) = m.fence {
                    if e <= last_fence {
                        return Err(format!("partition {p}: fence {e} after fence {last_fence}"));
                    }
                    last_fence = e;
                    continue;
                }
                if m.writer_epoch < last_fence {
                    return Err(format!(
                        "partition {p}: message {} of epoch {} landed after epoch {last_fence}'s fence",
                        m.seq, m.writer_epoch
                    ));
                }
                trove_cluster::recover::decode_message::<HuntEvent>(m.seq, &m.payload, &mut entries)
                    .map_err(|e| format!("partition {p}: {e}"))?;
                for e in &entries {
                    let i = (e.producer - 100) as usize;
                    let sent = self.producers[i].history.get(&e.producer_seq);
                    if sent != Some(&e.stamped.event) {
                        return Err(format!(
                            "partition {p}: message {} holds producer {}'s event {} as {:?}, it sent {sent:?}",
                            m.seq, e.producer, e.producer_seq, e.stamped.event
                        ));
                    }
                    if held[i].last().is_some_and(|&l| l >= e.producer_seq) {
                        return Err(format!(
                            "partition {p}: message {} holds producer {}'s event {} after its event {:?}: applied \
                             twice or out of order",
                            m.seq,
                            e.producer,
                            e.producer_seq,
                            held[i].last()
                        ));
                    }
                    held[i].push(e.producer_seq);
                }
                let stamped: Vec<Stamped<HuntEvent>> = entries.iter().map(|e| e.stamped).collect();
                replay.apply(&stamped, &mut out);
                out.clear();
            }
            for (i, prod) in self.producers.iter().enumerate() {
                let on_p: Vec<u64> =
                    prod.parts.iter().filter(|r| r.partition == p).flat_map(|r| r.seqs.iter().copied()).collect();
                let missing: Vec<u64> = on_p.iter().copied().filter(|s| held[i].binary_search(s).is_err()).collect();
                let lost: Vec<u64> = missing.iter().copied().filter(|s| prod.acked.contains(s)).collect();
                if !lost.is_empty() {
                    return Err(format!(
                        "partition {p}: producer {}'s acknowledged events {lost:?} are not in the stream",
                        prod.id
                    ));
                }
                if !missing.is_empty() {
                    return Err(format!(
                        "partition {p}: producer {}'s events {missing:?} are not in the stream after settling",
                        prod.id
                    ));
                }
            }
            // The owner's state is a replay of the whole stream.
            let owner = self.nodes.iter().find_map(|x| x.owned.get(&p).filter(|o| o.epoch == self.serving[p]));
            let Some(owned) = owner else { return Err(format!("partition {p} has no owner after settling")) };
            if owned.core.state().state_hash() != replay.state_hash() {
                return Err(format!(
                    "partition {p}: the owner's state hashes to {:016x}, a replay of its stream from 1 to {:016x}",
                    owned.core.state().state_hash(),
                    replay.state_hash()
                ));
            }
            if let Err(e) = owned.core.state().check() {
                return Err(format!("partition {p}: the owner's state breaks the rules' invariants: {e}"));
            }
            // And a rebuild from the snapshot and the stream, as the next
            // takeover would make it.
            let (rebuilt, _, _) = self.rebuild(p).map_err(|e| format!("partition {p}: {e:?}"))?;
            if rebuilt.state().state_hash() != replay.state_hash() {
                return Err(format!("partition {p}: a rebuild from snapshot and stream differs from a full replay"));
            }
        }
        Ok(())
    }
}
