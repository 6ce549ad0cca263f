//! The fan-out fleet of `trove bench --subscribers N`: N subscriber
//! connections, separate from the producers, each watching one hunt, read
//! by a few dedicated threads (one current-thread tokio runtime each, many
//! sockets per thread) as fast as a real client would, or deliberately
//! slowly (`--slow-subscribers K`).
//!
//! Latency: each hunt is produced by exactly one producer connection
//! (`Generator::partition`), and events are applied in send order, so the
//! k-th APPLIED entry of a hunt's stream after the subscription is the k-th
//! event the pacer sent to that hunt after it (BUSY resends may reorder
//! events within a hunt; such a pair is timed against each other's
//! intended times). The pacer writes each watched hunt's intended send
//! times into a ring ([`SendLog`], one writer, many readers); a subscriber
//! reads the k-th. A subscriber too far behind finds its entry overwritten
//! and counts the update as untimed; after a GAP it stops timing its hunt.
//! Subscribers connect and subscribe before the pacer's first step, when
//! no event is on its way, so they all count from index 0.
//!
//! Frames are scanned in place (`trove_proto::frame::split`, `entries`)
//! in a per-thread read buffer; nothing is decoded per entry. Latencies go
//! into per-thread histograms, merged into a shared one every
//! [`FLUSH_EVERY`]; counters are per-thread atomics with one writer.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::sync::atomic::Ordering::{Acquire, Relaxed, Release};
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Mutex, mpsc};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::net::{TcpSocket, TcpStream};
use trove_proto::frame::{self, Frame, Kind, Sizes, entry_kind};

use super::model::ModeRun;
use super::scrape::Scrape;
use super::{Clock, Latencies, LatencyUs, histogram, latency, lock};

/// Most subscribers of a run.
pub const SUBSCRIBERS_MAX: u32 = 100_000;
/// Most fleet threads.
pub const THREADS_MAX: u32 = 64;
/// Intended-time log entries over all watched hunts (8 bytes each): 64 MiB.
const LOG_ENTRIES_MAX: usize = 1 << 23;
/// And at most this many per subscriber (1 MiB, about its socket
/// buffers' worth), so a few watchers (`--watch 8`, the default) do not
/// cost 64 MiB: 8 subscribers on 8 hunts get 2^17 entries a hunt, 26 s
/// of a hunt's events at 5 M events/s over 1,000 hunts.
const LOG_ENTRIES_PER_SUBSCRIBER: usize = 1 << 17;
/// A watched hunt's ring holds between these many entries.
const RING_MIN: usize = 16;
const RING_MAX: usize = 1 << 20;
/// The per-thread read buffer beyond the largest frame.
const READ_CHUNK: usize = 256 << 10;
/// A subscriber's carried partial frame keeps at most this much room
/// once it is small again.
const CARRY_KEEP: usize = 64 << 10;
/// Connections a fleet thread sets up at once.
const CONNECTING_MAX: usize = 128;
/// How long setting up the fleet may take, plus a millisecond per subscriber.
const SETUP_TIMEOUT: Duration = Duration::from_secs(30);
/// Per-thread latencies reach the shared histogram this often.
const FLUSH_EVERY: Duration = Duration::from_millis(50);
/// Under the server's idle timeout (60 s by default): each subscriber pings.
const PING_EVERY: Duration = Duration::from_secs(15);
/// A slow subscriber reads this often, its budget of bytes per second.
const SLOW_TICK: Duration = Duration::from_millis(100);
/// Receive buffer of a slow subscriber's socket, so that the server's
/// queue, not the kernel's, holds what it has not read.
const SLOW_RCVBUF: u32 = 4096;
/// The treasure hunt's record and outcome sizes.
const SIZES: Sizes = Sizes { record: 32, outcome: 16 };
/// The longest WebSocket message accepted (the server's `ws_message_max`
/// can be at most this).
const WS_MESSAGE_MAX: usize = 64 << 20;

/// Intended time, step and lap packed in a ring slot.
const STEP_BITS: u32 = 16;
const LAP_BITS: u32 = 12;
const US_BITS: u32 = 64 - STEP_BITS - LAP_BITS;

/// Which hunt each subscriber watches.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum HuntChoice {
    /// Each draws its hunt from a Zipf distribution of this exponent over
    /// the hunts ranked by number (hunt 0 the most watched); seeded.
    Zipf(f64),
    /// Spread evenly over all hunts.
    All,
    /// Every subscriber watches this hunt.
    One(u32),
}

impl HuntChoice {
    pub fn parse(s: &str) -> Result<Self, String> {
        let bad = || format!("--subscriber-hunts takes zipf:S (0 < S <= 10), all, or a hunt number, not `{s}`");
        if s == "all" {
            return Ok(Self::All);
        }
        if let Some(x) = s.strip_prefix("zipf:") {
            let e: f64 = x.parse().map_err(|_| bad())?;
            return if e.is_finite() && e > 0.0 && e <= 10.0 { Ok(Self::Zipf(e)) } else { Err(bad()) };
        }
        s.parse().map(Self::One).map_err(|_| bad())
    }

    /// The hunt of each of `n` subscribers over `hunts` hunts.
    pub fn assign(self, hunts: u32, n: u32, seed: u64) -> Result<Vec<u32>, String> {
        assert!(hunts > 0, "a workload has hunts");
        Ok(match self {
            Self::One(h) if h >= hunts => {
                return Err(format!("--subscriber-hunts {h}: the workload has hunts 0..{hunts}"));
            }
            Self::One(h) => vec![h; n as usize],
            // Like the single watcher's choice: spread over the hunt
            // numbers, so over connections and shards, hunt 0 among them.
            Self::All => {
                (0..n).map(|i| (u64::from(i) * u64::from(hunts) / u64::from(n.max(1))) as u32 % hunts).collect()
            }
            Self::Zipf(s) => {
                let mut cdf = Vec::with_capacity(hunts as usize);
                let mut total = 0.0;
                for r in 0..hunts {
                    total += 1.0 / f64::from(r + 1).powf(s);
                    cdf.push(total);
                }
                let mut rng = trove_core::rng::SplitMix64::new(trove_core::rng::mix64(seed ^ 0xFA70_u64));
                (0..n)
                    .map(|_| {
                        let u = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64 * total;
                        (cdf.partition_point(|&c| c <= u) as u32).min(hunts - 1)
                    })
                    .collect()
            }
        })
    }
}

/// The fleet's settings.
#[derive(Clone, Debug)]
pub struct FleetArgs {
    pub subscribers: u32,
    pub hunts: HuntChoice,
    /// WebSocket JSON instead of TCP protocol v1.
    pub ws: bool,
    /// Of the subscribers, these read slowly (the last ones).
    pub slow: u32,
    pub slow_bytes_per_s: u32,
    pub threads: u32,
    /// A subscriber that read something waits this long before it reads
    /// again (zero: it reads as soon as more is there), so that a read
    /// takes what came in meanwhile: a browser reading once a frame.
    pub read_interval: Duration,
}

/// A watched hunt's intended send times: slot `k & mask` holds the k-th
/// event's, tagged with its lap so a reader can tell it was overwritten.
#[derive(Debug)]
struct Ring {
    head: AtomicU64,
    /// The stream no longer follows the log: a batch holding some of its
    /// logged events was refused (logged, never applied).
    desynced: AtomicBool,
    mask: u64,
    shift: u32,
    slots: Box<[AtomicU64]>,
}

/// What a reader finds at an index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Logged {
    /// Intended time (us since the run's epoch) and step.
    At(u64, u32),
    /// Overwritten: the reader is more than a ring behind.
    Overwritten,
    /// Not logged yet: the stream has more entries than events were sent.
    Ahead,
}

impl Ring {
    fn new(size: usize) -> Self {
        assert!(size.is_power_of_two() && (RING_MIN..=RING_MAX).contains(&size), "ring size {size}");
        Self {
            head: AtomicU64::new(0),
            desynced: AtomicBool::new(false),
            mask: size as u64 - 1,
            shift: size.trailing_zeros(),
            slots: (0..size).map(|_| AtomicU64::new(u64::MAX)).collect(),
        }
    }

    fn lap(&self, k: u64) -> u64 {
        (k >> self.shift) & ((1 << LAP_BITS) - 1)
    }

    /// The pacer only.
    fn push(&self, us: u64, step: u32) {
        let k = self.head.load(Relaxed);
        let v = if us < 1 << US_BITS && step < 1 << STEP_BITS {
            (us << (STEP_BITS + LAP_BITS)) | (u64::from(step) << LAP_BITS) | self.lap(k)
        } else {
            // Past what a slot holds (19 hours, 65536 steps): untimed.
            u64::MAX
        };
        self.slots[(k & self.mask) as usize].store(v, Relaxed);
        self.head.store(k + 1, Release);
    }

    fn get(&self, k: u64) -> Logged {
        let head = self.head.load(Acquire);
        if k >= head {
            return Logged::Ahead;
        }
        if head - k > self.mask + 1 {
            return Logged::Overwritten;
        }
        let v = self.slots[(k & self.mask) as usize].load(Relaxed);
        if v == u64::MAX || v & ((1 << LAP_BITS) - 1) != self.lap(k) {
            return Logged::Overwritten;
        }
        Logged::At(v >> (STEP_BITS + LAP_BITS), ((v >> LAP_BITS) & ((1 << STEP_BITS) - 1)) as u32)
    }

