//! End-to-end tests of outbound delivery against a real DNS server and SMTP sinks on
//! loopback. Every sink group includes 127.0.0.2, so concurrently running tests never share
//! a port and an unused 127.0.0.x on the test's port is guaranteed to refuse connections.

mod common;

use std::time::{Duration, Instant};

use common::dns::{TestDns, ZoneBuilder};
use common::lo;
use common::sink::{Behaviour, Sink, SinkConfig, bind_same_port};
use sealpost::outbound::{
    Delivery, DeliveryReport, OutRecipient, OutboundConfig, RcptOutcome, Route, deliver,
};
use sealpost::smtp::reply::EnhancedStatus;

const WAIT: Duration = Duration::from_secs(10);

fn config(port: u16) -> OutboundConfig {
    let mut cfg = OutboundConfig::new("client.test");
    cfg.smtp_port = port;
    cfg.connect_timeout = Duration::from_secs(2);
    cfg.command_timeout = Duration::from_secs(5);
    cfg.data_timeout = Duration::from_secs(5);
    cfg
}

fn delivery<'a>(domain: &'a str, rcpts: &[&str], body: &'a [u8]) -> Delivery<'a> {
    Delivery {
        domain,
        mail_from: "alice@sender.test",
        recipients: rcpts.iter().map(|r| OutRecipient::new(*r)).collect(),
        envid: None,
        ret: None,
        body,
        smtputf8: false,
        eight_bit: false,
        transport: Default::default(),
    }
}

const BODY: &[u8] = b"Subject: hi\r\n\r\nhello\r\n";

fn status(o: &RcptOutcome) -> (u16, Option<EnhancedStatus>) {
    (o.reply().code, o.reply().status)
}

fn assert_all_delivered(report: &DeliveryReport) {
    for o in &report.outcomes {
        assert!(o.is_delivered(), "not delivered: {o:?}");
    }
}

/// Starts sinks (one config per IP, all on one port) and the DNS server for `zone`.
async fn setup(sinks: Vec<(u8, SinkConfig)>, zone: &str) -> (u16, Vec<Sink>, TestDns) {
    let ips: Vec<_> = sinks.iter().map(|(x, _)| lo(*x)).collect();
    let (port, listeners) = bind_same_port(&ips).await;
    let sinks = listeners
        .into_iter()
        .zip(sinks)
        .map(|(l, (_, c))| Sink::from_listener(l, c))
        .collect();
    (port, sinks, TestDns::start(zone).await)
}

#[tokio::test]
async fn prefers_lowest_mx_and_falls_back_when_refused() {
    common::init_tracing();
    // mx0 (pref 5) refuses connections, mx1 (10) accepts, mx2 (20) must not be used.
    let zone = ZoneBuilder::new("example.com")
        .mx("@", 5, "mx0")
        .mx("@", 10, "mx1")
        .mx("@", 20, "mx2")
        .addr("mx0", lo(9))
        .addr("mx1", lo(2))
        .addr("mx2", lo(3))
        .build();
    let (port, sinks, dns) = setup(
        vec![(2, SinkConfig::accept()), (3, SinkConfig::accept())],
        &zone,
    )
    .await;
    let report = deliver(
        &config(port),
        &dns.resolver(),
        &delivery("example.com", &["bob@example.com"], BODY),
    )
    .await;
    assert_all_delivered(&report);
    match &report.outcomes[0] {
        RcptOutcome::Delivered { remote, .. } => assert_eq!(remote, "mx1.example.com[127.0.0.2]"),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        sinks[0].wait_for(1, WAIT).await[0].rcpts,
        ["bob@example.com"]
    );
    assert_eq!(sinks[1].connections(), 0);
}

