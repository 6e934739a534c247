//! Wiring: from a validated `Config` to a running service (both listeners and the rotator), and
//! back down on shutdown.
//!
//! Order matters and is the fail-closed order of STYLE.md: everything that can be wrong with the
//! configuration (TLS files, tokens file) is checked before the key store is touched or a port is
//! bound; the key store is opened (and locked) before any listener serves.

use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

use crate::config::{Config, ConfigError, ListenerConfig, Problem, StoreKind};
use crate::discovery::Documents;
use crate::http::auth::{self, ApiTokens};
use crate::http::{self, AppState, Listener, Published};
use crate::keys::lifecycle::Policy;
use crate::keys::manager::{self, Change, KeyManager, ManagerError, Publisher};
use crate::keys::store::{FileStore, KeyStore};
use crate::keys::{Clock, KeySnapshot};
use crate::telemetry::{Audit, Metrics};
use crate::token::TokenIssuer;

/// Why the service could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The configuration is wrong (exit 64).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The key store could not be opened or brought up to date.
    #[error("key store: {0}")]
    Keys(#[from] ManagerError),
    /// A listener could not bind its address.
    #[error("cannot listen on {addr} ({listener} listener): {source}")]
    Bind {
        listener: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    /// The audit file or the development token could not be opened.
    #[error("{0}")]
    Io(String),
}

/// A running service.
pub struct Running {
    pub discovery_addr: SocketAddr,
    pub api_addr: SocketAddr,
    pub state: Arc<AppState>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Running {
    /// Stops accepting, lets in-flight requests finish, stops the rotator.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        for task in self.tasks {
            let _ = task.await;
        }
    }
}

/// The TLS acceptors of both listeners, or every problem with their files.
pub fn tls_acceptors(
    config: &Config,
) -> Result<(Option<TlsAcceptor>, Option<TlsAcceptor>), ConfigError> {
    let mut problems = Vec::new();
    let mut acceptor = |section: &str, listener: &ListenerConfig| {
        let files = listener.tls.as_ref()?;
        http::tls::server_config(section, files)
            .map(TlsAcceptor::from)
            .map_err(|p| problems.push(p))
            .ok()
    };
    let discovery = acceptor("discovery", &config.discovery);
    let api = acceptor("api", &config.api);
    if problems.is_empty() {
        Ok((discovery, api))
    } else {
        Err(ConfigError(problems))
    }
}

/// The accepted API tokens: the tokens file, or the development token.
pub fn api_tokens(config: &Config) -> Result<ApiTokens, StartError> {
    match &config.tokens_file {
        Some(path) => ApiTokens::load(path)
            .map_err(|m| ConfigError(vec![Problem::new("api.tokens_file", m)]).into()),
        None => {
            let (path, tokens) = auth::development_token(&config.keys.dir).map_err(|e| {
                StartError::Io(format!(
                    "development API token in {}: {e}",
                    config.keys.dir.display()
                ))
            })?;
            tracing::warn!(path = %path.display(), "no api.tokens_file configured: accepting the development API token stored in this file");
            eprintln!("development API token: {}", path.display());
            Ok(tokens)
        }
    }
}

/// Opens the configured key store, for writing.
pub fn open_store(config: &Config) -> Result<Box<dyn KeyStore>, ManagerError> {
    match config.keys.store {
        StoreKind::File => Ok(Box::new(FileStore::open(
            &config.keys.dir,
            config.keys.rsa_bits,
        )?)),
    }
}

pub fn policy(config: &Config) -> Policy {
    Policy::new(
        config.keys.rotation_period,
        config.tokens.max_ttl,
        config.jwks_max_age,
    )
}

