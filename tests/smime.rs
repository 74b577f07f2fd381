//! S/MIME encryption and the certificate store, end to end: every message is decrypted in
//! process (rsa + aes/cbc, no code shared with the encrypting side) and compared byte-exact
//! with the inner entity as the module docs define it.
//!
//! `openssl_interop` (ignored) is driven by `tests/interop/openssl_roundtrip.sh`.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use cbc::cipher::block_padding::Pkcs7;
use cbc::cipher::{BlockDecryptMut, KeyIvInit};
use cms::content_info::{CmsVersion, ContentInfo};
use cms::enveloped_data::{EnvelopedData, RecipientIdentifier, RecipientInfo};
use der::asn1::OctetString;
use der::oid::ObjectIdentifier;
use der::{Decode, Encode};
use rcgen::{CertificateParams, DnType, KeyPair, KeyUsagePurpose, SanType, date_time_ymd};
use rsa::pkcs8::{EncodePrivateKey, LineEnding};
use rsa::sha2::Sha256;
use rsa::{Oaep, Pkcs1v15Encrypt, RsaPrivateKey};
use sealpost::crypto::smime::{
    CertProblem, Certificate, SmimeError, SmimeOptions, SmimeStore, encrypt_smime,
};

const ID_ENVELOPED_DATA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.7.3");
const RSA_ENCRYPTION: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");
const RSAES_OAEP: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.7");
const AES_256_CBC: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.1.42");

/// Case C25's message, as an SMTP client sends it.
const C25: &[u8] = b"MIME-Version: 1.0\r\nFrom: alice@example.net\r\nTo: bob@example.com\r\n\
Subject: Q3 numbers\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nsecret\r\n";

// ---- keys and certificates ----

/// rand 0.9's thread RNG behind the rand_core 0.6 traits rsa 0.9 wants.
struct CompatRng(rand::rngs::ThreadRng);

impl rsa::rand_core::RngCore for CompatRng {
    fn next_u32(&mut self) -> u32 {
        rand::RngCore::next_u32(&mut self.0)
    }
    fn next_u64(&mut self) -> u64 {
        rand::RngCore::next_u64(&mut self.0)
    }
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        rand::RngCore::fill_bytes(&mut self.0, dest);
    }
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rsa::rand_core::Error> {
        rand::RngCore::fill_bytes(&mut self.0, dest);
        Ok(())
    }
}
impl rsa::rand_core::CryptoRng for CompatRng {}

/// Two RSA-2048 keys, generated once per test binary (keygen is slow in debug builds).
fn rsa_key(which: usize) -> &'static RsaPrivateKey {
    static KEYS: [OnceLock<RsaPrivateKey>; 2] = [OnceLock::new(), OnceLock::new()];
    KEYS[which].get_or_init(|| {
        RsaPrivateKey::new(&mut CompatRng(rand::rng()), 2048).expect("RSA key generation")
    })
}

fn key_pem(key: &RsaPrivateKey) -> String {
    key.to_pkcs8_pem(LineEnding::LF)
        .expect("PKCS#8 PEM")
        .to_string()
}

/// Certificate parameters for `email`: CN, SAN rfc822Name, subject emailAddress,
/// KeyUsage keyEncipherment + digitalSignature.
fn params(email: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, "Bob");
    params.distinguished_name.push(
        DnType::CustomDnType(vec![1, 2, 840, 113549, 1, 9, 1]),
        email,
    );
    params
        .subject_alt_names
        .push(SanType::Rfc822Name(email.try_into().expect("IA5 email")));
    params.key_usages = vec![
        KeyUsagePurpose::KeyEncipherment,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = date_time_ymd(2020, 1, 1);
    params.not_after = date_time_ymd(2100, 1, 1);
    params
}

