//! [`SimStream`]: one partition's JetStream stream, modelled, with the
//! semantics trove-cluster's `PartitionLog` (`log.rs`) relies on and
//! promises its callers, and the faults a real one has, drawn from a seed.
//! [`SimLog`]: trove-shard's `ShardLog` over it, framed as `StreamLog`
//! frames (trove-cluster's `encode_messages`, its message ids).
//!
//! What the model keeps of JetStream:
//! - An append carries the last sequence its writer expects; the stream
//!   refuses it if its last sequence differs (fencing). A refusal is
//!   resolved as `PartitionLog` resolves one: the message after the
//!   expected sequence is the writer's own (same message id: an earlier
//!   try landed), which is success; another writer's, which is `Fenced`;
//!   or none committed yet, which is `Unavailable` (uncommitted).
//! - A fence is an empty message carrying an epoch; replay skips it.
//! - Purge below a sequence; one snapshot per partition beside the stream
//!   (the object store), replaced whole.
//! - Faults: an append refused for unavailability (no quorum, nothing
//!   lands); an append whose acknowledgement is lost (it landed, the writer
//!   hears a timeout); an append that times out without landing and is
//!   left proposed ("uncommitted"): it may land later, at the sequence it
//!   expected, and until it lands or is dropped (a leader change) the
//!   stream commits nothing else, as JetStream's leader counts it in the
//!   last sequence it checks expectations against.
//!
//! One simplification: appends happen one at a time (the real log
//! pipelines them; the order and the expectations are the same).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use trove_core::{SplitMix64, Stamped};
use trove_hunt::HuntEvent;
use trove_journal::Run;
use trove_journal::format::FRAME_HEAD_BYTES;
use trove_shard::{LogError, LogErrorKind, ShardLog};

/// The faults of a stream, in parts per million per append (or per read,
/// for `unavailable_ppm`).
#[derive(Clone, Copy, Debug, Default)]
pub struct StreamFaults {
    /// Refused: no quorum in time, nothing lands.
    pub unavailable_ppm: u32,
    /// Landed, and the writer hears a timeout.
    pub ack_lost_ppm: u32,
    /// Timed out without landing, left proposed: lands later, or is
    /// dropped.
    pub uncommitted_ppm: u32,
}

/// Why an append (or a read) failed, as `ClusterError` tells it to the
/// log's callers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StreamError {
    /// Another writer's message (or fence) follows the expected sequence.
    Fenced { expected: u64, actual: u64 },
    /// Nothing is known to have landed (it may have: a lost
    /// acknowledgement, or an uncommitted proposal that lands later).
    Unavailable(String),
}

impl std::fmt::Display for StreamError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StreamError::Fenced { expected, actual } => {
                write!(f, "fenced: expected last sequence {expected}, the stream's is {actual}")
            }
            StreamError::Unavailable(why) => write!(f, "unavailable: {why}"),
        }
    }
}

/// One message of the stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SimMessage {
    pub seq: u64,
    pub id: String,
    /// `Some(epoch)`: a fence (empty payload).
    pub fence: Option<u64>,
    pub payload: Vec<u8>,
    /// The lease epoch of the writer that sent it (for the checks only:
    /// no reader decides anything by it).
    pub writer_epoch: u64,
}

/// One partition's stream.
#[derive(Debug)]
pub struct SimStream {
    partition: u32,
    /// Committed and not purged.
    messages: BTreeMap<u64, SimMessage>,
    /// Every message ever committed, purged or not: what the checks
    /// replay.
    history: BTreeMap<u64, SimMessage>,
    first: u64,
    last: u64,
    /// Proposals without quorum, in order: the first expected `last`;
    /// they land together at `last + 1, ..`, or are dropped together (a
    /// leader change). An append pipelined after one joins them.
    proposed: Vec<SimMessage>,
    /// The snapshot and the sequence it continues at.
    snapshot: Option<(u64, Vec<u8>)>,
    faults: StreamFaults,
    rng: SplitMix64,
    /// The faults injected, one line each.
    pub log: Vec<String>,
}

fn chance(rng: &mut SplitMix64, ppm: u32) -> bool {
    ppm > 0 && rng.below(1_000_000) < ppm
}

impl SimStream {
    pub fn new(partition: u32, seed: u64, faults: StreamFaults) -> Self {
        Self {
            partition,
            messages: BTreeMap::new(),
            history: BTreeMap::new(),
            first: 1,
            last: 0,
            proposed: Vec::new(),
            snapshot: None,
            faults,
            rng: SplitMix64::new(seed),
            log: Vec::new(),
        }
    }

