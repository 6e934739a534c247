//! One push target: its credentials, the read-modify-write of `auth/<mount>/config`, and the
//! task that repeats it at start, after every committed change and every `repair_interval`.
//!
//! OpenBao's (and Vault's) JWT config endpoint replaces the whole config on every write: a field
//! left out is reset (a write with only the keys drops `default_role`). So a push reads the
//! config, changes only the fields push mode owns, and writes all of it back. The key sources
//! that `jwt_validation_pubkeys` excludes (`oidc_discovery_url`, `jwks_url`, `jwks_pairs`) are
//! cleared. `oidc_client_secret` is never returned by a read, so a mount that also serves OIDC
//! logins loses it: push to a mount used for JWT logins only.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value};
use tokio::sync::watch;

use super::{BadJwk, Pushes, public_key_pem};
use crate::config::{PushAuth, PushTarget};
use crate::keys::KeySnapshot;
use crate::vault::{Vault, VaultError, VaultToken};

/// The longest wait between two attempts of a failing push.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Fields a read returns that are not settings, or that a write of public keys must not carry.
const NOT_WRITTEN: &[&str] = &["status", "jwks_pairs"];

/// Why one push failed. Never holds a token: Vault's error text or a file's path.
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    /// The token file or the secret id file could not be read.
    #[error("cannot read {path}: {source}")]
    Credentials {
        path: String,
        source: std::io::Error,
    },
    /// The file holds no token.
    #[error("{0} is empty")]
    EmptyCredentials(String),
    /// The AppRole login failed.
    #[error("approle login: {0}")]
    Login(VaultError),
    /// Reading the mount's config failed.
    #[error("read auth/{mount}/config: {source}")]
    Read { mount: String, source: VaultError },
    /// Writing the mount's config failed.
    #[error("write auth/{mount}/config: {source}")]
    Write { mount: String, source: VaultError },
    /// A published key could not be written as PEM.
    #[error(transparent)]
    Key(#[from] BadJwk),
}

/// One target, owned by its task.
pub(super) struct Pusher {
    index: usize,
    name: String,
    mount: String,
    auth: PushAuth,
    repair_interval: Duration,
    vault: Vault,
    issuer: String,
    /// The AppRole login's token, until Vault refuses it.
    login: Option<VaultToken>,
}

impl Pusher {
    pub(super) fn new(index: usize, target: &PushTarget, vault: Vault, issuer: &str) -> Pusher {
        Pusher {
            index,
            name: target.name(),
            mount: target.mount.clone(),
            auth: target.auth.clone(),
            repair_interval: target.repair_interval,
            vault,
            issuer: issuer.to_owned(),
            login: None,
        }
    }

    /// Pushes every snapshot until `shutdown`; see the module documentation.
    pub(super) async fn run(
        mut self,
        pushes: Arc<Pushes>,
        mut keys: watch::Receiver<Arc<KeySnapshot>>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        loop {
            let snapshot = Arc::clone(&keys.borrow_and_update());
            let mut backoff = Duration::from_secs(1);
            loop {
                match self.push(&snapshot).await {
                    Ok(()) => {
                        pushes.acknowledged(self.index, &snapshot);
                        tracing::info!(target = %self.name, sequence = snapshot.sequence, keys = snapshot.set.keys.len(), "key set pushed");
                        break;
                    }
                    Err(e) => {
                        pushes.failed(self.index, &e);
                        tracing::error!(target = %self.name, error = %e, retry_in = ?backoff, "push failed: this vault may not hold the key set; rotation waits for it");
                    }
                }
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    changed = keys.changed() => {
                        if changed.is_err() { return; }
                        break;
                    }
                    _ = shutdown.changed() => return,
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
            if keys.has_changed().unwrap_or(false) {
                continue;
            }
            tokio::select! {
                changed = keys.changed() => if changed.is_err() { return },
                _ = tokio::time::sleep(self.repair_interval) => {}
                _ = shutdown.changed() => return,
            }
        }
    }

    /// Reads the mount's config, sets the three fields, writes it back.
    async fn push(&mut self, snapshot: &KeySnapshot) -> Result<(), PushError> {
        let pems = snapshot
            .set
            .keys
            .iter()
            .map(|k| public_key_pem(&k.jwk))
            .collect::<Result<Vec<_>, _>>()?;
        let token = self.token().await?;
        let path = format!("auth/{}/config", self.mount);
        let mut config = match self.vault.read(&token, &path, &[]).await {
            Ok(secret) => secret.data,
            Err(VaultError::Status { status: 404, .. }) => Map::new(),
            Err(source) => return Err(self.refused(source, true)),
        };
        for field in NOT_WRITTEN {
            config.remove(*field);
        }
        config.insert("oidc_discovery_url".into(), Value::from(""));
        config.insert("jwks_url".into(), Value::from(""));
        config.insert("jwt_validation_pubkeys".into(), Value::from(pems));
        config.insert("bound_issuer".into(), Value::from(self.issuer.clone()));
        config.insert("jwt_supported_algs".into(), Value::from(vec!["RS256"]));
        match self
            .vault
            .write(&token, &path, &Value::Object(config))
            .await
        {
            Ok(_) => Ok(()),
            Err(source) => Err(self.refused(source, false)),
        }
    }

    /// The error of a refused call; an AppRole token Vault refused is dropped for a new login.
    fn refused(&mut self, source: VaultError, read: bool) -> PushError {
        if source.is_bad_token() {
            self.login = None;
        }
        let mount = self.mount.clone();
        if read {
            PushError::Read { mount, source }
        } else {
            PushError::Write { mount, source }
        }
    }

    async fn token(&mut self) -> Result<VaultToken, PushError> {
        match &self.auth {
            PushAuth::TokenFile(path) => read_secret(path).await.map(VaultToken::new),
            PushAuth::AppRole {
                role_id,
                secret_id_file,
            } => {
                if let Some(token) = &self.login {
                    return Ok(token.clone());
                }
                let secret_id = read_secret(secret_id_file).await?;
                let auth = self
                    .vault
                    .login_approle(role_id, &secret_id)
                    .await
                    .map_err(PushError::Login)?;
                self.login = Some(auth.client_token.clone());
                Ok(auth.client_token)
            }
        }
    }
}

/// The first line of `path`, trimmed.
async fn read_secret(path: &PathBuf) -> Result<String, PushError> {
    let text = tokio::fs::read_to_string(path)
        .await
        .map_err(|source| PushError::Credentials {
            path: path.display().to_string(),
            source,
        })?;
    let secret = text.trim();
    if secret.is_empty() {
        return Err(PushError::EmptyCredentials(path.display().to_string()));
    }
    Ok(secret.to_owned())
}
