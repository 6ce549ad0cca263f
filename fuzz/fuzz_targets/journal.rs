//! The journal's start-up path on arbitrary segment files: what `trove
//! serve` does with a data directory (recover: read every segment, cut a
//! torn tail (by opening the writer there), or with `--repair` cut at
//! corruption) and what `trove
//! journal verify` does (replay through the game without writing).
//!
//! Input: a mode byte, then the segment's bytes. Mode bit 0: make the
//! CRCs valid again after the fuzzer's mutation (else nearly every
//! mutation stops at a checksum); bit 1: `--repair`; bit 2: split the bytes
//! into two segments at the offset in the next two bytes.
//!
//! Whatever the bytes: no panic, every error typed (`JournalError`, or
//! the replay's message), verify changes no file, and once start-up has
//! recovered a journal, a second start-up finds nothing to repair and the
//! same events, and verify reads exactly those.
#![no_main]

mod common;

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use trove_hunt::{HuntEvent, TreasureHunt};
use trove_journal::format::decode_segment_header;
use trove_journal::segment::segment_name;
use trove_journal::{JournalWriter, RecoverOptions, WriteIo, recover_shard, shard_dir};
use trove_shard::journaled::replay;

static DIR: OnceLock<std::path::PathBuf> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    let (reseal, repair, split) = (mode & 1 != 0, mode & 2 != 0, mode & 4 != 0);
    let dir = DIR.get_or_init(|| common::fresh_data_dir("journal"));
    let shard = shard_dir(dir, 0);
    let _ = std::fs::remove_dir_all(&shard);
    std::fs::create_dir_all(&shard).expect("shard dir");

    let mut segments: Vec<Vec<u8>> = if split && rest.len() >= 2 {
        let at = usize::from(u16::from_le_bytes([rest[0], rest[1]])) % (rest.len() - 1);
        let (a, b) = rest[2..].split_at(at.min(rest.len() - 2));
        vec![a.to_vec(), b.to_vec()]
    } else {
        vec![rest.to_vec()]
    };
    for (i, s) in segments.iter_mut().enumerate() {
        if reseal {
            common::reseal_segment(s);
        }
        // Named as the writer names them, by their first batch; a file
        // without a readable header gets its position's name.
        let first = decode_segment_header(s).map_or(i as u64 + 1, |h| h.first_batch);
        let mut path = shard.join(segment_name(first));
        if path.exists() {
            path = shard.join(segment_name(first.wrapping_add(1 + i as u64)));
        }
        std::fs::write(path, &s).expect("write segment");
    }

    // Verify: read-only, whatever it finds.
    let before = common::files(dir);
    let verified = replay::<TreasureHunt>(dir, |_, _, _| {});
    assert!(common::files(dir) == before, "verify changed the data directory");

    // Start-up.
    let options = RecoverOptions { truncate_torn_tail: true, repair, segment_bytes_max: 1 << 26, skip_below: 0 };
    let mut applied = 0u64;
    let first = recover_shard::<HuntEvent>(&shard, 0, options, |_, entries| applied += entries.len() as u64);
    let Ok(first) = first else { return };
    assert_eq!(applied, first.events);
    // Start-up then opens the writer where recovery ended, which cuts a
    // torn tail (recovery leaves the cut to it, after its note).
    let tail = first.tail.clone();
    JournalWriter::open(&shard, 0, 32, first.next_batch, tail, 1 << 26, WriteIo::Buffered)
        .unwrap_or_else(|e| panic!("start-up cannot open the journal it recovered: {e} ({:?})", first.notes));
    if let Ok(v) = &verified {
        // Verify found no corruption: start-up cut at most a torn tail,
        // which verify skipped too.
        assert_eq!(v.events, first.events, "verify and start-up disagree: {:?} / {:?}", v.notes, first.notes);
    }
    let again = recover_shard::<HuntEvent>(&shard, 0, options, |_, _| {})
        .unwrap_or_else(|e| panic!("a recovered journal fails to recover again: {e} (first: {:?})", first.notes));
    assert!(again.notes.is_empty(), "a second start-up repairs again: {:?} after {:?}", again.notes, first.notes);
    assert_eq!((again.batches, again.events, again.next_batch), (first.batches, first.events, first.next_batch));
    let v = replay::<TreasureHunt>(dir, |_, _, _| {})
        .unwrap_or_else(|e| panic!("verify refuses a journal start-up recovered: {e} (first: {:?})", first.notes));
    assert_eq!(v.events, first.events);
});
