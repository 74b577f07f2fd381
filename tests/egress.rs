//! Outbound isolation and shaping, end to end: the whole server in-process, sources bound to
//! 127.0.0.2 / 127.0.0.3, a sink on 127.0.0.1 that records the peer address, the connection
//! each message came on and how many connections were open at once.

mod common;

use common::dns::{TestDns, ZoneBuilder};
use common::harness::{self, T0, advance, eventually, queue_id, send_message};
use common::lo;
use common::sink::{Sink, SinkConfig};
use sealpost::queue::ManualClock;
use sealpost::spool::RcptStatus;
use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(20);

fn body(from: &str, n: usize) -> Vec<u8> {
    format!(
        "From: {from}\r\nTo: bob@example.com\r\nSubject: m{n}\r\nMessage-ID: <m{n}.{from}>\r\n\r\nhello {n}\r\n"
    )
    .into_bytes()
}

async fn dns() -> TestDns {
    TestDns::start(&ZoneBuilder::new("example.net.").build()).await
}

/// A sink on 127.0.0.1 and config text routing example.com to it, plus `extra`.
async fn setup(
    sink: SinkConfig,
    dns: &TestDns,
    spool: &std::path::Path,
    extra: &str,
) -> (Sink, String) {
    let sink = Sink::start(SocketAddr::new(lo(1), 0), sink).await.unwrap();
    let extra = format!(
        "[[route]]\ndomain = \"example.com\"\nhost = \"127.0.0.1\"\nport = {}\n{extra}",
        sink.addr().port()
    );
    let text = harness::config_text(spool, dns.addr(), 25, true, &extra);
    (sink, text)
}

const TWO_POOLS: &str = r#"
[[source]]
name = "ip2"
address = "127.0.0.2"
ehlo_name = "out2.example.net"
[[source]]
name = "ip3"
address = "127.0.0.3"
ehlo_name = "out3.example.net"
[[pool]]
name = "tx"
sources = ["ip2"]
[[pool]]
name = "bulk"
sources = ["ip3"]
[[class]]
name = "transactional"
pool = "tx"
priority = 10
sender_domains = ["tx.example.net"]
[[class]]
name = "marketing"
pool = "bulk"
sender_domains = ["news.example.net"]
"#;

#[tokio::test]
async fn classes_leave_from_their_pools_sources() {
    let dns = dns().await;
    let spool = tempfile::tempdir().unwrap();
    let (sink, text) = setup(SinkConfig::accept(), &dns, spool.path(), TWO_POOLS).await;
    let running = harness::start(&text, Arc::new(ManualClock::new(T0))).await;
    let addr = running.smtp_addrs[0];

    for n in 0..3 {
        let r = send_message(
            addr,
            "a@tx.example.net",
            &["bob@example.com"],
            &body("a@tx.example.net", n),
        )
        .await;
        queue_id(&r);
        let r = send_message(
            addr,
            "b@news.example.net",
            &["bob@example.com"],
            &body("b@news.example.net", n),
        )
        .await;
        queue_id(&r);
    }
    // The header picks a class for a trusted client too.
    let mut m = b"X-Sealpost-Class: marketing\r\n".to_vec();
    m.extend(body("c@tx.example.net", 9));
    queue_id(&send_message(addr, "c@tx.example.net", &["bob@example.com"], &m).await);

    let got = sink.wait_for(7, WAIT).await;
    for m in &got {
        let expect = if m.mail_from == "a@tx.example.net" {
            (lo(2), "out2.example.net")
        } else {
            (lo(3), "out3.example.net")
        };
        assert_eq!((m.peer, m.helo.as_str()), expect, "{}", m.mail_from);
    }
    running.shutdown().await;
}

