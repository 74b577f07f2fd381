//! The OpenAPI document (`api/openapi.yaml`) against the implementation: it names exactly the
//! routes the router serves ([`ApiRoute::ALL`]), every `$ref` resolves, the server answers
//! each documented operation with a status the document lists for it, and
//! `GET /v1/openapi.yaml` serves the committed file byte for byte, without credentials.
//! The fuzzing side (schemathesis against the served document) is
//! `tests/interop/schemathesis.sh`.

mod common;

use common::harness::{self, T0};
use sealpost::api::{ApiRoute, OPENAPI_YAML};
use sealpost::queue::ManualClock;
use serde_json::Value;
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;

/// The document as JSON values.
fn spec() -> Value {
    serde_yaml_ng::from_str(OPENAPI_YAML).unwrap_or_else(|e| panic!("openapi.yaml parses: {e}"))
}

/// `(METHOD, path)` of every operation in the document.
fn documented(spec: &Value) -> BTreeSet<(String, String)> {
    let paths = spec["paths"]
        .as_object()
        .unwrap_or_else(|| panic!("paths is a map"));
    let mut out = BTreeSet::new();
    for (path, item) in paths {
        let item = item
            .as_object()
            .unwrap_or_else(|| panic!("{path} is a map"));
        for method in [
            "get", "put", "post", "delete", "options", "head", "patch", "trace",
        ] {
            if item.contains_key(method) {
                out.insert((method.to_uppercase(), path.clone()));
            }
        }
    }
    out
}

#[test]
fn spec_names_exactly_the_router_routes() {
    let spec = spec();
    assert_eq!(spec["openapi"], "3.1.0");
    let served: BTreeSet<(String, String)> = ApiRoute::ALL
        .iter()
        .map(|r| (r.method().to_string(), r.path().to_string()))
        .collect();
    assert_eq!(served.len(), ApiRoute::ALL.len(), "a route is listed twice");
    let spec_ops = documented(&spec);
    let missing: Vec<_> = served.difference(&spec_ops).collect();
    let extra: Vec<_> = spec_ops.difference(&served).collect();
    assert!(
        missing.is_empty(),
        "routes missing from openapi.yaml: {missing:?}"
    );
    assert!(
        extra.is_empty(),
        "openapi.yaml documents routes the router lacks: {extra:?}"
    );
}

#[test]
fn every_ref_resolves_and_auth_schemes_are_declared() {
    let spec = spec();
    let mut refs = Vec::new();
    collect_refs(&spec, &mut refs);
    assert!(
        refs.len() > 20,
        "the document uses components: {}",
        refs.len()
    );
    for r in &refs {
        let pointer = r
            .strip_prefix('#')
            .unwrap_or_else(|| panic!("only local refs: {r}"));
        assert!(spec.pointer(pointer).is_some(), "dangling $ref {r}");
    }
    let schemes = &spec["components"]["securitySchemes"];
    assert_eq!(schemes["apiKey"]["name"], "X-API-Key");
    assert_eq!(schemes["apiKey"]["in"], "header");
    assert_eq!(schemes["basicAuth"]["scheme"], "basic");
    assert_eq!(schemes["bearerAuth"]["scheme"], "bearer");
    for flow in ["clientCredentials", "password"] {
        let f = &schemes["oauth2"]["flows"][flow];
        assert_eq!(f["tokenUrl"], ApiRoute::Token.path(), "{flow}");
        let scopes: BTreeSet<&str> = f["scopes"]
            .as_object()
            .unwrap_or_else(|| panic!("{flow} scopes"))
            .keys()
            .map(String::as_str)
            .collect();
        let ours: BTreeSet<&str> = sealpost::api::clients::Scope::ALL
            .iter()
            .map(|s| s.name())
            .collect();
        assert_eq!(scopes, ours, "{flow} scopes");
    }
}

fn collect_refs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                match (k.as_str(), x) {
                    ("$ref", Value::String(s)) => out.push(s.clone()),
                    _ => collect_refs(x, out),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|x| collect_refs(x, out)),
        _ => {}
    }
}

/// A server with the API on loopback; no mail leaves it (the test sends none).
async fn server() -> (sealpost::server::Running, SocketAddr, tempfile::TempDir) {
    let spool = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let dead_dns: SocketAddr = ([127, 0, 0, 1], 9).into();
    let text = harness::config_text(
        spool.path(),
        dead_dns,
        25,
        false,
        "[api]\naddress = \"127.0.0.1:0\"\n",
    );
    let running = harness::start(&text, Arc::new(ManualClock::new(T0))).await;
    let addr = running
        .api_addr
        .unwrap_or_else(|| panic!("the API listens"));
    (running, addr, spool)
}

