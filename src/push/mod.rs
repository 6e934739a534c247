//! Push mode: the issuer writes the public keys into each Vault JWT auth mount itself.
//!
//! One task per `[[push]]` target (`target.rs`) watches the key manager's snapshots and writes
//! `auth/<mount>/config` at start, after every committed change and every `repair_interval`,
//! retrying failures with backoff. What each target has acknowledged is kept here, in `Pushes`,
//! which is also the rotator's [`SignGate`]: a key may sign only once every target holds it.
//! This module does not decide when keys change (`keys` does) and knows nothing of HTTP.

mod target;

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::{ConfigError, Issuer, Problem, PushTarget, VaultAuth};
use crate::keys::manager::{KeyManager, SignGate};
use crate::keys::{KeySnapshot, Kid};
use crate::vault::{Endpoint, VaultClients};

pub use crate::keys::spki::{BadJwk, public_key_pem};
pub use target::PushError;

/// Why push mode could not start.
#[derive(Debug, thiserror::Error)]
pub enum PushSetupError {
    /// A target's address or CA is unusable.
    #[error("push[{index}]: {source}")]
    Client {
        index: usize,
        source: crate::vault::VaultError,
    },
}

/// What one target last acknowledged.
#[derive(Debug, Clone, Default)]
struct Acked {
    /// The snapshot sequence of the last successful push.
    sequence: Option<u64>,
    /// The kids that push wrote.
    kids: Vec<Kid>,
    /// Unix time of the last successful push.
    last_success: Option<u64>,
    /// The last push's failure, cleared by a success.
    last_error: Option<String>,
    ok: u64,
    failed: u64,
}

/// What a revocation's answer says of one target.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RevokedAt {
    pub target: String,
    /// Whether the target acknowledged a key set without the key.
    pub key_gone: bool,
    /// The last push failure, while the key is not yet gone.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Every target's acknowledged state; the gate the rotator consults.
pub struct Pushes {
    names: Vec<String>,
    acked: Mutex<Vec<Acked>>,
    /// Bumped on every acknowledgement, for whoever waits on one.
    changed: watch::Sender<u64>,
    held: AtomicBool,
}

impl Pushes {
    /// No targets: every key may sign at once.
    pub fn none() -> Arc<Pushes> {
        Pushes::named(Vec::new())
    }

