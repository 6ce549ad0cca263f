//! trove-cluster against one real nats-server (JetStream, R1): the
//! config's create-or-check, leases and their epochs, the fenced log,
//! snapshots. Each test starts its own server on loopback ports; without
//! the binary a test prints why it skips and passes (`.ci/run` installs
//! it, so CI never skips).

use std::time::{Duration, Instant};

use bytes::Bytes;
use trove_bench::nats::{NatsServer, nats_server_or_skip};
use trove_cluster::{ClusterConfig, ClusterError, LogEntry, Nats, Owner, PartitionLog};

macro_rules! server_or_skip {
    ($test:expr) => {{
        if !nats_server_or_skip($test) {
            return;
        }
        NatsServer::start()
    }};
}

async fn connect(server: &NatsServer, cluster: &str, lease_ttl: Duration) -> Nats {
    Nats::connect(&[server.url()], cluster, 1, lease_ttl).await.expect("connecting")
}

fn config(partitions: u32) -> ClusterConfig {
    ClusterConfig {
        format: 1,
        game: "treasure-hunt".to_string(),
        record_size: 32,
        partitions,
        worlds_max: 4096,
        dedup_window_events: 65_536,
        dedup_producers_max: 1024,
    }
}

fn owner(node: &str) -> Owner {
    Owner {
        node: node.to_string(),
        tcp: format!("127.0.0.1:7400/{node}"),
        ws: "127.0.0.1:7401".to_string(),
        control: "127.0.0.1:7480".to_string(),
    }
}

