//! The command tree.

use clap::{Args, Parser, Subcommand};
pub use trove_bench::cli::{Bench, BenchApply, BenchCommand, BenchEngine, BenchLoad, BenchNet};

#[derive(Debug, Parser)]
#[command(name = "trove", version, about = "A deterministic game event engine", propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

// Parsed once per process: the size of the bench flags does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the engine: the TCP data plane (protocol v1), the WebSocket
    /// endpoint and the journal, until SIGINT or SIGTERM.
    Serve(Serve),
    /// Measure the engine. Without a subcommand: the open-loop load
    /// generator (a single run at --rate, or --ramp to find the knee; --modes
    /// compares execution modes, each on a fresh server).
    Bench(Bench),
    /// Check and read a data directory's journal.
    #[command(subcommand)]
    Journal(Journal),
    /// Rebuild the state from a journal offline and print its hashes.
    Replay(Replay),
    /// Watch a hunt live: players, round, top 10, last finds and gaps, and
    /// events/s with --all-events (a screen on a terminal; a line per
    /// change when piped).
    Watch(Watch),
    /// Send events (JSON lines, as on the WebSocket endpoint) from the
    /// arguments, a file or standard input; prints each outcome as JSON.
    Send(Send),
    /// Manage the tokens of an auth file (`trove serve --auth FILE`).
    #[command(subcommand)]
    Auth(Auth),
}

/// A client command's server when no --target is given: `trove serve`'s
/// default data plane.
pub const TARGET_DEFAULT: &str = "127.0.0.1:7400";

/// `trove serve`'s default control plane, beside [`TARGET_DEFAULT`].
pub const CONTROL_DEFAULT: std::net::SocketAddr =
    std::net::SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 7480);

/// The server a client command talks to.
#[derive(Debug, Args)]
pub struct ClientArgs {
    /// The server's TCP data plane, HOST:PORT (a host name is resolved).
    #[arg(long, default_value = TARGET_DEFAULT, value_parser = trove_bench::cli::host_port)]
    pub target: std::net::SocketAddr,
    /// The token for a server started with --auth (`trove auth add`);
    /// without it, TROVE_TOKEN (which, unlike a flag, `ps` does not show).
    #[arg(long)]
    pub token: Option<String>,
}

impl ClientArgs {
    /// The SDK's config for it.
    pub fn config(&self) -> Result<trove_client::ClientConfig, String> {
        let token = trove_client::Token::from_arg_or_env(self.token.as_deref()).map_err(|e| format!("--token: {e}"))?;
        Ok(trove_client::ClientConfig { token, ..trove_client::ClientConfig::new(self.target.to_string()) })
    }
}

#[derive(Debug, Args)]
pub struct Watch {
    /// The hunt to watch.
    pub hunt: u32,
    #[command(flatten)]
    pub client: ClientArgs,
    /// The server's control plane, HOST:PORT: the players, round and top 10
    /// at the start and after a gap or a reconnect come from it, and,
    /// watching the broadcasts alone, the players count once a second
    /// [default: 127.0.0.1:7480 when --target is the default 127.0.0.1:7400
    /// (a server on its default ports); else none, and the players count is
    /// unknown without --all-events].
    #[arg(long, value_parser = trove_bench::cli::host_port)]
    pub control: Option<std::net::SocketAddr>,
    /// A line per change even on a terminal (piped output always is).
    #[arg(long)]
    pub plain: bool,
    /// Stop after this many seconds [default: until Ctrl-C].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=86_400 * 365))]
    pub seconds: Option<u64>,
    /// Every event of the hunt (players counted as they join and leave,
    /// events/s), not its broadcasts alone [default: the broadcasts: the
    /// news shown, at a fraction of the cost].
    #[arg(long)]
    pub all_events: bool,
}

