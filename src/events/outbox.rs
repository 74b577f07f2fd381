//! The durable webhook outbox: one [`Delivery`] per (subscription, event), with its attempt
//! log, and a due index of the pending ones.
//!
//! Two spool trees: [`RECORDS_TREE`] keyed `subscription_id "/" event_id(be64)` (so one
//! prefix scan lists a subscription's deliveries in event order), and [`PENDING_TREE`] keyed
//! `due(be64) subscription_id "/" event_id(be64)` (so the dispatcher reads only what is due).
//! Both are written without a flush of their own; the dispatcher commits through the queue's
//! group commit, so a pending delivery survives a restart.

use super::EventType;
use crate::spool::{KvTree, SpoolError};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// The spool tree of delivery records.
pub const RECORDS_TREE: &str = "webhook_deliveries";
/// The spool tree of pending deliveries by due time.
pub const PENDING_TREE: &str = "webhook_pending";
/// Where the dispatcher keeps the id of the last event it fanned out (in [`RECORDS_TREE`];
/// subscription ids start with `wh_`, so no prefix scan meets it).
const CURSOR_KEY: &[u8] = b"#cursor";

/// Where a delivery stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryState {
    /// Not acknowledged yet; another attempt is due at `next_attempt`.
    Pending,
    /// The receiver answered 2xx.
    Delivered,
    /// Still failing after `[events] webhook_max_age_secs`; no more attempts.
    Failed,
}

/// One attempt to POST a delivery.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttemptLog {
    /// Unix seconds (queue clock) when the attempt started.
    pub time: u64,
    /// The HTTP status, when the receiver answered.
    pub status: Option<u16>,
    /// The connection or timeout error, when it did not.
    pub error: Option<String>,
    /// How long the attempt took, in milliseconds.
    pub duration_ms: u64,
}

/// One event to be POSTed to one subscription.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    /// The subscription id.
    pub webhook_id: String,
    /// The event id.
    pub event_id: u64,
    /// The event type.
    pub event_type: EventType,
    /// Unix seconds when the delivery was created; retries stop `webhook_max_age_secs` later.
    pub created: u64,
    /// Where it stands.
    pub state: DeliveryState,
    /// When the next attempt is due (pending only).
    pub next_attempt: Option<u64>,
    /// Every attempt so far, oldest first.
    pub attempts: Vec<AttemptLog>,
    /// The JSON body to POST (kept here so pruning the event log does not lose it).
    pub body: String,
}

/// A due entry: its key in [`PENDING_TREE`] and what it points at.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Due {
    /// The pending-tree key (also the in-flight marker).
    pub key: Vec<u8>,
    /// When it was due.
    pub due: u64,
    /// The subscription id.
    pub webhook_id: String,
    /// The event id.
    pub event_id: u64,
}

/// Delivery counts of one subscription.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    /// Waiting for an attempt.
    pub pending: usize,
    /// Acknowledged.
    pub delivered: usize,
    /// Given up.
    pub failed: usize,
}

/// The outbox over its two trees.
pub struct Outbox {
    records: Arc<dyn KvTree>,
    pending: Arc<dyn KvTree>,
}

impl Outbox {
    /// The outbox over the spool's [`RECORDS_TREE`] and [`PENDING_TREE`].
    pub fn new(records: Arc<dyn KvTree>, pending: Arc<dyn KvTree>) -> Self {
        Self { records, pending }
    }

    /// The id of the last event fanned out, if the dispatcher ever ran.
    pub fn cursor(&self) -> Result<Option<u64>, SpoolError> {
        Ok(self
            .records
            .get(CURSOR_KEY)?
            .and_then(|v| Some(u64::from_be_bytes(v.try_into().ok()?))))
    }

    /// Remembers the last event fanned out.
    pub fn set_cursor(&self, id: u64) -> Result<(), SpoolError> {
        self.records.insert(CURSOR_KEY, &id.to_be_bytes())
    }

