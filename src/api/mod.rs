//! The HTTP sending API (`[api]` in the config): an axum router that turns JSON into MIME and
//! commits it to the spool exactly as SMTP does, answers message status, and issues OAuth 2.0
//! tokens.
//!
//! Routes ([`ApiRoute::ALL`]): `POST /oauth/token`, `POST /oauth/revoke`, `POST /v1/messages`,
//! `POST /v1/messages/raw`, `GET /v1/messages/{id}`, `GET /v1/openapi.yaml` (the OpenAPI 3.1
//! document [`OPENAPI_YAML`], public), and for events and webhooks:
//!
//! | route | scope | what |
//! | --- | --- | --- |
//! | `GET /v1/events?after=N&limit=N` | `read` (own API messages) or `admin` (all) | the event log, oldest first; `next` is the cursor for the following page |
//! | `GET /v1/queue` | `admin` | messages, running attempts, due messages and recipients by status, per class |
//! | `POST /v1/webhooks` | `admin` | subscribe `{url, events?, secret?}`; 201 with the secret, shown once |
//! | `GET /v1/webhooks` | `admin` | every subscription (config file and API), without secrets |
//! | `GET /v1/webhooks/{id}` | `admin` | one subscription and its delivery counts |
//! | `DELETE /v1/webhooks/{id}` | `admin` | 204; 409 for a config-file subscription |
//! | `GET /v1/webhooks/{id}/deliveries?after=N&limit=N` | `admin` | deliveries with their attempt logs |
//!
//! Every route but the spec accepts `X-API-Key: id:secret`, HTTP Basic `id:secret` or an
//! OAuth bearer token. Bad `after`/`limit` values are 400 naming the parameter.

mod auth;
pub mod clients;
mod events;
mod oauth;
mod send;
mod status;
mod tls;
mod webhooks;

pub use auth::Principal;
pub use status::{ApiMessage, MESSAGES_TREE, final_hook};

use crate::audit::AuditLog;
use crate::config::Config;
use crate::events::outbox::Outbox;
use crate::events::webhook::WebhookStore;
use crate::inbound::Inbound;
use crate::queue::Queue;
use crate::spool::{KvTree, SpoolError};
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, delete, get, post};
use clients::{ClientStore, Scope};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// The OpenAPI 3.1 description of this API (`api/openapi.yaml` in the repository), served
/// at `GET /v1/openapi.yaml`. `tests/openapi.rs` checks that it names exactly the routes of
/// [`ApiRoute::ALL`] and that the server answers it byte for byte.
pub const OPENAPI_YAML: &str = include_str!("../../api/openapi.yaml");

/// One route of the API. The router is built from [`ApiRoute::ALL`], so this list is the
/// router's own: the spec test compares it with the paths in [`OPENAPI_YAML`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiRoute {
    /// `POST /oauth/token`.
    Token,
    /// `POST /oauth/revoke`.
    Revoke,
    /// `POST /v1/messages`.
    Send,
    /// `POST /v1/messages/raw`.
    SendRaw,
    /// `GET /v1/messages/{id}`.
    Status,
    /// `GET /v1/openapi.yaml`.
    OpenApi,
    /// `GET /v1/events`.
    Events,
    /// `GET /v1/queue`.
    QueueSummary,
    /// `POST /v1/webhooks`.
    WebhookCreate,
    /// `GET /v1/webhooks`.
    WebhookList,
    /// `GET /v1/webhooks/{id}`.
    WebhookShow,
    /// `DELETE /v1/webhooks/{id}`.
    WebhookDelete,
    /// `GET /v1/webhooks/{id}/deliveries`.
    WebhookDeliveries,
}

impl ApiRoute {
    /// Every route the router serves.
    pub const ALL: [ApiRoute; 13] = [
        ApiRoute::Token,
        ApiRoute::Revoke,
        ApiRoute::Send,
        ApiRoute::SendRaw,
        ApiRoute::Status,
        ApiRoute::OpenApi,
        ApiRoute::Events,
        ApiRoute::QueueSummary,
        ApiRoute::WebhookCreate,
        ApiRoute::WebhookList,
        ApiRoute::WebhookShow,
        ApiRoute::WebhookDelete,
        ApiRoute::WebhookDeliveries,
    ];

