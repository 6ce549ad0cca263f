//! The bench's hunt range on a running server (`--target`): hunts
//! `base..base + hunts` ([`HuntRange`]), checked free before a single
//! event is played into them (docs/decisions/0049).
//!
//! Two checks, both before play: the control plane's `GET /hunts` when
//! `--metrics` names it (nothing written yet), and in any case the answers
//! to the bench's own creates, sent on one connection that asks for
//! outcomes: a create answered `hunt_exists` stops the run. `--force`
//! skips both and plays into whatever is there.

use std::net::SocketAddr;
use std::time::Duration;

use trove_client::{ClientConfig, ClusterConfig, ClusterProducer, Producer};
use trove_hunt::{HuntEvent, HuntOutcome, Reject, TreasureHunt};
use trove_workload::WorkloadSpec;

use super::cluster::ClusterTarget;
use super::{LoadArgs, say};
use crate::http;

/// The default first hunt of the bench's range against a `--target`: far
/// above the small ids people create by hand, and below 2^31 so the ids
/// stay positive in any signed 32-bit reader.
pub const TARGET_HUNT_BASE_DEFAULT: u32 = 1_000_000_000;

/// Hunt ids a refusal names at most.
const NAMED_MAX: usize = 10;

/// How long the control plane may take to list the range.
const LIST_TIMEOUT: Duration = Duration::from_secs(10);

/// Hunts one `GET /hunts` page asks for (the control plane's largest).
const LIST_PAGE: usize = 1000;

/// Pages read from one node's `GET /hunts` at most: past them the
/// listing is incomplete (the refusal names no next free base).
const LIST_PAGES_MAX: usize = 16;

/// How long the creates may take to be answered: a base, and a little
/// more per hunt (a workload allows up to 2^20 hunts, so no fixed bound
/// fits every run).
const CREATES_TIMEOUT_BASE: Duration = Duration::from_secs(60);
const CREATES_TIMEOUT_PER_HUNT: Duration = Duration::from_millis(1);

fn creates_timeout(hunts: u32) -> Duration {
    CREATES_TIMEOUT_BASE + CREATES_TIMEOUT_PER_HUNT * hunts
}

/// The hunts a run creates and plays into: `base..base + count`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HuntRange {
    pub base: u32,
    pub count: u32,
}

impl HuntRange {
    /// `count` hunts from `base`; an error unless one past the last is a
    /// hunt id too (so `end` is).
    pub fn new(base: u32, count: u32) -> Result<Self, String> {
        match base.checked_add(count) {
            Some(_) => Ok(Self { base, count }),
            None => Err(format!(
                "--hunt-base {base}: the workload's {count} hunts would pass the largest hunt id {}",
                u32::MAX
            )),
        }
    }

    /// One past the last hunt.
    pub fn end(&self) -> u32 {
        self.base + self.count
    }

    pub fn contains(&self, hunt: u32) -> bool {
        (self.base..self.end()).contains(&hunt)
    }
}

impl std::fmt::Display for HuntRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "hunts {}..={}", self.base, self.end() - 1)
    }
}

/// The refusal: the range, where the hunts were found, the first of them,
/// and the next free base if the listing knows it.
fn refusal(range: HuntRange, found: &[u32], more: bool, how: &str, next: Option<u32>) -> String {
    let ids = found.iter().map(u32::to_string).collect::<Vec<_>>().join(", ");
    let way_out = match next {
        Some(n) => format!("choose a free range with --hunt-base N (--hunt-base {n} is free)"),
        None => "choose a free range with --hunt-base N".to_string(),
    };
    format!(
        "the target already holds hunts in the bench's {range} ({how}: {ids}{}): trove bench will not play into \
         existing hunts; {way_out}, or pass --force to play into them anyway",
        if more { ", ..." } else { "" },
    )
}

