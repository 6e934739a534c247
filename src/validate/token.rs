//! `--token`: an identity token (a workspace run's, a module test's or a Stacks deployment's)
//! checked the way Vault's JWT login checks it, against the
//! served JWKS and TFE's claim form ([`crate::token::claims`]). The token is a login credential:
//! only its kid and claims are ever printed, never the token.

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use aws_lc_rs::signature::{RSA_PKCS1_2048_8192_SHA256, RsaPublicKeyComponents};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use serde_json::{Map, Value};

use crate::discovery::{Jwk, JwkSet};
use crate::token::claims::{Claims, NamedInput, RUN_CLAIMS, RunContext, RunIdInput, RunInput};
use crate::token::module_test::{self, ModuleInput, ModuleTestClaims, ModuleTestContext};
use crate::token::stack::{
    self, DeploymentInput, PlanInput, StackClaims, StackContext, StackInput,
};

use super::net::span;
use super::report::{Check, Report};

/// How far in the future `iat` may be (Vault's default `clock_skew_leeway`).
const IAT_SKEW_SECS: u64 = 60;
/// The longest lifetime a run identity token may have.
const MAX_LIFETIME_SECS: u64 = 24 * 3600;

/// The checks that `--token` adds, in order.
pub const CHECKS: &[&str] = &[
    "token",
    "token_kid",
    "token_signature",
    "token_claims",
    "token_audience",
    "token_times",
];

/// A compact JWS as read from `--token`. Its `Debug` never shows it.
pub struct TokenText(pub String);

impl fmt::Debug for TokenText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TokenText(<redacted>)")
    }
}

/// The decoded parts of a token.
struct Decoded {
    kid: String,
    signing_input: String,
    signature: Vec<u8>,
    claims: Map<String, Value>,
}

/// Runs the token checks; `jwks` is `Err(check name)` when the JWKS could not be checked.
pub fn check(
    token: &TokenText,
    jwks: Result<&JwkSet, &str>,
    issuer: &str,
    audience: &str,
    report: &mut Report,
) {
    let decoded = match decode(&token.0) {
        Ok(d) => d,
        Err(why) => {
            report.push(Check::fail("token", why, "pass the token exactly as TFE's run received it (TFC_WORKLOAD_IDENTITY_TOKEN), a compact JWS"));
            report.skip(&CHECKS[1..], "token");
            return;
        }
    };
    report.push(Check::pass(
        "token",
        format!("RS256 JWS, kid {}", decoded.kid),
    ));
    match jwks {
        Err(because) => report.skip(&["token_kid", "token_signature"], because),
        Ok(set) => signature_checks(&decoded, set, report),
    }
    report.push(claims_check(&decoded.claims, issuer));
    report.push(audience_check(&decoded.claims, audience));
    report.push(times_check(&decoded.claims, now()));
}

fn decode(token: &str) -> Result<Decoded, String> {
    let parts: Vec<&str> = token.split('.').collect();
    let [header, payload, signature] = parts[..] else {
        return Err(format!("not a compact JWS: {} parts, not 3", parts.len()));
    };
    let json = |part: &str, what: &str| -> Result<Map<String, Value>, String> {
        let bytes = B64
            .decode(part)
            .map_err(|_| format!("the {what} is not base64url"))?;
        serde_json::from_slice(&bytes).map_err(|_| format!("the {what} is not a JSON object"))
    };
    let head = json(header, "header")?;
    if head.get("alg").and_then(Value::as_str) != Some("RS256") {
        return Err(format!(
            "header alg is {}, not RS256",
            head.get("alg").unwrap_or(&Value::Null)
        ));
    }
    let kid = head
        .get("kid")
        .and_then(Value::as_str)
        .ok_or("the header has no kid")?;
    Ok(Decoded {
        kid: kid.to_owned(),
        signing_input: format!("{header}.{payload}"),
        signature: B64
            .decode(signature)
            .map_err(|_| "the signature is not base64url")?,
        claims: json(payload, "payload")?,
    })
}

fn signature_checks(token: &Decoded, set: &JwkSet, report: &mut Report) {
    let Some(key) = set.keys.iter().find(|k| k.kid == token.kid) else {
        report.push(Check::fail(
            "token_kid",
            format!("kid {} is not in the JWKS ({} keys)", token.kid, set.keys.len()),
            "the token was signed by another issuer, or by a key already removed (revoked, or retired past its verify_until): mint a fresh token from this issuer",
        ));
        report.skip(&["token_signature"], "token_kid");
        return;
    };
    report.push(Check::pass(
        "token_kid",
        format!("kid {} is published", token.kid),
    ));
    report.push(match verify(key, token) {
        true => Check::pass("token_signature", "RS256 signature verifies against the published key"),
        false => Check::fail(
            "token_signature",
            format!("the signature does not verify against kid {}", token.kid),
            "the token was altered or signed by a key other than the one its kid names: Vault refuses it; mint a fresh token from this issuer",
        ),
    });
}

