//! `trove send` and `trove watch` against a real `trove serve`: events
//! from arguments and from standard input answered with their outcomes in
//! order, a bad line stopping the run with its number, and a watcher that
//! sees the players, the find and the top 10 of what was sent, then
//! reconnects across a server restart.

mod common;

use std::io::{BufRead, Write};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::Serve;

/// A 4x4 map with 4 treasures worth 5 each, whose seed puts a treasure
/// where player 1 joins (found by playing the rules locally: the game is
/// deterministic, and a join's place does not depend on the time).
fn create_event() -> String {
    use trove_core::{Outcomes, Stamped};
    use trove_hunt::{HuntConfig, HuntEvent, HuntOutcome, HuntState};
    let seed = (0..10_000)
        .find(|&seed| {
            let config = HuntConfig {
                width: 4,
                height: 4,
                seed,
                treasures_per_round: 4,
                value_min: 5,
                value_max: 5,
                dig_cooldown_ms: 0,
                step_max: 4,
                players_max: 10,
            };
            let mut state = HuntState::new(4);
            let mut out = Outcomes::default();
            let events =
                [HuntEvent::create(3, config), HuntEvent::join(3, 1), HuntEvent::join(3, 2), HuntEvent::dig(3, 1)];
            let stamped: Vec<_> = events.into_iter().map(|event| Stamped { time_us: 0, event }).collect();
            state.apply(&stamped, &mut out);
            matches!(out.direct[3], HuntOutcome::DigFound { .. })
        })
        .expect("a seed that hides a treasure under player 1");
    format!(
        r#"{{"hunt": 3, "action": "create", "config": {{"width": 4, "height": 4, "seed": {seed}, "treasures_per_round": 4, "value_min": 5, "value_max": 5, "dig_cooldown_ms": 0, "step_max": 4, "players_max": 10}}}}"#
    )
}

fn trove() -> Command {
    Command::new(env!("CARGO_BIN_EXE_trove"))
}

fn serve(data: &std::path::Path, tcp: &str, control: &str) -> (Serve, common::Listening) {
    let args = ["--data", data.to_str().unwrap(), "--tcp", tcp, "--ws", "off", "--control", control];
    let mut server = Serve::spawn(&args);
    let at = server.wait_listening();
    (server, at)
}

/// A `trove watch --plain` whose output lines are collected as they come.
struct Watcher {
    child: std::process::Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Watcher {
    fn start(at: &common::Listening) -> Watcher {
        let mut child = trove()
            .args(["watch", "3", "--plain", "--seconds", "120", "--target"])
            .arg(at.tcp.to_string())
            .arg("--control")
            .arg(at.control.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("trove watch starts");
        let out = child.stdout.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                sink.lock().unwrap().push(line);
            }
        });
        Watcher { child, lines }
    }

    /// Waits (bounded) for a line containing `text`.
    fn wait_for(&self, text: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(l) = self.lines.lock().unwrap().iter().find(|l| l.contains(text)) {
                return l.clone();
            }
            assert!(Instant::now() < deadline, "no line with {text:?} in {:#?}", self.lines.lock().unwrap());
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn outcomes(stdout: &[u8]) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(stdout).lines().map(|l| serde_json::from_str(l).expect("a JSON line")).collect()
}

#[test]
fn send_answers_in_order_and_watch_follows_the_hunt_across_a_restart() {
    let data = common::scratch_dir("watch-send");
    let (mut server, at) = serve(&data, "127.0.0.1:0", "127.0.0.1:0");
    let watcher = Watcher::start(&at);
    watcher.wait_for("hunt 3: watching from update #");

    // From arguments: a create and two joins, answered in order.
    let out = trove()
        .args(["send", "--target", &at.tcp.to_string(), &create_event()])
        .args([r#"{"hunt": 3, "player": 1, "action": "join"}"#, r#"{"hunt": 3, "player": 2, "action": "join"}"#])
        .output()
        .unwrap();
    common::ok(&out);
    let answers = outcomes(&out.stdout);
    let kinds: Vec<&str> = answers.iter().map(|a| a["outcome"]["outcome"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["created", "joined", "joined"]);
    let lines: Vec<u64> = answers.iter().map(|a| a["line"].as_u64().unwrap()).collect();
    assert_eq!(lines, [1, 2, 3]);

    // From standard input, with a comment and a blank line skipped, then
    // a bad line: what came before it is sent and answered, the run fails
    // naming the line.
    let mut child = trove()
        .args(["send", "--file", "-", "--target", &at.tcp.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"# player 1 digs where the seed hid a treasure\n\n{\"hunt\": 3, \"player\": 1, \"action\": \"dig\"}\n{\"hunt\": 3, \"action\": \"fly\"}\n{\"hunt\": 3, \"player\": 2, \"action\": \"dig\"}\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let answers = outcomes(&out.stdout);
    assert_eq!(answers.len(), 1, "{answers:?}");
    assert_eq!(answers[0]["line"], 3);
    assert_eq!(answers[0]["outcome"]["outcome"], "dig_found");
    assert_eq!(answers[0]["outcome"]["value"], 5);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("line 4: unknown action `fly`"), "{stderr}");

    // The watcher saw the find and the new top 10.
    watcher.wait_for("hunt 3: round 1: player 1 found 5");
    watcher.wait_for("top 10: 1. player 1 (5)");
    // The hunt did not exist when the watcher started (the control plane
    // said 404): the count from 0 is exact.
    watcher.wait_for(", 2 players,");

    // The server restarts on its addresses: the watcher reconnects, reads
    // the count from the control plane again, and goes on counting.
    let (tcp, control) = (at.tcp.to_string(), at.control.to_string());
    server.terminate(Duration::from_secs(20));
    watcher.wait_for("disconnected");
    let (_server, again) = serve(&data, &tcp, &control);
    watcher.wait_for("hunt 3: reconnected, from update #");
    let out = trove()
        .args(["send", "--target", &again.tcp.to_string(), r#"{"hunt": 3, "player": 4, "action": "join"}"#])
        .output()
        .unwrap();
    common::ok(&out);
    watcher.wait_for(", 3 players,");
}

#[test]
fn send_refuses_bad_input_before_connecting_to_nothing() {
    // No events at all: a usage error, nothing sent.
    let out = trove().args(["send", "--target", "127.0.0.1:9"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("give events"), "{out:?}");
    // A server that is not there: a clear error naming it.
    let out = trove()
        .args(["send", "--target", "127.0.0.1:9", r#"{"hunt": 1, "player": 1, "action": "join"}"#])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("connecting to 127.0.0.1:9"), "{out:?}");
}
