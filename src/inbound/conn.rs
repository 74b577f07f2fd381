//! One inbound connection: moves bytes between the socket and the sans-IO
//! [`Session`](crate::smtp::session::Session), commits messages to the spool, and rebuilds
//! the stream on STARTTLS. Nothing read before a TLS upgrade survives it: every byte read is
//! handed to the session at once, and the session discards what follows STARTTLS.

use super::Inbound;
use super::relay::{self, ClientTrust};
use crate::audit::{Action, Actor};
use crate::queue::class;
use crate::queue::clock::rfc5322_date;
use crate::smtp::address::{Address, Domain};
use crate::smtp::reply::{EnhancedStatus, Reply};
use crate::smtp::session::{Output, Session, SessionHooks, TlsInfo, Transaction};
use crate::spool::{ENVELOPE_VERSION, Envelope, Notify, RecipientRecord, Ret, new_queue_id};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

/// How a stretch of the connection ended.
enum End {
    /// The client or the session closed the connection.
    Closed,
    /// The session accepted STARTTLS; the caller must handshake and continue.
    StartTls,
}

/// What the connection knows about its peer, refreshed after a TLS handshake.
struct Peer {
    addr: SocketAddr,
    local: Option<SocketAddr>,
    trust: ClientTrust,
    tls: Option<TlsInfo>,
}

/// Serves one accepted TCP connection to the end. `implicit_tls` is for port-465 listeners.
pub(super) async fn serve(
    inbound: Arc<Inbound>,
    tcp: TcpStream,
    addr: SocketAddr,
    implicit_tls: bool,
    auth_required: bool,
    shutdown: watch::Receiver<bool>,
) {
    let mut peer = Peer {
        addr,
        local: tcp.local_addr().ok(),
        trust: ClientTrust {
            trusted_network: inbound.is_trusted_network(addr.ip()),
            ..Default::default()
        },
        tls: None,
    };
    let cfg = inbound.session_config(auth_required);
    if implicit_tls {
        let Some(tls) = handshake(&inbound, tcp, &mut peer).await else {
            return;
        };
        let mut session = Session::new(cfg, peer.tls.clone());
        let mut tls = tls;
        let greeting = session.greeting().to_bytes();
        if tls.write_all(&greeting).await.is_err() {
            return;
        }
        let _ = drive(&inbound, &mut tls, &mut session, &peer, shutdown).await;
        return;
    }
    let mut tcp = tcp;
    let mut session = Session::new(cfg, None);
    if tcp.write_all(&session.greeting().to_bytes()).await.is_err() {
        return;
    }
    match drive(&inbound, &mut tcp, &mut session, &peer, shutdown.clone()).await {
        Ok(End::StartTls) => {}
        _ => return,
    }
    let Some(mut tls) = handshake(&inbound, tcp, &mut peer).await else {
        return;
    };
    let Some(info) = peer.tls.clone() else { return };
    let outputs = session.tls_established(info);
    let hooks = Hooks {
        inbound: &inbound,
        trust: peer.trust,
        peer: &peer,
    };
    let mut out = Vec::new();
    let next = handle_outputs(&inbound, &mut session, &peer, &hooks, outputs, &mut out).await;
    if tls.write_all(&out).await.is_err() || matches!(next, Next::Close) {
        return;
    }
    // A second STARTTLS is refused by the session (already under TLS), so this ends the conn.
    let _ = drive(&inbound, &mut tls, &mut session, &peer, shutdown).await;
}

/// Runs the TLS handshake and records version, cipher and client-certificate pinning.
async fn handshake(
    inbound: &Inbound,
    tcp: TcpStream,
    peer: &mut Peer,
) -> Option<tokio_rustls::server::TlsStream<TcpStream>> {
    let timeout = Duration::from_secs(30);
    let tls = match tokio::time::timeout(timeout, inbound.acceptor.accept(tcp)).await {
        Ok(Ok(t)) => t,
        Ok(Err(e)) => {
            tracing::info!(client = %peer.addr, error = %e, "TLS handshake failed");
            return None;
        }
        Err(_) => {
            tracing::info!(client = %peer.addr, "TLS handshake timed out");
            return None;
        }
    };
    let conn = tls.get_ref().1;
    let version = conn
        .protocol_version()
        .and_then(|v| v.as_str())
        .unwrap_or("TLS")
        .replace('_', ".");
    let cipher = conn
        .negotiated_cipher_suite()
        .and_then(|c| c.suite().as_str())
        .unwrap_or("unknown")
        .to_string();
    if let Some(cert) = conn.peer_certificates().and_then(|c| c.first()) {
        let fp = super::tls::fingerprint(cert);
        peer.trust.pinned_certificate = inbound.pinned.contains(&fp);
        tracing::info!(client = %peer.addr, fingerprint = %hex::encode(fp), pinned = peer.trust.pinned_certificate, "client certificate");
    }
    peer.tls = Some(TlsInfo { version, cipher });
    Some(tls)
}

