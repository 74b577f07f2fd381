//! The mail transaction commands of [`Session`]: MAIL, RCPT, DATA, BDAT and the end of a
//! message. Each handler checks state first, then arguments, then acts (OpenSMTPD style), so
//! the ordering rules of RFC 5321 §4.1.4 live in one place per command.

use super::address::{Address, Domain, RcptPath};
use super::data::{BdatReceiver, DataOutcome, DataReceiver};
use super::params::{MailParams, RcptParams};
use super::reply::Reply;
use super::session::{Envelope, Mode, Output, Recipient, Session, SessionHooks, Transaction, st};

impl Session {
    pub(super) fn mail(&mut self, from: Option<Address>, params: MailParams) {
        if self.helo.is_none() {
            return self.reply(Reply::new(503, st(5, 5, 1), "Send EHLO/HELO first"));
        }
        if self.txn.is_some() {
            // nullmailer #99: a second MAIL must not replace the sender.
            return self.reply(Reply::new(503, st(5, 5, 1), "Nested MAIL command"));
        }
        if self.config.auth_required && self.authenticated.is_none() {
            return self.reply(Reply::new(530, st(5, 7, 0), "Authentication required"));
        }
        if params
            .size
            .is_some_and(|s| s > self.config.max_message_size)
        {
            return self.reply(Reply::new(
                552,
                st(5, 3, 4),
                "Message size exceeds fixed maximum message size",
            ));
        }
        self.txn = Some(Envelope {
            mail_from: from,
            mail_params: params,
            recipients: Vec::new(),
            rcpt_attempts: 0,
            bdat: None,
        });
        self.reply(Reply::new(250, st(2, 1, 0), "Ok"));
    }

    pub(super) fn rcpt(&mut self, to: RcptPath, params: RcptParams, hooks: &dyn SessionHooks) {
        let max = self.config.max_recipients;
        let postmaster = self.postmaster();
        let Some(env) = self.txn.as_mut() else {
            return self.reply(Reply::new(503, st(5, 5, 1), "Need MAIL before RCPT"));
        };
        if env.bdat.is_some() {
            return self.reply(Reply::new(503, st(5, 5, 1), "RCPT not allowed after BDAT"));
        }
        env.rcpt_attempts += 1;
        if env.recipients.len() >= max {
            return self.reply(Reply::new(452, st(4, 5, 3), "Too many recipients"));
        }
        let address = match to {
            RcptPath::Mailbox(a) => a,
            // RFC 5321 §4.5.1: only postmaster may come without a domain. Any other
            // domainless local part is a local mailbox that does not exist; never relay it.
            RcptPath::Domainless(l) if l.eq_ignore_ascii_case("postmaster") => postmaster,
            RcptPath::Domainless(_) => {
                return self.reply(Reply::new(550, st(5, 1, 1), "Mailbox unavailable"));
            }
        };
        if let Err(r) = hooks.check_recipient(&address, self.authenticated.as_deref()) {
            return self.reply(r);
        }
        if let Some(env) = self.txn.as_mut()
            && !env.recipients.iter().any(|r| r.address == address)
        {
            env.recipients.push(Recipient {
                address,
                notify: params.notify,
                orcpt: params.orcpt,
            });
        }
        self.reply(Reply::new(250, st(2, 1, 5), "Ok"));
    }

    /// `postmaster@<our hostname>`, the mailbox a domainless `<postmaster>` means.
    fn postmaster(&self) -> Address {
        let domain = Domain::parse(&self.config.hostname, true)
            .unwrap_or_else(|_| Domain::Name("localhost".to_string()));
        Address {
            local_part: "postmaster".to_string(),
            domain,
        }
    }

    /// Why DATA or BDAT may not start now, if it may not.
    fn content_refusal(&self, bdat: bool) -> Option<Reply> {
        let Some(env) = self.txn.as_ref() else {
            return Some(Reply::new(503, st(5, 5, 1), "Need MAIL command"));
        };
        if !bdat && env.bdat.is_some() {
            return Some(Reply::new(503, st(5, 5, 1), "DATA not allowed after BDAT"));
        }
        if env.recipients.is_empty() {
            // RFC 2920 §3.1: with pipelining, say that every RCPT failed rather than 503.
            return Some(if env.rcpt_attempts > 0 {
                Reply::new(554, st(5, 5, 1), "No valid recipients")
            } else {
                Reply::new(503, st(5, 5, 1), "Need RCPT command")
            });
        }
        None
    }

