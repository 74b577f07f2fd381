//! Policy-driven encryption through the whole server: a policy file, key stores and an extra
//! CA written to a temp dir, the server in-process with the test DNS, SMTP sinks and a manual
//! clock. Every encrypted copy that reaches a sink is decrypted here, in process (sequoia for
//! OpenPGP; rsa + aes/cbc for S/MIME, no code shared with the encrypting side) and compared
//! byte-exact with `sealpost::crypto::mime::inner_entity` of what was sent.

mod common;

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use base64::Engine as _;
use cbc::cipher::block_padding::Pkcs7;
use cbc::cipher::{BlockDecryptMut, KeyIvInit};
use cms::content_info::ContentInfo;
use cms::enveloped_data::{EnvelopedData, RecipientIdentifier, RecipientInfo};
use common::dns::{TestDns, ZoneBuilder};
use common::harness::{self, Client, T0, advance, eventually, queue_id, send_message};
use common::lo;
use common::pki::{self, TestCa};
use common::sink::{Received, Sink, SinkConfig, bind_same_port};
use der::Decode;
use der::asn1::OctetString;
use der::oid::ObjectIdentifier;
use rcgen::{CertificateParams, DnType, KeyPair, KeyUsagePurpose, SanType, date_time_ymd};
use rsa::pkcs8::{DecodePrivateKey, EncodePrivateKey, LineEnding};
use rsa::sha2::Sha256;
use rsa::{Oaep, Pkcs1v15Encrypt, RsaPrivateKey};
use sealpost::crypto::keys::KeyStores;
use sealpost::crypto::mime::{inner_entity, is_already_encrypted};
use sealpost::crypto::smime::Certificate;
use sealpost::queue::ManualClock;
use sealpost::server::Running;
use sealpost::spool::{Envelope, RcptStatus};
use sequoia_openpgp as openpgp;

use openpgp::cert::CertBuilder;
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

const WAIT: Duration = Duration::from_secs(15);

/// Case C25's message, as an SMTP client sends it.
const C25: &[u8] = b"MIME-Version: 1.0\r\nFrom: alice@example.net\r\nTo: bob@example.com\r\n\
Subject: Q3 numbers\r\nMessage-ID: <c25@example.net>\r\n\
Content-Type: text/plain; charset=utf-8\r\n\r\nsecret Q3 numbers\r\n";

/// The marker every test body carries: it must never reach a sink in the clear when the
/// policy says the recipient needs protection.
const MARKER: &[u8] = b"secret Q3 numbers";

/// Every recipient at example.com needs end-to-end encryption (C25's policy).
const E2E_BOUNCE: &str = r#"
[[rule]]
name = "e2e"
recipient_domains = ["example.com"]
require = "encrypted"
methods = ["pgp", "smime"]
on_unavailable = "bounce"
"#;

// ---- the world: DNS, sinks, server -------------------------------------------------------

/// example.com -> mx.example.com (127.0.0.3, the recipients' MX), example.net -> 127.0.0.2
/// (the sender's MX, where DSNs go). Other domains (example.org) are not served: REFUSED, a
/// temporary failure, which keeps a recipient deferred and its envelope in the spool.
async fn dns() -> TestDns {
    TestDns::start_zones(&[
        &ZoneBuilder::new("example.com.")
            .mx("@", 10, "mx.example.com.")
            .addr("mx", lo(3))
            .build(),
        &ZoneBuilder::new("example.net.")
            .mx("@", 10, "mx.example.net.")
            .addr("mx", lo(2))
            .build(),
    ])
    .await
}

struct World {
    _dns: TestDns,
    dir: tempfile::TempDir,
    port: u16,
    mx: Sink,
    sender_mx: Sink,
    clock: Arc<ManualClock>,
    running: Running,
    keys: KeyStores,
    /// The config text, to restart the server on the same spool.
    text: String,
}

/// Options for [`World::start`].
struct Setup<'a> {
    policy: &'a str,
    mx: SinkConfig,
    /// PEM written to `ca.pem` and passed as `[outbound] extra_ca_file`.
    extra_ca: Option<&'a str>,
}

impl World {
    async fn start(setup: Setup<'_>) -> World {
        common::init_tracing();
        let dns = dns().await;
        let (port, mut ls) = bind_same_port(&[lo(2), lo(3)]).await;
        let mx = Sink::from_listener(ls.remove(1), setup.mx);
        let sender_mx = Sink::from_listener(ls.remove(0), SinkConfig::accept());
        let dir = tempfile::tempdir().unwrap();
        let policy = dir.path().join("policy.toml");
        std::fs::write(&policy, setup.policy).unwrap();
        let keys_dir = dir.path().join("keys");
        let keys = KeyStores::open(&keys_dir).unwrap();
        let mut extra = String::new();
        if let Some(pem) = setup.extra_ca {
            let ca = dir.path().join("ca.pem");
            std::fs::write(&ca, pem).unwrap();
            extra.push_str(&format!("extra_ca_file = \"{}\"\n", ca.display()));
        }
        extra.push_str(&format!(
            "[policy]\nfile = \"{}\"\nwkd = false\n[keys]\ndir = \"{}\"\n",
            policy.display(),
            keys_dir.display()
        ));
        let spool = dir.path().join("spool");
        let text = harness::config_text(&spool, dns.addr(), port, true, &extra);
        let clock = Arc::new(ManualClock::new(T0));
        let running = harness::start(&text, clock.clone()).await;
        World {
            _dns: dns,
            dir,
            port,
            mx,
            sender_mx,
            clock,
            running,
            keys,
            text,
        }
    }

