//! The SMTP server session as a sans-IO state machine.
//!
//! The driver feeds received bytes to [`Session::feed`] and performs the returned
//! [`Output`]s in order. Every pipelined command in the buffer is answered in order; only
//! DATA/BDAT content, STARTTLS and a queued message stop command processing. The session
//! itself never touches a socket, a clock or the spool, so every dialogue is a unit test.
//!
//! The transaction commands live in `session_mail.rs` and AUTH in `session_auth.rs`; this
//! file holds the public types, the input loop and the small commands.

use super::address::Address;
use super::command::{self, Command, CommandError};
use super::data::{BdatReceiver, DataReceiver};
use super::params::{MailParams, Notify};
use super::reply::{EnhancedStatus, Reply};

/// Limits and features of one listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionConfig {
    /// Our name in the greeting and the EHLO reply.
    pub hostname: String,
    /// Largest message accepted, advertised as `SIZE n`; larger gets 552 5.3.4.
    pub max_message_size: u64,
    /// Recipients per transaction; RCPT n+1 gets 452 4.5.3 (RFC 5321 §4.5.3.1.10).
    pub max_recipients: usize,
    /// Longest command line including CRLF (e.g. 2048); longer gets 500 5.5.6 and the rest
    /// of that line is discarded up to the next LF, never executed.
    pub max_line_length: usize,
    /// Error replies (4xx/5xx to commands) tolerated; the next one is 421 4.7.0 and Close.
    pub max_errors: usize,
    /// Advertise and accept STARTTLS while not yet under TLS.
    pub starttls_available: bool,
    /// Users exist: AUTH PLAIN LOGIN is advertised and accepted, only under TLS.
    pub auth_available: bool,
    /// Submission listeners: MAIL before AUTH gets 530 5.7.0.
    pub auth_required: bool,
}

/// Decisions the session delegates to the rest of the server.
pub trait SessionHooks {
    /// Decide a recipient. `authenticated` is the SASL identity if any.
    fn check_recipient(&self, rcpt: &Address, authenticated: Option<&str>) -> Result<(), Reply>;
    /// Verify a SASL PLAIN/LOGIN credential (authzid empty or equal to authcid, enforced by the session).
    fn authenticate(&self, authcid: &str, password: &str) -> bool;
}

/// The negotiated TLS parameters, recorded in the transaction for the Received header.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TlsInfo {
    /// Protocol version, e.g. `TLSv1.3`.
    pub version: String,
    /// Cipher suite name.
    pub cipher: String,
}

/// One thing the driver must do, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Bytes to write (replies; pipelined replies may be batched).
    Send(Vec<u8>),
    /// Flush, run the TLS handshake, then call [`Session::tls_established`]. Every byte
    /// buffered after the STARTTLS line has already been discarded (CVE-2011-0411) and
    /// input fed before `tls_established` is ignored.
    StartTls,
    /// A complete message: store it, then call [`Session::queued`]. Until then the session
    /// buffers input and sends nothing.
    Enqueue(Box<Transaction>),
    /// Close the connection after writing the earlier Sends.
    Close,
}

/// One accepted recipient with its DSN parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recipient {
    /// The mailbox (a domainless `<postmaster>` becomes `postmaster@<our hostname>`).
    pub address: Address,
    /// DSN NOTIFY.
    pub notify: Option<Notify>,
    /// DSN ORCPT as (addr-type, decoded address).
    pub orcpt: Option<(String, String)>,
}

/// A complete message handed to the spool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transaction {
    /// The EHLO/HELO argument.
    pub helo: String,
    /// The SASL identity, if the client authenticated.
    pub authenticated: Option<String>,
    /// TLS parameters, if the session ran under TLS.
    pub tls: Option<TlsInfo>,
    /// `None` is the null reverse path `<>`.
    pub mail_from: Option<Address>,
    /// Decoded MAIL parameters.
    pub mail_params: MailParams,
    /// Accepted recipients, in RCPT order, without duplicates.
    pub recipients: Vec<Recipient>,
    /// Unstuffed message bytes, CRLF line ends, no Received header yet.
    pub body: Vec<u8>,
}

