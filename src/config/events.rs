//! `[events]` (the event log's retention and webhook delivery) and `[[webhook]]`
//! (subscriptions fixed in the config file).

use super::types::Problem;
use crate::events::EventType;
use serde::Deserialize;

/// `[events]`: how long events are kept and how webhooks are delivered.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EventsSection {
    /// Events older than this many seconds are pruned from the log (`GET /v1/events` no
    /// longer shows them), which keeps the spool bounded. Webhook delivery records older
    /// than this are pruned too. Default 604800 (7 days).
    pub retention_secs: u64,
    /// Seconds to wait for a webhook receiver to answer (connect and response) before the
    /// attempt counts as failed and is retried. Default 10.
    pub webhook_timeout_secs: u64,
    /// Delay before the first retry of a failed webhook delivery; each further retry waits
    /// twice as long, up to `webhook_max_retry_secs`. Default 30.
    pub webhook_retry_secs: u64,
    /// Longest delay between two webhook attempts. Default 3600 (1 hour).
    pub webhook_max_retry_secs: u64,
    /// A delivery still failing this many seconds after its event is given up and marked
    /// `failed`; receivers that were down for less get every event. Default 172800 (48
    /// hours).
    pub webhook_max_age_secs: u64,
    /// Webhook POSTs in flight at once, over all subscriptions. Default 8.
    pub webhook_concurrency: usize,
    /// The hosts webhook URLs may name; empty (the default) allows any. An entry is a host
    /// name or an IP address (IPv6 without brackets), compared case-insensitively, or
    /// `*.example.com` for any name under `example.com`. Checked when a subscription is
    /// made (`POST /v1/webhooks` answers 400 on `url`; a `[[webhook]]` outside the list is a
    /// config error) and again before every POST, so narrowing the list stops stored
    /// subscriptions too (their attempts fail without a connection). A name is resolved
    /// only when it is allowed, so `["127.0.0.1"]` keeps every webhook POST and lookup on
    /// the machine.
    pub webhook_allowed_hosts: Vec<String>,
}

impl Default for EventsSection {
    fn default() -> Self {
        Self {
            retention_secs: 7 * 86_400,
            webhook_timeout_secs: 10,
            webhook_retry_secs: 30,
            webhook_max_retry_secs: 3600,
            webhook_max_age_secs: 2 * 86_400,
            webhook_concurrency: 8,
            webhook_allowed_hosts: Vec::new(),
        }
    }
}

/// `[[webhook]]`: a subscription fixed in the config file. Each matching event is POSTed as
/// JSON to `url`, signed with `secret` (see `crate::events::webhook` for the headers).
/// Subscriptions made through the API (`POST /v1/webhooks`) live in the spool instead.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookEntry {
    /// Where to POST, `http://` or `https://`. Required. Admins choose it, so any host is
    /// allowed, loopback and private networks included.
    pub url: String,
    /// Event types to send: `accepted`, `delivered`, `deferred`, `bounced`, `suppressed`.
    /// Default: every type.
    #[serde(default = "all_types")]
    pub events: Vec<EventType>,
    /// The shared secret the receiver checks signatures with; at least 16 characters.
    /// Required.
    pub secret: String,
}

fn all_types() -> Vec<EventType> {
    EventType::ALL.to_vec()
}

/// The shortest webhook secret accepted, from the config or the API.
pub const MIN_WEBHOOK_SECRET: usize = 16;

