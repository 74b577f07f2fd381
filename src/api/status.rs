//! Message status: `GET /v1/messages/{id}` (recipients and the message's events) and the
//! record that outlives the queue entry.
//!
//! The queue forgets a message once every recipient has a final status, but an API client
//! asks "was it delivered?" afterwards. So each API submission gets a record in the spool
//! tree [`MESSAGES_TREE`] (who submitted it), and the queue's final hook ([`final_hook`])
//! copies the finished envelope into it just before the queue entry goes.

use super::auth::authenticate;
use super::clients::Scope;
use super::{Api, ApiError, PeerAddr};
use crate::spool::{Envelope, KvTree, RcptStatus, is_queue_id};
use axum::Json;
use axum::extract::rejection::PathRejection;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::HeaderMap;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// The spool tree holding one [`ApiMessage`] per API submission, keyed by queue id.
pub const MESSAGES_TREE: &str = "api_messages";

/// What the API remembers about a message it submitted.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApiMessage {
    /// The client that submitted it; only it (or an `admin` client) may read its status.
    pub client_id: String,
    /// Unix seconds of submission.
    pub created: u64,
    /// The envelope as it was when the queue finished with the message; `None` while queued.
    pub finished: Option<Envelope>,
    /// The client's own labels (`tags` in the request), returned with the status so an app
    /// can match a message to its campaign or workflow. Never sent with the mail.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// The client's own key/value data (`metadata` in the request), e.g. its record id;
    /// returned with the status, never sent with the mail.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub metadata: std::collections::BTreeMap<String, String>,
}

/// The queue's final hook for API messages: stores the finished envelope of a message that
/// has an [`ApiMessage`] record. Other messages are left alone. A failure is logged; the
/// status then reads as `removed`, the mail itself is unaffected.
pub fn final_hook(tree: Arc<dyn KvTree>) -> crate::queue::FinalHook {
    Arc::new(move |env: &Envelope| {
        let key = env.id.as_bytes();
        let stored = match tree.get(key) {
            Ok(Some(v)) => v,
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(queue_id = %env.id, error = %e, "API status record unreadable");
                return;
            }
        };
        let Ok(mut record) = serde_json::from_slice::<ApiMessage>(&stored) else {
            return;
        };
        record.finished = Some(env.clone());
        match serde_json::to_vec(&record) {
            Ok(v) => {
                if let Err(e) = tree.insert(key, &v) {
                    tracing::warn!(queue_id = %env.id, error = %e, "API status record not saved");
                }
            }
            Err(e) => tracing::warn!(queue_id = %env.id, error = %e, "API status record"),
        }
    })
}

/// One recipient as the API shows it.
#[derive(Debug, Serialize)]
struct RecipientView {
    address: String,
    /// `queued`, `deferred`, `delivered` or `failed`.
    status: &'static str,
    /// The last reply (remote or local) for a recipient that has one.
    reply: Option<String>,
    attempts: u32,
    remote: Option<String>,
    method: Option<String>,
    tls: Option<String>,
    tls_verified: Option<bool>,
    updated: u64,
}

/// `GET /v1/messages/{id}`: needs `read` (own messages) or `admin` (any API message).
pub(super) async fn show(
    State(api): State<Arc<Api>>,
    ConnectInfo(peer): ConnectInfo<PeerAddr>,
    headers: HeaderMap,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let who = authenticate(&api, &headers, peer.0.ip()).await?;
    who.require(&[Scope::Read, Scope::Admin])?;
    // An id that is not even UTF-8 (`%FF`) is no queue id either: 404 like any other,
    // after authentication, rather than axum's plain-text 400 before it.
    let Ok(Path(id)) = id else {
        return Err(ApiError::NotFound);
    };
    if !is_queue_id(&id) {
        return Err(ApiError::NotFound);
    }
    let record: ApiMessage = match api.messages.get(id.as_bytes())? {
        Some(v) => serde_json::from_slice(&v).map_err(|_| ApiError::NotFound)?,
        None => return Err(ApiError::NotFound),
    };
    // Another client's message is as unknown as a missing one.
    if record.client_id != who.client.id && !who.scopes.contains(&Scope::Admin) {
        return Err(ApiError::NotFound);
    }
    let live = api.queue.spool().envelope(&id)?;
    let (state, env) = match (live, record.finished) {
        (Some(env), _) => ("queued", Some(env)),
        (None, Some(env)) => ("finished", Some(env)),
        // Deleted by an admin (`sealpost queue delete`) before it finished.
        (None, None) => ("removed", None),
    };
    // The message's events (accepted, each attempt's outcome) while they are retained.
    let events = api.queue.events().for_message(&id)?;
    let body = match env {
        Some(env) => serde_json::json!({
            "id": id,
            "state": state,
            "created": record.created,
            "from": env.mail_from,
            "class": env.class,
            "attempts": env.attempts,
            "recipients": env.recipients.iter().map(view).collect::<Vec<_>>(),
            "events": events,
            "tags": record.tags,
            "metadata": record.metadata,
        }),
        None => serde_json::json!({
            "id": id,
            "state": state,
            "created": record.created,
            "events": events,
            "tags": record.tags,
            "metadata": record.metadata,
        }),
    };
    Ok(Json(body))
}

fn view(r: &crate::spool::RecipientRecord) -> RecipientView {
    let reply = match &r.status {
        RcptStatus::Queued => None,
        RcptStatus::Deferred { reply }
        | RcptStatus::Delivered { reply }
        | RcptStatus::Failed { reply } => Some(reply.clone()),
    };
    RecipientView {
        address: r.address.clone(),
        status: r.status.name(),
        reply,
        attempts: r.attempts,
        remote: r.remote.clone(),
        method: r.method.clone(),
        tls: r.tls.clone(),
        tls_verified: r.tls_verified,
        updated: r.updated,
    }
}
