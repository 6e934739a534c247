//! Where keys live: the `KeyStore` interface and the file store.
//!
//! The file store keeps one manifest (`keys.json`, the set) and one PKCS#8 PEM per key that still
//! has a private part (`<kid>.pem`, mode 0600). Every write is new file → fsync → rename → fsync
//! of the directory, and the manifest rename is the one commit point, so a crash leaves the old set
//! or the new one. A new key's PEM is written before the manifest names it; a retired key's PEM is
//! deleted only after the manifest no longer needs it; `open` finishes whatever a crash cut short.
//! A writer holds an exclusive lock on `<dir>/.lock` for as long as it lives.
//!
//! The directory is opened once and trusted for nothing after that (`dir.rs`): no link in it is
//! followed, no file another user could change is used, and the store deletes only the files it
//! names itself (kid-named PEMs and its own temporary files).

mod dir;
mod pem;
pub mod transit;

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use aws_lc_rs::encoding::{AsDer, Pkcs8V1Der};
use aws_lc_rs::rsa::{KeyPair, KeySize};
use serde::{Deserialize, Serialize};

pub use dir::{Access, KeyDir, is_kid_pem, is_own_temp};
use pem::{pem_decode, pem_encode};

use super::RsaBits;
use super::{KeySet, Kid, SigningKey};

const MANIFEST: &str = "keys.json";
const LOCK: &str = ".lock";
const FORMAT: u32 = 1;

/// Errors of a key store. Messages name files, never key material.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    /// Another process holds the store for writing.
    #[error(
        "the key store {dir} is locked by another tfe-oidc process (a running server?): stop it, or use the admin API (POST /v1/keys/rotate) instead"
    )]
    Locked { dir: PathBuf },
    /// A file does not hold what it must.
    #[error("{path}: {why}")]
    Corrupt { path: PathBuf, why: String },
    /// Something other than the expected kind of file (a symbolic link, say) is at a store path.
    #[error(
        "{path} is a {found}, not a {expected}: the key store follows no symbolic links and uses nothing else in their place; remove it"
    )]
    NotAFile {
        path: PathBuf,
        found: &'static str,
        expected: &'static str,
    },
    /// The directory or a file of the store is owned by another user or open to group or others.
    #[error("{path} is {why}, and tfe-oidc trusts no key file another user could change: {fix}")]
    Insecure {
        path: PathBuf,
        why: String,
        fix: String,
    },
    /// The key set changed under a reader too many times in a row.
    #[error("the key store {dir} kept changing while it was read; try again")]
    Busy { dir: PathBuf },
    /// The cryptographic library could not make a key.
    #[error("RSA key generation failed")]
    KeyGen,
    /// The cryptographic library could not encode a private key as PKCS#8.
    #[error("a private key could not be encoded as PKCS#8")]
    Encode,
    /// Another replica committed a different set first: nothing was changed; reload and decide
    /// again.
    #[error("another replica changed the key set first; nothing was changed")]
    Conflict,
    /// Vault (the transit store) refused or did not answer; nothing was changed.
    #[error("{0}")]
    Vault(String),
    /// The shared lifecycle record did not move forward (deleted, rolled back, or an older
    /// version): it is not adopted, the last good set stays published, and nothing is committed
    /// until the record is restored.
    #[error("{path}: {why}")]
    Refused { path: PathBuf, why: String },
    /// Key files are present but the manifest that says which keys they are is gone: starting
    /// afresh would unpublish keys whose tokens may still be valid.
    #[error(
        "{dir}/keys.json is missing but {count} key files are there ({first}…): restore keys.json from a backup; only if these keys never signed a token still in use, move the .pem files away to start afresh"
    )]
    ManifestLost {
        dir: PathBuf,
        count: usize,
        first: String,
    },
}

impl StoreError {
    /// Whether this is a file that does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, StoreError::Io { source, .. } if source.kind() == io::ErrorKind::NotFound)
    }
}

/// What a store holds: the set and a signing key for each key that keeps its private part.
#[derive(Debug, Clone, Default)]
pub struct Loaded {
    pub set: KeySet,
    pub signers: HashMap<Kid, Arc<SigningKey>>,
}

/// A file the committed set needs that was found missing or replaced, and was rewritten.
#[derive(Debug)]
pub struct Restored {
    /// The file, rewritten from memory.
    pub path: PathBuf,
    /// What was wrong with it.
    pub problem: StoreError,
}

