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

/// Signing keys by lowercase domain; a domain may have several (RSA and Ed25519 during a
/// move to Ed25519: each message then carries one signature per key).
#[derive(Default)]
pub struct DkimSigners {
    by_domain: HashMap<String, Vec<Key>>,
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
            by_domain.entry(domain).or_insert_with(Vec::new).push(key);
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
        let Some(keys) = self.by_domain.get(&domain) else {
            return Ok(message);
        };
        // Every signature covers the message without the others (none signs DKIM-Signature).
        let mut headers = String::new();
        for key in keys {
            let header = match key {
                Key::Rsa(s) => s.sign(&message).map(|sig| sig.to_header()),
                Key::Ed25519(s) => s.sign(&message).map(|sig| sig.to_header()),
            }
            .map_err(|e| DkimError::Sign(e.to_string()))?;
            headers.push_str(&header);
        }
        let mut out = Vec::with_capacity(headers.len() + message.len());
        out.extend_from_slice(headers.as_bytes());
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

/// ring writes Ed25519 keys as PKCS#8 v2 (seed and public key), which OpenSSL 3.0 and
/// python-cryptography refuse; RFC 8410's v1 form (the seed only) is what they all read.
fn rfc8410_v1(v2: &[u8]) -> Result<Vec<u8>, String> {
    // v2 from ring: 30 51 02 01 01 30 05 06 03 2b 65 70 04 22 04 20 <seed:32> 81 21 00 <pub:32>
    const V2_PREFIX: [u8; 16] = [
        0x30, 0x51, 0x02, 0x01, 0x01, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04,
        0x20,
    ];
    const V1_PREFIX: [u8; 16] = [
        0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04,
        0x20,
    ];
    match (v2.get(..16), v2.get(16..48)) {
        (Some(p), Some(seed)) if p == V2_PREFIX => Ok([&V1_PREFIX[..], seed].concat()),
        _ => Err("unexpected Ed25519 PKCS#8 layout from ring".into()),
    }
}

/// Whether `s` is a DNS name made of labels (letters, digits, `-`, `_`), as a DKIM domain or
/// selector must be.
pub fn valid_dns_labels(s: &str) -> bool {
    let s = s.trim_end_matches('.');
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
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
        let v2 = Ed25519Key::generate_pkcs8().map_err(|e| bad(e.to_string()))?;
        let key = Ed25519Key::from_pkcs8_der(&v2).map_err(|e| bad(e.to_string()))?;
        (rfc8410_v1(&v2).map_err(bad)?, "ed25519", key.public_key())
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
    fn two_keys_for_one_domain_give_two_signatures() {
        let dir = tempfile::tempdir().unwrap();
        let (rsa, _) = keygen("example.net", "r1", false).unwrap();
        let (ed, _) = keygen("example.net", "e1", true).unwrap();
        std::fs::write(dir.path().join("r.pem"), rsa).unwrap();
        std::fs::write(dir.path().join("e.pem"), ed).unwrap();
        let key = |selector: &str, file: &str| DkimKey {
            domain: "example.net".into(),
            selector: selector.into(),
            key_file: file.into(),
            headers: vec![],
        };
        let s = DkimSigners::load(&[key("r1", "r.pem"), key("e1", "e.pem")], dir.path()).unwrap();
        let out = String::from_utf8(
            s.sign(b"From: a@example.net\r\n\r\nx\r\n".to_vec(), "")
                .unwrap(),
        )
        .unwrap();
        assert_eq!(out.matches("DKIM-Signature:").count(), 2, "{out}");
        assert!(
            out.contains("a=rsa-sha256") && out.contains("a=ed25519-sha256"),
            "{out}"
        );
    }

    #[test]
    fn ed25519_keys_are_rfc8410_v1_and_load_back() {
        let (pem, _) = keygen("example.net", "s1", true).unwrap();
        let der = PrivateKeyDer::from_pem_slice(pem.as_bytes()).unwrap();
        let PrivateKeyDer::Pkcs8(p8) = der else {
            panic!("PKCS#8 expected")
        };
        // 48 bytes: SEQUENCE { version 0, Ed25519 OID, OCTET STRING { seed } } (what OpenSSL reads).
        assert_eq!(p8.secret_pkcs8_der().len(), 48);
        assert_eq!(p8.secret_pkcs8_der()[4], 0, "version 0 (v1)");
        load(&pem, "example.net");
        assert!(valid_dns_labels("s2026.sub-domain_1") && !valid_dns_labels("my sel"));
        assert!(
            !valid_dns_labels("")
                && !valid_dns_labels("-x.example")
                && !valid_dns_labels(&"a".repeat(64))
        );
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
