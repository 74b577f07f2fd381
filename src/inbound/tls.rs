//! Server-side TLS: the certificate (configured, or self-signed on first start) and a rustls
//! configuration that can ask for client certificates, so a smart-host connector (Microsoft
//! 365, Google Workspace) can be recognised by a pinned SHA-256 fingerprint.

use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    /// Reading or writing a certificate or key file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file involved.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A PEM file held nothing usable.
    #[error("{path}: {message}")]
    Pem {
        /// The file involved.
        path: PathBuf,
        /// What was wrong.
        message: String,
    },
    /// rustls or rcgen refused the material.
    #[error("TLS setup: {0}")]
    Rustls(String),
}

/// Loads the configured certificate and key, or creates a self-signed pair for `hostname`
/// under `spool_dir/tls/` (reused on later starts).
pub fn load_or_generate(
    cert: Option<&Path>,
    key: Option<&Path>,
    hostname: &str,
    spool_dir: &Path,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsSetupError> {
    let (cert_path, key_path) = match (cert, key) {
        (Some(c), Some(k)) => (c.to_path_buf(), k.to_path_buf()),
        _ => {
            let dir = spool_dir.join("tls");
            let c = dir.join("selfsigned.crt");
            let k = dir.join("selfsigned.key");
            if !c.exists() || !k.exists() {
                generate(hostname, &dir, &c, &k)?;
            }
            (c, k)
        }
    };
    let certs = read_certificates(&cert_path)?;
    let key = PrivateKeyDer::from_pem_file(&key_path).map_err(|e| pem_err(&key_path, e))?;
    Ok((certs, key))
}

/// Reads every certificate in a PEM file; an empty file is an error.
pub fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsSetupError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .map_err(|e| pem_err(path, e))?
        .collect::<Result<_, _>>()
        .map_err(|e| pem_err(path, e))?;
    if certs.is_empty() {
        return Err(TlsSetupError::Pem {
            path: path.to_path_buf(),
            message: "no CERTIFICATE block".into(),
        });
    }
    Ok(certs)
}

fn pem_err(path: &Path, e: rustls::pki_types::pem::Error) -> TlsSetupError {
    TlsSetupError::Pem {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

fn generate(hostname: &str, dir: &Path, cert: &Path, key: &Path) -> Result<(), TlsSetupError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| TlsSetupError::Io { path, source }
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let ck = rcgen::generate_simple_self_signed(vec![hostname.to_string()])
        .map_err(|e| TlsSetupError::Rustls(e.to_string()))?;
    write_private(key, ck.signing_key.serialize_pem().as_bytes()).map_err(io(key))?;
    std::fs::write(cert, ck.cert.pem()).map_err(io(cert))?;
    tracing::info!(cert = %cert.display(), "generated a self-signed certificate for {hostname}");
    Ok(())
}

/// Writes a file readable only by its owner (private keys).
fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(data)
}

/// Builds the rustls server configuration. With `request_client_certs`, clients are asked
/// for a certificate (optional); it is not chain-verified, only fingerprinted and compared
/// against the pinned list by the relay check.
pub fn server_config(
    certs: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    request_client_certs: bool,
) -> Result<Arc<rustls::ServerConfig>, TlsSetupError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsSetupError::Rustls(e.to_string()))?;
    let builder = if request_client_certs {
        builder.with_client_cert_verifier(Arc::new(PinningVerifier { provider }))
    } else {
        builder.with_no_client_auth()
    };
    let cfg = builder
        .with_single_cert(certs, key)
        .map_err(|e| TlsSetupError::Rustls(e.to_string()))?;
    Ok(Arc::new(cfg))
}

/// SHA-256 of a DER certificate: the pinning identity of a client.
pub fn fingerprint(cert: &CertificateDer<'_>) -> [u8; 32] {
    Sha256::digest(cert.as_ref()).into()
}

/// Accepts any client certificate whose handshake signature is valid; trust comes from the
/// pinned fingerprint, not a CA, exactly like cloud connector setups.
#[derive(Debug)]
struct PinningVerifier {
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ClientCertVerifier for PinningVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
