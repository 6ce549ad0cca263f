use std::process::ExitCode;

use clap::Parser;
use trove::cli::{Bench, Cli, Command};
use trove::{bench_apply, workload_arg};

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
    }
}
