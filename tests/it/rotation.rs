//! The key lifecycle's invariant, driven by a fake clock so that months of rotations take seconds:
//!
//! > at every instant and across restarts and crashes: every unexpired token that was handed out
//! > has its kid in the JWKS served; no token is signed by a key that was not already in the
//! > JWKS served.
//!
//! The `KeyManager` runs on a real `FileStore` in a temporary directory. Its publisher records
//! every snapshot it publishes and renders the JWKS from it exactly as the discovery listener
//! does, so "the JWKS served" at any instant is the last one recorded. Tokens are minted with
//! the snapshot's signer through the real `TokenIssuer`, kept, and verified after every step by
//! an independent verifier (`jsonwebtoken`) against the JWK taken from the served JWKS JSON.
//! Random choices come from a seeded PRNG; the seed is printed (`INVARIANT_TEST_SEED` replays it).

use crate::common;
use crate::invariant;
use futures_util::FutureExt;

use std::collections::HashSet;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use invariant::{Minted, Rng, kids, parse_jwks, seed, verify};
use tfe_oidc::config::{Issuer, RsaBits, TokenPolicy};
use tfe_oidc::discovery::Rendered;
use tfe_oidc::discovery::{Documents, JwkSet};
use tfe_oidc::keys::lifecycle::{Policy, RETIRE_MARGIN_SECS, RotateRefused};
use tfe_oidc::keys::manager::{Change, KeyManager, ManagerError};
use tfe_oidc::keys::store::{FileStore, KeyStore, read_unlocked};
use tfe_oidc::keys::{Clock, FakeClock, KeyInfo, KeySet, KeySnapshot, KeyState, UnixTime};
use tfe_oidc::token::claims::{Audience, NamedInput, RunContext, RunIdInput, RunInput};
use tfe_oidc::token::{TokenIssuer, TokenRequest};
use tokio::sync::watch;

const ISSUER: &str = "https://tfe.example.com";
const AUDIENCE: &str = "vault.workload.identity";
/// 2027-01-15: any fixed instant will do; the system clock is never read.
const T0: UnixTime = 1_800_000_000;

/// One published snapshot: the JWKS served from `at` until the next one.
struct Served {
    at: UnixTime,
    change: Change,
    /// The manager's sequence number of this snapshot.
    sequence: u64,
    set: KeySet,
    jwks: JwkSet,
}

/// A key manager on a real file store, a fake clock, and everything it ever published.
struct Lab {
    dir: tempfile::TempDir,
    clock: FakeClock,
    policy: Policy,
    issuer: TokenIssuer,
    served: Arc<Mutex<Vec<Served>>>,
    manager: Option<KeyManager>,
    /// Subscribed to the running manager.
    channels: Mutex<Option<Channels>>,
    /// Every token handed out.
    tokens: Vec<Minted>,
    /// Kids removed on purpose; their tokens are meant to stop verifying.
    revoked: HashSet<String>,
    /// Kids that left the set; none may come back.
    removed: HashSet<String>,
    /// How many entries of `served` had their transitions checked.
    checked: usize,
    verifications: usize,
}

/// What the manager publishes, as a subscriber sees it.
type Channels = (
    watch::Receiver<Arc<KeySnapshot>>,
    watch::Receiver<Arc<Rendered>>,
);

/// Appends the snapshot the manager published last, if it is new (or `always`), checking that no
/// publication was skipped and that the JWKS channel carries exactly that set.
fn record(channels: &mut Channels, log: &Mutex<Vec<Served>>, clock: &FakeClock, always: bool) {
    let (keys, jwks) = channels;
    if !always && !keys.has_changed().expect("the manager is alive") {
        return;
    }
    let snapshot = Arc::clone(&keys.borrow_and_update());
    let rendered = Arc::clone(&jwks.borrow_and_update());
    assert_eq!(
        rendered.body,
        Documents::render(ISSUER, &snapshot.set).jwks.body,
        "the JWKS published is the one of the snapshot's set"
    );
    assert_eq!(
        snapshot.signer.as_ref().map(|s| s.kid().clone()),
        snapshot.set.current().map(|c| c.kid.clone()),
        "the snapshot's signer is its current key"
    );
    let mut log = log.lock().unwrap();
    if !always {
        let previous = log.last().map_or(0, |s| s.sequence);
        assert_eq!(snapshot.sequence, previous + 1, "no publication is skipped");
    }
    log.push(Served {
        at: clock.now(),
        change: snapshot.change,
        sequence: snapshot.sequence,
        set: snapshot.set.clone(),
        jwks: parse_jwks(&rendered.body),
    });
}

/// A temporary directory on tmpfs when there is one: these tests prove the lifecycle and the
/// store's file discipline, not the disk's durability, and hundreds of fsyncs on a busy disk would
/// dominate their runtime. (`crash.rs` uses the ordinary temporary directory.)
fn fast_tempdir() -> tempfile::TempDir {
    let shm = std::path::Path::new("/dev/shm");
    if shm.is_dir()
        && let Ok(dir) = tempfile::tempdir_in(shm)
    {
        return dir;
    }
    tempfile::tempdir().unwrap()
}

