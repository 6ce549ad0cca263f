//! Which DEFLATE level compressed WebSocket updates use
//! (docs/decisions/0054): real `update` messages, the standard workload's
//! events applied by an in-memory engine to one hunt in batches of 1, 16
//! and 256 events (a chunk's updates: the events and their broadcasts,
//! encoded as the endpoint encodes them), compressed at every level 0..=9
//! as the endpoint compresses them (raw DEFLATE, a compressor reused and
//! reset per message). Prints, per batch size and level, the mean bytes of
//! a message before and after, and the CPU time per message on one thread.
//! Run: `cargo run --release -p trove-server --example deflate_levels`.

use std::time::{Duration, Instant};

use trove_core::Stamped;
use trove_hunt::{HuntEvent, TreasureHunt};
use trove_server::ws::{deflate_raw_with, update_texts};
use trove_shard::{Delivery, Engine, EngineConfig, Mailbox};
use trove_workload::{Generator, WorkloadSpec};

/// Batches submitted per batch size.
const BATCHES: usize = 200;
/// Each level is timed over the messages, round after round, for at least this long.
const TIMED_MIN: Duration = Duration::from_millis(300);

fn main() {
    let engine = Engine::<TreasureHunt>::start(EngineConfig { shards: 1, ..EngineConfig::default() }).expect("engine");
    let spec = WorkloadSpec { hunts: 1, ..WorkloadSpec::standard() };
    let mut generator = Generator::new(&spec);
    let mailbox = Mailbox::new(1 << 20);
    engine.hub().subscribe(0, &mailbox);
    let mut producer = engine.producer();
    let mut taken = Vec::new();
    let mut submit = |events: Vec<HuntEvent>, taken: &mut Vec<Delivery<TreasureHunt>>| {
        let mut batch: Vec<Stamped<HuntEvent>> =
            events.into_iter().map(|event| Stamped { time_us: 0, event }).collect();
        producer.submit(&mut batch).expect("submitted");
        producer.complete_timeout(Duration::from_secs(30)).expect("completed");
        mailbox.take(taken);
    };
    submit(generator.setup(), &mut taken);
    taken.clear();
    println!(
        "| events per batch | level | bytes per message | compressed | ratio | us per message | ns per input byte |"
    );
    println!("|---|---|---|---|---|---|---|");
    for events in [1usize, 16, 256] {
        let mut texts = Vec::new();
        for _ in 0..BATCHES {
            submit((0..events).map(|_| generator.next_event()).collect(), &mut taken);
            for d in taken.drain(..) {
                if let Delivery::Chunk(chunk) = d {
                    texts.extend(update_texts(&chunk));
                }
            }
        }
        let bytes_in: usize = texts.iter().map(String::len).sum();
        for level in 0..=9 {
            let mut c = flate2::Compress::new(flate2::Compression::new(level), false);
            let bytes_out: usize = texts.iter().map(|t| deflate_raw_with(&mut c, t.as_bytes()).len()).sum();
            let (mut messages, start) = (0u64, Instant::now());
            while start.elapsed() < TIMED_MIN {
                for t in &texts {
                    std::hint::black_box(deflate_raw_with(&mut c, t.as_bytes()));
                }
                messages += texts.len() as u64;
            }
            let spent = start.elapsed().as_secs_f64();
            let rounds = messages as f64 / texts.len() as f64;
            println!(
                "| {events} | {level} | {:.0} | {:.0} | {:.3} | {:.2} | {:.2} |",
                bytes_in as f64 / texts.len() as f64,
                bytes_out as f64 / texts.len() as f64,
                bytes_out as f64 / bytes_in as f64,
                spent * 1e6 / messages as f64,
                spent * 1e9 / (rounds * bytes_in as f64),
            );
        }
    }
}
