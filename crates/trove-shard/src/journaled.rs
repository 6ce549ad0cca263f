//! The sharded mode's journal: recovery at start, and one writer thread per
//! shard that makes batches durable and only then releases their
//! acknowledgements.
//!
//! The shard applies a batch, then hands it (events, their origins, and the
//! outcome parts waiting for acknowledgement) to its journal thread and goes
//! on with the next batch: applying overlaps writing and syncing. The
//! journal thread writes whatever has queued up with one `write` (group
//! commit) and releases acknowledgements when the fsync policy says the
//! batch is durable: `group` (the default) and `always` after an
//! `fdatasync` of it, `interval=<ms>` after the next periodic `fdatasync`,
//! `never` after the `write`. Under `group` the loop is the whole policy:
//! it writes and syncs as soon as anything is pending, and what the shard
//! hands it during a write and sync queues up for the next one, so the
//! groups grow with the load (docs/decisions/0009).

use std::collections::VecDeque;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use trove_core::{Game, GameState, Outcomes, Record, Stamped, record_fingerprints};
use trove_journal::snapshot::{SnapshotBuilder, SnapshotMeta, decode_snapshot, list_snapshots_in};
use trove_journal::{
    DataDirLock, Entry, FsStorage, FsyncPolicy, JournalWriter, RecoverOptions, Run, Storage, WriteIo,
    create_dir_durably_in, recover_shard_in, shard_dir,
};

use crate::dedup::{AppliedPart, Dedup, KeptProducer, KeptRun};
use crate::error::{MetaError, StartError};
use crate::log::{LogError, LogErrorKind, ShardLog};
use crate::metrics::ShardMetrics;
use crate::producer::{Inbox, Lost, Origin, Part};
use crate::shard_core::{CoreConfig, ShardCore};
use crate::sharded::Standing;

/// Where and how the engine journals.
#[derive(Clone, Debug)]
pub struct JournalConfig {
    pub dir: PathBuf,
    pub fsync: FsyncPolicy,
    /// A segment file is closed and a new one started past this size.
    pub segment_bytes_max: u64,
    /// Truncate the journal at corruption in the middle instead of refusing
    /// to start (everything after the damage is lost).
    pub repair: bool,
    /// How often each shard snapshots its state (and drops the journal
    /// segments the snapshot covers). `None`: only at shutdown.
    pub snapshot_interval: Option<Duration>,
    /// `O_DIRECT` (the default) or buffered writes.
    pub io: WriteIo,
}

impl JournalConfig {
    pub fn new(dir: impl Into<PathBuf>, fsync: FsyncPolicy) -> Self {
        Self {
            dir: dir.into(),
            fsync,
            segment_bytes_max: 256 << 20,
            repair: false,
            snapshot_interval: Some(Duration::from_secs(60)),
            io: WriteIo::Direct,
        }
    }
}

/// The events of one drained batch that came from one producer batch part.
#[derive(Debug)]
pub struct Source {
    pub origin: Origin,
    /// Positions of these events in the producer's batch (their sequence
    /// offsets); `None` when the part is the whole batch, in order.
    pub positions: Option<Arc<Vec<u32>>>,
    pub len: usize,
}

impl Source {
    /// The journal's run for these events: their producer, sequences and
    /// count.
    pub fn run(&self) -> Run<'_> {
        Run {
            producer: self.origin.producer,
            first_seq: self.origin.first_seq,
            len: self.len,
            offsets: self.positions.as_deref().map(Vec::as_slice),
        }
    }
}

/// What a shard hands its journal thread, in apply order.
pub(crate) enum JournalJob<G: Game> {
    /// A batch the shard applied.
    Batch {
        /// The batch's new events (retries taken out) as the producers'
        /// parts held them, in apply order, one per source. The shard
        /// applied stamped copies in its own drain buffer, which stays in
        /// its cache; these go to the journal uncopied.
        parts: Vec<Vec<Stamped<G::Event>>>,
        /// The engine time the shard stamped every event with
        /// (`ClockMode::Wall`), or `None` when the events carry their own
        /// (`ClockMode::Supplied`).
        time_us: Option<u64>,
        sources: Vec<Source>,
        /// Acknowledgements to release once the batch is durable.
        deliveries: Vec<(Arc<Inbox<G>>, Part<G>)>,
    },
    /// The shard's state after every batch sent before it.
    Snapshot(PendingSnapshot<G>),
}

/// A shard's state as the shard thread hands it over for a snapshot: its
/// worlds encoded, its producers' kept outcomes shared (the journal thread
/// encodes them).
pub(crate) struct PendingSnapshot<G: Game> {
    worlds: SnapshotBuilder,
    last_time_us: u64,
    producers: Vec<KeptProducer<G::Outcome>>,
}

/// What start-up recovered for one shard.
pub(crate) struct RecoveredShard<G: Game> {
    pub state: GameState<G>,
    pub writer: JournalWriter,
    pub last_time_us: u64,
    /// Every producer's last applied sequence, and the outcomes of the
    /// events replayed from the journal, to answer retries.
    pub producers: Dedup<G::Outcome>,
}

/// Encodes a shard's state for a snapshot (on the shard thread: it owns
/// the state).
pub(crate) fn snapshot_of<G: Game>(state: &GameState<G>, producers: &Dedup<G::Outcome>) -> PendingSnapshot<G> {
    let mut worlds = SnapshotBuilder::default();
    for (id, w) in state.worlds().iter_sorted() {
        worlds.add(id, |out| G::encode_world(w, out));
    }
    PendingSnapshot { worlds, last_time_us: state.time_us(), producers: producers.export() }
}

