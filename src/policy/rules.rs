//! The policy file: ordered `[[rule]]` tables saying what a recipient needs and how.
//!
//! Parsing follows `crate::config`: serde with `deny_unknown_fields`, and every error (TOML
//! syntax, unknown key, bad value, a rule that contradicts itself) carries `file:line:column`
//! so an admin can fix it; a bad file is refused as a whole.
//!
//! Matching is a pure function of the rule and a [`MessageContext`]: every match key a rule
//! gives must match (AND), a rule with no match keys matches everything, and the first rule
//! that matches wins.

use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use toml::Spanned;

use super::types::{MethodName, OnUnavailable, Requirement};
use crate::config::Cidr;

/// Why a policy file could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// The file could not be read at all.
    #[error("{path}: {source}")]
    Read {
        /// The file named in the configuration.
        path: PathBuf,
        /// The underlying I/O error.
        source: std::io::Error,
    },
    /// TOML syntax error, unknown key, wrong type or a contradictory rule, located by line and
    /// column.
    #[error("{path}:{line}:{column}: {message}")]
    Parse {
        /// The file being parsed.
        path: PathBuf,
        /// 1-based line of the offending key or value.
        line: usize,
        /// 1-based column.
        column: usize,
        /// What was wrong.
        message: String,
    },
}

/// A loaded policy: the rules in file order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Policy {
    /// The rules, first match wins.
    pub rules: Vec<Rule>,
}

/// `header = { name = "...", value = "..." }`: a top-level header that must be present.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderMatch {
    /// Header field name, compared case-insensitively.
    pub name: String,
    /// Expected value, compared trimmed and case-insensitively.
    pub value: String,
}

/// One validated `[[rule]]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Rule {
    /// Unique name, shown in logs, DSNs and `policy explain`.
    pub name: String,
    /// 1-based line of the rule's `name` key in the file.
    pub line: usize,
    /// Recipient domains (lowercase); `*.example.com` matches any subdomain. Empty: any.
    pub recipient_domains: Vec<String>,
    /// Envelope senders (lowercase): full addresses, `@domain`, or `<>` for the null sender.
    pub senders: Vec<String>,
    /// Recipient addresses (lowercase), or `@domain`.
    pub recipients: Vec<String>,
    /// SMTP AUTH / API user names (lowercase).
    pub authenticated_users: Vec<String>,
    /// Listener addresses (`127.0.0.1:587`) the message arrived on.
    pub listeners: Vec<String>,
    /// Client networks the message came from.
    #[serde(skip)]
    pub client_networks: Vec<Cidr>,
    /// A header that must be present with this value.
    pub header: Option<HeaderMatch>,
    /// A tag that must appear in the Subject (case-insensitive), e.g. `[secure]`.
    pub subject_tag: Option<String>,
    /// Remove `subject_tag` from the Subject before delivery.
    pub strip_subject_tag: bool,
    /// Replace the outer Subject of end-to-end encrypted copies with this text.
    pub mask_subject: Option<String>,
    /// The protection the recipient needs.
    pub require: Requirement,
    /// Methods in preference order (defaults depend on `require`, see the example file).
    pub methods: Vec<MethodName>,
    /// What to do when no method is possible.
    pub on_unavailable: OnUnavailable,
}

/// What the matcher knows about a message when choosing a rule for one recipient.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MessageContext {
    /// Envelope sender (MAIL FROM), empty for the null sender.
    pub sender: String,
    /// The authenticated user, if the client authenticated.
    pub authenticated: Option<String>,
    /// The listener address the message arrived on (`127.0.0.1:587`); `None` for the API.
    pub listener: Option<String>,
    /// The client's IP address; `None` for the API.
    pub client_ip: Option<IpAddr>,
    /// Top-level header fields as (name, value), in message order.
    pub headers: Vec<(String, String)>,
    /// The decoded Subject, if any.
    pub subject: Option<String>,
}

impl MessageContext {
    /// Values of the top-level headers called `name` (case-insensitive), in message order.
    pub fn header_values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.headers
            .iter()
            .filter(move |(n, _)| n.trim().eq_ignore_ascii_case(name.trim()))
            .map(|(_, v)| v.as_str())
    }
}

