//! Every task the cluster layer spawns goes through here, with a name, as
//! the server's and the SDK's do (docs/decisions/0016-named-tasks.md):
//! tokio-console (`trove serve --cluster ... --console`) then lists the
//! relay's tasks as `relay control`, `relay interest`, `relay publish` and
//! `relay updates partition P` instead of source locations. A name is one
//! short string per spawn (three per node, one per relayed partition).
//! `trove-server/tests/task_names.rs` fails on a spawn that bypasses this.
//!
//! `tokio::task::Builder` exists only under `--cfg tokio_unstable`, which
//! .cargo/config.toml sets; a build without it spawns the same tasks
//! unnamed.

use std::future::Future;

use tokio::runtime::Handle;
use tokio::task::JoinHandle;

/// Spawns `future` on the current runtime as a task named `name`.
#[track_caller]
pub(crate) fn spawn_named<F>(name: &str, future: F) -> JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    spawn_named_on(&Handle::current(), name, future)
}

/// Spawns `future` on `runtime` as a task named `name`.
#[track_caller]
pub(crate) fn spawn_named_on<F>(runtime: &Handle, name: &str, future: F) -> JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    #[cfg(tokio_unstable)]
    {
        // `Builder::spawn_on` returns `Ok` in every tokio release so far
        // (see trove-server's task.rs).
        tokio::task::Builder::new().name(name).spawn_on(future, runtime).expect("tokio refused to spawn a task")
    }
    #[cfg(not(tokio_unstable))]
    {
        let _ = name;
        runtime.spawn(future)
    }
}
