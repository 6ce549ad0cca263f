//! `trove serve` end to end, over real sockets and real processes: the Rust
//! SDK (`trove-client`) against the `trove` binary. The frame-level checks
//! live in `crates/trove-server/tests` (an in-process server, raw frames);
//! these go through the SDK and the binary:
//!
//! - produce, acknowledge and subscribe, then SIGTERM (exit 0, the state
//!   hash on stderr) and a restart that finds the same state and knows the
//!   producer's old sequence numbers;
//! - SIGKILL mid-stream, twice, and restarts on the same port and data
//!   directory: the SDK reconnects and resends, and every event is applied
//!   exactly once and acknowledged exactly once, in order;
//! - SIGINT mid-stream: the server drains and exits 0; after a restart,
//!   exactly the events it applied are there (so every acknowledged one),
//!   and the producer, reconnected, finishes its stream exactly once;
//! - BUSY under overload (one shard, a queue of one batch), resent by the
//!   SDK, everything still applied exactly once;
//! - bad settings end `trove serve` at once, nonzero, naming the problem.
//!
//! Every server runs with `--tcp 127.0.0.1:0` first (the port it binds is
//! read from its stderr), `--ws off` and a scratch data directory; a
//! restart reuses the port. A `Serve` guard kills its process when dropped,
//! so a failing test leaves nothing running.

mod common;

use common::{Serve, send_signal};

use std::ffi::OsString;
use std::net::SocketAddr;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::SeqCst;
use std::time::{Duration, Instant};

use trove_client::{
    AckedBatch, Acks, ClientConfig, ClientError, Producer, ProducerStats, Subscriber, Update, UpdateEntry,
};
use trove_core::SplitMix64;
use trove_hunt::{Action, HuntBroadcast, HuntConfig, HuntEvent, HuntOutcome, Reject, TreasureHunt};

/// How long a server may take to say it listens (recovery included).
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a server may take to exit after a signal (it drains for at
/// most 10 s, then snapshots).
const EXIT_TIMEOUT: Duration = Duration::from_secs(40);
/// How long a whole client-side run may take before the test gives up.
const RUN_TIMEOUT: Duration = Duration::from_secs(120);

// ---------------------------------------------------------------------
// The server process.

/// `--data DATA --tcp TCP --ws off EXTRA...`
fn serve_args(data: &Path, tcp: &str, extra: &[&str]) -> Vec<OsString> {
    let mut args: Vec<OsString> =
        // The control plane on a port of its own: tests run side by side.
        vec![
            "--data".into(),
            data.into(),
            "--tcp".into(),
            tcp.into(),
            "--ws".into(),
            "off".into(),
            "--control".into(),
            "127.0.0.1:0".into(),
        ];
    args.extend(extra.iter().map(OsString::from));
    args
}

/// The state hash and the events applied from the line a server prints when
/// it stops: `stopped; N events applied, state hash HEX`.
fn final_line(stderr: &str) -> (u64, String) {
    let line = stderr.lines().find(|l| l.contains("stopped;")).unwrap_or_else(|| panic!("no final line in:\n{stderr}"));
    let applied = line
        .split("stopped; ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no event count in `{line}`"));
    let hash = line.split("state hash ").nth(1).unwrap_or_else(|| panic!("no state hash in `{line}`")).trim();
    assert_eq!(hash.len(), 16, "a 64-bit hash in hex: `{line}`");
    assert!(hash.chars().all(|c| c.is_ascii_hexdigit()), "`{line}`");
    (applied, hash.to_string())
}

/// SIGTERM or SIGINT, then: exit 0, a graceful-shutdown stderr. Returns
/// (events applied, state hash) from the final line.
fn stop_gracefully(server: &mut Serve, signal: &str) -> (u64, String) {
    server.signal(signal);
    let (status, stderr) = server.wait_exit(EXIT_TIMEOUT);
    assert!(status.success(), "SIG{signal} must end trove serve with exit 0, got {status}; stderr:\n{stderr}");
    assert!(stderr.contains(&format!("SIG{signal}: draining")), "stderr:\n{stderr}");
    final_line(&stderr)
}

// ---------------------------------------------------------------------
// The client side.

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("tokio runtime")
}

/// The SDK's defaults with quick reconnects: a restarted server is found
/// within a quarter second of listening again.
fn client(addr: SocketAddr) -> ClientConfig {
    ClientConfig {
        reconnect_backoff_initial: Duration::from_millis(20),
        reconnect_backoff_max: Duration::from_millis(250),
        reconnect_attempts_max: Some(400),
        ..ClientConfig::new(addr.to_string())
    }
}

/// Runs `fut` on `rt`, failing the test if it takes longer than `RUN_TIMEOUT`.
fn block_on<T>(rt: &tokio::runtime::Runtime, what: &str, fut: impl Future<Output = T>) -> T {
    rt.block_on(async { tokio::time::timeout(RUN_TIMEOUT, fut).await })
        .unwrap_or_else(|_| panic!("{what}: no result within {RUN_TIMEOUT:?}"))
}