    pub(super) fn data(&mut self) {
        if let Some(r) = self.content_refusal(false) {
            return self.reply(r);
        }
        self.reply(Reply::plain(354, "End data with <CR><LF>.<CR><LF>"));
        self.mode = Mode::Data(DataReceiver::new(self.config.max_message_size));
    }

    pub(super) fn bdat(&mut self, size: u64, last: bool) {
        let refuse = self.content_refusal(true);
        if refuse.is_none()
            && let Some(env) = self.txn.as_mut()
            && env.bdat.is_none()
        {
            env.bdat = Some(BdatReceiver::new(self.config.max_message_size));
        }
        self.mode = Mode::Chunk {
            size,
            remaining: size,
            last,
            refuse,
        };
    }

    /// Consumes BDAT chunk octets; when the chunk is complete, answers it.
    pub(super) fn step_chunk(&mut self) -> bool {
        let Mode::Chunk {
            remaining, refuse, ..
        } = &mut self.mode
        else {
            return false;
        };
        let take = usize::try_from(*remaining)
            .unwrap_or(usize::MAX)
            .min(self.input.len());
        if take > 0 {
            *remaining -= take as u64;
            let bytes: Vec<u8> = self.input.drain(..take).collect();
            if refuse.is_none()
                && let Some(rx) = self.txn.as_mut().and_then(|e| e.bdat.as_mut())
            {
                rx.feed(&bytes);
            }
        }
        if *remaining > 0 {
            return false;
        }
        let Mode::Chunk {
            size, last, refuse, ..
        } = std::mem::replace(&mut self.mode, Mode::Command)
        else {
            return false;
        };
        if let Some(r) = refuse {
            self.reply(r);
            return true;
        }
        let failed = self
            .txn
            .as_ref()
            .and_then(|e| e.bdat.as_ref())
            .and_then(BdatReceiver::failed);
        if let Some(outcome) = failed {
            // RFC 3030 §4.2: a failed chunk ends the transaction; later chunks get 503.
            self.finish_message(outcome);
        } else if last {
            let outcome = match self.txn.as_mut().and_then(|e| e.bdat.take()) {
                Some(rx) => rx.finish(),
                None => DataOutcome::Complete(Vec::new()),
            };
            self.finish_message(outcome);
        } else {
            self.reply(Reply::new(
                250,
                st(2, 0, 0),
                format!("{size} octets received"),
            ));
        }
        true
    }

    /// Ends the transaction after DATA or the last BDAT chunk: enqueue or refuse.
    pub(super) fn finish_message(&mut self, outcome: DataOutcome) {
        let Some(env) = self.txn.take() else {
            return self.reply(Reply::new(503, st(5, 5, 1), "No transaction"));
        };
        let body = match outcome {
            DataOutcome::Complete(body) => body,
            DataOutcome::BareLineEnding => {
                return self.reply(Reply::new(
                    550,
                    st(5, 6, 0),
                    "Message refused: bare CR or LF (lines must end with CRLF)",
                ));
            }
            DataOutcome::LineTooLong => {
                return self.reply(Reply::new(
                    550,
                    st(5, 6, 0),
                    "Message refused: line too long",
                ));
            }
            DataOutcome::TooLarge => {
                return self.reply(Reply::new(
                    552,
                    st(5, 3, 4),
                    "Message size exceeds fixed maximum message size",
                ));
            }
        };
        let txn = Transaction {
            helo: self.helo.clone().unwrap_or_default(),
            authenticated: self.authenticated.clone(),
            tls: self.tls.clone(),
            mail_from: env.mail_from,
            mail_params: env.mail_params,
            recipients: env.recipients,
            body,
        };
        self.emit(Output::Enqueue(Box::new(txn)));
        self.mode = Mode::Queueing;
    }
}

#[cfg(test)]
mod tests {
    use super::super::session_testkit::*;
    use super::*;
    use crate::smtp::session::SessionConfig;

    fn ready() -> Dialogue {
        let mut t = Dialogue::new(config());
        assert_eq!(t.codes("EHLO c.example.net\r\n"), ["250"]);
        t
    }

