//! Egress: ready queues per (source, destination site, transport), connection workers that
//! reuse each connection for many messages, and the shaping that paces them.
//!
//! The queue submits a [`Job`] (one message's recipients at one domain). Egress resolves the
//! domain to a [`site::Site`], picks a source from the class's pool (weighted, skipping
//! sources at their warm-up cap), and files the job on that path's ready queue. Each path
//! opens connections up to its limits; a worker delivers job after job on its connection
//! (RSET between), at the path's and source's message rates. A job that would have to wait
//! long (rate, warm-up cap, back-off after "slow down") is handed back unattempted with the
//! time to come back, so nothing waits in memory for minutes and limits delay mail without
//! ever refusing it.

mod job;
pub mod site;
mod worker;

pub use job::{Job, JobContent, JobDone, JobReport};

use super::OutboundConfig;
use super::shaping::{self, Gcra, Limits};
use crate::config::{self, Config, DEFAULT_POOL, DEFAULT_SOURCE, Shaping};
use crate::dns::Resolver;
use crate::policy::TransportRequirement;
use crate::queue::Clock;
use crate::smtp::reply::{EnhancedStatus, Reply};
use crate::spool::KvTree;
use site::{Site, SiteCache};
use std::cmp::Reverse;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;

/// Longest a job may wait in a ready queue for its turn under a rate limit; a job that
/// would wait longer goes back to the spool with the time it may come back.
const RATE_HORIZON_MS: u64 = 30_000;

/// One egress source as egress uses it.
#[derive(Debug, Clone)]
pub struct SourceSpec {
    /// Name for logs, metrics and the warm-up counters.
    pub name: String,
    /// Local address to bind.
    pub address: Option<IpAddr>,
    /// EHLO name.
    pub helo_name: String,
    /// Connections from this source to all sites together.
    pub max_connections: Option<usize>,
    /// Message rate of the source over all sites.
    pub message_rate: Option<(config::Rate, u32)>,
    /// The configured source (warm-up schedule).
    pub config: config::Source,
}

/// Sources, pools, shaping and the global connection cap.
#[derive(Debug, Clone)]
pub struct EgressSettings {
    /// Every source; index = position.
    pub sources: Vec<SourceSpec>,
    /// Pool name -> (source index, weight).
    pub pools: HashMap<String, Vec<(usize, u32)>>,
    /// Class name -> pool name.
    pub class_pools: HashMap<String, String>,
    /// Per-site limits.
    pub shaping: Shaping,
    /// Outbound connections open at once, over everything (`[outbound] concurrency`).
    pub max_connections: usize,
}

impl EgressSettings {
    /// Builds the settings from the config: without `[[source]]` one implicit `default`
    /// source (`[outbound] source_address`, `helo_name`); the implicit `default` pool holds
    /// every source with weight 1.
    pub fn from_config(c: &Config) -> Self {
        let helo = c
            .outbound
            .helo_name
            .clone()
            .unwrap_or_else(|| c.server.hostname.clone());
        let mut sources: Vec<SourceSpec> = c
            .source
            .iter()
            .map(|s| SourceSpec {
                name: s.name.clone(),
                address: s.address,
                helo_name: s.ehlo_name.clone().unwrap_or_else(|| helo.clone()),
                max_connections: s.max_connections,
                message_rate: s.message_rate.map(|r| (r, s.message_burst)),
                config: s.clone(),
            })
            .collect();
        if sources.is_empty() {
            sources.push(SourceSpec {
                name: DEFAULT_SOURCE.into(),
                address: c.outbound.source_address,
                helo_name: helo,
                max_connections: None,
                message_rate: None,
                config: config::Source {
                    name: DEFAULT_SOURCE.into(),
                    address: c.outbound.source_address,
                    ehlo_name: None,
                    max_connections: None,
                    message_rate: None,
                    message_burst: 1,
                    warmup: Vec::new(),
                    warmup_start: None,
                },
            });
        }
        let index = |name: &str| sources.iter().position(|s| s.name == name);
        let mut pools: HashMap<String, Vec<(usize, u32)>> = c
            .pool
            .iter()
            .map(|p| {
                let members = p
                    .sources
                    .members()
                    .into_iter()
                    .filter_map(|(n, w)| index(&n).map(|i| (i, w)))
                    .collect();
                (p.name.clone(), members)
            })
            .collect();
        pools
            .entry(DEFAULT_POOL.into())
            .or_insert_with(|| (0..sources.len()).map(|i| (i, 1)).collect());
        let class_pools = c
            .class
            .iter()
            .map(|k| (k.name.clone(), k.pool.clone()))
            .collect();
        Self {
            sources,
            pools,
            class_pools,
            shaping: c.shaping.clone(),
            max_connections: c.outbound.concurrency.max(1),
        }
    }
}

