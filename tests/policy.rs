//! The policy engine end to end: `policy explain` goldens for a table of recipients and
//! probes, and MTA-STS probing against a real DNS server and an in-process HTTPS server with
//! a test CA (C27 bodies, caching by id, redirects, size, media type and certificate checks).
//!
//! `UPDATE_GOLDEN=1 cargo test --test policy` rewrites `tests/golden/*`; review the diff.

mod common;

use std::path::{Path, PathBuf};

use common::dns::{TestDns, ZoneBuilder};
use common::https::{HttpsServer, Leaf, Reply, TestCa};
use sealpost::policy::mta_sts::{
    MAX_POLICY_BYTES, StsError, StsMode, fetch_policy, https_client, parse_policy,
};
use sealpost::policy::{
    Decision, MessageContext, Method, Policy, Probes, StsCache, StsProbe, TlsLevel, TlsSource,
    decide, explain_json, explain_text,
};

const PATH: &str = "/.well-known/mta-sts.txt";
const HOST: &str = "mta-sts.example.com";
const P1: &str = "version: STSv1\nmode: enforce  \nmx: mail.example.com\nmx: *.example.net\nmx: 192.0.2.56\nfoo: bar\nmax_age: 604800";
const P2: &str = "version: STSv1\r\nmode: enforce\r\nnmx: mx0.example.org\r\nmax_age: 604800\r\n";
const T0: u64 = 1_700_000_000;

// ---------------------------------------------------------------------------------------
// Golden `policy explain` outputs.

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

/// Compares `actual` with the golden file, or rewrites it under `UPDATE_GOLDEN=1`. Returns a
/// description of the mismatch (first differing line) instead of panicking, so one run
/// reports every stale golden.
fn check_golden(name: &str, actual: &str) -> Option<String> {
    let path = golden_dir().join(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::create_dir_all(golden_dir()).expect("create tests/golden");
        std::fs::write(&path, actual).expect("write golden");
        return None;
    }
    let expected = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) => {
            return Some(format!(
                "{}: {e} (run with UPDATE_GOLDEN=1)",
                path.display()
            ));
        }
    };
    if expected == actual {
        return None;
    }
    let (e, a): (Vec<&str>, Vec<&str>) = (expected.lines().collect(), actual.lines().collect());
    let at = e
        .iter()
        .zip(&a)
        .position(|(x, y)| x != y)
        .unwrap_or(e.len().min(a.len()));
    Some(format!(
        "{} differs at line {}:\n  expected: {:?}\n  actual:   {:?}\n--- actual output ---\n{actual}",
        path.display(),
        at + 1,
        e.get(at).unwrap_or(&"<end of file>"),
        a.get(at).unwrap_or(&"<end of file>"),
    ))
}

fn example_policy() -> Policy {
    Policy::parse(
        include_str!("../config/policy.example.toml"),
        Path::new("policy.example.toml"),
    )
    .expect("example policy parses")
}

fn sts_valid(body: &str, id: &str, from_cache: bool) -> StsProbe {
    StsProbe::Valid {
        policy: parse_policy(body).expect("test policy"),
        id: id.into(),
        from_cache,
    }
}

fn mx(hosts: &[&str]) -> Vec<String> {
    hosts.iter().map(|h| h.to_string()).collect()
}

