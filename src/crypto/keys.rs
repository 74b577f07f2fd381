//! Both recipient key stores behind one door, for `sealpost keys` and the policy probes:
//! OpenPGP certificates in `DIR/pgp/`, S/MIME certificates in `DIR/smime/`. Files are read at
//! lookup time, so keys imported by the CLI while the server runs are used at once.

use super::pgp::{PgpError, PgpKeyring};
use super::smime::{SmimeError, SmimeStore};
use serde::Serialize;
use std::path::Path;

/// The two key stores.
#[derive(Debug, Clone)]
pub struct KeyStores {
    /// OpenPGP certificates (public only).
    pub pgp: PgpKeyring,
    /// S/MIME certificates.
    pub smime: SmimeStore,
}

/// Why a key operation failed.
#[derive(Debug, thiserror::Error)]
pub enum KeysError {
    /// An OpenPGP problem.
    #[error("OpenPGP: {0}")]
    Pgp(#[from] PgpError),
    /// An S/MIME problem.
    #[error("S/MIME: {0}")]
    Smime(#[from] SmimeError),
    /// The input is neither an OpenPGP certificate nor an X.509 certificate.
    #[error("not an OpenPGP or X.509 certificate (OpenPGP: {pgp}; X.509: {smime})")]
    Unrecognised {
        /// What the OpenPGP parser said.
        pgp: String,
        /// What the X.509 parser said.
        smime: String,
    },
}

/// One stored key, as listed.
#[derive(Debug, Clone, Serialize)]
pub struct KeyEntry {
    /// `pgp` or `smime`.
    pub kind: &'static str,
    /// OpenPGP fingerprint, or the certificate's SHA-256.
    pub fingerprint: String,
    /// Addresses the key is for.
    pub emails: Vec<String>,
    /// Unix seconds when it stops being valid, if it expires.
    pub expires: Option<u64>,
}

impl KeyStores {
    /// Opens (creating) both stores under `dir`.
    pub fn open(dir: &Path) -> Result<Self, KeysError> {
        Ok(Self {
            pgp: PgpKeyring::open(dir.join("pgp"))?,
            smime: SmimeStore::open(dir.join("smime"))?,
        })
    }

    /// Imports OpenPGP certificates (armored or binary) or X.509 certificates (PEM or DER),
    /// whichever the input is. Secret key material is never stored.
    pub fn import(&self, bytes: &[u8]) -> Result<Vec<KeyEntry>, KeysError> {
        let looks_x509 = bytes
            .windows(27)
            .any(|w| w == b"-----BEGIN CERTIFICATE-----")
            || bytes.first() == Some(&0x30);
        if looks_x509 {
            return Ok(self
                .smime
                .import(bytes)?
                .into_iter()
                .map(|c| KeyEntry {
                    kind: "smime",
                    fingerprint: c.fingerprint_sha256,
                    emails: c.emails,
                    expires: unix(Some(c.not_after)),
                })
                .collect());
        }
        match self.pgp.import(bytes) {
            Ok(keys) => Ok(keys
                .into_iter()
                .map(|k| KeyEntry {
                    kind: "pgp",
                    fingerprint: k.fingerprint,
                    emails: k.emails,
                    expires: None,
                })
                .collect()),
            Err(PgpError::Parse(pgp)) => Err(KeysError::Unrecognised {
                pgp,
                smime: "no CERTIFICATE block".into(),
            }),
            Err(e) => Err(e.into()),
        }
    }

    /// Every stored key of both kinds.
    pub fn list(&self) -> Result<Vec<KeyEntry>, KeysError> {
        let mut out: Vec<KeyEntry> = self
            .pgp
            .list()?
            .into_iter()
            .map(|k| KeyEntry {
                kind: "pgp",
                fingerprint: k.fingerprint,
                emails: k.emails,
                expires: unix(k.expires),
            })
            .collect();
        out.extend(self.smime.list()?.into_iter().map(|c| KeyEntry {
            kind: "smime",
            fingerprint: c.fingerprint_sha256,
            emails: c.emails,
            expires: unix(Some(c.not_after)),
        }));
        Ok(out)
    }

    /// Removes keys by fingerprint or address from both stores; returns how many went.
    pub fn remove(&self, selector: &str) -> Result<usize, KeysError> {
        let pgp = match self.pgp.remove(selector) {
            Ok(n) => n,
            Err(PgpError::InvalidOption(_)) => 0,
            Err(e) => return Err(e.into()),
        };
        let smime = match self.smime.remove(selector) {
            Ok(n) => n,
            Err(SmimeError::BadSelector(_)) => 0,
            Err(e) => return Err(e.into()),
        };
        Ok(pgp + smime)
    }
}

fn unix(t: Option<std::time::SystemTime>) -> Option<u64> {
    t.and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_secs())
}
