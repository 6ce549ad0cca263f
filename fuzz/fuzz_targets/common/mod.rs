//! What the file-reading targets share: a scratch data directory and a
//! way to make mutated bytes checksum-valid again, so that the fuzzer's
//! mutations reach the decoders behind the CRCs instead of stopping there.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use trove_core::{Game, Record};
use trove_hunt::TreasureHunt;
use trove_journal::format::{FRAME_HEAD_BYTES, FRAME_MAGIC, SEGMENT_HEADER_BYTES, SEGMENT_MAGIC};

/// Worlds the scratch journal allows: replaying hostile creates must not
/// build thousands of maps.
pub const WORLDS_MAX: usize = 8;

/// A data directory for this process (`/dev/shm` when there is one: the
/// targets write files on every input), with a one-shard meta file and an
/// empty `shard-000`.
pub fn fresh_data_dir(target: &str) -> PathBuf {
    let base = if Path::new("/dev/shm").is_dir() { PathBuf::from("/dev/shm") } else { std::env::temp_dir() };
    // Those of earlier runs whose process is gone.
    let prefix = format!("trove-fuzz-{target}-");
    for e in std::fs::read_dir(&base).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(pid) = name.strip_prefix(&prefix) {
            if !Path::new("/proc").join(pid).exists() {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
    let dir = base.join(format!("{prefix}{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(trove_journal::shard_dir(&dir, 0)).expect("scratch directory");
    let meta = format!(
        "format=4\ngame={}\nrecord_size={}\nshards=1\nworlds_max={WORLDS_MAX}\n",
        TreasureHunt::NAME,
        <TreasureHunt as Game>::Event::SIZE
    );
    // Format 4's meta ends in a CRC32C of its other lines.
    let meta = format!("{meta}check={:08x}\n", crc32c::crc32c(meta.as_bytes()));
    std::fs::write(dir.join("trove.meta"), meta).expect("meta file");
    dir
}

/// Every file under `dir` with its bytes, sorted: to check that a
/// read-only path changed nothing.
pub fn files(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("read scratch dir") {
            let p = e.expect("dir entry").path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let bytes = std::fs::read(&p).expect("read scratch file");
                out.push((p, bytes));
            }
        }
    }
    out.sort();
    out
}

/// Rewrites the segment header's CRC and, frame by frame while the heads
/// still chain, each frame's body and head CRCs.
pub fn reseal_segment(b: &mut [u8]) {
    if b.len() >= SEGMENT_HEADER_BYTES && &b[..8] == SEGMENT_MAGIC {
        let crc = crc32c::crc32c(&b[..60]);
        b[60..64].copy_from_slice(&crc.to_le_bytes());
    }
    let mut at = SEGMENT_HEADER_BYTES;
    while at + FRAME_HEAD_BYTES <= b.len() && &b[at..at + 4] == FRAME_MAGIC {
        let len = u32::from_le_bytes(b[at + 4..at + 8].try_into().expect("4 bytes")) as usize;
        let Some(end) = (at + FRAME_HEAD_BYTES).checked_add(len).filter(|&e| e <= b.len()) else { break };
        let body = crc32c::crc32c(&b[at + FRAME_HEAD_BYTES..end]);
        b[at + 8..at + 12].copy_from_slice(&body.to_le_bytes());
        let head = crc32c::crc32c(&b[at..at + 12]);
        b[at + 12..at + 16].copy_from_slice(&head.to_le_bytes());
        at = end;
    }
}

/// Rewrites a snapshot's trailing CRC.
pub fn reseal_snapshot(b: &mut [u8]) {
    if b.len() >= 4 {
        let n = b.len() - 4;
        let crc = crc32c::crc32c(&b[..n]);
        b[n..].copy_from_slice(&crc.to_le_bytes());
    }
}
