//! The suppression list: addresses we must not send to again, per traffic class.
//!
//! A hard bounce or a complaint for `bob@example.com` in class `marketing` suppresses Bob for
//! marketing only, so his password resets still go out; an entry with class `*` suppresses
//! every class (a complaint from a report that does not say the class, or an admin's choice).
//! Entries live in the spool database (tree `suppression`), flushed with the queue, so they
//! survive restarts and the admin CLI sees the same list as the server.

use crate::spool::{KvTree, SpoolError};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// The class name that matches every class.
pub const ALL_CLASSES: &str = "*";

/// Why an address is on the list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SuppressionSource {
    /// A remote server refused the address permanently (user unknown, no such domain).
    Bounce,
    /// A delivery status notification that came back to us said so.
    Dsn,
    /// The recipient reported the mail as spam (ARF feedback report).
    Complaint,
    /// An administrator added it.
    Admin,
}

/// One suppressed address in one class.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Suppression {
    /// The address, lowercased.
    pub address: String,
    /// The class it is suppressed in, or `*` for all.
    pub class: String,
    /// What put it here.
    pub source: SuppressionSource,
    /// The reply or report that caused it, e.g. `550 5.1.1 user unknown`.
    pub reason: String,
    /// Unix seconds when it was added.
    pub created: u64,
}

/// The suppression list over a key-value tree. Keys are `address \0 class`, so one prefix
/// scan finds every class an address is suppressed in.
#[derive(Clone)]
pub struct SuppressionList {
    tree: Arc<dyn KvTree>,
}

impl SuppressionList {
    /// The list stored in `tree` (the spool's `suppression` tree).
    pub fn new(tree: Arc<dyn KvTree>) -> Self {
        Self { tree }
    }

    /// The entry that stops a send of `class` to `address`, if any (a class-specific entry
    /// first, then an all-classes one).
    pub fn check(&self, address: &str, class: &str) -> Result<Option<Suppression>, SpoolError> {
        let address = normalise(address);
        for c in [class, ALL_CLASSES] {
            if let Some(v) = self.tree.get(&key(&address, c))? {
                return Ok(serde_json::from_slice(&v).ok());
            }
        }
        Ok(None)
    }

    /// Adds (or replaces) an entry. Durable with the next spool flush.
    pub fn add(&self, mut entry: Suppression) -> Result<(), SpoolError> {
        entry.address = normalise(&entry.address);
        let value = serde_json::to_vec(&entry).map_err(|e| SpoolError::Corrupt {
            id: entry.address.clone(),
            reason: format!("suppression entry: {e}"),
        })?;
        self.tree.insert(&key(&entry.address, &entry.class), &value)
    }

    /// Removes `address` from `class`, or from every class when `class` is `None`. Returns
    /// how many entries went.
    pub fn remove(&self, address: &str, class: Option<&str>) -> Result<usize, SpoolError> {
        let address = normalise(address);
        match class {
            Some(c) => Ok(usize::from(self.tree.remove(&key(&address, c))?)),
            None => {
                let mut prefix = address.into_bytes();
                prefix.push(0);
                let mut n = 0;
                for (k, _) in self.tree.scan_prefix(&prefix, usize::MAX)? {
                    n += usize::from(self.tree.remove(&k)?);
                }
                Ok(n)
            }
        }
    }

    /// Every entry, ordered by address then class.
    pub fn list(&self) -> Result<Vec<Suppression>, SpoolError> {
        crate::spool::json_values(&*self.tree)
    }
}

/// Addresses compare case-insensitively: mailbox local parts are case-sensitive in theory,
/// but no provider treats them so, and a suppression must not be dodged by `Bob@` vs `bob@`.
fn normalise(address: &str) -> String {
    address
        .trim()
        .trim_start_matches('<')
        .trim_end_matches('>')
        .to_lowercase()
}

fn key(address: &str, class: &str) -> Vec<u8> {
    let mut k = address.as_bytes().to_vec();
    k.push(0);
    k.extend_from_slice(class.as_bytes());
    k
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spool::MemoryTree;

    fn entry(address: &str, class: &str) -> Suppression {
        Suppression {
            address: address.into(),
            class: class.into(),
            source: SuppressionSource::Bounce,
            reason: "550 5.1.1 user unknown".into(),
            created: 1,
        }
    }

    #[test]
    fn per_class_and_all_classes() {
        let list = SuppressionList::new(Arc::new(MemoryTree::default()));
        list.add(entry("Bob@Example.com", "marketing")).unwrap();
        assert!(
            list.check("bob@example.com", "marketing")
                .unwrap()
                .is_some()
        );
        assert!(
            list.check("<BOB@example.COM>", "marketing")
                .unwrap()
                .is_some()
        );
        assert!(
            list.check("bob@example.com", "transactional")
                .unwrap()
                .is_none()
        );
        list.add(entry("carol@example.com", ALL_CLASSES)).unwrap();
        assert!(
            list.check("carol@example.com", "transactional")
                .unwrap()
                .is_some()
        );
        // bob@example.com must not match bob@example.co (prefix of the key).
        assert!(list.check("bob@example.co", "marketing").unwrap().is_none());
        assert_eq!(list.list().unwrap().len(), 2);
    }

    #[test]
    fn remove_one_class_or_all() {
        let list = SuppressionList::new(Arc::new(MemoryTree::default()));
        list.add(entry("bob@example.com", "marketing")).unwrap();
        list.add(entry("bob@example.com", "default")).unwrap();
        list.add(entry("bob@example.community", "default")).unwrap();
        assert_eq!(list.remove("bob@example.com", Some("default")).unwrap(), 1);
        assert_eq!(list.remove("bob@example.com", Some("default")).unwrap(), 0);
        list.add(entry("bob@example.com", "default")).unwrap();
        assert_eq!(list.remove("BOB@example.com", None).unwrap(), 2);
        assert_eq!(list.list().unwrap().len(), 1, "the other address stays");
    }
}