fn run_request(ttl: u64) -> TokenRequest {
    let named = |id: &str, name: &str| NamedInput {
        id: id.into(),
        name: name.into(),
    };
    let run = RunContext::parse(&RunInput {
        organization: named("org-GRNbCjYNpBB6NEH9", "acme"),
        project: named("prj-vegSA59s1XPwMr2t", "Default Project"),
        workspace: named("ws-mbsd5E3Ktt5Rg2Xm", "prod"),
        run: RunIdInput {
            id: "run-X3n1AUXNGWbfECsJ".into(),
            phase: "apply".into(),
        },
    })
    .unwrap();
    TokenRequest {
        subject: run.into(),
        audience: None,
        ttl: Some(format!("{ttl}s")),
    }
}

fn issuer_for(policy: &Policy) -> TokenIssuer {
    TokenIssuer::new(
        Issuer::parse(ISSUER).unwrap(),
        TokenPolicy {
            default_audience: Audience::parse(AUDIENCE).unwrap(),
            audiences: vec![AUDIENCE.into()],
            default_ttl: Duration::from_secs(policy.max_ttl.min(3600)),
            max_ttl: Duration::from_secs(policy.max_ttl),
        },
    )
}

/// What a crash left in the key directory before a restart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Leftovers {
    None,
    /// A key written by `create` that no commit named.
    NewKey,
    /// A stray key file and torn temporary files.
    Files,
}

fn rank(state: KeyState) -> u8 {
    match state {
        KeyState::Next => 0,
        KeyState::Current => 1,
        KeyState::Retired => 2,
    }
}

impl Lab {
    fn new(policy: Policy) -> Lab {
        let issuer = issuer_for(&policy);
        Lab {
            dir: fast_tempdir(),
            clock: FakeClock::new(T0),
            policy,
            issuer,
            served: Arc::default(),
            manager: None,
            channels: Mutex::new(None),
            tokens: Vec::new(),
            revoked: HashSet::new(),
            removed: HashSet::new(),
            checked: 0,
            verifications: 0,
        }
    }

    /// A new configuration, for the next start.
    fn set_policy(&mut self, policy: Policy) {
        assert!(
            self.manager.is_none(),
            "the policy changes across a restart"
        );
        self.policy = policy;
        self.issuer = issuer_for(&policy);
    }

    fn keys_dir(&self) -> PathBuf {
        self.dir.path().join("keys")
    }

    fn now(&self) -> UnixTime {
        self.clock.now()
    }

    fn manager(&self) -> &KeyManager {
        self.manager.as_ref().expect("the manager is running")
    }

    fn served_len(&self) -> usize {
        self.observe();
        self.served.lock().unwrap().len()
    }

    /// Records what the running manager published since the last look.
    fn observe(&self) {
        if let Some(channels) = self.channels.lock().unwrap().as_mut() {
            record(channels, &self.served, &self.clock, false);
        }
    }

    /// The set the manifest on disk holds (read directly: parsing the private keys each time, as
    /// `read_unlocked` does, would make this test slow; `mint_from_disk` does that).
    fn committed(&self) -> KeySet {
        let bytes = fs::read(self.keys_dir().join("keys.json")).expect("the manifest");
        let manifest: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(manifest["format"], 1);
        serde_json::from_value(manifest).unwrap()
    }

    /// The set and JWKS served now (the last published).
    fn last(&self) -> (KeySet, JwkSet, Change) {
        self.observe();
        let log = self.served.lock().unwrap();
        let last = log.last().expect("something was published");
        (last.set.clone(), last.jwks.clone(), last.change)
    }

    fn start(&mut self) {
        assert!(self.manager.is_none());
        let store = common::reopen_store(&self.keys_dir());
        let before = self.served_len();
        let manager = KeyManager::start(Box::new(store), Arc::new(self.clock.clone()), self.policy)
            .expect("the key manager starts");
        let mut channels = (manager.subscribe(), manager.subscribe_jwks());
        record(&mut channels, &self.served, &self.clock, true);
        *self.channels.lock().unwrap() = Some(channels);
        assert_eq!(self.served_len(), before + 1, "a start publishes once");
        assert_eq!(self.last().2, Change::Loaded);
        self.manager = Some(manager);
    }

    /// Drops the manager (and its lock), as a process exit would.
    fn stop(&mut self) {
        self.observe();
        *self.channels.lock().unwrap() = None;
        self.manager = None;
    }

    /// Mints one token the way the API does: the published snapshot's signer, the clock's time.
    fn mint(&mut self, ttl: u64) -> Minted {
        let snapshot = self.manager().snapshot();
        let (set, jwks, _) = self.last();
        assert_eq!(
            snapshot.set, set,
            "readers see the set that was published last"
        );
        let signer = snapshot.signer.clone().expect("a signing key");
        self.mint_with(&signer, &jwks, ttl)
    }

