//! DNS, TCP and TLS: the three steps before HTTP, each with its own diagnosis (the TLS
//! details are in `tls.rs`).
//!
//! A `Dialer` remembers the address and TLS settings that worked, so that the JWKS is fetched
//! over a second connection made exactly like the first.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use super::report::Check;
use super::target::Target;
use super::tls::{Roots, TlsFailure, TlsSetup, classify, tls_connector, tls_summary};

/// An open connection to the discovery listener.
pub enum Conn {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

/// How a connection attempt ended without a connection.
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    /// Every address refused the connection: nothing listens there.
    #[error("{0}: connection refused")]
    Refused(SocketAddr),
    /// No answer at all within the timeout: packets are dropped on the way.
    #[error("{0}: no answer within {1:?}")]
    TimedOut(SocketAddr, Duration),
    /// Any other socket error (no route, network unreachable).
    #[error("{0}: {1}")]
    Io(SocketAddr, std::io::Error),
    /// The listener closed or reset the connection during the TLS handshake, before saying
    /// anything: what tfe-oidc does to a peer outside `discovery.allow`.
    #[error("the listener closed the connection during the TLS handshake without answering")]
    Closed,
    /// The handshake failed for another reason (a certificate, a protocol mismatch).
    #[error("{0}")]
    Tls(TlsFailure),
}

/// Connects to the target the same way every time.
pub struct Dialer {
    pub target: Target,
    pub addr: SocketAddr,
    tls: Option<TlsSetup>,
    /// Where the trusted CAs come from, for messages.
    roots: String,
    timeout: Duration,
}

/// The `dns` check: the addresses the host resolves to.
pub async fn resolve(target: &Target, timeout: Duration) -> (Check, Option<Vec<SocketAddr>>) {
    if let Some(ip) = target.ip() {
        let detail = format!("{ip} is an address: nothing to resolve");
        return (
            Check::pass("dns", detail),
            Some(vec![SocketAddr::new(ip, target.port)]),
        );
    }
    let lookup = tokio::net::lookup_host((target.host.as_str(), target.port));
    let found = match tokio::time::timeout(timeout, lookup).await {
        Ok(Ok(addrs)) => addrs.collect::<Vec<_>>(),
        Ok(Err(e)) => return (dns_failure(target, &e.to_string()), None),
        Err(_) => return (dns_failure(target, "the lookup timed out"), None),
    };
    if found.is_empty() {
        return (dns_failure(target, "no addresses"), None);
    }
    let list: Vec<String> = found.iter().map(|a| a.ip().to_string()).collect();
    let detail = format!("{} resolves to {}", target.host, list.join(", "));
    (Check::pass("dns", detail), Some(found))
}

fn dns_failure(target: &Target, why: &str) -> Check {
    Check::fail(
        "dns",
        format!("cannot resolve {}: {why}", target.host),
        format!(
            "make {} resolve on this host to the discovery listener's internal address (DNS or /etc/hosts): Vault resolves it the same way",
            target.host
        ),
    )
}

/// The first address of `addrs` that accepts a TCP connection, within `timeout` each.
pub async fn connect(
    addrs: &[SocketAddr],
    timeout: Duration,
) -> Result<(TcpStream, SocketAddr), DialError> {
    let mut last = None;
    for &addr in addrs {
        match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => return Ok((stream, addr)),
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                last = Some(DialError::Refused(addr))
            }
            Ok(Err(e)) => last = Some(DialError::Io(addr, e)),
            Err(_) => last = Some(DialError::TimedOut(addr, timeout)),
        }
    }
    Err(last.expect("at least one address"))
}

