//! PGP/MIME (RFC 3156 §4) output.

use std::io::Write as _;
use std::time::SystemTime;

use sequoia_openpgp as openpgp;

use openpgp::Cert;
use openpgp::Packet;
use openpgp::armor;
use openpgp::cert::Preferences as _;
use openpgp::crypto::{SessionKey, mpi};
use openpgp::packet::key::{self, Key};
use openpgp::packet::pkesk::PKESK3;
use openpgp::policy::StandardPolicy;
use openpgp::serialize::Serialize as _;
use openpgp::serialize::stream::{Armorer, Encryptor, LiteralWriter, Message, Recipient};
use openpgp::types::{Features, SymmetricAlgorithm};

use super::PgpError;
use super::keyring::check_usable;
use crate::crypto::mime::{
    inner_entity, is_already_encrypted, normalize_crlf, push_line, split_fields, split_header_body,
};
use crate::crypto::rsa_public::RsaPublic;

/// Options for [`encrypt_pgp_mime`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PgpOptions {
    /// Replace every outer `Subject` field with `Subject: <this>` (e.g. `"..."`) when `Some`.
    /// Must be printable ASCII without line breaks. Default: `None` (subject kept as is).
    /// The original Subject is then carried inside the encrypted entity.
    pub mask_subject: Option<String>,
}

/// Encrypts `message` to every certificate in `recipients` as PGP/MIME (RFC 3156).
///
/// Output (CRLF line ends): the original's non-`Content-*` header fields byte-exact and in
/// order (without `MIME-Version` and `DKIM-Signature`; `Subject` masked if asked), then
/// `MIME-Version: 1.0` once and `Content-Type: multipart/encrypted;
/// protocol="application/pgp-encrypted"; boundary=...`, then exactly two parts: the
/// `application/pgp-encrypted` control part with body `Version: 1` (no name, no disposition)
/// and an `application/octet-stream` part `encrypted.asc` holding the ASCII-armored message.
/// The encrypted payload is [`inner_entity`] of the message; with `mask_subject` the original
/// `Subject` field(s) come first in it, so the reader recovers the real Subject.
///
/// Packet format: SEIPDv1 (with MDC) unless every recipient certificate advertises SEIPDv2,
/// so certificates made by GnuPG 2.2 get messages GnuPG 2.2 can read. No compression.
pub fn encrypt_pgp_mime(
    message: &[u8],
    recipients: &[Cert],
    options: &PgpOptions,
) -> Result<Vec<u8>, PgpError> {
    let message = normalize_crlf(message);
    if is_already_encrypted(&message) {
        return Err(PgpError::AlreadyEncrypted);
    }
    if recipients.is_empty() {
        return Err(PgpError::NoRecipients);
    }
    if let Some(subject) = &options.mask_subject
        && (subject.len() > 900 || !subject.bytes().all(|b| (0x20..0x7f).contains(&b)))
    {
        return Err(PgpError::InvalidOption(
            "mask_subject must be printable ASCII without line breaks",
        ));
    }
    let (header, _) = split_header_body(&message);
    let fields = split_fields(header);
    // With a masked Subject the real one travels inside the encrypted part (header
    // protection, RFC 9788 §2): a reader sees it only after decrypting, and never loses it.
    let mut payload = Vec::with_capacity(message.len() + 256);
    if options.mask_subject.is_some() {
        for field in fields.outer.iter().filter(|f| f.is("subject")) {
            push_line(&mut payload, field.raw);
        }
    }
    payload.extend_from_slice(&inner_entity(&message));
    let armored = encrypt_armored(&payload, recipients)?;
    let boundary = format!("sealpost-pgp-{:032x}", rand::random::<u128>());

    let mut out = Vec::with_capacity(header.len() + armored.len() + 1024);
    for field in &fields.outer {
        match &options.mask_subject {
            Some(mask) if field.is("subject") => {
                out.extend_from_slice(b"Subject: ");
                out.extend_from_slice(mask.as_bytes());
                out.extend_from_slice(b"\r\n");
            }
            _ => push_line(&mut out, field.raw),
        }
    }
    let b = boundary.as_bytes();
    out.extend_from_slice(b"MIME-Version: 1.0\r\n");
    out.extend_from_slice(
        b"Content-Type: multipart/encrypted; protocol=\"application/pgp-encrypted\";\r\n",
    );
    out.extend_from_slice(b" boundary=\"");
    out.extend_from_slice(b);
    out.extend_from_slice(b"\"\r\n\r\n");
    out.extend_from_slice(b"This is an OpenPGP/MIME encrypted message (RFC 4880 and 3156)\r\n");
    for part in [
        &b"Content-Type: application/pgp-encrypted\r\n\
Content-Description: PGP/MIME version identification\r\n\r\nVersion: 1\r\n\r\n"[..],
        &b"Content-Type: application/octet-stream; name=\"encrypted.asc\"\r\n\
Content-Description: OpenPGP encrypted message\r\n\
Content-Disposition: inline; filename=\"encrypted.asc\"\r\n\r\n"[..],
    ] {
        out.extend_from_slice(b"--");
        out.extend_from_slice(b);
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(part);
    }
    out.extend_from_slice(&armored);
    out.extend_from_slice(b"\r\n--");
    out.extend_from_slice(b);
    out.extend_from_slice(b"--\r\n");
    Ok(out)
}

