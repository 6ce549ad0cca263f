//! What one run does, all drawn from its seed.

use std::time::Duration;

use trove_core::SplitMix64;
use trove_core::rng::mix64;
use trove_journal::{FsyncPolicy, SimFaults, WriteIo};
use trove_workload::WorkloadSpec;

/// Sub-seeds: one stream per concern, so that a change in how one is
/// drawn does not move the others.
pub(crate) const STREAM_CONFIG: u64 = 0xC0F1_6000;
pub(crate) const STREAM_DISK: u64 = 0xD15C_0000;
pub(crate) const STREAM_RUN: u64 = 0x5100_0000;
pub(crate) const STREAM_SUBSCRIBERS: u64 = 0x5B5C_0000;
pub(crate) const STREAM_OPERATOR: u64 = 0x0BE4_0000;
pub(crate) const STREAM_DELETES: u64 = 0xDE1E_7E00;

/// Bounds of a run: small enough that a few hundred seeds run in seconds
/// in a debug build, large enough for several segments, snapshots and
/// crashes per run.
pub const STEPS_MAX: u32 = 160;
pub const PRODUCERS_MAX: u32 = 4;
pub const BATCH_EVENTS_MAX: u32 = 24;
pub const BOOTS_MAX: u32 = 8;
pub const SHARDS_MAX: u32 = 3;
/// Subscribers per boot, at most.
pub const SUBSCRIBERS_MAX: usize = 3;

/// One run's settings.
#[derive(Clone, Debug)]
pub struct SimConfig {
    pub seed: u64,
    /// `Never` is left out: it acknowledges at the write, and a power cut
    /// losing those acknowledgements is its documented contract.
    pub fsync: FsyncPolicy,
    pub io: WriteIo,
    pub segment_bytes_max: u64,
    pub faults: SimFaults,
    pub spec: WorkloadSpec,
    pub producers: u32,
    /// Shards: the worlds split among them by trove-shard's `shard_of`.
    pub shards: u32,
    /// Simulated time between steps, µs.
    pub step_us: u64,
    pub steps: u32,
    /// Events a producer sends per step, at most.
    pub send_max: u32,
    /// Events the shard drains per batch, at most.
    pub batch_events_max: u32,
    /// Chance per step of a snapshot, and per boot of a crash planned
    /// within it, in parts per million.
    pub snapshot_ppm: u32,
    pub crash_ppm: u32,
    /// Outcomes the shard core keeps per producer to answer retries with
    /// (0: every retry is answered `duplicate`).
    pub dedup_window_events: usize,
    /// The shard's queue, in batch parts: a producer batch arriving at a
    /// full queue is refused (BUSY) and sent again.
    pub queue_parts_max: usize,
    /// Chance per step and producer that its connection drops (it resends
    /// every unanswered batch), and that it sends a batch reusing an
    /// applied sequence with another event, in parts per million.
    pub drop_ppm: u32,
    pub reuse_ppm: u32,
    /// Chance per step of a new subscriber (to a hunt the seed picks), in
    /// parts per million, and the updates its mailbox holds: a subscriber
    /// that falls behind gets a gap notice.
    pub subscribe_ppm: u32,
    pub mailbox_updates_max: usize,
    /// Chance per boot that the operator first starts with another shard
    /// count (which the meta check must refuse), in parts per million.
    pub reshard_ppm: u32,
    /// Chance per generated event that its hunt is deleted instead (then
    /// created again and its players joined again), in parts per million.
    pub delete_ppm: u32,
}

fn pick<T: Copy>(rng: &mut SplitMix64, items: &[T]) -> T {
    items[rng.below(items.len() as u32) as usize]
}

/// `ppm` with probability `share` in 1000, else 0.
fn sometimes(rng: &mut SplitMix64, share: u32, ppm_max: u32) -> u32 {
    if rng.below(1000) < share { 1 + rng.below(ppm_max) } else { 0 }
}

