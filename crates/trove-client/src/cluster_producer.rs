//! A producer for a cluster: one [`Producer`] per partition it sends to,
//! each connected to its partition's owner and following it when it moves
//! (docs/decisions/0038-sdk-routing-a-producer-per-partition.md).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;
use trove_core::shard_of;
use trove_proto::WireGame;

use crate::cluster::partition_producer_id;
use crate::config::{ClientConfig, random_producer_id};
use crate::error::{ClientError, SendError};
use crate::producer::{AckedBatch, Acks, Producer, ProducerStats};
use crate::route::{ClusterRoute, Resolver, Route};

/// Most seed addresses a [`ClusterConfig`] may list.
pub const CLUSTER_SEEDS_MAX: usize = 64;

/// How to reach a cluster and how each partition's producer batches,
/// pipelines and reconnects.
///
/// ```
/// # use std::time::Duration;
/// let config = trove_client::ClusterConfig {
///     producer_id: Some(7),
///     ..trove_client::ClusterConfig::new(["10.0.0.1:7480", "10.0.0.2:7480"])
/// };
/// assert!(config.validate().is_ok());
/// ```
#[derive(Clone, Debug)]
pub struct ClusterConfig {
    /// Control-plane addresses (`host:port`) to fetch the cluster map
    /// from, tried in turn; the nodes a map lists are tried after them.
    pub seeds: Vec<String>,
    /// The base of the producer ids, one per partition
    /// ([`partition_producer_id`]). `None` (the default): a random one, per
    /// [`ClusterProducer`]. `Some(id)`: stable across runs, so that a
    /// restarted producer resending its unanswered batches is recognised;
    /// then `client.first_seq` must be above every sequence number the ids
    /// used before, as for [`ClientConfig::producer_id`].
    pub producer_id: Option<u64>,
    /// The template of every partition's producer (window, batch, linger,
    /// timers, reconnect backoff and attempts). Its `addr` is unused (each
    /// partition connects to its owner) and its `producer_id` must be
    /// `None` (the ids derive from `producer_id` above). Each partition's
    /// producer has its own window, `unacked_events_max` (8,192 by
    /// default): at most that over a round trip through JetStream per
    /// partition (about 550-750 k events/s at 11-15 ms), so a hot
    /// partition's producer may raise it (decision 0058).
    pub client: ClientConfig,
    /// One `GET /cluster`, connect to last byte.
    pub map_timeout: Duration,
    /// How long a partition's producer looks for the partition's owner
    /// (fetching the map again between attempts, with the template's
    /// backoff) before it gives up with `ClientError::ReconnectFailed`. The
    /// template's `reconnect_attempts_max` bounds the attempts too.
    pub failover_timeout: Duration,
}

impl ClusterConfig {
    /// The defaults, for a cluster whose map `seeds` serve.
    pub fn new<S: Into<String>>(seeds: impl IntoIterator<Item = S>) -> Self {
        Self {
            seeds: seeds.into_iter().map(Into::into).collect(),
            producer_id: None,
            client: ClientConfig {
                // A stalled node keeps its sockets open: its partitions'
                // producers give up on it and follow the partition.
                answer_timeout: Some(CLUSTER_ANSWER_TIMEOUT),
                // A failover is a few seconds of a partition without an
                // owner: look again often (a map fetch and a connect on
                // the nodes' network), and let `failover_timeout`, not an
                // attempt count, decide when to give up.
                reconnect_backoff_max: CLUSTER_BACKOFF_MAX,
                reconnect_attempts_max: None,
                ..ClientConfig::new("(the partition's owner)")
            },
            map_timeout: Duration::from_secs(2),
            failover_timeout: Duration::from_secs(30),
        }
    }

