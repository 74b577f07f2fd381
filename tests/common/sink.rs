//! A scriptable SMTP server ("sink") for integration tests of anything that sends mail.
//!
//! It records every accepted message exactly as received (after dot-unstuffing), and can be
//! told to refuse temporarily or permanently, hang, offer STARTTLS with a self-signed
//! certificate (or a broken one), advertise SIZE, or answer individual RCPTs from a script.
//! Bind several sinks on distinct 127.0.0.x addresses with one port ([`bind_same_port`]) so
//! DNS A records can tell them apart while the client uses a single SMTP port.

#![allow(dead_code)]

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::ServerConfig;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::TlsAcceptor;

/// What the sink does with transactions, before any per-recipient script.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Behaviour {
    /// Accept and store every message.
    Accept,
    /// Answer every RCPT with `451 4.3.0`.
    TempFailRcpt,
    /// Accept RCPTs, then answer the final dot with `451 4.3.0` (nothing stored).
    TempFailData,
    /// Answer every RCPT with `550 5.1.1`.
    PermFailRcpt,
    /// Accept the TCP connection and never send a byte.
    Hang,
}

/// What a RCPT script sees for one recipient.
#[derive(Debug, Clone)]
pub struct RcptContext<'a> {
    /// The address inside the angle brackets.
    pub address: &'a str,
    /// 0-based position of this RCPT in the current transaction.
    pub index: usize,
    /// How many RCPTs of this transaction were accepted so far.
    pub accepted: usize,
}

