//! Who is calling: client credentials (`X-API-Key: id:secret` or HTTP Basic), OAuth 2.0
//! bearer tokens, the token store and the failed-attempt limiter.
//!
//! Access tokens are random opaque strings (256 bits) kept in server memory, keyed by their
//! SHA-256: a lookup compares hashes in a map, never the token itself, and a memory dump
//! holds no usable token. They die with the process (clients then fetch a new one, as they
//! do every `token_ttl_secs` anyway).

use super::clients::{ApiClient, Scope, verify_secret};
use super::{Api, ApiError};
use crate::audit::{Action, Actor};
use axum::http::HeaderMap;
use base64::Engine;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;

/// An authenticated caller.
#[derive(Debug, Clone)]
pub struct Principal {
    /// The API client (for a password-grant token, the client the user logged in through).
    pub client: ApiClient,
    /// The SMTP user of a password-grant token.
    pub user: Option<String>,
    /// What this request may do: the client's scopes, or those granted to the token.
    pub scopes: Vec<Scope>,
}

impl Principal {
    /// The identity mail is submitted under: the user of a password grant, else the client's
    /// name (matched by `[[class]] auth_users` and policy `authenticated_users`).
    pub fn identity(&self) -> &str {
        self.user.as_deref().unwrap_or(&self.client.name)
    }

    /// 403 unless the caller holds one of `wanted`.
    pub fn require(&self, wanted: &[Scope]) -> Result<(), ApiError> {
        if wanted.iter().any(|w| self.scopes.contains(w)) {
            Ok(())
        } else {
            Err(ApiError::Forbidden(wanted[0]))
        }
    }
}

/// Client credentials as presented.
pub(super) struct Credentials {
    pub id: String,
    pub secret: String,
}

/// Authenticates a request to a resource route by whichever method it uses.
pub(super) async fn authenticate(
    api: &Api,
    headers: &HeaderMap,
    ip: IpAddr,
) -> Result<Principal, ApiError> {
    let now = api.now();
    if let Some(key) = header_str(headers, "x-api-key") {
        let (id, secret) = key.split_once(':').unwrap_or((key, ""));
        let creds = Credentials {
            id: id.to_string(),
            secret: secret.to_string(),
        };
        let client = check_client(api, &creds, ip, "api_key")
            .await
            .map_err(unauthorized)?;
        return Ok(principal(client, None, None));
    }
    match header_str(headers, "authorization") {
        Some(value) if scheme(value, "basic").is_some() => {
            let creds = basic(value).ok_or_else(|| ApiError::Unauthorized {
                error: "invalid_request",
                message: "malformed Basic credentials".into(),
            })?;
            let client = check_client(api, &creds, ip, "basic")
                .await
                .map_err(unauthorized)?;
            Ok(principal(client, None, None))
        }
        Some(value) if scheme(value, "bearer").is_some() => {
            let token = scheme(value, "bearer").unwrap_or_default().trim();
            api.limiter.check(&ip_key(ip), now)?;
            let invalid = || ApiError::Unauthorized {
                error: "invalid_token",
                message: "the access token is unknown, revoked or expired".into(),
            };
            let failed = |why: &'static str| async move {
                let details = serde_json::json!({
                    "method": "bearer",
                    "ip": ip.to_string(),
                    "token_id": token_id(token),
                    "reason": why,
                });
                api.audit
                    .record_synced(Actor::http_client(ip), Action::AuthFailed, details)
                    .await;
            };
            let Some(grant) = api.tokens.lookup(token, now) else {
                api.limiter.fail(&ip_key(ip), now);
                failed("unknown, revoked or expired token").await;
                return Err(invalid());
            };
            // A removed client's tokens die with it.
            match api.clients.get(&grant.client_id)? {
                Some(client) => Ok(principal(client, grant.user, Some(grant.scopes))),
                None => {
                    failed("the client was removed").await;
                    Err(invalid())
                }
            }
        }
        _ => Err(ApiError::Unauthorized {
            error: "unauthorized",
            message: "credentials needed: X-API-Key, Basic or Bearer".into(),
        }),
    }
}