impl Policy {
    /// Reads and validates a policy file.
    pub fn load(path: &Path) -> Result<Self, PolicyError> {
        let text = std::fs::read_to_string(path).map_err(|source| PolicyError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses policy TOML; `path` is only used in error messages.
    pub fn parse(text: &str, path: &Path) -> Result<Self, PolicyError> {
        let error = |span: Option<Range<usize>>, message: String| {
            let (line, column) = span.map(|s| line_col(text, s.start)).unwrap_or((1, 1));
            PolicyError::Parse {
                path: path.to_path_buf(),
                line,
                column,
                message,
            }
        };
        let raw: RawPolicy =
            toml::from_str(text).map_err(|e| error(e.span(), e.message().to_string()))?;
        let mut rules: Vec<Rule> = Vec::with_capacity(raw.rule.len());
        for r in raw.rule {
            let rule = r
                .into_rule(text)
                .map_err(|(span, message)| error(Some(span), message))?;
            if let Some(first) = rules.iter().find(|o| o.name == rule.name) {
                let message = format!(
                    "rule name {:?} already used by the rule on line {}",
                    rule.name, first.line
                );
                return Err(PolicyError::Parse {
                    path: path.to_path_buf(),
                    line: rule.line,
                    column: 1,
                    message,
                });
            }
            rules.push(rule);
        }
        Ok(Self { rules })
    }

    /// The first rule that matches `recipient` in `ctx`, or `None` (the default: require none,
    /// opportunistic TLS).
    pub fn matching_rule(&self, ctx: &MessageContext, recipient: &str) -> Option<&Rule> {
        self.rules.iter().find(|r| r.matches(ctx, recipient))
    }
}

impl Rule {
    /// True when every match key this rule gives matches the message and recipient.
    pub fn matches(&self, ctx: &MessageContext, recipient: &str) -> bool {
        let recipient = recipient.trim().to_ascii_lowercase();
        let rcpt_domain = domain_of(&recipient);
        let sender = ctx.sender.trim().to_ascii_lowercase();
        (self.recipient_domains.is_empty()
            || self
                .recipient_domains
                .iter()
                .any(|d| domain_matches(d, rcpt_domain)))
            && (self.recipients.is_empty()
                || self
                    .recipients
                    .iter()
                    .any(|a| address_matches(a, &recipient)))
            && (self.senders.is_empty() || self.senders.iter().any(|a| address_matches(a, &sender)))
            && (self.authenticated_users.is_empty()
                || ctx.authenticated.as_deref().is_some_and(|u| {
                    self.authenticated_users
                        .iter()
                        .any(|a| a.eq_ignore_ascii_case(u.trim()))
                }))
            && (self.listeners.is_empty()
                || ctx
                    .listener
                    .as_deref()
                    .is_some_and(|l| self.listeners.iter().any(|a| listener_matches(a, l))))
            && (self.client_networks.is_empty()
                || ctx
                    .client_ip
                    .is_some_and(|ip| self.client_networks.iter().any(|n| n.contains(ip))))
            && self.header.as_ref().is_none_or(|h| {
                ctx.header_values(&h.name)
                    .any(|v| v.trim().eq_ignore_ascii_case(h.value.trim()))
            })
            && self.subject_tag.as_deref().is_none_or(|tag| {
                ctx.subject
                    .as_deref()
                    .is_some_and(|s| find_ignore_case(s, tag).is_some())
            })
    }

    /// The Subject to deliver: with `subject_tag` removed when `strip_subject_tag` is set
    /// (one occurrence, case-insensitive, whitespace around it collapsed), unchanged otherwise.
    pub fn delivered_subject(&self, subject: &str) -> String {
        match (&self.subject_tag, self.strip_subject_tag) {
            (Some(tag), true) => match find_ignore_case(subject, tag) {
                Some(at) => {
                    let before = subject[..at].trim_end();
                    let after = subject[at + tag.len()..].trim_start();
                    match (before.is_empty(), after.is_empty()) {
                        (true, _) => after.to_string(),
                        (_, true) => before.to_string(),
                        _ => format!("{before} {after}"),
                    }
                }
                None => subject.to_string(),
            },
            _ => subject.to_string(),
        }
    }
}

/// The file as serde sees it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    #[serde(default)]
    rule: Vec<RawRule>,
}

/// One `[[rule]]` before validation; spans locate validation errors.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    name: Spanned<String>,
    recipient_domains: Option<Spanned<Vec<String>>>,
    senders: Option<Spanned<Vec<String>>>,
    recipients: Option<Spanned<Vec<String>>>,
    authenticated_users: Option<Spanned<Vec<String>>>,
    listeners: Option<Spanned<Vec<String>>>,
    client_networks: Option<Spanned<Vec<Cidr>>>,
    header: Option<Spanned<HeaderMatch>>,
    subject_tag: Option<Spanned<String>>,
    strip_subject_tag: Option<Spanned<bool>>,
    mask_subject: Option<Spanned<String>>,
    require: Option<Spanned<Requirement>>,
    methods: Option<Spanned<Vec<MethodName>>>,
    on_unavailable: Option<OnUnavailable>,
}

