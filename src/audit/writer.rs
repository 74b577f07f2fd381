//! The writer thread: takes every queued record, appends them under an exclusive lock with
//! one `fsync`, acknowledges them, then replaces the head file.

use super::AuditError;
use super::record::{Action, Actor, GENESIS, Record, rfc3339};
use super::verify::{Head, read_head, write_head};
use serde_json::{Value, json};
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Most records written with one `fsync`.
const MAX_BATCH: usize = 4096;

/// How long a batch without waiters gathers more records before it is written.
const LINGER: Duration = Duration::from_millis(20);

/// How long a batch that others wait for gathers more records under load.
const GATHER: Duration = Duration::from_millis(1);

/// Longest the head file lags the log while records keep arriving.
const HEAD_EVERY: Duration = Duration::from_millis(200);

/// Takes `first` and every job already queued; when none of them has a waiter, keeps
/// gathering for up to [`LINGER`] or until a job with a waiter arrives. When `busy` (the
/// last batch had several waiters), a batch with waiters gathers for [`GATHER`] too: one
/// `fsync` for a few more records costs the waiters a millisecond and saves the machine a
/// sync and a wake-up per record.
fn collect(first: Job, rx: &mpsc::Receiver<Job>, busy: bool) -> Vec<Job> {
    let started = Instant::now();
    let mut batch = vec![first];
    let mut waited_for = batch[0].ack.is_some();
    while batch.len() < MAX_BATCH {
        let next = match rx.try_recv() {
            Ok(j) => Some(j),
            Err(mpsc::TryRecvError::Disconnected) => None,
            Err(mpsc::TryRecvError::Empty) => {
                let window = match (waited_for, busy) {
                    (false, _) => LINGER,
                    (true, true) => GATHER,
                    (true, false) => Duration::ZERO,
                };
                window
                    .checked_sub(started.elapsed())
                    .and_then(|left| rx.recv_timeout(left).ok())
            }
        };
        let Some(j) = next else { break };
        waited_for |= j.ack.is_some();
        batch.push(j);
    }
    batch
}

/// Where a caller waits for its record to be on disk.
pub(super) enum Ack {
    /// A thread blocked in `record_blocking`.
    Sync(mpsc::SyncSender<Result<u64, AuditError>>),
    /// A task awaiting `record_durable`.
    Async(tokio::sync::oneshot::Sender<Result<u64, AuditError>>),
}

impl Ack {
    fn send(self, r: Result<u64, AuditError>) {
        match self {
            Ack::Sync(tx) => {
                let _ = tx.send(r);
            }
            Ack::Async(tx) => {
                let _ = tx.send(r);
            }
        }
    }
}

/// One record to write.
pub(super) struct Job {
    pub millis: u64,
    pub actor: Actor,
    pub action: Action,
    pub details: Value,
    pub ack: Option<Ack>,
}

/// The end of the chain as this writer last saw it.
#[derive(Debug, Clone)]
struct Tail {
    /// File length after the last record.
    len: u64,
    seq: u64,
    hash: String,
    /// Identity of the file (another inode means the file was replaced).
    ino: u64,
}

/// Owns the open file and the cached tail.
pub(super) struct Writer {
    path: PathBuf,
    head_path: PathBuf,
    file: Option<File>,
    tail: Option<Tail>,
}

impl Writer {
    pub fn new(path: PathBuf) -> Self {
        let head_path = super::verify::head_path(&path);
        Self {
            path,
            head_path,
            file: None,
            tail: None,
        }
    }

    /// Serves jobs until every sender is gone.
    ///
    /// A batch that nobody waits for (delivery outcomes, queued with [`Ack`]-less jobs)
    /// lingers up to [`LINGER`] for more records, so a busy queue writes a few batches a
    /// second instead of one per record; a job with a waiter ends the linger at once. The
    /// head file is rewritten when the queue has gone quiet, or at least every
    /// [`HEAD_EVERY`] while it stays busy: its own `fsync` is otherwise a second one per
    /// batch, serialised in front of the next batch's waiters.
    pub fn run(mut self, rx: mpsc::Receiver<Job>) {
        let mut carry: Option<Job> = None;
        let mut head_due = false;
        let mut busy = false;
        let mut head_written = Instant::now();
        loop {
            let first = match carry.take() {
                Some(j) => j,
                None => match rx.recv() {
                    Ok(j) => j,
                    Err(_) => break,
                },
            };
            let batch = collect(first, &rx, busy);
            busy = batch.iter().filter(|j| j.ack.is_some()).count() > 1;
            let result = self.append(&batch);
            if let Err(e) = &result {
                tracing::error!(error = %e, records = batch.len(), "audit log write failed");
                // Re-read everything next time: the file may be half-written.
                self.tail = None;
                self.file = None;
            }
            for (i, job) in batch.into_iter().enumerate() {
                if let Some(ack) = job.ack {
                    ack.send(match &result {
                        Ok(seqs) => Ok(seqs.get(i).copied().unwrap_or(0)),
                        Err(e) => Err(AuditError::Corrupt {
                            path: self.path.clone(),
                            why: e.to_string(),
                        }),
                    });
                }
            }
            head_due |= result.is_ok();
            carry = rx.try_recv().ok();
            if head_due && (carry.is_none() || head_written.elapsed() >= HEAD_EVERY) {
                self.update_head();
                head_due = false;
                head_written = Instant::now();
            }
        }
        if head_due {
            self.update_head();
        }
    }

