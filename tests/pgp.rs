//! PGP/MIME round trips: encrypt with `sealpost::crypto::pgp`, decrypt in-process with sequoia
//! and compare byte-exact with the inner entity; the shared corpus; the keyring end to end; and
//! an ignored test that `tests/interop/gpg_roundtrip.sh` drives to decrypt with GnuPG.

use std::io::Read as _;
use std::path::{Path, PathBuf};

use sealpost::crypto::mime::{
    header_fields, inner_entity, is_already_encrypted, normalize_crlf, split_fields,
    split_header_body,
};
use sealpost::crypto::pgp::{PgpKeyring, PgpOptions, encrypt_pgp_mime};
use sequoia_openpgp as openpgp;

use openpgp::cert::{CertBuilder, CertParser, CipherSuite};
use openpgp::crypto::SessionKey;
use openpgp::packet::{PKESK, SKESK};
use openpgp::parse::Parse as _;
use openpgp::parse::stream::{
    DecryptionHelper, DecryptorBuilder, MessageStructure, VerificationHelper,
};
use openpgp::policy::StandardPolicy;
use openpgp::serialize::SerializeInto as _;
use openpgp::types::{Features, SymmetricAlgorithm};
use openpgp::{Cert, KeyHandle};

const C25: &[u8] = b"MIME-Version: 1.0\r\nFrom: alice@example.net\r\nTo: bob@example.com\r\n\
Subject: Q3 numbers\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nsecret\r\n";

/// A secret certificate shaped like GnuPG 2.2's defaults (v4, SEIPDv1 only).
fn bob() -> Cert {
    CertBuilder::general_purpose(Some("Bob <bob@example.com>"))
        .set_features(Features::empty().set_seipdv1())
        .and_then(|b| b.generate())
        .map(|(c, _)| c)
        .unwrap_or_else(|e| panic!("generate: {e}"))
}

struct Helper {
    secret: Cert,
}

impl VerificationHelper for Helper {
    fn get_certs(&mut self, _: &[KeyHandle]) -> openpgp::Result<Vec<Cert>> {
        Ok(Vec::new())
    }
    fn check(&mut self, _: MessageStructure) -> openpgp::Result<()> {
        Ok(())
    }
}

impl DecryptionHelper for Helper {
    fn decrypt(
        &mut self,
        pkesks: &[PKESK],
        _: &[SKESK],
        sym_algo: Option<SymmetricAlgorithm>,
        decrypt: &mut dyn FnMut(Option<SymmetricAlgorithm>, &SessionKey) -> bool,
    ) -> openpgp::Result<Option<Cert>> {
        let policy = StandardPolicy::new();
        for ka in self
            .secret
            .keys()
            .with_policy(&policy, None)
            .secret()
            .for_transport_encryption()
            .for_storage_encryption()
        {
            let mut pair = ka.key().clone().into_keypair()?;
            for pkesk in pkesks {
                if let Some((algo, key)) = pkesk.decrypt(&mut pair, sym_algo)
                    && decrypt(algo, &key)
                {
                    return Ok(None);
                }
            }
        }
        Err(anyhow::anyhow!("no key decrypts this message"))
    }
}

/// The armored OpenPGP message inside a PGP/MIME output.
fn armored_part(pgp_mime: &[u8]) -> &[u8] {
    let find = |needle: &[u8]| pgp_mime.windows(needle.len()).position(|w| w == needle);
    let start = find(b"-----BEGIN PGP MESSAGE-----").unwrap_or_else(|| panic!("no armor"));
    let end = find(b"-----END PGP MESSAGE-----").unwrap_or_else(|| panic!("no armor end"));
    &pgp_mime[start..end + 25]
}

/// Decrypts the PGP/MIME output with `secret`; returns the inner entity.
fn decrypt(pgp_mime: &[u8], secret: &Cert) -> Vec<u8> {
    let policy = StandardPolicy::new();
    let helper = Helper {
        secret: secret.clone(),
    };
    let mut decryptor = DecryptorBuilder::from_bytes(armored_part(pgp_mime))
        .and_then(|b| b.with_policy(&policy, None, helper))
        .unwrap_or_else(|e| panic!("decrypt: {e}"));
    let mut out = Vec::new();
    decryptor
        .read_to_end(&mut out)
        .unwrap_or_else(|e| panic!("read: {e}"));
    out
}

