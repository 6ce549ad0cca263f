//! A blocking HTTP/1.1 client, one request per connection: enough to
//! scrape a server's `/metrics` and to drive its control plane from tests.
//! What the server sends is read as hostile: the reply is bounded
//! ([`REPLY_BYTES_MAX`]), a malformed head or chunked body is an error,
//! never a panic.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// At most this much of a reply is read (a scrape is tens of KiB).
pub const REPLY_BYTES_MAX: u64 = 16 << 20;

/// A reply: its status, headers in order, and body (chunks joined).
#[derive(Clone, Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Reply {
    /// The first header named `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// A request that got no readable reply.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("connecting to {addr}: {source}")]
    Connect { addr: SocketAddr, source: std::io::Error },
    #[error("{method} http://{addr}{path}: {source}")]
    Io { method: String, addr: SocketAddr, path: String, source: std::io::Error },
    /// The reply is not HTTP/1.1 as this client reads it.
    #[error("{0}")]
    Malformed(String),
}

/// `GET path` from `addr`.
pub fn get(addr: SocketAddr, path: &str, timeout: Duration) -> Result<Reply, HttpError> {
    request(addr, "GET", path, None, timeout)
}

/// `method path` to `addr`, with a JSON `body` if given; `timeout` bounds
/// the connect and each read and write.
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&str>,
    timeout: Duration,
) -> Result<Reply, HttpError> {
    let io = |source| HttpError::Io { method: method.to_string(), addr, path: path.to_string(), source };
    let mut s = TcpStream::connect_timeout(&addr, timeout).map_err(|source| HttpError::Connect { addr, source })?;
    s.set_read_timeout(Some(timeout)).and_then(|()| s.set_write_timeout(Some(timeout))).map_err(io)?;
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if let Some(b) = body {
        req.push_str(&format!("Content-Type: application/json\r\nContent-Length: {}\r\n", b.len()));
    }
    req.push_str("\r\n");
    req.push_str(body.unwrap_or(""));
    s.write_all(req.as_bytes()).map_err(io)?;
    let mut raw = Vec::new();
    s.take(REPLY_BYTES_MAX).read_to_end(&mut raw).map_err(io)?;
    parse_reply(&raw)
}

/// Reads a whole reply: status line, headers, and a body by
/// `Transfer-Encoding: chunked`, `Content-Length` or the connection's end.
pub fn parse_reply(raw: &[u8]) -> Result<Reply, HttpError> {
    let bad = |what: &str| HttpError::Malformed(what.to_string());
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n").ok_or_else(|| bad("no HTTP header"))?;
    let head = std::str::from_utf8(&raw[..end]).map_err(|_| bad("a header that is not UTF-8"))?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    if parts.next() != Some("HTTP/1.1") {
        return Err(HttpError::Malformed(format!("bad status line `{status_line}`")));
    }
    let status = parts.next().and_then(|s| s.parse().ok()).ok_or_else(|| bad("bad status code"))?;
    let headers: Vec<(String, String)> = lines
        .map(|l| {
            l.split_once(':')
                .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
                .ok_or_else(|| bad("bad header"))
        })
        .collect::<Result<_, _>>()?;
    let find = |n: &str| headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(n)).map(|(_, v)| v.as_str());
    let rest = &raw[end + 4..];
    let body = if find("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        dechunk(rest)?
    } else if let Some(len) = find("content-length") {
        let len: usize = len.parse().map_err(|_| bad("bad content-length"))?;
        rest.get(..len).ok_or_else(|| bad("body shorter than content-length"))?.to_vec()
    } else {
        rest.to_vec()
    };
    let body = String::from_utf8(body).map_err(|_| bad("a body that is not UTF-8"))?;
    Ok(Reply { status, headers, body })
}

/// Joins a chunked body's chunks.
pub fn dechunk(mut b: &[u8]) -> Result<Vec<u8>, HttpError> {
    let bad = |what: &str| HttpError::Malformed(what.to_string());
    let mut out = Vec::new();
    loop {
        let eol = b.windows(2).position(|w| w == b"\r\n").ok_or_else(|| bad("bad chunked body"))?;
        let size = std::str::from_utf8(&b[..eol]).map_err(|_| bad("bad chunk size"))?;
        let size = usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| HttpError::Malformed(format!("bad chunk size `{size}`")))?;
        b = &b[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        out.extend_from_slice(b.get(..size).ok_or_else(|| bad("truncated chunk"))?);
        b = b.get(size..).and_then(|r| r.strip_prefix(b"\r\n")).ok_or_else(|| bad("bad chunk end"))?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunked_bodies_are_joined() {
        assert_eq!(dechunk(b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n").unwrap(), b"abcde");
        assert!(dechunk(b"zz\r\n").is_err());
        assert!(dechunk(b"9\r\nab\r\n").is_err());
    }

    #[test]
    fn a_reply_is_read_by_its_framing_and_a_malformed_one_refused() {
        let r = parse_reply(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-A: b\r\n\r\nhiextra").unwrap();
        assert_eq!((r.status, r.body.as_str(), r.header("x-a")), (200, "hi", Some("b")));
        let r = parse_reply(b"HTTP/1.1 503 Busy\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nx\r\n0\r\n\r\n").unwrap();
        assert_eq!((r.status, r.body.as_str()), (503, "x"));
        assert_eq!(parse_reply(b"HTTP/1.1 204 No Content\r\n\r\n").unwrap().body, "");
        for bad in [
            &b"HTTP/1.1 200 OK\r\n"[..],
            b"HTTP/1.0 200 OK\r\n\r\n",
            b"HTTP/1.1 x\r\n\r\n",
            b"HTTP/1.1 200\r\nnocolon\r\n\r\n",
        ] {
            assert!(matches!(parse_reply(bad), Err(HttpError::Malformed(_))), "{:?}", String::from_utf8_lossy(bad));
        }
        assert!(parse_reply(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nab").is_err());
    }
}
