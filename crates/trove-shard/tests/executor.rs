//! The executor's promises, in every mode: per-producer order, busy when
//! full with bounded queues, drain on shutdown, and the same final state
//! whatever the shard count or mode.

use std::sync::{Condvar, Mutex};
use std::time::Duration;

use trove_core::{Game, GameState, Outcomes, Record, Stamped, StateHasher, WorldId, Worlds};
use trove_hunt::{HuntEvent, HuntOutcome, TreasureHunt};
use trove_shard::{ClockMode, Engine, EngineConfig, Mode, SubmitError};
use trove_workload::{Clock, Generator, WorkloadSpec};

fn config(mode: Mode, shards: usize) -> EngineConfig {
    // The wait bound is tested on its own (`a_shard_queue_is_bounded_in_expected_wait`);
    // elsewhere a loaded machine must not turn pipelining into BUSY.
    let queue_wait_max = Duration::from_secs(60);
    EngineConfig { mode, shards, clock: ClockMode::Supplied, queue_wait_max, ..EngineConfig::default() }
}

fn spec() -> WorkloadSpec {
    WorkloadSpec {
        hunts: 12,
        players_per_hunt: 50,
        map_width: 32,
        map_height: 32,
        treasures_per_round: 40,
        ..WorkloadSpec::standard()
    }
}

/// Producer `part`'s stream: its hunts' setup, then `n` events, stamped
/// by its own virtual clock.
fn stream(part: u32, parts: u32, n: usize) -> Vec<Stamped<HuntEvent>> {
    let spec = spec();
    let mut g = Generator::partition(&spec, part, parts);
    let mut clock = Clock::new(spec.virtual_events_per_s / 100);
    let mut events = clock.stamp(g.setup());
    g.fill(&mut clock, n, &mut events);
    events
}

/// Submits `events` in batches of `batch`, retrying on busy, and returns
/// every outcome in the order the producer got them.
fn drive(engine: &Engine<TreasureHunt>, events: &[Stamped<HuntEvent>], batch: usize) -> Vec<HuntOutcome> {
    let mut producer = engine.producer();
    let mut outcomes = Vec::with_capacity(events.len());
    let mut next_ticket = 0;
    let mut check = |c: trove_shard::Completed<TreasureHunt>, outcomes: &mut Vec<HuntOutcome>| {
        assert_eq!(c.ticket, next_ticket, "batches complete in submission order");
        next_ticket += 1;
        outcomes.extend(c.outcomes);
    };
    for chunk in events.chunks(batch) {
        loop {
            match producer.submit(&mut chunk.to_vec()) {
                Ok(_) => break,
                Err(SubmitError::Busy) => {
                    let c = producer.complete_timeout(Duration::from_secs(10)).expect("progress");
                    check(c, &mut outcomes);
                }
                Err(e) => panic!("{e:?}"),
            }
        }
        while let Some(c) = producer.try_complete() {
            check(c, &mut outcomes);
        }
    }
    while producer.in_flight() > 0 {
        let c = producer.complete_timeout(Duration::from_secs(30)).expect("all batches complete");
        check(c, &mut outcomes);
    }
    outcomes
}

fn reference(streams: &[Vec<Stamped<HuntEvent>>]) -> (u64, Vec<Vec<HuntOutcome>>) {
    let mut state = GameState::<TreasureHunt>::new(1 << 10);
    let mut per_stream = Vec::new();
    for s in streams {
        let mut out = Outcomes::default();
        state.apply(s, &mut out);
        per_stream.push(out.direct);
    }
    (state.state_hash(), per_stream)
}

#[test]
fn one_producer_gets_its_outcomes_in_order_in_every_mode() {
    let events = stream(0, 1, 20_000);
    let (_, expected) = reference(std::slice::from_ref(&events));
    for (mode, shards) in
        [(Mode::Sharded, 1), (Mode::Sharded, 3), (Mode::TaskPerEvent, 2), (Mode::SpawnBlockingPerEvent, 2)]
    {
        let engine = Engine::<TreasureHunt>::start(config(mode, shards)).unwrap();
        // Odd batch sizes so batches straddle hunts and shards.
        let got = drive(&engine, &events, 97);
        assert_eq!(got, expected[0], "{mode:?} with {shards} shards");
        engine.shutdown();
    }
}

