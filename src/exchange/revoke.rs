//! Revoking the Vault tokens of an exchange (`revoke-self`, which revokes their leases too).
//!
//! Idempotent: Vault answers a revoked, expired or unknown token with 403 `permission denied`
//! (or 400 `bad token`); that token is reported `not_valid`, not as an error.
//!
//! Every entry is checked before any call; then every token is revoked at once, all of them
//! within `REVOKE_DEADLINE` (a silent Vault holds a request for one deadline, not one per token).

use std::collections::BTreeMap;

use futures_util::future::join_all;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::time::Instant;

use super::lookup::{ConfigName, Found, path_value};
use super::response::Login;
use super::{ExchangeError, Exchanger, REVOKE_DEADLINE, STEP_REVOKE, count};
use crate::telemetry::Metrics;
use crate::vault::{Endpoint, Vault, VaultError, VaultToken, roots_from_pem};

/// The `vault` object of an exchange response; other fields of its entries are ignored.
#[derive(Debug, Deserialize)]
pub struct RevokeRequest {
    #[serde(default)]
    pub default: Option<RevokeEntry>,
    #[serde(default)]
    pub aliases: BTreeMap<String, RevokeEntry>,
}

/// One Vault login of a response.
#[derive(Debug, Deserialize)]
pub struct RevokeEntry {
    pub address: String,
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub ca_cert: Option<String>,
    pub token: VaultToken,
}

/// Revokes every token of `request`: `{"revoked": {"<config>": "revoked" | "not_valid"}}`.
/// A bad entry is refused before any token is revoked; then every token is attempted, and the
/// first failure is returned after all were tried.
pub async fn revoke(
    exchanger: &Exchanger,
    request: RevokeRequest,
    metrics: &Metrics,
) -> Result<Value, ExchangeError> {
    let entries = entries(request);
    if entries.is_empty() {
        return Err(body_error(
            "default",
            "there is no token to revoke: send the vault object of an exchange response",
        ));
    }
    let targets = entries
        .into_iter()
        .map(|(name, field, entry)| {
            let vault = client(exchanger, &name, &field, &entry)?;
            Ok((name, vault, entry.token))
        })
        .collect::<Result<Vec<_>, ExchangeError>>()?;
    let deadline = Instant::now() + REVOKE_DEADLINE;
    let answers = join_all(
        targets
            .iter()
            .map(|(name, vault, token)| revoke_one(name, vault, token, deadline, metrics)),
    )
    .await;
    let mut done = BTreeMap::new();
    let mut first_error = None;
    for ((name, _, _), answer) in targets.iter().zip(answers) {
        match answer {
            Ok(outcome) => {
                done.insert(name.as_str().to_owned(), outcome);
            }
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(json!({ "revoked": done })),
    }
}

fn entries(request: RevokeRequest) -> Vec<(ConfigName, String, RevokeEntry)> {
    let mut entries = Vec::new();
    if let Some(entry) = request.default {
        entries.push((ConfigName::Default, "default".to_owned(), entry));
    }
    for (tag, entry) in request.aliases {
        let field = format!("aliases.{tag}");
        entries.push((ConfigName::Tag(tag), field, entry));
    }
    entries
}

/// The Vault client of one entry, after checking its address, namespace and CA.
fn client(
    exchanger: &Exchanger,
    name: &ConfigName,
    field: &str,
    entry: &RevokeEntry,
) -> Result<Vault, ExchangeError> {
    let address = origin(&entry.address).ok_or_else(|| {
        body_error(
            &format!("{field}.address"),
            "is not a Vault address: use the address of the exchange response",
        )
    })?;
    let namespace = match &entry.namespace {
        Some(value) => {
            let variable = format!("{field}.namespace");
            let found = Found {
                variable: &variable,
                value,
            };
            Some(path_value(found).map_err(|e| body_error(&variable, &e.message))?)
        }
        None => None,
    };
    let ca_pem = entry.ca_cert.as_ref().map(|pem| pem.as_bytes().to_vec());
    if let Some(pem) = &ca_pem {
        roots_from_pem(pem).map_err(|e| body_error(&format!("{field}.ca_cert"), &e.to_string()))?;
    }
    let endpoint = Endpoint {
        address,
        namespace,
        ca_pem,
        timeout: exchanger.default_timeout,
    };
    exchanger.allowed_client(&endpoint, &format!("{field}.address"), name)
}

/// Revokes one token by `deadline`.
async fn revoke_one(
    name: &ConfigName,
    vault: &Vault,
    token: &VaultToken,
    deadline: Instant,
    metrics: &Metrics,
) -> Result<&'static str, ExchangeError> {
    let answer = bounded(vault.revoke_self(token), deadline).await;
    match answer {
        Err(e) if e.is_bad_token() => {
            metrics.vault_request(STEP_REVOKE, "not_valid");
            Ok("not_valid")
        }
        answer => {
            count(metrics, STEP_REVOKE, &answer);
            answer
                .map(|()| "revoked")
                .map_err(|source| ExchangeError::Vault {
                    step: STEP_REVOKE,
                    config: name.as_str().to_owned(),
                    source,
                })
        }
    }
}

fn origin(address: &str) -> Option<String> {
    let url = reqwest::Url::parse(address).ok()?;
    let plain =
        matches!(url.scheme(), "http" | "https") && url.host().is_some() && url.path() == "/";
    plain.then(|| url.origin().ascii_serialization())
}

fn body_error(field: &str, message: &str) -> ExchangeError {
    ExchangeError::Body {
        field: field.to_owned(),
        message: message.to_owned(),
    }
}

/// `call`, failed with a timeout at `deadline`.
async fn bounded<T>(
    call: impl Future<Output = Result<T, VaultError>>,
    deadline: Instant,
) -> Result<T, VaultError> {
    tokio::time::timeout_at(deadline, call)
        .await
        .unwrap_or(Err(VaultError::Timeout(REVOKE_DEADLINE)))
}

/// Revokes the tokens of a failed, cut-off or undelivered exchange at once, within
/// `REVOKE_DEADLINE`, logging (never returning) what fails; returns how many were revoked.
pub(super) async fn quietly(logins: &[Login], metrics: &Metrics) -> usize {
    let deadline = Instant::now() + REVOKE_DEADLINE;
    let answers = join_all(
        logins
            .iter()
            .map(|login| bounded(login.vault.revoke_self(&login.auth.client_token), deadline)),
    )
    .await;
    let mut revoked = 0;
    for (login, answer) in logins.iter().zip(answers) {
        count(metrics, STEP_REVOKE, &answer);
        match answer {
            Ok(()) => revoked += 1,
            Err(e) => {
                tracing::warn!(config = login.config.name.as_str(), error = %e, "cannot revoke the vault token of an exchange whose answer was not delivered")
            }
        }
    }
    revoked
}
