//! One SMTP command line parsed into a [`Command`] (RFC 5321 §4.1.1).
//!
//! The parser sees a line without its CRLF and either returns a fully decoded command or a
//! [`CommandError`] that maps to exactly one reply, so the session never sends a reply
//! chosen from a half-parsed string.

use super::address::{self, Address, AddressError, RcptPath};
use super::params::{self, MailParams, ParamError, RcptParams};
use super::reply::{EnhancedStatus, Reply};

/// A parsed client command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `EHLO domain`.
    Ehlo(String),
    /// `HELO domain`.
    Helo(String),
    /// `MAIL FROM:<path> params`; `from` is `None` for the null reverse path `<>`.
    Mail {
        /// The reverse path.
        from: Option<Address>,
        /// Decoded extension parameters.
        params: MailParams,
    },
    /// `RCPT TO:<path> params`.
    Rcpt {
        /// The forward path (source route discarded).
        to: RcptPath,
        /// Decoded extension parameters.
        params: RcptParams,
    },
    /// `DATA`.
    Data,
    /// `BDAT size [LAST]` (RFC 3030).
    Bdat {
        /// Octets in the chunk that follows the command line.
        size: u64,
        /// This is the last chunk.
        last: bool,
    },
    /// `RSET`.
    Rset,
    /// `NOOP [string]`.
    Noop,
    /// `QUIT`.
    Quit,
    /// `HELP [string]`.
    Help,
    /// `VRFY string`.
    Vrfy(String),
    /// `EXPN string` (always refused).
    Expn,
    /// `STARTTLS`.
    StartTls,
    /// `AUTH mechanism [initial-response]` (RFC 4954).
    Auth {
        /// Mechanism name, uppercased.
        mechanism: String,
        /// The initial response as sent (base64 or `=`).
        initial: Option<String>,
    },
}

/// Why a command line was refused; [`CommandError::reply`] gives the one reply for it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    /// Unknown verb, empty line, NUL byte or non-UTF-8 text: 500 5.5.2.
    #[error("command not recognized")]
    Unrecognized,
    /// Missing, extra or malformed arguments: 501 5.5.4.
    #[error("syntax error in arguments: {0}")]
    Syntax(&'static str),
    /// A parameter value was bad or repeated: 501 5.5.4.
    #[error("invalid parameter: {0}")]
    InvalidParam(String),
    /// A parameter keyword we do not support: 555 5.5.4.
    #[error("unsupported parameter: {0}")]
    UnknownParam(String),
    /// The MAIL reverse path did not parse: 553 5.1.7.
    #[error("bad sender address: {0}")]
    BadSender(AddressError),
    /// The RCPT forward path did not parse: 501 5.1.3.
    #[error("bad recipient address: {0}")]
    BadRecipient(AddressError),
    /// The line passed the configured limit: 500 5.5.6. Produced by the session's line
    /// reader, never by [`parse`], and listed here so every command failure has one home.
    #[error("line too long")]
    LineTooLong,
}

impl CommandError {
    /// The reply the session sends for this error.
    pub fn reply(&self) -> Reply {
        let st = EnhancedStatus::new;
        match self {
            CommandError::Unrecognized => Reply::new(500, st(5, 5, 2), "Command not recognized"),
            CommandError::Syntax(what) => {
                Reply::new(501, st(5, 5, 4), format!("Syntax error: {what}"))
            }
            CommandError::InvalidParam(what) => {
                Reply::new(501, st(5, 5, 4), format!("Invalid parameter: {what}"))
            }
            CommandError::UnknownParam(what) => {
                Reply::new(555, st(5, 5, 4), format!("Unsupported parameter: {what}"))
            }
            CommandError::BadSender(e) => {
                Reply::new(553, st(5, 1, 7), format!("Bad sender address syntax: {e}"))
            }
            CommandError::BadRecipient(e) => Reply::new(
                501,
                st(5, 1, 3),
                format!("Bad recipient address syntax: {e}"),
            ),
            CommandError::LineTooLong => Reply::new(500, st(5, 5, 6), "Line too long"),
        }
    }
}

impl From<ParamError> for CommandError {
    fn from(e: ParamError) -> Self {
        match e {
            ParamError::Unknown(k) => CommandError::UnknownParam(k),
            other => CommandError::InvalidParam(other.to_string()),
        }
    }
}

