//! Incoming feedback: delivery status notifications (RFC 3464) and spam complaints (ARF,
//! RFC 5965) that come back to a feedback domain (`[suppression] feedback_domains`). Their
//! hard bounces and complaints feed the suppression list; they are not relayed.
//!
//! A pure parser: bytes in, the addresses and what happened to them out.

use super::bounce::{self, BounceKind};
use crate::crypto::mime::header_fields;
use crate::smtp::reply::EnhancedStatus;
use mail_parser::{MessageParser, MimeHeaders, PartType};

/// One address a report speaks about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedbackItem {
    /// The recipient the report is about, lowercased.
    pub address: String,
    /// A complaint (ARF) rather than a bounce.
    pub complaint: bool,
    /// For bounces: the classified failure.
    pub kind: BounceKind,
    /// The status and diagnostic, or the feedback type, for the record.
    pub reason: String,
    /// The class the original message was sent in, when its returned headers say
    /// (`X-Sealpost-Class`).
    pub class: Option<String>,
}

/// What a report says; empty when `body` is not a DSN or feedback report.
pub fn parse(body: &[u8], class_header: &str) -> Vec<FeedbackItem> {
    let Some(msg) = MessageParser::default().parse(body) else {
        return Vec::new();
    };
    let mut status_blocks = None;
    let mut feedback = None;
    let mut returned_headers: Option<Vec<u8>> = None;
    for part in &msg.parts {
        let Some(ct) = part.content_type() else {
            continue;
        };
        let ty = ct.ctype().to_ascii_lowercase();
        let sub = ct.subtype().unwrap_or("").to_ascii_lowercase();
        match (ty.as_str(), sub.as_str()) {
            ("message", "delivery-status" | "global-delivery-status") => {
                status_blocks = Some(part.contents().to_vec())
            }
            ("message", "feedback-report") => feedback = Some(part.contents().to_vec()),
            ("text", "rfc822-headers") => returned_headers = Some(part.contents().to_vec()),
            ("message", "rfc822" | "global") => {
                if let PartType::Message(m) = &part.body {
                    let raw = m.raw_message();
                    let (h, _) = crate::crypto::mime::split_header_body(raw);
                    returned_headers = Some(h.to_vec());
                }
            }
            _ => {}
        }
    }
    let class = returned_headers.as_deref().and_then(|h| {
        header_fields(&crlf(h))
            .iter()
            .find(|f| !class_header.is_empty() && f.is(&class_header.to_ascii_lowercase()))
            .map(|f| f.value().trim().to_string())
    });
    let mut out = Vec::new();
    if let Some(fb) = feedback {
        let blocks = blocks(&fb);
        let fields: Vec<(String, String)> = blocks.into_iter().flatten().collect();
        let ftype = field(&fields, "feedback-type").unwrap_or_else(|| "abuse".into());
        let mut addrs: Vec<String> = fields
            .iter()
            .filter(|(n, _)| n == "original-rcpt-to" || n == "removal-recipient")
            .map(|(_, v)| strip_type(v))
            .collect();
        if addrs.is_empty()
            && let Some(h) = &returned_headers
        {
            addrs.extend(
                header_fields(&crlf(h))
                    .iter()
                    .filter(|f| f.is("to"))
                    .filter_map(|f| angle_or_plain(&f.value())),
            );
        }
        for address in addrs.into_iter().filter(|a| a.contains('@')) {
            out.push(FeedbackItem {
                address,
                complaint: true,
                kind: BounceKind::Block,
                reason: format!("complaint: feedback-type {ftype}"),
                class: class.clone(),
            });
        }
    }
    if let Some(ds) = status_blocks {
        for block in blocks(&ds).into_iter().skip(1) {
            let Some(rcpt) = field(&block, "final-recipient")
                .or_else(|| field(&block, "original-recipient"))
                .map(|v| strip_type(&v))
            else {
                continue;
            };
            let action = field(&block, "action")
                .unwrap_or_default()
                .to_ascii_lowercase();
            if action != "failed" {
                continue;
            }
            let status = field(&block, "status").unwrap_or_default();
            let diag = field(&block, "diagnostic-code")
                .map(|d| strip_type(&d))
                .unwrap_or_default();
            let code = diag
                .get(..3)
                .and_then(|c| c.parse::<u16>().ok())
                .unwrap_or(0);
            let kind = bounce::classify(code, EnhancedStatus::parse(status.trim()), &diag);
            out.push(FeedbackItem {
                address: rcpt,
                complaint: false,
                kind,
                reason: format!("dsn: status {status}; {diag}")
                    .trim_end_matches("; ")
                    .to_string(),
                class: class.clone(),
            });
        }
    }
    out
}

/// Splits a delivery-status or feedback-report body into its field groups (separated by
/// blank lines), each as (lowercased name, unfolded value) pairs.
fn blocks(content: &[u8]) -> Vec<Vec<(String, String)>> {
    let text = crlf(content);
    let text = String::from_utf8_lossy(&text).into_owned();
    text.split("\r\n\r\n")
        .filter(|b| !b.trim().is_empty())
        .map(|b| {
            let mut bytes = b.as_bytes().to_vec();
            bytes.extend_from_slice(b"\r\n");
            header_fields(&bytes)
                .iter()
                .map(|f| {
                    (
                        String::from_utf8_lossy(f.name).to_ascii_lowercase(),
                        f.value().trim().to_string(),
                    )
                })
                .collect()
        })
        .collect()
}