fn public(cert: &Cert) -> Cert {
    cert.clone().strip_secret_key_material()
}

#[test]
fn c25_round_trip_is_byte_exact() {
    let bob = bob();
    let out = encrypt_pgp_mime(C25, &[public(&bob)], &PgpOptions::default())
        .unwrap_or_else(|e| panic!("encrypt: {e}"));
    let inner = decrypt(&out, &bob);
    assert_eq!(
        String::from_utf8_lossy(&inner),
        "Content-Type: text/plain; charset=utf-8\r\n\r\nsecret\r\n"
    );
    assert!(is_already_encrypted(&out));
}

/// GnuPG 2.2's default key type is RSA (3072 bits); our own RSA public-key operation wraps the
/// session key for those (src/crypto/rsa_public.rs), so sequoia's RSA decryption must open it,
/// alone and beside a Curve25519 recipient in one message.
#[test]
fn rsa_recipients_round_trip_alone_and_mixed_with_curve25519() {
    let rsa = |uid: &str| {
        CertBuilder::general_purpose(Some(uid))
            .set_cipher_suite(CipherSuite::RSA2k)
            .set_features(Features::empty().set_seipdv1())
            .and_then(|b| b.generate())
            .map(|(c, _)| c)
            .unwrap_or_else(|e| panic!("generate: {e}"))
    };
    let carol = rsa("Carol <carol@example.com>");
    let bob = bob();
    for _ in 0..3 {
        let out = encrypt_pgp_mime(C25, &[public(&carol)], &PgpOptions::default())
            .unwrap_or_else(|e| panic!("encrypt: {e}"));
        assert_eq!(decrypt(&out, &carol), inner_entity(C25));
    }
    let out = encrypt_pgp_mime(C25, &[public(&bob), public(&carol)], &PgpOptions::default())
        .unwrap_or_else(|e| panic!("encrypt: {e}"));
    assert_eq!(decrypt(&out, &carol), inner_entity(C25));
    assert_eq!(decrypt(&out, &bob), inner_entity(C25));
}

#[test]
fn message_without_content_fields_gets_the_implied_type() {
    let bob = bob();
    let msg = b"From: a@example.net\nTo: bob@example.com\nSubject: plain\n\nline 1\nline 2\n";
    let out = encrypt_pgp_mime(msg, &[public(&bob)], &PgpOptions::default())
        .unwrap_or_else(|e| panic!("encrypt: {e}"));
    assert_eq!(
        decrypt(&out, &bob),
        b"Content-Type: text/plain; charset=us-ascii\r\n\r\nline 1\r\nline 2\r\n"
    );
}

#[test]
fn keyring_import_find_encrypt_decrypt() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let ring = PgpKeyring::open(dir.path()).unwrap_or_else(|e| panic!("{e}"));
    let bob = bob();
    let armored = public(&bob).armored().to_vec().unwrap_or_default();
    let imported = ring.import(&armored).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(imported.len(), 1);
    // A second handle on the same directory (another process in real life) sees it.
    let reader = PgpKeyring::open(dir.path()).unwrap_or_else(|e| panic!("{e}"));
    let cert = reader
        .find("bob@EXAMPLE.com")
        .unwrap_or_else(|e| panic!("{e}"))
        .unwrap_or_else(|| panic!("not found"));
    let out =
        encrypt_pgp_mime(C25, &[cert], &PgpOptions::default()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(decrypt(&out, &bob), inner_entity(C25));
}

fn corpus_files() -> Option<Vec<PathBuf>> {
    let root = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/corpus/eml"));
    if !root.is_dir() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "corpus missing at {}",
            root.display()
        );
        eprintln!("SKIP: corpus missing at {}", root.display());
        return None;
    }
    let mut files = Vec::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{e}")) {
            let path = entry.unwrap_or_else(|e| panic!("{e}")).path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "eml") {
                files.push(path);
            }
        }
    }
    files.sort();
    Some(files)
}

