//! Federated callers: a bearer token signed by an upstream OIDC issuer (GitLab CI, GitHub
//! Actions, Kubernetes, Vault/OpenBao identity, another tfe-oidc) accepted as the caller of an
//! `[[api.federation]]` rule (docs/reference.md §4.1).
//!
//! The upstream token is checked as Vault's JWT auth checks ours: a signature by a key of the
//! issuer's JWKS (found through `<issuer>/.well-known/openid-configuration`), with an algorithm
//! from `ALGORITHMS`, `iss` equal to the rule's issuer, `aud` holding one of its audiences, `exp`
//! and `nbf` within `LEEWAY` of the service's clock; then every `bound_claims` glob must match, and the rule's `sub`
//! patterns are filled with the token's claims. The JWKS is cached; an unknown `kid` refetches
//! it, at most once per `REFETCH_INTERVAL` per rule, so an upstream rotation is followed and a
//! flood of made-up `kid`s cannot hammer the upstream. The token itself is never logged.

use std::path::Path;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};
use tokio::sync::Mutex;

use super::auth::Caller;
use super::error::ApiError;
use super::policy::SubPolicy;
use crate::config::{ConfigError, FederationRule, Problem, glob_match};
use crate::keys::UnixTime;
use crate::vault::error_chain;

/// The algorithms an upstream token may be signed with; never `none`, never a shared secret.
const ALGORITHMS: [(&str, Algorithm); 9] = [
    ("RS256", Algorithm::RS256),
    ("RS384", Algorithm::RS384),
    ("RS512", Algorithm::RS512),
    ("PS256", Algorithm::PS256),
    ("PS384", Algorithm::PS384),
    ("PS512", Algorithm::PS512),
    ("ES256", Algorithm::ES256),
    ("ES384", Algorithm::ES384),
    ("EdDSA", Algorithm::EdDSA),
];
/// Clock skew allowed on `exp` and `nbf`, in seconds.
const LEEWAY: u64 = 60;
/// The longest upstream token considered, in bytes.
const MAX_TOKEN: usize = 16 * 1024;
/// The largest discovery document or JWKS read from an upstream.
const MAX_DOCUMENT: usize = 256 * 1024;
/// An unknown `kid` refetches the JWKS at most this often (per rule).
pub const REFETCH_INTERVAL: Duration = Duration::from_secs(5);
/// A JWKS older than this is refetched on next use (a failure keeps the old one).
const MAX_AGE: Duration = Duration::from_secs(600);
/// Each upstream request's time limit.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// Every `[[api.federation]]` rule with its key cache.
pub struct Federation {
    upstreams: Vec<Upstream>,
}

struct Upstream {
    rule: FederationRule,
    http: reqwest::Client,
    /// Held only to read or update the keys, never across a fetch: a token whose key is cached
    /// never waits for the upstream.
    cache: Mutex<KeyCache>,
    /// Held across a fetch: one at a time, and a token whose key is unknown waits for the fetch
    /// under way instead of being refused before it lands.
    fetching: Mutex<()>,
}

#[derive(Default)]
struct KeyCache {
    keys: Vec<Jwk>,
    fetched: Option<Instant>,
    attempted: Option<Instant>,
    /// Why the last fetch failed, while no later one succeeded.
    failure: Option<String>,
}

/// Why an upstream token is not a caller.
#[derive(Debug, thiserror::Error)]
enum Refusal {
    /// A check of the token failed (401).
    #[error("{0}")]
    Token(String),
    /// The token is genuine, but the rule does not let it in (403).
    #[error("{0}")]
    Rule(String),
    /// The upstream's discovery or JWKS could not be read (503).
    #[error("{0}")]
    Unreachable(String),
}