/// What a path's ready queue looks like now, for metrics and tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathSnapshot {
    /// Source name.
    pub source: String,
    /// Site key.
    pub site: String,
    /// Jobs waiting for a connection.
    pub queued: usize,
    /// Connections open.
    pub connections: usize,
}

/// The egress machinery; one per server, shared by the queue.
pub struct Egress {
    settings: EgressSettings,
    outbound: Arc<OutboundConfig>,
    resolver: Arc<Resolver>,
    clock: Arc<dyn Clock>,
    sites: SiteCache,
    state: Mutex<State>,
    /// Per-source sent-today counters survive restarts here (warm-up caps).
    warmup_store: Option<Arc<dyn KvTree>>,
    /// A monotonic origin for the sub-second pacing (independent of the queue clock).
    epoch: Instant,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct PathKey {
    source: usize,
    site: String,
    transport: TransportRequirement,
}

struct Path {
    site: Arc<Site>,
    limits: Limits,
    /// Jobs by priority (highest first), FIFO within a priority.
    queue: BTreeMap<Reverse<i32>, VecDeque<Job>>,
    queued: usize,
    connections: usize,
    /// Workers waiting for a job on an open connection.
    idle: usize,
    wake: Arc<Notify>,
    msg_rate: Option<Gcra>,
    conn_rate: Option<Gcra>,
    /// Monotonic ms until which the site is left alone, and the unix second of its end.
    backoff: Option<(u64, u64)>,
    /// A dispatch is scheduled for when the connection rate allows.
    timer_armed: bool,
}

struct SourceState {
    connections: usize,
    msg_rate: Option<Gcra>,
    /// UTC day of `sent`.
    day: u64,
    sent: u64,
}

struct State {
    paths: HashMap<PathKey, Path>,
    sources: Vec<SourceState>,
    connections: usize,
}

impl Egress {
    /// Builds egress; `warmup_store` keeps warm-up counters across restarts.
    pub fn new(
        settings: EgressSettings,
        outbound: Arc<OutboundConfig>,
        resolver: Arc<Resolver>,
        clock: Arc<dyn Clock>,
        warmup_store: Option<Arc<dyn KvTree>>,
    ) -> Arc<Self> {
        let sources = settings
            .sources
            .iter()
            .map(|s| SourceState {
                connections: 0,
                msg_rate: s.message_rate.map(|(r, b)| Gcra::new(r, b)),
                day: 0,
                sent: 0,
            })
            .collect();
        Arc::new(Self {
            settings,
            outbound,
            resolver,
            clock,
            sites: SiteCache::default(),
            state: Mutex::new(State {
                paths: HashMap::new(),
                sources,
                connections: 0,
            }),
            warmup_store,
            epoch: Instant::now(),
        })
    }

    /// The outbound client settings (timeouts, TLS configs).
    pub fn outbound(&self) -> &Arc<OutboundConfig> {
        &self.outbound
    }

