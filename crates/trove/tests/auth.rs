//! Authentication on a real `trove serve` process (issue 24,
//! docs/decisions/0041): `trove auth add`, the loopback default, and a
//! token removed by a SIGHUP reload while connections stay open.

mod common;

use common::Serve;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use trove_proto::Frame;
use trove_proto::frame::{self, ErrorCode, HEADER_LEN, Hello, Sizes, hello_flags};

const EXIT_TIMEOUT: Duration = Duration::from_secs(60);
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

/// `trove auth add`: the token it printed.
fn add(file: &std::path::Path, name: &str, role: &str, hunts: Option<&str>) -> [u8; 32] {
    let mut args = vec!["auth", "add", name, "--role", role, "--file", file.to_str().unwrap()];
    if let Some(h) = hunts {
        args.extend(["--hunts", h]);
    }
    let out = common::trove(&args);
    common::ok(&out);
    let printed = String::from_utf8(out.stdout).unwrap();
    let hex = printed.trim();
    assert_eq!(hex.len(), 64, "{printed:?}");
    let mut token = [0u8; 32];
    for (i, b) in token.iter_mut().enumerate() {
        *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap();
    }
    token
}

/// What the server answered.
#[derive(Debug, PartialEq, Eq)]
enum Answer {
    Welcome,
    Ack,
    Error(u16),
    Closed,
}

struct Conn {
    s: TcpStream,
    buf: Vec<u8>,
    next_seq: u64,
}

