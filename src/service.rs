//! Wiring: from a validated `Config` to a running service (both listeners and the rotator),
//! reloading its files on SIGHUP, and back down on shutdown.
//!
//! Start-up order is fail-closed and leaves nothing behind on failure: every file the
//! configuration names is loaded and checked, then both listeners are bound, and only then is
//! anything created (the audit file, then the key store and its keys, then the development API
//! token). A busy port or an audit path that cannot be opened therefore leaves no key behind.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::runtime::Handle;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::{
    Config, ConfigError, Key, ListenerConfig, ListenerKey, Problem, Section, StoreKind,
};
use crate::discovery::{ProviderMetadata, Rendered};
use crate::exchange::REVOKE_DEADLINE;
use crate::http::auth::{self, ApiTokens};
use crate::http::{self, ApiState, DiscoveryState, Listener, Reloadable};
use crate::keys::Clock;
use crate::keys::lifecycle::Policy;
use crate::keys::manager::{self, KeyManager, ManagerError};
use crate::keys::store::transit::TransitStore;
use crate::keys::store::{FileStore, KeyStore, Loaded};
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
    #[error("{key} ({env}): cannot listen on {addr}: {source}")]
    Bind {
        key: String,
        env: String,
        addr: SocketAddr,
        source: std::io::Error,
    },
    /// The audit file could not be opened.
    #[error("audit.path {path}: {source}")]
    Audit {
        path: String,
        source: std::io::Error,
    },
    /// The development API token could not be read or written.
    #[error("development API token in {dir}: {source}")]
    DevelopmentToken { dir: String, source: std::io::Error },
    /// A push target could not be set up.
    #[error(transparent)]
    Push(#[from] crate::push::PushSetupError),
    /// The blocking task that opens the key store died.
    #[error("key store task failed: {0}")]
    Task(String),
}

/// How long after shutdown begins a credential exchange still running is cut off: with
/// `REVOKE_DEADLINE` for its revocation, it ends within the listeners' 30 s drain.
const EXCHANGE_CUTOFF: Duration = Duration::from_secs(20);

/// The files a SIGHUP reloads, and where the running service reads them.
pub struct Reloader {
    config: Config,
    state: Arc<ApiState>,
    api_tokens: Reloadable<ApiTokens>,
    discovery_tls: Option<Reloadable<rustls::ServerConfig>>,
    api_tls: Option<Reloadable<rustls::ServerConfig>>,
}

/// A running service.
pub struct Running {
    /// `None` with `discovery.enabled = false`.
    pub discovery_addr: Option<SocketAddr>,
    pub api_addr: SocketAddr,
    pub state: Arc<ApiState>,
    reloader: Arc<Reloader>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Running {
    /// Stops accepting, lets in-flight requests finish, stops the rotator. A credential exchange
    /// still running `EXCHANGE_CUTOFF` after the start is cut off, so that it can revoke its
    /// Vault tokens (within `REVOKE_DEADLINE`) before the 30 s drain ends; exchanges and
    /// revocations whose client went away are waited for as well.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        let state = Arc::clone(&self.state);
        let cutoff = tokio::spawn(async move {
            tokio::time::sleep(EXCHANGE_CUTOFF).await;
            state.exchanger.cut_off();
        });
        for task in self.tasks {
            let _ = task.await;
        }
        cutoff.abort();
        self.state.exchanger.cut_off();
        self.state.exchanger.drain(REVOKE_DEADLINE).await;
    }

    /// What SIGHUP reloads, to run off the signal loop.
    pub fn reloader(&self) -> Arc<Reloader> {
        Arc::clone(&self.reloader)
    }

    /// See [`Reloader::reload`].
    pub fn reload(&self) -> bool {
        self.reloader.reload()
    }
}