/// Parses one command line (CRLF already removed).
///
/// `smtputf8` says whether the current transaction's MAIL carried SMTPUTF8; it decides
/// whether a RCPT path may be non-ASCII. MAIL decides for itself from its own parameters.
pub fn parse(line: &[u8], smtputf8: bool) -> Result<Command, CommandError> {
    // A NUL or a CR left inside the line (the reader strips only the final CRLF) never
    // belongs to a command and must not reach an argument.
    if line.iter().any(|&b| b == 0 || b == b'\r') {
        return Err(CommandError::Unrecognized);
    }
    let line = std::str::from_utf8(line).map_err(|_| CommandError::Unrecognized)?;
    let (verb, args) = match line.split_once(' ') {
        Some((v, a)) => (v, a),
        None => (line, ""),
    };
    let args = args.trim_end_matches(' ');
    match verb.to_ascii_uppercase().as_str() {
        "EHLO" => Ok(Command::Ehlo(hello_arg(args)?)),
        "HELO" => Ok(Command::Helo(hello_arg(args)?)),
        "MAIL" => parse_mail(args),
        "RCPT" => parse_rcpt(args, smtputf8),
        "DATA" => no_args(args, Command::Data),
        "BDAT" => parse_bdat(args),
        "RSET" => no_args(args, Command::Rset),
        "NOOP" => Ok(Command::Noop),
        "QUIT" => no_args(args, Command::Quit),
        "HELP" => Ok(Command::Help),
        "VRFY" if args.trim().is_empty() => Err(CommandError::Syntax("VRFY needs an argument")),
        "VRFY" => Ok(Command::Vrfy(args.trim().to_string())),
        "EXPN" => Ok(Command::Expn),
        "STARTTLS" => no_args(args, Command::StartTls),
        "AUTH" => parse_auth(args),
        _ => Err(CommandError::Unrecognized),
    }
}

fn no_args(args: &str, cmd: Command) -> Result<Command, CommandError> {
    if args.is_empty() {
        Ok(cmd)
    } else {
        Err(CommandError::Syntax("no arguments allowed"))
    }
}

fn hello_arg(args: &str) -> Result<String, CommandError> {
    let arg = args.trim();
    if arg.is_empty() {
        return Err(CommandError::Syntax("EHLO/HELO needs a domain"));
    }
    if arg.chars().any(char::is_control) {
        return Err(CommandError::Syntax("control characters in domain"));
    }
    // The name is recorded in Received, never trusted, but it must be a domain or an address
    // literal (RFC 5321 §4.1.1.1) of sane length: an unchecked name once made a 2,000-octet
    // trace header that no next hop would accept.
    if !is_hello_name(arg) {
        return Err(CommandError::Syntax(
            "EHLO/HELO needs a domain or address literal",
        ));
    }
    Ok(arg.to_string())
}

/// A host name (letters, digits, `-`, `_` in dot-separated labels) or a bracketed address
/// literal of printable ASCII, at most 255 octets. `_` is tolerated: real clients send it.
fn is_hello_name(arg: &str) -> bool {
    if arg.len() > 255 {
        return false;
    }
    if let Some(inner) = arg.strip_prefix('[') {
        return inner.strip_suffix(']').is_some_and(|i| {
            !i.is_empty()
                && i.bytes()
                    .all(|b| b.is_ascii_graphic() && b != b'[' && b != b']')
        });
    }
    arg.trim_end_matches('.').split('.').all(|label| {
        !label.is_empty()
            && label.len() <= 63
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    })
}

/// Strips a case-insensitive `FROM:`/`TO:` and the optional space after the colon.
fn strip_keyword<'a>(args: &'a str, keyword: &str) -> Option<&'a str> {
    let head = args.get(..keyword.len())?;
    if !head.eq_ignore_ascii_case(keyword) {
        return None;
    }
    let rest = &args[keyword.len()..];
    Some(rest.strip_prefix(' ').unwrap_or(rest))
}

fn parse_mail(args: &str) -> Result<Command, CommandError> {
    let rest =
        strip_keyword(args, "FROM:").ok_or(CommandError::Syntax("expected MAIL FROM:<address>"))?;
    let (path, rest) = address::split_path(rest).map_err(CommandError::BadSender)?;
    if !rest.is_empty() && !rest.starts_with(' ') {
        return Err(CommandError::Syntax("expected space after path"));
    }
    // Parameters first: SMTPUTF8 decides whether the path may be non-ASCII.
    let params = params::parse_mail_params(rest)?;
    let from =
        address::parse_reverse_path(path, params.smtputf8).map_err(CommandError::BadSender)?;
    Ok(Command::Mail { from, params })
}