/// The envelope being built between MAIL and the end of the message.
#[derive(Debug)]
pub(super) struct Envelope {
    pub(super) mail_from: Option<Address>,
    pub(super) mail_params: MailParams,
    pub(super) recipients: Vec<Recipient>,
    /// RCPT commands tried, accepted or not: DATA after only failed RCPTs gets 554.
    pub(super) rcpt_attempts: usize,
    /// Set by the first BDAT; DATA and RCPT are then out of order.
    pub(super) bdat: Option<BdatReceiver>,
}

/// Which SASL message the next line answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum AuthStep {
    /// PLAIN response after an empty 334.
    Plain,
    /// LOGIN user name.
    LoginUser,
    /// LOGIN password for this user name.
    LoginPassword(String),
}

/// What the bytes in the input buffer mean right now.
#[derive(Debug)]
pub(super) enum Mode {
    /// Command lines.
    Command,
    /// A SASL continuation line.
    Auth(AuthStep),
    /// DATA content up to CRLF.CRLF.
    Data(DataReceiver),
    /// BDAT chunk octets. `refuse` holds the reply for a BDAT that was out of order: its
    /// octets are still consumed (never run as commands), then that reply is sent.
    Chunk {
        size: u64,
        remaining: u64,
        last: bool,
        refuse: Option<Reply>,
    },
    /// Waiting for [`Session::queued`].
    Queueing,
    /// Waiting for [`Session::tls_established`]; input is ignored.
    TlsHandshake,
    /// Closed: nothing more happens.
    Closed,
}

/// The server side of one SMTP connection.
#[derive(Debug)]
pub struct Session {
    pub(super) config: SessionConfig,
    pub(super) tls: Option<TlsInfo>,
    pub(super) helo: Option<String>,
    pub(super) authenticated: Option<String>,
    pub(super) txn: Option<Envelope>,
    pub(super) mode: Mode,
    /// Received bytes not yet processed.
    pub(super) input: Vec<u8>,
    /// The rest of an overlong line is being thrown away up to its LF.
    pub(super) skipping_line: bool,
    pub(super) errors: usize,
    /// Reply bytes not yet wrapped in a Send.
    pending: Vec<u8>,
    outputs: Vec<Output>,
}

/// Shorthand for RFC 3463 codes in replies.
pub(super) const fn st(class: u8, subject: u16, detail: u16) -> EnhancedStatus {
    EnhancedStatus::new(class, subject, detail)
}

impl Session {
    /// A new session; `tls` is `Some` for implicit-TLS listeners (port 465).
    pub fn new(config: SessionConfig, tls: Option<TlsInfo>) -> Self {
        Self {
            config,
            tls,
            helo: None,
            authenticated: None,
            txn: None,
            mode: Mode::Command,
            input: Vec::new(),
            skipping_line: false,
            errors: 0,
            pending: Vec::new(),
            outputs: Vec::new(),
        }
    }

    /// The 220 banner the driver sends first.
    pub fn greeting(&self) -> Reply {
        Reply::plain(220, format!("{} ESMTP Sealpost", self.config.hostname))
    }

    /// Processes received bytes and returns what to do, in order.
    pub fn feed(&mut self, input: &[u8], hooks: &dyn SessionHooks) -> Vec<Output> {
        match self.mode {
            Mode::Closed | Mode::TlsHandshake => return Vec::new(),
            Mode::Queueing => {
                self.input.extend_from_slice(input);
                return Vec::new();
            }
            _ => {}
        }
        self.input.extend_from_slice(input);
        self.run(hooks);
        self.take_outputs()
    }

    /// The spool's answer for the last [`Output::Enqueue`]; then buffered pipelined input runs.
    /// A spool failure is our fault, so it does not count toward `max_errors`.
    pub fn queued(
        &mut self,
        result: Result<String, Reply>,
        hooks: &dyn SessionHooks,
    ) -> Vec<Output> {
        if !matches!(self.mode, Mode::Queueing) {
            return Vec::new();
        }
        self.mode = Mode::Command;
        self.txn = None;
        let reply = match result {
            Ok(id) => Reply::new(250, st(2, 0, 0), format!("Ok: queued as {id}")),
            Err(reply) => reply,
        };
        self.pending.extend_from_slice(&reply.to_bytes());
        self.run(hooks);
        self.take_outputs()
    }