    async fn send(&self, rcpts: &[&str], body: &[u8]) -> String {
        queue_id(&send_message(self.running.smtp_addrs[0], "alice@example.net", rcpts, body).await)
    }

    fn envelope(&self, id: &str) -> Option<Envelope> {
        self.running.queue.spool().envelope(id).unwrap()
    }

    /// Waits until `pred` holds for the envelope `id` (which must stay in the spool).
    async fn wait_envelope(&self, what: &str, id: &str, pred: impl Fn(&Envelope) -> bool) {
        let q = self.running.queue.clone();
        eventually(what, WAIT, || {
            q.spool().envelope(id).unwrap().is_some_and(|e| pred(&e))
        })
        .await;
    }

    async fn queue_empties(&self) {
        let q = self.running.queue.clone();
        eventually("queue empties", WAIT, || {
            q.spool().list().unwrap().is_empty()
        })
        .await;
    }

    fn import(&self, bytes: &[u8]) {
        let got = self.keys.import(bytes).unwrap();
        assert_eq!(got.len(), 1, "{got:?}");
    }
}

fn status_of<'a>(env: &'a Envelope, rcpt: &str) -> &'a sealpost::spool::RecipientRecord {
    env.recipients
        .iter()
        .find(|r| r.address == rcpt)
        .unwrap_or_else(|| panic!("no recipient {rcpt} in {env:?}"))
}

fn is_delivered(env: &Envelope, rcpt: &str) -> bool {
    matches!(status_of(env, rcpt).status, RcptStatus::Delivered { .. })
}

