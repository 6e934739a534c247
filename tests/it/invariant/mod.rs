//! Helpers shared by `rotation.rs` and `crash.rs`, the two proofs of the key invariant (docs/reference.md §7.5):
//! a seeded PRNG (runs are reproducible from the printed seed) and an independent verifier
//! (the `jsonwebtoken` crate) that checks a token against a JWKS as a relying party would.
#![allow(dead_code)]

use std::collections::HashSet;

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::Value;
use tfe_oidc::discovery::JwkSet;

/// xorshift64*: tiny, seedable, good enough to pick delays and actions.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        assert!(lo <= hi);
        lo + self.next_u64() % (hi - lo + 1)
    }

    /// True with probability `percent`/100.
    pub fn percent(&mut self, percent: u64) -> bool {
        self.next_u64() % 100 < percent
    }
}

/// The seed of one test: `INVARIANT_TEST_SEED` when set (not `TFE_OIDC_*`: the configuration
/// loader refuses unknown variables with that prefix, and child processes inherit them), a fresh one otherwise; printed either way.
pub fn seed(test: &str) -> u64 {
    let seed = std::env::var("INVARIANT_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64;
            nanos ^ (std::process::id() as u64) << 32
        });
    eprintln!("{test}: seed {seed} (rerun with INVARIANT_TEST_SEED={seed})");
    seed
}

/// A token that was handed out, and what the issuer said of it.
#[derive(Debug, Clone)]
pub struct Minted {
    pub token: String,
    pub kid: String,
    pub iat: u64,
    pub exp: u64,
}

impl Minted {
    /// Reads `kid`, `iat` and `exp` from the token itself (not from what the issuer claims).
    pub fn parse(token: &str) -> Minted {
        let header = jsonwebtoken::decode_header(token).expect("a JWS header");
        let claims: Value =
            jsonwebtoken::dangerous::insecure_decode_claims(token).expect("a JWT payload");
        Minted {
            token: token.to_owned(),
            kid: header.kid.expect("a kid in the header"),
            iat: claims["iat"].as_u64().expect("iat"),
            exp: claims["exp"].as_u64().expect("exp"),
        }
    }
}

/// Parses a served JWKS document, insisting that every key carries exactly the public members.
pub fn parse_jwks(body: &[u8]) -> JwkSet {
    let value: Value = serde_json::from_slice(body).expect("the JWKS is JSON");
    let allowed: HashSet<&str> = ["kty", "use", "alg", "kid", "n", "e"].into();
    for key in value["keys"].as_array().expect("a keys array") {
        let members: HashSet<&str> = key
            .as_object()
            .expect("a JWK object")
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(
            members, allowed,
            "a served JWK has other members than the public ones: {key}"
        );
    }
    serde_json::from_value(value).expect("a JWKS")
}

/// Verifies `token` as a relying party would: finds its `kid` in `jwks`, checks the RS256
/// signature with that key's `n` and `e`, and the issuer and audience. Expiry is not checked
/// (the tests' clocks are fake or the tokens are known to be unexpired).
pub fn verify(
    token: &str,
    jwks: &JwkSet,
    issuer: Option<&str>,
    audience: &str,
) -> Result<Value, String> {
    let header = jsonwebtoken::decode_header(token).map_err(|e| format!("header: {e}"))?;
    if header.alg != Algorithm::RS256 {
        return Err(format!("alg {:?}", header.alg));
    }
    let kid = header.kid.ok_or("no kid")?;
    let jwk = jwks
        .keys
        .iter()
        .find(|k| k.kid == kid)
        .ok_or_else(|| format!("kid {kid} is not in the JWKS"))?;
    if jwk.kty != "RSA" || jwk.alg != "RS256" || jwk.use_ != "sig" {
        return Err(format!("JWK {kid} is not an RS256 signing key: {jwk:?}"));
    }
    let key = DecodingKey::from_rsa_components(&jwk.n, &jwk.e).map_err(|e| format!("jwk: {e}"))?;
    let mut validation = Validation::new(Algorithm::RS256);
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.set_audience(&[audience]);
    match issuer {
        Some(iss) => validation.set_issuer(&[iss]),
        None => validation.iss = None,
    }
    validation.set_required_spec_claims(&["exp", "nbf", "aud", "iss", "sub"]);
    jsonwebtoken::decode::<Value>(token, &key, &validation)
        .map(|data| data.claims)
        .map_err(|e| format!("kid {kid}: {e}"))
}

/// The kids of a JWKS.
pub fn kids(jwks: &JwkSet) -> HashSet<String> {
    jwks.keys.iter().map(|k| k.kid.clone()).collect()
}
