//! The cluster map (`GET /cluster`, docs/control.md): which node owns
//! which partition, fetched over a bounded HTTP/1.1 GET.
//!
//! Everything here comes from the network and is taken as hostile: the
//! reply is read under a deadline and a size cap ([`CLUSTER_REPLY_BYTES_MAX`])
//! checked before the bytes are buffered, the HTTP framing (a length or
//! chunks) is parsed in one pass that never rescans what it consumed, the
//! JSON by serde (its nesting limit holds), and the map is checked
//! (every partition once, bounded counts) before anyone routes by it. A bad
//! answer is a [`MapError`], never a panic.

use std::fmt;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use trove_core::{WorldId, shard_of};

/// Largest `GET /cluster` reply accepted, head and body, as received: a
/// longer announced length is refused before the body is read, and a
/// longer stream is cut off there. 4,096 partitions with their owners are
/// about 800 KiB of JSON; 8 are 2 KiB.
pub const CLUSTER_REPLY_BYTES_MAX: usize = 1 << 20;
/// Most partitions a map may name (a node runs one shard per partition).
pub const CLUSTER_PARTITIONS_MAX: u32 = 4096;
/// Most nodes a map may list.
pub const CLUSTER_NODES_MAX: usize = 1024;
/// Longest node name, address or cluster name in a map, in bytes.
pub const CLUSTER_NAME_BYTES_MAX: usize = 256;
/// Longest chunk-size or trailer line of a chunked reply.
const HTTP_LINE_BYTES_MAX: usize = 8 << 10;
/// Bytes asked of the socket per read.
const READ_CHUNK: usize = 16 << 10;

/// Why a `GET /cluster` did not give a usable map.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum MapError {
    /// Connecting, writing or reading failed.
    Io { during: &'static str, source: Arc<io::Error> },
    /// No whole reply within the timeout.
    Timeout,
    /// The reply is above [`CLUSTER_REPLY_BYTES_MAX`].
    TooLarge { limit: usize },
    /// Not an HTTP/1.x reply, or one cut short.
    Http(String),
    /// The node is not in a cluster (404 `not_a_cluster`).
    NotACluster,
    /// Another status; `error` is the control plane's error code, if the
    /// body had one.
    Status { status: u16, error: Option<String> },
    /// The body is not the map's JSON.
    Json(String),
    /// The JSON breaks a rule of the map (a partition missing or twice, an
    /// owner without an epoch, a count above its limit).
    Invalid(String),
    /// The TLS handshake with the control plane failed (its certificate
    /// is not trusted, or not for the name checked).
    Tls(String),
}

impl fmt::Display for MapError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MapError::Io { during, source } => write!(f, "{during}: {source}"),
            MapError::Timeout => write!(f, "no whole reply in time"),
            MapError::TooLarge { limit } => write!(f, "the reply is above {limit} bytes"),
            MapError::Http(m) => write!(f, "not an HTTP/1.1 reply: {m}"),
            MapError::NotACluster => write!(f, "the node is not in a cluster"),
            MapError::Status { status, error } => {
                write!(f, "HTTP status {status}")?;
                match error {
                    Some(e) => write!(f, " ({e})"),
                    None => Ok(()),
                }
            }
            MapError::Json(m) => write!(f, "the map is not valid JSON of its shape: {m}"),
            MapError::Invalid(m) => write!(f, "invalid map: {m}"),
            MapError::Tls(m) => write!(f, "TLS handshake: {m}"),
        }
    }
}

impl std::error::Error for MapError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            MapError::Io { source, .. } => Some(source.as_ref()),
            _ => None,
        }
    }
}

/// A node and its listen addresses (`host:port`).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct ClusterNode {
    /// Its name (`--node`).
    pub node: String,
    /// The protocol v1 TCP endpoint producers connect to.
    pub tcp: String,
    #[serde(default)]
    pub ws: Option<String>,
    /// Its control plane: another place to fetch the map from.
    #[serde(default)]
    pub control: Option<String>,
}

