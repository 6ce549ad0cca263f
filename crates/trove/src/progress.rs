//! A progress line on a terminal, for reading a journal back (`trove
//! replay`, and `trove serve`'s recovery): segments, bytes and
//! events read of the total, and the rate, redrawn in place with `\r` at
//! most [`REDRAWS_PER_S`] times a second on stderr. Log lines written
//! meanwhile go through [`LogWriter`], which clears the line first, so a
//! log line never runs into it (the line is drawn again below it). Quiet when stderr is
//! not a terminal (a log file, a pipe, a test) and for a recovery that
//! ends within [`QUIET_FOR`]. The figures come from the journal's
//! counters ([`trove_journal::progress::RECOVERY`]); the line is drawn by
//! a thread of its own, so recovery itself never waits on the terminal.

use std::io::{IsTerminal, Write};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use trove_journal::progress::{Counts, RECOVERY};

/// Most redraws a second.
pub const REDRAWS_PER_S: u32 = 10;

/// A recovery shorter than this draws nothing.
pub const QUIET_FOR: Duration = Duration::from_millis(500);

/// The environment variable that sets [`QUIET_FOR`] in milliseconds
/// (0: the line is drawn at once, before the first event is read; tests
/// use it to see the line whatever the machine's speed).
pub const QUIET_FOR_ENV: &str = "TROVE_PROGRESS_AFTER_MS";

/// Most directory entries looked at to total a journal's segments (a data
/// directory holds a few per shard).
const ENTRIES_MAX: usize = 1 << 20;

/// The line's longest text: most terminals are at least this wide, and a
/// wrapped line cannot be redrawn with `\r`.
const WIDTH_MAX: usize = 79;

/// A progress line is on the terminal now (drawn, not yet cleared).
static SHOWN: AtomicBool = AtomicBool::new(false);

/// Clears the progress line from `out` if one is shown, so what is written
/// next starts at the left of an empty line. The caller holds the
/// terminal's lock.
fn clear_shown(out: &mut impl Write, shown: &AtomicBool) -> std::io::Result<()> {
    if shown.swap(false, Relaxed) {
        write!(out, "\r{:WIDTH_MAX$}\r", "")?;
    }
    Ok(())
}

/// The log lines' writer on stderr (`logging::install`): each write
/// clears a progress line first, under the same lock of stderr.
#[derive(Clone, Copy, Debug, Default)]
pub struct LogWriter;

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut err = std::io::stderr().lock();
        clear_shown(&mut err, &SHOWN)?;
        err.write_all(buf)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