/// A self-signed certificate for `key` (PEM), signed with RSA-SHA256 through rcgen/ring.
fn rsa_cert_pem(key: &RsaPrivateKey, params: CertificateParams) -> String {
    let pair = KeyPair::from_pkcs8_pem_and_sign_algo(&key_pem(key), &rcgen::PKCS_RSA_SHA256)
        .expect("rcgen RSA key pair");
    params.self_signed(&pair).expect("self-sign").pem()
}

fn parse_pem(pem: &str) -> Certificate {
    let (_, der) = der::pem::decode_vec(pem.as_bytes()).expect("PEM");
    Certificate::from_der(&der).expect("certificate DER")
}

fn bob() -> (&'static RsaPrivateKey, Certificate) {
    let key = rsa_key(0);
    (
        key,
        parse_pem(&rsa_cert_pem(key, params("bob@example.com"))),
    )
}

// ---- independent decryption and oracle ----

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The outer header (up to and including the empty line) and the DER inside the base64 body.
fn outer_and_der(smime: &[u8]) -> (&[u8], Vec<u8>) {
    let end = find(smime, b"\r\n\r\n").expect("outer header end") + 4;
    let b64: Vec<u8> = smime[end..]
        .iter()
        .copied()
        .filter(|b| !b"\r\n".contains(b))
        .collect();
    (&smime[..end], STANDARD.decode(b64).expect("base64 body"))
}

fn enveloped(der: &[u8]) -> EnvelopedData {
    let info = ContentInfo::from_der(der).expect("ContentInfo");
    assert_eq!(info.content_type, ID_ENVELOPED_DATA);
    info.content.decode_as().expect("EnvelopedData")
}

/// Decrypts an S/MIME message with `key`, finding its KeyTransRecipientInfo by `cert`'s
/// issuer and serial number.
fn decrypt(smime: &[u8], key: &RsaPrivateKey, cert: &Certificate) -> Vec<u8> {
    let data = enveloped(&outer_and_der(smime).1);
    let ktri = data
        .recip_infos
        .0
        .iter()
        .find_map(|ri| match ri {
            RecipientInfo::Ktri(k) => match &k.rid {
                RecipientIdentifier::IssuerAndSerialNumber(ias)
                    if ias.issuer == cert.tbs_certificate.issuer
                        && ias.serial_number == cert.tbs_certificate.serial_number =>
                {
                    Some(k)
                }
                _ => None,
            },
            _ => None,
        })
        .expect("recipient info for this certificate");
    let wrapped = ktri.enc_key.as_bytes();
    let cek = if ktri.key_enc_alg.oid == RSAES_OAEP {
        key.decrypt(Oaep::new::<Sha256>(), wrapped)
    } else {
        assert_eq!(ktri.key_enc_alg.oid, RSA_ENCRYPTION);
        key.decrypt(Pkcs1v15Encrypt, wrapped)
    }
    .expect("unwrap content key");
    let eci = &data.encrypted_content;
    assert_eq!(eci.content_enc_alg.oid, AES_256_CBC);
    let iv: OctetString = eci
        .content_enc_alg
        .parameters
        .as_ref()
        .expect("IV parameter")
        .decode_as()
        .expect("IV octet string");
    let ciphertext = eci.encrypted_content.as_ref().expect("content").as_bytes();
    cbc::Decryptor::<aes::Aes256>::new_from_slices(&cek, iv.as_bytes())
        .expect("AES-256 key and IV sizes")
        .decrypt_padded_vec_mut::<Pkcs7>(ciphertext)
        .expect("padding")
}

