//! Revoking the Vault tokens of an exchange (`revoke-self`, which revokes their leases too).
//!
//! Idempotent: Vault answers a revoked, expired or unknown token with 403 `permission denied`
//! (or 400 `bad token`); that token is reported `not_valid`, not as an error.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::{Value, json};

use super::lookup::{ConfigName, Found, path_value};
use super::response::Login;
use super::{ExchangeError, Exchanger, STEP_REVOKE, count};
use crate::telemetry::Metrics;
use crate::vault::{Endpoint, VaultToken, roots_from_pem};

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
/// Every token is attempted; the first failure is returned after all were tried.
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
    let mut done = BTreeMap::new();
    let mut first_error = None;
    for (name, field, entry) in &entries {
        match revoke_one(exchanger, name, field, entry, metrics).await {
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

async fn revoke_one(
    exchanger: &Exchanger,
    name: &ConfigName,
    field: &str,
    entry: &RevokeEntry,
    metrics: &Metrics,
) -> Result<&'static str, ExchangeError> {
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
    let vault = exchanger.allowed_client(&endpoint, &format!("{field}.address"), name)?;
    let answer = vault.revoke_self(&entry.token).await;
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

/// Revokes the tokens of a failed exchange, logging (never returning) what fails.
pub(super) async fn quietly(logins: &[Login], metrics: &Metrics) {
    for login in logins {
        let answer = login.vault.revoke_self(&login.auth.client_token).await;
        count(metrics, STEP_REVOKE, &answer);
        if let Err(e) = answer {
            tracing::warn!(config = login.config.name.as_str(), error = %e, "cannot revoke the vault token of a failed exchange");
        }
    }
}