fn deferred_with(env: &Envelope, rcpt: &str, prefix: &str) -> bool {
    matches!(&status_of(env, rcpt).status, RcptStatus::Deferred { reply } if reply.starts_with(prefix))
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The top-level header of a message (up to the blank line), as text.
fn header_of(data: &[u8]) -> String {
    let end = find(data, b"\r\n\r\n").expect("header end") + 2;
    String::from_utf8_lossy(&data[..end]).to_string()
}

/// CRLF only, and 7-bit after the outer header. The outer header is the original's
/// non-`Content-*` fields copied byte-exact, so raw 8-bit in a legacy message's To or Subject
/// stays there (as in tests/smime.rs's corpus check).
fn assert_7bit_crlf(data: &[u8]) {
    let body_start = find(data, b"\r\n\r\n").map_or(0, |i| i + 4);
    for (i, &b) in data.iter().enumerate() {
        assert!(i < body_start || b < 0x80, "8-bit byte at {i}");
        if b == b'\n' {
            assert_eq!(data.get(i.wrapping_sub(1)), Some(&b'\r'), "bare LF at {i}");
        }
        if b == b'\r' {
            assert_eq!(data.get(i + 1), Some(&b'\n'), "bare CR at {i}");
        }
    }
}

// ---- OpenPGP: keys and in-process decryption ---------------------------------------------

/// A secret certificate shaped like GnuPG 2.2's defaults (v4, SEIPDv1 only).
fn pgp_secret(email: &str) -> Cert {
    CertBuilder::general_purpose(Some(format!("Test <{email}>")))
        .set_features(Features::empty().set_seipdv1())
        .and_then(|b| b.generate())
        .map(|(c, _)| c)
        .unwrap_or_else(|e| panic!("generate: {e}"))
}

fn pgp_public_armored(secret: &Cert) -> Vec<u8> {
    secret
        .clone()
        .strip_secret_key_material()
        .armored()
        .to_vec()
        .unwrap()
}

struct Helper {
    secret: Cert,
    pkesks: usize,
}

impl VerificationHelper for &mut Helper {
    fn get_certs(&mut self, _: &[KeyHandle]) -> openpgp::Result<Vec<Cert>> {
        Ok(Vec::new())
    }
    fn check(&mut self, _: MessageStructure) -> openpgp::Result<()> {
        Ok(())
    }
}

impl DecryptionHelper for &mut Helper {
    fn decrypt(
        &mut self,
        pkesks: &[PKESK],
        _: &[SKESK],
        sym_algo: Option<SymmetricAlgorithm>,
        decrypt: &mut dyn FnMut(Option<SymmetricAlgorithm>, &SessionKey) -> bool,
    ) -> openpgp::Result<Option<Cert>> {
        self.pkesks = pkesks.len();
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

/// Checks the PGP/MIME layout (C25) and decrypts with `secret`: (inner entity, number of
/// PKESK packets, i.e. recipients the session key was encrypted to).
fn pgp_decrypt(data: &[u8], secret: &Cert) -> (Vec<u8>, usize) {
    assert_7bit_crlf(data);
    let header = header_of(data);
    assert!(
        header.contains(
            "MIME-Version: 1.0\r\nContent-Type: multipart/encrypted; protocol=\"application/pgp-encrypted\";"
        ),
        "{header}"
    );
    assert!(
        contains(
            data,
            b"Content-Type: application/pgp-encrypted\r\nContent-Description: PGP/MIME version identification\r\n\r\nVersion: 1\r\n"
        ),
        "control part"
    );
    let start = find(data, b"-----BEGIN PGP MESSAGE-----").expect("armor");
    let end = find(data, b"-----END PGP MESSAGE-----").expect("armor end") + 25;
    let policy = StandardPolicy::new();
    let mut helper = Helper {
        secret: secret.clone(),
        pkesks: 0,
    };
    let mut out = Vec::new();
    {
        let mut decryptor = DecryptorBuilder::from_bytes(&data[start..end])
            .and_then(|b| b.with_policy(&policy, None, &mut helper))
            .unwrap_or_else(|e| panic!("decrypt: {e}"));
        decryptor
            .read_to_end(&mut out)
            .unwrap_or_else(|e| panic!("read: {e}"));
    }
    (out, helper.pkesks)
}

// ---- S/MIME: keys and in-process decryption ----------------------------------------------

const ID_ENVELOPED_DATA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.7.3");
const RSA_ENCRYPTION: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");
const RSAES_OAEP: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.7");
const AES_256_CBC: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.1.42");

/// A fixed RSA-2048 test key (made once with `openssl genpkey`): key generation takes many
/// seconds in debug builds, and every certificate in this file may share one key.
fn rsa_key() -> &'static RsaPrivateKey {
    static KEY: OnceLock<RsaPrivateKey> = OnceLock::new();
    KEY.get_or_init(|| {
        RsaPrivateKey::from_pkcs8_pem(include_str!("common/rsa2048-test-key.pem"))
            .expect("test RSA key")
    })
}

/// A self-signed S/MIME certificate for `email` on the shared RSA key: (PEM, parsed). Each
/// call has a fresh serial number, so certificates for different addresses are told apart.
fn smime_cert(email: &str) -> (String, Certificate) {
    let key = rsa_key();
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, email);
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
    let pem = key.to_pkcs8_pem(LineEnding::LF).unwrap();
    let pair = KeyPair::from_pkcs8_pem_and_sign_algo(&pem, &rcgen::PKCS_RSA_SHA256).unwrap();
    let pem = params.self_signed(&pair).unwrap().pem();
    let (_, der) = der::pem::decode_vec(pem.as_bytes()).unwrap();
    (pem, Certificate::from_der(&der).unwrap())
}

/// Checks the S/MIME layout and decrypts with the shared key, finding the recipient info
/// by `cert`'s issuer and serial: (inner entity, number of recipient infos).
fn smime_decrypt(data: &[u8], cert: &Certificate) -> (Vec<u8>, usize) {
    assert_7bit_crlf(data);
    let header = header_of(data);
    assert!(
        header.contains("Content-Type: application/pkcs7-mime; smime-type=enveloped-data"),
        "{header}"
    );
    let end = find(data, b"\r\n\r\n").unwrap() + 4;
    let b64: Vec<u8> = data[end..]
        .iter()
        .copied()
        .filter(|b| !b"\r\n".contains(b))
        .collect();
    let der = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .expect("base64 body");
    let info = ContentInfo::from_der(&der).expect("ContentInfo");
    assert_eq!(info.content_type, ID_ENVELOPED_DATA);
    let env: EnvelopedData = info.content.decode_as().expect("EnvelopedData");
    let n = env.recip_infos.0.len();
    let ktri = env
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
        rsa_key().decrypt(Oaep::new::<Sha256>(), wrapped)
    } else {
        assert_eq!(ktri.key_enc_alg.oid, RSA_ENCRYPTION);
        rsa_key().decrypt(Pkcs1v15Encrypt, wrapped)
    }
    .expect("unwrap content key");
    let eci = &env.encrypted_content;
    assert_eq!(eci.content_enc_alg.oid, AES_256_CBC);
    let iv: OctetString = eci
        .content_enc_alg
        .parameters
        .as_ref()
        .expect("IV")
        .decode_as()
        .expect("IV octet string");
    let ct = eci.encrypted_content.as_ref().expect("content").as_bytes();
    let plain = cbc::Decryptor::<aes::Aes256>::new_from_slices(&cek, iv.as_bytes())
        .expect("AES-256 key and IV")
        .decrypt_padded_vec_mut::<Pkcs7>(ct)
        .expect("padding");
    (plain, n)
}

/// The one message the sink got for `rcpt`.
fn only_for<'a>(got: &'a [Received], rcpt: &str) -> &'a Received {
    let mut it = got.iter().filter(|m| m.rcpts.iter().any(|r| r == rcpt));
    let m = it
        .next()
        .unwrap_or_else(|| panic!("nothing for {rcpt}: {got:?}"));
    assert!(it.next().is_none(), "two copies for {rcpt}");
    m
}

// ---- end-to-end encryption -----------------------------------------------------------------