/// The lowest base at or above `range.base` whose `range.count` hunts are
/// all free, given `ids` (ascending, every id at or above `range.base`
/// that the target holds up to where the listing stopped; `complete`:
/// it did not stop early). `None` when the listing does not reach a gap
/// or the free range would pass the largest hunt id.
fn next_free_base(range: HuntRange, ids: &[u32], complete: bool) -> Option<u32> {
    let count = u64::from(range.count);
    let mut candidate = u64::from(range.base);
    let mut gap = false;
    for &id in ids {
        let id = u64::from(id);
        if id >= candidate + count {
            gap = true;
            break;
        }
        if id >= candidate {
            candidate = id + 1;
        }
    }
    if !gap && !complete {
        return None;
    }
    let base = u32::try_from(candidate).ok()?;
    HuntRange::new(base, range.count).ok().map(|r| r.base)
}

/// The hunt ids at or above `range.base` that `GET /hunts` lists on the
/// control plane at `control`, ascending, page after page up to
/// [`LIST_PAGES_MAX`] (stopping once past the range), and whether the
/// listing reached its end. `Err` when the list cannot be had (the creates
/// still check).
fn listed(control: SocketAddr, range: HuntRange) -> Result<(Vec<u32>, bool), String> {
    let mut after = range.base.checked_sub(1).map(u64::from);
    let mut ids = Vec::new();
    for _ in 0..LIST_PAGES_MAX {
        let path = match after {
            Some(after) => format!("/hunts?after={after}&limit={LIST_PAGE}"),
            None => format!("/hunts?limit={LIST_PAGE}"),
        };
        let reply = http::get(control, &path, LIST_TIMEOUT).map_err(|e| e.to_string())?;
        if reply.status != 200 {
            return Err(format!("GET {path} answered {}", reply.status));
        }
        let v: serde_json::Value = serde_json::from_str(&reply.body).map_err(|e| format!("GET {path}: {e}"))?;
        let hunts = v.get("hunts").and_then(|h| h.as_array()).ok_or(format!("GET {path}: no `hunts` list"))?;
        for h in hunts {
            let id =
                h.get("id").and_then(serde_json::Value::as_u64).ok_or(format!("GET {path}: a hunt without an id"))?;
            if let Ok(id) = u32::try_from(id)
                && id >= range.base
            {
                ids.push(id);
            }
        }
        let next = v.get("next_after").and_then(serde_json::Value::as_u64);
        match next {
            // Moving forward only: a listing that does not is not trusted
            // further (it could loop).
            Some(n) if after.is_none_or(|a| n > a) => after = Some(n),
            Some(_) => return Err(format!("GET {path}: next_after does not move forward")),
            None => return Ok((ids, true)),
        }
    }
    Ok((ids, false))
}

/// Every node's listing merged (a cluster node lists only the hunts of
/// its own partitions): the ids ascending and without repeats, whether
/// every listing was complete, and the failures.
fn listed_all(controls: &[SocketAddr], range: HuntRange) -> (Vec<u32>, bool, Vec<String>) {
    let (mut ids, mut complete, mut failed) = (Vec::new(), true, Vec::new());
    for &control in controls {
        match listed(control, range) {
            Ok((found, all)) => {
                ids.extend(found);
                complete &= all;
            }
            Err(e) => {
                complete = false;
                failed.push(format!("{control}: {e}"));
            }
        }
    }
    ids.sort_unstable();
    ids.dedup();
    (ids, complete, failed)
}

