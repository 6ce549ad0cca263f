//! `trove bench`'s command line: the clap arguments the `trove` binary
//! flattens into its command tree.

use clap::{Args, Subcommand};

/// A server's HOST:PORT to connect to (`--target`, `--metrics`,
/// `--target-ws`), as `trove serve` reads its listen addresses: an IP
/// address as it is, a host name (`localhost:7400`) through the system
/// resolver, once, when the arguments are parsed; the first IPv4 address
/// of several.
pub fn host_port(text: &str) -> Result<std::net::SocketAddr, String> {
    use std::net::ToSocketAddrs;
    if let Ok(addr) = text.parse() {
        return Ok(addr);
    }
    let addrs: Vec<std::net::SocketAddr> = text
        .to_socket_addrs()
        .map_err(|e| {
            format!("server address `{text}`: {e} (expected host:port, e.g. 127.0.0.1:7400 or localhost:7400)")
        })?
        .collect();
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or(addrs.first())
        .copied()
        .ok_or(format!("server address `{text}` resolves to no address"))
}

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct Bench {
    #[command(subcommand)]
    pub command: Option<BenchCommand>,
    #[command(flatten)]
    pub load: BenchLoad,
}

/// `trove bench` without a subcommand: open-loop load over TCP.
#[derive(Debug, Args)]
pub struct BenchLoad {
    /// A built-in workload (standard, hot, join-storm) or a workload TOML file.
    #[arg(long, default_value = "standard")]
    pub workload: String,
    /// Offered events per second of a single run [default: 1000000].
    #[arg(long)]
    pub rate: Option<f64>,
    /// Seconds a single run lasts.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// constant, or poisson (the count per 100 us slot is a Poisson draw).
    #[arg(long, default_value = "constant")]
    pub arrivals: String,
    /// Climb steps of offered load to the knee (implied by several --modes
    /// without --rate).
    #[arg(long)]
    pub ramp: bool,
    /// The ramp's first step, events per second (low: the per-event modes'
    /// knees are tens of thousands).
    #[arg(long, default_value_t = 10_000.0)]
    pub ramp_from: f64,
    /// Each fine step offers this times the last (1.1: +10%).
    #[arg(long, default_value_t = 1.1)]
    pub ramp_factor: f64,
    /// Until a step first fails, each step offers this times the last; then
    /// the ramp goes back to the last passing step and climbs by
    /// --ramp-factor (1 to climb by --ramp-factor from the start).
    #[arg(long, default_value_t = 2.0)]
    pub ramp_coarse: f64,
    /// The ramp stops at this offered rate.
    #[arg(long, default_value_t = 100_000_000.0)]
    pub ramp_max: f64,
    /// Seconds each trial of a ramp step is held (a step runs --trials of
    /// them).
    #[arg(long, default_value_t = 1.0)]
    pub step_seconds: f64,
    /// Trials per ramp step; the step is judged on their medians (odd, so
    /// the median is one of them). 1: one trial decides.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=i64::from(crate::load::TRIALS_MAX)))]
    pub trials: u32,
    /// Seconds a ramp runs at its first rate before its first step, not
    /// counted (a cold start: connections, caches, the server's first
    /// batches). 0: none.
    #[arg(long, default_value_t = 2.0)]
    pub warmup: f64,
    /// Most steps in a ramp.
    #[arg(long, default_value_t = 40, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub steps_max: u32,
    /// p99 latency to acknowledgement a step must stay within, ms.
    #[arg(long, default_value_t = 10.0)]
    pub slo_ms: f64,
    /// Execution modes to run side by side, comma separated (sharded,
    /// task-per-event, spawn-blocking-per-event), each on a fresh server.
    #[arg(long, default_value = "sharded", value_delimiter = ',')]
    pub modes: Vec<String>,
    /// Drive a server that is already running at HOST:PORT instead.
    #[arg(long, value_parser = host_port)]
    pub target: Option<std::net::SocketAddr>,
    /// The token for a --target started with --auth (`trove auth add`);
    /// without it, TROVE_TOKEN.
    #[arg(long)]
    pub token: Option<String>,
    /// The run's hunts are N..N+hunts (the workload's hunt h is hunt N+h)
    /// [default: 1000000000 with --target, far from hand-made hunts; 0 on
    /// the fresh servers].
    #[arg(long, value_name = "N")]
    pub hunt_base: Option<u32>,
    /// With --target: play into the hunt range even if the server already
    /// holds hunts in it (without it the run stops before play, naming
    /// them).
    #[arg(long)]
    pub force: bool,
    /// With --target: its control plane HOST:PORT, to scrape /metrics
    /// (and to list /hunts: the range must be free). If that node is in a
    /// cluster (its GET /cluster answers a map), the run drives the whole
    /// cluster through the SDK's routing (each event to its partition's
    /// owner), scrapes every node's /metrics and reports each node's
    /// acknowledged events/s.
    #[arg(long, value_parser = host_port)]
    pub metrics: Option<std::net::SocketAddr>,
    /// With --target: its producers connect with TLS, trusting the CA
    /// certificates of this PEM file (the timed subscribers and the
    /// /metrics scrape do not speak TLS: add --watch 0, and no
    /// --subscribers or --metrics).
    #[arg(long, requires = "target")]
    pub tls_ca: Option<std::path::PathBuf>,
    /// With --tls-ca: the name the server's certificate must carry
    /// [default: the host of --target].
    #[arg(long, requires = "tls_ca")]
    pub tls_server_name: Option<String>,
    /// Producer connections; each owns a partition of the hunts and offers
    /// its share of the rate. The server pays per frame, so more
    /// connections at the same linger mean more, smaller frames.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub connections: u32,
    /// Most events per batch (EVENTS frame), by default the SDK's; a batch
    /// also closes when it has lingered --linger-us.
    #[arg(long, default_value_t = trove_client::BATCH_EVENTS_MAX_DEFAULT, value_parser = clap::value_parser!(u32).range(1..=65_536))]
    pub batch: u32,
    /// Batches each connection keeps in flight at most.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub window: u32,
    /// Events each connection keeps unanswered at most (the SDK's
    /// `unacked_events_max`, by default the SDK's; it also caps --batch).
    #[arg(long, default_value_t = trove_client::UNACKED_EVENTS_MAX_DEFAULT, value_parser = clap::value_parser!(u32).range(1..=65_536))]
    pub unacked_events: u32,
    /// The SDK's `queue_delay_target`, microseconds: a connection lets
    /// fewer events be unanswered when its round trips pass the least seen
    /// by more than this (0, the SDK's default: only BUSY shrinks its
    /// window).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=60_000_000))]
    pub queue_delay_target_us: u64,
    /// Hunts whose updates are timed, one subscriber connection each
    /// (0: none); ignored with --subscribers.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(0..=1024))]
    pub watch: u32,
    /// Fan-out: open N subscriber connections (apart from the producers),
    /// each watching one hunt, connected and subscribed before the first
    /// step and kept for the run. Each step then reports the updates
    /// delivered per second (entries and bytes), their latency p50/p99/max
    /// from each event's intended send time (subscribers that keep up),
    /// gaps (fast and slow apart), the server's CPU per delivered update
    /// and the generator's own CPU on the subscribers. Every watcher of a
    /// hunt gets every event of it: updates/s = sum over hunts of watchers
    /// x that hunt's events/s. A fresh server admits them (connections_max);
    /// a --target must allow N + --connections connections.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=i64::from(crate::load::fanout::SUBSCRIBERS_MAX)))]
    pub subscribers: u32,
    /// Which hunt each subscriber watches: zipf:S (drawn from a Zipf
    /// distribution of exponent S over the hunts by number, hunt 0 the
    /// most watched; seeded by the workload, so the same every run), all
    /// (spread evenly over all hunts), or a hunt number (every subscriber
    /// watches it: one hot hunt). Numbers are the workload's, 0..hunts:
    /// hunt N is --hunt-base + N on the server.
    #[arg(long, default_value = "zipf:1.3")]
    pub subscriber_hunts: String,
    /// The subscribers speak WebSocket JSON (the server's WebSocket
    /// endpoint) instead of TCP protocol v1.
    #[arg(long)]
    pub subscribers_ws: bool,
    /// With --subscribers-ws: each subscriber's `hello` asks for
    /// `"compression": "deflate"`, and it inflates the binary updates
    /// before it parses them (docs/decisions/0054).
    #[arg(long)]
    pub subscribers_ws_deflate: bool,
    /// The subscribers take their hunts' broadcasts alone (finds, top-10
    /// changes, round ends), not every event: counted, not timed.
    #[arg(long)]
    pub subscribers_broadcasts_only: bool,
    /// Of the --subscribers, K read deliberately slowly
    /// (--slow-subscriber-bytes-per-s each, with a small socket receive
    /// buffer); they are reported apart and not timed.
    #[arg(long, default_value_t = 0)]
    pub slow_subscribers: u32,
    /// How fast a slow subscriber reads, bytes per second.
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..=1_000_000_000))]
    pub slow_subscriber_bytes_per_s: u32,
    /// Threads reading the subscribers' sockets (each a current-thread
    /// runtime over its share of them) [default: 1, 2 from 1000 subscribers].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=i64::from(crate::load::fanout::THREADS_MAX)))]
    pub subscriber_threads: Option<u32>,
    /// A subscriber that read something waits this long before it reads
    /// again, microseconds (0: it reads as soon as more is there), so one
    /// read takes what came meanwhile, as a browser reading once a frame
    /// (16,667) would. The wait counts in the update latency.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=1_000_000))]
    pub subscriber_read_interval_us: u64,
    /// The fresh servers' `[limits] subscriber_push_interval_ms` (how often
    /// at most a subscriber connection is woken; 0: for every applied
    /// batch) [default: the server's].
    #[arg(long, value_parser = clap::value_parser!(u64).range(0..=1000))]
    pub subscriber_push_interval_ms: Option<u64>,
    /// The fresh servers' fan-out budget, WAKEUPS,UPDATES per second
    /// (`[limits] subscriber_wakeups_per_sec_max` and
    /// `subscriber_updates_per_sec_max`; 0,0: none) [default: the server's].
    #[arg(long)]
    pub subscriber_budget: Option<String>,
    /// With --target and --subscribers-ws: the target's WebSocket HOST:PORT.
    /// Not needed (and not used) when --metrics names a cluster node: each
    /// subscriber connects to its node's WebSocket address from the map.
    #[arg(long, value_parser = host_port)]
    pub target_ws: Option<std::net::SocketAddr>,
    /// The fresh servers' shards (sharded) or runtime workers (per-event
    /// modes) [default: the server's: the cores less its I/O workers].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub shards: Option<u32>,
    /// The fresh servers' journal: none (in memory; the per-event modes
    /// have no journal), or group (`trove serve`'s default), always,
    /// interval=<ms>, never.
    #[arg(long, default_value = "none")]
    pub fsync: String,
    /// Threads of the fresh servers' I/O runtime.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub io_workers: u32,
    /// Threads of the fresh servers' WebSocket runtime (`trove serve
    /// --ws-io-workers`) [default: the server's, 1].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub ws_io_workers: Option<u32>,
    /// Niceness the fresh servers' WebSocket threads add to theirs
    /// (`trove serve --ws-io-nice`): 0 against 10 compares fan-out at
    /// ingest's priority with fan-out below it [default: the server's, 10].
    #[arg(long, value_parser = clap::value_parser!(u32).range(0..=19))]
    pub ws_io_nice: Option<u32>,
    /// Threads of the generator's runtime (the SDK's I/O tasks; a thread
    /// of its own paces the arrivals).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub client_workers: u32,
    /// How often the pacer sends what has arrived, microseconds: shorter
    /// ticks mean lower latency and smaller batches.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(50..=100_000))]
    pub tick_us: u64,
    /// How long a batch stays open for more events, microseconds (it
    /// closes sooner when full): the client's share of the latency, traded
    /// for fewer, larger frames.
    #[arg(long, default_value_t = 400, value_parser = clap::value_parser!(u64).range(0..=1_000_000))]
    pub linger_us: u64,
    /// Seconds a step's backlog and acknowledgements may take to clear
    /// after it; past that the mode's run ends.
    #[arg(long, default_value_t = 10.0)]
    pub drain_timeout: f64,
    /// After the knee, run a step at this many times it (e.g. 2.0) and
    /// report its goodput against the knee's, BUSY answers per second and
    /// the p99 of the admitted events. The knee is --knee, or else the
    /// ramp's (--overload implies --ramp).
    #[arg(long)]
    pub overload: Option<f64>,
    /// With --overload: the knee's goodput, events per second; a step at it
    /// runs first (for --duration), then the overload step.
    #[arg(long)]
    pub knee: Option<f64>,
    /// Write every figure as JSON to this file (`-`: stdout).
    #[arg(long)]
    pub json: Option<std::path::PathBuf>,
    /// Write a Markdown report with SVG charts into this directory.
    #[arg(long)]
    pub report: Option<std::path::PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Apply a workload in-process on one thread: the rules' own speed.
    Apply(BenchApply),
    /// Drive a workload in-process through the executor at the maximum rate.
    Engine(BenchEngine),
    /// Drive a workload end to end over loopback TCP through the client
    /// SDK at the maximum rate; acknowledged events per second.
    Net(BenchNet),
}

