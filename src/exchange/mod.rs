//! The credential exchange: a run's workspace variables in, Vault tokens and cloud credentials
//! out, the way TFE's agent obtains Vault-backed dynamic credentials.
//!
//! - `lookup.rs`: TFE's variable forms and value rules; `variables.rs`: the typed plan.
//! - this file: one exchange, in order: parse the variables (400), bound their number of
//!   configurations (400), check every Vault address against `exchange.allowed_vault_addrs`
//!   (403) and every audience against the token policy (400) before any token is minted, then
//!   mint each Vault configuration's token and log in to all of them at once, then read every
//!   backed engine at once, each with its configuration's Vault token. A failure after a login
//!   revokes the Vault tokens already obtained, so nothing is left behind.
//! - cancellation: an exchange runs on `Exchanger::tasks`, not inside the request, so a client
//!   that goes away never drops a login whose answer is on its way. Its `CancellationToken`
//!   fires when the client goes away or shutdown cuts it off; the exchange stops at the next safe
//!   point (never during a login) and revokes what it obtained. A finished exchange is an
//!   `Issued` answer, which revokes its Vault tokens when dropped without being delivered.
//! - `response.rs`: the response's shape; `revoke.rs`: revoking the tokens of a response.
//!
//! It does not sign (the caller's `Minter` does, and audits) and does not speak HTTP.

pub mod lookup;
mod response;
mod revoke;
pub mod variables;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use lookup::{ConfigName, VariableError};
pub use revoke::{RevokeRequest, revoke};

use crate::telemetry::Metrics;
use crate::token::IssuedToken;
use crate::token::claims::{Audience, RunPhase};
use crate::vault::{Vault, VaultClients, VaultError};
use response::{Login, Shaped};
use variables::{BackedConfig, Plan};

/// Mints the identity token of one Vault login, for the run being exchanged. The API
/// implements it with the issuer, the current signing key and the audit trail.
pub trait Minter: Send + Sync {
    /// Why `audience` may not be minted, if it may not (the token policy's allowlist).
    fn refuses(&self, audience: &Audience) -> Option<String>;
    /// A signed token for the run with `audience` (signing may call Vault: the transit store).
    fn mint<'a>(
        &'a self,
        audience: &'a Audience,
    ) -> futures_util::future::BoxFuture<'a, Result<IssuedToken, ExchangeError>>;
}

/// The most configurations one exchange may ask for: Vault logins, engine reads and manual
/// audiences together (docs/reference.md §4.6).
pub const MAX_CONFIGURATIONS: usize = 16;

/// How long the revocation of one exchange's tokens, or of one revocation request, may take in
/// all; each call is also bounded by its own timeout.
pub const REVOKE_DEADLINE: Duration = Duration::from_secs(8);

/// What every exchange shares: the Vault pools, the `[exchange]` settings, and the exchanges and
/// revocations in flight.
#[derive(Debug)]
pub struct Exchanger {
    pub clients: VaultClients,
    pub allowed_addrs: Vec<String>,
    pub default_timeout: Duration,
    /// The largest body `POST /v1/credentials/revoke` accepts; no answer's `vault` object is
    /// larger (`revoke_body_limit`).
    pub revoke_limit: usize,
    /// Every exchange and every revocation of an undelivered answer: shutdown waits for them.
    tasks: TaskTracker,
    /// Cancelled when shutdown cuts off the exchanges still running; each exchange's token is
    /// a child of it.
    stopping: CancellationToken,
}

/// Why an exchange was cut off, as the audit records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cutoff {
    /// The client went away before the answer was ready.
    ClientGone,
    /// Shutdown stopped it (docs/reference.md §1, `serve`).
    Shutdown,
}

impl Cutoff {
    pub fn as_str(self) -> &'static str {
        match self {
            Cutoff::ClientGone => "client_gone",
            Cutoff::Shutdown => "shutdown",
        }
    }
}

