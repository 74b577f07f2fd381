//! The policy engine at run time: holds the current rules (reloadable), gathers the probes
//! for a recipient (MX set, MTA-STS, TLS history, OpenPGP and S/MIME keys, WKD) with caches
//! kept beside the spool, and asks the pure [`decide`] for the method.

use super::decide::{Probes, decide};
use super::history::{TlsHistory, TlsLevel};
use super::mta_sts::StsCache;
use super::rules::{MessageContext, Policy, PolicyError, Rule};
use super::types::{Decision, MethodName};
use crate::crypto::keys::KeyStores;
use crate::crypto::mime;
use crate::dns::Resolver;
use crate::spool::Spool;
use sequoia_openpgp::Cert;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};

/// How long a WKD answer (key or no key) is remembered.
const WKD_TTL_SECS: u64 = 86_400;
/// Meta keys under which the caches persist in the spool database.
const META_STS: &str = "probe/mta-sts";
const META_HISTORY: &str = "probe/tls-history";

/// Everything `decide` was told and what it said, plus the keys to encrypt with.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The rule that matched, if any.
    pub rule: Option<Rule>,
    /// The probes as gathered.
    pub probes: Probes,
    /// The decision.
    pub decision: Decision,
    /// The recipient's OpenPGP certificate, when one was found (keyring or WKD).
    pub pgp_cert: Option<Cert>,
    /// The recipient's S/MIME certificate, when one was found.
    pub smime_cert: Option<crate::crypto::smime::Certificate>,
}

/// Settings for the engine.
#[derive(Debug, Clone, Default)]
pub struct EngineSettings {
    /// The policy file; `None` means no rules (opportunistic TLS for everyone, subject to
    /// MTA-STS and the TLS history).
    pub policy_file: Option<PathBuf>,
    /// Where the OpenPGP keyring and the S/MIME store live; `None` disables key probes.
    pub keys_dir: Option<PathBuf>,
    /// Look OpenPGP keys up by WKD when the keyring has none.
    pub wkd: bool,
    /// Domains with a static route: their MX set and MTA-STS policy are not consulted (the
    /// route decides the next hop).
    pub routed_domains: Vec<String>,
}

/// The run-time policy engine, shared by the delivery workers.
pub struct PolicyEngine {
    settings: EngineSettings,
    policy: RwLock<Arc<Policy>>,
    keys: Option<KeyStores>,
    sts: StsCache,
    history: Mutex<TlsHistory>,
    wkd_cache: Mutex<HashMap<String, (Option<Cert>, u64)>>,
    http: reqwest::Client,
    resolver: Arc<Resolver>,
    store: Option<Arc<dyn Spool>>,
}

