//! The configuration structs. Every field's doc says what it does and its default; the same
//! text appears in `config/sealpost.example.toml`.

use serde::Deserialize;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Identity, storage and session limits.
    #[serde(default)]
    pub server: Server,
    /// SMTP listeners. Default: none (the embedded config has one on 127.0.0.1:2525).
    #[serde(default)]
    pub listener: Vec<Listener>,
    /// Who may send where: the anti-open-relay rules.
    #[serde(default)]
    pub relay: Relay,
    /// SMTP AUTH users (argon2 hashes from `sealpost users hash`). Default: none.
    #[serde(default)]
    pub user: Vec<User>,
    /// DNS resolution for MX lookups.
    #[serde(default)]
    pub dns: Dns,
    /// Outbound delivery settings.
    #[serde(default)]
    pub outbound: Outbound,
    /// Static next hops that bypass MX lookup. Default: none.
    #[serde(default)]
    pub route: Vec<Route>,
    /// Retry and expiry of queued mail.
    #[serde(default)]
    pub queue: Queue,
    /// The encryption policy file and probe settings.
    #[serde(default)]
    pub policy: PolicySection,
    /// Where recipient keys (OpenPGP, S/MIME) are kept.
    #[serde(default)]
    pub keys: KeysSection,
    /// Egress sources: local addresses and EHLO names mail leaves from. Default: none (one
    /// implicit source from `[outbound] source_address`).
    #[serde(default)]
    pub source: Vec<super::egress::Source>,
    /// Weighted sets of sources. Default: none (the implicit `default` pool holds every
    /// source).
    #[serde(default)]
    pub pool: Vec<super::egress::Pool>,
    /// Traffic classes and the rules choosing them. Default: none (implicit `default` and
    /// `bounce` classes on the default pool).
    #[serde(default)]
    pub class: Vec<super::egress::Class>,
    /// How classes are picked (the class header).
    #[serde(default)]
    pub classes: super::egress::Classes,
    /// Connection and rate limits per egress path.
    #[serde(default)]
    pub shaping: super::egress::Shaping,
    /// The suppression list and feedback domains.
    #[serde(default)]
    pub suppression: super::ops::SuppressionSection,
    /// DKIM signing keys, one per sender domain. Default: none (nothing is signed).
    #[serde(default)]
    pub dkim: Vec<super::ops::DkimKey>,
    /// The Prometheus metrics endpoint.
    #[serde(default)]
    pub metrics: super::ops::MetricsSection,
    /// The HTTP sending API.
    #[serde(default)]
    pub api: super::api::ApiSection,
    /// The audit log.
    #[serde(default)]
    pub audit: super::ops::AuditSection,
    /// The event log's retention and webhook delivery settings.
    #[serde(default)]
    pub events: super::events::EventsSection,
    /// Webhook subscriptions fixed in the config file. Default: none (subscriptions can
    /// also be made through the API, `POST /v1/webhooks`).
    #[serde(default)]
    pub webhook: Vec<super::events::WebhookEntry>,
    /// Directory of the file this was loaded from, for resolving relative paths (not a key).
    #[serde(skip)]
    pub base_dir: Option<PathBuf>,
}

/// `[policy]`: which recipients need which protection.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PolicySection {
    /// Policy rules file (see `config/policy.example.toml`), relative to this config file.
    /// Default: none (no rules: opportunistic TLS, subject to MTA-STS and TLS history).
    pub file: Option<PathBuf>,
    /// Look up OpenPGP keys by Web Key Directory when a rule wants PGP and the keyring has
    /// none. Default true.
    pub wkd: bool,
}

impl Default for PolicySection {
    fn default() -> Self {
        Self {
            file: None,
            wkd: true,
        }
    }
}

/// `[keys]`: recipient key stores.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KeysSection {
    /// Directory holding `pgp/` and `smime/`, relative to this config file.
    /// Default: `spool_dir/keys`.
    pub dir: Option<PathBuf>,
}

