//! Client configuration: every bound and timer, named, with its default.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::time::{Duration, SystemTime};

use crate::error::ClientError;

/// The server's deduplication window per producer by default
/// (`dedup_window_events`): the server guarantees exactly-once resends
/// with the original outcomes while a producer has at most this many events
/// unacknowledged. The most `unacked_events_max` should be.
pub const DEDUP_WINDOW_EVENTS: u32 = 65_536;

/// The events a producer keeps unacknowledged by default
/// (`unacked_events_max`). Past the server's capacity whatever producers
/// have in flight waits in front of it, wherever it sits (the server's
/// queues, the sockets' buffers), and an admitted event waits the windows
/// over the server's rate (Little's law): 8,192 per connection kept the
/// admitted p99 within a 10 ms SLO at twice the knee, where 65,536 gave
/// 30-41 ms. It costs a producer that runs flat out (a bulk load) about
/// 15% against 65,536 in batches of 16,384 (docs/decisions/0058).
pub const UNACKED_EVENTS_MAX_DEFAULT: u32 = 8_192;

/// The most events in one EVENTS frame by default (`batch_events_max`):
/// with [`UNACKED_EVENTS_MAX_DEFAULT`], two batches in flight, so the next
/// one is on its way while the first waits for its ACK (a durable one waits
/// for `fdatasync`).
pub const BATCH_EVENTS_MAX_DEFAULT: u32 = 4096;

// Two default batches fit the default window, which fits the server's
// retry window.
const _: () = assert!(2 * BATCH_EVENTS_MAX_DEFAULT <= UNACKED_EVENTS_MAX_DEFAULT);
const _: () = assert!(UNACKED_EVENTS_MAX_DEFAULT <= DEDUP_WINDOW_EVENTS);

/// The longest `queue_delay_target` `validate` allows.
const QUEUE_DELAY_TARGET_MAX: Duration = Duration::from_secs(60);

/// How to reach a trove server and how to batch, pipeline and reconnect.
///
/// [`Subscriber`](crate::Subscriber) uses `addr`, `connect_timeout` and
/// `ping_interval` only.
///
/// ```
/// # use std::time::Duration;
/// let config = trove_client::ClientConfig {
///     linger: Duration::from_micros(200),
///     ..trove_client::ClientConfig::new("127.0.0.1:7400")
/// };
/// assert!(config.validate().is_ok());
/// ```
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// `host:port` of the server's protocol v1 TCP endpoint.
    pub addr: String,
    /// The producer id to present in HELLO. `None` (the default): a random
    /// nonzero 63-bit id, chosen once per [`Producer`](crate::Producer), so
    /// that a reconnect presents the same id and resends are recognised.
    /// `Some(0)`: the server assigns one at the first connection; later
    /// connections present that one (a restarted server may have assigned
    /// it to another producer meanwhile: prefer the random id). `Some(id)`: this id; then
    /// `first_seq` must be above every sequence number the id used before
    /// (the server treats lower ones as retries, and never applies them).
    pub producer_id: Option<u64>,
    /// Sequence number of the producer's first event. At least 1.
    pub first_seq: u64,
    /// Ask for one typed outcome per event in every acknowledgement.
    pub want_outcomes: bool,
    /// Most events in one EVENTS frame; the server's WELCOME may lower it
    /// (its `batch_events_max`, and what fits in its frame limit), and so
    /// does `unacked_events_max`. Keep it at most half of that, or only one
    /// batch is in flight at a time (stop and wait: a durable ACK's
    /// `fdatasync` then stalls the producer; decision 0058).
    pub batch_events_max: u32,
    /// How long an open batch may wait for more events before the producer
    /// closes it: checked by `send` (every 64 events) and `idle_until`;
    /// `flush` closes it at once. See [`Producer`](crate::Producer).
    pub linger: Duration,
    /// Batches closed and not yet released: sent and unacknowledged, or
    /// acknowledged and not yet taken from [`Acks`](crate::Acks).
    pub window_batches: u32,
    /// Events in those batches, at most (so a batch never holds more):
    /// [`UNACKED_EVENTS_MAX_DEFAULT`] by default. The lever between latency
    /// and throughput: past the server's capacity an admitted event waits
    /// about the producers' windows over the server's rate, and a producer
    /// that runs flat out goes faster with a deeper one (a bulk load:
    /// [`DEDUP_WINDOW_EVENTS`] with batches of a quarter of it).
    /// After a BUSY the producer allows fewer (halved, then grown back by
    /// about one batch per window of ACKs; see `ProducerStats::events_allowed`).
    /// Keep it at or below the server's deduplication window
    /// ([`DEDUP_WINDOW_EVENTS`]), or resends after a reconnect may be
    /// answered with `duplicate` outcomes instead of the originals (they
    /// are still never applied twice).
    pub unacked_events_max: u32,
    /// The queueing delay a producer accepts (`None` by default): when a
    /// batch's round trip (write to ACK) exceeds the least seen lately by
    /// more than this, the producer lets fewer events be unanswered (and
    /// closes smaller batches), so that past the server's capacity events
    /// wait in the application, not in the server's queues; ACKs within it
    /// grow the window back. It trades throughput for latency: measured in
    /// docs/benchmarks.md ("Overload"), 3 ms halved the admitted p99 past
    /// capacity in memory but cost a closed-loop producer a third of its
    /// throughput against a journal whose fsync wait varies by itself
    /// (decision 0012). `None`: only BUSY shrinks the window. See
    /// `ProducerStats::events_allowed`.
    pub queue_delay_target: Option<Duration>,
    /// TCP connect plus handshake, per attempt.
    pub connect_timeout: Duration,
    /// A batch sent and not answered for this long ends the connection,
    /// which is then made again and every unanswered batch resent with
    /// its sequence numbers (applied once, whatever happened to the
    /// first send). For a server that stopped without closing its
    /// sockets: a stalled process, a frozen VM. `None` (the default for a
    /// single server): wait as long as the connection stays open.
    /// [`ClusterConfig::new`](crate::ClusterConfig::new) sets 5 s, so that
    /// a stalled node's partitions follow their new owner.
    pub answer_timeout: Option<Duration>,
    /// A PING goes out when nothing was written for this long, so that the
    /// server (idle timeout 60 s by default) keeps the connection.
    pub ping_interval: Duration,
    /// After a lost connection the first reconnect attempt goes at once
    /// (once there is something to send); a failed attempt waits this
    /// long before the next, doubling per failure.
    pub reconnect_backoff_initial: Duration,
    /// Longest wait between reconnect attempts.
    pub reconnect_backoff_max: Duration,
    /// Reconnect attempts in a row, without an answer to a batch in
    /// between, before the producer gives up (`ClientError::ReconnectFailed`);
    /// `None` never gives up. A connection made that ends before any batch
    /// is answered (the server refuses them all: `unavailable`, say) counts
    /// as one, and the backoff goes on growing across it. The default, 20,
    /// with the default backoff, gives a server about 30 s to return.
    pub reconnect_attempts_max: Option<u32>,
    /// TLS to a server whose listener speaks it (`trove serve
    /// --tls-cert`): the CAs to trust and the name to check. `None` (the
    /// default): plain TCP. A cluster producer uses it for the nodes'
    /// data planes and for `GET /cluster` on their control planes.
    pub tls: Option<crate::ClientTls>,
    /// The token to authenticate with (a server started with `--auth`
    /// refuses connections without one). `Some`: HELLO version 2 carries
    /// it; `None`: HELLO version 1, which servers accept only while
    /// authentication is off. [`Token::from_env`] reads `TROVE_TOKEN`.
    pub token: Option<Token>,
}

