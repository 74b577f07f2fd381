//! The webhook dispatcher: a tokio task that tails the event log, creates a pending
//! delivery in the [outbox](super::outbox) for each event a subscription wants, POSTs due
//! deliveries, and prunes the log.
//!
//! Retries: a delivery that fails (non-2xx, connection error, timeout) is tried again after
//! `[events] webhook_retry_secs` (default 30 s), doubling each time up to
//! `webhook_max_retry_secs` (default 1 h); one last attempt is made when
//! `webhook_max_age_secs` (default 48 h) have passed since the event, and if that fails too
//! the delivery is marked `failed`. No jitter: a receiver that was down gets its backlog at
//! the pace of the schedule, at most `webhook_concurrency` requests at once.
//!
//! The dispatcher runs on the queue's clock (tests move it instead of sleeping) and wakes
//! on every append, on [`Dispatcher::wake`], and at least once a second.

use super::outbox::{AttemptLog, DeliveryState, Due, Outbox};
use super::webhook::{
    EVENT_ID_HEADER, EVENT_TYPE_HEADER, SIGNATURE_HEADER, Subscription, TIMESTAMP_HEADER,
    WEBHOOK_ID_HEADER, WebhookStore, host_allowed, signature,
};
use super::{EventLog, EventType};
use crate::config::EventsSection;
use crate::queue::Clock;
use crate::spool::{GroupCommit, SpoolError};
use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{Notify, watch};
use tokio::task::JoinSet;

/// Events read per fan-out pass.
const FAN_OUT_PAGE: usize = 500;
/// How often the event log and finished deliveries are pruned (queue-clock seconds).
const PRUNE_EVERY_SECS: u64 = 600;
/// Records removed per pruning pass; a pass that removes this many is followed by another
/// on the next loop (at least once a second), so a busy server's backlog shrinks by
/// thousands a second without one long pass stalling the dispatcher.
const PRUNE_BATCH: usize = 10_000;

/// One POST (or its refusal), run on the dispatcher's task set.
type PostFuture = std::pin::Pin<Box<dyn std::future::Future<Output = Outcome> + Send + 'static>>;

/// What one POST came to.
struct Outcome {
    due: Due,
    log: AttemptLog,
    ok: bool,
}

/// The dispatcher; build with [`Dispatcher::new`], then spawn [`Dispatcher::run`].
pub struct Dispatcher {
    events: Arc<EventLog>,
    store: Arc<WebhookStore>,
    outbox: Arc<Outbox>,
    http: reqwest::Client,
    clock: Arc<dyn Clock>,
    commit: GroupCommit,
    settings: EventsSection,
    wake: Notify,
}

impl Dispatcher {
    /// A dispatcher over the shared log, subscriptions and outbox. `http` should not follow
    /// redirects (the MTA-STS client qualifies); each POST gets `webhook_timeout_secs`.
    /// On the very first start the fan-out begins after the newest event, so adding webhooks
    /// to a server with history does not replay it.
    pub fn new(
        events: Arc<EventLog>,
        store: Arc<WebhookStore>,
        outbox: Arc<Outbox>,
        http: reqwest::Client,
        clock: Arc<dyn Clock>,
        commit: GroupCommit,
        settings: EventsSection,
    ) -> Result<Arc<Self>, SpoolError> {
        if outbox.cursor()?.is_none() {
            outbox.set_cursor(events.last_id())?;
        }
        Ok(Arc::new(Self {
            events,
            store,
            outbox,
            http,
            clock,
            commit,
            settings,
            wake: Notify::new(),
        }))
    }

