//! API clients: the applications allowed to use the HTTP API, each with a random secret kept
//! only as an argon2 hash and a set of scopes.
//!
//! Clients live in the spool database (tree `api_clients`, keyed by client id), so they
//! survive restarts, `sealpost api-clients` sees the same list as a running server (through
//! the admin socket), and a client added while the server runs works at once.

use crate::spool::{KvTree, SpoolError};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::sync::Arc;

/// The spool tree holding API clients.
pub const TREE: &str = "api_clients";

/// What a client may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Submit messages (`POST /v1/messages`, `POST /v1/messages/raw`).
    Send,
    /// Read the status and events of the messages it submitted (`GET /v1/messages/{id}`,
    /// `GET /v1/events`).
    Read,
    /// Read the status of any message submitted through the API, every event, the queue
    /// summary (`GET /v1/queue`), and manage webhooks (`/v1/webhooks`).
    Admin,
}

impl Scope {
    /// Every scope, in the order they are printed.
    pub const ALL: [Scope; 3] = [Scope::Send, Scope::Read, Scope::Admin];

    /// The scope's name as written in `--scopes` and OAuth `scope` parameters.
    pub fn name(self) -> &'static str {
        match self {
            Scope::Send => "send",
            Scope::Read => "read",
            Scope::Admin => "admin",
        }
    }

    /// Parses one scope name.
    pub fn parse(s: &str) -> Option<Scope> {
        Scope::ALL.into_iter().find(|x| x.name() == s)
    }

    /// Parses a list separated by commas or spaces (`send,read` on the command line,
    /// `send read` in OAuth). Empty items are skipped; an unknown name is an error.
    pub fn parse_list(s: &str) -> Result<Vec<Scope>, String> {
        let mut out = Vec::new();
        for item in s.split([',', ' ']).filter(|i| !i.is_empty()) {
            let scope = Scope::parse(item).ok_or_else(|| format!("unknown scope {item:?}"))?;
            if !out.contains(&scope) {
                out.push(scope);
            }
        }
        out.sort();
        Ok(out)
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Scopes written the OAuth way: space-separated.
pub fn scope_string(scopes: &[Scope]) -> String {
    scopes
        .iter()
        .map(|s| s.name())
        .collect::<Vec<_>>()
        .join(" ")
}

/// One API client as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiClient {
    /// The public identifier (`spc_` and 24 hex digits): the user part of Basic auth and
    /// of `X-API-Key`, and the OAuth `client_id`.
    pub id: String,
    /// The admin's name for it, unique (e.g. `billing-app`); also the identity its mail is
    /// submitted under, so `[[class]] auth_users` and policy `authenticated_users` match it.
    pub name: String,
    /// What it may do.
    pub scopes: Vec<Scope>,
    /// Argon2 PHC hash of the secret; the secret itself is shown once and never stored.
    pub secret_hash: String,
    /// Unix seconds when it was added.
    pub created: u64,
}

/// A new client and its secret, returned once by [`ClientStore::add`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NewClient {
    /// The stored record.
    pub client: ApiClient,
    /// The secret in clear: printed once, then only its hash exists.
    pub secret: String,
}

/// Why a client could not be added.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The name is taken or malformed, or no scope was given.
    #[error("{0}")]
    Invalid(String),
    /// Hashing the secret failed.
    #[error("hashing the secret: {0}")]
    Hash(String),
    /// The spool failed.
    #[error(transparent)]
    Spool(#[from] SpoolError),
}

/// The clients over a key-value tree.
#[derive(Clone)]
pub struct ClientStore {
    tree: Arc<dyn KvTree>,
}

impl ClientStore {
    /// The store in `tree` (the spool's [`TREE`]).
    pub fn new(tree: Arc<dyn KvTree>) -> Self {
        Self { tree }
    }

    /// Creates a client with a fresh id and a random 256-bit secret. Durable with the next
    /// spool flush.
    pub fn add(&self, name: &str, scopes: &[Scope], now: u64) -> Result<NewClient, ClientError> {
        if name.is_empty()
            || name.len() > 64
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.@".contains(c))
        {
            return Err(ClientError::Invalid(format!(
                "{name:?}: a client name is 1-64 letters, digits and - _ . @"
            )));
        }
        if scopes.is_empty() {
            return Err(ClientError::Invalid("at least one scope is needed".into()));
        }
        if self.list()?.iter().any(|c| c.name == name) {
            return Err(ClientError::Invalid(format!(
                "a client named {name:?} exists already"
            )));
        }
        let id = format!("spc_{}", hex::encode(rand::random::<[u8; 12]>()));
        let secret = hex::encode(rand::random::<[u8; 32]>());
        let secret_hash = hash_secret(&secret).map_err(|e| ClientError::Hash(e.to_string()))?;
        let mut scopes = scopes.to_vec();
        scopes.sort();
        scopes.dedup();
        let client = ApiClient {
            id,
            name: name.to_string(),
            scopes,
            secret_hash,
            created: now,
        };
        let value = encode(&client)?;
        if !self.tree.insert_new(client.id.as_bytes(), &value)? {
            return Err(ClientError::Invalid(
                "client id collision; try again".into(),
            ));
        }
        Ok(NewClient { client, secret })
    }