impl Federation {
    /// The rules with their HTTP clients; a `ca_file` that cannot be read is a problem named by
    /// its key.
    pub fn new(rules: &[FederationRule]) -> Result<Federation, ConfigError> {
        let mut problems = Vec::new();
        let mut upstreams = Vec::new();
        for (index, rule) in rules.iter().enumerate() {
            match client(rule.ca_file.as_deref()) {
                Ok(http) => upstreams.push(Upstream {
                    rule: rule.clone(),
                    http,
                    cache: Mutex::new(KeyCache::default()),
                    fetching: Mutex::new(()),
                }),
                Err(why) => problems.push(Problem::new(
                    &format!("api.federation[{index}].ca_file"),
                    why,
                )),
            }
        }
        match problems.is_empty() {
            true => Ok(Federation { upstreams }),
            false => Err(ConfigError(problems)),
        }
    }

    /// The caller an upstream token stands for, or the API error that refuses it.
    /// `now` is the service's clock, against which `exp` and `nbf` are checked.
    pub async fn authenticate(&self, token: &str, now: UnixTime) -> Result<Caller, ApiError> {
        let not_valid = || ApiError::Unauthorized("the bearer token is not valid".into());
        if self.upstreams.is_empty() {
            return Err(not_valid());
        }
        let Some(unverified) = Unverified::parse(token) else {
            return Err(not_valid());
        };
        let iss = unverified.iss.as_deref();
        let rules: Vec<&Upstream> = self
            .upstreams
            .iter()
            .filter(|u| Some(u.rule.issuer.as_str()) == iss)
            .collect();
        if rules.is_empty() {
            return Err(ApiError::Unauthorized(
                "the bearer token is not valid: it is no API token, and its iss names no [[api.federation]] issuer".into(),
            ));
        }
        let mut first = None;
        for upstream in rules {
            match upstream.caller(token, &unverified, now).await {
                Ok(caller) => return Ok(caller),
                Err(refusal) => {
                    tracing::warn!(target: "audit", event = "federation_refused", rule = %upstream.rule.name, reason = %refusal, "an upstream token was refused");
                    first.get_or_insert((upstream.rule.name.clone(), refusal));
                }
            }
        }
        let (name, refusal) = first.expect("at least one rule was tried");
        Err(match refusal {
            Refusal::Token(why) => {
                ApiError::Unauthorized(format!("federation rule {name:?}: {why}"))
            }
            Refusal::Rule(why) => ApiError::Forbidden(format!("federation rule {name:?}: {why}")),
            Refusal::Unreachable(why) => {
                ApiError::Unavailable(format!("federation rule {name:?}: {why}"))
            }
        })
    }
}

/// What a token says of itself before it is verified: only used to choose the rule.
struct Unverified {
    alg: String,
    kid: Option<String>,
    iss: Option<String>,
}

impl Unverified {
    fn parse(token: &str) -> Option<Unverified> {
        if token.len() > MAX_TOKEN {
            return None;
        }
        let mut parts = token.split('.');
        let (header, payload) = (parts.next()?, parts.next()?);
        parts.next()?;
        if parts.next().is_some() {
            return None;
        }
        let header = json_part(header)?;
        let payload = json_part(payload)?;
        Some(Unverified {
            alg: header.get("alg")?.as_str()?.to_owned(),
            kid: header.get("kid").and_then(Value::as_str).map(str::to_owned),
            iss: payload
                .get("iss")
                .and_then(Value::as_str)
                .map(str::to_owned),
        })
    }
}

fn json_part(part: &str) -> Option<Map<String, Value>> {
    serde_json::from_slice(&B64.decode(part).ok()?).ok()
}

