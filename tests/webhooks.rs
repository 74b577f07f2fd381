//! Events and webhooks end to end, over real HTTP on loopback against the in-process server:
//! the event log paged by cursor with scopes and bad parameters, bounce and suppression
//! events, the queue summary, webhook subscriptions through the API and the config file,
//! signatures checked by a receiver with its own HMAC, retries after 500s (the manual clock
//! moves instead of sleeping), giving up after the window, and pending deliveries surviving
//! a restart.

mod common;

use common::dns::{TestDns, ZoneBuilder};
use common::harness::{self, T0, eventually};
use common::lo;
use common::sink::{Sink, SinkConfig};
use sealpost::api::clients::{ClientStore, NewClient, Scope, TREE};
use sealpost::events::Event;
use sealpost::queue::ManualClock;
use sealpost::server::Running;
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(15);

/// A server with the API, `example.com` routed to a sink that refuses `gone@` (550) and
/// defers `later@` (451).
struct Setup {
    running: Option<Running>,
    text: String,
    _sink: Sink,
    clock: Arc<ManualClock>,
    base: String,
    http: reqwest::Client,
    _spool: tempfile::TempDir,
    _dns: TestDns,
}

impl Setup {
    async fn new(more: &str) -> Self {
        let dns = TestDns::start(&ZoneBuilder::new("example.org.").build()).await;
        let spool = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let sink = Sink::start(
            SocketAddr::new(lo(1), 0),
            SinkConfig::accept().with_rcpt_script(|c| match c.address {
                "gone@example.com" => Some("550 5.1.1 no such user".into()),
                "later@example.com" => Some("451 4.3.0 try later".into()),
                _ => None,
            }),
        )
        .await
        .unwrap_or_else(|e| panic!("sink: {e}"));
        let extra = format!(
            "[[route]]\ndomain = \"example.com\"\nhost = \"127.0.0.1\"\nport = {}\n{more}\n[api]\naddress = \"127.0.0.1:0\"\n",
            sink.addr().port()
        );
        let text = harness::config_text(spool.path(), dns.addr(), 25, true, &extra);
        let clock = Arc::new(ManualClock::new(T0));
        let running = harness::start(&text, clock.clone()).await;
        let base = format!(
            "http://{}",
            running.api_addr.unwrap_or_else(|| panic!("API"))
        );
        let http = reqwest::Client::builder()
            .no_proxy()
            .build()
            .unwrap_or_else(|e| panic!("client: {e}"));
        Self {
            running: Some(running),
            text,
            _sink: sink,
            clock,
            base,
            http,
            _spool: spool,
            _dns: dns,
        }
    }

    fn running(&self) -> &Running {
        self.running
            .as_ref()
            .unwrap_or_else(|| panic!("server running"))
    }

