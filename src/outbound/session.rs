//! One SMTP session with one server address: greeting, EHLO, STARTTLS as policy demands, then
//! any number of messages over the same connection (RSET between), then QUIT.
//!
//! [`Session::open`] decides whether this host can take mail at all (an [`OpenError`] says
//! whether to try the next host or to reconnect without TLS); [`Session::deliver`] offers one
//! message's pending recipients, in as many transactions as the server's recipient limit
//! needs. [`attempt`] is the one-message-per-connection use of both, for [`super::deliver`].

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::ClientConfig;

use super::conn::{Conn, ConnError};
use super::ehlo::Capabilities;
use super::tls::TlsSummary;
use super::transaction::{self, Sent};
use super::{Delivery, OutboundConfig, RcptOutcome};
use crate::smtp::reply::{EnhancedStatus, Reply};

/// The longest wait for the reply to QUIT: the message is already delivered.
const QUIT_TIMEOUT: Duration = Duration::from_secs(5);

/// Where one session goes and what it must insist on.
pub struct OpenParams<'a> {
    /// Timeouts.
    pub cfg: &'a OutboundConfig,
    /// The name sent in EHLO (the egress source's name).
    pub helo_name: &'a str,
    /// The local address to bind (the egress source's address).
    pub source: Option<IpAddr>,
    /// The MX host name (for TLS name checks and logs).
    pub host: &'a str,
    /// The address to connect to.
    pub ip: IpAddr,
    /// The port.
    pub port: u16,
    /// Policy demands TLS: no STARTTLS, a refusal or a failed handshake means "next host"
    /// (4.7.x) and never plaintext.
    pub require_tls: bool,
    /// The TLS config verifies certificates; recorded in the summary.
    pub verified: bool,
}

/// Why a session could not be opened.
#[derive(Debug)]
pub enum OpenError {
    /// This host cannot take the mail now: offer it to the next host; if none works, this
    /// reply is what the recipients get.
    Next {
        /// The reply (real, or synthetic for network trouble).
        reply: Reply,
        /// `host[ip]`.
        remote: String,
    },
    /// Opportunistic STARTTLS failed: reconnect once without TLS.
    TlsFailed(Reply),
}

/// An open session, ready for a transaction.
pub struct Session {
    conn: Conn,
    /// What the server advertised (after STARTTLS when it was used).
    pub caps: Capabilities,
    /// The TLS parameters when the session runs over TLS.
    pub tls: Option<TlsSummary>,
    /// `host[ip]`.
    pub remote: String,
    /// Transactions started on this connection; from the second on, RSET goes first.
    transactions: usize,
}

/// Why a session stopped while opening.
enum Stop {
    /// The connection broke.
    Conn(ConnError),
    /// The TLS upgrade (or the EHLO right after it) failed.
    Tls(ConnError),
}

impl From<ConnError> for Stop {
    fn from(e: ConnError) -> Self {
        Self::Conn(e)
    }
}

impl Session {
    /// Connects and greets; STARTTLS when offered and `tls` is given (required when
    /// `p.require_tls`).
    pub async fn open(
        p: &OpenParams<'_>,
        tls: Option<Arc<ClientConfig>>,
    ) -> Result<Session, OpenError> {
        let remote = format!("{}[{}]", p.host, p.ip);
        let mut conn = Conn::connect(p.host, p.ip, p.port, p.source, p.cfg.connect_timeout)
            .await
            .map_err(|e| {
                tracing::info!(%remote, error = %e, "connect failed");
                OpenError::Next {
                    reply: e.to_reply(&remote),
                    remote: remote.clone(),
                }
            })?;
        match handshake(&mut conn, p, tls).await {
            Ok(Ok((caps, tls))) => Ok(Session {
                conn,
                caps,
                tls,
                remote,
                transactions: 0,
            }),
            Ok(Err(reply)) => {
                let _ = conn.command("QUIT", QUIT_TIMEOUT).await;
                Err(OpenError::Next { reply, remote })
            }
            Err(Stop::Conn(e)) => {
                tracing::info!(%remote, error = %e, "session failed");
                Err(OpenError::Next {
                    reply: e.to_reply(&remote),
                    remote,
                })
            }
            Err(Stop::Tls(e)) if p.require_tls => {
                tracing::warn!(%remote, error = %e, "required TLS failed; trying the next host");
                Err(OpenError::Next {
                    reply: Reply::new(
                        451,
                        EnhancedStatus::new(4, 7, 5),
                        format!("TLS with {remote} failed ({e}); TLS is required by policy"),
                    ),
                    remote,
                })
            }
            Err(Stop::Tls(e)) => Err(OpenError::TlsFailed(e.to_reply(&remote))),
        }
    }

