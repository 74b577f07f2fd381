//! `sealpost api-clients` as the real binary (offline, then against a running server through
//! the admin socket) and check-config's warning about a plain-HTTP API off loopback.

mod common;

use common::harness::{self, T0};
use sealpost::queue::ManualClock;
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::sync::Arc;

/// A probe that needs `read`: an unknown message id is 404 once authenticated.
const PROBE: &str = "/v1/messages/0123456789abcdef0123";

/// The status of a GET with an API key.
async fn status(http: &reqwest::Client, url: &str, key: &str) -> u16 {
    http.get(url)
        .header("x-api-key", key)
        .send()
        .await
        .unwrap_or_else(|e| panic!("request: {e}"))
        .status()
        .as_u16()
}

#[tokio::test]
async fn api_clients_cli_add_list_remove_and_the_secret_works() {
    const BIN: &str = env!("CARGO_BIN_EXE_sealpost");
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let spool = dir.path().join("spool");
    let config = dir.path().join("sealpost.toml");
    let text = harness::config_text(
        &spool,
        "127.0.0.1:9"
            .parse()
            .unwrap_or_else(|e| panic!("addr: {e}")),
        25,
        false,
        "[api]\naddress = \"127.0.0.1:0\"\n",
    );
    std::fs::write(&config, &text).unwrap_or_else(|e| panic!("write: {e}"));
    let run = |args: &[&str]| {
        std::process::Command::new(BIN)
            .args(args)
            .arg("--config")
            .arg(&config)
            .output()
            .unwrap_or_else(|e| panic!("run: {e}"))
    };
    let o = run(&[
        "api-clients",
        "add",
        "billing-app",
        "--scopes",
        "send,read",
        "--json",
    ]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let v: Value = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("JSON: {e}"));
    let id = v["client_id"].as_str().unwrap_or_default().to_string();
    let secret = v["client_secret"].as_str().unwrap_or_default().to_string();
    assert!(id.starts_with("spc_") && secret.len() >= 32, "{v}");
    assert_eq!(v["scopes"], json!(["send", "read"]));

    let o = run(&["api-clients", "add", "ops", "--scopes", "admin"]);
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(
        out.contains("client_id: spc_") && out.contains("client_secret: "),
        "{out}"
    );
    let o = run(&["api-clients", "add", "ops", "--scopes", "admin"]);
    assert_eq!(o.status.code(), Some(1), "a duplicate name is refused");
    let o = run(&["api-clients", "add", "x", "--scopes", "send,write"]);
    assert_eq!(
        o.status.code(),
        Some(2),
        "an unknown scope is a usage error"
    );

    let o = run(&["api-clients", "list"]);
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(
        out.contains(&id) && out.contains("billing-app") && out.contains("scopes=send,read"),
        "{out}"
    );
    assert!(out.contains("ops") && !out.contains(&secret), "{out}");

    // The secret from the CLI works against a server on the same spool.
    let clock = Arc::new(ManualClock::new(T0));
    let running = harness::start(&text, clock).await;
    let addr = running.api_addr.unwrap_or_else(|| panic!("api"));
    let http = reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap_or_else(|e| panic!("client: {e}"));
    let url = format!("http://{addr}{PROBE}");
    let code = status(&http, &url, &format!("{id}:{secret}")).await;
    assert_eq!(code, 404);
    // Removing it through the running server's admin socket locks it out at once.
    let cli = move |args: Vec<&'static str>| {
        let config = config.clone();
        tokio::task::spawn_blocking(move || {
            std::process::Command::new(BIN)
                .args(args)
                .arg("--config")
                .arg(config)
                .output()
                .unwrap_or_else(|e| panic!("run: {e}"))
        })
    };
    let o = cli(vec!["api-clients", "remove", "billing-app"])
        .await
        .unwrap_or_else(|e| panic!("join: {e}"));
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let code = status(&http, &url, &format!("{id}:{secret}")).await;
    assert_eq!(code, 401);
    let o = cli(vec!["api-clients", "remove", "billing-app"])
        .await
        .unwrap_or_else(|e| panic!("join: {e}"));
    assert_eq!(o.status.code(), Some(1), "already removed");
    let o = cli(vec!["api-clients", "list", "--json"])
        .await
        .unwrap_or_else(|e| panic!("join: {e}"));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("JSON: {e}"));
    let names: Vec<_> = v
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .filter_map(|c| c["name"].as_str().map(str::to_string))
        .collect();
    assert_eq!(names, ["ops"]);
    running.shutdown().await;
    drop(dir);
}

#[test]
fn check_config_warns_about_a_plain_http_api_off_loopback() {
    const BIN: &str = env!("CARGO_BIN_EXE_sealpost");
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let config = dir.path().join("sealpost.toml");
    let dns: SocketAddr = "127.0.0.1:9"
        .parse()
        .unwrap_or_else(|e| panic!("addr: {e}"));
    for (address, warned) in [("127.0.0.1:8025", false), ("0.0.0.0:8025", true)] {
        let text = harness::config_text(
            &dir.path().join("spool"),
            dns,
            25,
            false,
            &format!("[api]\naddress = \"{address}\"\n"),
        );
        std::fs::write(&config, text).unwrap_or_else(|e| panic!("write: {e}"));
        let o = std::process::Command::new(BIN)
            .arg("check-config")
            .arg("--config")
            .arg(&config)
            .output()
            .unwrap_or_else(|e| panic!("run: {e}"));
        let err = String::from_utf8_lossy(&o.stderr).to_string();
        assert_eq!(o.status.code(), Some(0), "{err}");
        assert_eq!(err.contains("[api] address"), warned, "{address}: {err}");
    }
}
