//! A Vault login kept alive: the token of a `VaultAuth` (a token file, or an AppRole login),
//! cached and fetched again when it is due or when Vault refused it. Push mode and the transit key
//! store hold one each.

use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use std::path::PathBuf;

use super::{Vault, VaultError, VaultToken};

/// How long a token read from a file is used before the file is read again (so that a token
/// replaced in place, by Vault Agent say, is picked up without a signal).
const TOKEN_FILE_TTL: Duration = Duration::from_secs(10);

/// How the service logs in to a Vault. Neither variant holds a secret: only where to read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VaultAuth {
    /// A Vault token, read from this file (so it can be replaced in place, by Vault Agent say).
    TokenFile(PathBuf),
    /// An AppRole login at `auth/approle/login`; the secret id is read from the file at each login.
    AppRole {
        role_id: String,
        secret_id_file: PathBuf,
    },
}

/// Why no token could be had. Never holds a secret: a path, or Vault's error text.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// The token file or the secret id file could not be read.
    #[error("cannot read {path}: {source}")]
    Credentials {
        path: String,
        source: std::io::Error,
    },
    /// The file holds nothing.
    #[error("{0} is empty")]
    Empty(String),
    /// The AppRole login failed.
    #[error("approle login: {0}")]
    Login(VaultError),
}

struct Held {
    token: VaultToken,
    fetch_after: Instant,
}

/// One login to one Vault; see the module documentation.
pub struct Session {
    vault: Vault,
    auth: VaultAuth,
    held: Mutex<Option<Held>>,
    /// Serialises fetching, so that many callers finding no token log in once.
    fetching: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("vault", &self.vault.endpoint().address)
            .field("auth", &self.auth)
            .finish()
    }
}

impl Session {
    pub fn new(vault: Vault, auth: VaultAuth) -> Session {
        Session {
            vault,
            auth,
            held: Mutex::new(None),
            fetching: tokio::sync::Mutex::new(()),
        }
    }

    pub fn vault(&self) -> &Vault {
        &self.vault
    }

    /// The token to call Vault with: the cached one while it is fresh, else a new one.
    pub async fn token(&self) -> Result<VaultToken, SessionError> {
        if let Some(token) = self.fresh() {
            return Ok(token);
        }
        let _one = self.fetching.lock().await;
        if let Some(token) = self.fresh() {
            return Ok(token);
        }
        let held = self.fetch().await?;
        let token = held.token.clone();
        *self.slot() = Some(held);
        Ok(token)
    }

    /// Drops the cached token when Vault refused it (`VaultError::is_bad_token`), so that the next
    /// call reads the file again or logs in again. Returns whether it did.
    pub fn refused(&self, error: &VaultError) -> bool {
        let bad = error.is_bad_token();
        if bad {
            *self.slot() = None;
        }
        bad
    }

    fn fresh(&self) -> Option<VaultToken> {
        let held = self.slot();
        held.as_ref()
            .filter(|h| Instant::now() < h.fetch_after)
            .map(|h| h.token.clone())
    }

    fn slot(&self) -> std::sync::MutexGuard<'_, Option<Held>> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn fetch(&self) -> Result<Held, SessionError> {
        match &self.auth {
            VaultAuth::TokenFile(path) => {
                let token = VaultToken::new(read_secret(path).await?);
                // In the background: a slow Vault must not hold up the call that needs the token.
                tokio::spawn(keep_alive(self.vault.clone(), token.clone()));
                Ok(Held {
                    token,
                    fetch_after: Instant::now() + TOKEN_FILE_TTL,
                })
            }
            VaultAuth::AppRole {
                role_id,
                secret_id_file,
            } => {
                let secret_id = read_secret(secret_id_file).await?;
                let auth = self
                    .vault
                    .login_approle(role_id, &secret_id)
                    .await
                    .map_err(SessionError::Login)?;
                // Log in again at two thirds of the lease, long before Vault forgets the token.
                let lease = match auth.lease_duration {
                    0 => Duration::from_secs(3600),
                    secs => Duration::from_secs(secs) * 2 / 3,
                };
                Ok(Held {
                    token: auth.client_token,
                    fetch_after: Instant::now() + lease,
                })
            }
        }
    }
}

/// Renews a renewable token from a file once less than half of its TTL is left (a periodic
/// token, `-period=24h`, lives as long as it is renewed; nothing else may renew it). Called at
/// each read of the file, so every `TOKEN_FILE_TTL`. Needs `auth/token/lookup-self` and
/// `renew-self` (in Vault's default policy, and in `deploy/vault/*-policy.hcl`); without them,
/// or for a token that is not renewable, the token is used as it is.
async fn keep_alive(vault: Vault, token: VaultToken) {
    let token = &token;
    let data = match vault.lookup_self(token).await {
        Ok(secret) => secret.data,
        Err(e) => {
            tracing::debug!(error = %e, "cannot look up the Vault token from the file; it is not renewed here");
            return;
        }
    };
    let number = |name: &str| data.get(name).and_then(serde_json::Value::as_u64);
    let renewable = data
        .get("renewable")
        .and_then(serde_json::Value::as_bool)
        .unwrap_or(false);
    let (Some(ttl), Some(full)) = (
        number("ttl"),
        number("period")
            .filter(|p| *p > 0)
            .or_else(|| number("creation_ttl")),
    ) else {
        return;
    };
    if !renewable || ttl == 0 || ttl * 2 > full {
        return;
    }
    match vault.renew_self(token, None).await {
        Ok(auth) => {
            tracing::info!(
                ttl_secs = auth.lease_duration,
                "renewed the Vault token from the file"
            )
        }
        Err(e) => {
            tracing::warn!(error = %e, ttl_secs = ttl, "cannot renew the Vault token from the file: it expires unless something else renews or replaces it")
        }
    }
}

/// The first line of `path`, trimmed.
pub async fn read_secret(path: &Path) -> Result<String, SessionError> {
    let text =
        tokio::fs::read_to_string(path)
            .await
            .map_err(|source| SessionError::Credentials {
                path: path.display().to_string(),
                source,
            })?;
    let secret = text.trim();
    if secret.is_empty() {
        return Err(SessionError::Empty(path.display().to_string()));
    }
    Ok(secret.to_owned())
}
