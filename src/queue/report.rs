//! Sending the DSN an attempt calls for: one multipart/report to the sender covering every
//! recipient that failed (or was relayed with NOTIFY=SUCCESS), queued like any message in the
//! `bounce` class.

use super::attempt::Report;
use super::dsn::{self, DsnEntry};
use super::scheduler::Queue;
use crate::config::BOUNCE_CLASS;
use crate::spool::{ENVELOPE_VERSION, Envelope, Notify, RecipientRecord, SpoolError, new_queue_id};

/// Queues one DSN to the sender covering `reports`, unless the message may not be reported
/// on (null sender, or itself a DSN: then a failure is logged as a double bounce).
pub(super) async fn send(
    q: &Queue,
    env: &Envelope,
    body: &[u8],
    reports: &[Report],
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
    let s = &q.settings;
    let bytes = dsn::build(&s.hostname, env, body, &entries, s.default_ret, now);
    let report = Envelope {
        version: ENVELOPE_VERSION,
        id: new_queue_id(q.clock.now_millis()),
        created: now,
        next_due: now,
        attempts: 0,
        mail_from: String::new(),
        envid: None,
        ret: None,
        smtputf8: env.smtputf8,
        eight_bit: env.eight_bit || env.smtputf8,
        size: bytes.len() as u64,
        helo: s.hostname.clone(),
        client: "local".into(),
        authenticated: None,
        is_dsn: true,
        listener: None,
        class: Some(BOUNCE_CLASS.into()),
        api_client: None,
        recipients: vec![RecipientRecord {
            notify: Some(Notify::default()),
            ..RecipientRecord::queued(env.mail_from.clone(), now)
        }],
    };
    tracing::info!(queue_id = %env.id, dsn_id = %report.id, to = %env.mail_from, "dsn queued");
    q.enqueue(&report, &bytes).await
}
