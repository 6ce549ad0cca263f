//! [`ClusterError`], what every call of this crate fails with, and the one
//! place that turns async-nats's errors into it ([`classify`]).
//!
//! Two failures must stay apart, because the engine answers producers
//! differently: [`ClusterError::Fenced`] (someone else appended to the
//! partition's stream: this node is no longer its owner, answer
//! `not_owner`) and [`ClusterError::Unavailable`] (the log could not be
//! reached or had no quorum: nothing is known to be durable, answer
//! `unavailable`).

use std::time::Duration;

use async_nats::jetstream::context::{PublishError, PublishErrorKind, RequestError, RequestErrorKind};
use async_nats::jetstream::{self, ErrorCode};

/// Why the cluster's log could not be reached.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Unavailability {
    /// No answer within the request timeout: the servers are unreachable,
    /// or the stream or the meta group has no quorum (a JetStream request
    /// to a group without a leader waits until the timeout).
    #[error("no answer within {0:?} (no quorum, or the servers are unreachable)")]
    TimedOut(Duration),
    /// Nobody listens on the subject: no stream leader (quorum lost) or no
    /// JetStream at all.
    #[error("no responders (no stream leader: quorum lost, or no JetStream)")]
    NoResponders,
    /// JetStream answered that it cannot serve now (cluster or stream
    /// offline, no leader, not enough peers).
    #[error("JetStream has no quorum: {0}")]
    NoQuorum(String),
    /// The connection to NATS is down (the client reconnects by itself).
    #[error("disconnected from NATS")]
    Disconnected,
    /// JetStream has not the resources: its storage limit is reached, or
    /// too few servers for the replicas asked.
    #[error("JetStream is out of resources (storage full, or too few servers for the replicas): {0}")]
    InsufficientResources(String),
    /// The stream's leader counts a message past `expected` that is not
    /// committed (a try without quorum, which may still commit or vanish):
    /// whether this writer is fenced is not known yet.
    #[error("expected last sequence {expected}, the leader is at {} with nothing committed past it yet (a try without quorum)",
        actual.map_or_else(|| "a later one".to_string(), |a| a.to_string()))]
    Uncommitted { expected: u64, actual: Option<u64> },
}

/// What a call of this crate fails with.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// No NATS server of the list could be reached.
    #[error("connecting to NATS at {urls}: {message}")]
    Connect { urls: String, message: String },
    /// A cluster, node or object name that is not a short token.
    #[error("invalid {what} {name:?}: {reason}")]
    InvalidName { what: &'static str, name: String, reason: &'static str },
    /// The cluster's recorded config differs from this node's.
    #[error("cluster config mismatch: {field} is {found} in the cluster, this node has {wanted}")]
    ConfigMismatch { field: &'static str, found: String, wanted: String },
    /// An append or fence whose expected last sequence was not the
    /// stream's: another writer appended (a newer owner, or a fence).
    #[error("partition {partition}: fenced: expected last sequence {expected}, the stream's is {}",
        actual.map_or_else(|| "another".to_string(), |a| a.to_string()))]
    Fenced { partition: u32, expected: u64, actual: Option<u64> },
    /// The log could not be reached or had no quorum: nothing of the
    /// request is known to be durable (a timed-out append may still have
    /// landed: the caller resynchronises with `last_seq`).
    #[error("{what}: unavailable: {why}")]
    Unavailable { what: String, why: Unavailability },
    /// A payload or object over a named limit.
    #[error("{what}: {bytes} bytes is over the limit of {max}")]
    TooLarge { what: String, bytes: u64, max: u64 },
    /// What is stored in NATS does not parse (read as hostile input).
    #[error("{what}: malformed: {message}")]
    Malformed { what: String, message: String },
    /// Any other NATS or JetStream failure.
    #[error("{what}: {message}")]
    Protocol { what: String, message: String },
}

impl ClusterError {
    /// Whether this is [`ClusterError::Unavailable`].
    pub fn is_unavailable(&self) -> bool {
        matches!(self, ClusterError::Unavailable { .. })
    }

