//! DNS, TCP and TLS: the three steps before HTTP, each with its own diagnosis.
//!
//! A `Dialer` remembers the address and TLS settings that worked, so that the JWKS is fetched
//! over a second connection made exactly like the first.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{CertificateError, ClientConfig, RootCertStore};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use super::pinned::LeafOrCa;
use super::report::Check;
use super::target::Target;

/// The CA certificates to trust for the discovery listener.
#[derive(Debug, Clone)]
pub enum Roots {
    /// `--ca-file`: the PEM Vault is given as `oidc_discovery_ca_pem`.
    File {
        path: String,
        certs: Vec<CertificateDer<'static>>,
    },
    /// This host's trust store, which Vault uses when `oidc_discovery_ca_pem` is unset.
    System,
}

impl Roots {
    fn describe(&self) -> String {
        match self {
            Roots::File { path, .. } => path.clone(),
            Roots::System => "this host's trust store".into(),
        }
    }

    fn store(&self) -> Result<RootCertStore, String> {
        let mut store = RootCertStore::empty();
        let certs = match self {
            Roots::File { certs, .. } => certs.clone(),
            Roots::System => rustls_native_certs::load_native_certs().certs,
        };
        store.add_parsable_certificates(certs);
        if store.is_empty() {
            return Err(format!("no usable CA certificate in {}", self.describe()));
        }
        Ok(store)
    }
}

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

/// Why the TLS handshake failed, in the terms an operator can act on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TlsFailure {
    #[error("the certificate is not signed by a CA in {roots}")]
    UnknownCa { roots: String },
    #[error("the certificate is not valid for {expected} (it names {presented})")]
    WrongName { expected: String, presented: String },
    #[error("the certificate expired {ago} ago")]
    Expired { ago: String },
    #[error("the certificate is not valid for another {ahead}")]
    NotYetValid { ahead: String },
    #[error("the listener demands a client certificate (discovery.client_ca)")]
    ClientCertificate,
    #[error("the listener does not speak TLS ({0})")]
    NotTls(String),
    #[error("no answer to the TLS handshake within {0:?}")]
    TimedOut(Duration),
    #[error("{0}")]
    Other(String),
}

impl TlsFailure {
    fn fix(&self, target: &Target) -> String {
        let host = &target.host;
        match self {
            TlsFailure::UnknownCa { .. } => "pass the CA that signed the discovery listener's certificate with --ca-file, and give Vault the same PEM as oidc_discovery_ca_pem".into(),
            TlsFailure::WrongName { .. } => format!("issue the listener's certificate with a SAN for {host} (an IP SAN for an IP address; deploy/tls/make-certs.sh makes both), or use a name it carries in the issuer"),
            TlsFailure::Expired { .. } => "renew the certificate (deploy/tls/make-certs.sh) and reload tfe-oidc (systemctl reload tfe-oidc)".into(),
            TlsFailure::NotYetValid { .. } => "check this host's clock (NTP), or wait until the certificate's notBefore".into(),
            TlsFailure::ClientCertificate => CLIENT_CERTIFICATE_FIX.into(),
            TlsFailure::NotTls(_) => format!("use http:// if the listener is plain HTTP, or set discovery.tls_cert and tls_key so that {} serves TLS", target.authority),
            TlsFailure::TimedOut(_) => "the port answers TCP but not TLS: check that it is tfe-oidc's discovery listener".into(),
            TlsFailure::Other(_) => "check the listener's certificate and key (tfe-oidc check-config)".into(),
        }
    }
}

/// The fix when the listener demands a client certificate.
pub const CLIENT_CERTIFICATE_FIX: &str = "Vault's JWT auth cannot present a client certificate: remove discovery.client_ca, or put a TLS proxy that checks clients in front and let Vault through it";

