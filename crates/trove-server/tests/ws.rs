//! The WebSocket endpoint over a real socket: JSON in, JSON out, with the
//! TCP endpoint's semantics.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use trove_hunt::TreasureHunt;
use trove_server::{Server, ServerConfig};
use trove_shard::{Engine, EngineConfig};

mod ws_client;
use tungstenite::Message;
use ws_client::{Ws, recv};

fn start(config: ServerConfig) -> Server<TreasureHunt> {
    let engine = Arc::new(
        Engine::<TreasureHunt>::start(EngineConfig {
            shards: 2,
            // Not what these tests are about: on a loaded machine it would
            // turn their pipelining into BUSY.
            queue_wait_max: Duration::from_secs(60),
            ..EngineConfig::default()
        })
        .unwrap(),
    );
    let any = SocketAddr::from(([127, 0, 0, 1], 0));
    Server::start(engine, ServerConfig { tcp_addr: any, ws_addr: Some(any), ..config }).unwrap()
}

fn connect(server: &Server<TreasureHunt>) -> Ws {
    let (ws, _) = tungstenite::connect(format!("ws://{}/", server.ws_addr().unwrap())).unwrap();
    if let tungstenite::stream::MaybeTlsStream::Plain(s) = ws.get_ref() {
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    }
    ws
}

fn send(ws: &mut Ws, v: Value) {
    ws.send(Message::Text(v.to_string().into())).unwrap();
}

/// Reads until the server closes the connection (a close frame, or the
/// socket ends); anything else, a read timeout included, fails. Returns
/// whether a message saying `unwanted` came first.
fn expect_closed(ws: &mut Ws, unwanted: &str) -> bool {
    use tungstenite::Error;
    let mut saw_unwanted = false;
    loop {
        match ws.read() {
            Ok(Message::Close(_)) | Err(Error::ConnectionClosed | Error::AlreadyClosed) => return saw_unwanted,
            Ok(Message::Text(t)) => saw_unwanted |= t.contains(unwanted),
            Ok(_) => {}
            Err(Error::Io(e)) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                panic!("the server did not close the connection within the read timeout: {e}")
            }
            // A reset, or a socket that ended without a close frame: closed.
            Err(Error::Io(_) | Error::Protocol(_)) => return saw_unwanted,
            Err(e) => panic!("unexpected error while waiting for the close: {e}"),
        }
    }
}

fn create() -> Value {
    json!({"hunt": 1, "action": "create", "config": {"width": 32, "height": 32, "seed": 3,
        "treasures_per_round": 16, "value_min": 1, "value_max": 5, "dig_cooldown_ms": 0,
        "step_max": 2, "players_max": 100}})
}

#[test]
fn submit_subscribe_and_errors_over_json() {
    let server = start(ServerConfig::default());
    let mut watcher = connect(&server);
    send(&mut watcher, json!({"type": "subscribe", "hunt": 1}));
    let sub = recv(&mut watcher);
    assert_eq!(sub["type"], "subscribed");
    assert_eq!(sub["next_seq"], 1);

    let mut p = connect(&server);
    send(&mut p, json!({"type": "hello", "producer_id": 31, "outcomes": true}));
    let welcome = recv(&mut p);
    assert_eq!(welcome["type"], "welcome");
    assert_eq!(welcome["producer_id"], 31);
    send(
        &mut p,
        json!({"type": "events", "first_seq": 1, "events": [create(),
            {"hunt": 1, "player": 5, "action": "join"},
            {"hunt": 1, "player": 5, "action": "move", "dx": 1, "dy": -1},
            {"hunt": 1, "player": 5, "action": "move", "dx": 9, "dy": 0}]}),
    );
    let ack = recv(&mut p);
    assert_eq!(ack["type"], "ack", "{ack}");
    assert_eq!(ack["first_seq"], 1);
    assert_eq!(ack["count"], 4);
    assert_eq!(ack["outcomes"][0]["outcome"], "created");
    assert_eq!(ack["outcomes"][1]["outcome"], "joined");
    assert_eq!(ack["outcomes"][2]["outcome"], "moved");
    assert_eq!(ack["outcomes"][3], json!({"outcome": "rejected", "reason": "step_too_large"}));

    let mut entries = Vec::new();
    while entries.len() < 4 {
        let u = recv(&mut watcher);
        assert_eq!(u["type"], "update", "{u}");
        assert_eq!(u["first_seq"], 1 + entries.len() as u64);
        entries.extend(u["entries"].as_array().unwrap().iter().cloned());
    }
    assert_eq!(entries[0]["event"]["action"], "create");
    assert_eq!(entries[3]["outcome"]["reason"], "step_too_large");

    // A bad event names its index and field; the connection stays.
    send(&mut p, json!({"type": "events", "events": [{"hunt": 1, "player": 5, "action": "fly"}]}));
    let err = recv(&mut p);
    assert_eq!(err["code"], "malformed");
    assert!(err["message"].as_str().unwrap().contains("events[0]"), "{err}");
    send(&mut p, json!({"type": "ping", "nonce": 8}));
    assert_eq!(recv(&mut p), json!({"type": "pong", "nonce": 8}));

    // Not JSON: an error, then the close.
    p.send(Message::Text("{nope".into())).unwrap();
    let err = recv(&mut p);
    assert_eq!(err["code"], "malformed");
    expect_closed(&mut p, "");
    // The watcher still works.
    send(&mut watcher, json!({"type": "ping", "nonce": 1}));
    assert_eq!(recv(&mut watcher)["type"], "pong");
    server.shutdown(Duration::from_secs(5));
}