    /// Mints one token the way `tfe-oidc token issue` does: from the store on disk, no lock.
    fn mint_from_disk(&mut self, ttl: u64) -> Minted {
        let loaded = read_unlocked(&self.keys_dir()).expect("the store reads without its lock");
        let current = loaded.set.current().expect("a current key").kid.clone();
        let signer = Arc::clone(&loaded.signers[&current]);
        let (_, jwks, _) = self.last();
        self.mint_with(&signer, &jwks, ttl)
    }

    fn mint_with(
        &mut self,
        signer: &tfe_oidc::keys::SigningKey,
        jwks: &JwkSet,
        ttl: u64,
    ) -> Minted {
        let kid = signer.kid().to_string();
        assert!(
            kids(jwks).contains(&kid),
            "about to sign with {kid}, which is not in the JWKS served"
        );
        let committed = self.committed();
        let key = committed
            .get(signer.kid())
            .expect("the signing key is committed");
        assert!(
            key.max_token_ttl.is_some_and(|longest| ttl <= longest),
            "a {ttl}s token from {kid}, which records {:?}",
            key.max_token_ttl
        );
        let now = self.now();
        let issued = self
            .issuer
            .issue(&run_request(ttl), signer, now)
            .now_or_never()
            .expect("a local key signs at once")
            .expect("a valid request");
        let minted = Minted::parse(&issued.token);
        assert_eq!(minted.kid, kid);
        assert_eq!((minted.iat, minted.exp), (now, now + ttl));
        assert!(minted.exp - minted.iat <= self.policy.max_ttl);
        self.tokens.push(minted.clone());
        minted
    }

    /// Ticks at the clock's time, checking that it does what the schedule says, no more.
    fn tick(&mut self) -> Option<Change> {
        let (set, _, _) = self.last();
        let now = self.now();
        let current = set.current().unwrap();
        let due = current.activated_at.unwrap() + self.policy.rotation_period <= now;
        let expiring = set
            .keys
            .iter()
            .any(|k| k.verify_until.is_some_and(|v| v <= now));
        let before = self.served_len();
        let changed = self.manager().tick().expect("tick");
        assert_eq!(
            changed,
            due || expiring,
            "tick at {now}: due {due}, expiring {expiring}"
        );
        assert_eq!(self.served_len(), before + usize::from(changed));
        if !changed {
            return None;
        }
        let change = self.last().2;
        assert_eq!(
            change,
            if due {
                Change::Rotated
            } else {
                Change::Expired
            }
        );
        Some(change)
    }

    /// A manual rotation, checking that a refusal changes nothing and a rotation one step.
    fn rotate(&mut self, force: bool) -> Result<(), ManagerError> {
        let (before, _, _) = self.last();
        let n = self.served_len();
        let result = self.manager().rotate(force);
        match &result {
            Ok(returned) => {
                assert_eq!(self.served_len(), n + 1);
                let (after, _, change) = self.last();
                assert_eq!(change, Change::Rotated);
                assert_eq!(returned, &after);
                assert_eq!(
                    after.current().unwrap().kid,
                    before.next().unwrap().kid,
                    "a rotation makes the published next key current"
                );
            }
            Err(_) => {
                assert_eq!(self.served_len(), n, "a refused rotation publishes nothing");
                assert_eq!(self.committed(), before);
            }
        }
        result.map(|_| ())
    }

    /// Stops, leaves behind what a crash between key generation and commit would (an
    /// uncommitted key file, a torn temporary manifest), lets `downtime` pass while minting
    /// from disk as `token issue` would, and starts again (with a new configuration if given).
    fn restart(
        &mut self,
        downtime: u64,
        leftovers: Leftovers,
        mint_while_down: Option<u64>,
        new_policy: Option<Policy>,
    ) {
        self.stop();
        let dir = self.keys_dir();
        match leftovers {
            Leftovers::None => {}
            Leftovers::NewKey => {
                let mut store = FileStore::open(&dir, RsaBits::Rsa2048).unwrap();
                let stray = store.create().unwrap();
                drop(store);
                assert!(dir.join(format!("{}.pem", stray.kid())).exists());
            }
            Leftovers::Files => {
                // The same files by name, without paying for a key generation.
                fs::write(dir.join(format!("{}.pem", "S".repeat(43))), b"stray").unwrap();
                fs::write(dir.join(format!(".{}.pem.tmp", "T".repeat(43))), b"torn").unwrap();
            }
        }
        if leftovers != Leftovers::None {
            fs::write(dir.join(".keys.json.tmp"), b"{\"format\": 1, \"ke").unwrap();
        }
        let half = downtime / 2;
        self.clock.advance(half);
        if let Some(ttl) = mint_while_down {
            self.mint_from_disk(ttl);
        }
        self.clock.advance(downtime - half);
        if let Some(policy) = new_policy {
            self.set_policy(policy);
        }
        let (before, _, _) = self.last();
        let due = before.current().unwrap().activated_at.unwrap() + self.policy.rotation_period
            <= self.now();
        self.start();
        let (after, _, _) = self.last();
        let expected_current = if due { before.next() } else { before.current() };
        assert_eq!(
            after.current().unwrap().kid,
            expected_current.unwrap().kid,
            "a start after {downtime}s rotates at most once, to the published next key"
        );
        let new: Vec<_> = after
            .keys
            .iter()
            .filter(|k| !before.contains(&k.kid))
            .collect();
        assert_eq!(new.len(), usize::from(due), "new keys at restart: {new:?}");
    }