#[tokio::test]
async fn pgp_recipient_gets_pgp_mime_that_decrypts_byte_exact() {
    let w = World::start(Setup {
        policy: E2E_BOUNCE,
        mx: SinkConfig::accept(),
        extra_ca: None,
    })
    .await;
    let bob = pgp_secret("bob@example.com");
    w.import(&pgp_public_armored(&bob));
    // held@example.org: its domain does not resolve (REFUSED), so it stays deferred and the
    // envelope, with bob's record, stays in the spool.
    let id = w.send(&["bob@example.com", "held@example.org"], C25).await;
    let got = w.mx.wait_for(1, WAIT).await;
    assert_eq!(got[0].rcpts, vec!["bob@example.com"]);
    assert!(
        !contains(&got[0].data, MARKER),
        "plaintext reached the sink"
    );
    let header = header_of(&got[0].data);
    assert!(header.starts_with("Received: "), "{header}");
    assert!(header.contains("\r\nSubject: Q3 numbers\r\n"), "{header}");
    assert!(
        header.contains("\r\nMessage-ID: <c25@example.net>\r\n"),
        "{header}"
    );
    let (inner, pkesks) = pgp_decrypt(&got[0].data, &bob);
    assert_eq!(inner, inner_entity(C25));
    assert_eq!(
        String::from_utf8_lossy(&inner),
        "Content-Type: text/plain; charset=utf-8\r\n\r\nsecret Q3 numbers\r\n"
    );
    assert_eq!(pkesks, 1);
    w.wait_envelope("bob delivered, held deferred", &id, |e| {
        is_delivered(e, "bob@example.com") && deferred_with(e, "held@example.org", "4")
    })
    .await;
    let env = w.envelope(&id).unwrap();
    let bob_rec = status_of(&env, "bob@example.com");
    assert_eq!(bob_rec.method.as_deref(), Some("openpgp"), "{bob_rec:?}");
    let held = status_of(&env, "held@example.org");
    assert_ne!(held.method.as_deref(), Some("openpgp"), "{held:?}");
    assert!(w.sender_mx.messages().is_empty(), "no DSN expected");
    w.running.shutdown().await;
}

#[tokio::test]
async fn smime_recipient_gets_enveloped_data_that_decrypts_byte_exact() {
    let w = World::start(Setup {
        policy: E2E_BOUNCE,
        mx: SinkConfig::accept(),
        extra_ca: None,
    })
    .await;
    let (pem, cert) = smime_cert("bob@example.com");
    w.import(pem.as_bytes());
    let id = w.send(&["bob@example.com", "held@example.org"], C25).await;
    let got = w.mx.wait_for(1, WAIT).await;
    assert_eq!(got[0].rcpts, vec!["bob@example.com"]);
    assert!(
        !contains(&got[0].data, MARKER),
        "plaintext reached the sink"
    );
    let (inner, n) = smime_decrypt(&got[0].data, &cert);
    assert_eq!(inner, inner_entity(C25));
    assert_eq!(n, 1);
    w.wait_envelope("bob delivered, held deferred", &id, |e| {
        is_delivered(e, "bob@example.com") && deferred_with(e, "held@example.org", "4")
    })
    .await;
    let env = w.envelope(&id).unwrap();
    let rec = status_of(&env, "bob@example.com");
    assert_eq!(rec.method.as_deref(), Some("smime"), "{rec:?}");
    w.running.shutdown().await;
}

/// bob has an OpenPGP key, carol an S/MIME certificate, dave nothing.
async fn mixed_world(policy: &str) -> (World, Cert, Certificate) {
    let w = World::start(Setup {
        policy,
        mx: SinkConfig::accept(),
        extra_ca: None,
    })
    .await;
    let bob = pgp_secret("bob@example.com");
    w.import(&pgp_public_armored(&bob));
    let (pem, carol) = smime_cert("carol@example.com");
    w.import(pem.as_bytes());
    (w, bob, carol)
}

const MIXED: [&str; 3] = ["bob@example.com", "carol@example.com", "dave@example.com"];

fn assert_mixed_copies(got: &[Received], bob: &Cert, carol: &Certificate) {
    assert_eq!(got.len(), 2, "one copy per method: {got:?}");
    for m in got {
        assert_eq!(
            m.rcpts.len(),
            1,
            "each copy for one recipient: {:?}",
            m.rcpts
        );
        assert!(!contains(&m.data, MARKER), "plaintext reached the sink");
        assert!(!m.rcpts.contains(&"dave@example.com".to_string()));
    }
    let (inner, pkesks) = pgp_decrypt(&only_for(got, "bob@example.com").data, bob);
    assert_eq!(inner, inner_entity(C25));
    assert_eq!(pkesks, 1, "bob's copy is encrypted to bob only");
    let (inner, n) = smime_decrypt(&only_for(got, "carol@example.com").data, carol);
    assert_eq!(inner, inner_entity(C25));
    assert_eq!(n, 1, "carol's copy is encrypted to carol only");
}

