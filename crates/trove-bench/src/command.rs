//! `trove bench ...` run: the flags of the subcommand given turned into
//! its harness's arguments, the harness run, its report printed.

use std::path::Path;

use trove_shard::{ClockMode, FsyncPolicy, JournalConfig, Mode};

use crate::cli::{Bench, BenchCommand, BenchEngine, BenchNet};
use crate::engine::{self, EngineBenchArgs};
use crate::error::Error;
use crate::net::{self, NetBenchArgs};
use crate::{apply, load_cmd, pairs, workload_arg};

/// The shard count `trove serve` picks when none is given, from its data
/// directory, the cores and its I/O workers: `bench net`'s in-process
/// server picks the same way.
pub type ServeShards = fn(Option<&Path>, usize, usize) -> usize;

/// Runs `trove bench` as `bench` says and prints its report.
pub fn run(bench: &Bench, serve_shards: ServeShards) -> Result<(), Error> {
    match &bench.command {
        Some(BenchCommand::Apply(args)) => {
            let spec = workload_arg::resolve(&args.run.workload)?;
            let report = apply::run(&spec, args.events, args.batch);
            print_report(&report, args.run.json)
        }
        Some(BenchCommand::Engine(args)) => {
            let spec = workload_arg::resolve(&args.run.workload)?;
            let bench = engine_args(args).map_err(Error::Usage)?;
            match args.pairs {
                None => print_report(&engine::run(&spec, &bench).map_err(Error::Run)?, args.run.json),
                Some(n) => print_report(&pairs::engine(&spec, &bench, n).map_err(Error::Run)?, args.run.json),
            }
        }
        Some(BenchCommand::Net(args)) => {
            let spec = workload_arg::resolve(&args.run.workload)?;
            let bench = net_args(args, serve_shards).map_err(Error::Usage)?;
            match args.pairs {
                None => print_report(&net::run(&spec, &bench).map_err(Error::Run)?, args.run.json),
                Some(n) => print_report(&pairs::net(&spec, &bench, n).map_err(Error::Run)?, args.run.json),
            }
        }
        None => load_cmd::run(&bench.load),
    }
}

/// `bench engine`'s flags, checked.
fn engine_args(args: &BenchEngine) -> Result<EngineBenchArgs, String> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    Ok(EngineBenchArgs {
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
                let mut j = JournalConfig::new(dir, args.fsync.parse::<FsyncPolicy>().map_err(|e| e.to_string())?);
                if let Some(ms) = args.snapshot_ms {
                    j.snapshot_interval = Some(std::time::Duration::from_millis(ms));
                }
                Some(j)
            }
            None => None,
        },
        ack_log: args.ack_log.clone(),
        dedup_window: args.dedup_window as usize,
    })
}

/// `bench net`'s flags, checked.
fn net_args(args: &BenchNet, serve_shards: ServeShards) -> Result<NetBenchArgs, String> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let bench = NetBenchArgs {
        mode: Mode::parse(&args.mode).map_err(|e| e.to_string())?,
        // As `trove serve` picks them: the server here is one.
        shards: args
            .shards
            .map_or_else(|| serve_shards(args.data.as_deref(), cores, args.io_workers as usize), |s| s as usize),
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
        token: trove_client::Token::from_arg_or_env(args.token.as_deref()).map_err(|e| format!("--token: {e}"))?,
        tls: trove_client::ClientTls::from_flags(args.tls_ca.as_deref(), args.tls_server_name.as_deref())
            .map_err(|e| e.to_string())?,
        server_tls: match (&args.tls_cert, &args.tls_key) {
            (Some(cert), Some(key)) => Some(trove_server::tls::ServerTls::load(cert, key).map_err(|e| e.to_string())?),
            _ => None,
        },
    };
    if bench.fsync.is_some() && bench.mode != Mode::Sharded {
        return Err(format!("--mode {} runs without a journal: add --fsync none", bench.mode.name()));
    }
    Ok(bench)
}

fn print_report<R: serde::Serialize + std::fmt::Display>(report: &R, json: bool) -> Result<(), Error> {
    if json {
        println!("{}", serde_json::to_string(report).map_err(|e| Error::Run(e.to_string()))?);
    } else {
        println!("{report}");
    }
    Ok(())
}
