//! `decide`: the pure function from (matching rule, probes, recipient) to the method and
//! transport for that recipient, with the reasons `policy explain` shows.
//!
//! Precedence (DESIGN.md): DANE > MTA-STS enforce > local policy > TLS history >
//! opportunistic. DANE is not probed yet. The outside sources (MTA-STS, history) only ever
//! raise the transport floor; the rule chooses the method, and the transport of every method
//! (end-to-end ones included) is at least what the outside sources demand.

use serde::{Deserialize, Serialize};

use super::history::TlsLevel;
use super::mta_sts::{StsMode, StsProbe, mx_matches};
use super::rules::{Rule, method_name, requirement_name};
use super::types::{Decision, Method, MethodName, Requirement, TlsSource, TransportRequirement};

/// What the probes found for one recipient.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Probes {
    /// Fingerprint of the recipient's OpenPGP certificate, when the keystore (or WKD) has one.
    pub has_pgp_key: Option<String>,
    /// SHA-256 fingerprint of the recipient's S/MIME certificate, when the store has one.
    pub has_smime_cert: Option<String>,
    /// The MTA-STS probe of the recipient's domain.
    pub sts: StsProbe,
    /// The best TLS level the domain has shown before (the ratchet).
    pub history_level: Option<TlsLevel>,
    /// The domain's MX hosts, best first (for `explain` and the MTA-STS match check).
    pub mx_hosts: Vec<String>,
}

impl Default for Probes {
    fn default() -> Self {
        Self {
            has_pgp_key: None,
            has_smime_cert: None,
            sts: StsProbe::None,
            history_level: None,
            mx_hosts: Vec::new(),
        }
    }
}

/// Decides how to deliver to `recipient`. `rule` is the first matching rule, `None` for the
/// default (require none). Never fails: an impossible requirement is a [`Decision::Refuse`].
pub fn decide(rule: Option<&Rule>, probes: &Probes, recipient: &str) -> Decision {
    let mut reasons = Vec::new();
    let outside = outside_floor(probes, &mut reasons);
    let rule_name = rule.map(|r| r.name.clone());
    let (require, methods) = match rule {
        Some(r) => {
            reasons.push(format!(
                "rule {:?} (line {}) matched: require {}{}",
                r.name,
                r.line,
                requirement_name(r.require),
                list_methods(&r.methods)
            ));
            (r.require, r.methods.as_slice())
        }
        None => {
            reasons.push("no rule matched: default, require none".into());
            (Requirement::None, &[][..])
        }
    };

    let mut tried = Vec::new();
    let mut chosen: Option<(Option<Method>, TlsLevel)> = None;
    for m in methods {
        match m {
            MethodName::Pgp => match &probes.has_pgp_key {
                Some(fp) => {
                    reasons.push(format!("pgp: OpenPGP key {fp} for {recipient}"));
                    let method = Method::OpenPgp {
                        fingerprint: fp.clone(),
                    };
                    chosen = Some((Some(method), rule_floor(require)));
                }
                None => passed(
                    &mut tried,
                    &mut reasons,
                    format!("pgp: no OpenPGP key for {recipient}"),
                ),
            },
            MethodName::Smime => match &probes.has_smime_cert {
                Some(fp) => {
                    reasons.push(format!("smime: S/MIME certificate {fp} for {recipient}"));
                    let method = Method::Smime {
                        fingerprint: fp.clone(),
                    };
                    chosen = Some((Some(method), rule_floor(require)));
                }
                None => passed(
                    &mut tried,
                    &mut reasons,
                    format!("smime: no S/MIME certificate for {recipient}"),
                ),
            },
            MethodName::VerifiedTls => {
                reasons.push("verified-tls: listed, enforced at delivery".into());
                chosen = Some((None, TlsLevel::VerifiedTls));
            }
            MethodName::Tls => {
                reasons.push("tls: listed, enforced at delivery".into());
                chosen = Some((None, TlsLevel::Tls));
            }
        }
        if chosen.is_some() {
            break;
        }
    }
    let (method, rule_level) = match chosen {
        Some(c) => c,
        None if require == Requirement::Encrypted => {
            let action = rule.map(|r| r.on_unavailable);
            let action = action.unwrap_or(super::types::OnUnavailable::Defer);
            let reason = format!(
                "require encrypted and no listed method is possible ({})",
                tried.join("; ")
            );
            return Decision::Refuse {
                action,
                rule: rule_name,
                reason,
            };
        }
        None => (None, rule_floor(require)),
    };

    let level = rule_level.max(outside.level);
    let source = if level < TlsLevel::VerifiedTls {
        None
    } else if let Some(sts @ TlsSource::MtaSts { .. }) = &outside.source {
        Some(sts.clone())
    } else if rule_level == TlsLevel::VerifiedTls {
        Some(TlsSource::Policy {
            rule: rule_name.clone().unwrap_or_default(),
        })
    } else {
        outside.source.clone()
    };
    let transport = TransportRequirement {
        require_tls: level >= TlsLevel::Tls,
        verify_certificate: level == TlsLevel::VerifiedTls,
        mx_patterns: outside.mx_patterns.clone(),
    };
    let method = match (method, level, source) {
        (Some(e2e), _, _) => e2e,
        (None, TlsLevel::VerifiedTls, Some(source)) => Method::VerifiedTls { source },
        (None, TlsLevel::Plain, _) => Method::OpportunisticTls,
        (None, _, _) => Method::RequiredTls,
    };
    reasons.push(conclusion(&method, &transport, rule_level, &outside));
    Decision::Deliver {
        method,
        transport,
        rule: rule_name,
        reasons,
    }
}