    /// The driver finished the TLS handshake: the session starts over (RFC 3207 §4.2): no
    /// EHLO, no AUTH, no transaction, no buffered bytes.
    pub fn tls_established(&mut self, info: TlsInfo) -> Vec<Output> {
        if matches!(self.mode, Mode::Closed) {
            return Vec::new();
        }
        self.tls = Some(info);
        self.helo = None;
        self.authenticated = None;
        self.txn = None;
        self.input.clear();
        self.skipping_line = false;
        self.mode = Mode::Command;
        Vec::new()
    }

    /// The driver's idle timer fired.
    pub fn timeout(&mut self) -> Vec<Output> {
        self.close_with(Reply::new(
            421,
            st(4, 4, 2),
            "Idle timeout, closing connection",
        ))
    }

    /// The server is stopping (the driver calls this between transactions).
    pub fn shutdown(&mut self) -> Vec<Output> {
        self.close_with(Reply::new(421, st(4, 3, 2), "Service shutting down"))
    }

    /// True from MAIL until the transaction ends (queued, failed or reset).
    pub fn in_transaction(&self) -> bool {
        self.txn.is_some() || matches!(self.mode, Mode::Queueing)
    }

    fn close_with(&mut self, reply: Reply) -> Vec<Output> {
        if matches!(self.mode, Mode::Closed) {
            return Vec::new();
        }
        self.pending.extend_from_slice(&reply.to_bytes());
        self.close();
        self.take_outputs()
    }

    /// Handles buffered input until it runs out or the mode waits for the driver.
    fn run(&mut self, hooks: &dyn SessionHooks) {
        loop {
            let progressed = match self.mode {
                Mode::Command | Mode::Auth(_) => self.step_line(hooks),
                Mode::Data(_) => self.step_data(),
                Mode::Chunk { .. } => self.step_chunk(),
                Mode::Queueing | Mode::TlsHandshake | Mode::Closed => false,
            };
            if !progressed {
                break;
            }
        }
    }

    /// Takes one line (command or SASL response) off the buffer, enforcing the line limit.
    fn step_line(&mut self, hooks: &dyn SessionHooks) -> bool {
        let lf = self.input.iter().position(|&b| b == b'\n');
        if self.skipping_line {
            return match lf {
                Some(pos) => {
                    self.input.drain(..=pos);
                    self.skipping_line = false;
                    true
                }
                None => {
                    self.input.clear();
                    false
                }
            };
        }
        let Some(pos) = lf else {
            // Without LF the line is already longer than the limit once the buffer holds
            // `max_line_length` octets.
            if self.input.len() >= self.config.max_line_length {
                self.input.clear();
                self.skipping_line = true;
                self.line_too_long();
                return true;
            }
            return false;
        };
        let mut line: Vec<u8> = self.input.drain(..=pos).collect();
        if line.len() > self.config.max_line_length {
            self.line_too_long();
            return true;
        }
        line.pop();
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        match std::mem::replace(&mut self.mode, Mode::Command) {
            Mode::Auth(step) => self.auth_response(step, &line, hooks),
            _ => self.command_line(&line, hooks),
        }
        true
    }

    fn line_too_long(&mut self) {
        // An overlong SASL response also ends the exchange (chrj/smtpd #54).
        if matches!(self.mode, Mode::Auth(_)) {
            self.mode = Mode::Command;
        }
        self.reply(CommandError::LineTooLong.reply());
    }

    fn step_data(&mut self) -> bool {
        let Mode::Data(rx) = &mut self.mode else {
            return false;
        };
        if self.input.is_empty() {
            return false;
        }
        let progress = rx.feed(&self.input);
        self.input.drain(..progress.consumed);
        match progress.outcome {
            None => false,
            Some(outcome) => {
                self.mode = Mode::Command;
                self.finish_message(outcome);
                true
            }
        }
    }

