use std::path::Path;

use super::*;
use crate::policy::mta_sts::{StsPolicy, parse_policy};
use crate::policy::rules::Policy;
use crate::policy::types::OnUnavailable;

const RCPT: &str = "bob@partner.example";

fn rule(keys: &str) -> Rule {
    let text = format!("[[rule]]\nname = \"r\"\n{keys}\n");
    Policy::parse(&text, Path::new("t"))
        .unwrap()
        .rules
        .remove(0)
}

fn sts(mode: &str) -> StsProbe {
    let policy: StsPolicy = parse_policy(&format!(
        "version: STSv1\nmode: {mode}\nmx: *.partner.example\nmax_age: 86400\n"
    ))
    .unwrap();
    StsProbe::Valid {
        policy,
        id: "e1".into(),
        from_cache: false,
    }
}

/// Probes from a compact spec: `k` pgp key, `s` smime cert, `E`/`T`/`N` STS
/// enforce/testing/none, `I` invalid STS, `F` lookup failed, `h` history tls, `H` verified.
fn probes(spec: &str) -> Probes {
    let mut p = Probes {
        mx_hosts: vec!["mx1.partner.example".into()],
        ..Probes::default()
    };
    for c in spec.chars() {
        match c {
            'k' => p.has_pgp_key = Some("PGPFP".into()),
            's' => p.has_smime_cert = Some("SMIMEFP".into()),
            'E' => p.sts = sts("enforce"),
            'T' => p.sts = sts("testing"),
            'N' => p.sts = sts("none"),
            'I' => {
                p.sts = StsProbe::Invalid {
                    reason: "sts-policy-invalid: no valid mx pattern".into(),
                }
            }
            'F' => {
                p.sts = StsProbe::LookupFailed {
                    reason: "timed out".into(),
                }
            }
            'h' => p.history_level = Some(TlsLevel::Tls),
            'H' => p.history_level = Some(TlsLevel::VerifiedTls),
            _ => panic!("bad spec {c}"),
        }
    }
    p
}