/// Reads, feeds the session and writes its replies until the connection ends or STARTTLS.
async fn drive<S: AsyncRead + AsyncWrite + Unpin>(
    inbound: &Inbound,
    stream: &mut S,
    session: &mut Session,
    peer: &Peer,
    mut shutdown: watch::Receiver<bool>,
) -> std::io::Result<End> {
    let hooks = Hooks {
        inbound,
        trust: peer.trust,
        peer,
    };
    let idle = Duration::from_secs(inbound.config.server.idle_timeout_secs.max(1));
    let mut buf = vec![0u8; 32 * 1024];
    let mut out = Vec::with_capacity(1024);
    loop {
        let outputs = if *shutdown.borrow() && !session.in_transaction() {
            session.shutdown()
        } else {
            tokio::select! {
                r = tokio::time::timeout(idle, stream.read(&mut buf)) => match r {
                    Err(_) => session.timeout(),
                    Ok(Ok(0)) => return Ok(End::Closed),
                    Ok(Ok(n)) => session.feed(&buf[..n], &hooks),
                    Ok(Err(e)) => return Err(e),
                },
                _ = shutdown.changed() => continue,
            }
        };
        out.clear();
        let next = handle_outputs(inbound, session, peer, &hooks, outputs, &mut out).await;
        // A client that never reads must not hold its connection slot forever.
        let write = async {
            stream.write_all(&out).await?;
            stream.flush().await
        };
        match tokio::time::timeout(idle, write).await {
            Ok(r) => r?,
            Err(_) => {
                tracing::info!(client = %peer.addr, "client stopped reading; closing");
                return Ok(End::Closed);
            }
        }
        match next {
            Next::Continue => {}
            Next::StartTls => return Ok(End::StartTls),
            Next::Close => {
                let _ = stream.shutdown().await;
                return Ok(End::Closed);
            }
        }
    }
}

/// What the driver does after writing a batch of replies.
enum Next {
    Continue,
    StartTls,
    Close,
}

/// Turns session outputs into bytes in `out`, committing queued messages on the way.
async fn handle_outputs(
    inbound: &Inbound,
    session: &mut Session,
    peer: &Peer,
    hooks: &Hooks<'_>,
    outputs: Vec<Output>,
    out: &mut Vec<u8>,
) -> Next {
    let mut pending = std::collections::VecDeque::from(outputs);
    while let Some(o) = pending.pop_front() {
        match o {
            Output::Send(b) => out.extend_from_slice(&b),
            Output::StartTls => return Next::StartTls,
            Output::Close => return Next::Close,
            Output::Enqueue(tx) => {
                let result = commit(inbound, peer, *tx).await;
                pending.extend(session.queued(result, hooks));
            }
        }
    }
    Next::Continue
}

