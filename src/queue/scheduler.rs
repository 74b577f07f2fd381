//! The scheduler: a due-time heap of queue ids, a bounded pool of delivery tasks, and the
//! bookkeeping after each attempt.

use super::clock::Clock;
use super::dsn::{self, DsnAction, DsnEntry};
use super::plan;
use super::retry;
use super::transform;
use crate::config::DefaultRet;
use crate::dns::Resolver;
use crate::outbound::{self, Delivery, OutRecipient, OutboundConfig, RcptOutcome};
use crate::policy::TlsLevel;
use crate::policy::engine::PolicyEngine;
use crate::spool::{
    ENVELOPE_VERSION, Envelope, GroupCommit, Notify, RcptStatus, RecipientRecord, Ret, Spool,
    SpoolError, new_queue_id,
};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Notify as WakeUp, Semaphore, watch};

/// Queue behaviour from `[queue]`, `[server]` and `[outbound]`.
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
    /// Deliveries in flight at once.
    pub concurrency: usize,
}

/// The delivery queue. Shared as `Arc<Queue>` by the listener (to schedule new mail), the
/// admin interface (retry) and the scheduler loop.
pub struct Queue {
    spool: Arc<dyn Spool>,
    commit: GroupCommit,
    clock: Arc<dyn Clock>,
    settings: QueueSettings,
    outbound: Arc<OutboundConfig>,
    resolver: Arc<Resolver>,
    engine: Arc<PolicyEngine>,
    due: Mutex<BinaryHeap<Reverse<(u64, String)>>>,
    in_flight: Mutex<HashSet<String>>,
    wake: WakeUp,
    workers: Arc<Semaphore>,
}