#[tokio::test]
async fn served_byte_identical_without_credentials() {
    let (_running, addr, _spool) = server().await;
    let resp = reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap_or_else(|e| panic!("client: {e}"))
        .get(format!("http://{addr}{}", ApiRoute::OpenApi.path()))
        .send()
        .await
        .unwrap_or_else(|e| panic!("request: {e}"));
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(
        resp.headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("application/yaml")
    );
    let body = resp.bytes().await.unwrap_or_else(|e| panic!("body: {e}"));
    let file = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/api/openapi.yaml"))
        .unwrap_or_else(|e| panic!("api/openapi.yaml: {e}"));
    assert_eq!(
        body.as_ref(),
        file.as_slice(),
        "served bytes differ from the file"
    );
}

/// Each documented operation, called without credentials or body, is answered by its
/// handler (not the router's empty 404/405) with a status the document lists for it, and a
/// JSON error body where the document promises one.
#[tokio::test]
async fn every_documented_operation_is_served_with_a_documented_status() {
    let spec = spec();
    let (_running, addr, _spool) = server().await;
    let http = reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap_or_else(|e| panic!("client: {e}"));
    for (method, path) in documented(&spec) {
        let url = format!(
            "http://{addr}{}",
            path.replace("{id}", "0123456789ABCDEF0123")
        );
        let req = match method.as_str() {
            "GET" => http.get(&url),
            "POST" => http.post(&url),
            "DELETE" => http.delete(&url),
            other => panic!("no test for method {other}"),
        };
        let resp = req
            .send()
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let status = resp.status().as_u16().to_string();
        let op = &spec["paths"][&path][method.to_lowercase()];
        let answer = &op["responses"][&status];
        assert!(
            answer.is_object(),
            "{method} {path} answered {status}, which the document does not list"
        );
        let content_type = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let body = resp.bytes().await.unwrap_or_else(|e| panic!("body: {e}"));
        let answer = match answer["$ref"].as_str() {
            Some(r) => spec
                .pointer(r.trim_start_matches('#'))
                .unwrap_or_else(|| panic!("{r}")),
            None => answer,
        };
        let documented_types: Vec<&String> = answer["content"]
            .as_object()
            .map(|m| m.keys().collect())
            .unwrap_or_default();
        assert_eq!(
            documented_types,
            vec![&content_type],
            "{method} {path} {status}: content type"
        );
        if content_type == "application/json" {
            let v: Value = serde_json::from_slice(&body)
                .unwrap_or_else(|e| panic!("{method} {path}: JSON body: {e}"));
            assert!(v["error"].is_string(), "{method} {path}: {v}");
        }
    }
}

/// Found by probing what schemathesis generates for path parameters: a `%FF` id was
/// answered by axum's path extractor with a plain-text 400, before authentication and
/// outside the document. It is now a JSON 404 after authentication (401 without).
#[tokio::test]
async fn non_utf8_message_id_is_a_json_404_after_authentication() {
    let (running, addr, _spool) = server().await;
    let key = api_key(&running);
    let http = reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap_or_else(|e| panic!("client: {e}"));
    let url = format!("http://{addr}/v1/messages/%FF");
    for (auth, want_status, want_error) in [
        (None, 401, "unauthorized"),
        (Some(key.as_str()), 404, "not_found"),
    ] {
        let mut req = http.get(&url);
        if let Some(k) = auth {
            req = req.header("X-API-Key", k);
        }
        let resp = req.send().await.unwrap_or_else(|e| panic!("request: {e}"));
        assert_eq!(resp.status().as_u16(), want_status);
        let body = json_body(resp).await;
        assert_eq!(body["error"], want_error);
    }
}

/// The same for the webhook routes' `{id}` (the message route's fix had not reached them):
/// a `%FF` id was axum's plain-text 400 before authentication; it is a JSON 404 after it
/// (401 without).
#[tokio::test]
async fn non_utf8_webhook_id_is_a_json_404_after_authentication() {
    let (running, addr, _spool) = server().await;
    let key = client_key(&running, &[sealpost::api::clients::Scope::Admin]);
    let http = reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap_or_else(|e| panic!("client: {e}"));
    for (method, path) in [
        ("GET", "/v1/webhooks/%FF"),
        ("DELETE", "/v1/webhooks/%FF"),
        ("GET", "/v1/webhooks/%FF/deliveries"),
    ] {
        for (auth, want_status, want_error) in [
            (None, 401, "unauthorized"),
            (Some(key.as_str()), 404, "not_found"),
        ] {
            let url = format!("http://{addr}{path}");
            let mut req = match method {
                "GET" => http.get(&url),
                _ => http.delete(&url),
            };
            if let Some(k) = auth {
                req = req.header("X-API-Key", k);
            }
            let resp = req.send().await.unwrap_or_else(|e| panic!("request: {e}"));
            assert_eq!(resp.status().as_u16(), want_status, "{method} {path}");
            let body = json_body(resp).await;
            assert_eq!(body["error"], want_error, "{method} {path}");
        }
    }
}