/// A progress line being drawn; stopped (and its line cleared) when
/// dropped, or by [`ProgressLine::finish`].
#[derive(Debug)]
pub struct ProgressLine {
    stop: Arc<(Mutex<bool>, std::sync::Condvar)>,
    drew: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ProgressLine {
    /// Starts the line for reading the journal under `data` back, if
    /// stderr is a terminal; `label` says what is being done.
    pub fn journal(label: &'static str, data: &Path) -> Self {
        Self::start(label, data, std::io::stderr().is_terminal())
    }

    fn start(label: &'static str, data: &Path, on_terminal: bool) -> Self {
        let stop = Arc::new((Mutex::new(false), std::sync::Condvar::new()));
        let drew = Arc::new(AtomicBool::new(false));
        if !on_terminal {
            return Self { stop, drew, thread: None };
        }
        let (before, bytes_total, started) = (RECOVERY.counts(), segment_bytes(data), Instant::now());
        let quiet_for = std::env::var(QUIET_FOR_ENV)
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .map_or(QUIET_FOR, Duration::from_millis);
        let draw = move |done: &Counts| {
            let text = render(label, done, bytes_total, started.elapsed());
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\r{text:<WIDTH_MAX$}");
            let _ = err.flush();
            SHOWN.store(true, Relaxed);
        };
        if quiet_for.is_zero() {
            draw(&Counts::default());
            drew.store(true, Relaxed);
        }
        let (stop_, drew_) = (stop.clone(), drew.clone());
        let thread = std::thread::Builder::new()
            .name("trove-progress".into())
            .spawn(move || {
                let (lock, wake) = &*stop_;
                let mut stopped = lock.lock().unwrap_or_else(|e| e.into_inner());
                let mut wait = quiet_for;
                loop {
                    stopped = wake.wait_timeout(stopped, wait).unwrap_or_else(|e| e.into_inner()).0;
                    if *stopped {
                        return;
                    }
                    wait = Duration::from_secs(1) / REDRAWS_PER_S;
                    draw(&RECOVERY.counts().since(&before));
                    drew_.store(true, Relaxed);
                }
            })
            .ok();
        Self { stop, drew, thread }
    }

    /// Stops the line and clears it, so what is printed next starts on a
    /// clean line.
    pub fn finish(mut self) {
        self.stop_now();
    }

    fn stop_now(&mut self) {
        let Some(thread) = self.thread.take() else { return };
        let (lock, wake) = &*self.stop;
        *lock.lock().unwrap_or_else(|e| e.into_inner()) = true;
        wake.notify_all();
        let _ = thread.join();
        if self.drew.load(Relaxed) {
            let mut err = std::io::stderr().lock();
            let _ = clear_shown(&mut err, &SHOWN);
            let _ = err.flush();
        }
    }
}

impl Drop for ProgressLine {
    fn drop(&mut self) {
        self.stop_now();
    }
}

/// The bytes of the journal segments (`segment-*.tjl`) under `data` and its
/// shard directories that recovery reads: in a directory with a snapshot,
/// only the segments from the one the newest snapshot starts in (the
/// segments it covers are skipped, as recovery skips them).
fn segment_bytes(data: &Path) -> u64 {
    let mut total = 0;
    let mut seen = 0;
    let mut dirs = vec![(data.to_path_buf(), 0)];
    while let Some((dir, depth)) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        let mut segments: Vec<(std::path::PathBuf, u64)> = Vec::new();
        let mut snapshot_next: Option<u64> = None;
        for entry in entries.flatten() {
            seen += 1;
            if seen > ENTRIES_MAX {
                return total;
            }
            let Ok(meta) = entry.metadata() else { continue };
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if meta.is_dir() && depth == 0 {
                dirs.push((entry.path(), 1));
            } else if meta.is_file() && name.starts_with("segment-") && name.ends_with(".tjl") {
                segments.push((entry.path(), meta.len()));
            } else if meta.is_file()
                && let Some(next) = snapshot_next_batch(&name)
            {
                snapshot_next = snapshot_next.max(Some(next));
            }
        }
        segments.sort();
        let skip = match snapshot_next {
            Some(next) => {
                let paths: Vec<_> = segments.iter().map(|(p, _)| p.clone()).collect();
                trove_journal::segment::covered_segments(&paths, next)
            }
            None => 0,
        };
        total += segments.iter().skip(skip).map(|(_, len)| len).sum::<u64>();
    }
    total
}

/// A snapshot file's `next_batch`, from its name (`snapshot-<20 digits>.tsnap`).
fn snapshot_next_batch(name: &str) -> Option<u64> {
    let digits = name.strip_prefix("snapshot-")?.strip_suffix(".tsnap")?;
    (digits.len() == 20 && digits.bytes().all(|b| b.is_ascii_digit())).then(|| digits.parse().ok())?
}

/// The line's text: `replay: 3/14 segments, 1.2 GiB of 3.4 GiB (35%),
/// 12.3M events at 4.10M/s`, cut to [`WIDTH_MAX`].
pub fn render(label: &str, done: &Counts, bytes_total: u64, elapsed: Duration) -> String {
    let seconds = elapsed.as_secs_f64();
    let rate = if seconds > 0.0 { done.events_read as f64 / seconds } else { 0.0 };
    let of = if bytes_total > 0 {
        let pct = (done.bytes_read as f64 / bytes_total as f64 * 100.0).min(100.0);
        format!(" of {} ({pct:.0}%)", bytes(bytes_total))
    } else {
        String::new()
    };
    let mut text = format!(
        "{label}: {}/{} segments, {}{of}, {} events at {}/s",
        done.segments_read,
        done.segments_listed.max(done.segments_read),
        bytes(done.bytes_read),
        count(done.events_read as f64),
        count(rate),
    );
    if text.chars().count() > WIDTH_MAX {
        text = text.chars().take(WIDTH_MAX).collect();
    }
    text
}

/// `512 B`, `3.4 KiB`, `1.2 GiB`.
fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

