//! The MTA-STS cache and probe (RFC 8461 §5.1): look up the TXT id, reuse the cached policy
//! while the id is unchanged and the entry fresh, fetch otherwise, and keep a still-valid
//! cached policy when anything fails.
//!
//! What to do is decided by pure functions ([`plan`], [`settle`]) so every case is a table
//! test; [`StsCache::probe`] only performs the DNS lookup and the fetch they ask for.

use std::collections::HashMap;
use std::sync::Mutex;

use hickory_resolver::net::{DnsError as HickoryDnsError, NetError};
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::rr::RData;
use serde::{Deserialize, Serialize};

use super::{StsError, StsPolicy, StsTxt, fetch_policy, select_txt};
use crate::dns::Resolver;

/// A cached entry is refreshed once it is this old, or half its `max_age`, whichever is
/// sooner, so a policy is renewed well before it expires (RFC 8461 §5.1 "proactive refresh").
const REFRESH_AFTER_SECS: u64 = 86_400;

/// What the probe found for a domain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "kebab-case")]
pub enum StsProbe {
    /// The domain has no MTA-STS record and nothing is cached.
    None,
    /// A policy applies (its mode may be enforce, testing or none).
    Valid {
        /// The policy.
        policy: StsPolicy,
        /// Its id from the TXT record.
        id: String,
        /// True when the cached copy was used (same id, or the lookup/fetch failed).
        from_cache: bool,
    },
    /// The record or policy is malformed and nothing valid is cached: no policy applies.
    Invalid {
        /// Why, starting with the RFC 8460 result type (`sts-policy-invalid: ...`).
        reason: String,
    },
    /// DNS or HTTPS failed and nothing valid is cached: no policy applies.
    LookupFailed {
        /// Why.
        reason: String,
    },
}

/// One cached policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StsCacheEntry {
    /// The policy as fetched.
    pub policy: StsPolicy,
    /// The TXT id it was fetched under.
    pub id: String,
    /// Unix seconds of the fetch.
    pub fetched_at: u64,
    /// Unix seconds after which it must not be used (`fetched_at + max_age`).
    pub expires: u64,
}

impl StsCacheEntry {
    /// True while the entry may still be used.
    pub fn valid_at(&self, now: u64) -> bool {
        now < self.expires
    }

    /// True while the entry needs no refresh (same id assumed).
    pub fn fresh_at(&self, now: u64) -> bool {
        let age = self.policy.max_age.div_ceil(2).min(REFRESH_AFTER_SECS);
        now < self.fetched_at.saturating_add(age)
    }
}

/// Cached policies by domain (lowercase, no trailing dot); shared by delivery tasks.
#[derive(Debug, Default)]
pub struct StsCache {
    entries: Mutex<HashMap<String, StsCacheEntry>>,
}

/// What the TXT lookup returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum TxtAnswer {
    /// Exactly one valid STS record.
    Record(StsTxt),
    /// NXDOMAIN, NODATA or no `v=STSv1` record.
    Absent,
    /// Malformed or several records.
    Invalid(String),
    /// The lookup failed (timeout, SERVFAIL, REFUSED).
    Failed(String),
}

/// The next step after the TXT lookup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Plan {
    /// Answer now.
    Done(StsProbe),
    /// Fetch the policy for this id.
    Fetch(String),
}

impl StsCache {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    /// The cached entry for `domain`, if any (expired or not).
    pub fn get(&self, domain: &str) -> Option<StsCacheEntry> {
        self.lock().get(&normalise(domain)).cloned()
    }

    /// Stores an entry (e.g. restored from the spool database).
    pub fn insert(&self, domain: &str, entry: StsCacheEntry) {
        self.lock().insert(normalise(domain), entry);
    }

    /// Drops entries that expired before `now`.
    pub fn purge_expired(&self, now: u64) {
        self.lock().retain(|_, e| e.valid_at(now));
    }

    /// The cache as JSON, for persisting in the spool database.
    pub fn to_json(&self) -> String {
        let entries = self.lock().clone();
        // A map of plain structs with string keys always serialises.
        serde_json::to_string(&entries).unwrap_or_else(|_| "{}".into())
    }

    /// A cache restored from [`StsCache::to_json`] output.
    pub fn from_json(json: &str) -> Result<Self, serde_json::Error> {
        let entries: HashMap<String, StsCacheEntry> = serde_json::from_str(json)?;
        Ok(Self {
            entries: Mutex::new(entries),
        })
    }

