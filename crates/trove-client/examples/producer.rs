//! A game server feeding one treasure hunt to trove.
//!
//! Creates the hunt (an existing one is fine), joins its players, then
//! sends moves, digs and scans at a steady rate, and prints per second how
//! many events were acknowledged and what the rules answered.
//!
//! ```text
//! cargo run -p trove-client --example producer -- [--token T] [--tls-ca FILE [--tls-server-name NAME]] [ADDR] [HUNT] [EVENTS] [RATE]
//!   --token T  the token (`trove auth add`), else TROVE_TOKEN, else none
//!   --tls-ca  connect with TLS, trusting this CA certificate (PEM)
//!   ADDR    server address               (default 127.0.0.1:7400)
//!   HUNT    hunt id                      (default 1)
//!   EVENTS  events after the joins       (default 1000000)
//!   RATE    events per second, 0 = as fast as the window allows (default 100000)
//! ```

use std::time::Duration;

use tokio::time::Instant;
use trove_client::{AckedBatch, Acks, ClientConfig, ClientError, ClientTls, Producer, SendError, Token};
use trove_core::SplitMix64;
use trove_hunt::{Band, HuntConfig, HuntEvent, HuntOutcome, Reject, TreasureHunt};

const PLAYERS: u32 = 1000;

const HUNT_CONFIG: HuntConfig = HuntConfig {
    width: 256,
    height: 256,
    seed: 42,
    treasures_per_round: 512,
    value_min: 1,
    value_max: 100,
    dig_cooldown_ms: 50,
    step_max: 4,
    players_max: PLAYERS,
};

/// Outcome kinds counted, in print order; rejections by reason after them.
const KINDS: [&str; 10] =
    ["created", "joined", "left", "moved", "dig_found", "dig_nothing", "hint_hot", "hint_warm", "hint_cold", "deleted"];
const TALLY_LEN: usize = KINDS.len() + Reject::ALL.len();

fn tally_index(o: &HuntOutcome) -> usize {
    match *o {
        HuntOutcome::Created { .. } => 0,
        HuntOutcome::Joined { .. } => 1,
        HuntOutcome::Left => 2,
        HuntOutcome::Moved { .. } => 3,
        HuntOutcome::DigFound { .. } => 4,
        HuntOutcome::DigNothing => 5,
        HuntOutcome::Hint { band: Band::Hot } => 6,
        HuntOutcome::Hint { band: Band::Warm } => 7,
        HuntOutcome::Hint { band: Band::Cold } => 8,
        HuntOutcome::Deleted { .. } => 9,
        HuntOutcome::Rejected { reason } => KINDS.len() + reason as usize - 1,
    }
}

fn tally_name(i: usize) -> String {
    match KINDS.get(i) {
        Some(k) => (*k).to_string(),
        None => format!("rejected:{}", Reject::ALL[i - KINDS.len()].name()),
    }
}

fn print_tally(tally: &[u64; TALLY_LEN]) -> String {
    let parts: Vec<String> =
        tally.iter().enumerate().filter(|(_, n)| **n > 0).map(|(i, n)| format!("{} {n}", tally_name(i))).collect();
    parts.join(", ")
}