/// Expected outcome: method tag, require_tls, verify, mx patterns present.
#[derive(Debug, PartialEq)]
enum Want {
    Deliver(&'static str, bool, bool, bool),
    Refuse(OnUnavailable),
}

fn summarise(d: &Decision) -> Want {
    match d {
        Decision::Deliver {
            method, transport, ..
        } => {
            let tag = match method {
                Method::VerifiedTls {
                    source: TlsSource::MtaSts { .. },
                } => "verified:sts",
                Method::VerifiedTls {
                    source: TlsSource::Policy { .. },
                } => "verified:policy",
                Method::VerifiedTls {
                    source: TlsSource::History,
                } => "verified:history",
                Method::VerifiedTls {
                    source: TlsSource::Dane,
                } => "verified:dane",
                Method::OpenPgp { .. } => "pgp",
                Method::Smime { .. } => "smime",
                Method::RequiredTls => "tls",
                Method::OpportunisticTls => "opportunistic",
            };
            Want::Deliver(
                tag,
                transport.require_tls,
                transport.verify_certificate,
                transport.mx_patterns.is_some(),
            )
        }
        Decision::Refuse { action, .. } => Want::Refuse(*action),
    }
}

#[test]
fn decision_table() {
    use Want::*;
    let none = None;
    let tls = Some("require = \"tls\"");
    let vtls = Some("require = \"verified-tls\"");
    let enc_all = Some(
        "require = \"encrypted\"\nmethods = [\"pgp\", \"smime\", \"verified-tls\"]\non_unavailable = \"bounce\"",
    );
    let enc_e2e = Some("require = \"encrypted\"\non_unavailable = \"bounce\"");
    let enc_defer = Some("require = \"encrypted\"\nmethods = [\"smime\", \"pgp\"]");
    let opp_pgp = Some("methods = [\"pgp\"]");
    let tls_pgp = Some("require = \"tls\"\nmethods = [\"pgp\", \"tls\"]");
    let vtls_pgp = Some("require = \"verified-tls\"\nmethods = [\"pgp\", \"verified-tls\"]");
    let cases: &[(Option<&str>, &str, Want)] = &[
        // The default rule: opportunistic unless an outside source raises it.
        (none, "", Deliver("opportunistic", false, false, false)),
        (none, "ks", Deliver("opportunistic", false, false, false)),
        (none, "E", Deliver("verified:sts", true, true, true)),
        (none, "T", Deliver("opportunistic", false, false, false)),
        (none, "N", Deliver("opportunistic", false, false, false)),
        (none, "I", Deliver("opportunistic", false, false, false)),
        (none, "F", Deliver("opportunistic", false, false, false)),
        (none, "h", Deliver("tls", true, false, false)),
        (none, "H", Deliver("verified:history", true, true, false)),
        (none, "EH", Deliver("verified:sts", true, true, true)),
        (none, "TH", Deliver("verified:history", true, true, false)),
        // require tls.
        (tls, "", Deliver("tls", true, false, false)),
        (tls, "E", Deliver("verified:sts", true, true, true)),
        (tls, "H", Deliver("verified:history", true, true, false)),
        (tls, "T", Deliver("tls", true, false, false)),
        // require verified-tls: the rule is the source unless MTA-STS enforce is.
        (vtls, "", Deliver("verified:policy", true, true, false)),
        (vtls, "H", Deliver("verified:policy", true, true, false)),
        (vtls, "E", Deliver("verified:sts", true, true, true)),
        (vtls, "T", Deliver("verified:policy", true, true, false)),
        (vtls, "k", Deliver("verified:policy", true, true, false)),
        // require encrypted: methods in order, transport at least the outside floor.
        (enc_all, "ks", Deliver("pgp", false, false, false)),
        (enc_all, "s", Deliver("smime", false, false, false)),
        (enc_all, "", Deliver("verified:policy", true, true, false)),
        (enc_all, "E", Deliver("verified:sts", true, true, true)),
        (enc_all, "kE", Deliver("pgp", true, true, true)),
        (enc_all, "kH", Deliver("pgp", true, true, false)),
        (enc_all, "kh", Deliver("pgp", true, false, false)),
        (enc_all, "kT", Deliver("pgp", false, false, false)),
        (enc_e2e, "k", Deliver("pgp", false, false, false)),
        (enc_e2e, "s", Deliver("smime", false, false, false)),
        (enc_e2e, "", Refuse(OnUnavailable::Bounce)),
        (enc_e2e, "EH", Refuse(OnUnavailable::Bounce)),
        (enc_defer, "ks", Deliver("smime", false, false, false)),
        (enc_defer, "k", Deliver("pgp", false, false, false)),
        (enc_defer, "", Refuse(OnUnavailable::Defer)),
        // Methods below "encrypted": preferences with the requirement as the fallback.
        (opp_pgp, "k", Deliver("pgp", false, false, false)),
        (opp_pgp, "", Deliver("opportunistic", false, false, false)),
        (opp_pgp, "E", Deliver("verified:sts", true, true, true)),
        (tls_pgp, "k", Deliver("pgp", true, false, false)),
        (tls_pgp, "", Deliver("tls", true, false, false)),
        (vtls_pgp, "k", Deliver("pgp", true, true, false)),
        (vtls_pgp, "kE", Deliver("pgp", true, true, true)),
        (vtls_pgp, "", Deliver("verified:policy", true, true, false)),
    ];
    for (keys, spec, want) in cases {
        let r = keys.map(rule);
        let d = decide(r.as_ref(), &probes(spec), RCPT);
        assert_eq!(
            summarise(&d),
            *want,
            "rule {keys:?}, probes {spec:?}: {d:#?}"
        );
    }
}

#[test]
fn sources_carry_details() {
    let d = decide(None, &probes("E"), RCPT);
    let Decision::Deliver {
        method, transport, ..
    } = d
    else {
        panic!("refused");
    };
    assert_eq!(
        method,
        Method::VerifiedTls {
            source: TlsSource::MtaSts {
                mx_patterns: vec!["*.partner.example".into()],
                policy_id: "e1".into()
            }
        }
    );
    assert_eq!(
        transport.mx_patterns,
        Some(vec!["*.partner.example".into()])
    );
    let r = rule("require = \"verified-tls\"");
    let Decision::Deliver { method, rule, .. } = decide(Some(&r), &probes(""), RCPT) else {
        panic!("refused");
    };
    assert_eq!(
        method,
        Method::VerifiedTls {
            source: TlsSource::Policy { rule: "r".into() }
        }
    );
    assert_eq!(rule.as_deref(), Some("r"));
}

#[test]
fn reasons_tell_the_story() {
    let r = rule("require = \"encrypted\"\nmethods = [\"pgp\", \"smime\", \"verified-tls\"]");
    let mut p = probes("sI");
    p.mx_hosts = vec!["mx.elsewhere.example".into()];
    let Decision::Deliver { reasons, .. } = decide(Some(&r), &p, RCPT) else {
        panic!("refused");
    };
    let text = reasons.join("\n");
    for needle in [
        "dane: not probed",
        "sts-policy-invalid",
        "rule \"r\" (line 2) matched: require encrypted, methods pgp, smime, verified-tls",
        "pgp: no OpenPGP key for bob@partner.example",
        "smime: S/MIME certificate SMIMEFP",
        "decision: S/MIME",
    ] {
        assert!(text.contains(needle), "{needle:?} not in\n{text}");
    }
    let mut p = probes("E");
    p.mx_hosts = vec!["mx.elsewhere.example".into()];
    let Decision::Deliver { reasons, .. } = decide(None, &p, RCPT) else {
        panic!("refused");
    };
    assert!(
        reasons.iter().any(|r| r.contains("no MX host matches")),
        "{reasons:?}"
    );
    let Decision::Refuse { reason, .. } =
        decide(Some(&rule("require = \"encrypted\"")), &probes(""), RCPT)
    else {
        panic!("delivered");
    };
    assert!(
        reason.contains("pgp: no OpenPGP key") && reason.contains("smime: no S/MIME"),
        "{reason}"
    );
}
