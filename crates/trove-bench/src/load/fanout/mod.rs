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
//!
//! # Layout
//!
//! - here: the fleet's settings, its start and stop, its snapshots and a
//!   step's figures from two of them.
//! - `send_log.rs`: the intended send times the subscribers are timed by.
//! - `reader.rs`: the reader threads and a TCP subscriber's scanning.
//! - `ws.rs`: a WebSocket subscriber's handshake and scanning.
//! - `figures.rs`: the fan-out lines of the summary and the report.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering::{Acquire, Relaxed};
use std::sync::{Mutex, mpsc};
use std::time::{Duration, Instant};

use serde::Serialize;
use trove_proto::frame::Sizes;

use super::scrape::Scrape;
use super::{Clock, LatencyUs, histogram, latency, lock};

mod figures;
mod reader;
mod send_log;
mod ws;

pub use self::figures::{markdown, summary};
use self::reader::{Count, SubShared, ThreadShared, fleet_thread, thread_cpu};
pub use self::send_log::SendLog;

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
    /// With `ws`: updates compressed (`"compression": "deflate"`).
    pub deflate: bool,
    /// Of the subscribers, these read slowly (the last ones).
    pub slow: u32,
    pub slow_bytes_per_s: u32,
    pub threads: u32,
    /// A subscriber that read something waits this long before it reads
    /// again (zero: it reads as soon as more is there), so that a read
    /// takes what came in meanwhile: a browser reading once a frame.
    pub read_interval: Duration,
    /// Presented by every subscriber (a --target with authentication on):
    /// in HELLO version 2, or the WebSocket upgrade's `Authorization`.
    pub token: Option<trove_client::Token>,
    /// Subscribe to the hunts' broadcasts alone (counted, not timed).
    pub broadcasts_only: bool,
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
    /// tcp, ws or ws+deflate.
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
    /// (subscriber index, hunt, slow, the address it connects to).
    subs: Vec<(usize, u32, bool, SocketAddr)>,
    ws: bool,
    deflate: bool,
    slow_bytes_per_s: u32,
    read_interval: Duration,
    token: Option<trove_client::Token>,
    broadcasts_only: bool,
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
    /// The hunts `args` assign (ids: the workload's hunt `h` is
    /// `base + h`), the pacer's log for them.
    pub fn plan(args: &FleetArgs, hunts: u32, base: u32, seed: u64) -> Result<(Vec<u32>, Arc<SendLog>), String> {
        let assigned = args.hunts.assign(hunts, args.subscribers, seed)?;
        let log = SendLog::new(hunts, &assigned).with_base(base);
        // Broadcasts-only subscribers time a find from its dig.
        let log = Arc::new(if args.broadcasts_only { log.with_digs() } else { log });
        Ok((assigned.into_iter().map(|h| base + h).collect(), log))
    }

    /// Connects and subscribes every subscriber (subscriber `i` to
    /// `at[i]`: a TCP listener, or a WebSocket one); returns once all are
    /// subscribed. `producers`: the run's producer connections, which need
    /// files too.
    pub(super) fn start(
        args: &FleetArgs,
        assigned: Vec<u32>,
        log: Arc<SendLog>,
        at: &[SocketAddr],
        clock: Clock,
        producers: u32,
    ) -> Result<Self, String> {
        let n = assigned.len();
        assert!(n == args.subscribers as usize && args.slow <= args.subscribers && at.len() == n);
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
                subs: (t..n).step_by(threads_n).map(|i| (i, assigned[i], i >= slow_from, at[i])).collect(),
                ws: args.ws,
                deflate: args.deflate,
                slow_bytes_per_s: args.slow_bytes_per_s,
                read_interval: args.read_interval,
                token: args.token.clone(),
                broadcasts_only: args.broadcasts_only,
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
            transport: match (self.args.ws, self.args.deflate) {
                (true, true) => "ws+deflate",
                (true, false) => "ws",
                (false, _) => "tcp",
            }
            .into(),
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

    /// A fleet without threads, for `step`.
    fn idle_fleet(thread: Arc<ThreadShared>) -> Fleet {
        Fleet {
            args: FleetArgs {
                subscribers: 1,
                hunts: HuntChoice::All,
                ws: false,
                deflate: false,
                slow: 0,
                slow_bytes_per_s: 1,
                threads: 1,
                read_interval: Duration::ZERO,
                token: None,
                broadcasts_only: false,
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
}
