//! `trove journal verify`, `trove journal inspect` and `trove replay`:
//! offline tools over a data directory. None of them changes, creates or
//! removes a file, nor takes the directory's lock: they may read while a
//! server runs, and then say so on stderr (the tail they read may be
//! mid-write, and is then reported as a torn tail, not cut off).

use std::path::Path;
use std::process::ExitCode;

use serde::Serialize;
use trove_hunt::{HuntEvent, TreasureHunt};
use trove_journal::format::Entry;
use trove_shard::journaled::{ReplayError, replay as replay_journal};

/// `trove journal verify`'s exit status: every frame checked, nothing
/// damaged (notes, such as an older meta file, may still be printed).
pub const VERIFY_CLEAN: u8 = 0;
/// Damage found: a torn tail or a damaged last frame (which start-up cuts
/// off), or damage start-up refuses (corruption in the middle, a gap, a
/// damaged snapshot, a file of another journal).
pub const VERIFY_DAMAGED: u8 = 1;
/// Nothing was checked: no such directory, no journal this engine reads
/// (`trove.meta` missing or of another game), an I/O error; and usage
/// errors (clap's status for them is 2 as well).
pub const VERIFY_UNCHECKED: u8 = 2;

#[derive(Debug, Serialize)]
struct VerifyReport {
    data: String,
    /// `ok`, `damaged` or `unchecked`, as the exit status 0, 1 or 2.
    status: &'static str,
    shards: usize,
    batches: u64,
    events: u64,
    /// Shards whose journal ends in a write cut short: a frame running
    /// past the end of the file, or zeros after the last valid frame.
    /// Start-up truncates it; nothing acknowledged is in it.
    torn_tails: u64,
    /// Shards whose last frame is whole but fails its checksum, with
    /// nothing valid after it: a torn write or damage on disk, which the
    /// format cannot tell apart. Start-up truncates it as a torn tail.
    damaged_last_frames: u64,
    /// Damage start-up refuses, or why nothing could be checked.
    error: Option<String>,
    notes: Vec<String>,
    ok: bool,
}

/// Says on stderr whether a server holds `data`: a live journal's tail may
/// be mid-write when it is read.
fn note_live(data: &Path) {
    match trove_journal::lock::holder(data) {
        Ok(None) => {}
        Ok(Some(h)) => {
            let who = h.pid.map_or_else(|| "a server".to_string(), |p| format!("a server (pid {p})"));
            eprintln!(
                "trove: {who} holds {}; reading a live journal without writing: the tail may be mid-write",
                data.display()
            );
        }
        Err(e) => eprintln!("trove: cannot tell whether a server holds {}: {e}", data.display()),
    }
}

/// Checks every record of every shard without changing anything, prints
/// what it found, and returns the exit status: `VERIFY_CLEAN`,
/// `VERIFY_DAMAGED` or `VERIFY_UNCHECKED`.
pub fn verify(data: &Path, json: bool) -> ExitCode {
    note_live(data);
    let mut report = VerifyReport {
        data: data.display().to_string(),
        status: "ok",
        shards: 0,
        batches: 0,
        events: 0,
        torn_tails: 0,
        damaged_last_frames: 0,
        error: None,
        notes: Vec::new(),
        ok: false,
    };
    let code = match replay_journal::<TreasureHunt>(data, |_, _, _| {}) {
        Ok(r) => {
            (report.shards, report.batches, report.events) = (r.shards, r.batches, r.events);
            (report.torn_tails, report.damaged_last_frames, report.notes) =
                (r.torn_tails, r.damaged_last_frames, r.notes);
            if r.torn_tails + r.damaged_last_frames > 0 { VERIFY_DAMAGED } else { VERIFY_CLEAN }
        }
        Err(ReplayError::Damaged(e)) => {
            report.error = Some(e);
            VERIFY_DAMAGED
        }
        Err(ReplayError::Unreadable(e)) => {
            report.error = Some(e);
            VERIFY_UNCHECKED
        }
    };
    (report.status, report.ok) = match code {
        VERIFY_CLEAN => ("ok", true),
        VERIFY_DAMAGED => ("damaged", false),
        _ => ("unchecked", false),
    };
    if json {
        match serde_json::to_string(&report) {
            Ok(line) => println!("{line}"),
            Err(e) => {
                eprintln!("trove: error: {e}");
                return ExitCode::from(VERIFY_UNCHECKED);
            }
        }
        return ExitCode::from(code);
    }
    if code == VERIFY_UNCHECKED {
        eprintln!("trove: error: {}", report.error.as_deref().unwrap_or(""));
        return ExitCode::from(code);
    }
    if let Some(e) = &report.error {
        println!("{}: damaged: {e}", report.data);
        return ExitCode::from(code);
    }
    println!(
        "{}: {} shards, {} batches, {} events, every CRC checked",
        report.data, report.shards, report.batches, report.events
    );
    if report.torn_tails > 0 {
        println!(
            "torn tails: {} (a write cut short: bytes past the last valid frame; start-up cuts them off)",
            report.torn_tails
        );
    }
    if report.damaged_last_frames > 0 {
        println!(
            "damaged last frames: {} (the last frame's checksum fails; cannot be told from a torn write; \
             start-up cuts it off)",
            report.damaged_last_frames
        );
    }
    for n in &report.notes {
        println!("note: {n}");
    }
    println!("{}", report.status);
    ExitCode::from(code)
}

