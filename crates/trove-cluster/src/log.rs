//! [`PartitionLog`]: one partition's journal as a JetStream stream
//! (`trove_C_pN`, subject `trove.C.p.N`, file storage, R replicas, no
//! limits that drop messages). Each message is one journal frame.
//!
//! Every write is fenced: it carries `Nats-Expected-Last-Sequence`, the
//! last stream sequence the writer knows, and the stream refuses it if
//! anything was appended since ([`ClusterError::Fenced`]). A new owner,
//! after replaying to the end, appends a fence ([`PartitionLog::fence`]:
//! empty payload, header `Trove-Fence: <epoch>`), so the deposed owner's
//! next append fails even if it never noticed it lost the lease.
//!
//! A refusal is not yet a fence: JetStream checks the expected sequence
//! against its leader's sequence, which counts messages proposed and not
//! yet committed (a try that timed out without quorum), and it checks it
//! before the message id (`Nats-Msg-Id`, the caller's name for the
//! payload), so a retry of a try that did land is refused too. On a
//! refusal the log reads the message after the expected sequence: ours
//! (an earlier try landed) is success, another writer's is
//! [`ClusterError::Fenced`], none yet is
//! [`ClusterError::Unavailable`] ([`Unavailability::Uncommitted`]).

use std::sync::Arc;
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::consumer::{DeliverPolicy, pull};
use async_nats::jetstream::context::{PublishAckFuture, PublishErrorKind};
use async_nats::jetstream::{self, stream};
use bytes::Bytes;
use futures_util::StreamExt;

use crate::Nats;
use crate::error::{ClusterError, Unavailability, bounded, chain, classify};

/// The header a fence message carries: the new owner's lease epoch.
pub const FENCE_HEADER: &str = "Trove-Fence";

/// Bytes of a message's budget kept for its headers (expected sequence,
/// message id, fence): [`Nats::payload_max`] is the server's
/// `max_payload` less this.
pub const HEADERS_BYTES_RESERVED: usize = 512;

/// A reader pulls at most this many messages per batch: with messages of
/// at most `max_payload` bytes, what a read holds is bounded.
pub const READ_BATCH_MESSAGES_MAX: i64 = 16;

/// The message id of the marker an owner under `epoch` appends at `seq`
/// before it stores a snapshot ([`PartitionLog::mark`]).
pub fn mark_msg_id(epoch: u64, seq: u64) -> String {
    format!("mark-{epoch}-{seq}")
}

/// The message id of the fence a new owner under `epoch` appends.
pub fn fence_msg_id(epoch: u64) -> String {
    format!("fence-{epoch}")
}

/// One message read back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogEntry {
    /// Its stream sequence.
    pub seq: u64,
    /// `Some(epoch)` for a fence message (its payload is empty): replay
    /// skips it.
    pub fence: Option<u64>,
    pub payload: Bytes,
}

/// The first and last sequence in a stream (`last == 0`: never written;
/// `first > last`: everything purged).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LogBounds {
    pub first: u64,
    pub last: u64,
}

/// One partition's stream; cheap to clone (an append in flight holds one).
#[derive(Clone, Debug)]
pub struct PartitionLog {
    inner: Arc<LogInner>,
}

/// What the clones of a [`PartitionLog`] share.
#[derive(Debug)]
pub struct LogInner {
    nats: Nats,
    partition: u32,
    stream_name: String,
    subject: String,
    stream: stream::Stream,
}

impl std::ops::Deref for PartitionLog {
    type Target = LogInner;
    fn deref(&self) -> &LogInner {
        &self.inner
    }
}

