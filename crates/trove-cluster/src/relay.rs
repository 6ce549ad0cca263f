//! Spectators on any node: a partition's updates relayed over core NATS
//! (docs/cluster.md, "Spectators on any node";
//! docs/decisions/0046-spectators-relayed-over-nats.md).
//!
//! Two sides, both on every node, both on the NATS runtime (the shard
//! threads never see NATS):
//!
//! - **Relaying** (a node with a local subscriber of a hunt in a partition
//!   it does not own): it subscribes to the partition's updates subject
//!   (one NATS subscription per partition, kept while some local
//!   subscriber watches a hunt of it), announces which hunts it watches on
//!   the partition's watch subject (at once on a change, then every
//!   [`INTEREST_INTERVAL`]), and injects what arrives into its hub
//!   ([`Hub::inject`]), where the connections' mailboxes take it as they
//!   take a local shard's chunks.
//! - **Publishing** (the owner): one [`Mailbox`], subscribed in the hub to
//!   every hunt some node announced interest in (until the interest is not
//!   renewed for [`INTEREST_TTL`]); its chunks are encoded once
//!   ([`encode_updates`]) and published on the partition's updates
//!   subject. A slow or absent NATS fills that mailbox, which loses chunks
//!   like any slow subscriber: the relays see gaps, the shard nothing.
//!
//! Numbering: a message carries the owner's lease epoch and its hub's
//! sequence numbers. A relay keeps, per hunt, the epoch and the next
//! number it expects: a number skipped is injected as a gap of that many,
//! a message from before (reordered, or a deposed owner's) is dropped (its
//! numbers were already reported missing or delivered), and a higher epoch
//! (a new owner) is injected as a gap of one: the count lost at an owner
//! change is not known, so every owner change is a gap. The same gap of
//! one is injected when this node's own ownership of a partition changes
//! ([`Relay::owner_changed`]), and the node never injects a partition it
//! owns (checked under the same lock as that change), so a subscriber on
//! the owner gets each update once.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use trove_core::WorldId;
use trove_core::placement::shard_of;
use trove_proto::wire::{decode_entries, push_applied, push_broadcast};
use trove_proto::{UpdateEntry, WireGame};
use trove_shard::updates::{Delivery, Hub, Mailbox, Update};

use crate::error::ClusterError;
use crate::names::Names;
use crate::task::{spawn_named, spawn_named_on};

/// The first byte of every relay message; a message with another is
/// refused (a node of another version).
pub const RELAY_VERSION: u8 = 1;

/// Message kinds (the second byte).
mod kind {
    /// Updates `first_seq ..` of a hunt, as protocol entries.
    pub const UPDATES: u8 = 1;
    /// Updates `first_seq .. first_seq + count` of a hunt were lost on the
    /// owner (its relay mailbox fell behind).
    pub const MISSED: u8 = 2;
    /// The hunts a node watches in a partition.
    pub const WATCH: u8 = 3;
}

/// Version, kind, epoch (u64), hunt (u32), first number (u64), count (u32).
pub const HEADER_BYTES: usize = 1 + 1 + 8 + 4 + 8 + 4;

/// A relay message is at most this long: a publisher splits a larger
/// chunk, and a relay refuses a longer one without reading it.
pub const RELAY_MESSAGE_BYTES_MAX: usize = 256 * 1024;

/// A publisher starts a new message once one is this long (the next entry
/// may add a broadcast of up to 64 KiB).
const SPLIT_AT_BYTES: usize = RELAY_MESSAGE_BYTES_MAX - (4 + u16::MAX as usize) - HEADER_BYTES;

/// The relay's NATS subscriptions each hold at most this many messages not
/// yet taken (async-nats's pending limit): a relay that falls further
/// behind loses messages, which its subscribers see as gaps.
pub const RELAY_PENDING_MESSAGES_MAX: usize = 1024;

/// The publisher's mailbox holds at most this many updates: a NATS that
/// does not take them fast enough costs relays gaps, not memory.
pub const RELAY_MAILBOX_UPDATES_MAX: usize = 1 << 16;

/// A relay announces the hunts it watches this often (and at once when
/// they change).
pub const INTEREST_INTERVAL: Duration = Duration::from_millis(500);