impl Conn {
    fn open(addr: SocketAddr, hello: Hello) -> (Conn, Answer) {
        let s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(ANSWER_TIMEOUT)).unwrap();
        let mut c = Conn { s, buf: Vec::new(), next_seq: 1 };
        let mut b = Vec::new();
        frame::encode_hello(&mut b, &hello);
        c.s.write_all(&b).unwrap();
        let a = c.answer();
        (c, a)
    }

    fn answer(&mut self) -> Answer {
        loop {
            if let Some((h, total)) = frame::split(&self.buf, 1 << 20).unwrap() {
                let body = self.buf[HEADER_LEN..total].to_vec();
                self.buf.drain(..total);
                return match frame::decode(h, &body, Sizes { record: 32, outcome: 16 }).unwrap() {
                    Frame::Welcome(_) => Answer::Welcome,
                    Frame::Ack { .. } => Answer::Ack,
                    Frame::Error { code, .. } => Answer::Error(code),
                    other => panic!("{other:?}"),
                };
            }
            let mut chunk = [0u8; 4096];
            match self.s.read(&mut chunk) {
                Ok(0) | Err(_) => return Answer::Closed,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    fn join(&mut self, hunt: u32) -> Answer {
        let mut b = Vec::new();
        frame::encode_events(&mut b, self.next_seq, &[trove_hunt::HuntEvent::join(hunt, 1)]);
        self.next_seq += 1;
        if self.s.write_all(&b).is_err() {
            return Answer::Closed;
        }
        self.answer()
    }
}

#[test]
fn auth_add_prints_a_token_once_and_stores_its_hash() {
    let dir = common::scratch_dir("auth-add");
    let file = dir.join("auth.toml");
    let token = add(&file, "game", "producer", Some("1-100,200"));
    let text = std::fs::read_to_string(&file).unwrap();
    let hex: String = token.iter().map(|b| format!("{b:02x}")).collect();
    assert!(!text.contains(&hex), "the token itself is stored:\n{text}");
    assert!(text.contains(&trove_server::auth::to_hex(&trove_server::auth::hash_token(&token))), "{text}");
    assert!(text.contains(r#"hunts = ["1-100", "200"]"#), "{text}");
    // A second token, then a name already taken: refused, file unchanged.
    add(&file, "ops", "admin", None);
    let before = std::fs::read_to_string(&file).unwrap();
    let out = common::trove(&["auth", "add", "ops", "--role", "spectator", "--file", file.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("is used by another token"));
    assert_eq!(std::fs::read_to_string(&file).unwrap(), before);
    let out = common::trove(&["auth", "add", "x", "--role", "owner", "--file", file.to_str().unwrap()]);
    assert!(!out.status.success());
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn serve_refuses_a_non_loopback_address_without_auth() {
    let dir = common::scratch_dir("auth-loopback");
    for args in [
        vec!["--no-journal", "--tcp", "0.0.0.0:0", "--ws", "off", "--control", "off"],
        vec!["--no-journal", "--tcp", "127.0.0.1:0", "--ws", "off", "--control", "0.0.0.0:0"],
    ] {
        let mut server = Serve::spawn(&args);
        let (status, stderr) = server.wait_exit(EXIT_TIMEOUT);
        assert!(!status.success(), "{args:?} started:\n{stderr}");
        assert!(stderr.contains("is not a loopback address") && stderr.contains("--auth"), "{stderr}");
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn sighup_removes_a_token_without_dropping_the_others() {
    let dir = common::scratch_dir("auth-sighup");
    let file = dir.join("auth.toml");
    let game = add(&file, "game", "producer", None);
    let ops = add(&file, "ops", "admin", None);
    let args = ["--no-journal", "--tcp", "127.0.0.1:0", "--ws", "off", "--control", "127.0.0.1:0"];
    let mut args = args.to_vec();
    args.extend(["--shards", "1", "--auth", file.to_str().unwrap(), "--metrics-listen", "127.0.0.1:0"]);
    let mut server = Serve::spawn(&args);
    let common::Listening { tcp, control, .. } = server.wait_listening();

    // The control plane takes a token but for its probes; the metrics
    // address takes none and serves /metrics alone.
    poll(&server, "/metrics (no token) on http://");
    let log = server.stderr_now();
    let metrics: SocketAddr =
        log.split("/metrics (no token) on http://").nth(1).unwrap().split('/').next().unwrap().parse().unwrap();
    assert_eq!(status(control, "/health", None), 200);
    assert_eq!(status(control, "/metrics", None), 401);
    assert_eq!(status(control, "/metrics", Some(&ops)), 200);
    assert_eq!(status(metrics, "/metrics", None), 200);
    assert_eq!(status(metrics, "/hunts", None), 404);

    // Version 1 is refused; both tokens work over version 2.
    let (_, a) = Conn::open(tcp, Hello::v1(0, 0));
    assert_eq!(a, Answer::Error(ErrorCode::Unauthorized as u16));
    let (mut g, a) = Conn::open(tcp, Hello::v2(hello_flags::OUTCOMES, 0, game));
    assert_eq!(a, Answer::Welcome);
    assert_eq!(g.join(1), Answer::Ack);
    let (mut o, a) = Conn::open(tcp, Hello::v2(hello_flags::OUTCOMES, 0, ops));
    assert_eq!(a, Answer::Welcome);

    // A file that does not parse: the old table stays.
    let good = std::fs::read_to_string(&file).unwrap();
    std::fs::write(&file, "[[token]\n").unwrap();
    server.signal("HUP");
    poll(&server, "the previous tokens stay in force");
    assert_eq!(g.join(1), Answer::Ack);

    // The file without `game`: its open connection is refused at once (it
    // sends nothing) and closed; `ops` keeps its connection.
    let without: String =
        good.split("\n[[token]]").filter(|e| !e.contains("name = \"game\"")).collect::<Vec<_>>().join("\n[[token]]");
    assert!(without.contains("name = \"ops\"") && !without.contains("name = \"game\""), "{without}");
    std::fs::write(&file, without).unwrap();
    server.signal("HUP");
    poll(&server, "auth file reloaded, 1 token");
    assert_eq!(g.answer(), Answer::Error(ErrorCode::Unauthorized as u16));
    assert_eq!(g.answer(), Answer::Closed);
    assert_eq!(o.join(2), Answer::Ack);
    let (_, a) = Conn::open(tcp, Hello::v2(hello_flags::OUTCOMES, 0, game));
    assert_eq!(a, Answer::Error(ErrorCode::Unauthorized as u16));

    drop((g, o));
    let (status, stderr) = server.terminate(EXIT_TIMEOUT);
    assert!(status.success(), "exit {status}:\n{stderr}");
    std::fs::remove_dir_all(&dir).ok();
}

/// One GET's status, with `token` as a bearer.
fn status(addr: SocketAddr, path: &str, token: Option<&[u8; 32]>) -> u16 {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(ANSWER_TIMEOUT)).unwrap();
    let bearer =
        token.map(|t| format!("Authorization: Bearer {}\r\n", trove_server::auth::to_hex(t))).unwrap_or_default();
    write!(s, "GET {path} HTTP/1.1\r\nHost: trove\r\n{bearer}Connection: close\r\n\r\n").unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    String::from_utf8_lossy(&raw).split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap()
}

/// Waits (generously) until the server's stderr says `what`.
fn poll(server: &Serve, what: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !server.stderr_now().contains(what) {
        assert!(std::time::Instant::now() < deadline, "`{what}` never logged:\n{}", server.stderr_now());
        std::thread::sleep(Duration::from_millis(20));
    }
}