fn verify(key: &Jwk, token: &Decoded) -> bool {
    let (Ok(n), Ok(e)) = (B64.decode(&key.n), B64.decode(&key.e)) else {
        return false;
    };
    RsaPublicKeyComponents { n: &n, e: &e }
        .verify(
            &RSA_PKCS1_2048_8192_SHA256,
            token.signing_input.as_bytes(),
            &token.signature,
        )
        .is_ok()
}

fn claims_check(claims: &Map<String, Value>, issuer: &str) -> Check {
    match claims_problem(claims, issuer) {
        Ok(sub) => Check::pass(
            "token_claims",
            format!("TFE's claim set, iss matches, sub {sub}"),
        ),
        Err(problem) => Check::fail(
            "token_claims",
            problem,
            "mint the token with tfe-oidc for this issuer; Vault's role binds sub and terraform_* claims of exactly this form",
        ),
    }
}

/// A token's `sub`, and the `sub` its other claims make.
type SubjectOf = fn(&Value) -> Result<(String, String), String>;

/// The token's `sub` when the claims are exactly those of one of TFE's token kinds, consistent,
/// for `issuer`. The kind is told by the claim that only it carries.
fn claims_problem(claims: &Map<String, Value>, issuer: &str) -> Result<String, String> {
    let (names, expected_sub): (&[&str], SubjectOf) = if claims.contains_key("terraform_stack_id") {
        (stack::CLAIMS, stack_subject)
    } else if claims.contains_key("terraform_workspace_id") {
        (RUN_CLAIMS, run_subject)
    } else {
        (module_test::CLAIMS, module_test_subject)
    };
    let present: Vec<&str> = claims.keys().map(String::as_str).collect();
    let missing: Vec<&&str> = names.iter().filter(|n| !present.contains(n)).collect();
    let extra: Vec<&&str> = present.iter().filter(|n| !names.contains(n)).collect();
    if !missing.is_empty() || !extra.is_empty() {
        return Err(format!("claims missing {missing:?}, unexpected {extra:?}"));
    }
    let value = Value::Object(claims.clone());
    let (sub, expected) = expected_sub(&value)?;
    let str_claim = |name: &str| claims.get(name).and_then(Value::as_str).unwrap_or_default();
    if str_claim("iss") != issuer {
        return Err(format!(
            "iss is {} but the issuer is {issuer}: Vault's bound_issuer refuses it",
            str_claim("iss")
        ));
    }
    let jti = str_claim("jti");
    uuid::Uuid::parse_str(jti).map_err(|_| format!("jti {jti:?} is not a UUID"))?;
    if sub != expected {
        return Err(format!("sub {sub:?} does not match the terraform_* claims"));
    }
    Ok(sub)
}

fn typed<T: serde::de::DeserializeOwned>(value: &Value) -> Result<T, String> {
    serde_json::from_value(value.clone()).map_err(|e| format!("a claim has the wrong type: {e}"))
}

fn named(id: &str, name: &str) -> NamedInput {
    NamedInput {
        id: id.to_owned(),
        name: name.to_owned(),
    }
}

/// A workspace run token's `sub` and the one its claims make (with `terraform_full_workspace`).
fn run_subject(value: &Value) -> Result<(String, String), String> {
    let c: Claims = typed(value)?;
    let run = RunContext::parse(&RunInput {
        organization: named(&c.terraform_organization_id, &c.terraform_organization_name),
        project: named(&c.terraform_project_id, &c.terraform_project_name),
        workspace: named(&c.terraform_workspace_id, &c.terraform_workspace_name),
        run: RunIdInput {
            id: c.terraform_run_id.clone(),
            phase: c.terraform_run_phase.as_str().to_owned(),
        },
    })
    .map_err(|e| format!("terraform_* claims: {e}"))?;
    if c.terraform_full_workspace != run.full_workspace() {
        return Err("terraform_full_workspace does not match the terraform_* claims".into());
    }
    Ok((c.sub, run.subject()))
}

