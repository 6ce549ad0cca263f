//! The control plane's limits on a real `trove serve` process, where the
//! process-wide limits are the point (docs/control.md, "Limits"):
//!
//! - under a low open-file limit (`ulimit -n 256`), a flood of stalled
//!   control-plane requests leaves new data-plane connections and `/health`
//!   working, and a full data plane leaves the control plane working;
//! - the start is refused when the connection caps do not fit under the
//!   open-file limit, naming the numbers;
//! - after a journal failure (a file-size limit makes a write fail), every
//!   create is answered `failed` and the probes keep answering (a create
//!   whose batch could never complete used to pin the plane's only thread).
//!
//! A `Serve` guard kills its process when dropped.

mod common;

use common::Serve;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use trove_proto::Frame;
use trove_proto::frame::{self, HEADER_LEN, Hello, Sizes, hello_flags};

/// How long a server may take to exit.
const EXIT_TIMEOUT: Duration = Duration::from_secs(60);
/// How long any one answer may take on this loaded machine.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

/// One request on its own connection: (status, body). Panics, naming the
/// request, when no answer comes within `ANSWER_TIMEOUT`.
fn http(addr: SocketAddr, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("{method} {path}: connecting: {e}"));
    s.set_read_timeout(Some(ANSWER_TIMEOUT)).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: trove\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap_or_else(|e| panic!("{method} {path}: no answer ({e})"));
    let text = String::from_utf8_lossy(&raw).to_string();
    let status = text.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or_else(|| panic!("no status: {text}"));
    (status, text.split("\r\n\r\n").nth(1).unwrap_or("").to_string())
}

/// A data-plane connection that got its WELCOME.
fn hello(addr: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).expect("the data plane accepts");
    s.set_read_timeout(Some(ANSWER_TIMEOUT)).unwrap();
    let mut b = Vec::new();
    frame::encode_hello(&mut b, &Hello::v1(hello_flags::OUTCOMES, 0));
    s.write_all(&b).unwrap();
    let mut buf = Vec::new();
    let (header, total) = loop {
        if let Some(found) = frame::split(&buf, 1 << 20).expect("a frame") {
            break found;
        }
        let mut chunk = [0u8; 4096];
        match s.read(&mut chunk) {
            Ok(0) => panic!("the data plane closed the connection before its WELCOME"),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) => panic!("no WELCOME from the data plane: {e}"),
        }
    };
    match frame::decode(header, &buf[HEADER_LEN..total], Sizes { record: 32, outcome: 16 }).expect("decodes") {
        Frame::Welcome(_) => s,
        other => panic!("expected WELCOME, got {other:?}"),
    }
}

const CREATE: &str = r#"{"id": 1, "config": {"width": 8, "height": 8, "seed": 7, "treasures_per_round": 4,
    "value_min": 1, "value_max": 9, "dig_cooldown_ms": 0, "step_max": 4, "players_max": 10}}"#;