#[tokio::test]
async fn falls_back_on_4xx_greeting_and_on_all_rcpts_4xx() {
    let zone = ZoneBuilder::new("example.com")
        .mx("@", 10, "busy")
        .mx("@", 20, "tempfail")
        .mx("@", 30, "good")
        .addr("busy", lo(2))
        .addr("tempfail", lo(3))
        .addr("good", lo(4))
        .build();
    let (port, sinks, dns) = setup(
        vec![
            (2, SinkConfig::accept().with_greeting("421 4.3.2 busy")),
            (3, SinkConfig::with_behaviour(Behaviour::TempFailRcpt)),
            (4, SinkConfig::accept()),
        ],
        &zone,
    )
    .await;
    let report = deliver(
        &config(port),
        &dns.resolver(),
        &delivery("example.com", &["a@example.com", "b@example.com"], BODY),
    )
    .await;
    assert_all_delivered(&report);
    assert_eq!(sinks[0].connections(), 1);
    assert_eq!(sinks[1].connections(), 1);
    let got = sinks[2].wait_for(1, WAIT).await;
    assert_eq!(got[0].rcpts, ["a@example.com", "b@example.com"]);
}

#[tokio::test]
async fn data_4xx_moves_to_next_mx() {
    let zone = ZoneBuilder::new("example.com")
        .mx("@", 10, "a")
        .mx("@", 20, "b")
        .addr("a", lo(2))
        .addr("b", lo(3))
        .build();
    let (port, sinks, dns) = setup(
        vec![
            (2, SinkConfig::with_behaviour(Behaviour::TempFailData)),
            (3, SinkConfig::accept()),
        ],
        &zone,
    )
    .await;
    let report = deliver(
        &config(port),
        &dns.resolver(),
        &delivery("example.com", &["a@example.com"], BODY),
    )
    .await;
    assert_all_delivered(&report);
    assert_eq!(sinks[1].wait_for(1, WAIT).await.len(), 1);
}

#[tokio::test]
async fn null_mx_fails_with_5_1_10() {
    let dns = TestDns::start(&ZoneBuilder::new("nomail.test").null_mx("@").build()).await;
    let report = deliver(
        &config(25),
        &dns.resolver(),
        &delivery("nomail.test", &["x@nomail.test", "y@nomail.test"], BODY),
    )
    .await;
    for o in &report.outcomes {
        assert!(o.is_failed(), "{o:?}");
        assert_eq!(status(o), (550, Some(EnhancedStatus::new(5, 1, 10))));
    }
}

#[tokio::test]
async fn nxdomain_fails_with_5_1_2_and_dns_trouble_defers() {
    let dns = TestDns::start(&ZoneBuilder::new("example.com").mx("@", 10, "mx").build()).await;
    let resolver = dns.resolver();
    let report = deliver(
        &config(25),
        &resolver,
        &delivery("missing.example.com", &["x@missing.example.com"], BODY),
    )
    .await;
    assert!(report.outcomes[0].is_failed());
    assert_eq!(
        status(&report.outcomes[0]),
        (550, Some(EnhancedStatus::new(5, 1, 2)))
    );
    // A name outside every zone gets REFUSED: temporary, 4.4.3.
    let report = deliver(
        &config(25),
        &resolver,
        &delivery("elsewhere.test", &["x@elsewhere.test"], BODY),
    )
    .await;
    assert!(report.outcomes[0].is_deferred(), "{:?}", report.outcomes[0]);
    assert_eq!(
        status(&report.outcomes[0]),
        (451, Some(EnhancedStatus::new(4, 4, 3)))
    );
}

#[tokio::test]
async fn implicit_mx_uses_the_domain_address() {
    let zone = ZoneBuilder::new("plain.test").addr("@", lo(2)).build();
    let (port, sinks, dns) = setup(vec![(2, SinkConfig::accept())], &zone).await;
    let report = deliver(
        &config(port),
        &dns.resolver(),
        &delivery("plain.test", &["x@plain.test"], BODY),
    )
    .await;
    assert_all_delivered(&report);
    assert_eq!(sinks[0].wait_for(1, WAIT).await.len(), 1);
    // A domain that exists without MX or addresses has no mail server.
    let dns = TestDns::start(
        &ZoneBuilder::new("bare.test")
            .txt("@", "v=spf1 -all")
            .build(),
    )
    .await;
    let report = deliver(
        &config(port),
        &dns.resolver(),
        &delivery("bare.test", &["x@bare.test"], BODY),
    )
    .await;
    assert_eq!(
        status(&report.outcomes[0]),
        (550, Some(EnhancedStatus::new(5, 1, 2)))
    );
}

