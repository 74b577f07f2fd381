//! The scheduler: reads what is due from the spool's due index, class by class, and starts
//! an attempt for each message while the class has room in memory; attempts run through
//! egress and reschedule themselves.
//!
//! Each class has its own budget of messages in flight (`ready_limit`) and its own cursor in
//! the due index, so a million queued marketing messages never take the place of a
//! password reset, and the scheduler never scans the whole queue: it reads only the due
//! range after its cursor.

use super::attempt;
use super::clock::Clock;
use crate::config::{BOUNCE_CLASS, DEFAULT_CLASS, DefaultRet};
use crate::crypto::dkim::DkimSigners;
use crate::events::{Event, EventLog, EventType};
use crate::metrics::Metrics;
use crate::outbound::egress::Egress;
use crate::policy::engine::PolicyEngine;
use crate::spool::{DueKey, Envelope, GroupCommit, Spool, SpoolError};
use crate::suppression::SuppressionList;
use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Notify as WakeUp, watch};

/// Queue behaviour from `[queue]`, `[server]` and `[[class]]`.
#[derive(Debug, Clone)]
pub struct QueueSettings {
    /// Our host name, for DSNs.
    pub hostname: String,
    /// Expire and bounce after this many seconds.
    pub max_age_secs: u64,
    /// Shortest retry delay.
    pub min_retry_secs: u64,
    /// Longest retry delay.
    pub max_retry_secs: u64,
    /// What a DSN returns when the sender gave no RET.
    pub default_ret: DefaultRet,
    /// The traffic classes; `default` and `bounce` are added when not configured.
    pub classes: Vec<ClassSettings>,
    /// Hard bounces add the address to the suppression list, and suppressed addresses fail
    /// at once.
    pub suppress: bool,
    /// Domains whose mail is feedback (DSNs, complaints) to read, not to relay (lowercase).
    pub feedback_domains: Vec<String>,
    /// The header a returned message names its class in (`[classes] header`).
    pub class_header: String,
}

/// The lists the queue keeps beside the messages: who not to send to, and what happened.
pub struct Bookkeeping {
    /// Checked before each attempt; hard bounces are added.
    pub suppressions: SuppressionList,
    /// Recipient outcome counters.
    pub metrics: Arc<Metrics>,
    /// DKIM keys per sender domain; each copy is signed last, over the bytes sent.
    pub dkim: Arc<DkimSigners>,
    /// The durable event log: every accepted message and recipient outcome is appended
    /// here, written with the queue's own spool writes and made durable by the same group
    /// commit.
    pub events: Arc<EventLog>,
    /// Called with a message's final envelope just before it leaves the queue (every
    /// recipient delivered or failed), so the HTTP API can keep its status readable.
    pub on_final: Option<FinalHook>,
}

/// See [`Bookkeeping::on_final`].
pub type FinalHook = Arc<dyn Fn(&crate::spool::Envelope) + Send + Sync>;

/// One class as the scheduler sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClassSettings {
    /// Name.
    pub name: String,
    /// Higher goes first where classes share a connection.
    pub priority: i32,
    /// Messages of this class in flight at once (the rest wait in the spool).
    pub ready_limit: usize,
}

impl QueueSettings {
    /// The classes from `[[class]]`, plus `default` and `bounce` when not configured.
    pub fn classes_from(config: &[crate::config::Class]) -> Vec<ClassSettings> {
        let mut classes: Vec<ClassSettings> = config
            .iter()
            .map(|c| ClassSettings {
                name: c.name.clone(),
                priority: c.priority,
                ready_limit: c.ready_limit,
            })
            .collect();
        for implicit in [DEFAULT_CLASS, BOUNCE_CLASS] {
            if !classes.iter().any(|c| c.name == implicit) {
                classes.push(ClassSettings {
                    name: implicit.into(),
                    priority: 0,
                    ready_limit: 10_000,
                });
            }
        }
        classes
    }
}

/// A class's runtime state.
struct ClassState {
    settings: ClassSettings,
    in_flight: AtomicUsize,
    /// The due-index key to read from next.
    cursor: Mutex<Vec<u8>>,
}

/// The delivery queue. Shared as `Arc<Queue>` by the listener (to schedule new mail), the
/// admin interface (retry) and the scheduler loop.
pub struct Queue {
    pub(super) spool: Arc<dyn Spool>,
    pub(super) commit: GroupCommit,
    pub(super) clock: Arc<dyn Clock>,
    pub(super) settings: QueueSettings,
    pub(super) engine: Arc<PolicyEngine>,
    pub(super) egress: Arc<Egress>,
    pub(super) suppressions: SuppressionList,
    pub(super) metrics: Arc<Metrics>,
    pub(super) dkim: Arc<DkimSigners>,
    pub(super) on_final: Option<FinalHook>,
    pub(super) events: Arc<EventLog>,
    classes: Vec<ClassState>,
    in_flight: Mutex<HashSet<String>>,
    wake: WakeUp,
    /// Attempts running (for a graceful stop).
    running: AtomicUsize,
    idle: WakeUp,
}

