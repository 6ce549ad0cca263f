//! Appending to a shard's journal.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use trove_core::Record;

use trove_core::Stamped;

use crate::format::{
    BODY_HEAD_BYTES, Entry, FRAME_BODY_BYTES_MAX, FRAME_EVENTS_MAX, RUN_BYTES, Run, SEGMENT_HEADER_BYTES,
    SegmentHeader, encode_entries, encode_frame_parts, encode_segment_header, event_bytes_max,
};
use crate::lock::DataDirLock;
use crate::planted::{Planted, on as planted};
use crate::segment::segment_name;
use crate::storage::{FsStorage, Storage, StorageFile};

/// When a written batch counts as durable, and so may be acknowledged.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum FsyncPolicy {
    /// Group commit, the default: after the write and an `fdatasync` of
    /// it, where the journal thread writes and syncs as soon as anything
    /// is pending and no sync is in flight, and whatever the shard hands
    /// it during a sync goes into the next one. Batches grow with the load
    /// by themselves; an idle engine's batch waits for one write and one
    /// sync, never for a timer.
    #[default]
    Group,
    /// After the write and an `fdatasync` of it. The journal thread runs
    /// the same loop as `Group` (docs/decisions/0009-group-commit.md); the
    /// name is kept for the configurations that spell it.
    Always,
    /// After the next periodic `fdatasync` (every `Duration`) that covers it.
    Interval(Duration),
    /// After the write reaches the kernel. A machine crash or power loss can
    /// lose acknowledged batches still in the page cache; a process crash
    /// (`kill -9`) cannot.
    Never,
}

/// A `--fsync` value that names no policy.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("bad fsync policy `{0}`: expected group, always, never or interval=<ms> with ms in 1..=60000")]
pub struct ParseFsyncError(pub String);

impl std::str::FromStr for FsyncPolicy {
    type Err = ParseFsyncError;
    fn from_str(s: &str) -> Result<Self, ParseFsyncError> {
        match s {
            "group" => Ok(Self::Group),
            "always" => Ok(Self::Always),
            "never" => Ok(Self::Never),
            _ => match s.strip_prefix("interval=").map(str::parse::<u64>) {
                Some(Ok(ms)) if (1..=60_000).contains(&ms) => Ok(Self::Interval(Duration::from_millis(ms))),
                _ => Err(ParseFsyncError(s.to_string())),
            },
        }
    }
}

impl std::fmt::Display for FsyncPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Group => write!(f, "group"),
            Self::Always => write!(f, "always"),
            Self::Never => write!(f, "never"),
            Self::Interval(d) => write!(f, "interval={}", d.as_millis()),
        }
    }
}

/// How a journal's frames reach the disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteIo {
    /// `O_DIRECT` writes of whole 4 KiB blocks from the writer's own
    /// buffer: no copy into the page cache and no writeback work later,
    /// which is most of what a buffered journal costs in CPU. The partial
    /// last block is kept in memory and written again, extended, by the
    /// next flush; on disk the segment ends with zero padding up to the
    /// block boundary (recovery knows it). Falls back to `Buffered` where
    /// the file system refuses `O_DIRECT`.
    Direct,
    /// Plain `write`s through the page cache.
    Buffered,
}

/// The unit of an `O_DIRECT` write: offsets, lengths and the buffer's
/// address are multiples of it. 4 KiB covers every logical block size in
/// use (512 and 4096).
pub const DIRECT_BLOCK: usize = 4096;