#[tokio::test]
async fn route_bypasses_mx_and_literal_needs_no_dns() {
    let zone = ZoneBuilder::new("example.com")
        .mx("@", 10, "mx")
        .addr("mx", lo(9))
        .addr("relay", lo(3))
        .build();
    let (port, sinks, dns) = setup(
        vec![(2, SinkConfig::accept()), (3, SinkConfig::accept())],
        &zone,
    )
    .await;
    let mut cfg = config(25);
    cfg.routes.push(Route {
        domain: "EXAMPLE.com".into(),
        host: "relay.example.com".into(),
        port,
    });
    let report = deliver(
        &cfg,
        &dns.resolver(),
        &delivery("example.com", &["x@example.com"], BODY),
    )
    .await;
    assert_all_delivered(&report);
    assert_eq!(sinks[1].wait_for(1, WAIT).await.len(), 1);

    let report = deliver(
        &config(port),
        &dns.resolver(),
        &delivery("[127.0.0.2]", &["x@[127.0.0.2]"], BODY),
    )
    .await;
    assert_all_delivered(&report);
    assert_eq!(sinks[0].wait_for(1, WAIT).await.len(), 1);
}

#[tokio::test]
async fn starttls_is_used_when_offered() {
    let zone = ZoneBuilder::new("tls.test")
        .mx("@", 10, "mx")
        .addr("mx", lo(2))
        .build();
    let (port, sinks, dns) = setup(vec![(2, SinkConfig::accept().with_starttls())], &zone).await;
    let report = deliver(
        &config(port),
        &dns.resolver(),
        &delivery("tls.test", &["x@tls.test"], BODY),
    )
    .await;
    assert_all_delivered(&report);
    let tls = report.tls.expect("TLS summary");
    assert!(tls.version.starts_with("TLSv1_"), "{tls:?}");
    assert!(!tls.cipher.is_empty());
    let got = sinks[0].wait_for(1, WAIT).await;
    assert!(got[0].tls);
    assert_eq!(got[0].helo, "client.test");
}

#[tokio::test]
async fn broken_starttls_retries_once_in_plaintext() {
    let zone = ZoneBuilder::new("tls.test")
        .mx("@", 10, "mx")
        .addr("mx", lo(2))
        .build();
    let (port, sinks, dns) = setup(vec![(2, SinkConfig::accept().with_broken_tls())], &zone).await;
    let report = deliver(
        &config(port),
        &dns.resolver(),
        &delivery("tls.test", &["x@tls.test"], BODY),
    )
    .await;
    assert_all_delivered(&report);
    assert_eq!(report.tls, None);
    let got = sinks[0].wait_for(1, WAIT).await;
    assert!(!got[0].tls);
    assert_eq!(sinks[0].connections(), 2);
}

#[tokio::test]
async fn dot_stuffing_and_final_crlf_on_the_wire() {
    let zone = ZoneBuilder::new("dots.test")
        .mx("@", 10, "mx")
        .addr("mx", lo(2))
        .build();
    let (port, sinks, dns) = setup(vec![(2, SinkConfig::accept())], &zone).await;
    let resolver = dns.resolver();
    let cfg = config(port);
    // C05 b: a lone dot line is stuffed.
    let body = b"hello\r\n.\r\nworld\r\n";
    deliver(
        &cfg,
        &resolver,
        &delivery("dots.test", &["x@dots.test"], body),
    )
    .await;
    // C05 e: with and without the final CRLF, exactly one CRLF before the dot.
    deliver(
        &cfg,
        &resolver,
        &delivery("dots.test", &["x@dots.test"], b"a\r\nhello"),
    )
    .await;
    deliver(
        &cfg,
        &resolver,
        &delivery("dots.test", &["x@dots.test"], b"a\r\nhello\r\n"),
    )
    .await;
    // C05 f: a dot line starting exactly at the client's 64 KiB chunk boundary.
    let mut big = vec![b'x'; 65534];
    big.extend_from_slice(b"\r\n.dot at the boundary\r\nend\r\n");
    assert_eq!(big[65536], b'.');
    deliver(
        &cfg,
        &resolver,
        &delivery("dots.test", &["x@dots.test"], &big),
    )
    .await;
    // C01: bare LF never reaches the wire.
    deliver(
        &cfg,
        &resolver,
        &delivery("dots.test", &["x@dots.test"], b"a\n.\r\nb\r\n"),
    )
    .await;

    let got = sinks[0].wait_for(5, WAIT).await;
    assert_eq!(got[0].raw_data, b"hello\r\n..\r\nworld\r\n.\r\n");
    assert_eq!(got[0].data, body);
    assert_eq!(got[1].raw_data, b"a\r\nhello\r\n.\r\n");
    assert_eq!(got[2].raw_data, b"a\r\nhello\r\n.\r\n");
    assert_eq!(got[3].data, big);
    assert_eq!(&got[3].raw_data[65534..65538], b"\r\n..");
    assert_eq!(got[4].raw_data, b"a\r\n..\r\nb\r\n.\r\n");
}

