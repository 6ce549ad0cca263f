//! The producer's unacknowledged batches: which to (re)send next, which
//! answer belongs to which batch, and in what order batches complete.
//!
//! Pure bookkeeping, no I/O, so the rules are tested without a network:
//!
//! - Batches are kept in sequence order and sent in sequence order.
//! - The server answers EVENTS frames in the order it got them, so an
//!   answer belongs to the oldest frame sent on this connection and not yet
//!   answered; one that does not match it is a protocol violation.
//! - BUSY: nothing of that batch was applied. Sending stops until the
//!   server's `retry_after_ms` has passed *and* every frame already sent
//!   is answered; then every refused batch is sent again, oldest first,
//!   before anything newer. (The server refuses the frames behind a BUSY
//!   too, so a later batch never overtakes a refused one; an event applied
//!   after a higher sequence of the same producer would be taken for a
//!   retry and never applied.)
//! - A reconnect forgets what was sent on the old connection: every batch
//!   not answered is sent again, in order, with its original sequence
//!   numbers. The server applies each event once and answers resends with
//!   the original outcomes.
//! - Batches complete (are handed to the user) in sequence order, even if
//!   a later one was answered first.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

use crate::batch::Batch;
use crate::error::{ClientError, ServerError};

/// How the server answered a batch.
#[derive(Debug, PartialEq)]
pub(crate) enum Answer<O> {
    /// Applied (now or before); the outcomes if they were asked for.
    Acked(Option<Vec<O>>),
    /// Refused for good (BadBatch, BadSequence: nothing applied;
    /// SequenceReused: the reused events not applied).
    Refused(ServerError),
}

#[derive(Debug)]
enum State<O> {
    /// To be sent on the current connection.
    Pending,
    /// Sent on the current connection; its answer is owed.
    Sent,
    /// Answered BUSY; sent again when sending resumes.
    Busy,
    Answered(Answer<O>),
}

#[derive(Debug)]
struct Entry<O> {
    batch: Batch,
    state: State<O>,
    /// Times the batch was written to a socket.
    sends: u32,
    /// When it was last taken to be written.
    sent_at: Option<Instant>,
}

#[derive(Debug)]
pub(crate) struct Inflight<O> {
    /// Ascending by sequence, contiguous.
    entries: VecDeque<Entry<O>>,
    /// First sequences of the frames sent on this connection and not yet
    /// answered, in the order sent.
    sent: VecDeque<u64>,
    /// After a BUSY: when sending may resume.
    resume_at: Option<Instant>,
}

impl<O> Default for Inflight<O> {
    fn default() -> Self {
        Self { entries: VecDeque::new(), sent: VecDeque::new(), resume_at: None }
    }
}

impl<O> Inflight<O> {
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Adds a newly closed batch; it follows the last one.
    pub fn push(&mut self, batch: Batch) {
        if let Some(last) = self.entries.back() {
            assert_eq!(last.batch.end_seq(), batch.first_seq, "batches must be contiguous");
        }
        self.entries.push_back(Entry { batch, state: State::Pending, sends: 0, sent_at: None });
    }

    /// The next batch to write, if sending is not paused: the oldest
    /// pending one. It counts as sent from now on. Returns its first
    /// sequence and whether it was sent before.
    pub fn next_to_send(&mut self) -> Option<(u64, bool)> {
        if self.resume_at.is_some() {
            return None;
        }
        let e = self.entries.iter_mut().find(|e| matches!(e.state, State::Pending))?;
        e.state = State::Sent;
        e.sends += 1;
        e.sent_at = Some(Instant::now());
        self.sent.push_back(e.batch.first_seq);
        Some((e.batch.first_seq, e.sends > 1))
    }

    /// When the oldest batch sent on this connection and not yet answered
    /// was written (`None`: every batch sent was answered).
    pub fn oldest_unanswered_at(&self) -> Option<Instant> {
        let first = *self.sent.front()?;
        let i = self.entries.binary_search_by_key(&first, |e| e.batch.first_seq).ok()?;
        self.entries[i].sent_at
    }

    /// The frame of the batch starting at `first_seq`, while it is kept.
    pub fn frame(&self, first_seq: u64) -> Option<&[u8]> {
        let i = self.entries.binary_search_by_key(&first_seq, |e| e.batch.first_seq).ok()?;
        Some(self.entries[i].batch.frame())
    }

    /// When a pause after BUSY may end: `None` if not paused, or while
    /// frames sent before are still unanswered.
    pub fn resume_deadline(&self) -> Option<Instant> {
        self.resume_at.filter(|_| self.sent.is_empty())
    }

    /// Ends a pause if it is due: refused batches become pending again.
    pub fn resume(&mut self, now: Instant) -> bool {
        match self.resume_deadline() {
            Some(at) if at <= now => {
                self.resume_at = None;
                for e in &mut self.entries {
                    if matches!(e.state, State::Busy) {
                        e.state = State::Pending;
                    }
                }
                true
            }
            _ => false,
        }
    }

