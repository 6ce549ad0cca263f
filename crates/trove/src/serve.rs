//! `trove serve`: the engine with its data plane, until SIGINT or SIGTERM.
//!
//! Settings come from the embedded defaults, then a TOML file (`--config`),
//! then flags; `config/trove.toml` lists every key with its default.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use std::sync::atomic::{AtomicBool, Ordering};
use trove_hunt::TreasureHunt;

use trove_journal::DataDirLock;
use trove_server::control::{ControlConfig, ControlInfo, ControlParts, ControlPlane};
use trove_server::{Listeners, Server, ServerConfig};
use trove_shard::{Engine, EngineConfig, FsyncPolicy, JournalConfig, Mode, WriteIo};

use crate::cli::Serve;

/// The TOML file. Every key is optional; unknown keys are errors.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServeFile {
    /// Journal directory; "" or `journal = false` runs in memory.
    pub data: Option<PathBuf>,
    pub journal: Option<bool>,
    pub mode: Option<String>,
    pub shards: Option<usize>,
    pub fsync: Option<String>,
    pub snapshot_interval_ms: Option<u64>,
    pub segment_bytes_max: Option<u64>,
    /// "direct" (O_DIRECT, the default) or "buffered".
    pub journal_io: Option<String>,
    pub repair: Option<bool>,
    #[serde(default)]
    pub listen: ListenFile,
    #[serde(default)]
    pub engine: EngineFile,
    #[serde(default)]
    pub limits: LimitsFile,
    #[serde(default)]
    pub auth: AuthSettingsFile,
}

