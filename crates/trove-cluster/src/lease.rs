//! Partition ownership by leases in the `trove_C_leases` KV bucket, and
//! node presence in `trove_C_nodes`. Both buckets expire entries by the
//! bucket's `max_age` (the lease TTL): a lease that is not renewed
//! disappears, and the next [`Leases::acquire`] takes it.
//!
//! - Acquire = KV `create` of key `pN` (succeeds only if the key is
//!   absent, deleted or expired). The lease's **epoch** is the revision
//!   the create returned: revisions are the bucket stream's sequence,
//!   monotonic over the whole bucket, so a later owner always has a higher
//!   epoch, even after the key expired and vanished.
//! - Renew = KV `update(key, value, revision)`: compare-and-set on the
//!   last revision we wrote; a failed update means the lease is lost
//!   (expired, or taken by another). The renewed value carries the epoch
//!   (`"epoch": E`), so readers see the acquisition's epoch, not the
//!   revision of the last renewal.
//! - Release = KV delete with the expected revision: a deposed holder
//!   cannot delete its successor's lease.
//!
//! The TTL is the bucket's `max_age`, set by whoever creates the bucket
//! first; later nodes read it ([`crate::Nats::lease_ttl`]), so every node
//! renews on the same clock. Renew every TTL/3.

use async_nats::jetstream::kv::{self, Operation};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};

use crate::Nats;
use crate::error::{ClusterError, bounded, classify};
use crate::names::validate_token;

/// A lease or node value is at most this many bytes (also the buckets'
/// `max_value_size`, so the server refuses larger ones).
pub const OWNER_BYTES_MAX: usize = 1024;

/// [`Leases::nodes`] reads at most this many nodes.
pub const NODES_MAX: usize = 1024;

/// A trove node: its name and where it serves.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owner {
    /// The node's name (`--node`): a short token of `[a-z0-9_-]`.
    pub node: String,
    /// The data plane's TCP address (protocol v1).
    pub tcp: String,
    /// The data plane's WebSocket address.
    pub ws: String,
    /// The control plane's address (`GET /cluster`).
    pub control: String,
}

/// The stored value of a lease: the owner, plus the epoch once renewed.
#[derive(Serialize, Deserialize)]
struct LeaseValue {
    #[serde(flatten)]
    owner: Owner,
    /// Absent in the value the create wrote (its revision is the epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    epoch: Option<u64>,
}

/// A held lease on one partition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    pub partition: u32,
    /// The revision that created the lease: higher for every later owner.
    pub epoch: u64,
    /// The revision of our last write (create or renew): the next renew
    /// and the release expect it.
    pub revision: u64,
    pub owner: Owner,
}

/// Parses a lease or node value (hostile bytes: bounded, typed errors).
fn parse_value(what: &str, bytes: &[u8]) -> Result<(Owner, Option<u64>), ClusterError> {
    let malformed = |message: String| ClusterError::Malformed { what: what.to_string(), message };
    if bytes.len() > OWNER_BYTES_MAX {
        return Err(malformed(format!("{} bytes, over the limit of {OWNER_BYTES_MAX}", bytes.len())));
    }
    let v: LeaseValue = serde_json::from_slice(bytes).map_err(|e| malformed(e.to_string()))?;
    Ok((v.owner, v.epoch))
}

/// The leases and nodes buckets of one cluster.
#[derive(Clone, Debug)]
pub struct Leases {
    nats: Nats,
}

impl Leases {
    pub(crate) fn new(nats: Nats) -> Leases {
        Leases { nats }
    }

    fn store(&self) -> &kv::Store {
        &self.presence().leases
    }

    fn presence(&self) -> &crate::Presence {
        // `Nats::leases` refuses a reader's connection.
        self.nats.inner.presence.as_ref().expect("a node's connection has the presence buckets")
    }