/// RFC 6749 §3.1: a recognized parameter given twice is an error (before, the last copy
/// silently won), a parameter without a value counts as omitted (`scope=` means the default
/// scopes), and unrecognized ones are ignored.
#[tokio::test]
async fn oauth_parameters_once_each_and_empty_means_absent() {
    let (running, addr, _spool) = server().await;
    let key = api_key(&running);
    let (id, secret) = key.split_once(':').unwrap_or_else(|| panic!("id:secret"));
    let http = reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap_or_else(|e| panic!("client: {e}"));
    let post = |body: &'static str| {
        http.post(format!("http://{addr}{}", ApiRoute::Token.path()))
            .basic_auth(id, Some(secret))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
    };
    let resp = post("grant_type=client_credentials&grant_type=password")
        .await
        .unwrap_or_else(|e| panic!("request: {e}"));
    assert_eq!(resp.status().as_u16(), 400);
    let body = json_body(resp).await;
    assert_eq!(body["error"], "invalid_request");
    assert!(
        body["error_description"]
            .as_str()
            .is_some_and(|d| d.contains("grant_type")),
        "{body}"
    );
    // Unrecognized parameters are ignored, even repeated (found by schemathesis: an extra
    // form field given as a list).
    let resp = post("grant_type=client_credentials&scope=&x=1&x=2")
        .await
        .unwrap_or_else(|e| panic!("request: {e}"));
    assert_eq!(resp.status().as_u16(), 200);
    let body = json_body(resp).await;
    assert_eq!(body["scope"], "send read");
}

/// A client with the send and read scopes, as `id:secret`.
fn api_key(running: &sealpost::server::Running) -> String {
    use sealpost::api::clients::Scope;
    client_key(running, &[Scope::Send, Scope::Read])
}

/// A client with `scopes`, as `id:secret`.
fn client_key(
    running: &sealpost::server::Running,
    scopes: &[sealpost::api::clients::Scope],
) -> String {
    use sealpost::api::clients::{ClientStore, TREE};
    let tree = running
        .queue
        .spool()
        .tree(TREE)
        .unwrap_or_else(|e| panic!("tree: {e}"));
    let c = ClientStore::new(tree)
        .add("openapi-test", scopes, T0)
        .unwrap_or_else(|e| panic!("add client: {e}"));
    format!("{}:{}", c.client.id, c.secret)
}

async fn json_body(resp: reqwest::Response) -> Value {
    let bytes = resp.bytes().await.unwrap_or_else(|e| panic!("body: {e}"));
    serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("JSON body: {e}"))
}

/// Paths and methods outside the document get JSON answers too (found by the new-user trial:
/// they were empty bodies), and a 405 still names the methods the path takes.
#[tokio::test]
async fn unknown_routes_and_methods_get_json_errors() {
    let (_running, addr, _spool) = server().await;
    let http = reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap_or_else(|e| panic!("client: {e}"));
    let r = http
        .get(format!("http://{addr}/v1/nothing-here"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("request: {e}"));
    assert_eq!(r.status().as_u16(), 404);
    let body: serde_json::Value =
        serde_json::from_slice(&r.bytes().await.unwrap_or_else(|e| panic!("body: {e}")))
            .unwrap_or_else(|e| panic!("json: {e}"));
    assert_eq!(body["error"], "not_found", "{body}");
    let r = http
        .delete(format!("http://{addr}{}", ApiRoute::Send.path()))
        .send()
        .await
        .unwrap_or_else(|e| panic!("request: {e}"));
    assert_eq!(r.status().as_u16(), 405);
    let allow = r
        .headers()
        .get("allow")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    assert!(allow.contains("POST"), "Allow: {allow:?}");
    let body: serde_json::Value =
        serde_json::from_slice(&r.bytes().await.unwrap_or_else(|e| panic!("body: {e}")))
            .unwrap_or_else(|e| panic!("json: {e}"));
    assert_eq!(body["error"], "method_not_allowed", "{body}");
}