/// Why an exchange or a revocation failed.
#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    /// A workspace variable is wrong (400; `field` is `variables.<NAME>`).
    #[error(transparent)]
    Variable(#[from] VariableError),
    /// A value of a revocation body is wrong (400).
    #[error("{field}: {message}")]
    Body { field: String, message: String },
    /// A Vault address outside `exchange.allowed_vault_addrs` (403).
    #[error(
        "{variable}: {address:?} is not an allowed Vault address ({allowed}); add it to exchange.allowed_vault_addrs"
    )]
    NotAllowed {
        variable: String,
        address: String,
        allowed: String,
    },
    /// A Vault call failed (502): the step, the configuration and Vault's own text.
    #[error("{step} failed for configuration {config}: {source}")]
    Vault {
        step: &'static str,
        config: String,
        source: VaultError,
    },
    /// No token can be minted now, e.g. no current signing key (503).
    #[error("{0}")]
    Unavailable(String),
    /// The exchange was cut off before its answer was ready; what it had obtained is revoked
    /// (503, seen only at shutdown: a client that went away reads no answer).
    #[error(
        "the exchange was cut off ({}) and the vault tokens it had obtained were revoked: retry{}",
        .0.as_str(),
        if *.0 == Cutoff::Shutdown { " once the service is back, or on another replica" } else { "" }
    )]
    Cancelled(Cutoff),
}

/// The step names of errors and of `tfe_oidc_vault_requests_total`.
pub const STEP_LOGIN: &str = "vault_login";
pub const STEP_REVOKE: &str = "revoke";

impl Exchanger {
    /// `max_body` is `api.max_body`, the bound of an exchange request.
    pub fn new(
        allowed_addrs: Vec<String>,
        default_timeout: Duration,
        max_body: usize,
    ) -> Exchanger {
        Exchanger {
            clients: VaultClients::new(),
            allowed_addrs,
            default_timeout,
            revoke_limit: revoke_body_limit(max_body),
            tasks: TaskTracker::new(),
            stopping: CancellationToken::new(),
        }
    }

    /// The cancellation of one new exchange: fired by its caller, or by `cut_off`.
    pub fn cancellation(&self) -> CancellationToken {
        self.stopping.child_token()
    }

    /// Runs `task` (an exchange) where a client that goes away cannot drop it, tracked for
    /// shutdown.
    pub fn spawn<F>(&self, task: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: std::future::Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.tasks.spawn(task)
    }

    /// Cuts off every exchange still running: each revokes what it obtained and answers 503.
    pub fn cut_off(&self) {
        self.stopping.cancel();
    }

