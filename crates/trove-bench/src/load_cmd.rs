//! `trove bench` (no subcommand): checks the flags, runs the load
//! generator, prints the summary and writes --json and --report.

use std::io::Write;
use std::time::Duration;

use trove_shard::{FsyncPolicy, Mode};

use trove_workload::WorkloadSpec;

use crate::cli::BenchLoad;
use crate::error::Error;
use crate::load::arrivals::Arrivals;
use crate::load::claim::{HuntRange, TARGET_HUNT_BASE_DEFAULT};
use crate::load::fanout::{FleetArgs, HuntChoice};
use crate::load::{self, LoadArgs, OverloadArgs, RampArgs, ServerArgs};
use crate::workload_arg;

/// Largest `--overload` factor: far past any knee already.
const OVERLOAD_FACTOR_MAX: f64 = 100.0;

fn positive(flag: &str, v: f64) -> Result<f64, String> {
    if v.is_finite() && v > 0.0 { Ok(v) } else { Err(format!("--{flag} must be a positive number, not {v}")) }
}

fn seconds(flag: &str, v: f64) -> Result<Duration, String> {
    let v = positive(flag, v)?;
    if v > 86_400.0 {
        return Err(format!("--{flag} must be at most 86400 seconds"));
    }
    Ok(Duration::from_secs_f64(v))
}

/// The run `flags` ask for, checked.
pub fn args(flags: &BenchLoad) -> Result<LoadArgs, Error> {
    let workload = workload_arg::resolve(&flags.workload)?;
    checked(flags, workload).map_err(Error::Usage)
}

