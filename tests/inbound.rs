//! The SMTP listener over real sockets: relay control, smuggling, STARTTLS with real TLS,
//! pinned client certificates, connection limits, graceful shutdown, and the message corpus
//! relayed byte for byte.

mod common;

use common::dns::{TestDns, ZoneBuilder};
use common::harness::{self, Client, T0, eventually, queue_id, send_message};
use common::lo;
use common::sink::{Sink, SinkConfig, bind_same_port};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use sealpost::queue::ManualClock;
use sha2::Digest;
use std::sync::Arc;
use std::time::Duration;
use tokio_rustls::TlsConnector;

const WAIT: Duration = Duration::from_secs(10);

struct World {
    _dns: TestDns,
    mx: Sink,
    _spool: tempfile::TempDir,
    running: sealpost::server::Running,
}

/// example.com (local) and example.org (remote) both have their MX on 127.0.0.2.
async fn world(trusted: bool, extra: &str) -> World {
    let dns = TestDns::start_zones(&[
        &ZoneBuilder::new("example.com.")
            .mx("@", 10, "mx.example.com.")
            .addr("mx", lo(2))
            .build(),
        &ZoneBuilder::new("example.org.")
            .mx("@", 10, "mx.example.org.")
            .addr("mx", lo(2))
            .build(),
    ])
    .await;
    let (port, mut ls) = bind_same_port(&[lo(2)]).await;
    let mx = Sink::from_listener(ls.remove(0), SinkConfig::accept());
    let spool = tempfile::tempdir().unwrap();
    let text = harness::config_text(spool.path(), dns.addr(), port, trusted, extra);
    let running = harness::start(&text, Arc::new(ManualClock::new(T0))).await;
    World {
        _dns: dns,
        mx,
        _spool: spool,
        running,
    }
}

fn tls_connector(
    identity: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
) -> TlsConnector {
    let cfg = sealpost::outbound::tls::opportunistic_client_config_with_identity(identity).unwrap();
    TlsConnector::from(cfg)
}

#[tokio::test]
async fn untrusted_clients_reach_local_domains_only() {
    let w = world(false, "").await;
    let (mut c, _) = Client::connect(w.running.smtp_addrs[0]).await;
    c.cmd("EHLO client.example.net").await;
    assert_eq!(c.cmd("MAIL FROM:<antispam@[192.0.2.1]>").await.code, 250);
    for rcpt in ["<x@example.org>", "<relaytest@example.org@example.com>"] {
        let r = c.cmd(&format!("RCPT TO:{rcpt}")).await;
        assert!(r.code >= 500, "{rcpt} must be refused: {r}");
    }
    let r = c.cmd("RCPT TO:<x@example.org>").await;
    assert_eq!(
        (r.code, r.status.unwrap().to_string()),
        (550, "5.7.1".to_string())
    );
    let r = c.cmd("RCPT TO:<relaytest@example.net@>").await;
    assert_eq!(
        (r.code, r.status.unwrap().to_string()),
        (501, "5.1.3".to_string())
    );
    // % and ! are local-part characters at a local domain: delivered to example.com's MX,
    // never to example.net.
    assert_eq!(
        c.cmd("RCPT TO:<relaytest%example.net@example.com>")
            .await
            .code,
        250
    );
    assert_eq!(
        c.cmd("RCPT TO:<example.net!relaytest@example.com>")
            .await
            .code,
        250
    );
    assert_eq!(c.cmd("DATA").await.code, 354);
    c.send(b"Subject: probe\r\n\r\nx\r\n.\r\n").await;
    queue_id(&c.reply().await);
    let got = w.mx.wait_for(1, WAIT).await;
    assert_eq!(
        got[0].rcpts,
        vec![
            "relaytest%example.net@example.com",
            "example.net!relaytest@example.com"
        ]
    );
    w.running.shutdown().await;
}

