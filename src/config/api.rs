//! `[api]`: the HTTP sending API (JSON over HTTP or HTTPS, OAuth 2.0 / API key / Basic auth).

use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;

/// `[api]`: where the HTTP API listens and how long its access tokens live.
///
/// The API submits mail on behalf of authenticated clients (like SMTP submission), so it is
/// off unless an admin turns it on: a section without `address` starts nothing.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiSection {
    /// Address to serve the API on, e.g. `"127.0.0.1:8025"`. Default: none (no API
    /// listener). Clients authenticate on every request, but without `tls_cert` secrets
    /// cross the wire in clear: keep a plain-HTTP API on loopback or behind a TLS proxy.
    pub address: Option<SocketAddr>,
    /// PEM certificate chain for HTTPS, relative to this file. Default: none (plain HTTP).
    /// Set together with `tls_key`.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for `tls_cert`, relative to this file. Default: none.
    pub tls_key: Option<PathBuf>,
    /// Lifetime of OAuth 2.0 access tokens from `POST /oauth/token`, in seconds. Short, so
    /// a leaked token is worth little; clients fetch a new one with their credentials.
    /// Default 900 (15 minutes).
    pub token_ttl_secs: u64,
    /// Failed authentication attempts allowed per client id and per client IP within a
    /// minute; further attempts get 429 with `Retry-After` until the minute is over, which
    /// makes guessing secrets or user passwords impractically slow. Default 10.
    pub max_auth_failures_per_minute: u32,
}

impl Default for ApiSection {
    fn default() -> Self {
        Self {
            address: None,
            tls_cert: None,
            tls_key: None,
            token_ttl_secs: 900,
            max_auth_failures_per_minute: 10,
        }
    }
}
