//! End-to-end queue behaviour: the whole server in-process, a real DNS server and SMTP sinks
//! on 127.0.0.x, retry and expiry driven by a manual clock.

mod common;

use common::dns::{TestDns, ZoneBuilder};
use common::harness::{self, Client, T0, advance, eventually, queue_id, send_message};
use common::lo;
use common::sink::{Behaviour, Sink, SinkConfig, bind_same_port};
use sealpost::queue::ManualClock;
use sealpost::spool::RcptStatus;
use std::sync::Arc;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(10);
const BODY: &[u8] = b"From: alice@example.net\r\nTo: bob@example.com\r\nSubject: hi\r\nMessage-ID: <m1@example.net>\r\n\r\nhello\r\n..dot line\r\n";

/// example.com -> mx.example.com (127.0.0.3), example.net -> 127.0.0.2 (the sender's MX,
/// where DSNs go), example.org has a null MX.
fn zones() -> Vec<String> {
    vec![
        ZoneBuilder::new("example.com.")
            .mx("@", 10, "mx.example.com.")
            .addr("mx", lo(3))
            .build(),
        ZoneBuilder::new("example.net.")
            .mx("@", 10, "mx.example.net.")
            .addr("mx", lo(2))
            .build(),
        ZoneBuilder::new("example.org.").null_mx("@").build(),
    ]
}

async fn dns() -> TestDns {
    let z = zones();
    let refs: Vec<&str> = z.iter().map(String::as_str).collect();
    TestDns::start_zones(&refs).await
}

#[tokio::test]
async fn accepts_then_delivers_by_mx_with_a_received_header() {
    let dns = dns().await;
    let (port, mut ls) = bind_same_port(&[lo(2), lo(3)]).await;
    let mx = Sink::from_listener(ls.remove(1), SinkConfig::accept());
    let _sender_mx = Sink::from_listener(ls.remove(0), SinkConfig::accept());
    let spool = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let text = harness::config_text(spool.path(), dns.addr(), port, true, "");
    let running = harness::start(&text, clock.clone()).await;
    let addr = running.smtp_addrs[0];

    let reply = send_message(addr, "alice@example.net", &["bob@example.com"], BODY).await;
    let id = queue_id(&reply);
    assert_eq!(
        reply.status.map(|s| s.to_string()).as_deref(),
        Some("2.0.0")
    );

    let got = mx.wait_for(1, WAIT).await;
    assert_eq!(got[0].mail_from, "alice@example.net");
    assert_eq!(got[0].rcpts, vec!["bob@example.com"]);
    let data = String::from_utf8(got[0].data.clone()).unwrap();
    assert!(data.starts_with("Received: from client.example.net ([127.0.0.1])\r\n\tby mx.sealpost.test (Sealpost) with ESMTP\r\n"), "{data}");
    assert!(data.contains(&format!("\tid {id}\r\n")), "{data}");
    // Everything after our trace header is the original, byte for byte (dot unstuffed).
    let original = b"From: alice@example.net\r\nTo: bob@example.com\r\nSubject: hi\r\nMessage-ID: <m1@example.net>\r\n\r\nhello\r\n.dot line\r\n";
    assert!(got[0].data.ends_with(original));
    let received_len = got[0].data.len() - original.len();
    assert!(!data[..received_len].contains("\r\n\r\n"));
    // Re-stuffed on the wire.
    assert!(got[0].raw_data.ends_with(b"hello\r\n..dot line\r\n.\r\n"));

    let spool = running.queue.spool().clone();
    eventually("queue empties", WAIT, || spool.list().unwrap().is_empty()).await;
    running.shutdown().await;
}

