//! `trove watch HUNT`: a hunt live in the terminal, through the Rust SDK's
//! `Subscriber`: players, the round, the top 10, the last finds, events/s
//! and the gaps where the server dropped updates because we fell behind.
//!
//! [`View`] is the model: it takes updates and renders, and never reads
//! the clock (the caller passes the time), so it is tested without a
//! server. [`run`] drives it: on a terminal it redraws the screen a few
//! times a second; piped, it prints a line per find, leaderboard change,
//! round, gap and reconnect, and a status line each second, for scripts
//! and logs. A lost connection is reconnected (with backoff) and the
//! hunt subscribed again: what was missed meanwhile shows as a gap.
//!
//! It subscribes to the hunt's broadcasts alone (finds, top-10 changes,
//! round ends: the news it shows), so a busy hunt costs the server and the
//! watcher one entry per find, not one per move; the players count then
//! comes from the control plane, read once a second. `--all-events` takes
//! the full stream instead (players counted as they join and leave, and
//! events/s).

use std::collections::VecDeque;
use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::time::Duration;

use tokio::time::Instant;
use trove_client::{ClientConfig, ClientError, Subscriber, Update, UpdateEntry};
use trove_hunt::{HuntBroadcast, HuntOutcome, Top10, TreasureHunt};

/// Finds kept for the view.
pub const FINDS_SHOWN: usize = 5;

/// The terminal view redraws this often.
const REDRAW_INTERVAL: Duration = Duration::from_millis(250);

/// Reconnect backoff, doubling from the first to the last.
const BACKOFF_FIRST: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(4);

/// Watching the broadcasts alone, the control plane's players count is
/// read this often.
const NEWS_REFRESH_INTERVAL: Duration = Duration::from_secs(1);

/// The control plane's answer is at most this long to wait for.
const CONTROL_TIMEOUT: Duration = Duration::from_secs(2);

/// What the watcher knows of the hunt.
#[derive(Debug, Default)]
pub struct View {
    pub hunt: u32,
    /// Players in the hunt: the control plane's count when known, then
    /// joins less leaves as they apply. `players_exact` is false after a
    /// gap until the control plane is read again.
    pub players: i64,
    pub players_exact: bool,
    pub round: Option<u32>,
    pub treasures_left: Option<u32>,
    pub top: Vec<(u32, u32)>,
    /// The last finds, newest first: (round, player, value, x, y).
    pub finds: VecDeque<(u32, u32, u32, u16, u16)>,
    pub events: u64,
    /// Events applied in the last whole second, and the count and start
    /// of the second being counted.
    pub events_per_s: u64,
    second_events: u64,
    second_start: Option<Instant>,
    pub gaps: u64,
    pub missed: u64,
    pub reconnects: u64,
    /// Subscribed to the broadcasts alone: no events to count.
    pub news_only: bool,
    /// The broadcasts alone and no control plane to read: the players
    /// count cannot be known, and is shown as unknown rather than as 0.
    pub players_unknown: bool,
    /// Broadcast entries seen.
    pub broadcasts: u64,
    /// Why the connection is down, while it is.
    pub disconnected: Option<String>,
}

/// A notable change, for the line-per-change output.
#[derive(Debug, PartialEq, Eq)]
pub enum Change {
    Found {
        round: u32,
        player: u32,
        value: u32,
        x: u16,
        y: u16,
        score: u32,
        left: u32,
    },
    Leaderboard {
        round: u32,
    },
    RoundFinished {
        round: u32,
    },
    /// The hunt was deleted: the view starts again from nothing (a hunt
    /// created again under the id is a new one).
    Deleted {
        round: u32,
    },
    Gap {
        first_missed: u64,
        missed: u64,
    },
}

impl View {
    pub fn new(hunt: u32) -> View {
        View { hunt, ..View::default() }
    }