    fn encode(owner: &Owner, epoch: Option<u64>) -> Result<bytes::Bytes, ClusterError> {
        validate_token("node name", &owner.node)?;
        let json = serde_json::to_vec(&LeaseValue { owner: owner.clone(), epoch }).expect("an owner serialises");
        if json.len() > OWNER_BYTES_MAX {
            return Err(ClusterError::TooLarge {
                what: format!("node {}'s addresses", owner.node),
                bytes: json.len() as u64,
                max: OWNER_BYTES_MAX as u64,
            });
        }
        Ok(json.into())
    }

    /// Takes partition `partition` for `owner` if nobody holds it: `None`
    /// when another holder's lease is live. An acquire that failed
    /// `Unavailable` may still have created the lease (its answer was
    /// what got lost): until that lease expires, unrenewed, the partition
    /// reads as held, by `owner` (safe: nobody appends under it; it costs
    /// one TTL).
    pub async fn acquire(&self, partition: u32, owner: &Owner) -> Result<Option<Lease>, ClusterError> {
        let what = format!("acquiring the lease of partition {partition}");
        let value = Self::encode(owner, None)?;
        let key = self.nats.names().lease_key(partition);
        let timeout = self.nats.request_timeout();
        // A create is an update and, if that fails, a read and another
        // update: up to three requests.
        bounded(&what, timeout * 3, async {
            match self.store().create(&key, value).await {
                Ok(revision) => Ok(Some(Lease { partition, epoch: revision, revision, owner: owner.clone() })),
                Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => Ok(None),
                Err(e) => Err(classify(what.as_str(), &e, timeout)),
            }
        })
        .await
    }

    /// Renews `lease`: `Some` with the new revision while it is still
    /// ours, `None` when it is lost (expired, or another holder took it).
    pub async fn renew(&self, lease: &Lease) -> Result<Option<Lease>, ClusterError> {
        let what = format!("renewing the lease of partition {}", lease.partition);
        let value = Self::encode(&lease.owner, Some(lease.epoch))?;
        let key = self.nats.names().lease_key(lease.partition);
        let timeout = self.nats.request_timeout();
        bounded(&what, timeout, async {
            match self.store().update(&key, value, lease.revision).await {
                Ok(revision) => Ok(Some(Lease { revision, ..lease.clone() })),
                Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => Ok(None),
                Err(e) => Err(classify(what.as_str(), &e, timeout)),
            }
        })
        .await
    }

    /// Releases `lease` (a clean hand-over): `true` if it was still ours
    /// and is now free, `false` if it was already lost (a successor's
    /// lease is never deleted: the delete expects our revision).
    pub async fn release(&self, lease: Lease) -> Result<bool, ClusterError> {
        let what = format!("releasing the lease of partition {}", lease.partition);
        let key = self.nats.names().lease_key(lease.partition);
        let timeout = self.nats.request_timeout();
        bounded(&what, timeout, async {
            match self.store().delete_expect_revision(&key, Some(lease.revision)).await {
                Ok(()) => Ok(true),
                Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => Ok(false),
                Err(e) => Err(classify(what.as_str(), &e, timeout)),
            }
        })
        .await
    }

    /// Each partition `0..partitions`'s live owner and epoch, `None` where
    /// nobody holds it. A read may lag a write by a moment (KV reads may
    /// be served by any replica): the map is advice, the fenced log is
    /// the truth. One request per partition: a caller that answers the
    /// map often (`GET /cluster`) keeps it a moment rather than asking
    /// per request.
    pub async fn owners(&self, partitions: u32) -> Result<Vec<Option<(Owner, u64)>>, ClusterError> {
        let timeout = self.nats.request_timeout();
        let mut map = Vec::with_capacity(partitions as usize);
        for p in 0..partitions {
            let what = format!("reading the lease of partition {p}");
            let key = self.nats.names().lease_key(p);
            let entry = bounded(&what, timeout, async {
                self.store().entry(key).await.map_err(|e| classify(what.as_str(), &e, timeout))
            })
            .await?;
            map.push(match entry {
                // A value that does not parse (written by hand, or by
                // another program) names no node to send clients to: the
                // partition shows no owner, and nobody can acquire it until
                // the key expires. One bad key must not hide the others.
                Some(e) if e.operation == Operation::Put => {
                    parse_value(&what, &e.value).ok().map(|(owner, epoch)| (owner, epoch.unwrap_or(e.revision)))
                }
                _ => None,
            });
        }
        Ok(map)
    }

