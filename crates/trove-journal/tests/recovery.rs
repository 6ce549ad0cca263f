//! Crash cases of docs/journal.md, on real files.

use std::path::Path;

use trove_bench::dev::TempDir;
use trove_core::Stamped;
use trove_hunt::HuntEvent;
use trove_journal::segment::list_segments;
use trove_journal::{Entry, JournalError, JournalWriter, RecoverOptions, WriteIo, recover_shard};

/// A test's own directory, removed when the test ends (a failing test's
/// too, as it unwinds).
fn temp_dir(name: &str) -> TempDir {
    TempDir::new(&format!("journal-{name}"))
}

fn batch(b: u64, n: u64) -> Vec<Entry<HuntEvent>> {
    (0..n)
        .map(|i| Entry {
            producer: 1,
            producer_seq: b * 100 + i,
            stamped: Stamped { time_us: b * 10 + i, event: HuntEvent::dig(b as u32, i as u32) },
        })
        .collect()
}

/// Writes `batches` batches of 3 events; returns the file sizes after each.
fn write(dir: &Path, batches: u64, segment_bytes_max: u64) -> Vec<u64> {
    let mut w = JournalWriter::open(dir, 0, 32, 1, None, segment_bytes_max, WriteIo::Buffered).unwrap();
    let mut sizes = Vec::new();
    for b in 1..=batches {
        assert_eq!(w.append_entries(&batch(b, 3)), b);
        w.flush().unwrap();
        w.sync().unwrap();
        sizes.push(std::fs::metadata(list_segments(dir).unwrap().last().unwrap()).unwrap().len());
    }
    sizes
}

fn opts(truncate: bool, repair: bool) -> RecoverOptions {
    RecoverOptions { truncate_torn_tail: truncate, repair, segment_bytes_max: 1 << 30, skip_below: 0 }
}

fn read_all(dir: &Path, o: RecoverOptions) -> Result<(Vec<u64>, trove_journal::Recovered), JournalError> {
    let mut seen = Vec::new();
    let r = recover_shard::<HuntEvent>(dir, 0, o, |b, entries| {
        assert_eq!(entries, batch(b, 3).as_slice());
        seen.push(b);
    })?;
    Ok((seen, r))
}

/// Start-up as the engine does it: recovery, then the writer opened where
/// it ended, which cuts a torn tail off (after recovery's note).
fn start_up(dir: &Path) -> Result<(Vec<u64>, trove_journal::Recovered), JournalError> {
    let (seen, r) = read_all(dir, opts(true, false))?;
    JournalWriter::open(dir, 0, 32, r.next_batch, r.tail.clone(), 1 << 20, WriteIo::Buffered).unwrap();
    Ok((seen, r))
}

#[test]
fn reads_back_what_was_written_across_segments() {
    let dir = temp_dir("roll");
    write(&dir, 20, 600); // a few frames per segment
    assert!(list_segments(&dir).unwrap().len() > 3);
    let (seen, r) = read_all(&dir, opts(true, false)).unwrap();
    assert_eq!(seen, (1..=20).collect::<Vec<_>>());
    assert_eq!((r.batches, r.events, r.next_batch), (20, 60, 21));
    assert!(r.notes.is_empty());
    // Appending resumes where recovery ended.
    let mut w = JournalWriter::open(&dir, 0, 32, r.next_batch, r.tail, 600, WriteIo::Buffered).unwrap();
    w.append_entries(&batch(21, 3));
    w.flush().unwrap();
    w.sync().unwrap();
    assert_eq!(read_all(&dir, opts(true, false)).unwrap().0.len(), 21);
}

#[test]
fn a_tail_torn_at_every_byte_recovers_the_valid_prefix() {
    let dir = temp_dir("torn");
    let sizes = write(&dir, 4, 1 << 20);
    let path = list_segments(&dir).unwrap()[0].clone();
    let full = std::fs::read(&path).unwrap();
    let last_start = sizes[2] as usize;
    for cut in last_start + 1..full.len() {
        std::fs::write(&path, &full[..cut]).unwrap();
        let (seen, r) = start_up(&dir).unwrap();
        assert_eq!(seen, vec![1, 2, 3], "cut at {cut}");
        assert_eq!(r.next_batch, 4);
        assert!(r.notes[0].contains("torn tail"), "{:?}", r.notes);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), last_start as u64, "truncated to the valid end");
    }
    // Zeros after the last frame (a file extended but never written) too.
    let mut zeros = full.clone();
    zeros.extend([0u8; 100]);
    std::fs::write(&path, &zeros).unwrap();
    assert_eq!(read_all(&dir, opts(true, false)).unwrap().0.len(), 4);
}