    /// Makes the dispatcher look for due work now (after a test moved the clock).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Runs until `shutdown` turns true. POSTs in flight then are abandoned; their
    /// deliveries stay pending and go out after the restart.
    pub async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let mut in_flight: JoinSet<Outcome> = JoinSet::new();
        let mut busy: HashSet<Vec<u8>> = HashSet::new();
        let mut last_prune = 0u64;
        let mut prune_behind = false;
        loop {
            if *shutdown.borrow() {
                break;
            }
            let now = self.clock.now();
            if let Err(e) = self.fan_out(now) {
                tracing::error!(error = %e, "webhooks: reading the event log failed");
            }
            if prune_behind || now.saturating_sub(last_prune) >= PRUNE_EVERY_SECS {
                last_prune = now;
                prune_behind = self.prune(now);
            }
            let room = self
                .settings
                .webhook_concurrency
                .saturating_sub(in_flight.len());
            if room > 0 {
                match self.outbox.due(now, room + busy.len()) {
                    Ok(due) => {
                        let fresh: Vec<Due> =
                            due.into_iter().filter(|d| !busy.contains(&d.key)).collect();
                        for d in fresh.into_iter().take(room) {
                            if let Some(task) = self.prepare(&d, now) {
                                busy.insert(d.key.clone());
                                in_flight.spawn(task);
                            }
                        }
                    }
                    Err(e) => tracing::error!(error = %e, "webhooks: reading the outbox failed"),
                }
            }
            tokio::select! {
                _ = self.events.appended() => {}
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = shutdown.changed() => {}
                Some(done) = in_flight.join_next(), if !in_flight.is_empty() => {
                    let mut finished = Vec::new();
                    if let Ok(o) = done { finished.push(o) }
                    while let Some(Ok(o)) = in_flight.try_join_next() {
                        finished.push(o);
                    }
                    for o in finished {
                        busy.remove(&o.due.key);
                        self.record(o);
                    }
                    if let Err(e) = self.commit.commit().await {
                        tracing::error!(error = %e, "webhooks: committing attempt results failed");
                    }
                }
            }
        }
        in_flight.abort_all();
    }

    /// Creates pending deliveries for events after the cursor.
    fn fan_out(&self, now: u64) -> Result<(), SpoolError> {
        let mut cursor = self.outbox.cursor()?.unwrap_or(0);
        let last = self.events.last_id();
        if cursor >= last {
            return Ok(());
        }
        let subs = self.store.list()?;
        if subs.is_empty() {
            return self.outbox.set_cursor(last);
        }
        loop {
            let page = self.events.page(cursor, FAN_OUT_PAGE)?;
            for event in &page {
                let body = match serde_json::to_string(event) {
                    Ok(b) => b,
                    Err(e) => {
                        tracing::error!(event = event.id, error = %e, "webhooks: event not encodable");
                        continue;
                    }
                };
                for s in subs.iter().filter(|s| wants(s, event.id, event.kind)) {
                    self.outbox
                        .create(&s.id, event.id, event.kind, body.clone(), now)?;
                }
                cursor = event.id;
            }
            self.outbox.set_cursor(cursor)?;
            if page.len() < FAN_OUT_PAGE {
                return Ok(());
            }
        }
    }

    /// The POST for a due entry, or `None` when the entry is stale (its subscription or
    /// delivery is gone, or it was already settled), in which case it is dropped.
    fn prepare(&self, due: &Due, now: u64) -> Option<PostFuture> {
        let found = self
            .store
            .get(&due.webhook_id)
            .and_then(|s| Ok((s, self.outbox.get(&due.webhook_id, due.event_id)?)));
        let (sub, delivery) = match found {
            Ok((Some(s), Some(d))) if Outbox::is_current(due, &d) => (s, d),
            Ok(_) => {
                if let Err(e) = self.outbox.drop_due(due) {
                    tracing::warn!(error = %e, "webhooks: dropping a stale entry failed");
                }
                return None;
            }
            Err(e) => {
                tracing::error!(error = %e, "webhooks: reading a delivery failed");
                return None;
            }
        };
        let due = due.clone();
        if !host_allowed(&self.settings.webhook_allowed_hosts, &sub.url) {
            // Stored before the list was narrowed: fail the attempt without resolving or
            // connecting (it is retried, in case the list is widened again).
            let log = AttemptLog {
                time: now,
                status: None,
                error: Some("the host is not in [events] webhook_allowed_hosts".into()),
                duration_ms: 0,
            };
            return Some(Box::pin(async move {
                Outcome {
                    due,
                    log,
                    ok: false,
                }
            }) as PostFuture);
        }
        let timestamp = now.to_string();
        let sig = signature(&sub.secret, &timestamp, delivery.body.as_bytes());
        let request = self
            .http
            .post(&sub.url)
            .timeout(Duration::from_secs(self.settings.webhook_timeout_secs))
            .header("content-type", "application/json")
            .header(TIMESTAMP_HEADER, &timestamp)
            .header(SIGNATURE_HEADER, sig)
            .header(EVENT_ID_HEADER, delivery.event_id.to_string())
            .header(EVENT_TYPE_HEADER, delivery.event_type.name())
            .header(WEBHOOK_ID_HEADER, &sub.id)
            .body(delivery.body);
        Some(Box::pin(async move {
            let started = Instant::now();
            let (status, error, ok) = match request.send().await {
                Ok(resp) => {
                    let status = resp.status();
                    (Some(status.as_u16()), None, status.is_success())
                }
                Err(e) => (None, Some(describe(&e)), false),
            };
            Outcome {
                due,
                log: AttemptLog {
                    time: now,
                    status,
                    error,
                    duration_ms: started.elapsed().as_millis() as u64,
                },
                ok,
            }
        }))
    }

    /// Stores one attempt's result and schedules the next attempt or gives up.
    fn record(&self, o: Outcome) {
        let Ok(Some(mut d)) = self.outbox.get(&o.due.webhook_id, o.due.event_id) else {
            // Deleted meanwhile (or unreadable): nothing to record.
            let _ = self.outbox.drop_due(&o.due);
            return;
        };
        let now = o.log.time;
        let what = o.log.status.map_or_else(
            || o.log.error.clone().unwrap_or_default(),
            |s| s.to_string(),
        );
        d.attempts.push(o.log);
        if o.ok {
            d.state = DeliveryState::Delivered;
            d.next_attempt = None;
            tracing::debug!(webhook = %d.webhook_id, event = d.event_id, "webhook delivered");
        } else {
            match next_attempt(&self.settings, d.created, d.attempts.len(), now) {
                Some(at) => {
                    d.next_attempt = Some(at);
                    tracing::info!(webhook = %d.webhook_id, event = d.event_id, result = %what, retry_at = at, "webhook attempt failed");
                }
                None => {
                    d.state = DeliveryState::Failed;
                    d.next_attempt = None;
                    tracing::warn!(webhook = %d.webhook_id, event = d.event_id, result = %what, attempts = d.attempts.len(), "webhook delivery given up");
                }
            }
        }
        if let Err(e) = self.outbox.settle(&o.due, &d) {
            tracing::error!(error = %e, "webhooks: recording an attempt failed");
        }
    }

    /// One pruning pass; true when it was cut short by [`PRUNE_BATCH`] (more to do).
    fn prune(&self, now: u64) -> bool {
        let before = now.saturating_sub(self.settings.retention_secs);
        let events = match self.events.prune(before, PRUNE_BATCH) {
            Ok(n) => n,
            Err(e) => {
                tracing::error!(error = %e, "pruning the event log failed");
                0
            }
        };
        if events > 0 {
            tracing::debug!(count = events, "pruned old events");
        }
        let deliveries = match self.outbox.prune(before, PRUNE_BATCH) {
            Ok(n) => n,
            Err(e) => {
                tracing::error!(error = %e, "pruning webhook deliveries failed");
                0
            }
        };
        events >= PRUNE_BATCH || deliveries >= PRUNE_BATCH
    }
}

