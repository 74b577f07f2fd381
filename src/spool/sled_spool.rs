//! The sled-backed spool. One tree; keys `e/<id>` (JSON envelope), `b/<id>` (body) and
//! `d/<class>/<due><id>` (the due index), so a message's records are written, moved and
//! removed by one atomic batch or transaction.

use super::{DueKey, Envelope, KvTree, SledTree, Spool, SpoolError};
use sled::transaction::{ConflictableTransactionError, TransactionError};
use std::path::Path;
use std::sync::Arc;

/// Page cache used by [`SledSpool::open`]: 64 MiB, as `[server] spool_cache_mb` defaults to.
pub const DEFAULT_CACHE_BYTES: u64 = 64 * 1024 * 1024;

/// A spool in a sled database on disk.
pub struct SledSpool {
    db: sled::Db,
    tree: sled::Tree,
    meta: sled::Tree,
    /// sled's log file, opened again: sled's flush ends in `sync_file_range`, which writes
    /// the data but neither the drive's cache nor the file's size and extents, so `flush`
    /// follows it with an `fdatasync` of this handle (the same inode) for power loss.
    log: std::fs::File,
    /// The directory whose file system `insert` checks for space.
    dir: std::path::PathBuf,
    /// Bytes that must stay free after a new message (0: no check).
    min_free: u64,
}

impl SledSpool {
    /// Opens (or creates) the spool database under `dir/spool.sled` with the default page
    /// cache ([`DEFAULT_CACHE_BYTES`]): for the CLI's offline commands and tests.
    pub fn open(dir: &Path) -> Result<Self, SpoolError> {
        Self::open_with_cache(dir, DEFAULT_CACHE_BYTES)
    }

    /// Opens (or creates) the spool database with a page cache of `cache_bytes`
    /// (`[server] spool_cache_mb`), which bounds the server's memory with a deep queue.
    pub fn open_with_cache(dir: &Path, cache_bytes: u64) -> Result<Self, SpoolError> {
        std::fs::create_dir_all(dir).map_err(|e| SpoolError::Storage(e.to_string()))?;
        let sled_dir = dir.join("spool.sled");
        let db = sled::Config::new()
            .path(&sled_dir)
            .segment_size(segment_size(&sled_dir))
            .cache_capacity(cache_bytes)
            // Flushing is ours (group commit); sled's background flusher only adds I/O.
            .flush_every_ms(None)
            .open()
            .map_err(|e| match e {
                sled::Error::Io(ref io) if io.kind() == std::io::ErrorKind::WouldBlock => {
                    SpoolError::Locked
                }
                sled::Error::Io(ref io) if io.to_string().contains("lock") => SpoolError::Locked,
                other => SpoolError::Storage(other.to_string()),
            })?;
        let tree = db.open_tree("messages").map_err(storage)?;
        let meta = db.open_tree("meta").map_err(storage)?;
        let log = std::fs::File::open(sled_dir.join("db"))
            .map_err(|e| SpoolError::Storage(format!("sled log: {e}")))?;
        Ok(Self {
            db,
            tree,
            meta,
            log,
            dir: dir.to_path_buf(),
            min_free: 0,
        })
    }

    /// Makes `insert` refuse ([`SpoolError::Full`]) a message that would leave less than
    /// `bytes` free on the spool's file system, like Postfix's `queue_minfree`: sled meets a
    /// full disk by spinning in its log reservation for good, so the server must not get there.
    pub fn with_min_free(mut self, bytes: u64) -> Self {
        self.min_free = bytes;
        self
    }

    /// Refuses a message of `len` bytes when the space left would fall below the reserve.
    fn check_space(&self, len: u64) -> Result<(), SpoolError> {
        if self.min_free == 0 {
            return Ok(());
        }
        let st = rustix::fs::statvfs(&self.dir)
            .map_err(|e| SpoolError::Storage(format!("statvfs {}: {e}", self.dir.display())))?;
        let free = st.f_bavail.saturating_mul(st.f_frsize);
        // The message goes to sled's log once more when its node is rewritten.
        let need = self.min_free.saturating_add(len.saturating_mul(2));
        if free < need {
            return Err(SpoolError::Full {
                free_mb: free >> 20,
                need_mb: need.div_ceil(1 << 20),
            });
        }
        Ok(())
    }
}

/// Log segment size of a new spool. sled writes anything larger than a quarter segment
/// (a big message body, or a tree node holding several bodies) to a file of its own, a
/// file created and later deleted per write; with sled's default 512 KiB that was most
/// writes of 100 KB mail. 8 MiB keeps values up to 2 MiB in the log.
const SEGMENT_BYTES: usize = 8 << 20;

