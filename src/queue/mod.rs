//! The queue: schedules delivery attempts for spooled messages, records per-recipient
//! results, retries by age with jitter, expires old mail and generates DSNs.

mod attempt;
pub mod bounce;
pub mod class;
pub mod clock;
pub mod dsn;
pub mod feedback;
mod plan;
mod report;
pub mod retry;
mod scheduler;
mod screen;
pub mod transform;

pub use clock::{Clock, ManualClock, SystemClock};
pub use scheduler::{Bookkeeping, ClassSettings, FinalHook, Queue, QueueSettings};

pub use crate::smtp::params::xtext_encode;