    fn io(&self, source: std::io::Error) -> AuditError {
        AuditError::Io {
            path: self.path.clone(),
            source,
        }
    }

    /// Appends the batch under the lock; returns each job's seq.
    fn append(&mut self, batch: &[Job]) -> Result<Vec<u64>, AuditError> {
        let file = self.open()?;
        file.lock().map_err(|e| self.io(e))?;
        let result = self.append_locked(&file, batch);
        let _ = file.unlock();
        self.file = Some(file);
        result
    }

    /// The open file, reopened when the path now names another file (rotated or replaced).
    fn open(&mut self) -> Result<File, AuditError> {
        use std::os::unix::fs::MetadataExt;
        let on_disk = std::fs::metadata(&self.path).ok().map(|m| m.ino());
        if let Some(f) = self.file.take() {
            let ours = f.metadata().map(|m| m.ino()).ok();
            if ours.is_some() && ours == on_disk {
                return Ok(f);
            }
        }
        self.tail = None;
        let mut opts = OpenOptions::new();
        opts.read(true).append(true).create(true);
        std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o640);
        opts.open(&self.path).map_err(|e| self.io(e))
    }

    fn append_locked(&mut self, file: &File, batch: &[Job]) -> Result<Vec<u64>, AuditError> {
        use std::os::unix::fs::MetadataExt;
        let meta = file.metadata().map_err(|e| self.io(e))?;
        let mut notes = Vec::new();
        let tail = match &self.tail {
            Some(t) if t.len == meta.len() && t.ino == meta.ino() => t.clone(),
            _ => self.reload(file, meta.len(), meta.ino(), &mut notes)?,
        };
        let mut seq = tail.seq;
        let mut hash = tail.hash.clone();
        let mut buf = Vec::with_capacity(batch.len() * 256);
        let mut push = |millis: u64, actor: Actor, action: Action, details: Value| {
            seq += 1;
            let r = Record::new(seq, rfc3339(millis), actor, action, details, &hash);
            buf.extend_from_slice(r.line().as_bytes());
            buf.push(b'\n');
            hash = r.hash;
            seq
        };
        let first_millis = batch.first().map(|j| j.millis).unwrap_or(0);
        for (action, details) in notes {
            push(first_millis, Actor::system("audit"), action, details);
        }
        let seqs = batch
            .iter()
            .map(|j| push(j.millis, j.actor.clone(), j.action, j.details.clone()))
            .collect::<Vec<_>>();
        let mut f = file;
        f.write_all(&buf).map_err(|e| self.io(e))?;
        f.sync_data().map_err(|e| self.io(e))?;
        let new_tail = Tail {
            len: tail.len + buf.len() as u64,
            seq,
            hash: hash.clone(),
            ino: tail.ino,
        };
        self.tail = Some(new_tail);
        Ok(seqs)
    }

    /// Replaces the head file with the end of the last batch, after its records were
    /// acknowledged: the head's own fsync and rename stay off the waiting clients' path. A
    /// crash in between leaves the head behind the log, which `verify` accepts. Skipped when
    /// another process appended meanwhile (its head is newer).
    fn update_head(&mut self) {
        let (Some(file), Some(tail)) = (self.file.as_ref(), self.tail.clone()) else {
            return;
        };
        if file.lock().is_err() {
            return;
        }
        let current = file.metadata().map(|m| m.len()).ok();
        if current == Some(tail.len) {
            let head = Head {
                seq: tail.seq,
                hash: tail.hash,
            };
            if let Err(e) = write_head(&self.head_path, &head) {
                tracing::error!(error = %e, path = %self.head_path.display(), "audit head file not written");
            }
        }
        let _ = file.unlock();
    }

    /// Reads the end of the chain from the file (another process appended, or first use),
    /// drops an incomplete last line, and compares with the head file. What it finds wrong is
    /// returned in `notes` as records to write first, so the evidence stays in the chain.
    fn reload(
        &self,
        file: &File,
        len: u64,
        ino: u64,
        notes: &mut Vec<(Action, Value)>,
    ) -> Result<Tail, AuditError> {
        let mut len = len;
        let (seq, hash) = if len == 0 {
            (0, GENESIS.to_string())
        } else {
            let (line, line_end) = last_line(file, len).map_err(|e| self.io(e))?;
            if line_end < len {
                // A crash during a write: that record was never acknowledged.
                file.set_len(line_end).map_err(|e| self.io(e))?;
                notes.push((
                    Action::PartialLineRemoved,
                    json!({"bytes": len - line_end, "offset": line_end}),
                ));
                len = line_end;
            }
            if line.is_empty() {
                (0, GENESIS.to_string())
            } else {
                let r: Record = serde_json::from_slice(&line).map_err(|e| AuditError::Corrupt {
                    path: self.path.clone(),
                    why: e.to_string(),
                })?;
                (r.seq, r.hash)
            }
        };
        let head = read_head(&self.head_path).map_err(|source| AuditError::Io {
            path: self.head_path.clone(),
            source,
        })?;
        match head {
            None if seq == 0 => {
                // A new log: the head file exists before the first record, so a missing
                // head file later is never a crash artefact.
                write_head(
                    &self.head_path,
                    &Head {
                        seq: 0,
                        hash: GENESIS.into(),
                    },
                )
                .map_err(|source| AuditError::Io {
                    path: self.head_path.clone(),
                    source,
                })?;
            }
            None => notes.push((
                Action::HeadMismatch,
                json!({"head": null, "log_seq": seq, "log_hash": hash,
                       "why": "the head file is missing"}),
            )),
            Some(h) if h.seq > seq || (h.seq == seq && h.hash != hash) => notes.push((
                Action::HeadMismatch,
                json!({"head": {"seq": h.seq, "hash": h.hash}, "log_seq": seq, "log_hash": hash,
                       "why": "the log ends before the record the head file names"}),
            )),
            Some(_) => {}
        }
        for (action, _) in notes.iter() {
            tracing::warn!(action = action.name(), log = %self.path.display(), "audit log damage found; recorded in the log");
        }
        Ok(Tail {
            len,
            seq,
            hash,
            ino,
        })
    }
}

