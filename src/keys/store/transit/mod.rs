//! The Vault transit store (`keys.store = "vault-transit"`): private keys that never leave Vault,
//! shared by several replicas.
//!
//! - **Keys.** One non-exportable transit key (`rsa-2048` by default); each of our keys is one of
//!   its versions. The JWKS is built from the versions' public keys; a version signs only through
//!   `<mount>/sign/<key>/sha2-256` with an explicit `key_version`, so creating a version never
//!   makes it sign.
//! - **The lifecycle record.** Which version is next, current or retired, and when, is the same
//!   `KeySet` the file store keeps in `keys.json`, plus each key's version. It lives in a KV
//!   version 2 secret and is written with check-and-set: a replica that decided on an old record
//!   loses the write (`StoreError::Conflict`), reads what the winner committed, and decides again.
//!   So between them the replicas commit one rotation per period, with Vault as the only
//!   coordinator.
//! - **New keys.** `create` takes the lowest version above any the record ever named (a version
//!   left by a replica that lost a race is used, not wasted), and rotates the transit key only
//!   when there is none.
//! - **Vault enforces the states.** After each commit, `min_encryption_version` is raised to the
//!   lowest version that may still sign (a retired version keeps that right for a short grace, so
//!   that a replica which has not read the record yet is not refused), and versions no longer
//!   published are trimmed (`min_decryption_version`, then `trim`).
//! - **The record only moves forward.** Each commit raises the record's `generation`. A record
//!   that was deleted, rolled back to an older content (a lower `generation` or
//!   `highest_version`), or read at an older KV version than the last one adopted is never
//!   adopted: the last good set stays published, nothing is committed, and the store reports the
//!   refusal (`StoreError::Refused`: `/readyz` answers 503 naming it) until the record is
//!   restored. An older KV version is what a standby that is behind answers, so a few such reads
//!   in a row are ignored before they count as a refusal. A store that starts on a deleted or
//!   rolled-back record serves the newest good version of its history and signs nothing. A new
//!   key history (no record at all) starts above every version the transit key ever had, so a
//!   version that was once published never signs again.
//!
//! Its calls block on the service's runtime (`Handle::block_on`): call them from
//! `spawn_blocking`, as the key manager does.

mod record;
mod vault;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use aws_lc_rs::digest;
use aws_lc_rs::signature::{RSA_PKCS1_2048_8192_SHA256, RsaPublicKeyComponents};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use tokio::runtime::Handle;

use self::record::{FORMAT, Record, RecordKey};
use self::vault::{CallError, KeyInfo as TransitKey, RecordRead, TransitVault};
use super::{KeyStore, Loaded, StoreError};
use crate::keys::{
    Clock, KeyInfo, KeySet, KeyState, Kid, PublicJwk, RsaBits, SignError, SigningKey, SystemClock,
    UnixTime,
};
use crate::vault::{Consistency, Endpoint, Session, VaultAuth, VaultClients};

/// `[keys.vault]`: where the Vault transit store keeps its keys and its lifecycle record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransitConfig {
    /// `scheme://host[:port]` of each node (or balancer) of one Vault cluster, without a trailing
    /// slash, tried in this order; never empty.
    pub addrs: Vec<String>,
    pub namespace: Option<String>,
    pub ca_file: Option<PathBuf>,
    /// The transit mount: `transit`.
    pub mount: String,
    /// The transit key's name: `tfe-oidc`.
    pub key: String,
    pub auth: VaultAuth,
    /// The bound of every Vault call.
    pub timeout: Duration,
    /// The KV version 2 mount that holds the lifecycle record: `secret`.
    pub kv_mount: String,
    /// The record's path in that mount: `tfe-oidc/<key>`.
    pub kv_path: String,
    /// How often a replica reads the record to see what the others committed.
    pub refresh: Duration,
}

/// Signs with one version of the transit key, and checks each signature against the version's
/// public key before handing it out.
pub struct VersionSigner {
    vault: Arc<TransitVault>,
    version: u32,
    n: Vec<u8>,
    e: Vec<u8>,
}

