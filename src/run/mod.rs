//! `tfe-oidc run`: the agent side of the credential exchange, for any runner.
//!
//! It owns one run phase from a runner's point of view: the workspace variables taken from its
//! own environment, the call to `POST /v1/credentials` (`api.rs`), the private directory of
//! credential files and the `TF_VAR_tfc_*_dynamic_credentials` it points to (`files.rs`), the
//! child command with its signals (`child.rs`), the renewal of the Vault tokens while the child
//! runs (`renew.rs`), then `POST /v1/credentials/revoke` and the removal of the directory.
//!
//! It does not mint, log in to Vault or read an engine: the service does, in the exchange.
//! Nothing it prints, logs or passes in the child's arguments holds a secret.

mod api;
mod child;
mod files;
mod renew;

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::Value;

pub use api::{ApiClient, ApiToken};
pub use child::Signals;

/// Everything `run` needs, parsed from its flags.
pub struct RunOptions {
    pub api: ApiClient,
    /// The `run` member of the exchange body: organization, project, workspace, run.
    pub run: Value,
    /// COMMAND and its arguments, passed as they are.
    pub command: Vec<OsString>,
}

/// Why `run` stopped before COMMAND started, or could not clean up.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// A flag or a file it names is unusable.
    #[error("{0}")]
    Usage(String),
    /// The API refused the request as invalid (400): a variable or a run field, named.
    #[error("the credential exchange refused the request: {0}")]
    Invalid(String),
    /// The API refused the caller or the Vault address (401, 403).
    #[error("the credential exchange refused the call ({status}): {message}")]
    Refused { status: u16, message: String },
    /// The API cannot be reached, or failed (5xx other than 502).
    #[error("the tfe-oidc api is unavailable: {0}")]
    Unavailable(String),
    /// A Vault call of the exchange failed (502).
    #[error("vault failed during the credential exchange: {0}")]
    Vault(String),
    /// The credential files cannot be written.
    #[error("cannot write the credential files: {0}")]
    Files(std::io::Error),
    /// COMMAND cannot be started.
    #[error("cannot run {command}: {source}")]
    Spawn {
        command: String,
        source: std::io::Error,
    },
}

/// The variable families `run` forwards to the exchange.
const FORWARDED: [&str; 3] = [
    "TFC_VAULT_",
    "TFC_DEFAULT_VAULT_",
    "TFC_WORKLOAD_IDENTITY_AUDIENCE",
];

/// The workspace variables in `env` that the exchange reads; the others stay here.
pub fn variables(env: impl Iterator<Item = (OsString, OsString)>) -> BTreeMap<String, String> {
    env.filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .filter(|(k, _)| FORWARDED.iter().any(|p| k.starts_with(p)))
        .collect()
}

/// One run phase: exchange, files, wait, COMMAND, renewals, revocation, cleanup. The exit
/// status of COMMAND (128 + signal when a signal ended it or `run` itself).
pub async fn execute(
    options: RunOptions,
    variables: BTreeMap<String, String>,
    mut signals: Signals,
) -> Result<u8, RunError> {
    let body = serde_json::json!({"run": options.run, "variables": variables});
    let answer = options.api.exchange(&body).await?;
    let outcome = use_credentials(&options, &answer, &mut signals).await;
    revoke(&options.api, &answer).await;
    outcome
}

/// Writes the files, waits for `not_before`, runs COMMAND with the renewals; the directory is
/// gone when this returns, whatever happened.
async fn use_credentials(
    options: &RunOptions,
    answer: &Value,
    signals: &mut Signals,
) -> Result<u8, RunError> {
    let dir = files::PrivateDir::create().map_err(RunError::Files)?;
    let env = files::write_all(&dir, answer).map_err(RunError::Files)?;
    if let Some(signal) = wait_until(answer["not_before"].as_u64(), signals).await {
        return Ok(128 + signal);
    }
    let renewals = renew::start(answer);
    let status = child::run(&options.command, &env, signals).await;
    renewals.stop();
    drop(dir);
    status
}

/// Sleeps until `not_before` (unix seconds); a SIGINT or SIGTERM first is returned.
async fn wait_until(not_before: Option<u64>, signals: &mut Signals) -> Option<u8> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let wait = Duration::from_secs(not_before.unwrap_or(0).saturating_sub(now));
    if !wait.is_zero() {
        tracing::info!(
            seconds = wait.as_secs(),
            "waiting for not_before before running the command"
        );
    }
    tokio::select! {
        biased;
        signal = signals.next() => Some(signal),
        _ = tokio::time::sleep(wait) => None,
    }
}

/// Revokes the Vault tokens of `answer`; a failure is reported, never fatal.
async fn revoke(api: &ApiClient, answer: &Value) {
    let vault = &answer["vault"];
    let any =
        !vault["default"].is_null() || vault["aliases"].as_object().is_some_and(|a| !a.is_empty());
    if !any {
        return;
    }
    match api.revoke(vault).await {
        Ok(done) => tracing::info!(revoked = %done["revoked"], "vault tokens revoked"),
        Err(e) => eprintln!("tfe-oidc: cannot revoke the vault tokens of this run: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_exchange_variables_are_forwarded() {
        let env = [
            ("TFC_VAULT_ADDR", "a"),
            ("TFC_DEFAULT_VAULT_RUN_ROLE", "r"),
            ("TFC_WORKLOAD_IDENTITY_AUDIENCE_X", "aud"),
            ("TFC_AWS_PROVIDER_AUTH", "true"),
            ("TFE_OIDC_RUN_API_TOKEN_FILE", "/secret"),
            ("PATH", "/bin"),
        ]
        .map(|(k, v)| (OsString::from(k), OsString::from(v)));
        let forwarded: Vec<String> = variables(env.into_iter()).into_keys().collect();
        assert_eq!(
            forwarded,
            [
                "TFC_DEFAULT_VAULT_RUN_ROLE",
                "TFC_VAULT_ADDR",
                "TFC_WORKLOAD_IDENTITY_AUDIENCE_X"
            ]
        );
    }
}