#[test]
fn read_only_recovery_leaves_a_torn_tail_in_place() {
    let dir = temp_dir("readonly");
    write(&dir, 3, 1 << 20);
    let path = list_segments(&dir).unwrap()[0].clone();
    let len = std::fs::metadata(&path).unwrap().len();
    std::fs::OpenOptions::new().write(true).open(&path).unwrap().set_len(len - 5).unwrap();
    let (seen, r) = read_all(&dir, opts(false, false)).unwrap();
    assert_eq!(seen, vec![1, 2]);
    assert!(r.notes[0].contains("unreadable"));
    assert_eq!(std::fs::metadata(&path).unwrap().len(), len - 5);
}

#[test]
fn a_flipped_bit_in_the_middle_stops_start_up_unless_repaired() {
    let dir = temp_dir("flip");
    let sizes = write(&dir, 5, 1 << 20);
    let path = list_segments(&dir).unwrap()[0].clone();
    let mut bytes = std::fs::read(&path).unwrap();
    let offset = sizes[1] as usize; // the third frame starts here
    bytes[offset + 40] ^= 0x10;
    std::fs::write(&path, &bytes).unwrap();
    match read_all(&dir, opts(true, false)) {
        Err(JournalError::Corrupt { path: p, offset: o, reason }) => {
            assert_eq!(p, path);
            assert_eq!(o, offset as u64);
            assert!(reason.contains("checksum"), "{reason}");
            let message = JournalError::Corrupt { path: p, offset: o, reason }.to_string();
            assert!(message.contains("--repair") && message.contains(&format!("byte {offset}")), "{message}");
        }
        other => panic!("expected corruption, got {other:?}"),
    }
    // Nothing was changed by the failed start.
    assert_eq!(std::fs::read(&path).unwrap(), bytes);
    let (seen, r) = read_all(&dir, opts(true, true)).unwrap();
    assert_eq!(seen, vec![1, 2]);
    assert!(r.notes[0].contains("repair"));
}

#[test]
fn corruption_in_an_earlier_segment_is_not_a_torn_tail() {
    let dir = temp_dir("earlier");
    write(&dir, 12, 600);
    let segments = list_segments(&dir).unwrap();
    let first = &segments[0];
    let len = std::fs::metadata(first).unwrap().len();
    std::fs::OpenOptions::new().write(true).open(first).unwrap().set_len(len - 3).unwrap();
    assert!(matches!(read_all(&dir, opts(true, false)), Err(JournalError::Corrupt { .. })));
}

#[test]
fn a_segment_torn_while_being_created_is_dropped() {
    let dir = temp_dir("newseg");
    write(&dir, 3, 1 << 20);
    let torn = dir.join(trove_journal::segment::segment_name(4));
    std::fs::write(&torn, b"TROVEJN").unwrap();
    let (seen, r) = read_all(&dir, opts(true, false)).unwrap();
    assert_eq!(seen, vec![1, 2, 3]);
    assert!(!torn.exists());
    assert!(r.notes[0].contains("removed"), "{:?}", r.notes);
}

fn write_from(dir: &Path, first: u64, batches: u64) {
    let mut w = JournalWriter::open(dir, 0, 32, first, None, 1 << 20, WriteIo::Buffered).unwrap();
    for b in first..first + batches {
        w.append_entries(&batch(b, 3));
        w.flush().unwrap();
        w.sync().unwrap();
    }
}