impl VersionSigner {
    pub async fn sign(&self, message: &[u8]) -> Result<Vec<u8>, SignError> {
        let digest = digest::digest(&digest::SHA256, message);
        let signature = self
            .vault
            .sign(self.version, digest.as_ref())
            .await
            .map_err(|e| {
                SignError(format!(
                    "vault transit cannot sign with {} version {}: {e}",
                    self.vault.key_path(),
                    self.version
                ))
            })?;
        let public = RsaPublicKeyComponents {
            n: &self.n[..],
            e: &self.e[..],
        };
        public
            .verify(&RSA_PKCS1_2048_8192_SHA256, message, &signature)
            .map_err(|_| {
                SignError(format!(
                    "vault transit's signature with {} version {} does not verify against that version's public key: the key was changed in Vault; nothing was signed",
                    self.vault.key_path(),
                    self.version
                ))
            })?;
        Ok(signature)
    }
}

/// The transit store; see the module documentation.
pub struct TransitStore {
    runtime: Handle,
    vault: Arc<TransitVault>,
    issuer: String,
    /// The transit key type of new keys: `rsa-2048`.
    key_type: String,
    /// How long a retired version may still sign in Vault (for replicas that have not yet read
    /// the record that retired it).
    grace: Duration,
    refresh: Duration,
    /// The KV version of the record this store last read or wrote; 0 when there is none.
    cas: u64,
    /// The version of every key this store knows of.
    versions: HashMap<Kid, u32>,
    /// The record's `highest_version`.
    highest: u32,
    /// The record's `generation`.
    generation: u64,
    /// Why the record as Vault holds it now is not adopted (see the module documentation).
    refused: Option<String>,
    /// Reads in a row that returned an older KV version than `cas`.
    stale_reads: u32,
    /// The next load reads the record on every node and takes the newest: at start (a fresh
    /// process has no index yet with which a standby that is behind would forward the read)
    /// and after a lost check-and-set (the record is newer than the one read).
    read_newest: bool,
    /// Versions `create` handed out since the last load or commit.
    pending: Vec<u32>,
    /// The transit key as last read or configured.
    transit: Option<TransitKey>,
    /// The committed set, for the enforcement still to be done (see `enforce`).
    enforce_pending: Option<KeySet>,
    /// Only reads (`keys list`, `token issue`): creates, configures and trims nothing.
    read_only: bool,
    /// This store created the transit key: none of its versions was ever published.
    created_key: bool,
    /// The clock of the grace of retired versions (the key manager's own, in tests a fake one).
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for TransitStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TransitStore")
            .field("key", &self.vault.key_path())
            .field("record", &self.vault.record_path())
            .field("cas", &self.cas)
            .finish()
    }
}

fn vault_error(context: &str, e: CallError) -> StoreError {
    StoreError::Vault(format!("{context}: {e}"))
}

impl TransitStore {
    /// A store on `config`'s transit key and record. Reads the CA file; calls nothing yet.
    pub fn open(
        config: &TransitConfig,
        bits: RsaBits,
        issuer: &str,
        runtime: Handle,
    ) -> Result<TransitStore, StoreError> {
        let ca_pem = match &config.ca_file {
            Some(path) => Some(std::fs::read(path).map_err(|source| StoreError::Io {
                path: path.clone(),
                source,
            })?),
            None => None,
        };
        // One session per node of the cluster, all asking for read-your-writes on one index.
        let (clients, consistency) = (VaultClients::new(), Arc::new(Consistency::new()));
        let mut sessions = Vec::with_capacity(config.addrs.len());
        for address in &config.addrs {
            let endpoint = Endpoint {
                address: address.clone(),
                namespace: config.namespace.clone(),
                ca_pem: ca_pem.clone(),
                timeout: config.timeout,
            };
            let client = clients
                .connect(&endpoint)
                .map_err(|e| StoreError::Vault(format!("keys.vault: {e}")))?
                .with_consistency(Arc::clone(&consistency));
            sessions.push(Session::new(client, config.auth.clone()));
        }
        let vault = TransitVault::new(
            sessions,
            &config.mount,
            &config.key,
            &config.kv_mount,
            &config.kv_path,
        );
        Ok(TransitStore {
            runtime,
            vault: Arc::new(vault),
            issuer: issuer.to_owned(),
            key_type: format!("rsa-{}", bits.bits()),
            grace: (config.refresh * 3).max(Duration::from_secs(10)),
            refresh: config.refresh,
            cas: 0,
            versions: HashMap::new(),
            highest: 0,
            generation: 0,
            refused: None,
            stale_reads: 0,
            read_newest: true,
            pending: Vec::new(),
            transit: None,
            enforce_pending: None,
            read_only: false,
            created_key: false,
            clock: Arc::new(SystemClock),
        })
    }

