//! Mailbox addresses and envelope paths (RFC 5321 §4.1.2, RFC 6531 for SMTPUTF8).
//!
//! An [`Address`] that exists has passed the grammar: the session never hands a half-checked
//! string to policy, the spool or a transport (CVE-2020-7247 came from a check whose failure
//! path fell through). Source routes are parsed and thrown away; `%` and `!` are ordinary
//! local-part characters and never select a route.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

/// Longest local part in octets (RFC 5321 §4.5.3.1.1).
pub const MAX_LOCAL_PART: usize = 64;
/// Longest domain in octets (RFC 5321 §4.5.3.1.2).
pub const MAX_DOMAIN: usize = 255;
/// Longest domain label in octets (RFC 1035 §2.3.4).
const MAX_LABEL: usize = 63;

/// Why text could not be read as an address or a path.
///
/// The session maps every variant to one reply per command (553 5.1.7 for a sender,
/// 501 5.1.3 for a recipient), so the variants exist for logs and tests.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    /// The path was not enclosed in `<` and `>`.
    #[error("path must be enclosed in angle brackets")]
    MissingBrackets,
    /// The local part broke the dot-string / quoted-string grammar.
    #[error("invalid local part")]
    LocalPart,
    /// The local part is longer than 64 octets.
    #[error("local part too long")]
    LocalPartTooLong,
    /// The domain broke the sub-domain / address-literal grammar.
    #[error("invalid domain")]
    Domain,
    /// The domain is longer than 255 octets.
    #[error("domain too long")]
    DomainTooLong,
    /// There was no `@domain` where one is required.
    #[error("missing domain")]
    MissingDomain,
    /// Non-ASCII text without SMTPUTF8 on the MAIL command (RFC 6531 §3.2).
    #[error("non-ASCII address without SMTPUTF8")]
    NonAscii,
    /// The source route before `:` was malformed.
    #[error("invalid source route")]
    SourceRoute,
    /// `<>` where a mailbox is required (only MAIL may use the null path).
    #[error("null path not allowed here")]
    NullPath,
}

/// A domain: a lowercased dot-atom name or an address literal.
///
/// Lowercased once at parse time so that relay checks and queue grouping compare plain
/// strings; U-labels stay UTF-8 (SMTPUTF8) rather than being converted to A-labels here.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Domain {
    /// A host or domain name such as `example.com`.
    Name(String),
    /// `[192.0.2.1]`.
    Ipv4(Ipv4Addr),
    /// `[IPv6:2001:db8::1]`.
    Ipv6(Ipv6Addr),
}

impl Domain {
    /// Parses a domain or address literal; `utf8` allows U-labels (SMTPUTF8 transactions).
    pub fn parse(s: &str, utf8: bool) -> Result<Self, AddressError> {
        if s.len() > MAX_DOMAIN {
            return Err(AddressError::DomainTooLong);
        }
        if let Some(inner) = s.strip_prefix('[') {
            let inner = inner.strip_suffix(']').ok_or(AddressError::Domain)?;
            return parse_literal(inner);
        }
        if s.is_empty() {
            return Err(AddressError::Domain);
        }
        if !utf8 && !s.is_ascii() {
            return Err(AddressError::NonAscii);
        }
        for label in s.split('.') {
            if !valid_label(label) {
                return Err(AddressError::Domain);
            }
        }
        Ok(Domain::Name(s.to_lowercase()))
    }

    /// True when the domain contains non-ASCII characters (needs SMTPUTF8 to relay).
    pub fn is_utf8(&self) -> bool {
        matches!(self, Domain::Name(n) if !n.is_ascii())
    }
}

impl fmt::Display for Domain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Domain::Name(n) => f.write_str(n),
            Domain::Ipv4(a) => write!(f, "[{a}]"),
            Domain::Ipv6(a) => write!(f, "[IPv6:{a}]"),
        }
    }
}

/// A mailbox `local@domain` that passed the RFC 5321 grammar.
///
/// `local_part` holds the unquoted form (quotes and backslashes removed) so that
/// `"a b"@x` and `a\ b` style spellings compare equal; [`fmt::Display`] re-quotes it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Address {
    /// The local part, case preserved (only the destination host may interpret case).
    pub local_part: String,
    /// The domain, lowercased.
    pub domain: Domain,
}

impl Address {
    /// Parses a bare mailbox `local@domain` (no angle brackets, no source route).
    pub fn parse(s: &str, utf8: bool) -> Result<Self, AddressError> {
        let (local_part, rest) = parse_local_part(s, utf8)?;
        let domain = rest.strip_prefix('@').ok_or(AddressError::MissingDomain)?;
        Ok(Address {
            local_part,
            domain: Domain::parse(domain, utf8)?,
        })
    }