    /// Probes `domain` at Unix time `now`: TXT lookup of `_mta-sts.DOMAIN`, then the cache or
    /// an HTTPS fetch as [`plan`] says, updating the cache with what was fetched.
    pub async fn probe(
        &self,
        resolver: &Resolver,
        client: &reqwest::Client,
        domain: &str,
        now: u64,
    ) -> StsProbe {
        let domain = normalise(domain);
        let answer = lookup_txt(resolver, &domain).await;
        let cached = self.get(&domain);
        match plan(answer, cached.as_ref(), now) {
            Plan::Done(probe) => probe,
            Plan::Fetch(id) => {
                let fetched = fetch_policy(client, &domain).await;
                let (probe, store) = settle(fetched, id, cached.as_ref(), now);
                if let Some(entry) = store {
                    self.insert(&domain, entry);
                }
                probe
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, StsCacheEntry>> {
        // A panic while holding the lock cannot leave the map half-updated (single inserts),
        // so a poisoned lock is still usable.
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Decides from the TXT answer and the cache whether to answer now or fetch.
pub(crate) fn plan(answer: TxtAnswer, cached: Option<&StsCacheEntry>, now: u64) -> Plan {
    let usable = cached.filter(|e| e.valid_at(now));
    let from_cache = |e: &StsCacheEntry| StsProbe::Valid {
        policy: e.policy.clone(),
        id: e.id.clone(),
        from_cache: true,
    };
    match answer {
        TxtAnswer::Record(txt) => match usable {
            Some(e) if e.id == txt.id && e.fresh_at(now) => Plan::Done(from_cache(e)),
            _ => Plan::Fetch(txt.id),
        },
        // RFC 8461 §5.1: a missing or broken record does not void a cached policy; only its
        // expiry (or a fetched `mode: none`) does.
        _ if usable.is_some() => Plan::Done(usable.map(from_cache).unwrap_or(StsProbe::None)),
        TxtAnswer::Absent => Plan::Done(StsProbe::None),
        TxtAnswer::Invalid(reason) => Plan::Done(StsProbe::Invalid { reason }),
        TxtAnswer::Failed(reason) => Plan::Done(StsProbe::LookupFailed { reason }),
    }
}

/// Turns a fetch result into the probe answer and the entry to cache (if any).
pub(crate) fn settle(
    fetched: Result<StsPolicy, StsError>,
    id: String,
    cached: Option<&StsCacheEntry>,
    now: u64,
) -> (StsProbe, Option<StsCacheEntry>) {
    match fetched {
        Ok(policy) => {
            let entry = StsCacheEntry {
                expires: now.saturating_add(policy.max_age),
                policy: policy.clone(),
                id: id.clone(),
                fetched_at: now,
            };
            let probe = StsProbe::Valid {
                policy,
                id,
                from_cache: false,
            };
            (probe, Some(entry))
        }
        Err(e) => match cached.filter(|c| c.valid_at(now)) {
            Some(c) => {
                let probe = StsProbe::Valid {
                    policy: c.policy.clone(),
                    id: c.id.clone(),
                    from_cache: true,
                };
                (probe, None)
            }
            None if e.report_code() == "sts-policy-invalid" => (
                StsProbe::Invalid {
                    reason: e.to_string(),
                },
                None,
            ),
            None => (
                StsProbe::LookupFailed {
                    reason: e.to_string(),
                },
                None,
            ),
        },
    }
}

/// Looks up and classifies the TXT records of `_mta-sts.DOMAIN`.
async fn lookup_txt(resolver: &Resolver, domain: &str) -> TxtAnswer {
    let name = format!("_mta-sts.{domain}.");
    match resolver.txt_lookup(name.as_str()).await {
        Ok(lookup) => {
            let records: Vec<String> = lookup
                .answers()
                .iter()
                .filter_map(|r| match &r.data {
                    RData::TXT(txt) => Some(
                        txt.txt_data
                            .iter()
                            .map(|s| String::from_utf8_lossy(s).into_owned())
                            .collect::<String>(),
                    ),
                    _ => None,
                })
                .collect();
            match select_txt(&records) {
                Ok(Some(txt)) => TxtAnswer::Record(txt),
                Ok(None) => TxtAnswer::Absent,
                Err(e) => TxtAnswer::Invalid(e.to_string()),
            }
        }
        Err(NetError::Dns(HickoryDnsError::NoRecordsFound(nr)))
            if matches!(
                nr.response_code,
                ResponseCode::NXDomain | ResponseCode::NoError
            ) =>
        {
            TxtAnswer::Absent
        }
        Err(e) => TxtAnswer::Failed(format!("TXT lookup of {name}: {e}")),
    }
}

/// Domains are keyed lowercase without a trailing dot.
fn normalise(domain: &str) -> String {
    domain.trim_end_matches('.').to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::super::{StsMode, parse_policy};
    use super::*;

    fn policy(max_age: u64) -> StsPolicy {
        parse_policy(&format!(
            "version: STSv1\nmode: enforce\nmx: mx.example.com\nmax_age: {max_age}\n"
        ))
        .unwrap()
    }

    fn entry(id: &str, fetched_at: u64, max_age: u64) -> StsCacheEntry {
        StsCacheEntry {
            policy: policy(max_age),
            id: id.into(),
            fetched_at,
            expires: fetched_at + max_age,
        }
    }

    fn rec(id: &str) -> TxtAnswer {
        TxtAnswer::Record(StsTxt { id: id.into() })
    }

    fn cached(id: &str) -> StsProbe {
        StsProbe::Valid {
            policy: policy(604_800),
            id: id.into(),
            from_cache: true,
        }
    }

    #[test]
    fn plan_table() {
        let week = entry("a", 1_000, 604_800);
        let t0 = 1_000;
        let fresh = t0 + 3_600;
        let stale = t0 + 86_400; // refresh due, not expired
        let expired = t0 + 604_800;
        let cases: Vec<(TxtAnswer, Option<&StsCacheEntry>, u64, Plan)> = vec![
            (rec("a"), None, fresh, Plan::Fetch("a".into())),
            (rec("a"), Some(&week), fresh, Plan::Done(cached("a"))),
            (rec("b"), Some(&week), fresh, Plan::Fetch("b".into())),
            (rec("a"), Some(&week), stale, Plan::Fetch("a".into())),
            (rec("a"), Some(&week), expired, Plan::Fetch("a".into())),
            (TxtAnswer::Absent, None, fresh, Plan::Done(StsProbe::None)),
            (
                TxtAnswer::Absent,
                Some(&week),
                fresh,
                Plan::Done(cached("a")),
            ),
            (
                TxtAnswer::Absent,
                Some(&week),
                expired,
                Plan::Done(StsProbe::None),
            ),
            (
                TxtAnswer::Invalid("x".into()),
                None,
                fresh,
                Plan::Done(StsProbe::Invalid { reason: "x".into() }),
            ),
            (
                TxtAnswer::Invalid("x".into()),
                Some(&week),
                stale,
                Plan::Done(cached("a")),
            ),
            (
                TxtAnswer::Failed("y".into()),
                None,
                fresh,
                Plan::Done(StsProbe::LookupFailed { reason: "y".into() }),
            ),
            (
                TxtAnswer::Failed("y".into()),
                Some(&week),
                fresh,
                Plan::Done(cached("a")),
            ),
            (
                TxtAnswer::Failed("y".into()),
                Some(&week),
                expired,
                Plan::Done(StsProbe::LookupFailed { reason: "y".into() }),
            ),
        ];
        for (i, (answer, cache, now, want)) in cases.into_iter().enumerate() {
            assert_eq!(plan(answer, cache, now), want, "case {i}");
        }
    }

    #[test]
    fn freshness() {
        // Short max_age: refresh at half-life; long: after a day.
        let short = entry("a", 0, 600);
        assert!(short.fresh_at(299) && !short.fresh_at(300) && short.valid_at(599));
        assert!(!short.valid_at(600));
        let long = entry("a", 0, 604_800);
        assert!(long.fresh_at(86_399) && !long.fresh_at(86_400));
        let zero = entry("a", 0, 0);
        assert!(!zero.fresh_at(0) && !zero.valid_at(0));
    }

    #[test]
    fn settle_table() {
        let week = entry("a", 0, 604_800);
        let (p, store) = settle(Ok(policy(86_400)), "b".into(), Some(&week), 10);
        assert!(matches!(p, StsProbe::Valid { ref id, from_cache: false, .. } if id == "b"));
        let store = store.unwrap();
        assert_eq!(
            (store.fetched_at, store.expires, store.id.as_str()),
            (10, 86_410, "b")
        );

        let invalid = StsError::PolicyInvalid("no valid mx pattern".into());
        let (p, store) = settle(Err(invalid.clone()), "b".into(), Some(&week), 10);
        assert_eq!(p, cached("a"));
        assert!(store.is_none());
        let (p, _) = settle(Err(invalid.clone()), "b".into(), None, 10);
        assert!(
            matches!(p, StsProbe::Invalid { ref reason } if reason.starts_with("sts-policy-invalid"))
        );
        let (p, _) = settle(Err(invalid), "b".into(), Some(&week), 604_800);
        assert!(matches!(p, StsProbe::Invalid { .. }));

        let (p, _) = settle(Err(StsError::Status(404)), "b".into(), None, 10);
        assert!(matches!(p, StsProbe::LookupFailed { ref reason } if reason.contains("404")));
    }

    #[test]
    fn json_round_trip() {
        let cache = StsCache::new();
        cache.insert("Example.COM.", entry("a", 5, 600));
        let json = cache.to_json();
        let back = StsCache::from_json(&json).unwrap();
        let e = back.get("example.com").unwrap();
        assert_eq!(e, entry("a", 5, 600));
        assert_eq!(e.policy.mode, StsMode::Enforce);
        back.purge_expired(605);
        assert!(back.get("example.com").is_none());
        assert!(StsCache::from_json("[").is_err());
    }
}
