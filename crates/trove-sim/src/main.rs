//! `trove-sim`: run the simulator for one seed (and print what it did) or
//! for many (and print the first failing seed).

use std::process::ExitCode;
use std::time::Instant;

use clap::Parser;
use trove_sim::{ClusterBug, ClusterReport, Report, Verdict, run, run_cluster_with};

#[derive(Debug, Parser)]
#[command(
    name = "trove-sim",
    about = "Deterministic simulation of the engine (shard cores, journal, hub, recovery) under disk and network faults"
)]
struct Args {
    /// Replay one seed exactly, printing its settings, what it did and
    /// the faults it injected.
    #[arg(long, conflicts_with = "seeds")]
    seed: Option<u64>,
    /// Run this many seeds; print the first failing one and seeds/s.
    #[arg(long)]
    seeds: Option<u64>,
    /// The first seed of `--seeds`.
    #[arg(long, default_value_t = 0)]
    from: u64,
    /// Switch on a planted mistake (builds with the `planted` feature):
    /// ack-before-sync, skip-crc, keep-covered, remove-uncovered,
    /// skip-segment-dir-sync, forget-dedup-at-snapshot, apply-retry-twice.
    #[arg(long)]
    planted: Option<String>,
    /// Simulate the cluster mode instead: nodes owning partitions through
    /// leases, each partition's log a simulated JetStream stream, crashes,
    /// stalls past the lease and takeovers.
    #[arg(long)]
    cluster: bool,
    /// With `--cluster`, a planted mistake of the simulated node or log:
    /// skip-fence, refused-as-acked.
    #[arg(long, requires = "cluster")]
    planted_cluster: Option<String>,
}

fn print_cluster_report(r: &ClusterReport) {
    println!("cluster seed {}: {}", r.seed, r.config.summary());
    for line in &r.events {
        println!("  sim:   {line}");
    }
    for line in &r.faults {
        println!("  fault: {line}");
    }
    println!("  {} takeovers, {} messages, {} events acknowledged", r.takeovers, r.messages, r.acked);
    match &r.verdict {
        Verdict::Failed(why) => println!("cluster seed {}: FAILED: {why}", r.seed),
        _ => println!("cluster seed {}: passed", r.seed),
    }
}

/// `--cluster`: one seed printed, or many until the first failure.
fn main_cluster(args: &Args) -> ExitCode {
    let bug = match args.planted_cluster.as_deref().map(str::parse::<ClusterBug>) {
        None => ClusterBug::None,
        Some(Ok(bug)) => bug,
        Some(Err(e)) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    if let Some(seed) = args.seed {
        let report = run_cluster_with(seed, bug);
        print_cluster_report(&report);
        return if report.verdict.failed() { ExitCode::FAILURE } else { ExitCode::SUCCESS };
    }
    let count = args.seeds.unwrap_or(1000);
    let started = Instant::now();
    let (mut takeovers, mut acked) = (0, 0);
    for (i, seed) in (args.from..args.from.saturating_add(count)).enumerate() {
        let report = run_cluster_with(seed, bug);
        if report.verdict.failed() {
            print_cluster_report(&report);
            let planted = args.planted_cluster.as_ref().map_or(String::new(), |b| format!(" --planted-cluster {b}"));
            println!(
                "first failing cluster seed: {seed} (after {} seeds); replay with `trove-sim --cluster --seed \
                 {seed}{planted}`",
                i + 1
            );
            return ExitCode::FAILURE;
        }
        takeovers += report.takeovers;
        acked += report.acked;
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{count} cluster seeds from {} passed ({takeovers} takeovers, {acked} events acknowledged) in {secs:.1} s: \
         {:.0} seeds/s",
        args.from,
        count as f64 / secs.max(1e-9)
    );
    ExitCode::SUCCESS
}

fn print_report(r: &Report) {
    println!("seed {}: {}", r.seed, r.config.summary());
    for line in &r.events {
        println!("  sim:   {line}");
    }
    for line in &r.faults {
        println!("  fault: {line}");
    }
    println!("  {} boots, {} batches recovered, {} events acknowledged", r.boots, r.batches, r.acked);
    match &r.verdict {
        Verdict::Passed => println!("seed {}: passed", r.seed),
        Verdict::Detected(why) => println!("seed {}: passed (damage detected: {why})", r.seed),
        Verdict::Failed(why) => println!("seed {}: FAILED: {why}", r.seed),
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    if args.cluster {
        return main_cluster(&args);
    }
    if let Some(name) = &args.planted {
        #[cfg(feature = "planted")]
        match name.parse() {
            Ok(bug) => trove_journal::planted::set(bug),
            Err(e) => {
                eprintln!("{e}");
                return ExitCode::from(2);
            }
        }
        #[cfg(not(feature = "planted"))]
        {
            eprintln!("--planted {name}: build with `--features planted`");
            return ExitCode::from(2);
        }
    }
    if let Some(seed) = args.seed {
        let report = run(seed);
        print_report(&report);
        return if report.verdict.failed() { ExitCode::FAILURE } else { ExitCode::SUCCESS };
    }
    let count = args.seeds.unwrap_or(1000);
    let started = Instant::now();
    let mut detected = 0u64;
    for (i, seed) in (args.from..args.from.saturating_add(count)).enumerate() {
        let report = run(seed);
        match &report.verdict {
            Verdict::Passed => {}
            Verdict::Detected(_) => detected += 1,
            Verdict::Failed(_) => {
                print_report(&report);
                println!("first failing seed: {seed} (after {} seeds); replay with `trove-sim --seed {seed}`", i + 1);
                return ExitCode::FAILURE;
            }
        }
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{count} seeds from {} passed ({detected} with damage detected) in {secs:.1} s: {:.0} seeds/s",
        args.from,
        count as f64 / secs.max(1e-9)
    );
    ExitCode::SUCCESS
}
