//! SMTP AUTH (RFC 4954) with PLAIN (RFC 4616) and LOGIN for [`Session`].
//!
//! Only offered under TLS, once per session and outside a transaction. Continuation lines go
//! through the same line reader as commands, so an overlong response is refused with
//! 500 5.5.6 and its tail never runs as a command (chrj/smtpd #54).

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

use super::reply::Reply;
use super::session::{AuthStep, Mode, Session, SessionHooks, st};

/// `334 Username:` and `334 Password:` in base64, as LOGIN clients expect.
const LOGIN_USER: &str = "VXNlcm5hbWU6";
const LOGIN_PASSWORD: &str = "UGFzc3dvcmQ6";

impl Session {
    pub(super) fn auth(
        &mut self,
        mechanism: &str,
        initial: Option<String>,
        hooks: &dyn SessionHooks,
    ) {
        if self.tls.is_none() {
            // RFC 4954 §4: never take a password in plaintext.
            return self.reply(Reply::new(
                538,
                st(5, 7, 11),
                "Encryption required: issue STARTTLS first",
            ));
        }
        if !self.config.auth_available {
            return self.reply(Reply::new(502, st(5, 5, 1), "AUTH not available"));
        }
        if self.helo.is_none() {
            return self.reply(Reply::new(503, st(5, 5, 1), "Send EHLO first"));
        }
        if self.authenticated.is_some() {
            return self.reply(Reply::new(503, st(5, 5, 1), "Already authenticated"));
        }
        if self.txn.is_some() {
            return self.reply(Reply::new(
                503,
                st(5, 5, 1),
                "AUTH not allowed during a mail transaction",
            ));
        }
        match (mechanism, initial) {
            ("PLAIN", None) => self.challenge("", AuthStep::Plain),
            ("PLAIN", Some(resp)) => self.auth_response(AuthStep::Plain, resp.as_bytes(), hooks),
            ("LOGIN", None) => self.challenge(LOGIN_USER, AuthStep::LoginUser),
            ("LOGIN", Some(resp)) => {
                self.auth_response(AuthStep::LoginUser, resp.as_bytes(), hooks)
            }
            _ => self.reply(Reply::new(
                504,
                st(5, 5, 4),
                "Unrecognized authentication mechanism",
            )),
        }
    }

    fn challenge(&mut self, text: &str, next: AuthStep) {
        self.reply(Reply::plain(334, text));
        self.mode = Mode::Auth(next);
    }

    /// Handles one SASL response line (or an initial response) for `step`.
    pub(super) fn auth_response(&mut self, step: AuthStep, line: &[u8], hooks: &dyn SessionHooks) {
        if line == b"*" {
            return self.reply(Reply::new(501, st(5, 0, 0), "Authentication cancelled"));
        }
        let Some(decoded) = decode(line) else {
            return self.reply(Reply::new(501, st(5, 5, 2), "Invalid base64 data"));
        };
        match step {
            AuthStep::Plain => self.plain(&decoded, hooks),
            AuthStep::LoginUser => match String::from_utf8(decoded) {
                Ok(user) if !user.is_empty() => {
                    self.challenge(LOGIN_PASSWORD, AuthStep::LoginPassword(user))
                }
                _ => self.reply(Reply::new(501, st(5, 5, 2), "Invalid user name")),
            },
            AuthStep::LoginPassword(user) => match String::from_utf8(decoded) {
                Ok(password) => self.verify("", &user, &password, hooks),
                Err(_) => self.reply(Reply::new(501, st(5, 5, 2), "Invalid password encoding")),
            },
        }
    }

    /// RFC 4616: `authzid NUL authcid NUL passwd`, authcid and passwd non-empty.
    fn plain(&mut self, decoded: &[u8], hooks: &dyn SessionHooks) {
        let parts: Vec<&[u8]> = decoded.split(|&b| b == 0).collect();
        let fields = match parts.as_slice() {
            [z, c, p] if !c.is_empty() && !p.is_empty() => {
                match (
                    std::str::from_utf8(z),
                    std::str::from_utf8(c),
                    std::str::from_utf8(p),
                ) {
                    (Ok(z), Ok(c), Ok(p)) => Some((z, c, p)),
                    _ => None,
                }
            }
            _ => None,
        };
        match fields {
            Some((authzid, authcid, password)) => self.verify(authzid, authcid, password, hooks),
            None => self.reply(Reply::new(501, st(5, 5, 2), "Malformed PLAIN response")),
        }
    }

