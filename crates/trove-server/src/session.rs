//! The exactly-once session rules of one producer's connection, shared by
//! the TCP and WebSocket endpoints: no socket, no runtime, no clock (a
//! batch's [`Arrival`] is passed in and handed back).
//!
//! A connection drives a [`Session`] with what happens to it: an EVENTS
//! submission is checked ([`Session::check_count`],
//! [`Session::check_sequence`]), submitted to the engine by the endpoint,
//! and the engine's answer given back ([`Session::submitted`]); a
//! completion ([`Session::completed`]) or a refusal
//! ([`Session::answer`]). Each returns what to send, in order; the
//! endpoint only encodes it (protocol v1 frames or JSON) and writes.
//!
//! The rules (docs/protocol.md, "Exactly once"):
//! - Answers go out in frame order: an ACK when its batch completes, a
//!   refusal at once unless batches before it are still owed, then behind
//!   them.
//! - After a BUSY at sequence `s`, EVENTS beyond `s` are refused BUSY until
//!   the producer resends from `s`: a producer's events must reach the
//!   engine in sequence order for its retries to be recognised.
//! - A batch that reused a sequence number with another event is answered
//!   `sequence_reused`, not ACKed: the outcomes would be another event's.
//! - At most `window_batches` answers are owed; past it the endpoint stops
//!   reading the connection.

use std::collections::VecDeque;

use trove_proto::ErrorCode;
use trove_shard::SubmitError;

use crate::Arrival;

/// What BUSY tells producers to wait before resending, in milliseconds.
pub const BUSY_RETRY_MS: u32 = 1;

/// A batch in the engine, its answer owed.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Batch {
    pub first_seq: u64,
    pub count: u32,
    /// When its frame was read and decoded, for the stage latencies.
    pub arrival: Arrival,
}

/// An answer that is not an ACK.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The engine's queues are full: resend from `first_seq` after
    /// `retry_after_ms`.
    Busy { first_seq: u64, count: u32, retry_after_ms: u32 },
    /// A typed ERROR; the connection stays open.
    Error { code: ErrorCode, message: String },
}

impl Refusal {
    pub fn busy(first_seq: u64, count: u32) -> Self {
        Refusal::Busy { first_seq, count, retry_after_ms: BUSY_RETRY_MS }
    }

    pub fn error(code: ErrorCode, message: String) -> Self {
        Refusal::Error { code, message }
    }
}

/// One answer to send.
#[derive(Debug)]
pub(crate) enum Answer {
    /// ACK this batch (with the completion's outcomes).
    Ack(Batch),
    Refusal(Refusal),
}

/// What the engine's answer to a submission means for the connection.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Admission {
    /// In the engine: its answer is owed.
    Owed,
    /// Refused: answer it (through [`Session::answer`]).
    Refused(Refusal),
    /// The engine is stopping: the endpoint refuses or closes.
    ShuttingDown,
    /// The engine failed (its journal): nothing more is acknowledged; the
    /// endpoint closes with the failure's reason once what completed is
    /// sent.
    Failed,
    /// Cluster mode: an event of the batch belongs to a partition this node
    /// does not own now (shard `shard`): nothing of it applied; the endpoint
    /// answers what is owed, then `not_owner`, and closes.
    NotOwner { shard: usize },
}

/// An answer owed to the peer, in frame order.
#[derive(Debug)]
enum Owed {
    /// A batch in the engine; its ACK goes out when it completes.
    Batch(Batch),
    /// A refusal ready now, waiting for the batches before it.
    Ready(Refusal),
}

/// One connection's answers owed and its BUSY state.
#[derive(Debug)]
pub(crate) struct Session {
    /// Answers owed in frame order; the front, if any, is a batch (a
    /// refusal with nothing owed before it is sent at once).
    owed: VecDeque<Owed>,
    /// After a BUSY at this sequence, EVENTS beyond it are refused until
    /// the producer resends from it.
    busy_from: Option<u64>,
    /// Answers that may be owed at once (`ServerConfig::window_batches`).
    window_batches: usize,
}

impl Session {
    pub fn new(window_batches: usize) -> Self {
        assert!(window_batches >= 1, "validate() keeps the window at one batch or more");
        Self { owed: VecDeque::new(), busy_from: None, window_batches }
    }

    /// Room for one more frame's answer: the endpoint reads (and handles)
    /// frames only while this holds, so a flood of refused frames cannot
    /// grow the queue while a batch waits for its durability.
    pub fn window_open(&self) -> bool {
        self.owed.len() < self.window_batches
    }

    /// Answers owed: batches in the engine and refusals queued behind them.
    pub fn owed(&self) -> usize {
        self.owed.len()
    }