#[tokio::test]
async fn deferred_mail_is_retried_when_the_clock_says_so() {
    let dns = dns().await;
    let (port, mut ls) = bind_same_port(&[lo(2), lo(3)]).await;
    drop(ls.remove(1)); // 127.0.0.3: connection refused for now
    let _sender_mx = Sink::from_listener(ls.remove(0), SinkConfig::accept());
    let spool = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let text = harness::config_text(spool.path(), dns.addr(), port, true, "");
    let running = harness::start(&text, clock.clone()).await;
    let id = queue_id(
        &send_message(
            running.smtp_addrs[0],
            "alice@example.net",
            &["bob@example.com"],
            BODY,
        )
        .await,
    );
    let q = running.queue.clone();
    let deferred = || {
        q.spool().envelope(&id).unwrap().is_some_and(|e| {
            matches!(&e.recipients[0].status, RcptStatus::Deferred { reply } if reply.starts_with("451 4.4.1"))
        })
    };
    eventually("first attempt deferred", WAIT, deferred).await;
    let env = q.spool().envelope(&id).unwrap().unwrap();
    // First retry 5 minutes (+/-10%) after the attempt.
    assert!(
        (T0 + 270..=T0 + 330).contains(&env.next_due),
        "{}",
        env.next_due
    );
    assert_eq!(env.attempts, 1);

    let mx = Sink::start((lo(3), port).into(), SinkConfig::accept())
        .await
        .unwrap();
    // Not yet due: 4 minutes later nothing is attempted.
    advance(&running, &clock, 240);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(mx.connections(), 0, "retried too early");
    advance(&running, &clock, 100);
    let got = mx.wait_for(1, WAIT).await;
    assert_eq!(got[0].rcpts, vec!["bob@example.com"]);
    eventually("queue empties", WAIT, || {
        q.spool().list().unwrap().is_empty()
    })
    .await;
    running.shutdown().await;
}

#[tokio::test]
async fn expired_mail_bounces_to_the_sender_with_a_dsn() {
    let dns = dns().await;
    let (port, mut ls) = bind_same_port(&[lo(2), lo(3)]).await;
    let _mx = Sink::from_listener(
        ls.remove(1),
        SinkConfig::with_behaviour(Behaviour::TempFailRcpt),
    );
    let sender_mx = Sink::from_listener(ls.remove(0), SinkConfig::accept());
    let spool = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let extra = "[queue]\nmax_age_secs = 7200\nmin_retry_secs = 300\nmax_retry_secs = 900\n";
    let text = harness::config_text(spool.path(), dns.addr(), port, true, extra);
    let running = harness::start(&text, clock.clone()).await;
    let (mut c, _) = Client::connect(running.smtp_addrs[0]).await;
    c.cmd("EHLO client.example.net").await;
    assert_eq!(
        c.cmd("MAIL FROM:<alice@example.net> ENVID=env+2B1 RET=HDRS")
            .await
            .code,
        250
    );
    assert_eq!(
        c.cmd("RCPT TO:<bob@example.com> ORCPT=rfc822;bob@example.com")
            .await
            .code,
        250
    );
    assert_eq!(c.cmd("DATA").await.code, 354);
    c.send(BODY).await;
    c.send(b".\r\n").await;
    let id = queue_id(&c.reply().await);
    let q = running.queue.clone();
    for _ in 0..40 {
        if !sender_mx.messages().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        advance(&running, &clock, 600);
    }
    let got = sender_mx.wait_for(1, WAIT).await;
    let dsn = String::from_utf8_lossy(&got[0].data).to_string();
    assert_eq!(got[0].mail_from, "", "DSN must use the null reverse path");
    assert_eq!(got[0].rcpts, vec!["alice@example.net"]);
    assert!(
        dsn.contains("Content-Type: multipart/report; report-type=delivery-status"),
        "{dsn}"
    );
    assert!(dsn.contains("Original-Envelope-Id: env+1\r\n"), "{dsn}");
    assert!(
        dsn.contains("Original-Recipient: rfc822;bob@example.com\r\n"),
        "{dsn}"
    );
    assert!(
        dsn.contains(
            "Final-Recipient: rfc822; bob@example.com\r\nAction: failed\r\nStatus: 4.4.7\r\n"
        ),
        "{dsn}"
    );
    assert!(dsn.contains("Content-Type: text/rfc822-headers"), "{dsn}");
    assert!(
        !dsn.contains("hello\r\n"),
        "RET=HDRS must not return the body"
    );
    eventually("original and DSN leave the queue", WAIT, || {
        q.spool().list().unwrap().is_empty()
    })
    .await;
    assert!(q.spool().envelope(&id).unwrap().is_none());
    running.shutdown().await;
}

