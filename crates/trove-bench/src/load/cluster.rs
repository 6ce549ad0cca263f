//! `trove bench --target` against a cluster node: the cluster found from
//! the target's control plane (`GET /cluster` on `--metrics`), and every
//! node's `/metrics` scraped around each step, summed for the step's
//! server figures and kept apart for each node's share
//! (docs/decisions/0047-bench-drives-a-cluster-and-takeovers-in-parallel.md).
//!
//! The producers then connect through the SDK's `ClusterProducer`
//! (`rig.rs`), which routes each event to its partition's owner.

use std::net::SocketAddr;
use std::time::Duration;

use trove_client::{ClusterMap, MapError, Token};

use super::model::NodeStep;
use super::scrape::{self, Scrape};

/// One `GET /cluster` or one node's `GET /metrics`, connect to last byte.
const CLUSTER_HTTP_TIMEOUT: Duration = Duration::from_secs(2);

/// How long the subscribers' hunts may take to be exported by their
/// owners to the nodes that relay them (a watch message each, sent at
/// once: milliseconds) before the run gives up.
const RELAY_READY_TIMEOUT: Duration = Duration::from_secs(10);

/// How often the owners' export counts are looked at meanwhile.
const RELAY_READY_POLL: Duration = Duration::from_millis(20);

/// The cluster a `--target` belongs to.
#[derive(Clone, Debug)]
pub(crate) struct ClusterTarget {
    /// Its name, as the map gives it.
    pub(crate) name: String,
    pub(crate) partitions: u32,
    /// The control planes the SDK fetches the map from: the one given
    /// first, then every node's.
    pub(crate) seeds: Vec<String>,
    /// The nodes alive when the run began, each with its control plane
    /// (`None`: the map gives none, or it does not resolve).
    pub(crate) nodes: Vec<(String, Option<SocketAddr>)>,
    /// Their data planes, by the same index: where subscribers connect.
    pub(crate) ends: Vec<NodeEnds>,
    /// Each partition's owner when the run began, by index in `nodes`
    /// (`None`: no owner, or one the map does not list).
    pub(crate) owners: Vec<Option<usize>>,
}

/// A node's data planes, as its map entry gives them (`None`: none given,
/// or it does not resolve).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(crate) struct NodeEnds {
    pub(crate) tcp: Option<SocketAddr>,
    pub(crate) ws: Option<SocketAddr>,
}

/// Asks the control plane at `metrics` for the cluster map: `None` if the
/// node is not in a cluster (it answers 404 `not_a_cluster`).
pub(crate) fn detect(metrics: SocketAddr, token: Option<&Token>) -> Result<Option<ClusterTarget>, String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("runtime for GET /cluster: {e}"))?;
    let fetched =
        runtime.block_on(trove_client::fetch_cluster_map_as(&metrics.to_string(), CLUSTER_HTTP_TIMEOUT, token));
    match fetched {
        Ok(map) => Ok(Some(target_of(metrics, &map))),
        Err(MapError::NotACluster) => Ok(None),
        Err(e) => Err(format!("GET http://{metrics}/cluster (is the target in a cluster?): {e}")),
    }
}

fn target_of(metrics: SocketAddr, map: &ClusterMap) -> ClusterTarget {
    let mut seeds = vec![metrics.to_string()];
    for control in map.nodes.iter().filter_map(|n| n.control.clone()) {
        if !seeds.contains(&control) && seeds.len() < trove_client::CLUSTER_SEEDS_MAX {
            seeds.push(control);
        }
    }
    let nodes = map
        .nodes
        .iter()
        .map(|n| (n.node.clone(), n.control.as_deref().and_then(|c| crate::cli::host_port(c).ok())))
        .collect();
    let resolve = |a: Option<&str>| a.and_then(|a| crate::cli::host_port(a).ok());
    let ends =
        map.nodes.iter().map(|n| NodeEnds { tcp: resolve(Some(&n.tcp)), ws: resolve(n.ws.as_deref()) }).collect();
    let owners = map
        .owners
        .iter()
        .map(|o| o.as_ref().and_then(|o| map.nodes.iter().position(|n| n.node == o.node.node)))
        .collect();
    ClusterTarget { name: map.cluster.clone(), partitions: map.partitions, seeds, nodes, ends, owners }
}