fn field(fields: &[(String, String)], name: &str) -> Option<String> {
    fields
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.clone())
}

/// `rfc822; Bob@Example.com` -> `bob@example.com`; `smtp; 550 ...` -> `550 ...`.
fn strip_type(v: &str) -> String {
    let v = v.split_once(';').map_or(v, |(_, rest)| rest).trim();
    if v.contains('@') && !v.contains(' ') {
        v.trim_start_matches('<')
            .trim_end_matches('>')
            .to_lowercase()
    } else {
        v.to_string()
    }
}

fn angle_or_plain(v: &str) -> Option<String> {
    let v = v.trim();
    let inner = match (v.find('<'), v.rfind('>')) {
        (Some(a), Some(b)) if a < b => &v[a + 1..b],
        _ => v,
    };
    inner.contains('@').then(|| inner.trim().to_lowercase())
}

/// Bare LF line ends to CRLF (reports from some systems arrive with LF).
fn crlf(b: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(b.len() + 16);
    let mut prev = 0u8;
    for &c in b {
        if c == b'\n' && prev != b'\r' {
            out.push(b'\r');
        }
        out.push(c);
        prev = c;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const DSN: &str = "From: MAILER-DAEMON@mx.example.org\r\nTo: bounces@fb.example.net\r\nSubject: Undelivered Mail\r\nMIME-Version: 1.0\r\nContent-Type: multipart/report; report-type=delivery-status; boundary=\"B\"\r\n\r\n--B\r\nContent-Type: text/plain\r\n\r\nSorry.\r\n--B\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.example.org\r\n\r\nFinal-Recipient: rfc822; Gone@Example.org\r\nAction: failed\r\nStatus: 5.1.1\r\nDiagnostic-Code: smtp; 550 5.1.1 user unknown\r\n\r\nFinal-Recipient: rfc822; full@example.org\r\nAction: failed\r\nStatus: 5.2.2\r\nDiagnostic-Code: smtp; 552 5.2.2 mailbox full\r\n\r\nFinal-Recipient: rfc822; late@example.org\r\nAction: delayed\r\nStatus: 4.4.1\r\n\r\n--B\r\nContent-Type: text/rfc822-headers\r\n\r\nFrom: news@example.net\r\nX-Sealpost-Class: marketing\r\nSubject: offers\r\n--B--\r\n";

    #[test]
    fn dsn_failures_are_classified_and_delays_ignored() {
        let items = parse(DSN.as_bytes(), "X-Sealpost-Class");
        assert_eq!(items.len(), 2, "{items:?}");
        assert_eq!(items[0].address, "gone@example.org");
        assert_eq!(items[0].kind, BounceKind::Hard);
        assert!(!items[0].complaint);
        assert_eq!(items[0].class.as_deref(), Some("marketing"));
        assert!(
            items[0].reason.contains("550 5.1.1 user unknown"),
            "{}",
            items[0].reason
        );
        assert_eq!(items[1].kind, BounceKind::Quota);
    }

    #[test]
    fn arf_complaint_with_and_without_original_rcpt_to() {
        let arf = "From: fbl@example.org\nTo: fbl@fb.example.net\nMIME-Version: 1.0\nContent-Type: multipart/report; report-type=feedback-report; boundary=\"X\"\n\n--X\nContent-Type: text/plain\n\nThis is an abuse report.\n--X\nContent-Type: message/feedback-report\n\nFeedback-Type: abuse\nUser-Agent: SomeISP/1.0\nVersion: 1\nOriginal-Rcpt-To: <Carol@example.org>\n\n--X\nContent-Type: message/rfc822\n\nFrom: news@example.net\nTo: carol@example.org\nSubject: deals\n\nbody\n--X--\n";
        let items = parse(arf.as_bytes(), "X-Sealpost-Class");
        assert_eq!(items.len(), 1, "{items:?}");
        assert!(items[0].complaint);
        assert_eq!(items[0].address, "carol@example.org");
        assert_eq!(items[0].class, None);
        let no_rcpt = arf.replace("Original-Rcpt-To: <Carol@example.org>\n", "");
        let items = parse(no_rcpt.as_bytes(), "X-Sealpost-Class");
        assert_eq!(items.len(), 1, "{items:?}");
        assert_eq!(items[0].address, "carol@example.org");
    }

    #[test]
    fn ordinary_mail_says_nothing() {
        assert!(
            parse(
                b"From: a@example.net\r\nSubject: hi\r\n\r\nhello\r\n",
                "X-Sealpost-Class"
            )
            .is_empty()
        );
        assert!(parse(b"", "X-Sealpost-Class").is_empty());
        assert!(parse(b"\xff\xfe garbage", "X-Sealpost-Class").is_empty());
    }
}
