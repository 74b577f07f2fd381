//! Webhook subscriptions and the signature on each POST.
//!
//! # What a receiver gets
//!
//! One `POST` per event and subscription, body = the event as JSON (the same object
//! `GET /v1/events` lists), `Content-Type: application/json`, and these headers:
//!
//! | header | value |
//! | --- | --- |
//! | `Sealpost-Timestamp` | Unix seconds when this attempt was signed, e.g. `1700000000` |
//! | `Sealpost-Signature` | `v1=` and the lowercase hex HMAC-SHA256, keyed with the subscription secret, of `TIMESTAMP + "." + BODY` (the timestamp header's exact text, a dot, the raw body bytes) |
//! | `Sealpost-Event-Id` | the event's `id` (sequence number), the same on every retry: use it to drop duplicates |
//! | `Sealpost-Event-Type` | the event's `type` |
//! | `Sealpost-Webhook-Id` | the subscription id |
//!
//! A receiver recomputes the HMAC over the bytes it received, compares in constant time, and
//! rejects a timestamp more than 5 minutes from its own clock (the replay window we
//! recommend; [`verify`] implements exactly this check). Delivery is at least once: answer
//! any 2xx to acknowledge; anything else, a timeout or a refused connection is retried with
//! backoff (see [`super::dispatch`]). Redirects are not followed (a 3xx is a failure).
//!
//! # Where subscriptions come from
//!
//! `[[webhook]]` entries in the config file (id `wh_cfg_` + 16 hex digits of the SHA-256 of
//! the URL, so it is stable across restarts; they cannot be deleted through the API), and
//! `POST /v1/webhooks` (id `wh_` + 16 random hex digits; stored in the spool tree [`TREE`]).
//! Secrets are stored as given, not hashed: signing needs them.
//!
//! # SSRF
//!
//! Only `admin` API clients and the config file can set a URL, and they are trusted to point
//! webhooks anywhere, loopback and private networks included. Redirects are not followed,
//! so a receiver cannot bounce the POST elsewhere, and response bodies are never read back
//! into the API.

use super::EventType;
use crate::config::{MIN_WEBHOOK_SECRET, WebhookEntry};
use crate::spool::{KvTree, SpoolError, json_values};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::sync::Arc;

/// The spool tree holding subscriptions made through the API.
pub const TREE: &str = "webhooks";
/// The header with the Unix-seconds timestamp of an attempt.
pub const TIMESTAMP_HEADER: &str = "Sealpost-Timestamp";
/// The header with `v1=<hex HMAC-SHA256>`.
pub const SIGNATURE_HEADER: &str = "Sealpost-Signature";
/// The header with the event id.
pub const EVENT_ID_HEADER: &str = "Sealpost-Event-Id";
/// The header with the event type.
pub const EVENT_TYPE_HEADER: &str = "Sealpost-Event-Type";
/// The header with the subscription id.
pub const WEBHOOK_ID_HEADER: &str = "Sealpost-Webhook-Id";
/// The replay window we recommend to receivers: 5 minutes either way.
pub const REPLAY_WINDOW_SECS: u64 = 300;

/// Why a subscription could not be made.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    /// A field is wrong; `field` names it the way the API's JSON does.
    #[error("{field}: {message}")]
    Invalid {
        /// `url`, `events`, `events[1]`, `secret`.
        field: String,
        /// What is wrong.
        message: String,
    },
    /// The spool failed.
    #[error(transparent)]
    Spool(#[from] SpoolError),
}

/// Where a subscription was defined.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    /// A `[[webhook]]` in the config file.
    Config,
    /// `POST /v1/webhooks`.
    Api,
}

/// One webhook subscription.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subscription {
    /// `wh_cfg_…` (config) or `wh_…` (API).
    pub id: String,
    /// Where events are POSTed.
    pub url: String,
    /// Which event types are sent.
    pub events: Vec<EventType>,
    /// The HMAC key.
    pub secret: String,
    /// Unix seconds of creation (0 for config entries).
    pub created: u64,
    /// Config file or API.
    pub origin: Origin,
    /// Only events with a greater id are sent: a new subscription does not replay history.
    pub after_event: u64,
    /// The API client that made it, if any.
    #[serde(default)]
    pub created_by: Option<String>,
}

impl Subscription {
    /// Whether events of `kind` go to this subscription.
    pub fn wants(&self, kind: EventType) -> bool {
        self.events.contains(&kind)
    }
}

