//! The records kept per message: envelope, per-recipient status, DSN parameters.

use serde::{Deserialize, Serialize};

/// Current envelope record layout; bumped when a field changes meaning.
pub const ENVELOPE_VERSION: u32 = 1;

/// The envelope of one queued message and the state of each recipient.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// Record layout version ([`ENVELOPE_VERSION`]).
    pub version: u32,
    /// Queue id, also the key of body and envelope.
    pub id: String,
    /// Unix seconds when the message was accepted; retry delays and expiry count from here.
    pub created: u64,
    /// Unix seconds when the next delivery attempt is due.
    pub next_due: u64,
    /// Delivery attempts made so far (for the whole message).
    pub attempts: u32,
    /// Reverse path without brackets; empty for the null sender `<>`.
    pub mail_from: String,
    /// DSN ENVID (RFC 3461 §4.4), decoded.
    pub envid: Option<String>,
    /// DSN RET (RFC 3461 §4.3).
    pub ret: Option<Ret>,
    /// The client asked for SMTPUTF8.
    pub smtputf8: bool,
    /// The client declared BODY=8BITMIME.
    pub eight_bit: bool,
    /// Stored body size in octets.
    pub size: u64,
    /// Client's EHLO/HELO name, for DSNs and logs.
    pub helo: String,
    /// Client IP address, for DSNs and logs.
    pub client: String,
    /// SASL identity that submitted the message, if any.
    pub authenticated: Option<String>,
    /// True for DSNs we generated: they are never bounced themselves (no bounce loops).
    pub is_dsn: bool,
    /// The listener address the message arrived on, for policy rules that match on it.
    #[serde(default)]
    pub listener: Option<String>,
    /// The traffic class (`[[class]]` in the config) the message was assigned at accept time,
    /// e.g. `transactional`, `marketing`; DSNs we generate are `bounce`. `None` for messages
    /// spooled before classes existed: they count as the default class.
    #[serde(default)]
    pub class: Option<String>,
    /// The HTTP API client id that submitted the message (`None` for SMTP and DSNs): events
    /// carry it so an API client can read the events of its own messages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_client: Option<String>,
    /// One record per accepted recipient.
    pub recipients: Vec<RecipientRecord>,
}

impl Envelope {
    /// True when every recipient has a final status.
    pub fn is_complete(&self) -> bool {
        self.recipients.iter().all(|r| r.status.is_final())
    }
}

/// DSN return type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Ret {
    /// Return the full message in a failure DSN.
    Full,
    /// Return only the headers.
    Hdrs,
}

/// DSN NOTIFY (RFC 3461 §4.1); `None` on a recipient means the client did not say.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notify {
    /// Report successful delivery.
    pub success: bool,
    /// Report failure.
    pub failure: bool,
    /// Report delays.
    pub delay: bool,
}

/// One recipient's envelope data and state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecipientRecord {
    /// The forward path without brackets.
    pub address: String,
    /// ORCPT as `addr-type;decoded-address`, if given.
    pub orcpt: Option<String>,
    /// NOTIFY as given; `None` = not given (we then report failures only). `Some` with all
    /// false is NOTIFY=NEVER.
    pub notify: Option<Notify>,
    /// Where this recipient stands.
    pub status: RcptStatus,
    /// Attempts made for this recipient.
    pub attempts: u32,
    /// Remote host that gave the last reply, if any.
    pub remote: Option<String>,
    /// TLS used on the last attempt, e.g. `TLSv1.3 TLS13_AES_256_GCM_SHA384`, if any.
    pub tls: Option<String>,
    /// The protection chosen by policy on the last attempt, e.g. `openpgp`, `smime`,
    /// `verified-tls (mta-sts)`, `opportunistic-tls`.
    #[serde(default)]
    pub method: Option<String>,
    /// Whether the last TLS session verified the server certificate.
    #[serde(default)]
    pub tls_verified: Option<bool>,
    /// Unix seconds of the last status change.
    pub updated: u64,
}

impl RecipientRecord {
    /// A recipient not yet attempted, with no ORCPT or NOTIFY: every new envelope (SMTP, API,
    /// DSN) starts its recipients from this, adding the DSN parameters it has.
    pub fn queued(address: String, now: u64) -> Self {
        Self {
            address,
            orcpt: None,
            notify: None,
            status: RcptStatus::Queued,
            attempts: 0,
            remote: None,
            tls: None,
            method: None,
            tls_verified: None,
            updated: now,
        }
    }

    /// The domain part, lowercased, used to group recipients per destination.
    pub fn domain(&self) -> String {
        self.address
            .rsplit_once('@')
            .map(|(_, d)| d.to_ascii_lowercase())
            .unwrap_or_default()
    }

    /// Whether a failure DSN is wanted (RFC 3461: unspecified means failure and delay).
    pub fn wants_failure_dsn(&self) -> bool {
        self.notify.is_none_or(|n| n.failure)
    }
}

/// Per-recipient delivery state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "lowercase")]
pub enum RcptStatus {
    /// Not yet attempted.
    Queued,
    /// Tried and temporarily refused; will be retried.
    Deferred {
        /// Last reply or error, e.g. `451 4.4.1 connection refused`.
        reply: String,
    },
    /// Accepted by the next hop.
    Delivered {
        /// The remote's reply to the end of data.
        reply: String,
    },
    /// Permanently failed; a DSN was sent if the sender wanted one.
    Failed {
        /// Why, e.g. `550 5.1.1 no such user` or `4.4.7 expired`.
        reply: String,
    },
}

impl RcptStatus {
    /// Delivered and Failed are final; the message leaves the spool when all are final.
    pub fn is_final(&self) -> bool {
        matches!(self, Self::Delivered { .. } | Self::Failed { .. })
    }

    /// The reply of a recipient that has one (every state but queued).
    pub fn reply(&self) -> Option<&str> {
        match self {
            Self::Queued => None,
            Self::Deferred { reply } | Self::Delivered { reply } | Self::Failed { reply } => {
                Some(reply)
            }
        }
    }

    /// Short name for listings: queued, deferred, delivered, failed.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Deferred { .. } => "deferred",
            Self::Delivered { .. } => "delivered",
            Self::Failed { .. } => "failed",
        }
    }
}

/// Makes a new queue id: 12 hex digits of milliseconds (so ids sort by age) and 8 random.
pub fn new_queue_id(now_millis: u64) -> String {
    format!(
        "{:012X}{:08X}",
        now_millis & 0xFFFF_FFFF_FFFF,
        rand::random::<u32>()
    )
}

/// True when `s` has the shape of a queue id; the admin interface rejects anything else.
pub fn is_queue_id(s: &str) -> bool {
    s.len() == 20
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b))
}
