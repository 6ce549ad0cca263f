//! The machine-stall probe: a thread that sleeps `PROBE_INTERVAL` in a
//! loop and records how late each wake-up is, like
//! `scripts/pause-probe.py` but without spinning a core. A wake-up
//! `STALL_MIN_NS` or more late is a stall: the thread was due to run and
//! nothing ran it (a paused VM, or every CPU busy). It runs through a
//! mode's whole run; each trial asks for the stalls that overlapped it
//! (`StallLog::within`), and `tail_cause` weighs them against the trial's
//! tail.

use std::collections::VecDeque;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::model::MachineStalls;

/// How long the probe sleeps between wake-ups.
pub const PROBE_INTERVAL: Duration = Duration::from_millis(1);

/// A wake-up this late counts as a stall.
pub const STALL_MIN_NS: u64 = 1_000_000;

/// Stalls kept; past it the oldest go (a mode's run asks only about its
/// latest trial).
pub const STALLS_MAX: usize = 65_536;

/// A stretch of time in which the probe was due to run and did not.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stall {
    pub from_ns: u64,
    pub to_ns: u64,
}

/// The stalls seen, oldest first.
#[derive(Debug, Default)]
pub struct StallLog {
    stalls: VecDeque<Stall>,
    /// Stalls forgotten to keep within `STALLS_MAX`.
    pub dropped: u64,
}

impl StallLog {
    /// The probe was due at `due_ns` and woke at `woke_ns` (nanoseconds
    /// since the run's epoch, in order).
    pub fn woke(&mut self, due_ns: u64, woke_ns: u64) {
        if woke_ns.saturating_sub(due_ns) < STALL_MIN_NS {
            return;
        }
        debug_assert!(self.stalls.back().is_none_or(|s| s.to_ns <= woke_ns), "wake-ups come in order");
        if self.stalls.len() >= STALLS_MAX {
            self.stalls.pop_front();
            self.dropped += 1;
        }
        self.stalls.push_back(Stall { from_ns: due_ns, to_ns: woke_ns });
        assert!(self.stalls.len() <= STALLS_MAX);
    }

    /// The stalls overlapping `[from_ns, to_ns)`: the longest at its whole
    /// length (it held up events of the window even if it began before),
    /// the time lost within the window only.
    pub fn within(&self, from_ns: u64, to_ns: u64) -> MachineStalls {
        let mut m = MachineStalls::default();
        for s in self.stalls.iter().filter(|s| s.to_ns > from_ns && s.from_ns < to_ns) {
            m.count += 1;
            m.max_us = m.max_us.max((s.to_ns - s.from_ns) / 1000);
            m.lost_us += (s.to_ns.min(to_ns) - s.from_ns.max(from_ns)) / 1000;
        }
        m
    }
}

