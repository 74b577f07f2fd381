//! Reading the extensions a remote server advertises in its EHLO reply (RFC 5321 §4.1.1.1).
//!
//! Pure: the client turns the reply into [`Capabilities`] once and every later decision
//! (STARTTLS, PIPELINING, SIZE, DSN parameters) reads fields instead of re-scanning text.

use crate::smtp::reply::Reply;

/// The extensions the client cares about, as advertised by one server.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Capabilities {
    /// STARTTLS (RFC 3207): the client upgrades opportunistically.
    pub starttls: bool,
    /// PIPELINING (RFC 2920): MAIL and all RCPTs go in one write.
    pub pipelining: bool,
    /// SIZE (RFC 1870). `Some(0)` and a bare `SIZE` both mean "no fixed limit"; `None` when
    /// not advertised. The client passes `SIZE=` whenever this is `Some`.
    pub size: Option<u64>,
    /// DSN (RFC 3461): NOTIFY/ORCPT/RET/ENVID may be sent.
    pub dsn: bool,
    /// SMTPUTF8 (RFC 6531).
    pub smtputf8: bool,
    /// 8BITMIME (RFC 6152).
    pub eight_bit_mime: bool,
    /// CHUNKING (RFC 3030): the body goes as one `BDAT n LAST` chunk, without dot-stuffing.
    pub chunking: bool,
}

impl Capabilities {
    /// Parses an EHLO reply; the first line is the server's greeting name and is skipped.
    pub fn from_ehlo(reply: &Reply) -> Self {
        let mut caps = Self::default();
        for line in reply.lines.iter().skip(1) {
            let mut words = line.split_ascii_whitespace();
            let Some(keyword) = words.next() else {
                continue;
            };
            match keyword.to_ascii_uppercase().as_str() {
                "STARTTLS" => caps.starttls = true,
                "PIPELINING" => caps.pipelining = true,
                "DSN" => caps.dsn = true,
                "SMTPUTF8" => caps.smtputf8 = true,
                "8BITMIME" => caps.eight_bit_mime = true,
                "CHUNKING" => caps.chunking = true,
                // An unparsable limit is treated as no limit: the server will still enforce
                // its real one at MAIL or after DATA.
                "SIZE" => caps.size = Some(words.next().and_then(|n| n.parse().ok()).unwrap_or(0)),
                _ => {}
            }
        }
        caps
    }

    /// The advertised size limit when there is one (`SIZE 0` or bare `SIZE` mean none).
    pub fn size_limit(&self) -> Option<u64> {
        self.size.filter(|&n| n > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ehlo(lines: &[&str]) -> Reply {
        Reply {
            code: 250,
            status: None,
            lines: lines.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn parses_keywords_case_insensitively() {
        let c = Capabilities::from_ehlo(&ehlo(&[
            "mx.example.com hello",
            "pipelining",
            "SIZE 1000",
            "STARTTLS",
            "DSN",
            "8BITMIME",
            "SMTPUTF8",
            "AUTH PLAIN",
            "chunking",
        ]));
        assert!(c.starttls && c.pipelining && c.dsn && c.eight_bit_mime && c.smtputf8);
        assert!(c.chunking);
        assert_eq!(c.size_limit(), Some(1000));
    }

    #[test]
    fn size_zero_bare_or_absent_means_no_limit() {
        for lines in [
            &["mx", "SIZE 0"][..],
            &["mx", "SIZE"][..],
            &["mx"][..],
            &["mx", "SIZE abc"][..],
        ] {
            assert_eq!(Capabilities::from_ehlo(&ehlo(lines)).size_limit(), None);
        }
        // The greeting line is never read as a keyword.
        assert!(!Capabilities::from_ehlo(&ehlo(&["STARTTLS"])).starttls);
    }
}