fn module_test_subject(value: &Value) -> Result<(String, String), String> {
    let c: ModuleTestClaims = typed(value)?;
    let module = c
        .sub
        .strip_prefix(&format!(
            "organization:{}:module:",
            c.terraform_organization_name
        ))
        .and_then(|rest| rest.strip_suffix(":operation:test_run"))
        .unwrap_or_default();
    let test = ModuleTestContext::parse(
        &named(&c.terraform_organization_id, &c.terraform_organization_name),
        &ModuleInput {
            name: module.to_owned(),
        },
        &RunIdInput {
            id: c.terraform_run_id.clone(),
            phase: c.terraform_run_phase.as_str().to_owned(),
        },
    )
    .map_err(|e| format!("terraform_* claims or sub: {e}"))?;
    Ok((c.sub, test.subject()))
}

fn stack_subject(value: &Value) -> Result<(String, String), String> {
    let c: StackClaims = typed(value)?;
    let stack = StackContext::parse(&StackInput {
        organization: named(&c.terraform_organization_id, &c.terraform_organization_name),
        project: named(&c.terraform_project_id, &c.terraform_project_name),
        stack: named(&c.terraform_stack_id, &c.terraform_stack_name),
        deployment: DeploymentInput {
            name: c.terraform_stack_deployment_name.clone(),
        },
        operation: c.terraform_operation.as_str().to_owned(),
        plan: PlanInput {
            id: c.terraform_plan_id.clone(),
        },
    })
    .map_err(|e| format!("terraform_* claims: {e}"))?;
    Ok((c.sub, stack.subject()))
}

fn audience_check(claims: &Map<String, Value>, audience: &str) -> Check {
    let aud = claims.get("aud").cloned().unwrap_or(Value::Null);
    if aud.as_str() == Some(audience) {
        return Check::pass("token_audience", format!("aud {audience}"));
    }
    Check::fail(
        "token_audience",
        format!("aud is {aud} but Vault's role expects {audience:?}"),
        format!(
            "mint the token for {audience} (TFC_VAULT_WORKLOAD_IDENTITY_AUDIENCE, or token issue --audience), or bind the role to the token's audience (bound_audiences)"
        ),
    )
}

fn times_check(claims: &Map<String, Value>, now: u64) -> Check {
    let time = |name: &str| claims.get(name).and_then(Value::as_u64);
    let (Some(iat), Some(nbf), Some(exp)) = (time("iat"), time("nbf"), time("exp")) else {
        return Check::fail(
            "token_times",
            "iat, nbf or exp is not a number of seconds",
            "mint the token with tfe-oidc",
        );
    };
    let problem = if iat > now + IAT_SKEW_SECS {
        Some(format!("issued {} in the future (iat)", span(iat - now)))
    } else if nbf > now {
        Some(format!("not valid for another {} (nbf)", span(nbf - now)))
    } else if exp <= now {
        Some(format!("expired {} ago (exp)", span(now - exp)))
    } else if exp.saturating_sub(iat) > MAX_LIFETIME_SECS {
        Some(format!(
            "lives {}, more than 24h (exp - iat)",
            span(exp.saturating_sub(iat))
        ))
    } else {
        None
    };
    let detail = format!(
        "issued {} ago, expires in {}",
        span(now.saturating_sub(iat)),
        span(exp.saturating_sub(now))
    );
    match problem {
        None => Check::pass("token_times", detail),
        Some(p) => Check::fail(
            "token_times",
            p,
            "mint a fresh token; if it is fresh, compare this host's clock with the issuer's (the clock check)",
        ),
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn times(iat: u64, nbf: u64, exp: u64) -> Map<String, Value> {
        serde_json::json!({"iat": iat, "nbf": nbf, "exp": exp})
            .as_object()
            .unwrap()
            .clone()
    }

    #[test]
    fn time_claims_are_judged_against_now() {
        let now = 1_000_000;
        assert!(times_check(&times(now - 10, now - 15, now + 3600), now).ok);
        assert!(times_check(&times(now + 30, now - 1, now + 3600), now).ok);
        for (claims, why) in [
            (times(now + 120, now - 1, now + 3600), "future"),
            (times(now, now + 10, now + 3600), "nbf"),
            (times(now - 7200, now - 7205, now - 1), "expired"),
            (times(now - 10, now - 15, now + 90_000), "24h"),
        ] {
            let check = times_check(&claims, now);
            assert!(!check.ok && check.detail.contains(why), "{check:?}");
        }
    }

    #[test]
    fn a_token_that_is_not_a_jws_is_named_without_being_printed() {
        let secret = "eyJhbGciOiJub25lIn0.e30";
        let why = decode(secret).err().unwrap();
        assert!(why.contains("2 parts") && !why.contains(secret), "{why}");
        assert_eq!(
            format!("{:?}", TokenText(secret.into())),
            "TokenText(<redacted>)"
        );
    }
}
