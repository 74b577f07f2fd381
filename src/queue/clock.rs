//! Time as a dependency, so retry and expiry can be tested by advancing a clock instead of
//! sleeping.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// A source of "now" in Unix seconds and milliseconds.
pub trait Clock: Send + Sync {
    /// Current time in Unix milliseconds.
    fn now_millis(&self) -> u64;
    /// Current time in Unix seconds.
    fn now(&self) -> u64 {
        self.now_millis() / 1000
    }
}

/// The real wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_millis(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    }
}

/// A clock that only moves when told to: integration tests drive retry and expiry with it.
#[derive(Debug)]
pub struct ManualClock {
    millis: AtomicU64,
}

impl ManualClock {
    /// A clock starting at the given Unix seconds.
    pub fn new(start_secs: u64) -> Self {
        Self {
            millis: AtomicU64::new(start_secs * 1000),
        }
    }

    /// Moves the clock forward.
    pub fn advance(&self, secs: u64) {
        self.millis.fetch_add(secs * 1000, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_millis(&self) -> u64 {
        self.millis.load(Ordering::SeqCst)
    }
}

/// Formats Unix seconds as an RFC 5322 date in UTC, for Date, Received and DSN fields.
pub fn rfc5322_date(secs: u64) -> String {
    chrono::DateTime::from_timestamp(secs as i64, 0)
        .unwrap_or_default()
        .format("%a, %d %b %Y %H:%M:%S +0000")
        .to_string()
}