    /// For an overwritten index: a later entry still held (the oldest
    /// one, else the newest), whose intended time is no earlier than the
    /// lost one's (the pacer logs a hunt's events in intended-time
    /// order), so `now` less it is a lower bound of the lost latency.
    fn held_after_overwritten(&self) -> Option<(u64, u32)> {
        let head = self.head.load(Acquire);
        let oldest = head.saturating_sub(self.mask + 1);
        [oldest, oldest + ((self.mask + 1) >> 1), head.saturating_sub(1)].into_iter().find_map(|k| match self.get(k) {
            Logged::At(us, step) => Some((us, step)),
            _ => None,
        })
    }
}

/// The intended send times of the watched hunts' events, written by the
/// pacer as it generates them. Bounded: at most [`LOG_ENTRIES_MAX`]
/// entries over all hunts and [`LOG_ENTRIES_PER_SUBSCRIBER`] per
/// subscriber (at least [`RING_MIN`] per hunt).
#[derive(Debug)]
pub struct SendLog {
    /// By hunt: index into `rings`, or u32::MAX.
    index: Vec<u32>,
    rings: Vec<Ring>,
}

impl SendLog {
    pub fn new(hunts: u32, watched: &[u32]) -> Self {
        let mut index = vec![u32::MAX; hunts as usize];
        let mut distinct = 0usize;
        for &h in watched {
            if index[h as usize] == u32::MAX {
                index[h as usize] = distinct as u32;
                distinct += 1;
            }
        }
        let budget = LOG_ENTRIES_MAX.min(watched.len().saturating_mul(LOG_ENTRIES_PER_SUBSCRIBER));
        let per = budget.checked_div(distinct).unwrap_or(RING_MIN).max(1);
        let size = (1usize << per.ilog2()).clamp(RING_MIN, RING_MAX);
        Self { index, rings: (0..distinct).map(|_| Ring::new(size)).collect() }
    }

    pub fn none() -> Self {
        Self { index: Vec::new(), rings: Vec::new() }
    }

    pub fn is_empty(&self) -> bool {
        self.rings.is_empty()
    }

    fn ring(&self, hunt: u32) -> Option<&Ring> {
        let i = *self.index.get(hunt as usize)?;
        self.rings.get(i as usize)
    }

    /// The pacer's record of an event to `hunt` meant for `intended_ns`.
    #[inline]
    pub fn record(&self, hunt: u32, intended_ns: u64, step: u32) {
        if let Some(r) = self.ring(hunt) {
            r.push(intended_ns / 1000, step);
        }
    }

    fn head(&self, hunt: u32) -> u64 {
        self.ring(hunt).map_or(0, |r| r.head.load(Acquire))
    }

    /// Producer connection `part` of `parts` (which sends the hunts `h`
    /// with `h % parts == part`, as `Generator::partition` cuts them) had
    /// a batch refused: its events were logged but never applied, so its
    /// watched hunts' streams no longer line up with the log. Their
    /// subscribers stop timing them.
    pub fn refused(&self, part: u32, parts: u32) {
        for (h, &i) in self.index.iter().enumerate() {
            if i != u32::MAX && (h as u64) % u64::from(parts.max(1)) == u64::from(part) {
                self.rings[i as usize].desynced.store(true, Relaxed);
            }
        }
    }

    fn desynced(&self, hunt: u32) -> bool {
        self.ring(hunt).is_some_and(|r| r.desynced.load(Relaxed))
    }
}

/// Counters of one thread's fast or slow subscribers (one writer).
#[derive(Debug, Default)]
struct Counters {
    entries: AtomicU64,
    bytes: AtomicU64,
    gaps: AtomicU64,
    gap_entries: AtomicU64,
    /// APPLIED entries not timed: after a GAP, once desynced, or read
    /// before their matched intended time (`reordered`).
    untimed: AtomicU64,
    /// APPLIED entries whose log slot was overwritten, timed as a lower
    /// bound (from a later entry's intended time).
    lower_bound: AtomicU64,
    /// APPLIED entries read before the intended time they were matched
    /// with: the stream is out of the pacer's order (a BUSY resend).
    reordered: AtomicU64,
    /// Streams that stopped lining up with the log (more entries than
    /// events sent, a hole in the numbering without a GAP, or a refused
    /// batch).
    desynced: AtomicU64,
}

/// A subscriber's counts: what one scan of read bytes found, or the
/// totals of [`Counters`] at a moment.
#[derive(Clone, Copy, Debug, Default)]
struct Count {
    entries: u64,
    bytes: u64,
    gaps: u64,
    gap_entries: u64,
    untimed: u64,
    lower_bound: u64,
    reordered: u64,
    desynced: u64,
}

impl Counters {
    fn read(&self) -> Count {
        Count {
            entries: self.entries.load(Relaxed),
            bytes: self.bytes.load(Relaxed),
            gaps: self.gaps.load(Relaxed),
            gap_entries: self.gap_entries.load(Relaxed),
            untimed: self.untimed.load(Relaxed),
            lower_bound: self.lower_bound.load(Relaxed),
            reordered: self.reordered.load(Relaxed),
            desynced: self.desynced.load(Relaxed),
        }
    }

    fn add(&self, t: &Count) {
        self.entries.fetch_add(t.entries, Relaxed);
        self.bytes.fetch_add(t.bytes, Relaxed);
        if t.gaps + t.untimed + t.lower_bound + t.desynced > 0 {
            self.gaps.fetch_add(t.gaps, Relaxed);
            self.gap_entries.fetch_add(t.gap_entries, Relaxed);
            self.untimed.fetch_add(t.untimed, Relaxed);
            self.lower_bound.fetch_add(t.lower_bound, Relaxed);
            self.reordered.fetch_add(t.reordered, Relaxed);
            self.desynced.fetch_add(t.desynced, Relaxed);
        }
    }
}

impl Count {
    fn since(self, o: Count) -> Count {
        Count {
            entries: self.entries - o.entries,
            bytes: self.bytes - o.bytes,
            gaps: self.gaps - o.gaps,
            gap_entries: self.gap_entries - o.gap_entries,
            untimed: self.untimed - o.untimed,
            lower_bound: self.lower_bound - o.lower_bound,
            reordered: self.reordered - o.reordered,
            desynced: self.desynced - o.desynced,
        }
    }

    fn plus(self, o: Count) -> Count {
        Count {
            entries: self.entries + o.entries,
            bytes: self.bytes + o.bytes,
            gaps: self.gaps + o.gaps,
            gap_entries: self.gap_entries + o.gap_entries,
            untimed: self.untimed + o.untimed,
            lower_bound: self.lower_bound + o.lower_bound,
            reordered: self.reordered + o.reordered,
            desynced: self.desynced + o.desynced,
        }
    }
}

/// A fleet thread's figures, shared with the bench.
#[derive(Debug, Default)]
struct ThreadShared {
    /// The thread's Linux id, for its CPU time; 0 until it runs.
    tid: AtomicU64,
    fast: Counters,
    slow: Counters,
    latencies: Mutex<Latencies>,
    flushes: AtomicU64,
}

/// A subscriber's progress, for `pending`: one cache line each, as its
/// thread stores `applied` on every read and neighbours belong to other
/// threads.
#[derive(Debug, Default)]
#[repr(align(64))]
struct SubShared {
    /// APPLIED entries seen.
    applied: AtomicU64,
    /// Still timing its hunt.
    synced: AtomicBool,
}

/// The fleet's counters at one moment.
#[derive(Clone, Debug)]
pub struct Snapshot {
    fast: Count,
    slow: Count,
    /// CPU time of the fleet's threads.
    cpu: Duration,
    /// CPU time of each fleet thread.
    thread_cpu: Vec<Duration>,
    at: Instant,
}

/// One step's fan-out figures.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct FanoutStep {
    pub subscribers: u32,
    pub slow_subscribers: u32,
    /// tcp or ws.
    pub transport: String,
    /// Distinct hunts watched.
    pub hunts_watched: u32,
    /// Entries (APPLIED and BROADCAST) the subscribers that keep up
    /// received, per second of the step.
    pub updates_per_s: f64,
    /// Bytes those subscribers read, per second (frames, or WebSocket messages).
    pub bytes_per_s: f64,
    /// Update latency of the subscribers that keep up: from the event's
    /// intended send time to its APPLIED entry read by the subscriber.
    /// Includes the `updates_lower_bound` ones, so a figure is itself at
    /// least what it says when those are not zero.
    pub latency_us: Option<LatencyUs>,
    /// APPLIED entries in `latency_us` (the step's, read up to the settle
    /// after the step).
    pub updates_timed: u64,
    /// Of those, entries read more than the log's ring behind (their slot
    /// overwritten): timed from a later event's intended time, a lower bound.
    pub updates_lower_bound: u64,
    /// Entries of earlier steps read after those steps were reported
    /// (the settle after a step gave up): in no step's latency.
    pub updates_late: u64,
    /// APPLIED entries not timed: after a GAP, once desynced, or reordered.
    /// This and the counts below run from the last step's settle to this
    /// one's (the rates above cover the step's window only).
    pub updates_untimed: u64,
    /// APPLIED entries read before the intended time they were matched
    /// with (BUSY resends reorder a hunt's events): not timed.
    pub updates_reordered: u64,
    /// Streams that stopped lining up with what was sent.
    pub desynced: u64,
    pub gaps: u64,
    pub gap_entries: u64,
    pub slow_updates_per_s: f64,
    pub slow_bytes_per_s: f64,
    pub slow_gaps: u64,
    pub slow_gap_entries: u64,
    /// Gaps the server opened, and entries it dropped, for subscribers
    /// that fell behind (its /metrics). A slow reader meets its GAP only
    /// after reading what was queued before it (its socket's and the
    /// server's send buffers, megabytes on loopback): these count at once.
    pub server_gaps: Option<u64>,
    pub server_updates_dropped: Option<u64>,
    /// All of the server's CPU in the step (ingest included) per delivered
    /// update (fast and slow), nanoseconds. Not the fan-out's own cost:
    /// scripts/fanout-pairs.py takes the difference to a run without
    /// subscribers for that.
    pub server_cpu_ns_per_update: Option<f64>,
    /// The fleet threads' CPU, cores (1.0: one core busy), summed.
    pub generator_cpu_cores: f64,
    /// The busiest fleet thread's CPU, cores: at about 0.9 or more that
    /// thread may be what holds the subscribers back.
    pub generator_busiest_thread_cores: f64,
    /// The fleet threads' CPU per delivered update, nanoseconds.
    pub generator_cpu_ns_per_update: Option<f64>,
}

