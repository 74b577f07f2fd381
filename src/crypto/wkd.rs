//! OpenPGP Web Key Directory lookups (draft-koch-openpgp-webkey-service): the advanced method
//! (`openpgpkey.DOMAIN`) first, then the direct method (`DOMAIN`).
//!
//! Caching is the caller's job. The HTTPS client must not follow redirects and should trust the
//! web PKI roots; [`wkd_client`] builds one (rustls with the ring provider, because this crate's
//! reqwest has no crypto provider of its own) and lets tests add a root and pin host addresses.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject as _;
use sequoia_openpgp as openpgp;

use openpgp::Cert;
use openpgp::cert::CertParser;
use openpgp::parse::Parse as _;
use openpgp::policy::StandardPolicy;
use openpgp::types::HashAlgorithm;

use crate::crypto::pgp::keyring::{check_usable, valid_emails};

/// The z-base32 alphabet (used by WKD for the hashed local part).
const ZBASE32: &[u8; 32] = b"ybndrfg8ejkmcpqxot1uwisza345h769";

/// Tunables for [`wkd_lookup_with`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WkdConfig {
    /// HTTPS port of both WKD hosts. Default 443; tests point it at a loopback server.
    pub https_port: u16,
    /// Timeout of each request, connection included. Default 10 s.
    pub timeout: Duration,
    /// Largest accepted response body in bytes. Default 256 KiB.
    pub max_bytes: usize,
}

impl Default for WkdConfig {
    fn default() -> Self {
        WkdConfig {
            https_port: 443,
            timeout: Duration::from_secs(10),
            max_bytes: 256 * 1024,
        }
    }
}

/// Errors of a WKD lookup.
#[derive(Debug, thiserror::Error)]
pub enum WkdError {
    /// The address has no `@`, an empty part, or a domain with characters outside
    /// letters, digits, `-` and `.`.
    #[error("not a usable email address for WKD: {0}")]
    InvalidEmail(String),
    /// Building the HTTPS client failed (bad extra root, TLS setup).
    #[error("WKD client setup: {0}")]
    Client(String),
    /// The request failed (timeout, TLS, protocol), other than a refused connection.
    #[error("WKD request to {url} failed: {reason}")]
    Http {
        /// The URL requested.
        url: String,
        /// What went wrong.
        reason: String,
    },
    /// The server answered with a status other than 200 or 404 (redirects are not followed).
    #[error("WKD server answered {status} for {url}")]
    Status {
        /// The URL requested.
        url: String,
        /// The HTTP status code.
        status: u16,
    },
    /// The response body exceeded [`WkdConfig::max_bytes`].
    #[error("WKD response from {url} is larger than {limit} bytes")]
    TooLarge {
        /// The URL requested.
        url: String,
        /// The limit that was exceeded.
        limit: usize,
    },
}

/// The advanced and direct WKD URLs for `email`, with the default port:
/// `https://openpgpkey.DOMAIN/.well-known/openpgpkey/DOMAIN/hu/HASH?l=LOCAL` and
/// `https://DOMAIN/.well-known/openpgpkey/hu/HASH?l=LOCAL`, where HASH is the z-base32 SHA-1
/// of the ASCII-lowercased local part, DOMAIN is lowercased and LOCAL is the local part as
/// given, percent-encoded.
pub fn wkd_urls(email: &str) -> Result<(String, String), WkdError> {
    wkd_urls_with_port(email, 443)
}