    pub fn set_faults(&mut self, faults: StreamFaults) {
        self.faults = faults;
    }

    /// A proposal left without quorum lands (at the sequence it expected
    /// plus one: nothing else committed meanwhile), is dropped, or stays.
    fn settle(&mut self) {
        let Some(m) = self.proposed.first() else { return };
        match self.rng.below(10) {
            0..=3 => {
                for m in std::mem::take(&mut self.proposed) {
                    assert_eq!(m.seq, self.last + 1, "a proposal lands where it expected");
                    self.log.push(format!(
                        "partition {}: the uncommitted append {} lands at {} after all",
                        self.partition, m.id, m.seq
                    ));
                    self.commit(m);
                }
            }
            4 => {
                self.log.push(format!(
                    "partition {}: the uncommitted appends from {} are dropped ({})",
                    self.partition,
                    m.id,
                    self.proposed.len()
                ));
                self.proposed.clear();
            }
            _ => {}
        }
    }

    fn commit(&mut self, m: SimMessage) {
        self.last = m.seq;
        self.history.insert(m.seq, m.clone());
        self.messages.insert(m.seq, m);
    }

    /// The message id of the last message the leader took (committed or
    /// proposed), as JetStream checks `Nats-Expected-Last-Msg-Id`.
    fn leader_last_id(&self) -> Option<&str> {
        self.proposed.last().or_else(|| self.history.values().next_back()).map(|m| m.id.as_str())
    }

    /// Appends `payload` expecting the last sequence `expected` (and, if
    /// given, the last message id `expected_id`), under the message id
    /// `id`, as `PartitionLog::append` (or `fence`, with `fence:
    /// Some(epoch)`) does: its sequence, or why not.
    pub fn append(
        &mut self,
        expected: u64,
        expected_id: Option<&str>,
        payload: Vec<u8>,
        id: String,
        fence: Option<u64>,
        writer_epoch: u64,
    ) -> Result<u64, StreamError> {
        assert!(!id.is_empty(), "every trove append carries a message id");
        assert!(fence.is_none() || payload.is_empty(), "a fence has no payload");
        self.settle();
        if chance(&mut self.rng, self.faults.unavailable_ppm) {
            self.log.push(format!("partition {}: append {id} refused: no quorum", self.partition));
            return Err(StreamError::Unavailable("no quorum".into()));
        }
        // The leader's last sequence counts a proposal not yet committed.
        let leader_last = self.last + self.proposed.len() as u64;
        if expected != leader_last {
            return self.resolve_refusal(expected, &id, leader_last);
        }
        // The right sequence under another writer's message: a fence (or
        // another owner's append) took the place this writer expected its
        // own message at.
        if expected_id.is_some_and(|e| self.leader_last_id() != Some(e)) {
            return Err(StreamError::Fenced { expected, actual: leader_last });
        }
        let m = SimMessage { seq: leader_last + 1, id, fence, payload, writer_epoch };
        if !self.proposed.is_empty() || chance(&mut self.rng, self.faults.uncommitted_ppm) {
            self.log.push(format!("partition {}: append {} times out uncommitted", self.partition, m.id));
            self.proposed.push(m);
            return Err(StreamError::Unavailable("timed out (uncommitted)".into()));
        }
        let (seq, lost) = (m.seq, chance(&mut self.rng, self.faults.ack_lost_ppm));
        if lost {
            self.log.push(format!(
                "partition {}: append {} lands at {seq}, its acknowledgement is lost",
                self.partition, m.id
            ));
        }
        self.commit(m);
        if lost { Err(StreamError::Unavailable("timed out (the acknowledgement was lost)".into())) } else { Ok(seq) }
    }

    /// `PartitionLog::resolve_refusal`: read what follows `expected`.
    fn resolve_refusal(&mut self, expected: u64, id: &str, actual: u64) -> Result<u64, StreamError> {
        match self.messages.get(&(expected + 1)) {
            Some(m) if m.id == id => Ok(expected + 1),
            Some(_) => Err(StreamError::Fenced { expected, actual }),
            None if self.last <= expected => {
                Err(StreamError::Unavailable(format!("expected {expected}, the leader is at {actual} (uncommitted)")))
            }
            // Purged past it: the writer is far behind.
            None => Err(StreamError::Fenced { expected, actual }),
        }
    }