/// `[auth]`: authentication (docs/decisions/0041-tokens-and-roles.md).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSettingsFile {
    /// The auth file (`--auth` overrides it).
    pub file: Option<PathBuf>,
    /// Events per second per token, for tokens whose entry sets none
    /// (unset: no limit).
    pub events_per_second: Option<u32>,
    /// Connections per token, for tokens whose entry sets none (unset: no
    /// limit beyond `connections_max`).
    pub connections_max: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenFile {
    /// `host:port`; a host name is resolved ([`listen_addr`]).
    pub tcp: Option<String>,
    /// An address, or "off".
    pub ws: Option<String>,
    /// The HTTP control plane: an address, or "off".
    pub control: Option<String>,
    pub io_workers: Option<usize>,
    /// Threads of the WebSocket listener's runtime (`trove-ws`).
    pub ws_io_workers: Option<usize>,
    /// Niceness the WebSocket threads add to the server's, 0..=19.
    pub ws_io_nice: Option<i32>,
    /// TLS on all three listeners: a PEM certificate chain and its key
    /// (both, or neither).
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EngineFile {
    pub batch_events_max: Option<usize>,
    pub queue_batches_max: Option<usize>,
    pub queue_events_max: Option<usize>,
    /// Microseconds of work a shard's queue may hold, at its measured rate,
    /// before producers get BUSY (`EngineConfig::queue_wait_max`).
    pub queue_wait_max_us: Option<u64>,
    /// Milliseconds a queue's wait may stay past `queue_wait_max_us`, from
    /// calm, before BUSY (`EngineConfig::queue_burst_allowance`; 0: none).
    pub queue_burst_allowance_ms: Option<u64>,
    pub drain_events_max: Option<usize>,
    pub worlds_max: Option<usize>,
    pub dedup_window_events: Option<usize>,
    pub dedup_producers_max: Option<usize>,
    pub pin_cores: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsFile {
    pub connections_max: Option<usize>,
    pub connections_per_address_max: Option<usize>,
    pub frame_body_max: Option<u32>,
    pub handshake_timeout_ms: Option<u64>,
    pub idle_timeout_ms: Option<u64>,
    pub window_batches: Option<usize>,
    pub subscriptions_max: Option<usize>,
    pub subscriber_updates_max: Option<usize>,
    /// At most about one wakeup (and write) per subscriber connection per
    /// this many milliseconds; 0 wakes it for every applied batch.
    pub subscriber_push_interval_ms: Option<u64>,
    /// The fan-out budget: subscriber wakeups per second, all connections
    /// together (0: no limit).
    pub subscriber_wakeups_per_sec_max: Option<u64>,
    /// The fan-out budget: updates queued for subscribers per second (0:
    /// no limit); past it whole chunks are shed as GAPs.
    pub subscriber_updates_per_sec_max: Option<u64>,
    pub producer_wait_ms: Option<u64>,
    /// Bytes all TCP connections' unfinished frames may hold together
    /// (beyond 16 KiB each); at least `frame_body_max` + 8. Past it a
    /// connection stops reading until others finish theirs.
    pub unfinished_frame_bytes_max: Option<usize>,
    pub ws_message_max: Option<usize>,
    pub ws_frame_max: Option<usize>,
    pub ws_write_buffer_max: Option<usize>,
    pub control_connections_max: Option<usize>,
    pub control_connections_per_address_max: Option<usize>,
    pub control_header_timeout_ms: Option<u64>,
    pub control_body_timeout_ms: Option<u64>,
    pub control_live_streams_max: Option<usize>,
}

/// Everything `serve` starts with.
#[derive(Debug)]
pub struct ServeSettings {
    pub engine: EngineConfig,
    pub server: ServerConfig,
    pub control: Option<SocketAddr>,
    /// No shard count was given and the engine journals: the data
    /// directory's own count (if it has a journal) replaces
    /// `engine.shards` once the directory is locked (`run`), since nothing
    /// in it is read before.
    pub shards_from_journal: bool,
    pub control_limits: ControlConfig,
    /// `--metrics-listen`: /metrics alone, no token.
    pub metrics_listen: Option<SocketAddr>,
}

/// Defaults, then the file, then the flags. Errors name the key or flag.
pub fn settings(args: &Serve) -> Result<ServeSettings, String> {
    let file = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| format!("config {}: {e}", path.display()))?;
            toml::from_str::<ServeFile>(&text).map_err(|e| format!("config {}: {e}", path.display()))?
        }
        None => ServeFile::default(),
    };
    let mut engine = EngineConfig::default();
    let mut server = ServerConfig::default();

    let mode = args.mode.clone().or(file.mode).unwrap_or_else(|| "sharded".into());
    engine.mode = Mode::parse(&mode).map_err(|e| e.to_string())?;
    let shards_given = args.shards.map(|s| s as usize).or(file.shards);
    let e = &file.engine;
    let set = |target: &mut usize, v: Option<usize>| {
        if let Some(v) = v {
            *target = v;
        }
    };
    set(&mut engine.batch_events_max, e.batch_events_max);
    set(&mut engine.queue_batches_max, e.queue_batches_max);
    set(&mut engine.queue_events_max, e.queue_events_max);
    if let Some(us) = e.queue_wait_max_us {
        engine.queue_wait_max = Duration::from_micros(us);
    }
    if let Some(ms) = e.queue_burst_allowance_ms {
        engine.queue_burst_allowance = Duration::from_millis(ms);
    }
    set(&mut engine.drain_events_max, e.drain_events_max);
    set(&mut engine.worlds_max, e.worlds_max);
    set(&mut engine.dedup_window_events, e.dedup_window_events);
    set(&mut engine.dedup_producers_max, e.dedup_producers_max);
    engine.pin_cores = args.pin || e.pin_cores.unwrap_or(false);
    engine.in_flight_events_max = engine.in_flight_events_max.max(engine.batch_events_max);

    let fsync: FsyncPolicy = args
        .fsync
        .clone()
        .or(file.fsync)
        .map_or(Ok(FsyncPolicy::default()), |s| s.parse())
        .map_err(|e| e.to_string())?;
    if args.cluster.is_some() && (args.data.is_some() || args.no_journal || engine.mode != Mode::Sharded) {
        return Err("--cluster: a cluster node runs sharded and journals to the cluster's streams; \
                    --data, --no-journal and the per-event modes do not apply"
            .into());
    }
    let journal_on = !args.no_journal && file.journal.unwrap_or(true) && engine.mode == Mode::Sharded;
    if journal_on {
        let dir = args.data.clone().or(file.data).unwrap_or_else(|| PathBuf::from("trove-data"));
        if dir.as_os_str().is_empty() {
            return Err("data: the journal directory is empty; set journal = false to run in memory".into());
        }
        let mut j = JournalConfig::new(dir, fsync);
        if let Some(ms) = args.snapshot_ms.or(file.snapshot_interval_ms) {
            if ms == 0 {
                return Err("snapshot_interval_ms must be at least 1".into());
            }
            j.snapshot_interval = Some(Duration::from_millis(ms));
        }
        if let Some(b) = file.segment_bytes_max {
            if b < 1 << 20 {
                return Err("segment_bytes_max must be at least 1048576".into());
            }
            j.segment_bytes_max = b;
        }
        j.io = match file.journal_io.as_deref() {
            None | Some("direct") => WriteIo::Direct,
            Some("buffered") => WriteIo::Buffered,
            Some(other) => return Err(format!("journal_io: `{other}` is neither \"direct\" nor \"buffered\"")),
        };
        j.repair = args.repair || file.repair.unwrap_or(false);
        engine.journal = Some(j);
    }

    let l = &file.listen;
    if let Some(tcp) = args.tcp.clone().or(l.tcp.clone()) {
        server.tcp_addr = listen_addr("tcp", &tcp)?;
    }
    if let Some(ws) = args.ws.clone().or(l.ws.clone()) {
        server.ws_addr = match ws.as_str() {
            "off" => None,
            a => Some(listen_addr("ws", a)?),
        };
    }
    let control = match args.control.clone().or(l.control.clone()).as_deref() {
        None => Some(SocketAddr::from(([127, 0, 0, 1], 7480))),
        Some("off") => None,
        Some(a) => Some(listen_addr("control", a)?),
    };
    if let Some(n) = args.io_workers.map(|n| n as usize).or(l.io_workers) {
        server.io_workers = n;
    }
    if let Some(n) = args.ws_io_workers.map(|n| n as usize).or(l.ws_io_workers) {
        server.ws_io_workers = n;
    }
    if let Some(n) = args.ws_io_nice.map(|n| n as i32).or(l.ws_io_nice) {
        server.ws_io_nice = n;
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    // The journal's own count, if it has one, is read under the lock.
    engine.shards = shards_given.unwrap_or_else(|| default_shards(None, cores, server.io_workers));
    let shards_from_journal = shards_given.is_none() && engine.journal.is_some();
    let lim = &file.limits;
    set(&mut server.connections_max, lim.connections_max);
    set(
        &mut server.connections_per_address_max,
        args.connections_per_address_max.map(|n| n as usize).or(lim.connections_per_address_max),
    );
    if let Some(v) = lim.frame_body_max {
        server.frame_body_max = v;
    }
    let ms = |v: Option<u64>, target: &mut Duration| {
        if let Some(v) = v {
            *target = Duration::from_millis(v);
        }
    };
    ms(lim.handshake_timeout_ms, &mut server.handshake_timeout);
    ms(lim.idle_timeout_ms, &mut server.idle_timeout);
    ms(lim.producer_wait_ms, &mut server.producer_wait);
    ms(lim.subscriber_push_interval_ms, &mut server.subscriber_push_interval);
    set(&mut server.window_batches, lim.window_batches);
    set(&mut server.subscriptions_max, lim.subscriptions_max);
    set(&mut server.subscriber_updates_max, lim.subscriber_updates_max);
    if let Some(v) = lim.subscriber_wakeups_per_sec_max {
        server.subscriber_wakeups_per_sec_max = v;
    }
    if let Some(v) = lim.subscriber_updates_per_sec_max {
        server.subscriber_updates_per_sec_max = v;
    }
    set(&mut server.unfinished_frame_bytes_max, lim.unfinished_frame_bytes_max);
    set(&mut server.ws_message_max, lim.ws_message_max);
    set(&mut server.ws_frame_max, lim.ws_frame_max);
    set(&mut server.ws_write_buffer_max, lim.ws_write_buffer_max);
    let mut control_limits = ControlConfig::default();
    set(&mut control_limits.connections_max, lim.control_connections_max);
    set(&mut control_limits.connections_per_address_max, lim.control_connections_per_address_max);
    ms(lim.control_header_timeout_ms, &mut control_limits.header_timeout);
    ms(lim.control_body_timeout_ms, &mut control_limits.body_timeout);
    control_limits.live_streams_max = lim
        .control_live_streams_max
        .unwrap_or_else(|| ControlConfig::live_streams_default(control_limits.connections_max));

    let metrics_listen = args.metrics_listen.as_deref().map(|a| listen_addr("metrics", a)).transpose()?;
    if let Some(path) = args.auth.clone().or(file.auth.file.clone()) {
        let defaults = trove_server::auth::QuotaDefaults {
            events_per_second: file.auth.events_per_second,
            connections_max: file.auth.connections_max,
        };
        let auth = trove_server::auth::Auth::from_file(&path, defaults).map_err(|e| e.to_string())?;
        server.auth = Some(Arc::new(auth));
    } else if !args.insecure_no_auth {
        // Secure by default: without tokens, only this machine may connect.
        let listening = [Some(("--tcp", server.tcp_addr)), server.ws_addr.map(|a| ("--ws", a))]
            .into_iter()
            .chain([control.map(|a| ("--control", a)), metrics_listen.map(|a| ("--metrics-listen", a))]);
        for (what, addr) in listening.flatten() {
            if !addr.ip().is_loopback() {
                return Err(format!(
                    "{what} {addr} is not a loopback address: serving other machines needs --auth FILE \
                     (or --insecure-no-auth to serve anyone who reaches the port)"
                ));
            }
        }
    }

    match (args.tls_cert.clone().or(l.tls_cert.clone()), args.tls_key.clone().or(l.tls_key.clone())) {
        (Some(cert), Some(key)) => {
            // Read and checked now, before a port is bound or the data
            // directory touched; one configuration for the three listeners.
            let tls = trove_server::tls::ServerTls::load(&cert, &key).map_err(|e| e.to_string())?;
            server.tls = Some(tls.clone());
            control_limits.tls = Some(tls);
        }
        (None, None) => {}
        _ => return Err("tls_cert and tls_key go together: set both, or neither".into()),
    }

    engine.validate().map_err(|e| e.to_string())?;
    server.validate().map_err(|e| e.to_string())?;
    control_limits.validate().map_err(|e| e.to_string())?;
    Ok(ServeSettings { engine, server, control, shards_from_journal, control_limits, metrics_listen })
}