#[test]
fn oversized_messages_are_refused_by_the_limit() {
    let server = start(ServerConfig { ws_message_max: 4096, ws_frame_max: 4096, ..ServerConfig::default() });
    let mut p = connect(&server);
    let big = "x".repeat(10_000);
    let _ = p.send(Message::Text(json!({"type": "ping", "nonce": big}).to_string().into()));
    // The server drops the connection instead of buffering the message.
    assert!(!expect_closed(&mut p, "pong"), "the oversized ping was answered");
    let mut q = connect(&server);
    send(&mut q, json!({"type": "ping", "nonce": 2}));
    assert_eq!(recv(&mut q)["nonce"], 2);
    server.shutdown(Duration::from_secs(5));
}

#[test]
fn a_closing_error_reaches_the_client_with_messages_queued_behind_it() {
    let server = start(ServerConfig::default());
    let mut p = connect(&server);
    // A batch (its `welcome` and `ack` are owed), a message that closes
    // the connection, and 3 MiB more the server will never handle: more
    // than the sockets' buffers hold, so the client is still writing when
    // the server closes.
    let mut queued =
        vec![json!({"type": "events", "events": [create()]}).to_string(), json!({"type": "no_such_type"}).to_string()];
    let pad = "x".repeat(64 << 10);
    queued.extend((0..48).map(|i| json!({"type": "ping", "nonce": format!("{i}{pad}")}).to_string()));
    let written: Result<(), tungstenite::Error> = (|| {
        for m in queued {
            p.write(Message::Text(m.into()))?;
        }
        p.flush()
    })();
    assert!(written.is_ok(), "the server reads what was sent after the error: {written:?}");
    let mut texts = Vec::new();
    let close = loop {
        match p.read() {
            Ok(Message::Text(t)) => texts.push(serde_json::from_str::<Value>(t.as_str()).unwrap()),
            Ok(Message::Close(c)) => break c,
            Ok(_) => {}
            Err(e) => panic!("an I/O failure instead of a close with a reason: {e}; got {texts:?}"),
        }
    };
    let kinds: Vec<&str> = texts.iter().map(|t| t["type"].as_str().unwrap_or("?")).collect();
    assert_eq!(kinds, ["welcome", "ack", "error"], "{texts:?}");
    assert_eq!(texts[1]["first_seq"], 1);
    assert_eq!(texts[2]["code"], "malformed");
    let close = close.expect("the Close frame carries a reason");
    assert_eq!(u16::from(close.code), 1008);
    assert_eq!(close.reason.as_str(), "malformed");
    server.shutdown(Duration::from_secs(5));
}

