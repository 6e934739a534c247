//! The Vault calls of the transit store, typed: the transit key and its versions, creating,
//! rotating, configuring and trimming it, signing with one version, and the lifecycle record in a
//! KV version 2 secret read and written with check-and-set.
//!
//! Every call takes the session's token; a token Vault refused is dropped and the call is made once
//! more with a new one. With several addresses (the nodes of one cluster), a call that finds its
//! node unreachable, sealed, without a leader or redirecting (a standby that does not forward) is
//! made again on the next node, and the node that answered is tried first from then on. Every call
//! is safe to repeat: reads, configuration and trim are idempotent, a repeated rotation leaves an
//! unused version (the next `create` takes it), a repeated signature is another valid signature,
//! and the record is written with check-and-set, so a write that landed before its answer was lost
//! is seen as a conflict and read back.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Value, json};

use crate::keys::PublicJwk;
use crate::keys::spki::jwk_from_pem;
use crate::vault::{Secret, Session, SessionError, VaultError, VaultToken};

/// A failed call: no token, or Vault's answer. Never holds a secret.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error(transparent)]
    Session(#[from] SessionError),
    #[error(transparent)]
    Vault(#[from] VaultError),
    /// The answer is not what this call returns.
    #[error("{0}")]
    Answer(String),
}

impl CallError {
    /// Whether Vault answered 404.
    pub fn is_not_found(&self) -> bool {
        matches!(
            self,
            CallError::Vault(VaultError::Status { status: 404, .. })
        )
    }

    /// Whether the node, not the request, failed (`VaultError::is_node_failure`).
    pub fn is_node_failure(&self) -> bool {
        match self {
            CallError::Vault(e) | CallError::Session(SessionError::Login(e)) => e.is_node_failure(),
            _ => false,
        }
    }

    /// Whether a KV write was refused because the record changed since it was read.
    pub fn is_cas_mismatch(&self) -> bool {
        matches!(self, CallError::Vault(VaultError::Status { status: 400, errors })
            if errors.iter().any(|e| e.contains("check-and-set")))
    }
}

/// One version of the transit key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version {
    pub jwk: PublicJwk,
}

/// What `GET <mount>/keys/<name>` says of the key. Versions are numbers, compared as numbers.
#[derive(Debug, Clone)]
pub struct KeyInfo {
    pub type_name: String,
    pub exportable: bool,
    pub plaintext_backup: bool,
    pub min_available_version: u32,
    pub min_decryption_version: u32,
    pub min_encryption_version: u32,
    /// The newest version Vault ever made (trimmed or not).
    pub latest_version: u32,
    /// Every version Vault still holds (not trimmed, not below `min_decryption_version`).
    pub versions: BTreeMap<u32, Version>,
}

/// The lifecycle record as stored, and the KV version it was read at.
#[derive(Debug, Clone)]
pub struct StoredRecord {
    pub data: Value,
    pub kv_version: u64,
}

/// What the record's KV secret holds now.
#[derive(Debug, Clone)]
pub enum RecordRead {
    /// The latest version, readable.
    Present(StoredRecord),
    /// The latest version (`kv_version`) is deleted or destroyed; earlier ones may be readable.
    Deleted { kv_version: u64 },
    /// No version was ever written (or the secret's whole history was deleted).
    Absent,
}

impl RecordRead {
    /// The KV version this read saw (0: none).
    pub fn kv_version(&self) -> u64 {
        match self {
            RecordRead::Present(stored) => stored.kv_version,
            RecordRead::Deleted { kv_version } => *kv_version,
            RecordRead::Absent => 0,
        }
    }
}

/// The transit key and the record of one store, through one Vault session per node.
pub struct TransitVault {
    sessions: Vec<Session>,
    /// The node tried first: the last one that answered.
    preferred: AtomicUsize,
    mount: String,
    key: String,
    kv_mount: String,
    kv_path: String,
}

impl TransitVault {
    pub fn new(
        sessions: Vec<Session>,
        mount: &str,
        key: &str,
        kv_mount: &str,
        kv_path: &str,
    ) -> TransitVault {
        assert!(
            !sessions.is_empty(),
            "a transit store needs a Vault address"
        );
        TransitVault {
            sessions,
            preferred: AtomicUsize::new(0),
            mount: mount.to_owned(),
            key: key.to_owned(),
            kv_mount: kv_mount.to_owned(),
            kv_path: kv_path.to_owned(),
        }
    }