    fn named(names: Vec<String>) -> Arc<Pushes> {
        Arc::new(Pushes {
            acked: Mutex::new(vec![Acked::default(); names.len()]),
            names,
            changed: watch::Sender::new(0),
            held: AtomicBool::new(false),
        })
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// The targets that have not acknowledged snapshot `sequence` (or a later one).
    pub fn behind(&self, sequence: u64) -> Vec<String> {
        let acked = self.lock();
        self.names
            .iter()
            .zip(acked.iter())
            .filter(|(_, a)| a.sequence.is_none_or(|s| s < sequence))
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// Waits up to `timeout` for every target to acknowledge `sequence`, then says per target
    /// whether `kid` is gone from what it holds.
    pub async fn wait_for(&self, sequence: u64, kid: &Kid, timeout: Duration) -> Vec<RevokedAt> {
        let mut changes = self.changed.subscribe();
        let _ = tokio::time::timeout(timeout, async {
            while !self.behind(sequence).is_empty() {
                if changes.changed().await.is_err() {
                    return;
                }
            }
        })
        .await;
        let acked = self.lock();
        self.names
            .iter()
            .zip(acked.iter())
            .map(|(name, a)| {
                let key_gone = a.sequence.is_some_and(|s| s >= sequence) && !a.kids.contains(kid);
                RevokedAt {
                    target: name.clone(),
                    key_gone,
                    error: (!key_gone).then(|| a.last_error.clone()).flatten(),
                }
            })
            .collect()
    }

    fn acknowledged(&self, index: usize, snapshot: &KeySnapshot) {
        let mut acked = self.lock();
        let a = &mut acked[index];
        a.sequence = Some(snapshot.sequence);
        a.kids = snapshot.set.keys.iter().map(|k| k.kid.clone()).collect();
        a.last_success = Some(unix_now());
        a.last_error = None;
        a.ok += 1;
        drop(acked);
        self.changed.send_modify(|n| *n += 1);
    }

    fn failed(&self, index: usize, error: &PushError) {
        let mut acked = self.lock();
        acked[index].last_error = Some(error.to_string());
        acked[index].failed += 1;
    }

    /// The push metrics, in the Prometheus text format.
    pub fn render(&self, out: &mut String) {
        if self.is_empty() {
            return;
        }
        let names: Vec<String> = self.names.iter().map(|n| label(n)).collect();
        let acked = self.lock();
        let _ = writeln!(
            out,
            "# HELP tfe_oidc_push_total Pushes of the key set to a Vault JWT auth mount, by outcome.\n# TYPE tfe_oidc_push_total counter"
        );
        for (name, a) in names.iter().zip(acked.iter()) {
            let _ = writeln!(
                out,
                "tfe_oidc_push_total{{target=\"{name}\",outcome=\"ok\"}} {}",
                a.ok
            );
            let _ = writeln!(
                out,
                "tfe_oidc_push_total{{target=\"{name}\",outcome=\"error\"}} {}",
                a.failed
            );
        }
        let _ = writeln!(
            out,
            "# HELP tfe_oidc_push_last_success_seconds Unix time of the last successful push (0: none yet).\n# TYPE tfe_oidc_push_last_success_seconds gauge"
        );
        for (name, a) in names.iter().zip(acked.iter()) {
            let _ = writeln!(
                out,
                "tfe_oidc_push_last_success_seconds{{target=\"{name}\"}} {}",
                a.last_success.unwrap_or(0)
            );
        }
        let _ = writeln!(
            out,
            "# HELP tfe_oidc_rotation_held 1 while a due rotation waits for a push target to hold the next key.\n# TYPE tfe_oidc_rotation_held gauge\ntfe_oidc_rotation_held {}",
            u8::from(self.held.load(Ordering::Relaxed))
        );
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Acked>> {
        self.acked.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl SignGate for Pushes {
    /// Every target's last acknowledged set holds `kid`.
    fn may_sign(&self, kid: &Kid) -> bool {
        self.lock().iter().all(|a| a.kids.contains(kid))
    }

    fn rotation_held(&self, held: bool) {
        self.held.store(held, Ordering::Relaxed);
    }
}

/// A Prometheus label value: backslash, quote and newline escaped.
fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The files each target names, read now: its CA (returned), and its token or secret id file
/// (only checked to be readable: they are read again at every push or login). Every problem is
/// listed, each naming its `push[<n>]` key.
pub fn read_files(targets: &[PushTarget]) -> Result<Vec<Option<Vec<u8>>>, ConfigError> {
    let mut problems = Vec::new();
    let mut cas = Vec::new();
    for (i, t) in targets.iter().enumerate() {
        let mut read = |key: &str, path: &std::path::Path| {
            std::fs::read(path)
                .map_err(|e| {
                    let at = format!("push[{i}].{key}");
                    problems.push(Problem::new(
                        &at,
                        format!("cannot read {}: {e}", path.display()),
                    ));
                })
                .ok()
        };
        match &t.auth {
            VaultAuth::TokenFile(path) => drop(read("token_file", path)),
            VaultAuth::AppRole { secret_id_file, .. } => {
                drop(read("secret_id_file", secret_id_file))
            }
        }
        cas.push(t.ca_file.as_ref().and_then(|path| read("ca_file", path)));
    }
    match problems.is_empty() {
        true => Ok(cas),
        false => Err(ConfigError(problems)),
    }
}

/// Starts one push task per target (`ca_pems` from `read_files`); they stop when `shutdown`
/// turns true.
pub fn start(
    targets: &[PushTarget],
    ca_pems: Vec<Option<Vec<u8>>>,
    issuer: &Issuer,
    timeout: Duration,
    manager: &KeyManager,
    shutdown: &watch::Receiver<bool>,
) -> Result<(Arc<Pushes>, Vec<JoinHandle<()>>), PushSetupError> {
    let clients = VaultClients::new();
    let mut pushers = Vec::new();
    for ((index, t), ca_pem) in targets.iter().enumerate().zip(ca_pems) {
        let endpoint = Endpoint {
            address: t.addr.clone(),
            namespace: t.namespace.clone(),
            ca_pem,
            timeout,
        };
        let vault = clients
            .connect(&endpoint)
            .map_err(|source| PushSetupError::Client { index, source })?;
        pushers.push(target::Pusher::new(index, t, vault, issuer.as_str()));
    }
    let pushes = Pushes::named(targets.iter().map(PushTarget::name).collect());
    let tasks = pushers
        .into_iter()
        .map(|p| {
            let run = p.run(Arc::clone(&pushes), manager.subscribe(), shutdown.clone());
            tokio::spawn(run)
        })
        .collect();
    Ok((pushes, tasks))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_names_are_escaped_as_label_values() {
        assert_eq!(label(r#"https://v/n"s\x"#), r#"https://v/n\"s\\x"#);
    }

    #[test]
    fn without_targets_every_key_may_sign_and_nothing_is_rendered() {
        let pushes = Pushes::none();
        let kid = Kid::parse(&"a".repeat(43)).unwrap();
        assert!(pushes.may_sign(&kid));
        assert!(pushes.behind(7).is_empty());
        let mut out = String::new();
        pushes.render(&mut out);
        assert!(out.is_empty());
    }
}