/// Sends `events` through a fresh producer, reading the acknowledgements
/// alongside; returns one outcome per event, in order.
async fn produce_all(addr: SocketAddr, events: &[HuntEvent]) -> Vec<HuntOutcome> {
    let (mut producer, acks) = Producer::<TreasureHunt>::connect(client(addr)).await.expect("producer connects");
    let reader = tokio::spawn(collect_acks(acks));
    for (i, e) in events.iter().enumerate() {
        let seq = producer.send_wait(*e).await.expect("send");
        assert_eq!(seq, i as u64 + 1);
    }
    producer.close().await.expect("close");
    let batches = reader.await.expect("ack reader");
    let outcomes = in_order(&batches, 1);
    assert_eq!(outcomes.len(), events.len());
    outcomes
}

async fn collect_acks(mut acks: Acks<TreasureHunt>) -> Vec<AckedBatch<TreasureHunt>> {
    let mut all = Vec::new();
    while let Some(a) = acks.next().await {
        all.push(a.expect("every batch is acknowledged"));
    }
    all
}

/// The outcomes of `batches`, checked to be consecutive from `first_seq`.
fn in_order(batches: &[AckedBatch<TreasureHunt>], first_seq: u64) -> Vec<HuntOutcome> {
    let mut next = first_seq;
    let mut out = Vec::new();
    for b in batches {
        assert_eq!(b.first_seq, next, "acknowledgements come in sequence order, each once");
        let o = b.outcomes.as_ref().expect("outcomes were asked for");
        assert_eq!(o.len(), b.count as usize);
        out.extend_from_slice(o);
        next += u64::from(b.count);
    }
    out
}

// ---------------------------------------------------------------------
// A long stream of joins: `hunts` creates, then joins of distinct players
// round-robin over the hunts. Event `seq` (from 1) is a pure function of
// `seq`, so any run, and any check after it, knows what each number was.

#[derive(Clone, Copy, Debug)]
struct Joins {
    first_hunt: u32,
    hunts: u32,
    /// Events in all, creates included.
    total: u64,
}

impl Joins {
    fn event(&self, seq: u64) -> HuntEvent {
        assert!((1..=self.total).contains(&seq));
        let hunts = u64::from(self.hunts);
        if seq <= hunts {
            return HuntEvent::create(self.first_hunt + seq as u32 - 1, joins_config());
        }
        let i = seq - hunts - 1;
        HuntEvent::join(self.first_hunt + (i % hunts) as u32, (i / hunts) as u32)
    }

    /// What a first application of event `seq` answers.
    fn fresh(&self, seq: u64, o: &HuntOutcome) -> bool {
        if seq <= u64::from(self.hunts) {
            *o == HuntOutcome::Created { round: 1 }
        } else {
            matches!(o, HuntOutcome::Joined { score: 0, .. })
        }
    }
}

fn joins_config() -> HuntConfig {
    HuntConfig {
        width: 256,
        height: 256,
        seed: 11,
        treasures_per_round: 64,
        value_min: 1,
        value_max: 10,
        dig_cooldown_ms: 0,
        step_max: 4,
        players_max: 1 << 20,
    }
}

/// Sends the whole stream at full speed, then closes.
async fn send_joins(
    mut producer: Producer<TreasureHunt>,
    joins: Joins,
    sent: Arc<AtomicU64>,
) -> Result<ProducerStats, ClientError> {
    for seq in 1..=joins.total {
        let s = producer.send_wait(joins.event(seq)).await?;
        assert_eq!(s, seq);
        sent.store(seq, SeqCst);
    }
    producer.close().await
}

/// Kills the server from the acknowledgement reader, the moment enough
/// events are acknowledged: batches are in flight then.
#[derive(Debug)]
struct Killer {
    /// Acknowledged events at which to send each signal.
    at: Vec<u64>,
    signal: &'static str,
    pid: Arc<AtomicU64>,
    /// Signals sent.
    fired: Arc<AtomicU64>,
    /// Servers (re)started after a signal: signal k+1 waits for restart k.
    restarted: Arc<AtomicU64>,
}

#[derive(Debug, Default)]
struct AckReport {
    /// Every event up to this one was acknowledged, in order, once.
    acked_through: u64,
    /// Events whose outcome was neither that of a first application nor
    /// `duplicate` (the first few, and how many).
    wrong: Vec<(u64, HuntOutcome)>,
    wrong_count: u64,
    /// Events answered `rejected: duplicate`: resent, applied before, their
    /// original outcome forgotten.
    duplicate: Vec<u64>,
    /// The producer ended with this error (other than `Closed`).
    error: Option<String>,
}

/// Reads the acknowledgements of a [`Joins`] stream: each batch must follow
/// the last (in order, none twice, none missing) and every outcome must be
/// that of a first application (or `duplicate`, listed apart).
async fn check_joins(
    mut acks: Acks<TreasureHunt>,
    joins: Joins,
    acked: Arc<AtomicU64>,
    mut killer: Option<Killer>,
) -> AckReport {
    let mut r = AckReport::default();
    while let Some(a) = acks.next().await {
        let b = match a {
            Ok(b) => b,
            Err(ClientError::Closed) => break,
            Err(e) => {
                r.error = Some(e.to_string());
                break;
            }
        };
        if b.first_seq != r.acked_through + 1 {
            r.error = Some(format!("batch from {} acknowledged after {}", b.first_seq, r.acked_through));
            break;
        }
        let outcomes = b.outcomes.as_deref().unwrap_or_default();
        if outcomes.len() != b.count as usize {
            r.error = Some(format!("{} outcomes for {} events", outcomes.len(), b.count));
            break;
        }
        for (seq, o) in b.seqs().zip(outcomes) {
            if *o == (HuntOutcome::Rejected { reason: Reject::Duplicate }) {
                r.duplicate.push(seq);
            } else if !joins.fresh(seq, o) {
                r.wrong_count += 1;
                if r.wrong.len() < 10 {
                    r.wrong.push((seq, *o));
                }
            }
        }
        r.acked_through += u64::from(b.count);
        acked.store(r.acked_through, SeqCst);
        if let Some(k) = &mut killer {
            let n = k.fired.load(SeqCst);
            if let Some(&at) = k.at.get(n as usize)
                && r.acked_through >= at
                && k.restarted.load(SeqCst) == n
            {
                send_signal(k.pid.load(SeqCst) as u32, k.signal);
                k.fired.store(n + 1, SeqCst);
            }
        }
    }
    r
}

