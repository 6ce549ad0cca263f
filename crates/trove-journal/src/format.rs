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
//! | 0 | 4 | magic `TVB1` |
//! | 4 | 4 | body length in bytes |
//! | 8 | 4 | CRC32C of the body |
//! | 12 | 4 | CRC32C of bytes 0..12 of the head |
//! | 16 | .. | body |
//!
//! Body: batch sequence (u64), event count (u32), zero (u32), then `count`
//! entries of `24 + record_size` bytes: engine time in µs (u64), producer
//! id (u64), producer sequence (u64), the event record.

use trove_core::{Record, Stamped};

pub const SEGMENT_MAGIC: &[u8; 8] = b"TROVEJNL";
pub const FORMAT_VERSION: u32 = 1;
pub const SEGMENT_HEADER_BYTES: usize = 64;
pub const FRAME_MAGIC: &[u8; 4] = b"TVB1";
pub const FRAME_HEAD_BYTES: usize = 16;
pub const BODY_HEAD_BYTES: usize = 16;
pub const ENTRY_HEAD_BYTES: usize = 24;
/// No batch frame is larger: checked before anything is allocated for one.
pub const FRAME_BODY_BYTES_MAX: usize = 64 << 20;

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
    Ok(SegmentHeader {
        shard: u32_at(b, 12),
        first_batch: u64_at(b, 16),
        record_size: u32_at(b, 24),
    })
}

/// Appends one batch frame to `out`.
pub fn encode_frame<E: Record>(batch: u64, entries: impl ExactSizeIterator<Item = Entry<E>>, out: &mut Vec<u8>) {
    let count = entries.len();
    let body_len = BODY_HEAD_BYTES + count * (ENTRY_HEAD_BYTES + E::SIZE);
    assert!(
        body_len <= FRAME_BODY_BYTES_MAX,
        "batch of {count} events exceeds the frame limit"
    );
    let start = out.len();
    out.resize(start + FRAME_HEAD_BYTES + body_len, 0);
    let (head, body) = out[start..].split_at_mut(FRAME_HEAD_BYTES);
    body[0..8].copy_from_slice(&batch.to_le_bytes());
    body[8..12].copy_from_slice(&(count as u32).to_le_bytes());
    let mut at = BODY_HEAD_BYTES;
    for e in entries {
        body[at..at + 8].copy_from_slice(&e.stamped.time_us.to_le_bytes());
        body[at + 8..at + 16].copy_from_slice(&e.producer.to_le_bytes());
        body[at + 16..at + 24].copy_from_slice(&e.producer_seq.to_le_bytes());
        e.stamped
            .event
            .encode(&mut body[at + ENTRY_HEAD_BYTES..at + ENTRY_HEAD_BYTES + E::SIZE]);
        at += ENTRY_HEAD_BYTES + E::SIZE;
    }
    debug_assert_eq!(at, body_len);
    head[0..4].copy_from_slice(FRAME_MAGIC);
    head[4..8].copy_from_slice(&(body_len as u32).to_le_bytes());
    head[8..12].copy_from_slice(&crc32c::crc32c(body).to_le_bytes());
    let head_crc = crc32c::crc32c(&head[..12]);
    head[12..16].copy_from_slice(&head_crc.to_le_bytes());
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
#[derive(Clone, Copy, Debug)]
pub struct Body<'a> {
    pub batch: u64,
    pub count: usize,
    entries: &'a [u8],
}

/// Checks a body against its CRC and its own counts.
pub fn decode_body<E: Record>(body: &[u8], crc: u32) -> Result<Body<'_>, FrameError> {
    if crc32c::crc32c(body) != crc {
        return Err(FrameError::BadChecksum);
    }
    if body.len() < BODY_HEAD_BYTES {
        return Err(FrameError::Short);
    }
    let count = u32_at(body, 8) as usize;
    let entries = &body[BODY_HEAD_BYTES..];
    if entries.len() != count * (ENTRY_HEAD_BYTES + E::SIZE) {
        return Err(FrameError::BadLength(count as u64));
    }
    Ok(Body {
        batch: u64_at(body, 0),
        count,
        entries,
    })
}

impl Body<'_> {
    pub fn entries<E: Record>(&self) -> impl ExactSizeIterator<Item = Entry<E>> + '_ {
        self.entries.chunks_exact(ENTRY_HEAD_BYTES + E::SIZE).map(|c| Entry {
            producer: u64_at(c, 8),
            producer_seq: u64_at(c, 16),
            stamped: Stamped {
                time_us: u64_at(c, 0),
                event: E::decode(&c[ENTRY_HEAD_BYTES..]),
            },
        })
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
                stamped: Stamped {
                    time_us: 1000 + i,
                    event: HuntEvent::move_by(i as u32, 3, 1, -1),
                },
            })
            .collect()
    }

    #[test]
    fn frame_round_trips() {
        let mut buf = Vec::new();
        encode_frame(42, entries(5).into_iter(), &mut buf);
        let (len, crc) = decode_frame_head(&buf).unwrap();
        assert_eq!(buf.len(), FRAME_HEAD_BYTES + len);
        let body = decode_body::<HuntEvent>(&buf[FRAME_HEAD_BYTES..], crc).unwrap();
        assert_eq!(body.batch, 42);
        assert_eq!(body.entries::<HuntEvent>().collect::<Vec<_>>(), entries(5));
    }

    #[test]
    fn header_round_trips_and_rejects_damage() {
        let h = SegmentHeader {
            shard: 3,
            first_batch: 99,
            record_size: 32,
        };
        let mut b = encode_segment_header(&h);
        assert_eq!(decode_segment_header(&b), Ok(h));
        b[20] ^= 1;
        assert_eq!(decode_segment_header(&b), Err(FrameError::BadChecksum));
        assert_eq!(decode_segment_header(&b[..10]), Err(FrameError::Short));
    }

    #[test]
    fn every_flipped_bit_is_detected() {
        let mut buf = Vec::new();
        encode_frame(1, entries(3).into_iter(), &mut buf);
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
            encode_frame(batch, entries(n).into_iter(), &mut buf);
            let (len, crc) = decode_frame_head(&buf).unwrap();
            let body = decode_body::<HuntEvent>(&buf[FRAME_HEAD_BYTES..FRAME_HEAD_BYTES + len], crc).unwrap();
            prop_assert_eq!(body.batch, batch);
            prop_assert_eq!(body.entries::<HuntEvent>().collect::<Vec<_>>(), entries(n));
        }
    }
}
