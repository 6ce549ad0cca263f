//! TLS to a server whose listeners speak TLS (`trove serve --tls-cert`):
//! rustls on ring, trusting the CA certificates of one PEM file.
//!
//! The protocol inside is unchanged. A plain connection keeps its
//! `TcpStream`; a TLS one wraps it, and [`Stream::split`] gives the
//! producer and the subscriber the same read and write halves either way.

use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::pki_types::ServerName;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::error::ClientError;

/// The largest CA file read.
pub const TLS_CA_FILE_BYTES_MAX: u64 = 1 << 20;

/// How to reach a TLS listener: the certificate authorities to trust and,
/// unless it is the host of the address connected to, the name the
/// server's certificate must carry.
///
/// ```no_run
/// # fn f() -> Result<(), trove_client::ClientError> {
/// let tls = trove_client::ClientTls::from_ca_file("ca.pem".as_ref())?.with_server_name("trove.example")?;
/// let config = trove_client::ClientConfig { tls: Some(tls), ..trove_client::ClientConfig::new("10.0.0.5:7400") };
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct ClientTls {
    connector: TlsConnector,
    /// `None`: the host part of the address connected to.
    server_name: Option<ServerName<'static>>,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTls").field("server_name", &self.server_name).finish_non_exhaustive()
    }
}

impl ClientTls {
    /// Trusts the certificates in `ca` (PEM, one or more), and only them.
    pub fn from_ca_file(ca: &Path) -> Result<Self, ClientError> {
        let bad = |reason: String| ClientError::Config { field: "tls", reason: format!("{}: {reason}", ca.display()) };
        let bytes = read_bounded(ca).map_err(bad)?;
        let mut roots = rustls::RootCertStore::empty();
        let mut added = 0;
        for cert in CertificateDer::pem_slice_iter(&bytes) {
            let cert = cert.map_err(|e| bad(format!("not PEM: {e}")))?;
            roots.add(cert).map_err(|e| bad(format!("not a usable CA certificate: {e}")))?;
            added += 1;
        }
        if added == 0 {
            return Err(bad("no CERTIFICATE block in it".into()));
        }
        Self::from_roots(roots)
    }

    /// What `--tls-ca FILE [--tls-server-name NAME]` ask for: `None`
    /// without a CA file (plain TCP); a server name needs the CA file.
    pub fn from_flags(ca: Option<&Path>, server_name: Option<&str>) -> Result<Option<Self>, ClientError> {
        let Some(ca) = ca else {
            return match server_name {
                Some(_) => {
                    Err(ClientError::Config { field: "tls", reason: "a server name goes with a CA file".into() })
                }
                None => Ok(None),
            };
        };
        let tls = Self::from_ca_file(ca)?;
        match server_name {
            Some(name) => tls.with_server_name(name).map(Some),
            None => Ok(Some(tls)),
        }
    }

    /// Trusts the certificates of `roots`.
    pub fn from_roots(roots: rustls::RootCertStore) -> Result<Self, ClientError> {
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(ring_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| ClientError::Config { field: "tls", reason: e.to_string() })?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Self { connector: TlsConnector::from(Arc::new(config)), server_name: None })
    }

    /// The name the server's certificate must carry (a DNS name or an IP
    /// address), instead of the host of the address connected to.
    pub fn with_server_name(mut self, name: &str) -> Result<Self, ClientError> {
        let name = ServerName::try_from(name.to_string())
            .map_err(|e| ClientError::Config { field: "tls", reason: format!("server name `{name}`: {e}") })?;
        self.server_name = Some(name);
        Ok(self)
    }

    /// The name to check for a connection to `addr` (`host:port`).
    fn name_for(&self, addr: &str) -> Result<ServerName<'static>, ClientError> {
        if let Some(name) = &self.server_name {
            return Ok(name.clone());
        }
        let host = match addr.rsplit_once(':') {
            Some((host, _port)) => host.trim_start_matches('[').trim_end_matches(']'),
            None => addr,
        };
        ServerName::try_from(host.to_string()).map_err(|e| ClientError::Config {
            field: "tls",
            reason: format!("`{host}` is not a server name ({e}); set one with `with_server_name`"),
        })
    }

    /// The TLS handshake on a connected socket. A certificate this client
    /// does not trust, or one for another name, is [`ClientError::Tls`].
    pub(crate) async fn handshake(
        &self,
        stream: TcpStream,
        addr: &str,
    ) -> Result<tokio_rustls::client::TlsStream<TcpStream>, ClientError> {
        let name = self.name_for(addr)?;
        self.connector.connect(name, stream).await.map_err(handshake_error)
    }
}

/// A rustls error (the server's certificate refused, a protocol error)
/// is [`ClientError::Tls`]; anything else broke the connection.
pub(crate) fn handshake_error(e: io::Error) -> ClientError {
    match e.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>()) {
        Some(tls) => ClientError::Tls(tls.to_string()),
        None => ClientError::io("the TLS handshake")(e),
    }
}

/// rustls' ring provider (deprecated by rustls only for lacking
/// post-quantum key exchange; docs/decisions/0042-tls.md).
#[allow(deprecated)]
fn ring_provider() -> rustls::crypto::CryptoProvider {
    rustls::crypto::ring::default_provider()
}