/// An owner publishes a hunt until no node has announced interest in it
/// for this long.
pub const INTEREST_TTL: Duration = Duration::from_secs(3);

/// One watch message names at most this many hunts (more are split).
pub const WATCH_WORLDS_PER_MESSAGE_MAX: usize = 8192;

/// An owner publishes at most this many hunts at once (announcements
/// beyond it are ignored: the watchers see nothing rather than the owner
/// growing without bound on outside messages).
pub const EXPORTED_WORLDS_MAX: usize = 1 << 16;

/// A gap injected for a jump in numbers is reported as at most this many
/// (a hostile number cannot push a hub's sequence to its end).
pub const RELAY_GAP_MAX: u64 = 1 << 40;

/// Publishing one message, or subscribing, waits at most this long.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(2);

/// A relay message that does not decode: the bytes came from the network.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RelayDecodeError {
    #[error("a relay message of {bytes} bytes is longer than {RELAY_MESSAGE_BYTES_MAX}")]
    TooLong { bytes: usize },
    #[error("a relay message of {bytes} bytes is shorter than its header")]
    Truncated { bytes: usize },
    #[error("relay message version {0} (this node speaks {RELAY_VERSION})")]
    Version(u8),
    #[error("unknown relay message kind {0}")]
    Kind(u8),
    #[error("a relay message announces {announced} entries and holds {held}")]
    Count { announced: u64, held: u64 },
    #[error("a relay message's entries: {0}")]
    Entries(String),
}

/// A decoded updates or missed message.
#[derive(Debug)]
pub struct Relayed<G: WireGame> {
    /// The publishing owner's lease epoch for the partition.
    pub epoch: u64,
    pub world: WorldId,
    pub first_seq: u64,
    /// Numbers `first_seq .. first_seq + missed` lost on the owner (a
    /// missed message; 0 for updates).
    pub missed: u64,
    pub updates: Vec<Update<G>>,
}

impl<G: WireGame> Relayed<G> {
    /// The number after this message's last.
    fn end(&self) -> u64 {
        self.first_seq.saturating_add(self.missed).saturating_add(self.updates.len() as u64)
    }
}

fn push_header(out: &mut Vec<u8>, kind: u8, epoch: u64, world: WorldId, first: u64, count: u32) {
    out.push(RELAY_VERSION);
    out.push(kind);
    out.extend_from_slice(&epoch.to_le_bytes());
    out.extend_from_slice(&world.to_le_bytes());
    out.extend_from_slice(&first.to_le_bytes());
    out.extend_from_slice(&count.to_le_bytes());
}

/// Encodes `updates` (numbered from `first_seq`) as one message or more,
/// each at most [`RELAY_MESSAGE_BYTES_MAX`]; calls `emit` with each.
pub fn encode_updates<G: WireGame>(
    epoch: u64,
    world: WorldId,
    first_seq: u64,
    updates: &[Update<G>],
    mut emit: impl FnMut(Vec<u8>),
) {
    let mut at = 0;
    while at < updates.len() {
        let mut out = Vec::with_capacity(HEADER_BYTES + 64 * (updates.len() - at).min(1024));
        push_header(&mut out, kind::UPDATES, epoch, world, first_seq + at as u64, 0);
        let mut n: u32 = 0;
        while at < updates.len() && out.len() < SPLIT_AT_BYTES {
            match &updates[at] {
                Update::Applied { event, outcome } => push_applied::<G>(&mut out, event, outcome),
                Update::Broadcast(b) => push_broadcast::<G>(&mut out, b),
            }
            at += 1;
            n += 1;
        }
        out[HEADER_BYTES - 4..HEADER_BYTES].copy_from_slice(&n.to_le_bytes());
        debug_assert!(out.len() <= RELAY_MESSAGE_BYTES_MAX);
        emit(out);
    }
}

/// Encodes a missed message: numbers `first .. first + missed` were lost.
pub fn encode_missed(epoch: u64, world: WorldId, first: u64, missed: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_BYTES);
    push_header(&mut out, kind::MISSED, epoch, world, first, missed.min(u64::from(u32::MAX)) as u32);
    out
}

