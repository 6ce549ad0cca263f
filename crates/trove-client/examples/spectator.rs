//! A spectator: subscribes to hunts and prints their live updates, one
//! line per entry (applied events with their outcomes, broadcasts), and
//! the gaps where the server dropped updates because we fell behind.
//!
//! ```text
//! cargo run -p trove-client --example spectator -- [--token T] [--tls-ca FILE [--tls-server-name NAME]] [ADDR] [HUNT...]
//!   --token T  the token (`trove auth add`), else TROVE_TOKEN, else none
//!   --tls-ca  connect with TLS, trusting this CA certificate (PEM)
//!   ADDR  server address   (default 127.0.0.1:7400)
//!   HUNT  hunt ids         (default 1)
//! ```

use std::io::Write;

use trove_client::{ClientConfig, ClientError, ClientTls, Subscriber, Token, Update, UpdateEntry};
use trove_hunt::{Action, HuntBroadcast, HuntEvent, HuntOutcome, Top10, TreasureHunt};

fn event_text(e: &HuntEvent) -> String {
    let who = format!("player {}", e.player);
    match e.action {
        Action::Create(c) => format!(
            "create {}x{} map, {} treasures of {}..={}, {} players max",
            c.width, c.height, c.treasures_per_round, c.value_min, c.value_max, c.players_max
        ),
        Action::Join => format!("{who} joins"),
        Action::Leave => format!("{who} leaves"),
        Action::Move { dx, dy } => format!("{who} moves ({dx:+},{dy:+})"),
        Action::Dig => format!("{who} digs"),
        Action::Scan => format!("{who} scans"),
        Action::Delete => "delete the hunt".into(),
        Action::Invalid => format!("{who}: invalid event"),
    }
}

fn outcome_text(o: &HuntOutcome) -> String {
    match *o {
        HuntOutcome::Created { round } => format!("created, round {round}"),
        HuntOutcome::Joined { x, y, score } => format!("joined at ({x},{y}), score {score}"),
        HuntOutcome::Left => "left".into(),
        HuntOutcome::Moved { x, y } => format!("now at ({x},{y})"),
        HuntOutcome::DigFound { value, score } => format!("FOUND {value}, score {score}"),
        HuntOutcome::DigNothing => "nothing".into(),
        HuntOutcome::Hint { band } => format!("{band:?}").to_lowercase(),
        HuntOutcome::Rejected { reason } => format!("rejected: {}", reason.name()),
        HuntOutcome::Deleted { round } => format!("deleted in round {round}"),
    }
}

fn top_text(top: &Top10) -> String {
    let places: Vec<String> = top
        .entries()
        .iter()
        .enumerate()
        .map(|(i, e)| format!("{}. player {} ({})", i + 1, e.player, e.score))
        .collect();
    if places.is_empty() { "nobody".into() } else { places.join(", ") }
}

fn broadcast_text(b: &HuntBroadcast) -> String {
    match b {
        HuntBroadcast::TreasureFound { round, player, x, y, value, score, treasures_left } => format!(
            "** round {round}: player {player} found {value} at ({x},{y}), score {score}; {treasures_left} treasures left"
        ),
        HuntBroadcast::LeaderboardChanged { round, top } => format!("** round {round} leaderboard: {}", top_text(top)),
        HuntBroadcast::RoundFinished { round, top } => format!("** round {round} finished: {}", top_text(top)),
        HuntBroadcast::HuntDeleted { round, top } => format!("** hunt deleted in round {round}: {}", top_text(top)),
    }
}

/// Takes `--token T` out of the arguments; without it, `TROVE_TOKEN`.
fn take_token(args: &mut Vec<String>) -> Result<Option<Token>, String> {
    let arg = match args.iter().position(|a| a == "--token") {
        Some(i) if i + 1 < args.len() => {
            let t = args.remove(i + 1);
            args.remove(i);
            Some(t)
        }
        Some(_) => return Err("--token needs a value".into()),
        None => None,
    };
    Token::from_arg_or_env(arg.as_deref()).map_err(|e| e.to_string())
}