#[test]
fn gaps_are_refused_unless_a_snapshot_covers_them() {
    // No snapshot, and the journal does not start at batch 1.
    let dir = temp_dir("gap-start");
    write_from(&dir, 5, 2);
    let err = read_all(&dir, opts(true, false)).unwrap_err().to_string();
    assert!(err.contains("neither"), "{err}");

    // A snapshot at batch 10 and a journal that starts after it: missing.
    let mut o = opts(true, false);
    o.skip_below = 10;
    let dir = temp_dir("gap-after-snapshot");
    write_from(&dir, 20, 2);
    assert!(recover_shard::<HuntEvent>(&dir, 0, o, |_, _| {}).unwrap_err().to_string().contains("neither"));

    // A snapshot at batch 10 and a journal that ends before it: nothing to
    // replay, and appending resumes in a new segment at batch 10.
    let dir = temp_dir("ends-before-snapshot");
    write_from(&dir, 1, 5);
    let r = recover_shard::<HuntEvent>(&dir, 0, o, |_, _| panic!("nothing after the snapshot")).unwrap();
    assert_eq!((r.next_batch, r.tail.clone()), (10, None));
    write_from(&dir, r.next_batch, 2);
    let mut seen = Vec::new();
    recover_shard::<HuntEvent>(&dir, 0, o, |b, _| seen.push(b)).unwrap();
    assert_eq!(seen, vec![10, 11], "the gap 6..10 lies below the snapshot and is allowed");
}

/// Direct writes: whole blocks, zero padding after the last frame, the
/// partial last block rewritten by the next write. Recovery must see
/// exactly the frames, with no torn-tail note, across rolls and reopens.
#[test]
fn direct_writes_read_back_exactly_across_reopens_and_rolls() {
    use trove_journal::writer::DIRECT_BLOCK;
    let dir = temp_dir("direct");
    // Segments of ~20 KiB: frames of 3 events are a few dozen bytes, so
    // writes straddle block boundaries and segments roll.
    let mut w = JournalWriter::open(&dir, 0, 32, 1, None, 20 << 10, WriteIo::Direct).unwrap();
    if w.io() != WriteIo::Direct {
        eprintln!("skipped: {} refuses O_DIRECT", dir.display());
        return;
    }
    let mut next = 1;
    for round in 0..3 {
        for _ in 0..400 {
            // Several frames per write, a varying number.
            for _ in 0..(next % 4 + 1) {
                assert_eq!(w.append_entries(&batch(next, 3)), next);
                next += 1;
            }
            w.flush().unwrap();
        }
        w.sync().unwrap();
        let segments = list_segments(&dir).unwrap();
        assert!(segments.len() > round + 1, "rolled: {segments:?}");
        // Every file but the last ends at its last frame; the last ends
        // on a block boundary, padded.
        let (last, closed) = segments.split_last().unwrap();
        assert_eq!(std::fs::metadata(last).unwrap().len() % DIRECT_BLOCK as u64, 0);
        for path in closed {
            let bytes = std::fs::read(path).unwrap();
            let scan = trove_journal::segment::scan::<HuntEvent, ()>(&bytes, |_, _| Ok(())).unwrap();
            assert_eq!(scan.valid_end, scan.file_len, "{} carries padding", path.display());
        }
        drop(w);
        let (seen, r) = read_all(&dir, opts(true, false)).unwrap();
        assert_eq!(seen, (1..next).collect::<Vec<_>>());
        assert!(r.notes.is_empty(), "padding is not a torn tail: {:?}", r.notes);
        // Resume where recovery ended: the partial block is read back.
        w = JournalWriter::open(&dir, 0, 32, r.next_batch, r.tail, 20 << 10, WriteIo::Direct).unwrap();
    }
}