fn parse_rcpt(args: &str, smtputf8: bool) -> Result<Command, CommandError> {
    let rest =
        strip_keyword(args, "TO:").ok_or(CommandError::Syntax("expected RCPT TO:<address>"))?;
    let (path, rest) = address::split_path(rest).map_err(CommandError::BadRecipient)?;
    if !rest.is_empty() && !rest.starts_with(' ') {
        return Err(CommandError::Syntax("expected space after path"));
    }
    let to = address::parse_forward_path(path, smtputf8).map_err(CommandError::BadRecipient)?;
    let params = params::parse_rcpt_params(rest)?;
    Ok(Command::Rcpt { to, params })
}

fn parse_bdat(args: &str) -> Result<Command, CommandError> {
    let mut words = args.split(' ').filter(|w| !w.is_empty());
    let size = words
        .next()
        .ok_or(CommandError::Syntax("BDAT needs a size"))?;
    if !size.bytes().all(|b| b.is_ascii_digit()) {
        return Err(CommandError::Syntax("BDAT size must be digits"));
    }
    let size: u64 = size
        .parse()
        .map_err(|_| CommandError::Syntax("BDAT size out of range"))?;
    let last = match words.next() {
        None => false,
        Some(w) if w.eq_ignore_ascii_case("LAST") => true,
        Some(_) => return Err(CommandError::Syntax("expected LAST")),
    };
    if words.next().is_some() {
        return Err(CommandError::Syntax("too many BDAT arguments"));
    }
    Ok(Command::Bdat { size, last })
}

fn parse_auth(args: &str) -> Result<Command, CommandError> {
    let mut words = args.split(' ').filter(|w| !w.is_empty());
    let mechanism = words
        .next()
        .ok_or(CommandError::Syntax("AUTH needs a mechanism"))?;
    let initial = words.next().map(str::to_string);
    if words.next().is_some() {
        return Err(CommandError::Syntax("too many AUTH arguments"));
    }
    Ok(Command::Auth {
        mechanism: mechanism.to_ascii_uppercase(),
        initial,
    })
}

#[cfg(test)]
mod hello_tests {
    use super::*;

