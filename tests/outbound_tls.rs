//! Policy-enforced TLS on delivery: verified certificates (test CA, wrong name, expired,
//! self-signed, pinned), required STARTTLS, STARTTLS stripping, MTA-STS MX patterns. The rule
//! under test: a protected recipient is deferred (4.7.x) and the next MX tried, never sent in
//! plaintext or over an unverified certificate.

mod common;

use common::dns::{TestDns, ZoneBuilder};
use common::lo;
use common::pki::{self, TestCa};
use common::sink::{Sink, SinkConfig, bind_same_port};
use sealpost::outbound::{Delivery, DeliveryReport, OutRecipient, OutboundConfig, deliver};
use sealpost::policy::TransportRequirement;
use sha2::Digest;
use std::time::Duration;

const BODY: &[u8] = b"Subject: phi\r\n\r\nprotected\r\n";

fn verified() -> TransportRequirement {
    TransportRequirement {
        require_tls: true,
        verify_certificate: true,
        mx_patterns: None,
    }
}

fn config(port: u16, ca: &TestCa, pins: Vec<[u8; 32]>) -> OutboundConfig {
    let mut cfg = OutboundConfig::new("client.test");
    cfg.smtp_port = port;
    cfg.connect_timeout = Duration::from_secs(2);
    cfg.command_timeout = Duration::from_secs(5);
    cfg.data_timeout = Duration::from_secs(5);
    cfg.verified_tls = Some(
        sealpost::outbound::tls::verifying_client_config(std::slice::from_ref(&ca.cert), pins)
            .unwrap(),
    );
    cfg
}

async fn send(cfg: &OutboundConfig, dns: &TestDns, t: TransportRequirement) -> DeliveryReport {
    let d = Delivery {
        domain: "example.com",
        mail_from: "alice@example.net",
        recipients: vec![OutRecipient::new("bob@example.com")],
        envid: None,
        ret: None,
        body: BODY,
        smtputf8: false,
        eight_bit: false,
        transport: t,
    };
    deliver(cfg, &dns.resolver(), &d).await
}

/// Only MX 10 mx1 (127.0.0.3), so the deferral reason is that host's.
async fn one_mx() -> TestDns {
    TestDns::start(
        &ZoneBuilder::new("example.com.")
            .mx("@", 10, "mx1.example.com.")
            .addr("mx1", lo(3))
            .build(),
    )
    .await
}

/// MX 10 mx1 (127.0.0.3) and MX 20 mx2 (127.0.0.4).
async fn two_mx() -> TestDns {
    TestDns::start(
        &ZoneBuilder::new("example.com.")
            .mx("@", 10, "mx1.example.com.")
            .mx("@", 20, "mx2.example.com.")
            .addr("mx1", lo(3))
            .addr("mx2", lo(4))
            .build(),
    )
    .await
}

fn code(r: &DeliveryReport) -> String {
    let reply = r.outcomes[0].reply();
    format!(
        "{} {}",
        reply.code,
        reply.status.map(|s| s.to_string()).unwrap_or_default()
    )
}

#[tokio::test]
async fn verified_tls_delivers_to_a_valid_certificate_and_records_it() {
    let ca = TestCa::new();
    let dns = two_mx().await;
    let (port, mut ls) = bind_same_port(&[lo(2), lo(3)]).await;
    let good = ca.leaf(&["mx1.example.com"], false);
    let mx1 = Sink::from_listener(
        ls.remove(1),
        SinkConfig::accept().with_certificate(good.chain, good.key),
    );
    let r = send(&config(port, &ca, vec![]), &dns, verified()).await;
    assert!(r.outcomes[0].is_delivered(), "{:?}", r.outcomes);
    let tls = r.tls.expect("TLS recorded");
    assert!(tls.verified);
    assert_eq!(tls.version, "TLSv1_3");
    assert!(mx1.messages()[0].tls);
}

#[tokio::test]
async fn bad_certificates_defer_and_the_next_mx_is_tried() {
    let ca = TestCa::new();
    for (label, leaf) in [
        ("wrong name", ca.leaf(&["other.example.org"], false)),
        ("expired", ca.leaf(&["mx1.example.com"], true)),
        ("self-signed", pki::self_signed("mx1.example.com")),
    ] {
        let dns = two_mx().await;
        let (port, mut ls) = bind_same_port(&[lo(2), lo(3), lo(4)]).await;
        let good = ca.leaf(&["mx2.example.com"], false);
        let mx2 = Sink::from_listener(
            ls.remove(2),
            SinkConfig::accept().with_certificate(good.chain, good.key),
        );
        let mx1 = Sink::from_listener(
            ls.remove(1),
            SinkConfig::accept().with_certificate(leaf.chain, leaf.key),
        );
        let r = send(&config(port, &ca, vec![]), &dns, verified()).await;
        assert!(r.outcomes[0].is_delivered(), "{label}: {:?}", r.outcomes);
        assert!(
            mx1.messages().is_empty(),
            "{label}: sent over a bad certificate"
        );
        assert_eq!(mx2.messages().len(), 1, "{label}");
        assert!(r.outcomes[0].reply().code == 250);

        // With the good MX gone the recipient is deferred with a 4.7.5, never delivered.
        drop(mx2);
        let r = send(&config(port, &ca, vec![]), &dns, verified()).await;
        assert!(r.outcomes[0].is_deferred(), "{label}: {:?}", r.outcomes);
        assert!(
            mx1.messages().is_empty(),
            "{label}: sent over a bad certificate"
        );
    }
}