#[test]
fn zeros_that_are_not_direct_padding_are_a_torn_tail() {
    let dir = temp_dir("padding");
    write(&dir, 3, 1 << 20);
    let path = list_segments(&dir).unwrap()[0].clone();
    let full = std::fs::read(&path).unwrap();
    // Up to the next block boundary: padding, read silently.
    let mut padded = full.clone();
    padded.resize(full.len().next_multiple_of(4096), 0);
    std::fs::write(&path, &padded).unwrap();
    let (seen, r) = read_all(&dir, opts(false, false)).unwrap();
    assert_eq!((seen.len(), r.notes.len()), (3, 0), "{:?}", r.notes);
    // A whole block of zeros or more, or zeros not ending on a boundary:
    // reported as a torn tail (and truncated), the frames kept.
    for len in [full.len().next_multiple_of(4096) + 4096, full.len() + 7] {
        let mut zeros = full.clone();
        zeros.resize(len, 0);
        std::fs::write(&path, &zeros).unwrap();
        let (seen, r) = start_up(&dir).unwrap();
        assert_eq!(seen.len(), 3);
        assert!(r.notes[0].contains("torn tail"), "{len}: {:?}", r.notes);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), full.len() as u64);
    }
}

/// A frame that passes every check but carries the wrong batch (a frame of
/// another journal pasted in, a file edited by hand) is corruption like a
/// bad checksum: start-up stops, and `repair` cuts the journal there.
#[test]
fn a_valid_frame_out_of_sequence_is_corruption_a_repair_can_cut() {
    let dir = temp_dir("sequence");
    let sizes = write(&dir, 5, 1 << 20);
    let path = list_segments(&dir).unwrap()[0].clone();
    let mut bytes = std::fs::read(&path).unwrap();
    // Batch 3's frame replaced by a copy of batch 2's (same length).
    let (second, third) = (sizes[0] as usize..sizes[1] as usize, sizes[1] as usize..sizes[2] as usize);
    assert_eq!(second.len(), third.len());
    let copy = bytes[second].to_vec();
    bytes[third.clone()].copy_from_slice(&copy);
    std::fs::write(&path, &bytes).unwrap();
    let err = read_all(&dir, opts(true, false)).unwrap_err();
    match &err {
        JournalError::Corrupt { offset, reason, .. } => {
            assert_eq!(*offset, third.start as u64);
            assert!(reason.contains("batch 2 where batch 3 comes next"), "{reason}");
        }
        other => panic!("expected corruption, got {other:?}"),
    }
    assert_eq!(std::fs::read(&path).unwrap(), bytes, "a failed start changes nothing");
    let (seen, r) = read_all(&dir, opts(true, true)).unwrap();
    assert_eq!((seen, r.next_batch), (vec![1, 2], 3));
    assert!(r.notes[0].contains("repair") && r.notes[0].contains("batch 2 where"), "{:?}", r.notes);
    assert_eq!(std::fs::metadata(&path).unwrap().len(), sizes[1]);
    // Appending resumes at batch 3.
    write_from(&dir, 3, 1);
}

/// Damage a repair could not mend is never offered one: a journal that
/// starts after a gap, and a segment of another shard or record size.
#[test]
fn gaps_and_foreign_segments_are_refused_without_offering_a_repair() {
    let dir = temp_dir("gap-repair");
    write_from(&dir, 5, 2);
    let err = read_all(&dir, opts(true, true)).unwrap_err();
    assert!(matches!(err, JournalError::Gap { .. }), "{err:?}");
    assert!(!err.to_string().contains("--repair"), "{err}");
    assert_eq!(list_segments(&dir).unwrap().len(), 1, "a repair removes nothing here");

    let dir = temp_dir("foreign");
    write(&dir, 2, 1 << 20);
    let err = recover_shard::<HuntEvent>(&dir, 1, opts(true, true), |_, _| {}).unwrap_err();
    assert!(matches!(err, JournalError::Foreign { .. }) && err.to_string().contains("shard 0"), "{err}");
    assert!(!err.to_string().contains("--repair"), "{err}");
}

/// A gap between segments after the first: a repair drops the segments
/// from the gap on, whose batches could never be applied.
#[test]
fn a_gap_between_segments_is_cut_by_a_repair() {
    let dir = temp_dir("gap-middle");
    write_from(&dir, 1, 3);
    write_from(&dir, 7, 2);
    let err = read_all(&dir, opts(true, false)).unwrap_err();
    assert!(err.to_string().contains("starts at batch 7 but batch 4 comes next"), "{err}");
    let (seen, r) = read_all(&dir, opts(true, true)).unwrap();
    assert_eq!((seen, r.next_batch), (vec![1, 2, 3], 4));
    assert_eq!(list_segments(&dir).unwrap().len(), 1);
}

