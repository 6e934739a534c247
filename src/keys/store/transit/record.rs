//! The lifecycle record in its KV version 2 secret: what it holds, how it is read and checked
//! against the transit key, and the rule that it only moves forward (the module documentation of
//! the store says why). Methods of `TransitStore`, kept here because they are one concern: which
//! record the store adopts, and which it refuses.

use std::collections::HashMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::vault::{KeyInfo as TransitKey, RecordRead, StoredRecord};
use super::{TransitStore, vault_error};
use crate::keys::store::{Loaded, StoreError};
use crate::keys::{KeyInfo, KeySet, PublicJwk};

pub(super) const FORMAT: u32 = 1;

/// The record as stored in the KV secret.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct Record {
    pub(super) format: u32,
    pub(super) issuer: String,
    /// `<mount>/keys/<name>`, so a record copied to another key is noticed.
    pub(super) transit_key: String,
    /// The highest version any record named: a new key is always a higher one.
    pub(super) highest_version: u32,
    /// Raised by every commit: a record with a lower one is an older record written back.
    /// (Absent, so 0, in records of earlier releases.)
    #[serde(default)]
    pub(super) generation: u64,
    pub(super) keys: Vec<RecordKey>,
}

/// A version of the record and its rank: `(highest_version, generation)`.
type Ranked = (StoredRecord, (u32, u64));

/// How many KV versions back a store looks at start: for a readable one when the latest is
/// deleted, and for the most advanced one to check the latest against.
const HISTORY_LOOKBACK: u64 = 20;

/// How many reads in a row may return an older KV version (a standby that is behind) before it
/// counts as a refused record.
const STALE_READS_TOLERATED: u32 = 3;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct RecordKey {
    pub(super) version: u32,
    #[serde(flatten)]
    pub(super) info: KeyInfo,
}

/// `Err(why)` when `record` is older than a record at `(highest_version, generation)`.
fn moves_forward_from(
    record: &Record,
    (highest, generation): (u32, u64),
    key: &str,
) -> Result<(), String> {
    if record.highest_version < highest {
        return Err(format!(
            "was rolled back: it names versions up to {} of {key}, but version {highest} was already published",
            record.highest_version
        ));
    }
    if record.generation < generation {
        return Err(format!(
            "was rolled back: its generation {} is older than generation {generation} already adopted",
            record.generation
        ));
    }
    Ok(())
}

impl TransitStore {
    /// The record as Vault holds it now.
    pub(super) fn read_record(&self) -> Result<RecordRead, StoreError> {
        self.block_on(self.vault.read_record())
            .map_err(|e| vault_error(&format!("read {}", self.vault.record_path()), e))
    }

    /// The record as the most advanced node holds it (after a check-and-set conflict).
    pub(super) fn read_record_newest(&self) -> Result<RecordRead, StoreError> {
        self.block_on(self.vault.read_record_newest())
            .map_err(|e| vault_error(&format!("read {}", self.vault.record_path()), e))
    }

    /// The record at KV version `version`, if that version is readable.
    pub(super) fn read_record_version(
        &self,
        version: u64,
    ) -> Result<Option<StoredRecord>, StoreError> {
        self.block_on(self.vault.read_record_version(Some(version)))
            .map_err(|e| vault_error(&format!("read {}", self.vault.record_path()), e))
    }

    /// No record at all: a new key history, which starts above every version the transit key
    /// ever had (an earlier history may have published them), unless this store just created it.
    pub(super) fn begin_history(&mut self, transit: &TransitKey) -> Loaded {
        self.cas = 0;
        self.generation = 0;
        self.highest = match self.created_key {
            true => 0,
            false => transit
                .versions
                .keys()
                .copied()
                .chain([transit.latest_version])
                .max()
                .unwrap_or(0),
        };
        self.versions.clear();
        self.pending.clear();
        Loaded::default()
    }

    /// Records `why` as the reason the record is refused, logging it when it is new.
    pub(super) fn refuse(&mut self, why: String) -> StoreError {
        if self.refused.as_deref() != Some(why.as_str()) {
            tracing::error!(record = %self.vault.record_path(), why = %why, "the key set record did not move forward and is not adopted; the last good key set stays published and nothing is committed until it is restored");
        }
        self.refused = Some(why.clone());
        StoreError::Refused {
            path: self.vault.record_path().into(),
            why,
        }
    }

