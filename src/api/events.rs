//! `GET /v1/events` (the event log, paged by cursor) and `GET /v1/queue` (a summary of the
//! queue per traffic class).

use super::auth::authenticate;
use super::clients::Scope;
use super::{Api, ApiError, PeerAddr};
use crate::events::Event;
use crate::spool::{DueKey, Spool, SpoolError};
use axum::Json;
use axum::extract::{ConnectInfo, RawQuery, State};
use axum::http::HeaderMap;
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::Arc;

/// Events per page when `limit` is not given.
pub const DEFAULT_LIMIT: usize = 100;
/// The largest `limit` accepted.
pub const MAX_LIMIT: usize = 1000;
/// A `read` client's page skips other clients' events; it stops after scanning this many
/// times `limit` events, so one request never walks the whole log.
const SCAN_FACTOR: usize = 10;

/// One page of events.
#[derive(Debug, Serialize)]
struct EventPage {
    events: Vec<Event>,
    /// The cursor for the next request (`after=next`): the id of the last event examined,
    /// or the `after` given when there was none.
    next: u64,
    /// True when events after `next` exist already.
    more: bool,
}

/// `GET /v1/events?after=CURSOR&limit=N`: needs `read` (events of the client's own API
/// messages) or `admin` (every event).
pub(super) async fn list(
    State(api): State<Arc<Api>>,
    ConnectInfo(peer): ConnectInfo<PeerAddr>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Json<serde_json::Value>, ApiError> {
    let who = authenticate(&api, &headers, peer.0.ip()).await?;
    who.require(&[Scope::Read, Scope::Admin])?;
    let (after, limit) = paging(query.as_deref())?;
    let log = api.queue.events();
    let own = (!who.scopes.contains(&Scope::Admin)).then(|| who.client.id.clone());
    let mut events = Vec::new();
    let mut next = after;
    let mut budget = limit.saturating_mul(SCAN_FACTOR);
    'pages: while budget > 0 {
        let want = if own.is_some() {
            budget.min(MAX_LIMIT)
        } else {
            limit
        };
        let page = log.page(next, want)?;
        if page.is_empty() {
            break;
        }
        for e in page {
            budget -= 1;
            next = e.id;
            if own.is_none() || e.api_client == own {
                events.push(e);
                if events.len() == limit {
                    break 'pages;
                }
            }
            if budget == 0 {
                break 'pages;
            }
        }
    }
    let more = next < log.last_id();
    Ok(Json(
        serde_json::to_value(EventPage { events, next, more }).unwrap_or_default(),
    ))
}

/// `after` and `limit` from a query string; 400 naming the parameter when one is bad.
/// Unknown parameters are ignored.
pub(super) fn paging(query: Option<&str>) -> Result<(u64, usize), ApiError> {
    let mut after = 0;
    let mut limit = DEFAULT_LIMIT;
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match key {
            "after" => {
                after = value.parse().map_err(|_| ApiError::InvalidField {
                    field: "after".into(),
                    message: "the cursor must be a `next` value from an earlier page (a non-negative integer)".into(),
                })?
            }
            "limit" => {
                limit = value
                    .parse()
                    .ok()
                    .filter(|n| (1..=MAX_LIMIT).contains(n))
                    .ok_or_else(|| ApiError::InvalidField {
                        field: "limit".into(),
                        message: format!("an integer from 1 to {MAX_LIMIT}"),
                    })?
            }
            _ => {}
        }
    }
    Ok((after, limit))
}

/// One class in the queue summary.
#[derive(Debug, Serialize)]
struct ClassSummary {
    /// Messages queued in this class.
    messages: usize,
    /// Messages with an attempt running now.
    in_flight: usize,
    /// Messages whose next attempt is due now (waiting for room or the scheduler).
    due: usize,
    /// Recipients of the queued messages by status.
    recipients: BTreeMap<&'static str, usize>,
}

impl Default for ClassSummary {
    /// Zero everywhere, with every recipient status listed.
    fn default() -> Self {
        Self {
            messages: 0,
            in_flight: 0,
            due: 0,
            recipients: ["queued", "deferred", "delivered", "failed"]
                .into_iter()
                .map(|s| (s, 0))
                .collect(),
        }
    }
}

/// `GET /v1/queue`: needs `admin`. Walks the due index a page at a time (no envelope list
/// in memory), on a blocking thread.
pub(super) async fn summary(
    State(api): State<Arc<Api>>,
    ConnectInfo(peer): ConnectInfo<PeerAddr>,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, ApiError> {
    let who = authenticate(&api, &headers, peer.0.ip()).await?;
    who.require(&[Scope::Admin])?;
    let spool = api.queue.spool().clone();
    let now = api.now();
    let mut classes = tokio::task::spawn_blocking(move || walk(spool.as_ref(), now))
        .await
        .map_err(|e| SpoolError::Storage(e.to_string()))??;
    for (class, n) in api.queue.in_flight_by_class() {
        classes.entry(class).or_default().in_flight = n;
    }
    let messages: usize = classes.values().map(|c| c.messages).sum();
    let in_flight: usize = classes.values().map(|c| c.in_flight).sum();
    Ok(Json(serde_json::json!({
        "time": now,
        "messages": messages,
        "in_flight": in_flight,
        "classes": classes,
    })))
}

fn walk(spool: &dyn Spool, now: u64) -> Result<BTreeMap<String, ClassSummary>, SpoolError> {
    let mut out: BTreeMap<String, ClassSummary> = BTreeMap::new();
    for (class, _) in spool.count_by_class()? {
        let summary = out.entry(class.clone()).or_default();
        let mut from = DueKey::class_start(&class);
        loop {
            let page = spool.due(&class, &from, u64::MAX, 1000)?;
            let Some(last) = page.last() else { break };
            from = last.key.clone();
            from.push(0);
            for entry in &page {
                let Some(env) = spool.envelope(&entry.id)? else {
                    continue;
                };
                summary.messages += 1;
                if entry.due <= now {
                    summary.due += 1;
                }
                for r in &env.recipients {
                    *summary.recipients.entry(r.status.name()).or_default() += 1;
                }
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paging_parameters_are_checked_by_name() {
        assert_eq!(paging(None).unwrap(), (0, DEFAULT_LIMIT));
        assert_eq!(paging(Some("after=7&limit=2&x=y")).unwrap(), (7, 2));
        for (q, field) in [
            ("after=abc", "after"),
            ("after=-1", "after"),
            ("limit=0", "limit"),
            ("limit=1001", "limit"),
            ("limit=", "limit"),
        ] {
            match paging(Some(q)) {
                Err(ApiError::InvalidField { field: f, .. }) => assert_eq!(f, field, "{q}"),
                other => panic!("{q}: {other:?}"),
            }
        }
    }
}
