//! DKIM signing (RFC 6376; Ed25519 per RFC 8463) with mail-auth, per sender domain.
//!
//! Signing is the last step before the bytes go on the wire: after any encryption transform,
//! over exactly the bytes sent, so nothing may re-wrap or rewrite the message afterwards. The
//! domain is the one in the message's `From:` header (what DMARC aligns with), else the
//! envelope sender's.

use crate::config::DkimKey;
use mail_auth::common::crypto::{Ed25519Key, RsaKey, Sha256};
use mail_auth::common::headers::HeaderWriter;
use mail_auth::dkim::{Canonicalization, DkimSigner, Done};
use rustls_pki_types::PrivateKeyDer;
use rustls_pki_types::pem::PemObject;
use std::collections::HashMap;
use std::path::Path;

/// Header fields signed when the config lists none: the ones whose change would alter what
/// a reader sees or how they unsubscribe (RFC 8058 requires List-Unsubscribe(-Post) signed).
pub const DEFAULT_HEADERS: &[&str] = &[
    "From",
    "Reply-To",
    "Subject",
    "Date",
    "To",
    "Cc",
    "Message-ID",
    "In-Reply-To",
    "References",
    "MIME-Version",
    "Content-Type",
    "Content-Transfer-Encoding",
    "List-Unsubscribe",
    "List-Unsubscribe-Post",
    "List-Id",
];