    /// The record is readable again at the version this store holds (restored by an operator).
    pub(super) fn clear_refusal(&mut self) {
        self.stale_reads = 0;
        if self.refused.take().is_some() {
            tracing::info!(record = %self.vault.record_path(), "the key set record moves forward again");
        }
    }

    /// `Err(why)` when `record` is older than the one this store last adopted or wrote.
    pub(super) fn moves_forward(&self, record: &Record) -> Result<(), String> {
        let adopted = (self.highest, self.generation);
        moves_forward_from(record, adopted, &self.vault.key_path())
    }

    /// Loads the latest record, unless it is older than the most advanced record of its history
    /// (the earlier versions still readable) or than what this store adopted before: an older
    /// record written back. Then that most advanced record is the last good set, and the latest
    /// is refused.
    pub(super) fn load_present(
        &mut self,
        transit: &TransitKey,
        stored: StoredRecord,
    ) -> Result<Loaded, StoreError> {
        let record = self.parse_record(&stored.data)?;
        let best = self.most_advanced_before(stored.kv_version)?;
        let own = (self.highest, self.generation);
        let floor = match &best {
            Some((_, (highest, generation))) => (own.0.max(*highest), own.1.max(*generation)),
            None => own,
        };
        let Err(why) = moves_forward_from(&record, floor, &self.vault.key_path()) else {
            return self.adopt_record(transit, stored);
        };
        let kv_version = stored.kv_version;
        let good = best.filter(|(_, rank)| rank.0 >= own.0 && rank.1 >= own.1);
        let Some((good, _)) = good else {
            return Err(self.refuse(format!(
                "{why} (KV version {kv_version}); write the last good version of the record back with `bao kv rollback`"
            )));
        };
        let why = format!(
            "{why} (KV version {kv_version}); write the last good version back with `bao kv rollback -mount={} -version={} {}`",
            self.vault.kv_mount(),
            good.kv_version,
            self.vault.kv_path()
        );
        let loaded = self.adopt_version(transit, good, true)?;
        self.refuse(why);
        Ok(loaded)
    }

    /// The most advanced record (highest `highest_version`, then `generation`) among the
    /// readable versions before `kv_version`, at most `HISTORY_LOOKBACK` back.
    pub(super) fn most_advanced_before(
        &self,
        kv_version: u64,
    ) -> Result<Option<Ranked>, StoreError> {
        let mut best: Option<Ranked> = None;
        let oldest = kv_version.saturating_sub(HISTORY_LOOKBACK).max(1);
        for version in (oldest..kv_version).rev() {
            let Some(earlier) = self.read_record_version(version)? else {
                continue;
            };
            let Ok(parsed) = self.parse_record(&earlier.data) else {
                continue;
            };
            let rank = (parsed.highest_version, parsed.generation);
            if best.as_ref().is_none_or(|(_, b)| rank > *b) {
                best = Some((earlier, rank));
            }
        }
        Ok(best)
    }

    /// Loads the newest readable version before `kv_version` (deleted) as the last good set,
    /// refused for `why`.
    pub(super) fn load_history(
        &mut self,
        transit: &TransitKey,
        kv_version: u64,
        why: String,
    ) -> Result<Loaded, StoreError> {
        let oldest = kv_version.saturating_sub(HISTORY_LOOKBACK).max(1);
        for version in (oldest..kv_version).rev() {
            if let Some(stored) = self.read_record_version(version)? {
                let loaded = self.adopt_version(transit, stored, true)?;
                self.refuse(why);
                return Ok(loaded);
            }
        }
        Err(StoreError::Refused {
            path: self.vault.record_path().into(),
            why: format!(
                "{why}; no earlier version of it is readable, so which keys still verify unexpired tokens is unknown: restore it before starting"
            ),
        })
    }

    /// A read at an older KV version than the one adopted: a standby that is behind. Ignored a
    /// few times in a row, then refused.
    pub(super) fn stale_read(&mut self, kv_version: u64) -> Result<Option<Loaded>, StoreError> {
        self.stale_reads += 1;
        if self.stale_reads <= STALE_READS_TOLERATED {
            tracing::debug!(
                read = kv_version,
                adopted = self.cas,
                "the key set record was read at an older version (a standby behind?); keeping the newer one"
            );
            return Ok(None);
        }
        Err(self.refuse(format!(
            "reads at KV version {kv_version}, older than version {} already adopted, {} times in a row: a Vault node that does not catch up, or the record's history was deleted and written anew",
            self.cas, self.stale_reads
        )))
    }

