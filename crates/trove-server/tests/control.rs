//! The HTTP control plane end to end, over real sockets: an in-process
//! engine, the TCP data plane and the control plane, driven by a plain
//! blocking HTTP/1.1 client and a raw protocol v1 producer, both written
//! here against the specs (no HTTP library, no SDK).
//!
//! `/metrics` is checked by a small exposition-format validator below and,
//! when `promtool` is on PATH (CI installs it), by `promtool check metrics`.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use trove_bench::dev::TempDir;
use trove_bench::http::{Reply, parse_reply};
use trove_hunt::{HuntEvent, HuntOutcome, TreasureHunt};
use trove_proto::Frame;
use trove_proto::frame::{self, HEADER_LEN, Hello, Sizes, hello_flags};
use trove_proto::wire::decode_outcomes;
use trove_server::control::{BODY_BYTES_MAX, ControlConfig, ControlInfo, ControlPlane};
use trove_server::{Server, ServerConfig};
use trove_shard::{Engine, EngineConfig, FsyncPolicy, JournalConfig};

// ---------------------------------------------------------------------------
// The system under test.

struct Harness {
    engine: Arc<Engine<TreasureHunt>>,
    server: Option<Server<TreasureHunt>>,
    control: Option<ControlPlane>,
    ready: Arc<AtomicBool>,
    http: SocketAddr,
    tcp: SocketAddr,
}

impl Harness {
    fn start(journal: Option<JournalConfig>) -> Harness {
        Harness::start_with(journal, ControlConfig::default())
    }

    fn start_with(journal: Option<JournalConfig>, limits: ControlConfig) -> Harness {
        let fsync = journal.as_ref().map_or("none".to_string(), |j| j.fsync.to_string());
        let journal_dir = journal.as_ref().map(|j| j.dir.display().to_string());
        // The wait bound is not what these tests are about (one counts
        // BUSY answers and expects none).
        let engine =
            EngineConfig { shards: 2, journal, queue_wait_max: Duration::from_secs(60), ..EngineConfig::default() };
        let engine = Arc::new(Engine::<TreasureHunt>::start(engine).expect("engine"));
        let config =
            ServerConfig { tcp_addr: SocketAddr::from(([127, 0, 0, 1], 0)), ws_addr: None, ..ServerConfig::default() };
        let server = Server::start(engine.clone(), config).expect("data plane");
        let ready = Arc::new(AtomicBool::new(false));
        let info = ControlInfo {
            mode: "sharded",
            shards: 2,
            fsync,
            journal_dir,
            tcp_addr: server.tcp_addr(),
            ws_addr: server.ws_addr(),
        };
        let control = ControlPlane::start(
            "127.0.0.1:0".parse().unwrap(),
            limits,
            engine.clone(),
            server.metrics_handle(),
            server.runtime_handle(),
            info,
            ready.clone(),
        )
        .expect("control plane");
        ready.store(true, Ordering::Relaxed);
        let (http, tcp) = (control.addr(), server.tcp_addr());
        Harness { engine, server: Some(server), control: Some(control), ready, http, tcp }
    }

    fn get(&self, path: &str) -> Reply {
        request(self.http, "GET", path, None)
    }

    fn post(&self, path: &str, body: &str) -> Reply {
        request(self.http, "POST", path, Some(body))
    }

    fn create(&self, id: u32, config: Value) -> Reply {
        self.post("/hunts", &json!({"id": id, "config": config}).to_string())
    }

    fn scrape(&self) -> Scrape {
        let r = self.get("/metrics");
        assert_eq!(r.status, 200, "{}", r.body);
        let ct = r.header("content-type").unwrap_or_default();
        assert!(ct.starts_with("text/plain") && ct.contains("version=0.0.4"), "content type {ct}");
        let scrape = Scrape::parse(&r.body).unwrap_or_else(|e| panic!("invalid exposition: {e}\n{}", r.body));
        trove_bench::prometheus::promtool_check(&r.body);
        scrape
    }

    /// Stops everything, in `trove serve`'s order.
    fn stop(mut self) -> trove_shard::FinalState {
        self.ready.store(false, Ordering::Relaxed);
        self.server.take().unwrap().shutdown(Duration::from_secs(5));
        self.control.take().unwrap().shutdown();
        let engine = self.engine.clone();
        drop(self);
        Arc::try_unwrap(engine).unwrap_or_else(|_| panic!("the engine is still shared after shutdown")).shutdown()
    }
}

fn config() -> Value {
    json!({
        "width": 64, "height": 64, "seed": 7, "treasures_per_round": 64, "value_min": 1,
        "value_max": 9, "dig_cooldown_ms": 0, "step_max": 4, "players_max": 1000,
    })
}

// ---------------------------------------------------------------------------
// The HTTP/1.1 client (trove-bench's), and what the tests read of a reply.

/// What the tests read of a reply beyond its status, headers and body.
trait ReplyExt {
    fn json(&self) -> Value;
    fn error(&self, status: u16, code: &str) -> String;
}

impl ReplyExt for Reply {
    fn json(&self) -> Value {
        let ct = self.header("content-type").unwrap_or_default();
        assert!(ct.starts_with("application/json"), "content type `{ct}` for {}: {}", self.status, self.body);
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }

    /// Asserts an error reply: `status` with `{"error": code, "message": ...}`;
    /// returns the message.
    fn error(&self, status: u16, code: &str) -> String {
        assert_eq!(self.status, status, "expected {status} {code}, got: {}", self.body);
        let v = self.json();
        let obj = v.as_object().unwrap_or_else(|| panic!("error body is not an object: {v}"));
        assert_eq!(obj.len(), 2, "an error has exactly `error` and `message`: {v}");
        assert_eq!(v["error"], code, "{v}");
        let message = v["message"].as_str().unwrap_or_else(|| panic!("no message: {v}")).to_string();
        assert!(!message.is_empty());
        message
    }
}

fn request(addr: SocketAddr, method: &str, path: &str, body: Option<&str>) -> Reply {
    trove_bench::http::request(addr, method, path, body, Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
}

// ---------------------------------------------------------------------------
// A raw protocol v1 producer (docs/protocol.md), expecting outcomes.

const SIZES: Sizes = Sizes { record: 32, outcome: 16 };

struct Producer {
    s: TcpStream,
    buf: Vec<u8>,
    next_seq: u64,
    /// Events sent and acknowledged.
    sent: u64,
}

impl Producer {
    fn connect(addr: SocketAddr) -> Producer {
        let s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        s.set_nodelay(true).unwrap();
        let mut p = Producer { s, buf: Vec::new(), next_seq: 1, sent: 0 };
        let mut b = Vec::new();
        frame::encode_hello(&mut b, &Hello::v1(hello_flags::OUTCOMES, 0));
        p.s.write_all(&b).unwrap();
        let (header, body) = p.frame();
        match frame::decode(header, &body, SIZES).unwrap() {
            Frame::Welcome(w) => assert_eq!((w.record_size, w.outcome_size), (32, 16)),
            other => panic!("expected WELCOME, got {other:?}"),
        }
        p
    }

    fn frame(&mut self) -> (frame::Header, Vec<u8>) {
        loop {
            if let Some((h, total)) = frame::split(&self.buf, 64 << 20).unwrap() {
                let body = self.buf[HEADER_LEN..total].to_vec();
                self.buf.drain(..total);
                return (h, body);
            }
            let mut chunk = [0u8; 65536];
            match self.s.read(&mut chunk) {
                Ok(0) => panic!("the server closed the connection"),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) => panic!("reading: {e}"),
            }
        }
    }

    /// Sends one EVENTS frame and waits for its ACK.
    fn send(&mut self, events: &[HuntEvent]) -> Vec<HuntOutcome> {
        let mut b = Vec::new();
        frame::encode_events(&mut b, self.next_seq, events);
        self.s.write_all(&b).unwrap();
        let (header, body) = self.frame();
        let outcomes = match frame::decode(header, &body, SIZES).unwrap() {
            Frame::Ack { first_seq, count, outcomes: Some(o) } => {
                assert_eq!((first_seq, count as usize), (self.next_seq, events.len()));
                decode_outcomes::<TreasureHunt>(o).unwrap()
            }
            other => panic!("expected ACK with outcomes, got {other:?}"),
        };
        self.next_seq += events.len() as u64;
        self.sent += events.len() as u64;
        outcomes
    }
}

// ---------------------------------------------------------------------------
// The Prometheus text format (0.0.4), checked.

type Labels = BTreeMap<String, String>;

#[derive(Debug, Default)]
struct Family {
    kind: String,
    help: Option<String>,
    /// (sample name, labels, value), in exposition order.
    samples: Vec<(String, Labels, f64)>,
}

#[derive(Debug)]
struct Scrape {
    families: BTreeMap<String, Family>,
}

fn is_metric_name(s: &str) -> bool {
    let mut c = s.chars();
    c.next().is_some_and(|f| f.is_ascii_alphabetic() || f == '_' || f == ':')
        && c.all(|x| x.is_ascii_alphanumeric() || x == '_' || x == ':')
}

