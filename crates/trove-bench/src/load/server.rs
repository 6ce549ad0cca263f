//! A fresh `trove serve` child process on loopback, one per execution mode,
//! so every mode starts from the same empty state and the server's CPU is
//! its own (`process_cpu_seconds_total` in its /metrics).

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::ServerArgs;

/// How the child is started.
#[derive(Clone, Debug)]
pub struct ChildSpec {
    /// The binary and the settings every mode's server shares (its
    /// `fsync`: `None` is `--no-journal`; else the policy, journaling
    /// into `data`).
    pub server: ServerArgs,
    /// sharded, task-per-event or spawn-blocking-per-event.
    pub mode: String,
    pub data: PathBuf,
    /// Listen for WebSocket too (on a port of its own).
    pub ws: bool,
    /// `[limits] connections_per_address_max` (and `connections_max`, if
    /// above its default) when the defaults admit too few from one address.
    pub connections_max: Option<u32>,
}

/// A running child; killed when dropped.
#[derive(Debug)]
pub struct ChildServer {
    child: Child,
    pub tcp: SocketAddr,
    pub control: SocketAddr,
    /// The WebSocket listener, when asked for.
    pub ws: Option<SocketAddr>,
    /// The child's stderr lines after the listen lines, for errors.
    log: mpsc::Receiver<String>,
    data: Option<PathBuf>,
}

const START_TIMEOUT: Duration = Duration::from_secs(30);

/// Lines of the child's stderr kept for errors, and their length.
const LOG_LINES: usize = 256;
const LINE_CHARS: usize = 1000;

