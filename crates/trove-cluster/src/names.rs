//! Every NATS name of a cluster, derived from its name `C`
//! (docs/decisions/0037-cluster-log-on-jetstream.md lists them):
//! KV buckets `trove_C_config`, `trove_C_leases`, `trove_C_nodes`, the
//! object store `trove_C_snapshots`, and per partition `N` the stream
//! `trove_C_pN` on subject `trove.C.p.N`, lease key and snapshot object
//! `pN`; and the relay's core NATS subjects (no stream) `trove.C.updates.N`
//! and `trove.C.watch.N`.

use crate::error::ClusterError;

/// A cluster or node name is at most this many bytes (it is part of
/// bucket, stream and subject names, which NATS keeps short).
pub const NAME_BYTES_MAX: usize = 32;

/// A cluster has at most this many partitions (one stream each).
pub const PARTITIONS_MAX: u32 = 4096;

/// Checks that `name` is a short token of `[a-z0-9_-]`: safe in a bucket,
/// stream, subject token and KV key. `what` names it in the error.
pub fn validate_token(what: &'static str, name: &str) -> Result<(), ClusterError> {
    let invalid = |reason| Err(ClusterError::InvalidName { what, name: name.to_string(), reason });
    if name.is_empty() {
        return invalid("empty");
    }
    if name.len() > NAME_BYTES_MAX {
        return invalid("longer than 32 bytes");
    }
    if !name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-') {
        return invalid("only a-z, 0-9, '_' and '-' are allowed");
    }
    Ok(())
}

/// The names of one cluster's NATS resources.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Names {
    cluster: String,
}

impl Names {
    /// The names for cluster `cluster` (validated: [`validate_token`]).
    pub fn new(cluster: &str) -> Result<Names, ClusterError> {
        validate_token("cluster name", cluster)?;
        Ok(Names { cluster: cluster.to_string() })
    }

    /// The cluster's name.
    pub fn cluster(&self) -> &str {
        &self.cluster
    }

    /// KV bucket holding the cluster's config (key [`CONFIG_KEY`]).
    pub fn config_bucket(&self) -> String {
        format!("trove_{}_config", self.cluster)
    }

    /// KV bucket of partition leases (key [`Names::lease_key`]).
    pub fn leases_bucket(&self) -> String {
        format!("trove_{}_leases", self.cluster)
    }

    /// KV bucket of live nodes (key: the node's name).
    pub fn nodes_bucket(&self) -> String {
        format!("trove_{}_nodes", self.cluster)
    }

    /// Object store of partition snapshots (object [`Names::snapshot_object`]).
    pub fn snapshots_bucket(&self) -> String {
        format!("trove_{}_snapshots", self.cluster)
    }

    /// Partition `p`'s stream.
    pub fn stream(&self, p: u32) -> String {
        format!("trove_{}_p{p}", self.cluster)
    }

    /// The one subject of partition `p`'s stream.
    pub fn subject(&self, p: u32) -> String {
        format!("trove.{}.p.{p}", self.cluster)
    }

    /// Core NATS subject of partition `p`'s relayed updates (its owner
    /// publishes, nodes with spectators of its hunts subscribe).
    pub fn updates_subject(&self, p: u32) -> String {
        format!("trove.{}.updates.{p}", self.cluster)
    }

    /// Core NATS subject on which nodes announce the hunts of partition
    /// `p` they relay (its owner subscribes).
    pub fn watch_subject(&self, p: u32) -> String {
        format!("trove.{}.watch.{p}", self.cluster)
    }

    /// Every partition's watch subject (a wildcard).
    pub fn watch_subject_all(&self) -> String {
        format!("trove.{}.watch.*", self.cluster)
    }

    /// Partition `p`'s key in the leases bucket.
    pub fn lease_key(&self, p: u32) -> String {
        format!("p{p}")
    }

    /// Partition `p`'s object in the snapshots store.
    pub fn snapshot_object(&self, p: u32) -> String {
        format!("p{p}")
    }
}

/// The config bucket's one key.
pub const CONFIG_KEY: &str = "config";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_design() {
        let n = Names::new("trove").unwrap();
        assert_eq!(n.config_bucket(), "trove_trove_config");
        assert_eq!(n.leases_bucket(), "trove_trove_leases");
        assert_eq!(n.nodes_bucket(), "trove_trove_nodes");
        assert_eq!(n.snapshots_bucket(), "trove_trove_snapshots");
        assert_eq!(n.stream(3), "trove_trove_p3");
        assert_eq!(n.subject(3), "trove.trove.p.3");
        assert_eq!(n.updates_subject(3), "trove.trove.updates.3");
        assert_eq!(n.watch_subject(3), "trove.trove.watch.3");
        assert_eq!(n.watch_subject_all(), "trove.trove.watch.*");
        assert_eq!(n.lease_key(3), "p3");
        assert_eq!(n.snapshot_object(3), "p3");
    }

    #[test]
    fn names_that_are_not_short_tokens_are_refused() {
        for bad in ["", "Trove", "a.b", "a b", "a*", "a>", "ü", &"x".repeat(NAME_BYTES_MAX + 1)] {
            assert!(matches!(Names::new(bad), Err(ClusterError::InvalidName { .. })), "{bad:?} accepted");
        }
        for good in ["a", "trove", "eu-west_1", &"x".repeat(NAME_BYTES_MAX)] {
            assert!(Names::new(good).is_ok(), "{good:?} refused");
        }
    }
}