/// The shard count when none is given: the data directory's, if it has a
/// journal already (its shard count cannot change); else the cores the I/O
/// runtime leaves, at least one. On 2 cores that is one shard and one I/O
/// thread: there the `trove bench` knee was 8.1-9.3 M/s with one shard and
/// 4.6-7.0 M/s with two competing with the I/O thread (docs/decisions/0032).
pub fn default_shards(data: Option<&Path>, cores: usize, io_workers: usize) -> usize {
    data.and_then(|d| trove_shard::journaled::recorded_shards::<TreasureHunt>(d).ok())
        .unwrap_or_else(|| cores.saturating_sub(io_workers).max(1))
}

/// How often a cluster node snapshots a partition unless told.
const SNAPSHOT_DEFAULT: Duration = Duration::from_secs(60);

/// Runs until SIGINT or SIGTERM, then drains and stops.
///
/// Start-up order: every listener is bound first, so a busy port fails the
/// start before the data directory is touched; then the directory is locked
/// (created if new), before anything in it is read; only then does the
/// engine recover (and maybe repair) the journal. A start that fails after
/// the directory was created removes it again.
pub fn run(args: &Serve) -> Result<(), String> {
    let ServeSettings { mut engine, server, control, shards_from_journal, control_limits, metrics_listen } =
        settings(args)?;
    if args.insecure_no_auth && server.auth.is_none() {
        warn_insecure();
    }
    let auth = server.auth.clone();
    let tls_cert = server.tls.as_ref().map(|t| t.cert_file().to_path_buf());
    // Before anything opens a file: both planes' caps must fit, so neither
    // can take the descriptors the other or the journal needs. (A journal's
    // own shard count is read only under its lock, below; the reserve
    // counts the shards known now.)
    // `--metrics-listen` is a second plane with the default cap.
    let control_max = control.map_or(0, |_| control_limits.connections_max)
        + metrics_listen.map_or(0, |_| ControlConfig::default().connections_max);
    let fds =
        trove_server::fds::reserve(server.connections_max, control_max, engine.shards).map_err(|e| e.to_string())?;
    // Before any runtime starts, so tokio-console sees every task.
    crate::logging::install(args.log_format, args.log_level.as_deref(), args.console)?;
    if args.console {
        tracing::info!(
            "tokio-console endpoint on {}",
            std::env::var("TOKIO_CONSOLE_BIND").unwrap_or("127.0.0.1:6669".into())
        );
    }
    // Caught from here on: a SIGTERM that comes during recovery, or right
    // after the ready lines, drains and stops like any other instead of
    // killing the process (the default action) before it drains.
    let signals = Signals::install(auth.clone())?;
    let listeners = Listeners::bind(&server).map_err(|e| e.to_string())?;
    let control_listener = match control {
        Some(addr) => {
            Some(std::net::TcpListener::bind(addr).map_err(|e| format!("control plane listener on {addr}: {e}"))?)
        }
        None => None,
    };
    if args.cluster.is_some() && metrics_listen.is_some() {
        // Refused rather than bound and never served.
        return Err("--metrics-listen is not served by a cluster node yet: scrape /metrics on --control (with a \
                    token when --auth is on)"
            .to_string());
    }
    let metrics_listener = match metrics_listen {
        Some(addr) => Some(std::net::TcpListener::bind(addr).map_err(|e| format!("metrics listener on {addr}: {e}"))?),
        None => None,
    };
    if args.cluster.is_some() {
        // A cluster node journals to its partitions' streams: no data
        // directory is locked or read.
        let snapshot_interval = engine.journal.as_ref().and_then(|j| j.snapshot_interval).unwrap_or(SNAPSHOT_DEFAULT);
        let start = crate::cluster_cmd::NodeStart {
            engine,
            server,
            control_limits,
            listeners,
            control_listener,
            snapshot_interval,
        };
        return crate::cluster_cmd::serve(args, start, move || signals.wait());
    }
    let lock = match &engine.journal {
        Some(j) => Some(DataDirLock::acquire(&j.dir).map_err(|e| e.to_string())?),
        None => None,
    };
    if shards_from_journal && let Some(j) = &engine.journal {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        engine.shards = default_shards(Some(&j.dir), cores, server.io_workers);
        // The journal's own count may be larger than the one reserved for
        // above: check again (against the limit already raised) before any
        // shard opens a file.
        if let Err(e) = trove_server::fds::check_budget(fds.limit, server.connections_max, control_max, engine.shards) {
            if let Some(lock) = lock {
                let _ = lock.remove_created();
            }
            return Err(e.to_string());
        }
    }
    let journal = engine.journal.as_ref().map(|j| format!("{} (fsync {})", j.dir.display(), j.fsync));
    let info = ControlInfo {
        mode: engine.mode.name(),
        shards: engine.shards,
        fsync: engine.journal.as_ref().map_or("none".into(), |j| j.fsync.to_string()),
        journal_dir: engine.journal.as_ref().map(|j| j.dir.display().to_string()),
        tcp_addr: server.tcp_addr,
        ws_addr: server.ws_addr,
    };
    let info_for_metrics = info.clone();
    let mode = engine.mode.name();
    let shards = engine.shards;
    let started = std::time::Instant::now();
    let mut log = |line: String| tracing::info!(target: "trove::engine", "{line}");
    // A progress line on a terminal while the journal is read back; log
    // lines clear it first (`progress::LogWriter`).
    let progress = engine.journal.as_ref().map(|j| crate::progress::ProgressLine::journal("recovery", &j.dir));
    let started_engine = Engine::<TreasureHunt>::start_with_lock(engine, lock, &mut log);
    drop(progress);
    let engine = Arc::new(started_engine.map_err(|e| e.to_string())?);
    let server = match Server::start_on(listeners, engine.clone(), server) {
        Ok(s) => s,
        Err(e) => return Err(abandon(engine, e.to_string())),
    };
    let ready = Arc::new(AtomicBool::new(false));
    let control = match control_listener {
        Some(listener) => match ControlPlane::start_on(
            listener,
            ControlParts {
                config: control_limits,
                engine: engine.clone(),
                server_metrics: server.metrics_handle(),
                data_plane: server.runtime_handle(),
                ws_plane: server.ws_runtime_handle(),
                info: ControlInfo { tcp_addr: server.tcp_addr(), ws_addr: server.ws_addr(), ..info },
                ready: ready.clone(),
                owners: None,
                auth: auth.clone(),
                metrics_only: false,
            },
        ) {
            Ok(c) => Some(c),
            Err(e) => {
                server.shutdown(Duration::ZERO);
                return Err(abandon(engine, e.to_string()));
            }
        },
        None => None,
    };
    let metrics_plane = match metrics_listener {
        Some(listener) => match ControlPlane::start_on(
            listener,
            ControlParts {
                config: ControlConfig::default(),
                engine: engine.clone(),
                server_metrics: server.metrics_handle(),
                data_plane: server.runtime_handle(),
                ws_plane: server.ws_runtime_handle(),
                info: ControlInfo { tcp_addr: server.tcp_addr(), ws_addr: server.ws_addr(), ..info_for_metrics },
                ready: ready.clone(),
                owners: None,
                auth: auth.clone(),
                metrics_only: true,
            },
        ) {
            Ok(c) => Some(c),
            Err(e) => {
                server.shutdown(Duration::ZERO);
                return Err(abandon(engine, e.to_string()));
            }
        },
        None => None,
    };
    ready.store(true, Ordering::Relaxed);
    tracing::info!(
        "serving {mode} with {}; journal {}; recovered in {:.2}s",
        crate::plural(shards as u64, "shard"),
        journal.as_deref().unwrap_or("off (in memory)"),
        started.elapsed().as_secs_f64()
    );
    print_listeners(&server, control.as_ref().map(ControlPlane::addr), tls_cert.as_deref());
    if let Some(c) = &metrics_plane {
        tracing::info!("/metrics (no token) on http://{}/metrics", c.addr());
    }
    match &auth {
        Some(_) => tracing::info!("authentication on (SIGHUP reloads the auth file)"),
        None => tracing::info!("authentication off"),
    }
    let signal = signals.wait();
    tracing::info!("{signal}: draining connections");
    ready.store(false, Ordering::Relaxed);
    server.shutdown(Duration::from_secs(10));
    if let Some(c) = control {
        c.shutdown();
    }
    if let Some(c) = metrics_plane {
        c.shutdown();
    }
    let engine = Arc::try_unwrap(engine).map_err(|_| "the engine is still in use after the server stopped")?;
    let failure = engine.failure().map(str::to_string);
    let fin = engine.shutdown();
    if let Some(reason) = failure {
        // The state in memory holds batches that never became durable: its
        // hash means nothing. A restart recovers what was acknowledged.
        return Err(format!("stopped after a failure: {reason}; restart to recover what was durable"));
    }
    tracing::info!("stopped; {} events applied, state hash {:016x}", fin.events_applied, fin.state_hash);
    Ok(())
}

