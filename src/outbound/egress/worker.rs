//! A connection worker: opens one connection for an egress path (trying the site's hosts in
//! order), then delivers the path's jobs over it one after another, paced by the path's and
//! the source's message rates, until the queue stays empty for the idle time, the
//! per-connection message limit is reached, or the site asks us to slow down.

use super::super::session::{OpenError, OpenParams, Session};
use super::super::{
    self as outbound, Delivery, DeliveryReport, Hop, OutboundConfig, RcptOutcome, Sent,
};
use super::site::Site;
use super::{Egress, Job, JobReport, PathKey, SourceSpec};
use crate::outbound::mx::Target;
use crate::outbound::shaping;
use crate::smtp::reply::{EnhancedStatus, Reply};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

/// Runs one connection slot of `key` until there is nothing more for it to do.
pub(super) async fn run(egress: Arc<Egress>, key: PathKey) {
    let source = egress.settings.sources[key.source].clone();
    let Some((site, limits)) = egress
        .lock()
        .paths
        .get(&key)
        .map(|p| (p.site.clone(), p.limits.clone()))
    else {
        egress.connection_closed(&key);
        return;
    };
    let cfg = egress.outbound.clone();
    let idle = Duration::from_secs(limits.idle_secs);
    loop {
        let open = open_any(&cfg, &source, &site, &key).await;
        let (mut session, rest) = match open {
            Ok(o) => o,
            Err(reply) => {
                tracing::info!(site = %site.key, source = %source.name, reply = %reply, "no host of the site is reachable");
                fail_waiting(&egress, &key, &source, reply);
                break;
            }
        };
        let mut reconnect = false;
        while session.transactions() < limits.max_messages_per_connection {
            let Some(job) = next_job(&egress, &key, idle).await else {
                break;
            };
            if !egress.count_sent(key.source) {
                let until = (egress.clock.now() / 86_400 + 1) * 86_400;
                let reply = Reply::new(
                    451,
                    EnhancedStatus::new(4, 7, 0),
                    format!(
                        "delayed: source {} reached its warm-up cap for today",
                        source.name
                    ),
                );
                job.delay(&source.name, until, reply);
                continue;
            }
            match deliver_job(
                &egress,
                &key,
                &cfg,
                &source,
                &site,
                &rest,
                &mut session,
                job,
            )
            .await
            {
                Step::Next => {}
                Step::Broken => {
                    reconnect = true;
                    break;
                }
                Step::SlowDown(reply) => {
                    back_off(&egress, &key, &source, &site, &limits, reply);
                    break;
                }
            }
        }
        if !reconnect {
            session.quit(&cfg).await;
        }
        // More work and a healthy path: reconnect (message limit reached, or a reused
        // connection broke); otherwise this slot is done.
        let more = egress.lock().paths.get(&key).is_some_and(|p| {
            p.queued > 0 && p.backoff.is_none_or(|(until, _)| until <= egress.mono_ms())
        });
        if !more {
            break;
        }
    }
    egress.connection_closed(&key);
}

/// What the worker does after a job.
enum Step {
    /// Take the next job on this connection.
    Next,
    /// The connection is unusable; reconnect if there is more work.
    Broken,
    /// The site asked us to slow down.
    SlowDown(Reply),
}

/// Opens a session to the first host of the site that takes one. Returns the session and the
/// hosts after it (for a message the host refuses temporarily), or the reply for everything
/// waiting when none works.
async fn open_any(
    cfg: &OutboundConfig,
    source: &SourceSpec,
    site: &Site,
    key: &PathKey,
) -> Result<(Session, Vec<Target>), Reply> {
    let require = &key.transport;
    let targets = outbound::allowed_targets(&site.try_order(), &site.key, require)?;
    let tls = outbound::tls_for(cfg, require)?;
    let mut last = Reply::new(
        451,
        EnhancedStatus::new(4, 4, 0),
        format!("no host of {} has an address", site.key),
    );
    for (t, target) in targets.iter().enumerate() {
        for &ip in &target.addrs {
            let params = params(cfg, source, target, ip, site.port, require);
            match Session::open(&params, tls.clone()).await {
                Ok(s) => return Ok((s, targets[t + 1..].to_vec())),
                Err(OpenError::Next { reply, .. }) => last = reply,
                Err(OpenError::TlsFailed(reason)) => {
                    tracing::warn!(remote = %format!("{}[{ip}]", target.host), reason = %reason, "STARTTLS failed; retrying once in plaintext (opportunistic TLS)");
                    match Session::open(&params, None).await {
                        Ok(s) => return Ok((s, targets[t + 1..].to_vec())),
                        Err(OpenError::Next { reply, .. }) => last = reply,
                        Err(OpenError::TlsFailed(reply)) => last = reply,
                    }
                }
            }
        }
    }
    Err(last)
}