/// Everything a read returns, to its end (bounded: the reader stops at
/// the last sequence of when it began).
async fn read_all(log: &PartitionLog, from: u64) -> Vec<LogEntry> {
    let mut reader = log.read(from).await.expect("read");
    let mut out = Vec::new();
    while let Some(e) = reader.next().await.expect("next") {
        out.push(e);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_is_created_once_and_checked_after() {
    let server = server_or_skip!("config_is_created_once_and_checked_after");
    let a = connect(&server, "cfg", Duration::from_secs(3)).await;
    assert_eq!(a.ensure_config(&config(8)).await.unwrap(), config(8));
    // Again, and from another connection: the same config checks out.
    assert_eq!(a.ensure_config(&config(8)).await.unwrap(), config(8));
    let b = connect(&server, "cfg", Duration::from_secs(3)).await;
    assert_eq!(b.ensure_config(&config(8)).await.unwrap(), config(8));
    // A node with other partitions is refused, naming the field.
    match b.ensure_config(&config(16)).await {
        Err(ClusterError::ConfigMismatch { field: "partitions", found, wanted }) => {
            assert_eq!((found.as_str(), wanted.as_str()), ("8", "16"));
        }
        r => panic!("a mismatch accepted: {r:?}"),
    }
    let mut other_game = config(8);
    other_game.game = "capture-flag".to_string();
    assert!(matches!(b.ensure_config(&other_game).await, Err(ClusterError::ConfigMismatch { field: "game", .. })));

    // Two first nodes racing on a fresh cluster: exactly one config wins,
    // the other node is refused with the winner's value.
    for round in 0..5 {
        let name = format!("race{round}");
        let x = connect(&server, &name, Duration::from_secs(3)).await;
        let y = connect(&server, &name, Duration::from_secs(3)).await;
        let (cx, cy) = (config(4), config(32));
        let (rx, ry) = tokio::join!(x.ensure_config(&cx), y.ensure_config(&cy));
        match (rx, ry) {
            (Ok(won), Err(ClusterError::ConfigMismatch { field: "partitions", found, .. })) => {
                assert_eq!(won, cx);
                assert_eq!(found, "4");
            }
            (Err(ClusterError::ConfigMismatch { field: "partitions", found, .. }), Ok(won)) => {
                assert_eq!(won, cy);
                assert_eq!(found, "32");
            }
            r => panic!("round {round}: not exactly one winner: {r:?}"),
        }
        // Racing with the same config: both agree.
        let name = format!("same{round}");
        let x = connect(&server, &name, Duration::from_secs(3)).await;
        let y = connect(&server, &name, Duration::from_secs(3)).await;
        let same = config(8);
        let (rx, ry) = tokio::join!(x.ensure_config(&same), y.ensure_config(&same));
        assert_eq!((rx.unwrap(), ry.unwrap()), (config(8), config(8)));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_values_in_kv_are_typed_errors() {
    let server = server_or_skip!("hostile_values_in_kv_are_typed_errors");
    let nats = connect(&server, "hostile", Duration::from_secs(3)).await;
    // Someone writes garbage where the config and a lease belong.
    nats.ensure_config(&config(8)).await.unwrap();
    let js = nats.jetstream();
    let cfg = js.get_key_value(nats.names().config_bucket()).await.unwrap();
    cfg.put("config", Bytes::from_static(b"{\"format\": \"one\"")).await.unwrap();
    assert!(matches!(nats.ensure_config(&config(8)).await, Err(ClusterError::Malformed { .. })));
    let leases = js.get_key_value(nats.names().leases_bucket()).await.unwrap();
    leases.put("p1", Bytes::from_static(b"\x00\xff not json")).await.unwrap();
    // The map reads it as no owner (one bad key must not hide the
    // others), and nobody can acquire it while the key lives.
    let map = nats.leases().owners(4).await.unwrap();
    assert!(map[1].is_none());
    assert!(nats.leases().acquire(1, &owner("n")).await.unwrap().is_none());
    // A stream under a partition's name that would drop messages, or
    // listens on another subject, is refused, not used as a journal.
    js.create_stream(async_nats::jetstream::stream::Config {
        name: nats.names().stream(0),
        subjects: vec![nats.names().subject(0)],
        max_age: Duration::from_secs(3600),
        ..Default::default()
    })
    .await
    .unwrap();
    assert!(matches!(nats.log(0).await, Err(ClusterError::ConfigMismatch { field: "stream limits", .. })));
    js.create_stream(async_nats::jetstream::stream::Config {
        name: nats.names().stream(1),
        subjects: vec!["elsewhere".to_string()],
        ..Default::default()
    })
    .await
    .unwrap();
    assert!(matches!(nats.log(1).await, Err(ClusterError::ConfigMismatch { field: "stream subjects", .. })));
    // The streams this crate makes pass its own check.
    nats.log(2).await.unwrap();
    nats.log(2).await.unwrap();

    // Nobody listening: a typed Connect error, not a hang.
    let unused = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let start = Instant::now();
    match Nats::connect(&[format!("nats://127.0.0.1:{unused}")], "hostile", 1, Duration::from_secs(3)).await {
        Err(ClusterError::Connect { .. }) => {}
        r => panic!("connected to nothing: {r:?}"),
    }
    assert!(start.elapsed() < Duration::from_secs(30));
    // And bad names never reach NATS.
    assert!(matches!(
        Nats::connect(&[server.url()], "Bad.Name", 1, Duration::from_secs(3)).await,
        Err(ClusterError::InvalidName { .. })
    ));
    let mut bad_node = owner("a");
    bad_node.node = "a.b".to_string();
    assert!(matches!(nats.leases().acquire(0, &bad_node).await, Err(ClusterError::InvalidName { .. })));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_are_exclusive_renewable_and_releasable() {
    let server = server_or_skip!("leases_are_exclusive_renewable_and_releasable");
    let nats = connect(&server, "lease", Duration::from_secs(3)).await;
    let leases = nats.leases();
    let (a, b) = (owner("a"), owner("b"));

    let la = leases.acquire(0, &a).await.unwrap().expect("a free partition");
    assert_eq!((la.partition, la.epoch, la.revision), (0, la.epoch, la.epoch));
    assert_eq!(leases.acquire(0, &b).await.unwrap(), None, "a held lease was taken");
    // Another partition is independent.
    let lb1 = leases.acquire(1, &b).await.unwrap().expect("partition 1 free");
    assert!(lb1.epoch > la.epoch, "epochs are bucket-wide revisions");

    // A renew moves the revision, not the epoch, and readers see the epoch.
    let la2 = leases.renew(&la).await.unwrap().expect("still ours");
    assert!(la2.revision > la.revision);
    assert_eq!(la2.epoch, la.epoch);
    let map = leases.owners(3).await.unwrap();
    assert_eq!(map, vec![Some((a.clone(), la.epoch)), Some((b.clone(), lb1.epoch)), None]);
    // A renew from a stale revision (as a deposed holder has) fails.
    assert_eq!(leases.renew(&la).await.unwrap(), None, "a renew from an old revision succeeded");

    // Released: free now, and the next owner's epoch is higher.
    assert!(leases.release(la2.clone()).await.unwrap());
    assert_eq!(leases.owners(1).await.unwrap(), vec![None]);
    let lb0 = leases.acquire(0, &b).await.unwrap().expect("a released lease is free");
    assert!(lb0.epoch > la2.revision);
    // Releasing an old lease again cannot delete the new owner's.
    assert!(!leases.release(la2).await.unwrap());
    assert_eq!(leases.owners(1).await.unwrap(), vec![Some((b.clone(), lb0.epoch))]);

    // Node presence.
    leases.announce(&a).await.unwrap();
    leases.announce(&b).await.unwrap();
    leases.announce(&b).await.unwrap();
    assert_eq!(leases.nodes().await.unwrap(), vec![a, b]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unrenewed_lease_expires_and_the_old_holder_cannot_renew_or_release() {
    let server = server_or_skip!("an_unrenewed_lease_expires_and_the_old_holder_cannot_renew_or_release");
    let ttl = Duration::from_secs(1);
    let nats = connect(&server, "expiry", ttl).await;
    assert_eq!(nats.lease_ttl(), ttl);
    // A later node asking for another TTL gets the bucket creator's.
    let later = connect(&server, "expiry", Duration::from_secs(5)).await;
    assert_eq!(later.lease_ttl(), ttl);

    let (leases, b_leases) = (nats.leases(), later.leases());
    let (a, b) = (owner("a"), owner("b"));
    let la = leases.acquire(3, &a).await.unwrap().expect("free");
    let la = leases.renew(&la).await.unwrap().expect("ours");
    let start = Instant::now();
    assert_eq!(b_leases.acquire(3, &b).await.unwrap(), None, "taken while held");
    // a stops renewing; b polls until the lease expires (bounded).
    let lb = loop {
        if let Some(l) = b_leases.acquire(3, &b).await.unwrap() {
            break l;
        }
        assert!(start.elapsed() < Duration::from_secs(20), "the lease never expired");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(start.elapsed() >= ttl / 2, "taken over after {:?}, before the TTL", start.elapsed());
    assert!(lb.epoch > la.revision, "the new owner's epoch {} is not above {}", lb.epoch, la.revision);
    // The deposed holder: its renew fails, its release deletes nothing.
    assert_eq!(leases.renew(&la).await.unwrap(), None);
    assert!(!leases.release(la).await.unwrap());
    assert_eq!(leases.owners(4).await.unwrap()[3], Some((b.clone(), lb.epoch)));
    // Nodes that stop announcing vanish after the TTL.
    b_leases.announce(&b).await.unwrap();
    assert_eq!(b_leases.nodes().await.unwrap(), vec![b.clone()]);
    let start = Instant::now();
    while !b_leases.nodes().await.unwrap().is_empty() {
        assert!(start.elapsed() < Duration::from_secs(20), "a silent node never expired");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_appends_in_order_and_fences_stale_writers() {
    let server = server_or_skip!("the_log_appends_in_order_and_fences_stale_writers");
    let nats = connect(&server, "log", Duration::from_secs(3)).await;
    let log = nats.log(0).await.unwrap();
    // Empty: no entries, last 0.
    assert_eq!(log.last_seq().await.unwrap(), 0);
    assert!(read_all(&log, 1).await.is_empty());
    assert!(read_all(&log, 0).await.is_empty());

    let payload = |i: u64| Bytes::from(format!("frame {i} ").repeat(1 + i as usize % 7));
    let mut last = 0;
    for i in 1..=40 {
        let seq = log.append(last, payload(i), &format!("w1-{i}")).await.unwrap();
        assert_eq!(seq, last + 1);
        last = seq;
    }
    let entries = read_all(&log, 1).await;
    assert_eq!(entries.len(), 40);
    for (i, e) in entries.iter().enumerate() {
        let i = i as u64 + 1;
        assert_eq!((e.seq, e.fence, &e.payload), (i, None, &payload(i)));
    }
    // From the middle; from past the end.
    assert_eq!(read_all(&log, 31).await.iter().map(|e| e.seq).collect::<Vec<_>>(), (31..=40).collect::<Vec<_>>());
    assert!(read_all(&log, 41).await.is_empty());

    // A retried append (same message id, same expectation) that had
    // landed is answered with its sequence, not stored twice; another
    // payload with that expectation is fenced.
    assert_eq!(log.append(39, payload(40), "w1-40").await.unwrap(), 40);
    assert_eq!(log.last_seq().await.unwrap(), 40);
    match log.append(39, payload(40), "w1-40-other").await {
        Err(ClusterError::Fenced { expected: 39, actual: Some(40), .. }) => {}
        r => panic!("an append after a stale expectation: {r:?}"),
    }
    assert_eq!(log.appended_as(39, "w1-40").await.unwrap(), Some(40));
    assert_eq!(log.appended_as(39, "w1-41").await.unwrap(), None, "another's message taken for ours");
    assert_eq!(log.appended_as(40, "w1-41").await.unwrap(), None, "a message past the end");

    // Two writers with the same expectation: exactly one wins.
    let other = nats.log(0).await.unwrap();
    let (r1, r2) = tokio::join!(
        log.append(40, Bytes::from_static(b"one"), "race-1"),
        other.append(40, Bytes::from_static(b"two"), "race-2")
    );
    match (&r1, &r2) {
        (Ok(41), Err(ClusterError::Fenced { partition: 0, expected: 40, actual: Some(41) }))
        | (Err(ClusterError::Fenced { partition: 0, expected: 40, actual: Some(41) }), Ok(41)) => {}
        r => panic!("not exactly one winner: {r:?}"),
    }

    // A new owner fences at 41; the old owner, which knows 41, is refused.
    let fence = other.fence(41, 7).await.unwrap();
    assert_eq!(fence, 42);
    match log.append(41, Bytes::from_static(b"stale"), "stale-1").await {
        Err(e @ ClusterError::Fenced { .. }) => {
            assert!(e.is_fenced() && !e.is_unavailable());
            assert!(matches!(e, ClusterError::Fenced { expected: 41, actual: Some(42), .. }), "{e}");
        }
        r => panic!("a deposed owner appended: {r:?}"),
    }
    // The new owner goes on after its fence; a read shows the fence.
    assert_eq!(other.append(42, Bytes::from_static(b"new owner"), "n-1").await.unwrap(), 43);
    let tail = read_all(&log, 41).await;
    assert_eq!(tail.iter().map(|e| (e.seq, e.fence)).collect::<Vec<_>>(), vec![(41, None), (42, Some(7)), (43, None)]);
    assert!(tail[1].payload.is_empty());

    // Purged below 30: reads start at 30 whatever they ask.
    assert_eq!(log.purge_below(30).await.unwrap(), 29);
    let b = log.bounds().await.unwrap();
    assert_eq!((b.first, b.last), (30, 43));
    let all = read_all(&log, 1).await;
    assert_eq!(all.first().map(|e| e.seq), Some(30));
    assert_eq!(all.len(), 14);
    assert_eq!(all[0].payload, payload(30));
    // Purged entirely: empty, last sequence kept, appends go on from it.
    log.purge_below(44).await.unwrap();
    assert!(read_all(&log, 1).await.is_empty());
    assert_eq!(log.last_seq().await.unwrap(), 43);
    assert_eq!(log.append(43, Bytes::from_static(b"after"), "n-2").await.unwrap(), 44);
    assert_eq!(read_all(&log, 0).await.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![44]);

    // Over the message limit: refused before it is sent.
    let too_big = Bytes::from(vec![0u8; nats.payload_max() + 1]);
    assert!(matches!(log.append(44, too_big, "big").await, Err(ClusterError::TooLarge { .. })));
    let just_fits = Bytes::from(vec![1u8; nats.payload_max()]);
    assert_eq!(log.append(44, just_fits, "fits").await.unwrap(), 45);

    // Partitions are separate streams.
    let p1 = nats.log(1).await.unwrap();
    assert_eq!(p1.last_seq().await.unwrap(), 0);
    assert_eq!(p1.append(0, Bytes::from_static(b"p1"), "p1-1").await.unwrap(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_streams_large_messages_and_sees_only_what_was_there() {
    let server = server_or_skip!("a_read_streams_large_messages_and_sees_only_what_was_there");
    let nats = connect(&server, "readers", Duration::from_secs(3)).await;
    let log = nats.log(2).await.unwrap();
    // Large messages: a read of them all must stream, not load them.
    let big = Bytes::from(vec![9u8; 512 << 10]);
    let mut last = 0;
    for i in 0..64 {
        last = log.append(last, big.clone(), &format!("b{i}")).await.unwrap();
    }
    let mut reader = log.read(1).await.unwrap();
    assert_eq!(reader.last(), 64);
    // Appends after the read began are not part of it.
    log.append(64, Bytes::from_static(b"late"), "late").await.unwrap();
    let mut seen = 0;
    while let Some(e) = reader.next().await.unwrap() {
        seen += 1;
        assert_eq!((e.seq, e.payload.len()), (seen, big.len()));
    }
    assert_eq!(seen, 64);
    assert_eq!(reader.next().await.unwrap(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_put_get_overwrite_and_refuse_the_oversized() {
    let server = server_or_skip!("snapshots_put_get_overwrite_and_refuse_the_oversized");
    let nats = connect(&server, "snap", Duration::from_secs(3)).await;
    let limit = 1 << 20;
    let snaps = trove_cluster::Snapshots::open_with_limit(&nats, limit).await.unwrap();
    assert_eq!(snaps.get(0).await.unwrap(), None, "a snapshot out of nowhere");
    // Several chunks' worth (the object store chunks at 128 KiB).
    let first: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    snaps.put(0, &first).await.unwrap();
    assert_eq!(snaps.get(0).await.unwrap().as_deref(), Some(&first[..]));
    let second: Vec<u8> = (0..1000u32).map(|i| (i % 13) as u8).collect();
    snaps.put(0, &second).await.unwrap();
    assert_eq!(snaps.get(0).await.unwrap().as_deref(), Some(&second[..]));
    assert_eq!(snaps.get(1).await.unwrap(), None);
    // Empty is a snapshot too.
    snaps.put(2, &[]).await.unwrap();
    assert_eq!(snaps.get(2).await.unwrap().as_deref(), Some(&[][..]));

    // Over the limit: a put is refused, and a stored object over a
    // reader's limit is refused without being read.
    let over = vec![0u8; limit as usize + 1];
    assert!(matches!(snaps.put(3, &over).await, Err(ClusterError::TooLarge { .. })));
    assert_eq!(snaps.get(3).await.unwrap(), None);
    let small = trove_cluster::Snapshots::open_with_limit(&nats, 999).await.unwrap();
    match small.get(0).await {
        Err(ClusterError::TooLarge { bytes: 1000, max: 999, .. }) => {}
        r => panic!("an oversized snapshot was read: {r:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_server_makes_calls_unavailable_and_a_retry_finds_what_landed() {
    let server = server_or_skip!("a_paused_server_makes_calls_unavailable_and_a_retry_finds_what_landed");
    let nats = connect(&server, "paused", Duration::from_secs(3)).await;
    let log = nats.log(0).await.unwrap();
    let leases = nats.leases();
    assert_eq!(log.append(0, Bytes::from_static(b"a"), "a").await.unwrap(), 1);

    // SIGSTOP: the socket stays open and nothing answers. Every call fails
    // Unavailable within its bound (2 s requests, a few requests a call)
    // instead of waiting forever.
    server.pause();
    let start = Instant::now();
    match log.append(1, Bytes::from_static(b"b"), "b").await {
        Err(e) => assert!(e.is_unavailable(), "{e}"),
        Ok(seq) => panic!("acknowledged at {seq} by a stopped server"),
    }
    assert!(leases.acquire(5, &owner("a")).await.unwrap_err().is_unavailable());
    assert!(leases.owners(1).await.unwrap_err().is_unavailable());
    assert!(log.last_seq().await.unwrap_err().is_unavailable());
    assert!(start.elapsed() < Duration::from_secs(45), "the calls took {:?}", start.elapsed());

    // SIGCONT: the server reads the append it was sent while stopped and
    // stores it. The writer's retry (same id, same expectation) is told
    // its sequence, and the message is there once.
    server.resume();
    let start = Instant::now();
    let last = loop {
        match log.last_seq().await {
            Ok(last) => break last,
            Err(e) if e.is_unavailable() && start.elapsed() < Duration::from_secs(30) => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("after SIGCONT: {e}"),
        }
    };
    assert_eq!(last, 2, "the append sent to the stopped server was not stored on SIGCONT");
    let seq = loop {
        match log.append(1, Bytes::from_static(b"b"), "b").await {
            Ok(seq) => break seq,
            Err(e) if e.is_unavailable() && start.elapsed() < Duration::from_secs(30) => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("after SIGCONT: {e}"),
        }
    };
    assert_eq!(seq, 2);
    let all = read_all(&log, 1).await;
    assert_eq!(all.iter().map(|e| (e.seq, &e.payload[..])).collect::<Vec<_>>(), vec![(1, &b"a"[..]), (2, &b"b"[..])]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_takeover_fences_the_deposed_owner() {
    let server = server_or_skip!("a_takeover_fences_the_deposed_owner");
    // Two nodes, each with its own connection.
    let ttl = Duration::from_secs(1);
    let node_a = connect(&server, "takeover", ttl).await;
    let node_b = connect(&server, "takeover", ttl).await;
    let (a, b) = (owner("a"), owner("b"));

    // a owns partition 4 and appends.
    let lease_a = node_a.leases().acquire(4, &a).await.unwrap().expect("free");
    let log_a = node_a.log(4).await.unwrap();
    let mut last_a = log_a.last_seq().await.unwrap();
    let fence_a = log_a.fence(last_a, lease_a.epoch).await.unwrap();
    last_a = fence_a;
    for i in 0..5 {
        last_a = log_a.append(last_a, Bytes::from(format!("a{i}")), &format!("a-{i}")).await.unwrap();
    }

    // a stalls (stops renewing, as a SIGSTOPped node does); b takes the
    // partition once the lease expires, replays to the end and fences.
    let start = Instant::now();
    let lease_b = loop {
        if let Some(l) = node_b.leases().acquire(4, &b).await.unwrap() {
            break l;
        }
        assert!(start.elapsed() < Duration::from_secs(20), "the stalled owner's lease never expired");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(lease_b.epoch > lease_a.revision);
    let log_b = node_b.log(4).await.unwrap();
    let replayed = read_all(&log_b, 1).await;
    let data: Vec<&[u8]> = replayed.iter().filter(|e| e.fence.is_none()).map(|e| &e.payload[..]).collect();
    assert_eq!(data, vec![&b"a0"[..], b"a1", b"a2", b"a3", b"a4"]);
    assert_eq!(replayed[0].fence, Some(lease_a.epoch));
    let last_b = replayed.last().unwrap().seq;
    let fence_b = log_b.fence(last_b, lease_b.epoch).await.unwrap();

    // a wakes up: its append is fenced, its renew fails, its release
    // leaves b's lease alone; b appends on.
    match log_a.append(last_a, Bytes::from_static(b"stale"), "a-stale").await {
        Err(ClusterError::Fenced { partition: 4, expected, actual }) => {
            assert_eq!((expected, actual), (last_a, Some(fence_b)));
        }
        r => panic!("the deposed owner appended: {r:?}"),
    }
    assert_eq!(node_a.leases().renew(&lease_a).await.unwrap(), None);
    assert!(!node_a.leases().release(lease_a).await.unwrap());
    assert_eq!(log_b.append(fence_b, Bytes::from_static(b"b0"), "b-0").await.unwrap(), fence_b + 1);
    assert_eq!(node_a.leases().owners(5).await.unwrap()[4], Some((b, lease_b.epoch)));
}

/// The JetStream streams on the server (KV buckets and object stores are
/// streams too), sorted.
async fn stream_names(nats: &Nats) -> Vec<String> {
    use futures_util::TryStreamExt;
    let mut names: Vec<String> = nats.jetstream().stream_names().try_collect().await.expect("stream names");
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_creates_nothing_and_reads_what_a_node_wrote() {
    let server = server_or_skip!("a_reader_creates_nothing_and_reads_what_a_node_wrote");
    // On an empty server: nothing to open, and nothing made by looking.
    let reader = Nats::connect_reader(&[server.url()], "rd").await.expect("reader");
    assert!(trove_cluster::config::read(&reader).await.unwrap().is_none());
    assert!(reader.open_log(0).await.unwrap().is_none());
    assert!(reader.open_snapshots().await.unwrap().is_none());
    assert_eq!(stream_names(&reader).await, Vec::<String>::new(), "a reader created streams or buckets");

    // A node's connection creates the presence buckets; its partition 1
    // gets a stream and a snapshot, partition 0 nothing.
    let node = connect(&server, "rd", Duration::from_secs(3)).await;
    node.ensure_config(&config(2)).await.unwrap();
    let log = node.log(1).await.unwrap();
    log.append(0, Bytes::from_static(b"one"), "m1").await.unwrap();
    node.snapshots().await.unwrap().put_newer(1, 2, b"snap").await.unwrap();
    let before = stream_names(&reader).await;
    assert!(before.len() >= 4, "config, leases, nodes, a stream, the object store: {before:?}");

    assert!(reader.open_log(0).await.unwrap().is_none(), "partition 0 was never written");
    let read = reader.open_log(1).await.unwrap().expect("partition 1's stream");
    let entries = read_all(&read, 1).await;
    assert_eq!(entries.len(), 1);
    assert_eq!(&entries[0].payload[..], b"one");
    let snapshots = reader.open_snapshots().await.unwrap().expect("the object store");
    assert_eq!(&snapshots.get(1).await.unwrap().expect("partition 1's snapshot")[..], b"snap");
    assert_eq!(stream_names(&reader).await, before, "the reader created something");
}

/// A takeover that waited its turn compares its lease with the fences it
/// read (a fence checks only the stream's last sequence, not epoch
/// order): recovery reports the highest fence epoch after the snapshot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_reports_the_highest_fence_epoch_it_read() {
    let server = server_or_skip!("recovery_reports_the_highest_fence_epoch_it_read");
    let nats = connect(&server, "fences", Duration::from_secs(5)).await;
    let log = nats.log(2).await.unwrap();
    let core = trove_shard::CoreConfig {
        worlds_max: 16,
        dedup_window_events: 0,
        dedup_producers_max: 1,
        journaled: true,
        snapshot_interval: None,
    };
    let recover = || trove_cluster::recover_partition::<trove_hunt::TreasureHunt>(&log, None, core, None, |_, _, _| {});
    // Never fenced: 0.
    let r = recover().await.unwrap();
    assert_eq!((r.last, r.fence_epoch_max), (0, 0));
    // An older owner's fence, then a newer one's: the newer epoch counts,
    // whatever their order in the stream.
    let first = log.fence(0, 9).await.unwrap();
    log.fence(first, 4).await.unwrap();
    let r = recover().await.unwrap();
    assert_eq!((r.replayed, r.fence_epoch_max), (0, 9));
}