#[tokio::test]
async fn weighted_pool_uses_every_member() {
    let dns = dns().await;
    let spool = tempfile::tempdir().unwrap();
    let extra = r#"
[[source]]
name = "ip2"
address = "127.0.0.2"
[[source]]
name = "ip3"
address = "127.0.0.3"
[[pool]]
name = "both"
sources = { ip2 = 1, ip3 = 1 }
[[class]]
name = "default"
pool = "both"
[shaping.default]
max_messages_per_connection = 1
"#;
    let (sink, text) = setup(SinkConfig::accept(), &dns, spool.path(), extra).await;
    let running = harness::start(&text, Arc::new(ManualClock::new(T0))).await;
    let addr = running.smtp_addrs[0];
    for n in 0..12 {
        queue_id(
            &send_message(
                addr,
                "a@example.net",
                &["bob@example.com"],
                &body("a@example.net", n),
            )
            .await,
        );
    }
    let got = sink.wait_for(12, WAIT).await;
    let peers: HashSet<_> = got.iter().map(|m| m.peer).collect();
    assert_eq!(peers, HashSet::from([lo(2), lo(3)]));
    running.shutdown().await;
}

/// Writes `n` marketing messages straight into the spool (one flush for all) and wakes the
/// queue: as if a bulk sender had just handed them over.
async fn flood(running: &sealpost::server::Running, n: usize) {
    let spool = running.queue.spool().clone();
    for i in 0..n {
        let id = format!("FLOOD{i:010}");
        let env = harness::envelope(
            &id,
            "b@news.example.net",
            "bob@example.com",
            Some("marketing"),
            100,
        );
        spool.insert(&env, &body("b@news.example.net", i)).unwrap();
    }
    spool.flush().unwrap();
    running.queue.wake();
}

