//! The journal's byte layout (`docs/journal.md` has the tables).
//!
//! All integers are little-endian.
//!
//! Segment header, 64 bytes:
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 8 | magic `TROVEJNL` |
//! | 8 | 4 | format version (1) |
//! | 12 | 4 | shard index |
//! | 16 | 8 | sequence of the first batch in this segment |
//! | 24 | 4 | event record size in bytes |
//! | 28 | 32 | zero |
//! | 60 | 4 | CRC32C of bytes 0..60 |
//!
//! Batch frame: a 16-byte head, then the body:
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 4 | magic `TVB2` |
//! | 4 | 4 | body length in bytes |
//! | 8 | 4 | CRC32C of the body |
//! | 12 | 4 | CRC32C of bytes 0..12 of the head |
//! | 16 | .. | body |
//!
//! Body: a 32-byte head (batch sequence u64, event count n u32, run count
//! m u32, base time µs u64, flags u32, zero u32), then m runs of 24 bytes
//! (producer u64, first producer sequence u64, events k u32, flags u32),
//! then for each run with flag bit 0 its k sequence offsets (u32 each), then
//! per-event times if body flag bit 0 (n x u32, µs after the base time) or
//! bit 1 (n x u64, absolute), then the n event records. Events follow the
//! runs in order: run 0's k events first. Without offsets a run's events
//! have sequences `first, first + 1, ...`; without per-event times every
//! event has the base time (the engine stamps a drained batch once).

use trove_core::{Record, Stamped};

pub const SEGMENT_MAGIC: &[u8; 8] = b"TROVEJNL";
pub const FORMAT_VERSION: u32 = 1;
pub const SEGMENT_HEADER_BYTES: usize = 64;
pub const FRAME_MAGIC: &[u8; 4] = b"TVB2";
pub const FRAME_HEAD_BYTES: usize = 16;
pub const BODY_HEAD_BYTES: usize = 32;
pub const RUN_BYTES: usize = 24;
const BODY_TIMES_U32: u32 = 1;
const BODY_TIMES_U64: u32 = 2;
const RUN_OFFSETS: u32 = 1;
/// No batch frame is larger: checked before anything is allocated for one.
pub const FRAME_BODY_BYTES_MAX: usize = 64 << 20;

/// Consecutive events of a batch from one producer: their sequences are
/// `first_seq + offsets[i]`, or `first_seq + i` without offsets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Run<'a> {
    pub producer: u64,
    pub first_seq: u64,
    pub len: usize,
    pub offsets: Option<&'a [u32]>,
}

/// One journaled event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry<E> {
    pub producer: u64,
    pub producer_seq: u64,
    pub stamped: Stamped<E>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentHeader {
    pub shard: u32,
    pub first_batch: u64,
    pub record_size: u32,
}

/// Why bytes are not a valid header or frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FrameError {
    /// Fewer bytes than the header or frame needs.
    Short,
    BadMagic,
    BadVersion(u32),
    BadChecksum,
    /// A length or count that cannot be right.
    BadLength(u64),
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FrameError::Short => write!(f, "truncated"),
            FrameError::BadMagic => write!(f, "bad magic"),
            FrameError::BadVersion(v) => write!(f, "unsupported format version {v}"),
            FrameError::BadChecksum => write!(f, "checksum mismatch"),
            FrameError::BadLength(n) => write!(f, "impossible length {n}"),
        }
    }
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