/// Decodes an updates or missed message. Everything is checked: length,
/// version, kind, the entries and their count; nothing panics and
/// nothing is allocated beyond what the (bounded) bytes hold.
pub fn decode<G: WireGame>(bytes: &[u8]) -> Result<Relayed<G>, RelayDecodeError> {
    if bytes.len() > RELAY_MESSAGE_BYTES_MAX {
        return Err(RelayDecodeError::TooLong { bytes: bytes.len() });
    }
    if bytes.len() < HEADER_BYTES {
        return Err(RelayDecodeError::Truncated { bytes: bytes.len() });
    }
    if bytes[0] != RELAY_VERSION {
        return Err(RelayDecodeError::Version(bytes[0]));
    }
    let u64_at = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
    let u32_at = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
    let (epoch, world, first_seq, count) = (u64_at(2), u32_at(10), u64_at(14), u32_at(22));
    let entries = &bytes[HEADER_BYTES..];
    match bytes[1] {
        kind::UPDATES => {
            let decoded = decode_entries::<G>(entries).map_err(|e| RelayDecodeError::Entries(e.to_string()))?;
            if decoded.len() as u64 != u64::from(count) || decoded.is_empty() {
                return Err(RelayDecodeError::Count { announced: u64::from(count), held: decoded.len() as u64 });
            }
            let updates = decoded
                .into_iter()
                .map(|e| match e {
                    UpdateEntry::Applied { event, outcome } => Update::Applied { event, outcome },
                    UpdateEntry::Broadcast(b) => Update::Broadcast(b),
                })
                .collect();
            Ok(Relayed { epoch, world, first_seq, missed: 0, updates })
        }
        kind::MISSED => {
            if !entries.is_empty() || count == 0 {
                return Err(RelayDecodeError::Count { announced: u64::from(count), held: entries.len() as u64 });
            }
            Ok(Relayed { epoch, world, first_seq, missed: u64::from(count), updates: Vec::new() })
        }
        other => Err(RelayDecodeError::Kind(other)),
    }
}

/// Encodes watch messages: the hunts a node watches in partition `p`.
pub fn encode_watch(p: u32, worlds: &[WorldId], mut emit: impl FnMut(Vec<u8>)) {
    for part in worlds.chunks(WATCH_WORLDS_PER_MESSAGE_MAX) {
        let mut out = Vec::with_capacity(10 + 4 * part.len());
        out.extend_from_slice(&[RELAY_VERSION, kind::WATCH]);
        out.extend_from_slice(&p.to_le_bytes());
        out.extend_from_slice(&(part.len() as u32).to_le_bytes());
        for w in part {
            out.extend_from_slice(&w.to_le_bytes());
        }
        emit(out);
    }
}

/// Decodes a watch message: its partition and hunts.
pub fn decode_watch(bytes: &[u8]) -> Result<(u32, Vec<WorldId>), RelayDecodeError> {
    if bytes.len() > 10 + 4 * WATCH_WORLDS_PER_MESSAGE_MAX {
        return Err(RelayDecodeError::TooLong { bytes: bytes.len() });
    }
    if bytes.len() < 10 {
        return Err(RelayDecodeError::Truncated { bytes: bytes.len() });
    }
    if bytes[0] != RELAY_VERSION {
        return Err(RelayDecodeError::Version(bytes[0]));
    }
    if bytes[1] != kind::WATCH {
        return Err(RelayDecodeError::Kind(bytes[1]));
    }
    let p = u32::from_le_bytes(bytes[2..6].try_into().expect("4 bytes"));
    let n = u32::from_le_bytes(bytes[6..10].try_into().expect("4 bytes"));
    let rest = &bytes[10..];
    if rest.len() as u64 != 4 * u64::from(n) {
        return Err(RelayDecodeError::Count { announced: u64::from(n), held: rest.len() as u64 / 4 });
    }
    Ok((p, rest.chunks_exact(4).map(|c| u32::from_le_bytes(c.try_into().expect("4 bytes"))).collect()))
}

