use std::process::ExitCode;

use trove::cli::{Cli, Command, Journal};
use trove::{cluster_cmd, journal_cmd};

/// mimalloc instead of glibc's malloc: batches are allocated on one thread
/// and freed on another (I/O thread -> shard -> journal), which glibc
/// serves with arena locks, consolidation and `madvise` trims that cost TLB
/// shootdowns on both cores. mimalloc frees them into per-thread pages and
/// asks for transparent huge pages for its own regions, so the player
/// table's random reads stop missing the TLB (`MIMALLOC_ALLOW_THP=0` turns
/// that off). docs/decisions/0023 has the measurements.
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
/// for 100-400 ms at a time (docs/decisions/0024).
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
            // `trove serve` logs through its subscriber once it has one
            // (so that a JSON log stays JSON to its last line).
            if tracing::dispatcher::has_been_set() {
                tracing::error!("{message}");
            } else {
                eprintln!("trove: error: {message}");
            }
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> Result<(), String> {
    match cli.command {
        Command::Serve(args) => trove::serve::run(&args),
        Command::Bench(bench) => trove_bench::run(&bench, trove::serve::default_shards).map_err(|e| e.to_string()),
        Command::Journal(Journal::Verify(_)) => unreachable!("answered in `main`, with exit statuses of its own"),
        Command::Journal(Journal::Inspect(_)) => unreachable!("answered in `main`, with exit statuses of its own"),
        Command::Replay(args) if args.cluster.is_some() => cluster_cmd::replay(&args),
        Command::Replay(args) => journal_cmd::replay(&args.data, args.json),
        Command::Watch(args) => trove::watch::run(trove::watch::WatchArgs {
            hunt: args.hunt,
            client: args.client.config()?,
            control: args.control(),
            plain: args.plain,
            duration: args.seconds.map(std::time::Duration::from_secs),
            all_events: args.all_events,
        }),
        Command::Send(args) => {
            let input = match (args.file, args.events.is_empty()) {
                (Some(file), _) => trove::send::Input::File(file),
                (None, false) => trove::send::Input::Args(args.events),
                (None, true) => return Err("give events as arguments, or --file FILE (- for standard input)".into()),
            };
            trove::send::run(trove::send::SendArgs { client: args.client.config()?, input }).map(|_| ())
        }
        Command::Auth(trove::cli::Auth::Add(args)) => trove::serve::auth_add(&args),
    }
}
