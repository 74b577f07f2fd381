//! Building the DNS resolver used for MX and address lookups.
//!
//! One constructor so production (system resolver) and tests (a loopback DNS server serving
//! zone text) get the same resolver type and the same lookup code paths.

use std::net::SocketAddr;
use std::time::Duration;

use hickory_resolver::config::{NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::net::runtime::TokioRuntimeProvider;

/// The resolver type the rest of the crate passes around, so callers never name hickory types.
pub type Resolver = hickory_resolver::TokioResolver;

/// Why a resolver could not be built.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    /// The system configuration (`/etc/resolv.conf`) could not be read or parsed.
    #[error("cannot read the system resolver configuration: {0}")]
    SystemConfig(String),
    /// hickory rejected the configuration we gave it.
    #[error("cannot build the resolver: {0}")]
    Build(String),
}

/// How long one query may take before it is retried; MX lookups sit on the delivery path, so
/// a dead nameserver must not stall a queue runner for long.
const QUERY_TIMEOUT: Duration = Duration::from_secs(5);
/// How many times a query is sent before giving up (a temporary failure for delivery).
const QUERY_ATTEMPTS: usize = 2;
/// A small cache: enough to share MX answers between recipients of one run, small enough
/// that tests which change zones between resolvers are not confused.
const CACHE_SIZE: u64 = 256;

/// Builds the resolver: the system configuration when `nameservers` is empty, otherwise
/// exactly those servers over UDP with TCP fallback (tests pass a loopback server here).
pub fn build_resolver(nameservers: &[SocketAddr]) -> Result<Resolver, DnsError> {
    let provider = TokioRuntimeProvider::default();
    let mut builder = if nameservers.is_empty() {
        Resolver::builder(provider).map_err(|e| DnsError::SystemConfig(e.to_string()))?
    } else {
        let servers = nameservers
            .iter()
            .map(|addr| {
                let mut ns = NameServerConfig::udp_and_tcp(addr.ip());
                for conn in &mut ns.connections {
                    conn.port = addr.port();
                }
                ns
            })
            .collect();
        let builder =
            Resolver::builder_with_config(ResolverConfig::from_name_servers(servers), provider);
        builder.with_options(ResolverOpts::default())
    };
    let opts = builder.options_mut();
    opts.timeout = QUERY_TIMEOUT;
    opts.attempts = QUERY_ATTEMPTS;
    opts.cache_size = CACHE_SIZE;
    builder.build().map_err(|e| DnsError::Build(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn builds_with_explicit_servers() {
        let addr: SocketAddr = "127.0.0.1:5353".parse().unwrap();
        assert!(build_resolver(&[addr]).is_ok());
    }
}
