//! Typed errors.

use std::fmt;
use std::io;
use std::sync::Arc;

use trove_proto::ErrorCode;

use crate::cluster::MapError;

/// An ERROR frame from the server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerError {
    /// The code as sent; [`ServerError::code`] names it if this SDK knows it.
    pub raw_code: u16,
    pub message: String,
}

impl ServerError {
    /// The typed code, or `None` for a code newer than this SDK.
    pub fn code(&self) -> Option<ErrorCode> {
        ErrorCode::from_u16(self.raw_code)
    }

    /// Whether the server closes the connection after this error. Unknown
    /// codes are taken to close it.
    pub fn closes(&self) -> bool {
        self.code().is_none_or(ErrorCode::closes)
    }

    /// Whether a new connection to the same server may succeed where this
    /// one failed: the server went idle, busy, away or briefly wrong, not
    /// the client. (`not_owner` is not: that server will not take the
    /// events; a [`ClusterProducer`](crate::ClusterProducer) follows it to
    /// the partition's owner.)
    pub fn retryable(&self) -> bool {
        matches!(
            self.code(),
            Some(
                ErrorCode::HandshakeTimeout
                    | ErrorCode::IdleTimeout
                    | ErrorCode::TooManyConnections
                    | ErrorCode::ShuttingDown
                    | ErrorCode::Internal
                    | ErrorCode::ProducerInUse
                    | ErrorCode::Unavailable
            )
        )
    }
}

impl fmt::Display for ServerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.code() {
            Some(c) => write!(f, "{} ({}): {}", c.name(), self.raw_code, self.message),
            None => write!(f, "error code {}: {}", self.raw_code, self.message),
        }
    }
}

/// Everything that can go wrong between this SDK and a trove server.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum ClientError {
    /// The configuration is unusable; names the field.
    Config { field: &'static str, reason: String },
    /// Connecting, reading or writing failed.
    Io { during: &'static str, source: Arc<io::Error> },
    /// The server did not answer in time (`during` says what waited).
    Timeout { during: &'static str },
    /// The server sent an ERROR frame.
    Server(ServerError),
    /// The server refused one batch (BadBatch or BadSequence): none of its
    /// events was applied. The producer goes on with the next batch.
    BatchRefused { first_seq: u64, count: u32, error: ServerError },
    /// The server answered a batch `sequence_reused`: some of its sequence
    /// numbers (the message names the first) were already applied with
    /// other events, so those events were not applied, and no outcome of
    /// another event was passed off as theirs. The batch's other events
    /// were handled as usual. Another process or an earlier run of this
    /// one used this producer id with these numbers: give each producer
    /// its own id, or continue above the numbers it used. The producer
    /// goes on with the next batch.
    SequenceReused { first_seq: u64, count: u32, error: ServerError },
    /// The server broke the protocol: a malformed frame, an answer that
    /// matches no request, a sequence that does not follow.
    Protocol(String),
    /// The server speaks the protocol but cannot serve this client: another
    /// version, another game (record or outcome size), missing features.
    Incompatible(String),
    /// The cluster map could not be fetched from `addr` (a seed or a
    /// node's control plane), or was not usable; the last of the addresses
    /// tried.
    Map { addr: String, error: MapError },
    /// No node owns the partition now (a failover under way), or the maps
    /// still name the node that refused its events.
    NoOwner { partition: u32 },
    /// The producer lost its connection and could not get a new one.
    ReconnectFailed { attempts: u32, last: Box<ClientError> },
    /// The producer or subscriber was closed (or dropped) first.
    Closed,
    /// The TLS handshake failed: the server's certificate is not signed
    /// by a CA this client trusts, or is not for the name checked, or the
    /// server does not speak TLS there. Not retried: another attempt
    /// meets the same certificate.
    Tls(String),
}

impl ClientError {
    pub(crate) fn io(during: &'static str) -> impl FnOnce(io::Error) -> ClientError {
        move |e| ClientError::Io { during, source: Arc::new(e) }
    }

    /// Whether a producer reconnects after this error (the connection broke
    /// or the server asked it to come back later).
    pub fn retryable(&self) -> bool {
        match self {
            ClientError::Io { .. } | ClientError::Timeout { .. } | ClientError::NoOwner { .. } => true,
            ClientError::Server(e) => e.retryable(),
            _ => false,
        }
    }

    /// The server's error code, if the server sent one.
    pub fn server_code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Server(e)
            | ClientError::BatchRefused { error: e, .. }
            | ClientError::SequenceReused { error: e, .. } => e.code(),
            ClientError::ReconnectFailed { last, .. } => last.server_code(),
            _ => None,
        }
    }
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::Config { field, reason } => write!(f, "invalid client configuration: {field}: {reason}"),
            ClientError::Io { during, source } => write!(f, "{during}: {source}"),
            ClientError::Timeout { during } => write!(f, "{during}: timed out"),
            ClientError::Server(e) => write!(f, "server error: {e}"),
            ClientError::BatchRefused { first_seq, count, error } => {
                write!(f, "batch of {count} events from sequence {first_seq} refused: {error}")
            }
            ClientError::SequenceReused { first_seq, count, error } => {
                write!(f, "batch of {count} events from sequence {first_seq} reuses sequence numbers: {error}")
            }
            ClientError::Protocol(m) => write!(f, "protocol violation by the server: {m}"),
            ClientError::Incompatible(m) => write!(f, "incompatible server: {m}"),
            ClientError::Map { addr, error } => write!(f, "cluster map from {addr}: {error}"),
            ClientError::NoOwner { partition } => {
                write!(f, "no node owns partition {partition} now (or the map still names the one that refused it)")
            }
            ClientError::ReconnectFailed { attempts, last } => {
                write!(f, "gave up reconnecting after {attempts} attempts; last error: {last}")
            }
            ClientError::Closed => write!(f, "closed"),
            ClientError::Tls(m) => write!(f, "TLS handshake: {m}"),
        }
    }
}

impl std::error::Error for ClientError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ClientError::Io { source, .. } => Some(source.as_ref()),
            ClientError::ReconnectFailed { last, .. } => Some(last.as_ref()),
            ClientError::Map { error, .. } => Some(error),
            _ => None,
        }
    }
}

/// Why [`Producer::send`](crate::Producer::send) did not take an event; the
/// event is handed back.
#[derive(Clone, Debug)]
pub enum SendError<E> {
    /// The open batch is full and the window has no room to close it: await
    /// [`Producer::ready`](crate::Producer::ready), then send again.
    Full(E),
    /// The producer failed or was closed; it takes no more events.
    Closed(E, ClientError),
}

impl<E> SendError<E> {
    /// The event that was not taken.
    pub fn into_event(self) -> E {
        match self {
            SendError::Full(e) | SendError::Closed(e, _) => e,
        }
    }
}

impl<E> fmt::Display for SendError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SendError::Full(_) => write!(f, "the open batch and the window are full"),
            SendError::Closed(_, e) => write!(f, "the producer is closed: {e}"),
        }
    }
}

impl<E: fmt::Debug> std::error::Error for SendError<E> {}
