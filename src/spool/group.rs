//! Group commit: many sessions waiting for durability share one flush.
//!
//! A session writes its message, then awaits [`GroupCommit::commit`]. A single committer task
//! collects every waiter that arrived, runs one `flush` on a blocking thread, and answers them
//! all. A flush started after a write covers it, so each waiter is durable when answered.

use super::{Spool, SpoolError};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

type Waiter = oneshot::Sender<Result<(), String>>;

/// Told how long each flush took (the metrics' flush latency histogram).
pub type FlushObserver = Arc<dyn Fn(std::time::Duration) + Send + Sync>;

/// Handle to the committer task; cheap to clone.
#[derive(Clone)]
pub struct GroupCommit {
    tx: mpsc::UnboundedSender<Waiter>,
}

impl GroupCommit {
    /// Starts the committer task for `spool` on the current tokio runtime.
    pub fn start(spool: Arc<dyn Spool>) -> Self {
        Self::start_observed(spool, None)
    }

    /// Like [`GroupCommit::start`], reporting each flush's duration to `observer`.
    pub fn start_observed(spool: Arc<dyn Spool>, observer: Option<FlushObserver>) -> Self {
        let (tx, mut rx) = mpsc::unbounded_channel::<Waiter>();
        tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
                let mut waiters = vec![first];
                while let Ok(w) = rx.try_recv() {
                    waiters.push(w);
                }
                let s = spool.clone();
                let started = std::time::Instant::now();
                let result = tokio::task::spawn_blocking(move || s.flush())
                    .await
                    .map_err(|e| e.to_string())
                    .and_then(|r| r.map_err(|e| e.to_string()));
                if let Some(observe) = &observer {
                    observe(started.elapsed());
                }
                for w in waiters {
                    let _ = w.send(result.clone());
                }
            }
        });
        Self { tx }
    }

    /// Returns once every write this task made before the call is on stable storage.
    pub async fn commit(&self) -> Result<(), SpoolError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(tx)
            .map_err(|_| SpoolError::Storage("committer stopped".into()))?;
        rx.await
            .map_err(|_| SpoolError::Storage("committer stopped".into()))?
            .map_err(SpoolError::Storage)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    struct CountingSpool {
        inner: crate::spool::MemorySpool,
        flushes: AtomicUsize,
    }

    impl Spool for CountingSpool {
        fn insert(&self, e: &crate::spool::Envelope, b: &[u8]) -> Result<(), SpoolError> {
            self.inner.insert(e, b)
        }
        fn flush(&self) -> Result<(), SpoolError> {
            std::thread::sleep(std::time::Duration::from_millis(20));
            self.flushes.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
        fn envelope(&self, id: &str) -> Result<Option<crate::spool::Envelope>, SpoolError> {
            self.inner.envelope(id)
        }
        fn body(&self, id: &str) -> Result<Option<Vec<u8>>, SpoolError> {
            self.inner.body(id)
        }
        fn update(&self, e: &crate::spool::Envelope) -> Result<bool, SpoolError> {
            self.inner.update(e)
        }
        fn remove(&self, id: &str) -> Result<(), SpoolError> {
            self.inner.remove(id)
        }
        fn list(&self) -> Result<Vec<crate::spool::Envelope>, SpoolError> {
            self.inner.list()
        }
        fn meta_get(&self, key: &str) -> Result<Option<Vec<u8>>, SpoolError> {
            self.inner.meta_get(key)
        }
        fn meta_put(&self, key: &str, value: &[u8]) -> Result<(), SpoolError> {
            self.inner.meta_put(key, value)
        }
        fn due(
            &self,
            class: &str,
            from: &[u8],
            now: u64,
            limit: usize,
        ) -> Result<Vec<crate::spool::DueKey>, SpoolError> {
            self.inner.due(class, from, now, limit)
        }
        fn next_due_after(&self, class: &str, now: u64) -> Result<Option<u64>, SpoolError> {
            self.inner.next_due_after(class, now)
        }
        fn count_by_class(&self) -> Result<Vec<(String, usize)>, SpoolError> {
            self.inner.count_by_class()
        }
        fn tree(&self, name: &str) -> Result<Arc<dyn crate::spool::KvTree>, SpoolError> {
            self.inner.tree(name)
        }
    }

    #[tokio::test]
    async fn concurrent_commits_share_flushes() {
        let spool = Arc::new(CountingSpool {
            inner: Default::default(),
            flushes: AtomicUsize::new(0),
        });
        let gc = GroupCommit::start(spool.clone());
        let mut tasks = Vec::new();
        for _ in 0..50 {
            let gc = gc.clone();
            tasks.push(tokio::spawn(async move { gc.commit().await }));
        }
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        let n = spool.flushes.load(Ordering::SeqCst);
        assert!(
            (1..50).contains(&n),
            "50 waiters should share flushes, got {n}"
        );
    }
}