/// The documented split, restated independently: (outer fields, inner entity).
/// Header lines end at LF; the header ends at the first empty line, or at a line that is
/// neither `name:` nor a continuation (that line starts the body).
fn oracle(msg: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let (mut outer, mut inner) = (Vec::new(), Vec::new());
    let mut current_is_content = None;
    let mut pos = 0;
    for line in msg.split_inclusive(|&b| b == b'\n') {
        if line == b"\r\n" {
            inner.extend_from_slice(&msg[pos..]);
            return (outer, inner);
        }
        let is_continuation = line[0] == b' ' || line[0] == b'\t';
        let name = line
            .iter()
            .position(|&b| b == b':')
            .map(|i| line[..i].trim_ascii_end())
            .filter(|n| !n.is_empty() && n.iter().all(|b| (33..=126).contains(b)));
        match (is_continuation, current_is_content, name) {
            (true, Some(_), _) => {}
            (false, _, Some(name)) => {
                current_is_content = Some(name.to_ascii_lowercase().starts_with(b"content-"))
            }
            _ => {
                inner.extend_from_slice(b"\r\n");
                inner.extend_from_slice(&msg[pos..]);
                return (outer, inner);
            }
        }
        let target = if current_is_content == Some(true) {
            &mut inner
        } else {
            &mut outer
        };
        target.extend_from_slice(line);
        if !line.ends_with(b"\n") {
            target.extend_from_slice(b"\r\n");
        }
        pos += line.len();
    }
    inner.extend_from_slice(b"\r\n");
    (outer, inner)
}

/// Every line end (LF, CR or CRLF) made CRLF.
fn to_crlf(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len() + bytes.len() / 20);
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\r' => {
                out.extend_from_slice(b"\r\n");
                if bytes.get(i + 1) == Some(&b'\n') {
                    i += 1;
                }
            }
            b'\n' => out.extend_from_slice(b"\r\n"),
            b => out.push(b),
        }
        i += 1;
    }
    out
}

/// The S/MIME content fields every output carries after the original's fields.
const SMIME_FIELDS: &str = "Content-Type: application/pkcs7-mime; smime-type=enveloped-data; name=\"smime.p7m\"\r\n\
Content-Transfer-Encoding: base64\r\n\
Content-Disposition: attachment; filename=\"smime.p7m\"\r\n\
Content-Description: S/MIME Encrypted Message\r\n\r\n";

/// Checks the transport shape: CRLF only, body base64 lines of at most 76 characters.
fn assert_wire_shape(smime: &[u8]) {
    for (i, &b) in smime.iter().enumerate() {
        if b == b'\n' {
            assert_eq!(smime.get(i.wrapping_sub(1)), Some(&b'\r'), "bare LF at {i}");
        }
        if b == b'\r' {
            assert_eq!(smime.get(i + 1), Some(&b'\n'), "bare CR at {i}");
        }
    }
    let end = find(smime, b"\r\n\r\n").expect("header end") + 4;
    let body = &smime[end..];
    assert!(body.is_ascii());
    assert!(body.ends_with(b"\r\n"));
    for line in body.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        assert!(line.len() <= 77, "base64 line too long");
    }
}

// ---- encryption ----

#[test]
fn c25_round_trip_and_layout() {
    let (key, cert) = bob();
    let out =
        encrypt_smime(C25, std::slice::from_ref(&cert), &SmimeOptions::default()).expect("encrypt");
    assert_wire_shape(&out);
    let (outer, _) = outer_and_der(&out);
    let expected_outer = format!(
        "MIME-Version: 1.0\r\nFrom: alice@example.net\r\nTo: bob@example.com\r\n\
         Subject: Q3 numbers\r\n{SMIME_FIELDS}"
    );
    assert_eq!(String::from_utf8_lossy(outer), expected_outer);
    assert_eq!(
        decrypt(&out, key, &cert),
        b"Content-Type: text/plain; charset=utf-8\r\n\r\nsecret\r\n"
    );
    assert!(!out.windows(6).any(|w| w == b"secret"));
}

