//! Run identity tokens: validated requests in, signed RS256 JWTs out (docs/reference.md §6).
//!
//! `claims.rs` owns the input rules and the claim set; this file applies the token policy
//! (audience allowlist, TTL bounds) and assembles the compact JWS with the current key. It does
//! not choose keys (that is the key manager's snapshot) nor speak HTTP.

pub mod claims;

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;

use crate::config::TokenPolicy;
use crate::keys::{Kid, SigningKey, UnixTime};
use claims::{Audience, Claims, FieldError, RunContext};

/// A request for one token, validated field by field.
#[derive(Debug, Clone)]
pub struct TokenRequest {
    pub run: RunContext,
    pub audience: Option<String>,
    pub ttl: Option<String>,
}

/// A signed token and what callers and the audit log need to know of it. The token logs in to
/// Vault, so its `Debug` shows the kid and claims but not the token.
#[derive(Clone)]
pub struct IssuedToken {
    pub token: String,
    pub kid: Kid,
    pub claims: Claims,
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
    issuer: String,
    policy: TokenPolicy,
}

impl TokenIssuer {
    pub fn new(issuer: String, policy: TokenPolicy) -> TokenIssuer {
        TokenIssuer { issuer, policy }
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// Checks the audience and TTL of `request` against the policy.
    pub fn check(&self, request: &TokenRequest) -> Result<(Audience, Duration), FieldError> {
        let audience = match &request.audience {
            None => self.policy.default_audience.clone(),
            Some(text) => Audience::parse(text).map_err(|m| FieldError::new("audience", m))?,
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
        let ttl = match &request.ttl {
            None => self.policy.default_ttl,
            Some(text) => parse_ttl(text)?,
        };
        if ttl > self.policy.max_ttl {
            return Err(FieldError::new(
                "ttl",
                format!(
                    "{} exceeds the maximum of {} (tokens.max_ttl)",
                    fmt_duration(ttl),
                    fmt_duration(self.policy.max_ttl)
                ),
            ));
        }
        Ok((audience, ttl))
    }

    /// Validates `request` and signs its token with `signer` at time `now`.
    pub fn issue(
        &self,
        request: &TokenRequest,
        signer: &SigningKey,
        now: UnixTime,
    ) -> Result<IssuedToken, FieldError> {
        let checked = self.check(request)?;
        Ok(self.issue_checked(&request.run, checked, signer, now))
    }

    /// Signs the token of a request `check` accepted, with the audience and TTL it returned.
    pub fn issue_checked(
        &self,
        run: &RunContext,
        (audience, ttl): (Audience, Duration),
        signer: &SigningKey,
        now: UnixTime,
    ) -> IssuedToken {
        let jti = uuid::Uuid::new_v4().to_string();
        let claims = Claims::new(run, &self.issuer, &audience, jti, now, now + ttl.as_secs());
        IssuedToken {
            token: sign(signer, &claims),
            kid: signer.kid().clone(),
            claims,
        }
    }
}

/// The compact JWS of `claims` signed by `signer`.
pub fn sign(signer: &SigningKey, claims: &Claims) -> String {
    let payload = serde_json::to_vec(claims).expect("claims always serialize");
    let mut token =
        String::with_capacity(signer.header_prefix().len() + payload.len() * 4 / 3 + 360);
    token.push_str(signer.header_prefix());
    B64.encode_string(payload, &mut token);
    let signature = signer.sign(token.as_bytes());
    token.push('.');
    B64.encode_string(signature, &mut token);
    token
}

fn parse_ttl(text: &str) -> Result<Duration, FieldError> {
    let ttl = humantime::parse_duration(text).map_err(|_| {
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