    /// The HTTP method, upper case as in HTTP.
    pub fn method(self) -> &'static str {
        match self {
            ApiRoute::Token
            | ApiRoute::Revoke
            | ApiRoute::Send
            | ApiRoute::SendRaw
            | ApiRoute::WebhookCreate => "POST",
            ApiRoute::WebhookDelete => "DELETE",
            ApiRoute::Status
            | ApiRoute::OpenApi
            | ApiRoute::Events
            | ApiRoute::QueueSummary
            | ApiRoute::WebhookList
            | ApiRoute::WebhookShow
            | ApiRoute::WebhookDeliveries => "GET",
        }
    }

    /// The path in axum's (and OpenAPI's) template syntax.
    pub fn path(self) -> &'static str {
        match self {
            ApiRoute::Token => "/oauth/token",
            ApiRoute::Revoke => "/oauth/revoke",
            ApiRoute::Send => "/v1/messages",
            ApiRoute::SendRaw => "/v1/messages/raw",
            ApiRoute::Status => "/v1/messages/{id}",
            ApiRoute::OpenApi => "/v1/openapi.yaml",
            ApiRoute::Events => "/v1/events",
            ApiRoute::QueueSummary => "/v1/queue",
            ApiRoute::WebhookCreate | ApiRoute::WebhookList => "/v1/webhooks",
            ApiRoute::WebhookShow | ApiRoute::WebhookDelete => "/v1/webhooks/{id}",
            ApiRoute::WebhookDeliveries => "/v1/webhooks/{id}/deliveries",
        }
    }

    fn handler(self) -> MethodRouter<Arc<Api>> {
        match self {
            ApiRoute::Token => post(oauth::token),
            ApiRoute::Revoke => post(oauth::revoke),
            ApiRoute::Send => post(send::json),
            ApiRoute::SendRaw => post(send::raw),
            ApiRoute::Status => get(status::show),
            ApiRoute::OpenApi => get(openapi),
            ApiRoute::Events => get(events::list),
            ApiRoute::QueueSummary => get(events::summary),
            ApiRoute::WebhookCreate => post(webhooks::create),
            ApiRoute::WebhookList => get(webhooks::list),
            ApiRoute::WebhookShow => get(webhooks::show),
            ApiRoute::WebhookDelete => delete(webhooks::remove),
            ApiRoute::WebhookDeliveries => get(webhooks::deliveries),
        }
    }
}

/// Any path the API does not have: a JSON 404, like every other answer of the API.
async fn no_such_route() -> Response {
    (
        StatusCode::NOT_FOUND,
        axum::Json(serde_json::json!({"error": "not_found", "message": "no such route; see /v1/openapi.yaml"})),
    )
        .into_response()
}

/// A route used with a method it does not take: a JSON 405 (axum adds `Allow`).
async fn method_not_allowed() -> Response {
    (
        StatusCode::METHOD_NOT_ALLOWED,
        axum::Json(serde_json::json!({"error": "method_not_allowed", "message": "this route does not take that method; see /v1/openapi.yaml"})),
    )
        .into_response()
}

/// `GET /v1/openapi.yaml`: public, so tools (schemathesis, code generators) can load it; it
/// holds nothing secret.
async fn openapi() -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/yaml"),
        )],
        OPENAPI_YAML,
    )
        .into_response()
}

/// The spool tree mapping `client_id \0 idempotency_key` to the first answer.
pub const IDEMPOTENCY_TREE: &str = "api_idempotency";

/// Why the API could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ApiSetupError {
    /// The spool trees could not be opened.
    #[error(transparent)]
    Spool(#[from] SpoolError),
    /// The TLS certificate or key could not be loaded.
    #[error("api TLS: {0}")]
    Tls(String),
}

/// The webhook subscriptions and their outbox, shared with the dispatcher.
pub struct Hooks {
    /// Subscriptions (config file and API).
    pub store: Arc<WebhookStore>,
    /// Delivery records and their attempt logs.
    pub deliveries: Arc<Outbox>,
}

/// Everything the handlers share.
pub struct Api {
    hooks: Hooks,
    config: Arc<Config>,
    queue: Arc<Queue>,
    inbound: Arc<Inbound>,
    clients: ClientStore,
    messages: Arc<dyn KvTree>,
    idempotency: Arc<dyn KvTree>,
    tokens: auth::TokenStore,
    limiter: auth::Limiter,
    dummy_hash: String,
    /// Where authentication outcomes, tokens and accepted messages are recorded.
    audit: Arc<AuditLog>,
    /// The listener address, recorded in envelopes so policy and class rules can match it.
    local: String,
}