    /// Every check of the invariant at the clock's time (the set is up to date: call after a
    /// tick, a rotation, a revocation or a start).
    fn check(&mut self, context: &str) {
        self.check_transitions(context);
        let now = self.now();
        let (set, jwks, _) = self.last();
        let ctx = format!("{context} (now T0+{})", now - T0);

        // The set's own shape.
        set.check().unwrap_or_else(|e| panic!("{ctx}: {e}"));
        let count = |s| set.keys.iter().filter(|k| k.state == s).count();
        assert_eq!(
            count(KeyState::Current),
            1,
            "{ctx}: exactly one current key"
        );
        assert_eq!(count(KeyState::Next), 1, "{ctx}: exactly one next key");
        let current = set.current().unwrap();
        assert!(
            current.activated_at.unwrap() + self.policy.rotation_period > now,
            "{ctx}: the current key is overdue for rotation"
        );
        assert!(
            current.max_token_ttl.unwrap() >= self.policy.max_ttl,
            "{ctx}: the current key must record the max_ttl it signs with"
        );
        for key in set.keys.iter().filter(|k| k.state == KeyState::Retired) {
            let until = key.verify_until.unwrap();
            assert_eq!(
                until,
                key.retired_at.unwrap() + key.max_token_ttl.unwrap() + RETIRE_MARGIN_SECS
            );
            assert!(
                until > now,
                "{ctx}: retired key {} still published after its verify_until {until}",
                key.kid
            );
        }

        // What is served is exactly the set, and what is on disk is exactly what was published.
        let set_kids: HashSet<String> = set.keys.iter().map(|k| k.kid.to_string()).collect();
        assert_eq!(
            kids(&jwks),
            set_kids,
            "{ctx}: the JWKS serves exactly the set"
        );
        assert_eq!(
            self.committed(),
            set,
            "{ctx}: the committed set is the published set"
        );

        // Private parts: next and current only, mode 0600; nothing else left in the directory.
        let mut pems = HashSet::new();
        for entry in fs::read_dir(self.keys_dir()).unwrap() {
            let name = entry.unwrap().file_name().to_string_lossy().into_owned();
            assert!(!name.ends_with(".tmp"), "{ctx}: leftover {name}");
            if let Some(kid) = name.strip_suffix(".pem") {
                pems.insert(kid.to_owned());
            }
        }
        let private: HashSet<String> = set
            .keys
            .iter()
            .filter(|k| k.state != KeyState::Retired)
            .map(|k| k.kid.to_string())
            .collect();
        assert_eq!(
            pems, private,
            "{ctx}: private key files are next and current only"
        );
        for kid in &private {
            let mode = fs::metadata(self.keys_dir().join(format!("{kid}.pem")))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{ctx}: {kid}.pem mode");
        }

        // Every unexpired token verifies against the JWKS served; revoked keys' tokens do not.
        for token in self.tokens.iter().filter(|t| t.exp > now) {
            let result = verify(&token.token, &jwks, Some(ISSUER), AUDIENCE);
            if self.revoked.contains(&token.kid) {
                assert!(
                    result.is_err(),
                    "{ctx}: a token of revoked key {} verifies",
                    token.kid
                );
            } else {
                let claims = result.unwrap_or_else(|e| {
                    panic!(
                        "{ctx}: unexpired token (exp T0+{}) does not verify: {e}",
                        token.exp - T0
                    )
                });
                assert_eq!(claims["exp"].as_u64(), Some(token.exp));
                self.verifications += 1;
            }
        }
    }