impl Queue {
    /// Builds a queue; call [`Queue::recover`] then spawn [`Queue::run`].
    pub fn new(
        spool: Arc<dyn Spool>,
        commit: GroupCommit,
        clock: Arc<dyn Clock>,
        settings: QueueSettings,
        outbound: OutboundConfig,
        resolver: Arc<Resolver>,
        engine: Arc<PolicyEngine>,
    ) -> Arc<Self> {
        let workers = Arc::new(Semaphore::new(settings.concurrency.max(1)));
        Arc::new(Self {
            spool,
            commit,
            clock,
            settings,
            outbound: Arc::new(outbound),
            resolver,
            engine,
            due: Mutex::new(BinaryHeap::new()),
            in_flight: Mutex::new(HashSet::new()),
            wake: WakeUp::new(),
            workers,
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

    /// Loads every spooled message into the schedule (after a restart or crash). Returns how
    /// many messages were recovered.
    pub fn recover(&self) -> Result<usize, SpoolError> {
        let all = self.spool.list()?;
        let n = all.len();
        for env in all {
            self.schedule(&env.id, env.next_due);
        }
        Ok(n)
    }

    /// Schedules an attempt for `id` at Unix second `due` and wakes the scheduler.
    pub fn schedule(&self, id: &str, due: u64) {
        lock(&self.due).push(Reverse((due, id.to_string())));
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
        self.schedule(id, env.next_due);
        Ok(true)
    }

    /// Writes a new message and its envelope durably, then schedules its first attempt now.
    pub async fn enqueue(&self, env: &Envelope, body: &[u8]) -> Result<(), SpoolError> {
        self.spool.insert(env, body)?;
        self.commit.commit().await?;
        self.schedule(&env.id, env.next_due);
        Ok(())
    }

    /// Number of messages with an attempt running now.
    pub fn in_flight(&self) -> usize {
        lock(&self.in_flight).len()
    }

    /// The scheduler loop: starts due attempts until `shutdown` turns true, then waits (up to
    /// `grace`) for running attempts to finish.
    pub async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>, grace: Duration) {
        loop {
            if *shutdown.borrow() {
                break;
            }
            let wait = self.start_due().await;
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.wake.notified() => {}
                _ = shutdown.changed() => {}
            }
        }
        let all = self.settings.concurrency.max(1) as u32;
        let _ = tokio::time::timeout(grace, self.workers.acquire_many(all)).await;
    }

    /// Starts every due attempt; returns how long to sleep before looking again.
    async fn start_due(self: &Arc<Self>) -> Duration {
        loop {
            let now = self.clock.now();
            let next = {
                let mut due = lock(&self.due);
                match due.peek() {
                    Some(Reverse((t, _))) if *t <= now => due.pop().map(|Reverse((_, id))| id),
                    Some(Reverse((t, _))) => {
                        return Duration::from_secs((t - now).min(1));
                    }
                    None => return Duration::from_secs(1),
                }
            };
            let Some(id) = next else { continue };
            if !lock(&self.in_flight).insert(id.clone()) {
                continue; // already running; it reschedules itself
            }
            let Ok(permit) = self.workers.clone().acquire_owned().await else {
                return Duration::from_secs(1);
            };
            let me = self.clone();
            tokio::spawn(async move {
                if let Err(e) = me.attempt(&id).await {
                    tracing::error!(queue_id = %id, error = %e, "delivery attempt failed; retrying later");
                    let due = me.clock.now() + me.settings.min_retry_secs;
                    lock(&me.in_flight).remove(&id);
                    me.schedule(&id, due);
                } else {
                    lock(&me.in_flight).remove(&id);
                }
                drop(permit);
            });
        }
    }

    /// One delivery attempt for every unfinished recipient of a message.
    async fn attempt(&self, id: &str) -> Result<(), SpoolError> {
        let now = self.clock.now();
        let Some(mut env) = self.spool.envelope(id)? else {
            return Ok(()); // delivered or deleted meanwhile
        };
        if env.next_due > now {
            return Ok(()); // stale heap entry; the real one is still queued
        }
        let Some(body) = self.spool.body(id)? else {
            return Ok(());
        };
        env.attempts += 1;
        let mut reports: Vec<(usize, DsnAction, String)> = Vec::new();
        let (groups, refusals) = plan::plan(&self.engine, &env, &body, now).await;
        for refusal in refusals {
            let r = &mut env.recipients[refusal.idx];
            r.attempts += 1;
            r.updated = now;
            if refusal.bounce {
                tracing::warn!(queue_id = %id, rcpt = %r.address, reason = %refusal.reply, "bounced");
                if r.wants_failure_dsn() {
                    reports.push((refusal.idx, DsnAction::Failed, refusal.reply.clone()));
                }
                r.status = RcptStatus::Failed {
                    reply: refusal.reply,
                };
            } else {
                tracing::warn!(queue_id = %id, rcpt = %r.address, reason = %refusal.reply, "deferred");
                r.status = RcptStatus::Deferred {
                    reply: refusal.reply,
                };
            }
        }
        for group in groups {
            self.deliver_group(id, &mut env, &body, group, now, &mut reports)
                .await;
        }
        if now.saturating_sub(env.created) >= self.settings.max_age_secs {
            self.expire(&mut env, now, &mut reports);
        }
        self.send_reports(&env, &body, &reports, now).await?;
        if env.is_complete() {
            self.spool.remove(id)?;
            tracing::info!(queue_id = %id, "removed: every recipient final");
        } else {
            let age = now.saturating_sub(env.created);
            let delay = retry::with_jitter(
                retry::base_delay(
                    age,
                    self.settings.min_retry_secs,
                    self.settings.max_retry_secs,
                ),
                rand::random::<f64>(),
            );
            // Never sleep past expiry: the message is bounced on time.
            let expiry = env.created + self.settings.max_age_secs;
            env.next_due = (now + delay).min(expiry.max(now + 1));
            if !self.spool.update(&env)? {
                return Ok(()); // deleted while we were delivering
            }
            self.schedule(id, env.next_due);
        }
        self.commit.commit().await
    }

    /// Makes a group's copy, delivers it with the group's transport, records the outcomes.
    async fn deliver_group(
        &self,
        id: &str,
        env: &mut Envelope,
        body: &[u8],
        group: plan::Group,
        now: u64,
        reports: &mut Vec<(usize, DsnAction, String)>,
    ) {
        let copy = match transform::prepare(body, &group.protection, group.rule.as_ref()) {
            Ok(c) => c,
            Err(e) => {
                for &i in &group.idxs {
                    let r = &mut env.recipients[i];
                    r.attempts += 1;
                    r.updated = now;
                    let reply = format!("451 4.7.0 {e}");
                    tracing::warn!(queue_id = %id, rcpt = %r.address, reason = %reply, "deferred");
                    r.status = RcptStatus::Deferred { reply };
                }
                return;
            }
        };
        let delivery = Delivery {
            domain: &group.domain,
            mail_from: &env.mail_from,
            recipients: group
                .idxs
                .iter()
                .map(|&i| out_recipient(&env.recipients[i]))
                .collect(),
            envid: env.envid.as_deref().map(super::xtext_encode),
            ret: env.ret.map(|r| match r {
                Ret::Full => "FULL".to_string(),
                Ret::Hdrs => "HDRS".to_string(),
            }),
            body: &copy,
            smtputf8: env.smtputf8,
            eight_bit: env.eight_bit,
            transport: group.transport.clone(),
        };
        let report = outbound::deliver(&self.outbound, &self.resolver, &delivery).await;
        let tls = report
            .tls
            .as_ref()
            .map(|t| format!("{} {}", t.version, t.cipher));
        let verified = report.tls.as_ref().map(|t| t.verified);
        if report.outcomes.iter().any(|o| o.is_delivered()) {
            let level = match verified {
                Some(true) => TlsLevel::VerifiedTls,
                Some(false) => TlsLevel::Tls,
                None => TlsLevel::Plain,
            };
            self.engine.record_tls(&group.domain, level, now);
        }
        for (&i, outcome) in group.idxs.iter().zip(report.outcomes) {
            let r = &mut env.recipients[i];
            r.attempts += 1;
            r.updated = now;
            r.tls = tls.clone();
            r.tls_verified = verified;
            r.method = Some(group.label.clone());
            match outcome {
                RcptOutcome::Delivered { reply, remote } => {
                    tracing::info!(queue_id = %id, rcpt = %r.address, remote = %remote, method = %group.label, tls = tls.as_deref().unwrap_or("none"), verified = verified.unwrap_or(false), reply = %reply, "delivered");
                    if r.notify.is_some_and(|n| n.success) && !report.remote_supports_dsn {
                        reports.push((i, DsnAction::Relayed, reply.to_string()));
                    }
                    r.remote = Some(remote);
                    r.status = RcptStatus::Delivered {
                        reply: reply.to_string(),
                    };
                }
                RcptOutcome::Deferred { reply, remote } => {
                    tracing::warn!(queue_id = %id, rcpt = %r.address, remote = remote.as_deref().unwrap_or("-"), method = %group.label, reply = %reply, "deferred");
                    r.remote = remote;
                    r.status = RcptStatus::Deferred {
                        reply: reply.to_string(),
                    };
                }
                RcptOutcome::Failed { reply, remote } => {
                    tracing::warn!(queue_id = %id, rcpt = %r.address, remote = remote.as_deref().unwrap_or("-"), method = %group.label, reply = %reply, "bounced");
                    r.remote = remote;
                    if r.wants_failure_dsn() {
                        reports.push((i, DsnAction::Failed, reply.to_string()));
                    }
                    r.status = RcptStatus::Failed {
                        reply: reply.to_string(),
                    };
                }
            }
        }
    }

    /// Fails every unfinished recipient of an expired message.
    fn expire(&self, env: &mut Envelope, now: u64, reports: &mut Vec<(usize, DsnAction, String)>) {
        let days = self.settings.max_age_secs as f64 / 86_400.0;
        for (i, r) in env.recipients.iter_mut().enumerate() {
            if r.status.is_final() {
                continue;
            }
            let last = match &r.status {
                RcptStatus::Deferred { reply } => reply.clone(),
                _ => "no attempt completed".into(),
            };
            let reason = format!("4.4.7 message expired after {days:.1} days; last: {last}");
            tracing::warn!(queue_id = %env.id, rcpt = %r.address, reason = %reason, "bounced");
            if r.wants_failure_dsn() {
                reports.push((i, DsnAction::Failed, reason.clone()));
            }
            r.status = RcptStatus::Failed { reply: reason };
            r.updated = now;
        }
    }

    /// Queues one DSN to the sender covering `reports`, unless the message may not be reported
    /// on (null sender, or itself a DSN: then a failure is logged as a double bounce).
    async fn send_reports(
        &self,
        env: &Envelope,
        body: &[u8],
        reports: &[(usize, DsnAction, String)],
        now: u64,
    ) -> Result<(), SpoolError> {
        if reports.is_empty() {
            return Ok(());
        }
        if !dsn::may_report(env) {
            tracing::warn!(queue_id = %env.id, "no DSN: null sender or the message is a DSN (dropped)");
            return Ok(());
        }
        let entries: Vec<DsnEntry<'_>> = reports
            .iter()
            .map(|(i, action, diagnostic)| DsnEntry {
                recipient: &env.recipients[*i],
                action: *action,
                diagnostic: diagnostic.clone(),
            })
            .collect();
        let bytes = dsn::build(
            &self.settings.hostname,
            env,
            body,
            &entries,
            self.settings.default_ret,
            now,
        );
        let report = Envelope {
            version: ENVELOPE_VERSION,
            id: new_queue_id(self.clock.now_millis()),
            created: now,
            next_due: now,
            attempts: 0,
            mail_from: String::new(),
            envid: None,
            ret: None,
            smtputf8: env.smtputf8,
            eight_bit: env.eight_bit || env.smtputf8,
            size: bytes.len() as u64,
            helo: self.settings.hostname.clone(),
            client: "local".into(),
            authenticated: None,
            is_dsn: true,
            listener: None,
            class: Some("bounce".into()),
            recipients: vec![RecipientRecord {
                address: env.mail_from.clone(),
                orcpt: None,
                notify: Some(Notify::default()),
                status: RcptStatus::Queued,
                attempts: 0,
                remote: None,
                tls: None,
                method: None,
                tls_verified: None,
                updated: now,
            }],
        };
        tracing::info!(queue_id = %env.id, dsn_id = %report.id, to = %env.mail_from, "dsn queued");
        self.enqueue(&report, &bytes).await
    }
}

/// The outbound view of a recipient, with DSN parameters in wire form.
fn out_recipient(r: &RecipientRecord) -> OutRecipient {
    OutRecipient {
        address: r.address.clone(),
        notify: r.notify.map(|n| {
            let mut parts = Vec::new();
            if n.success {
                parts.push("SUCCESS");
            }
            if n.failure {
                parts.push("FAILURE");
            }
            if n.delay {
                parts.push("DELAY");
            }
            if parts.is_empty() {
                "NEVER".to_string()
            } else {
                parts.join(",")
            }
        }),
        orcpt: r.orcpt.as_ref().map(|o| match o.split_once(';') {
            Some((t, v)) => format!("{t};{}", super::xtext_encode(v)),
            None => format!("rfc822;{}", super::xtext_encode(o)),
        }),
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
