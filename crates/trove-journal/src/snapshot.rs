//! Snapshot files: a shard's whole state at a batch boundary.
//!
//! | offset | size | field |
//! |---:|---:|---|
//! | 0 | 8 | magic `TROVESNP` |
//! | 8 | 4 | format version (3; 1 and 2 are still read) |
//! | 12 | 4 | shard index |
//! | 16 | 8 | next batch: the snapshot holds every batch before it |
//! | 24 | 8 | highest engine time applied, µs |
//! | 32 | 4 | world count w |
//! | 36 | 4 | producer count p |
//! | 40 | 8 | zero |
//! | 48 | .. | w worlds: world id u32, length u32, the game's encoding |
//! | .. | .. | p producers (below) |
//! | end - 4 | 4 | CRC32C of every byte before it |
//!
//! A producer, in version 3: id u64, last applied sequence u64, the
//! number n of recent outcomes kept u32, their sequences' form u32 (0:
//! `first, first + 1, ...`; 1: n u32 offsets from `first` follow),
//! `first` u64, the offsets if any, the outcome bytes' length u32, n
//! outcomes in the game's storage form (`Game::store_outcome`), then the
//! number m (at most n) of fingerprints u32 and m u32 fingerprints
//! (`trove_core::record_fingerprint`) of the newest m kept outcomes'
//! events. Version 2 has no m and no fingerprints (none known); in
//! version 1 a producer is only its id and last sequence (16 bytes).
//!
//! Written to `snapshot-<next batch>.tsnap.tmp`, synced, renamed, and the
//! directory synced: a snapshot file is complete or absent.

use std::path::{Path, PathBuf};

use crate::planted::{Planted, on as planted};
use crate::storage::{FsStorage, Storage};
use trove_core::DecodeError;

const MAGIC: &[u8; 8] = b"TROVESNP";
const VERSION: u32 = 3;
const HEAD_BYTES: usize = 48;

pub fn snapshot_name(next_batch: u64) -> String {
    format!("snapshot-{next_batch:020}.tsnap")
}

/// What a snapshot holds besides the worlds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SnapshotMeta {
    pub shard: u32,
    pub next_batch: u64,
    pub last_time_us: u64,
}

/// One producer's part of a snapshot: its last applied sequence and the
/// outcomes of its most recent events, which answer its retries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotProducer<'a> {
    pub id: u64,
    pub last_seq: u64,
    /// The sequence of the first kept outcome (0 if none is kept).
    pub first_seq: u64,
    /// Sequence offsets from `first_seq`, one per kept outcome, strictly
    /// increasing from 0; `None`: `0, 1, ...`.
    pub offsets: Option<Vec<u32>>,
    /// How many outcomes are kept.
    pub kept: u32,
    /// The `kept` outcomes in the game's storage form.
    pub outcomes: &'a [u8],
    /// The fingerprints of the newest `fingerprints.len()` (at most
    /// `kept`) outcomes' events; the older ones have none known.
    pub fingerprints: Vec<u32>,
}

/// A decoded snapshot, borrowing the worlds' and outcomes' bytes.
#[derive(Debug)]
pub struct Snapshot<'a> {
    pub meta: SnapshotMeta,
    pub worlds: Vec<(u32, &'a [u8])>,
    pub producers: Vec<SnapshotProducer<'a>>,
}

/// The file a shard builds: `add` each world and `add_producer` each
/// producer (both in ascending id order), then `finish`.
#[derive(Debug, Default)]
pub struct SnapshotBuilder {
    worlds: Vec<u8>,
    world_count: u32,
    producers: Vec<u8>,
    producer_count: u32,
    scratch: Vec<u8>,
}

impl SnapshotBuilder {
    /// Adds a world; `encode` appends its bytes to the buffer it is given.
    pub fn add(&mut self, id: u32, encode: impl FnOnce(&mut Vec<u8>)) {
        self.scratch.clear();
        encode(&mut self.scratch);
        self.worlds.extend_from_slice(&id.to_le_bytes());
        self.worlds.extend_from_slice(&(self.scratch.len() as u32).to_le_bytes());
        self.worlds.extend_from_slice(&self.scratch);
        self.world_count += 1;
    }

