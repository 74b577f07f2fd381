//! Outbound delivery: from a queued message and its recipients at one domain to
//! per-recipient outcomes.
//!
//! [`deliver`] resolves the domain (static [`Route`] first, then MX), tries the hosts in
//! order over one connection each, and returns a [`DeliveryReport`] with one
//! [`RcptOutcome`] per recipient. It never returns an error: every failure, DNS, network or
//! SMTP, becomes a reply stored with the recipient, so the queue can retry or bounce with a
//! readable reason. Retry timing and DSN generation are the caller's policy.

pub mod conn;
pub mod dotstuff;
pub mod egress;
pub mod ehlo;
pub mod mx;
pub mod session;
pub mod shaping;
pub mod tls;
mod transaction;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::dns::Resolver;
use crate::policy::TransportRequirement;
use crate::smtp::reply::{EnhancedStatus, Reply};

pub use dotstuff::DotStuffer;
pub use mx::{ResolveError, Target, resolve_targets};
pub use tls::TlsSummary;
pub use transaction::Sent;

/// A static next hop for one domain, bypassing MX lookup (smarthosts, internal relays, tests).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// The recipient domain this route applies to, compared case-insensitively.
    pub domain: String,
    /// The next hop: an IP address, or a name resolved via A/AAAA (never MX).
    pub host: String,
    /// The TCP port of the next hop.
    pub port: u16,
}

/// Settings for the SMTP client; one value is shared by all deliveries.
#[derive(Debug, Clone)]
pub struct OutboundConfig {
    /// The name sent in EHLO/HELO; should resolve back to the sending IP.
    pub helo_name: String,
    /// The port used for MX targets (25 in production; tests use a loopback port).
    pub smtp_port: u16,
    /// Static routes checked before MX lookup.
    pub routes: Vec<Route>,
    /// How long a TCP connect may take before the next address is tried.
    pub connect_timeout: Duration,
    /// How long to wait for each reply outside DATA (greeting, EHLO, MAIL, RCPT, ...).
    pub command_timeout: Duration,
    /// How long to wait while sending the body and for the reply to the final dot.
    pub data_timeout: Duration,
    /// Bind to this address before connecting, so later per-IP pools control the source IP.
    pub source_address: Option<IpAddr>,
    /// The client configuration for verified TLS (webpki roots, extra CAs, pins); `None`
    /// means verified-TLS deliveries are deferred until it is configured.
    pub verified_tls: Option<Arc<rustls::ClientConfig>>,
    /// The client configuration for opportunistic STARTTLS, built once (it is the same for
    /// every connection); `None` means plaintext only.
    pub opportunistic_tls: Option<Arc<rustls::ClientConfig>>,
}

impl OutboundConfig {
    /// A config with RFC 5321 §4.5.3.2-inspired timeouts (shortened connect and command
    /// waits so a dead MX does not hold a worker for minutes), port 25 and no routes.
    pub fn new(helo_name: impl Into<String>) -> Self {
        Self {
            helo_name: helo_name.into(),
            smtp_port: 25,
            routes: Vec::new(),
            connect_timeout: Duration::from_secs(30),
            command_timeout: Duration::from_secs(300),
            data_timeout: Duration::from_secs(600),
            source_address: None,
            verified_tls: tls::verifying_client_config(&[], Vec::new()).ok(),
            opportunistic_tls: tls::opportunistic_client_config().ok(),
        }
    }
}

/// One recipient to deliver to, with its DSN parameters (RFC 3461) as received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutRecipient {
    /// The recipient address without angle brackets.
    pub address: String,
    /// The NOTIFY value, e.g. `SUCCESS,FAILURE` or `NEVER`; relayed when the remote has DSN.
    pub notify: Option<String>,
    /// The ORCPT value, already `rfc822;xtext-encoded`; relayed when the remote has DSN.
    pub orcpt: Option<String>,
}

impl OutRecipient {
    /// A recipient without DSN parameters.
    pub fn new(address: impl Into<String>) -> Self {
        Self {
            address: address.into(),
            notify: None,
            orcpt: None,
        }
    }
}

/// One message to the recipients at one domain.
#[derive(Debug, Clone)]
pub struct Delivery<'a> {
    /// The recipients' domain; an address literal like `[192.0.2.1]` is used directly.
    pub domain: &'a str,
    /// The reverse path without angle brackets; `""` for the null reverse path (bounces).
    pub mail_from: &'a str,
    /// The recipients, all at `domain`; outcomes come back in this order.
    pub recipients: Vec<OutRecipient>,
    /// The DSN ENVID; sent only when the remote advertises DSN.
    pub envid: Option<String>,
    /// The DSN RET (`FULL`/`HDRS`); sent only when the remote advertises DSN.
    pub ret: Option<String>,
    /// The message with CRLF line ends; a missing final CRLF is added on the wire.
    pub body: &'a [u8],
    /// The message needs SMTPUTF8; a remote without it fails the recipients with 5.6.7.
    pub smtputf8: bool,
    /// The body is 8-bit MIME; `BODY=8BITMIME` is sent when the remote advertises it.
    pub eight_bit: bool,
    /// What the policy demands of the transport: required TLS, verified certificates, MX
    /// hosts allowed by MTA-STS. The default is opportunistic TLS.
    pub transport: TransportRequirement,
}

