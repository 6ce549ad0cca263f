//! The core and the rules depend on no async runtime, clock, filesystem or
//! network (ARCHITECTURE.md, "Invariants"). Checked two ways: their
//! dependency trees hold only our own crates, and their sources name no
//! module that reads the clock or does I/O.

use std::path::{Path, PathBuf};
use std::process::Command;

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

/// The crates `krate` depends on (normal and build edges), by name.
fn dependency_names(krate: &str) -> Vec<String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let output = Command::new(cargo)
        .current_dir(workspace_root())
        .args(["tree", "--offline", "-p", krate, "-e", "normal,build", "--prefix", "none", "--format", "{p}"])
        .output()
        .expect("cargo tree runs");
    assert!(output.status.success(), "cargo tree failed: {}", String::from_utf8_lossy(&output.stderr));
    let mut names: Vec<String> = String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect();
    names.sort();
    names.dedup();
    names
}

#[test]
fn core_and_rules_depend_only_on_our_pure_crates() {
    assert_eq!(dependency_names("trove-core"), ["trove-core"]);
    assert_eq!(dependency_names("trove-hunt"), ["trove-core", "trove-hunt"]);
    // The wire codec is shared by the async server and SDK but is itself
    // plain bytes in, bytes out.
    assert_eq!(dependency_names("trove-proto"), ["trove-core", "trove-hunt", "trove-proto"]);
}

#[test]
fn core_and_rules_name_no_clock_io_or_runtime() {
    const FORBIDDEN: [&str; 12] = [
        "std::time",
        "Instant",
        "SystemTime",
        "std::fs",
        "std::net",
        "std::io",
        "std::thread",
        "std::env",
        "std::process",
        "tokio",
        "async fn",
        ".await",
    ];
    let mut checked = 0;
    for krate in ["trove-core", "trove-hunt", "trove-proto"] {
        let src = workspace_root().join("crates").join(krate).join("src");
        for entry in std::fs::read_dir(&src).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).unwrap();
                for word in FORBIDDEN {
                    assert!(!text.contains(word), "{} mentions `{word}`", path.display());
                }
                checked += 1;
            }
        }
    }
    assert!(checked >= 10, "only {checked} source files found");
}