/// The running fleet; stopped when dropped.
#[derive(Debug)]
pub struct Fleet {
    args: FleetArgs,
    log: Arc<SendLog>,
    hunts: Vec<u32>,
    threads: Vec<Arc<ThreadShared>>,
    subs: Arc<Vec<SubShared>>,
    stop: Arc<AtomicBool>,
    joins: Vec<std::thread::JoinHandle<()>>,
    error: Arc<Mutex<Option<String>>>,
    hunts_watched: u32,
    /// The counters at the last step's settle: the next step counts from them.
    counted: Mutex<Option<Snapshot>>,
}

/// What a fleet thread is given.
struct ThreadPlan {
    /// (subscriber index, hunt, slow).
    subs: Vec<(usize, u32, bool)>,
    addr: SocketAddr,
    ws: bool,
    slow_bytes_per_s: u32,
    read_interval: Duration,
    log: Arc<SendLog>,
    shared: Arc<ThreadShared>,
    subs_shared: Arc<Vec<SubShared>>,
    clock: Clock,
    stop: Arc<AtomicBool>,
    ready: mpsc::Sender<Result<(), String>>,
    error: Arc<Mutex<Option<String>>>,
}

impl Snapshot {
    pub fn seconds_since(&self, a: &Snapshot) -> f64 {
        self.at.duration_since(a.at).as_secs_f64().max(1e-9)
    }
}

impl Fleet {
    /// The hunts `args` assign, the pacer's log for them.
    pub fn plan(args: &FleetArgs, hunts: u32, seed: u64) -> Result<(Vec<u32>, Arc<SendLog>), String> {
        let assigned = args.hunts.assign(hunts, args.subscribers, seed)?;
        let log = Arc::new(SendLog::new(hunts, &assigned));
        Ok((assigned, log))
    }

    /// Connects and subscribes every subscriber (to `addr`: the TCP
    /// listener, or the WebSocket one); returns once all are subscribed.
    /// `producers`: the run's producer connections, which need files too.
    pub(super) fn start(
        args: &FleetArgs,
        assigned: Vec<u32>,
        log: Arc<SendLog>,
        addr: SocketAddr,
        clock: Clock,
        producers: u32,
    ) -> Result<Self, String> {
        let n = assigned.len();
        assert!(n == args.subscribers as usize && args.slow <= args.subscribers);
        check_open_files(n, producers)?;
        let threads_n = (args.threads.max(1) as usize).min(n.max(1));
        let subs: Arc<Vec<SubShared>> = Arc::new((0..n).map(|_| SubShared::default()).collect());
        let stop = Arc::new(AtomicBool::new(false));
        let error = Arc::new(Mutex::new(None));
        let (ready_tx, ready) = mpsc::channel();
        let mut fleet = Self {
            args: args.clone(),
            log: log.clone(),
            hunts_watched: log.rings.len() as u32,
            hunts: assigned.clone(),
            threads: Vec::new(),
            subs: subs.clone(),
            stop: stop.clone(),
            joins: Vec::new(),
            error: error.clone(),
            counted: Mutex::new(None),
        };
        let slow_from = n - args.slow as usize;
        for t in 0..threads_n {
            let plan = ThreadPlan {
                // Round robin, so fast and slow ones spread over threads.
                subs: (t..n).step_by(threads_n).map(|i| (i, assigned[i], i >= slow_from)).collect(),
                addr,
                ws: args.ws,
                slow_bytes_per_s: args.slow_bytes_per_s,
                read_interval: args.read_interval,
                log: log.clone(),
                shared: Arc::new(ThreadShared::default()),
                subs_shared: subs.clone(),
                clock,
                stop: stop.clone(),
                ready: ready_tx.clone(),
                error: error.clone(),
            };
            fleet.threads.push(plan.shared.clone());
            let join = std::thread::Builder::new()
                .name(format!("bench-fanout-{t}"))
                .spawn(move || fleet_thread(plan))
                .map_err(|e| format!("fan-out thread: {e}"))?;
            fleet.joins.push(join);
        }
        drop(ready_tx);
        let deadline = Instant::now() + SETUP_TIMEOUT + Duration::from_millis(n as u64);
        let mut done = 0;
        while done < n {
            let left = deadline.saturating_duration_since(Instant::now());
            match ready.recv_timeout(left) {
                Ok(Ok(())) => done += 1,
                Ok(Err(e)) => return Err(e),
                Err(_) => return Err(format!("{done} of {n} subscribers connected and subscribed in time")),
            }
        }
        Ok(fleet)
    }

    /// Counters and CPU now.
    pub fn snapshot(&self) -> Snapshot {
        let mut s = Snapshot {
            fast: Count::default(),
            slow: Count::default(),
            cpu: Duration::ZERO,
            thread_cpu: Vec::with_capacity(self.threads.len()),
            at: Instant::now(),
        };
        for t in &self.threads {
            s.fast = s.fast.plus(t.fast.read());
            s.slow = s.slow.plus(t.slow.read());
            let cpu = thread_cpu(t.tid.load(Relaxed));
            s.cpu += cpu;
            s.thread_cpu.push(cpu);
        }
        s
    }

    /// APPLIED entries sent to the hunts of subscribers still timing them
    /// and not yet read by them.
    pub fn pending(&self) -> u64 {
        let fast = self.hunts.len() - self.args.slow as usize;
        (0..fast)
            .filter(|&i| self.subs[i].synced.load(Relaxed) && !self.log.desynced(self.hunts[i]))
            .map(|i| self.log.head(self.hunts[i]).saturating_sub(self.subs[i].applied.load(Relaxed)))
            .sum()
    }

    /// Waits (bounded by `within`: the bench gives its drain timeout) for
    /// the fast subscribers to read what was sent, and for every thread to
    /// flush its latencies after that. Whatever is read later counts as
    /// `updates_late`.
    pub fn settle(&self, within: Duration) {
        let until = Instant::now() + within;
        while self.pending() > 0 && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(5));
        }
        let marks: Vec<u64> = self.threads.iter().map(|t| t.flushes.load(Acquire)).collect();
        while Instant::now() < until + FLUSH_EVERY * 4
            && self.threads.iter().zip(&marks).any(|(t, &m)| t.flushes.load(Acquire) < m + 2)
        {
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// The first error of any subscriber, if one failed.
    pub fn error(&self) -> Option<String> {
        lock(&self.error).clone()
    }

    /// The step `index`'s figures: rates between the window's two
    /// snapshots, counts from the last step's settle to now (call it after
    /// `settle`); forgets its latencies and any left of earlier steps.
    pub fn step(
        &self,
        index: u32,
        (a, b): (&Snapshot, &Snapshot),
        scrapes: Option<(&Scrape, &Scrape)>,
        server_cpu_s: Option<f64>,
    ) -> FanoutStep {
        let server = |name: &str| scrapes.map(|(x, y)| (y.sum(name, &[]) - x.sum(name, &[])).max(0.0) as u64);
        let secs = b.seconds_since(a);
        let (fast, slow) = (b.fast.since(a.fast), b.slow.since(a.slow));
        let settled = self.snapshot();
        let (fast_n, slow_n) = {
            let mut counted = lock(&self.counted);
            let base = counted.take().unwrap_or_else(|| a.clone());
            let n = (settled.fast.since(base.fast), settled.slow.since(base.slow));
            *counted = Some(settled);
            n
        };
        let mut h = histogram();
        let (mut timed, mut late) = (0, 0);
        for t in &self.threads {
            let mut l = lock(&t.latencies);
            timed += l.merge_into(index, &mut h);
            late += l.steps.iter().filter(|s| s.0 < index).map(|s| s.2).sum::<u64>();
            l.collected(index);
        }
        let delivered = fast.entries + slow.entries;
        let cpu = b.cpu.saturating_sub(a.cpu).as_secs_f64();
        let busiest = b
            .thread_cpu
            .iter()
            .zip(&a.thread_cpu)
            .map(|(y, x)| y.saturating_sub(*x).as_secs_f64() / secs)
            .fold(0.0, f64::max);
        let per = |s: f64| (delivered > 0).then(|| s * 1e9 / delivered as f64);
        FanoutStep {
            subscribers: self.args.subscribers,
            slow_subscribers: self.args.slow,
            transport: if self.args.ws { "ws" } else { "tcp" }.into(),
            hunts_watched: self.hunts_watched,
            updates_per_s: fast.entries as f64 / secs,
            bytes_per_s: fast.bytes as f64 / secs,
            latency_us: (timed > 0).then(|| latency(&h)),
            updates_timed: timed,
            updates_lower_bound: fast_n.lower_bound,
            updates_late: late,
            updates_untimed: fast_n.untimed,
            updates_reordered: fast_n.reordered,
            desynced: fast_n.desynced,
            gaps: fast_n.gaps,
            gap_entries: fast_n.gap_entries,
            slow_updates_per_s: slow.entries as f64 / secs,
            slow_bytes_per_s: slow.bytes as f64 / secs,
            slow_gaps: slow_n.gaps,
            slow_gap_entries: slow_n.gap_entries,
            server_gaps: server("trove_update_gaps_total"),
            server_updates_dropped: server("trove_updates_dropped_total"),
            server_cpu_ns_per_update: server_cpu_s.and_then(per),
            generator_cpu_cores: cpu / secs,
            generator_busiest_thread_cores: busiest,
            generator_cpu_ns_per_update: per(cpu),
        }
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        self.stop.store(true, Relaxed);
        for j in self.joins.drain(..) {
            let _ = j.join();
        }
    }
}