/// (golden name, recipient, message context, probes)
fn explain_cases() -> Vec<(&'static str, &'static str, MessageContext, Probes)> {
    let plain = MessageContext {
        sender: "alice@clinic.example".into(),
        ..MessageContext::default()
    };
    let phi = MessageContext {
        headers: vec![("X-Sealpost-Sensitivity".into(), " PHI".into())],
        ..plain.clone()
    };
    let tagged = MessageContext {
        authenticated: Some("alice@clinic.example".into()),
        subject: Some("[secure] Lab results".into()),
        ..plain.clone()
    };
    let billing = MessageContext {
        sender: "billing@clinic.example".into(),
        client_ip: Some("10.20.3.4".parse().expect("ip")),
        listener: Some("10.20.0.1:587".into()),
        ..MessageContext::default()
    };
    let partner_mx = mx(&["mx1.partner.example"]);
    let partner_sts = "version: STSv1\nmode: enforce\nmx: *.partner.example\nmax_age: 86400\n";
    vec![
        (
            "phi-partner-pgp",
            "bob@partner.example",
            plain.clone(),
            Probes {
                has_pgp_key: Some("D1A66E1A23B182C9980F788CFBFCC82A015E7330".into()),
                has_smime_cert: Some("5D7F0A3C".into()),
                mx_hosts: partner_mx.clone(),
                ..Probes::default()
            },
        ),
        (
            "phi-partner-smime-sts-enforce",
            "carol@lab.partner.example",
            plain.clone(),
            Probes {
                has_smime_cert: Some("5D7F0A3C".into()),
                sts: sts_valid(partner_sts, "20240101", true),
                mx_hosts: partner_mx.clone(),
                ..Probes::default()
            },
        ),
        (
            "phi-partner-no-key",
            "dave@partner.example",
            plain.clone(),
            Probes {
                history_level: Some(TlsLevel::Tls),
                mx_hosts: partner_mx.clone(),
                ..Probes::default()
            },
        ),
        (
            "marked-phi-no-key",
            "erin@elsewhere.example",
            phi.clone(),
            Probes {
                sts: sts_valid(
                    "version: STSv1\nmode: enforce\nmx: *.elsewhere.example\nmax_age: 86400\n",
                    "x1",
                    false,
                ),
                mx_hosts: mx(&["mx.elsewhere.example"]),
                ..Probes::default()
            },
        ),
        (
            "subject-tag-verified-tls",
            "frank@elsewhere.example",
            tagged,
            Probes {
                mx_hosts: mx(&["mx.elsewhere.example"]),
                ..Probes::default()
            },
        ),
        (
            "billing-app-pgp",
            "grace@customer.example",
            billing,
            Probes {
                has_pgp_key: Some("0B7E5C1D".into()),
                history_level: Some(TlsLevel::VerifiedTls),
                mx_hosts: mx(&["mx.customer.example"]),
                ..Probes::default()
            },
        ),
        (
            "legacy-lab-tls",
            "results@lab.example",
            plain.clone(),
            Probes {
                mx_hosts: mx(&["smtp.lab.example"]),
                ..Probes::default()
            },
        ),
        (
            "default-opportunistic",
            "heidi@example.org",
            plain.clone(),
            Probes {
                mx_hosts: mx(&["mx.example.org"]),
                ..Probes::default()
            },
        ),
        (
            "default-sts-enforce-p1",
            "ivan@example.com",
            plain.clone(),
            Probes {
                sts: sts_valid(P1, "20160831085700Z", false),
                mx_hosts: mx(&["mx1.example.net", "backup.example.org"]),
                ..Probes::default()
            },
        ),
        (
            "default-sts-testing-mismatch",
            "judy@example.com",
            plain.clone(),
            Probes {
                sts: sts_valid(&P1.replace("enforce", "testing"), "t1", false),
                mx_hosts: mx(&["a.b.example.net"]),
                ..Probes::default()
            },
        ),
        (
            "default-sts-invalid-p2",
            "mallory@example.com",
            plain.clone(),
            Probes {
                sts: StsProbe::Invalid {
                    reason: parse_policy(P2).expect_err("P2 is invalid").to_string(),
                },
                mx_hosts: mx(&["mx0.example.org"]),
                ..Probes::default()
            },
        ),
        (
            "default-sts-lookup-failed-history-verified",
            "niaj@example.com",
            plain,
            Probes {
                sts: StsProbe::LookupFailed {
                    reason: "sts-policy-fetch-error: timed out after 10s".into(),
                },
                history_level: Some(TlsLevel::VerifiedTls),
                mx_hosts: mx(&["mx.example.com"]),
                ..Probes::default()
            },
        ),
    ]
}

#[test]
fn explain_goldens() {
    let policy = example_policy();
    let mut failures = Vec::new();
    let mut index = String::new();
    for (name, rcpt, ctx, probes) in explain_cases() {
        let rule = policy.matching_rule(&ctx, rcpt);
        let decision = decide(rule, &probes, rcpt);
        let text = explain_text(rcpt, rule, &probes, &decision);
        index.push_str(&format!("{name}: {}\n", text.lines().nth(1).unwrap_or("")));
        failures.extend(check_golden(&format!("explain-{name}.txt"), &text));
        if name == "phi-partner-smime-sts-enforce" || name == "marked-phi-no-key" {
            let json = explain_json(rcpt, rule, &probes, &decision) + "\n";
            failures.extend(check_golden(&format!("explain-{name}.json"), &json));
        }
    }
    assert!(
        failures.is_empty(),
        "{} golden file(s) differ (UPDATE_GOLDEN=1 rewrites them):\n\n{}",
        failures.len(),
        failures.join("\n\n")
    );
    // The table covers every rule of the example file and the default.
    assert!(index.contains("rule: none matched"), "{index}");
    for rule in &policy.rules {
        assert!(index.contains(&format!("rule: {} ", rule.name)), "{index}");
    }
}