/// A snapshot file's bytes: the worlds the shard encoded, and every
/// producer's last sequence, kept outcomes and their events' fingerprints
/// (encoded here, on the journal thread).
pub(crate) fn snapshot_bytes<G: Game>(snapshot: PendingSnapshot<G>, shard: u32, next_batch: u64) -> Vec<u8> {
    let PendingSnapshot { mut worlds, last_time_us, producers } = snapshot;
    for p in &producers {
        let KeptRun { first_seq, offsets, outcomes, fingerprints } = p.flatten();
        let kept = outcomes.len() as u32;
        worlds.add_producer(p.id, p.last_seq, first_seq, offsets.as_deref(), kept, &fingerprints, |out| {
            for o in &outcomes {
                G::store_outcome(o, out);
            }
        });
    }
    worlds.finish(SnapshotMeta { shard, next_batch, last_time_us })
}

const META_FILE: &str = "trove.meta";

/// The largest snapshot file start-up reads (a shard's worlds and its
/// producers' kept outcomes): a bigger one is refused, not allocated.
pub const SNAPSHOT_BYTES_MAX: u64 = 64 << 30;

/// What a data directory's journal was made with (`trove.meta`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Meta {
    format: u32,
    shards: usize,
    /// The most worlds a shard holds: it decides which creates the rules
    /// refuse, so the journal is replayed with the bound it was written
    /// with. `None` in a meta written before it was recorded.
    worlds_max: Option<usize>,
}

impl Meta {
    fn text<G: Game>(&self) -> String {
        let mut text = format!(
            "format={}\ngame={}\nrecord_size={}\nshards={}\n",
            self.format,
            G::NAME,
            G::Event::SIZE,
            self.shards
        );
        if let Some(n) = self.worlds_max {
            text.push_str(&format!("worlds_max={n}\n"));
        }
        if self.format >= META_CHECKED_FORMAT {
            let check = crc32c::crc32c(text.as_bytes());
            text.push_str(&format!("check={check:08x}\n"));
        }
        text
    }

    /// Parses a meta file of this game (`None`: another game, record size
    /// or format, or not a meta file).
    fn parse<G: Game>(text: &str) -> Option<Self> {
        // From format 4 the last line checks the others: a flipped bit
        // that still parses (a digit of `shards` or `worlds_max`) must not
        // change what the journal is read with.
        let checked = text.starts_with("format=")
            && !text.starts_with("format=1\n")
            && !text.starts_with("format=2\n")
            && !text.starts_with("format=3\n");
        let text = if checked {
            let body = text.strip_suffix('\n')?;
            let at = body.rfind('\n')? + 1;
            // Exactly as written: eight lower-case hex digits.
            (body[at..] == format!("check={:08x}", crc32c::crc32c(&text.as_bytes()[..at]))).then_some(())?;
            &text[..at]
        } else {
            text
        };
        let mut lines = text.lines();
        let mut field = |name: &str| lines.next()?.strip_prefix(name)?.strip_prefix('=').map(str::to_owned);
        let format = field("format")?.parse().ok().filter(|f| (1..=META_FORMAT).contains(f))?;
        (field("game")? == G::NAME).then_some(())?;
        (field("record_size")?.parse::<usize>().ok()? == G::Event::SIZE).then_some(())?;
        let shards = field("shards")?.parse().ok().filter(|n| (1..=1024).contains(n))?;
        let worlds_max = match lines.next() {
            None => None,
            Some(line) => Some(line.strip_prefix("worlds_max=")?.parse().ok().filter(|&n| n >= 1)?),
        };
        (lines.next().is_none() && (format >= META_CHECKED_FORMAT) == checked).then_some(Meta {
            format,
            shards,
            worlds_max,
        })
    }
}

/// Checks (or writes, for a new data directory) what the journal was made
/// with: the game, its record size and the shard count, which decides
/// which shard owns which world and so cannot change under a journal.
/// Returns the `worlds_max` the journal was written with: the recorded
/// one, or, for a new directory or a meta that records none (written
/// before it was), this engine's.
///
/// `format=4` (sync marks, journal format version 4) replaces a
/// `format=1`, `2` or `3` meta before this engine writes anything: an
/// older engine then refuses the directory by name instead of reading the
/// first frame it cannot parse as a torn tail and cutting it off.
///
/// Start-up checks `dir` on the real file system; the simulator
/// (`crates/trove-sim`) checks it on its simulated disk, through `storage`.
pub fn check_meta<G: Game>(
    storage: &dyn Storage,
    dir: &Path,
    shards: usize,
    worlds_max: usize,
) -> Result<usize, MetaError> {
    let want = Meta { format: META_FORMAT, shards, worlds_max: Some(worlds_max) };
    let path = dir.join(META_FILE);
    match storage.read(&path, META_BYTES_MAX) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes).into_owned();
            match Meta::parse::<G>(&text) {
                Some(found) if found.shards == shards => {
                    let recorded = found.worlds_max.unwrap_or(worlds_max);
                    let upgraded = Meta { worlds_max: Some(recorded), ..want };
                    if found != upgraded {
                        write_meta(storage, dir, &upgraded.text::<G>())?;
                    }
                    Ok(recorded)
                }
                _ => Err(MetaError::Mismatch { path, found: text, want: want.text::<G>() }),
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            create_dir_durably_in(storage, dir).map_err(meta_io("creating", dir))?;
            write_meta(storage, dir, &want.text::<G>())?;
            Ok(worlds_max)
        }
        Err(e) => Err(meta_io("reading", &path)(e)),
    }
}

fn meta_io<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> MetaError + 'a {
    move |source| MetaError::Io { action, path: path.to_path_buf(), source }
}

/// The largest meta file read (a real one is a few lines).
const META_BYTES_MAX: u64 = 4096;

/// The data directory's format: 2 since the journal packs records, 3 since
/// runs may hold their offsets as a bitmap, 4 since frames carry a sync mark
/// and the meta ends in a checksum of its other lines (`check=`, CRC32C).
const META_FORMAT: u32 = 4;

/// The first format whose meta carries its `check=` line.
const META_CHECKED_FORMAT: u32 = 4;