impl Queue {
    /// Builds a queue; call [`Queue::recover`] then spawn [`Queue::run`].
    pub fn new(
        spool: Arc<dyn Spool>,
        commit: GroupCommit,
        clock: Arc<dyn Clock>,
        mut settings: QueueSettings,
        egress: Arc<Egress>,
        engine: Arc<PolicyEngine>,
        books: Bookkeeping,
    ) -> Arc<Self> {
        if settings.classes.is_empty() {
            settings.classes = QueueSettings::classes_from(&[]);
        }
        let mut ordered = settings.classes.clone();
        // Higher priority reads the due index first.
        ordered.sort_by_key(|c| std::cmp::Reverse(c.priority));
        let classes = ordered
            .into_iter()
            .map(|c| ClassState {
                cursor: Mutex::new(DueKey::class_start(&c.name)),
                settings: c,
                in_flight: AtomicUsize::new(0),
            })
            .collect();
        Arc::new(Self {
            spool,
            commit,
            clock,
            settings,
            engine,
            egress,
            suppressions: books.suppressions,
            metrics: books.metrics,
            dkim: books.dkim,
            on_final: books.on_final,
            events: books.events,
            classes,
            in_flight: Mutex::new(HashSet::new()),
            wake: WakeUp::new(),
            running: AtomicUsize::new(0),
            idle: WakeUp::new(),
        })
    }

    /// The spool behind this queue.
    pub fn spool(&self) -> &Arc<dyn Spool> {
        &self.spool
    }

    /// The group committer writers share.
    pub fn committer(&self) -> &GroupCommit {
        &self.commit
    }

    /// The clock the queue runs on.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// The suppression list this queue checks and feeds.
    pub fn suppressions(&self) -> &SuppressionList {
        &self.suppressions
    }

    /// The counters this queue bumps.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The event log this queue appends outcomes to.
    pub fn events(&self) -> &Arc<EventLog> {
        &self.events
    }

    /// The egress machinery (ready queues, connections).
    pub fn egress(&self) -> &Arc<Egress> {
        &self.egress
    }

    /// After a restart or crash: the due index is durable, so every queued message is
    /// already scheduled; this counts them (one pass over the index keys). Messages of a
    /// class no longer configured move to the default class.
    pub fn recover(&self) -> Result<usize, SpoolError> {
        self.spool.repair()?;
        let counts = self.spool.count_by_class()?;
        for (class, n) in &counts {
            if self.class_index(class).is_some() {
                continue;
            }
            tracing::warn!(class = %class, messages = n, "queued messages of a class no longer configured: moved to the default class");
            let start = DueKey::class_start(class);
            for entry in self.spool.due(class, &start, u64::MAX, usize::MAX)? {
                if let Some(mut env) = self.spool.envelope(&entry.id)? {
                    env.class = Some(DEFAULT_CLASS.into());
                    self.spool.update(&env)?;
                }
            }
        }
        self.spool.flush()?;
        Ok(counts.iter().map(|(_, n)| n).sum())
    }

    /// Makes every queued message due now (`sealpost queue flush`, like Postfix's
    /// `postqueue -f`), e.g. after the destination that deferred them is back. Walks the due
    /// index a page at a time (no envelope list in memory); returns how many moved.
    pub async fn flush_all(&self) -> Result<usize, SpoolError> {
        let now = self.clock.now();
        let mut moved = 0;
        let classes: Vec<String> = self
            .spool
            .count_by_class()?
            .into_iter()
            .map(|(c, _)| c)
            .collect();
        for class in classes {
            // Moved entries sort before `from`, so the walk never meets them again.
            let mut from = DueKey::class_start(&class);
            loop {
                let page = self.spool.due(&class, &from, u64::MAX, 1000)?;
                let Some(last) = page.last() else { break };
                from = last.key.clone();
                from.push(0);
                for entry in page.iter().filter(|e| e.due > now) {
                    if let Some(mut env) = self.spool.envelope(&entry.id)? {
                        env.next_due = now;
                        if self.spool.update(&env)? {
                            moved += 1;
                        }
                    }
                }
            }
        }
        self.commit.commit().await?;
        for c in &self.classes {
            *lock(&c.cursor) = DueKey::class_start(&c.settings.name);
        }
        self.wake.notify_one();
        Ok(moved)
    }

    /// Notes that `env` is due (its due-index entry is written) and wakes the scheduler.
    pub(super) fn note_due(&self, env: &Envelope) {
        let class = crate::spool::due_class(env);
        let key = DueKey::of(env);
        if let Some(c) = self.class_index(class).map(|i| &self.classes[i]) {
            let mut cursor = lock(&c.cursor);
            if key < *cursor {
                *cursor = key;
            }
        }
        self.wake.notify_one();
    }