/// A validation failure: where and why.
type Located = (Range<usize>, String);

impl RawRule {
    fn into_rule(self, text: &str) -> Result<Rule, Located> {
        let name_span = self.name.span();
        let name = self.name.into_inner().trim().to_string();
        if name.is_empty() {
            return Err((name_span, "rule name must not be empty".into()));
        }
        let require_span = self.require.as_ref().map(|r| r.span());
        let require = self
            .require
            .map(Spanned::into_inner)
            .unwrap_or(Requirement::None);
        let methods = match self.methods {
            Some(m) => {
                let span = m.span();
                let methods = m.into_inner();
                check_methods(require, &methods).map_err(|msg| (span, msg))?;
                methods
            }
            None => default_methods(require),
        };
        if require == Requirement::Encrypted && methods.is_empty() {
            let span = require_span.unwrap_or_else(|| name_span.clone());
            return Err((
                span,
                "require = \"encrypted\" needs at least one method".into(),
            ));
        }
        let header = match self.header {
            Some(h) => {
                let span = h.span();
                let h = h.into_inner();
                if h.name.trim().is_empty() || h.name.contains([':', ' ', '\t']) {
                    return Err((
                        span,
                        format!("header name {:?} is not a field name", h.name),
                    ));
                }
                Some(h)
            }
            None => None,
        };
        let subject_tag = match self.subject_tag {
            Some(t) if t.get_ref().trim().is_empty() => {
                return Err((t.span(), "subject_tag must not be empty".into()));
            }
            Some(t) => Some(t.into_inner().trim().to_string()),
            None => None,
        };
        let strip_subject_tag = match self.strip_subject_tag {
            Some(s) if *s.get_ref() && subject_tag.is_none() => {
                return Err((s.span(), "strip_subject_tag needs a subject_tag".into()));
            }
            Some(s) => s.into_inner(),
            None => false,
        };
        let listeners_span = self.listeners.as_ref().map(|l| l.span());
        let listeners = list(self.listeners)?;
        if let (Some(span), Some(bad)) = (
            listeners_span,
            listeners.iter().find(|l| l.parse::<SocketAddr>().is_err()),
        ) {
            return Err((span, format!("listener {bad:?} is not an ip:port address")));
        }
        let recipient_domains = list(self.recipient_domains)?
            .into_iter()
            .map(|d| d.trim_end_matches('.').to_string())
            .collect();
        Ok(Rule {
            line: line_col(text, name_span.start).0,
            name,
            recipient_domains,
            senders: list(self.senders)?,
            recipients: list(self.recipients)?,
            authenticated_users: list(self.authenticated_users)?,
            listeners,
            client_networks: match self.client_networks {
                Some(n) if n.get_ref().is_empty() => return Err((n.span(), empty_list())),
                Some(n) => n.into_inner(),
                None => Vec::new(),
            },
            header,
            subject_tag,
            strip_subject_tag,
            mask_subject: self.mask_subject.map(Spanned::into_inner),
            require,
            methods,
            on_unavailable: self.on_unavailable.unwrap_or(OnUnavailable::Defer),
        })
    }
}

/// A list match key, lowercased and trimmed; an explicitly empty list is refused because it
/// would match nothing, which is never what the admin meant.
fn list(v: Option<Spanned<Vec<String>>>) -> Result<Vec<String>, Located> {
    let Some(v) = v else {
        return Ok(Vec::new());
    };
    let span = v.span();
    let items: Vec<String> = v
        .into_inner()
        .into_iter()
        .map(|s| s.trim().to_ascii_lowercase())
        .collect();
    if items.is_empty() {
        return Err((span, empty_list()));
    }
    if items.iter().any(|s| s.is_empty()) {
        return Err((span, "list entries must not be empty".into()));
    }
    Ok(items)
}

