//! The due-time index: one key per queued message, `d/<class>/<due u64 BE><id>`, so the
//! scheduler reads "what is due now in this class" as a short ordered range, and a class with
//! a million waiting messages costs nothing to the others.

use super::Envelope;
use crate::config::DEFAULT_CLASS;

/// One due-index entry: its raw key, the message id and when it is due.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DueKey {
    /// The raw key (ordered by class, then due time, then id).
    pub key: Vec<u8>,
    /// Unix seconds.
    pub due: u64,
    /// Queue id.
    pub id: String,
}

impl DueKey {
    /// The key prefix of a class's entries.
    pub fn class_prefix(class: &str) -> Vec<u8> {
        format!("d/{class}/").into_bytes()
    }

    /// The smallest key of a class: scanning from here sees every entry.
    pub fn class_start(class: &str) -> Vec<u8> {
        Self::class_prefix(class)
    }

    /// The key of an envelope's entry.
    pub fn of(env: &Envelope) -> Vec<u8> {
        Self::key(due_class(env), env.next_due, &env.id)
    }

    /// The key for (class, due, id).
    pub fn key(class: &str, due: u64, id: &str) -> Vec<u8> {
        let mut k = Self::class_prefix(class);
        k.extend_from_slice(&due.to_be_bytes());
        k.extend_from_slice(id.as_bytes());
        k
    }

    /// Parses a raw key of `class`; `None` for keys of other classes or garbage.
    pub fn parse(class: &str, key: &[u8]) -> Option<DueKey> {
        let rest = key.strip_prefix(Self::class_prefix(class).as_slice())?;
        let (due, id) = rest.split_at_checked(8)?;
        Some(DueKey {
            key: key.to_vec(),
            due: u64::from_be_bytes(due.try_into().ok()?),
            id: String::from_utf8(id.to_vec()).ok()?,
        })
    }

    /// The class part of any due key.
    pub fn class_of_key(key: &[u8]) -> Option<&str> {
        let rest = key.strip_prefix(b"d/")?;
        let end = rest.iter().position(|&b| b == b'/')?;
        std::str::from_utf8(&rest[..end]).ok()
    }
}

/// The class an envelope is scheduled in (`None` counts as the default class).
pub fn due_class(env: &Envelope) -> &str {
    env.class.as_deref().unwrap_or(DEFAULT_CLASS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_order_by_due_then_id_within_a_class() {
        let a = DueKey::key("bulk", 5, "B");
        let b = DueKey::key("bulk", 5, "C");
        let c = DueKey::key("bulk", 256, "A");
        assert!(a < b && b < c);
        assert!(DueKey::class_start("bulk") < a);
        let parsed = DueKey::parse("bulk", &c).unwrap();
        assert_eq!((parsed.due, parsed.id.as_str()), (256, "A"));
        assert_eq!(DueKey::parse("other", &c), None);
        assert_eq!(DueKey::class_of_key(&c), Some("bulk"));
        // A class whose name is a prefix of another never sees the other's keys.
        assert_eq!(DueKey::parse("bul", &c), None);
    }
}

#[cfg(test)]
mod contract {
    use super::*;
    use crate::spool::{MemorySpool, SledSpool, Spool};

    fn env(id: &str, class: Option<&str>, due: u64) -> Envelope {
        let mut e: Envelope = serde_json::from_str(&format!(
            r#"{{"version":1,"id":"{id}","created":1,"next_due":{due},"attempts":0,
            "mail_from":"a@example.net","envid":null,"ret":null,"smtputf8":false,
            "eight_bit":false,"size":1,"helo":"h","client":"127.0.0.1","authenticated":null,
            "is_dsn":false,"recipients":[]}}"#
        ))
        .unwrap();
        e.class = class.map(str::to_string);
        e
    }

    fn exercise(s: &dyn Spool) {
        s.insert(&env("A", None, 10), b"a").unwrap();
        s.insert(&env("B", Some("bulk"), 5), b"b").unwrap();
        s.insert(&env("C", Some("bulk"), 20), b"c").unwrap();
        s.insert(&env("D", Some("bulk"), 5), b"d").unwrap();
        let ids = |v: Vec<DueKey>| v.into_iter().map(|d| d.id).collect::<Vec<_>>();
        let start = DueKey::class_start("bulk");
        assert_eq!(ids(s.due("bulk", &start, 10, 100).unwrap()), ["B", "D"]);
        assert_eq!(ids(s.due("bulk", &start, 10, 1).unwrap()), ["B"]);
        assert_eq!(
            ids(s.due("bulk", &start, 4, 100).unwrap()),
            Vec::<String>::new()
        );
        assert_eq!(
            ids(s
                .due("default", &DueKey::class_start("default"), 10, 9)
                .unwrap()),
            ["A"]
        );
        // Resuming after a key skips what was already taken.
        let first = s.due("bulk", &start, 100, 1).unwrap().remove(0);
        let mut after = first.key.clone();
        after.push(0);
        assert_eq!(ids(s.due("bulk", &after, 100, 100).unwrap()), ["D", "C"]);
        assert_eq!(s.next_due_after("bulk", 5).unwrap(), Some(20));
        assert_eq!(s.next_due_after("bulk", 20).unwrap(), None);
        // An update moves the entry; a remove drops it.
        let mut b = s.envelope("B").unwrap().unwrap();
        b.next_due = 30;
        assert!(s.update(&b).unwrap());
        assert_eq!(ids(s.due("bulk", &start, 29, 100).unwrap()), ["D", "C"]);
        s.remove("D").unwrap();
        assert_eq!(ids(s.due("bulk", &start, 100, 100).unwrap()), ["C", "B"]);
        assert_eq!(
            s.count_by_class().unwrap(),
            vec![("bulk".to_string(), 2), ("default".to_string(), 1)]
        );
        // An update of a removed message writes no due entry either.
        let mut d = env("D", Some("bulk"), 1);
        d.attempts = 2;
        assert!(!s.update(&d).unwrap());
        assert_eq!(ids(s.due("bulk", &start, 100, 100).unwrap()), ["C", "B"]);
    }

    #[test]
    fn memory_spool_due_index() {
        exercise(&MemorySpool::new());
    }

    #[test]
    fn sled_spool_due_index() {
        let dir = tempfile::tempdir().unwrap();
        exercise(&SledSpool::open(dir.path()).unwrap());
    }
}
