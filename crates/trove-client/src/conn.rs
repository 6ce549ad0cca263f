//! A connection: TCP connect, the HELLO/WELCOME handshake, and the read
//! buffer that yields whole frames.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

use trove_core::Record;
use trove_proto::frame::{self, ERROR_MESSAGE_MAX, FRAME_BODY_MAX_LIMIT, HEADER_LEN, Hello, Sizes, Welcome};
use trove_proto::{Frame, Header, WireGame};

use crate::error::{ClientError, ServerError};
use crate::tls::{ClientTls, Stream};

/// Largest body the client accepts before WELCOME: an ERROR with the
/// longest message (WELCOME itself is 32 bytes).
pub(crate) const HANDSHAKE_BODY_MAX: u32 = (4 + ERROR_MESSAGE_MAX) as u32;
/// Bytes asked of the socket per read, at least.
const READ_CHUNK: usize = 256 << 10;

pub(crate) fn sizes<G: WireGame>() -> Sizes {
    Sizes { record: G::Event::SIZE, outcome: G::OUTCOME_SIZE }
}

/// Received bytes, consumed frame by frame from the front.
#[derive(Debug)]
pub(crate) struct FrameBuf {
    buf: Vec<u8>,
    /// Bytes of `buf` already consumed.
    start: usize,
    /// Largest body accepted; checked on the header, before buffering.
    pub max_body: u32,
}

impl FrameBuf {
    pub fn new(max_body: u32) -> Self {
        Self { buf: Vec::with_capacity(READ_CHUNK), start: 0, max_body }
    }

    /// The next whole frame, if buffered: its header and body. The header
    /// check (kind, reserved bytes, limit) fails as soon as 8 bytes are in.
    pub fn next_frame(&mut self) -> Result<Option<(Header, &[u8])>, ClientError> {
        let rest = &self.buf[self.start..];
        match frame::split(rest, self.max_body) {
            Ok(Some((header, total))) => {
                let at = self.start;
                self.start += total;
                Ok(Some((header, &self.buf[at + HEADER_LEN..at + total])))
            }
            Ok(None) => Ok(None),
            Err(e) => Err(ClientError::Protocol(e.to_string())),
        }
    }

    /// Reads once from `r` (after moving the unconsumed bytes to the front
    /// and making room for the frame they start). Returns the bytes read;
    /// 0 is the end of the stream. Cancel-safe.
    pub async fn fill<R: AsyncRead + Unpin>(&mut self, r: &mut R) -> std::io::Result<usize> {
        self.make_room();
        r.read_buf(&mut self.buf).await
    }

    fn make_room(&mut self) {
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        let mut want = READ_CHUNK;
        if self.buf.len() >= HEADER_LEN {
            let len = u32::from_le_bytes(self.buf[..4].try_into().expect("4 bytes")) as usize;
            want = want.max(HEADER_LEN + len.min(self.max_body as usize));
        }
        let spare = self.buf.capacity() - self.buf.len();
        if spare < want / 2 {
            self.buf.reserve(want - spare);
        }
    }

    /// Test support: append bytes as if read.
    #[cfg(test)]
    pub fn push(&mut self, bytes: &[u8]) {
        self.make_room();
        self.buf.extend_from_slice(bytes);
    }
}

/// A connected, handshaken socket.
#[derive(Debug)]
pub(crate) struct Conn {
    pub stream: Stream,
    pub frames: FrameBuf,
    pub welcome: Welcome,
}

/// Connects to `addr` (with TLS if `tls` is set), sends HELLO and waits
/// for WELCOME, all within `timeout`. Checks what every client needs of
/// WELCOME (version, sizes); the caller checks flags, producer id and
/// limits.
pub(crate) async fn connect<G: WireGame>(
    addr: &str,
    tls: Option<&ClientTls>,
    timeout: Duration,
    hello: Hello,
) -> Result<Conn, ClientError> {
    match tokio::time::timeout(timeout, connect_inner::<G>(addr, tls, hello)).await {
        Ok(r) => r,
        Err(_) => Err(ClientError::Timeout { during: "connecting and handshaking" }),
    }
}

