//! Planning one attempt: ask the policy engine about every unfinished recipient, turn
//! refusals into statuses, and group the rest by (domain, method, transport, rule) so each
//! group gets one copy of the message over one connection.

use super::transform::Protection;
use crate::policy::engine::{PolicyEngine, message_context};
use crate::policy::{Decision, Method, OnUnavailable, Rule, TlsSource, TransportRequirement};
use crate::spool::Envelope;

/// Recipients that travel together.
pub struct Group {
    /// Destination domain.
    pub domain: String,
    /// The method as recorded per recipient (`openpgp`, `verified-tls (mta-sts)`, ...).
    pub label: String,
    /// What the SMTP client must enforce.
    pub transport: TransportRequirement,
    /// The rule that chose it (subject tag and masking options).
    pub rule: Option<Rule>,
    /// The content transform.
    pub protection: Protection,
    /// Indexes into the envelope's recipients.
    pub idxs: Vec<usize>,
}

/// A recipient the policy cannot serve now.
pub struct Refusal {
    /// Index into the envelope's recipients.
    pub idx: usize,
    /// Bounce now (true) or keep retrying.
    pub bounce: bool,
    /// The reply stored and reported, e.g. `550 5.7.1 policy ...`.
    pub reply: String,
}

/// Plans every unfinished recipient of `env`.
pub async fn plan(
    engine: &PolicyEngine,
    env: &Envelope,
    body: &[u8],
    now: u64,
) -> (Vec<Group>, Vec<Refusal>) {
    let ctx = message_context(env, body);
    let mut groups: Vec<Group> = Vec::new();
    let mut refusals = Vec::new();
    for (idx, r) in env.recipients.iter().enumerate() {
        if r.status.is_final() {
            continue;
        }
        let p = engine.plan(&ctx, &r.address, now).await;
        let rule_name = p.rule.as_ref().map(|r| r.name.clone());
        match p.decision {
            Decision::Refuse { action, reason, .. } => {
                let bounce = action == OnUnavailable::Bounce;
                let reply = if bounce {
                    format!(
                        "550 5.7.1 policy {}: {reason}",
                        rule_name.as_deref().unwrap_or("-")
                    )
                } else {
                    format!(
                        "451 4.7.1 policy {}: {reason}",
                        rule_name.as_deref().unwrap_or("-")
                    )
                };
                refusals.push(Refusal { idx, bounce, reply });
            }
            Decision::Deliver {
                method, transport, ..
            } => {
                let (label, protection) = match &method {
                    Method::OpenPgp { .. } => (
                        "openpgp".to_string(),
                        Protection::Pgp(p.pgp_cert.into_iter().collect()),
                    ),
                    Method::Smime { .. } => (
                        "smime".to_string(),
                        Protection::Smime(p.smime_cert.into_iter().collect()),
                    ),
                    Method::VerifiedTls { source } => (
                        format!("verified-tls ({})", source_name(source)),
                        Protection::None,
                    ),
                    Method::RequiredTls => ("required-tls".to_string(), Protection::None),
                    Method::OpportunisticTls => ("opportunistic-tls".to_string(), Protection::None),
                };
                let domain = r.domain();
                let same = groups.iter_mut().find(|g| {
                    g.domain == domain
                        && g.label == label
                        && g.transport == transport
                        && g.rule.as_ref().map(|r| &r.name) == rule_name.as_ref()
                });
                match same {
                    Some(g) => {
                        g.idxs.push(idx);
                        match (&mut g.protection, protection) {
                            (Protection::Pgp(all), Protection::Pgp(more)) => all.extend(more),
                            (Protection::Smime(all), Protection::Smime(more)) => all.extend(more),
                            _ => {}
                        }
                    }
                    None => groups.push(Group {
                        domain,
                        label,
                        transport,
                        rule: p.rule,
                        protection,
                        idxs: vec![idx],
                    }),
                }
            }
        }
    }
    (groups, refusals)
}

fn source_name(s: &TlsSource) -> &'static str {
    match s {
        TlsSource::Dane => "dane",
        TlsSource::MtaSts { .. } => "mta-sts",
        TlsSource::Policy { .. } => "policy",
        TlsSource::History => "history",
    }
}