#[test]
fn explain_json_is_machine_readable() {
    let policy = example_policy();
    let (_, rcpt, ctx, probes) = explain_cases().remove(1);
    let rule = policy.matching_rule(&ctx, rcpt);
    let decision = decide(rule, &probes, rcpt);
    let v: serde_json::Value =
        serde_json::from_str(&explain_json(rcpt, rule, &probes, &decision)).expect("JSON");
    assert_eq!(v["recipient"], rcpt);
    assert_eq!(v["rule"]["name"], "phi-to-partners");
    assert_eq!(v["decision"]["decision"], "deliver");
    assert_eq!(v["decision"]["method"]["method"], "smime");
    assert_eq!(v["decision"]["transport"]["verify_certificate"], true);
    assert_eq!(v["probes"]["sts"]["result"], "valid");
}

// ---------------------------------------------------------------------------------------
// MTA-STS against real DNS and HTTPS.

/// A DNS server whose `_mta-sts.example.com` TXT is `record` (none when `None`).
async fn dns(record: Option<&str>) -> TestDns {
    let mut zone = ZoneBuilder::new("example.com").mx("@", 10, "mail");
    if let Some(r) = record {
        zone = zone.txt("_mta-sts", r);
    }
    TestDns::start(&zone.build()).await
}

/// An HTTPS server with a certificate from `ca` for the policy host, and a client that
/// trusts `ca` and sends the policy host to it.
struct Sts {
    server: HttpsServer,
    client: reqwest::Client,
    _dir: tempfile::TempDir,
}

async fn sts_setup(server_leaf: impl FnOnce(&TestCa) -> Leaf) -> Sts {
    let ca = TestCa::new();
    let server = HttpsServer::start(&server_leaf(&ca)).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let ca_file = ca.write_pem(dir.path());
    let client =
        https_client(Some(&ca_file), &[(HOST.to_string(), server.addr())]).expect("https client");
    Sts {
        server,
        client,
        _dir: dir,
    }
}

async fn good_server() -> Sts {
    sts_setup(|ca| ca.leaf(&[HOST, "mta-sts.example.org"])).await
}

#[tokio::test]
async fn enforce_policy_is_fetched_then_served_from_cache() {
    let sts = good_server().await;
    sts.server.set(PATH, Reply::text(200, P1));
    let dns = dns(Some("v=STSv1; id=20160831085700Z;")).await;
    let cache = StsCache::new();

    let first = cache
        .probe(&dns.resolver(), &sts.client, "Example.COM", T0)
        .await;
    let StsProbe::Valid {
        policy,
        id,
        from_cache,
    } = &first
    else {
        panic!("expected a valid policy, got {first:?}");
    };
    assert_eq!(
        (policy.mode, id.as_str(), *from_cache),
        (StsMode::Enforce, "20160831085700Z", false)
    );
    assert_eq!(policy.mx, ["mail.example.com", "*.example.net"]);
    assert_eq!(sts.server.paths(), [PATH]);

    let second = cache
        .probe(&dns.resolver(), &sts.client, "example.com", T0 + 3600)
        .await;
    assert!(
        matches!(
            second,
            StsProbe::Valid {
                from_cache: true,
                ..
            }
        ),
        "{second:?}"
    );
    assert_eq!(
        sts.server.requests(),
        1,
        "same id and fresh: no HTTP request"
    );

    // The cache survives a round trip through JSON (the spool database).
    let restored = StsCache::from_json(&cache.to_json()).expect("cache JSON");
    let third = restored
        .probe(&dns.resolver(), &sts.client, "example.com", T0 + 7200)
        .await;
    assert!(matches!(
        third,
        StsProbe::Valid {
            from_cache: true,
            ..
        }
    ));
    assert_eq!(sts.server.requests(), 1);

    // After the refresh interval the same id is fetched again, before expiry.
    let refreshed = cache
        .probe(&dns.resolver(), &sts.client, "example.com", T0 + 86_400)
        .await;
    assert!(matches!(
        refreshed,
        StsProbe::Valid {
            from_cache: false,
            ..
        }
    ));
    assert_eq!(sts.server.requests(), 2);

    // And decide turns it into verified TLS restricted to the policy's MX patterns.
    let probes = Probes {
        sts: first,
        mx_hosts: vec!["mx1.example.net".into()],
        ..Probes::default()
    };
    let Decision::Deliver {
        method, transport, ..
    } = decide(None, &probes, "ivan@example.com")
    else {
        panic!("refused");
    };
    assert!(matches!(
        method,
        Method::VerifiedTls {
            source: TlsSource::MtaSts { .. }
        }
    ));
    assert!(transport.require_tls && transport.verify_certificate);
}