fn is_label_name(s: &str) -> bool {
    let mut c = s.chars();
    c.next().is_some_and(|f| f.is_ascii_alphabetic() || f == '_')
        && c.all(|x| x.is_ascii_alphanumeric() || x == '_')
        && !s.starts_with("__")
}

fn parse_value(s: &str) -> Result<f64, String> {
    match s {
        "+Inf" | "Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        "NaN" => Ok(f64::NAN),
        _ => s.parse::<f64>().map_err(|_| format!("bad value `{s}`")),
    }
}

/// `{a="x",b="y"}` into a map; returns the map and the rest of the line.
fn parse_labels(s: &str) -> Result<(Labels, &str), String> {
    let mut labels = BTreeMap::new();
    let mut rest = s.strip_prefix('{').ok_or("expected `{`")?;
    loop {
        rest = rest.trim_start();
        if let Some(r) = rest.strip_prefix('}') {
            return Ok((labels, r));
        }
        let eq = rest.find('=').ok_or("label without `=`")?;
        let name = rest[..eq].trim();
        if !is_label_name(name) {
            return Err(format!("bad label name `{name}`"));
        }
        rest = rest[eq + 1..].strip_prefix('"').ok_or("label value not quoted")?;
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            match chars.next() {
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, c @ ('\\' | '"'))) => value.push(c),
                    _ => return Err("bad escape in a label value".into()),
                },
                Some((_, c)) => value.push(c),
                None => return Err("unterminated label value".into()),
            }
        };
        if labels.insert(name.to_string(), value).is_some() {
            return Err(format!("label `{name}` twice"));
        }
        rest = &rest[end + 1..];
        rest = rest.strip_prefix(',').unwrap_or(rest);
    }
}

impl Scrape {
    /// Parses and checks a scrape: every sample's family has HELP and TYPE
    /// before it, a family's lines are together, names are valid, counters
    /// end in `_total` and are finite and non-negative, no series repeats,
    /// and every histogram series has cumulative buckets ending in
    /// `le="+Inf"` equal to its `_count`, plus a `_sum`.
    fn parse(text: &str) -> Result<Scrape, String> {
        let mut families: BTreeMap<String, Family> = BTreeMap::new();
        let mut finished: BTreeSet<String> = BTreeSet::new();
        let mut current: Option<String> = None;
        let mut series: BTreeSet<String> = BTreeSet::new();
        let mut switch_to = |name: &str, current: &mut Option<String>| -> Result<(), String> {
            if current.as_deref() != Some(name) {
                if let Some(old) = current.take() {
                    finished.insert(old);
                }
                if finished.contains(name) {
                    return Err(format!("the lines of family `{name}` are not together"));
                }
                *current = Some(name.to_string());
            }
            Ok(())
        };
        for (n, line) in text.lines().enumerate() {
            let at = |e: String| format!("line {}: {e}: `{line}`", n + 1);
            if line.trim().is_empty() {
                continue;
            }
            if let Some(comment) = line.strip_prefix('#') {
                let mut words = comment.trim_start().splitn(3, ' ');
                let (keyword, name, rest) = (words.next(), words.next(), words.next().unwrap_or(""));
                let (Some(keyword @ ("HELP" | "TYPE")), Some(name)) = (keyword, name) else { continue };
                if !is_metric_name(name) {
                    return Err(at(format!("bad metric name `{name}`")));
                }
                switch_to(name, &mut current).map_err(at)?;
                let fam = families.entry(name.to_string()).or_default();
                if !fam.samples.is_empty() {
                    return Err(at(format!("{keyword} after samples of `{name}`")));
                }
                if keyword == "HELP" {
                    if fam.help.replace(rest.to_string()).is_some() {
                        return Err(at("HELP twice".into()));
                    }
                } else {
                    if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&rest) {
                        return Err(at(format!("bad type `{rest}`")));
                    }
                    if !fam.kind.is_empty() {
                        return Err(at("TYPE twice".into()));
                    }
                    fam.kind = rest.to_string();
                }
                continue;
            }
            let name_end = line.find(['{', ' ']).ok_or_else(|| at("no value".into()))?;
            let name = &line[..name_end];
            if !is_metric_name(name) {
                return Err(at(format!("bad metric name `{name}`")));
            }
            let (labels, rest) = if line[name_end..].starts_with('{') {
                parse_labels(&line[name_end..]).map_err(at)?
            } else {
                (BTreeMap::new(), &line[name_end..])
            };
            let mut fields = rest.split_whitespace();
            let value = parse_value(fields.next().ok_or_else(|| at("no value".into()))?).map_err(at)?;
            if let Some(ts) = fields.next() {
                ts.parse::<i64>().map_err(|_| at("bad timestamp".into()))?;
            }
            if fields.next().is_some() {
                return Err(at("trailing fields".into()));
            }
            let family = if families.get(name).is_some_and(|f| !f.kind.is_empty()) {
                name.to_string()
            } else {
                ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|suffix| {
                        let base = name.strip_suffix(suffix)?;
                        families.get(base).filter(|f| f.kind == "histogram").map(|_| base.to_string())
                    })
                    .ok_or_else(|| at(format!("sample `{name}` has no TYPE before it")))?
            };
            switch_to(&family, &mut current).map_err(at)?;
            if !series.insert(format!("{name}{labels:?}")) {
                return Err(at("the same series twice".into()));
            }
            families.get_mut(&family).unwrap().samples.push((name.to_string(), labels, value));
        }
        for (name, f) in &families {
            let bad = |e: String| Err(format!("family `{name}`: {e}"));
            if f.help.as_deref().is_none_or(str::is_empty) {
                return bad("no HELP".into());
            }
            if f.kind.is_empty() {
                return bad("no TYPE".into());
            }
            match f.kind.as_str() {
                "counter" => {
                    if !name.ends_with("_total") {
                        return bad("a counter's name must end in `_total`".into());
                    }
                    if let Some((_, l, v)) = f.samples.iter().find(|(_, _, v)| !v.is_finite() || *v < 0.0) {
                        return bad(format!("counter {l:?} = {v}"));
                    }
                }
                "gauge" if name.ends_with("_total") => return bad("a gauge named `_total`".into()),
                "histogram" => check_histogram(name, f).map_err(|e| format!("family `{name}`: {e}"))?,
                _ => {}
            }
        }
        Ok(Scrape { families })
    }

    fn family(&self, name: &str) -> &Family {
        self.families.get(name).unwrap_or_else(|| panic!("no family `{name}` in the scrape"))
    }

    /// The one sample named `sample` whose labels include `labels`.
    fn value(&self, sample: &str, labels: &[(&str, &str)]) -> f64 {
        let matching: Vec<f64> = self
            .samples(sample)
            .filter(|(l, _)| labels.iter().all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v)))
            .map(|(_, v)| v)
            .collect();
        assert_eq!(matching.len(), 1, "{sample}{labels:?}: {matching:?}");
        matching[0]
    }

    /// The sum of every sample named `sample` (across labels).
    fn sum(&self, sample: &str) -> f64 {
        self.samples(sample).map(|(_, v)| v).sum()
    }

    fn samples<'a>(&'a self, sample: &'a str) -> impl Iterator<Item = (&'a Labels, f64)> + 'a {
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| sample.strip_suffix(s).filter(|b| self.families.contains_key(*b)))
            .unwrap_or(sample);
        self.family(family).samples.iter().filter(move |(n, _, _)| n == sample).map(|(_, l, v)| (l, *v))
    }
}

/// One histogram series: its `(le, count)` buckets in order, `_sum`, `_count`.
#[derive(Default)]
struct HistogramSeries {
    buckets: Vec<(f64, f64)>,
    sum: Option<f64>,
    count: Option<f64>,
}