/// Waits until `cond` holds; panics with `what` after `timeout`.
fn wait_for(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

// ---------------------------------------------------------------------
// 1. Produce, acknowledge, subscribe; SIGTERM; restart.

const HUNT: u32 = 7;
const PLAYERS: u32 = 24;

fn e2e_config() -> HuntConfig {
    // A small, dense map: random walks find treasure.
    HuntConfig {
        width: 16,
        height: 16,
        seed: 99,
        treasures_per_round: 64,
        value_min: 1,
        value_max: 50,
        dig_cooldown_ms: 0,
        step_max: 3,
        players_max: 1000,
    }
}

/// The rules as far as the test can predict them: who is in, where, and
/// which events must be rejected why.
#[derive(Debug, Default)]
struct Model {
    created: bool,
    at: std::collections::HashMap<u32, (u16, u16)>,
    found: u64,
    rejected: Vec<Reject>,
}

impl Model {
    /// Checks `o` answers `e` (applied in this order) and updates the model.
    fn check(&mut self, e: &HuntEvent, o: &HuntOutcome) {
        let c = e2e_config();
        let expect_reject = |reason: Reject| {
            assert_eq!(*o, HuntOutcome::Rejected { reason }, "{e:?}");
            reason
        };
        if e.hunt != HUNT {
            self.rejected.push(expect_reject(Reject::UnknownHunt));
            return;
        }
        if let Action::Create(_) = e.action {
            if self.created {
                self.rejected.push(expect_reject(Reject::HuntExists));
            } else {
                assert_eq!(*o, HuntOutcome::Created { round: 1 });
                self.created = true;
            }
            return;
        }
        if e.player >= c.players_max {
            self.rejected.push(expect_reject(Reject::PlayerOutOfRange));
            return;
        }
        let here = self.at.get(&e.player).copied();
        match (e.action, here) {
            (Action::Join, Some(_)) => self.rejected.push(expect_reject(Reject::AlreadyJoined)),
            (Action::Join, None) => {
                let HuntOutcome::Joined { x, y, score: 0 } = *o else { panic!("{e:?}: {o:?}") };
                assert!(x < c.width && y < c.height);
                self.at.insert(e.player, (x, y));
            }
            (_, None) => self.rejected.push(expect_reject(Reject::NotJoined)),
            (Action::Move { dx, dy }, Some(_)) if dx.unsigned_abs().max(dy.unsigned_abs()) > u16::from(c.step_max) => {
                self.rejected.push(expect_reject(Reject::StepTooLarge));
            }
            (Action::Move { dx, dy }, Some((x, y))) => {
                let clamp =
                    |v: u16, d: i16, side: u16| (i32::from(v) + i32::from(d)).clamp(0, i32::from(side) - 1) as u16;
                let to = (clamp(x, dx, c.width), clamp(y, dy, c.height));
                assert_eq!(*o, HuntOutcome::Moved { x: to.0, y: to.1 }, "{e:?} from ({x},{y})");
                self.at.insert(e.player, to);
            }
            (Action::Dig, Some(_)) => match *o {
                HuntOutcome::DigFound { value, score } => {
                    assert!((c.value_min..=c.value_max).contains(&value), "{o:?}");
                    assert!(score >= u32::from(value), "{o:?}");
                    self.found += 1;
                }
                HuntOutcome::DigNothing => {}
                _ => panic!("{e:?}: {o:?}"),
            },
            (Action::Scan, Some(_)) => assert!(matches!(o, HuntOutcome::Hint { .. }), "{e:?}: {o:?}"),
            _ => panic!("unexpected event {e:?}"),
        }
    }
}

/// The script, in batches: create, joins, one of each rejection, then
/// rounds of move, dig and scan by every player.
fn e2e_script() -> Vec<Vec<HuntEvent>> {
    let c = e2e_config();
    let mut first = vec![HuntEvent::create(HUNT, c)];
    first.extend((0..PLAYERS).map(|p| HuntEvent::join(HUNT, p)));
    first.extend([
        HuntEvent::join(HUNT, 3),                                  // already_joined
        HuntEvent::join(HUNT, c.players_max),                      // player_out_of_range
        HuntEvent::scan(HUNT, PLAYERS + 1),                        // not_joined
        HuntEvent::join(HUNT + 1, 0),                              // unknown_hunt (another hunt)
        HuntEvent::move_by(HUNT, 0, i16::from(c.step_max) + 1, 0), // step_too_large
        HuntEvent::create(HUNT, c),                                // hunt_exists
    ]);
    let mut script = vec![first];
    let mut rng = SplitMix64::new(5);
    let step = u32::from(c.step_max);
    for _ in 0..12 {
        let mut round = Vec::new();
        for p in 0..PLAYERS {
            let dx = rng.below(2 * step + 1) as i16 - step as i16;
            let dy = rng.below(2 * step + 1) as i16 - step as i16;
            round.extend([HuntEvent::move_by(HUNT, p, dx, dy), HuntEvent::dig(HUNT, p), HuntEvent::scan(HUNT, p)]);
        }
        script.push(round);
    }
    script
}

#[test]
fn sdk_produce_acknowledge_subscribe_end_to_end() {
    let dir = common::scratch_dir("serve-e2e");
    let data = dir.join("data");
    let mut server = Serve::spawn(&serve_args(&data, "127.0.0.1:0", &["--shards", "2", "--fsync", "always"]));
    let addr = server.wait_ready();
    let rt = runtime();

    let script = e2e_script();
    let events: Vec<HuntEvent> = script.iter().flatten().copied().collect();
    let watched = events.iter().filter(|e| e.hunt == HUNT).count();

    let (outcomes, updates, sub_first, stats, producer_id) = block_on(&rt, "produce and subscribe", async {
        // Subscribe before the hunt exists: its stream starts at creation.
        let mut sub = Subscriber::<TreasureHunt>::connect(client(addr)).await.expect("subscriber connects");
        let sub_first = sub.subscribe(HUNT).await.expect("subscribed");
        let watcher = tokio::spawn(async move {
            let mut updates = Vec::new();
            let mut applied = 0;
            while applied < watched {
                let u = sub.next().await.expect("the stream goes on").expect("no stream error");
                if let Update::Entries { entries, .. } = &u {
                    applied += entries.iter().filter(|e| matches!(e, UpdateEntry::Applied { .. })).count();
                }
                updates.push(u);
            }
            updates
        });

        let (mut producer, acks) = Producer::<TreasureHunt>::connect(client(addr)).await.expect("producer connects");
        let reader = tokio::spawn(collect_acks(acks));
        for batch in &script {
            for e in batch {
                producer.send_wait(*e).await.expect("send");
            }
            producer.flush().await.expect("flush");
        }
        let producer_id = producer.producer_id();
        let stats = producer.close().await.expect("close");
        let outcomes = in_order(&reader.await.expect("ack reader"), 1);
        (outcomes, watcher.await.expect("watcher"), sub_first, stats, producer_id)
    });

    // Every acknowledgement: one typed outcome per event, as the rules say.
    assert_eq!(outcomes.len(), events.len());
    assert_eq!(stats.events_acked, events.len() as u64);
    assert!(stats.batches_acked >= script.len() as u64, "{stats:?}");
    assert_eq!((stats.busy, stats.reconnects, stats.batches_refused), (0, 0, 0), "{stats:?}");
    let mut model = Model::default();
    for (e, o) in events.iter().zip(&outcomes) {
        model.check(e, o);
    }
    let mut rejected = model.rejected.clone();
    rejected.sort();
    assert_eq!(
        rejected,
        [
            Reject::UnknownHunt,
            Reject::NotJoined,
            Reject::AlreadyJoined,
            Reject::StepTooLarge,
            Reject::HuntExists,
            Reject::PlayerOutOfRange
        ],
        "exactly the planned rejections"
    );
    assert!(model.found > 0, "no dig found treasure: the broadcasts went untested");

    // The subscriber saw hunt 7's events, every one, in the order applied,
    // with the producer's outcomes, numbered consecutively from the number
    // SUBSCRIBED gave; each find followed by its broadcast.
    assert_eq!(sub_first, 1, "a fresh server numbers a hunt's entries from 1");
    let mut next = sub_first;
    let mut entries = Vec::new();
    for u in updates {
        match u {
            Update::Entries { world: hunt, first_seq, entries: e } => {
                assert_eq!(hunt, HUNT);
                assert_eq!(first_seq, next, "consecutive updates");
                next += e.len() as u64;
                entries.extend(e);
            }
            Update::Gap { .. } | Update::Ended { .. } => panic!("a subscriber that keeps up gets no gap: {u:?}"),
        }
    }
    let mut seen = Vec::new();
    let mut last_time = 0;
    for (i, entry) in entries.iter().enumerate() {
        if let UpdateEntry::Applied { event, outcome } = entry {
            assert!(event.time_us >= last_time, "engine time never goes back along a hunt");
            last_time = event.time_us;
            seen.push((event.event, *outcome));
            if let HuntOutcome::DigFound { value, score } = *outcome {
                match entries.get(i + 1) {
                    Some(UpdateEntry::Broadcast(HuntBroadcast::TreasureFound {
                        player, value: v, score: s, ..
                    })) => {
                        assert_eq!((*player, *v, *s), (event.event.player, value, score));
                    }
                    other => panic!("a find is followed by its broadcast, not {other:?}"),
                }
            }
        }
    }
    let want: Vec<(HuntEvent, HuntOutcome)> =
        events.iter().copied().zip(outcomes.iter().copied()).filter(|(e, _)| e.hunt == HUNT).collect();
    assert_eq!(seen.len(), want.len());
    assert_eq!(seen, want, "the stream carries the events and outcomes the producer got, in order");

    // SIGTERM: a graceful stop, exit 0, the final state hash on stderr.
    let (applied, hash) = stop_gracefully(&mut server, "TERM");
    eprintln!(
        "{} events, {} in {} stream entries, {} finds; {stats:?}; state hash {hash}",
        events.len(),
        seen.len(),
        entries.len(),
        model.found
    );
    assert_eq!(applied, events.len() as u64, "every event applied once");

    // Restarted on the same data directory and port: the hunt, its players
    // and their positions are all there. Only events that change nothing:
    // the state hash must come out the same.
    let mut server = Serve::spawn(&serve_args(&data, &addr.to_string(), &["--shards", "2"]));
    assert_eq!(server.wait_ready(), addr);
    let mut again = vec![HuntEvent::create(HUNT, e2e_config())];
    again.extend((0..PLAYERS).map(|p| HuntEvent::join(HUNT, p)));
    again.extend((0..PLAYERS).map(|p| HuntEvent::move_by(HUNT, p, 0, 0)));
    let first_outcomes = outcomes;
    let outcomes = block_on(&rt, "after the restart", produce_all(addr, &again));
    assert_eq!(outcomes[0], HuntOutcome::Rejected { reason: Reject::HuntExists });
    let n = PLAYERS as usize;
    for o in &outcomes[1..=n] {
        assert_eq!(*o, HuntOutcome::Rejected { reason: Reject::AlreadyJoined });
    }
    for (p, o) in outcomes[n + 1..].iter().enumerate() {
        let (x, y) = model.at[&(p as u32)];
        assert_eq!(*o, HuntOutcome::Moved { x, y }, "player {p} is where it was");
    }
    // The first producer resending its first batch (same id, same numbers)
    // is recognised: nothing applied again, and the answers are the
    // original outcomes, which the snapshot taken at shutdown kept.
    let resend = &script[0];
    let outcomes = block_on(&rt, "a resend after the restart", async {
        let config = ClientConfig { producer_id: Some(producer_id), first_seq: 1, ..client(addr) };
        let (mut producer, acks) = Producer::<TreasureHunt>::connect(config).await.expect("producer connects");
        let reader = tokio::spawn(collect_acks(acks));
        for e in resend {
            producer.send_wait(*e).await.expect("send");
        }
        producer.close().await.expect("close");
        in_order(&reader.await.expect("ack reader"), 1)
    });
    assert_eq!(outcomes, first_outcomes[..resend.len()]);
    let (applied, hash_again) = stop_gracefully(&mut server, "TERM");
    assert_eq!(applied, again.len() as u64, "retries are not applied");
    assert_eq!(hash_again, hash, "the state survived the restart, bit for bit");
    std::fs::remove_dir_all(&dir).ok();
}

// ---------------------------------------------------------------------
// 2. SIGKILL mid-stream: reconnect, resend, exactly once.

#[test]
fn sdk_reconnect_after_kill_9_is_exactly_once() {
    let dir = common::scratch_dir("serve-kill9");
    let data = dir.join("data");
    let extra = ["--shards", "2", "--fsync", "always"];
    let mut server = Serve::spawn(&serve_args(&data, "127.0.0.1:0", &extra));
    let pid = Arc::new(AtomicU64::new(u64::from(server.pid())));
    let addr = server.wait_ready();
    let rt = runtime();

    let joins = Joins { first_hunt: 1, hunts: 8, total: 8 + 320_000 };
    let (sent, acked) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let (fired, restarted) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let killer = Killer {
        at: vec![60_000, 200_000],
        signal: "KILL",
        pid: pid.clone(),
        fired: fired.clone(),
        restarted: restarted.clone(),
    };
    let (producer, acks) = block_on(&rt, "connect", Producer::<TreasureHunt>::connect(client(addr))).expect("connects");
    let reader = rt.spawn(check_joins(acks, joins, acked.clone(), Some(killer)));
    let sender = rt.spawn(send_joins(producer, joins, sent.clone()));

    let kills = 2;
    for k in 0..kills {
        wait_for(&format!("kill {}", k + 1), RUN_TIMEOUT, || fired.load(SeqCst) > k || sender.is_finished());
        assert!(!sender.is_finished(), "the stream ended before kill {}", k + 1);
        let (status, stderr) = server.wait_exit(EXIT_TIMEOUT);
        assert_eq!(status.signal(), Some(9), "killed by SIGKILL: {status}; stderr:\n{stderr}");
        let (a, s) = (acked.load(SeqCst), sent.load(SeqCst));
        eprintln!("kill {}: {a} events acknowledged, {s} sent", k + 1);
        // Same data directory, same port: the producer's reconnects find it.
        server = Serve::spawn(&serve_args(&data, &addr.to_string(), &extra));
        pid.store(u64::from(server.pid()), SeqCst);
        restarted.store(k + 1, SeqCst);
        assert_eq!(server.wait_ready(), addr);
    }

    let stats = block_on(&rt, "the stream", sender).expect("sender task").expect("the producer survives the kills");
    let report = block_on(&rt, "the acknowledgements", reader).expect("reader task");
    eprintln!("{stats:?}");
    assert_eq!(report.error, None, "{report:?}");
    assert_eq!((report.wrong_count, &report.wrong), (0, &vec![]), "every outcome is a first application's");
    assert_eq!(report.duplicate, [0; 0], "resends after a kill get their original outcomes back from the journal");
    assert_eq!(report.acked_through, joins.total, "every event acknowledged, once, in order");
    assert_eq!(stats.events_acked, joins.total);
    assert!(stats.reconnects >= kills, "{stats:?}");
    assert!(stats.batches_resent > 0, "{stats:?}");

    // A last look: every player is in, once.
    let check: Vec<HuntEvent> = (1..=joins.total).map(|s| joins.event(s)).collect();
    let outcomes = block_on(&rt, "the check", produce_all(addr, &check));
    let fresh = outcomes.iter().enumerate().filter(|(i, o)| joins.fresh(*i as u64 + 1, o)).count();
    assert_eq!(fresh, 0, "nothing was missing after the kills");
    let (_, _) = stop_gracefully(&mut server, "TERM");
    std::fs::remove_dir_all(&dir).ok();
}

// ---------------------------------------------------------------------
// 3. SIGINT mid-stream: drain, exit 0, every acknowledgement durable.

/// A read-only stand-in for event `seq` of `joins`, whose outcome says
/// whether that event was applied: for a create, a join out of range
/// (`player_out_of_range` if the hunt exists, `unknown_hunt` if not); for a
/// join, a move by (0, 0) (`moved` if the player is in, `not_joined` if not).
fn probe(joins: &Joins, seq: u64) -> HuntEvent {
    let e = joins.event(seq);
    match e.action {
        Action::Create(_) => HuntEvent::join(e.hunt, joins_config().players_max),
        _ => HuntEvent::move_by(e.hunt, e.player, 0, 0),
    }
}

fn probed_applied(seq: u64, o: &HuntOutcome) -> bool {
    match o {
        HuntOutcome::Moved { .. } | HuntOutcome::Rejected { reason: Reject::PlayerOutOfRange } => true,
        HuntOutcome::Rejected { reason: Reject::NotJoined | Reject::UnknownHunt } => false,
        other => panic!("probe of event {seq}: {other:?}"),
    }
}

#[test]
fn sigint_drains_acks() {
    let dir = common::scratch_dir("serve-sigint");
    let data = dir.join("data");
    let extra = ["--shards", "2", "--fsync", "interval=5"];
    let mut server = Serve::spawn(&serve_args(&data, "127.0.0.1:0", &extra));
    let pid = Arc::new(AtomicU64::new(u64::from(server.pid())));
    let addr = server.wait_ready();
    let rt = runtime();

    let joins = Joins { first_hunt: 1, hunts: 4, total: 4 + 400_000 };
    let (sent, acked, fired) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let killer =
        Killer { at: vec![50_000], signal: "INT", pid, fired: fired.clone(), restarted: Arc::new(AtomicU64::new(0)) };
    let (producer, acks) = block_on(&rt, "connect", Producer::<TreasureHunt>::connect(client(addr))).expect("connects");
    let reader = rt.spawn(check_joins(acks, joins, acked.clone(), Some(killer)));
    let sender = rt.spawn(send_joins(producer, joins, sent.clone()));

    // SIGINT while batches are in flight: the server stops reading,
    // answers what it accepted, and exits 0.
    wait_for("SIGINT", RUN_TIMEOUT, || fired.load(SeqCst) > 0 || sender.is_finished());
    assert!(!sender.is_finished(), "the stream ended before SIGINT");
    let (status, stderr) = server.wait_exit(EXIT_TIMEOUT);
    assert!(status.success(), "SIGINT must end trove serve with exit 0, got {status}; stderr:\n{stderr}");
    assert!(stderr.contains("SIGINT: draining"), "stderr:\n{stderr}");
    let (applied, hash) = final_line(&stderr);
    std::thread::sleep(Duration::from_millis(200));
    let (acked_at_exit, sent_at_exit) = (acked.load(SeqCst), sent.load(SeqCst));
    eprintln!(
        "SIGINT: {applied} events applied; the SDK has delivered {acked_at_exit} acknowledgements; {sent_at_exit} sent"
    );
    assert!(applied >= acked_at_exit, "acknowledged ({acked_at_exit}) but not applied ({applied})");
    assert!(applied < sent_at_exit, "SIGINT came with batches in flight or unsent");

    // What is durable, looked at on another port (the producer keeps trying
    // the first one) with read-only probes: exactly the events the server
    // applied, which are the batches it accepted, a prefix of the stream;
    // so every acknowledged event.
    let mut look = Serve::spawn(&serve_args(&data, "127.0.0.1:0", &extra));
    let look_addr = look.wait_ready();
    let probes: Vec<HuntEvent> = (1..=sent_at_exit).map(|s| probe(&joins, s)).collect();
    let outcomes = block_on(&rt, "the probes", produce_all(look_addr, &probes));
    for (i, o) in outcomes.iter().enumerate() {
        let seq = i as u64 + 1;
        let there = probed_applied(seq, o);
        assert!(there || seq > acked_at_exit, "event {seq} was acknowledged but is lost");
        assert_eq!(
            there,
            seq <= applied,
            "event {seq}: applied by the stopped server if and only if {seq} <= {applied}"
        );
    }
    let (probes_applied, hash_probed) = stop_gracefully(&mut look, "TERM");
    assert_eq!(probes_applied, probes.len() as u64);
    assert_eq!(hash_probed, hash, "the probes changed nothing and the state survived the restart");

    // Back on the first port: the producer reconnects and resends what it
    // has no answer for; every event is applied exactly once, and every
    // outcome is a first application's: a graceful stop answers everything
    // it applied before it closes (a resend of an applied batch would be
    // answered `duplicate`, since the shutdown's snapshot keeps no outcomes).
    let mut server = Serve::spawn(&serve_args(&data, &addr.to_string(), &extra));
    assert_eq!(server.wait_ready(), addr);
    let stats = block_on(&rt, "the stream", sender).expect("sender task").expect("the producer survives SIGINT");
    let report = block_on(&rt, "the acknowledgements", reader).expect("reader task");
    eprintln!("{stats:?}");
    assert_eq!(report.error, None, "{report:?}");
    assert_eq!((report.wrong_count, &report.wrong), (0, &vec![]), "never applied twice");
    assert_eq!(report.duplicate, [0; 0], "the stopped server answered every batch it applied");
    assert_eq!(report.acked_through, joins.total);
    assert!(stats.reconnects >= 1, "{stats:?}");
    let (applied_after, _) = stop_gracefully(&mut server, "TERM");
    assert_eq!(applied + applied_after, joins.total, "every event applied exactly once");
    std::fs::remove_dir_all(&dir).ok();
}

// ---------------------------------------------------------------------
// 4. BUSY under overload, through the SDK.

#[test]
fn busy_under_overload_through_the_sdk() {
    let dir = common::scratch_dir("serve-busy");
    let data = dir.join("data");
    let config = dir.join("serve.toml");
    std::fs::write(&config, "shards = 1\nfsync = \"never\"\n\n[engine]\nqueue_batches_max = 1\n").unwrap();
    let mut args = serve_args(&data, "127.0.0.1:0", &[]);
    args.extend(["--config".into(), config.into_os_string()]);
    let mut server = Serve::spawn(&args);
    let addr = server.wait_ready();
    assert!(server.stderr_now().contains("with 1 shard;"), "the file's settings apply:\n{}", server.stderr_now());
    let rt = runtime();

    let producers = 3u32;
    let streams: Vec<Joins> =
        (0..producers).map(|k| Joins { first_hunt: 100 + k, hunts: 1, total: 1 + 100_000 }).collect();
    let results = block_on(&rt, "three producers", async {
        let mut tasks = Vec::new();
        for &joins in &streams {
            let (producer, acks) = Producer::<TreasureHunt>::connect(client(addr)).await.expect("connects");
            let reader = tokio::spawn(check_joins(acks, joins, Arc::new(AtomicU64::new(0)), None));
            let sender = tokio::spawn(send_joins(producer, joins, Arc::new(AtomicU64::new(0))));
            tasks.push((sender, reader));
        }
        let mut results = Vec::new();
        for (sender, reader) in tasks {
            let stats = sender.await.expect("sender task").expect("the producer finishes");
            results.push((stats, reader.await.expect("reader task")));
        }
        results
    });

    let mut busy = 0;
    for ((stats, report), joins) in results.iter().zip(&streams) {
        eprintln!("{stats:?}");
        assert_eq!(report.error, None, "{report:?}");
        assert_eq!((report.wrong_count, &report.wrong), (0, &vec![]), "each event applied exactly once");
        assert_eq!(report.duplicate, [0; 0], "BUSY resends are never retries");
        assert_eq!(report.acked_through, joins.total);
        assert_eq!(stats.events_acked, joins.total);
        assert_eq!(stats.reconnects, 0);
        assert!(stats.batches_resent >= stats.busy.min(1), "BUSY batches are resent: {stats:?}");
        busy += stats.busy;
    }
    assert!(busy > 0, "one shard with a queue of one batch never said BUSY to three producers");
    let (applied, _) = stop_gracefully(&mut server, "TERM");
    assert_eq!(applied, streams.iter().map(|j| j.total).sum::<u64>(), "nothing applied twice, nothing lost");
    std::fs::remove_dir_all(&dir).ok();
}

// ---------------------------------------------------------------------
// 5. A disk that refuses the journal's writes: fail-stop, and everyone told.

/// `GET path` on the control plane: (status, body).
fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let reply = trove_bench::http::get(addr, path, Duration::from_secs(10)).expect("an answer");
    (reply.status, reply.body)
}

