//! `trove journal verify`, `trove journal inspect` and `trove replay`:
//! offline tools over a data directory. None of them changes, creates or
//! removes a file, nor takes the directory's lock: they may read while a
//! server runs, and then say so on stderr (the tail they read may be
//! mid-write, and is then reported as a torn tail, not cut off).

use std::collections::HashMap;
use std::io::Write;
use std::ops::ControlFlow;
use std::path::Path;
use std::process::ExitCode;

use serde::Serialize;
use trove_hunt::{Action, Band, HuntEvent, HuntOutcome, TreasureHunt};
use trove_journal::format::Entry;
use trove_journal::segment::{list_segments, read_segment, scan};
use trove_server::json::JsonGame;
use trove_shard::journaled::{ReplayError, replay as replay_journal, replay_outcomes};

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
    /// past the end of the file, or zeros after the last valid frame (or
    /// before valid frames none of which was written after a sync covered
    /// them: decision 0036). Start-up truncates it; nothing acknowledged
    /// is in it.
    torn_tails: u64,
    /// Shards whose journal ends in a whole frame that fails its checksum,
    /// with nothing valid after it, or only frames written before any sync
    /// covered it: a torn write or damage on disk to the last frame or
    /// group synced, which the format cannot tell apart. Start-up
    /// truncates it as a torn tail.
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
        "{}: {}, {}, {}, every CRC checked",
        report.data,
        crate::plural(report.shards as u64, "shard"),
        crate::plural(report.batches, "batch"),
        crate::plural(report.events, "event")
    );
    if report.torn_tails > 0 {
        println!(
            "torn tails: {} (a write cut short or lost: bytes past the last valid frame, or before frames no \
             sync covered; start-up cuts them off)",
            report.torn_tails
        );
    }
    if report.damaged_last_frames > 0 {
        println!(
            "damaged last frames: {} (a frame's checksum fails and nothing after it was written after a sync \
             covered it; cannot be told from a torn write; start-up cuts it off)",
            report.damaged_last_frames
        );
    }
    for n in &report.notes {
        println!("note: {n}");
    }
    println!("{}", report.status);
    ExitCode::from(code)
}

/// `trove journal inspect`'s exit status when it printed what was asked.
pub const INSPECT_FOUND: u8 = 0;
/// `--hunt` named a hunt with no journaled event.
pub const INSPECT_NO_SUCH_HUNT: u8 = 1;
/// The journal could not be read (and usage errors, clap's 2).
pub const INSPECT_UNREADABLE: u8 = 2;

/// What `inspect` prints: every event with the outcome the engine gave it.
#[derive(Debug)]
pub struct InspectArgs<'a> {
    pub data: &'a Path,
    pub hunt: Option<u32>,
    pub limit: u64,
    pub json: bool,
}