/// A sequence number reused with another event is answered `error`
/// `sequence_reused` (the connection stays), never with the first event's
/// outcome; the same event again gets its original outcome.
#[test]
fn a_reused_sequence_number_is_refused_over_json() {
    let server = start(ServerConfig::default());
    let mut p = connect(&server);
    send(&mut p, json!({"type": "hello", "producer_id": 32, "outcomes": true}));
    assert_eq!(recv(&mut p)["type"], "welcome");
    let join = |player: u32| json!({"hunt": 1, "player": player, "action": "join"});
    send(&mut p, json!({"type": "events", "first_seq": 1, "events": [create(), join(1)]}));
    let ack = recv(&mut p);
    assert_eq!(ack["outcomes"][1]["outcome"], "joined", "{ack}");
    send(&mut p, json!({"type": "events", "first_seq": 2, "events": [join(5)]}));
    let err = recv(&mut p);
    assert_eq!((&err["type"], &err["code"]), (&json!("error"), &json!("sequence_reused")), "{err}");
    assert!(err["message"].as_str().unwrap().contains("sequence 2"), "{err}");
    send(&mut p, json!({"type": "events", "first_seq": 2, "events": [join(1)]}));
    let again = recv(&mut p);
    assert_eq!((&again["type"], &again["outcomes"][0]), (&json!("ack"), &ack["outcomes"][1]), "{again}");
    // Player 5 never joined.
    send(&mut p, json!({"type": "events", "first_seq": 3, "events": [join(5)]}));
    assert_eq!(recv(&mut p)["outcomes"][0]["outcome"], "joined");
    server.shutdown(Duration::from_secs(5));
}

