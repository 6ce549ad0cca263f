//! A partition rebuilt from the cluster: its newest snapshot from the
//! object store, then every message of its stream after it, through the
//! same `Rebuild` start-up recovery uses on a local journal, so the state,
//! the dedup history and the state hash are what the previous owner had
//! for everything it made durable.

use std::sync::atomic::Ordering::Relaxed;

use trove_core::{Game, Record};
use trove_journal::Entry;
use trove_journal::format::{FRAME_HEAD_BYTES, decode_body, decode_frame_head};
use trove_shard::CoreConfig;
use trove_shard::journaled::Rebuild;

use crate::metrics::ClusterMetrics;
use crate::{ClusterError, PartitionLog, Snapshots};

/// Decodes one message of a partition's stream (not a fence) into
/// `entries` (cleared first): one journal frame, whole, whose batch is the
/// message's sequence `seq`. Anything else is damage, never applied: a
/// short or long payload, a bad checksum, a frame out of place. Pure, so
/// that the simulator's model of the stream (trove-sim `cluster.rs`)
/// replays through exactly this.
pub fn decode_message<E: Record>(seq: u64, payload: &[u8], entries: &mut Vec<Entry<E>>) -> Result<(), String> {
    let (len, crc) = decode_frame_head(payload).map_err(|e| format!("message {seq}: {e}"))?;
    if payload.len() != FRAME_HEAD_BYTES + len {
        return Err(format!("message {seq}: {} bytes, its frame says {len}", payload.len()));
    }
    let body = decode_body::<E>(&payload[FRAME_HEAD_BYTES..], crc).map_err(|e| format!("message {seq}: {e}"))?;
    if body.batch != seq {
        return Err(format!("message {seq} holds batch {}: out of place", body.batch));
    }
    entries.clear();
    entries.extend(body.entries::<E>());
    Ok(())
}

/// Why a partition could not be rebuilt.
#[derive(Debug, thiserror::Error)]
pub enum RecoverError {
    /// NATS did not answer (no quorum, a timeout, ...): try again later.
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    /// The snapshot or a message does not decode, a message is out of
    /// place, or one is missing inside the stream (a hole no purge made):
    /// never applied, never skipped.
    #[error("partition {partition}: {message}")]
    Damaged { partition: u32, message: String },
    /// The stream changed under the read (its owner snapshotted and
    /// purged meanwhile): nothing was applied from a partial read; read
    /// again.
    #[error("partition {partition}: {message}")]
    Raced { partition: u32, message: String },
}

/// What a partition was rebuilt to.
#[derive(Debug)]
pub struct RecoveredPartition<G: Game> {
    pub rebuilt: Rebuild<G>,
    /// The stream's last sequence read (fences included).
    pub last: u64,
    /// Messages applied after the snapshot.
    pub replayed: u64,
    /// The snapshot's `next_batch` (1 without a snapshot).
    pub from: u64,
    /// The highest epoch of a fence (or mark) read after the snapshot, 0
    /// if none: an owner whose lease is older than this was deposed while
    /// it rebuilt and must not fence.
    pub fence_epoch_max: u64,
}

/// Rebuilds partition `log.partition()` as of the stream's last sequence
/// when the read starts. `each(seq, entries, outcomes)` sees every
/// replayed batch (for `trove replay --cluster`). `snapshots` is `None`
/// for a reader that found no object store (the cluster never took one).
pub async fn recover_partition<G: Game>(
    log: &PartitionLog,
    snapshots: Option<&Snapshots>,
    config: CoreConfig,
    metrics: Option<&ClusterMetrics>,
    mut each: impl FnMut(u64, &[Entry<G::Event>], &[G::Outcome]),
) -> Result<RecoveredPartition<G>, RecoverError> {
    let partition = log.partition();
    let damaged = |message: String| RecoverError::Damaged { partition, message };
    let mut rebuilt = Rebuild::<G>::new(partition as usize, config);
    let mut from = 1;
    let snapshot = match snapshots {
        Some(s) => s.get(partition).await?,
        None => None,
    };
    if let Some(bytes) = snapshot {
        let (meta, _) = rebuilt.load_snapshot(&bytes).map_err(|e| damaged(format!("its snapshot: {e}")))?;
        from = meta.next_batch.max(1);
    }
    let bounds = log.bounds().await?;
    let written = bounds.last > 0;
    // A purge follows the snapshot that covers it: a stream that starts
    // past the snapshot (purged to empty included: first = last + 1) lost
    // messages nothing holds here, and a snapshot past the stream's end
    // covers messages the stream does not have (a stream made anew). Both
    // are refused, not read around: another owner's newer snapshot may be
    // on its way (the takeover is tried again).
    if written && bounds.first > from {
        // Read live (`trove replay --cluster` beside a running owner), the
        // owner may have stored a newer snapshot and purged below it
        // between our snapshot read and the bounds: a race, read again.
        if let Some(s) = snapshots
            && s.newest_next(partition).await?.is_some_and(|next| next > from)
        {
            return Err(RecoverError::Raced {
                partition,
                message: format!("the stream was purged to {} after a newer snapshot than ours", bounds.first),
            });
        }
        return Err(damaged(format!(
            "the stream starts at {} but the snapshot covers only what is below {from}",
            bounds.first
        )));
    }
    if from > bounds.last + 1 {
        return Err(damaged(format!("the snapshot covers up to {from}, past the stream's end at {}", bounds.last)));
    }
    let mut reader = log.read(from).await?;
    let mut replayed = 0;
    let mut entries = Vec::new();
    // Every sequence from `from` on, none skipped (a purge during the read
    // would skip some).
    let mut expected = from;
    let mut fence_epoch_max = 0;
    while let Some(m) = reader.next().await? {
        if m.seq != expected {
            // Only a purge removes messages, and only from the front: a
            // stream that still starts at or below the missing sequence has
            // a hole (a message deleted by hand, a damaged store), which is
            // never read around. Else it was purged during the read.
            let now = log.bounds().await?;
            if now.first <= expected {
                return Err(damaged(format!(
                    "message {expected} is missing from the stream (it holds {}..={}, message {} follows {})",
                    now.first,
                    now.last,
                    m.seq,
                    expected - 1
                )));
            }
            return Err(RecoverError::Raced {
                partition,
                message: format!("message {} follows {}: messages were removed during the read", m.seq, expected - 1),
            });
        }
        expected += 1;
        if let Some(epoch) = m.fence {
            fence_epoch_max = fence_epoch_max.max(epoch);
            continue;
        }
        decode_message::<G::Event>(m.seq, &m.payload, &mut entries).map_err(damaged)?;
        let outcomes = rebuilt.apply(&entries);
        each(m.seq, &entries, outcomes);
        replayed += 1;
        if let Some(metrics) = metrics {
            metrics.replayed_messages.fetch_add(1, Relaxed);
        }
    }
    if written && expected != reader.last() + 1 {
        return Err(RecoverError::Raced {
            partition,
            message: format!(
                "the read ended at {} short of {}: messages were removed during it",
                expected - 1,
                reader.last()
            ),
        });
    }
    Ok(RecoveredPartition { rebuilt, last: reader.last(), replayed, from, fence_epoch_max })
}
