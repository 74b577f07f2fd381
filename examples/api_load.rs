//! Load client for `bench/api-vs-smtp.sh`: submits N messages to `POST /v1/messages` over C
//! concurrent keep-alive HTTP/1.1 connections and prints the rate at which the server
//! answered 202 (each 202 means the message is durable in the spool). Written in Rust
//! (reqwest on tokio) so the client is not what limits the figure.
//!
//! ```text
//! cargo run --release --example api_load -- URL AUTH_HEADER MESSAGES CONCURRENCY SIZE
//!   AUTH_HEADER: "Authorization: Bearer TOKEN" or "X-API-Key: ID:SECRET"
//! ```
//! Prints one line: `api_load: N messages in S s = R msg/s (C connections, SIZE-byte text)`;
//! exits 1 if any request was not answered 202.

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

#[tokio::main]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [url, auth, messages, concurrency, size] = args.as_slice() else {
        eprintln!("usage: api_load URL AUTH_HEADER MESSAGES CONCURRENCY SIZE");
        return ExitCode::from(2);
    };
    let (Ok(messages), Ok(concurrency), Ok(size)) = (
        messages.parse::<usize>(),
        concurrency.parse::<usize>(),
        size.parse::<usize>(),
    ) else {
        eprintln!("api_load: MESSAGES, CONCURRENCY and SIZE are numbers");
        return ExitCode::from(2);
    };
    let Some((name, value)) = auth.split_once(':') else {
        eprintln!("api_load: AUTH_HEADER is 'Name: value'");
        return ExitCode::from(2);
    };
    // reqwest is built without a default TLS provider (plain HTTP here, but it asks anyway).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = match reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(concurrency)
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!("api_load: {e}");
            return ExitCode::FAILURE;
        }
    };
    // 10 KB-ish of text in 76-character lines, like smtp-source's body.
    let line = "x".repeat(75) + "\n";
    let text: String = line.repeat(size / line.len() + 1)[..size].to_string();
    let body = Arc::new(
        serde_json::json!({
            "from": "alice@example.net",
            "to": ["bob@example.test"],
            "subject": "api load",
            "text": text,
        })
        .to_string(),
    );
    let url = Arc::new(format!("{}/v1/messages", url.trim_end_matches('/')));
    let (name, value) = (
        Arc::new(name.trim().to_string()),
        Arc::new(value.trim().to_string()),
    );
    let next = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (client, url, body, name, value, next, failed) = (
            client.clone(),
            url.clone(),
            body.clone(),
            name.clone(),
            value.clone(),
            next.clone(),
            failed.clone(),
        );
        tasks.push(tokio::spawn(async move {
            while next.fetch_add(1, Ordering::Relaxed) < messages {
                let r = client
                    .post(url.as_str())
                    .header(name.as_str(), value.as_str())
                    .header("content-type", "application/json")
                    .body(body.as_str().to_owned())
                    .send()
                    .await;
                match r {
                    Ok(resp) if resp.status().as_u16() == 202 => {
                        let _ = resp.bytes().await;
                    }
                    Ok(resp) => {
                        if failed.fetch_add(1, Ordering::Relaxed) < 3 {
                            let status = resp.status();
                            let text = resp.text().await.unwrap_or_default();
                            eprintln!("api_load: {status}: {text}");
                        }
                    }
                    Err(e) => {
                        if failed.fetch_add(1, Ordering::Relaxed) < 3 {
                            eprintln!("api_load: {e}");
                        }
                    }
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let secs = start.elapsed().as_secs_f64();
    let failed = failed.load(Ordering::Relaxed);
    println!(
        "api_load: {} messages in {secs:.2} s = {:.1} msg/s ({concurrency} connections, {size}-byte text, {failed} failed)",
        messages - failed,
        (messages - failed) as f64 / secs
    );
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