/// The generator's open-file limit must cover the subscribers' sockets,
/// the producers' and a reserve (the runtimes, files, scrapes); raised to
/// the hard limit if need be.
fn check_open_files(subscribers: usize, producers: u32) -> Result<(), String> {
    const RESERVE: u64 = 256;
    let need = subscribers as u64 + u64::from(producers) + RESERVE;
    let limit = trove_server::fds::raise_open_files_limit().map_err(|e| format!("the open-file limit: {e}"))?;
    if limit < need {
        return Err(format!(
            "{subscribers} subscribers and {producers} producers need about {need} open files; the limit is {limit} \
             (raise it: ulimit -n)"
        ));
    }
    Ok(())
}

/// CPU time of thread `tid` of this process (0: unknown): run time from
/// schedstat, nanoseconds.
fn thread_cpu(tid: u64) -> Duration {
    if tid == 0 {
        return Duration::ZERO;
    }
    let path = format!("/proc/self/task/{tid}/schedstat");
    let ns = std::fs::read_to_string(path)
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|x| x.parse::<u64>().ok()))
        .unwrap_or(0);
    Duration::from_nanos(ns)
}

/// This thread's Linux id, from /proc/thread-self.
fn own_tid() -> u64 {
    std::fs::read_link("/proc/thread-self")
        .ok()
        .and_then(|p| p.file_name().and_then(|n| n.to_str()).and_then(|n| n.parse().ok()))
        .unwrap_or(0)
}

/// A thread's state shared by its subscriber tasks (one thread: no lock).
struct Local {
    /// The read buffer: a carried partial frame, then what is read.
    buf: Vec<u8>,
    latencies: Latencies,
    /// Every live connection, to ping (and whether it speaks WebSocket);
    /// a subscriber's task owns its stream, so one that ended is gone.
    streams: Vec<(Weak<TcpStream>, bool)>,
}