/// A per-recipient override: return a full reply line (e.g. `"452 4.5.3 too many"`) to use
/// it instead of the behaviour's answer, or `None` to fall through. 2xx lines accept.
pub type RcptScript = Arc<dyn Fn(&RcptContext<'_>) -> Option<String> + Send + Sync>;

/// How a sink behaves; build with [`SinkConfig::accept`] and the `with_*` methods.
#[derive(Clone)]
pub struct SinkConfig {
    /// The transaction behaviour.
    pub behaviour: Behaviour,
    /// Offer STARTTLS with a fresh rcgen self-signed certificate.
    pub starttls: bool,
    /// Offer STARTTLS, answer 220, then send garbage instead of a handshake.
    pub broken_tls: bool,
    /// Advertise PIPELINING (default true).
    pub pipelining: bool,
    /// Advertise DSN.
    pub dsn: bool,
    /// Advertise `SIZE n` (`Some(0)` advertises `SIZE 0`); the sink does not enforce it.
    pub size: Option<u64>,
    /// Replace the `220` greeting with this full line, e.g. `"421 4.3.2 busy"`.
    pub greeting: Option<String>,
    /// Per-recipient overrides, consulted before the behaviour.
    pub rcpt_script: Option<RcptScript>,
    /// The name in the greeting and EHLO reply.
    pub hostname: String,
    /// Serve this certificate chain and key for STARTTLS instead of a self-signed one.
    pub tls_identity: Option<(Vec<CertificateDer<'static>>, Arc<PrivateKeyDer<'static>>)>,
    /// Advertise STARTTLS but answer it with this line (e.g. a 454), as a stripping
    /// attacker or a broken server would.
    pub starttls_reply: Option<String>,
    /// Advertise CHUNKING and accept BDAT.
    pub chunking: bool,
    /// Wait this long before answering each message's final reply (a slow server).
    pub delay: Option<Duration>,
}

impl SinkConfig {
    /// Accept everything, advertise PIPELINING, 8BITMIME and SMTPUTF8.
    pub fn accept() -> Self {
        Self::with_behaviour(Behaviour::Accept)
    }

    /// The defaults with another behaviour.
    pub fn with_behaviour(behaviour: Behaviour) -> Self {
        Self {
            behaviour,
            starttls: false,
            broken_tls: false,
            pipelining: true,
            dsn: false,
            size: None,
            greeting: None,
            rcpt_script: None,
            hostname: "sink.test".into(),
            tls_identity: None,
            starttls_reply: None,
            chunking: false,
            delay: None,
        }
    }

    /// Advertise CHUNKING (RFC 3030) and accept BDAT.
    pub fn with_chunking(mut self) -> Self {
        self.chunking = true;
        self
    }

    /// Answer each message only after `d`.
    pub fn with_delay(mut self, d: Duration) -> Self {
        self.delay = Some(d);
        self
    }

    /// Offer STARTTLS.
    pub fn with_starttls(mut self) -> Self {
        self.starttls = true;
        self
    }

    /// Offer STARTTLS with this certificate chain and key (from a test CA).
    pub fn with_certificate(
        mut self,
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Self {
        self.starttls = true;
        self.tls_identity = Some((chain, Arc::new(key)));
        self
    }

    /// Offer STARTTLS but refuse it with `line` when asked.
    pub fn with_starttls_refused(mut self, line: &str) -> Self {
        self.starttls = true;
        self.starttls_reply = Some(line.into());
        self
    }

    /// Offer STARTTLS but break the handshake.
    pub fn with_broken_tls(mut self) -> Self {
        self.broken_tls = true;
        self
    }

    /// Advertise `SIZE n`.
    pub fn with_size(mut self, n: u64) -> Self {
        self.size = Some(n);
        self
    }

    /// Advertise DSN.
    pub fn with_dsn(mut self) -> Self {
        self.dsn = true;
        self
    }

    /// Do not advertise PIPELINING.
    pub fn without_pipelining(mut self) -> Self {
        self.pipelining = false;
        self
    }

    /// Use this greeting line instead of `220`.
    pub fn with_greeting(mut self, line: &str) -> Self {
        self.greeting = Some(line.into());
        self
    }

    /// Answer RCPTs from a script first.
    pub fn with_rcpt_script(
        mut self,
        f: impl Fn(&RcptContext<'_>) -> Option<String> + Send + Sync + 'static,
    ) -> Self {
        self.rcpt_script = Some(Arc::new(f));
        self
    }

    /// Answer `452 4.5.3` to every RCPT after `n` were accepted in one transaction (C12).
    pub fn with_max_recipients(self, n: usize) -> Self {
        self.with_rcpt_script(move |c| {
            (c.accepted >= n).then(|| "452 4.5.3 too many recipients".to_string())
        })
    }
}

/// One message the sink accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    /// The name given in EHLO/HELO.
    pub helo: String,
    /// The reverse path without brackets (`""` for `<>`).
    pub mail_from: String,
    /// The MAIL parameters, e.g. `["SIZE=123", "BODY=8BITMIME"]`.
    pub mail_params: Vec<String>,
    /// Accepted recipients without brackets, in order.
    pub rcpts: Vec<String>,
    /// The parameters of each accepted RCPT.
    pub rcpt_params: Vec<Vec<String>>,
    /// The body after dot-unstuffing, up to (not including) the terminating `.\r\n`.
    pub data: Vec<u8>,
    /// The DATA bytes exactly as on the wire, including the final `.\r\n`.
    pub raw_data: Vec<u8>,
    /// The client's IP address.
    pub peer: IpAddr,
    /// Whether the transaction ran over TLS.
    pub tls: bool,
    /// When the message was accepted.
    pub at: std::time::Instant,
    /// Which connection (1, 2, ... in accept order) carried it.
    pub conn: usize,
    /// The body came by BDAT rather than DATA.
    pub bdat: bool,
}

struct Shared {
    config: SinkConfig,
    tls: Option<TlsAcceptor>,
    messages: Mutex<Vec<Received>>,
    notify: Notify,
    connections: AtomicUsize,
    active: AtomicUsize,
    max_active: AtomicUsize,
    rsets: AtomicUsize,
}

/// A running sink; it stops (and drops open connections) when dropped.
pub struct Sink {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl Sink {
    /// Binds `addr` (port 0 for any) and starts serving.
    pub async fn start(addr: SocketAddr, config: SinkConfig) -> io::Result<Sink> {
        Ok(Self::from_listener(TcpListener::bind(addr).await?, config))
    }

    /// Serves on an already bound listener (see [`bind_same_port`]).
    pub fn from_listener(listener: TcpListener, config: SinkConfig) -> Sink {
        let addr = listener
            .local_addr()
            .expect("bound listener has an address");
        let tls = (config.starttls && !config.broken_tls).then(|| match &config.tls_identity {
            Some((chain, key)) => acceptor_for(chain.clone(), key.clone_key()),
            None => self_signed_acceptor(),
        });
        let shared = Arc::new(Shared {
            config,
            tls,
            messages: Mutex::new(Vec::new()),
            notify: Notify::new(),
            connections: AtomicUsize::new(0),
            active: AtomicUsize::new(0),
            max_active: AtomicUsize::new(0),
            rsets: AtomicUsize::new(0),
        });
        let task = tokio::spawn(accept_loop(listener, shared.clone()));
        Sink { addr, shared, task }
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A copy of every message accepted so far.
    pub fn messages(&self) -> Vec<Received> {
        self.shared
            .messages
            .lock()
            .map(|m| m.clone())
            .unwrap_or_default()
    }

    /// How many TCP connections were accepted so far.
    pub fn connections(&self) -> usize {
        self.shared.connections.load(Ordering::SeqCst)
    }

    /// The most connections that were open at the same time.
    pub fn max_concurrent(&self) -> usize {
        self.shared.max_active.load(Ordering::SeqCst)
    }

    /// How many RSET commands arrived.
    pub fn rsets(&self) -> usize {
        self.shared.rsets.load(Ordering::SeqCst)
    }

    /// Waits until at least `n` messages were accepted and returns them; panics after
    /// `timeout` with what arrived, so a failing test says how far it got.
    pub async fn wait_for(&self, n: usize, timeout: Duration) -> Vec<Received> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.shared.notify.notified();
            let got = self.messages();
            if got.len() >= n {
                return got;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                panic!(
                    "sink {} got {} of {n} messages in {timeout:?}: {got:?}",
                    self.addr,
                    got.len()
                );
            }
        }
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Binds one listener per IP, all on the same port, retrying with a new port when one of
/// them is taken. The first IP should be unique to the calling test (e.g. 127.0.0.2).
pub async fn bind_same_port(ips: &[IpAddr]) -> (u16, Vec<TcpListener>) {
    'attempt: for _ in 0..50 {
        let Some(first) = ips.first() else {
            panic!("bind_same_port needs at least one IP");
        };
        let l0 = TcpListener::bind((*first, 0))
            .await
            .expect("bind first sink");
        let port = l0.local_addr().expect("local address").port();
        let mut listeners = vec![l0];
        for ip in &ips[1..] {
            match TcpListener::bind((*ip, port)).await {
                Ok(l) => listeners.push(l),
                Err(_) => continue 'attempt,
            }
        }
        return (port, listeners);
    }
    panic!("could not bind {ips:?} on one port");
}

/// A free port on `ip` with nothing listening (connections to it are refused).
pub async fn refused_port(ip: IpAddr) -> u16 {
    let l = TcpListener::bind((ip, 0)).await.expect("bind");
    l.local_addr().expect("local address").port()
}

fn self_signed_acceptor() -> TlsAcceptor {
    let ck = rcgen::generate_simple_self_signed(vec!["sink.test".to_string()])
        .expect("self-signed certificate");
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(ck.signing_key.serialize_der()));
    acceptor_for(vec![ck.cert.der().clone()], key)
}

fn acceptor_for(chain: Vec<CertificateDer<'static>>, key: PrivateKeyDer<'static>) -> TlsAcceptor {
    let config =
        ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .expect("server certificate");
    TlsAcceptor::from(Arc::new(config))
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    // Connections live in the JoinSet so aborting this task (dropping the Sink) ends them.
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, peer)) = accepted else { continue };
                let n = shared.connections.fetch_add(1, Ordering::SeqCst) + 1;
                let now = shared.active.fetch_add(1, Ordering::SeqCst) + 1;
                shared.max_active.fetch_max(now, Ordering::SeqCst);
                let s = shared.clone();
                conns.spawn(async move {
                    connection(stream, peer.ip(), n, s.clone()).await;
                    s.active.fetch_sub(1, Ordering::SeqCst);
                });
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

async fn connection(stream: TcpStream, peer: IpAddr, conn: usize, shared: Arc<Shared>) {
    if shared.config.behaviour == Behaviour::Hang {
        let _keep = stream;
        std::future::pending::<()>().await;
        return;
    }
    let plain = match session(stream, peer, conn, false, &shared).await {
        Ok(Some(s)) => s,
        _ => return,
    };
    let Some(acceptor) = shared.tls.clone() else {
        let mut s = plain;
        let _ = s.write_all(b"garbage, not a TLS server hello\r\n").await;
        return;
    };
    if let Ok(tls) = acceptor.accept(plain).await {
        let _ = session(tls, peer, conn, true, &shared).await;
    }
}

#[derive(Default)]
struct Txn {
    mail: Option<(String, Vec<String>)>,
    rcpts: Vec<(String, Vec<String>)>,
    index: usize,
    chunks: Vec<u8>,
}

/// Stores a completed transaction (unless told to tempfail it) and returns the reply.
#[allow(clippy::too_many_arguments)]
async fn finish(
    shared: &Shared,
    t: Txn,
    helo: &str,
    peer: IpAddr,
    conn: usize,
    tls: bool,
    data: Vec<u8>,
    raw_data: Vec<u8>,
    bdat: bool,
) -> &'static str {
    if let Some(d) = shared.config.delay {
        tokio::time::sleep(d).await;
    }
    if shared.config.behaviour == Behaviour::TempFailData {
        return "451 4.3.0 cannot queue now";
    }
    let (mail_from, mail_params) = t.mail.unwrap_or_default();
    let (rcpts, rcpt_params) = t.rcpts.into_iter().unzip();
    if let Ok(mut m) = shared.messages.lock() {
        m.push(Received {
            helo: helo.to_string(),
            mail_from,
            mail_params,
            rcpts,
            rcpt_params,
            data,
            raw_data,
            peer,
            tls,
            at: std::time::Instant::now(),
            conn,
            bdat,
        });
    }
    shared.notify.notify_waiters();
    "250 2.0.0 queued"
}

