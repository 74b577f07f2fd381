//! The HTTP API end to end, over real HTTP on loopback against the in-process server: each
//! way to authenticate, token expiry and revocation, scopes, the failed-attempt limit,
//! sending to a real SMTP sink, header injection refused field by field, idempotency keys,
//! status after delivery, raw messages, the size limit and HTTPS. The CLI is in
//! `tests/api_cli.rs`.

mod common;

use common::dns::{TestDns, ZoneBuilder};
use common::harness::{self, T0, eventually};
use common::lo;
use common::sink::{Sink, SinkConfig};
use sealpost::api::clients::{ClientStore, NewClient, Scope, TREE};
use sealpost::queue::ManualClock;
use sealpost::server::Running;
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(15);
const PASSWORD: &str = "correct horse battery staple";

/// A server with the API on 127.0.0.1:0, a `[[user]]` alice, example.com routed to a sink.
struct Setup {
    running: Running,
    sink: Sink,
    clock: Arc<ManualClock>,
    base: String,
    http: reqwest::Client,
    _spool: tempfile::TempDir,
    _dns: TestDns,
}

impl Setup {
    async fn new(api_extra: &str) -> Self {
        Self::with(api_extra, "").await
    }

    async fn with(api_extra: &str, more: &str) -> Self {
        let dns = TestDns::start(&ZoneBuilder::new("example.org.").build()).await;
        let spool = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let sink = Sink::start(SocketAddr::new(lo(1), 0), SinkConfig::accept())
            .await
            .unwrap_or_else(|e| panic!("sink: {e}"));
        let hash =
            sealpost::inbound::hash_password(PASSWORD).unwrap_or_else(|e| panic!("hash: {e}"));
        let extra = format!(
            r#"
[[route]]
domain = "example.com"
host = "127.0.0.1"
port = {port}
[[user]]
name = "alice"
password_hash = "{hash}"
[[class]]
name = "transactional"
{more}
[api]
address = "127.0.0.1:0"
{api_extra}
"#,
            port = sink.addr().port()
        );
        let text = harness::config_text(spool.path(), dns.addr(), 25, false, &extra);
        let clock = Arc::new(ManualClock::new(T0));
        let running = harness::start(&text, clock.clone()).await;
        let addr = running
            .api_addr
            .unwrap_or_else(|| panic!("the API listens"));
        let http = reqwest::Client::builder()
            .no_proxy()
            .build()
            .unwrap_or_else(|e| panic!("client: {e}"));
        Self {
            running,
            sink,
            clock,
            base: format!("http://{addr}"),
            http,
            _spool: spool,
            _dns: dns,
        }
    }