/// Issue 19, 5d: one flipped bit in a segment header used to make a
/// repair delete the whole segment (and every later one), frames with
/// valid checksums included. The header is now rebuilt from what agrees
/// with it (the file name, the first frame, the shard's directory) and
/// every frame that checks and continues the sequence is kept.
#[test]
fn a_damaged_segment_header_costs_only_the_header_under_repair() {
    // One segment of 5,000 batches (15,000 events), every header field
    // damaged in turn: magic, version, shard, first batch, record size,
    // padding, the CRC itself.
    let dir = temp_dir("header");
    let mut w = JournalWriter::open(&dir, 0, 32, 1, None, 1 << 30, WriteIo::Buffered).unwrap();
    for b in 1..=5000 {
        w.append_entries(&batch(b, 3));
    }
    w.flush().unwrap();
    drop(w);
    let path = list_segments(&dir).unwrap()[0].clone();
    let good = std::fs::read(&path).unwrap();
    for byte in [0, 9, 13, 17, 25, 40, 61] {
        let mut bytes = good.clone();
        bytes[byte] ^= 0x04;
        std::fs::write(&path, &bytes).unwrap();
        // Without a repair: corruption at byte 0, nothing changed, and the
        // message says a repair keeps the frames.
        match read_all(&dir, opts(true, false)) {
            Err(JournalError::Corrupt { offset: 0, reason, .. }) => {
                assert!(reason.contains("segment header") && reason.contains("keeps"), "{reason}")
            }
            other => panic!("byte {byte}: expected corruption, got {other:?}"),
        }
        assert_eq!(std::fs::read(&path).unwrap(), bytes);
        let (seen, r) = read_all(&dir, opts(true, true)).unwrap();
        assert_eq!((seen.len(), r.events, r.next_batch), (5000, 15_000, 5001), "byte {byte}");
        assert!(r.notes.len() == 1 && r.notes[0].contains("header"), "{:?}", r.notes);
        // The header was written again: the file is whole, as written.
        assert_eq!(std::fs::read(&path).unwrap(), good, "byte {byte}");
        assert!(read_all(&dir, opts(false, false)).unwrap().1.notes.is_empty());
    }

    // A header damaged in the middle of several segments: its frames and
    // every later segment stay.
    let dir = temp_dir("header-middle");
    write(&dir, 60, 600);
    let segments = list_segments(&dir).unwrap();
    assert!(segments.len() >= 4, "{segments:?}");
    let middle = &segments[segments.len() / 2];
    let mut bytes = std::fs::read(middle).unwrap();
    bytes[18] ^= 0x01;
    std::fs::write(middle, &bytes).unwrap();
    let (seen, r) = read_all(&dir, opts(true, true)).unwrap();
    assert_eq!((seen, r.next_batch), ((1..=60).collect::<Vec<_>>(), 61));
    assert_eq!(list_segments(&dir).unwrap(), segments);

    // A damaged header whose first frame does not carry the file name's
    // batch: nothing places the segment, so a repair drops it and every
    // later one, as before.
    let last = segments.last().unwrap();
    let last_first = trove_journal::segment::named_first_batch(last).unwrap();
    let renamed = last.with_file_name(trove_journal::segment::segment_name(999));
    std::fs::rename(last, &renamed).unwrap();
    let mut bytes = std::fs::read(&renamed).unwrap();
    bytes[3] ^= 0x01;
    std::fs::write(&renamed, &bytes).unwrap();
    let (seen, _) = read_all(&dir, opts(true, true)).unwrap();
    assert_eq!(seen, (1..last_first).collect::<Vec<_>>());
    assert!(!renamed.exists());
}

