//! Identity tokens: validated requests in, signed RS256 JWTs out.
//!
//! `input.rs` holds the input rules every kind shares; `claims.rs` (workspace runs),
//! `module_test.rs` and `stack.rs` each own one kind's context and claim set; `kinds.rs` decides
//! which kind a request asks for. This file applies the token policy (audience allowlist, each
//! kind's TTL bounds) and assembles the compact JWS with the current key. It does not choose
//! keys (that is the key manager's snapshot) nor speak HTTP.

pub mod claims;
pub mod input;
pub mod issuer;
pub mod kinds;
pub mod module_test;
pub mod stack;

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use serde::Serialize;

use crate::glob::glob_match;
use crate::keys::{Kid, SignError, SigningKey, UnixTime};
use claims::{Audience, FieldError};
use issuer::Issuer;
use kinds::{InputError, Kind, Subject, TokenClaims, TokenInput};

/// A request for one token, validated field by field.
#[derive(Debug, Clone)]
pub struct TokenRequest {
    pub subject: Subject,
    pub audience: Option<String>,
    pub ttl: Option<String>,
}

impl TokenRequest {
    /// Checks every member of `input` and decides the kind it asks for.
    pub fn parse(input: TokenInput) -> Result<TokenRequest, InputError> {
        Ok(TokenRequest {
            subject: Subject::parse(&input)?,
            audience: input.audience,
            ttl: input.ttl,
        })
    }
}

/// A signed token and what callers and the audit log need to know of it. The token logs in to
/// Vault, so its `Debug` shows the kid and claims but not the token.
#[derive(Clone)]
pub struct IssuedToken {
    pub token: String,
    pub kid: Kid,
    pub claims: TokenClaims,
}

impl std::fmt::Debug for IssuedToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedToken")
            .field("token", &"<redacted>")
            .field("kid", &self.kid)
            .field("claims", &self.claims)
            .finish()
    }
}

/// Applies the token policy and signs.
#[derive(Debug, Clone)]
pub struct TokenIssuer {
    issuer: Issuer,
    policy: TokenPolicy,
}