    /// The message of a deleted record, with the command that restores it.
    pub(super) fn deleted_message(&self, kv_version: u64) -> String {
        format!(
            "was deleted (KV version {kv_version}); restore it with `bao kv undelete -mount={} -versions={kv_version} {}` (or `vault kv undelete …`)",
            self.vault.kv_mount(),
            self.vault.kv_path()
        )
    }

    /// The record `stored`, checked against the transit key and made into a `Loaded`; it becomes
    /// what this store knows as committed.
    pub(super) fn adopt_record(
        &mut self,
        transit: &TransitKey,
        stored: StoredRecord,
    ) -> Result<Loaded, StoreError> {
        self.adopt_version(transit, stored, false)
    }

    /// `adopt_record`, where `from_history` tolerates keys whose version Vault no longer has: an
    /// earlier version of the record names retired keys that a later one expired and trimmed.
    pub(super) fn adopt_version(
        &mut self,
        transit: &TransitKey,
        stored: StoredRecord,
        from_history: bool,
    ) -> Result<Loaded, StoreError> {
        let record = self.parse_record(&stored.data)?;
        let mut set = KeySet::default();
        let mut signers = HashMap::new();
        let mut versions = HashMap::new();
        for key in &record.keys {
            if from_history && !transit.versions.contains_key(&key.version) {
                tracing::warn!(kid = %key.info.kid, version = key.version, "an earlier version of the key set record names a key version Vault has destroyed since (expired later): left out");
                continue;
            }
            let jwk = self.check_version(transit, key)?;
            if key.info.state.has_private_key() {
                let signer = self.signer(key.version, jwk);
                signers.insert(key.info.kid.clone(), Arc::new(signer));
            }
            versions.insert(key.info.kid.clone(), key.version);
            set.keys.push(key.info.clone());
        }
        set.sort();
        set.check()
            .map_err(|e| self.corrupt_record(e.to_string()))?;
        self.cas = stored.kv_version;
        self.highest = record.highest_version;
        self.generation = record.generation;
        self.versions = versions;
        self.pending.clear();
        Ok(Loaded { set, signers })
    }

    pub(super) fn parse_record(&self, data: &Value) -> Result<Record, StoreError> {
        let record: Record = serde_json::from_value(data.clone())
            .map_err(|e| self.corrupt_record(format!("not a tfe-oidc lifecycle record ({e})")))?;
        if record.format != FORMAT {
            return Err(self.corrupt_record(format!(
                "format {} is not {FORMAT}: written by another version of tfe-oidc",
                record.format
            )));
        }
        if record.issuer != self.issuer {
            return Err(self.corrupt_record(format!(
                "belongs to issuer {:?}, not {:?}: give each issuer its own keys.vault.key (or keys.vault.kv_path)",
                record.issuer, self.issuer
            )));
        }
        if record.transit_key != self.vault.key_path() {
            return Err(self.corrupt_record(format!(
                "describes the transit key {}, not {}: give each transit key its own keys.vault.kv_path",
                record.transit_key,
                self.vault.key_path()
            )));
        }
        Ok(record)
    }

    pub(super) fn corrupt_record(&self, why: String) -> StoreError {
        StoreError::Corrupt {
            path: self.vault.record_path().into(),
            why,
        }
    }

    /// The public key of `key`'s version, which must be the key the record names.
    pub(super) fn check_version(
        &self,
        transit: &TransitKey,
        key: &RecordKey,
    ) -> Result<PublicJwk, StoreError> {
        let Some(version) = transit.versions.get(&key.version) else {
            return Err(self.corrupt_record(format!(
                "names version {} of {} for key {}, and Vault no longer has that version (trimmed or the key re-created outside tfe-oidc): tokens it signed cannot be verified; restore the transit key from a backup, or delete the record to start a new key history",
                key.version,
                self.vault.key_path(),
                key.info.kid
            )));
        };
        if version.jwk.thumbprint() != key.info.kid || version.jwk != key.info.jwk {
            return Err(self.corrupt_record(format!(
                "names version {} of {} for key {}, but that version holds another public key (the transit key was re-created outside tfe-oidc): delete the record to start a new key history",
                key.version,
                self.vault.key_path(),
                key.info.kid
            )));
        }
        Ok(version.jwk.clone())
    }
}
