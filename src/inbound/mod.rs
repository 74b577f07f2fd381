//! Inbound SMTP: listeners (relay, submission, implicit-TLS submissions), connection limits,
//! TLS, AUTH accounts and relay control around the sans-IO session.

mod conn;
pub mod relay;
pub mod tls;

use crate::audit::AuditLog;
use crate::config::{Config, ListenerMode};
use crate::queue::Queue;
use crate::smtp::reply::{EnhancedStatus, Reply};
use crate::smtp::session::SessionConfig;
use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

/// Everything a connection needs, shared by all listeners.
pub struct Inbound {
    config: Arc<Config>,
    queue: Arc<Queue>,
    acceptor: tokio_rustls::TlsAcceptor,
    pinned: HashSet<[u8; 32]>,
    users: HashMap<String, String>,
    dummy_hash: String,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    total: Arc<Semaphore>,
    audit: Arc<AuditLog>,
}

impl Inbound {
    /// Prepares listeners' shared state. `tls` is the server TLS configuration; AUTH
    /// outcomes and accepted messages are recorded in `audit`.
    pub fn new(
        config: Arc<Config>,
        queue: Arc<Queue>,
        tls: Arc<rustls::ServerConfig>,
        audit: Arc<AuditLog>,
    ) -> Arc<Self> {
        let pinned = config
            .relay
            .client_cert_fingerprints
            .iter()
            .filter_map(|f| crate::config::parse_fingerprint(f))
            .collect();
        let users = config
            .user
            .iter()
            .map(|u| (u.name.clone(), u.password_hash.clone()))
            .collect();
        let total = Arc::new(Semaphore::new(config.server.max_connections.max(1)));
        let dummy_hash =
            hash_password(&format!("{:x}", rand::random::<u128>())).unwrap_or_default();
        Arc::new(Self {
            config,
            queue,
            acceptor: tokio_rustls::TlsAcceptor::from(tls),
            pinned,
            users,
            dummy_hash,
            per_ip: Mutex::new(HashMap::new()),
            total,
            audit,
        })
    }

    /// Accepts connections on `listener` until `shutdown` turns true, then waits for open
    /// connections to finish their transactions (each ends itself with 421 when idle).
    pub async fn run_listener(
        self: Arc<Self>,
        listener: TcpListener,
        mode: ListenerMode,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut conns = JoinSet::new();
        loop {
            let accepted = tokio::select! {
                a = listener.accept() => a,
                _ = shutdown.changed() => {
                    if *shutdown.borrow() { break } else { continue }
                }
            };
            let (mut tcp, addr) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let Some(guard) = self.admit(addr.ip()) else {
                let reply = Reply::new(
                    421,
                    EnhancedStatus::new(4, 7, 0),
                    "Too many connections, try again later",
                );
                tracing::info!(client = %addr, "connection refused: limit reached");
                conns.spawn(async move {
                    let _ = tcp.write_all(&reply.to_bytes()).await;
                });
                continue;
            };
            let me = self.clone();
            let sd = shutdown.clone();
            conns.spawn(async move {
                let implicit = mode == ListenerMode::Submissions;
                let auth_required = mode != ListenerMode::Relay;
                conn::serve(me, tcp, addr, implicit, auth_required, sd).await;
                drop(guard);
            });
            while conns.try_join_next().is_some() {}
        }
        drop(listener);
        while conns.join_next().await.is_some() {}
    }

    /// Takes a connection slot for `ip`, or None when the total or per-IP limit is reached.
    fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<ConnGuard> {
        let permit = self.total.clone().try_acquire_owned().ok()?;
        let mut map = self.per_ip.lock().unwrap_or_else(|p| p.into_inner());
        let n = map.entry(ip).or_insert(0);
        if *n >= self.config.server.max_connections_per_ip {
            return None;
        }
        *n += 1;
        Some(ConnGuard {
            inbound: self.clone(),
            ip,
            _permit: permit,
        })
    }

    fn is_trusted_network(&self, ip: IpAddr) -> bool {
        self.config
            .relay
            .trusted_networks
            .iter()
            .any(|n| n.contains(ip))
    }

    fn session_config(&self, auth_required: bool) -> SessionConfig {
        let s = &self.config.server;
        SessionConfig {
            hostname: s.hostname.clone(),
            max_message_size: s.max_message_size,
            max_recipients: s.max_recipients,
            max_line_length: s.max_line_length,
            max_errors: s.max_errors,
            starttls_available: true,
            auth_available: !self.users.is_empty(),
            auth_required,
        }
    }

    /// Checks a password against the user's argon2 hash. Unknown users cost the same work,
    /// so timing does not reveal which names exist. Also the HTTP API's password grant.
    pub fn verify_user(&self, name: &str, password: &str) -> bool {
        use argon2::PasswordVerifier;
        let (hash, known) = match self.users.get(name) {
            Some(h) => (h.as_str(), true),
            None => (self.dummy_hash.as_str(), false),
        };
        let Ok(parsed) = argon2::PasswordHash::new(hash) else {
            return false;
        };
        let ok = argon2::Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok();
        ok && known
    }
}

/// Releases a connection slot when the connection ends.
struct ConnGuard {
    inbound: Arc<Inbound>,
    ip: IpAddr,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        let mut map = self
            .inbound
            .per_ip
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(n) = map.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.ip);
            }
        }
    }
}

/// Binds every configured listener; returns them with their actual addresses (port 0 in
/// tests becomes a real port).
pub async fn bind_all(
    config: &Config,
) -> std::io::Result<Vec<(TcpListener, ListenerMode, SocketAddr)>> {
    let mut out = Vec::new();
    for l in &config.listener {
        let listener = TcpListener::bind(l.address).await.map_err(|e| {
            std::io::Error::new(e.kind(), format!("cannot listen on {}: {e}", l.address))
        })?;
        let addr = listener.local_addr()?;
        out.push((listener, l.mode, addr));
    }
    Ok(out)
}

/// Hashes a password with argon2id and a random salt into a PHC string (`users hash`).
pub fn hash_password(password: &str) -> Result<String, argon2::password_hash::Error> {
    use argon2::password_hash::{PasswordHasher, SaltString};
    let mut salt_bytes = [0u8; 16];
    rand::Rng::fill(&mut rand::rng(), &mut salt_bytes);
    let salt = SaltString::encode_b64(&salt_bytes)?;
    Ok(argon2::Argon2::default()
        .hash_password(password.as_bytes(), &salt)?
        .to_string())
}