    /// The control plane's summary of the hunt (`GET /hunts/{id}`).
    pub fn load_summary(&mut self, v: &serde_json::Value) {
        if let Some(p) = v["players"].as_i64() {
            self.players = p;
            self.players_exact = true;
        }
        self.round = v["round"].as_u64().and_then(|r| u32::try_from(r).ok()).or(self.round);
        self.treasures_left = v["treasures_left"].as_u64().and_then(|r| u32::try_from(r).ok()).or(self.treasures_left);
        if let Some(top) = v["leaderboard"].as_array() {
            self.top = top
                .iter()
                .filter_map(|e| {
                    Some((u32::try_from(e["player"].as_u64()?).ok()?, u32::try_from(e["score"].as_u64()?).ok()?))
                })
                .collect();
        }
    }

    /// Takes one update; returns the notable changes in it.
    pub fn apply(&mut self, update: &Update<TreasureHunt>, now: Instant) -> Vec<Change> {
        let mut changes = Vec::new();
        match update {
            Update::Entries { entries, .. } => {
                for entry in entries {
                    match entry {
                        UpdateEntry::Applied { outcome, .. } => {
                            self.events += 1;
                            self.count_event(now);
                            match outcome {
                                HuntOutcome::Joined { .. } => self.players += 1,
                                HuntOutcome::Left => self.players -= 1,
                                HuntOutcome::Created { round } => self.round = Some(*round),
                                _ => {}
                            }
                        }
                        UpdateEntry::Broadcast(b) => {
                            self.broadcasts += 1;
                            changes.push(self.broadcast(b))
                        }
                    }
                }
            }
            Update::Gap { first_missed, missed, .. } => {
                self.gaps += 1;
                self.missed += missed;
                self.players_exact = false;
                changes.push(Change::Gap { first_missed: *first_missed, missed: *missed });
            }
            // The end of a deleted hunt's stream: its `Deleted` change came
            // with the hunt_deleted broadcast before it.
            Update::Ended { .. } => {}
        }
        changes
    }

    fn broadcast(&mut self, b: &HuntBroadcast) -> Change {
        match *b {
            HuntBroadcast::TreasureFound { round, player, x, y, value, score, treasures_left } => {
                self.round = Some(round);
                self.treasures_left = Some(treasures_left);
                let value = u32::from(value);
                self.finds.push_front((round, player, value, x, y));
                self.finds.truncate(FINDS_SHOWN);
                Change::Found { round, player, value, x, y, score, left: treasures_left }
            }
            HuntBroadcast::LeaderboardChanged { round, ref top } => {
                self.round = Some(round);
                self.top = top_pairs(top);
                Change::Leaderboard { round }
            }
            HuntBroadcast::RoundFinished { round, ref top } => {
                self.top = top_pairs(top);
                // The next round starts with a fresh field and board.
                self.round = Some(round + 1);
                self.treasures_left = None;
                Change::RoundFinished { round }
            }
            HuntBroadcast::HuntDeleted { round, .. } => {
                // The hunt's state goes; the watcher's own (what it
                // subscribed to, what it saw) stays.
                let kept = View {
                    hunt: self.hunt,
                    events: self.events,
                    gaps: self.gaps,
                    missed: self.missed,
                    reconnects: self.reconnects,
                    news_only: self.news_only,
                    players_unknown: self.players_unknown,
                    broadcasts: self.broadcasts,
                    ..View::default()
                };
                *self = kept;
                Change::Deleted { round }
            }
        }
    }

    fn count_event(&mut self, now: Instant) {
        self.roll(now);
        self.second_events += 1;
    }

    /// Closes the seconds that ended before `now`.
    pub fn roll(&mut self, now: Instant) {
        let start = *self.second_start.get_or_insert(now);
        let elapsed = now.saturating_duration_since(start);
        if elapsed >= Duration::from_secs(1) {
            // A second with no event after the counted one reads 0.
            self.events_per_s = if elapsed < Duration::from_secs(2) { self.second_events } else { 0 };
            self.second_events = 0;
            self.second_start = Some(start + Duration::from_secs(elapsed.as_secs()));
        }
    }

    /// The top 10 as text.
    pub fn top_text(&self) -> String {
        if self.top.is_empty() {
            return "nobody yet".to_string();
        }
        let places: Vec<String> =
            self.top.iter().enumerate().map(|(i, (p, s))| format!("{}. player {p} ({s})", i + 1)).collect();
        places.join(", ")
    }