/// Notes a method that was not possible, both for the refusal text and the reasons.
fn passed(tried: &mut Vec<String>, reasons: &mut Vec<String>, why: String) {
    reasons.push(why.clone());
    tried.push(why);
}

/// The transport floor set by sources outside the policy file, with its source.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Floor {
    level: TlsLevel,
    source: Option<TlsSource>,
    mx_patterns: Option<Vec<String>>,
}

/// MTA-STS, then history: each adds a reason; the stronger source is kept.
fn outside_floor(probes: &Probes, reasons: &mut Vec<String>) -> Floor {
    reasons.push("dane: not probed".into());
    let mut floor = Floor {
        level: TlsLevel::Plain,
        source: None,
        mx_patterns: None,
    };
    match &probes.sts {
        StsProbe::None => reasons.push("mta-sts: no policy published".into()),
        StsProbe::Invalid { reason } => {
            reasons.push(format!("mta-sts: {reason}; treated as no policy"))
        }
        StsProbe::LookupFailed { reason } => reasons.push(format!(
            "mta-sts: lookup failed and nothing cached ({reason}); treated as no policy"
        )),
        StsProbe::Valid {
            policy,
            id,
            from_cache,
        } => {
            let origin = if *from_cache { "cached" } else { "fetched" };
            let patterns = policy.mx.join(", ");
            let mismatched: Vec<&str> = probes
                .mx_hosts
                .iter()
                .map(String::as_str)
                .filter(|h| !policy.mx.iter().any(|p| mx_matches(p, h)))
                .collect();
            match policy.mode {
                StsMode::Enforce => {
                    reasons.push(format!(
                        "mta-sts: enforce (id {id}, {origin}): verified TLS to MX hosts matching {patterns}"
                    ));
                    if !probes.mx_hosts.is_empty() && mismatched.len() == probes.mx_hosts.len() {
                        reasons.push("mta-sts: no MX host matches the policy; delivery defers until one does".into());
                    } else if !mismatched.is_empty() {
                        reasons.push(format!(
                            "mta-sts: MX hosts not matching the policy are skipped: {}",
                            mismatched.join(", ")
                        ));
                    }
                    floor = Floor {
                        level: TlsLevel::VerifiedTls,
                        source: Some(TlsSource::MtaSts {
                            mx_patterns: policy.mx.clone(),
                            policy_id: id.clone(),
                        }),
                        mx_patterns: Some(policy.mx.clone()),
                    };
                }
                StsMode::Testing => {
                    reasons.push(format!(
                        "mta-sts: testing (id {id}, {origin}): report only, no requirement"
                    ));
                    if !mismatched.is_empty() {
                        reasons.push(format!(
                            "mta-sts: would report MX hosts not matching {patterns}: {}",
                            mismatched.join(", ")
                        ));
                    }
                }
                StsMode::None => reasons.push(format!(
                    "mta-sts: mode none (id {id}, {origin}): policy withdrawn, no requirement"
                )),
            }
        }
    }
    match probes.history_level {
        Some(level @ (TlsLevel::Tls | TlsLevel::VerifiedTls)) => {
            reasons.push(format!(
                "history: domain has shown {}; not accepting less",
                level.as_str()
            ));
            if level > floor.level {
                floor.level = level;
                if level == TlsLevel::VerifiedTls {
                    floor.source = Some(TlsSource::History);
                }
            }
        }
        Some(TlsLevel::Plain) | None => reasons.push("history: no TLS seen before".into()),
    }
    floor
}

/// The transport a rule's requirement asks for by itself (encryption does not need TLS).
fn rule_floor(require: Requirement) -> TlsLevel {
    match require {
        Requirement::Tls => TlsLevel::Tls,
        Requirement::VerifiedTls => TlsLevel::VerifiedTls,
        Requirement::None | Requirement::Encrypted => TlsLevel::Plain,
    }
}

fn list_methods(methods: &[MethodName]) -> String {
    if methods.is_empty() {
        return String::new();
    }
    let names: Vec<&str> = methods.iter().map(|m| method_name(*m)).collect();
    format!(", methods {}", names.join(", "))
}

/// The last reason: what was chosen and which source set the transport.
fn conclusion(
    method: &Method,
    transport: &TransportRequirement,
    rule_level: TlsLevel,
    outside: &Floor,
) -> String {
    let what = match method {
        Method::OpenPgp { .. } => "PGP/MIME",
        Method::Smime { .. } => "S/MIME",
        Method::VerifiedTls { .. } => "verified TLS",
        Method::RequiredTls => "required TLS (certificate not checked)",
        Method::OpportunisticTls => "opportunistic TLS (plaintext if STARTTLS is not offered)",
    };
    let raised_by = match (outside.level > rule_level, &outside.mx_patterns) {
        (false, _) => None,
        (true, Some(_)) => Some("mta-sts"),
        (true, None) => Some("history"),
    };
    let transport = match (transport.verify_certificate, transport.require_tls) {
        (true, _) => "verified TLS",
        (false, true) => "TLS required",
        _ => "opportunistic TLS",
    };
    match (method, raised_by) {
        (Method::OpenPgp { .. } | Method::Smime { .. }, _) => {
            format!("decision: {what} over {transport}")
        }
        (_, Some(by)) => format!("decision: {what} (raised above the rule by {by})"),
        (_, None) => format!("decision: {what}"),
    }
}

#[cfg(test)]
#[path = "decide_tests.rs"]
mod tests;
