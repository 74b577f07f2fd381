//! The event log: one durable, ordered record per recipient outcome, feeding the
//! `GET /v1/events` API, webhooks ([`dispatch`]) and, through [`EventLog::subscribe`], any other
//! in-process observer (the audit log).
//!
//! # What is recorded
//!
//! | type | when | per |
//! | --- | --- | --- |
//! | `accepted` | a message is committed to the spool (SMTP, API, or a DSN we generate) | message, listing `recipients` |
//! | `delivered` | the next hop accepted a recipient (or a feedback message was read) | recipient |
//! | `deferred` | a temporary failure; the recipient will be retried | recipient |
//! | `bounced` | a permanent failure, a policy refusal that bounces, or expiry | recipient |
//! | `suppressed` | the recipient is on the suppression list and failed at once | recipient |
//!
//! `accepted` is one event per message (with the recipient list) rather than one per
//! recipient: it is written on the SMTP hot path before the `250`, and one insert per message
//! costs the same whatever the recipient count. Shaping delays (a path is rate limited, the
//! job waits for it) are not deferrals and make no event. Message bodies are never recorded.
//!
//! # Durability and order
//!
//! Each event is one insert into the spool tree [`TREE`], keyed by its sequence number
//! (big-endian, so keys sort in order); it has no flush of its own: the queue's group commit
//! that makes the outcome durable makes its event durable too. The sequence number is the
//! event's `id` and the `after` cursor of `GET /v1/events`; it only grows, across restarts
//! too (pruning always keeps the newest event, so the next number is never reused).
//! Numbers are assigned and written under one lock, so a reader that has seen event `n` has
//! seen every event before it.
//!
//! # Retention
//!
//! `[events] retention_secs` (default 7 days) bounds the log; the webhook dispatcher prunes
//! older events periodically ([`EventLog::prune`]).

pub mod dispatch;
pub mod outbox;
pub mod webhook;

use crate::spool::{Envelope, KvTree, SpoolError};
use serde::{Deserialize, Serialize};
use std::sync::{Arc, Mutex, RwLock};
use tokio::sync::Notify;

/// The spool tree holding the event log.
pub const TREE: &str = "events";
/// The spool tree indexing events of API messages by queue id (`queue_id` + id, empty
/// values), for `GET /v1/messages/{id}`. SMTP messages are not indexed: their events cost
/// one insert, not two.
pub const INDEX_TREE: &str = "events_by_message";

/// What happened to a message or recipient.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventType {
    /// The message was committed to the spool.
    Accepted,
    /// The next hop accepted the recipient.
    Delivered,
    /// A temporary failure; the recipient will be retried.
    Deferred,
    /// A permanent failure (remote refusal, policy refusal or expiry).
    Bounced,
    /// Failed at once because the address is on the suppression list.
    Suppressed,
}

impl EventType {
    /// Every type, in the order they are documented.
    pub const ALL: [EventType; 5] = [
        EventType::Accepted,
        EventType::Delivered,
        EventType::Deferred,
        EventType::Bounced,
        EventType::Suppressed,
    ];

    /// The name used in JSON, config and webhook filters.
    pub fn name(self) -> &'static str {
        match self {
            EventType::Accepted => "accepted",
            EventType::Delivered => "delivered",
            EventType::Deferred => "deferred",
            EventType::Bounced => "bounced",
            EventType::Suppressed => "suppressed",
        }
    }

    /// Parses a type name.
    pub fn parse(s: &str) -> Option<EventType> {
        EventType::ALL.into_iter().find(|t| t.name() == s)
    }
}

/// One event record as stored, served by `GET /v1/events` and POSTed to webhooks. Optional
/// fields are left out of the JSON when unknown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// The sequence number: unique, increasing, the paging cursor. 0 until appended.
    pub id: u64,
    /// Unix seconds (by the queue's clock) when it happened.
    pub time: u64,
    /// What happened.
    #[serde(rename = "type")]
    pub kind: EventType,
    /// The message's queue id.
    pub queue_id: String,
    /// The recipient, for every type but `accepted`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recipient: Option<String>,
    /// Every recipient of the message, for `accepted` only.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub recipients: Vec<String>,
    /// The envelope sender; empty for the null sender (DSNs).
    pub sender: String,
    /// The traffic class.
    pub class: String,
    /// The SMTP reply (remote or our own diagnostic), e.g. `250 2.0.0 Ok`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply: Option<String>,
    /// The remote host that gave the reply, e.g. `mx.example.com[192.0.2.1]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote: Option<String>,
    /// The protection policy chose, e.g. `openpgp`, `smime`, `verified-tls (mta-sts)`,
    /// `opportunistic-tls`, `feedback`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// The TLS version of the delivery session, e.g. `TLSv1_3`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_version: Option<String>,
    /// The TLS cipher suite, e.g. `TLS13_AES_256_GCM_SHA384`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_cipher: Option<String>,
    /// Whether the server certificate was verified (false for opportunistic TLS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_verified: Option<bool>,
    /// The API client id that submitted the message, if it came from the HTTP API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_client: Option<String>,
}