#[tokio::test]
async fn smuggled_end_of_data_queues_nothing() {
    let w = world(true, "").await;
    let (mut c, _) = Client::connect(w.running.smtp_addrs[0]).await;
    c.cmd("EHLO client.example.net").await;
    c.cmd("MAIL FROM:<alice@example.net>").await;
    c.cmd("RCPT TO:<bob@example.com>").await;
    assert_eq!(c.cmd("DATA").await.code, 354);
    c.send(b"From: alice@example.net\r\nSubject: one\r\n\r\nhello\n.\r\nMAIL FROM:<ceo@example.com>\r\nRCPT TO:<bob@example.com>\r\nDATA\r\nFrom: ceo@example.com\r\n\r\nplease pay\r\n.\r\n").await;
    let r = c.reply().await;
    assert_eq!(
        (r.code, r.status.unwrap().to_string()),
        (550, "5.6.0".to_string()),
        "{r}"
    );
    // The embedded commands never ran: the next reply answers our NOOP.
    assert_eq!(c.cmd("NOOP").await.code, 250);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(w.mx.messages().is_empty());
    assert!(w.running.queue.spool().list().unwrap().is_empty());
    w.running.shutdown().await;
}

#[tokio::test]
async fn starttls_discards_pipelined_plaintext_and_records_tls_in_received() {
    let w = world(true, "").await;
    let (mut c, _) = Client::connect(w.running.smtp_addrs[0]).await;
    let ehlo = c.cmd("EHLO client.example.net").await;
    assert!(ehlo.lines.iter().any(|l| l == "STARTTLS"), "{ehlo:?}");
    c.send(b"STARTTLS\r\nRSET\r\nMAIL FROM:<attacker@example.org>\r\n")
        .await;
    let r = c.reply().await;
    assert_eq!(r.code, 220);
    let tls = tls_connector(None)
        .connect(ServerName::try_from("mx.sealpost.test").unwrap(), c.stream)
        .await
        .expect("TLS handshake");
    let mut c = Client::over(tls);
    // Session reset: no reply was ever sent for the injected RSET/MAIL, and MAIL needs EHLO.
    let r = c.cmd("MAIL FROM:<alice@example.net>").await;
    assert_eq!(
        (r.code, r.status.unwrap().to_string()),
        (503, "5.5.1".to_string()),
        "{r}"
    );
    let ehlo = c.cmd("EHLO client.example.net").await;
    assert!(!ehlo.lines.iter().any(|l| l == "STARTTLS"));
    assert_eq!(c.cmd("MAIL FROM:<alice@example.net>").await.code, 250);
    assert_eq!(c.cmd("RCPT TO:<bob@example.com>").await.code, 250);
    assert_eq!(c.cmd("DATA").await.code, 354);
    c.send(b"Subject: tls\r\n\r\nsecret\r\n.\r\n").await;
    queue_id(&c.reply().await);
    let got = w.mx.wait_for(1, WAIT).await;
    let data = String::from_utf8_lossy(&got[0].data).to_string();
    assert!(
        data.contains("with ESMTPS\r\n\t(using TLSv1.3 with cipher TLS13_"),
        "{data}"
    );
    w.running.shutdown().await;
}

#[tokio::test]
async fn pinned_client_certificate_may_relay_and_others_may_not() {
    let ck = rcgen::generate_simple_self_signed(vec!["connector.example.net".to_string()]).unwrap();
    let der = ck.cert.der().clone();
    let fp = hex::encode(sha2::Sha256::digest(der.as_ref()));
    let other = rcgen::generate_simple_self_signed(vec!["other.example.net".to_string()]).unwrap();
    let dns_world = world_with_pin(&fp).await;
    let addr = dns_world.running.smtp_addrs[0];
    for (identity, expect) in [
        (Some((vec![der.clone()], key_of(&ck))), 250u16),
        (Some((vec![other.cert.der().clone()], key_of(&other))), 550),
        (None, 550),
    ] {
        let (mut c, _) = Client::connect(addr).await;
        c.cmd("EHLO client.example.net").await;
        assert_eq!(c.cmd("STARTTLS").await.code, 220);
        let tls = tls_connector(identity)
            .connect(ServerName::try_from("mx.sealpost.test").unwrap(), c.stream)
            .await
            .expect("handshake");
        let mut c = Client::over(tls);
        c.cmd("EHLO client.example.net").await;
        c.cmd("MAIL FROM:<app@example.net>").await;
        let r = c.cmd("RCPT TO:<someone@example.org>").await;
        assert_eq!(r.code, expect, "{r}");
    }
    dns_world.running.shutdown().await;
}

