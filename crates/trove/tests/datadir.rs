//! The data directory belongs to one engine, and a start that fails
//! changes nothing: real `trove serve` processes on real directories.
//!
//! - two starts at once on one fresh directory: exactly one serves; the
//!   other exits non-zero naming the directory and the winner's pid; what
//!   the winner acknowledged is all in its journal;
//! - a second start on a live server's directory, with other ports (the
//!   lock refuses it) or with the live server's port (the bind refuses it,
//!   before recovery could cut the live open segment): both exit non-zero
//!   and leave every byte of the directory as it was;
//! - a start that fails (a busy port, bad settings, a lock file it cannot
//!   write) leaves no new directory behind;
//! - without `--shards`, the shard count recorded in the journal is read
//!   (under the lock);
//! - `journal verify`, `journal inspect` and `replay` leave a directory
//!   byte-identical, even one a start would repair (a torn tail, an
//!   unfinished snapshot, an older meta), create nothing, and say so when a
//!   server holds the directory.
//!
//! Every server binds 127.0.0.1 port 0 (`--ws off`, the control plane on a
//! port of its own); a `Serve` guard kills its process when dropped.

mod common;

use common::Serve;

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use trove_client::{ClientConfig, Producer};
use trove_hunt::{HuntEvent, HuntOutcome, TreasureHunt};

/// How long a server may take to say it listens (recovery included).
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a process may take to exit (a server drains for at most
/// 10 s, then snapshots).
const EXIT_TIMEOUT: Duration = Duration::from_secs(60);

/// `--data DATA --tcp TCP --ws off --control CONTROL --snapshot-ms 3600000`:
/// no snapshot while a test compares bytes.
fn serve_args(data: &Path, tcp: &str, control: &str) -> Vec<OsString> {
    ["--data".into(), data.into(), "--tcp".into(), tcp.into(), "--ws".into(), "off".into()]
        .into_iter()
        .chain(["--control".into(), control.into(), "--snapshot-ms".into(), "3600000".into()])
        .collect()
}

/// Runs `trove ARGS`; returns its status, stdout and stderr.
fn trove(args: &[OsString]) -> (ExitStatus, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_trove")).args(args).stdin(Stdio::null()).output().expect("trove runs");
    (out.status, String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// Every file under `dir` with its bytes, and every directory (with an
/// empty value): what a test compares before and after.
fn contents(dir: &Path) -> BTreeMap<PathBuf, Option<Vec<u8>>> {
    let mut all = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                all.insert(path.clone(), None);
                stack.push(path);
            } else {
                all.insert(path.clone(), Some(std::fs::read(&path).unwrap()));
            }
        }
    }
    all
}

/// Asserts that `dir` holds exactly `before`, naming what changed.
fn assert_unchanged(dir: &Path, before: &BTreeMap<PathBuf, Option<Vec<u8>>>, what: &str) {
    let after = contents(dir);
    for (path, bytes) in before {
        match after.get(path) {
            None => panic!("{what}: {} was removed", path.display()),
            Some(now) if now != bytes => panic!(
                "{what}: {} changed ({:?} bytes before, {:?} after)",
                path.display(),
                bytes.as_ref().map(Vec::len),
                now.as_ref().map(Vec::len)
            ),
            Some(_) => {}
        }
    }
    for path in after.keys() {
        assert!(before.contains_key(path), "{what}: {} was created", path.display());
    }
}

/// Creates hunt `hunt` and joins `joins` players to it through one
/// producer; returns the events acknowledged (every one, or it panics).
fn produce(addr: SocketAddr, hunt: u32, joins: u32) -> u64 {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(120), async {
            let config = ClientConfig::new(addr.to_string());
            let (mut producer, mut acks) = Producer::<TreasureHunt>::connect(config).await.expect("producer connects");
            let reader = tokio::spawn(async move {
                let mut outcomes = Vec::new();
                while let Some(a) = acks.next().await {
                    outcomes.extend(a.expect("acknowledged").outcomes.expect("outcomes"));
                }
                outcomes
            });
            producer.send_wait(HuntEvent::create(hunt, common::hunt_config())).await.expect("send");
            for player in 0..joins {
                producer.send_wait(HuntEvent::join(hunt, player)).await.expect("send");
            }
            producer.close().await.expect("close");
            let outcomes = reader.await.expect("ack reader");
            assert_eq!(outcomes.len(), 1 + joins as usize);
            assert_eq!(outcomes[0], HuntOutcome::Created { round: 1 });
            assert!(outcomes[1..].iter().all(|o| matches!(o, HuntOutcome::Joined { .. })), "{outcomes:?}");
            outcomes.len() as u64
        })
        .await
        .expect("the producer finishes in time")
    })
}