/// Whether `sub` gets event `id` of `kind`.
fn wants(sub: &Subscription, id: u64, kind: EventType) -> bool {
    id > sub.after_event && sub.wants(kind)
}

/// When to try again after `attempts` failed attempts of a delivery created at `created`,
/// now being `now`; `None` to give up. The last attempt falls exactly at the window's end.
pub fn next_attempt(s: &EventsSection, created: u64, attempts: usize, now: u64) -> Option<u64> {
    let deadline = created.saturating_add(s.webhook_max_age_secs);
    if now >= deadline {
        return None;
    }
    let shift = attempts.saturating_sub(1).min(32) as u32;
    let delay = s
        .webhook_retry_secs
        .saturating_mul(1u64 << shift)
        .min(s.webhook_max_retry_secs);
    Some(now.saturating_add(delay).min(deadline))
}

/// A short reason for a failed request, without the URL (it may carry a token).
fn describe(e: &reqwest::Error) -> String {
    use std::error::Error as _;
    let kind = if e.is_timeout() {
        "timeout"
    } else if e.is_connect() {
        "connection failed"
    } else if e.is_redirect() {
        "redirect"
    } else {
        "request failed"
    };
    let mut detail = String::new();
    let mut source = e.source();
    while let Some(s) = source {
        detail = s.to_string();
        source = s.source();
    }
    if detail.is_empty() {
        kind.to_string()
    } else {
        format!("{kind}: {detail}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_the_cap_and_ends_at_the_window() {
        let s = EventsSection::default();
        let t0 = 1_000_000;
        assert_eq!(next_attempt(&s, t0, 1, t0), Some(t0 + 30));
        assert_eq!(next_attempt(&s, t0, 2, t0 + 30), Some(t0 + 90));
        assert_eq!(next_attempt(&s, t0, 3, t0), Some(t0 + 120));
        assert_eq!(next_attempt(&s, t0, 20, t0), Some(t0 + 3600));
        let end = t0 + s.webhook_max_age_secs;
        assert_eq!(next_attempt(&s, t0, 40, end - 10), Some(end));
        assert_eq!(next_attempt(&s, t0, 41, end), None);
        // At least 24 hours of retries by default.
        assert!(s.webhook_max_age_secs >= 86_400);
    }
}
