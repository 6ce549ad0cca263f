//! Partition snapshots in the `trove_C_snapshots` object store, one
//! object `pN` per partition (the trove-journal snapshot format; its
//! `next_batch` is the first stream sequence it does not cover). Store
//! the snapshot first, purge the stream below it second: a crash between
//! leaves both, and recovery replays from the snapshot's sequence.
//!
//! Sizes are bounded both ways: a put over the limit is refused before
//! anything is sent, and a get reads the object's size first and refuses
//! one over the limit without reading it (an object is hostile input).

use std::time::Duration;

use async_nats::jetstream::object_store::{self, ObjectStore};
use bytes::Bytes;
use tokio::io::AsyncReadExt;

use crate::Nats;
use crate::error::{ClusterError, bounded, classify};

/// A snapshot is at most this many bytes (the default limit).
pub const SNAPSHOT_BYTES_MAX: u64 = 1 << 30;

/// A put or get of a whole snapshot must finish within this (its chunks
/// are requests of their own, each bounded by the request timeout).
pub const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(120);

/// A stored snapshot's description: `next=<first sequence it does not
/// cover>`.
const NEXT_PREFIX: &str = "next=";

/// Snapshot objects a partition may have at once (normally one, two while
/// one replaces another): more is not a trove-made store.
const SNAPSHOT_OBJECTS_MAX: usize = 1 << 16;

/// A cluster's snapshots.
#[derive(Clone)]
pub struct Snapshots {
    nats: Nats,
    store: ObjectStore,
    bytes_max: u64,
}

impl std::fmt::Debug for Snapshots {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshots").field("bytes_max", &self.bytes_max).finish()
    }
}

impl Snapshots {
    /// Opens the cluster's object store, creating it if absent, with the
    /// limit [`SNAPSHOT_BYTES_MAX`].
    pub async fn open(nats: &Nats) -> Result<Snapshots, ClusterError> {
        Snapshots::open_with_limit(nats, SNAPSHOT_BYTES_MAX).await
    }

    /// [`Snapshots::open`] with another size limit (tests use a small one).
    pub async fn open_with_limit(nats: &Nats, bytes_max: u64) -> Result<Snapshots, ClusterError> {
        let bucket = nats.names().snapshots_bucket();
        let what = format!("opening object store {bucket}");
        let timeout = nats.request_timeout();
        let js = nats.jetstream();
        let store = bounded(&what, timeout * 3, async {
            match js.get_object_store(&bucket).await {
                Ok(s) => Ok(s),
                Err(_) => match js
                    .create_object_store(object_store::Config {
                        bucket: bucket.clone(),
                        num_replicas: nats.replicas(),
                        storage: async_nats::jetstream::stream::StorageType::File,
                        ..Default::default()
                    })
                    .await
                {
                    Ok(s) => Ok(s),
                    // Another node created it meanwhile.
                    Err(e) => js.get_object_store(&bucket).await.map_err(|_| classify(what.as_str(), &e, timeout)),
                },
            }
        })
        .await?;
        Ok(Snapshots { nats: nats.clone(), store, bytes_max })
    }

    /// Opens the cluster's object store if it exists, creating nothing
    /// (for a reader: `trove replay --cluster`).
    pub async fn open_existing(nats: &Nats) -> Result<Option<Snapshots>, ClusterError> {
        let bucket = nats.names().snapshots_bucket();
        let what = format!("opening object store {bucket}");
        let timeout = nats.request_timeout();
        let js = nats.jetstream();
        let store = bounded(&what, timeout * 2, async {
            match js.get_object_store(&bucket).await {
                Ok(s) => Ok(Some(s)),
                Err(e) if crate::is_stream_not_found(&e) => Ok(None),
                Err(e) => Err(classify(what.as_str(), &e, timeout)),
            }
        })
        .await?;
        Ok(store.map(|store| Snapshots { nats: nats.clone(), store, bytes_max: SNAPSHOT_BYTES_MAX }))
    }

    /// Stores `bytes` as partition `partition`'s snapshot, replacing the
    /// one before (the old one stays readable until the new one is whole).
    pub async fn put(&self, partition: u32, bytes: &[u8]) -> Result<(), ClusterError> {
        let what = format!("storing partition {partition}'s snapshot");
        if bytes.len() as u64 > self.bytes_max {
            return Err(ClusterError::TooLarge { what, bytes: bytes.len() as u64, max: self.bytes_max });
        }
        let name = self.nats.names().snapshot_object(partition);
        let timeout = self.nats.request_timeout();
        let mut reader = bytes;
        bounded(&what, SNAPSHOT_TIMEOUT, async {
            self.store.put(name.as_str(), &mut reader).await.map_err(|e| classify(what.as_str(), &e, timeout))
        })
        .await?;
        Ok(())
    }