#[derive(Debug, Args)]
pub struct BenchNet {
    /// Execution mode of the in-process server.
    #[arg(long, default_value = "sharded")]
    pub mode: String,
    /// Shard threads (sharded) or runtime workers (per-event modes)
    /// [default: as `trove serve`: the --data directory's if it has a
    /// journal, else the cores less the I/O workers, at least 1].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub shards: Option<u32>,
    /// group, always, interval=<ms> or never; `none` runs the server in
    /// memory.
    #[arg(long, default_value = "group")]
    pub fsync: String,
    /// Journal directory of the in-process server (default: a fresh
    /// temporary one, removed afterwards).
    #[arg(long)]
    pub data: Option<std::path::PathBuf>,
    /// Producer connections, each owning a partition of the hunts.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub connections: u32,
    /// Events to measure after setup, over all connections.
    #[arg(long, default_value_t = 20_000_000, value_parser = clap::value_parser!(u64).range(1..=1_000_000_000))]
    pub events: u64,
    /// Events per batch (EVENTS frame).
    #[arg(long, default_value_t = 16_384, value_parser = clap::value_parser!(u32).range(1..=65_536))]
    pub batch: u32,
    /// Batches each connection keeps in flight: --batch x --window events
    /// unacknowledged (the SDK's `unacked_events_max` for this closed-loop
    /// producer), at most 65536, the server's retry window.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub window: u32,
    /// How long a partly filled batch waits for more events, in microseconds.
    #[arg(long, default_value_t = 1000)]
    pub linger_us: u64,
    /// Ask for one outcome per event in every acknowledgement.
    #[arg(long)]
    pub outcomes: bool,
    /// Threads of the in-process server's I/O runtime.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub io_workers: u32,
    /// Threads of the client's runtime.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub client_workers: u32,
    /// Drive a server that is already running at HOST:PORT instead.
    #[arg(long, value_parser = host_port)]
    pub target: Option<std::net::SocketAddr>,
    /// The token for a --target started with --auth (`trove auth add`);
    /// without it, TROVE_TOKEN.
    #[arg(long)]
    pub token: Option<String>,
    /// Connect with TLS, trusting the CA certificates of this PEM file
    /// (a --target started with --tls-cert, or the in-process server
    /// given --tls-cert and --tls-key).
    #[arg(long)]
    pub tls_ca: Option<std::path::PathBuf>,
    /// With --tls-ca: the name the server's certificate must carry
    /// [default: the host of the address connected to].
    #[arg(long, requires = "tls_ca")]
    pub tls_server_name: Option<String>,
    /// The in-process server's TLS certificate chain (PEM), with --tls-key.
    #[arg(long, requires_all = ["tls_key", "tls_ca"], conflicts_with = "target")]
    pub tls_cert: Option<std::path::PathBuf>,
    /// The in-process server's TLS private key (PEM).
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<std::path::PathBuf>,
    /// Run N interleaved pairs, in memory then with --fsync's journal (a
    /// fresh directory for each: under --data if given), and report each
    /// pair's ratio and their median.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=100))]
    pub pairs: Option<u32>,
    #[command(flatten)]
    pub run: RunArgs,
}

