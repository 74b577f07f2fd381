//! Named key-value trees beside the queue: the suppression list, the event outbox, the audit
//! log, API clients, the due-time index. They live in the same database as the messages, so
//! one [`Spool::flush`](super::Spool::flush) makes all of them durable together.

use super::SpoolError;
use std::collections::BTreeMap;
use std::sync::Mutex;

/// One key and its value.
pub type Entry = (Vec<u8>, Vec<u8>);

/// Every value of `tree` in key order, read as JSON; values that do not parse (written by a
/// later version, say) are skipped. The list commands of the suppression list and the API
/// clients both want exactly this.
pub fn json_values<T: serde::de::DeserializeOwned>(
    tree: &dyn KvTree,
) -> Result<Vec<T>, SpoolError> {
    Ok(tree
        .range_from(b"", usize::MAX)?
        .into_iter()
        .filter_map(|(_, v)| serde_json::from_slice(&v).ok())
        .collect())
}

/// An ordered map of byte keys to byte values. Keys sort bytewise, so big-endian integers
/// and fixed-width prefixes give ordered scans.
pub trait KvTree: Send + Sync {
    /// The value stored under `key`.
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, SpoolError>;
    /// Stores `value` under `key`, replacing any earlier value. Durable with the next flush.
    fn insert(&self, key: &[u8], value: &[u8]) -> Result<(), SpoolError>;
    /// Removes `key`; a missing key is not an error. Returns whether it existed.
    fn remove(&self, key: &[u8]) -> Result<bool, SpoolError>;
    /// Stores `value` under `key` only if the key is absent. Returns false, writing nothing,
    /// when it was present: the primitive for append-only logs and idempotency keys.
    fn insert_new(&self, key: &[u8], value: &[u8]) -> Result<bool, SpoolError>;
    /// Up to `limit` entries with keys `>= start`, ascending.
    fn range_from(&self, start: &[u8], limit: usize) -> Result<Vec<Entry>, SpoolError>;
    /// Up to `limit` entries whose keys start with `prefix`, ascending.
    fn scan_prefix(&self, prefix: &[u8], limit: usize) -> Result<Vec<Entry>, SpoolError>;
    /// The entry with the greatest key, if any (the tail of an append-only log).
    fn last(&self) -> Result<Option<Entry>, SpoolError>;
    /// Number of entries (O(n) on sled: for admin commands and tests, not hot paths).
    fn len(&self) -> Result<usize, SpoolError>;
    /// True when the tree holds nothing.
    fn is_empty(&self) -> Result<bool, SpoolError> {
        Ok(self.len()? == 0)
    }
}

/// A [`KvTree`] in a sled tree.
pub struct SledTree(pub(crate) sled::Tree);

fn storage(e: sled::Error) -> SpoolError {
    SpoolError::Storage(e.to_string())
}

fn collect(
    iter: impl Iterator<Item = sled::Result<(sled::IVec, sled::IVec)>>,
    limit: usize,
) -> Result<Vec<Entry>, SpoolError> {
    let mut out = Vec::new();
    for item in iter.take(limit) {
        let (k, v) = item.map_err(storage)?;
        out.push((k.to_vec(), v.to_vec()));
    }
    Ok(out)
}

impl KvTree for SledTree {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, SpoolError> {
        Ok(self.0.get(key).map_err(storage)?.map(|v| v.to_vec()))
    }

    fn insert(&self, key: &[u8], value: &[u8]) -> Result<(), SpoolError> {
        self.0.insert(key, value).map(|_| ()).map_err(storage)
    }

    fn remove(&self, key: &[u8]) -> Result<bool, SpoolError> {
        Ok(self.0.remove(key).map_err(storage)?.is_some())
    }

    fn insert_new(&self, key: &[u8], value: &[u8]) -> Result<bool, SpoolError> {
        Ok(self
            .0
            .compare_and_swap(key, None as Option<&[u8]>, Some(value))
            .map_err(storage)?
            .is_ok())
    }