    /// Takes the oldest unanswered frame for an answer to `first_seq` and
    /// `count` (`None`: an ERROR, which names no batch).
    fn answered(&mut self, what: &str, seq_count: Option<(u64, u32)>) -> Result<&mut Entry<O>, ClientError> {
        let Some(&owed) = self.sent.front() else {
            return Err(ClientError::Protocol(format!("{what} with no EVENTS frame unanswered")));
        };
        if let Some((first_seq, _)) = seq_count
            && first_seq != owed
        {
            return Err(ClientError::Protocol(format!(
                "{what} for sequence {first_seq}, but the oldest frame unanswered starts at {owed}"
            )));
        }
        self.sent.pop_front();
        let i = self
            .entries
            .binary_search_by_key(&owed, |e| e.batch.first_seq)
            .map_err(|_| ClientError::Protocol("batch lost".into()))?;
        let e = &mut self.entries[i];
        if let Some((_, count)) = seq_count
            && count != e.batch.count
        {
            return Err(ClientError::Protocol(format!(
                "{what} for {count} events from {owed}; the batch has {}",
                e.batch.count
            )));
        }
        debug_assert!(matches!(e.state, State::Sent));
        Ok(e)
    }

    /// Records an ACK; returns the batch's round trip, from being taken to
    /// be written to `now`, if it was sent once (a resent batch's round
    /// trip says nothing about the server's queue: Karn's rule).
    pub fn on_ack(
        &mut self,
        first_seq: u64,
        count: u32,
        outcomes: Option<Vec<O>>,
        now: Instant,
    ) -> Result<Option<Duration>, ClientError> {
        if outcomes.as_ref().is_some_and(|o| o.len() != count as usize) {
            return Err(ClientError::Protocol(format!("ACK of {count} events with another number of outcomes")));
        }
        let e = self.answered("ACK", Some((first_seq, count)))?;
        e.state = State::Answered(Answer::Acked(outcomes));
        Ok(e.sent_at.filter(|_| e.sends == 1).map(|at| now.saturating_duration_since(at)))
    }

    pub fn on_busy(
        &mut self,
        first_seq: u64,
        count: u32,
        retry_after: Duration,
        now: Instant,
    ) -> Result<(), ClientError> {
        self.answered("BUSY", Some((first_seq, count)))?.state = State::Busy;
        let at = now + retry_after;
        self.resume_at = Some(self.resume_at.map_or(at, |r| r.max(at)));
        Ok(())
    }

    /// A non-closing ERROR for an EVENTS frame; returns the batch refused.
    pub fn on_refused(&mut self, error: ServerError) -> Result<(u64, u32), ClientError> {
        let e = self.answered("ERROR", None)?;
        e.state = State::Answered(Answer::Refused(error));
        Ok((e.batch.first_seq, e.batch.count))
    }

    /// The oldest batch, once it is answered.
    pub fn pop_answered(&mut self) -> Option<(Batch, Answer<O>)> {
        if !matches!(self.entries.front()?.state, State::Answered(_)) {
            return None;
        }
        let e = self.entries.pop_front().expect("front exists");
        let State::Answered(answer) = e.state else { unreachable!("checked") };
        Some((e.batch, answer))
    }