    fn command_line(&mut self, line: &[u8], hooks: &dyn SessionHooks) {
        let smtputf8 = self.txn.as_ref().is_some_and(|t| t.mail_params.smtputf8);
        match command::parse(line, smtputf8) {
            Err(e) => self.reply(e.reply()),
            Ok(cmd) => self.dispatch(cmd, hooks),
        }
    }

    fn dispatch(&mut self, cmd: Command, hooks: &dyn SessionHooks) {
        match cmd {
            Command::Ehlo(name) => {
                self.helo = Some(name);
                self.txn = None;
                let r = self.ehlo_reply();
                self.reply(r);
            }
            Command::Helo(name) => {
                self.helo = Some(name);
                self.txn = None;
                self.reply(Reply::plain(250, self.config.hostname.clone()));
            }
            Command::Mail { from, params } => self.mail(from, params),
            Command::Rcpt { to, params } => self.rcpt(to, params, hooks),
            Command::Data => self.data(),
            Command::Bdat { size, last } => self.bdat(size, last),
            Command::Rset => {
                // RFC 5321 §4.1.1.5: the envelope only; EHLO, TLS and AUTH stay.
                self.txn = None;
                self.reply(Reply::new(250, st(2, 0, 0), "Ok"));
            }
            Command::Noop => self.reply(Reply::new(250, st(2, 0, 0), "Ok")),
            Command::Quit => {
                self.reply(Reply::new(221, st(2, 0, 0), "Bye"));
                self.close();
            }
            Command::Help => self.reply(Reply::new(
                214,
                st(2, 0, 0),
                "Sealpost: see RFC 5321 for commands",
            )),
            Command::Vrfy(_) => self.reply(Reply::new(
                252,
                st(2, 5, 0),
                "Cannot VRFY user, but will accept message and attempt delivery",
            )),
            Command::Expn => self.reply(Reply::new(502, st(5, 5, 1), "EXPN not supported")),
            Command::StartTls => self.starttls(),
            Command::Auth { mechanism, initial } => self.auth(&mechanism, initial, hooks),
        }
    }

    fn ehlo_reply(&self) -> Reply {
        let mut lines = vec![
            self.config.hostname.clone(),
            "PIPELINING".to_string(),
            format!("SIZE {}", self.config.max_message_size),
            "8BITMIME".to_string(),
            "SMTPUTF8".to_string(),
            "ENHANCEDSTATUSCODES".to_string(),
            "CHUNKING".to_string(),
            "DSN".to_string(),
        ];
        if self.config.starttls_available && self.tls.is_none() {
            lines.push("STARTTLS".to_string());
        }
        if self.config.auth_available && self.tls.is_some() {
            lines.push("AUTH PLAIN LOGIN".to_string());
        }
        lines.push("HELP".to_string());
        Reply {
            code: 250,
            status: None,
            lines,
        }
    }

    fn starttls(&mut self) {
        if self.tls.is_some() {
            return self.reply(Reply::new(503, st(5, 5, 1), "Already under TLS"));
        }
        if !self.config.starttls_available {
            return self.reply(Reply::new(502, st(5, 5, 1), "STARTTLS not available"));
        }
        if self.txn.is_some() {
            return self.reply(Reply::new(
                503,
                st(5, 5, 1),
                "STARTTLS not allowed in a transaction",
            ));
        }
        self.reply(Reply::new(220, st(2, 0, 0), "Ready to start TLS"));
        self.flush();
        self.outputs.push(Output::StartTls);
        // CVE-2011-0411: nothing sent in plaintext after STARTTLS may survive the upgrade.
        self.input.clear();
        self.skipping_line = false;
        self.mode = Mode::TlsHandshake;
    }

