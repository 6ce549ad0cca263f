//! The stall probes: threads that sleep `PROBE_INTERVAL` in a loop and
//! record how late each wake-up is, like `scripts/pause-probe.py` but
//! without spinning a core. A wake-up `STALL_MIN_NS` or more late is a
//! stall: the thread was due to run and nothing ran it. One probe runs at
//! normal priority: it waits when the VM is paused and when runnable
//! threads outnumber the cores. The other runs at real-time priority
//! (`SCHED_FIFO`), which the guest's scheduler puts ahead of every normal
//! thread, so it waits only when the guest itself is not running; it also
//! samples the CPU time the hypervisor reports stolen. The two apart tell
//! the machine's stalls from CPU contention inside it (decision 0051).
//! They run through a mode's whole run; each trial asks for the stalls
//! that overlapped it (`Probe::within`), and `tail_cause` weighs them
//! against the trial's tail.

use std::collections::VecDeque;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::model::{HostStalls, MachineStalls};

/// How long a probe sleeps between wake-ups.
pub const PROBE_INTERVAL: Duration = Duration::from_millis(1);

/// A wake-up this late counts as a stall.
pub const STALL_MIN_NS: u64 = 1_000_000;

/// Stalls kept per probe; past it the oldest go (a mode's run asks only
/// about its latest trial).
pub const STALLS_MAX: usize = 65_536;

/// The real-time probe reads the stolen time every this many wake-ups
/// (about every 100 ms).
const STEAL_SAMPLE_EVERY: u32 = 100;

/// Steal samples kept (about 27 minutes at one per 100 ms).
const STEAL_SAMPLES_MAX: usize = 16_384;

/// The real-time probe's `SCHED_FIFO` priority: the lowest, enough to run
/// ahead of every normal thread.
const HOST_PROBE_PRIORITY: libc::c_int = 1;

/// A stretch of time in which a probe was due to run and did not.
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
    /// the time lost within the window only. Returns (max, count, lost),
    /// microseconds.
    pub fn within(&self, from_ns: u64, to_ns: u64) -> (u64, u64, u64) {
        let (mut max_us, mut count, mut lost_us) = (0, 0, 0);
        for s in self.stalls.iter().filter(|s| s.to_ns > from_ns && s.from_ns < to_ns) {
            count += 1;
            max_us = max_us.max((s.to_ns - s.from_ns) / 1000);
            lost_us += (s.to_ns.min(to_ns) - s.from_ns.max(from_ns)) / 1000;
        }
        (max_us, count, lost_us)
    }
}

/// The real-time probe's log: its stalls, and samples of the stolen time
/// (nanoseconds since the epoch, cumulative steal in microseconds).
#[derive(Debug, Default)]
pub struct HostLog {
    pub stalls: StallLog,
    steal: VecDeque<(u64, u64)>,
}

impl HostLog {
    pub fn steal_sample(&mut self, at_ns: u64, steal_us: u64) {
        if self.steal.len() >= STEAL_SAMPLES_MAX {
            self.steal.pop_front();
        }
        self.steal.push_back((at_ns, steal_us));
    }

    /// Stolen time between the last sample at or before `from_ns` (or the
    /// first after it) and the first at or after `to_ns` (or the last):
    /// the window widened to the samples around it.
    pub fn stolen_within(&self, from_ns: u64, to_ns: u64) -> u64 {
        let before = self.steal.iter().rev().find(|(t, _)| *t <= from_ns).or(self.steal.front());
        let after = self.steal.iter().find(|(t, _)| *t >= to_ns).or(self.steal.back());
        match (before, after) {
            (Some((_, a)), Some((_, b))) => b.saturating_sub(*a),
            _ => 0,
        }
    }
}

/// The stolen CPU time of every CPU so far, microseconds: `/proc/stat`'s
/// `cpu` line, eighth value, in clock ticks. None where there is no such
/// file or it does not parse.
#[allow(unsafe_code)]
fn stolen_us() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next().filter(|l| l.starts_with("cpu "))?;
    let ticks: u64 = line.split_ascii_whitespace().nth(8)?.parse().ok()?;
    // SAFETY: sysconf reads a constant of the system.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (hz > 0).then(|| ticks.saturating_mul(1_000_000) / hz as u64)
}

/// Puts the calling thread in `SCHED_FIFO` at `HOST_PROBE_PRIORITY`.
#[allow(unsafe_code)]
fn real_time() -> bool {
    let param = libc::sched_param { sched_priority: HOST_PROBE_PRIORITY };
    // SAFETY: pid 0 is the calling thread; `param` outlives the call.
    unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) == 0 }
}

