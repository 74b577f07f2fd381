//! `policy explain`: the probes and the decision for one recipient, as stable text (golden
//! tested) and as JSON.

use std::fmt::Write as _;

use serde::Serialize;

use super::decide::Probes;
use super::mta_sts::{StsMode, StsProbe};
use super::rules::{Rule, method_name, requirement_name};
use super::types::{
    Decision, Method, MethodName, OnUnavailable, Requirement, TlsSource, TransportRequirement,
};

/// The rule fields `explain` shows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RuleSummary {
    /// The rule's name.
    pub name: String,
    /// Its line in the policy file.
    pub line: usize,
    /// What it requires.
    pub require: Requirement,
    /// Its methods in preference order.
    pub methods: Vec<MethodName>,
    /// What happens when no method is possible.
    pub on_unavailable: OnUnavailable,
}

/// Everything `policy explain --json` prints for one recipient.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Explanation {
    /// The recipient address.
    pub recipient: String,
    /// The matching rule; `None` means the default (require none).
    pub rule: Option<RuleSummary>,
    /// What the probes found.
    pub probes: Probes,
    /// What `decide` chose, with its reasons.
    pub decision: Decision,
}

/// The explanation as a serialisable value.
pub fn explanation(
    recipient: &str,
    rule: Option<&Rule>,
    probes: &Probes,
    decision: &Decision,
) -> Explanation {
    Explanation {
        recipient: recipient.to_string(),
        rule: rule.map(|r| RuleSummary {
            name: r.name.clone(),
            line: r.line,
            require: r.require,
            methods: r.methods.clone(),
            on_unavailable: r.on_unavailable,
        }),
        probes: probes.clone(),
        decision: decision.clone(),
    }
}

/// The explanation as pretty JSON (stable key order: struct field order).
pub fn explain_json(
    recipient: &str,
    rule: Option<&Rule>,
    probes: &Probes,
    decision: &Decision,
) -> String {
    // Plain data with string keys always serialises.
    serde_json::to_string_pretty(&explanation(recipient, rule, probes, decision))
        .unwrap_or_else(|e| format!("{{\"error\": {:?}}}", e.to_string()))
}

/// The explanation as text: the recipient, the rule, each probe, the decision and its reasons,
/// one fact per line, ending in a newline.
pub fn explain_text(
    recipient: &str,
    rule: Option<&Rule>,
    probes: &Probes,
    decision: &Decision,
) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "recipient: {recipient}");
    match rule {
        Some(r) => {
            let _ = writeln!(out, "rule: {} (line {})", r.name, r.line);
            let _ = writeln!(out, "  require: {}", requirement_name(r.require));
            let _ = writeln!(out, "  methods: {}", methods(&r.methods));
            let _ = writeln!(out, "  on_unavailable: {}", action(r.on_unavailable));
        }
        None => {
            let _ = writeln!(out, "rule: none matched (default: require none)");
        }
    }
    out.push_str("probes:\n");
    let _ = writeln!(out, "  mx: {}", or_none(&probes.mx_hosts.join(", ")));
    let _ = writeln!(
        out,
        "  openpgp key: {}",
        probes.has_pgp_key.as_deref().unwrap_or("none")
    );
    let _ = writeln!(
        out,
        "  s/mime certificate: {}",
        probes.has_smime_cert.as_deref().unwrap_or("none")
    );
    out.push_str("  dane: not probed\n");
    let _ = writeln!(out, "  mta-sts: {}", sts_line(&probes.sts));
    let _ = writeln!(
        out,
        "  tls history: {}",
        probes.history_level.map(|l| l.as_str()).unwrap_or("none")
    );
    match decision {
        Decision::Deliver {
            method,
            transport,
            reasons,
            ..
        } => {
            out.push_str("decision: deliver\n");
            let _ = writeln!(out, "  method: {}", method_line(method));
            let _ = writeln!(out, "  transport: {}", transport_line(transport));
            out.push_str("reasons:\n");
            for r in reasons {
                let _ = writeln!(out, "  - {r}");
            }
        }
        Decision::Refuse {
            action: a, reason, ..
        } => {
            let _ = writeln!(out, "decision: refuse ({})", action(*a));
            let _ = writeln!(out, "  reason: {reason}");
        }
    }
    out
}

fn methods(m: &[MethodName]) -> String {
    let names: Vec<&str> = m.iter().map(|m| method_name(*m)).collect();
    or_none(&names.join(", "))
}

fn action(a: OnUnavailable) -> &'static str {
    match a {
        OnUnavailable::Bounce => "bounce",
        OnUnavailable::Defer => "defer",
    }
}

fn or_none(s: &str) -> String {
    if s.is_empty() {
        "none".into()
    } else {
        s.to_string()
    }
}

fn sts_line(sts: &StsProbe) -> String {
    match sts {
        StsProbe::None => "none".into(),
        StsProbe::Invalid { reason } => format!("invalid ({reason})"),
        StsProbe::LookupFailed { reason } => format!("lookup failed ({reason})"),
        StsProbe::Valid {
            policy,
            id,
            from_cache,
        } => {
            let mode = match policy.mode {
                StsMode::Enforce => "enforce",
                StsMode::Testing => "testing",
                StsMode::None => "none",
            };
            let origin = if *from_cache { "cached" } else { "fetched" };
            let mut line = format!(
                "{mode}, id {id}, {origin}, max_age {}, mx {}",
                policy.max_age,
                or_none(&policy.mx.join(", "))
            );
            if !policy.ignored_mx.is_empty() {
                let _ = write!(line, ", ignored mx {}", policy.ignored_mx.join(", "));
            }
            line
        }
    }
}

fn method_line(m: &Method) -> String {
    match m {
        Method::OpenPgp { fingerprint } => format!("pgp (key {fingerprint})"),
        Method::Smime { fingerprint } => format!("smime (certificate {fingerprint})"),
        Method::RequiredTls => "tls".into(),
        Method::OpportunisticTls => "opportunistic tls".into(),
        Method::VerifiedTls { source } => match source {
            TlsSource::Dane => "verified-tls (source: dane)".into(),
            TlsSource::MtaSts { policy_id, .. } => {
                format!("verified-tls (source: mta-sts, id {policy_id})")
            }
            TlsSource::Policy { rule } => format!("verified-tls (source: rule {rule})"),
            TlsSource::History => "verified-tls (source: tls history)".into(),
        },
    }
}

fn transport_line(t: &TransportRequirement) -> String {
    let mut line = match (t.require_tls, t.verify_certificate) {
        (_, true) => "starttls required, certificate verified".to_string(),
        (true, false) => "starttls required, certificate not checked".to_string(),
        (false, false) => "starttls if offered, plaintext otherwise".to_string(),
    };
    if let Some(p) = &t.mx_patterns {
        let _ = write!(line, ", mx must match {}", p.join(", "));
    }
    line
}