    /// Queues a reply; 4xx/5xx replies count toward `max_errors`, and the one past the
    /// limit is replaced by 421 4.7.0 and Close. A 452 (too many recipients) is not the
    /// client's error: it must still be able to send DATA for the accepted ones (C12).
    pub(super) fn reply(&mut self, reply: Reply) {
        if reply.code >= 400 && reply.code != 452 {
            self.errors += 1;
            if self.errors > self.config.max_errors {
                let bye = Reply::new(421, st(4, 7, 0), "Too many errors, closing connection");
                self.pending.extend_from_slice(&bye.to_bytes());
                self.close();
                return;
            }
        }
        self.pending.extend_from_slice(&reply.to_bytes());
    }

    /// Queues a non-Send output after the replies before it.
    pub(super) fn emit(&mut self, output: Output) {
        self.flush();
        self.outputs.push(output);
    }

    fn close(&mut self) {
        self.emit(Output::Close);
        self.mode = Mode::Closed;
        self.input.clear();
        self.txn = None;
    }

    fn flush(&mut self) {
        if !self.pending.is_empty() {
            self.outputs
                .push(Output::Send(std::mem::take(&mut self.pending)));
        }
    }

    fn take_outputs(&mut self) -> Vec<Output> {
        self.flush();
        std::mem::take(&mut self.outputs)
    }
}

#[cfg(test)]
mod tests {
    use super::super::session_testkit::*;
    use super::*;

    #[test]
    fn greeting_and_ehlo_keywords() {
        let mut t = Dialogue::new(config());
        assert_eq!(
            t.session.greeting().to_bytes(),
            b"220 mx.example.com ESMTP Sealpost\r\n"
        );
        let r = t.send("EHLO c.example.net\r\n");
        assert_eq!(
            r,
            vec![
                "250-mx.example.com\r\n250-PIPELINING\r\n250-SIZE 10485760\r\n250-8BITMIME\r\n\
                 250-SMTPUTF8\r\n250-ENHANCEDSTATUSCODES\r\n250-CHUNKING\r\n250-DSN\r\n\
                 250-STARTTLS\r\n250 HELP\r\n"
            ]
        );
        t.tls();
        let r = t.send("EHLO c.example.net\r\n").join("");
        assert!(!r.contains("STARTTLS"));
        assert!(r.contains("250-AUTH PLAIN LOGIN\r\n"));
        assert_eq!(t.codes("HELO c.example.net\r\n"), ["250"]);
        assert_eq!(t.send("HELO c.example.net\r\n"), ["250 mx.example.com\r\n"]);
    }

    #[test]
    fn implicit_tls_listener_offers_auth_not_starttls() {
        let mut t = Dialogue::new(config());
        t.session = Session::new(config(), Some(tls_info()));
        let ehlo = t.send("EHLO c.example.net\r\n").concat();
        assert!(ehlo.contains("250-AUTH PLAIN LOGIN\r\n"));
        assert!(!ehlo.contains("STARTTLS"));
        assert_eq!(t.codes("STARTTLS\r\n"), ["503 5.5.1"]);
        assert_eq!(
            t.codes("MAIL FROM:<a@example.net>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n"),
            ["250 2.1.0", "250 2.1.5", "354"]
        );
        assert!(t.session.in_transaction());
        assert_eq!(t.codes("x\r\n.\r\n"), ["250 2.0.0"]);
        assert_eq!(t.queued[0].tls, Some(tls_info()));
        assert!(!t.session.in_transaction());
    }

    #[test]
    fn simple_commands() {
        let mut t = Dialogue::new(config());
        assert_eq!(
            t.codes("NOOP\r\nNOOP x\r\nHELP\r\nHELP MAIL\r\n"),
            ["250 2.0.0", "250 2.0.0", "214 2.0.0", "214 2.0.0"]
        );
        assert_eq!(
            t.codes("VRFY bob\r\nEXPN staff\r\nFOO\r\n"),
            ["252 2.5.0", "502 5.5.1", "500 5.5.2"]
        );
        assert_eq!(
            t.codes("RSET x\r\nDATA x\r\nNOOP\0\r\n"),
            ["501 5.5.4", "501 5.5.4", "500 5.5.2"]
        );
        assert_eq!(t.codes("QUIT x\r\nQUIT\r\n"), ["501 5.5.4", "221 2.0.0"]);
        assert!(t.closed);
        assert!(t.send("NOOP\r\n").is_empty());
    }