#[test]
fn cms_structure() {
    let (_, cert) = bob();
    let out =
        encrypt_smime(C25, std::slice::from_ref(&cert), &SmimeOptions::default()).expect("encrypt");
    let data = enveloped(&outer_and_der(&out).1);
    assert_eq!(data.version, CmsVersion::V0);
    assert!(data.originator_info.is_none() && data.unprotected_attrs.is_none());
    assert_eq!(data.recip_infos.0.len(), 1);
    let Some(RecipientInfo::Ktri(ktri)) = data.recip_infos.0.get(0) else {
        panic!("expected KeyTransRecipientInfo");
    };
    assert_eq!(ktri.version, CmsVersion::V0);
    assert!(matches!(
        ktri.rid,
        RecipientIdentifier::IssuerAndSerialNumber(_)
    ));
    assert_eq!(ktri.key_enc_alg.oid, RSA_ENCRYPTION);
    let params = ktri
        .key_enc_alg
        .parameters
        .as_ref()
        .expect("NULL parameters");
    assert_eq!(params.to_der().expect("DER"), [0x05, 0x00]);
    assert_eq!(ktri.enc_key.as_bytes().len(), 256);
    let alg = &data.encrypted_content.content_enc_alg;
    assert_eq!(alg.oid, AES_256_CBC);
    let iv: OctetString = alg
        .parameters
        .as_ref()
        .expect("IV")
        .decode_as()
        .expect("IV");
    assert_eq!(iv.as_bytes().len(), 16);
}

#[test]
fn two_recipients_each_decrypt() {
    let (bob_key, bob_cert) = bob();
    let carol_key = rsa_key(1);
    let carol_cert = parse_pem(&rsa_cert_pem(carol_key, params("carol@example.org")));
    let recipients = [bob_cert.clone(), carol_cert.clone()];
    let out = encrypt_smime(C25, &recipients, &SmimeOptions::default()).expect("encrypt");
    let inner = oracle(C25).1;
    assert_eq!(decrypt(&out, bob_key, &bob_cert), inner);
    assert_eq!(decrypt(&out, carol_key, &carol_cert), inner);
}

#[test]
fn oaep_round_trip() {
    let (key, cert) = bob();
    let options = SmimeOptions {
        oaep: true,
        ..SmimeOptions::default()
    };
    let out = encrypt_smime(C25, std::slice::from_ref(&cert), &options).expect("encrypt");
    let data = enveloped(&outer_and_der(&out).1);
    let Some(RecipientInfo::Ktri(ktri)) = data.recip_infos.0.get(0) else {
        panic!("expected KeyTransRecipientInfo");
    };
    assert_eq!(ktri.key_enc_alg.oid, RSAES_OAEP);
    assert_eq!(decrypt(&out, key, &cert), oracle(C25).1);
}

#[test]
fn masked_subject_and_added_mime_version() {
    let (key, cert) = bob();
    let msg = b"From: a@example.net\r\nSubject: merger plans\r\nTo: bob@example.com\r\n\r\nhi\r\n";
    let options = SmimeOptions {
        mask_subject: Some("...".to_string()),
        ..SmimeOptions::default()
    };
    let out = encrypt_smime(msg, std::slice::from_ref(&cert), &options).expect("encrypt");
    let (outer, _) = outer_and_der(&out);
    let expected = format!(
        "From: a@example.net\r\nSubject: ...\r\nTo: bob@example.com\r\nMIME-Version: 1.0\r\n{SMIME_FIELDS}"
    );
    assert_eq!(String::from_utf8_lossy(outer), expected);
    // The masked Subject leads the inner entity; there are no Content-* fields after it.
    assert_eq!(
        decrypt(&out, key, &cert),
        b"Subject: merger plans\r\n\r\nhi\r\n"
    );
    let bad = SmimeOptions {
        mask_subject: Some("x\r\nBcc: eve@example.com".to_string()),
        ..SmimeOptions::default()
    };
    assert!(matches!(
        encrypt_smime(msg, std::slice::from_ref(&cert), &bad),
        Err(SmimeError::InvalidMaskSubject)
    ));
}