    /// Creates the pending delivery of event `event_id` to `webhook_id`, due at `now`.
    /// Creating it again (after a crash between fan-out and cursor update) changes nothing.
    pub fn create(
        &self,
        webhook_id: &str,
        event_id: u64,
        event_type: EventType,
        body: String,
        now: u64,
    ) -> Result<(), SpoolError> {
        let d = Delivery {
            webhook_id: webhook_id.to_string(),
            event_id,
            event_type,
            created: now,
            state: DeliveryState::Pending,
            next_attempt: Some(now),
            attempts: Vec::new(),
            body,
        };
        if self
            .records
            .insert_new(&record_key(webhook_id, event_id), &encode(&d)?)?
        {
            self.pending
                .insert(&pending_key(now, webhook_id, event_id), &[])?;
        }
        Ok(())
    }

    /// Up to `limit` pending entries due at or before `now`, earliest first.
    pub fn due(&self, now: u64, limit: usize) -> Result<Vec<Due>, SpoolError> {
        let mut out = Vec::new();
        for (key, _) in self.pending.range_from(b"", limit)? {
            let Some(due) = parse_pending(&key) else {
                self.pending.remove(&key)?;
                continue;
            };
            if due.due > now {
                break;
            }
            out.push(due);
        }
        Ok(out)
    }

    /// The earliest due time of any pending entry.
    pub fn next_due(&self) -> Result<Option<u64>, SpoolError> {
        Ok(self
            .pending
            .range_from(b"", 1)?
            .first()
            .and_then(|(k, _)| parse_pending(k))
            .map(|d| d.due))
    }

    /// The delivery record for `webhook_id` and `event_id`.
    pub fn get(&self, webhook_id: &str, event_id: u64) -> Result<Option<Delivery>, SpoolError> {
        Ok(self
            .records
            .get(&record_key(webhook_id, event_id))?
            .and_then(|v| serde_json::from_slice(&v).ok()))
    }

    /// Stores `delivery` after an attempt made from the pending entry `from`: the record is
    /// written first, then the next pending entry (if still pending), then `from` goes. A
    /// crash in between leaves at worst a stale entry, which [`Outbox::is_current`] spots.
    pub fn settle(&self, from: &Due, delivery: &Delivery) -> Result<(), SpoolError> {
        self.records.insert(
            &record_key(&delivery.webhook_id, delivery.event_id),
            &encode(delivery)?,
        )?;
        if let (DeliveryState::Pending, Some(at)) = (delivery.state, delivery.next_attempt) {
            self.pending.insert(
                &pending_key(at, &delivery.webhook_id, delivery.event_id),
                &[],
            )?;
        }
        self.drop_due(from)
    }

    /// Removes a pending entry (its delivery is gone or already settled).
    pub fn drop_due(&self, due: &Due) -> Result<(), SpoolError> {
        self.pending.remove(&due.key).map(|_| ())
    }

    /// Whether `due` is the entry `delivery` is waiting on (not a leftover).
    pub fn is_current(due: &Due, delivery: &Delivery) -> bool {
        delivery.state == DeliveryState::Pending && delivery.next_attempt == Some(due.due)
    }