    /// True when any part needs SMTPUTF8 to be relayed.
    pub fn is_utf8(&self) -> bool {
        !self.local_part.is_ascii() || self.domain.is_utf8()
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if is_dot_string(&self.local_part, true) {
            f.write_str(&self.local_part)?;
        } else {
            f.write_str("\"")?;
            for c in self.local_part.chars() {
                if c == '"' || c == '\\' {
                    f.write_str("\\")?;
                }
                write!(f, "{c}")?;
            }
            f.write_str("\"")?;
        }
        write!(f, "@{}", self.domain)
    }
}

/// A RCPT TO path: a full mailbox, or a local part without domain.
///
/// RFC 5321 §4.5.1 lets `<postmaster>` stand without a domain; the session decides what
/// any other domainless path means (it answers 550 5.1.1: such mailboxes never exist).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RcptPath {
    /// `<local@domain>`, source route already discarded.
    Mailbox(Address),
    /// `<local>`: the unquoted local part.
    Domainless(String),
}

/// Parses a MAIL FROM reverse-path `<...>`: `None` is the null path `<>`.
pub fn parse_reverse_path(s: &str, utf8: bool) -> Result<Option<Address>, AddressError> {
    let inner = strip_brackets(s)?;
    if inner.is_empty() {
        return Ok(None);
    }
    Address::parse(strip_source_route(inner)?, utf8).map(Some)
}

/// Parses a RCPT TO forward-path `<...>`; the null path is refused.
pub fn parse_forward_path(s: &str, utf8: bool) -> Result<RcptPath, AddressError> {
    let inner = strip_brackets(s)?;
    if inner.is_empty() {
        return Err(AddressError::NullPath);
    }
    let mailbox = strip_source_route(inner)?;
    let (local, rest) = parse_local_part(mailbox, utf8)?;
    if rest.is_empty() {
        return Ok(RcptPath::Domainless(local));
    }
    let domain = rest.strip_prefix('@').ok_or(AddressError::LocalPart)?;
    Ok(RcptPath::Mailbox(Address {
        local_part: local,
        domain: Domain::parse(domain, utf8)?,
    }))
}

/// Splits `<path>` off the front of `s`, honouring `>` inside a quoted local part.
///
/// Returns the path including its brackets and the rest of the text (the parameters).
pub fn split_path(s: &str) -> Result<(&str, &str), AddressError> {
    if !s.starts_with('<') {
        return Err(AddressError::MissingBrackets);
    }
    let mut quoted = false;
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        if escaped {
            escaped = false;
        } else if quoted && c == '\\' {
            escaped = true;
        } else if c == '"' {
            quoted = !quoted;
        } else if c == '>' && !quoted {
            return Ok((&s[..=i], &s[i + 1..]));
        }
    }
    Err(AddressError::MissingBrackets)
}

fn strip_brackets(s: &str) -> Result<&str, AddressError> {
    s.strip_prefix('<')
        .and_then(|x| x.strip_suffix('>'))
        .ok_or(AddressError::MissingBrackets)
}

/// Drops an `@a,@b:` source route (RFC 5321 §4.1.2 A-d-l), after checking its syntax:
/// we must accept it but never route by it (RFC 5321 Appendix C).
fn strip_source_route(s: &str) -> Result<&str, AddressError> {
    if !s.starts_with('@') {
        return Ok(s);
    }
    let (route, mailbox) = s.split_once(':').ok_or(AddressError::SourceRoute)?;
    for hop in route.split(',') {
        let d = hop.strip_prefix('@').ok_or(AddressError::SourceRoute)?;
        // Route domains are discarded, so they are checked as ASCII-or-UTF-8 names only.
        Domain::parse(d, true).map_err(|_| AddressError::SourceRoute)?;
    }
    Ok(mailbox)
}

