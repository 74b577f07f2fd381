//! OAuth 2.0 endpoints: `POST /oauth/token` (RFC 6749 §4.3 password and §4.4 client
//! credentials grants) and `POST /oauth/revoke` (RFC 7009).

use super::auth::{self, Credentials, Grant};
use super::clients::{ApiClient, Scope, scope_string};
use super::{Api, ApiError, PeerAddr};
use crate::audit::{Action, Actor};
use axum::Form;
use axum::extract::rejection::FormRejection;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use std::collections::HashMap;
use std::sync::Arc;

/// `POST /oauth/token`.
pub(super) async fn token(
    State(api): State<Arc<Api>>,
    ConnectInfo(peer): ConnectInfo<PeerAddr>,
    headers: HeaderMap,
    form: Result<Form<Vec<(String, String)>>, FormRejection>,
) -> Result<Response, ApiError> {
    let form = parameters(form)?;
    let ip = peer.0.ip();
    let client = client_auth(&api, &headers, &form, ip).await?;
    let now = api.now();
    let user = match form.get("grant_type").map(String::as_str) {
        None => return Err(invalid_request("grant_type is missing")),
        Some("client_credentials") => None,
        Some("password") => {
            let (Some(name), Some(password)) = (form.get("username"), form.get("password")) else {
                return Err(invalid_request("username and password are required"));
            };
            let user_key = format!("user:{name}");
            api.limiter.check(&user_key, now)?;
            let inbound = api.inbound.clone();
            let (n, p) = (name.clone(), password.clone());
            let ok = tokio::task::spawn_blocking(move || inbound.verify_user(&n, &p))
                .await
                .unwrap_or(false);
            if !ok {
                for key in [
                    auth::ip_key(ip),
                    format!("client:{}", client.id),
                    user_key.clone(),
                ] {
                    api.limiter.fail(&key, now);
                }
                tracing::info!(client_id = %client.id, ip = %ip, "API password grant refused");
                let details = serde_json::json!({
                    "method": "password_grant",
                    "client_id": client.id,
                    "user": name,
                    "ip": ip.to_string(),
                    "reason": "wrong username or password",
                });
                api.audit
                    .record_synced(Actor::api_client(&client.id), Action::AuthFailed, details)
                    .await;
                return Err(ApiError::OAuth {
                    status: 400,
                    code: "invalid_grant",
                    description: "wrong username or password".into(),
                });
            }
            Some(name.clone())
        }
        Some(_) => {
            return Err(ApiError::OAuth {
                status: 400,
                code: "unsupported_grant_type",
                description: "grant_type must be client_credentials or password".into(),
            });
        }
    };
    let scopes = match form.get("scope") {
        None => client.scopes.clone(),
        Some(s) => {
            let wanted = Scope::parse_list(s).map_err(|e| ApiError::OAuth {
                status: 400,
                code: "invalid_scope",
                description: e,
            })?;
            if wanted.is_empty() || wanted.iter().any(|w| !client.scopes.contains(w)) {
                return Err(ApiError::OAuth {
                    status: 400,
                    code: "invalid_scope",
                    description: format!(
                        "this client may ask for: {}",
                        scope_string(&client.scopes)
                    ),
                });
            }
            wanted
        }
    };
    let ttl = api.config.api.token_ttl_secs;
    let grant_type = if user.is_some() {
        "password"
    } else {
        "client_credentials"
    };
    let token = api.tokens.issue(
        Grant {
            client_id: client.id.clone(),
            user: user.clone(),
            scopes: scopes.clone(),
            expires: now + ttl,
        },
        now,
    );
    let details = serde_json::json!({
        "grant_type": grant_type,
        "user": user,
        "scopes": scopes,
        "expires_in": ttl,
        "token_id": auth::token_id(&token),
        "ip": ip.to_string(),
    });
    api.audit
        .record_synced(Actor::api_client(&client.id), Action::TokenIssued, details)
        .await;
    let body = serde_json::json!({
        "access_token": token,
        "token_type": "Bearer",
        "expires_in": ttl,
        "scope": scope_string(&scopes),
    });
    Ok(no_store((StatusCode::OK, axum::Json(body)).into_response()))
}