#[derive(Debug, Args)]
pub struct BenchEngine {
    /// Execution mode: sharded, task-per-event or spawn-blocking-per-event.
    #[arg(long, default_value = "sharded")]
    pub mode: String,
    /// Shard threads (sharded) or runtime workers (per-event modes); default: one per core.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub shards: Option<u32>,
    /// Producer threads, each owning a partition of the hunts.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub producers: u32,
    /// Events to measure after setup.
    #[arg(long, default_value_t = 10_000_000, value_parser = clap::value_parser!(u64).range(1..=200_000_000))]
    pub events: u64,
    /// Events per submitted batch.
    #[arg(long, default_value_t = 4096, value_parser = clap::value_parser!(u32).range(1..=65_536))]
    pub batch: u32,
    /// Batches each producer keeps in flight.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub window: u32,
    /// Pin shard threads to cores.
    #[arg(long)]
    pub pin: bool,
    /// Journal into this data directory (recovering what it holds first).
    #[arg(long)]
    pub data: Option<std::path::PathBuf>,
    /// With --data: group, always, interval=<ms> or never.
    #[arg(long, default_value = "group")]
    pub fsync: String,
    /// Outcomes kept per producer and shard to answer retries (0: retries
    /// are still never applied twice, but answered as duplicates).
    #[arg(long, default_value_t = 65_536, value_parser = clap::value_parser!(u32).range(0..=16_777_216))]
    pub dedup_window: u32,
    /// With --data: snapshot every this many milliseconds (default 60000).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=86_400_000))]
    pub snapshot_ms: Option<u64>,
    /// Where event times come from: supplied (the workload's virtual clock;
    /// same input, same hash) or wall (the engine's clock, as in production).
    #[arg(long, default_value = "supplied")]
    pub clock: String,
    /// Append a line `producer first_seq last_seq` for every acknowledged
    /// batch to this file (crash tests compare it with the journal).
    #[arg(long)]
    pub ack_log: Option<std::path::PathBuf>,
    /// With --data: run N interleaved pairs, without a journal then with
    /// one (each in a fresh directory `pair-K` under --data, removed
    /// afterwards), and report each pair's ratio and their median.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=100))]
    pub pairs: Option<u32>,
    #[command(flatten)]
    pub run: RunArgs,
}

#[derive(Debug, Args)]
pub struct BenchApply {
    /// Events to apply after setup (setup creates the hunts and joins every player).
    #[arg(long, default_value_t = 20_000_000, value_parser = clap::value_parser!(u64).range(1..=10_000_000_000))]
    pub events: u64,
    /// Events per applied batch, as a shard would drain them.
    #[arg(long, default_value_t = 4096, value_parser = clap::value_parser!(u32).range(1..=1_048_576))]
    pub batch: u32,
    #[command(flatten)]
    pub run: RunArgs,
}

/// What `bench apply`, `bench engine` and `bench net` share: the workload
/// and how the report is printed.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// A built-in workload (standard, hot, join-storm) or a workload TOML file.
    #[arg(long, default_value = "standard")]
    pub workload: String,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}
