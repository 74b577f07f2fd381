//! The audit log: an append-only, hash-chained JSON-lines file of who did what (API clients,
//! SMTP users, administrators, the server itself), for compliance staff to ship and check
//! with ordinary tools.
//!
//! A file rather than a sled tree, because the server and the CLI (working offline) both
//! append, and because people read it with `jq`, `grep` and `sha256sum`. Each append takes an
//! exclusive `flock` on the file, continues the chain from the last record (cached, and
//! re-read when the file grew because another process appended), writes, `fsync`s, and then
//! rewrites the head file (`FILE.head`: the last seq and hash). The head file is what lets
//! `verify` notice records deleted from the end, which a chain alone cannot. While records
//! keep arriving the head is rewritten at most every 200 ms (and whenever the writer goes
//! idle), so it can lag the log by that much; `verify` accepts a head behind the log.
//!
//! Appends go through one writer thread per [`AuditLog`] that takes every record waiting and
//! writes them with one `fsync`, so a burst of thousands of records costs a few `fsync`s.
//! Records nobody waits for gather for up to 20 ms first.
//! [`AuditLog::record`] only queues; [`AuditLog::record_durable`] and
//! [`AuditLog::record_blocking`] return once the record is on disk.
//!
//! Limits: the chain proves the file was not changed *by someone who did not also recompute
//! every later hash and the head file*. Someone who can write both files can forge a
//! consistent history; shipping the log (or just the head hashes) off the machine as it
//! grows, or signing with a key the writer does not hold, closes that gap.

mod record;
mod verify;
mod writer;

pub use record::{Action, Actor, ActorKind, GENESIS, Record, canonical, rfc3339};
pub use verify::{
    ExportError, Format, Head, Problem, Verified, export, head_path, parse_time, read_head, verify,
    write_head,
};

use crate::queue::Clock;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, mpsc};

/// Why an audit record could not be written or the log read.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// Reading or writing the log or its head file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The last line of the log is not a record, so the chain cannot be continued.
    #[error("{path}: the last record cannot be read ({why}); run `sealpost audit verify`")]
    Corrupt {
        /// The log.
        path: PathBuf,
        /// What is wrong with it.
        why: String,
    },
    /// The writer thread is gone (the log was closed).
    #[error("the audit log is closed")]
    Closed,
}

/// The audit log of one file. Cheap to share behind an `Arc`; dropping the last handle lets
/// the writer finish what is queued and stop.
pub struct AuditLog {
    path: Option<PathBuf>,
    jobs: Mutex<Option<mpsc::Sender<writer::Job>>>,
    worker: Mutex<Option<std::thread::JoinHandle<()>>>,
    clock: Arc<dyn Clock>,
}

impl Drop for AuditLog {
    /// Lets the writer finish every queued record before the handle goes: a CLI that
    /// exits right after [`AuditLog::record`] still gets its record written.
    fn drop(&mut self) {
        self.jobs.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(h) = self.worker.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = h.join();
        }
    }
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog")
            .field("path", &self.path)
            .finish()
    }
}