#[test]
fn same_final_state_with_1_2_4_shards_and_every_mode() {
    let streams: Vec<_> = (0..3).map(|p| stream(p, 3, 15_000)).collect();
    let (expected, _) = reference(&streams);
    let runs = [
        (Mode::Sharded, 1),
        (Mode::Sharded, 2),
        (Mode::Sharded, 4),
        (Mode::TaskPerEvent, 2),
        (Mode::SpawnBlockingPerEvent, 2),
    ];
    for (mode, shards) in runs {
        let engine = Engine::<TreasureHunt>::start(config(mode, shards)).unwrap();
        // Three producers at once, each on its own hunts.
        std::thread::scope(|scope| {
            for s in &streams {
                let engine = &engine;
                scope.spawn(move || drive(engine, s, 256));
            }
        });
        let total: usize = streams.iter().map(Vec::len).sum();
        let end = engine.shutdown();
        assert_eq!(end.events_applied, total as u64, "{mode:?}");
        assert_eq!(end.state_hash, expected, "{mode:?} with {shards} shards");
    }
}

/// A game whose apply waits while a gate is closed, so a test can hold a
/// shard busy and fill its queue deterministically.
struct Gated;

static GATE: (Mutex<bool>, Condvar) = (Mutex::new(true), Condvar::new());