/// The `acknowledged` stage of a batch is recorded once its ACK's write
/// returned, as over TCP, not when the ACK is queued: a client that stops
/// reading holds it back (and every ACK behind it).
#[test]
fn the_acknowledged_stage_waits_for_the_acks_write() {
    const EVENTS: usize = 200;
    const BATCHES_MAX: u64 = 4000;
    let server = start(ServerConfig::default());
    let mut p = connect(&server);
    if let tungstenite::stream::MaybeTlsStream::Plain(s) = p.get_ref() {
        // Once the server stops reading (its writes blocked), this client's
        // sends end too, instead of hanging the test.
        s.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
    }
    send(&mut p, json!({"type": "hello", "outcomes": true}));
    // Rejected (no such hunt), each with an outcome in its ACK.
    let events: Vec<Value> = (0..EVENTS).map(|i| json!({"hunt": 9, "player": i, "action": "join"})).collect();
    let acked_stage = |s: &Server<TreasureHunt>| s.metrics().stage_ns.last().unwrap().count();
    // The client does not read: the ACKs fill the socket's buffers until
    // a write blocks. Its batch is acknowledged by the engine, but its ACK
    // not written.
    let mut sent = 0u64;
    let stalled = loop {
        assert!(sent < BATCHES_MAX, "{BATCHES_MAX} batches and the server's writes never blocked");
        if p.send(Message::Text(json!({"type": "events", "events": events}).to_string().into())).is_err() {
            break false;
        }
        sent += 1;
        let m = server.metrics();
        if m.events_acked > acked_stage(&server) {
            // Maybe an ACK between its queueing and its write: the same a
            // while later means the write is blocked.
            std::thread::sleep(Duration::from_millis(500));
            let again = server.metrics().events_acked;
            if again == m.events_acked && again > acked_stage(&server) {
                break true;
            }
        }
    };
    let (acked, staged) = (server.metrics().events_acked, acked_stage(&server));
    assert!(stalled, "the writes blocked, yet every acknowledged event's stage was recorded ({acked} and {staged})");
    assert!(acked > staged);
    // Read, and every ACK's stage follows its write.
    assert_eq!(recv(&mut p)["type"], "welcome");
    let mut acks = 0;
    while acks < sent {
        let v = recv(&mut p);
        assert_eq!(v["type"], "ack", "{v}");
        acks += 1;
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while acked_stage(&server) < sent * EVENTS as u64 {
        assert!(std::time::Instant::now() < deadline, "the stages of the ACKs read were not recorded");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(server.metrics().events_acked, sent * EVENTS as u64);
}

/// The next update of a watcher, as the JSON text it carries: a text
/// message, or (compressed) a binary one holding the text's raw DEFLATE.
/// Anything else before it fails.
fn next_update_text(ws: &mut Ws, compressed: bool) -> String {
    use std::io::Read;
    match ws.read().unwrap() {
        Message::Text(t) if !compressed => t.as_str().to_owned(),
        Message::Binary(b) if compressed => {
            let mut text = String::new();
            flate2::read::DeflateDecoder::new(&b[..]).read_to_string(&mut text).expect("raw DEFLATE of UTF-8");
            text
        }
        other => panic!("expected an update as {}, got {other:?}", if compressed { "binary" } else { "text" }),
    }
}

/// A watcher that asked for compression gets every update as a binary
/// message holding the raw DEFLATE of exactly the text a plain watcher of
/// the same hunt gets; everything else stays text. A `compression` other
/// than "deflate" is `malformed` and closes.
#[test]
fn compressed_updates_inflate_to_the_plain_updates_text() {
    let server = start(ServerConfig::default());
    let mut plain = connect(&server);
    send(&mut plain, json!({"type": "subscribe", "hunt": 1}));
    assert_eq!(recv(&mut plain)["type"], "subscribed");
    let mut packed = connect(&server);
    send(&mut packed, json!({"type": "hello", "compression": "deflate"}));
    let welcome = recv(&mut packed);
    assert_eq!(welcome["type"], "welcome", "{welcome}");
    assert_eq!(welcome["compression"], "deflate");
    send(&mut packed, json!({"type": "subscribe", "hunt": 1}));
    assert_eq!(recv(&mut packed)["type"], "subscribed");
    // Without the option the welcome says nothing of compression.
    let mut p = connect(&server);
    send(&mut p, json!({"type": "hello", "compression": null}));
    let welcome = recv(&mut p);
    assert!(welcome.get("compression").is_none(), "{welcome}");

    // One batch of 600 updates: three messages of at most 256 entries;
    // then a second batch.
    let mut events = vec![json!({"hunt": 1, "action": "create", "config": {"width": 32, "height": 32, "seed": 3,
        "treasures_per_round": 16, "value_min": 1, "value_max": 5, "dig_cooldown_ms": 0,
        "step_max": 2, "players_max": 1000}})];
    events.extend((0..599).map(|i| {
        let action = if i < 300 { "join" } else { "dig" };
        json!({"hunt": 1, "player": i % 300, "action": action})
    }));
    send(&mut p, json!({"type": "events", "first_seq": 1, "events": events}));
    assert_eq!(recv(&mut p)["type"], "ack");
    send(
        &mut p,
        json!({"type": "events", "first_seq": 601, "events": [{"hunt": 1, "player": 1, "action": "move",
        "dx": 1, "dy": 0}]}),
    );
    assert_eq!(recv(&mut p)["type"], "ack");

    // Until the second batch's move (the digs' broadcasts are entries too).
    let (mut seen, mut messages, mut moved) = (0, 0, false);
    while !moved {
        let text = next_update_text(&mut plain, false);
        assert_eq!(next_update_text(&mut packed, true), text, "the same update, byte for byte");
        let u: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(u["type"], "update");
        assert_eq!(u["first_seq"], 1 + seen);
        let entries = u["entries"].as_array().unwrap();
        seen += entries.len() as u64;
        moved = entries.iter().any(|e| e["event"]["action"] == "move");
        messages += 1;
    }
    assert!(seen > 601 && messages >= 4, "{seen} entries in {messages} messages");
    // Other messages stay text.
    send(&mut packed, json!({"type": "ping", "nonce": 7}));
    assert_eq!(recv(&mut packed)["nonce"], 7);
    // Compressed once per chunk, shared: two chunks, two encodings.
    assert_eq!(server.metrics().update_encodings_ws_deflate, 2);
    assert_eq!(server.metrics().update_encodings_ws, 2);

    for bad in [json!("gzip"), json!("Deflate"), json!(true), json!(["deflate"])] {
        let mut c = connect(&server);
        send(&mut c, json!({"type": "hello", "compression": bad}));
        let e = recv(&mut c);
        assert_eq!(e["type"], "error", "{bad}: {e}");
        assert_eq!(e["code"], "malformed", "{bad}: {e}");
        assert!(e["message"].as_str().unwrap().contains("compression"), "{e}");
        expect_closed(&mut c, "welcome");
    }
    server.shutdown(Duration::from_secs(5));
}
