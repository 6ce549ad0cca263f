use std::process::ExitCode;

use trove::bench_engine::{self, EngineBenchArgs};
use trove::bench_net::{self, NetBenchArgs};
use trove::cli::{Bench, BenchCommand, Cli, Command, Journal};
use trove::{bench_apply, journal_cmd, pairs, workload_arg};
use trove_shard::{ClockMode, FsyncPolicy, JournalConfig, Mode};

/// mimalloc instead of glibc's malloc: batches are allocated on one thread
/// and freed on another (I/O thread -> shard -> journal), which glibc
/// serves with arena locks, consolidation and `madvise` trims that cost TLB
/// shootdowns on both cores. mimalloc frees them into per-thread pages and
/// asks for transparent huge pages for its own regions, so the player
/// table's random reads stop missing the TLB (`MIMALLOC_ALLOW_THP=0` turns
/// that off). docs/benchmarks.md, "The allocator", has the measurements.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's number for its `purge_delay` option (`mi_option_e` in
/// mimalloc v3's `mimalloc.h`, which libmimalloc-sys 0.1.49, as locked in
/// Cargo.lock, builds).
const MI_OPTION_PURGE_DELAY: std::ffi::c_int = 15;

#[allow(unsafe_code)]
unsafe extern "C" {
    fn mi_option_set(option: std::ffi::c_int, value: std::ffi::c_long);
}

/// Freed memory stays with the process for reuse instead of going back to
/// the OS a second after it is freed (mimalloc's default), unless
/// `MIMALLOC_PURGE_DELAY` says otherwise. An engine's memory is its state
/// and its bounded queues, so what it gives back it soon faults in again;
/// and on a VM that reports free pages to its host (virtio-balloon, as on
/// this project's machines) each return makes the host drop and later
/// re-provide those pages, which stalled the journal's writes and syncs
/// for 100-400 ms at a time (docs/benchmarks.md, "Memory given back").
fn keep_freed_memory() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: `mi_option_set` stores a value in mimalloc's option
        // table (any thread, any time); -1 is `purge_delay`'s documented
        // "never purge".
        #[allow(unsafe_code)]
        unsafe {
            mi_option_set(MI_OPTION_PURGE_DELAY, -1);
        }
    }
}

fn main() -> ExitCode {
    keep_freed_memory();
    let cli = trove::cli::parse();
    // `journal verify` tells damage found (1) from nothing checked (2).
    if let Command::Journal(Journal::Verify(args)) = &cli.command {
        return journal_cmd::verify(&args.data, args.json);
    }
    // `journal inspect` tells a hunt with no events (1) from an error (2).
    if let Command::Journal(Journal::Inspect(args)) = &cli.command {
        let (data, hunt, limit, json) = (&args.data, args.hunt, args.limit, args.json);
        return journal_cmd::inspect(&journal_cmd::InspectArgs { data, hunt, limit, json });
    }
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("trove: error: {message}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> Result<(), String> {
    match cli.command {
        Command::Serve(args) => trove::serve::run(&args),
        Command::Bench(Bench { command: Some(BenchCommand::Apply(args)), .. }) => {
            let spec = workload_arg::resolve(&args.workload)?;
            let report = bench_apply::run(&spec, args.events, args.batch);
            print_report(&report, args.json)
        }
        Command::Bench(Bench { command: Some(BenchCommand::Engine(args)), .. }) => {
            let spec = workload_arg::resolve(&args.workload)?;
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
            let bench = EngineBenchArgs {
                mode: Mode::parse(&args.mode).map_err(|e| e.to_string())?,
                shards: args.shards.map_or(cores, |s| s as usize),
                producers: args.producers,
                events: args.events,
                batch_events: args.batch as usize,
                window: args.window as usize,
                pin_cores: args.pin,
                clock: match args.clock.as_str() {
                    "supplied" => ClockMode::Supplied,
                    "wall" => ClockMode::Wall,
                    other => return Err(format!("unknown clock `{other}`: expected supplied or wall")),
                },
                journal: match &args.data {
                    Some(dir) => {
                        let mut j =
                            JournalConfig::new(dir, args.fsync.parse::<FsyncPolicy>().map_err(|e| e.to_string())?);
                        if let Some(ms) = args.snapshot_ms {
                            j.snapshot_interval = Some(std::time::Duration::from_millis(ms));
                        }
                        Some(j)
                    }
                    None => None,
                },
                ack_log: args.ack_log.clone(),
                dedup_window: args.dedup_window as usize,
            };
            match args.pairs {
                None => print_report(&bench_engine::run(&spec, &bench)?, args.json),
                Some(n) => print_report(&pairs::engine(&spec, &bench, n)?, args.json),
            }
        }
        Command::Bench(Bench { command: Some(BenchCommand::Net(args)), .. }) => {
            let spec = workload_arg::resolve(&args.workload)?;
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
            let bench = NetBenchArgs {
                mode: Mode::parse(&args.mode).map_err(|e| e.to_string())?,
                // As `trove serve` picks them: the server here is one.
                shards: args.shards.map_or_else(
                    || trove::serve::default_shards(args.data.as_deref(), cores, args.io_workers as usize),
                    |s| s as usize,
                ),
                fsync: match args.fsync.as_str() {
                    "none" => None,
                    p => Some(p.parse::<FsyncPolicy>().map_err(|e| e.to_string())?),
                },
                data: args.data.clone(),
                connections: args.connections,
                events: args.events,
                batch_events: args.batch,
                window_batches: args.window,
                linger: std::time::Duration::from_micros(args.linger_us),
                outcomes: args.outcomes,
                io_workers: args.io_workers as usize,
                client_workers: args.client_workers as usize,
                target: args.target,
            };
            if bench.fsync.is_some() && bench.mode != Mode::Sharded {
                return Err(format!("--mode {} runs without a journal: add --fsync none", bench.mode.name()));
            }
            match args.pairs {
                None => print_report(&bench_net::run(&spec, &bench)?, args.json),
                Some(n) => print_report(&pairs::net(&spec, &bench, n)?, args.json),
            }
        }
        Command::Bench(Bench { command: None, load }) => trove::load_cmd::run(&load),
        Command::Journal(Journal::Verify(_)) => unreachable!("answered in `main`, with exit statuses of its own"),
        Command::Journal(Journal::Inspect(_)) => unreachable!("answered in `main`, with exit statuses of its own"),
        Command::Replay(args) => journal_cmd::replay(&args.data, args.json),
    }
}

fn print_report<R: serde::Serialize + std::fmt::Display>(report: &R, json: bool) -> Result<(), String> {
    if json {
        println!("{}", serde_json::to_string(report).map_err(|e| e.to_string())?);
    } else {
        println!("{report}");
    }
    Ok(())
}
