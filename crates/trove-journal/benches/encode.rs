//! Criterion benchmark of what the journal thread spends per event: encoding
//! a shard's share of standard-workload batches into frames (the shard's
//! events of a two-shard split, with their sequence offsets), and decoding
//! them back as a replay does. Run: `cargo bench -p trove-journal`.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use trove_core::Stamped;
use trove_hunt::HuntEvent;
use trove_journal::Run;
use trove_journal::format::{FRAME_HEAD_BYTES, decode_body, decode_frame_head, encode_frame_parts};
use trove_workload::{Clock, Generator, WorkloadSpec};

/// A shard's drained batch: about half of two producer batches of 8192.
const PRODUCER_BATCH: usize = 8192;
const BATCHES: usize = 64;

fn frames(c: &mut Criterion) {
    let spec = WorkloadSpec::standard();
    let mut generator = Generator::new(&spec);
    let mut clock = Clock::new(spec.virtual_events_per_s);
    let mut batches = Vec::new();
    for _ in 0..BATCHES {
        let mut events = Vec::with_capacity(PRODUCER_BATCH);
        generator.fill(&mut clock, PRODUCER_BATCH, &mut events);
        // This shard's share (every event of an even hunt), stamped with
        // one time as the engine does, and its positions in the batch.
        let (mine, offsets): (Vec<Stamped<HuntEvent>>, Vec<u32>) = events
            .iter()
            .zip(0u32..)
            .filter(|(e, _)| e.event.hunt % 2 == 0)
            .map(|(e, i)| (Stamped { time_us: 1_000, event: e.event }, i))
            .unzip();
        batches.push((mine, offsets));
    }
    let events: usize = batches.iter().map(|(e, _)| e.len()).sum();

    let mut group = c.benchmark_group("journal");
    group.throughput(Throughput::Elements(events as u64));
    group.sample_size(30);
    let mut buf = Vec::new();
    group.bench_function("encode_standard_share", |b| {
        b.iter(|| {
            buf.clear();
            for (i, (mine, offsets)) in batches.iter().enumerate() {
                let run = Run {
                    producer: 7,
                    first_seq: (i * PRODUCER_BATCH) as u64,
                    len: mine.len(),
                    offsets: Some(offsets),
                };
                // As the engine's journal thread does: the drain's parts
                // and the one time the shard stamped them with.
                encode_frame_parts(i as u64 + 1, i as u64 + 1, &[run], &[mine], Some(1_000), &mut buf);
            }
            buf.len()
        })
    });
    eprintln!("journal bytes per event: {:.2}", buf.len() as f64 / events as f64);
    group.bench_function("decode_standard_share", |b| {
        b.iter(|| {
            let mut at = 0;
            let mut n = 0u64;
            while at < buf.len() {
                let (len, crc) = decode_frame_head(&buf[at..]).expect("head");
                let body = decode_body::<HuntEvent>(&buf[at + FRAME_HEAD_BYTES..at + FRAME_HEAD_BYTES + len], crc)
                    .expect("body");
                n += body.entries::<HuntEvent>().map(|e| u64::from(e.stamped.event.player)).sum::<u64>();
                at += FRAME_HEAD_BYTES + len;
            }
            n
        })
    });
    group.finish();
}

criterion_group!(benches, frames);
criterion_main!(benches);
