//! Snapshot files: a shard's whole state at a batch boundary.
//!
//! | offset | size | field |
//! |---:|---:|---|
//! | 0 | 8 | magic `TROVESNP` |
//! | 8 | 4 | format version (1) |
//! | 12 | 4 | shard index |
//! | 16 | 8 | next batch: the snapshot holds every batch before it |
//! | 24 | 8 | highest engine time applied, µs |
//! | 32 | 4 | world count w |
//! | 36 | 4 | producer count p |
//! | 40 | 8 | zero |
//! | 48 | .. | w worlds: world id u32, length u32, the game's encoding |
//! | .. | 16 p | p producers: id u64, last applied sequence u64 |
//! | end - 4 | 4 | CRC32C of every byte before it |
//!
//! Written to `snapshot-<next batch>.tsnap.tmp`, synced, renamed, and the
//! directory synced: a snapshot file is complete or absent.

use std::io::Write;
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 8] = b"TROVESNP";
const VERSION: u32 = 1;
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

/// A decoded snapshot, borrowing the worlds' bytes.
#[derive(Debug)]
pub struct Snapshot<'a> {
    pub meta: SnapshotMeta,
    pub worlds: Vec<(u32, &'a [u8])>,
    pub producers: Vec<(u64, u64)>,
}

/// The world section a shard builds: `add` each world, then `finish`.
#[derive(Debug, Default)]
pub struct SnapshotBuilder {
    worlds: Vec<u8>,
    world_count: u32,
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

    /// The whole file's bytes.
    pub fn finish(self, meta: SnapshotMeta, producers: &[(u64, u64)]) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEAD_BYTES + self.worlds.len() + 16 * producers.len() + 4);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(&meta.shard.to_le_bytes());
        out.extend_from_slice(&meta.next_batch.to_le_bytes());
        out.extend_from_slice(&meta.last_time_us.to_le_bytes());
        out.extend_from_slice(&self.world_count.to_le_bytes());
        out.extend_from_slice(&(producers.len() as u32).to_le_bytes());
        out.extend_from_slice(&[0; 8]);
        out.extend_from_slice(&self.worlds);
        for (id, seq) in producers {
            out.extend_from_slice(&id.to_le_bytes());
            out.extend_from_slice(&seq.to_le_bytes());
        }
        let crc = crc32c::crc32c(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }
}

/// Checks and splits a snapshot file's bytes.
pub fn decode_snapshot(bytes: &[u8]) -> Result<Snapshot<'_>, String> {
    if bytes.len() < HEAD_BYTES + 4 {
        return Err("shorter than a snapshot header".into());
    }
    let (content, crc) = bytes.split_at(bytes.len() - 4);
    if crc32c::crc32c(content) != u32::from_le_bytes(crc.try_into().expect("4 bytes")) {
        return Err("checksum mismatch".into());
    }
    let mut r = trove_core::Reader::new(content);
    if r.take(8)? != MAGIC {
        return Err("bad magic".into());
    }
    let version = r.u32()?;
    if version != VERSION {
        return Err(format!("unsupported snapshot version {version}"));
    }
    let meta = SnapshotMeta { shard: r.u32()?, next_batch: r.u64()?, last_time_us: r.u64()? };
    let world_count = r.u32()? as usize;
    let producer_count = r.u32()? as usize;
    r.take(8)?;
    if world_count > r.remaining() / 8 || producer_count > r.remaining() / 16 {
        return Err(format!("{world_count} worlds and {producer_count} producers cannot fit"));
    }
    let mut worlds = Vec::with_capacity(world_count);
    for _ in 0..world_count {
        let id = r.u32()?;
        let len = r.u32()? as usize;
        worlds.push((id, r.take(len)?));
    }
    let producers = (0..producer_count).map(|_| Ok((r.u64()?, r.u64()?))).collect::<Result<_, String>>()?;
    r.finish()?;
    Ok(Snapshot { meta, worlds, producers })
}

/// Writes a snapshot durably: temporary file, fsync, rename, directory fsync.
pub fn write_snapshot(dir: &Path, next_batch: u64, bytes: &[u8]) -> std::io::Result<PathBuf> {
    let path = dir.join(snapshot_name(next_batch));
    let tmp = dir.join(format!("{}.tmp", snapshot_name(next_batch)));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, &path)?;
    std::fs::File::open(dir)?.sync_all()?;
    Ok(path)
}

/// The snapshot files of a shard directory, oldest first, and the leftover
/// temporary files of snapshots that were being written at a crash.
pub fn list_snapshots(dir: &Path) -> std::io::Result<(Vec<PathBuf>, Vec<PathBuf>)> {
    let (mut done, mut tmp) = (Vec::new(), Vec::new());
    if !dir.exists() {
        return Ok((done, tmp));
    }
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
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
    let mut removed = Vec::new();
    let (snapshots, _) = list_snapshots(dir)?;
    for s in snapshots {
        if s.file_name().and_then(|n| n.to_str()) < Some(&snapshot_name(next_batch)) {
            std::fs::remove_file(&s)?;
            removed.push(s);
        }
    }
    let segments = crate::segment::list_segments(dir)?;
    let keep_from = segments
        .iter()
        .rposition(|p| p.file_name().and_then(|n| n.to_str()) <= Some(&crate::segment::segment_name(next_batch)))
        .unwrap_or(0);
    for s in &segments[..keep_from] {
        std::fs::remove_file(s)?;
        removed.push(s.clone());
    }
    if !removed.is_empty() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_damage() {
        let mut b = SnapshotBuilder::default();
        b.add(7, |out| out.extend_from_slice(b"seven"));
        b.add(9, |_| {});
        let meta = SnapshotMeta { shard: 1, next_batch: 44, last_time_us: 99 };
        let bytes = b.finish(meta, &[(5, 10)]);
        let s = decode_snapshot(&bytes).unwrap();
        assert_eq!(s.meta, meta);
        assert_eq!(s.worlds, vec![(7, &b"seven"[..]), (9, &b""[..])]);
        assert_eq!(s.producers, vec![(5, 10)]);
        for i in 0..bytes.len() {
            let mut d = bytes.clone();
            d[i] ^= 4;
            assert!(decode_snapshot(&d).is_err(), "byte {i}");
            assert!(decode_snapshot(&bytes[..i]).is_err(), "prefix {i}");
        }
    }
}