#[tokio::test]
async fn id_change_refetches() {
    let sts = good_server().await;
    sts.server.set(PATH, Reply::text(200, P1));
    let cache = StsCache::new();
    let dns1 = dns(Some("v=STSv1; id=one;")).await;
    let p = cache
        .probe(&dns1.resolver(), &sts.client, "example.com", T0)
        .await;
    assert!(
        matches!(p, StsProbe::Valid { ref id, .. } if id == "one"),
        "{p:?}"
    );

    sts.server
        .set(PATH, Reply::text(200, &P1.replace("enforce", "testing")));
    let dns2 = dns(Some("v=STSv1; id=two;")).await;
    let p = cache
        .probe(&dns2.resolver(), &sts.client, "example.com", T0 + 60)
        .await;
    let StsProbe::Valid {
        policy,
        id,
        from_cache,
    } = p
    else {
        panic!("expected valid");
    };
    assert_eq!(
        (policy.mode, id.as_str(), from_cache),
        (StsMode::Testing, "two", false)
    );
    assert_eq!(sts.server.requests(), 2);
    assert_eq!(cache.get("example.com").expect("cached").id, "two");
}

#[tokio::test]
async fn c27_bodies_p1_to_p4() {
    let sts = good_server().await;
    let dns = dns(Some("v=STSv1; id=a1;")).await;
    let p3 = P1.replace("mode: enforce", "mode: testing");
    let p4 = P1.replace("max_age: 604800", "max_age: 99999999999");
    // (body, expected mode or the invalid code) with an empty cache each time.
    let cases: &[(&str, Result<StsMode, &str>)] = &[
        (P1, Ok(StsMode::Enforce)),
        (P2, Err("sts-policy-invalid")),
        (&p3, Ok(StsMode::Testing)),
        (&p4, Err("sts-policy-invalid")),
    ];
    for (body, want) in cases {
        sts.server.set(PATH, Reply::text(200, body));
        let probe = StsCache::new()
            .probe(&dns.resolver(), &sts.client, "example.com", T0)
            .await;
        match (want, &probe) {
            (Ok(mode), StsProbe::Valid { policy, .. }) => assert_eq!(policy.mode, *mode),
            (Err(code), StsProbe::Invalid { reason }) => {
                assert!(reason.starts_with(code), "{reason}")
            }
            _ => panic!("{body:?}: expected {want:?}, got {probe:?}"),
        }
    }

    // P2 while a still-valid policy is cached: keep using the cached one, never an empty list.
    let cache = StsCache::new();
    sts.server.set(PATH, Reply::text(200, P1));
    cache
        .probe(&dns.resolver(), &sts.client, "example.com", T0)
        .await;
    sts.server.set(PATH, Reply::text(200, P2));
    let dns_b = self::dns(Some("v=STSv1; id=b2;")).await;
    let p = cache
        .probe(&dns_b.resolver(), &sts.client, "example.com", T0 + 60)
        .await;
    let StsProbe::Valid {
        policy,
        id,
        from_cache,
    } = p
    else {
        panic!("expected the cached policy");
    };
    assert!(from_cache && id == "a1" && policy.mx == ["mail.example.com", "*.example.net"]);
}