#[test]
fn a_journal_the_disk_refuses_stops_acknowledging_and_says_why() {
    let dir = common::scratch_dir("serve-efbig");
    let data = dir.join("data");
    let mut server = Serve::spawn_with_file_limit(&serve_args(&data, "127.0.0.1:0", &["--shards", "1"]), 2048);
    let addr = server.wait_ready();
    let control: SocketAddr = {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let log = server.stderr_now();
            if let Some(a) = log.split("control plane on http://").nth(1).and_then(|r| r.split('/').next()) {
                break a.parse().expect("control address");
            }
            assert!(Instant::now() < deadline, "no control plane line:\n{log}");
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    assert_eq!(http_get(control, "/health").0, 200);
    // No --fsync: the default policy, group commit.
    assert!(server.stderr_now().contains("(fsync group)"), "{}", server.stderr_now());

    // Produce until the journal's segment passes 2 MiB (a few hundred
    // thousand events) and a write fails.
    let rt = runtime();
    let (acked, error) = block_on(&rt, "producing into a failing journal", async {
        let config = ClientConfig { reconnect_attempts_max: Some(2), ..client(addr) };
        let (mut producer, acks) = Producer::<TreasureHunt>::connect(config).await.expect("producer connects");
        let mut acks = acks;
        let reader = tokio::spawn(async move {
            let (mut acked, mut error) = (0u64, None);
            while let Some(a) = acks.next().await {
                match a {
                    Ok(b) => acked += u64::from(b.count),
                    Err(e) => error = Some(e),
                }
            }
            (acked, error)
        });
        let mut send_error = None;
        for i in 0..5_000_000u32 {
            if let Err(e) = producer.send_wait(HuntEvent::join(i % 1000, i)).await {
                send_error = Some(e);
                break;
            }
        }
        drop(producer);
        let (acked, ack_error) = reader.await.expect("ack reader");
        (acked, send_error.or(ack_error).expect("the journal fails long before 5M events"))
    });
    let text = error.to_string();
    assert!(text.contains("internal") && text.contains("journal"), "{text}");
    assert!(acked > 0, "events before the limit were acknowledged");

    // The probes say so; the process is still up and answers.
    let (status, body) = http_get(control, "/health");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("failed") && body.contains("journal of shard 0"), "{body}");
    assert_eq!(http_get(control, "/ready").0, 503);
    assert!(server.stderr_now().contains("nothing more is acknowledged"), "{}", server.stderr_now());

    // A stop exits nonzero, naming the failure, and prints no state hash.
    server.signal("TERM");
    let (status, stderr) = server.wait_exit(EXIT_TIMEOUT);
    assert!(!status.success(), "exit {status}; stderr:\n{stderr}");
    assert!(stderr.contains("stopped after a failure") && !stderr.contains("state hash"), "{stderr}");

    // Every acknowledged event is in the journal (the failed server wrote
    // no snapshot of its undurable state), and a server without the limit
    // starts from it.
    let replay = Command::new(env!("CARGO_BIN_EXE_trove"))
        .args(["replay", "--json", "--data"])
        .arg(&data)
        .output()
        .expect("trove replay runs");
    let json: serde_json::Value = serde_json::from_slice(&replay.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&replay.stderr)));
    let journaled = json["events"].as_u64().expect("events");
    assert!(journaled >= acked, "{journaled} events journaled, {acked} acknowledged");
    let mut server = Serve::spawn(&serve_args(&data, "127.0.0.1:0", &["--shards", "1"]));
    server.wait_ready();
    stop_gracefully(&mut server, "TERM");
    std::fs::remove_dir_all(&dir).ok();
}