#[tokio::test]
async fn mixed_recipients_get_one_copy_each_and_the_keyless_one_bounces() {
    let (w, bob, carol) = mixed_world(E2E_BOUNCE).await;
    w.send(&MIXED, C25).await;
    let got = w.mx.wait_for(2, WAIT).await;
    let dsn = w.sender_mx.wait_for(1, WAIT).await;
    w.queue_empties().await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let got_now = w.mx.messages();
    assert_eq!(got_now.len(), 2, "{got:?}");
    assert_mixed_copies(&got_now, &bob, &carol);
    assert_eq!(dsn.len(), 1);
    assert_eq!(dsn[0].mail_from, "");
    assert_eq!(dsn[0].rcpts, vec!["alice@example.net"]);
    let text = String::from_utf8_lossy(&dsn[0].data).to_string();
    assert!(
        text.contains(
            "Final-Recipient: rfc822; dave@example.com\r\nAction: failed\r\nStatus: 5.7.1\r\n"
        ),
        "{text}"
    );
    assert!(!text.contains("bob@example.com\r\nAction"), "{text}");
    assert!(!text.contains("carol@example.com\r\nAction"), "{text}");
    w.running.shutdown().await;
}

#[tokio::test]
async fn keyless_recipient_under_defer_stays_queued_and_never_gets_plaintext() {
    let policy = E2E_BOUNCE.replace("\"bounce\"", "\"defer\"");
    let (w, bob, carol) = mixed_world(&policy).await;
    let id = w.send(&MIXED, C25).await;
    w.mx.wait_for(2, WAIT).await;
    w.wait_envelope("dave deferred by policy", &id, |e| {
        is_delivered(e, "bob@example.com")
            && is_delivered(e, "carol@example.com")
            && deferred_with(e, "dave@example.com", "451 4.7.1")
    })
    .await;
    // Retried later (still no key): still deferred, still nothing for dave.
    advance(&w.running, &w.clock, 400);
    w.wait_envelope("second attempt", &id, |e| {
        e.attempts >= 2 && deferred_with(e, "dave@example.com", "451 4.7.1")
    })
    .await;
    assert_mixed_copies(&w.mx.messages(), &bob, &carol);
    assert!(w.sender_mx.messages().is_empty(), "no DSN for a deferral");
    let env = w.envelope(&id).unwrap();
    assert_eq!(
        status_of(&env, "bob@example.com").method.as_deref(),
        Some("openpgp")
    );
    assert_eq!(
        status_of(&env, "carol@example.com").method.as_deref(),
        Some("smime")
    );
    // dave's key is imported while the message waits: the next retry encrypts to it and
    // delivers, without a restart.
    let dave = pgp_secret("dave@example.com");
    w.import(&pgp_public_armored(&dave));
    advance(&w.running, &w.clock, 3600);
    let got = w.mx.wait_for(3, WAIT).await;
    let m = only_for(&got, "dave@example.com");
    assert_eq!(m.rcpts, vec!["dave@example.com"]);
    assert!(!contains(&m.data, MARKER), "plaintext reached the sink");
    let (inner, pkesks) = pgp_decrypt(&m.data, &dave);
    assert_eq!(inner, inner_entity(C25));
    assert_eq!(pkesks, 1);
    w.queue_empties().await;
    assert_eq!(w.mx.messages().len(), 3, "bob and carol got one copy each");
    w.running.shutdown().await;
}

/// `mask_subject` (config/policy.example.toml): "replace the visible outer Subject with this
/// text; the real Subject stays inside the encrypted part". Regression: the encryptors used
/// to encrypt only the `Content-*` fields and the body, so the real Subject was lost.
#[tokio::test]
async fn masked_subject_keeps_the_real_subject_inside_the_encrypted_part() {
    let policy = format!("{E2E_BOUNCE}mask_subject = \"Encrypted message\"\n");
    let (w, bob, carol) = mixed_world(&policy).await;
    w.send(&["bob@example.com", "carol@example.com"], C25).await;
    let got = w.mx.wait_for(2, WAIT).await;
    let pgp = &only_for(&got, "bob@example.com").data;
    let smime = &only_for(&got, "carol@example.com").data;
    for data in [pgp, smime] {
        let header = header_of(data);
        assert!(
            header.contains("\r\nSubject: Encrypted message\r\n"),
            "{header}"
        );
        assert!(!header.contains("Q3 numbers"), "{header}");
    }
    let (pgp_inner, _) = pgp_decrypt(pgp, &bob);
    let (smime_inner, _) = smime_decrypt(smime, &carol);
    for (what, inner) in [("PGP", pgp_inner), ("S/MIME", smime_inner)] {
        let inner = String::from_utf8_lossy(&inner).to_string();
        assert!(
            inner.contains("Subject: Q3 numbers"),
            "{what}: the real Subject is nowhere in the decrypted message:\n{inner}"
        );
    }
    w.running.shutdown().await;
}