    /// The first and last sequence (`PartitionLog::bounds`).
    pub fn bounds(&self) -> (u64, u64) {
        (self.first, self.last)
    }

    /// Every committed message from `from` (or the first kept) to the last
    /// now, and that last sequence (`PartitionLog::read`).
    pub fn read(&mut self, from: u64) -> Result<(Vec<SimMessage>, u64), StreamError> {
        self.settle();
        if chance(&mut self.rng, self.faults.unavailable_ppm) {
            self.log.push(format!("partition {}: a read is refused: no quorum", self.partition));
            return Err(StreamError::Unavailable("no quorum".into()));
        }
        Ok((self.messages.range(from.max(self.first)..).map(|(_, m)| m.clone()).collect(), self.last))
    }

    /// Deletes every message below `seq`.
    pub fn purge_below(&mut self, seq: u64) {
        assert!(seq <= self.last + 1, "a purge past the stream's end");
        self.messages = self.messages.split_off(&seq);
        self.first = self.first.max(seq);
    }

    /// Stores the partition's snapshot (the object store), covering what
    /// is below `next`: replacing the last one, or, `if_newer`, only if
    /// that one covers less (a put conditional on what it replaces, as a
    /// KV revision or a per-sequence object name would make it). `false`:
    /// the stored one was newer and stays.
    pub fn put_snapshot(&mut self, bytes: Vec<u8>, next: u64, if_newer: bool) -> Result<bool, StreamError> {
        if chance(&mut self.rng, self.faults.unavailable_ppm) {
            self.log.push(format!("partition {}: a snapshot put is refused: no quorum", self.partition));
            return Err(StreamError::Unavailable("no quorum".into()));
        }
        if if_newer && self.snapshot.as_ref().is_some_and(|(stored, _)| *stored > next) {
            return Ok(false);
        }
        self.snapshot = Some((next, bytes));
        Ok(true)
    }

    pub fn snapshot(&self) -> Option<&[u8]> {
        self.snapshot.as_ref().map(|(_, bytes)| bytes.as_slice())
    }

    /// Every message ever committed, purged or not.
    pub fn history(&self) -> &BTreeMap<u64, SimMessage> {
        &self.history
    }
}

/// A deliberate mistake in [`SimLog`] or the simulated node, to show that
/// the checks find it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ClusterBug {
    #[default]
    None,
    /// A new owner serves without appending its fence.
    SkipFence,
    /// The log takes a refused (fenced or unavailable) append for
    /// acknowledged.
    RefusedAsAcked,
    /// The log fences appends by the expected last sequence alone, as
    /// trove-cluster's `StreamLog` did when this simulator was written: a
    /// deposed owner's pipelined append that expected the sequence the new
    /// owner's fence took lands after the fence.
    SequenceOnly,
    /// A snapshot put replaces the stored one whatever it covers, as
    /// trove-cluster's `Snapshots::put` did when this simulator was
    /// written: a deposed owner's older snapshot replaces the new owner's,
    /// whose purge went past it, and the partition cannot be rebuilt.
    SnapshotReplaces,
}

impl std::str::FromStr for ClusterBug {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "none" => Ok(ClusterBug::None),
            "skip-fence" => Ok(ClusterBug::SkipFence),
            "refused-as-acked" => Ok(ClusterBug::RefusedAsAcked),
            "sequence-only" => Ok(ClusterBug::SequenceOnly),
            "snapshot-replaces" => Ok(ClusterBug::SnapshotReplaces),
            _ => Err(format!(
                "unknown planted cluster bug `{s}`: none, skip-fence, refused-as-acked, sequence-only, snapshot-replaces"
            )),
        }
    }
}

/// A partition's stream as its shard's log, as `StreamLog` does it: each
/// applied batch encoded as frames of at most one message's payload, one
/// message each, each expecting the sequence before it, and durable (its
/// answers released) only once the stream acknowledged it.
#[derive(Debug)]
pub struct SimLog {
    stream: Arc<Mutex<SimStream>>,
    partition: u32,
    epoch: u64,
    /// The last sequence this owner knows: its next append expects it.
    last: u64,
    /// Its fence's sequence and message id: the first append after it
    /// expects the fence's message id, each later one the one before's.
    fence: u64,
    fence_id: Option<String>,
    encoded: Vec<Vec<u8>>,
    /// Sent and not yet synced: their outcomes.
    sent: Vec<Result<u64, StreamError>>,
    body_bytes_max: usize,
    bug: ClusterBug,
}