    /// One status line.
    pub fn status_line(&self) -> String {
        let round = self.round.map_or("-".to_string(), |r| r.to_string());
        let players = if self.players_unknown {
            "players unknown (no --control)".to_string()
        } else {
            let n = if self.players_exact { self.players.to_string() } else { format!("~{}", self.players.max(0)) };
            format!("{n} player{}", if self.players.max(0) == 1 { "" } else { "s" })
        };
        let gaps = crate::plural(self.gaps, "gap");
        let mut line = if self.news_only {
            format!(
                "hunt {}: round {round}, {players}, {} news seen, {gaps} ({} missed)",
                self.hunt, self.broadcasts, self.missed
            )
        } else {
            format!(
                "hunt {}: round {round}, {players}, {} events/s, {} seen, {gaps} ({} missed)",
                self.hunt,
                self.events_per_s,
                crate::plural(self.events, "event"),
                self.missed
            )
        };
        if let Some(why) = &self.disconnected {
            line.push_str(&format!("; DISCONNECTED ({why}), reconnecting"));
        }
        line
    }

    /// The whole screen, for a terminal.
    pub fn screen(&self, target: &str) -> String {
        let mut s = String::new();
        s.push_str(&format!("trove watch: hunt {} on {target}   (Ctrl-C to stop)\n\n", self.hunt));
        if let Some(why) = &self.disconnected {
            s.push_str(&format!("  DISCONNECTED: {why}; reconnecting...\n\n"));
        }
        let players = if self.players_unknown {
            "? (no --control)".to_string()
        } else if self.players_exact {
            self.players.to_string()
        } else {
            format!("~{}", self.players.max(0))
        };
        s.push_str(&format!(
            "  round {:<6} players {:<8} treasures left {}\n",
            self.round.map_or("-".to_string(), |r| r.to_string()),
            players,
            self.treasures_left.map_or("-".to_string(), |t| t.to_string())
        ));
        if self.news_only {
            s.push_str(&format!(
                "  news seen {:<10} gaps {} ({} missed), reconnects {}\n\n",
                self.broadcasts, self.gaps, self.missed, self.reconnects
            ));
        } else {
            s.push_str(&format!(
                "  events/s {:<9} events seen {:<10} gaps {} ({} updates missed), reconnects {}\n\n",
                self.events_per_s, self.events, self.gaps, self.missed, self.reconnects
            ));
        }
        s.push_str("  top 10\n");
        if self.top.is_empty() {
            s.push_str("    nobody yet\n");
        }
        for (i, (player, score)) in self.top.iter().enumerate() {
            s.push_str(&format!("    {:>2}. player {player:<10} {score}\n", i + 1));
        }
        s.push_str("\n  last finds\n");
        if self.finds.is_empty() {
            s.push_str("    none yet\n");
        }
        for (round, player, value, x, y) in &self.finds {
            s.push_str(&format!("    round {round}: player {player} found {value} at ({x},{y})\n"));
        }
        s
    }
}

fn top_pairs(top: &Top10) -> Vec<(u32, u32)> {
    top.entries().iter().map(|e| (e.player, e.score)).collect()
}

/// A change as one line of the piped output.
pub fn change_line(hunt: u32, change: &Change, view: &View) -> String {
    match *change {
        Change::Found { round, player, value, x, y, score, left } => format!(
            "hunt {hunt}: round {round}: player {player} found {value} at ({x},{y}), score {score}; {left} treasures left"
        ),
        Change::Leaderboard { round } => format!("hunt {hunt}: round {round} top 10: {}", view.top_text()),
        Change::RoundFinished { round } => format!("hunt {hunt}: round {round} finished: {}", view.top_text()),
        Change::Deleted { round } => {
            format!("hunt {hunt}: deleted in round {round}; waiting for it to be created again")
        }
        Change::Gap { first_missed, missed } => {
            format!("hunt {hunt}: gap: missed {missed} updates from #{first_missed} (this watcher fell behind)")
        }
    }
}

/// What `trove watch` needs.
#[derive(Debug)]
pub struct WatchArgs {
    pub hunt: u32,
    pub client: ClientConfig,
    pub control: Option<SocketAddr>,
    /// Line output even on a terminal.
    pub plain: bool,
    /// Stop after this long (for scripts and tests).
    pub duration: Option<Duration>,
    /// Every event of the hunt, not its broadcasts alone.
    pub all_events: bool,
}

