//! Every task the server, the cluster layer and the SDK spawn has a name
//! in tokio-console (issue 25): each spawn goes through the crate's
//! `task.rs` helper (`spawn_named`, `spawn_named_on`), which names it. A bare
//! `tokio::spawn(`, `runtime.spawn(`, `Handle::spawn`, `JoinSet::spawn`
//! or `spawn_blocking(` elsewhere in their sources fails here.
//!
//! Not covered, because the library spawns them: axum's per-connection
//! HTTP task of the WebSocket port and its `on_upgrade` task (the
//! connection itself then runs in a named task of its own, `ws.rs`).

use std::path::{Path, PathBuf};

/// Helpers every spawn must go through.
const NAMED: [&str; 2] = ["spawn_named", "spawn_named_on"];

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The spawn calls in `text` that are not the named helpers, as
/// `(line number, the call's name)`. Comments are skipped.
fn bare_spawns(text: &str) -> Vec<(usize, String)> {
    let mut found = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let code = line.split("//").next().unwrap_or("");
        let mut rest = code;
        while let Some(at) = rest.find("spawn") {
            let tail = &rest[at..];
            let name: String = tail.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
            let after = tail[name.len()..].trim_start();
            // `spawn` or `spawn_*` as a word of its own (not `spawned_tasks_count`)...
            let word = !rest[..at].ends_with(|c: char| c.is_alphanumeric() || c == '_')
                && (name == "spawn" || name.starts_with("spawn_"));
            // ...a tokio task's, not a thread's (`std::thread::Builder`
            // names its threads; `thread::scope`'s `scope.spawn`)...
            let thread = code.contains("thread::") || rest[..at].ends_with("scope.");
            // ...called: `spawn(`, or generic `spawn::<T>(`.
            if word
                && !thread
                && (after.starts_with('(') || after.starts_with("::<"))
                && !NAMED.contains(&name.as_str())
            {
                found.push((n + 1, name.clone()));
            }
            rest = &tail[name.len()..];
        }
    }
    found
}

#[test]
fn the_checker_finds_bare_spawns() {
    let text = "fn f() {\n    tokio::spawn(async {});\n    m.spawned_tasks_count();\n    // tokio::spawn(in a comment)\n    \
                rt.spawn(x);\n    crate::task::spawn_named(\"n\", x);\n    h.spawn_blocking(f);\n    \
                std::thread::Builder::new().name(n).spawn(f)?;\n    scope.spawn(|| {});\n}\n";
    assert_eq!(
        bare_spawns(text),
        [(2, "spawn".to_string()), (5, "spawn".to_string()), (7, "spawn_blocking".to_string())]
    );
}

#[test]
fn every_server_cluster_and_sdk_task_is_spawned_named() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut named = 0;
    let mut bare = Vec::new();
    for krate in ["trove-server", "trove-client", "trove-cluster"] {
        let mut files = Vec::new();
        sources(&root.join("crates").join(krate).join("src"), &mut files);
        assert!(!files.is_empty(), "no sources found for {krate}");
        for file in files {
            let text = std::fs::read_to_string(&file).unwrap();
            if file.file_name().is_some_and(|f| f == "task.rs") {
                continue;
            }
            named += NAMED.iter().map(|h| text.matches(&format!("{h}(")).count()).sum::<usize>();
            bare.extend(bare_spawns(&text).into_iter().map(|(n, call)| format!("{}:{n}: {call}(", file.display())));
        }
    }
    assert!(bare.is_empty(), "spawn through task.rs's spawn_named so tokio-console shows a name:\n{}", bare.join("\n"));
    // The accept loops (TCP, WebSocket, control), their connections, the
    // WebSocket connection task, the SDK producer's task and the cluster
    // relay's four.
    assert!(named >= 11, "only {named} named spawns found: did the helpers move?");
}