    /// Checks each published snapshot against the one before it (across restarts too).
    fn check_transitions(&mut self, context: &str) {
        let log = self.served.lock().unwrap();
        for i in self.checked..log.len() {
            let entry = &log[i];
            let set = &entry.set;
            let ctx = format!(
                "{context}: publication #{i} ({:?} at T0+{})",
                entry.change,
                entry.at - T0
            );
            for key in &set.keys {
                assert!(
                    !self.removed.contains(key.kid.as_str()),
                    "{ctx}: key {} came back after it was removed",
                    key.kid
                );
            }
            if i == 0 {
                assert_eq!(entry.change, Change::Loaded);
                assert_eq!(
                    set.keys.len(),
                    2,
                    "{ctx}: a first start makes current and next"
                );
                continue;
            }
            let prev = &log[i - 1];
            let current = set.current().unwrap();
            if current.kid != prev.set.current().unwrap().kid {
                let before = prev.set.get(&current.kid).unwrap_or_else(|| {
                    panic!(
                        "{ctx}: new signing key {} was not in the set published before",
                        current.kid
                    )
                });
                assert_eq!(
                    before.state,
                    KeyState::Next,
                    "{ctx}: only the next key becomes current"
                );
                assert!(
                    kids(&prev.jwks).contains(current.kid.as_str()),
                    "{ctx}: new signing key {} was not in the JWKS served before",
                    current.kid
                );
                assert_eq!(current.activated_at, Some(entry.at));
            }
            for old in &prev.set.keys {
                match set.get(&old.kid) {
                    Some(new) => {
                        assert!(
                            rank(new.state) >= rank(old.state),
                            "{ctx}: {} went back",
                            old.kid
                        );
                        assert!(
                            rank(new.state) <= rank(old.state) + 1,
                            "{ctx}: {} skipped a state",
                            old.kid
                        );
                        assert_eq!((&new.jwk, new.created_at), (&old.jwk, old.created_at));
                        match (old.state, new.state) {
                            (KeyState::Retired, KeyState::Retired) => {
                                assert_eq!(new, old, "{ctx}: retired {} changed", old.kid);
                            }
                            (KeyState::Current, KeyState::Current) => {
                                // A start may only raise the recorded token lifetime.
                                let recorded = |k: &KeyInfo| k.max_token_ttl.unwrap_or(0);
                                assert!(recorded(new) >= recorded(old), "{ctx}: {}", old.kid);
                                let mut same = new.clone();
                                same.max_token_ttl = old.max_token_ttl;
                                assert_eq!(&same, old, "{ctx}: current {} changed", old.kid);
                            }
                            (KeyState::Current, KeyState::Retired) => {
                                // Published until the longest token it may have signed expires,
                                // whatever max_ttl was in force when it signed.
                                let longest = old.max_token_ttl.unwrap().max(self.policy.max_ttl);
                                assert_eq!(new.retired_at, Some(entry.at));
                                assert_eq!(
                                    new.verify_until,
                                    Some(entry.at + longest + RETIRE_MARGIN_SECS),
                                    "{ctx}: verify_until of {}",
                                    old.kid
                                );
                            }
                            (KeyState::Next, KeyState::Current) => {
                                assert_eq!(new.max_token_ttl, Some(self.policy.max_ttl));
                            }
                            _ => {}
                        }
                    }
                    None => {
                        self.removed.insert(old.kid.to_string());
                        if self.revoked.contains(old.kid.as_str()) {
                            continue;
                        }
                        assert_eq!(
                            old.state,
                            KeyState::Retired,
                            "{ctx}: a {} key left the set without a revocation",
                            old.state.as_str()
                        );
                        let until = old.verify_until.unwrap();
                        assert!(
                            until <= entry.at,
                            "{ctx}: retired key {} removed before its verify_until T0+{}",
                            old.kid,
                            until - T0
                        );
                    }
                }
            }
            for new in set.keys.iter().filter(|k| !prev.set.contains(&k.kid)) {
                assert_eq!(
                    new.state,
                    KeyState::Next,
                    "{ctx}: a new key enters as next, published before it signs"
                );
                assert_eq!(new.created_at, entry.at);
            }
        }
        self.checked = log.len();
    }

    fn rotations(&self) -> usize {
        self.served
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.change == Change::Rotated)
            .count()
    }
}

fn short_policy() -> Policy {
    Policy {
        rotation_period: 3600,
        max_ttl: 7200,
        jwks_max_age: 900,
    }
}

