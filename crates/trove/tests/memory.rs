//! The data plane's memory under hostile peers, measured on a real `trove
//! serve` process (its VmRSS): announced lengths cost nothing, and bytes
//! of unfinished frames cost at most `unfinished_frame_bytes_max` across
//! connections (docs/protocol.md, "Memory").

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use trove_hunt::HuntEvent;
use trove_proto::frame::{self, HEADER_LEN, Hello, Kind, VERSION};

/// Connections per kind of attack.
const CONNECTIONS: usize = 1000;
/// The default `unfinished_frame_bytes_max`.
const BUDGET: u64 = 64 << 20;
/// What docs/protocol.md allows per open TCP connection on top of the
/// budget (buffers at their base, the task, the socket's bookkeeping).
const PER_CONNECTION: u64 = 32 << 10;
/// Events in one EVENTS frame of a body one byte short of the default
/// 1 MiB limit (and one more record would pass it).
const EVENTS_FULL: u32 = 32767;

struct Serve {
    child: Child,
    addrs: mpsc::Receiver<(String, SocketAddr)>,
    stderr: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Serve {
    fn start(config: &std::path::Path) -> (Serve, SocketAddr, SocketAddr) {
        let mut child = Command::new(env!("CARGO_BIN_EXE_trove"))
            .args(["serve", "--no-journal", "--tcp", "127.0.0.1:0", "--ws", "off", "--control", "127.0.0.1:0"])
            .arg("--config")
            .arg(config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("trove serve starts");
        let pipe = child.stderr.take().expect("piped");
        let (tx, addrs) = mpsc::channel();
        let stderr = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let log = stderr.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                for (what, marker) in [("tcp", "protocol v1 on tcp://"), ("control", "control plane on http://")] {
                    if let Some(a) = line.split(marker).nth(1) {
                        let a = a.split('/').next().unwrap_or("").trim();
                        if let Ok(a) = a.parse() {
                            let _ = tx.send((what.to_string(), a));
                        }
                    }
                }
                log.lock().unwrap_or_else(|e| e.into_inner()).push_str(&format!("{line}\n"));
            }
        });
        let serve = Serve { child, addrs, stderr };
        let (mut tcp, mut control) = (None, None);
        while tcp.is_none() || control.is_none() {
            match serve.addrs.recv_timeout(Duration::from_secs(60)) {
                Ok((w, a)) if w == "tcp" => tcp = Some(a),
                Ok((_, a)) => control = Some(a),
                Err(e) => panic!("trove serve never got ready ({e}): {}", serve.stderr()),
            }
        }
        (serve, tcp.expect("seen"), control.expect("seen"))
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The process's resident set, in bytes.
    fn rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).expect("/proc");
        let line = status.lines().find(|l| l.starts_with("VmRSS:")).expect("VmRSS");
        let kib: u64 = line.split_whitespace().nth(1).and_then(|v| v.parse().ok()).expect("a number");
        kib << 10
    }
}

/// Raises this process's open-file limit to its hard limit (the child
/// inherits it): 2,000 connections need more than the usual 1024.
#[allow(unsafe_code)]
fn raise_file_limit() -> u64 {
    let mut l = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: plain system calls on a local struct.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut l), 0);
        l.rlim_cur = l.rlim_max;
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &l), 0);
    }
    l.rlim_cur
}

/// Connects and completes the handshake.
fn connect(addr: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut b = Vec::new();
    frame::encode_hello(&mut b, &Hello { version: VERSION, flags: 0, producer_id: 0 });
    s.write_all(&b).unwrap();
    let mut welcome = [0u8; HEADER_LEN + 32];
    s.read_exact(&mut welcome).expect("WELCOME");
    assert_eq!(welcome[4], Kind::Welcome as u8);
    s
}

/// An EVENTS frame of `count` joins to a hunt that does not exist.
fn events_frame(first_seq: u64, count: u32) -> Vec<u8> {
    let events: Vec<HuntEvent> = (0..count).map(|p| HuntEvent::join(77, p)).collect();
    let mut b = Vec::new();
    frame::encode_events(&mut b, first_seq, &events);
    b
}

