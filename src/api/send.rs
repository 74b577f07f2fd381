//! Sending: `POST /v1/messages` (JSON fields built into MIME with mail-builder) and
//! `POST /v1/messages/raw` (a finished RFC 5322 message with an explicit envelope). Both end
//! in the same durable spool commit as SMTP, and answer 202 only after it.
//!
//! Nothing a client sends may put CR, LF or NUL into a header or the envelope: every field
//! that ends up there is checked, and a bad one is refused with 400 naming the field.

use super::auth::{Principal, authenticate};
use super::clients::Scope;
use super::status::ApiMessage;
use super::{Api, ApiError, PeerAddr};
use crate::queue::class;
use crate::queue::clock::rfc5322_date;
use crate::smtp::address::Address;
use crate::spool::{ENVELOPE_VERSION, Envelope, RecipientRecord, new_queue_id};
use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode};
use base64::Engine;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;

/// The HTTP body limit for a message of at most `max_message_size` octets: attachments
/// travel base64-encoded inside JSON (4/3 larger), plus room for the other fields. The built
/// message itself is checked against `max_message_size` exactly.
pub(super) fn body_limit(max_message_size: u64) -> usize {
    let limit = max_message_size.saturating_mul(4) / 3 + 64 * 1024;
    usize::try_from(limit).unwrap_or(usize::MAX)
}

/// A mailbox: `"bob@example.com"` or `{"name": "Bob", "address": "bob@example.com"}`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Mailbox {
    Bare(String),
    Named {
        name: Option<String>,
        address: String,
    },
}

/// One attachment.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Attachment {
    filename: String,
    content_type: Option<String>,
    /// Standard base64.
    content: String,
}

/// The body of `POST /v1/messages`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SendRequest {
    from: Mailbox,
    to: Vec<Mailbox>,
    #[serde(default)]
    cc: Vec<Mailbox>,
    #[serde(default)]
    bcc: Vec<Mailbox>,
    subject: Option<String>,
    text: Option<String>,
    html: Option<String>,
    #[serde(default)]
    attachments: Vec<Attachment>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    class: Option<String>,
    sensitivity: Option<String>,
    idempotency_key: Option<String>,
    /// Labels kept with the status record (at most [`MAX_TAGS`], each 1..=128 characters).
    #[serde(default)]
    tags: Vec<String>,
    /// Key/value data kept with the status record (at most [`MAX_TAGS`] entries; keys
    /// 1..=128, values up to 1024 characters).
    #[serde(default)]
    metadata: BTreeMap<String, String>,
}

/// Most `tags`, and most `metadata` entries, one message may carry: labels, not storage.
const MAX_TAGS: usize = 32;

/// The body of `POST /v1/messages/raw`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRequest {
    mail_from: String,
    rcpt_to: Vec<String>,
    /// The RFC 5322 message, standard base64.
    message: String,
    class: Option<String>,
    idempotency_key: Option<String>,
}

/// The 202 answer (also stored for idempotent repeats).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Accepted {
    id: String,
    recipients: usize,
    /// SHA-256 of the request's canonical JSON (keys sorted), stored with an idempotency
    /// key so that a repeat can be told from a different request under the same key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    request: Option<String>,
}

/// The fingerprint of a request body: SHA-256 over its canonical JSON, so key order and
/// spacing do not matter. Only requests with an idempotency key need one.
fn fingerprint(body: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(v) => hex::encode(Sha256::digest(crate::audit::canonical(&v).as_bytes())),
        Err(_) => String::new(),
    }
}

/// Header fields the API writes itself: a custom `headers` entry may not replace them.
const RESERVED: &[&str] = &[
    "from",
    "to",
    "cc",
    "bcc",
    "subject",
    "date",
    "message-id",
    "mime-version",
    "content-type",
    "content-transfer-encoding",
    "content-disposition",
    "received",
    "x-sealpost-sensitivity",
];

/// The header the policy engine's `header` rules read the sensitivity from.
const SENSITIVITY_HEADER: &str = "X-Sealpost-Sensitivity";