fn check_histogram(name: &str, f: &Family) -> Result<(), String> {
    // Per series (labels without `le`).
    let mut series: BTreeMap<Labels, HistogramSeries> = BTreeMap::new();
    for (sample, labels, value) in &f.samples {
        let mut key = labels.clone();
        let le = key.remove("le");
        let entry = series.entry(key).or_default();
        match sample.strip_prefix(name) {
            Some("_bucket") => {
                let le = le.ok_or_else(|| format!("bucket without `le`: {labels:?}"))?;
                entry.buckets.push((parse_value(&le)?, *value));
            }
            Some("_sum") if le.is_none() => entry.sum = Some(*value),
            Some("_count") if le.is_none() => entry.count = Some(*value),
            _ => return Err(format!("unexpected sample `{sample}` {labels:?}")),
        }
    }
    if series.is_empty() {
        return Err("a histogram without samples".into());
    }
    for (labels, HistogramSeries { buckets, sum, count }) in series {
        let count = count.ok_or_else(|| format!("{labels:?}: no _count"))?;
        let sum = sum.ok_or_else(|| format!("{labels:?}: no _sum"))?;
        if !sum.is_finite() || sum < 0.0 {
            return Err(format!("{labels:?}: _sum {sum}"));
        }
        let last = buckets.last().ok_or_else(|| format!("{labels:?}: no buckets"))?;
        if last.0 != f64::INFINITY {
            return Err(format!("{labels:?}: the last bucket is le={}, not +Inf", last.0));
        }
        if last.1 != count {
            return Err(format!("{labels:?}: le=+Inf {} != _count {count}", last.1));
        }
        for w in buckets.windows(2) {
            if w[1].0 <= w[0].0 {
                return Err(format!("{labels:?}: le {} after le {}", w[1].0, w[0].0));
            }
            if w[1].1 < w[0].1 {
                return Err(format!(
                    "{labels:?}: buckets not cumulative: le={} {} < le={} {}",
                    w[1].0, w[1].1, w[0].0, w[0].1
                ));
            }
        }
        if buckets.iter().any(|(le, n)| le.is_nan() || !n.is_finite() || *n < 0.0) {
            return Err(format!("{labels:?}: bad bucket"));
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Probes, status, the OpenAPI document, routing errors.

#[test]
fn probes_status_openapi_and_routing_errors() {
    let h = Harness::start(None);

    // Readiness follows the flag `trove serve` sets once serving.
    h.ready.store(false, Ordering::Relaxed);
    h.get("/ready").error(503, "not_ready");
    h.ready.store(true, Ordering::Relaxed);
    let r = h.get("/ready");
    assert_eq!((r.status, r.json()), (200, json!({"status": "ready"})));
    let r = h.get("/health");
    assert_eq!((r.status, r.json()), (200, json!({"status": "ok"})));

    let r = h.get("/status");
    assert_eq!(r.status, 200);
    let s = r.json();
    assert_eq!(s["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(s["game"], "treasure-hunt");
    assert_eq!(s["mode"], "sharded");
    assert_eq!(s["shards"], 2);
    assert_eq!(s["fsync"], "none");
    assert_eq!(s["journal_dir"], Value::Null);
    assert_eq!(s["tcp_addr"], h.tcp.to_string());
    assert_eq!(s["ws_addr"], Value::Null);
    // Uptime is positive and grows (polled: a coarse clock may take a while).
    let uptime = s["uptime_seconds"].as_f64().expect("uptime_seconds is a number");
    assert!(uptime > 0.0, "{s}");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let later = h.get("/status").json()["uptime_seconds"].as_f64().unwrap();
        assert!(later >= uptime, "uptime went back from {uptime} to {later}");
        if later > uptime {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "uptime stayed at {uptime} s");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(s["events_applied"], 0);
    assert_eq!(s["connections_open"], 0);
    assert_eq!(s["subscribers"], 0);
    let journal = s["journal"].as_array().unwrap();
    assert_eq!(journal.len(), 2);
    for (i, j) in journal.iter().enumerate() {
        assert_eq!(j, &json!({"shard": i, "bytes_written": 0, "fsyncs": 0, "snapshots": 0, "events_applied": 0}));
    }

    // Unknown routes and methods: JSON errors, like every other error.
    for path in ["/nope", "/hunts/1/nope", "/hunts/1/players", "/metrics/x", "/HEALTH"] {
        h.get(path).error(404, "not_found");
    }
    for (method, path, allow) in [
        ("DELETE", "/hunts", "GET,HEAD,POST"),
        ("PUT", "/hunts", "GET,HEAD,POST"),
        ("POST", "/health", "GET,HEAD"),
        ("POST", "/metrics", "GET,HEAD"),
        ("PUT", "/hunts/1", "GET,HEAD,DELETE"),
        ("POST", "/hunts/1/leaderboard", "GET,HEAD"),
        ("PATCH", "/hunts/1/players/2", "GET,HEAD"),
    ] {
        let r = request(h.http, method, path, Some("{}"));
        r.error(405, "method_not_allowed");
        assert_eq!(r.header("allow"), Some(allow), "{method} {path}: a 405 names the methods allowed");
    }

    // The OpenAPI document: valid JSON, 3.0.3, and it describes exactly
    // the routes the router serves.
    let r = h.get("/openapi.json");
    assert_eq!(r.status, 200);
    let doc = r.json();
    assert_eq!(doc["openapi"], "3.0.3");
    assert!(doc["info"]["title"].is_string() && doc["info"]["version"].is_string());
    let served: BTreeMap<&str, Vec<&str>> = [
        ("/health", vec!["get"]),
        ("/ready", vec!["get"]),
        ("/status", vec!["get"]),
        ("/metrics", vec!["get"]),
        ("/openapi.json", vec!["get"]),
        ("/", vec!["get"]),
        ("/dashboard/{file}", vec!["get"]),
        ("/live", vec!["get"]),
        ("/cluster", vec!["get"]),
        ("/hunts", vec!["get", "post"]),
        ("/hunts/{id}", vec!["get", "delete"]),
        ("/hunts/{id}/leaderboard", vec!["get"]),
        ("/hunts/{id}/players/{player}", vec!["get"]),
    ]
    .into_iter()
    .collect();
    let paths = doc["paths"].as_object().expect("paths");
    let listed: BTreeMap<&str, Vec<&str>> = paths
        .iter()
        .map(|(p, item)| {
            let methods = ["get", "put", "post", "delete", "options", "head", "patch", "trace"];
            (p.as_str(), methods.into_iter().filter(|m| item.get(*m).is_some()).collect())
        })
        .collect();
    assert_eq!(listed, served, "/openapi.json lists every route the router serves, and no other");
    for (path, item) in paths {
        // Every listed GET is routed (a 404 from the fallback would say
        // `not_found`), and every operation documents its success reply
        // and the error schema for its errors.
        let concrete = path.replace("{id}", "1").replace("{player}", "2").replace("{file}", "app.js");
        // `/live` never ends (tests/live.rs reads it).
        if path != "/live" {
            let reply = h.get(&concrete);
            assert!(
                reply.status == 200 || reply.json()["error"] != "not_found",
                "{path} is not routed: {}",
                reply.body
            );
        }
        for (method, op) in item.as_object().unwrap().iter().filter(|(k, _)| *k != "parameters") {
            let responses = op["responses"].as_object().unwrap_or_else(|| panic!("{method} {path}: no responses"));
            assert!(responses.keys().any(|c| c.starts_with('2')), "{method} {path}: no 2xx");
            // Each `{name}` of the path is a declared path parameter.
            let declared: BTreeSet<&str> = item["parameters"]
                .as_array()
                .into_iter()
                .chain(op["parameters"].as_array())
                .flatten()
                .map(|p| resolve(&doc, p))
                .filter(|p| p["in"] == "path" && p["required"] == true)
                .filter_map(|p| p["name"].as_str())
                .collect();
            let in_path: BTreeSet<&str> =
                path.split('/').filter_map(|seg| seg.strip_prefix('{')?.strip_suffix('}')).collect();
            assert_eq!(declared, in_path, "{method} {path}: path parameters");
        }
    }
    let create = &paths["/hunts"]["post"]["responses"];
    for code in ["201", "400", "409", "422", "503", "504", "507"] {
        assert!(create.get(code).is_some(), "POST /hunts documents {code}");
    }
    // Every $ref resolves.
    let mut refs = Vec::new();
    collect_refs(&doc, &mut refs);
    assert!(!refs.is_empty());
    for r in refs {
        assert!(!resolve(&doc, &json!({"$ref": r})).is_null(), "dangling $ref {r}");
    }
    let error = &doc["components"]["schemas"]["Error"];
    assert_eq!(error["required"], json!(["error", "message"]));
    let hunt_config = &doc["components"]["schemas"]["HuntConfig"]["properties"];
    assert_eq!(hunt_config["width"]["maximum"], 4096, "MAP_SIDE_MAX");
    assert_eq!(hunt_config["players_max"]["maximum"], u64::from(trove_hunt::PLAYERS_PER_HUNT_MAX));

    h.stop();
}

fn collect_refs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            if let Some(Value::String(r)) = m.get("$ref") {
                out.push(r.clone());
            }
            m.values().for_each(|x| collect_refs(x, out));
        }
        Value::Array(a) => a.iter().for_each(|x| collect_refs(x, out)),
        _ => {}
    }
}

/// Follows a local `$ref` (`#/a/b`), or returns `v` itself.
fn resolve<'a>(doc: &'a Value, v: &'a Value) -> &'a Value {
    match v.get("$ref").and_then(Value::as_str) {
        Some(r) => r.strip_prefix('#').map_or(&Value::Null, |p| doc.pointer(p).unwrap_or(&Value::Null)),
        None => v,
    }
}

// ---------------------------------------------------------------------------
// Hunts: create, errors, reads, pagination.

#[test]
fn creating_hunts_and_the_errors_of_bad_requests() {
    let h = Harness::start(None);

    let r = h.create(1, config());
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.json(), json!({"id": 1, "round": 1}));
    // The same id again: the rules reject it.
    let m = h.create(1, config()).error(409, "hunt_exists");
    assert!(m.contains("hunt 1"), "{m}");
    // The config is checked before it reaches the engine; the message
    // names the field.
    let with = |field: &str, value: Value| {
        let mut c = config();
        c[field] = value;
        c
    };
    for (field, value) in [
        ("width", json!(0)),
        ("width", json!(4097)),
        ("height", json!(0)),
        ("treasures_per_round", json!(0)),
        ("treasures_per_round", json!(64 * 64 / 4 + 1)),
        ("value_min", json!(0)),
        ("value_max", json!(0)),
        ("step_max", json!(0)),
        ("players_max", json!(0)),
        ("players_max", json!(trove_hunt::PLAYERS_PER_HUNT_MAX + 1)),
    ] {
        let m = h.create(2, with(field, value.clone())).error(400, "bad_request");
        assert!(m.contains(&format!("config.{field}")), "{field} = {value}: {m}");
    }
    // Out of the field's integer range, of the wrong type, or missing: the
    // field is named too.
    for (field, value) in [
        ("width", json!(70_000)),
        ("step_max", json!(256)),
        ("seed", json!(-1)),
        ("seed", json!(1.5)),
        ("dig_cooldown_ms", json!("10")),
        ("value_max", Value::Null),
    ] {
        let m = h.create(2, with(field, value.clone())).error(400, "bad_request");
        assert!(m.contains(&format!("`config.{field}`")), "{field} = {value}: {m}");
    }
    let mut c = config();
    c.as_object_mut().unwrap().remove("players_max");
    let m = h.create(2, c).error(400, "bad_request");
    assert!(m.contains("missing field `config.players_max`"), "{m}");
    // The body itself.
    let m = h.post("/hunts", "{\"id\": 2, \"config\": ").error(400, "bad_request");
    assert!(m.contains("not JSON"), "{m}");
    let m = h.post("/hunts", "").error(400, "bad_request");
    assert!(m.contains("not JSON"), "{m}");
    let m = h.post("/hunts", &json!({"config": config()}).to_string()).error(400, "bad_request");
    assert!(m.contains("missing field `id`"), "{m}");
    let m = h.post("/hunts", &json!({"id": 2}).to_string()).error(400, "bad_request");
    assert!(m.contains("missing field `config`"), "{m}");
    h.post("/hunts", "[1, 2]").error(400, "bad_request");
    // A body above the control plane's limit (64 KiB) is refused before
    // it is buffered, with a JSON error. The client sends one byte past the
    // limit and no more, so the server reads all it was sent before it
    // closes (unread bytes would make the close a reset).
    let limit = 64 << 10;
    let mut s = TcpStream::connect(h.http).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let head = format!("POST /hunts HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n", 3 << 20);
    s.write_all(head.as_bytes()).unwrap();
    let _ = s.write_all(&vec![b' '; limit + 1]);
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let reply = parse_reply(&raw).unwrap();
    assert_eq!(reply.status, 413);
    assert!(reply.body.contains("\"payload_too_large\""), "{}", reply.body);
    h.post("/hunts", &json!({"id": 2, "config": 5}).to_string()).error(400, "bad_request");
    for id in [json!(-1), json!(4_294_967_296u64), json!("2"), json!(2.5)] {
        h.post("/hunts", &json!({"id": id, "config": config()}).to_string()).error(400, "bad_request");
    }
    // Nothing of that was created.
    let list = h.get("/hunts").json();
    assert_eq!(list, json!({"hunts": [{"id": 1, "round": 1, "players": 0, "treasures_left": 64}], "next_after": null}));
    // The largest id is an id like any other.
    assert_eq!(h.create(u32::MAX, config()).status, 201);
    assert_eq!(h.get(&format!("/hunts/{}", u32::MAX)).json()["id"], u32::MAX);

    // Unknown hunts; ids that are not u32.
    for path in ["/hunts/999", "/hunts/999/leaderboard", "/hunts/999/players/1"] {
        let m = h.get(path).error(404, "unknown_hunt");
        assert!(m.contains("999"), "{m}");
    }
    for (path, what) in [
        ("/hunts/abc", "hunt id `abc`"),
        ("/hunts/-1", "hunt id `-1`"),
        ("/hunts/4294967296", "hunt id `4294967296`"),
        ("/hunts/1.5/leaderboard", "hunt id `1.5`"),
        ("/hunts/0x10/players/1", "hunt id `0x10`"),
        ("/hunts/1/players/abc", "player id `abc`"),
        ("/hunts/1/players/-3", "player id `-3`"),
        ("/hunts/1/players/99999999999", "player id `99999999999`"),
    ] {
        let m = h.get(path).error(400, "bad_request");
        assert!(m.contains(what), "{path}: {m}");
    }
    // A path segment that is not UTF-8 once decoded: 400 too, as JSON.
    h.get("/hunts/%FF").error(400, "bad_request");
    h.get("/hunts/1/players/%FF").error(400, "bad_request");
    let m = h.get("/hunts/1/players/5").error(404, "unknown_player");
    assert!(m.contains("player 5") && m.contains("hunt 1"), "{m}");

    // Rejections counted by reason in /metrics: one hunt_exists so far.
    let scrape = h.scrape();
    assert_eq!(scrape.value("trove_events_rejected_total", &[("reason", "hunt_exists")]), 1.0);
    assert_eq!(scrape.sum("trove_events_applied_total"), 3.0, "two creates and the duplicate");
    h.stop();
}

/// Pages through `/hunts` with `limit`, checking each page; returns every
/// id in the order the pages gave them.
fn walk_pages(h: &Harness, limit: usize) -> Vec<u64> {
    let mut ids = Vec::new();
    let mut after: Option<u64> = None;
    for _ in 0..10_000 {
        let path = match after {
            Some(a) => format!("/hunts?limit={limit}&after={a}"),
            None => format!("/hunts?limit={limit}"),
        };
        let r = h.get(&path);
        assert_eq!(r.status, 200, "{path}: {}", r.body);
        let page = r.json();
        let hunts = page["hunts"].as_array().unwrap();
        assert!(hunts.len() <= limit, "{path}: {} hunts", hunts.len());
        let page_ids: Vec<u64> = hunts.iter().map(|x| x["id"].as_u64().unwrap()).collect();
        ids.extend(&page_ids);
        match page["next_after"].as_u64() {
            Some(next) => {
                assert_eq!(hunts.len(), limit, "{path}: a page before the last is full");
                assert_eq!(Some(&next), page_ids.last(), "{path}: next_after is the last id of the page");
                after = Some(next);
            }
            None => {
                assert!(page["next_after"].is_null(), "{path}: {page}");
                return ids;
            }
        }
    }
    panic!("paging did not end");
}

#[test]
fn listing_hunts_page_by_page() {
    let h = Harness::start(None);
    let mut ids: Vec<u64> = vec![0, 1, 2, 3, 10, 11, 20, 42, 100, 1000, 65_536, 1 << 31, u64::from(u32::MAX)];
    for &id in ids.iter().rev() {
        assert_eq!(h.create(id as u32, config()).status, 201);
    }
    ids.sort_unstable();

    let all = h.get("/hunts").json();
    assert_eq!(all["next_after"], Value::Null);
    let listed: Vec<u64> = all["hunts"].as_array().unwrap().iter().map(|x| x["id"].as_u64().unwrap()).collect();
    assert_eq!(listed, ids, "every hunt, by ascending id");
    for hunt in all["hunts"].as_array().unwrap() {
        let keys: BTreeSet<&str> = hunt.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(keys, BTreeSet::from(["id", "round", "players", "treasures_left"]));
    }
    // (Limits 1 to 3 over these 13 hunts hit the bug that
    // `listing_hunts_with_small_limits` pins down.)
    for limit in [4, 5, 6, 7, 12, 13, 14, 1000] {
        assert_eq!(walk_pages(&h, limit), ids, "limit {limit}");
    }
    // `after` alone, and past the end.
    let r = h.get("/hunts?after=42").json();
    let listed: Vec<u64> = r["hunts"].as_array().unwrap().iter().map(|x| x["id"].as_u64().unwrap()).collect();
    assert_eq!(listed, ids.iter().copied().filter(|&i| i > 42).collect::<Vec<_>>());
    assert_eq!(h.get(&format!("/hunts?after={}", u32::MAX)).json(), json!({"hunts": [], "next_after": null}));
    let r = h.get("/hunts?limit=2&after=2").json();
    assert_eq!(r["next_after"], 10);
    assert_eq!(r["hunts"].as_array().unwrap().len(), 2);

    // Bad parameters: 400 with the error schema.
    for query in [
        "limit=0",
        "limit=1001",
        "limit=5000",
        "limit=abc",
        "limit=-1",
        "limit=1.5",
        "after=abc",
        "after=-1",
        "after=4294967296",
        "limit=10&after=x",
    ] {
        let m = h.get(&format!("/hunts?{query}")).error(400, "bad_request");
        assert!(m.contains("`limit`") || m.contains("`after`"), "{query}: {m}");
    }
    assert_eq!(h.get("/hunts?limit=1000").status, 200);
    assert_eq!(h.get("/hunts?limit=1").status, 200);
    h.stop();
}

/// Small limits, where `list_hunts` trims its candidates while they arrive
/// (past `4 * limit` of them). Ignored until control.rs keeps `limit + 1`
/// candidates when it trims (`hunts.truncate(limit + 1)` inside the collect
/// loop of `list_hunts`): today, when the last candidate to arrive triggers
/// the trim (13 hunts left and limit 3, 9 and limit 2, 5 and limit 1), the
/// page forgets that more hunts follow and answers `next_after: null` on a
/// page that is not the last, so a client stops paging early.
#[test]
fn listing_hunts_with_small_limits() {
    let h = Harness::start(None);
    let ids: Vec<u64> = (1..=13).collect();
    for &id in &ids {
        assert_eq!(h.create(id as u32, config()).status, 201);
    }
    for limit in [1, 2, 3] {
        assert_eq!(walk_pages(&h, limit), ids, "limit {limit}");
    }
    h.stop();
}

// ---------------------------------------------------------------------------
// Events through the data plane, seen by the reads and /metrics.

#[test]
fn events_through_the_data_plane_show_in_reads_and_metrics() {
    let h = Harness::start(None);
    // 8x8 cells, 16 treasures: a walk finds one well before it could
    // finish the round (which would clear the leaderboard).
    let small = json!({
        "width": 8, "height": 8, "seed": 11, "treasures_per_round": 16, "value_min": 1,
        "value_max": 9, "dig_cooldown_ms": 0, "step_max": 8, "players_max": 100,
    });
    assert_eq!(h.create(1, small.clone()).status, 201);
    let before = h.scrape();
    let applied_before = before.sum("trove_events_applied_total");
    let exists_before = before.value("trove_events_rejected_total", &[("reason", "hunt_exists")]);
    assert_eq!(applied_before, 1.0);
    assert_eq!(exists_before, 0.0);

    let mut p = Producer::connect(h.tcp);
    let joins: Vec<HuntEvent> = (0..10).map(|i| HuntEvent::join(1, i)).collect();
    let joined = p.send(&joins);
    let spawn: Vec<(u16, u16)> = joined
        .iter()
        .map(|o| match *o {
            HuntOutcome::Joined { x, y, score: 0 } => (x, y),
            other => panic!("expected Joined, got {other:?}"),
        })
        .collect();
    // Player 0 walks the map row by row, digging, until it finds a treasure.
    let (mut x, mut y) = spawn[0];
    let mut found = None;
    'walk: for cy in 0..8u16 {
        for cx in 0..8u16 {
            let step = HuntEvent::move_by(1, 0, (cx as i16) - (x as i16), (cy as i16) - (y as i16));
            let o = p.send(&[step, HuntEvent::dig(1, 0)]);
            assert_eq!(o[0], HuntOutcome::Moved { x: cx, y: cy });
            (x, y) = (cx, cy);
            match o[1] {
                HuntOutcome::DigFound { value, score } => {
                    assert_eq!(u32::from(value), score);
                    found = Some(score);
                    break 'walk;
                }
                HuntOutcome::DigNothing => {}
                other => panic!("expected a dig outcome, got {other:?}"),
            }
        }
    }
    let score = found.expect("16 treasures on 64 cells: the walk finds one");
    // Player 9 leaves; a scan and a rejected move for good measure.
    let o = p.send(&[HuntEvent::leave(1, 9), HuntEvent::scan(1, 3), HuntEvent::move_by(1, 3, 9, 0)]);
    assert_eq!(o[0], HuntOutcome::Left);
    assert!(matches!(o[1], HuntOutcome::Hint { .. }), "{:?}", o[1]);
    assert!(matches!(o[2], HuntOutcome::Rejected { reason: trove_hunt::Reject::StepTooLarge }), "{:?}", o[2]);

    // The reads see every acknowledged event.
    let d = h.get("/hunts/1");
    assert_eq!(d.status, 200, "{}", d.body);
    let d = d.json();
    assert_eq!(d["id"], 1);
    assert_eq!(d["round"], 1);
    assert_eq!(d["players"], 9);
    assert_eq!(d["treasures_left"], 15);
    assert_eq!(d["config"], small);
    assert_eq!(d["leaderboard"], json!([{"player": 0, "score": score}]));
    let board = h.get("/hunts/1/leaderboard").json();
    assert_eq!(board, json!({"id": 1, "round": 1, "top": [{"player": 0, "score": score}]}));
    let me = h.get("/hunts/1/players/0").json();
    assert_eq!(me, json!({"hunt": 1, "player": 0, "x": x, "y": y, "score": score, "round": 1}));
    let (sx, sy) = spawn[5];
    let other = h.get("/hunts/1/players/5").json();
    assert_eq!(other, json!({"hunt": 1, "player": 5, "x": sx, "y": sy, "score": 0, "round": 1}));
    h.get("/hunts/1/players/9").error(404, "unknown_player");
    h.get("/hunts/1/players/50").error(404, "unknown_player");
    h.get(&format!("/hunts/1/players/{}", u32::MAX)).error(404, "unknown_player");
    let list = h.get("/hunts").json();
    assert_eq!(list["hunts"], json!([{"id": 1, "round": 1, "players": 9, "treasures_left": 15}]));

    // A duplicate create, counted by reason.
    h.create(1, small).error(409, "hunt_exists");

    let status = h.get("/status").json();
    let produced = p.sent;
    let applied = produced + 2; // and the two creates through the control plane
    assert_eq!(status["events_applied"], applied);
    assert_eq!(status["connections_open"], 1);
    let per_shard: u64 =
        status["journal"].as_array().unwrap().iter().map(|j| j["events_applied"].as_u64().unwrap()).sum();
    assert_eq!(per_shard, applied);

    let m = h.scrape();
    assert_eq!(m.sum("trove_events_applied_total"), applied as f64);
    assert_eq!(m.sum("trove_events_applied_total"), h.engine.metrics().events_applied() as f64);
    assert_eq!(m.value("trove_events_received_total", &[]), produced as f64);
    assert_eq!(m.value("trove_events_acknowledged_total", &[]), produced as f64);
    assert_eq!(m.value("trove_events_rejected_total", &[("reason", "hunt_exists")]), exists_before + 1.0);
    assert_eq!(m.value("trove_events_rejected_total", &[("reason", "step_too_large")]), 1.0);
    assert_eq!(m.value("trove_events_retried_total", &[]), 0.0);
    assert_eq!(m.value("trove_busy_replies_total", &[]), 0.0);
    let applied_count = m.value("trove_ingest_to_applied_seconds_count", &[]);
    assert!(applied_count > 0.0);
    assert_eq!(applied_count, applied as f64, "one observation per applied event");
    assert!(m.value("trove_ingest_to_applied_seconds_sum", &[]) > 0.0);
    assert_eq!(m.value("trove_ingest_to_acknowledged_seconds_count", &[]), produced as f64);
    assert_eq!(m.value("trove_ingest_to_durable_seconds_count", &[]), 0.0, "in memory: nothing is made durable");
    assert_eq!(m.sum("trove_shard_batch_events_sum"), applied as f64);
    assert!(m.sum("trove_shard_batch_events_count") >= 1.0);
    assert_eq!(m.value("trove_connections_open", &[]), 1.0);
    assert_eq!(m.value("trove_connections_accepted_total", &[]), 1.0);
    let frames = m.value("trove_frames_received_total", &[]);
    assert!(frames >= 3.0, "HELLO and EVENTS frames: {frames}");
    assert!(m.value("trove_received_bytes_total", &[]) > 0.0);
    assert_eq!(m.family("trove_events_applied_total").samples.len(), 2, "one series per shard");
    assert_eq!(m.family("trove_shard_queue_depth_events").kind, "gauge");
    assert_eq!(m.family("trove_ingest_to_applied_seconds").kind, "histogram");
    assert_eq!(m.family("trove_shard_batch_events").kind, "histogram");
    for rt in ["data", "control"] {
        assert_eq!(m.value("tokio_workers", &[("runtime", rt)]), 1.0, "{rt} runtime workers");
    }
    assert!(m.sum("tokio_worker_busy_seconds_total") > 0.0);
    if cfg!(target_os = "linux") {
        assert!(m.value("process_resident_memory_bytes", &[]) > 0.0);
        // The server runs in this process: its CPU time is at least what
        // this process had used before the scrape, which is positive.
        let before = own_cpu_seconds();
        assert!(before > 0.0, "this test process has used CPU time");
        let cpu = h.scrape().value("process_cpu_seconds_total", &[]);
        assert!(cpu >= before, "process_cpu_seconds_total {cpu} is below the process's own {before}");
    }
    let busy = m.sum("trove_shard_busy_seconds_total");
    assert!(busy > 0.0, "the shards applied batches: {busy}");
    the_stages_cover_every_acknowledged_event(&h, produced, false);
    for (_, ratio) in m.samples("trove_shard_busy_ratio") {
        assert!((0.0..=1.0).contains(&ratio), "{ratio}");
    }
    drop(p);
    h.stop();
}