/// Starts the service; returns once both listeners are bound and serving.
pub async fn start(config: &Config, clock: Arc<dyn Clock>) -> Result<Running, StartError> {
    let (discovery_tls, api_tls) = tls_acceptors(config)?;
    let api_tokens = api_tokens(config)?;
    let audit = Audit::open(config.audit_path.as_deref()).map_err(|e| {
        StartError::Io(format!(
            "audit.path {:?}: {e}",
            config.audit_path.clone().unwrap_or_default()
        ))
    })?;
    let metrics = Arc::new(Metrics::default());
    let published = Arc::new(ArcSwap::from_pointee(Published {
        keys: Arc::new(KeySnapshot {
            set: Default::default(),
            signer: None,
        }),
        docs: Documents::render(&config.issuer, &Default::default()),
    }));
    let manager = {
        let (config, publisher) = (
            config.clone(),
            publisher(&config.issuer, &published, &metrics),
        );
        let policy = policy(&config);
        tokio::task::spawn_blocking(move || {
            KeyManager::start(open_store(&config)?, clock, policy, publisher)
        })
        .await
        .map_err(|e| StartError::Io(format!("key store task failed: {e}")))??
    };
    let state = Arc::new(AppState {
        published,
        manager: Arc::new(manager),
        issuer: TokenIssuer::new(config.issuer.clone(), config.tokens.clone()),
        api_tokens,
        audit,
        metrics: Arc::clone(&metrics),
        exchanger: crate::exchange::Exchanger::new(
            config.exchange.allowed_vault_addrs.clone(),
            config.exchange.vault_timeout,
        ),
        jwks_cache_control: axum::http::HeaderValue::from_str(&format!(
            "public, max-age={}",
            config.jwks_max_age.as_secs()
        ))
        .expect("Cache-Control is ASCII"),
        max_body: config.max_body,
    });
    let discovery = bind("discovery", &config.discovery, discovery_tls).await?;
    let api = bind("api", &config.api, api_tls).await?;
    let (discovery_addr, api_addr) = (local_addr(&discovery), local_addr(&api));
    let (shutdown, receiver) = watch::channel(false);
    let tasks = vec![
        tokio::spawn(manager::run_rotator(
            Arc::clone(&state.manager),
            receiver.clone(),
        )),
        tokio::spawn(http::serve(
            discovery,
            http::internal::service(Arc::clone(&state)),
            Arc::clone(&metrics),
            receiver.clone(),
        )),
        tokio::spawn(http::serve(
            api,
            http::api::router(Arc::clone(&state)),
            metrics,
            receiver,
        )),
    ];
    tracing::info!(issuer = %config.issuer, discovery = %discovery_addr, api = %api_addr, "tfe-oidc serving");
    Ok(Running {
        discovery_addr,
        api_addr,
        state,
        shutdown,
        tasks,
    })
}

fn publisher(
    issuer: &str,
    published: &Arc<ArcSwap<Published>>,
    metrics: &Arc<Metrics>,
) -> Publisher {
    let (issuer, published, metrics) = (
        issuer.to_owned(),
        Arc::clone(published),
        Arc::clone(metrics),
    );
    Box::new(move |snapshot, change| {
        if change == Change::Rotated {
            metrics.key_rotated();
        }
        let docs = Documents::render(&issuer, &snapshot.set);
        published.store(Arc::new(Published {
            keys: Arc::clone(snapshot),
            docs,
        }));
        let current = snapshot
            .set
            .current()
            .map(|c| c.kid.to_string())
            .unwrap_or_default();
        let next = snapshot
            .set
            .next()
            .map(|c| c.kid.to_string())
            .unwrap_or_default();
        tracing::info!(change = ?change, current = %current, next = %next, published = snapshot.set.keys.len(), "key set published");
    })
}

async fn bind(
    name: &'static str,
    config: &ListenerConfig,
    tls: Option<TlsAcceptor>,
) -> Result<Listener, StartError> {
    let tcp = TcpListener::bind(config.listen)
        .await
        .map_err(|source| StartError::Bind {
            listener: name,
            addr: config.listen,
            source,
        })?;
    if config.insecure_http && tls.is_none() {
        tracing::warn!(listener = name, addr = %config.listen, "insecure_http = true: serving plain HTTP on a non-loopback address");
    }
    Ok(Listener {
        name,
        tcp,
        tls,
        allow: config.allow.clone(),
    })
}

fn local_addr(listener: &Listener) -> SocketAddr {
    listener
        .tcp
        .local_addr()
        .expect("a bound socket has an address")
}
