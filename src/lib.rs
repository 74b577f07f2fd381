//! Sealpost: an SMTP mail transfer agent with policy-driven, per-recipient encryption.
//!
//! See `DESIGN.md` in the shared docs for the module map. The binary in `main.rs` is a thin
//! CLI over this library.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod admin;
pub mod api;
pub mod audit;
pub mod config;
pub mod crypto;
pub mod dns;
pub mod events;
pub mod inbound;
pub mod metrics;
pub mod outbound;
pub mod policy;
pub mod queue;
pub mod server;
pub mod smtp;
pub mod spool;
pub mod suppression;