// ---------------------------------------------------------------------------
// A journaled engine: durability metrics, status, and reads after restart.

#[test]
fn a_journaled_engine_reports_its_journal_and_serves_its_hunts_after_a_restart() {
    let dir = TempDir::new("journal");
    let journal = || JournalConfig::new(&dir.0, FsyncPolicy::Always);

    let h = Harness::start(Some(journal()));
    for id in [1, 2, 3, 4] {
        let r = h.create(id, config());
        assert_eq!(r.status, 201, "{}", r.body);
    }
    let mut p = Producer::connect(h.tcp);
    for hunt in [1, 2, 3, 4] {
        let events: Vec<HuntEvent> = (0..25).map(|i| HuntEvent::join(hunt, i)).collect();
        assert!(p.send(&events).iter().all(|o| matches!(o, HuntOutcome::Joined { .. })));
    }
    let s = h.get("/status").json();
    assert_eq!(s["fsync"], "always");
    assert_eq!(s["journal_dir"], dir.0.display().to_string());
    let applied = p.sent + 4;
    assert_eq!(s["events_applied"], applied);
    let journal_stats = s["journal"].as_array().unwrap();
    let bytes: u64 = journal_stats.iter().map(|j| j["bytes_written"].as_u64().unwrap()).sum();
    let fsyncs: u64 = journal_stats.iter().map(|j| j["fsyncs"].as_u64().unwrap()).sum();
    assert!(bytes > 0 && fsyncs > 0, "{s}");

    let m = h.scrape();
    assert_eq!(m.sum("trove_journal_written_bytes_total"), bytes as f64);
    assert!(m.sum("trove_journal_fsync_seconds_count") > 0.0);
    assert!(m.sum("trove_journal_fsync_seconds_sum") > 0.0);
    assert_eq!(m.value("trove_ingest_to_durable_seconds_count", &[]), applied as f64);
    assert_eq!(m.sum("trove_events_applied_total"), applied as f64);
    the_stages_cover_every_acknowledged_event(&h, p.sent, true);
    let listed = h.get("/hunts").json();
    drop(p);
    let fin = h.stop();
    assert_eq!(fin.events_applied, applied);

    // Restarted on the same journal: the same hunts, the same answers.
    let h = Harness::start(Some(journal()));
    assert_eq!(h.get("/hunts").json(), listed);
    assert_eq!(h.get("/hunts/3").json()["players"], 25);
    h.create(2, config()).error(409, "hunt_exists");
    let m = h.scrape();
    assert_eq!(m.value("trove_events_rejected_total", &[("reason", "hunt_exists")]), 1.0);
    h.stop();
}

