//! `tfe-oidc run`: the agent side of the credential exchange, for any runner.
//!
//! It owns one run phase from a runner's point of view: the caller's credential taken over from
//! a file or a descriptor (`handover.rs`), the workspace variables taken from its own
//! environment, the call to `POST /v1/credentials` (`api.rs`), the check of its answer and the
//! child's environment (`environ.rs`), the private directory of credential files and the
//! `TF_VAR_tfc_*_dynamic_credentials` it points to (`files.rs`), the child command with its
//! signals (`child.rs`), the renewal of the Vault tokens while the child runs (`renew.rs`), then
//! `POST /v1/credentials/revoke` and the removal of the directory.
//!
//! It does not mint, log in to Vault or read an engine: the service does, in the exchange.
//! Nothing it prints, logs or passes in the child's arguments or environment holds its own
//! credential.

mod api;
mod child;
mod environ;
mod files;
mod handover;
mod renew;

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::Value;

pub use api::ApiClient;
pub use child::Signals;
pub use files::temp_base;
pub use handover::{ApiToken, harden};

/// Everything `run` needs, parsed from its flags.
pub struct RunOptions {
    pub api: ApiClient,
    /// The `run` member of the exchange body: organization, project, workspace, run.
    pub run: Value,
    /// COMMAND and its arguments, passed as they are.
    pub command: Vec<OsString>,
    /// Where the private directory is made: an absolute path (`temp_base`).
    pub tmp: PathBuf,
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
    /// The API answered 200 with something `run` must not pass on (an `env` name outside the
    /// documented ones, a tag that is not one).
    #[error("the tfe-oidc api's answer is refused, and COMMAND was not run: {0}")]
    Answer(String),
    /// The credential files cannot be written.
    #[error("cannot write the credential files: {0}")]
    Files(std::io::Error),
    /// COMMAND exited 0, but the run's Vault tokens could not be revoked.
    #[error("the command succeeded, but the vault tokens of this run could not be revoked: {0}")]
    NotRevoked(String),
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
    match (revoke(&options.api, &answer).await, outcome) {
        (Ok(()), outcome) => outcome,
        (Err(why), Ok(0)) => Err(RunError::NotRevoked(why)),
        (Err(why), outcome) => {
            let _ = writeln!(
                std::io::stderr(),
                "tfe-oidc: the vault tokens of this run could not be revoked: {why}"
            );
            outcome
        }
    }
}

/// Writes the files, waits for `not_before`, runs COMMAND with the renewals; the directory is
/// gone when this returns, whatever happened.
async fn use_credentials(
    options: &RunOptions,
    answer: &Value,
    signals: &mut Signals,
) -> Result<u8, RunError> {
    environ::check_answer(answer).map_err(RunError::Answer)?;
    let dir = files::PrivateDir::create(&options.tmp).map_err(RunError::Files)?;
    let written = files::write_all(&dir, answer).map_err(RunError::Files)?;
    if let Some(signal) = wait_until(answer["not_before"].as_u64(), signals).await {
        return Ok(child::status_of(signal));
    }
    let env = environ::for_command(
        std::env::vars_os(),
        &written.env,
        written.vault_ca.as_deref(),
    );
    let renewals = renew::start(answer);
    let status = child::run(&options.command, env, signals).await;
    renewals.stop();
    drop(dir);
    status
}

/// Sleeps until `not_before` (unix seconds); a signal first is returned.
async fn wait_until(
    not_before: Option<u64>,
    signals: &mut Signals,
) -> Option<rustix::process::Signal> {
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

/// How many times a revocation is tried when the API or Vault is unavailable.
const REVOKE_ATTEMPTS: u32 = 3;

/// Revokes the Vault tokens of `answer`, trying again after 1 s and 2 s while the API or Vault
/// is unavailable; why it failed, with how long the tokens stay valid.
async fn revoke(api: &ApiClient, answer: &Value) -> Result<(), String> {
    let vault = &answer["vault"];
    let entries: Vec<&Value> = std::iter::once(&vault["default"])
        .chain(
            vault["aliases"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(_, e)| e),
        )
        .filter(|e| !e.is_null())
        .collect();
    if entries.is_empty() {
        return Ok(());
    }
    let mut attempt = 1;
    let error = loop {
        match api.revoke(vault).await {
            Ok(done) => {
                tracing::info!(revoked = %done["revoked"], "vault tokens revoked");
                return Ok(());
            }
            Err(e @ (RunError::Unavailable(_) | RunError::Vault(_)))
                if attempt < REVOKE_ATTEMPTS =>
            {
                tracing::warn!(error = %e, attempt, "cannot revoke the vault tokens yet; trying again");
                tokio::time::sleep(Duration::from_secs(attempt.into())).await;
                attempt += 1;
            }
            Err(e) => break e,
        }
    };
    let longest = entries
        .iter()
        .filter_map(|e| e["lease_duration"].as_u64())
        .max()
        .unwrap_or(0);
    Err(format!(
        "{error}: {} token(s) stay valid until their lease ends (up to {longest} s after the last renewal)",
        entries.len()
    ))
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
            ("BAO_TOKEN", "root"),
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
