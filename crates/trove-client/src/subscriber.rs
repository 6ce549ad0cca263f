//! The subscriber: a world's live stream (for the treasure hunt, a hunt's)
//! of applied events and broadcasts, with gaps where the server dropped
//! updates for us.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::pin::Pin;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::time::{Instant, Sleep};

use trove_proto::frame;
use trove_proto::{ErrorCode, Frame, Kind, UpdateEntry, WireGame};

use crate::config::ClientConfig;
use crate::conn::{self, FrameBuf};
use crate::error::{ClientError, ServerError};

/// One item of a subscription stream.
#[derive(Clone, Debug)]
pub enum Update<G: WireGame> {
    /// Consecutive entries of `world`'s stream; `entries[i]` has sequence
    /// number `first_seq + i`. An `Applied` entry is followed by the
    /// broadcasts its event caused.
    Entries { world: u32, first_seq: u64, entries: Vec<UpdateEntry<G>> },
    /// The server dropped entries `first_missed .. first_missed + missed`
    /// of `world` because this subscriber fell behind; the stream goes on
    /// at `first_missed + missed`.
    Gap { world: u32, first_missed: u64, missed: u64 },
    /// The server ended the subscription to `world` unasked: the world was
    /// deleted (its last entry, a broadcast such as the hunt's
    /// `HuntDeleted`, came before), or a reload of the server's tokens no
    /// longer allows it. Nothing more of `world` comes; subscribe again to
    /// follow a world created again under the id.
    Ended { world: u32 },
}

impl<G: WireGame> Update<G> {
    pub fn world(&self) -> u32 {
        match self {
            Update::Entries { world, .. } | Update::Gap { world, .. } | Update::Ended { world } => *world,
        }
    }
}

/// Where one subscription stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Sub {
    /// SUBSCRIBE sent, SUBSCRIBED not yet here; `leave`: UNSUBSCRIBE sent
    /// behind it.
    Asked { leave: bool },
    /// Subscribed; the next entry is numbered `next_seq`.
    Active { next_seq: u64 },
    /// UNSUBSCRIBE sent; entries keep coming until UNSUBSCRIBED.
    Leaving { next_seq: u64 },
}

/// The subscriptions of one connection and the sequence checks on their
/// streams. Pure bookkeeping, tested without a network.
#[derive(Debug, Default)]
struct Subscriptions {
    worlds: BTreeMap<u32, Sub>,
    /// SUBSCRIBEs not yet answered, in the order sent: a refusal (ERROR
    /// TooManySubscriptions) answers the oldest.
    asked: VecDeque<u32>,
    /// Refused subscriptions whose refusal `subscribe` has not returned.
    refused: BTreeMap<u32, ServerError>,
}

impl Subscriptions {
    fn is_empty(&self) -> bool {
        self.worlds.is_empty()
    }

    /// Whether a SUBSCRIBE must be sent for `world`.
    fn ask(&mut self, world: u32) -> bool {
        if self.worlds.contains_key(&world) {
            return false;
        }
        self.refused.remove(&world);
        self.worlds.insert(world, Sub::Asked { leave: false });
        self.asked.push_back(world);
        true
    }

    /// Whether an UNSUBSCRIBE must be sent for `world`.
    fn leave(&mut self, world: u32) -> bool {
        match self.worlds.get_mut(&world) {
            Some(Sub::Asked { leave }) if !*leave => *leave = true,
            Some(s @ Sub::Active { .. }) => {
                let Sub::Active { next_seq } = *s else { unreachable!() };
                *s = Sub::Leaving { next_seq };
            }
            _ => return false,
        }
        true
    }

    fn on_subscribed(&mut self, world: u32, next_seq: u64) -> Result<(), ClientError> {
        let Some(at) = self.asked.iter().position(|&h| h == world) else {
            return Err(ClientError::Protocol(format!("SUBSCRIBED for world {world}, which was not asked for")));
        };
        self.asked.remove(at);
        let s = self.worlds.get_mut(&world).ok_or_else(|| ClientError::Protocol("subscription lost".into()))?;
        *s = match *s {
            Sub::Asked { leave: false } => Sub::Active { next_seq },
            Sub::Asked { leave: true } => Sub::Leaving { next_seq },
            other => return Err(ClientError::Protocol(format!("SUBSCRIBED for world {world} in state {other:?}"))),
        };
        Ok(())
    }

