//! Signing keys: what a key is (`Kid`, `PublicJwk`, `KeyInfo`), the key set and its lifecycle
//! states (docs/reference.md §7).
//!
//! - `clock.rs`: the injected clock.
//! - `lifecycle.rs`: the pure rules (rotate, expire, revoke) that turn one `KeySet` into the next.
//! - `store/`: the `KeyStore` interface and the crash-safe file store; the only code that writes keys.
//! - `gate.rs`: what a scheduled rotation asks first (push mode: does every target hold the key?).
//! - `manager.rs`: the single writer: applies the rules, persists, then publishes a snapshot.
//!
//! Nothing here knows about HTTP or tokens' claims.

pub mod clock;
pub mod gate;
pub mod lifecycle;
pub mod manager;
pub mod spki;
pub mod store;

use std::fmt;
use std::sync::Arc;

use aws_lc_rs::digest;
use aws_lc_rs::rsa::KeyPair;
use aws_lc_rs::signature::{KeyPair as _, RSA_PKCS1_SHA256};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use serde::{Deserialize, Serialize};

pub use clock::{Clock, FakeClock, SystemClock, UnixTime};

/// The size of the RSA keys the service creates. Keys already in the store keep their size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum RsaBits {
    #[default]
    Rsa2048,
    Rsa3072,
    Rsa4096,
}

impl RsaBits {
    pub fn bits(self) -> u32 {
        match self {
            RsaBits::Rsa2048 => 2048,
            RsaBits::Rsa3072 => 3072,
            RsaBits::Rsa4096 => 4096,
        }
    }
}

/// A key id: the RFC 7638 JWK SHA-256 thumbprint, base64url without padding (43 characters).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Kid(String);

impl Kid {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Accepts only the thumbprint form, so a kid can name a file safely.
    pub fn parse(text: &str) -> Result<Kid, NotAKid> {
        let ok = text.len() == 43
            && text
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if ok {
            Ok(Kid(text.to_owned()))
        } else {
            Err(NotAKid(text.chars().take(64).collect()))
        }
    }
}

/// Text that is not a key id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a key id (43 base64url characters)")]
pub struct NotAKid(String);

impl TryFrom<String> for Kid {
    type Error = NotAKid;
    fn try_from(text: String) -> Result<Kid, NotAKid> {
        Kid::parse(&text)
    }
}

impl From<Kid> for String {
    fn from(kid: Kid) -> String {
        kid.0
    }
}

impl fmt::Display for Kid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Kid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Kid({})", self.0)
    }
}

/// The public half of an RSA key as JWK members (`n`, `e` base64url, big-endian, no leading zeros).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublicJwk {
    pub n: String,
    pub e: String,
}

impl PublicJwk {
    /// RFC 7638: SHA-256 over the required members in lexicographic order, no whitespace.
    pub fn thumbprint(&self) -> Kid {
        let canonical = format!(r#"{{"e":"{}","kty":"RSA","n":"{}"}}"#, self.e, self.n);
        Kid(B64.encode(digest::digest(&digest::SHA256, canonical.as_bytes())))
    }

    /// Size of the modulus in bits.
    pub fn bits(&self) -> usize {
        B64.decode(&self.n).map(|n| n.len() * 8).unwrap_or(0)
    }
}

/// Where a key is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyState {
    /// Published, not yet signing.
    Next,
    /// The one signing key.
    Current,
    /// Published until `verify_until`, never signs again; its private part is destroyed.
    Retired,
}

impl KeyState {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyState::Next => "next",
            KeyState::Current => "current",
            KeyState::Retired => "retired",
        }
    }

    /// Whether a key in this state keeps its private part.
    pub fn has_private_key(self) -> bool {
        self != KeyState::Retired
    }
}

/// What the set records of one key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyInfo {
    pub kid: Kid,
    pub state: KeyState,
    pub created_at: UnixTime,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub activated_at: Option<UnixTime>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retired_at: Option<UnixTime>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify_until: Option<UnixTime>,
    /// The longest lifetime, in seconds, of a token this key may have signed: the largest
    /// `tokens.max_ttl` of any key manager that ran while it was current. Retirement keeps the key
    /// published at least that long, even if `max_ttl` was shortened across a restart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_token_ttl: Option<u64>,
    pub jwk: PublicJwk,
}

