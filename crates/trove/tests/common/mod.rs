//! Helpers shared by the `trove` integration tests.
// Each test binary uses some of these helpers.
#![allow(dead_code)]

use std::path::PathBuf;

/// Raises this process's open-file limit to its hard limit (a server it
/// starts inherits it): thousands of connections need more than the
/// usual 1,024. Returns the limit now in force.
#[allow(unsafe_code)]
pub fn raise_file_limit() -> u64 {
    let mut l = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: plain system calls on a local struct.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut l), 0);
        l.rlim_cur = l.rlim_max;
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &l), 0);
    }
    l.rlim_cur
}

/// A small hunt for tests that drive a server through the SDK: a 64x64
/// map, up to 1,024 players, no dig cooldown.
pub fn hunt_config() -> trove_hunt::HuntConfig {
    trove_hunt::HuntConfig {
        width: 64,
        height: 64,
        seed: 7,
        treasures_per_round: 8,
        value_min: 1,
        value_max: 10,
        dig_cooldown_ms: 0,
        step_max: 4,
        players_max: 1 << 10,
    }
}

/// Runs the `trove` binary with `args` to its end.
pub fn trove(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_trove")).args(args).output().expect("trove runs")
}

/// Asserts the run succeeded, showing its output if not.
pub fn ok(out: &std::process::Output) {
    assert!(
        out.status.success(),
        "status {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A JSON file's value.
pub fn read_json(path: &std::path::Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).expect("json file")).expect("valid JSON")
}

