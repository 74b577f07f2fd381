//! One delivery attempt for a message: plan every unfinished recipient with the policy
//! engine, hand each group to egress as a job, record the results as they come back, and
//! when the last job is done decide the message's fate (removed, rescheduled, expired, DSN).

use super::dsn::DsnAction;
use super::plan;
use super::retry;
use super::scheduler::{Queue, lock};
use super::transform::{self, Protection};
use crate::crypto::dkim::DkimSigners;
use crate::events::{Event as LogEvent, EventType};
use crate::metrics::Event;
use crate::outbound::egress::{Job, JobContent, JobReport};
use crate::outbound::{OutRecipient, RcptOutcome};
use crate::policy::{Rule, TlsLevel};
use crate::smtp::reply::{EnhancedStatus, Reply};
use crate::spool::{Envelope, RcptStatus, RecipientRecord, Ret, Spool, SpoolError};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// A DSN line to send: recipient index, action, diagnostic.
pub(super) type Report = (usize, DsnAction, String);

/// The state of one attempt while its jobs are out.
struct Attempt {
    queue: Arc<Queue>,
    /// The class slot in the scheduler.
    slot: usize,
    now: u64,
    inner: Mutex<Inner>,
    /// Jobs not finished yet.
    remaining: AtomicUsize,
}

struct Inner {
    env: Envelope,
    reports: Vec<Report>,
    /// A delivery was attempted (or the policy refused someone): counts as an attempt.
    attempted: bool,
    /// Some recipient is deferred for a reason the normal retry schedule should answer.
    deferred: bool,
    /// Shaping handed jobs back with these "come back at" times.
    delays: Vec<u64>,
}

/// Runs one attempt for `id` (scheduled in class slot `slot`), then frees the slot.
pub(super) async fn run(queue: Arc<Queue>, id: String, slot: usize) {
    match start(&queue, &id, slot).await {
        Ok(true) => {} // jobs are out; the last one finishes the attempt
        Ok(false) => queue.release(&id, slot),
        Err(e) => {
            tracing::error!(queue_id = %id, error = %e, "delivery attempt failed; retrying later");
            let retry_at = queue.clock.now() + queue.settings.min_retry_secs;
            let moved = queue.spool.envelope(&id).ok().flatten().map(|mut env| {
                env.next_due = retry_at;
                queue.spool.update(&env)
            });
            if !matches!(moved, Some(Ok(_))) {
                queue.rewind(slot);
            }
            queue.release(&id, slot);
        }
    }
}

/// Plans and submits the jobs. `Ok(false)` when there is nothing to do (message gone or not
/// due); `Ok(true)` when the attempt continues in its jobs.
async fn start(queue: &Arc<Queue>, id: &str, slot: usize) -> Result<bool, SpoolError> {
    let now = queue.clock.now();
    let Some(mut env) = queue.spool.envelope(id)? else {
        return Ok(false); // delivered or deleted meanwhile
    };
    if env.next_due > now {
        return Ok(false); // moved meanwhile (retry, restart)
    }
    let Some(body) = queue.spool.body(id)? else {
        return Ok(false);
    };
    let mut reports = Vec::new();
    let class = queue.class(slot).clone();
    let screened = super::screen::screen(queue, &mut env, &body, &class.name, now, &mut reports)?;
    let (groups, refusals) = plan::plan(&queue.engine, &env, &body, now).await;
    let size = body.len();
    drop(body);
    let mut deferred = false;
    let attempted = screened || !refusals.is_empty();
    for refusal in refusals {
        let (event, kind) = if refusal.bounce {
            (Event::Bounced, EventType::Bounced)
        } else {
            (Event::Deferred, EventType::Deferred)
        };
        queue.metrics.recipient(event, &class.name);
        queue.events.emit(
            LogEvent::about(kind, &env, &class.name, now)
                .to(&env.recipients[refusal.idx].address)
                .reply(refusal.reply.clone()),
        );
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
            deferred = true;
            r.status = RcptStatus::Deferred {
                reply: refusal.reply,
            };
        }
    }
    let jobs: Vec<(plan::Group, Vec<OutRecipient>)> = groups
        .into_iter()
        .map(|g| {
            let rcpts = g
                .idxs
                .iter()
                .map(|&i| out_recipient(&env.recipients[i]))
                .collect();
            (g, rcpts)
        })
        .collect();
    let envid = env.envid.as_deref().map(super::xtext_encode);
    let ret = env.ret.map(|r| match r {
        Ret::Full => "FULL".to_string(),
        Ret::Hdrs => "HDRS".to_string(),
    });
    let (mail_from, smtputf8, eight_bit) = (env.mail_from.clone(), env.smtputf8, env.eight_bit);
    let attempt = Arc::new(Attempt {
        queue: queue.clone(),
        slot,
        now,
        remaining: AtomicUsize::new(jobs.len()),
        inner: Mutex::new(Inner {
            env,
            reports,
            attempted,
            deferred,
            delays: Vec::new(),
        }),
    });
    if jobs.is_empty() {
        tokio::spawn(finish(attempt));
        return Ok(true);
    }
    for (group, recipients) in jobs {
        let content = Arc::new(SpoolContent {
            spool: queue.spool.clone(),
            id: id.to_string(),
            protection: group.protection,
            rule: group.rule,
            dkim: queue.dkim.clone(),
            size,
            sender_domain: mail_from
                .rsplit_once('@')
                .map(|(_, d)| d.to_string())
                .unwrap_or_default(),
        });
        let meta = GroupMeta {
            idxs: group.idxs,
            label: group.label,
            domain: group.domain.clone(),
        };
        let a = attempt.clone();
        let job = Job {
            id: id.to_string(),
            class: class.name.clone(),
            priority: class.priority,
            domain: group.domain,
            mail_from: mail_from.clone(),
            recipients,
            envid: envid.clone(),
            ret: ret.clone(),
            smtputf8,
            eight_bit,
            transport: group.transport,
            content,
            done: Box::new(move |report| a.record(&meta, report)),
            retried: false,
        };
        queue.egress.submit(job).await;
    }
    Ok(true)
}