/// Prints the journaled events (those since each shard's latest snapshot,
/// which replaces the ones it covers) with their outcomes, shard by shard
/// (the shards replayed one after another, so the order and what `limit`
/// keeps are the same on every run), each shard's oldest first: one
/// readable line each, or one JSON object per line with `json`. Returns
/// `INSPECT_FOUND` (also when the reader closed the pipe: `| head`),
/// `INSPECT_NO_SUCH_HUNT` (with `hunt`, when it has no event) or
/// `INSPECT_UNREADABLE`.
pub fn inspect(args: &InspectArgs<'_>) -> ExitCode {
    let (hunt, limit, json) = (args.hunt, args.limit, args.json);
    let mut matched = 0u64;
    let mut failed: Option<String> = None;
    // Written through a buffer with `writeln!`: a failed write (the reader
    // went away, as `inspect | head` does) is an error value, not a panic
    // in the replay thread. (A `StdoutLock` cannot move to that thread.)
    let mut out = std::io::BufWriter::new(std::io::stdout());
    let mut closed = false;
    let marks = sync_marks(args.data);
    let mut each = |shard: usize, batch: u64, entries: &[Entry<HuntEvent>], outcomes: &[HuntOutcome]| {
        let mark = marks.get(shard).and_then(|m| m.get(&batch)).copied();
        debug_assert_eq!(entries.len(), outcomes.len(), "one outcome per event");
        for (e, outcome) in entries.iter().zip(outcomes) {
            if hunt.is_some_and(|h| h != e.stamped.event.hunt) {
                continue;
            }
            matched += 1;
            if matched > limit {
                // Still counted, for the closing "printed the first N of M".
                continue;
            }
            let line = if json {
                json_line(shard, batch, mark, e, outcome)
            } else {
                Ok(text_line(shard, batch, mark, e, outcome))
            };
            let written = match line {
                Ok(line) => writeln!(out, "{line}"),
                Err(err) => {
                    failed = Some(err.to_string());
                    return ControlFlow::Break(());
                }
            };
            if let Err(err) = written {
                if err.kind() == std::io::ErrorKind::BrokenPipe {
                    closed = true;
                } else {
                    failed = Some(format!("writing to stdout: {err}"));
                }
                return ControlFlow::Break(());
            }
        }
        ControlFlow::Continue(())
    };
    note_live(args.data);
    let replayed = replay_outcomes::<TreasureHunt>(args.data, &mut each);
    if let Err(err) = out.flush() {
        if err.kind() == std::io::ErrorKind::BrokenPipe {
            closed = true;
        } else if failed.is_none() {
            failed = Some(format!("writing to stdout: {err}"));
        }
    }
    drop(out);
    let r = match replayed {
        Ok(r) => r,
        Err(e) => {
            eprintln!("trove: error: {e}");
            return ExitCode::from(INSPECT_UNREADABLE);
        }
    };
    if let Some(e) = failed {
        eprintln!("trove: error: {e}");
        return ExitCode::from(INSPECT_UNREADABLE);
    }
    if closed {
        // Whoever read the output has what it wanted (`| head`): not an
        // error, and nothing more to say.
        return ExitCode::from(INSPECT_FOUND);
    }
    for n in &r.notes {
        eprintln!("note: {n}");
    }
    if matched > limit {
        eprintln!("trove: printed the first {limit} of {matched} events (--limit {limit})");
    }
    match hunt {
        Some(h) if matched == 0 => {
            eprintln!(
                "trove: hunt {h} has no events in {}: {} journaled since the latest snapshot, none of hunt {h}",
                args.data.display(),
                crate::plural(r.events, "event")
            );
            ExitCode::from(INSPECT_NO_SUCH_HUNT)
        }
        None if matched == 0 => {
            eprintln!(
                "trove: {} holds no journaled events since the latest snapshot (a snapshot, taken every \
                 snapshot_ms and at shutdown, replaces the events it covers)",
                args.data.display()
            );
            ExitCode::from(INSPECT_FOUND)
        }
        _ => ExitCode::from(INSPECT_FOUND),
    }
}

/// Each shard's frames' sync marks by batch (`Body::durable_below`: every
/// batch below it was durable when the frame was written), read in a pass
/// of their own, since a replay hands its callback events, not frames.
/// Frames of versions 1-3 have none. Best effort: a segment that cannot be
/// read is skipped here (the replay reports it).
fn sync_marks(data: &Path) -> Vec<HashMap<u64, u64>> {
    let mut shards = Vec::new();
    loop {
        let dir = trove_journal::shard_dir(data, shards.len());
        if !dir.is_dir() {
            return shards;
        }
        let mut marks = HashMap::new();
        for path in list_segments(&dir).unwrap_or_default() {
            let Ok(bytes) = read_segment(&path, SEGMENT_READ_BYTES_MAX) else { continue };
            let _ = scan::<HuntEvent, ()>(&bytes, |_, body| {
                if let Some(durable_below) = body.durable_below {
                    marks.insert(body.batch, durable_below);
                }
                Ok(())
            });
        }
        shards.push(marks);
    }
}

/// The largest segment `sync_marks` reads (as the offline replay).
const SEGMENT_READ_BYTES_MAX: u64 = u64::MAX / 4;

/// `shard 0 batch 3 (durable below 3) t=1.250000s producer 7 seq 12: hunt 1 player 4 dig -> found a treasure worth 30 (score 120)`
///
/// The parenthesis is the frame's sync mark (none for a frame of versions 1-3).
fn text_line(shard: usize, batch: u64, mark: Option<u64>, e: &Entry<HuntEvent>, outcome: &HuntOutcome) -> String {
    let ev = &e.stamped.event;
    let t = e.stamped.time_us;
    let who = match ev.action {
        // A create's and a delete's `player` field is ignored.
        Action::Create(_) | Action::Delete => format!("hunt {}", ev.hunt),
        _ => format!("hunt {} player {}", ev.hunt, ev.player),
    };
    let mark = mark.map_or(String::new(), |d| format!(" (durable below {d})"));
    format!(
        "shard {shard} batch {batch}{mark} t={}.{:06}s producer {} seq {}: {who} {} -> {}",
        t / 1_000_000,
        t % 1_000_000,
        e.producer,
        e.producer_seq,
        action_text(&ev.action),
        outcome_text(outcome)
    )
}

