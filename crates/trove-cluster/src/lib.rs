//! trove's cluster mode on NATS JetStream, the NATS side only: the
//! cluster's config, partition leases, per-partition logs and snapshots,
//! as a library on tokio. The engine (trove-shard) and the server drive
//! it; nothing here knows the game.
//!
//! Every call is bounded in time: a JetStream request to a group that
//! lost its quorum waits until its timeout, so each request has one
//! ([`REQUEST_TIMEOUT`], 2 s by default) and fails as
//! [`ClusterError::Unavailable`] after it, never hangs.
//!
//! # Layout
//!
//! - [`error`]: [`ClusterError`]; fenced (someone else appended) and
//!   unavailable (no quorum, timeout, no responders) kept apart.
//! - [`names`]: every bucket, stream, subject and object name, derived
//!   from the cluster's name.
//! - [`config`]: [`ClusterConfig`] in KV, create-or-check.
//! - [`lease`]: partition leases and their epochs, node presence.
//! - [`log`]: [`PartitionLog`], a partition's fenced stream.
//! - [`snapshots`]: partition snapshots in the object store, bounded.
//! - [`relay`]: [`Relay`], spectators on any node: a partition's updates
//!   published by its owner on core NATS and injected into the hubs of
//!   the nodes whose subscribers watch its hunts.
//!
//! docs/decisions/0037-cluster-log-on-jetstream.md says why it is built
//! this way.

pub mod config;
pub mod error;
pub mod lease;
pub mod log;
pub mod metrics;
pub mod names;
pub mod node;
pub mod recover;
pub mod relay;
pub mod snapshots;
pub mod stream_log;
mod task;

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, kv};

pub use config::ClusterConfig;
pub use error::{ClusterError, Unavailability};
pub use lease::{Lease, Leases, Owner};
pub use log::{LogBounds, LogEntry, LogReader, PartitionLog, PendingAppend};
pub use metrics::ClusterMetrics;
pub use names::Names;
pub use node::{MapView, Node, View};
pub use recover::{RecoverError, RecoveredPartition, recover_partition};
pub use relay::{Relay, RelayMetrics};
pub use snapshots::Snapshots;
pub use stream_log::StreamLog;

use crate::error::{bounded, classify};

/// Every JetStream request and publish acknowledgement waits at most
/// this long (a group without quorum answers nothing until then).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// Connecting to the first reachable server of the list waits at most
/// this long.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The lease TTL when the caller has no opinion.
pub const LEASE_TTL_DEFAULT: Duration = Duration::from_secs(3);

/// A lease TTL must be at least this (renewals are every TTL/3, and
/// JetStream's expiry is not finer than that).
pub const LEASE_TTL_MIN: Duration = Duration::from_millis(500);

/// The longest lease TTL a cluster may have (a dead node's partitions
/// wait this long).
pub const LEASE_TTL_MAX: Duration = Duration::from_secs(60);

/// JetStream replicas are at most this (NATS's own limit).
pub const REPLICAS_MAX: usize = 5;

/// A connection to a cluster's NATS servers, cheap to clone.
#[derive(Clone, Debug)]
pub struct Nats {
    pub(crate) inner: Arc<Inner>,
}

#[derive(Debug)]
pub(crate) struct Inner {
    client: async_nats::Client,
    jetstream: jetstream::Context,
    names: Names,
    replicas: usize,
    request_timeout: Duration,
    /// The leases bucket's `max_age`: the TTL its creator chose.
    lease_ttl: Duration,
    /// The leases and nodes buckets; `None` on a reader's connection
    /// ([`Nats::connect_reader`]), which creates nothing.
    pub(crate) presence: Option<Presence>,
}

/// The buckets a node's leases and presence live in.
#[derive(Debug)]
pub(crate) struct Presence {
    pub(crate) leases: kv::Store,
    pub(crate) nodes: kv::Store,
}

impl Nats {
    /// Connects to `urls` (any reachable one; the client reconnects to
    /// the others by itself) for cluster `cluster`, whose streams and
    /// buckets have `replicas` replicas. Opens (or creates) the leases and
    /// nodes buckets with `max_age` = `lease_ttl`; if they exist, their
    /// TTL holds and [`Nats::lease_ttl`] says what it is.
    pub async fn connect(
        urls: &[String],
        cluster: &str,
        replicas: usize,
        lease_ttl: Duration,
    ) -> Result<Nats, ClusterError> {
        Nats::connect_with_timeout(urls, cluster, replicas, lease_ttl, REQUEST_TIMEOUT).await
    }