fn read_bounded(path: &Path) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let mut bytes = Vec::new();
    file.take(TLS_CA_FILE_BYTES_MAX + 1).read_to_end(&mut bytes).map_err(|e| e.to_string())?;
    if bytes.len() as u64 > TLS_CA_FILE_BYTES_MAX {
        return Err(format!("larger than {TLS_CA_FILE_BYTES_MAX} bytes"));
    }
    Ok(bytes)
}

/// A connection to the server: plain TCP, or TLS over it.
pub(crate) enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsConn>),
}

impl std::fmt::Debug for Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Stream::Plain(_) => "Stream::Plain",
            Stream::Tls(_) => "Stream::Tls",
        })
    }
}

impl Stream {
    /// Connects to `addr`, with TLS if `tls` is set.
    pub async fn connect(addr: &str, tls: Option<&ClientTls>) -> Result<Stream, ClientError> {
        let stream = TcpStream::connect(addr).await.map_err(ClientError::io("connecting"))?;
        stream.set_nodelay(true).map_err(ClientError::io("setting TCP_NODELAY"))?;
        Ok(match tls {
            None => Stream::Plain(stream),
            Some(tls) => Stream::Tls(Box::new(TlsConn { stream: tls.handshake(stream, addr).await?, owed: 0 })),
        })
    }

    /// Read and write halves that can be used at once (in one `select!`).
    pub fn split(&mut self) -> (ReadHalf<'_>, WriteHalf<'_>) {
        match self {
            Stream::Plain(s) => {
                let (r, w) = s.split();
                (ReadHalf::Plain(r), WriteHalf::Plain(w))
            }
            Stream::Tls(s) => {
                let (r, w) = tokio::io::split(s.as_mut());
                (ReadHalf::Tls(r), WriteHalf::Tls(w))
            }
        }
    }
}

/// A TLS stream whose writes count as done only once flushed to the
/// socket. tokio-rustls takes plaintext and may keep some of its records
/// when the socket is full, which only a later write or flush sends; the
/// producer and the subscriber write only while they have bytes to
/// write, so a write here is not complete until its records are out. A
/// write that could not flush is answered `Pending`, and answered with its
/// count once the records are out: the caller writes the same bytes again
/// meanwhile, as the producer and the subscriber do (the unwritten rest
/// of the same buffer, never other bytes).
pub(crate) struct TlsConn {
    stream: tokio_rustls::client::TlsStream<TcpStream>,
    /// Plaintext bytes taken by the last write whose records are not all
    /// out yet.
    owed: usize,
}

impl AsyncRead for TlsConn {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.owed > 0 {
            std::task::ready!(Pin::new(&mut this.stream).poll_flush(cx))?;
            // The caller must offer the same bytes again after Pending (what
            // `write_all` does); anything shorter cannot be what was taken.
            if this.owed > buf.len() {
                this.owed = 0;
                return Poll::Ready(Err(io::Error::other("a TLS write was not retried with the same bytes")));
            }
            return Poll::Ready(Ok(std::mem::take(&mut this.owed)));
        }
        let n = std::task::ready!(Pin::new(&mut this.stream).poll_write(cx, buf))?;
        match Pin::new(&mut this.stream).poll_flush(cx) {
            Poll::Ready(Ok(())) => Poll::Ready(Ok(n)),
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                this.owed = n;
                Poll::Pending
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

pub(crate) enum ReadHalf<'a> {
    Plain(tokio::net::tcp::ReadHalf<'a>),
    Tls(tokio::io::ReadHalf<&'a mut TlsConn>),
}

pub(crate) enum WriteHalf<'a> {
    Plain(tokio::net::tcp::WriteHalf<'a>),
    Tls(tokio::io::WriteHalf<&'a mut TlsConn>),
}

impl AsyncRead for ReadHalf<'_> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ReadHalf::Plain(r) => Pin::new(r).poll_read(cx, buf),
            ReadHalf::Tls(r) => Pin::new(r).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for WriteHalf<'_> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            WriteHalf::Plain(w) => Pin::new(w).poll_write(cx, buf),
            WriteHalf::Tls(w) => Pin::new(w).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            WriteHalf::Plain(w) => Pin::new(w).poll_flush(cx),
            WriteHalf::Tls(w) => Pin::new(w).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            WriteHalf::Plain(w) => Pin::new(w).poll_shutdown(cx),
            WriteHalf::Tls(w) => Pin::new(w).poll_shutdown(cx),
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_name_checked_is_the_host_unless_one_is_set() {
        let tls = ClientTls::from_roots(rustls::RootCertStore::empty()).unwrap();
        assert_eq!(tls.name_for("localhost:7400").unwrap(), ServerName::try_from("localhost").unwrap());
        assert_eq!(tls.name_for("127.0.0.1:7400").unwrap(), ServerName::try_from("127.0.0.1").unwrap());
        assert_eq!(tls.name_for("[::1]:7400").unwrap(), ServerName::try_from("::1").unwrap());
        let named = tls.with_server_name("trove.example").unwrap();
        assert_eq!(named.name_for("10.0.0.5:7400").unwrap(), ServerName::try_from("trove.example").unwrap());
    }
}