/// Bytes in a token.
pub const TOKEN_LEN: usize = 32;
/// The environment variable the examples and `trove bench` read a token
/// from when `--token` is not given.
pub const TOKEN_ENV: &str = "TROVE_TOKEN";

/// A token as `trove auth add` prints it: 32 bytes, written as 64 hex
/// characters. Its `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(pub [u8; TOKEN_LEN]);

impl Token {
    /// Reads 64 hex characters (surrounding whitespace ignored).
    pub fn from_hex(text: &str) -> Result<Self, ClientError> {
        let bad = || ClientError::Config { field: "token", reason: "must be 64 hex characters".into() };
        let s = text.trim().as_bytes();
        if s.len() != TOKEN_LEN * 2 {
            return Err(bad());
        }
        let digit = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
        let mut out = [0u8; TOKEN_LEN];
        for (i, pair) in s.chunks_exact(2).enumerate() {
            out[i] = digit(pair[0]).ok_or_else(bad)? << 4 | digit(pair[1]).ok_or_else(bad)?;
        }
        Ok(Token(out))
    }

    /// `TROVE_TOKEN`, if set.
    pub fn from_env() -> Result<Option<Self>, ClientError> {
        match std::env::var(TOKEN_ENV) {
            Ok(t) if !t.trim().is_empty() => Token::from_hex(&t).map(Some),
            _ => Ok(None),
        }
    }

    /// `--token` if given, else `TROVE_TOKEN`, else none.
    pub fn from_arg_or_env(arg: Option<&str>) -> Result<Option<Self>, ClientError> {
        match arg {
            Some(t) => Token::from_hex(t).map(Some),
            None => Token::from_env(),
        }
    }

    /// The 64 hex characters (for an `Authorization: Bearer` header).
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(..)")
    }
}

impl ClientConfig {
    /// The defaults, for the server at `addr`.
    pub fn new(addr: impl Into<String>) -> Self {
        Self {
            addr: addr.into(),
            producer_id: None,
            first_seq: 1,
            want_outcomes: true,
            batch_events_max: BATCH_EVENTS_MAX_DEFAULT,
            linger: Duration::from_millis(1),
            window_batches: 32,
            unacked_events_max: UNACKED_EVENTS_MAX_DEFAULT,
            queue_delay_target: None,
            connect_timeout: Duration::from_secs(5),
            answer_timeout: None,
            ping_interval: Duration::from_secs(20),
            reconnect_backoff_initial: Duration::from_millis(50),
            reconnect_backoff_max: Duration::from_secs(2),
            reconnect_attempts_max: Some(20),
            tls: None,
            token: None,
        }
    }

