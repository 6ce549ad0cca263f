//! The relay's CPU cost per chunk, NATS aside: encoding a chunk on the
//! owner, decoding it on a relaying node and injecting it into a hub with
//! one subscriber (which takes after each inject).
//!
//! `cargo run --release -p trove-cluster --example relay-cost [UPDATES_PER_CHUNK] [CHUNKS]`

use std::time::Instant;

use trove_cluster::relay::{decode, encode_updates};
use trove_core::Stamped;
use trove_hunt::{HuntEvent, HuntOutcome, TreasureHunt};
use trove_shard::{Hub, Mailbox, Update};

fn main() {
    let mut args = std::env::args().skip(1);
    let per_chunk: u32 = args.next().map_or(8, |a| a.parse().expect("updates per chunk"));
    let chunks: u32 = args.next().map_or(200_000, |a| a.parse().expect("chunks"));
    let updates: Vec<Update<TreasureHunt>> = (0..per_chunk)
        .map(|i| Update::Applied {
            event: Stamped { time_us: u64::from(i), event: HuntEvent::join(7, i) },
            outcome: HuntOutcome::Left,
        })
        .collect();
    let hub: Hub<TreasureHunt> = Hub::default();
    let mailbox = Mailbox::new(1 << 20);
    hub.subscribe(7, &mailbox);
    let mut taken = Vec::new();
    let (mut encode_ns, mut decode_ns, mut inject_ns, mut bytes) = (0u128, 0u128, 0u128, 0usize);
    for c in 0..chunks {
        let t = Instant::now();
        let mut messages = Vec::new();
        encode_updates::<TreasureHunt>(1, 7, u64::from(c * per_chunk), &updates, |m| messages.push(m));
        let t1 = Instant::now();
        let mut decoded = Vec::new();
        for m in &messages {
            bytes += m.len();
            decoded.push(decode::<TreasureHunt>(m).expect("decodes"));
        }
        let t2 = Instant::now();
        for d in decoded {
            hub.inject(7, 0, d.updates, t2);
        }
        mailbox.take(&mut taken);
        taken.clear();
        let t3 = Instant::now();
        encode_ns += (t1 - t).as_nanos();
        decode_ns += (t2 - t1).as_nanos();
        inject_ns += (t3 - t2).as_nanos();
    }
    let per = |ns: u128| ns as f64 / f64::from(chunks);
    println!(
        "{chunks} chunks of {per_chunk} updates ({} bytes each): encode {:.0} ns, decode {:.0} ns, inject+take {:.0} ns per chunk",
        bytes / chunks as usize,
        per(encode_ns),
        per(decode_ns),
        per(inject_ns)
    );
}