#[test]
fn a_flooded_control_plane_leaves_the_data_plane_and_health_working() {
    // The test process holds the flood's sockets itself.
    trove_server::fds::raise_open_files_limit().expect("the open-file limit");
    let dir = common::scratch_dir("control-flood");
    let config = dir.join("trove.toml");
    std::fs::write(
        &config,
        "[limits]\nconnections_max = 64\ncontrol_connections_max = 32\ncontrol_header_timeout_ms = 60000\n",
    )
    .unwrap();
    let data = dir.join("data");
    let args = ["--data", data.to_str().unwrap(), "--tcp", "127.0.0.1:0", "--ws", "off", "--control", "127.0.0.1:0"];
    let mut args = args.to_vec();
    args.extend(["--shards", "1", "--config", config.to_str().unwrap()]);
    let mut server = Serve::spawn_under("ulimit -n 256", &args);
    let common::Listening { tcp, control, .. } = server.wait_listening();

    // 600 stalled requests, more than the process may open files: the cap
    // holds them to 32 (the oldest closed to make room), far below the limit.
    let mut stalled = Vec::new();
    for _ in 0..600 {
        let mut s = TcpStream::connect(control).expect("the control plane accepts");
        s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n").unwrap();
        stalled.push(s);
    }
    // The data plane takes new connections up to its own cap, and /health
    // answers, while the flood is held.
    let producers: Vec<TcpStream> = (0..64).map(|_| hello(tcp)).collect();
    for _ in 0..5 {
        assert_eq!(http(control, "GET", "/health", ""), (200, r#"{"status":"ok"}"#.to_string()));
    }
    // And the reverse: a data plane at its cap, with more knocking, leaves
    // the control plane working.
    let refused: Vec<TcpStream> = (0..200).filter_map(|_| TcpStream::connect(tcp).ok()).collect();
    assert_eq!(http(control, "GET", "/health", "").0, 200);
    assert_eq!(http(control, "POST", "/hunts", CREATE).0, 201);
    let (status, metrics) = http(control, "GET", "/metrics", "");
    assert_eq!(status, 200);
    let open: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("trove_control_connections_open "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no trove_control_connections_open in\n{metrics}"));
    assert!(open <= 32.0, "{open} control connections open");
    drop((stalled, producers, refused));
    let (status, stderr) = server.terminate(EXIT_TIMEOUT);
    assert!(status.success(), "exit {status}:\n{stderr}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn serve_refuses_to_start_when_the_caps_do_not_fit_the_open_file_limit() {
    let dir = common::scratch_dir("control-nofile");
    let data = dir.join("data");
    let args = ["--data", data.to_str().unwrap(), "--tcp", "127.0.0.1:0", "--ws", "off", "--control", "127.0.0.1:0"];
    // The defaults: 1024 data-plane and 128 control-plane connections.
    let mut server = Serve::spawn_under("ulimit -n 256", &args);
    let (status, stderr) = server.wait_exit(EXIT_TIMEOUT);
    assert!(!status.success(), "started under a limit of 256:\n{stderr}");
    for part in ["open-file limit is 256", "connections_max 1024", "control_connections_max 128"] {
        assert!(stderr.contains(part), "`{part}` not in:\n{stderr}");
    }
    assert!(!data.exists(), "a refused start wrote its data directory");

    // The limits themselves are checked, naming the key.
    for (key, value) in [
        ("control_connections_max", "0"),
        ("control_header_timeout_ms", "0"),
        ("control_body_timeout_ms", "0"),
        ("control_connections_max", "65537"),
    ] {
        let config = dir.join("limits.toml");
        std::fs::write(&config, format!("[limits]\n{key} = {value}\n")).unwrap();
        let mut with_config = args.to_vec();
        with_config.extend(["--config", config.to_str().unwrap()]);
        let (status, stderr) = Serve::spawn_under("true", &with_config).wait_exit(EXIT_TIMEOUT);
        assert!(!status.success() && stderr.contains(key), "{key} = {value}: exit {status}:\n{stderr}");
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn a_create_after_a_disk_failure_is_answered_and_the_probes_keep_answering() {
    let dir = common::scratch_dir("control-efbig");
    let data = dir.join("data");
    let args = ["--data", data.to_str().unwrap(), "--tcp", "127.0.0.1:0", "--ws", "off", "--control", "127.0.0.1:0"];
    let mut args = args.to_vec();
    args.extend(["--shards", "1"]);
    // Files of at most 64 blocks: the journal's segment fills after a few
    // hundred creates, and the write past it fails (EFBIG, as a full disk).
    let mut server = Serve::spawn_under("trap '' XFSZ; ulimit -f 64", &args);
    let control = server.wait_listening().control;
    assert_eq!(http(control, "GET", "/health", "").0, 200);

    // The same create again and again (each one an event in the journal)
    // until one is in flight when the journal fails.
    let mut failed = None;
    for _ in 0..100_000 {
        let (status, body) = http(control, "POST", "/hunts", CREATE);
        if status != 201 && status != 409 {
            failed = Some((status, body));
            break;
        }
    }
    let (status, body) = failed.expect("the journal fails within 100,000 creates");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("\"failed\"") && body.contains("journal of shard 0"), "{body}");
    // The creates after it: the same answer, at once, and the probes and
    // the metrics keep answering between them.
    for _ in 0..3 {
        let (status, body) = http(control, "POST", "/hunts", CREATE);
        assert_eq!(status, 503, "{body}");
        assert!(body.contains("\"failed\""), "{body}");
        let (status, body) = http(control, "GET", "/health", "");
        assert_eq!(status, 503, "{body}");
        assert!(body.contains("\"failed\""), "{body}");
        assert_eq!(http(control, "GET", "/ready", "").0, 503);
        assert_eq!(http(control, "GET", "/metrics", "").0, 200);
    }
    let (status, stderr) = server.terminate(EXIT_TIMEOUT);
    assert!(!status.success() && stderr.contains("stopped after a failure"), "exit {status}:\n{stderr}");
    std::fs::remove_dir_all(&dir).ok();
}