    pub fn validate(&self) -> Result<(), ClientError> {
        let bad = |field, reason: &str| Err(ClientError::Config { field, reason: reason.to_string() });
        if self.addr.is_empty() {
            return bad("addr", "is empty");
        }
        if self.first_seq == 0 || self.first_seq > u64::MAX / 2 {
            return bad("first_seq", "must be in 1..=2^63");
        }
        if self.batch_events_max == 0 {
            return bad("batch_events_max", "must be at least 1");
        }
        if self.window_batches == 0 || self.window_batches > 4096 {
            return bad("window_batches", "must be in 1..=4096");
        }
        if self.unacked_events_max == 0 {
            return bad("unacked_events_max", "must be at least 1 (it also caps the batch size)");
        }
        if self.queue_delay_target.is_some_and(|d| d.is_zero() || d > QUEUE_DELAY_TARGET_MAX) {
            return bad("queue_delay_target", "must be above zero and at most 60 s (or None)");
        }
        if self.connect_timeout.is_zero() {
            return bad("connect_timeout", "must be above zero");
        }
        if self.ping_interval.is_zero() {
            return bad("ping_interval", "must be above zero");
        }
        if self.reconnect_backoff_max < self.reconnect_backoff_initial {
            return bad("reconnect_backoff_max", "is below reconnect_backoff_initial");
        }
        Ok(())
    }

    /// The id HELLO presents first: the configured one, or a fresh random
    /// nonzero 63-bit id.
    pub(crate) fn initial_producer_id(&self) -> u64 {
        self.producer_id.unwrap_or_else(random_producer_id)
    }

    /// HELLO for these settings: version 2 with the token, or version 1
    /// without one.
    pub(crate) fn hello(&self, flags: u32, producer_id: u64) -> trove_proto::frame::Hello {
        match &self.token {
            Some(t) => trove_proto::frame::Hello::v2(flags, producer_id, t.0),
            None => trove_proto::frame::Hello::v1(flags, producer_id),
        }
    }
}

/// A random nonzero id below 2^63. `RandomState` is seeded from the OS per
/// process (and differs per call); the time and the process id are mixed in
/// for good measure.
pub fn random_producer_id() -> u64 {
    let mut h = RandomState::new().build_hasher();
    h.write_u128(SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_nanos()));
    h.write_u32(std::process::id());
    let id = trove_core::rng::mix64(h.finish()) >> 1;
    id.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dedup_window_is_the_servers_default() {
        let engine = trove_shard::EngineConfig::default();
        assert_eq!(DEDUP_WINDOW_EVENTS as usize, engine.dedup_window_events);
    }

    #[test]
    fn defaults_are_valid_and_fields_are_named() {
        assert!(ClientConfig::new("x:1").validate().is_ok());
        let field = |c: ClientConfig| match c.validate() {
            Err(ClientError::Config { field, .. }) => field,
            other => panic!("{other:?}"),
        };
        let base = ClientConfig::new("x:1");
        assert_eq!(field(ClientConfig { first_seq: 0, ..base.clone() }), "first_seq");
        assert_eq!(field(ClientConfig { batch_events_max: 0, ..base.clone() }), "batch_events_max");
        assert_eq!(field(ClientConfig { window_batches: 0, ..base.clone() }), "window_batches");
        assert_eq!(field(ClientConfig { unacked_events_max: 0, ..base.clone() }), "unacked_events_max");
        let zero = Some(Duration::ZERO);
        assert_eq!(field(ClientConfig { queue_delay_target: zero, ..base.clone() }), "queue_delay_target");
        let hour = Some(Duration::from_secs(3600));
        assert_eq!(field(ClientConfig { queue_delay_target: hour, ..base.clone() }), "queue_delay_target");
        assert_eq!(field(ClientConfig { addr: String::new(), ..base }), "addr");
    }

    #[test]
    fn tokens_read_as_hex_and_never_print() {
        let hex = "00ff".repeat(16);
        let t = Token::from_hex(&format!(" {hex}\n")).unwrap();
        assert_eq!(t.0[..2], [0x00, 0xff]);
        assert_eq!(t.to_hex(), hex);
        assert_eq!(
            format!("{:?}", ClientConfig { token: Some(t), ..ClientConfig::new("x:1") }).matches("00ff").count(),
            0
        );
        assert!(Token::from_hex("abc").is_err());
        assert!(Token::from_hex(&"zz".repeat(32)).is_err());
    }

    #[test]
    fn random_ids_are_nonzero_63_bit_and_differ() {
        let a = random_producer_id();
        let b = random_producer_id();
        assert!(a != 0 && a < 1 << 63 && b != 0 && b < 1 << 63);
        assert_ne!(a, b);
    }
}