/// Issue 19, 5e: a write cut short (the last frame runs past the end of
/// the file, or zeros follow the last frame) is a torn tail and nothing
/// else; a whole last frame that fails its checksum may be a torn write
/// or a flipped bit on disk, which the format cannot tell apart. Both are
/// cut off at start-up, and recovery counts and says which it was.
#[test]
fn a_damaged_last_frame_is_reported_apart_from_a_torn_tail() {
    let dir = temp_dir("last-frame");
    let sizes = write(&dir, 4, 1 << 20);
    let path = list_segments(&dir).unwrap()[0].clone();
    let full = std::fs::read(&path).unwrap();
    let last_start = sizes[2] as usize;

    let mut flipped = full.clone();
    flipped[last_start + 16 + 40] ^= 0x01; // in the last frame's body
    let mut zeros = full[..last_start].to_vec();
    zeros.resize(full.len(), 0);
    let cases: [(&str, Vec<u8>, (u64, u64)); 3] = [
        ("flipped bit", flipped, (0, 1)),
        ("cut short", full[..full.len() - 3].to_vec(), (1, 0)),
        ("zeroed", zeros, (1, 0)),
    ];
    for (name, bytes, (torn, damaged)) in cases {
        for truncate in [false, true] {
            std::fs::write(&path, &bytes).unwrap();
            let (seen, r) = read_all(&dir, opts(truncate, false)).unwrap();
            assert_eq!(seen, vec![1, 2, 3], "{name}");
            assert_eq!((r.torn_tails, r.damaged_last_frames), (torn, damaged), "{name}: {:?}", r.notes);
            let told_apart = r.notes[0].contains("cannot be told apart");
            assert_eq!(told_apart, damaged == 1, "{name}: {:?}", r.notes);
        }
    }
}

/// Writes batches 1..=`batches` with one flush each, syncing after those
/// in `synced`; returns the segment's path and where each frame starts.
fn write_syncing(dir: &Path, batches: u64, synced: &[u64]) -> (std::path::PathBuf, Vec<usize>) {
    let mut w = JournalWriter::open(dir, 0, 32, 1, None, 1 << 20, WriteIo::Buffered).unwrap();
    let path = list_segments(dir).unwrap()[0].clone();
    let mut starts = Vec::new();
    for b in 1..=batches {
        starts.push(std::fs::metadata(&path).unwrap().len() as usize);
        w.append_entries(&batch(b, 3));
        w.flush().unwrap();
        if synced.contains(&b) {
            w.sync().unwrap();
        }
    }
    (path, starts)
}

/// Issue 22, item 5 (decision 0036): a crash that keeps a later unsynced
/// write and tears an earlier one leaves a bad frame with a valid frame
/// after it. That frame's sync mark says batch 2 was not yet durable when
/// it was written, so no synced byte is damaged: start-up cuts at the bad
/// frame as a torn tail instead of refusing the journal as corrupt.
#[test]
fn a_torn_frame_followed_only_by_unsynced_frames_is_a_torn_tail() {
    let dir = temp_dir("torn-middle");
    // Batch 1 synced; batches 2 and 3 written, not synced (batch 3's mark:
    // durable below 2).
    let (path, starts) = write_syncing(&dir, 3, &[1]);
    let full = std::fs::read(&path).unwrap();
    let mut flipped = full.clone();
    flipped[starts[1] + 16 + 40] ^= 0x01; // in batch 2's body
    let mut zeroed = full.clone();
    zeroed[starts[1]..starts[2]].fill(0); // batch 2's write lost
    for (name, bytes, (torn, damaged), word) in [
        ("torn", flipped, (0, 1), "torn tail or damaged last group (cannot be told apart)"),
        ("lost", zeroed, (1, 0), "torn tail: truncated"),
    ] {
        std::fs::write(&path, &bytes).unwrap();
        // Read-only: nothing changes, and it says what start-up will cut.
        let (seen, r) = read_all(&dir, opts(false, false)).unwrap();
        assert_eq!(seen, vec![1], "{name}");
        assert_eq!(std::fs::read(&path).unwrap(), bytes, "{name}: a read-only recovery changes nothing");
        assert_eq!((r.torn_tails, r.damaged_last_frames), (torn, damaged), "{name}: {:?}", r.notes);
        let (seen, r) = start_up(&dir).unwrap();
        assert_eq!((seen, r.next_batch), (vec![1], 2), "{name}");
        assert!(r.notes.len() == 1 && r.notes[0].starts_with(word), "{name}: {:?}", r.notes);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), starts[1] as u64, "{name}: cut at the bad frame");
        // And a second start finds a clean journal.
        assert!(start_up(&dir).unwrap().1.notes.is_empty(), "{name}");
    }
}

