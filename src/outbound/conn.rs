//! One SMTP client connection: connect (optionally from a source address), read replies with
//! timeouts, write commands, and upgrade to TLS.
//!
//! Every failure that is not an SMTP reply becomes a [`ConnError`], which
//! [`ConnError::to_reply`] turns into a synthetic 4xx reply naming the host, so the queue
//! stores a readable reason such as `451 4.4.1 connection refused by mx.example.com[192.0.2.1]`.

use std::collections::VecDeque;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::ClientConfig;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use super::tls::{TlsSummary, server_name};
use crate::smtp::reply::{EnhancedStatus, Reply, ReplyError, ReplyParser};

/// A failure below the SMTP reply level, with the stage it happened in for the reason text.
#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    /// TCP connect failed (refused, unreachable, ...).
    #[error("connection failed: {0}")]
    Connect(io::Error),
    /// TCP connect did not complete in time.
    #[error("connection timed out")]
    ConnectTimeout,
    /// The source address has a different family from the target.
    #[error("no source address of the target's address family")]
    SourceFamily,
    /// No reply (or no progress writing) within the timeout.
    #[error("timed out {0}")]
    Timeout(String),
    /// Read or write failed, or the peer closed the connection.
    #[error("connection lost {stage}: {error}")]
    Io {
        /// What the client was doing.
        stage: String,
        /// The underlying error.
        error: io::Error,
    },
    /// The peer sent bytes that are not a valid SMTP reply.
    #[error("protocol error: {0}")]
    Protocol(#[from] ReplyError),
    /// The TLS handshake failed, or the server misbehaved around STARTTLS.
    #[error("TLS failed: {0}")]
    Tls(String),
}

impl ConnError {
    /// The synthetic reply recorded for the recipients affected by this failure.
    pub fn to_reply(&self, remote: &str) -> Reply {
        let (detail, text) = match self {
            Self::Connect(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                (1, format!("connection refused by {remote}"))
            }
            Self::Connect(e) => (1, format!("cannot connect to {remote}: {e}")),
            Self::ConnectTimeout => (1, format!("connection to {remote} timed out")),
            Self::SourceFamily => (1, format!("no usable source address for {remote}")),
            Self::Timeout(stage) => (2, format!("timed out {stage} from {remote}")),
            Self::Io { stage, error } => {
                (2, format!("connection lost {stage} to {remote}: {error}"))
            }
            Self::Protocol(e) => (0, format!("invalid reply from {remote}: {e}")),
            Self::Tls(e) => (0, format!("TLS with {remote} failed: {e}")),
        };
        Reply::new(451, EnhancedStatus::new(4, 4, detail), text)
    }
}

/// The transport under the SMTP dialogue, before or after STARTTLS.
enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
    /// Only while an upgrade is in progress; any I/O on it fails.
    Gone,
}

/// An open SMTP connection with its reply parser.
pub struct Conn {
    stream: Stream,
    parser: ReplyParser,
    ready: VecDeque<Reply>,
    /// `host[ip]`, used in every log line and synthetic reply.
    pub remote: String,
    host: String,
    ip: IpAddr,
}

impl Conn {
    /// Connects to `ip:port`, binding `source` first when given (for per-IP pools).
    pub async fn connect(
        host: &str,
        ip: IpAddr,
        port: u16,
        source: Option<IpAddr>,
        timeout: Duration,
    ) -> Result<Self, ConnError> {
        let addr = SocketAddr::new(ip, port);
        let socket = if ip.is_ipv4() {
            TcpSocket::new_v4()
        } else {
            TcpSocket::new_v6()
        }
        .map_err(ConnError::Connect)?;
        if let Some(src) = source {
            if src.is_ipv4() != ip.is_ipv4() {
                return Err(ConnError::SourceFamily);
            }
            socket
                .bind(SocketAddr::new(src, 0))
                .map_err(ConnError::Connect)?;
        }
        let tcp = match tokio::time::timeout(timeout, socket.connect(addr)).await {
            Err(_) => return Err(ConnError::ConnectTimeout),
            Ok(Err(e)) => return Err(ConnError::Connect(e)),
            Ok(Ok(s)) => s,
        };
        // Commands are small and latency-bound; Nagle only adds delay between pipelined
        // writes and the replies they wait for.
        let _ = tcp.set_nodelay(true);
        Ok(Self {
            stream: Stream::Plain(tcp),
            parser: ReplyParser::new(),
            ready: VecDeque::new(),
            remote: format!("{host}[{ip}]"),
            host: host.to_string(),
            ip,
        })
    }