/// The key set: every published key, in the order next, current, retired (newest first).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeySet {
    pub keys: Vec<KeyInfo>,
}

impl KeySet {
    pub fn current(&self) -> Option<&KeyInfo> {
        self.keys.iter().find(|k| k.state == KeyState::Current)
    }

    pub fn next(&self) -> Option<&KeyInfo> {
        self.keys.iter().find(|k| k.state == KeyState::Next)
    }

    pub fn get(&self, kid: &Kid) -> Option<&KeyInfo> {
        self.keys.iter().find(|k| &k.kid == kid)
    }

    pub fn contains(&self, kid: &Kid) -> bool {
        self.get(kid).is_some()
    }

    /// Puts the keys in their canonical order.
    pub fn sort(&mut self) {
        let rank = |s: KeyState| match s {
            KeyState::Next => 0,
            KeyState::Current => 1,
            KeyState::Retired => 2,
        };
        self.keys.sort_by(|a, b| {
            rank(a.state)
                .cmp(&rank(b.state))
                .then(b.created_at.cmp(&a.created_at))
        });
    }

    /// Checks the set's own invariants: at most one next and one current, unique kids that are
    /// their thumbprints, retired keys with a `verify_until`.
    pub fn check(&self) -> Result<(), SetError> {
        let count = |s| self.keys.iter().filter(|k| k.state == s).count();
        if count(KeyState::Current) > 1 || count(KeyState::Next) > 1 {
            return Err(SetError::TwoInOneState);
        }
        let mut kids: Vec<&Kid> = self.keys.iter().map(|k| &k.kid).collect();
        kids.sort();
        kids.dedup();
        if kids.len() != self.keys.len() {
            return Err(SetError::DuplicateKid);
        }
        for key in &self.keys {
            if key.jwk.thumbprint() != key.kid {
                return Err(SetError::NotItsThumbprint(key.kid.clone()));
            }
            if key.state == KeyState::Retired && key.verify_until.is_none() {
                return Err(SetError::RetiredWithoutEnd(key.kid.clone()));
            }
        }
        Ok(())
    }
}

/// A key set that breaks its own invariants.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SetError {
    #[error("more than one current or next key")]
    TwoInOneState,
    #[error("duplicate kid")]
    DuplicateKid,
    #[error("kid {0} is not the thumbprint of its key")]
    NotItsThumbprint(Kid),
    #[error("retired key {0} has no verify_until")]
    RetiredWithoutEnd(Kid),
}

/// A key able to sign: the private half parsed once (the file store), or a version of a Vault
/// transit key that signs in Vault (the transit store). Its `Debug` shows only the kid.
pub struct SigningKey {
    kid: Kid,
    jwk: PublicJwk,
    backend: Backend,
    /// `base64url(header) + "."`, computed once per key.
    header_prefix: String,
}

enum Backend {
    Local(KeyPair),
    Transit(store::transit::VersionSigner),
}

/// Why a signature could not be made. Never holds key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SignError(pub String);

impl SigningKey {
    pub fn new(pair: KeyPair) -> SigningKey {
        let jwk = public_jwk(&pair);
        SigningKey::with_backend(jwk, Backend::Local(pair))
    }

    /// A key that signs through Vault's transit engine; `jwk` is the version's public key.
    pub(crate) fn transit(jwk: PublicJwk, signer: store::transit::VersionSigner) -> SigningKey {
        SigningKey::with_backend(jwk, Backend::Transit(signer))
    }