/// `POST /oauth/revoke`: 200 whether or not the token was known (RFC 7009 §2.2).
pub(super) async fn revoke(
    State(api): State<Arc<Api>>,
    ConnectInfo(peer): ConnectInfo<PeerAddr>,
    headers: HeaderMap,
    form: Result<Form<Vec<(String, String)>>, FormRejection>,
) -> Result<Response, ApiError> {
    let form = parameters(form)?;
    let client = client_auth(&api, &headers, &form, peer.0.ip()).await?;
    let Some(token) = form.get("token") else {
        return Err(invalid_request("token is missing"));
    };
    let revoked = api.tokens.revoke(token, &client.id);
    let details = serde_json::json!({
        "token_id": auth::token_id(token),
        "revoked": revoked,
        "ip": peer.0.ip().to_string(),
    });
    api.audit
        .record_synced(Actor::api_client(&client.id), Action::TokenRevoked, details)
        .await;
    Ok(no_store(StatusCode::OK.into_response()))
}

/// Client authentication for the OAuth endpoints: HTTP Basic or `client_id` and
/// `client_secret` in the form (RFC 6749 §2.3.1), not both.
async fn client_auth(
    api: &Api,
    headers: &HeaderMap,
    form: &HashMap<String, String>,
    ip: std::net::IpAddr,
) -> Result<ApiClient, ApiError> {
    let from_header = auth::header_str(headers, "authorization");
    let in_form = form.contains_key("client_id") || form.contains_key("client_secret");
    let method = if in_form { "oauth_form" } else { "oauth_basic" };
    let creds = match (from_header, in_form) {
        (Some(_), true) => {
            return Err(invalid_request(
                "client credentials in both the Authorization header and the body",
            ));
        }
        (Some(value), false) => auth::basic(value).ok_or_else(|| ApiError::OAuth {
            status: 401,
            code: "invalid_client",
            description: "malformed Basic credentials".into(),
        })?,
        (None, true) => Credentials {
            id: form.get("client_id").cloned().unwrap_or_default(),
            secret: form.get("client_secret").cloned().unwrap_or_default(),
        },
        (None, false) => {
            return Err(ApiError::OAuth {
                status: 401,
                code: "invalid_client",
                description: "client authentication is required".into(),
            });
        }
    };
    auth::check_client(api, &creds, ip, method).await
}

/// The parameters the OAuth endpoints read; others are ignored (RFC 6749 §3.1).
const PARAMETERS: &[&str] = &[
    "grant_type",
    "username",
    "password",
    "scope",
    "client_id",
    "client_secret",
    "token",
    "token_type_hint",
];

/// The form's parameters by RFC 6749 §3.1: unrecognized ones are ignored, one sent without a
/// value counts as omitted, and a recognized one sent twice is an `invalid_request` (a later
/// copy must not silently win).
fn parameters(
    form: Result<Form<Vec<(String, String)>>, FormRejection>,
) -> Result<HashMap<String, String>, ApiError> {
    let Form(pairs) = form.map_err(|e| invalid_request(&e.body_text()))?;
    let mut out = HashMap::new();
    for (name, value) in pairs {
        if value.is_empty() || !PARAMETERS.contains(&name.as_str()) {
            continue;
        }
        if out.contains_key(&name) {
            return Err(invalid_request(&format!(
                "parameter {name} is given more than once"
            )));
        }
        out.insert(name, value);
    }
    Ok(out)
}

fn invalid_request(why: &str) -> ApiError {
    ApiError::OAuth {
        status: 400,
        code: "invalid_request",
        description: why.to_string(),
    }
}

/// RFC 6749 §5.1: token responses must not be cached.
fn no_store(mut r: Response) -> Response {
    let h = r.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    r
}