fn principal(client: ApiClient, user: Option<String>, scopes: Option<Vec<Scope>>) -> Principal {
    let scopes = scopes.unwrap_or_else(|| client.scopes.clone());
    // Scopes removed from the client since the token was issued no longer count.
    let scopes = scopes
        .into_iter()
        .filter(|s| client.scopes.contains(s))
        .collect();
    Principal {
        client,
        user,
        scopes,
    }
}

fn unauthorized(e: ApiError) -> ApiError {
    match e {
        ApiError::OAuth {
            code: "invalid_client",
            description,
            ..
        } => ApiError::Unauthorized {
            error: "invalid_client",
            message: description,
        },
        other => other,
    }
}

/// Verifies client credentials, counting failures per client id and per IP and auditing
/// each failure with `method` (`api_key`, `basic`, `oauth_form`, `oauth_basic`). Errors are
/// OAuth-shaped (`invalid_client`, 401) or 429 (refused before checking; not audited, so a
/// flood cannot grow the log faster than the limit allows).
pub(super) async fn check_client(
    api: &Api,
    creds: &Credentials,
    ip: IpAddr,
    method: &str,
) -> Result<ApiClient, ApiError> {
    let now = api.now();
    let client_key = format!("client:{}", creds.id);
    api.limiter.check(&ip_key(ip), now)?;
    api.limiter.check(&client_key, now)?;
    let client = api.clients.get(&creds.id)?;
    // Unknown ids cost the same hash work, so timing does not tell which ids exist.
    let hash = client
        .as_ref()
        .map(|c| c.secret_hash.clone())
        .unwrap_or_else(|| api.dummy_hash.clone());
    let secret = creds.secret.clone();
    let ok = tokio::task::spawn_blocking(move || verify_secret(&secret, &hash))
        .await
        .unwrap_or(false);
    match client {
        Some(c) if ok => Ok(c),
        _ => {
            api.limiter.fail(&ip_key(ip), now);
            api.limiter.fail(&client_key, now);
            tracing::info!(client_id = %creds.id, ip = %ip, "API authentication failed");
            let details = serde_json::json!({
                "method": method,
                "client_id": creds.id,
                "ip": ip.to_string(),
                "reason": "unknown client or wrong secret",
            });
            api.audit
                .record_synced(Actor::http_client(ip), Action::AuthFailed, details)
                .await;
            Err(ApiError::OAuth {
                status: 401,
                code: "invalid_client",
                description: "unknown client or wrong secret".into(),
            })
        }
    }
}

/// The limiter key for an IP.
pub(super) fn ip_key(ip: IpAddr) -> String {
    format!("ip:{ip}")
}

/// A header's value as text, if present and visible ASCII.
pub(super) fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// The credentials after `scheme ` in an Authorization value (scheme case-insensitive).
fn scheme<'a>(value: &'a str, name: &str) -> Option<&'a str> {
    let (s, rest) = value.split_once(' ')?;
    s.eq_ignore_ascii_case(name).then_some(rest)
}

/// Decodes `Basic base64(id:secret)`. RFC 6749 §2.3.1 form-encodes both parts first; our
/// ids and secrets are hex, so decoding changes nothing for them, and we accept both.
pub(super) fn basic(value: &str) -> Option<Credentials> {
    let b64 = scheme(value, "basic")?.trim();
    let raw = base64::engine::general_purpose::STANDARD.decode(b64).ok()?;
    let text = String::from_utf8(raw).ok()?;
    let (id, secret) = text.split_once(':')?;
    Some(Credentials {
        id: id.to_string(),
        secret: secret.to_string(),
    })
}

/// What an access token grants.
#[derive(Debug, Clone)]
pub(super) struct Grant {
    pub client_id: String,
    pub user: Option<String>,
    pub scopes: Vec<Scope>,
    pub expires: u64,
}

/// Issued access tokens, keyed by the SHA-256 of the token.
#[derive(Default)]
pub(super) struct TokenStore {
    grants: Mutex<HashMap<[u8; 32], Grant>>,
}

