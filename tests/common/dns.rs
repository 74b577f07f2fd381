//! A real DNS server on loopback serving zones from text, for integration tests.
//!
//! Tests exercise the production resolver and lookup code against actual UDP/TCP DNS
//! answers (NXDOMAIN, NODATA, null MX, REFUSED for names outside every zone) instead of a
//! mock, so what passes here is what runs in production.
//!
//! ```ignore
//! let dns = TestDns::start(
//!     "$ORIGIN example.com.\n\
//!      @   MX 10 mx1\n\
//!      mx1 A  127.0.0.2\n",
//! ).await;
//! let resolver = dns.resolver();
//! ```

#![allow(dead_code)]

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::rr::{LowerName, RecordType, RrKey};
use hickory_proto::serialize::txt::Parser;
use hickory_server::Server;
use hickory_server::net::runtime::TokioRuntimeProvider;
use hickory_server::store::in_memory::InMemoryZoneHandler;
use hickory_server::zone_handler::{AxfrPolicy, Catalog, ZoneHandler, ZoneType};
use tokio::net::{TcpListener, UdpSocket};

/// A running test DNS server; it stops when dropped.
pub struct TestDns {
    addr: SocketAddr,
    _server: Server<Catalog>,
}

impl TestDns {
    /// Serves one zone. The text is standard zone-file syntax and must start with
    /// `$ORIGIN name.`; `$TTL 60` and an SOA are added when missing. Names in the zone
    /// without records answer NXDOMAIN; names outside it answer REFUSED (a temporary failure
    /// for delivery).
    pub async fn start(zone_text: &str) -> TestDns {
        Self::start_zones(&[zone_text]).await
    }

    /// Serves several zones (each text with its own `$ORIGIN`) from one server.
    pub async fn start_zones(zones: &[&str]) -> TestDns {
        let mut catalog = Catalog::new();
        for text in zones {
            let (origin, handler) = zone_handler(text);
            catalog.upsert(origin, vec![handler]);
        }
        let mut server = Server::new(catalog);
        let addr = bind_udp_and_tcp(&mut server).await;
        TestDns {
            addr,
            _server: server,
        }
    }

    /// The UDP and TCP address of the server.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A production resolver that asks only this server.
    pub fn resolver(&self) -> sealpost::dns::Resolver {
        sealpost::dns::build_resolver(&[self.addr]).expect("resolver for the test DNS server")
    }
}

/// Builds zone text record by record, for tests that prefer code to zone syntax.
#[derive(Debug, Clone)]
pub struct ZoneBuilder {
    text: String,
}

impl ZoneBuilder {
    /// A zone for `origin` (with or without the trailing dot).
    pub fn new(origin: &str) -> Self {
        let origin = origin.trim_end_matches('.');
        Self {
            text: format!("$ORIGIN {origin}.\n"),
        }
    }

    /// Adds an MX record; `name` and `exchange` are relative to the origin or absolute
    /// with a trailing dot; `@` is the origin.
    pub fn mx(mut self, name: &str, preference: u16, exchange: &str) -> Self {
        let _ = writeln!(self.text, "{name} 60 IN MX {preference} {exchange}");
        self
    }

    /// Adds the null MX (RFC 7505): `MX 0 .`.
    pub fn null_mx(self, name: &str) -> Self {
        self.mx(name, 0, ".")
    }

    /// Adds an A or AAAA record, chosen by the address family.
    pub fn addr(mut self, name: &str, ip: IpAddr) -> Self {
        let rtype = if ip.is_ipv4() { "A" } else { "AAAA" };
        let _ = writeln!(self.text, "{name} 60 IN {rtype} {ip}");
        self
    }

    /// Adds a TXT record with one string (quotes in `text` are not escaped).
    pub fn txt(mut self, name: &str, text: &str) -> Self {
        let _ = writeln!(self.text, "{name} 60 IN TXT \"{text}\"");
        self
    }

    /// Adds a raw zone-file line.
    pub fn line(mut self, line: &str) -> Self {
        self.text.push_str(line);
        self.text.push('\n');
        self
    }

    /// The zone text, for [`TestDns::start`].
    pub fn build(&self) -> String {
        self.text.clone()
    }
}

/// Parses zone text into a zone handler, adding `$TTL` and an SOA when missing.
fn zone_handler(text: &str) -> (LowerName, Arc<dyn ZoneHandler>) {
    let with_ttl = format!("$TTL 60\n{text}");
    let (origin, records) = Parser::new(with_ttl.as_str(), None, None)
        .parse()
        .unwrap_or_else(|e| panic!("bad test zone: {e}\n{text}"));
    let records = if records.contains_key(&RrKey::new(origin.clone().into(), RecordType::SOA)) {
        records
    } else {
        let full = format!(
            "$TTL 60\n$ORIGIN {origin}\n@ IN SOA ns.{origin} hostmaster.{origin} 1 3600 600 86400 60\n{text}"
        );
        Parser::new(full.as_str(), None, None)
            .parse()
            .unwrap_or_else(|e| panic!("bad test zone: {e}\n{full}"))
            .1
    };
    let handler = InMemoryZoneHandler::<TokioRuntimeProvider>::new(
        origin.clone(),
        records,
        ZoneType::Primary,
        AxfrPolicy::Deny,
    )
    .unwrap_or_else(|e| panic!("bad test zone: {e}"));
    (LowerName::new(&origin), Arc::new(handler))
}

/// Binds UDP on an ephemeral loopback port and TCP on the same port, retrying when the TCP
/// port happens to be taken.
async fn bind_udp_and_tcp(server: &mut Server<Catalog>) -> SocketAddr {
    for _ in 0..50 {
        let udp = UdpSocket::bind("127.0.0.1:0")
            .await
            .expect("bind UDP on loopback");
        let addr = udp.local_addr().expect("UDP local address");
        if let Ok(tcp) = TcpListener::bind(addr).await {
            server.register_socket(udp);
            server.register_listener(tcp, Duration::from_secs(5), 4096);
            return addr;
        }
    }
    panic!("no loopback port free for both UDP and TCP");
}
