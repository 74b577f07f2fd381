//! The whole server in-process: a config pointing at the test DNS, a temp spool, a manual
//! clock, and a raw SMTP client for dialogues.

use sealpost::config::Config;
use sealpost::queue::ManualClock;
use sealpost::server::{self, Running};
use sealpost::smtp::reply::{Reply, ReplyParser};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// Unix seconds the manual clock starts at (2023-11-14).
pub const T0: u64 = 1_700_000_000;

/// Config text for a relay listener on 127.0.0.1:0 using `dns` and MX port `port`.
/// `extra` is appended (more sections or keys for `[queue]` etc.).
pub fn config_text(spool: &Path, dns: SocketAddr, port: u16, trusted: bool, extra: &str) -> String {
    let trusted = if trusted { r#"["127.0.0.1/32"]"# } else { "[]" };
    format!(
        r#"
[server]
hostname = "mx.sealpost.test"
spool_dir = "{spool}"
idle_timeout_secs = 30
shutdown_grace_secs = 2
[[listener]]
address = "127.0.0.1:0"
mode = "relay"
[relay]
local_domains = ["example.com"]
trusted_networks = {trusted}
[dns]
nameservers = ["{dns}"]
[outbound]
smtp_port = {port}
connect_timeout_secs = 2
command_timeout_secs = 5
data_timeout_secs = 5
{extra}
"#,
        spool = spool.display()
    )
}

/// Starts the server from config text with the given clock.
pub async fn start(text: &str, clock: Arc<ManualClock>) -> Running {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cfg = Config::parse(text, Path::new("test.toml")).expect("test config parses");
    // After an in-process shutdown the old spool handle is released by tasks finishing on
    // the runtime; a real restart is a new process. Retry briefly while sled's lock is held.
    for _ in 0..100 {
        match server::start(cfg.clone(), clock.clone()).await {
            Err(server::StartError::Spool(sealpost::spool::SpoolError::Locked)) => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            other => return other.expect("server starts"),
        }
    }
    panic!("spool still locked after 5 s");
}

/// Moves the clock and wakes the scheduler.
pub fn advance(running: &Running, clock: &ManualClock, secs: u64) {
    clock.advance(secs);
    running.queue.wake();
}

/// Polls `f` every 20 ms until it is true; panics after `timeout` with `what`.
pub async fn eventually(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + timeout;
    while !f() {
        if tokio::time::Instant::now() > deadline {
            panic!("timed out waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A raw SMTP client for scripted dialogues over any stream (plain or TLS).
pub struct Client<S> {
    /// The connection.
    pub stream: S,
    parser: ReplyParser,
    ready: std::collections::VecDeque<Reply>,
}

impl Client<TcpStream> {
    /// Connects and reads the greeting.
    pub async fn connect(addr: SocketAddr) -> (Self, Reply) {
        let stream = TcpStream::connect(addr).await.expect("connect to server");
        let mut c = Client::over(stream);
        let greeting = c.reply().await;
        (c, greeting)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Client<S> {
    /// Wraps an already connected stream.
    pub fn over(stream: S) -> Self {
        Self {
            stream,
            parser: ReplyParser::new(),
            ready: Default::default(),
        }
    }

    /// Reads the next reply (panics on EOF or after 10 s).
    pub async fn reply(&mut self) -> Reply {
        loop {
            if let Some(r) = self.ready.pop_front() {
                return r;
            }
            let mut buf = [0u8; 4096];
            let n = tokio::time::timeout(Duration::from_secs(10), self.stream.read(&mut buf))
                .await
                .expect("reply within 10 s")
                .expect("read");
            assert!(n > 0, "server closed the connection");
            self.ready
                .extend(self.parser.feed(&buf[..n]).expect("well-formed reply"));
        }
    }

    /// True when the server closed the connection (EOF) with no reply pending.
    pub async fn closed(&mut self) -> bool {
        let mut buf = [0u8; 64];
        matches!(
            tokio::time::timeout(Duration::from_secs(5), self.stream.read(&mut buf)).await,
            Ok(Ok(0)) | Ok(Err(_))
        )
    }

    /// Writes raw bytes.
    pub async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("write");
    }

    /// Sends one command line and returns its reply.
    pub async fn cmd(&mut self, line: &str) -> Reply {
        self.send(format!("{line}\r\n").as_bytes()).await;
        self.reply().await
    }
}

/// Sends a whole message; returns the reply to the final dot. `body` must be CRLF and
/// already dot-stuffed where needed; it is sent followed by `.\r\n`.
pub async fn send_message(addr: SocketAddr, from: &str, rcpts: &[&str], body: &[u8]) -> Reply {
    let (mut c, g) = Client::connect(addr).await;
    assert_eq!(g.code, 220);
    assert_eq!(c.cmd("EHLO client.example.net").await.code, 250);
    let r = c.cmd(&format!("MAIL FROM:<{from}>")).await;
    assert_eq!(r.code, 250, "MAIL: {r}");
    for rcpt in rcpts {
        let r = c.cmd(&format!("RCPT TO:<{rcpt}>")).await;
        assert_eq!(r.code, 250, "RCPT {rcpt}: {r}");
    }
    assert_eq!(c.cmd("DATA").await.code, 354);
    c.send(body).await;
    c.send(b".\r\n").await;
    let r = c.reply().await;
    let _ = c.cmd("QUIT").await;
    r
}

/// Extracts the queue id from `250 2.0.0 Ok: queued as ID`.
pub fn queue_id(reply: &Reply) -> String {
    assert_eq!(reply.code, 250, "not queued: {reply}");
    reply
        .text()
        .rsplit(' ')
        .next()
        .expect("id in reply")
        .to_string()
}

/// A queued envelope as a listener would write it: one recipient, due at `T0`, in `class`
/// (`None` = default). For tests that fill the spool directly.
pub fn envelope(
    id: &str,
    mail_from: &str,
    rcpt: &str,
    class: Option<&str>,
    size: u64,
) -> sealpost::spool::Envelope {
    use sealpost::spool::{Envelope, RecipientRecord};
    Envelope {
        version: 1,
        id: id.into(),
        created: T0,
        next_due: T0,
        attempts: 0,
        mail_from: mail_from.into(),
        envid: None,
        ret: None,
        smtputf8: false,
        eight_bit: false,
        size,
        helo: "client.example.net".into(),
        client: "127.0.0.1".into(),
        authenticated: None,
        is_dsn: false,
        listener: None,
        class: class.map(str::to_string),
        api_client: None,
        recipients: vec![RecipientRecord::queued(rcpt.into(), T0)],
    }
}