impl Upstream {
    async fn caller(
        &self,
        token: &str,
        unverified: &Unverified,
        now: UnixTime,
    ) -> Result<Caller, Refusal> {
        let claims = self.verify(token, unverified).await?;
        check_times(&claims, now)?;
        let rule = &self.rule;
        for (claim, globs) in &rule.bound_claims {
            if !claim_matches(claims.get(claim), globs) {
                return Err(Refusal::Rule(format!(
                    "the upstream token's claim {claim:?} matches none of bound_claims.{claim}"
                )));
            }
        }
        let subs = rule
            .sub
            .iter()
            .map(|t| t.render(&claims))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| Refusal::Rule(e.to_string()))?;
        let upstream_sub = claims.get("sub").and_then(Value::as_str).unwrap_or("");
        Ok(Caller {
            name: format!("{}:{}", rule.name, printable(upstream_sub)),
            scopes: rule.scopes.clone(),
            subs: SubPolicy::Globs(subs),
        })
    }

    /// The claims of `token` once its algorithm, signature, `iss` and `aud` pass (`exp` and `nbf`
    /// are `check_times`'s).
    async fn verify(
        &self,
        token: &str,
        unverified: &Unverified,
    ) -> Result<Map<String, Value>, Refusal> {
        let Some((_, alg)) = ALGORITHMS.iter().find(|(name, _)| *name == unverified.alg) else {
            let allowed: Vec<&str> = ALGORITHMS.iter().map(|(n, _)| *n).collect();
            return Err(Refusal::Token(format!(
                "alg: {:?} is not allowed; allowed: {}",
                printable(&unverified.alg),
                allowed.join(", ")
            )));
        };
        let key = self
            .key(unverified.kid.as_deref(), unverified.alg.as_str())
            .await?;
        let mut validation = Validation::new(*alg);
        // exp and nbf are checked against the service's clock (`check_times`).
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.set_issuer(&[&self.rule.issuer]);
        validation.set_audience(&self.rule.audiences);
        validation.set_required_spec_claims(&["iss", "aud"]);
        jsonwebtoken::decode::<Map<String, Value>>(token, &key, &validation)
            .map(|data| data.claims)
            .map_err(|e| Refusal::Token(self.describe(e.kind())))
    }

    fn describe(&self, kind: &jsonwebtoken::errors::ErrorKind) -> String {
        use jsonwebtoken::errors::ErrorKind as K;
        match kind {
            K::InvalidSignature => {
                "signature: not made by the key the issuer's JWKS holds for this kid".into()
            }
            K::InvalidIssuer => format!("iss: not {:?}", self.rule.issuer),
            K::InvalidAudience => format!(
                "aud: holds none of {} (api.federation audiences)",
                self.rule.audiences.join(", ")
            ),
            K::MissingRequiredClaim(claim) => format!("{claim}: the token has no {claim} claim"),
            K::InvalidClaimFormat(claim) => format!("{claim}: the claim has the wrong type"),
            K::InvalidAlgorithm => {
                "alg: does not fit the key the issuer's JWKS holds for this kid".into()
            }
            _ => "the token is not a well-formed signed JWT".into(),
        }
    }

    /// The issuer's key for `kid` (or its only key when the token names none).
    async fn key(&self, kid: Option<&str>, alg: &str) -> Result<DecodingKey, Refusal> {
        let now = Instant::now();
        let (found, fetching) = {
            let mut cache = self.cache.lock().await;
            let found = find(&cache.keys, kid).is_some();
            let stale = cache.fetched.is_none_or(|t| now - t > MAX_AGE);
            let may_fetch = cache.attempted.is_none_or(|t| now - t >= REFETCH_INTERVAL);
            // Taken before the cache is released, so that a request that finds the fetch
            // attempted also finds it under way (and waits for it).
            let fetching = ((!found || stale) && may_fetch)
                .then(|| self.fetching.try_lock().ok())
                .flatten();
            if fetching.is_some() {
                cache.attempted = Some(now);
            }
            (found, fetching)
        };
        if let Some(_one) = fetching {
            let fetched = self.fetch_jwks().await;
            let mut cache = self.cache.lock().await;
            match fetched {
                Ok(keys) => {
                    cache.keys = keys;
                    cache.fetched = Some(now);
                    cache.failure = None;
                }
                Err(why) => {
                    tracing::warn!(rule = %self.rule.name, issuer = %self.rule.issuer, error = %why, "the upstream JWKS could not be fetched");
                    cache.failure = Some(why);
                }
            }
        } else if !found {
            // Another request may be fetching the key right now: wait for it, then look again.
            drop(self.fetching.lock().await);
        }
        let cache = self.cache.lock().await;
        let Some(jwk) = find(&cache.keys, kid) else {
            if let Some(why) = &cache.failure {
                return Err(Refusal::Unreachable(format!(
                    "the issuer {} cannot be reached: {why}",
                    self.rule.issuer
                )));
            }
            return Err(Refusal::Token(match kid {
                Some(kid) => format!(
                    "kid: the issuer's JWKS holds no key {:?} (it is refetched at most every {}s)",
                    printable(kid),
                    REFETCH_INTERVAL.as_secs()
                ),
                None => "kid: the token names no kid and the issuer's JWKS holds more than one key"
                    .into(),
            }));
        };
        if let Some(key_alg) = jwk.common.key_algorithm
            && format!("{key_alg:?}") != alg
        {
            return Err(Refusal::Token(format!(
                "alg: the issuer's key is for {key_alg:?}, not {alg}"
            )));
        }
        DecodingKey::from_jwk(jwk)
            .map_err(|_| Refusal::Token("kid: the issuer's key for this kid is not usable".into()))
    }

    /// The issuer's discovery document, then its JWKS; every key that parses.
    async fn fetch_jwks(&self) -> Result<Vec<Jwk>, String> {
        let issuer = &self.rule.issuer;
        let url = format!(
            "{}/.well-known/openid-configuration",
            issuer.trim_end_matches('/')
        );
        let discovery = self.get_json(&url).await?;
        if discovery.get("issuer").and_then(Value::as_str) != Some(issuer.as_str()) {
            return Err(format!(
                "{url}: its issuer is not {issuer:?}, so its keys are not this issuer's"
            ));
        }
        let jwks_uri = discovery
            .get("jwks_uri")
            .and_then(Value::as_str)
            .ok_or_else(|| format!("{url}: it has no jwks_uri"))?;
        if issuer.starts_with("https://") && !jwks_uri.starts_with("https://") {
            return Err(format!("{url}: its jwks_uri is not https://"));
        }
        let jwks = self.get_json(jwks_uri).await?;
        let keys = jwks
            .get("keys")
            .and_then(Value::as_array)
            .ok_or_else(|| format!("{jwks_uri}: not a JWKS (no keys array)"))?;
        Ok(keys
            .iter()
            .filter_map(|k| serde_json::from_value::<Jwk>(k.clone()).ok())
            .collect())
    }

    /// GET `url` as JSON: 200 only, at most `MAX_DOCUMENT` bytes, within `FETCH_TIMEOUT`.
    async fn get_json(&self, url: &str) -> Result<Map<String, Value>, String> {
        let fetch = async {
            let mut response = self
                .http
                .get(url)
                .send()
                .await
                .map_err(|e| format!("{url}: {}", error_chain(&e)))?;
            if response.status() != reqwest::StatusCode::OK {
                return Err(format!("{url}: answered {}", response.status()));
            }
            let mut body = Vec::new();
            while let Some(chunk) = response
                .chunk()
                .await
                .map_err(|e| format!("{url}: {}", error_chain(&e)))?
            {
                if body.len() + chunk.len() > MAX_DOCUMENT {
                    return Err(format!("{url}: larger than {MAX_DOCUMENT} bytes"));
                }
                body.extend_from_slice(&chunk);
            }
            serde_json::from_slice(&body).map_err(|e| format!("{url}: not a JSON object: {e}"))
        };
        tokio::time::timeout(FETCH_TIMEOUT, fetch)
            .await
            .unwrap_or_else(|_| {
                Err(format!(
                    "{url}: no answer within {}s",
                    FETCH_TIMEOUT.as_secs()
                ))
            })
    }
}