    /// Files a job: resolves its site, picks a source, queues it and opens connections as
    /// the limits allow. Every job is finished exactly once, delivered or not.
    pub async fn submit(self: &Arc<Self>, job: Job) {
        let now = self.clock.now();
        let site = match self
            .sites
            .site_for(&self.outbound, &self.resolver, &job.domain, now)
            .await
        {
            Ok(s) => s,
            Err(e) => {
                tracing::info!(queue_id = %job.id, domain = %job.domain, error = %e, "cannot resolve destination");
                let reply = e.to_reply();
                let outcome = if reply.is_permanent() {
                    super::RcptOutcome::Failed {
                        reply,
                        remote: None,
                    }
                } else {
                    super::RcptOutcome::Deferred {
                        reply,
                        remote: None,
                    }
                };
                return job.finish_all("-", outcome);
            }
        };
        let key = {
            let mut st = self.lock();
            let source = match self.pick_source(&mut st, &job.class, now) {
                Ok(i) => i,
                Err(until) => {
                    drop(st);
                    let reply = Reply::new(
                        451,
                        EnhancedStatus::new(4, 7, 0),
                        "delayed: every source of the class's pool reached its warm-up cap today",
                    );
                    return job.delay("-", until, reply);
                }
            };
            let key = PathKey {
                source,
                site: site.key.clone(),
                transport: job.transport.clone(),
            };
            let path = st.paths.entry(key.clone()).or_insert_with(|| {
                let limits = shaping::limits_for(&self.settings.shaping, &site.hosts);
                Path {
                    msg_rate: limits.message_rate.map(|(r, b)| Gcra::new(r, b)),
                    conn_rate: limits.connection_rate.map(|(r, b)| Gcra::new(r, b)),
                    limits,
                    site: site.clone(),
                    queue: BTreeMap::new(),
                    queued: 0,
                    connections: 0,
                    idle: 0,
                    wake: Arc::new(Notify::new()),
                    backoff: None,
                    timer_armed: false,
                }
            });
            let mono = self.mono_ms();
            if let Some((until_mono, until_unix)) = path.backoff
                && until_mono > mono
            {
                drop(st);
                let reply = Reply::new(
                    451,
                    EnhancedStatus::new(4, 7, 0),
                    format!("delayed: {} asked us to slow down; backing off", site.key),
                );
                return job.delay(&self.settings.sources[source].name, until_unix, reply);
            }
            if let Some(rate) = &path.msg_rate {
                // Where would this job be in the pacing schedule?
                let ahead = path.queued as u64 + 1;
                let wait = rate.wait(mono) + ahead.saturating_sub(1) * rate.interval_ms();
                if wait > RATE_HORIZON_MS {
                    drop(st);
                    let reply = Reply::new(
                        451,
                        EnhancedStatus::new(4, 7, 0),
                        format!("delayed: message rate limit for {}", site.key),
                    );
                    let until = now + wait.div_ceil(1000);
                    return job.delay(&self.settings.sources[source].name, until, reply);
                }
            }
            path.queue
                .entry(Reverse(job.priority))
                .or_default()
                .push_back(job);
            path.queued += 1;
            key
        };
        self.dispatch(&key);
    }