/// `POST /v1/messages`.
pub(super) async fn json(
    State(api): State<Arc<Api>>,
    ConnectInfo(peer): ConnectInfo<PeerAddr>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    let who = authenticate(&api, &headers, peer.0.ip()).await?;
    who.require(&[Scope::Send])?;
    let raw = body.as_ref().ok().cloned();
    let req: SendRequest = parse_json(&api, body)?;
    let request = match (&req.idempotency_key, &raw) {
        (Some(_), Some(raw)) => fingerprint(raw),
        _ => String::new(),
    };
    let idem = idempotency(&req.idempotency_key)?.map(|k| (k, request.as_str()));
    labels(&req.tags, &req.metadata)?;
    let from = mailbox(&req.from, "from")?;
    let mut rcpts = Vec::new();
    let mut to = Vec::new();
    let mut cc = Vec::new();
    for (list, name, out) in [
        (&req.to, "to", Some(&mut to)),
        (&req.cc, "cc", Some(&mut cc)),
        (&req.bcc, "bcc", None),
    ] {
        let mut out = out;
        for (i, m) in list.iter().enumerate() {
            let (display, addr) = mailbox(m, &format!("{name}[{i}]"))?;
            rcpts.push(addr.clone());
            if let Some(out) = out.as_mut() {
                out.push(mail_builder::headers::address::Address::new_address(
                    display,
                    addr.to_string(),
                ));
            }
        }
    }
    if let Some(s) = &req.subject {
        header_text("subject", s)?;
    }
    for (field, text) in [("text", &req.text), ("html", &req.html)] {
        if text.as_deref().is_some_and(|t| t.contains('\0')) {
            return Err(invalid(field, "NUL is not allowed"));
        }
    }
    for (name, value) in &req.headers {
        let field = format!("headers.{}", name.escape_default());
        if name.is_empty() || !name.bytes().all(|b| (33..=126).contains(&b) && b != b':') {
            return Err(invalid(
                &field,
                "a header name is printable ASCII without ':'",
            ));
        }
        if RESERVED.contains(&name.to_ascii_lowercase().as_str()) {
            return Err(invalid(&field, "this header is set by the API"));
        }
        header_text(&field, value)?;
    }
    if let Some(s) = &req.sensitivity {
        header_text("sensitivity", s)?;
    }
    let class = chosen_class(&api, req.class.as_deref())?;
    let mut attachments = Vec::new();
    for (i, a) in req.attachments.iter().enumerate() {
        let field = format!("attachments[{i}]");
        header_text(&format!("{field}.filename"), &a.filename)?;
        let content_type = a
            .content_type
            .clone()
            .unwrap_or_else(|| "application/octet-stream".into());
        if !valid_content_type(&content_type) {
            return Err(invalid(
                &format!("{field}.content_type"),
                "a content type is type/subtype in printable ASCII",
            ));
        }
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(a.content.trim())
            .map_err(|e| invalid(&format!("{field}.content"), &format!("not base64: {e}")))?;
        attachments.push((content_type, a.filename.clone(), bytes));
    }
    if rcpts.is_empty() {
        return Err(invalid("to", "at least one recipient is needed"));
    }

    submit(&api, &who, peer, idem, |id, now| {
        let mut b = mail_builder::MessageBuilder::new()
            .from(mail_builder::headers::address::Address::new_address(
                from.0.clone(),
                from.1.to_string(),
            ))
            .message_id(format!("{id}@{}", api.config.server.hostname))
            .date(now);
        if !to.is_empty() {
            b = b.to(mail_builder::headers::address::Address::new_list(
                to.clone(),
            ));
        }
        if !cc.is_empty() {
            b = b.cc(mail_builder::headers::address::Address::new_list(
                cc.clone(),
            ));
        }
        if let Some(s) = &req.subject {
            b = b.subject(s.as_str());
        }
        if let Some(s) = &req.sensitivity {
            b = b.header(
                SENSITIVITY_HEADER,
                mail_builder::headers::text::Text::new(s.as_str()),
            );
        }
        for (name, value) in &req.headers {
            b = b.header(
                name.as_str(),
                mail_builder::headers::text::Text::new(value.as_str()),
            );
        }
        match (&req.text, &req.html) {
            (None, None) => b = b.text_body(""),
            (text, html) => {
                if let Some(t) = text {
                    b = b.text_body(t.as_str());
                }
                if let Some(h) = html {
                    b = b.html_body(h.as_str());
                }
            }
        }
        for (ct, name, bytes) in &attachments {
            b = b.attachment(ct.as_str(), name.as_str(), bytes.as_slice());
        }
        let message = b.write_to_vec().unwrap_or_default();
        Draft {
            mail_from: from.1.clone(),
            rcpts: rcpts.clone(),
            class_header: class.clone(),
            message,
            tags: req.tags.clone(),
            metadata: req.metadata.clone(),
        }
    })
    .await
}