impl SimConfig {
    pub fn from_seed(seed: u64) -> Self {
        let mut rng = SplitMix64::new(mix64(seed ^ STREAM_CONFIG));
        let fsync = match rng.below(4) {
            0 => FsyncPolicy::Always,
            1 => FsyncPolicy::Interval(Duration::from_millis(u64::from(1 + rng.below(20)))),
            _ => FsyncPolicy::Group,
        };
        let io = if rng.below(2) == 0 { WriteIo::Direct } else { WriteIo::Buffered };
        let segment_bytes_max = pick(&mut rng, &[2048, 4096, 8192, 1 << 16]);
        let faults = SimFaults {
            crash_lose_ppm: sometimes(&mut rng, 800, 600_000),
            crash_torn_ppm: sometimes(&mut rng, 600, 400_000),
            misdirect_ppm: sometimes(&mut rng, 100, 30_000),
            sync_error_ppm: sometimes(&mut rng, 250, 40_000),
            bit_rot_ppm: sometimes(&mut rng, 150, 1_000_000),
            latency_us_max: if rng.below(2) == 0 { 0 } else { u64::from(rng.below(5000)) },
            direct_refused_ppm: 0,
        };
        let mut spec = WorkloadSpec::standard();
        spec.name = "sim".into();
        spec.seed = mix64(seed);
        spec.hunts = 1 + rng.below(4);
        spec.players_per_hunt = 2 + rng.below(10);
        spec.map_width = 16;
        spec.map_height = 16;
        spec.treasures_per_round = 4;
        spec.dig_cooldown_ms = 1;
        spec.mix.join_leave = 5;
        debug_assert!(spec.validate().is_ok());
        let mut config = Self {
            seed,
            fsync,
            io,
            segment_bytes_max,
            faults,
            spec,
            producers: 1 + rng.below(PRODUCERS_MAX),
            step_us: u64::from(100 + rng.below(5000)),
            steps: 20 + rng.below(STEPS_MAX - 20),
            send_max: 1 + rng.below(6),
            batch_events_max: 1 + rng.below(BATCH_EVENTS_MAX),
            snapshot_ppm: pick(&mut rng, &[0, 20_000, 80_000, 250_000]),
            crash_ppm: pick(&mut rng, &[300_000, 700_000, 1_000_000]),
            dedup_window_events: 0,
            queue_parts_max: 0,
            drop_ppm: 0,
            reuse_ppm: 0,
            shards: 1,
            subscribe_ppm: 0,
            mailbox_updates_max: 0,
            reshard_ppm: 0,
            delete_ppm: 0,
        };
        // Drawn last, so that adding it moved no other setting of a seed.
        config.faults.direct_refused_ppm = sometimes(&mut rng, 150, 200_000);
        config.dedup_window_events = pick(&mut rng, &[0, 4, 64, 1024]);
        config.queue_parts_max = pick(&mut rng, &[1, 2, 4, 64]);
        config.drop_ppm = sometimes(&mut rng, 500, 100_000);
        config.reuse_ppm = sometimes(&mut rng, 300, 50_000);
        config.shards = 1 + rng.below(SHARDS_MAX);
        config.subscribe_ppm = sometimes(&mut rng, 700, 200_000);
        config.mailbox_updates_max = pick(&mut rng, &[1, 4, 16, 1024]);
        config.reshard_ppm = sometimes(&mut rng, 300, 500_000);
        config.delete_ppm = sometimes(&mut rng, 400, 20_000);
        config
    }

    /// One line for the report.
    pub fn summary(&self) -> String {
        let f = &self.faults;
        format!(
            "fsync {}, io {:?}, segments of {} B, {} shards, {} producers, {} steps, {} hunts x {} players, snapshots {} ppm, \
             crashes {} ppm, dedup window {}, queue {} parts, drops {} ppm, reuses {} ppm, deletes {} ppm; faults ppm: lose {} torn {} misdirect {} sync-error {} bit-rot {} direct-refused {}, \
             latency up to {} us",
            self.fsync,
            self.io,
            self.segment_bytes_max,
            self.shards,
            self.producers,
            self.steps,
            self.spec.hunts,
            self.spec.players_per_hunt,
            self.snapshot_ppm,
            self.crash_ppm,
            self.dedup_window_events,
            self.queue_parts_max,
            self.drop_ppm,
            self.reuse_ppm,
            self.delete_ppm,
            f.crash_lose_ppm,
            f.crash_torn_ppm,
            f.misdirect_ppm,
            f.sync_error_ppm,
            f.bit_rot_ppm,
            f.direct_refused_ppm,
            f.latency_us_max
        )
    }
}