    /// Wakes the scheduler, e.g. after a test advanced the clock.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Makes a queued message due now (`sealpost queue retry`). Returns false if unknown.
    pub async fn retry_now(&self, id: &str) -> Result<bool, SpoolError> {
        let Some(mut env) = self.spool.envelope(id)? else {
            return Ok(false);
        };
        env.next_due = self.clock.now();
        if !self.spool.update(&env)? {
            return Ok(false);
        }
        self.commit.commit().await?;
        self.note_due(&env);
        Ok(true)
    }

    /// Writes a new message, its envelope and due entry durably, then wakes the scheduler
    /// so the first attempt starts at once. Its `accepted` event is written before the
    /// commit, so the same flush makes both durable.
    pub async fn enqueue(&self, env: &Envelope, body: &[u8]) -> Result<(), SpoolError> {
        self.spool.insert(env, body)?;
        let class = crate::spool::due_class(env);
        let mut accepted = Event::about(EventType::Accepted, env, class, env.created);
        accepted.recipients = env.recipients.iter().map(|r| r.address.clone()).collect();
        self.events.emit(accepted);
        self.commit.commit().await?;
        self.metrics.accepted();
        self.note_due(env);
        Ok(())
    }

    /// Number of messages with an attempt running now.
    pub fn in_flight(&self) -> usize {
        lock(&self.in_flight).len()
    }

    /// Messages in flight per class (name, count), for metrics.
    pub fn in_flight_by_class(&self) -> Vec<(String, usize)> {
        self.classes
            .iter()
            .map(|c| (c.settings.name.clone(), c.in_flight.load(Ordering::SeqCst)))
            .collect()
    }

    /// The scheduler loop: starts due attempts until `shutdown` turns true, then waits (up to
    /// `grace`) for running attempts to finish.
    pub async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>, grace: Duration) {
        loop {
            if *shutdown.borrow() {
                break;
            }
            let wait = self.pull();
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.wake.notified() => {}
                _ = shutdown.changed() => {}
            }
        }
        let _ = tokio::time::timeout(grace, async {
            while self.running.load(Ordering::SeqCst) > 0 {
                let idle = self.idle.notified();
                if self.running.load(Ordering::SeqCst) == 0 {
                    break;
                }
                let _ = tokio::time::timeout(Duration::from_millis(100), idle).await;
            }
        })
        .await;
    }

    /// Starts what is due in every class that has room; returns how long to sleep.
    fn pull(self: &Arc<Self>) -> Duration {
        let now = self.clock.now();
        let mut next: Option<u64> = None;
        for (idx, class) in self.classes.iter().enumerate() {
            let name = &class.settings.name;
            let used = class.in_flight.load(Ordering::SeqCst);
            let budget = class.settings.ready_limit.saturating_sub(used);
            if budget > 0 {
                // The cursor stays locked from the read to its update: a message written
                // meanwhile (after the read, so not in `entries`) has its `note_due` wait
                // for the lock and then pulls the cursor back to itself. Reading, unlocking
                // and then advancing would step over it and leave it queued forever.
                let mut cursor = lock(&class.cursor);
                match self.spool.due(name, &cursor, now, budget) {
                    Ok(entries) => {
                        for entry in entries {
                            let mut after = entry.key.clone();
                            after.push(0);
                            *cursor = after;
                            if lock(&self.in_flight).insert(entry.id.clone()) {
                                class.in_flight.fetch_add(1, Ordering::SeqCst);
                                self.running.fetch_add(1, Ordering::SeqCst);
                                tokio::spawn(attempt::run(self.clone(), entry.id, idx));
                            }
                        }
                    }
                    Err(e) => {
                        tracing::error!(class = %name, error = %e, "reading the due index failed")
                    }
                }
            }
            if let Ok(Some(t)) = self.spool.next_due_after(name, now) {
                next = Some(next.map_or(t, |n| n.min(t)));
            }
        }
        Duration::from_secs(next.map_or(1, |t| t.saturating_sub(now)).clamp(0, 1))
    }

    /// The index of a class by name; unknown classes use the default class's slot.
    pub(super) fn class_index(&self, name: &str) -> Option<usize> {
        self.classes.iter().position(|c| c.settings.name == name)
    }

    /// The class settings for an attempt's slot.
    pub(super) fn class(&self, idx: usize) -> &ClassSettings {
        &self.classes[idx].settings
    }

    /// An attempt for `id` in class slot `idx` is over: free its place and wake the
    /// scheduler (there is room again).
    pub(super) fn release(&self, id: &str, idx: usize) {
        lock(&self.in_flight).remove(id);
        if let Some(c) = self.classes.get(idx) {
            c.in_flight.fetch_sub(1, Ordering::SeqCst);
        }
        self.running.fetch_sub(1, Ordering::SeqCst);
        self.idle.notify_waiters();
        self.wake.notify_one();
    }

    /// After a failed attempt whose envelope could not be rescheduled: read the class's due
    /// index from the start again so the message is found.
    pub(super) fn rewind(&self, idx: usize) {
        if let Some(c) = self.classes.get(idx) {
            *lock(&c.cursor) = DueKey::class_start(&c.settings.name);
        }
    }
}

pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