fn empty_list() -> String {
    "an empty list matches nothing; remove the key to match everything".into()
}

/// The methods a rule gets when it lists none: encryption means end-to-end; the TLS levels
/// mean themselves.
fn default_methods(require: Requirement) -> Vec<MethodName> {
    match require {
        Requirement::None => Vec::new(),
        Requirement::Tls => vec![MethodName::Tls],
        Requirement::VerifiedTls => vec![MethodName::VerifiedTls],
        Requirement::Encrypted => vec![MethodName::Pgp, MethodName::Smime],
    }
}

/// Refuses duplicates and methods that cannot satisfy `require`: plain `tls` never satisfies
/// `verified-tls` or `encrypted`; `verified-tls` satisfies `encrypted` only because listing it
/// is the admin's explicit choice.
pub(crate) fn check_methods(require: Requirement, methods: &[MethodName]) -> Result<(), String> {
    for (i, m) in methods.iter().enumerate() {
        if methods[..i].contains(m) {
            return Err(format!("method {:?} listed twice", method_name(*m)));
        }
        if *m == MethodName::Tls && require >= Requirement::VerifiedTls {
            return Err(format!(
                "method \"tls\" is weaker than require = {:?}",
                requirement_name(require)
            ));
        }
    }
    Ok(())
}

/// The spelling used in the policy file.
pub fn method_name(m: MethodName) -> &'static str {
    match m {
        MethodName::Pgp => "pgp",
        MethodName::Smime => "smime",
        MethodName::VerifiedTls => "verified-tls",
        MethodName::Tls => "tls",
    }
}

/// The spelling used in the policy file.
pub fn requirement_name(r: Requirement) -> &'static str {
    match r {
        Requirement::None => "none",
        Requirement::Tls => "tls",
        Requirement::VerifiedTls => "verified-tls",
        Requirement::Encrypted => "encrypted",
    }
}

/// The domain part of a lowercase address (empty when there is no `@`).
fn domain_of(address: &str) -> &str {
    address
        .rsplit_once('@')
        .map(|(_, d)| d.trim_end_matches('.'))
        .unwrap_or("")
}

/// `pattern` is lowercase: `example.com` exactly, or `*.example.com` for any subdomain.
fn domain_matches(pattern: &str, domain: &str) -> bool {
    match pattern.strip_prefix("*.") {
        Some(parent) => domain
            .strip_suffix(parent)
            .is_some_and(|head| head.len() > 1 && head.ends_with('.')),
        None => pattern == domain,
    }
}

/// `pattern` is lowercase: a full address, `@domain`, or `<>` for the null sender.
fn address_matches(pattern: &str, address: &str) -> bool {
    let address = address.trim_start_matches('<').trim_end_matches('>');
    if pattern == "<>" {
        return address.is_empty();
    }
    match pattern.strip_prefix('@') {
        Some(d) => !address.is_empty() && domain_matches(d, domain_of(address)),
        None => pattern == address,
    }
}

/// Listener addresses compare as socket addresses when both parse, as text otherwise.
fn listener_matches(pattern: &str, listener: &str) -> bool {
    match (
        pattern.parse::<SocketAddr>(),
        listener.trim().parse::<SocketAddr>(),
    ) {
        (Ok(a), Ok(b)) => a == b,
        _ => pattern.eq_ignore_ascii_case(listener.trim()),
    }
}

/// Byte offset of the first case-insensitive (ASCII) occurrence of `needle`.
fn find_ignore_case(haystack: &str, needle: &str) -> Option<usize> {
    if needle.is_empty() {
        return Some(0);
    }
    let (h, n) = (haystack.as_bytes(), needle.as_bytes());
    (0..=h.len().checked_sub(n.len())?)
        .filter(|&i| haystack.is_char_boundary(i))
        .find(|&i| h[i..i + n.len()].eq_ignore_ascii_case(n))
}

/// 1-based line and column of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.len() - before.rfind('\n').map(|i| i + 1).unwrap_or(0) + 1;
    (line, column)
}

#[cfg(test)]
#[path = "rules_tests.rs"]
mod tests;
