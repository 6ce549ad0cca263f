//! Where a producer's connections go: one fixed address (a single node),
//! or the current owner of one partition of a cluster, found in the
//! cluster map ([`Resolver`]) and found again after a `not_owner`, a lost
//! connection or a failed connect.
//!
//! The producer's task asks its route for a connection at the start and
//! at every reconnect; the rest of the task (resends with the original
//! sequence numbers, BUSY, the window) is the same for both. The fixed
//! route costs the single-node path one `match` per connection.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Mutex;
use trove_proto::ErrorCode;
use trove_proto::WireGame;
use trove_proto::frame::Hello;

use crate::cluster::{ClusterMap, MapError, PartitionOwner, fetch_cluster_map_using};
use crate::config::ClientConfig;
use crate::conn::{self, Conn};
use crate::error::ClientError;

/// Where a producer connects.
#[derive(Debug)]
pub(crate) enum Route {
    /// `ClientConfig::addr`, always.
    Fixed,
    /// The owner of one partition.
    Cluster(ClusterRoute),
}

/// Why the route is asked for a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Why {
    /// The first connection: the map the producer holds will do.
    First,
    /// The connection was lost or could not be made: a fresh map, whose
    /// owner may be the same node (it may have been a hiccup).
    Lost,
    /// The node refused the partition (`not_owner`): a fresh map naming a
    /// later owner than the one that refused.
    Moved,
}

impl Why {
    /// What the error that ended a connection (or an attempt) says.
    pub fn after(e: &ClientError) -> Why {
        if e.server_code() == Some(ErrorCode::NotOwner) { Why::Moved } else { Why::Lost }
    }
}

/// A connection target: an owner's address and the epoch of the lease it
/// was named under, from the map of this generation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Target {
    pub tcp: String,
    pub epoch: u64,
    /// The resolver's map generation it came from.
    pub generation: u64,
}

#[derive(Debug)]
pub(crate) struct ClusterRoute {
    pub resolver: Arc<Resolver>,
    pub partition: u32,
    /// The owner connected to (or tried) last.
    pub current: Option<Target>,
    /// `current` answered `not_owner`: only a later owner will do.
    pub refused: bool,
    /// How long the producer looks for a partition's owner before it gives
    /// up (with `ClientError::ReconnectFailed`).
    pub failover_timeout: Duration,
}

impl Route {
    /// One connection attempt: the fixed address, or the owner the map
    /// names for the partition.
    pub async fn connect<G: WireGame>(
        &mut self,
        config: &ClientConfig,
        hello: Hello,
        why: Why,
    ) -> Result<Conn, ClientError> {
        match self {
            Route::Fixed => conn::connect::<G>(&config.addr, config.tls.as_ref(), config.connect_timeout, hello).await,
            Route::Cluster(route) => {
                // A refusal holds until another owner is tried: the
                // attempts in between (no owner yet, a lagging map) must
                // not lead back to the node that refused.
                route.refused |= why == Why::Moved;
                let after = (why != Why::First).then(|| (route.current.clone(), route.refused));
                let target = route.resolver.owner(route.partition, after).await?;
                if route.current.as_ref().is_none_or(|c| c.epoch != target.epoch || c.tcp != target.tcp) {
                    route.refused = false;
                }
                let result = conn::connect::<G>(&target.tcp, config.tls.as_ref(), config.connect_timeout, hello).await;
                route.current = Some(target);
                result
            }
        }
    }

    /// Whether another attempt may succeed after `e`.
    pub fn retryable(&self, e: &ClientError) -> bool {
        match self {
            Route::Fixed => e.retryable(),
            Route::Cluster(_) => cluster_retryable(e),
        }
    }

    /// How long reconnecting may take, if bounded in time.
    pub fn failover_timeout(&self) -> Option<Duration> {
        match self {
            Route::Fixed => None,
            Route::Cluster(route) => Some(route.failover_timeout),
        }
    }

    /// The partition, for messages and task names.
    pub fn partition(&self) -> Option<u32> {
        match self {
            Route::Fixed => None,
            Route::Cluster(route) => Some(route.partition),
        }
    }
}

/// Whether a cluster producer tries again after `e`: everything a single
/// node's producer retries, and `not_owner` (the partition moved), no
/// owner yet, and a map that could not be fetched (every node answering
/// maps may be restarting). Not: an incompatible server or cluster, a
/// protocol violation, a closing error that says the client is wrong.
/// The attempts and the failover timeout bound the retries.
pub(crate) fn cluster_retryable(e: &ClientError) -> bool {
    match e {
        ClientError::Map { .. } | ClientError::NoOwner { .. } => true,
        e if e.server_code() == Some(ErrorCode::NotOwner) => true,
        e => e.retryable(),
    }
}