fn key_of(ck: &rcgen::CertifiedKey<rcgen::KeyPair>) -> PrivateKeyDer<'static> {
    PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(ck.signing_key.serialize_der()))
}

async fn world_with_pin(fp: &str) -> World {
    let dns = TestDns::start(
        &ZoneBuilder::new("example.org.")
            .mx("@", 10, "mx.example.org.")
            .addr("mx", lo(2))
            .build(),
    )
    .await;
    let (port, mut ls) = bind_same_port(&[lo(2)]).await;
    let mx = Sink::from_listener(ls.remove(0), SinkConfig::accept());
    let spool = tempfile::tempdir().unwrap();
    let text = harness::config_text(spool.path(), dns.addr(), port, false, "").replace(
        "trusted_networks = []",
        &format!("trusted_networks = []\nclient_cert_fingerprints = [\"{fp}\"]"),
    );
    let running = harness::start(&text, Arc::new(ManualClock::new(T0))).await;
    World {
        _dns: dns,
        mx,
        _spool: spool,
        running,
    }
}

#[tokio::test]
async fn connections_per_ip_are_limited() {
    let dns = TestDns::start(&ZoneBuilder::new("example.com.").build()).await;
    let spool = tempfile::tempdir().unwrap();
    let text = harness::config_text(spool.path(), dns.addr(), 25, true, "").replace(
        "idle_timeout_secs = 30",
        "idle_timeout_secs = 30\nmax_connections_per_ip = 2",
    );
    let running = harness::start(&text, Arc::new(ManualClock::new(T0))).await;
    let addr = running.smtp_addrs[0];
    let (_a, ga) = Client::connect(addr).await;
    let (_b, gb) = Client::connect(addr).await;
    let (mut c, gc) = Client::connect(addr).await;
    assert_eq!((ga.code, gb.code), (220, 220));
    assert_eq!(
        (gc.code, gc.status.unwrap().to_string()),
        (421, "4.7.0".to_string())
    );
    assert!(c.closed().await);
    drop(_a);
    // The slot frees when a connection ends.
    let mut ok = false;
    for _ in 0..50 {
        let (_d, gd) = Client::connect(addr).await;
        if gd.code == 220 {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(ok, "slot not released");
    running.shutdown().await;
}

#[tokio::test]
async fn shutdown_lets_an_open_transaction_finish_then_says_421() {
    let w = world(true, "").await;
    let addr = w.running.smtp_addrs[0];
    let (mut busy, _) = Client::connect(addr).await;
    busy.cmd("EHLO client.example.net").await;
    busy.cmd("MAIL FROM:<alice@example.net>").await;
    busy.cmd("RCPT TO:<bob@example.com>").await;
    let (mut idle, _) = Client::connect(addr).await;
    idle.cmd("EHLO idle.example.net").await;
    let queue = w.running.queue.clone();
    let stopper = tokio::spawn(w.running.shutdown());
    // The idle session is told at once.
    let r = idle.reply().await;
    assert_eq!(
        (r.code, r.status.unwrap().to_string()),
        (421, "4.3.2".to_string())
    );
    // The busy one finishes its message, which is durably queued, then gets 421.
    assert_eq!(busy.cmd("DATA").await.code, 354);
    busy.send(b"Subject: last\r\n\r\nx\r\n.\r\n").await;
    let id = queue_id(&busy.reply().await);
    assert_eq!(busy.reply().await.code, 421);
    stopper.await.unwrap();
    let delivered = w.mx.messages().len() == 1;
    assert!(
        delivered || queue.spool().envelope(&id).unwrap().is_some(),
        "message lost"
    );
}

#[tokio::test]
async fn corpus_messages_relay_byte_identical() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/corpus/eml");
    if !dir.exists() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "corpus missing under CI=true: {}",
            dir.display()
        );
        eprintln!("SKIP: {} is absent", dir.display());
        return;
    }
    let mut files = Vec::new();
    for sub in std::fs::read_dir(&dir).unwrap() {
        let sub = sub.unwrap().path();
        for f in std::fs::read_dir(&sub).unwrap() {
            files.push(f.unwrap().path());
        }
    }
    files.sort();
    assert!(files.len() > 10, "corpus looks empty");
    let w = world(true, "").await;
    let addr = w.running.smtp_addrs[0];
    let (mut relayed, mut refused) = (0usize, Vec::new());
    for f in &files {
        let raw = std::fs::read(f).unwrap();
        let crlf = to_crlf(&raw);
        let (mut c, _) = Client::connect(addr).await;
        c.cmd("EHLO client.example.net").await;
        assert_eq!(
            c.cmd("MAIL FROM:<corpus@example.net> BODY=8BITMIME")
                .await
                .code,
            250
        );
        assert_eq!(c.cmd("RCPT TO:<bob@example.com>").await.code, 250);
        assert_eq!(c.cmd("DATA").await.code, 354);
        c.send(&sealpost::outbound::DotStuffer::stuff_all(&crlf))
            .await;
        if !crlf.ends_with(b"\r\n") && !crlf.is_empty() {
            c.send(b"\r\n").await;
        }
        c.send(b".\r\n").await;
        let r = c.reply().await;
        if r.code != 250 {
            assert!(
                r.code >= 500,
                "{}: refused without a precise reply: {r}",
                f.display()
            );
            refused.push((f.clone(), r.to_string()));
            continue;
        }
        relayed += 1;
        let got = w.mx.wait_for(relayed, WAIT).await;
        let data = &got[relayed - 1].data;
        let mut expected = crlf.clone();
        if !expected.ends_with(b"\r\n") {
            expected.extend_from_slice(b"\r\n");
        }
        assert!(data.starts_with(b"Received: "), "{}", f.display());
        assert!(
            data.ends_with(&expected),
            "{}: not byte-identical",
            f.display()
        );
        let trace_len = data.len() - expected.len();
        assert!(
            !data[..trace_len].windows(4).any(|x| x == b"\r\n\r\n"),
            "{}",
            f.display()
        );
    }
    eprintln!(
        "corpus: {relayed} relayed byte-identical, {} refused: {refused:?}",
        refused.len()
    );
    // Only malformed messages may be refused, and only for a line-ending or line-length fault.
    for (f, r) in &refused {
        assert!(
            f.to_string_lossy().contains("malformed"),
            "{}: {r}",
            f.display()
        );
        assert!(r.starts_with("550 5.6.0"), "{}: {r}", f.display());
    }
    let spool = w.running.queue.spool().clone();
    eventually("queue empties", WAIT, || spool.list().unwrap().is_empty()).await;
    w.running.shutdown().await;
}

