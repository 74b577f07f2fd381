//! Destination sites: where a domain's mail goes (a static route or its MX hosts), cached
//! for a few minutes. Domains whose MX sets are equal are one site and share its limits
//! (thousands of Google Workspace domains are one site).

use super::super::mx::{self, ResolveError, Target};
use super::super::{OutboundConfig, Route};
use crate::dns::Resolver;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// How long a resolved site is reused, in seconds.
const TTL_SECS: u64 = 300;
/// How long a temporary resolution failure is remembered.
const FAIL_TTL_SECS: u64 = 30;
/// Domains remembered at most; the cache is dropped wholesale when full.
const MAX_ENTRIES: usize = 100_000;

/// One destination: its hosts, grouped by MX preference, and the port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Site {
    /// Identity shared by every domain with the same hosts, e.g. `mx1.example.com,mx2...`
    /// (sorted) or `route:host:port`.
    pub key: String,
    /// Hosts by preference, best group first; shuffled within a group per connection.
    pub groups: Vec<Vec<Target>>,
    /// The TCP port.
    pub port: u16,
    /// Every host name, for `[[shaping.site]]` patterns.
    pub hosts: Vec<String>,
}

impl Site {
    fn new(groups: Vec<Vec<Target>>, port: u16, route: Option<&Route>) -> Self {
        let mut hosts: Vec<String> = groups
            .iter()
            .flatten()
            .map(|t| t.host.to_ascii_lowercase())
            .collect();
        hosts.sort();
        hosts.dedup();
        let key = match route {
            Some(r) => format!("route:{}:{}", r.host.to_ascii_lowercase(), r.port),
            None if port == 25 => hosts.join(","),
            None => format!("{}:{port}", hosts.join(",")),
        };
        Self {
            key,
            groups,
            port,
            hosts,
        }
    }

    /// The hosts in the order one connection should try them.
    pub fn try_order(&self) -> Vec<Target> {
        mx::shuffle_groups(&self.groups)
    }
}

type Entry = (u64, Result<Arc<Site>, ResolveError>);

/// Domain -> site, with expiry by the queue clock.
#[derive(Default)]
pub struct SiteCache {
    map: Mutex<HashMap<String, Entry>>,
}

impl SiteCache {
    /// The site for `domain` at Unix second `now`: a `[[route]]` first, else MX.
    pub async fn site_for(
        &self,
        cfg: &OutboundConfig,
        resolver: &Resolver,
        domain: &str,
        now: u64,
    ) -> Result<Arc<Site>, ResolveError> {
        let domain = domain.to_ascii_lowercase();
        if let Some((expires, result)) = self.lock().get(&domain)
            && *expires > now
        {
            return result.clone();
        }
        let result = resolve(cfg, resolver, &domain).await.map(Arc::new);
        let ttl = match &result {
            Ok(_) => TTL_SECS,
            Err(e) if e.is_temporary() => FAIL_TTL_SECS,
            Err(_) => TTL_SECS,
        };
        let mut map = self.lock();
        if map.len() >= MAX_ENTRIES {
            map.clear();
        }
        map.insert(domain, (now + ttl, result.clone()));
        result
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }
}

async fn resolve(
    cfg: &OutboundConfig,
    resolver: &Resolver,
    domain: &str,
) -> Result<Site, ResolveError> {
    if let Some(route) = cfg
        .routes
        .iter()
        .find(|r| r.domain.eq_ignore_ascii_case(domain))
    {
        let addrs = mx::lookup_addrs(resolver, &route.host).await?;
        if addrs.is_empty() {
            // A route is our own configuration: a missing address is ours to fix, not a
            // reason to bounce.
            return Err(ResolveError::Temporary {
                domain: route.host.clone(),
                reason: "route host has no address".into(),
            });
        }
        let target = Target {
            host: route.host.clone(),
            addrs,
        };
        return Ok(Site::new(vec![vec![target]], route.port, Some(route)));
    }
    let groups = mx::resolve_groups(resolver, domain).await?;
    Ok(Site::new(groups, cfg.smtp_port, None))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(host: &str) -> Target {
        Target {
            host: host.into(),
            addrs: vec!["192.0.2.1".parse().unwrap()],
        }
    }

    #[test]
    fn sites_with_the_same_hosts_share_a_key() {
        let a = Site::new(
            vec![vec![t("MX2.example.com"), t("mx1.example.com")]],
            25,
            None,
        );
        let b = Site::new(
            vec![vec![t("mx1.example.com")], vec![t("mx2.example.com")]],
            25,
            None,
        );
        assert_eq!(a.key, "mx1.example.com,mx2.example.com");
        assert_eq!(a.key, b.key);
        let other_port = Site::new(vec![vec![t("mx1.example.com")]], 2525, None);
        assert_eq!(other_port.key, "mx1.example.com:2525");
        let route = Route {
            domain: "partner.example".into(),
            host: "127.0.0.1".into(),
            port: 2526,
        };
        let r = Site::new(vec![vec![t("127.0.0.1")]], 2526, Some(&route));
        assert_eq!(r.key, "route:127.0.0.1:2526");
        // The best group always comes first in the try order.
        for _ in 0..20 {
            assert_eq!(b.try_order()[0].host, "mx1.example.com");
        }
    }
}