    fn with_backend(jwk: PublicJwk, backend: Backend) -> SigningKey {
        let kid = jwk.thumbprint();
        let header = format!(r#"{{"alg":"RS256","typ":"JWT","kid":"{kid}"}}"#);
        let header_prefix = format!("{}.", B64.encode(header));
        SigningKey {
            kid,
            jwk,
            backend,
            header_prefix,
        }
    }

    pub fn kid(&self) -> &Kid {
        &self.kid
    }

    pub fn jwk(&self) -> PublicJwk {
        self.jwk.clone()
    }

    /// `base64url(header) + "."` for this key's JWS header.
    pub fn header_prefix(&self) -> &str {
        &self.header_prefix
    }

    /// RS256 (RSASSA-PKCS1-v1_5 with SHA-256): through aws-lc's constant-time implementation for
    /// a local key (never fails, never waits), through Vault for a transit key.
    pub async fn sign(&self, message: &[u8]) -> Result<Vec<u8>, SignError> {
        match &self.backend {
            Backend::Local(pair) => Ok(sign_local(pair, message)),
            Backend::Transit(signer) => signer.sign(message).await,
        }
    }

    /// The private key, for a key held in this process (the file store's).
    pub fn key_pair(&self) -> Option<&KeyPair> {
        match &self.backend {
            Backend::Local(pair) => Some(pair),
            Backend::Transit(_) => None,
        }
    }
}

fn sign_local(pair: &KeyPair, message: &[u8]) -> Vec<u8> {
    let mut signature = vec![0; pair.public_modulus_len()];
    pair.sign(
        &RSA_PKCS1_SHA256,
        &aws_lc_rs::rand::SystemRandom::new(),
        message,
        &mut signature,
    )
    .expect("RSA signing with a validated key and a sized buffer cannot fail");
    signature
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let backend = match &self.backend {
            Backend::Local(_) => "local",
            Backend::Transit(_) => "vault-transit",
        };
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .field("backend", &backend)
            .field("private", &"<redacted>")
            .finish()
    }
}

/// The public JWK of an aws-lc key pair.
pub fn public_jwk(pair: &KeyPair) -> PublicJwk {
    let public = pair.public_key();
    let n = public.modulus();
    let e = public.exponent();
    PublicJwk {
        n: B64.encode(n.big_endian_without_leading_zero()),
        e: B64.encode(e.big_endian_without_leading_zero()),
    }
}

/// The key set as `keys list --format json` and `GET /v1/keys` show it: no key material, times
/// in Unix seconds.
#[derive(Debug, Clone, Serialize)]
pub struct Listing {
    pub keys: Vec<ListedKey>,
}

/// One key of a [`Listing`].
#[derive(Debug, Clone, Serialize)]
pub struct ListedKey {
    pub kid: Kid,
    pub state: KeyState,
    pub bits: usize,
    pub created_at: UnixTime,
    pub activated_at: Option<UnixTime>,
    pub retired_at: Option<UnixTime>,
    pub verify_until: Option<UnixTime>,
}

pub fn listing(set: &KeySet) -> Listing {
    let keys = set
        .keys
        .iter()
        .map(|k| ListedKey {
            kid: k.kid.clone(),
            state: k.state,
            bits: k.jwk.bits(),
            created_at: k.created_at,
            activated_at: k.activated_at,
            retired_at: k.retired_at,
            verify_until: k.verify_until,
        })
        .collect();
    Listing { keys }
}

/// An immutable view of the keys at one instant: what is published, and the key that signs.
#[derive(Debug, Clone)]
pub struct KeySnapshot {
    pub set: KeySet,
    pub signer: Option<Arc<SigningKey>>,
    /// What made the set change to this one.
    pub change: manager::Change,
    /// 1 for the first set a manager publishes, then one more for every set after it.
    pub sequence: u64,
    /// Rotations committed by this manager since it started.
    pub rotations: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 7638 §3.1, the example key and its thumbprint.
    #[test]
    fn rfc7638_example_thumbprint() {
        let jwk = PublicJwk {
            n: "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw".into(),
            e: "AQAB".into(),
        };
        assert_eq!(
            jwk.thumbprint().as_str(),
            "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
        );
        assert_eq!(jwk.bits(), 2048);
    }

    #[test]
    fn kid_rejects_path_like_text() {
        assert!(Kid::parse("../../etc/passwd").is_err());
        assert!(Kid::parse("NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs").is_ok());
    }
}