/// Every line end (CRLF, LF or a lone CR) becomes CRLF, as an SMTP client sends it.
fn to_crlf(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len() + raw.len() / 20);
    let mut i = 0;
    while i < raw.len() {
        match raw[i] {
            b'\r' if raw.get(i + 1) == Some(&b'\n') => {
                out.extend_from_slice(b"\r\n");
                i += 1;
            }
            b'\r' | b'\n' => out.extend_from_slice(b"\r\n"),
            b => out.push(b),
        }
        i += 1;
    }
    out
}

#[tokio::test]
async fn loops_postmaster_and_bad_hello_names_get_precise_answers() {
    let w = world(false, "").await;
    let addr = w.running.smtp_addrs[0];
    let (mut c, _) = Client::connect(addr).await;
    // An unchecked EHLO name once produced a 2,000-octet Received line no next hop accepted.
    let r = c.cmd(&format!("EHLO {}", "h".repeat(2000))).await;
    assert_eq!(
        (r.code, r.status.unwrap().to_string()),
        (501, "5.5.4".to_string())
    );
    let r = c.cmd("EHLO caf\u{e9}.example").await;
    assert_eq!(r.code, 501);
    assert_eq!(c.cmd("EHLO client.example.net").await.code, 250);
    // RFC 5321 §4.5.1: <postmaster> is accepted even from an untrusted client.
    assert_eq!(c.cmd("MAIL FROM:<alice@example.net>").await.code, 250);
    assert_eq!(c.cmd("RCPT TO:<postmaster>").await.code, 250);
    assert_eq!(c.cmd("RSET").await.code, 250);
    // A message that has been around 50 hops is a loop: refused, nothing queued.
    c.cmd("MAIL FROM:<alice@example.net>").await;
    c.cmd("RCPT TO:<bob@example.com>").await;
    assert_eq!(c.cmd("DATA").await.code, 354);
    let mut msg = String::new();
    for i in 0..50 {
        msg.push_str(&format!(
            "Received: from hop{i}.example.net by mx.example.com\r\n"
        ));
    }
    msg.push_str("Subject: loop\r\n\r\nround and round\r\n.\r\n");
    c.send(msg.as_bytes()).await;
    let r = c.reply().await;
    assert_eq!(
        (r.code, r.status.unwrap().to_string()),
        (554, "5.4.6".to_string()),
        "{r}"
    );
    assert!(w.running.queue.spool().list().unwrap().is_empty());
    w.running.shutdown().await;
}

