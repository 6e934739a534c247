//! The single writer of the key set.
//!
//! `KeyManager` applies the lifecycle rules, makes each new set durable through its `KeyStore`,
//! and only then publishes it, through two `tokio::sync::watch` channels: first the JWKS document
//! rendered from the set (what the discovery listener serves), then the `KeySnapshot` with the
//! signing key (what issuance uses). So a key never signs before the JWKS that publishes it is
//! both committed and visible. Readers borrow the latest value and never wait on the writer. Its
//! methods block (key generation, fsync): call them from `spawn_blocking`. `run_rotator` is the
//! background task that drives the schedule and, every few seconds, checks that the store still
//! holds what the committed set needs (`check_store`): a key file deleted under a running server
//! is rewritten from memory, and a failure to do so is the manager's `health` until a later check
//! succeeds.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::gate::report_held;
pub use super::gate::{SignGate, Ungated};
use super::lifecycle::{self, Policy, RotateRefused};
use super::store::{KeyStore, Loaded, StoreError};
use super::{Clock, KeyInfo, KeySet, KeySnapshot, Kid, SigningKey};
use crate::discovery::{JwkSet, Rendered};

/// What made the set change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Loaded (and completed if needed) at start.
    Loaded,
    /// The current key retired and the next key took over.
    Rotated,
    /// Retired keys past their `verify_until` were removed.
    Expired,
    /// A key was removed on request.
    Revoked,
    /// Another replica committed this set (the transit store).
    Synced,
}

/// How many times a change is decided again after another replica committed first.
const CONFLICT_RETRIES: usize = 5;

/// Errors of key management.
#[derive(Debug, thiserror::Error)]
pub enum ManagerError {
    /// The store failed; nothing was changed or published.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A manual rotation was refused.
    #[error(transparent)]
    Refused(#[from] RotateRefused),
    /// No key with that kid is in the set.
    #[error("no key with kid {0} is in the key set")]
    UnknownKid(Kid),
}

/// Why the key store cannot be relied on right now: the message of the store's error, which names
/// the file at fault and never key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Unhealthy(String);

struct Inner {
    store: Box<dyn KeyStore>,
    loaded: Loaded,
    /// When `store.refresh` last ran.
    refreshed: Instant,
}

/// The one writer of the key set; see the module documentation.
pub struct KeyManager {
    inner: Mutex<Inner>,
    clock: Arc<dyn Clock>,
    policy: Policy,
    jwks: watch::Sender<Arc<Rendered>>,
    keys: watch::Sender<Arc<KeySnapshot>>,
    /// The last `check_store` failure; never held across anything slow.
    health: Mutex<Option<Unhealthy>>,
    /// Scheduled changes (`tick`) that failed, since start.
    tick_failures: AtomicU64,
    /// Times the store's shared record was found not moving forward, since start.
    records_refused: AtomicU64,
}

impl KeyManager {
    /// Loads the store, completes and brings the set up to date, and publishes it.
    pub fn start(
        store: Box<dyn KeyStore>,
        clock: Arc<dyn Clock>,
        policy: Policy,
    ) -> Result<KeyManager, ManagerError> {
        let mut store = store;
        let loaded = store.load()?;
        let refreshed = Instant::now();
        let empty = KeySnapshot {
            set: KeySet::default(),
            signer: None,
            change: Change::Loaded,
            sequence: 0,
            rotations: 0,
        };
        let manager = KeyManager {
            inner: Mutex::new(Inner {
                store,
                loaded,
                refreshed,
            }),
            clock,
            policy,
            jwks: watch::Sender::new(Arc::new(Rendered::of(&JwkSet::new(&empty.set)))),
            keys: watch::Sender::new(Arc::new(empty)),
            health: Mutex::new(None),
            tick_failures: AtomicU64::new(0),
            records_refused: AtomicU64::new(0),
        };
        let refused = manager.lock().store.refused();
        if let Some(refused) = refused {
            // The last good set of a record that did not move forward: published so that every
            // token it may have signed still verifies, never signing, never committed.
            let set = manager.lock().loaded.set.clone();
            manager.publish(set, None, Change::Loaded);
            manager.report(Err(refused));
            return Ok(manager);
        }
        manager.retrying(|inner| {
            let set = inner.loaded.set.clone();
            let now = manager.clock.now();
            let completed = manager.complete(inner, &set, now)?;
            let up_to_date = manager
                .bring_up_to_date(inner, &completed, now, true)?
                .unwrap_or(completed);
            if up_to_date == inner.loaded.set && !up_to_date.keys.is_empty() {
                // Another replica's set, already complete and up to date: adopt it as it is.
                manager.adopt(inner, Change::Loaded);
                return Ok(());
            }
            manager.commit(inner, up_to_date, Change::Loaded)
        })?;
        Ok(manager)
    }

