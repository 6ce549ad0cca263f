//! The pacer thread: it wakes every tick, takes in each connection's
//! arrivals of the schedule and hands them to the SDK, never waiting; and
//! what it tells of a step when the step is done.

use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use super::Clock;
use super::arrivals::Arrivals;
use super::conn::Conn;
use super::fanout::SendLog;

/// A step as the connections are told it.
#[derive(Clone, Copy, Debug)]
pub(super) struct StepPlan {
    pub(super) index: u32,
    /// This connection's share.
    pub(super) rate: f64,
    pub(super) start_ns: u64,
    pub(super) end_ns: u64,
}

/// A connection's account of a step.
#[derive(Debug, Default)]
pub(super) struct StepDone {
    pub(super) offered: u64,
    pub(super) sent_in_window: u64,
    /// The backlog and every acknowledgement cleared within the drain timeout.
    pub(super) drained: bool,
    pub(super) error: Option<String>,
    /// The pacer's latest wake past a tick, and how many times it woke
    /// `STALL_NS` or more late (see `StepReport::pacer_stall_max_us`).
    pub(super) stall_max_ns: u64,
    pub(super) stalls: u64,
}

/// A pacer this late for a tick counts as stalled: beyond the run-queue
/// waits of a busy 2-core machine (at most 2.7 ms for any thread of client
/// or server over 2 s at 5.6 M/s, by `perf sched`; 35-70 us on average; docs/decisions/0033).
pub(super) const STALL_NS: u64 = 5_000_000;

/// The pacer: one thread that wakes every `tick`, takes in each
/// connection's arrivals and hands them to the SDK (`send`, `try_flush`:
/// no await, no lock but the SDK's per batch). The SDK's tasks on the
/// client runtime do the I/O. A thread with `sleep` keeps a tick of a
/// few hundred microseconds; tokio's timer has a resolution of 1 ms (docs/decisions/0033).
pub(super) struct Pacer {
    pub(super) conns: Vec<Conn>,
    pub(super) log: Arc<SendLog>,
    pub(super) clock: Clock,
    pub(super) arrivals: Arrivals,
    pub(super) tick: Duration,
    pub(super) linger: Duration,
    pub(super) drain_timeout: Duration,
    pub(super) plans: mpsc::Receiver<StepPlan>,
    pub(super) replies: mpsc::Sender<StepDone>,
}

pub(super) fn pacer(p: Pacer) -> Vec<Conn> {
    let Pacer { mut conns, log, clock, arrivals, tick, linger, drain_timeout, plans, replies } = p;
    'plans: while let Ok(plan) = plans.recv() {
        for c in &mut conns {
            c.begin(&plan, arrivals);
        }
        let deadline = plan.end_ns + drain_timeout.as_nanos() as u64;
        // Woken late: the thread was due to run and did not. Whatever
        // stops it stops the events' sending too.
        let (mut stall_max_ns, mut stalls) = (0u64, 0u64);
        let mut woke_late = |late: Duration| {
            let late = late.as_nanos() as u64;
            stall_max_ns = stall_max_ns.max(late);
            stalls += u64::from(late >= STALL_NS);
        };
        woke_late(sleep_until(clock.at(plan.start_ns)));
        let mut next_tick = Instant::now();
        loop {
            let now = clock.now_ns();
            let mut all = true;
            for c in conns.iter_mut().filter(|c| !c.finished) {
                if let Err(e) = c.pace(now, &plan, &log, linger.as_nanos() as u64) {
                    c.done.error = Some(e);
                    c.finished = true;
                } else if now >= plan.end_ns && c.drained() {
                    c.done.drained = true;
                    c.finished = true;
                } else if now >= deadline {
                    c.abandon(now, plan.index);
                    c.finished = true;
                }
                all &= c.finished;
            }
            if all {
                break;
            }
            next_tick += tick;
            let now = Instant::now();
            if next_tick < now {
                next_tick = now;
            }
            woke_late(sleep_until(next_tick));
        }
        let mut done = StepDone { drained: true, sent_in_window: 0, stall_max_ns, stalls, ..StepDone::default() };
        for c in &mut conns {
            let d = std::mem::take(&mut c.done);
            done.offered += d.offered;
            done.sent_in_window += if d.sent_in_window == u64::MAX { c.sent } else { d.sent_in_window };
            done.drained &= d.drained;
            done.error = done.error.take().or(d.error);
        }
        let stop = !done.drained || done.error.is_some();
        if replies.send(done).is_err() || stop {
            break 'plans;
        }
    }
    conns
}

/// Sleeps until `t`; returns how late it woke, past `t` (or past the
/// call, if `t` had gone by).
pub(super) fn sleep_until(t: Instant) -> Duration {
    let slept_at = Instant::now();
    if t > slept_at {
        std::thread::sleep(t - slept_at);
    }
    Instant::now().saturating_duration_since(t.max(slept_at))
}
