//! Per-group message copies: the subject tag stripped where a rule says so, then PGP/MIME or
//! S/MIME encryption for groups whose method is end-to-end. Already-encrypted messages pass
//! through unchanged (never encrypted twice).

use crate::crypto::{mime, pgp, smime};
use crate::policy::Rule;
use sequoia_openpgp::Cert;

/// The end-to-end protection of one group.
pub enum Protection {
    /// No content transform (TLS methods).
    None,
    /// PGP/MIME to these certificates.
    Pgp(Vec<Cert>),
    /// S/MIME to these certificates.
    Smime(Vec<smime::Certificate>),
}

/// Why a copy could not be made.
#[derive(Debug, thiserror::Error)]
pub enum TransformError {
    /// OpenPGP encryption failed.
    #[error("OpenPGP encryption failed: {0}")]
    Pgp(#[from] pgp::PgpError),
    /// S/MIME encryption failed.
    #[error("S/MIME encryption failed: {0}")]
    Smime(#[from] smime::SmimeError),
}

/// Makes the copy of `body` a group gets.
pub fn prepare(
    body: &[u8],
    protection: &Protection,
    rule: Option<&Rule>,
) -> Result<Vec<u8>, TransformError> {
    let stripped = match rule {
        Some(r) if r.strip_subject_tag && r.subject_tag.is_some() => rewrite_subject(body, r),
        _ => None,
    };
    let body = stripped.as_deref().unwrap_or(body);
    let mask = rule.and_then(|r| r.mask_subject.clone());
    let copy = match protection {
        Protection::None => body.to_vec(),
        _ if mime::is_already_encrypted(body) => body.to_vec(),
        Protection::Pgp(certs) => {
            pgp::encrypt_pgp_mime(body, certs, &pgp::PgpOptions { mask_subject: mask })?
        }
        Protection::Smime(certs) => smime::encrypt_smime(
            body,
            certs,
            &smime::SmimeOptions {
                mask_subject: mask,
                ..Default::default()
            },
        )?,
    };
    Ok(strip_internal(copy))
}

/// The prefix of header fields that instruct this server (`X-Sealpost-Sensitivity`,
/// `X-Sealpost-Class`): they say things like "this is health data" and must not travel on.
const INTERNAL_PREFIX: &[u8] = b"x-sealpost-";

/// `copy` without top-level `X-Sealpost-*` fields. Inside an encrypted part they stay (only
/// the recipient can read them, and the decrypted entity stays the original byte for byte).
fn strip_internal(copy: Vec<u8>) -> Vec<u8> {
    let (header, _) = mime::split_header_body(&copy);
    // Most copies have none: a scan for "-sealpost-" spares them the field list.
    if !header
        .windows(10)
        .any(|w| w.eq_ignore_ascii_case(b"-sealpost-"))
    {
        return copy;
    }
    let internal = |f: &mime::HeaderField| {
        f.name.len() >= INTERNAL_PREFIX.len()
            && f.name[..INTERNAL_PREFIX.len()].eq_ignore_ascii_case(INTERNAL_PREFIX)
    };
    let fields = mime::header_fields(header);
    if !fields.iter().any(internal) {
        return copy;
    }
    let base = copy.as_ptr() as usize;
    let mut out = Vec::with_capacity(copy.len());
    let mut from = 0;
    for f in fields.iter().filter(|f| internal(f)) {
        let start = f.raw.as_ptr() as usize - base;
        out.extend_from_slice(&copy[from..start]);
        from = start + f.raw.len();
    }
    out.extend_from_slice(&copy[from..]);
    out
}

/// Replaces the first Subject field with the rule's delivered subject, when that changes it.
/// The value is written back unfolded; a non-ASCII subject keeps its encoded form untouched.
fn rewrite_subject(body: &[u8], rule: &Rule) -> Option<Vec<u8>> {
    let (header, _) = mime::split_header_body(body);
    let field = mime::header_fields(header)
        .into_iter()
        .find(|f| f.is("subject"))?;
    let value = field.value();
    let delivered = rule.delivered_subject(&value);
    if delivered == value || !delivered.is_ascii() {
        return None;
    }
    let start = field.raw.as_ptr() as usize - body.as_ptr() as usize;
    let end = start + field.raw.len();
    let mut out = Vec::with_capacity(body.len());
    out.extend_from_slice(&body[..start]);
    out.extend_from_slice(format!("Subject: {delivered}\r\n").as_bytes());
    out.extend_from_slice(&body[end..]);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Policy;

    #[test]
    fn strips_the_subject_tag_only_when_asked() {
        let policy = Policy::parse(
            "[[rule]]\nname = \"tagged\"\nsubject_tag = \"[secure]\"\nstrip_subject_tag = true\n",
            std::path::Path::new("p.toml"),
        )
        .unwrap();
        let rule = &policy.rules[0];
        let body = b"From: a@example.net\r\nSubject: [secure] lab results\r\nTo: b@example.com\r\n\r\nbody\r\n";
        let out = prepare(body, &Protection::None, Some(rule)).unwrap();
        assert_eq!(
            out,
            b"From: a@example.net\r\nSubject: lab results\r\nTo: b@example.com\r\n\r\nbody\r\n"
        );
        let untouched = prepare(body, &Protection::None, None).unwrap();
        assert_eq!(untouched, body);
    }

    #[test]
    fn internal_header_fields_never_leave() {
        let body = b"From: a@example.net\r\nX-Sealpost-Sensitivity: phi\r\nSubject: s\r\nx-sealpost-class: marketing\r\n\tfolded\r\nX-Sealpostal: kept\r\n\r\nX-Sealpost-Sensitivity: body text stays\r\n";
        let out = prepare(body, &Protection::None, None).unwrap();
        assert_eq!(
            out,
            b"From: a@example.net\r\nSubject: s\r\nX-Sealpostal: kept\r\n\r\nX-Sealpost-Sensitivity: body text stays\r\n"
        );
    }
}