#[tokio::test]
async fn already_encrypted_input_is_delivered_unchanged() {
    let w = World::start(Setup {
        policy: E2E_BOUNCE,
        mx: SinkConfig::accept(),
        extra_ca: None,
    })
    .await;
    let bob = pgp_secret("bob@example.com");
    w.import(&pgp_public_armored(&bob));
    // Someone else's PGP/MIME (encrypted by the sender's client to bob already).
    let pgp_mime = sealpost::crypto::pgp::encrypt_pgp_mime(
        C25,
        &[bob.clone().strip_secret_key_material()],
        &Default::default(),
    )
    .unwrap();
    let smime = b"From: alice@example.net\r\nTo: bob@example.com\r\nSubject: already\r\n\
MIME-Version: 1.0\r\n\
Content-Type: application/pkcs7-mime; smime-type=enveloped-data; name=\"smime.p7m\"\r\n\
Content-Transfer-Encoding: base64\r\n\
Content-Disposition: attachment; filename=\"smime.p7m\"\r\n\r\n\
MIAGCSqGSIb3DQEHA6CAMIACAQAxggFAMIIBPAIBADAkMBAxDjAMBgNVBAMMBUFsaWNlAhABAgME\r\n\
BQYHCAkKCwwNDg8QMA0GCSqGSIb3DQEBAQUABIIBAHN0dWZmAAAAAAAAAAAAAAAAAAAAAAAAAA==\r\n"
        .to_vec();
    let mixed_up = b"From: alice@example.net\r\nTo: bob@example.com\r\nSubject: mixed up\r\n\
MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n\
--b1\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n\r\n\
--b1\r\nContent-Type: application/pgp-encrypted\r\n\r\nVersion: 1\r\n\r\n\
--b1\r\nContent-Type: application/octet-stream; name=\"encrypted.asc\"\r\n\r\n\
-----BEGIN PGP MESSAGE-----\r\n\r\nhQEMA1234\r\n-----END PGP MESSAGE-----\r\n\r\n--b1--\r\n"
        .to_vec();
    for (n, body) in [&pgp_mime, &smime, &mixed_up].into_iter().enumerate() {
        assert!(is_already_encrypted(body), "case {n}");
        w.send(&["bob@example.com"], body).await;
        let got = w.mx.wait_for(n + 1, WAIT).await;
        let data = &got[n].data;
        assert!(data.starts_with(b"Received: "), "case {n}");
        assert!(
            data.ends_with(body),
            "case {n}: not delivered unchanged:\n{}",
            String::from_utf8_lossy(data)
        );
        // Exactly one encryption layer: the original boundary / armor appears once.
        assert_eq!(
            data.windows(27)
                .filter(|x| x == b"-----BEGIN PGP MESSAGE-----")
                .count(),
            usize::from(n != 1),
            "case {n}"
        );
    }
    // The sender's own encryption still decrypts for bob.
    let (inner, _) = pgp_decrypt(&w.mx.messages()[0].data, &bob);
    assert_eq!(inner, inner_entity(C25));
    w.queue_empties().await;
    assert!(w.sender_mx.messages().is_empty());
    w.running.shutdown().await;
}

// ---- verified TLS ----------------------------------------------------------------------------

const VERIFIED_TLS: &str = r#"
[[rule]]
name = "vtls"
recipient_domains = ["example.com"]
require = "verified-tls"
"#;

#[tokio::test]
async fn verified_tls_delivers_over_a_certificate_from_the_test_ca() {
    let ca = TestCa::new();
    let leaf = ca.leaf(&["mx.example.com"], false);
    let w = World::start(Setup {
        policy: VERIFIED_TLS,
        mx: SinkConfig::accept().with_certificate(leaf.chain, leaf.key),
        extra_ca: Some(&ca.pem),
    })
    .await;
    let id = w.send(&["bob@example.com", "held@example.org"], C25).await;
    let got = w.mx.wait_for(1, WAIT).await;
    assert!(got[0].tls, "delivered over TLS");
    assert!(
        got[0].data.ends_with(C25),
        "TLS only: the content is unchanged"
    );
    w.wait_envelope("bob delivered", &id, |e| is_delivered(e, "bob@example.com"))
        .await;
    let env = w.envelope(&id).unwrap();
    let rec = status_of(&env, "bob@example.com");
    assert_eq!(rec.tls_verified, Some(true), "{rec:?}");
    assert!(
        rec.method
            .as_deref()
            .is_some_and(|m| m.starts_with("verified-tls")),
        "{rec:?}"
    );
    assert!(
        rec.tls.as_deref().is_some_and(|t| t.starts_with("TLSv1")),
        "{rec:?}"
    );
    w.running.shutdown().await;
}

#[tokio::test]
async fn verified_tls_never_falls_back_to_plaintext_or_a_bad_certificate() {
    let ca = TestCa::new();
    let cases: Vec<(&str, SinkConfig)> = vec![
        ("self-signed", {
            let leaf = pki::self_signed("mx.example.com");
            SinkConfig::accept().with_certificate(leaf.chain, leaf.key)
        }),
        ("wrong name", {
            let leaf = ca.leaf(&["other.example.org"], false);
            SinkConfig::accept().with_certificate(leaf.chain, leaf.key)
        }),
        ("no STARTTLS", SinkConfig::accept()),
        (
            "STARTTLS refused (454)",
            SinkConfig::accept().with_starttls_refused("454 4.7.0 TLS not available"),
        ),
    ];
    for (label, mx) in cases {
        let w = World::start(Setup {
            policy: VERIFIED_TLS,
            mx,
            extra_ca: Some(&ca.pem),
        })
        .await;
        let id = w.send(&["bob@example.com"], C25).await;
        w.wait_envelope(label, &id, |e| {
            e.attempts == 1 && deferred_with(e, "bob@example.com", "4")
        })
        .await;
        let env = w.envelope(&id).unwrap();
        let RcptStatus::Deferred { reply } = &status_of(&env, "bob@example.com").status else {
            unreachable!()
        };
        assert!(reply.contains(" 4.7."), "{label}: {reply}");
        assert!(w.mx.connections() >= 1, "{label}: the MX was tried");
        // Retried later: the same checks, still nothing delivered.
        for round in 2..=3 {
            let before = w.mx.connections();
            advance(&w.running, &w.clock, 3600);
            w.wait_envelope(label, &id, |e| e.attempts >= round).await;
            assert!(
                w.mx.connections() > before,
                "{label}: retry {round} tried the MX"
            );
            let env = w.envelope(&id).unwrap();
            assert!(
                deferred_with(&env, "bob@example.com", "4"),
                "{label}: {env:?}"
            );
        }
        assert!(
            w.mx.messages().is_empty(),
            "{label}: a verified-TLS recipient got mail: {:?}",
            w.mx.messages()
        );
        assert!(w.sender_mx.messages().is_empty(), "{label}: no DSN yet");
        w.running.shutdown().await;
    }
}