/// A place that keeps keys durably. Implementations: `FileStore` (one writer, `keys.dir`) and
/// `transit::TransitStore` (Vault, shared by replicas: `commit` may find that another replica
/// committed first, and `refresh` brings in what the others committed).
pub trait KeyStore: Send + 'static {
    /// The committed set, with a signing key for every key in a state that signs or will sign.
    fn load(&mut self) -> Result<Loaded, StoreError>;
    /// A new key, durably stored but not part of the set until a `commit` names it.
    fn create(&mut self) -> Result<Arc<SigningKey>, StoreError>;
    /// Makes `set` the committed set at once, then destroys every private part it no longer needs.
    fn commit(&mut self, set: &KeySet) -> Result<(), StoreError>;
    /// Checks that what `committed` needs is still stored, rewriting from `committed` (held in
    /// memory) whatever went missing or was replaced; returns what was rewritten. Cheap enough to
    /// call every few seconds.
    fn restore(&mut self, committed: &Loaded) -> Result<Vec<Restored>, StoreError> {
        let _ = committed;
        Ok(Vec::new())
    }
    /// What another writer committed since this store last loaded or committed, if anything:
    /// `None` when the committed set is still the one this store knows. Stores with one writer
    /// (the file store holds a lock) never see one.
    fn refresh(&mut self) -> Result<Option<Loaded>, StoreError> {
        Ok(None)
    }
    /// How often `refresh` should be called; `None` for a store that never needs it.
    fn refresh_interval(&self) -> Option<std::time::Duration> {
        None
    }
    /// Why the shared record is refused right now (`StoreError::Refused`), if it is: `load` then
    /// returned the last good set, which must be published without signing and not committed.
    fn refused(&self) -> Option<StoreError> {
        None
    }
}

#[derive(Serialize, Deserialize)]
struct Manifest {
    format: u32,
    #[serde(flatten)]
    set: KeySet,
}

/// The crash-safe file store, holding the directory's exclusive lock.
#[derive(Debug)]
pub struct FileStore {
    dir: KeyDir,
    bits: RsaBits,
    _lock: std::fs::File,
}

impl FileStore {
    /// Opens (creating with mode 0700 if needed) `dir` for writing, taking its lock, and finishes
    /// any change a crash interrupted. `dir` is resolved this once; a directory, manifest, key or
    /// lock file another user could change is refused (`StoreError::Insecure`).
    pub fn open(dir: &Path, bits: RsaBits) -> Result<FileStore, StoreError> {
        let dir = KeyDir::create(dir)?;
        let lock = dir.lock(LOCK)?;
        let store = FileStore {
            dir,
            bits,
            _lock: lock,
        };
        let set = match dir_has_manifest(&store.dir)? {
            true => read_manifest(&store.dir)?,
            false => store.begin()?,
        };
        for name in needed_pems(&set) {
            if let Some(problem) = store.dir.trouble(&name, Access::Private) {
                return Err(problem);
            }
        }
        store.remove_unneeded(&set)?;
        Ok(store)
    }

    /// A store without a manifest: refused when key files are there (the manifest was lost, and
    /// deleting them would unpublish keys), otherwise started by committing the empty set, so that
    /// key files without a manifest can only ever mean a lost one. (With an empty committed set,
    /// key files are those of a first start that a crash interrupted, and are removed.)
    fn begin(&self) -> Result<KeySet, StoreError> {
        let pems: Vec<String> = self
            .dir
            .names()?
            .into_iter()
            .filter(|n| is_kid_pem(n))
            .collect();
        if let Some(first) = pems.first() {
            return Err(StoreError::ManifestLost {
                dir: self.dir.path().to_owned(),
                count: pems.len(),
                first: first.clone(),
            });
        }
        let empty = KeySet::default();
        self.dir.write_atomic(MANIFEST, &manifest_bytes(&empty))?;
        Ok(empty)
    }

    /// The configured path, for messages: files are reached through the descriptor opened at start.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Deletes the private parts the committed `set` does not name and the store's own leftover
    /// temporary files; nothing else in the directory is touched.
    fn remove_unneeded(&self, set: &KeySet) -> Result<(), StoreError> {
        let needed = needed_pems(set);
        let stale: Vec<String> = self
            .dir
            .names()?
            .into_iter()
            .filter(|n| (is_kid_pem(n) && !needed.contains(n)) || is_own_temp(n))
            .collect();
        for name in &stale {
            self.dir.remove(name)?;
        }
        if !stale.is_empty() {
            self.dir.sync()?;
        }
        Ok(())
    }

