//! Fetching `https://mta-sts.DOMAIN/.well-known/mta-sts.txt` (RFC 8461 §3.3): rustls with the
//! webpki roots (plus an optional extra CA file for tests), no redirects, a time limit and a
//! size limit enforced while streaming.

use std::error::Error as _;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::RootCertStore;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

use super::{StsError, StsPolicy, parse_policy};

/// The whole fetch (connect, TLS, headers, body) must finish within this time.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// Bodies larger than this are refused; real policies are a few hundred bytes.
pub const MAX_POLICY_BYTES: usize = 64 * 1024;

/// The policy URL for `domain` (lowercase, trailing dot removed).
pub fn policy_url(domain: &str) -> String {
    let domain = domain.trim_end_matches('.').to_ascii_lowercase();
    format!("https://mta-sts.{domain}/.well-known/mta-sts.txt")
}

/// Builds the HTTPS client for policy fetches: rustls with the ring provider, the webpki
/// roots plus every certificate in `extra_ca_pem`, redirects off, [`FETCH_TIMEOUT`], no
/// proxies from the environment (an MTA talks to the policy host directly). Each
/// `resolve_overrides` entry maps a host name to an address (tests point
/// `mta-sts.example.com` at a loopback server; a non-zero port is used as given).
pub fn https_client(
    extra_ca_pem: Option<&Path>,
    resolve_overrides: &[(String, SocketAddr)],
) -> Result<reqwest::Client, StsError> {
    let mut roots = RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    if let Some(path) = extra_ca_pem {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
            .map_err(|e| StsError::Client(format!("{}: {e}", path.display())))?
            .collect::<Result<_, _>>()
            .map_err(|e| StsError::Client(format!("{}: {e}", path.display())))?;
        if certs.is_empty() {
            return Err(StsError::Client(format!(
                "{}: no certificate found",
                path.display()
            )));
        }
        for cert in certs {
            roots
                .add(cert)
                .map_err(|e| StsError::Client(format!("{}: {e}", path.display())))?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| StsError::Client(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let mut builder = reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .redirect(reqwest::redirect::Policy::none())
        .timeout(FETCH_TIMEOUT)
        .no_proxy()
        .user_agent(concat!("sealpost/", env!("CARGO_PKG_VERSION")));
    for (host, addr) in resolve_overrides {
        builder = builder.resolve(host, *addr);
    }
    builder.build().map_err(|e| StsError::Client(e.to_string()))
}

/// Fetches and parses the policy of `domain`. A redirect, a status other than 200, a media
/// type other than `text/plain`, a body over [`MAX_POLICY_BYTES`] (checked while reading, so a
/// huge body is never buffered) or a certificate that does not verify is an error.
pub async fn fetch_policy(client: &reqwest::Client, domain: &str) -> Result<StsPolicy, StsError> {
    let mut response = client
        .get(policy_url(domain))
        .send()
        .await
        .map_err(classify)?;
    let status = response.status();
    if status.is_redirection() {
        return Err(StsError::Redirect {
            status: status.as_u16(),
        });
    }
    if status != reqwest::StatusCode::OK {
        return Err(StsError::Status(status.as_u16()));
    }
    let content_type = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .unwrap_or_default();
    if !is_text_plain(&content_type) {
        return Err(StsError::ContentType(content_type));
    }
    if response
        .content_length()
        .is_some_and(|n| n > MAX_POLICY_BYTES as u64)
    {
        return Err(StsError::TooLarge(MAX_POLICY_BYTES));
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(classify)? {
        if body.len() + chunk.len() > MAX_POLICY_BYTES {
            return Err(StsError::TooLarge(MAX_POLICY_BYTES));
        }
        body.extend_from_slice(&chunk);
    }
    let text = std::str::from_utf8(&body)
        .map_err(|_| StsError::PolicyInvalid("policy is not UTF-8 text".into()))?;
    parse_policy(text)
}

/// `text/plain`, any parameters, any case (RFC 8461 §3.3: the media type is checked, the
/// charset is not).
fn is_text_plain(content_type: &str) -> bool {
    content_type
        .split(';')
        .next()
        .is_some_and(|t| t.trim().eq_ignore_ascii_case("text/plain"))
}

/// Sorts a reqwest error into certificate failure or other fetch failure, keeping the
/// innermost cause's text (reqwest's own message is just "error sending request").
fn classify(e: reqwest::Error) -> StsError {
    if e.is_timeout() {
        return StsError::Fetch(format!("timed out after {}s", FETCH_TIMEOUT.as_secs()));
    }
    let mut text = e.to_string();
    let mut certificate = false;
    // io::Error hides the error it wraps from `source()` (it returns the inner error's
    // source), and connectors nest io::Errors, so follow `get_ref()` as well.
    let mut pending: Vec<&(dyn std::error::Error + 'static)> = e.source().into_iter().collect();
    while let Some(err) = pending.pop() {
        text = err.to_string();
        if let Some(tls) = err.downcast_ref::<rustls::Error>() {
            certificate |= matches!(
                tls,
                rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented
            );
        }
        match err
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            Some(inner) => pending.push(inner),
            None => pending.extend(err.source()),
        }
    }
    if certificate {
        StsError::Certificate(text)
    } else {
        StsError::Fetch(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn media_types() {
        let cases = [
            ("text/plain", true),
            ("text/plain; charset=utf-8", true),
            ("Text/Plain ;charset=us-ascii", true),
            ("text/html", false),
            ("text/plain-ish", false),
            ("", false),
            ("application/octet-stream", false),
        ];
        for (ct, want) in cases {
            assert_eq!(is_text_plain(ct), want, "{ct}");
        }
    }

    #[test]
    fn url() {
        assert_eq!(
            policy_url("Example.COM."),
            "https://mta-sts.example.com/.well-known/mta-sts.txt"
        );
    }

    #[test]
    fn client_builds_and_bad_ca_file_is_refused() {
        assert!(https_client(None, &[]).is_ok());
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        assert!(matches!(
            https_client(Some(&missing), &[]),
            Err(StsError::Client(_))
        ));
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        assert!(matches!(
            https_client(Some(&empty), &[]),
            Err(StsError::Client(_))
        ));
    }
}