fn fleet_thread(plan: ThreadPlan) {
    plan.shared.tid.store(own_tid(), Relaxed);
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            let _ = plan.ready.send(Err(format!("fan-out runtime: {e}")));
            return;
        }
    };
    let local = Rc::new(RefCell::new(Local { buf: Vec::new(), latencies: Latencies::default(), streams: Vec::new() }));
    let set = tokio::task::LocalSet::new();
    let ThreadPlan {
        subs,
        addr,
        ws,
        slow_bytes_per_s,
        read_interval,
        log,
        shared,
        subs_shared,
        clock,
        stop,
        ready,
        error,
    } = plan;
    set.block_on(&runtime, async move {
        let gate = Rc::new(tokio::sync::Semaphore::new(CONNECTING_MAX));
        for (i, hunt, slow) in subs {
            let sub = Sub {
                index: i,
                hunt,
                slow,
                ws,
                applied: 0,
                next_seq: 0,
                synced: true,
                carry: Vec::new(),
                frame_max: frame::FRAME_BODY_MAX_DEFAULT as usize,
            };
            let ctx = Ctx {
                log: log.clone(),
                shared: shared.clone(),
                subs: subs_shared.clone(),
                local: local.clone(),
                clock,
                slow_bytes_per_s,
                read_interval,
            };
            let (gate, ready, error, stop) = (gate.clone(), ready.clone(), error.clone(), stop.clone());
            let watch_error = error.clone();
            let task = tokio::task::spawn_local(async move {
                let permit = gate.acquire().await;
                let conn = tokio::time::timeout(SETUP_TIMEOUT, connect(addr, sub, &ctx)).await;
                drop(permit);
                let (stream, sub) = match conn {
                    Ok(Ok(c)) => c,
                    Ok(Err(e)) => {
                        let _ = ready.send(Err(e));
                        return;
                    }
                    Err(_) => {
                        let _ = ready.send(Err(format!("subscriber {i}: no SUBSCRIBED within {SETUP_TIMEOUT:?}")));
                        return;
                    }
                };
                let stream = Rc::new(stream);
                ctx.local.borrow_mut().streams.push((Rc::downgrade(&stream), sub.ws));
                let _ = ready.send(Ok(()));
                drop(ready);
                if let Err(e) = read_loop(&stream, sub, &ctx).await
                    && !stop.load(Relaxed)
                {
                    lock(&error).get_or_insert(e);
                }
            });
            // A task that panicked (a bug: hostile input is an error) is
            // not lost silently.
            tokio::task::spawn_local(async move {
                if let Err(e) = task.await
                    && e.is_panic()
                {
                    lock(&watch_error).get_or_insert_with(|| format!("subscriber {i}: its task panicked"));
                }
            });
        }
        drop(ready);
        // Flushes the thread's latencies; ends the thread when told to stop.
        let mut tick = tokio::time::interval(FLUSH_EVERY);
        let mut next_ping = Instant::now() + PING_EVERY;
        let (ping_tcp, ping_ws) = {
            let mut out = Vec::new();
            frame::encode_u64_frame(&mut out, Kind::Ping, 0);
            (out, ws_text(br#"{"type":"ping","nonce":0}"#))
        };
        loop {
            tick.tick().await;
            if Instant::now() >= next_ping {
                // Tiny frames into sockets that send nothing else: a full
                // send buffer (never seen) would skip a ping, or cut one.
                local.borrow_mut().streams.retain(|(s, ws)| {
                    let Some(s) = s.upgrade() else { return false };
                    let ping = if *ws { &ping_ws } else { &ping_tcp };
                    if matches!(s.try_write(ping), Ok(n) if n < ping.len()) {
                        lock(&error).get_or_insert_with(|| "a ping was cut short".into());
                    }
                    true
                });
                next_ping = Instant::now() + PING_EVERY;
            }
            {
                let mut l = local.borrow_mut();
                let mut shared_l = lock(&shared.latencies);
                for (step, h, n) in l.latencies.steps.drain(..) {
                    match shared_l.steps.iter_mut().find(|s| s.0 == step) {
                        Some(s) => {
                            s.1.add(&h).ok();
                            s.2 += n;
                        }
                        None => shared_l.steps.push((step, h, n)),
                    }
                }
            }
            shared.flushes.fetch_add(1, Release);
            if stop.load(Relaxed) {
                break;
            }
        }
    });
    // The tasks (and their sockets) go while the runtime is still there.
    drop(set);
    runtime.shutdown_timeout(Duration::from_millis(100));
}

/// What every task of a thread shares.
struct Ctx {
    log: Arc<SendLog>,
    shared: Arc<ThreadShared>,
    subs: Arc<Vec<SubShared>>,
    local: Rc<RefCell<Local>>,
    clock: Clock,
    slow_bytes_per_s: u32,
    read_interval: Duration,
}

/// One subscriber's stream state.
#[derive(Debug)]
struct Sub {
    index: usize,
    hunt: u32,
    slow: bool,
    ws: bool,
    /// APPLIED entries seen since SUBSCRIBED: the index of the next in the log.
    applied: u64,
    /// The number the next entry must carry.
    next_seq: u64,
    /// Timing its hunt (false after a GAP, or once the stream and the log
    /// no longer line up).
    synced: bool,
    /// The unfinished frame (or WebSocket frame) after the last read.
    carry: Vec<u8>,
    frame_max: usize,
}

async fn connect(addr: SocketAddr, mut sub: Sub, ctx: &Ctx) -> Result<(TcpStream, Sub), String> {
    let (index, hunt) = (sub.index, sub.hunt);
    let who = move |e: String| format!("subscriber {index} (hunt {hunt}): {e}");
    let socket = if addr.is_ipv4() { TcpSocket::new_v4() } else { TcpSocket::new_v6() };
    let socket = socket.map_err(|e| who(e.to_string()))?;
    if sub.slow {
        socket.set_recv_buffer_size(SLOW_RCVBUF).map_err(|e| who(e.to_string()))?;
    }
    let mut stream = socket.connect(addr).await.map_err(|e| who(format!("connecting to {addr}: {e}")))?;
    stream.set_nodelay(true).ok();
    let hunt = sub.hunt;
    if sub.ws {
        ws_handshake(&mut stream, addr).await.map_err(&who)?;
        write_all(&stream, &ws_text(format!(r#"{{"type":"subscribe","hunt":{hunt}}}"#).as_bytes()))
            .await
            .map_err(&who)?;
    } else {
        let mut out = Vec::new();
        frame::encode_hello(&mut out, &frame::Hello { version: frame::VERSION, flags: 0, producer_id: 0 });
        frame::encode_u32_frame(&mut out, Kind::Subscribe, hunt);
        write_all(&stream, &out).await.map_err(&who)?;
    }
    // Up to SUBSCRIBED, read without the thread's buffer.
    let mut buf = Vec::new();
    let mut head_read = false;
    loop {
        stream.readable().await.map_err(|e| who(e.to_string()))?;
        let mut chunk = [0u8; 4096];
        match stream.try_read(&mut chunk) {
            Ok(0) => return Err(who("the server closed the connection before SUBSCRIBED".into())),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(who(e.to_string())),
        }
        if buf.len() > 1 << 20 {
            return Err(who("more than 1 MiB before SUBSCRIBED".into()));
        }
        let mut at = 0;
        let subscribed =
            if sub.ws { ws_setup(&buf, &mut at, &mut sub, &mut head_read) } else { tcp_setup(&buf, &mut at, &mut sub) };
        let subscribed = subscribed.map_err(&who)?;
        buf.drain(..at);
        if subscribed {
            ctx.subs[sub.index].synced.store(true, Relaxed);
            sub.carry = buf;
            return Ok((stream, sub));
        }
    }
}

/// Reads WELCOME then SUBSCRIBED from `buf[*at..]`: true once subscribed.
fn tcp_setup(buf: &[u8], at: &mut usize, sub: &mut Sub) -> Result<bool, String> {
    while let Some((header, total)) =
        frame::split(&buf[*at..], frame::FRAME_BODY_MAX_LIMIT).map_err(|e| e.to_string())?
    {
        let body = &buf[*at + frame::HEADER_LEN..*at + total];
        let f = frame::decode(header, body, SIZES).map_err(|e| e.to_string())?;
        *at += total;
        match f {
            // The server's word, within the protocol's limit.
            Frame::Welcome(w) => sub.frame_max = w.frame_body_max.min(frame::FRAME_BODY_MAX_LIMIT) as usize,
            Frame::Subscribed { hunt, next_seq } if hunt == sub.hunt => {
                sub.next_seq = next_seq;
                return Ok(true);
            }
            Frame::Error { code, message } => return Err(format!("server error {code}: {message}")),
            other => return Err(format!("unexpected {:?} before SUBSCRIBED", kind_of(&other))),
        }
    }
    Ok(false)
}

fn kind_of(f: &Frame<'_>) -> &'static str {
    match f {
        Frame::Update { .. } => "UPDATE",
        Frame::Gap { .. } => "GAP",
        Frame::Pong { .. } => "PONG",
        _ => "frame",
    }
}

async fn write_all(stream: &TcpStream, mut bytes: &[u8]) -> Result<(), String> {
    while !bytes.is_empty() {
        stream.writable().await.map_err(|e| e.to_string())?;
        match stream.try_write(bytes) {
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e.to_string()),
        }
    }
    Ok(())
}

/// Reads until the connection ends (the fleet's thread drops the task
/// when it stops).
async fn read_loop(stream: &TcpStream, mut sub: Sub, ctx: &Ctx) -> Result<(), String> {
    let (index, hunt) = (sub.index, sub.hunt);
    let who = move |e: String| format!("subscriber {index} (hunt {hunt}): {e}");
    // What came with SUBSCRIBED is scanned first.
    let mut first = !sub.carry.is_empty();
    // Reads at most once an interval.
    let paced = !sub.slow && !ctx.read_interval.is_zero();
    loop {
        if sub.slow {
            tokio::time::sleep(SLOW_TICK).await;
        } else if !first {
            stream.readable().await.map_err(|e| who(e.to_string()))?;
        }
        let n = read_once(stream, &mut sub, ctx, std::mem::take(&mut first)).map_err(&who)?;
        if paced && n > 0 {
            tokio::time::sleep(ctx.read_interval).await;
        }
    }
}

/// One read (none when `carried_only`: what is carried is scanned) and
/// its scan, in the thread's buffer; returns the bytes read (0 when the
/// socket had none after all).
fn read_once(stream: &TcpStream, sub: &mut Sub, ctx: &Ctx, carried_only: bool) -> Result<usize, String> {
    // A slow reader's budget per tick, at least one byte.
    let slow_budget = (u64::from(ctx.slow_bytes_per_s) * SLOW_TICK.as_millis() as u64 / 1000).max(1) as usize;
    let mut local = ctx.local.borrow_mut();
    let Local { buf, latencies, .. } = &mut *local;
    let mut carry = std::mem::take(&mut sub.carry);
    let carried = carry.len();
    let room = if sub.slow { slow_budget } else { READ_CHUNK };
    // A large frame under way is read on into its own carry, so that
    // what came before is not copied again on every read (quadratic in
    // the frame's size); otherwise the carry is copied into the thread's
    // buffer, and what is read goes after it.
    let direct = carried >= CARRY_KEEP;
    if !direct {
        if buf.len() < carried + room {
            buf.resize(carried + room, 0);
        }
        buf[..carried].copy_from_slice(&carry);
    }
    let work: &mut Vec<u8> = if direct { &mut carry } else { buf };
    if work.len() < carried + room {
        work.resize(carried + room, 0);
    }
    let n = if carried_only {
        0
    } else {
        match stream.try_read(&mut work[carried..carried + room]) {
            Ok(0) => return Err("the server closed the connection".into()),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                carry.truncate(carried);
                sub.carry = carry;
                return Ok(0);
            }
            Err(e) => return Err(e.to_string()),
        }
    };
    let now_us = ctx.clock.now_ns() / 1000;
    let mut tally = Count { bytes: n as u64, ..Count::default() };
    let lat = if sub.slow { None } else { Some(latencies) };
    let used = if sub.ws {
        scan_ws(&work[..carried + n], sub, &ctx.log, now_us, lat, &mut tally)
    } else {
        scan_tcp(&work[..carried + n], sub, &ctx.log, now_us, lat, &mut tally)
    }?;
    if direct {
        carry.truncate(carried + n);
        carry.drain(..used);
    } else {
        carry.clear();
        carry.extend_from_slice(&buf[used..carried + n]);
    }
    if carry.capacity() > CARRY_KEEP && carry.len() < CARRY_KEEP / 4 {
        // A large frame went by: do not keep its room per subscriber.
        carry.shrink_to(CARRY_KEEP / 4);
    }
    sub.carry = carry;
    drop(local);
    let c = if sub.slow { &ctx.shared.slow } else { &ctx.shared.fast };
    c.add(&tally);
    let s = &ctx.subs[sub.index];
    s.applied.store(sub.applied, Relaxed);
    if !sub.synced {
        s.synced.store(false, Relaxed);
    }
    Ok(n)
}

/// Times the APPLIED entry just seen (the `sub.applied`-th).
#[inline]
fn applied(sub: &mut Sub, log: &SendLog, now_us: u64, lat: &mut Option<&mut Latencies>, tally: &mut Count) {
    let k = sub.applied;
    sub.applied += 1;
    if !sub.synced {
        tally.untimed += 1;
        return;
    }
    let Some(lat) = lat else { return };
    let Some(ring) = log.ring(sub.hunt) else { return };
    if ring.desynced.load(Relaxed) {
        // A refused batch: logged events that were never applied.
        sub.synced = false;
        tally.desynced += 1;
        tally.untimed += 1;
        return;
    }
    match ring.get(k) {
        Logged::At(us, _) if now_us < us => {
            // Read before its matched send: out of the pacer's order.
            tally.reordered += 1;
            tally.untimed += 1;
        }
        Logged::At(us, step) => lat.record(step, now_us - us, 1),
        Logged::Overwritten => match ring.held_after_overwritten() {
            // The reader is more than a ring behind: at least this late.
            Some((us, step)) => {
                lat.record(step, now_us.saturating_sub(us), 1);
                tally.lower_bound += 1;
            }
            None => tally.untimed += 1,
        },
        Logged::Ahead => {
            // More updates than events sent: the stream no longer lines up.
            sub.synced = false;
            tally.desynced += 1;
            tally.untimed += 1;
        }
    }
}

/// Scans the whole frames at the front of `buf`; returns the bytes they
/// take (the rest is an unfinished frame).
fn scan_tcp(
    buf: &[u8],
    sub: &mut Sub,
    log: &SendLog,
    now_us: u64,
    mut lat: Option<&mut Latencies>,
    tally: &mut Count,
) -> Result<usize, String> {
    let mut at = 0;
    while let Some((header, total)) = frame::split(&buf[at..], sub.frame_max as u32).map_err(|e| e.to_string())? {
        let body = &buf[at + frame::HEADER_LEN..at + total];
        at += total;
        match header.kind {
            Kind::Update => {
                if header.flags != 0 || body.len() < frame::UPDATE_HEAD_LEN {
                    return Err("malformed UPDATE".into());
                }
                let hunt = u32::from_le_bytes([body[0], body[1], body[2], body[3]]);
                let count = u32::from_le_bytes([body[4], body[5], body[6], body[7]]);
                let first_seq = u64::from_le_bytes(body[8..16].try_into().expect("8 bytes"));
                if hunt != sub.hunt {
                    return Err(format!("an UPDATE of hunt {hunt}, not subscribed"));
                }
                if first_seq != sub.next_seq && sub.synced {
                    // A hole without a GAP: stop timing, go on counting.
                    sub.synced = false;
                    tally.desynced += 1;
                }
                sub.next_seq = first_seq.checked_add(u64::from(count)).ok_or("an UPDATE past sequence 2^64")?;
                let mut seen = 0u32;
                for e in frame::entries(&body[frame::UPDATE_HEAD_LEN..]) {
                    let (kind, _) = e.map_err(|e| format!("UPDATE: {e}"))?;
                    seen += 1;
                    if kind == entry_kind::APPLIED {
                        applied(sub, log, now_us, &mut lat, tally);
                    }
                }
                if seen != count {
                    return Err(format!("an UPDATE of {count} entries holds {seen}"));
                }
                tally.entries += u64::from(count);
            }
            _ => match frame::decode(header, body, SIZES).map_err(|e| e.to_string())? {
                Frame::Gap { first_missed, missed, .. } => gap(sub, first_missed, missed, tally),
                Frame::Pong { .. } | Frame::Subscribed { .. } => {}
                Frame::Error { code, message } => return Err(format!("server error {code}: {message}")),
                other => return Err(format!("unexpected {} frame", kind_of(&other))),
            },
        }
    }
    Ok(at)
}

fn gap(sub: &mut Sub, first_missed: u64, missed: u64, tally: &mut Count) {
    tally.gaps += 1;
    tally.gap_entries += missed;
    // The log's index no longer follows the stream.
    sub.synced = false;
    sub.next_seq = first_missed.saturating_add(missed);
}

// WebSocket: a minimal client of what the server's `/` endpoint speaks
// (text messages of JSON; server frames are unmasked and unfragmented).

async fn ws_handshake(stream: &mut TcpStream, addr: SocketAddr) -> Result<(), String> {
    let req = format!(
        "GET / HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    write_all(stream, req.as_bytes()).await
}

/// A masked client text frame (the mask is zero: masking is then the identity).
fn ws_text(payload: &[u8]) -> Vec<u8> {
    let mut out = vec![0x81];
    match payload.len() {
        n if n < 126 => out.push(0x80 | n as u8),
        n if n <= 0xFFFF => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&[0, 0, 0, 0]);
    out.extend_from_slice(payload);
    out
}

/// One whole server frame at the front of `buf`: (opcode, payload range, total).
fn ws_frame(buf: &[u8]) -> Result<Option<(u8, std::ops::Range<usize>)>, String> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let (b0, b1) = (buf[0], buf[1]);
    if b0 & 0x80 == 0 || b0 & 0x0F == 0 {
        return Err("a fragmented WebSocket message (the bench reads whole messages)".into());
    }
    if b1 & 0x80 != 0 {
        return Err("a masked frame from the server".into());
    }
    let (len, head) = match b1 & 0x7F {
        126 if buf.len() >= 4 => (u64::from(u16::from_be_bytes([buf[2], buf[3]])), 4),
        127 if buf.len() >= 10 => (u64::from_be_bytes(buf[2..10].try_into().expect("8 bytes")), 10),
        126 | 127 => return Ok(None),
        n => (u64::from(n), 2),
    };
    if len > WS_MESSAGE_MAX as u64 {
        return Err(format!("a WebSocket message of {len} bytes"));
    }
    let end = head + len as usize;
    Ok((buf.len() >= end).then_some((b0 & 0x0F, head..end)))
}

/// Reads the upgrade's answer, then `subscribed`: true once subscribed.
fn ws_setup(buf: &[u8], at: &mut usize, sub: &mut Sub, head_read: &mut bool) -> Result<bool, String> {
    if !*head_read {
        let Some(end) = find(buf, b"\r\n\r\n") else { return Ok(false) };
        if !buf.starts_with(b"HTTP/1.1 101") {
            let line = String::from_utf8_lossy(&buf[..end.min(200)]).into_owned();
            return Err(format!("the WebSocket upgrade was answered {line}"));
        }
        *at = end + 4;
        *head_read = true;
    }
    // The first message after the upgrade answers the subscription.
    let Some((op, range)) = ws_frame(&buf[*at..])? else { return Ok(false) };
    let msg = &buf[*at + range.start..*at + range.end];
    *at += range.end;
    if op != 1 {
        return Err(format!("WebSocket opcode {op} before `subscribed`"));
    }
    let v: serde_json::Value = serde_json::from_slice(msg).map_err(|e| e.to_string())?;
    if v["type"].as_str() != Some("subscribed") {
        return Err(format!("unexpected message before `subscribed`: {}", String::from_utf8_lossy(msg)));
    }
    sub.next_seq = v["next_seq"].as_u64().ok_or("`subscribed` without next_seq")?;
    Ok(true)
}

/// The value of `"key":N` in a flat part of a JSON message.
fn json_u64(msg: &[u8], key: &[u8]) -> Option<u64> {
    let at = find(msg, key)? + key.len();
    let digits = msg[at..].iter().take_while(|b| b.is_ascii_digit()).count();
    std::str::from_utf8(&msg[at..at + digits]).ok()?.parse().ok()
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    memchr::memmem::find(hay, needle)
}

/// Scans the whole WebSocket frames at the front of `buf`. An `update`
/// (keys sorted, as serde_json writes them: `{"entries":[...],
/// "first_seq":N,"hunt":H,"type":"update"}`) is counted by its
/// `"kind":"applied"` and `"kind":"broadcast"` (no other field of an
/// entry is named `kind`).
fn scan_ws(
    buf: &[u8],
    sub: &mut Sub,
    log: &SendLog,
    now_us: u64,
    mut lat: Option<&mut Latencies>,
    tally: &mut Count,
) -> Result<usize, String> {
    const KIND: &[u8] = br#""kind":""#;
    static FINDER: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
        std::sync::LazyLock::new(|| memchr::memmem::Finder::new(KIND));
    let kind = &*FINDER;
    let mut at = 0;
    while let Some((op, range)) = ws_frame(&buf[at..])? {
        let msg = &buf[at + range.start..at + range.end];
        at += range.end;
        match op {
            1 => {}
            8 => return Err(format!("the server closed: {}", String::from_utf8_lossy(msg.get(2..).unwrap_or(&[])))),
            9 | 10 => continue,
            _ => return Err(format!("WebSocket opcode {op}")),
        }
        if msg.ends_with(br#""type":"update"}"#) {
            let tail = msg.len().saturating_sub(80);
            let first_seq = json_u64(&msg[tail..], br#""first_seq":"#).ok_or("an update without first_seq")?;
            if first_seq != sub.next_seq && sub.synced {
                sub.synced = false;
                tally.desynced += 1;
            }
            let mut count = 0u64;
            for i in kind.find_iter(msg) {
                let v = &msg[i + KIND.len()..];
                count += 1;
                if v.starts_with(b"applied\"") {
                    applied(sub, log, now_us, &mut lat, tally);
                } else if !v.starts_with(b"broadcast\"") {
                    return Err("an update entry of an unknown kind".into());
                }
            }
            sub.next_seq = first_seq.checked_add(count).ok_or("an update past sequence 2^64")?;
            tally.entries += count;
        } else if msg.ends_with(br#""type":"gap"}"#) {
            let first = json_u64(msg, br#""first_missed":"#).ok_or("a gap without first_missed")?;
            let missed = json_u64(msg, br#""missed":"#).ok_or("a gap without missed")?;
            gap(sub, first, missed, tally);
        } else if msg.ends_with(br#""type":"pong"}"#) || msg.ends_with(br#""type":"subscribed"}"#) {
        } else {
            return Err(format!("unexpected message: {}", String::from_utf8_lossy(&msg[..msg.len().min(200)])));
        }
    }
    Ok(at)
}

fn ms(us: u64) -> String {
    format!("{:.2}", us as f64 / 1e3)
}

/// A fleet thread this busy may itself hold the subscribers back.
pub const GENERATOR_BOUND_CORES: f64 = 0.9;

/// The step's busiest fleet thread was near a full core.
pub fn generator_bound(f: &FanoutStep) -> bool {
    f.generator_busiest_thread_cores >= GENERATOR_BOUND_CORES
}

fn per_update(ns: Option<f64>) -> String {
    ns.map_or("-".into(), |v| format!("{v:.0}"))
}

/// The terminal summary's fan-out lines: one per step with subscribers.
pub fn summary(run: &ModeRun) -> String {
    let mut out = String::new();
    for step in &run.steps {
        let Some(f) = &step.fanout else { continue };
        let lat =
            f.latency_us.map_or("-".into(), |l| format!("p50 {} p99 {} max {} ms", ms(l.p50), ms(l.p99), ms(l.max)));
        out += &format!(
            "{} step {}: {} {} subscribers over {} hunts: {} updates/s ({}B/s), update {lat} \
             ({} timed, {} of them lower bounds; {} untimed, {} late), gaps {}; \
             server (all of it) {} ns and generator {} ns of CPU per update \
             (generator {:.2} cores, busiest thread {:.2}{})",
            run.mode,
            step.step,
            f.subscribers,
            f.transport,
            f.hunts_watched,
            crate::text::human(f.updates_per_s),
            crate::text::human(f.bytes_per_s),
            f.updates_timed,
            f.updates_lower_bound,
            f.updates_untimed,
            f.updates_late,
            f.gaps,
            per_update(f.server_cpu_ns_per_update),
            per_update(f.generator_cpu_ns_per_update),
            f.generator_cpu_cores,
            f.generator_busiest_thread_cores,
            if generator_bound(f) { ": GENERATOR-BOUND" } else { "" },
        );
        if f.slow_subscribers > 0 {
            out += &format!(
                "; {} slow: {} updates/s, gaps seen {}, server gaps {}",
                f.slow_subscribers,
                crate::text::human(f.slow_updates_per_s),
                f.slow_gaps,
                f.server_gaps.map_or("-".into(), |g| g.to_string())
            );
        }
        out += "\n";
    }
    out
}

/// report.md's fan-out table, for a run with subscribers.
pub fn markdown(s: &mut String, run: &ModeRun) -> std::fmt::Result {
    use std::fmt::Write;
    if run.steps.iter().all(|st| st.fanout.is_none()) {
        return Ok(());
    }
    writeln!(s)?;
    writeln!(s, "### Subscribers")?;
    writeln!(s)?;
    writeln!(
        s,
        "Updates delivered to the subscribers that keep up, their latency from each event's intended send time, \
         gaps, and the CPU per delivered update (fast and slow subscribers together) of the server (all of its \
         CPU, ingest included) and of the generator's subscriber threads. Lower bounds: updates read more than \
         the log's ring behind, in the latency as at least that late; untimed: after a gap, desynced or \
         reordered; late: read after their step was reported. A busiest fleet thread at {GENERATOR_BOUND_CORES} \
         cores or more may be what held the subscribers back."
    )?;
    writeln!(s)?;
    writeln!(
        s,
        "| step | subscribers | transport | hunts | updates M/s | MB/s | p50 ms | p99 ms | max ms | lower bounds \
         | untimed | late | gaps | slow | slow updates/s | slow gaps | server gaps | server ns/update \
         | generator ns/update | generator cores | busiest thread |"
    )?;
    writeln!(
        s,
        "|---:|---:|:---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    )?;
    for step in &run.steps {
        let Some(f) = &step.fanout else { continue };
        let l = |g: fn(&LatencyUs) -> u64| f.latency_us.as_ref().map_or("-".into(), |x| ms(g(x)));
        writeln!(
            s,
            "| {} | {} | {} | {} | {:.3} | {:.1} | {} | {} | {} | {} | {} | {} | {} | {} | {:.0} | {} | {} | {} | {} \
             | {:.2} | {:.2}{} |",
            step.step,
            f.subscribers,
            f.transport,
            f.hunts_watched,
            f.updates_per_s / 1e6,
            f.bytes_per_s / 1e6,
            l(|x| x.p50),
            l(|x| x.p99),
            l(|x| x.max),
            f.updates_lower_bound,
            f.updates_untimed,
            f.updates_late,
            f.gaps,
            f.slow_subscribers,
            f.slow_updates_per_s,
            f.slow_gaps,
            f.server_gaps.map_or("-".into(), |g| g.to_string()),
            per_update(f.server_cpu_ns_per_update),
            per_update(f.generator_cpu_ns_per_update),
            f.generator_cpu_cores,
            f.generator_busiest_thread_cores,
            if generator_bound(f) { " (bound?)" } else { "" },
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hunts_are_assigned_as_told() {
        assert_eq!(HuntChoice::parse("all"), Ok(HuntChoice::All));
        assert_eq!(HuntChoice::parse("7"), Ok(HuntChoice::One(7)));
        assert_eq!(HuntChoice::parse("zipf:1.3"), Ok(HuntChoice::Zipf(1.3)));
        for bad in ["zipf:0", "zipf:x", "-1", "", "zipf:inf"] {
            assert!(HuntChoice::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(HuntChoice::All.assign(10, 5, 1).unwrap(), [0, 2, 4, 6, 8]);
        assert_eq!(HuntChoice::All.assign(3, 6, 1).unwrap(), [0, 0, 1, 1, 2, 2]);
        assert_eq!(HuntChoice::One(4).assign(10, 3, 1).unwrap(), [4, 4, 4]);
        assert!(HuntChoice::One(10).assign(10, 3, 1).is_err());
        // Zipf: seeded, within range, hunt 0 the most watched.
        let a = HuntChoice::Zipf(1.3).assign(100, 5000, 9).unwrap();
        assert_eq!(a, HuntChoice::Zipf(1.3).assign(100, 5000, 9).unwrap());
        assert!(a.iter().all(|&h| h < 100));
        let count = |h| a.iter().filter(|&&x| x == h).count();
        assert!(count(0) > count(1) && count(1) > count(5) && count(0) > 1000, "{} {}", count(0), count(1));
    }

    #[test]
    fn the_log_times_what_it_holds_and_tells_what_it_lost() {
        let log = SendLog::new(4, &[1, 1, 3]);
        assert_eq!(log.rings.len(), 2);
        let r = log.ring(1).unwrap();
        let size = r.mask + 1;
        assert_eq!(r.get(0), Logged::Ahead);
        for k in 0..size + 3 {
            log.record(1, k * 1000, 7);
        }
        log.record(0, 5, 0); // not watched: nothing
        assert_eq!(log.head(1), size + 3);
        assert_eq!(r.get(0), Logged::Overwritten);
        assert_eq!(r.get(2), Logged::Overwritten);
        assert_eq!(r.get(3), Logged::At(3, 7));
        assert_eq!(r.get(size + 2), Logged::At(size + 2, 7));
        assert_eq!(r.get(size + 3), Logged::Ahead);
        assert_eq!(log.ring(3).unwrap().get(0), Logged::Ahead);
        // Memory is bounded whatever the watched hunts.
        let many: Vec<u32> = (0..100_000).collect();
        let big = SendLog::new(100_000, &many);
        assert!(big.rings.iter().map(|r| r.slots.len()).sum::<usize>() <= LOG_ENTRIES_MAX.max(RING_MIN * 100_000));
        // A few watchers (`--watch 8`) get a few MiB, not the whole 64.
        let eight: Vec<u32> = (0..8).map(|i| i * 125).collect();
        let small = SendLog::new(1000, &eight);
        assert_eq!(small.rings.iter().map(|r| r.slots.len()).sum::<usize>(), 8 * LOG_ENTRIES_PER_SUBSCRIBER);
        // A hot hunt's many watchers get the largest ring.
        assert_eq!(SendLog::new(10, &[2; 5000]).rings[0].slots.len(), RING_MAX);
    }

    fn sub() -> Sub {
        Sub {
            index: 0,
            hunt: 3,
            slow: false,
            ws: false,
            applied: 0,
            next_seq: 10,
            synced: true,
            carry: Vec::new(),
            frame_max: 1 << 20,
        }
    }

    #[test]
    fn tcp_frames_are_counted_timed_and_cut_at_a_partial_frame() {
        let log = SendLog::new(4, &[3]);
        for k in 0..3 {
            log.record(3, 1_000_000 + k * 1000, 2);
        }
        let mut out = Vec::new();
        let s = frame::begin_update(&mut out, 3, 10);
        for kind in [entry_kind::APPLIED, entry_kind::BROADCAST, entry_kind::APPLIED] {
            frame::push_entry(&mut out, kind, |o| o.extend_from_slice(&[0u8; 56]));
        }
        frame::end_update(&mut out, s, 3);
        let whole = out.len();
        frame::encode_gap(&mut out, 3, 13, 5);
        let s = frame::begin_update(&mut out, 3, 18);
        frame::push_entry(&mut out, entry_kind::APPLIED, |o| o.extend_from_slice(&[0u8; 56]));
        frame::end_update(&mut out, s, 1);
        let (mut sub, mut lat, mut t) = (sub(), Latencies::default(), Count::default());
        // A partial frame is left for the next read.
        let used = scan_tcp(&out[..whole - 1], &mut sub, &log, 3000, Some(&mut lat), &mut t).unwrap();
        assert_eq!((used, t.entries), (0, 0));
        let used = scan_tcp(&out, &mut sub, &log, 3000, Some(&mut lat), &mut t).unwrap();
        assert_eq!(used, out.len());
        assert_eq!((t.entries, t.gaps, t.gap_entries, t.untimed, t.desynced), (4, 1, 5, 1, 0));
        let mut h = histogram();
        assert_eq!(lat.merge_into(2, &mut h), 2);
        // 3000 us less 1000 and 1001 (at the histogram's resolution).
        assert!(h.equivalent(h.min(), 1999) && h.equivalent(h.max(), 2000), "{} {}", h.min(), h.max());
        assert!(!sub.synced && sub.applied == 3 && sub.next_seq == 19);
    }

    #[test]
    fn ws_updates_are_counted_by_entry_kind() {
        let log = SendLog::new(4, &[3]);
        log.record(3, 1_000_000, 1);
        let mut buf = Vec::new();
        let update = serde_json::json!({"type": "update", "hunt": 3, "first_seq": 10, "entries": [
            {"kind": "applied", "time_us": 1, "event": {"action": "dig"}, "outcome": {"outcome": "dig_nothing"}},
            {"kind": "broadcast", "body": {"broadcast": "treasure_found"}}]})
        .to_string();
        let gap = serde_json::json!({"type": "gap", "hunt": 3, "first_missed": 12, "missed": 4}).to_string();
        for m in [&update, &gap] {
            let mut f = vec![0x81];
            match m.len() {
                n if n < 126 => f.push(n as u8),
                n => {
                    f.push(126);
                    f.extend_from_slice(&(n as u16).to_be_bytes());
                }
            }
            f.extend_from_slice(m.as_bytes());
            buf.extend_from_slice(&f);
        }
        let (mut sub, mut lat, mut t) = (sub(), Latencies::default(), Count::default());
        let used = scan_ws(&buf, &mut sub, &log, 1500, Some(&mut lat), &mut t).unwrap();
        assert_eq!(used, buf.len());
        assert_eq!((t.entries, t.gaps, t.gap_entries, t.desynced), (2, 1, 4, 0));
        assert_eq!((sub.applied, sub.next_seq, sub.synced), (1, 16, false));
        let mut h = histogram();
        assert_eq!(lat.merge_into(1, &mut h), 1);
        assert!(h.equivalent(h.max(), 500), "{}", h.max());
    }
    fn update_frame(out: &mut Vec<u8>, hunt: u32, first_seq: u64, applied: u32) {
        let s = frame::begin_update(out, hunt, first_seq);
        for _ in 0..applied {
            frame::push_entry(out, entry_kind::APPLIED, |o| o.extend_from_slice(&[0u8; 56]));
        }
        frame::end_update(out, s, applied);
    }

    #[test]
    fn an_overwritten_entry_is_timed_as_a_lower_bound() {
        let log = SendLog::new(4, &[3]);
        let size = log.ring(3).unwrap().mask + 1;
        // Entries 0..size+2 sent 1 ms apart from 1 s; the subscriber reads
        // the first three when 0..2 are overwritten.
        for k in 0..size + 2 {
            log.record(3, (1_000 + k) * 1_000_000, 4);
        }
        let mut out = Vec::new();
        update_frame(&mut out, 3, 10, 3);
        let (mut sub, mut lat, mut t) = (sub(), Latencies::default(), Count::default());
        let now_us = (1_000 + size + 10) * 1000;
        scan_tcp(&out, &mut sub, &log, now_us, Some(&mut lat), &mut t).unwrap();
        // 0 and 1 overwritten: at least now less the oldest held (entry 2).
        assert_eq!((t.lower_bound, t.untimed, t.desynced), (2, 0, 0));
        let mut h = histogram();
        assert_eq!(lat.merge_into(4, &mut h), 3);
        assert!(h.equivalent(h.min(), (size + 8) * 1000), "{} {}", h.min(), size + 8);
        assert!(h.equivalent(h.max(), (size + 8) * 1000), "{}", h.max());
    }

    #[test]
    fn an_entry_read_before_its_send_is_counted_as_reordered() {
        let log = SendLog::new(4, &[3]);
        log.record(3, 5_000_000, 0);
        log.record(3, 9_000_000, 0);
        let mut out = Vec::new();
        update_frame(&mut out, 3, 10, 2);
        let (mut sub, mut lat, mut t) = (sub(), Latencies::default(), Count::default());
        // Read at 6 ms: the second was matched with 9 ms.
        scan_tcp(&out, &mut sub, &log, 6_000, Some(&mut lat), &mut t).unwrap();
        assert_eq!((t.reordered, t.untimed), (1, 1));
        assert_eq!(lat.merge_into(0, &mut histogram()), 1);
    }

    #[test]
    fn a_refused_batch_stops_timing_its_connections_hunts() {
        let log = SendLog::new(6, &[1, 2, 4]);
        for h in [1, 2, 4] {
            log.record(h, 1_000_000, 0);
        }
        // Connection 1 of 3 sends hunts 1 and 4.
        log.refused(1, 3);
        assert!(log.desynced(1) && log.desynced(4) && !log.desynced(2));
        let mut out = Vec::new();
        update_frame(&mut out, 4, 10, 1);
        let (mut sub, mut lat, mut t) = (Sub { hunt: 4, ..sub() }, Latencies::default(), Count::default());
        scan_tcp(&out, &mut sub, &log, 2_000, Some(&mut lat), &mut t).unwrap();
        assert_eq!((t.desynced, t.untimed), (1, 1));
        assert!(!sub.synced && lat.merge_into(0, &mut histogram()) == 0);
    }

    #[test]
    fn hostile_sequence_numbers_and_frame_sizes_are_errors() {
        let log = SendLog::new(4, &[3]);
        let mut out = Vec::new();
        update_frame(&mut out, 3, u64::MAX, 2);
        let (mut hostile, mut t) = (Sub { next_seq: u64::MAX, ..sub() }, Count::default());
        let e = scan_tcp(&out, &mut hostile, &log, 1, None, &mut t).unwrap_err();
        assert!(e.contains("2^64"), "{e}");
        let m = format!(r#"{{"entries":[{{"kind":"applied"}}],"first_seq":{},"hunt":3,"type":"update"}}"#, u64::MAX);
        let mut buf = vec![0x81, 126];
        buf.extend_from_slice(&(m.len() as u16).to_be_bytes());
        buf.extend_from_slice(m.as_bytes());
        let e = scan_ws(&buf, &mut hostile, &log, 1, None, &mut t).unwrap_err();
        assert!(e.contains("2^64"), "{e}");
        // A WELCOME's frame size is taken up to the protocol's limit.
        let mut w = Vec::new();
        frame::encode_welcome(
            &mut w,
            &frame::Welcome {
                version: frame::VERSION,
                flags: 0,
                producer_id: 1,
                frame_body_max: u32::MAX,
                batch_events_max: 1,
                record_size: 32,
                outcome_size: 16,
            },
        );
        let mut fresh = sub();
        tcp_setup(&w, &mut 0, &mut fresh).unwrap();
        assert_eq!(fresh.frame_max, frame::FRAME_BODY_MAX_LIMIT as usize);
    }

    /// A fleet without threads, for `step`.
    fn idle_fleet(thread: Arc<ThreadShared>) -> Fleet {
        Fleet {
            args: FleetArgs {
                subscribers: 1,
                hunts: HuntChoice::All,
                ws: false,
                slow: 0,
                slow_bytes_per_s: 1,
                threads: 1,
                read_interval: Duration::ZERO,
            },
            log: Arc::new(SendLog::new(1, &[0])),
            hunts: vec![0],
            threads: vec![thread],
            subs: Arc::new(vec![SubShared::default()]),
            stop: Arc::new(AtomicBool::new(false)),
            joins: Vec::new(),
            error: Arc::new(Mutex::new(None)),
            hunts_watched: 1,
            counted: Mutex::new(None),
        }
    }

    #[test]
    fn counts_run_from_settle_to_settle_and_late_updates_are_counted() {
        let thread = Arc::new(ThreadShared::default());
        let fleet = idle_fleet(thread.clone());
        let (a, b) = (fleet.snapshot(), fleet.snapshot());
        // During the drain and settle after the window: a gap and an
        // untimed entry.
        thread.fast.add(&Count { gaps: 1, untimed: 1, ..Count::default() });
        lock(&thread.latencies).record(0, 500, 3);
        let s0 = fleet.step(0, (&a, &b), None, None);
        assert_eq!((s0.gaps, s0.updates_untimed, s0.updates_timed, s0.updates_late), (1, 1, 3, 0));
        // Step 0's updates read after its report, then step 1.
        lock(&thread.latencies).record(0, 900_000, 2);
        let c = fleet.snapshot();
        thread.fast.add(&Count { gaps: 2, ..Count::default() });
        lock(&thread.latencies).record(1, 700, 5);
        let d = fleet.snapshot();
        let s1 = fleet.step(1, (&c, &d), None, None);
        assert_eq!((s1.gaps, s1.updates_untimed, s1.updates_timed, s1.updates_late), (2, 0, 5, 2));
        assert!(lock(&thread.latencies).steps.is_empty());
    }
    #[test]
    fn a_frame_larger_than_a_read_is_read_on_into_its_carry() {
        // One UPDATE of 6,000 APPLIED entries (about 400 KiB, over
        // READ_CHUNK), then a small one, through a loopback socket.
        const N: u32 = 6000;
        let log = Arc::new(SendLog::new(4, &[3]));
        for k in 0..u64::from(N) + 1 {
            log.record(3, k, 0);
        }
        let mut out = Vec::new();
        update_frame(&mut out, 3, 10, N);
        update_frame(&mut out, 3, 10 + u64::from(N), 1);
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let writer = std::thread::spawn(move || {
            use std::io::Write;
            let (mut s, _) = listener.accept().unwrap();
            for piece in out.chunks(100 << 10) {
                s.write_all(piece).unwrap();
                std::thread::sleep(Duration::from_millis(20));
            }
            // Held open until the reader is done.
            std::thread::sleep(Duration::from_secs(1));
        });
        let shared = Arc::new(ThreadShared::default());
        let ctx = Ctx {
            log,
            shared: shared.clone(),
            subs: Arc::new(vec![SubShared::default()]),
            local: Rc::new(RefCell::new(Local {
                buf: Vec::new(),
                latencies: Latencies::default(),
                streams: Vec::new(),
            })),
            clock: Clock { epoch: Instant::now() },
            slow_bytes_per_s: 1,
            read_interval: Duration::ZERO,
        };
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let (sub, reads) = runtime.block_on(async {
            let stream = TcpStream::connect(addr).await.unwrap();
            let (mut sub, mut reads) = (sub(), 0);
            let deadline = Instant::now() + Duration::from_secs(60);
            while sub.applied < u64::from(N) + 1 && Instant::now() < deadline {
                stream.readable().await.unwrap();
                if read_once(&stream, &mut sub, &ctx, false).unwrap() > 0 {
                    reads += 1;
                }
            }
            (sub, reads)
        });
        writer.join().unwrap();
        let c = shared.fast.read();
        assert_eq!((c.entries, c.untimed, c.desynced, sub.applied), (u64::from(N) + 1, 0, 0, u64::from(N) + 1));
        assert!(sub.carry.is_empty() && sub.next_seq == 11 + u64::from(N) && reads > 1, "{reads}");
        assert!(sub.carry.capacity() <= CARRY_KEEP, "{}", sub.carry.capacity());
        assert_eq!(ctx.local.borrow().latencies.steps[0].2, u64::from(N) + 1);
    }
}