#[test]
fn every_unexpired_token_verifies_against_the_served_jwks_through_sixty_periods_of_rotations_and_restarts()
 {
    let seed = seed("rotation walk");
    let mut rng = Rng::new(seed);
    let policy = short_policy();
    let mut lab = Lab::new(policy);
    lab.start();
    lab.check("first start");
    // At least 60 rotation periods of clock time and at least 60 rotations (a jump over several
    // periods rotates once, so the two differ).
    let (periods, min_rotations) = (60, 60);
    let end = T0 + periods * policy.rotation_period;
    let (mut steps, mut refused, mut manual, mut forced, mut restarts) = (0, 0, 0, 0, 0);
    while lab.now() < end || lab.rotations() < min_rotations {
        steps += 1;
        let dt = if rng.percent(10) {
            rng.range(policy.rotation_period, 3 * policy.rotation_period)
        } else {
            rng.range(1, policy.rotation_period / 2)
        };
        lab.clock.advance(dt);
        let ctx = format!("seed {seed} step {steps}");
        lab.tick();
        lab.check(&format!("{ctx} after tick"));
        for _ in 0..rng.range(0, 3) {
            let ttl = rng.range(1, lab.policy.max_ttl);
            lab.mint(ttl);
        }
        if rng.percent(10) {
            let (set, _, _) = lab.last();
            let young = lab.now() - set.next().unwrap().created_at < policy.jwks_max_age;
            match (lab.rotate(false), young) {
                (Err(ManagerError::Refused(RotateRefused::NextTooYoung { .. })), true) => {
                    refused += 1
                }
                (Ok(()), false) => manual += 1,
                (result, young) => {
                    panic!("{ctx}: manual rotation with a young next key ({young}): {result:?}")
                }
            }
            lab.check(&format!("{ctx} after manual rotation"));
            lab.mint(rng.range(1, lab.policy.max_ttl));
        }
        if rng.percent(4) {
            lab.rotate(true).expect("a forced rotation");
            forced += 1;
            lab.check(&format!("{ctx} after forced rotation"));
            lab.mint(rng.range(1, lab.policy.max_ttl));
        }
        if rng.percent(6) {
            let downtime = if rng.percent(30) {
                rng.range(0, 3 * policy.rotation_period)
            } else {
                rng.range(0, 300)
            };
            let leftovers = if rng.percent(50) {
                Leftovers::Files
            } else {
                Leftovers::None
            };
            let mint = rng.percent(50).then(|| rng.range(1, lab.policy.max_ttl));
            // Sometimes the operator changed tokens.max_ttl before this restart.
            let new_policy = rng.percent(30).then(|| Policy {
                max_ttl: [3600, 7200, 14_400][rng.range(0, 2) as usize],
                ..policy
            });
            lab.restart(downtime, leftovers, mint, new_policy);
            restarts += 1;
            lab.check(&format!("{ctx} after restart (downtime {downtime}s)"));
            lab.mint(rng.range(1, lab.policy.max_ttl));
        }
        lab.check(&format!("{ctx} after minting"));
    }
    let rotations = lab.rotations();
    let periods = (lab.now() - T0) / policy.rotation_period;
    eprintln!(
        "rotation walk: {periods} periods, {steps} steps, {rotations} rotations ({manual} manual, {forced} forced, {refused} refused), {restarts} restarts, {} tokens, {} verifications",
        lab.tokens.len(),
        lab.verifications
    );
    assert!(rotations >= min_rotations);
    assert!(lab.tokens.len() > 100);
}

// ---- the service: tokens over the API, the JWKS over HTTP ----