    fn on_refused(&mut self, error: ServerError) -> Result<u32, ClientError> {
        let world = self
            .asked
            .pop_front()
            .ok_or_else(|| ClientError::Protocol(format!("{error} with no SUBSCRIBE unanswered")))?;
        self.worlds.remove(&world);
        self.refused.insert(world, error);
        Ok(world)
    }

    fn stream_of(&mut self, world: u32, what: &str) -> Result<&mut u64, ClientError> {
        match self.worlds.get_mut(&world) {
            Some(Sub::Active { next_seq } | Sub::Leaving { next_seq }) => Ok(next_seq),
            other => Err(ClientError::Protocol(format!("{what} for world {world}, which is {other:?}"))),
        }
    }

    fn on_update(&mut self, world: u32, first_seq: u64, count: u32) -> Result<(), ClientError> {
        let next = self.stream_of(world, "UPDATE")?;
        if first_seq != *next {
            return Err(ClientError::Protocol(format!(
                "UPDATE of world {world} starts at {first_seq}, expected {next}"
            )));
        }
        *next = first_seq
            .checked_add(u64::from(count))
            .ok_or_else(|| ClientError::Protocol("update sequence overflows".into()))?;
        Ok(())
    }

    fn on_gap(&mut self, world: u32, first_missed: u64, missed: u64) -> Result<(), ClientError> {
        let next = self.stream_of(world, "GAP")?;
        if first_missed != *next {
            return Err(ClientError::Protocol(format!(
                "GAP of world {world} starts at {first_missed}, expected {next}"
            )));
        }
        *next =
            first_missed.checked_add(missed).ok_or_else(|| ClientError::Protocol("gap sequence overflows".into()))?;
        Ok(())
    }

    /// Returns true when the server ended the subscription unasked.
    fn on_unsubscribed(&mut self, world: u32) -> Result<bool, ClientError> {
        match self.worlds.get(&world) {
            Some(Sub::Leaving { .. }) => {
                self.worlds.remove(&world);
                Ok(false)
            }
            Some(Sub::Active { .. }) => {
                self.worlds.remove(&world);
                Ok(true)
            }
            // The answer to an UNSUBSCRIBE of a subscription the server
            // had ended already (a deleted world), after which the world
            // may have been asked for again: nothing to do.
            None | Some(Sub::Asked { .. }) => Ok(false),
        }
    }
}

/// A connection that watches worlds: [`subscribe`](Self::subscribe), then
/// read [`next`](Self::next) in a loop.
///
/// The subscriber has no task of its own: the socket is read while `next`
/// (or `subscribe`, `unsubscribe`) is awaited. A subscriber that does not
/// read falls behind; the server then drops updates for it and says so
/// with a [`Update::Gap`]. While awaited, it PINGs the server every
/// `ping_interval`; a subscriber left unread for longer than the server's
/// idle timeout (60 s by default) is disconnected. It does not reconnect:
/// on an error, connect and subscribe again (the new stream starts at a
/// new `next_seq`).
///
/// ```no_run
/// # async fn demo() -> Result<(), trove_client::ClientError> {
/// use trove_client::{ClientConfig, Subscriber, Update};
/// use trove_hunt::TreasureHunt;
///
/// let mut sub = Subscriber::<TreasureHunt>::connect(ClientConfig::new("127.0.0.1:7400")).await?;
/// let next_seq = sub.subscribe(7).await?;
/// println!("hunt 7 from update {next_seq}");
/// while let Some(update) = sub.next().await {
///     match update? {
///         Update::Entries { first_seq, entries, .. } => println!("{} entries from {first_seq}", entries.len()),
///         Update::Gap { first_missed, missed, .. } => println!("missed {missed} from {first_missed}"),
///         Update::Ended { world } => println!("hunt {world} was deleted"),
///     }
/// }
/// # Ok(()) }
/// ```
pub struct Subscriber<G: WireGame> {
    stream: crate::tls::Stream,
    frames: FrameBuf,
    /// Frames to write, from `out_at`.
    out: Vec<u8>,
    out_at: usize,
    subs: Subscriptions,
    /// Updates read and not yet returned by `next`.
    queued: VecDeque<Update<G>>,
    failed: Option<ClientError>,
    failure_reported: bool,
    ping: Pin<Box<Sleep>>,
    last_write: Instant,
    ping_interval: Duration,
    ping_nonce: u64,
    producer_id: u64,
}