    /// [`Nats::connect`] with another request timeout.
    pub async fn connect_with_timeout(
        urls: &[String],
        cluster: &str,
        replicas: usize,
        lease_ttl: Duration,
        request_timeout: Duration,
    ) -> Result<Nats, ClusterError> {
        if replicas == 0 || replicas > REPLICAS_MAX {
            return Err(ClusterError::Connect {
                urls: urls.join(","),
                message: format!("replicas {replicas} is not in 1..={REPLICAS_MAX}"),
            });
        }
        if !(LEASE_TTL_MIN..=LEASE_TTL_MAX).contains(&lease_ttl) {
            return Err(ClusterError::Connect {
                urls: urls.join(","),
                message: format!("lease TTL {lease_ttl:?} is outside {LEASE_TTL_MIN:?}..={LEASE_TTL_MAX:?}"),
            });
        }
        let (client, jetstream, names) = dial(urls, cluster, request_timeout).await?;
        let presence = |bucket: String| kv::Config {
            bucket,
            history: 1,
            max_age: lease_ttl,
            max_value_size: lease::OWNER_BYTES_MAX as i32,
            num_replicas: replicas,
            storage: jetstream::stream::StorageType::File,
            ..Default::default()
        };
        let leases = open_kv(&jetstream, request_timeout, presence(names.leases_bucket())).await?;
        let nodes = open_kv(&jetstream, request_timeout, presence(names.nodes_bucket())).await?;
        let lease_ttl = leases.stream.cached_info().config.max_age;
        // The bucket is outside data: a TTL of 0 (no expiry) or of hours
        // would make leases never move, or the node's ticks spin.
        if !(LEASE_TTL_MIN..=LEASE_TTL_MAX).contains(&lease_ttl) {
            return Err(ClusterError::Connect {
                urls: urls.join(","),
                message: format!(
                    "the leases bucket's TTL is {lease_ttl:?}, outside {LEASE_TTL_MIN:?}..={LEASE_TTL_MAX:?}"
                ),
            });
        }
        let presence = Some(Presence { leases, nodes });
        let nats = Inner { client, jetstream, names, replicas, request_timeout, lease_ttl, presence };
        Ok(Nats { inner: Arc::new(nats) })
    }

    /// A connection that only reads (`trove replay --cluster`): it creates
    /// no bucket, stream or object store, and takes no lease. Open what
    /// exists with [`Nats::open_log`] and [`Nats::open_snapshots`].
    pub async fn connect_reader(urls: &[String], cluster: &str) -> Result<Nats, ClusterError> {
        let (client, jetstream, names) = dial(urls, cluster, REQUEST_TIMEOUT).await?;
        let nats = Inner {
            client,
            jetstream,
            names,
            // Nothing is created through this connection: no replicas or
            // TTL of its own.
            replicas: 0,
            request_timeout: REQUEST_TIMEOUT,
            lease_ttl: LEASE_TTL_DEFAULT,
            presence: None,
        };
        Ok(Nats { inner: Arc::new(nats) })
    }

    /// The cluster's names.
    pub fn names(&self) -> &Names {
        &self.inner.names
    }

    /// Replicas of every stream and bucket this connection creates (0 on
    /// a reader's, which creates none).
    pub fn replicas(&self) -> usize {
        self.inner.replicas
    }

    /// The timeout of each request.
    pub fn request_timeout(&self) -> Duration {
        self.inner.request_timeout
    }

    /// The lease TTL in force (the leases bucket's `max_age`, set by its
    /// creator): renew every third of it.
    pub fn lease_ttl(&self) -> Duration {
        self.inner.lease_ttl
    }

    /// How often a holder renews its leases and a node announces itself:
    /// a third of [`Nats::lease_ttl`], so two renewals can fail before the
    /// lease expires.
    pub fn renew_interval(&self) -> Duration {
        self.inner.lease_ttl / 3
    }

    /// The largest payload an append may carry: the server's
    /// `max_payload` less [`log::HEADERS_BYTES_RESERVED`] for headers.
    /// The journal side splits frames below it.
    pub fn payload_max(&self) -> usize {
        self.inner.client.server_info().max_payload.saturating_sub(log::HEADERS_BYTES_RESERVED)
    }

    /// The JetStream context (bounded by the request timeout).
    pub fn jetstream(&self) -> &jetstream::Context {
        &self.inner.jetstream
    }

