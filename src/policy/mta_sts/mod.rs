//! MTA-STS (RFC 8461): the `_mta-sts` TXT record, the policy file, MX pattern matching, the
//! HTTPS fetch and the cache that decides when to fetch.
//!
//! Parsing is strict where the RFC's grammar is (version, id, mode, max_age) and tolerant
//! where real publishers differ (LF or CRLF, trailing whitespace, no final newline, unknown
//! keys). An `mx` value that is an IP address or not a host name is ignored: turning it into an
//! IP check or an empty match list would block a queue for a typo (C27).

mod cache;
mod fetch;

pub use cache::{StsCache, StsCacheEntry, StsProbe};
pub use fetch::{FETCH_TIMEOUT, MAX_POLICY_BYTES, fetch_policy, https_client, policy_url};

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

/// The largest `max_age` RFC 8461 §3.2 allows: one year in seconds.
pub const MAX_AGE_LIMIT: u64 = 31_557_600;

/// Why a record or policy was not usable; [`StsError::report_code`] gives the RFC 8460 name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StsError {
    /// The `_mta-sts` TXT record is malformed, or there is more than one.
    #[error("invalid _mta-sts TXT record: {0}")]
    TxtInvalid(String),
    /// The policy body does not follow RFC 8461 §3.2.
    #[error("sts-policy-invalid: {0}")]
    PolicyInvalid(String),
    /// The HTTPS client could not be built (bad extra CA file, TLS setup).
    #[error("cannot build the MTA-STS HTTPS client: {0}")]
    Client(String),
    /// The server's certificate did not verify.
    #[error("sts-webpki-invalid: {0}")]
    Certificate(String),
    /// Connection, timeout or protocol failure.
    #[error("sts-policy-fetch-error: {0}")]
    Fetch(String),
    /// The server answered with a redirect, which RFC 8461 §3.3 forbids following.
    #[error("sts-policy-fetch-error: redirect ({status}) not followed")]
    Redirect {
        /// The 3xx status.
        status: u16,
    },
    /// The server answered with a status other than 200.
    #[error("sts-policy-fetch-error: HTTP status {0}")]
    Status(u16),
    /// The media type was not `text/plain`.
    #[error("sts-policy-fetch-error: content type {0:?} is not text/plain")]
    ContentType(String),
    /// The body was larger than [`MAX_POLICY_BYTES`].
    #[error("sts-policy-fetch-error: policy larger than {0} bytes")]
    TooLarge(usize),
}

impl StsError {
    /// The RFC 8460 result type for TLS reports and `policy explain`.
    pub fn report_code(&self) -> &'static str {
        match self {
            Self::TxtInvalid(_) | Self::PolicyInvalid(_) => "sts-policy-invalid",
            Self::Certificate(_) => "sts-webpki-invalid",
            _ => "sts-policy-fetch-error",
        }
    }
}

/// A parsed `v=STSv1; id=...;` record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StsTxt {
    /// The policy id: 1 to 32 letters and digits; a change means "fetch again".
    pub id: String,
}

/// The policy mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StsMode {
    /// Deliver only over verified TLS to matching MX hosts.
    Enforce,
    /// Report failures but deliver anyway.
    Testing,
    /// The domain withdrew its policy.
    None,
}

/// A parsed policy file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StsPolicy {
    /// The mode.
    pub mode: StsMode,
    /// Valid `mx` patterns, lowercase, without trailing dot, in file order.
    pub mx: Vec<String>,
    /// Seconds the policy may be cached.
    pub max_age: u64,
    /// `mx` values that were ignored (IP addresses, malformed names), for `policy explain`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ignored_mx: Vec<String>,
}

impl StsPolicy {
    /// True when `host` matches one of the policy's `mx` patterns.
    pub fn mx_allowed(&self, host: &str) -> bool {
        self.mx.iter().any(|p| mx_matches(p, host))
    }
}

/// Parses one TXT record (its strings already concatenated). Strict: `v=STSv1` first, exactly
/// one `id` of 1 to 32 letters and digits; other well-formed fields are ignored.
pub fn parse_txt(record: &str) -> Result<StsTxt, StsError> {
    let bad = |why: &str| StsError::TxtInvalid(format!("{why}: {record:?}"));
    let mut fields = record.split(';');
    if fields.next().map(|v| v.trim_end_matches([' ', '\t'])) != Some("v=STSv1") {
        return Err(bad("does not start with v=STSv1"));
    }
    let fields: Vec<&str> = fields.map(|f| f.trim_matches([' ', '\t'])).collect();
    let mut id = None;
    for (i, field) in fields.iter().enumerate() {
        if field.is_empty() {
            if i + 1 == fields.len() {
                break; // the optional trailing ';'
            }
            return Err(bad("empty field"));
        }
        let Some((name, value)) = field.split_once('=') else {
            return Err(bad("field without '='"));
        };
        if name == "id" {
            if id.is_some() {
                return Err(bad("more than one id"));
            }
            if value.is_empty()
                || value.len() > 32
                || !value.bytes().all(|b| b.is_ascii_alphanumeric())
            {
                return Err(bad("id must be 1 to 32 letters and digits"));
            }
            id = Some(value.to_string());
        } else if !valid_extension(name, value) {
            return Err(bad("malformed field"));
        }
    }
    id.map(|id| StsTxt { id }).ok_or_else(|| bad("no id"))
}

