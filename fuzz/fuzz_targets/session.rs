//! A whole server Session driven the way the connection driver drives it.
//!
//! Input layout: byte 0: low 3 bits = number of cut points, bit 3 = implicit-TLS listener,
//! bit 4 = auth_required; then one byte per cut point (the length of the next chunk); the
//! rest is the client's byte stream, fed in those chunks (the remainder as the last chunk).
//! Output::Enqueue is answered at once with queued(Ok("Qn")), Output::StartTls with
//! tls_established.
//!
//! Invariants: never panics; every Send is a sequence of well-formed reply lines
//! (`ddd[ -]text\r\n`, 200..=599, no CR/LF inside a line, one code per multi-line reply,
//! complete replies only); Close, StartTls and Enqueue are the last output of the call that
//! returns them; after Close every call returns nothing; every queued transaction has
//! recipients, at most max_recipients of them, a body within max_message_size without bare
//! CR/LF; and, when no STARTTLS happened, the replies and transactions do not depend on how
//! the stream was cut.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sealpost::smtp::address::{Address, Domain};
use sealpost::smtp::reply::{EnhancedStatus, Reply};
use sealpost::smtp::session::{
    Output, Session, SessionConfig, SessionHooks, TlsInfo, Transaction,
};

/// Accepts @example.com and any postmaster; knows alice@example.com / s3cret.
struct Hooks;

impl SessionHooks for Hooks {
    fn check_recipient(&self, rcpt: &Address, _authenticated: Option<&str>) -> Result<(), Reply> {
        if rcpt.local_part.eq_ignore_ascii_case("postmaster")
            || rcpt.domain == Domain::Name("example.com".into())
        {
            Ok(())
        } else {
            Err(Reply::new(550, EnhancedStatus::new(5, 7, 1), "Relay access denied"))
        }
    }

    fn authenticate(&self, authcid: &str, password: &str) -> bool {
        authcid == "alice@example.com" && password == "s3cret"
    }
}

fn config(auth_required: bool) -> SessionConfig {
    SessionConfig {
        hostname: "mx.example.com".into(),
        max_message_size: 10_000,
        max_recipients: 5,
        max_line_length: 512,
        max_errors: 10,
        starttls_available: true,
        auth_available: true,
        auth_required,
    }
}

fn tls_info() -> TlsInfo {
    TlsInfo {
        version: "TLSv1.3".into(),
        cipher: "TLS13_AES_128_GCM_SHA256".into(),
    }
}

/// Checks one Send: complete, well-formed reply lines.
fn check_send(bytes: &[u8]) {
    assert!(!bytes.is_empty(), "empty Send");
    assert!(bytes.ends_with(b"\r\n"), "Send ends mid-line: {bytes:?}");
    let mut multi: Option<&[u8]> = None;
    for line in bytes.split_inclusive(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r\n").unwrap_or_else(|| {
            panic!("bare LF in reply bytes: {:?}", String::from_utf8_lossy(bytes))
        });
        assert!(!line.contains(&b'\r'), "bare CR in reply line {line:?}");
        assert!(line.len() >= 4, "short reply line {line:?}");
        let code = &line[..3];
        assert!(code.iter().all(u8::is_ascii_digit), "bad code in {line:?}");
        let n = (code[0] - b'0') as u16 * 100 + (code[1] - b'0') as u16 * 10 + (code[2] - b'0') as u16;
        assert!((200..=599).contains(&n), "code {n} out of range");
        if let Some(prev) = multi {
            assert_eq!(prev, code, "code changed inside a multi-line reply");
        }
        match line[3] {
            b'-' => multi = Some(code),
            b' ' => multi = None,
            other => panic!("bad separator {other:?} in {line:?}"),
        }
        assert!(
            !line.iter().any(|&b| b < 0x20 || b == 0x7f),
            "control byte in reply line {line:?}"
        );
        assert!(std::str::from_utf8(line).is_ok(), "reply line not UTF-8");
    }
    assert!(multi.is_none(), "multi-line reply left open");
}

