//! Every task the SDK spawns goes through here, with a name.
//!
//! tokio-console lists tasks by name, so an application's user sees
//! `trove-client producer 7 -> 127.0.0.1:7400` among its own tasks. The
//! name is fixed at spawn, when the WELCOME's producer id is known; a
//! reconnect keeps the task and so the name. `trove-server`'s
//! `tests/task_names.rs` fails on a spawn that bypasses this helper.
//!
//! `tokio::task::Builder` exists only under `--cfg tokio_unstable`; an
//! application built without it spawns the same task unnamed.

use std::future::Future;

use tokio::task::JoinHandle;

/// Spawns `future` on the current runtime as a task named `name`.
#[track_caller]
pub(crate) fn spawn_named<F>(name: &str, future: F) -> JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    #[cfg(tokio_unstable)]
    {
        // `Builder::spawn` returns `Ok` in every tokio release so far; the
        // `Result` is reserved for spawn failures tokio may add. A task
        // that cannot be spawned is a broken runtime, as for
        // `tokio::spawn`, which panics then too.
        tokio::task::Builder::new().name(name).spawn(future).expect("tokio refused to spawn a task")
    }
    #[cfg(not(tokio_unstable))]
    {
        let _ = name;
        tokio::spawn(future)
    }
}