/// Every event the producer sent and had acknowledged passed each stage
/// once in `trove_stage_seconds` (written and synced only `journaled`),
/// the stages are cumulative (each one's sum at least the one before),
/// and the fine buckets hold the same events.
fn the_stages_cover_every_acknowledged_event(h: &Harness, sent: u64, journaled: bool) {
    let acknowledged = [("stage", "acknowledged")];
    // The ACK's stage is recorded once its write returned, which the
    // client may see first: wait for it, generously.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut m = h.scrape();
    while m.value("trove_stage_seconds_count", &acknowledged) < sent as f64 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
        m = h.scrape();
    }
    let mut sum_before = 0.0;
    for stage in ["decoded", "admitted", "applied", "written", "synced", "acknowledged"] {
        let counted = journaled || !["written", "synced"].contains(&stage);
        let count = m.value("trove_stage_seconds_count", &[("stage", stage)]);
        assert_eq!(count, if counted { sent as f64 } else { 0.0 }, "stage {stage}");
        let fine: f64 = m
            .samples("trove_latency_fine_total")
            .filter(|(l, _)| {
                l.get("histogram").map(String::as_str) == Some("trove_stage_seconds")
                    && l.get("stage").map(String::as_str) == Some(stage)
            })
            .map(|(_, v)| v)
            .sum();
        assert_eq!(fine, count, "stage {stage}: the fine buckets hold its events");
        if counted {
            let sum = m.value("trove_stage_seconds_sum", &[("stage", stage)]);
            assert!(sum >= sum_before, "stage {stage}: {sum} s before the stage before it ({sum_before} s)");
            sum_before = sum;
        }
    }
    assert!(sum_before > 0.0, "reading to acknowledging took some time");
}