    /// Runs `change` under the lock; when another replica committed first (the transit store),
    /// loads what it committed and runs `change` again.
    fn retrying<T>(
        &self,
        mut change: impl FnMut(&mut Inner) -> Result<T, ManagerError>,
    ) -> Result<T, ManagerError> {
        let mut inner = self.lock();
        let mut attempts = 0;
        loop {
            match change(&mut inner) {
                Err(ManagerError::Store(StoreError::Conflict)) if attempts < CONFLICT_RETRIES => {
                    attempts += 1;
                    tracing::info!(
                        "another replica changed the key set first; deciding again on what it committed"
                    );
                    let loaded = inner.store.load()?;
                    inner.loaded = loaded;
                    inner.refreshed = Instant::now();
                    self.adopt(&mut inner, Change::Synced);
                }
                other => return other,
            }
        }
    }

    /// Publishes `inner.loaded`, which another replica committed. When this manager's `max_ttl`
    /// is longer than what the set records for the current key, that is committed first, so no
    /// token outlives the key's retirement; until it is, nothing signs.
    fn adopt(&self, inner: &mut Inner, change: Change) {
        let set = inner.loaded.set.clone();
        let recorded = lifecycle::record_max_ttl(&set, &self.policy);
        if recorded != set {
            match self.commit(inner, recorded, change) {
                Ok(()) => return,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot record this replica's max_ttl on the current key yet: no token is signed until it is");
                    self.publish(set, None, change);
                    return;
                }
            }
        }
        let signer = set
            .current()
            .and_then(|c| inner.loaded.signers.get(&c.kid).cloned());
        self.publish(set, signer, change);
    }

    /// The snapshot readers use now.
    pub fn snapshot(&self) -> Arc<KeySnapshot> {
        Arc::clone(&self.keys.borrow())
    }

    /// Every snapshot from now on, the latest first.
    pub fn subscribe(&self) -> watch::Receiver<Arc<KeySnapshot>> {
        self.keys.subscribe()
    }

    /// The JWKS document of every committed set, rendered once per set.
    pub fn subscribe_jwks(&self) -> watch::Receiver<Arc<Rendered>> {
        self.jwks.subscribe()
    }

    /// `Err` while the last `check_store` could not restore a file the committed set needs.
    pub fn health(&self) -> Result<(), Unhealthy> {
        match &*self.health_slot() {
            Some(problem) => Err(problem.clone()),
            None => Ok(()),
        }
    }

    /// Checks that the store still holds every file the committed set needs, rewriting from memory
    /// any that went missing or was replaced (logged at error level, naming the file). A failure
    /// becomes the manager's `health` until a later check succeeds.
    pub fn check_store(&self) {
        let result = {
            let mut inner = self.lock();
            let Inner { store, loaded, .. } = &mut *inner;
            let restored = store.restore(loaded);
            restored.and_then(|restored| self.refresh(&mut inner).map(|()| restored))
        };
        self.report(result);
    }