impl PartitionLog {
    /// Opens partition `partition`'s stream, creating it (with the
    /// connection's replicas) if absent.
    pub async fn ensure(nats: &Nats, partition: u32) -> Result<PartitionLog, ClusterError> {
        let names = nats.names();
        let stream_name = names.stream(partition);
        let subject = names.subject(partition);
        let what = format!("opening stream {stream_name}");
        let timeout = nats.request_timeout();
        let js = nats.jetstream();
        let config = stream::Config {
            name: stream_name.clone(),
            subjects: vec![subject.clone()],
            storage: stream::StorageType::File,
            num_replicas: nats.replicas(),
            // No limit that drops messages: the stream is the journal.
            max_messages: -1,
            max_bytes: -1,
            max_age: Duration::ZERO,
            discard: stream::DiscardPolicy::New,
            duplicate_window: Duration::from_secs(120),
            allow_direct: true,
            ..Default::default()
        };
        let wanted = config.clone();
        let stream = bounded(&what, timeout * 2, async {
            match js.get_stream(&stream_name).await {
                Ok(s) => Ok(s),
                Err(e) if is_not_found(&e) => {
                    js.get_or_create_stream(config).await.map_err(|e| classify(what.as_str(), &e, timeout))
                }
                Err(e) => Err(classify(what.as_str(), &e, timeout)),
            }
        })
        .await?;
        check_stream(&stream.cached_info().config, &wanted)?;
        Ok(PartitionLog { inner: Arc::new(LogInner { nats: nats.clone(), partition, stream_name, subject, stream }) })
    }

    /// Opens partition `partition`'s stream if it exists, creating
    /// nothing (for a reader: `trove replay --cluster`); `None` if the
    /// partition was never written. Its replicas are whatever the cluster
    /// made it with; its subject and limits are checked as on a node.
    pub async fn open_existing(nats: &Nats, partition: u32) -> Result<Option<PartitionLog>, ClusterError> {
        let names = nats.names();
        let stream_name = names.stream(partition);
        let subject = names.subject(partition);
        let what = format!("opening stream {stream_name}");
        let timeout = nats.request_timeout();
        let js = nats.jetstream();
        let stream = bounded(&what, timeout * 2, async {
            match js.get_stream(&stream_name).await {
                Ok(s) => Ok(Some(s)),
                Err(e) if is_not_found(&e) => Ok(None),
                Err(e) => Err(classify(what.as_str(), &e, timeout)),
            }
        })
        .await?;
        let Some(stream) = stream else { return Ok(None) };
        let found = &stream.cached_info().config;
        let wanted =
            stream::Config { subjects: vec![subject.clone()], num_replicas: found.num_replicas, ..Default::default() };
        check_stream(found, &wanted)?;
        Ok(Some(PartitionLog {
            inner: Arc::new(LogInner { nats: nats.clone(), partition, stream_name, subject, stream }),
        }))
    }

    /// Its partition.
    pub fn partition(&self) -> u32 {
        self.partition
    }

    /// The stream's first and last sequence now.
    pub async fn bounds(&self) -> Result<LogBounds, ClusterError> {
        let what = format!("reading stream {}'s state", self.stream_name);
        let timeout = self.nats.request_timeout();
        let info = bounded(&what, timeout, async {
            self.stream.get_info().await.map_err(|e| classify(what.as_str(), &e, timeout))
        })
        .await?;
        Ok(LogBounds { first: info.state.first_sequence, last: info.state.last_sequence })
    }

    /// The stream's last sequence (0: never written).
    pub async fn last_seq(&self) -> Result<u64, ClusterError> {
        Ok(self.bounds().await?.last)
    }

    fn check_size(&self, payload: &Bytes) -> Result<(), ClusterError> {
        let max = self.nats.payload_max();
        if payload.len() > max {
            return Err(ClusterError::TooLarge {
                what: format!("a message to partition {}", self.partition),
                bytes: payload.len() as u64,
                max: max as u64,
            });
        }
        Ok(())
    }

    /// Sends an append of `payload` expecting the stream's last sequence
    /// to be `expected_last_seq`, without waiting for its acknowledgement:
    /// [`PendingAppend::wait`] waits. Appends sent in a row may pipeline
    /// (each expecting the one before's sequence, `expected + 1`, ...).
    /// `msg_id` names this payload (non-empty: a retry of the same payload
    /// with the same id and expectation returns the sequence it landed at).
    pub async fn start_append(
        &self,
        expected_last_seq: u64,
        payload: Bytes,
        msg_id: &str,
    ) -> Result<PendingAppend, ClusterError> {
        self.check_size(&payload)?;
        let mut headers = HeaderMap::new();
        headers.insert(async_nats::header::NATS_EXPECTED_LAST_SEQUENCE, expected_last_seq.to_string().as_str());
        if !msg_id.is_empty() {
            headers.insert(async_nats::header::NATS_MESSAGE_ID, msg_id);
        }
        self.send(expected_last_seq, headers, payload, msg_id).await
    }