/// `trove replay --json` of `data`: its hunts and state hash. (Its event
/// count is that of the journal after the last snapshot.)
fn replayed(data: &Path) -> (Vec<u64>, String) {
    let (status, stdout, stderr) = trove(&["replay".into(), "--json".into(), "--data".into(), data.into()]);
    assert!(status.success(), "replay: {status}; stderr:\n{stderr}");
    let report: serde_json::Value = serde_json::from_str(stdout.trim()).expect("replay --json");
    let hunts = report["hunts"].as_array().expect("hunts").iter().map(|h| h["hunt"].as_u64().expect("hunt")).collect();
    (hunts, report["state_hash"].as_str().expect("state_hash").to_string())
}

#[test]
fn racing_starts_on_a_fresh_directory_one_serves_the_other_names_the_directory_and_its_pid() {
    let root = common::scratch_dir("datadir-race");
    for round in 0..3u32 {
        let data = root.join(format!("data-{round}"));
        let args = serve_args(&data, "127.0.0.1:0", "127.0.0.1:0");
        let mut servers = [Serve::spawn(&args), Serve::spawn(&args)];
        // The loser exits on its own; the winner serves until stopped.
        let deadline = Instant::now() + READY_TIMEOUT;
        let loser = loop {
            if let Some(i) = (0..2).find(|&i| servers[i].exited().is_some()) {
                break i;
            }
            assert!(Instant::now() < deadline, "neither start gave up:\n{}", servers[0].stderr_now());
            std::thread::sleep(Duration::from_millis(10));
        };
        let winner = 1 - loser;
        let (status, stderr) = servers[loser].wait_exit(EXIT_TIMEOUT);
        assert!(!status.success(), "round {round}: the second start must fail; stderr:\n{stderr}");
        assert!(stderr.contains(&data.display().to_string()), "round {round}: names the directory:\n{stderr}");
        let pid = servers[winner].pid();
        assert!(stderr.contains(&format!("pid {pid}")), "round {round}: names the holder, pid {pid}:\n{stderr}");
        assert!(!stderr.contains("protocol v1 on tcp://"), "round {round}: the loser served:\n{stderr}");

        let addr = servers[winner].wait_ready();
        let acknowledged = produce(addr, 100 + round, 50);
        let (applied, hash) = servers[winner].stop(EXIT_TIMEOUT);
        assert_eq!(applied, acknowledged, "round {round}: the winner applied what it acknowledged");
        let hunt = u64::from(100 + round);
        assert_eq!(replayed(&data), (vec![hunt], hash), "round {round}: everything acknowledged is journaled");
    }
    std::fs::remove_dir_all(&root).ok();
}