#[tokio::test]
async fn a_pinned_certificate_is_accepted_whatever_its_chain() {
    let ca = TestCa::new();
    let dns = two_mx().await;
    let (port, mut ls) = bind_same_port(&[lo(2), lo(3)]).await;
    let leaf = pki::self_signed("private.example.com");
    let pin: [u8; 32] = sha2::Sha256::digest(leaf.chain[0].as_ref()).into();
    let mx1 = Sink::from_listener(
        ls.remove(1),
        SinkConfig::accept().with_certificate(leaf.chain, leaf.key),
    );
    let r = send(&config(port, &ca, vec![pin]), &dns, verified()).await;
    assert!(r.outcomes[0].is_delivered(), "{:?}", r.outcomes);
    assert_eq!(mx1.messages().len(), 1);
}

#[tokio::test]
async fn starttls_missing_or_stripped_never_yields_plaintext() {
    let ca = TestCa::new();
    for (label, cfg_sink) in [
        ("no STARTTLS", SinkConfig::accept()),
        (
            "STARTTLS refused 454",
            SinkConfig::accept().with_starttls_refused("454 4.7.0 TLS not available"),
        ),
        ("handshake garbage", SinkConfig::accept().with_broken_tls()),
    ] {
        for t in [
            verified(),
            TransportRequirement {
                require_tls: true,
                verify_certificate: false,
                mx_patterns: None,
            },
        ] {
            let dns = one_mx().await;
            let (port, mut ls) = bind_same_port(&[lo(2), lo(3)]).await;
            let mx1 = Sink::from_listener(ls.remove(1), cfg_sink.clone());
            let r = send(&config(port, &ca, vec![]), &dns, t.clone()).await;
            assert!(r.outcomes[0].is_deferred(), "{label}: {:?}", r.outcomes);
            assert!(code(&r).starts_with("451 4.7."), "{label}: {}", code(&r));
            assert!(
                mx1.messages().is_empty(),
                "{label}: plaintext delivery to a protected recipient"
            );
        }
        // Opportunistic TLS still delivers (in plaintext when it must).
        let dns = one_mx().await;
        let (port, mut ls) = bind_same_port(&[lo(2), lo(3)]).await;
        let mx1 = Sink::from_listener(ls.remove(1), cfg_sink.clone());
        let r = send(
            &config(port, &ca, vec![]),
            &dns,
            TransportRequirement::default(),
        )
        .await;
        assert!(
            r.outcomes[0].is_delivered(),
            "{label} opportunistic: {:?}",
            r.outcomes
        );
        assert_eq!(mx1.messages().len(), 1);
    }
}

#[tokio::test]
async fn mta_sts_patterns_limit_the_mx_hosts_used() {
    let ca = TestCa::new();
    let dns = two_mx().await;
    let (port, mut ls) = bind_same_port(&[lo(2), lo(3), lo(4)]).await;
    let l1 = ca.leaf(&["mx1.example.com"], false);
    let l2 = ca.leaf(&["mx2.example.com"], false);
    let mx2 = Sink::from_listener(
        ls.remove(2),
        SinkConfig::accept().with_certificate(l2.chain, l2.key),
    );
    let mx1 = Sink::from_listener(
        ls.remove(1),
        SinkConfig::accept().with_certificate(l1.chain, l1.key),
    );
    let t = TransportRequirement {
        mx_patterns: Some(vec!["mx2.example.com".into()]),
        ..verified()
    };
    let r = send(&config(port, &ca, vec![]), &dns, t).await;
    assert!(r.outcomes[0].is_delivered(), "{:?}", r.outcomes);
    assert_eq!(
        mx1.connections(),
        0,
        "an MX outside the policy was contacted"
    );
    assert_eq!(mx2.messages().len(), 1);
    let t = TransportRequirement {
        mx_patterns: Some(vec!["*.example.org".into()]),
        ..verified()
    };
    let r = send(&config(port, &ca, vec![]), &dns, t).await;
    assert_eq!(code(&r), "451 4.7.5");
}

#[test]
fn mx_pattern_matching_follows_rfc_8461() {
    use sealpost::outbound::mx_matches;
    let cases = [
        ("mail.example.com", "mail.example.com", true),
        ("mail.example.com", "MAIL.Example.COM.", true),
        ("*.example.net", "mx1.example.net", true),
        ("*.example.net", "example.net", false),
        ("*.example.net", "a.b.example.net", false),
        ("*.example.net", ".example.net", false),
        ("mail.example.com", "mail.example.com.evil.test", false),
    ];
    for (p, h, want) in cases {
        assert_eq!(mx_matches(p, h), want, "{p} vs {h}");
    }
}