    /// [`PartitionLog::start_append`] that also expects the stream's last
    /// message to be `expected_last_id` (`Nats-Expected-Last-Msg-Id`). A
    /// writer pipelining several messages expects each one's predecessor
    /// by id as well as by sequence: if its first message is refused
    /// because a new owner's fence took that sequence, the second, which
    /// expects exactly the fence's sequence, is refused too, instead of
    /// landing after the fence (the simulator's `sequence-only` case,
    /// docs/decisions/0039).
    pub async fn start_append_after(
        &self,
        expected_last_seq: u64,
        expected_last_id: &str,
        payload: Bytes,
        msg_id: &str,
    ) -> Result<PendingAppend, ClusterError> {
        self.check_size(&payload)?;
        let mut headers = HeaderMap::new();
        headers.insert(async_nats::header::NATS_EXPECTED_LAST_SEQUENCE, expected_last_seq.to_string().as_str());
        headers.insert(async_nats::header::NATS_EXPECTED_LAST_MESSAGE_ID, expected_last_id);
        if !msg_id.is_empty() {
            headers.insert(async_nats::header::NATS_MESSAGE_ID, msg_id);
        }
        self.send(expected_last_seq, headers, payload, msg_id).await
    }

    async fn send(
        &self,
        expected: u64,
        headers: HeaderMap,
        payload: Bytes,
        msg_id: &str,
    ) -> Result<PendingAppend, ClusterError> {
        let what = format!("appending to partition {}", self.partition);
        let timeout = self.nats.request_timeout();
        let ack = bounded(&what, timeout, async {
            self.nats
                .jetstream()
                .publish_with_headers(self.subject.clone(), headers, payload)
                .await
                .map_err(|e| publish_error(&what, self.partition, expected, &e, timeout))
        })
        .await?;
        Ok(PendingAppend { log: self.clone(), msg_id: msg_id.to_string(), expected, timeout, ack })
    }

    /// Appends `payload` expecting the stream's last sequence to be
    /// `expected_last_seq`; returns its sequence once JetStream
    /// acknowledged it (stored on a quorum of the replicas). Fails with
    /// [`ClusterError::Fenced`] if another writer's message (or a fence)
    /// follows `expected_last_seq`, and [`ClusterError::Unavailable`] if
    /// no quorum answered in time. If an earlier try of this `msg_id` with
    /// this expectation landed (its acknowledgement lost), returns its
    /// sequence: nothing is stored twice.
    pub async fn append(&self, expected_last_seq: u64, payload: Bytes, msg_id: &str) -> Result<u64, ClusterError> {
        self.start_append(expected_last_seq, payload, msg_id).await?.wait().await
    }

    /// Appends a fence for `epoch` (empty payload, header
    /// [`FENCE_HEADER`]) expecting the last sequence `expected_last_seq`:
    /// every writer that still expects an older sequence is refused from
    /// now on. Returns the fence's sequence (a retry after an unknown
    /// outcome is recognised as [`PartitionLog::append`]'s are: the fence
    /// carries the message id `fence-<epoch>`).
    pub async fn fence(&self, expected_last_seq: u64, epoch: u64) -> Result<u64, ClusterError> {
        let msg_id = fence_msg_id(epoch);
        let mut headers = HeaderMap::new();
        headers.insert(async_nats::header::NATS_EXPECTED_LAST_SEQUENCE, expected_last_seq.to_string().as_str());
        headers.insert(async_nats::header::NATS_MESSAGE_ID, msg_id.as_str());
        headers.insert(FENCE_HEADER, epoch.to_string().as_str());
        self.send(expected_last_seq, headers, Bytes::new(), &msg_id).await?.wait().await
    }