    /// Whether this is [`ClusterError::Fenced`].
    pub fn is_fenced(&self) -> bool {
        matches!(self, ClusterError::Fenced { .. })
    }
}

/// JetStream API error codes that mean "no quorum or leader now".
const NO_QUORUM_CODES: [ErrorCode; 6] = [
    ErrorCode::CLUSTER_NOT_AVAILABLE,
    ErrorCode::CLUSTER_INCOMPLETE,
    ErrorCode::CLUSTER_NOT_LEADER,
    ErrorCode::CLUSTER_NOT_ACTIVE,
    ErrorCode::STREAM_OFFLINE,
    ErrorCode::CLUSTER_NO_PEERS,
];

/// Turns an async-nats error met while doing `what` into a
/// [`ClusterError`]: walks its source chain for the typed errors that
/// say "unavailable" (a publish or request timing out or finding no
/// responders, a JetStream "no quorum" code). async-nats wraps these
/// differently per call (a KV create's timeout arrives as its `Publish`
/// kind with the publish error as source), so the chain is searched, and
/// only as the last resort its text. `timeout` is the request timeout in
/// force, for the message.
pub(crate) fn classify(
    what: impl Into<String>,
    err: &(dyn std::error::Error + 'static),
    timeout: Duration,
) -> ClusterError {
    let what = what.into();
    let unavailable = |why| ClusterError::Unavailable { what: what.clone(), why };
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = next {
        if let Some(p) = e.downcast_ref::<PublishError>() {
            match p.kind() {
                PublishErrorKind::TimedOut => return unavailable(Unavailability::TimedOut(timeout)),
                // async-nats reports a 503 "no responders" status this way.
                PublishErrorKind::StreamNotFound => return unavailable(Unavailability::NoResponders),
                PublishErrorKind::BrokenPipe => return unavailable(Unavailability::Disconnected),
                _ => {}
            }
        }
        if let Some(r) = e.downcast_ref::<RequestError>() {
            match r.kind() {
                RequestErrorKind::TimedOut => return unavailable(Unavailability::TimedOut(timeout)),
                RequestErrorKind::NoResponders => return unavailable(Unavailability::NoResponders),
                _ => {}
            }
        }
        if let Some(j) = e.downcast_ref::<jetstream::Error>() {
            if j.error_code() == ErrorCode::INSUFFICIENT_RESOURCES {
                return unavailable(Unavailability::InsufficientResources(j.to_string()));
            }
            if NO_QUORUM_CODES.contains(&j.error_code()) || j.code() == 503 {
                return unavailable(Unavailability::NoQuorum(j.to_string()));
            }
        }
        next = e.source();
    }
    let text = err.to_string();
    let lower = text.to_ascii_lowercase();
    if lower.contains("timed out") || lower.contains("timeout") {
        return unavailable(Unavailability::TimedOut(timeout));
    }
    if lower.contains("no responders") {
        return unavailable(Unavailability::NoResponders);
    }
    if lower.contains("temporarily unavailable") || lower.contains("offline") || lower.contains("no suitable peers") {
        return unavailable(Unavailability::NoQuorum(text));
    }
    ClusterError::Protocol { what, message: chain(err) }
}

/// The error and its sources, joined with ": ".
pub(crate) fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut s = err.to_string();
    let mut next = err.source();
    while let Some(e) = next {
        let t = e.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        next = e.source();
    }
    s
}

/// Bounds `fut` by `timeout`: a JetStream request to a group without
/// quorum can otherwise wait as long as the client's own timeouts allow.
pub(crate) async fn bounded<T>(
    what: &str,
    timeout: Duration,
    fut: impl Future<Output = Result<T, ClusterError>>,
) -> Result<T, ClusterError> {
    match tokio::time::timeout(timeout, fut).await {
        Ok(r) => r,
        Err(_) => Err(ClusterError::Unavailable { what: what.to_string(), why: Unavailability::TimedOut(timeout) }),
    }
}
