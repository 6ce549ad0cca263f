//! Every task the server spawns goes through here, with a name.
//!
//! tokio-console (`trove serve --console`) lists tasks by name, so a
//! reader sees `tcp conn 10.0.0.7:51234` instead of a source location.
//! A name is fixed when the task is spawned: a connection's names its
//! peer, not the producer id its HELLO announces later. Naming costs one
//! short string per spawn (per connection, never per event).
//! `tests/task_names.rs` fails on a spawn that bypasses these helpers.
//!
//! `tokio::task::Builder` exists only under `--cfg tokio_unstable`, which
//! .cargo/config.toml sets; a build without it (a `RUSTFLAGS` override,
//! such as cargo-fuzz's) spawns the same tasks unnamed.

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
        // `Builder::spawn_on` returns `Ok` in every tokio release so far;
        // the `Result` is reserved for spawn failures tokio may add. A
        // task that cannot be spawned is a broken runtime, as for
        // `tokio::spawn`, which panics then too.
        tokio::task::Builder::new().name(name).spawn_on(future, runtime).expect("tokio refused to spawn a task")
    }
    #[cfg(not(tokio_unstable))]
    {
        let _ = name;
        runtime.spawn(future)
    }
}