impl Reloader {
    /// Reloads the API tokens file, the TLS certificates and keys and the client CAs, and reopens
    /// the audit file (after logrotate). A file that fails to load is logged and the one in use is
    /// kept; returns whether everything reloaded. It reads files: call it off the async runtime.
    pub fn reload(&self) -> bool {
        let r = self;
        let mut ok = true;
        if let Some(path) = &r.config.tokens_file {
            match ApiTokens::load(path) {
                Ok(tokens) => {
                    warn_unbound(&tokens);
                    r.api_tokens.store(Arc::new(tokens));
                    tracing::info!(path = %path.display(), "api.tokens_file reloaded");
                }
                Err(e) => {
                    ok = false;
                    tracing::error!(error = %e, "api.tokens_file not reloaded: keeping the tokens in use");
                }
            }
        }
        if let Err(e) = r.state.audit.reopen() {
            ok = false;
            tracing::error!(error = %e, "audit.path not reopened: keeping the file in use");
        }
        for (section, listener, live) in [
            ("discovery", &r.config.discovery, &r.discovery_tls),
            ("api", &r.config.api, &r.api_tls),
        ] {
            let (Some(files), Some(live)) = (&listener.tls, live) else {
                continue;
            };
            match http::tls::server_config(section, files) {
                Ok(config) => {
                    live.store(config);
                    tracing::info!(
                        listener = section,
                        "TLS certificate, key and client CA reloaded"
                    );
                }
                Err(problem) => {
                    ok = false;
                    tracing::error!(error = %problem, "TLS files not reloaded: keeping the ones in use");
                }
            }
        }
        ok
    }
}

/// The TLS configurations of both listeners, or every problem with their files.
pub fn tls_configs(config: &Config) -> Result<[Option<Arc<rustls::ServerConfig>>; 2], ConfigError> {
    let mut problems = Vec::new();
    let mut load = |section: &str, listener: &ListenerConfig| {
        let files = listener.tls.as_ref()?;
        http::tls::server_config(section, files)
            .map_err(|p| problems.push(p))
            .ok()
    };
    let configs = [
        load("discovery", &config.discovery),
        load("api", &config.api),
    ];
    if problems.is_empty() {
        Ok(configs)
    } else {
        Err(ConfigError(problems))
    }
}

/// The tokens file, when one is configured.
pub fn tokens_file(config: &Config) -> Result<Option<ApiTokens>, ConfigError> {
    config
        .tokens_file
        .as_ref()
        .map(|path| {
            ApiTokens::load(path).map_err(|m| ConfigError(vec![Problem::at(Key::TokensFile, m)]))
        })
        .transpose()
}

/// The development token, created (0600, in a 0700 `keys.dir`) when absent.
fn development_token(config: &Config) -> Result<ApiTokens, StartError> {
    let (path, tokens) = auth::development_token(&config.keys.dir).map_err(|source| {
        StartError::DevelopmentToken {
            dir: config.keys.dir.display().to_string(),
            source,
        }
    })?;
    tracing::warn!(path = %path.display(), "no api.tokens_file configured: accepting the development API token stored in this file");
    eprintln!("development API token: {}", path.display());
    Ok(tokens)
}

/// Opens the configured key store, for writing. The transit store calls Vault on `runtime`.
pub fn open_store(
    config: &Config,
    runtime: Handle,
    clock: Arc<dyn Clock>,
) -> Result<Box<dyn KeyStore>, ManagerError> {
    match &config.keys.store {
        StoreKind::File => Ok(Box::new(FileStore::open(
            &config.keys.dir,
            config.keys.rsa_bits,
        )?)),
        StoreKind::VaultTransit(transit) => Ok(Box::new(
            transit_store(config, transit, runtime)?.with_clock(clock),
        )),
    }
}

/// The committed key set without taking the store for writing (`keys list`, `token issue`): the
/// file store read without its lock, or the transit store's record read from Vault.
pub fn read_keys(config: &Config, runtime: Handle) -> Result<Loaded, ManagerError> {
    match &config.keys.store {
        StoreKind::File => Ok(crate::keys::store::read_unlocked(&config.keys.dir)?),
        StoreKind::VaultTransit(transit) => {
            let mut store = transit_store(config, transit, runtime)?.read_only();
            Ok(store.load()?)
        }
    }
}