    /// The same store on another clock (the one its key manager uses).
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> TransitStore {
        self.clock = clock;
        self
    }

    /// A store that only reads: for `keys list` and `token issue`, which change nothing.
    pub fn read_only(mut self) -> TransitStore {
        self.read_only = true;
        self
    }

    fn block_on<F: std::future::Future>(&self, future: F) -> F::Output {
        self.runtime.block_on(future)
    }

    /// Reads the transit key, creating it when it does not exist, and checks it is one we may use.
    fn read_transit(&mut self) -> Result<TransitKey, StoreError> {
        let path = self.vault.key_path();
        let key = match self.block_on(self.vault.read_key()) {
            Ok(Some(key)) => key,
            Ok(None) if self.read_only => {
                return Err(StoreError::Vault(format!(
                    "{path} does not exist yet: start `tfe-oidc serve` once to create it"
                )));
            }
            Ok(None) => {
                self.block_on(self.vault.create_key(&self.key_type))
                    .map_err(|e| vault_error(&format!("create {path}"), e))?;
                self.created_key = true;
                tracing::info!(key = %path, r#type = %self.key_type, "created the transit key");
                self.block_on(self.vault.read_key())
                    .map_err(|e| vault_error(&format!("read {path}"), e))?
                    .ok_or_else(|| {
                        StoreError::Vault(format!("{path} vanished after it was created"))
                    })?
            }
            Err(e) => return Err(vault_error(&format!("read {path}"), e)),
        };
        let refuse = |why: String| StoreError::Corrupt {
            path: path.clone().into(),
            why,
        };
        if !key.type_name.starts_with("rsa-") {
            return Err(refuse(format!(
                "is a {:?} key; tfe-oidc signs RS256 and needs an rsa-2048, rsa-3072 or rsa-4096 key: name another key in keys.vault.key",
                key.type_name
            )));
        }
        if key.exportable || key.plaintext_backup {
            return Err(refuse(
                "is exportable or allows plaintext backups, so its private keys can leave Vault; tfe-oidc uses only keys that cannot (and Vault cannot turn this off): name a new key in keys.vault.key".into(),
            ));
        }
        self.transit = Some(key.clone());
        Ok(key)
    }

    fn signer(&self, version: u32, jwk: PublicJwk) -> SigningKey {
        let decode = |m: &str| B64.decode(m).unwrap_or_default();
        let signer = VersionSigner {
            vault: Arc::clone(&self.vault),
            version,
            n: decode(&jwk.n),
            e: decode(&jwk.e),
        };
        SigningKey::transit(jwk, signer)
    }

    /// The lowest version the record has never named and no `create` since the last commit took.
    fn unused_version(&self, transit: &TransitKey) -> Option<u32> {
        transit
            .versions
            .keys()
            .copied()
            .find(|v| *v > self.highest && !self.pending.contains(v))
    }

    /// Makes Vault enforce what `set` says: only versions that may sign can sign, and versions no
    /// longer published are destroyed. Best effort: what fails is retried at the next refresh.
    fn enforce(&mut self, set: &KeySet, now: UnixTime) {
        if self.read_only {
            return;
        }
        match self.try_enforce(set, now) {
            Ok(done) => {
                self.enforce_pending = (!done).then(|| set.clone());
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not yet make vault enforce the key set (signing floor or trim); retrying at the next refresh");
                self.enforce_pending = Some(set.clone());
            }
        }
    }

    /// `Ok(true)` when Vault now enforces all of `set`; `Ok(false)` when a retired version is still
    /// in its grace and the floor must be raised again later.
    fn try_enforce(&mut self, set: &KeySet, now: UnixTime) -> Result<bool, StoreError> {
        let version = |k: &KeyInfo| self.versions.get(&k.kid).copied();
        let Some(current) = set.current().and_then(version) else {
            return Ok(true);
        };
        let grace = self.grace.as_secs();
        let in_grace: Vec<u32> = set
            .keys
            .iter()
            .filter(|k| k.state == KeyState::Retired)
            .filter(|k| k.retired_at.is_some_and(|at| at + grace > now))
            .filter_map(version)
            .collect();
        let floor = in_grace
            .iter()
            .copied()
            .chain([current])
            .min()
            .unwrap_or(current);
        let lowest = set.keys.iter().filter_map(version).min().unwrap_or(current);
        let Some(transit) = self.transit.clone() else {
            return Ok(false);
        };
        let path = self.vault.key_path();
        let floor = floor.max(transit.min_encryption_version);
        let lowest = lowest.max(transit.min_decryption_version).min(floor);
        if floor != transit.min_encryption_version || lowest != transit.min_decryption_version {
            self.block_on(self.vault.configure(lowest, floor))
                .map_err(|e| vault_error(&format!("configure {path}"), e))?;
            tracing::info!(key = %path, min_encryption_version = floor, min_decryption_version = lowest, "vault now signs with no version below the signing floor");
        }
        if lowest > transit.min_available_version {
            self.block_on(self.vault.trim(lowest))
                .map_err(|e| vault_error(&format!("trim {path}"), e))?;
            tracing::info!(key = %path, min_available_version = lowest, "destroyed the transit key versions no longer published");
        }
        if let Some(t) = &mut self.transit {
            t.min_encryption_version = floor;
            t.min_decryption_version = lowest;
            t.min_available_version = t.min_available_version.max(lowest);
            t.versions.retain(|v, _| *v >= lowest);
        }
        Ok(in_grace.is_empty())
    }
}

impl KeyStore for TransitStore {
    fn load(&mut self) -> Result<Loaded, StoreError> {
        let transit = self.read_transit()?;
        self.refused = None;
        self.stale_reads = 0;
        let read = match std::mem::take(&mut self.read_newest) {
            true => self.read_record_newest()?,
            false => self.read_record()?,
        };
        let loaded = match read {
            // A key that already signed under a record (its signing floor was raised) and has
            // none now: the record was destroyed. Starting a new history would trim the versions
            // other replicas and unexpired tokens still use.
            RecordRead::Absent if !self.created_key && transit.min_encryption_version > 0 => {
                return Err(self.refuse(format!(
                    "is gone with its whole history (its KV metadata was deleted), but {} has signed under it (min_encryption_version {}): restore the record from a backup of Vault; to start a new key history on purpose (every token its keys signed stops verifying), name a new keys.vault.key",
                    self.vault.key_path(),
                    transit.min_encryption_version
                )));
            }
            RecordRead::Absent => return Ok(self.begin_history(&transit)),
            RecordRead::Deleted { kv_version } => {
                let why = self.deleted_message(kv_version);
                self.load_history(&transit, kv_version, why)?
            }
            RecordRead::Present(stored) => self.load_present(&transit, stored)?,
        };
        if self.refused.is_none() && !loaded.set.keys.is_empty() {
            self.enforce(&loaded.set, self.clock.now());
        }
        Ok(loaded)
    }

