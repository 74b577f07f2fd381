//! Delivery status notifications (RFC 3464): `multipart/report; report-type=delivery-status`,
//! sent with the null reverse path and never in reply to one (RFC 5321 §6.1).

use crate::config::DefaultRet;
use crate::queue::clock::rfc5322_date;
use crate::spool::{Envelope, RecipientRecord, Ret};
use std::fmt::Write as _;

/// What happened to a recipient being reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DsnAction {
    /// Permanent failure or expiry.
    Failed,
    /// Handed to a server that does not do DSN, when the sender asked for NOTIFY=SUCCESS.
    Relayed,
    /// Still trying (NOTIFY=DELAY).
    Delayed,
}

impl DsnAction {
    fn as_str(self) -> &'static str {
        match self {
            Self::Failed => "failed",
            Self::Relayed => "relayed",
            Self::Delayed => "delayed",
        }
    }
}

/// One recipient line of a report: the record, what happened, and the reply behind it.
pub struct DsnEntry<'a> {
    /// The recipient as stored.
    pub recipient: &'a RecipientRecord,
    /// Action field.
    pub action: DsnAction,
    /// The reply or reason, e.g. `550 5.1.1 no such user`.
    pub diagnostic: String,
}

/// Whether a report may be sent at all about this message: never to the null sender and
/// never about a report we generated (no bounce loops, RFC 3461 §4.1 / RFC 5321 §6.1).
pub fn may_report(envelope: &Envelope) -> bool {
    !envelope.mail_from.is_empty() && !envelope.is_dsn
}

