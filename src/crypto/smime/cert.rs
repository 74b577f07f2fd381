//! Reading recipient certificates: PEM or DER input, fingerprints, e-mail addresses, and the
//! checks that decide whether a certificate can receive an RSA key-transport envelope.

use std::time::SystemTime;

use der::asn1::{Ia5StringRef, Utf8StringRef};
use der::oid::ObjectIdentifier;
use der::{Decode, Reader, SliceReader};
use rsa::RsaPublicKey;
use rsa::pkcs1::DecodeRsaPublicKey;
use sha2::{Digest, Sha256};
use x509_cert::Certificate;
use x509_cert::ext::pkix::name::GeneralName;
use x509_cert::ext::pkix::{ExtendedKeyUsage, KeyUsage, SubjectAltName};

use super::{CertInfo, CertProblem, SmimeError};

/// rsaEncryption (RFC 8017 appendix C): the only public-key algorithm we transport keys to.
const RSA_ENCRYPTION: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");
/// PKCS #9 emailAddress attribute in a subject name.
const EMAIL_ADDRESS: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.9.1");
/// id-kp-emailProtection (RFC 5280 §4.2.1.12).
const EMAIL_PROTECTION: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.3.4");
/// anyExtendedKeyUsage (RFC 5280 §4.2.1.12).
const ANY_EXTENDED_KEY_USAGE: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.37.0");

/// A certificate together with the exact DER it was read from (fingerprint and storage use
/// these bytes, never a re-encoding).
#[derive(Debug, Clone)]
pub(crate) struct LoadedCert {
    /// The DER encoding as received.
    pub(crate) der: Vec<u8>,
    /// The decoded certificate.
    pub(crate) cert: Certificate,
}

/// Reads every certificate in `bytes`: PEM (any number of `CERTIFICATE` blocks; private-key
/// and other blocks are skipped without being decoded) or DER (one or more certificates back
/// to back).
pub(crate) fn load_certificates(bytes: &[u8]) -> Result<Vec<LoadedCert>, SmimeError> {
    let certs = if is_pem(bytes) {
        load_pem(bytes)?
    } else {
        load_der(bytes)?
    };
    if certs.is_empty() {
        return Err(SmimeError::NoCertificate);
    }
    Ok(certs)
}

fn is_pem(bytes: &[u8]) -> bool {
    bytes.windows(11).any(|w| w == b"-----BEGIN ")
}

fn load_pem(bytes: &[u8]) -> Result<Vec<LoadedCert>, SmimeError> {
    let mut certs = Vec::new();
    let mut rest = bytes;
    while let Some(begin) = find(rest, b"-----BEGIN ") {
        let block = &rest[begin..];
        let label_end = find(&block[11..], b"-----").ok_or(SmimeError::BadPem)? + 11;
        let label = &block[11..label_end];
        let end_marker = [&b"-----END "[..], label, b"-----"].concat();
        let end = find(block, &end_marker).ok_or(SmimeError::BadPem)? + end_marker.len();
        if label == b"CERTIFICATE" {
            let (_, der) =
                der::pem::decode_vec(&block[..end]).map_err(|e| SmimeError::Der(e.into()))?;
            let cert = Certificate::from_der(&der).map_err(SmimeError::Der)?;
            certs.push(LoadedCert { der, cert });
        }
        // Anything else (PRIVATE KEY, RSA PRIVATE KEY, ENCRYPTED PRIVATE KEY, PUBLIC KEY…)
        // is passed over: key material must never reach the store.
        rest = &block[end..];
    }
    Ok(certs)
}

