//! Wires the parts into a running server: spool, queue, listeners, admin socket, signals.

use crate::admin;
use crate::audit::{Action, Actor, AuditLog};
use crate::config::Config;
use crate::crypto::dkim::DkimSigners;
use crate::events::dispatch::Dispatcher;
use crate::events::outbox::{self, Outbox};
use crate::events::webhook::{self, WebhookStore};
use crate::events::{self as event_log, EventLog};
use crate::inbound::{self, Inbound};
use crate::metrics::Metrics;
use crate::outbound::egress::{Egress, EgressSettings};
use crate::outbound::{OutboundConfig, Route};
use crate::policy::engine::{EngineSettings, PolicyEngine};
use crate::queue::{Bookkeeping, Clock, Queue, QueueSettings};
use crate::spool::{GroupCommit, SledSpool, Spool};
use crate::suppression::SuppressionList;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinSet;

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The spool could not be opened.
    #[error(transparent)]
    Spool(#[from] crate::spool::SpoolError),
    /// Certificate or key problem.
    #[error(transparent)]
    Tls(#[from] inbound::tls::TlsSetupError),
    /// The resolver could not be built.
    #[error("DNS: {0}")]
    Dns(String),
    /// A socket could not be bound.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// A DKIM key could not be loaded.
    #[error("dkim: {0}")]
    Dkim(String),
    /// The policy file, key stores or HTTPS client could not be set up.
    #[error("policy: {0}")]
    Policy(String),
    /// The webhook HTTP client could not be built.
    #[error("webhooks: {0}")]
    Webhooks(String),
    /// The HTTP API could not be set up.
    #[error(transparent)]
    Api(#[from] crate::api::ApiSetupError),
    /// The audit log could not be opened.
    #[error("audit log: {0}")]
    Audit(#[from] crate::audit::AuditError),
}

/// A running server: its bound addresses, its queue and the means to stop it.
pub struct Running {
    /// Actual listener addresses in config order.
    pub smtp_addrs: Vec<SocketAddr>,
    /// Where the Prometheus endpoint listens, if configured.
    pub metrics_addr: Option<SocketAddr>,
    /// Where the HTTP API listens, if `[api] address` is set.
    pub api_addr: Option<SocketAddr>,
    /// The delivery queue (tests use it to wake the scheduler after moving the clock).
    pub queue: Arc<Queue>,
    /// The policy engine the queue delivers with (SIGHUP and `policy reload` reload it).
    pub engine: Arc<PolicyEngine>,
    /// The audit log every part records into (disabled when `[audit] enabled = false`).
    pub audit: Arc<AuditLog>,
    /// The durable event log (in-process observers subscribe here).
    pub events: Arc<EventLog>,
    /// The webhook dispatcher (tests wake it after moving the clock).
    pub webhooks: Arc<Dispatcher>,
    shutdown: watch::Sender<bool>,
    tasks: JoinSet<()>,
    grace: Duration,
}

impl Running {
    /// Graceful stop: listeners close, idle sessions get 421, open transactions finish,
    /// running deliveries get the grace period, then the spool is flushed.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        let grace = self.grace;
        let _ = tokio::time::timeout(grace + Duration::from_secs(5), async {
            while self.tasks.join_next().await.is_some() {}
        })
        .await;
        let _ = self.queue.spool().flush();
        self.audit
            .record_synced(
                Actor::system("server"),
                Action::ServerStopped,
                serde_json::json!({"pid": std::process::id()}),
            )
            .await;
    }

    /// Waits for SIGTERM or SIGINT, then shuts down gracefully. SIGHUP reloads the policy
    /// file (a bad file is logged and refused; the old policy stays) and keeps running.
    pub async fn run_until_signal(self) -> std::io::Result<()> {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let mut hup = signal(SignalKind::hangup())?;
        loop {
            tokio::select! {
                _ = term.recv() => { tracing::info!("SIGTERM: stopping"); break }
                _ = int.recv() => { tracing::info!("SIGINT: stopping"); break }
                _ = hup.recv() => {
                    tracing::info!("SIGHUP: reloading the policy");
                    admin::reload_policy(&self.engine, &self.audit, Actor::system("signal")).await;
                }
            }
        }
        self.shutdown().await;
        tracing::info!("stopped");
        Ok(())
    }
}

/// Opens the spool, recovers queued mail and starts listeners, scheduler and admin socket.
pub async fn start(config: Config, clock: Arc<dyn Clock>) -> Result<Running, StartError> {
    let config = Arc::new(config);
    let s = &config.server;
    std::fs::create_dir_all(&s.spool_dir).map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!("spool_dir {}: {e}", s.spool_dir.display()),
        )
    })?;
    let spool: Arc<dyn Spool> = Arc::new(
        SledSpool::open_with_cache(&s.spool_dir, s.spool_cache_mb.max(1) * 1024 * 1024)?
            .with_min_free(s.spool_min_free_mb.saturating_mul(1024 * 1024)),
    );
    let audit = match config.audit_file() {
        Some(path) => AuditLog::open(&path, clock.clone())?,
        None => AuditLog::disabled(),
    };
    let metrics = Metrics::new();
    let observer = metrics.clone();
    let commit = GroupCommit::start_observed(
        spool.clone(),
        Some(Arc::new(move |d| observer.observe_flush(d))),
    );
    let resolver = Arc::new(
        crate::dns::build_resolver(&config.dns.nameservers)
            .map_err(|e| StartError::Dns(e.to_string()))?,
    );
    let engine = Arc::new(policy_engine(
        &config,
        resolver.clone(),
        Some(spool.clone()),
    )?);
    let settings = QueueSettings {
        hostname: s.hostname.clone(),
        max_age_secs: config.queue.max_age_secs,
        min_retry_secs: config.queue.min_retry_secs,
        max_retry_secs: config.queue.max_retry_secs,
        default_ret: config.queue.default_ret,
        classes: QueueSettings::classes_from(&config.class),
        suppress: config.suppression.enabled,
        feedback_domains: config
            .suppression
            .feedback_domains
            .iter()
            .map(|d| d.trim_end_matches('.').to_ascii_lowercase())
            .collect(),
        class_header: config.classes.header.clone(),
    };
    let egress = Egress::new(
        EgressSettings::from_config(&config),
        Arc::new(outbound_config(&config)?),
        resolver,
        clock.clone(),
        Some(spool.tree("warmup")?),
    );
    let events = EventLog::open(
        spool.tree(event_log::TREE)?,
        spool.tree(event_log::INDEX_TREE)?,
    )?;
    events.subscribe(audit_outcomes(audit.clone()));
    let books = Bookkeeping {
        events: events.clone(),
        suppressions: SuppressionList::new(spool.tree("suppression")?),
        metrics: metrics.clone(),
        dkim: Arc::new(
            DkimSigners::load(
                &config.dkim,
                config
                    .base_dir
                    .as_deref()
                    .unwrap_or(std::path::Path::new(".")),
            )
            .map_err(|e| StartError::Dkim(e.to_string()))?,
        ),
        // Only an API server keeps status records; without one, finishing a message costs
        // no extra lookup.
        on_final: match config.api.address {
            Some(_) => Some(crate::api::final_hook(
                spool.tree(crate::api::MESSAGES_TREE)?,
            )),
            None => None,
        },
    };
    let queue = Queue::new(
        spool,
        commit,
        clock,
        settings,
        egress,
        engine.clone(),
        books,
    );
    let hooks = Arc::new(
        WebhookStore::new(queue.spool().tree(webhook::TREE)?, &config.webhook)
            .with_allowed_hosts(config.events.webhook_allowed_hosts.clone()),
    );
    let deliveries = Arc::new(Outbox::new(
        queue.spool().tree(outbox::RECORDS_TREE)?,
        queue.spool().tree(outbox::PENDING_TREE)?,
    ));
    let http = crate::policy::mta_sts::https_client(config.outbound.extra_ca_file.as_deref(), &[])
        .map_err(|e| StartError::Webhooks(e.to_string()))?;
    let webhooks = Dispatcher::new(
        events.clone(),
        hooks.clone(),
        deliveries.clone(),
        http,
        queue.clock().clone(),
        queue.committer().clone(),
        config.events.clone(),
    )?;
    let recovered = queue.recover()?;
    if recovered > 0 {
        tracing::info!(count = recovered, "recovered queued messages");
    }
    let (certs, key) = inbound::tls::load_or_generate(
        s.tls_cert.as_deref(),
        s.tls_key.as_deref(),
        &s.hostname,
        &s.spool_dir,
    )?;
    let tls = inbound::tls::server_config(
        certs,
        key,
        !config.relay.client_cert_fingerprints.is_empty(),
    )?;
    let listeners = inbound::bind_all(&config).await?;
    let (tx, rx) = watch::channel(false);
    let mut tasks = JoinSet::new();
    let inbound = Inbound::new(config.clone(), queue.clone(), tls, audit.clone());
    let mut smtp_addrs = Vec::new();
    for (listener, mode, addr) in listeners {
        tracing::info!(address = %addr, mode = ?mode, "listening");
        smtp_addrs.push(addr);
        tasks.spawn(inbound.clone().run_listener(listener, mode, rx.clone()));
    }
    let grace = Duration::from_secs(s.shutdown_grace_secs);
    tasks.spawn(queue.clone().run(rx.clone(), grace));
    tasks.spawn(webhooks.clone().run(rx.clone()));
    let mut metrics_addr = None;
    if let Some(addr) = config.metrics.address {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        metrics_addr = Some(listener.local_addr()?);
        tracing::info!(address = %listener.local_addr()?, "metrics endpoint listening");
        tasks.spawn(crate::metrics::serve(
            listener,
            metrics.clone(),
            queue.clone(),
            rx.clone(),
        ));
    }
    let mut api_addr = None;
    let api_tls = crate::api::tls_acceptor(&config)?;
    if let Some(listener) = crate::api::bind(&config).await? {
        let local = listener.local_addr()?;
        api_addr = Some(local);
        tracing::info!(address = %local, tls = api_tls.is_some(), "HTTP API listening");
        let api = crate::api::Api::new(
            config.clone(),
            queue.clone(),
            inbound.clone(),
            audit.clone(),
            local,
            crate::api::Hooks {
                store: hooks,
                deliveries,
            },
        )?;
        tasks.spawn(crate::api::serve(api, listener, api_tls, rx.clone()));
    }
    let admin_listener = admin::bind(&s.spool_dir)?;
    tasks.spawn(admin::serve(
        admin_listener,
        queue.clone(),
        engine.clone(),
        audit.clone(),
        rx.clone(),
    ));
    audit
        .record_synced(
            Actor::system("server"),
            Action::ServerStarted,
            serde_json::json!({
                "version": env!("CARGO_PKG_VERSION"),
                "pid": std::process::id(),
                "hostname": s.hostname,
                "smtp": smtp_addrs.iter().map(ToString::to_string).collect::<Vec<_>>(),
                "api": api_addr.map(|a| a.to_string()),
            }),
        )
        .await;
    Ok(Running {
        smtp_addrs,
        metrics_addr,
        api_addr,
        queue,
        engine,
        audit,
        events,
        webhooks,
        shutdown: tx,
        tasks,
        grace,
    })
}