    /// Adds a producer. `kept` outcomes, their bytes appended by `encode`,
    /// have the sequences `first_seq + offsets[i]` (`first_seq + i`
    /// without offsets); `fingerprints` are the newest ones' events'.
    ///
    /// # Panics
    /// If `offsets` has other than `kept` entries, or `fingerprints` more.
    #[allow(clippy::too_many_arguments)]
    pub fn add_producer(
        &mut self,
        id: u64,
        last_seq: u64,
        first_seq: u64,
        offsets: Option<&[u32]>,
        kept: u32,
        fingerprints: &[u32],
        encode: impl FnOnce(&mut Vec<u8>),
    ) {
        assert!(offsets.is_none_or(|o| o.len() == kept as usize), "one offset per kept outcome");
        assert!(fingerprints.len() <= kept as usize, "at most one fingerprint per kept outcome");
        let p = &mut self.producers;
        p.extend_from_slice(&id.to_le_bytes());
        p.extend_from_slice(&last_seq.to_le_bytes());
        p.extend_from_slice(&kept.to_le_bytes());
        p.extend_from_slice(&u32::from(offsets.is_some()).to_le_bytes());
        p.extend_from_slice(&first_seq.to_le_bytes());
        for o in offsets.unwrap_or_default() {
            p.extend_from_slice(&o.to_le_bytes());
        }
        self.scratch.clear();
        encode(&mut self.scratch);
        p.extend_from_slice(&(self.scratch.len() as u32).to_le_bytes());
        p.extend_from_slice(&self.scratch);
        p.extend_from_slice(&(fingerprints.len() as u32).to_le_bytes());
        for f in fingerprints {
            p.extend_from_slice(&f.to_le_bytes());
        }
        self.producer_count += 1;
    }

    /// The whole file's bytes.
    pub fn finish(self, meta: SnapshotMeta) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEAD_BYTES + self.worlds.len() + self.producers.len() + 4);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(&meta.shard.to_le_bytes());
        out.extend_from_slice(&meta.next_batch.to_le_bytes());
        out.extend_from_slice(&meta.last_time_us.to_le_bytes());
        out.extend_from_slice(&self.world_count.to_le_bytes());
        out.extend_from_slice(&self.producer_count.to_le_bytes());
        out.extend_from_slice(&[0; 8]);
        out.extend_from_slice(&self.worlds);
        out.extend_from_slice(&self.producers);
        let crc = crc32c::crc32c(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }
}

/// Why a snapshot file's bytes were refused. Start-up never uses a snapshot
/// it refuses: it reports the file as damaged.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SnapshotError {
    #[error("shorter than a snapshot header")]
    Short,
    #[error("checksum mismatch")]
    Checksum,
    #[error("bad magic")]
    Magic,
    #[error("unsupported snapshot version {0}")]
    Version(u32),
    /// The checksum holds but the content does not decode (a bug in the
    /// writer, or damage the checksum missed).
    #[error(transparent)]
    Content(#[from] DecodeError),
}