/// Checks `range` is free on the target and creates its hunts there, on
/// one connection that asks for the creates' outcomes; an error naming the
/// range and what it found if any hunt of it already exists. With
/// `--force`, does nothing (the connections' setup creates the hunts,
/// whatever the answers). Against a cluster the creates go through the
/// SDK's routing, each to its hunt's owner (one node's `/hunts` lists
/// only what that node owns, so its answer is a first check only).
pub(super) fn claim(
    args: &LoadArgs,
    target: SocketAddr,
    range: HuntRange,
    cluster: Option<&ClusterTarget>,
) -> Result<(), String> {
    if args.force {
        say(&format!("--force: playing into {range} whatever they hold"));
        return Ok(());
    }
    // Every node of a cluster lists its own partitions' hunts only.
    let mut controls: Vec<SocketAddr> = args.target_metrics.into_iter().collect();
    if let Some(c) = cluster {
        controls.extend(c.nodes.iter().filter_map(|(_, control)| *control));
    }
    controls.sort_unstable();
    controls.dedup();
    if !controls.is_empty() {
        let (ids, complete, failed) = listed_all(&controls, range);
        for e in &failed {
            say(&format!("could not list the target's hunts ({e}); the creates' answers will tell"));
        }
        let found: Vec<u32> = ids.iter().copied().filter(|&id| range.contains(id)).collect();
        if !found.is_empty() {
            let how = match controls.as_slice() {
                [one] => format!("GET http://{one}/hunts lists"),
                _ => format!("GET /hunts on {} nodes lists", controls.len()),
            };
            let more = found.len() > NAMED_MAX;
            let next = next_free_base(range, &ids, complete);
            return Err(refusal(range, &found[..found.len().min(NAMED_MAX)], more, &how, next));
        }
    }
    let runtime = super::client_runtime(1)?;
    let found = match cluster {
        None => runtime.block_on(create_all(args, target, &args.workload, range))?,
        Some(c) => runtime.block_on(create_all_cluster(args, c, &args.workload, range))?,
    };
    if !found.is_empty() {
        let more = found.len() > NAMED_MAX;
        return Err(refusal(range, &found[..found.len().min(NAMED_MAX)], more, "creates answered hunt_exists", None));
    }
    say(&format!("created {range}, none there before"));
    Ok(())
}

/// Sends the creates of `range` and waits for every outcome; the hunts
/// whose create was answered `hunt_exists`.
async fn create_all(
    args: &LoadArgs,
    target: SocketAddr,
    spec: &WorkloadSpec,
    range: HuntRange,
) -> Result<Vec<u32>, String> {
    let config = ClientConfig {
        want_outcomes: true,
        token: args.token.clone(),
        tls: args.tls.clone(),
        ..ClientConfig::new(target.to_string())
    };
    let work = async {
        let (mut producer, mut acks) =
            Producer::<TreasureHunt>::connect(config).await.map_err(|e| format!("connecting to {target}: {e}"))?;
        // The creates take consecutive sequence numbers from `first`.
        let mut first = None;
        for i in 0..range.count {
            let seq = producer
                .send_wait(HuntEvent::create(range.base + i, spec.hunt_config(i)))
                .await
                .map_err(|e| format!("creating the bench's hunts: {e}"))?;
            first.get_or_insert(seq);
        }
        let first = first.ok_or("a workload has hunts")?;
        producer.drain().await.map_err(|e| format!("creating the bench's hunts: {e}"))?;
        let mut exists = Vec::new();
        let mut answered = 0u64;
        while answered < u64::from(range.count) {
            let ack = match acks.next().await {
                Some(Ok(a)) => a,
                Some(Err(e)) => return Err(format!("creating the bench's hunts: {e}")),
                None => return Err("creating the bench's hunts: the connection ended".into()),
            };
            for seq in ack.seqs() {
                let Some(i) = seq.checked_sub(first).filter(|&i| i < u64::from(range.count)) else { continue };
                answered += 1;
                if let Some(HuntOutcome::Rejected { reason: Reject::HuntExists }) = ack.outcome(seq) {
                    exists.push(range.base + i as u32);
                }
            }
        }
        let _ = producer.close().await;
        Ok(exists)
    };
    let timeout = creates_timeout(range.count);
    tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| format!("creating the bench's hunts: no answer within {} s", timeout.as_secs()))?
}

