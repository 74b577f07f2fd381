//! One audit record: who (`actor`), what (`action`), the particulars (`details`), and its
//! place in the hash chain (`seq`, `prev`, `hash`).
//!
//! The line format is canonical JSON so that anyone can check a record with ordinary tools:
//! object keys sorted (at every level), no whitespace, strings escaped as JSON requires and
//! nothing more (non-ASCII stays UTF-8). `hash` is the hex SHA-256 of the canonical JSON of
//! the record *without* its `hash` key; `prev` is the previous record's `hash` (64 zeros for
//! the first), so each hash covers the whole chain before it. In Python:
//! `sha256(json.dumps(rec_without_hash, sort_keys=True, separators=(",", ":"),
//! ensure_ascii=False).encode()).hexdigest()`.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

/// `prev` of the first record.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Who did something.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Actor {
    /// What kind of party it is.
    pub kind: ActorKind,
    /// Its identity within that kind: an API client id, an SMTP user name, a client IP, an
    /// OS user name, or what part of the server acted.
    pub id: String,
}

/// The kinds of actor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActorKind {
    /// An HTTP API client (id = client id); for a password-grant token `details.user` names
    /// the user.
    ApiClient,
    /// An authenticated SMTP user (id = user name).
    SmtpUser,
    /// An unauthenticated SMTP client (id = its IP address).
    SmtpClient,
    /// An HTTP caller not (yet) authenticated (id = its IP address): failed API logins.
    HttpClient,
    /// Someone at the command line or on the admin socket (id = OS user name, or `uid:N`).
    AdminCli,
    /// The server itself (id = the part that acted: `server`, `signal`, `queue`, `audit`).
    System,
}

impl Actor {
    /// An API client by id.
    pub fn api_client(id: &str) -> Self {
        Self::new(ActorKind::ApiClient, id)
    }

    /// An authenticated SMTP user.
    pub fn smtp_user(name: &str) -> Self {
        Self::new(ActorKind::SmtpUser, name)
    }

    /// An unauthenticated SMTP client by IP.
    pub fn smtp_client(ip: std::net::IpAddr) -> Self {
        Self::new(ActorKind::SmtpClient, &ip.to_string())
    }

    /// An unauthenticated HTTP caller by IP.
    pub fn http_client(ip: std::net::IpAddr) -> Self {
        Self::new(ActorKind::HttpClient, &ip.to_string())
    }

    /// An administrator by OS user name (or `uid:N`).
    pub fn admin(user: &str) -> Self {
        Self::new(ActorKind::AdminCli, user)
    }

    /// A part of the server acting on its own.
    pub fn system(part: &str) -> Self {
        Self::new(ActorKind::System, part)
    }

    fn new(kind: ActorKind, id: &str) -> Self {
        Self {
            kind,
            id: id.to_string(),
        }
    }

    /// The kind as written in the log (`api_client`, `smtp_user`, ...).
    pub fn kind_name(&self) -> &'static str {
        match self.kind {
            ActorKind::ApiClient => "api_client",
            ActorKind::SmtpUser => "smtp_user",
            ActorKind::SmtpClient => "smtp_client",
            ActorKind::HttpClient => "http_client",
            ActorKind::AdminCli => "admin_cli",
            ActorKind::System => "system",
        }
    }
}

/// What was done. Written as the dotted name ([`Action::name`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// A message was committed to the spool (SMTP or API); details: queue id, via, sender,
    /// recipients, size, class, client IP, TLS.
    MessageAccepted,
    /// A message recorded as accepted could not be committed after all (the spool failed,
    /// and the client got a 451, not a 250); details: queue id, reason. The accepted record
    /// is written while the spool flushes, so the two disk waits overlap.
    MessageNotStored,
    /// A recipient was delivered; details: queue id, recipient, method, TLS.
    MessageDelivered,
    /// A recipient was deferred; details: queue id, recipient, reason.
    MessageDeferred,
    /// A recipient failed for good; details: queue id, recipient, reason.
    MessageBounced,
    /// A send to a suppressed address failed at once; details: queue id, recipient, reason.
    MessageSuppressed,
    /// An admin deleted a queued message.
    MessageDeleted,
    /// An admin made a message due now.
    MessageRetried,
    /// An admin made every queued message due now.
    QueueFlushed,
    /// Authentication failed (SMTP AUTH, API key, Basic, bearer, OAuth client or password
    /// grant); details: method, the identity tried, peer IP. Never the secret.
    AuthFailed,
    /// SMTP AUTH succeeded; details: user, peer IP.
    AuthSucceeded,
    /// An OAuth access token was issued; details: grant type, scopes, expiry, token digest.
    TokenIssued,
    /// An OAuth access token was revoked (RFC 7009).
    TokenRevoked,
    /// An API client was created.
    ApiClientAdded,
    /// An API client was removed.
    ApiClientRemoved,
    /// A webhook subscription was made through the API (where every event will be sent).
    WebhookAdded,
    /// A webhook subscription was removed through the API.
    WebhookRemoved,
    /// The policy file was reloaded.
    PolicyReloaded,
    /// A policy reload was refused (the old policy stays).
    PolicyReloadFailed,
    /// Recipient keys were imported.
    KeyImported,
    /// Recipient keys were removed.
    KeyRemoved,
    /// An address was put on the suppression list.
    SuppressionAdded,
    /// An address was taken off the suppression list.
    SuppressionRemoved,
    /// The server started.
    ServerStarted,
    /// The server stopped.
    ServerStopped,
    /// A writer found the log and its head file disagreeing (records missing at the end, or
    /// the head file gone): the evidence is kept in the chain, and `verify` reports it.
    HeadMismatch,
    /// A writer removed an incomplete last line (a crash during a write; never acknowledged).
    PartialLineRemoved,
}