/// The last complete line of the file (without its newline) and the offset just after it.
/// Bytes after the last newline are an incomplete line; a file without any newline has no
/// complete line (empty result, offset 0).
fn last_line(file: &File, len: u64) -> std::io::Result<(Vec<u8>, u64)> {
    const CHUNK: u64 = 64 * 1024;
    let mut f = file;
    // `buf` holds the file's bytes from `pos` to the end.
    let mut buf: Vec<u8> = Vec::new();
    let mut pos = len;
    loop {
        if let Some(nl) = buf.iter().rposition(|b| *b == b'\n') {
            if let Some(prev) = buf[..nl].iter().rposition(|b| *b == b'\n') {
                return Ok((buf[prev + 1..nl].to_vec(), pos + nl as u64 + 1));
            }
            if pos == 0 {
                return Ok((buf[..nl].to_vec(), nl as u64 + 1));
            }
        } else if pos == 0 {
            return Ok((Vec::new(), 0));
        }
        let start = pos.saturating_sub(CHUNK);
        let mut chunk = vec![0u8; usize::try_from(pos - start).unwrap_or(0)];
        f.seek(SeekFrom::Start(start))?;
        f.read_exact(&mut chunk)?;
        chunk.extend_from_slice(&buf);
        buf = chunk;
        pos = start;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_line_finds_the_last_complete_line_across_chunks() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let p = dir.path().join("f");
        let long = "x".repeat(150_000);
        for (content, want, end) in [
            ("a\nbb\n".to_string(), "bb", 5u64),
            ("a\nbb\nccc".to_string(), "bb", 5),
            ("only".to_string(), "", 0),
            (format!("a\n{long}\n"), long.as_str(), 150_003),
            (format!("{long}\n"), long.as_str(), 150_001),
            (format!("{long}\nz\n{long}"), "z", 150_003),
        ] {
            std::fs::write(&p, &content).unwrap_or_else(|e| panic!("{e}"));
            let f = File::open(&p).unwrap_or_else(|e| panic!("{e}"));
            let (line, e) = last_line(&f, content.len() as u64).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(String::from_utf8_lossy(&line), want);
            assert_eq!(e, end);
        }
    }
}