#[tokio::test]
async fn postmaster_from_a_stranger_reaches_the_first_local_domain() {
    // Untrusted client; no [relay] postmaster: <postmaster> is postmaster@example.com (the
    // first local domain), delivered by its MX, not bounced off our own hostname.
    let w = world(false, "").await;
    let r = send_message(
        w.running.smtp_addrs[0],
        "alice@example.net",
        &["postmaster"],
        b"Subject: hi\r\n\r\nhello\r\n",
    )
    .await;
    assert_eq!(r.code, 250, "{r}");
    let got = w.mx.wait_for(1, Duration::from_secs(10)).await;
    assert_eq!(got[0].rcpts, ["postmaster@example.com"]);
    w.running.shutdown().await;
}

#[tokio::test]
async fn a_message_that_would_eat_the_spool_reserve_gets_452_4_3_1_and_nothing_is_queued() {
    let dns = TestDns::start(&ZoneBuilder::new("example.com.").build()).await;
    let spool = tempfile::tempdir().unwrap();
    // A reserve larger than any test machine's free space: every message is refused.
    let text = harness::config_text(spool.path(), dns.addr(), 25, true, "").replace(
        "idle_timeout_secs = 30",
        "idle_timeout_secs = 30\nspool_min_free_mb = 1000000000000",
    );
    let running = harness::start(&text, Arc::new(ManualClock::new(T0))).await;
    let addr = running.smtp_addrs[0];
    let r = send_message(
        addr,
        "alice@example.net",
        &["bob@example.org"],
        b"Subject: full\r\n\r\nhello\r\n",
    )
    .await;
    assert_eq!(
        (r.code, r.status.map(|s| s.to_string())),
        (452, Some("4.3.1".to_string())),
        "{r:?}"
    );
    assert!(running.queue.spool().list().unwrap().is_empty());
    running.shutdown().await;
}
