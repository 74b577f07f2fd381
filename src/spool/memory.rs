//! An in-memory spool for unit tests of the queue: same contract, no disk.

use super::{Envelope, KvTree, MemoryTree, Spool, SpoolError};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// A spool held in memory. `flush` is a no-op; everything is lost on drop.
#[derive(Default)]
pub struct MemorySpool {
    inner: Mutex<BTreeMap<String, (Envelope, Vec<u8>)>>,
    meta: Mutex<BTreeMap<String, Vec<u8>>>,
    trees: Mutex<BTreeMap<String, Arc<MemoryTree>>>,
}

impl MemorySpool {
    /// An empty spool.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, (Envelope, Vec<u8>)>> {
        // A panic while holding the lock leaves a consistent map (every write is one insert).
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Spool for MemorySpool {
    fn insert(&self, envelope: &Envelope, body: &[u8]) -> Result<(), SpoolError> {
        self.lock()
            .insert(envelope.id.clone(), (envelope.clone(), body.to_vec()));
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
        match self.lock().get_mut(&envelope.id) {
            Some(slot) => {
                slot.0 = envelope.clone();
                Ok(true)
            }
            None => Ok(false),
        }
    }

    fn remove(&self, id: &str) -> Result<(), SpoolError> {
        self.lock().remove(id);
        Ok(())
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