/// Appends batch frames to a shard's current segment, rolling to a new one
/// past `segment_bytes_max`. Frames are buffered by `append` and reach the
/// file in one `write` per `flush`: the group commit.
#[derive(Debug)]
pub struct JournalWriter {
    /// Where the files are: the real file system but in the simulator.
    storage: Arc<dyn Storage>,
    dir: PathBuf,
    shard: u32,
    record_size: u32,
    /// The current segment.
    path: PathBuf,
    file: Box<dyn StorageFile>,
    io: WriteIo,
    /// The segment's length in valid bytes (header and frames); with
    /// `Direct`, the file may be longer by its zero padding.
    segment_bytes: u64,
    segment_bytes_max: u64,
    next_batch: u64,
    /// What the next `write` carries: `skip` bytes to reach an aligned
    /// address (`Direct`), then the segment's partial last block as on
    /// disk (`Direct`: from the block boundary below `segment_bytes`), then
    /// from `frames_at` on the frames appended since the last flush.
    /// Frames are encoded straight into it, so a direct write copies
    /// nothing but that partial block.
    buf: Vec<u8>,
    skip: usize,
    frames_at: usize,
    /// Bytes written since the last sync.
    unsynced: bool,
    /// Every batch below this has been written (`flush`).
    written_below: u64,
    /// Every batch below this is covered by a completed `fdatasync`: the
    /// sync mark each frame carries when it is encoded, which lets
    /// recovery tell unsynced bytes a crash tore from damage to synced
    /// ones (docs/decisions/0036-synced-through-marker.md).
    durable_below: u64,
    /// The data directory's lock, kept while this writer may write: an
    /// engine dropped without `shutdown` lets its journal threads finish
    /// on their own, and no other engine may start on the directory
    /// before they have. `None` for a writer given none (tools, tests).
    _lock: Option<Arc<DataDirLock>>,
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
        io: WriteIo,
    ) -> std::io::Result<Self> {
        Self::open_in(Arc::new(FsStorage), dir, shard, record_size, next_batch, tail, segment_bytes_max, io)
    }

    /// `open` on `storage` (the simulator's disk, or the real one).
    #[allow(clippy::too_many_arguments)]
    pub fn open_in(
        storage: Arc<dyn Storage>,
        dir: &Path,
        shard: u32,
        record_size: u32,
        next_batch: u64,
        tail: Option<(PathBuf, u64)>,
        segment_bytes_max: u64,
        io: WriteIo,
    ) -> std::io::Result<Self> {
        create_dir_durably_in(&*storage, dir)?;
        let (path, segment_bytes) = match tail {
            Some((path, valid_end)) => {
                let mut file = storage.open_write(&path, false)?.0;
                // Drops a torn tail or the zero padding of direct writes.
                file.set_len(valid_end)?;
                file.sync_all()?;
                (path, valid_end)
            }
            None => create_segment(&*storage, dir, shard, record_size, next_batch)?,
        };
        let (file, io) = open_segment(&*storage, &path, io)?;
        let mut writer = Self {
            storage,
            dir: dir.to_path_buf(),
            shard,
            record_size,
            path,
            file,
            io,
            segment_bytes,
            segment_bytes_max,
            next_batch,
            buf: Vec::new(),
            skip: 0,
            frames_at: 0,
            unsynced: false,
            // Opening made the tail durable (`set_len` and `sync_all`), or
            // started a new segment after batches that a snapshot or
            // synced segments hold.
            written_below: next_batch,
            durable_below: next_batch,
            _lock: None,
        };
        writer.load_tail()?;
        Ok(writer)
    }

    /// Keeps `lock` (its data directory's) until this writer is dropped.
    pub fn hold(&mut self, lock: Arc<DataDirLock>) {
        debug_assert!(self.dir.starts_with(lock.dir()), "a writer holds the lock of its own data directory");
        self._lock = Some(lock);
    }

    /// How this writer's frames reach the disk (`Buffered` if `Direct` was
    /// asked for and refused).
    pub fn io(&self) -> WriteIo {
        self.io
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The storage this writer's files are on.
    pub fn storage(&self) -> &Arc<dyn Storage> {
        &self.storage
    }

    pub fn shard(&self) -> u32 {
        self.shard
    }

    /// The sequence the next appended batch gets.
    pub fn next_batch(&self) -> u64 {
        self.next_batch
    }

    /// Encodes a batch into the write buffer; returns the sequences it
    /// took (one, unless it had to be split: `append_parts`).
    pub fn append<E: Record>(&mut self, runs: &[Run<'_>], events: &[Stamped<E>]) -> std::ops::Range<u64> {
        self.append_parts(runs, &[events], None)
    }

    /// `append` for a batch held in parts, each event at `time_us` if
    /// given (`format::encode_frame_parts`). Returns the sequences it took.
    ///
    /// A batch whose frame could pass `FRAME_BODY_BYTES_MAX` or
    /// `FRAME_EVENTS_MAX` (the engine bounds a drain in events, and the
    /// bytes per event depend on the records: 2^21 creates are 66 MiB) is
    /// split over as many consecutive frames as it needs, each a batch of
    /// its own, in order. Replaying them one after the other applies the
    /// same events in the same order with the same times as the one apply
    /// the shard made (`Game::apply` applies its events in order), so the
    /// state is the same (docs/decisions/0005-journal-frames-bounded-in-bytes.md).
    pub fn append_parts<E: Record, P: AsRef<[Stamped<E>]>>(
        &mut self,
        runs: &[Run<'_>],
        parts: &[P],
        time_us: Option<u64>,
    ) -> std::ops::Range<u64> {
        debug_assert_eq!(E::SIZE as u32, self.record_size);
        let first = self.next_batch;
        let splits = frame_splits::<E>(runs, time_us.is_some(), FRAME_BODY_BYTES_MAX, FRAME_EVENTS_MAX);
        if splits.len() <= 1 {
            encode_frame_parts(first, self.durable_below, runs, parts, time_us, &mut self.buf);
            self.next_batch += 1;
            return first..self.next_batch;
        }
        let slices: Vec<&[Stamped<E>]> = parts.iter().map(AsRef::as_ref).collect();
        let mut from = 0;
        for &to in &splits {
            let (sub_runs, sub_parts) = (runs_between(runs, from, to), parts_between(&slices, from, to));
            encode_frame_parts(self.next_batch, self.durable_below, &sub_runs, &sub_parts, time_us, &mut self.buf);
            self.next_batch += 1;
            from = to;
        }
        first..self.next_batch
    }

    /// `append` for a batch held as entries.
    pub fn append_entries<E: Record>(&mut self, entries: &[Entry<E>]) -> u64 {
        debug_assert_eq!(E::SIZE as u32, self.record_size);
        let batch = self.next_batch;
        encode_entries(batch, self.durable_below, entries, &mut self.buf);
        self.next_batch += 1;
        batch
    }

    /// Writes everything appended with one `write`; returns the bytes
    /// appended. Rolls to a new segment first if this one is full.
    pub fn flush(&mut self) -> std::io::Result<u64> {
        let n = (self.buf.len() - self.frames_at) as u64;
        if n == 0 {
            return Ok(0);
        }
        if self.segment_bytes > SEGMENT_HEADER_BYTES as u64 && self.segment_bytes + n > self.segment_bytes_max {
            self.roll()?;
        }
        match self.io {
            WriteIo::Buffered => {
                // At the end of the valid bytes, which is the file's end.
                self.file.write_at(&self.buf, self.segment_bytes)?;
                self.buf.clear();
            }
            WriteIo::Direct => self.write_direct()?,
        }
        self.segment_bytes += n;
        self.unsynced = true;
        self.written_below = self.next_batch;
        Ok(n)
    }

    /// The partial last block and the new frames, padded with zeros to a
    /// whole block, in one aligned `pwrite` at the block boundary. What
    /// was already on disk is rewritten with the same bytes. Keeps the new
    /// partial last block for the next write.
    fn write_direct(&mut self) -> std::io::Result<()> {
        let tail = self.frames_at - self.skip;
        let block_start = self.segment_bytes - tail as u64;
        debug_assert_eq!(block_start % DIRECT_BLOCK as u64, 0);
        let len = self.buf.len() - self.skip;
        let padded = len.next_multiple_of(DIRECT_BLOCK);
        // Room first, so that the address (and the alignment taken from
        // it) stays put from here on.
        self.buf.reserve((DIRECT_BLOCK + padded).saturating_sub(self.buf.len()));
        let addr = self.buf.as_ptr().addr();
        let skip = addr.next_multiple_of(DIRECT_BLOCK) - addr;
        if skip != self.skip {
            // The buffer moved when it grew: shift the bytes to the new
            // aligned start.
            let from = self.skip;
            self.buf.resize((skip + len).max(from + len), 0);
            self.buf.copy_within(from..from + len, skip);
            self.buf.truncate(skip + len);
            self.skip = skip;
        }
        self.buf.resize(skip + padded, 0);
        match self.file.write_at(&self.buf[skip..], block_start) {
            Ok(()) => {}
            // A file system that opens with `O_DIRECT` but refuses the
            // write: go on buffered from the valid end (a later buffered
            // write covers any padding before it).
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                let mut file = self.storage.open_write(&self.path, false)?.0;
                file.write_at(&self.buf[skip + tail..skip + len], self.segment_bytes)?;
                (self.file, self.io) = (file, WriteIo::Buffered);
                (self.skip, self.frames_at) = (0, 0);
                self.buf.clear();
                return Ok(());
            }
            Err(e) => return Err(e),
        }
        let whole = len / DIRECT_BLOCK * DIRECT_BLOCK;
        self.buf.copy_within(skip + whole..skip + len, skip);
        self.buf.truncate(skip + len - whole);
        self.frames_at = self.buf.len();
        Ok(())
    }

    /// Starts the buffer for a segment just opened: with `Direct`, its
    /// partial last block read back from the file.
    fn load_tail(&mut self) -> std::io::Result<()> {
        self.buf.clear();
        (self.skip, self.frames_at) = (0, 0);
        if self.io == WriteIo::Direct {
            let partial = (self.segment_bytes % DIRECT_BLOCK as u64) as usize;
            self.buf.resize(partial, 0);
            self.storage.read_at(&self.path, &mut self.buf, self.segment_bytes - partial as u64)?;
            self.frames_at = partial;
        }
        Ok(())
    }

    /// `fdatasync`s what was written, if anything.
    pub fn sync(&mut self) -> std::io::Result<bool> {
        if !self.unsynced {
            return Ok(false);
        }
        if !planted(Planted::AckBeforeSync) {
            self.file.sync_data()?;
        }
        self.unsynced = false;
        self.durable_below = self.written_below;
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
        if self.io == WriteIo::Direct {
            // The old segment ends exactly at its last frame, no padding.
            self.file.set_len(self.segment_bytes)?;
        }
        self.file.sync_data()?;
        // The frames appended so far start at batch `next_batch - pending`.
        let frames = self.buf.split_off(self.frames_at);
        let first = self.next_batch - count_frames(&frames);
        // Every batch before the frames moving on is in the segment just
        // synced. (Those frames were encoded with the mark they had; a
        // later frame carries this one.)
        self.durable_below = self.durable_below.max(first);
        let (path, segment_bytes) = create_segment(&*self.storage, &self.dir, self.shard, self.record_size, first)?;
        (self.file, self.io) = open_segment(&*self.storage, &path, self.io)?;
        self.path = path;
        self.segment_bytes = segment_bytes;
        self.load_tail()?;
        self.buf.extend_from_slice(&frames);
        Ok(())
    }
}

/// Where a batch of `runs` is cut into frames: the end (an event index)
/// of each frame, the last one the batch's end; a single entry when the
/// batch fits one frame. Each frame's body is bounded, before encoding,
/// by `format::event_bytes_max` per event and `RUN_BYTES` per run, and
/// holds at most `events_max` events.
pub fn frame_splits<E: Record>(
    runs: &[Run<'_>],
    uniform_time: bool,
    body_bytes_max: usize,
    events_max: usize,
) -> Vec<usize> {
    let mut ends = Vec::new();
    let (mut at, mut events, mut bytes) = (0usize, 0usize, BODY_HEAD_BYTES);
    for r in runs {
        let per_event = event_bytes_max::<E>(uniform_time, r.offsets.is_some());
        // A frame always has room for one run of one event.
        assert!(BODY_HEAD_BYTES + RUN_BYTES + per_event <= body_bytes_max && events_max >= 1, "frame limits too small");
        let mut left = r.len;
        while left > 0 {
            let room_bytes = body_bytes_max.saturating_sub(bytes + RUN_BYTES) / per_event;
            let take = left.min(events_max - events).min(room_bytes);
            if take == 0 {
                ends.push(at);
                (events, bytes) = (0, BODY_HEAD_BYTES);
                continue;
            }
            (at, events, bytes, left) = (at + take, events + take, bytes + RUN_BYTES + take * per_event, left - take);
        }
    }
    ends.push(at);
    ends
}

/// Encodes a batch held in parts as frames of at most `body_bytes_max`
/// body bytes and `events_max` events each, numbered from `first_batch`,
/// each with the sync mark `durable_below`; `frame` gets each frame's
/// number and bytes, in order. For a log whose records are bounded in size
/// (a cluster's stream, one frame per message); replaying the frames one
/// after the other applies what the one batch applied
/// (docs/decisions/0005-journal-frames-bounded-in-bytes.md).
#[allow(clippy::too_many_arguments)]
pub fn encode_bounded<E: Record, P: AsRef<[Stamped<E>]>>(
    first_batch: u64,
    durable_below: u64,
    runs: &[Run<'_>],
    parts: &[P],
    time_us: Option<u64>,
    body_bytes_max: usize,
    events_max: usize,
    mut frame: impl FnMut(u64, Vec<u8>),
) {
    let splits = frame_splits::<E>(runs, time_us.is_some(), body_bytes_max, events_max);
    let slices: Vec<&[Stamped<E>]> = parts.iter().map(AsRef::as_ref).collect();
    let (mut from, mut batch) = (0, first_batch);
    for &to in &splits {
        let (sub_runs, sub_parts) = (runs_between(runs, from, to), parts_between(&slices, from, to));
        let mut out = Vec::new();
        encode_frame_parts(batch, durable_below, &sub_runs, &sub_parts, time_us, &mut out);
        frame(batch, out);
        batch += 1;
        from = to;
    }
}

/// The runs covering events `from..to` of a batch: a run cut at the edge
/// keeps its producer, and its first sequence moves on by the events cut
/// off (or, with offsets, keeps it and takes its share of the offsets).
fn runs_between<'a>(runs: &[Run<'a>], from: usize, to: usize) -> Vec<Run<'a>> {
    let mut out = Vec::new();
    let mut start = 0;
    for r in runs {
        let (lo, hi) = (from.max(start), to.min(start + r.len));
        if lo < hi {
            let (a, b) = (lo - start, hi - start);
            out.push(match r.offsets {
                Some(o) => Run { offsets: Some(&o[a..b]), len: b - a, ..*r },
                None => Run { first_seq: r.first_seq + a as u64, len: b - a, ..*r },
            });
        }
        start += r.len;
    }
    out
}