    /// Opens as many connections for `key` as its jobs need and the limits allow, or wakes
    /// idle workers.
    fn dispatch(self: &Arc<Self>, key: &PathKey) {
        let mut spawn = 0;
        let mut retry_in = None;
        {
            let mut st = self.lock();
            let mono = self.mono_ms();
            let State {
                paths,
                sources,
                connections,
            } = &mut *st;
            let Some(path) = paths.get_mut(key) else {
                return;
            };
            let mut waiting = path.queued.saturating_sub(path.idle);
            // A slow message rate needs few connections: about one per 100 ms of spacing.
            let rate_cap = path
                .msg_rate
                .as_ref()
                .map_or(usize::MAX, |r| (100 / r.interval_ms()).max(1) as usize);
            for _ in 0..path.idle.min(path.queued) {
                path.wake.notify_one();
            }
            let source = &mut sources[key.source];
            let source_cap = self.settings.sources[key.source]
                .max_connections
                .unwrap_or(usize::MAX);
            while waiting > 0
                && path.connections < path.limits.max_connections.min(rate_cap)
                && source.connections < source_cap
                && *connections < self.settings.max_connections
                && path.backoff.is_none_or(|(until, _)| until <= mono)
            {
                if let Some(rate) = &mut path.conn_rate
                    && let Err(wait) = rate.take(mono)
                {
                    retry_in = Some(wait);
                    break;
                }
                path.connections += 1;
                source.connections += 1;
                *connections += 1;
                waiting -= 1;
                spawn += 1;
            }
            if retry_in.is_some() {
                if path.timer_armed {
                    retry_in = None;
                } else {
                    path.timer_armed = true;
                }
            }
        }
        for _ in 0..spawn {
            tokio::spawn(worker::run(self.clone(), key.clone()));
        }
        if let Some(wait) = retry_in {
            let me = self.clone();
            let key = key.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(wait)).await;
                if let Some(p) = me.lock().paths.get_mut(&key) {
                    p.timer_armed = false;
                }
                me.dispatch(&key);
            });
        }
    }

    /// A worker's connection closed: free its slots and let waiting paths use them.
    fn connection_closed(self: &Arc<Self>, key: &PathKey) {
        let waiting: Vec<PathKey> = {
            let mut st = self.lock();
            st.connections = st.connections.saturating_sub(1);
            if let Some(s) = st.sources.get_mut(key.source) {
                s.connections = s.connections.saturating_sub(1);
            }
            if let Some(p) = st.paths.get_mut(key) {
                p.connections = p.connections.saturating_sub(1);
            }
            // This path, and paths starved by the global or source cap, get their turn.
            st.paths
                .iter()
                .filter(|(k, p)| p.queued > p.idle && (p.connections == 0 || *k == key))
                .map(|(k, _)| k.clone())
                .collect()
        };
        self.gc(key);
        for k in waiting {
            self.dispatch(&k);
        }
    }

    /// Drops a path that holds nothing worth keeping (no jobs, no connections, no back-off).
    fn gc(&self, key: &PathKey) {
        let mono = self.mono_ms();
        let mut st = self.lock();
        let idle = st.paths.get(key).is_some_and(|p| {
            p.queued == 0
                && p.connections == 0
                && p.backoff.is_none_or(|(until, _)| until <= mono)
                && p.msg_rate.as_ref().is_none_or(|r| r.wait(mono) == 0)
        });
        if idle {
            st.paths.remove(key);
        }
    }

    /// Picks a source of the class's pool by weight among those under their warm-up cap.
    /// `Err(unix second)` when all are capped: the start of the next UTC day.
    fn pick_source(&self, st: &mut State, class: &str, now: u64) -> Result<usize, u64> {
        let pool = self
            .settings
            .class_pools
            .get(class)
            .map(String::as_str)
            .unwrap_or(DEFAULT_POOL);
        let members = self
            .settings
            .pools
            .get(pool)
            .or_else(|| self.settings.pools.get(DEFAULT_POOL))
            .cloned()
            .unwrap_or_default();
        let today = now / 86_400;
        let open: Vec<(usize, u32)> = members
            .into_iter()
            .filter(|&(i, _)| self.under_cap(st, i, today))
            .collect();
        let total: u64 = open.iter().map(|&(_, w)| u64::from(w)).sum();
        if total == 0 {
            return Err((today + 1) * 86_400);
        }
        let mut pick = rand::random_range(0..total);
        for (i, w) in open {
            if pick < u64::from(w) {
                return Ok(i);
            }
            pick -= u64::from(w);
        }
        Err((today + 1) * 86_400)
    }

    /// Whether source `i` may send another message on `today`.
    fn under_cap(&self, st: &mut State, i: usize, today: u64) -> bool {
        let Some(cap) = shaping::warmup_cap(&self.settings.sources[i].config, today) else {
            return true;
        };
        self.load_day(st, i, today);
        st.sources[i].sent < cap
    }

    /// Counts one message sent from source `i`; false (nothing counted) when the cap is
    /// reached, so the caller hands the job back.
    fn count_sent(&self, i: usize) -> bool {
        let today = self.clock.now() / 86_400;
        let mut st = self.lock();
        let cap = shaping::warmup_cap(&self.settings.sources[i].config, today);
        self.load_day(&mut st, i, today);
        let s = &mut st.sources[i];
        if cap.is_some_and(|c| s.sent >= c) {
            return false;
        }
        s.sent += 1;
        if cap.is_some()
            && let Some(store) = &self.warmup_store
        {
            let key = warmup_key(&self.settings.sources[i].name, today);
            let _ = store.insert(&key, &s.sent.to_be_bytes());
        }
        true
    }

    /// Makes `st.sources[i]` count `today`, reading the stored counter on a day change.
    fn load_day(&self, st: &mut State, i: usize, today: u64) {
        let s = &mut st.sources[i];
        if s.day == today {
            return;
        }
        s.day = today;
        s.sent = self
            .warmup_store
            .as_ref()
            .and_then(|store| {
                store
                    .get(&warmup_key(&self.settings.sources[i].name, today))
                    .ok()
                    .flatten()
            })
            .and_then(|v| v.try_into().ok().map(u64::from_be_bytes))
            .unwrap_or(0);
    }

    /// Every path's ready queue now.
    pub fn snapshot(&self) -> Vec<PathSnapshot> {
        let st = self.lock();
        let mut v: Vec<PathSnapshot> = st
            .paths
            .iter()
            .map(|(k, p)| PathSnapshot {
                source: self.settings.sources[k.source].name.clone(),
                site: k.site.clone(),
                queued: p.queued,
                connections: p.connections,
            })
            .collect();
        v.sort_by(|a, b| (&a.site, &a.source).cmp(&(&b.site, &b.source)));
        v
    }

    /// Outbound connections open now.
    pub fn open_connections(&self) -> usize {
        self.lock().connections
    }

    fn mono_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // Every critical section leaves the maps consistent before it can panic.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The warm-up counter key of a source on a day.
fn warmup_key(source: &str, day: u64) -> Vec<u8> {
    let mut k = format!("{source}/").into_bytes();
    k.extend_from_slice(&day.to_be_bytes());
    k
}
