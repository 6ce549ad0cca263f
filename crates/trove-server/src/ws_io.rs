//! The WebSocket listener's own tokio runtime, at a lower CPU priority
//! (docs/decisions/0055-websocket-io-runtime.md).
//!
//! Watchers come over WebSocket, producers over TCP: with the WebSocket
//! accept loop, its handshakes (TLS too) and every WebSocket connection on
//! threads of their own (`trove-ws`, `ws_io_workers` of them), the
//! subscribers' writes no longer queue the producers' ACKs behind them on
//! the one `trove-io` thread. Each `trove-ws` thread raises its own
//! niceness by `ws_io_nice` when it starts (Linux keeps a niceness per
//! thread; raising it needs no privilege), so on a saturated machine the
//! kernel gives the cores to ingest (the TCP I/O threads, the shards, the
//! journal) first, and fan-out falls behind, shedding through its bounded
//! mailboxes (GAPs) as it does under any overload.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering::Relaxed;

use crate::StartError;

/// The threads' name (`/proc/<pid>/task/<tid>/comm`, `top -H`).
pub const WS_THREAD_NAME: &str = "trove-ws";
/// `ServerConfig::ws_io_nice` unless set.
pub const WS_IO_NICE_DEFAULT: i32 = 10;
/// The highest niceness Linux has: the lowest priority.
pub const NICE_MAX: i32 = 19;

/// Builds the WebSocket runtime: `workers` threads named
/// [`WS_THREAD_NAME`], each `nice` steps nicer than the thread that builds
/// it (at most [`NICE_MAX`]); 0 leaves them at its priority. A thread that
/// cannot lower its priority logs so (once per runtime) and serves anyway.
pub(crate) fn runtime(workers: usize, nice: i32) -> Result<tokio::runtime::Runtime, StartError> {
    assert!((0..=NICE_MAX).contains(&nice), "ServerConfig::validate keeps ws_io_nice in 0..=19");
    // The target is fixed here, from the building thread's niceness (the
    // ingest threads'), not from each new thread's: a thread tokio starts
    // later from a `trove-ws` thread inherits that one's niceness already.
    // `None`: nothing to set (0), or the base could not be read (said once
    // here).
    let target = match own_niceness() {
        _ if nice == 0 => None,
        Ok(base) => Some((base + nice).min(NICE_MAX)),
        Err(e) => {
            warn_unlowered(&e, nice);
            None
        }
    };
    let warned = Arc::new(AtomicBool::new(false));
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.worker_threads(workers).thread_name(WS_THREAD_NAME).enable_io().enable_time().on_thread_start(move || {
        if let Some(t) = target
            && let Err(e) = set_own_niceness(t)
            && !warned.swap(true, Relaxed)
        {
            warn_unlowered(&e, nice);
        }
    });
    #[cfg(tokio_unstable)]
    builder.enable_metrics_schedule_latency_histogram();
    builder.build().map_err(|source| StartError::Runtime { what: "WebSocket I/O", source })
}

fn warn_unlowered(e: &std::io::Error, nice: i32) {
    tracing::warn!(
        error = %e,
        ws_io_nice = nice,
        "the WebSocket I/O threads could not lower their CPU priority; they run at the ingest threads'"
    );
}

/// The calling thread's niceness (-20..=19).
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
pub fn own_niceness() -> std::io::Result<i32> {
    // The raw system call answers 20 - niceness (1..=40), so -1 is only
    // ever an error; the libc wrapper's -1 may be a niceness.
    // SAFETY: getpriority reads two integers and writes nothing of ours.
    let r = unsafe { libc::syscall(libc::SYS_getpriority, libc::PRIO_PROCESS, libc::gettid()) };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(20 - r as i32)
}

/// Sets the calling thread's niceness: on Linux `PRIO_PROCESS` with a
/// thread id names that thread alone.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
pub fn set_own_niceness(nice: i32) -> std::io::Result<()> {
    // SAFETY: setpriority takes plain integers and retains nothing.
    if unsafe { libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, nice) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Elsewhere `PRIO_PROCESS` would name the whole process: not done.
#[cfg(not(target_os = "linux"))]
pub fn own_niceness() -> std::io::Result<i32> {
    Err(std::io::Error::new(std::io::ErrorKind::Unsupported, "per-thread priority is Linux's"))
}

#[cfg(not(target_os = "linux"))]
pub fn set_own_niceness(_nice: i32) -> std::io::Result<()> {
    Err(std::io::Error::new(std::io::ErrorKind::Unsupported, "per-thread priority is Linux's"))
}