/// Replaces `trove.meta` atomically: a temporary file, fsynced, renamed,
/// the directory fsynced.
fn write_meta(storage: &dyn Storage, dir: &Path, meta: &str) -> Result<(), MetaError> {
    let tmp = dir.join(format!("{META_FILE}.tmp"));
    let mut file = storage.create(&tmp, false).map_err(meta_io("writing", &tmp))?;
    file.write_at(meta.as_bytes(), 0).map_err(meta_io("writing", &tmp))?;
    file.sync_all().map_err(meta_io("syncing", &tmp))?;
    drop(file);
    let path = dir.join(META_FILE);
    storage.rename(&tmp, &path).map_err(meta_io("renaming", &tmp))?;
    storage.sync_dir(dir).map_err(meta_io("syncing", dir))
}

/// One shard's state rebuilt as recovery rebuilds it: a snapshot, then
/// the batches after it, applied with the dedup history rebuilt from both.
/// Start-up feeds it from segment files (`rebuild`); a cluster node from a
/// partition's snapshot object and stream (`crates/trove-cluster`).
pub struct Rebuild<G: Game> {
    index: usize,
    state: GameState<G>,
    producers: Dedup<G::Outcome>,
    out: Outcomes<G::Outcome, G::Broadcast>,
    stamped: Vec<Stamped<G::Event>>,
}

impl<G: Game> std::fmt::Debug for Rebuild<G> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rebuild").field("index", &self.index).finish_non_exhaustive()
    }
}

impl<G: Game> Rebuild<G> {
    /// An empty shard `index`, as `config` bounds it.
    pub fn new(index: usize, config: CoreConfig) -> Self {
        Self {
            index,
            state: GameState::new(config.worlds_max),
            producers: Dedup::new(config.dedup_window_events, config.dedup_producers_max),
            out: Outcomes::default(),
            stamped: Vec::new(),
        }
    }

    /// Loads a snapshot's worlds, time and producers (on an empty
    /// rebuild); returns its meta and its world count. A snapshot of
    /// another shard, or one that does not decode, is refused.
    pub fn load_snapshot(&mut self, bytes: &[u8]) -> Result<(SnapshotMeta, usize), String> {
        let snap = decode_snapshot(bytes).map_err(|e| format!("damaged: {e}"))?;
        if snap.meta.shard != self.index as u32 {
            return Err(format!("a snapshot of shard {}, not {}", snap.meta.shard, self.index));
        }
        for (id, world) in &snap.worlds {
            let world = G::decode_world(*id, world).map_err(|e| format!("world {id}: {e}"))?;
            self.state.restore_world(*id, world).map_err(|e| format!("world {id}: {e:?}"))?;
        }
        self.state.restore_time(snap.meta.last_time_us);
        for p in snap.producers {
            let mut r = trove_core::Reader::new(p.outcomes);
            let outcomes = (0..p.kept)
                .map(|_| G::load_outcome(&mut r))
                .collect::<Result<Vec<_>, _>>()
                .and_then(|o| r.finish().map(|()| o))
                .map_err(|e| format!("producer {}'s outcomes: {e}", p.id))?;
            let run = KeptRun { first_seq: p.first_seq, offsets: p.offsets, outcomes, fingerprints: p.fingerprints };
            self.producers.restore(p.id, p.last_seq, run);
        }
        Ok((snap.meta, snap.worlds.len()))
    }

    /// Applies one journaled batch as the shard applied it, and records
    /// its producers' sequences and outcomes for their retries; returns
    /// the batch's outcomes.
    pub fn apply(&mut self, entries: &[Entry<G::Event>]) -> &[G::Outcome] {
        self.out.clear();
        self.stamped.clear();
        self.stamped.extend(entries.iter().map(|e| e.stamped));
        self.producers.next_drain();
        self.state.apply(&self.stamped, &mut self.out);
        // Record the outcomes in parts: consecutive entries of one producer
        // whose sequences increase within u32 offsets of the part's first.
        let mut i = 0;
        while i < entries.len() {
            let producer = entries[i].producer;
            let first_seq = entries[i].producer_seq;
            let mut j = i + 1;
            while j < entries.len()
                && entries[j].producer == producer
                && entries[j].producer_seq > entries[j - 1].producer_seq
                && entries[j].producer_seq - first_seq <= u64::from(u32::MAX)
            {
                j += 1;
            }
            let offsets: Option<Vec<u32>> = entries[i..j]
                .iter()
                .enumerate()
                .any(|(k, e)| e.producer_seq != first_seq.wrapping_add(k as u64))
                .then(|| entries[i..j].iter().map(|e| (e.producer_seq - first_seq) as u32).collect());
            let part = AppliedPart {
                first_seq,
                positions: offsets.map(Arc::new),
                outcomes: Arc::from(&self.out.direct[i..j]),
                // As the running shard kept them: after a restart too, a
                // retry of a replayed event is told from a reused sequence.
                fingerprints: (self.producers.window() > 0)
                    .then(|| record_fingerprints(entries[i..j].iter().map(|e| &e.stamped.event))),
                skip: 0,
            };
            self.producers.record(producer, part);
            i = j;
        }
        &self.out.direct
    }

    /// The state so far.
    pub fn state(&self) -> &GameState<G> {
        &self.state
    }

    /// The core that continues from here, journaled (its answers wait for
    /// its log).
    pub fn into_core(self, config: CoreConfig) -> ShardCore<G> {
        ShardCore::with_state(self.state, self.producers, config)
    }
}