/// Checks `[events]` and `[[webhook]]`.
pub(super) fn validate(events: &EventsSection, hooks: &[WebhookEntry]) -> Result<(), Problem> {
    let bad = |key: &'static str, message: String| {
        Err(Problem {
            key,
            value: None,
            message,
        })
    };
    for (key, v) in [
        ("retention_secs", events.retention_secs),
        ("webhook_timeout_secs", events.webhook_timeout_secs),
        ("webhook_retry_secs", events.webhook_retry_secs),
        ("webhook_max_age_secs", events.webhook_max_age_secs),
        ("webhook_concurrency", events.webhook_concurrency as u64),
    ] {
        if v < 1 {
            return bad(key, format!("events.{key} must be at least 1"));
        }
    }
    if events.webhook_max_retry_secs < events.webhook_retry_secs {
        return bad(
            "webhook_max_retry_secs",
            "events.webhook_max_retry_secs must be >= webhook_retry_secs".into(),
        );
    }
    for h in &events.webhook_allowed_hosts {
        let name = h.strip_prefix("*.").unwrap_or(h);
        if name.is_empty()
            || (name.contains(['*', '/', ':', ' ']) && name.parse::<std::net::Ipv6Addr>().is_err())
        {
            return Err(Problem {
                key: "webhook_allowed_hosts",
                value: Some(h.clone()),
                message: format!(
                    "events.webhook_allowed_hosts entry {h:?} is not a host name, an IP address or *.domain"
                ),
            });
        }
    }
    for (i, h) in hooks.iter().enumerate() {
        if let Err(e) = crate::events::webhook::check_url(&h.url) {
            return Err(Problem {
                key: "url",
                value: Some(h.url.clone()),
                message: format!("[[webhook]] url {:?}: {e}", h.url),
            });
        }
        if !crate::events::webhook::host_allowed(&events.webhook_allowed_hosts, &h.url) {
            return Err(Problem {
                key: "url",
                value: Some(h.url.clone()),
                message: format!(
                    "[[webhook]] url {:?}: its host is not in events.webhook_allowed_hosts",
                    h.url
                ),
            });
        }
        if hooks[..i].iter().any(|o| o.url == h.url) {
            return Err(Problem {
                key: "url",
                value: Some(h.url.clone()),
                message: format!("[[webhook]] url {:?} is listed twice", h.url),
            });
        }
        if h.events.is_empty() {
            return bad(
                "events",
                "[[webhook]] events must name at least one type".into(),
            );
        }
        if h.secret.chars().count() < MIN_WEBHOOK_SECRET {
            return bad(
                "secret",
                format!("[[webhook]] secret must be at least {MIN_WEBHOOK_SECRET} characters"),
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::config::Config;
    use crate::events::EventType;
    use std::path::Path;

    const BASE: &str = "[[listener]]\naddress = \"127.0.0.1:25\"\n";

    #[test]
    fn webhooks_and_events_parse_with_defaults() {
        let text = format!(
            "{BASE}[events]\nretention_secs = 60\n[[webhook]]\nurl = \"http://127.0.0.1:9/h\"\nsecret = \"0123456789abcdef\"\n[[webhook]]\nurl = \"https://x.test/h\"\nevents = [\"bounced\"]\nsecret = \"0123456789abcdef\"\n"
        );
        let c = Config::parse(&text, Path::new("t")).unwrap();
        assert_eq!(c.events.retention_secs, 60);
        assert_eq!(c.events.webhook_max_age_secs, 172_800);
        assert_eq!(c.webhook[0].events, EventType::ALL);
        assert_eq!(c.webhook[1].events, [EventType::Bounced]);
        assert!(c.warnings().is_empty(), "{:?}", c.warnings());
        let far = text.replace("http://127.0.0.1:9/h", "http://hooks.example.test/h");
        let c = Config::parse(&far, Path::new("t")).unwrap();
        assert!(c.warnings().iter().any(|w| w.contains("plain http")));
    }

    #[test]
    fn bad_webhooks_point_at_their_line() {
        let hook = |url: &str, extra: &str| {
            format!("{BASE}[[webhook]]\nurl = \"{url}\"\nsecret = \"0123456789abcdef\"\n{extra}")
        };
        for (text, line, needle) in [
            (hook("ftp://x.test/", ""), 4, "scheme"),
            (
                hook("http://x.test/", "events = [\"opened\"]\n"),
                6,
                "unknown variant",
            ),
            (hook("http://x.test/", "events = []\n"), 6, "at least one"),
            (
                format!("{BASE}[[webhook]]\nurl = \"http://x.test/\"\nsecret = \"short\"\n"),
                5,
                "16 characters",
            ),
            (
                format!(
                    "{}{}",
                    hook("http://x.test/", ""),
                    hook("http://x.test/", "").replace(BASE, "")
                ),
                7,
                "listed twice",
            ),
            (
                format!("{BASE}[events]\nwebhook_retry_secs = 0\n"),
                4,
                "at least 1",
            ),
            (
                format!("{BASE}[events]\nwebhook_max_retry_secs = 5\n"),
                4,
                ">= webhook_retry_secs",
            ),
            (
                format!("{BASE}[events]\nretention = 5\n"),
                4,
                "unknown field",
            ),
            (
                format!(
                    "{BASE}[events]\nwebhook_allowed_hosts = [\"127.0.0.1\"]\n{}",
                    hook("http://x.test/", "").replace(BASE, "")
                ),
                6,
                "not in events.webhook_allowed_hosts",
            ),
            (
                format!("{BASE}[events]\nwebhook_allowed_hosts = [\"a/b\"]\n"),
                4,
                "not a host name",
            ),
        ] {
            let e = Config::parse(&text, Path::new("t"))
                .unwrap_err()
                .to_string();
            assert!(
                e.starts_with(&format!("t:{line}:")) && e.contains(needle),
                "{text}\n{e}"
            );
        }
    }
}