impl TokenStore {
    /// Issues a token for `grant`; returns the token (shown once to the client).
    pub fn issue(&self, grant: Grant, now: u64) -> String {
        let token = hex::encode(rand::random::<[u8; 32]>());
        let mut map = self.grants.lock().unwrap_or_else(|p| p.into_inner());
        map.retain(|_, g| g.expires > now);
        map.insert(digest(&token), grant);
        token
    }

    /// The grant of a live token.
    pub fn lookup(&self, token: &str, now: u64) -> Option<Grant> {
        let map = self.grants.lock().unwrap_or_else(|p| p.into_inner());
        map.get(&digest(token)).filter(|g| g.expires > now).cloned()
    }

    /// Revokes `token` if it was issued to `client_id` (RFC 7009 §2.1: a client revokes
    /// only its own tokens); true if it was. Unknown tokens are no error.
    pub fn revoke(&self, token: &str, client_id: &str) -> bool {
        let mut map = self.grants.lock().unwrap_or_else(|p| p.into_inner());
        let key = digest(token);
        if map.get(&key).is_some_and(|g| g.client_id == client_id) {
            map.remove(&key);
            return true;
        }
        false
    }
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// A token's name in the audit log: the first 16 hex digits of its SHA-256, enough to pair
/// issue and revocation records, useless for presenting the token.
pub(super) fn token_id(token: &str) -> String {
    hex::encode(&digest(token)[..8])
}

/// Failed authentication attempts per key (client id or IP) in fixed one-minute windows.
pub(super) struct Limiter {
    max: u32,
    windows: Mutex<HashMap<String, (u64, u32)>>,
}

/// Length of a limiter window in seconds.
const WINDOW_SECS: u64 = 60;

impl Limiter {
    /// Allows `max` failures per key per minute.
    pub fn new(max: u32) -> Self {
        Self {
            max,
            windows: Mutex::new(HashMap::new()),
        }
    }

    /// 429 with the seconds left in the window when `key` has used up its failures.
    pub fn check(&self, key: &str, now: u64) -> Result<(), ApiError> {
        let map = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        match map.get(key) {
            Some(&(start, n)) if n >= self.max && now < start + WINDOW_SECS => {
                Err(ApiError::RateLimited {
                    retry_after: (start + WINDOW_SECS - now).max(1),
                })
            }
            _ => Ok(()),
        }
    }

    /// Counts one failure for `key`.
    pub fn fail(&self, key: &str, now: u64) {
        let mut map = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        map.retain(|_, (start, _)| now < *start + WINDOW_SECS);
        let entry = map.entry(key.to_string()).or_insert((now, 0));
        entry.1 = entry.1.saturating_add(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limiter_window() {
        let l = Limiter::new(2);
        assert!(l.check("k", 100).is_ok());
        l.fail("k", 100);
        l.fail("k", 101);
        match l.check("k", 110) {
            Err(ApiError::RateLimited { retry_after }) => assert_eq!(retry_after, 50),
            other => panic!("expected 429, got {other:?}"),
        }
        assert!(l.check("other", 110).is_ok());
        assert!(l.check("k", 160).is_ok());
    }

    #[test]
    fn tokens_expire_and_revoke_only_for_their_client() {
        let store = TokenStore::default();
        let grant = Grant {
            client_id: "a".into(),
            user: None,
            scopes: vec![Scope::Send],
            expires: 200,
        };
        let t = store.issue(grant, 100);
        assert!(store.lookup(&t, 199).is_some());
        assert!(store.lookup(&t, 200).is_none());
        store.revoke(&t, "b");
        assert!(store.lookup(&t, 150).is_some());
        store.revoke(&t, "a");
        assert!(store.lookup(&t, 150).is_none());
    }

    #[test]
    fn basic_credentials() {
        let v = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode("spc_1:s3cret")
        );
        let c = basic(&v).unwrap_or_else(|| panic!("parses"));
        assert_eq!((c.id.as_str(), c.secret.as_str()), ("spc_1", "s3cret"));
        assert!(basic("Basic !!!").is_none());
    }
}
