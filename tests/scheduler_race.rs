//! Regression: a message committed while the scheduler is between reading the due index and
//! moving its cursor must still be delivered. (Seen in the interop load test: 1 of 1,000
//! messages stayed `queued` forever, never attempted.)
//!
//! A spool wrapper makes the interleaving certain: during the scheduler's first due-index
//! read that finds message B, another thread commits message A, whose key sorts before B's
//! (same due second, smaller id), and waits up to 300 ms for that commit to finish.

mod common;

use common::dns::{TestDns, ZoneBuilder};
use common::harness::{self, T0};
use common::lo;
use common::sink::{Sink, SinkConfig};
use sealpost::config::Config;
use sealpost::metrics::Metrics;
use sealpost::outbound::egress::{Egress, EgressSettings};
use sealpost::queue::{Bookkeeping, Clock, ManualClock, Queue, QueueSettings};
use sealpost::spool::{DueKey, Envelope, GroupCommit, KvTree, MemorySpool, Spool, SpoolError};
use sealpost::suppression::SuppressionList;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// Forwards to a memory spool; the first `due` read that returns B commits A meanwhile.
struct RacingSpool {
    inner: MemorySpool,
    queue: OnceLock<Arc<Queue>>,
    rt: tokio::runtime::Handle,
    fired: AtomicBool,
}

impl Spool for RacingSpool {
    fn insert(&self, e: &Envelope, b: &[u8]) -> Result<(), SpoolError> {
        self.inner.insert(e, b)
    }
    fn flush(&self) -> Result<(), SpoolError> {
        self.inner.flush()
    }
    fn envelope(&self, id: &str) -> Result<Option<Envelope>, SpoolError> {
        self.inner.envelope(id)
    }
    fn body(&self, id: &str) -> Result<Option<Vec<u8>>, SpoolError> {
        self.inner.body(id)
    }
    fn update(&self, e: &Envelope) -> Result<bool, SpoolError> {
        self.inner.update(e)
    }
    fn remove(&self, id: &str) -> Result<(), SpoolError> {
        self.inner.remove(id)
    }
    fn due(
        &self,
        class: &str,
        from: &[u8],
        now: u64,
        limit: usize,
    ) -> Result<Vec<DueKey>, SpoolError> {
        let read = self.inner.due(class, from, now, limit)?;
        if read.iter().any(|k| k.id == ID_B) && !self.fired.swap(true, Ordering::SeqCst) {
            let queue = self.queue.get().expect("queue set").clone();
            let rt = self.rt.clone();
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                rt.block_on(async {
                    queue
                        .enqueue(&envelope(ID_A), BODY)
                        .await
                        .expect("enqueue A");
                });
                let _ = tx.send(());
            });
            // A correct scheduler holds its cursor while reading, so A's commit waits for it
            // and this times out; a racy one lets A finish first and then steps over it.
            let _ = rx.recv_timeout(Duration::from_millis(300));
        }
        Ok(read)
    }
    fn next_due_after(&self, class: &str, now: u64) -> Result<Option<u64>, SpoolError> {
        self.inner.next_due_after(class, now)
    }
    fn count_by_class(&self) -> Result<Vec<(String, usize)>, SpoolError> {
        self.inner.count_by_class()
    }
    fn list(&self) -> Result<Vec<Envelope>, SpoolError> {
        self.inner.list()
    }
    fn meta_get(&self, key: &str) -> Result<Option<Vec<u8>>, SpoolError> {
        self.inner.meta_get(key)
    }
    fn meta_put(&self, key: &str, value: &[u8]) -> Result<(), SpoolError> {
        self.inner.meta_put(key, value)
    }
    fn tree(&self, name: &str) -> Result<Arc<dyn KvTree>, SpoolError> {
        self.inner.tree(name)
    }
}

const ID_A: &str = "01A00000000000000001";
const ID_B: &str = "01A00000000000000002";
const BODY: &[u8] = b"From: a@example.net\r\nSubject: race\r\n\r\nhi\r\n";

fn envelope(id: &str) -> Envelope {
    harness::envelope(
        id,
        "a@example.net",
        &format!("{id}@example.com"),
        None,
        BODY.len() as u64,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_committed_during_a_due_read_is_not_skipped() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dns = TestDns::start(&ZoneBuilder::new("example.net.").build()).await;
    let sink = Sink::start(SocketAddr::new(lo(1), 0), SinkConfig::accept())
        .await
        .unwrap();
    let spool_dir = tempfile::tempdir().unwrap();
    let extra = format!(
        "[[route]]\ndomain = \"example.com\"\nhost = \"127.0.0.1\"\nport = {}\n",
        sink.addr().port()
    );
    let text = harness::config_text(spool_dir.path(), dns.addr(), 25, true, &extra);
    let config = Config::parse(&text, std::path::Path::new("test.toml")).unwrap();

    let racing = Arc::new(RacingSpool {
        inner: MemorySpool::new(),
        queue: OnceLock::new(),
        rt: tokio::runtime::Handle::current(),
        fired: AtomicBool::new(false),
    });
    let spool: Arc<dyn Spool> = racing.clone();
    let clock: Arc<dyn Clock> = Arc::new(ManualClock::new(T0));
    let resolver = Arc::new(dns.resolver());
    let engine =
        Arc::new(sealpost::server::policy_engine(&config, resolver.clone(), None).unwrap());
    let egress = Egress::new(
        EgressSettings::from_config(&config),
        Arc::new(sealpost::server::outbound_config(&config).unwrap()),
        resolver,
        clock.clone(),
        None,
    );
    let settings = QueueSettings {
        hostname: "mx.sealpost.test".into(),
        max_age_secs: 86_400,
        min_retry_secs: 300,
        max_retry_secs: 3600,
        default_ret: config.queue.default_ret,
        classes: QueueSettings::classes_from(&[]),
        suppress: true,
        feedback_domains: vec![],
        class_header: String::new(),
    };
    let books = Bookkeeping {
        events: sealpost::events::EventLog::open(
            spool.tree("events").unwrap(),
            spool.tree("events_by_message").unwrap(),
        )
        .unwrap(),
        suppressions: SuppressionList::new(spool.tree("suppression").unwrap()),
        metrics: Metrics::new(),
        dkim: Default::default(),
        on_final: None,
    };
    let queue = Queue::new(
        spool.clone(),
        GroupCommit::start(spool.clone()),
        clock,
        settings,
        egress,
        engine,
        books,
    );
    assert!(racing.queue.set(queue.clone()).is_ok());
    let (_stop, rx) = tokio::sync::watch::channel(false);
    tokio::spawn(queue.clone().run(rx, Duration::from_secs(1)));

    queue.enqueue(&envelope(ID_B), BODY).await.unwrap();
    let got = sink.wait_for(2, Duration::from_secs(10)).await;
    let mut rcpts: Vec<_> = got.iter().map(|m| m.rcpts[0].clone()).collect();
    rcpts.sort();
    assert_eq!(
        rcpts,
        [format!("{ID_A}@example.com"), format!("{ID_B}@example.com")]
    );
    assert!(racing.fired.load(Ordering::SeqCst), "the race was staged");
}