    /// Rewrites `name` from memory when it is missing or not a file this store can trust.
    fn restore_file(
        &self,
        name: &str,
        access: Access,
        bytes: impl FnOnce() -> Result<Vec<u8>, StoreError>,
    ) -> Result<Option<Restored>, StoreError> {
        let expected = bytes()?;
        let problem = match self.dir.trouble(name, access) {
            Some(problem) => problem,
            // Present and trustworthy: is it still what the committed set says?
            None => match self.dir.read(name, access) {
                Ok(found) if found == expected => return Ok(None),
                Ok(_) => StoreError::Corrupt {
                    path: self.dir.path_of(name),
                    why: "was replaced: it holds other content than the committed key set".into(),
                },
                Err(e) => e,
            },
        };
        self.dir.write_atomic(name, &expected)?;
        Ok(Some(Restored {
            path: self.dir.path_of(name),
            problem,
        }))
    }
}

fn key_size(bits: RsaBits) -> KeySize {
    match bits {
        RsaBits::Rsa2048 => KeySize::Rsa2048,
        RsaBits::Rsa3072 => KeySize::Rsa3072,
        RsaBits::Rsa4096 => KeySize::Rsa4096,
    }
}

impl KeyStore for FileStore {
    fn load(&mut self) -> Result<Loaded, StoreError> {
        read_loaded(&self.dir)
    }

    fn create(&mut self) -> Result<Arc<SigningKey>, StoreError> {
        let pair = KeyPair::generate(key_size(self.bits)).map_err(|_| StoreError::KeyGen)?;
        let pem = pkcs8_pem(&pair)?;
        let key = SigningKey::new(pair);
        self.dir.write_atomic(&pem_name(key.kid()), &pem)?;
        Ok(Arc::new(key))
    }

    fn commit(&mut self, set: &KeySet) -> Result<(), StoreError> {
        self.dir.write_atomic(MANIFEST, &manifest_bytes(set))?;
        // The set is committed; a private part that cannot be deleted now is deleted at next open.
        if let Err(e) = self.remove_unneeded(set) {
            tracing::error!(error = %e, "a retired private key could not be destroyed yet; it will be at the next start");
        }
        Ok(())
    }

    fn restore(&mut self, committed: &Loaded) -> Result<Vec<Restored>, StoreError> {
        // A directory opened to others is reported, never silently changed back.
        self.dir.recheck()?;
        let mut restored = Vec::new();
        let manifest = || Ok(manifest_bytes(&committed.set));
        restored.extend(self.restore_file(MANIFEST, Access::ReadOnlyToOthers, manifest)?);
        for key in committed.set.keys.iter() {
            let Some(signer) = committed.signers.get(&key.kid) else {
                continue;
            };
            let Some(pair) = signer.key_pair() else {
                continue;
            };
            let pem = || pkcs8_pem(pair);
            restored.extend(self.restore_file(&pem_name(&key.kid), Access::Private, pem)?);
        }
        Ok(restored)
    }
}

/// Reads the store without its lock (for `keys list` and `token issue` while a server runs),
/// with the same checks as a writer. Retries when a concurrent commit removed a file between
/// reading the manifest and the keys. A directory that does not exist holds an empty set.
pub fn read_unlocked(dir: &Path) -> Result<Loaded, StoreError> {
    let dir = match KeyDir::open(dir) {
        Err(e) if e.is_not_found() => return Ok(Loaded::default()),
        other => other?,
    };
    for _ in 0..5 {
        match read_loaded(&dir) {
            Err(e) if e.is_not_found() => continue,
            other => return other,
        }
    }
    Err(StoreError::Busy {
        dir: dir.path().to_owned(),
    })
}

fn read_loaded(dir: &KeyDir) -> Result<Loaded, StoreError> {
    let set = read_manifest(dir)?;
    let mut signers = HashMap::new();
    for key in set.keys.iter().filter(|k| k.state.has_private_key()) {
        let name = pem_name(&key.kid);
        let bytes = dir.read(&name, Access::Private)?;
        let corrupt = |why: &str| StoreError::Corrupt {
            path: dir.path_of(&name),
            why: why.to_owned(),
        };
        let text = std::str::from_utf8(&bytes).map_err(|_| corrupt("not a PKCS#8 PEM file"))?;
        let der = pem_decode(text).ok_or_else(|| corrupt("not a PKCS#8 PEM file"))?;
        let pair = KeyPair::from_pkcs8(&der).map_err(|_| corrupt("not an RSA private key"))?;
        let signer = SigningKey::new(pair);
        if signer.kid() != &key.kid {
            return Err(corrupt(
                "holds a key other than the one its name and the manifest say",
            ));
        }
        signers.insert(key.kid.clone(), Arc::new(signer));
    }
    Ok(Loaded { set, signers })
}

