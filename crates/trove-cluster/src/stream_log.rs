//! A partition's stream as its shard's log: trove-shard's [`ShardLog`] on
//! JetStream.
//!
//! Each applied batch is encoded as journal frames (trove-journal
//! `format.rs`, CRC32C, the same bytes a segment file holds), at most one
//! message's payload each, and each frame is one message. `write` sends
//! every frame encoded since the last write, pipelined, each expecting
//! the stream's last sequence to be the one before it; `sync` waits for
//! their acknowledgements. An acknowledgement means a quorum of the
//! stream's replicas stored the message: that is the durability point in
//! cluster mode, and only then does the journal thread release the
//! producers' acknowledgements. A frame's batch number is the stream
//! sequence it must land at, so a replay can tell a frame out of place.
//!
//! Every append is fenced: if another owner appended (or fenced) after
//! the sequence this owner knows, JetStream refuses it and the log says
//! [`LogErrorKind::Fenced`]; the shard stops and its producers are told to
//! find the new owner. No quorum in time is [`LogErrorKind::Unavailable`].
//! Either way nothing that was not acknowledged by JetStream is
//! acknowledged to a producer.
//!
//! The journal thread is a plain thread: it waits on the NATS runtime with
//! `Handle::block_on`, never inside it.

use std::marker::PhantomData;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use bytes::Bytes;
use trove_core::{Record, Stamped};
use trove_journal::Run;
use trove_journal::format::{FRAME_EVENTS_MAX, FRAME_HEAD_BYTES};
use trove_shard::{LogError, LogErrorKind, ShardLog};

use crate::metrics::ClusterMetrics;
use crate::{ClusterError, PartitionLog, PendingAppend, Snapshots};

/// One partition's stream, appended to by the node that owns it.
pub struct StreamLog<E> {
    log: PartitionLog,
    snapshots: Snapshots,
    runtime: tokio::runtime::Handle,
    partition: u32,
    /// The owner's lease epoch (in message ids, so a retry is recognised).
    epoch: u64,
    /// The stream's last sequence as this owner knows it: the next append
    /// expects it.
    last: u64,
    /// The id of the message at `last` (this owner's fence, marker or
    /// append): the next append expects it too.
    last_id: String,
    /// Frames encoded and not yet sent, one message each.
    encoded: Vec<Bytes>,
    /// Sent and not yet acknowledged, in order.
    sent: Vec<PendingAppend>,
    /// A frame's body is at most this (a message's payload, less the
    /// frame head).
    body_bytes_max: usize,
    metrics: Arc<ClusterMetrics>,
    _records: PhantomData<fn(E)>,
}

impl<E> std::fmt::Debug for StreamLog<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamLog")
            .field("partition", &self.partition)
            .field("epoch", &self.epoch)
            .field("last", &self.last)
            .finish_non_exhaustive()
    }
}

impl<E> StreamLog<E> {
    /// The log of a partition whose stream ends at `last`, the new owner's
    /// fence (`crate::log::fence_msg_id(epoch)`), appended to under lease
    /// `epoch`.
    pub fn new(
        log: PartitionLog,
        snapshots: Snapshots,
        runtime: tokio::runtime::Handle,
        epoch: u64,
        last: u64,
        payload_max: usize,
        metrics: Arc<ClusterMetrics>,
    ) -> Self {
        let partition = log.partition();
        Self {
            log,
            snapshots,
            runtime,
            partition,
            epoch,
            last,
            last_id: crate::log::fence_msg_id(epoch),
            encoded: Vec::new(),
            sent: Vec::new(),
            body_bytes_max: payload_max.saturating_sub(FRAME_HEAD_BYTES),
            metrics,
            _records: PhantomData,
        }
    }

    /// The stream sequence the next encoded frame will land at.
    fn next_seq(&self) -> u64 {
        self.last + 1 + (self.sent.len() + self.encoded.len()) as u64
    }
}