    /// A batch's size: 1..=`batch_events_max` events.
    pub fn check_count(count: usize, batch_events_max: usize) -> Result<u32, Refusal> {
        match u32::try_from(count) {
            Ok(n) if n > 0 && count <= batch_events_max => Ok(n),
            _ => Err(Refusal::error(
                ErrorCode::BadBatch,
                format!("{count} events: a batch holds 1..={batch_events_max}"),
            )),
        }
    }

    /// A batch's sequence numbers: valid, and not past a BUSY not resent
    /// yet.
    pub fn check_sequence(&self, first_seq: u64, count: u32) -> Result<(), Refusal> {
        if first_seq == 0 || first_seq.checked_add(u64::from(count)).is_none() {
            return Err(Refusal::error(ErrorCode::BadSequence, format!("sequence {first_seq} + {count} is not valid")));
        }
        if self.busy_from.is_some_and(|from| first_seq > from) {
            return Err(Refusal::busy(first_seq, count));
        }
        Ok(())
    }

    /// The sequence of a batch that names none (the WebSocket endpoint's
    /// implicit numbering): the producer's next. After a BUSY it would
    /// give the next batch the refused one's numbers and let it overtake:
    /// only an explicit resend clears the refusal, so this is BUSY again.
    pub fn implicit_sequence(&self, next_seq: u64, count: u32) -> Result<u64, Refusal> {
        match self.busy_from {
            Some(from) => Err(Refusal::busy(from, count)),
            None => Ok(next_seq),
        }
    }

    /// The engine's answer to `batch`'s submission.
    pub fn submitted(&mut self, batch: Batch, result: Result<(), SubmitError>) -> Admission {
        match result {
            Ok(()) => {
                self.busy_from = None;
                self.owed.push_back(Owed::Batch(batch));
                Admission::Owed
            }
            Err(SubmitError::Busy) => {
                let first_seq = batch.first_seq;
                self.busy_from = Some(self.busy_from.map_or(first_seq, |from| from.min(first_seq)));
                Admission::Refused(Refusal::busy(first_seq, batch.count))
            }
            Err(SubmitError::BadSize) => Admission::Refused(Refusal::error(
                ErrorCode::BadBatch,
                format!("{} events were refused by the engine", batch.count),
            )),
            Err(SubmitError::ShuttingDown) => Admission::ShuttingDown,
            Err(SubmitError::Failed) => Admission::Failed,
            Err(SubmitError::NotOwner { shard }) => Admission::NotOwner { shard },
        }
    }

    /// A refusal: returned to be sent now when nothing is owed before it,
    /// else queued behind the batches owed (and `None`).
    pub fn answer(&mut self, refusal: Refusal) -> Option<Refusal> {
        if self.owed.is_empty() {
            return Some(refusal);
        }
        self.owed.push_back(Owed::Ready(refusal));
        None
    }

    /// The engine completed the oldest batch owed (a producer's batches
    /// complete in submission order); `reused` lists its sequence numbers
    /// that were applied before with another event. Yields what to send,
    /// in order: the batch's answer, then the refusals that waited only
    /// for it.
    pub fn completed<'s>(&'s mut self, reused: &[u64]) -> Answers<'s> {
        let Some(Owed::Batch(batch)) = self.owed.pop_front() else {
            panic!("a completion with no batch owed first: refusals are sent as soon as nothing is owed before them")
        };
        let first = if reused.is_empty() {
            Answer::Ack(batch)
        } else {
            Answer::Refusal(Refusal::error(ErrorCode::SequenceReused, sequence_reused_message(reused)))
        };
        Answers { session: self, first: Some(first) }
    }
}

/// What a completion releases, in order (see [`Session::completed`]).
pub(crate) struct Answers<'s> {
    session: &'s mut Session,
    first: Option<Answer>,
}

impl Iterator for Answers<'_> {
    type Item = Answer;

    fn next(&mut self) -> Option<Answer> {
        if let Some(first) = self.first.take() {
            return Some(first);
        }
        if !matches!(self.session.owed.front(), Some(Owed::Ready(_))) {
            return None;
        }
        match self.session.owed.pop_front() {
            Some(Owed::Ready(r)) => Some(Answer::Refusal(r)),
            _ => unreachable!("the front was a refusal"),
        }
    }
}

