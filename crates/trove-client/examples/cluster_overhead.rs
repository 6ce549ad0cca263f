//! What routing costs: the same closed-loop load through a `Producer` and
//! through a `ClusterProducer` whose map (served here) names one
//! in-process node as the owner of every partition, in interleaved pairs,
//! each run with fresh producer ids. Prints events/s per run and the
//! median ratio (cluster / single).
//!
//! ```text
//! cargo run --release -p trove-client --example cluster_overhead -- [EVENTS] [PAIRS] [PARTITIONS]
//!   EVENTS      events per run            (default 2000000)
//!   PAIRS       interleaved pairs         (default 5)
//!   PARTITIONS  partitions in the map     (default 1; the node runs that many shards)
//! ```
//!
//! The events are joins spread over 1024 hunts that do not exist (each is
//! answered `unknown_hunt`): the engine's work per event is small, so
//! the client's share shows.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::{Duration, Instant};

use trove_client::{ClientConfig, ClusterConfig, ClusterProducer, Producer};
use trove_hunt::{HuntEvent, TreasureHunt};

fn main() {
    let arg = |i: usize, default: u64| std::env::args().nth(i).map_or(default, |a| a.parse().expect("a number"));
    let (events, pairs, partitions) = (arg(1, 2_000_000), arg(2, 5), arg(3, 1) as usize);
    let engine = trove_shard::EngineConfig { shards: partitions, ..trove_shard::EngineConfig::default() };
    let engine = Arc::new(trove_shard::Engine::<TreasureHunt>::start(engine).expect("engine"));
    let config = trove_server::ServerConfig {
        tcp_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        ws_addr: None,
        ..trove_server::ServerConfig::default()
    };
    let server = trove_server::Server::start(engine, config).expect("data plane");
    let map = map_server(&server.tcp_addr().to_string(), partitions);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let mut ratios = Vec::new();
    for pair in 0..pairs {
        let single = rt.block_on(single(server.tcp_addr(), events));
        let cluster = rt.block_on(cluster(map, events));
        let ratio = cluster / single;
        println!("pair {pair}: single {:.2} M/s, cluster {:.2} M/s, ratio {ratio:.3}", single / 1e6, cluster / 1e6);
        ratios.push(ratio);
    }
    ratios.sort_by(f64::total_cmp);
    println!("median ratio (cluster / single) over {pairs} pairs: {:.3}", ratios[ratios.len() / 2]);
    server.shutdown(Duration::from_secs(5));
}

fn event(i: u64) -> HuntEvent {
    HuntEvent::join(1_000_000 + (i % 1024) as u32, i as u32)
}

async fn single(addr: SocketAddr, events: u64) -> f64 {
    let (mut producer, acks) = Producer::<TreasureHunt>::connect(ClientConfig::new(addr.to_string())).await.unwrap();
    drop(acks);
    let start = Instant::now();
    for i in 0..events {
        producer.send_wait(event(i)).await.unwrap();
    }
    producer.close().await.unwrap();
    events as f64 / start.elapsed().as_secs_f64()
}

async fn cluster(map: SocketAddr, events: u64) -> f64 {
    let (mut producer, acks) =
        ClusterProducer::<TreasureHunt>::connect(ClusterConfig::new([map.to_string()])).await.unwrap();
    drop(acks);
    let start = Instant::now();
    for i in 0..events {
        producer.send_wait(event(i)).await.unwrap();
    }
    producer.close().await.unwrap();
    events as f64 / start.elapsed().as_secs_f64()
}

/// Answers every `GET /cluster` with a map naming `tcp` as every
/// partition's owner.
fn map_server(tcp: &str, partitions: usize) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let owner = format!(r#"{{"node":"a","tcp":"{tcp}","ws":null,"control":"{addr}"}}"#);
    let entries: Vec<String> =
        (0..partitions).map(|p| format!(r#"{{"partition":{p},"owner":{owner},"epoch":1}}"#)).collect();
    let body = format!(
        r#"{{"cluster":"trove","partitions":{partitions},"node":"a","nodes":[{owner}],"map":[{}]}}"#,
        entries.join(",")
    );
    std::thread::spawn(move || {
        for s in listener.incoming() {
            let Ok(mut s) = s else { continue };
            let mut head = [0u8; 4096];
            let _ = s.read(&mut head);
            let reply = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}", body.len());
            let _ = s.write_all(reply.as_bytes());
        }
    });
    addr
}