/// What a job's results apply to.
struct GroupMeta {
    idxs: Vec<usize>,
    label: String,
    domain: String,
}

impl Attempt {
    /// Records one job's results; the last one finishes the attempt.
    fn record(self: Arc<Self>, meta: &GroupMeta, job: JobReport) {
        let now = self.now;
        let id;
        {
            let mut inner = lock(&self.inner);
            id = inner.env.id.clone();
            let report = job.report;
            if let Some(until) = job.delayed_until {
                for (&i, outcome) in meta.idxs.iter().zip(&report.outcomes) {
                    let r = &mut inner.env.recipients[i];
                    r.updated = now;
                    tracing::info!(queue_id = %id, rcpt = %r.address, source = %job.source, until, reason = %outcome.reply(), "delayed by shaping");
                    r.status = RcptStatus::Deferred {
                        reply: outcome.reply().to_string(),
                    };
                }
                inner.delays.push(until);
            } else {
                inner.attempted = true;
                let tls = report
                    .tls
                    .as_ref()
                    .map(|t| format!("{} {}", t.version, t.cipher));
                let verified = report.tls.as_ref().map(|t| t.verified);
                if report.outcomes.iter().any(RcptOutcome::is_delivered) {
                    let level = match verified {
                        Some(true) => TlsLevel::VerifiedTls,
                        Some(false) => TlsLevel::Tls,
                        None => TlsLevel::Plain,
                    };
                    self.queue.engine.record_tls(&meta.domain, level, now);
                }
                for (&i, outcome) in meta.idxs.iter().zip(report.outcomes) {
                    let inner = &mut *inner;
                    let r = &mut inner.env.recipients[i];
                    r.attempts += 1;
                    r.updated = now;
                    r.tls = tls.clone();
                    r.tls_verified = verified;
                    r.method = Some(meta.label.clone());
                    let class = &self.queue.class(self.slot).name;
                    let event = match &outcome {
                        RcptOutcome::Delivered { .. } => Event::Delivered,
                        RcptOutcome::Deferred { .. } => Event::Deferred,
                        RcptOutcome::Failed { reply, .. } => {
                            super::screen::note_failure(
                                &self.queue,
                                &id,
                                &r.address,
                                class,
                                reply,
                                now,
                            );
                            Event::Bounced
                        }
                    };
                    self.queue.metrics.recipient(event, class);
                    apply_outcome(
                        &id,
                        i,
                        r,
                        outcome,
                        &meta.label,
                        &job.source,
                        tls.as_deref(),
                        verified,
                        report.remote_supports_dsn,
                        &mut inner.reports,
                        &mut inner.deferred,
                    );
                    let r = &inner.env.recipients[i];
                    let mut e =
                        LogEvent::about(kind_of(event), &inner.env, class, now).to(&r.address);
                    e.reply = r.status.reply().map(str::to_string);
                    e.remote = r.remote.clone();
                    e.method = Some(meta.label.clone());
                    if let Some(t) = &report.tls {
                        e.tls_version = Some(t.version.clone());
                        e.tls_cipher = Some(t.cipher.clone());
                        e.tls_verified = Some(t.verified);
                    }
                    self.queue.events.emit(e);
                }
            }
        }
        if self.remaining.fetch_sub(1, Ordering::SeqCst) == 1 {
            tokio::spawn(finish(self));
        }
    }
}

