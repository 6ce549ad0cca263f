//! TLS on the three listeners, with certificates made at test time
//! (rcgen): the SDK's producer and subscriber end to end, a WebSocket
//! client on a TLS stream, the control plane over HTTPS, a client that
//! trusts another CA, a plaintext client on the TLS port, and a peer that
//! stalls or sends garbage in the handshake.

mod common;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use trove_client::{ClientConfig, ClientError, ClientTls, Producer, Subscriber, Update};
use trove_hunt::{HuntEvent, HuntOutcome, TreasureHunt};
use trove_server::control::{ControlConfig, ControlInfo, ControlPlane};
use trove_server::tls::ServerTls;
use trove_server::{Server, ServerConfig};
use trove_shard::{Engine, EngineConfig};

/// A CA, and a server certificate it signed for `localhost` and
/// 127.0.0.1, as PEM files in a directory of their own.
struct Certs {
    dir: PathBuf,
}

impl Certs {
    fn make(tag: &str) -> Certs {
        let dir = std::env::temp_dir().join(format!("trove-tls-{tag}-{}-{:?}", std::process::id(), Instant::now()));
        std::fs::create_dir_all(&dir).unwrap();
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.distinguished_name.push(DnType::CommonName, format!("trove test CA {tag}"));
        let ca = CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
        let key = KeyPair::generate().unwrap();
        let params = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
        let cert = params.signed_by(&key, &ca).unwrap();
        std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
        std::fs::write(dir.join("cert.pem"), cert.pem()).unwrap();
        std::fs::write(dir.join("key.pem"), key.serialize_pem()).unwrap();
        Certs { dir }
    }

