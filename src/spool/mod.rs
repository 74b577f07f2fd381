//! The durable spool: every accepted message lives here, wholly or not at all, until each
//! recipient has a final status.
//!
//! [`Spool`] is the storage edge (sled in production, memory in unit tests). [`GroupCommit`]
//! makes writes durable: concurrent sessions waiting for their 250 share one flush.

mod due;
mod group;
mod memory;
mod record;
mod sled_spool;
mod tree;

pub use due::{DueKey, due_class};
pub use group::{FlushObserver, GroupCommit};
pub use memory::MemorySpool;
pub use record::*;
pub use sled_spool::SledSpool;
pub use tree::{Entry, KvTree, MemoryTree, SledTree, json_values};

/// Why the spool could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// The storage engine failed (disk full, I/O error, corruption).
    #[error("spool storage error: {0}")]
    Storage(String),
    /// A stored record could not be decoded (written by an incompatible version?).
    #[error("spool record {id} is unreadable: {reason}")]
    Corrupt {
        /// Queue id of the bad record.
        id: String,
        /// The decoder's complaint.
        reason: String,
    },
    /// The spool's file system has less free space than the reserve kept for the queue
    /// (`[server] spool_min_free_mb`) plus the message: refused before anything is written,
    /// because sled cannot recover from a write failing for lack of space without a restart.
    #[error("insufficient spool space: {free_mb} MiB free, {need_mb} MiB needed")]
    Full {
        /// Free MiB on the spool's file system (for unprivileged writers).
        free_mb: u64,
        /// The reserve plus the message, in MiB.
        need_mb: u64,
    },
    /// The database is held by another process (a running server).
    #[error("spool is locked by another process (is `sealpost serve` running?)")]
    Locked,
}

/// Storage for queued messages. Bodies are stored once per message; envelopes carry the
/// per-recipient state. After a crash an envelope never exists without its body; whatever
/// else an interrupted `insert` or `remove` left (a due entry without an envelope, a body
/// without one) is cleared by [`Spool::repair`] at start.
pub trait Spool: Send + Sync {
    /// Stores a new message's body, envelope and due-index entry; the envelope, written last,
    /// is what makes the message exist. Not yet durable: call [`Spool::flush`] (or
    /// [`GroupCommit::commit`]) before acknowledging.
    fn insert(&self, envelope: &Envelope, body: &[u8]) -> Result<(), SpoolError>;
    /// Blocks until every earlier write is on stable storage.
    fn flush(&self) -> Result<(), SpoolError>;
    /// Reads an envelope; `None` when the message is gone (delivered or deleted).
    fn envelope(&self, id: &str) -> Result<Option<Envelope>, SpoolError>;
    /// Reads a body; `None` when the message is gone.
    fn body(&self, id: &str) -> Result<Option<Vec<u8>>, SpoolError>;
    /// Replaces an existing envelope (status changes) and moves its due-index entry to the
    /// new `next_due`, atomically. Returns false, writing nothing, when the message was
    /// deleted meanwhile, so a delivery racing `queue delete` cannot revive it.
    fn update(&self, envelope: &Envelope) -> Result<bool, SpoolError>;
    /// Removes envelope (first: the message is gone from then on), body and due-index entry.
    /// Removing a missing id is not an error.
    fn remove(&self, id: &str) -> Result<(), SpoolError>;
    /// Due-index entries of `class` with keys at or after `from` (a [`DueKey`] or
    /// [`DueKey::class_start`]) and due at or before `now`, at most `limit`, in due order.
    /// The scheduler reads only what is due: no scan of the whole queue per tick.
    fn due(
        &self,
        class: &str,
        from: &[u8],
        now: u64,
        limit: usize,
    ) -> Result<Vec<DueKey>, SpoolError>;
    /// The earliest `next_due` of `class` that is later than `now`, to know how long to sleep.
    fn next_due_after(&self, class: &str, now: u64) -> Result<Option<u64>, SpoolError>;
    /// Messages in the due index per class (one pass over the index keys, at start).
    fn count_by_class(&self) -> Result<Vec<(String, usize)>, SpoolError>;
    /// Clears what an interrupted `insert` or `remove` left behind: due entries without an
    /// envelope, with their bodies. Run once at start, before scheduling; returns how many
    /// entries went. Storage that writes all parts at once has nothing to do.
    fn repair(&self) -> Result<usize, SpoolError> {
        Ok(0)
    }
    /// Every stored envelope, oldest first: used for recovery at start and `queue list`.
    fn list(&self) -> Result<Vec<Envelope>, SpoolError>;
    /// Reads a small named record beside the queue (probe caches, TLS history).
    fn meta_get(&self, key: &str) -> Result<Option<Vec<u8>>, SpoolError>;
    /// Writes a small named record beside the queue; durable with the next flush.
    fn meta_put(&self, key: &str, value: &[u8]) -> Result<(), SpoolError>;
    /// Opens (creating on first use) the named tree beside the queue, e.g. `suppression`,
    /// `events`, `audit`. The same name always yields the same data; a flush covers it.
    fn tree(&self, name: &str) -> Result<std::sync::Arc<dyn KvTree>, SpoolError>;
}
