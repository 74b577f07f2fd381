//! Finding where mail for a domain goes: MX records, null MX, implicit MX and address
//! literals (RFC 5321 §5.1, RFC 7505).
//!
//! The DNS answers are first reduced to a small [`MxAnswer`] value, and the decision of what
//! that answer means is the pure function [`classify_mx`], so every case is a table test.

use std::net::IpAddr;

use hickory_resolver::net::{DnsError as HickoryDnsError, NetError};
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::rr::RData;
use rand::seq::SliceRandom;

use crate::dns::Resolver;
use crate::smtp::reply::{EnhancedStatus, Reply};

/// One host to try, with its addresses, in the order delivery should try them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The MX exchange name without the trailing dot, or the domain itself for an implicit MX,
    /// or the literal for `[1.2.3.4]`; used in logs and in synthetic replies.
    pub host: String,
    /// The host's addresses (A then AAAA), possibly empty when the exchange has none.
    pub addrs: Vec<IpAddr>,
}

/// Why no target list could be produced for a domain.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    /// The domain publishes a null MX (RFC 7505): it accepts no mail, permanently.
    #[error("domain {0} does not accept mail (null MX)")]
    NullMx(String),
    /// The domain does not exist, or has neither MX nor address records.
    #[error("domain {0} has no mail server")]
    NoSuchDomain(String),
    /// DNS failed in a way that may go away (SERVFAIL, timeout, refused).
    #[error("temporary DNS failure for {domain}: {reason}")]
    Temporary {
        /// The domain being looked up.
        domain: String,
        /// What went wrong, for the deferral reason.
        reason: String,
    },
}

impl ResolveError {
    /// The reply a recipient gets when its domain cannot be resolved, so a DSN or a
    /// deferral log carries a standard code: 5.1.10 null MX, 5.1.2 bad domain, 4.4.3 DNS.
    pub fn to_reply(&self) -> Reply {
        match self {
            Self::NullMx(_) => Reply::new(550, EnhancedStatus::new(5, 1, 10), self.to_string()),
            Self::NoSuchDomain(_) => {
                Reply::new(550, EnhancedStatus::new(5, 1, 2), self.to_string())
            }
            Self::Temporary { .. } => {
                Reply::new(451, EnhancedStatus::new(4, 4, 3), self.to_string())
            }
        }
    }

    /// True when retrying later can help.
    pub fn is_temporary(&self) -> bool {
        matches!(self, Self::Temporary { .. })
    }
}

/// What an MX query returned, reduced to what the delivery decision needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MxAnswer {
    /// MX records as (preference, exchange without trailing dot; empty for the root `.`).
    Records(Vec<(u16, String)>),
    /// The name exists but has no MX records (NOERROR/NODATA).
    NoRecords,
    /// The name does not exist (NXDOMAIN).
    NxDomain,
    /// Any other failure; the text is kept for the deferral reason.
    Failed(String),
}

/// What to do next for a domain, decided from its MX answer alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MxPlan {
    /// Look up the addresses of these exchanges, grouped by preference, best group first.
    Exchanges(Vec<Vec<String>>),
    /// No MX: the domain itself is the implicit MX (RFC 5321 §5.1).
    Implicit,
    /// Stop with this error.
    Error(ResolveError),
}

/// Decides what an MX answer means. Pure, so every branch is a table test.
///
/// A null MX counts only when it is the sole record (RFC 7505 §3); a `.` exchange among real
/// ones is skipped as unusable.
pub fn classify_mx(domain: &str, answer: MxAnswer) -> MxPlan {
    match answer {
        MxAnswer::NxDomain => MxPlan::Error(ResolveError::NoSuchDomain(domain.to_string())),
        MxAnswer::NoRecords => MxPlan::Implicit,
        MxAnswer::Failed(reason) => MxPlan::Error(ResolveError::Temporary {
            domain: domain.to_string(),
            reason,
        }),
        MxAnswer::Records(records) => {
            if records.len() == 1 && records[0].1.is_empty() {
                return MxPlan::Error(ResolveError::NullMx(domain.to_string()));
            }
            let mut usable: Vec<(u16, String)> =
                records.into_iter().filter(|(_, h)| !h.is_empty()).collect();
            if usable.is_empty() {
                return MxPlan::Error(ResolveError::NullMx(domain.to_string()));
            }
            usable.sort_by_key(|(pref, _)| *pref);
            let mut groups: Vec<(u16, Vec<String>)> = Vec::new();
            for (pref, host) in usable {
                match groups.last_mut() {
                    Some((p, hosts)) if *p == pref => hosts.push(host),
                    _ => groups.push((pref, vec![host])),
                }
            }
            MxPlan::Exchanges(groups.into_iter().map(|(_, hosts)| hosts).collect())
        }
    }
}

