//! What a `trove bench` run can fail with, as the `trove` binary sees it.

use std::path::PathBuf;

/// A failed `trove bench ...`. Every message reads as the command's own
/// (the CLI prints it after `trove: error: `); the variant says where it
/// failed, so a caller can tell a refused flag from a failed run.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A flag, or a combination of flags, is refused before anything runs.
    #[error("{0}")]
    Usage(String),
    /// `--workload` names neither a built-in workload nor a readable,
    /// valid workload file.
    #[error("{0}")]
    Workload(String),
    /// The benchmark started and failed: a server that did not start or
    /// answer, a connection that broke, a step that could not finish.
    #[error("{0}")]
    Run(String),
    /// A figure file (`--json`, `--report`) could not be written.
    #[error("writing {}: {source}", path.display())]
    Write { path: PathBuf, source: std::io::Error },
    /// `--report`'s directory or files could not be made.
    #[error("{0}")]
    Report(String),
}