/// Stores one recipient's outcome and notes the DSN it calls for.
#[allow(clippy::too_many_arguments)]
fn apply_outcome(
    id: &str,
    i: usize,
    r: &mut RecipientRecord,
    outcome: RcptOutcome,
    method: &str,
    source: &str,
    tls: Option<&str>,
    verified: Option<bool>,
    remote_dsn: bool,
    reports: &mut Vec<Report>,
    deferred: &mut bool,
) {
    match outcome {
        RcptOutcome::Delivered { reply, remote } => {
            tracing::info!(queue_id = %id, rcpt = %r.address, remote = %remote, source, method, tls = tls.unwrap_or("none"), verified = verified.unwrap_or(false), reply = %reply, "delivered");
            if r.notify.is_some_and(|n| n.success) && !remote_dsn {
                reports.push((i, DsnAction::Relayed, reply.to_string()));
            }
            r.remote = Some(remote);
            r.status = RcptStatus::Delivered {
                reply: reply.to_string(),
            };
        }
        RcptOutcome::Deferred { reply, remote } => {
            tracing::warn!(queue_id = %id, rcpt = %r.address, remote = remote.as_deref().unwrap_or("-"), source, method, reply = %reply, "deferred");
            *deferred = true;
            r.remote = remote;
            r.status = RcptStatus::Deferred {
                reply: reply.to_string(),
            };
        }
        RcptOutcome::Failed { reply, remote } => {
            tracing::warn!(queue_id = %id, rcpt = %r.address, remote = remote.as_deref().unwrap_or("-"), source, method, reply = %reply, "bounced");
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

/// The last job is in: expire, report, then remove or reschedule the message.
async fn finish(a: Arc<Attempt>) {
    let (mut env, reports, attempted, deferred, delays) = {
        let mut inner = lock(&a.inner);
        (
            inner.env.clone(),
            std::mem::take(&mut inner.reports),
            inner.attempted,
            inner.deferred,
            std::mem::take(&mut inner.delays),
        )
    };
    let q = &a.queue;
    let id = env.id.clone();
    let rescheduled = settle(q, &mut env, reports, attempted, deferred, &delays, a.now).await;
    q.release(&id, a.slot);
    match rescheduled {
        // Only now, with the message out of flight, may the scheduler take it again: a
        // pull in between skipped it, so point the cursor back at it.
        Ok(true) => q.note_due(&env),
        Ok(false) => {}
        Err(e) => {
            tracing::error!(queue_id = %id, error = %e, "recording the attempt failed; retrying later");
            q.rewind(a.slot);
        }
    }
}

/// Records the attempt; `Ok(true)` when the message stays queued with a new due time.
async fn settle(
    q: &Queue,
    env: &mut Envelope,
    mut reports: Vec<Report>,
    attempted: bool,
    deferred: bool,
    delays: &[u64],
    now: u64,
) -> Result<bool, SpoolError> {
    if attempted {
        env.attempts += 1;
    }
    if now.saturating_sub(env.created) >= q.settings.max_age_secs {
        expire(q, env, now, &mut reports);
    }
    let body = if reports.is_empty() {
        None
    } else {
        q.spool.body(&env.id)?
    };
    if let Some(body) = body {
        super::report::send(q, env, &body, &reports, now).await?;
    }
    let stays = !env.is_complete();
    if !stays {
        if let Some(hook) = &q.on_final {
            hook(env);
        }
        q.spool.remove(&env.id)?;
        tracing::info!(queue_id = %env.id, "removed: every recipient final");
        // Like Postfix's unlink of a delivered queue file, the removal is not waited for:
        // a crash before the flush delivers the message again, it never loses one.
        q.commit.commit_soon();
        return Ok(false);
    } else {
        let age = now.saturating_sub(env.created);
        let s = &q.settings;
        let retry_at = now
            + retry::with_jitter(
                retry::base_delay(age, s.min_retry_secs, s.max_retry_secs),
                rand::random::<f64>(),
            );
        // Shaping delays say when a path will take the mail; a real deferral follows the
        // retry schedule; the earliest of them comes first.
        let candidates = delays
            .iter()
            .copied()
            .chain((deferred || delays.is_empty()).then_some(retry_at));
        let next = candidates.min().unwrap_or(retry_at).max(now + 1);
        // Never sleep past expiry: the message is bounced on time.
        let expiry = env.created + s.max_age_secs;
        env.next_due = next.min(expiry.max(now + 1));
        if !q.spool.update(env)? {
            return Ok(false); // deleted while we were delivering
        }
    }
    q.commit.commit().await?;
    Ok(stays)
}

/// Fails every unfinished recipient of an expired message.
fn expire(q: &Queue, env: &mut Envelope, now: u64, reports: &mut Vec<Report>) {
    let days = q.settings.max_age_secs as f64 / 86_400.0;
    let class = crate::spool::due_class(env).to_string();
    for i in 0..env.recipients.len() {
        let r = &env.recipients[i];
        if r.status.is_final() {
            continue;
        }
        let last = match &r.status {
            RcptStatus::Deferred { reply } => reply.clone(),
            _ => "no attempt completed".into(),
        };
        let reason = format!("4.4.7 message expired after {days:.1} days; last: {last}");
        q.metrics.recipient(Event::Bounced, &class);
        q.events.emit(
            LogEvent::about(EventType::Bounced, env, &class, now)
                .to(&r.address)
                .reply(reason.clone()),
        );
        let r = &mut env.recipients[i];
        tracing::warn!(queue_id = %env.id, rcpt = %r.address, reason = %reason, "bounced");
        if r.wants_failure_dsn() {
            reports.push((i, DsnAction::Failed, reason.clone()));
        }
        r.status = RcptStatus::Failed { reply: reason };
        r.updated = now;
    }
}

/// The event-log type of a counted outcome.
fn kind_of(e: Event) -> EventType {
    match e {
        Event::Delivered => EventType::Delivered,
        Event::Deferred => EventType::Deferred,
        Event::Bounced => EventType::Bounced,
        Event::Suppressed => EventType::Suppressed,
    }
}

/// The bytes of one group's copy, read from the spool when a connection is ready.
struct SpoolContent {
    spool: Arc<dyn Spool>,
    id: String,
    protection: Protection,
    rule: Option<Rule>,
    dkim: Arc<DkimSigners>,
    /// The stored message's size, which bounds the work of a transform.
    size: usize,
    sender_domain: String,
}

/// Up to this size, encrypting and signing a copy takes a few hundred microseconds (one RSA
/// public operation, AES and a hash over the bytes), less than handing the work to the
/// blocking pool and waiting for it to come back costs a busy server; larger copies go to
/// the pool so the runtime's threads are never stalled for milliseconds.
const INLINE_TRANSFORM_MAX: usize = 64 * 1024;

impl JobContent for SpoolContent {
    fn load(&self) -> Result<Vec<u8>, Reply> {
        let body = match self.spool.body(&self.id) {
            Ok(Some(b)) => b,
            Ok(None) => {
                return Err(Reply::new(
                    451,
                    EnhancedStatus::new(4, 3, 0),
                    "the message left the spool",
                ));
            }
            Err(e) => {
                return Err(Reply::new(
                    451,
                    EnhancedStatus::new(4, 3, 0),
                    format!("spool read failed: {e}"),
                ));
            }
        };
        let prepared = transform::prepare(&body, &self.protection, self.rule.as_ref())
            .map_err(|e| Reply::new(451, EnhancedStatus::new(4, 7, 0), e.to_string()))?;
        // Signing comes last, over exactly what is sent (after any encryption).
        self.dkim
            .sign(prepared, &self.sender_domain)
            .map_err(|e| Reply::new(451, EnhancedStatus::new(4, 7, 0), e.to_string()))
    }

    /// Plain copies (no encryption, no DKIM key configured) are one spool read (plus at most
    /// a subject rewrite, microseconds); others are cheap while small.
    fn is_cheap(&self) -> bool {
        (matches!(self.protection, Protection::None) && self.dkim.is_empty())
            || self.size <= INLINE_TRANSFORM_MAX
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
