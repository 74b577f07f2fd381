//! The policy engine: TOML rules, probes (MX, MTA-STS, TLS history, keys), the pure `decide`
//! function and `policy explain`.

pub mod types;

pub use types::*;