    /// `<mount>/keys/<name>`, for messages.
    pub fn key_path(&self) -> String {
        format!("{}/keys/{}", self.mount, self.key)
    }

    /// The KV mount of the record, for messages.
    pub fn kv_mount(&self) -> &str {
        &self.kv_mount
    }

    /// The record's path inside its KV mount, for messages.
    pub fn kv_path(&self) -> &str {
        &self.kv_path
    }

    /// `<kv_mount>/data/<kv_path>`, for messages.
    pub fn record_path(&self) -> String {
        format!("{}/data/{}", self.kv_mount, self.kv_path)
    }

    /// The transit key, or `None` when it does not exist.
    pub async fn read_key(&self) -> Result<Option<KeyInfo>, CallError> {
        let path = self.key_path();
        match self.read(&path).await {
            Ok(secret) => parse_key(&secret).map(Some),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Creates the key: `type` (`rsa-2048`…), never exportable, no plaintext backup.
    pub async fn create_key(&self, type_name: &str) -> Result<(), CallError> {
        let body =
            json!({ "type": type_name, "exportable": false, "allow_plaintext_backup": false });
        self.write(&self.key_path(), &body).await.map(drop)
    }

    /// Adds a version. It signs nothing until a record names it and the store asks for it.
    pub async fn rotate(&self) -> Result<(), CallError> {
        let path = format!("{}/rotate", self.key_path());
        self.write(&path, &json!({})).await.map(drop)
    }

    /// Sets the lowest version Vault signs with and the lowest it keeps readable.
    pub async fn configure(
        &self,
        min_decryption: u32,
        min_encryption: u32,
    ) -> Result<(), CallError> {
        let path = format!("{}/config", self.key_path());
        let body = json!({
            "min_decryption_version": min_decryption,
            "min_encryption_version": min_encryption,
        });
        self.write(&path, &body).await.map(drop)
    }

    /// Destroys every version below `min_available`.
    pub async fn trim(&self, min_available: u32) -> Result<(), CallError> {
        let path = format!("{}/trim", self.key_path());
        self.write(&path, &json!({ "min_available_version": min_available }))
            .await
            .map(drop)
    }

    /// An RS256 signature of `digest` (SHA-256 of the signing input) by `version` exactly.
    pub async fn sign(&self, version: u32, digest: &[u8]) -> Result<Vec<u8>, CallError> {
        let path = format!("{}/sign/{}/sha2-256", self.mount, self.key);
        let body = json!({
            "input": STANDARD.encode(digest),
            "prehashed": true,
            "key_version": version,
            "signature_algorithm": "pkcs1v15",
        });
        let answer = self
            .write(&path, &body)
            .await?
            .ok_or_else(|| CallError::Answer("the sign answer has no data".into()))?;
        let text = answer
            .str("signature")
            .ok_or_else(|| CallError::Answer("the sign answer has no signature".into()))?;
        let expected = format!("vault:v{version}:");
        let encoded = text.strip_prefix(&expected).ok_or_else(|| {
            CallError::Answer(format!(
                "vault signed with another version than {version} (its answer does not start with {expected:?})"
            ))
        })?;
        STANDARD
            .decode(encoded)
            .map_err(|_| CallError::Answer("the signature is not base64".into()))
    }

    /// The record as the secret holds it now. One read while the latest version is readable;
    /// otherwise the secret's metadata tells a deleted record from one never written.
    pub async fn read_record(&self) -> Result<RecordRead, CallError> {
        self.read_record_on(None).await
    }

    /// The record as the most advanced node holds it: read from every node, the highest KV
    /// version wins. After a check-and-set conflict the record is newer than the one this store
    /// read, and a standby that is behind (a fresh process has no index to send it yet) could
    /// answer the same old one again; the active node never does. Nodes that fail are skipped.
    pub async fn read_record_newest(&self) -> Result<RecordRead, CallError> {
        let mut newest: Option<RecordRead> = None;
        let mut failure = None;
        for node in 0..self.sessions.len() {
            match self.read_record_on(Some(node)).await {
                Ok(read)
                    if newest
                        .as_ref()
                        .is_none_or(|n| read.kv_version() > n.kv_version()) =>
                {
                    newest = Some(read);
                }
                Ok(_) => {}
                Err(e) => failure = Some(e),
            }
        }
        match (newest, failure) {
            (Some(read), _) => Ok(read),
            (None, Some(e)) => Err(e),
            (None, None) => Ok(RecordRead::Absent),
        }
    }

    async fn read_record_on(&self, node: Option<usize>) -> Result<RecordRead, CallError> {
        if let Some(stored) = self.read_version_on(node, None).await? {
            return Ok(RecordRead::Present(stored));
        }
        let path = format!("{}/metadata/{}", self.kv_mount, self.kv_path);
        let metadata = match self.read_with(node, &path, &[]).await {
            Ok(secret) => secret,
            Err(e) if e.is_not_found() => return Ok(RecordRead::Absent),
            Err(e) => return Err(e),
        };
        match metadata.data.get("current_version").and_then(Value::as_u64) {
            None | Some(0) => Ok(RecordRead::Absent),
            Some(kv_version) => Ok(RecordRead::Deleted { kv_version }),
        }
    }

    /// The record at KV version `version` (`None`: the latest), or `None` when that version is
    /// deleted, destroyed or was never written.
    pub async fn read_record_version(
        &self,
        version: Option<u64>,
    ) -> Result<Option<StoredRecord>, CallError> {
        self.read_version_on(None, version).await
    }

    async fn read_version_on(
        &self,
        node: Option<usize>,
        version: Option<u64>,
    ) -> Result<Option<StoredRecord>, CallError> {
        let version = version.map(|v| v.to_string());
        let query: Vec<(&str, &str)> = version.iter().map(|v| ("version", v.as_str())).collect();
        let secret = match self.read_with(node, &self.record_path(), &query).await {
            Ok(secret) => secret,
            Err(e) if e.is_not_found() => return Ok(None),
            Err(e) => return Err(e),
        };
        let bad = |why: &str| CallError::Answer(format!("{}: {why}", self.record_path()));
        let kv_version = secret
            .data
            .get("metadata")
            .and_then(|m| m.get("version"))
            .and_then(Value::as_u64)
            .ok_or_else(|| bad("no metadata.version: is this mount KV version 2?"))?;
        match secret.data.get("data") {
            // A deleted (not destroyed) version reads as data null.
            None | Some(Value::Null) => Ok(None),
            Some(data) => Ok(Some(StoredRecord {
                data: data.clone(),
                kv_version,
            })),
        }
    }

    /// Writes the record if the stored one is still at `cas` (0: none yet); the new KV version.
    pub async fn write_record(&self, data: &Value, cas: u64) -> Result<u64, CallError> {
        let body = json!({ "options": { "cas": cas }, "data": data });
        let answer = self.write(&self.record_path(), &body).await?;
        answer
            .and_then(|a| a.data.get("version").and_then(Value::as_u64))
            .ok_or_else(|| {
                CallError::Answer(format!(
                    "{}: the write answer has no version",
                    self.record_path()
                ))
            })
    }

    async fn read(&self, path: &str) -> Result<Secret, CallError> {
        self.read_with(None, path, &[]).await
    }

    /// A read on `node` only, or (`None`) on the preferred node with failover.
    async fn read_with(
        &self,
        node: Option<usize>,
        path: &str,
        query: &[(&str, &str)],
    ) -> Result<Secret, CallError> {
        let call = |vault: &crate::vault::Vault, token: VaultToken| {
            let vault = vault.clone();
            async move { vault.read(&token, path, query).await }
        };
        match node {
            Some(i) => self.on_node(&self.sessions[i], &call).await,
            None => self.with_token(call).await,
        }
    }

    async fn write(&self, path: &str, body: &Value) -> Result<Option<Secret>, CallError> {
        self.with_token(|vault, token| async move { vault.write(&token, path, body).await })
            .await
    }

    /// Makes `call` on the preferred node, then on each other node in turn while the node is
    /// what failed (see the module documentation).
    async fn with_token<'a, T, F, Fut>(&'a self, call: F) -> Result<T, CallError>
    where
        F: Fn(&'a crate::vault::Vault, VaultToken) -> Fut,
        Fut: std::future::Future<Output = Result<T, VaultError>>,
    {
        let first = self.preferred.load(Ordering::Relaxed);
        let mut last = None;
        for n in 0..self.sessions.len() {
            let i = (first + n) % self.sessions.len();
            match self.on_node(&self.sessions[i], &call).await {
                Err(e) if e.is_node_failure() && n + 1 < self.sessions.len() => {
                    tracing::debug!(node = %self.sessions[i].vault().endpoint().address, error = %e, "vault node failed; trying the next one");
                    last = Some(e);
                }
                other => {
                    if other.as_ref().is_ok_and(|_| i != first) {
                        self.preferred.store(i, Ordering::Relaxed);
                    }
                    return other;
                }
            }
        }
        Err(last.expect("at least one node was tried"))
    }

    /// Makes `call` with the session's token, and once more with a new token if Vault refused it.
    async fn on_node<'a, T, F, Fut>(&self, session: &'a Session, call: &F) -> Result<T, CallError>
    where
        F: Fn(&'a crate::vault::Vault, VaultToken) -> Fut,
        Fut: std::future::Future<Output = Result<T, VaultError>>,
    {
        let token = session.token().await?;
        match call(session.vault(), token).await {
            Err(e) if session.refused(&e) => {
                let token = session.token().await?;
                Ok(call(session.vault(), token).await?)
            }
            other => Ok(other?),
        }
    }
}

fn parse_key(secret: &Secret) -> Result<KeyInfo, CallError> {
    let bad = |why: String| CallError::Answer(format!("the transit key's description: {why}"));
    let number = |name: &str| -> Result<u32, CallError> {
        secret
            .data
            .get(name)
            .and_then(Value::as_u64)
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(|| bad(format!("no {name}")))
    };
    let flag = |name: &str| {
        secret
            .data
            .get(name)
            .and_then(Value::as_bool)
            .unwrap_or(false)
    };
    let mut versions = BTreeMap::new();
    let keys = secret
        .data
        .get("keys")
        .and_then(Value::as_object)
        .ok_or_else(|| bad("no keys".into()))?;
    for (name, entry) in keys {
        // Versions are numbers: "10" comes after "9".
        let version: u32 = name
            .parse()
            .map_err(|_| bad(format!("version {name:?} is not a number")))?;
        let pem = entry
            .get("public_key")
            .and_then(Value::as_str)
            .ok_or_else(|| bad(format!("version {version} has no public_key")))?;
        let jwk = jwk_from_pem(pem).map_err(|e| bad(format!("version {version}: {e}")))?;
        versions.insert(version, Version { jwk });
    }
    Ok(KeyInfo {
        type_name: secret.str("type").unwrap_or_default().to_owned(),
        exportable: flag("exportable"),
        plaintext_backup: flag("allow_plaintext_backup"),
        min_available_version: number("min_available_version")?,
        min_decryption_version: number("min_decryption_version")?,
        min_encryption_version: number("min_encryption_version")?,
        latest_version: number("latest_version")?,
        versions,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_numbers_not_text() {
        let pem = crate::keys::spki::public_key_pem(&PublicJwk {
            n: "AQAB".into(),
            e: "AQAB".into(),
        })
        .unwrap();
        let mut keys = serde_json::Map::new();
        for v in ["9", "10", "11", "2"] {
            keys.insert(v.into(), json!({ "public_key": pem, "name": "rsa-2048" }));
        }
        let data = json!({ "type": "rsa-2048", "latest_version": 11, "min_available_version": 0,
            "min_decryption_version": 1, "min_encryption_version": 0, "keys": keys });
        let secret = Secret {
            data: data.as_object().unwrap().clone(),
            ..Secret::default()
        };
        let info = parse_key(&secret).unwrap();
        let order: Vec<u32> = info.versions.keys().copied().collect();
        assert_eq!(order, [2, 9, 10, 11]);
        assert_eq!(info.versions.keys().max(), Some(&11));
    }
}
