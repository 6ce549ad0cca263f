//! Append throughput and acknowledgement latency of one partition's log
//! on a single nats-server (JetStream R1, loopback), without the engine:
//! payloads of 4 KiB, 64 KiB and 512 KiB, one append in flight (as the
//! engine's journal thread does per partition), 8 pipelined on one
//! partition, or 8 partitions with one in flight each (the engine's shape
//! with 8 partitions on one node), with
//! JetStream's default sync (the OS writes back; fsync every 2 minutes)
//! and with `sync_interval: always` (an fsync per message, what trove's
//! local journal does).
//!
//!     cargo run --release -p trove-cluster --example log-append -- [SECONDS_PER_CELL]
//!
//! Starts its own server (the binary from `$NATS_SERVER` or `PATH`), in
//! a temp dir. Prints one line per cell; a figure taken on a busy
//! machine is provisional.

use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use trove_bench::nats::{NatsServer, nats_server_available, skip_message};
use trove_cluster::{Nats, PendingAppend};

const PAYLOADS: [usize; 3] = [4 << 10, 64 << 10, 512 << 10];
/// (partitions written at once, appends in flight on each)
const SHAPES: [(u32, usize); 3] = [(1, 1), (1, 8), (8, 1)];

struct Cell {
    appends: u64,
    seconds: f64,
    latency_us: Histogram<u64>,
}

/// `partitions` partitions from `first` on, each written as [`run`] does,
/// at once; their counts and latencies merged.
async fn run_partitions(nats: &Nats, first: u32, partitions: u32, payload: usize, depth: usize, seconds: f64) -> Cell {
    let tasks: Vec<_> = (first..first + partitions)
        .map(|p| {
            let nats = nats.clone();
            tokio::spawn(async move { run(&nats, p, payload, depth, seconds).await })
        })
        .collect();
    let mut total =
        Cell { appends: 0, seconds: 0.0, latency_us: Histogram::new_with_bounds(1, 60_000_000, 3).unwrap() };
    for t in tasks {
        let c = t.await.expect("a partition's run");
        total.appends += c.appends;
        total.seconds = total.seconds.max(c.seconds);
        total.latency_us.add(&c.latency_us).expect("same bounds");
    }
    total
}

/// Appends `payload`-byte messages to `partition` for `seconds`, with up
/// to `depth` unacknowledged; each latency is from send to acknowledgement.
async fn run(nats: &Nats, partition: u32, payload: usize, depth: usize, seconds: f64) -> Cell {
    let log = nats.log(partition).await.expect("the stream");
    let body = Bytes::from(vec![0x5a; payload]);
    let mut last = log.last_seq().await.expect("last sequence");
    let mut latency_us = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram");
    let mut inflight: std::collections::VecDeque<(Instant, PendingAppend)> = Default::default();
    let (start, mut appends, mut next_expected) = (Instant::now(), 0u64, last);
    let deadline = start + Duration::from_secs_f64(seconds);
    loop {
        let sending = Instant::now() < deadline;
        if sending && inflight.len() < depth {
            let id = format!("{partition}-{next_expected}");
            let pending = log.start_append(next_expected, body.clone(), &id).await.expect("send");
            inflight.push_back((Instant::now(), pending));
            next_expected += 1;
            continue;
        }
        let Some((sent, pending)) = inflight.pop_front() else { break };
        let seq = pending.wait().await.expect("append");
        assert_eq!(seq, last + 1, "acknowledged out of order");
        last = seq;
        appends += 1;
        latency_us.saturating_record(sent.elapsed().as_micros() as u64);
    }
    let seconds = start.elapsed().as_secs_f64();
    // Keep the store small: the server's file store is bounded (4 GB).
    log.purge_below(last + 1).await.expect("purge");
    Cell { appends, seconds, latency_us }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if !nats_server_available() {
        eprintln!("{}", skip_message("log-append"));
        std::process::exit(2);
    }
    let seconds: f64 = std::env::args().nth(1).map(|s| s.parse().expect("SECONDS_PER_CELL")).unwrap_or(2.0);
    println!("sync     payload  partitions  depth  appends/s      MB/s   p50_us   p99_us   max_us");
    for (sync, extra) in [("default", ""), ("always", "sync_interval: always")] {
        let server = NatsServer::start_with_jetstream(extra);
        let nats = Nats::connect(&[server.url()], "bench", 1, Duration::from_secs(3)).await.expect("connect");
        let mut partition = 0;
        for payload in PAYLOADS {
            for (partitions, depth) in SHAPES {
                let c = run_partitions(&nats, partition, partitions, payload, depth, seconds).await;
                partition += partitions;
                let rate = c.appends as f64 / c.seconds;
                let h = &c.latency_us;
                println!(
                    "{sync:<8} {:>5}KiB  {partitions:>10}  {depth:>5}  {rate:>9.0}  {:>8.1}  {:>7}  {:>7}  {:>7}",
                    payload >> 10,
                    rate * payload as f64 / 1e6,
                    h.value_at_quantile(0.5),
                    h.value_at_quantile(0.99),
                    h.max(),
                );
            }
        }
        drop(server);
    }
}