#[tokio::test(flavor = "multi_thread")]
async fn tokens_minted_over_the_api_verify_against_the_jwks_fetched_over_http_across_rotations() {
    let seed = seed("service walk");
    let mut rng = Rng::new(seed);
    let clock = FakeClock::new(T0);
    let server = common::TestServer::start(common::Options {
        clock: Some(clock.clone()),
        ..Default::default()
    })
    .await;
    let policy = *server.running.state.manager.policy();
    let client = server.client();
    let fetch = || async {
        let response = client
            .get(server.discovery_url("/.well-known/jwks"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        parse_jwks(&response.bytes().await.unwrap())
    };
    let mut tokens: Vec<Minted> = Vec::new();
    let mut previous = fetch().await;
    let mut signers = HashSet::new();
    let mut verifications = 0;
    // Until eight keys have signed (each tick rotates at most once, and late ticks push the
    // schedule back, so this takes eight periods of clock time or more).
    let wanted_signers = 8;
    let mut steps = 0;
    while signers.len() < wanted_signers {
        steps += 1;
        assert!(
            steps < 200,
            "{steps} steps and only {} signers",
            signers.len()
        );
        let ctx = format!("seed {seed} step {steps} (T0+{})", clock.now() - T0);
        clock.advance(rng.range(60, policy.rotation_period * 3 / 4));
        let manager = Arc::clone(&server.running.state.manager);
        tokio::task::spawn_blocking(move || manager.tick())
            .await
            .unwrap()
            .unwrap();
        let served = fetch().await;
        for _ in 0..rng.range(1, 3) {
            let mut body = common::run_body("acme", "prod", "apply");
            body["ttl"] = format!("{}s", rng.range(1, policy.max_ttl)).into();
            let (status, answer) = server.post_token(&body).await;
            assert_eq!(status, 200, "{ctx}: {answer}");
            let minted = Minted::parse(answer["token"].as_str().unwrap());
            assert_eq!(answer["kid"].as_str(), Some(minted.kid.as_str()));
            assert!(
                kids(&previous).contains(&minted.kid),
                "{ctx}: token signed by {}, which the JWKS did not serve before this step",
                minted.kid
            );
            signers.insert(minted.kid.clone());
            tokens.push(minted);
        }
        let served_after = fetch().await;
        assert_eq!(
            served, served_after,
            "{ctx}: minting does not change the JWKS"
        );
        let now = clock.now();
        for token in tokens.iter().filter(|t| t.exp > now) {
            verify(&token.token, &served, Some(server.issuer()), AUDIENCE)
                .unwrap_or_else(|e| panic!("{ctx}: unexpired token does not verify: {e}"));
            verifications += 1;
        }
        // The served JWKS is the published set, with no retired key past its verify_until.
        let set = server.running.state.manager.snapshot().set.clone();
        let set_kids: HashSet<String> = set.keys.iter().map(|k| k.kid.to_string()).collect();
        assert_eq!(kids(&served), set_kids, "{ctx}");
        assert!(
            set.keys
                .iter()
                .all(|k| k.verify_until.is_none_or(|v| v > now)),
            "{ctx}"
        );
        previous = served;
    }
    eprintln!(
        "service walk: {steps} steps over {} periods, {} signing keys, {} tokens, {verifications} verifications over HTTP",
        (clock.now() - T0) / policy.rotation_period,
        signers.len(),
        tokens.len()
    );
    assert!(
        verifications > tokens.len(),
        "{verifications} verifications"
    );
    server.stop().await;
}

// ---- regressions ----

/// Revocation is the one intended way for a key to leave early: it is gone from the JWKS at
/// once, its tokens stop verifying, and the set is completed with a key that was published.
#[test]
fn revoked_key_leaves_the_jwks_at_once_and_its_tokens_stop_verifying() {
    let mut lab = Lab::new(short_policy());
    lab.start();
    let first = lab.mint(7200);
    lab.clock.advance(1000);
    lab.rotate(false).unwrap();
    lab.check("rotated");
    let second = lab.mint(7200);
    let (set, _, _) = lab.last();
    let retired = set
        .keys
        .iter()
        .find(|k| k.state == KeyState::Retired)
        .unwrap()
        .clone();
    assert_eq!(retired.kid.as_str(), first.kid);

    // A retired key, long before its verify_until.
    lab.revoked.insert(retired.kid.to_string());
    lab.manager().revoke(&retired.kid).unwrap();
    let (after, jwks, change) = lab.last();
    assert_eq!(change, Change::Revoked);
    assert!(!after.contains(&retired.kid));
    assert!(lab.now() < retired.verify_until.unwrap());
    let error = verify(&first.token, &jwks, Some(ISSUER), AUDIENCE).unwrap_err();
    assert!(error.contains("not in the JWKS"), "{error}");
    lab.check("retired key revoked");

    // The current key: the published next key takes over, a new next key is made.
    let (before, before_jwks, _) = lab.last();
    let current = before.current().unwrap().kid.clone();
    lab.revoked.insert(current.to_string());
    lab.manager().revoke(&current).unwrap();
    let (after, jwks, _) = lab.last();
    assert!(!after.contains(&current));
    assert!(!lab.keys_dir().join(format!("{current}.pem")).exists());
    let promoted = after.current().unwrap();
    assert_eq!(promoted.kid, before.next().unwrap().kid);
    assert!(kids(&before_jwks).contains(promoted.kid.as_str()));
    assert!(!before.contains(&after.next().unwrap().kid));
    assert!(verify(&second.token, &jwks, Some(ISSUER), AUDIENCE).is_err());
    lab.check("current key revoked");
    let third = lab.mint(600);
    assert_eq!(third.kid, promoted.kid.as_str());

    // The next key: replaced; the current key keeps signing.
    let (before, _, _) = lab.last();
    let next = before.next().unwrap().kid.clone();
    lab.revoked.insert(next.to_string());
    lab.manager().revoke(&next).unwrap();
    let (after, _, _) = lab.last();
    assert_eq!(after.current().unwrap().kid, before.current().unwrap().kid);
    assert!(!after.contains(&next));
    lab.check("next key revoked");

    // An unknown kid: refused, nothing published.
    let n = lab.served_len();
    let unknown =
        tfe_oidc::keys::Kid::parse("NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs").unwrap();
    assert!(matches!(
        lab.manager().revoke(&unknown),
        Err(ManagerError::UnknownKid(_))
    ));
    assert_eq!(lab.served_len(), n);

    // Across a restart the revoked keys stay gone.
    lab.restart(10, Leftovers::None, None, None);
    lab.check("restart after revocations");
}

#[test]
fn manual_rotation_is_refused_while_the_next_key_is_younger_than_jwks_max_age() {
    let policy = short_policy();
    let mut lab = Lab::new(policy);
    lab.start();
    lab.mint(7200);
    lab.clock.advance(policy.jwks_max_age - 1);
    match lab.rotate(false) {
        Err(ManagerError::Refused(RotateRefused::NextTooYoung {
            published_secs,
            max_age_secs,
            wait_secs,
        })) => assert_eq!(
            (published_secs, max_age_secs, wait_secs),
            (policy.jwks_max_age - 1, policy.jwks_max_age, 1)
        ),
        other => panic!("expected a refusal: {other:?}"),
    }
    lab.check("refused");
    lab.clock.advance(1);
    lab.rotate(false)
        .expect("allowed once the next key is jwks_max_age old");
    lab.check("rotated");
    lab.mint(7200);
    // The next key made by that rotation is brand new: refused again, unless forced.
    assert!(matches!(
        lab.rotate(false),
        Err(ManagerError::Refused(RotateRefused::NextTooYoung {
            published_secs: 0,
            ..
        }))
    ));
    lab.rotate(true).expect("a forced rotation goes ahead");
    lab.check("forced");
    lab.mint(7200);
    // The scheduled rotation is not subject to the manual rule.
    lab.clock.advance(policy.rotation_period);
    assert_eq!(lab.tick(), Some(Change::Rotated));
    lab.check("scheduled");
}

#[test]
fn restart_after_ten_periods_of_downtime_rotates_once_and_keeps_retired_keys_until_their_verify_until()
 {
    let policy = Policy {
        rotation_period: 3600,
        max_ttl: 40_000,
        jwks_max_age: 900,
    };
    let mut lab = Lab::new(policy);
    lab.start();
    let k1 = lab.mint(policy.max_ttl).kid;
    lab.clock.advance(1000);
    lab.rotate(true).unwrap(); // k1 retires at T0+1000, verify_until T0+41300
    let k2 = lab.mint(policy.max_ttl).kid;
    lab.clock.advance(3600);
    assert_eq!(lab.tick(), Some(Change::Rotated)); // k2 retires at T0+4600: T0+44900
    let k3 = lab.mint(policy.max_ttl).kid;
    lab.clock.advance(3600);
    assert_eq!(lab.tick(), Some(Change::Rotated)); // k3 retires at T0+8200: T0+48500
    let k4 = lab.mint(policy.max_ttl).kid;
    lab.check("before downtime");
    let (before, _, _) = lab.last();
    let k5 = before.next().unwrap().kid.to_string();
    let published_before = lab.served_len();

    lab.clock.advance(100);
    lab.restart(
        10 * policy.rotation_period,
        Leftovers::NewKey,
        Some(policy.max_ttl),
        None,
    );
    let restarted_at = lab.now();
    assert_eq!(restarted_at, T0 + 8300 + 36_000);
    assert_eq!(
        lab.served_len(),
        published_before + 1,
        "one publication at start"
    );
    let (after, _, change) = lab.last();
    assert_eq!(change, Change::Loaded);
    let state = |kid: &str| {
        after
            .keys
            .iter()
            .find(|k| k.kid.as_str() == kid)
            .map(|k| k.state)
    };
    assert_eq!(
        state(&k1),
        None,
        "k1's verify_until passed during the downtime"
    );
    assert_eq!(state(&k2), Some(KeyState::Retired));
    assert_eq!(state(&k3), Some(KeyState::Retired));
    assert_eq!(
        state(&k4),
        Some(KeyState::Retired),
        "the stale current key retired"
    );
    assert_eq!(
        state(&k5),
        Some(KeyState::Current),
        "the published next key took over"
    );
    assert_eq!(
        after.keys.len(),
        5,
        "one new next key, nothing else: {after:?}"
    );
    let k4_until = after
        .keys
        .iter()
        .find(|k| k.kid.as_str() == k4)
        .unwrap()
        .verify_until;
    assert_eq!(
        k4_until,
        Some(restarted_at + policy.max_ttl + RETIRE_MARGIN_SECS)
    );
    assert_eq!(lab.tick(), None, "no second rotation at the same instant");
    lab.check("after restart");

    // Each retired key stays until its verify_until, and goes then.
    for (kid, until) in [(&k2, T0 + 44_900), (&k3, T0 + 48_500)] {
        lab.clock.set(until - 1);
        lab.tick();
        lab.check("just before verify_until");
        assert!(
            lab.last()
                .0
                .keys
                .iter()
                .any(|k| k.kid.as_str() == kid.as_str())
        );
        lab.clock.set(until);
        lab.tick();
        lab.check("at verify_until");
        assert!(
            !lab.last()
                .0
                .keys
                .iter()
                .any(|k| k.kid.as_str() == kid.as_str())
        );
    }
}

/// An operator shortens `tokens.max_ttl` and restarts. Tokens the current key signed under the
/// old, longer limit are still out there: the key must stay published until they expire.
#[test]
fn restart_with_a_shorter_max_ttl_keeps_keys_published_until_tokens_signed_under_the_longer_one_expire()
 {
    let long = Policy {
        rotation_period: 3600,
        max_ttl: 86_400,
        jwks_max_age: 900,
    };
    let short = Policy {
        max_ttl: 7200,
        ..long
    };
    let mut lab = Lab::new(long);
    lab.start();
    lab.clock.advance(1000);
    let day_long = lab.mint(long.max_ttl);
    lab.check("before the restart");
    lab.stop();
    lab.set_policy(short);
    lab.start();
    lab.check("restarted with the shorter max_ttl");
    // Rotate and walk the clock to the day-long token's expiry.
    while lab.now() < day_long.exp {
        lab.clock.advance(1800.min(day_long.exp - lab.now()));
        lab.tick();
        lab.mint(short.max_ttl);
        lab.check("after the restart");
    }
}
