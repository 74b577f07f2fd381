//! An in-memory spool for unit tests of the queue: same contract, no disk.

use super::{DueKey, Envelope, KvTree, MemoryTree, Spool, SpoolError};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

/// A spool held in memory. `flush` is a no-op; everything is lost on drop.
#[derive(Default)]
pub struct MemorySpool {
    inner: Mutex<BTreeMap<String, (Envelope, Vec<u8>)>>,
    meta: Mutex<BTreeMap<String, Vec<u8>>>,
    trees: Mutex<BTreeMap<String, Arc<MemoryTree>>>,
    due: Mutex<BTreeSet<Vec<u8>>>,
}

impl MemorySpool {
    /// An empty spool.
    pub fn new() -> Self {
        Self::default()
    }

    fn due_index(&self) -> std::sync::MutexGuard<'_, BTreeSet<Vec<u8>>> {
        self.due.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, (Envelope, Vec<u8>)>> {
        // A panic while holding the lock leaves a consistent map (every write is one insert).
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Spool for MemorySpool {
    fn insert(&self, envelope: &Envelope, body: &[u8]) -> Result<(), SpoolError> {
        let mut map = self.lock();
        map.insert(envelope.id.clone(), (envelope.clone(), body.to_vec()));
        self.due_index().insert(DueKey::of(envelope));
        Ok(())
    }

    fn flush(&self) -> Result<(), SpoolError> {
        Ok(())
    }

    fn envelope(&self, id: &str) -> Result<Option<Envelope>, SpoolError> {
        Ok(self.lock().get(id).map(|(e, _)| e.clone()))
    }

    fn body(&self, id: &str) -> Result<Option<Vec<u8>>, SpoolError> {
        Ok(self.lock().get(id).map(|(_, b)| b.clone()))
    }

    fn update(&self, envelope: &Envelope) -> Result<bool, SpoolError> {
        let mut map = self.lock();
        match map.get_mut(&envelope.id) {
            Some(slot) => {
                let mut due = self.due_index();
                due.remove(&DueKey::of(&slot.0));
                due.insert(DueKey::of(envelope));
                slot.0 = envelope.clone();
                Ok(true)
            }
            None => Ok(false),
        }
    }

    fn remove(&self, id: &str) -> Result<(), SpoolError> {
        if let Some((env, _)) = self.lock().remove(id) {
            self.due_index().remove(&DueKey::of(&env));
        }
        Ok(())
    }

    fn due(
        &self,
        class: &str,
        from: &[u8],
        now: u64,
        limit: usize,
    ) -> Result<Vec<DueKey>, SpoolError> {
        let end = DueKey::key(class, now.saturating_add(1), "");
        let start = from.max(DueKey::class_start(class).as_slice()).to_vec();
        if start >= end {
            return Ok(Vec::new());
        }
        Ok(self
            .due_index()
            .range(start..end)
            .filter_map(|k| DueKey::parse(class, k))
            .take(limit)
            .collect())
    }

    fn next_due_after(&self, class: &str, now: u64) -> Result<Option<u64>, SpoolError> {
        let start = DueKey::key(class, now.saturating_add(1), "");
        Ok(self
            .due_index()
            .range(start..)
            .next()
            .and_then(|k| DueKey::parse(class, k))
            .map(|d| d.due))
    }

    fn count_by_class(&self) -> Result<Vec<(String, usize)>, SpoolError> {
        let mut out: BTreeMap<String, usize> = BTreeMap::new();
        for k in self.due_index().iter() {
            if let Some(c) = DueKey::class_of_key(k) {
                *out.entry(c.to_string()).or_default() += 1;
            }
        }
        Ok(out.into_iter().collect())
    }

    fn list(&self) -> Result<Vec<Envelope>, SpoolError> {
        Ok(self.lock().values().map(|(e, _)| e.clone()).collect())
    }

    fn meta_get(&self, key: &str) -> Result<Option<Vec<u8>>, SpoolError> {
        let meta = self.meta.lock().unwrap_or_else(|p| p.into_inner());
        Ok(meta.get(key).cloned())
    }

    fn meta_put(&self, key: &str, value: &[u8]) -> Result<(), SpoolError> {
        let mut meta = self.meta.lock().unwrap_or_else(|p| p.into_inner());
        meta.insert(key.to_string(), value.to_vec());
        Ok(())
    }

    fn tree(&self, name: &str) -> Result<Arc<dyn KvTree>, SpoolError> {
        let mut trees = self.trees.lock().unwrap_or_else(|p| p.into_inner());
        Ok(trees.entry(name.to_string()).or_default().clone())
    }
}