/// Picks the STS record among all TXT strings at `_mta-sts.DOMAIN`: records not starting with
/// `v=STSv1` are ignored; none gives `Ok(None)`; more than one is invalid (RFC 8461 §3.1).
pub fn select_txt(records: &[String]) -> Result<Option<StsTxt>, StsError> {
    let sts: Vec<&String> = records
        .iter()
        .filter(|r| r.starts_with("v=STSv1"))
        .collect();
    match sts.as_slice() {
        [] => Ok(None),
        [one] => parse_txt(one).map(Some),
        _ => Err(StsError::TxtInvalid(format!(
            "{} v=STSv1 records, exactly one allowed",
            sts.len()
        ))),
    }
}

/// Parses a policy body (RFC 8461 §3.2) per C27: LF or CRLF, surrounding whitespace on lines,
/// a missing final newline and unknown keys are fine; for known keys the first occurrence
/// counts (every `mx` counts). Invalid: wrong or missing version, unknown or missing mode,
/// `max_age` not 1 to 10 digits or above one year, and enforce/testing without a valid `mx`.
pub fn parse_policy(body: &str) -> Result<StsPolicy, StsError> {
    let bad = |why: String| StsError::PolicyInvalid(why);
    let (mut version, mut mode, mut max_age) = (None, None, None);
    let (mut mx, mut ignored_mx) = (Vec::new(), Vec::new());
    for line in body.split('\n') {
        let line = line.trim_matches([' ', '\t', '\r']);
        if line.is_empty() {
            continue;
        }
        let Some((key, value)) = line.split_once(':') else {
            return Err(bad(format!("line without ':': {line:?}")));
        };
        let value = value.trim_matches([' ', '\t']);
        match key {
            "version" if version.is_none() => version = Some(value),
            "mode" if mode.is_none() => mode = Some(value),
            "max_age" if max_age.is_none() => max_age = Some(value),
            "mx" => match mx_pattern(value) {
                Some(p) => mx.push(p),
                None => ignored_mx.push(value.to_string()),
            },
            _ => {}
        }
    }
    if version != Some("STSv1") {
        return Err(bad(format!("version must be STSv1, found {version:?}")));
    }
    let mode = match mode {
        Some("enforce") => StsMode::Enforce,
        Some("testing") => StsMode::Testing,
        Some("none") => StsMode::None,
        other => {
            return Err(bad(format!(
                "mode must be enforce, testing or none: {other:?}"
            )));
        }
    };
    let max_age = parse_max_age(max_age).ok_or_else(|| {
        bad(format!(
            "max_age must be 1 to 10 digits and at most {MAX_AGE_LIMIT}: {max_age:?}"
        ))
    })?;
    if mx.is_empty() && mode != StsMode::None {
        return Err(bad("no valid mx pattern".into()));
    }
    Ok(StsPolicy {
        mode,
        mx,
        max_age,
        ignored_mx,
    })
}

/// True when `host` matches `pattern`: case-insensitive, trailing dots ignored, and
/// `*.example.net` matching exactly one extra label (`mx1.example.net`, not `example.net` or
/// `a.b.example.net`). IP-address patterns never match.
pub fn mx_matches(pattern: &str, host: &str) -> bool {
    let Some(pattern) = mx_pattern(pattern) else {
        return false;
    };
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    match pattern.strip_prefix("*.") {
        Some(parent) => host
            .split_once('.')
            .is_some_and(|(label, rest)| !label.is_empty() && rest == parent),
        None => host == pattern,
    }
}

/// A valid `mx` pattern, normalised (lowercase, no trailing dot), or `None` for IP addresses
/// and anything that is not a host name with an optional leading `*.`.
fn mx_pattern(value: &str) -> Option<String> {
    let v = value.trim_end_matches('.').to_ascii_lowercase();
    let unbracketed = v.trim_start_matches('[').trim_end_matches(']');
    if unbracketed.parse::<IpAddr>().is_ok() {
        return None;
    }
    let name = v.strip_prefix("*.").unwrap_or(&v);
    let labels: Vec<&str> = name.split('.').collect();
    let label_ok = |l: &&str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    // A host name has at least two labels here: a bare label or an all-numeric last label is
    // a typo or an address, not an MX host.
    let last_alpha = labels
        .last()
        .is_some_and(|l| l.bytes().any(|b| b.is_ascii_alphabetic()));
    (labels.len() >= 2 && name.len() <= 253 && labels.iter().all(label_ok) && last_alpha)
        .then_some(v)
}

/// `1*10DIGIT` and at most [`MAX_AGE_LIMIT`]; parsing at most ten digits cannot overflow.
fn parse_max_age(value: Option<&str>) -> Option<u64> {
    let v = value?;
    if v.is_empty() || v.len() > 10 || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    v.parse::<u64>().ok().filter(|&n| n <= MAX_AGE_LIMIT)
}

/// `sts-ext-name "=" sts-ext-value` from RFC 8461 §3.1.
fn valid_extension(name: &str, value: &str) -> bool {
    let n = name.as_bytes();
    !n.is_empty()
        && n.len() <= 32
        && n[0].is_ascii_alphanumeric()
        && n.iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
        && !value.is_empty()
        && value
            .bytes()
            .all(|b| (0x21..=0x7e).contains(&b) && b != b';' && b != b'=')
}

#[cfg(test)]
mod tests;
