//! One MAIL/RCPT/DATA (or BDAT) transaction on an open connection, and the pure decisions
//! around it: what a batch of RCPT replies means, which parameters go on MAIL/RCPT, whether an
//! address is safe on a command line, whether the message may go to this server at all.

use super::conn::{Conn, ConnError};
use super::dotstuff::DotStuffer;
use super::ehlo::Capabilities;
use super::{Delivery, OutRecipient, OutboundConfig, RcptOutcome};
use crate::smtp::reply::{EnhancedStatus, Reply};

/// Size of the body chunks stuffed and written at a time.
const BODY_CHUNK: usize = 64 * 1024;

/// What the transactions for one message settled on one connection.
#[derive(Debug, Default)]
pub struct Sent {
    /// Recipients settled (index into `Delivery::recipients`) with their outcome.
    pub settled: Vec<(usize, RcptOutcome)>,
    /// Set when the unsettled recipients should be offered to another host, with why.
    pub try_next: Option<(Reply, Option<String>)>,
}

/// Splits off recipients whose address cannot go on a command line (they fail 5.1.3) and
/// returns the rest.
pub(crate) fn safe_recipients(d: &Delivery<'_>, pending: &[usize], sent: &mut Sent) -> Vec<usize> {
    let mut todo = Vec::with_capacity(pending.len());
    for &i in pending {
        match d.recipients.get(i) {
            Some(r) if command_safe(&r.address) => todo.push(i),
            _ => sent.settled.push((
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
    todo
}

/// Checks that fail every recipient before anything is sent: an unsafe sender, SMTPUTF8
/// needed but not offered (RFC 6531 §3.2: no downgrade), or a body over the advertised SIZE
/// (RFC 1870 §6, C13 e).
pub(crate) fn precheck(d: &Delivery<'_>, caps: &Capabilities) -> Option<Reply> {
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

/// One transaction for `todo`; returns the recipients to offer in the next transaction on
/// this connection (after a "too many recipients" reply, C12). With `rset` the connection
/// carried an earlier message: RSET goes first (pipelined with MAIL when the server allows),
/// which also proves a reused connection is still alive.
pub(crate) async fn run(
    conn: &mut Conn,
    cfg: &OutboundConfig,
    d: &Delivery<'_>,
    caps: &Capabilities,
    todo: &[usize],
    rset: bool,
    sent: &mut Sent,
) -> Result<Vec<usize>, ConnError> {
    let t = cfg.command_timeout;
    let remote = conn.remote.clone();
    let mail = mail_command(d, caps);
    let rcpts: Vec<String> = todo
        .iter()
        .filter_map(|&i| d.recipients.get(i))
        .map(|r| rcpt_command(r, caps))
        .collect();
    let (mail_reply, rcpt_replies) = if caps.pipelining {
        let mut batch = String::with_capacity(64 * (rcpts.len() + 2));
        if rset {
            batch.push_str("RSET\r\n");
        }
        batch.push_str(&mail);
        batch.push_str("\r\n");
        for r in &rcpts {
            batch.push_str(r);
            batch.push_str("\r\n");
        }
        tracing::debug!(%remote, commands = %batch.trim_end(), "C: (pipelined)");
        conn.write_all(batch.as_bytes(), t, "MAIL").await?;
        if rset {
            expect_rset(conn.read_reply(t, "RSET").await?)?;
        }
        let mail_reply = conn.read_reply(t, "MAIL").await?;
        let mut replies = Vec::with_capacity(rcpts.len());
        for _ in &rcpts {
            replies.push(conn.read_reply(t, "RCPT").await?);
        }
        (mail_reply, replies)
    } else {
        if rset {
            expect_rset(conn.command("RSET", t).await?)?;
        }
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
    for (k, reply) in &plan.settled {
        if let Some(i) = at(*k) {
            let remote = Some(remote.clone());
            let reply = reply.clone();
            sent.settled.push((
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
        sent.try_next = Some((reply, Some(remote)));
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

    let final_reply = if caps.chunking {
        send_bdat(conn, cfg, d.body).await?;
        conn.read_reply(cfg.data_timeout, "BDAT").await?
    } else {
        let data = conn.command("DATA", t).await?;
        if data.code == 354 {
            send_body(conn, cfg, d.body).await?;
            conn.read_reply(cfg.data_timeout, "end of data").await?
        } else {
            data
        }
    };
    if final_reply.is_positive() {
        for &i in &accepted {
            sent.settled.push((
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
            sent.settled.push((
                i,
                RcptOutcome::Failed {
                    reply: final_reply.clone(),
                    remote: Some(remote.clone()),
                },
            ));
        }
    } else {
        sent.try_next = Some((final_reply, Some(remote)));
    }
    Ok(Vec::new())
}

/// A reused connection whose RSET is refused is not trusted with another message.
fn expect_rset(reply: Reply) -> Result<(), ConnError> {
    if reply.is_positive() {
        Ok(())
    } else {
        Err(ConnError::Io {
            stage: format!("reusing the connection (RSET answered {reply})"),
            error: std::io::ErrorKind::ConnectionAborted.into(),
        })
    }
}

/// Streams the body through the [`DotStuffer`] in chunks, then the end-of-data marker.
async fn send_body(conn: &mut Conn, cfg: &OutboundConfig, body: &[u8]) -> Result<(), ConnError> {
    let t = cfg.data_timeout;
    let mut stuffer = DotStuffer::new();
    let mut out = Vec::with_capacity(BODY_CHUNK + BODY_CHUNK / 32);
    for chunk in body.chunks(BODY_CHUNK) {
        out.clear();
        stuffer.push(chunk, &mut out);
        conn.write_all(&out, t, "message body").await?;
    }
    out.clear();
    stuffer.finish(&mut out);
    conn.write_all(&out, t, "end of data").await
}

/// Sends the body as one `BDAT n LAST` chunk (RFC 3030): no dot-stuffing, and the same
/// final CRLF the DATA path adds when the stored message lacks one, so both paths deliver
/// identical content.
async fn send_bdat(conn: &mut Conn, cfg: &OutboundConfig, body: &[u8]) -> Result<(), ConnError> {
    let t = cfg.data_timeout;
    let add_crlf = !body.is_empty() && !body.ends_with(b"\r\n");
    let len = body.len() + if add_crlf { 2 } else { 0 };
    conn.write_all(format!("BDAT {len} LAST\r\n").as_bytes(), t, "BDAT")
        .await?;
    for chunk in body.chunks(BODY_CHUNK) {
        conn.write_all(chunk, t, "message body").await?;
    }
    if add_crlf {
        conn.write_all(b"\r\n", t, "message body").await?;
    }
    Ok(())
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