    /// The client with this id.
    pub fn get(&self, id: &str) -> Result<Option<ApiClient>, SpoolError> {
        Ok(self
            .tree
            .get(id.as_bytes())?
            .and_then(|v| serde_json::from_slice(&v).ok()))
    }

    /// Every client, ordered by id.
    pub fn list(&self) -> Result<Vec<ApiClient>, SpoolError> {
        crate::spool::json_values(&*self.tree)
    }

    /// Removes the client with this id or name; returns whether one existed. Its tokens stop
    /// working at once (each request looks the client up again).
    pub fn remove(&self, id_or_name: &str) -> Result<bool, SpoolError> {
        for c in self.list()? {
            if c.id == id_or_name || c.name == id_or_name {
                return self.tree.remove(c.id.as_bytes());
            }
        }
        Ok(false)
    }
}

fn encode(client: &ApiClient) -> Result<Vec<u8>, SpoolError> {
    serde_json::to_vec(client).map_err(|e| SpoolError::Corrupt {
        id: client.id.clone(),
        reason: format!("api client: {e}"),
    })
}

/// Argon2id with light parameters (4 MiB, one pass). A client secret has 256 random bits,
/// so no work factor is needed against guessing; the hash is there so that a copy of the
/// spool does not hand out working credentials, and a light one keeps each API request
/// (every request authenticates) cheap.
fn hasher() -> argon2::Argon2<'static> {
    let params = argon2::Params::new(4096, 1, 1, None).unwrap_or_default();
    argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params)
}

/// Hashes a secret into a PHC string.
pub fn hash_secret(secret: &str) -> Result<String, argon2::password_hash::Error> {
    use argon2::password_hash::{PasswordHasher, SaltString};
    let salt = SaltString::encode_b64(&rand::random::<[u8; 16]>())?;
    Ok(hasher()
        .hash_password(secret.as_bytes(), &salt)?
        .to_string())
}

/// Checks a secret against a PHC hash (constant time in the secret).
pub fn verify_secret(secret: &str, hash: &str) -> bool {
    use argon2::PasswordVerifier;
    argon2::PasswordHash::new(hash)
        .map(|parsed| hasher().verify_password(secret.as_bytes(), &parsed).is_ok())
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spool::MemorySpool;
    use crate::spool::Spool;

    fn store() -> ClientStore {
        let spool = MemorySpool::default();
        ClientStore::new(spool.tree(TREE).unwrap_or_else(|e| panic!("tree: {e}")))
    }

    #[test]
    fn add_verify_list_remove() {
        let s = store();
        let new = s
            .add("billing", &[Scope::Send, Scope::Read], 7)
            .unwrap_or_else(|e| panic!("add: {e}"));
        assert!(new.client.id.starts_with("spc_"));
        assert_eq!(new.secret.len(), 64);
        assert!(!new.client.secret_hash.contains(&new.secret));
        assert!(verify_secret(&new.secret, &new.client.secret_hash));
        assert!(!verify_secret("wrong", &new.client.secret_hash));
        assert!(s.add("billing", &[Scope::Send], 8).is_err());
        assert!(s.add("bad name", &[Scope::Send], 8).is_err());
        assert!(s.add("noscope", &[], 8).is_err());
        let got = s.get(&new.client.id).unwrap_or_else(|e| panic!("get: {e}"));
        assert_eq!(got.as_ref(), Some(&new.client));
        assert!(
            s.remove("billing")
                .unwrap_or_else(|e| panic!("remove: {e}"))
        );
        assert!(
            !s.remove("billing")
                .unwrap_or_else(|e| panic!("remove: {e}"))
        );
        assert!(s.list().unwrap_or_else(|e| panic!("list: {e}")).is_empty());
    }

    #[test]
    fn scope_lists() {
        assert_eq!(
            Scope::parse_list("read,send read"),
            Ok(vec![Scope::Send, Scope::Read])
        );
        assert!(Scope::parse_list("send,write").is_err());
        assert_eq!(scope_string(&[Scope::Send, Scope::Admin]), "send admin");
    }
}