#[test]
fn refuses_already_encrypted_input() {
    let (_, cert) = bob();
    let recipients = std::slice::from_ref(&cert);
    let once = encrypt_smime(C25, recipients, &SmimeOptions::default()).expect("encrypt");
    let pgp = b"From: a\r\nContent-Type: multipart/encrypted; protocol=\"application/pgp-encrypted\";\r\n boundary=b\r\n\r\n--b--\r\n";
    for input in [&once[..], &pgp[..]] {
        assert!(matches!(
            encrypt_smime(input, recipients, &SmimeOptions::default()),
            Err(SmimeError::AlreadyEncrypted)
        ));
    }
}

#[test]
fn refuses_missing_or_non_rsa_recipients() {
    assert!(matches!(
        encrypt_smime(C25, &[], &SmimeOptions::default()),
        Err(SmimeError::NoRecipients)
    ));
    let ec_key = KeyPair::generate().expect("EC key");
    let ec_cert = parse_pem(
        &params("e@example.com")
            .self_signed(&ec_key)
            .expect("sign")
            .pem(),
    );
    assert!(matches!(
        encrypt_smime(C25, &[ec_cert], &SmimeOptions::default()),
        Err(SmimeError::UnusableCertificate {
            index: 1,
            problem: CertProblem::NotRsa,
            ..
        })
    ));
}

/// Every corpus message, line ends made CRLF, decrypts to its inner entity byte-exact and
/// keeps its other header fields byte-exact on the outer message.
#[test]
fn corpus_round_trip() {
    let dir = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/corpus/eml"));
    if !dir.is_dir() {
        assert_ne!(
            std::env::var("CI").as_deref(),
            Ok("true"),
            "corpus {} missing under CI",
            dir.display()
        );
        eprintln!("SKIP corpus_round_trip: {} not found", dir.display());
        return;
    }
    let (key, cert) = bob();
    let files = eml_files(dir);
    assert!(!files.is_empty(), "no .eml files under {}", dir.display());
    for path in &files {
        let msg = to_crlf(&std::fs::read(path).expect("read corpus file"));
        let out = encrypt_smime(&msg, std::slice::from_ref(&cert), &SmimeOptions::default())
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_wire_shape_header_aside(&out, path);
        let (expected_outer, expected_inner) = oracle(&msg);
        assert_eq!(
            decrypt(&out, key, &cert),
            expected_inner,
            "{}: inner entity",
            path.display()
        );
        let (outer, _) = outer_and_der(&out);
        let outer = outer
            .strip_suffix(SMIME_FIELDS.as_bytes())
            .unwrap_or_else(|| panic!("{}: S/MIME fields", path.display()));
        assert_eq!(
            strip_mime_version(outer),
            strip_mime_version(&expected_outer),
            "{}: outer fields",
            path.display()
        );
        let mime_versions = outer
            .split(|&b| b == b'\n')
            .filter(|l| l.len() >= 13 && l[..13].eq_ignore_ascii_case(b"mime-version:"))
            .count();
        assert_eq!(mime_versions, 1, "{}: one MIME-Version", path.display());
    }
    eprintln!("corpus_round_trip: {} messages", files.len());
}

/// Like [`assert_wire_shape`], tolerating the original's own header bytes.
fn assert_wire_shape_header_aside(smime: &[u8], path: &Path) {
    let end = find(smime, b"\r\n\r\n").expect("header end") + 4;
    let body = &smime[end..];
    assert!(body.is_ascii(), "{}: 8-bit body", path.display());
    assert!(
        body.split(|&b| b == b'\n').all(|l| l.len() <= 77),
        "{}: long base64 line",
        path.display()
    );
    assert_eq!(to_crlf(smime), smime, "{}: not CRLF", path.display());
}

/// Header lines other than MIME-Version (which may be added or deduplicated).
fn strip_mime_version(header: &[u8]) -> Vec<u8> {
    header
        .split_inclusive(|&b| b == b'\n')
        .filter(|l| !(l.len() >= 13 && l[..13].eq_ignore_ascii_case(b"mime-version:")))
        .flatten()
        .copied()
        .collect()
}

