//! Reading one segment file.

use std::path::{Path, PathBuf};

use trove_core::Record;

use crate::format::{
    Body, FRAME_HEAD_BYTES, FRAME_MAGIC, FrameError, SEGMENT_HEADER_BYTES, SegmentHeader, decode_body,
    decode_frame_head, decode_segment_header,
};
use crate::storage::{FsStorage, Storage};
use crate::writer::DIRECT_BLOCK;

/// Segment files are named by the first batch they hold, so that sorting
/// names sorts batches.
pub fn segment_name(first_batch: u64) -> String {
    format!("segment-{first_batch:020}.tjl")
}

/// The segment files of a shard directory, in batch order.
pub fn list_segments(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    list_segments_in(&FsStorage, dir)
}

/// `list_segments` on `storage`.
pub fn list_segments_in(storage: &dyn Storage, dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    for path in storage.list(dir)? {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name.starts_with("segment-") && name.ends_with(".tjl") {
            found.push(path);
        }
    }
    found.sort();
    Ok(found)
}

/// How many of `segments` (in batch order) hold only batches below
/// `next_batch`: every one before the last that starts at or below it.
/// A snapshot at `next_batch` holds their batches.
pub fn covered_segments(segments: &[PathBuf], next_batch: u64) -> usize {
    let name = segment_name(next_batch);
    segments.iter().rposition(|p| p.file_name().and_then(|n| n.to_str()) <= Some(&name)).unwrap_or(0)
}

/// The first batch of a segment as its file name says (`segment_name`).
pub fn named_first_batch(path: &Path) -> Option<u64> {
    let name = path.file_name()?.to_str()?;
    let digits = name.strip_prefix("segment-")?.strip_suffix(".tjl")?;
    (digits.len() == 20 && digits.bytes().all(|b| b.is_ascii_digit())).then(|| digits.parse().ok())?
}

/// The header a segment whose own header is damaged must have had, if its
/// other evidence agrees: its file name gives the first batch, and the
/// first frame (right after the header) passes every check and carries
/// that batch. The shard and record size are the reader's own (the
/// segment sits in that shard's directory, under a `trove.meta` that
/// names the record size); the version is not needed to read frames (each
/// frame's flags say its form). `None` if the evidence does not agree:
/// then nothing in the segment can be placed in the sequence.
pub fn salvage_header<E: Record>(path: &Path, bytes: &[u8], shard: u32) -> Option<SegmentHeader> {
    let first_batch = named_first_batch(path)?;
    let (body, _) = frame_at::<E>(bytes, SEGMENT_HEADER_BYTES).ok()?;
    (body.batch == first_batch).then_some(SegmentHeader { shard, first_batch, record_size: E::SIZE as u32 })
}

/// Where and why reading a segment stopped early.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BadFrame {
    pub offset: u64,
    pub error: FrameError,
    /// A valid frame follows the bad one somewhere later in the segment.
    pub valid_frame_after: bool,
    /// A valid frame after the bad one shows that a completed `fdatasync`
    /// covered the bad frame's batch (its sync mark is past it), or cannot
    /// rule that out (a frame of a version before the mark, a bad frame
    /// whose batch is unknown, or a search that gave up): the bad bytes
    /// were synced, so this is damage, not a crash. When valid frames
    /// follow but none shows it, everything from the bad frame on was
    /// unsynced when the last of them was written, and a crash that kept
    /// later unsynced writes and tore an earlier one explains it
    /// (docs/decisions/0036-synced-through-marker.md).
    pub synced_after: bool,
    /// The bytes from `offset` on (up to the next valid frame, if any) are
    /// a write cut short: a frame that runs past the end of the file (its
    /// head, whose CRC covers the length, says so) or fewer bytes than a
    /// head, or nothing but zeros. No flipped bit in a whole frame looks
    /// like that. Otherwise (a whole frame whose body fails its CRC, or a
    /// head that fails its own) the frame may be damaged on disk or torn
    /// by a crash: the format cannot tell the two apart
    /// (docs/decisions/0006-damaged-last-frame.md).
    pub cut_short: bool,
}

impl BadFrame {
    /// The bad frame at `at`, which should hold batch `batch` (`None`:
    /// unknown, as for a damaged segment header).
    fn at<E: Record>(bytes: &[u8], at: usize, error: FrameError, search_from: usize, batch: Option<u64>) -> Self {
        let after = frames_after::<E>(bytes, search_from, batch);
        let until = after.first_valid.unwrap_or(bytes.len()).max(at.min(bytes.len()));
        let cut_short = error == FrameError::Short || bytes[at.min(bytes.len())..until].iter().all(|&b| b == 0);
        BadFrame {
            offset: at as u64,
            error,
            valid_frame_after: after.first_valid.is_some(),
            synced_after: after.synced,
            cut_short,
        }
    }
}

/// The result of reading a segment.
#[derive(Clone, Debug)]
pub struct Scan {
    /// `None` if the header itself is missing or damaged.
    pub header: Option<SegmentHeader>,
    /// End of the last valid frame (the header's end if none).
    pub valid_end: u64,
    pub file_len: u64,
    pub frames: u64,
    pub bad: Option<BadFrame>,
}