fn load_der(bytes: &[u8]) -> Result<Vec<LoadedCert>, SmimeError> {
    let mut certs = Vec::new();
    let mut reader = SliceReader::new(bytes).map_err(SmimeError::Der)?;
    while !reader.is_finished() {
        let before = usize::try_from(reader.position()).map_err(SmimeError::Der)?;
        let cert: Certificate = reader.decode().map_err(SmimeError::Der)?;
        let after = usize::try_from(reader.position()).map_err(SmimeError::Der)?;
        let der = bytes
            .get(before..after)
            .ok_or(SmimeError::NoCertificate)?
            .to_vec();
        certs.push(LoadedCert { der, cert });
    }
    Ok(certs)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Lower-case hex SHA-256 of the certificate's DER: its name in the store.
pub(crate) fn fingerprint(der: &[u8]) -> String {
    hex::encode(Sha256::digest(der))
}

/// The certificate's e-mail addresses: SAN rfc822Name entries, then subject emailAddress
/// attributes, without case-insensitive duplicates, in the order found.
pub(crate) fn emails(cert: &Certificate) -> Vec<String> {
    let mut found: Vec<String> = Vec::new();
    let mut add = |email: &str| {
        let email = email.trim();
        let lower = email.to_lowercase();
        if email.contains('@') && !found.iter().any(|e| e.to_lowercase() == lower) {
            found.push(email.to_string());
        }
    };
    for san in cert.tbs_certificate.filter::<SubjectAltName>().flatten() {
        for name in &(san.1).0 {
            if let GeneralName::Rfc822Name(email) = name {
                add(email.as_str());
            }
        }
    }
    for rdn in &cert.tbs_certificate.subject.0 {
        for atv in rdn.0.iter().filter(|atv| atv.oid == EMAIL_ADDRESS) {
            // emailAddress is an IA5String; some issuers wrongly use UTF8String.
            if let Ok(email) = atv.value.decode_as::<Ia5StringRef<'_>>() {
                add(email.as_str());
            } else if let Ok(email) = atv.value.decode_as::<Utf8StringRef<'_>>() {
                add(email.as_str());
            }
        }
    }
    found
}

/// The summary shown by the store.
pub(crate) fn info(loaded: &LoadedCert) -> CertInfo {
    let tbs = &loaded.cert.tbs_certificate;
    CertInfo {
        fingerprint_sha256: fingerprint(&loaded.der),
        emails: emails(&loaded.cert),
        not_after: tbs.validity.not_after.to_system_time(),
        subject: tbs.subject.to_string(),
    }
}

/// The recipient's RSA public key, if the certificate carries one (rsaEncryption SPKI).
pub(crate) fn rsa_public_key(cert: &Certificate) -> Result<RsaPublicKey, CertProblem> {
    let spki = &cert.tbs_certificate.subject_public_key_info;
    if spki.algorithm.oid != RSA_ENCRYPTION {
        return Err(CertProblem::NotRsa);
    }
    let key_bytes = spki
        .subject_public_key
        .as_bytes()
        .ok_or(CertProblem::BadRsaKey)?;
    RsaPublicKey::from_pkcs1_der(key_bytes).map_err(|_| CertProblem::BadRsaKey)
}

