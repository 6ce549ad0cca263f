//! The open batch: events encoded straight into the EVENTS frame that will
//! carry them, so sending an event is one record encoding and no more.

use trove_core::Record;
use trove_proto::Kind;
use trove_proto::frame::{EVENTS_HEAD_LEN, HEADER_LEN};

/// Frame header plus EVENTS head: where the first record starts.
pub(crate) const EVENTS_FRAME_HEAD: usize = HEADER_LEN + EVENTS_HEAD_LEN;

/// A closed batch: a complete EVENTS frame and the sequence numbers it
/// carries.
#[derive(Debug)]
pub(crate) struct Batch {
    pub first_seq: u64,
    pub count: u32,
    /// The frame is `buf[..len]`; the rest is room this (recycled) buffer
    /// has for a full batch.
    pub buf: Vec<u8>,
    pub len: usize,
}

impl Batch {
    pub fn frame(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    /// One past the last sequence number.
    pub fn end_seq(&self) -> u64 {
        self.first_seq + u64::from(self.count)
    }
}

/// The batch being filled.
#[derive(Debug)]
pub(crate) struct OpenBatch<E: Record> {
    /// Always `buf_len(cap)` bytes: records go in at fixed offsets, no
    /// length bookkeeping per event.
    buf: Vec<u8>,
    count: u32,
    cap: u32,
    first_seq: u64,
    _event: std::marker::PhantomData<E>,
}

impl<E: Record> OpenBatch<E> {
    /// Bytes of a buffer that holds a full batch of `cap` events.
    pub fn buf_len(cap: u32) -> usize {
        EVENTS_FRAME_HEAD + cap as usize * E::SIZE
    }

    pub fn new(cap: u32, first_seq: u64) -> Self {
        assert!(cap > 0 && first_seq > 0);
        Self { buf: vec![0; Self::buf_len(cap)], count: 0, cap, first_seq, _event: std::marker::PhantomData }
    }

    #[inline]
    pub fn len(&self) -> u32 {
        self.count
    }

    #[inline]
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    #[cfg(test)]
    pub fn is_full(&self) -> bool {
        self.count == self.cap
    }

    pub fn cap(&self) -> u32 {
        self.cap
    }

    /// Sequence number the next event gets.
    #[inline]
    pub fn next_seq(&self) -> u64 {
        self.first_seq + u64::from(self.count)
    }

    /// Encodes `event` into the frame; returns its sequence number.
    ///
    /// # Panics
    /// If the batch is full (callers close it at `cap` events or before).
    #[inline]
    pub fn push(&mut self, event: &E) -> u64 {
        let at = EVENTS_FRAME_HEAD + self.count as usize * E::SIZE;
        event.encode(&mut self.buf[at..at + E::SIZE]);
        let seq = self.next_seq();
        self.count += 1;
        seq
    }

    /// Closes the batch: writes the frame's header and EVENTS head and
    /// returns it; the next batch starts in `fresh` (a buffer of `buf_len`
    /// bytes, whatever they hold).
    ///
    /// # Panics
    /// If the batch is empty or `fresh` has the wrong length.
    pub fn seal(&mut self, fresh: Vec<u8>) -> Batch {
        assert!(self.count > 0, "sealing an empty batch");
        assert_eq!(fresh.len(), self.buf.len(), "recycled buffer of another size");
        let body = EVENTS_HEAD_LEN + self.count as usize * E::SIZE;
        let b = &mut self.buf;
        b[0..4].copy_from_slice(&(body as u32).to_le_bytes());
        b[4..8].copy_from_slice(&[Kind::Events as u8, 0, 0, 0]);
        b[8..16].copy_from_slice(&self.first_seq.to_le_bytes());
        b[16..20].copy_from_slice(&self.count.to_le_bytes());
        b[20..24].copy_from_slice(&[0; 4]);
        let batch = Batch {
            first_seq: self.first_seq,
            count: self.count,
            buf: std::mem::replace(&mut self.buf, fresh),
            len: HEADER_LEN + body,
        };
        self.first_seq += u64::from(self.count);
        self.count = 0;
        batch
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use trove_hunt::{HuntEvent, TreasureHunt};
    use trove_proto::Frame;
    use trove_proto::frame::{self, FRAME_BODY_MAX_DEFAULT};

    fn decode(batch: &Batch) -> (u64, u32, Vec<HuntEvent>) {
        let (h, total) = frame::split(batch.frame(), FRAME_BODY_MAX_DEFAULT).unwrap().unwrap();
        assert_eq!(total, batch.len);
        match frame::decode(h, &batch.frame()[HEADER_LEN..], crate::conn::sizes::<TreasureHunt>()).unwrap() {
            Frame::Events { first_seq, count, records } => {
                (first_seq, count, records.chunks_exact(32).map(HuntEvent::decode).collect())
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn events_go_straight_into_a_valid_frame_with_consecutive_sequences() {
        let mut open = OpenBatch::<HuntEvent>::new(3, 10);
        let events: Vec<_> = (0..7).map(|p| HuntEvent::move_by(1, p, 1, -1)).collect();
        let mut batches = Vec::new();
        let mut seqs = Vec::new();
        for e in &events {
            seqs.push(open.push(e));
            if open.is_full() {
                batches.push(open.seal(vec![0xEE; OpenBatch::<HuntEvent>::buf_len(3)]));
            }
        }
        assert_eq!(seqs, (10..17).collect::<Vec<_>>());
        batches.push(open.seal(vec![0; OpenBatch::<HuntEvent>::buf_len(3)]));
        let decoded: Vec<_> = batches.iter().map(decode).collect();
        assert_eq!(decoded[0], (10, 3, events[0..3].to_vec()));
        // A recycled buffer's stale bytes never leak into a frame.
        assert_eq!(decoded[1], (13, 3, events[3..6].to_vec()));
        assert_eq!(decoded[2], (16, 1, events[6..7].to_vec()));
        assert_eq!(batches[2].end_seq(), 17);
        assert_eq!(open.next_seq(), 17);
        assert!(open.is_empty());
    }

    #[test]
    #[should_panic(expected = "empty")]
    fn an_empty_batch_is_never_sealed() {
        let mut open = OpenBatch::<HuntEvent>::new(3, 1);
        open.seal(vec![0; OpenBatch::<HuntEvent>::buf_len(3)]);
    }
}