/// `exp` (required) and `nbf` (when present) against `now`, each with `LEEWAY`.
fn check_times(claims: &Map<String, Value>, now: UnixTime) -> Result<(), Refusal> {
    let time = |name: &'static str| claims.get(name).map(|v| v.as_u64().ok_or(name));
    let wrong = |name: &str| Refusal::Token(format!("{name}: not a number of seconds"));
    match time("exp") {
        None => return Err(Refusal::Token("exp: the token has no exp claim".into())),
        Some(Err(name)) => return Err(wrong(name)),
        Some(Ok(exp)) if exp.saturating_add(LEEWAY) < now => {
            return Err(Refusal::Token(format!(
                "exp: the token expired {}s ago (leeway {LEEWAY}s)",
                now - exp
            )));
        }
        Some(Ok(_)) => {}
    }
    match time("nbf") {
        Some(Err(name)) => Err(wrong(name)),
        Some(Ok(nbf)) if nbf > now.saturating_add(LEEWAY) => Err(Refusal::Token(format!(
            "nbf: the token is not valid for {}s yet (leeway {LEEWAY}s)",
            nbf - now
        ))),
        _ => Ok(()),
    }
}

fn find<'a>(keys: &'a [Jwk], kid: Option<&str>) -> Option<&'a Jwk> {
    match kid {
        Some(kid) => keys
            .iter()
            .find(|k| k.common.key_id.as_deref() == Some(kid)),
        None => match keys {
            [only] => Some(only),
            _ => None,
        },
    }
}