async fn connect_inner<G: WireGame>(addr: &str, tls: Option<&ClientTls>, hello: Hello) -> Result<Conn, ClientError> {
    let mut stream = Stream::connect(addr, tls).await?;
    let mut out = Vec::with_capacity(HEADER_LEN + frame::HELLO_LEN);
    frame::encode_hello(&mut out, &hello);
    stream.write_all(&out).await.map_err(ClientError::io("sending HELLO"))?;
    let mut frames = FrameBuf::new(HANDSHAKE_BODY_MAX);
    loop {
        if let Some((header, body)) = frames.next_frame()? {
            let welcome = match frame::decode(header, body, sizes::<G>()) {
                Ok(Frame::Welcome(w)) => w,
                Ok(Frame::Error { code, message }) => {
                    return Err(ClientError::Server(ServerError { raw_code: code, message: message.to_string() }));
                }
                Ok(other) => return Err(ClientError::Protocol(format!("expected WELCOME, got {:?}", kind_of(&other)))),
                Err(e) => return Err(ClientError::Protocol(e.to_string())),
            };
            check_welcome::<G>(&welcome, &hello)?;
            frames.max_body = welcome.frame_body_max.min(FRAME_BODY_MAX_LIMIT);
            return Ok(Conn { stream, frames, welcome });
        }
        let n = frames.fill(&mut stream).await.map_err(ClientError::io("waiting for WELCOME"))?;
        if n == 0 {
            return Err(ClientError::Io {
                during: "waiting for WELCOME",
                source: std::sync::Arc::new(std::io::ErrorKind::UnexpectedEof.into()),
            });
        }
    }
}

/// What any client needs of WELCOME.
pub(crate) fn check_welcome<G: WireGame>(w: &Welcome, hello: &Hello) -> Result<(), ClientError> {
    if w.version != hello.version {
        return Err(ClientError::Incompatible(format!(
            "server answered version {}, this client spoke {}",
            w.version, hello.version
        )));
    }
    if usize::from(w.record_size) != G::Event::SIZE || usize::from(w.outcome_size) != G::OUTCOME_SIZE {
        return Err(ClientError::Incompatible(format!(
            "server records/outcomes are {}/{} bytes, {} needs {}/{}",
            w.record_size,
            w.outcome_size,
            G::NAME,
            G::Event::SIZE,
            G::OUTCOME_SIZE
        )));
    }
    if w.flags & !hello.flags != 0 {
        return Err(ClientError::Protocol(format!("WELCOME flags 0x{:x} were not asked for", w.flags)));
    }
    if w.producer_id == 0 || (hello.producer_id != 0 && w.producer_id != hello.producer_id) {
        return Err(ClientError::Protocol(format!(
            "HELLO presented producer {}, WELCOME answered {}",
            hello.producer_id, w.producer_id
        )));
    }
    if w.batch_events_max == 0 {
        return Err(ClientError::Incompatible("server takes batches of 0 events".into()));
    }
    Ok(())
}

/// The kind of a decoded frame, for messages.
pub(crate) fn kind_of(f: &Frame<'_>) -> trove_proto::Kind {
    use trove_proto::Kind;
    match f {
        Frame::Hello(_) => Kind::Hello,
        Frame::Events { .. } => Kind::Events,
        Frame::Subscribe { .. } => Kind::Subscribe,
        Frame::Unsubscribe { .. } => Kind::Unsubscribe,
        Frame::Ping { .. } => Kind::Ping,
        Frame::Welcome(_) => Kind::Welcome,
        Frame::Ack { .. } => Kind::Ack,
        Frame::Busy { .. } => Kind::Busy,
        Frame::Subscribed { .. } => Kind::Subscribed,
        Frame::Update { .. } => Kind::Update,
        Frame::Gap { .. } => Kind::Gap,
        Frame::Unsubscribed { .. } => Kind::Unsubscribed,
        Frame::Pong { .. } => Kind::Pong,
        Frame::Error { .. } => Kind::Error,
    }
}