    /// Stops the server and starts it again on the same spool and config.
    async fn restart(&mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown().await;
        }
        let running = harness::start(&self.text, self.clock.clone()).await;
        self.base = format!(
            "http://{}",
            running.api_addr.unwrap_or_else(|| panic!("API"))
        );
        self.running = Some(running);
    }

    fn client(&self, name: &str, scopes: &[Scope]) -> NewClient {
        let tree = self
            .running()
            .queue
            .spool()
            .tree(TREE)
            .unwrap_or_else(|e| panic!("tree: {e}"));
        ClientStore::new(tree)
            .add(name, scopes, T0)
            .unwrap_or_else(|e| panic!("add client: {e}"))
    }

    /// Moves the clock and wakes the scheduler and the webhook dispatcher.
    fn advance(&self, secs: u64) {
        self.clock.advance(secs);
        self.running().queue.wake();
        self.running().webhooks.wake();
    }

    async fn get(&self, path: &str, c: &NewClient) -> (u16, Value) {
        done(
            self.http
                .get(format!("{}{path}", self.base))
                .header("x-api-key", key(c)),
        )
        .await
    }

    async fn post(&self, path: &str, c: &NewClient, body: &Value) -> (u16, Value) {
        done(
            self.http
                .post(format!("{}{path}", self.base))
                .header("x-api-key", key(c))
                .header("content-type", "application/json")
                .body(body.to_string()),
        )
        .await
    }

    async fn send(&self, c: &NewClient, to: &str) -> String {
        let msg =
            json!({"from": "app@example.com", "to": [to], "subject": "hi", "text": "hello\n"});
        let (code, body) = self.post("/v1/messages", c, &msg).await;
        assert_eq!(code, 202, "{body}");
        body["id"].as_str().unwrap_or_default().to_string()
    }

    /// Every event visible to `c`, following `next` with pages of `limit`.
    async fn all_events(&self, c: &NewClient, limit: usize) -> Vec<Value> {
        let mut out = Vec::new();
        let mut after = 0;
        loop {
            let (code, body) = self
                .get(&format!("/v1/events?after={after}&limit={limit}"), c)
                .await;
            assert_eq!(code, 200, "{body}");
            let page = body["events"].as_array().cloned().unwrap_or_default();
            assert!(page.len() <= limit, "{body}");
            out.extend(page);
            after = body["next"]
                .as_u64()
                .unwrap_or_else(|| panic!("next: {body}"));
            if body["more"] != true {
                return out;
            }
        }
    }
}