/// The subscriptions: fixed ones from the config plus those in the spool tree.
pub struct WebhookStore {
    tree: Arc<dyn KvTree>,
    fixed: Vec<Subscription>,
    allowed_hosts: Vec<String>,
}

impl WebhookStore {
    /// The store over `tree` (the spool's [`TREE`]) and the config's `[[webhook]]`s.
    pub fn new(tree: Arc<dyn KvTree>, config: &[WebhookEntry]) -> Self {
        let fixed = config
            .iter()
            .map(|w| Subscription {
                id: config_id(&w.url),
                url: w.url.clone(),
                events: w.events.clone(),
                secret: w.secret.clone(),
                created: 0,
                origin: Origin::Config,
                after_event: 0,
                created_by: None,
            })
            .collect();
        Self {
            tree,
            fixed,
            allowed_hosts: Vec::new(),
        }
    }

    /// Limits the URLs [`WebhookStore::add`] accepts to `hosts` (`[events]
    /// webhook_allowed_hosts`; empty allows any, see [`host_allowed`]).
    pub fn with_allowed_hosts(mut self, hosts: Vec<String>) -> Self {
        self.allowed_hosts = hosts;
        self
    }

    /// Every subscription, config entries first, then API ones by id.
    pub fn list(&self) -> Result<Vec<Subscription>, SpoolError> {
        let mut all = self.fixed.clone();
        all.extend(json_values::<Subscription>(self.tree.as_ref())?);
        Ok(all)
    }

    /// One subscription by id.
    pub fn get(&self, id: &str) -> Result<Option<Subscription>, SpoolError> {
        if let Some(s) = self.fixed.iter().find(|s| s.id == id) {
            return Ok(Some(s.clone()));
        }
        Ok(self
            .tree
            .get(id.as_bytes())?
            .and_then(|v| serde_json::from_slice(&v).ok()))
    }

    /// Makes a subscription from API input. `events` empty means every type; `secret`
    /// `None` makes a random one (`whsec_` + 64 hex digits). `after_event` is the newest
    /// event id now.
    pub fn add(
        &self,
        url: &str,
        events: &[String],
        secret: Option<String>,
        now: u64,
        after_event: u64,
        created_by: &str,
    ) -> Result<Subscription, WebhookError> {
        check_url(url).map_err(|message| WebhookError::Invalid {
            field: "url".into(),
            message,
        })?;
        if !host_allowed(&self.allowed_hosts, url) {
            return Err(WebhookError::Invalid {
                field: "url".into(),
                message: "the host is not one the server allows webhooks to reach ([events] webhook_allowed_hosts)".into(),
            });
        }
        let mut kinds = Vec::new();
        for (i, name) in events.iter().enumerate() {
            let kind = EventType::parse(name).ok_or_else(|| WebhookError::Invalid {
                field: format!("events[{i}]"),
                message: format!(
                    "unknown event type {name:?}; one of accepted, delivered, deferred, bounced, suppressed"
                ),
            })?;
            if !kinds.contains(&kind) {
                kinds.push(kind);
            }
        }
        if kinds.is_empty() {
            kinds = EventType::ALL.to_vec();
        }
        kinds.sort();
        let secret = match secret {
            Some(s) if s.chars().count() < MIN_WEBHOOK_SECRET => {
                return Err(WebhookError::Invalid {
                    field: "secret".into(),
                    message: format!("at least {MIN_WEBHOOK_SECRET} characters"),
                });
            }
            Some(s) if s.chars().any(char::is_control) => {
                return Err(WebhookError::Invalid {
                    field: "secret".into(),
                    message: "control characters are not allowed".into(),
                });
            }
            Some(s) => s,
            None => format!("whsec_{}", hex::encode(rand::random::<[u8; 32]>())),
        };
        let sub = Subscription {
            id: format!("wh_{}", hex::encode(rand::random::<[u8; 8]>())),
            url: url.to_string(),
            events: kinds,
            secret,
            created: now,
            origin: Origin::Api,
            after_event,
            created_by: Some(created_by.to_string()),
        };
        let value = serde_json::to_vec(&sub).map_err(|e| SpoolError::Storage(e.to_string()))?;
        self.tree.insert(sub.id.as_bytes(), &value)?;
        Ok(sub)
    }

