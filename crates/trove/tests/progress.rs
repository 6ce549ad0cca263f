//! The progress line of `trove replay` and of `trove serve`'s recovery:
//! drawn on a terminal, never when stderr is a pipe or a file.
//! The terminal half needs `script` (util-linux) for a pseudo-terminal,
//! and fails without it rather than pass unchecked.

mod common;

use std::process::Command;

use common::{Serve, trove};

#[test]
fn replay_and_recovery_draw_progress_on_a_terminal_only() {
    let dir = common::scratch_dir("progress-replay");
    let data = dir.join("data");
    let d = data.to_str().unwrap();
    // A journal that takes a while to read back, with no snapshot over it:
    // 8M events into a server that is then killed.
    let args = [
        "--data",
        d,
        "--fsync",
        "never",
        "--shards",
        "2",
        "--tcp",
        "127.0.0.1:0",
        "--ws",
        "off",
        "--control",
        "127.0.0.1:0",
    ];
    let mut server = Serve::spawn(&args);
    let tcp = server.wait_ready().to_string();
    common::ok(&trove(&["bench", "net", "--target", &tcp, "--events", "8000000", "--connections", "2"]));
    server.signal("KILL");
    let _ = server.wait_exit(std::time::Duration::from_secs(30));

    // Recovery at start, stderr a pipe: not a byte of progress.
    let mut server = Serve::spawn(&args);
    server.wait_ready();
    let (_, stderr) = server.stop(std::time::Duration::from_secs(30));
    assert!(!stderr.contains('\r') && !stderr.contains("segments,"), "{stderr}");
    // The stop snapshotted: kill it again after more events, for replay.
    let mut server = Serve::spawn(&args);
    let tcp = server.wait_ready().to_string();
    common::ok(&trove(&["bench", "net", "--target", &tcp, "--events", "24000000", "--connections", "2"]));
    server.signal("KILL");
    let _ = server.wait_exit(std::time::Duration::from_secs(30));

    // stderr a pipe: the report, and not a byte of progress.
    let out = trove(&["replay", "--data", d]);
    common::ok(&out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains('\r') && !stderr.contains("segments,"), "{stderr}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("state hash"));

    // On a terminal (a pseudo-terminal from `script`), the line is drawn,
    // redrawn with `\r`, then cleared. It waits half a second before it
    // shows; the environment sets that to 0 here, so the line is owed
    // whatever this machine's speed.
    let exe = env!("CARGO_BIN_EXE_trove");
    let pty = Command::new("script")
        .args(["-qec", &format!("env TROVE_PROGRESS_AFTER_MS=0 {exe} replay --data {d}"), "/dev/null"])
        .output()
        .expect("`script` (util-linux) puts the replay on a pseudo-terminal: install util-linux");
    let seen = String::from_utf8_lossy(&pty.stdout);
    assert!(seen.contains("state hash"), "{seen}");
    assert!(seen.contains("\rreplay: ") && seen.contains(" segments, "), "{seen:?}");
    assert!(seen.contains(" events at "), "{seen:?}");

    // `trove serve`'s recovery of the same journal on a terminal draws
    // its line too (the piped half is checked above). The server is
    // stopped by `timeout`'s SIGINT whether or not recovery has ended by
    // then: the line is drawn from the first moment.
    let pty = Command::new("script")
        .args([
            "-qec",
            &format!(
                "env TROVE_PROGRESS_AFTER_MS=0 timeout -s INT 5 {exe} serve {}",
                args.iter().map(|a| format!("'{a}'")).collect::<Vec<_>>().join(" ")
            ),
            "/dev/null",
        ])
        .output()
        .expect("`script` (util-linux) puts the server on a pseudo-terminal");
    let seen = String::from_utf8_lossy(&pty.stdout);
    assert!(seen.contains("\rrecovery: ") && seen.contains(" segments, "), "{seen:?}");
    std::fs::remove_dir_all(&dir).ok();
}