/// Encrypts `data` as an ASCII-armored OpenPGP message with CRLF line ends (ending in CRLF).
fn encrypt_armored(data: &[u8], recipients: &[Cert]) -> Result<Vec<u8>, PgpError> {
    let policy = StandardPolicy::new();
    let now = SystemTime::now();
    let mut keys = Vec::new();
    let mut raw_keys = Vec::new();
    let mut seipdv2 = true;
    for cert in recipients {
        let vc = check_usable(cert, &policy, now)?;
        // A certificate without a Features subpacket gets SEIPDv1 (never sequoia's defaults).
        let features = vc.features().unwrap_or_else(Features::empty);
        for ka in vc
            .keys()
            .supported()
            .alive()
            .revoked(false)
            .for_transport_encryption()
            .for_storage_encryption()
        {
            let key = ka.key();
            let handle: openpgp::KeyHandle = if features.supports_seipdv2() {
                key.fingerprint().into()
            } else {
                key.keyid().into()
            };
            seipdv2 &= features.supports_seipdv2();
            raw_keys.push(key);
            keys.push(Recipient::new(features.clone(), handle, key));
        }
    }
    let crypto = |e: anyhow::Error| PgpError::Crypto(e.to_string());
    // sequoia picks SEIPDv2 only if *all* recipients support it; so do we.
    if keys.is_empty() {
        // check_usable refuses such certificates; never write a message no one can open.
        return Err(PgpError::NoRecipients);
    }
    let mut sink = Vec::with_capacity(data.len() * 4 / 3 + 1024);
    {
        let message = Message::new(&mut sink);
        let mut message = Armorer::new(message)
            .kind(armor::Kind::Message)
            .build()
            .map_err(crypto)?;
        let message = if seipdv2 {
            Encryptor::for_recipients(message, keys)
                .symmetric_algo(SymmetricAlgorithm::AES256)
                .build()
                .map_err(crypto)?
        } else {
            // SEIPDv1 with v3 PKESKs written here, so RSA keys take our faster public-key
            // operation (crate::crypto::rsa_public); other keys go through sequoia.
            let algo = SymmetricAlgorithm::AES256;
            let session_key = SessionKey::new(algo.key_size().map_err(crypto)?).map_err(crypto)?;
            for key in raw_keys {
                let pkesk = pkesk3(key, algo, &session_key).map_err(crypto)?;
                Packet::PKESK(pkesk.into())
                    .serialize(&mut message)
                    .map_err(crypto)?;
            }
            Encryptor::with_session_key(message, algo, session_key)
                .map_err(crypto)?
                .build()
                .map_err(crypto)?
        };
        let mut literal = LiteralWriter::new(message).build().map_err(crypto)?;
        literal
            .write_all(data)
            .map_err(|e| PgpError::Crypto(e.to_string()))?;
        literal.finalize().map_err(crypto)?;
    }
    let mut armored = normalize_crlf(&sink).into_owned();
    if !armored.ends_with(b"\r\n") {
        armored.extend_from_slice(b"\r\n");
    }
    Ok(armored)
}