impl SimLog {
    /// The log of a partition whose stream ends at `last` (the owner's
    /// fence, whose message id is `fence_id`), appended to under lease
    /// `epoch`.
    pub fn new(
        stream: Arc<Mutex<SimStream>>,
        partition: u32,
        epoch: u64,
        last: u64,
        fence_id: Option<String>,
        payload_max: usize,
        bug: ClusterBug,
    ) -> Self {
        Self {
            stream,
            partition,
            epoch,
            last,
            fence: last,
            fence_id,
            encoded: Vec::new(),
            sent: Vec::new(),
            body_bytes_max: payload_max.saturating_sub(FRAME_HEAD_BYTES),
            bug,
        }
    }

    pub fn last(&self) -> u64 {
        self.last
    }

    fn next_seq(&self) -> u64 {
        self.last + 1 + (self.sent.len() + self.encoded.len()) as u64
    }

    fn stream(&self) -> std::sync::MutexGuard<'_, SimStream> {
        self.stream.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// `StreamLog`'s `log_error`: a fence is `Fenced`, anything else
/// `Unavailable`.
fn log_error(e: StreamError) -> LogError {
    let kind = match e {
        StreamError::Fenced { .. } => LogErrorKind::Fenced,
        StreamError::Unavailable(_) => LogErrorKind::Unavailable,
    };
    LogError { kind, message: e.to_string() }
}

impl ShardLog<HuntEvent> for SimLog {
    fn shard(&self) -> u32 {
        self.partition
    }

