//! The snapshot reader on arbitrary files: `decode_snapshot`, then the
//! start-up path that loads the newest snapshot into the game's state
//! (worlds, producers' kept outcomes) before the journal, as `trove
//! journal verify` runs it.
//!
//! Input: a mode byte, then the file. Mode bit 0: make the trailing CRC
//! valid again after the fuzzer's mutation.
//!
//! Whatever the bytes: no panic, errors as messages, no file changed, and
//! a snapshot that decodes re-encodes (`SnapshotBuilder`) to one that
//! decodes the same.
#![no_main]

mod common;

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use trove_hunt::TreasureHunt;
use trove_journal::shard_dir;
use trove_journal::snapshot::{SnapshotBuilder, decode_snapshot, snapshot_name};
use trove_shard::journaled::replay;

static DIR: OnceLock<std::path::PathBuf> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    let mut bytes = rest.to_vec();
    if mode & 1 != 0 {
        common::reseal_snapshot(&mut bytes);
    }
    let decoded = decode_snapshot(&bytes);
    let next_batch = match &decoded {
        Ok(s) => {
            let mut b = SnapshotBuilder::default();
            for &(id, world) in &s.worlds {
                b.add(id, |out| out.extend_from_slice(world));
            }
            for p in &s.producers {
                let fingerprints = &p.fingerprints;
                b.add_producer(p.id, p.last_seq, p.first_seq, p.offsets.as_deref(), p.kept, fingerprints, |out| {
                    out.extend_from_slice(p.outcomes)
                });
            }
            let again = b.finish(s.meta);
            let d = decode_snapshot(&again).expect("a re-encoded snapshot decodes");
            assert_eq!((d.meta, &d.worlds, &d.producers), (s.meta, &s.worlds, &s.producers));
            s.meta.next_batch
        }
        Err(_) => 1,
    };

    let dir = DIR.get_or_init(|| common::fresh_data_dir("snapshot"));
    let shard = shard_dir(dir, 0);
    let _ = std::fs::remove_dir_all(&shard);
    std::fs::create_dir_all(&shard).expect("shard dir");
    std::fs::write(shard.join(snapshot_name(next_batch)), &bytes).expect("write snapshot");
    let before = common::files(dir);
    let loaded = replay::<TreasureHunt>(dir, |_, _, _| {});
    assert!(common::files(dir) == before, "verify changed the data directory");
    if decoded.is_err() {
        assert!(loaded.is_err(), "a snapshot that does not decode was loaded");
    }
});
