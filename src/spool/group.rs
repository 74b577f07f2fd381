//! Group commit: many sessions waiting for durability share one flush.
//!
//! A session writes its message, then awaits [`GroupCommit::commit`]. A single committer task
//! collects every waiter that arrived, runs one `flush` on a blocking thread, and answers them
//! all. A flush started after a write covers it, so each waiter is durable when answered.
//! Under load (the last flush served several waiters) a flush first gathers for
//! [`GATHER`]; writes whose durability nobody waits for ask with
//! [`GroupCommit::commit_soon`] and ride along with the next flush within [`SOON`].

use super::{Spool, SpoolError};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

type Waiter = oneshot::Sender<Result<(), String>>;

/// How long a flush asked for with [`GroupCommit::commit_soon`] may wait for company.
pub const SOON: std::time::Duration = std::time::Duration::from_millis(50);

/// How long a flush waits for company when the last one served several waiters. Each
/// flush costs a sled log write, a wake-up of sled's I/O threads and a sync, so on a busy
/// server fewer, larger flushes leave more CPU for the sessions than flushing at once;
/// a lone client (the last flush had one waiter) never waits for this.
pub const GATHER: std::time::Duration = std::time::Duration::from_millis(1);

/// What the committer is asked for.
enum Request {
    /// Flush now and answer.
    Wait(Waiter),
    /// Flush within [`SOON`]; nobody waits.
    Soon,
}

/// Moves every request already queued into `batch`.
fn drain(rx: &mut mpsc::UnboundedReceiver<Request>, batch: &mut Vec<Request>) {
    while let Ok(r) = rx.try_recv() {
        batch.push(r);
    }
}

/// How many requests in `batch` wait for their answer.
fn waiters(batch: &[Request]) -> usize {
    batch
        .iter()
        .filter(|r| matches!(r, Request::Wait(_)))
        .count()
}

/// Told how long each flush took (the metrics' flush latency histogram).
pub type FlushObserver = Arc<dyn Fn(std::time::Duration) + Send + Sync>;

/// Handle to the committer task; cheap to clone.
#[derive(Clone)]
pub struct GroupCommit {
    tx: mpsc::UnboundedSender<Request>,
}

impl GroupCommit {
    /// Starts the committer task for `spool` on the current tokio runtime.
    pub fn start(spool: Arc<dyn Spool>) -> Self {
        Self::start_observed(spool, None)
    }

    /// Like [`GroupCommit::start`], reporting each flush's duration to `observer`.
    pub fn start_observed(spool: Arc<dyn Spool>, observer: Option<FlushObserver>) -> Self {
        let (tx, mut rx) = mpsc::unbounded_channel::<Request>();
        tokio::spawn(async move {
            let mut busy = false;
            while let Some(first) = rx.recv().await {
                let mut batch = vec![first];
                let mut open = true;
                if busy {
                    // Others were waiting last time: let this flush gather them too.
                    tokio::time::sleep(GATHER).await;
                }
                drain(&mut rx, &mut batch);
                if waiters(&batch) == 0 {
                    // Only deferred requests: let a waiter's flush (or the deadline) cover them.
                    let deadline = tokio::time::Instant::now() + SOON;
                    loop {
                        tokio::select! {
                            _ = tokio::time::sleep_until(deadline) => break,
                            r = rx.recv() => match r {
                                Some(r) => {
                                    let wait = matches!(r, Request::Wait(_));
                                    batch.push(r);
                                    if wait {
                                        break;
                                    }
                                }
                                None => {
                                    open = false;
                                    break;
                                }
                            },
                        }
                    }
                    drain(&mut rx, &mut batch);
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
                if let Err(e) = &result {
                    tracing::error!(error = %e, "spool flush failed");
                }
                busy = waiters(&batch) > 1;
                for r in batch {
                    if let Request::Wait(w) = r {
                        let _ = w.send(result.clone());
                    }
                }
                if !open {
                    break;
                }
            }
        });
        Self { tx }
    }

    /// Returns once every write this task made before the call is on stable storage.
    pub async fn commit(&self) -> Result<(), SpoolError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Request::Wait(tx))
            .map_err(|_| SpoolError::Storage("committer stopped".into()))?;
        rx.await
            .map_err(|_| SpoolError::Storage("committer stopped".into()))?
            .map_err(SpoolError::Storage)
    }

    /// Asks for every write made before the call to reach stable storage within [`SOON`],
    /// without waiting: for writes whose loss in a crash repeats work rather than losing
    /// mail (a delivered message's removal: at worst it is delivered again, as with any
    /// MTA that crashes between the remote 250 and its own bookkeeping). Such a flush
    /// usually rides along with the next acceptance's.
    pub fn commit_soon(&self) {
        let _ = self.tx.send(Request::Soon);
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

    #[tokio::test]
    async fn a_deferred_commit_flushes_without_a_waiter_and_joins_a_waiters_flush() {
        let spool = Arc::new(CountingSpool {
            inner: Default::default(),
            flushes: AtomicUsize::new(0),
        });
        let gc = GroupCommit::start(spool.clone());
        // Alone, it is flushed once within SOON (plus the 20 ms the test flush takes).
        gc.commit_soon();
        tokio::time::sleep(SOON + std::time::Duration::from_millis(200)).await;
        assert_eq!(spool.flushes.load(Ordering::SeqCst), 1);
        // Followed by a waiter, both are served by the waiter's flush: none is left over.
        gc.commit_soon();
        gc.commit().await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(spool.flushes.load(Ordering::SeqCst), 2);
        tokio::time::sleep(SOON + std::time::Duration::from_millis(200)).await;
        assert_eq!(spool.flushes.load(Ordering::SeqCst), 2);
    }
}