    /// Reads the next complete reply, waiting at most `timeout`.
    pub async fn read_reply(&mut self, timeout: Duration, stage: &str) -> Result<Reply, ConnError> {
        match tokio::time::timeout(timeout, self.read_reply_inner(stage)).await {
            Ok(r) => r,
            Err(_) => Err(ConnError::Timeout(format!(
                "waiting for the reply to {stage}"
            ))),
        }
    }

    async fn read_reply_inner(&mut self, stage: &str) -> Result<Reply, ConnError> {
        let mut buf = [0u8; 4096];
        loop {
            if let Some(r) = self.ready.pop_front() {
                tracing::debug!(remote = %self.remote, reply = %r, "S:");
                return Ok(r);
            }
            let n = self
                .stream
                .read(&mut buf)
                .await
                .map_err(|error| ConnError::Io {
                    stage: format!("waiting for the reply to {stage}"),
                    error,
                })?;
            if n == 0 {
                return Err(ConnError::Io {
                    stage: format!("waiting for the reply to {stage}"),
                    error: io::ErrorKind::UnexpectedEof.into(),
                });
            }
            self.ready.extend(self.parser.feed(&buf[..n])?);
        }
    }

    /// Writes bytes (commands or a DATA chunk) within `timeout`.
    pub async fn write_all(
        &mut self,
        bytes: &[u8],
        timeout: Duration,
        stage: &str,
    ) -> Result<(), ConnError> {
        let fut = async {
            self.stream.write_all(bytes).await?;
            self.stream.flush().await
        };
        match tokio::time::timeout(timeout, fut).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(error)) => Err(ConnError::Io {
                stage: format!("sending {stage}"),
                error,
            }),
            Err(_) => Err(ConnError::Timeout(format!("sending {stage}"))),
        }
    }

    /// Sends one command line (CRLF added) and reads its reply.
    pub async fn command(&mut self, line: &str, timeout: Duration) -> Result<Reply, ConnError> {
        let verb = line.split(' ').next().unwrap_or(line).to_string();
        tracing::debug!(remote = %self.remote, command = %line, "C:");
        self.write_all(format!("{line}\r\n").as_bytes(), timeout, &verb)
            .await?;
        self.read_reply(timeout, &verb).await
    }

    /// True when the connection already runs over TLS.
    pub fn is_tls(&self) -> bool {
        matches!(self.stream, Stream::Tls(_))
    }

    /// Upgrades to TLS after the server's `220` to STARTTLS. Fails if the server sent anything
    /// after that reply (bytes that would otherwise be read as if they came over TLS).
    pub async fn upgrade(
        &mut self,
        config: Arc<ClientConfig>,
        timeout: Duration,
    ) -> Result<TlsSummary, ConnError> {
        if !self.ready.is_empty() || !self.parser.is_idle() {
            return Err(ConnError::Tls(
                "server sent data after its STARTTLS reply".into(),
            ));
        }
        let Stream::Plain(tcp) = std::mem::replace(&mut self.stream, Stream::Gone) else {
            return Err(ConnError::Tls("connection is not plaintext".into()));
        };
        let name = server_name(&self.host, self.ip);
        let connector = TlsConnector::from(config);
        let tls = match tokio::time::timeout(timeout, connector.connect(name, tcp)).await {
            Err(_) => return Err(ConnError::Tls("handshake timed out".into())),
            Ok(Err(e)) => return Err(ConnError::Tls(e.to_string())),
            Ok(Ok(s)) => s,
        };
        let summary = TlsSummary::from_connection(tls.get_ref().1);
        self.stream = Stream::Tls(Box::new(tls));
        self.parser = ReplyParser::new();
        Ok(summary)
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Stream::Gone => Poll::Ready(Err(io::ErrorKind::NotConnected.into())),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Stream::Gone => Poll::Ready(Err(io::ErrorKind::NotConnected.into())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Stream::Gone => Poll::Ready(Err(io::ErrorKind::NotConnected.into())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Stream::Gone => Poll::Ready(Ok(())),
        }
    }
}