#[test]
fn a_second_start_on_a_live_directory_is_refused_and_changes_no_byte() {
    let root = common::scratch_dir("datadir-live");
    let data = root.join("data");
    let mut live = Serve::spawn(&serve_args(&data, "127.0.0.1:0", "127.0.0.1:0"));
    let addr = live.wait_ready();
    let acknowledged = produce(addr, 100, 40);
    let before = contents(&data);
    let segment = before
        .iter()
        .find(|(p, b)| p.extension().is_some_and(|e| e == "tjl") && b.as_ref().is_some_and(|b| b.len() > 64))
        .map(|(p, _)| p.clone())
        .expect("an open segment holding frames");

    // Other ports: the lock refuses it. The live server's port: the bind
    // does, before recovery could truncate the live segment.
    let busy = addr.to_string();
    let cases = [
        ("other ports", serve_args(&data, "127.0.0.1:0", "127.0.0.1:0"), data.display().to_string()),
        ("the live server's port", serve_args(&data, &busy, "127.0.0.1:0"), busy.clone()),
    ];
    for (what, args, named) in cases {
        let mut second = Serve::spawn(&args);
        let (status, stderr) = second.wait_exit(EXIT_TIMEOUT);
        assert!(!status.success(), "{what}: a second start must fail; stderr:\n{stderr}");
        assert!(stderr.contains(&named), "{what}: stderr names {named}:\n{stderr}");
        assert!(!stderr.contains("protocol v1 on tcp://"), "{what}: served:\n{stderr}");
        assert_unchanged(&data, &before, what);
    }
    let second = Serve::spawn(&serve_args(&data, "127.0.0.1:0", "127.0.0.1:0")).wait_exit(EXIT_TIMEOUT).1;
    assert!(second.contains(&format!("pid {}", live.pid())), "names the live server's pid:\n{second}");

    // The read-only tools read the live directory, say so, and write
    // nothing.
    for tool in [vec!["journal", "verify"], vec!["journal", "inspect"], vec!["replay"]] {
        let mut args: Vec<OsString> = tool.iter().map(OsString::from).collect();
        args.extend(["--data".into(), data.clone().into()]);
        let (status, _, stderr) = trove(&args);
        assert!(status.success(), "{tool:?} on a live directory: {status}; stderr:\n{stderr}");
        let note = format!("a server (pid {}) holds {}", live.pid(), data.display());
        assert!(stderr.contains(&note), "{tool:?} says a server holds it:\n{stderr}");
        assert_unchanged(&data, &before, &format!("{tool:?}"));
    }

    // Still serving, on the same segment.
    assert_eq!(produce(addr, 101, 10), 11);
    assert!(std::fs::metadata(&segment).unwrap().len() > 64);
    let (applied, hash) = live.stop(EXIT_TIMEOUT);
    assert_eq!(applied, acknowledged + 11);
    assert_eq!(replayed(&data), (vec![100, 101], hash), "nothing acknowledged is lost");
    std::fs::remove_dir_all(&root).ok();
}

#[test]
fn a_start_that_fails_leaves_no_new_directory_behind() {
    let root = common::scratch_dir("datadir-failed");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy = taken.local_addr().unwrap().to_string();
    let data = root.join("new").join("data");
    let mut bad_fsync = serve_args(&data, "127.0.0.1:0", "127.0.0.1:0");
    bad_fsync.extend(["--fsync".into(), "sometimes".into()]);
    let cases: Vec<(&str, Vec<OsString>, &str)> = vec![
        ("a busy TCP port", serve_args(&data, &busy, "127.0.0.1:0"), busy.as_str()),
        ("a busy control port", serve_args(&data, "127.0.0.1:0", &busy), busy.as_str()),
        ("bad settings", bad_fsync, "sometimes"),
    ];
    for (what, args, named) in cases {
        let (status, stderr) = Serve::spawn(&args).wait_exit(EXIT_TIMEOUT);
        assert!(!status.success(), "{what}: exit {status}; stderr:\n{stderr}");
        assert!(stderr.contains(named), "{what}: names {named}:\n{stderr}");
        assert!(!root.join("new").exists(), "{what}: left {} behind", root.join("new").display());
    }
    // Past the lock: the lock file takes the pid, and a file size limit of
    // zero refuses that write. The directories this start made go again.
    let (status, stderr) =
        Serve::spawn_with_file_limit(&serve_args(&data, "127.0.0.1:0", "127.0.0.1:0"), 0).wait_exit(EXIT_TIMEOUT);
    assert!(!status.success(), "no room for the pid: exit {status}; stderr:\n{stderr}");
    assert!(!root.join("new").exists(), "a start that failed past the lock left {} behind", root.join("new").display());
    // A directory that existed stays, and so does what is in it.
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("keep"), "mine").unwrap();
    let (status, stderr) = Serve::spawn(&serve_args(&data, &busy, "127.0.0.1:0")).wait_exit(EXIT_TIMEOUT);
    assert!(!status.success(), "{stderr}");
    assert_eq!(std::fs::read_to_string(data.join("keep")).unwrap(), "mine");
    assert_eq!(std::fs::read_dir(&data).unwrap().count(), 1, "nothing was written into it");
    drop(taken);
    std::fs::remove_dir_all(&root).ok();
}

