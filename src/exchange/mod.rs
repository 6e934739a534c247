//! The credential exchange: a run's workspace variables in, Vault tokens and cloud credentials
//! out, the way TFE's agent obtains Vault-backed dynamic credentials.
//!
//! - `lookup.rs`: TFE's variable forms and value rules; `variables.rs`: the typed plan.
//! - this file: one exchange, in order: parse the variables (400), check every Vault address
//!   against `exchange.allowed_vault_addrs` (403) and every audience against the token policy
//!   (400) before any token is minted, then mint each Vault configuration's token and log in to
//!   all of them at once, then read every backed engine at once, each with its configuration's
//!   Vault token. A failure after a login revokes the Vault tokens already obtained, so nothing
//!   is left behind.
//! - `response.rs`: the response's shape; `revoke.rs`: revoking the tokens of a response.
//!
//! It does not sign (the caller's `Minter` does, and audits) and does not speak HTTP.

pub mod lookup;
mod response;
mod revoke;
pub mod variables;

use std::collections::BTreeMap;
use std::time::Duration;

use futures_util::future::join_all;
use serde_json::Value;

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

/// What every exchange shares: the Vault pools and the `[exchange]` settings.
#[derive(Debug)]
pub struct Exchanger {
    pub clients: VaultClients,
    pub allowed_addrs: Vec<String>,
    pub default_timeout: Duration,
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
}

/// The step names of errors and of `tfe_oidc_vault_requests_total`.
pub const STEP_LOGIN: &str = "vault_login";
pub const STEP_REVOKE: &str = "revoke";

impl Exchanger {
    pub fn new(allowed_addrs: Vec<String>, default_timeout: Duration) -> Exchanger {
        Exchanger {
            clients: VaultClients::new(),
            allowed_addrs,
            default_timeout,
        }
    }

    /// One exchange for a run in `phase` at unix time `now`: the response body.
    pub async fn exchange(
        &self,
        variables: &BTreeMap<String, String>,
        phase: RunPhase,
        minter: &dyn Minter,
        metrics: &Metrics,
        now: u64,
    ) -> Result<Value, ExchangeError> {
        let plan = variables::parse(variables, phase, self.default_timeout)?;
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
        let result = self.run(&plan, minter, metrics, &mut logins).await;
        match result {
            Ok((reads, manual)) => Ok(response::render(&logins, &reads, &manual, now)),
            Err(e) => {
                revoke::quietly(&logins, metrics).await;
                Err(e)
            }
        }
    }

    /// Mints every configuration's token and every manual token (in order, each audited), logs
    /// in to every Vault at once, then reads every engine at once. Successful logins land in
    /// `logins` even when another step fails, so that the caller can revoke them.
    async fn run(
        &self,
        plan: &Plan,
        minter: &dyn Minter,
        metrics: &Metrics,
        logins: &mut Vec<Login>,
    ) -> Result<(Vec<Shaped>, Vec<(String, String)>), ExchangeError> {
        let mut manual = Vec::new();
        for wanted in &plan.manual {
            manual.push((
                wanted.env_name(),
                minter.mint(&wanted.audience).await?.token,
            ));
        }
        let mut pending = Vec::new();
        for config in &plan.vault {
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
        join_all(plan.backed.iter().map(|backed| {
            let login = logins
                .iter()
                .find(|l| l.config.name == backed.vault)
                .expect("variables::parse checks that the Vault configuration exists");
            read(login, backed, metrics)
        }))
        .await
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
        Err(VaultError::Decode(_) | VaultError::Setup(_)) => "invalid",
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