/// Whether the certificate can be used now to encrypt to: an RSA key, inside its validity
/// period, KeyUsage (if present) allowing keyEncipherment, ExtendedKeyUsage (if present)
/// allowing e-mail protection (RFC 8550 §4.4), and at least one e-mail address to find it by.
pub(crate) fn check_usable(cert: &Certificate, now: SystemTime) -> Result<(), CertProblem> {
    rsa_public_key(cert)?;
    let tbs = &cert.tbs_certificate;
    if now < tbs.validity.not_before.to_system_time() {
        return Err(CertProblem::NotYetValid);
    }
    if now > tbs.validity.not_after.to_system_time() {
        return Err(CertProblem::Expired);
    }
    match tbs.get::<KeyUsage>() {
        Ok(Some((_, usage))) if !usage.key_encipherment() => {
            return Err(CertProblem::KeyUsageForbidsKeyEncipherment);
        }
        Ok(_) => {}
        Err(_) => return Err(CertProblem::BadExtension("KeyUsage")),
    }
    match tbs.get::<ExtendedKeyUsage>() {
        Ok(Some((_, eku)))
            if !eku
                .0
                .iter()
                .any(|oid| *oid == EMAIL_PROTECTION || *oid == ANY_EXTENDED_KEY_USAGE) =>
        {
            return Err(CertProblem::ExtendedKeyUsageForbidsEmail);
        }
        Ok(_) => {}
        Err(_) => return Err(CertProblem::BadExtension("ExtendedKeyUsage")),
    }
    if emails(cert).is_empty() {
        return Err(CertProblem::NoEmailAddress);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use rcgen::{CertificateParams, DnType, KeyPair, KeyUsagePurpose, SanType};

    use super::*;

    fn ec_cert_pem(params: CertificateParams) -> (String, String) {
        let key = KeyPair::generate().unwrap_or_else(|e| panic!("keygen: {e}"));
        let cert = params
            .self_signed(&key)
            .unwrap_or_else(|e| panic!("self-sign: {e}"));
        (cert.pem(), key.serialize_pem())
    }

    fn params_for(email: &str) -> CertificateParams {
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, "Test");
        params.subject_alt_names.push(SanType::Rfc822Name(
            email.try_into().unwrap_or_else(|e| panic!("{e}")),
        ));
        params.key_usages = vec![KeyUsagePurpose::KeyEncipherment];
        params
    }

    #[test]
    fn pem_with_private_key_yields_only_the_certificate() {
        let (cert, key) = ec_cert_pem(params_for("bob@example.com"));
        let bundle = format!("{key}\n{cert}\n{key}");
        let certs = load_certificates(bundle.as_bytes()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(certs.len(), 1);
        assert_eq!(emails(&certs[0].cert), vec!["bob@example.com".to_string()]);
    }

    #[test]
    fn pem_with_crlf_and_leading_text() {
        let (cert, _) = ec_cert_pem(params_for("bob@example.com"));
        let text = format!(
            "Certificate:\r\n    Data: ...\r\n{}",
            cert.replace('\n', "\r\n")
        );
        let certs = load_certificates(text.as_bytes()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(certs.len(), 1);
    }

    #[test]
    fn der_certificates_back_to_back() {
        let (a, _) = ec_cert_pem(params_for("a@example.com"));
        let (b, _) = ec_cert_pem(params_for("b@example.com"));
        let mut der = Vec::new();
        for pem in [a, b] {
            let certs = load_certificates(pem.as_bytes()).unwrap_or_else(|e| panic!("{e}"));
            der.extend_from_slice(&certs[0].der);
        }
        let certs = load_certificates(&der).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(certs.len(), 2);
        assert_eq!(emails(&certs[1].cert), vec!["b@example.com".to_string()]);
        assert_eq!(fingerprint(&certs[0].der).len(), 64);
    }

    #[test]
    fn key_only_or_garbage_is_refused() {
        let (_, key) = ec_cert_pem(params_for("a@example.com"));
        assert!(matches!(
            load_certificates(key.as_bytes()),
            Err(SmimeError::NoCertificate)
        ));
        assert!(load_certificates(b"\x30\x03\x02\x01\x00").is_err());
        assert!(matches!(
            load_certificates(b""),
            Err(SmimeError::NoCertificate)
        ));
        assert!(load_certificates(b"-----BEGIN CERTIFICATE-----\nAAAA\n").is_err());
    }

    #[test]
    fn emails_from_san_and_subject_deduplicated() {
        let mut params = params_for("Bob@Example.com");
        params.distinguished_name.push(
            DnType::CustomDnType(vec![1, 2, 840, 113549, 1, 9, 1]),
            "bob@example.com",
        );
        params.subject_alt_names.push(SanType::Rfc822Name(
            "bob.alt@example.com"
                .try_into()
                .unwrap_or_else(|e| panic!("{e}")),
        ));
        let (pem, _) = ec_cert_pem(params);
        let certs = load_certificates(pem.as_bytes()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            emails(&certs[0].cert),
            vec![
                "Bob@Example.com".to_string(),
                "bob.alt@example.com".to_string()
            ]
        );
    }

    #[test]
    fn ec_key_is_not_usable() {
        let (pem, _) = ec_cert_pem(params_for("a@example.com"));
        let certs = load_certificates(pem.as_bytes()).unwrap_or_else(|e| panic!("{e}"));
        let now = SystemTime::now() + Duration::from_secs(60);
        assert_eq!(check_usable(&certs[0].cert, now), Err(CertProblem::NotRsa));
    }
}