/// The relay's counters (`trove_cluster_relay_*` in `/metrics`).
#[derive(Debug, Default)]
pub struct RelayMetrics {
    /// Messages published by this node as an owner, and their bytes.
    pub published: AtomicU64,
    pub published_bytes: AtomicU64,
    /// Messages that could not be published (NATS down or slow): the
    /// relays see the numbers skipped as a gap.
    pub publish_failures: AtomicU64,
    /// Chunks this node's relay mailbox lost (it fell behind).
    pub publisher_gaps: AtomicU64,
    /// Messages received as a relay.
    pub received: AtomicU64,
    /// Received messages that did not decode, or named a hunt of another
    /// partition.
    pub refused: AtomicU64,
    /// Received messages dropped as stale: from before what was already
    /// delivered or reported missing, a deposed owner's, or of a partition
    /// owned here.
    pub stale: AtomicU64,
    /// Gaps injected (numbers skipped, missed messages, owner changes).
    pub gaps: AtomicU64,
    /// Chunks injected into the hub, and their updates.
    pub chunks: AtomicU64,
    pub updates: AtomicU64,
    /// Partitions with a NATS subscription here now.
    pub partitions_relayed: AtomicU64,
    /// Hunts published by this node as an owner now.
    pub worlds_exported: AtomicU64,
}

/// Where a relay is in one hunt's stream from its owner.
#[derive(Clone, Copy, Debug)]
struct Track {
    epoch: u64,
    next_seq: u64,
}

#[derive(Debug)]
struct State {
    /// The epoch of each partition while this node owns it.
    owned: Vec<Option<u64>>,
    /// The highest epoch this node owned each partition at: a message of
    /// that epoch or lower is this node's own, or older.
    floor: Vec<u64>,
    /// Per relayed hunt (watched here): where its stream is.
    tracks: HashMap<WorldId, Track>,
    /// Hunts this node publishes as an owner: when their interest lapses.
    exported: HashMap<WorldId, Instant>,
}

struct Shared<G: WireGame> {
    client: async_nats::Client,
    names: Names,
    partitions: u32,
    hub: Arc<Hub<G>>,
    /// The publisher's mailbox, subscribed to every exported hunt.
    mailbox: Arc<Mailbox<G>>,
    state: Mutex<State>,
    /// Wakes the control loop (an ownership change).
    poke: tokio::sync::Notify,
    metrics: Arc<RelayMetrics>,
}

/// A node's relay: see the module's documentation.
pub struct Relay<G: WireGame> {
    shared: Arc<Shared<G>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl<G: WireGame> std::fmt::Debug for Relay<G> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay").field("cluster", &self.shared.names.cluster()).finish_non_exhaustive()
    }
}

impl<G: WireGame> Relay<G> {
    /// Connects the relay's own NATS connection (apart from the node's,
    /// so a burst of updates never queues before a lease renewal) to
    /// `urls`, and starts its tasks on `runtime`. `hub` is the engine's;
    /// the cluster has `partitions`.
    pub fn start(
        urls: &[String],
        names: Names,
        partitions: u32,
        hub: Arc<Hub<G>>,
        runtime: &tokio::runtime::Handle,
    ) -> Result<Relay<G>, ClusterError> {
        assert!(partitions > 0, "a cluster has partitions");
        let connect_error = |message: String| ClusterError::Connect { urls: urls.join(","), message };
        let mut addrs = Vec::with_capacity(urls.len());
        for u in urls {
            addrs.push(u.parse::<async_nats::ServerAddr>().map_err(|e| connect_error(format!("{u}: {e}")))?);
        }
        let options = async_nats::ConnectOptions::new()
            .connection_timeout(PUBLISH_TIMEOUT)
            .name(format!("trove {} relay", names.cluster()))
            .subscription_capacity(RELAY_PENDING_MESSAGES_MAX)
            .reconnect_delay_callback(|attempts| Duration::from_millis(100 * attempts.min(10) as u64));
        let client = runtime.block_on(async {
            match tokio::time::timeout(crate::CONNECT_TIMEOUT, options.connect(addrs)).await {
                Ok(Ok(c)) => Ok(c),
                Ok(Err(e)) => Err(connect_error(crate::error::chain(&e))),
                Err(_) => Err(connect_error(format!("no server answered within {:?}", crate::CONNECT_TIMEOUT))),
            }
        })?;
        let shared = Arc::new(Shared {
            client,
            names,
            partitions,
            hub,
            mailbox: Mailbox::new(RELAY_MAILBOX_UPDATES_MAX),
            state: Mutex::new(State {
                owned: vec![None; partitions as usize],
                floor: vec![0; partitions as usize],
                tracks: HashMap::new(),
                exported: HashMap::new(),
            }),
            poke: tokio::sync::Notify::new(),
            metrics: Arc::default(),
        });
        let watch = runtime.block_on(async {
            tokio::time::timeout(PUBLISH_TIMEOUT, shared.client.subscribe(shared.names.watch_subject_all())).await
        });
        let watch = match watch {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err(connect_error(format!("subscribing to the watch subject: {e}"))),
            Err(_) => return Err(connect_error("subscribing to the watch subject timed out".into())),
        };
        let tasks = vec![
            spawn_named_on(runtime, "relay control", control_loop(shared.clone())),
            spawn_named_on(runtime, "relay interest", interest_loop(shared.clone(), watch)),
            spawn_named_on(runtime, "relay publish", publish_loop(shared.clone())),
        ];
        Ok(Relay { shared, tasks })
    }

