//! Appending to a shard's journal.

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use trove_core::Record;

use trove_core::Stamped;

use crate::format::{
    Entry, Run, SEGMENT_HEADER_BYTES, SegmentHeader, encode_entries, encode_frame, encode_segment_header,
};
use crate::segment::segment_name;

/// When a written batch counts as durable, and so may be acknowledged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FsyncPolicy {
    /// After the write and an `fdatasync` of it.
    Always,
    /// After the next periodic `fdatasync` (every `Duration`) that covers it.
    Interval(Duration),
    /// After the write reaches the kernel. A machine crash or power loss can
    /// lose acknowledged batches still in the page cache; a process crash
    /// (`kill -9`) cannot.
    Never,
}

impl std::str::FromStr for FsyncPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "always" => Ok(Self::Always),
            "never" => Ok(Self::Never),
            _ => match s.strip_prefix("interval=").map(str::parse::<u64>) {
                Some(Ok(ms)) if (1..=60_000).contains(&ms) => Ok(Self::Interval(Duration::from_millis(ms))),
                _ => {
                    Err(format!("bad fsync policy `{s}`: expected always, never or interval=<ms> with ms in 1..=60000"))
                }
            },
        }
    }
}

impl std::fmt::Display for FsyncPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Always => write!(f, "always"),
            Self::Never => write!(f, "never"),
            Self::Interval(d) => write!(f, "interval={}", d.as_millis()),
        }
    }
}

/// Appends batch frames to a shard's current segment, rolling to a new one
/// past `segment_bytes_max`. Frames are buffered by `append` and reach the
/// file in one `write` per `flush`: the group commit.
#[derive(Debug)]
pub struct JournalWriter {
    dir: PathBuf,
    shard: u32,
    record_size: u32,
    file: File,
    segment_bytes: u64,
    segment_bytes_max: u64,
    next_batch: u64,
    buf: Vec<u8>,
    /// Bytes written since the last sync.
    unsynced: bool,
}

impl JournalWriter {
    /// Opens the journal of a shard for appending. `tail` is the last
    /// segment and the end of its valid frames (from recovery), or `None`
    /// to start a new segment at `next_batch`.
    pub fn open(
        dir: &Path,
        shard: u32,
        record_size: u32,
        next_batch: u64,
        tail: Option<(PathBuf, u64)>,
        segment_bytes_max: u64,
    ) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let (file, segment_bytes) = match tail {
            Some((path, valid_end)) => {
                let mut file = OpenOptions::new().write(true).open(&path)?;
                file.set_len(valid_end)?;
                file.seek(SeekFrom::Start(valid_end))?;
                file.sync_all()?;
                (file, valid_end)
            }
            None => (create_segment(dir, shard, record_size, next_batch)?, SEGMENT_HEADER_BYTES as u64),
        };
        Ok(Self {
            dir: dir.to_path_buf(),
            shard,
            record_size,
            file,
            segment_bytes,
            segment_bytes_max,
            next_batch,
            buf: Vec::new(),
            unsynced: false,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn shard(&self) -> u32 {
        self.shard
    }

    /// The sequence the next appended batch gets.
    pub fn next_batch(&self) -> u64 {
        self.next_batch
    }

    /// Encodes a batch into the write buffer; returns its sequence.
    pub fn append<E: Record>(&mut self, runs: &[Run<'_>], events: &[Stamped<E>]) -> u64 {
        debug_assert_eq!(E::SIZE as u32, self.record_size);
        let batch = self.next_batch;
        encode_frame(batch, runs, events, &mut self.buf);
        self.next_batch += 1;
        batch
    }

    /// `append` for a batch held as entries.
    pub fn append_entries<E: Record>(&mut self, entries: &[Entry<E>]) -> u64 {
        debug_assert_eq!(E::SIZE as u32, self.record_size);
        let batch = self.next_batch;
        encode_entries(batch, entries, &mut self.buf);
        self.next_batch += 1;
        batch
    }

    /// Writes everything appended with one `write`; returns the bytes
    /// written. Rolls to a new segment first if this one is full.
    pub fn flush(&mut self) -> std::io::Result<u64> {
        if self.buf.is_empty() {
            return Ok(0);
        }
        if self.segment_bytes > SEGMENT_HEADER_BYTES as u64
            && self.segment_bytes + self.buf.len() as u64 > self.segment_bytes_max
        {
            self.roll()?;
        }
        self.file.write_all(&self.buf)?;
        let n = self.buf.len() as u64;
        self.segment_bytes += n;
        self.buf.clear();
        self.unsynced = true;
        Ok(n)
    }

    /// `fdatasync`s what was written, if anything.
    pub fn sync(&mut self) -> std::io::Result<bool> {
        if !self.unsynced {
            return Ok(false);
        }
        self.file.sync_data()?;
        self.unsynced = false;
        Ok(true)
    }

    /// After a snapshot holding every batch before `next_batch`: start a new
    /// segment there (if the current one has frames), so that every older
    /// segment can be removed.
    pub fn roll_at_snapshot(&mut self) -> std::io::Result<()> {
        self.flush()?;
        if self.segment_bytes > SEGMENT_HEADER_BYTES as u64 {
            self.roll()?;
        }
        Ok(())
    }

    /// Starts a new segment at the next batch, after making the old one
    /// durable (a later segment must never exist without its predecessor's
    /// frames on disk).
    fn roll(&mut self) -> std::io::Result<()> {
        self.file.sync_data()?;
        // The frames appended so far start at batch `next_batch - pending`.
        let pending = count_frames(&self.buf);
        let first = self.next_batch - pending;
        self.file = create_segment(&self.dir, self.shard, self.record_size, first)?;
        self.segment_bytes = SEGMENT_HEADER_BYTES as u64;
        Ok(())
    }
}

fn count_frames(buf: &[u8]) -> u64 {
    let mut at = 0;
    let mut n = 0;
    while at + crate::format::FRAME_HEAD_BYTES <= buf.len() {
        let len = u32::from_le_bytes(buf[at + 4..at + 8].try_into().expect("4 bytes")) as usize;
        at += crate::format::FRAME_HEAD_BYTES + len;
        n += 1;
    }
    n
}

/// Creates a segment file with its header, durably: the header and the
/// directory entry are synced before any frame goes in.
fn create_segment(dir: &Path, shard: u32, record_size: u32, first_batch: u64) -> std::io::Result<File> {
    let path = dir.join(segment_name(first_batch));
    let mut file = OpenOptions::new().create_new(true).write(true).open(&path)?;
    file.write_all(&encode_segment_header(&SegmentHeader { shard, first_batch, record_size }))?;
    file.sync_all()?;
    File::open(dir)?.sync_all()?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies_parse_and_print() {
        for s in ["always", "never", "interval=5"] {
            assert_eq!(s.parse::<FsyncPolicy>().unwrap().to_string(), s);
        }
        for bad in ["", "sometimes", "interval=", "interval=0", "interval=x", "interval=999999"] {
            assert!(bad.parse::<FsyncPolicy>().is_err(), "{bad}");
        }
    }
}