    /// Removes an API subscription. `Ok(None)` when there is no such id; `Ok(Some(false))`
    /// for a config entry (which only the config file can remove).
    pub fn remove(&self, id: &str) -> Result<Option<bool>, SpoolError> {
        if self.fixed.iter().any(|s| s.id == id) {
            return Ok(Some(false));
        }
        Ok(self.tree.remove(id.as_bytes())?.then_some(true))
    }
}

/// The stable id of a config subscription.
pub fn config_id(url: &str) -> String {
    let digest = Sha256::digest(url.as_bytes());
    format!("wh_cfg_{}", &hex::encode(digest)[..16])
}

/// Accepts `http://` and `https://` URLs with a host; the reason otherwise. The text must
/// be the URL itself: it starts with the scheme and `://` and holds no space or control
/// character (the WHATWG parser would quietly strip surrounding spaces and inner tabs and
/// line breaks, and the text is stored and shown as given).
pub fn check_url(url: &str) -> Result<(), String> {
    let lower = url.get(..8).unwrap_or(url).to_ascii_lowercase();
    if !lower.starts_with("http://") && !lower.starts_with("https://") {
        return Err(
            "the scheme must be http or https (the URL starts with http:// or https://)".into(),
        );
    }
    if url.chars().any(|c| c == ' ' || c.is_control()) {
        return Err("spaces and control characters are not allowed".into());
    }
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("not a URL: {e}"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err("the scheme must be http or https".into());
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err("the URL needs a host".into());
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err("credentials in the URL are not allowed; the signature authenticates".into());
    }
    Ok(())
}

/// Whether `url`'s host is one of `allowed` (`[events] webhook_allowed_hosts`): an entry is
/// a host name or IP address compared case-insensitively (IPv6 without brackets), or
/// `*.domain` for names under `domain`. An empty list allows every host; a URL that does not
/// parse has no allowed host.
pub fn host_allowed(allowed: &[String], url: &str) -> bool {
    if allowed.is_empty() {
        return true;
    }
    let Ok(parsed) = reqwest::Url::parse(url) else {
        return false;
    };
    let Some(host) = parsed.host_str() else {
        return false;
    };
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .trim_end_matches('.')
        .to_ascii_lowercase();
    allowed.iter().any(|entry| {
        let entry = entry
            .trim_start_matches('[')
            .trim_end_matches(']')
            .trim_end_matches('.')
            .to_ascii_lowercase();
        match entry.strip_prefix("*.") {
            Some(domain) => host
                .strip_suffix(domain)
                .is_some_and(|sub| sub.len() > 1 && sub.ends_with('.')),
            None => match (
                host.parse::<std::net::IpAddr>(),
                entry.parse::<std::net::IpAddr>(),
            ) {
                (Ok(a), Ok(b)) => a == b,
                _ => host == entry,
            },
        }
    })
}

/// The `Sealpost-Signature` value for `body` sent at `timestamp` (the header's text).
pub fn signature(secret: &str, timestamp: &str, body: &[u8]) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
    let mut ctx = ring::hmac::Context::with_key(&key);
    ctx.update(timestamp.as_bytes());
    ctx.update(b".");
    ctx.update(body);
    format!("v1={}", hex::encode(ctx.sign().as_ref()))
}