/// One shard's state rebuilt from its newest snapshot and the journal after
/// it, read through `storage`. `truncate` repairs a torn tail (start-up)
/// instead of just reporting it (offline tools). Lines for the log go to
/// `log`.
#[allow(clippy::too_many_arguments)]
fn rebuild<G: Game>(
    storage: &dyn Storage,
    dir: &Path,
    index: usize,
    worlds_max: usize,
    producers: Dedup<G::Outcome>,
    options: RecoverOptions,
    log: &LogTx,
    mut each: impl FnMut(u64, &[Entry<G::Event>], &[G::Outcome]),
) -> Result<(GameState<G>, trove_journal::Recovered, Dedup<G::Outcome>), ReplayError> {
    let state = GameState::<G>::new(worlds_max);
    let mut options = options;
    let (snapshots, leftovers) =
        list_snapshots_in(storage, dir).map_err(|e| Unreadable(format!("listing {}: {e}", dir.display())))?;
    for tmp in leftovers {
        // A snapshot being written when the engine stopped: never renamed,
        // so never used.
        if options.truncate_torn_tail {
            storage.remove(&tmp).map_err(|e| Unreadable(format!("removing {}: {e}", tmp.display())))?;
            let _ = log.send((Level::Note, format!("shard {index}: removed unfinished snapshot {}", tmp.display())));
        }
    }
    let mut rebuilt = Rebuild::<G> { index, state, producers, out: Outcomes::default(), stamped: Vec::new() };
    if let Some(path) = snapshots.last() {
        let started = Instant::now();
        let bytes = storage
            .read(path, SNAPSHOT_BYTES_MAX)
            .map_err(|e| Unreadable(format!("reading {}: {e}", path.display())))?;
        let (meta, worlds) =
            rebuilt.load_snapshot(&bytes).map_err(|e| Damaged(format!("snapshot {}: {e}", path.display())))?;
        options.skip_below = meta.next_batch;
        let _ = log.send((
            Level::Info,
            format!(
                "shard {index}: loaded {} ({worlds} worlds) in {:.2} s",
                path.display(),
                started.elapsed().as_secs_f64()
            ),
        ));
    }
    let mut last_report = Instant::now();
    let r = recover_shard_in::<G::Event>(storage, dir, index as u32, options, |batch, entries: &[Entry<G::Event>]| {
        let outcomes = rebuilt.apply(entries);
        each(batch, entries, outcomes);
        if last_report.elapsed().as_secs() >= 1 {
            let _ = log.send((
                Level::Info,
                format!("shard {index}: replayed through batch {batch}, {} events", rebuilt.state.events_applied()),
            ));
            last_report = Instant::now();
        }
    })
    .map_err(|e| match e {
        trove_journal::JournalError::Io { .. } => Unreadable(e.to_string()),
        _ => Damaged(e.to_string()),
    })?;
    let Rebuild { mut state, producers, .. } = rebuilt;
    for note in &r.notes {
        let _ = log.send((Level::Note, format!("shard {index}: {note}")));
    }
    state.restore_time(r.last_time_us);
    Ok((state, r, producers))
}

/// One shard recovered as start-up recovers it (its newest snapshot, the
/// journal after it, the dedup state rebuilt from both), ready to run:
/// what [`recover_core_in`] returns.
#[derive(Debug)]
pub struct RecoveredCore<G: Game> {
    pub core: ShardCore<G>,
    /// What the journal held: where appending resumes (`next_batch`,
    /// `tail`), and what was repaired (`notes`).
    pub journal: trove_journal::Recovered,
    /// The recovery's notes (repairs, removed unfinished snapshots).
    pub log: Vec<String>,
}

/// Recovers shard `index` from `dir` through `storage` exactly as
/// start-up does for each shard (the same snapshot loading, replay and
/// dedup rebuild), and builds the [`ShardCore`] that continues from it
/// with `config`: the way to start a core from recovered state outside the
/// engine (the simulator, `crates/trove-sim`, on a simulated disk).
/// `each` sees every replayed batch with its outcomes. The caller opens
/// the journal for appending at `journal.next_batch` / `journal.tail`.
/// `options.skip_below` is set from the snapshot.
pub fn recover_core_in<G: Game>(
    storage: &dyn Storage,
    dir: &Path,
    index: usize,
    config: CoreConfig,
    options: RecoverOptions,
    each: impl FnMut(u64, &[Entry<G::Event>], &[G::Outcome]),
) -> Result<RecoveredCore<G>, ReplayError> {
    let (tx, rx) = std::sync::mpsc::channel();
    let dedup = Dedup::new(config.dedup_window_events, config.dedup_producers_max);
    let rebuilt = rebuild::<G>(storage, dir, index, config.worlds_max, dedup, options, &tx, each);
    drop(tx);
    // Notes only: progress lines carry wall-clock timings.
    let log = rx.try_iter().filter(|(level, _)| *level == Level::Note).map(|(_, line)| line).collect();
    let (state, journal, producers) = rebuilt?;
    Ok(RecoveredCore { core: ShardCore::with_state(state, producers, config), journal, log })
}

/// What a recovery log line is: progress and facts, or something that was
/// wrong and was repaired or ignored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Level {
    Info,
    Note,
}

type LogTx = std::sync::mpsc::Sender<(Level, String)>;

/// How [`per_shard`] runs the shards.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Order {
    /// All at once, each on its own thread (shards are independent, so
    /// recovery and replay use every core).
    Parallel,
    /// One after another, shard 0 first: a caller printing what it is
    /// given sees every batch of a shard before the next shard's, in the
    /// same order on every run.
    InOrder,
}

/// Runs `work` for every shard on a thread of its own, passing log lines to
/// `log` as they come. The results are in shard order.
fn per_shard<T: Send, E: Send + From<RecoveryPanicked>>(
    shards: usize,
    order: Order,
    log: &mut dyn FnMut(Level, String),
    work: impl Fn(usize, &LogTx) -> Result<T, E> + Sync,
) -> Result<Vec<T>, E> {
    let run = |range: std::ops::Range<usize>, log: &mut dyn FnMut(Level, String)| -> Result<Vec<T>, E> {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::scope(|scope| {
            let handles: Vec<_> = range
                .map(|i| {
                    let (tx, work) = (tx.clone(), &work);
                    scope.spawn(move || work(i, &tx))
                })
                .collect();
            drop(tx);
            for (level, line) in rx {
                log(level, line);
            }
            handles.into_iter().map(|h| h.join().map_err(|_| E::from(RecoveryPanicked))?).collect()
        })
    };
    match order {
        Order::Parallel => run(0..shards, log),
        Order::InOrder => {
            let mut done = Vec::with_capacity(shards);
            for i in 0..shards {
                done.extend(run(i..i + 1, log)?);
            }
            Ok(done)
        }
    }
}