    pub fn validate(&self) -> Result<(), ClientError> {
        let bad = |field, reason: &str| Err(ClientError::Config { field, reason: reason.to_string() });
        if self.seeds.is_empty() || self.seeds.len() > CLUSTER_SEEDS_MAX {
            return bad("seeds", "must list 1..=64 control-plane addresses");
        }
        if self.seeds.iter().any(String::is_empty) {
            return bad("seeds", "holds an empty address");
        }
        if self.client.producer_id.is_some() {
            return bad("client.producer_id", "must be None: set ClusterConfig::producer_id");
        }
        if self.map_timeout.is_zero() {
            return bad("map_timeout", "must be above zero");
        }
        if self.failover_timeout.is_zero() {
            return bad("failover_timeout", "must be above zero");
        }
        self.client.validate()
    }
}

/// [`ClusterConfig::new`]'s `client.answer_timeout`: longer than a
/// takeover's usual few seconds would only delay a stalled node's
/// partitions, shorter would resend batches a slow but live node is about
/// to answer (harmless: they are applied once).
pub const CLUSTER_ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

/// [`ClusterConfig::new`]'s `client.reconnect_backoff_max`: the longest a
/// partition's producer waits between two looks for its owner, so that it
/// follows a partition within a quarter second of its takeover.
pub const CLUSTER_BACKOFF_MAX: Duration = Duration::from_millis(250);

/// One answer of a [`ClusterAcks`]: the partition and its producer's
/// answer.
pub type ClusterAck<G> = (u32, Result<AckedBatch<G>, ClientError>);

/// Sends a game's events to a trove cluster: each event to the node that
/// owns its world's partition (`trove_core::shard_of(world, partitions)`,
/// the engine's own placement), each applied exactly once.
///
/// It holds one [`Producer`] per partition it has sent to, made at the
/// first event for that partition, with a producer id derived from the
/// base id and the partition ([`partition_producer_id`]). Each batches,
/// pipelines and resends as a single node's producer does, and follows
/// its partition: after `not_owner` (the partition moved), a lost
/// connection or a failed connect, it fetches the cluster map again (from
/// the seeds, then the nodes the maps listed), reconnects to the owner it
/// names, presents the same producer id and resends every unanswered batch
/// with its original sequence numbers; the new owner applies each event
/// once and answers a resend of what the old owner applied with its
/// original outcome. While no node owns the partition, or the maps still
/// name the node that refused it, it waits (the template's backoff) and
/// looks again, for at most `failover_timeout`; `unavailable` (the
/// cluster's log could not make a batch durable) is resent after the same
/// backoff. Giving up ends that partition's producer with
/// `ClientError::ReconnectFailed`, which names the last error; that
/// partition then answers `send` with [`SendError::Closed`] (whether its
/// events not yet acknowledged were applied is unknown, as after a single
/// producer gives up), while the other partitions go on.
///
/// Sequence numbers are per partition: `send` returns the partition and
/// the number, and [`ClusterAcks`] yields each partition's answers in
/// order (the partitions interleaved).
///
/// [`send`](Self::send) never waits: for a partition without a producer
/// yet, or whose producer's window is full, it hands the event back in
/// [`SendError::Full`]; await [`ready`](Self::ready) (which connects that
/// partition), then send again, or use [`send_wait`](Self::send_wait).
/// Keep reading the `ClusterAcks` (or drop it), as with a `Producer`.
///
/// ```no_run
/// # async fn demo() -> Result<(), trove_client::ClientError> {
/// use trove_client::{ClusterConfig, ClusterProducer};
/// use trove_hunt::{HuntEvent, TreasureHunt};
///
/// let config = ClusterConfig::new(["10.0.0.1:7480", "10.0.0.2:7480"]);
/// let (mut producer, mut acks) = ClusterProducer::<TreasureHunt>::connect(config).await?;
/// let reader = tokio::spawn(async move {
///     while let Some((partition, ack)) = acks.next().await {
///         let ack = ack?;
///         println!("partition {partition}: {} events from {} acknowledged", ack.count, ack.first_seq);
///     }
///     Ok::<_, trove_client::ClientError>(())
/// });
/// for hunt in 0..100 {
///     producer.send_wait(HuntEvent::join(hunt, 1)).await?;
/// }
/// producer.close().await?;
/// reader.await.expect("reader task")?;
/// # Ok(()) }
/// ```
pub struct ClusterProducer<G: WireGame> {
    config: ClusterConfig,
    resolver: Arc<Resolver>,
    base_id: u64,
    partitions: u32,
    /// By partition; made at the partition's first event.
    producers: Vec<Option<Producer<G>>>,
    /// Each partition's `Acks` is read by a task that forwards its answers
    /// here; `None` once closed.
    acks: Option<mpsc::Sender<ClusterAck<G>>>,
    /// The partition the last `send` handed an event back for: `ready`
    /// waits for it.
    blocked: Option<u32>,
}

