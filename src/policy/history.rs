//! The STARTTLS ratchet (after chasquid's domaininfo): the best transport security each
//! destination domain has shown. Once a domain delivered over verified TLS, less is not
//! accepted silently; once it offered TLS, plaintext is not. Only an explicit
//! [`TlsHistory::forget`] (an admin's policy change) lowers it.
//!
//! Pure data: the caller records outcomes after each delivery and persists the struct (serde)
//! in the spool database.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Transport security of one delivery, weakest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TlsLevel {
    /// No TLS.
    Plain,
    /// TLS with a certificate that was not (or could not be) verified.
    Tls,
    /// TLS with a certificate verified against the MX name.
    VerifiedTls,
}

impl TlsLevel {
    /// The name used in logs and `policy explain`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Plain => "plain",
            Self::Tls => "tls",
            Self::VerifiedTls => "verified-tls",
        }
    }
}

/// What is remembered about one domain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DomainTls {
    /// The best level ever seen.
    pub best: TlsLevel,
    /// Unix seconds when `best` was first seen.
    pub best_since: u64,
    /// Unix seconds when `best` was last seen.
    pub best_last_seen: u64,
    /// Unix seconds of the last recorded delivery at any level.
    pub last_seen: u64,
}

/// Best TLS level per destination domain (lowercase, no trailing dot).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TlsHistory {
    domains: BTreeMap<String, DomainTls>,
}

impl TlsHistory {
    /// An empty history.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records a delivery to `domain` at `level`; the best level only ever goes up.
    pub fn record(&mut self, domain: &str, level: TlsLevel, now: u64) {
        let entry = self.domains.entry(normalise(domain)).or_insert(DomainTls {
            best: level,
            best_since: now,
            best_last_seen: now,
            last_seen: now,
        });
        if level > entry.best {
            entry.best = level;
            entry.best_since = now;
        }
        if level == entry.best {
            entry.best_last_seen = now;
        }
        entry.last_seen = entry.last_seen.max(now);
    }

    /// The least the next delivery to `domain` must achieve: `None` when nothing better than
    /// plaintext was ever seen.
    pub fn required(&self, domain: &str) -> Option<TlsLevel> {
        self.get(domain)
            .map(|d| d.best)
            .filter(|l| *l > TlsLevel::Plain)
    }

    /// What is remembered about `domain`.
    pub fn get(&self, domain: &str) -> Option<&DomainTls> {
        self.domains.get(&normalise(domain))
    }

    /// Forgets `domain` (an admin's explicit decision, e.g. the partner changed providers);
    /// returns what was remembered.
    pub fn forget(&mut self, domain: &str) -> Option<DomainTls> {
        self.domains.remove(&normalise(domain))
    }

    /// All domains, sorted by name.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &DomainTls)> {
        self.domains.iter().map(|(d, t)| (d.as_str(), t))
    }
}

fn normalise(domain: &str) -> String {
    domain.trim_end_matches('.').to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::TlsLevel::*;
    use super::*;

    #[test]
    fn ratchet_table() {
        // (deliveries in order, required afterwards)
        let cases: &[(&[TlsLevel], Option<TlsLevel>)] = &[
            (&[], None),
            (&[Plain], None),
            (&[Plain, Plain], None),
            (&[Tls], Some(Tls)),
            (&[Plain, Tls], Some(Tls)),
            (&[Tls, Plain], Some(Tls)),
            (&[VerifiedTls], Some(VerifiedTls)),
            (&[VerifiedTls, Tls, Plain], Some(VerifiedTls)),
            (&[Plain, Tls, VerifiedTls, Tls], Some(VerifiedTls)),
        ];
        for (seen, want) in cases {
            let mut h = TlsHistory::new();
            for (t, level) in seen.iter().enumerate() {
                h.record("Example.COM.", *level, t as u64);
            }
            assert_eq!(h.required("example.com"), *want, "{seen:?}");
        }
    }

    #[test]
    fn timestamps_and_forget() {
        let mut h = TlsHistory::new();
        h.record("a.example", Tls, 10);
        h.record("a.example", VerifiedTls, 20);
        h.record("a.example", Tls, 30);
        h.record("a.example", VerifiedTls, 40);
        h.record("a.example", Plain, 50);
        let d = h.get("A.example").unwrap();
        assert_eq!(
            (d.best, d.best_since, d.best_last_seen, d.last_seen),
            (VerifiedTls, 20, 40, 50)
        );
        assert_eq!(h.iter().count(), 1);
        assert!(h.forget("a.example.").is_some());
        assert_eq!(h.required("a.example"), None);
    }

    #[test]
    fn serde_round_trip() {
        let mut h = TlsHistory::new();
        h.record("a.example", VerifiedTls, 1);
        h.record("b.example", Plain, 2);
        let json = serde_json::to_string(&h).unwrap();
        assert!(json.contains("\"verified-tls\""), "{json}");
        let back: TlsHistory = serde_json::from_str(&json).unwrap();
        assert_eq!(back, h);
    }
}
