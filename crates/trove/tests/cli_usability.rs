//! The small things a first hour with the command line runs into (issue
//! 25, item 6): host names in listen addresses, counts with the right
//! plural, a suggestion for a mistyped subcommand, and a negative number
//! judged by the option's range rather than taken for a flag.

mod common;

use std::process::{Command, Output};
use std::time::Duration;

fn trove(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_trove")).args(args).output().expect("trove runs")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn listen_addresses_take_host_names() {
    let mut serve = common::Serve::spawn(&[
        "--no-journal",
        "--shards",
        "1",
        "--tcp",
        "localhost:0",
        "--ws",
        "localhost:0",
        "--control",
        "localhost:0",
    ]);
    let at = serve.wait_listening();
    // `localhost` is bound as 127.0.0.1 (its IPv4 address, as the defaults).
    assert!(at.tcp.ip().is_loopback() && at.tcp.is_ipv4(), "{at:?}");
    assert!(at.ws.is_some_and(|a| a.ip().is_loopback()), "{at:?}");
    assert!(at.control.ip().is_loopback(), "{at:?}");
    // It serves there.
    let request = "GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
    let mut answer = String::new();
    {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(at.control).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        s.write_all(request.as_bytes()).unwrap();
        let _ = s.read_to_string(&mut answer);
    }
    assert!(answer.starts_with("HTTP/1.1 "), "{answer}");
    // One shard is "1 shard".
    let log = serve.stderr_now();
    assert!(log.contains("with 1 shard;"), "{log}");
    serve.terminate(Duration::from_secs(30));

    // A name that resolves to nothing is a clear error, not a panic.
    let out =
        trove(&["serve", "--no-journal", "--tcp", "no-such-host.invalid:7400", "--ws", "off", "--control", "off"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("tcp address `no-such-host.invalid:7400`"), "{}", stderr(&out));
    let out = trove(&["serve", "--no-journal", "--tcp", "127.0.0.1", "--ws", "off", "--control", "off"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("expected host:port"), "{}", stderr(&out));
}

#[test]
fn a_mistyped_subcommand_gets_a_suggestion() {
    let out = trove(&["serv"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("similar subcommand exists: 'serve'"), "{}", stderr(&out));
}

#[test]
fn a_negative_number_is_judged_by_the_option_not_taken_for_a_flag() {
    let out = trove(&["bench", "--rate", "-5"]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(err.contains("--rate must be a positive number, not -5"), "{err}");
    assert!(!err.contains("unexpected argument"), "{err}");
    let out = trove(&["serve", "--shards", "-1"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("-1 is not in 1..=1024"), "{}", stderr(&out));
}

#[test]
fn counts_of_one_are_singular() {
    assert_eq!(trove::plural(1, "shard"), "1 shard");
    assert_eq!(trove::plural(0, "shard"), "0 shards");
    assert_eq!(trove::plural(2, "batch"), "2 batches");
    assert_eq!(trove::plural(1, "batch"), "1 batch");
}