/// What a TLS connection needs: the connector, the name to verify, and the verifier.
struct TlsSetup {
    connector: TlsConnector,
    name: ServerName<'static>,
    verifier: Arc<LeafOrCa>,
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

fn tls_connector(target: &Target, roots: &Roots) -> Result<TlsSetup, String> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let inner =
        WebPkiServerVerifier::builder_with_provider(Arc::new(roots.store()?), provider.clone())
            .build()
            .map_err(|e| e.to_string())?;
    let pinned = match roots {
        Roots::File { certs, .. } => certs.clone(),
        Roots::System => Vec::new(),
    };
    let verifier = Arc::new(LeafOrCa { inner, pinned });
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(verifier.clone())
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let name = ServerName::try_from(target.host.clone())
        .map_err(|_| format!("{:?} is not a valid TLS server name", target.host))?;
    Ok(TlsSetup {
        connector: TlsConnector::from(Arc::new(config)),
        name,
        verifier,
    })
}

fn tls_summary(stream: &TlsStream<TcpStream>, verifier: &LeafOrCa) -> String {
    let (_, conn) = stream.get_ref();
    let version = conn
        .protocol_version()
        .and_then(|v| v.as_str())
        .unwrap_or("TLS");
    let version = version.replace("TLSv1_", "TLS 1.");
    let leaf = conn.peer_certificates().and_then(|c| c.first());
    match leaf.is_some_and(|c| verifier.is_pinned(c)) {
        true => format!(
            "{version}, name verified; the certificate itself is in the CA file (Vault accepts that), so its dates were not checked"
        ),
        false => format!("{version}, certificate chain and name verified"),
    }
}

fn classify(error: std::io::Error, target: &Target, roots: &str) -> DialError {
    use std::io::ErrorKind::*;
    if matches!(
        error.kind(),
        UnexpectedEof | ConnectionReset | ConnectionAborted | BrokenPipe
    ) {
        return DialError::Closed;
    }
    let Some(tls) = error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    else {
        return DialError::Tls(TlsFailure::Other(error.to_string()));
    };
    DialError::Tls(tls_failure(tls, target, roots))
}

fn tls_failure(error: &rustls::Error, target: &Target, roots: &str) -> TlsFailure {
    use rustls::AlertDescription as Alert;
    match error {
        rustls::Error::InvalidCertificate(cert) => certificate_failure(cert, target, roots),
        rustls::Error::AlertReceived(Alert::CertificateRequired) => TlsFailure::ClientCertificate,
        rustls::Error::InvalidMessage(_) => TlsFailure::NotTls(error.to_string()),
        other => TlsFailure::Other(other.to_string()),
    }
}

fn certificate_failure(error: &CertificateError, target: &Target, roots: &str) -> TlsFailure {
    match error {
        CertificateError::UnknownIssuer => TlsFailure::UnknownCa {
            roots: roots.to_owned(),
        },
        CertificateError::BadSignature => TlsFailure::UnknownCa {
            roots: format!(
                "{roots} (a CA there has the issuer's name but another key: was the CA made again?)"
            ),
        },
        CertificateError::NotValidForNameContext { presented, .. } => TlsFailure::WrongName {
            expected: target.host.clone(),
            presented: presented
                .iter()
                .map(|n| bare_name(n))
                .collect::<Vec<_>>()
                .join(", "),
        },
        CertificateError::NotValidForName => TlsFailure::WrongName {
            expected: target.host.clone(),
            presented: "other names".into(),
        },
        CertificateError::ExpiredContext { time, not_after } => TlsFailure::Expired {
            ago: span(time.as_secs().saturating_sub(not_after.as_secs())),
        },
        CertificateError::Expired => TlsFailure::Expired {
            ago: "some time".into(),
        },
        CertificateError::NotValidYetContext { time, not_before } => TlsFailure::NotYetValid {
            ahead: span(not_before.as_secs().saturating_sub(time.as_secs())),
        },
        CertificateError::NotValidYet => TlsFailure::NotYetValid {
            ahead: "while".into(),
        },
        other => TlsFailure::Other(format!("the certificate is not acceptable: {other}")),
    }
}

/// `DnsName("x")` or `IpAddress(1.2.3.4)` as webpki presents a name: `x`, `1.2.3.4`.
fn bare_name(presented: &str) -> &str {
    let inner = match (presented.find('('), presented.rfind(')')) {
        (Some(open), Some(close)) if open < close => &presented[open + 1..close],
        _ => presented,
    };
    inner.trim_matches('"')
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