/// Writes each stream's bytes, non-blocking, round after round, until all
/// are written or the server stops taking any (it reads no more than its
/// budget) for a while. Returns the bytes written.
fn write_all_until_stalled(streams: &mut [TcpStream], bytes: &[u8], from: usize) -> u64 {
    let mut sent = vec![from; streams.len()];
    let mut total = 0u64;
    let mut stalled_since = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(60);
    for s in streams.iter() {
        s.set_nonblocking(true).unwrap();
    }
    while Instant::now() < deadline && stalled_since.elapsed() < Duration::from_secs(2) {
        let mut progress = false;
        for (s, at) in streams.iter_mut().zip(sent.iter_mut()) {
            while *at < bytes.len() {
                match s.write(&bytes[*at..]) {
                    Ok(n) => {
                        *at += n;
                        total += n as u64;
                        progress = true;
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) => panic!("the server closed a connection that was sending: {e}"),
                }
            }
        }
        if sent.iter().all(|&at| at == bytes.len()) {
            break;
        }
        if progress {
            stalled_since = Instant::now();
        } else {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    for s in streams.iter() {
        s.set_nonblocking(false).unwrap();
    }
    total
}

/// One `/metrics` sample's value.
fn metric(control: SocketAddr, name: &str) -> Option<u64> {
    let mut s = TcpStream::connect(control).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(30))).ok()?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

#[test]
fn announced_and_unfinished_frames_hold_the_servers_memory_under_its_bound() {
    assert!(raise_file_limit() >= 2 * CONNECTIONS as u64 + 200, "the test needs 2,200 open files");
    let dir = std::env::temp_dir().join(format!("trove-memory-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("trove.toml");
    std::fs::write(&config, "[limits]\nconnections_max = 2100\nidle_timeout_ms = 600000\n").unwrap();
    let (serve, addr, control) = Serve::start(&config);

    // Warm up: one connection through a whole large frame and its ACK.
    let mut warm = connect(addr);
    warm.write_all(&events_frame(1, EVENTS_FULL)).unwrap();
    let mut ack = [0u8; HEADER_LEN + 16];
    warm.read_exact(&mut ack).expect("ACK");
    assert_eq!(ack[4], Kind::Ack as u8);
    drop(warm);
    std::thread::sleep(Duration::from_millis(200));
    let idle = serve.rss();
    // Twice the budget: a buffer that doubled to a size freed the smaller
    // ones on the way, which the allocator keeps for reuse.
    let bound = |connections: usize| idle + 2 * BUDGET + connections as u64 * PER_CONNECTION;

    // 1,000 connections announce a 1 MiB body and send 32 bytes of it.
    let full = events_frame(1, EVENTS_FULL);
    let mut announced: Vec<TcpStream> = (0..CONNECTIONS).map(|_| connect(addr)).collect();
    for s in &mut announced {
        s.write_all(&full[..HEADER_LEN + 32]).unwrap();
    }
    std::thread::sleep(Duration::from_millis(500));
    let rss_announced = serve.rss();
    eprintln!("idle {} MiB, 1,000 announced 1 MiB frames: {} MiB", idle >> 20, rss_announced >> 20);
    assert!(
        rss_announced <= bound(CONNECTIONS),
        "RSS {rss_announced} above {} with 1,000 announced frames; stderr:\n{}",
        bound(CONNECTIONS),
        serve.stderr()
    );

    // 1,000 more send all of a 1 MiB frame but its last byte.
    let mut unfinished: Vec<TcpStream> = (0..CONNECTIONS).map(|_| connect(addr)).collect();
    let written = write_all_until_stalled(&mut unfinished, &full[..full.len() - 1], 0);
    let rss_unfinished = serve.rss();
    eprintln!(
        "{} MiB written by 1,000 unfinished frames: RSS {} MiB (bound {} MiB)",
        written >> 20,
        rss_unfinished >> 20,
        bound(2 * CONNECTIONS) >> 20
    );
    assert!(written >= BUDGET, "the server read at least its budget: {written}");
    assert!(
        rss_unfinished <= bound(2 * CONNECTIONS),
        "RSS {rss_unfinished} above {} with 1,000 unfinished frames; stderr:\n{}",
        bound(2 * CONNECTIONS),
        serve.stderr()
    );
    let held = metric(control, "trove_unfinished_frame_bytes").expect("the gauge");
    assert!(held <= BUDGET, "budget held {held}");

    // They close: the budget comes back whole, and RSS stays bounded.
    drop(announced);
    drop(unfinished);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let held = metric(control, "trove_unfinished_frame_bytes");
        if held == Some(0) {
            break;
        }
        assert!(Instant::now() < deadline, "budget still held after every connection closed: {held:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let rss_closed = serve.rss();
    eprintln!("after they closed: {} MiB", rss_closed >> 20);
    assert!(rss_closed <= bound(2 * CONNECTIONS), "RSS {rss_closed} after close");

    // And a large frame goes through as before.
    let mut after = connect(addr);
    after.write_all(&events_frame(1, EVENTS_FULL)).unwrap();
    after.read_exact(&mut ack).expect("ACK after the flood");
    assert_eq!(ack[4], Kind::Ack as u8);
    let _ = std::fs::remove_dir_all(&dir);
}