    #[test]
    fn hello_names() {
        for ok in [
            "client.example.net",
            "localhost",
            "DESKTOP-AB12",
            "my_host.example",
            "[192.0.2.1]",
            "[IPv6:::1]",
            "mx.example.com.",
        ] {
            assert!(is_hello_name(ok), "{ok}");
            assert!(
                parse(format!("EHLO {ok}").as_bytes(), false).is_ok(),
                "{ok}"
            );
        }
        let long = "h".repeat(2000);
        for bad in [
            long.as_str(),
            "café.example",
            "a..b",
            "a b",
            "[]",
            "x.example/../",
            "a@b",
        ] {
            assert!(!is_hello_name(bad), "{bad}");
            let e = parse(format!("EHLO {bad}").as_bytes(), false).unwrap_err();
            assert_eq!(e.reply().code, 501, "{bad}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::smtp::address::Domain;
    use crate::smtp::params::Notify;

    fn code(line: &str) -> (u16, String) {
        let r = parse(line.as_bytes(), false).unwrap_err().reply();
        (r.code, r.status.map(|s| s.to_string()).unwrap_or_default())
    }

    #[test]
    fn verbs_are_case_insensitive() {
        assert_eq!(
            parse(b"ehlo c.example.net", false),
            Ok(Command::Ehlo("c.example.net".into()))
        );
        assert_eq!(parse(b"QuIt", false), Ok(Command::Quit));
        assert_eq!(parse(b"noop anything", false), Ok(Command::Noop));
        assert_eq!(parse(b"HELP me", false), Ok(Command::Help));
        assert_eq!(parse(b"vrfy bob", false), Ok(Command::Vrfy("bob".into())));
        assert_eq!(parse(b"Expn list", false), Ok(Command::Expn));
        assert_eq!(parse(b"STARTTLS", false), Ok(Command::StartTls));
    }

    #[test]
    fn mail_forms() {
        let Ok(Command::Mail { from, params }) =
            parse(b"MAIL FROM:<alice@example.net> SIZE=10", false)
        else {
            panic!()
        };
        assert_eq!(from.unwrap().domain, Domain::Name("example.net".into()));
        assert_eq!(params.size, Some(10));
        assert!(matches!(
            parse(b"mail from: <alice@example.net>", false),
            Ok(Command::Mail { .. })
        ));
        assert!(matches!(
            parse(b"MAIL FROM:<>", false),
            Ok(Command::Mail { from: None, .. })
        ));
        // Non-ASCII sender only with SMTPUTF8 on the same command.
        assert!(matches!(
            parse("MAIL FROM:<jörg@example.net> SMTPUTF8".as_bytes(), false),
            Ok(Command::Mail { .. })
        ));
        assert_eq!(code("MAIL FROM:<jörg@example.net>"), (553, "5.1.7".into()));
    }

    #[test]
    fn mail_errors_map_to_replies() {
        assert_eq!(code("MAIL FROM:<;sleep 5;>"), (553, "5.1.7".into()));
        assert_eq!(
            code("MAIL FROM:<;sleep 5;@example.net>"),
            (553, "5.1.7".into())
        );
        assert_eq!(code("MAIL FROM:alice@example.net"), (553, "5.1.7".into()));
        assert_eq!(code("MAIL TO:<a@b.example>"), (501, "5.5.4".into()));
        assert_eq!(code("MAIL FROM:<a@b.example>SIZE=1"), (501, "5.5.4".into()));
        assert_eq!(
            code("MAIL FROM:<a@b.example> SIZE=abc"),
            (501, "5.5.4".into())
        );
        assert_eq!(
            code("MAIL FROM:<a@b.example> SIZE=1 SIZE=1"),
            (501, "5.5.4".into())
        );
        assert_eq!(code("MAIL FROM:<a@b.example> FOO=1"), (555, "5.5.4".into()));
        assert_eq!(
            code("MAIL FROM:<a@b.example> ENVID=x+0d"),
            (501, "5.5.4".into())
        );
    }

    #[test]
    fn rcpt_forms() {
        let Ok(Command::Rcpt { to, params }) =
            parse(b"RCPT TO:<bob@example.com> NOTIFY=NEVER", false)
        else {
            panic!()
        };
        assert!(matches!(to, RcptPath::Mailbox(_)));
        assert_eq!(params.notify, Some(Notify::Never));
        assert_eq!(
            code("RCPT TO:<relaytest@example.net@>"),
            (501, "5.1.3".into())
        );
        assert_eq!(code("RCPT TO:<;sleep 5;>"), (501, "5.1.3".into()));
        assert_eq!(code("RCPT TO:<>"), (501, "5.1.3".into()));
        assert_eq!(
            code("RCPT TO:<bob@example.com> SIZE=1"),
            (555, "5.5.4".into())
        );
        assert_eq!(
            code("RCPT TO:<bob@example.com> ORCPT=rfc822;a+2b"),
            (501, "5.5.4".into())
        );
        assert_eq!(code("RCPT TO:<bob@exämple.com>"), (501, "5.1.3".into()));
        assert!(parse("RCPT TO:<bob@exämple.com>".as_bytes(), true).is_ok());
    }

    #[test]
    fn bdat_and_auth() {
        assert_eq!(
            parse(b"BDAT 10", false),
            Ok(Command::Bdat {
                size: 10,
                last: false
            })
        );
        assert_eq!(
            parse(b"bdat 0 last", false),
            Ok(Command::Bdat {
                size: 0,
                last: true
            })
        );
        for bad in [
            "BDAT",
            "BDAT x",
            "BDAT -1",
            "BDAT 1 FIRST",
            "BDAT 1 LAST x",
            "BDAT 99999999999999999999999",
        ] {
            assert_eq!(code(bad).0, 501, "{bad}");
        }
        assert_eq!(
            parse(b"auth plain =", false),
            Ok(Command::Auth {
                mechanism: "PLAIN".into(),
                initial: Some("=".into())
            })
        );
        assert_eq!(code("AUTH"), (501, "5.5.4".into()));
    }

    #[test]
    fn unexpected_arguments_and_garbage() {
        for bad in [
            "STARTTLS now",
            "DATA x",
            "QUIT x",
            "RSET x",
            "EHLO",
            "HELO ",
            "VRFY",
        ] {
            assert_eq!(code(bad), (501, "5.5.4".into()), "{bad}");
        }
        for bad in [
            "",
            "FOO",
            "MAIL\0 FROM:<a@b.example>",
            "DA TA",
            "NOOP\rMAIL FROM:<a@b.example>",
            "RSET\r",
        ] {
            assert_eq!(code(bad), (500, "5.5.2".into()), "{bad:?}");
        }
        assert_eq!(parse(b"NOOP \xff", false), Err(CommandError::Unrecognized));
        // Trailing spaces are forgiven.
        assert_eq!(parse(b"DATA  ", false), Ok(Command::Data));
    }
}