/// The probe thread; stops when dropped.
#[derive(Debug)]
pub struct Probe {
    pub log: Arc<Mutex<StallLog>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Probe {
    /// Starts the thread; times are nanoseconds since `epoch`.
    pub fn start(epoch: Instant) -> Result<Self, String> {
        let log = Arc::new(Mutex::new(StallLog::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = std::thread::Builder::new()
            .name("bench-stall-probe".into())
            .spawn({
                let (log, stop) = (log.clone(), stop.clone());
                move || {
                    let now_ns = || epoch.elapsed().as_nanos() as u64;
                    let interval_ns = PROBE_INTERVAL.as_nanos() as u64;
                    while !stop.load(Relaxed) {
                        let due_ns = now_ns() + interval_ns;
                        std::thread::sleep(PROBE_INTERVAL);
                        let woke_ns = now_ns();
                        if woke_ns.saturating_sub(due_ns) >= STALL_MIN_NS {
                            super::lock(&log).woke(due_ns, woke_ns);
                        }
                    }
                }
            })
            .map_err(|e| format!("stall probe thread: {e}"))?;
        Ok(Self { log, stop, thread: Some(thread) })
    }

    pub fn within(&self, from_ns: u64, to_ns: u64) -> MachineStalls {
        super::lock(&self.log).within(from_ns, to_ns)
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        self.stop.store(true, Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// What a trial's figures say its tail came from.
#[derive(Clone, Copy, Debug)]
pub struct TailFigures {
    pub p99_us: u64,
    /// The generator's delay before handing events to the SDK.
    pub send_lag_p99_us: u64,
    /// The pacer thread's latest wake-up.
    pub pacer_stall_max_us: u64,
    /// Handed to the SDK to acknowledged.
    pub admitted_p99_us: u64,
    pub machine: MachineStalls,
    /// Server plus client CPU, cores (absent without /metrics).
    pub cpu_cores_busy: Option<f64>,
    pub cores: f64,
    /// The journal's longest `fdatasync` (absent in memory or without
    /// /metrics).
    pub fsync_max_us: Option<u64>,
    /// The server's own p99, frame read to ACK written, and its largest
    /// stage share at p99 (`LatencyBreakdown`); absent without the
    /// server's stage metrics.
    pub server_p99_us: Option<u64>,
    pub stage_p99_max: Option<(&'static str, u64)>,
}

impl TailFigures {
    /// The server figures of a step's p99 breakdown.
    pub fn with_stages(self, breakdown: &[super::model::LatencyBreakdown]) -> Self {
        let Some(p99) = breakdown.iter().find(|b| b.percentile == "p99") else { return self };
        let largest = p99.stages.iter().max_by(|a, b| a.us.total_cmp(&b.us));
        let stage = largest.and_then(|s| {
            let name = super::scrape::STAGES.iter().find(|n| **n == s.stage)?;
            Some((*name, s.us as u64))
        });
        TailFigures { server_p99_us: Some(p99.server_us as u64), stage_p99_max: stage, ..self }
    }
}

/// Names what a failing trial's tail is put down to, with the figures:
/// the machine when it stopped for at least half the p99 (an event that
/// arrives as a stall begins waits it out, then behind the backlog it
/// left); else the generator's pacer when its send lag or its own late
/// wake-up is at least half the p99; else the journal's disk when one
/// `fdatasync` took at least half the p99 (every acknowledgement of the
/// group waits for it); else the CPUs when 3/4 of the machine's cores
/// were busy; else, when the server's own read-to-ACK p99 is under half
/// the client's, the client side (the SDK, the network, the kernels);
/// else the pipeline (admission to acknowledgement), with its largest
/// stage at p99 when the server reports stages. Never "none": a tail
/// nothing else explains is the pipeline's or the client side's.
pub fn tail_cause(f: &TailFigures) -> String {
    let ms = |us: u64| us as f64 / 1e3;
    let p99 = ms(f.p99_us);
    let m = f.machine;
    let machine = format!(
        "the machine's longest stall {:.1} ms ({} of 1 ms or more, {:.1} ms lost)",
        ms(m.max_us),
        m.count,
        ms(m.lost_us)
    );
    if m.max_us >= STALL_MIN_NS / 1000 && m.max_us * 2 >= f.p99_us {
        return format!(
            "the machine: p99 {p99:.1} ms; the machine stopped for {:.1} ms during this trial ({} stalls of 1 ms or more, {:.1} ms lost)",
            ms(m.max_us),
            m.count,
            ms(m.lost_us)
        );
    }
    let pacer = f.send_lag_p99_us.max(f.pacer_stall_max_us);
    if pacer * 2 >= f.p99_us {
        return format!(
            "the generator's pacer: p99 {p99:.1} ms; send lag p99 {:.1} ms, the pacer woke up to {:.1} ms late; {machine}",
            ms(f.send_lag_p99_us),
            ms(f.pacer_stall_max_us)
        );
    }
    if let Some(sync) = f.fsync_max_us.filter(|&s| s * 2 >= f.p99_us) {
        return format!(
            "the journal's disk: p99 {p99:.1} ms; an fdatasync took up to {:.1} ms during this trial; {machine}",
            ms(sync)
        );
    }
    if let Some(busy) = f.cpu_cores_busy.filter(|&b| b >= 0.75 * f.cores) {
        return format!("the CPUs: p99 {p99:.1} ms with {busy:.2} of {} cores busy; {machine}", f.cores);
    }
    if let Some(server) = f.server_p99_us.filter(|&s| s * 2 < f.p99_us) {
        return format!(
            "the client side: p99 {p99:.1} ms, of which the server held {:.1} ms (frame read to ACK written) and the \
             generator's send lag {:.1} ms; the rest is the SDK, the network and the kernels; {machine}",
            ms(server),
            ms(f.send_lag_p99_us)
        );
    }
    let stage = f.stage_p99_max.map_or(String::new(), |(name, us)| {
        format!(
            ", its largest stage at p99 `{name}` {:.2} ms of the server's {:.2} ms",
            ms(us),
            ms(f.server_p99_us.unwrap_or(0))
        )
    });
    format!(
        "the pipeline: p99 {p99:.1} ms, admitted to acknowledged p99 {:.1} ms{stage}; send lag p99 {:.1} ms; {machine}",
        ms(f.admitted_p99_us),
        ms(f.send_lag_p99_us)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    #[test]
    fn the_log_keeps_late_wake_ups_and_sums_them_per_window() {
        let mut log = StallLog::default();
        // On time, or late by less than 1 ms: not stalls.
        log.woke(10 * MS, 10 * MS);
        log.woke(11 * MS, 11 * MS + 999_999);
        assert_eq!(log.within(0, u64::MAX), MachineStalls::default());
        // Three stalls: 2 ms, 13.3 ms, 1 ms.
        log.woke(20 * MS, 22 * MS);
        log.woke(100 * MS, 113 * MS + 300_000);
        log.woke(500 * MS, 501 * MS);
        assert_eq!(log.within(0, u64::MAX), MachineStalls { max_us: 13_300, count: 3, lost_us: 16_300 });
        // A window that cuts the long stall: its whole length for the
        // max, only the part inside for the time lost.
        assert_eq!(log.within(105 * MS, 200 * MS), MachineStalls { max_us: 13_300, count: 1, lost_us: 8_300 });
        // A window between stalls sees none.
        assert_eq!(log.within(200 * MS, 500 * MS), MachineStalls::default());
        assert_eq!(log.within(200 * MS, 500 * MS + 1), MachineStalls { max_us: 1000, count: 1, lost_us: 0 });
    }

    #[test]
    fn the_log_is_bounded() {
        let mut log = StallLog::default();
        for i in 0..STALLS_MAX as u64 + 10 {
            log.woke(i * 10 * MS, i * 10 * MS + 2 * MS);
        }
        assert_eq!(log.dropped, 10);
        assert_eq!(log.within(0, u64::MAX).count, STALLS_MAX as u64);
        // The oldest went.
        assert_eq!(log.within(0, 100 * MS).count, 0);
    }

    #[test]
    fn the_probe_thread_runs_and_stops() {
        let probe = Probe::start(Instant::now()).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        // Whatever this machine did meanwhile, the figures are consistent.
        let m = probe.within(0, u64::MAX);
        assert_eq!(m.count == 0, m.max_us == 0, "{m:?}");
        assert!(m.max_us >= m.count.min(1) * STALL_MIN_NS / 1000, "{m:?}");
        drop(probe);
    }

    fn figures(p99_ms: u64) -> TailFigures {
        TailFigures {
            p99_us: p99_ms * 1000,
            send_lag_p99_us: 300,
            pacer_stall_max_us: 400,
            admitted_p99_us: p99_ms * 1000 - 500,
            machine: MachineStalls { max_us: 1_200, count: 2, lost_us: 2_300 },
            cpu_cores_busy: Some(1.0),
            cores: 2.0,
            fsync_max_us: None,
            server_p99_us: None,
            stage_p99_max: None,
        }
    }

    #[test]
    fn the_tail_is_put_down_to_the_machine_the_pacer_the_cpus_or_the_pipeline() {
        let mut f = figures(12);
        f.p99_us = 12_600;
        f.machine = MachineStalls { max_us: 13_300, count: 1, lost_us: 13_300 };
        let why = tail_cause(&f);
        assert!(
            why.starts_with("the machine: p99 12.6 ms; the machine stopped for 13.3 ms during this trial"),
            "{why}"
        );
        // A stall far shorter than the tail does not explain it.
        f.p99_us = 50_000;
        assert!(tail_cause(&f).starts_with("the pipeline: p99 50.0 ms"), "{}", tail_cause(&f));

        let mut f = figures(22);
        f.send_lag_p99_us = 15_000;
        let why = tail_cause(&f);
        assert!(why.starts_with("the generator's pacer: p99 22.0 ms; send lag p99 15.0 ms"), "{why}");
        f.send_lag_p99_us = 300;
        f.pacer_stall_max_us = 11_000;
        assert!(tail_cause(&f).starts_with("the generator's pacer"), "{}", tail_cause(&f));

        let mut f = figures(40);
        f.fsync_max_us = Some(33_554);
        f.cpu_cores_busy = Some(1.7);
        let why = tail_cause(&f);
        assert!(why.starts_with("the journal's disk: p99 40.0 ms; an fdatasync took up to 33.6 ms"), "{why}");
        f.fsync_max_us = Some(4_000);
        assert!(tail_cause(&f).starts_with("the CPUs"), "a short sync does not explain it");

        let mut f = figures(20);
        f.cpu_cores_busy = Some(1.7);
        assert!(tail_cause(&f).starts_with("the CPUs: p99 20.0 ms with 1.70 of 2 cores busy"), "{}", tail_cause(&f));

        let f = figures(20);
        let why = tail_cause(&f);
        assert!(why.starts_with("the pipeline: p99 20.0 ms, admitted to acknowledged p99 19.5 ms"), "{why}");
        assert!(why.contains("longest stall 1.2 ms (2 of 1 ms or more, 2.3 ms lost)"), "{why}");
        // Without /metrics, no CPU figure: still an answer.
        let f = TailFigures { cpu_cores_busy: None, ..figures(20) };
        assert!(tail_cause(&f).starts_with("the pipeline"));

        // With the server's stages: its largest stage at p99 is named...
        let shares = |server_us: f64| {
            let stage = |stage: &str, us: f64| super::super::model::StageShare { stage: stage.into(), us };
            vec![super::super::model::LatencyBreakdown {
                percentile: "p99".into(),
                client_us: 20_000,
                send_lag_us: 300,
                server_us,
                stages: vec![
                    stage("applied", 0.1 * server_us),
                    stage("synced", 0.8 * server_us),
                    stage("acknowledged", 0.1 * server_us),
                ],
                rest_us: 20_000.0 - 300.0 - server_us,
            }]
        };
        let why = tail_cause(&figures(20).with_stages(&shares(15_000.0)));
        assert!(why.starts_with("the pipeline: p99 20.0 ms, admitted to acknowledged p99 19.5 ms, its largest stage at p99 `synced` 12.00 ms of the server's 15.00 ms"), "{why}");
        // ... and a server that held under half the tail points at the client side.
        let why = tail_cause(&figures(20).with_stages(&shares(2_000.0)));
        assert!(why.starts_with("the client side: p99 20.0 ms, of which the server held 2.0 ms"), "{why}");
    }
}
