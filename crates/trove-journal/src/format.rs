//! The journal's byte layout (`docs/journal.md` has the tables).
//!
//! All integers are little-endian.
//!
//! Segment header, 64 bytes:
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 8 | magic `TROVEJNL` |
//! | 8 | 4 | format version (4; 1 to 3 are read too) |
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
//! m u32, base time µs u64, flags u32, unsynced batches u32: with body
//! flag bit 4, since version 4, how many batches before this one were not
//! yet covered by a completed `fdatasync` when it was encoded; zero
//! otherwise), then m runs of 24 bytes
//! (producer u64, first producer sequence u64, events k u32, flags u32:
//! low byte 1 = k u32 offsets follow, 2 = k u16 offsets follow, 3 = a
//! bitmap of the offsets follows, its length in bytes in the upper 24
//! bits, since version 3), then the runs' sequence offsets, then
//! per-event times if body flag bit 0 (n x u32, µs after the base time)
//! or bit 1 (n x u64, absolute), then the n event records: with body
//! flag bit 3 (packed) each in the record type's own
//! storage form (`Record::encode_packed`; docs/journal.md has the hunt
//! event's); with body flag bit 2 (trimmed: what version 1 wrote for
//! records up to 255 bytes) a length byte and the record's bytes up to its
//! last non-zero one; otherwise the full record. A segment's version is
//! that of the engine that started it: after an upgrade, packed frames
//! follow trimmed ones in a version-1 segment, each frame's flags saying
//! which it holds (and `trove.meta`'s `format=3` keeps older engines out).
//! Events follow the runs in order: run 0's k events first. Without offsets a run's events
//! have sequences `first, first + 1, ...`; without per-event times every
//! event has the base time (the engine stamps a drained batch once).

use trove_core::{Record, Stamped};

pub const SEGMENT_MAGIC: &[u8; 8] = b"TROVEJNL";
pub const FORMAT_VERSION: u32 = 4;
/// The oldest version still read: an engine of version 1 never wrote
/// packed records.
pub const FORMAT_VERSION_MIN: u32 = 1;
pub const SEGMENT_HEADER_BYTES: usize = 64;
pub const FRAME_MAGIC: &[u8; 4] = b"TVB2";
pub const FRAME_HEAD_BYTES: usize = 16;
pub const BODY_HEAD_BYTES: usize = 32;
pub const RUN_BYTES: usize = 24;
const BODY_TIMES_U32: u32 = 1;
const BODY_TIMES_U64: u32 = 2;
const BODY_TIMES_MASK: u32 = 3;
/// Records are stored trimmed: a length byte, then the record up to its last
/// non-zero byte (the rest is zero). Fixed-size records otherwise.
const BODY_TRIMMED: u32 = 4;
/// Records are stored in the record type's packed form (`Record::PACKED`):
/// a journaled event's fields are mostly small numbers in wide slots (a
/// hunt id below 65,536 in a u32, a step of -4..4 in an i16), and the
/// disk's bandwidth under an `interval` sync is what bounds the journal.
const BODY_PACKED: u32 = 8;
/// The body head's last u32 holds the frame's sync mark (format version
/// 4): how many batches before this one were not yet covered by a
/// completed `fdatasync` when the writer encoded it, so that every batch
/// below `batch - that` was durable then. Recovery uses it to tell a
/// damaged frame that a sync covered (corruption) from unsynced bytes a
/// crash tore while keeping later ones (docs/decisions/0036-synced-through-marker.md).
/// Without the flag (versions 1-3) the field is zero and the frame proves
/// nothing either way.
const BODY_SYNC_MARK: u32 = 16;
const RUN_OFFSETS_U32: u32 = 1;
const RUN_OFFSETS_U16: u32 = 2;
/// The run's offsets as a bitmap (format version 3): bit `x` of the bitmap
/// (byte `x / 8`, bit `x % 8`) is set for each offset `x`, in increasing
/// order. A shard's share of a producer batch split over S shards holds
/// about every S-th position, so the bitmap takes about S / 8 bytes per
/// event instead of 2: on two shards and the standard workload, a frame
/// holds 6.15 bytes per event instead of 7.9, to write and to replay.
const RUN_OFFSETS_BITMAP: u32 = 3;
/// A run's flags: the offsets' form in the low byte, a bitmap's length in
/// bytes above it.
const RUN_FORM_MASK: u32 = 0xff;
const RUN_BITMAP_BYTES_MAX: usize = (1 << 24) - 1;

/// How a run's sequence offsets are stored: the one mapping between a
/// run's flags and its offsets, for the writer and the reader.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum OffsetForm {
    /// None stored: the run's sequences are consecutive.
    Consecutive,
    U16,
    U32,
    /// A bitmap of this many bytes.
    Bitmap(u32),
}

impl OffsetForm {
    /// The form that `flags` name, or `None` for flags no writer sets.
    fn of(flags: u32) -> Option<Self> {
        match flags {
            0 => Some(Self::Consecutive),
            RUN_OFFSETS_U16 => Some(Self::U16),
            RUN_OFFSETS_U32 => Some(Self::U32),
            f if f & RUN_FORM_MASK == RUN_OFFSETS_BITMAP && f >> 8 > 0 => Some(Self::Bitmap(f >> 8)),
            _ => None,
        }
    }

    fn flags(self) -> u32 {
        match self {
            Self::Consecutive => 0,
            Self::U16 => RUN_OFFSETS_U16,
            Self::U32 => RUN_OFFSETS_U32,
            Self::Bitmap(bytes) => RUN_OFFSETS_BITMAP | bytes << 8,
        }
    }

    /// The bytes the offsets of a run of `k` events take.
    fn bytes(self, k: u32) -> u64 {
        match self {
            Self::Consecutive => 0,
            Self::U16 => 2 * u64::from(k),
            Self::U32 => 4 * u64::from(k),
            Self::Bitmap(bytes) => u64::from(bytes),
        }
    }
}
/// No batch frame is larger: checked before anything is allocated for one.
pub const FRAME_BODY_BYTES_MAX: usize = 64 << 20;

/// No batch frame holds more events. Decoding a frame allocates per event
/// (about 60 bytes with its producer and time), so a 64 MiB body of the
/// smallest records could otherwise ask for over a gigabyte; this keeps
/// it near 120 MiB. The engine's drains stay below it
/// (`EngineConfig::validate`: a drain is at most `drain_events_max` plus
/// one producer batch, each at most 2^20).
pub const FRAME_EVENTS_MAX: usize = 1 << 21;