/// [`wkd_urls`] with an explicit HTTPS port (omitted from the URLs when 443).
pub fn wkd_urls_with_port(email: &str, port: u16) -> Result<(String, String), WkdError> {
    let invalid = || WkdError::InvalidEmail(email.to_string());
    let (local, domain) = email.rsplit_once('@').ok_or_else(invalid)?;
    let domain = domain.trim_end_matches('.').to_ascii_lowercase();
    let domain_ok = !domain.is_empty()
        && !domain.starts_with(['.', '-'])
        && domain
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    if local.is_empty() || !domain_ok {
        return Err(invalid());
    }
    let mut hash = HashAlgorithm::SHA1
        .context()
        .map_err(|e| WkdError::Client(e.to_string()))?
        .for_digest();
    hash.update(local.to_ascii_lowercase().as_bytes());
    let digest = hash
        .into_digest()
        .map_err(|e| WkdError::Client(e.to_string()))?;
    let hu = zbase32(&digest);
    let l = percent_encode(local);
    let port = if port == 443 {
        String::new()
    } else {
        format!(":{port}")
    };
    Ok((
        format!("https://openpgpkey.{domain}{port}/.well-known/openpgpkey/{domain}/hu/{hu}?l={l}"),
        format!("https://{domain}{port}/.well-known/openpgpkey/hu/{hu}?l={l}"),
    ))
}