/// Builds the policy engine from `[policy]`, `[keys]` and `[outbound] extra_ca_file`.
pub fn policy_engine(
    config: &Config,
    resolver: Arc<crate::dns::Resolver>,
    store: Option<Arc<dyn Spool>>,
) -> Result<PolicyEngine, StartError> {
    let http = crate::policy::mta_sts::https_client(config.outbound.extra_ca_file.as_deref(), &[])
        .map_err(|e| StartError::Policy(e.to_string()))?;
    let settings = EngineSettings {
        policy_file: config.policy_file(),
        keys_dir: Some(config.keys_dir()),
        wkd: config.policy.wkd,
        routed_domains: config
            .route
            .iter()
            .map(|r| r.domain.to_ascii_lowercase())
            .collect(),
    };
    PolicyEngine::new(settings, resolver, http, store)
        .map_err(|e| StartError::Policy(e.to_string()))
}

/// The outbound client's settings from `[outbound]`, `[[route]]` and `[server]`.
pub fn outbound_config(config: &Config) -> Result<OutboundConfig, StartError> {
    let o = &config.outbound;
    let extra_roots = match &o.extra_ca_file {
        Some(path) => inbound::tls::read_certificates(path)?,
        None => Vec::new(),
    };
    let pins = o
        .tls_pins
        .iter()
        .filter_map(|f| crate::config::parse_fingerprint(f))
        .collect();
    let verified_tls = crate::outbound::tls::verifying_client_config(&extra_roots, pins)
        .map_err(|e| StartError::Tls(inbound::tls::TlsSetupError::Rustls(e.to_string())))?;
    Ok(OutboundConfig {
        helo_name: o
            .helo_name
            .clone()
            .unwrap_or_else(|| config.server.hostname.clone()),
        smtp_port: o.smtp_port,
        routes: config
            .route
            .iter()
            .map(|r| Route {
                domain: r.domain.to_ascii_lowercase(),
                host: r.host.clone(),
                port: r.port,
            })
            .collect(),
        connect_timeout: Duration::from_secs(o.connect_timeout_secs),
        command_timeout: Duration::from_secs(o.command_timeout_secs),
        data_timeout: Duration::from_secs(o.data_timeout_secs),
        source_address: o.source_address,
        verified_tls: Some(verified_tls),
        opportunistic_tls: Some(
            crate::outbound::tls::opportunistic_client_config()
                .map_err(|e| StartError::Tls(inbound::tls::TlsSetupError::Rustls(e.to_string())))?,
        ),
    })
}