impl Action {
    /// The dotted name written in the log.
    pub fn name(self) -> &'static str {
        match self {
            Action::MessageAccepted => "message.accepted",
            Action::MessageNotStored => "message.not_stored",
            Action::MessageDelivered => "message.delivered",
            Action::MessageDeferred => "message.deferred",
            Action::MessageBounced => "message.bounced",
            Action::MessageSuppressed => "message.suppressed",
            Action::MessageDeleted => "message.deleted",
            Action::MessageRetried => "message.retried",
            Action::QueueFlushed => "queue.flushed",
            Action::AuthFailed => "auth.failed",
            Action::AuthSucceeded => "auth.succeeded",
            Action::TokenIssued => "token.issued",
            Action::TokenRevoked => "token.revoked",
            Action::ApiClientAdded => "api_client.added",
            Action::ApiClientRemoved => "api_client.removed",
            Action::WebhookAdded => "webhook.added",
            Action::WebhookRemoved => "webhook.removed",
            Action::PolicyReloaded => "policy.reloaded",
            Action::PolicyReloadFailed => "policy.reload_failed",
            Action::KeyImported => "key.imported",
            Action::KeyRemoved => "key.removed",
            Action::SuppressionAdded => "suppression.added",
            Action::SuppressionRemoved => "suppression.removed",
            Action::ServerStarted => "server.started",
            Action::ServerStopped => "server.stopped",
            Action::HeadMismatch => "audit.head_mismatch",
            Action::PartialLineRemoved => "audit.partial_line_removed",
        }
    }
}

/// A record as stored: one line of the log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Record {
    /// Position in the log: 1, 2, 3, ... without gaps.
    pub seq: u64,
    /// When, RFC 3339 in UTC with milliseconds (`2026-12-04T16:28:12.123Z`).
    pub time: String,
    /// Who.
    pub actor: Actor,
    /// What, as a dotted name (see [`Action::name`]).
    pub action: String,
    /// The particulars: a JSON object.
    pub details: Value,
    /// The previous record's `hash`, or [`GENESIS`].
    pub prev: String,
    /// Hex SHA-256 of this record's canonical JSON without `hash`.
    pub hash: String,
}

impl Record {
    /// Builds the record that follows `prev` at `seq`, with its hash.
    pub fn new(
        seq: u64,
        time: String,
        actor: Actor,
        action: Action,
        details: Value,
        prev: &str,
    ) -> Self {
        let details = match details {
            Value::Object(m) => Value::Object(m),
            Value::Null => Value::Object(Map::new()),
            other => serde_json::json!({ "value": other }),
        };
        let mut r = Self {
            seq,
            time,
            actor,
            action: action.name().to_string(),
            details,
            prev: prev.to_string(),
            hash: String::new(),
        };
        r.hash = r.compute_hash();
        r
    }

    /// The hash this record should carry: SHA-256 over its canonical JSON without `hash`.
    pub fn compute_hash(&self) -> String {
        let mut v = self.to_value();
        if let Value::Object(m) = &mut v {
            m.remove("hash");
        }
        hex::encode(Sha256::digest(canonical(&v).as_bytes()))
    }

    /// The line as written (canonical JSON, without the newline).
    pub fn line(&self) -> String {
        canonical(&self.to_value())
    }

    fn to_value(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }
}

/// Canonical JSON: keys sorted at every level, no whitespace.
pub fn canonical(v: &Value) -> String {
    fn sorted(v: &Value) -> Value {
        match v {
            Value::Object(m) => {
                let mut keys: Vec<&String> = m.keys().collect();
                keys.sort();
                let mut out = Map::new();
                for k in keys {
                    out.insert(k.clone(), sorted(&m[k]));
                }
                Value::Object(out)
            }
            Value::Array(a) => Value::Array(a.iter().map(sorted).collect()),
            other => other.clone(),
        }
    }
    serde_json::to_string(&sorted(v)).unwrap_or_default()
}

/// Formats Unix milliseconds as RFC 3339 UTC with milliseconds.
pub fn rfc3339(millis: u64) -> String {
    chrono::DateTime::from_timestamp_millis(i64::try_from(millis).unwrap_or(i64::MAX))
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_covers_everything_but_itself_and_the_line_is_canonical() {
        let r = Record::new(
            1,
            rfc3339(1_700_000_000_123),
            Actor::smtp_user("alice"),
            Action::AuthSucceeded,
            serde_json::json!({"z": 1, "a": {"y": "é", "b": [2, 1]}}),
            GENESIS,
        );
        assert_eq!(r.time, "2023-11-14T22:13:20.123Z");
        assert_eq!(r.hash, r.compute_hash());
        let line = r.line();
        assert!(line.starts_with(r#"{"action":"auth.succeeded","actor":{"id":"alice","kind":"smtp_user"},"details":{"a":{"b":[2,1],"y":"é"},"z":1},"hash":""#), "{line}");
        let back: Record = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(back, r);
        let mut edited = r.clone();
        edited.details["z"] = serde_json::json!(2);
        assert_ne!(edited.compute_hash(), r.hash);
        let mut moved = r;
        moved.prev = "1".repeat(64);
        assert_ne!(moved.compute_hash(), moved.hash);
    }
}
