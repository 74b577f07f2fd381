//! Bounce classification: what kind of failure a remote reply (or a DSN's status and
//! diagnostic) describes, so hard bounces can suppress an address while a full mailbox or a
//! spam block does not.
//!
//! A pure function of the reply code, the enhanced status (RFC 3463) and the text. The
//! enhanced status decides where it is specific; the text decides where providers use a
//! generic `5.0.0` / `550` for very different things ("user unknown" vs "blocked").

use crate::smtp::reply::{EnhancedStatus, Reply};
use serde::{Deserialize, Serialize};

/// The kind of a failed or deferred delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BounceKind {
    /// The mailbox or domain does not exist (5.1.1, 5.1.2, 5.1.10, "user unknown"):
    /// sending again cannot work, so the address is suppressed.
    Hard,
    /// A temporary failure with no more specific cause (4xx).
    Soft,
    /// Refused by policy or reputation (5.7.x, "blocked", "spam", a blocklist): our
    /// problem, not the recipient's; never suppresses the address.
    Block,
    /// The mailbox is full or over quota (x.2.2).
    Quota,
    /// The message is too big for the recipient (x.2.3, x.3.4).
    Size,
    /// The site asked us to slow down (421, 4.7.x "rate", "too many").
    RateLimit,
    /// TLS or authentication requirements not met (x.7.10, x.7.11, x.7.5, STARTTLS).
    Tls,
    /// The content was refused (x.6.x: bad headers, 8-bit, media).
    Content,
    /// Routing or DNS trouble (x.4.x).
    Routing,
    /// Nothing above matched.
    Unknown,
}

impl BounceKind {
    /// Name for logs, the suppression list and DSNs.
    pub fn name(self) -> &'static str {
        match self {
            Self::Hard => "hard",
            Self::Soft => "soft",
            Self::Block => "block",
            Self::Quota => "quota",
            Self::Size => "size",
            Self::RateLimit => "rate-limit",
            Self::Tls => "tls",
            Self::Content => "content",
            Self::Routing => "routing",
            Self::Unknown => "unknown",
        }
    }

    /// Whether this kind of permanent failure puts the address on the suppression list.
    pub fn suppresses(self) -> bool {
        self == Self::Hard
    }
}

/// Classifies a remote reply.
pub fn classify_reply(reply: &Reply) -> BounceKind {
    classify(reply.code, reply.status, &reply.text())
}

/// Classifies from a basic code (0 when unknown, as in a DSN without a Diagnostic-Code), an
/// enhanced status and the text.
pub fn classify(code: u16, status: Option<EnhancedStatus>, text: &str) -> BounceKind {
    let t = text.to_ascii_lowercase();
    let has = |words: &[&str]| words.iter().any(|w| t.contains(w));
    let permanent = status.map_or(code >= 500, |s| s.class == 5);
    // Words that mean "blocked" win over a mailbox status: providers answer 5.1.1 to a
    // blocklisted sender too, and suppressing the recipient then would be wrong.
    if has(&[
        "blocked",
        "blacklist",
        "blocklist",
        "spam",
        "reputation",
        "denied by policy",
        "rbl",
        "spamhaus",
    ]) {
        return BounceKind::Block;
    }
    if has(&["rate limit", "too many messages", "too many connections"]) || code == 421 {
        return BounceKind::RateLimit;
    }
    if let Some(s) = status {
        match (s.subject, s.detail) {
            (1, 1) | (1, 2) | (1, 3) | (1, 6) | (1, 10) | (2, 1) if s.class == 5 => {
                return BounceKind::Hard;
            }
            (1, _) if s.class == 4 => return BounceKind::Routing,
            (2, 2) => return BounceKind::Quota,
            (2, 3) | (3, 4) => return BounceKind::Size,
            (7, 10) | (7, 11) | (7, 5) | (7, 4) => return BounceKind::Tls,
            (7, _) if has(&["rate", "too many", "slow down"]) => return BounceKind::RateLimit,
            (7, _) => return BounceKind::Block,
            (6, _) => return BounceKind::Content,
            (4, _) => return BounceKind::Routing,
            _ => {}
        }
    }
    if has(&[
        "user unknown",
        "unknown user",
        "no such user",
        "no such mailbox",
        "mailbox unavailable",
        "does not exist",
        "recipient rejected",
        "invalid recipient",
        "address rejected",
        "mailbox not found",
    ]) && permanent
    {
        return BounceKind::Hard;
    }
    if has(&[
        "quota",
        "mailbox full",
        "over quota",
        "insufficient storage",
    ]) {
        return BounceKind::Quota;
    }
    if has(&["too large", "too big", "size limit"]) {
        return BounceKind::Size;
    }
    if has(&["tls", "starttls", "certificate"]) {
        return BounceKind::Tls;
    }
    if !permanent && (code >= 400 || status.is_some()) {
        return BounceKind::Soft;
    }
    BounceKind::Unknown
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(code: u16, status: &str, text: &str) -> BounceKind {
        classify(code, EnhancedStatus::parse(status), text)
    }

    #[test]
    fn table() {
        use BounceKind::*;
        let cases: &[(u16, &str, &str, BounceKind)] = &[
            (550, "5.1.1", "user unknown", Hard),
            (
                550,
                "5.1.1",
                "The email account that you tried to reach does not exist",
                Hard,
            ),
            (550, "5.1.10", "RESOLVER.ADR.RecipientNotFound", Hard),
            (550, "5.1.2", "domain has no mail server", Hard),
            (550, "5.2.1", "mailbox disabled", Hard),
            (
                550,
                "",
                "Requested action not taken: mailbox unavailable",
                Hard,
            ),
            (
                550,
                "5.0.0",
                "<bob@example.com>: Recipient address rejected: User unknown",
                Hard,
            ),
            (452, "4.2.2", "mailbox full", Quota),
            (552, "5.2.2", "The email account is over quota", Quota),
            (552, "5.3.4", "message too big", Size),
            (550, "5.7.1", "Message rejected due to local policy", Block),
            (
                554,
                "5.7.1",
                "Service unavailable; client host blocked using zen.spamhaus.org",
                Block,
            ),
            (550, "5.1.1", "sender blocked for spam", Block),
            (
                421,
                "4.7.0",
                "Try again later, closing connection",
                RateLimit,
            ),
            (
                450,
                "4.7.28",
                "unusual rate of unsolicited mail: rate limited",
                RateLimit,
            ),
            (451, "4.4.1", "connection refused", Routing),
            (550, "5.4.4", "unable to route", Routing),
            (454, "4.7.5", "TLS not available", Tls),
            (550, "5.7.10", "encryption needed", Tls),
            (554, "5.6.3", "8-bit content refused", Content),
            (451, "4.3.0", "local error", Soft),
            (450, "", "try later", Soft),
            (554, "", "transaction failed", Unknown),
            (0, "5.1.1", "", Hard),
        ];
        for &(code, status, text, want) in cases {
            assert_eq!(k(code, status, text), want, "{code} {status} {text}");
        }
    }

    #[test]
    fn only_hard_bounces_suppress() {
        assert!(BounceKind::Hard.suppresses());
        for kind in [
            BounceKind::Block,
            BounceKind::Quota,
            BounceKind::Soft,
            BounceKind::Tls,
        ] {
            assert!(!kind.suppresses(), "{kind:?}");
        }
    }

    #[test]
    fn a_4xx_user_unknown_is_not_hard() {
        assert_eq!(
            k(450, "4.1.1", "user unknown (try later)"),
            BounceKind::Routing
        );
        assert_eq!(k(450, "", "no such user here yet"), BounceKind::Soft);
    }
}