fn transit_store(
    config: &Config,
    transit: &crate::config::TransitConfig,
    runtime: Handle,
) -> Result<TransitStore, ManagerError> {
    let (bits, issuer) = (config.keys.rsa_bits, config.issuer.as_str());
    Ok(TransitStore::open(transit, bits, issuer, runtime)?)
}

pub fn policy(config: &Config) -> Policy {
    Policy::new(
        config.keys.rotation_period,
        config.tokens.max_ttl,
        config.jwks_max_age,
    )
}

/// Logs the callers that may sign for any `sub` (docs/threat-model.md).
fn warn_unbound(tokens: &ApiTokens) {
    for caller in tokens.unbound_signers() {
        tracing::warn!(
            caller,
            "this API caller has no sub= binding: its token may obtain tokens and credentials for every organization and workspace"
        );
    }
}

/// Starts the service; returns once both listeners are bound and serving.
pub async fn start(config: &Config, clock: Arc<dyn Clock>) -> Result<Running, StartError> {
    let [discovery_tls, api_tls] = tls_configs(config)?;
    let configured_tokens = tokens_file(config)?;
    let federation = crate::http::federation::Federation::new(&config.federation)?;
    for warning in config.federation.iter().filter_map(|r| r.warning()) {
        tracing::warn!("{warning}");
    }
    let push_cas = crate::push::read_files(&config.push)?;
    let connection_budget = connection_budget();
    warn_over_budget(config, connection_budget);
    let discovery = match config.discovery_enabled {
        true => Some(
            bind(
                Section::Discovery,
                &config.discovery,
                discovery_tls,
                connection_budget,
            )
            .await?,
        ),
        false => None,
    };
    let api = bind(Section::Api, &config.api, api_tls, connection_budget).await?;
    // Nothing has been created so far. The audit file is the one thing created before the keys:
    // a path that cannot be opened must not leave a new key store behind.
    let audit = Audit::open(config.audit_path.as_deref()).map_err(|source| StartError::Audit {
        path: config
            .audit_path
            .as_deref()
            .unwrap_or_else(|| std::path::Path::new(""))
            .display()
            .to_string(),
        source,
    })?;
    let manager = {
        let (config, clock) = (config.clone(), Arc::clone(&clock));
        let runtime = Handle::current();
        tokio::task::spawn_blocking(move || {
            let store = open_store(&config, runtime, Arc::clone(&clock))?;
            KeyManager::start(store, clock, policy(&config))
        })
        .await
        .map_err(|e| StartError::Task(e.to_string()))??
    };
    let api_tokens = match configured_tokens {
        Some(tokens) => {
            warn_unbound(&tokens);
            tokens
        }
        None => development_token(config)?,
    };
    let metrics = Arc::new(Metrics::default());
    let manager = Arc::new(manager);
    let discovery_state = DiscoveryState {
        configuration: Rendered::of(&ProviderMetadata::new(&config.issuer)),
        jwks: manager.subscribe_jwks(),
        jwks_cache_control: axum::http::HeaderValue::from_str(&format!(
            "public, max-age={}",
            config.jwks_max_age.as_secs()
        ))
        .expect("Cache-Control is ASCII"),
        metrics: Arc::clone(&metrics),
    };
    let (shutdown, receiver) = watch::channel(false);
    let (pushes, push_tasks) = match config.push.is_empty() {
        true => (crate::push::Pushes::none(), Vec::new()),
        false => crate::push::start(
            &config.push,
            push_cas,
            &config.issuer,
            config.exchange.vault_timeout,
            &manager,
            &receiver,
        )?,
    };
    let api_tokens = Arc::new(ArcSwap::from_pointee(api_tokens));
    let state = Arc::new(ApiState {
        manager: Arc::clone(&manager),
        issuer: TokenIssuer::new(config.issuer.clone(), config.tokens.clone()),
        api_tokens: Arc::clone(&api_tokens),
        federation,
        audit,
        metrics: Arc::clone(&metrics),
        exchanger: crate::exchange::Exchanger::new(
            config.exchange.allowed_vault_addrs.clone(),
            config.exchange.vault_timeout,
            config.max_body,
        ),
        max_body: config.max_body,
        pushes: Arc::clone(&pushes),
    });
    let (discovery_addr, api_addr) = (discovery.as_ref().map(local_addr), local_addr(&api));
    let reloader = Arc::new(Reloader {
        config: config.clone(),
        state: Arc::clone(&state),
        api_tokens,
        discovery_tls: discovery.as_ref().and_then(|d| d.tls.clone()),
        api_tls: api.tls.clone(),
    });
    let mut tasks = push_tasks;
    tasks.push(tokio::spawn(manager::run_rotator(
        manager,
        pushes,
        receiver.clone(),
    )));
    if let Some(discovery) = discovery {
        tasks.push(tokio::spawn(http::serve(
            discovery,
            http::internal::service(discovery_state),
            Arc::clone(&metrics),
            receiver.clone(),
        )));
    }
    tasks.push(tokio::spawn(http::serve(
        api,
        http::api::router(Arc::clone(&state)),
        metrics,
        receiver,
    )));
    let discovery = discovery_addr.map_or("off".to_owned(), |a| a.to_string());
    tracing::info!(issuer = %config.issuer, discovery = %discovery, api = %api_addr, push_targets = config.push.len(), "tfe-oidc serving");
    Ok(Running {
        discovery_addr,
        api_addr,
        state,
        reloader,
        shutdown,
        tasks,
    })
}