    fn range_from(&self, start: &[u8], limit: usize) -> Result<Vec<Entry>, SpoolError> {
        collect(self.0.range(start..), limit)
    }

    fn scan_prefix(&self, prefix: &[u8], limit: usize) -> Result<Vec<Entry>, SpoolError> {
        collect(self.0.scan_prefix(prefix), limit)
    }

    fn last(&self) -> Result<Option<Entry>, SpoolError> {
        Ok(self
            .0
            .last()
            .map_err(storage)?
            .map(|(k, v)| (k.to_vec(), v.to_vec())))
    }

    fn len(&self) -> Result<usize, SpoolError> {
        Ok(self.0.len())
    }
}

/// A [`KvTree`] in memory, for unit tests.
#[derive(Default)]
pub struct MemoryTree(Mutex<BTreeMap<Vec<u8>, Vec<u8>>>);

impl MemoryTree {
    fn map(&self) -> std::sync::MutexGuard<'_, BTreeMap<Vec<u8>, Vec<u8>>> {
        // Every write is one map operation, so a poisoned map is still consistent.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl KvTree for MemoryTree {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, SpoolError> {
        Ok(self.map().get(key).cloned())
    }

    fn insert(&self, key: &[u8], value: &[u8]) -> Result<(), SpoolError> {
        self.map().insert(key.to_vec(), value.to_vec());
        Ok(())
    }

    fn remove(&self, key: &[u8]) -> Result<bool, SpoolError> {
        Ok(self.map().remove(key).is_some())
    }

    fn insert_new(&self, key: &[u8], value: &[u8]) -> Result<bool, SpoolError> {
        let mut map = self.map();
        if map.contains_key(key) {
            return Ok(false);
        }
        map.insert(key.to_vec(), value.to_vec());
        Ok(true)
    }

    fn range_from(&self, start: &[u8], limit: usize) -> Result<Vec<Entry>, SpoolError> {
        Ok(self
            .map()
            .range(start.to_vec()..)
            .take(limit)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }

    fn scan_prefix(&self, prefix: &[u8], limit: usize) -> Result<Vec<Entry>, SpoolError> {
        Ok(self
            .map()
            .range(prefix.to_vec()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .take(limit)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }

    fn last(&self) -> Result<Option<Entry>, SpoolError> {
        Ok(self
            .map()
            .iter()
            .next_back()
            .map(|(k, v)| (k.clone(), v.clone())))
    }

    fn len(&self) -> Result<usize, SpoolError> {
        Ok(self.map().len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exercise(t: &dyn KvTree) {
        assert!(t.is_empty().unwrap());
        t.insert(b"a/2", b"two").unwrap();
        t.insert(b"a/1", b"one").unwrap();
        t.insert(b"b/1", b"bee").unwrap();
        assert_eq!(t.get(b"a/1").unwrap().as_deref(), Some(&b"one"[..]));
        let a = t.scan_prefix(b"a/", 10).unwrap();
        assert_eq!(a.len(), 2);
        assert_eq!(a[0].0, b"a/1");
        assert_eq!(t.range_from(b"a/2", 10).unwrap().len(), 2);
        assert_eq!(t.range_from(b"a/", 1).unwrap()[0].0, b"a/1");
        assert_eq!(t.last().unwrap().unwrap().0, b"b/1");
        assert!(!t.insert_new(b"a/1", b"again").unwrap());
        assert_eq!(t.get(b"a/1").unwrap().as_deref(), Some(&b"one"[..]));
        assert!(t.insert_new(b"a/3", b"three").unwrap());
        assert!(t.remove(b"a/3").unwrap());
        assert!(!t.remove(b"a/3").unwrap());
        assert_eq!(t.len().unwrap(), 3);
    }

    #[test]
    fn memory_tree_contract() {
        exercise(&MemoryTree::default());
    }

    #[test]
    fn sled_tree_contract() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new().path(dir.path()).open().unwrap();
        exercise(&SledTree(db.open_tree("t").unwrap()));
    }
}
