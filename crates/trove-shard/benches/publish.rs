//! Criterion benchmark of the fan-out path: one shard publishing batches
//! of one watched world to 1, 100 and 5,000 subscribers' mailboxes
//! ([`Hub::publish`]). Reported per delivered chunk (one batch's chunk
//! pushed into one mailbox): the time of a publish divided by the
//! subscribers. The subscribers' takes happen between publishes, outside
//! the timing, so every push queues (no mailbox is full).
//! A second group times a quiet world's publish while another thread
//! publishes a hot world to 5,000 subscribers.
//! Run: `cargo bench -p trove-shard --bench publish`.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use trove_core::{Game, Outcomes, Stamped};
use trove_hunt::{HuntEvent, HuntOutcome, TreasureHunt};
use trove_shard::updates::{Delivery, Hub, Mailbox, Staging};

/// Events per published batch, all of the watched world.
const BATCH_EVENTS: usize = 16;
const WORLD: u32 = 7;

/// Times `iters` publishes of one batch (`events` and their outcomes) into
/// `hub`; after each, outside the timing, empties `mailboxes` so that
/// every push queues.
fn time_publishes(
    iters: u64,
    hub: &Hub<TreasureHunt>,
    (events, out): (&[Stamped<HuntEvent>], &Outcomes<HuntOutcome, <TreasureHunt as Game>::Broadcast>),
    staging: &mut Staging<TreasureHunt>,
    mailboxes: &[Arc<Mailbox<TreasureHunt>>],
    taken: &mut Vec<Delivery<TreasureHunt>>,
) -> Duration {
    let mut spent = Duration::ZERO;
    for _ in 0..iters {
        let start = Instant::now();
        hub.publish(events, out, staging, start);
        spent += start.elapsed();
        for m in mailboxes {
            m.take(taken);
            taken.clear();
        }
    }
    spent
}

fn publish(c: &mut Criterion) {
    let events: Vec<Stamped<HuntEvent>> =
        (0..BATCH_EVENTS as u32).map(|p| Stamped { time_us: 1, event: HuntEvent::join(WORLD, p) }).collect();
    let mut out = Outcomes::with_capacity(BATCH_EVENTS);
    out.direct.extend(std::iter::repeat_n(HuntOutcome::Left, BATCH_EVENTS));
    let mut group = c.benchmark_group("publish_one_world");
    group.measurement_time(Duration::from_secs(3));
    for subscribers in [1usize, 100, 5000] {
        let hub: Hub<TreasureHunt> = Hub::default();
        let mailboxes: Vec<Arc<Mailbox<TreasureHunt>>> = (0..subscribers).map(|_| Mailbox::new(1 << 20)).collect();
        for m in &mailboxes {
            hub.subscribe(WORLD, m);
        }
        let mut staging = Staging::default();
        let mut taken: Vec<Delivery<TreasureHunt>> = Vec::new();
        // Counted per delivered chunk: one publish delivers `subscribers`.
        group.throughput(Throughput::Elements(subscribers as u64));
        group.bench_function(BenchmarkId::from_parameter(subscribers), |b| {
            b.iter_custom(|iters| time_publishes(iters, &hub, (&events, &out), &mut staging, &mailboxes, &mut taken));
        });
        assert_eq!(hub.metrics().subscriptions, subscribers as u64);
    }
    group.finish();
}

/// What change 2 of issue 27 is for: a shard publishing a quiet world
/// (one subscriber) while another shard publishes, without pause, a hot
/// world with 5,000 subscribers (whose mailboxes are full: every push
/// records a gap, as for watchers that fell behind). Reported per publish
/// of the quiet world; with the pushes under the hub's lock it waits for
/// the hot world's 5,000.
fn publish_beside_hot_world(c: &mut Criterion) {
    const HOT: u32 = 8;
    const HOT_SUBSCRIBERS: usize = 5000;
    let hub: Arc<Hub<TreasureHunt>> = Arc::default();
    let hot: Vec<Arc<Mailbox<TreasureHunt>>> = (0..HOT_SUBSCRIBERS).map(|_| Mailbox::new(1)).collect();
    for m in &hot {
        hub.subscribe(HOT, m);
    }
    let quiet = Mailbox::new(1 << 20);
    hub.subscribe(WORLD, &quiet);
    let stop = Arc::new(AtomicBool::new(false));
    let hot_publisher = {
        let (hub, stop) = (hub.clone(), stop.clone());
        std::thread::spawn(move || {
            let events = [Stamped { time_us: 1, event: HuntEvent::join(HOT, 1) }];
            let mut out = Outcomes::with_capacity(1);
            out.direct.push(HuntOutcome::Left);
            let mut staging = Staging::default();
            while !stop.load(Relaxed) {
                hub.publish(&events, &out, &mut staging, Instant::now());
            }
        })
    };
    let events = [Stamped { time_us: 1, event: HuntEvent::join(WORLD, 1) }];
    let mut out = Outcomes::with_capacity(1);
    out.direct.push(HuntOutcome::Left);
    let mut staging = Staging::default();
    let mut taken = Vec::new();
    let mut group = c.benchmark_group("publish_beside_hot_world");
    group.measurement_time(Duration::from_secs(3));
    group.bench_function("quiet_world_1_subscriber", |b| {
        b.iter_custom(|iters| {
            time_publishes(iters, &hub, (&events, &out), &mut staging, std::slice::from_ref(&quiet), &mut taken)
        });
    });
    group.finish();
    stop.store(true, Relaxed);
    hot_publisher.join().unwrap();
}

criterion_group!(benches, publish, publish_beside_hot_world);
criterion_main!(benches);
