//! Outbound isolation and shaping: egress sources, pools, traffic classes and the limits per
//! destination site (`[[source]]`, `[[pool]]`, `[[class]]`, `[shaping]`).
//!
//! A traffic class (transactional, marketing, bounce, ...) is chosen per message at accept
//! time and maps to a pool; a pool is a weighted set of sources (local IP + EHLO name); each
//! (source, destination site) pair is an egress path with its own connection and rate limits,
//! so a marketing blast on one IP never delays a password reset on another, and a warm-up cap
//! on a new IP cannot be exceeded by accident.

use super::types::Problem;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::IpAddr;

/// The class every message gets when no rule picks another.
pub const DEFAULT_CLASS: &str = "default";
/// The class of the DSNs we generate.
pub const BOUNCE_CLASS: &str = "bounce";
/// The pool a class uses when it names none.
pub const DEFAULT_POOL: &str = "default";
/// The source used when no `[[source]]` is configured (`[outbound] source_address`).
pub const DEFAULT_SOURCE: &str = "default";

/// `[[source]]`: one local address mail leaves from, with the EHLO name that matches its PTR.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Source {
    /// Name used by pools, logs and metrics, e.g. `"ip2"`. Required; letters, digits, `-`, `_`.
    pub name: String,
    /// Local IP bound before connecting. Default: none (the kernel picks the address).
    pub address: Option<IpAddr>,
    /// EHLO name sent from this source; should be the PTR name of `address`. Default
    /// `[outbound] helo_name`, else `server.hostname`.
    pub ehlo_name: Option<String>,
    /// Most simultaneous connections from this source to all sites together. Default: no
    /// limit beyond the per-site ones.
    pub max_connections: Option<usize>,
    /// Messages per time from this source to all sites together, e.g. `"5000/h"`. Default:
    /// unlimited.
    pub message_rate: Option<Rate>,
    /// Messages the rate may send at once before pacing starts. Default 1.
    #[serde(default = "one")]
    pub message_burst: u32,
    /// Warm-up schedule: the daily message cap for day 1, 2, 3, ... counted from
    /// `warmup_start` (UTC days). After the last entry the source is unlimited. A new IP that
    /// sends too much too soon gets blocked by the big providers. Default: none.
    #[serde(default)]
    pub warmup: Vec<u64>,
    /// First day of the warm-up schedule, `"YYYY-MM-DD"` (UTC). Default: none (required
    /// when `warmup` is set).
    pub warmup_start: Option<String>,
}

/// `[[pool]]`: a weighted set of sources a class sends from.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pool {
    /// Name used by classes, e.g. `"marketing"`. Required.
    pub name: String,
    /// The sources, either a list of names (equal weights) or a table of name = weight, e.g.
    /// `{ ip2 = 3, ip3 = 1 }`: ip2 carries three quarters of the connections. Required.
    pub sources: PoolSources,
}

/// The members of a pool with their weights.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum PoolSources {
    /// Equal weights.
    List(Vec<String>),
    /// Name to weight (weights >= 1).
    Weighted(BTreeMap<String, u32>),
}

impl PoolSources {
    /// (source name, weight) pairs in a stable order.
    pub fn members(&self) -> Vec<(String, u32)> {
        match self {
            Self::List(names) => names.iter().map(|n| (n.clone(), 1)).collect(),
            Self::Weighted(map) => map.iter().map(|(n, w)| (n.clone(), *w)).collect(),
        }
    }
}

/// `[[class]]`: a traffic class, the rule that selects it and the pool it sends from.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Class {
    /// Name, e.g. `"transactional"`; `default` and `bounce` may be redefined here. Required.
    pub name: String,
    /// The pool this class sends from. Default `"default"` (every source, or the
    /// `[outbound] source_address` when no source is configured).
    #[serde(default = "default_pool")]
    pub pool: String,
    /// When classes share a connection to a site, higher priority goes first. Default 0;
    /// the implicit `bounce` class has 0, put transactional mail above marketing.
    #[serde(default)]
    pub priority: i32,
    /// Messages from these listeners (`"127.0.0.1:587"`, or `"*:587"` for any address)
    /// belong here. Default: none.
    #[serde(default)]
    pub listeners: Vec<String>,
    /// Messages submitted by these AUTH users (or API clients) belong here. Default: none.
    #[serde(default)]
    pub auth_users: Vec<String>,
    /// Messages whose envelope sender is in one of these domains belong here. Default: none.
    #[serde(default)]
    pub sender_domains: Vec<String>,
    /// Messages waiting in memory for a connection, per class; the rest wait in the spool
    /// (bodies are never held while waiting). Default 10000.
    #[serde(default = "default_ready_limit")]
    pub ready_limit: usize,
}

/// `[classes]`: how classes are picked.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Classes {
    /// A header naming the class directly (`X-Sealpost-Class: marketing`), honoured only
    /// from clients allowed to relay (trusted networks, AUTH users, pinned certificates), so
    /// strangers cannot jump the queue. Empty string disables it. Default
    /// `"X-Sealpost-Class"`.
    pub header: String,
}