/// `POST /v1/messages/raw`: `{"mail_from", "rcpt_to": [...], "message": base64}`. The
/// message goes out as given (after our Received field); it should carry its own
/// Message-ID and Date, as a message submitted over SMTP would.
pub(super) async fn raw(
    State(api): State<Arc<Api>>,
    ConnectInfo(peer): ConnectInfo<PeerAddr>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    let who = authenticate(&api, &headers, peer.0.ip()).await?;
    who.require(&[Scope::Send])?;
    let raw = body.as_ref().ok().cloned();
    let req: RawRequest = parse_json(&api, body)?;
    let request = match (&req.idempotency_key, &raw) {
        (Some(_), Some(raw)) => fingerprint(raw),
        _ => String::new(),
    };
    let idem = idempotency(&req.idempotency_key)?.map(|k| (k, request.as_str()));
    let mail_from = address(&req.mail_from, "mail_from")?;
    let rcpts = req
        .rcpt_to
        .iter()
        .enumerate()
        .map(|(i, r)| address(r, &format!("rcpt_to[{i}]")))
        .collect::<Result<Vec<_>, _>>()?;
    if rcpts.is_empty() {
        return Err(invalid("rcpt_to", "at least one recipient is needed"));
    }
    let message = base64::engine::general_purpose::STANDARD
        .decode(req.message.trim())
        .map_err(|e| invalid("message", &format!("not base64: {e}")))?;
    if message.contains(&0) {
        return Err(invalid("message", "NUL is not allowed"));
    }
    let (header, _) = crate::crypto::mime::split_header_body(&message);
    if crate::crypto::mime::header_fields(header).is_empty() {
        return Err(invalid("message", "no RFC 5322 header section"));
    }
    let class = chosen_class(&api, req.class.as_deref())?;
    submit(&api, &who, peer, idem, |_, _| Draft {
        mail_from: mail_from.clone(),
        rcpts: rcpts.clone(),
        class_header: class.clone(),
        message: message.clone(),
        tags: Vec::new(),
        metadata: BTreeMap::new(),
    })
    .await
}

/// A message ready for the spool, before our Received field.
struct Draft {
    mail_from: Address,
    rcpts: Vec<Address>,
    class_header: Option<String>,
    message: Vec<u8>,
    tags: Vec<String>,
    metadata: BTreeMap<String, String>,
}

/// Commits a message: the idempotency claim and the status record go into the spool before
/// the message, so one group commit makes all three durable; 202 only after it.
async fn submit(
    api: &Api,
    who: &Principal,
    peer: PeerAddr,
    idem: Option<(&str, &str)>,
    build: impl FnOnce(&str, u64) -> Draft,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    let queue = &api.queue;
    let now_ms = queue.clock().now_millis();
    let now = now_ms / 1000;
    let id = new_queue_id(now_ms);
    let draft = build(&id, now);
    let mut rcpts: Vec<String> = Vec::new();
    for r in draft.rcpts.iter().map(ToString::to_string) {
        if !rcpts.iter().any(|x| x.eq_ignore_ascii_case(&r)) {
            rcpts.push(r);
        }
    }
    if rcpts.len() > api.config.server.max_recipients {
        return Err(invalid(
            "to",
            &format!(
                "more than {} recipients in all",
                api.config.server.max_recipients
            ),
        ));
    }
    let accepted = Accepted {
        id: id.clone(),
        recipients: rcpts.len(),
        request: idem.map(|(_, request)| request.to_string()),
    };
    let idem_key = idem.map(|(k, _)| {
        let mut key = who.client.id.clone().into_bytes();
        key.push(0);
        key.extend_from_slice(k.as_bytes());
        key
    });
    if let Some(key) = &idem_key {
        let value = serde_json::to_vec(&accepted).unwrap_or_default();
        if !api.idempotency.insert_new(key, &value)? {
            let first = api
                .idempotency
                .get(key)?
                .and_then(|v| serde_json::from_slice::<Accepted>(&v).ok())
                .ok_or(ApiError::NotFound)?;
            // Records from before fingerprints were kept match any request.
            if first.request.is_some() && first.request != accepted.request {
                return Err(ApiError::IdempotencyKeyReused);
            }
            tracing::info!(queue_id = %first.id, client_id = %who.client.id, "idempotent repeat; not queued again");
            return Ok(answer(&first));
        }
    }
    let result = commit(api, who, peer, &id, draft, rcpts, now).await;
    if result.is_err()
        && let Some(key) = &idem_key
    {
        // Nothing was queued: a retry with the same key must be able to queue it.
        let _ = api.idempotency.remove(key);
    }
    result?;
    Ok(answer(&accepted))
}