fn params<'a>(
    cfg: &'a OutboundConfig,
    source: &'a SourceSpec,
    target: &'a Target,
    ip: IpAddr,
    port: u16,
    require: &crate::policy::TransportRequirement,
) -> OpenParams<'a> {
    OpenParams {
        cfg,
        helo_name: &source.helo_name,
        source: source.address,
        host: &target.host,
        ip,
        port,
        require_tls: require.require_tls || require.verify_certificate,
        verified: require.verify_certificate,
    }
}

/// The next job for this connection, paced by the message rates; `None` after `idle` with
/// nothing to do, or when the path is backing off.
async fn next_job(egress: &Egress, key: &PathKey, idle: Duration) -> Option<Job> {
    loop {
        let wait = {
            let mut st = egress.lock();
            let mono = egress.mono_ms();
            let super::State { paths, sources, .. } = &mut *st;
            let path = paths.get_mut(key)?;
            if path.backoff.is_some_and(|(until, _)| until > mono) {
                return None;
            }
            if path.queued == 0 {
                path.idle += 1;
                Err(path.wake.clone())
            } else {
                let source = &mut sources[key.source];
                let wait = path
                    .msg_rate
                    .as_ref()
                    .map_or(0, |r| r.wait(mono))
                    .max(source.msg_rate.as_ref().map_or(0, |r| r.wait(mono)));
                if wait == 0 {
                    if let Some(r) = &mut path.msg_rate {
                        let _ = r.take(mono);
                    }
                    if let Some(r) = &mut source.msg_rate {
                        let _ = r.take(mono);
                    }
                    if let Some(job) = pop(path) {
                        return Some(job);
                    }
                }
                Ok(wait.max(1))
            }
        };
        match wait {
            Ok(ms) => tokio::time::sleep(Duration::from_millis(ms)).await,
            Err(wake) => {
                let woke = tokio::time::timeout(idle, wake.notified()).await.is_ok();
                let mut st = egress.lock();
                let path = st.paths.get_mut(key)?;
                path.idle = path.idle.saturating_sub(1);
                if !woke && path.queued == 0 {
                    return None;
                }
            }
        }
    }
}

/// Takes the highest-priority job.
fn pop(path: &mut super::Path) -> Option<Job> {
    let mut entry = path.queue.first_entry()?;
    let job = entry.get_mut().pop_front();
    if entry.get().is_empty() {
        entry.remove();
    }
    if job.is_some() {
        path.queued -= 1;
    }
    job
}

/// Puts a job back at the front of its priority (a reused connection broke before it was
/// tried).
fn push_front(egress: &Egress, key: &PathKey, job: Job) {
    let mut st = egress.lock();
    match st.paths.get_mut(key) {
        Some(path) => {
            path.queue
                .entry(std::cmp::Reverse(job.priority))
                .or_default()
                .push_front(job);
            path.queued += 1;
        }
        None => {
            drop(st);
            let reply = Reply::new(451, EnhancedStatus::new(4, 4, 2), "connection lost");
            job.finish_all(
                "-",
                RcptOutcome::Deferred {
                    reply,
                    remote: None,
                },
            );
        }
    }
}