/// Whether a claim's value matches one of `globs`: a string, number or boolean as text, or any
/// item of a list (as Vault's bound_claims).
fn claim_matches(value: Option<&Value>, globs: &[String]) -> bool {
    let matches = |text: &str| globs.iter().any(|g| glob_match(g, text));
    match value {
        Some(Value::String(s)) => matches(s),
        Some(Value::Number(n)) => matches(&n.to_string()),
        Some(Value::Bool(b)) => matches(&b.to_string()),
        Some(Value::Array(items)) => items.iter().any(|i| claim_matches(Some(i), globs)),
        _ => false,
    }
}

/// At most 128 printable ASCII characters of untrusted text, for names and messages.
fn printable(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .take(128)
        .collect()
}

fn client(ca_file: Option<&Path>) -> Result<reqwest::Client, String> {
    let pem = match ca_file {
        Some(path) => {
            Some(std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?)
        }
        None => None,
    };
    crate::vault::http_client(pem.as_deref()).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bound_claims_match_text_numbers_and_lists() {
        let globs = ["release-*".to_owned(), "main".to_owned()];
        assert!(claim_matches(Some(&"main".into()), &globs));
        assert!(claim_matches(
            Some(&serde_json::json!(["x", "release-1"])),
            &globs
        ));
        assert!(!claim_matches(Some(&"dev".into()), &globs));
        assert!(!claim_matches(None, &globs));
        assert!(claim_matches(Some(&true.into()), &["true".to_owned()]));
    }

    #[test]
    fn exp_is_required_and_both_times_have_a_leeway() {
        let claims = |v: Value| v.as_object().unwrap().clone();
        let now = 1_000_000;
        assert!(check_times(&claims(serde_json::json!({"exp": now - 60})), now).is_ok());
        assert!(check_times(&claims(serde_json::json!({"exp": now - 61})), now).is_err());
        assert!(check_times(&claims(serde_json::json!({})), now).is_err());
        assert!(check_times(&claims(serde_json::json!({"exp": "soon"})), now).is_err());
        let early = serde_json::json!({"exp": now + 600, "nbf": now + 61});
        assert!(check_times(&claims(early), now).is_err());
        let ok = serde_json::json!({"exp": now + 600, "nbf": now + 60});
        assert!(check_times(&claims(ok), now).is_ok());
    }

    #[test]
    fn only_a_three_part_json_token_is_looked_at() {
        let part = |v: Value| B64.encode(v.to_string());
        let token = format!(
            "{}.{}.sig",
            part(serde_json::json!({"alg": "none"})),
            part(serde_json::json!({"iss": "https://x"}))
        );
        let u = Unverified::parse(&token).unwrap();
        assert_eq!(
            (u.alg.as_str(), u.iss.as_deref()),
            ("none", Some("https://x"))
        );
        assert!(Unverified::parse("tfeoidc_abc").is_none());
        assert!(Unverified::parse("a.b").is_none());
        assert!(Unverified::parse(&format!("{token}.x")).is_none());
    }
}