async fn done(r: reqwest::RequestBuilder) -> (u16, Value) {
    let resp = r.send().await.unwrap_or_else(|e| panic!("request: {e}"));
    let status = resp.status().as_u16();
    let body = resp.bytes().await.unwrap_or_else(|e| panic!("body: {e}"));
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

fn key(c: &NewClient) -> String {
    format!("{}:{}", c.client.id, c.secret)
}

/// Polls the admin event log until `pred` holds for the list of events.
async fn wait_events(s: &Setup, admin: &NewClient, what: &str, pred: impl Fn(&[Value]) -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let events = s.all_events(admin, 1000).await;
        if pred(&events) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}: {events:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn count(events: &[Value], kind: &str, rcpt: &str) -> usize {
    events
        .iter()
        .filter(|e| e["type"] == kind && e["recipient"] == rcpt)
        .count()
}

#[tokio::test]
async fn events_page_by_cursor_and_each_client_sees_its_own() {
    let s = Setup::new("").await;
    let admin = s.client("ops", &[Scope::Admin]);
    let a = s.client("app-a", &[Scope::Send, Scope::Read]);
    let b = s.client("app-b", &[Scope::Send, Scope::Read]);
    let sender = s.client("sender", &[Scope::Send]);
    let id_a = s.send(&a, "bob@example.com").await;
    let id_b = s.send(&b, "carol@example.com").await;
    let id_later = s.send(&a, "later@example.com").await;
    wait_events(&s, &admin, "two deliveries and a deferral", |e| {
        count(e, "delivered", "bob@example.com") == 1
            && count(e, "delivered", "carol@example.com") == 1
            && count(e, "deferred", "later@example.com") == 1
    })
    .await;

    // Admin: every event, one per page, ids strictly increasing, the same as one big page.
    let one_by_one = s.all_events(&admin, 1).await;
    let at_once = s.all_events(&admin, 1000).await;
    assert_eq!(one_by_one, at_once);
    let ids: Vec<u64> = at_once.iter().filter_map(|e| e["id"].as_u64()).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    assert_eq!(
        at_once.iter().filter(|e| e["type"] == "accepted").count(),
        3
    );
    let accepted_a = at_once
        .iter()
        .find(|e| e["type"] == "accepted" && e["queue_id"] == id_a.as_str())
        .unwrap_or_else(|| panic!("accepted event of {id_a}: {at_once:?}"));
    assert_eq!(accepted_a["recipients"], json!(["bob@example.com"]));
    assert_eq!(accepted_a["api_client"], a.client.id.as_str());
    assert_eq!(accepted_a["sender"], "app@example.com");
    let deferred = at_once
        .iter()
        .find(|e| e["type"] == "deferred")
        .unwrap_or_else(|| panic!("deferred: {at_once:?}"));
    assert_eq!(deferred["queue_id"], id_later.as_str());
    assert!(
        deferred["reply"]
            .as_str()
            .is_some_and(|r| r.starts_with("451 4.3.0")),
        "{deferred}"
    );
    assert!(deferred["remote"].is_string(), "{deferred}");

    // The message status lists the message's own events.
    let (code, status) = s.get(&format!("/v1/messages/{id_a}"), &a).await;
    assert_eq!(code, 200, "{status}");
    let types: Vec<_> = status["events"]
        .as_array()
        .map(|v| v.iter().map(|e| e["type"].clone()).collect())
        .unwrap_or_default();
    assert_eq!(types, [json!("accepted"), json!("delivered")], "{status}");
    assert_eq!(status["events"][1]["recipient"], "bob@example.com");

    // A cursor in the middle gives exactly the rest.
    let (code, body) = s.get(&format!("/v1/events?after={}", ids[1]), &admin).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["events"].as_array().map(Vec::len), Some(ids.len() - 2));
    assert_eq!(body["next"], ids[ids.len() - 1]);
    assert_eq!(body["more"], false);

    // `read` clients see only the events of their own messages, also one by one.
    let seen_a = s.all_events(&a, 1).await;
    assert!(!seen_a.is_empty());
    assert!(
        seen_a
            .iter()
            .all(|e| e["api_client"] == a.client.id.as_str()),
        "{seen_a:?}"
    );
    let queues: std::collections::BTreeSet<_> = seen_a
        .iter()
        .filter_map(|e| e["queue_id"].as_str())
        .collect();
    assert_eq!(
        queues,
        [id_a.as_str(), id_later.as_str()].into_iter().collect()
    );
    let seen_b = s.all_events(&b, 1000).await;
    assert_eq!(seen_b.len(), 2, "{seen_b:?}");
    assert!(seen_b.iter().all(|e| e["queue_id"] == id_b.as_str()));

    // Scopes and bad parameters.
    assert_eq!(s.get("/v1/events", &sender).await.0, 403);
    let (code, _) = done(s.http.get(format!("{}/v1/events", s.base))).await;
    assert_eq!(code, 401);
    for (query, field) in [
        ("after=abc", "after"),
        ("after=-3", "after"),
        ("limit=0", "limit"),
        ("limit=5000", "limit"),
        ("after=1&limit=x", "limit"),
    ] {
        let (code, body) = s.get(&format!("/v1/events?{query}"), &admin).await;
        assert_eq!(code, 400, "{query}: {body}");
        assert_eq!(body["field"], field, "{query}: {body}");
    }
    let (code, body) = s.get("/v1/events?after=99999999", &admin).await;
    assert_eq!(code, 200);
    assert_eq!(body["events"], json!([]));
    assert_eq!(body["next"], 99_999_999);

    // The queue summary: the deferred message is still queued.
    assert_eq!(s.get("/v1/queue", &a).await.0, 403);
    let (code, body) = s.get("/v1/queue", &admin).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["messages"], 1, "{body}");
    assert_eq!(body["classes"]["default"]["messages"], 1, "{body}");
    assert_eq!(
        body["classes"]["default"]["recipients"]["deferred"], 1,
        "{body}"
    );
    assert_eq!(body["classes"]["default"]["due"], 0, "{body}");
    assert_eq!(body["classes"]["transactional"], Value::Null, "{body}");
    assert_eq!(
        body["classes"]["bounce"],
        json!({"messages": 0, "in_flight": 0, "due": 0,
               "recipients": {"queued": 0, "deferred": 0, "delivered": 0, "failed": 0}}),
        "{body}"
    );
}