impl Default for Classes {
    fn default() -> Self {
        Self {
            header: "X-Sealpost-Class".into(),
        }
    }
}

/// `[shaping]`: limits per egress path (source, destination site). A site is the set of MX
/// hosts of a domain, so domains sharing MX hosts share these limits. Limits delay mail;
/// they never refuse it.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Shaping {
    /// `[shaping.default]`: the limits of every site without an override.
    pub default: PathLimits,
    /// `[[shaping.site]]`: overrides for sites whose MX host names match `mx` (big
    /// providers); first match wins, unset keys keep `[shaping.default]`. Default: none.
    pub site: Vec<PathLimits>,
}

/// Limits for one egress path. Every key is optional; the built-in defaults are listed.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PathLimits {
    /// Only in `[[shaping.site]]`, and required there: the MX host pattern, `"*.google.com"`
    /// for any host under google.com, `"mx.example.net"` for that host. Case-insensitive.
    pub mx: Option<String>,
    /// Simultaneous connections from one source to the site. Default 20.
    pub max_connections: Option<usize>,
    /// Messages sent over one connection before it is closed. Default 1000.
    pub max_messages_per_connection: Option<usize>,
    /// Messages per time, e.g. `"100/min"` (GCRA). Default: unlimited.
    pub message_rate: Option<Rate>,
    /// Messages the rate lets through at once. Default 1.
    pub message_burst: Option<u32>,
    /// New connections per time, e.g. `"10/s"`. Default: unlimited.
    pub connection_rate: Option<Rate>,
    /// Connections the rate lets open at once. Default 1.
    pub connection_burst: Option<u32>,
    /// Seconds a site is left alone after it answered 421 or a 4.7.x "rate limited"
    /// reply. Default 300.
    pub backoff_secs: Option<u64>,
    /// Seconds an idle connection is kept open for more mail. Default 5.
    pub idle_secs: Option<u64>,
}

/// A rate such as `"100/min"`: `count` events per `per_secs` seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct Rate {
    /// Events per period (>= 1).
    pub count: u64,
    /// The period in seconds.
    pub per_secs: u64,
}

impl Rate {
    /// Milliseconds between events at the steady rate (at least 1).
    pub fn interval_ms(&self) -> u64 {
        (self.per_secs * 1000 / self.count).max(1)
    }
}

impl TryFrom<String> for Rate {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        let bad =
            || format!("bad rate {s:?}: expected COUNT/UNIT like \"100/min\" (s, min, h, day)");
        let (n, unit) = s.split_once('/').ok_or_else(bad)?;
        let count: u64 = n.trim().parse().map_err(|_| bad())?;
        let per_secs = match unit.trim().to_ascii_lowercase().as_str() {
            "s" | "sec" | "second" => 1,
            "m" | "min" | "minute" => 60,
            "h" | "hour" => 3600,
            "d" | "day" => 86_400,
            _ => return Err(bad()),
        };
        if count == 0 {
            return Err(format!("bad rate {s:?}: the count must be at least 1"));
        }
        Ok(Self { count, per_secs })
    }
}

fn one() -> u32 {
    1
}

fn default_pool() -> String {
    DEFAULT_POOL.into()
}

fn default_ready_limit() -> usize {
    10_000
}

