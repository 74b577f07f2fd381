//! The vocabulary shared by the policy engine, the transforms and delivery: what a recipient
//! needs, what the probes found, and the method `decide` chose.

use serde::{Deserialize, Serialize};

/// The protection a rule demands for a recipient.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Requirement {
    /// Anything goes: opportunistic TLS, plaintext if the remote has no STARTTLS.
    None,
    /// TLS required, certificate not checked.
    Tls,
    /// TLS with a certificate verified against the MX name (or a pinned fingerprint).
    VerifiedTls,
    /// End-to-end encryption (OpenPGP or S/MIME), or a method the rule lists explicitly.
    Encrypted,
}

/// A delivery method a rule may list, in preference order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MethodName {
    /// PGP/MIME to the recipient's OpenPGP certificate.
    Pgp,
    /// S/MIME enveloped-data to the recipient's certificate.
    Smime,
    /// TLS verified against the MX name.
    VerifiedTls,
    /// TLS without certificate checks.
    Tls,
}

/// What to do when no listed method is possible for a recipient.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnUnavailable {
    /// Fail the recipient now (DSN to the sender).
    Bounce,
    /// Keep it queued and retry (keys or TLS may appear); expires like any deferral.
    Defer,
}

/// Where a verified-TLS requirement came from, strongest first (DESIGN.md precedence).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "source", rename_all = "kebab-case")]
pub enum TlsSource {
    /// A DNSSEC-validated TLSA record (DANE). Not probed yet; reserved.
    Dane,
    /// The domain's MTA-STS policy in enforce mode; delivery only to matching MX hosts.
    MtaSts {
        /// The policy's `mx:` patterns (lowercase, `*.` wildcards allowed).
        mx_patterns: Vec<String>,
        /// The policy id from the `_mta-sts` TXT record.
        policy_id: String,
    },
    /// A local policy rule demanded it.
    Policy {
        /// The rule's name.
        rule: String,
    },
    /// The domain showed verified TLS before (the ratchet): never accept less silently.
    History,
}

/// The method chosen for one recipient.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "method", rename_all = "kebab-case")]
pub enum Method {
    /// TLS with certificate verification; never plaintext, never an unverified certificate.
    VerifiedTls {
        /// Why verification is required.
        #[serde(flatten)]
        source: TlsSource,
    },
    /// PGP/MIME; the transport is still opportunistic TLS (or stricter, per `transport`).
    OpenPgp {
        /// Fingerprint of the recipient certificate used.
        fingerprint: String,
    },
    /// S/MIME enveloped-data.
    Smime {
        /// SHA-256 fingerprint of the recipient certificate used.
        fingerprint: String,
    },
    /// TLS required, certificate not checked (`require = "tls"`).
    RequiredTls,
    /// STARTTLS when offered, plaintext otherwise (logged).
    OpportunisticTls,
}

/// How the transport must behave for a copy of the message, derived from the decision.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub struct TransportRequirement {
    /// STARTTLS must succeed; otherwise defer (4.7.x) and try the next MX.
    pub require_tls: bool,
    /// The certificate must verify against the MX host name (webpki roots plus the extra CA
    /// file) or match a pinned SHA-256 fingerprint.
    pub verify_certificate: bool,
    /// When set (MTA-STS enforce), only MX hosts matching one of these patterns may be used.
    pub mx_patterns: Option<Vec<String>>,
}

/// The outcome of `decide` for one recipient.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "decision", rename_all = "kebab-case")]
pub enum Decision {
    /// Deliver with this method and transport.
    Deliver {
        /// The chosen method.
        method: Method,
        /// What the SMTP client must enforce.
        transport: TransportRequirement,
        /// The rule that matched, if any.
        rule: Option<String>,
        /// Human-readable reasons, in the order they were considered (for `policy explain`).
        reasons: Vec<String>,
    },
    /// The policy cannot be met now.
    Refuse {
        /// Bounce now or keep retrying.
        action: OnUnavailable,
        /// The rule that matched.
        rule: Option<String>,
        /// Why, shown in logs, DSNs and `policy explain`.
        reason: String,
    },
}
