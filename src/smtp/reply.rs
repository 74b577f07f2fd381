//! SMTP replies (RFC 5321 §4.2) with enhanced status codes (RFC 3463).
//!
//! The server side builds [`Reply`] values and serialises them with [`Reply::to_bytes`];
//! the client side feeds received bytes to [`ReplyParser`] and gets whole (possibly
//! multi-line) replies back. Both directions share the one type so a reply read from a
//! remote MX can be stored and quoted in a DSN unchanged.

use std::fmt;

/// An enhanced mail system status code `class.subject.detail` (RFC 3463).
///
/// Kept separate from the text so a DSN can carry it in its `Status:` field and
/// a log line can be grepped for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct EnhancedStatus {
    /// 2 = success, 4 = persistent transient failure, 5 = permanent failure.
    pub class: u8,
    /// The subject sub-code (e.g. 1 = addressing, 5 = protocol, 7 = security).
    pub subject: u16,
    /// The detail sub-code.
    pub detail: u16,
}

impl EnhancedStatus {
    /// Builds a status code; callers use literal values from RFC 3463.
    pub const fn new(class: u8, subject: u16, detail: u16) -> Self {
        Self {
            class,
            subject,
            detail,
        }
    }

    /// Parses `X.Y.Z` where X is 2, 4 or 5 (RFC 3463 §2). Returns `None` for anything else.
    pub fn parse(s: &str) -> Option<Self> {
        let mut it = s.split('.');
        let class: u8 = it.next()?.parse().ok()?;
        let subject: u16 = it.next()?.parse().ok()?;
        let detail: u16 = it.next()?.parse().ok()?;
        if it.next().is_some() || !matches!(class, 2 | 4 | 5) || subject > 999 || detail > 999 {
            return None;
        }
        Some(Self::new(class, subject, detail))
    }
}

impl fmt::Display for EnhancedStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.class, self.subject, self.detail)
    }
}

/// One SMTP reply: a three-digit code, an optional enhanced status and one or more text lines.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Reply {
    /// The basic reply code (RFC 5321 §4.2.1), 200..=599.
    pub code: u16,
    /// The enhanced status code, when the reply carries one.
    pub status: Option<EnhancedStatus>,
    /// The text lines without code, status or CRLF. Never empty when serialised.
    pub lines: Vec<String>,
}

impl Reply {
    /// A single-line reply with an enhanced status code.
    pub fn new(code: u16, status: EnhancedStatus, text: impl Into<String>) -> Self {
        Self {
            code,
            status: Some(status),
            lines: vec![text.into()],
        }
    }

    /// A reply without an enhanced status (greeting, EHLO response, 354, 334).
    pub fn plain(code: u16, text: impl Into<String>) -> Self {
        Self {
            code,
            status: None,
            lines: vec![text.into()],
        }
    }

    /// True for 2xx and 3xx replies.
    pub fn is_positive(&self) -> bool {
        self.code < 400
    }

    /// True for 4xx replies: the same request may succeed later.
    pub fn is_transient(&self) -> bool {
        (400..500).contains(&self.code)
    }

    /// True for 5xx replies: the request will not succeed as it stands.
    pub fn is_permanent(&self) -> bool {
        self.code >= 500
    }

    /// Serialises the reply with CRLF line ends. Text is sanitised so a reply can never
    /// inject a line: CR, LF and other control characters become spaces.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64);
        let empty = [String::new()];
        let lines: &[String] = if self.lines.is_empty() {
            &empty
        } else {
            &self.lines
        };
        for (i, line) in lines.iter().enumerate() {
            let sep = if i + 1 == lines.len() { ' ' } else { '-' };
            out.extend_from_slice(format!("{}{}", self.code, sep).as_bytes());
            if let Some(st) = self.status {
                out.extend_from_slice(format!("{st} ").as_bytes());
            }
            for c in line.chars() {
                if c.is_control() {
                    out.push(b' ');
                } else {
                    let mut buf = [0u8; 4];
                    out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                }
            }
            out.extend_from_slice(b"\r\n");
        }
        out
    }

    /// The text joined with spaces, for logs and DSN diagnostic codes.
    pub fn text(&self) -> String {
        self.lines.join(" ")
    }
}

impl fmt::Display for Reply {
    /// `code status text`, on one line: the form used in logs and `Diagnostic-Code`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.code)?;
        if let Some(st) = self.status {
            write!(f, " {st}")?;
        }
        write!(f, " {}", self.text())
    }
}

/// Why bytes from a peer could not be read as a reply.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReplyError {
    /// A line did not start with three digits followed by space, `-` or end of line.
    #[error("malformed reply line: {0:?}")]
    Malformed(String),
    /// A multi-line reply changed its code between lines (RFC 5321 §4.2.1 forbids it).
    #[error("reply code changed within a multi-line reply")]
    CodeMismatch,
    /// A line or a multi-line reply grew past the parser's limit.
    #[error("reply too long")]
    TooLong,
}