/// Rebuilds every shard's state from its snapshot and journal and opens the
/// journal for appending. `log` gets one line per repair and progress on
/// long replays. The caller holds the data directory's `lock` (taken
/// before anything in it is read); each writer keeps a share of it.
pub(crate) fn recover<G: Game>(
    journal: &JournalConfig,
    lock: &Arc<DataDirLock>,
    shards: usize,
    worlds_max: usize,
    (dedup_window, dedup_producers_max): (usize, usize),
    log: &mut dyn FnMut(String),
) -> Result<Vec<RecoveredShard<G>>, StartError> {
    assert_eq!(lock.dir(), journal.dir, "recovery runs under its own directory's lock");
    let recorded = check_meta::<G>(&FsStorage, &journal.dir, shards, worlds_max)?;
    let mut recovered = per_shard::<_, StartError>(shards, Order::Parallel, &mut |_, line| log(line), |index, log| {
        let dir = shard_dir(&journal.dir, index);
        let started = Instant::now();
        let options = RecoverOptions {
            truncate_torn_tail: true,
            repair: journal.repair,
            segment_bytes_max: journal.segment_bytes_max,
            skip_below: 0,
        };
        let dedup = Dedup::new(dedup_window, dedup_producers_max);
        let (state, r, producers) = rebuild::<G>(&FsStorage, &dir, index, recorded, dedup, options, log, |_, _, _| {})?;
        if r.batches > 0 {
            let _ = log.send((
                Level::Info,
                format!(
                    "shard {index}: replayed {} batches, {} events from {} segments in {:.2} s",
                    r.batches,
                    r.events,
                    r.segments,
                    started.elapsed().as_secs_f64()
                ),
            ));
        }
        let mut writer = JournalWriter::open(
            &dir,
            index as u32,
            G::Event::SIZE as u32,
            r.next_batch,
            r.tail,
            journal.segment_bytes_max,
            journal.io,
        )
        .map_err(|e| StartError::Io(format!("opening the journal of shard {index} in {}: {e}", dir.display())))?;
        writer.hold(lock.clone());
        if writer.io() != journal.io {
            let _ = log.send((
                Level::Note,
                format!("shard {index}: {} refuses O_DIRECT; the journal is written buffered", dir.display()),
            ));
        }
        Ok(RecoveredShard { last_time_us: state.time_us(), state, writer, producers })
    })?;
    if recorded != worlds_max {
        change_worlds_max(journal, shards, recorded, worlds_max, &mut recovered)?;
        log(format!(
            "worlds_max changed from {recorded} to {worlds_max}: every shard snapshotted, the journal after it is \
             read with {worlds_max}"
        ));
    }
    Ok(recovered)
}

/// Moves a recovered journal to a new `worlds_max`. The journal so far was
/// applied with the old bound and must be replayed with it; so, before
/// anything new is journaled, every shard snapshots its state (which
/// replaces the journal it covers), and only then does the meta record the
/// new bound. A crash before the meta is rewritten leaves the old bound on
/// a journal that holds nothing after the snapshots: the next start does
/// this again.
fn change_worlds_max<G: Game>(
    journal: &JournalConfig,
    shards: usize,
    from: usize,
    to: usize,
    recovered: &mut [RecoveredShard<G>],
) -> Result<(), StartError> {
    // A bound refused at shard k leaves shards before it snapshotted, which
    // changes nothing: the meta still has the old bound.
    for (index, r) in recovered.iter_mut().enumerate() {
        r.state.set_worlds_max(to).map_err(|held| StartError::TooManyWorlds { shard: index, held, to, from })?;
        let snapshot = snapshot_of(&r.state, &r.producers);
        let shard = r.writer.shard();
        let mut snapshot = Some(snapshot);
        ShardLog::<G::Event>::snapshot(&mut r.writer, &mut |next_batch| {
            snapshot_bytes(snapshot.take().expect("a snapshot is encoded once"), shard, next_batch)
        })
        .map_err(|e| StartError::Snapshot { shard: index, reason: e.message })?;
    }
    let meta = Meta { format: META_FORMAT, shards, worlds_max: Some(to) };
    Ok(write_meta(&FsStorage, &journal.dir, &meta.text::<G>())?)
}