// ---------------------------------------------------------------------
// 6. Bad settings: a prompt, nonzero exit naming the problem.

#[test]
fn serve_rejects_bad_settings() {
    let dir = common::scratch_dir("serve-bad");
    let data = dir.join("data");
    let unknown_key = dir.join("unknown.toml");
    std::fs::write(&unknown_key, "[engine]\nqueue_batches = 4\n").unwrap();
    let bad_limit = dir.join("limit.toml");
    std::fs::write(&bad_limit, "[limits]\nframe_body_max = 10\n").unwrap();
    let bad_io = dir.join("io.toml");
    std::fs::write(&bad_io, "journal_io = \"mmap\"\n").unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_addr = taken.local_addr().unwrap().to_string();

    let with = |extra: &[&str]| serve_args(&data, "127.0.0.1:0", extra);
    let config = |path: &Path| {
        let mut a = with(&[]);
        a.extend(["--config".into(), path.into()]);
        a
    };
    let ws_nowhere: Vec<OsString> = vec![
        "--data".into(),
        data.clone().into(),
        "--tcp".into(),
        "127.0.0.1:0".into(),
        "--ws".into(),
        "nowhere".into(),
        "--control".into(),
        "off".into(),
    ];
    let cases: Vec<(&str, Vec<OsString>, Vec<&str>)> = vec![
        ("--fsync sometimes", with(&["--fsync", "sometimes"]), vec!["sometimes"]),
        ("an unknown key", config(&unknown_key), vec!["queue_batches", "unknown field"]),
        ("--mode nope", with(&["--mode", "nope"]), vec!["nope"]),
        ("a missing config file", config(&dir.join("missing.toml")), vec!["missing.toml"]),
        ("frame_body_max = 10", config(&bad_limit), vec!["frame_body_max"]),
        ("journal_io = mmap", config(&bad_io), vec!["journal_io", "mmap"]),
        ("a WebSocket address that is none", ws_nowhere, vec!["nowhere"]),
        ("--shards 0", with(&["--shards", "0"]), vec!["--shards"]),
        ("a TCP port in use", serve_args(&data, &taken_addr, &[]), vec![taken_addr.as_str()]),
    ];
    for (what, args, names) in cases {
        let started = Instant::now();
        let mut server = Serve::spawn(&args);
        let (status, stderr) = server.wait_exit(Duration::from_secs(20));
        eprintln!("{what}: {status} after {:?}: {}", started.elapsed(), stderr.trim());
        assert!(!status.success() && status.code().is_some(), "{what}: exit {status}; stderr:\n{stderr}");
        for name in names {
            assert!(stderr.contains(name), "{what}: stderr does not name `{name}`:\n{stderr}");
        }
        assert!(!stderr.contains("protocol v1 on tcp://"), "{what}: served anyway:\n{stderr}");
    }
    drop(taken);
    std::fs::remove_dir_all(&dir).ok();
}
