//! The data plane's memory under hostile peers, measured on a real `trove
//! serve` process (its VmRSS): announced lengths cost nothing, and bytes
//! of unfinished frames (TCP) and messages (WebSocket) cost at most
//! `unfinished_frame_bytes_max` across connections (docs/protocol.md,
//! "Memory").

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

mod common;

use common::{Serve, metric};
use trove_hunt::HuntEvent;
use trove_proto::frame::{self, HEADER_LEN, Hello, Kind};

/// Connections per kind of attack.
const CONNECTIONS: usize = 1000;
/// The default `unfinished_frame_bytes_max`.
const BUDGET: u64 = 64 << 20;
/// What docs/protocol.md allows per open TCP connection on top of the
/// budget (buffers at their base, the task, the socket's bookkeeping).
const PER_CONNECTION: u64 = 32 << 10;
/// The same for an open WebSocket connection (its HTTP state, the
/// library's buffers, the unbudgeted first 16 KiB of a message).
const PER_WS_CONNECTION: u64 = 96 << 10;
/// A WebSocket frame's payload one byte short of the default 1 MiB
/// `ws_message_max`.
const WS_PAYLOAD_FULL: usize = (1 << 20) - 1;
/// Events in one EVENTS frame of a body one byte short of the default
/// 1 MiB limit (and one more record would pass it).
const EVENTS_FULL: u32 = 32767;

/// Starts a server under `config`; returns it with its TCP (or, with
/// `ws`, WebSocket) and control addresses.
fn start(config: &std::path::Path, ws: bool) -> (Serve, SocketAddr, SocketAddr) {
    let mut args = vec!["--no-journal", "--tcp", "127.0.0.1:0", "--control", "127.0.0.1:0"];
    args.extend(["--ws", if ws { "127.0.0.1:0" } else { "off" }, "--config"]);
    let mut args: Vec<std::ffi::OsString> = args.into_iter().map(Into::into).collect();
    args.push(config.into());
    let mut serve = Serve::spawn(&args);
    let at = serve.wait_listening();
    let data = if ws { at.ws.expect("the WebSocket listener") } else { at.tcp };
    (serve, data, at.control)
}

