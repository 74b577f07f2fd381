//! OpenPGP: the on-disk keyring ([`PgpKeyring`]) and PGP/MIME encryption (RFC 3156,
//! [`encrypt_pgp_mime`]).
//!
//! The encrypted inner entity is [`crate::crypto::mime::inner_entity`] of the message: its
//! `Content-*` header fields and body, byte-exact after CRLF canonicalisation. The outer header
//! keeps every other field byte-exact and in order (minus `MIME-Version`, which is written once,
//! and `DKIM-Signature`, which encryption invalidates).

mod encrypt;
pub(crate) mod keyring;

pub use encrypt::{PgpOptions, encrypt_pgp_mime};
pub use keyring::{ImportedKey, KeyInfo, PgpKeyring};

use std::path::PathBuf;

/// Errors of the OpenPGP module.
#[derive(Debug, thiserror::Error)]
pub enum PgpError {
    /// The message is already encrypted (see [`crate::crypto::mime::is_already_encrypted`]).
    #[error("message is already encrypted")]
    AlreadyEncrypted,
    /// `encrypt_pgp_mime` was called without recipients.
    #[error("no recipients")]
    NoRecipients,
    /// A recipient certificate has no valid, alive encryption-capable subkey now.
    #[error("certificate {fingerprint} has no usable encryption subkey")]
    NoEncryptionKey {
        /// The certificate's fingerprint (hex).
        fingerprint: String,
    },
    /// The certificate is revoked.
    #[error("certificate {fingerprint} is revoked")]
    Revoked {
        /// The certificate's fingerprint (hex).
        fingerprint: String,
    },
    /// The certificate is expired or not valid under the standard policy now.
    #[error("certificate {fingerprint} is not valid now: {reason}")]
    Invalid {
        /// The certificate's fingerprint (hex).
        fingerprint: String,
        /// Why (expired, weak algorithms, bad self-signatures, ...).
        reason: String,
    },
    /// The input holds no OpenPGP certificate.
    #[error("no OpenPGP certificate found in the input")]
    NoCertificate,
    /// The input is not parseable OpenPGP data.
    #[error("cannot parse OpenPGP data: {0}")]
    Parse(String),
    /// A `PgpOptions` value is unusable (e.g. a masked subject with a line break).
    #[error("invalid option: {0}")]
    InvalidOption(&'static str),
    /// OpenPGP encryption or serialisation failed.
    #[error("OpenPGP operation failed: {0}")]
    Crypto(String),
    /// Reading or writing the keyring directory failed.
    #[error("keyring {path}: {source}")]
    Io {
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
}