/// Runs the dialogue; returns the raw stream when the client asked for STARTTLS (the read
/// buffer is discarded, as a correct server must).
async fn session<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    peer: IpAddr,
    conn: usize,
    tls: bool,
    shared: &Shared,
) -> io::Result<Option<S>> {
    let cfg = &shared.config;
    let mut r = BufReader::new(stream);
    if !tls {
        let greeting = cfg
            .greeting
            .clone()
            .unwrap_or_else(|| format!("220 {} ESMTP sink", cfg.hostname));
        reply(&mut r, &greeting).await?;
        if !greeting.starts_with('2') {
            return Ok(None);
        }
    }
    let mut helo = String::new();
    let mut txn = Txn::default();
    loop {
        let Some(line) = read_line(&mut r).await? else {
            return Ok(None);
        };
        let line = String::from_utf8_lossy(&line).trim_end().to_string();
        let upper = line.to_ascii_uppercase();
        let verb = upper.split(' ').next().unwrap_or("").to_string();
        match verb.as_str() {
            "EHLO" => {
                helo = line[4..].trim().to_string();
                txn = Txn::default();
                let mut lines = vec![cfg.hostname.clone()];
                if cfg.pipelining {
                    lines.push("PIPELINING".into());
                }
                if let Some(n) = cfg.size {
                    lines.push(format!("SIZE {n}"));
                }
                if (cfg.starttls || cfg.broken_tls) && !tls {
                    lines.push("STARTTLS".into());
                }
                if cfg.dsn {
                    lines.push("DSN".into());
                }
                lines.push("8BITMIME".into());
                lines.push("SMTPUTF8".into());
                if cfg.chunking {
                    lines.push("CHUNKING".into());
                }
                let n = lines.len();
                let mut out = String::new();
                for (k, l) in lines.iter().enumerate() {
                    let sep = if k + 1 == n { ' ' } else { '-' };
                    out.push_str(&format!("250{sep}{l}\r\n"));
                }
                r.get_mut().write_all(out.as_bytes()).await?;
            }
            "HELO" => {
                helo = line[4..].trim().to_string();
                txn = Txn::default();
                reply(&mut r, &format!("250 {}", cfg.hostname)).await?;
            }
            "STARTTLS" if (cfg.starttls || cfg.broken_tls) && !tls => {
                if let Some(line) = &cfg.starttls_reply {
                    reply(&mut r, line).await?;
                    continue;
                }
                reply(&mut r, "220 2.0.0 Ready to start TLS").await?;
                return Ok(Some(r.into_inner()));
            }
            "MAIL" => match parse_path(&line, "MAIL FROM:") {
                Some(p) if txn.mail.is_none() => {
                    txn.mail = Some(p);
                    reply(&mut r, "250 2.1.0 ok").await?;
                }
                Some(_) => reply(&mut r, "503 5.5.1 nested MAIL").await?,
                None => reply(&mut r, "501 5.5.4 syntax").await?,
            },
            "RCPT" => {
                let Some((addr, params)) = parse_path(&line, "RCPT TO:") else {
                    reply(&mut r, "501 5.5.4 syntax").await?;
                    continue;
                };
                if txn.mail.is_none() {
                    reply(&mut r, "503 5.5.1 need MAIL").await?;
                    continue;
                }
                let ctx = RcptContext {
                    address: &addr,
                    index: txn.index,
                    accepted: txn.rcpts.len(),
                };
                txn.index += 1;
                let answer = cfg
                    .rcpt_script
                    .as_ref()
                    .and_then(|f| f(&ctx))
                    .unwrap_or_else(|| {
                        match cfg.behaviour {
                            Behaviour::TempFailRcpt => "451 4.3.0 try again later",
                            Behaviour::PermFailRcpt => "550 5.1.1 no such user",
                            _ => "250 2.1.5 ok",
                        }
                        .to_string()
                    });
                if answer.starts_with('2') {
                    txn.rcpts.push((addr, params));
                }
                reply(&mut r, &answer).await?;
            }
            "DATA" => {
                if txn.rcpts.is_empty() {
                    reply(&mut r, "554 5.5.1 no valid recipients").await?;
                    continue;
                }
                reply(&mut r, "354 go ahead").await?;
                let Some((data, raw_data)) = read_data(&mut r).await? else {
                    return Ok(None);
                };
                let t = std::mem::take(&mut txn);
                let line = finish(shared, t, &helo, peer, conn, tls, data, raw_data, false).await;
                reply(&mut r, line).await?;
            }
            "BDAT" if cfg.chunking => {
                let mut words = line.split_ascii_whitespace().skip(1);
                let size: Option<usize> = words.next().and_then(|n| n.parse().ok());
                let last = words.next().is_some_and(|w| w.eq_ignore_ascii_case("LAST"));
                let Some(size) = size else {
                    reply(&mut r, "501 5.5.4 syntax").await?;
                    continue;
                };
                let mut chunk = vec![0u8; size];
                tokio::io::AsyncReadExt::read_exact(&mut r, &mut chunk).await?;
                txn.chunks.extend_from_slice(&chunk);
                if txn.rcpts.is_empty() {
                    reply(&mut r, "554 5.5.1 no valid recipients").await?;
                    txn = Txn::default();
                    continue;
                }
                if !last {
                    reply(&mut r, &format!("250 2.0.0 {size} octets")).await?;
                    continue;
                }
                let mut t = std::mem::take(&mut txn);
                let data = std::mem::take(&mut t.chunks);
                let line =
                    finish(shared, t, &helo, peer, conn, tls, data.clone(), data, true).await;
                reply(&mut r, line).await?;
            }
            "RSET" => {
                shared.rsets.fetch_add(1, Ordering::SeqCst);
                txn = Txn::default();
                reply(&mut r, "250 2.0.0 ok").await?;
            }
            "NOOP" => reply(&mut r, "250 2.0.0 ok").await?,
            "QUIT" => {
                reply(&mut r, "221 2.0.0 bye").await?;
                return Ok(None);
            }
            _ => reply(&mut r, "500 5.5.2 unknown command").await?,
        }
    }
}