fn eml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("read corpus dir") {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "eml") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

// ---- certificate store ----

fn store() -> (tempfile::TempDir, SmimeStore) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SmimeStore::open(dir.path().join("smime")).expect("open store");
    (dir, store)
}

fn stored_files(store: &SmimeStore) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(store.dir())
        .expect("read store")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn store_import_list_find_remove() {
    let (_tmp, store) = store();
    let key = rsa_key(0);
    let pem = rsa_cert_pem(key, params("Bob@Example.com"));
    // A PEM bundle with the private key next to the certificate: the key is ignored.
    let bundle = format!("{}\n{pem}", key_pem(key));
    let imported = store.import(bundle.as_bytes()).expect("import");
    assert_eq!(imported.len(), 1);
    let info = &imported[0];
    assert_eq!(info.emails, vec!["Bob@Example.com".to_string()]);
    assert!(info.subject.contains("CN=Bob"), "{}", info.subject);
    assert_eq!(
        stored_files(&store),
        vec![format!("{}.pem", info.fingerprint_sha256)]
    );
    let stored =
        std::fs::read_to_string(store.dir().join(format!("{}.pem", info.fingerprint_sha256)))
            .expect("stored file");
    assert!(stored.starts_with("-----BEGIN CERTIFICATE-----") && !stored.contains("PRIVATE"));

    // The same certificate as DER: same file, nothing added.
    let (_, der) = der::pem::decode_vec(pem.as_bytes()).expect("PEM");
    assert_eq!(store.import(&der).expect("import DER")[0], *info);
    assert_eq!(store.list().expect("list"), vec![info.clone()]);

    let found = store
        .find("bob@EXAMPLE.com")
        .expect("find")
        .expect("certificate");
    assert_eq!(found, parse_pem(&pem));
    assert!(store.find("alice@example.com").expect("find").is_none());

    // Found by a second handle on the same directory: nothing is cached.
    let other = SmimeStore::open(store.dir()).expect("reopen");
    let carol = rsa_cert_pem(rsa_key(1), params("carol@example.org"));
    other.import(carol.as_bytes()).expect("import carol");
    assert!(store.find("carol@example.org").expect("find").is_some());

    assert_eq!(store.remove("BOB@example.com").expect("remove"), 1);
    assert!(store.find("bob@example.com").expect("find").is_none());
    let carol_fp = store.list().expect("list")[0]
        .fingerprint_sha256
        .to_ascii_uppercase();
    assert_eq!(store.remove(&carol_fp).expect("remove"), 1);
    assert_eq!(store.remove(&carol_fp).expect("remove again"), 0);
    assert!(store.list().expect("list").is_empty());
    assert!(matches!(
        store.remove("../etc/passwd"),
        Err(SmimeError::BadSelector(_))
    ));
}