    /// Appends a fence-like marker for `epoch` (empty payload, header
    /// [`FENCE_HEADER`], skipped by replay) expecting `expected_last_seq`:
    /// proof, before a snapshot is stored, that this writer still owns the
    /// stream (a deposed one is refused here, as at any append). Its
    /// message id names its place, so a retry is recognised.
    pub async fn mark(&self, expected_last_seq: u64, epoch: u64) -> Result<u64, ClusterError> {
        let msg_id = mark_msg_id(epoch, expected_last_seq + 1);
        let mut headers = HeaderMap::new();
        headers.insert(async_nats::header::NATS_EXPECTED_LAST_SEQUENCE, expected_last_seq.to_string().as_str());
        headers.insert(async_nats::header::NATS_MESSAGE_ID, msg_id.as_str());
        headers.insert(FENCE_HEADER, epoch.to_string().as_str());
        self.send(expected_last_seq, headers, Bytes::new(), &msg_id).await?.wait().await
    }

    /// A write expecting `expected` was refused for a wrong last sequence
    /// (the stream's leader says `actual`). JetStream counts messages it
    /// has proposed but not committed (a try without quorum) in that
    /// sequence, so the refusal alone does not say another writer won:
    /// read what follows `expected`. Ours (`msg_id`: an earlier try that
    /// landed): its sequence. Another's: [`ClusterError::Fenced`]. Nothing
    /// committed there yet: [`Unavailability::Uncommitted`].
    async fn resolve_refusal(&self, expected: u64, msg_id: &str, actual: Option<u64>) -> Result<u64, ClusterError> {
        let fenced = ClusterError::Fenced { partition: self.partition, expected, actual };
        match self.message_at(expected + 1).await? {
            Some(id) if !msg_id.is_empty() && id.as_deref() == Some(msg_id) => Ok(expected + 1),
            Some(_) => Err(fenced),
            None => {
                let bounds = self.bounds().await?;
                if bounds.first > expected + 1 {
                    // Purged past it: the writer is far behind.
                    Err(fenced)
                } else {
                    // Nothing committed there yet, or a replica that has
                    // not applied it yet answered the read (direct gets
                    // may be served by any replica): whose message it is
                    // cannot be told now, so the writer asks again later.
                    Err(ClusterError::Unavailable {
                        what: format!("appending to partition {}", self.partition),
                        why: Unavailability::Uncommitted { expected, actual },
                    })
                }
            }
        }
    }

    /// The message id of the message at `seq`: `None` if there is no
    /// message there, `Some(None)` if it has no id. Read from the stream's
    /// leader (committed messages only).
    async fn message_at(&self, seq: u64) -> Result<Option<Option<String>>, ClusterError> {
        let what = format!("reading partition {} at {seq}", self.partition);
        let timeout = self.nats.request_timeout();
        bounded(&what, timeout, async {
            match self.stream.get_raw_message(seq).await {
                Ok(m) => Ok(Some(m.headers.get(async_nats::header::NATS_MESSAGE_ID).map(|v| v.as_str().to_string()))),
                Err(e) if e.kind() == stream::LastRawMessageErrorKind::NoMessageFound => Ok(None),
                Err(e) => Err(classify(what.as_str(), &e, timeout)),
            }
        })
        .await
    }

    /// Whether an append of `msg_id` that expected `expected_last_seq`
    /// landed: `Some(its sequence)` if the message right after
    /// `expected_last_seq` carries `msg_id` (for a writer that gave up on
    /// an append whose outcome is unknown, and wants to know).
    pub async fn appended_as(&self, expected_last_seq: u64, msg_id: &str) -> Result<Option<u64>, ClusterError> {
        let seq = expected_last_seq + 1;
        let id = self.message_at(seq).await?.flatten();
        Ok((!msg_id.is_empty() && id.as_deref() == Some(msg_id)).then_some(seq))
    }