    /// Makes `result` of a store check the manager's `health`, logging what changed.
    fn report(&self, result: Result<Vec<super::store::Restored>, StoreError>) {
        match result {
            Ok(restored) => {
                for r in restored {
                    tracing::error!(file = %r.path.display(), problem = %r.problem, "a key store file went missing or was replaced while running; rewritten from memory");
                }
                if self.health_slot().take().is_some() {
                    tracing::info!("the key store holds every file the key set needs again");
                }
            }
            Err(e) => {
                let problem = Unhealthy(e.to_string());
                let mut slot = self.health_slot();
                if slot.as_ref() != Some(&problem) && matches!(e, StoreError::Refused { .. }) {
                    self.records_refused.fetch_add(1, Ordering::Relaxed);
                }
                if slot.as_ref() != Some(&problem) {
                    tracing::error!(error = %problem, "the key store cannot be relied on (a file it needs is missing, or Vault does not answer); /readyz answers 503 until this is fixed");
                }
                *slot = Some(problem);
            }
        }
    }

    /// Reads what other replicas committed, when the store's refresh interval has passed, and
    /// publishes it.
    fn refresh(&self, inner: &mut Inner) -> Result<(), StoreError> {
        // A refused record is read again at every check, so that health never shows it fixed
        // before it is.
        let due = inner.store.refused().is_some()
            || inner
                .store
                .refresh_interval()
                .is_some_and(|every| inner.refreshed.elapsed() >= every);
        if !due {
            return Ok(());
        }
        let refreshed = inner.store.refresh()?;
        inner.refreshed = Instant::now();
        if let Some(loaded) = refreshed {
            inner.loaded = loaded;
            self.adopt(inner, Change::Synced);
        }
        Ok(())
    }

