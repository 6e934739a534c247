//! Keeps each renewable Vault token of an exchange alive while COMMAND runs: `renew-self` at
//! two thirds of its lease, on the shared Vault client, at the address, namespace and CA the
//! exchange answered with. A failed renewal is retried (the token may still have a third of its
//! lease); a token Vault no longer renews (max TTL reached) is left to expire.

use std::time::Duration;

use serde_json::Value;
use tokio::task::JoinHandle;

use crate::vault::{Endpoint, Vault, VaultClients, VaultToken};

/// The bound of one renewal call.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// The renewal tasks of one run; `stop` ends them.
pub struct Renewals {
    tasks: Vec<JoinHandle<()>>,
}

impl Renewals {
    pub fn stop(self) {
        for task in self.tasks {
            task.abort();
        }
    }
}

/// Starts one task per renewable token in `answer["vault"]`.
pub fn start(answer: &Value) -> Renewals {
    let clients = VaultClients::new();
    let vault = &answer["vault"];
    let mut entries: Vec<(String, &Value)> = vec![("default".into(), &vault["default"])];
    for (tag, entry) in vault["aliases"].as_object().into_iter().flatten() {
        entries.push((tag.clone(), entry));
    }
    let tasks = entries
        .into_iter()
        .filter(|(_, e)| e["renewable"].as_bool() == Some(true))
        .filter_map(|(name, entry)| {
            let (client, token, lease) = renewable(&clients, entry)?;
            Some(tokio::spawn(keep_alive(name, client, token, lease)))
        })
        .collect();
    Renewals { tasks }
}

fn renewable(clients: &VaultClients, entry: &Value) -> Option<(Vault, VaultToken, u64)> {
    let lease = entry["lease_duration"].as_u64().filter(|l| *l > 0)?;
    let endpoint = Endpoint {
        address: entry["address"].as_str()?.to_owned(),
        namespace: entry["namespace"].as_str().map(str::to_owned),
        ca_pem: entry["ca_cert"].as_str().map(|p| p.as_bytes().to_vec()),
        timeout: CALL_TIMEOUT,
    };
    let token = VaultToken::new(entry["token"].as_str()?);
    match clients.connect(&endpoint) {
        Ok(client) => Some((client, token, lease)),
        Err(e) => {
            tracing::warn!(error = %e, "cannot renew a vault token of this run");
            None
        }
    }
}

async fn keep_alive(name: String, vault: Vault, token: VaultToken, mut lease: u64) {
    let mut wait = Duration::from_millis(lease * 2000 / 3);
    loop {
        tokio::time::sleep(wait).await;
        match vault.renew_self(&token, None).await {
            Ok(auth) if auth.renewable && auth.lease_duration > 0 => {
                tracing::info!(config = %name, lease_seconds = auth.lease_duration, "vault token renewed");
                lease = auth.lease_duration;
                wait = Duration::from_millis(lease * 2000 / 3);
            }
            Ok(auth) => {
                tracing::info!(config = %name, lease_seconds = auth.lease_duration, "vault token renewed for the last time");
                return;
            }
            Err(e) if e.is_bad_token() => {
                tracing::warn!(config = %name, error = %e, "vault token no longer valid; not renewing it");
                return;
            }
            Err(e) => {
                tracing::warn!(config = %name, error = %e, "cannot renew the vault token; retrying");
                wait = Duration::from_millis((lease * 1000 / 6).max(1000));
            }
        }
    }
}
