//! S/MIME encryption (RFC 8551 enveloped-data) and the recipient certificate store.
//!
//! [`encrypt_smime`] turns a message in SMTP wire form into an `application/pkcs7-mime`
//! message that Outlook, Apple Mail and Thunderbird decrypt: CMS EnvelopedData (RFC 5652),
//! AES-256-CBC content encryption, the content key wrapped with RSA PKCS #1 v1.5 (or RSA-OAEP
//! with SHA-256 on request) for each recipient certificate, identified by issuer and serial
//! number.
//!
//! # The inner entity
//!
//! What gets encrypted is the original's `Content-*` header fields, byte-exact and in their
//! original order, then the empty line that ended the original header (CRLF if it had none),
//! then the original body byte-exact. A message with no `Content-*` fields yields an inner
//! entity that starts with the empty line (MIME's default, `text/plain; charset=us-ascii`,
//! applies to it as it did to the original); no Content-Type is invented. All other header
//! fields stay on the outer message, byte-exact except that line ends become CRLF, followed by
//! the S/MIME content fields. When the outer Subject is masked, the original `Subject` field
//! leads the inner entity so the reader still sees the real one after decrypting. See
//! [`encrypt_smime`] for the exact layout.
//!
//! [`SmimeStore`] keeps recipient certificates as `<sha256-hex>.pem` files in one directory
//! and reads them at every lookup, so certificates imported by the CLI are seen by a running
//! server without a restart.

mod cert;
mod envelope;
mod mime;
mod store;

use std::time::SystemTime;

pub(crate) use envelope::CompatRng;
pub use envelope::encrypt_smime;
pub use store::SmimeStore;
pub use x509_cert::Certificate;

/// Options for [`encrypt_smime`]. The default is what every mainstream client reads:
/// PKCS #1 v1.5 key transport and the original Subject on the outer message.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SmimeOptions {
    /// Wrap the content key with RSAES-OAEP (SHA-256, MGF1-SHA-256) instead of PKCS #1 v1.5.
    /// Default `false`: Outlook and older clients still expect v1.5.
    pub oaep: bool,
    /// Replace the outer Subject with this text (for example `"..."`), encoded as RFC 2047
    /// words if it is not plain ASCII. Default `None`: the Subject is kept. When masked, the
    /// original Subject field leads the encrypted inner entity, so the reader still sees it.
    pub mask_subject: Option<String>,
}

/// What the store knows about one certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// Lower-case hex SHA-256 of the certificate's DER; also its file name in the store.
    pub fingerprint_sha256: String,
    /// E-mail addresses from SAN rfc822Name entries and the subject's emailAddress.
    pub emails: Vec<String>,
    /// End of the validity period.
    pub not_after: SystemTime,
    /// Subject distinguished name in RFC 4514 form.
    pub subject: String,
}

/// Why a certificate cannot be used as an S/MIME encryption recipient.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CertProblem {
    /// The public key is not rsaEncryption; only RSA key transport is supported.
    #[error("public key is not RSA")]
    NotRsa,
    /// The RSA public key could not be decoded.
    #[error("RSA public key is malformed")]
    BadRsaKey,
    /// notAfter is in the past.
    #[error("certificate has expired")]
    Expired,
    /// notBefore is in the future.
    #[error("certificate is not yet valid")]
    NotYetValid,
    /// A KeyUsage extension is present without keyEncipherment.
    #[error("KeyUsage does not allow keyEncipherment")]
    KeyUsageForbidsKeyEncipherment,
    /// An ExtendedKeyUsage extension has neither emailProtection nor anyExtendedKeyUsage.
    #[error("ExtendedKeyUsage does not allow emailProtection")]
    ExtendedKeyUsageForbidsEmail,
    /// The named extension is malformed or repeated.
    #[error("{0} extension is malformed or repeated")]
    BadExtension(&'static str),
    /// Neither SAN nor subject holds an e-mail address, so no lookup could ever find it.
    #[error("certificate names no e-mail address")]
    NoEmailAddress,
}

/// Errors from S/MIME encryption and the certificate store.
#[derive(Debug, thiserror::Error)]
pub enum SmimeError {
    /// The message is already `application/pkcs7-mime` enveloped-data or
    /// `multipart/encrypted`; it is not encrypted a second time.
    #[error("message is already encrypted")]
    AlreadyEncrypted,
    /// [`encrypt_smime`] was called without recipient certificates.
    #[error("no recipient certificates")]
    NoRecipients,
    /// A certificate cannot be used; `index` counts from 1 in the input or recipient list.
    #[error("certificate {index} ({subject}): {problem}")]
    UnusableCertificate {
        /// Position of the certificate, from 1.
        index: usize,
        /// Its subject, for the operator.
        subject: String,
        /// What is wrong with it.
        problem: CertProblem,
    },
    /// The input holds no certificate (a private key alone, or nothing at all).
    #[error("no certificate found in the input")]
    NoCertificate,
    /// A PEM block has no end marker.
    #[error("malformed PEM: block without matching END line")]
    BadPem,
    /// DER or PEM decoding failed.
    #[error("certificate decoding failed: {0}")]
    Der(der::Error),
    /// Building the CMS structure failed.
    #[error("CMS encoding failed: {0}")]
    Cms(String),
    /// The mask Subject holds control characters (CR, LF…) or is longer than 256 bytes.
    #[error("mask subject must be at most 256 bytes without control characters")]
    InvalidMaskSubject,
    /// An argument to [`SmimeStore::remove`] is neither a fingerprint nor an e-mail address.
    #[error("not a SHA-256 fingerprint or e-mail address: {0:?}")]
    BadSelector(String),
    /// Reading or writing the store directory failed.
    #[error("certificate store {path}: {source}")]
    Io {
        /// The file or directory involved.
        path: std::path::PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}