async fn reply<S: AsyncRead + AsyncWrite + Unpin>(
    r: &mut BufReader<S>,
    line: &str,
) -> io::Result<()> {
    r.get_mut()
        .write_all(format!("{line}\r\n").as_bytes())
        .await
}

/// One line including its LF, or `None` at EOF.
async fn read_line<S: AsyncRead + Unpin>(r: &mut BufReader<S>) -> io::Result<Option<Vec<u8>>> {
    let mut line = Vec::new();
    let n = r.read_until(b'\n', &mut line).await?;
    Ok((n > 0).then_some(line))
}

/// Reads DATA lines up to `.\r\n`, removing one leading dot from stuffed lines; returns
/// the unstuffed body and the raw wire bytes.
async fn read_data<S: AsyncRead + Unpin>(
    r: &mut BufReader<S>,
) -> io::Result<Option<(Vec<u8>, Vec<u8>)>> {
    let mut data = Vec::new();
    let mut raw = Vec::new();
    loop {
        let Some(line) = read_line(r).await? else {
            return Ok(None);
        };
        raw.extend_from_slice(&line);
        if line == b".\r\n" {
            return Ok(Some((data, raw)));
        }
        let body = line.strip_prefix(b".").unwrap_or(&line);
        data.extend_from_slice(body);
    }
}

/// Splits `MAIL FROM:<a@b> P1 P2` into the path and its parameters.
fn parse_path(line: &str, prefix: &str) -> Option<(String, Vec<String>)> {
    let head = line.get(..prefix.len())?;
    if !head.eq_ignore_ascii_case(prefix) {
        return None;
    }
    let rest = line[prefix.len()..].trim_start();
    let rest = rest.strip_prefix('<')?;
    let end = rest.find('>')?;
    let params = rest[end + 1..]
        .split_ascii_whitespace()
        .map(str::to_string)
        .collect();
    Some((rest[..end].to_string(), params))
}