/// The ready lines: where each listener is, and whether it speaks TLS.
fn print_listeners(server: &Server<TreasureHunt>, control: Option<SocketAddr>, tls_cert: Option<&Path>) {
    let (tcp, ws, http) = if tls_cert.is_some() { ("tls", "wss", "https") } else { ("tcp", "ws", "http") };
    tracing::info!("protocol v1 on {tcp}://{}", server.tcp_addr());
    if let Some(addr) = server.ws_addr() {
        tracing::info!("websocket (JSON) on {ws}://{addr}/");
    }
    if let Some(addr) = control {
        tracing::info!("control plane on {http}://{addr}/ (/metrics, /openapi.json)");
    }
    if let Some(cert) = tls_cert {
        tracing::info!("TLS on every listener, certificate {}", cert.display());
    }
}

/// Stops an engine whose start failed after it was up (no client was
/// served), removing a data directory this start created; returns `why`.
fn abandon(engine: Arc<Engine<TreasureHunt>>, why: String) -> String {
    match Arc::try_unwrap(engine) {
        Ok(engine) => engine.abandon(&mut |line| tracing::info!(target: "trove::engine", "{line}")),
        // Still shared: the process exits with the error, and the kernel
        // lets go of the lock.
        Err(_) => tracing::warn!("the engine is still in use; its data directory is left in place"),
    }
    why
}