impl Api {
    /// Shared state over the running queue; `inbound` checks `[[user]]` passwords for the
    /// password grant; `audit` records logins, tokens and submissions; `hooks` are the
    /// webhook subscriptions the dispatcher delivers to.
    pub fn new(
        config: Arc<Config>,
        queue: Arc<Queue>,
        inbound: Arc<Inbound>,
        audit: Arc<AuditLog>,
        local: SocketAddr,
        hooks: Hooks,
    ) -> Result<Arc<Self>, ApiSetupError> {
        let spool = queue.spool().clone();
        let dummy_hash =
            clients::hash_secret(&hex::encode(rand::random::<[u8; 32]>())).unwrap_or_default();
        Ok(Arc::new(Self {
            hooks,
            clients: ClientStore::new(spool.tree(clients::TREE)?),
            messages: spool.tree(MESSAGES_TREE)?,
            idempotency: spool.tree(IDEMPOTENCY_TREE)?,
            tokens: auth::TokenStore::default(),
            limiter: auth::Limiter::new(config.api.max_auth_failures_per_minute),
            dummy_hash,
            audit,
            local: local.to_string(),
            config,
            queue,
            inbound,
        }))
    }

    /// Unix seconds by the queue's clock (tests move it to expire tokens).
    fn now(&self) -> u64 {
        self.queue.clock().now()
    }

    /// The routes, with the request body limit derived from `max_message_size`.
    pub fn router(self: &Arc<Self>) -> Router {
        ApiRoute::ALL
            .into_iter()
            .fold(Router::new(), |router, r| {
                router.route(r.path(), r.handler())
            })
            .fallback(no_such_route)
            .method_not_allowed_fallback(method_not_allowed)
            .layer(DefaultBodyLimit::max(send::body_limit(
                self.config.server.max_message_size,
            )))
            .with_state(self.clone())
    }
}

/// Binds the API listener from `[api] address`, if any.
pub async fn bind(config: &Config) -> std::io::Result<Option<TcpListener>> {
    match config.api.address {
        Some(addr) => TcpListener::bind(addr)
            .await
            .map(Some)
            .map_err(|e| std::io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}"))),
        None => Ok(None),
    }
}

/// Serves the API on `listener` (HTTPS when `[api] tls_cert` is set) until `shutdown`.
pub async fn serve(
    api: Arc<Api>,
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    mut shutdown: watch::Receiver<bool>,
) {
    let app = api
        .router()
        .into_make_service_with_connect_info::<PeerAddr>();
    let stop = async move {
        while !*shutdown.borrow() {
            if shutdown.changed().await.is_err() {
                break;
            }
        }
    };
    let result = match tls {
        Some(acceptor) => {
            let listener = tls::TlsListener::new(listener, acceptor);
            axum::serve(listener, app)
                .with_graceful_shutdown(stop)
                .await
        }
        None => {
            axum::serve(listener, app)
                .with_graceful_shutdown(stop)
                .await
        }
    };
    if let Err(e) = result {
        tracing::error!(error = %e, "API server stopped");
    }
}

/// Builds the TLS acceptor for `[api] tls_cert`/`tls_key`, if set.
pub fn tls_acceptor(config: &Config) -> Result<Option<tokio_rustls::TlsAcceptor>, ApiSetupError> {
    let (Some(cert), Some(key)) = (&config.api.tls_cert, &config.api.tls_key) else {
        return Ok(None);
    };
    tls::acceptor(&config.resolve_path(cert), &config.resolve_path(key))
        .map(Some)
        .map_err(ApiSetupError::Tls)
}

/// The peer's address, for rate limits and the Received header.
#[derive(Debug, Clone, Copy)]
pub struct PeerAddr(pub SocketAddr);

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, TcpListener>>
    for PeerAddr
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, TcpListener>) -> Self {
        PeerAddr(*stream.remote_addr())
    }
}

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, tls::TlsListener>>
    for PeerAddr
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, tls::TlsListener>) -> Self {
        PeerAddr(*stream.remote_addr())
    }
}