// ---------------------------------------------------------------------------
// The Grafana dashboard queries only metrics the server exports.

fn dashboard_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/grafana/trove.json")
}

/// Every `trove_*`, `tokio_*` and `process_*` identifier in a PromQL
/// expression.
fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut word = String::new();
    let mut in_string = false;
    for c in expr.chars().chain([' ']) {
        if c == '"' {
            in_string = !in_string;
        }
        if !in_string && (c.is_ascii_alphanumeric() || c == '_' || c == ':') {
            word.push(c);
            continue;
        }
        if ["trove_", "tokio_", "process_"].iter().any(|p| word.starts_with(p)) {
            names.push(std::mem::take(&mut word));
        }
        word.clear();
    }
    names
}

fn collect_queries(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                match (k.as_str(), x) {
                    ("expr" | "definition", Value::String(s)) => out.push(s.clone()),
                    ("query", Value::String(s)) if s.contains('(') => out.push(s.clone()),
                    _ => collect_queries(x, out),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|x| collect_queries(x, out)),
        _ => {}
    }
}

#[test]
fn the_grafana_dashboard_queries_only_exported_metrics() {
    let path = dashboard_path();
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let dash: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: not JSON: {e}", path.display()));
    assert!(dash["schemaVersion"].as_u64().is_some_and(|v| v >= 36), "schemaVersion");
    assert!(dash["title"].is_string() && dash["uid"].is_string());
    let vars = dash["templating"]["list"].as_array().expect("templating.list");
    assert!(
        vars.iter().any(|v| v["type"] == "datasource" && v["query"] == "prometheus")
            || dash["__inputs"].as_array().is_some_and(|i| i.iter().any(|x| x["pluginId"] == "prometheus")),
        "a Prometheus data source variable or input"
    );
    // Panel ids are unique, and every panel with queries has some.
    let panels = dash["panels"].as_array().expect("panels");
    let mut ids = BTreeSet::new();
    for p in panels.iter().chain(panels.iter().filter_map(|p| p["panels"].as_array()).flatten()) {
        assert!(ids.insert(p["id"].as_u64().expect("panel id")), "panel id {} twice", p["id"]);
        if p["type"] != "row" {
            let targets = p["targets"].as_array().unwrap_or_else(|| panic!("panel {} has no targets", p["title"]));
            assert!(targets.iter().all(|t| t["expr"].as_str().is_some_and(|e| !e.is_empty())), "{}", p["title"]);
        }
    }

    let h = Harness::start(None);
    // Some activity first, so every family has samples.
    assert_eq!(h.create(1, config()).status, 201);
    let mut p = Producer::connect(h.tcp);
    p.send(&[HuntEvent::join(1, 1)]);
    let scrape = h.scrape();
    drop(p);
    h.stop();

    let mut queries = Vec::new();
    collect_queries(&dash, &mut queries);
    assert!(queries.len() >= 20, "{} queries", queries.len());
    let mut used = BTreeSet::new();
    for q in &queries {
        let names = metric_names(q);
        for name in names {
            let known = scrape.families.contains_key(&name)
                || ["_bucket", "_sum", "_count"].iter().any(|s| {
                    name.strip_suffix(s)
                        .is_some_and(|base| scrape.families.get(base).is_some_and(|f| f.kind == "histogram"))
                });
            assert!(known, "the dashboard queries `{name}`, which /metrics does not export: {q}");
            used.insert(name);
        }
    }
    // The panels the dashboard exists for.
    for name in [
        "trove_events_received_total",
        "trove_events_applied_total",
        "trove_events_acknowledged_total",
        "trove_events_rejected_total",
        "trove_busy_replies_total",
        "trove_ingest_to_applied_seconds_bucket",
        "trove_ingest_to_durable_seconds_bucket",
        "trove_ingest_to_acknowledged_seconds_bucket",
        "trove_ingest_to_update_pushed_seconds_bucket",
        "trove_shard_queue_depth_events",
        "trove_shard_queue_depth_batches",
        "trove_shard_busy_seconds_total",
        "trove_shard_idle_seconds_total",
        "trove_shard_batch_events_bucket",
        "trove_journal_written_bytes_total",
        "trove_journal_fsync_seconds_bucket",
        "trove_connections_open",
        "trove_subscriptions",
        "trove_updates_dropped_total",
        "trove_update_gaps_total",
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "tokio_worker_busy_seconds_total",
        "tokio_worker_parks_total",
        "tokio_worker_polls_total",
        "tokio_worker_steals_total",
        "tokio_global_queue_depth",
        "tokio_spawned_tasks_total",
        "tokio_worker_mean_poll_time_seconds",
        "tokio_schedule_latency_seconds_bucket",
    ] {
        assert!(used.contains(name), "no dashboard query uses `{name}`");
    }
}