/// The events `from..to` of a batch held in parts, as slices of them.
fn parts_between<'a, T>(parts: &[&'a [T]], from: usize, to: usize) -> Vec<&'a [T]> {
    let mut out = Vec::new();
    let mut start = 0;
    for p in parts {
        let (lo, hi) = (from.max(start), to.min(start + p.len()));
        if lo < hi {
            out.push(&p[lo - start..hi - start]);
        }
        start += p.len();
    }
    out
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

/// Creates `dir` and any missing parents, each made durable by an fsync of
/// the directory that holds it: a segment synced into a directory whose
/// own entry a power loss could take away would not be durable.
pub fn create_dir_durably(dir: &Path) -> std::io::Result<()> {
    create_dir_durably_in(&FsStorage, dir)
}

/// `create_dir_durably` on `storage`.
pub fn create_dir_durably_in(storage: &dyn Storage, dir: &Path) -> std::io::Result<()> {
    if storage.is_dir(dir) {
        return Ok(());
    }
    let parent = dir.parent().filter(|p| !p.as_os_str().is_empty());
    if let Some(parent) = parent {
        create_dir_durably_in(storage, parent)?;
    }
    match storage.create_dir(dir) {
        Ok(()) => storage.sync_dir(parent.unwrap_or(Path::new("."))),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && storage.is_dir(dir) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Creates a segment file with its header, durably: the header and the
/// directory entry are synced before any frame goes in. Returns its path
/// and length.
fn create_segment(
    storage: &dyn Storage,
    dir: &Path,
    shard: u32,
    record_size: u32,
    first_batch: u64,
) -> std::io::Result<(PathBuf, u64)> {
    let path = dir.join(segment_name(first_batch));
    let mut file = storage.create(&path, true)?;
    file.write_at(&encode_segment_header(&SegmentHeader { shard, first_batch, record_size }), 0)?;
    file.sync_all()?;
    if !planted(Planted::SkipSegmentDirSync) {
        storage.sync_dir(dir)?;
    }
    Ok((path, SEGMENT_HEADER_BYTES as u64))
}

/// Opens a segment for appending: with `O_DIRECT` if asked and the file
/// system takes it, else buffered (writes go at the valid end, which is
/// the file's end).
fn open_segment(storage: &dyn Storage, path: &Path, io: WriteIo) -> std::io::Result<(Box<dyn StorageFile>, WriteIo)> {
    let (file, direct) = storage.open_write(path, io == WriteIo::Direct)?;
    Ok((file, if direct { WriteIo::Direct } else { WriteIo::Buffered }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A batch cut into frames by `frame_splits` (small limits here; the
    /// writer uses the format's) reads back as the same events with the
    /// same producers and sequences, in order, each frame within its
    /// limits: runs with and without offsets, cut inside runs and parts.
    #[test]
    fn a_batch_split_over_frames_reads_back_exactly() {
        use trove_hunt::HuntEvent;

        use crate::format::{decode_body, decode_frame_head};
        let events: Vec<Stamped<HuntEvent>> =
            (0..300u32).map(|i| Stamped { time_us: 5, event: HuntEvent::dig(i % 7, i) }).collect();
        let offsets: Vec<u32> = (0..100).map(|i| i * 3 + 1).collect();
        let runs = [
            Run { producer: 1, first_seq: 10, len: 120, offsets: None },
            Run { producer: 2, first_seq: 1000, len: 100, offsets: Some(&offsets) },
            Run { producer: 1, first_seq: 130, len: 80, offsets: None },
        ];
        let want: Vec<(u64, u64)> = (0..120)
            .map(|i| (1, 10 + i))
            .chain(offsets.iter().map(|&o| (2, 1000 + u64::from(o))))
            .chain((0..80).map(|i| (1, 130 + i)))
            .collect();
        // Parts that do not line up with the runs.
        let parts = [&events[..50], &events[50..250], &events[250..]];
        for (body_max, events_max) in [(1 << 20, 64), (700, 1000), (2000, 37), (BODY_HEAD_BYTES + RUN_BYTES + 37, 9)] {
            let splits = frame_splits::<HuntEvent>(&runs, true, body_max, events_max);
            assert_eq!(splits.last(), Some(&300));
            let (mut got, mut from) = (Vec::new(), 0);
            for &to in &splits {
                let mut out = Vec::new();
                let (r, p) = (runs_between(&runs, from, to), parts_between(&parts, from, to));
                encode_frame_parts(7, 7, &r, &p, Some(5), &mut out);
                let (len, crc) = decode_frame_head(&out).unwrap();
                assert!(len <= body_max, "{len} > {body_max}");
                let body = decode_body::<HuntEvent>(&out[16..], crc).unwrap();
                assert!(body.count <= events_max && body.count == to - from && to > from);
                for (e, want_event) in body.entries::<HuntEvent>().zip(&events[from..to]) {
                    assert_eq!(e.stamped, *want_event);
                    got.push((e.producer, e.producer_seq));
                }
                from = to;
            }
            assert_eq!(got, want, "limits {body_max}, {events_max}");
        }
    }

    #[test]
    fn policies_parse_and_print() {
        for s in ["group", "always", "never", "interval=5", "interval=1", "interval=60000"] {
            assert_eq!(s.parse::<FsyncPolicy>().unwrap().to_string(), s);
        }
        assert_eq!("group".parse::<FsyncPolicy>(), Ok(FsyncPolicy::Group));
        assert_eq!(FsyncPolicy::default(), FsyncPolicy::Group);
        for bad in [
            "",
            "sometimes",
            "Group",
            "group=5",
            " group",
            "groups",
            "interval=",
            "interval=0",
            "interval=x",
            "interval=999999",
        ] {
            assert!(bad.parse::<FsyncPolicy>().is_err(), "{bad}");
        }
    }
}