// ---- subject tag and header match -------------------------------------------------------------

const TAGGED: &str = r#"
[[rule]]
name = "tagged-phi"
subject_tag = "[secure]"
strip_subject_tag = true
header = { name = "X-Sealpost-Sensitivity", value = "phi" }
require = "encrypted"
methods = ["pgp"]
on_unavailable = "bounce"
"#;

#[tokio::test]
async fn subject_tag_and_header_rule_encrypts_and_strips_the_tag() {
    let w = World::start(Setup {
        policy: TAGGED,
        mx: SinkConfig::accept(),
        extra_ca: None,
    })
    .await;
    let bob = pgp_secret("bob@example.com");
    w.import(&pgp_public_armored(&bob));
    let matching = b"From: alice@example.net\r\nTo: bob@example.com\r\n\
Subject: [secure] lab results\r\nX-Sealpost-Sensitivity: PHI \r\n\
Content-Type: text/plain; charset=us-ascii\r\n\r\nsecret Q3 numbers\r\n";
    w.send(&["bob@example.com"], matching).await;
    let got = w.mx.wait_for(1, WAIT).await;
    let data = &got[0].data;
    assert!(!contains(data, MARKER), "plaintext reached the sink");
    let header = header_of(data);
    assert!(header.contains("\r\nSubject: lab results\r\n"), "{header}");
    assert!(!header.contains("[secure]"), "{header}");
    let (inner, _) = pgp_decrypt(data, &bob);
    assert_eq!(inner, inner_entity(matching));

    // Tag without the header, header without the tag: the rule does not match, plain
    // delivery, the subject untouched.
    let tag_only = b"From: alice@example.net\r\nTo: bob@example.com\r\n\
Subject: [secure] not phi\r\n\r\nplain body one\r\n";
    let header_only = b"From: alice@example.net\r\nTo: bob@example.com\r\n\
Subject: untagged\r\nX-Sealpost-Sensitivity: phi\r\n\r\nplain body two\r\n";
    // The X-Sealpost-Sensitivity field instructs this server and does not travel on.
    let header_only_sent = b"From: alice@example.net\r\nTo: bob@example.com\r\n\
Subject: untagged\r\n\r\nplain body two\r\n";
    for (n, (body, sent)) in [
        (&tag_only[..], &tag_only[..]),
        (&header_only[..], &header_only_sent[..]),
    ]
    .into_iter()
    .enumerate()
    {
        w.send(&["bob@example.com"], body).await;
        let got = w.mx.wait_for(n + 2, WAIT).await;
        assert!(
            got[n + 1].data.ends_with(sent),
            "case {n}: not delivered plain"
        );
    }
    w.queue_empties().await;
    w.running.shutdown().await;
}

// ---- the TLS history ratchet -------------------------------------------------------------------

