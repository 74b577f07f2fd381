//! Bounce classification and the suppression list, end to end: a hard bounce suppresses the
//! address for its class only; a later send fails at once with the reason; DSNs and ARF
//! complaints sent to a feedback domain suppress what they report; List-Unsubscribe headers
//! pass through unbroken.

mod common;

use common::dns::{TestDns, ZoneBuilder};
use common::harness::{self, T0, eventually, queue_id, send_message};
use common::lo;
use common::sink::{Sink, SinkConfig};
use sealpost::queue::ManualClock;
use sealpost::suppression::{ALL_CLASSES, SuppressionSource};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(15);

const CLASSES: &str = r#"
[[class]]
name = "transactional"
sender_domains = ["tx.example.net"]
[[class]]
name = "marketing"
sender_domains = ["news.example.net"]
[suppression]
feedback_domains = ["fb.example.net"]
"#;

/// A sink on 127.0.0.1 that refuses `gone@` and `later@` and takes the rest; example.com,
/// the senders' domains and the feedback domain all route to it.
async fn setup(spool: &std::path::Path, dns: &TestDns) -> (Sink, String, Arc<AtomicUsize>) {
    let gone_tries = Arc::new(AtomicUsize::new(0));
    let tries = gone_tries.clone();
    let cfg = SinkConfig::accept().with_rcpt_script(move |c| {
        if c.address.starts_with("gone@") {
            tries.fetch_add(1, Ordering::SeqCst);
            Some("550 5.1.1 <gone@example.com>: user unknown".into())
        } else if c.address.starts_with("blocked@") {
            Some("554 5.7.1 rejected: your IP is on a blocklist".into())
        } else {
            None
        }
    });
    let sink = Sink::start(SocketAddr::new(lo(1), 0), cfg).await.unwrap();
    let mut extra = String::new();
    for d in [
        "example.com",
        "tx.example.net",
        "news.example.net",
        "fb.example.net",
    ] {
        extra += &format!(
            "[[route]]\ndomain = \"{d}\"\nhost = \"127.0.0.1\"\nport = {}\n",
            sink.addr().port()
        );
    }
    extra += CLASSES;
    let text = harness::config_text(spool, dns.addr(), 25, true, &extra);
    (sink, text, gone_tries)
}

fn msg(from: &str, to: &str, n: u32) -> Vec<u8> {
    format!(
        "From: {from}\r\nTo: {to}\r\nSubject: n{n}\r\nMessage-ID: <{n}.{from}>\r\n\r\nhello\r\n"
    )
    .into_bytes()
}

#[tokio::test]
async fn hard_bounce_suppresses_for_the_class_and_later_sends_fail_fast() {
    let dns = TestDns::start(&ZoneBuilder::new("example.org.").build()).await;
    let spool = tempfile::tempdir().unwrap();
    let (sink, text, gone_tries) = setup(spool.path(), &dns).await;
    let running = harness::start(&text, Arc::new(ManualClock::new(T0))).await;
    let addr = running.smtp_addrs[0];
    let list = running.queue.suppressions().clone();

    // 1. A marketing send to gone@ bounces hard; blocked@ bounces for a block.
    let from = "news@news.example.net";
    queue_id(
        &send_message(
            addr,
            from,
            &["gone@example.com", "blocked@example.com"],
            &msg(from, "x", 1),
        )
        .await,
    );
    let got = sink.wait_for(1, WAIT).await; // the DSN to the sender
    assert_eq!(got[0].mail_from, "");
    eventually("gone@ suppressed", WAIT, || {
        list.check("gone@example.com", "marketing")
            .unwrap()
            .is_some()
    })
    .await;
    let e = list
        .check("GONE@example.com", "marketing")
        .unwrap()
        .unwrap();
    assert_eq!(
        (e.source, e.class.as_str()),
        (SuppressionSource::Bounce, "marketing")
    );
    assert!(e.reason.contains("550 5.1.1"), "{}", e.reason);
    assert!(
        list.check("blocked@example.com", "marketing")
            .unwrap()
            .is_none(),
        "a block is our problem, not the address's"
    );
    assert!(
        list.check("gone@example.com", "transactional")
            .unwrap()
            .is_none()
    );

    // 2. The next marketing send fails before any connection, with the reason in the DSN.
    assert_eq!(gone_tries.load(Ordering::SeqCst), 1);
    queue_id(
        &send_message(
            addr,
            from,
            &["gone@example.com"],
            &msg(from, "gone@example.com", 2),
        )
        .await,
    );
    let got = sink.wait_for(2, WAIT).await;
    let dsn = String::from_utf8_lossy(&got[1].data).into_owned();
    assert_eq!(got[1].mail_from, "");
    assert!(
        dsn.contains("suppression list for class marketing"),
        "{dsn}"
    );
    assert!(dsn.contains("Status: 5.7.1"), "{dsn}");
    assert_eq!(
        gone_tries.load(Ordering::SeqCst),
        1,
        "no RCPT for a suppressed address"
    );

    // 3. A transactional send to the same address is still attempted.
    let tx = "reset@tx.example.net";
    queue_id(
        &send_message(
            addr,
            tx,
            &["gone@example.com"],
            &msg(tx, "gone@example.com", 3),
        )
        .await,
    );
    let got = sink.wait_for(3, WAIT).await;
    assert!(
        got[2].data.windows(6).any(|w| w == b"5.1.1 "),
        "a fresh bounce, not a suppression"
    );
    assert_eq!(gone_tries.load(Ordering::SeqCst), 2);
    running.shutdown().await;
}