struct Run {
    session: Session,
    sent: Vec<u8>,
    queued: Vec<Transaction>,
    closed: bool,
    starttls: bool,
    max_recipients: usize,
    max_size: u64,
}

impl Run {
    fn new(implicit_tls: bool, auth_required: bool) -> Self {
        let cfg = config(auth_required);
        Self {
            max_recipients: cfg.max_recipients,
            max_size: cfg.max_message_size,
            session: Session::new(cfg, implicit_tls.then(tls_info)),
            sent: Vec::new(),
            queued: Vec::new(),
            closed: false,
            starttls: false,
        }
    }

    fn feed(&mut self, chunk: &[u8]) {
        let out = self.session.feed(chunk, &Hooks);
        self.drive(out);
    }

    fn drive(&mut self, mut out: Vec<Output>) {
        while !out.is_empty() {
            if self.closed {
                panic!("output after Close: {out:?}");
            }
            let last = out.len() - 1;
            let mut next = Vec::new();
            for (i, o) in out.into_iter().enumerate() {
                match o {
                    Output::Send(b) => {
                        check_send(&b);
                        self.sent.extend_from_slice(&b);
                    }
                    Output::Close => {
                        assert_eq!(i, last, "outputs after Close in the same call");
                        self.closed = true;
                    }
                    Output::StartTls => {
                        assert_eq!(i, last, "outputs after StartTls in the same call");
                        self.starttls = true;
                        next = self.session.tls_established(tls_info());
                    }
                    Output::Enqueue(txn) => {
                        assert_eq!(i, last, "outputs after Enqueue in the same call");
                        assert!(!txn.recipients.is_empty(), "transaction without recipients");
                        assert!(txn.recipients.len() <= self.max_recipients);
                        assert!(txn.body.len() as u64 <= self.max_size);
                        assert!(
                            txn.body.windows(2).all(|w| (w[0] == b'\r') == (w[1] == b'\n'))
                                && !txn.body.starts_with(b"\n")
                                && !txn.body.ends_with(b"\r"),
                            "bare CR/LF in a queued body"
                        );
                        self.queued.push(*txn);
                        let id = format!("Q{}", self.queued.len());
                        next = self.session.queued(Ok(id), &Hooks);
                    }
                }
            }
            out = next;
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&head, rest)) = data.split_first() else {
        return;
    };
    let ncuts = (head & 7) as usize;
    let implicit_tls = head & 8 != 0;
    let auth_required = head & 16 != 0;
    if rest.len() < ncuts {
        return;
    }
    let (lens, script) = rest.split_at(ncuts);

    let mut run = Run::new(implicit_tls, auth_required);
    check_send(&run.session.greeting().to_bytes());
    let mut start = 0;
    for &len in lens {
        let end = (start + len as usize).min(script.len());
        run.feed(&script[start..end]);
        start = end;
    }
    run.feed(&script[start..]);
    if run.closed {
        assert!(run.session.feed(b"NOOP\r\n", &Hooks).is_empty());
        assert!(run.session.timeout().is_empty());
    }
    let _ = run.session.in_transaction();

    // Split invariance: the same stream in one piece, and byte by byte.
    if !run.starttls && lens.iter().any(|&l| l > 0) {
        let mut one = Run::new(implicit_tls, auth_required);
        one.feed(script);
        if !one.starttls {
            assert_eq!(one.sent, run.sent, "replies depend on the cuts {lens:?}");
            assert_eq!(one.queued, run.queued, "transactions depend on the cuts");
            assert_eq!(one.closed, run.closed);
        }
    }
    if !run.starttls && script.len() <= 256 {
        let mut bytewise = Run::new(implicit_tls, auth_required);
        for b in script.chunks(1) {
            bytewise.feed(b);
        }
        if !bytewise.starttls {
            assert_eq!(bytewise.sent, run.sent, "byte-by-byte replies differ");
            assert_eq!(bytewise.queued, run.queued);
        }
    }
});