impl Watch {
    /// The control plane to read: --control, or the default server's when
    /// --target is the default server's too (a server on its default
    /// ports); none otherwise, as a data plane does not say where its
    /// control plane is.
    pub fn control(&self) -> Option<std::net::SocketAddr> {
        let default_target = TARGET_DEFAULT.parse().ok() == Some(self.client.target);
        self.control.or(default_target.then_some(CONTROL_DEFAULT))
    }
}

#[derive(Debug, Args)]
pub struct Send {
    #[command(flatten)]
    pub client: ClientArgs,
    /// JSON lines of events to send (`-` for standard input).
    #[arg(long, conflicts_with = "events")]
    pub file: Option<std::path::PathBuf>,
    /// Events, one JSON object each, e.g.
    /// '{"hunt": 1, "player": 5, "action": "join"}'.
    pub events: Vec<String>,
}

#[derive(Debug, Subcommand)]
pub enum Auth {
    /// Make a new random token: print it once, append its hash (never the
    /// token) to the auth file, creating it if need be.
    Add(AuthAdd),
}

#[derive(Debug, Args)]
pub struct AuthAdd {
    /// The token's name (letters, digits, '-', '_', '.'), unique in the file.
    pub name: String,
    /// producer (send events), spectator (subscribe, read) or admin
    /// (everything).
    #[arg(long)]
    pub role: String,
    /// Hunts the token may touch, as ids or ranges: --hunts 1-100,200
    /// [default: every hunt].
    #[arg(long, value_delimiter = ',')]
    pub hunts: Vec<String>,
    /// The auth file.
    #[arg(long)]
    pub file: std::path::PathBuf,
}