/// Writes a received message to the spool durably and schedules it. The reply to the final
/// dot is sent only after this returns Ok.
async fn commit(inbound: &Inbound, peer: &Peer, tx: Transaction) -> Result<String, Reply> {
    let hops = received_count(&tx.body);
    if hops >= inbound.config.server.max_hops {
        tracing::warn!(client = %peer.addr, hops, "refused: too many hops (mail loop?)");
        return Err(Reply::new(
            554,
            EnhancedStatus::new(5, 4, 6),
            format!("Too many hops ({hops} Received fields): mail loop?"),
        ));
    }
    let queue = &inbound.queue;
    let now_ms = queue.clock().now_millis();
    let now = now_ms / 1000;
    let id = new_queue_id(now_ms);
    let received = received_header(&inbound.config.server.hostname, peer, &tx, &id, now);
    let mut body = Vec::with_capacity(received.len() + tx.body.len());
    body.extend_from_slice(received.as_bytes());
    body.extend_from_slice(&tx.body);
    let mail_from = tx
        .mail_from
        .as_ref()
        .map(ToString::to_string)
        .unwrap_or_default();
    let listener = peer.local.map(|a| a.to_string());
    let header_class = class::header_value(&tx.body, &inbound.config.classes.header);
    let class = class::assign(
        &inbound.config.class,
        &class::Submission {
            listener: listener.as_deref(),
            auth_user: tx.authenticated.as_deref(),
            sender: &mail_from,
            header_class: header_class.as_deref(),
            may_choose: peer.trust.trusted_network
                || peer.trust.pinned_certificate
                || tx.authenticated.is_some(),
        },
    );
    let env = Envelope {
        version: ENVELOPE_VERSION,
        id: id.clone(),
        created: now,
        next_due: now,
        attempts: 0,
        mail_from,
        envid: tx.mail_params.envid.clone(),
        ret: tx.mail_params.ret.map(|r| match r {
            crate::smtp::params::Ret::Full => Ret::Full,
            crate::smtp::params::Ret::Hdrs => Ret::Hdrs,
        }),
        smtputf8: tx.mail_params.smtputf8,
        eight_bit: matches!(
            tx.mail_params.body,
            Some(crate::smtp::params::Body::EightBitMime)
        ),
        size: body.len() as u64,
        helo: tx.helo.clone(),
        client: peer.addr.ip().to_string(),
        authenticated: tx.authenticated.clone(),
        is_dsn: false,
        listener,
        class: Some(class),
        api_client: None,
        recipients: tx
            .recipients
            .iter()
            .map(|r| RecipientRecord {
                address: postmaster_target(inbound, &r.address),
                orcpt: r.orcpt.as_ref().map(|(t, v)| format!("{t};{v}")),
                notify: r.notify.map(|n| match n {
                    crate::smtp::params::Notify::Never => Notify::default(),
                    crate::smtp::params::Notify::On {
                        success,
                        failure,
                        delay,
                    } => Notify {
                        success,
                        failure,
                        delay,
                    },
                }),
                ..RecipientRecord::queued(String::new(), now)
            })
            .collect(),
    };
    // The audit record goes to its writer first, so its flush overlaps the spool's.
    let audited = audit_accepted(inbound, peer, &env);
    match queue.enqueue(&env, &body).await {
        Ok(()) => {
            for r in &env.recipients {
                tracing::info!(queue_id = %id, from = %env.mail_from, rcpt = %r.address, client = %peer.addr.ip(), size = env.size, tls = peer.tls.is_some(), class = env.class.as_deref().unwrap_or("default"), "accepted");
            }
            audited.wait().await;
            Ok(id)
        }
        Err(e) => {
            tracing::error!(error = %e, client = %peer.addr, "spool write failed; message refused");
            inbound.audit.record(
                Actor::system("queue"),
                Action::MessageNotStored,
                serde_json::json!({"queue_id": id, "reason": e.to_string()}),
            );
            Err(match e {
                // RFC 3463 4.3.1: mail system full.
                crate::spool::SpoolError::Full { .. } => Reply::new(
                    452,
                    EnhancedStatus::new(4, 3, 1),
                    "Insufficient system storage",
                ),
                _ => Reply::new(
                    451,
                    EnhancedStatus::new(4, 3, 0),
                    "Temporary local problem: could not store the message",
                ),
            })
        }
    }
}

/// Hands the accepted message's audit record to the writer (actor the SMTP user, else the
/// client's IP); the 250 waits for it as well as for the spool.
fn audit_accepted(inbound: &Inbound, peer: &Peer, env: &Envelope) -> crate::audit::PendingRecord {
    let actor = match &env.authenticated {
        Some(user) => Actor::smtp_user(user),
        None => Actor::smtp_client(peer.addr.ip()),
    };
    let details = serde_json::json!({
        "via": "smtp",
        "queue_id": env.id,
        "sender": env.mail_from,
        "recipients": env.recipients.iter().map(|r| r.address.as_str()).collect::<Vec<_>>(),
        "size": env.size,
        "class": env.class,
        "ip": peer.addr.ip().to_string(),
        "helo": env.helo,
        "listener": env.listener,
        "tls": peer.tls.as_ref().map(|t| serde_json::json!({"version": t.version, "cipher": t.cipher})),
    });
    inbound
        .audit
        .record_pending(actor, Action::MessageAccepted, details)
}