impl<G: WireGame> fmt::Debug for ClusterProducer<G> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterProducer")
            .field("game", &G::NAME)
            .field("base_id", &self.base_id)
            .field("partitions", &self.partitions)
            .field("connected", &self.producers.iter().filter(|p| p.is_some()).count())
            .finish_non_exhaustive()
    }
}

impl<G: WireGame> ClusterProducer<G> {
    /// Fetches the cluster map (from each seed in turn) and learns the
    /// partition count. Connects to no node yet: each partition's producer
    /// connects at its first event. The first map's failure is returned,
    /// not retried.
    pub async fn connect(config: ClusterConfig) -> Result<(ClusterProducer<G>, ClusterAcks<G>), ClientError> {
        config.validate()?;
        let resolver = Arc::new(
            Resolver::connect(
                &config.seeds,
                config.client.tls.clone(),
                config.map_timeout,
                config.client.token.clone(),
            )
            .await?,
        );
        let partitions = resolver.partitions();
        let base_id = config.producer_id.unwrap_or_else(random_producer_id);
        if (0..partitions).any(|p| partition_producer_id(base_id, p) == 0) {
            // One base in 2^63 per partition: choose another.
            return Err(ClientError::Config {
                field: "producer_id",
                reason: "derives the id 0 for a partition".into(),
            });
        }
        // Room for a window of answers; each partition's forwarding task
        // holds one more while it waits, and its producer's window bounds
        // the rest.
        let (tx, rx) = mpsc::channel(config.client.window_batches as usize);
        let producer = ClusterProducer {
            producers: std::iter::repeat_with(|| None).take(partitions as usize).collect(),
            config,
            resolver,
            base_id,
            partitions,
            acks: Some(tx),
            blocked: None,
        };
        Ok((producer, ClusterAcks { rx }))
    }

    /// The cluster's partition count.
    pub fn partitions(&self) -> u32 {
        self.partitions
    }

    /// The partition `event` goes to.
    #[inline]
    pub fn partition_of(&self, event: &G::Event) -> u32 {
        shard_of(G::world_of(event), self.partitions as usize) as u32
    }

    /// The producer id presented for `partition`.
    pub fn producer_id(&self, partition: u32) -> u64 {
        partition_producer_id(self.base_id, partition)
    }

    /// Appends `event` to its partition's open batch and returns the
    /// partition and the event's sequence number there. Never waits:
    /// [`SendError::Full`] when that partition has no producer yet or its
    /// window and open batch are full (await [`ready`](Self::ready), then
    /// send again); [`SendError::Closed`] once that partition's producer
    /// has failed or this one was closed.
    #[inline]
    pub fn send(&mut self, event: G::Event) -> Result<(u32, u64), SendError<G::Event>> {
        let partition = self.partition_of(&event);
        match &mut self.producers[partition as usize] {
            Some(p) => match p.send(event) {
                Ok(seq) => Ok((partition, seq)),
                Err(e) => {
                    if matches!(e, SendError::Full(_)) {
                        self.blocked = Some(partition);
                    }
                    Err(e)
                }
            },
            None if self.acks.is_none() => Err(SendError::Closed(event, ClientError::Closed)),
            None => {
                self.blocked = Some(partition);
                Err(SendError::Full(event))
            }
        }
    }