    #[test]
    fn c08_starttls_discards_injected_plaintext() {
        let mut t = Dialogue::new(config());
        t.codes("EHLO mitm.example.net\r\n");
        let out = t.session.feed(
            b"STARTTLS\r\nRSET\r\nMAIL FROM:<attacker@example.org>\r\n",
            &t.hooks,
        );
        assert_eq!(
            out,
            vec![
                Output::Send(b"220 2.0.0 Ready to start TLS\r\n".to_vec()),
                Output::StartTls
            ]
        );
        // More plaintext before the handshake finishes is ignored too.
        assert!(t.session.feed(b"NOOP\r\n", &t.hooks).is_empty());
        assert!(t.session.feed(b"RSET\r\n", &t.hooks).is_empty());
        t.session.tls_established(tls_info());
        // After TLS: a fresh session, MAIL before EHLO is out of order.
        assert_eq!(t.codes("MAIL FROM:<alice@example.net>\r\n"), ["503 5.5.1"]);
        assert_eq!(t.codes("EHLO c.example.net\r\n"), ["250"]);
        assert_eq!(t.codes("MAIL FROM:<alice@example.net>\r\n"), ["250 2.1.0"]);
    }

    #[test]
    fn c08_starttls_split_over_feeds() {
        // The injected bytes arrive in pieces, some with the STARTTLS line, some after.
        let script =
            b"EHLO mitm.example.net\r\nSTARTTLS\r\nRSET\r\nMAIL FROM:<attacker@example.org>\r\n";
        for cut in 0..script.len() {
            let mut t = Dialogue::new(config());
            let mut out = t.session.feed(&script[..cut], &t.hooks);
            out.extend(t.session.feed(&script[cut..], &t.hooks));
            let sends: String = out
                .iter()
                .filter_map(|o| match o {
                    Output::Send(b) => Some(String::from_utf8_lossy(b).into_owned()),
                    _ => None,
                })
                .collect();
            assert!(
                sends.ends_with("250 HELP\r\n220 2.0.0 Ready to start TLS\r\n"),
                "{cut}: {sends}"
            );
            assert_eq!(out.last(), Some(&Output::StartTls));
            t.session.tls_established(tls_info());
            assert_eq!(t.codes("NOOP\r\n"), ["250 2.0.0"], "cut {cut}");
        }
    }

    #[test]
    fn starttls_refusals() {
        let mut t = Dialogue::new(config());
        assert_eq!(t.codes("STARTTLS now\r\n"), ["501 5.5.4"]);
        t.codes("EHLO c.example.net\r\nMAIL FROM:<a@example.net>\r\n");
        assert_eq!(t.codes("STARTTLS\r\n"), ["503 5.5.1"]);
        let mut t = Dialogue::new(config());
        t.tls();
        assert_eq!(t.codes("STARTTLS\r\n"), ["503 5.5.1"]);
        let mut t = Dialogue::new(SessionConfig {
            starttls_available: false,
            ..config()
        });
        assert_eq!(t.codes("STARTTLS\r\n"), ["502 5.5.1"]);
        assert!(!t.send("EHLO x.example\r\n").join("").contains("STARTTLS"));
    }

    #[test]
    fn overlong_command_line_tail_never_runs() {
        let mut t = Dialogue::new(config());
        let long = format!(
            "NOOP {}MAIL FROM:<ceo@example.com>\r\nNOOP\r\n",
            "A".repeat(3000)
        );
        assert_eq!(t.codes(&long), ["500 5.5.6", "250 2.0.0"]);
        // Split: the first part alone already passes the limit.
        let mut t = Dialogue::new(config());
        assert_eq!(t.codes(&"A".repeat(2048)), ["500 5.5.6"]);
        assert!(t.codes(&"B".repeat(5000)).is_empty());
        assert_eq!(t.codes("RSET\r\nNOOP\r\n"), ["250 2.0.0"]);
        // Exactly at the limit (CRLF included) is fine.
        let mut t = Dialogue::new(config());
        assert_eq!(
            t.codes(&format!("NOOP {}\r\n", "a".repeat(2048 - 7))),
            ["250 2.0.0"]
        );
        assert_eq!(
            t.codes(&format!("NOOP {}\r\n", "a".repeat(2048 - 6))),
            ["500 5.5.6"]
        );
    }