/// The probe threads; they stop when dropped.
#[derive(Debug)]
pub struct Probe {
    pub log: Arc<Mutex<StallLog>>,
    /// None until the real-time thread knows whether it may run so, and
    /// after, if it may not.
    pub host: Arc<Mutex<Option<HostLog>>>,
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Probe {
    /// Starts the threads; times are nanoseconds since `epoch`.
    pub fn start(epoch: Instant) -> Result<Self, String> {
        let log = Arc::new(Mutex::new(StallLog::default()));
        let host = Arc::new(Mutex::new(None));
        let stop = Arc::new(AtomicBool::new(false));
        let normal = std::thread::Builder::new()
            .name("bench-stall-probe".into())
            .spawn({
                let (log, stop) = (log.clone(), stop.clone());
                move || {
                    sleep_loop(epoch, &stop, |_, due_ns, woke_ns| super::lock(&log).woke(due_ns, woke_ns));
                }
            })
            .map_err(|e| format!("stall probe thread: {e}"))?;
        let real = std::thread::Builder::new()
            .name("bench-host-probe".into())
            .spawn({
                let (host, stop) = (host.clone(), stop.clone());
                move || {
                    if !real_time() {
                        return;
                    }
                    *super::lock(&host) = Some(HostLog::default());
                    sleep_loop(epoch, &stop, |wakes, due_ns, woke_ns| {
                        let mut host = super::lock(&host);
                        let Some(h) = host.as_mut() else { return };
                        h.stalls.woke(due_ns, woke_ns);
                        if wakes % STEAL_SAMPLE_EVERY == 0
                            && let Some(us) = stolen_us()
                        {
                            h.steal_sample(woke_ns, us);
                        }
                    });
                }
            })
            .map_err(|e| format!("host probe thread: {e}"))?;
        Ok(Self { log, host, stop, threads: vec![normal, real] })
    }

    pub fn within(&self, from_ns: u64, to_ns: u64) -> MachineStalls {
        let (max_us, count, lost_us) = super::lock(&self.log).within(from_ns, to_ns);
        let host = super::lock(&self.host).as_ref().map(|h| {
            let (max_us, count, lost_us) = h.stalls.within(from_ns, to_ns);
            HostStalls { max_us, count, lost_us, steal_us: h.stolen_within(from_ns, to_ns) }
        });
        MachineStalls { max_us, count, lost_us, host }
    }
}

/// Sleeps `PROBE_INTERVAL` until `stop`, telling `late` (the wake-up's
/// number, when it was due and when it woke) after each wake-up; only the
/// sleep is timed.
fn sleep_loop(epoch: Instant, stop: &AtomicBool, mut late: impl FnMut(u32, u64, u64)) {
    let now_ns = || epoch.elapsed().as_nanos() as u64;
    let interval_ns = PROBE_INTERVAL.as_nanos() as u64;
    let mut wakes = 0u32;
    while !stop.load(Relaxed) {
        let due_ns = now_ns() + interval_ns;
        std::thread::sleep(PROBE_INTERVAL);
        let woke_ns = now_ns();
        wakes = wakes.wrapping_add(1);
        if woke_ns.saturating_sub(due_ns) >= STALL_MIN_NS || wakes.is_multiple_of(STEAL_SAMPLE_EVERY) {
            late(wakes, due_ns, woke_ns);
        }
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        self.stop.store(true, Relaxed);
        for t in self.threads.drain(..) {
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
/// left): where the real-time probe runs, only the guest's own stops
/// count as the machine's, and a normal thread's wait of that length
/// while the guest ran is the CPUs' (runnable threads outnumbered the
/// cores); else the generator's pacer when its send lag or its own late
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
    let guest = m.host.map_or(String::new(), |h| {
        format!(", the guest itself {:.1} ms ({} stops, {:.0} ms stolen)", ms(h.max_us), h.count, ms(h.steal_us))
    });
    let machine = format!(
        "a normal thread's longest wait {:.1} ms ({} of 1 ms or more, {:.1} ms lost){guest}",
        ms(m.max_us),
        m.count,
        ms(m.lost_us)
    );
    let long = |max_us: u64| max_us >= STALL_MIN_NS / 1000 && max_us * 2 >= f.p99_us;
    match m.host {
        Some(h) if long(h.max_us) => {
            return format!(
                "the machine: p99 {p99:.1} ms; the guest stopped for {:.1} ms during this trial ({} stops of 1 ms or more, {:.1} ms lost, {:.0} ms stolen)",
                ms(h.max_us),
                h.count,
                ms(h.lost_us),
                ms(h.steal_us)
            );
        }
        Some(_) if long(m.max_us) => {
            let busy = f.cpu_cores_busy.map_or(String::new(), |b| format!(", {b:.2} of {} cores busy", f.cores));
            return format!("the CPUs: p99 {p99:.1} ms; runnable threads outnumbered the cores: {machine}{busy}");
        }
        Some(_) => {}
        None if long(m.max_us) => {
            return format!(
                "the machine: p99 {p99:.1} ms; the machine stopped for {:.1} ms during this trial ({} stalls of 1 ms or more, {:.1} ms lost)",
                ms(m.max_us),
                m.count,
                ms(m.lost_us)
            );
        }
        None => {}
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
        assert_eq!(log.within(0, u64::MAX), (0, 0, 0));
        // Three stalls: 2 ms, 13.3 ms, 1 ms.
        log.woke(20 * MS, 22 * MS);
        log.woke(100 * MS, 113 * MS + 300_000);
        log.woke(500 * MS, 501 * MS);
        assert_eq!(log.within(0, u64::MAX), (13_300, 3, 16_300));
        // A window that cuts the long stall: its whole length for the
        // max, only the part inside for the time lost.
        assert_eq!(log.within(105 * MS, 200 * MS), (13_300, 1, 8_300));
        // A window between stalls sees none.
        assert_eq!(log.within(200 * MS, 500 * MS), (0, 0, 0));
        assert_eq!(log.within(200 * MS, 500 * MS + 1), (1000, 1, 0));
    }

    #[test]
    fn the_log_is_bounded() {
        let mut log = StallLog::default();
        for i in 0..STALLS_MAX as u64 + 10 {
            log.woke(i * 10 * MS, i * 10 * MS + 2 * MS);
        }
        assert_eq!(log.dropped, 10);
        assert_eq!(log.within(0, u64::MAX).1, STALLS_MAX as u64);
        // The oldest went.
        assert_eq!(log.within(0, 100 * MS).1, 0);
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
            machine: MachineStalls { max_us: 1_200, count: 2, lost_us: 2_300, host: None },
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
        f.machine = MachineStalls { max_us: 13_300, count: 1, lost_us: 13_300, host: None };
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
        assert!(why.contains("longest wait 1.2 ms (2 of 1 ms or more, 2.3 ms lost)"), "{why}");
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

    #[test]
    fn with_the_real_time_probe_only_the_guests_own_stops_are_the_machines() {
        let host =
            |max_us: u64| Some(HostStalls { max_us, count: u64::from(max_us > 0), lost_us: max_us, steal_us: 20_000 });
        // A normal thread waited 13.3 ms, and the guest itself stopped as long: the machine.
        let mut f = figures(20);
        f.machine = MachineStalls { max_us: 13_300, count: 1, lost_us: 13_300, host: host(12_000) };
        let why = tail_cause(&f);
        assert!(why.starts_with("the machine: p99 20.0 ms; the guest stopped for 12.0 ms during this trial (1 stops of 1 ms or more, 12.0 ms lost, 20 ms stolen)"), "{why}");
        // The same wait while the guest ran: the CPUs, not the machine.
        f.machine.host = host(0);
        let why = tail_cause(&f);
        assert!(
            why.starts_with(
                "the CPUs: p99 20.0 ms; runnable threads outnumbered the cores: a normal thread's longest wait 13.3 ms"
            ),
            "{why}"
        );
        assert!(why.contains("the guest itself 0.0 ms (0 stops, 20 ms stolen), 1.00 of 2 cores busy"), "{why}");
        // Short waits explain nothing: the rules after them decide.
        f.machine.max_us = 1_200;
        assert!(tail_cause(&f).starts_with("the pipeline"), "{}", tail_cause(&f));
    }

    #[test]
    fn trials_merge_and_steal_is_read_between_the_samples_around_a_window() {
        let host = |max_us, steal_us| Some(HostStalls { max_us, count: 1, lost_us: max_us, steal_us });
        let a = MachineStalls { max_us: 2_000, count: 2, lost_us: 3_000, host: host(1_500, 10_000) };
        let b = MachineStalls { max_us: 5_000, count: 1, lost_us: 5_000, host: None };
        let c = MachineStalls { max_us: 1_000, count: 1, lost_us: 1_000, host: host(4_000, 0) };
        let m = MachineStalls::merged([a, b, c]);
        assert_eq!((m.max_us, m.count, m.lost_us), (5_000, 4, 9_000));
        assert_eq!(m.host, Some(HostStalls { max_us: 4_000, count: 2, lost_us: 5_500, steal_us: 10_000 }));

        let mut h = HostLog::default();
        assert_eq!(h.stolen_within(0, u64::MAX), 0);
        for (t, us) in [(100, 1_000), (200, 1_000), (300, 31_000), (400, 41_000)] {
            h.steal_sample(t * MS, us);
        }
        assert_eq!(h.stolen_within(250 * MS, 300 * MS), 30_000);
        assert_eq!(h.stolen_within(200 * MS, 400 * MS), 40_000);
        assert_eq!(h.stolen_within(0, 150 * MS), 0);
        assert_eq!(h.stolen_within(0, u64::MAX), 40_000);
    }

    #[test]
    fn the_stolen_time_parses_where_proc_stat_exists() {
        if std::path::Path::new("/proc/stat").exists() {
            assert!(stolen_us().is_some());
        }
    }
}