    /// Sends `event`, connecting its partition or waiting for room first
    /// if needed.
    pub async fn send_wait(&mut self, event: G::Event) -> Result<(u32, u64), ClientError> {
        let mut event = event;
        loop {
            match self.send(event) {
                Ok(sent) => return Ok(sent),
                Err(SendError::Full(e)) => {
                    event = e;
                    self.ready().await?;
                }
                Err(SendError::Closed(_, e)) => return Err(e),
            }
        }
    }

    /// Waits until `send` will take an event for the partition it last
    /// handed one back for: connects that partition's producer (to the
    /// owner the map names, retried while the partition moves, for at
    /// most `failover_timeout`) or waits for its window.
    pub async fn ready(&mut self) -> Result<(), ClientError> {
        let Some(partition) = self.blocked else { return Ok(()) };
        self.producer(partition).await?.ready().await?;
        self.blocked = None;
        Ok(())
    }

    /// Closes every partition's open batch, waiting for window room.
    pub async fn flush(&mut self) -> Result<(), ClientError> {
        for p in self.producers.iter_mut().flatten() {
            p.flush().await?;
        }
        Ok(())
    }

    /// Flushes, then waits until every event sent so far is answered.
    pub async fn drain(&mut self) -> Result<(), ClientError> {
        self.flush().await?;
        for p in self.producers.iter_mut().flatten() {
            p.drain().await?;
        }
        Ok(())
    }

    /// Sleeps until `deadline`, closing open batches as their `linger`
    /// runs out meanwhile (checked every `linger`, so a batch waits up to
    /// twice it): what a producer that paces its events awaits between
    /// them.
    pub async fn idle_until(&mut self, deadline: Instant) -> Result<(), ClientError> {
        let linger = self.config.client.linger.max(Duration::from_micros(100));
        loop {
            let now = Instant::now();
            if now >= deadline || self.producers.iter().flatten().all(|p| p.open_events() == 0) {
                break;
            }
            tokio::time::sleep_until(deadline.min(now + linger)).await;
            for p in self.producers.iter_mut().flatten() {
                p.try_flush()?;
            }
        }
        tokio::time::sleep_until(deadline).await;
        Ok(())
    }

    /// Events in the partitions' open batches, not yet sent.
    pub fn open_events(&self) -> u32 {
        self.producers.iter().flatten().map(Producer::open_events).sum()
    }

    /// Closes every partition's open batch that its window has room for,
    /// without waiting: true if every open batch went out (or none was
    /// open). What a caller that paces its events and never awaits (a
    /// load generator's pacer thread) calls where
    /// [`idle_until`](Self::idle_until) would wait.
    pub fn try_flush(&mut self) -> Result<bool, ClientError> {
        let mut all = true;
        for p in self.producers.iter_mut().flatten() {
            if p.open_events() > 0 {
                all &= p.try_flush()?;
            }
        }
        Ok(all)
    }

    /// Each partition's counters, for the partitions sent to.
    pub fn stats(&self) -> Vec<(u32, ProducerStats)> {
        self.connected().map(|(i, p)| (i, p.stats())).collect()
    }

    /// Drains and disconnects every partition's producer; the
    /// [`ClusterAcks`] yields what is left, then ends. Returns each
    /// partition's final counters, or the first error (every producer is
    /// closed either way).
    pub async fn close(mut self) -> Result<Vec<(u32, ProducerStats)>, ClientError> {
        self.acks = None;
        // Every partition's last batch goes out first, so that they drain
        // side by side while the closes below wait one after another. A
        // failure here is the close's to report.
        for p in self.producers.iter_mut().flatten() {
            let _ = p.flush().await;
        }
        let mut stats = Vec::new();
        let mut first_error = None;
        for (i, p) in self.producers.iter_mut().enumerate() {
            if let Some(p) = p.take() {
                match p.close().await {
                    Ok(s) => stats.push((i as u32, s)),
                    Err(e) => {
                        first_error.get_or_insert(e);
                    }
                }
            }
        }
        first_error.map_or(Ok(stats), Err)
    }

