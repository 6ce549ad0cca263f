//! Reading a shard's journal back at start-up (or offline).

use std::path::{Path, PathBuf};

use trove_core::Record;

use crate::format::{Entry, decode_segment_header};
use crate::segment::{list_segments, read_segment, scan};

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
        }
    }
}

impl std::error::Error for JournalError {}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> JournalError + '_ {
    move |source| JournalError::Io { path: path.to_path_buf(), source }
}

#[derive(Clone, Copy, Debug, Default)]
pub struct RecoverOptions {
    /// Cut a torn tail off the files (start-up). Off for read-only tools,
    /// which then just stop reading there.
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
}

/// Reads every batch of shard `shard`'s journal in `dir`, in order, calling
/// `apply` with each batch's sequence and entries.
pub fn recover_shard<E: Record>(
    dir: &Path,
    shard: u32,
    options: RecoverOptions,
    mut apply: impl FnMut(u64, &[Entry<E>]),
) -> Result<Recovered, JournalError> {
    let mut r = Recovered { next_batch: 1, ..Recovered::default() };
    if !dir.exists() {
        return Ok(r);
    }
    let segments = list_segments(dir).map_err(io(dir))?;
    let mut expected: Option<u64> = None;
    let mut entries = Vec::new();
    for (i, path) in segments.iter().enumerate() {
        let last = i + 1 == segments.len();
        let bytes = read_segment(path, options.segment_bytes_max.saturating_mul(4).max(4 << 30)).map_err(io(path))?;
        let corrupt = |offset: u64, reason: String| JournalError::Corrupt { path: path.clone(), offset, reason };
        if let Ok(h) = decode_segment_header(&bytes) {
            if h.record_size as usize != E::SIZE {
                return Err(corrupt(
                    24,
                    format!("record size {} but this engine's events are {}", h.record_size, E::SIZE),
                ));
            }
            if h.shard != shard {
                return Err(corrupt(12, format!("segment of shard {} in the directory of shard {shard}", h.shard)));
            }
            // Batches must follow on without a gap, except below the
            // snapshot's batch, which the snapshot holds.
            let start = options.skip_below.max(1);
            match expected {
                Some(e) if e != h.first_batch && !(e < start && h.first_batch <= start) => {
                    return Err(corrupt(
                        16,
                        format!("segment starts at batch {} but batch {e} comes next", h.first_batch),
                    ));
                }
                None if h.first_batch > start => {
                    return Err(corrupt(
                        16,
                        format!("batches {start}..{} are in neither a snapshot nor the journal", h.first_batch),
                    ));
                }
                _ => {}
            }
            expected = Some(h.first_batch);
        }
        let scanned = scan::<E, JournalError>(&bytes, |offset, body| {
            if let Some(e) = expected.filter(|&e| e != body.batch) {
                return Err(corrupt(offset, format!("batch {} where batch {e} comes next", body.batch)));
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
            Ok(())
        })?;
        r.segments += 1;
        let Some(bad) = scanned.bad else {
            r.tail = Some((path.clone(), scanned.valid_end));
            continue;
        };
        let torn = last && !bad.valid_frame_after;
        if !torn && !options.repair {
            return Err(corrupt(bad.offset, bad.error.to_string()));
        }
        let what = if torn { "torn tail" } else { "corruption (repair requested)" };
        if scanned.header.is_none() {
            // The segment's own header is damaged: a crash while the
            // segment was being created (or a repair): drop the file.
            if options.truncate_torn_tail || options.repair {
                std::fs::remove_file(path).map_err(io(path))?;
                r.notes.push(format!("{what}: removed {} (its header is {})", path.display(), bad.error));
            } else {
                r.notes.push(format!("{what}: ignoring {} (its header is {})", path.display(), bad.error));
            }
            r.segments -= 1;
        } else {
            let dropped = scanned.file_len - bad.offset;
            if options.truncate_torn_tail || options.repair {
                let f = std::fs::OpenOptions::new().write(true).open(path).map_err(io(path))?;
                f.set_len(bad.offset).map_err(io(path))?;
                f.sync_all().map_err(io(path))?;
                r.notes.push(format!(
                    "{what}: truncated {} at byte {} ({dropped} bytes dropped: {})",
                    path.display(),
                    bad.offset,
                    bad.error
                ));
            } else {
                r.notes.push(format!(
                    "{what}: {} ends with {dropped} unreadable bytes at byte {} ({})",
                    path.display(),
                    bad.offset,
                    bad.error
                ));
            }
            r.tail = Some((path.clone(), bad.offset));
        }
        if !torn {
            for later in &segments[i + 1..] {
                std::fs::remove_file(later).map_err(io(later))?;
                r.notes.push(format!("repair: removed {}", later.display()));
            }
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