/// Checks and splits a snapshot file's bytes (version 1, 2 or 3).
pub fn decode_snapshot(bytes: &[u8]) -> Result<Snapshot<'_>, SnapshotError> {
    if bytes.len() < HEAD_BYTES + 4 {
        return Err(SnapshotError::Short);
    }
    let (content, crc) = bytes.split_at(bytes.len() - 4);
    if crc32c::crc32c(content) != u32::from_le_bytes(crc.try_into().expect("4 bytes")) {
        return Err(SnapshotError::Checksum);
    }
    let mut r = trove_core::Reader::new(content);
    if r.take(8)? != MAGIC {
        return Err(SnapshotError::Magic);
    }
    let version = r.u32()?;
    if !(1..=VERSION).contains(&version) {
        return Err(SnapshotError::Version(version));
    }
    let meta = SnapshotMeta { shard: r.u32()?, next_batch: r.u64()?, last_time_us: r.u64()? };
    let world_count = r.u32()? as usize;
    let producer_count = r.u32()? as usize;
    r.take(8)?;
    if world_count > r.remaining() / 8 || producer_count > r.remaining() / 16 {
        return Err(DecodeError::from(format!("{world_count} worlds and {producer_count} producers cannot fit")).into());
    }
    let mut worlds = Vec::with_capacity(world_count);
    for _ in 0..world_count {
        let id = r.u32()?;
        let len = r.u32()? as usize;
        worlds.push((id, r.take(len)?));
    }
    let mut producers = Vec::with_capacity(producer_count);
    for _ in 0..producer_count {
        let (id, last_seq) = (r.u64()?, r.u64()?);
        if version == 1 {
            let fingerprints = Vec::new();
            producers.push(SnapshotProducer {
                id,
                last_seq,
                first_seq: 0,
                offsets: None,
                kept: 0,
                outcomes: &[],
                fingerprints,
            });
            continue;
        }
        let producer =
            decode_producer(&mut r, version, id, last_seq).map_err(|e| e.within(format_args!("producer {id}")))?;
        producers.push(producer);
    }
    r.finish()?;
    if producers.windows(2).any(|w| w[0].id >= w[1].id) {
        return Err(DecodeError::from("producers out of order").into());
    }
    Ok(Snapshot { meta, worlds, producers })
}

/// The rest of a version-2 or -3 producer after its id and last sequence.
fn decode_producer<'a>(
    r: &mut trove_core::Reader<'a>,
    version: u32,
    id: u64,
    last_seq: u64,
) -> Result<SnapshotProducer<'a>, DecodeError> {
    let kept = r.u32()?;
    let form = r.u32()?;
    let first_seq = r.u64()?;
    let offsets = match form {
        0 => None,
        1 => {
            let bytes = r.take((kept as usize).checked_mul(4).ok_or("too many offsets")?)?;
            let offsets: Vec<u32> =
                bytes.chunks_exact(4).map(|c| u32::from_le_bytes(c.try_into().expect("4 bytes"))).collect();
            if offsets.first().is_some_and(|&o| o != 0) || offsets.windows(2).any(|w| w[0] >= w[1]) {
                return Err("offsets do not increase from 0".into());
            }
            Some(offsets)
        }
        _ => return Err(format!("unknown sequence form {form}").into()),
    };
    let span = offsets.as_ref().and_then(|o| o.last()).map_or(u64::from(kept.saturating_sub(1)), |&o| u64::from(o));
    if kept > 0 && first_seq.checked_add(span).is_none_or(|last| last > last_seq) {
        return Err(format!("kept outcomes reach past the last sequence {last_seq}").into());
    }
    let len = r.u32()? as usize;
    let outcomes = r.take(len)?;
    if kept as usize > len {
        return Err(format!("{kept} outcomes in {len} bytes").into());
    }
    let mut fingerprints = Vec::new();
    if version >= 3 {
        let m = r.u32()?;
        if m > kept {
            return Err(format!("{m} fingerprints for {kept} outcomes").into());
        }
        let bytes = r.take(m as usize * 4)?;
        fingerprints = bytes.chunks_exact(4).map(|c| u32::from_le_bytes(c.try_into().expect("4 bytes"))).collect();
    }
    Ok(SnapshotProducer { id, last_seq, first_seq, offsets, kept, outcomes, fingerprints })
}

/// Writes a snapshot durably: temporary file, fsync, rename, directory fsync.
pub fn write_snapshot(dir: &Path, next_batch: u64, bytes: &[u8]) -> std::io::Result<PathBuf> {
    write_snapshot_in(&FsStorage, dir, next_batch, bytes)
}