    /// Announces `owner` as alive in the nodes bucket (put it every TTL/3:
    /// an entry expires after the TTL).
    pub async fn announce(&self, owner: &Owner) -> Result<(), ClusterError> {
        let what = format!("announcing node {}", owner.node);
        let value = Self::encode(owner, None)?;
        let timeout = self.nats.request_timeout();
        bounded(&what, timeout, async {
            self.presence().nodes.put(&owner.node, value).await.map_err(|e| classify(what.as_str(), &e, timeout))
        })
        .await?;
        Ok(())
    }

    /// Removes `node` from the nodes bucket (a clean leave: the others
    /// count it gone at once, not a TTL later).
    pub async fn depart(&self, node: &str) -> Result<(), ClusterError> {
        let what = format!("removing node {node}");
        let timeout = self.nats.request_timeout();
        bounded(&what, timeout, async {
            self.presence().nodes.delete(node).await.map_err(|e| classify(what.as_str(), &e, timeout))
        })
        .await
    }

    /// The nodes announced within the last TTL, by name (at most
    /// [`NODES_MAX`]).
    pub async fn nodes(&self) -> Result<Vec<Owner>, ClusterError> {
        let what = "listing the cluster's nodes";
        let timeout = self.nats.request_timeout();
        let nodes = &self.presence().nodes;
        let keys = bounded(what, timeout * 2, async {
            let mut keys = nodes.keys().await.map_err(|e| classify(what, &e, timeout))?;
            let mut out = Vec::new();
            while let Some(k) = keys.next().await {
                let k = k.map_err(|e| classify(what, &e, timeout))?;
                if out.len() == NODES_MAX {
                    break;
                }
                out.push(k);
            }
            Ok(out)
        })
        .await?;
        let mut out = Vec::with_capacity(keys.len());
        for k in keys {
            let entry =
                bounded(what, timeout, async { nodes.entry(k).await.map_err(|e| classify(what, &e, timeout)) }).await?;
            if let Some(e) = entry
                && e.operation == Operation::Put
            {
                out.push(parse_value(what, &e.value)?.0);
            }
        }
        out.sort_by(|a, b| a.node.cmp(&b.node));
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_value_is_the_owner_json_plus_the_epoch_once_renewed() {
        let owner = Owner {
            node: "a".to_string(),
            tcp: "127.0.0.1:7400".to_string(),
            ws: "127.0.0.1:7401".to_string(),
            control: "127.0.0.1:7480".to_string(),
        };
        let created = Leases::encode(&owner, None).unwrap();
        assert_eq!(
            &created[..],
            br#"{"node":"a","tcp":"127.0.0.1:7400","ws":"127.0.0.1:7401","control":"127.0.0.1:7480"}"#
        );
        assert_eq!(parse_value("t", &created).unwrap(), (owner.clone(), None));
        let renewed = Leases::encode(&owner, Some(41)).unwrap();
        assert_eq!(parse_value("t", &renewed).unwrap(), (owner, Some(41)));
    }

    #[test]
    fn hostile_values_are_typed_errors() {
        for bad in [&b""[..], b"{}", b"[1]", b"{\"node\":1}", &[b' '; OWNER_BYTES_MAX + 1]] {
            assert!(matches!(parse_value("t", bad), Err(ClusterError::Malformed { .. })), "{bad:?}");
        }
    }
}
