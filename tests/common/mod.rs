//! Helpers shared by integration tests: a loopback DNS server serving zone text
//! ([`dns::TestDns`]) and a scriptable SMTP sink ([`sink::Sink`]).
//!
//! Each test binary includes this with `mod common;`; items a binary does not use are
//! allowed to be dead.

#![allow(dead_code)]

pub mod dns;
pub mod harness;
pub mod https;
pub mod pki;
pub mod sink;

use std::net::{IpAddr, Ipv4Addr};

/// `127.0.0.x`: every such address is on `lo`, so sinks can have distinct IPs.
pub fn lo(x: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, x))
}

/// Installs a tracing subscriber for test output (`RUST_LOG=debug`); safe to call twice.
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}