    /// Reads the stream from `from_seq` (or its first sequence, if that
    /// was purged) up to its last sequence at the time of this call, in
    /// order.
    pub async fn read(&self, from_seq: u64) -> Result<LogReader, ClusterError> {
        let bounds = self.bounds().await?;
        let start = from_seq.max(bounds.first).max(1);
        let mut reader = LogReader {
            partition: self.partition,
            next: start,
            last: bounds.last,
            messages: None,
            timeout: self.nats.request_timeout(),
        };
        if start > bounds.last {
            return Ok(reader);
        }
        let what = format!("reading partition {} from {start}", self.partition);
        let timeout = self.nats.request_timeout();
        let messages = bounded(&what, timeout * 2, async {
            let consumer = self
                .stream
                .create_consumer(pull::OrderedConfig {
                    filter_subject: self.subject.clone(),
                    deliver_policy: DeliverPolicy::ByStartSequence { start_sequence: start },
                    max_batch: READ_BATCH_MESSAGES_MAX,
                    ..Default::default()
                })
                .await
                .map_err(|e| classify(what.as_str(), &e, timeout))?;
            consumer.messages().await.map_err(|e| classify(what.as_str(), &e, timeout))
        })
        .await?;
        reader.messages = Some(messages);
        Ok(reader)
    }

    /// Deletes every message below `seq` (after a snapshot that covers
    /// them is stored). Returns how many went.
    pub async fn purge_below(&self, seq: u64) -> Result<u64, ClusterError> {
        let what = format!("purging partition {} below {seq}", self.partition);
        let timeout = self.nats.request_timeout();
        let r = bounded(&what, timeout, async {
            self.stream.purge().sequence(seq).await.map_err(|e| classify(what.as_str(), &e, timeout))
        })
        .await?;
        Ok(r.purged)
    }
}

/// An append sent and not yet acknowledged.
pub struct PendingAppend {
    /// To read what follows `expected` if the append is refused.
    log: PartitionLog,
    msg_id: String,
    expected: u64,
    timeout: Duration,
    ack: PublishAckFuture,
}

impl std::fmt::Debug for PendingAppend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingAppend")
            .field("partition", &self.log.partition)
            .field("expected", &self.expected)
            .field("msg_id", &self.msg_id)
            .finish()
    }
}

impl PendingAppend {
    /// Waits for the acknowledgement: the message's sequence. A refusal
    /// for a wrong last sequence is resolved by reading what follows the
    /// expected one ([`PartitionLog::append`] says how).
    pub async fn wait(self) -> Result<u64, ClusterError> {
        let PendingAppend { log, msg_id, expected, timeout, ack } = self;
        let what = format!("appending to partition {}", log.partition);
        // The client's ack timeout is the same; this bounds it for sure.
        let acked = bounded(&what, timeout + Duration::from_millis(500), async {
            ack.await.map(|ack| ack.sequence).map_err(|e| publish_error(&what, log.partition, expected, &e, timeout))
        })
        .await;
        match acked {
            Err(ClusterError::Fenced { actual, .. }) => log.resolve_refusal(expected, &msg_id, actual).await,
            r => r,
        }
    }
}

/// Checks that a stream found under a partition's name is one this node
/// can use as its journal: its subject, the cluster's replicas, and no
/// limit that would drop messages (it may have been made by hand, or by a
/// node started with other `--replicas`).
fn check_stream(found: &stream::Config, wanted: &stream::Config) -> Result<(), ClusterError> {
    let mismatch =
        |field: &'static str, found: String, wanted: String| Err(ClusterError::ConfigMismatch { field, found, wanted });
    if found.subjects != wanted.subjects {
        return mismatch("stream subjects", format!("{:?}", found.subjects), format!("{:?}", wanted.subjects));
    }
    if found.num_replicas != wanted.num_replicas {
        return mismatch("replicas", found.num_replicas.to_string(), wanted.num_replicas.to_string());
    }
    let drops = found.max_messages > 0
        || found.max_bytes > 0
        || found.max_age > Duration::ZERO
        || found.max_messages_per_subject > 0
        || found.retention != stream::RetentionPolicy::Limits;
    if drops {
        return mismatch(
            "stream limits",
            format!(
                "max_msgs {} max_bytes {} max_age {:?} max_msgs_per_subject {} retention {:?}",
                found.max_messages, found.max_bytes, found.max_age, found.max_messages_per_subject, found.retention
            ),
            "none that drop messages (limits retention)".to_string(),
        );
    }
    Ok(())
}