/// The same damage where a later frame's mark shows that a completed sync
/// covered batch 2 (it was synced before batch 3 was written): damage to
/// synced data, which start-up refuses as corruption, changing nothing.
#[test]
fn a_damaged_frame_a_later_mark_shows_synced_is_corruption() {
    let dir = temp_dir("synced-middle");
    // Batches 1 and 2 synced, then batch 3 written (its mark: durable
    // below 3), not synced.
    let (path, starts) = write_syncing(&dir, 3, &[1, 2]);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[starts[1] + 16 + 40] ^= 0x01;
    std::fs::write(&path, &bytes).unwrap();
    match start_up(&dir) {
        Err(JournalError::Corrupt { offset, reason, .. }) => {
            assert_eq!(offset, starts[1] as u64);
            assert!(reason.contains("checksum") && reason.contains("sync covered it"), "{reason}");
        }
        other => panic!("expected corruption, got {other:?}"),
    }
    assert_eq!(std::fs::read(&path).unwrap(), bytes, "a refused start changes nothing");
}

/// Frames of versions 1-3 carry no sync mark: a valid one after a bad
/// frame proves nothing about what was synced, so the rule stays what it
/// was for them: corruption.
#[test]
fn frames_without_a_mark_keep_the_old_rule() {
    use trove_journal::format::{SegmentHeader, encode_entries, encode_frame, encode_segment_header};
    let dir = temp_dir("unmarked");
    std::fs::create_dir_all(&*dir).unwrap();
    let mut bytes = encode_segment_header(&SegmentHeader { shard: 0, first_batch: 1, record_size: 32 }).to_vec();
    let mut starts = Vec::new();
    for b in 1..=3 {
        starts.push(bytes.len());
        let entries = batch(b, 3);
        let events: Vec<_> = entries.iter().map(|e| e.stamped).collect();
        let run = trove_journal::Run { producer: 1, first_seq: b * 100, len: 3, offsets: None };
        encode_frame(b, &[run], &events, &mut bytes);
    }
    let path = dir.join(trove_journal::segment::segment_name(1));
    bytes[starts[1] + 16 + 40] ^= 0x01;
    std::fs::write(&path, &bytes).unwrap();
    assert!(matches!(start_up(&dir), Err(JournalError::Corrupt { .. })));
    // With batch 3 marked "durable below 2" instead, the same damage is a
    // torn tail.
    bytes.truncate(starts[2]);
    encode_entries(3, 2, &batch(3, 3), &mut bytes);
    std::fs::write(&path, &bytes).unwrap();
    let (seen, r) = start_up(&dir).unwrap();
    assert_eq!((seen, r.damaged_last_frames), (vec![1], 1), "{:?}", r.notes);
}

/// Start-up's recovery does not cut a torn tail itself: the writer opened
/// at its tail does, after the note is returned. A crash before that (the
/// recovery interrupted) leaves the bytes for the next start to find and
/// report again, so a cut is never durable without its note.
#[test]
fn recovery_leaves_the_cut_to_the_writer_opened_after_its_note() {
    let dir = temp_dir("cut-after-note");
    let sizes = write(&dir, 3, 1 << 20);
    let path = list_segments(&dir).unwrap()[0].clone();
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[sizes[1] as usize + 16 + 40] ^= 0x01; // the last frame's body
    std::fs::write(&path, &bytes).unwrap();
    for _ in 0..2 {
        // Recovery, then "a crash": no writer opened.
        let (seen, r) = read_all(&dir, opts(true, false)).unwrap();
        assert_eq!(seen, vec![1, 2]);
        assert!(r.notes[0].contains("damaged last frame"), "{:?}", r.notes);
        assert_eq!(std::fs::read(&path).unwrap(), bytes, "nothing cut before the note is out");
    }
    let (_, r) = start_up(&dir).unwrap();
    assert_eq!(r.damaged_last_frames, 1);
    assert_eq!(std::fs::metadata(&path).unwrap().len(), sizes[1], "the writer cut it");
}