/// Delivers one job on the open session (and, for recipients the host refused
/// temporarily as a whole, on the site's remaining hosts).
#[allow(clippy::too_many_arguments)]
async fn deliver_job(
    egress: &Egress,
    key: &PathKey,
    cfg: &OutboundConfig,
    source: &SourceSpec,
    site: &Site,
    rest: &[Target],
    session: &mut Session,
    mut job: Job,
) -> Step {
    let content = job.content.clone();
    let loaded = if content.is_cheap() {
        Ok(content.load())
    } else {
        tokio::task::spawn_blocking(move || content.load()).await
    };
    let body = match loaded {
        Ok(Ok(b)) => b,
        Ok(Err(reply)) => {
            job.finish_all(
                &source.name,
                RcptOutcome::Deferred {
                    reply,
                    remote: None,
                },
            );
            return Step::Next;
        }
        Err(e) => {
            let reply = Reply::new(
                451,
                EnhancedStatus::new(4, 3, 0),
                format!("could not prepare the message: {e}"),
            );
            job.finish_all(
                &source.name,
                RcptOutcome::Deferred {
                    reply,
                    remote: None,
                },
            );
            return Step::Next;
        }
    };
    let n = job.recipients.len();
    let d = Delivery {
        domain: &job.domain,
        mail_from: &job.mail_from,
        recipients: std::mem::take(&mut job.recipients),
        envid: job.envid.clone(),
        ret: job.ret.clone(),
        body: &body,
        smtputf8: job.smtputf8,
        eight_bit: job.eight_bit,
        transport: job.transport.clone(),
    };
    let reused = session.transactions() > 0;
    let pending: Vec<usize> = (0..n).collect();
    let mut sent = Sent::default();
    let result = session.deliver(cfg, &d, &pending, &mut sent).await;
    let mut step = Step::Next;
    if let Err(e) = &result {
        if reused && sent.settled.is_empty() && !job.retried {
            // A cached connection can die between messages; that says nothing about this
            // message. Give it one fresh connection.
            tracing::debug!(remote = %session.remote, error = %e, "reused connection failed; retrying on a new one");
            job.recipients = d.recipients;
            job.retried = true;
            push_front(egress, key, job);
            return Step::Broken;
        }
        tracing::info!(remote = %session.remote, error = %e, "session failed");
        sent.try_next = Some((e.to_reply(&session.remote), Some(session.remote.clone())));
        step = Step::Broken;
    }
    let mut outcomes: Vec<Option<RcptOutcome>> = vec![None; n];
    for (i, o) in sent.settled {
        if let Some(slot) = outcomes.get_mut(i) {
            *slot = Some(o);
        }
    }
    let mut report = DeliveryReport {
        outcomes: Vec::new(),
        tls: session.tls.clone(),
        remote_supports_dsn: session.caps.dsn,
    };
    let unsettled: Vec<usize> = (0..n).filter(|&i| outcomes[i].is_none()).collect();
    if let Some((reply, remote)) = sent.try_next.clone() {
        if shaping::is_slow_down(&reply) {
            step = Step::SlowDown(reply.clone());
        }
        if !unsettled.is_empty() && !rest.is_empty() && !matches!(step, Step::SlowDown(_)) {
            // The host refused the whole transaction temporarily: the next hosts get it,
            // over their own connections, as single-message deliveries.
            let sub = Delivery {
                recipients: unsettled.iter().map(|&i| d.recipients[i].clone()).collect(),
                ..d.clone()
            };
            let hop = Hop {
                helo_name: &source.helo_name,
                source: source.address,
            };
            let fallback = outbound::deliver_to(cfg, &hop, rest, site.port, &sub).await;
            if fallback.outcomes.iter().any(RcptOutcome::is_delivered) {
                report.tls = fallback.tls.clone();
                report.remote_supports_dsn = fallback.remote_supports_dsn;
            }
            for (&i, o) in unsettled.iter().zip(fallback.outcomes) {
                outcomes[i] = Some(o);
            }
        } else {
            for &i in &unsettled {
                outcomes[i] = Some(leftover(reply.clone(), remote.clone()));
            }
        }
    }
    // Deferrals of single recipients can also say "slow down" (e.g. 421 after RCPT).
    if !matches!(step, Step::SlowDown(_))
        && let Some(r) = outcomes
            .iter()
            .flatten()
            .find(|o| o.is_deferred() && shaping::is_slow_down(o.reply()))
    {
        step = Step::SlowDown(r.reply().clone());
    }
    let fallback = Reply::new(451, EnhancedStatus::new(4, 4, 0), "not attempted");
    report.outcomes = outcomes
        .into_iter()
        .map(|o| o.unwrap_or_else(|| leftover(fallback.clone(), None)))
        .collect();
    job.finish(JobReport {
        report,
        source: source.name.clone(),
        delayed_until: None,
    });
    step
}

/// A recipient no host settled: permanent only when the last reason was permanent.
fn leftover(reply: Reply, remote: Option<String>) -> RcptOutcome {
    if reply.is_permanent() {
        RcptOutcome::Failed { reply, remote }
    } else {
        RcptOutcome::Deferred { reply, remote }
    }
}

/// No host of the site took a connection: everything waiting on this path gets the reply
/// (the queue retries it on its schedule); nothing keeps knocking on a dead site.
fn fail_waiting(egress: &Egress, key: &PathKey, source: &SourceSpec, reply: Reply) {
    let jobs = drain(egress, key);
    for job in jobs {
        job.finish_all(&source.name, leftover(reply.clone(), None));
    }
}

/// The site said "slow down": leave it alone for `backoff_secs`; everything waiting goes
/// back to the spool with that time.
fn back_off(
    egress: &Egress,
    key: &PathKey,
    source: &SourceSpec,
    site: &Site,
    limits: &shaping::Limits,
    reply: Reply,
) {
    let until_unix = egress.clock.now() + limits.backoff_secs;
    tracing::warn!(site = %site.key, source = %source.name, reply = %reply, backoff_secs = limits.backoff_secs, "site asked us to slow down; backing off");
    if let Some(p) = egress.lock().paths.get_mut(key) {
        p.backoff = Some((egress.mono_ms() + limits.backoff_secs * 1000, until_unix));
        p.wake.notify_waiters();
    }
    let delay = Reply::new(
        451,
        EnhancedStatus::new(4, 7, 0),
        format!("delayed: {} asked us to slow down ({reply})", site.key),
    );
    for job in drain(egress, key) {
        job.delay(&source.name, until_unix, delay.clone());
    }
}

/// Takes every waiting job of a path.
fn drain(egress: &Egress, key: &PathKey) -> Vec<Job> {
    let mut st = egress.lock();
    let Some(path) = st.paths.get_mut(key) else {
        return Vec::new();
    };
    path.queued = 0;
    std::mem::take(&mut path.queue)
        .into_values()
        .flatten()
        .collect()
}
