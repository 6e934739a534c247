//! The key lifecycle rules of docs/reference.md §7, as pure functions from one `KeySet` to the next.
//!
//! next → current → retired → removed. Nothing here touches files, clocks or locks: the manager
//! decides when, the store makes it durable. Keeping the rules pure lets the tests walk through
//! months of rotations in milliseconds and check the invariant at every step.

use std::time::Duration;

use super::{KeyInfo, KeySet, KeyState, Kid, UnixTime};

/// How long a retired key stays published after the last token it signed could expire.
pub const RETIRE_MARGIN_SECS: u64 = 300;

/// The timing rules, in whole seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    pub rotation_period: u64,
    pub max_ttl: u64,
    pub jwks_max_age: u64,
}

impl Policy {
    pub fn new(rotation_period: Duration, max_ttl: Duration, jwks_max_age: Duration) -> Policy {
        Policy {
            rotation_period: rotation_period.as_secs(),
            max_ttl: max_ttl.as_secs(),
            jwks_max_age: jwks_max_age.as_secs(),
        }
    }
}

/// Why a manual rotation was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RotateRefused {
    /// The next key may not be in every verifier's cache yet.
    #[error(
        "the next key was published {published_secs}s ago, less than jwks_max_age ({max_age_secs}s): verifiers may not have fetched it yet; wait {wait_secs}s or force the rotation"
    )]
    NextTooYoung {
        published_secs: u64,
        max_age_secs: u64,
        wait_secs: u64,
    },
    /// There is nothing to rotate to.
    #[error("the key set has no current and next key")]
    Incomplete,
}

/// A new key as it enters the set: published, not signing.
pub fn new_next(kid: Kid, jwk: super::PublicJwk, now: UnixTime) -> KeyInfo {
    KeyInfo {
        kid,
        state: KeyState::Next,
        created_at: now,
        activated_at: None,
        retired_at: None,
        verify_until: None,
        max_token_ttl: None,
        jwk,
    }
}

/// When the next scheduled rotation is due: once the current key has signed for a whole
/// rotation period, and never before the next key has been published for `jwks_max_age` (a next
/// key made by a revocation shortly before the period ends waits that long).
pub fn rotation_at(set: &KeySet, policy: &Policy) -> Option<UnixTime> {
    let (current, next) = (set.current()?, set.next()?);
    let period_end = current.activated_at.unwrap_or(current.created_at) + policy.rotation_period;
    Some(period_end.max(next.created_at + policy.jwks_max_age))
}

/// Whether a scheduled rotation is due at `now`.
pub fn rotation_due(set: &KeySet, now: UnixTime, policy: &Policy) -> bool {
    rotation_at(set, policy).is_some_and(|at| at <= now)
}

/// Whether a manual rotation may go ahead now.
pub fn check_manual_rotation(
    set: &KeySet,
    now: UnixTime,
    policy: &Policy,
    force: bool,
) -> Result<(), RotateRefused> {
    let (Some(_), Some(next)) = (set.current(), set.next()) else {
        return Err(RotateRefused::Incomplete);
    };
    let published = now.saturating_sub(next.created_at);
    if force || published >= policy.jwks_max_age {
        return Ok(());
    }
    Err(RotateRefused::NextTooYoung {
        published_secs: published,
        max_age_secs: policy.jwks_max_age,
        wait_secs: policy.jwks_max_age - published,
    })
}

/// The current key retires, the next key signs, `new_next` is published.
///
/// The retiring key stays published until the longest-lived token it may have signed has
/// expired: `max_ttl` now, or a longer one recorded while it was current (see `record_max_ttl`).
pub fn rotate(set: &KeySet, now: UnixTime, policy: &Policy, new_next: KeyInfo) -> KeySet {
    let mut out = set.clone();
    for key in &mut out.keys {
        match key.state {
            KeyState::Current => {
                let ttl = policy.max_ttl.max(key.max_token_ttl.unwrap_or(0));
                key.state = KeyState::Retired;
                key.retired_at = Some(now);
                key.verify_until = Some(now + ttl + RETIRE_MARGIN_SECS);
                key.max_token_ttl = Some(ttl);
            }
            KeyState::Next => {
                key.state = KeyState::Current;
                key.activated_at = Some(now);
                key.max_token_ttl = Some(policy.max_ttl);
            }
            KeyState::Retired => {}
        }
    }
    out.keys.push(new_next);
    out.sort();
    out
}

/// Records on the current key that it may sign tokens living `policy.max_ttl` (never lowering
/// what an earlier run with a longer `max_ttl` recorded), so that its retirement covers them.
pub fn record_max_ttl(set: &KeySet, policy: &Policy) -> KeySet {
    let mut out = set.clone();
    for key in out.keys.iter_mut().filter(|k| k.state == KeyState::Current) {
        key.max_token_ttl = Some(policy.max_ttl.max(key.max_token_ttl.unwrap_or(0)));
    }
    out
}

/// Removes retired keys whose tokens have all expired (plus margin).
pub fn expire(set: &KeySet, now: UnixTime) -> KeySet {
    let mut out = set.clone();
    out.keys.retain(|k| {
        k.state != KeyState::Retired || k.verify_until.is_some_and(|until| until > now)
    });
    out
}

/// Removes `kid` at once, whatever its state.
pub fn revoke(set: &KeySet, kid: &Kid) -> KeySet {
    let mut out = set.clone();
    out.keys.retain(|k| &k.kid != kid);
    out
}

/// How many new keys `complete` needs: one for each of current and next that is missing, less a
/// next key that can be promoted.
pub fn missing_keys(set: &KeySet) -> usize {
    match (set.current().is_some(), set.next().is_some()) {
        (true, true) => 0,
        (true, false) | (false, true) => 1,
        (false, false) => 2,
    }
}

/// Fills the set up to one current and one next key: a missing current is the next key promoted
/// (or, with none, the first new key); `new_keys` must hold `missing_keys(set)` keys.
pub fn complete(set: &KeySet, now: UnixTime, new_keys: Vec<KeyInfo>) -> KeySet {
    let mut out = set.clone();
    let mut new_keys = new_keys.into_iter();
    if out.current().is_none() {
        let promote = out.keys.iter_mut().find(|k| k.state == KeyState::Next);
        match promote {
            Some(key) => {
                key.state = KeyState::Current;
                key.activated_at = Some(now);
            }
            None => {
                let mut key = new_keys.next().expect("complete needs a key for current");
                key.state = KeyState::Current;
                key.activated_at = Some(now);
                out.keys.push(key);
            }
        }
    }
    if out.next().is_none() {
        out.keys
            .push(new_keys.next().expect("complete needs a key for next"));
    }
    out.sort();
    out
}

/// The next instant at which the set must change by itself: a rotation or a removal.
pub fn next_deadline(set: &KeySet, policy: &Policy) -> Option<UnixTime> {
    let removal = set.keys.iter().filter_map(|k| k.verify_until).min();
    [rotation_at(set, policy), removal]
        .into_iter()
        .flatten()
        .min()
}