/// A partition's owner and its lease's epoch (a later owner always has a
/// higher one).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartitionOwner {
    pub node: ClusterNode,
    pub epoch: u64,
}

/// The partition map, checked: `owners[p]` is partition `p`'s owner.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterMap {
    /// The cluster's name.
    pub cluster: String,
    /// Its fixed partition count (`owners.len()`).
    pub partitions: u32,
    /// The node that answered.
    pub node: String,
    /// The nodes alive.
    pub nodes: Vec<ClusterNode>,
    /// By partition; `None` while no node holds it (a failover under way).
    pub owners: Vec<Option<PartitionOwner>>,
}

/// The JSON as sent; checked into a [`ClusterMap`].
#[derive(Deserialize)]
struct RawMap {
    cluster: String,
    partitions: u32,
    node: String,
    nodes: Vec<ClusterNode>,
    map: Vec<RawEntry>,
}

#[derive(Deserialize)]
struct RawEntry {
    partition: u32,
    owner: Option<ClusterNode>,
    epoch: Option<u64>,
}

impl ClusterMap {
    /// Parses and checks a `GET /cluster` body.
    pub fn parse(body: &[u8]) -> Result<ClusterMap, MapError> {
        let raw: RawMap = serde_json::from_slice(body).map_err(|e| MapError::Json(e.to_string()))?;
        let invalid = |m: String| Err(MapError::Invalid(m));
        if raw.partitions == 0 || raw.partitions > CLUSTER_PARTITIONS_MAX {
            return invalid(format!("{} partitions, expected 1..={CLUSTER_PARTITIONS_MAX}", raw.partitions));
        }
        if raw.nodes.len() > CLUSTER_NODES_MAX {
            return invalid(format!("{} nodes, at most {CLUSTER_NODES_MAX}", raw.nodes.len()));
        }
        if raw.map.len() != raw.partitions as usize {
            return invalid(format!("{} map entries for {} partitions", raw.map.len(), raw.partitions));
        }
        check_name("cluster", &raw.cluster)?;
        check_name("node", &raw.node)?;
        for n in &raw.nodes {
            check_node(n)?;
        }
        let mut owners: Vec<Option<Option<PartitionOwner>>> = vec![None; raw.partitions as usize];
        for e in raw.map {
            let Some(slot) = owners.get_mut(e.partition as usize) else {
                return invalid(format!("partition {} of {}", e.partition, raw.partitions));
            };
            if slot.is_some() {
                return invalid(format!("partition {} is listed twice", e.partition));
            }
            *slot = Some(match (e.owner, e.epoch) {
                (Some(node), Some(epoch)) => {
                    check_node(&node)?;
                    Some(PartitionOwner { node, epoch })
                }
                (None, None) => None,
                _ => return invalid(format!("partition {}: an owner and an epoch go together", e.partition)),
            });
        }
        // As many entries as partitions, each in range and none twice: every
        // partition is listed.
        let owners = owners.into_iter().map(|o| o.expect("every partition listed once")).collect();
        Ok(ClusterMap { cluster: raw.cluster, partitions: raw.partitions, node: raw.node, nodes: raw.nodes, owners })
    }

    /// The partition `world` belongs to: the engine's own placement
    /// (`trove_core::shard_of`).
    pub fn partition_of(&self, world: WorldId) -> u32 {
        shard_of(world, self.partitions as usize) as u32
    }

    /// Partition `partition`'s owner, if a node holds it now.
    pub fn owner_of(&self, partition: u32) -> Option<&PartitionOwner> {
        self.owners.get(partition as usize)?.as_ref()
    }
}

fn check_name(what: &str, s: &str) -> Result<(), MapError> {
    if s.is_empty() || s.len() > CLUSTER_NAME_BYTES_MAX {
        return Err(MapError::Invalid(format!("{what} `{}` must be 1..={CLUSTER_NAME_BYTES_MAX} bytes", cut(s))));
    }
    Ok(())
}