impl ChildServer {
    pub fn start(spec: &ChildSpec) -> Result<Self, String> {
        let mut cmd = Command::new(&spec.server.exe);
        cmd.arg("serve")
            .args(["--mode", &spec.mode, "--tcp", "127.0.0.1:0", "--control", "127.0.0.1:0"])
            .args(["--ws", if spec.ws { "127.0.0.1:0" } else { "off" }])
            .args(["--io-workers", &spec.server.io_workers.to_string()]);
        if let Some(n) = spec.server.ws_io_workers {
            cmd.args(["--ws-io-workers", &n.to_string()]);
        }
        if let Some(n) = spec.server.ws_io_nice {
            cmd.args(["--ws-io-nice", &n.to_string()]);
        }
        if let Some(s) = spec.server.shards {
            cmd.args(["--shards", &s.to_string()]);
        }
        let mut data = None;
        if spec.connections_max.is_some()
            || spec.server.subscriber_push_interval_ms.is_some()
            || spec.server.subscriber_budget.is_some()
        {
            // Only these limits: every other setting keeps its default or flag.
            let mut limits = String::from("[limits]\n");
            if let Some(max) = spec.connections_max {
                // All from this one address: the per-address limit too.
                let total = (max as usize).max(trove_server::ServerConfig::default().connections_max);
                limits += &format!("connections_max = {total}\nconnections_per_address_max = {max}\n");
            }
            if let Some(ms) = spec.server.subscriber_push_interval_ms {
                limits += &format!("subscriber_push_interval_ms = {ms}\n");
            }
            if let Some((wakeups, updates)) = spec.server.subscriber_budget {
                limits += &format!(
                    "subscriber_wakeups_per_sec_max = {wakeups}\nsubscriber_updates_per_sec_max = {updates}\n"
                );
            }
            let path = spec.data.with_extension("toml");
            std::fs::write(&path, limits).map_err(|e| format!("writing {}: {e}", path.display()))?;
            cmd.arg("--config").arg(&path);
        }
        match &spec.server.fsync {
            None => {
                cmd.arg("--no-journal");
            }
            Some(policy) => {
                let _ = std::fs::remove_dir_all(&spec.data);
                cmd.arg("--data").arg(&spec.data).args(["--fsync", policy]);
                data = Some(spec.data.clone());
            }
        }
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("starting {} serve: {e}", spec.server.exe.display()))?;
        let Some(stderr) = child.stderr.take() else {
            let _ = child.kill();
            let _ = child.wait();
            return Err("no stderr pipe from the server".into());
        };
        // Keeps draining the pipe whatever the child writes (a full pipe
        // would block it); lines nobody reads past the buffer are dropped.
        let (tx, log) = mpsc::sync_channel(LOG_LINES);
        let reader = std::thread::Builder::new().name("bench-server-log".into()).spawn(move || {
            let mut r = BufReader::new(stderr);
            let mut line = Vec::new();
            while matches!(r.read_until(b'\n', &mut line), Ok(n) if n > 0) {
                let text = String::from_utf8_lossy(&line).trim_end().chars().take(LINE_CHARS).collect();
                let _ = tx.try_send(text);
                line.clear();
            }
        });
        if let Err(e) = reader {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("server log thread: {e}"));
        }
        let mut server = Self {
            child,
            tcp: SocketAddr::from(([0, 0, 0, 0], 0)),
            control: SocketAddr::from(([0, 0, 0, 0], 0)),
            ws: None,
            log,
            data,
        };
        let deadline = Instant::now() + START_TIMEOUT;
        let (mut tcp, mut control) = (None, None);
        let mut seen = Vec::new();
        let mut ws = None;
        while tcp.is_none() || control.is_none() || (spec.ws && ws.is_none()) {
            let left = deadline.saturating_duration_since(Instant::now());
            match server.log.recv_timeout(left) {
                Ok(line) => {
                    tcp = tcp.or_else(|| addr_after(&line, "protocol v1 on tcp://"));
                    control = control.or_else(|| addr_after(&line, "control plane on http://"));
                    ws = ws.or_else(|| addr_after(&line, "websocket (JSON) on ws://"));
                    seen.push(line);
                }
                Err(_) => {
                    return Err(format!(
                        "the {} server did not start within {START_TIMEOUT:?}; it said:\n{}",
                        spec.mode,
                        seen.join("\n")
                    ));
                }
            }
        }
        server.tcp = tcp.ok_or("no tcp address")?;
        server.control = control.ok_or("no control address")?;
        server.ws = ws;
        if spec.connections_max.is_some() {
            // Read at start; not needed past it.
            let _ = std::fs::remove_file(spec.data.with_extension("toml"));
        }
        Ok(server)
    }

    /// SIGTERM, then SIGKILL if it has not stopped within `grace`. Returns
    /// the child's last lines (its final state hash among them).
    pub fn stop(mut self, grace: Duration) -> Vec<String> {
        self.stop_inner(grace);
        self.log.try_iter().collect()
    }

    fn stop_inner(&mut self, grace: Duration) {
        if let Ok(None) = self.child.try_wait() {
            let _ = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status();
            let deadline = Instant::now() + grace;
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if let Some(d) = self.data.take() {
            remove_data(&d);
        }
    }
}

impl Drop for ChildServer {
    fn drop(&mut self) {
        self.stop_inner(Duration::from_secs(5));
    }
}

fn addr_after(line: &str, prefix: &str) -> Option<SocketAddr> {
    let rest = line.split_once(prefix)?.1;
    rest.split(['/', ' ']).next()?.parse().ok()
}

fn remove_data(d: &Path) {
    let _ = std::fs::remove_dir_all(d);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_lines_are_read() {
        assert_eq!(
            addr_after("trove: protocol v1 on tcp://127.0.0.1:4100", "protocol v1 on tcp://"),
            Some("127.0.0.1:4100".parse().unwrap())
        );
        assert_eq!(
            addr_after("trove: control plane on http://127.0.0.1:9/ (/metrics)", "control plane on http://"),
            Some("127.0.0.1:9".parse().unwrap())
        );
        assert_eq!(addr_after("trove: serving", "control plane on http://"), None);
    }
}
