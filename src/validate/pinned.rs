//! Certificate verification as Vault does it with `oidc_discovery_ca_pem`: Go's verifier also
//! trusts a server whose own certificate is in that PEM (a pinned leaf instead of its CA), which
//! the web PKI alone refuses as an unknown issuer.
//!
//! `LeafOrCa` runs rustls' web PKI check first; only when that finds no known CA and the
//! presented certificate is byte for byte one of `--ca-file`'s does it accept the certificate,
//! and then only if it names the host. Its validity dates are not checked on that path (rustls
//! checks dates while building a chain, and there is none); the `tls` check says so.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{WebPkiServerVerifier, verify_server_name};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::{CertificateError, DigitallySignedStruct, Error, SignatureScheme};

#[derive(Debug)]
pub struct LeafOrCa {
    pub inner: Arc<WebPkiServerVerifier>,
    /// The certificates of `--ca-file` (empty with the system roots).
    pub pinned: Vec<CertificateDer<'static>>,
}

impl ServerCertVerifier for LeafOrCa {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        let verified =
            self.inner
                .verify_server_cert(end_entity, intermediates, server_name, ocsp, now);
        match verified {
            Err(Error::InvalidCertificate(CertificateError::UnknownIssuer))
                if self.is_pinned(end_entity) =>
            {
                verify_server_name(&ParsedCertificate::try_from(end_entity)?, server_name)?;
                Ok(ServerCertVerified::assertion())
            }
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

impl LeafOrCa {
    pub fn is_pinned(&self, cert: &CertificateDer<'_>) -> bool {
        self.pinned.iter().any(|p| p.as_ref() == cert.as_ref())
    }
}