impl AuditLog {
    /// Opens (creating when needed) the log at `path` and starts its writer thread. Times
    /// come from `clock`.
    pub fn open(path: &Path, clock: Arc<dyn Clock>) -> Result<Arc<Self>, AuditError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| AuditError::Io {
                path: dir.to_path_buf(),
                source,
            })?;
        }
        let w = writer::Writer::new(path.to_path_buf());
        let (tx, rx) = mpsc::channel();
        let worker = std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || w.run(rx))
            .map_err(|source| AuditError::Io {
                path: path.to_path_buf(),
                source,
            })?;
        Ok(Arc::new(Self {
            path: Some(path.to_path_buf()),
            jobs: Mutex::new(Some(tx)),
            worker: Mutex::new(Some(worker)),
            clock,
        }))
    }

    /// A log that records nothing (`[audit] enabled = false`).
    pub fn disabled() -> Arc<Self> {
        Arc::new(Self {
            path: None,
            jobs: Mutex::new(None),
            worker: Mutex::new(None),
            clock: Arc::new(crate::queue::SystemClock),
        })
    }

    /// The file, unless disabled.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// Queues a record and returns at once; it is written within milliseconds. For events
    /// seen where waiting is not possible (inside the SMTP session's hooks). A write failure
    /// is logged.
    pub fn record(&self, actor: Actor, action: Action, details: Value) {
        let _ = self.submit(actor, action, details, None);
    }

    /// Writes a record and waits (without blocking the async runtime) until it is on disk;
    /// returns its seq (0 when the log is disabled).
    pub async fn record_durable(
        &self,
        actor: Actor,
        action: Action,
        details: Value,
    ) -> Result<u64, AuditError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        if !self.submit(actor, action, details, Some(writer::Ack::Async(tx)))? {
            return Ok(0);
        }
        rx.await.map_err(|_| AuditError::Closed)?
    }

    /// Writes a record and waits until it is on disk, like [`AuditLog::record_durable`],
    /// but logs a failure instead of returning it: for recorders whose own work must go on
    /// (an accepted message is not refused because the audit disk is full).
    pub async fn record_synced(&self, actor: Actor, action: Action, details: Value) {
        if let Err(e) = self.record_durable(actor, action, details).await {
            tracing::error!(error = %e, action = action.name(), "audit record not written");
        }
    }

    /// Hands a record to the writer now and returns a handle to wait for it on disk, so the
    /// caller can overlap that wait with its own (the SMTP and API acceptance paths flush the
    /// spool meanwhile). Dropping the handle does not withdraw the record.
    pub fn record_pending(&self, actor: Actor, action: Action, details: Value) -> PendingRecord {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let action_name = action.name();
        let state = match self.submit(actor, action, details, Some(writer::Ack::Async(tx))) {
            Ok(true) => Ok(Some(rx)),
            Ok(false) => Ok(None),
            Err(e) => Err(e),
        };
        PendingRecord { state, action_name }
    }

    /// Writes a record and blocks the thread until it is on disk (CLI, outside any async
    /// runtime); returns its seq (0 when the log is disabled).
    pub fn record_blocking(
        &self,
        actor: Actor,
        action: Action,
        details: Value,
    ) -> Result<u64, AuditError> {
        let (tx, rx) = mpsc::sync_channel(1);
        if !self.submit(actor, action, details, Some(writer::Ack::Sync(tx)))? {
            return Ok(0);
        }
        rx.recv().map_err(|_| AuditError::Closed)?
    }

    /// A per-recipient delivery outcome (`MessageDelivered`, `MessageDeferred`,
    /// `MessageBounced`) by the queue: `details` should carry the method, TLS version,
    /// cipher and verification, the remote host and the reply; the queue id and recipient
    /// are added here. Queued without waiting, like [`AuditLog::record`].
    pub fn record_message_event(
        &self,
        action: Action,
        queue_id: &str,
        recipient: &str,
        details: Value,
    ) {
        let mut details = match details {
            Value::Object(m) => m,
            _ => serde_json::Map::new(),
        };
        details.insert("queue_id".into(), Value::from(queue_id));
        details.insert("recipient".into(), Value::from(recipient));
        self.record(Actor::system("queue"), action, Value::Object(details));
    }

    /// Queues a job; `Ok(false)` when the log is disabled.
    fn submit(
        &self,
        actor: Actor,
        action: Action,
        details: Value,
        ack: Option<writer::Ack>,
    ) -> Result<bool, AuditError> {
        let jobs = self.jobs.lock().unwrap_or_else(|p| p.into_inner());
        let Some(tx) = jobs.as_ref() else {
            return Ok(false);
        };
        let job = writer::Job {
            millis: self.clock.now_millis(),
            actor,
            action,
            details,
            ack,
        };
        tx.send(job).map_err(|_| AuditError::Closed)?;
        Ok(true)
    }
}

/// The administrator running this process: an actor of kind `admin_cli` named after the OS
/// user (from `/etc/passwd`), or `uid:N` when the name is unknown.
pub fn current_admin() -> Actor {
    use std::os::unix::fs::MetadataExt;
    match std::fs::metadata("/proc/self") {
        Ok(m) => Actor::admin(&user_name(m.uid())),
        Err(_) => Actor::admin(&std::env::var("USER").unwrap_or_else(|_| "unknown".into())),
    }
}

/// The name of OS user `uid` from `/etc/passwd`, or `uid:N`.
pub fn user_name(uid: u32) -> String {
    std::fs::read_to_string("/etc/passwd")
        .ok()
        .and_then(|text| {
            text.lines().find_map(|l| {
                let mut f = l.split(':');
                let name = f.next()?;
                let id = f.nth(1)?;
                (id.parse::<u32>().ok()? == uid).then(|| name.to_string())
            })
        })
        .unwrap_or_else(|| format!("uid:{uid}"))
}

/// A record handed to the writer by [`AuditLog::record_pending`].
pub struct PendingRecord {
    state: Result<Option<tokio::sync::oneshot::Receiver<Result<u64, AuditError>>>, AuditError>,
    action_name: &'static str,
}

impl PendingRecord {
    /// Waits until the record is on disk; a failure is logged (the log never holds up mail).
    pub async fn wait(self) {
        let result = match self.state {
            Ok(Some(rx)) => rx.await.unwrap_or(Err(AuditError::Closed)).map(|_| ()),
            Ok(None) => Ok(()),
            Err(e) => Err(e),
        };
        if let Err(e) = result {
            tracing::error!(error = %e, action = self.action_name, "audit record not written");
        }
    }
}
