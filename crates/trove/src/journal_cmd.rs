//! `trove journal verify`, `trove journal inspect` and `trove replay`:
//! offline tools over a data directory. None of them changes, creates or
//! removes a file, nor takes the directory's lock: they may read while a
//! server runs, and then say so on stderr (the tail they read may be
//! mid-write, and is then reported as a torn tail, not cut off).

use std::path::Path;

use serde::Serialize;
use trove_hunt::{HuntEvent, TreasureHunt};
use trove_journal::format::Entry;
use trove_shard::journaled::replay as replay_journal;

#[derive(Debug, Serialize)]
struct VerifyReport {
    data: String,
    shards: usize,
    batches: u64,
    events: u64,
    /// Anything not perfect: a torn tail (which start-up would truncate).
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

/// Checks every record; exits non-zero (through the error) on corruption.
pub fn verify(data: &Path, json: bool) -> Result<(), String> {
    note_live(data);
    let r = replay_journal::<TreasureHunt>(data, |_, _, _| {})?;
    let report = VerifyReport {
        data: data.display().to_string(),
        shards: r.shards,
        batches: r.batches,
        events: r.events,
        ok: r.notes.is_empty(),
        notes: r.notes,
    };
    if json {
        println!("{}", serde_json::to_string(&report).map_err(|e| e.to_string())?);
    } else {
        println!(
            "{}: {} shards, {} batches, {} events, every CRC checked",
            report.data, report.shards, report.batches, report.events
        );
        for n in &report.notes {
            println!("note: {n}");
        }
        if report.ok {
            println!("ok");
        }
    }
    Ok(())
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
