//! Webhook subscriptions through the API (`admin` scope): create, list, show, delete, and
//! the attempt log of each delivery. See [`crate::events::webhook`] for what receivers get.

use super::auth::authenticate;
use super::clients::Scope;
use super::events::paging;
use super::{Api, ApiError, PeerAddr};
use crate::events::EventType;
use crate::events::outbox::{AttemptLog, Delivery, DeliveryState};
use crate::events::webhook::{Origin, Subscription, WebhookError};
use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{ConnectInfo, Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// The body of `POST /v1/webhooks`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateRequest {
    url: String,
    #[serde(default)]
    events: Vec<String>,
    #[serde(default)]
    secret: Option<String>,
}

/// A subscription as the API shows it: never the secret (except once, on creation).
#[derive(Debug, Serialize)]
struct View {
    id: String,
    url: String,
    events: Vec<EventType>,
    origin: Origin,
    created: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    created_by: Option<String>,
}

impl From<&Subscription> for View {
    fn from(s: &Subscription) -> Self {
        Self {
            id: s.id.clone(),
            url: s.url.clone(),
            events: s.events.clone(),
            origin: s.origin,
            created: s.created,
            created_by: s.created_by.clone(),
        }
    }
}

/// A delivery as the API shows it (without the body, which is the event itself).
#[derive(Debug, Serialize)]
struct DeliveryView {
    event_id: u64,
    event_type: EventType,
    state: DeliveryState,
    created: u64,
    next_attempt: Option<u64>,
    attempts: Vec<AttemptLog>,
}

impl From<Delivery> for DeliveryView {
    fn from(d: Delivery) -> Self {
        Self {
            event_id: d.event_id,
            event_type: d.event_type,
            state: d.state,
            created: d.created,
            next_attempt: d.next_attempt,
            attempts: d.attempts,
        }
    }
}

/// The `{id}` path segment. One that is not even UTF-8 (`%FF`) names no webhook: 404 like
/// any other unknown id, after authentication, rather than axum's plain-text 400 before it.
fn webhook_id(id: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    id.map(|Path(id)| id).map_err(|_| ApiError::UnknownWebhook)
}

async fn admin(api: &Api, headers: &HeaderMap, peer: PeerAddr) -> Result<String, ApiError> {
    let who = authenticate(api, headers, peer.0.ip()).await?;
    who.require(&[Scope::Admin])?;
    Ok(who.client.id)
}

/// `POST /v1/webhooks`: 201 with the subscription and its secret (shown only here).
pub(super) async fn create(
    State(api): State<Arc<Api>>,
    ConnectInfo(peer): ConnectInfo<PeerAddr>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    let client = admin(&api, &headers, peer).await?;
    let req: CreateRequest = super::send::parse_json(&api, body)?;
    let sub = api
        .hooks
        .store
        .add(
            &req.url,
            &req.events,
            req.secret,
            api.now(),
            api.queue.events().last_id(),
            &client,
        )
        .map_err(|e| match e {
            WebhookError::Invalid { field, message } => ApiError::InvalidField { field, message },
            WebhookError::Spool(e) => ApiError::Spool(e),
        })?;
    api.queue.committer().commit().await?;
    tracing::info!(webhook = %sub.id, url = %sub.url, api_client = %client, "webhook created");
    api.audit
        .record_synced(
            crate::audit::Actor::api_client(&client),
            crate::audit::Action::WebhookAdded,
            serde_json::json!({"webhook": sub.id, "url": sub.url, "events": sub.events}),
        )
        .await;
    let mut body = serde_json::to_value(View::from(&sub)).unwrap_or_default();
    body["secret"] = serde_json::Value::String(sub.secret);
    Ok((StatusCode::CREATED, Json(body)))
}

/// `GET /v1/webhooks`: every subscription, config ones first.
pub(super) async fn list(
    State(api): State<Arc<Api>>,
    ConnectInfo(peer): ConnectInfo<PeerAddr>,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, ApiError> {
    admin(&api, &headers, peer).await?;
    let views: Vec<View> = api.hooks.store.list()?.iter().map(View::from).collect();
    Ok(Json(serde_json::json!({ "webhooks": views })))
}

/// `GET /v1/webhooks/{id}`: the subscription and its delivery counts.
pub(super) async fn show(
    State(api): State<Arc<Api>>,
    ConnectInfo(peer): ConnectInfo<PeerAddr>,
    headers: HeaderMap,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    admin(&api, &headers, peer).await?;
    let id = webhook_id(id)?;
    let sub = api.hooks.store.get(&id)?.ok_or(ApiError::UnknownWebhook)?;
    let mut body = serde_json::to_value(View::from(&sub)).unwrap_or_default();
    body["deliveries"] =
        serde_json::to_value(api.hooks.deliveries.counts(&sub.id)?).unwrap_or_default();
    Ok(Json(body))
}

/// `DELETE /v1/webhooks/{id}`: 204; its deliveries (pending ones too) go with it. A config
/// subscription is 409: only the config file can remove it.
pub(super) async fn remove(
    State(api): State<Arc<Api>>,
    ConnectInfo(peer): ConnectInfo<PeerAddr>,
    headers: HeaderMap,
    id: Result<Path<String>, PathRejection>,
) -> Result<StatusCode, ApiError> {
    let client = admin(&api, &headers, peer).await?;
    let id = webhook_id(id)?;
    match api.hooks.store.remove(&id)? {
        None => Err(ApiError::UnknownWebhook),
        Some(false) => Err(ApiError::Conflict(
            "this webhook is defined in the config file; remove it there".into(),
        )),
        Some(true) => {
            api.hooks.deliveries.remove_webhook(&id)?;
            api.queue.committer().commit().await?;
            tracing::info!(webhook = %id, api_client = %client, "webhook deleted");
            api.audit
                .record_synced(
                    crate::audit::Actor::api_client(&client),
                    crate::audit::Action::WebhookRemoved,
                    serde_json::json!({"webhook": id}),
                )
                .await;
            Ok(StatusCode::NO_CONTENT)
        }
    }
}

/// `GET /v1/webhooks/{id}/deliveries?after=EVENT_ID&limit=N`: deliveries in event order with
/// their attempt logs.
pub(super) async fn deliveries(
    State(api): State<Arc<Api>>,
    ConnectInfo(peer): ConnectInfo<PeerAddr>,
    headers: HeaderMap,
    id: Result<Path<String>, PathRejection>,
    RawQuery(query): RawQuery,
) -> Result<Json<serde_json::Value>, ApiError> {
    admin(&api, &headers, peer).await?;
    let id = webhook_id(id)?;
    let (after, limit) = paging(query.as_deref())?;
    if api.hooks.store.get(&id)?.is_none() {
        return Err(ApiError::UnknownWebhook);
    }
    // One more than asked tells whether another page exists.
    let mut page = api.hooks.deliveries.list(&id, after, limit + 1)?;
    let more = page.len() > limit;
    page.truncate(limit);
    let next = page.last().map_or(after, |d| d.event_id);
    let views: Vec<DeliveryView> = page.into_iter().map(DeliveryView::from).collect();
    Ok(Json(serde_json::json!({
        "deliveries": views,
        "next": next,
        "more": more,
    })))
}