impl<G: WireGame> fmt::Debug for Subscriber<G> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscriber")
            .field("game", &G::NAME)
            .field("subscriptions", &self.subs.worlds)
            .field("queued", &self.queued.len())
            .field("failed", &self.failed)
            .finish_non_exhaustive()
    }
}

impl<G: WireGame> Subscriber<G> {
    /// Connects and handshakes (no outcomes asked, producer id assigned by
    /// the server and unused).
    pub async fn connect(config: ClientConfig) -> Result<Self, ClientError> {
        config.validate()?;
        let hello = config.hello(0, 0);
        let conn = conn::connect::<G>(&config.addr, config.tls.as_ref(), config.connect_timeout, hello).await?;
        let now = Instant::now();
        Ok(Self {
            stream: conn.stream,
            frames: conn.frames,
            out: Vec::new(),
            out_at: 0,
            subs: Subscriptions::default(),
            queued: VecDeque::new(),
            failed: None,
            failure_reported: false,
            ping: Box::pin(tokio::time::sleep_until(now + config.ping_interval)),
            last_write: now,
            ping_interval: config.ping_interval,
            ping_nonce: 0,
            producer_id: conn.welcome.producer_id,
        })
    }

    /// The producer id the server assigned this connection (unused unless
    /// it also produced, which this SDK does on separate connections).
    pub fn connection_id(&self) -> u64 {
        self.producer_id
    }

