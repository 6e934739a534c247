//! TLS for the validator: the roots (`--ca-file` or this host's store), the client
//! configuration, and the diagnosis of a failed handshake in the terms an operator acts on.

use std::sync::Arc;
use std::time::Duration;

use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{CertificateError, ClientConfig, RootCertStore};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use super::net::{DialError, span};
use super::pinned::LeafOrCa;
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
    pub fn describe(&self) -> String {
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

/// Why the TLS handshake failed, in the terms an operator can act on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TlsFailure {
    /// No CA in the roots signed the chain (`roots` says which roots, for the message).
    #[error("the certificate is not signed by a CA in {roots}")]
    UnknownCa { roots: String },
    /// The certificate's SANs do not include the issuer's host.
    #[error("the certificate is not valid for {expected} (it names {presented})")]
    WrongName { expected: String, presented: String },
    /// The certificate's notAfter has passed.
    #[error("the certificate expired {ago} ago")]
    Expired { ago: String },
    /// The certificate's notBefore is still ahead (often this host's clock).
    #[error("the certificate is not valid for another {ahead}")]
    NotYetValid { ahead: String },
    /// The server asked for a client certificate and refused to go on without one.
    #[error("the listener demands a client certificate (discovery.client_ca)")]
    ClientCertificate,
    /// What came back was not TLS: typically a plain HTTP listener.
    #[error("the listener does not speak TLS ({0})")]
    NotTls(String),
    /// TCP connected but the handshake got no answer in time.
    #[error("no answer to the TLS handshake within {0:?}")]
    TimedOut(Duration),
    /// Anything else rustls reports, in its own words.
    #[error("{0}")]
    Other(String),
}

impl TlsFailure {
    pub fn fix(&self, target: &Target) -> String {
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
pub struct TlsSetup {
    pub connector: TlsConnector,
    pub name: ServerName<'static>,
    pub verifier: Arc<LeafOrCa>,
}

pub fn tls_connector(target: &Target, roots: &Roots) -> Result<TlsSetup, String> {
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

pub fn tls_summary(stream: &TlsStream<TcpStream>, verifier: &LeafOrCa) -> String {
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

pub fn classify(error: std::io::Error, target: &Target, roots: &str) -> DialError {
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