    /// A new connection: nothing is sent on it yet. Batches sent and not
    /// answered are pending again; a pause after BUSY still runs its time.
    pub fn reconnected(&mut self) {
        self.sent.clear();
        for e in &mut self.entries {
            if matches!(e.state, State::Sent) {
                e.state = State::Pending;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::OpenBatch;
    use trove_hunt::HuntEvent;
    use trove_proto::ErrorCode;

    /// Batches of `sizes` events, numbered from 1.
    fn batches(sizes: &[u32]) -> Vec<Batch> {
        let mut open = OpenBatch::<HuntEvent>::new(16, 1);
        sizes
            .iter()
            .map(|&n| {
                for p in 0..n {
                    open.push(&HuntEvent::dig(1, p));
                }
                open.seal(vec![0; OpenBatch::<HuntEvent>::buf_len(16)])
            })
            .collect()
    }

    fn with(sizes: &[u32]) -> Inflight<u32> {
        let mut f = Inflight::default();
        for b in batches(sizes) {
            f.push(b);
        }
        f
    }

    fn send_all(f: &mut Inflight<u32>) -> Vec<u64> {
        std::iter::from_fn(|| f.next_to_send().map(|(s, _)| s)).collect()
    }

    fn popped(f: &mut Inflight<u32>) -> Vec<(u64, Answer<u32>)> {
        std::iter::from_fn(|| f.pop_answered().map(|(b, a)| (b.first_seq, a))).collect()
    }

    #[test]
    fn an_ack_gives_the_round_trip_of_a_batch_sent_once_only() {
        let mut f = with(&[1, 1]);
        assert_eq!(send_all(&mut f), vec![1, 2]);
        let later = Instant::now() + Duration::from_millis(7);
        let rtt = f.on_ack(1, 1, None, later).unwrap().expect("sent once");
        assert!(rtt >= Duration::from_millis(7));
        // Refused, then sent again: its round trip would count the pause.
        f.on_busy(2, 1, Duration::ZERO, Instant::now()).unwrap();
        assert!(f.resume(Instant::now()));
        assert_eq!(send_all(&mut f), vec![2]);
        assert_eq!(f.on_ack(2, 1, None, Instant::now()).unwrap(), None);
    }

    #[test]
    fn acks_match_in_order_and_carry_outcomes() {
        let mut f = with(&[2, 3]);
        assert_eq!(send_all(&mut f), vec![1, 3]);
        assert!(f.frame(3).is_some() && f.frame(2).is_none());
        // An answer for anything but the oldest unanswered frame is refused.
        assert!(f.on_ack(3, 3, None, Instant::now()).is_err());
        let mut f = with(&[2, 3]);
        send_all(&mut f);
        assert!(f.on_ack(1, 3, None, Instant::now()).is_err(), "count must match");
        let mut f = with(&[2, 3]);
        send_all(&mut f);
        assert!(f.on_ack(1, 2, Some(vec![7]), Instant::now()).is_err(), "one outcome per event");
        f.on_ack(1, 2, Some(vec![7, 8]), Instant::now()).unwrap();
        f.on_ack(3, 3, None, Instant::now()).unwrap();
        assert_eq!(popped(&mut f), vec![(1, Answer::Acked(Some(vec![7, 8]))), (3, Answer::Acked(None))]);
        assert!(f.is_empty());
        assert!(f.on_ack(6, 1, None, Instant::now()).is_err(), "nothing is owed");
    }

    #[test]
    fn busy_pauses_until_the_time_passes_and_every_answer_is_in_then_resends_in_order() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut f = with(&[1, 1, 1, 1]);
        assert_eq!(send_all(&mut f), vec![1, 2, 3, 4]);
        f.on_ack(1, 1, None, Instant::now()).unwrap();
        f.on_busy(2, 1, ms(5), t0).unwrap();
        assert_eq!(f.next_to_send(), None, "paused");
        // Frames 3 and 4 are still owed: no resume yet, even when due.
        assert_eq!(f.resume_deadline(), None);
        assert!(!f.resume(t0 + ms(10)));
        f.on_busy(3, 1, ms(1), t0).unwrap();
        f.on_busy(4, 1, ms(1), t0).unwrap();
        assert_eq!(f.resume_deadline(), Some(t0 + ms(5)), "the longest wait wins");
        assert!(!f.resume(t0 + ms(4)));
        assert_eq!(popped(&mut f), vec![(1, Answer::Acked(None))]);
        assert!(f.resume(t0 + ms(5)));
        f.push(batches(&[1, 1, 1, 1, 1]).pop().unwrap());
        let resent: Vec<_> = std::iter::from_fn(|| f.next_to_send()).collect();
        assert_eq!(resent, vec![(2, true), (3, true), (4, true), (5, false)]);
    }

    #[test]
    fn a_later_batch_answered_first_waits_for_the_earlier_one() {
        let t0 = Instant::now();
        let mut f = with(&[1, 1]);
        send_all(&mut f);
        f.on_busy(1, 1, Duration::ZERO, t0).unwrap();
        f.on_ack(2, 1, None, Instant::now()).unwrap();
        assert!(f.pop_answered().is_none(), "batch 1 is not answered yet");
        assert!(f.resume(t0));
        assert_eq!(send_all(&mut f), vec![1]);
        f.on_ack(1, 1, None, Instant::now()).unwrap();
        assert_eq!(popped(&mut f), vec![(1, Answer::Acked(None)), (2, Answer::Acked(None))]);
    }

    #[test]
    fn a_reconnect_resends_everything_unanswered_in_order() {
        let t0 = Instant::now();
        let mut f = with(&[1, 2, 1, 1]);
        assert_eq!(send_all(&mut f), vec![1, 2, 4, 5]);
        f.on_ack(1, 1, None, Instant::now()).unwrap();
        f.reconnected();
        assert!(f.on_ack(2, 2, None, Instant::now()).is_err(), "the old connection's frames are forgotten");
        assert_eq!(f.next_to_send(), Some((2, true)));
        f.on_busy(2, 2, Duration::from_millis(3), t0).unwrap();
        // Reconnecting during a pause: the pause still runs its time.
        f.reconnected();
        assert_eq!(f.next_to_send(), None);
        assert!(f.resume(t0 + Duration::from_millis(3)));
        assert_eq!(send_all(&mut f), vec![2, 4, 5]);
    }

    #[test]
    fn a_refused_batch_completes_in_its_place_with_the_error() {
        let mut f = with(&[1, 1]);
        send_all(&mut f);
        let error = ServerError { raw_code: ErrorCode::BadBatch as u16, message: "no".into() };
        assert_eq!(f.on_refused(error.clone()).unwrap(), (1, 1));
        f.on_ack(2, 1, None, Instant::now()).unwrap();
        assert_eq!(popped(&mut f), vec![(1, Answer::Refused(error)), (2, Answer::Acked(None))]);
    }
}