/// The segment size to open `path` with: an existing spool keeps the one it was created
/// with (sled refuses another), read from sled's `conf` file; a new one gets
/// [`SEGMENT_BYTES`].
fn segment_size(path: &Path) -> usize {
    std::fs::read_to_string(path.join("conf"))
        .ok()
        .and_then(|conf| {
            conf.lines()
                .find_map(|l| l.strip_prefix("segment_size: "))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(SEGMENT_BYTES)
}

/// Runs a transaction on one tree, mapping both error kinds to [`SpoolError`].
fn transact<T>(
    tree: &sled::Tree,
    f: impl Fn(
        &sled::transaction::TransactionalTree,
    ) -> Result<T, ConflictableTransactionError<SpoolError>>,
) -> Result<T, SpoolError> {
    tree.transaction(f).map_err(|e| match e {
        TransactionError::Abort(e) => e,
        TransactionError::Storage(e) => storage(e),
    })
}

fn storage(e: sled::Error) -> SpoolError {
    SpoolError::Storage(e.to_string())
}

fn env_key(id: &str) -> Vec<u8> {
    format!("e/{id}").into_bytes()
}

fn body_key(id: &str) -> Vec<u8> {
    format!("b/{id}").into_bytes()
}

fn decode(id: &str, bytes: &[u8]) -> Result<Envelope, SpoolError> {
    serde_json::from_slice(bytes).map_err(|e| SpoolError::Corrupt {
        id: id.to_string(),
        reason: e.to_string(),
    })
}

fn encode(env: &Envelope) -> Result<Vec<u8>, SpoolError> {
    serde_json::to_vec(env).map_err(|e| SpoolError::Storage(e.to_string()))
}

impl Spool for SledSpool {
    fn insert(&self, envelope: &Envelope, body: &[u8]) -> Result<(), SpoolError> {
        // Three single-key writes, not a `sled::Batch`: sled rolls its log buffer before and
        // after every batch or transaction (a log write, a sync and a wake-up of its I/O
        // threads each), which was a third of the server's CPU at a thousand messages a
        // second. Order makes up for the lost atomicity: sled recovers a prefix of its log,
        // so after a crash the envelope (written last) exists only with its body, and a due
        // entry without an envelope is cleared by `repair`. A scheduler that meets the due
        // entry before the envelope skips it, and `Queue::note_due` after the commit brings
        // it back.
        self.check_space(body.len() as u64)?;
        self.tree
            .insert(DueKey::of(envelope), &[] as &[u8])
            .map_err(storage)?;
        self.tree
            .insert(body_key(&envelope.id), body)
            .map_err(storage)?;
        self.tree
            .insert(env_key(&envelope.id), encode(envelope)?)
            .map_err(storage)?;
        Ok(())
    }

    fn flush(&self) -> Result<(), SpoolError> {
        // Every tree of a sled database shares one log: one flush makes all of them durable
        // (a second `tree.flush()` only wrote and synced what arrived in between).
        self.db.flush().map_err(storage)?;
        self.log
            .sync_data()
            .map_err(|e| SpoolError::Storage(format!("sled log: {e}")))
    }

    fn envelope(&self, id: &str) -> Result<Option<Envelope>, SpoolError> {
        match self.tree.get(env_key(id)).map_err(storage)? {
            Some(v) => decode(id, &v).map(Some),
            None => Ok(None),
        }
    }

    fn body(&self, id: &str) -> Result<Option<Vec<u8>>, SpoolError> {
        Ok(self
            .tree
            .get(body_key(id))
            .map_err(storage)?
            .map(|v| v.to_vec()))
    }

    fn update(&self, envelope: &Envelope) -> Result<bool, SpoolError> {
        let key = env_key(&envelope.id);
        let new = encode(envelope)?;
        let new_due = DueKey::of(envelope);
        // One transaction, so a concurrent remove wins (never resurrect a deleted message)
        // and the envelope and its due entry never disagree.
        transact(&self.tree, |tx| {
            let Some(current) = tx.get(&key)? else {
                return Ok(false);
            };
            let old =
                decode(&envelope.id, &current).map_err(ConflictableTransactionError::Abort)?;
            let old_due = DueKey::of(&old);
            if old_due != new_due {
                tx.remove(old_due)?;
            }
            tx.insert(new_due.as_slice(), &[] as &[u8])?;
            tx.insert(key.as_slice(), new.as_slice())?;
            Ok(true)
        })
    }

    fn remove(&self, id: &str) -> Result<(), SpoolError> {
        // Single-key writes for the reason given in `insert`. The envelope goes first, so a
        // concurrent `update` (a transaction, serialised with these writes) finds it gone
        // and revives nothing; what a crash leaves after it is cleared by `repair`.
        let current = self.tree.remove(env_key(id)).map_err(storage)?;
        self.tree.remove(body_key(id)).map_err(storage)?;
        // An unreadable envelope still goes; its due entry is cleared by `repair`.
        if let Some(env) = current.and_then(|c| decode(id, &c).ok()) {
            self.tree.remove(DueKey::of(&env)).map_err(storage)?;
        }
        Ok(())
    }

    fn repair(&self) -> Result<usize, SpoolError> {
        let mut dangling = Vec::new();
        for item in self.tree.scan_prefix(b"d/") {
            let (k, _) = item.map_err(storage)?;
            let Some(d) = DueKey::class_of_key(&k).and_then(|c| DueKey::parse(c, &k)) else {
                continue;
            };
            if !self.tree.contains_key(env_key(&d.id)).map_err(storage)? {
                dangling.push((k, d.id));
            }
        }
        for (key, id) in &dangling {
            tracing::warn!(queue_id = %id, "spool: due entry without an envelope (interrupted write) removed");
            self.tree.remove(body_key(id)).map_err(storage)?;
            self.tree.remove(key).map_err(storage)?;
        }
        if !dangling.is_empty() {
            self.flush()?;
        }
        Ok(dangling.len())
    }

    fn due(
        &self,
        class: &str,
        from: &[u8],
        now: u64,
        limit: usize,
    ) -> Result<Vec<DueKey>, SpoolError> {
        let prefix = DueKey::class_prefix(class);
        let start = if from < prefix.as_slice() {
            prefix.clone()
        } else {
            from.to_vec()
        };
        let end = DueKey::key(class, now.saturating_add(1), "");
        let mut out = Vec::new();
        if start >= end {
            return Ok(out);
        }
        for item in self.tree.range(start..end) {
            if out.len() >= limit {
                break;
            }
            let (k, _) = item.map_err(storage)?;
            if let Some(d) = DueKey::parse(class, &k) {
                out.push(d);
            }
        }
        Ok(out)
    }

    fn next_due_after(&self, class: &str, now: u64) -> Result<Option<u64>, SpoolError> {
        let start = DueKey::key(class, now.saturating_add(1), "");
        match self.tree.range(start..).next() {
            Some(item) => {
                let (k, _) = item.map_err(storage)?;
                Ok(DueKey::parse(class, &k).map(|d| d.due))
            }
            None => Ok(None),
        }
    }

    fn count_by_class(&self) -> Result<Vec<(String, usize)>, SpoolError> {
        let mut out: Vec<(String, usize)> = Vec::new();
        for item in self.tree.scan_prefix(b"d/") {
            let (k, _) = item.map_err(storage)?;
            let Some(class) = DueKey::class_of_key(&k) else {
                continue;
            };
            match out.last_mut() {
                Some((c, n)) if c == class => *n += 1,
                _ => out.push((class.to_string(), 1)),
            }
        }
        Ok(out)
    }

    fn meta_get(&self, key: &str) -> Result<Option<Vec<u8>>, SpoolError> {
        Ok(self.meta.get(key).map_err(storage)?.map(|v| v.to_vec()))
    }

    fn meta_put(&self, key: &str, value: &[u8]) -> Result<(), SpoolError> {
        self.meta.insert(key, value).map(|_| ()).map_err(storage)
    }

    fn tree(&self, name: &str) -> Result<Arc<dyn KvTree>, SpoolError> {
        Ok(Arc::new(SledTree(
            self.db.open_tree(format!("t/{name}")).map_err(storage)?,
        )))
    }

    fn list(&self) -> Result<Vec<Envelope>, SpoolError> {
        let mut out = Vec::new();
        for item in self.tree.scan_prefix(b"e/") {
            let (k, v) = item.map_err(storage)?;
            let id = String::from_utf8_lossy(&k[2..]).to_string();
            out.push(decode(&id, &v)?);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spool::{ENVELOPE_VERSION, RecipientRecord};

    pub(crate) fn sample(id: &str) -> Envelope {
        Envelope {
            version: ENVELOPE_VERSION,
            id: id.into(),
            created: 1,
            next_due: 1,
            attempts: 0,
            mail_from: "alice@example.net".into(),
            envid: None,
            ret: None,
            smtputf8: false,
            eight_bit: false,
            size: 5,
            helo: "c.example.net".into(),
            client: "127.0.0.1".into(),
            authenticated: None,
            is_dsn: false,
            listener: None,
            class: None,
            api_client: None,
            recipients: vec![RecipientRecord::queued("bob@example.com".into(), 1)],
        }
    }

    #[test]
    fn survives_reopen_and_update_does_not_revive() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = SledSpool::open(dir.path()).unwrap();
            s.insert(&sample("A1"), b"hello").unwrap();
            s.insert(&sample("A2"), b"world").unwrap();
            s.flush().unwrap();
        }
        // sled releases its file lock from a background thread shortly after the drop.
        let s = reopen(dir.path());
        assert_eq!(s.list().unwrap().len(), 2);
        assert_eq!(s.body("A1").unwrap().unwrap(), b"hello");
        s.remove("A1").unwrap();
        let mut e = sample("A1");
        e.attempts = 3;
        assert!(
            !s.update(&e).unwrap(),
            "update must not recreate a removed message"
        );
        assert!(s.envelope("A1").unwrap().is_none());
        assert!(s.body("A1").unwrap().is_none());
        let mut e2 = s.envelope("A2").unwrap().unwrap();
        e2.attempts = 7;
        assert!(s.update(&e2).unwrap());
        assert_eq!(s.envelope("A2").unwrap().unwrap().attempts, 7);
    }

    #[test]
    fn repair_clears_what_an_interrupted_insert_or_remove_left() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = SledSpool::open(dir.path()).unwrap();
            s.insert(&sample("KEEP"), b"kept").unwrap();
            // An insert cut off after its due entry and body (the envelope never written).
            let cut = sample("CUT");
            s.tree.insert(DueKey::of(&cut), &[] as &[u8]).unwrap();
            s.tree.insert(body_key("CUT"), &b"half"[..]).unwrap();
            // A remove cut off after the envelope went.
            s.insert(&sample("GONE"), b"gone").unwrap();
            s.tree.remove(env_key("GONE")).unwrap();
            s.flush().unwrap();
        }
        let s = reopen(dir.path());
        assert_eq!(
            s.count_by_class().unwrap(),
            vec![("default".to_string(), 3)]
        );
        assert_eq!(s.repair().unwrap(), 2);
        assert_eq!(
            s.count_by_class().unwrap(),
            vec![("default".to_string(), 1)]
        );
        assert!(s.body("CUT").unwrap().is_none());
        assert!(s.body("GONE").unwrap().is_none());
        assert_eq!(s.body("KEEP").unwrap().unwrap(), b"kept");
        assert_eq!(s.list().unwrap().len(), 1);
        assert_eq!(s.repair().unwrap(), 0, "nothing left to repair");
        // A normal remove leaves nothing behind.
        s.remove("KEEP").unwrap();
        assert!(s.count_by_class().unwrap().is_empty());
        assert!(s.body("KEEP").unwrap().is_none());
    }

    #[test]
    fn a_new_spool_keeps_100_kb_bodies_in_the_log_and_reopens_with_its_segment_size() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = SledSpool::open(dir.path()).unwrap();
            for i in 0..8 {
                s.insert(&sample(&format!("B{i}")), &vec![b'x'; 100 * 1024])
                    .unwrap();
            }
            s.flush().unwrap();
        }
        let sled_dir = dir.path().join("spool.sled");
        assert_eq!(segment_size(&sled_dir), SEGMENT_BYTES);
        let blobs = std::fs::read_dir(sled_dir.join("blobs")).map_or(0, |d| d.count());
        assert_eq!(blobs, 0, "100 KB bodies went to blob files");
        let s = reopen(dir.path());
        assert_eq!(s.body("B7").unwrap().unwrap().len(), 100 * 1024);
    }

    #[test]
    fn insert_refuses_a_message_that_would_eat_the_reserve() {
        let dir = tempfile::tempdir().unwrap();
        let st = rustix::fs::statvfs(dir.path()).unwrap();
        let free = st.f_bavail * st.f_frsize;
        // A reserve just above what is free: refused, nothing written.
        let s = SledSpool::open(dir.path())
            .unwrap()
            .with_min_free(free + (64 << 20));
        match s.insert(&sample("F1"), b"hello") {
            Err(SpoolError::Full { need_mb, .. }) => assert!(need_mb >= (free >> 20)),
            other => panic!("expected Full, got {other:?}"),
        }
        assert!(s.envelope("F1").unwrap().is_none());
        assert!(s.count_by_class().unwrap().is_empty());
        // A reserve well below what is free: stored.
        let s = s.with_min_free(1 << 20);
        s.insert(&sample("F2"), b"hello").unwrap();
        assert!(s.envelope("F2").unwrap().is_some());
    }

    fn reopen(dir: &Path) -> SledSpool {
        for _ in 0..200 {
            match SledSpool::open(dir) {
                Err(SpoolError::Locked) => std::thread::sleep(std::time::Duration::from_millis(25)),
                other => return other.unwrap(),
            }
        }
        panic!("spool still locked after 5 s");
    }

    #[test]
    fn second_open_reports_locked() {
        let dir = tempfile::tempdir().unwrap();
        let _s = SledSpool::open(dir.path()).unwrap();
        assert!(matches!(
            SledSpool::open(dir.path()),
            Err(SpoolError::Locked)
        ));
    }
}