    #[test]
    fn c01_smuggling_is_one_rejected_message_and_nothing_runs() {
        let mut t = ready();
        assert_eq!(
            t.codes("MAIL FROM:<alice@example.net>\r\nRCPT TO:<bob@example.com>\r\nDATA\r\n"),
            ["250 2.1.0", "250 2.1.5", "354"]
        );
        let r = t.codes(concat!(
            "From: alice@example.net\r\nSubject: one\r\n\r\nhello\n.\r\nMAIL FROM:<ceo@example.com>\r\n",
            "RCPT TO:<bob@example.com>\r\nDATA\r\nFrom: ceo@example.com\r\n\r\nplease pay\r\n.\r\n"
        ));
        assert_eq!(r, ["550 5.6.0"]);
        assert!(t.queued.is_empty());
        assert!(!t.session.in_transaction());
        // The session is back in command mode and usable.
        assert_eq!(t.codes("RCPT TO:<bob@example.com>\r\n"), ["503 5.5.1"]);
    }

    #[test]
    fn c01_every_ambiguous_terminator_spelling_stays_data() {
        for s in [
            "\n.\r\n", "\r.\r\n", "\n.\n", "\r\n.\n", "\r\n.\r", "\r.\r", "\n.\r",
        ] {
            let mut t = ready();
            t.codes("MAIL FROM:<alice@example.net>\r\nRCPT TO:<bob@example.com>\r\nDATA\r\n");
            let r = t.codes(&format!(
                "hello{s}MAIL FROM:<ceo@example.com>\r\nRCPT TO:<x@example.com>\r\n"
            ));
            assert!(r.is_empty(), "{s:?}: {r:?}");
            assert!(t.session.in_transaction());
            assert_eq!(t.codes("\r\n.\r\n"), ["550 5.6.0"], "{s:?}");
            assert!(t.queued.is_empty());
        }
    }

    #[test]
    fn c03_bare_lf_with_stuffed_dots_never_stores_three_dots() {
        let mut t = ready();
        t.codes("MAIL FROM:<alice@example.net>\r\nRCPT TO:<bob@example.com>\r\nDATA\r\n");
        assert_eq!(
            t.codes("this is a test of dot\n...\n\r\n.\r\n"),
            ["550 5.6.0"]
        );
        assert!(t.queued.is_empty());
    }

    #[test]
    fn c05_transparency() {
        let mut t = ready();
        let env = "MAIL FROM:<alice@example.net>\r\nRCPT TO:<bob@example.com>\r\nDATA\r\n";
        assert_eq!(
            t.codes(&format!("{env}..test\r\n.\r\n")),
            ["250 2.1.0", "250 2.1.5", "354", "250 2.0.0"]
        );
        assert_eq!(
            t.codes(&format!("{env}Subject: t\r\n\r\nhello\r\n.\r\n"))
                .last()
                .map(String::as_str),
            Some("250 2.0.0")
        );
        // d: DATA then an immediately empty message completes at once.
        assert_eq!(
            t.codes(&format!("{env}\r\n.\r\n"))
                .last()
                .map(String::as_str),
            Some("250 2.0.0")
        );
        let bodies: Vec<&[u8]> = t.queued.iter().map(|q| q.body.as_slice()).collect();
        assert_eq!(
            bodies,
            [&b".test\r\n"[..], b"Subject: t\r\n\r\nhello\r\n", b"\r\n"]
        );
    }

    #[test]
    fn c11_sequencing_and_rset() {
        let mut t = Dialogue::new(config());
        assert_eq!(t.codes("RSET\r\n"), ["250 2.0.0"]);
        assert_eq!(t.codes("MAIL FROM:<alice@example.net>\r\n"), ["503 5.5.1"]);
        assert_eq!(t.codes("EHLO c.example.net\r\n"), ["250"]);
        assert_eq!(
            t.codes("MAIL FROM:<alice@example.net>\r\nMAIL FROM:<mallory@example.org>\r\nRCPT TO:<bob@example.com>\r\n"),
            ["250 2.1.0", "503 5.5.1", "250 2.1.5"]
        );
        assert!(t.session.in_transaction());
        assert_eq!(t.codes("RSET\r\n"), ["250 2.0.0"]);
        assert!(!t.session.in_transaction());
        assert_eq!(t.codes("RCPT TO:<bob@example.com>\r\n"), ["503 5.5.1"]);
        // RSET kept EHLO: MAIL works.
        let r = t.codes("MAIL FROM:<alice@example.net>\r\nMAIL FROM:<mallory@example.org>\r\nRCPT TO:<bob@example.com>\r\nDATA\r\nmsg1\r\n.\r\n");
        assert_eq!(
            r,
            ["250 2.1.0", "503 5.5.1", "250 2.1.5", "354", "250 2.0.0"]
        );
        let r = t.codes(
            "MAIL FROM:<carol@example.net>\r\nRCPT TO:<dave@example.com>\r\nDATA\r\nmsg2\r\n.\r\n",
        );
        assert_eq!(r, ["250 2.1.0", "250 2.1.5", "354", "250 2.0.0"]);
        assert_eq!(t.queued.len(), 2);
        assert_eq!(
            t.queued[0]
                .mail_from
                .as_ref()
                .map(ToString::to_string)
                .as_deref(),
            Some("alice@example.net")
        );
        let q2 = &t.queued[1];
        assert_eq!(
            q2.mail_from.as_ref().map(ToString::to_string).as_deref(),
            Some("carol@example.net")
        );
        let rcpts: Vec<String> = q2
            .recipients
            .iter()
            .map(|r| r.address.to_string())
            .collect();
        assert_eq!(rcpts, ["dave@example.com"]);
        assert_eq!(q2.helo, "c.example.net");
    }

