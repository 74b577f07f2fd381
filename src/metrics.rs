//! Prometheus metrics: counters the queue bumps as recipients are delivered, deferred,
//! bounced or suppressed, the spool's flush latency, and gauges read at scrape time (queue
//! size per class, ready jobs and connections per egress path).
//!
//! Served as text exposition format 0.0.4 on `[metrics] address` at `GET /metrics`. The
//! endpoint has no authentication: bind it to loopback or a management network.

use crate::queue::Queue;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Upper bounds (seconds) of the flush latency buckets.
const FLUSH_BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// A recipient event the counters know.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Event {
    /// The next hop accepted it.
    Delivered,
    /// A temporary failure (or a shaping delay); it will be retried.
    Deferred,
    /// A permanent failure or expiry.
    Bounced,
    /// Failed at once because the address is on the suppression list.
    Suppressed,
}

impl Event {
    fn name(self) -> &'static str {
        match self {
            Self::Delivered => "delivered",
            Self::Deferred => "deferred",
            Self::Bounced => "bounced",
            Self::Suppressed => "suppressed",
        }
    }
}

/// Counters and histograms; one per server, shared by the queue and the spool committer.
#[derive(Default)]
pub struct Metrics {
    recipients: Mutex<BTreeMap<(Event, String), u64>>,
    accepted: AtomicU64,
    flush_buckets: [AtomicU64; FLUSH_BUCKETS.len()],
    flush_count: AtomicU64,
    flush_sum_us: AtomicU64,
}

impl Metrics {
    /// A fresh set of zeroed metrics.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Counts one recipient event in `class`.
    pub fn recipient(&self, event: Event, class: &str) {
        let mut m = self.recipients.lock().unwrap_or_else(|p| p.into_inner());
        *m.entry((event, class.to_string())).or_default() += 1;
    }

    /// Counts one message committed to the spool by a listener or the API.
    pub fn accepted(&self) {
        self.accepted.fetch_add(1, Ordering::Relaxed);
    }

    /// Records how long one spool flush took.
    pub fn observe_flush(&self, d: Duration) {
        let secs = d.as_secs_f64();
        for (i, bound) in FLUSH_BUCKETS.iter().enumerate() {
            if secs <= *bound {
                self.flush_buckets[i].fetch_add(1, Ordering::Relaxed);
            }
        }
        self.flush_count.fetch_add(1, Ordering::Relaxed);
        self.flush_sum_us
            .fetch_add(d.as_micros() as u64, Ordering::Relaxed);
    }

    /// The counter value for `event` in `class` (tests, admin).
    pub fn recipient_count(&self, event: Event, class: &str) -> u64 {
        let m = self.recipients.lock().unwrap_or_else(|p| p.into_inner());
        m.get(&(event, class.to_string())).copied().unwrap_or(0)
    }