/// Reads a dot-string or quoted-string local part from the front of `s`.
///
/// Returns the unquoted local part and the rest (`@domain`, or empty).
fn parse_local_part(s: &str, utf8: bool) -> Result<(String, &str), AddressError> {
    let (local, wire_len, rest) = if let Some(q) = s.strip_prefix('"') {
        let mut out = String::new();
        let mut chars = q.char_indices();
        let mut end = None;
        while let Some((i, c)) = chars.next() {
            match c {
                '"' => {
                    end = Some(i);
                    break;
                }
                '\\' => match chars.next() {
                    Some((_, e)) if (' '..='~').contains(&e) => out.push(e),
                    _ => return Err(AddressError::LocalPart),
                },
                ' ' | '!' | '#'..='[' | ']'..='~' => out.push(c),
                c if !c.is_ascii() && !c.is_control() => {
                    if !utf8 {
                        return Err(AddressError::NonAscii);
                    }
                    out.push(c);
                }
                _ => return Err(AddressError::LocalPart),
            }
        }
        let end = end.ok_or(AddressError::LocalPart)?;
        // `end` indexes into `q`, which starts after the opening quote.
        (out, end + 2, &q[end + 1..])
    } else {
        let end = s.find('@').unwrap_or(s.len());
        let local = &s[..end];
        if !local.is_ascii() && !utf8 {
            return Err(AddressError::NonAscii);
        }
        if !is_dot_string(local, utf8) {
            return Err(AddressError::LocalPart);
        }
        (local.to_string(), end, &s[end..])
    };
    if wire_len > MAX_LOCAL_PART {
        return Err(AddressError::LocalPartTooLong);
    }
    Ok((local, rest))
}

/// RFC 5321 Dot-string: atoms of atext separated by single dots.
fn is_dot_string(s: &str, utf8: bool) -> bool {
    !s.is_empty()
        && s.split('.')
            .all(|atom| !atom.is_empty() && atom.chars().all(|c| is_atext(c, utf8)))
}

fn is_atext(c: char, utf8: bool) -> bool {
    c.is_ascii_alphanumeric()
        || "!#$%&'*+-/=?^_`{|}~".contains(c)
        || (utf8 && !c.is_ascii() && !c.is_control() && !c.is_whitespace())
}

/// Let-dig [Ldh-str], or a U-label of non-ASCII letters/digits/hyphens.
fn valid_label(label: &str) -> bool {
    let ok_char =
        |c: char| c.is_ascii_alphanumeric() || c == '-' || (!c.is_ascii() && c.is_alphanumeric());
    !label.is_empty()
        && label.len() <= MAX_LABEL
        && !label.starts_with('-')
        && !label.ends_with('-')
        && label.chars().all(ok_char)
}