/// A fresh scratch directory for one test, named after it.
pub fn scratch_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("trove-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Writes `workloads/standard.toml` with each `(from, to)` text edit applied
/// into `dir/name` and returns its path.
pub fn workload_file(dir: &std::path::Path, name: &str, edits: &[(&str, &str)]) -> PathBuf {
    let mut text = include_str!("../../../../workloads/standard.toml").to_string();
    for (from, to) in edits {
        assert!(text.contains(from), "workloads/standard.toml has no `{from}`");
        text = text.replace(from, to);
    }
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// How long a server may take to say it listens (recovery included).
pub const READY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// One `trove serve` child process: stdout discarded, stderr collected by
/// a thread (the listeners' addresses are read from it). Killed (SIGKILL)
/// and reaped when dropped, if still running.
pub struct Serve {
    child: std::process::Child,
    stderr: std::sync::Arc<std::sync::Mutex<String>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

/// The addresses a server announced.
#[derive(Clone, Copy, Debug)]
pub struct Listening {
    pub tcp: std::net::SocketAddr,
    /// None with `--ws off`.
    pub ws: Option<std::net::SocketAddr>,
    pub control: std::net::SocketAddr,
}

impl Serve {
    /// Starts `trove serve ARGS`; see [`Serve::wait_ready`].
    pub fn spawn<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Serve {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_trove"));
        command.arg("serve").args(args);
        Serve::spawn_command(command)
    }

    /// Starts `trove serve ARGS` under `sh -c "PRELUDE && exec trove serve
    /// ARGS"` (a `ulimit`, say).
    pub fn spawn_under<S: AsRef<std::ffi::OsStr>>(prelude: &str, args: &[S]) -> Serve {
        let mut command = std::process::Command::new("sh");
        command
            .arg("-c")
            .arg(format!("{prelude} && exec \"$0\" serve \"$@\""))
            .arg(env!("CARGO_BIN_EXE_trove"))
            .args(args);
        Serve::spawn_command(command)
    }

    /// Starts `trove serve ARGS` under a limit on the size of the files it
    /// writes (RLIMIT_FSIZE, in KiB), with SIGXFSZ ignored: a write past
    /// the limit then fails with EFBIG, as a full disk fails one.
    pub fn spawn_with_file_limit<S: AsRef<std::ffi::OsStr>>(args: &[S], kib: u64) -> Serve {
        Serve::spawn_under(&format!("trap '' XFSZ; ulimit -f {kib}"), args)
    }

    fn spawn_command(mut command: std::process::Command) -> Serve {
        use std::io::BufRead;
        let mut child = command
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("trove serve starts");
        let pipe = child.stderr.take().expect("stderr is piped");
        let stderr = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let log = stderr.clone();
        let reader = std::thread::spawn(move || {
            for line in std::io::BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                let mut log = log.lock().unwrap_or_else(|e| e.into_inner());
                log.push_str(&line);
                log.push('\n');
            }
        });
        Serve { child, stderr, reader: Some(reader) }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its stderr so far.
    pub fn stderr_now(&self) -> String {
        self.stderr.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The address announced after `marker` (up to `/` or the line's end).
    fn announced(log: &str, marker: &str) -> Option<std::net::SocketAddr> {
        let rest = log.split(marker).nth(1)?;
        rest.split(['\n', '/']).next()?.trim().parse().ok()
    }

    /// Waits until the data plane and the control plane listen (panics,
    /// with its stderr, when the process exits first or after
    /// `READY_TIMEOUT`).
    pub fn wait_listening(&mut self) -> Listening {
        let deadline = std::time::Instant::now() + READY_TIMEOUT;
        loop {
            let log = self.stderr_now();
            let tcp = Serve::announced(&log, "protocol v1 on tcp://");
            let control = Serve::announced(&log, "control plane on http://");
            if let (Some(tcp), Some(control)) = (tcp, control) {
                let ws = Serve::announced(&log, "websocket (JSON) on ws://");
                return Listening { tcp, ws, control };
            }
            if let Some(status) = self.exited() {
                if let Some(r) = self.reader.take() {
                    let _ = r.join();
                }
                panic!("trove serve exited ({status}) before it was ready; stderr:\n{}", self.stderr_now());
            }
            assert!(std::time::Instant::now() < deadline, "trove serve never got ready; stderr:\n{log}");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }

    /// Waits for the listeners; returns the TCP data plane's address.
    pub fn wait_ready(&mut self) -> std::net::SocketAddr {
        self.wait_listening().tcp
    }

    /// The exit status if the process has ended.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().expect("try_wait")
    }

    /// Sends `signal` (TERM, INT, KILL) with the `kill` command.
    pub fn signal(&self, signal: &str) {
        send_signal(self.pid(), signal);
    }

    /// Waits for the process to end; SIGKILLs it and panics if it has not
    /// within `timeout`. Returns the exit status and the whole stderr.
    pub fn wait_exit(&mut self, timeout: std::time::Duration) -> (std::process::ExitStatus, String) {
        let deadline = std::time::Instant::now() + timeout;
        let status = loop {
            if let Some(status) = self.exited() {
                break status;
            }
            if std::time::Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!("trove serve did not exit within {timeout:?}; stderr:\n{}", self.stderr_now());
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        };
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        (status, self.stderr_now())
    }

    /// SIGTERM, then waits (up to `timeout`) for the exit.
    pub fn terminate(&mut self, timeout: std::time::Duration) -> (std::process::ExitStatus, String) {
        self.signal("TERM");
        self.wait_exit(timeout)
    }

    /// SIGTERM, then a graceful exit (status 0): returns the final line's
    /// events applied and state hash.
    pub fn stop(&mut self, timeout: std::time::Duration) -> (u64, String) {
        let (status, stderr) = self.terminate(timeout);
        assert!(status.success(), "SIGTERM must end trove serve with exit 0, got {status}; stderr:\n{stderr}");
        let line = stderr.lines().find(|l| l.contains("stopped;")).expect("a final line");
        let applied = line.split("stopped; ").nth(1).and_then(|r| r.split(' ').next()?.parse().ok());
        let hash = line.split("state hash ").nth(1).expect("a state hash").trim().to_string();
        (applied.expect("events applied"), hash)
    }

    /// The process's resident set (VmRSS), in bytes.
    pub fn rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).expect("/proc");
        let line = status.lines().find(|l| l.starts_with("VmRSS:")).expect("VmRSS");
        let kib: u64 = line.split_whitespace().nth(1).and_then(|v| v.parse().ok()).expect("a number");
        kib << 10
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// Sends `signal` to `pid` with the `kill` command.
pub fn send_signal(pid: u32, signal: &str) {
    let status =
        std::process::Command::new("kill").arg(format!("-{signal}")).arg(pid.to_string()).status().expect("kill runs");
    assert!(status.success(), "kill -{signal} {pid}: {status}");
}

/// The WebSocket upgrade request [`ws_upgrade`] sends (a fixed key).
pub const WS_UPGRADE: &[u8] = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
    Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

/// Connects to a WebSocket endpoint and completes the upgrade; reads wait
/// up to `read_timeout`.
pub fn ws_connect(addr: std::net::SocketAddr, read_timeout: std::time::Duration) -> std::net::TcpStream {
    ws_upgrade(std::net::TcpStream::connect(addr).expect("connect"), read_timeout)
}

/// Completes the WebSocket upgrade on a connected stream.
pub fn ws_upgrade(mut s: std::net::TcpStream, read_timeout: std::time::Duration) -> std::net::TcpStream {
    use std::io::{Read, Write};
    s.set_read_timeout(Some(read_timeout)).unwrap();
    s.write_all(WS_UPGRADE).unwrap();
    // Byte by byte up to the end of the response's head: nothing follows
    // it until this side sends a message.
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte).expect("the upgrade's answer");
        head.push(byte[0]);
        assert!(head.len() < 4096, "an answer head that never ends");
    }
    assert!(head.starts_with(b"HTTP/1.1 101"), "{}", String::from_utf8_lossy(&head));
    s
}

/// Reads one server frame (unmasked): its first byte (FIN and opcode) and
/// its payload.
pub fn ws_read_frame(s: &mut std::net::TcpStream) -> (u8, Vec<u8>) {
    use std::io::Read;
    let mut h = [0u8; 2];
    s.read_exact(&mut h).expect("a frame");
    let len = match h[1] & 0x7f {
        126 => {
            let mut l = [0u8; 2];
            s.read_exact(&mut l).unwrap();
            u16::from_be_bytes(l) as usize
        }
        127 => {
            let mut l = [0u8; 8];
            s.read_exact(&mut l).unwrap();
            usize::try_from(u64::from_be_bytes(l)).unwrap()
        }
        n => n as usize,
    };
    let mut payload = vec![0u8; len];
    s.read_exact(&mut payload).unwrap();
    (h[0], payload)
}

/// One `/metrics` series' value as a count (`name` with its labels as the
/// server writes them, if any); `None` if the control plane does not
/// answer or has no such series.
pub fn metric(control: std::net::SocketAddr, name: &str) -> Option<u64> {
    let reply = trove_bench::http::get(control, "/metrics", std::time::Duration::from_secs(30)).ok()?;
    let value = trove_bench::prometheus::parse(&reply.body).value(name)?;
    (value >= 0.0 && value.fract() == 0.0).then_some(value as u64)
}