#[derive(Debug, Args)]
pub struct Serve {
    /// A TOML settings file (config/trove.toml lists every key); flags
    /// override it.
    #[arg(long)]
    pub config: Option<std::path::PathBuf>,
    /// The journal's data directory [default: trove-data].
    #[arg(long)]
    pub data: Option<std::path::PathBuf>,
    /// Run in memory: no journal, nothing survives a restart.
    #[arg(long)]
    pub no_journal: bool,
    /// Execution mode: sharded, task-per-event or spawn-blocking-per-event
    /// (the per-event modes run without a journal) [default: sharded].
    #[arg(long)]
    pub mode: Option<String>,
    /// Shard threads (sharded) or runtime workers (per-event modes)
    /// [default: the data directory's if it has a journal, else the cores
    /// less the I/O workers, at least 1].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub shards: Option<u32>,
    /// group, always, interval=<ms> or never [default: group].
    /// Acknowledgements wait for the policy's durability point.
    #[arg(long)]
    pub fsync: Option<String>,
    /// Snapshot every this many milliseconds [default: 60000].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=86_400_000))]
    pub snapshot_ms: Option<u64>,
    /// Start even if the journal is damaged in the middle, cutting it at
    /// the damage (what follows is lost).
    #[arg(long)]
    pub repair: bool,
    /// Protocol v1 listen address, host:port (a host name is resolved)
    /// [default: 127.0.0.1:7400].
    #[arg(long)]
    pub tcp: Option<String>,
    /// WebSocket listen address, or `off` [default: 127.0.0.1:7401].
    #[arg(long)]
    pub ws: Option<String>,
    /// HTTP control plane listen address (API, /metrics), or `off`
    /// [default: 127.0.0.1:7480].
    #[arg(long)]
    pub control: Option<String>,
    /// TLS on all three listeners: the server's certificate chain, PEM
    /// (its own certificate first). With it, the listeners speak only TLS.
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<std::path::PathBuf>,
    /// The private key of --tls-cert, PEM (PKCS#8, PKCS#1 or SEC1).
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<std::path::PathBuf>,
    /// Serve tokio-console's gRPC endpoint (127.0.0.1:6669, or
    /// TOKIO_CONSOLE_BIND) so `tokio-console` can attach to the I/O tasks.
    #[arg(long)]
    pub console: bool,
    /// Threads of the I/O runtime (TCP connections) [default: 1].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub io_workers: Option<u32>,
    /// Threads of the WebSocket listener's runtime (`trove-ws`) [default: 1].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub ws_io_workers: Option<u32>,
    /// Niceness the WebSocket threads add to the server's, 0..=19: on a
    /// saturated machine ingest (TCP, shards, journal) gets the cores
    /// first; 0 runs them at ingest's priority [default: 10].
    #[arg(long, value_parser = clap::value_parser!(u32).range(0..=19))]
    pub ws_io_nice: Option<u32>,
    /// Pin shard threads to cores.
    #[arg(long)]
    pub pin: bool,
    /// Log lines on stderr: `human` (time, level, target, message,
    /// fields) or `json` (one object per line).
    #[arg(long, value_enum, default_value_t = crate::logging::LogFormat::Human)]
    pub log_format: crate::logging::LogFormat,
    /// Which log lines: a level (error, warn, info, debug, trace) or
    /// target=level directives, e.g. `warn,trove::connection=info`
    /// [default: TROVE_LOG, else info].
    #[arg(long)]
    pub log_level: Option<String>,
    /// Open connections from one source address (an IPv6 /64), TCP and
    /// WebSocket together [default: 256, or the config file's
    /// `connections_per_address_max`].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub connections_per_address_max: Option<u32>,
    /// Join a cluster on NATS JetStream: its servers,
    /// nats://HOST:PORT[,nats://HOST:PORT...]. Each partition's log is a
    /// replicated stream there instead of a local journal (docs/cluster.md).
    #[arg(long)]
    pub cluster: Option<String>,
    /// This node's name in the cluster, a short token of [a-z0-9_-]
    /// [default: node-<tcp port>].
    #[arg(long, requires = "cluster")]
    pub node: Option<String>,
    /// The cluster's name: its streams and buckets are named after it
    /// [default: trove].
    #[arg(long, requires = "cluster")]
    pub cluster_name: Option<String>,
    /// Partitions, if this node creates the cluster (fixed from then on)
    /// [default: 8].
    #[arg(long, requires = "cluster", value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub partitions: Option<u32>,
    /// JetStream replicas of the cluster's streams and buckets: 1 on one
    /// NATS server, 3 on a 3-server NATS cluster [default: 1].
    #[arg(long, requires = "cluster", value_parser = clap::value_parser!(u32).range(1..=5))]
    pub replicas: Option<u32>,
    /// How long a partition's lease lasts unrenewed, in milliseconds, if
    /// this node creates the cluster: a dead node's partitions move after
    /// it [default: 3000].
    #[arg(long, requires = "cluster", value_parser = clap::value_parser!(u64).range(500..=60_000))]
    pub lease_ms: Option<u64>,
    /// Require a token on every connection and control-plane request: the
    /// auth file (TOML, `trove auth add` writes it). SIGHUP reloads it.
    #[arg(long)]
    pub auth: Option<std::path::PathBuf>,
    /// Serve without authentication on addresses other than loopback
    /// (refused otherwise); a warning is logged every minute.
    #[arg(long, conflicts_with = "auth")]
    pub insecure_no_auth: bool,
    /// Serve /metrics alone, with no token, on this address (for a
    /// scraper on a private network).
    #[arg(long)]
    pub metrics_listen: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum Journal {
    /// Check every frame of every segment; report what is there and what is damaged.
    ///
    /// Exit status: 0 clean (every frame checked, nothing damaged); 1
    /// damage found (a torn tail or a damaged last frame, which start-up
    /// cuts off, or damage start-up refuses: corruption, a gap, a damaged
    /// snapshot, a foreign file); 2 nothing checked (no journal there,
    /// another game's, an I/O error, a usage error).
    Verify(JournalVerify),
    /// Print journaled events with their outcomes, readably or as JSON lines.
    ///
    /// Exit status: 0 printed (or the journal holds no event); 1 --hunt
    /// names a hunt with no journaled event; 2 the journal could not be
    /// read, or a usage error.
    Inspect(JournalInspect),
}

#[derive(Debug, Args)]
pub struct JournalVerify {
    /// The data directory.
    #[arg(long, default_value = "trove-data")]
    pub data: std::path::PathBuf,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct JournalInspect {
    /// The data directory.
    #[arg(long, default_value = "trove-data")]
    pub data: std::path::PathBuf,
    /// Only events of this hunt.
    #[arg(long)]
    pub hunt: Option<u32>,
    /// Print at most this many events.
    #[arg(long, default_value_t = 100)]
    pub limit: u64,
    /// One JSON object per line instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct Replay {
    /// The data directory.
    #[arg(long, default_value = "trove-data")]
    pub data: std::path::PathBuf,
    /// Replay a cluster's partition streams instead (reading only):
    /// nats://HOST:PORT[,...].
    #[arg(long, conflicts_with = "data")]
    pub cluster: Option<String>,
    /// The cluster's name [default: trove].
    #[arg(long, requires = "cluster")]
    pub cluster_name: Option<String>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

/// The command tree as `main` parses it: every option that takes a value
/// takes a negative number too, so `--rate -5` is judged by the option's
/// own check ("must be a positive number") instead of being taken for an
/// unknown flag. No flag of trove's looks like a number.
pub fn command() -> clap::Command {
    fn negative_numbers(command: clap::Command) -> clap::Command {
        command
            .mut_args(|a| if a.get_action().takes_values() { a.allow_negative_numbers(true) } else { a })
            .mut_subcommands(negative_numbers)
    }
    negative_numbers(<Cli as clap::CommandFactory>::command())
}

/// Parses the process's arguments with [`command`]; on an error or
/// `--help`, prints and exits as clap does.
pub fn parse() -> Cli {
    let mut matches = command().get_matches();
    <Cli as clap::FromArgMatches>::from_arg_matches_mut(&mut matches).unwrap_or_else(|e| e.exit())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::{Cli, Command};

    /// `trove bench`'s server addresses take host names, as the listen
    /// addresses do, resolved when the arguments are parsed; what does not
    /// resolve is a usage error naming the address.
    #[test]
    fn bench_addresses_take_host_names() {
        let cli = Cli::try_parse_from([
            "trove",
            "bench",
            "--target",
            "localhost:7400",
            "--metrics",
            "127.0.0.1:7401",
            "--subscribers-ws",
            "--target-ws",
            "localhost:7402",
        ])
        .expect("parses");
        let Command::Bench(b) = cli.command else { panic!("a bench") };
        assert_eq!(b.load.target, Some("127.0.0.1:7400".parse().unwrap()));
        assert_eq!(b.load.metrics, Some("127.0.0.1:7401".parse().unwrap()));
        assert_eq!(b.load.target_ws, Some("127.0.0.1:7402".parse().unwrap()));
        let e = Cli::try_parse_from(["trove", "bench", "--target-ws", "no port"]).unwrap_err().to_string();
        assert!(e.contains("server address `no port`") && e.contains("expected host:port"), "{e}");
    }

    /// `trove watch 1` against a server on its default ports reads its
    /// control plane without being told (a hand run showed "~0 players"
    /// for a hunt of 2); another --target has none unless --control names it.
    #[test]
    fn watch_reads_the_default_servers_control_plane_unless_told_otherwise() {
        let control = |args: &[&str]| {
            let cli = Cli::try_parse_from(["trove", "watch", "1"].iter().chain(args)).expect("parses");
            let Command::Watch(w) = cli.command else { panic!("a watch") };
            w.control()
        };
        assert_eq!(control(&[]), Some("127.0.0.1:7480".parse().unwrap()));
        assert_eq!(control(&["--target", "127.0.0.1:7400"]), Some("127.0.0.1:7480".parse().unwrap()));
        assert_eq!(control(&["--target", "127.0.0.1:27400"]), None);
        assert_eq!(
            control(&["--target", "127.0.0.1:27400", "--control", "127.0.0.1:27480"]),
            Some("127.0.0.1:27480".parse().unwrap())
        );
    }
}