fn answer(a: &Accepted) -> (StatusCode, Json<serde_json::Value>) {
    (
        StatusCode::ACCEPTED,
        Json(serde_json::json!({"id": a.id, "recipients": a.recipients})),
    )
}

async fn commit(
    api: &Api,
    who: &Principal,
    peer: PeerAddr,
    id: &str,
    draft: Draft,
    rcpts: Vec<String>,
    now: u64,
) -> Result<(), ApiError> {
    let max = api.config.server.max_message_size;
    let received = format!(
        "Received: from [{}] (API client {})\r\n\tby {} (Sealpost) with HTTP\r\n\tid {id}; {}\r\n",
        peer.0.ip(),
        who.client.name,
        api.config.server.hostname,
        rfc5322_date(now)
    );
    let mut body = Vec::with_capacity(received.len() + draft.message.len());
    body.extend_from_slice(received.as_bytes());
    body.extend_from_slice(&draft.message);
    if body.len() as u64 > max {
        return Err(ApiError::TooLarge(max));
    }
    let mail_from = draft.mail_from.to_string();
    let identity = who.identity().to_string();
    // Authenticated like an SMTP submission: any recipient domain, and the client may pick
    // its traffic class.
    let class = class::assign(
        &api.config.class,
        &class::Submission {
            listener: Some(&api.local),
            auth_user: Some(&identity),
            sender: &mail_from,
            header_class: draft.class_header.as_deref(),
            may_choose: true,
        },
    );
    let smtputf8 = draft.mail_from.is_utf8() || draft.rcpts.iter().any(Address::is_utf8);
    let env = Envelope {
        version: ENVELOPE_VERSION,
        id: id.to_string(),
        created: now,
        next_due: now,
        attempts: 0,
        mail_from,
        envid: None,
        ret: None,
        smtputf8,
        eight_bit: body.iter().any(|b| *b >= 0x80),
        size: body.len() as u64,
        helo: "api".into(),
        client: peer.0.ip().to_string(),
        authenticated: Some(identity),
        is_dsn: false,
        listener: Some(api.local.clone()),
        class: Some(class),
        api_client: Some(who.client.id.clone()),
        recipients: rcpts
            .into_iter()
            .map(|address| RecipientRecord::queued(address, now))
            .collect(),
    };
    let record = ApiMessage {
        client_id: who.client.id.clone(),
        created: now,
        finished: None,
        tags: draft.tags.clone(),
        metadata: draft.metadata.clone(),
    };
    let record = serde_json::to_vec(&record).unwrap_or_default();
    api.messages.insert(id.as_bytes(), &record)?;
    let details = serde_json::json!({
        "via": "api",
        "queue_id": id,
        "client_name": who.client.name,
        "user": who.user,
        "sender": env.mail_from,
        "recipients": env.recipients.iter().map(|r| r.address.as_str()).collect::<Vec<_>>(),
        "size": env.size,
        "class": env.class,
        "ip": peer.0.ip().to_string(),
    });
    // Handed to the audit writer first, so its flush overlaps the spool's.
    let audited = api.audit.record_pending(
        crate::audit::Actor::api_client(&who.client.id),
        crate::audit::Action::MessageAccepted,
        details,
    );
    if let Err(e) = api.queue.enqueue(&env, &body).await {
        let _ = api.messages.remove(id.as_bytes());
        api.audit.record(
            crate::audit::Actor::system("queue"),
            crate::audit::Action::MessageNotStored,
            serde_json::json!({"queue_id": id, "reason": e.to_string()}),
        );
        return Err(e.into());
    }
    for r in &env.recipients {
        tracing::info!(queue_id = %id, from = %env.mail_from, rcpt = %r.address, client = %peer.0.ip(), api_client = %who.client.id, size = env.size, class = env.class.as_deref().unwrap_or("default"), "accepted");
    }
    audited.wait().await;
    Ok(())
}