#[test]
fn corpus_encrypts_and_decrypts_byte_identical() {
    let Some(files) = corpus_files() else { return };
    let bob = bob();
    let recipients = [public(&bob)];
    let (mut done, mut skipped) = (0, 0);
    for path in &files {
        let raw = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let message = normalize_crlf(&raw).into_owned();
        if is_already_encrypted(&message) {
            eprintln!("skip (already encrypted): {}", path.display());
            skipped += 1;
            continue;
        }
        let out = encrypt_pgp_mime(&message, &recipients, &PgpOptions::default())
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let inner = decrypt(&out, &bob);
        let (header, body) = split_header_body(&message);
        assert_eq!(inner, inner_entity(&message), "{}", path.display());
        assert!(inner.ends_with(body), "{}: body changed", path.display());
        // Every original field is in the outer header or the inner entity, byte-exact.
        let split = split_fields(header);
        let (out_header, _) = split_header_body(&out);
        let (inner_header, _) = split_header_body(&inner);
        for field in split.outer {
            assert!(
                contains(out_header, field.raw),
                "{}: outer field lost",
                path.display()
            );
        }
        for field in split.content {
            assert!(contains(inner_header, field.raw), "{}", path.display());
        }
        assert_eq!(
            header_fields(out_header)
                .iter()
                .filter(|f| f.is("mime-version"))
                .count(),
            1
        );
        assert!(is_already_encrypted(&out), "{}", path.display());
        done += 1;
    }
    eprintln!("corpus: {done} round trips, {skipped} skipped as already encrypted");
    assert!(done > 0);
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    let needle = needle.strip_suffix(b"\r\n").unwrap_or(needle);
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
}

/// Driven by `tests/interop/gpg_roundtrip.sh`: imports the public key in
/// `SEALPOST_GPG_PUBKEY` (exported by GnuPG) into a keyring, encrypts C25 and every message
/// listed in `SEALPOST_MESSAGES` (colon-separated paths, optional) to `bob@example.com`, and
/// writes `N.eml` (PGP/MIME output) and `N.expected` (the inner entity) into `SEALPOST_OUT`.
#[test]
#[ignore = "run by tests/interop/gpg_roundtrip.sh"]
fn gpg_interop_encrypt() {
    let (Ok(pubkey), Ok(out_dir)) = (
        std::env::var("SEALPOST_GPG_PUBKEY"),
        std::env::var("SEALPOST_OUT"),
    ) else {
        panic!("set SEALPOST_GPG_PUBKEY and SEALPOST_OUT");
    };
    let key = std::fs::read(&pubkey).unwrap_or_else(|e| panic!("{pubkey}: {e}"));
    let keyring_dir = Path::new(&out_dir).join("keyring");
    let ring = PgpKeyring::open(&keyring_dir).unwrap_or_else(|e| panic!("{e}"));
    ring.import(&key).unwrap_or_else(|e| panic!("import: {e}"));
    let cert = ring
        .find("bob@example.com")
        .unwrap_or_else(|e| panic!("{e}"))
        .unwrap_or_else(|| panic!("bob@example.com not in keyring"));
    // GnuPG 2.2 keys do not advertise SEIPDv2, so the output must be SEIPDv1 + MDC.
    let policy = StandardPolicy::new();
    let seipdv2 = CertParser::from_bytes(&key)
        .map(|p| {
            p.filter_map(Result::ok).any(|c| {
                c.with_policy(&policy, None)
                    .ok()
                    .and_then(|vc| openpgp::cert::Preferences::features(&vc))
                    .is_some_and(|f| f.supports_seipdv2())
            })
        })
        .unwrap_or(false);
    eprintln!("key advertises SEIPDv2: {seipdv2}");

    let mut messages: Vec<(String, Vec<u8>)> = vec![("c25".into(), C25.to_vec())];
    if let Ok(list) = std::env::var("SEALPOST_MESSAGES") {
        for (i, path) in list.split(':').filter(|p| !p.is_empty()).enumerate() {
            let raw = std::fs::read(path).unwrap_or_else(|e| panic!("{path}: {e}"));
            messages.push((format!("msg{i:02}"), normalize_crlf(&raw).into_owned()));
        }
    }
    for (name, message) in messages {
        if is_already_encrypted(&message) {
            continue;
        }
        let out = encrypt_pgp_mime(
            &message,
            std::slice::from_ref(&cert),
            &PgpOptions::default(),
        )
        .unwrap_or_else(|e| panic!("{name}: {e}"));
        let dir = Path::new(&out_dir);
        std::fs::write(dir.join(format!("{name}.eml")), &out).unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(dir.join(format!("{name}.expected")), inner_entity(&message))
            .unwrap_or_else(|e| panic!("{e}"));
    }
}
