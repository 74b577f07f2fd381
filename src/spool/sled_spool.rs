//! The sled-backed spool. One tree; keys `e/<id>` (JSON envelope) and `b/<id>` (body), so a
//! message's two records are written and removed by one atomic batch.

use super::{Envelope, KvTree, SledTree, Spool, SpoolError};
use std::path::Path;
use std::sync::Arc;

/// A spool in a sled database on disk.
pub struct SledSpool {
    db: sled::Db,
    tree: sled::Tree,
    meta: sled::Tree,
}

impl SledSpool {
    /// Opens (or creates) the spool database under `dir/spool.sled`.
    pub fn open(dir: &Path) -> Result<Self, SpoolError> {
        std::fs::create_dir_all(dir).map_err(|e| SpoolError::Storage(e.to_string()))?;
        let db = sled::Config::new()
            .path(dir.join("spool.sled"))
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
        Ok(Self { db, tree, meta })
    }
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
        let mut batch = sled::Batch::default();
        batch.insert(body_key(&envelope.id), body);
        batch.insert(env_key(&envelope.id), encode(envelope)?);
        self.tree.apply_batch(batch).map_err(storage)
    }

    fn flush(&self) -> Result<(), SpoolError> {
        self.db.flush().map_err(storage)?;
        self.tree.flush().map(|_| ()).map_err(storage)
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
        // Compare-and-swap loop so a concurrent remove wins: never resurrect a deleted message.
        loop {
            let Some(current) = self.tree.get(&key).map_err(storage)? else {
                return Ok(false);
            };
            match self
                .tree
                .compare_and_swap(&key, Some(current), Some(new.clone()))
                .map_err(storage)?
            {
                Ok(()) => return Ok(true),
                Err(_) => continue,
            }
        }
    }

    fn remove(&self, id: &str) -> Result<(), SpoolError> {
        let mut batch = sled::Batch::default();
        batch.remove(env_key(id));
        batch.remove(body_key(id));
        self.tree.apply_batch(batch).map_err(storage)
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
    use crate::spool::{ENVELOPE_VERSION, RcptStatus, RecipientRecord};

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
            recipients: vec![RecipientRecord {
                address: "bob@example.com".into(),
                orcpt: None,
                notify: None,
                status: RcptStatus::Queued,
                attempts: 0,
                remote: None,
                tls: None,
                method: None,
                tls_verified: None,
                updated: 1,
            }],
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