    /// Offers one message's `pending` recipients (indexes into `d.recipients`), in as many
    /// transactions as a "too many recipients" reply needs, recording outcomes in `sent` as
    /// they come. An `Err` means the connection is unusable; what `sent` holds by then stays
    /// settled (a delivered recipient must not be delivered twice).
    pub async fn deliver(
        &mut self,
        cfg: &OutboundConfig,
        d: &Delivery<'_>,
        pending: &[usize],
        sent: &mut Sent,
    ) -> Result<(), ConnError> {
        if let Some(reply) = transaction::precheck(d, &self.caps) {
            for &i in pending {
                sent.settled.push((
                    i,
                    RcptOutcome::Failed {
                        reply: reply.clone(),
                        remote: Some(self.remote.clone()),
                    },
                ));
            }
            return Ok(());
        }
        let mut todo = transaction::safe_recipients(d, pending, sent);
        while !todo.is_empty() {
            let rset = self.transactions > 0;
            self.transactions += 1;
            todo = transaction::run(&mut self.conn, cfg, d, &self.caps, &todo, rset, sent).await?;
        }
        Ok(())
    }

    /// Messages (transactions) this session has carried.
    pub fn transactions(&self) -> usize {
        self.transactions
    }

    /// Ends the session politely; errors do not matter any more.
    pub async fn quit(mut self, cfg: &OutboundConfig) {
        let _ = self
            .conn
            .command("QUIT", cfg.command_timeout.min(QUIT_TIMEOUT))
            .await;
    }
}

/// Greeting, EHLO (HELO fallback), STARTTLS. `Ok(Err(reply))` means the server refused
/// something and the next host should be tried with that reply.
async fn handshake(
    conn: &mut Conn,
    p: &OpenParams<'_>,
    tls: Option<Arc<ClientConfig>>,
) -> Result<Result<(Capabilities, Option<TlsSummary>), Reply>, Stop> {
    let t = p.cfg.command_timeout;
    let remote = conn.remote.clone();
    let greeting = conn.read_reply(t, "greeting").await?;
    if !greeting.is_positive() {
        return Ok(Err(greeting));
    }
    let mut caps = match hello(conn, p).await? {
        Hello::Ehlo(c) => Some(c),
        Hello::Helo => None,
        Hello::Refused(reply) => return Ok(Err(reply)),
    };
    let offered = caps.as_ref().is_some_and(|c| c.starttls);
    if p.require_tls && (!offered || tls.is_none()) {
        return Ok(Err(Reply::new(
            451,
            EnhancedStatus::new(4, 7, 4),
            format!("{remote} does not offer STARTTLS; TLS is required by policy"),
        )));
    }
    let mut summary = None;
    if let (true, Some(config)) = (offered, tls) {
        // Any failure from here to the new EHLO counts as a TLS failure, so the caller's
        // plaintext retry also covers servers that garble their STARTTLS reply.
        let r = conn.command("STARTTLS", t).await.map_err(Stop::Tls)?;
        if r.code == 220 {
            let mut s = conn.upgrade(config, t).await.map_err(Stop::Tls)?;
            s.verified = p.verified;
            summary = Some(s);
            let again = conn
                .command(&format!("EHLO {}", p.helo_name), t)
                .await
                .map_err(Stop::Tls)?;
            if !again.is_positive() {
                return Err(Stop::Tls(ConnError::Tls(format!(
                    "EHLO after STARTTLS answered {again}"
                ))));
            }
            caps = Some(Capabilities::from_ehlo(&again));
        } else if p.require_tls {
            return Ok(Err(Reply::new(
                451,
                EnhancedStatus::new(4, 7, 4),
                format!("{remote} refused STARTTLS ({r}); TLS is required by policy"),
            )));
        } else {
            tracing::warn!(%remote, reply = %r, "STARTTLS refused; continuing in plaintext");
        }
    }
    if caps.is_none() {
        tracing::debug!(%remote, "server only speaks HELO");
    }
    Ok(Ok((caps.unwrap_or_default(), summary)))
}