impl ClusterTarget {
    /// Where the subscribers connect: every node whose map entry gives a
    /// data plane (TCP, or WebSocket with `ws`) that resolves, by index in
    /// `nodes`. Subscriber `i` goes to the `i % len`-th: spread over the
    /// nodes, as a load balancer in front of a live event spreads its
    /// spectators, so the run times both a hunt's owner delivering to its
    /// own spectators and the other nodes relaying to theirs
    /// (docs/decisions/0046).
    pub(crate) fn subscriber_nodes(&self, ws: bool) -> Result<Vec<(usize, SocketAddr)>, String> {
        let at: Vec<_> =
            self.ends.iter().enumerate().filter_map(|(i, e)| Some((i, if ws { e.ws } else { e.tcp }?))).collect();
        if at.is_empty() {
            let what = if ws { "WebSocket" } else { "TCP" };
            return Err(format!("cluster {}: its map gives no node's {what} address for the subscribers", self.name));
        }
        Ok(at)
    }

    /// How many hunts each node must export for the subscribers: for each
    /// owner (by index in `nodes`), the distinct hunts of its partitions
    /// that a subscriber on another node watches (`on[i]`: subscriber `i`'s
    /// node, `hunts[i]` its hunt).
    pub(crate) fn exports_needed(&self, hunts: &[u32], on: &[usize]) -> Vec<u64> {
        let mut needed: Vec<Vec<u32>> = vec![Vec::new(); self.nodes.len()];
        for (&hunt, &node) in hunts.iter().zip(on) {
            let p = trove_core::shard_of(hunt, self.partitions.max(1) as usize);
            if let Some(Some(owner)) = self.owners.get(p)
                && *owner != node
                && let Some(list) = needed.get_mut(*owner)
                && !list.contains(&hunt)
            {
                list.push(hunt);
            }
        }
        needed.iter().map(|l| l.len() as u64).collect()
    }

    /// Waits until every owner exports at least the hunts `needed` says
    /// (its `trove_cluster_relay_hunts_exported`), so that a relayed
    /// subscriber's stream holds every update of its hunt from the first
    /// event the pacer sends, as a subscriber on the owner's does.
    pub(crate) fn wait_relays(&self, needed: &[u64]) -> Result<(), String> {
        let until = std::time::Instant::now() + RELAY_READY_TIMEOUT;
        loop {
            let short: Vec<String> = needed
                .iter()
                .enumerate()
                .filter(|&(_, &n)| n > 0)
                .filter_map(|(i, &n)| {
                    let (node, control) = &self.nodes[i];
                    let exported = control
                        .and_then(|c| scrape::get(c, CLUSTER_HTTP_TIMEOUT).ok())
                        .map(|s| s.sum("trove_cluster_relay_hunts_exported", &[]) as u64)
                        .unwrap_or(0);
                    (exported < n).then(|| format!("node {node} exports {exported} of {n} watched hunts"))
                })
                .collect();
            if short.is_empty() {
                return Ok(());
            }
            if std::time::Instant::now() >= until {
                return Err(format!(
                    "the subscribers' hunts were not relayed within {RELAY_READY_TIMEOUT:?}: {}",
                    short.join(", ")
                ));
            }
            std::thread::sleep(RELAY_READY_POLL);
        }
    }

    /// Every node's `/metrics` now, by its index in `nodes`; a node that
    /// does not answer is left out.
    pub(crate) fn scrape(&self) -> Vec<(usize, Scrape)> {
        self.nodes
            .iter()
            .enumerate()
            .filter_map(|(i, (_, control))| Some((i, scrape::get((*control)?, CLUSTER_HTTP_TIMEOUT).ok()?)))
            .collect()
    }