    #[test]
    fn rcpt_and_data_ordering() {
        let mut t = ready();
        assert_eq!(t.codes("DATA\r\n"), ["503 5.5.1"]);
        assert_eq!(
            t.codes("MAIL FROM:<a@example.net>\r\nDATA\r\n"),
            ["250 2.1.0", "503 5.5.1"]
        );
        // Pipelined: every RCPT failed, DATA says so.
        assert_eq!(
            t.codes("RCPT TO:<x@example.org>\r\nDATA\r\n"),
            ["550 5.7.1", "554 5.5.1"]
        );
        assert!(t.queued.is_empty());
    }

    #[test]
    fn c12_too_many_recipients() {
        let mut t = ready();
        let mut script = String::from("MAIL FROM:<alice@example.net>\r\n");
        for i in 1..=101 {
            script.push_str(&format!("RCPT TO:<u{i}@example.com>\r\n"));
        }
        script.push_str("DATA\r\n");
        let r = t.codes(&script);
        assert_eq!(r.len(), 103);
        assert!(r[1..101].iter().all(|c| c == "250 2.1.5"));
        assert_eq!(r[101], "452 4.5.3");
        assert_eq!(r[102], "354");
        assert_eq!(t.codes("hi\r\n.\r\n"), ["250 2.0.0"]);
        assert_eq!(t.queued[0].recipients.len(), 100);
        assert_eq!(
            t.queued[0].recipients[99].address.to_string(),
            "u100@example.com"
        );
    }

    #[test]
    fn c13_size() {
        let mut t = ready();
        assert_eq!(
            t.codes("MAIL FROM:<alice@example.net> SIZE=20000000\r\n"),
            ["552 5.3.4"]
        );
        assert_eq!(
            t.codes("MAIL FROM:<alice@example.net> SIZE=abc\r\n"),
            ["501 5.5.4"]
        );
        assert_eq!(
            t.codes("MAIL FROM:<alice@example.net> BODY=8BITMIME\r\n"),
            ["250 2.1.0"]
        );
        assert_eq!(
            t.codes("RCPT TO:<bob@example.com>\r\nDATA\r\n"),
            ["250 2.1.5", "354"]
        );
        // b: 11 MB, fed in 64 KiB pieces; only the end-of-data answer comes.
        let line = format!("{}\r\n", "x".repeat(998));
        let chunk = line.repeat(64);
        let mut sent = 0;
        while sent < 11 * 1024 * 1024 {
            assert!(t.send(&chunk).is_empty());
            sent += chunk.len();
        }
        assert_eq!(t.codes(".\r\nNOOP\r\n"), ["552 5.3.4", "250 2.0.0"]);
        assert!(t.queued.is_empty());
        assert!(!t.session.in_transaction());
    }

    #[test]
    fn c16_relay_probes() {
        let mut t = ready();
        assert_eq!(
            t.codes("MAIL FROM:<antispam@[192.0.2.1]>\r\n"),
            ["250 2.1.0"]
        );
        assert_eq!(
            t.codes(concat!(
                "RCPT TO:<\"relaytest%example.net\">\r\n",
                "RCPT TO:<relaytest@example.net@>\r\n",
                "RCPT TO:<relaytest%example.net@example.com>\r\n",
                "RCPT TO:<example.net!relaytest@example.com>\r\n",
                "RCPT TO:<@example.com:relaytest@example.net>\r\n",
                "RCPT TO:<Postmaster>\r\n",
            )),
            [
                "550 5.1.1",
                "501 5.1.3",
                "550 5.1.1",
                "550 5.1.1",
                "550 5.7.1",
                "250 2.1.5"
            ]
        );
        assert_eq!(t.codes("DATA\r\nx\r\n.\r\n"), ["354", "250 2.0.0"]);
        let rcpts: Vec<String> = t.queued[0]
            .recipients
            .iter()
            .map(|r| r.address.to_string())
            .collect();
        assert_eq!(rcpts, ["postmaster@mx.example.com"]);
    }