    fn append(&mut self, runs: &[Run<'_>], parts: &[Vec<Stamped<HuntEvent>>], time_us: Option<u64>) {
        let (first, durable_below) = (self.next_seq(), self.last + 1);
        let encoded = &mut self.encoded;
        trove_cluster::stream_log::encode_messages(
            first,
            durable_below,
            runs,
            parts,
            time_us,
            self.body_bytes_max,
            |m| encoded.push(m),
        );
    }

    fn write(&mut self) -> Result<u64, LogError> {
        let mut bytes = 0;
        for frame in std::mem::take(&mut self.encoded) {
            let expected = self.last + self.sent.len() as u64;
            let id = trove_cluster::stream_log::append_msg_id(self.partition, self.epoch, expected + 1);
            // Each append also expects the message before it by id: a
            // pipelined append after one refused (a new owner's fence
            // landed where it expected its own message) is refused too,
            // not appended after the fence (decision 0039). Without it,
            // the sequence alone lets it in.
            let expected_id = match self.bug {
                ClusterBug::SequenceOnly => None,
                _ if expected == self.fence => self.fence_id.clone(),
                _ => Some(trove_cluster::stream_log::append_msg_id(self.partition, self.epoch, expected)),
            };
            bytes += frame.len() as u64;
            let outcome = self.stream().append(expected, expected_id.as_deref(), frame, id, None, self.epoch);
            self.sent.push(outcome);
        }
        Ok(bytes)
    }

    fn sync(&mut self) -> Result<bool, LogError> {
        if self.sent.is_empty() {
            return Ok(false);
        }
        for outcome in std::mem::take(&mut self.sent) {
            match outcome {
                Ok(seq) => {
                    assert_eq!(seq, self.last + 1, "partition {}: an append landed out of place", self.partition);
                    self.last = seq;
                }
                Err(_) if self.bug == ClusterBug::RefusedAsAcked => self.last += 1,
                Err(e) => {
                    self.sent.clear();
                    return Err(log_error(e));
                }
            }
        }
        Ok(true)
    }

    /// As `StreamLog::snapshot`: everything before it acknowledged, the
    /// snapshot stored, then the stream purged below it.
    fn snapshot(&mut self, bytes: &mut dyn FnMut(u64) -> Vec<u8>) -> Result<usize, LogError> {
        ShardLog::<HuntEvent>::write(self)?;
        ShardLog::<HuntEvent>::sync(self)?;
        let next = self.last + 1;
        let bytes = bytes(next);
        trove_journal::snapshot::decode_snapshot(&bytes).map_err(|e| LogError {
            kind: LogErrorKind::Unavailable,
            message: format!("a snapshot failed its own check: {e}"),
        })?;
        let len = bytes.len();
        let mut stream = self.stream();
        // A deposed owner with nothing left to append reaches here too:
        // its snapshot must not replace a newer owner's, whose purge went
        // past it (decision 0039).
        let if_newer = self.bug != ClusterBug::SnapshotReplaces;
        if stream.put_snapshot(bytes, next, if_newer).map_err(log_error)? && next <= stream.bounds().1 + 1 {
            stream.purge_below(next);
        }
        Ok(len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream() -> SimStream {
        SimStream::new(0, 1, StreamFaults::default())
    }

    #[test]
    fn an_append_expecting_another_last_sequence_is_fenced() {
        let mut s = stream();
        assert_eq!(s.append(0, None, vec![1], "a".into(), None, 1), Ok(1));
        assert_eq!(s.append(1, None, Vec::new(), "fence-2".into(), Some(2), 2), Ok(2));
        assert_eq!(
            s.append(1, None, vec![2], "b".into(), None, 1),
            Err(StreamError::Fenced { expected: 1, actual: 2 })
        );
        assert_eq!(s.bounds(), (1, 2));
    }

    #[test]
    fn a_retry_of_a_landed_append_gets_its_sequence() {
        let mut s = stream();
        s.set_faults(StreamFaults { ack_lost_ppm: 1_000_000, ..Default::default() });
        assert!(matches!(s.append(0, None, vec![1], "a".into(), None, 1), Err(StreamError::Unavailable(_))));
        s.set_faults(StreamFaults::default());
        assert_eq!(s.append(0, None, vec![1], "a".into(), None, 1), Ok(1));
        assert_eq!(s.history().len(), 1);
        assert!(matches!(s.append(0, None, vec![1], "b".into(), None, 2), Err(StreamError::Fenced { .. })));
    }

    #[test]
    fn an_uncommitted_append_blocks_others_until_it_lands_or_is_dropped() {
        let mut s = stream();
        s.set_faults(StreamFaults { uncommitted_ppm: 1_000_000, ..Default::default() });
        assert!(matches!(s.append(0, None, vec![1], "a".into(), None, 1), Err(StreamError::Unavailable(_))));
        s.set_faults(StreamFaults::default());
        let mut landed = false;
        for _ in 0..100 {
            match s.append(0, None, Vec::new(), "fence-2".into(), Some(2), 2) {
                Ok(seq) => {
                    assert!(!landed && seq == 1, "the proposal was dropped: the fence lands first");
                    break;
                }
                Err(StreamError::Fenced { .. }) => {
                    landed = true;
                    break;
                }
                Err(StreamError::Unavailable(_)) => {}
            }
        }
        assert!(s.proposed.is_empty());
        if landed {
            assert_eq!(s.history()[&1].id, "a");
        }
    }

    /// Two appends pipelined by a deposed owner, the first refused because
    /// a new owner's fence took its sequence: by sequence alone the second
    /// lands after the fence; expecting the message before it by id, it
    /// is refused too.
    #[test]
    fn a_pipelined_append_after_a_fence_is_refused_only_by_the_expected_id() {
        for by_id in [false, true] {
            let mut s = stream();
            assert_eq!(s.append(0, None, vec![1], "p0-e1-s1".into(), None, 1), Ok(1));
            assert_eq!(s.append(1, None, Vec::new(), "fence-2".into(), Some(2), 2), Ok(2));
            let ids = |id: &'static str| by_id.then_some(id);
            let first = s.append(1, ids("p0-e1-s1"), vec![2], "p0-e1-s2".into(), None, 1);
            assert_eq!(first, Err(StreamError::Fenced { expected: 1, actual: 2 }));
            let second = s.append(2, ids("p0-e1-s2"), vec![3], "p0-e1-s3".into(), None, 1);
            if by_id {
                assert_eq!(second, Err(StreamError::Fenced { expected: 2, actual: 2 }));
            } else {
                assert_eq!(second, Ok(3), "the hole the expected id closes");
            }
        }
    }

    #[test]
    fn a_purge_keeps_the_history_for_the_checks() {
        let mut s = stream();
        for i in 0..4 {
            s.append(i, None, vec![1], format!("m{i}"), None, 1).unwrap();
        }
        s.purge_below(3);
        assert_eq!(s.read(1).unwrap().0.iter().map(|m| m.seq).collect::<Vec<_>>(), vec![3, 4]);
        assert_eq!(s.history().len(), 4);
        assert_eq!(s.bounds(), (3, 4));
    }
}