/// `--insecure-no-auth`: a warning now and every minute, on a thread of
/// its own, for as long as the process lives.
fn warn_insecure() {
    const WARNING: &str = "trove: warning: --insecure-no-auth: anyone who reaches the ports may produce, \
                           read and administer";
    eprintln!("{WARNING}");
    let _ = std::thread::Builder::new().name("trove-insecure".into()).spawn(|| {
        loop {
            std::thread::sleep(Duration::from_secs(60));
            eprintln!("{WARNING}");
        }
    });
}

/// `trove auth add`: a new token, printed once; its hash appended to the
/// file (created with mode 0600 if new).
pub fn auth_add(args: &crate::cli::AuthAdd) -> Result<(), String> {
    use std::io::Write as _;
    use trove_server::auth::{self, AuthTable, HuntRanges, Role};
    let role = Role::from_name(&args.role)
        .ok_or_else(|| format!("--role `{}`: must be producer, spectator or admin", args.role))?;
    let hunts = match args.hunts.is_empty() {
        true => None,
        false => Some(HuntRanges::parse(args.hunts.iter().map(String::as_str)).map_err(|e| format!("--hunts: {e}"))?),
    };
    let existing = match std::fs::read_to_string(&args.file) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(format!("{}: {e}", args.file.display())),
    };
    let token = auth::new_token().map_err(|e| e.to_string())?;
    let entry = auth::file_entry(&args.name, role, hunts.as_ref(), &auth::hash_token(&token));
    // The file with the entry must read back (a duplicate name, a bad
    // name, too many tokens): checked before anything is written.
    let mut whole = existing.clone();
    if !whole.is_empty() && !whole.ends_with('\n') {
        whole.push('\n');
    }
    whole.push_str(&entry);
    AuthTable::parse(&whole).map_err(|e| e.to_string())?;
    let mut options = std::fs::OpenOptions::new();
    options.append(true).create(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut f = options.open(&args.file).map_err(|e| format!("{}: {e}", args.file.display()))?;
    let text = if !existing.is_empty() && !existing.ends_with('\n') { format!("\n{entry}") } else { entry };
    f.write_all(text.as_bytes()).and_then(|()| f.sync_all()).map_err(|e| format!("{}: {e}", args.file.display()))?;
    eprintln!("trove: token `{}` ({}) added to {}; it is shown once:", args.name, role.name(), args.file.display());
    println!("{}", auth::to_hex(&token));
    Ok(())
}

