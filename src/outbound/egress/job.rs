//! What the queue hands to egress: one message's recipients at one destination with one
//! transport requirement, and the way back for the results.

use super::super::{DeliveryReport, OutRecipient, RcptOutcome};
use crate::policy::TransportRequirement;
use crate::smtp::reply::Reply;
use std::sync::Arc;

/// Produces the exact bytes to send when a connection is ready for the job: the body read
/// from the spool, the encryption transform, DKIM. Bodies are never held while a job waits.
pub trait JobContent: Send + Sync {
    /// The bytes to send, or the reply every recipient of the job gets when they cannot be
    /// produced (e.g. `451 4.7.0 OpenPGP encryption failed`).
    fn load(&self) -> Result<Vec<u8>, Reply>;

    /// True when [`JobContent::load`] takes at most a few hundred microseconds (a read of
    /// stored bytes, or a transform of a small message): the worker then calls it on its own
    /// thread instead of handing it to the blocking pool, which saves two thread handoffs per
    /// message and the wait for a busy machine to schedule them. Default false: unknown
    /// content is assumed to be work that must not stall the runtime.
    fn is_cheap(&self) -> bool {
        false
    }
}

/// Bytes already in memory (DSN tests, tools).
impl JobContent for Vec<u8> {
    fn load(&self) -> Result<Vec<u8>, Reply> {
        Ok(self.clone())
    }

    fn is_cheap(&self) -> bool {
        true
    }
}

/// Called once with the job's results.
pub type JobDone = Box<dyn FnOnce(JobReport) + Send>;

/// One message's recipients at one domain, travelling together.
pub struct Job {
    /// Queue id, for logs.
    pub id: String,
    /// Traffic class: picks the pool, and the priority on shared connections.
    pub class: String,
    /// Higher goes first on a connection shared by several classes.
    pub priority: i32,
    /// The recipients' domain.
    pub domain: String,
    /// Reverse path (empty for `<>`).
    pub mail_from: String,
    /// The recipients; outcomes come back in this order.
    pub recipients: Vec<OutRecipient>,
    /// DSN ENVID in wire form.
    pub envid: Option<String>,
    /// DSN RET in wire form.
    pub ret: Option<String>,
    /// Needs SMTPUTF8.
    pub smtputf8: bool,
    /// Declared 8BITMIME.
    pub eight_bit: bool,
    /// What the transport must guarantee.
    pub transport: TransportRequirement,
    /// The bytes, produced at send time.
    pub content: Arc<dyn JobContent>,
    /// Where the results go.
    pub done: JobDone,
    /// Set by egress when the job was put back once after a reused connection broke before
    /// it was tried; a second break counts as a failed attempt.
    pub retried: bool,
}

/// The results of a job.
pub struct JobReport {
    /// Per-recipient outcomes, TLS parameters, whether the remote had DSN.
    pub report: DeliveryReport,
    /// The egress source used (or chosen, for a delay).
    pub source: String,
    /// `Some(unix seconds)` when shaping held the job back (warm-up cap, back-off, rate):
    /// no delivery was attempted, and the message should come back at that time.
    pub delayed_until: Option<u64>,
}

impl Job {
    /// Sends the results.
    pub fn finish(self, report: JobReport) {
        (self.done)(report);
    }

    /// Finishes every recipient with one outcome.
    pub fn finish_all(self, source: &str, outcome: RcptOutcome) {
        let n = self.recipients.len();
        let source = source.to_string();
        self.finish(JobReport {
            report: DeliveryReport::all(n, outcome),
            source,
            delayed_until: None,
        });
    }

    /// Hands the job back unattempted: shaping wants it later, at `until` (unix seconds).
    pub fn delay(self, source: &str, until: u64, reply: Reply) {
        let n = self.recipients.len();
        let source = source.to_string();
        self.finish(JobReport {
            report: DeliveryReport::all(
                n,
                RcptOutcome::Deferred {
                    reply,
                    remote: None,
                },
            ),
            source,
            delayed_until: Some(until),
        });
    }
}
