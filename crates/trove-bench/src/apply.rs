//! `trove bench apply`: the rules' speed on one thread, no queues, no I/O.

use std::collections::BTreeMap;
use std::time::Instant;

use serde::Serialize;
use trove_core::Outcomes;
use trove_hunt::{HuntOutcome, HuntState, Reject};
use trove_workload::{Clock, Generator, WorkloadSpec};

/// Events generated ahead of each timed stretch. Bigger than the caches, so
/// applying reads events from memory as it would from a queue, and small
/// enough that memory stays bounded for any `--events`.
const GENERATE_CHUNK_EVENTS: usize = 1 << 20;

#[derive(Debug, Serialize)]
pub struct ApplyReport {
    pub workload: String,
    pub events: u64,
    pub batch_events: u32,
    /// Seconds spent applying the measured events (generation excluded).
    pub seconds: f64,
    pub events_per_s: f64,
    pub setup_events: u64,
    pub setup_seconds: f64,
    pub rejected: BTreeMap<&'static str, u64>,
    pub treasures_found: u64,
    pub rounds_finished: u64,
    /// Total state hash, hex: equal seeds and event counts give equal hashes.
    pub state_hash: String,
}

pub fn run(spec: &WorkloadSpec, events: u64, batch_events: u32) -> ApplyReport {
    let mut generator = Generator::new(spec);
    let mut clock = Clock::new(spec.virtual_events_per_s);
    let mut state = HuntState::new(spec.hunts as usize);
    let mut out = Outcomes::with_capacity(batch_events as usize);
    let batch = batch_events as usize;

    let setup = clock.stamp(generator.setup());
    let started = Instant::now();
    for b in setup.chunks(batch) {
        state.apply(b, &mut out);
        out.clear();
    }
    let setup_seconds = started.elapsed().as_secs_f64();
    let setup_events = setup.len() as u64;
    drop(setup);

    let mut rejected = [0u64; 256];
    let mut found = 0u64;
    let mut rounds_finished = 0u64;
    let mut chunk = Vec::with_capacity(GENERATE_CHUNK_EVENTS);
    let mut seconds = 0.0;
    let mut left = events;
    while left > 0 {
        let n = left.min(GENERATE_CHUNK_EVENTS as u64) as usize;
        chunk.clear();
        generator.fill(&mut clock, n, &mut chunk);
        let started = Instant::now();
        for b in chunk.chunks(batch) {
            state.apply(b, &mut out);
            for o in &out.direct {
                match *o {
                    HuntOutcome::Rejected { reason } => rejected[reason as usize] += 1,
                    HuntOutcome::DigFound { .. } => found += 1,
                    _ => {}
                }
            }
            rounds_finished += out
                .broadcasts
                .iter()
                .filter(|b| matches!(b.body, trove_hunt::HuntBroadcast::RoundFinished { .. }))
                .count() as u64;
            out.clear();
        }
        seconds += started.elapsed().as_secs_f64();
        left -= n as u64;
    }

    ApplyReport {
        workload: spec.name.clone(),
        events,
        batch_events,
        seconds,
        events_per_s: events as f64 / seconds,
        setup_events,
        setup_seconds,
        rejected: Reject::ALL
            .iter()
            .filter(|r| rejected[**r as usize] > 0)
            .map(|r| (r.name(), rejected[*r as usize]))
            .collect(),
        treasures_found: found,
        rounds_finished,
        state_hash: format!("{:016x}", state.state_hash()),
    }
}

impl std::fmt::Display for ApplyReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "workload {}: setup {} events in {:.2} s", self.workload, self.setup_events, self.setup_seconds)?;
        writeln!(
            f,
            "applied {} events in batches of {} in {:.3} s: {:.2} M events/s on one thread",
            self.events,
            self.batch_events,
            self.seconds,
            self.events_per_s / 1e6
        )?;
        writeln!(f, "treasures found {}, rounds finished {}", self.treasures_found, self.rounds_finished)?;
        let rejected: Vec<String> = self.rejected.iter().map(|(k, v)| format!("{k} {v}")).collect();
        writeln!(f, "rejected: {}", if rejected.is_empty() { "none".into() } else { rejected.join(", ") })?;
        write!(f, "state hash {}", self.state_hash)
    }
}