    /// After `cut_off`: waits up to `limit` for the exchanges and revocations still running.
    pub async fn drain(&self, limit: Duration) {
        self.tasks.close();
        if tokio::time::timeout(limit, self.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                running = self.tasks.len(),
                "exchanges or revocations still running at exit: their vault tokens may stay alive until they expire"
            );
        }
    }

    /// One exchange for a run in `phase` at unix time `now`: the answer, to be delivered.
    /// `cancel` stops it at the next safe point; what it obtained is then revoked.
    pub async fn exchange(
        &self,
        variables: &BTreeMap<String, String>,
        phase: RunPhase,
        minter: &dyn Minter,
        metrics: &Arc<Metrics>,
        now: u64,
        cancel: &CancellationToken,
    ) -> Result<Issued, ExchangeError> {
        let plan = variables::parse(variables, phase, self.default_timeout)?;
        let asked = plan.vault.len() + plan.backed.len() + plan.manual.len();
        if asked > MAX_CONFIGURATIONS {
            return Err(ExchangeError::Body {
                field: "variables".into(),
                message: format!(
                    "{asked} configurations (Vault logins, engine reads and manual audiences together) are more than the {MAX_CONFIGURATIONS} one exchange may ask for: split them over several exchanges or remove unused aliases"
                ),
            });
        }
        for config in &plan.vault {
            self.check_address(&config.endpoint.address, &config.address_variable)?;
            if let Some(why) = minter.refuses(&config.audience) {
                return Err(VariableError::new(&config.audience_variable, why).into());
            }
        }
        for manual in &plan.manual {
            if let Some(why) = minter.refuses(&manual.audience) {
                return Err(VariableError::new(&manual.variable, why).into());
            }
        }
        let mut logins = Vec::new();
        let result = self.run(&plan, minter, metrics, &mut logins, cancel).await;
        let result = result.and_then(|(reads, manual)| {
            let body = response::render(&logins, &reads, &manual, now);
            self.check_revocable(&body)?;
            Ok(body)
        });
        match result {
            Ok(body) => Ok(Issued {
                body: Some(body),
                logins,
                tasks: self.tasks.clone(),
                metrics: Arc::clone(metrics),
            }),
            Err(e) => {
                revoke::quietly(&logins, metrics).await;
                Err(e)
            }
        }
    }

    fn cutoff(&self) -> ExchangeError {
        ExchangeError::Cancelled(match self.stopping.is_cancelled() {
            true => Cutoff::Shutdown,
            false => Cutoff::ClientGone,
        })
    }

    /// Mints every configuration's token and every manual token (in order, each audited), logs
    /// in to every Vault at once, then reads every engine at once. Successful logins land in
    /// `logins` even when another step fails, so that the caller can revoke them. `cancel` is
    /// obeyed between mints, after the logins and during the reads; never during a login, whose
    /// token would then be created and never known.
    async fn run(
        &self,
        plan: &Plan,
        minter: &dyn Minter,
        metrics: &Metrics,
        logins: &mut Vec<Login>,
        cancel: &CancellationToken,
    ) -> Result<(Vec<Shaped>, Vec<(String, String)>), ExchangeError> {
        let mut manual = Vec::new();
        for wanted in &plan.manual {
            if cancel.is_cancelled() {
                return Err(self.cutoff());
            }
            manual.push((
                wanted.env_name(),
                minter.mint(&wanted.audience).await?.token,
            ));
        }
        let mut pending = Vec::new();
        for config in &plan.vault {
            if cancel.is_cancelled() {
                return Err(self.cutoff());
            }
            let vault = self
                .clients
                .connect(&config.endpoint)
                .map_err(|e| vault_error(STEP_LOGIN, &config.name, e))?;
            pending.push((config, vault, minter.mint(&config.audience).await?));
        }
        let answers = join_all(pending.iter().map(|(config, vault, issued)| {
            vault.login_jwt(&config.auth_path, &config.role, &issued.token)
        }))
        .await;
        let mut first_error = None;
        for ((config, vault, _), answer) in pending.into_iter().zip(answers) {
            count(metrics, STEP_LOGIN, &answer);
            match answer {
                Ok(auth) => logins.push(Login {
                    config: config.clone(),
                    vault,
                    auth,
                }),
                Err(e) => {
                    first_error.get_or_insert(vault_error(STEP_LOGIN, &config.name, e));
                }
            }
        }
        if let Some(e) = first_error {
            return Err(e);
        }
        let logins = &*logins;
        let reads = join_all(plan.backed.iter().map(|backed| {
            let login = logins
                .iter()
                .find(|l| l.config.name == backed.vault)
                .expect("variables::parse checks that the Vault configuration exists");
            read(login, backed, metrics)
        }));
        // A read dropped half-way leaves nothing: revoking its token revokes its lease.
        let reads = tokio::select! {
            reads = reads => reads,
            () = cancel.cancelled() => return Err(self.cutoff()),
        };
        reads
            .into_iter()
            .collect::<Result<_, _>>()
            .map(|reads| (reads, manual))
    }

    /// A Vault client for `address`, after checking it against the allowlist.
    pub(crate) fn allowed_client(
        &self,
        endpoint: &crate::vault::Endpoint,
        variable: &str,
        config: &ConfigName,
    ) -> Result<Vault, ExchangeError> {
        self.check_address(&endpoint.address, variable)?;
        self.clients
            .connect(endpoint)
            .map_err(|e| vault_error(STEP_REVOKE, config, e))
    }

    /// Refuses an answer whose `vault` object `POST /v1/credentials/revoke` would not accept
    /// (only a Vault answering an enormous `policies` list can cause it).
    fn check_revocable(&self, body: &Value) -> Result<(), ExchangeError> {
        let size = serde_json::to_vec(&body["vault"]).map_or(usize::MAX, |v| v.len());
        if size <= self.revoke_limit {
            return Ok(());
        }
        Err(ExchangeError::Vault {
            step: STEP_LOGIN,
            config: "default".into(),
            source: VaultError::Decode(format!(
                "the vault object of the answer ({size} bytes) is larger than a revocation may send ({} bytes): look for a role with an oversized policies list",
                self.revoke_limit
            )),
        })
    }

    fn check_address(&self, address: &str, variable: &str) -> Result<(), ExchangeError> {
        if self.allowed_addrs.iter().any(|a| same_address(a, address)) {
            return Ok(());
        }
        let allowed = match self.allowed_addrs.is_empty() {
            true => "none is configured".to_owned(),
            false => format!("allowed: {}", self.allowed_addrs.join(", ")),
        };
        Err(ExchangeError::NotAllowed {
            variable: variable.to_owned(),
            address: address.to_owned(),
            allowed,
        })
    }
}

