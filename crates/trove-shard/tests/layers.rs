//! The crate's own layering, checked over its sources: the shard core does
//! no I/O and reads no clock, and nothing below `engine.rs` knows the
//! engine's `Inner` (docs/decisions/0018-shard-core.md).

use std::path::Path;

fn source(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("src").join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// The code of a source file, without its comments and its test module.
fn code(name: &str) -> String {
    let text = source(name);
    let text = text.split("#[cfg(test)]").next().unwrap_or_default();
    text.lines().map(|l| l.split("//").next().unwrap_or_default()).collect::<Vec<_>>().join("\n")
}

fn words(text: &str) -> impl Iterator<Item = &str> {
    text.split(|c: char| !(c.is_alphanumeric() || c == '_'))
}

#[test]
fn the_shard_core_reads_no_clock_and_owns_no_thread_channel_or_file() {
    let core = code("shard_core.rs");
    for banned in
        ["Instant::now", "SystemTime", "std::thread", "mpsc", "std::fs", "std::net", "tokio", "EngineClock", "sleep"]
    {
        assert!(!core.contains(banned), "shard_core.rs uses {banned}");
    }
    assert!(!core.contains("crate::engine"), "the core knows nothing of the engine");
}

#[test]
fn no_module_below_the_engine_knows_its_inner_state() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).expect("src") {
        let name = entry.expect("entry").file_name().into_string().expect("utf-8 name");
        if !name.ends_with(".rs") || name == "engine.rs" || name == "lib.rs" {
            continue;
        }
        let code = code(&name);
        assert!(!words(&code).any(|w| w == "Inner"), "{name} names the engine's Inner");
        checked += 1;
    }
    assert!(checked >= 8, "the modules were found ({checked})");
}