/// Why the engine could not start.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The policy file is bad.
    #[error(transparent)]
    Policy(#[from] PolicyError),
    /// The key stores could not be opened.
    #[error(transparent)]
    Keys(#[from] crate::crypto::keys::KeysError),
}

impl PolicyEngine {
    /// Loads the policy and the persisted caches. `http` fetches MTA-STS policies and WKD keys.
    pub fn new(
        settings: EngineSettings,
        resolver: Arc<Resolver>,
        http: reqwest::Client,
        store: Option<Arc<dyn Spool>>,
    ) -> Result<Self, EngineError> {
        let policy = match &settings.policy_file {
            Some(p) => Policy::load(p)?,
            None => Policy { rules: Vec::new() },
        };
        let keys = match &settings.keys_dir {
            Some(dir) => Some(KeyStores::open(dir)?),
            None => None,
        };
        let meta = |key: &str| {
            store
                .as_ref()
                .and_then(|s| s.meta_get(key).ok().flatten())
                .and_then(|v| String::from_utf8(v).ok())
        };
        let sts = meta(META_STS)
            .and_then(|j| StsCache::from_json(&j).ok())
            .unwrap_or_default();
        let history = meta(META_HISTORY)
            .and_then(|j| serde_json::from_str(&j).ok())
            .unwrap_or_default();
        Ok(Self {
            settings,
            policy: RwLock::new(Arc::new(policy)),
            keys,
            sts,
            history: Mutex::new(history),
            wkd_cache: Mutex::new(HashMap::new()),
            http,
            resolver,
            store,
        })
    }

    /// Re-reads the policy file. A bad file is refused (with file:line) and the old policy
    /// stays in force. Returns the number of rules now in force.
    pub fn reload(&self) -> Result<usize, PolicyError> {
        let Some(path) = &self.settings.policy_file else {
            return Ok(0);
        };
        let fresh = Policy::load(path)?;
        let n = fresh.rules.len();
        *self.policy.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(fresh);
        Ok(n)
    }

    /// The policy in force.
    pub fn policy(&self) -> Arc<Policy> {
        self.policy
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Gathers the probes for one recipient and decides.
    pub async fn plan(&self, ctx: &MessageContext, recipient: &str, now: u64) -> Plan {
        let policy = self.policy();
        let rule = policy.matching_rule(ctx, recipient).cloned();
        let domain = recipient
            .rsplit_once('@')
            .map(|(_, d)| d.to_ascii_lowercase())
            .unwrap_or_default();
        let routed = self.settings.routed_domains.contains(&domain);
        let mx_hosts = if routed || domain.starts_with('[') {
            Vec::new()
        } else {
            match crate::outbound::resolve_targets(&self.resolver, &domain).await {
                Ok(targets) => targets.into_iter().map(|t| t.host).collect(),
                Err(_) => Vec::new(),
            }
        };
        let sts = if routed || domain.starts_with('[') {
            super::mta_sts::StsProbe::None
        } else {
            let probe = self
                .sts
                .probe(&self.resolver, &self.http, &domain, now)
                .await;
            self.persist(META_STS, self.sts.to_json());
            probe
        };
        let history_level = self.lock_history().required(&domain);
        let wants = |m: MethodName| rule.as_ref().is_some_and(|r| r.methods.contains(&m));
        let pgp_cert = if wants(MethodName::Pgp) {
            self.pgp_cert(recipient, now).await
        } else {
            None
        };
        let smime_cert = if wants(MethodName::Smime) {
            self.keys
                .as_ref()
                .and_then(|k| match k.smime.find(recipient) {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!(rcpt = recipient, error = %e, "S/MIME store lookup failed");
                        None
                    }
                })
        } else {
            None
        };
        let probes = Probes {
            has_pgp_key: pgp_cert.as_ref().map(|c| c.fingerprint().to_hex()),
            has_smime_cert: smime_cert.as_ref().map(smime_fingerprint),
            sts,
            history_level,
            mx_hosts,
        };
        let decision = decide(rule.as_ref(), &probes, recipient);
        Plan {
            rule,
            probes,
            decision,
            pgp_cert,
            smime_cert,
        }
    }

    /// Remembers the TLS level a domain showed (the ratchet) and persists it.
    pub fn record_tls(&self, domain: &str, level: TlsLevel, now: u64) {
        let json = {
            let mut h = self.lock_history();
            h.record(domain, level, now);
            serde_json::to_string(&*h).unwrap_or_default()
        };
        self.persist(META_HISTORY, json);
    }

    fn lock_history(&self) -> std::sync::MutexGuard<'_, TlsHistory> {
        self.history.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn persist(&self, key: &str, json: String) {
        if let Some(store) = &self.store
            && let Err(e) = store.meta_put(key, json.as_bytes())
        {
            tracing::warn!(error = %e, key, "could not persist probe cache");
        }
    }

    /// The keyring's certificate, else (when enabled) a WKD lookup, cached both ways.
    async fn pgp_cert(&self, recipient: &str, now: u64) -> Option<Cert> {
        if let Some(keys) = &self.keys {
            match keys.pgp.find(recipient) {
                Ok(Some(c)) => return Some(c),
                Ok(None) => {}
                Err(e) => tracing::warn!(rcpt = recipient, error = %e, "keyring lookup failed"),
            }
        }
        if !self.settings.wkd {
            return None;
        }
        let key = recipient.to_ascii_lowercase();
        if let Some((cert, expires)) = self
            .wkd_cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
            && *expires > now
        {
            return cert.clone();
        }
        let found = match crate::crypto::wkd::wkd_lookup(&self.http, recipient).await {
            Ok(c) => c,
            Err(e) => {
                // A temporary failure is not remembered: the next attempt asks again.
                tracing::info!(rcpt = recipient, error = %e, "WKD lookup failed");
                return None;
            }
        };
        self.wkd_cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, (found.clone(), now + WKD_TTL_SECS));
        found
    }
}

/// SHA-256 of an X.509 certificate's DER, lowercase hex.
fn smime_fingerprint(cert: &crate::crypto::smime::Certificate) -> String {
    use der::Encode;
    use sha2::Digest;
    cert.to_der()
        .map(|d| hex::encode(sha2::Sha256::digest(d)))
        .unwrap_or_default()
}

/// Builds the matcher's view of a stored message: envelope facts and top-level headers.
pub fn message_context(env: &crate::spool::Envelope, body: &[u8]) -> MessageContext {
    let (header, _) = mime::split_header_body(body);
    let headers: Vec<(String, String)> = mime::header_fields(header)
        .iter()
        .map(|f| (String::from_utf8_lossy(f.name).to_string(), f.value()))
        .collect();
    let subject = headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("subject"))
        .map(|(_, v)| v.clone());
    MessageContext {
        sender: env.mail_from.clone(),
        authenticated: env.authenticated.clone(),
        listener: env.listener.clone(),
        client_ip: env.client.parse().ok(),
        headers,
        subject,
    }
}