/// Builds an HTTPS client for WKD: web PKI roots plus `extra_root_pem` (PEM certificates, for
/// tests or private CAs), rustls with the ring provider, no redirects, `timeout` per request,
/// and `resolve` pinning host names to addresses (tests; the port in each address is ignored).
pub fn wkd_client(
    extra_root_pem: Option<&[u8]>,
    resolve: &[(String, SocketAddr)],
    timeout: Duration,
) -> Result<reqwest::Client, WkdError> {
    let client_err = |e: &dyn std::fmt::Display| WkdError::Client(e.to_string());
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(pem) = extra_root_pem {
        for der in CertificateDer::pem_slice_iter(pem) {
            let der = der.map_err(|e| client_err(&e))?;
            roots.add(der).map_err(|e| client_err(&e))?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| client_err(&e))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let mut builder = reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .redirect(reqwest::redirect::Policy::none())
        .timeout(timeout)
        .connect_timeout(timeout)
        .user_agent(concat!("sealpost/", env!("CARGO_PKG_VERSION")));
    for (host, addr) in resolve {
        builder = builder.resolve(host, *addr);
    }
    builder.build().map_err(|e| client_err(&e))
}

/// Looks `email` up with the default [`WkdConfig`]; see [`wkd_lookup_with`].
pub async fn wkd_lookup(client: &reqwest::Client, email: &str) -> Result<Option<Cert>, WkdError> {
    wkd_lookup_with(client, email, &WkdConfig::default()).await
}

/// Looks `email` up by the advanced method, then the direct one. Returns the first certificate
/// served that is valid now, has a usable encryption subkey and a valid User ID with this email
/// (compared ASCII case-insensitively, as the WKD hash is); secret material is stripped.
///
/// `Ok(None)` when neither method yields such a certificate and every failure was a 404 or a
/// refused/unresolvable connection (no WKD there). Any other failure (timeout, TLS error,
/// other status, oversized body) is returned as an error if no certificate was found, so the
/// caller can tell "no key" from "try later".
pub async fn wkd_lookup_with(
    client: &reqwest::Client,
    email: &str,
    config: &WkdConfig,
) -> Result<Option<Cert>, WkdError> {
    let (advanced, direct) = wkd_urls_with_port(email, config.https_port)?;
    let mut first_error = None;
    for url in [advanced, direct] {
        match fetch(client, &url, config).await {
            Ok(Some(body)) => {
                if let Some(cert) = pick_cert(&body, email) {
                    return Ok(Some(cert));
                }
                tracing::debug!(%url, "WKD response has no usable certificate for the address");
            }
            Ok(None) => {}
            Err(e) => {
                tracing::debug!(%url, error = %e, "WKD request failed");
                first_error.get_or_insert(e);
            }
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(None),
    }
}

/// GETs `url`: `Ok(Some(body))` on 200, `Ok(None)` on 404 or a connection that could not be
/// made, an error otherwise.
async fn fetch(
    client: &reqwest::Client,
    url: &str,
    config: &WkdConfig,
) -> Result<Option<Vec<u8>>, WkdError> {
    let http = |e: reqwest::Error| WkdError::Http {
        url: url.to_string(),
        reason: e.to_string(),
    };
    let mut response = match client.get(url).timeout(config.timeout).send().await {
        Ok(r) => r,
        Err(e) if e.is_connect() && !e.is_timeout() && is_absent_host(&e) => return Ok(None),
        Err(e) => return Err(http(e)),
    };
    match response.status().as_u16() {
        200 => {}
        404 => return Ok(None),
        status => {
            return Err(WkdError::Status {
                url: url.to_string(),
                status,
            });
        }
    }
    let too_large = || WkdError::TooLarge {
        url: url.to_string(),
        limit: config.max_bytes,
    };
    if response
        .content_length()
        .is_some_and(|n| n > config.max_bytes as u64)
    {
        return Err(too_large());
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(http)? {
        if body.len() + chunk.len() > config.max_bytes {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Some(body))
}

/// True if the connection could not be made because nothing serves there (refused,
/// unreachable, name not found): the only connect errors that mean "no WKD here". TLS
/// handshake failures, which reqwest also reports as connect errors, are not.
fn is_absent_host(e: &reqwest::Error) -> bool {
    use std::io::ErrorKind;
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(err) = source {
        if let Some(io) = err.downcast_ref::<std::io::Error>()
            && matches!(
                io.kind(),
                ErrorKind::ConnectionRefused
                    | ErrorKind::HostUnreachable
                    | ErrorKind::NetworkUnreachable
                    | ErrorKind::AddrNotAvailable
            )
        {
            return true;
        }
        let text = err.to_string();
        if text.contains("dns error") || text.contains("failed to lookup address") {
            return true;
        }
        source = err.source();
    }
    false
}

/// The first usable certificate in `body` with a valid User ID for `email`.
fn pick_cert(body: &[u8], email: &str) -> Option<Cert> {
    let policy = StandardPolicy::new();
    let now = SystemTime::now();
    CertParser::from_bytes(body)
        .ok()?
        .filter_map(Result::ok)
        .map(Cert::strip_secret_key_material)
        .find(|cert| {
            check_usable(cert, &policy, now).is_ok_and(|vc| {
                valid_emails(&vc)
                    .iter()
                    .any(|e| e.eq_ignore_ascii_case(email))
            })
        })
}

fn zbase32(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len() * 8 / 5 + 1);
    let (mut buffer, mut bits) = (0u32, 0u32);
    for &byte in data {
        buffer = (buffer << 8) | u32::from(byte);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(char::from(ZBASE32[((buffer >> bits) & 31) as usize]));
        }
    }
    if bits > 0 {
        out.push(char::from(ZBASE32[((buffer << (5 - bits)) & 31) as usize]));
    }
    out
}

fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use openpgp::cert::CertBuilder;
    use openpgp::serialize::SerializeInto as _;
    use std::collections::HashMap;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    #[test]
    fn draft_test_vector() {
        let (advanced, direct) = wkd_urls("Joe.Doe@Example.ORG").unwrap_or_default();
        assert_eq!(
            advanced,
            "https://openpgpkey.example.org/.well-known/openpgpkey/example.org/hu/iy9q119eutrkn8s1mk4r39qejnbu3n5q?l=Joe.Doe"
        );
        assert_eq!(
            direct,
            "https://example.org/.well-known/openpgpkey/hu/iy9q119eutrkn8s1mk4r39qejnbu3n5q?l=Joe.Doe"
        );
        let (_, direct) = wkd_urls_with_port("a+b c@example.org", 8443).unwrap_or_default();
        assert!(
            direct.starts_with("https://example.org:8443/") && direct.ends_with("?l=a%2Bb%20c")
        );
    }

    #[test]
    fn rejects_unusable_addresses() {
        for bad in [
            "nobody",
            "@example.org",
            "a@",
            "a@exa/mple.org",
            "a@example.org/x#",
            "a@-x.org",
        ] {
            assert!(
                matches!(wkd_urls(bad), Err(WkdError::InvalidEmail(_))),
                "{bad}"
            );
        }
    }

    /// What the test server answers for a request path (without the query).
    type Routes = HashMap<(String, String), (u16, Vec<u8>)>;

    struct Server {
        port: u16,
        ca_pem: String,
    }

    /// An HTTPS server on 127.0.0.1 with a certificate for both WKD hosts of example.org,
    /// issued by a fresh test CA; answers from `routes` keyed by (SNI host, path), 404 otherwise.
    async fn serve(routes: Routes) -> Server {
        let ca_key = rcgen::KeyPair::generate().unwrap_or_else(|e| panic!("{e}"));
        let mut ca_params =
            rcgen::CertificateParams::new(Vec::<String>::new()).unwrap_or_else(|e| panic!("{e}"));
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key)
            .unwrap_or_else(|e| panic!("{e}"));
        let leaf_key = rcgen::KeyPair::generate().unwrap_or_else(|e| panic!("{e}"));
        let leaf = rcgen::CertificateParams::new(vec![
            "example.org".into(),
            "openpgpkey.example.org".into(),
        ])
        .and_then(|p| p.signed_by(&leaf_key, &ca))
        .unwrap_or_else(|e| panic!("{e}"));
        let key = rustls::pki_types::PrivateKeyDer::try_from(leaf_key.serialize_der())
            .unwrap_or_else(|e| panic!("{e}"));
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map(|b| b.with_no_client_auth())
            .and_then(|b| b.with_single_cert(vec![leaf.der().clone()], key))
            .unwrap_or_else(|e| panic!("{e}"));
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let port = listener.local_addr().map(|a| a.port()).unwrap_or_default();
        let routes = Arc::new(routes);
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, routes) = (acceptor.clone(), routes.clone());
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let host = tls
                        .get_ref()
                        .1
                        .server_name()
                        .unwrap_or_default()
                        .to_string();
                    let mut request = Vec::new();
                    let mut buf = [0u8; 4096];
                    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                        match tls.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => request.extend_from_slice(&buf[..n]),
                        }
                    }
                    let text = String::from_utf8_lossy(&request);
                    let target = text.split(' ').nth(1).unwrap_or_default();
                    let path = target.split('?').next().unwrap_or_default().to_string();
                    let (status, body) = routes
                        .get(&(host, path))
                        .cloned()
                        .unwrap_or((404, b"no".to_vec()));
                    let head = format!(
                        "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nLocation: https://example.org/moved\r\nConnection: close\r\n\r\n",
                        body.len()
                    );
                    let _ = tls.write_all(head.as_bytes()).await;
                    let _ = tls.write_all(&body).await;
                    let _ = tls.shutdown().await;
                });
            }
        });
        Server {
            port,
            ca_pem: ca.pem(),
        }
    }

    fn client(server: &Server, advanced_ip: [u8; 4]) -> reqwest::Client {
        let resolve = vec![
            (
                "example.org".to_string(),
                SocketAddr::from(([127, 0, 0, 1], server.port)),
            ),
            (
                "openpgpkey.example.org".to_string(),
                SocketAddr::from((advanced_ip, server.port)),
            ),
        ];
        wkd_client(
            Some(server.ca_pem.as_bytes()),
            &resolve,
            Duration::from_secs(5),
        )
        .unwrap_or_else(|e| panic!("{e}"))
    }

    fn config(server: &Server) -> WkdConfig {
        WkdConfig {
            https_port: server.port,
            ..WkdConfig::default()
        }
    }

    fn cert(uid: &str) -> (Cert, Vec<u8>) {
        let (cert, _) = CertBuilder::general_purpose(Some(uid))
            .generate()
            .unwrap_or_else(|e| panic!("{e}"));
        let public = cert.clone().strip_secret_key_material();
        let bytes = public.to_vec().unwrap_or_default();
        (cert, bytes)
    }

    fn paths(email: &str) -> (String, String) {
        let (a, d) = wkd_urls(email).unwrap_or_default();
        let path = |u: &str| {
            let rest = u.trim_start_matches("https://");
            let slash = rest.find('/').unwrap_or(0);
            rest[slash..]
                .split('?')
                .next()
                .unwrap_or_default()
                .to_string()
        };
        (path(&a), path(&d))
    }

    const ADV: &str = "openpgpkey.example.org";
    const DIRECT: &str = "example.org";

    #[tokio::test]
    async fn advanced_method_first() {
        let (alice, bytes) = cert("Alice <alice@example.org>");
        let (adv, _) = paths("alice@example.org");
        let server = serve(HashMap::from([((ADV.into(), adv), (200, bytes))])).await;
        let found = wkd_lookup_with(
            &client(&server, [127, 0, 0, 1]),
            "alice@example.org",
            &config(&server),
        )
        .await;
        let found = found.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(found.map(|c| c.fingerprint()), Some(alice.fingerprint()));
    }

    #[tokio::test]
    async fn direct_method_when_advanced_host_is_absent_or_404() {
        let (alice, bytes) = cert("Alice <alice@example.org>");
        let (_, direct) = paths("alice@example.org");
        let server = serve(HashMap::from([((DIRECT.into(), direct), (200, bytes))])).await;
        for advanced_ip in [[127, 0, 0, 1], [127, 0, 0, 2]] {
            let found = wkd_lookup_with(
                &client(&server, advanced_ip),
                "alice@example.org",
                &config(&server),
            )
            .await;
            let found = found.unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(found.map(|c| c.fingerprint()), Some(alice.fingerprint()));
        }
        let none = wkd_lookup_with(
            &client(&server, [127, 0, 0, 1]),
            "bob@example.org",
            &config(&server),
        )
        .await;
        assert!(matches!(none, Ok(None)));
    }

    #[tokio::test]
    async fn refuses_wrong_user_id_redirects_and_oversized_bodies() {
        let (_, mallory) = cert("Mallory <mallory@example.org>");
        let (adv, direct) = paths("alice@example.org");
        let server = serve(HashMap::from([
            ((ADV.into(), adv), (200, mallory)),
            ((DIRECT.into(), direct), (302, Vec::new())),
        ]))
        .await;
        let got = wkd_lookup_with(
            &client(&server, [127, 0, 0, 1]),
            "alice@example.org",
            &config(&server),
        )
        .await;
        assert!(
            matches!(got, Err(WkdError::Status { status: 302, .. })),
            "{got:?}"
        );

        let (_, big) = paths("big@example.org");
        let server = serve(HashMap::from([(
            (DIRECT.into(), big),
            (200, vec![0u8; 300 * 1024]),
        )]))
        .await;
        let got = wkd_lookup_with(
            &client(&server, [127, 0, 0, 2]),
            "big@example.org",
            &config(&server),
        )
        .await;
        assert!(matches!(got, Err(WkdError::TooLarge { .. })), "{got:?}");
    }

    #[tokio::test]
    async fn untrusted_server_certificate_is_an_error() {
        let server = serve(HashMap::new()).await;
        let resolve = vec![
            (
                "example.org".to_string(),
                SocketAddr::from(([127, 0, 0, 1], server.port)),
            ),
            (
                ADV.to_string(),
                SocketAddr::from(([127, 0, 0, 1], server.port)),
            ),
        ];
        let plain =
            wkd_client(None, &resolve, Duration::from_secs(5)).unwrap_or_else(|e| panic!("{e}"));
        let got = wkd_lookup_with(&plain, "alice@example.org", &config(&server)).await;
        assert!(matches!(got, Err(WkdError::Http { .. })), "{got:?}");
    }
}