/// Why a DKIM key could not be used.
#[derive(Debug, thiserror::Error)]
pub enum DkimError {
    /// The key file could not be read.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file holds no usable private key.
    #[error("{path}: {reason}")]
    BadKey {
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// Signing failed (a message without the signed headers, a library error).
    #[error("DKIM signing failed: {0}")]
    Sign(String),
}

enum Key {
    Rsa(DkimSigner<RsaKey<Sha256>, Done>),
    Ed25519(DkimSigner<Ed25519Key, Done>),
}

/// Signing keys by lowercase domain.
#[derive(Default)]
pub struct DkimSigners {
    by_domain: HashMap<String, Key>,
}

impl std::fmt::Debug for DkimSigners {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DkimSigners")
            .field("domains", &self.by_domain.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl DkimSigners {
    /// Loads every `[[dkim]]` key; `base` resolves relative key paths.
    pub fn load(keys: &[DkimKey], base: &Path) -> Result<Self, DkimError> {
        let mut by_domain = HashMap::new();
        for k in keys {
            let path = base.join(&k.key_file);
            let pem = std::fs::read(&path).map_err(|source| DkimError::Read {
                path: path.display().to_string(),
                source,
            })?;
            let headers: Vec<String> = if k.headers.is_empty() {
                DEFAULT_HEADERS.iter().map(|h| h.to_string()).collect()
            } else {
                k.headers.clone()
            };
            let domain = k.domain.trim_end_matches('.').to_ascii_lowercase();
            let key = signer(&pem, &domain, &k.selector, headers).map_err(|reason| {
                DkimError::BadKey {
                    path: path.display().to_string(),
                    reason,
                }
            })?;
            by_domain.insert(domain, key);
        }
        Ok(Self { by_domain })
    }

    /// True when no key is configured (nothing is signed).
    pub fn is_empty(&self) -> bool {
        self.by_domain.is_empty()
    }

    /// `message` with a DKIM-Signature prepended when a key exists for its `From:` domain
    /// (else `envelope_domain`); unchanged when there is none.
    pub fn sign(&self, message: Vec<u8>, envelope_domain: &str) -> Result<Vec<u8>, DkimError> {
        if self.by_domain.is_empty() {
            return Ok(message);
        }
        let domain = from_domain(&message).unwrap_or_else(|| envelope_domain.to_ascii_lowercase());
        let Some(key) = self.by_domain.get(&domain) else {
            return Ok(message);
        };
        let header = match key {
            Key::Rsa(s) => s.sign(&message).map(|sig| sig.to_header()),
            Key::Ed25519(s) => s.sign(&message).map(|sig| sig.to_header()),
        }
        .map_err(|e| DkimError::Sign(e.to_string()))?;
        let mut out = Vec::with_capacity(header.len() + message.len());
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(&message);
        Ok(out)
    }
}

fn signer(pem: &[u8], domain: &str, selector: &str, headers: Vec<String>) -> Result<Key, String> {
    let der = PrivateKeyDer::from_pem_slice(pem)
        .map_err(|e| format!("no PEM private key (PKCS#8 or PKCS#1) found: {e}"))?;
    if let PrivateKeyDer::Pkcs8(p8) = &der
        && let Ok(k) = Ed25519Key::from_pkcs8_maybe_unchecked_der(p8.secret_pkcs8_der())
    {
        return Ok(Key::Ed25519(
            DkimSigner::from_key(k)
                .domain(domain)
                .selector(selector)
                .headers(headers)
                .header_canonicalization(Canonicalization::Relaxed)
                .body_canonicalization(Canonicalization::Relaxed),
        ));
    }
    let rsa = RsaKey::<Sha256>::from_key_der(der)
        .map_err(|e| format!("not an RSA or Ed25519 key: {e}"))?;
    Ok(Key::Rsa(
        DkimSigner::from_key(rsa)
            .domain(domain)
            .selector(selector)
            .headers(headers)
            .header_canonicalization(Canonicalization::Relaxed)
            .body_canonicalization(Canonicalization::Relaxed),
    ))
}

/// The domain of the first address in the top-level `From:` field, lowercased.
fn from_domain(message: &[u8]) -> Option<String> {
    let (header, _) = super::mime::split_header_body(message);
    let from = super::mime::header_fields(header)
        .into_iter()
        .find(|f| f.is("from"))?
        .value();
    let addr = match (from.rfind('<'), from.rfind('>')) {
        (Some(a), Some(b)) if a < b => &from[a + 1..b],
        _ => from.as_str(),
    };
    let domain = addr.rsplit_once('@')?.1.trim().trim_end_matches('.');
    (!domain.is_empty()).then(|| domain.to_ascii_lowercase())
}

/// A new key pair for `sealpost dkim keygen`: the private key as PKCS#8 PEM and the DNS TXT
/// record that publishes its public half.
pub fn keygen(domain: &str, selector: &str, ed25519: bool) -> Result<(String, String), DkimError> {
    let bad = |reason: String| DkimError::BadKey {
        path: "(generated)".into(),
        reason,
    };
    let (pkcs8, k, public) = if ed25519 {
        let pkcs8 = Ed25519Key::generate_pkcs8().map_err(|e| bad(e.to_string()))?;
        let key = Ed25519Key::from_pkcs8_der(&pkcs8).map_err(|e| bad(e.to_string()))?;
        (pkcs8, "ed25519", key.public_key())
    } else {
        use rsa::pkcs8::{EncodePrivateKey, EncodePublicKey};
        let key = rsa::RsaPrivateKey::new(&mut super::smime::CompatRng::new(), 2048)
            .map_err(|e| bad(e.to_string()))?;
        let pkcs8 = key
            .to_pkcs8_der()
            .map_err(|e| bad(e.to_string()))?
            .as_bytes()
            .to_vec();
        let spki = key
            .to_public_key()
            .to_public_key_der()
            .map_err(|e| bad(e.to_string()))?
            .as_bytes()
            .to_vec();
        (pkcs8, "rsa", spki)
    };
    let pem = der::pem::encode_string("PRIVATE KEY", der::pem::LineEnding::LF, &pkcs8)
        .map_err(|e| bad(e.to_string()))?;
    use base64::Engine as _;
    let p = base64::engine::general_purpose::STANDARD.encode(public);
    let name = format!("{selector}._domainkey.{}.", domain.trim_end_matches('.'));
    // TXT strings are at most 255 octets: split the value into quoted chunks.
    let value = format!("v=DKIM1; k={k}; p={p}");
    let chunks: Vec<String> = value
        .as_bytes()
        .chunks(250)
        .map(|c| format!("\"{}\"", String::from_utf8_lossy(c)))
        .collect();
    Ok((pem, format!("{name} IN TXT ( {} )", chunks.join(" "))))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(pem: &str, domain: &str) -> DkimSigners {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("k.pem"), pem).unwrap();
        let cfg = DkimKey {
            domain: domain.into(),
            selector: "s1".into(),
            key_file: "k.pem".into(),
            headers: vec![],
        };
        DkimSigners::load(&[cfg], dir.path()).unwrap()
    }

    #[test]
    fn signs_by_from_domain_with_both_key_kinds() {
        for ed in [true, false] {
            let (pem, txt) = keygen("example.net", "s1", ed).unwrap();
            assert!(
                txt.starts_with("s1._domainkey.example.net. IN TXT ( \"v=DKIM1; k="),
                "{txt}"
            );
            let s = load(&pem, "Example.NET");
            let msg = b"From: Alice <alice@example.net>\r\nSubject: hi\r\n\r\nbody\r\n".to_vec();
            let out = s.sign(msg.clone(), "bounces.example.org").unwrap();
            let text = String::from_utf8(out.clone()).unwrap();
            assert!(text.starts_with("DKIM-Signature: v=1; a="), "{text}");
            assert!(
                text.contains(if ed {
                    "a=ed25519-sha256"
                } else {
                    "a=rsa-sha256"
                }),
                "{text}"
            );
            assert!(
                text.contains("d=example.net") && text.contains("s=s1"),
                "{text}"
            );
            assert!(out.ends_with(&msg), "the message itself is untouched");
            // Another From domain: no key, no signature.
            let other = b"From: bob@example.org\r\n\r\nx\r\n".to_vec();
            assert_eq!(s.sign(other.clone(), "example.net").unwrap(), other);
        }
    }

    #[test]
    fn envelope_domain_when_from_is_missing() {
        let (pem, _) = keygen("example.net", "s1", true).unwrap();
        let s = load(&pem, "example.net");
        let out = s
            .sign(b"Subject: x\r\n\r\nx\r\n".to_vec(), "example.net")
            .unwrap();
        assert!(out.starts_with(b"DKIM-Signature:"));
    }

    #[test]
    fn bad_key_files_are_refused_with_the_path() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("k.pem"), "not a key").unwrap();
        let cfg = DkimKey {
            domain: "example.net".into(),
            selector: "s1".into(),
            key_file: "k.pem".into(),
            headers: vec![],
        };
        let e = DkimSigners::load(std::slice::from_ref(&cfg), dir.path())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("k.pem") && e.contains("no PEM private key"),
            "{e}"
        );
        let missing = DkimKey {
            key_file: "nope.pem".into(),
            ..cfg
        };
        assert!(
            DkimSigners::load(&[missing], dir.path())
                .unwrap_err()
                .to_string()
                .contains("nope.pem")
        );
    }
}