pub fn encode_segment_header(h: &SegmentHeader) -> [u8; SEGMENT_HEADER_BYTES] {
    let mut b = [0u8; SEGMENT_HEADER_BYTES];
    b[0..8].copy_from_slice(SEGMENT_MAGIC);
    b[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    b[12..16].copy_from_slice(&h.shard.to_le_bytes());
    b[16..24].copy_from_slice(&h.first_batch.to_le_bytes());
    b[24..28].copy_from_slice(&h.record_size.to_le_bytes());
    let crc = crc32c::crc32c(&b[..60]);
    b[60..64].copy_from_slice(&crc.to_le_bytes());
    b
}

pub fn decode_segment_header(b: &[u8]) -> Result<SegmentHeader, FrameError> {
    if b.len() < SEGMENT_HEADER_BYTES {
        return Err(FrameError::Short);
    }
    if &b[0..8] != SEGMENT_MAGIC {
        return Err(FrameError::BadMagic);
    }
    if crc32c::crc32c(&b[..60]) != u32_at(b, 60) {
        return Err(FrameError::BadChecksum);
    }
    let version = u32_at(b, 8);
    if version != FORMAT_VERSION {
        return Err(FrameError::BadVersion(version));
    }
    Ok(SegmentHeader { shard: u32_at(b, 12), first_batch: u64_at(b, 16), record_size: u32_at(b, 24) })
}

/// Appends one batch frame to `out`: `events` in order, covered by `runs`.
///
/// # Panics
/// If the runs do not cover the events exactly, or the frame would exceed
/// `FRAME_BODY_BYTES_MAX` (the engine bounds batches well below it).
pub fn encode_frame<E: Record>(batch: u64, runs: &[Run<'_>], events: &[Stamped<E>], out: &mut Vec<u8>) {
    let n = events.len();
    assert_eq!(runs.iter().map(|r| r.len).sum::<usize>(), n, "runs cover the events");
    let base = events.iter().map(|e| e.time_us).min().unwrap_or(0);
    let span = events.iter().map(|e| e.time_us - base).max().unwrap_or(0);
    let (flags, time_bytes) = match span {
        0 => (0, 0),
        s if s <= u64::from(u32::MAX) => (BODY_TIMES_U32, 4),
        _ => (BODY_TIMES_U64, 8),
    };
    let offsets: usize = runs.iter().filter_map(|r| r.offsets).map(|o| o.len() * 4).sum();
    let body_len = BODY_HEAD_BYTES + runs.len() * RUN_BYTES + offsets + n * (time_bytes + E::SIZE);
    assert!(body_len <= FRAME_BODY_BYTES_MAX, "batch of {n} events exceeds the frame limit");
    let start = out.len();
    out.reserve(FRAME_HEAD_BYTES + body_len);
    out.extend_from_slice(&[0; FRAME_HEAD_BYTES]);
    out.extend_from_slice(&batch.to_le_bytes());
    out.extend_from_slice(&(n as u32).to_le_bytes());
    out.extend_from_slice(&(runs.len() as u32).to_le_bytes());
    out.extend_from_slice(&base.to_le_bytes());
    out.extend_from_slice(&flags.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    for r in runs {
        out.extend_from_slice(&r.producer.to_le_bytes());
        out.extend_from_slice(&r.first_seq.to_le_bytes());
        out.extend_from_slice(&(r.len as u32).to_le_bytes());
        out.extend_from_slice(&(if r.offsets.is_some() { RUN_OFFSETS } else { 0 }).to_le_bytes());
    }
    for r in runs {
        if let Some(o) = r.offsets {
            assert_eq!(o.len(), r.len, "one offset per event of the run");
            for x in o {
                out.extend_from_slice(&x.to_le_bytes());
            }
        }
    }
    match flags {
        BODY_TIMES_U32 => events.iter().for_each(|e| out.extend_from_slice(&((e.time_us - base) as u32).to_le_bytes())),
        BODY_TIMES_U64 => events.iter().for_each(|e| out.extend_from_slice(&e.time_us.to_le_bytes())),
        _ => {}
    }
    let records = out.len();
    out.resize(records + n * E::SIZE, 0);
    for (e, slot) in events.iter().zip(out[records..].chunks_exact_mut(E::SIZE)) {
        e.event.encode(slot);
    }
    debug_assert_eq!(out.len() - start, FRAME_HEAD_BYTES + body_len);
    let (head, body) = out[start..].split_at_mut(FRAME_HEAD_BYTES);
    head[0..4].copy_from_slice(FRAME_MAGIC);
    head[4..8].copy_from_slice(&(body_len as u32).to_le_bytes());
    head[8..12].copy_from_slice(&crc32c::crc32c(body).to_le_bytes());
    let head_crc = crc32c::crc32c(&head[..12]);
    head[12..16].copy_from_slice(&head_crc.to_le_bytes());
}

/// Groups entries into runs of consecutive sequences of one producer (for
/// tools and tests that hold entries rather than a shard's batch).
pub fn encode_entries<E: Record>(batch: u64, entries: &[Entry<E>], out: &mut Vec<u8>) {
    let mut runs = Vec::new();
    let mut i = 0;
    while i < entries.len() {
        let mut j = i + 1;
        while j < entries.len()
            && entries[j].producer == entries[i].producer
            && entries[j].producer_seq == entries[i].producer_seq + (j - i) as u64
        {
            j += 1;
        }
        runs.push(Run { producer: entries[i].producer, first_seq: entries[i].producer_seq, len: j - i, offsets: None });
        i = j;
    }
    let events: Vec<Stamped<E>> = entries.iter().map(|e| e.stamped).collect();
    encode_frame(batch, &runs, &events, out);
}

/// Checks a frame head; returns the body length and CRC it promises.
pub fn decode_frame_head(b: &[u8]) -> Result<(usize, u32), FrameError> {
    if b.len() < FRAME_HEAD_BYTES {
        return Err(FrameError::Short);
    }
    if &b[0..4] != FRAME_MAGIC {
        return Err(FrameError::BadMagic);
    }
    if crc32c::crc32c(&b[..12]) != u32_at(b, 12) {
        return Err(FrameError::BadChecksum);
    }
    let len = u32_at(b, 4) as usize;
    if !(BODY_HEAD_BYTES..=FRAME_BODY_BYTES_MAX).contains(&len) {
        return Err(FrameError::BadLength(len as u64));
    }
    Ok((len, u32_at(b, 8)))
}

/// A checked frame body.
#[derive(Clone, Debug)]
pub struct Body<'a> {
    pub batch: u64,
    pub count: usize,
    base_time_us: u64,
    flags: u32,
    runs: &'a [u8],
    offsets: &'a [u8],
    times: &'a [u8],
    records: &'a [u8],
}

/// Checks a body against its CRC and its own counts and lengths.
pub fn decode_body<E: Record>(body: &[u8], crc: u32) -> Result<Body<'_>, FrameError> {
    if crc32c::crc32c(body) != crc {
        return Err(FrameError::BadChecksum);
    }
    if body.len() < BODY_HEAD_BYTES {
        return Err(FrameError::Short);
    }
    let count = u32_at(body, 8) as usize;
    let run_count = u32_at(body, 12) as usize;
    let flags = u32_at(body, 24);
    let time_bytes = match flags {
        0 => 0,
        BODY_TIMES_U32 => 4,
        BODY_TIMES_U64 => 8,
        other => return Err(FrameError::BadLength(u64::from(other))),
    };
    let rest = &body[BODY_HEAD_BYTES..];
    let runs = rest.get(..run_count.checked_mul(RUN_BYTES).ok_or(FrameError::BadLength(run_count as u64))?);
    let runs = runs.ok_or(FrameError::BadLength(run_count as u64))?;
    let mut covered = 0usize;
    let mut offset_bytes = 0usize;
    for r in runs.chunks_exact(RUN_BYTES) {
        let k = u32_at(r, 16) as usize;
        covered += k;
        match u32_at(r, 20) {
            0 => {}
            RUN_OFFSETS => offset_bytes += k * 4,
            other => return Err(FrameError::BadLength(u64::from(other))),
        }
    }
    if covered != count {
        return Err(FrameError::BadLength(covered as u64));
    }
    let rest = &rest[runs.len()..];
    let want = offset_bytes as u64 + count as u64 * (time_bytes + E::SIZE) as u64;
    if rest.len() as u64 != want {
        return Err(FrameError::BadLength(want));
    }
    let (offsets, rest) = rest.split_at(offset_bytes);
    let (times, records) = rest.split_at(count * time_bytes);
    Ok(Body { batch: u64_at(body, 0), count, base_time_us: u64_at(body, 16), flags, runs, offsets, times, records })
}

impl Body<'_> {
    /// The batch's events with their origins and times, in order.
    pub fn entries<E: Record>(&self) -> impl ExactSizeIterator<Item = Entry<E>> + '_ {
        let mut origins = Vec::with_capacity(self.count);
        let mut offsets = self.offsets.chunks_exact(4).map(|o| u64::from(u32_at(o, 0)));
        for r in self.runs.chunks_exact(RUN_BYTES) {
            let (producer, first, k, has_offsets) = (u64_at(r, 0), u64_at(r, 8), u32_at(r, 16), u32_at(r, 20) != 0);
            for i in 0..u64::from(k) {
                let offset = if has_offsets { offsets.next().unwrap_or(0) } else { i };
                origins.push((producer, first.wrapping_add(offset)));
            }
        }
        let base = self.base_time_us;
        let flags = self.flags;
        let times = self.times;
        origins.into_iter().zip(self.records.chunks_exact(E::SIZE)).enumerate().map(
            move |(i, ((producer, producer_seq), rec))| {
                let time_us = match flags {
                    BODY_TIMES_U32 => base.wrapping_add(u64::from(u32_at(times, i * 4))),
                    BODY_TIMES_U64 => u64_at(times, i * 8),
                    _ => base,
                };
                Entry { producer, producer_seq, stamped: Stamped { time_us, event: E::decode(rec) } }
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use trove_hunt::HuntEvent;

    fn entries(n: u64) -> Vec<Entry<HuntEvent>> {
        (0..n)
            .map(|i| Entry {
                producer: 7,
                producer_seq: 100 + i,
                stamped: Stamped { time_us: 1000 + i, event: HuntEvent::move_by(i as u32, 3, 1, -1) },
            })
            .collect()
    }

    #[test]
    fn frame_round_trips() {
        let mut buf = Vec::new();
        encode_entries(42, &entries(5), &mut buf);
        let (len, crc) = decode_frame_head(&buf).unwrap();
        assert_eq!(buf.len(), FRAME_HEAD_BYTES + len);
        let body = decode_body::<HuntEvent>(&buf[FRAME_HEAD_BYTES..], crc).unwrap();
        assert_eq!(body.batch, 42);
        assert_eq!(body.entries::<HuntEvent>().collect::<Vec<_>>(), entries(5));
    }

    #[test]
    fn header_round_trips_and_rejects_damage() {
        let h = SegmentHeader { shard: 3, first_batch: 99, record_size: 32 };
        let mut b = encode_segment_header(&h);
        assert_eq!(decode_segment_header(&b), Ok(h));
        b[20] ^= 1;
        assert_eq!(decode_segment_header(&b), Err(FrameError::BadChecksum));
        assert_eq!(decode_segment_header(&b[..10]), Err(FrameError::Short));
    }

    #[test]
    fn every_flipped_bit_is_detected() {
        let mut buf = Vec::new();
        encode_entries(1, &entries(3), &mut buf);
        for bit in 0..buf.len() * 8 {
            let mut b = buf.clone();
            b[bit / 8] ^= 1 << (bit % 8);
            let ok = decode_frame_head(&b).and_then(|(len, crc)| {
                decode_body::<HuntEvent>(
                    &b[FRAME_HEAD_BYTES..FRAME_HEAD_BYTES + len.min(b.len() - FRAME_HEAD_BYTES)],
                    crc,
                )
                .map(|_| ())
            });
            assert!(ok.is_err(), "bit {bit} flipped unnoticed");
        }
    }

    #[test]
    fn runs_with_offsets_and_uniform_times_round_trip() {
        let events: Vec<Stamped<HuntEvent>> =
            (0..5).map(|i| Stamped { time_us: 77, event: HuntEvent::scan(i, i) }).collect();
        let offsets = [0u32, 2, 5];
        let runs = [
            Run { producer: 9, first_seq: 10, len: 3, offsets: Some(&offsets) },
            Run { producer: 4, first_seq: 1, len: 2, offsets: None },
        ];
        let mut buf = Vec::new();
        encode_frame(3, &runs, &events, &mut buf);
        // Uniform time: no per-event times; 5 records, 3 offsets, 2 runs.
        assert_eq!(buf.len(), FRAME_HEAD_BYTES + BODY_HEAD_BYTES + 2 * RUN_BYTES + 3 * 4 + 5 * 32);
        let (len, crc) = decode_frame_head(&buf).unwrap();
        let body = decode_body::<HuntEvent>(&buf[FRAME_HEAD_BYTES..FRAME_HEAD_BYTES + len], crc).unwrap();
        let got: Vec<_> = body.entries::<HuntEvent>().map(|e| (e.producer, e.producer_seq, e.stamped)).collect();
        let want: Vec<_> = [(9, 10), (9, 12), (9, 15), (4, 1), (4, 2)]
            .into_iter()
            .zip(&events)
            .map(|((p, s), e)| (p, s, *e))
            .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn far_apart_times_are_kept_exactly() {
        let events = [0u64, 1 << 40].map(|t| Entry {
            producer: 1,
            producer_seq: t + 1,
            stamped: Stamped { time_us: t, event: HuntEvent::dig(1, 1) },
        });
        let mut buf = Vec::new();
        encode_entries(1, &events, &mut buf);
        let (len, crc) = decode_frame_head(&buf).unwrap();
        let body = decode_body::<HuntEvent>(&buf[FRAME_HEAD_BYTES..FRAME_HEAD_BYTES + len], crc).unwrap();
        assert_eq!(body.entries::<HuntEvent>().collect::<Vec<_>>(), events);
    }

    proptest! {
        /// Arbitrary bytes never panic the decoders.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = decode_segment_header(&bytes);
            if let Ok((len, crc)) = decode_frame_head(&bytes) {
                let body = &bytes[FRAME_HEAD_BYTES.min(bytes.len())..];
                let body = &body[..len.min(body.len())];
                if let Ok(b) = decode_body::<HuntEvent>(body, crc) {
                    let _ = b.entries::<HuntEvent>().count();
                }
            }
            let _ = decode_body::<HuntEvent>(&bytes, crc32c::crc32c(&bytes)).map(|b| b.entries::<HuntEvent>().count());
        }

        #[test]
        fn frames_round_trip(n in 0u64..50, batch: u64) {
            let mut buf = Vec::new();
            encode_entries(batch, &entries(n), &mut buf);
            let (len, crc) = decode_frame_head(&buf).unwrap();
            let body = decode_body::<HuntEvent>(&buf[FRAME_HEAD_BYTES..FRAME_HEAD_BYTES + len], crc).unwrap();
            prop_assert_eq!(body.batch, batch);
            prop_assert_eq!(body.entries::<HuntEvent>().collect::<Vec<_>>(), entries(n));
        }
    }
}