    /// The relay's counters.
    pub fn metrics(&self) -> &Arc<RelayMetrics> {
        &self.shared.metrics
    }

    /// What the node calls when its ownership of `partition` changes:
    /// `Some(epoch)` when it takes the partition (before its shard
    /// serves), `None` when it gave it up (after its shard stopped).
    pub fn owner_listener(&self) -> impl Fn(u32, Option<u64>) + Send + Sync + 'static + use<G> {
        let shared = self.shared.clone();
        move |p, here| shared.owner_changed(p, here)
    }
}

impl<G: WireGame> Drop for Relay<G> {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
        self.shared.mailbox.close();
    }
}

impl<G: WireGame> Shared<G> {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn partition_of(&self, world: WorldId) -> u32 {
        shard_of(world, self.partitions as usize) as u32
    }

    /// This node's ownership of `p` changed: every hunt of `p` watched
    /// here gets a gap (what was lost in the move is not known), and from
    /// now on relayed messages of `p` are injected only if `p` is not
    /// owned here (checked under the same lock).
    fn owner_changed(&self, p: u32, here: Option<u64>) {
        {
            let mut st = self.lock();
            let Some(&slot) = st.owned.get(p as usize) else { return };
            if slot == here {
                return;
            }
            st.owned[p as usize] = here;
            let floor = slot.unwrap_or(0).max(here.unwrap_or(0));
            st.floor[p as usize] = st.floor[p as usize].max(floor);
            st.tracks.retain(|&w, _| shard_of(w, self.partitions as usize) as u32 != p);
            let watched = self.hub.watched_worlds();
            let now = Instant::now();
            for &w in watched.iter().filter(|&&w| self.partition_of(w) == p) {
                if self.hub.inject(w, 1, Vec::new(), now) {
                    self.metrics.gaps.fetch_add(1, Relaxed);
                }
            }
        }
        self.poke.notify_one();
    }

    /// A message on partition `p`'s updates subject.
    fn receive(&self, p: u32, bytes: &[u8]) {
        self.metrics.received.fetch_add(1, Relaxed);
        let m = match decode::<G>(bytes) {
            Ok(m) if self.partition_of(m.world) == p => m,
            Ok(_) | Err(_) => {
                self.metrics.refused.fetch_add(1, Relaxed);
                return;
            }
        };
        let mut st = self.lock();
        if st.owned[p as usize].is_some() || m.epoch <= st.floor[p as usize] {
            self.metrics.stale.fetch_add(1, Relaxed);
            return;
        }
        let missed = match st.tracks.get(&m.world) {
            // The first message since this node watches the hunt (or
            // since an owner change here, already reported).
            None => 0,
            Some(t) if m.epoch < t.epoch => {
                self.metrics.stale.fetch_add(1, Relaxed);
                return;
            }
            // A new owner: its numbers are not the last one's.
            Some(t) if m.epoch > t.epoch => 1,
            Some(t) if m.first_seq < t.next_seq => {
                self.metrics.stale.fetch_add(1, Relaxed);
                return;
            }
            Some(t) => (m.first_seq - t.next_seq).min(RELAY_GAP_MAX),
        };
        let (epoch, end, n) = (m.epoch, m.end(), m.updates.len() as u64);
        let missed = missed + m.missed.min(RELAY_GAP_MAX);
        // Under the state lock: an ownership change waits for it.
        if self.hub.inject(m.world, missed, m.updates, Instant::now()) {
            st.tracks.insert(m.world, Track { epoch, next_seq: end });
            if missed > 0 {
                self.metrics.gaps.fetch_add(1, Relaxed);
            }
            if n > 0 {
                self.metrics.chunks.fetch_add(1, Relaxed);
                self.metrics.updates.fetch_add(n, Relaxed);
            }
        }
    }

