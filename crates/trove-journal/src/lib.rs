//! The journal: what makes an acknowledgement a promise.
//!
//! Each shard appends the batches it applied to its own directory of
//! segment files. A batch is one frame (one `write`), checked by a CRC32C;
//! the fsync policy decides when a frame counts as durable, and the engine
//! releases acknowledgements only then. At start, the journal is read back,
//! a torn tail is cut off, corruption in the middle stops start-up (unless
//! the operator asks to repair), and the batches are replayed through the
//! game to rebuild the exact state. Format: `docs/journal.md`.
//!
//! # Layout
//!
//! - [`lock`]: [`DataDirLock`], the exclusive lock an engine holds on its
//!   data directory, taken before anything in it is read or written.
//! - [`format`]: the byte layout: segment header, batch frame, entries;
//!   encoding and total (never panicking) decoding.
//! - [`segment`]: reading a segment file frame by frame, classifying a bad
//!   frame as a torn tail or as corruption.
//! - [`writer`]: [`JournalWriter`], appending frames, rolling segments,
//!   syncing by [`FsyncPolicy`].
//! - [`recover`]: [`recover_shard`], reading a shard's whole journal back,
//!   repairing a torn tail, and feeding every batch to a callback.
//! - [`progress`]: how far recovery has read (segments, bytes, events),
//!   counters a progress display polls.
//! - [`snapshot`]: snapshot files (a shard's state at a batch boundary),
//!   written atomically, and the removal of what they make unnecessary.
//! - [`storage`]: [`Storage`], the file operations all of the above do,
//!   on the real file system ([`FsStorage`]) or on the simulator's
//!   in-memory disk with faults ([`SimStorage`]).
//! - [`planted`]: test-only planted mistakes (the `planted` feature).

pub mod format;
pub mod lock;
#[doc(hidden)]
pub mod planted;
pub mod progress;
pub mod recover;
pub mod segment;
pub mod snapshot;
pub mod storage;
pub mod writer;

pub use format::{Entry, FrameError, Run, SEGMENT_HEADER_BYTES};
pub use lock::{DataDirLock, LockError};
pub use recover::{JournalError, RecoverOptions, Recovered, recover_shard, recover_shard_in};
pub use snapshot::SnapshotError;
pub use storage::{FsStorage, SimFaults, SimStorage, Storage, StorageFile};
pub use writer::{
    FsyncPolicy, JournalWriter, ParseFsyncError, WriteIo, create_dir_durably, create_dir_durably_in, encode_bounded,
};

/// The directory of shard `index` under a data directory.
pub fn shard_dir(data: &std::path::Path, index: usize) -> std::path::PathBuf {
    data.join(format!("shard-{index:03}"))
}