    fn verify(&mut self, authzid: &str, authcid: &str, password: &str, hooks: &dyn SessionHooks) {
        // Acting for another identity would need an explicit policy; there is none.
        if !authzid.is_empty() && authzid != authcid {
            return self.reply(Reply::new(
                535,
                st(5, 7, 8),
                "Authentication credentials invalid",
            ));
        }
        if hooks.authenticate(authcid, password) {
            self.authenticated = Some(authcid.to_string());
            self.reply(Reply::new(235, st(2, 7, 0), "Authentication successful"));
        } else {
            self.reply(Reply::new(
                535,
                st(5, 7, 8),
                "Authentication credentials invalid",
            ));
        }
    }
}

/// Strict base64; `=` alone is the RFC 4954 spelling of an empty initial response.
fn decode(line: &[u8]) -> Option<Vec<u8>> {
    if line == b"=" {
        return Some(Vec::new());
    }
    STANDARD.decode(line).ok()
}

#[cfg(test)]
mod tests {
    use super::super::session_testkit::*;
    use super::*;
    use crate::smtp::session::SessionConfig;

    fn tls_ready() -> Dialogue {
        let mut t = Dialogue::new(config());
        t.tls();
        assert_eq!(t.codes("EHLO c.example.net\r\n"), ["250"]);
        t
    }

    fn b64(s: &[u8]) -> String {
        STANDARD.encode(s)
    }

    #[test]
    fn c14_plain_with_initial_response() {
        let mut t = tls_ready();
        assert_eq!(
            t.codes("AUTH PLAIN AGFsaWNlQGV4YW1wbGUuY29tAHMzY3JldA==\r\n"),
            ["235 2.7.0"]
        );
        assert_eq!(
            t.codes("AUTH PLAIN AGFsaWNlQGV4YW1wbGUuY29tAHMzY3JldA==\r\n"),
            ["503 5.5.1"]
        );
        let mut t = tls_ready();
        assert_eq!(
            t.codes("AUTH PLAIN YWxpY2VAZXhhbXBsZS5jb20AYWxpY2VAZXhhbXBsZS5jb20AczNjcmV0\r\n"),
            ["235 2.7.0"]
        );
        // The identity reaches the transaction.
        t.codes("MAIL FROM:<alice@example.com>\r\nRCPT TO:<b@example.com>\r\nDATA\r\nx\r\n.\r\n");
        assert_eq!(
            t.queued[0].authenticated.as_deref(),
            Some("alice@example.com")
        );
        assert!(t.queued[0].tls.is_some());
    }

    #[test]
    fn c14_plain_edge_cases() {
        let mut t = tls_ready();
        assert_eq!(t.codes("AUTH PLAIN =\r\n"), ["501 5.5.2"]);
        assert_eq!(t.codes("AUTH PLAIN !!notbase64\r\n"), ["501 5.5.2"]);
        assert_eq!(
            t.codes("AUTH PLAIN AGFsaWNlQGV4YW1wbGUuY29tAHMzY3JldA\r\n"),
            ["501 5.5.2"]
        );
        let other = b64(b"bob@example.com\0alice@example.com\0s3cret");
        assert_eq!(t.codes(&format!("AUTH PLAIN {other}\r\n")), ["535 5.7.8"]);
        let wrong = b64(b"\0alice@example.com\0wrong");
        assert_eq!(t.codes(&format!("AUTH PLAIN {wrong}\r\n")), ["535 5.7.8"]);
        for bad in [
            &b"\0alice@example.com"[..],
            b"alice@example.com\0s3cret",
            b"\0\0s3cret",
            b"\0a\0b\0c",
            b"\0alice@example.com\0",
        ] {
            assert_eq!(
                t.codes(&format!("AUTH PLAIN {}\r\n", b64(bad))),
                ["501 5.5.2"],
                "{bad:?}"
            );
        }
        assert_eq!(t.codes("AUTH CRAM-MD5\r\n"), ["504 5.5.4"]);
        // Continuation form.
        assert_eq!(t.send("AUTH PLAIN\r\n"), ["334 \r\n"]);
        assert_eq!(t.codes("=\r\n"), ["501 5.5.2"]);
        assert_eq!(t.codes("AUTH PLAIN\r\n\r\n"), ["334", "501 5.5.2"]);
        assert_eq!(
            t.codes("AUTH PLAIN\r\nAGFsaWNlQGV4YW1wbGUuY29tAHMzY3JldA==\r\n"),
            ["334", "235 2.7.0"]
        );
    }