/// The event log's listener that writes the queue's outcomes into the audit log: each
/// recipient delivered, deferred, bounced or suppressed (with method, TLS and reply), and the
/// acceptance of our own DSNs (mail from SMTP or the API is recorded where it is accepted,
/// with the client as actor). Only queues the record; the audit writer does the work.
fn audit_outcomes(audit: Arc<AuditLog>) -> event_log::Listener {
    use event_log::EventType;
    Arc::new(move |e: &event_log::Event| {
        let action = match e.kind {
            EventType::Delivered => Action::MessageDelivered,
            EventType::Deferred => Action::MessageDeferred,
            EventType::Bounced => Action::MessageBounced,
            EventType::Suppressed => Action::MessageSuppressed,
            EventType::Accepted if e.sender.is_empty() => {
                audit.record(
                    Actor::system("queue"),
                    Action::MessageAccepted,
                    serde_json::json!({
                        "via": "dsn",
                        "queue_id": e.queue_id,
                        "sender": "",
                        "recipients": e.recipients,
                        "class": e.class,
                    }),
                );
                return;
            }
            EventType::Accepted => return,
        };
        let details = serde_json::json!({
            "event_id": e.id,
            "class": e.class,
            "reply": e.reply,
            "remote": e.remote,
            "method": e.method,
            "tls_version": e.tls_version,
            "tls_cipher": e.tls_cipher,
            "tls_verified": e.tls_verified,
            "api_client": e.api_client,
        });
        audit.record_message_event(
            action,
            &e.queue_id,
            e.recipient.as_deref().unwrap_or(""),
            details,
        );
    })
}