#[test]
fn the_read_only_tools_change_no_byte_of_a_directory_a_start_would_repair() {
    let root = common::scratch_dir("datadir-readonly");
    let data = root.join("data");
    let mut server = Serve::spawn(&serve_args(&data, "127.0.0.1:0", "127.0.0.1:0"));
    let addr = server.wait_ready();
    produce(addr, 100, 30);
    // A crash: the open segment keeps its direct-write padding, which a
    // start cuts off.
    server.signal("KILL");
    server.wait_exit(EXIT_TIMEOUT);
    // What else a start would mend: a torn tail, an unfinished snapshot,
    // a meta of an older format.
    let shard = data.join("shard-000");
    let segment = std::fs::read_dir(&shard)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "tjl"))
        .expect("a segment");
    let mut bytes = std::fs::read(&segment).unwrap();
    bytes.extend_from_slice(&[0xA5; 37]);
    std::fs::write(&segment, bytes).unwrap();
    std::fs::write(shard.join("snapshot-00000000000000000002.tsnap.tmp"), b"half a snapshot").unwrap();
    let meta = std::fs::read_to_string(data.join("trove.meta")).unwrap();
    assert!(meta.starts_with("format=4\n"), "{meta}");
    // An older format's meta (no `check=` line): the read-only tools must
    // not upgrade it.
    let older: String = meta
        .replacen("format=4", "format=2", 1)
        .lines()
        .filter(|l| !l.starts_with("check="))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(data.join("trove.meta"), older).unwrap();
    let before = contents(&data);

    for tool in
        [vec!["journal", "verify"], vec!["journal", "verify", "--json"], vec!["journal", "inspect"], vec!["replay"]]
    {
        let mut args: Vec<OsString> = tool.iter().map(OsString::from).collect();
        args.extend(["--data".into(), data.clone().into()]);
        let (status, stdout, stderr) = trove(&args);
        // `verify` exits 1 when it finds damage, and the torn tail is some.
        let expected = if tool[1..].first() == Some(&"verify") { 1 } else { 0 };
        assert_eq!(status.code(), Some(expected), "{tool:?}: {status}; stderr:\n{stderr}");
        assert!(!stderr.contains("holds"), "{tool:?}: no server holds it:\n{stderr}");
        if tool[..] == ["journal", "verify"] {
            assert!(stdout.contains("torn tail"), "verify reports the torn tail:\n{stdout}");
        }
        assert_unchanged(&data, &before, &format!("{tool:?}"));
    }
    // A directory that is not there is not made.
    let missing = root.join("missing");
    for tool in [vec!["journal", "verify"], vec!["journal", "inspect"], vec!["replay"]] {
        let mut args: Vec<OsString> = tool.iter().map(OsString::from).collect();
        args.extend(["--data".into(), missing.clone().into()]);
        let (status, _, stderr) = trove(&args);
        assert!(!status.success(), "{tool:?} on a missing directory: {status}; stderr:\n{stderr}");
        assert!(!missing.exists(), "{tool:?} created {}", missing.display());
    }
    std::fs::remove_dir_all(&root).ok();
}

#[test]
fn without_shards_given_a_journal_s_own_count_is_read_once_the_directory_is_locked() {
    let root = common::scratch_dir("datadir-shards");
    let data = root.join("data");
    let mut args = serve_args(&data, "127.0.0.1:0", "127.0.0.1:0");
    args.extend(["--shards".into(), "3".into()]);
    let mut first = Serve::spawn(&args);
    first.wait_ready();
    first.stop(EXIT_TIMEOUT);
    let mut second = Serve::spawn(&serve_args(&data, "127.0.0.1:0", "127.0.0.1:0"));
    second.wait_ready();
    let stderr = second.stderr_now();
    assert!(stderr.contains("with 3 shards"), "the journal's count, not the default:\n{stderr}");
    second.stop(EXIT_TIMEOUT);
    std::fs::remove_dir_all(&root).ok();
}