#[test]
fn store_refuses_unusable_certificates() {
    let (_tmp, store) = store();
    let key = rsa_key(0);
    let mut expired = params("bob@example.com");
    expired.not_after = date_time_ymd(2021, 1, 1);
    let mut future = params("bob@example.com");
    future.not_before = date_time_ymd(2099, 1, 1);
    let mut signing_only = params("bob@example.com");
    signing_only.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let mut server_auth = params("bob@example.com");
    server_auth.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let mut no_email = CertificateParams::default();
    no_email
        .distinguished_name
        .push(DnType::CommonName, "Nobody");
    let ec_key = KeyPair::generate().expect("EC key");
    let ec = params("bob@example.com")
        .self_signed(&ec_key)
        .expect("sign")
        .pem();
    let cases = [
        (rsa_cert_pem(key, expired), CertProblem::Expired),
        (rsa_cert_pem(key, future), CertProblem::NotYetValid),
        (
            rsa_cert_pem(key, signing_only),
            CertProblem::KeyUsageForbidsKeyEncipherment,
        ),
        (
            rsa_cert_pem(key, server_auth),
            CertProblem::ExtendedKeyUsageForbidsEmail,
        ),
        (rsa_cert_pem(key, no_email), CertProblem::NoEmailAddress),
        (ec, CertProblem::NotRsa),
    ];
    let good = rsa_cert_pem(key, params("bob@example.com"));
    for (pem, expected) in cases {
        // All or nothing: the good certificate before the bad one is not stored either.
        let bundle = format!("{good}{pem}");
        match store.import(bundle.as_bytes()) {
            Err(SmimeError::UnusableCertificate {
                index: 2, problem, ..
            }) => {
                assert_eq!(problem, expected);
            }
            other => panic!("{expected:?}: {other:?}"),
        }
        assert!(stored_files(&store).is_empty(), "{expected:?}");
    }
    assert!(matches!(
        store.import(key_pem(key).as_bytes()),
        Err(SmimeError::NoCertificate)
    ));
    assert!(store.import(b"not a certificate").is_err());
}

#[test]
fn store_skips_damaged_files() {
    let (_tmp, store) = store();
    let pem = rsa_cert_pem(rsa_key(0), params("bob@example.com"));
    store.import(pem.as_bytes()).expect("import");
    std::fs::write(
        store.dir().join(format!("{}.pem", "0".repeat(64))),
        "garbage",
    )
    .expect("write");
    std::fs::write(store.dir().join("notes.txt"), "ignored").expect("write");
    assert_eq!(store.list().expect("list").len(), 1);
    assert!(store.find("bob@example.com").expect("find").is_some());
}

// ---- openssl interop (driven by tests/interop/openssl_roundtrip.sh) ----

/// Imports `$SEALPOST_SMIME_CERT` into a fresh store, encrypts every message in `$SEALPOST_IN`
/// (a file or a directory of `.eml` files, line ends made CRLF) to bob@example.com, and writes
/// `NAME.p7m.eml` (the S/MIME message) and `NAME.inner` (the expected decryption) into
/// `$SEALPOST_OUT`. The script decrypts with `openssl cms` and compares.
#[test]
#[ignore = "run by tests/interop/openssl_roundtrip.sh"]
fn openssl_interop() {
    let var = |name: &str| std::env::var(name).unwrap_or_else(|_| panic!("{name} not set"));
    let cert = std::fs::read(var("SEALPOST_SMIME_CERT")).expect("read certificate");
    let input = PathBuf::from(var("SEALPOST_IN"));
    let out_dir = PathBuf::from(var("SEALPOST_OUT"));
    let (_tmp, store) = store();
    let imported = store.import(&cert).expect("import openssl certificate");
    assert!(imported[0].emails.iter().any(|e| e == "bob@example.com"));
    let bob = store
        .find("bob@example.com")
        .expect("find")
        .expect("bob's certificate");
    let inputs = if input.is_dir() {
        eml_files(&input)
    } else {
        vec![input]
    };
    std::fs::create_dir_all(&out_dir).expect("create output dir");
    for path in &inputs {
        let msg = to_crlf(&std::fs::read(path).expect("read message"));
        let stem = path.file_stem().expect("file name").to_string_lossy();
        for (suffix, oaep) in [("", false), (".oaep", true)] {
            let options = SmimeOptions {
                oaep,
                ..SmimeOptions::default()
            };
            let out = encrypt_smime(&msg, std::slice::from_ref(&bob), &options).expect("encrypt");
            std::fs::write(out_dir.join(format!("{stem}{suffix}.p7m.eml")), out).expect("write");
            std::fs::write(
                out_dir.join(format!("{stem}{suffix}.inner")),
                oracle(&msg).1,
            )
            .expect("write");
        }
    }
    eprintln!("openssl_interop: wrote {} messages", inputs.len() * 2);
}