impl Event {
    /// An event of `kind` about message `env` in `class` at `time`, with no recipient or
    /// delivery details yet (set the public fields as known).
    pub fn about(kind: EventType, env: &Envelope, class: &str, time: u64) -> Self {
        Self {
            id: 0,
            time,
            kind,
            queue_id: env.id.clone(),
            recipient: None,
            recipients: Vec::new(),
            sender: env.mail_from.clone(),
            class: class.to_string(),
            reply: None,
            remote: None,
            method: None,
            tls_version: None,
            tls_cipher: None,
            tls_verified: None,
            api_client: env.api_client.clone(),
        }
    }

    /// The same event for one recipient.
    pub fn to(mut self, recipient: &str) -> Self {
        self.recipient = Some(recipient.to_string());
        self
    }

    /// The same event with a reply.
    pub fn reply(mut self, reply: impl Into<String>) -> Self {
        self.reply = Some(reply.into());
        self
    }
}

/// An in-process observer of appended events; see [`EventLog::subscribe`].
pub type Listener = Arc<dyn Fn(&Event) + Send + Sync>;

/// The durable event log over the spool tree [`TREE`]. One per server, shared by the queue
/// (which appends), the API (which pages) and the webhook dispatcher (which tails it).
pub struct EventLog {
    tree: Arc<dyn KvTree>,
    index: Arc<dyn KvTree>,
    /// The next sequence number; the lock also orders inserts (see the module doc).
    next: Mutex<u64>,
    listeners: RwLock<Vec<Listener>>,
    appended: Notify,
}

impl EventLog {
    /// Opens the log stored in `tree` (the spool's [`TREE`]) with its per-message index
    /// `index` ([`INDEX_TREE`]); numbering continues after the newest event.
    pub fn open(tree: Arc<dyn KvTree>, index: Arc<dyn KvTree>) -> Result<Arc<Self>, SpoolError> {
        let next = match tree.last()? {
            Some((k, _)) => decode_key(&k).map_or(1, |n| n + 1),
            None => 1,
        };
        Ok(Arc::new(Self {
            tree,
            index,
            next: Mutex::new(next),
            listeners: RwLock::new(Vec::new()),
            appended: Notify::new(),
        }))
    }

    /// Appends `event`, giving it the next sequence number, calls the listeners and wakes
    /// waiters of [`EventLog::appended`]. Returns the number. Not flushed: durable with the
    /// next spool flush (the queue's group commit).
    pub fn append(&self, mut event: Event) -> Result<u64, SpoolError> {
        let mut next = self.next.lock().unwrap_or_else(|p| p.into_inner());
        event.id = *next;
        let value = serde_json::to_vec(&event).map_err(|e| SpoolError::Storage(e.to_string()))?;
        self.tree.insert(&event.id.to_be_bytes(), &value)?;
        if event.api_client.is_some() {
            self.index
                .insert(&index_key(&event.queue_id, event.id), &[])?;
        }
        *next += 1;
        let listeners = self.listeners.read().unwrap_or_else(|p| p.into_inner());
        for listener in listeners.iter() {
            listener(&event);
        }
        drop(listeners);
        drop(next);
        // One stored permit: the single tailer (the webhook dispatcher) never misses a wake.
        self.appended.notify_one();
        Ok(event.id)
    }

    /// Like [`EventLog::append`], but a storage failure is logged instead of returned: the
    /// queue records outcomes with this, and a full disk must not turn a delivered message
    /// into a failed attempt (the spool write after it fails loudly anyway).
    pub fn emit(&self, event: Event) {
        if let Err(e) = self.append(event) {
            tracing::error!(error = %e, "event not recorded");
        }
    }

    /// Registers `listener` to be called with every event appended from now on, after it is
    /// written and numbered.
    ///
    /// Listeners run synchronously on the appending task, in sequence order, while the log's
    /// append lock is held: so they see every event exactly once and in order (what a
    /// hash-chained audit log needs), but a slow listener slows mail delivery. Do little in
    /// one (push to a channel, hash a record) and never append to this log from it.
    pub fn subscribe(&self, listener: Listener) {
        self.listeners
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .push(listener);
    }