    /// Stores `bytes`, a snapshot that covers the stream below `next`, as
    /// partition `partition`'s, unless one stored covers as much or more.
    /// Each snapshot is an object of its own, named after what it covers
    /// (`p<N>-<next>`), and [`Snapshots::get`] reads the one that covers
    /// most: an owner deposed while it was snapshotting can store an older
    /// snapshot, but never in place of its successor's, whose purge already
    /// removed what the older one would need (the simulator's
    /// `snapshot-replaces` case, docs/decisions/0039). Older objects of the
    /// partition are then removed (best effort). Returns whether it stored
    /// it.
    pub async fn put_newer(&self, partition: u32, next: u64, bytes: &[u8]) -> Result<bool, ClusterError> {
        let what = format!("storing partition {partition}'s snapshot");
        if bytes.len() as u64 > self.bytes_max {
            return Err(ClusterError::TooLarge { what, bytes: bytes.len() as u64, max: self.bytes_max });
        }
        let stored = self.objects_of(partition).await?;
        if stored.iter().any(|&(_, n)| n >= next) {
            return Ok(false);
        }
        let name = format!("{}-{next:020}", self.nats.names().snapshot_object(partition));
        let meta = object_store::ObjectMetadata {
            name: name.clone(),
            description: Some(format!("{NEXT_PREFIX}{next}")),
            ..Default::default()
        };
        let timeout = self.nats.request_timeout();
        let mut reader = bytes;
        bounded(&what, SNAPSHOT_TIMEOUT, async {
            self.store.put(meta, &mut reader).await.map_err(|e| classify(what.as_str(), &e, timeout))
        })
        .await?;
        for (old, n) in stored {
            if n < next {
                let deleting =
                    async { self.store.delete(old.as_str()).await.map_err(|e| classify(what.as_str(), &e, timeout)) };
                let _ = bounded(&what, timeout, deleting).await;
            }
        }
        Ok(true)
    }

    /// The `next` of partition `partition`'s newest snapshot (what
    /// [`Snapshots::get`] would read), without reading it.
    pub async fn newest_next(&self, partition: u32) -> Result<Option<u64>, ClusterError> {
        Ok(self.objects_of(partition).await?.into_iter().map(|(_, n)| n).max())
    }

    /// Partition `partition`'s snapshot objects and the `next` each
    /// covers: `p<N>-<next>` objects, and a `p<N>` object ([`Snapshots::put`])
    /// as covering its description's `next=`, or 0.
    async fn objects_of(&self, partition: u32) -> Result<Vec<(String, u64)>, ClusterError> {
        use futures_util::StreamExt;
        let what = format!("listing partition {partition}'s snapshots");
        let base = self.nats.names().snapshot_object(partition);
        let timeout = self.nats.request_timeout();
        bounded(&what, SNAPSHOT_TIMEOUT, async {
            let mut list = self.store.list().await.map_err(|e| classify(what.as_str(), &e, timeout))?;
            let mut out = Vec::new();
            while let Some(info) = list.next().await {
                let info = info.map_err(|e| classify(what.as_str(), &e, timeout))?;
                if info.deleted {
                    continue;
                }
                let next = if info.name == base {
                    info.description.as_deref().and_then(|d| d.strip_prefix(NEXT_PREFIX)).and_then(|n| n.parse().ok())
                } else {
                    info.name.strip_prefix(base.as_str()).and_then(|r| r.strip_prefix('-')).and_then(|n| n.parse().ok())
                };
                match next {
                    Some(n) => out.push((info.name, n)),
                    None if info.name == base => out.push((info.name, 0)),
                    None => {}
                }
                if out.len() > SNAPSHOT_OBJECTS_MAX {
                    return Err(ClusterError::Malformed {
                        what: what.clone(),
                        message: format!("more than {SNAPSHOT_OBJECTS_MAX} snapshot objects"),
                    });
                }
            }
            Ok(out)
        })
        .await
    }

    /// Partition `partition`'s snapshot, `None` if it has none.
    pub async fn get(&self, partition: u32) -> Result<Option<Bytes>, ClusterError> {
        let what = format!("reading partition {partition}'s snapshot");
        // The one that covers most (see `put_newer`).
        let Some((name, _)) = self.objects_of(partition).await?.into_iter().max_by_key(|&(_, n)| n) else {
            return Ok(None);
        };
        let timeout = self.nats.request_timeout();
        bounded(&what, SNAPSHOT_TIMEOUT, async {
            let info = match self.store.info(name.as_str()).await {
                Ok(info) => info,
                Err(e) if e.kind() == object_store::InfoErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(classify(what.as_str(), &e, timeout)),
            };
            if info.deleted {
                return Ok(None);
            }
            if info.size as u64 > self.bytes_max {
                return Err(ClusterError::TooLarge {
                    what: what.clone(),
                    bytes: info.size as u64,
                    max: self.bytes_max,
                });
            }
            let object = match self.store.get(name.as_str()).await {
                Ok(o) => o,
                Err(e) if e.kind() == object_store::GetErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(classify(what.as_str(), &e, timeout)),
            };
            // The info said its size; read at most one byte more than the
            // limit, so a lying object cannot make us allocate without bound.
            let mut out = Vec::with_capacity(info.size);
            object
                .take(self.bytes_max + 1)
                .read_to_end(&mut out)
                .await
                .map_err(|e| classify(what.as_str(), &e, timeout))?;
            if out.len() as u64 > self.bytes_max {
                return Err(ClusterError::TooLarge {
                    what: what.clone(),
                    bytes: out.len() as u64,
                    max: self.bytes_max,
                });
            }
            if out.len() != info.size {
                return Err(ClusterError::Malformed {
                    what: what.clone(),
                    message: format!("{} bytes read, its info says {}", out.len(), info.size),
                });
            }
            Ok(Some(Bytes::from(out)))
        })
        .await
    }
}
