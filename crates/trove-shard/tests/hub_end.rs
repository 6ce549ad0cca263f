//! The end of a deleted world's stream reaches a subscriber that fell
//! behind (issue 25, docs/decisions/0048): its mailbox is full, later
//! chunks become a gap, but the chunk that ends the world is queued past
//! the bound, so the subscriber learns of the end, not of a gap.

use std::time::Instant;

use trove_core::{Outcomes, Stamped};
use trove_hunt::{HuntBroadcast, HuntEvent, HuntOutcome, Top10, TreasureHunt};
use trove_shard::updates::{Delivery, Hub, Mailbox, Staging, Update};

fn publish(hub: &Hub<TreasureHunt>, staging: &mut Staging<TreasureHunt>, event: HuntEvent, outcome: HuntOutcome) {
    let events = [Stamped { time_us: 1, event }];
    let mut out = Outcomes::with_capacity(1);
    if let HuntOutcome::Deleted { round } = outcome {
        out.broadcast(event.hunt, HuntBroadcast::HuntDeleted { round, top: Top10::default() });
    }
    out.direct.push(outcome);
    hub.publish(&events, &out, staging, Instant::now());
}

#[test]
fn a_full_mailbox_still_gets_the_chunk_that_ends_its_world() {
    let hub: Hub<TreasureHunt> = Hub::default();
    let mailbox = Mailbox::new(2);
    hub.subscribe(7, &mailbox);
    let mut staging = Staging::default();
    for p in 0..4 {
        publish(&hub, &mut staging, HuntEvent::join(7, p), HuntOutcome::Left);
    }
    publish(&hub, &mut staging, HuntEvent::delete(7), HuntOutcome::Deleted { round: 1 });
    let mut taken = Vec::new();
    mailbox.take(&mut taken);
    let kinds: Vec<String> = taken
        .iter()
        .map(|d| match d {
            Delivery::Chunk(c) => format!("chunk {} of {}", c.first_seq, c.updates.len()),
            Delivery::Gap { first_missed, missed, .. } => format!("gap {first_missed}+{missed}"),
        })
        .collect();
    let Some(Delivery::Chunk(last)) = taken.last() else { panic!("{kinds:?}") };
    assert!(
        matches!(last.updates.last(), Some(Update::Broadcast(HuntBroadcast::HuntDeleted { .. }))),
        "the end came last: {kinds:?}"
    );
    assert!(kinds.iter().any(|k| k.starts_with("gap")), "the joins past the bound were dropped: {kinds:?}");
}