/// A v3 PKESK (RFC 4880 §5.1) carrying `session_key` for `key`: for RSA keys the value
/// `algo || key || checksum` is encrypted with [`RsaPublic`], otherwise sequoia does it all.
fn pkesk3<R: key::KeyRole>(
    key: &Key<key::PublicParts, R>,
    algo: SymmetricAlgorithm,
    session_key: &SessionKey,
) -> openpgp::Result<PKESK3> {
    if let mpi::PublicKey::RSA { e, n } = key.mpis()
        && let Ok(rsa) = RsaPublic::new(n.value(), e.value())
    {
        let checksum = session_key
            .iter()
            .fold(0u16, |sum, &b| sum.wrapping_add(u16::from(b)));
        let mut value = Vec::with_capacity(session_key.len() + 3);
        value.push(u8::from(algo));
        value.extend_from_slice(session_key);
        value.extend_from_slice(&checksum.to_be_bytes());
        let value: SessionKey = value.into(); // zeroed on drop
        if let Ok(c) = rsa.encrypt_pkcs1v15(&value, &mut rand::rng()) {
            let esk = mpi::Ciphertext::RSA {
                c: mpi::MPI::new(&c),
            };
            return PKESK3::new(Some(key.keyid()), key.pk_algo(), esk);
        }
    }
    PKESK3::for_recipient(algo, session_key, key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use openpgp::Packet;
    use openpgp::cert::CertBuilder;
    use openpgp::parse::Parse as _;
    use openpgp::{PacketPile, Profile};

    const C25: &[u8] = b"MIME-Version: 1.0\r\nFrom: alice@example.net\r\nTo: bob@example.com\r\n\
Subject: Q3 numbers\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nsecret\r\n";

    /// A certificate like GnuPG 2.2 makes: v4, features = SEIPDv1 (MDC) only.
    fn gpg22_like(uid: &str) -> Cert {
        let (cert, _) = CertBuilder::general_purpose(Some(uid))
            .set_features(Features::empty().set_seipdv1())
            .and_then(|b| b.generate())
            .unwrap_or_else(|e| panic!("generate: {e}"));
        cert
    }

    fn v2_capable(uid: &str) -> Cert {
        let (cert, _) = CertBuilder::general_purpose(Some(uid))
            .set_profile(Profile::RFC9580)
            .and_then(|b| b.set_features(Features::empty().set_seipdv1().set_seipdv2()))
            .and_then(|b| b.generate())
            .unwrap_or_else(|e| panic!("generate: {e}"));
        cert
    }

    fn encrypt(message: &[u8], certs: &[Cert]) -> String {
        let out = encrypt_pgp_mime(message, certs, &PgpOptions::default())
            .unwrap_or_else(|e| panic!("encrypt: {e}"));
        String::from_utf8(out).unwrap_or_else(|e| panic!("not UTF-8: {e}"))
    }

    fn armored_part(out: &str) -> &str {
        let start = out.find("-----BEGIN PGP MESSAGE-----").unwrap_or(0);
        let end = out
            .find("-----END PGP MESSAGE-----")
            .map_or(out.len(), |i| i + 25);
        &out[start..end]
    }

    /// (PKESK versions, SEIP version) of the encrypted message in `out`.
    fn packet_versions(out: &str) -> (Vec<u8>, u8) {
        let pile = PacketPile::from_bytes(armored_part(out).as_bytes())
            .unwrap_or_else(|e| panic!("parse: {e}"));
        let mut pkesks = Vec::new();
        let mut seip = 0;
        for p in pile.children() {
            match p {
                Packet::PKESK(k) => pkesks.push(k.version()),
                Packet::SEIP(s) => seip = s.version(),
                other => panic!("unexpected packet {other:?}"),
            }
        }
        (pkesks, seip)
    }

    #[test]
    fn c25_structure() {
        let out = encrypt(C25, &[gpg22_like("Bob <bob@example.com>")]);
        let (header, body) = out.split_once("\r\n\r\n").unwrap_or_default();
        assert!(header.starts_with(
            "From: alice@example.net\r\nTo: bob@example.com\r\nSubject: Q3 numbers\r\n\
MIME-Version: 1.0\r\nContent-Type: multipart/encrypted; protocol=\"application/pgp-encrypted\";\r\n boundary=\"sealpost-pgp-"
        ), "{header}");
        assert_eq!(out.matches("MIME-Version").count(), 1);
        assert!(!header.contains("charset=utf-8"));
        let boundary = header
            .rsplit_once("boundary=\"")
            .map(|(_, b)| b.trim_end_matches('"'))
            .unwrap_or_default();
        let delimiter = format!("\r\n--{boundary}");
        let pieces: Vec<&str> = format!("\r\n{body}")
            .leak()
            .split(delimiter.as_str())
            .collect();
        // preamble, part 1, part 2, "--\r\n" epilogue marker
        assert_eq!(pieces.len(), 4, "{body}");
        assert_eq!(pieces[3], "--\r\n");
        assert_eq!(
            pieces[1],
            "\r\nContent-Type: application/pgp-encrypted\r\n\
Content-Description: PGP/MIME version identification\r\n\r\nVersion: 1\r\n"
        );
        assert!(pieces[2].starts_with("\r\nContent-Type: application/octet-stream; name=\"encrypted.asc\"\r\n\
Content-Description: OpenPGP encrypted message\r\nContent-Disposition: inline; filename=\"encrypted.asc\"\r\n\r\n\
-----BEGIN PGP MESSAGE-----\r\n"));
        assert!(pieces[2].ends_with("-----END PGP MESSAGE-----\r\n"));
        for line in out.split("\r\n") {
            assert!(line.len() <= 76, "{line}");
            assert!(
                line.bytes()
                    .all(|b| b.is_ascii() && b != b'\r' && b != b'\n')
            );
        }
        assert!(crate::crypto::mime::is_already_encrypted(out.as_bytes()));
    }

    #[test]
    fn gpg22_key_gets_seipd_v1() {
        let out = encrypt(C25, &[gpg22_like("Bob <bob@example.com>")]);
        assert_eq!(packet_versions(&out), (vec![3], 1));
    }

    #[test]
    fn seipd_v2_only_when_every_recipient_supports_it() {
        let v2 = v2_capable("Carol <carol@example.com>");
        let out = encrypt(C25, std::slice::from_ref(&v2));
        assert_eq!(packet_versions(&out), (vec![6], 2));
        let out = encrypt(C25, &[v2, gpg22_like("Bob <bob@example.com>")]);
        let (pkesks, seip) = packet_versions(&out);
        assert_eq!(seip, 1);
        assert_eq!(pkesks.len(), 2);
    }

    #[test]
    fn refuses_already_encrypted_and_no_recipients() {
        let bob = gpg22_like("Bob <bob@example.com>");
        let once = encrypt(C25, std::slice::from_ref(&bob));
        let again = encrypt_pgp_mime(once.as_bytes(), &[bob], &PgpOptions::default());
        assert!(matches!(again, Err(PgpError::AlreadyEncrypted)));
        assert!(matches!(
            encrypt_pgp_mime(C25, &[], &PgpOptions::default()),
            Err(PgpError::NoRecipients)
        ));
    }

    #[test]
    fn masks_subject_and_drops_dkim_signature() {
        let msg = b"DKIM-Signature: v=1; a=rsa-sha256;\r\n b=abc\r\nSubject: Q3\r\n numbers\r\nFrom: a@example.net\r\n\
Content-Type: text/plain\r\n\r\nx\r\n";
        let bob = gpg22_like("Bob <bob@example.com>");
        let opts = PgpOptions {
            mask_subject: Some("...".into()),
        };
        let out = encrypt_pgp_mime(msg, std::slice::from_ref(&bob), &opts)
            .unwrap_or_else(|e| panic!("encrypt: {e}"));
        let out = String::from_utf8_lossy(&out);
        assert!(
            out.starts_with("Subject: ...\r\nFrom: a@example.net\r\nMIME-Version: 1.0\r\n"),
            "{out}"
        );
        assert!(!out.contains("DKIM") && !out.contains("Q3"));
        let bad = PgpOptions {
            mask_subject: Some("a\r\nBcc: x".into()),
        };
        assert!(matches!(
            encrypt_pgp_mime(msg, &[bob], &bad),
            Err(PgpError::InvalidOption(_))
        ));
    }

    #[test]
    fn lf_input_gives_crlf_output() {
        let lf = String::from_utf8_lossy(C25).replace("\r\n", "\n");
        let out = encrypt(lf.as_bytes(), &[gpg22_like("Bob <bob@example.com>")]);
        assert!(!out.replace("\r\n", "").contains('\n'));
    }
}