fn parse_literal(inner: &str) -> Result<Domain, AddressError> {
    if let Some(v6) = inner
        .strip_prefix("IPv6:")
        .or_else(|| inner.strip_prefix("ipv6:"))
    {
        return v6
            .parse::<Ipv6Addr>()
            .map(Domain::Ipv6)
            .map_err(|_| AddressError::Domain);
    }
    // Ipv4Addr's parser rejects leading zeros and out-of-range octets, as RFC 5321 Snum does.
    inner
        .parse::<Ipv4Addr>()
        .map(Domain::Ipv4)
        .map_err(|_| AddressError::Domain)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> Domain {
        Domain::Name(s.into())
    }

    #[test]
    fn parses_plain_and_lowercases_domain() {
        let a = Address::parse("Alice.B@Example.COM", false).unwrap();
        assert_eq!(a.local_part, "Alice.B");
        assert_eq!(a.domain, name("example.com"));
        assert_eq!(a.to_string(), "Alice.B@example.com");
    }

    #[test]
    fn address_literals() {
        let a = Address::parse("antispam@[192.0.2.1]", false).unwrap();
        assert_eq!(a.domain, Domain::Ipv4("192.0.2.1".parse().unwrap()));
        assert_eq!(a.to_string(), "antispam@[192.0.2.1]");
        let b = Address::parse("x@[IPv6:2001:db8::1]", false).unwrap();
        assert_eq!(b.to_string(), "x@[IPv6:2001:db8::1]");
        for bad in [
            "x@[1.2.3]",
            "x@[300.1.1.1]",
            "x@[IPv6:zz]",
            "x@[1.2.3.4",
            "x@[]",
        ] {
            assert!(Address::parse(bad, false).is_err(), "{bad}");
        }
    }

    #[test]
    fn quoted_local_part_round_trips() {
        let p = parse_forward_path("<\"a b\\\"c\"@example.com>", false).unwrap();
        let RcptPath::Mailbox(a) = p else {
            panic!("expected mailbox")
        };
        assert_eq!(a.local_part, "a b\"c");
        assert_eq!(a.to_string(), "\"a b\\\"c\"@example.com");
        // A quoted string that is a valid dot-string displays unquoted.
        let b = Address::parse("\"bob\"@example.com", false).unwrap();
        assert_eq!(b.to_string(), "bob@example.com");
    }

    #[test]
    fn shell_metacharacters_rejected_with_or_without_domain() {
        // C19: bad local part + empty domain, and bad local part + domain.
        assert!(parse_reverse_path("<;sleep 5;>", false).is_err());
        assert!(parse_reverse_path("<;sleep 5;@example.net>", false).is_err());
        assert!(parse_reverse_path("<a|b@example.net>", true).is_ok()); // `|` is atext
        assert!(parse_reverse_path("<a b@example.net>", false).is_err());
        assert!(parse_reverse_path("<`id`@example.net>", false).is_ok()); // atext, never a shell
        assert!(parse_reverse_path("<a\"b@example.net>", false).is_err());
    }

    #[test]
    fn reverse_path_forms() {
        assert_eq!(parse_reverse_path("<>", false), Ok(None));
        assert_eq!(
            parse_reverse_path("<postmaster>", false),
            Err(AddressError::MissingDomain)
        );
        assert!(parse_reverse_path("alice@example.net", false).is_err());
        let a = parse_reverse_path("<@a.example,@b.example:alice@c.example>", false)
            .unwrap()
            .unwrap();
        assert_eq!(a.to_string(), "alice@c.example");
        for bad in [
            "<@a.example:>",
            "<@:a@b.example>",
            "<@a.example,b.example:a@c.example>",
            "<@a.example>",
        ] {
            assert!(parse_reverse_path(bad, false).is_err(), "{bad}");
        }
    }

    #[test]
    fn forward_path_forms_from_relay_probes() {
        // C16.
        assert_eq!(
            parse_forward_path("<\"relaytest%example.net\">", false),
            Ok(RcptPath::Domainless("relaytest%example.net".into()))
        );
        assert_eq!(
            parse_forward_path("<postmaster>", false),
            Ok(RcptPath::Domainless("postmaster".into()))
        );
        assert!(parse_forward_path("<relaytest@example.net@>", false).is_err());
        let RcptPath::Mailbox(a) =
            parse_forward_path("<relaytest%example.net@example.com>", false).unwrap()
        else {
            panic!()
        };
        assert_eq!(
            (a.local_part.as_str(), a.domain.clone()),
            ("relaytest%example.net", name("example.com"))
        );
        let RcptPath::Mailbox(b) =
            parse_forward_path("<example.net!relaytest@example.com>", false).unwrap()
        else {
            panic!()
        };
        assert_eq!(b.domain, name("example.com"));
        assert_eq!(parse_forward_path("<>", false), Err(AddressError::NullPath));
    }

    #[test]
    fn dot_string_rules() {
        for bad in [
            ".a@x.example",
            "a.@x.example",
            "a..b@x.example",
            "@x.example",
            "a@",
            "a@.x",
            "a@x..y",
            "a@-x.example",
            "a@x-.example",
            "a@x_y.example",
        ] {
            assert!(Address::parse(bad, false).is_err(), "{bad}");
        }
        assert!(Address::parse("a+tag@sub-1.x.example", false).is_ok());
    }

    #[test]
    fn length_limits() {
        let l64 = "a".repeat(64);
        let l65 = "a".repeat(65);
        assert!(Address::parse(&format!("{l64}@x.example"), false).is_ok());
        assert_eq!(
            Address::parse(&format!("{l65}@x.example"), false),
            Err(AddressError::LocalPartTooLong)
        );
        // 62 quoted chars + 2 quotes = 64 octets on the wire.
        assert!(Address::parse(&format!("\"{}\"@x.example", "a b".repeat(20)), false).is_ok());
        assert!(Address::parse(&format!("\"{}\"@x.example", "a".repeat(63)), false).is_err());
        let label = "a".repeat(63);
        let long = [label.as_str(); 4].join(".");
        assert_eq!(long.len(), 255);
        assert!(Domain::parse(&long, false).is_ok());
        assert!(Domain::parse(&format!("{long}a"), false).is_err());
        assert!(Domain::parse(&"a".repeat(64), false).is_err());
    }

    #[test]
    fn utf8_only_with_flag() {
        assert_eq!(
            Address::parse("jörg@example.com", false),
            Err(AddressError::NonAscii)
        );
        assert_eq!(
            Address::parse("a@exämple.com", false),
            Err(AddressError::NonAscii)
        );
        let a = Address::parse("jörg@EXÄMPLE.com", true).unwrap();
        assert_eq!(a.domain, name("exämple.com"));
        assert!(a.is_utf8());
        assert_eq!(
            Address::parse("\"jö rg\"@example.com", false),
            Err(AddressError::NonAscii)
        );
    }

    #[test]
    fn split_path_honours_quotes() {
        assert_eq!(
            split_path("<\"a>b\"@x.example> SIZE=1"),
            Ok(("<\"a>b\"@x.example>", " SIZE=1"))
        );
        assert_eq!(
            split_path("<a@x.example"),
            Err(AddressError::MissingBrackets)
        );
        assert_eq!(
            split_path("a@x.example>"),
            Err(AddressError::MissingBrackets)
        );
    }
}