fn set_gate(open: bool) {
    *GATE.0.lock().unwrap() = open;
    GATE.1.notify_all();
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Tick(u32);

impl Record for Tick {
    const SIZE: usize = 4;
    fn encode(&self, out: &mut [u8]) {
        out[..4].copy_from_slice(&self.0.to_le_bytes());
    }
    fn decode(b: &[u8]) -> Self {
        Tick(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
}

impl Game for Gated {
    const NAME: &'static str = "gated";
    type World = u64;
    type Event = Tick;
    type Outcome = u32;
    type Broadcast = ();
    fn world_of(e: &Tick) -> WorldId {
        e.0
    }
    fn apply(worlds: &mut Worlds<u64>, events: &[Stamped<Tick>], out: &mut Outcomes<u32, ()>) {
        let mut open = GATE.0.lock().unwrap();
        while !*open {
            open = GATE.1.wait(open).unwrap();
        }
        drop(open);
        for e in events {
            if worlds.get(e.event.0).is_none() {
                worlds.insert(e.event.0, 0).unwrap();
            }
            let w = worlds.get_mut(e.event.0).unwrap();
            *w += 1;
            out.direct.push(*w as u32);
        }
    }
    fn hash_world(w: &u64, h: &mut StateHasher) {
        h.u64(*w);
    }
    fn duplicate_outcome() -> u32 {
        u32::MAX
    }
    fn store_outcome(o: &u32, out: &mut Vec<u8>) {
        out.extend_from_slice(&o.to_le_bytes());
    }
    fn load_outcome(r: &mut trove_core::Reader<'_>) -> Result<u32, trove_core::DecodeError> {
        r.u32()
    }
    fn encode_world(w: &u64, out: &mut Vec<u8>) {
        out.extend_from_slice(&w.to_le_bytes());
    }
    fn decode_world(_: WorldId, b: &[u8]) -> Result<u64, trove_core::DecodeError> {
        let mut r = trove_core::Reader::new(b);
        let w = r.u64()?;
        r.finish().map(|()| w)
    }
}

fn ticks(n: u32) -> Vec<Stamped<Tick>> {
    (0..n).map(|i| Stamped { time_us: 0, event: Tick(i % 4) }).collect()
}

#[test]
fn a_full_queue_answers_busy_at_once_and_stays_bounded() {
    // One test drives the gate for every mode: tests run in parallel and
    // the gate is global.
    for mode in Mode::ALL {
        set_gate(false);
        let cfg = EngineConfig {
            mode,
            shards: 1,
            queue_batches_max: 2,
            batch_events_max: 8,
            // One batch per drain: a shard that took two queued batches into
            // its blocked apply would make room for a fourth.
            drain_events_max: 8,
            in_flight_events_max: 24,
            clock: ClockMode::Supplied,
            ..EngineConfig::default()
        };
        let engine = Engine::<Gated>::start(cfg).unwrap();
        let mut p = engine.producer();
        let mut accepted = 0;
        let mut busy = 0;
        for _ in 0..50 {
            match p.submit(&mut ticks(8)) {
                Ok(_) => accepted += 1,
                Err(SubmitError::Busy) => busy += 1,
                Err(e) => panic!("{e:?}"),
            }
        }
        // Sharded: one batch in the (blocked) apply, two queued. Per event:
        // 24 events in flight.
        assert!((2..=3).contains(&accepted), "{mode:?}: accepted {accepted}");
        assert_eq!(accepted + busy, 50);
        let m = engine.metrics();
        assert_eq!(m.busy_replies, busy);
        assert!(m.shards[0].queue_depth_events <= 24, "{mode:?}: {m:?}");
        assert_eq!(p.submit(&mut Vec::new()), Err(SubmitError::BadSize));
        assert_eq!(p.submit(&mut ticks(9)), Err(SubmitError::BadSize));
        set_gate(true);
        let mut done = 0;
        while let Some(c) = p.complete_timeout(Duration::from_secs(10)) {
            assert_eq!(c.outcomes.len(), 8);
            done += 1;
        }
        assert_eq!(done, accepted, "{mode:?}");
        let end = engine.shutdown();
        assert_eq!(end.events_applied, accepted * 8);
    }
}

/// Holds the shard of world 0 in a query until the sender is used (or two
/// minutes pass); the receiver answers when the query ends.
fn hold_shard_of_world_0(
    engine: &Engine<TreasureHunt>,
) -> (std::sync::mpsc::Sender<()>, tokio::sync::oneshot::Receiver<()>) {
    let (release, held) = std::sync::mpsc::channel::<()>();
    let answered = engine.query_world(0, move |_| {
        let _ = held.recv_timeout(Duration::from_secs(120));
    });
    (release, answered)
}

/// Admission counts events too (`queue_events_max`): past capacity a
/// batch is refused rather than queued behind more work than the bound,
/// and what is refused is handed back whole and taken once the queue has
/// drained.
#[test]
fn a_shard_queue_is_bounded_in_events_too() {
    let cfg = EngineConfig {
        queue_events_max: 200,
        batch_events_max: 200,
        drain_events_max: 1000,
        // Only the events bound is tested here.
        queue_wait_max: Duration::from_secs(60),
        ..config(Mode::Sharded, 1)
    };
    let engine = Engine::<TreasureHunt>::start(cfg).unwrap();
    // The shard is held in a query, so what is submitted stays queued.
    let hold = || hold_shard_of_world_0(&engine);
    let events = stream(0, 1, 1000);
    assert!(events.len() >= 360);
    let mut p = engine.producer();
    let (release, _answered) = hold();
    p.submit(&mut events[..150].to_vec()).unwrap();
    // 150 + 60 would pass 200 events: refused, handed back whole.
    let mut second = events[150..210].to_vec();
    assert_eq!(p.submit(&mut second), Err(SubmitError::Busy));
    assert_eq!(second.len(), 60, "a refused batch is handed back whole");
    release.send(()).unwrap();
    let c = p.complete_timeout(Duration::from_secs(60)).expect("the first batch");
    assert_eq!(c.outcomes.len(), 150);
    // Drained (the next hold is queued ahead of what follows, and the
    // shard takes it first): batches are taken again while they fit.
    let (release, _answered) = hold();
    p.submit(&mut second).unwrap();
    // 60 + 140 = 200: taken; one more event is not.
    p.submit(&mut events[210..350].to_vec()).unwrap();
    assert_eq!(p.submit(&mut events[350..351].to_vec()), Err(SubmitError::Busy));
    release.send(()).unwrap();
    let mut done = 0;
    while done < 200 {
        done += p.complete_timeout(Duration::from_secs(60)).expect("acknowledged").outcomes.len();
    }
    assert_eq!(engine.metrics().busy_replies, 2);
    assert_eq!(engine.shutdown().events_applied, 350);
}

/// One drain of 1,024 events (the least the shard measures) that keeps
/// shard 0 busy at least 100 ms (a query queued behind them runs in the
/// same drain): its measured cost is then about 100 us per event or more.
/// Returns once the drain is measured.
fn measure_a_slow_drain(
    engine: &Engine<TreasureHunt>,
    p: &mut trove_shard::Producer<TreasureHunt>,
    events: &[Stamped<HuntEvent>],
) {
    let (release, _answered) = hold_shard_of_world_0(engine);
    p.submit(&mut events.to_vec()).unwrap();
    let _slow = engine.query_world(0, |_| std::thread::sleep(Duration::from_millis(100)));
    release.send(()).unwrap();
    let c = p.complete_timeout(Duration::from_secs(60)).expect("the first batch");
    assert_eq!(c.outcomes.len(), events.len());
    // The drain is measured when it ends, after its outcomes are out.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while engine.metrics().shards[0].busy_ns < 100_000_000 {
        assert!(std::time::Instant::now() < deadline, "the drain never ended");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Admission bounds the expected wait too (`queue_wait_max`): a shard that
/// has been working its queue off slowly takes a batch only behind less
/// work than the bound, and any batch once its queue is empty. (No burst
/// allowance here: the bound alone.)
#[test]
fn a_shard_queue_is_bounded_in_expected_wait() {
    for (wait_max, refused) in [(Duration::from_millis(2), true), (Duration::from_secs(60), false)] {
        let cfg = EngineConfig {
            queue_wait_max: wait_max,
            queue_burst_allowance: Duration::ZERO,
            ..config(Mode::Sharded, 1)
        };
        let engine = Engine::<TreasureHunt>::start(cfg).unwrap();
        let events = stream(0, 1, 1200);
        let mut p = engine.producer();
        measure_a_slow_drain(&engine, &mut p, &events[..1024]);
        // Held again: 50 events are taken by the empty queue; behind them
        // one more would wait about 5 ms at that rate, past a 2 ms bound.
        let (release, _answered) = hold_shard_of_world_0(&engine);
        p.submit(&mut events[1024..1074].to_vec()).unwrap();
        let mut last = events[1074..1075].to_vec();
        let second_try = p.submit(&mut last);
        assert_eq!(second_try == Err(SubmitError::Busy), refused, "queue_wait_max {wait_max:?}: {second_try:?}");
        release.send(()).unwrap();
        let mut done = 0;
        while done < 50 + if refused { 0 } else { 1 } {
            done += p.complete_timeout(Duration::from_secs(60)).expect("acknowledged").outcomes.len();
        }
        if refused {
            // The queue is empty again: the refused batch is taken.
            assert_eq!(last.len(), 1, "a refused batch is handed back whole");
            p.submit(&mut last).unwrap();
            assert_eq!(p.complete_timeout(Duration::from_secs(60)).expect("acknowledged").outcomes.len(), 1);
        }
        assert_eq!(engine.metrics().busy_replies, u64::from(refused));
        assert_eq!(engine.shutdown().events_applied, 1075);
    }
}

/// A queue that passes its wait bound from calm is still taken for the
/// burst allowance (a stall that drains by itself is not refused), and
/// refused once the allowance is spent.
#[test]
fn a_queue_past_its_wait_is_taken_for_the_burst_allowance_then_refused() {
    let allowance = Duration::from_millis(300);
    let cfg = EngineConfig {
        queue_wait_max: Duration::from_millis(2),
        queue_burst_allowance: allowance,
        ..config(Mode::Sharded, 1)
    };
    let engine = Engine::<TreasureHunt>::start(cfg).unwrap();
    let events = stream(0, 1, 1200);
    let mut p = engine.producer();
    measure_a_slow_drain(&engine, &mut p, &events[..1024]);
    let (release, _answered) = hold_shard_of_world_0(&engine);
    p.submit(&mut events[1024..1074].to_vec()).unwrap();
    // Past the 2 ms bound (about 5 ms behind the 50), from calm: taken.
    p.submit(&mut events[1074..1075].to_vec()).expect("within the burst allowance");
    std::thread::sleep(allowance + Duration::from_millis(100));
    let mut last = events[1075..1076].to_vec();
    assert_eq!(p.submit(&mut last), Err(SubmitError::Busy), "the allowance is spent");
    release.send(()).unwrap();
    let mut done = 0;
    while done < 51 {
        done += p.complete_timeout(Duration::from_secs(60)).expect("acknowledged").outcomes.len();
    }
    // The queue is empty again: the refused batch is taken.
    p.submit(&mut last).unwrap();
    assert_eq!(p.complete_timeout(Duration::from_secs(60)).expect("acknowledged").outcomes.len(), 1);
    assert_eq!(engine.metrics().busy_replies, 1);
    assert_eq!(engine.shutdown().events_applied, 1076);
}

#[test]
fn shutdown_applies_everything_accepted_then_refuses() {
    for mode in Mode::ALL {
        let engine = Engine::<TreasureHunt>::start(config(mode, 2)).unwrap();
        let events = stream(0, 1, 30_000);
        let mut p = engine.producer();
        let mut accepted = 0;
        for chunk in events.chunks(1000) {
            let mut batch = chunk.to_vec();
            while p.submit(&mut batch) == Err(SubmitError::Busy) {
                std::thread::yield_now();
            }
            accepted += chunk.len();
        }
        // No waiting for completions: shutdown must drain.
        let end = engine.shutdown();
        assert_eq!(end.events_applied, accepted as u64, "{mode:?}");
        let mut outcomes = 0;
        while let Some(c) = p.try_complete() {
            outcomes += c.outcomes.len();
        }
        assert_eq!(outcomes, accepted, "{mode:?}: every accepted event answered");
        let mut late = events[..10].to_vec();
        assert_eq!(p.submit(&mut late), Err(SubmitError::ShuttingDown));
        assert_eq!(late.len(), 10, "a refused batch is handed back");
        assert_eq!(end.state_hash, reference(std::slice::from_ref(&events)).0, "{mode:?}");
    }
}

#[test]
fn metrics_count_applied_events_batches_and_rejections() {
    let engine = Engine::<TreasureHunt>::start(config(Mode::Sharded, 2)).unwrap();
    let mut events = stream(0, 1, 1000);
    // Ten events for a hunt that does not exist.
    events.extend((0..10).map(|_| Stamped { time_us: 1 << 40, event: HuntEvent::dig(999, 1) }));
    drive(&engine, &events, 64);
    let m = engine.metrics();
    assert_eq!(m.events_applied(), events.len() as u64);
    let unknown: u64 =
        m.shards.iter().flat_map(|s| &s.rejections).filter(|(n, _)| *n == "unknown_hunt").map(|(_, c)| c).sum();
    assert_eq!(unknown, 10);
    for s in &m.shards {
        assert!(s.batches_applied > 0 && s.batch_events.count() == s.batches_applied);
        assert!(s.busy_ns > 0 && s.wakeups > 0);
        assert_eq!(s.queue_depth_batches, 0);
    }
    engine.shutdown();
}

/// A game that answers each event with the time it was applied at.
struct Clocked;

impl Game for Clocked {
    const NAME: &'static str = "clocked";
    type World = ();
    type Event = Tick;
    type Outcome = u64;
    type Broadcast = ();
    fn world_of(e: &Tick) -> WorldId {
        e.0
    }
    fn apply(_: &mut Worlds<()>, events: &[Stamped<Tick>], out: &mut Outcomes<u64, ()>) {
        out.direct.extend(events.iter().map(|e| e.time_us));
    }
    fn hash_world(_: &(), _: &mut StateHasher) {}
    fn duplicate_outcome() -> u64 {
        u64::MAX
    }
    fn store_outcome(o: &u64, out: &mut Vec<u8>) {
        out.extend_from_slice(&o.to_le_bytes());
    }
    fn load_outcome(r: &mut trove_core::Reader<'_>) -> Result<u64, trove_core::DecodeError> {
        r.u64()
    }
    fn encode_world(_: &(), _: &mut Vec<u8>) {}
    fn decode_world(_: WorldId, b: &[u8]) -> Result<(), trove_core::DecodeError> {
        trove_core::Reader::new(b).finish()
    }
}

#[test]
fn wall_clock_stamps_at_the_engine_and_supplied_stamps_are_kept() {
    for mode in Mode::ALL {
        let base = 5_000_000;
        let cfg =
            EngineConfig { mode, shards: 2, clock: ClockMode::Wall, clock_base_us: base, ..EngineConfig::default() };
        let engine = Engine::<Clocked>::start(cfg).unwrap();
        let mut p = engine.producer();
        let mut times = Vec::new();
        for _ in 0..5 {
            let mut batch: Vec<_> = (0..10).map(|i| Stamped { time_us: 1, event: Tick(i % 2) }).collect();
            p.submit(&mut batch).unwrap();
            times.extend(p.complete_timeout(Duration::from_secs(10)).unwrap().outcomes);
            std::thread::sleep(Duration::from_millis(2));
        }
        // Producer stamps are ignored; engine time starts at the base and
        // never goes backwards along a world.
        assert!(times.iter().all(|&t| t >= base), "{mode:?}: {times:?}");
        for world in 0..2 {
            let w: Vec<u64> = times.iter().skip(world).step_by(2).copied().collect();
            assert!(w.windows(2).all(|p| p[0] <= p[1]), "{mode:?}: {w:?}");
            assert!(w.last() > w.first(), "{mode:?}: time did not advance over 10 ms: {w:?}");
        }
        engine.shutdown();

        let cfg = EngineConfig { mode, shards: 2, clock: ClockMode::Supplied, ..EngineConfig::default() };
        let engine = Engine::<Clocked>::start(cfg).unwrap();
        let mut p = engine.producer();
        let mut batch: Vec<_> = (0..10).map(|i| Stamped { time_us: 100 + i, event: Tick(i as u32 % 3) }).collect();
        p.submit(&mut batch).unwrap();
        let got = p.complete_timeout(Duration::from_secs(10)).unwrap().outcomes;
        assert_eq!(got, (100..110).collect::<Vec<u64>>(), "{mode:?}");
        engine.shutdown();
    }
}

/// Every mode publishes each subscribed world's applied events and
/// broadcasts, in the world's order, numbered without a hole: the same
/// stream a direct apply gives.
#[test]
fn subscribers_see_each_world_in_order_in_every_mode() {
    use trove_shard::{Delivery, Mailbox, Update};
    let events = stream(0, 1, 20_000);
    // The reference: the world's (event, outcome) pairs and broadcasts.
    let mut state = GameState::<TreasureHunt>::new(1 << 10);
    let mut out = Outcomes::default();
    state.apply(&events, &mut out);
    let watched: WorldId = TreasureHunt::world_of(&events[0].event);
    let mut want = Vec::new();
    let mut broadcasts = out.broadcasts.iter().peekable();
    for (i, (e, o)) in events.iter().zip(&out.direct).enumerate() {
        if TreasureHunt::world_of(&e.event) == watched {
            want.push(format!("{:?} {o:?}", e.event));
        }
        while let Some(b) = broadcasts.next_if(|b| b.event_index as usize == i) {
            if b.world == watched {
                want.push(format!("{:?}", b.body));
            }
        }
    }
    assert!(want.iter().any(|w| w.contains("TreasureFound")), "the stream has broadcasts to check");
    for mode in Mode::ALL {
        let engine = Engine::<TreasureHunt>::start(config(mode, 2)).unwrap();
        let mailbox = Mailbox::new(usize::MAX);
        let other = Mailbox::new(1);
        assert_eq!(engine.hub().subscribe(watched, &mailbox), 1);
        // A second, tiny subscriber that never reads: it only loses.
        engine.hub().subscribe(watched, &other);
        // In two halves, the second submitted after the first completed:
        // the watched world is then published in at least two chunks, so
        // the tiny mailbox (which takes one chunk when empty) must lose
        // one, however the shard threads happen to drain.
        let (first, second) = events.split_at(events.len() / 2);
        let _ = drive(&engine, first, 997);
        let _ = drive(&engine, second, 997);
        let mut got = Vec::new();
        let mut deliveries = Vec::new();
        mailbox.take(&mut deliveries);
        let mut next = 1;
        for d in deliveries {
            let Delivery::Chunk(c) = d else { panic!("an unbounded mailbox has no gaps") };
            assert_eq!((c.world, c.first_seq), (watched, next), "{}", mode.name());
            next += c.updates.len() as u64;
            got.extend(c.updates.iter().map(|u| match u {
                Update::Applied { event, outcome } => format!("{:?} {outcome:?}", event.event),
                Update::Broadcast(b) => format!("{b:?}"),
            }));
        }
        assert_eq!(got, want, "{}", mode.name());
        let m = engine.hub().metrics();
        assert!(m.updates_dropped > 0, "{m:?}");
        assert_eq!(m.updates_published, want.len() as u64);
        let mut small = Vec::new();
        other.take(&mut small);
        assert!(small.iter().any(|d| matches!(d, Delivery::Gap { .. })));
        // Counted as found, by the take.
        assert!(engine.hub().metrics().gaps > 0);
        // Unsubscribed: nothing more is published for the world.
        assert!(engine.hub().unsubscribe(watched, &mailbox));
        assert!(engine.hub().unsubscribe(watched, &other));
        assert_eq!(engine.hub().metrics().topics, 0);
        engine.shutdown();
    }
}