fn check_node(n: &ClusterNode) -> Result<(), MapError> {
    check_name("node", &n.node)?;
    for (what, a) in [("tcp", Some(&n.tcp)), ("ws", n.ws.as_ref()), ("control", n.control.as_ref())] {
        let Some(a) = a else { continue };
        check_name(what, a)?;
        // An address goes into a connect and, for `control`, into the
        // Host header of the next map request: no spaces or control bytes.
        if !a.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(MapError::Invalid(format!(
                "{what} address `{}` holds a space or control byte",
                cut(a).escape_debug()
            )));
        }
    }
    Ok(())
}

/// The start of a string from a peer, for a message.
fn cut(s: &str) -> &str {
    let mut end = s.len().min(64);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Fetches and checks the map from the control plane at `addr`
/// (`host:port`): one `GET /cluster` on a new connection
/// (`Connection: close`), the whole of it within `timeout`.
pub async fn fetch_cluster_map(addr: &str, timeout: Duration) -> Result<ClusterMap, MapError> {
    fetch_cluster_map_using(addr, None, None, timeout).await
}

/// [`fetch_cluster_map`] presenting `token` (`Authorization: Bearer`), as
/// a server started with `--auth` requires.
pub async fn fetch_cluster_map_as(
    addr: &str,
    timeout: Duration,
    token: Option<&crate::Token>,
) -> Result<ClusterMap, MapError> {
    fetch_cluster_map_using(addr, None, token, timeout).await
}

/// [`fetch_cluster_map`] from a control plane that speaks HTTPS when
/// `tls` is set.
pub async fn fetch_cluster_map_tls(
    addr: &str,
    tls: Option<&crate::ClientTls>,
    timeout: Duration,
) -> Result<ClusterMap, MapError> {
    fetch_cluster_map_using(addr, tls, None, timeout).await
}

/// [`fetch_cluster_map`] over HTTPS when `tls` is set, presenting `token`
/// when given.
pub async fn fetch_cluster_map_using(
    addr: &str,
    tls: Option<&crate::ClientTls>,
    token: Option<&crate::Token>,
    timeout: Duration,
) -> Result<ClusterMap, MapError> {
    let reply = match tokio::time::timeout(timeout, get(addr, tls, "/cluster", CLUSTER_REPLY_BYTES_MAX, token)).await {
        Ok(r) => r?,
        Err(_) => return Err(MapError::Timeout),
    };
    match reply.status {
        200 => ClusterMap::parse(&reply.body),
        status => {
            let error = serde_json::from_slice::<serde_json::Value>(&reply.body)
                .ok()
                .and_then(|v| v.get("error")?.as_str().map(|e| cut(e).to_string()));
            if status == 404 && error.as_deref() == Some("not_a_cluster") {
                return Err(MapError::NotACluster);
            }
            Err(MapError::Status { status, error })
        }
    }
}

/// A whole HTTP reply.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct HttpReply {
    pub status: u16,
    pub body: Vec<u8>,
}

async fn get(
    addr: &str,
    tls: Option<&crate::ClientTls>,
    path: &str,
    limit: usize,
    token: Option<&crate::Token>,
) -> Result<HttpReply, MapError> {
    let io = |during| move |e| MapError::Io { during, source: Arc::new(e) };
    let mut stream = crate::tls::Stream::connect(addr, tls).await.map_err(|e| match e {
        crate::ClientError::Io { during, source } => MapError::Io { during, source },
        crate::ClientError::Tls(m) => MapError::Tls(m),
        other => MapError::Http(other.to_string()),
    })?;
    let bearer = token.map(|t| format!("Authorization: Bearer {}\r\n", t.to_hex())).unwrap_or_default();
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: application/json\r\n{bearer}Connection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.map_err(io("sending the request"))?;
    let mut parser = ReplyParser::new(limit);
    let mut buf = Vec::with_capacity(READ_CHUNK);
    let mut chunk = vec![0u8; READ_CHUNK];
    loop {
        // At most one byte past the limit is ever buffered.
        let want = chunk.len().min(limit + 1 - buf.len());
        let n = stream.read(&mut chunk[..want]).await.map_err(io("reading the reply"))?;
        buf.extend_from_slice(&chunk[..n]);
        if let Some(reply) = parser.advance(&buf, n == 0)? {
            return Ok(reply);
        }
    }
}

