//! Connection pools: one `reqwest::Client` per (Vault address, CA), made on first use and kept
//! for the life of the service, so that every exchange with the same Vault reuses its
//! connections and TLS sessions.
//!
//! At most `MAX_POOLS` are kept.
//!
//! TLS is rustls with the aws-lc-rs provider. An endpoint with a CA trusts exactly that CA; one
//! without trusts the system's roots (read once). Redirects are not followed: Vault sends a
//! redirect only from a standby, and following one would carry the token to a host nobody
//! checked. The proxy variables (`HTTP_PROXY` and the like) are ignored for the same reason.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use aws_lc_rs::digest;
use rustls::RootCertStore;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

use super::{Endpoint, Vault, VaultError};

type PoolKey = (String, [u8; 32]);

/// Pools kept at most. Addresses are bounded by `exchange.allowed_vault_addrs`, but a revocation
/// body brings its own CA; past this many, a client is made for the call and not kept.
const MAX_POOLS: usize = 64;

/// The pools of the whole service. Cheap to share behind an `Arc`.
#[derive(Default)]
pub struct VaultClients {
    pools: Mutex<HashMap<PoolKey, reqwest::Client>>,
}

impl std::fmt::Debug for VaultClients {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VaultClients")
            .field("pools", &self.pool_count())
            .finish()
    }
}

impl VaultClients {
    pub fn new() -> VaultClients {
        VaultClients::default()
    }

    /// A client for `endpoint`, on the pool of its address and CA.
    pub fn connect(&self, endpoint: &Endpoint) -> Result<Vault, VaultError> {
        let key = (
            endpoint.address.clone(),
            ca_digest(endpoint.ca_pem.as_deref()),
        );
        let http = {
            let mut pools = self.pools.lock().unwrap_or_else(|p| p.into_inner());
            match pools.get(&key) {
                Some(client) => client.clone(),
                None => {
                    let client = build(endpoint.ca_pem.as_deref())?;
                    if pools.len() < MAX_POOLS {
                        pools.insert(key, client.clone());
                    }
                    client
                }
            }
        };
        Ok(Vault {
            http,
            endpoint: endpoint.clone(),
            consistency: None,
        })
    }

    /// How many pools exist (one per address and CA seen so far).
    pub fn pool_count(&self) -> usize {
        self.pools.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

fn ca_digest(pem: Option<&[u8]>) -> [u8; 32] {
    let mut out = [0u8; 32];
    if let Some(pem) = pem {
        out.copy_from_slice(digest::digest(&digest::SHA256, pem).as_ref());
    }
    out
}

/// A reqwest client over rustls that trusts exactly `ca_pem` (else the system's roots), follows
/// no redirect and ignores the proxy variables; `tfe-oidc run` uses it for the tfe-oidc API too.
pub fn build(ca_pem: Option<&[u8]>) -> Result<reqwest::Client, VaultError> {
    let roots = match ca_pem {
        Some(pem) => Arc::new(roots_from_pem(pem)?),
        None => system_roots(),
    };
    // aws-lc-rs, the provider of the whole process (the listeners use the same).
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .expect("aws-lc-rs supports TLS 1.2 and 1.3")
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .redirect(reqwest::redirect::Policy::none())
        // HTTP_PROXY, HTTPS_PROXY, ALL_PROXY and NO_PROXY are ignored: a proxy would carry signed
        // tokens and Vault tokens around `exchange.allowed_vault_addrs`.
        .no_proxy()
        .build()
        .map_err(|e| VaultError::Setup(format!("cannot build the vault client: {e}")))
}

/// The certificates of a PEM bundle as a root store.
pub fn roots_from_pem(pem: &[u8]) -> Result<RootCertStore, VaultError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<_, _>>()
        .map_err(|e| VaultError::Setup(format!("the CA is not PEM: {e}")))?;
    if certs.is_empty() {
        return Err(VaultError::Setup("the CA holds no PEM certificate".into()));
    }
    let mut roots = RootCertStore::empty();
    for cert in certs {
        roots
            .add(cert)
            .map_err(|e| VaultError::Setup(format!("the CA certificate is unusable: {e}")))?;
    }
    Ok(roots)
}

/// The operating system's trusted roots, read once.
fn system_roots() -> Arc<RootCertStore> {
    static ROOTS: OnceLock<Arc<RootCertStore>> = OnceLock::new();
    Arc::clone(ROOTS.get_or_init(|| {
        let found = rustls_native_certs::load_native_certs();
        for e in &found.errors {
            tracing::warn!(error = %e, "cannot read a system root certificate");
        }
        let mut roots = RootCertStore::empty();
        let (added, ignored) = roots.add_parsable_certificates(found.certs);
        tracing::debug!(added, ignored, "system roots loaded for vault");
        Arc::new(roots)
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn endpoint(address: &str, ca: Option<&[u8]>) -> Endpoint {
        Endpoint {
            address: address.into(),
            namespace: None,
            ca_pem: ca.map(<[u8]>::to_vec),
            timeout: Duration::from_secs(1),
        }
    }

    #[test]
    fn one_pool_per_address_and_ca() {
        let clients = VaultClients::new();
        clients.connect(&endpoint("http://a:8200", None)).unwrap();
        clients.connect(&endpoint("http://a:8200", None)).unwrap();
        assert_eq!(clients.pool_count(), 1);
        clients.connect(&endpoint("http://b:8200", None)).unwrap();
        assert_eq!(clients.pool_count(), 2);
    }

    #[test]
    fn a_ca_without_certificates_is_refused() {
        let clients = VaultClients::new();
        let e = clients
            .connect(&endpoint("https://a:8200", Some(b"not a pem")))
            .unwrap_err();
        assert_eq!(e.to_string(), "the CA holds no PEM certificate");
    }
}