/// The outcome of the hello step.
enum Hello {
    /// EHLO worked; these are the server's extensions.
    Ehlo(Capabilities),
    /// EHLO got a 5xx and HELO worked: no extensions.
    Helo,
    /// Neither worked; the reply says why.
    Refused(Reply),
}

/// EHLO, falling back to HELO on a 5xx (RFC 5321 §3.2).
async fn hello(conn: &mut Conn, p: &OpenParams<'_>) -> Result<Hello, Stop> {
    let t = p.cfg.command_timeout;
    let ehlo = conn.command(&format!("EHLO {}", p.helo_name), t).await?;
    if ehlo.is_positive() {
        return Ok(Hello::Ehlo(Capabilities::from_ehlo(&ehlo)));
    }
    if !ehlo.is_permanent() {
        return Ok(Hello::Refused(ehlo));
    }
    let helo = conn.command(&format!("HELO {}", p.helo_name), t).await?;
    if helo.is_positive() {
        Ok(Hello::Helo)
    } else {
        Ok(Hello::Refused(helo))
    }
}

/// What one single-message session did for the pending recipients.
#[derive(Default)]
pub(crate) struct Attempt {
    /// Recipients this session settled (index into `Delivery::recipients`).
    pub settled: Vec<(usize, RcptOutcome)>,
    /// Set when the unsettled recipients should be offered to the next host, with why.
    pub try_next: Option<(Reply, Option<String>)>,
    /// The TLS parameters when the session ran over TLS.
    pub tls: Option<TlsSummary>,
    /// Whether the server advertised DSN.
    pub dsn: bool,
    /// Set when STARTTLS failed; the caller reconnects once in plaintext.
    pub tls_failed: Option<Reply>,
}

/// Opens a session, offers `pending`, quits: one message over one connection.
pub(crate) async fn attempt(
    p: &OpenParams<'_>,
    d: &Delivery<'_>,
    pending: &[usize],
    tls: Option<Arc<ClientConfig>>,
) -> Attempt {
    let mut a = Attempt::default();
    let mut session = match Session::open(p, tls).await {
        Ok(s) => s,
        Err(OpenError::Next { reply, remote }) => {
            a.try_next = Some((reply, Some(remote)));
            return a;
        }
        Err(OpenError::TlsFailed(reply)) => {
            a.tls_failed = Some(reply);
            return a;
        }
    };
    a.tls = session.tls.clone();
    a.dsn = session.caps.dsn;
    let mut sent = Sent::default();
    match session.deliver(p.cfg, d, pending, &mut sent).await {
        Ok(()) => {
            a.try_next = sent.try_next;
            session.quit(p.cfg).await;
        }
        Err(e) => {
            // Whatever was settled before the break stays settled; the rest goes to the
            // next host.
            tracing::info!(remote = %session.remote, error = %e, "session failed");
            a.try_next = Some((e.to_reply(&session.remote), Some(session.remote.clone())));
        }
    }
    a.settled = sent.settled;
    a
}