/// `write_snapshot` on `storage`.
pub fn write_snapshot_in(storage: &dyn Storage, dir: &Path, next_batch: u64, bytes: &[u8]) -> std::io::Result<PathBuf> {
    let path = dir.join(snapshot_name(next_batch));
    let tmp = dir.join(format!("{}.tmp", snapshot_name(next_batch)));
    let mut f = storage.create(&tmp, false)?;
    f.write_at(bytes, 0)?;
    f.sync_all()?;
    drop(f);
    storage.rename(&tmp, &path)?;
    storage.sync_dir(dir)?;
    Ok(path)
}

/// Reads a snapshot file whole (`decode_snapshot` checks it).
pub fn read_snapshot_in(storage: &dyn Storage, path: &Path, bytes_max: u64) -> std::io::Result<Vec<u8>> {
    storage.read(path, bytes_max)
}

/// The snapshot files of a shard directory, oldest first, and the leftover
/// temporary files of snapshots that were being written at a crash.
pub fn list_snapshots(dir: &Path) -> std::io::Result<(Vec<PathBuf>, Vec<PathBuf>)> {
    list_snapshots_in(&FsStorage, dir)
}

/// `list_snapshots` on `storage`.
pub fn list_snapshots_in(storage: &dyn Storage, dir: &Path) -> std::io::Result<(Vec<PathBuf>, Vec<PathBuf>)> {
    let (mut done, mut tmp) = (Vec::new(), Vec::new());
    if !storage.exists(dir) {
        return Ok((done, tmp));
    }
    for path in storage.list(dir)? {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name.starts_with("snapshot-") {
            if name.ends_with(".tsnap") {
                done.push(path);
            } else if name.ends_with(".tsnap.tmp") {
                tmp.push(path);
            }
        }
    }
    done.sort();
    Ok((done, tmp))
}

/// Removes what a durable snapshot at `next_batch` makes unnecessary:
/// older snapshots and every segment that holds only earlier batches (all
/// but the last segment starting at or before `next_batch`). Returns what
/// was removed.
pub fn remove_covered(dir: &Path, next_batch: u64) -> std::io::Result<Vec<PathBuf>> {
    remove_covered_in(&FsStorage, dir, next_batch)
}