/// Where the parser is in a reply.
#[derive(Clone, Copy, Debug)]
enum Phase {
    /// Looking for the end of the head.
    Head,
    /// A body of this many bytes.
    Length(usize),
    /// A body until the connection closes.
    UntilEof,
    /// A chunk-size line.
    ChunkSize,
    /// This many bytes of chunk data still to come.
    ChunkData(usize),
    /// The CRLF after a chunk's data.
    ChunkEnd,
    /// Trailer lines, up to the empty one.
    Trailer,
}

/// An HTTP/1.x reply parsed in one pass as its bytes arrive: each call
/// looks only at bytes it has not consumed (the head's end is searched
/// from where the last search stopped), so a peer that sends a byte at a
/// time costs linear work.
#[derive(Debug)]
pub(crate) struct ReplyParser {
    limit: usize,
    phase: Phase,
    /// Bytes of the buffer consumed.
    pos: usize,
    /// Where the search for the head's end resumes.
    scan: usize,
    status: u16,
    body: Vec<u8>,
}

impl ReplyParser {
    pub fn new(limit: usize) -> Self {
        Self { limit, phase: Phase::Head, pos: 0, scan: 0, status: 0, body: Vec::new() }
    }

    /// Takes `buf` (everything received so far, the bytes of earlier
    /// calls included); `eof`: the peer closed. `Ok(None)`: more is needed.
    pub fn advance(&mut self, buf: &[u8], eof: bool) -> Result<Option<HttpReply>, MapError> {
        if buf.len() > self.limit {
            return Err(MapError::TooLarge { limit: self.limit });
        }
        let short = |what: &str| {
            if eof { Err(MapError::Http(format!("the connection closed in the {what}"))) } else { Ok(None) }
        };
        loop {
            match self.phase {
                Phase::Head => {
                    let Some(end) = find(&buf[self.scan..], b"\r\n\r\n").map(|i| self.scan + i) else {
                        self.scan = buf.len().saturating_sub(3).max(self.pos);
                        return short("head");
                    };
                    let head = &buf[self.pos..end];
                    self.pos = end + 4;
                    self.scan = self.pos;
                    self.phase = self.head(head)?;
                }
                Phase::Length(n) => {
                    if buf.len() - self.pos < n {
                        return short("body");
                    }
                    self.body.extend_from_slice(&buf[self.pos..self.pos + n]);
                    return Ok(Some(self.done()));
                }
                Phase::UntilEof => {
                    if !eof {
                        return Ok(None);
                    }
                    self.body.extend_from_slice(&buf[self.pos..]);
                    return Ok(Some(self.done()));
                }
                Phase::ChunkSize => {
                    let Some(line) = self.line(buf)? else { return short("chunk size") };
                    let hex = line.split(|&b| b == b';').next().unwrap_or_default();
                    let hex = std::str::from_utf8(hex).map(str::trim).unwrap_or("?");
                    let size = usize::from_str_radix(hex, 16)
                        .ok()
                        .filter(|_| !hex.is_empty() && !hex.starts_with('+'))
                        .ok_or_else(|| MapError::Http(format!("chunk size `{}`", cut(hex))))?;
                    if size > self.limit - self.body.len() {
                        return Err(MapError::TooLarge { limit: self.limit });
                    }
                    self.phase = if size == 0 { Phase::Trailer } else { Phase::ChunkData(size) };
                }
                Phase::ChunkData(n) => {
                    let take = n.min(buf.len() - self.pos);
                    self.body.extend_from_slice(&buf[self.pos..self.pos + take]);
                    self.pos += take;
                    if take < n {
                        self.phase = Phase::ChunkData(n - take);
                        return short("chunk data");
                    }
                    self.phase = Phase::ChunkEnd;
                }
                Phase::ChunkEnd => {
                    if buf.len() - self.pos < 2 {
                        return short("chunk data");
                    }
                    if &buf[self.pos..self.pos + 2] != b"\r\n" {
                        return Err(MapError::Http("chunk data longer than its size".into()));
                    }
                    self.pos += 2;
                    self.phase = Phase::ChunkSize;
                }
                Phase::Trailer => {
                    let Some(line) = self.line(buf)? else { return short("trailer") };
                    if line.is_empty() {
                        return Ok(Some(self.done()));
                    }
                }
            }
        }
    }