#[test]
fn the_metrics_validator_catches_what_it_must() {
    let ok = "# HELP a_total A.\n# TYPE a_total counter\na_total{x=\"1\"} 3\n\
              # HELP h H.\n# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_bucket{le=\"+Inf\"} 2\nh_sum 3\nh_count 2\n";
    Scrape::parse(ok).unwrap();
    for (bad, why) in [
        ("# TYPE a counter\n# HELP a A.\na 1\n", "`_total`"),
        ("# TYPE a_total counter\na_total 1\n", "no HELP"),
        ("# HELP a A.\na 1\n", "no TYPE"),
        ("a 1\n", "no TYPE"),
        ("# HELP 1a A.\n", "bad metric name"),
        ("# HELP g G.\n# TYPE g gauge\ng{1x=\"a\"} 1\n", "bad label name"),
        ("# HELP g G.\n# TYPE g gauge\ng 1\ng 2\n", "twice"),
        ("# HELP g G.\n# TYPE g gauge\ng{a=\"1\"} 1\n# HELP f F.\n# TYPE f gauge\nf 1\ng{a=\"2\"} 1\n", "not together"),
        ("# HELP h H.\n# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_sum 3\nh_count 1\n", "+Inf"),
        (
            "# HELP h H.\n# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"2\"} 1\nh_bucket{le=\"+Inf\"} 2\nh_sum 3\nh_count 2\n",
            "cumulative",
        ),
        ("# HELP h H.\n# TYPE h histogram\nh_bucket{le=\"+Inf\"} 2\nh_sum 3\nh_count 3\n", "_count"),
        ("# HELP h H.\n# TYPE h histogram\nh_bucket{le=\"+Inf\"} 2\nh_count 2\n", "_sum"),
    ] {
        let e = Scrape::parse(bad).expect_err(bad);
        assert!(e.contains(why), "{bad:?}: {e}");
    }
    assert_eq!(
        metric_names("histogram_quantile(0.99, sum by (le) (rate(trove_x_bucket{job=\"trove_y\"}[1m]))) / process_z"),
        ["trove_x_bucket", "process_z"]
    );
}

// ---------------------------------------------------------------------------
// A peer cannot hold the control plane open (docs/control.md, "Limits").

/// Has the server closed `s`? Waits until `deadline` for the end of the
/// stream (or a reset); false if it is still open then.
fn closed_by_server(s: &mut TcpStream, deadline: std::time::Instant) -> bool {
    let mut buf = [0u8; 1024];
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return false;
        }
        s.set_read_timeout(Some(left.min(Duration::from_secs(1)))).unwrap();
        match s.read(&mut buf) {
            Ok(0) => return true,
            // An answer before the close (none is expected for a stalled head).
            Ok(_) => continue,
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => continue,
            Err(_) => return true,
        }
    }
}

#[test]
fn stalled_requests_are_closed_and_the_cap_holds_while_health_answers() {
    let limits =
        ControlConfig { connections_max: 32, header_timeout: Duration::from_secs(2), ..ControlConfig::default() };
    let h = Harness::start_with(None, limits.clone());
    let open = || h.control.as_ref().unwrap().connections_open();

    // 2,000 requests that never finish their headers (a few send nothing at
    // all), with /health asked between them.
    let mut stalled = Vec::new();
    for i in 0..2000 {
        let mut s = TcpStream::connect(h.http).unwrap();
        if i % 10 != 0 {
            s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ").unwrap();
        }
        stalled.push(s);
        if i % 250 == 249 {
            let r = h.get("/health");
            assert_eq!((r.status, r.json()), (200, json!({"status": "ok"})), "after {} stalled", i + 1);
            assert!(open() <= limits.connections_max, "{} open, cap {}", open(), limits.connections_max);
        }
    }
    assert_eq!(h.get("/health").status, 200);
    let scrape = h.scrape();
    assert!(scrape.value("trove_control_connections_open", &[]) <= limits.connections_max as f64);
    assert!(scrape.value("trove_control_connections_closed_total", &[("reason", "evicted")]) > 0.0);

    // Every stalled connection is closed by the server: the old ones to make
    // room, the last ones by the header deadline.
    let deadline = std::time::Instant::now() + limits.header_timeout + Duration::from_secs(60);
    for (i, s) in stalled.iter_mut().enumerate() {
        assert!(closed_by_server(s, deadline), "stalled connection {i} is still open");
    }
    drop(stalled);

    // Below the cap, a stalled head lasts its deadline, not less.
    let started = std::time::Instant::now();
    let mut slow = TcpStream::connect(h.http).unwrap();
    slow.write_all(b"GET /status HTTP/1.1\r\n").unwrap();
    assert!(closed_by_server(&mut slow, started + limits.header_timeout + Duration::from_secs(60)));
    let lasted = started.elapsed();
    assert!(lasted + Duration::from_millis(50) >= limits.header_timeout, "closed after {lasted:?}");
    let scrape = h.scrape();
    assert!(scrape.value("trove_control_connections_closed_total", &[("reason", "header_timeout")]) >= 1.0);
    assert_eq!(h.get("/health").status, 200);
    h.stop();
}

#[test]
fn bodies_are_bounded_in_size_before_reading_and_in_time() {
    let limits = ControlConfig { body_timeout: Duration::from_secs(2), ..ControlConfig::default() };
    let h = Harness::start_with(None, limits.clone());
    let reply_to = |head: &str, body: &[u8]| {
        let mut s = TcpStream::connect(h.http).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        s.write_all(head.as_bytes()).unwrap();
        s.write_all(body).unwrap();
        // The request is not finished: the answer comes without the rest.
        let mut raw = Vec::new();
        let _ = s.read_to_end(&mut raw);
        parse_reply(&raw).unwrap_or_else(|e| panic!("{e}: {:?}", String::from_utf8_lossy(&raw)))
    };

    // A 10 MiB body announced and not sent: refused on the length alone.
    let m = reply_to("POST /hunts HTTP/1.1\r\nHost: x\r\nContent-Length: 10485760\r\n\r\n", b"")
        .error(413, "payload_too_large");
    assert!(m.contains("64 KiB"), "{m}");
    // One byte past the limit announced, on any route.
    let head = format!("POST /health HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n", BODY_BYTES_MAX + 1);
    reply_to(&head, b"").error(413, "payload_too_large");
    // A chunked body has no length to check: cut off at the limit.
    let mut chunked = Vec::new();
    for _ in 0..(BODY_BYTES_MAX / 4096 + 1) {
        chunked.extend_from_slice(format!("1000\r\n{}\r\n", " ".repeat(4096)).as_bytes());
    }
    reply_to("POST /hunts HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n", &chunked)
        .error(413, "payload_too_large");
    // A body that stops coming: 408 after the body deadline.
    let started = std::time::Instant::now();
    let m = reply_to("POST /hunts HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n", b"{\"id\": 1, ")
        .error(408, "request_timeout");
    assert!(m.contains("2000 ms"), "{m}");
    assert!(started.elapsed() + Duration::from_millis(50) >= limits.body_timeout, "{:?}", started.elapsed());
    // A body exactly at the limit is read (and is not JSON).
    let body = " ".repeat(BODY_BYTES_MAX);
    h.post("/hunts", &body).error(400, "bad_request");

    let scrape = h.scrape();
    let closed = |reason| scrape.value("trove_control_connections_closed_total", &[("reason", reason)]);
    assert_eq!((closed("body_too_large"), closed("body_timeout")), (3.0, 1.0));
    assert_eq!(h.create(1, config()).status, 201, "the plane still creates");
    h.stop();
}

/// This process's user and system CPU time from /proc/self/stat, after
/// burning CPU until it is at least one clock tick (10 ms).
#[cfg(target_os = "linux")]
fn own_cpu_seconds() -> f64 {
    let read = || {
        let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
        let after = stat.rsplit_once(')').unwrap().1;
        let f: Vec<&str> = after.split_whitespace().collect();
        (f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()) as f64 / 100.0
    };
    let mut x = 1u64;
    while read() == 0.0 {
        for i in 0..1_000_000u64 {
            x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(i));
        }
    }
    read()
}