/// A publish's error: a wrong last sequence is [`ClusterError::Fenced`].
fn publish_error(
    what: &str,
    partition: u32,
    expected: u64,
    e: &jetstream::context::PublishError,
    timeout: Duration,
) -> ClusterError {
    match e.kind() {
        PublishErrorKind::WrongLastSequence => {
            ClusterError::Fenced { partition, expected, actual: actual_last_sequence(&chain(e)) }
        }
        _ => classify(what, e, timeout),
    }
}

/// The stream's last sequence from JetStream's "wrong last sequence: N".
/// (async-nats's own text for the kind comes first, without the number.)
fn actual_last_sequence(text: &str) -> Option<u64> {
    const PREFIX: &str = "wrong last sequence: ";
    text.match_indices(PREFIX).find_map(|(i, _)| {
        let digits: String = text[i + PREFIX.len()..].chars().take_while(char::is_ascii_digit).collect();
        digits.parse().ok()
    })
}

/// Whether a get-stream failed because the stream does not exist.
fn is_not_found(e: &jetstream::context::GetStreamError) -> bool {
    matches!(e.kind(), jetstream::context::GetStreamErrorKind::JetStream(j)
        if j.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND)
}

/// Reads one partition's messages in order, up to the last sequence at
/// the time [`PartitionLog::read`] was called.
pub struct LogReader {
    partition: u32,
    /// The next sequence expected (messages arrive in order; a purge may
    /// skip ahead of it).
    next: u64,
    last: u64,
    messages: Option<pull::Ordered>,
    timeout: Duration,
}

impl std::fmt::Debug for LogReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogReader")
            .field("partition", &self.partition)
            .field("next", &self.next)
            .field("last", &self.last)
            .finish()
    }
}

impl LogReader {
    /// The last sequence this reader reads to.
    pub fn last(&self) -> u64 {
        self.last
    }

    /// The next message, `None` after the last.
    pub async fn next(&mut self) -> Result<Option<LogEntry>, ClusterError> {
        if self.next > self.last {
            self.messages = None;
            return Ok(None);
        }
        let Some(messages) = self.messages.as_mut() else { return Ok(None) };
        let what = format!("reading partition {} at {}", self.partition, self.next);
        let timeout = self.timeout;
        let message = bounded(&what, timeout * 2, async {
            match messages.next().await {
                Some(Ok(m)) => Ok(m),
                Some(Err(e)) => Err(classify(what.as_str(), &e, timeout)),
                None => Err(ClusterError::Protocol {
                    what: what.clone(),
                    message: "the consumer ended before the last sequence".to_string(),
                }),
            }
        })
        .await?;
        let seq = message
            .info()
            .map_err(|e| ClusterError::Protocol { what: what.clone(), message: e.to_string() })?
            .stream_sequence;
        if seq < self.next {
            return Err(ClusterError::Protocol { what, message: format!("sequence {seq} out of order") });
        }
        self.next = seq + 1;
        let fence = match message.headers.as_ref().and_then(|h| h.get(FENCE_HEADER)) {
            None => None,
            Some(v) => Some(v.as_str().parse::<u64>().map_err(|_| ClusterError::Malformed {
                what: what.clone(),
                message: format!("fence header {:?} is not an epoch", v.as_str()),
            })?),
        };
        if fence.is_some() && !message.payload.is_empty() {
            return Err(ClusterError::Malformed { what, message: "a fence with a payload".to_string() });
        }
        if seq > self.last {
            // Appended after the read began: not ours to return.
            self.messages = None;
            return Ok(None);
        }
        Ok(Some(LogEntry { seq, fence, payload: message.payload.clone() }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_actual_sequence_is_read_from_the_servers_message() {
        assert_eq!(actual_last_sequence("wrong last sequence: 17"), Some(17));
        assert_eq!(actual_last_sequence("publish failed: wrong last sequence: 3 (10071)"), Some(3));
        assert_eq!(actual_last_sequence("wrong last sequence"), None);
        assert_eq!(actual_last_sequence("nothing"), None);
        assert_eq!(
            actual_last_sequence("wrong last sequence: jetstream error: wrong last sequence: 40 (10071)"),
            Some(40)
        );
    }
}