    /// How often the store must be refreshed, if at all.
    pub fn refresh_interval(&self) -> Option<Duration> {
        self.lock().store.refresh_interval()
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    pub fn now(&self) -> super::UnixTime {
        self.clock.now()
    }

    /// Times the store's shared record (the transit store) was refused for not moving forward:
    /// each new reason counts once.
    pub fn records_refused(&self) -> u64 {
        self.records_refused.load(Ordering::Relaxed)
    }

    /// Scheduled rotations or expiries that could not be committed since this manager started
    /// (the rotator retries each one; see `tick`).
    pub fn tick_failures(&self) -> u64 {
        self.tick_failures.load(Ordering::Relaxed)
    }

    /// Applies what the schedule asks for at the clock's current time. Returns whether the set
    /// changed. A failure is counted in `tick_failures`.
    pub fn tick(&self) -> Result<bool, ManagerError> {
        self.tick_gated(&Ungated).map(|t| t.changed)
    }

    /// Like `tick`, but a due rotation happens only if `gate` lets the next key sign; otherwise
    /// the current key keeps signing (retired keys still expire) and `held` names the next key.
    /// A failure is counted (`tick_failures`).
    pub fn tick_gated(&self, gate: &dyn SignGate) -> Result<Ticked, ManagerError> {
        let result = self.apply_schedule(gate);
        if result.is_err() {
            self.tick_failures.fetch_add(1, Ordering::Relaxed);
        }
        result
    }

    fn apply_schedule(&self, gate: &dyn SignGate) -> Result<Ticked, ManagerError> {
        self.retrying(|inner| self.schedule_once(inner, gate))
    }

    fn schedule_once(
        &self,
        inner: &mut Inner,
        gate: &dyn SignGate,
    ) -> Result<Ticked, ManagerError> {
        let set = inner.loaded.set.clone();
        let now = self.clock.now();
        let due = lifecycle::rotation_due(&lifecycle::expire(&set, now), now, &self.policy);
        let held = set.next().filter(|next| due && !gate.may_sign(&next.kid));
        let held = held.map(|next| next.kid.clone());
        let rotated = due && held.is_none();
        let changed = match self.bring_up_to_date(inner, &set, now, held.is_none())? {
            Some(new) => {
                let change = if rotated {
                    Change::Rotated
                } else {
                    Change::Expired
                };
                self.commit(inner, new, change)?;
                true
            }
            None => false,
        };
        Ok(Ticked { changed, held })
    }

    /// Rotates now, refused while the next key is younger than `jwks_max_age` unless `force`.
    pub fn rotate(&self, force: bool) -> Result<KeySet, ManagerError> {
        self.retrying(|inner| {
            let now = self.clock.now();
            let set = lifecycle::expire(&inner.loaded.set, now);
            lifecycle::check_manual_rotation(&set, now, &self.policy, force)?;
            let new_next = self.create(inner, now)?;
            let rotated = lifecycle::rotate(&set, now, &self.policy, new_next);
            self.commit(inner, rotated, Change::Rotated)?;
            Ok(inner.loaded.set.clone())
        })
    }

    /// Removes `kid` at once; a missing current or next key is replaced.
    pub fn revoke(&self, kid: &Kid) -> Result<KeySet, ManagerError> {
        self.retrying(|inner| {
            let now = self.clock.now();
            if !inner.loaded.set.contains(kid) {
                return Err(ManagerError::UnknownKid(kid.clone()));
            }
            let removed = lifecycle::revoke(&inner.loaded.set, kid);
            let completed = self.complete(inner, &removed, now)?;
            self.commit(inner, completed, Change::Revoked)?;
            Ok(inner.loaded.set.clone())
        })
    }

    /// When the set must next change by itself.
    pub fn next_deadline(&self) -> Option<super::UnixTime> {
        lifecycle::next_deadline(&self.snapshot().set, &self.policy)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn health_slot(&self) -> std::sync::MutexGuard<'_, Option<Unhealthy>> {
        self.health
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Expiry plus a rotation when one is due and `may_rotate`; `None` when nothing changes.
    fn bring_up_to_date(
        &self,
        inner: &mut Inner,
        set: &KeySet,
        now: u64,
        may_rotate: bool,
    ) -> Result<Option<KeySet>, ManagerError> {
        let expired = lifecycle::expire(set, now);
        if may_rotate && lifecycle::rotation_due(&expired, now, &self.policy) {
            let new_next = self.create(inner, now)?;
            return Ok(Some(lifecycle::rotate(
                &expired,
                now,
                &self.policy,
                new_next,
            )));
        }
        Ok((&expired != set).then_some(expired))
    }

    fn complete(&self, inner: &mut Inner, set: &KeySet, now: u64) -> Result<KeySet, ManagerError> {
        let new_keys = (0..lifecycle::missing_keys(set))
            .map(|_| self.create(inner, now))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(lifecycle::complete(set, now, new_keys))
    }

    /// A new key, stored (not yet committed) and kept for signing once the set names it.
    fn create(&self, inner: &mut Inner, now: u64) -> Result<KeyInfo, ManagerError> {
        let signer = inner.store.create()?;
        let info = lifecycle::new_next(signer.kid().clone(), signer.jwk(), now);
        inner.loaded.signers.insert(signer.kid().clone(), signer);
        Ok(info)
    }

    /// Makes `set` durable, drops private parts it no longer needs, then publishes it. The current
    /// key is recorded as signing with this manager's `max_ttl` before anything can sign with it.
    fn commit(&self, inner: &mut Inner, set: KeySet, change: Change) -> Result<(), ManagerError> {
        let set = lifecycle::record_max_ttl(&set, &self.policy);
        if let Err(e) = inner.store.commit(&set) {
            let committed = inner.loaded.set.clone();
            inner
                .loaded
                .signers
                .retain(|kid, _| committed.contains(kid));
            return Err(e.into());
        }
        inner
            .loaded
            .signers
            .retain(|kid, _| set.get(kid).is_some_and(|k| k.state.has_private_key()));
        let signer = set
            .current()
            .and_then(|c| inner.loaded.signers.get(&c.kid).cloned());
        inner.loaded.set = set.clone();
        self.publish(set, signer, change);
        Ok(())
    }

    /// The JWKS first, then the signer: see the module documentation.
    fn publish(&self, set: KeySet, signer: Option<Arc<SigningKey>>, change: Change) {
        let previous = self.snapshot();
        let snapshot = KeySnapshot {
            signer,
            change,
            sequence: previous.sequence + 1,
            rotations: previous.rotations + u64::from(change == Change::Rotated),
            set,
        };
        self.jwks
            .send_replace(Arc::new(Rendered::of(&JwkSet::new(&snapshot.set))));
        let kid = |k: Option<&KeyInfo>| k.map(|k| k.kid.to_string()).unwrap_or_default();
        tracing::info!(change = ?change, current = %kid(snapshot.set.current()), next = %kid(snapshot.set.next()), published = snapshot.set.keys.len(), "key set published");
        self.keys.send_replace(Arc::new(snapshot));
    }
}

/// What a gated tick did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ticked {
    /// The set changed (a rotation or an expiry).
    pub changed: bool,
    /// A rotation was due and held back: this next key is not yet held by every verifier.
    pub held: Option<Kid>,
}

/// How often the rotator wakes at most: to check the store's files and to notice a changed clock.
const CHECK_INTERVAL_SECS: u64 = 2;

/// How long the schedule waits after a tick failed.
const TICK_RETRY: Duration = Duration::from_secs(5);

/// How long a held rotation waits between two looks at the gate.
const HELD_RECHECK: Duration = Duration::from_millis(500);

/// Drives the schedule until `shutdown` turns true: sleeps until the next deadline (at most
/// `CHECK_INTERVAL_SECS`), checks the store's files, then ticks through `gate`. A failing store
/// is retried; a held rotation is logged (at error level once it has waited a minute) and retried.
pub async fn run_rotator(
    manager: Arc<KeyManager>,
    gate: Arc<dyn SignGate>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut held_since: Option<Instant> = None;
    let mut last_warned: Option<Instant> = None;
    let refresh_every = manager.refresh_interval();
    let mut retry_at: Option<Instant> = None;
    loop {
        let secs = match manager.next_deadline() {
            Some(deadline) => deadline.saturating_sub(manager.now()),
            None => CHECK_INTERVAL_SECS,
        };
        let mut wait = Duration::from_secs(secs.min(CHECK_INTERVAL_SECS));
        if let Some(every) = refresh_every {
            wait = wait.min(every);
        }
        if held_since.is_some() {
            wait = HELD_RECHECK;
        }
        tokio::select! {
            _ = tokio::time::sleep(wait.max(Duration::from_millis(200))) => {}
            _ = shutdown.changed() => return,
        }
        // After a failed tick the schedule waits a while, but the store is still checked (and
        // refreshed: a replica keeps up with the others while its own rotation cannot commit).
        let tick_now = retry_at.is_none_or(|at| Instant::now() >= at);
        let (m, g) = (Arc::clone(&manager), Arc::clone(&gate));
        let ticked = tokio::task::spawn_blocking(move || {
            m.check_store();
            tick_now.then(|| m.tick_gated(&*g))
        });
        match ticked.await {
            Ok(None) => {}
            Ok(Some(Ok(ticked))) => {
                retry_at = None;
                gate.rotation_held(ticked.held.is_some());
                report_held(ticked.held, &mut held_since, &mut last_warned);
            }
            Ok(Some(Err(e))) => {
                tracing::error!(error = %e, "key rotation failed; the current key keeps signing, retrying in 5s");
                retry_at = Some(Instant::now() + TICK_RETRY);
            }
            Err(e) => tracing::error!(error = %e, "key rotation task panicked"),
        }
    }
}