    fn connected(&self) -> impl Iterator<Item = (u32, &Producer<G>)> {
        self.producers.iter().enumerate().filter_map(|(i, p)| Some((i as u32, p.as_ref()?)))
    }

    /// The partition's producer, connected now if it has none.
    async fn producer(&mut self, partition: u32) -> Result<&mut Producer<G>, ClientError> {
        let i = partition as usize;
        if self.producers[i].is_none() {
            let Some(tx) = self.acks.clone() else { return Err(ClientError::Closed) };
            let client = ClientConfig { producer_id: Some(self.producer_id(partition)), ..self.config.client.clone() };
            let route = Route::Cluster(ClusterRoute {
                resolver: self.resolver.clone(),
                partition,
                current: None,
                refused: false,
                failover_timeout: self.config.failover_timeout,
            });
            let (producer, acks) = Producer::<G>::connect_routed(client, route).await?;
            let name = format!("trove-client cluster acks partition {partition}");
            drop(crate::task::spawn_named(&name, forward(partition, acks, tx)));
            self.producers[i] = Some(producer);
        }
        Ok(self.producers[i].as_mut().expect("connected above"))
    }
}

/// Moves one partition's answers into the merged stream. Stops when the
/// partition's producer ends, or when nobody reads the merged stream (its
/// `Acks` is then dropped: the producer releases answers as they come).
async fn forward<G: WireGame>(partition: u32, mut acks: Acks<G>, tx: mpsc::Sender<ClusterAck<G>>) {
    while let Some(answer) = acks.next().await {
        if tx.send((partition, answer)).await.is_err() {
            return;
        }
    }
}

/// The answers of every partition's producer, each partition's in sequence
/// order: `Ok` for an acknowledged batch, `Err(BatchRefused)` or
/// `Err(SequenceReused)` for a batch refused (the partition goes on), or
/// the error that ended a partition's producer.
pub struct ClusterAcks<G: WireGame> {
    rx: mpsc::Receiver<ClusterAck<G>>,
}

impl<G: WireGame> fmt::Debug for ClusterAcks<G> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterAcks").field("ready", &self.rx.len()).finish()
    }
}

impl<G: WireGame> ClusterAcks<G> {
    /// The next answer; `None` once the [`ClusterProducer`] is closed (or
    /// dropped) and every answer was taken. Cancel-safe.
    pub async fn next(&mut self) -> Option<ClusterAck<G>> {
        self.rx.recv().await
    }

    /// Like [`next`](Self::next), without waiting: `None` if no answer is
    /// ready now.
    pub fn try_next(&mut self) -> Option<ClusterAck<G>> {
        self.rx.try_recv().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cluster_config_names_its_bad_field() {
        let base = ClusterConfig::new(["a:1"]);
        assert!(base.validate().is_ok());
        let field = |c: ClusterConfig| match c.validate() {
            Err(ClientError::Config { field, .. }) => field,
            other => panic!("{other:?}"),
        };
        assert_eq!(field(ClusterConfig { seeds: vec![], ..base.clone() }), "seeds");
        assert_eq!(field(ClusterConfig { seeds: vec![String::new()], ..base.clone() }), "seeds");
        assert_eq!(field(ClusterConfig { seeds: vec!["a:1".into(); 65], ..base.clone() }), "seeds");
        let with_id = ClientConfig { producer_id: Some(3), ..base.client.clone() };
        assert_eq!(field(ClusterConfig { client: with_id, ..base.clone() }), "client.producer_id");
        assert_eq!(field(ClusterConfig { map_timeout: Duration::ZERO, ..base.clone() }), "map_timeout");
        assert_eq!(field(ClusterConfig { failover_timeout: Duration::ZERO, ..base.clone() }), "failover_timeout");
        let window = ClientConfig { window_batches: 0, ..base.client.clone() };
        assert_eq!(field(ClusterConfig { client: window, ..base }), "window_batches");
    }
}
