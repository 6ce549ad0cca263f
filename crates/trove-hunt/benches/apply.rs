//! Criterion benchmark of the rules' batch apply on the standard workload
//! (1,000 hunts x 1,000 players): the figure `trove bench apply` reports,
//! measured with criterion's statistics. Run: `cargo bench -p trove-hunt`.

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use trove_core::Outcomes;
use trove_hunt::HuntState;
use trove_workload::{Clock, Generator, WorkloadSpec};

const BATCH_EVENTS: usize = 4096;
const EVENTS_PER_ITERATION: usize = 1 << 20;

fn apply_standard(c: &mut Criterion) {
    let spec = WorkloadSpec::standard();
    let mut generator = Generator::new(&spec);
    let mut clock = Clock::new(spec.virtual_events_per_s);
    let mut state = HuntState::new(spec.hunts as usize);
    let mut out = Outcomes::with_capacity(BATCH_EVENTS);
    for batch in clock.stamp(generator.setup()).chunks(BATCH_EVENTS) {
        state.apply(batch, &mut out);
        out.clear();
    }

    let mut group = c.benchmark_group("apply");
    group.throughput(Throughput::Elements(EVENTS_PER_ITERATION as u64));
    group.sample_size(20);
    group.bench_function("standard_1M_players", |b| {
        b.iter_batched(
            || {
                let mut events = Vec::with_capacity(EVENTS_PER_ITERATION);
                generator.fill(&mut clock, EVENTS_PER_ITERATION, &mut events);
                events
            },
            |events| {
                for batch in events.chunks(BATCH_EVENTS) {
                    state.apply(batch, &mut out);
                    out.clear();
                }
            },
            BatchSize::PerIteration,
        )
    });
    group.finish();
}

criterion_group!(benches, apply_standard);
criterion_main!(benches);