/// SIGTERM and SIGINT handlers, installed before start-up; a signal that
/// comes before `wait` is kept for it. SIGHUP reloads the auth file.
struct Signals {
    rt: tokio::runtime::Runtime,
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
    auth: Option<Arc<trove_server::auth::Auth>>,
}

impl Signals {
    fn install(auth: Option<Arc<trove_server::auth::Auth>>) -> Result<Self, String> {
        use tokio::signal::unix::{SignalKind, signal};
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .map_err(|e| format!("signal runtime: {e}"))?;
        // Registered with this runtime's driver, which `wait` runs.
        let (term, int, hup) = {
            let _context = rt.enter();
            (
                signal(SignalKind::terminate()).map_err(|e| format!("SIGTERM handler: {e}"))?,
                signal(SignalKind::interrupt()).map_err(|e| format!("SIGINT handler: {e}"))?,
                signal(SignalKind::hangup()).map_err(|e| format!("SIGHUP handler: {e}"))?,
            )
        };
        Ok(Self { rt, term, int, hup, auth })
    }

    /// Blocks until SIGTERM or SIGINT; returns its name. Each SIGHUP on
    /// the way reloads the auth file: a file that does not read keeps the
    /// old table, and the reason is logged.
    fn wait(self) -> &'static str {
        let Self { rt, mut term, mut int, mut hup, auth } = self;
        rt.block_on(async {
            loop {
                tokio::select! {
                    _ = term.recv() => return "SIGTERM",
                    _ = int.recv() => return "SIGINT",
                    _ = hup.recv() => match &auth {
                        None => eprintln!("trove: SIGHUP: authentication is off; nothing to reload"),
                        Some(a) => match a.reload() {
                            Ok(n) => eprintln!("trove: SIGHUP: auth file reloaded, {}", crate::plural(n as u64, "token")),
                            Err(e) => eprintln!("trove: SIGHUP: {e}; the previous tokens stay in force"),
                        },
                    },
                }
            }
        })
    }
}