    #[test]
    fn too_many_errors_closes() {
        let mut t = Dialogue::new(SessionConfig {
            max_errors: 3,
            ..config()
        });
        assert_eq!(
            t.codes("FOO\r\nBAR\r\nNOOP\r\nBAZ\r\nQUX\r\nNOOP\r\n"),
            [
                "500 5.5.2",
                "500 5.5.2",
                "250 2.0.0",
                "500 5.5.2",
                "421 4.7.0"
            ]
        );
        assert!(t.closed);
    }

    #[test]
    fn too_many_recipients_is_not_a_client_error() {
        // Trial finding: 452s counted toward max_errors dropped the connection and the
        // transaction with it. The client must be able to send DATA for the accepted ones.
        let mut t = Dialogue::new(SessionConfig {
            max_errors: 3,
            max_recipients: 2,
            ..config()
        });
        let mut script = String::from("EHLO c.example.net\r\nMAIL FROM:<a@example.net>\r\n");
        for i in 0..8 {
            script.push_str(&format!("RCPT TO:<u{i}@example.com>\r\n"));
        }
        script.push_str("DATA\r\n");
        let codes = t.codes(&script);
        assert_eq!(
            codes.iter().filter(|c| c.starts_with("452 4.5.3")).count(),
            6
        );
        assert_eq!(codes.last().map(String::as_str), Some("354"));
        assert!(!t.closed);
    }

    #[test]
    fn timeout_and_shutdown() {
        let mut t = Dialogue::new(config());
        assert_eq!(
            t.session.timeout(),
            vec![
                Output::Send(b"421 4.4.2 Idle timeout, closing connection\r\n".to_vec()),
                Output::Close
            ]
        );
        assert!(t.session.shutdown().is_empty());
        let mut t = Dialogue::new(config());
        assert_eq!(
            t.session.shutdown(),
            vec![
                Output::Send(b"421 4.3.2 Service shutting down\r\n".to_vec()),
                Output::Close
            ]
        );
    }

    #[test]
    fn whole_dialogue_split_at_every_byte_gives_same_replies() {
        let script = concat!(
            "EHLO c.example.net\r\nMAIL FROM:<alice@example.net> SIZE=100\r\nRCPT TO:<bob@example.com>\r\n",
            "RCPT TO:<x@example.org>\r\nDATA\r\n..dot\r\nbody\r\n.\r\n",
            "MAIL FROM:<>\r\nRCPT TO:<postmaster>\r\nBDAT 5\r\nab\r\nxBDAT 0 LAST\r\n",
            "MAIL FROM:<a@example.net>\r\nRCPT TO:<c@example.com>\r\nDATA\r\nx\ny\r\n.\r\n",
            "VRFY me\r\nQUIT\r\n"
        )
        .as_bytes();
        let whole = run_split(script, &[]);
        assert_eq!(
            codes_of(&whole.0),
            [
                "250",
                "250 2.1.0",
                "250 2.1.5",
                "550 5.7.1",
                "354",
                "250 2.0.0",
                "250 2.1.0",
                "250 2.1.5",
                "250 2.0.0",
                "250 2.0.0",
                "250 2.1.0",
                "250 2.1.5",
                "354",
                "550 5.6.0",
                "252 2.5.0",
                "221 2.0.0"
            ]
        );
        assert_eq!(whole.1.len(), 2);
        assert_eq!(whole.1[0].body, b".dot\r\nbody\r\n");
        assert_eq!(whole.1[1].body, b"ab\r\nx");
        for cut in 1..script.len() {
            assert_eq!(run_split(script, &[cut]), whole, "cut at {cut}");
        }
        let every: Vec<usize> = (1..script.len()).collect();
        assert_eq!(run_split(script, &every), whole);
    }
}