    #[test]
    fn c14_overlong_continuation_tail_never_runs() {
        let mut t = tls_ready();
        assert_eq!(t.codes("AUTH PLAIN\r\n"), ["334"]);
        let attack = format!("{}MAIL FROM:<ceo@example.com>\r\n", "A".repeat(70000));
        assert_eq!(t.codes(&attack), ["500 5.5.6"]);
        assert!(!t.session.in_transaction());
        // Back in command mode, not authenticated.
        assert_eq!(t.codes("NOOP\r\n"), ["250 2.0.0"]);
        assert_eq!(t.codes("MAIL FROM:<a@example.net>\r\n"), ["250 2.1.0"]);
        // Same, arriving in pieces.
        let mut t = tls_ready();
        t.codes("AUTH PLAIN\r\n");
        let mut replies = Vec::new();
        for piece in attack.as_bytes().chunks(1000) {
            replies.extend(t.codes(std::str::from_utf8(piece).unwrap_or_default()));
        }
        assert_eq!(replies, ["500 5.5.6"]);
        assert_eq!(t.codes("RSET\r\n"), ["250 2.0.0"]);
        assert!(t.session.authenticated.is_none());
    }

    #[test]
    fn c14_login_and_cancel() {
        let mut t = tls_ready();
        assert_eq!(t.send("AUTH LOGIN\r\n"), ["334 VXNlcm5hbWU6\r\n"]);
        assert_eq!(t.codes("*\r\n"), ["501 5.0.0"]);
        assert_eq!(t.send("AUTH LOGIN\r\n"), ["334 VXNlcm5hbWU6\r\n"]);
        assert_eq!(
            t.send(&format!("{}\r\n", b64(b"alice@example.com"))),
            ["334 UGFzc3dvcmQ6\r\n"]
        );
        assert_eq!(t.codes("*\r\n"), ["501 5.0.0"]);
        let r = t.codes(&format!(
            "AUTH LOGIN\r\n{}\r\n{}\r\n",
            b64(b"alice@example.com"),
            b64(b"nope")
        ));
        assert_eq!(r, ["334", "334", "535 5.7.8"]);
        let r = t.codes(&format!(
            "AUTH LOGIN {}\r\n{}\r\n",
            b64(b"alice@example.com"),
            b64(b"s3cret")
        ));
        assert_eq!(r, ["334", "235 2.7.0"]);
        assert_eq!(t.codes("AUTH LOGIN\r\n"), ["503 5.5.1"]);
        let mut t = tls_ready();
        assert_eq!(t.codes("AUTH LOGIN\r\n!!\r\n"), ["334", "501 5.5.2"]);
    }

    #[test]
    fn auth_state_rules() {
        // Before TLS.
        let mut t = Dialogue::new(config());
        t.codes("EHLO c.example.net\r\n");
        assert_eq!(
            t.codes("AUTH PLAIN AGFsaWNlQGV4YW1wbGUuY29tAHMzY3JldA==\r\n"),
            ["538 5.7.11"]
        );
        // In a transaction.
        let mut t = tls_ready();
        t.codes("MAIL FROM:<a@example.net>\r\n");
        assert_eq!(
            t.codes("AUTH PLAIN AGFsaWNlQGV4YW1wbGUuY29tAHMzY3JldA==\r\n"),
            ["503 5.5.1"]
        );
        // Not offered.
        let mut t = Dialogue::new(SessionConfig {
            auth_available: false,
            ..config()
        });
        t.tls();
        let ehlo = t.send("EHLO c.example.net\r\n").concat();
        assert!(!ehlo.contains("AUTH"));
        assert_eq!(t.codes("AUTH LOGIN\r\n"), ["502 5.5.1"]);
        // TLS resets AUTH.
        let mut t = tls_ready();
        t.codes("AUTH PLAIN AGFsaWNlQGV4YW1wbGUuY29tAHMzY3JldA==\r\n");
        t.tls();
        t.codes("EHLO c.example.net\r\n");
        assert_eq!(
            t.codes("AUTH PLAIN AGFsaWNlQGV4YW1wbGUuY29tAHMzY3JldA==\r\n"),
            ["235 2.7.0"]
        );
    }

    #[test]
    fn failed_auth_counts_as_error() {
        let mut t = Dialogue::new(SessionConfig {
            max_errors: 2,
            ..config()
        });
        t.tls();
        t.codes("EHLO c.example.net\r\n");
        let wrong = format!("AUTH PLAIN {}\r\n", b64(b"\0alice@example.com\0x"));
        assert_eq!(
            t.codes(&wrong.repeat(3)),
            ["535 5.7.8", "535 5.7.8", "421 4.7.0"]
        );
        assert!(t.closed);
    }
}