/// Connects and completes the handshake.
fn connect(addr: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut b = Vec::new();
    frame::encode_hello(&mut b, &Hello::v1(0, 0));
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

#[test]
fn announced_and_unfinished_frames_hold_the_servers_memory_under_its_bound() {
    assert!(common::raise_file_limit() >= 2 * CONNECTIONS as u64 + 200, "the test needs 2,200 open files");
    let dir = std::env::temp_dir().join(format!("trove-memory-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("trove.toml");
    std::fs::write(
        &config,
        "[limits]\nconnections_max = 2100\nconnections_per_address_max = 2100\nidle_timeout_ms = 600000\n",
    )
    .unwrap();
    let (serve, addr, control) = start(&config, false);

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
        serve.stderr_now()
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
        serve.stderr_now()
    );
    let held = metric(control, "trove_unfinished_frame_bytes").expect("the gauge");
    assert!(held <= BUDGET, "budget held {held}");

    // They close: the budget comes back whole, and RSS stays bounded.
    drop(announced);
    drop(unfinished);
    wait_until_budget_free(control, "after every connection closed");
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

/// Connects and completes the WebSocket upgrade.
fn ws_connect(addr: SocketAddr) -> TcpStream {
    common::ws_connect(addr, Duration::from_secs(60))
}

/// A client frame's header (final, masked with a zero key, so the payload
/// goes as it is) announcing `len` bytes of `opcode` (1 text, 2 binary).
fn ws_header(opcode: u8, len: usize) -> Vec<u8> {
    ws_header_fin(opcode, len, true)
}

/// The same, final or not (`opcode` 0 continues a message).
fn ws_header_fin(opcode: u8, len: usize, fin: bool) -> Vec<u8> {
    let mut h = vec![if fin { 0x80 } else { 0 } | opcode];
    if len < 126 {
        h.push(0x80 | len as u8);
    } else if len <= 0xffff {
        h.push(0x80 | 126);
        h.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        h.push(0x80 | 127);
        h.extend_from_slice(&(len as u64).to_be_bytes());
    }
    h.extend_from_slice(&[0; 4]);
    h
}

/// A text frame of a `ping` whose nonce pads it to `len` bytes.
fn ws_ping_frame(len: usize) -> Vec<u8> {
    let prefix = r#"{"type":"ping","nonce":""#;
    let pad = len - prefix.len() - 2;
    let text = format!("{prefix}{}\"}}", "x".repeat(pad));
    assert_eq!(text.len(), len);
    let mut f = ws_header(1, len);
    f.extend_from_slice(text.as_bytes());
    f
}

/// Reads one server frame (unmasked) and returns its opcode and payload.
fn ws_read(s: &mut TcpStream) -> (u8, Vec<u8>) {
    let (first, payload) = common::ws_read_frame(s);
    (first & 0x0f, payload)
}

/// What one WebSocket connection charges with the defaults
/// (`ws::message_bytes_max`: the 1 MiB limits and 64 KiB of headers).
const WS_CHARGE: u64 = (1 << 20) + (64 << 10);

/// Waits (a minute at most) until the server holds exactly `held` bytes of
/// budget and has counted at least `waits` waits for it; returns the waits.
fn wait_for_budget(control: SocketAddr, held: u64, waits: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let now_held = metric(control, "trove_unfinished_frame_bytes");
        let now_waits = metric(control, "trove_unfinished_frame_waits_total");
        if now_held == Some(held) && now_waits.is_some_and(|w| w >= waits) {
            return now_waits.unwrap_or(0);
        }
        assert!(
            Instant::now() < deadline,
            "budget held {now_held:?} (expected {held}), waits {now_waits:?} (expected {waits} or more)"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits (a minute at most) until the server holds no budget; `what` names
/// the moment in the failure.
fn wait_until_budget_free(control: SocketAddr, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let held = metric(control, "trove_unfinished_frame_bytes");
        if held == Some(0) {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: budget still held: {held:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Sends a ping padded to the largest message and reads its pong.
fn ws_round_trip(s: &mut TcpStream) {
    s.write_all(&ws_ping_frame(WS_PAYLOAD_FULL)).unwrap();
    let (opcode, payload) = ws_read(s);
    assert_eq!(opcode, 1, "a text message");
    assert!(payload.starts_with(br#"{"type":"pong""#) || payload.windows(6).any(|w| w == b"\"pong\""));
}

#[test]
fn announced_and_unfinished_websocket_messages_hold_the_servers_memory_under_its_bound() {
    assert!(common::raise_file_limit() >= 2 * CONNECTIONS as u64 + 200, "the test needs 2,200 open files");
    let dir = std::env::temp_dir().join(format!("trove-memory-ws-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("trove.toml");
    std::fs::write(
        &config,
        "[limits]\nconnections_max = 2100\nconnections_per_address_max = 2100\nidle_timeout_ms = 600000\n",
    )
    .unwrap();
    let (serve, addr, control) = start(&config, true);

    // Warm up: one connection through a whole largest message and its answer.
    let mut warm = ws_connect(addr);
    ws_round_trip(&mut warm);
    drop(warm);
    std::thread::sleep(Duration::from_millis(200));
    let idle = serve.rss();
    let bound = |connections: usize| idle + 2 * BUDGET + connections as u64 * PER_WS_CONNECTION;

    // 1,000 connections announce a 1 MiB binary message and send 32 bytes.
    let mut announced: Vec<TcpStream> = (0..CONNECTIONS).map(|_| ws_connect(addr)).collect();
    for s in &mut announced {
        let mut b = ws_header(2, WS_PAYLOAD_FULL);
        b.extend_from_slice(&[7; 32]);
        s.write_all(&b).unwrap();
    }
    // The server read them: the budget is spent in whole charges, and every
    // other connection waits for one.
    let charged = (BUDGET / WS_CHARGE) * WS_CHARGE;
    let waits_announced = wait_for_budget(control, charged, CONNECTIONS as u64 - BUDGET / WS_CHARGE);
    let rss_announced = serve.rss();
    eprintln!("idle {} MiB, 1,000 announced 1 MiB messages: {} MiB", idle >> 20, rss_announced >> 20);
    assert!(
        rss_announced <= bound(CONNECTIONS),
        "RSS {rss_announced} above {} with 1,000 announced messages; stderr:\n{}",
        bound(CONNECTIONS),
        serve.stderr_now()
    );

    // 1,000 more send all of a 1 MiB text message but its last byte.
    let mut unfinished: Vec<TcpStream> = (0..CONNECTIONS).map(|_| ws_connect(addr)).collect();
    let mut message = ws_header(1, WS_PAYLOAD_FULL);
    message.resize(message.len() + WS_PAYLOAD_FULL, b'x');
    let written = write_all_until_stalled(&mut unfinished, &message[..message.len() - 1], 0);
    // Each of them reached its message's header and waits for budget,
    // which stays spent in whole charges.
    let waits = wait_for_budget(control, charged, waits_announced + CONNECTIONS as u64);
    let rss_unfinished = serve.rss();
    eprintln!("budget held {charged}, waits {waits}");
    eprintln!(
        "{} MiB written by 1,000 unfinished messages: RSS {} MiB (bound {} MiB)",
        written >> 20,
        rss_unfinished >> 20,
        bound(2 * CONNECTIONS) >> 20
    );
    assert!(
        rss_unfinished <= bound(2 * CONNECTIONS),
        "RSS {rss_unfinished} above {} with 1,000 unfinished messages; stderr:\n{}",
        bound(2 * CONNECTIONS),
        serve.stderr_now()
    );

    // They close: the budget comes back whole, and RSS stays bounded.
    drop(announced);
    drop(unfinished);
    wait_until_budget_free(control, "after every connection closed");
    let rss_closed = serve.rss();
    eprintln!("after they closed: {} MiB", rss_closed >> 20);
    assert!(rss_closed <= bound(2 * CONNECTIONS), "RSS {rss_closed} after close");

    // And a largest message goes through as before.
    let mut after = ws_connect(addr);
    ws_round_trip(&mut after);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn fragmented_websocket_messages_and_pings_pass_the_meter_and_give_its_budget_back() {
    let dir = std::env::temp_dir().join(format!("trove-memory-ws-fragments-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("trove.toml");
    std::fs::write(&config, "[limits]\nidle_timeout_ms = 600000\n").unwrap();
    let (_serve, addr, control) = start(&config, true);
    let mut s = ws_connect(addr);
    // Three times: a 600 KiB ping message in 4 KiB fragments (past the
    // unbudgeted 16 KiB, small frames: the meter's charge by bytes), with
    // a WebSocket ping between fragments, then its pong.
    for round in 0..3 {
        let prefix = r#"{"type":"ping","nonce":""#;
        let text = format!("{prefix}{}\"}}", "y".repeat((600 << 10) - prefix.len() - 2));
        let mut wire = Vec::new();
        for (i, piece) in text.as_bytes().chunks(4096).enumerate() {
            let last = (i + 1) * 4096 >= text.len();
            wire.extend(ws_header_fin(if i == 0 { 1 } else { 0 }, piece.len(), last));
            wire.extend_from_slice(piece);
            if i % 50 == 25 {
                wire.extend(ws_header(9, 4));
                wire.extend_from_slice(b"ping");
            }
        }
        s.write_all(&wire).unwrap();
        // Pongs for the pings, then the message's answer.
        let answer = loop {
            let (opcode, payload) = ws_read(&mut s);
            match opcode {
                10 => assert_eq!(payload, b"ping"),
                1 => break payload,
                other => panic!("round {round}: unexpected opcode {other}"),
            }
        };
        assert!(
            answer.windows(6).any(|w| w == b"\"pong\""),
            "round {round}: {}",
            String::from_utf8_lossy(&answer[..64])
        );
        // The charge went back once the message was handled.
        wait_until_budget_free(control, &format!("round {round}"));
    }
    // One large frame, over the message limit: refused on its header, the
    // connection closed.
    s.write_all(&ws_header(1, 2 << 20)).unwrap();
    let mut rest = Vec::new();
    match s.read_to_end(&mut rest) {
        Ok(_) => {}
        Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
        Err(e) => panic!("the connection must close (not time out): {e}"),
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Reads until the server closes the connection (its end, or a reset:
/// closing with unread input resets); None if it is still open after
/// `wait`.
fn read_until_closed(s: &mut TcpStream, wait: Duration) -> Option<Vec<u8>> {
    let deadline = Instant::now() + wait;
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    s.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    while Instant::now() < deadline {
        match s.read(&mut chunk) {
            Ok(0) => return Some(got),
            Ok(n) => got.extend_from_slice(&chunk[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return Some(got),
            Err(e) => panic!("reading: {e}"),
        }
    }
    None
}

/// A server with the WebSocket endpoint under `limits` (TOML lines).
fn start_ws(name: &str, limits: &str) -> (Serve, SocketAddr, SocketAddr, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!("trove-memory-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("trove.toml");
    std::fs::write(&config, format!("[limits]\n{limits}")).unwrap();
    let (serve, addr, control) = start(&config, true);
    (serve, addr, control, dir)
}

#[test]
fn a_request_that_is_not_an_upgrade_ends_its_connection_before_a_pipelined_upgrade() {
    let (_serve, addr, control, dir) = start_ws("ws-pipelined", "idle_timeout_ms = 600000\n");
    // A 404, an upgrade and a 1 MiB binary message's header behind it, in
    // one write: HTTP/1.1 would keep the connection and read the upgrade.
    let mut s = TcpStream::connect(addr).unwrap();
    let mut bytes = b"GET /nowhere HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".to_vec();
    bytes.extend_from_slice(common::WS_UPGRADE);
    bytes.extend(ws_header(2, WS_PAYLOAD_FULL));
    bytes.extend_from_slice(&[7; 32]);
    s.write_all(&bytes).unwrap();
    let got = read_until_closed(&mut s, Duration::from_secs(30)).expect("the connection closes after its 404");
    let text = String::from_utf8_lossy(&got);
    assert!(got.is_empty() || text.starts_with("HTTP/1.1 404"), "{text}");
    assert!(!text.contains(" 101 "), "upgraded behind a refused request: {text}");
    assert_eq!(metric(control, "trove_unfinished_frame_bytes"), Some(0));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_request_head_is_never_charged_and_ends_within_the_handshake_timeout() {
    let (_serve, addr, control, dir) = start_ws("ws-head", "idle_timeout_ms = 600000\nhandshake_timeout_ms = 2000\n");
    // A head over 16 KiB is refused, not charged.
    let mut s = TcpStream::connect(addr).unwrap();
    let pad = format!("X-Pad: {}\r\n", "p".repeat(20 << 10));
    let mut head = common::WS_UPGRADE[..common::WS_UPGRADE.len() - 2].to_vec();
    head.extend_from_slice(pad.as_bytes());
    head.extend_from_slice(b"\r\n");
    let _ = s.write_all(&head);
    let got = read_until_closed(&mut s, Duration::from_secs(30)).expect("a long head closes the connection");
    assert!(!String::from_utf8_lossy(&got).contains(" 101 "), "{}", String::from_utf8_lossy(&got));
    assert_eq!(metric(control, "trove_unfinished_frame_bytes"), Some(0));
    // A head sent a byte at a time ends with the handshake timeout, not
    // the idle timeout counted from its last byte.
    let mut s = TcpStream::connect(addr).unwrap();
    let started = Instant::now();
    let mut closed = false;
    for &b in common::WS_UPGRADE.iter().take(common::WS_UPGRADE.len() - 1) {
        if s.write_all(&[b]).is_err() || read_until_closed(&mut s, Duration::from_millis(300)).is_some() {
            closed = true;
            break;
        }
    }
    assert!(closed, "a head a byte at a time held its connection for {:?}", started.elapsed());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn control_frames_do_not_keep_an_unfinished_messages_charge() {
    let (_serve, addr, control, dir) = start_ws("ws-pongs", "idle_timeout_ms = 2000\n");
    let mut s = ws_connect(addr);
    // 20 KiB of a text message in 4 KiB fragments: past the unbudgeted
    // 16 KiB, so charged.
    let mut wire = Vec::new();
    for i in 0..5 {
        wire.extend(ws_header_fin(if i == 0 { 1 } else { 0 }, 4096, false));
        wire.extend_from_slice(&[b'x'; 4096]);
    }
    s.write_all(&wire).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while metric(control, "trove_unfinished_frame_bytes") == Some(0) {
        assert!(Instant::now() < deadline, "the fragments never took the charge");
        std::thread::sleep(Duration::from_millis(20));
    }
    // A pong every 300 ms: the message must still finish within the idle
    // timeout, or the connection closes.
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut chunk = [0u8; 4096];
    s.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
    while !got.windows(12).any(|w| w == b"idle_timeout") {
        assert!(Instant::now() < deadline, "pongs held a charge for a minute");
        if s.write_all(&ws_header(10, 0)).is_err() {
            break;
        }
        match s.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&chunk[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => break,
        }
    }
    assert!(got.windows(12).any(|w| w == b"idle_timeout"), "{}", String::from_utf8_lossy(&got));
    drop(s);
    wait_until_budget_free(control, "the charge outlived its connection");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_refused_binary_message_gives_its_charge_back_before_the_close() {
    let (_serve, addr, control, dir) = start_ws("ws-binary", "idle_timeout_ms = 600000\n");
    let mut s = ws_connect(addr);
    let mut message = ws_header(2, 100 << 10);
    message.resize(message.len() + (100 << 10), 7);
    s.write_all(&message).unwrap();
    // The error, then the Close frame.
    let (opcode, payload) = ws_read(&mut s);
    assert_eq!(opcode, 1);
    assert!(payload.windows(9).any(|w| w == b"malformed"), "{}", String::from_utf8_lossy(&payload));
    let (opcode, _) = ws_read(&mut s);
    assert_eq!(opcode, 8, "a Close frame");
    // The server lingers for this side's Close; the charge went back
    // before its answers.
    assert_eq!(metric(control, "trove_unfinished_frame_bytes"), Some(0));
    let _ = std::fs::remove_dir_all(&dir);
}