#[tokio::test]
async fn too_many_recipients_splits_transactions_without_bouncing() {
    let zone = ZoneBuilder::new("many.test")
        .mx("@", 10, "mx")
        .addr("mx", lo(2))
        .build();
    let (port, sinks, dns) = setup(
        vec![(2, SinkConfig::accept().with_max_recipients(2))],
        &zone,
    )
    .await;
    let rcpts = [
        "u1@many.test",
        "u2@many.test",
        "u3@many.test",
        "u4@many.test",
        "u5@many.test",
    ];
    let report = deliver(
        &config(port),
        &dns.resolver(),
        &delivery("many.test", &rcpts, BODY),
    )
    .await;
    assert_all_delivered(&report);
    let got = sinks[0].wait_for(3, WAIT).await;
    let split: Vec<Vec<String>> = got.iter().map(|m| m.rcpts.clone()).collect();
    assert_eq!(
        split,
        vec![
            vec!["u1@many.test", "u2@many.test"],
            vec!["u3@many.test", "u4@many.test"],
            vec!["u5@many.test"]
        ]
    );
    assert_eq!(sinks[0].connections(), 1);
}

#[tokio::test]
async fn too_many_recipients_without_pipelining() {
    let zone = ZoneBuilder::new("many.test")
        .mx("@", 10, "mx")
        .addr("mx", lo(2))
        .build();
    let cfg = SinkConfig::accept()
        .without_pipelining()
        .with_max_recipients(1);
    let (port, sinks, dns) = setup(vec![(2, cfg)], &zone).await;
    let rcpts = ["u1@many.test", "u2@many.test", "u3@many.test"];
    let report = deliver(
        &config(port),
        &dns.resolver(),
        &delivery("many.test", &rcpts, BODY),
    )
    .await;
    assert_all_delivered(&report);
    assert_eq!(sinks[0].wait_for(3, WAIT).await.len(), 3);
}

#[tokio::test]
async fn size_limit_fails_before_sending_and_size_zero_means_unlimited() {
    let zone = ZoneBuilder::new("small.test")
        .mx("@", 10, "mx")
        .addr("mx", lo(2))
        .build();
    let zone2 = ZoneBuilder::new("big.test")
        .mx("@", 10, "mx")
        .addr("mx", lo(3))
        .build();
    let ips = [lo(2), lo(3)];
    let (port, mut listeners) = bind_same_port(&ips).await;
    let big_sink = Sink::from_listener(listeners.remove(1), SinkConfig::accept().with_size(0));
    let small_sink = Sink::from_listener(listeners.remove(0), SinkConfig::accept().with_size(1000));
    let dns = TestDns::start_zones(&[&zone, &zone2]).await;
    let body = vec![b'x'; 2000];
    let report = deliver(
        &config(port),
        &dns.resolver(),
        &delivery("small.test", &["a@small.test", "b@small.test"], &body),
    )
    .await;
    for o in &report.outcomes {
        assert!(o.is_failed());
        assert_eq!(status(o), (552, Some(EnhancedStatus::new(5, 3, 4))));
    }
    assert!(small_sink.messages().is_empty());

    let report = deliver(
        &config(port),
        &dns.resolver(),
        &delivery("big.test", &["a@big.test"], &body),
    )
    .await;
    assert_all_delivered(&report);
    let got = big_sink.wait_for(1, WAIT).await;
    assert_eq!(got[0].mail_params, ["SIZE=2000"]);
}