/// How an owner in a fresh map compares with the one a producer left.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Pick {
    /// Connect to it.
    Use,
    /// The same owner (or an older one) as the one that refused: this map
    /// lags; look at another node's.
    Stale,
    /// No owner in this map.
    None,
}

/// The rule for a partition's entry in a fresh map. `after`: the owner
/// connected to last (`None`: any owner will do) and whether it refused
/// the partition. An older epoch than the last owner's is a map that lags
/// behind (a later owner always has a higher epoch); after a refusal the
/// same epoch lags too.
pub(crate) fn pick(owner: Option<&PartitionOwner>, after: Option<(u64, bool)>) -> Pick {
    let Some(owner) = owner else { return Pick::None };
    match after {
        None => Pick::Use,
        Some((epoch, true)) if owner.epoch <= epoch => Pick::Stale,
        Some((epoch, false)) if owner.epoch < epoch => Pick::Stale,
        Some(_) => Pick::Use,
    }
}

/// The cluster map, shared by a cluster producer's partitions, and how to
/// fetch it again.
#[derive(Debug)]
pub(crate) struct Resolver {
    /// The cluster's name and partition count, from the first map: a map
    /// from elsewhere is refused.
    cluster: String,
    partitions: u32,
    map_timeout: Duration,
    /// Presented to the control planes (`Authorization: Bearer`).
    token: Option<crate::Token>,
    /// The control planes speak HTTPS (the client's TLS settings).
    tls: Option<crate::ClientTls>,
    /// One fetch at a time: partitions that lost the same node wait for
    /// the first one's fetch and use its map.
    state: Mutex<ResolverState>,
}

#[derive(Debug)]
struct ResolverState {
    map: ClusterMap,
    /// Bumped per map fetched.
    generation: u64,
    /// Where maps come from: the configured seeds, then the control planes
    /// of the nodes the maps listed (bounded by `CLUSTER_NODES_MAX`).
    sources: Vec<String>,
    /// The source that answered last: asked first next time.
    preferred: usize,
}

impl Resolver {
    /// Fetches the first map, from each seed in turn; the error of the
    /// last seed if none answers with one.
    pub async fn connect(
        seeds: &[String],
        tls: Option<crate::ClientTls>,
        map_timeout: Duration,
        token: Option<crate::Token>,
    ) -> Result<Resolver, ClientError> {
        let mut last = None;
        for (i, seed) in seeds.iter().enumerate() {
            match fetch_cluster_map_using(seed, tls.as_ref(), token.as_ref(), map_timeout).await {
                Ok(map) => {
                    let mut state =
                        ResolverState { map: map.clone(), generation: 1, sources: seeds.to_vec(), preferred: i };
                    state.learn(&map);
                    return Ok(Resolver {
                        cluster: map.cluster.clone(),
                        partitions: map.partitions,
                        map_timeout,
                        token,
                        tls,
                        state: Mutex::new(state),
                    });
                }
                Err(error) => last = Some(ClientError::Map { addr: seed.clone(), error }),
            }
        }
        Err(last.unwrap_or(ClientError::Config { field: "seeds", reason: "is empty".into() }))
    }

    pub fn partitions(&self) -> u32 {
        self.partitions
    }