    /// Resolves after the next append, or at once if one happened since the last wake: for
    /// the one tailer, the webhook dispatcher (a second waiter would share its wake-ups).
    pub fn appended(&self) -> tokio::sync::futures::Notified<'_> {
        self.appended.notified()
    }

    /// Up to `limit` events with ids greater than `after`, oldest first. Records that do not
    /// decode (written by a later version) are skipped.
    pub fn page(&self, after: u64, limit: usize) -> Result<Vec<Event>, SpoolError> {
        let start = after.saturating_add(1).to_be_bytes();
        Ok(self
            .tree
            .range_from(&start, limit)?
            .into_iter()
            .filter_map(|(_, v)| serde_json::from_slice(&v).ok())
            .collect())
    }

    /// The retained events of an API message (see [`INDEX_TREE`]), oldest first.
    pub fn for_message(&self, queue_id: &str) -> Result<Vec<Event>, SpoolError> {
        let mut out = Vec::new();
        for (k, _) in self.index.scan_prefix(queue_id.as_bytes(), usize::MAX)? {
            let Some(id) = k.len().checked_sub(8).and_then(|at| decode_key(&k[at..])) else {
                continue;
            };
            match self.tree.get(&id.to_be_bytes())? {
                Some(v) => out.extend(serde_json::from_slice::<Event>(&v).ok()),
                // Pruned meanwhile.
                None => {
                    self.index.remove(&k)?;
                }
            }
        }
        Ok(out)
    }

    /// The id of the newest event, 0 when none was ever appended.
    pub fn last_id(&self) -> u64 {
        self.next
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .saturating_sub(1)
    }

    /// Removes up to `max` of the oldest events whose time is before `before`, always
    /// keeping the newest event (it carries the sequence across restarts). Returns how many
    /// were removed.
    pub fn prune(&self, before: u64, max: usize) -> Result<usize, SpoolError> {
        let newest = self.last_id();
        let mut removed = 0;
        for (k, v) in self.tree.range_from(b"", max)? {
            let Some(id) = decode_key(&k) else { continue };
            if id >= newest {
                break;
            }
            let event = serde_json::from_slice::<Event>(&v).ok();
            if event.as_ref().is_some_and(|e| e.time >= before) {
                break;
            }
            if let Some(e) = event.filter(|e| e.api_client.is_some()) {
                self.index.remove(&index_key(&e.queue_id, id))?;
            }
            self.tree.remove(&k)?;
            removed += 1;
        }
        Ok(removed)
    }
}

fn index_key(queue_id: &str, id: u64) -> Vec<u8> {
    let mut k = queue_id.as_bytes().to_vec();
    k.extend_from_slice(&id.to_be_bytes());
    k
}

fn decode_key(k: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(k.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spool::MemoryTree;

    fn env() -> Envelope {
        serde_json::from_value(serde_json::json!({
            "version": 1, "id": "0123456789ABCDEF0123", "created": 10, "next_due": 10,
            "attempts": 0, "mail_from": "a@example.com", "envid": null, "ret": null,
            "smtputf8": false, "eight_bit": false, "size": 1, "helo": "h", "client": "c",
            "authenticated": null, "is_dsn": false, "recipients": []
        }))
        .unwrap()
    }

    #[test]
    fn numbers_grow_across_reopen_and_pruning_keeps_the_newest() {
        let tree: Arc<dyn KvTree> = Arc::new(MemoryTree::default());
        let index: Arc<dyn KvTree> = Arc::new(MemoryTree::default());
        let log = EventLog::open(tree.clone(), index.clone()).unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        log.subscribe(Arc::new(move |e: &Event| s.lock().unwrap().push(e.id)));
        for t in [100, 200, 300] {
            let mut e = Event::about(EventType::Delivered, &env(), "default", t).to("b@x.test");
            e.api_client = (t == 200).then(|| "spc_1".to_string());
            log.append(e).unwrap();
        }
        let mine = log.for_message("0123456789ABCDEF0123").unwrap();
        assert_eq!(mine.iter().map(|e| e.id).collect::<Vec<_>>(), [2]);
        assert_eq!(*seen.lock().unwrap(), [1, 2, 3]);
        let page = log.page(1, 10).unwrap();
        assert_eq!(page.iter().map(|e| e.id).collect::<Vec<_>>(), [2, 3]);
        assert_eq!(page[0].recipient.as_deref(), Some("b@x.test"));
        // Everything is older than 1000, but the newest stays.
        assert_eq!(log.prune(1000, 100).unwrap(), 2);
        assert_eq!(log.page(0, 10).unwrap().len(), 1);
        assert!(index.is_empty().unwrap(), "pruning removes index entries");
        let again = EventLog::open(tree, index).unwrap();
        assert_eq!(again.last_id(), 3);
        let id = again
            .append(Event::about(EventType::Accepted, &env(), "default", 400))
            .unwrap();
        assert_eq!(id, 4);
    }

    #[test]
    fn json_leaves_out_unknown_fields() {
        let e = Event::about(EventType::Accepted, &env(), "default", 5);
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(v["type"], "accepted");
        assert!(v.get("reply").is_none() && v.get("recipient").is_none());
    }
}
