//! Building the S/MIME message: CMS EnvelopedData around the inner entity, inside the outer
//! `application/pkcs7-mime` message.

use cms::builder::{ContentEncryptionAlgorithm, EnvelopedDataBuilder, RecipientInfoBuilder};
use cms::cert::IssuerAndSerialNumber;
use cms::content_info::{CmsVersion, ContentInfo};
use cms::enveloped_data::{KeyTransRecipientInfo, RecipientIdentifier, RecipientInfo};
use der::asn1::OctetString;
use der::oid::ObjectIdentifier;
use der::{Any, Encode};
use rsa::pkcs1::RsaOaepParams;
use rsa::sha2::Sha256;
use rsa::traits::PublicKeyParts as _;
use rsa::{Oaep, Pkcs1v15Encrypt, RsaPublicKey};

use crate::crypto::rsa_public::RsaPublic;
use x509_cert::Certificate;
use x509_cert::spki::AlgorithmIdentifierOwned;

use super::mime::{encode_subject, split_message};
use super::{SmimeError, SmimeOptions, cert};

/// id-envelopedData (RFC 5652 §6.1).
const ID_ENVELOPED_DATA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.7.3");
/// rsaEncryption: PKCS #1 v1.5 key transport (RFC 3370 §4.2.1).
const RSA_ENCRYPTION: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");
/// id-RSAES-OAEP (RFC 3560 §2.2).
const RSAES_OAEP: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.7");

/// Encrypts `message` (SMTP wire form, CRLF line ends; bare LF is tolerated) for every
/// certificate in `recipients` and returns the S/MIME message, CRLF throughout.
///
/// Output layout:
/// - the original's non-`Content-*` header fields, byte-exact and in order except that line
///   ends become CRLF; only the first MIME-Version is kept and `MIME-Version: 1.0` is added
///   when there was none; with [`SmimeOptions::mask_subject`] the Subject is replaced;
/// - `Content-Type: application/pkcs7-mime; smime-type=enveloped-data; name="smime.p7m"`,
///   `Content-Transfer-Encoding: base64`,
///   `Content-Disposition: attachment; filename="smime.p7m"`,
///   `Content-Description: S/MIME Encrypted Message`;
/// - an empty line, then the DER ContentInfo in base64 lines of 76 characters.
///
/// The encrypted content is the inner entity described in the [module docs](super); with a
/// masked Subject the original `Subject` field leads it, so the reader still sees it. The body
/// and every added field are 7-bit; header fields copied from the original keep whatever bytes
/// they had (raw UTF-8 headers stay raw, as the original needed SMTPUTF8 anyway).
///
/// Recipient certificates are not checked for validity dates here (the store does that on
/// lookup); each must carry an RSA key.
///
/// # Errors
/// [`SmimeError::AlreadyEncrypted`] for S/MIME enveloped-data or `multipart/encrypted` input,
/// [`SmimeError::NoRecipients`], [`SmimeError::UnusableCertificate`] for a non-RSA
/// certificate, [`SmimeError::InvalidMaskSubject`], [`SmimeError::Cms`] if encoding fails.
pub fn encrypt_smime(
    message: &[u8],
    recipients: &[Certificate],
    options: &SmimeOptions,
) -> Result<Vec<u8>, SmimeError> {
    if recipients.is_empty() {
        return Err(SmimeError::NoRecipients);
    }
    let split = split_message(message);
    if split.is_already_encrypted() {
        return Err(SmimeError::AlreadyEncrypted);
    }
    let masked_subject = options
        .mask_subject
        .as_deref()
        .map(encode_subject)
        .transpose()?;
    let inner = split.inner_entity(masked_subject.is_some());
    let der = enveloped_data(&inner, recipients, options.oaep)?;
    Ok(split.outer_message(masked_subject.as_deref(), &der))
}