/// Parses an address literal `[1.2.3.4]` or `[IPv6:2001:db8::1]` (RFC 5321 §4.1.3).
pub fn parse_address_literal(domain: &str) -> Option<IpAddr> {
    let inner = domain.strip_prefix('[')?.strip_suffix(']')?;
    let inner = match inner.get(..5) {
        Some(tag) if tag.eq_ignore_ascii_case("IPv6:") => &inner[5..],
        _ => inner,
    };
    inner.parse().ok()
}

/// Resolves `domain` into the hosts to try, best first, shuffling hosts of equal preference
/// so load spreads the way the domain's owner intended (RFC 5321 §5.1).
pub async fn resolve_targets(
    resolver: &Resolver,
    domain: &str,
) -> Result<Vec<Target>, ResolveError> {
    Ok(shuffle_groups(&resolve_groups(resolver, domain).await?))
}

/// Flattens preference groups into one try order, shuffling within each group; called per
/// connection so equal-preference hosts share the load even when the groups are cached.
pub fn shuffle_groups(groups: &[Vec<Target>]) -> Vec<Target> {
    let mut rng = rand::rng();
    groups
        .iter()
        .flat_map(|g| {
            let mut g = g.clone();
            g.shuffle(&mut rng);
            g
        })
        .collect()
}

/// Resolves `domain` into groups of hosts of equal MX preference, best group first, each
/// host with its addresses. Unshuffled: see [`shuffle_groups`].
pub async fn resolve_groups(
    resolver: &Resolver,
    domain: &str,
) -> Result<Vec<Vec<Target>>, ResolveError> {
    if let Some(ip) = parse_address_literal(domain) {
        return Ok(vec![vec![Target {
            host: domain.to_string(),
            addrs: vec![ip],
        }]]);
    }
    let fqdn = fqdn(domain);
    let answer = match resolver.mx_lookup(fqdn.as_str()).await {
        Ok(lookup) => MxAnswer::Records(
            lookup
                .answers()
                .iter()
                .filter_map(|r| match &r.data {
                    RData::MX(mx) => Some((mx.preference, host_name(&mx.exchange.to_string()))),
                    _ => None,
                })
                .collect(),
        ),
        Err(e) => net_error_answer(&e),
    };
    match classify_mx(domain, answer) {
        MxPlan::Error(e) => Err(e),
        MxPlan::Implicit => {
            let addrs = lookup_addrs(resolver, domain).await?;
            if addrs.is_empty() {
                Err(ResolveError::NoSuchDomain(domain.to_string()))
            } else {
                Ok(vec![vec![Target {
                    host: domain.to_string(),
                    addrs,
                }]])
            }
        }
        MxPlan::Exchanges(groups) => {
            let mut out = Vec::with_capacity(groups.len());
            for group in groups {
                let mut targets = Vec::with_capacity(group.len());
                for host in group {
                    // One exchange failing to resolve must not stop delivery to the others;
                    // an empty address list is skipped by the client with a logged reason.
                    let addrs = match lookup_addrs(resolver, &host).await {
                        Ok(a) => a,
                        Err(e) => {
                            tracing::warn!(%host, error = %e, "MX exchange did not resolve");
                            Vec::new()
                        }
                    };
                    targets.push(Target { host, addrs });
                }
                out.push(targets);
            }
            if out.iter().flatten().all(|t| t.addrs.is_empty()) {
                return Err(ResolveError::Temporary {
                    domain: domain.to_string(),
                    reason: "no MX host has an address".to_string(),
                });
            }
            Ok(out)
        }
    }
}