#[derive(Debug)]
struct Args {
    addr: String,
    hunt: u32,
    events: u64,
    rate: u64,
    token: Option<Token>,
    tls: Option<ClientTls>,
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

fn args() -> Result<Args, String> {
    let mut a: Vec<String> = std::env::args().skip(1).collect();
    if a.iter().any(|x| x == "-h" || x == "--help") {
        return Err(
            "usage: producer [--token T] [--tls-ca FILE [--tls-server-name NAME]] [ADDR] [HUNT] [EVENTS] [RATE]".into(),
        );
    }
    let token = take_token(&mut a)?;
    let tls = tls_flags(&mut a)?;
    let num = |i: usize, default: u64, what: &str| -> Result<u64, String> {
        a.get(i).map_or(Ok(default), |s| s.replace('_', "").parse().map_err(|e| format!("{what} {s:?}: {e}")))
    };
    Ok(Args {
        addr: a.first().cloned().unwrap_or_else(|| "127.0.0.1:7400".into()),
        hunt: u32::try_from(num(1, 1, "HUNT")?).map_err(|e| format!("HUNT: {e}"))?,
        events: num(2, 1_000_000, "EVENTS")?,
        rate: num(3, 100_000, "RATE")?,
        token,
        tls,
    })
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

/// Reads the acknowledgements: counts per second and per outcome.
async fn read_acks(mut acks: Acks<TreasureHunt>) -> Result<(u64, [u64; TALLY_LEN]), ClientError> {
    let mut total = 0u64;
    let mut tally = [0u64; TALLY_LEN];
    let mut second = [0u64; TALLY_LEN];
    let mut in_second = 0u64;
    let start = Instant::now();
    let mut tick = tokio::time::interval_at(start + Duration::from_secs(1), Duration::from_secs(1));
    let count = |ack: &AckedBatch<TreasureHunt>, into: &mut [u64; TALLY_LEN]| {
        for o in ack.outcomes.iter().flatten() {
            into[tally_index(o)] += 1;
        }
    };
    loop {
        tokio::select! {
            ack = acks.next() => match ack {
                Some(Ok(ack)) => {
                    total += u64::from(ack.count);
                    in_second += u64::from(ack.count);
                    count(&ack, &mut second);
                }
                Some(Err(ClientError::BatchRefused { first_seq, count, error })) => {
                    eprintln!("batch of {count} from {first_seq} refused: {error}");
                }
                Some(Err(e)) => return Err(e),
                None => break,
            },
            _ = tick.tick() => {
                println!("{:>4}s  acked {in_second:>9}/s  total {total:>11}  | {}",
                    start.elapsed().as_secs(), print_tally(&second));
                for (t, s) in tally.iter_mut().zip(second.iter_mut()) {
                    *t += std::mem::take(s);
                }
                in_second = 0;
            }
        }
    }
    for (t, s) in tally.iter_mut().zip(second) {
        *t += s;
    }
    Ok((total, tally))
}

/// A random move, dig or scan by a random player.
fn play(rng: &mut SplitMix64, hunt: u32) -> HuntEvent {
    let player = rng.below(PLAYERS);
    match rng.below(100) {
        0..60 => {
            let step = i32::from(HUNT_CONFIG.step_max);
            let d = |rng: &mut SplitMix64| (rng.below(2 * step as u32 + 1) as i32 - step) as i16;
            HuntEvent::move_by(hunt, player, d(rng), d(rng))
        }
        60..85 => HuntEvent::dig(hunt, player),
        _ => HuntEvent::scan(hunt, player),
    }
}

#[tokio::main]
async fn main() {
    let args = match args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    if let Err(e) = run(args).await {
        eprintln!("producer: {e}");
        std::process::exit(1);
    }
}

async fn run(args: Args) -> Result<(), ClientError> {
    HUNT_CONFIG.validate().expect("the example's hunt config is valid");
    let config =
        ClientConfig { token: args.token.clone(), tls: args.tls.clone(), ..ClientConfig::new(args.addr.clone()) };
    let (mut producer, acks) = Producer::<TreasureHunt>::connect(config).await?;
    println!(
        "connected to {} as producer {} (batches of up to {} events); hunt {}, {} players, {} events at {}",
        args.addr,
        producer.producer_id(),
        producer.batch_events_max(),
        args.hunt,
        PLAYERS,
        args.events,
        if args.rate == 0 { "full speed".to_string() } else { format!("{}/s", args.rate) },
    );
    let reader = tokio::spawn(read_acks(acks));

    // An existing hunt answers rejected:hunt_exists and the
    // players already in it rejected:already_joined; play goes on.
    producer.send_wait(HuntEvent::create(args.hunt, HUNT_CONFIG)).await?;
    for player in 0..PLAYERS {
        producer.send_wait(HuntEvent::join(args.hunt, player)).await?;
    }
    producer.flush().await?;

    let mut rng = SplitMix64::new(u64::from(args.hunt) ^ producer.producer_id());
    let start = Instant::now();
    let mut sent = 0u64;
    if args.rate == 0 {
        // The fast path: `send` never waits; only when the open batch and
        // the window are full does the loop await `ready`.
        let mut event = play(&mut rng, args.hunt);
        while sent < args.events {
            match producer.send(event) {
                Ok(_seq) => {
                    sent += 1;
                    event = play(&mut rng, args.hunt);
                }
                Err(SendError::Full(e)) => {
                    event = e;
                    producer.ready().await?;
                }
                Err(SendError::Closed(_, e)) => return Err(e),
            }
        }
    } else {
        let tick = Duration::from_millis(1);
        while sent < args.events {
            // Catch up with the schedule, then sleep a tick (closing the
            // open batch when its linger runs out meanwhile).
            let due = (start.elapsed().as_secs_f64() * args.rate as f64) as u64;
            while sent < due.min(args.events) {
                producer.send_wait(play(&mut rng, args.hunt)).await?;
                sent += 1;
            }
            producer.idle_until(Instant::now() + tick).await?;
        }
    }
    let stats = producer.close().await?;
    let elapsed = start.elapsed();
    let (total, tally) = reader.await.expect("the ack reader does not panic")?;
    println!(
        "done: {total} events acknowledged ({sent} played in {:.2}s, {:.0}/s); {} batches sent, {} resent, {} busy, {} reconnects",
        elapsed.as_secs_f64(),
        sent as f64 / elapsed.as_secs_f64(),
        stats.batches_sent,
        stats.batches_resent,
        stats.busy,
        stats.reconnects,
    );
    println!("outcomes: {}", print_tally(&tally));
    Ok(())
}