/// Why a listen address (`--tcp`, `--ws`, `--control` or the config
/// file's `[listen]`) names no address to bind.
#[derive(Debug, PartialEq, Eq)]
pub enum ListenAddrError {
    /// Not `host:port`, or the host name did not resolve.
    Unresolved { what: &'static str, text: String, reason: String },
    /// The host name resolved to no address at all.
    Empty { what: &'static str, text: String },
}

impl std::fmt::Display for ListenAddrError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ListenAddrError::Unresolved { what, text, reason } => {
                write!(
                    f,
                    "{what} address `{text}`: {reason} (expected host:port, e.g. 127.0.0.1:7400 or localhost:7400)"
                )
            }
            ListenAddrError::Empty { what, text } => write!(f, "{what} address `{text}` resolves to no address"),
        }
    }
}

impl From<ListenAddrError> for String {
    fn from(e: ListenAddrError) -> String {
        e.to_string()
    }
}

/// Turns `host:port` into the address to bind: an IP address as it is, a
/// host name (`localhost:7400`) through the system resolver. Of several
/// addresses the first IPv4 one is taken (`localhost` is then 127.0.0.1,
/// as the defaults are), else the first.
pub fn listen_addr(what: &'static str, text: &str) -> Result<SocketAddr, ListenAddrError> {
    use std::net::ToSocketAddrs;
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(addr);
    }
    let unresolved = |reason: String| ListenAddrError::Unresolved { what, text: text.to_string(), reason };
    let addrs: Vec<SocketAddr> = text.to_socket_addrs().map_err(|e| unresolved(e.to_string()))?.collect();
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or(addrs.first())
        .copied()
        .ok_or(ListenAddrError::Empty { what, text: text.to_string() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_default_to_the_journal_s_count_else_the_cores_the_io_runtime_leaves() {
        assert_eq!(default_shards(None, 2, 1), 1);
        assert_eq!(default_shards(None, 8, 2), 6);
        assert_eq!(default_shards(None, 1, 1), 1);
        let dir = std::env::temp_dir().join(format!("trove-default-shards-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        // A new data directory: no meta yet.
        assert_eq!(default_shards(Some(&dir), 2, 1), 1);
        std::fs::write(dir.join("trove.meta"), "format=3\ngame=treasure-hunt\nrecord_size=32\nshards=3\n").unwrap();
        assert_eq!(default_shards(Some(&dir), 2, 1), 3);
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn the_shipped_config_lists_keys_the_server_takes() {
        let file: ServeFile = toml::from_str(include_str!("../../../config/trove.toml")).expect("config/trove.toml");
        assert_eq!(file.journal_io.as_deref(), Some("direct"));
        assert_eq!(file.fsync.as_deref(), Some("group"));
        assert_eq!(
            file.fsync.as_deref(),
            Some(FsyncPolicy::default().to_string().as_str()),
            "the file states the default"
        );
        assert_eq!(
            file.limits.connections_per_address_max,
            Some(trove_server::CONNECTIONS_PER_ADDRESS_MAX_DEFAULT),
            "the file states the default per-address limit"
        );
        assert_eq!(
            file.limits.control_connections_per_address_max,
            Some(trove_server::control::CONTROL_CONNECTIONS_PER_ADDRESS_MAX_DEFAULT),
        );
        assert_eq!(
            file.limits.subscriber_push_interval_ms,
            Some(trove_server::SUBSCRIBER_PUSH_INTERVAL_DEFAULT.as_millis() as u64),
            "the file states the default push interval"
        );
        assert_eq!(
            (file.limits.subscriber_wakeups_per_sec_max, file.limits.subscriber_updates_per_sec_max),
            (
                Some(trove_server::SUBSCRIBER_WAKEUPS_PER_SEC_MAX_DEFAULT),
                Some(trove_server::SUBSCRIBER_UPDATES_PER_SEC_MAX_DEFAULT)
            ),
            "the file states the default fan-out budget"
        );
        let d = ServerConfig::default();
        assert_eq!(
            (file.listen.ws_io_workers, file.listen.ws_io_nice),
            (Some(d.ws_io_workers), Some(d.ws_io_nice)),
            "the file states the WebSocket runtime's defaults"
        );
        assert_eq!(
            (file.engine.queue_wait_max_us, file.engine.queue_burst_allowance_ms),
            (
                Some(trove_shard::engine::QUEUE_WAIT_MAX_DEFAULT.as_micros() as u64),
                Some(trove_shard::engine::QUEUE_BURST_ALLOWANCE_DEFAULT.as_millis() as u64)
            ),
            "the file states the default admission bounds"
        );
    }
}
