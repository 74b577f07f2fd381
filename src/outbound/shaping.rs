//! The pure parts of traffic shaping: the GCRA rate limiter, the limits that apply to an
//! egress path, warm-up caps, and which replies mean "you are sending too fast".
//!
//! Everything here is a function of its inputs and an explicit time in milliseconds, so the
//! limits are table-tested without sleeping.

use crate::config::{PathLimits, Rate, Shaping, Source};
use crate::smtp::reply::Reply;

/// A Generic Cell Rate Algorithm limiter (the leaky bucket as a virtual schedule): events
/// are spaced `interval` apart on average, and up to `burst` may come at once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gcra {
    interval_ms: u64,
    tolerance_ms: u64,
    /// Theoretical arrival time of the next event.
    tat_ms: u64,
}

impl Gcra {
    /// A limiter for `rate` allowing `burst` (>= 1) events at once.
    pub fn new(rate: Rate, burst: u32) -> Self {
        let interval_ms = rate.interval_ms();
        Self {
            interval_ms,
            tolerance_ms: interval_ms * u64::from(burst.max(1) - 1),
            tat_ms: 0,
        }
    }

    /// Takes one event at `now_ms` if allowed; otherwise returns how many milliseconds to
    /// wait before asking again (nothing is taken).
    pub fn take(&mut self, now_ms: u64) -> Result<(), u64> {
        let wait = self.wait(now_ms);
        if wait > 0 {
            return Err(wait);
        }
        self.tat_ms = self.tat_ms.max(now_ms) + self.interval_ms;
        Ok(())
    }

    /// Milliseconds until an event would be allowed (0: now).
    pub fn wait(&self, now_ms: u64) -> u64 {
        let allowed_at = self.tat_ms.saturating_sub(self.tolerance_ms);
        allowed_at.saturating_sub(now_ms)
    }

    /// The steady spacing between events.
    pub fn interval_ms(&self) -> u64 {
        self.interval_ms
    }
}

/// The limits of one egress path, with every default applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Simultaneous connections from the source to the site.
    pub max_connections: usize,
    /// Messages per connection before it is closed.
    pub max_messages_per_connection: usize,
    /// Message rate and burst, if limited.
    pub message_rate: Option<(Rate, u32)>,
    /// Connection rate and burst, if limited.
    pub connection_rate: Option<(Rate, u32)>,
    /// Seconds to leave the site alone after a "slow down" reply.
    pub backoff_secs: u64,
    /// Seconds an idle connection stays open for more mail.
    pub idle_secs: u64,
}

/// The limits for a site with these MX hosts: the first `[[shaping.site]]` whose pattern
/// matches any of the hosts, over `[shaping.default]`, over the built-in defaults.
pub fn limits_for(shaping: &Shaping, mx_hosts: &[String]) -> Limits {
    let site = shaping.site.iter().find(|s| {
        s.mx.as_deref()
            .is_some_and(|p| mx_hosts.iter().any(|h| site_pattern_matches(p, h)))
    });
    let layers: Vec<&PathLimits> = site.into_iter().chain([&shaping.default]).collect();
    let pick = |f: &dyn Fn(&PathLimits) -> Option<u64>, default: u64| {
        layers.iter().find_map(|l| f(l)).unwrap_or(default)
    };
    let rate = |f: &dyn Fn(&PathLimits) -> Option<Rate>,
                burst: &dyn Fn(&PathLimits) -> Option<u32>| {
        layers
            .iter()
            .find_map(|l| f(l))
            .map(|r| (r, layers.iter().find_map(|l| burst(l)).unwrap_or(1)))
    };
    Limits {
        max_connections: pick(&|l| l.max_connections.map(|v| v as u64), 20) as usize,
        max_messages_per_connection: pick(
            &|l| l.max_messages_per_connection.map(|v| v as u64),
            1000,
        ) as usize,
        message_rate: rate(&|l| l.message_rate, &|l| l.message_burst),
        connection_rate: rate(&|l| l.connection_rate, &|l| l.connection_burst),
        backoff_secs: pick(&|l| l.backoff_secs, 300),
        idle_secs: pick(&|l| l.idle_secs, 5),
    }
}