#[tokio::main]
async fn main() {
    let mut a: Vec<String> = std::env::args().skip(1).collect();
    if a.iter().any(|x| x == "-h" || x == "--help") {
        eprintln!("usage: spectator [--token T] [--tls-ca FILE [--tls-server-name NAME]] [ADDR] [HUNT...]");
        std::process::exit(2);
    }
    let token = match take_token(&mut a) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("spectator: {e}");
            std::process::exit(2);
        }
    };
    let tls = match tls_flags(&mut a) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("spectator: {e}");
            std::process::exit(2);
        }
    };
    let addr = a.first().cloned().unwrap_or_else(|| "127.0.0.1:7400".into());
    let hunts: Result<Vec<u32>, _> = a.iter().skip(1).map(|h| h.parse::<u32>()).collect();
    let hunts = match hunts {
        Ok(h) if h.is_empty() => vec![1],
        Ok(h) => h,
        Err(e) => {
            eprintln!("HUNT: {e}");
            std::process::exit(2);
        }
    };
    if let Err(e) = run(ClientConfig { token, tls, ..ClientConfig::new(addr) }, &hunts).await {
        eprintln!("spectator: {e}");
        std::process::exit(1);
    }
}

async fn run(config: ClientConfig, hunts: &[u32]) -> Result<(), ClientError> {
    let mut sub = Subscriber::<TreasureHunt>::connect(config).await?;
    for &hunt in hunts {
        let next_seq = sub.subscribe(hunt).await?;
        eprintln!("watching hunt {hunt} from update #{next_seq}");
    }
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    while let Some(update) = sub.next().await {
        match update? {
            Update::Entries { world: hunt, first_seq, entries } => {
                for (seq, entry) in (first_seq..).zip(&entries) {
                    let line = match entry {
                        UpdateEntry::Applied { event, outcome } => format!(
                            "hunt {hunt} #{seq} t={}.{:06}s  {} -> {}",
                            event.time_us / 1_000_000,
                            event.time_us % 1_000_000,
                            event_text(&event.event),
                            outcome_text(outcome)
                        ),
                        UpdateEntry::Broadcast(b) => format!("hunt {hunt} #{seq} {}", broadcast_text(b)),
                    };
                    // A closed pipe (`| head`) ends the spectator quietly.
                    if writeln!(out, "{line}").is_err() {
                        return Ok(());
                    }
                }
            }
            Update::Gap { world: hunt, first_missed, missed } => {
                let last = first_missed + missed.saturating_sub(1);
                if writeln!(out, "hunt {hunt} -- gap: missed #{first_missed}..=#{last} ({missed} updates), too slow --")
                    .is_err()
                {
                    return Ok(());
                }
            }
            Update::Ended { world: hunt } => {
                if writeln!(out, "hunt {hunt} -- ended (deleted) --").is_err() {
                    return Ok(());
                }
            }
        }
        if out.flush().is_err() {
            return Ok(());
        }
    }
    Ok(())
}

/// Takes `--tls-ca FILE` (connect with TLS, trusting that CA) and
/// `--tls-server-name NAME` (the name the certificate must carry, if not
/// ADDR's host) out of the arguments.
fn tls_flags(a: &mut Vec<String>) -> Result<Option<ClientTls>, String> {
    let mut take = |flag: &str| -> Result<Option<String>, String> {
        let Some(i) = a.iter().position(|x| x == flag) else { return Ok(None) };
        if i + 1 >= a.len() {
            return Err(format!("{flag} needs a value"));
        }
        let value = a.remove(i + 1);
        a.remove(i);
        Ok(Some(value))
    };
    let ca = take("--tls-ca")?;
    let name = take("--tls-server-name")?;
    ClientTls::from_flags(ca.as_deref().map(std::path::Path::new), name.as_deref()).map_err(|e| e.to_string())
}