fn action_text(action: &Action) -> String {
    match *action {
        Action::Create(c) => format!(
            "create {}x{} seed {}, {} treasures a round worth {}-{}, dig cooldown {} ms, steps up to {}, \
             players below {}",
            c.width,
            c.height,
            c.seed,
            c.treasures_per_round,
            c.value_min,
            c.value_max,
            c.dig_cooldown_ms,
            c.step_max,
            c.players_max
        ),
        Action::Join => "join".into(),
        Action::Leave => "leave".into(),
        Action::Move { dx, dy } => format!("move {dx:+} {dy:+}"),
        Action::Dig => "dig".into(),
        Action::Scan => "scan".into(),
        Action::Delete => "delete the hunt".into(),
        Action::Invalid => "(a record naming no action)".into(),
    }
}

fn outcome_text(outcome: &HuntOutcome) -> String {
    match *outcome {
        HuntOutcome::Created { round } => format!("created, round {round}"),
        HuntOutcome::Joined { x, y, score } => format!("joined at ({x}, {y}), score {score}"),
        HuntOutcome::Left => "left".into(),
        HuntOutcome::Moved { x, y } => format!("now at ({x}, {y})"),
        HuntOutcome::DigFound { value, score } => format!("found a treasure worth {value} (score {score})"),
        HuntOutcome::DigNothing => "found nothing".into(),
        HuntOutcome::Hint { band } => {
            let band = match band {
                Band::Hot => "hot (a treasure within 2 cells)",
                Band::Warm => "warm (a treasure within 8 cells)",
                Band::Cold => "cold (no treasure within 8 cells)",
            };
            band.into()
        }
        HuntOutcome::Rejected { reason } => format!("rejected: {}", reason.name()),
        HuntOutcome::Deleted { round } => format!("deleted, in round {round}"),
    }
}

/// One JSON line: `{"shard", "batch", "durable_below", "time_us",
/// "producer", "seq", "event": {...}, "outcome": {...}}`, the event and
/// outcome in the WebSocket endpoint's JSON form (docs/protocol.md);
/// `durable_below` is the frame's sync mark, `null` for versions 1-3.
fn json_line(
    shard: usize,
    batch: u64,
    mark: Option<u64>,
    e: &Entry<HuntEvent>,
    outcome: &HuntOutcome,
) -> Result<String, serde_json::Error> {
    // Written out so the keys keep this order (a `Value` sorts them).
    let event = serde_json::to_string(&TreasureHunt::event_to_json(&e.stamped.event))?;
    let outcome = serde_json::to_string(&TreasureHunt::outcome_to_json(outcome))?;
    Ok(format!(
        "{{\"shard\":{shard},\"batch\":{batch},\"durable_below\":{},\"time_us\":{},\"producer\":{},\"seq\":{},\"event\":{event},\"outcome\":{outcome}}}",
        mark.map_or("null".to_string(), |d| d.to_string()),
        e.stamped.time_us,
        e.producer,
        e.producer_seq
    ))
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
    let progress = crate::progress::ProgressLine::journal("replay", data);
    let r = replay_journal::<TreasureHunt>(data, |_, _, _| {}).map_err(|e| e.to_string());
    progress.finish();
    let r = r?;
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
            "replayed {} in {} from {} in {:.2} s ({:.1} M events/s)",
            crate::plural(report.events, "event"),
            crate::plural(report.batches, "batch"),
            crate::plural(report.shards as u64, "shard"),
            seconds,
            report.events_per_s / 1e6
        );
        println!("state hash {}", report.state_hash);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use trove_core::Stamped;

    /// A delete, as a create, names no player: its `player` field is
    /// ignored (a hand run printed "hunt 1 player 0 delete the hunt").
    #[test]
    fn a_delete_names_the_hunt_alone() {
        let event = HuntEvent { hunt: 1, player: 0, action: Action::Delete };
        let entry = Entry { producer: 7, producer_seq: 2, stamped: Stamped { time_us: 1_500_000, event } };
        let line = text_line(0, 9, Some(9), &entry, &HuntOutcome::Deleted { round: 3 });
        assert_eq!(
            line,
            "shard 0 batch 9 (durable below 9) t=1.500000s producer 7 seq 2: hunt 1 delete the hunt -> deleted, in round 3"
        );
    }
}