#[tokio::test]
async fn a_domain_that_showed_starttls_is_not_accepted_in_plaintext() {
    // No rule for example.com at all: opportunistic TLS, raised only by the history.
    let w = World::start(Setup {
        policy: "",
        mx: SinkConfig::accept().with_starttls(),
        extra_ca: None,
    })
    .await;
    w.send(&["bob@example.com"], C25).await;
    let got = w.mx.wait_for(1, WAIT).await;
    assert!(got[0].tls, "opportunistic TLS was used");
    w.queue_empties().await;

    // The MX is replaced by one without STARTTLS (a stripping attacker, say).
    let World {
        mx,
        port,
        running,
        clock,
        sender_mx,
        _dns,
        dir,
        keys: _,
        text,
    } = w;
    drop(mx);
    let mut plain = None;
    for _ in 0..100 {
        match Sink::start((lo(3), port).into(), SinkConfig::accept()).await {
            Ok(s) => {
                plain = Some(s);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    let plain = plain.expect("rebind the MX address");
    let id = queue_id(
        &send_message(
            running.smtp_addrs[0],
            "alice@example.net",
            &["bob@example.com"],
            C25,
        )
        .await,
    );
    let q = running.queue.clone();
    eventually("deferred by the ratchet", WAIT, || {
        q.spool().envelope(&id).unwrap().is_some_and(|e| {
            matches!(&e.recipients[0].status, RcptStatus::Deferred { reply } if reply.contains(" 4.7."))
        })
    })
    .await;
    advance(&running, &clock, 3600);
    eventually("retried", WAIT, || {
        q.spool()
            .envelope(&id)
            .unwrap()
            .is_some_and(|e| e.attempts >= 2)
    })
    .await;
    assert!(plain.connections() >= 2, "the MX was tried twice");
    assert!(
        plain.messages().is_empty(),
        "sent in plaintext after TLS was seen"
    );

    // The ratchet is kept in the spool database: after a restart it still holds.
    running.shutdown().await;
    drop(q);
    let running = harness::start(&text, clock.clone()).await;
    let q = running.queue.clone();
    let before = plain.connections();
    advance(&running, &clock, 3600);
    eventually("retried after the restart", WAIT, || {
        q.spool()
            .envelope(&id)
            .unwrap()
            .is_some_and(|e| e.attempts >= 3)
    })
    .await;
    assert!(
        plain.connections() > before,
        "the MX was tried after the restart"
    );
    assert!(
        plain.messages().is_empty(),
        "sent in plaintext after a restart"
    );
    assert!(sender_mx.messages().is_empty());
    running.shutdown().await;
    drop(dir);
}

// ---- the corpus through the whole server --------------------------------------------------------

#[tokio::test]
async fn corpus_relayed_to_a_pgp_recipient_decrypts_byte_exact() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/corpus/eml");
    if !dir.exists() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "corpus missing under CI=true: {}",
            dir.display()
        );
        eprintln!("SKIP: {} is absent", dir.display());
        return;
    }
    let mut files: Vec<PathBuf> = Vec::new();
    for sub in std::fs::read_dir(&dir).unwrap() {
        for f in std::fs::read_dir(sub.unwrap().path()).unwrap() {
            files.push(f.unwrap().path());
        }
    }
    files.sort();
    assert!(files.len() > 10, "corpus looks empty");
    let w = World::start(Setup {
        policy: E2E_BOUNCE,
        mx: SinkConfig::accept(),
        extra_ca: None,
    })
    .await;
    let bob = pgp_secret("bob@example.com");
    w.import(&pgp_public_armored(&bob));
    let addr = w.running.smtp_addrs[0];
    let (mut encrypted, mut unchanged, mut refused) = (0usize, 0usize, Vec::new());
    for f in &files {
        let mut crlf = to_crlf(&std::fs::read(f).unwrap());
        let (mut c, _) = Client::connect(addr).await;
        c.cmd("EHLO client.example.net").await;
        let r = c.cmd("MAIL FROM:<corpus@example.net> BODY=8BITMIME").await;
        assert_eq!(r.code, 250, "{}: {r}", f.display());
        assert_eq!(c.cmd("RCPT TO:<bob@example.com>").await.code, 250);
        assert_eq!(c.cmd("DATA").await.code, 354);
        c.send(&sealpost::outbound::DotStuffer::stuff_all(&crlf))
            .await;
        if !crlf.is_empty() && !crlf.ends_with(b"\r\n") {
            c.send(b"\r\n").await;
            crlf.extend_from_slice(b"\r\n");
        }
        c.send(b".\r\n").await;
        let r = c.reply().await;
        let _ = c.cmd("QUIT").await;
        if r.code != 250 {
            assert!(
                f.to_string_lossy().contains("malformed") && r.code >= 500,
                "{}: {r}",
                f.display()
            );
            refused.push(f.clone());
            continue;
        }
        let n = encrypted + unchanged + 1;
        let got = w.mx.wait_for(n, WAIT).await;
        let data = &got[n - 1].data;
        if is_already_encrypted(&crlf) {
            assert!(data.ends_with(&crlf), "{}: changed", f.display());
            unchanged += 1;
            continue;
        }
        let (inner, pkesks) = pgp_decrypt(data, &bob);
        assert_eq!(pkesks, 1);
        if inner != inner_entity(&crlf) {
            panic!(
                "{}: decrypted entity differs\n--- got\n{}\n--- expected\n{}",
                f.display(),
                String::from_utf8_lossy(&inner),
                String::from_utf8_lossy(&inner_entity(&crlf))
            );
        }
        encrypted += 1;
    }
    eprintln!(
        "corpus: {encrypted} encrypted and decrypted byte-exact, {unchanged} already encrypted, {} refused",
        refused.len()
    );
    assert!(encrypted > 10);
    w.queue_empties().await;
    assert!(w.sender_mx.messages().is_empty(), "no DSN expected");
    w.running.shutdown().await;
}

/// Every line end (CRLF, LF or a lone CR) becomes CRLF, as an SMTP client sends it.
fn to_crlf(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len() + raw.len() / 20);
    let mut i = 0;
    while i < raw.len() {
        match raw[i] {
            b'\r' if raw.get(i + 1) == Some(&b'\n') => {
                out.extend_from_slice(b"\r\n");
                i += 1;
            }
            b'\r' | b'\n' => out.extend_from_slice(b"\r\n"),
            b => out.push(b),
        }
        i += 1;
    }
    out
}