/// `create_all` through a cluster's routing: each create to its hunt's
/// partition owner; sequence numbers are per partition.
async fn create_all_cluster(
    args: &LoadArgs,
    cluster: &ClusterTarget,
    spec: &WorkloadSpec,
    range: HuntRange,
) -> Result<Vec<u32>, String> {
    let base = ClusterConfig::new(cluster.seeds.clone());
    let config = ClusterConfig {
        client: ClientConfig {
            want_outcomes: true,
            token: args.token.clone(),
            tls: args.tls.clone(),
            ..base.client.clone()
        },
        ..base
    };
    let work = async {
        let (mut producer, mut acks) = ClusterProducer::<TreasureHunt>::connect(config)
            .await
            .map_err(|e| format!("connecting to cluster {}: {e}", cluster.name))?;
        let mut hunt_of = std::collections::HashMap::with_capacity(range.count as usize);
        for i in 0..range.count {
            let at = producer
                .send_wait(HuntEvent::create(range.base + i, spec.hunt_config(i)))
                .await
                .map_err(|e| format!("creating the bench's hunts: {e}"))?;
            hunt_of.insert(at, range.base + i);
        }
        producer.drain().await.map_err(|e| format!("creating the bench's hunts: {e}"))?;
        let mut exists = Vec::new();
        let mut answered = 0u64;
        while answered < u64::from(range.count) {
            let (partition, ack) = match acks.next().await {
                Some((partition, Ok(a))) => (partition, a),
                Some((partition, Err(e))) => {
                    return Err(format!("creating the bench's hunts (partition {partition}): {e}"));
                }
                None => return Err("creating the bench's hunts: the cluster's producers ended".into()),
            };
            for seq in ack.seqs() {
                let Some(&hunt) = hunt_of.get(&(partition, seq)) else { continue };
                answered += 1;
                if let Some(HuntOutcome::Rejected { reason: Reject::HuntExists }) = ack.outcome(seq) {
                    exists.push(hunt);
                }
            }
        }
        let _ = producer.close().await;
        exists.sort_unstable();
        Ok(exists)
    };
    let timeout = creates_timeout(range.count);
    tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| format!("creating the bench's hunts: no answer within {} s", timeout.as_secs()))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_range_names_its_first_and_last_hunt_and_fits_in_an_id() {
        let r = HuntRange::new(1_000_000_000, 1000).unwrap();
        assert_eq!(r.to_string(), "hunts 1000000000..=1000000999");
        assert!(r.contains(1_000_000_999) && !r.contains(1_000_001_000) && !r.contains(999_999_999));
        // One past the last hunt must be an id too (`end`).
        assert!(HuntRange::new(u32::MAX - 10, 10).is_ok());
        assert!(HuntRange::new(u32::MAX - 9, 10).unwrap_err().contains("--hunt-base"));
    }

    #[test]
    fn a_refusal_names_the_range_what_it_found_and_the_ways_out() {
        let m = refusal(HuntRange { base: 0, count: 10 }, &[1, 3], false, "creates answered hunt_exists", None);
        assert!(m.contains("hunts 0..=9") && m.contains("1, 3") && m.contains("--hunt-base") && m.contains("--force"));
        let m = refusal(HuntRange { base: 0, count: 10 }, &[1, 3], false, "GET /hunts lists", Some(4));
        assert!(m.contains("--hunt-base 4 is free"), "{m}");
    }

    #[test]
    fn the_next_free_base_is_the_first_gap_wide_enough_if_the_listing_reaches_it() {
        let r = HuntRange { base: 100, count: 10 };
        // Past the last hunt of a complete listing.
        assert_eq!(next_free_base(r, &[100, 105], true), Some(106));
        // A gap of 10 between two hunts, even in an incomplete listing.
        assert_eq!(next_free_base(r, &[100, 101, 112, 200], false), Some(102));
        // A gap too narrow is skipped.
        assert_eq!(next_free_base(r, &[103, 110, 115, 130], true), Some(116));
        // An incomplete listing that ends without a gap knows nothing.
        assert_eq!(next_free_base(r, &[100, 101], false), None);
        // A free range past the largest id is no answer.
        let top = HuntRange { base: u32::MAX - 20, count: 10 };
        assert_eq!(next_free_base(top, &[u32::MAX - 20, u32::MAX - 11], true), Some(u32::MAX - 10));
        assert_eq!(next_free_base(top, &[u32::MAX - 20, u32::MAX - 10], true), None);
    }

    #[test]
    fn the_creates_timeout_grows_with_the_hunts() {
        assert_eq!(creates_timeout(0), CREATES_TIMEOUT_BASE);
        assert!(creates_timeout(1 << 20) >= Duration::from_secs(60 + 1000));
    }
}