/// The `tcp` check of a connection attempt.
pub fn tcp_check(result: &Result<(TcpStream, SocketAddr), DialError>, target: &Target) -> Check {
    let port = target.port;
    match result {
        Ok((_, addr)) => Check::pass("tcp", format!("connected to {addr}")),
        Err(e @ DialError::Refused(_)) => Check::fail(
            "tcp",
            e.to_string(),
            format!(
                "nothing listens on port {port} there: start tfe-oidc, and check that discovery.listen is that address and port"
            ),
        ),
        Err(e @ DialError::TimedOut(..)) => Check::fail(
            "tcp",
            e.to_string(),
            "a firewall drops the packets or the address is wrong: open the port from this host to the discovery listener",
        ),
        Err(e) => Check::fail(
            "tcp",
            e.to_string(),
            "this host has no route to the discovery listener: check the address and the network between them",
        ),
    }
}

impl Dialer {
    /// The TLS settings for `target` (none for http://).
    pub fn new(
        target: &Target,
        addr: SocketAddr,
        roots: &Roots,
        timeout: Duration,
    ) -> Result<Dialer, String> {
        let tls = match target.https {
            false => None,
            true => Some(tls_connector(target, roots)?),
        };
        Ok(Dialer {
            target: target.clone(),
            addr,
            tls,
            roots: roots.describe(),
            timeout,
        })
    }

    /// Wraps an open TCP connection in TLS when the target is https.
    pub async fn secure(&self, tcp: TcpStream) -> Result<Conn, DialError> {
        let Some(tls) = &self.tls else {
            return Ok(Conn::Plain(tcp));
        };
        let handshake = tls.connector.connect(tls.name.clone(), tcp);
        match tokio::time::timeout(self.timeout, handshake).await {
            Ok(Ok(stream)) => Ok(Conn::Tls(Box::new(stream))),
            Ok(Err(e)) => Err(classify(e, &self.target, &self.roots)),
            Err(_) => Err(DialError::Tls(TlsFailure::TimedOut(self.timeout))),
        }
    }

    /// A new connection to the address that worked before.
    pub async fn dial(&self) -> Result<Conn, DialError> {
        let (tcp, _) = connect(&[self.addr], self.timeout).await?;
        self.secure(tcp).await
    }

    /// Whether the listener answers a plain HTTP request with a TLS record (an alert or a
    /// handshake: content type 21 or 22, version 3.x), which is what a TLS port does; asked
    /// when a plain `http://` exchange failed, to name the cause.
    pub async fn speaks_tls(&self) -> bool {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let probe = async {
            let (mut tcp, _) = connect(&[self.addr], self.timeout).await.ok()?;
            tcp.write_all(b"GET / HTTP/1.0\r\n\r\n").await.ok()?;
            let mut head = [0u8; 2];
            tcp.read_exact(&mut head).await.ok()?;
            Some(matches!(head, [21 | 22, 3]))
        };
        let answered = tokio::time::timeout(self.timeout, probe).await;
        answered.ok().flatten().unwrap_or(false)
    }

    /// The `tls` check of a handshake.
    pub fn tls_check(&self, result: &Result<Conn, DialError>) -> Check {
        match result {
            Ok(Conn::Plain(_)) => Check::pass("tls", "not used: the issuer is http://"),
            Ok(Conn::Tls(stream)) => {
                let verifier = self.tls.as_ref().map(|t| t.verifier.as_ref());
                Check::pass(
                    "tls",
                    tls_summary(stream, verifier.expect("TLS was set up")),
                )
            }
            Err(DialError::Tls(failure)) => {
                Check::fail("tls", failure.to_string(), failure.fix(&self.target))
            }
            Err(e) => Check::fail(
                "tls",
                e.to_string(),
                "tfe-oidc closes connections from peers outside discovery.allow without a word: add this host's address to discovery.allow",
            ),
        }
    }
}

/// A rough duration for messages: `3d`, `5h`, `12m` or `40s`.
pub fn span(secs: u64) -> String {
    match secs {
        s if s >= 86_400 => format!("{}d", s / 86_400),
        s if s >= 3_600 => format!("{}h", s / 3_600),
        s if s >= 60 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}