/// The journal thread of one shard. Returns when the shard hangs up, after
/// writing, syncing and acknowledging everything it was given; or, if the
/// log refuses a write or a sync, or anything in the loop panics, at once
/// (fail-stop): it records why, releases no further acknowledgement, and
/// tells every producer waiting for one. A local journal's failure is the
/// engine's (`failure`: nothing more is applied anywhere); a cluster log's
/// fencing or unavailability is this shard's alone (`standing`: the shard
/// stops owning its partition). A panic is caught here, not left to end
/// the thread: a journal thread that died without saying so would leave
/// `/health` saying ok while every producer waited for acknowledgements
/// that never come.
pub(crate) fn run_journal<G: Game, L: ShardLog<G::Event>>(
    rx: Receiver<JournalJob<G>>,
    log: L,
    policy: FsyncPolicy,
    metrics: Arc<ShardMetrics>,
    failure: &OnceLock<String>,
    standing: &Standing,
) {
    let mut waiting: Vec<(Arc<Inbox<G>>, Part<G>)> = Vec::new();
    let mut jobs = VecDeque::new();
    let shard = log.shard();
    // The loop's state (`jobs`, `waiting`) is only drained after a panic,
    // never read as if consistent: unwind safety holds for that use.
    let looped = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        journal_loop(&rx, log, policy, &metrics, &mut jobs, &mut waiting)
    }));
    let result = looped.unwrap_or_else(|panic| {
        let what = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "no message".to_string());
        Err(LogError::io(format!("the journal thread panicked: {what}")))
    });
    if let Err(e) = result {
        let shard = shard as usize;
        let lost = match e.kind {
            LogErrorKind::Io => {
                // The first failure is the one producers hear about.
                let _ = failure
                    .set(format!("the journal of shard {shard} failed ({}); nothing more is acknowledged", e.message));
                let reason = failure.get().map_or("", String::as_str);
                tracing::error!(target: "trove::engine", "{reason}");
                Lost::Failed(reason.to_string())
            }
            LogErrorKind::Fenced => Lost::Deposed {
                shard,
                reason: format!("partition {shard} was taken over by another node ({})", e.message),
            },
            LogErrorKind::Unavailable => Lost::Unavailable {
                shard,
                reason: format!("the log of partition {shard} could not make a batch durable ({})", e.message),
            },
        };
        if !matches!(lost, Lost::Failed(_)) {
            tracing::warn!(target: "trove::engine", "{}", lost.reason());
            standing.lose(lost.clone());
        }
        for (inbox, _) in waiting.drain(..) {
            inbox.lose(lost.clone());
        }
        // Jobs taken but not handled, then whatever the shard still sends
        // (it applies nothing once the loss is set, but a batch may be on
        // its way) until it hangs up: every producer is told.
        for job in jobs.drain(..) {
            job.fail_producers(&lost);
        }
        while let Ok(job) = rx.recv() {
            job.fail_producers(&lost);
        }
    }
}

impl<G: Game> JournalJob<G> {
    /// Tells the producers of this job's batches that it will never be
    /// acknowledged, and why.
    pub(crate) fn fail_producers(self, lost: &Lost) {
        if let JournalJob::Batch { deliveries, .. } = self {
            for (inbox, _) in deliveries {
                inbox.lose(lost.clone());
            }
        }
    }
}

fn journal_loop<G: Game, L: ShardLog<G::Event>>(
    rx: &Receiver<JournalJob<G>>,
    mut log: L,
    policy: FsyncPolicy,
    metrics: &ShardMetrics,
    jobs: &mut VecDeque<JournalJob<G>>,
    waiting: &mut Vec<(Arc<Inbox<G>>, Part<G>)>,
) -> Result<(), LogError> {
    let mut last_sync = Instant::now();
    let mut closing = false;
    // `waiting[unwritten..]`: parts no write has covered yet.
    let mut unwritten = 0;
    while !closing {
        let received = match policy {
            FsyncPolicy::Interval(every) if !waiting.is_empty() => {
                let due = (last_sync + every).saturating_duration_since(Instant::now());
                rx.recv_timeout(due)
            }
            _ => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
        };
        match received {
            Ok(job) => jobs.push_back(job),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => closing = true,
        }
        while let Ok(job) = rx.try_recv() {
            jobs.push_back(job);
        }
        // One at a time, so that on a failure the jobs not handled are
        // still here to be answered.
        while let Some(job) = jobs.pop_front() {
            match job {
                JournalJob::Batch { parts, deliveries, .. } if parts.is_empty() => {
                    // Only retries: nothing to write, but their
                    // acknowledgements wait behind the writes before them.
                    waiting.extend(deliveries);
                }
                JournalJob::Batch { parts, time_us, sources, deliveries } => {
                    let runs: Vec<Run<'_>> = sources.iter().map(Source::run).collect();
                    // Waiting before the encoding: should it panic, these
                    // producers are told with the others.
                    waiting.extend(deliveries);
                    log.test_hook();
                    log.append(&runs, &parts, time_us);
                }
                JournalJob::Snapshot(snapshot) => {
                    // What the snapshot covers must be durable first, and
                    // its acknowledgements are released with it.
                    let mut snapshot = Some(snapshot);
                    let shard = log.shard();
                    let bytes = log.snapshot(&mut |next_batch| {
                        let s = snapshot.take().expect("a snapshot is encoded once");
                        snapshot_bytes(s, shard, next_batch)
                    })?;
                    metrics.snapshots.fetch_add(1, Relaxed);
                    metrics.snapshot_bytes.store(bytes as u64, Relaxed);
                }
            }
        }
        let sync_now = match policy {
            // Group commit: this write's sync. Nothing is in flight (the
            // loop syncs before it takes the next jobs), and the next group
            // is whatever queued up meanwhile.
            FsyncPolicy::Group | FsyncPolicy::Always => true,
            FsyncPolicy::Interval(every) => closing || last_sync.elapsed() >= every,
            FsyncPolicy::Never => closing,
        };
        // Written as soon as encoded, under every policy: with `interval`,
        // frames held back for the sync would make the sync wait for their
        // write, and the write and the sync are the acknowledgement's
        // latency (held until 512 KiB or the sync: 8% less throughput in
        // `bench engine`, docs/decisions/0028). The interval runs from the
        // start of one sync's write to the start of the next: a fixed
        // cadence, not one stretched by the time each write and sync take.
        let began = Instant::now();
        // Fail-stop: if the log refuses a write or a sync, nothing more
        // can be promised, so the journal thread stops here and no further
        // acknowledgement is released.
        let written = log.write()?;
        metrics.journal_bytes.fetch_add(written, Relaxed);
        // The parts this write covered (those added since the last one).
        let written_at = Instant::now();
        for (_, part) in &mut waiting[unwritten..] {
            part.stamps.written = Some(written_at);
        }
        unwritten = waiting.len();
        let mut synced_at = None;
        if sync_now {
            let started = Instant::now();
            if log.sync()? {
                let now = Instant::now();
                metrics.fsync_ns.record(now.saturating_duration_since(started).as_nanos() as u64);
                metrics.fsyncs.fetch_add(1, Relaxed);
                synced_at = Some(now);
            }
            last_sync = began;
        }
        if sync_now || policy == FsyncPolicy::Never {
            let durable_at = synced_at.unwrap_or_else(Instant::now);
            for (inbox, mut part) in waiting.drain(..) {
                let waited = durable_at.saturating_duration_since(part.submitted_at).as_nanos() as u64;
                metrics.ingest_to_durable_ns.record_n(waited, part.outcomes.len() as u64);
                part.stamps.synced = synced_at;
                inbox.deliver(part);
            }
            unwritten = 0;
        }
    }
    Ok(())
}