/// The run `flags` ask for with `workload`, checked.
fn checked(flags: &BenchLoad, workload: WorkloadSpec) -> Result<LoadArgs, String> {
    let modes: Vec<String> = flags.modes.iter().map(|m| m.trim().to_string()).filter(|m| !m.is_empty()).collect();
    if modes.is_empty() {
        return Err("--modes names no mode".into());
    }
    for m in &modes {
        Mode::parse(m).map_err(|e| e.to_string())?;
    }
    if modes.iter().enumerate().any(|(i, m)| modes[..i].contains(m)) {
        return Err("--modes names a mode twice".into());
    }
    let fsync = match flags.fsync.as_str() {
        "none" => None,
        p => {
            p.parse::<FsyncPolicy>().map_err(|e| e.to_string())?;
            if let Some(m) = modes.iter().find(|m| m.as_str() != "sharded") {
                return Err(format!("--modes {m} runs without a journal: compare modes with --fsync none"));
            }
            Some(p.to_string())
        }
    };
    if flags.target.is_some() && (modes.len() > 1 || modes[0] != "sharded") {
        return Err("--target drives one running server: drop --modes".into());
    }
    if flags.metrics.is_some() && flags.target.is_none() {
        return Err("--metrics names the control plane of a --target".into());
    }
    let overload = match (flags.overload, flags.knee) {
        (None, None) => None,
        (None, Some(_)) => return Err("--knee is the knee for --overload: add --overload".into()),
        (Some(factor), knee) => {
            if !(factor.is_finite() && factor > 1.0 && factor <= OVERLOAD_FACTOR_MAX) {
                return Err(format!("--overload must be above 1 and at most {OVERLOAD_FACTOR_MAX}, not {factor}"));
            }
            Some(OverloadArgs { factor, knee: knee.map(|k| positive("knee", k)).transpose()? })
        }
    };
    // Without a knee given, the ramp finds it.
    let ramp =
        flags.ramp || (flags.rate.is_none() && modes.len() > 1) || overload.as_ref().is_some_and(|o| o.knee.is_none());
    if flags.ramp && overload.as_ref().is_some_and(|o| o.knee.is_some()) {
        return Err("--knee gives the knee: drop --ramp".into());
    }
    let ramp_factor = positive("ramp-factor", flags.ramp_factor)?;
    let ramp_coarse = positive("ramp-coarse", flags.ramp_coarse)?;
    if ramp_factor <= 1.0 || ramp_coarse < 1.0 {
        return Err("--ramp-factor must be above 1 and --ramp-coarse at least 1".into());
    }
    if flags.trials.is_multiple_of(2) {
        return Err(format!(
            "--trials must be odd (a step is judged on the middle trial's figures), not {}",
            flags.trials
        ));
    }
    let slo_ms = positive("slo-ms", flags.slo_ms)?;
    if slo_ms > 3_600_000.0 {
        return Err("--slo-ms must be at most 3600000 (an hour)".into());
    }
    let fanout = fanout(flags, workload.hunts)?;
    let tls = match &flags.tls_ca {
        Some(_) if flags.watch > 0 || fanout.is_some() || flags.metrics.is_some() => {
            return Err("--tls-ca: only the producers speak TLS; add --watch 0, and leave out --subscribers and \
                        --metrics"
                .into());
        }
        ca => trove_client::ClientTls::from_flags(ca.as_deref(), flags.tls_server_name.as_deref())
            .map_err(|e| e.to_string())?,
    };
    if flags.target_ws.is_some() && (flags.target.is_none() || !flags.subscribers_ws) {
        return Err("--target-ws names the WebSocket listener of a --target, for --subscribers-ws".into());
    }
    // Whether --subscribers-ws against a --target needs --target-ws is
    // known once the target is asked whether it is a cluster node
    // (`load::run`): the cluster's map gives every node's address.
    if flags.force && flags.target.is_none() {
        return Err("--force plays into a --target's existing hunts: add --target".into());
    }
    let hunt_base = flags.hunt_base.unwrap_or(if flags.target.is_some() { TARGET_HUNT_BASE_DEFAULT } else { 0 });
    HuntRange::new(hunt_base, workload.hunts)?;
    let exe = std::env::current_exe().map_err(|e| format!("finding the trove binary: {e}"))?;
    Ok(LoadArgs {
        workload,
        arrivals: Arrivals::parse(&flags.arrivals)?,
        rate: positive("rate", flags.rate.unwrap_or(1_000_000.0))?,
        duration: seconds("duration", flags.duration)?,
        ramp: ramp
            .then(|| -> Result<RampArgs, String> {
                Ok(RampArgs {
                    from: positive("ramp-from", flags.ramp_from)?,
                    factor: ramp_factor,
                    coarse: ramp_coarse,
                    max: positive("ramp-max", flags.ramp_max)?,
                    step: seconds("step-seconds", flags.step_seconds)?,
                    steps_max: flags.steps_max,
                    trials: flags.trials,
                    warmup: match flags.warmup {
                        0.0 => Duration::ZERO,
                        w => seconds("warmup", w)?,
                    },
                })
            })
            .transpose()?,
        modes,
        target: flags.target,
        target_metrics: flags.metrics,
        tls,
        server: ServerArgs {
            exe,
            shards: flags.shards,
            fsync,
            io_workers: flags.io_workers,
            ws_io_workers: flags.ws_io_workers,
            ws_io_nice: flags.ws_io_nice,
            subscriber_push_interval_ms: flags.subscriber_push_interval_ms,
            subscriber_budget: flags.subscriber_budget.as_deref().map(parse_budget).transpose()?,
        },
        connections: flags.connections,
        batch_events: flags.batch,
        window_batches: flags.window,
        unacked_events: flags.unacked_events,
        queue_delay_target: (flags.queue_delay_target_us > 0)
            .then(|| Duration::from_micros(flags.queue_delay_target_us)),
        watch_hunts: flags.watch,
        fanout,
        target_ws: flags.target_ws,
        slo_p99: Duration::from_secs_f64(slo_ms / 1e3),
        client_workers: flags.client_workers as usize,
        tick: Duration::from_micros(flags.tick_us),
        linger: Duration::from_micros(flags.linger_us),
        drain_timeout: seconds("drain-timeout", flags.drain_timeout)?,
        progress: true,
        token: trove_client::Token::from_arg_or_env(flags.token.as_deref()).map_err(|e| format!("--token: {e}"))?,
        overload,
        hunt_base,
        force: flags.force,
    })
}