/// Site patterns: `*.example.com` matches any host below example.com (any depth: provider
/// MX names like `alt1.aspmx.l.google.com` are deep), a plain name only itself.
/// Case-insensitive, trailing dots ignored.
pub fn site_pattern_matches(pattern: &str, host: &str) -> bool {
    let pattern = pattern.trim().trim_end_matches('.').to_ascii_lowercase();
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    match pattern.strip_prefix("*.") {
        Some(suffix) => host.len() > suffix.len() + 1 && host.ends_with(&format!(".{suffix}")),
        None => pattern == host,
    }
}

/// The warm-up cap of `source` on UTC day `today` (days since the epoch): `None` when the
/// source has no schedule, or the schedule is over (unlimited), or it has not started (a
/// source whose warm-up lies in the future sends nothing: cap 0).
pub fn warmup_cap(source: &Source, today: u64) -> Option<u64> {
    if source.warmup.is_empty() {
        return None;
    }
    let start = source
        .warmup_start
        .as_deref()
        .and_then(crate::config::parse_day)?;
    if today < start {
        return Some(0);
    }
    source.warmup.get((today - start) as usize).copied()
}

/// True when a reply asks us to slow down: any 421 (the server is closing the channel), or
/// a temporary reply whose text speaks of rates, limits or throttling (Gmail 421-4.7.28,
/// Microsoft 451 4.7.500 "Server busy", Yahoo 421 4.7.0 [TSS04]). Mailbox-level codes
/// (4.2.x: one recipient's inbox is full or busy) concern that recipient, not the site.
/// The site is then left alone for a while instead of being hammered with retries.
pub fn is_slow_down(reply: &Reply) -> bool {
    if reply.code == 421 {
        return true;
    }
    if !reply.is_transient() || reply.status.is_some_and(|s| s.subject == 2) {
        return false;
    }
    let text = reply.text().to_ascii_lowercase();
    // "Too many recipients" is about one transaction, handled by splitting it (C12).
    if text.contains("too many recipients") {
        return false;
    }
    [
        "rate limit",
        "ratelimit",
        "rate-limit",
        "too many",
        "throttl",
        "try again later",
        "server busy",
        "sending rate",
        "unusual rate",
    ]
    .iter()
    .any(|w| text.contains(w))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::smtp::reply::EnhancedStatus;

    fn rate(s: &str) -> Rate {
        Rate::try_from(s.to_string()).unwrap()
    }

    #[test]
    fn gcra_spaces_events_and_allows_bursts() {
        // 10/s, burst 1: one event per 100 ms.
        let mut g = Gcra::new(rate("10/s"), 1);
        assert_eq!(g.take(1000), Ok(()));
        assert_eq!(g.take(1000), Err(100));
        assert_eq!(g.take(1050), Err(50));
        assert_eq!(g.take(1100), Ok(()));
        // A long pause does not bank credit beyond the burst.
        assert_eq!(g.take(5000), Ok(()));
        assert_eq!(g.take(5000), Err(100));
        // Burst 3: three at once, then paced.
        let mut g = Gcra::new(rate("10/s"), 3);
        for _ in 0..3 {
            assert_eq!(g.take(0), Ok(()));
        }
        assert_eq!(g.take(0), Err(100));
        assert_eq!(g.take(100), Ok(()));
        assert_eq!(g.take(100), Err(100));
        // Over a minute, "100/min" lets 100 (+ burst - 1) through.
        let mut g = Gcra::new(rate("100/min"), 1);
        let passed = (0..60_000u64)
            .step_by(10)
            .filter(|&t| g.take(t).is_ok())
            .count();
        assert_eq!(passed, 100);
    }

    fn shaping(text: &str) -> Shaping {
        #[derive(serde::Deserialize)]
        struct W {
            shaping: Shaping,
        }
        toml::from_str::<W>(text).unwrap().shaping
    }

    #[test]
    fn limits_layer_site_over_default_over_builtin() {
        let s = shaping(
            r#"
[shaping.default]
max_connections = 5
message_rate = "600/min"
[[shaping.site]]
mx = "*.google.com"
max_connections = 50
message_burst = 10
[[shaping.site]]
mx = "*.com"
max_connections = 7
"#,
        );
        let google = limits_for(&s, &["alt1.aspmx.l.google.com".into()]);
        assert_eq!(google.max_connections, 50);
        assert_eq!(google.message_rate, Some((rate("600/min"), 10)));
        assert_eq!(google.max_messages_per_connection, 1000);
        let other = limits_for(&s, &["mx.example.org".into()]);
        assert_eq!(other.max_connections, 5);
        assert_eq!(other.message_rate, Some((rate("600/min"), 1)));
        assert_eq!(other.backoff_secs, 300);
        // First matching override wins.
        assert_eq!(
            limits_for(&s, &["mx.example.com".into()]).max_connections,
            7
        );
        let builtin = limits_for(&Shaping::default(), &[]);
        assert_eq!(
            (
                builtin.max_connections,
                builtin.message_rate,
                builtin.idle_secs
            ),
            (20, None, 5)
        );
    }

    #[test]
    fn site_patterns() {
        assert!(site_pattern_matches("*.google.com", "aspmx.l.google.com"));
        assert!(site_pattern_matches("*.Google.com.", "MX.google.COM"));
        assert!(!site_pattern_matches("*.google.com", "google.com"));
        assert!(!site_pattern_matches("*.google.com", "notgoogle.com"));
        assert!(site_pattern_matches("mx.example.net", "MX.example.net."));
        assert!(!site_pattern_matches("mx.example.net", "a.mx.example.net"));
    }

    #[test]
    fn warmup_caps_by_day() {
        let src: Source = toml::from_str(
            "name = \"ip2\"\nwarmup = [100, 200, 400]\nwarmup_start = \"1970-01-11\"\n",
        )
        .unwrap();
        assert_eq!(warmup_cap(&src, 9), Some(0));
        assert_eq!(warmup_cap(&src, 10), Some(100));
        assert_eq!(warmup_cap(&src, 11), Some(200));
        assert_eq!(warmup_cap(&src, 12), Some(400));
        assert_eq!(warmup_cap(&src, 13), None);
        let plain: Source = toml::from_str("name = \"ip3\"\n").unwrap();
        assert_eq!(warmup_cap(&plain, 10), None);
    }

    #[test]
    fn slow_down_replies() {
        let r = |code, st: Option<(u8, u16, u16)>, text: &str| match st {
            Some((a, b, c)) => Reply::new(code, EnhancedStatus::new(a, b, c), text),
            None => Reply::plain(code, text),
        };
        assert!(is_slow_down(&r(421, Some((4, 7, 0)), "Try again later")));
        assert!(is_slow_down(&r(
            451,
            Some((4, 7, 28)),
            "Our system has detected an unusual rate of unsolicited mail"
        )));
        // Gmail's 4.2.1 is about one recipient's inbox, not the site: no site back-off.
        assert!(!is_slow_down(&r(
            450,
            Some((4, 2, 1)),
            "The user you are trying to contact is receiving mail at a rate that prevents additional messages"
        )));
        assert!(is_slow_down(&r(
            451,
            Some((4, 7, 500)),
            "Server busy. Please try again later"
        )));
        assert!(is_slow_down(&r(
            452,
            None,
            "Too many connections, slow down"
        )));
        assert!(!is_slow_down(&r(
            451,
            Some((4, 3, 0)),
            "Temporary local problem"
        )));
        assert!(!is_slow_down(&r(452, Some((4, 2, 2)), "Mailbox full")));
        assert!(!is_slow_down(&r(
            550,
            Some((5, 7, 1)),
            "rate limit exceeded"
        )));
        assert!(!is_slow_down(&r(
            452,
            Some((4, 5, 3)),
            "Too many recipients"
        )));
    }
}