    fn ca(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    fn server(&self) -> ServerTls {
        ServerTls::load(&self.dir.join("cert.pem"), &self.dir.join("key.pem")).unwrap()
    }

    fn client(&self) -> ClientTls {
        ClientTls::from_ca_file(&self.ca()).unwrap()
    }

    /// rustls' client configuration trusting this CA, for the raw clients.
    fn connector(&self) -> tokio_rustls::TlsConnector {
        let mut roots = rustls::RootCertStore::empty();
        let pem = std::fs::read(self.ca()).unwrap();
        use rustls_pki_types::pem::PemObject;
        for c in rustls_pki_types::CertificateDer::pem_slice_iter(&pem) {
            roots.add(c.unwrap()).unwrap();
        }
        #[allow(deprecated)]
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        tokio_rustls::TlsConnector::from(Arc::new(config))
    }
}

impl Drop for Certs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A hunt's config as JSON (the WebSocket's and `POST /hunts`' form).
fn hunt_json() -> Value {
    json!({"width": 32, "height": 32, "seed": 3, "treasures_per_round": 16, "value_min": 1, "value_max": 5,
        "dig_cooldown_ms": 0, "step_max": 2, "players_max": 100})
}

fn engine() -> Arc<Engine<TreasureHunt>> {
    Arc::new(
        Engine::<TreasureHunt>::start(EngineConfig {
            shards: 2,
            queue_wait_max: Duration::from_secs(60),
            ..EngineConfig::default()
        })
        .unwrap(),
    )
}

fn start(tls: ServerTls, config: ServerConfig) -> Server<TreasureHunt> {
    let any = SocketAddr::from(([127, 0, 0, 1], 0));
    Server::start(engine(), ServerConfig { tcp_addr: any, ws_addr: Some(any), tls: Some(tls), ..config }).unwrap()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

fn client_config(addr: SocketAddr, tls: ClientTls) -> ClientConfig {
    ClientConfig { tls: Some(tls), reconnect_attempts_max: Some(0), ..ClientConfig::new(addr.to_string()) }
}

#[test]
fn a_producer_and_a_subscriber_work_end_to_end_over_tls() {
    let certs = Certs::make("e2e");
    let server = start(certs.server(), ServerConfig::default());
    let addr = server.tcp_addr();
    runtime().block_on(async {
        tokio::time::timeout(Duration::from_secs(120), async {
            // By IP address (the certificate names 127.0.0.1) ...
            let mut sub = Subscriber::<TreasureHunt>::connect(client_config(addr, certs.client())).await.unwrap();
            sub.subscribe(1).await.unwrap();
            // ... and by name, with the name set apart from the address.
            let named = certs.client().with_server_name("localhost").unwrap();
            let (mut producer, mut acks) = Producer::<TreasureHunt>::connect(client_config(addr, named)).await.unwrap();
            producer.send_wait(HuntEvent::create(1, common::hunt_config())).await.unwrap();
            // Enough events for many records and several writes each way
            // (within the hunt's players_max).
            let players = 900u32;
            for p in 1..=players {
                producer.send_wait(HuntEvent::join(1, p)).await.unwrap();
            }
            producer.close().await.unwrap();
            let mut joined = 0;
            let mut acked = 0;
            while let Some(batch) = acks.next().await {
                let batch = batch.unwrap();
                for seq in batch.first_seq..batch.first_seq + u64::from(batch.count) {
                    acked += 1;
                    if matches!(batch.outcome(seq), Some(HuntOutcome::Joined { .. })) {
                        joined += 1;
                    }
                }
            }
            assert_eq!(acked, u64::from(players) + 1, "every event acknowledged once");
            assert_eq!(joined, players, "every player joined");
            // The subscriber sees the hunt's updates, in order, to the last.
            let mut entries = 0u64;
            while entries < u64::from(players) + 1 {
                match sub.next().await.expect("the stream goes on").unwrap() {
                    Update::Entries { entries: e, .. } => entries += e.len() as u64,
                    Update::Gap { .. } | Update::Ended { .. } => panic!("no gap at this rate"),
                }
            }
        })
        .await
        .expect("within the deadline");
    });
    assert_eq!(server.metrics().tls_handshakes_failed, 0);
    server.shutdown(Duration::from_secs(5));
}

#[test]
fn a_client_that_trusts_another_ca_or_checks_another_name_is_refused_with_a_typed_error() {
    let certs = Certs::make("server");
    let other = Certs::make("other");
    let server = start(certs.server(), ServerConfig::default());
    let addr = server.tcp_addr();
    runtime().block_on(async {
        tokio::time::timeout(Duration::from_secs(60), async {
            match Producer::<TreasureHunt>::connect(client_config(addr, other.client())).await {
                Err(ClientError::Tls(m)) => assert!(m.contains("certificate"), "{m}"),
                other => panic!("expected a TLS error, got {:?}", other.map(|_| ())),
            }
            let wrong_name = certs.client().with_server_name("trove.example").unwrap();
            match Subscriber::<TreasureHunt>::connect(client_config(addr, wrong_name)).await {
                Err(ClientError::Tls(m)) => assert!(m.contains("certificate"), "{m}"),
                other => panic!("expected a TLS error, got {:?}", other.map(|_| ())),
            }
            // A TLS client on a plain port: a typed error too, not a hang.
            let plain = Server::start(
                engine(),
                ServerConfig { tcp_addr: "127.0.0.1:0".parse().unwrap(), ws_addr: None, ..ServerConfig::default() },
            )
            .unwrap();
            let result = Producer::<TreasureHunt>::connect(client_config(plain.tcp_addr(), certs.client())).await;
            assert!(matches!(result, Err(ClientError::Tls(_) | ClientError::Io { .. })), "{:?}", result.map(|_| ()));
            tokio::task::spawn_blocking(move || plain.shutdown(Duration::from_secs(1))).await.unwrap();
        })
        .await
        .expect("refused within the deadline, not hung");
    });
    // The server counted the two refused handshakes (the client's alert).
    let deadline = Instant::now() + Duration::from_secs(30);
    while server.metrics().tls_handshakes_failed < 2 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(server.metrics().tls_handshakes_failed, 2);
    server.shutdown(Duration::from_secs(5));
}

/// Reads from `s` until the peer closes it (or resets it), for at most
/// `limit` (a generous bound: the test fails if the server keeps the
/// connection that long); returns the bytes and how long it took.
fn read_to_close(s: &mut std::net::TcpStream, limit: Duration) -> (Vec<u8>, Duration) {
    let started = Instant::now();
    s.set_read_timeout(Some(limit)).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return (got, started.elapsed()),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                panic!("the server kept the connection open for {limit:?}");
            }
            Err(_) => return (got, started.elapsed()),
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
        assert!(started.elapsed() < limit, "the server kept the connection open");
    }
}