#[tokio::test]
async fn bounces_and_suppressions_are_events_and_listeners_see_them_in_order() {
    let s = Setup::new("").await;
    let seen: Arc<Mutex<Vec<Event>>> = Arc::default();
    let sink = seen.clone();
    s.running().events.subscribe(Arc::new(move |e: &Event| {
        sink.lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(e.clone())
    }));
    let admin = s.client("ops", &[Scope::Admin]);
    let a = s.client("app", &[Scope::Send, Scope::Read]);
    let first = s.send(&a, "gone@example.com").await;
    wait_events(&s, &admin, "the bounce", |e| {
        count(e, "bounced", "gone@example.com") == 1
    })
    .await;
    let second = s.send(&a, "gone@example.com").await;
    wait_events(&s, &admin, "the suppression", |e| {
        count(e, "suppressed", "gone@example.com") == 1
    })
    .await;
    let events = s.all_events(&a, 100).await;
    let bounced = events
        .iter()
        .find(|e| e["type"] == "bounced" && e["recipient"] == "gone@example.com")
        .unwrap_or_else(|| panic!("{events:?}"));
    assert_eq!(bounced["queue_id"], first.as_str());
    assert!(
        bounced["reply"]
            .as_str()
            .is_some_and(|r| r.starts_with("550 5.1.1")),
        "{bounced}"
    );
    assert!(bounced["remote"].is_string() && bounced["method"].is_string());
    assert_eq!(bounced["class"], "default");
    let suppressed = events
        .iter()
        .find(|e| e["type"] == "suppressed")
        .unwrap_or_else(|| panic!("{events:?}"));
    assert_eq!(suppressed["queue_id"], second.as_str());
    assert!(
        suppressed["reply"]
            .as_str()
            .is_some_and(|r| r.contains("suppression list")),
        "{suppressed}"
    );
    // The in-process listener saw every event (the DSNs' too), in order, as stored.
    let all = s.all_events(&admin, 1000).await;
    let heard = seen.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let heard_ids: Vec<u64> = heard.iter().map(|e| e.id).collect();
    let stored_ids: Vec<u64> = all.iter().filter_map(|e| e["id"].as_u64()).collect();
    // (A DSN's events may land between the two reads: compare what both saw.)
    assert!(heard_ids.len() >= stored_ids.len());
    assert_eq!(heard_ids[..stored_ids.len()], stored_ids);
    assert_eq!(
        serde_json::to_value(&heard[0]).unwrap_or_default(),
        all[0],
        "listeners get the stored record"
    );
    // No message body in any event.
    assert!(
        !serde_json::to_string(&all)
            .unwrap_or_default()
            .contains("hello")
    );
}

/// One request the receiver got.
#[derive(Debug, Clone)]
struct Hit {
    timestamp: String,
    signature: String,
    event_id: String,
    event_type: String,
    webhook_id: String,
    body: Vec<u8>,
    answered: u16,
}

/// A webhook receiver on loopback: answers 500 while `failures` is above 0 (counting it
/// down), then 200.
struct Receiver {
    addr: SocketAddr,
    failures: Arc<AtomicUsize>,
    hits: Arc<Mutex<Vec<Hit>>>,
}