/// `[server]`: identity, storage and per-session limits.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Server {
    /// Name used in the greeting, EHLO, Received headers and DSNs. Default `"localhost"`.
    pub hostname: String,
    /// Directory holding the sled spool, the generated certificate and the admin socket.
    /// Default `"./data"`.
    pub spool_dir: PathBuf,
    /// PEM certificate chain for STARTTLS and implicit TLS. Default: none, and a self-signed
    /// certificate for `hostname` is generated into `spool_dir/tls/` on first start.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key matching `tls_cert`. Default: none.
    pub tls_key: Option<PathBuf>,
    /// Largest message accepted, in octets; advertised as SIZE. Default 26214400 (25 MiB).
    pub max_message_size: u64,
    /// Most recipients per transaction; RCPT beyond gets 452 4.5.3. Default 1000.
    pub max_recipients: usize,
    /// Longest command line including CRLF; longer gets 500 5.5.6. Default 2048.
    pub max_line_length: usize,
    /// Error replies tolerated per session before 421 and disconnect. Default 20.
    pub max_errors: usize,
    /// Memory for the spool database's page cache, in MiB. Default 64. sled's own default
    /// (1 GiB) let a queue of a few hundred thousand messages grow the process past 1 GB;
    /// the working set of a busy relay (recent messages and the due index) fits in far less,
    /// and a deep queue then lives on disk instead of in RAM.
    pub spool_cache_mb: u64,
    /// MiB that must stay free on the spool's file system: a message that would leave less
    /// (counting it twice, for sled's rewrite) is refused with `452 4.3.1` before anything is
    /// written, like Postfix's `queue_minfree`. Default 100; 0 turns the check off. sled does
    /// not survive a write failing for lack of space (it spins until restarted), so a full
    /// disk must be met here.
    pub spool_min_free_mb: u64,
    /// Seconds a client may stay silent before 421 4.4.2. Default 300 (RFC 5321 §4.5.3.2).
    pub idle_timeout_secs: u64,
    /// Simultaneous connections from one client IP; more get 421 4.7.0. Default 50.
    pub max_connections_per_ip: usize,
    /// Simultaneous inbound connections in total. Default 1000.
    pub max_connections: usize,
    /// Seconds `serve` waits on SIGTERM for open transactions to finish. Default 30.
    pub shutdown_grace_secs: u64,
    /// Most `Received:` fields a message may carry; more means a mail loop and gets
    /// 554 5.4.6 (RFC 5321 §6.3). Default 50, as Postfix's hopcount_limit.
    pub max_hops: usize,
}

impl Default for Server {
    fn default() -> Self {
        Self {
            hostname: "localhost".into(),
            spool_dir: PathBuf::from("./data"),
            tls_cert: None,
            tls_key: None,
            max_message_size: 26_214_400,
            max_recipients: 1000,
            max_line_length: 2048,
            max_errors: 20,
            spool_cache_mb: 64,
            spool_min_free_mb: 100,
            idle_timeout_secs: 300,
            max_connections_per_ip: 50,
            max_connections: 1000,
            shutdown_grace_secs: 30,
            max_hops: 50,
        }
    }
}

/// What a listener is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ListenerMode {
    /// Port-25 style: local domains from anyone, relaying only for trusted senders.
    Relay,
    /// Port 587: STARTTLS then AUTH required before MAIL.
    Submission,
    /// Port 465: implicit TLS from the first byte, AUTH required before MAIL.
    Submissions,
}

/// `[[listener]]`: one SMTP listening socket.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listener {
    /// Address and port to bind, e.g. `"127.0.0.1:2525"`. Required.
    pub address: SocketAddr,
    /// `relay` (default), `submission` or `submissions`.
    #[serde(default = "default_mode")]
    pub mode: ListenerMode,
}

fn default_mode() -> ListenerMode {
    ListenerMode::Relay
}

/// `[relay]`: the anti-open-relay rules.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Relay {
    /// Domains we accept mail for from anyone. Default: none.
    pub local_domains: Vec<String>,
    /// Client networks that may relay to any domain, e.g. `"127.0.0.1/32"`. Default: none.
    pub trusted_networks: Vec<Cidr>,
    /// SHA-256 fingerprints (hex, colons optional) of TLS client certificates that may relay,
    /// the way Microsoft 365 / Google Workspace connectors authenticate. Default: none.
    pub client_cert_fingerprints: Vec<String>,
    /// Where mail to `<postmaster>` (and `postmaster@` our hostname) goes, which RFC 5321
    /// §4.5.1 says must always be accepted. Default: `postmaster@` the first local domain, or
    /// `postmaster@hostname` by MX when there is none.
    pub postmaster: Option<String>,
}

/// `[[user]]`: an SMTP AUTH account.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct User {
    /// Login name (often an address). Required.
    pub name: String,
    /// Argon2 PHC string from `sealpost users hash`. Required; plaintext is never stored.
    pub password_hash: String,
}