    #[test]
    fn c19_shell_metacharacters_in_sender() {
        for from in ["<;sleep 5;>", "<;sleep 5;@example.net>"] {
            let mut t = ready();
            let r = t.codes(&format!(
                "MAIL FROM:{from}\r\nRCPT TO:<root@example.com>\r\nDATA\r\nx\r\n.\r\n"
            ));
            assert_eq!(
                r,
                [
                    "553 5.1.7",
                    "503 5.5.1",
                    "503 5.5.1",
                    "500 5.5.2",
                    "500 5.5.2"
                ],
                "{from}"
            );
            assert!(t.queued.is_empty());
        }
    }

    #[test]
    fn c21a_null_reverse_path() {
        let mut t = ready();
        let r = t.codes("MAIL FROM:<>\r\nRCPT TO:<bob@example.com> NOTIFY=NEVER\r\nDATA\r\nContent-Type: multipart/report\r\n\r\nx\r\n.\r\n");
        assert_eq!(r, ["250 2.1.0", "250 2.1.5", "354", "250 2.0.0"]);
        assert_eq!(t.queued[0].mail_from, None);
        assert_eq!(
            t.queued[0].recipients[0].notify,
            Some(crate::smtp::params::Notify::Never)
        );
        assert_eq!(t.codes("RCPT TO:<>\r\n"), ["501 5.1.3"]);
    }

    #[test]
    fn dsn_and_xtext_params_reach_the_transaction_or_are_refused() {
        let mut t = ready();
        let r = t.codes("MAIL FROM:<a@example.net> RET=HDRS ENVID=id+2B1\r\nRCPT TO:<b@example.com> NOTIFY=FAILURE,DELAY ORCPT=rfc822;b+40example.com\r\nDATA\r\nx\r\n.\r\n");
        assert_eq!(r, ["250 2.1.0", "250 2.1.5", "354", "250 2.0.0"]);
        let q = &t.queued[0];
        assert_eq!(q.mail_params.envid.as_deref(), Some("id+1"));
        assert_eq!(
            q.recipients[0].orcpt,
            Some(("rfc822".into(), "b@example.com".into()))
        );
        for bad in [
            "ENVID=a+2b",
            "ENVID=a+0D+0A",
            "ENVID=a+00",
            "ENVID=a=b",
            "ENVID=a+4",
            "ENVID=\u{e9}",
        ] {
            assert_eq!(
                t.codes(&format!("MAIL FROM:<a@example.net> {bad}\r\n")),
                ["501 5.5.4"],
                "{bad}"
            );
        }
        assert_eq!(t.codes("MAIL FROM:<a@example.net>\r\n"), ["250 2.1.0"]);
        for bad in [
            "ORCPT=rfc822;b+40example.co+6d",
            "ORCPT=rfc822;b+0D+0Aevil",
            "ORCPT=rfc822;a=b",
            "ORCPT=rfc822",
            "NOTIFY=NEVER,DELAY",
            "NOTIFY=x",
        ] {
            assert_eq!(
                t.codes(&format!("RCPT TO:<b@example.com> {bad}\r\n")),
                ["501 5.5.4"],
                "{bad}"
            );
        }
        assert_eq!(t.codes("RCPT TO:<b@example.com> FOO=1\r\n"), ["555 5.5.4"]);
    }

    #[test]
    fn smtputf8_only_when_declared() {
        let mut t = ready();
        assert_eq!(
            t.codes("MAIL FROM:<a@example.net>\r\nRCPT TO:<jörg@example.com>\r\nRSET\r\n"),
            ["250 2.1.0", "501 5.1.3", "250 2.0.0"]
        );
        assert_eq!(
            t.codes("MAIL FROM:<a@example.net> SMTPUTF8\r\nRCPT TO:<jörg@example.com>\r\n"),
            ["250 2.1.0", "250 2.1.5"]
        );
    }