    /// The cluster's scrapes at a step's two ends: the samples of the
    /// nodes scraped at both, together (so that sums over series are the
    /// cluster's); `None` if no node answered both times.
    pub(crate) fn merged(before: &[(usize, Scrape)], after: &[(usize, Scrape)]) -> Option<(Scrape, Scrape)> {
        let (mut a, mut b) = (Scrape::default(), Scrape::default());
        for (i, s) in before {
            if let Some((_, t)) = after.iter().find(|(j, _)| j == i) {
                a.samples.extend(s.samples.iter().cloned());
                b.samples.extend(t.samples.iter().cloned());
            }
        }
        (!a.samples.is_empty()).then_some((a, b))
    }

    /// Each node's share of a step `seconds` long, for the nodes scraped
    /// at both ends.
    pub(crate) fn node_steps(
        &self,
        before: &[(usize, Scrape)],
        after: &[(usize, Scrape)],
        seconds: f64,
    ) -> Vec<NodeStep> {
        let seconds = seconds.max(1e-9);
        before
            .iter()
            .filter_map(|(i, a)| {
                let (_, b) = after.iter().find(|(j, _)| j == i)?;
                let d = |name: &str| (b.sum(name, &[]) - a.sum(name, &[])).max(0.0);
                let (node, control) = &self.nodes[*i];
                Some(NodeStep {
                    node: node.clone(),
                    control: control.map_or_else(String::new, |c| c.to_string()),
                    acknowledged_events_per_s: d("trove_events_acknowledged_total") / seconds,
                    cpu_cores: d("process_cpu_seconds_total") / seconds,
                    partitions_owned: b.sum("trove_cluster_partitions_owned", &[]),
                })
            })
            .collect()
    }
}

impl NodeStep {
    /// The node's progress line.
    pub(crate) fn line(&self) -> String {
        format!(
            "node {}: acknowledged {}/s, {:.2} cores, {} partitions",
            self.node,
            crate::text::human(self.acknowledged_events_per_s),
            self.cpu_cores,
            self.partitions_owned
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cluster_figures_are_the_nodes_scraped_at_both_ends() {
        let target = ClusterTarget {
            name: "c".into(),
            partitions: 4,
            seeds: vec!["127.0.0.1:1".into()],
            nodes: vec![("a".into(), None), ("b".into(), None), ("c".into(), None)],
            ends: vec![NodeEnds::default(); 3],
            owners: vec![Some(0), Some(1), Some(0), None],
        };
        let at = |acked: u64, cpu: f64, owned: u32| {
            scrape::parse(&format!(
                "trove_events_acknowledged_total {acked}\nprocess_cpu_seconds_total {cpu}\n\
                 trove_cluster_partitions_owned {owned}\n"
            ))
        };
        // Node c did not answer at the end: it counts nowhere.
        let before = vec![(0, at(100, 1.0, 2)), (1, at(1000, 2.0, 2)), (2, at(7, 0.0, 0))];
        let after = vec![(0, at(2100, 2.0, 2)), (1, at(5000, 2.5, 2))];
        let nodes = target.node_steps(&before, &after, 2.0);
        let got: Vec<_> = nodes.iter().map(|n| (n.node.as_str(), n.acknowledged_events_per_s, n.cpu_cores)).collect();
        assert_eq!(got, [("a", 1000.0, 0.5), ("b", 2000.0, 0.25)]);
        let (a, b) = ClusterTarget::merged(&before, &after).expect("two nodes at both ends");
        let d = b.sum("trove_events_acknowledged_total", &[]) - a.sum("trove_events_acknowledged_total", &[]);
        assert_eq!(d, 6000.0);
        assert!(ClusterTarget::merged(&before[2..], &after).is_none());
    }
}