#[tokio::test]
async fn hanging_server_defers_after_command_timeout() {
    let zone = ZoneBuilder::new("slow.test")
        .mx("@", 10, "mx")
        .addr("mx", lo(2))
        .build();
    let (port, _sinks, dns) = setup(
        vec![(2, SinkConfig::with_behaviour(Behaviour::Hang))],
        &zone,
    )
    .await;
    let mut cfg = config(port);
    cfg.command_timeout = Duration::from_secs(1);
    let started = Instant::now();
    let report = deliver(
        &cfg,
        &dns.resolver(),
        &delivery("slow.test", &["x@slow.test"], BODY),
    )
    .await;
    assert!(started.elapsed() < Duration::from_secs(4));
    match &report.outcomes[0] {
        RcptOutcome::Deferred { reply, remote } => {
            assert_eq!(
                (reply.code, reply.status),
                (451, Some(EnhancedStatus::new(4, 4, 2)))
            );
            assert!(reply.text().contains("mx.slow.test[127.0.0.2]"), "{reply}");
            assert_eq!(remote.as_deref(), Some("mx.slow.test[127.0.0.2]"));
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn per_recipient_outcomes_and_dsn_parameters() {
    let zone = ZoneBuilder::new("mixed.test")
        .mx("@", 10, "mx")
        .addr("mx", lo(2))
        .build();
    let cfg = SinkConfig::accept().with_dsn().with_rcpt_script(|c| {
        if c.address.starts_with("bad") {
            Some("550 5.1.1 no such user".into())
        } else if c.address.starts_with("later") {
            Some("451 4.3.0 try later".into())
        } else {
            None
        }
    });
    let (port, sinks, dns) = setup(vec![(2, cfg)], &zone).await;
    let mut d = delivery(
        "mixed.test",
        &["good@mixed.test", "bad@mixed.test", "later@mixed.test"],
        BODY,
    );
    d.mail_from = "";
    d.envid = Some("QQ314159".into());
    d.ret = Some("HDRS".into());
    d.recipients[0].notify = Some("SUCCESS,FAILURE".into());
    d.recipients[0].orcpt = Some("rfc822;good@mixed.test".into());
    let report = deliver(&config(port), &dns.resolver(), &d).await;
    assert!(
        report.outcomes[0].is_delivered(),
        "{:?}",
        report.outcomes[0]
    );
    assert!(report.outcomes[1].is_failed());
    assert_eq!(
        status(&report.outcomes[1]),
        (550, Some(EnhancedStatus::new(5, 1, 1)))
    );
    assert!(report.outcomes[2].is_deferred());
    assert_eq!(report.outcomes[2].reply().code, 451);
    assert!(report.remote_supports_dsn);
    // The 451 recipient is not retried elsewhere in this run.
    assert_eq!(sinks[0].connections(), 1);
    let got = sinks[0].wait_for(1, WAIT).await;
    assert_eq!(got[0].mail_from, "");
    assert_eq!(got[0].mail_params, ["RET=HDRS", "ENVID=QQ314159"]);
    assert_eq!(got[0].rcpts, ["good@mixed.test"]);
    assert_eq!(
        got[0].rcpt_params[0],
        ["NOTIFY=SUCCESS,FAILURE", "ORCPT=rfc822;good@mixed.test"]
    );
}

#[tokio::test]
async fn permanent_rcpt_failure_is_final() {
    let zone = ZoneBuilder::new("perm.test")
        .mx("@", 10, "a")
        .mx("@", 20, "b")
        .addr("a", lo(2))
        .addr("b", lo(3))
        .build();
    let (port, sinks, dns) = setup(
        vec![
            (2, SinkConfig::with_behaviour(Behaviour::PermFailRcpt)),
            (3, SinkConfig::accept()),
        ],
        &zone,
    )
    .await;
    let report = deliver(
        &config(port),
        &dns.resolver(),
        &delivery("perm.test", &["x@perm.test"], BODY),
    )
    .await;
    assert!(report.outcomes[0].is_failed());
    assert_eq!(
        status(&report.outcomes[0]),
        (550, Some(EnhancedStatus::new(5, 1, 1)))
    );
    assert_eq!(sinks[1].connections(), 0);
}