    fn client(&self, name: &str, scopes: &[Scope]) -> NewClient {
        let tree = self
            .running
            .queue
            .spool()
            .tree(TREE)
            .unwrap_or_else(|e| panic!("tree: {e}"));
        ClientStore::new(tree)
            .add(name, scopes, T0)
            .unwrap_or_else(|e| panic!("add client: {e}"))
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn queued(&self) -> usize {
        self.running
            .queue
            .spool()
            .list()
            .unwrap_or_else(|e| panic!("list: {e}"))
            .len()
    }
}

/// Status and JSON body (Null when the body is not JSON).
async fn done(r: reqwest::RequestBuilder) -> (u16, Value, reqwest::header::HeaderMap) {
    let resp = r.send().await.unwrap_or_else(|e| panic!("request: {e}"));
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.bytes().await.unwrap_or_else(|e| panic!("body: {e}"));
    (
        status,
        serde_json::from_slice(&body).unwrap_or(Value::Null),
        headers,
    )
}

fn post_json(s: &Setup, path: &str, body: &Value) -> reqwest::RequestBuilder {
    s.http
        .post(s.url(path))
        .header("content-type", "application/json")
        .body(serde_json::to_vec(body).unwrap_or_default())
}

fn form(s: &Setup, path: &str, pairs: &[(&str, &str)]) -> reqwest::RequestBuilder {
    let body = pairs
        .iter()
        .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
        .collect::<Vec<_>>()
        .join("&");
    s.http
        .post(s.url(path))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
}

fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn api_key(c: &NewClient) -> String {
    format!("{}:{}", c.client.id, c.secret)
}

/// A probe that needs `read`: an unknown message id is 404 once authenticated.
const PROBE: &str = "/v1/messages/0123456789abcdef0123";

async fn token(s: &Setup, c: &NewClient, extra: &[(&str, &str)]) -> (u16, Value) {
    let mut pairs = vec![("grant_type", "client_credentials")];
    pairs.extend_from_slice(extra);
    let (code, body, _) =
        done(form(s, "/oauth/token", &pairs).basic_auth(&c.client.id, Some(&c.secret))).await;
    (code, body)
}

#[tokio::test]
async fn every_auth_method_works_and_bad_credentials_get_401() {
    let s = Setup::new("").await;
    let c = s.client("app", &[Scope::Send, Scope::Read]);

    // No credentials: 401 with challenges.
    let (code, body, headers) = done(s.http.get(s.url(PROBE))).await;
    assert_eq!(code, 401, "{body}");
    let challenges: Vec<_> = headers
        .get_all("www-authenticate")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    assert!(
        challenges.iter().any(|c| c.starts_with("Bearer")),
        "{challenges:?}"
    );
    assert!(
        challenges.iter().any(|c| c.starts_with("Basic")),
        "{challenges:?}"
    );

    // X-API-Key.
    let (code, body, _) = done(s.http.get(s.url(PROBE)).header("x-api-key", api_key(&c))).await;
    assert_eq!(code, 404, "{body}");
    let wrong = format!("{}:{}", c.client.id, "0".repeat(64));
    let (code, body, headers) = done(s.http.get(s.url(PROBE)).header("x-api-key", wrong)).await;
    assert_eq!(code, 401, "{body}");
    assert!(headers.contains_key("www-authenticate"));

    // Basic.
    let (code, _, _) = done(
        s.http
            .get(s.url(PROBE))
            .basic_auth(&c.client.id, Some(&c.secret)),
    )
    .await;
    assert_eq!(code, 404);
    let (code, _, _) = done(
        s.http
            .get(s.url(PROBE))
            .basic_auth(&c.client.id, Some("nope")),
    )
    .await;
    assert_eq!(code, 401);

    // OAuth client credentials, client authenticated by Basic.
    let (code, body) = token(&s, &c, &[]).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 900);
    assert_eq!(body["scope"], "send read");
    let t = body["access_token"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let (code, _, _) = done(s.http.get(s.url(PROBE)).bearer_auth(&t)).await;
    assert_eq!(code, 404);
    let (code, _, headers) = done(s.http.get(s.url(PROBE)).bearer_auth("not-a-token")).await;
    assert_eq!(code, 401);
    let challenge = headers
        .get("www-authenticate")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    assert!(challenge.contains("invalid_token"), "{challenge}");

    // Client credentials in the form body.
    let (code, body, _) = done(form(
        &s,
        "/oauth/token",
        &[
            ("grant_type", "client_credentials"),
            ("client_id", &c.client.id),
            ("client_secret", &c.secret),
            ("scope", "read"),
        ],
    ))
    .await;
    assert_eq!(
        (code, body["scope"].as_str()),
        (200, Some("read")),
        "{body}"
    );

    // Password grant with a [[user]] account.
    let pw = [
        ("grant_type", "password"),
        ("username", "alice"),
        ("password", PASSWORD),
    ];
    let (code, body, _) =
        done(form(&s, "/oauth/token", &pw).basic_auth(&c.client.id, Some(&c.secret))).await;
    assert_eq!(code, 200, "{body}");
    let t = body["access_token"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let (code, _, _) = done(s.http.get(s.url(PROBE)).bearer_auth(&t)).await;
    assert_eq!(code, 404);

    // RFC 6749 errors.
    let bad_pw = [
        ("grant_type", "password"),
        ("username", "alice"),
        ("password", "wrong"),
    ];
    let (code, body, _) =
        done(form(&s, "/oauth/token", &bad_pw).basic_auth(&c.client.id, Some(&c.secret))).await;
    assert_eq!((code, body["error"].as_str()), (400, Some("invalid_grant")));
    let (code, body, headers) = done(
        form(&s, "/oauth/token", &[("grant_type", "client_credentials")])
            .basic_auth(&c.client.id, Some("wrong")),
    )
    .await;
    assert_eq!(
        (code, body["error"].as_str()),
        (401, Some("invalid_client"))
    );
    assert!(headers.contains_key("www-authenticate"));
    let (code, body) = token(&s, &c, &[("scope", "admin")]).await;
    assert_eq!((code, body["error"].as_str()), (400, Some("invalid_scope")));
    let (code, body, _) = done(
        form(&s, "/oauth/token", &[("grant_type", "implicit")])
            .basic_auth(&c.client.id, Some(&c.secret)),
    )
    .await;
    assert_eq!(
        (code, body["error"].as_str()),
        (400, Some("unsupported_grant_type"))
    );
    let (code, body, _) =
        done(form(&s, "/oauth/token", &[]).basic_auth(&c.client.id, Some(&c.secret))).await;
    assert_eq!(
        (code, body["error"].as_str()),
        (400, Some("invalid_request"))
    );
    s.running.shutdown().await;
}

#[tokio::test]
async fn tokens_expire_and_revoked_tokens_stop_working() {
    let s = Setup::new("token_ttl_secs = 60").await;
    let c = s.client("app", &[Scope::Read]);
    let (code, body) = token(&s, &c, &[]).await;
    assert_eq!(
        (code, body["expires_in"].as_u64()),
        (200, Some(60)),
        "{body}"
    );
    let t = body["access_token"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let (code, _, _) = done(s.http.get(s.url(PROBE)).bearer_auth(&t)).await;
    assert_eq!(code, 404);
    s.clock.advance(61);
    let (code, body, _) = done(s.http.get(s.url(PROBE)).bearer_auth(&t)).await;
    assert_eq!((code, body["error"].as_str()), (401, Some("invalid_token")));

    // Revocation: 200 for a live token, which then fails; 200 for an unknown one too.
    let (_, body) = token(&s, &c, &[]).await;
    let t = body["access_token"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let (code, _, _) = done(s.http.get(s.url(PROBE)).bearer_auth(&t)).await;
    assert_eq!(code, 404);
    let other = s.client("other", &[Scope::Read]);
    // Another client cannot revoke it.
    let (code, _, _) = done(
        form(&s, "/oauth/revoke", &[("token", &t)])
            .basic_auth(&other.client.id, Some(&other.secret)),
    )
    .await;
    assert_eq!(code, 200);
    let (code, _, _) = done(s.http.get(s.url(PROBE)).bearer_auth(&t)).await;
    assert_eq!(code, 404);
    let (code, _, _) =
        done(form(&s, "/oauth/revoke", &[("token", &t)]).basic_auth(&c.client.id, Some(&c.secret)))
            .await;
    assert_eq!(code, 200);
    let (code, _, _) = done(s.http.get(s.url(PROBE)).bearer_auth(&t)).await;
    assert_eq!(code, 401);
    let (code, _, _) = done(
        form(&s, "/oauth/revoke", &[("token", "unknown")])
            .basic_auth(&c.client.id, Some(&c.secret)),
    )
    .await;
    assert_eq!(code, 200);
    let (code, _, _) = done(
        form(&s, "/oauth/revoke", &[("token", "unknown")]).basic_auth(&c.client.id, Some("x")),
    )
    .await;
    assert_eq!(code, 401);
    s.running.shutdown().await;
}

#[tokio::test]
async fn scopes_are_enforced_and_failures_are_rate_limited() {
    let s = Setup::new("max_auth_failures_per_minute = 3").await;
    let reader = s.client("reader", &[Scope::Read]);
    let sender = s.client("sender", &[Scope::Send]);
    let msg =
        json!({"from": "app@example.com", "to": ["bob@example.com"], "subject": "x", "text": "x"});
    let (code, body, _) =
        done(post_json(&s, "/v1/messages", &msg).header("x-api-key", api_key(&reader))).await;
    assert_eq!(
        (code, body["scope"].as_str()),
        (403, Some("send")),
        "{body}"
    );
    let (code, body, _) = done(
        s.http
            .get(s.url(PROBE))
            .header("x-api-key", api_key(&sender)),
    )
    .await;
    assert_eq!(
        (code, body["scope"].as_str()),
        (403, Some("read")),
        "{body}"
    );
    // A token limited to read cannot send even for a client that may.
    let both = s.client("both", &[Scope::Send, Scope::Read]);
    let (_, body) = token(&s, &both, &[("scope", "read")]).await;
    let t = body["access_token"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let (code, _, _) = done(post_json(&s, "/v1/messages", &msg).bearer_auth(&t)).await;
    assert_eq!(code, 403);
    assert_eq!(s.queued(), 0);

    // Three failures for one client id, then 429 even with the right secret.
    for _ in 0..3 {
        let (code, _, _) = done(
            s.http
                .get(s.url(PROBE))
                .basic_auth(&reader.client.id, Some("bad")),
        )
        .await;
        assert_eq!(code, 401);
    }
    let (code, _, headers) = done(
        s.http
            .get(s.url(PROBE))
            .header("x-api-key", api_key(&reader)),
    )
    .await;
    assert_eq!(code, 429);
    let retry: u64 = headers
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    assert!((1..=60).contains(&retry), "Retry-After {retry}");
    // The window passes.
    s.clock.advance(61);
    let (code, _, _) = done(
        s.http
            .get(s.url(PROBE))
            .header("x-api-key", api_key(&reader)),
    )
    .await;
    assert_eq!(code, 404);
    s.running.shutdown().await;
}

#[tokio::test]
async fn a_message_reaches_the_sink_and_its_status_shows_delivered() {
    let s = Setup::new("").await;
    let c = s.client("billing-app", &[Scope::Send, Scope::Read]);
    let msg = json!({
        "from": {"name": "Billing Dept", "address": "billing@example.com"},
        "to": ["bob@example.com", {"name": "Carol", "address": "carol@example.com"}],
        "cc": ["dave@example.com"],
        "bcc": ["erin@example.com"],
        "subject": "Your invoice",
        "text": "Hello Bob,\nyour invoice is attached.\n",
        "html": "<p>Hello Bob</p>",
        "attachments": [{"filename": "invoice.txt", "content_type": "text/plain", "content": "SU5WT0lDRSAxMjM="}],
        "headers": {"X-Campaign": "march"},
        "class": "transactional",
        "sensitivity": "PHI",
        "tags": ["invoice", "march"],
        "metadata": {"order": "A-1001"},
    });
    let (code, body, _) =
        done(post_json(&s, "/v1/messages", &msg).header("x-api-key", api_key(&c))).await;
    assert_eq!(code, 202, "{body}");
    assert_eq!(body["recipients"], 4);
    let id = body["id"].as_str().unwrap_or_default().to_string();
    let got = s.sink.wait_for(1, WAIT).await;
    let m = &got[0];
    assert_eq!(m.mail_from, "billing@example.com");
    let mut rcpts = m.rcpts.clone();
    rcpts.sort();
    assert_eq!(
        rcpts,
        [
            "bob@example.com",
            "carol@example.com",
            "dave@example.com",
            "erin@example.com"
        ]
    );
    let data = String::from_utf8_lossy(&m.data).to_string();
    let header = data.split("\r\n\r\n").next().unwrap_or_default();
    for want in [
        "From: \"Billing Dept\" <billing@example.com>",
        "Subject: Your invoice",
        "X-Campaign: march",
        &format!("Message-ID: <{id}@mx.sealpost.test>"),
        "Date: ",
        "(API client billing-app)",
    ] {
        assert!(header.contains(want), "missing {want:?} in:\n{header}");
    }
    assert!(
        header.contains("Carol") && header.contains("dave@example.com"),
        "{header}"
    );
    assert!(
        !data.contains("erin@"),
        "Bcc must not appear in the message:\n{data}"
    );
    // The sensitivity steered the policy here; it must not tell outside servers "health
    // data". Tags and metadata are the client's own and never travel with the mail.
    assert!(
        !header.to_ascii_lowercase().contains("x-sealpost-")
            && !data.contains("A-1001")
            && !header.contains("invoice,"),
        "internal fields leaked:\n{header}"
    );
    assert!(
        data.contains("Hello Bob") && data.contains("invoice.txt"),
        "{data}"
    );

    eventually("the message left the queue", WAIT, || s.queued() == 0).await;
    let (code, body, _) = done(
        s.http
            .get(s.url(&format!("/v1/messages/{id}")))
            .header("x-api-key", api_key(&c)),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["state"], "finished");
    assert_eq!(body["class"], "transactional");
    assert_eq!(body["tags"], json!(["invoice", "march"]), "{body}");
    assert_eq!(body["metadata"], json!({"order": "A-1001"}), "{body}");
    let rs = body["recipients"].as_array().cloned().unwrap_or_default();
    assert_eq!(rs.len(), 4, "{body}");
    for r in &rs {
        assert_eq!(r["status"], "delivered", "{body}");
        assert!(
            r["reply"].as_str().is_some_and(|x| x.starts_with("250")),
            "{r}"
        );
        assert!(r["method"].is_string(), "{r}");
    }
    // Another client with read does not see it; an admin does.
    let other = s.client("other", &[Scope::Read]);
    let url = s.url(&format!("/v1/messages/{id}"));
    let (code, _, _) = done(s.http.get(&url).header("x-api-key", api_key(&other))).await;
    assert_eq!(code, 404);
    let admin = s.client("ops", &[Scope::Admin]);
    let (code, _, _) = done(s.http.get(&url).header("x-api-key", api_key(&admin))).await;
    assert_eq!(code, 200);
    s.running.shutdown().await;
}

#[tokio::test]
async fn cr_lf_nul_in_any_field_is_refused_naming_the_field() {
    let s = Setup::new("").await;
    let c = s.client("app", &[Scope::Send]);
    let base = json!({"from": "app@example.com", "to": ["bob@example.com"], "subject": "ok", "text": "fine"});
    let with = |path: &[&str], v: Value| {
        let mut m = base.clone();
        let mut at = &mut m;
        for (i, p) in path.iter().enumerate() {
            if i + 1 == path.len() {
                at[*p] = v.clone();
            } else {
                at = &mut at[*p];
            }
        }
        m
    };
    let evil = ["x\r\nBcc: victim@example.org", "x\nX-Injected: 1", "x\0y"];
    for bad in evil {
        let cases: Vec<(Value, &str)> = vec![
            (with(&["subject"], json!(bad)), "subject"),
            (
                with(&["from"], json!(format!("app@example.com{bad}"))),
                "from",
            ),
            (
                with(
                    &["from"],
                    json!({"name": bad, "address": "app@example.com"}),
                ),
                "from.name",
            ),
            (
                with(&["to"], json!([format!("bob@example.com{bad}")])),
                "to[0]",
            ),
            (
                with(
                    &["to"],
                    json!(["bob@example.com", {"name": bad, "address": "c@example.com"}]),
                ),
                "to[1].name",
            ),
            (with(&["cc"], json!([bad])), "cc[0]"),
            (with(&["bcc"], json!([bad])), "bcc[0]"),
            (with(&["headers"], json!({"X-Tag": bad})), "headers.X-Tag"),
            (with(&["sensitivity"], json!(bad)), "sensitivity"),
            (with(&["class"], json!(bad)), "class"),
            (with(&["tags"], json!(["ok", bad])), "tags[1]"),
            (with(&["metadata"], json!({"k": bad})), "metadata.k"),
            (
                with(
                    &["attachments"],
                    json!([{"filename": bad, "content_type": "text/plain", "content": ""}]),
                ),
                "attachments[0].filename",
            ),
            (
                with(
                    &["attachments"],
                    json!([{"filename": "a.txt", "content_type": format!("text/plain{bad}"), "content": ""}]),
                ),
                "attachments[0].content_type",
            ),
        ];
        for (msg, field) in cases {
            let (code, body, _) =
                done(post_json(&s, "/v1/messages", &msg).header("x-api-key", api_key(&c))).await;
            assert_eq!(code, 400, "{field} {bad:?}: {body}");
            assert_eq!(body["error"], "invalid_field", "{body}");
            assert_eq!(body["field"], field, "{bad:?}: {body}");
        }
        // A header name with a line break.
        let msg = with(&["headers"], json!({format!("X-A{bad}"): "v"}));
        let (code, body, _) =
            done(post_json(&s, "/v1/messages", &msg).header("x-api-key", api_key(&c))).await;
        assert_eq!(code, 400, "{body}");
        assert!(
            body["field"]
                .as_str()
                .is_some_and(|f| f.starts_with("headers.")),
            "{body}"
        );
        // The raw endpoint's envelope.
        let raw = json!({"mail_from": format!("a@example.com{bad}"), "rcpt_to": ["bob@example.com"], "message": "U3ViamVjdDogeA0KDQp4DQo="});
        let (code, body, _) =
            done(post_json(&s, "/v1/messages/raw", &raw).header("x-api-key", api_key(&c))).await;
        assert_eq!(
            (code, body["field"].as_str()),
            (400, Some("mail_from")),
            "{body}"
        );
        let raw = json!({"mail_from": "a@example.com", "rcpt_to": [format!("bob@example.com{bad}")], "message": "U3ViamVjdDogeA0KDQp4DQo="});
        let (code, body, _) =
            done(post_json(&s, "/v1/messages/raw", &raw).header("x-api-key", api_key(&c))).await;
        assert_eq!(
            (code, body["field"].as_str()),
            (400, Some("rcpt_to[0]")),
            "{body}"
        );
    }
    // Reserved headers are refused too.
    let msg = with(&["headers"], json!({"Bcc": "x@example.org"}));
    let (code, body, _) =
        done(post_json(&s, "/v1/messages", &msg).header("x-api-key", api_key(&c))).await;
    assert_eq!((code, body["field"].as_str()), (400, Some("headers.Bcc")));
    assert_eq!(s.queued(), 0, "nothing may be queued");
    // The same base message is fine.
    let (code, body, _) =
        done(post_json(&s, "/v1/messages", &base).header("x-api-key", api_key(&c))).await;
    assert_eq!(code, 202, "{body}");
    s.sink.wait_for(1, WAIT).await;
    s.running.shutdown().await;
}

#[tokio::test]
async fn an_idempotency_key_repeat_returns_the_first_id_and_sends_once() {
    let s = Setup::new("").await;
    let c = s.client("app", &[Scope::Send]);
    let msg = json!({"from": "app@example.com", "to": ["bob@example.com"], "subject": "once", "text": "x", "idempotency_key": "order-42"});
    let (code, first, _) =
        done(post_json(&s, "/v1/messages", &msg).header("x-api-key", api_key(&c))).await;
    assert_eq!(code, 202, "{first}");
    let (code, again, _) =
        done(post_json(&s, "/v1/messages", &msg).header("x-api-key", api_key(&c))).await;
    assert_eq!(code, 202, "{again}");
    assert_eq!(first["id"], again["id"]);
    // The same request with its keys in another order and other spacing is a repeat too.
    let reordered = r#"{ "idempotency_key": "order-42", "text": "x", "subject": "once",
        "to": ["bob@example.com"], "from": "app@example.com" }"#;
    let (code, same, _) = done(
        s.http
            .post(s.url("/v1/messages"))
            .header("content-type", "application/json")
            .header("x-api-key", api_key(&c))
            .body(reordered),
    )
    .await;
    assert_eq!((code, &same["id"]), (202, &first["id"]), "{same}");
    // A different message under the same key is refused, not silently dropped.
    let mut different = msg.clone();
    different["to"] = json!(["carol@example.com"]);
    let (code, refused, _) =
        done(post_json(&s, "/v1/messages", &different).header("x-api-key", api_key(&c))).await;
    assert_eq!(code, 409, "{refused}");
    assert_eq!(refused["error"], "idempotency_key_reused");
    // Another client's identical key is its own.
    let other = s.client("other", &[Scope::Send]);
    let (code, third, _) =
        done(post_json(&s, "/v1/messages", &msg).header("x-api-key", api_key(&other))).await;
    assert_eq!(code, 202);
    assert_ne!(third["id"], first["id"]);
    s.sink.wait_for(2, WAIT).await;
    eventually("queue empty", WAIT, || s.queued() == 0).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(s.sink.messages().len(), 2, "the repeat was not sent again");
    s.running.shutdown().await;
}

#[tokio::test]
async fn raw_messages_and_the_size_limit() {
    let s = Setup::with("", "").await;
    let c = s.client("app", &[Scope::Send]);
    let message = "From: app@example.com\r\nTo: bob@example.com\r\nSubject: raw one\r\nMessage-ID: <raw1@example.com>\r\n\r\nraw body\r\n";
    let raw = json!({
        "mail_from": "app@example.com",
        "rcpt_to": ["<bob@example.com>"],
        "message": base64_encode(message.as_bytes()),
    });
    let (code, body, _) =
        done(post_json(&s, "/v1/messages/raw", &raw).header("x-api-key", api_key(&c))).await;
    assert_eq!(
        (code, body["recipients"].as_u64()),
        (202, Some(1)),
        "{body}"
    );
    let got = s.sink.wait_for(1, WAIT).await;
    let data = String::from_utf8_lossy(&got[0].data).to_string();
    assert!(
        data.contains("Subject: raw one") && data.contains("raw body"),
        "{data}"
    );
    assert!(data.starts_with("Received: "), "{data}");

    // Bad JSON and a missing recipient list.
    let (code, body, _) = done(
        s.http
            .post(s.url("/v1/messages"))
            .header("x-api-key", api_key(&c))
            .body("{not json"),
    )
    .await;
    assert_eq!((code, body["error"].as_str()), (400, Some("invalid_json")));
    s.running.shutdown().await;
}

#[tokio::test]
async fn a_message_over_max_message_size_gets_413() {
    // max_message_size lives in [server]; start a server with a small one.
    let dns = TestDns::start(&ZoneBuilder::new("example.org.").build()).await;
    let spool = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let text = harness::config_text(
        spool.path(),
        dns.addr(),
        25,
        false,
        "[api]\naddress = \"127.0.0.1:0\"\n",
    )
    .replace("[server]\n", "[server]\nmax_message_size = 20000\n");
    let running = harness::start(&text, Arc::new(ManualClock::new(T0))).await;
    let tree = running
        .queue
        .spool()
        .tree(TREE)
        .unwrap_or_else(|e| panic!("tree: {e}"));
    let c = ClientStore::new(tree)
        .add("app", &[Scope::Send], T0)
        .unwrap_or_else(|e| panic!("add: {e}"));
    let base = format!(
        "http://{}",
        running.api_addr.unwrap_or_else(|| panic!("api"))
    );
    let http = reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap_or_else(|e| panic!("client: {e}"));
    for (len, want) in [(25_000, 413), (200_000, 413), (1_000, 202)] {
        let msg =
            json!({"from": "app@example.com", "to": ["bob@example.org"], "text": "a".repeat(len)});
        let (code, body, _) = done(
            http.post(format!("{base}/v1/messages"))
                .header("x-api-key", api_key(&c))
                .body(serde_json::to_vec(&msg).unwrap_or_default()),
        )
        .await;
        assert_eq!(code, want, "{len}: {body}");
    }
    running.shutdown().await;
}

#[tokio::test]
async fn https_when_a_certificate_is_configured() {
    let ca = common::pki::TestCa::new();
    let leaf = ca.leaf(&["api.sealpost.test"], false);
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let pem = |der: &[u8], label: &str| {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD.encode(der);
        let lines: Vec<_> = b64
            .as_bytes()
            .chunks(64)
            .map(|c| String::from_utf8_lossy(c).to_string())
            .collect();
        format!(
            "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
            lines.join("\n")
        )
    };
    let chain: String = leaf
        .chain
        .iter()
        .map(|c| pem(c.as_ref(), "CERTIFICATE"))
        .collect();
    let cert_path = dir.path().join("api.pem");
    let key_path = dir.path().join("api.key");
    std::fs::write(&cert_path, chain).unwrap_or_else(|e| panic!("write: {e}"));
    std::fs::write(&key_path, pem(leaf.key.secret_der(), "PRIVATE KEY"))
        .unwrap_or_else(|e| panic!("write: {e}"));
    let ca_path = dir.path().join("ca.pem");
    std::fs::write(&ca_path, &ca.pem).unwrap_or_else(|e| panic!("write: {e}"));
    let s = Setup::new(&format!(
        "tls_cert = \"{}\"\ntls_key = \"{}\"",
        cert_path.display(),
        key_path.display()
    ))
    .await;
    let c = s.client("app", &[Scope::Read]);
    let addr = s.running.api_addr.unwrap_or_else(|| panic!("api"));
    let https = sealpost::policy::mta_sts::https_client(
        Some(&ca_path),
        &[("api.sealpost.test".to_string(), addr)],
    )
    .unwrap_or_else(|e| panic!("https client: {e}"));
    let url = format!("https://api.sealpost.test:{}{PROBE}", addr.port());
    let (code, body, _) = done(https.get(&url).header("x-api-key", api_key(&c))).await;
    assert_eq!(code, 404, "{body}");
    // Plain HTTP to the HTTPS port gets nowhere.
    let plain = s
        .http
        .get(s.url(PROBE))
        .header("x-api-key", api_key(&c))
        .send()
        .await;
    assert!(plain.is_err() || plain.is_ok_and(|r| r.status().as_u16() != 404));
    s.running.shutdown().await;
}

fn base64_encode(b: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(b)
}
