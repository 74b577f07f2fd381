//! Before and after delivery: the suppression list. Before an attempt, recipients on the
//! list for the message's class fail at once with the reason, and mail to a feedback domain
//! is read (DSNs, complaints) instead of relayed. After a hard bounce the address joins the
//! list for that class.

use super::attempt::Report;
use super::bounce::{self, BounceKind};
use super::dsn::DsnAction;
use super::feedback;
use super::scheduler::Queue;
use crate::events::{Event as LogEvent, EventType};
use crate::metrics::Event;
use crate::smtp::reply::Reply;
use crate::spool::{Envelope, RcptStatus, SpoolError};
use crate::suppression::{ALL_CLASSES, Suppression, SuppressionSource};

/// Settles suppressed recipients and feedback mail of `env` (class `class`) before the
/// attempt plans the rest; returns whether it finished any recipient.
pub(super) fn screen(
    q: &Queue,
    env: &mut Envelope,
    body: &[u8],
    class: &str,
    now: u64,
    reports: &mut Vec<Report>,
) -> Result<bool, SpoolError> {
    let mut acted = false;
    let mut feedback_read: Option<usize> = None;
    // Message-level fields of the events below, taken before the recipients are borrowed.
    let base = LogEvent::about(EventType::Suppressed, env, class, now);
    for (i, r) in env.recipients.iter_mut().enumerate() {
        if r.status.is_final() {
            continue;
        }
        if q.settings.feedback_domains.contains(&r.domain()) {
            let n = match feedback_read {
                Some(n) => n,
                None => {
                    let n = record_feedback(q, body, now)?;
                    feedback_read = Some(n);
                    n
                }
            };
            tracing::info!(queue_id = %env.id, rcpt = %r.address, suppressed = n, "feedback read");
            let reply = format!("250 2.0.0 feedback read: {n} address(es) suppressed");
            let mut read = base.clone().to(&r.address).reply(reply.clone());
            read.kind = EventType::Delivered;
            read.method = Some("feedback".into());
            q.events.emit(read);
            r.status = RcptStatus::Delivered { reply };
            r.method = Some("feedback".into());
            r.attempts += 1;
            r.updated = now;
            acted = true;
            continue;
        }
        if !q.settings.suppress {
            continue;
        }
        let Some(s) = q.suppressions.check(&r.address, class)? else {
            continue;
        };
        let why = if s.reason.is_empty() {
            source_name(s.source).to_string()
        } else {
            format!("{}: {}", source_name(s.source), s.reason)
        };
        let reply = format!(
            "550 5.7.1 <{}> is on the suppression list for {} since {} ({why})",
            r.address,
            if s.class == ALL_CLASSES {
                "every class".to_string()
            } else {
                format!("class {}", s.class)
            },
            day(s.created),
        );
        tracing::warn!(queue_id = %env.id, rcpt = %r.address, reason = %reply, "bounced: suppressed");
        q.metrics.recipient(Event::Suppressed, class);
        q.events
            .emit(base.clone().to(&r.address).reply(reply.clone()));
        if r.wants_failure_dsn() {
            reports.push((i, DsnAction::Failed, reply.clone()));
        }
        r.status = RcptStatus::Failed { reply };
        r.attempts += 1;
        r.updated = now;
        acted = true;
    }
    Ok(acted)
}

/// After a permanent failure of `address` in `class`: a hard bounce suppresses it.
pub(super) fn note_failure(
    q: &Queue,
    queue_id: &str,
    address: &str,
    class: &str,
    reply: &Reply,
    now: u64,
) {
    let kind = bounce::classify_reply(reply);
    if !q.settings.suppress || !kind.suppresses() {
        tracing::debug!(
            queue_id,
            rcpt = address,
            kind = kind.name(),
            "failure does not suppress"
        );
        return;
    }
    let entry = Suppression {
        address: address.to_string(),
        class: class.to_string(),
        source: SuppressionSource::Bounce,
        reason: reply.to_string().trim_end().to_string(),
        created: now,
    };
    match q.suppressions.add(entry) {
        Ok(()) => tracing::info!(
            queue_id,
            rcpt = address,
            class,
            kind = kind.name(),
            "suppressed after hard bounce"
        ),
        Err(e) => {
            tracing::error!(queue_id, rcpt = address, error = %e, "could not record the suppression")
        }
    }
}

/// Reads a feedback message and suppresses what it reports; returns how many addresses.
fn record_feedback(q: &Queue, body: &[u8], now: u64) -> Result<usize, SpoolError> {
    let mut n = 0;
    for item in feedback::parse(body, &q.settings.class_header) {
        if !item.complaint && item.kind != BounceKind::Hard {
            continue;
        }
        let class = item
            .class
            .filter(|c| q.class_index(c).is_some())
            .unwrap_or_else(|| ALL_CLASSES.to_string());
        q.suppressions.add(Suppression {
            address: item.address,
            class,
            source: if item.complaint {
                SuppressionSource::Complaint
            } else {
                SuppressionSource::Dsn
            },
            reason: item.reason,
            created: now,
        })?;
        n += 1;
    }
    Ok(n)
}

fn source_name(s: SuppressionSource) -> &'static str {
    match s {
        SuppressionSource::Bounce => "hard bounce",
        SuppressionSource::Dsn => "bounce report",
        SuppressionSource::Complaint => "complaint",
        SuppressionSource::Admin => "added by an administrator",
    }
}

/// `YYYY-MM-DD` (UTC) of Unix seconds.
pub fn day(secs: u64) -> String {
    chrono::DateTime::from_timestamp(secs as i64, 0)
        .map(|d| d.format("%Y-%m-%d").to_string())
        .unwrap_or_else(|| secs.to_string())
}