    /// The cluster's leases and node presence.
    ///
    /// # Panics
    ///
    /// On a reader's connection ([`Nats::connect_reader`]): a reader
    /// takes no lease, and only a node's code asks for them.
    pub fn leases(&self) -> Leases {
        assert!(self.inner.presence.is_some(), "a reader's connection has no leases");
        Leases::new(self.clone())
    }

    /// Creates the cluster's config as `wanted`, or checks the one there.
    pub async fn ensure_config(&self, wanted: &ClusterConfig) -> Result<ClusterConfig, ClusterError> {
        config::ensure(self, wanted).await
    }

    /// Partition `partition`'s log (its stream created if absent).
    pub async fn log(&self, partition: u32) -> Result<PartitionLog, ClusterError> {
        PartitionLog::ensure(self, partition).await
    }

    /// The cluster's snapshots (the object store created if absent).
    pub async fn snapshots(&self) -> Result<Snapshots, ClusterError> {
        Snapshots::open(self).await
    }

    /// Partition `partition`'s log if its stream exists (nothing is
    /// created): `None` for a partition never written.
    pub async fn open_log(&self, partition: u32) -> Result<Option<PartitionLog>, ClusterError> {
        PartitionLog::open_existing(self, partition).await
    }

    /// The cluster's snapshots if its object store exists (nothing is
    /// created).
    pub async fn open_snapshots(&self) -> Result<Option<Snapshots>, ClusterError> {
        Snapshots::open_existing(self).await
    }
}

/// Connects to the first reachable server of `urls` for cluster
/// `cluster`: the client, its JetStream context and the cluster's names.
async fn dial(
    urls: &[String],
    cluster: &str,
    request_timeout: Duration,
) -> Result<(async_nats::Client, jetstream::Context, Names), ClusterError> {
    let names = Names::new(cluster)?;
    let joined = urls.join(",");
    let connect_error = |message: String| ClusterError::Connect { urls: joined.clone(), message };
    if urls.is_empty() {
        return Err(connect_error("no server given".to_string()));
    }
    let mut addrs = Vec::with_capacity(urls.len());
    for u in urls {
        addrs.push(u.parse::<async_nats::ServerAddr>().map_err(|e| connect_error(format!("{u}: {e}")))?);
    }
    let options = async_nats::ConnectOptions::new()
        .connection_timeout(request_timeout)
        .request_timeout(Some(request_timeout))
        .name(format!("trove {cluster}"))
        // Back to a restarted server quickly, not after the default
        // backoff of up to seconds.
        .reconnect_delay_callback(|attempts| Duration::from_millis(100 * attempts.min(10) as u64));
    let client = match tokio::time::timeout(CONNECT_TIMEOUT, options.connect(addrs)).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => return Err(connect_error(error::chain(&e))),
        Err(_) => return Err(connect_error(format!("no server answered within {CONNECT_TIMEOUT:?}"))),
    };
    let jetstream =
        jetstream::ContextBuilder::new().timeout(request_timeout).ack_timeout(request_timeout).build(client.clone());
    Ok((client, jetstream, names))
}

/// Opens KV bucket `config.bucket`, creating it with `config` if absent
/// (of two racing creators one creates, the other opens what it made: the
/// first creator's settings hold).
pub(crate) async fn open_kv(
    js: &jetstream::Context,
    timeout: Duration,
    config: kv::Config,
) -> Result<kv::Store, ClusterError> {
    let what = format!("opening KV bucket {}", config.bucket);
    bounded(&what, timeout * 4, async {
        match js.get_key_value(config.bucket.clone()).await {
            Ok(s) => return Ok(s),
            Err(e) if !is_stream_not_found(&e) => return Err(classify(what.as_str(), &e, timeout)),
            Err(_) => {}
        }
        match js.create_key_value(config.clone()).await {
            Ok(s) => Ok(s),
            Err(create) => match js.get_key_value(config.bucket.clone()).await {
                Ok(s) => Ok(s),
                Err(_) => Err(classify(what.as_str(), &create, timeout)),
            },
        }
    })
    .await
}

/// Whether a KV open failed because the bucket's stream does not exist.
pub(crate) fn is_stream_not_found(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = next {
        if let Some(g) = err.downcast_ref::<jetstream::context::GetStreamError>()
            && let jetstream::context::GetStreamErrorKind::JetStream(j) = g.kind()
            && j.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND
        {
            return true;
        }
        if let Some(j) = err.downcast_ref::<jetstream::Error>()
            && j.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND
        {
            return true;
        }
        next = err.source();
    }
    false
}
