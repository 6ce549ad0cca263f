//! TLS on the three listeners (docs/decisions/0042-tls.md): rustls on
//! ring, from a certificate chain and a private key in PEM files.
//!
//! TLS sits below the protocols: the same frames, JSON messages and HTTP
//! requests travel inside it. When it is on, a listener speaks only TLS.
//! The handshake runs in the connection's own task, after the connection
//! took its slot, and within the handshake deadline of the protocol on top
//! (`handshake_timeout` on the data plane and the WebSocket endpoint,
//! `header_timeout` on the control plane): a peer that stalls or sends
//! garbage holds one slot and rustls' bounded buffers until then, and is
//! closed.
//!
//! The data plane's TCP connections are generic over their read and write
//! halves, so a plain connection keeps its `TcpStream` halves and pays no
//! dispatch; the WebSocket endpoint and the control plane, driven by
//! hyper, read through [`Transport`].

use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;

/// The largest certificate or key file read: a chain of a few
/// certificates is a few KiB; anything far larger is not one.
pub const TLS_FILE_BYTES_MAX: u64 = 1 << 20;

/// Why a certificate or key file could not be used: names the file.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("TLS {what} {}: {reason}", file.display())]
pub struct TlsError {
    /// `certificate` or `key`.
    pub what: &'static str,
    pub file: PathBuf,
    pub reason: String,
}

/// A loaded server certificate and key, ready to accept connections on
/// any of the listeners (one configuration shared by the three).
#[derive(Clone)]
pub struct ServerTls {
    acceptor: TlsAcceptor,
    cert: PathBuf,
    key: PathBuf,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls").field("cert", &self.cert).field("key", &self.key).finish_non_exhaustive()
    }
}

/// The same loaded configuration (not the same files read twice).
impl PartialEq for ServerTls {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(self.acceptor.config(), other.acceptor.config())
    }
}

impl Eq for ServerTls {}

impl ServerTls {
    /// Reads a PEM certificate chain (the server's certificate first) and
    /// a PEM private key (PKCS#8, PKCS#1 or SEC1), and checks that they
    /// belong together. TLS 1.2 and 1.3 with ring's cipher suites; no
    /// client certificates.
    pub fn load(cert: &Path, key: &Path) -> Result<Self, TlsError> {
        let cert_error = |reason: String| TlsError { what: "certificate", file: cert.to_path_buf(), reason };
        let key_error = |reason: String| TlsError { what: "key", file: key.to_path_buf(), reason };
        let cert_pem = read_bounded(cert).map_err(cert_error)?;
        let chain = CertificateDer::pem_slice_iter(&cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| cert_error(format!("not PEM: {e}")))?;
        if chain.is_empty() {
            return Err(cert_error("no CERTIFICATE block in it".into()));
        }
        let key_pem = read_bounded(key).map_err(key_error)?;
        let private =
            PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| key_error(format!("no private key in it: {e}")))?;
        let provider = Arc::new(ring_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| cert_error(e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(chain, private)
            .map_err(|e| key_error(format!("does not go with the certificate, or is unusable: {e}")))?;
        Ok(Self { acceptor: TlsAcceptor::from(Arc::new(config)), cert: cert.to_path_buf(), key: key.to_path_buf() })
    }

    pub fn acceptor(&self) -> &TlsAcceptor {
        &self.acceptor
    }

    /// The certificate file, for the start-up lines.
    pub fn cert_file(&self) -> &Path {
        &self.cert
    }
}

/// rustls' ring provider: classical key exchange (X25519, P-256, P-384)
/// and ring's cipher suites. rustls deprecates it since 0.23.48 only
/// because ring has no post-quantum key exchange, which needs aws-lc
/// (docs/decisions/0042-tls.md says why trove stays on ring).
#[allow(deprecated)]
pub fn ring_provider() -> rustls::crypto::CryptoProvider {
    rustls::crypto::ring::default_provider()
}

fn read_bounded(path: &Path) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let mut bytes = Vec::new();
    file.take(TLS_FILE_BYTES_MAX + 1).read_to_end(&mut bytes).map_err(|e| e.to_string())?;
    if bytes.len() as u64 > TLS_FILE_BYTES_MAX {
        return Err(format!("larger than {TLS_FILE_BYTES_MAX} bytes"));
    }
    Ok(bytes)
}

/// A connection of the WebSocket endpoint or the control plane: plain TCP,
/// or TLS whose handshake is driven by the first read or write (so it
/// runs in the connection's task, under the deadlines its reads have).
pub(crate) enum Transport {
    Plain(TcpStream),
    Accepting(Box<tokio_rustls::Accept<TcpStream>>),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
    /// The handshake failed: every later call fails.
    Failed,
}

impl Transport {
    pub fn new(stream: TcpStream, tls: Option<&ServerTls>) -> Self {
        match tls {
            None => Transport::Plain(stream),
            Some(tls) => Transport::Accepting(Box::new(tls.acceptor().accept(stream))),
        }
    }

    /// Completes the handshake, if it is under way.
    fn poll_handshake(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if let Transport::Accepting(accept) = self {
            match Pin::new(accept.as_mut()).poll(cx) {
                Poll::Ready(Ok(stream)) => *self = Transport::Tls(Box::new(stream)),
                Poll::Ready(Err(e)) => {
                    *self = Transport::Failed;
                    return Poll::Ready(Err(e));
                }
                Poll::Pending => return Poll::Pending,
            }
        }
        match self {
            Transport::Failed => Poll::Ready(Err(io::Error::new(io::ErrorKind::NotConnected, "TLS handshake failed"))),
            _ => Poll::Ready(Ok(())),
        }
    }
}

impl AsyncRead for Transport {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Transport::Plain(s) = this {
            return Pin::new(s).poll_read(cx, buf);
        }
        std::task::ready!(this.poll_handshake(cx))?;
        match this {
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            _ => unreachable!("the handshake is over"),
        }
    }
}

impl AsyncWrite for Transport {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if let Transport::Plain(s) = this {
            return Pin::new(s).poll_write(cx, buf);
        }
        std::task::ready!(this.poll_handshake(cx))?;
        match this {
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            _ => unreachable!("the handshake is over"),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if let Transport::Plain(s) = this {
            return Pin::new(s).poll_write_vectored(cx, bufs);
        }
        std::task::ready!(this.poll_handshake(cx))?;
        match this {
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
            _ => unreachable!("the handshake is over"),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Transport::Plain(s) => s.is_write_vectored(),
            Transport::Tls(s) => s.is_write_vectored(),
            Transport::Accepting(_) | Transport::Failed => false,
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_flush(cx),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            // Nothing written yet, or nothing more to write.
            Transport::Accepting(_) | Transport::Failed => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Transport::Accepting(_) | Transport::Failed => Poll::Ready(Ok(())),
        }
    }
}