/// `[dns]`: resolver settings.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Dns {
    /// Nameservers as `ip:port`. Default: none, meaning the system resolver configuration.
    pub nameservers: Vec<SocketAddr>,
}

/// `[outbound]`: delivery to other servers.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Outbound {
    /// TCP port used to reach MX hosts. Default 25; tests point it elsewhere.
    pub smtp_port: u16,
    /// Name sent in EHLO. Default: `server.hostname`.
    pub helo_name: Option<String>,
    /// Local address to bind outgoing connections to. Default: none (kernel chooses).
    pub source_address: Option<IpAddr>,
    /// Seconds to wait for a TCP connection. Default 30.
    pub connect_timeout_secs: u64,
    /// Seconds to wait for a reply to a command. Default 300 (RFC 5321 §4.5.3.2).
    pub command_timeout_secs: u64,
    /// Seconds to wait for the reply after the final dot. Default 600.
    pub data_timeout_secs: u64,
    /// Deliveries in flight at once. Default 100.
    pub concurrency: usize,
    /// PEM file of extra CA certificates trusted for verified TLS, besides the webpki roots
    /// (a private CA; tests). Default: none.
    pub extra_ca_file: Option<PathBuf>,
    /// SHA-256 fingerprints (hex, colons optional) of server certificates accepted for
    /// verified TLS whatever their chain or name (partners with private certificates).
    /// Default: none.
    pub tls_pins: Vec<String>,
}

impl Default for Outbound {
    fn default() -> Self {
        Self {
            smtp_port: 25,
            helo_name: None,
            source_address: None,
            connect_timeout_secs: 30,
            command_timeout_secs: 300,
            data_timeout_secs: 600,
            concurrency: 100,
            extra_ca_file: None,
            tls_pins: Vec::new(),
        }
    }
}

/// `[[route]]`: a static next hop for one domain.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// Recipient domain this route applies to (exact, case-insensitive). Required.
    pub domain: String,
    /// Host name or IP to connect to. Required.
    pub host: String,
    /// Port. Default 25.
    #[serde(default = "default_smtp_port")]
    pub port: u16,
}

fn default_smtp_port() -> u16 {
    25
}

/// `[queue]`: retry and bounce behaviour.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Queue {
    /// Seconds after which an undeliverable message is bounced. Default 432000 (5 days).
    pub max_age_secs: u64,
    /// First retry delay in seconds; later ones grow with the message's age. Default 300.
    pub min_retry_secs: u64,
    /// Longest retry delay in seconds. Default 3600.
    pub max_retry_secs: u64,
    /// What a failure DSN returns when the sender gave no RET: `"headers"` (default: safer
    /// for health data) or `"full"`.
    pub default_ret: DefaultRet,
}

impl Default for Queue {
    fn default() -> Self {
        Self {
            max_age_secs: 5 * 86_400,
            min_retry_secs: 300,
            max_retry_secs: 3600,
            default_ret: DefaultRet::Headers,
        }
    }
}

/// Which part of the original a DSN carries when the sender did not say.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DefaultRet {
    /// Only the original headers (`text/rfc822-headers`).
    Headers,
    /// The whole original message (`message/rfc822`).
    Full,
}

/// An IP network in CIDR notation, parsed at load time so a bad one is a config error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// The prefix length; 0 means every address of its family.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// True when `ip` lies in this network. IPv4-mapped IPv6 clients match IPv4 networks.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

impl TryFrom<String> for Cidr {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        let (a, p) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s.as_str(), None),
        };
        let addr: IpAddr = a
            .parse()
            .map_err(|_| format!("bad network address {s:?}"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match p {
            Some(p) => p
                .parse::<u8>()
                .map_err(|_| format!("bad prefix in {s:?}"))?,
            None => max,
        };
        if prefix > max {
            return Err(format!("prefix /{prefix} too long in {s:?}"));
        }
        Ok(Self { addr, prefix })
    }
}

impl Config {
    /// Resolves a path from the config file against the file's directory.
    pub fn resolve_path(&self, p: &std::path::Path) -> PathBuf {
        match &self.base_dir {
            Some(base) if p.is_relative() => base.join(p),
            _ => p.to_path_buf(),
        }
    }

    /// The policy file, resolved.
    pub fn policy_file(&self) -> Option<PathBuf> {
        self.policy.file.as_deref().map(|p| self.resolve_path(p))
    }

    /// The key store directory, resolved.
    pub fn keys_dir(&self) -> PathBuf {
        match &self.keys.dir {
            Some(d) => self.resolve_path(d),
            None => self.server.spool_dir.join("keys"),
        }
    }