    /// A watch message: hunts of a partition owned here start (or keep)
    /// being published.
    fn interest(&self, bytes: &[u8]) {
        let Ok((p, worlds)) = decode_watch(bytes) else {
            self.metrics.refused.fetch_add(1, Relaxed);
            return;
        };
        let mut st = self.lock();
        if st.owned.get(p as usize).is_none_or(Option::is_none) {
            return;
        }
        let until = Instant::now() + INTEREST_TTL;
        for w in worlds {
            if self.partition_of(w) != p {
                continue;
            }
            let fresh = !st.exported.contains_key(&w);
            if fresh && st.exported.len() >= EXPORTED_WORLDS_MAX {
                continue;
            }
            st.exported.insert(w, until);
            if fresh {
                self.hub.subscribe(w, &self.mailbox);
            }
        }
        self.metrics.worlds_exported.store(st.exported.len() as u64, Relaxed);
    }

    async fn publish(&self, subject: &str, bytes: Vec<u8>) {
        let n = bytes.len() as u64;
        let sent = tokio::time::timeout(PUBLISH_TIMEOUT, self.client.publish(subject.to_string(), bytes.into())).await;
        if matches!(sent, Ok(Ok(()))) {
            self.metrics.published.fetch_add(1, Relaxed);
            self.metrics.published_bytes.fetch_add(n, Relaxed);
        } else {
            self.metrics.publish_failures.fetch_add(1, Relaxed);
        }
    }
}

/// Follows the hunts watched here: subscribes to (and announces) the
/// partitions this node does not own, drops what nobody watches, and lets
/// an owner's lapsed interests go.
async fn control_loop<G: WireGame>(s: Arc<Shared<G>>) {
    let mut subscribed: BTreeMap<u32, tokio::task::JoinHandle<()>> = BTreeMap::new();
    let mut announced: BTreeMap<u32, Vec<WorldId>> = BTreeMap::new();
    let mut last_round = Instant::now();
    loop {
        let watched = s.hub.watched_worlds();
        let mut wanted: BTreeMap<u32, Vec<WorldId>> = BTreeMap::new();
        {
            let mut st = s.lock();
            for &w in watched.iter() {
                let p = s.partition_of(w);
                if st.owned[p as usize].is_none() {
                    wanted.entry(p).or_default().push(w);
                }
            }
            st.tracks.retain(|w, _| watched.contains(w));
            // Interests that lapsed, or of partitions no longer owned.
            let now = Instant::now();
            let State { exported, owned, .. } = &mut *st;
            let lapsed: Vec<WorldId> = exported
                .iter()
                .filter(|&(&w, &until)| until <= now || owned[shard_of(w, s.partitions as usize)].is_none())
                .map(|(&w, _)| w)
                .collect();
            for w in lapsed {
                exported.remove(&w);
                s.hub.unsubscribe(w, &s.mailbox);
            }
            s.metrics.worlds_exported.store(exported.len() as u64, Relaxed);
        }
        drop(watched);
        for worlds in wanted.values_mut() {
            worlds.sort_unstable();
        }
        // Subscriptions nobody here needs any more (dropping the NATS
        // subscriber unsubscribes).
        subscribed.retain(|p, task| {
            let keep = wanted.contains_key(p) && !task.is_finished();
            if !keep {
                task.abort();
            }
            keep
        });
        announced.retain(|p, _| wanted.contains_key(p));
        for &p in wanted.keys() {
            if subscribed.contains_key(&p) {
                continue;
            }
            let subject = s.names.updates_subject(p);
            // One that fails is tried again at the next round.
            if let Ok(Ok(mut sub)) = tokio::time::timeout(PUBLISH_TIMEOUT, s.client.subscribe(subject)).await {
                let shared = s.clone();
                let task = spawn_named(&format!("relay updates partition {p}"), async move {
                    while let Some(m) = sub.next().await {
                        shared.receive(p, &m.payload);
                    }
                });
                subscribed.insert(p, task);
            }
        }
        s.metrics.partitions_relayed.store(subscribed.len() as u64, Relaxed);
        let round = last_round.elapsed() >= INTEREST_INTERVAL;
        if round {
            last_round = Instant::now();
        }
        for (&p, worlds) in &wanted {
            if round || announced.get(&p) != Some(worlds) {
                let subject = s.names.watch_subject(p);
                let mut messages = Vec::new();
                encode_watch(p, worlds, |m| messages.push(m));
                for m in messages {
                    s.publish(&subject, m).await;
                }
                announced.insert(p, worlds.clone());
            }
        }
        let wait = INTEREST_INTERVAL.saturating_sub(last_round.elapsed()).max(Duration::from_millis(10));
        tokio::select! {
            () = s.hub.topics_changed().notified() => {}
            () = s.poke.notified() => {}
            () = tokio::time::sleep(wait) => {}
        }
    }
}