pub(super) fn parse_json<T: serde::de::DeserializeOwned>(
    api: &Api,
    body: Result<Bytes, BytesRejection>,
) -> Result<T, ApiError> {
    let body = body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::TooLarge(api.config.server.max_message_size)
        } else {
            ApiError::InvalidJson(e.body_text())
        }
    })?;
    serde_json::from_slice(&body).map_err(|e| ApiError::InvalidJson(e.to_string()))
}

/// Checks `tags` and `metadata`: bounded counts and lengths, no control characters (they are
/// shown back in status answers and may end up in the client's logs).
fn labels(tags: &[String], metadata: &BTreeMap<String, String>) -> Result<(), ApiError> {
    let clean = |s: &str| !s.chars().any(char::is_control);
    if tags.len() > MAX_TAGS {
        return Err(invalid("tags", "at most 32 tags"));
    }
    for (i, t) in tags.iter().enumerate() {
        if t.is_empty() || t.chars().count() > 128 || !clean(t) {
            return Err(invalid(
                &format!("tags[{i}]"),
                "1 to 128 characters, no control characters",
            ));
        }
    }
    if metadata.len() > MAX_TAGS {
        return Err(invalid("metadata", "at most 32 entries"));
    }
    for (k, v) in metadata {
        if k.is_empty() || k.chars().count() > 128 || !clean(k) {
            return Err(invalid(
                "metadata",
                "keys are 1 to 128 characters, no control characters",
            ));
        }
        if v.chars().count() > 1024 || !clean(v) {
            return Err(invalid(
                &format!("metadata.{k}"),
                "at most 1024 characters, no control characters",
            ));
        }
    }
    Ok(())
}

fn invalid(field: &str, message: &str) -> ApiError {
    ApiError::InvalidField {
        field: field.to_string(),
        message: message.to_string(),
    }
}

/// Text that goes into a header: no CR, LF, NUL or other control character but tab.
fn header_text(field: &str, s: &str) -> Result<(), ApiError> {
    if s.chars().any(|c| c.is_control() && c != '\t') {
        return Err(invalid(
            field,
            "CR, LF, NUL and other control characters are not allowed",
        ));
    }
    Ok(())
}

/// An envelope address, parsed with the SMTP grammar (`<...>` optional).
fn address(s: &str, field: &str) -> Result<Address, ApiError> {
    header_text(field, s)?;
    let t = s.trim();
    let bare = t
        .strip_prefix('<')
        .and_then(|r| r.strip_suffix('>'))
        .unwrap_or(t);
    Address::parse(bare, true).map_err(|e| invalid(field, &format!("not an address: {e}")))
}

/// A mailbox's display name (checked) and address.
fn mailbox(m: &Mailbox, field: &str) -> Result<(Option<String>, Address), ApiError> {
    match m {
        Mailbox::Bare(a) => Ok((None, address(a, field)?)),
        Mailbox::Named { name, address: a } => {
            if let Some(n) = name {
                header_text(&format!("{field}.name"), n)?;
            }
            Ok((
                name.clone().filter(|n| !n.is_empty()),
                address(a, &format!("{field}.address"))?,
            ))
        }
    }
}

fn idempotency(key: &Option<String>) -> Result<Option<&str>, ApiError> {
    match key.as_deref() {
        None => Ok(None),
        Some(k)
            if !k.is_empty() && k.len() <= 255 && k.bytes().all(|b| (32..=126).contains(&b)) =>
        {
            Ok(Some(k))
        }
        Some(_) => Err(invalid(
            "idempotency_key",
            "1-255 printable ASCII characters",
        )),
    }
}

/// The requested class, which must be configured.
fn chosen_class(api: &Api, class: Option<&str>) -> Result<Option<String>, ApiError> {
    let Some(c) = class else { return Ok(None) };
    header_text("class", c)?;
    let known = c == crate::config::DEFAULT_CLASS
        || api
            .config
            .class
            .iter()
            .any(|k| k.name.eq_ignore_ascii_case(c));
    if known {
        Ok(Some(c.to_string()))
    } else {
        Err(invalid(
            "class",
            "no such traffic class in the configuration",
        ))
    }
}

fn valid_content_type(ct: &str) -> bool {
    let Some((ty, sub)) = ct.split_once('/') else {
        return false;
    };
    let token = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&b))
    };
    token(ty) && token(sub)
}