/// Decodes a frame from the server: refuses client kinds, checks the body.
pub(crate) fn decode_server_frame<'a, G: WireGame>(header: Header, body: &'a [u8]) -> Result<Frame<'a>, ClientError> {
    if header.kind.from_client() {
        return Err(ClientError::Protocol(format!("the server sent a client frame ({:?})", header.kind)));
    }
    frame::decode(header, body, sizes::<G>()).map_err(|e| ClientError::Protocol(e.to_string()))
}

/// A WELCOME for the treasure hunt with outcomes, for the tests of this
/// crate.
#[cfg(test)]
pub(crate) fn test_welcome() -> Welcome {
    Welcome {
        version: 1,
        flags: frame::hello_flags::OUTCOMES,
        producer_id: 7,
        frame_body_max: 1 << 20,
        batch_events_max: 4096,
        record_size: 32,
        outcome_size: 16,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use trove_hunt::TreasureHunt;

    use crate::conn::test_welcome as welcome;
    use trove_proto::frame::hello_flags;

    #[test]
    fn welcome_is_checked() {
        let hello = Hello::v1(hello_flags::OUTCOMES, 7);
        assert!(check_welcome::<TreasureHunt>(&welcome(), &hello).is_ok());
        let assigned = Hello { producer_id: 0, ..hello };
        assert!(check_welcome::<TreasureHunt>(&welcome(), &assigned).is_ok());
        let bad = [
            Welcome { version: 2, ..welcome() },
            Welcome { record_size: 33, ..welcome() },
            Welcome { outcome_size: 8, ..welcome() },
            Welcome { producer_id: 8, ..welcome() },
            Welcome { producer_id: 0, ..welcome() },
            Welcome { flags: 3, ..welcome() },
            Welcome { batch_events_max: 0, ..welcome() },
        ];
        for w in bad {
            assert!(check_welcome::<TreasureHunt>(&w, &hello).is_err(), "{w:?}");
        }
    }

    #[test]
    fn frames_are_cut_from_a_stream_in_any_pieces() {
        let mut bytes = Vec::new();
        frame::encode_u64_frame(&mut bytes, trove_proto::Kind::Pong, 5);
        frame::encode_busy(&mut bytes, 1, 2, 3);
        frame::encode_ack(&mut bytes, 1, 2, None);
        for cut in 0..bytes.len() {
            let mut fb = FrameBuf::new(1 << 20);
            let mut got = Vec::new();
            for piece in [&bytes[..cut], &bytes[cut..]] {
                fb.push(piece);
                while let Some((h, body)) = fb.next_frame().unwrap() {
                    got.push(format!("{:?}", decode_server_frame::<TreasureHunt>(h, body).unwrap()));
                }
            }
            assert_eq!(got.len(), 3, "cut at {cut}");
        }
    }

    #[test]
    fn oversize_and_client_frames_are_refused() {
        let mut bytes = Vec::new();
        frame::encode_ack(&mut bytes, 1, 2, Some(&[0; 32]));
        let mut fb = FrameBuf::new(16);
        fb.push(&bytes[..HEADER_LEN]);
        assert!(matches!(fb.next_frame(), Err(ClientError::Protocol(_))));
        let mut bytes = Vec::new();
        frame::encode_u64_frame(&mut bytes, trove_proto::Kind::Ping, 5);
        let mut fb = FrameBuf::new(1 << 20);
        fb.push(&bytes);
        let (h, body) = fb.next_frame().unwrap().unwrap();
        assert!(decode_server_frame::<TreasureHunt>(h, body).is_err());
    }
}