/// Incremental parser for replies received by the SMTP client.
///
/// Feed it whatever bytes arrived; it returns every complete reply and keeps the rest.
/// Sans-IO so the client can be tested without sockets.
#[derive(Debug, Default)]
pub struct ReplyParser {
    buf: Vec<u8>,
    pending: Option<Reply>,
}

/// Longest reply line accepted (RFC 5321 §4.5.3.1.5 says 512; servers exceed it).
const MAX_REPLY_LINE: usize = 4096;
/// Most lines accepted in one multi-line reply (EHLO responses are the longest seen).
const MAX_REPLY_LINES: usize = 200;

impl ReplyParser {
    /// A parser with an empty buffer.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds received bytes and returns every reply they complete, in order.
    pub fn feed(&mut self, data: &[u8]) -> Result<Vec<Reply>, ReplyError> {
        self.buf.extend_from_slice(data);
        let mut out = Vec::new();
        while let Some(pos) = self.buf.iter().position(|&b| b == b'\n') {
            let mut line: Vec<u8> = self.buf.drain(..=pos).collect();
            line.pop();
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            if let Some(reply) = self.line(&String::from_utf8_lossy(&line))? {
                out.push(reply);
            }
        }
        if self.buf.len() > MAX_REPLY_LINE {
            return Err(ReplyError::TooLong);
        }
        Ok(out)
    }

    /// True when no partial reply is buffered.
    pub fn is_idle(&self) -> bool {
        self.buf.is_empty() && self.pending.is_none()
    }

    fn line(&mut self, line: &str) -> Result<Option<Reply>, ReplyError> {
        let bytes = line.as_bytes();
        if bytes.len() < 3 || !bytes[..3].iter().all(u8::is_ascii_digit) {
            return Err(ReplyError::Malformed(line.chars().take(80).collect()));
        }
        let code: u16 = line[..3].parse().map_err(|_| ReplyError::Malformed(line.into()))?;
        if !(200..600).contains(&code) {
            return Err(ReplyError::Malformed(line.chars().take(80).collect()));
        }
        let (last, rest) = match bytes.get(3) {
            None => (true, ""),
            Some(b' ') => (true, &line[4..]),
            Some(b'-') => (false, &line[4..]),
            Some(_) => return Err(ReplyError::Malformed(line.chars().take(80).collect())),
        };
        let (status, text) = split_status(code, rest);
        let reply = match self.pending.take() {
            Some(mut r) => {
                if r.code != code {
                    return Err(ReplyError::CodeMismatch);
                }
                if r.lines.len() >= MAX_REPLY_LINES {
                    return Err(ReplyError::TooLong);
                }
                r.lines.push(text.to_string());
                r
            }
            None => Reply {
                code,
                status,
                lines: vec![text.to_string()],
            },
        };
        if last {
            Ok(Some(reply))
        } else {
            self.pending = Some(reply);
            Ok(None)
        }
    }
}

/// Splits a leading enhanced status off reply text when its class matches the code's.
fn split_status(code: u16, rest: &str) -> (Option<EnhancedStatus>, &str) {
    let (first, tail) = match rest.split_once(' ') {
        Some((a, b)) => (a, b),
        None => (rest, ""),
    };
    match EnhancedStatus::parse(first) {
        Some(st) if u16::from(st.class) == code / 100 => (Some(st), tail),
        _ => (None, rest),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serialises_multiline_with_status_and_strips_controls() {
        let r = Reply {
            code: 250,
            status: Some(EnhancedStatus::new(2, 0, 0)),
            lines: vec!["a".into(), "b\r\nINJECT".into()],
        };
        assert_eq!(r.to_bytes(), b"250-2.0.0 a\r\n250 2.0.0 b  INJECT\r\n");
    }

    #[test]
    fn parses_multiline_split_across_feeds() {
        let mut p = ReplyParser::new();
        assert!(p.feed(b"250-mx.example.com\r\n250-PIPE").unwrap().is_empty());
        let r = p.feed(b"LINING\r\n250 SIZE 0\r\n550 5.1.1 no such user\r\n").unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].lines, vec!["mx.example.com", "PIPELINING", "SIZE 0"]);
        assert_eq!(r[0].status, None);
        assert_eq!(r[1].code, 550);
        assert_eq!(r[1].status, Some(EnhancedStatus::new(5, 1, 1)));
        assert_eq!(r[1].text(), "no such user");
        assert!(p.is_idle());
    }

    #[test]
    fn rejects_garbage_and_code_changes() {
        assert!(ReplyParser::new().feed(b"hello\r\n").is_err());
        assert_eq!(
            ReplyParser::new().feed(b"250-a\r\n251 b\r\n"),
            Err(ReplyError::CodeMismatch)
        );
        // A status whose class does not match the code stays in the text.
        let r = ReplyParser::new().feed(b"451 5.0.0 odd\r\n").unwrap();
        assert_eq!(r[0].status, None);
        assert_eq!(r[0].text(), "5.0.0 odd");
    }
}