    /// The worlds subscribed to (or being subscribed or unsubscribed).
    pub fn subscriptions(&self) -> impl Iterator<Item = u32> + '_ {
        self.subs.worlds.keys().copied()
    }

    /// Subscribes to `world` and waits for the server's SUBSCRIBED. Returns
    /// the sequence number of the next entry of the stream. Already
    /// subscribed: returns at once. Refused (the connection's subscription
    /// limit, `too_many_subscriptions`): `ClientError::Server`, and the
    /// connection stays usable. Updates of other worlds that arrive
    /// meanwhile are kept for `next`.
    pub async fn subscribe(&mut self, world: u32) -> Result<u64, ClientError> {
        self.subscribe_as(world, false).await
    }

    /// Subscribes to `world`'s broadcasts alone (for the treasure hunt:
    /// finds, top-10 changes, round ends; no `Applied` entries), as
    /// [`Subscriber::subscribe`] does otherwise. The entries are numbered
    /// consecutively by themselves, and a [`Update::Gap`] still says what
    /// was missed, in that numbering. A world already subscribed keeps the
    /// mode it has (unsubscribe first to change it). Needs a server that
    /// knows the mode (an older one answers `malformed` and closes).
    pub async fn subscribe_broadcasts(&mut self, world: u32) -> Result<u64, ClientError> {
        self.subscribe_as(world, true).await
    }

    async fn subscribe_as(&mut self, world: u32, broadcasts_only: bool) -> Result<u64, ClientError> {
        self.check()?;
        let mut asked = false;
        loop {
            match self.subs.worlds.get(&world) {
                Some(Sub::Active { next_seq }) => return Ok(*next_seq),
                // Waiting for SUBSCRIBED, or for an unsubscription (of an
                // earlier, cancelled call) to finish before asking again.
                Some(Sub::Asked { .. } | Sub::Leaving { .. }) => {}
                None => {
                    if asked && let Some(error) = self.subs.refused.remove(&world) {
                        return Err(ClientError::Server(error));
                    }
                    asked = self.subs.ask(world);
                    frame::encode_subscribe(&mut self.out, world, broadcasts_only);
                    continue;
                }
            }
            self.step().await?;
        }
    }

    /// Unsubscribes from `world` and waits for the server's UNSUBSCRIBED.
    /// Entries of `world` that arrived before it are still returned by
    /// `next`. Not subscribed: returns at once.
    pub async fn unsubscribe(&mut self, world: u32) -> Result<(), ClientError> {
        self.check()?;
        if self.subs.leave(world) {
            frame::encode_u32_frame(&mut self.out, Kind::Unsubscribe, world);
        }
        while self.subs.worlds.contains_key(&world) {
            self.step().await?;
        }
        Ok(())
    }

    /// The next update of any subscribed world. `None` when nothing is
    /// subscribed and nothing is left to return, or after the error that
    /// ended the connection was returned. Cancel-safe: usable in
    /// `tokio::select!`.
    pub async fn next(&mut self) -> Option<Result<Update<G>, ClientError>> {
        loop {
            if let Some(u) = self.queued.pop_front() {
                return Some(Ok(u));
            }
            if let Some(e) = &self.failed {
                if self.failure_reported {
                    return None;
                }
                self.failure_reported = true;
                return Some(Err(e.clone()));
            }
            if self.subs.is_empty() {
                return None;
            }
            // An error is recorded in `failed` and returned above.
            let _ = self.step().await;
        }
    }

    fn check(&self) -> Result<(), ClientError> {
        match &self.failed {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        }
    }

    /// Waits for the socket once (a read, a write, or the ping timer) and
    /// handles every whole frame buffered.
    async fn step(&mut self) -> Result<(), ClientError> {
        let r = self.step_inner().await;
        if let Err(e) = &r {
            self.failed.get_or_insert_with(|| e.clone());
        }
        r
    }

    async fn step_inner(&mut self) -> Result<(), ClientError> {
        if self.out_at == self.out.len() && !self.out.is_empty() {
            self.out.clear();
            self.out_at = 0;
        }
        let out = &self.out[self.out_at..];
        let (mut rd, mut wr) = self.stream.split();
        enum Event {
            Read(std::io::Result<usize>),
            Wrote(std::io::Result<usize>),
            Ping,
        }
        let event = tokio::select! {
            biased;
            n = self.frames.fill(&mut rd) => Event::Read(n),
            n = wr.write(out), if !out.is_empty() => Event::Wrote(n),
            _ = &mut self.ping => Event::Ping,
        };
        match event {
            Event::Read(n) => match n.map_err(ClientError::io("reading"))? {
                0 => {
                    return Err(ClientError::Io {
                        during: "reading",
                        source: std::sync::Arc::new(std::io::ErrorKind::UnexpectedEof.into()),
                    });
                }
                _ => self.read_frames()?,
            },
            Event::Wrote(n) => {
                self.out_at += n.map_err(ClientError::io("writing"))?;
                self.last_write = Instant::now();
            }
            Event::Ping => {
                let due = self.last_write + self.ping_interval;
                if due <= Instant::now() {
                    self.ping_nonce += 1;
                    frame::encode_u64_frame(&mut self.out, Kind::Ping, self.ping_nonce);
                    self.ping.as_mut().reset(Instant::now() + self.ping_interval);
                } else {
                    self.ping.as_mut().reset(due);
                }
            }
        }
        Ok(())
    }

    fn read_frames(&mut self) -> Result<(), ClientError> {
        while let Some((header, body)) = self.frames.next_frame()? {
            let f = conn::decode_server_frame::<G>(header, body)?;
            let protocol = ClientError::Protocol;
            match f {
                Frame::Subscribed { hunt: world, next_seq } => self.subs.on_subscribed(world, next_seq)?,
                Frame::Update { hunt: world, first_seq, count, entries } => {
                    self.subs.on_update(world, first_seq, count)?;
                    let entries =
                        trove_proto::wire::decode_entries::<G>(entries).map_err(|e| protocol(e.to_string()))?;
                    self.queued.push_back(Update::Entries { world, first_seq, entries });
                }
                Frame::Gap { hunt: world, first_missed, missed } => {
                    self.subs.on_gap(world, first_missed, missed)?;
                    self.queued.push_back(Update::Gap { world, first_missed, missed });
                }
                Frame::Unsubscribed { hunt: world } => {
                    if self.subs.on_unsubscribed(world)? {
                        self.queued.push_back(Update::Ended { world });
                    }
                }
                Frame::Pong { .. } => {}
                Frame::Error { code, message } => {
                    let error = ServerError { raw_code: code, message: message.to_string() };
                    // `forbidden`: the token may not watch this hunt; that
                    // subscription alone is refused.
                    if matches!(error.code(), Some(ErrorCode::TooManySubscriptions | ErrorCode::Forbidden)) {
                        self.subs.on_refused(error)?;
                    } else if error.closes() {
                        return Err(ClientError::Server(error));
                    } else {
                        return Err(protocol(format!("unexpected ERROR for a subscriber: {error}")));
                    }
                }
                other => return Err(protocol(format!("unexpected {:?} frame", conn::kind_of(&other)))),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal() -> ServerError {
        ServerError { raw_code: ErrorCode::TooManySubscriptions as u16, message: "limit".into() }
    }

    #[test]
    fn streams_must_follow_on_through_updates_and_gaps() {
        let mut s = Subscriptions::default();
        assert!(s.ask(4));
        assert!(!s.ask(4), "asked once");
        assert!(s.on_update(4, 10, 1).is_err(), "no update before SUBSCRIBED");
        s.on_subscribed(4, 10).unwrap();
        s.on_update(4, 10, 3).unwrap();
        assert!(s.on_update(4, 12, 1).is_err(), "overlaps");
        assert!(s.on_update(4, 14, 1).is_err(), "skips one without a GAP");
        s.on_gap(4, 13, 100).unwrap();
        s.on_update(4, 113, 1).unwrap();
        assert!(s.on_gap(4, 113, 1).is_err(), "overlaps");
        s.on_gap(4, 114, 1).unwrap();
        assert!(s.on_update(5, 1, 1).is_err(), "not subscribed");
    }

    #[test]
    fn refusals_answer_the_oldest_subscribe() {
        let mut s = Subscriptions::default();
        s.ask(1);
        s.ask(2);
        assert_eq!(s.on_refused(refusal()).unwrap(), 1);
        s.on_subscribed(2, 1).unwrap();
        assert!(s.refused.contains_key(&1) && !s.worlds.contains_key(&1));
        assert!(s.on_refused(refusal()).is_err(), "nothing asked");
        assert!(s.on_subscribed(3, 1).is_err(), "never asked");
        // Asking again clears an old refusal.
        assert!(s.ask(1));
        assert!(!s.refused.contains_key(&1));
    }

    #[test]
    fn leaving_keeps_the_stream_until_unsubscribed() {
        let mut s = Subscriptions::default();
        s.ask(1);
        s.on_subscribed(1, 5).unwrap();
        assert!(s.leave(1));
        assert!(!s.leave(1), "once");
        s.on_update(1, 5, 2).unwrap();
        assert!(!s.on_unsubscribed(1).unwrap(), "asked");
        assert!(s.is_empty());
        assert!(s.on_update(1, 7, 1).is_err());
        // Leaving before SUBSCRIBED came: the stream opens already leaving.
        s.ask(2);
        assert!(s.leave(2));
        s.on_subscribed(2, 1).unwrap();
        s.on_update(2, 1, 1).unwrap();
        s.on_unsubscribed(2).unwrap();
        assert!(!s.leave(3), "never subscribed");
        assert!(!s.on_unsubscribed(3).unwrap(), "not subscribed: an answer to an UNSUBSCRIBE it ended already");
    }

    /// A deleted hunt: the server ends an active subscription unasked.
    #[test]
    fn an_unasked_unsubscribed_ends_the_stream() {
        let mut s = Subscriptions::default();
        s.ask(1);
        s.on_subscribed(1, 5).unwrap();
        s.on_update(1, 5, 2).unwrap();
        assert!(s.on_unsubscribed(1).unwrap(), "unasked");
        assert!(s.is_empty());
        assert!(s.on_update(1, 7, 1).is_err(), "nothing after the end");
        // Subscribing again starts another stream; the answer to an
        // UNSUBSCRIBE sent before the end, coming meanwhile, changes nothing.
        s.ask(1);
        assert!(!s.on_unsubscribed(1).unwrap());
        s.on_subscribed(1, 90).unwrap();
        s.on_update(1, 90, 1).unwrap();
    }
}