/// An exchange's answer, not yet delivered. Dropped without `deliver` (the client went away
/// once it was ready), it revokes its Vault tokens in the background and audits that.
pub struct Issued {
    body: Option<Value>,
    logins: Vec<Login>,
    tasks: TaskTracker,
    metrics: Arc<Metrics>,
}

impl Issued {
    /// The response body, handed to the caller: its tokens are the caller's from now on.
    pub fn deliver(mut self) -> Value {
        self.logins.clear();
        self.body.take().expect("an answer is delivered once")
    }
}

impl Drop for Issued {
    fn drop(&mut self) {
        if self.logins.is_empty() {
            return;
        }
        let logins = std::mem::take(&mut self.logins);
        let metrics = Arc::clone(&self.metrics);
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::error!(
                tokens = logins.len(),
                "an undelivered exchange answer cannot be revoked: no runtime"
            );
            return;
        };
        self.tasks.spawn_on(
            async move {
                let revoked = revoke::quietly(&logins, &metrics).await;
                tracing::warn!(target: "audit", event = "credentials_abandoned", reason = Cutoff::ClientGone.as_str(), revoked, tokens = logins.len(), "the exchange's answer was not delivered: its vault tokens were revoked");
            },
            &runtime,
        );
    }
}

/// The body limit of `POST /v1/credentials/revoke` for an `api.max_body` of `max_body`: room for
/// `MAX_CONFIGURATIONS` Vault entries, each with a CA as large as a whole request (one
/// `TFC_DEFAULT_VAULT_ENCODED_CACERT` is repeated in every entry) and 64 KiB for the rest.
pub fn revoke_body_limit(max_body: usize) -> usize {
    MAX_CONFIGURATIONS * (max_body + (64 << 10))
}

async fn read(
    login: &Login,
    backed: &BackedConfig,
    metrics: &Metrics,
) -> Result<Shaped, ExchangeError> {
    let step = backed.engine.step();
    let query: Vec<(&str, &str)> = backed.query.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let answer = login
        .vault
        .read(&login.auth.client_token, &backed.path, &query)
        .await;
    count(metrics, step, &answer);
    let secret = answer.map_err(|e| vault_error(step, &backed.name, e))?;
    response::shape(backed, &secret).map_err(|e| vault_error(step, &backed.name, e))
}

/// Whether an allowlist entry names `address` (an origin, as `variables` normalises it).
fn same_address(entry: &str, address: &str) -> bool {
    match reqwest::Url::parse(entry) {
        Ok(url) if url.path() == "/" => url.origin().ascii_serialization() == address,
        _ => entry.trim_end_matches('/') == address,
    }
}

fn vault_error(step: &'static str, config: &ConfigName, source: VaultError) -> ExchangeError {
    ExchangeError::Vault {
        step,
        config: config.as_str().to_owned(),
        source,
    }
}

/// Counts one Vault call in `tfe_oidc_vault_requests_total{step,outcome}`.
pub(crate) fn count<T>(metrics: &Metrics, step: &'static str, answer: &Result<T, VaultError>) {
    metrics.vault_request(step, outcome(answer));
}

fn outcome<T>(answer: &Result<T, VaultError>) -> &'static str {
    match answer {
        Ok(_) => "ok",
        Err(VaultError::Status { .. }) => "error",
        Err(VaultError::Timeout(_)) => "timeout",
        Err(VaultError::Connect(_)) => "unreachable",
        Err(VaultError::Decode(_) | VaultError::Setup(_) | VaultError::TooLarge) => "invalid",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allowlist_entries_match_as_origins() {
        assert!(same_address(
            "https://Vault.internal:8200/",
            "https://vault.internal:8200"
        ));
        assert!(same_address(
            "https://vault.internal:443",
            "https://vault.internal"
        ));
        assert!(!same_address(
            "https://vault.internal:8201",
            "https://vault.internal:8200"
        ));
        assert!(!same_address(
            "http://vault.internal:8200",
            "https://vault.internal:8200"
        ));
    }
}