    fn done(&mut self) -> HttpReply {
        HttpReply { status: self.status, body: std::mem::take(&mut self.body) }
    }

    /// The next CRLF-ended line at `pos` (consumed), if whole. A line
    /// longer than `HTTP_LINE_BYTES_MAX` is refused, so looking for its end
    /// again after each read stays cheap.
    fn line<'b>(&mut self, buf: &'b [u8]) -> Result<Option<&'b [u8]>, MapError> {
        let rest = &buf[self.pos..];
        match find(&rest[..rest.len().min(HTTP_LINE_BYTES_MAX + 2)], b"\r\n") {
            Some(i) => {
                self.pos += i + 2;
                Ok(Some(&rest[..i]))
            }
            None if rest.len() > HTTP_LINE_BYTES_MAX => {
                Err(MapError::Http(format!("a chunk line above {HTTP_LINE_BYTES_MAX} bytes")))
            }
            None => Ok(None),
        }
    }

    /// Reads a head: the status, and how the body is framed.
    fn head(&mut self, head: &[u8]) -> Result<Phase, MapError> {
        let bad = |m: String| MapError::Http(m);
        let head = std::str::from_utf8(head).map_err(|_| bad("the head is not UTF-8".into()))?;
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or_default();
        let mut parts = status_line.splitn(3, ' ');
        let (version, code) = (parts.next().unwrap_or_default(), parts.next().unwrap_or_default());
        if !matches!(version, "HTTP/1.1" | "HTTP/1.0") {
            return Err(bad(format!("status line `{}`", cut(status_line))));
        }
        let status = code
            .parse::<u16>()
            .ok()
            .filter(|s| (100..=599).contains(s) && code.len() == 3)
            .ok_or_else(|| bad(format!("status `{}`", cut(code))))?;
        let (mut length, mut chunked) = (None::<usize>, false);
        for line in lines {
            let (name, value) = line.split_once(':').ok_or_else(|| bad(format!("header line `{}`", cut(line))))?;
            let value = value.trim();
            if name.eq_ignore_ascii_case("content-length") {
                let n = value
                    .parse::<u64>()
                    .ok()
                    .filter(|_| value.bytes().all(|b| b.is_ascii_digit()))
                    .ok_or_else(|| bad(format!("Content-Length `{}`", cut(value))))?;
                if n > self.limit as u64 {
                    return Err(MapError::TooLarge { limit: self.limit });
                }
                if length.is_some_and(|l| l as u64 != n) {
                    return Err(bad("two different Content-Length headers".into()));
                }
                length = Some(n as usize);
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                let last = value.rsplit(',').next().unwrap_or_default().trim();
                if !last.eq_ignore_ascii_case("chunked") {
                    return Err(bad(format!("Transfer-Encoding `{}`", cut(value))));
                }
                chunked = true;
            }
        }
        self.status = status;
        Ok(match (status, length, chunked) {
            // An interim reply (100 Continue): the real one follows.
            (100..=199, _, _) => Phase::Head,
            (204 | 304, _, _) => Phase::Length(0),
            (_, Some(_), true) => return Err(bad("both Content-Length and chunked".into())),
            (_, _, true) => Phase::ChunkSize,
            (_, Some(n), false) => Phase::Length(n),
            (_, None, false) => Phase::UntilEof,
        })
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The producer id a cluster producer presents for `partition`, derived
/// from its base id: stable (a reconnect to a partition's new owner
/// presents the same id, so its resends are recognised there), distinct
/// per partition, and spread like a random id, so that it does not
/// collide with other producers' ids (nor base 2's with base 1's next
/// partition). `mix63` is a bijection of 63-bit numbers: the base is mixed,
/// the partition added, and the sum mixed again, so two partitions of one
/// base never share an id. Zero (which asks the server to assign an id) for
/// one base and partition in 2^63; `ClusterProducer::connect` refuses such
/// a base.
pub fn partition_producer_id(base: u64, partition: u32) -> u64 {
    mix63(mix63(base & ID_MASK).wrapping_add(u64::from(partition) + 1) & ID_MASK)
}

const ID_MASK: u64 = (1 << 63) - 1;

/// A bijection of `0..2^63`: each step (a xor with a right shift of
/// itself, a product with an odd number modulo 2^63) is one.
fn mix63(mut z: u64) -> u64 {
    z = ((z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9)) & ID_MASK;
    z = ((z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB)) & ID_MASK;
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn owner(node: &str) -> serde_json::Value {
        json!({"node": node, "tcp": format!("{node}:7400"), "ws": format!("{node}:7401"), "control": format!("{node}:7480")})
    }

    /// The design's example: partition 0 owned, 1 not.
    fn example() -> serde_json::Value {
        json!({"cluster": "trove", "partitions": 2, "node": "a", "nodes": [owner("a")],
               "map": [{"partition": 1, "owner": null, "epoch": null},
                       {"partition": 0, "owner": owner("a"), "epoch": 41}]})
    }

    fn parse(v: &serde_json::Value) -> Result<ClusterMap, MapError> {
        ClusterMap::parse(v.to_string().as_bytes())
    }

    #[test]
    fn a_map_is_parsed_and_indexed_by_partition() {
        let m = parse(&example()).unwrap();
        assert_eq!((m.cluster.as_str(), m.partitions, m.node.as_str(), m.nodes.len()), ("trove", 2, "a", 1));
        let o = m.owner_of(0).unwrap();
        assert_eq!((o.node.node.as_str(), o.node.tcp.as_str(), o.epoch), ("a", "a:7400", 41));
        assert_eq!(o.node.control.as_deref(), Some("a:7480"));
        assert_eq!(m.owner_of(1), None);
        assert_eq!(m.owner_of(2), None, "out of range");
        // Routing is the engine's placement over the cluster's partitions.
        for w in 0..100 {
            assert_eq!(m.partition_of(w), shard_of(w, 2) as u32);
        }
        // Unknown fields are for newer servers; ws and control may be absent.
        let mut v = example();
        v["leases_ttl_ms"] = json!(3000);
        v["map"][1]["owner"] = json!({"node": "b", "tcp": "b:7400"});
        let m = parse(&v).unwrap();
        assert_eq!(m.owner_of(0).unwrap().node.ws, None);
    }

    #[test]
    fn hostile_maps_are_typed_errors() {
        let with = |f: &dyn Fn(&mut serde_json::Value)| {
            let mut v = example();
            f(&mut v);
            parse(&v)
        };
        let invalid: [&dyn Fn(&mut serde_json::Value); 11] = [
            &|v| v["nodes"][0]["control"] = json!("a:1\r\nX-Evil: 1"),
            &|v| v["map"][1]["owner"]["tcp"] = json!("a :1"),
            &|v| v["partitions"] = json!(0),
            &|v| v["partitions"] = json!(3),
            &|v| v["map"][1]["partition"] = json!(1),
            &|v| v["map"][1]["partition"] = json!(2),
            &|v| v["map"][1]["epoch"] = json!(null),
            &|v| v["map"][0]["epoch"] = json!(5),
            &|v| v["map"][1]["owner"]["tcp"] = json!(""),
            &|v| v["cluster"] = json!("x".repeat(CLUSTER_NAME_BYTES_MAX + 1)),
            &|v| v["nodes"] = json!(vec![owner("n"); CLUSTER_NODES_MAX + 1]),
        ];
        for (i, f) in invalid.iter().enumerate() {
            assert!(matches!(with(f), Err(MapError::Invalid(_))), "case {i}: {:?}", with(f));
        }
        let malformed: [&dyn Fn(&mut serde_json::Value); 5] = [
            &|v| v["partitions"] = json!(-1),
            &|v| v["partitions"] = json!(1u64 << 40),
            &|v| v["map"][1]["epoch"] = json!(-3),
            &|v| v["map"] = json!({"0": null}),
            &|v| *v = json!([1, 2]),
        ];
        for (i, f) in malformed.iter().enumerate() {
            assert!(matches!(with(f), Err(MapError::Json(_))), "case {i}: {:?}", with(f));
        }
        let too_many =
            json!({"cluster": "c", "partitions": CLUSTER_PARTITIONS_MAX + 1, "node": "a", "nodes": [], "map": []});
        assert!(matches!(parse(&too_many), Err(MapError::Invalid(_))));
        // Not JSON, cut short, nested past serde's limit, not UTF-8.
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        for bytes in [&b"{"[..], b"", b"null", deep.as_bytes(), b"{\"cluster\": \"\xff\"}"] {
            assert!(matches!(ClusterMap::parse(bytes), Err(MapError::Json(_))));
        }
    }

    fn parse_reply(bytes: &[u8], limit: usize) -> Result<Option<HttpReply>, MapError> {
        ReplyParser::new(limit).advance(bytes, true)
    }

    fn reply(status: u16, body: &[u8]) -> Option<HttpReply> {
        Some(HttpReply { status, body: body.to_vec() })
    }

    #[test]
    fn replies_parse_in_any_pieces() {
        let framings: [&[u8]; 4] = [
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 5\r\n\r\nhello",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhe\r\n3;ext=1\r\nllo\r\n0\r\nX-T: 1\r\n\r\n",
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.0 200 OK\r\n\r\nhello",
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
        ];
        for bytes in framings {
            // Every split into two reads; the closing read only at the end.
            for cut in 0..=bytes.len() {
                let mut p = ReplyParser::new(1 << 10);
                let first = p.advance(&bytes[..cut], false).unwrap();
                let got = match first {
                    Some(r) => Some(r),
                    None => match p.advance(bytes, false).unwrap() {
                        Some(r) => Some(r),
                        None => p.advance(bytes, true).unwrap(),
                    },
                };
                assert_eq!(got, reply(200, b"hello"), "cut at {cut} of {}", String::from_utf8_lossy(bytes));
            }
        }
        let one_byte_at_a_time = b"HTTP/1.1 404 Not Found\r\ncontent-length: 2\r\n\r\n{}";
        let mut p = ReplyParser::new(1 << 10);
        let n = one_byte_at_a_time.len();
        for end in 1..n {
            assert_eq!(p.advance(&one_byte_at_a_time[..end], false).unwrap(), None);
        }
        assert_eq!(p.advance(one_byte_at_a_time, false).unwrap(), reply(404, b"{}"));
    }

    #[test]
    fn bad_or_huge_replies_are_typed_errors() {
        let http: [&[u8]; 11] = [
            b"SSH-2.0-OpenSSH\r\n\r\n",
            b"HTTP/1.1 2000 OK\r\n\r\n",
            b"HTTP/1.1 abc OK\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nno colon\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhello\r\n0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhel",
        ];
        for bytes in http {
            assert!(
                matches!(parse_reply(bytes, 1 << 10), Err(MapError::Http(_))),
                "{}: {:?}",
                String::from_utf8_lossy(bytes),
                parse_reply(bytes, 1 << 10)
            );
        }
        // Cut short: an error once the peer has closed, never a panic.
        let whole = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n";
        for end in 0..whole.len() {
            assert!(matches!(parse_reply(&whole[..end], 1 << 10), Err(MapError::Http(_))), "cut at {end}");
        }
        let too_large: [&[u8]; 4] = [
            b"HTTP/1.1 200 OK\r\nContent-Length: 2000\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nFFFFFFFFFFFFFFFF\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n400\r\n",
        ];
        for bytes in too_large {
            let got = parse_reply(bytes, 1 << 10);
            // The 20-digit length overflows u64: refused as a bad header.
            assert!(matches!(got, Err(MapError::TooLarge { .. } | MapError::Http(_))), "{got:?}");
        }
        assert!(matches!(parse_reply(&[b'x'; 1025], 1 << 10), Err(MapError::TooLarge { limit: 1024 })));
        let long_line = [&b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"[..], &[b'0'; 9000]].concat();
        assert!(matches!(ReplyParser::new(1 << 20).advance(&long_line, false), Err(MapError::Http(_))));
    }

    /// Hostile replies by the thousand: valid ones with bytes flipped,
    /// inserted, dropped or cut, fed in random pieces. The parser and the
    /// map check answer each with a reply or a typed error, never a panic,
    /// and never hold more than the limit.
    #[test]
    fn mutated_replies_never_panic() {
        let body = example().to_string();
        let mut chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        for c in body.as_bytes().chunks(17) {
            chunked.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
            chunked.extend_from_slice(c);
            chunked.extend_from_slice(b"\r\n");
        }
        chunked.extend_from_slice(b"0\r\n\r\n");
        let length = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}", body.len()).into_bytes();
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let mut rand = move |n: usize| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % n.max(1) as u64) as usize
        };
        let limit = 2048;
        let (mut replies, mut maps) = (0, 0);
        for round in 0..20_000 {
            let mut bytes = if round % 2 == 0 { chunked.clone() } else { length.clone() };
            for _ in 0..1 + rand(4) {
                if bytes.is_empty() {
                    break;
                }
                let at = rand(bytes.len());
                match rand(4) {
                    0 => bytes[at] ^= 1 << rand(8),
                    1 => bytes.insert(at, [b'\r', b'\n', b'0', b';', b'{', b'"', 0xFF][rand(7)]),
                    2 => drop(bytes.remove(at)),
                    _ => bytes.truncate(at),
                }
            }
            let mut p = ReplyParser::new(limit);
            let mut end = 0;
            let mut got = None;
            while end < bytes.len() {
                end = (end + 1 + rand(64)).min(bytes.len());
                match p.advance(&bytes[..end], false) {
                    Ok(None) => {}
                    other => {
                        got = Some(other);
                        break;
                    }
                }
            }
            let got = got.unwrap_or_else(|| p.advance(&bytes, true));
            if let Ok(Some(reply)) = got {
                assert!(reply.body.len() <= limit);
                replies += 1;
                maps += usize::from(ClusterMap::parse(&reply.body).is_ok());
            }
        }
        // The mutations leave some replies whole, and some maps valid.
        assert!(replies > 1000 && maps > 100, "{replies} replies, {maps} maps");
    }

    #[test]
    fn partition_ids_are_stable_distinct_63_bit_and_spread() {
        let base = 0x1234_5678_9abc;
        let ids: Vec<u64> = (0..CLUSTER_PARTITIONS_MAX).map(|p| partition_producer_id(base, p)).collect();
        assert_eq!(ids, (0..CLUSTER_PARTITIONS_MAX).map(|p| partition_producer_id(base, p)).collect::<Vec<_>>());
        let distinct: std::collections::HashSet<_> = ids.iter().collect();
        assert_eq!(distinct.len(), ids.len());
        assert!(ids.iter().all(|&id| id != 0 && id < 1 << 63));
        // Small bases (ids people choose) do not give each other's ids.
        let small: std::collections::HashSet<u64> =
            (1..64u64).flat_map(|b| (0..64).map(move |p| partition_producer_id(b, p))).collect();
        assert_eq!(small.len(), 63 * 64);
        assert!(small.iter().all(|&id| id > 1 << 32 && id < 1 << 63), "spread over 63 bits");
        assert_ne!(partition_producer_id(base, 0), partition_producer_id(base + 1, 0));
    }
}
