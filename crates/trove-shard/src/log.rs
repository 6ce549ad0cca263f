//! Where a shard's applied batches become durable before they are
//! acknowledged: the seam between a shard's journal thread and what it
//! writes to.
//!
//! Two logs implement [`ShardLog`]: the local journal ([`JournalWriter`]:
//! segment files and `fdatasync`), and a cluster's replicated log
//! (`crates/trove-cluster`: one JetStream stream per partition, durable at
//! the publish acknowledgement, every append fenced by the stream's last
//! sequence). The journal thread (`journaled.rs`) drives either the same
//! way: append what the shard hands it, `write`, `sync` at the policy's
//! point, release the acknowledgements the sync covered, and snapshot when
//! the shard asks.
//!
//! The seam is the batch log, not the file system (`Storage`): a JetStream
//! stream has no files to rename or truncate, and its fencing is what keeps
//! a deposed owner from appending, which no file operation could express
//! (docs/decisions/0037).

use trove_core::{Record, Stamped};
use trove_journal::{JournalWriter, Run};

/// Why a log could not take or make durable what it was given. Whatever
/// the kind, nothing it held unsynced is acknowledged.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct LogError {
    pub kind: LogErrorKind,
    pub message: String,
}

/// What a [`LogError`] means for the shard and its producers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogErrorKind {
    /// The local disk refused a write or a sync: fail-stop for the whole
    /// engine (producers hear `internal`; a restart recovers).
    Io,
    /// Another owner appended to the partition's log: this node was
    /// deposed. The shard stops; its producers are told to find the new
    /// owner (`not_owner`).
    Fenced,
    /// The log could not make the batch durable now (no quorum, a timeout):
    /// the shard stops; its producers resend later (`unavailable`).
    Unavailable,
}

impl LogError {
    pub fn io(message: impl Into<String>) -> Self {
        Self { kind: LogErrorKind::Io, message: message.into() }
    }
}

/// A shard's durable log, driven by its journal thread.
pub trait ShardLog<E: Record>: Send + 'static {
    /// The shard (partition) this log belongs to.
    fn shard(&self) -> u32;

    /// Adds an applied batch to what the next [`ShardLog::write`] sends:
    /// `parts` one after the other, described by `runs` (their producers
    /// and sequences), each event at `time_us` if given.
    fn append(&mut self, runs: &[Run<'_>], parts: &[Vec<Stamped<E>>], time_us: Option<u64>);

    /// Sends everything appended since the last write; returns its bytes.
    fn write(&mut self) -> Result<u64, LogError>;

    /// Makes everything written durable; `true` if it had anything to do.
    fn sync(&mut self) -> Result<bool, LogError>;

    /// Makes a snapshot durable that covers everything appended so far,
    /// then drops what it covers. `bytes(next)` encodes the snapshot given
    /// `next`, the position of the first batch it does not cover. Returns
    /// the snapshot's size.
    fn snapshot(&mut self, bytes: &mut dyn FnMut(u64) -> Vec<u8>) -> Result<usize, LogError>;

    /// For tests that make the journal thread panic (`journaled.rs`).
    #[doc(hidden)]
    fn test_hook(&self) {}
}

impl<E: Record> ShardLog<E> for JournalWriter {
    fn shard(&self) -> u32 {
        JournalWriter::shard(self)
    }

    fn append(&mut self, runs: &[Run<'_>], parts: &[Vec<Stamped<E>>], time_us: Option<u64>) {
        self.append_parts(runs, parts, time_us);
    }

    fn write(&mut self) -> Result<u64, LogError> {
        self.flush().map_err(|e| LogError::io(format!("write: {e}")))
    }

    fn sync(&mut self) -> Result<bool, LogError> {
        JournalWriter::sync(self).map_err(|e| LogError::io(format!("fdatasync: {e}")))
    }

    /// Order matters for crashes: first every batch before the snapshot is
    /// written and synced and a segment starting at the snapshot's batch
    /// exists; only then is the snapshot made durable; only then are
    /// covered files removed. A crash between any two steps leaves a
    /// complete journal.
    fn snapshot(&mut self, bytes: &mut dyn FnMut(u64) -> Vec<u8>) -> Result<usize, LogError> {
        let next_batch = self.next_batch();
        let bytes = bytes(next_batch);
        // Read back before anything is replaced: a snapshot start-up would
        // refuse must never take the place of the journal it covers.
        trove_journal::snapshot::decode_snapshot(&bytes)
            .map_err(|e| LogError::io(format!("a snapshot failed its own check: {e}")))?;
        self.roll_at_snapshot().map_err(|e| LogError::io(format!("starting a segment for a snapshot: {e}")))?;
        let storage = self.storage().clone();
        trove_journal::snapshot::write_snapshot_in(&*storage, self.dir(), next_batch, &bytes)
            .map_err(|e| LogError::io(format!("writing a snapshot: {e}")))?;
        trove_journal::snapshot::remove_covered_in(&*storage, self.dir(), next_batch)
            .map_err(|e| LogError::io(format!("removing journal files a snapshot covers: {e}")))?;
        Ok(bytes.len())
    }

    fn test_hook(&self) {
        #[cfg(test)]
        crate::journaled::tests::panic_if_asked(self.dir());
    }
}