/// Looks up A then AAAA for a host. "No records" for one family is not an error; a failure
/// of both lookups that is not NXDOMAIN/NODATA is temporary.
pub async fn lookup_addrs(resolver: &Resolver, host: &str) -> Result<Vec<IpAddr>, ResolveError> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(vec![ip]);
    }
    let name = fqdn(host);
    let mut addrs = Vec::new();
    let mut failure = None;
    for result in [
        resolver.ipv4_lookup(name.as_str()).await,
        resolver.ipv6_lookup(name.as_str()).await,
    ] {
        match result {
            Ok(lookup) => addrs.extend(lookup.answers().iter().filter_map(|r| match &r.data {
                RData::A(a) => Some(IpAddr::V4(a.0)),
                RData::AAAA(a) => Some(IpAddr::V6(a.0)),
                _ => None,
            })),
            Err(e) => {
                if let MxAnswer::Failed(reason) = net_error_answer(&e) {
                    failure = Some(reason);
                }
            }
        }
    }
    match failure {
        Some(reason) if addrs.is_empty() => Err(ResolveError::Temporary {
            domain: host.to_string(),
            reason,
        }),
        _ => Ok(addrs),
    }
}

/// Maps a hickory error onto the three cases delivery distinguishes.
fn net_error_answer(e: &NetError) -> MxAnswer {
    match e {
        NetError::Dns(HickoryDnsError::NoRecordsFound(nr)) => match nr.response_code {
            ResponseCode::NXDomain => MxAnswer::NxDomain,
            ResponseCode::NoError => MxAnswer::NoRecords,
            other => MxAnswer::Failed(format!("DNS response {other}")),
        },
        other => MxAnswer::Failed(other.to_string()),
    }
}

/// Makes a name absolute so the resolver's search list is never applied to mail domains.
fn fqdn(name: &str) -> String {
    if name.ends_with('.') {
        name.to_string()
    } else {
        format!("{name}.")
    }
}

/// A DNS name as text without the trailing dot; the root becomes the empty string.
fn host_name(name: &str) -> String {
    name.trim_end_matches('.').to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recs(list: &[(u16, &str)]) -> MxAnswer {
        MxAnswer::Records(list.iter().map(|(p, h)| (*p, h.to_string())).collect())
    }

    #[test]
    fn classification_table() {
        let d = "example.com";
        assert_eq!(
            classify_mx(d, recs(&[(0, "")])),
            MxPlan::Error(ResolveError::NullMx(d.into()))
        );
        assert_eq!(
            classify_mx(d, MxAnswer::NxDomain),
            MxPlan::Error(ResolveError::NoSuchDomain(d.into()))
        );
        assert_eq!(classify_mx(d, MxAnswer::NoRecords), MxPlan::Implicit);
        assert!(matches!(
            classify_mx(d, MxAnswer::Failed("SERVFAIL".into())),
            MxPlan::Error(ResolveError::Temporary { .. })
        ));
        assert_eq!(
            classify_mx(d, recs(&[(20, "b"), (10, "a"), (20, "c"), (0, "")])),
            MxPlan::Exchanges(vec![vec!["a".into()], vec!["b".into(), "c".into()]])
        );
    }

    #[test]
    fn resolve_errors_map_to_standard_codes() {
        let r = ResolveError::NullMx("x".into()).to_reply();
        assert_eq!(
            (r.code, r.status),
            (550, Some(EnhancedStatus::new(5, 1, 10)))
        );
        let r = ResolveError::NoSuchDomain("x".into()).to_reply();
        assert_eq!(
            (r.code, r.status),
            (550, Some(EnhancedStatus::new(5, 1, 2)))
        );
        let r = ResolveError::Temporary {
            domain: "x".into(),
            reason: "t".into(),
        }
        .to_reply();
        assert_eq!(
            (r.code, r.status),
            (451, Some(EnhancedStatus::new(4, 4, 3)))
        );
    }

    #[test]
    fn address_literals() {
        assert_eq!(
            parse_address_literal("[192.0.2.1]"),
            Some("192.0.2.1".parse().unwrap())
        );
        assert_eq!(
            parse_address_literal("[IPv6:2001:db8::1]"),
            Some("2001:db8::1".parse().unwrap())
        );
        assert_eq!(parse_address_literal("example.com"), None);
        assert_eq!(parse_address_literal("[example.com]"), None);
    }
}