/// Encodes an applied batch as a stream's messages: journal frames of at
/// most `body_bytes_max` body bytes, numbered from `first_seq` (the stream
/// sequence each must land at), one message each, in order. Shared with
/// the simulator's model of the stream (trove-sim `cluster.rs`).
pub fn encode_messages<E: Record>(
    first_seq: u64,
    durable_below: u64,
    runs: &[Run<'_>],
    parts: &[Vec<Stamped<E>>],
    time_us: Option<u64>,
    body_bytes_max: usize,
    mut message: impl FnMut(Vec<u8>),
) {
    trove_journal::encode_bounded(
        first_seq,
        durable_below,
        runs,
        parts,
        time_us,
        body_bytes_max,
        FRAME_EVENTS_MAX,
        |_, frame| message(frame),
    );
}

/// The message id of an owner's append at stream sequence `seq` under
/// lease `epoch`: a retry of the same append is recognised by it.
pub fn append_msg_id(partition: u32, epoch: u64, seq: u64) -> String {
    format!("p{partition}-e{epoch}-s{seq}")
}

/// A cluster error as the journal thread takes it: someone else's append
/// is `Fenced`; anything else means the batch could not be made durable
/// now (`Unavailable`). Never `Io`: a cluster's log failing stops its
/// partition, not the engine.
fn log_error(e: ClusterError) -> LogError {
    let kind = if e.is_fenced() { LogErrorKind::Fenced } else { LogErrorKind::Unavailable };
    LogError { kind, message: e.to_string() }
}

/// An acknowledgement at a sequence the append did not expect.
fn out_of_place(partition: u32, seq: u64, last: u64) -> LogError {
    LogError {
        kind: LogErrorKind::Fenced,
        message: format!("partition {partition}: an append was acknowledged at {seq}, expected {}", last + 1),
    }
}

impl<E: Record> ShardLog<E> for StreamLog<E> {
    fn shard(&self) -> u32 {
        self.partition
    }

    fn append(&mut self, runs: &[Run<'_>], parts: &[Vec<Stamped<E>>], time_us: Option<u64>) {
        let first = self.next_seq();
        let durable_below = self.last + 1;
        let encoded = &mut self.encoded;
        encode_messages(first, durable_below, runs, parts, time_us, self.body_bytes_max, |frame| {
            encoded.push(Bytes::from(frame))
        });
    }

    fn write(&mut self) -> Result<u64, LogError> {
        let mut bytes = 0;
        let frames = std::mem::take(&mut self.encoded);
        for frame in frames {
            let expected = self.last + self.sent.len() as u64;
            let msg_id = append_msg_id(self.partition, self.epoch, expected + 1);
            // The predecessor by id as well as by sequence: a pipelined
            // message must not land after another owner's fence.
            let after = match self.sent.is_empty() {
                true => self.last_id.clone(),
                false => append_msg_id(self.partition, self.epoch, expected),
            };
            bytes += frame.len() as u64;
            let pending = self
                .runtime
                .block_on(self.log.start_append_after(expected, &after, frame, &msg_id))
                .map_err(log_error)?;
            self.sent.push(pending);
        }
        self.metrics.appended_bytes.fetch_add(bytes, Relaxed);
        Ok(bytes)
    }

    fn sync(&mut self) -> Result<bool, LogError> {
        if self.sent.is_empty() {
            return Ok(false);
        }
        let started = Instant::now();
        for pending in std::mem::take(&mut self.sent) {
            let seq = self.runtime.block_on(pending.wait()).map_err(log_error)?;
            // Each append expected the one before it: anything else would
            // be another writer's message in between, which JetStream
            // refuses; a server that says otherwise is not trusted.
            if seq != self.last + 1 {
                return Err(out_of_place(self.partition, seq, self.last));
            }
            self.last = seq;
            self.last_id = append_msg_id(self.partition, self.epoch, seq);
            self.metrics.appends.fetch_add(1, Relaxed);
        }
        self.metrics.append_ack_ns.record(started.elapsed().as_nanos() as u64);
        Ok(true)
    }

    /// Everything before the snapshot is appended and acknowledged first,
    /// then a marker is appended (fenced like any append: a deposed owner
    /// stops here, before it could store a snapshot over its successor's);
    /// then the snapshot is stored, covering every sequence below
    /// `last + 1`; only then is the stream purged below it. A crash
    /// between the two leaves both, and recovery reads the snapshot and
    /// the messages after it.
    ///
    /// Once the batches are durable their acknowledgements are owed
    /// whatever happens to the snapshot: a snapshot that cannot be stored
    /// or a purge that fails is logged and counted, and the stream keeps
    /// what it held (the next snapshot tries again).
    fn snapshot(&mut self, bytes: &mut dyn FnMut(u64) -> Vec<u8>) -> Result<usize, LogError> {
        ShardLog::<E>::write(self)?;
        ShardLog::<E>::sync(self)?;
        let mark = self.runtime.block_on(self.log.mark(self.last, self.epoch)).map_err(log_error)?;
        if mark != self.last + 1 {
            return Err(out_of_place(self.partition, mark, self.last));
        }
        self.last = mark;
        self.last_id = crate::log::mark_msg_id(self.epoch, mark);
        let next = self.last + 1;
        let bytes = bytes(next);
        if let Err(e) = trove_journal::snapshot::decode_snapshot(&bytes) {
            tracing::warn!(target: "trove::cluster", "partition {}: a snapshot failed its own check ({e}); not stored", self.partition);
            self.metrics.snapshot_failures.fetch_add(1, Relaxed);
            return Ok(0);
        }
        match self.runtime.block_on(self.snapshots.put_newer(self.partition, next, &bytes)) {
            Ok(true) => {}
            Ok(false) => {
                // A newer one is stored: another owner took over meanwhile.
                return Err(LogError {
                    kind: LogErrorKind::Fenced,
                    message: format!("partition {}: a newer snapshot is stored", self.partition),
                });
            }
            Err(e) => {
                tracing::warn!(target: "trove::cluster", "partition {}: storing a snapshot: {e}; the stream is kept", self.partition);
                self.metrics.snapshot_failures.fetch_add(1, Relaxed);
                return Ok(0);
            }
        }
        if let Err(e) = self.runtime.block_on(self.log.purge_below(next)) {
            tracing::warn!(target: "trove::cluster", "partition {}: purging below its snapshot: {e}", self.partition);
            self.metrics.snapshot_failures.fetch_add(1, Relaxed);
        }
        self.metrics.snapshots.fetch_add(1, Relaxed);
        Ok(bytes.len())
    }
}
