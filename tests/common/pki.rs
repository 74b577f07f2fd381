//! A test certificate authority (rcgen) issuing good, wrong-name, expired and self-signed
//! server certificates, for verified-TLS tests.

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// A CA that signs leaf certificates; its certificate goes into the client's extra roots.
pub struct TestCa {
    /// The CA certificate (DER).
    pub cert: CertificateDer<'static>,
    /// The CA certificate (PEM), for `extra_ca_file`.
    pub pem: String,
    issuer: Issuer<'static, KeyPair>,
}

/// A leaf certificate with its key.
pub struct Leaf {
    /// The chain to serve: leaf then CA.
    pub chain: Vec<CertificateDer<'static>>,
    /// The leaf's private key.
    pub key: PrivateKeyDer<'static>,
}

impl TestCa {
    /// A fresh CA named "Sealpost Test CA".
    pub fn new() -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "Sealpost Test CA");
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().expect("CA key");
        let cert = params.self_signed(&key).expect("CA certificate");
        let pem = cert.pem();
        let der = cert.der().clone();
        Self {
            cert: der,
            pem,
            issuer: Issuer::new(params, key),
        }
    }

    /// A leaf for `names`, valid now unless `expired`.
    pub fn leaf(&self, names: &[&str], expired: bool) -> Leaf {
        let mut params =
            CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .expect("leaf params");
        if expired {
            params.not_before = rcgen::date_time_ymd(2020, 1, 1);
            params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        }
        let key = KeyPair::generate().expect("leaf key");
        let cert = params
            .signed_by(&key, &self.issuer)
            .expect("leaf certificate");
        Leaf {
            chain: vec![cert.der().clone(), self.cert.clone()],
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        }
    }
}

/// A self-signed certificate for `name` (not from any CA).
pub fn self_signed(name: &str) -> Leaf {
    let ck = rcgen::generate_simple_self_signed(vec![name.to_string()]).expect("self-signed");
    Leaf {
        chain: vec![ck.cert.der().clone()],
        key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(ck.signing_key.serialize_der())),
    }
}