#[tokio::test]
async fn feedback_domain_reads_dsns_and_complaints_instead_of_relaying() {
    let dns = TestDns::start(&ZoneBuilder::new("example.org.").build()).await;
    let spool = tempfile::tempdir().unwrap();
    let (sink, text, _) = setup(spool.path(), &dns).await;
    let running = harness::start(&text, Arc::new(ManualClock::new(T0))).await;
    let addr = running.smtp_addrs[0];
    let list = running.queue.suppressions().clone();

    let dsn = "From: MAILER-DAEMON@mx.example.org\r\nTo: bounces@fb.example.net\r\nSubject: failure\r\nMIME-Version: 1.0\r\nContent-Type: multipart/report; report-type=delivery-status; boundary=\"B\"\r\n\r\n--B\r\nContent-Type: text/plain\r\n\r\nSorry.\r\n--B\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.example.org\r\n\r\nFinal-Recipient: rfc822; ann@example.org\r\nAction: failed\r\nStatus: 5.1.1\r\nDiagnostic-Code: smtp; 550 5.1.1 no such user\r\n\r\nFinal-Recipient: rfc822; full@example.org\r\nAction: failed\r\nStatus: 5.2.2\r\n\r\n--B\r\nContent-Type: text/rfc822-headers\r\n\r\nFrom: news@news.example.net\r\nX-Sealpost-Class: marketing\r\n--B--\r\n";
    queue_id(&send_message(addr, "", &["bounces@fb.example.net"], dsn.as_bytes()).await);
    let arf = "From: fbl@example.org\r\nTo: fbl@fb.example.net\r\nMIME-Version: 1.0\r\nContent-Type: multipart/report; report-type=feedback-report; boundary=\"X\"\r\n\r\n--X\r\nContent-Type: text/plain\r\n\r\nabuse report\r\n--X\r\nContent-Type: message/feedback-report\r\n\r\nFeedback-Type: abuse\r\nVersion: 1\r\nOriginal-Rcpt-To: <bea@example.org>\r\n\r\n--X--\r\n";
    queue_id(
        &send_message(
            addr,
            "fbl@example.org",
            &["fbl@fb.example.net"],
            arf.as_bytes(),
        )
        .await,
    );

    let spool_h = running.queue.spool().clone();
    eventually("both read", WAIT, || spool_h.list().unwrap().is_empty()).await;
    let ann = list
        .check("ann@example.org", "marketing")
        .unwrap()
        .expect("ann suppressed");
    assert_eq!(ann.source, SuppressionSource::Dsn);
    assert!(
        list.check("ann@example.org", "transactional")
            .unwrap()
            .is_none()
    );
    assert!(
        list.check("full@example.org", "marketing")
            .unwrap()
            .is_none(),
        "a full mailbox is not suppressed"
    );
    let bea = list
        .check("bea@example.org", "transactional")
        .unwrap()
        .expect("bea suppressed");
    assert_eq!(
        (bea.source, bea.class.as_str()),
        (SuppressionSource::Complaint, ALL_CLASSES)
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(sink.messages().is_empty(), "feedback is not relayed");
    running.shutdown().await;
}

#[tokio::test]
async fn list_unsubscribe_headers_pass_through_unbroken() {
    let dns = TestDns::start(&ZoneBuilder::new("example.org.").build()).await;
    let spool = tempfile::tempdir().unwrap();
    let (sink, text, _) = setup(spool.path(), &dns).await;
    let running = harness::start(&text, Arc::new(ManualClock::new(T0))).await;
    let headers = "List-Unsubscribe: <https://news.example.net/u/opaque-token-0123456789abcdef>,\r\n <mailto:unsub@news.example.net?subject=unsubscribe%20bob>\r\nList-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n";
    let body = format!(
        "From: news@news.example.net\r\nTo: bob@example.com\r\n{headers}Subject: offers\r\n\r\nhi\r\n"
    );
    queue_id(
        &send_message(
            running.smtp_addrs[0],
            "news@news.example.net",
            &["bob@example.com"],
            body.as_bytes(),
        )
        .await,
    );
    let got = sink.wait_for(1, WAIT).await;
    let data = String::from_utf8_lossy(&got[0].data);
    assert!(data.contains(headers), "{data}");
    running.shutdown().await;
}

/// GET a path from the metrics endpoint; returns (status line, body).
async fn http_get(addr: SocketAddr, path: &str) -> (String, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    let (head, body) = out.split_once("\r\n\r\n").unwrap();
    (head.lines().next().unwrap().to_string(), body.to_string())
}

fn metric(body: &str, name_and_labels: &str) -> Option<f64> {
    body.lines()
        .find_map(|l| l.strip_prefix(name_and_labels)?.trim().parse().ok())
}

#[tokio::test]
async fn prometheus_endpoint_counts_outcomes_per_class() {
    let dns = TestDns::start(&ZoneBuilder::new("example.org.").build()).await;
    let spool = tempfile::tempdir().unwrap();
    let (sink, text, _) = setup(spool.path(), &dns).await;
    let text = format!("{text}\n[metrics]\naddress = \"127.0.0.1:0\"\n");
    let running = harness::start(&text, Arc::new(ManualClock::new(T0))).await;
    let addr = running.smtp_addrs[0];
    let maddr = running.metrics_addr.expect("metrics endpoint");
    let from = "news@news.example.net";
    queue_id(
        &send_message(
            addr,
            from,
            &["ok@example.com", "gone@example.com"],
            &msg(from, "x", 1),
        )
        .await,
    );
    sink.wait_for(2, WAIT).await; // the delivery and the DSN
    let spool_h = running.queue.spool().clone();
    eventually("queue empties", WAIT, || spool_h.list().unwrap().is_empty()).await;
    queue_id(&send_message(addr, from, &["gone@example.com"], &msg(from, "x", 2)).await);
    sink.wait_for(3, WAIT).await;
    eventually("queue empties", WAIT, || spool_h.list().unwrap().is_empty()).await;

    let (status, body) = http_get(maddr, "/metrics").await;
    assert_eq!(status, "HTTP/1.1 200 OK");
    let get = |k: &str| metric(&body, k).unwrap_or_else(|| panic!("{k} missing in\n{body}"));
    assert_eq!(
        get("sealpost_recipients_total{event=\"delivered\",class=\"marketing\"}"),
        1.0
    );
    assert_eq!(
        get("sealpost_recipients_total{event=\"bounced\",class=\"marketing\"}"),
        1.0
    );
    assert_eq!(
        get("sealpost_recipients_total{event=\"suppressed\",class=\"marketing\"}"),
        1.0
    );
    // Two sends plus the DSNs we generated.
    assert!(get("sealpost_messages_accepted_total") >= 2.0);
    assert!(get("sealpost_spool_flush_seconds_count") >= 2.0);
    assert_eq!(
        get("sealpost_spool_flush_seconds_bucket{le=\"+Inf\"}"),
        get("sealpost_spool_flush_seconds_count")
    );
    assert!(body.contains("# TYPE sealpost_spool_flush_seconds histogram"));
    assert!(metric(&body, "sealpost_open_connections").is_some());
    // Configured classes stay visible at 0 when their queue is empty.
    assert_eq!(get("sealpost_queue_messages{class=\"transactional\"}"), 0.0);
    let (status, _) = http_get(maddr, "/nope").await;
    assert_eq!(status, "HTTP/1.1 404 Not Found");
    running.shutdown().await;
}