/// Reads `bytes` (a whole segment) frame by frame, calling `visit` with each
/// valid frame's offset and body, and stops at the first bad frame.
pub fn scan<E: Record, X>(bytes: &[u8], visit: impl FnMut(u64, Body<'_>) -> Result<(), X>) -> Result<Scan, X> {
    match decode_segment_header(bytes) {
        Ok(header) => scan_frames::<E, X>(bytes, header, visit),
        Err(error) => {
            let bad = BadFrame::at::<E>(bytes, 0, error, 1, None);
            Ok(Scan { header: None, valid_end: 0, file_len: bytes.len() as u64, frames: 0, bad: Some(bad) })
        }
    }
}

/// `scan` for a segment whose header is taken as `header` (checked, or,
/// for a repair of a damaged one, reconstructed): reads its frames only.
pub fn scan_frames<E: Record, X>(
    bytes: &[u8],
    header: SegmentHeader,
    mut visit: impl FnMut(u64, Body<'_>) -> Result<(), X>,
) -> Result<Scan, X> {
    let file_len = bytes.len() as u64;
    let mut at = SEGMENT_HEADER_BYTES;
    let mut frames = 0;
    // The batch the next frame should hold.
    let mut batch = header.first_batch;
    while at < bytes.len() {
        match frame_at::<E>(bytes, at) {
            Ok((body, next)) => {
                batch = body.batch.wrapping_add(1);
                visit(at as u64, body)?;
                frames += 1;
                at = next;
            }
            Err(_) if is_direct_padding(bytes, at) => break,
            Err(error) => {
                let bad = BadFrame::at::<E>(bytes, at, error, at + 1, Some(batch));
                return Ok(Scan { header: Some(header), valid_end: at as u64, file_len, frames, bad: Some(bad) });
            }
        }
    }
    Ok(Scan { header: Some(header), valid_end: at as u64, file_len, frames, bad: None })
}

/// Whether the bytes from `at` on are the zero padding an `O_DIRECT`
/// writer leaves after its last frame: fewer than a block of zeros,
/// ending the file at a block boundary. Anything else that fails to read
/// as a frame is a torn tail or corruption.
fn is_direct_padding(bytes: &[u8], at: usize) -> bool {
    let padding = &bytes[at..];
    bytes.len().is_multiple_of(DIRECT_BLOCK) && padding.len() < DIRECT_BLOCK && padding.iter().all(|&b| b == 0)
}

/// The frame at `at` and the offset after it.
fn frame_at<E: Record>(bytes: &[u8], at: usize) -> Result<(Body<'_>, usize), FrameError> {
    if at >= bytes.len() {
        return Err(FrameError::Short);
    }
    body_at::<E>(bytes, at, decode_frame_head(&bytes[at..])?)
}

/// The body of the frame at `at`, whose head promised `(len, crc)`.
fn body_at<E: Record>(bytes: &[u8], at: usize, (len, crc): (usize, u32)) -> Result<(Body<'_>, usize), FrameError> {
    let start = at + FRAME_HEAD_BYTES;
    let body = bytes.get(start..start + len).ok_or(FrameError::Short)?;
    Ok((decode_body::<E>(body, crc)?, start + len))
}

/// Candidate frames, and body bytes checked in all, that
/// `frames_after` allows itself before it gives up and answers "synced":
/// a hostile file full of fake frame heads (each with a valid head CRC and
/// a 64 MiB length) must not make recovery quadratic or read gigabytes.
/// Answering yes is the safe side: corruption stops start-up instead of
/// silently truncating.
const CANDIDATES_MAX: usize = 4096;
const CANDIDATE_BYTES_MAX: u64 = 256 << 20;

/// What follows a bad frame: where the first valid frame starts, and
/// whether any valid frame shows that batch `batch` was durable.
struct After {
    first_valid: Option<usize>,
    synced: bool,
}

/// Looks for valid frames at or after `from` (every offset: the bad bytes
/// may be any length), and whether one of them shows that a completed
/// `fdatasync` covered batch `batch` (its sync mark is past it). A frame
/// without a mark (versions 1-3), an unknown `batch`, or a search past its
/// budget counts as showing it: the safe side, where start-up stops
/// instead of cutting.
fn frames_after<E: Record>(bytes: &[u8], from: usize, batch: Option<u64>) -> After {
    let mut at = from;
    let (mut candidates, mut checked) = (0, 0u64);
    let mut first_valid = None;
    while at + FRAME_HEAD_BYTES <= bytes.len() {
        let Some(i) = bytes[at..].windows(4).position(|w| w == FRAME_MAGIC) else { break };
        candidates += 1;
        if candidates > CANDIDATES_MAX || checked > CANDIDATE_BYTES_MAX {
            return After { first_valid: Some(first_valid.unwrap_or(at + i)), synced: true };
        }
        if let Ok(head) = decode_frame_head(&bytes[at + i..]) {
            checked += head.0 as u64;
            if let Ok((body, _)) = body_at::<E>(bytes, at + i, head) {
                first_valid.get_or_insert(at + i);
                let shows = match (body.durable_below, batch) {
                    (Some(durable_below), Some(batch)) => durable_below > batch,
                    _ => true,
                };
                if shows {
                    return After { first_valid, synced: true };
                }
            }
        }
        at += i + 1;
    }
    After { first_valid, synced: false }
}

/// Reads a whole segment file, refusing one larger than `bytes_max`.
pub fn read_segment(path: &Path, bytes_max: u64) -> std::io::Result<Vec<u8>> {
    FsStorage.read(path, bytes_max)
}