/// DER `ContentInfo { id-envelopedData, EnvelopedData }` for `content`.
fn enveloped_data(
    content: &[u8],
    recipients: &[Certificate],
    oaep: bool,
) -> Result<Vec<u8>, SmimeError> {
    let mut builder =
        EnvelopedDataBuilder::new(None, content, ContentEncryptionAlgorithm::Aes256Cbc, None)
            .map_err(cms_error)?;
    for (i, recipient) in recipients.iter().enumerate() {
        let key =
            cert::rsa_public_key(recipient).map_err(|problem| SmimeError::UnusableCertificate {
                index: i + 1,
                subject: recipient.tbs_certificate.subject.to_string(),
                problem,
            })?;
        let rid = RecipientIdentifier::IssuerAndSerialNumber(IssuerAndSerialNumber {
            issuer: recipient.tbs_certificate.issuer.clone(),
            serial_number: recipient.tbs_certificate.serial_number.clone(),
        });
        builder
            .add_recipient_info(RsaKeyTransport { rid, key, oaep })
            .map_err(cms_error)?;
    }
    let enveloped = builder
        .build_with_rng(&mut CompatRng(rand::rng()))
        .map_err(cms_error)?;
    let content_info = ContentInfo {
        content_type: ID_ENVELOPED_DATA,
        content: Any::encode_from(&enveloped).map_err(SmimeError::Der)?,
    };
    content_info.to_der().map_err(SmimeError::Der)
}

fn cms_error(e: cms::builder::Error) -> SmimeError {
    SmimeError::Cms(e.to_string())
}

/// KeyTransRecipientInfo (v0, issuerAndSerialNumber) with RSA PKCS #1 v1.5 or RSA-OAEP.
///
/// The cms crate's own builder only does v1.5 and borrows one RNG for its lifetime; this one
/// covers both paddings and takes a fresh thread RNG per recipient.
struct RsaKeyTransport {
    rid: RecipientIdentifier,
    key: RsaPublicKey,
    oaep: bool,
}

impl RecipientInfoBuilder for RsaKeyTransport {
    fn recipient_info_type(&self) -> cms::builder::RecipientInfoType {
        cms::builder::RecipientInfoType::Ktri
    }

    fn recipient_info_version(&self) -> CmsVersion {
        CmsVersion::V0
    }

    fn build(
        &mut self,
        content_encryption_key: &[u8],
    ) -> Result<RecipientInfo, cms::builder::Error> {
        let mut rng = CompatRng(rand::rng());
        let (encrypted_key, key_enc_alg) = if self.oaep {
            let encrypted = self
                .key
                .encrypt(&mut rng, Oaep::new::<Sha256>(), content_encryption_key)
                .map_err(|e| cms::builder::Error::Builder(e.to_string()))?;
            let alg = AlgorithmIdentifierOwned {
                oid: RSAES_OAEP,
                parameters: Some(Any::encode_from(&RsaOaepParams::new::<Sha256>())?),
            };
            (encrypted, alg)
        } else {
            // Our own RSA public operation first (several times faster than the rsa crate's,
            // see crate::crypto::rsa_public); the crate's for any key it refuses.
            let fast = RsaPublic::new(&self.key.n().to_bytes_be(), &self.key.e().to_bytes_be())
                .and_then(|k| k.encrypt_pkcs1v15(content_encryption_key, &mut rand::rng()));
            let encrypted = match fast {
                Ok(encrypted) => encrypted,
                Err(_) => self
                    .key
                    .encrypt(&mut rng, Pkcs1v15Encrypt, content_encryption_key)
                    .map_err(|e| cms::builder::Error::Builder(e.to_string()))?,
            };
            // RFC 3370 §4.2.1: rsaEncryption parameters MUST be NULL.
            let alg = AlgorithmIdentifierOwned {
                oid: RSA_ENCRYPTION,
                parameters: Some(Any::null()),
            };
            (encrypted, alg)
        };
        Ok(RecipientInfo::Ktri(KeyTransRecipientInfo {
            version: CmsVersion::V0,
            rid: self.rid.clone(),
            key_enc_alg,
            enc_key: OctetString::new(encrypted_key)?,
        }))
    }
}

/// Adapts rand 0.9's thread RNG (ChaCha12 seeded and reseeded from the OS; rand documents it
/// as suitable for cryptography) to the rand_core 0.6 traits that rsa 0.9 and cms 0.2 take.
pub(crate) struct CompatRng(rand::rngs::ThreadRng);

impl CompatRng {
    /// The calling thread's RNG.
    pub(crate) fn new() -> Self {
        Self(rand::rng())
    }
}

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