#[test]
fn plaintext_garbage_and_stalled_handshakes_are_closed_within_the_handshake_timeout() {
    let certs = Certs::make("stall");
    let timeout = Duration::from_secs(2);
    let server = start(certs.server(), ServerConfig { handshake_timeout: timeout, ..ServerConfig::default() });
    // Far past the 2 s handshake timeout, whatever the machine's load.
    let limit = Duration::from_secs(30);
    for port in [server.tcp_addr(), server.ws_addr().unwrap()] {
        // A plaintext protocol v1 client: its HELLO is not a ClientHello;
        // rustls answers with an alert (never a trove frame) and closes.
        let mut plain = std::net::TcpStream::connect(port).unwrap();
        let mut hello = Vec::new();
        trove_proto::frame::encode_hello(&mut hello, &trove_proto::frame::Hello::v1(0, 0));
        plain.write_all(&hello).unwrap();
        let (got, _) = read_to_close(&mut plain, limit);
        assert!(got.len() < 64 && got.first().is_none_or(|&b| b == 0x15), "an alert at most: {got:?}");

        // Garbage after a plausible record header announcing a large record.
        let mut garbage = std::net::TcpStream::connect(port).unwrap();
        let mut bytes = vec![0x16, 0x03, 0x01, 0x40, 0x00];
        bytes.extend(std::iter::repeat_n(0xAB, 4096));
        let _ = garbage.write_all(&bytes);
        let _ = read_to_close(&mut garbage, limit);

        // A peer that connects and says nothing, and one that stops half
        // way through its ClientHello: closed at the handshake timeout.
        let opened = Instant::now();
        let mut silent = std::net::TcpStream::connect(port).unwrap();
        let mut half = std::net::TcpStream::connect(port).unwrap();
        half.write_all(&[0x16, 0x03, 0x01, 0x01, 0x00, 0x01]).unwrap();
        for s in [&mut silent, &mut half] {
            let (got, _) = read_to_close(s, limit);
            assert!(got.len() < 64, "no more than an alert: {got:?}");
            let took = opened.elapsed();
            assert!(took >= timeout - Duration::from_millis(500), "not before the timeout: {took:?}");
        }
    }
    // Every slot came back, and the server still serves a TLS client.
    let deadline = Instant::now() + Duration::from_secs(30);
    while server.metrics().connections_open > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(server.metrics().connections_open, 0);
    assert!(server.metrics().tls_handshakes_failed >= 4, "{}", server.metrics().tls_handshakes_failed);
    let addr = server.tcp_addr();
    runtime().block_on(async {
        let (mut p, mut acks) = Producer::<TreasureHunt>::connect(client_config(addr, certs.client())).await.unwrap();
        p.send_wait(HuntEvent::create(3, common::hunt_config())).await.unwrap();
        p.close().await.unwrap();
        assert!(acks.next().await.unwrap().is_ok());
    });
    server.shutdown(Duration::from_secs(5));
}

#[test]
fn the_websocket_endpoint_speaks_json_over_tls() {
    let certs = Certs::make("ws");
    let server = start(certs.server(), ServerConfig::default());
    let ws_addr = server.ws_addr().unwrap();
    runtime().block_on(async {
        tokio::time::timeout(Duration::from_secs(60), async {
            let tcp = tokio::net::TcpStream::connect(ws_addr).await.unwrap();
            let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
            let tls = certs.connector().connect(name, tcp).await.unwrap();
            let (mut ws, _) =
                tokio_tungstenite::client_async(format!("wss://localhost:{}/", ws_addr.port()), tls).await.unwrap();
            let send = async |v: Value, ws: &mut tokio_tungstenite::WebSocketStream<_>| {
                ws.send(tungstenite::Message::Text(v.to_string().into())).await.unwrap();
            };
            send(json!({"type": "hello", "producer_id": 77, "outcomes": true}), &mut ws).await;
            let recv = async |ws: &mut tokio_tungstenite::WebSocketStream<_>| loop {
                match ws.next().await.expect("open").unwrap() {
                    tungstenite::Message::Text(t) => {
                        return serde_json::from_str::<Value>(t.as_str()).unwrap();
                    }
                    tungstenite::Message::Close(c) => panic!("closed: {c:?}"),
                    _ => {}
                }
            };
            let welcome = recv(&mut ws).await;
            assert_eq!(welcome["type"], "welcome", "{welcome}");
            let config = hunt_json();
            send(
                json!({"type": "events", "first_seq": 1, "events": [
                    {"hunt": 5, "action": "create", "config": config},
                    {"hunt": 5, "player": 1, "action": "join"}
                ]}),
                &mut ws,
            )
            .await;
            let ack = recv(&mut ws).await;
            assert_eq!(ack["type"], "ack", "{ack}");
            assert_eq!(ack["count"], 2, "{ack}");
        })
        .await
        .expect("within the deadline");
    });
    // A plain WebSocket client on the TLS port gets no upgrade.
    let plain = tungstenite::connect(format!("ws://{ws_addr}/"));
    assert!(plain.is_err(), "a plain upgrade on a TLS port");
    server.shutdown(Duration::from_secs(5));
}