    fn create(&mut self) -> Result<Arc<SigningKey>, StoreError> {
        if let Some(refused) = self.refused() {
            return Err(refused);
        }
        let mut transit = match self.transit.clone() {
            Some(t) => t,
            None => self.read_transit()?,
        };
        if self.unused_version(&transit).is_none() {
            let path = self.vault.key_path();
            self.block_on(self.vault.rotate())
                .map_err(|e| vault_error(&format!("rotate {path}"), e))?;
            transit = self.read_transit()?;
        }
        let version = self.unused_version(&transit).ok_or_else(|| {
            StoreError::Vault(format!(
                "{} has no new version after a rotation",
                self.vault.key_path()
            ))
        })?;
        let jwk = transit.versions[&version].jwk.clone();
        let signer = self.signer(version, jwk);
        self.pending.push(version);
        self.versions.insert(signer.kid().clone(), version);
        Ok(Arc::new(signer))
    }

    fn commit(&mut self, set: &KeySet) -> Result<(), StoreError> {
        if let Some(refused) = self.refused() {
            return Err(refused);
        }
        self.pending.clear();
        let mut keys = Vec::with_capacity(set.keys.len());
        for info in &set.keys {
            let version = *self.versions.get(&info.kid).ok_or_else(|| {
                StoreError::Vault(format!("key {} has no transit version", info.kid))
            })?;
            keys.push(RecordKey {
                version,
                info: info.clone(),
            });
        }
        let highest = keys
            .iter()
            .map(|k| k.version)
            .chain([self.highest])
            .max()
            .unwrap_or(0);
        let record = Record {
            format: FORMAT,
            issuer: self.issuer.clone(),
            transit_key: self.vault.key_path(),
            highest_version: highest,
            generation: self.generation + 1,
            keys,
        };
        let data = serde_json::to_value(&record).expect("the record serializes");
        match self.block_on(self.vault.write_record(&data, self.cas)) {
            Ok(kv_version) => {
                self.cas = kv_version;
                self.highest = highest;
                self.generation = record.generation;
                self.versions.retain(|kid, _| set.contains(kid));
            }
            Err(e) if e.is_cas_mismatch() => {
                self.read_newest = true;
                return Err(StoreError::Conflict);
            }
            Err(e) => {
                return Err(vault_error(
                    &format!("write {}", self.vault.record_path()),
                    e,
                ));
            }
        }
        self.enforce(set, self.clock.now());
        Ok(())
    }

