//! Scripted-dialogue helpers shared by the session tests (compiled for tests only).

use super::address::{Address, Domain};
use super::reply::{EnhancedStatus, Reply};
use super::session::{Output, Session, SessionConfig, SessionHooks, TlsInfo, Transaction};

/// Accepts @example.com and any postmaster; knows alice@example.com / s3cret.
pub struct TestHooks;

impl SessionHooks for TestHooks {
    fn check_recipient(&self, rcpt: &Address, _authenticated: Option<&str>) -> Result<(), Reply> {
        if rcpt.local_part.eq_ignore_ascii_case("postmaster") {
            return Ok(());
        }
        if rcpt.domain == Domain::Name("example.com".into()) {
            if rcpt.local_part.contains(['%', '!']) {
                return Err(Reply::new(
                    550,
                    EnhancedStatus::new(5, 1, 1),
                    "No such user",
                ));
            }
            return Ok(());
        }
        Err(Reply::new(
            550,
            EnhancedStatus::new(5, 7, 1),
            "Relay access denied",
        ))
    }

    fn authenticate(&self, authcid: &str, password: &str) -> bool {
        authcid == "alice@example.com" && password == "s3cret"
    }
}

/// The listener config the tests start from (limits from the cases: 10 MB, 100 recipients).
pub fn config() -> SessionConfig {
    SessionConfig {
        hostname: "mx.example.com".into(),
        max_message_size: 10_485_760,
        max_recipients: 100,
        max_line_length: 2048,
        max_errors: 20,
        starttls_available: true,
        auth_available: true,
        auth_required: false,
    }
}

/// The TLS parameters the tests pretend to negotiate.
pub fn tls_info() -> TlsInfo {
    TlsInfo {
        version: "TLSv1.3".into(),
        cipher: "TLS13_AES_128_GCM_SHA256".into(),
    }
}

/// A session plus what it produced; Enqueue is answered at once with `Ok("Qn")`.
pub struct Dialogue {
    pub session: Session,
    pub hooks: TestHooks,
    pub queued: Vec<Transaction>,
    pub closed: bool,
    pub starttls: bool,
}

impl Dialogue {
    pub fn new(config: SessionConfig) -> Self {
        Self {
            session: Session::new(config, None),
            hooks: TestHooks,
            queued: Vec::new(),
            closed: false,
            starttls: false,
        }
    }

    /// Pretends a STARTTLS handshake (or an implicit-TLS listener) just completed.
    pub fn tls(&mut self) {
        self.session.tls_established(tls_info());
    }

    /// Feeds text and returns the Sends as strings.
    pub fn send(&mut self, text: &str) -> Vec<String> {
        self.send_bytes(text.as_bytes())
    }

    /// Feeds bytes and returns the Sends as strings.
    pub fn send_bytes(&mut self, bytes: &[u8]) -> Vec<String> {
        let out = self.session.feed(bytes, &self.hooks);
        self.drive(out)
    }

    /// Feeds text and returns `code[ status]` of each reply.
    pub fn codes(&mut self, text: &str) -> Vec<String> {
        codes_of(
            &self
                .send(text)
                .concat()
                .split_inclusive("\r\n")
                .map(str::to_string)
                .collect::<Vec<_>>(),
        )
    }

    fn drive(&mut self, mut out: Vec<Output>) -> Vec<String> {
        let mut sends = Vec::new();
        while !out.is_empty() {
            let mut next = Vec::new();
            for o in out {
                match o {
                    Output::Send(b) => sends.push(String::from_utf8_lossy(&b).into_owned()),
                    Output::Close => self.closed = true,
                    Output::StartTls => self.starttls = true,
                    Output::Enqueue(txn) => {
                        self.queued.push(*txn);
                        let id = format!("Q{}", self.queued.len());
                        next.extend(self.session.queued(Ok(id), &self.hooks));
                    }
                }
            }
            out = next;
        }
        sends
    }
}

/// `code[ x.y.z]` of each final reply line (continuation lines `250-...` are skipped).
pub fn codes_of(lines: &[String]) -> Vec<String> {
    lines
        .iter()
        .filter(|l| l.as_bytes().get(3) != Some(&b'-'))
        .map(|l| {
            let l = l.trim_end();
            let code = l.get(..3).unwrap_or(l).to_string();
            match l.get(4..).and_then(|r| r.split(' ').next()) {
                Some(s) if EnhancedStatus::parse(s).is_some() => format!("{code} {s}"),
                _ => code,
            }
        })
        .collect()
}

/// Feeds `script` cut at `cuts` and returns every reply line plus the queued transactions.
pub fn run_split(script: &[u8], cuts: &[usize]) -> (Vec<String>, Vec<Transaction>) {
    let mut t = Dialogue::new(config());
    let mut all = String::new();
    let mut start = 0;
    for &c in cuts.iter().chain(std::iter::once(&script.len())) {
        all.push_str(&t.send_bytes(&script[start..c]).concat());
        start = c;
    }
    let lines = all.split_inclusive("\r\n").map(str::to_string).collect();
    (lines, t.queued)
}