/// `remove_covered` on `storage`.
pub fn remove_covered_in(storage: &dyn Storage, dir: &Path, next_batch: u64) -> std::io::Result<Vec<PathBuf>> {
    let mut removed = Vec::new();
    let (snapshots, _) = list_snapshots_in(storage, dir)?;
    for s in snapshots {
        if s.file_name().and_then(|n| n.to_str()) < Some(&snapshot_name(next_batch)) {
            storage.remove(&s)?;
            removed.push(s);
        }
    }
    let segments = crate::segment::list_segments_in(storage, dir)?;
    let mut keep_from = crate::segment::covered_segments(&segments, next_batch);
    if planted(Planted::KeepCovered) {
        keep_from = 0;
    } else if planted(Planted::RemoveUncovered) {
        keep_from = (keep_from + 1).min(segments.len());
    }
    for s in &segments[..keep_from] {
        storage.remove(s)?;
        removed.push(s.clone());
    }
    if !removed.is_empty() {
        storage.sync_dir(dir)?;
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A producer whose outcomes are all forgotten: only its last sequence
    /// is kept.
    fn producer_keeping_nothing(id: u64, last_seq: u64) -> SnapshotProducer<'static> {
        SnapshotProducer { id, last_seq, first_seq: 0, offsets: None, kept: 0, outcomes: &[], fingerprints: Vec::new() }
    }

    #[test]
    fn round_trips_and_rejects_damage() {
        let mut b = SnapshotBuilder::default();
        b.add(7, |out| out.extend_from_slice(b"seven"));
        b.add(9, |_| {});
        b.add_producer(5, 10, 0, None, 0, &[], |_| {});
        b.add_producer(6, 40, 30, Some(&[0, 2, 10]), 3, &[0xdead_beef, 7], |out| out.extend_from_slice(b"abc"));
        b.add_producer(8, 12, 11, None, 2, &[], |out| out.extend_from_slice(b"xy"));
        let meta = SnapshotMeta { shard: 1, next_batch: 44, last_time_us: 99 };
        let bytes = b.finish(meta);
        let s = decode_snapshot(&bytes).unwrap();
        assert_eq!(s.meta, meta);
        assert_eq!(s.worlds, vec![(7, &b"seven"[..]), (9, &b""[..])]);
        let none = producer_keeping_nothing(5, 10);
        assert_eq!(s.producers[0], none);
        let split = SnapshotProducer {
            id: 6,
            last_seq: 40,
            first_seq: 30,
            offsets: Some(vec![0, 2, 10]),
            kept: 3,
            outcomes: b"abc",
            fingerprints: vec![0xdead_beef, 7],
        };
        assert_eq!(s.producers[1], split);
        assert_eq!((s.producers[2].first_seq, s.producers[2].kept, s.producers[2].outcomes), (11, 2, &b"xy"[..]));
        assert!(s.producers[2].fingerprints.is_empty());
        for i in 0..bytes.len() {
            let mut d = bytes.clone();
            d[i] ^= 4;
            assert!(decode_snapshot(&d).is_err(), "byte {i}");
            assert!(decode_snapshot(&bytes[..i]).is_err(), "prefix {i}");
        }
    }

    /// Rewrites a snapshot's content (the CRC made right again), as damage
    /// that a CRC cannot catch: a writer's bug or a hand edit.
    fn with_crc(mut content: Vec<u8>) -> Vec<u8> {
        let crc = crc32c::crc32c(&content);
        content.extend_from_slice(&crc.to_le_bytes());
        content
    }

    #[test]
    fn impossible_producers_are_refused_even_with_a_valid_checksum() {
        let meta = SnapshotMeta { shard: 0, next_batch: 2, last_time_us: 0 };
        let build = |offsets: Option<&[u32]>, kept: u32, last_seq: u64, outcomes: &[u8]| {
            let mut b = SnapshotBuilder::default();
            b.add_producer(1, last_seq, 10, offsets, kept, &[], |out| out.extend_from_slice(outcomes));
            b.finish(meta)
        };
        assert!(decode_snapshot(&build(Some(&[0, 3]), 2, 13, b"ab")).is_ok());
        let refused = [
            (build(Some(&[1, 3]), 2, 13, b"ab"), "increase from 0"),
            (build(Some(&[0, 3, 3]), 3, 13, b"abc"), "increase from 0"),
            (build(Some(&[0, 3]), 2, 12, b"ab"), "past the last sequence"),
            (build(None, 4, 12, b"abcd"), "past the last sequence"),
            (build(None, 3, 20, b"ab"), "3 outcomes in 2 bytes"),
        ];
        for (bytes, why) in refused {
            let err = decode_snapshot(&bytes).unwrap_err();
            assert!(err.to_string().contains(why), "{err}");
        }
        // An unknown form, and producers out of order.
        let mut content = build(None, 0, 5, b"").split_last_chunk::<4>().unwrap().0.to_vec();
        content[HEAD_BYTES + 20] = 2;
        assert!(decode_snapshot(&with_crc(content)).unwrap_err().to_string().contains("form"));
        // More fingerprints than outcomes: the count is the last u32 before
        // the fingerprints (here none) and the CRC.
        let mut content = build(None, 2, 12, b"ab").split_last_chunk::<4>().unwrap().0.to_vec();
        let at = content.len() - 4;
        content[at] = 3;
        content.extend_from_slice(&[0; 12]);
        assert!(decode_snapshot(&with_crc(content)).unwrap_err().to_string().contains("3 fingerprints for 2 outcomes"));
        let mut b = SnapshotBuilder::default();
        b.add_producer(2, 1, 0, None, 0, &[], |_| {});
        b.add_producer(1, 1, 0, None, 0, &[], |_| {});
        assert!(decode_snapshot(&b.finish(meta)).unwrap_err().to_string().contains("out of order"));
    }

    #[test]
    fn version_1_snapshots_are_still_read() {
        let mut content = Vec::new();
        content.extend_from_slice(MAGIC);
        content.extend_from_slice(&1u32.to_le_bytes());
        content.extend_from_slice(&3u32.to_le_bytes()); // shard
        content.extend_from_slice(&44u64.to_le_bytes());
        content.extend_from_slice(&99u64.to_le_bytes());
        content.extend_from_slice(&1u32.to_le_bytes()); // worlds
        content.extend_from_slice(&1u32.to_le_bytes()); // producers
        content.extend_from_slice(&[0; 8]);
        content.extend_from_slice(&7u32.to_le_bytes());
        content.extend_from_slice(&2u32.to_le_bytes());
        content.extend_from_slice(b"hi");
        content.extend_from_slice(&5u64.to_le_bytes());
        content.extend_from_slice(&10u64.to_le_bytes());
        let bytes = with_crc(content);
        let s = decode_snapshot(&bytes).unwrap();
        assert_eq!(s.meta, SnapshotMeta { shard: 3, next_batch: 44, last_time_us: 99 });
        assert_eq!(s.worlds, vec![(7, &b"hi"[..])]);
        let p = producer_keeping_nothing(5, 10);
        assert_eq!(s.producers, vec![p]);
    }

    /// A version-3 file without the fingerprint counts: what version 2
    /// wrote.
    fn as_version_2(v3: &[u8]) -> Vec<u8> {
        let s = decode_snapshot(v3).unwrap();
        let mut content = v3[..HEAD_BYTES].to_vec();
        content[8..12].copy_from_slice(&2u32.to_le_bytes());
        for (id, w) in &s.worlds {
            content.extend_from_slice(&id.to_le_bytes());
            content.extend_from_slice(&(w.len() as u32).to_le_bytes());
            content.extend_from_slice(w);
        }
        for p in &s.producers {
            assert!(p.fingerprints.is_empty(), "version 2 kept none");
            content.extend_from_slice(&p.id.to_le_bytes());
            content.extend_from_slice(&p.last_seq.to_le_bytes());
            content.extend_from_slice(&p.kept.to_le_bytes());
            content.extend_from_slice(&u32::from(p.offsets.is_some()).to_le_bytes());
            content.extend_from_slice(&p.first_seq.to_le_bytes());
            for o in p.offsets.as_deref().unwrap_or_default() {
                content.extend_from_slice(&o.to_le_bytes());
            }
            content.extend_from_slice(&(p.outcomes.len() as u32).to_le_bytes());
            content.extend_from_slice(p.outcomes);
        }
        with_crc(content)
    }

    #[test]
    fn version_2_snapshots_are_still_read_without_fingerprints() {
        let mut b = SnapshotBuilder::default();
        b.add(7, |out| out.extend_from_slice(b"seven"));
        b.add_producer(6, 40, 30, Some(&[0, 2, 10]), 3, &[], |out| out.extend_from_slice(b"abc"));
        b.add_producer(8, 12, 11, None, 2, &[], |out| out.extend_from_slice(b"xy"));
        let meta = SnapshotMeta { shard: 1, next_batch: 44, last_time_us: 99 };
        let v3 = b.finish(meta);
        let v2 = as_version_2(&v3);
        assert_eq!(u32::from_le_bytes(v2[8..12].try_into().unwrap()), 2);
        assert_eq!(v2.len(), v3.len() - 2 * 4, "a fingerprint count per producer less");
        let (s2, s3) = (decode_snapshot(&v2).unwrap(), decode_snapshot(&v3).unwrap());
        assert_eq!((s2.meta, &s2.worlds, &s2.producers), (s3.meta, &s3.worlds, &s3.producers));
    }
}