    fn refresh(&mut self) -> Result<Option<Loaded>, StoreError> {
        let stored = match self.read_record()? {
            RecordRead::Present(stored) => stored,
            RecordRead::Deleted { kv_version } => {
                return Err(self.refuse(self.deleted_message(kv_version)));
            }
            RecordRead::Absent if self.cas == 0 => return Ok(None),
            RecordRead::Absent => {
                return Err(self.refuse(
                    "is gone with its whole history (its KV metadata was deleted): restore it from a backup of Vault; tfe-oidc will not start a new key history under replicas that hold the old one".into(),
                ));
            }
        };
        if stored.kv_version == self.cas {
            self.clear_refusal();
            if let Some(set) = self.enforce_pending.take() {
                self.enforce(&set, self.clock.now());
            }
            return Ok(None);
        }
        if stored.kv_version < self.cas {
            return self.stale_read(stored.kv_version);
        }
        let record = self.parse_record(&stored.data)?;
        if let Err(why) = self.moves_forward(&record) {
            let why = format!(
                "{why} (KV version {}); write the last good version back with `bao kv rollback -mount={} -version={} {}`",
                stored.kv_version,
                self.vault.kv_mount(),
                self.cas,
                self.vault.kv_path()
            );
            return Err(self.refuse(why));
        }
        // Only a changed record costs a read of the transit key (its new versions).
        let transit = self.read_transit()?;
        let loaded = self.adopt_record(&transit, stored)?;
        self.clear_refusal();
        self.enforce_pending = None;
        Ok(Some(loaded))
    }

    fn refresh_interval(&self) -> Option<Duration> {
        Some(self.refresh)
    }

    fn refused(&self) -> Option<StoreError> {
        self.refused.as_ref().map(|why| StoreError::Refused {
            path: self.vault.record_path().into(),
            why: why.clone(),
        })
    }
}
