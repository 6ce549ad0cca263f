//! What the planes log about connections, as `tracing` events with the
//! target `trove::connection`: one line when a connection opens, one when
//! it closes (its reason and what it carried), one when one is refused
//! (why), so that an operator can audit who connected and why anyone was
//! turned away. Nothing here is logged per event or per batch.
//!
//! Refusals are what a flood makes many of: each reason logs at most
//! [`REFUSAL_LINES_PER_SECOND_MAX`] lines a second, and the next line of
//! that reason (or a `connection refusals suppressed` line, once the
//! second has passed and anything else is logged) says how many were left
//! out. The metrics count every one. The library only emits events; the
//! binary installs the subscriber (docs/decisions/0043-connection-logs.md).

use std::net::SocketAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::Instant;

use trove_proto::ErrorCode;

/// The `tracing` target of every connection line: `TROVE_LOG` can raise
/// or lower it alone (`trove::connection=warn` keeps only refusals).
pub const TARGET: &str = "trove::connection";

/// At most this many `connection refused` lines a second per reason.
pub const REFUSAL_LINES_PER_SECOND_MAX: u32 = 10;

/// The listener a connection came in on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Listener {
    /// Protocol v1 over TCP.
    Tcp,
    /// JSON over WebSocket.
    Ws,
    /// The HTTP control plane.
    Control,
}

impl Listener {
    pub fn name(self) -> &'static str {
        match self {
            Listener::Tcp => "tcp",
            Listener::Ws => "ws",
            Listener::Control => "control",
        }
    }
}

/// Why a connection was turned away before it was served.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RefusedFor {
    /// `connections_max` (or the control plane's) was reached.
    ConnectionLimit,
    /// `connections_per_address_max` (or the control plane's) was reached
    /// for the peer's source address.
    AddressLimit,
    /// The handshake failed with this code: `handshake_timeout`,
    /// `bad_magic`, `unsupported_version`, `producer_in_use`, ...
    Handshake(ErrorCode),
    /// The peer closed (or its socket failed) before its handshake was
    /// complete.
    ClosedBeforeHandshake,
    /// WebSocket: the HTTP request was answered without an upgrade (not a
    /// WebSocket request, or no request within the handshake timeout).
    NotUpgraded,
}

/// Reasons that are not error codes, before the codes' slots.
const FIXED_REASONS: usize = 4;
const REASONS: usize = FIXED_REASONS + ErrorCode::ALL.len() + 1;

impl RefusedFor {
    pub fn name(self) -> &'static str {
        match self {
            RefusedFor::ConnectionLimit => "connection_limit",
            RefusedFor::AddressLimit => "address_limit",
            RefusedFor::Handshake(code) => code.name(),
            RefusedFor::ClosedBeforeHandshake => "closed_before_handshake",
            RefusedFor::NotUpgraded => "not_upgraded",
        }
    }

    fn index(self) -> usize {
        match self {
            RefusedFor::ConnectionLimit => 0,
            RefusedFor::AddressLimit => 1,
            RefusedFor::ClosedBeforeHandshake => 2,
            RefusedFor::NotUpgraded => 3,
            RefusedFor::Handshake(code) => FIXED_REASONS + code as usize,
        }
    }
}

/// Who a connection is: numbered per plane from its accept.
#[derive(Clone, Copy, Debug)]
pub struct ConnInfo {
    pub id: u64,
    pub listener: Listener,
    pub peer: SocketAddr,
    pub opened: Instant,
}

/// What a connection carried, for its close line: counted on its own task
/// where the shared metrics are, so nothing is shared per frame.
#[derive(Clone, Copy, Debug, Default)]
pub struct Counts {
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// Frames (TCP), messages (WebSocket) or requests (control plane).
    pub frames_in: u64,
    pub events_in: u64,
}

/// `connection opened`: the handshake is done (TCP: HELLO answered;
/// WebSocket: upgraded; control plane: accepted). `principal` is the
/// authenticated name, once tokens exist; `producer` the producer id.
pub fn opened(info: &ConnInfo, producer: Option<u64>, principal: Option<&str>) {
    tracing::info!(
        target: TARGET,
        conn = info.id,
        listener = %info.listener.name(),
        peer = %info.peer,
        producer,
        principal,
        "connection opened"
    );
}