/// Prints events, oldest first, shard by shard.
pub fn inspect(data: &Path, hunt: Option<u32>, limit: u64) -> Result<(), String> {
    let mut printed = 0u64;
    let mut line = |shard: usize, batch: u64, entries: &[Entry<HuntEvent>]| {
        for e in entries {
            if printed >= limit || hunt.is_some_and(|h| h != e.stamped.event.hunt) {
                continue;
            }
            let ev = &e.stamped.event;
            println!(
                "shard {shard} batch {batch} t={}us producer={} seq={} hunt={} player={} {:?}",
                e.stamped.time_us, e.producer, e.producer_seq, ev.hunt, ev.player, ev.action
            );
            printed += 1;
        }
    };
    note_live(data);
    let r = replay_journal::<TreasureHunt>(data, &mut line)?;
    for n in &r.notes {
        eprintln!("note: {n}");
    }
    Ok(())
}

#[derive(Debug, Serialize)]
struct ReplayReport {
    data: String,
    shards: usize,
    batches: u64,
    events: u64,
    seconds: f64,
    events_per_s: f64,
    hunts: Vec<HuntHash>,
    state_hash: String,
    notes: Vec<String>,
}

#[derive(Debug, Serialize)]
struct HuntHash {
    hunt: u32,
    state_hash: String,
}

/// Rebuilds the state offline; prints per-hunt and total hashes.
pub fn replay(data: &Path, json: bool) -> Result<(), String> {
    note_live(data);
    let started = std::time::Instant::now();
    let r = replay_journal::<TreasureHunt>(data, |_, _, _| {})?;
    let seconds = started.elapsed().as_secs_f64();
    let report = ReplayReport {
        data: data.display().to_string(),
        shards: r.shards,
        batches: r.batches,
        events: r.events,
        seconds,
        events_per_s: r.events as f64 / seconds.max(1e-9),
        hunts: r.world_hashes.iter().map(|&(hunt, h)| HuntHash { hunt, state_hash: format!("{h:016x}") }).collect(),
        state_hash: format!("{:016x}", r.state_hash),
        notes: r.notes,
    };
    if json {
        println!("{}", serde_json::to_string(&report).map_err(|e| e.to_string())?);
    } else {
        for h in &report.hunts {
            println!("hunt {} {}", h.hunt, h.state_hash);
        }
        for n in &report.notes {
            println!("note: {n}");
        }
        println!(
            "replayed {} events in {} batches from {} shards in {:.2} s ({:.1} M events/s)",
            report.events,
            report.batches,
            report.shards,
            seconds,
            report.events_per_s / 1e6
        );
        println!("state hash {}", report.state_hash);
    }
    Ok(())
}