/// What happened to one recipient. Every variant carries the reply that decided it, real or
/// synthetic, so logs and DSNs quote it unchanged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RcptOutcome {
    /// The remote accepted responsibility for the message.
    Delivered {
        /// The reply to the final dot.
        reply: Reply,
        /// `host[ip]` of the server that accepted it.
        remote: String,
    },
    /// Try again later.
    Deferred {
        /// The transient reply, or a synthetic 4xx for network and DNS trouble.
        reply: Reply,
        /// `host[ip]` when a server was involved.
        remote: Option<String>,
    },
    /// Will not succeed: bounce (unless the sender is null or NOTIFY says otherwise).
    Failed {
        /// The permanent reply, or a synthetic 5xx (null MX, no domain, too big).
        reply: Reply,
        /// `host[ip]` when a server was involved.
        remote: Option<String>,
    },
}

impl RcptOutcome {
    /// The reply that decided this outcome.
    pub fn reply(&self) -> &Reply {
        match self {
            Self::Delivered { reply, .. }
            | Self::Deferred { reply, .. }
            | Self::Failed { reply, .. } => reply,
        }
    }

    /// True for [`RcptOutcome::Delivered`].
    pub fn is_delivered(&self) -> bool {
        matches!(self, Self::Delivered { .. })
    }

    /// True for [`RcptOutcome::Deferred`].
    pub fn is_deferred(&self) -> bool {
        matches!(self, Self::Deferred { .. })
    }

    /// True for [`RcptOutcome::Failed`].
    pub fn is_failed(&self) -> bool {
        matches!(self, Self::Failed { .. })
    }
}

/// The result of one delivery attempt for a domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryReport {
    /// One outcome per recipient, in the order of [`Delivery::recipients`].
    pub outcomes: Vec<RcptOutcome>,
    /// The TLS parameters of the last session that settled any recipient, if it used TLS.
    pub tls: Option<TlsSummary>,
    /// Whether that session's server advertised DSN: if not, a `NOTIFY=SUCCESS` recipient
    /// gets a "relayed" DSN from us (RFC 3461 §4.1).
    pub remote_supports_dsn: bool,
}

/// Delivers one message to its recipients at `d.domain`; see the module docs.
pub async fn deliver(
    cfg: &OutboundConfig,
    resolver: &Resolver,
    d: &Delivery<'_>,
) -> DeliveryReport {
    let (targets, port) = match plan_targets(cfg, resolver, d.domain).await {
        Ok(t) => t,
        Err(e) => {
            tracing::info!(domain = d.domain, error = %e, "cannot resolve destination");
            return DeliveryReport::all(d.recipients.len(), settle_leftover(e.to_reply(), None));
        }
    };
    let hop = Hop {
        helo_name: &cfg.helo_name,
        source: cfg.source_address,
    };
    deliver_to(cfg, &hop, &targets, port, d).await
}

/// Who we are on the wire: the EHLO name and the local address to bind (an egress source).
#[derive(Debug, Clone, Copy)]
pub struct Hop<'a> {
    /// The name sent in EHLO/HELO.
    pub helo_name: &'a str,
    /// The local address to bind, if any.
    pub source: Option<IpAddr>,
}

/// Delivers one message over fresh connections to `targets` in order (next host on connect
/// failure, 4xx greeting or a temporary refusal of the whole transaction), enforcing
/// `d.transport`.
pub async fn deliver_to(
    cfg: &OutboundConfig,
    hop: &Hop<'_>,
    targets: &[Target],
    port: u16,
    d: &Delivery<'_>,
) -> DeliveryReport {
    let n = d.recipients.len();
    let require = &d.transport;
    let targets = match allowed_targets(targets, d.domain, require) {
        Ok(t) => t,
        Err(reply) => {
            return DeliveryReport::all(
                n,
                RcptOutcome::Deferred {
                    reply,
                    remote: None,
                },
            );
        }
    };
    let tls_config = match tls_for(cfg, require) {
        Ok(c) => c,
        Err(reply) => {
            return DeliveryReport::all(
                n,
                RcptOutcome::Deferred {
                    reply,
                    remote: None,
                },
            );
        }
    };
    let mut report = DeliveryReport {
        outcomes: Vec::with_capacity(n),
        tls: None,
        remote_supports_dsn: false,
    };
    let mut outcomes: Vec<Option<RcptOutcome>> = vec![None; n];
    let mut last: Option<(Reply, Option<String>)> = None;
    'targets: for target in &targets {
        if target.addrs.is_empty() {
            last = Some((
                Reply::new(
                    451,
                    EnhancedStatus::new(4, 4, 3),
                    format!("no address for {}", target.host),
                ),
                None,
            ));
            continue;
        }
        for &ip in &target.addrs {
            let pending: Vec<usize> = (0..n).filter(|&i| outcomes[i].is_none()).collect();
            if pending.is_empty() {
                break 'targets;
            }
            let params = session::OpenParams {
                cfg,
                helo_name: hop.helo_name,
                source: hop.source,
                host: &target.host,
                ip,
                port,
                require_tls: require.require_tls || require.verify_certificate,
                verified: require.verify_certificate,
            };
            let mut attempt = session::attempt(&params, d, &pending, tls_config.clone()).await;
            if let Some(reason) = attempt.tls_failed.take() {
                tracing::warn!(
                    remote = %format!("{}[{ip}]", target.host),
                    reason = %reason,
                    "STARTTLS failed; retrying once in plaintext (opportunistic TLS)"
                );
                attempt = session::attempt(&params, d, &pending, None).await;
            }
            if !attempt.settled.is_empty() {
                report.tls = attempt.tls.clone();
                report.remote_supports_dsn = attempt.dsn;
            }
            for (i, outcome) in attempt.settled {
                if let Some(slot) = outcomes.get_mut(i) {
                    *slot = Some(outcome);
                }
            }
            if let Some(next) = attempt.try_next {
                last = Some(next);
            }
        }
    }
    let (reply, remote) = last.unwrap_or_else(|| {
        (
            Reply::new(
                451,
                EnhancedStatus::new(4, 4, 0),
                "no delivery attempt was possible",
            ),
            None,
        )
    });
    report.outcomes = outcomes
        .into_iter()
        .map(|o| o.unwrap_or_else(|| settle_leftover(reply.clone(), remote.clone())))
        .collect();
    report
}