    /// The owner to connect to for `partition`. `after`: `None` for a
    /// first connection (the map held will do); else the target connected
    /// to last and whether it refused the partition: then a map fetched
    /// since that target was chosen, from each source in turn until one
    /// names an owner `pick` takes. If none does, `NoOwner` (an older owner
    /// than the last cannot hold the partition now: epochs only grow), or
    /// the last source's error if no source gave a map.
    pub async fn owner(&self, partition: u32, after: Option<(Option<Target>, bool)>) -> Result<Target, ClientError> {
        let mut st = self.state.lock().await;
        let target = |st: &ResolverState, o: &PartitionOwner| Target {
            tcp: o.node.tcp.clone(),
            epoch: o.epoch,
            generation: st.generation,
        };
        let (last, refused) = match after {
            None => match st.map.owner_of(partition) {
                Some(o) => return Ok(target(&st, o)),
                None => (None, false),
            },
            Some((last, refused)) => (last, refused),
        };
        let rule = last.as_ref().map(|t| (t.epoch, refused));
        // A map fetched since `last` was chosen (by another partition's
        // refresh, say) serves if it names an owner the rule takes.
        let since = last.as_ref().map_or(0, |t| t.generation);
        if st.generation > since
            && let Some(o) = st.map.owner_of(partition).filter(|o| pick(Some(o), rule) == Pick::Use)
        {
            return Ok(target(&st, o));
        }
        let mut answered = false;
        let mut error = None;
        let n = st.sources.len();
        for k in 0..n {
            let i = (st.preferred + k) % n;
            let addr = st.sources[i].clone();
            let map =
                match fetch_cluster_map_using(&addr, self.tls.as_ref(), self.token.as_ref(), self.map_timeout).await {
                    Ok(map) if map.cluster != self.cluster || map.partitions != self.partitions => {
                        let why = format!(
                            "cluster `{}` of {} partitions, this producer routes for `{}` of {}",
                            map.cluster, map.partitions, self.cluster, self.partitions
                        );
                        error = Some(ClientError::Map { addr, error: MapError::Invalid(why) });
                        continue;
                    }
                    Ok(map) => map,
                    Err(e) => {
                        error = Some(ClientError::Map { addr, error: e });
                        continue;
                    }
                };
            answered = true;
            st.generation += 1;
            st.preferred = i;
            st.learn(&map);
            let owner = map.owner_of(partition).cloned();
            st.map = map;
            if let Some(o) = owner.filter(|o| pick(Some(o), rule) == Pick::Use) {
                return Ok(target(&st, &o));
            }
        }
        if answered {
            return Err(ClientError::NoOwner { partition });
        }
        Err(error.unwrap_or(ClientError::NoOwner { partition }))
    }
}

impl ResolverState {
    /// Adds the control planes a map lists to the sources, so that maps
    /// still come when the seeds are gone.
    fn learn(&mut self, map: &ClusterMap) {
        for n in &map.nodes {
            if let Some(c) = &n.control
                && !self.sources.contains(c)
                && self.sources.len() < crate::cluster::CLUSTER_NODES_MAX + 64
            {
                self.sources.push(c.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ServerError;
    use crate::cluster::ClusterNode;

    fn owner(epoch: u64) -> PartitionOwner {
        let node = ClusterNode { node: "a".into(), tcp: "a:1".into(), ws: None, control: None };
        PartitionOwner { node, epoch }
    }

    #[test]
    fn a_refusal_wants_a_later_owner_a_lost_connection_any_not_older() {
        assert_eq!(pick(None, None), Pick::None);
        assert_eq!(pick(Some(&owner(5)), None), Pick::Use);
        // After `not_owner` from the owner of epoch 5.
        assert_eq!(pick(Some(&owner(5)), Some((5, true))), Pick::Stale);
        assert_eq!(pick(Some(&owner(4)), Some((5, true))), Pick::Stale);
        assert_eq!(pick(Some(&owner(6)), Some((5, true))), Pick::Use);
        assert_eq!(pick(None, Some((5, true))), Pick::None);
        // After a lost connection to it: the same owner will do, an older
        // one is a lagging map.
        assert_eq!(pick(Some(&owner(5)), Some((5, false))), Pick::Use);
        assert_eq!(pick(Some(&owner(4)), Some((5, false))), Pick::Stale);
        assert_eq!(pick(Some(&owner(9)), Some((5, false))), Pick::Use);
    }

    #[test]
    fn a_cluster_producer_retries_moves_and_missing_owners_not_broken_servers() {
        let server = |code: ErrorCode| ClientError::Server(ServerError { raw_code: code as u16, message: "m".into() });
        let map = ClientError::Map { addr: "x:1".into(), error: MapError::Timeout };
        let fixed = Route::Fixed;
        for (e, in_cluster, alone) in [
            (server(ErrorCode::NotOwner), true, false),
            (server(ErrorCode::Unavailable), true, true),
            (server(ErrorCode::ShuttingDown), true, true),
            (ClientError::NoOwner { partition: 3 }, true, true),
            (map, true, false),
            (server(ErrorCode::UnsupportedVersion), false, false),
            (server(ErrorCode::Malformed), false, false),
            (ClientError::Incompatible("x".into()), false, false),
            (ClientError::Protocol("x".into()), false, false),
        ] {
            assert_eq!(cluster_retryable(&e), in_cluster, "{e}");
            assert_eq!(fixed.retryable(&e), alone, "{e}");
        }
        assert_eq!(Why::after(&server(ErrorCode::NotOwner)), Why::Moved);
        assert_eq!(Why::after(&server(ErrorCode::Unavailable)), Why::Lost);
        let io = ClientError::Io { during: "reading", source: Arc::new(std::io::ErrorKind::UnexpectedEof.into()) };
        assert_eq!(Why::after(&io), Why::Lost);
    }
}