/// What an offline replay rebuilt.
#[derive(Clone, Debug)]
pub struct Replayed {
    pub shards: usize,
    pub batches: u64,
    pub events: u64,
    /// Per-world hashes, ascending by world id.
    pub world_hashes: Vec<(trove_core::WorldId, u64)>,
    /// Equal to the running engine's `FinalState::state_hash` for the same
    /// journal.
    pub state_hash: u64,
    /// Anything odd found (a torn tail is reported, not repaired).
    pub notes: Vec<String>,
    /// Shards whose journal ends in a write cut short (`Recovered::torn_tails`).
    pub torn_tails: u64,
    /// Shards whose journal's last frame fails its checksum with nothing
    /// valid after it: a torn write or damage, which cannot be told apart
    /// (`Recovered::damaged_last_frames`).
    pub damaged_last_frames: u64,
    /// The callback of [`replay_outcomes`] asked to stop: the shard it
    /// stopped in was replayed to its end without calling it, later shards
    /// were not read, and the counts and hashes cover the shards read.
    pub stopped: bool,
}

/// Why an offline replay (or recovery) stopped.
#[derive(Debug)]
pub enum ReplayError {
    /// The journal or a snapshot is damaged, incomplete or holds a file of
    /// another journal: what start-up would refuse (without `--repair`).
    Damaged(String),
    /// The directory could not be read as a journal at all: missing,
    /// unreadable, another game's or an I/O error.
    Unreadable(String),
}
use ReplayError::{Damaged, Unreadable};