impl DeliveryReport {
    /// A report giving every one of `n` recipients the same outcome.
    pub fn all(n: usize, outcome: RcptOutcome) -> Self {
        Self {
            outcomes: vec![outcome; n],
            tls: None,
            remote_supports_dsn: false,
        }
    }
}

/// The targets MTA-STS allows (all of them without a pattern list). None allowed is a
/// deferral: RFC 8461 §5 says no delivery, and the policy or MX set may change.
pub fn allowed_targets(
    targets: &[Target],
    domain: &str,
    require: &TransportRequirement,
) -> Result<Vec<Target>, Reply> {
    let Some(patterns) = &require.mx_patterns else {
        return Ok(targets.to_vec());
    };
    let allowed: Vec<Target> = targets
        .iter()
        .filter(|t| patterns.iter().any(|p| mx_matches(p, &t.host)))
        .cloned()
        .collect();
    if allowed.is_empty() {
        return Err(Reply::new(
            451,
            EnhancedStatus::new(4, 7, 5),
            format!("no MX host of {domain} matches its MTA-STS policy"),
        ));
    }
    Ok(allowed)
}

/// The TLS client config a transport requirement calls for: the verifying one, or the
/// opportunistic one (`None` when even that cannot be built: plaintext, logged).
pub fn tls_for(
    cfg: &OutboundConfig,
    require: &TransportRequirement,
) -> Result<Option<Arc<rustls::ClientConfig>>, Reply> {
    if require.verify_certificate {
        return match &cfg.verified_tls {
            Some(c) => Ok(Some(c.clone())),
            None => Err(Reply::new(
                451,
                EnhancedStatus::new(4, 7, 5),
                "verified TLS required but no verifying TLS configuration",
            )),
        };
    }
    if cfg.opportunistic_tls.is_none() {
        tracing::warn!("no TLS client config; delivering in plaintext");
    }
    Ok(cfg.opportunistic_tls.clone())
}

/// RFC 8461 §4.1 MX pattern matching: case-insensitive, a trailing dot ignored, and `*.`
/// standing for exactly one leftmost label.
pub fn mx_matches(pattern: &str, host: &str) -> bool {
    let pattern = pattern.trim_end_matches('.').to_ascii_lowercase();
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    match pattern.strip_prefix("*.") {
        Some(suffix) => host
            .split_once('.')
            .is_some_and(|(label, rest)| !label.is_empty() && rest == suffix),
        None => pattern == host,
    }
}

/// A recipient no host settled: permanent only when the last reason was permanent.
fn settle_leftover(reply: Reply, remote: Option<String>) -> RcptOutcome {
    if reply.is_permanent() {
        RcptOutcome::Failed { reply, remote }
    } else {
        RcptOutcome::Deferred { reply, remote }
    }
}

/// The hosts to try and the port to use: a static route when one matches, else MX.
pub async fn plan_targets(
    cfg: &OutboundConfig,
    resolver: &Resolver,
    domain: &str,
) -> Result<(Vec<Target>, u16), ResolveError> {
    if let Some(route) = cfg
        .routes
        .iter()
        .find(|r| r.domain.eq_ignore_ascii_case(domain))
    {
        let addrs = mx::lookup_addrs(resolver, &route.host).await?;
        if addrs.is_empty() {
            // A route is our own configuration: a missing address is ours to fix, not a
            // reason to bounce.
            return Err(ResolveError::Temporary {
                domain: route.host.clone(),
                reason: "route host has no address".into(),
            });
        }
        let target = Target {
            host: route.host.clone(),
            addrs,
        };
        return Ok((vec![target], route.port));
    }
    Ok((resolve_targets(resolver, domain).await?, cfg.smtp_port))
}