/// `connection closed`: `reason` is `peer_closed`, `io_error`, or the
/// error code that closed it (`idle_timeout`, `shutting_down`, ...); on
/// the control plane `done`, `evicted`, `header_timeout` or
/// `shutting_down`, with the requests it made (`frames_in`).
pub fn closed(info: &ConnInfo, reason: &str, counts: &Counts, producer: Option<u64>, principal: Option<&str>) {
    if info.listener == Listener::Control {
        tracing::info!(
            target: TARGET,
            conn = info.id,
            listener = %info.listener.name(),
            peer = %info.peer,
            principal,
            reason = %reason,
            duration_ms = info.opened.elapsed().as_millis() as u64,
            requests = counts.frames_in,
            "connection closed"
        );
        return;
    }
    tracing::info!(
        target: TARGET,
        conn = info.id,
        listener = %info.listener.name(),
        peer = %info.peer,
        producer,
        principal,
        reason = %reason,
        duration_ms = info.opened.elapsed().as_millis() as u64,
        bytes_in = counts.bytes_in,
        bytes_out = counts.bytes_out,
        frames_in = counts.frames_in,
        events_in = counts.events_in,
        "connection closed"
    );
}

/// The refusal lines of one plane, rate-limited per reason.
pub(crate) struct RefusalLog {
    epoch: Instant,
    windows: Mutex<[Window; REASONS]>,
    /// Some reason has suppressed lines not yet reported.
    pending: AtomicBool,
}

#[derive(Clone, Copy, Default)]
struct Window {
    /// The second (since `epoch`) `logged` counts lines in.
    second: u64,
    logged: u32,
    /// Lines left out since the last one of this reason.
    suppressed: u64,
}

impl RefusalLog {
    pub fn new() -> Self {
        Self {
            epoch: Instant::now(),
            windows: Mutex::new([Window::default(); REASONS]),
            pending: AtomicBool::new(false),
        }
    }

    /// Logs a refusal, unless its reason has logged its lines this second.
    /// `conn` is the connection's number when it had one (refused at its
    /// handshake, not at the accept).
    pub fn refused(&self, listener: Listener, peer: SocketAddr, conn: Option<u64>, why: RefusedFor) {
        if !tracing::enabled!(target: TARGET, tracing::Level::WARN) {
            return;
        }
        let second = self.epoch.elapsed().as_secs();
        let suppressed = {
            let mut windows = self.windows.lock().unwrap_or_else(|e| e.into_inner());
            let w = &mut windows[why.index()];
            if w.second != second {
                w.second = second;
                w.logged = 0;
            }
            if w.logged >= REFUSAL_LINES_PER_SECOND_MAX {
                w.suppressed += 1;
                self.pending.store(true, Relaxed);
                return;
            }
            w.logged += 1;
            std::mem::take(&mut w.suppressed)
        };
        tracing::warn!(
            target: TARGET,
            conn,
            listener = %listener.name(),
            peer = %peer,
            reason = %why.name(),
            suppressed,
            "connection refused"
        );
    }

    /// Reports the refusals left out in seconds that have passed (called
    /// as connections open, so a flood that stopped is still accounted
    /// for). One load when there is nothing to report.
    pub fn flush(&self, listener: Listener) {
        if !self.pending.load(Relaxed) {
            return;
        }
        let second = self.epoch.elapsed().as_secs();
        let mut report = Vec::new();
        {
            let mut windows = self.windows.lock().unwrap_or_else(|e| e.into_inner());
            let mut left = false;
            for (i, w) in windows.iter_mut().enumerate() {
                if w.suppressed == 0 {
                    continue;
                }
                if w.second == second {
                    left = true;
                } else {
                    report.push((i, std::mem::take(&mut w.suppressed)));
                }
            }
            self.pending.store(left, Relaxed);
        }
        for (i, suppressed) in report {
            tracing::warn!(
                target: TARGET,
                listener = %listener.name(),
                reason = %reason_name(i),
                suppressed,
                "connection refusals suppressed"
            );
        }
    }
}

/// The name of the reason in slot `i` (see [`RefusedFor::index`]).
fn reason_name(i: usize) -> &'static str {
    match i {
        0 => RefusedFor::ConnectionLimit.name(),
        1 => RefusedFor::AddressLimit.name(),
        2 => RefusedFor::ClosedBeforeHandshake.name(),
        3 => RefusedFor::NotUpgraded.name(),
        _ => ErrorCode::ALL.iter().find(|c| **c as usize == i - FIXED_REASONS).map_or("unknown", |c| c.name()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_has_its_own_slot_and_name() {
        let mut reasons = vec![
            RefusedFor::ConnectionLimit,
            RefusedFor::AddressLimit,
            RefusedFor::ClosedBeforeHandshake,
            RefusedFor::NotUpgraded,
        ];
        reasons.extend(ErrorCode::ALL.iter().map(|c| RefusedFor::Handshake(*c)));
        let mut slots: Vec<usize> = reasons.iter().map(|r| r.index()).collect();
        slots.sort_unstable();
        slots.dedup();
        assert_eq!(slots.len(), reasons.len(), "one slot per reason");
        assert!(slots.iter().all(|&s| s < REASONS));
        for r in reasons {
            assert_eq!(reason_name(r.index()), r.name());
        }
    }
}
