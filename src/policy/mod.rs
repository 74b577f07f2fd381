//! The policy engine: TOML rules, probes (MX, MTA-STS, TLS history, keys), the pure `decide`
//! function and `policy explain`.

pub mod decide;
pub mod engine;
pub mod explain;
pub mod history;
pub mod mta_sts;
pub mod rules;
pub mod types;

pub use decide::{Probes, decide};
pub use explain::{Explanation, explain_json, explain_text};
pub use history::{TlsHistory, TlsLevel};
pub use mta_sts::{StsCache, StsPolicy, StsProbe};
pub use rules::{HeaderMatch, MessageContext, Policy, PolicyError, Rule};
pub use types::*;