/// Connections each listener may hold when its `max_connections` is unset: half of the file
/// descriptors the process may open (the soft limit is first raised to the hard one), less a
/// reserve for key files, the audit log and outgoing calls, at most 16384.
fn connection_budget() -> usize {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    if let (Some(current), Some(maximum)) = (limit.current, limit.maximum)
        && current < maximum
    {
        let raised = Rlimit {
            current: Some(maximum),
            maximum: Some(maximum),
        };
        if let Err(e) = setrlimit(Resource::Nofile, raised) {
            tracing::debug!(error = %e, "cannot raise the file descriptor limit");
        }
    }
    let files = getrlimit(Resource::Nofile).current.unwrap_or(1 << 20);
    (files.saturating_sub(128) / 2).clamp(16, 16384) as usize
}

/// Warns when configured caps add up to more connections than the process may open: the caps
/// then no longer keep one listener's flood from starving the other.
fn warn_over_budget(config: &Config, budget: usize) {
    let cap = |l: &ListenerConfig| l.max_connections.unwrap_or(budget);
    let total = cap(&config.discovery) + cap(&config.api);
    if total > budget * 2 {
        tracing::warn!(
            total,
            file_descriptors = budget * 2 + 128,
            "discovery.max_connections and api.max_connections add up to more connections than the file descriptor limit allows: a flood of one listener can starve the other; lower them or raise `ulimit -n`"
        );
    }
}

async fn bind(
    section: Section,
    config: &ListenerConfig,
    tls: Option<Arc<rustls::ServerConfig>>,
    connection_budget: usize,
) -> Result<Listener, StartError> {
    let (name, key) = (section.name(), Key::Listener(section, ListenerKey::Listen));
    let tcp = TcpListener::bind(config.listen)
        .await
        .map_err(|source| StartError::Bind {
            key: key.path().to_owned(),
            env: key.env().to_owned(),
            addr: config.listen,
            source,
        })?;
    if config.insecure_http && tls.is_none() {
        tracing::warn!(listener = name, addr = %config.listen, "insecure_http = true: serving plain HTTP on a non-loopback address");
    }
    Ok(Listener {
        name,
        tcp,
        tls: tls.map(|config| Arc::new(ArcSwap::new(config))),
        allow: config.allow.clone(),
        max_connections: config.max_connections.unwrap_or(connection_budget),
    })
}

fn local_addr(listener: &Listener) -> SocketAddr {
    listener
        .tcp
        .local_addr()
        .expect("a bound socket has an address")
}
