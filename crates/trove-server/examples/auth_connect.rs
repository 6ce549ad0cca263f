//! The cost of authentication on connection setup: TCP connections per
//! second (connect, HELLO, WELCOME, close), one at a time, against a
//! server without authentication (HELLO version 1) and one with it
//! (version 2, a table of 100 tokens), in interleaved pairs.
//!
//! ```text
//! cargo run --release -p trove-server --example auth_connect -- [PAIRS] [CONNECTIONS]
//!   PAIRS        interleaved pairs (default 5)
//!   CONNECTIONS  connections per run (default 2000)
//! ```
//!
//! Prints each pair's rates and their ratio, then the medians.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Instant;

use trove_hunt::TreasureHunt;
use trove_proto::frame::{self, HEADER_LEN, Hello};
use trove_server::auth::{Auth, AuthTable, QuotaDefaults, TOKEN_LEN, hash_token, to_hex};
use trove_server::{Server, ServerConfig};
use trove_shard::{Engine, EngineConfig};

const TOKENS: u8 = 100;

fn table() -> AuthTable {
    let mut text = String::new();
    for i in 0..TOKENS {
        text.push_str(&format!(
            "[[token]]\nname = \"t{i}\"\nrole = \"producer\"\nsha256 = \"{}\"\n",
            to_hex(&hash_token(&[i; TOKEN_LEN]))
        ));
    }
    AuthTable::parse(&text).expect("the table")
}

fn server(auth: bool) -> Server<TreasureHunt> {
    let engine =
        Arc::new(Engine::<TreasureHunt>::start(EngineConfig { shards: 1, ..EngineConfig::default() }).unwrap());
    let auth = auth.then(|| Arc::new(Auth::from_table(table(), QuotaDefaults::default())));
    let any = SocketAddr::from(([127, 0, 0, 1], 0));
    Server::start(engine, ServerConfig { tcp_addr: any, ws_addr: None, auth, ..ServerConfig::default() }).unwrap()
}

/// Connections per second: `n` connections, each to its WELCOME.
fn run(addr: SocketAddr, hello: Hello, n: u32) -> f64 {
    let mut bytes = Vec::new();
    frame::encode_hello(&mut bytes, &hello);
    let start = Instant::now();
    for _ in 0..n {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_nodelay(true).unwrap();
        s.write_all(&bytes).unwrap();
        let mut welcome = [0u8; HEADER_LEN + frame::WELCOME_LEN];
        s.read_exact(&mut welcome).unwrap();
        assert_eq!(welcome[4], frame::Kind::Welcome as u8, "not a WELCOME");
    }
    f64::from(n) / start.elapsed().as_secs_f64()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let arg = |i: usize, default: u32| std::env::args().nth(i).map_or(default, |a| a.parse().expect("a number"));
    let (pairs, n) = (arg(1, 5), arg(2, 2000));
    let (plain, authed) = (server(false), server(true));
    let token = [TOKENS - 1; TOKEN_LEN]; // the last entry: the whole table is scanned anyway
    let (mut off, mut on, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    // Warm-up, then the pairs, the order alternating.
    run(plain.tcp_addr(), Hello::v1(0, 0), n / 10);
    run(authed.tcp_addr(), Hello::v2(0, 0, token), n / 10);
    for i in 0..pairs {
        let (a, b) = if i % 2 == 0 {
            let a = run(plain.tcp_addr(), Hello::v1(0, 0), n);
            (a, run(authed.tcp_addr(), Hello::v2(0, 0, token), n))
        } else {
            let b = run(authed.tcp_addr(), Hello::v2(0, 0, token), n);
            (run(plain.tcp_addr(), Hello::v1(0, 0), n), b)
        };
        println!("pair {i}: no auth {a:.0} conn/s, auth {b:.0} conn/s, ratio {:.3}", b / a);
        off.push(a);
        on.push(b);
        ratios.push(b / a);
    }
    println!(
        "median: no auth {:.0} conn/s, auth {:.0} conn/s, ratio {:.3} ({pairs} pairs of {n} connections)",
        median(off),
        median(on),
        median(ratios)
    );
    plain.shutdown(std::time::Duration::from_secs(1));
    authed.shutdown(std::time::Duration::from_secs(1));
}
