//! One SMTP session with one server address: greeting, EHLO, opportunistic STARTTLS, then
//! as many transactions as needed to offer every pending recipient once.
//!
//! The decisions (what a batch of RCPT replies means, which parameters go on MAIL/RCPT,
//! whether an address is safe to put on a command line) are pure functions tested below;
//! the async code only sequences I/O.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::ClientConfig;

use super::conn::{Conn, ConnError};
use super::dotstuff::DotStuffer;
use super::ehlo::Capabilities;
use super::tls::TlsSummary;
use super::{Delivery, OutRecipient, OutboundConfig, RcptOutcome};
use crate::smtp::reply::{EnhancedStatus, Reply};

/// Size of the body chunks stuffed and written at a time.
const BODY_CHUNK: usize = 64 * 1024;
/// The longest wait for the reply to QUIT: the message is already delivered.
const QUIT_TIMEOUT: Duration = Duration::from_secs(5);

/// Where one session goes.
pub(crate) struct Params<'a> {
    pub cfg: &'a OutboundConfig,
    pub d: &'a Delivery<'a>,
    pub host: &'a str,
    pub ip: IpAddr,
    pub port: u16,
    /// Policy demands TLS: no STARTTLS, a refusal or a failed handshake defers to the next
    /// host (4.7.x) and never falls back to plaintext.
    pub require_tls: bool,
    /// The TLS config verifies certificates; recorded in the summary.
    pub verified: bool,
}

/// What one session did for the pending recipients.
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

/// Why a session stopped early.
enum Stop {
    /// The connection broke; unsettled recipients move on to the next host.
    Conn(ConnError),
    /// The TLS upgrade (or the EHLO right after it) failed.
    Tls(ConnError),
}

impl From<ConnError> for Stop {
    fn from(e: ConnError) -> Self {
        Self::Conn(e)
    }
}

/// Runs one session for `pending` and reports what it settled.
pub(crate) async fn attempt(
    p: &Params<'_>,
    pending: &[usize],
    tls: Option<Arc<ClientConfig>>,
) -> Attempt {
    let mut a = Attempt::default();
    let remote = format!("{}[{}]", p.host, p.ip);
    let mut conn = match Conn::connect(
        p.host,
        p.ip,
        p.port,
        p.cfg.source_address,
        p.cfg.connect_timeout,
    )
    .await
    {
        Ok(c) => c,
        Err(e) => {
            tracing::info!(%remote, error = %e, "connect failed");
            a.try_next = Some((e.to_reply(&remote), Some(remote)));
            return a;
        }
    };
    match run(&mut conn, p, pending, tls, &mut a).await {
        Ok(()) => {
            let _ = conn
                .command("QUIT", p.cfg.command_timeout.min(QUIT_TIMEOUT))
                .await;
        }
        Err(Stop::Conn(e)) => {
            tracing::info!(%remote, error = %e, "session failed");
            a.try_next = Some((e.to_reply(&remote), Some(remote)));
        }
        Err(Stop::Tls(e)) if p.require_tls => {
            tracing::warn!(%remote, error = %e, "required TLS failed; trying the next host");
            a.tls = None;
            a.try_next = Some((
                Reply::new(
                    451,
                    EnhancedStatus::new(4, 7, 5),
                    format!("TLS with {remote} failed ({e}); TLS is required by policy"),
                ),
                Some(remote),
            ));
        }
        Err(Stop::Tls(e)) => {
            a.tls_failed = Some(e.to_reply(&remote));
            a.tls = None;
        }
    }
    a
}