/// Runs the watcher until Ctrl-C, `--duration`, or a refusal that no
/// reconnect can cure (an unknown hunt is not one: the server accepts a
/// subscription to a hunt that may be created later).
pub fn run(args: WatchArgs) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("starting the runtime: {e}"))?;
    runtime.block_on(watch(args))
}

async fn watch(args: WatchArgs) -> Result<(), String> {
    let terminal = !args.plain && std::io::stdout().is_terminal();
    let mut view = View::new(args.hunt);
    view.news_only = !args.all_events;
    view.players_unknown = view.news_only && args.control.is_none();
    let target = args.client.addr.clone();
    refresh(&mut view, args.control).await;
    let started = Instant::now();
    let deadline = args.duration.map(|d| started + d);
    let mut out = std::io::stdout().lock();
    let mut backoff = BACKOFF_FIRST;
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    'connect: loop {
        let mut sub = match Subscriber::<TreasureHunt>::connect(args.client.clone()).await {
            Ok(s) => s,
            Err(e) if e.retryable() => {
                if !lost(&mut view, &e, terminal, &mut out, &target) {
                    return Ok(());
                }
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = &mut ctrl_c => return Ok(()),
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
                continue;
            }
            Err(e) => return Err(format!("connecting to {target}: {e}")),
        };
        let subscribed =
            if args.all_events { sub.subscribe(args.hunt).await } else { sub.subscribe_broadcasts(args.hunt).await };
        let next_seq = subscribed.map_err(|e| format!("subscribing to hunt {}: {e}", args.hunt))?;
        if view.disconnected.take().is_some() {
            view.reconnects += 1;
            // Whatever applied while we were away: the counts are the
            // control plane's again, if it is known.
            view.players_exact = false;
            refresh(&mut view, args.control).await;
            if !terminal && writeln!(out, "hunt {}: reconnected, from update #{next_seq}", args.hunt).is_err() {
                return Ok(());
            }
        } else if !terminal && writeln!(out, "hunt {}: watching from update #{next_seq}", args.hunt).is_err() {
            return Ok(());
        }
        backoff = BACKOFF_FIRST;
        let mut redraw = tokio::time::interval(if terminal { REDRAW_INTERVAL } else { Duration::from_secs(1) });
        let mut last_refresh = Instant::now();
        redraw.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            if deadline.is_some_and(|d| Instant::now() >= d) {
                let _ = writeln!(out, "{}", view.status_line());
                return Ok(());
            }
            tokio::select! {
                update = sub.next() => match update {
                    Some(Ok(update)) => {
                        if let Update::Ended { .. } = update {
                            // The hunt was deleted: watch the id again, for
                            // a hunt created again under it.
                            sub.subscribe(args.hunt)
                                .await
                                .map_err(|e| format!("subscribing to hunt {} again: {e}", args.hunt))?;
                            continue;
                        }
                        let changes = view.apply(&update, Instant::now());
                        if changes.iter().any(|c| matches!(c, Change::Gap { .. })) {
                            refresh(&mut view, args.control).await;
                        }
                        if !terminal {
                            for c in &changes {
                                if writeln!(out, "{}", change_line(args.hunt, c, &view)).is_err() {
                                    return Ok(());
                                }
                            }
                        }
                    }
                    Some(Err(e)) if !e.retryable() => return Err(format!("hunt {}: {e}", args.hunt)),
                    Some(Err(e)) => {
                        if !lost(&mut view, &e, terminal, &mut out, &target) {
                            return Ok(());
                        }
                        continue 'connect;
                    }
                    None => return Ok(()),
                },
                _ = redraw.tick() => {
                    view.roll(Instant::now());
                    // The broadcasts carry no joins and leaves: the count
                    // is the control plane's, read once a second.
                    if view.news_only && last_refresh.elapsed() >= NEWS_REFRESH_INTERVAL {
                        last_refresh = Instant::now();
                        refresh(&mut view, args.control).await;
                    }
                    let text = if terminal {
                        format!("\x1b[H\x1b[2J{}", view.screen(&target))
                    } else {
                        format!("{}\n", view.status_line())
                    };
                    if out.write_all(text.as_bytes()).and_then(|()| out.flush()).is_err() {
                        return Ok(());
                    }
                }
                _ = &mut ctrl_c => return Ok(()),
            }
        }
    }
}