    /// The audit log file, resolved: `[audit] file`, else `spool_dir/audit.jsonl`. None when
    /// `[audit] enabled = false`.
    pub fn audit_file(&self) -> Option<PathBuf> {
        if !self.audit.enabled {
            return None;
        }
        Some(match &self.audit.file {
            Some(f) => self.resolve_path(f),
            None => self.server.spool_dir.join("audit.jsonl"),
        })
    }

    /// Cross-field checks serde cannot express. Returns the problem as text.
    pub(super) fn validate(&self) -> Result<(), Problem> {
        let bad = |key: &'static str, message: String| {
            Err(Problem {
                key,
                value: None,
                message,
            })
        };
        let s = &self.server;
        if s.hostname.is_empty() || s.hostname.contains(char::is_whitespace) {
            return bad("hostname", "server.hostname must be a host name".into());
        }
        if s.tls_cert.is_some() != s.tls_key.is_some() {
            return bad(
                "tls_cert",
                "server.tls_cert and server.tls_key must be set together".into(),
            );
        }
        for (key, path) in [("tls_cert", &s.tls_cert), ("tls_key", &s.tls_key)] {
            if let Some(p) = path
                && !self.resolve_path(p).is_file()
            {
                return bad(
                    key,
                    format!("server.{key}: {} is not a readable file", p.display()),
                );
            }
        }
        for (key, v, min) in [
            ("max_message_size", s.max_message_size, 1),
            ("max_recipients", s.max_recipients as u64, 1),
            ("max_line_length", s.max_line_length as u64, 512),
            ("idle_timeout_secs", s.idle_timeout_secs, 1),
            ("max_connections_per_ip", s.max_connections_per_ip as u64, 1),
            ("max_connections", s.max_connections as u64, 1),
            ("max_hops", s.max_hops as u64, 1),
        ] {
            if v < min {
                return bad(key, format!("server.{key} must be at least {min}"));
            }
        }
        let api = &self.api;
        if api.tls_cert.is_some() != api.tls_key.is_some() {
            return bad(
                "tls_cert",
                "api.tls_cert and api.tls_key must be set together".into(),
            );
        }
        for (key, path) in [("tls_cert", &api.tls_cert), ("tls_key", &api.tls_key)] {
            if let Some(p) = path
                && !self.resolve_path(p).is_file()
            {
                return bad(
                    key,
                    format!("api.{key}: {} is not a readable file", p.display()),
                );
            }
        }
        if api.token_ttl_secs < 1 {
            return bad(
                "token_ttl_secs",
                "api.token_ttl_secs must be at least 1".into(),
            );
        }
        if api.max_auth_failures_per_minute < 1 {
            return bad(
                "max_auth_failures_per_minute",
                "api.max_auth_failures_per_minute must be at least 1".into(),
            );
        }
        super::events::validate(&self.events, &self.webhook)?;
        if self.listener.is_empty() {
            return bad("listener", "at least one [[listener]] is needed".into());
        }
        let needs_users = self.listener.iter().any(|l| l.mode != ListenerMode::Relay);
        if needs_users && self.user.is_empty() {
            return bad(
                "mode",
                "a submission/submissions listener needs at least one [[user]]".into(),
            );
        }
        for u in &self.user {
            if let Err(e) = argon2::PasswordHash::new(&u.password_hash) {
                return bad(
                    "password_hash",
                    format!("user {:?}: password_hash is not a PHC hash: {e}", u.name),
                );
            }
        }
        for f in &self.relay.client_cert_fingerprints {
            if crate::config::parse_fingerprint(f).is_none() {
                return bad(
                    "client_cert_fingerprints",
                    format!("relay.client_cert_fingerprints: {f:?} is not SHA-256 hex"),
                );
            }
        }
        for f in &self.outbound.tls_pins {
            if crate::config::parse_fingerprint(f).is_none() {
                return bad(
                    "tls_pins",
                    format!("outbound.tls_pins: {f:?} is not SHA-256 hex"),
                );
            }
        }
        if self.outbound.concurrency == 0 {
            return bad("concurrency", "outbound.concurrency must be >= 1".into());
        }
        if self.queue.min_retry_secs == 0 || self.queue.min_retry_secs > self.queue.max_retry_secs {
            return bad(
                "min_retry_secs",
                "queue.min_retry_secs must be >= 1 and <= max_retry_secs".into(),
            );
        }
        if self.queue.max_age_secs == 0 {
            return bad("max_age_secs", "queue.max_age_secs must be >= 1".into());
        }
        super::egress::validate(&self.source, &self.pool, &self.class, &self.shaping)?;
        for (i, l) in self.listener.iter().enumerate() {
            if l.address.port() != 0 && self.listener[..i].iter().any(|o| o.address == l.address) {
                return bad(
                    "address",
                    format!("two [[listener]]s on {}: each address:port once", l.address),
                );
            }
        }
        for d in &self.dkim {
            if !crate::crypto::dkim::valid_dns_labels(&d.domain) {
                return Err(Problem {
                    key: "domain",
                    value: Some(d.domain.clone()),
                    message: format!("[[dkim]] domain {:?} is not a domain name", d.domain),
                });
            }
            if !crate::crypto::dkim::valid_dns_labels(&d.selector) {
                return Err(Problem {
                    key: "selector",
                    value: Some(d.selector.clone()),
                    message: format!(
                        "[[dkim]] selector {:?}: dot-separated labels of letters, digits, - and _",
                        d.selector
                    ),
                });
            }
        }
        let domains = [
            ("local_domains", &self.relay.local_domains),
            ("feedback_domains", &self.suppression.feedback_domains),
        ];
        for (key, list) in domains {
            for d in list {
                if crate::smtp::address::Domain::parse(d.trim_end_matches('.'), true).is_err() {
                    return bad(key, format!("{key}: {d:?} is not a domain name"));
                }
            }
        }
        for r in &self.route {
            if crate::smtp::address::Domain::parse(r.domain.trim_end_matches('.'), true).is_err() {
                return bad(
                    "domain",
                    format!("[[route]] domain {:?} is not a domain name", r.domain),
                );
            }
        }
        if self.route.iter().any(|r| r.port == 0 || r.host.is_empty()) {
            return bad(
                "port",
                "[[route]] needs a host and a port from 1 to 65535".into(),
            );
        }
        Ok(())
    }

    /// Settings that are valid but probably not what the admin wants, one sentence each
    /// (`check-config` prints them as warnings; the server starts anyway).
    pub fn warnings(&self) -> Vec<String> {
        let mut w = Vec::new();
        if self.relay.trusted_networks.iter().any(|n| n.prefix() == 0) {
            w.push(
                "[relay] trusted_networks contains a /0 network: every client may relay to any domain (an open relay)"
                    .to_string(),
            );
        }
        for d in &self.suppression.feedback_domains {
            if !self.is_local_domain(d.trim_end_matches('.')) {
                w.push(format!(
                    "[suppression] feedback domain {d:?} is not in [relay] local_domains: strangers' DSNs to it will be refused with 550 5.7.1"
                ));
            }
        }
        if let Some(addr) = self.api.address
            && !addr.ip().is_loopback()
            && self.api.tls_cert.is_none()
        {
            w.push(format!(
                "[api] address {addr} is not loopback and has no tls_cert: client secrets and tokens cross the network in clear"
            ));
        }
        for h in &self.webhook {
            if let Ok(url) = reqwest::Url::parse(&h.url)
                && url.scheme() == "http"
                && !is_loopback_host(url.host_str().unwrap_or_default())
            {
                w.push(format!(
                    "[[webhook]] url {} is plain http off loopback: events (addresses, replies) cross the network in clear",
                    h.url
                ));
            }
        }
        w
    }

    /// Local domains, lowercased, for matching recipients.
    pub fn is_local_domain(&self, domain: &str) -> bool {
        self.relay
            .local_domains
            .iter()
            .any(|d| d.eq_ignore_ascii_case(domain))
    }
}

/// `localhost` or a loopback IP literal (brackets around IPv6 allowed).
fn is_loopback_host(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// A value that parsed but makes no sense, with the key to point the admin at.
#[derive(Debug)]
pub(super) struct Problem {
    /// The key whose first occurrence in the file gives the line number.
    pub key: &'static str,
    /// A value that pins the line better: the last `key = ...` line mentioning it is used
    /// (so a name defined twice points at the second definition).
    pub value: Option<String>,
    /// What is wrong.
    pub message: String,
}

/// Parses a SHA-256 fingerprint written as 64 hex digits, with or without colons.
pub fn parse_fingerprint(s: &str) -> Option<[u8; 32]> {
    let clean: String = s.chars().filter(|c| *c != ':').collect();
    let bytes = hex::decode(clean).ok()?;
    bytes.try_into().ok()
}
