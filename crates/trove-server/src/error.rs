//! The errors trove-server's public API returns, one enum per boundary:
//! a configuration that breaks a bound, a plane that could not start, an
//! event in JSON that does not read. Their messages are what `trove
//! serve` prints.

use std::net::SocketAddr;

/// A bound of `ServerConfig` or `ControlConfig` broken: the message
/// names the setting and its range.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidConfig(pub &'static str);

/// Why the data plane or the control plane did not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] InvalidConfig),
    /// Binding a listener failed (the port is taken, say).
    #[error("{what} listener on {addr}: {source}")]
    Bind { what: &'static str, addr: SocketAddr, source: std::io::Error },
    /// A listener bound already could not be taken over.
    #[error("{what} listener: {source}")]
    Listener { what: &'static str, source: std::io::Error },
    /// A tokio runtime (`I/O` or `control`) could not be built.
    #[error("starting the {what} runtime: {source}")]
    Runtime { what: &'static str, source: std::io::Error },
    /// The engine's hub refused the subscriber push interval (it is set
    /// already, to another value, by an earlier server on the engine).
    #[error("{0}")]
    PushInterval(String),
    /// The TLS certificate or key could not be used (names the file).
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
}

/// Why a JSON value is not an event (or a `POST /hunts` body): the field
/// that is wrong, named as the client wrote it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum JsonError {
    #[error("the body is not JSON: {0}")]
    NotJson(String),
    #[error("an event must be an object")]
    NotAnObject,
    #[error("missing field `{0}`")]
    Missing(String),
    #[error("`{0}` must be a non-negative integer")]
    NotUnsigned(String),
    #[error("`{0}` must be an integer")]
    NotAnInteger(String),
    #[error("`{field}` = {value} is out of range")]
    OutOfRange { field: String, value: i128 },
    #[error("`{0}` must be a string")]
    NotAString(String),
    #[error("unknown action `{0}`: expected create, join, leave, move, dig, scan or delete")]
    UnknownAction(String),
    /// A hunt id (`POST /hunts`'s `id`) that is not a `u32`, as written.
    #[error("`id` must be an integer in 0..=4294967295, not {0}")]
    BadId(String),
    /// The config's fields read, but together they break a rule of the
    /// game (its message names the field).
    #[error("config.{0}")]
    Config(String),
}

impl JsonError {
    /// The same error for a field of an event's `config` object: named
    /// `config.<name>`.
    pub(crate) fn in_config(self) -> Self {
        let nest = |field: String| format!("config.{field}");
        match self {
            JsonError::Missing(f) => JsonError::Missing(nest(f)),
            JsonError::NotUnsigned(f) => JsonError::NotUnsigned(nest(f)),
            JsonError::NotAnInteger(f) => JsonError::NotAnInteger(nest(f)),
            JsonError::OutOfRange { field, value } => JsonError::OutOfRange { field: nest(field), value },
            JsonError::NotAString(f) => JsonError::NotAString(nest(f)),
            other => other,
        }
    }
}