/// Counts the top-level `Received:` fields of a message (loop detection).
fn received_count(body: &[u8]) -> usize {
    let (header, _) = crate::crypto::mime::split_header_body(body);
    crate::crypto::mime::header_fields(header)
        .iter()
        .filter(|f| f.is("received"))
        .count()
}

/// The stored recipient: `postmaster@` our hostname goes to `[relay] postmaster` when set,
/// else to postmaster of the first local domain (a mailbox someone reads, reached by its
/// route or MX), else stays as it is. Without the local-domain fallback a stranger's
/// `RCPT TO:<postmaster>` would be sent to our own hostname's MX, fail, and bounce back to
/// the stranger: backscatter.
fn postmaster_target(inbound: &Inbound, rcpt: &Address) -> String {
    if !is_our_postmaster(inbound, rcpt) {
        return rcpt.to_string();
    }
    let relay = &inbound.config.relay;
    match (&relay.postmaster, relay.local_domains.first()) {
        (Some(target), _) => target.clone(),
        (None, Some(domain)) => format!("postmaster@{}", domain.trim_end_matches('.')),
        (None, None) => rcpt.to_string(),
    }
}

/// `postmaster@` our hostname (what the session makes of a domainless `<postmaster>`).
fn is_our_postmaster(inbound: &Inbound, rcpt: &Address) -> bool {
    rcpt.local_part.eq_ignore_ascii_case("postmaster")
        && matches!(&rcpt.domain, Domain::Name(n) if n.eq_ignore_ascii_case(&inbound.config.server.hostname))
}

/// The trace header we prepend (RFC 5321 §4.4), with TLS details the way Postfix writes them.
fn received_header(hostname: &str, peer: &Peer, tx: &Transaction, id: &str, now: u64) -> String {
    let proto = match (peer.tls.is_some(), tx.authenticated.is_some()) {
        (false, false) => "ESMTP",
        (true, false) => "ESMTPS",
        (false, true) => "ESMTPA",
        (true, true) => "ESMTPSA",
    };
    let proto = if tx.mail_params.smtputf8 {
        format!("UTF8SMTP{}", &proto[5..])
    } else {
        proto.to_string()
    };
    let mut h = format!(
        "Received: from {} ([{}])\r\n\tby {} (Sealpost) with {}",
        tx.helo,
        peer.addr.ip(),
        hostname,
        proto
    );
    if let Some(tls) = &peer.tls {
        h.push_str(&format!(
            "\r\n\t(using {} with cipher {})",
            tls.version, tls.cipher
        ));
    }
    h.push_str(&format!("\r\n\tid {id}"));
    if let [only] = tx.recipients.as_slice() {
        h.push_str(&format!("\r\n\tfor <{}>", only.address));
    }
    h.push_str(&format!("; {}\r\n", rfc5322_date(now)));
    h
}

/// The session's view of relay rules and user accounts for this connection.
struct Hooks<'a> {
    inbound: &'a Inbound,
    trust: ClientTrust,
    peer: &'a Peer,
}

impl SessionHooks for Hooks<'_> {
    fn check_recipient(&self, rcpt: &Address, authenticated: Option<&str>) -> Result<(), Reply> {
        // RFC 5321 §4.5.1: postmaster must always be accepted, from anyone.
        let local = is_our_postmaster(self.inbound, rcpt)
            || match &rcpt.domain {
                Domain::Name(name) => self.inbound.config.is_local_domain(name),
                _ => false,
            };
        let trust = ClientTrust {
            authenticated: authenticated.is_some(),
            ..self.trust
        };
        relay::check(local, trust)
    }

    fn authenticate(&self, authcid: &str, password: &str) -> bool {
        let ok = self.inbound.verify_user(authcid, password);
        // Queued, not awaited: the session is sans-IO. Never the password.
        let ip = self.peer.addr.ip();
        let details = serde_json::json!({
            "method": "smtp_auth",
            "user": authcid,
            "ip": ip.to_string(),
            "tls": self.peer.tls.is_some(),
        });
        if ok {
            let actor = Actor::smtp_user(authcid);
            self.inbound
                .audit
                .record(actor, Action::AuthSucceeded, details);
        } else {
            let actor = Actor::smtp_client(ip);
            self.inbound
                .audit
                .record(actor, Action::AuthFailed, details);
        }
        ok
    }
}