/// Checks names and references across `[[source]]`, `[[pool]]`, `[[class]]`, `[shaping]`.
pub(super) fn validate(
    sources: &[Source],
    pools: &[Pool],
    classes: &[Class],
    shaping: &Shaping,
) -> Result<(), Problem> {
    let bad = |key: &'static str, message: String| {
        Err(Problem {
            key,
            value: None,
            message,
        })
    };
    let bad_at = |key: &'static str, value: &str, message: String| {
        Err(Problem {
            key,
            value: Some(value.to_string()),
            message,
        })
    };
    let name_ok = |n: &str| {
        !n.is_empty()
            && n.len() <= 64
            && n.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    for (i, s) in sources.iter().enumerate() {
        if !name_ok(&s.name) {
            return bad_at(
                "name",
                &s.name,
                format!("source name {:?}: use letters, digits, - and _", s.name),
            );
        }
        if let Some(e) = &s.ehlo_name
            && crate::smtp::address::Domain::parse(e, false).is_err()
        {
            return bad_at(
                "ehlo_name",
                e,
                format!("source {:?}: ehlo_name {e:?} is not a host name", s.name),
            );
        }
        if sources[..i].iter().any(|o| o.name == s.name) {
            return bad_at(
                "name",
                &s.name,
                format!("source {:?} is defined twice", s.name),
            );
        }
        if s.max_connections == Some(0) || s.message_burst == 0 {
            let key = if s.message_burst == 0 {
                "message_burst"
            } else {
                "max_connections"
            };
            return bad_at(
                key,
                "0",
                format!("source {:?}: limits must be at least 1", s.name),
            );
        }
        match (&s.warmup_start, s.warmup.is_empty()) {
            (None, false) => {
                return bad(
                    "warmup",
                    format!(
                        "source {:?}: warmup needs warmup_start = \"YYYY-MM-DD\"",
                        s.name
                    ),
                );
            }
            (Some(d), _) if parse_day(d).is_none() => {
                return bad(
                    "warmup_start",
                    format!("source {:?}: warmup_start {d:?} is not YYYY-MM-DD", s.name),
                );
            }
            _ => {}
        }
    }
    let known_source = |n: &str| sources.iter().any(|s| s.name == n);
    for (i, p) in pools.iter().enumerate() {
        if !name_ok(&p.name) {
            return bad_at(
                "name",
                &p.name,
                format!("pool name {:?}: use letters, digits, - and _", p.name),
            );
        }
        if pools[..i].iter().any(|o| o.name == p.name) {
            return bad_at(
                "name",
                &p.name,
                format!("pool {:?} is defined twice", p.name),
            );
        }
        let members = p.sources.members();
        if members.is_empty() {
            return bad_at("name", &p.name, format!("pool {:?} has no sources", p.name));
        }
        for (m, w) in members {
            if !known_source(&m) {
                return bad_at(
                    "sources",
                    &m,
                    format!("pool {:?}: no [[source]] named {m:?}", p.name),
                );
            }
            if w == 0 {
                return bad_at(
                    "sources",
                    &m,
                    format!("pool {:?}: weight of {m:?} must be at least 1", p.name),
                );
            }
        }
    }
    for (i, c) in classes.iter().enumerate() {
        if !name_ok(&c.name) {
            return bad_at(
                "name",
                &c.name,
                format!("class name {:?}: use letters, digits, - and _", c.name),
            );
        }
        if classes[..i].iter().any(|o| o.name == c.name) {
            return bad_at(
                "name",
                &c.name,
                format!("class {:?} is defined twice", c.name),
            );
        }
        if c.pool != DEFAULT_POOL && !pools.iter().any(|p| p.name == c.pool) {
            return bad_at(
                "pool",
                &c.pool,
                format!("class {:?}: no [[pool]] named {:?}", c.name, c.pool),
            );
        }
        if c.ready_limit == 0 {
            return bad(
                "ready_limit",
                format!("class {:?}: ready_limit must be >= 1", c.name),
            );
        }
    }
    for limits in std::iter::once(&shaping.default).chain(&shaping.site) {
        let zero = [
            limits.max_connections.map(|v| v as u64),
            limits.max_messages_per_connection.map(|v| v as u64),
            limits.message_burst.map(u64::from),
            limits.connection_burst.map(u64::from),
        ];
        if zero.contains(&Some(0)) {
            let key = match zero.iter().position(|z| *z == Some(0)) {
                Some(0) => "max_connections",
                Some(1) => "max_messages_per_connection",
                Some(2) => "message_burst",
                _ => "connection_burst",
            };
            return bad_at(
                key,
                "0",
                "[shaping] connection and message limits must be at least 1".into(),
            );
        }
    }
    if shaping.default.mx.is_some() {
        return bad(
            "mx",
            "[shaping.default] takes no mx pattern: use [[shaping.site]]".into(),
        );
    }
    for s in &shaping.site {
        match s.mx.as_deref() {
            Some(mx) if !mx.trim().is_empty() && !mx.contains(char::is_whitespace) => {}
            other => {
                return bad(
                    "shaping.site",
                    match other {
                        None => {
                            "[[shaping.site]] needs an mx host pattern (mx = \"*.example.com\")"
                                .into()
                        }
                        Some(p) => {
                            format!("[[shaping.site]] mx pattern {p:?} is not a host pattern")
                        }
                    },
                );
            }
        }
    }
    Ok(())
}

/// Days since the Unix epoch of a `YYYY-MM-DD` date (UTC).
pub fn parse_day(s: &str) -> Option<u64> {
    let d = chrono::NaiveDate::parse_from_str(s.trim(), "%Y-%m-%d").ok()?;
    let epoch = chrono::NaiveDate::from_ymd_opt(1970, 1, 1)?;
    u64::try_from((d - epoch).num_days()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse() {
        let r = Rate::try_from("100/min".to_string()).unwrap();
        assert_eq!((r.count, r.per_secs, r.interval_ms()), (100, 60, 600));
        assert_eq!(
            Rate::try_from("10/s".to_string()).unwrap().interval_ms(),
            100
        );
        assert_eq!(
            Rate::try_from(" 5 / hour".to_string()).unwrap().per_secs,
            3600
        );
        assert_eq!(
            Rate::try_from("5000/s".to_string()).unwrap().interval_ms(),
            1
        );
        for bad in ["", "100", "0/min", "x/min", "10/fortnight", "-1/s"] {
            assert!(Rate::try_from(bad.to_string()).is_err(), "{bad}");
        }
    }

    #[test]
    fn days_parse() {
        assert_eq!(parse_day("1970-01-02"), Some(1));
        assert_eq!(parse_day("2026-12-04"), Some(20_791));
        assert_eq!(parse_day("2026-13-01"), None);
        assert_eq!(parse_day("1969-12-31"), None);
    }
}
