//! One push target: its credentials, the read-modify-write of `auth/<mount>/config`, and the
//! task that repeats it at start, after every committed change and every `repair_interval`.
//!
//! OpenBao's (and Vault's) JWT config endpoint replaces the whole config on every write: a field
//! left out is reset (a write with only the keys drops `default_role`). So a push reads the
//! config, changes only the fields push mode owns, and writes all of it back. The key sources
//! that `jwt_validation_pubkeys` excludes (`oidc_discovery_url`, `jwks_url`, `jwks_pairs`) are
//! cleared. `oidc_client_secret` is never returned by a read, so a mount that also serves OIDC
//! logins loses it: push to a mount used for JWT logins only.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value};
use tokio::sync::watch;

use super::{BadJwk, Pushes, public_key_pem};
use crate::config::PushTarget;
use crate::keys::KeySnapshot;
use crate::vault::{Session, SessionError, Vault, VaultError};

/// The longest wait between two attempts of a failing push.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Fields a read returns that are not settings, or that a write of public keys must not carry.
const NOT_WRITTEN: &[&str] = &["status", "jwks_pairs"];

/// Why one push failed. Never holds a token: Vault's error text or a file's path.
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    /// No token: the token file or the AppRole login failed.
    #[error(transparent)]
    Session(#[from] SessionError),
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
    repair_interval: Duration,
    session: Session,
    issuer: String,
}

impl Pusher {
    pub(super) fn new(index: usize, target: &PushTarget, vault: Vault, issuer: &str) -> Pusher {
        Pusher {
            index,
            name: target.name(),
            mount: target.mount.clone(),
            repair_interval: target.repair_interval,
            session: Session::new(vault, target.auth.clone()),
            issuer: issuer.to_owned(),
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
        let token = self.session.token().await?;
        let path = format!("auth/{}/config", self.mount);
        let mut config = match self.session.vault().read(&token, &path, &[]).await {
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
            .session
            .vault()
            .write(&token, &path, &Value::Object(config))
            .await
        {
            Ok(_) => Ok(()),
            Err(source) => Err(self.refused(source, false)),
        }
    }

    /// The error of a refused call; a token Vault refused is dropped for a new one.
    fn refused(&mut self, source: VaultError, read: bool) -> PushError {
        self.session.refused(&source);
        let mount = self.mount.clone();
        if read {
            PushError::Read { mount, source }
        } else {
            PushError::Write { mount, source }
        }
    }
}
