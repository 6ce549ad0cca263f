//! Reading one segment file.

use std::path::{Path, PathBuf};

use trove_core::Record;

use crate::format::{
    Body, FRAME_HEAD_BYTES, FRAME_MAGIC, FrameError, SEGMENT_HEADER_BYTES, SegmentHeader, decode_body,
    decode_frame_head, decode_segment_header,
};
use crate::writer::DIRECT_BLOCK;

/// Segment files are named by the first batch they hold, so that sorting
/// names sorts batches.
pub fn segment_name(first_batch: u64) -> String {
    format!("segment-{first_batch:020}.tjl")
}

/// The segment files of a shard directory, in batch order.
pub fn list_segments(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
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

/// Where and why reading a segment stopped early.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BadFrame {
    pub offset: u64,
    pub error: FrameError,
    /// A valid frame follows the bad one: this is damage in the middle of
    /// the log, not a write cut short by a crash.
    pub valid_frame_after: bool,
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
pub fn scan<E: Record, X>(bytes: &[u8], mut visit: impl FnMut(u64, Body<'_>) -> Result<(), X>) -> Result<Scan, X> {
    let file_len = bytes.len() as u64;
    let header = match decode_segment_header(bytes) {
        Ok(h) => h,
        Err(error) => {
            let bad = BadFrame { offset: 0, error, valid_frame_after: valid_frame_from::<E>(bytes, 1) };
            return Ok(Scan { header: None, valid_end: 0, file_len, frames: 0, bad: Some(bad) });
        }
    };
    let mut at = SEGMENT_HEADER_BYTES;
    let mut frames = 0;
    while at < bytes.len() {
        match frame_at::<E>(bytes, at) {
            Ok((body, next)) => {
                visit(at as u64, body)?;
                frames += 1;
                at = next;
            }
            Err(_) if is_direct_padding(bytes, at) => break,
            Err(error) => {
                let bad =
                    BadFrame { offset: at as u64, error, valid_frame_after: valid_frame_from::<E>(bytes, at + 1) };
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
    body_at::<E>(bytes, at, decode_frame_head(&bytes[at..])?)
}

/// The body of the frame at `at`, whose head promised `(len, crc)`.
fn body_at<E: Record>(bytes: &[u8], at: usize, (len, crc): (usize, u32)) -> Result<(Body<'_>, usize), FrameError> {
    let start = at + FRAME_HEAD_BYTES;
    let body = bytes.get(start..start + len).ok_or(FrameError::Short)?;
    Ok((decode_body::<E>(body, crc)?, start + len))
}

/// Candidate frames, and body bytes checked in all, that
/// `valid_frame_from` allows itself before it gives up and answers "yes":
/// a hostile file full of fake frame heads (each with a valid head CRC and
/// a 64 MiB length) must not make recovery quadratic or read gigabytes.
/// Answering yes is the safe side: corruption stops start-up instead of
/// silently truncating.
const CANDIDATES_MAX: usize = 4096;
const CANDIDATE_BYTES_MAX: u64 = 256 << 20;

/// Whether any valid frame starts at or after `from`.
fn valid_frame_from<E: Record>(bytes: &[u8], from: usize) -> bool {
    let mut at = from;
    let (mut candidates, mut checked) = (0, 0u64);
    while at + FRAME_HEAD_BYTES <= bytes.len() {
        match bytes[at..].windows(4).position(|w| w == FRAME_MAGIC) {
            Some(i) => {
                candidates += 1;
                if candidates > CANDIDATES_MAX || checked > CANDIDATE_BYTES_MAX {
                    return true;
                }
                if let Ok(head) = decode_frame_head(&bytes[at + i..]) {
                    checked += head.0 as u64;
                    if body_at::<E>(bytes, at + i, head).is_ok() {
                        return true;
                    }
                }
                at += i + 1;
            }
            None => return false,
        }
    }
    false
}

/// Reads a whole segment file, refusing one larger than `bytes_max`.
pub fn read_segment(path: &Path, bytes_max: u64) -> std::io::Result<Vec<u8>> {
    let len = std::fs::metadata(path)?.len();
    if len > bytes_max {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{} is {len} bytes, above the {bytes_max}-byte segment limit", path.display()),
        ));
    }
    std::fs::read(path)
}