#[tokio::test]
async fn no_txt_record_means_no_policy_and_no_fetch() {
    let sts = good_server().await;
    sts.server.set(PATH, Reply::text(200, P1));
    let dns = dns(None).await;
    let p = StsCache::new()
        .probe(&dns.resolver(), &sts.client, "example.com", T0)
        .await;
    assert_eq!(p, StsProbe::None);
    assert_eq!(sts.server.connections(), 0);
}

#[tokio::test]
async fn redirect_is_not_followed() {
    let sts = good_server().await;
    sts.server.set(PATH, Reply::redirect(301, "/moved.txt"));
    sts.server.set("/moved.txt", Reply::text(200, P1));
    let err = fetch_policy(&sts.client, "example.com")
        .await
        .expect_err("redirect");
    assert_eq!(err, StsError::Redirect { status: 301 });
    assert_eq!(sts.server.paths(), [PATH]);

    let dns = dns(Some("v=STSv1; id=r1;")).await;
    let p = StsCache::new()
        .probe(&dns.resolver(), &sts.client, "example.com", T0)
        .await;
    assert!(
        matches!(p, StsProbe::LookupFailed { ref reason } if reason.contains("redirect")),
        "{p:?}"
    );
}

#[tokio::test]
async fn oversized_body_is_rejected() {
    let sts = good_server().await;
    let mut big = P1.to_string();
    big.push('\n');
    while big.len() <= MAX_POLICY_BYTES {
        big.push_str("padding: xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\n");
    }
    for reply in [
        Reply::text(200, &big),
        Reply::text(200, &big).without_length(),
    ] {
        sts.server.set(PATH, reply);
        let err = fetch_policy(&sts.client, "example.com")
            .await
            .expect_err("too large");
        assert_eq!(err, StsError::TooLarge(MAX_POLICY_BYTES));
    }
    // Just under the limit is fine (unknown keys are ignored).
    let cut = big[..MAX_POLICY_BYTES].rfind('\n').expect("a line break");
    let fits = &big[..=cut];
    sts.server
        .set(PATH, Reply::text(200, fits).without_length());
    let ok = fetch_policy(&sts.client, "example.com").await;
    assert!(ok.is_ok(), "{ok:?}");
}

#[tokio::test]
async fn wrong_content_type_and_status_are_rejected() {
    let sts = good_server().await;
    let cases = [
        (Reply::new(200, "text/html", P1), "content type"),
        (
            Reply::new(200, "application/octet-stream", P1),
            "content type",
        ),
        (Reply::text(404, P1), "404"),
        (Reply::text(500, P1), "500"),
    ];
    for (reply, needle) in cases {
        sts.server.set(PATH, reply);
        let err = fetch_policy(&sts.client, "example.com")
            .await
            .expect_err(needle);
        assert_eq!(err.report_code(), "sts-policy-fetch-error");
        assert!(err.to_string().contains(needle), "{err}");
    }
    sts.server
        .set(PATH, Reply::new(200, "Text/Plain; charset=utf-8", P1));
    assert!(fetch_policy(&sts.client, "example.com").await.is_ok());
}

#[tokio::test]
async fn certificate_not_from_the_trusted_ca_is_rejected() {
    // The server's certificate comes from a CA the client does not trust.
    let sts = sts_setup(|_| TestCa::new().leaf(&[HOST])).await;
    sts.server.set(PATH, Reply::text(200, P1));
    let err = fetch_policy(&sts.client, "example.com")
        .await
        .expect_err("untrusted");
    assert_eq!(err.report_code(), "sts-webpki-invalid", "{err}");
    assert_eq!(sts.server.requests(), 0);

    // A certificate from the trusted CA for another name is rejected too.
    let wrong_name = sts_setup(|ca| ca.leaf(&["mta-sts.other.example"])).await;
    wrong_name.server.set(PATH, Reply::text(200, P1));
    let err = fetch_policy(&wrong_name.client, "example.com")
        .await
        .expect_err("wrong name");
    assert_eq!(err.report_code(), "sts-webpki-invalid", "{err}");

    // And the probe treats it as no policy (nothing cached), never as enforce.
    let dns = dns(Some("v=STSv1; id=c1;")).await;
    let p = StsCache::new()
        .probe(&dns.resolver(), &sts.client, "example.com", T0)
        .await;
    assert!(matches!(p, StsProbe::LookupFailed { .. }), "{p:?}");
}