/// Notes a lost connection; false if the output is gone (stop quietly).
fn lost(view: &mut View, e: &ClientError, terminal: bool, out: &mut impl Write, target: &str) -> bool {
    let first = view.disconnected.is_none();
    view.disconnected = Some(e.to_string());
    if terminal {
        out.write_all(format!("\x1b[H\x1b[2J{}", view.screen(target)).as_bytes()).and_then(|()| out.flush()).is_ok()
    } else if first {
        writeln!(out, "hunt {}: disconnected ({e}); reconnecting", view.hunt).is_ok()
    } else {
        true
    }
}

/// Reads the hunt's summary from the control plane, if one was given; a
/// control plane that does not answer leaves the view as it was.
async fn refresh(view: &mut View, control: Option<SocketAddr>) {
    let Some(addr) = control else { return };
    let path = format!("/hunts/{}", view.hunt);
    let reply = tokio::task::spawn_blocking(move || trove_bench::http::get(addr, &path, CONTROL_TIMEOUT))
        .await
        .ok()
        .and_then(|r| r.ok());
    match reply {
        Some(reply) if reply.status == 200 => {
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&reply.body) {
                view.load_summary(&v);
            }
        }
        // No such hunt (yet): nobody is in it.
        Some(reply) if reply.status == 404 => {
            view.players = 0;
            view.players_exact = true;
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use trove_client::UpdateEntry;
    use trove_core::Stamped;
    use trove_hunt::{Action, HuntEvent};

    fn applied(outcome: HuntOutcome) -> UpdateEntry<TreasureHunt> {
        let event = HuntEvent { hunt: 1, player: 1, action: Action::Join };
        UpdateEntry::Applied { event: Stamped { time_us: 0, event }, outcome }
    }

    /// A deleted hunt: the view starts again from nothing, keeping its
    /// counts of what it saw; the end of the stream changes nothing more.
    #[test]
    fn a_deleted_hunt_clears_the_view() {
        let t0 = Instant::now();
        let mut v = View::new(1);
        v.load_summary(&serde_json::json!({"players": 3, "round": 2, "treasures_left": 9,
            "leaderboard": [{"player": 7, "score": 40}]}));
        let entries = vec![
            applied(HuntOutcome::Deleted { round: 2 }),
            UpdateEntry::Broadcast(HuntBroadcast::HuntDeleted { round: 2, top: Top10::default() }),
        ];
        let changes = v.apply(&Update::Entries { world: 1, first_seq: 1, entries }, t0);
        assert_eq!(changes, vec![Change::Deleted { round: 2 }]);
        assert_eq!((v.players, v.round, v.top.len(), v.events), (0, None, 0, 1));
        assert!(change_line(1, &changes[0], &v).contains("deleted in round 2"));
        assert_eq!(v.apply(&Update::Ended { world: 1 }, t0), vec![]);
    }

    /// Watching the broadcasts alone, a delete does not turn the view
    /// into the all-events one: its status line stays the news line
    /// (a hand run printed "0 events/s, 2 events seen" after a delete).
    #[test]
    fn a_delete_keeps_what_the_watcher_subscribed_to_and_saw() {
        let t0 = Instant::now();
        let mut v = View::new(1);
        v.news_only = true;
        v.reconnects = 2;
        let found =
            HuntBroadcast::TreasureFound { round: 1, player: 5, x: 0, y: 0, value: 1, score: 1, treasures_left: 3 };
        let entries = vec![
            UpdateEntry::Broadcast(found),
            applied(HuntOutcome::Deleted { round: 1 }),
            UpdateEntry::Broadcast(HuntBroadcast::HuntDeleted { round: 1, top: Top10::default() }),
        ];
        v.apply(&Update::Entries { world: 1, first_seq: 1, entries }, t0);
        assert!(v.news_only);
        assert_eq!((v.broadcasts, v.reconnects), (2, 2));
        assert_eq!(v.status_line(), "hunt 1: round -, ~0 players, 2 news seen, 0 gaps (0 missed)");
    }

    /// Watching the broadcasts with no control plane, nothing tells the
    /// players count: it reads as unknown, not as "~0 players".
    #[test]
    fn without_a_control_plane_the_broadcasts_leave_the_players_unknown() {
        let mut v = View::new(1);
        v.news_only = true;
        v.players_unknown = true;
        assert_eq!(v.status_line(), "hunt 1: round -, players unknown (no --control), 0 news seen, 0 gaps (0 missed)");
        assert!(v.screen("x").contains("players ? (no --control)"), "{}", v.screen("x"));
    }

    /// Counts of one are singular, as everywhere else (issue 25, item 6).
    #[test]
    fn the_status_line_says_1_player_and_1_gap() {
        let t0 = Instant::now();
        let mut v = View::new(1);
        v.load_summary(&serde_json::json!({"players": 1, "round": 1}));
        v.apply(&Update::Gap { world: 1, first_missed: 5, missed: 1 }, t0);
        assert_eq!(v.status_line(), "hunt 1: round 1, ~1 player, 0 events/s, 0 events seen, 1 gap (1 missed)");
        v.apply(&Update::Entries { world: 1, first_seq: 6, entries: vec![applied(HuntOutcome::Left)] }, t0);
        assert!(v.status_line().contains(", 1 event seen,"), "{}", v.status_line());
    }

    #[test]
    fn the_view_counts_players_finds_and_gaps() {
        let t0 = Instant::now();
        let mut v = View::new(1);
        v.load_summary(&serde_json::json!({"players": 3, "round": 2, "treasures_left": 9,
            "leaderboard": [{"player": 7, "score": 40}]}));
        assert_eq!((v.players, v.players_exact, v.round, v.top.clone()), (3, true, Some(2), vec![(7, 40)]));
        let entries = vec![
            applied(HuntOutcome::Joined { x: 0, y: 0, score: 0 }),
            applied(HuntOutcome::Joined { x: 0, y: 0, score: 0 }),
            applied(HuntOutcome::Left),
            UpdateEntry::Broadcast(HuntBroadcast::TreasureFound {
                round: 2,
                player: 5,
                x: 3,
                y: 4,
                value: 9,
                score: 9,
                treasures_left: 8,
            }),
        ];
        let changes = v.apply(&Update::Entries { world: 1, first_seq: 1, entries }, t0);
        assert_eq!(v.players, 4);
        assert_eq!(v.events, 3);
        assert_eq!(v.treasures_left, Some(8));
        assert_eq!(v.finds.front(), Some(&(2, 5, 9, 3, 4)));
        assert_eq!(changes, vec![Change::Found { round: 2, player: 5, value: 9, x: 3, y: 4, score: 9, left: 8 }]);
        let changes = v.apply(&Update::Gap { world: 1, first_missed: 5, missed: 10 }, t0);
        assert_eq!(changes, vec![Change::Gap { first_missed: 5, missed: 10 }]);
        assert!(!v.players_exact);
        assert!(v.status_line().contains("~4 players"), "{}", v.status_line());
        assert!(v.screen("x").contains("player 5 found 9 at (3,4)"));
        // The rate: the first second's events are reported once it ends.
        v.roll(t0 + Duration::from_millis(1100));
        assert_eq!(v.events_per_s, 3);
        v.roll(t0 + Duration::from_millis(3500));
        assert_eq!(v.events_per_s, 0);
    }

    #[test]
    fn finds_are_bounded_and_newest_first() {
        let mut v = View::new(1);
        for i in 0..(FINDS_SHOWN as u32 + 3) {
            let b =
                HuntBroadcast::TreasureFound { round: 1, player: i, x: 0, y: 0, value: 1, score: 1, treasures_left: 0 };
            v.apply(
                &Update::Entries { world: 1, first_seq: 1, entries: vec![UpdateEntry::Broadcast(b)] },
                Instant::now(),
            );
        }
        assert_eq!(v.finds.len(), FINDS_SHOWN);
        assert_eq!(v.finds.front().map(|f| f.1), Some(FINDS_SHOWN as u32 + 2));
    }
}
