//! Reading a shard's journal back at start-up (or offline).

use std::path::{Path, PathBuf};

use trove_core::Record;

use crate::format::{Body, Entry, FrameError, SegmentHeader, decode_segment_header, encode_segment_header};
use crate::segment::{Scan, covered_segments, list_segments_in, salvage_header, scan, scan_frames};
use crate::storage::{FsStorage, Storage};

/// Recovery adds to the progress counters (`progress::RECOVERY`) every
/// this many batches read, so a display moves within a long segment.
const PROGRESS_EVERY_BATCHES: u64 = 64;

/// Why a journal cannot be used.
#[derive(Debug)]
pub enum JournalError {
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Damage that is not a torn tail: start-up stops here unless the
    /// operator asks for a repair.
    Corrupt {
        path: PathBuf,
        offset: u64,
        reason: String,
    },
    /// The journal does not start where the snapshot (or batch 1) ends:
    /// batches are missing from both, and nothing after them can be
    /// applied.
    Gap {
        path: PathBuf,
        reason: String,
    },
    /// A file that belongs to another journal (another shard, another
    /// record size): not damage, and not something a repair would mend.
    Foreign {
        path: PathBuf,
        reason: String,
    },
}

impl std::fmt::Display for JournalError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            JournalError::Io { path, source } => write!(f, "journal I/O on {}: {source}", path.display()),
            JournalError::Corrupt { path, offset, reason } => write!(
                f,
                "journal corrupt in {} at byte {offset}: {reason}; start with --repair to truncate the journal \
                 there (everything after it is lost)",
                path.display()
            ),
            JournalError::Gap { path, reason } => write!(f, "journal incomplete at {}: {reason}", path.display()),
            JournalError::Foreign { path, reason } => {
                write!(f, "{} is not part of this journal: {reason}", path.display())
            }
        }
    }
}

impl std::error::Error for JournalError {}

/// Why a segment's scan stopped before its end, besides a bad frame: a
/// valid frame whose batch is not the next one.
struct OutOfSequence {
    offset: u64,
    reason: String,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> JournalError + '_ {
    move |source| JournalError::Io { path: path.to_path_buf(), source }
}

#[derive(Clone, Copy, Debug, Default)]
pub struct RecoverOptions {
    /// Start-up: a torn tail is to be cut off. Recovery does not cut it
    /// itself: it returns the end of the valid frames as `tail`, and the
    /// `JournalWriter` opened there cuts the rest, once the note saying so
    /// is out (a crash between leaves the bytes to be found and reported
    /// again). Off for read-only tools, which then just stop reading there.
    pub truncate_torn_tail: bool,
    /// Also cut the journal at corruption in the middle (and drop every
    /// later segment). The operator's explicit choice.
    pub repair: bool,
    /// Largest segment file accepted.
    pub segment_bytes_max: u64,
    /// Batches below this are checked but not applied: a snapshot holds
    /// them. 0 or 1: apply everything.
    pub skip_below: u64,
}

/// What recovery found.
#[derive(Clone, Debug, Default)]
pub struct Recovered {
    pub segments: usize,
    pub batches: u64,
    pub events: u64,
    /// Sequence for the next batch appended.
    pub next_batch: u64,
    pub last_time_us: u64,
    /// The last segment and the end of its valid frames: where appending
    /// resumes. `None` if there is no journal yet.
    pub tail: Option<(PathBuf, u64)>,
    /// What was repaired, one line each, for the log.
    pub notes: Vec<String>,
    /// Last segments that ended in a write cut short (a frame running past
    /// the end of the file, or zeros): a crash, nothing else.
    pub torn_tails: u64,
    /// Last segments whose last frame is whole but fails its checksum (or
    /// whose bytes after the last valid frame are not a frame) with
    /// nothing valid after it: a torn write or damage on disk, which the
    /// format cannot tell apart. Start-up cuts it off like a torn tail.
    pub damaged_last_frames: u64,
}

/// Reads every batch of shard `shard`'s journal in `dir`, in order, calling
/// `apply` with each batch's sequence and entries.
///
/// Segments that hold only batches below `skip_below` (a snapshot has
/// them; a crash between the snapshot's rename and their removal leaves
/// them) are not read: damage in them cannot cost anything, and a repair
/// must never cut the journal after the snapshot because of them.
pub fn recover_shard<E: Record>(
    dir: &Path,
    shard: u32,
    options: RecoverOptions,
    apply: impl FnMut(u64, &[Entry<E>]),
) -> Result<Recovered, JournalError> {
    recover_shard_in(&FsStorage, dir, shard, options, apply)
}