/// The most body bytes one event can take in a frame the writer encodes:
/// its record at its largest stored form, an 8-byte time, a 4-byte offset
/// (a bitmap is chosen only when smaller than two bytes per event). With
/// `RUN_BYTES` per run and `BODY_HEAD_BYTES`, this bounds a frame's body
/// before it is encoded, so that a batch can be split over several frames
/// that each stay within `FRAME_BODY_BYTES_MAX` (`JournalWriter::append_parts`).
pub fn event_bytes_max<E: Record>(uniform_time: bool, offsets: bool) -> usize {
    let record = if E::PACKED {
        E::PACKED_MAX
    } else if E::SIZE <= usize::from(u8::MAX) {
        1 + E::SIZE
    } else {
        E::SIZE
    };
    record + if uniform_time { 0 } else { 8 } + if offsets { 4 } else { 0 }
}

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
    if !(FORMAT_VERSION_MIN..=FORMAT_VERSION).contains(&version) {
        return Err(FrameError::BadVersion(version));
    }
    Ok(SegmentHeader { shard: u32_at(b, 12), first_batch: u64_at(b, 16), record_size: u32_at(b, 24) })
}

/// Appends one batch frame to `out`: `events` in order, covered by `runs`.
///
/// # Panics
/// If the runs do not cover the events exactly, or the frame would exceed
/// `FRAME_BODY_BYTES_MAX` (the engine bounds batches well below it).
///
/// The frame carries no sync mark (as versions 1-3 wrote them): for tools
/// and tests; the writer uses `encode_frame_parts`.
pub fn encode_frame<E: Record>(batch: u64, runs: &[Run<'_>], events: &[Stamped<E>], out: &mut Vec<u8>) {
    encode_frame_as(batch, None, runs, &[events], None, out, E::PACKED);
}

/// `encode_frame` for a batch held in parts (one after the other, as the
/// producers' batches came), each event at `time_us` if given, else at
/// its own time. A shard hands its journal the parts it drained, so the
/// events are not copied into one buffer for the journal's sake.
///
/// `durable_below` is the sync mark: every batch below it was covered by a
/// completed `fdatasync` when this frame was encoded (at most `batch`).
pub fn encode_frame_parts<E: Record, P: AsRef<[Stamped<E>]>>(
    batch: u64,
    durable_below: u64,
    runs: &[Run<'_>],
    parts: &[P],
    time_us: Option<u64>,
    out: &mut Vec<u8>,
) {
    encode_frame_as(batch, Some(durable_below), runs, parts, time_us, out, E::PACKED);
}

/// `encode_frame_parts`, packed or (as version 1 wrote records up to 255
/// bytes) trimmed.
fn encode_frame_as<E: Record, P: AsRef<[Stamped<E>]>>(
    batch: u64,
    durable_below: Option<u64>,
    runs: &[Run<'_>],
    parts: &[P],
    time_us: Option<u64>,
    out: &mut Vec<u8>,
    packed: bool,
) {
    let n = parts.iter().map(|p| p.as_ref().len()).sum();
    assert_eq!(runs.iter().map(|r| r.len).sum::<usize>(), n, "runs cover the events");
    let events = || parts.iter().flat_map(|p| p.as_ref().iter());
    // The engine stamps a whole drain with one time and says so
    // (`time_us`). Otherwise the events' time range is a pass of its own,
    // ahead of the records, so that the record loop stays lean: uniform
    // times are the base time alone, others a column (µs after the
    // earliest, the base).
    let (lo, hi) = match time_us {
        Some(t) => (t, t),
        None if n == 0 => (0, 0),
        None => events().fold((u64::MAX, 0), |(lo, hi), e| (lo.min(e.time_us), hi.max(e.time_us))),
    };
    let times = match hi - lo {
        0 => 0,
        d if d <= u64::from(u32::MAX) => BODY_TIMES_U32,
        _ => BODY_TIMES_U64,
    };
    let trimmed = !packed && E::SIZE <= usize::from(u8::MAX);
    // The batches before this one not known durable. More than a u32
    // holds (over 4 billion batches without a sync: only thinkable under
    // `never`, which promises nothing to a power loss) is stored as the
    // most a u32 holds: the frame's mark then claims more was synced than
    // was, which only makes recovery refuse where it could have cut (the
    // safe side).
    let unsynced = durable_below.map(|d| {
        assert!(d <= batch, "a frame is not durable before it is written: {d} > {batch}");
        u32::try_from(batch - d).unwrap_or(u32::MAX)
    });
    let flags = times
        | if unsynced.is_some() { BODY_SYNC_MARK } else { 0 }
        | if packed {
            BODY_PACKED
        } else if trimmed {
            BODY_TRIMMED
        } else {
            0
        };
    let start = out.len();
    out.extend_from_slice(&[0; FRAME_HEAD_BYTES]);
    out.extend_from_slice(&batch.to_le_bytes());
    out.extend_from_slice(&(n as u32).to_le_bytes());
    out.extend_from_slice(&(runs.len() as u32).to_le_bytes());
    out.extend_from_slice(&lo.to_le_bytes());
    out.extend_from_slice(&flags.to_le_bytes());
    out.extend_from_slice(&unsynced.unwrap_or(0).to_le_bytes());
    let runs_at = out.len();
    for r in runs {
        out.extend_from_slice(&r.producer.to_le_bytes());
        out.extend_from_slice(&r.first_seq.to_le_bytes());
        out.extend_from_slice(&(r.len as u32).to_le_bytes());
        // The offsets' form, known once they are written below.
        out.extend_from_slice(&0u32.to_le_bytes());
    }
    for (i, r) in runs.iter().enumerate() {
        if let Some(o) = r.offsets {
            assert_eq!(o.len(), r.len, "one offset per event of the run");
            let form = put_offsets(o, out);
            let at = runs_at + i * RUN_BYTES + 20;
            out[at..at + 4].copy_from_slice(&form.flags().to_le_bytes());
        }
    }
    match times {
        0 => {}
        BODY_TIMES_U32 => out.extend(events().flat_map(|e| ((e.time_us - lo) as u32).to_le_bytes())),
        _ => out.extend(events().flat_map(|e| e.time_us.to_le_bytes())),
    }
    // Records are encoded in place: packed, each into the room at the
    // write position, which then advances by its length; trimmed, each into
    // the room after its length byte, the next one starting right after its
    // last nonzero byte.
    if packed {
        put_records(parts, out, E::PACKED_MAX, |e: &E, b| e.encode_packed(b));
    } else if trimmed {
        put_records(parts, out, 1 + E::SIZE, |e: &E, b| {
            let len = e.encode_prefix(&mut b[1..]);
            debug_assert!(len <= E::SIZE);
            b[0] = len as u8;
            1 + len
        });
    } else {
        put_records(parts, out, E::SIZE, |e: &E, b| {
            e.encode(b);
            E::SIZE
        });
    }
    let body_len = out.len() - start - FRAME_HEAD_BYTES;
    assert!(body_len <= FRAME_BODY_BYTES_MAX && n <= FRAME_EVENTS_MAX, "batch of {n} events exceeds the frame limit");
    let (head, body) = out[start..].split_at_mut(FRAME_HEAD_BYTES);
    head[0..4].copy_from_slice(FRAME_MAGIC);
    head[4..8].copy_from_slice(&(body_len as u32).to_le_bytes());
    head[8..12].copy_from_slice(&crc32c::crc32c(body).to_le_bytes());
    let head_crc = crc32c::crc32c(&head[..12]);
    head[12..16].copy_from_slice(&head_crc.to_le_bytes());
}

/// Appends a run's offsets in the smallest form that holds them and
/// returns it: a bitmap when they increase and it is smaller than two
/// bytes each, else a u16 or a u32 column.
fn put_offsets(o: &[u32], out: &mut Vec<u8>) -> OffsetForm {
    // Folds without an early exit, which vectorise.
    let max = o.iter().copied().fold(0, u32::max);
    let increasing = o.windows(2).fold(true, |ok, w| ok & (w[0] < w[1]));
    let bitmap_bytes = max as usize / 8 + 1;
    let at = out.len();
    if increasing && !o.is_empty() && bitmap_bytes < 2 * o.len() && bitmap_bytes <= RUN_BITMAP_BYTES_MAX {
        // The bits are gathered in a 64-bit word, stored when the offsets
        // move past it: setting each bit in memory made every offset wait
        // for the previous one's store.
        out.resize(at + bitmap_bytes.next_multiple_of(8), 0);
        let words = &mut out[at..];
        let mut store = |word: u32, bits: u64| {
            let w = word as usize * 8;
            words[w..w + 8].copy_from_slice(&bits.to_le_bytes());
        };
        let (mut word, mut bits) = (o[0] / 64, 0u64);
        for &x in o {
            if x / 64 != word {
                store(word, bits);
                (word, bits) = (x / 64, 0);
            }
            bits |= 1 << (x % 64);
        }
        store(word, bits);
        out.truncate(at + bitmap_bytes);
        OffsetForm::Bitmap(bitmap_bytes as u32)
    } else if max <= u32::from(u16::MAX) {
        out.resize(at + 2 * o.len(), 0);
        out[at..].chunks_exact_mut(2).zip(o).for_each(|(c, &x)| c.copy_from_slice(&(x as u16).to_le_bytes()));
        OffsetForm::U16
    } else {
        out.resize(at + 4 * o.len(), 0);
        out[at..].chunks_exact_mut(4).zip(o).for_each(|(c, &x)| c.copy_from_slice(&x.to_le_bytes()));
        OffsetForm::U32
    }
}

/// How many records' room `put_records` zeroes at a time.
const ROOM_AHEAD_RECORDS: usize = 64;

/// Appends the events of `parts` to `out`, each written by `put` into the
/// front of `room` bytes, which returns how many it used.
///
/// Zeroed room is made a few dozen records ahead, not for all the events
/// at once: a packed record takes about a quarter of its room, and zeroing
/// all of it cost the journal thread more than the records' own stores.
/// Each chunk is encoded into a slice of its own, with a local cursor, so
/// that the loop keeps its state in registers: stores through `out` itself
/// made the compiler reload the vector's length and pointer every event.
#[inline]
fn put_records<E: Record, P: AsRef<[Stamped<E>]>>(
    parts: &[P],
    out: &mut Vec<u8>,
    room: usize,
    put: impl Fn(&E, &mut [u8]) -> usize,
) {
    let mut w = out.len();
    for part in parts {
        for chunk in part.as_ref().chunks(ROOM_AHEAD_RECORDS) {
            if out.len() < w + room * chunk.len() {
                out.resize(w + room * ROOM_AHEAD_RECORDS, 0);
            }
            let buf = &mut out[w..w + room * chunk.len()];
            let mut c = 0;
            for e in chunk {
                let len = put(&e.event, &mut buf[c..c + room]);
                debug_assert!(len <= room);
                c += len;
            }
            w += c;
        }
    }
    out.truncate(w);
}

/// Groups entries into runs of consecutive sequences of one producer (for
/// tools and tests that hold entries rather than a shard's batch).
/// `durable_below` as for `encode_frame_parts`.
pub fn encode_entries<E: Record>(batch: u64, durable_below: u64, entries: &[Entry<E>], out: &mut Vec<u8>) {
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
    encode_frame_as(batch, Some(durable_below), &runs, &[events.as_slice()], None, out, E::PACKED);
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
    /// The frame's sync mark (format version 4): every batch below this
    /// was covered by a completed `fdatasync` when the frame was encoded.
    /// `None` for a frame of versions 1-3, which recorded nothing.
    pub durable_below: Option<u64>,
    base_time_us: u64,
    flags: u32,
    runs: &'a [u8],
    offsets: &'a [u8],
    times: &'a [u8],
    records: &'a [u8],
}

/// Checks a body against its CRC and its own counts and lengths.
pub fn decode_body<E: Record>(body: &[u8], crc: u32) -> Result<Body<'_>, FrameError> {
    if crc32c::crc32c(body) != crc && !crate::planted::on(crate::planted::Planted::SkipCrc) {
        return Err(FrameError::BadChecksum);
    }
    if body.len() < BODY_HEAD_BYTES {
        return Err(FrameError::Short);
    }
    let count = u32_at(body, 8) as usize;
    if count > FRAME_EVENTS_MAX {
        return Err(FrameError::BadLength(count as u64));
    }
    let run_count = u32_at(body, 12) as usize;
    let flags = u32_at(body, 24);
    if flags & !(BODY_TIMES_MASK | BODY_TRIMMED | BODY_PACKED | BODY_SYNC_MARK) != 0
        || flags & (BODY_TRIMMED | BODY_PACKED) == BODY_TRIMMED | BODY_PACKED
        || (flags & BODY_PACKED != 0 && !E::PACKED)
    {
        return Err(FrameError::BadLength(u64::from(flags)));
    }
    let batch = u64_at(body, 0);
    let unsynced = u32_at(body, 28);
    let durable_below = match flags & BODY_SYNC_MARK {
        0 if unsynced == 0 => None,
        // Without the mark the field is zero, as versions 1-3 wrote it.
        0 => return Err(FrameError::BadLength(u64::from(unsynced))),
        _ => Some(batch.checked_sub(u64::from(unsynced)).ok_or(FrameError::BadLength(u64::from(unsynced)))?),
    };
    let time_bytes = match flags & BODY_TIMES_MASK {
        0 => 0,
        BODY_TIMES_U32 => 4,
        BODY_TIMES_U64 => 8,
        other => return Err(FrameError::BadLength(u64::from(other))),
    };
    let rest = &body[BODY_HEAD_BYTES..];
    let runs = rest.get(..run_count.checked_mul(RUN_BYTES).ok_or(FrameError::BadLength(run_count as u64))?);
    let runs = runs.ok_or(FrameError::BadLength(run_count as u64))?;
    let mut covered = 0u64;
    let mut offset_bytes = 0u64;
    for r in runs.chunks_exact(RUN_BYTES) {
        let (k, flags) = (u32_at(r, 16), u32_at(r, 20));
        covered += u64::from(k);
        offset_bytes += OffsetForm::of(flags).ok_or(FrameError::BadLength(u64::from(flags)))?.bytes(k);
    }
    if covered != count as u64 {
        return Err(FrameError::BadLength(covered));
    }
    let rest = &rest[runs.len()..];
    let fixed = offset_bytes + count as u64 * time_bytes as u64;
    if fixed > rest.len() as u64 {
        return Err(FrameError::BadLength(fixed));
    }
    let (offsets, rest) = rest.split_at(offset_bytes as usize);
    // A bitmap holds exactly its run's k offsets and ends at the last one,
    // as the encoder writes it: anything else is damage.
    let mut at = 0usize;
    for r in runs.chunks_exact(RUN_BYTES) {
        let k = u32_at(r, 16);
        let form = OffsetForm::of(u32_at(r, 20)).expect("checked above");
        let len = form.bytes(k) as usize;
        if let OffsetForm::Bitmap(_) = form {
            let bitmap = &offsets[at..at + len];
            let ones: u64 = bitmap.iter().map(|b| u64::from(b.count_ones())).sum();
            if ones != u64::from(k) || bitmap.last() == Some(&0) {
                return Err(FrameError::BadLength(ones));
            }
        }
        at += len;
    }
    let (times, records) = rest.split_at(count * time_bytes);
    // Walk the records: each length within the record size, the section
    // exactly used up.
    if flags & BODY_PACKED != 0 {
        let mut at = 0usize;
        for _ in 0..count {
            let rest = records.get(at..).ok_or(FrameError::Short)?;
            // A zero length would never advance: damage, like any other.
            let len = E::packed_len(rest).filter(|&n| n > 0).ok_or(FrameError::BadLength(at as u64))?;
            at += len;
        }
        if at != records.len() {
            return Err(FrameError::BadLength(records.len() as u64));
        }
    } else if flags & BODY_TRIMMED != 0 {
        let mut at = 0usize;
        for _ in 0..count {
            let len = usize::from(*records.get(at).ok_or(FrameError::Short)?);
            if len > E::SIZE {
                return Err(FrameError::BadLength(len as u64));
            }
            at += 1 + len;
        }
        if at != records.len() {
            return Err(FrameError::BadLength(records.len() as u64));
        }
    } else if records.len() as u64 != count as u64 * E::SIZE as u64 {
        return Err(FrameError::BadLength(records.len() as u64));
    }
    Ok(Body { batch, count, durable_below, base_time_us: u64_at(body, 16), flags, runs, offsets, times, records })
}

impl Body<'_> {
    /// The batch's events with their origins and times, in order.
    pub fn entries<E: Record>(&self) -> impl ExactSizeIterator<Item = Entry<E>> + '_ {
        let mut origins = Vec::with_capacity(self.count);
        let mut at = 0;
        for r in self.runs.chunks_exact(RUN_BYTES) {
            let (producer, first, k) = (u64_at(r, 0), u64_at(r, 8), u32_at(r, 16));
            let form = OffsetForm::of(u32_at(r, 20)).expect("checked by decode_body");
            let column = &self.offsets[at..at + form.bytes(k) as usize];
            at += column.len();
            let mut push = |offset: u64| origins.push((producer, first.wrapping_add(offset)));
            match form {
                OffsetForm::Consecutive => (0..u64::from(k)).for_each(push),
                OffsetForm::U16 => {
                    column.chunks_exact(2).for_each(|c| push(u64::from(u16::from_le_bytes([c[0], c[1]]))))
                }
                OffsetForm::U32 => column.chunks_exact(4).for_each(|c| push(u64::from(u32_at(c, 0)))),
                // Checked by `decode_body`: the set bits, in order.
                OffsetForm::Bitmap(_) => {
                    for (byte, &b) in (0u64..).zip(column) {
                        let mut bits = b;
                        while bits != 0 {
                            push(byte * 8 + u64::from(bits.trailing_zeros()));
                            bits &= bits - 1;
                        }
                    }
                }
            }
        }
        let (base, flags, times, records) = (self.base_time_us, self.flags, self.times, self.records);
        let mut next = 0usize;
        // Scratch for a trimmed record; packed and full ones decode in place.
        let mut record = if flags & BODY_TRIMMED != 0 { vec![0u8; E::SIZE] } else { Vec::new() };
        origins.into_iter().enumerate().map(move |(i, (producer, producer_seq))| {
            let time_us = match flags & BODY_TIMES_MASK {
                BODY_TIMES_U32 => base.wrapping_add(u64::from(u32_at(times, i * 4))),
                BODY_TIMES_U64 => u64_at(times, i * 8),
                _ => base,
            };
            let event = if flags & BODY_PACKED != 0 {
                // Each record was checked by `decode_body`.
                let (event, len) = E::decode_packed(&records[next..]).expect("checked by decode_body");
                next += len;
                event
            } else if flags & BODY_TRIMMED != 0 {
                // Lengths were checked by `decode_body`.
                let len = usize::from(records[next]);
                record.fill(0);
                record[..len].copy_from_slice(&records[next + 1..next + 1 + len]);
                next += 1 + len;
                E::decode(&record)
            } else {
                next += E::SIZE;
                E::decode(&records[next - E::SIZE..next])
            };
            Entry { producer, producer_seq, stamped: Stamped { time_us, event } }
        })
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn trimmed_len_matches_the_bytewise_definition() {
        let mut rng = trove_core::SplitMix64::new(5);
        for size in [0usize, 1, 7, 8, 9, 31, 32, 33, 40] {
            for _ in 0..200 {
                let mut b = vec![0u8; size];
                for x in b.iter_mut() {
                    if rng.next_u64().is_multiple_of(3) {
                        *x = rng.next_u64() as u8;
                    }
                }
                let want = b.iter().rposition(|&x| x != 0).map_or(0, |i| i + 1);
                assert_eq!(trove_core::record::trimmed_len(&b), want, "{b:?}");
            }
        }
    }

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
        encode_entries(42, 40, &entries(5), &mut buf);
        let (len, crc) = decode_frame_head(&buf).unwrap();
        assert_eq!(buf.len(), FRAME_HEAD_BYTES + len);
        let body = decode_body::<HuntEvent>(&buf[FRAME_HEAD_BYTES..], crc).unwrap();
        assert_eq!(body.batch, 42);
        assert_eq!(body.entries::<HuntEvent>().collect::<Vec<_>>(), entries(5));
    }

    /// A batch in parts encodes as the same events in one slice: with a
    /// time for all, as if each had been stamped with it.
    #[test]
    fn parts_encode_as_their_concatenation() {
        let entries = entries(30);
        let runs = [
            Run { producer: 7, first_seq: 100, len: 12, offsets: None },
            Run { producer: 7, first_seq: 112, len: 18, offsets: None },
        ];
        let events: Vec<_> = entries.iter().map(|e| e.stamped).collect();
        let parts = [&events[..12], &events[12..12], &events[12..]];
        let (mut whole, mut split) = (Vec::new(), Vec::new());
        encode_frame_as(3, Some(3), &runs, &[&events], None, &mut whole, true);
        encode_frame_parts(3, 3, &runs, &parts, None, &mut split);
        assert_eq!(split, whole);

        let stamped: Vec<_> = events.iter().map(|e| Stamped { time_us: 5_000, event: e.event }).collect();
        let (mut whole, mut split) = (Vec::new(), Vec::new());
        encode_frame_as(3, Some(3), &runs, &[&stamped], None, &mut whole, true);
        encode_frame_parts(3, 3, &runs, &parts, Some(5_000), &mut split);
        assert_eq!(split, whole);
        let (len, crc) = decode_frame_head(&split).unwrap();
        let body = decode_body::<HuntEvent>(&split[FRAME_HEAD_BYTES..FRAME_HEAD_BYTES + len], crc).unwrap();
        assert!(body.entries::<HuntEvent>().all(|e| e.stamped.time_us == 5_000));
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

    /// Segments of versions 1 (trimmed records only) and 2 (no offset
    /// bitmaps) are still read; a version from the future is refused by
    /// name.
    #[test]
    fn older_versions_are_read_and_a_newer_one_refused() {
        let with_version = |v: u32| {
            let mut b = encode_segment_header(&SegmentHeader { shard: 0, first_batch: 1, record_size: 32 });
            b[8..12].copy_from_slice(&v.to_le_bytes());
            let crc = crc32c::crc32c(&b[..60]);
            b[60..64].copy_from_slice(&crc.to_le_bytes());
            b
        };
        assert!(decode_segment_header(&with_version(1)).is_ok());
        assert!(decode_segment_header(&with_version(2)).is_ok());
        assert!(decode_segment_header(&with_version(FORMAT_VERSION)).is_ok());
        assert!(decode_segment_header(&with_version(3)).is_ok());
        assert_eq!(decode_segment_header(&with_version(5)), Err(FrameError::BadVersion(5)));
        assert_eq!(decode_segment_header(&with_version(0)), Err(FrameError::BadVersion(0)));

        // A version-1 frame: the same events, trimmed.
        let entries = entries(40);
        let runs = [Run { producer: 7, first_seq: 1, len: entries.len(), offsets: None }];
        let events: Vec<_> = entries.iter().map(|e| e.stamped).collect();
        let (mut trimmed, mut packed) = (Vec::new(), Vec::new());
        encode_frame_as(5, None, &runs, &[&events], None, &mut trimmed, false);
        encode_frame_as(5, None, &runs, &[&events], None, &mut packed, true);
        assert!(packed.len() < trimmed.len());
        for buf in [&trimmed, &packed] {
            let (len, crc) = decode_frame_head(buf).unwrap();
            let body = decode_body::<HuntEvent>(&buf[FRAME_HEAD_BYTES..FRAME_HEAD_BYTES + len], crc).unwrap();
            let got: Vec<_> = body.entries::<HuntEvent>().map(|e| e.stamped).collect();
            assert_eq!(got, events);
        }
    }

    /// A body claiming both record forms, or a packed record the game
    /// would never write, is damage, not a panic.
    #[test]
    fn impossible_packed_bodies_are_refused() {
        let events = [Stamped { time_us: 1, event: HuntEvent::scan(3, 4) }];
        let runs = [Run { producer: 1, first_seq: 1, len: 1, offsets: None }];
        let mut buf = Vec::new();
        encode_frame(1, &runs, &events, &mut buf);
        let reseal = |buf: &mut Vec<u8>| {
            let body_crc = crc32c::crc32c(&buf[FRAME_HEAD_BYTES..]);
            buf[8..12].copy_from_slice(&body_crc.to_le_bytes());
            let head_crc = crc32c::crc32c(&buf[..12]);
            buf[12..16].copy_from_slice(&head_crc.to_le_bytes());
        };
        let decode = |buf: &[u8]| {
            let (len, crc) = decode_frame_head(buf).unwrap();
            decode_body::<HuntEvent>(&buf[FRAME_HEAD_BYTES..FRAME_HEAD_BYTES + len], crc).map(|_| ())
        };
        assert_eq!(decode(&buf), Ok(()));
        // Flags: trimmed and packed at once.
        let mut both = buf.clone();
        both[FRAME_HEAD_BYTES + 24] |= BODY_TRIMMED as u8;
        reseal(&mut both);
        assert!(decode(&both).is_err());
        // The record's head: a scan with one-byte steps (bit 7 is for
        // moves only). Every kind of bits 0-2 exists (7 is a delete).
        let record = FRAME_HEAD_BYTES + BODY_HEAD_BYTES + RUN_BYTES;
        let mut narrow_scan = buf.clone();
        narrow_scan[record] |= 0x80;
        reseal(&mut narrow_scan);
        assert!(decode(&narrow_scan).is_err());
    }

    /// The sync mark round-trips; a frame without one (versions 1-3)
    /// reads as `None`; a mark past the frame's own batch, or a nonzero
    /// field without the flag, is damage.
    #[test]
    fn the_sync_mark_round_trips_and_impossible_ones_are_refused() {
        let decode = |buf: &[u8]| {
            let (len, crc) = decode_frame_head(buf)?;
            decode_body::<HuntEvent>(&buf[FRAME_HEAD_BYTES..FRAME_HEAD_BYTES + len], crc).map(|b| b.durable_below)
        };
        let reseal = |buf: &mut Vec<u8>| {
            let body_crc = crc32c::crc32c(&buf[FRAME_HEAD_BYTES..]);
            buf[8..12].copy_from_slice(&body_crc.to_le_bytes());
            let head_crc = crc32c::crc32c(&buf[..12]);
            buf[12..16].copy_from_slice(&head_crc.to_le_bytes());
        };
        for (batch, durable_below) in [(1, 1), (9, 1), (9, 9), (1 << 40, (1 << 40) - 3)] {
            let mut buf = Vec::new();
            encode_entries(batch, durable_below, &entries(2), &mut buf);
            assert_eq!(decode(&buf), Ok(Some(durable_below)));
        }
        // More unsynced batches than a u32 holds: stored as the most it
        // holds, so the mark claims more (recovery refuses; the safe side).
        let mut buf = Vec::new();
        encode_entries(1 << 40, 1, &entries(2), &mut buf);
        assert_eq!(decode(&buf), Ok(Some((1 << 40) - u64::from(u32::MAX))));

        let events: Vec<_> = entries(2).iter().map(|e| e.stamped).collect();
        let runs = [Run { producer: 7, first_seq: 100, len: 2, offsets: None }];
        let mut unmarked = Vec::new();
        encode_frame(5, &runs, &events, &mut unmarked);
        assert_eq!(decode(&unmarked), Ok(None));
        let field = FRAME_HEAD_BYTES + 28;
        let mut stray = unmarked.clone();
        stray[field] = 1;
        reseal(&mut stray);
        assert!(decode(&stray).is_err(), "a nonzero field without the flag");
        let mut past = Vec::new();
        encode_entries(5, 5, &entries(2), &mut past);
        past[field..field + 4].copy_from_slice(&6u32.to_le_bytes());
        reseal(&mut past);
        assert!(decode(&past).is_err(), "unsynced batches before batch 1");
    }

    #[test]
    fn every_flipped_bit_is_detected() {
        let mut buf = Vec::new();
        encode_entries(1, 1, &entries(3), &mut buf);
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
        // Uniform time: no per-event times; the 3 offsets as a one-byte
        // bitmap, 2 runs, and 5 scans packed: a head byte, a byte of hunt
        // and one of player.
        assert_eq!(buf.len(), FRAME_HEAD_BYTES + BODY_HEAD_BYTES + 2 * RUN_BYTES + 1 + 5 * 3);
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

    /// Encodes one run of scans with these offsets; returns the frame and
    /// the size of its offsets section.
    fn frame_with_offsets(offsets: &[u32]) -> (Vec<u8>, usize) {
        let events: Vec<Stamped<HuntEvent>> =
            (0..offsets.len() as u32).map(|i| Stamped { time_us: 5, event: HuntEvent::scan(1, i) }).collect();
        let runs = [Run { producer: 2, first_seq: 10, len: offsets.len(), offsets: Some(offsets) }];
        let mut buf = Vec::new();
        encode_frame(1, &runs, &events, &mut buf);
        let mut without = Vec::new();
        encode_frame(1, &[Run { offsets: None, ..runs[0] }], &events, &mut without);
        let offset_bytes = buf.len() - without.len();
        let (len, crc) = decode_frame_head(&buf).unwrap();
        let body = decode_body::<HuntEvent>(&buf[FRAME_HEAD_BYTES..FRAME_HEAD_BYTES + len], crc).unwrap();
        let got: Vec<_> = body.entries::<HuntEvent>().map(|e| (e.producer_seq, e.stamped)).collect();
        let want: Vec<_> = offsets.iter().map(|&o| 10 + u64::from(o)).zip(events).collect();
        assert_eq!(got, want);
        (buf, offset_bytes)
    }

    /// A shard's share of a split batch (every other position, say) is a
    /// bitmap; sparse offsets, or offsets out of order, are a column.
    #[test]
    fn offsets_take_their_smallest_form() {
        let every_other: Vec<u32> = (0..1000).map(|i| 2 * i + 1).collect();
        assert_eq!(frame_with_offsets(&every_other).1, 250);
        assert_eq!(frame_with_offsets(&[0, 40]).1, 2 * 2);
        assert_eq!(frame_with_offsets(&[3, 2, 9]).1, 3 * 2);
        assert_eq!(frame_with_offsets(&[4, 4]).1, 2 * 2);
        assert_eq!(frame_with_offsets(&[1, 70_000]).1, 2 * 4);
        assert_eq!(frame_with_offsets(&[7]).1, 1);
        assert_eq!(frame_with_offsets(&[]).1, 0);
    }

    /// A bitmap whose set bits are not its run's count, that ends in a zero
    /// byte, or that has no bytes, is damage, not a panic or a wrong
    /// sequence.
    #[test]
    fn damaged_bitmaps_are_refused() {
        let (buf, bytes) = frame_with_offsets(&[0, 2, 5, 9, 12]);
        assert_eq!(bytes, 2);
        let bitmap = FRAME_HEAD_BYTES + BODY_HEAD_BYTES + RUN_BYTES;
        let flags = FRAME_HEAD_BYTES + BODY_HEAD_BYTES + 20;
        let check = |change: &dyn Fn(&mut Vec<u8>)| {
            let mut b = buf.clone();
            change(&mut b);
            let body_crc = crc32c::crc32c(&b[FRAME_HEAD_BYTES..]);
            b[8..12].copy_from_slice(&body_crc.to_le_bytes());
            decode_body::<HuntEvent>(&b[FRAME_HEAD_BYTES..], body_crc).map(|_| ())
        };
        assert_eq!(check(&|_| {}), Ok(()));
        // One bit more, one bit less.
        assert!(check(&|b| b[bitmap] |= 2).is_err());
        assert!(check(&|b| b[bitmap] &= !1).is_err());
        // The same count, but the last byte zero.
        assert!(
            check(&|b| {
                b[bitmap] |= 0b1100_0000;
                b[bitmap + 1] = 0;
            })
            .is_err()
        );
        // A bitmap of no bytes; a form that does not exist.
        assert!(check(&|b| b[flags + 1..flags + 4].fill(0)).is_err());
        assert!(check(&|b| b[flags] = 4).is_err());
    }

    #[test]
    fn wide_offsets_round_trip() {
        let events: Vec<Stamped<HuntEvent>> =
            (0..2).map(|i| Stamped { time_us: 5, event: HuntEvent::move_by(1, i, -3, 4) }).collect();
        let offsets = [7u32, 70_000];
        let runs = [Run { producer: 2, first_seq: 1, len: 2, offsets: Some(&offsets) }];
        let mut buf = Vec::new();
        encode_frame(1, &runs, &events, &mut buf);
        let (len, crc) = decode_frame_head(&buf).unwrap();
        let body = decode_body::<HuntEvent>(&buf[FRAME_HEAD_BYTES..FRAME_HEAD_BYTES + len], crc).unwrap();
        let got: Vec<_> = body.entries::<HuntEvent>().map(|e| (e.producer_seq, e.stamped)).collect();
        assert_eq!(got, vec![(8, events[0]), (70_001, events[1])]);
    }

    #[test]
    fn far_apart_times_are_kept_exactly() {
        let events = [0u64, 1 << 40].map(|t| Entry {
            producer: 1,
            producer_seq: t + 1,
            stamped: Stamped { time_us: t, event: HuntEvent::dig(1, 1) },
        });
        let mut buf = Vec::new();
        encode_entries(1, 1, &events, &mut buf);
        let (len, crc) = decode_frame_head(&buf).unwrap();
        let body = decode_body::<HuntEvent>(&buf[FRAME_HEAD_BYTES..FRAME_HEAD_BYTES + len], crc).unwrap();
        assert_eq!(body.entries::<HuntEvent>().collect::<Vec<_>>(), events);
    }

    proptest! {
        /// Any times (uniform, close, far apart, in any order) and any
        /// events come back exactly. Batches run past `ROOM_AHEAD_RECORDS`
        /// so that the encoder makes room more than once per frame.
        #[test]
        fn any_batch_round_trips(
            batch in proptest::collection::vec((any::<u64>(), any::<u32>(), any::<i16>(), 0u8..4), 1..300),
            uniform: bool,
        ) {
            let events: Vec<Entry<HuntEvent>> = batch
                .iter()
                .zip(1u64..)
                .map(|(&(t, id, step, kind), seq)| Entry {
                    producer: 3,
                    producer_seq: seq,
                    stamped: Stamped {
                        time_us: if uniform { batch[0].0 } else { t >> (t % 64) },
                        event: match kind {
                            0 => HuntEvent::move_by(id, id / 3, step, step.wrapping_neg()),
                            1 => HuntEvent::dig(id, 7),
                            2 => HuntEvent::join(0, id),
                            _ => HuntEvent { hunt: id, player: 1, action: trove_hunt::Action::Invalid },
                        },
                    },
                })
                .collect();
            let mut buf = Vec::new();
            encode_entries(9, 9, &events, &mut buf);
            let (len, crc) = decode_frame_head(&buf).unwrap();
            prop_assert_eq!(buf.len(), FRAME_HEAD_BYTES + len);
            let body = decode_body::<HuntEvent>(&buf[FRAME_HEAD_BYTES..], crc).unwrap();
            prop_assert_eq!(body.entries::<HuntEvent>().collect::<Vec<_>>(), events);
        }

        /// Any offsets come back exactly, in whichever form they take.
        #[test]
        fn any_offsets_round_trip(
            gaps in proptest::collection::vec(0u32..20, 0..200),
            wide: bool,
            shuffled: bool,
        ) {
            let mut offsets: Vec<u32> = gaps
                .iter()
                .scan(0u32, |at, &g| {
                    *at += g;
                    Some(*at)
                })
                .map(|o| if wide { o * 1000 } else { o })
                .collect();
            if shuffled {
                offsets.reverse();
            }
            frame_with_offsets(&offsets);
        }

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
            encode_entries(batch, batch, &entries(n), &mut buf);
            let (len, crc) = decode_frame_head(&buf).unwrap();
            let body = decode_body::<HuntEvent>(&buf[FRAME_HEAD_BYTES..FRAME_HEAD_BYTES + len], crc).unwrap();
            prop_assert_eq!(body.batch, batch);
            prop_assert_eq!(body.entries::<HuntEvent>().collect::<Vec<_>>(), entries(n));
        }
    }

    /// A valid frame built by the real encoder from a seed: events of
    /// every kind (creates with any config, ids of every width, narrow and
    /// wide steps), split into runs whose offsets take every form
    /// (consecutive, a bitmap, a u16 column, a u32 column), with uniform,
    /// close or far-apart times, packed or (as version 1 wrote) trimmed.
    /// Returns the frame and the entries it holds.
    fn structured_frame(seed: u64, n: usize) -> (Vec<u8>, Vec<Entry<HuntEvent>>) {
        let mut rng = trove_core::SplitMix64::new(seed);
        let mut r = move |m: u64| rng.next_u64() % m;
        let id = |r: &mut dyn FnMut(u64) -> u64| (r(1 << 32) >> r(33)) as u32;
        let times = r(3);
        let base = r(1 << 40);
        let mut events = Vec::with_capacity(n);
        for _ in 0..n {
            let (hunt, player) = (id(&mut r), id(&mut r));
            let step =
                |r: &mut dyn FnMut(u64) -> u64| if r(2) == 0 { r(9) as i16 - 4 } else { r(1 << 16) as u16 as i16 };
            let event = match r(7) {
                0 => HuntEvent::move_by(hunt, player, step(&mut r), step(&mut r)),
                1 => HuntEvent::dig(hunt, player),
                2 => HuntEvent::join(hunt, player),
                3 => HuntEvent::scan(hunt, player),
                4 => HuntEvent::leave(hunt, player),
                5 => HuntEvent::create(
                    hunt,
                    trove_hunt::HuntConfig {
                        width: r(1 << 16) as u16,
                        height: r(1 << 16) as u16,
                        seed: r(1 << 32) as u32,
                        treasures_per_round: r(1 << 16) as u16,
                        value_min: r(1 << 16) as u16,
                        value_max: r(1 << 16) as u16,
                        dig_cooldown_ms: r(1 << 16) as u16,
                        step_max: r(256) as u8,
                        players_max: r(1 << 32) as u32,
                    },
                ),
                _ => HuntEvent { hunt, player, action: trove_hunt::Action::Invalid },
            };
            let time_us = match times {
                0 => base,
                1 => base + r(1 << 20),
                _ => r(u64::MAX),
            };
            events.push(Stamped { time_us, event });
        }
        // Runs of random lengths, each with offsets in one form.
        let mut lens = Vec::new();
        let mut left = n;
        while left > 0 {
            let k = 1 + r(left as u64) as usize;
            lens.push(k);
            left -= k;
        }
        let offsets: Vec<Option<Vec<u32>>> = lens
            .iter()
            .map(|&k| match r(4) {
                0 => None,
                // Increasing, close together: a bitmap.
                1 => Some(
                    (0..k as u32)
                        .scan(r(20) as u32, |at, _| Some(std::mem::replace(at, *at + 1 + r(4) as u32)))
                        .collect(),
                ),
                // Increasing, far apart: a u32 column.
                2 => Some(
                    (0..k as u32)
                        .scan(r(1000) as u32, |at, _| Some(std::mem::replace(at, *at + 1 + r(100_000) as u32)))
                        .collect(),
                ),
                // Any order, small: a u16 column.
                _ => Some((0..k).map(|_| r(60_000) as u32).collect()),
            })
            .collect();
        let runs: Vec<Run<'_>> = lens
            .iter()
            .zip(&offsets)
            .enumerate()
            .map(|(i, (&len, o))| Run {
                producer: i as u64 * 7 + 1,
                first_seq: 1 + r(1 << 48),
                len,
                offsets: o.as_deref(),
            })
            .collect();
        let mut buf = Vec::new();
        encode_frame_as(1 + r(1 << 40), None, &runs, &[&events], None, &mut buf, r(4) != 0);
        let mut want = Vec::with_capacity(n);
        let mut at = 0;
        for run in &runs {
            for i in 0..run.len {
                let offset = run.offsets.map_or(i as u64, |o| u64::from(o[i]));
                let producer_seq = run.first_seq.wrapping_add(offset);
                want.push(Entry { producer: run.producer, producer_seq, stamped: events[at] });
                at += 1;
            }
        }
        (buf, want)
    }

    /// Damage done to a frame's body before it is (usually) resealed with
    /// valid CRCs, so that decoding gets past the checksums to the checks
    /// behind them.
    #[derive(Clone, Debug)]
    enum Damage {
        FlipBit(usize),
        SetByte(usize, u8),
        /// A 32-bit field of the body head or of a run: counts, flags,
        /// lengths.
        SetField(usize, u32),
        Truncate(usize),
        Extend(Vec<u8>),
    }

    fn damage() -> impl Strategy<Value = Damage> {
        prop_oneof![
            any::<usize>().prop_map(Damage::FlipBit),
            (any::<usize>(), any::<u8>()).prop_map(|(a, b)| Damage::SetByte(a, b)),
            (0usize..8, prop_oneof![0u32..4, 0u32..64, any::<u32>()]).prop_map(|(f, v)| Damage::SetField(f, v)),
            any::<usize>().prop_map(Damage::Truncate),
            proptest::collection::vec(any::<u8>(), 1..40).prop_map(Damage::Extend),
        ]
    }

    fn apply(buf: &mut Vec<u8>, d: &Damage) {
        let body = buf.len() - FRAME_HEAD_BYTES;
        match *d {
            Damage::FlipBit(at) => buf[FRAME_HEAD_BYTES + at / 8 % body] ^= 1 << (at % 8),
            Damage::SetByte(at, v) => buf[FRAME_HEAD_BYTES + at % body] = v,
            Damage::SetField(f, v) => {
                // The head's count, run count and flags; the first two
                // runs' event counts and offset forms.
                let at = [8, 12, 24, 28, 32 + 16, 32 + 20, 56 + 16, 56 + 20][f];
                if let Some(field) = buf.get_mut(FRAME_HEAD_BYTES + at..FRAME_HEAD_BYTES + at + 4) {
                    field.copy_from_slice(&v.to_le_bytes());
                }
            }
            Damage::Truncate(at) => buf.truncate(FRAME_HEAD_BYTES + at % body),
            Damage::Extend(ref more) => buf.extend_from_slice(more),
        }
    }

    /// The frame's head made to match its (damaged) body: length and CRCs.
    fn reseal(buf: &mut [u8]) {
        let len = (buf.len() - FRAME_HEAD_BYTES) as u32;
        buf[4..8].copy_from_slice(&len.to_le_bytes());
        let body_crc = crc32c::crc32c(&buf[FRAME_HEAD_BYTES..]);
        buf[8..12].copy_from_slice(&body_crc.to_le_bytes());
        let head_crc = crc32c::crc32c(&buf[..12]);
        buf[12..16].copy_from_slice(&head_crc.to_le_bytes());
    }

    /// Valid frames, then damaged ones, through the decoder: an intact
    /// frame reads back exactly; a damaged one is refused or decodes to
    /// as many entries as it says, all readable (`entries()` trusts
    /// `decode_body`'s checks: a gap between them is a panic here).
    /// Random bytes almost never get past the checksums and the count
    /// check, so the deep paths (entries, bitmaps, packed and trimmed
    /// records) are counted, and each must be reached often.
    #[test]
    fn structured_frames_reach_the_deep_paths() {
        #[derive(Debug, Default)]
        struct Reached {
            cases: u32,
            damaged: u32,
            past_crc: u32,
            decoded_damaged: u32,
            entries_read: u32,
            bitmap: u32,
            packed: u32,
            trimmed: u32,
            times: u32,
        }
        let reached = std::cell::RefCell::new(Reached::default());
        let config = proptest::test_runner::Config { cases: 10_000, failure_persistence: None, ..Default::default() };
        let mut runner = proptest::test_runner::TestRunner::new(config);
        let strategy =
            (any::<u64>(), 1usize..200, proptest::collection::vec(damage(), 0..4), proptest::bool::weighted(0.9));
        runner
            .run(&strategy, |(seed, n, damages, resealed)| {
                let (mut buf, want) = structured_frame(seed, n);
                for d in &damages {
                    if buf.len() > FRAME_HEAD_BYTES {
                        apply(&mut buf, d);
                    }
                }
                if resealed && !damages.is_empty() {
                    reseal(&mut buf);
                }
                let mut r = reached.borrow_mut();
                r.cases += 1;
                r.damaged += u32::from(!damages.is_empty());
                let Ok((len, crc)) = decode_frame_head(&buf) else { return Ok(()) };
                let Some(body) = buf.get(FRAME_HEAD_BYTES..FRAME_HEAD_BYTES + len) else { return Ok(()) };
                let decoded = decode_body::<HuntEvent>(body, crc);
                if decoded.as_ref().err() == Some(&FrameError::BadChecksum) {
                    prop_assert!(!damages.is_empty());
                    return Ok(());
                }
                r.past_crc += 1;
                let Ok(b) = decoded else {
                    prop_assert!(!damages.is_empty(), "an intact frame is refused: {:?}", decoded.err());
                    return Ok(());
                };
                let got: Vec<Entry<HuntEvent>> = b.entries::<HuntEvent>().collect();
                prop_assert_eq!(got.len(), b.count);
                r.entries_read += 1;
                r.decoded_damaged += u32::from(!damages.is_empty());
                r.packed += u32::from(b.flags & BODY_PACKED != 0);
                r.trimmed += u32::from(b.flags & BODY_TRIMMED != 0);
                r.times += u32::from(b.flags & BODY_TIMES_MASK != 0);
                let bitmap = b
                    .runs
                    .chunks_exact(RUN_BYTES)
                    .any(|run| matches!(OffsetForm::of(u32_at(run, 20)), Some(OffsetForm::Bitmap(_))));
                r.bitmap += u32::from(bitmap);
                if damages.is_empty() {
                    prop_assert_eq!(got, want);
                }
                Ok(())
            })
            .unwrap();
        let r = reached.into_inner();
        // Shares well below what a run reaches (about: past the CRC 93%,
        // entries 40%, damaged and still decoded 13%, packed 30%, trimmed
        // 10%, bitmap 27%, per-event times 27%), and far above what random
        // bytes reach (about 0).
        let share = |x: u32| f64::from(x) / f64::from(r.cases);
        assert!(share(r.past_crc) > 0.5, "{r:?}");
        assert!(share(r.entries_read) > 0.25, "{r:?}");
        assert!(share(r.decoded_damaged) > 0.05, "{r:?}");
        assert!(share(r.packed) > 0.15, "{r:?}");
        assert!(share(r.trimmed) > 0.03, "{r:?}");
        assert!(share(r.bitmap) > 0.1, "{r:?}");
        assert!(share(r.times) > 0.15, "{r:?}");
        eprintln!("{r:?}");
    }
}