/// `GET /cluster`: 404 `not_a_cluster` until the cluster side gives the
/// plane its view, then that view, asked afresh on every request.
#[test]
fn cluster_map_is_served_from_the_view_given() {
    let h = Harness::start(None);
    h.get("/cluster").error(404, "not_a_cluster");
    let owner = json!({"node": "a", "tcp": "127.0.0.1:7400", "ws": "127.0.0.1:7401", "control": "127.0.0.1:7480"});
    let map = json!({
        "cluster": "trove", "partitions": 2, "node": "a", "nodes": [owner],
        "map": [
            {"partition": 0, "owner": owner, "epoch": 41},
            {"partition": 1, "owner": null, "epoch": null},
        ],
    });
    let view = Arc::new(Mutex::new(Some(map.clone())));
    let shared = view.clone();
    let provider = move || shared.lock().unwrap().clone();
    h.control.as_ref().unwrap().set_cluster_view(Arc::new(provider));
    let r = h.get("/cluster");
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json(), map);
    // The SDK reads it as a cluster producer does: the same owners.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let sdk = rt
        .block_on(trove_client::fetch_cluster_map(&h.http.to_string(), Duration::from_secs(30)))
        .expect("the SDK reads the map");
    assert_eq!((sdk.cluster.as_str(), sdk.partitions, sdk.node.as_str()), ("trove", 2, "a"));
    let first = sdk.owner_of(0).expect("partition 0 is owned");
    assert_eq!((first.node.tcp.as_str(), first.epoch), ("127.0.0.1:7400", 41));
    assert_eq!(sdk.owner_of(1), None);
    // A node that leaves its cluster (the view says `None`) answers 404 again.
    *view.lock().unwrap() = None;
    h.get("/cluster").error(404, "not_a_cluster");
    let gone = rt.block_on(trove_client::fetch_cluster_map(&h.http.to_string(), Duration::from_secs(30)));
    assert!(matches!(gone, Err(trove_client::MapError::NotACluster)), "{gone:?}");
    h.stop();
}

// ---------------------------------------------------------------------------
// Deleting a hunt (issue 25): DELETE /hunts/{id}, its subscribers, its
// producers, a retry, and a restart.

impl Harness {
    fn delete(&self, path: &str) -> Reply {
        request(self.http, "DELETE", path, None)
    }
}

impl Producer {
    fn subscribe(&mut self, hunt: u32) {
        let mut b = Vec::new();
        frame::encode_u32_frame(&mut b, frame::Kind::Subscribe, hunt);
        self.s.write_all(&b).unwrap();
    }

    fn ping(&mut self, nonce: u64) {
        let mut b = Vec::new();
        frame::encode_u64_frame(&mut b, frame::Kind::Ping, nonce);
        self.s.write_all(&b).unwrap();
    }

    /// The frames up to and including the first one `stop` accepts.
    fn frames_until(&mut self, stop: impl Fn(&Frame<'_>) -> bool) -> Vec<String> {
        let mut seen = Vec::new();
        loop {
            let (header, body) = self.frame();
            let f = frame::decode(header, &body, SIZES).unwrap();
            let text = match &f {
                Frame::Update { hunt, entries, .. } => {
                    let entries = trove_proto::wire::decode_entries::<TreasureHunt>(entries).unwrap();
                    format!("update {hunt}: {entries:?}")
                }
                other => format!("{other:?}"),
            };
            seen.push(text);
            if stop(&f) {
                return seen;
            }
        }
    }
}

#[test]
fn deleting_a_hunt_ends_it_for_players_and_subscribers_and_survives_a_restart() {
    let dir = TempDir::new("delete");
    let journal = || JournalConfig::new(&dir.0, FsyncPolicy::Always);
    let h = Harness::start(Some(journal()));
    assert_eq!(h.create(1, config()).status, 201);
    assert_eq!(h.create(2, config()).status, 201);
    let mut p = Producer::connect(h.tcp);
    let joins: Vec<HuntEvent> = (0..5).map(|i| HuntEvent::join(1, i)).collect();
    assert!(p.send(&joins).iter().all(|o| matches!(o, HuntOutcome::Joined { .. })));
    let mut sub = Producer::connect(h.tcp);
    sub.subscribe(1);
    sub.frames_until(|f| matches!(f, Frame::Subscribed { hunt: 1, .. }));
    assert!(matches!(p.send(&[HuntEvent::join(1, 9)])[0], HuntOutcome::Joined { .. }));

    // DELETE: 200 with the round it was in; the hunt is gone from reads.
    let r = h.delete("/hunts/1");
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json(), json!({"id": 1, "round": 1}));
    h.get("/hunts/1").error(404, "unknown_hunt");
    h.delete("/hunts/1").error(404, "unknown_hunt");
    h.delete("/hunts/x").error(400, "bad_request");
    assert_eq!(h.get("/hunts").json()["hunts"].as_array().unwrap().len(), 1);

    // The subscriber: the join, then the delete and its hunt_deleted
    // broadcast, then an unasked UNSUBSCRIBED; nothing of hunt 1 after.
    let seen = sub.frames_until(|f| matches!(f, Frame::Unsubscribed { .. }));
    let all = seen.join("\n");
    assert!(all.contains("Delete") && all.contains("HuntDeleted { round: 1"), "{all}");
    assert_eq!(seen.last().unwrap(), &format!("{:?}", Frame::Unsubscribed { hunt: 1 }), "{all}");

    // Producers' later events: as for a hunt that never was.
    let o = p.send(&[HuntEvent::join(1, 1), HuntEvent::dig(1, 0), HuntEvent::delete(1)]);
    let unknown = HuntOutcome::Rejected { reason: trove_hunt::Reject::UnknownHunt };
    assert_eq!(o, vec![unknown; 3]);

    // Created again: fresh (no players), and the old subscription does
    // not follow it: the subscriber's next frame is its PONG.
    assert_eq!(h.create(1, config()).status, 201);
    assert_eq!(h.get("/hunts/1").json()["players"], 0);
    assert!(matches!(p.send(&[HuntEvent::join(1, 3)])[0], HuntOutcome::Joined { .. }));
    assert_eq!(h.get("/hunts/1").json()["players"], 1);
    sub.ping(77);
    let seen = sub.frames_until(|_| true);
    assert_eq!(seen, vec![format!("{:?}", Frame::Pong { nonce: 77 })]);

    // A retry of a delete is answered with its first answer, not applied
    // again: hunt 2 deleted, created again, then the delete resent under
    // its sequence number.
    assert_eq!(p.send(&[HuntEvent::delete(2)]), vec![HuntOutcome::Deleted { round: 1 }]);
    assert_eq!(h.create(2, config()).status, 201);
    p.next_seq -= 1;
    assert_eq!(p.send(&[HuntEvent::delete(2)]), vec![HuntOutcome::Deleted { round: 1 }]);
    assert_eq!(h.get("/hunts/2").status, 200, "the retry did not delete the new hunt 2");
    // Hunt 3: created and deleted, so that the restart must keep it deleted.
    assert_eq!(h.create(3, config()).status, 201);
    assert_eq!(h.delete("/hunts/3").status, 200);

    let listed = h.get("/hunts").json();
    let hashes: Vec<Value> =
        [1, 2].iter().map(|id| h.get(&format!("/hunts/{id}")).json()["state_hash"].clone()).collect();
    drop((p, sub));
    h.stop();

    // Restarted on the journal: the same hunts, deletes included.
    let h = Harness::start(Some(journal()));
    assert_eq!(h.get("/hunts").json(), listed);
    h.get("/hunts/3").error(404, "unknown_hunt");
    let again: Vec<Value> =
        [1, 2].iter().map(|id| h.get(&format!("/hunts/{id}")).json()["state_hash"].clone()).collect();
    assert_eq!(again, hashes);
    h.stop();
}

/// A delete and a create of the same id in one batch: the subscriber's
/// stream stops at the delete (the chunk is cut there); the new hunt's
/// entries are not its.
#[test]
fn a_subscription_ends_at_the_delete_even_with_a_create_behind_it_in_the_batch() {
    let h = Harness::start(None);
    assert_eq!(h.create(1, config()).status, 201);
    let mut sub = Producer::connect(h.tcp);
    sub.subscribe(1);
    sub.frames_until(|f| matches!(f, Frame::Subscribed { hunt: 1, .. }));
    let mut p = Producer::connect(h.tcp);
    let create =
        trove_server::json::parse_create_body(json!({"id": 1, "config": config()}).to_string().as_bytes()).unwrap();
    let o = p.send(&[HuntEvent::join(1, 1), HuntEvent::delete(1), create, HuntEvent::join(1, 2)]);
    assert!(matches!(o[1], HuntOutcome::Deleted { round: 1 }) && matches!(o[2], HuntOutcome::Created { .. }), "{o:?}");
    let seen = sub.frames_until(|f| matches!(f, Frame::Unsubscribed { .. }));
    let all = seen.join("\n");
    assert!(all.contains("HuntDeleted"), "{all}");
    assert!(!all.contains("Create") && !all.contains("player: 2"), "entries after the delete: {all}");
    sub.ping(1);
    assert_eq!(sub.frames_until(|_| true), vec![format!("{:?}", Frame::Pong { nonce: 1 })]);
    assert_eq!(h.get("/hunts/1").json()["players"], 1);
    drop((p, sub));
    h.stop();
}