/// Takes watch messages for the partitions owned here.
async fn interest_loop<G: WireGame>(s: Arc<Shared<G>>, mut watch: async_nats::Subscriber) {
    while let Some(m) = watch.next().await {
        s.interest(&m.payload);
    }
}

/// Publishes the exported hunts' chunks, as they reach the publisher's
/// mailbox, on their partitions' updates subjects.
async fn publish_loop<G: WireGame>(s: Arc<Shared<G>>) {
    let mut taken = Vec::new();
    let mut messages = Vec::new();
    loop {
        s.mailbox.ready().await;
        s.mailbox.take(&mut taken);
        for d in taken.drain(..) {
            let (world, first, missed, chunk) = match &d {
                Delivery::Chunk(c) => (c.world, c.first_seq, 0, Some(c)),
                Delivery::Gap { world, first_missed, missed } => (*world, *first_missed, *missed, None),
            };
            let p = s.partition_of(world);
            // Only what this node applied as the owner (not a relayed
            // chunk of a partition it just gave up).
            let epoch = {
                let st = s.lock();
                match st.owned[p as usize] {
                    Some(e) if st.exported.contains_key(&world) => e,
                    _ => continue,
                }
            };
            match chunk {
                Some(c) => encode_updates::<G>(epoch, world, first, &c.updates, |m| messages.push(m)),
                None => {
                    s.metrics.publisher_gaps.fetch_add(1, Relaxed);
                    messages.push(encode_missed(epoch, world, first, missed));
                }
            }
            let subject = s.names.updates_subject(p);
            for m in messages.drain(..) {
                s.publish(&subject, m).await;
            }
        }
    }
}

/// Compile-time: a header's fields add up.
const _: () = assert!(HEADER_BYTES == 26);
/// A message holds at least one applied entry of any game whose records
/// fit a protocol entry.
const _: () = assert!(SPLIT_AT_BYTES > 64 * 1024);

#[cfg(test)]
mod tests {
    use super::*;
    use trove_core::Stamped;
    use trove_hunt::{HuntBroadcast, HuntEvent, HuntOutcome, TreasureHunt};

    type Hunt = TreasureHunt;

    fn updates(n: u32) -> Vec<Update<Hunt>> {
        (0..n)
            .flat_map(|i| {
                [
                    Update::Applied {
                        event: Stamped { time_us: u64::from(i), event: HuntEvent::join(7, i) },
                        outcome: HuntOutcome::Left,
                    },
                    Update::Broadcast(HuntBroadcast::TreasureFound {
                        round: 1,
                        player: i,
                        x: 2,
                        y: 3,
                        value: 4,
                        score: 5,
                        treasures_left: 6,
                    }),
                ]
            })
            .collect()
    }

    fn same(a: &Update<Hunt>, b: &Update<Hunt>) -> bool {
        match (a, b) {
            (Update::Applied { event: e, outcome: o }, Update::Applied { event: f, outcome: p }) => e == f && o == p,
            (Update::Broadcast(x), Update::Broadcast(y)) => x == y,
            _ => false,
        }
    }