/// `--subscriber-budget WAKEUPS,UPDATES`.
fn parse_budget(s: &str) -> Result<(u64, u64), String> {
    let bad = || format!("--subscriber-budget {s}: expected WAKEUPS,UPDATES (per second each; 0 for no limit)");
    let (w, u) = s.split_once(',').ok_or_else(bad)?;
    Ok((w.trim().parse().map_err(|_| bad())?, u.trim().parse().map_err(|_| bad())?))
}

/// The subscriber fleet the flags ask for, checked.
fn fanout(flags: &BenchLoad, hunts: u32) -> Result<Option<FleetArgs>, String> {
    let hunts_choice = HuntChoice::parse(&flags.subscriber_hunts)?;
    if flags.subscribers == 0 {
        let fleet_flag = flags.subscribers_ws
            || flags.subscribers_ws_deflate
            || flags.subscribers_broadcasts_only
            || flags.slow_subscribers > 0
            || flags.subscriber_threads.is_some()
            || flags.subscriber_read_interval_us > 0
            || flags.subscriber_hunts != "zipf:1.3";
        return if fleet_flag { Err("the subscriber flags need --subscribers N".into()) } else { Ok(None) };
    }
    if let HuntChoice::One(h) = hunts_choice
        && h >= hunts
    {
        return Err(format!("--subscriber-hunts {h}: the workload has hunts 0..{hunts}"));
    }
    if flags.subscribers_ws_deflate && !flags.subscribers_ws {
        return Err("--subscribers-ws-deflate compresses WebSocket subscribers' updates: add --subscribers-ws".into());
    }
    if flags.slow_subscribers > flags.subscribers {
        return Err(format!(
            "--slow-subscribers {} is more than --subscribers {}",
            flags.slow_subscribers, flags.subscribers
        ));
    }
    Ok(Some(FleetArgs {
        subscribers: flags.subscribers,
        hunts: hunts_choice,
        ws: flags.subscribers_ws,
        deflate: flags.subscribers_ws_deflate,
        slow: flags.slow_subscribers,
        slow_bytes_per_s: flags.slow_subscriber_bytes_per_s,
        threads: flags.subscriber_threads.unwrap_or(if flags.subscribers >= 1000 { 2 } else { 1 }),
        read_interval: Duration::from_micros(flags.subscriber_read_interval_us),
        token: trove_client::Token::from_arg_or_env(flags.token.as_deref()).map_err(|e| format!("--token: {e}"))?,
        broadcasts_only: flags.subscribers_broadcasts_only,
    }))
}

/// Runs the load generator as `flags` say, prints its summary and writes
/// `--json` and `--report`.
pub fn run(flags: &BenchLoad) -> Result<(), Error> {
    let args = args(flags)?;
    let outcome = load::run(&args).map_err(Error::Run)?;
    // With --json - the JSON alone goes to stdout.
    if flags.json.as_ref().is_some_and(|p| p.as_os_str() == "-") {
        eprintln!("{}", load::summary(&outcome, args.ramp.is_some()));
    } else {
        println!("{}", load::summary(&outcome, args.ramp.is_some()));
    }
    if let Some(path) = &flags.json {
        let json = load::to_json(&outcome, args.ramp.is_some()).map_err(Error::Run)?;
        if path.as_os_str() == "-" {
            println!("{json}");
        } else {
            let write = |source| Error::Write { path: path.clone(), source };
            let mut f = std::fs::File::create(path).map_err(write)?;
            writeln!(f, "{json}").map_err(write)?;
        }
    }
    if let Some(dir) = &flags.report {
        let command = std::env::args().map(|a| shell_word(&a)).collect::<Vec<_>>().join(" ");
        let written =
            load::report::write(dir, &outcome.runs, outcome.comparison.as_ref(), &command).map_err(Error::Report)?;
        for p in written {
            eprintln!("trove bench: wrote {}", p.display());
        }
    }
    Ok(())
}

fn shell_word(a: &str) -> String {
    if !a.is_empty() && a.chars().all(|c| c.is_ascii_alphanumeric() || "-_=.,/:".contains(c)) {
        a.to_string()
    } else {
        format!("'{}'", a.replace('\'', r"'\''"))
    }
}