async fn run(
    conn: &mut Conn,
    p: &Params<'_>,
    pending: &[usize],
    tls: Option<Arc<ClientConfig>>,
    a: &mut Attempt,
) -> Result<(), Stop> {
    let t = p.cfg.command_timeout;
    let remote = conn.remote.clone();
    let greeting = conn.read_reply(t, "greeting").await?;
    if !greeting.is_positive() {
        a.try_next = Some((greeting, Some(remote)));
        return Ok(());
    }
    let mut caps = match hello(conn, p).await? {
        Hello::Ehlo(c) => Some(c),
        Hello::Helo => None,
        Hello::Refused(reply) => {
            a.try_next = Some((reply, Some(remote)));
            return Ok(());
        }
    };
    let ehlo_refused = caps.is_none();
    let offered = caps.as_ref().is_some_and(|c| c.starttls);
    if p.require_tls && (!offered || tls.is_none()) {
        a.try_next = Some((
            Reply::new(
                451,
                EnhancedStatus::new(4, 7, 4),
                format!("{remote} does not offer STARTTLS; TLS is required by policy"),
            ),
            Some(remote),
        ));
        return Ok(());
    }
    if let (Some(c), Some(config)) = (&caps, tls)
        && c.starttls
    {
        // Any failure from here to the new EHLO counts as a TLS failure, so the caller's
        // plaintext retry also covers servers that garble their STARTTLS reply.
        let r = conn.command("STARTTLS", t).await.map_err(Stop::Tls)?;
        if r.code == 220 {
            let mut summary = conn.upgrade(config, t).await.map_err(Stop::Tls)?;
            summary.verified = p.verified;
            a.tls = Some(summary);
            let again = conn
                .command(&format!("EHLO {}", p.cfg.helo_name), t)
                .await
                .map_err(Stop::Tls)?;
            if !again.is_positive() {
                return Err(Stop::Tls(ConnError::Tls(format!(
                    "EHLO after STARTTLS answered {again}"
                ))));
            }
            caps = Some(Capabilities::from_ehlo(&again));
        } else if p.require_tls {
            a.try_next = Some((
                Reply::new(
                    451,
                    EnhancedStatus::new(4, 7, 4),
                    format!("{remote} refused STARTTLS ({r}); TLS is required by policy"),
                ),
                Some(remote),
            ));
            return Ok(());
        } else {
            tracing::warn!(%remote, reply = %r, "STARTTLS refused; continuing in plaintext");
        }
    }
    let caps = caps.unwrap_or_default();
    if ehlo_refused {
        tracing::debug!(%remote, "server only speaks HELO");
    }
    a.dsn = caps.dsn;

    if let Some(reply) = precheck(p.d, &caps) {
        settle_all(a, pending, |_| RcptOutcome::Failed {
            reply: reply.clone(),
            remote: Some(remote.clone()),
        });
        return Ok(());
    }
    let mut todo: Vec<usize> = Vec::new();
    for &i in pending {
        match p.d.recipients.get(i) {
            Some(r) if command_safe(&r.address) => todo.push(i),
            _ => a.settled.push((
                i,
                RcptOutcome::Failed {
                    reply: Reply::new(
                        553,
                        EnhancedStatus::new(5, 1, 3),
                        "invalid recipient address",
                    ),
                    remote: None,
                },
            )),
        }
    }
    while !todo.is_empty() {
        todo = transaction(conn, p, &caps, &todo, a).await?;
    }
    Ok(())
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
async fn hello(conn: &mut Conn, p: &Params<'_>) -> Result<Hello, Stop> {
    let t = p.cfg.command_timeout;
    let ehlo = conn
        .command(&format!("EHLO {}", p.cfg.helo_name), t)
        .await?;
    if ehlo.is_positive() {
        return Ok(Hello::Ehlo(Capabilities::from_ehlo(&ehlo)));
    }
    if !ehlo.is_permanent() {
        return Ok(Hello::Refused(ehlo));
    }
    let helo = conn
        .command(&format!("HELO {}", p.cfg.helo_name), t)
        .await?;
    if helo.is_positive() {
        Ok(Hello::Helo)
    } else {
        Ok(Hello::Refused(helo))
    }
}

fn settle_all(a: &mut Attempt, pending: &[usize], f: impl Fn(usize) -> RcptOutcome) {
    a.settled.extend(pending.iter().map(|&i| (i, f(i))));
}

/// Checks that fail every recipient before anything is sent: an unsafe sender, SMTPUTF8
/// needed but not offered (RFC 6531 §3.2: no downgrade), or a body over the advertised SIZE
/// (RFC 1870 §6, C13 e).
fn precheck(d: &Delivery<'_>, caps: &Capabilities) -> Option<Reply> {
    if !command_safe(d.mail_from) {
        return Some(Reply::new(
            553,
            EnhancedStatus::new(5, 1, 7),
            "invalid sender address",
        ));
    }
    if d.smtputf8 && !caps.smtputf8 {
        return Some(Reply::new(
            553,
            EnhancedStatus::new(5, 6, 7),
            "remote does not support SMTPUTF8",
        ));
    }
    // RFC 6152 §3: 8-bit content may not go to a server without 8BITMIME. We do not
    // downgrade (it would alter signed content), so the recipient fails with a clear reason.
    if d.eight_bit && !caps.eight_bit_mime && d.body.iter().any(|&b| b >= 0x80) {
        return Some(Reply::new(
            554,
            EnhancedStatus::new(5, 6, 3),
            "remote does not support 8BITMIME and the message has 8-bit content",
        ));
    }
    match caps.size_limit() {
        Some(limit) if d.body.len() as u64 > limit => Some(Reply::new(
            552,
            EnhancedStatus::new(5, 3, 4),
            format!(
                "message too big for remote ({} > {limit} octets)",
                d.body.len()
            ),
        )),
        _ => None,
    }
}

/// One MAIL/RCPT/DATA transaction for `todo`; returns the recipients to offer in the next
/// transaction on this connection (after a "too many recipients" reply, C12).
async fn transaction(
    conn: &mut Conn,
    p: &Params<'_>,
    caps: &Capabilities,
    todo: &[usize],
    a: &mut Attempt,
) -> Result<Vec<usize>, Stop> {
    let t = p.cfg.command_timeout;
    let remote = conn.remote.clone();
    let mail = mail_command(p.d, caps);
    let rcpts: Vec<String> = todo
        .iter()
        .filter_map(|&i| p.d.recipients.get(i))
        .map(|r| rcpt_command(r, caps))
        .collect();
    let (mail_reply, rcpt_replies) = if caps.pipelining {
        let mut batch = format!("{mail}\r\n");
        for r in &rcpts {
            batch.push_str(r);
            batch.push_str("\r\n");
        }
        tracing::debug!(%remote, commands = %batch.trim_end(), "C: (pipelined)");
        conn.write_all(batch.as_bytes(), t, "MAIL").await?;
        let mail_reply = conn.read_reply(t, "MAIL").await?;
        let mut replies = Vec::with_capacity(rcpts.len());
        for _ in &rcpts {
            replies.push(conn.read_reply(t, "RCPT").await?);
        }
        (mail_reply, replies)
    } else {
        let mail_reply = conn.command(&mail, t).await?;
        let mut replies: Vec<Reply> = Vec::with_capacity(rcpts.len());
        if mail_reply.is_positive() {
            for r in &rcpts {
                let reply = conn.command(r, t).await?;
                let stop = is_too_many(&reply) && replies.iter().any(Reply::is_positive);
                replies.push(reply);
                if stop {
                    break;
                }
            }
        }
        (mail_reply, replies)
    };
    let plan = classify_rcpts(&mail_reply, &rcpt_replies, todo.len());
    let at = |k: usize| todo.get(k).copied();
    for (k, outcome) in &plan.settled {
        if let Some(i) = at(*k) {
            let remote = Some(remote.clone());
            let reply = outcome.clone();
            a.settled.push((
                i,
                if reply.is_permanent() {
                    RcptOutcome::Failed { reply, remote }
                } else {
                    RcptOutcome::Deferred { reply, remote }
                },
            ));
        }
    }
    if let Some(reply) = plan.whole_temp {
        a.try_next = Some((reply, Some(remote)));
        if mail_reply.is_positive() {
            let _ = conn.command("RSET", t).await?;
        }
        return Ok(Vec::new());
    }
    if plan.accepted.is_empty() {
        if mail_reply.is_positive() {
            let _ = conn.command("RSET", t).await?;
        }
        return Ok(Vec::new());
    }
    let accepted: Vec<usize> = plan.accepted.iter().filter_map(|&k| at(k)).collect();
    let carried: Vec<usize> = plan.carry.iter().filter_map(|&k| at(k)).collect();

    let data = conn.command("DATA", t).await?;
    let final_reply = if data.code == 354 {
        send_body(conn, p).await?;
        conn.read_reply(p.cfg.data_timeout, "end of data").await?
    } else {
        data
    };
    if final_reply.is_positive() {
        for &i in &accepted {
            a.settled.push((
                i,
                RcptOutcome::Delivered {
                    reply: final_reply.clone(),
                    remote: remote.clone(),
                },
            ));
        }
        return Ok(carried);
    }
    // DATA or the final dot refused the message itself, so the carried recipients share
    // its fate: a temporary refusal sends all of them to the next host, a permanent one
    // fails them (the same content would be refused again).
    if final_reply.is_permanent() {
        for &i in accepted.iter().chain(&carried) {
            a.settled.push((
                i,
                RcptOutcome::Failed {
                    reply: final_reply.clone(),
                    remote: Some(remote.clone()),
                },
            ));
        }
    } else {
        a.try_next = Some((final_reply, Some(remote)));
    }
    Ok(Vec::new())
}

/// Streams the body through the [`DotStuffer`] in chunks, then the end-of-data marker.
async fn send_body(conn: &mut Conn, p: &Params<'_>) -> Result<(), ConnError> {
    let t = p.cfg.data_timeout;
    let mut stuffer = DotStuffer::new();
    let mut out = Vec::with_capacity(BODY_CHUNK + BODY_CHUNK / 32);
    for chunk in p.d.body.chunks(BODY_CHUNK) {
        out.clear();
        stuffer.push(chunk, &mut out);
        conn.write_all(&out, t, "message body").await?;
    }
    out.clear();
    stuffer.finish(&mut out);
    conn.write_all(&out, t, "end of data").await
}

/// What the replies to one MAIL and its RCPTs mean, by position in the batch.
#[derive(Debug, Default, PartialEq, Eq)]
struct RcptPlan {
    /// Positions accepted with 2xx: they get the message.
    accepted: Vec<usize>,
    /// Positions refused for "too many recipients" while others were accepted: offered again
    /// in a new transaction (RFC 5321 §4.5.3.1.10, C12).
    carry: Vec<usize>,
    /// Positions settled by their own reply (4xx deferred, 5xx failed).
    settled: Vec<(usize, Reply)>,
    /// The whole transaction got a temporary refusal: offer all of them to the next host.
    whole_temp: Option<Reply>,
}

/// Classifies a MAIL reply and the RCPT replies for a batch of `count` recipients.
/// Replies missing at the end (the client stopped after "too many") are carried.
fn classify_rcpts(mail: &Reply, rcpts: &[Reply], count: usize) -> RcptPlan {
    let mut plan = RcptPlan::default();
    if !mail.is_positive() {
        if mail.is_permanent() {
            plan.settled = (0..count).map(|k| (k, mail.clone())).collect();
        } else {
            plan.whole_temp = Some(mail.clone());
        }
        return plan;
    }
    let any_accepted = rcpts.iter().any(Reply::is_positive);
    for k in 0..count {
        match rcpts.get(k) {
            Some(r) if r.is_positive() => plan.accepted.push(k),
            Some(r) if any_accepted && is_too_many(r) => plan.carry.push(k),
            Some(r) => plan.settled.push((k, r.clone())),
            None => plan.carry.push(k),
        }
    }
    if plan.accepted.is_empty() && count > 0 && plan.settled.iter().all(|(_, r)| r.is_transient()) {
        plan.whole_temp = plan.settled.last().map(|(_, r)| r.clone());
        plan.settled.clear();
        plan.carry.clear();
    }
    plan
}

/// A reply meaning "no more recipients in this transaction": 452 (RFC 5321 §4.5.3.1.10) or
/// the legacy 552 when it says so (status 5.5.3 or the words "too many recipients").
fn is_too_many(r: &Reply) -> bool {
    r.code == 452
        || (r.code == 552
            && (r.status == Some(EnhancedStatus::new(5, 5, 3))
                || r.text()
                    .to_ascii_lowercase()
                    .contains("too many recipients")))
}

/// The MAIL command with the parameters the server advertised support for.
fn mail_command(d: &Delivery<'_>, caps: &Capabilities) -> String {
    let mut cmd = format!("MAIL FROM:<{}>", d.mail_from);
    if caps.size.is_some() {
        cmd.push_str(&format!(" SIZE={}", d.body.len()));
    }
    if d.eight_bit && caps.eight_bit_mime {
        cmd.push_str(" BODY=8BITMIME");
    }
    if d.smtputf8 && caps.smtputf8 {
        cmd.push_str(" SMTPUTF8");
    }
    if caps.dsn {
        if let Some(ret) = d.ret.as_deref().filter(|v| param_safe(v)) {
            cmd.push_str(&format!(" RET={ret}"));
        }
        if let Some(envid) = d.envid.as_deref().filter(|v| param_safe(v)) {
            cmd.push_str(&format!(" ENVID={envid}"));
        }
    }
    cmd
}

/// The RCPT command, with NOTIFY/ORCPT when the server has DSN.
fn rcpt_command(r: &OutRecipient, caps: &Capabilities) -> String {
    let mut cmd = format!("RCPT TO:<{}>", r.address);
    if caps.dsn {
        if let Some(notify) = r.notify.as_deref().filter(|v| param_safe(v)) {
            cmd.push_str(&format!(" NOTIFY={notify}"));
        }
        if let Some(orcpt) = r.orcpt.as_deref().filter(|v| param_safe(v)) {
            cmd.push_str(&format!(" ORCPT={orcpt}"));
        }
    }
    cmd
}

/// True when an address can go between `<` and `>` without changing the command: no
/// controls (no CR/LF injection), no spaces or angle brackets.
fn command_safe(addr: &str) -> bool {
    !addr
        .chars()
        .any(|c| c.is_control() || c == ' ' || c == '<' || c == '>')
}

/// True when a parameter value is printable ASCII without spaces or `=` (RFC 5321 esmtp-value).
fn param_safe(v: &str) -> bool {
    !v.is_empty() && v.bytes().all(|b| (33..=126).contains(&b) && b != b'=')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(code: u16) -> Reply {
        Reply::plain(code, "x")
    }

    #[test]
    fn rcpt_batches() {
        // Mixed outcomes are settled individually.
        let p = classify_rcpts(&r(250), &[r(250), r(550), r(451)], 3);
        assert_eq!(p.accepted, vec![0]);
        assert_eq!(p.settled, vec![(1, r(550)), (2, r(451))]);
        assert!(p.carry.is_empty() && p.whole_temp.is_none());
        // 452 after accepted ones: carried to a new transaction.
        let p = classify_rcpts(&r(250), &[r(250), r(250), r(452), r(452)], 4);
        assert_eq!((p.accepted, p.carry), (vec![0, 1], vec![2, 3]));
        // Non-pipelined early stop: missing replies are carried.
        let p = classify_rcpts(&r(250), &[r(250), r(452)], 4);
        assert_eq!(p.carry, vec![1, 2, 3]);
        // Every RCPT temporarily refused: the next host gets them all.
        let p = classify_rcpts(&r(250), &[r(451), r(452)], 2);
        assert_eq!(p.whole_temp, Some(r(452)));
        assert!(p.settled.is_empty() && p.carry.is_empty());
        // MAIL refused.
        assert_eq!(classify_rcpts(&r(421), &[], 2).whole_temp, Some(r(421)));
        assert_eq!(classify_rcpts(&r(550), &[], 2).settled.len(), 2);
        // A mix of 4xx and 5xx with none accepted is settled per recipient.
        let p = classify_rcpts(&r(250), &[r(451), r(550)], 2);
        assert_eq!(p.settled.len(), 2);
        assert!(p.whole_temp.is_none());
    }

    #[test]
    fn too_many_recognised() {
        assert!(is_too_many(&r(452)));
        assert!(is_too_many(&Reply::new(
            552,
            EnhancedStatus::new(5, 5, 3),
            "limit"
        )));
        assert!(is_too_many(&Reply::plain(552, "Too many recipients")));
        assert!(!is_too_many(&Reply::new(
            552,
            EnhancedStatus::new(5, 3, 4),
            "too big"
        )));
        assert!(!is_too_many(&r(451)));
    }

    fn delivery<'a>(body: &'a [u8]) -> Delivery<'a> {
        Delivery {
            domain: "example.com",
            mail_from: "",
            recipients: vec![],
            envid: Some("abc+2Bx".into()),
            ret: Some("HDRS".into()),
            body,
            smtputf8: false,
            eight_bit: true,
            transport: Default::default(),
        }
    }

    #[test]
    fn mail_parameters_follow_capabilities() {
        let d = delivery(b"12345");
        let none = Capabilities::default();
        assert_eq!(mail_command(&d, &none), "MAIL FROM:<>");
        let all = Capabilities {
            size: Some(0),
            dsn: true,
            eight_bit_mime: true,
            smtputf8: true,
            ..Capabilities::default()
        };
        assert_eq!(
            mail_command(&d, &all),
            "MAIL FROM:<> SIZE=5 BODY=8BITMIME RET=HDRS ENVID=abc+2Bx"
        );
        let rcpt = OutRecipient {
            address: "a@example.com".into(),
            notify: Some("SUCCESS,FAILURE".into()),
            orcpt: Some("rfc822;a@example.com".into()),
        };
        assert_eq!(rcpt_command(&rcpt, &none), "RCPT TO:<a@example.com>");
        assert_eq!(
            rcpt_command(&rcpt, &all),
            "RCPT TO:<a@example.com> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;a@example.com"
        );
    }

    #[test]
    fn prechecks() {
        let big = vec![b'x'; 2000];
        let d = delivery(&big);
        let small = Capabilities {
            size: Some(1000),
            ..Capabilities::default()
        };
        let r = precheck(&d, &small).unwrap();
        assert_eq!(
            (r.code, r.status),
            (552, Some(EnhancedStatus::new(5, 3, 4)))
        );
        let unlimited = Capabilities {
            size: Some(0),
            ..Capabilities::default()
        };
        assert_eq!(precheck(&d, &unlimited), None);
        let mut utf8 = delivery(b"x");
        utf8.smtputf8 = true;
        assert_eq!(precheck(&utf8, &unlimited).map(|r| r.code), Some(553));
        let mut evil = delivery(b"x");
        evil.mail_from = "a@b>\r\nRCPT TO:<c@d";
        assert_eq!(precheck(&evil, &unlimited).map(|r| r.code), Some(553));
        let mut eight = delivery("caf\u{e9}".as_bytes());
        eight.eight_bit = true;
        let r = precheck(&eight, &unlimited).unwrap();
        assert_eq!(
            (r.code, r.status),
            (554, Some(EnhancedStatus::new(5, 6, 3)))
        );
        let with_8bitmime = Capabilities {
            eight_bit_mime: true,
            ..Capabilities::default()
        };
        assert_eq!(precheck(&eight, &with_8bitmime), None);
        assert!(!command_safe("a@b\r\nDATA"));
        assert!(command_safe("a@b"));
    }
}