#[test]
fn the_control_plane_answers_over_https_and_only_https() {
    let certs = Certs::make("control");
    let engine = engine();
    let data = Server::start(
        engine.clone(),
        ServerConfig { tcp_addr: "127.0.0.1:0".parse().unwrap(), ws_addr: None, ..ServerConfig::default() },
    )
    .unwrap();
    let info = ControlInfo {
        mode: "sharded",
        shards: 2,
        fsync: "none".into(),
        journal_dir: None,
        tcp_addr: data.tcp_addr(),
        ws_addr: None,
    };
    let limits =
        ControlConfig { tls: Some(certs.server()), header_timeout: Duration::from_secs(2), ..ControlConfig::default() };
    let control = ControlPlane::start(
        "127.0.0.1:0".parse().unwrap(),
        limits,
        engine.clone(),
        data.metrics_handle(),
        data.runtime_handle(),
        info,
        Arc::new(AtomicBool::new(true)),
    )
    .unwrap();
    let addr = control.addr();
    runtime().block_on(async {
        tokio::time::timeout(Duration::from_secs(60), async {
            let https = async |request: String| {
                let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
                let name = rustls_pki_types::ServerName::try_from("127.0.0.1").unwrap();
                let mut tls = certs.connector().connect(name, tcp).await.unwrap();
                tls.write_all(request.as_bytes()).await.unwrap();
                let mut reply = Vec::new();
                // The server closes after `Connection: close` (with
                // close_notify, or a bare FIN: both end the read).
                let _ = tls.read_to_end(&mut reply).await;
                String::from_utf8_lossy(&reply).into_owned()
            };
            let health = https("GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".into()).await;
            assert!(health.starts_with("HTTP/1.1 200"), "{health}");
            let body = json!({"id": 9, "config": hunt_json()}).to_string();
            let create = https(format!(
                "POST /hunts HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            ))
            .await;
            assert!(create.starts_with("HTTP/1.1 201") || create.starts_with("HTTP/1.1 200"), "{create}");
            let hunt = https("GET /hunts/9 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".into()).await;
            assert!(hunt.starts_with("HTTP/1.1 200"), "{hunt}");
        })
        .await
        .expect("within the deadline");
    });
    // Plain HTTP on the HTTPS port: no HTTP answer, and closed (rustls'
    // alert at most).
    let mut plain = std::net::TcpStream::connect(addr).unwrap();
    plain.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let (got, _) = read_to_close(&mut plain, Duration::from_secs(60));
    assert!(!String::from_utf8_lossy(&got).contains("HTTP/1.1"), "{got:?}");
    // A silent peer is closed at the header timeout, the handshake within it.
    let mut silent = std::net::TcpStream::connect(addr).unwrap();
    let (_, took) = read_to_close(&mut silent, Duration::from_secs(60));
    assert!(took >= Duration::from_millis(1500), "{took:?}");
    control.shutdown();
    data.shutdown(Duration::from_secs(5));
}

#[test]
fn a_bad_certificate_or_key_file_is_a_typed_error_naming_the_file() {
    let certs = Certs::make("files");
    let cert = certs.dir.join("cert.pem");
    let key = certs.dir.join("key.pem");
    let missing = certs.dir.join("missing.pem");
    let err = ServerTls::load(&missing, &key).unwrap_err();
    assert_eq!((err.what, err.file.as_path()), ("certificate", missing.as_path()));
    // A key where the certificate should be: no CERTIFICATE block.
    let err = ServerTls::load(&key, &key).unwrap_err();
    assert_eq!((err.what, err.file.as_path()), ("certificate", key.as_path()));
    // A certificate where the key should be.
    let err = ServerTls::load(&cert, &cert).unwrap_err();
    assert_eq!((err.what, err.file.as_path()), ("key", cert.as_path()));
    // Another key than the certificate's.
    let other = Certs::make("files-other");
    let other_key: &Path = &other.dir.join("key.pem");
    let err = ServerTls::load(&cert, other_key).unwrap_err();
    assert_eq!((err.what, err.file.as_path()), ("key", other_key));
    assert!(err.to_string().contains(&other_key.display().to_string()), "{err}");
    // The client's CA file too.
    match ClientTls::from_ca_file(&key) {
        Err(ClientError::Config { field: "tls", reason }) => assert!(reason.contains("key.pem"), "{reason}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_handshake_holds_a_connection_slot_and_past_the_limit_a_tls_port_only_closes() {
    let certs = Certs::make("limit");
    let server = start(
        certs.server(),
        ServerConfig { connections_max: 1, handshake_timeout: Duration::from_secs(30), ..ServerConfig::default() },
    );
    // A peer that connected and has not finished its handshake holds the
    // one slot ...
    let _holder = std::net::TcpStream::connect(server.tcp_addr()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while server.metrics().connections_open < 1 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(server.metrics().connections_open, 1);
    // ... so the next is closed at once, with no plaintext ERROR on a TLS
    // port: the close alone.
    let mut next = std::net::TcpStream::connect(server.tcp_addr()).unwrap();
    let (got, took) = read_to_close(&mut next, Duration::from_secs(20));
    assert!(got.is_empty(), "nothing but the close: {got:?}");
    assert!(took < Duration::from_secs(20), "{took:?}");
    assert_eq!(server.metrics().connections_refused, 1);
    server.shutdown(Duration::from_secs(1));
}