/// The receiver's check: the signature matches (constant-time) and the timestamp is within
/// `window` seconds of `now`. For Rust receivers and our tests.
pub fn verify(
    secret: &str,
    timestamp: &str,
    signature_header: &str,
    body: &[u8],
    now: u64,
    window: u64,
) -> bool {
    let Ok(ts) = timestamp.parse::<u64>() else {
        return false;
    };
    if ts.abs_diff(now) > window {
        return false;
    }
    // Several signatures may be listed (secret rotation): any v1 that matches counts.
    signature_header.split(',').any(|part| {
        let Some(hex_mac) = part.trim().strip_prefix("v1=") else {
            return false;
        };
        let Ok(mac) = hex::decode(hex_mac) else {
            return false;
        };
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
        let mut msg = Vec::with_capacity(timestamp.len() + 1 + body.len());
        msg.extend_from_slice(timestamp.as_bytes());
        msg.push(b'.');
        msg.extend_from_slice(body);
        ring::hmac::verify(&key, &msg, &mac).is_ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spool::MemoryTree;

    #[test]
    fn signature_matches_the_documented_construction() {
        // HMAC-SHA256("secret", "1700000000.{}") computed independently (Python hmac).
        let sig = signature("secret", "1700000000", b"{}");
        assert_eq!(
            sig,
            "v1=b8569b78799ff9e3cbff0fc2d63a33a2b57f3282abd07c37ae5e8e7d79a5f163"
        );
        assert!(verify(
            "secret",
            "1700000000",
            &sig,
            b"{}",
            1_700_000_100,
            300
        ));
        assert!(!verify(
            "secret",
            "1700000000",
            &sig,
            b"{} ",
            1_700_000_100,
            300
        ));
        assert!(!verify(
            "other",
            "1700000000",
            &sig,
            b"{}",
            1_700_000_100,
            300
        ));
        assert!(!verify(
            "secret",
            "1700000000",
            &sig,
            b"{}",
            1_700_000_301,
            300
        ));
    }

    #[test]
    fn allowed_hosts_match_names_addresses_and_subdomains() {
        let list: Vec<String> = ["127.0.0.1", "::1", "Hooks.Example.com", "*.internal.test"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        for (url, ok) in [
            ("http://127.0.0.1:9/h", true),
            ("http://[::1]:9/h", true),
            ("http://[0:0:0:0:0:0:0:1]/h", true),
            ("https://hooks.example.COM./h", true),
            ("https://a.b.internal.test/h", true),
            ("https://internal.test/h", false),
            ("https://evilinternal.test/h", false),
            ("http://127.0.0.2/h", false),
            ("http://localhost/h", false),
            ("https://example.com/h", false),
            ("not a url", false),
        ] {
            assert_eq!(host_allowed(&list, url), ok, "{url}");
        }
        assert!(host_allowed(&[], "https://anything.test/"));
    }

    #[test]
    fn add_checks_fields_and_config_entries_stay() {
        let entry = WebhookEntry {
            url: "http://127.0.0.1:9/hook".into(),
            events: vec![EventType::Bounced],
            secret: "0123456789abcdef".into(),
        };
        let store = WebhookStore::new(Arc::new(MemoryTree::default()), &[entry]);
        let bad = |url: &str, events: &[&str], secret: Option<&str>| {
            let events: Vec<String> = events.iter().map(|s| s.to_string()).collect();
            match store.add(url, &events, secret.map(str::to_string), 1, 0, "c") {
                Err(WebhookError::Invalid { field, .. }) => field,
                other => panic!("{other:?}"),
            }
        };
        assert_eq!(bad("ftp://x.test/", &[], None), "url");
        // The WHATWG parser would accept these after stripping or fixing them up.
        for url in [
            " http://x.test/",
            "http://x.test/\n",
            "http://x.te\tst/",
            "http:/x.test/",
            "http:\\\\x.test/",
            "http://x.test/a b",
        ] {
            assert_eq!(bad(url, &[], None), "url", "{url:?}");
        }
        assert!(check_url("HTTPS://X.test/h").is_ok());
        let narrow = WebhookStore::new(Arc::new(MemoryTree::default()), &[])
            .with_allowed_hosts(vec!["127.0.0.1".into()]);
        assert!(
            narrow
                .add("http://127.0.0.1:9/h", &[], None, 1, 0, "c")
                .is_ok()
        );
        assert!(matches!(
            narrow.add("http://x.test/h", &[], None, 1, 0, "c"),
            Err(WebhookError::Invalid { field, .. }) if field == "url"
        ));
        assert_eq!(bad("http://u:p@x.test/", &[], None), "url");
        assert_eq!(
            bad("http://x.test/", &["delivered", "opened"], None),
            "events[1]"
        );
        assert_eq!(bad("http://x.test/", &[], Some("short")), "secret");
        let made = store.add("https://x.test/h", &[], None, 1, 7, "c").unwrap();
        assert_eq!(made.events, EventType::ALL);
        assert!(made.secret.starts_with("whsec_") && made.secret.len() == 70);
        assert_eq!(store.list().unwrap().len(), 2);
        let cfg = config_id("http://127.0.0.1:9/hook");
        assert_eq!(store.remove(&cfg).unwrap(), Some(false));
        assert_eq!(store.remove(&made.id).unwrap(), Some(true));
        assert_eq!(store.remove(&made.id).unwrap(), None);
        assert_eq!(
            store.get(&cfg).unwrap().unwrap().events,
            [EventType::Bounced]
        );
    }
}
