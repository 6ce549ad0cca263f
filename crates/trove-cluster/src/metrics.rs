//! The cluster side's counters, kept as relaxed atomics and rendered by the
//! control plane's `/metrics` (`trove_cluster_*`).

use std::sync::atomic::AtomicU64;

use trove_shard::Histogram;

/// What a node counts about its part in the cluster.
#[derive(Debug, Default)]
pub struct ClusterMetrics {
    /// Partitions this node owns now.
    pub partitions_owned: AtomicU64,
    /// Messages appended to partition streams and acknowledged.
    pub appends: AtomicU64,
    /// Bytes of those messages.
    pub appended_bytes: AtomicU64,
    /// From sending a write's messages to their last acknowledgement:
    /// the durability point's cost in cluster mode.
    pub append_ack_ns: Histogram,
    /// A lease renewal's round trip.
    pub lease_renew_ns: Histogram,
    /// Partitions this node took over (acquired and served).
    pub takeovers: AtomicU64,
    /// Of those, ones whose previous owner's lease had expired (it died or
    /// stalled), not released.
    pub failovers: AtomicU64,
    /// From acquiring a lease to serving the partition: snapshot load,
    /// replay, fence.
    pub takeover_ns: Histogram,
    /// Messages replayed by takeovers, and the one under way's so far.
    pub replayed_messages: AtomicU64,
    /// Leases this node lost (not renewed in time, or taken).
    pub leases_lost: AtomicU64,
    /// Partitions whose log was fenced or unavailable while owned here.
    pub partitions_lost: AtomicU64,
    /// Partitions released (clean hand-over: rebalancing or leaving).
    pub released: AtomicU64,
    /// Snapshots stored in the object store.
    pub snapshots: AtomicU64,
    /// Snapshots not stored (or streams not purged after one): the stream
    /// keeps what it held.
    pub snapshot_failures: AtomicU64,
}
