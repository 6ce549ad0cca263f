//! Helpers shared by the `trove` integration tests.

use std::path::PathBuf;

/// A fresh scratch directory for one test, named after it.
pub fn scratch_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("trove-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Writes `workloads/standard.toml` with each `(from, to)` text edit applied
/// into `dir/name` and returns its path.
pub fn workload_file(dir: &std::path::Path, name: &str, edits: &[(&str, &str)]) -> PathBuf {
    let mut text = include_str!("../../../../workloads/standard.toml").to_string();
    for (from, to) in edits {
        assert!(text.contains(from), "workloads/standard.toml has no `{from}`");
        text = text.replace(from, to);
    }
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}