    /// Up to `limit` deliveries of `webhook_id` with event ids greater than `after`, in
    /// event order.
    pub fn list(
        &self,
        webhook_id: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<Delivery>, SpoolError> {
        let prefix = record_prefix(webhook_id);
        let start = record_key(webhook_id, after.saturating_add(1));
        Ok(self
            .records
            .range_from(&start, limit)?
            .into_iter()
            .take_while(|(k, _)| k.starts_with(&prefix))
            .filter_map(|(_, v)| serde_json::from_slice(&v).ok())
            .collect())
    }

    /// How many deliveries of `webhook_id` are in each state.
    pub fn counts(&self, webhook_id: &str) -> Result<Counts, SpoolError> {
        let mut c = Counts::default();
        for (_, v) in self
            .records
            .scan_prefix(&record_prefix(webhook_id), usize::MAX)?
        {
            match serde_json::from_slice::<Delivery>(&v).map(|d| d.state) {
                Ok(DeliveryState::Pending) => c.pending += 1,
                Ok(DeliveryState::Delivered) => c.delivered += 1,
                Ok(DeliveryState::Failed) => c.failed += 1,
                Err(_) => {}
            }
        }
        Ok(c)
    }

    /// Removes every delivery record of `webhook_id` (its subscription was deleted); the
    /// pending entries are dropped by the dispatcher when it finds no record.
    pub fn remove_webhook(&self, webhook_id: &str) -> Result<usize, SpoolError> {
        let entries = self
            .records
            .scan_prefix(&record_prefix(webhook_id), usize::MAX)?;
        for (k, _) in &entries {
            self.records.remove(k)?;
        }
        Ok(entries.len())
    }

    /// Removes up to `max` finished (delivered or failed) records created before `before`.
    pub fn prune(&self, before: u64, max: usize) -> Result<usize, SpoolError> {
        let mut removed = 0;
        let mut from: Vec<u8> = b"wh_".to_vec();
        loop {
            let page = self.records.range_from(&from, 1000)?;
            let Some((last, _)) = page.last() else { break };
            from = last.clone();
            from.push(0);
            for (k, v) in &page {
                let Ok(d) = serde_json::from_slice::<Delivery>(v) else {
                    continue;
                };
                if d.state != DeliveryState::Pending && d.created < before {
                    self.records.remove(k)?;
                    removed += 1;
                    if removed >= max {
                        return Ok(removed);
                    }
                }
            }
            if page.len() < 1000 {
                break;
            }
        }
        Ok(removed)
    }
}

fn encode(d: &Delivery) -> Result<Vec<u8>, SpoolError> {
    serde_json::to_vec(d).map_err(|e| SpoolError::Storage(e.to_string()))
}

fn record_prefix(webhook_id: &str) -> Vec<u8> {
    let mut k = webhook_id.as_bytes().to_vec();
    k.push(b'/');
    k
}

fn record_key(webhook_id: &str, event_id: u64) -> Vec<u8> {
    let mut k = record_prefix(webhook_id);
    k.extend_from_slice(&event_id.to_be_bytes());
    k
}

fn pending_key(due: u64, webhook_id: &str, event_id: u64) -> Vec<u8> {
    let mut k = due.to_be_bytes().to_vec();
    k.extend_from_slice(&record_key(webhook_id, event_id));
    k
}

fn parse_pending(key: &[u8]) -> Option<Due> {
    let due = u64::from_be_bytes(key.get(..8)?.try_into().ok()?);
    let rest = key.get(8..)?;
    let split = rest.len().checked_sub(9)?;
    if rest.get(split) != Some(&b'/') {
        return None;
    }
    let webhook_id = std::str::from_utf8(&rest[..split]).ok()?.to_string();
    let event_id = u64::from_be_bytes(rest[split + 1..].try_into().ok()?);
    Some(Due {
        key: key.to_vec(),
        due,
        webhook_id,
        event_id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spool::MemoryTree;

    #[test]
    fn create_is_idempotent_and_settle_moves_the_due_entry() {
        let o = Outbox::new(
            Arc::new(MemoryTree::default()),
            Arc::new(MemoryTree::default()),
        );
        o.create("wh_a", 5, EventType::Delivered, "{}".into(), 100)
            .unwrap();
        o.create("wh_a", 5, EventType::Delivered, "{}".into(), 150)
            .unwrap();
        o.create("wh_b", 6, EventType::Bounced, "{}".into(), 120)
            .unwrap();
        assert_eq!(o.due(99, 10).unwrap(), []);
        let due = o.due(130, 10).unwrap();
        assert_eq!(due.len(), 2);
        assert_eq!((due[0].webhook_id.as_str(), due[0].event_id), ("wh_a", 5));
        let mut d = o.get("wh_a", 5).unwrap().unwrap();
        assert!(Outbox::is_current(&due[0], &d));
        d.next_attempt = Some(200);
        o.settle(&due[0], &d).unwrap();
        assert_eq!(o.next_due().unwrap(), Some(120));
        assert_eq!(o.due(130, 10).unwrap().len(), 1);
        assert_eq!(o.due(200, 10).unwrap().len(), 2);
        assert_eq!(o.counts("wh_a").unwrap().pending, 1);
        assert_eq!(o.list("wh_a", 0, 10).unwrap().len(), 1);
        assert_eq!(o.list("wh_a", 5, 10).unwrap().len(), 0);
        o.set_cursor(6).unwrap();
        assert_eq!(o.cursor().unwrap(), Some(6));
        assert_eq!(o.remove_webhook("wh_a").unwrap(), 1);
        assert_eq!(o.cursor().unwrap(), Some(6));
    }
}