impl TokenIssuer {
    pub fn new(issuer: Issuer, policy: TokenPolicy) -> TokenIssuer {
        TokenIssuer { issuer, policy }
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// Checks the audience and TTL of `request` against the policy and its kind's bounds.
    pub fn check(&self, request: &TokenRequest) -> Result<(Audience, Duration), FieldError> {
        let audience = self.audience(request.audience.as_deref())?;
        let bounds = ttl_bounds(request.subject.kind(), &self.policy);
        let ttl = match &request.ttl {
            None => bounds.default,
            Some(text) => parse_ttl(text)?,
        };
        Ok((audience, bounds.check(ttl)?))
    }

    fn audience(&self, requested: Option<&str>) -> Result<Audience, FieldError> {
        let audience = match requested {
            None => self.policy.default_audience.clone(),
            Some(text) => {
                Audience::parse(text).map_err(|e| FieldError::new("audience", e.to_string()))?
            }
        };
        if !self.policy.allows(audience.as_str()) {
            return Err(FieldError::new(
                "audience",
                format!(
                    "{:?} is not an allowed audience; allowed: {} (tokens.audiences)",
                    audience.as_str(),
                    self.policy.audiences.join(", ")
                ),
            ));
        }
        Ok(audience)
    }

    /// Validates `request` and signs its token with `signer` at time `now`.
    pub async fn issue(
        &self,
        request: &TokenRequest,
        signer: &SigningKey,
        now: UnixTime,
    ) -> Result<IssuedToken, IssueError> {
        let checked = self.check(request)?;
        Ok(self
            .issue_checked(&request.subject, checked, signer, now)
            .await?)
    }

    /// Signs the token of a request `check` accepted, with the audience and TTL it returned. Fails
    /// only when a remote signer (Vault transit) does.
    pub async fn issue_checked(
        &self,
        subject: &Subject,
        (audience, ttl): (Audience, Duration),
        signer: &SigningKey,
        now: UnixTime,
    ) -> Result<IssuedToken, SignError> {
        let jti = new_jti();
        let claims = subject.claims(&self.issuer, &audience, jti, now, now + ttl.as_secs());
        Ok(IssuedToken {
            token: sign(signer, &claims).await?,
            kid: signer.kid().clone(),
            claims,
        })
    }
}

/// A random (version 4) UUID from aws-lc's generator, which is seeded by the kernel and runs in
/// this process: `Uuid::new_v4` asks the kernel (`getrandom`) for every token.
fn new_jti() -> String {
    let mut bytes = [0; 16];
    aws_lc_rs::rand::fill(&mut bytes).expect("aws-lc's generator does not fail once seeded");
    uuid::Builder::from_random_bytes(bytes)
        .into_uuid()
        .to_string()
}

/// Why a token was not issued: the request, or the signer.
#[derive(Debug, thiserror::Error)]
pub enum IssueError {
    #[error(transparent)]
    Field(#[from] FieldError),
    #[error(transparent)]
    Sign(#[from] SignError),
}

/// The compact JWS of `claims` signed by `signer`.
pub async fn sign<C: Serialize>(signer: &SigningKey, claims: &C) -> Result<String, SignError> {
    let payload = serde_json::to_vec(claims).expect("claims always serialize");
    let mut token =
        String::with_capacity(signer.header_prefix().len() + payload.len() * 4 / 3 + 360);
    token.push_str(signer.header_prefix());
    B64.encode_string(payload, &mut token);
    let signature = signer.sign(token.as_bytes()).await?;
    token.push('.');
    B64.encode_string(signature, &mut token);
    Ok(token)
}

/// The TTLs a request may ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TtlBounds {
    pub default: Duration,
    pub min: Duration,
    pub max: Duration,
    /// What sets `min` and `max`, for messages.
    pub min_source: &'static str,
    pub max_source: &'static str,
}

/// The TTLs `kind` allows under `policy`. Workspace runs and Stacks follow `tokens.default_ttl`
/// and `tokens.max_ttl`. Module tests follow TFE: 300–1800 s, default 600 s, and never past
/// `tokens.max_ttl`, as a key's retirement covers only tokens that expire within it.
pub fn ttl_bounds(kind: Kind, policy: &TokenPolicy) -> TtlBounds {
    match kind {
        Kind::Run | Kind::Stack => TtlBounds {
            default: policy.default_ttl,
            min: Duration::from_secs(1),
            max: policy.max_ttl,
            min_source: "no token lives less",
            max_source: "tokens.max_ttl",
        },
        Kind::ModuleTest => {
            let max = module_test::MAX_TTL.min(policy.max_ttl);
            TtlBounds {
                default: module_test::DEFAULT_TTL.min(max),
                min: module_test::MIN_TTL,
                max,
                min_source: "TFE's bound for module test tokens",
                max_source: if max < module_test::MAX_TTL {
                    "tokens.max_ttl"
                } else {
                    "TFE's bound for module test tokens"
                },
            }
        }
    }
}

impl TtlBounds {
    /// `ttl` when it is within the bounds.
    pub fn check(&self, ttl: Duration) -> Result<Duration, FieldError> {
        if ttl < self.min {
            return Err(FieldError::new(
                "ttl",
                format!(
                    "{} is below the minimum of {} ({})",
                    fmt_duration(ttl),
                    fmt_duration(self.min),
                    self.min_source
                ),
            ));
        }
        if ttl > self.max {
            return Err(FieldError::new(
                "ttl",
                format!(
                    "{} exceeds the maximum of {} ({})",
                    fmt_duration(ttl),
                    fmt_duration(self.max),
                    self.max_source
                ),
            ));
        }
        Ok(ttl)
    }
}

fn parse_ttl(text: &str) -> Result<Duration, FieldError> {
    // humantime skips Unicode spaces; a TTL is plain ASCII words and single inner spaces.
    let plain = text.trim() == text
        && !text.contains("  ")
        && text.bytes().all(|b| b.is_ascii_alphanumeric() || b == b' ');
    let ttl = plain
        .then(|| humantime::parse_duration(text).ok())
        .flatten()
        .ok_or_else(|| {
            FieldError::new(
                "ttl",
                format!(
                    "{:?} is not a duration: use a form like \"90s\", \"20m\" or \"2h\"",
                    text.chars().take(32).collect::<String>()
                ),
            )
        })?;
    if ttl < Duration::from_secs(1) {
        return Err(FieldError::new("ttl", "must be at least 1s"));
    }
    Ok(Duration::from_secs(ttl.as_secs()))
}

fn fmt_duration(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

/// Rules for the tokens this issuer signs.
#[derive(Debug, Clone)]
pub struct TokenPolicy {
    pub default_audience: Audience,
    /// Allowed `aud` patterns; `*` matches any run of characters.
    pub audiences: Vec<String>,
    pub default_ttl: Duration,
    pub max_ttl: Duration,
}

impl TokenPolicy {
    /// Whether `audience` matches one of the allowed patterns.
    pub fn allows(&self, audience: &str) -> bool {
        self.audiences
            .iter()
            .any(|pattern| glob_match(pattern, audience))
    }
}

#[cfg(test)]
mod tests {
    use super::new_jti;

    #[test]
    fn jti_is_a_random_v4_uuid() {
        let jtis: std::collections::HashSet<String> = (0..1000).map(|_| new_jti()).collect();
        assert_eq!(jtis.len(), 1000, "every jti is new");
        for jti in &jtis {
            let uuid = uuid::Uuid::parse_str(jti).expect("a UUID");
            assert_eq!(uuid.get_version(), Some(uuid::Version::Random));
            assert_eq!(uuid.get_variant(), uuid::Variant::RFC4122);
            assert_eq!(
                jti,
                &uuid.hyphenated().to_string(),
                "lower-case, hyphenated"
            );
        }
    }
}
