//! Operations settings: the suppression list and feedback domains (`[suppression]`), the
//! Prometheus endpoint (`[metrics]`), DKIM signing keys (`[[dkim]]`) and the audit log
//! (`[audit]`).

use serde::Deserialize;
use std::net::SocketAddr;

/// `[[dkim]]`: a signing key for one sender domain.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DkimKey {
    /// The signing domain (`d=`): messages whose `From:` is in this domain (else whose
    /// envelope sender is) are signed with this key. Required.
    pub domain: String,
    /// The selector (`s=`): the key is published at `SELECTOR._domainkey.DOMAIN`. Required.
    pub selector: String,
    /// PEM private key, RSA (2048 bits or more; PKCS#8 or PKCS#1) or Ed25519 (PKCS#8), as
    /// written by `sealpost dkim keygen`; relative to this file. Required.
    pub key_file: std::path::PathBuf,
    /// Header fields to sign. Default: From, Reply-To, Subject, Date, To, Cc, Message-ID,
    /// In-Reply-To, References, MIME-Version, Content-Type, Content-Transfer-Encoding,
    /// List-Unsubscribe, List-Unsubscribe-Post, List-Id.
    #[serde(default)]
    pub headers: Vec<String>,
}

/// `[metrics]`: the Prometheus endpoint.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsSection {
    /// Address to serve `GET /metrics` on, e.g. `"127.0.0.1:9465"`. No authentication:
    /// keep it on loopback or a management network. Default: none (no endpoint).
    pub address: Option<SocketAddr>,
}

/// `[suppression]`: addresses we stop sending to after hard bounces and complaints.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SuppressionSection {
    /// Add an address to the list (for the message's class) when a server refuses it
    /// permanently as unknown (a hard bounce), and refuse later sends to it at once.
    /// Default true.
    pub enabled: bool,
    /// Mail to these domains is feedback, not mail to relay: delivery status notifications
    /// and ARF spam complaints arriving here are read, their hard bounces and complaints
    /// suppress the addresses they name, and the message goes no further. Point the
    /// return-path (and the feedback loop address) of bulk mail at such a domain, e.g.
    /// `["bounces.example.net"]`; list it in `[relay] local_domains` too. Default: none.
    pub feedback_domains: Vec<String>,
}

impl Default for SuppressionSection {
    fn default() -> Self {
        Self {
            enabled: true,
            feedback_domains: Vec::new(),
        }
    }
}

/// `[audit]`: the hash-chained audit log of who did what (see `sealpost audit verify`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditSection {
    /// Keep the audit log. Compliance usually needs it; turning it off saves one `fsync`
    /// per batch of records. Default true.
    pub enabled: bool,
    /// The log file (JSON lines), relative to this file; its head file is the same name
    /// with `.head` added. The server and the CLI both append to it, so both must be able
    /// to write there. Default: `audit.jsonl` in `[server] spool_dir`.
    pub file: Option<std::path::PathBuf>,
}

impl Default for AuditSection {
    fn default() -> Self {
        Self {
            enabled: true,
            file: None,
        }
    }
}
