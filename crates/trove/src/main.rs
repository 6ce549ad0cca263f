use std::process::ExitCode;

use clap::Parser;
use trove::bench_engine::{self, EngineBenchArgs};
use trove::cli::{Bench, Cli, Command};
use trove::{bench_apply, workload_arg};
use trove_shard::Mode;

fn main() -> ExitCode {
    let cli = Cli::parse();
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
        Command::Bench(Bench::Apply(args)) => {
            let spec = workload_arg::resolve(&args.workload)?;
            let report = bench_apply::run(&spec, args.events, args.batch);
            if args.json {
                println!("{}", serde_json::to_string(&report).map_err(|e| e.to_string())?);
            } else {
                println!("{report}");
            }
            Ok(())
        }
        Command::Bench(Bench::Engine(args)) => {
            let spec = workload_arg::resolve(&args.workload)?;
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
            let bench = EngineBenchArgs {
                mode: Mode::parse(&args.mode)?,
                shards: args.shards.map_or(cores, |s| s as usize),
                producers: args.producers,
                events: args.events,
                batch_events: args.batch as usize,
                window: args.window as usize,
                pin_cores: args.pin,
            };
            let report = bench_engine::run(&spec, &bench)?;
            if args.json {
                println!("{}", serde_json::to_string(&report).map_err(|e| e.to_string())?);
            } else {
                println!("{report}");
            }
            Ok(())
        }
    }
}