impl Receiver {
    async fn start(failures: usize) -> Self {
        use axum::http::{HeaderMap, StatusCode};
        let failures = Arc::new(AtomicUsize::new(failures));
        let hits: Arc<Mutex<Vec<Hit>>> = Arc::default();
        let (f, h) = (failures.clone(), hits.clone());
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move |headers: HeaderMap, body: axum::body::Bytes| {
                let (f, h) = (f.clone(), h.clone());
                async move {
                    let header = |n: &str| {
                        headers
                            .get(n)
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or_default()
                            .to_string()
                    };
                    let fail = f
                        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                        .is_ok();
                    let status = if fail {
                        StatusCode::INTERNAL_SERVER_ERROR
                    } else {
                        StatusCode::OK
                    };
                    h.lock().unwrap_or_else(|p| p.into_inner()).push(Hit {
                        timestamp: header("sealpost-timestamp"),
                        signature: header("sealpost-signature"),
                        event_id: header("sealpost-event-id"),
                        event_type: header("sealpost-event-type"),
                        webhook_id: header("sealpost-webhook-id"),
                        body: body.to_vec(),
                        answered: status.as_u16(),
                    });
                    status
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind(SocketAddr::new(lo(1), 0))
            .await
            .unwrap_or_else(|e| panic!("bind: {e}"));
        let addr = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("addr: {e}"));
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self {
            addr,
            failures,
            hits,
        }
    }

    fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    fn hits(&self) -> Vec<Hit> {
        self.hits.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    async fn wait_hits(&self, n: usize) -> Vec<Hit> {
        eventually(&format!("{n} webhook requests"), WAIT, || {
            self.hits().len() >= n
        })
        .await;
        self.hits()
    }
}

/// The receiver's own check, written from the documented scheme (not the server's code):
/// HMAC-SHA256 over `timestamp "." body`, hex, after `v1=`, and a 5-minute window.
fn verify(secret: &str, hit: &Hit, now: u64) -> bool {
    let Some(mac) = hit
        .signature
        .strip_prefix("v1=")
        .and_then(|h| hex::decode(h).ok())
    else {
        return false;
    };
    let Ok(ts) = hit.timestamp.parse::<u64>() else {
        return false;
    };
    let mut msg = format!("{}.", hit.timestamp).into_bytes();
    msg.extend_from_slice(&hit.body);
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
    ts.abs_diff(now) <= 300 && ring::hmac::verify(&key, &msg, &mac).is_ok()
}

#[tokio::test]
async fn a_webhook_is_signed_and_retried_after_500s_with_backoff() {
    let s = Setup::new("").await;
    let admin = s.client("ops", &[Scope::Admin]);
    let app = s.client("app", &[Scope::Send, Scope::Read]);
    let rx = Receiver::start(2).await;
    let (code, made) = s
        .post(
            "/v1/webhooks",
            &admin,
            &json!({"url": rx.url(), "events": ["delivered"]}),
        )
        .await;
    assert_eq!(code, 201, "{made}");
    let id = made["id"].as_str().unwrap_or_default().to_string();
    let secret = made["secret"].as_str().unwrap_or_default().to_string();
    assert!(secret.len() >= 32, "{made}");
    assert_eq!(made["events"], json!(["delivered"]));
    assert_eq!(made["origin"], "api");
    // The secret is shown once; reads never show it.
    let (code, list) = s.get("/v1/webhooks", &admin).await;
    assert_eq!(code, 200);
    assert_eq!(list["webhooks"][0]["id"], id.as_str());
    assert!(!list.to_string().contains(&secret));
    assert_eq!(s.get("/v1/webhooks", &app).await.0, 403);

    let queue_id = s.send(&app, "bob@example.com").await;
    // First attempt at once, answered 500.
    let hits = rx.wait_hits(1).await;
    assert_eq!(hits[0].answered, 500);
    // Then 30 s, then 60 s later (the manual clock moves; nothing sleeps).
    s.advance(29);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(rx.hits().len(), 1, "not before the backoff");
    s.advance(1);
    rx.wait_hits(2).await;
    s.advance(60);
    let hits = rx.wait_hits(3).await;
    assert_eq!(
        hits.iter().map(|h| h.answered).collect::<Vec<_>>(),
        [500, 500, 200]
    );
    let now = T0 + 90;
    for (i, h) in hits.iter().enumerate() {
        assert!(verify(&secret, h, now), "attempt {i} verifies: {h:?}");
        assert!(!verify("some other secret!", h, now));
        assert_eq!(h.event_type, "delivered");
        assert_eq!(h.webhook_id, id);
        assert_eq!(h.event_id, hits[0].event_id, "the same event each time");
        assert_eq!(h.body, hits[0].body);
    }
    let ts: Vec<u64> = hits
        .iter()
        .filter_map(|h| h.timestamp.parse().ok())
        .collect();
    assert_eq!(ts, [T0, T0 + 30, T0 + 90], "signed at each attempt");
    let event: Value = serde_json::from_slice(&hits[0].body).unwrap_or_default();
    assert_eq!(event["type"], "delivered");
    assert_eq!(event["queue_id"], queue_id.as_str());
    assert_eq!(event["recipient"], "bob@example.com");
    assert_eq!(event["id"].to_string(), hits[0].event_id);

    // The attempt log through the API.
    let (code, log) = s
        .get(&format!("/v1/webhooks/{id}/deliveries"), &admin)
        .await;
    assert_eq!(code, 200, "{log}");
    let d = &log["deliveries"][0];
    assert_eq!(log["deliveries"].as_array().map(Vec::len), Some(1), "{log}");
    assert_eq!(d["state"], "delivered");
    assert_eq!(d["event_type"], "delivered");
    let statuses: Vec<_> = d["attempts"]
        .as_array()
        .map(|a| a.iter().map(|x| x["status"].clone()).collect())
        .unwrap_or_default();
    assert_eq!(statuses, [json!(500), json!(500), json!(200)]);
    assert_eq!(d["attempts"][1]["time"], T0 + 30);
    assert!(d["attempts"][0]["duration_ms"].is_u64());
    let (code, one) = s.get(&format!("/v1/webhooks/{id}"), &admin).await;
    assert_eq!(code, 200, "{one}");
    assert_eq!(
        one["deliveries"],
        json!({"pending": 0, "delivered": 1, "failed": 0})
    );
    // Only `delivered` was asked for: the accepted event never went out.
    assert_eq!(rx.hits().len(), 3);
}

#[tokio::test]
async fn webhook_input_is_checked_and_failing_deliveries_give_up_after_the_window() {
    let s = Setup::new("").await;
    let admin = s.client("ops", &[Scope::Admin]);
    let app = s.client("app", &[Scope::Send, Scope::Read]);
    for (body, field) in [
        (json!({"url": "ftp://127.0.0.1/x"}), "url"),
        (json!({"url": "not a url"}), "url"),
        (
            json!({"url": "http://127.0.0.1/x", "events": ["opened"]}),
            "events[0]",
        ),
        (
            json!({"url": "http://127.0.0.1/x", "secret": "short"}),
            "secret",
        ),
    ] {
        let (code, got) = s.post("/v1/webhooks", &admin, &body).await;
        assert_eq!(code, 400, "{body}: {got}");
        assert_eq!(got["field"], field, "{got}");
    }
    let (code, _) = s
        .post(
            "/v1/webhooks",
            &admin,
            &json!({"url": "http://127.0.0.1/x", "color": 1}),
        )
        .await;
    assert_eq!(code, 400, "unknown fields are refused");
    assert_eq!(
        s.post("/v1/webhooks", &app, &json!({"url": "http://127.0.0.1/x"}))
            .await
            .0,
        403
    );

    let rx = Receiver::start(usize::MAX).await;
    let secret = "a secret of our own choosing";
    let (code, made) = s
        .post(
            "/v1/webhooks",
            &admin,
            &json!({"url": rx.url(), "events": ["accepted"], "secret": secret}),
        )
        .await;
    assert_eq!(code, 201, "{made}");
    assert_eq!(made["secret"], secret);
    let id = made["id"].as_str().unwrap_or_default().to_string();
    // A second webhook at a port nobody listens on: its attempts log the connection error.
    let closed = {
        let l = std::net::TcpListener::bind(SocketAddr::new(lo(1), 0))
            .unwrap_or_else(|e| panic!("bind: {e}"));
        l.local_addr().unwrap_or_else(|e| panic!("addr: {e}"))
    };
    let (code, dead) = s
        .post(
            "/v1/webhooks",
            &admin,
            &json!({"url": format!("http://{closed}/hook"), "events": ["accepted"]}),
        )
        .await;
    assert_eq!(code, 201, "{dead}");
    let dead_path = format!(
        "/v1/webhooks/{}/deliveries",
        dead["id"].as_str().unwrap_or("")
    );
    s.send(&app, "bob@example.com").await;
    rx.wait_hits(1).await;
    let mut log = Value::Null;
    for _ in 0..100 {
        log = s.get(&dead_path, &admin).await.1;
        if log["deliveries"][0]["attempts"][0].is_object() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let attempt = &log["deliveries"][0]["attempts"][0];
    assert_eq!(attempt["status"], Value::Null, "{log}");
    assert!(
        attempt["error"]
            .as_str()
            .is_some_and(|e| e.starts_with("connection failed")),
        "{log}"
    );
    assert_eq!(log["deliveries"][0]["state"], "pending", "{log}");
    assert_eq!(log["deliveries"][0]["next_attempt"], T0 + 30, "{log}");
    // Two days later (one jump): the last attempt falls due at the window's end, fails, and
    // the delivery is given up.
    s.advance(2 * 86_400);
    rx.wait_hits(2).await;
    let path = format!("/v1/webhooks/{id}/deliveries");
    let mut state = Value::Null;
    for _ in 0..100 {
        state = s.get(&path, &admin).await.1;
        if state["deliveries"][0]["state"] == "failed" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(state["deliveries"][0]["state"], "failed", "{state}");
    assert_eq!(state["deliveries"][0]["next_attempt"], Value::Null);
    assert!(verify(secret, &rx.hits()[1], T0 + 2 * 86_400));
    s.advance(86_400);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(rx.hits().len(), 2, "no attempts after giving up");

    // Paging the deliveries: a bad cursor is 400; deleting removes the subscription.
    let (code, body) = s.get(&format!("{path}?after=x"), &admin).await;
    assert_eq!((code, body["field"].clone()), (400, json!("after")));
    let (code, _) = done(
        s.http
            .delete(format!("{}/v1/webhooks/{id}", s.base))
            .header("x-api-key", key(&admin)),
    )
    .await;
    assert_eq!(code, 204);
    assert_eq!(s.get(&format!("/v1/webhooks/{id}"), &admin).await.0, 404);
    assert_eq!(s.get(&path, &admin).await.0, 404);
}

#[tokio::test]
async fn a_config_webhook_delivery_pending_at_shutdown_goes_out_after_restart() {
    let rx = Receiver::start(usize::MAX).await;
    let secret = "config-file-secret-0123456789";
    let mut s = Setup::new(&format!(
        "[[webhook]]\nurl = \"{}\"\nevents = [\"accepted\", \"delivered\"]\nsecret = \"{secret}\"\n",
        rx.url()
    ))
    .await;
    let admin = s.client("ops", &[Scope::Admin]);
    let app = s.client("app", &[Scope::Send]);
    let (code, list) = s.get("/v1/webhooks", &admin).await;
    assert_eq!(code, 200);
    let id = list["webhooks"][0]["id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert_eq!(list["webhooks"][0]["origin"], "config");
    assert!(id.starts_with("wh_cfg_"), "{list}");
    let (code, body) = done(
        s.http
            .delete(format!("{}/v1/webhooks/{id}", s.base))
            .header("x-api-key", key(&admin)),
    )
    .await;
    assert_eq!(code, 409, "{body}");

    let queue_id = s.send(&app, "bob@example.com").await;
    // Both events are tried once and refused.
    let hits = rx.wait_hits(2).await;
    assert!(hits.iter().all(|h| h.answered == 500));
    s.restart().await;
    rx.failures.store(0, Ordering::SeqCst);
    s.advance(30);
    let hits = rx.wait_hits(4).await;
    let ok: Vec<&Hit> = hits.iter().filter(|h| h.answered == 200).collect();
    let mut types: Vec<&str> = ok.iter().map(|h| h.event_type.as_str()).collect();
    types.sort();
    assert_eq!(types, ["accepted", "delivered"]);
    for h in &ok {
        assert!(verify(secret, h, T0 + 30), "{h:?}");
        let event: Value = serde_json::from_slice(&h.body).unwrap_or_default();
        assert_eq!(event["queue_id"], queue_id.as_str());
    }
    // The id is stable across the restart and the log shows both attempts.
    let (code, log) = s
        .get(&format!("/v1/webhooks/{id}/deliveries"), &admin)
        .await;
    assert_eq!(code, 200, "{log}");
    let deliveries = log["deliveries"].as_array().cloned().unwrap_or_default();
    assert_eq!(deliveries.len(), 2, "{log}");
    for d in deliveries {
        assert_eq!(d["state"], "delivered", "{d}");
        assert_eq!(d["attempts"].as_array().map(Vec::len), Some(2), "{d}");
    }
    // Events keep their numbers across the restart: a new one continues the sequence.
    let before = s.all_events(&admin, 1000).await;
    let last = before.last().and_then(|e| e["id"].as_u64()).unwrap_or(0);
    s.send(&app, "carol@example.com").await;
    let after = s.all_events(&admin, 1000).await;
    assert!(after.iter().any(|e| e["id"].as_u64() == Some(last + 1)));
}

/// `[events] webhook_allowed_hosts`: `POST /v1/webhooks` refuses other hosts (400 on `url`),
/// and a stored subscription whose host the list no longer names gets no POST at all: each
/// attempt fails at once, logged, and is retried in case the list is widened again.
#[tokio::test]
async fn webhook_allowed_hosts_limits_urls_when_made_and_before_each_post() {
    let allow = |host: &str| format!("[events]\nwebhook_allowed_hosts = [\"{host}\"]\n");
    let mut s = Setup::new(&allow("127.0.0.1")).await;
    let admin = s.client("ops", &[Scope::Admin]);
    let app = s.client("app", &[Scope::Send, Scope::Read]);
    for url in ["http://localhost:9/h", "https://hooks.example.com/h"] {
        let (code, got) = s.post("/v1/webhooks", &admin, &json!({ "url": url })).await;
        assert_eq!((code, got["field"].clone()), (400, json!("url")), "{got}");
    }
    let rx = Receiver::start(0).await;
    let (code, made) = s
        .post(
            "/v1/webhooks",
            &admin,
            &json!({"url": rx.url(), "events": ["accepted"]}),
        )
        .await;
    assert_eq!(code, 201, "{made}");
    let path = format!(
        "/v1/webhooks/{}/deliveries",
        made["id"].as_str().unwrap_or("")
    );
    // The list narrows to a host the receiver is not on.
    s.text = s.text.replace(&allow("127.0.0.1"), &allow("192.0.2.1"));
    s.restart().await;
    s.send(&app, "bob@example.com").await;
    let mut log = Value::Null;
    for _ in 0..100 {
        log = s.get(&path, &admin).await.1;
        if log["deliveries"][0]["attempts"][0].is_object() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let attempt = &log["deliveries"][0]["attempts"][0];
    assert_eq!(attempt["status"], Value::Null, "{log}");
    assert!(
        attempt["error"]
            .as_str()
            .is_some_and(|e| e.contains("webhook_allowed_hosts")),
        "{log}"
    );
    assert_eq!(log["deliveries"][0]["state"], "pending", "{log}");
    assert!(rx.hits().is_empty(), "nothing was POSTed");
}
