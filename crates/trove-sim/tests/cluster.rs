//! The cluster mode of the simulator: seeds pass, replay exactly, do what
//! the mode claims (takeovers, fences, stalls past the lease, each stream
//! fault), and each planted mistake of a node or a log is found.

use trove_sim::{ClusterBug, Verdict, first_cluster_failure, run_cluster};

/// Seeds `cargo test` runs (about a millisecond each).
const SEEDS: u64 = 3000;

#[test]
fn thousands_of_cluster_seeds_pass_every_check() {
    let (failed, ran) = first_cluster_failure(0, SEEDS, ClusterBug::None);
    if let Some(r) = failed {
        panic!("cluster seed {} failed after {ran} seeds: {:?}\n{:#?}\n{:#?}", r.seed, r.verdict, r.events, r.faults);
    }
}

#[test]
fn a_cluster_seed_replays_exactly() {
    for seed in [0, 26, 1016, 77_777] {
        let (a, b) = (run_cluster(seed), run_cluster(seed));
        assert_eq!((&a.verdict, &a.events, &a.faults, a.acked), (&b.verdict, &b.events, &b.faults, b.acked));
        assert_eq!(a.verdict, Verdict::Passed, "{:#?}", a.events);
    }
}

/// The mode does what it claims on some seed or other.
#[test]
fn the_cluster_seeds_cover_takeovers_fences_stalls_and_every_stream_fault() {
    let (mut events, mut faults) = (String::new(), String::new());
    for seed in 0..300 {
        let r = run_cluster(seed);
        events.push_str(&r.events.join("\n"));
        faults.push_str(&r.faults.join("\n"));
    }
    let wanted = [
        "crashes (its state lost)",
        "stalls",
        "(past its lease)",
        "lost the lease of partition",
        "messages replayed)",
        // A deposed owner, back, appends and is refused.
        "log fenced",
        "log unavailable",
        // A deposed owner's append landed between the rebuild's read and
        // the fence: the new owner reads again.
        "refused: reading again",
        "hands partition",
        "snapshot at",
        "connections drop",
        "faults off, settling",
    ];
    for what in wanted {
        assert!(events.contains(what), "no cluster run did `{what}`");
    }
    for what in ["its acknowledgement is lost", "times out uncommitted", "lands at", "are dropped", "no quorum"] {
        assert!(faults.contains(what), "no cluster run injected `{what}`");
    }
}

/// Each planted mistake is found within a bounded number of seeds, by the
/// check that names it.
#[test]
fn every_planted_cluster_mistake_is_found() {
    let cases = [
        (ClusterBug::SkipFence, "had an append acknowledged after epoch"),
        (ClusterBug::RefusedAsAcked, ""),
        (ClusterBug::SequenceOnly, "landed after epoch"),
        (ClusterBug::SnapshotReplaces, "cannot be rebuilt"),
    ];
    for (bug, why) in cases {
        let (failed, ran) = first_cluster_failure(0, SEEDS, bug);
        let Some(r) = failed else { panic!("{bug:?}: not found in {ran} seeds") };
        match &r.verdict {
            Verdict::Failed(w) => assert!(w.contains(why), "{bug:?} (seed {}): {w}", r.seed),
            other => panic!("{bug:?}: {other:?}"),
        }
    }
}

/// The shard core's own planted mistakes (trove-shard's `planted`
/// feature) are found over the cluster's log too: a retry applied twice
/// (exactly-once in the stream's history), and dedup state forgotten at a
/// snapshot (a resend after a takeover from that snapshot applied again).
#[test]
fn the_cores_planted_mistakes_are_found_over_the_cluster_log() {
    use trove_journal::planted::{Planted, set};
    for bug in [Planted::ApplyRetryTwice, Planted::ForgetDedupAtSnapshot] {
        set(bug);
        let (failed, ran) = first_cluster_failure(0, SEEDS, ClusterBug::None);
        set(Planted::None);
        let Some(r) = failed else { panic!("{bug:?}: not found in {ran} seeds") };
        assert!(r.verdict.failed(), "{bug:?}");
        eprintln!("{bug:?}: seed {} after {ran} seeds: {:?}", r.seed, r.verdict);
    }
}