/// Builds the DSN message bytes (CRLF, 7-bit headers; the returned original may be 8-bit).
pub fn build(
    hostname: &str,
    envelope: &Envelope,
    original: &[u8],
    entries: &[DsnEntry<'_>],
    default_ret: DefaultRet,
    now: u64,
) -> Vec<u8> {
    let boundary = format!("{}/{}", envelope.id, hostname);
    let failed = entries.iter().any(|e| e.action == DsnAction::Failed);
    let subject = match (failed, entries.first().map(|e| e.action)) {
        (true, _) => "Undelivered Mail Returned to Sender",
        (false, Some(DsnAction::Delayed)) => "Delayed Mail (still being retried)",
        _ => "Successful Mail Delivery Report",
    };
    let mut m = String::new();
    let _ = write!(
        m,
        "From: Mail Delivery System <MAILER-DAEMON@{hostname}>\r\n\
         To: <{to}>\r\n\
         Subject: {subject}\r\n\
         Date: {date}\r\n\
         Message-ID: <{id}.dsn@{hostname}>\r\n\
         Auto-Submitted: auto-replied\r\n\
         MIME-Version: 1.0\r\n\
         Content-Type: multipart/report; report-type=delivery-status;\r\n\
         \tboundary=\"{boundary}\"\r\n\r\n\
         This is a MIME-encapsulated delivery status notification.\r\n\r\n\
         --{boundary}\r\n\
         Content-Type: text/plain; charset=us-ascii\r\n\r\n",
        to = envelope.mail_from,
        date = rfc5322_date(now),
        id = envelope.id,
    );
    let _ = write!(
        m,
        "This is the mail system at host {hostname}.\r\n\r\n\
         Your message (queue id {id}) could not be delivered to every recipient,\r\n\
         or you asked to be told about its delivery. Details follow.\r\n\r\n",
        id = envelope.id
    );
    for e in entries {
        let _ = write!(
            m,
            "<{}>: {}: {}\r\n",
            ascii(&e.recipient.address),
            e.action.as_str(),
            ascii(&e.diagnostic)
        );
    }
    let _ = write!(
        m,
        "\r\n--{boundary}\r\nContent-Type: message/delivery-status\r\n\r\n\
         Reporting-MTA: dns; {hostname}\r\n"
    );
    if let Some(envid) = &envelope.envid {
        let _ = write!(m, "Original-Envelope-Id: {}\r\n", ascii(envid));
    }
    let _ = write!(
        m,
        "Received-From-MTA: dns; {}\r\nArrival-Date: {}\r\n",
        ascii(&envelope.helo),
        rfc5322_date(envelope.created)
    );
    for e in entries {
        m.push_str("\r\n");
        if let Some(orcpt) = &e.recipient.orcpt {
            let _ = write!(m, "Original-Recipient: {}\r\n", ascii(orcpt));
        }
        let _ = write!(
            m,
            "Final-Recipient: rfc822; {}\r\nAction: {}\r\nStatus: {}\r\n",
            ascii(&e.recipient.address),
            e.action.as_str(),
            status_of(&e.diagnostic, e.action)
        );
        if let Some(remote) = &e.recipient.remote {
            let _ = write!(m, "Remote-MTA: dns; {}\r\n", ascii(remote));
        }
        if e.diagnostic.starts_with(|c: char| c.is_ascii_digit()) {
            let _ = write!(m, "Diagnostic-Code: smtp; {}\r\n", ascii(&e.diagnostic));
        }
        let _ = write!(
            m,
            "Last-Attempt-Date: {}\r\n",
            rfc5322_date(e.recipient.updated)
        );
    }
    let full = match envelope.ret {
        Some(Ret::Full) => true,
        Some(Ret::Hdrs) => false,
        None => default_ret == DefaultRet::Full,
    };
    let mut out = m.into_bytes();
    if full {
        out.extend_from_slice(
            format!("\r\n--{boundary}\r\nContent-Type: message/rfc822\r\n\r\n").as_bytes(),
        );
        out.extend_from_slice(original);
        if !original.ends_with(b"\r\n") {
            out.extend_from_slice(b"\r\n");
        }
    } else {
        out.extend_from_slice(
            format!("\r\n--{boundary}\r\nContent-Type: text/rfc822-headers\r\n\r\n").as_bytes(),
        );
        out.extend_from_slice(headers_of(original));
    }
    out.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    out
}

/// The header section of a message including its last CRLF (the whole message if it has no
/// body separator).
fn headers_of(message: &[u8]) -> &[u8] {
    match message.windows(4).position(|w| w == b"\r\n\r\n") {
        Some(p) => &message[..p + 2],
        None => message,
    }
}

/// The enhanced status for the Status field: the one in the reply, else one by class.
fn status_of(diagnostic: &str, action: DsnAction) -> String {
    let mut words = diagnostic.split_whitespace();
    let code = words.next().unwrap_or("");
    if let Some(st) = words
        .next()
        .and_then(crate::smtp::reply::EnhancedStatus::parse)
    {
        return st.to_string();
    }
    if let Some(st) = crate::smtp::reply::EnhancedStatus::parse(code) {
        return st.to_string();
    }
    match (action, code.chars().next()) {
        (DsnAction::Relayed, _) => "2.0.0".into(),
        (_, Some('5')) => "5.0.0".into(),
        _ => "4.0.0".into(),
    }
}

/// Keeps DSN fields 7-bit and single-line whatever a remote put in its reply.
fn ascii(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii() && !c.is_ascii_control() {
                c
            } else {
                '?'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spool::{ENVELOPE_VERSION, Notify, RcptStatus};

    fn env(ret: Option<Ret>) -> Envelope {
        Envelope {
            version: ENVELOPE_VERSION,
            id: "00000000000100000000".into(),
            created: 1_700_000_000,
            next_due: 0,
            attempts: 1,
            mail_from: "alice@example.net".into(),
            envid: Some("env-1".into()),
            ret,
            smtputf8: false,
            eight_bit: false,
            size: 10,
            helo: "c.example.net".into(),
            client: "127.0.0.1".into(),
            authenticated: None,
            is_dsn: false,
            listener: None,
            class: None,
            api_client: None,
            recipients: vec![RecipientRecord {
                address: "nobody@example.org".into(),
                orcpt: Some("rfc822;nobody@example.org".into()),
                notify: Some(Notify {
                    failure: true,
                    ..Default::default()
                }),
                status: RcptStatus::Failed {
                    reply: "550 5.1.1 no such user".into(),
                },
                attempts: 1,
                remote: Some("mx.example.org".into()),
                tls: None,
                method: None,
                tls_verified: None,
                updated: 1_700_000_100,
            }],
        }
    }

    #[test]
    fn failure_report_has_rfc3464_fields_and_headers_only_by_default() {
        let e = env(None);
        let original = b"Subject: hi\r\nFrom: alice@example.net\r\n\r\nsecret body\r\n";
        let entries = [DsnEntry {
            recipient: &e.recipients[0],
            action: DsnAction::Failed,
            diagnostic: "550 5.1.1 no such user\r\nInjected: x".into(),
        }];
        let out = build(
            "mx.example.test",
            &e,
            original,
            &entries,
            DefaultRet::Headers,
            1,
        );
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("report-type=delivery-status"));
        assert!(text.contains("Original-Envelope-Id: env-1\r\n"));
        assert!(text.contains("Original-Recipient: rfc822;nobody@example.org\r\n"));
        assert!(text.contains(
            "Final-Recipient: rfc822; nobody@example.org\r\nAction: failed\r\nStatus: 5.1.1\r\n"
        ));
        assert!(text.contains("Remote-MTA: dns; mx.example.org\r\n"));
        assert!(text.contains("Content-Type: text/rfc822-headers\r\n\r\nSubject: hi\r\n"));
        assert!(!text.contains("secret body"));
        assert!(
            !text.contains("\r\nInjected: x"),
            "diagnostic must stay on one line"
        );
        assert!(!text.replace("\r\n", "").contains('\n'), "no bare LF");
    }

    #[test]
    fn ret_full_returns_whole_message() {
        let e = env(Some(Ret::Full));
        let original = b"Subject: hi\r\n\r\nbody";
        let entries = [DsnEntry {
            recipient: &e.recipients[0],
            action: DsnAction::Failed,
            diagnostic: "expired".into(),
        }];
        let text =
            String::from_utf8(build("h", &e, original, &entries, DefaultRet::Headers, 1)).unwrap();
        assert!(text.contains("Content-Type: message/rfc822\r\n\r\nSubject: hi\r\n\r\nbody\r\n"));
        assert!(text.contains("Status: 4.0.0"));
    }

    #[test]
    fn never_reports_to_null_sender_or_about_reports() {
        let mut e = env(None);
        assert!(may_report(&e));
        e.mail_from.clear();
        assert!(!may_report(&e));
        let mut e = env(None);
        e.is_dsn = true;
        assert!(!may_report(&e));
    }
}