impl std::fmt::Display for ReplayError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Damaged(m) | Unreadable(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for ReplayError {}

/// A recovery thread panicked: a bug, reported as the failure of the
/// recovery or replay it was part of.
#[derive(Debug)]
struct RecoveryPanicked;

impl From<RecoveryPanicked> for ReplayError {
    fn from(_: RecoveryPanicked) -> Self {
        Unreadable("recovery thread panicked".to_string())
    }
}

impl From<RecoveryPanicked> for StartError {
    fn from(_: RecoveryPanicked) -> Self {
        StartError::Panicked
    }
}

/// At start-up, damage is corruption and the rest is I/O.
impl From<ReplayError> for StartError {
    fn from(e: ReplayError) -> Self {
        match e {
            Damaged(m) => StartError::Corrupt(m),
            Unreadable(m) => StartError::Io(m),
        }
    }
}

/// Reads a data directory's meta file, for game `G`.
fn read_meta<G: Game>(dir: &Path) -> Result<Meta, MetaError> {
    let path = dir.join(META_FILE);
    let text = std::fs::read_to_string(&path).map_err(meta_io("reading", &path))?;
    Meta::parse::<G>(&text).ok_or(MetaError::Unknown { path, game: G::NAME, found: text })
}

/// The shard count recorded in a data directory's meta file.
pub fn recorded_shards<G: Game>(dir: &Path) -> Result<usize, MetaError> {
    read_meta::<G>(dir).map(|m| m.shards)
}

/// Rebuilds the state from a data directory's journal without changing any
/// file, calling `each` with every journaled batch (for inspection tools).
/// The shards replay at once, on a thread each: the calls of different
/// shards interleave.
pub fn replay<G: Game>(
    dir: &Path,
    mut each: impl FnMut(usize, u64, &[Entry<G::Event>]) + Send,
) -> Result<Replayed, ReplayError> {
    replay_with::<G>(dir, Order::Parallel, |shard, batch, entries, _| {
        each(shard, batch, entries);
        ControlFlow::Continue(())
    })
}

/// [`replay`], with each batch's outcomes (`outcomes[i]` answers
/// `entries[i]`, as the running engine answered it), one shard after
/// another: `each` sees shard 0's batches oldest first, then shard 1's, and
/// so on, the same on every run (`trove journal inspect` prints them). When
/// `each` breaks, it is not called again and the shards after the current
/// one are not read: the result then covers part of the journal
/// (`Replayed::stopped`).
pub fn replay_outcomes<G: Game>(
    dir: &Path,
    each: impl FnMut(usize, u64, &[Entry<G::Event>], &[G::Outcome]) -> ControlFlow<()> + Send,
) -> Result<Replayed, ReplayError> {
    replay_with::<G>(dir, Order::InOrder, each)
}

fn replay_with<G: Game>(
    dir: &Path,
    order: Order,
    mut each: impl FnMut(usize, u64, &[Entry<G::Event>], &[G::Outcome]) -> ControlFlow<()> + Send,
) -> Result<Replayed, ReplayError> {
    let meta = read_meta::<G>(dir).map_err(|e| Unreadable(e.to_string()))?;
    let shards = meta.shards;
    let mut r = Replayed {
        shards,
        batches: 0,
        events: 0,
        world_hashes: Vec::new(),
        state_hash: 0,
        notes: Vec::new(),
        torn_tails: 0,
        damaged_last_frames: 0,
        stopped: false,
    };
    let each = Mutex::new(&mut each);
    let stopped = AtomicBool::new(false);
    let mut notes = Vec::new();
    // The rules refuse creates past the bound the engine ran with.
    let worlds_max = meta.worlds_max.unwrap_or_else(|| {
        let path = dir.join(META_FILE);
        notes.push(format!("{} records no worlds_max (an older engine's); replayed without a bound", path.display()));
        usize::MAX
    });
    let options =
        RecoverOptions { truncate_torn_tail: false, repair: false, segment_bytes_max: u64::MAX / 4, skip_below: 0 };
    let mut to_notes = |level, line| match level {
        Level::Note => notes.push(line),
        Level::Info => eprintln!("trove: {line}"),
    };
    let shards_done = per_shard::<_, ReplayError>(shards, order, &mut to_notes, |index, log| {
        if stopped.load(Relaxed) {
            return Ok(None);
        }
        let (state, rec, _) = rebuild::<G>(
            &FsStorage,
            &shard_dir(dir, index),
            index,
            worlds_max,
            Dedup::new(0, usize::MAX),
            options,
            log,
            |batch, entries, outcomes| {
                let mut each = each.lock().unwrap_or_else(|e| e.into_inner());
                if !stopped.load(Relaxed) && (*each)(index, batch, entries, outcomes).is_break() {
                    stopped.store(true, Relaxed);
                }
            },
        )?;
        Ok(Some((state.world_hashes(), rec)))
    })?;
    r.stopped = stopped.into_inner();
    for (hashes, rec) in shards_done.into_iter().flatten() {
        r.batches += rec.batches;
        r.events += rec.events;
        r.torn_tails += rec.torn_tails;
        r.damaged_last_frames += rec.damaged_last_frames;
        r.world_hashes.extend(hashes);
    }
    r.notes = notes;
    r.state_hash = trove_core::state::combine_world_hashes(r.world_hashes.clone());
    r.world_hashes.sort_unstable_by_key(|&(id, _)| id);
    Ok(r)
}

#[cfg(test)]
pub(crate) mod tests {
    use std::path::{Path, PathBuf};
    use std::sync::Mutex;
    use std::time::{Duration, Instant};

    use trove_core::Stamped;
    use trove_hunt::{HuntEvent, TreasureHunt};

    use super::{META_FORMAT, Meta};
    use crate::{Engine, EngineConfig, FsyncPolicy, JournalConfig, SubmitError};

    /// A meta of today's format ends in a checksum of its other lines, so
    /// no single flipped bit reads as another meta (trove-sim seed 365
    /// turned `worlds_max=64` into `65`, and start-up replayed the journal
    /// with the wrong bound); older formats, which have no check line,
    /// still parse.
    #[test]
    fn a_flipped_bit_in_the_meta_never_reads_as_another_meta() {
        let meta = Meta { format: META_FORMAT, shards: 3, worlds_max: Some(64) };
        let text = meta.text::<TreasureHunt>();
        assert!(text.lines().last().is_some_and(|l| l.starts_with("check=")), "{text}");
        assert_eq!(Meta::parse::<TreasureHunt>(&text), Some(meta));
        let bytes = text.as_bytes();
        for i in 0..bytes.len() * 8 {
            let mut rotten = bytes.to_vec();
            rotten[i / 8] ^= 1 << (i % 8);
            let Ok(rotten) = String::from_utf8(rotten) else { continue };
            let parsed = Meta::parse::<TreasureHunt>(&rotten);
            assert!(parsed.is_none(), "bit {i} flipped still reads as {parsed:?}:\n{rotten}");
        }
        let old = "format=3\ngame=treasure-hunt\nrecord_size=32\nshards=3\nworlds_max=64\n";
        assert_eq!(Meta::parse::<TreasureHunt>(old), Some(Meta { format: 3, shards: 3, worlds_max: Some(64) }));
        // A check line where the format has none, or none where it has one.
        assert_eq!(Meta::parse::<TreasureHunt>(&format!("{old}check=00000000\n")), None);
        let unchecked = text.lines().filter(|l| !l.starts_with("check=")).map(|l| format!("{l}\n")).collect::<String>();
        assert_eq!(Meta::parse::<TreasureHunt>(&unchecked), None);
    }

    /// Fault injection: a journal thread writing under one of these
    /// directories panics at its next batch.
    static PANIC_IN: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

    pub(crate) fn panic_if_asked(dir: &Path) {
        if PANIC_IN.lock().unwrap_or_else(|e| e.into_inner()).iter().any(|d| dir.starts_with(d)) {
            panic!("injected journal panic");
        }
    }

    /// Any failure of the journal thread, a panic included, is the
    /// engine's failure: `failure()` says so (so `/health` answers 503),
    /// producers waiting for acknowledgements are told at once instead of
    /// waiting for ever, and later batches are refused.
    #[test]
    fn a_panic_in_the_journal_thread_fails_the_engine_and_its_producers() {
        let dir = std::env::temp_dir().join(format!("trove-journal-panic-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let config = EngineConfig {
            shards: 1,
            journal: Some(JournalConfig::new(&dir, FsyncPolicy::Always)),
            ..EngineConfig::default()
        };
        let engine = Engine::<TreasureHunt>::start(config).unwrap();
        let mut p = engine.producer();
        let digs = |n: u32| (0..n).map(|i| Stamped { time_us: 0, event: HuntEvent::dig(1, i) }).collect::<Vec<_>>();
        p.submit(&mut digs(10)).unwrap();
        assert!(p.complete_timeout(Duration::from_secs(60)).is_some(), "acknowledged before the fault");
        assert!(engine.failure().is_none());

        PANIC_IN.lock().unwrap().push(dir.clone());
        p.submit(&mut digs(10)).unwrap();
        // Generous deadlines: what is checked is that the failure shows,
        // not how fast.
        let deadline = Instant::now() + Duration::from_secs(60);
        while engine.failure().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        let failure = engine.failure().map(str::to_string).expect("a panicked journal thread is the engine's failure");
        assert!(failure.contains("panicked") && failure.contains("injected journal panic"), "{failure}");
        let waited = Instant::now();
        assert!(p.complete_timeout(Duration::from_secs(120)).is_none(), "never acknowledged");
        assert!(waited.elapsed() < Duration::from_secs(120), "the waiting producer was told, not left to time out");
        assert_eq!(p.submit(&mut digs(1)), Err(SubmitError::Failed));
        PANIC_IN.lock().unwrap().retain(|d| d != &dir);
        engine.shutdown();
        let _ = std::fs::remove_dir_all(&dir);
    }
}