/// `recover_shard` on `storage`.
pub fn recover_shard_in<E: Record>(
    storage: &dyn Storage,
    dir: &Path,
    shard: u32,
    options: RecoverOptions,
    mut apply: impl FnMut(u64, &[Entry<E>]),
) -> Result<Recovered, JournalError> {
    let mut r = Recovered { next_batch: 1, ..Recovered::default() };
    if !storage.exists(dir) {
        return Ok(r);
    }
    let segments = list_segments_in(storage, dir).map_err(io(dir))?;
    let segments = &segments[covered_segments(&segments, options.skip_below)..];
    crate::progress::RECOVERY.listed(segments.len());
    let mut expected: Option<u64> = None;
    let mut entries = Vec::new();
    for (i, path) in segments.iter().enumerate() {
        let last = i + 1 == segments.len();
        let bytes = storage.read(path, options.segment_bytes_max.saturating_mul(4).max(4 << 30)).map_err(io(path))?;
        let events_before = r.events;
        // What of this segment the progress counters have: (bytes, events).
        let mut told = (0u64, events_before);
        let corrupt = |offset: u64, reason: String| JournalError::Corrupt { path: path.clone(), offset, reason };
        // A damaged header costs only the header when the rest agrees
        // (`salvage_header`): a repair keeps the segment's frames that
        // check and continue the sequence, and writes the header again.
        let (header, header_damage) = match decode_segment_header(&bytes) {
            Ok(h) => (Some(h), None),
            Err(e) if options.repair => (salvage_header::<E>(path, &bytes, shard), Some(e)),
            Err(e) => (None, Some(e)),
        };
        if let Some(h) = header {
            if h.record_size as usize != E::SIZE {
                let reason = format!("record size {} but this engine's events are {}", h.record_size, E::SIZE);
                return Err(JournalError::Foreign { path: path.clone(), reason });
            }
            if h.shard != shard {
                let reason = format!("a segment of shard {} in the directory of shard {shard}", h.shard);
                return Err(JournalError::Foreign { path: path.clone(), reason });
            }
            // Batches must follow on without a gap, except below the
            // snapshot's batch, which the snapshot holds.
            let start = options.skip_below.max(1);
            let gap = match expected {
                Some(e) if e != h.first_batch && !(e < start && h.first_batch <= start) => {
                    Some(format!("segment starts at batch {} but batch {e} comes next", h.first_batch))
                }
                None if h.first_batch > start => {
                    Some(format!("batches {start}..{} are in neither a snapshot nor the journal", h.first_batch))
                }
                _ => None,
            };
            if let Some(reason) = gap {
                // Nothing from here on can be applied: a repair drops this
                // segment and every later one.
                if i == 0 {
                    return Err(JournalError::Gap { path: path.clone(), reason });
                }
                if !options.repair {
                    return Err(corrupt(16, reason));
                }
                for later in &segments[i..] {
                    storage.remove(later).map_err(io(later))?;
                    r.notes.push(format!("repair: removed {} ({reason})", later.display()));
                }
                sync_dir(storage, dir)?;
                break;
            }
            expected = Some(h.first_batch);
            if let Some(damage) = &header_damage {
                rewrite_header(storage, path, &h)?;
                r.notes.push(format!(
                    "repair: wrote the damaged header of {} again ({damage}); its first batch {} is the file \
                     name's and its first frame's",
                    path.display(),
                    h.first_batch
                ));
            }
        }
        // A valid frame out of sequence is damage too (a frame of some
        // other journal, or a file edited by hand): the scan stops there.
        let visit = |offset, body: Body<'_>| {
            if let Some(e) = expected.filter(|&e| e != body.batch) {
                return Err(OutOfSequence {
                    offset,
                    reason: format!("batch {} where batch {e} comes next", body.batch),
                });
            }
            expected = Some(body.batch.wrapping_add(1));
            if body.batch < options.skip_below {
                return Ok(());
            }
            entries.clear();
            entries.extend(body.entries::<E>());
            for e in &entries {
                r.last_time_us = r.last_time_us.max(e.stamped.time_us);
            }
            apply(body.batch, &entries);
            r.batches += 1;
            r.events += entries.len() as u64;
            if r.batches.is_multiple_of(PROGRESS_EVERY_BATCHES) {
                crate::progress::RECOVERY.reading(offset.saturating_sub(told.0), r.events - told.1);
                told = (offset.max(told.0), r.events);
            }
            Ok(())
        };
        let scanned = match header {
            Some(h) => scan_frames::<E, OutOfSequence>(&bytes, h, visit),
            None => scan::<E, OutOfSequence>(&bytes, visit),
        };
        r.segments += 1;
        crate::progress::RECOVERY.read((bytes.len() as u64).saturating_sub(told.0), r.events - told.1);
        // Where the valid frames end, if before the end of the file.
        let (bad, header_ok, file_len) = match scanned {
            Ok(Scan { bad: None, valid_end, .. }) => {
                r.tail = Some((path.clone(), valid_end));
                continue;
            }
            Ok(Scan { bad: Some(bad), header, file_len, .. }) => {
                // A torn tail: nothing valid after the bad frame, or valid
                // frames none of which shows that a sync covered it (a
                // crash kept later unsynced writes and tore an earlier
                // one: decision 0036). Only in the last segment: a later
                // segment is created after this one was synced.
                let torn = last && !bad.synced_after;
                let mut reason = bad.error.to_string();
                if torn && bad.cut_short && header.is_some() {
                    reason = match (bad.error, bad.valid_frame_after) {
                        (_, true) => "a write lost or cut short: unsynced frames follow it",
                        (FrameError::Short, false) => "a write cut short: the last frame runs past the end of the file",
                        (_, false) => "a write cut short: zeros after the last valid frame",
                    }
                    .to_string();
                } else if torn && bad.valid_frame_after {
                    reason.push_str("; the valid frames after it were written before any sync covered it");
                } else if bad.valid_frame_after && header.is_some() {
                    reason.push_str("; a later frame shows a completed sync covered it");
                }
                if header.is_none() && bad.valid_frame_after && !options.repair {
                    reason.push_str(" in the segment header; a repair keeps the frames after it that check");
                }
                ((bad.offset, reason, torn, bad.cut_short, bad.valid_frame_after), header.is_some(), file_len)
            }
            Err(OutOfSequence { offset, reason }) => ((offset, reason, false, false, false), true, bytes.len() as u64),
        };
        let (offset, reason, torn, cut_short, unsynced_after) = bad;
        if !torn && !options.repair {
            return Err(corrupt(offset, reason));
        }
        // A tail is torn when nothing valid follows the bad bytes, or
        // nothing after them shows they were synced. If they are a write
        // cut short, that is all they can be; a whole frame that fails its
        // checksum may be a torn write or damage on disk to the last group
        // synced, which the format cannot tell apart.
        let what = match (torn, cut_short, unsynced_after) {
            (true, true, _) => {
                r.torn_tails += 1;
                "torn tail"
            }
            (true, false, false) => {
                r.damaged_last_frames += 1;
                "torn tail or damaged last frame (cannot be told apart)"
            }
            (true, false, true) => {
                r.damaged_last_frames += 1;
                "torn tail or damaged last group (cannot be told apart)"
            }
            (false, _, _) => "corruption (repair requested)",
        };
        if !header_ok {
            // The segment's own header is damaged and nothing places its
            // frames: a crash while the segment was being created (or a
            // repair): drop the file.
            if options.truncate_torn_tail || options.repair {
                storage.remove(path).map_err(io(path))?;
                sync_dir(storage, dir)?;
                r.notes.push(format!("{what}: removed {} (its header is {reason})", path.display()));
            } else {
                r.notes.push(format!("{what}: ignoring {} (its header is {reason})", path.display()));
            }
            r.segments -= 1;
        } else {
            let dropped = file_len - offset;
            if torn && options.truncate_torn_tail {
                // Cut by the writer that opens `tail` (`JournalWriter::open`
                // truncates there and syncs), after this note has been
                // returned: a crash during recovery leaves the bytes for
                // the next start to find and report again (the note is
                // logged by another thread, so a crash right after the
                // writer's cut can still lose the line: decision 0036).
                r.notes.push(format!(
                    "{what}: truncated {} at byte {offset} ({dropped} bytes dropped: {reason})",
                    path.display()
                ));
            } else if options.truncate_torn_tail || options.repair {
                let mut f = storage.open_write(path, false).map_err(io(path))?.0;
                f.set_len(offset).map_err(io(path))?;
                f.sync_all().map_err(io(path))?;
                r.notes.push(format!(
                    "{what}: truncated {} at byte {offset} ({dropped} bytes dropped: {reason})",
                    path.display()
                ));
            } else {
                r.notes.push(format!(
                    "{what}: {} ends with {dropped} unreadable bytes at byte {offset} ({reason})",
                    path.display()
                ));
            }
            r.tail = Some((path.clone(), offset));
        }
        if !torn {
            for later in &segments[i + 1..] {
                storage.remove(later).map_err(io(later))?;
                r.notes.push(format!("repair: removed {}", later.display()));
            }
            sync_dir(storage, dir)?;
        }
        break;
    }
    let after_journal = expected.unwrap_or(1);
    r.next_batch = after_journal.max(options.skip_below);
    if after_journal < r.next_batch {
        // The journal ends before the snapshot's batch: append in a new
        // segment at that batch rather than leave a gap inside a segment.
        r.tail = None;
    }
    Ok(r)
}

/// Writes a segment's header again (a repair of a damaged one), durably.
fn rewrite_header(storage: &dyn Storage, path: &Path, header: &SegmentHeader) -> Result<(), JournalError> {
    let mut f = storage.open_write(path, false).map_err(io(path))?.0;
    f.write_at(&encode_segment_header(header), 0).map_err(io(path))?;
    f.sync_all().map_err(io(path))
}

/// Makes removals in `dir` durable, so that a removed file cannot come
/// back after a power loss (a torn segment would then be found and
/// removed again, but a segment a repair dropped must stay dropped).
fn sync_dir(storage: &dyn Storage, dir: &Path) -> Result<(), JournalError> {
    storage.sync_dir(dir).map_err(io(dir))
}