    #[test]
    fn updates_round_trip_and_large_chunks_split_with_their_numbers() {
        let all = updates(5000);
        let mut messages = Vec::new();
        encode_updates::<Hunt>(9, 7, 100, &all, |m| messages.push(m));
        assert!(messages.len() > 1, "a chunk of 10000 updates is split");
        let mut next = 100;
        let mut got = Vec::new();
        for m in &messages {
            assert!(m.len() <= RELAY_MESSAGE_BYTES_MAX);
            let r = decode::<Hunt>(m).unwrap();
            assert_eq!((r.epoch, r.world, r.first_seq, r.missed), (9, 7, next, 0));
            next = r.end();
            got.extend(r.updates);
        }
        assert_eq!(next, 100 + all.len() as u64);
        assert!(all.iter().zip(&got).all(|(a, b)| same(a, b)) && all.len() == got.len());
        let r = decode::<Hunt>(&encode_missed(3, 8, 40, 5)).unwrap();
        assert_eq!((r.epoch, r.world, r.first_seq, r.missed, r.updates.len()), (3, 8, 40, 5, 0));
    }

    #[test]
    fn hostile_bytes_are_typed_errors_never_a_panic() {
        let mut good = Vec::new();
        encode_updates::<Hunt>(1, 7, 1, &updates(3), |m| good = m);
        // Every prefix, and every single-byte change, decodes or fails
        // with a typed error.
        for cut in 0..good.len() {
            assert!(decode::<Hunt>(&good[..cut]).is_err(), "a prefix of {cut} bytes decoded");
        }
        for at in 0..good.len() {
            for v in [0u8, 1, 0x7f, 0xff] {
                let mut b = good.clone();
                b[at] = v;
                let _ = decode::<Hunt>(&b);
            }
        }
        let mut b = good.clone();
        b[0] = 2;
        assert_eq!(decode::<Hunt>(&b).unwrap_err(), RelayDecodeError::Version(2));
        b = good.clone();
        b[1] = 9;
        assert_eq!(decode::<Hunt>(&b).unwrap_err(), RelayDecodeError::Kind(9));
        b = good.clone();
        b[22] = 4;
        assert!(matches!(decode::<Hunt>(&b), Err(RelayDecodeError::Count { announced: 4, held: 6 })));
        let long = vec![RELAY_VERSION; RELAY_MESSAGE_BYTES_MAX + 1];
        assert!(matches!(decode::<Hunt>(&long), Err(RelayDecodeError::TooLong { .. })));
        // Entries that are not entries.
        let mut junk = good[..HEADER_BYTES].to_vec();
        junk.extend_from_slice(&[1, 0, 0xff, 0xff, 1, 2, 3]);
        assert!(matches!(decode::<Hunt>(&junk), Err(RelayDecodeError::Entries(_))));
        // A missed message with entries, or of nothing.
        let mut m = encode_missed(1, 7, 1, 2);
        m.push(0);
        assert!(decode::<Hunt>(&m).is_err());
        assert!(decode::<Hunt>(&encode_missed(1, 7, 1, 0)).is_err());
        // A watch message is not an updates message, and the other way.
        let mut w = Vec::new();
        encode_watch(3, &[1, 2], |m| w = m);
        assert_eq!(decode::<Hunt>(&w).unwrap_err(), RelayDecodeError::Truncated { bytes: 18 });
        assert!(decode_watch(&good).is_err());
    }

    #[test]
    fn watch_messages_round_trip_and_refuse_what_does_not_add_up() {
        let worlds: Vec<WorldId> = (0..20_000).collect();
        let mut got = Vec::new();
        encode_watch(5, &worlds, |m| {
            let (p, w) = decode_watch(&m).unwrap();
            assert_eq!(p, 5);
            got.extend(w);
        });
        assert_eq!(got, worlds);
        let mut m = Vec::new();
        encode_watch(5, &[1, 2, 3], |x| m = x);
        for cut in 0..m.len() {
            assert!(decode_watch(&m[..cut]).is_err());
        }
        m[6] = 200;
        assert!(matches!(decode_watch(&m), Err(RelayDecodeError::Count { announced: 200, .. })));
        assert!(matches!(decode_watch(&vec![1; 1 << 20]), Err(RelayDecodeError::TooLong { .. })));
    }
}