/// What a request can fail with; each variant is one HTTP status and JSON body.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Missing or bad credentials: 401 with `WWW-Authenticate`.
    #[error("{message}")]
    Unauthorized {
        /// Machine-readable code (`unauthorized`, `invalid_client`, `invalid_token`).
        error: &'static str,
        /// For people.
        message: String,
    },
    /// Authenticated, but without the scope the route needs: 403.
    #[error("the {0} scope is needed")]
    Forbidden(Scope),
    /// Too many failed attempts: 429 with `Retry-After`.
    #[error("too many failed attempts")]
    RateLimited {
        /// Seconds until attempts are counted again.
        retry_after: u64,
    },
    /// An RFC 6749 §5.2 error from the token or revocation endpoint.
    #[error("{code}: {description}")]
    OAuth {
        /// 400, or 401 for `invalid_client`.
        status: u16,
        /// `invalid_request`, `invalid_client`, `invalid_grant`, `unsupported_grant_type`,
        /// `invalid_scope`.
        code: &'static str,
        /// For people.
        description: String,
    },
    /// A field is missing, malformed or holds CR, LF or NUL: 400 naming the field.
    #[error("{field}: {message}")]
    InvalidField {
        /// The field's path, e.g. `to[0]`, `headers.X-Tag`, `attachments[1].filename`.
        field: String,
        /// What is wrong with it.
        message: String,
    },
    /// The body is not the JSON the route expects: 400.
    #[error("{0}")]
    InvalidJson(String),
    /// The message is larger than `max_message_size`: 413.
    #[error("the message is larger than the server's limit of {0} octets")]
    TooLarge(u64),
    /// No such message (or not one this client may see): 404.
    #[error("no such message")]
    NotFound,
    /// No such webhook subscription: 404.
    #[error("no such webhook")]
    UnknownWebhook,
    /// The request conflicts with how the resource was made (deleting a config-file
    /// webhook): 409.
    #[error("{0}")]
    Conflict(String),
    /// The client already used this idempotency key for a different request: 409, and
    /// nothing is queued (answering with the first message's id would silently drop the
    /// second message).
    #[error("this idempotency_key was already used for a different request")]
    IdempotencyKeyReused,
    /// The spool failed: 503, try again.
    #[error(transparent)]
    Spool(#[from] SpoolError),
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        use serde_json::json;
        let message = self.to_string();
        let (status, body) = match &self {
            ApiError::Unauthorized { error, .. } => (
                StatusCode::UNAUTHORIZED,
                json!({"error": error, "message": message}),
            ),
            ApiError::Forbidden(scope) => (
                StatusCode::FORBIDDEN,
                json!({"error": "insufficient_scope", "scope": scope.name(), "message": message}),
            ),
            ApiError::RateLimited { .. } => (
                StatusCode::TOO_MANY_REQUESTS,
                json!({"error": "rate_limited", "message": message}),
            ),
            ApiError::OAuth {
                status,
                code,
                description,
            } => (
                StatusCode::from_u16(*status).unwrap_or(StatusCode::BAD_REQUEST),
                json!({"error": code, "error_description": description}),
            ),
            ApiError::InvalidField { field, message } => (
                StatusCode::BAD_REQUEST,
                json!({"error": "invalid_field", "field": field, "message": message}),
            ),
            ApiError::InvalidJson(_) => (
                StatusCode::BAD_REQUEST,
                json!({"error": "invalid_json", "message": message}),
            ),
            ApiError::TooLarge(_) => (
                StatusCode::PAYLOAD_TOO_LARGE,
                json!({"error": "too_large", "message": message}),
            ),
            ApiError::NotFound | ApiError::UnknownWebhook => (
                StatusCode::NOT_FOUND,
                json!({"error": "not_found", "message": message}),
            ),
            ApiError::Conflict(_) => (
                StatusCode::CONFLICT,
                json!({"error": "conflict", "message": message}),
            ),
            ApiError::IdempotencyKeyReused => (
                StatusCode::CONFLICT,
                json!({"error": "idempotency_key_reused", "message": message}),
            ),
            ApiError::Spool(e) => {
                tracing::error!(error = %e, "API: spool failure");
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    json!({"error": "unavailable", "message": "could not store the message; try again"}),
                )
            }
        };
        let mut r = (status, axum::Json(body)).into_response();
        let h = r.headers_mut();
        match &self {
            ApiError::Unauthorized { error, .. } => {
                let challenge = match *error {
                    "invalid_token" => {
                        "Bearer realm=\"sealpost\", error=\"invalid_token\"".to_string()
                    }
                    _ => "Bearer realm=\"sealpost\"".to_string(),
                };
                if let Ok(v) = HeaderValue::from_str(&challenge) {
                    h.append(header::WWW_AUTHENTICATE, v);
                }
                h.append(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Basic realm=\"sealpost\""),
                );
            }
            ApiError::OAuth { status: 401, .. } => {
                h.append(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Basic realm=\"sealpost\""),
                );
            }
            ApiError::RateLimited { retry_after } => {
                if let Ok(v) = HeaderValue::from_str(&retry_after.to_string()) {
                    h.insert(header::RETRY_AFTER, v);
                }
            }
            ApiError::Spool(_) => {
                h.insert(header::RETRY_AFTER, HeaderValue::from_static("30"));
            }
            _ => {}
        }
        r
    }
}