#[tokio::test]
async fn a_marketing_flood_does_not_hold_back_a_password_reset() {
    const FLOOD: usize = 10_000;
    let dns = dns().await;
    let spool = tempfile::tempdir().unwrap();
    // Each message costs the sink 2 ms and the bulk pool may open 2 connections: the flood
    // needs well over 10 s to drain.
    let extra = format!("{TWO_POOLS}\n[shaping.default]\nmax_connections = 2\n");
    let (sink, text) = setup(
        SinkConfig::accept().with_delay(Duration::from_millis(2)),
        &dns,
        spool.path(),
        &extra,
    )
    .await;
    let running = harness::start(&text, Arc::new(ManualClock::new(T0))).await;
    let addr = running.smtp_addrs[0];
    flood(&running, FLOOD).await;
    eventually("the flood starts", WAIT, || sink.messages().len() >= 20).await;

    let reply = send_message(
        addr,
        "reset@tx.example.net",
        &["bob@example.com"],
        &body("reset@tx.example.net", 0),
    )
    .await;
    queue_id(&reply);
    let deadline = tokio::time::Instant::now() + WAIT;
    let (reset, bulk_before) = loop {
        let got = sink.messages();
        if let Some(pos) = got
            .iter()
            .position(|m| m.mail_from == "reset@tx.example.net")
        {
            break (got[pos].clone(), got[..pos].len());
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the reset never arrived"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(reset.peer, lo(2));
    assert!(
        bulk_before < FLOOD / 2,
        "the reset waited behind {bulk_before} of {FLOOD} bulk messages"
    );
    assert!(
        sink.max_concurrent() <= 3,
        "bulk connections exceeded the limit: {}",
        sink.max_concurrent()
    );
    running.shutdown().await;
}

#[tokio::test]
async fn connection_limit_and_reuse_with_rset() {
    let dns = dns().await;
    let spool = tempfile::tempdir().unwrap();
    let extra = "[shaping.default]\nmax_connections = 2\nmax_messages_per_connection = 100\n";
    let (sink, text) = setup(
        SinkConfig::accept().with_delay(Duration::from_millis(30)),
        &dns,
        spool.path(),
        extra,
    )
    .await;
    let running = harness::start(&text, Arc::new(ManualClock::new(T0))).await;
    let addr = running.smtp_addrs[0];
    let sends = (0..20).map(|n| async move {
        queue_id(
            &send_message(
                addr,
                "a@example.net",
                &["bob@example.com"],
                &body("a@example.net", n),
            )
            .await,
        )
    });
    futures_join(sends).await;
    let got = sink.wait_for(20, WAIT).await;
    assert!(
        sink.max_concurrent() <= 2,
        "{} connections at once",
        sink.max_concurrent()
    );
    let conns: HashSet<_> = got.iter().map(|m| m.conn).collect();
    assert!(
        conns.len() < 20,
        "no connection was reused: {} connections",
        conns.len()
    );
    assert!(
        sink.rsets() > 0,
        "reused connections reset between messages"
    );
    running.shutdown().await;
}

#[tokio::test]
async fn message_rate_spaces_messages() {
    let dns = dns().await;
    let spool = tempfile::tempdir().unwrap();
    let extra = "[shaping.default]\nmessage_rate = \"10/s\"\nmessage_burst = 1\n";
    let (sink, text) = setup(SinkConfig::accept(), &dns, spool.path(), extra).await;
    let running = harness::start(&text, Arc::new(ManualClock::new(T0))).await;
    let addr = running.smtp_addrs[0];
    let sends = (0..6).map(|n| async move {
        queue_id(
            &send_message(
                addr,
                "a@example.net",
                &["bob@example.com"],
                &body("a@example.net", n),
            )
            .await,
        )
    });
    futures_join(sends).await;
    let mut got = sink.wait_for(6, WAIT).await;
    got.sort_by_key(|m| m.at);
    // At 10/s, six messages span at least 5 x 100 ms of send starts; the sink sees ends of
    // data, which jitter by the transfer time, so allow a little.
    let span = got[5].at - got[0].at;
    assert!(
        span >= Duration::from_millis(440),
        "six messages within {span:?}"
    );
    running.shutdown().await;
}

#[tokio::test]
async fn warmup_cap_delays_the_rest_to_the_next_day() {
    let dns = dns().await;
    let spool = tempfile::tempdir().unwrap();
    // T0 is 2023-11-14 (UTC): day 1 allows 3 messages, day 2 allows 100.
    let extra = r#"
[[source]]
name = "new-ip"
address = "127.0.0.2"
warmup = [3, 100]
warmup_start = "2023-11-14"
"#;
    let (sink, text) = setup(SinkConfig::accept(), &dns, spool.path(), extra).await;
    let clock = Arc::new(ManualClock::new(T0));
    let running = harness::start(&text, clock.clone()).await;
    let addr = running.smtp_addrs[0];
    let mut ids = Vec::new();
    for n in 0..5 {
        ids.push(queue_id(
            &send_message(
                addr,
                "a@example.net",
                &["bob@example.com"],
                &body("a@example.net", n),
            )
            .await,
        ));
    }
    sink.wait_for(3, WAIT).await;
    let spool_h = running.queue.spool().clone();
    eventually("two wait for tomorrow", WAIT, || {
        let left = spool_h.list().unwrap();
        left.len() == 2
            && left.iter().all(|e| {
                e.next_due >= T0 - T0 % 86_400 + 86_400
                    && matches!(&e.recipients[0].status, RcptStatus::Deferred { reply } if reply.contains("warm-up"))
            })
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(sink.messages().len(), 3, "the cap held");
    // Not bounced, not lost: tomorrow they go.
    advance(&running, &clock, 86_400);
    sink.wait_for(5, WAIT).await;
    eventually("queue empties", WAIT, || spool_h.list().unwrap().is_empty()).await;
    running.shutdown().await;
}

/// Runs futures concurrently to completion.
async fn futures_join<F: std::future::Future<Output = String> + Send + 'static>(
    fs: impl Iterator<Item = F>,
) -> Vec<String> {
    let handles: Vec<_> = fs.map(tokio::spawn).collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.expect("send task"));
    }
    out
}