fn dir_has_manifest(dir: &KeyDir) -> Result<bool, StoreError> {
    match dir.read(MANIFEST, Access::ReadOnlyToOthers) {
        Ok(_) => Ok(true),
        Err(e) if e.is_not_found() => Ok(false),
        Err(e) => Err(e),
    }
}

fn read_manifest(dir: &KeyDir) -> Result<KeySet, StoreError> {
    let bytes = match dir.read(MANIFEST, Access::ReadOnlyToOthers) {
        Ok(bytes) => bytes,
        Err(e) if e.is_not_found() => return Ok(KeySet::default()),
        Err(e) => return Err(e),
    };
    let corrupt = |why: String| StoreError::Corrupt {
        path: dir.path_of(MANIFEST),
        why,
    };
    let manifest: Manifest =
        serde_json::from_slice(&bytes).map_err(|e| corrupt(format!("not a key manifest: {e}")))?;
    if manifest.format != FORMAT {
        return Err(corrupt(format!(
            "format {} is not supported (expected {FORMAT})",
            manifest.format
        )));
    }
    manifest.set.check().map_err(|e| corrupt(e.to_string()))?;
    Ok(manifest.set)
}

fn manifest_bytes(set: &KeySet) -> Vec<u8> {
    let manifest = Manifest {
        format: FORMAT,
        set: set.clone(),
    };
    serde_json::to_vec_pretty(&manifest).expect("a key set always serializes")
}

/// The PEM file names of the keys of `set` that keep their private part.
fn needed_pems(set: &KeySet) -> Vec<String> {
    set.keys
        .iter()
        .filter(|k| k.state.has_private_key())
        .map(|k| pem_name(&k.kid))
        .collect()
}

fn pem_name(kid: &Kid) -> String {
    format!("{kid}.pem")
}

