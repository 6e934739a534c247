//! TLS for the listeners, through rustls with the aws-lc-rs provider (TLS 1.2 and 1.3).
//!
//! Builds a `ServerConfig` from a listener's PEM files, checking that the key matches the
//! certificate and, with `client_ca`, requiring client certificates from that CA. Errors name the
//! configuration key at fault so that `check-config` and `serve` can list them.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;

use crate::config::{Problem, TlsFiles};

/// The process-wide crypto provider: aws-lc-rs.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// A rustls server configuration for `files`; `section` names the config section in errors.
pub fn server_config(section: &str, files: &TlsFiles) -> Result<Arc<ServerConfig>, Problem> {
    let key_of = |name: &str| format!("{section}.{name}");
    // A FIFO or device would block the (re)load that opens it.
    for (name, path) in [
        ("tls_cert", Some(&files.cert)),
        ("tls_key", Some(&files.key)),
    ]
    .into_iter()
    .chain([("client_ca", files.client_ca.as_ref())])
    {
        if let Some(path) = path
            && !std::fs::metadata(path).is_ok_and(|m| m.is_file())
        {
            return Err(Problem::new(
                &key_of(name),
                format!("{} is not a readable regular file", path.display()),
            ));
        }
    }
    warn_if_world_readable(&files.key);
    let chain =
        read_certs(&files.cert).map_err(|e| Problem::new(&key_of("tls_cert"), e.to_string()))?;
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| {
        Problem::new(
            &key_of("tls_key"),
            format!("{}: no PEM private key ({e})", files.key.display()),
        )
    })?;
    let builder = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .expect("aws-lc-rs supports TLS 1.2 and 1.3");
    let builder = match &files.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            let certs =
                read_certs(ca).map_err(|e| Problem::new(&key_of("client_ca"), e.to_string()))?;
            for cert in certs {
                roots.add(cert).map_err(|e| {
                    Problem::new(&key_of("client_ca"), format!("{}: {e}", ca.display()))
                })?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                .build()
                .map_err(|e| {
                    Problem::new(&key_of("client_ca"), format!("{}: {e}", ca.display()))
                })?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_single_cert(chain, key).map_err(|e| {
        Problem::new(
            &key_of("tls_key"),
            format!(
                "does not match {} or is unusable: {e}",
                files.cert.display()
            ),
        )
    })?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Why a PEM certificate file could not be used.
#[derive(Debug, thiserror::Error)]
enum CertFileError {
    #[error("{path}: {source}")]
    Pem {
        path: PathBuf,
        source: rustls::pki_types::pem::Error,
    },
    #[error("{path}: no PEM certificate found")]
    Empty { path: PathBuf },
}

/// A private key others can read is worth a warning at every (re)load; it is not refused, as
/// keys shared with a group through a 0640 mode are common.
fn warn_if_world_readable(path: &Path) {
    use std::os::unix::fs::MetadataExt;
    if std::fs::metadata(path).is_ok_and(|m| m.mode() & 0o007 != 0) {
        tracing::warn!(path = %path.display(), "the TLS private key is readable by other users: run `chmod o-rwx` on it");
    }
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, CertFileError> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .and_then(|iter| iter.collect::<Result<_, _>>())
        .map_err(|source| CertFileError::Pem {
            path: path.to_owned(),
            source,
        })?;
    if certs.is_empty() {
        return Err(CertFileError::Empty {
            path: path.to_owned(),
        });
    }
    Ok(certs)
}