#[tokio::test]
async fn permanent_failures_bounce_once_and_never_loop() {
    let dns = dns().await;
    let (port, mut ls) = bind_same_port(&[lo(2), lo(3)]).await;
    let mx = Sink::from_listener(
        ls.remove(1),
        SinkConfig::with_behaviour(Behaviour::PermFailRcpt),
    );
    let sender_mx = Sink::from_listener(ls.remove(0), SinkConfig::accept());
    let spool = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    // Every send here goes to the same unknown user: without this, the first hard bounce
    // would suppress it and the last send would fail by suppression (tests/suppression.rs)
    // instead of at the remote, which is what this test looks at.
    let extra = "[suppression]\nenabled = false\n";
    let text = harness::config_text(spool.path(), dns.addr(), port, true, extra);
    let running = harness::start(&text, clock.clone()).await;
    let addr = running.smtp_addrs[0];
    let q = running.queue.clone();

    // C21 b: the null sender gets no DSN.
    queue_id(&send_message(addr, "", &["nobody@example.com"], BODY).await);
    // NOTIFY=NEVER: no DSN.
    let (mut c, _) = Client::connect(addr).await;
    c.cmd("EHLO client.example.net").await;
    c.cmd("MAIL FROM:<alice@example.net>").await;
    assert_eq!(
        c.cmd("RCPT TO:<nobody@example.com> NOTIFY=NEVER")
            .await
            .code,
        250
    );
    c.cmd("DATA").await;
    c.send(BODY).await;
    c.send(b".\r\n").await;
    queue_id(&c.reply().await);
    // C21 c: the DSN to alice@example.com is itself refused (550): no DSN about the DSN.
    queue_id(&send_message(addr, "alice@example.com", &["nobody@example.com"], BODY).await);
    // The DSN is queued before the message it reports on leaves the spool, so an empty
    // spool means the DSN was tried too (connections are reused: count is not messages).
    eventually("all three refused and the DSN tried", WAIT, || {
        q.spool().list().unwrap().is_empty() && mx.connections() >= 1
    })
    .await;
    assert!(
        sender_mx.messages().is_empty(),
        "no DSN may reach example.net yet"
    );

    // One ordinary failure: exactly one DSN with the remote's status.
    queue_id(&send_message(addr, "alice@example.net", &["nobody@example.com"], BODY).await);
    let got = sender_mx.wait_for(1, WAIT).await;
    let dsn = String::from_utf8_lossy(&got[0].data).to_string();
    assert!(dsn.contains("Action: failed\r\nStatus: 5.1.1\r\n"), "{dsn}");
    assert!(dsn.contains("Remote-MTA: dns; mx.example.com"), "{dsn}");
    assert!(dsn.contains("Diagnostic-Code: smtp; 550 5.1.1"), "{dsn}");
    eventually("queue empties", WAIT, || {
        q.spool().list().unwrap().is_empty()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(sender_mx.messages().len(), 1);
    running.shutdown().await;
}

#[tokio::test]
async fn null_mx_domain_fails_at_once_with_5_1_10() {
    let dns = dns().await;
    let (port, mut ls) = bind_same_port(&[lo(2)]).await;
    let sender_mx = Sink::from_listener(ls.remove(0), SinkConfig::accept());
    let spool = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let text = harness::config_text(spool.path(), dns.addr(), port, true, "");
    let running = harness::start(&text, clock).await;
    queue_id(
        &send_message(
            running.smtp_addrs[0],
            "alice@example.net",
            &["x@example.org"],
            BODY,
        )
        .await,
    );
    let got = sender_mx.wait_for(1, WAIT).await;
    let dsn = String::from_utf8_lossy(&got[0].data).to_string();
    assert!(
        dsn.contains(
            "Final-Recipient: rfc822; x@example.org\r\nAction: failed\r\nStatus: 5.1.10\r\n"
        ),
        "{dsn}"
    );
    running.shutdown().await;
}

#[tokio::test]
async fn queued_mail_survives_a_restart() {
    let dns = dns().await;
    let (port, mut ls) = bind_same_port(&[lo(2), lo(3)]).await;
    drop(ls.remove(1));
    let _sender_mx = Sink::from_listener(ls.remove(0), SinkConfig::accept());
    let spool = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let text = harness::config_text(spool.path(), dns.addr(), port, true, "");
    let running = harness::start(&text, clock.clone()).await;
    let mut ids = Vec::new();
    for i in 0..3 {
        let rcpt = format!("r{i}@example.com");
        ids.push(queue_id(
            &send_message(running.smtp_addrs[0], "alice@example.net", &[&rcpt], BODY).await,
        ));
    }
    let q = running.queue.clone();
    eventually("all deferred", WAIT, || {
        q.spool().list().unwrap().iter().all(|e| e.attempts == 1)
    })
    .await;
    running.shutdown().await;
    drop(q);

    let mx = Sink::start((lo(3), port).into(), SinkConfig::accept())
        .await
        .unwrap();
    let running = harness::start(&text, clock.clone()).await;
    assert_eq!(running.queue.spool().list().unwrap().len(), 3);
    advance(&running, &clock, 400);
    let got = mx.wait_for(3, WAIT).await;
    let mut rcpts: Vec<String> = got.iter().map(|m| m.rcpts[0].clone()).collect();
    rcpts.sort();
    assert_eq!(
        rcpts,
        vec!["r0@example.com", "r1@example.com", "r2@example.com"]
    );
    let q = running.queue.clone();
    eventually("queue empties", WAIT, || {
        q.spool().list().unwrap().is_empty()
    })
    .await;
    running.shutdown().await;
}

#[tokio::test]
async fn one_connection_carries_all_recipients_of_a_domain() {
    let dns = dns().await;
    let (port, mut ls) = bind_same_port(&[lo(2), lo(3)]).await;
    let mx = Sink::from_listener(ls.remove(1), SinkConfig::accept());
    let _sender_mx = Sink::from_listener(ls.remove(0), SinkConfig::accept());
    let spool = tempfile::tempdir().unwrap();
    let text = harness::config_text(spool.path(), dns.addr(), port, true, "");
    let running = harness::start(&text, Arc::new(ManualClock::new(T0))).await;
    let rcpts = ["a@example.com", "b@example.com", "c@example.com"];
    queue_id(&send_message(running.smtp_addrs[0], "alice@example.net", &rcpts, BODY).await);
    let got = mx.wait_for(1, WAIT).await;
    assert_eq!(got[0].rcpts, rcpts);
    assert_eq!(mx.connections(), 1);
    running.shutdown().await;
}

#[tokio::test]
async fn admin_interface_works_while_the_server_runs() {
    use sealpost::admin::{Request, Response};
    let dns = dns().await;
    let (port, mut ls) = bind_same_port(&[lo(2), lo(3)]).await;
    drop(ls.remove(1));
    let _sender_mx = Sink::from_listener(ls.remove(0), SinkConfig::accept());
    let spool = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let text = harness::config_text(spool.path(), dns.addr(), port, true, "");
    let running = harness::start(&text, clock.clone()).await;
    let addr = running.smtp_addrs[0];
    let keep = queue_id(&send_message(addr, "alice@example.net", &["a@example.com"], BODY).await);
    let gone = queue_id(&send_message(addr, "alice@example.net", &["b@example.com"], BODY).await);
    let q = running.queue.clone();
    eventually("both deferred", WAIT, || {
        q.spool()
            .list()
            .unwrap()
            .iter()
            .filter(|e| e.attempts == 1)
            .count()
            == 2
    })
    .await;

    let Response::Envelopes { messages } =
        admin_request(spool.path(), Request::List).await.unwrap()
    else {
        panic!("list failed");
    };
    assert_eq!(messages.len(), 2);
    assert!(
        messages
            .iter()
            .all(|m| m.recipients[0].status.name() == "deferred")
    );
    let r = admin_request(spool.path(), Request::Delete { id: gone.clone() })
        .await
        .unwrap();
    assert!(matches!(r, Response::Done { .. }), "{r:?}");
    let r = admin_request(spool.path(), Request::Show { id: gone.clone() })
        .await
        .unwrap();
    assert!(matches!(r, Response::NotFound { .. }), "{r:?}");
    let r = admin_request(
        spool.path(),
        Request::Show {
            id: "../etc".into(),
        },
    )
    .await
    .unwrap();
    assert!(matches!(r, Response::NotFound { .. }), "{r:?}");

    // Retry makes it due now: with the MX back, it is delivered without moving the clock.
    let mx = Sink::start((lo(3), port).into(), SinkConfig::accept())
        .await
        .unwrap();
    let r = admin_request(spool.path(), Request::Retry { id: keep.clone() })
        .await
        .unwrap();
    assert!(matches!(r, Response::Done { .. }), "{r:?}");
    let got = mx.wait_for(1, WAIT).await;
    assert_eq!(got[0].rcpts, vec!["a@example.com"]);
    eventually("queue empties", WAIT, || {
        q.spool().list().unwrap().is_empty()
    })
    .await;
    assert_eq!(
        mx.messages().len(),
        1,
        "the deleted message must not be delivered"
    );
    running.shutdown().await;
}

#[tokio::test]
async fn notify_success_is_reported_when_the_next_hop_has_no_dsn() {
    let dns = dns().await;
    let (port, mut ls) = bind_same_port(&[lo(2), lo(3)]).await;
    let mx = Sink::from_listener(ls.remove(1), SinkConfig::accept());
    let sender_mx = Sink::from_listener(ls.remove(0), SinkConfig::accept());
    let spool = tempfile::tempdir().unwrap();
    let text = harness::config_text(spool.path(), dns.addr(), port, true, "");
    let running = harness::start(&text, Arc::new(ManualClock::new(T0))).await;
    let (mut c, _) = Client::connect(running.smtp_addrs[0]).await;
    c.cmd("EHLO client.example.net").await;
    c.cmd("MAIL FROM:<alice@example.net> RET=FULL").await;
    assert_eq!(
        c.cmd("RCPT TO:<bob@example.com> NOTIFY=SUCCESS,FAILURE")
            .await
            .code,
        250
    );
    c.cmd("DATA").await;
    c.send(BODY).await;
    c.send(b".\r\n").await;
    queue_id(&c.reply().await);
    mx.wait_for(1, WAIT).await;
    let got = sender_mx.wait_for(1, WAIT).await;
    let dsn = String::from_utf8_lossy(&got[0].data).to_string();
    assert!(
        dsn.contains("Action: relayed\r\nStatus: 2.0.0\r\n"),
        "{dsn}"
    );
    assert!(
        dsn.contains("Content-Type: message/rfc822"),
        "RET=FULL: {dsn}"
    );
    running.shutdown().await;
}

#[tokio::test]
async fn queue_flush_makes_every_deferred_message_due_now() {
    use sealpost::admin::{Request, Response};
    let dns = dns().await;
    let (port, mut ls) = bind_same_port(&[lo(2), lo(3)]).await;
    drop(ls.remove(1)); // example.com's MX refuses connections for now
    let _sender_mx = Sink::from_listener(ls.remove(0), SinkConfig::accept());
    let spool = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let text = harness::config_text(spool.path(), dns.addr(), port, true, "");
    let running = harness::start(&text, clock.clone()).await;
    let addr = running.smtp_addrs[0];
    for r in ["a", "b", "c"] {
        queue_id(
            &send_message(
                addr,
                "alice@example.net",
                &[&format!("{r}@example.com")],
                BODY,
            )
            .await,
        );
    }
    let q = running.queue.clone();
    eventually("all deferred", WAIT, || {
        let l = q.spool().list().unwrap();
        l.len() == 3 && l.iter().all(|e| e.attempts == 1 && e.next_due > T0)
    })
    .await;
    let mx = Sink::start((lo(3), port).into(), SinkConfig::accept())
        .await
        .unwrap();
    let r = admin_request(spool.path(), Request::Flush).await.unwrap();
    assert!(matches!(r, Response::Flushed { count: 3 }), "{r:?}");
    let got = mx.wait_for(3, WAIT).await;
    assert_eq!(got.len(), 3);
    eventually("queue empties", WAIT, || {
        q.spool().list().unwrap().is_empty()
    })
    .await;
    running.shutdown().await;
}

/// The admin CLI's request path with auditing off (these tests check the queue, not the log).
async fn admin_request(
    spool_dir: &std::path::Path,
    req: sealpost::admin::Request,
) -> Result<sealpost::admin::Response, sealpost::admin::AdminError> {
    let audit = sealpost::audit::AuditLog::disabled();
    let actor = sealpost::audit::Actor::admin("test");
    sealpost::admin::request(spool_dir, req, &audit, actor).await
}