    #[test]
    fn bdat_flow() {
        let mut t = ready();
        let r = t.codes("MAIL FROM:<a@example.net>\r\nRCPT TO:<b@example.com>\r\nBDAT 4\r\nab\r\nRCPT TO:<c@example.com>\r\nBDAT 3 LAST\r\nc\r\nNOOP\r\n");
        assert_eq!(
            r,
            [
                "250 2.1.0",
                "250 2.1.5",
                "250 2.0.0",
                "503 5.5.1",
                "250 2.0.0",
                "250 2.0.0"
            ]
        );
        assert_eq!(t.queued[0].body, b"ab\r\nc\r\n");
        // BDAT 0 LAST alone is an empty message.
        assert_eq!(
            t.codes("MAIL FROM:<a@example.net>\r\nRCPT TO:<b@example.com>\r\nBDAT 0 LAST\r\n")
                .last()
                .map(String::as_str),
            Some("250 2.0.0")
        );
        assert_eq!(t.queued[1].body, b"");
        // DATA after BDAT in one transaction is refused.
        assert_eq!(
            t.codes("MAIL FROM:<a@example.net>\r\nRCPT TO:<b@example.com>\r\nBDAT 1\r\nxDATA\r\n"),
            ["250 2.1.0", "250 2.1.5", "250 2.0.0", "503 5.5.1"]
        );
    }

    #[test]
    fn bdat_refused_chunk_is_still_consumed() {
        let mut t = ready();
        // No transaction: the 27 octets must never run as commands.
        let r = t.codes("BDAT 27\r\nMAIL FROM:<x@example.org>\r\nNOOP\r\n");
        assert_eq!(r, ["503 5.5.1", "250 2.0.0"]);
        assert!(!t.session.in_transaction());
        // Without RCPT, split across feeds.
        assert_eq!(
            t.codes("MAIL FROM:<a@example.net>\r\nBDAT 12 LAST\r\nQUIT\r\n"),
            ["250 2.1.0"]
        );
        assert_eq!(t.codes("QUIT\r\n"), ["503 5.5.1"]);
        assert!(!t.closed);
    }

    #[test]
    fn bdat_bad_content_and_size() {
        let mut t = Dialogue::new(SessionConfig {
            max_message_size: 10,
            ..config()
        });
        t.codes("EHLO c.example.net\r\n");
        let r = t.codes("MAIL FROM:<a@example.net>\r\nRCPT TO:<b@example.com>\r\nBDAT 3\r\na\nbBDAT 2 LAST\r\n\r\n");
        assert_eq!(r, ["250 2.1.0", "250 2.1.5", "550 5.6.0", "503 5.5.1"]);
        let r = t.codes("MAIL FROM:<a@example.net>\r\nRCPT TO:<b@example.com>\r\nBDAT 9\r\n1234567\r\nBDAT 9 LAST\r\n1234567\r\n");
        assert_eq!(r, ["250 2.1.0", "250 2.1.5", "250 2.0.0", "552 5.3.4"]);
        assert!(t.queued.is_empty());
    }

    #[test]
    fn queue_wait_buffers_pipelined_input() {
        let mut t = ready();
        let out = t.session.feed(
            b"MAIL FROM:<a@example.net>\r\nRCPT TO:<b@example.com>\r\nDATA\r\nx\r\n.\r\nMAIL FROM:<c@example.net>\r\n",
            &t.hooks,
        );
        assert!(matches!(out.last(), Some(Output::Enqueue(_))));
        assert!(t.session.in_transaction());
        assert!(t.session.feed(b"NOOP\r\n", &t.hooks).is_empty());
        let out = t
            .session
            .queued(Err(Reply::new(451, st(4, 3, 0), "spool busy")), &t.hooks);
        assert_eq!(
            out,
            vec![Output::Send(
                b"451 4.3.0 spool busy\r\n250 2.1.0 Ok\r\n250 2.0.0 Ok\r\n".to_vec()
            )]
        );
    }

    #[test]
    fn auth_required_listener() {
        let mut t = Dialogue::new(SessionConfig {
            auth_required: true,
            ..config()
        });
        t.tls();
        t.codes("EHLO c.example.net\r\n");
        assert_eq!(t.codes("MAIL FROM:<alice@example.com>\r\n"), ["530 5.7.0"]);
        assert_eq!(
            t.codes("AUTH PLAIN AGFsaWNlQGV4YW1wbGUuY29tAHMzY3JldA==\r\n"),
            ["235 2.7.0"]
        );
        assert_eq!(
            t.codes("MAIL FROM:<alice@example.com>\r\nRCPT TO:<x@example.org>\r\n"),
            ["250 2.1.0", "550 5.7.1"]
        );
    }
}