/// `pair` as a PKCS#8 PEM file's bytes.
fn pkcs8_pem(pair: &KeyPair) -> Result<Vec<u8>, StoreError> {
    let der: Pkcs8V1Der<'static> = pair.as_der().map_err(|_| StoreError::Encode)?;
    Ok(pem_encode(der.as_ref()).into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::lifecycle;
    use std::fs;

    /// A key directory the store creates (mode 0700) inside a temporary one.
    fn keys_dir() -> (tempfile::TempDir, PathBuf) {
        let parent = tempfile::tempdir().unwrap();
        let keys = parent.path().join("keys");
        (parent, keys)
    }

    fn two_keys(store: &mut FileStore) -> KeySet {
        let (a, b) = (store.create().unwrap(), store.create().unwrap());
        let infos = vec![
            lifecycle::new_next(a.kid().clone(), a.jwk(), 10),
            lifecycle::new_next(b.kid().clone(), b.jwk(), 10),
        ];
        let set = lifecycle::complete(&KeySet::default(), 10, infos);
        store.commit(&set).unwrap();
        set
    }

    #[test]
    fn second_writer_is_refused_while_the_first_holds_the_lock() {
        let (_parent, dir) = keys_dir();
        let _first = FileStore::open(&dir, RsaBits::default()).unwrap();
        let second = FileStore::open(&dir, RsaBits::default()).unwrap_err();
        assert!(matches!(second, StoreError::Locked { .. }), "{second}");
    }

    #[test]
    fn a_created_key_not_committed_is_removed_on_open() {
        let (_parent, dir) = keys_dir();
        let kid = {
            let mut store = FileStore::open(&dir, RsaBits::default()).unwrap();
            store.create().unwrap().kid().clone()
        };
        assert!(dir.join(pem_name(&kid)).exists());
        let mut store = FileStore::open(&dir, RsaBits::default()).unwrap();
        assert!(!dir.join(pem_name(&kid)).exists());
        assert!(store.load().unwrap().set.keys.is_empty());
    }

    #[test]
    fn a_lost_manifest_with_key_files_refuses_to_start_and_deletes_nothing() {
        let (_parent, dir) = keys_dir();
        let set = {
            let mut store = FileStore::open(&dir, RsaBits::default()).unwrap();
            two_keys(&mut store)
        };
        fs::remove_file(dir.join(MANIFEST)).unwrap();
        let err = FileStore::open(&dir, RsaBits::default()).unwrap_err();
        assert!(
            matches!(err, StoreError::ManifestLost { count: 2, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("restore keys.json"), "{err}");
        for key in &set.keys {
            assert!(
                dir.join(pem_name(&key.kid)).exists(),
                "a key file was deleted"
            );
        }
    }

    #[test]
    fn committed_keys_round_trip_with_private_files_mode_0600() {
        use std::os::unix::fs::PermissionsExt;
        let (_parent, dir) = keys_dir();
        let mut store = FileStore::open(&dir, RsaBits::default()).unwrap();
        let set = two_keys(&mut store);
        let loaded = read_unlocked(&dir).unwrap();
        assert_eq!(loaded.set, set);
        assert_eq!(loaded.signers.len(), 2);
        for key in &set.keys {
            let mode = fs::metadata(dir.join(pem_name(&key.kid)))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn restore_rewrites_a_missing_key_file_and_manifest_from_memory() {
        let (_parent, dir) = keys_dir();
        let mut store = FileStore::open(&dir, RsaBits::default()).unwrap();
        two_keys(&mut store);
        let committed = store.load().unwrap();
        assert!(store.restore(&committed).unwrap().is_empty());
        let kid = &committed.set.keys[0].kid;
        let before = fs::read(dir.join(pem_name(kid))).unwrap();
        fs::remove_file(dir.join(pem_name(kid))).unwrap();
        fs::remove_file(dir.join(MANIFEST)).unwrap();
        let restored = store.restore(&committed).unwrap();
        let paths: Vec<_> = restored.iter().map(|r| r.path.clone()).collect();
        assert_eq!(paths, [dir.join(MANIFEST), dir.join(pem_name(kid))]);
        assert!(restored.iter().all(|r| r.problem.is_not_found()));
        assert_eq!(fs::read(dir.join(pem_name(kid))).unwrap(), before);
        assert_eq!(read_unlocked(&dir).unwrap().set, committed.set);
    }

    #[test]
    fn restore_rewrites_a_key_file_or_manifest_whose_content_was_replaced() {
        let (_parent, dir) = keys_dir();
        let mut store = FileStore::open(&dir, RsaBits::default()).unwrap();
        two_keys(&mut store);
        let committed = store.load().unwrap();
        let kid = &committed.set.keys[1].kid;
        let before = fs::read(dir.join(pem_name(kid))).unwrap();
        let other_key = KeyPair::generate(KeySize::Rsa2048).unwrap();
        let der: Pkcs8V1Der<'static> = other_key.as_der().unwrap();
        let other = pem::pem_encode(der.as_ref());
        fs::write(dir.join(pem_name(kid)), other).unwrap();
        fs::write(dir.join(MANIFEST), manifest_bytes(&KeySet::default())).unwrap();
        let restored = store.restore(&committed).unwrap();
        assert_eq!(restored.len(), 2, "{restored:?}");
        assert!(restored[0].problem.to_string().contains("was replaced"));
        assert_eq!(fs::read(dir.join(pem_name(kid))).unwrap(), before);
        assert_eq!(read_unlocked(&dir).unwrap().set, committed.set);
    }

    #[test]
    fn restore_reports_a_directory_opened_to_others_without_changing_it() {
        use std::os::unix::fs::PermissionsExt;
        let (_parent, dir) = keys_dir();
        let mut store = FileStore::open(&dir, RsaBits::default()).unwrap();
        let committed = store.load().unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o777)).unwrap();
        let err = store.restore(&committed).unwrap_err();
        assert!(matches!(err, StoreError::Insecure { .. }), "{err}");
        let mode = fs::metadata(&dir).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o777);
    }

    #[test]
    fn restore_over_a_directory_fails_naming_the_key_file() {
        let (_parent, dir) = keys_dir();
        let mut store = FileStore::open(&dir, RsaBits::default()).unwrap();
        two_keys(&mut store);
        let committed = store.load().unwrap();
        let pem = dir.join(pem_name(&committed.set.keys[1].kid));
        fs::remove_file(&pem).unwrap();
        fs::create_dir(&pem).unwrap();
        let err = store.restore(&committed).unwrap_err().to_string();
        assert!(err.contains(&pem.display().to_string()), "{err}");
    }
}