    /// The exposition text: counters here plus gauges read from `queue` now.
    pub fn render(&self, queue: &Queue) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP sealpost_recipients_total Recipient outcomes by traffic class."
        );
        let _ = writeln!(out, "# TYPE sealpost_recipients_total counter");
        {
            let m = self.recipients.lock().unwrap_or_else(|p| p.into_inner());
            for ((event, class), n) in m.iter() {
                let _ = writeln!(
                    out,
                    "sealpost_recipients_total{{event=\"{}\",class=\"{}\"}} {n}",
                    event.name(),
                    label(class)
                );
            }
        }
        let _ = writeln!(
            out,
            "# HELP sealpost_messages_accepted_total Messages committed to the spool."
        );
        let _ = writeln!(out, "# TYPE sealpost_messages_accepted_total counter");
        let _ = writeln!(
            out,
            "sealpost_messages_accepted_total {}",
            self.accepted.load(Ordering::Relaxed)
        );

        let _ = writeln!(
            out,
            "# HELP sealpost_queue_messages Messages in the spool by traffic class."
        );
        let _ = writeln!(out, "# TYPE sealpost_queue_messages gauge");
        if let Ok(counts) = queue.spool().count_by_class() {
            // Every configured class, 0 when empty (a vanishing series breaks alerts).
            let mut all: BTreeMap<String, usize> = queue
                .in_flight_by_class()
                .into_iter()
                .map(|(c, _)| (c, 0))
                .collect();
            all.extend(counts);
            for (class, n) in all {
                let _ = writeln!(
                    out,
                    "sealpost_queue_messages{{class=\"{}\"}} {n}",
                    label(&class)
                );
            }
        }
        let _ = writeln!(
            out,
            "# HELP sealpost_queue_in_flight Messages with a delivery attempt running, by class."
        );
        let _ = writeln!(out, "# TYPE sealpost_queue_in_flight gauge");
        for (class, n) in queue.in_flight_by_class() {
            let _ = writeln!(
                out,
                "sealpost_queue_in_flight{{class=\"{}\"}} {n}",
                label(&class)
            );
        }
        let paths = queue.egress().snapshot();
        let _ = writeln!(
            out,
            "# HELP sealpost_ready_jobs Jobs waiting for a connection per egress source and destination site."
        );
        let _ = writeln!(out, "# TYPE sealpost_ready_jobs gauge");
        for p in &paths {
            let _ = writeln!(
                out,
                "sealpost_ready_jobs{{source=\"{}\",site=\"{}\"}} {}",
                label(&p.source),
                label(&p.site),
                p.queued
            );
        }
        let _ = writeln!(
            out,
            "# HELP sealpost_path_connections Open connections per egress source and destination site."
        );
        let _ = writeln!(out, "# TYPE sealpost_path_connections gauge");
        for p in &paths {
            let _ = writeln!(
                out,
                "sealpost_path_connections{{source=\"{}\",site=\"{}\"}} {}",
                label(&p.source),
                label(&p.site),
                p.connections
            );
        }
        let _ = writeln!(
            out,
            "# HELP sealpost_open_connections Outbound SMTP connections open."
        );
        let _ = writeln!(out, "# TYPE sealpost_open_connections gauge");
        let _ = writeln!(
            out,
            "sealpost_open_connections {}",
            queue.egress().open_connections()
        );

        let _ = writeln!(
            out,
            "# HELP sealpost_spool_flush_seconds Time to make spool writes durable (one flush serves many writers)."
        );
        let _ = writeln!(out, "# TYPE sealpost_spool_flush_seconds histogram");
        for (i, bound) in FLUSH_BUCKETS.iter().enumerate() {
            let _ = writeln!(
                out,
                "sealpost_spool_flush_seconds_bucket{{le=\"{bound}\"}} {}",
                self.flush_buckets[i].load(Ordering::Relaxed)
            );
        }
        let count = self.flush_count.load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "sealpost_spool_flush_seconds_bucket{{le=\"+Inf\"}} {count}"
        );
        let sum = self.flush_sum_us.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "sealpost_spool_flush_seconds_sum {sum}");
        let _ = writeln!(out, "sealpost_spool_flush_seconds_count {count}");
        out
    }
}

/// Escapes a label value (backslash, quote, newline).
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Serves `GET /metrics` until `shutdown` turns true. One request per connection.
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    queue: Arc<Queue>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let stream = tokio::select! {
            a = listener.accept() => match a { Ok((s, _)) => s, Err(_) => continue },
            _ = shutdown.changed() => if *shutdown.borrow() { break } else { continue },
        };
        let (m, q) = (metrics.clone(), queue.clone());
        tokio::spawn(async move {
            let _ = tokio::time::timeout(Duration::from_secs(10), answer(stream, &m, &q)).await;
        });
    }
}

async fn answer(mut stream: tokio::net::TcpStream, m: &Metrics, q: &Queue) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && !buf.windows(2).any(|w| w == b"\n\n") {
        let n = stream.read(&mut chunk).await?;
        if n == 0 || buf.len() > 16 * 1024 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let line = buf.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let (status, ctype, body) = match (method, path.split('?').next().unwrap_or("")) {
        ("GET", "/metrics") => (
            "200 OK",
            "text/plain; version=0.0.4; charset=utf-8",
            m.render(q),
        ),
        ("GET", _) => (
            "404 Not Found",
            "text/plain",
            "not found: try /metrics\n".into(),
        ),
        _ => ("405 Method Not Allowed", "text/plain", "only GET\n".into()),
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flush_histogram_is_cumulative() {
        let m = Metrics::default();
        m.observe_flush(Duration::from_micros(700));
        m.observe_flush(Duration::from_millis(30));
        let at = |b: f64| {
            let i = FLUSH_BUCKETS.iter().position(|&x| x == b).unwrap();
            m.flush_buckets[i].load(Ordering::Relaxed)
        };
        assert_eq!(
            (at(0.0005), at(0.001), at(0.025), at(0.05), at(2.5)),
            (0, 1, 1, 2, 2)
        );
        assert_eq!(m.flush_count.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn labels_are_escaped() {
        assert_eq!(label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