/// `950`, `12.3k`, `4.10M`: three significant digits.
fn count(v: f64) -> String {
    let (scaled, suffix) = match v {
        v if v >= 1e9 => (v / 1e9, "G"),
        v if v >= 1e6 => (v / 1e6, "M"),
        v if v >= 1e3 => (v / 1e3, "k"),
        v => (v, ""),
    };
    match scaled {
        s if s >= 100.0 || suffix.is_empty() => format!("{s:.0}{suffix}"),
        s if s >= 10.0 => format!("{s:.1}{suffix}"),
        s => format!("{s:.2}{suffix}"),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_log_line_clears_a_shown_progress_line_first_and_only_then() {
        let shown = AtomicBool::new(true);
        let mut out = Vec::new();
        clear_shown(&mut out, &shown).unwrap();
        assert_eq!(out, format!("\r{:w$}\r", "", w = WIDTH_MAX).into_bytes());
        assert!(!shown.load(Relaxed), "cleared once");
        out.clear();
        clear_shown(&mut out, &shown).unwrap();
        assert!(out.is_empty(), "nothing to clear: nothing written");
    }

    use super::*;

    #[test]
    fn the_line_says_what_is_done_of_what_and_how_fast() {
        let done = Counts { segments_listed: 14, segments_read: 3, bytes_read: 1_288_490_189, events_read: 12_300_000 };
        let line = render("recovery", &done, 3_650_722_202, Duration::from_secs(3));
        assert_eq!(line, "recovery: 3/14 segments, 1.2 GiB of 3.4 GiB (35%), 12.3M events at 4.10M/s");
        assert!(line.chars().count() <= WIDTH_MAX);
        // Nothing yet, no total known, no time passed: no division by zero.
        let line = render("replay", &Counts::default(), 0, Duration::ZERO);
        assert_eq!(line, "replay: 0/0 segments, 0 B, 0 events at 0/s");
        // More read than the total found (a segment grew): never past 100%.
        let done = Counts { segments_listed: 1, segments_read: 1, bytes_read: 2048, events_read: 10 };
        assert!(render("x", &done, 1024, Duration::from_secs(1)).contains("(100%)"));
        // A long label is cut to the line's width.
        assert_eq!(render(&"l".repeat(200), &done, 0, Duration::from_secs(1)).chars().count(), WIDTH_MAX);
    }

    #[test]
    fn sizes_and_counts_are_short() {
        assert_eq!(
            (bytes(0), bytes(1023), bytes(1536), bytes(5 << 30)),
            ("0 B".into(), "1023 B".into(), "1.5 KiB".into(), "5.0 GiB".into())
        );
        assert_eq!(
            (count(950.0), count(12_345.0), count(4_100_000.0), count(250e6)),
            ("950".into(), "12.3k".into(), "4.10M".into(), "250M".into())
        );
    }

    #[test]
    fn the_total_skips_the_segments_a_snapshot_covers() {
        let data = std::env::temp_dir().join(format!("trove-progress-total-{}", std::process::id()));
        let shard = data.join("shard-000");
        std::fs::create_dir_all(&shard).unwrap();
        let write = |name: &str, len: usize| std::fs::write(shard.join(name), vec![0u8; len]).unwrap();
        write(&trove_journal::segment::segment_name(1), 100);
        write(&trove_journal::segment::segment_name(50), 200);
        write(&trove_journal::segment::segment_name(90), 300);
        // No snapshot: every segment is read.
        assert_eq!(segment_bytes(&data), 600);
        // A snapshot at batch 60: the segment from 1 is covered, the one
        // from 50 holds batches from 60 on and is read.
        write("snapshot-00000000000000000060.tsnap", 7);
        // An older snapshot beside it changes nothing (the newest counts).
        write("snapshot-00000000000000000010.tsnap", 7);
        assert_eq!(segment_bytes(&data), 500);
        std::fs::remove_dir_all(&data).ok();
    }

    #[test]
    fn off_a_terminal_nothing_is_drawn() {
        let line = ProgressLine::start("replaying", Path::new("/nonexistent"), false);
        assert!(line.thread.is_none());
        line.finish();
        // On one, a line stopped before `QUIET_FOR` draws nothing either.
        let line = ProgressLine::start("replaying", Path::new("/nonexistent"), true);
        let drew = line.drew.clone();
        line.finish();
        assert!(!drew.load(Relaxed));
    }
}
