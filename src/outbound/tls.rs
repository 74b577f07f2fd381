//! TLS for opportunistic STARTTLS (RFC 3207, RFC 7435).
//!
//! Opportunistic TLS protects against passive eavesdropping only, and most MX certificates
//! do not match their names, so the certificate chain is not checked: rejecting it would only
//! push the message to plaintext. The handshake signatures are still verified with the ring
//! provider's algorithms, so the peer must hold the key for the certificate it sent and the
//! session keys are genuine. Policy-driven verified TLS (MTA-STS, DANE) builds its own config.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};

/// The negotiated protocol version and cipher suite, recorded per delivery so a
/// `Received:`/DSN line and the ratchet logic can say how the message travelled.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TlsSummary {
    /// For example `TLSv1_3`.
    pub version: String,
    /// For example `TLS13_AES_256_GCM_SHA384`.
    pub cipher: String,
    /// The certificate was verified (against the MX name or a pinned fingerprint); false for
    /// opportunistic TLS, where any certificate is accepted.
    #[serde(default)]
    pub verified: bool,
}

impl TlsSummary {
    /// Reads version and cipher from an established client connection.
    pub fn from_connection(conn: &rustls::ClientConnection) -> Self {
        let version = conn
            .protocol_version()
            .map(|v| v.as_str().map_or_else(|| format!("{v:?}"), str::to_string))
            .unwrap_or_default();
        let cipher = conn
            .negotiated_cipher_suite()
            .map(|s| {
                let s = s.suite();
                s.as_str().map_or_else(|| format!("{s:?}"), str::to_string)
            })
            .unwrap_or_default();
        Self {
            version,
            cipher,
            verified: false,
        }
    }
}

/// Why the TLS client configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsConfigError {
    /// rustls rejected the protocol versions for the ring provider.
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

/// Builds the client configuration used for opportunistic STARTTLS.
pub fn opportunistic_client_config() -> Result<Arc<ClientConfig>, TlsConfigError> {
    opportunistic_client_config_with_identity(None)
}

/// Like [`opportunistic_client_config`], optionally presenting a client certificate: the
/// way a smart host proves itself to a partner that pins client certificates.
pub fn opportunistic_client_config_with_identity(
    identity: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
) -> Result<Arc<ClientConfig>, TlsConfigError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = AnyCertificate {
        algorithms: provider.signature_verification_algorithms,
    };
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier));
    let config = match identity {
        Some((certs, key)) => builder.with_client_auth_cert(certs, key)?,
        None => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

/// Builds the client configuration for verified TLS: the certificate must chain to a
/// webpki root (or one of `extra_roots`, e.g. a private CA) and match the MX host name, or
/// its SHA-256 fingerprint must be one of `pins` (for partners with private certificates).
pub fn verifying_client_config(
    extra_roots: &[CertificateDer<'static>],
    pins: Vec<[u8; 32]>,
) -> Result<Arc<ClientConfig>, TlsConfigError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    for cert in extra_roots {
        roots.add(cert.clone())?;
    }
    let webpki = rustls::client::WebPkiServerVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .map_err(|e| TlsConfigError::Rustls(rustls::Error::General(e.to_string())))?;
    let verifier = PinnedOrWebPki {
        webpki,
        pins,
        algorithms: provider.signature_verification_algorithms,
    };
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// Verified TLS: a pinned fingerprint, or else full webpki verification (chain and name).
#[derive(Debug)]
struct PinnedOrWebPki {
    webpki: Arc<rustls::client::WebPkiServerVerifier>,
    pins: Vec<[u8; 32]>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for PinnedOrWebPki {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        use sha2::Digest;
        let fp: [u8; 32] = sha2::Sha256::digest(end_entity.as_ref()).into();
        if self.pins.contains(&fp) {
            return Ok(ServerCertVerified::assertion());
        }
        self.webpki
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// The server name to send in SNI: the MX host name, or its IP when it has none.
pub fn server_name(host: &str, ip: std::net::IpAddr) -> ServerName<'static> {
    ServerName::try_from(host.trim_end_matches('.').to_string())
        .unwrap_or_else(|_| ServerName::IpAddress(ip.into()))
}

/// Accepts any certificate but still checks handshake signatures; see the module docs.
#[derive(Debug)]
struct AnyCertificate {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}