/// The message of a `sequence_reused` answer: which sequence numbers of
/// the batch were reused (the first and how many), and what became of the
/// rest. `reused` is not empty.
fn sequence_reused_message(reused: &[u64]) -> String {
    let first = reused[0];
    let more = match reused.len() - 1 {
        0 => String::new(),
        n => format!(" (and {n} more of this batch)"),
    };
    format!(
        "sequence {first}{more} was already applied with another event: not applied; the batch's other events \
         were handled as usual"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arrival() -> Arrival {
        let now = std::time::Instant::now();
        Arrival { read: now, decoded: now }
    }

    fn batch(first_seq: u64, count: u32) -> Batch {
        Batch { first_seq, count, arrival: arrival() }
    }

    /// What a completion sends, in a form tests compare: `Ok(first_seq)`
    /// for an ACK, `Err(refusal)` for anything else.
    fn sent(answers: Answers<'_>) -> Vec<Result<u64, Refusal>> {
        answers
            .map(|a| match a {
                Answer::Ack(b) => Ok(b.first_seq),
                Answer::Refusal(r) => Err(r),
            })
            .collect()
    }

    fn bad_sequence(s: &Session, first_seq: u64, count: u32) -> Refusal {
        s.check_sequence(first_seq, count).unwrap_err()
    }

    #[test]
    fn answers_go_out_in_frame_order() {
        let mut s = Session::new(8);
        // Nothing owed: a refusal goes out at once.
        let r = Session::check_count(0, 100).unwrap_err();
        assert_eq!(s.answer(r.clone()), Some(r));
        // Batch 1, a refusal, batch 4, a refusal: each refusal waits for
        // the batch before it.
        assert_eq!(s.submitted(batch(1, 3), Ok(())), Admission::Owed);
        let late = bad_sequence(&s, 0, 1);
        assert_eq!(s.answer(late.clone()), None);
        assert_eq!(s.submitted(batch(4, 2), Ok(())), Admission::Owed);
        let later = Refusal::error(ErrorCode::Malformed, "events[0]: x".into());
        assert_eq!(s.answer(later.clone()), None);
        assert_eq!(s.owed(), 4);
        assert_eq!(sent(s.completed(&[])), [Ok(1), Err(late)]);
        assert_eq!(sent(s.completed(&[])), [Ok(4), Err(later)]);
        assert_eq!(s.owed(), 0);
        // A refusal after everything was answered goes out at once again.
        let r = Refusal::busy(9, 1);
        assert_eq!(s.answer(r.clone()), Some(r));
    }

    #[test]
    fn after_busy_later_sequences_are_refused_until_the_refused_one_is_resent() {
        let mut s = Session::new(8);
        assert_eq!(s.submitted(batch(1, 2), Ok(())), Admission::Owed);
        assert_eq!(
            s.submitted(batch(3, 2), Err(SubmitError::Busy)),
            Admission::Refused(Refusal::Busy { first_seq: 3, count: 2, retry_after_ms: BUSY_RETRY_MS })
        );
        // Pipelined behind the refused one: refused too, without reaching
        // the engine, and the refusal does not move the mark.
        assert_eq!(s.check_sequence(5, 2), Err(Refusal::busy(5, 2)));
        assert_eq!(s.implicit_sequence(5, 2), Err(Refusal::busy(3, 2)));
        // Earlier ones (a resend of batch 1) and the refused one pass.
        assert_eq!(s.check_sequence(1, 2), Ok(()));
        assert_eq!(s.check_sequence(3, 2), Ok(()));
        // A second BUSY, lower, lowers the mark; a higher one does not raise it.
        assert!(matches!(s.submitted(batch(2, 1), Err(SubmitError::Busy)), Admission::Refused(_)));
        assert_eq!(s.check_sequence(3, 2), Err(Refusal::busy(3, 2)));
        assert!(matches!(s.submitted(batch(2, 3), Err(SubmitError::Busy)), Admission::Refused(_)));
        assert_eq!(s.check_sequence(3, 2), Err(Refusal::busy(3, 2)));
        // The resend accepted clears it.
        assert_eq!(s.submitted(batch(2, 3), Ok(())), Admission::Owed);
        assert_eq!(s.check_sequence(5, 2), Ok(()));
        assert_eq!(s.implicit_sequence(5, 2), Ok(5));
        assert_eq!(sent(s.completed(&[])), [Ok(1)]);
        assert_eq!(sent(s.completed(&[])), [Ok(2)]);
    }

    #[test]
    fn a_reused_sequence_is_answered_with_an_error_not_an_ack() {
        let mut s = Session::new(8);
        assert_eq!(s.submitted(batch(10, 3), Ok(())), Admission::Owed);
        assert_eq!(s.submitted(batch(20, 1), Ok(())), Admission::Owed);
        let answers = sent(s.completed(&[11, 12]));
        let [Err(Refusal::Error { code: ErrorCode::SequenceReused, message })] = &answers[..] else {
            panic!("{answers:?}")
        };
        assert!(message.starts_with("sequence 11 (and 1 more of this batch) was already applied"), "{message}");
        let answers = sent(s.completed(&[20]));
        let [Err(Refusal::Error { message, .. })] = &answers[..] else { panic!("{answers:?}") };
        assert!(message.starts_with("sequence 20 was already applied"), "{message}");
    }

    #[test]
    fn the_engines_refusals_are_told_apart() {
        let mut s = Session::new(8);
        assert_eq!(
            s.submitted(batch(1, 5), Err(SubmitError::BadSize)),
            Admission::Refused(Refusal::error(ErrorCode::BadBatch, "5 events were refused by the engine".into()))
        );
        assert_eq!(s.submitted(batch(1, 5), Err(SubmitError::ShuttingDown)), Admission::ShuttingDown);
        // A failed engine: nothing is owed for the batch, and no BUSY mark.
        assert_eq!(s.submitted(batch(1, 5), Err(SubmitError::Failed)), Admission::Failed);
        assert_eq!(s.owed(), 0);
        assert_eq!(s.check_sequence(9, 1), Ok(()));
    }

    #[test]
    fn producer_failure_leaves_answers_owed_behind_the_batches_in_flight() {
        // Batches completed before the failure are answered with what
        // waited for them; what waits behind a batch that never completes
        // is never sent (the connection closes with the failure's reason).
        let mut s = Session::new(8);
        assert_eq!(s.submitted(batch(1, 1), Ok(())), Admission::Owed);
        assert_eq!(s.answer(Refusal::busy(7, 1)), None);
        assert_eq!(s.submitted(batch(2, 1), Ok(())), Admission::Owed);
        assert_eq!(s.answer(Refusal::busy(8, 1)), None);
        assert_eq!(s.submitted(batch(3, 1), Err(SubmitError::Failed)), Admission::Failed);
        assert_eq!(sent(s.completed(&[])), [Ok(1), Err(Refusal::busy(7, 1))]);
        assert_eq!(s.owed(), 2, "batch 2 and the refusal behind it stay owed");
    }

    #[test]
    fn the_window_counts_batches_and_the_refusals_queued_behind_them() {
        let mut s = Session::new(3);
        assert!(s.window_open());
        assert_eq!(s.submitted(batch(1, 1), Ok(())), Admission::Owed);
        assert_eq!(s.answer(Refusal::busy(5, 1)), None);
        assert!(s.window_open());
        assert_eq!(s.answer(Refusal::busy(6, 1)), None);
        assert!(!s.window_open(), "three answers owed in a window of three");
        assert_eq!(sent(s.completed(&[])).len(), 3);
        assert!(s.window_open());
        // Refusals sent at once take no room.
        for seq in 10..20 {
            assert!(s.answer(Refusal::busy(seq, 1)).is_some());
        }
        assert!(s.window_open());
    }

    #[test]
    fn shutdown_with_answers_owed_sends_them_all_in_order_as_batches_complete() {
        let mut s = Session::new(16);
        let mut expected = Vec::new();
        for i in 0..5u64 {
            assert_eq!(s.submitted(batch(1 + 10 * i, 2), Ok(())), Admission::Owed);
            let r = Refusal::error(ErrorCode::ShuttingDown, format!("after {i}"));
            assert_eq!(s.answer(r.clone()), None);
            expected.push(Ok(1 + 10 * i));
            expected.push(Err(r));
        }
        // The endpoint stops reading and waits for the batches in flight.
        let mut got = Vec::new();
        while s.owed() > 0 {
            got.extend(sent(s.completed(&[])));
        }
        assert_eq!(got, expected);
    }

    #[test]
    fn counts_and_sequences_are_checked() {
        assert_eq!(Session::check_count(1, 1), Ok(1));
        assert_eq!(
            Session::check_count(3, 2),
            Err(Refusal::error(ErrorCode::BadBatch, "3 events: a batch holds 1..=2".into()))
        );
        assert!(Session::check_count(usize::MAX, usize::MAX).is_err());
        let s = Session::new(1);
        assert_eq!(
            s.check_sequence(u64::MAX, 1),
            Err(Refusal::error(ErrorCode::BadSequence, format!("sequence {} + 1 is not valid", u64::MAX)))
        );
        assert_eq!(s.check_sequence(u64::MAX - 1, 1), Ok(()));
    }

    #[test]
    #[should_panic(expected = "a completion with no batch owed first")]
    fn a_completion_with_nothing_owed_is_a_broken_invariant() {
        let _ = Session::new(1).completed(&[]);
    }
}
