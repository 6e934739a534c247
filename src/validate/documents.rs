//! The discovery document and the JWKS, checked the way Vault reads them and against the form
//! tfe-oidc serves ([`crate::discovery`]'s types).

use std::collections::BTreeSet;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use serde_json::Value;

use crate::discovery::{JWKS_PATH, Jwk, JwkSet, ProviderMetadata};
use crate::keys::PublicJwk;

use super::fetch::{Answer, FetchError};
use super::report::{Check, Report};
use super::target::Target;
use super::tls::CLIENT_CERTIFICATE_FIX;

/// The smallest RSA modulus accepted, in bits.
const MIN_BITS: usize = 2048;

/// Checks `discovery`, `discovery_issuer` and `jwks_uri`; returns the JWKS path on the origin.
pub fn check_discovery(
    answer: Result<&Answer, &FetchError>,
    issuer: &str,
    target: &Target,
    report: &mut Report,
) -> Option<String> {
    let url = target.discovery_url();
    let Some(document) = json_document("discovery", &url, answer, report) else {
        report.skip(&["discovery_issuer", "jwks_uri"], "discovery");
        return None;
    };
    report.push(metadata_form(&document, &url));
    report.push(issuer_matches(&document, issuer));
    let check = jwks_uri(&document, target);
    let path = check
        .ok
        .then(|| {
            target
                .path_on_origin(document["jwks_uri"].as_str()?)
                .map(str::to_owned)
        })
        .flatten();
    report.push(check);
    path
}

/// A 200 answer with a JSON object: the check's failure, or the document (the check is pushed
/// by the caller when it depends on the contents).
fn json_document(
    name: &'static str,
    url: &str,
    answer: Result<&Answer, &FetchError>,
    report: &mut Report,
) -> Option<Value> {
    let failure = |detail: String, fix: &str| Check::fail(name, detail, fix);
    let answer = match answer {
        Ok(answer) => answer,
        Err(e) => {
            let fix = match e {
                FetchError::ClientCertificate => CLIENT_CERTIFICATE_FIX,
                FetchError::SpeaksTls => {
                    "the discovery listener serves TLS (discovery.tls_cert): write the issuer with https://, here and in Vault's oidc_discovery_url and bound_issuer"
                }
                _ => {
                    "check that this address and port are tfe-oidc's discovery listener and that it runs"
                }
            };
            report.push(failure(format!("GET {url}: {e}"), fix));
            return None;
        }
    };
    if answer.status != 200 {
        let fix = "the issuer must be the discovery listener's root URL (not the API listener, no path): Vault fetches <issuer>/.well-known/openid-configuration";
        report.push(failure(
            format!("GET {url} answered {}", answer.status),
            fix,
        ));
        return None;
    }
    match serde_json::from_slice::<Value>(&answer.body) {
        Ok(value) if value.is_object() => Some(value),
        _ => {
            let fix = "something other than tfe-oidc answers at this address (a proxy or another service): point the issuer at the discovery listener";
            report.push(failure(
                format!("GET {url} did not answer a JSON object"),
                fix,
            ));
            None
        }
    }
}

fn metadata_form(document: &Value, url: &str) -> Check {
    match serde_json::from_value::<ProviderMetadata>(document.clone()) {
        Ok(_) => Check::pass("discovery", format!("GET {url}: 200, provider metadata")),
        Err(e) => Check::fail(
            "discovery",
            format!("GET {url}: 200, but not tfe-oidc's provider metadata ({e})"),
            "point the issuer at tfe-oidc's discovery listener",
        ),
    }
}

fn issuer_matches(document: &Value, issuer: &str) -> Check {
    let served = document["issuer"].as_str().unwrap_or_default();
    if served == issuer {
        return Check::pass("discovery_issuer", format!("issuer {served} is byte-equal"));
    }
    let detail = format!("the discovery document says issuer {served} but you asked for {issuer}");
    let fix = if served.is_empty() {
        "the document has no issuer: this is not tfe-oidc's discovery listener".to_string()
    } else if issuer.strip_suffix('/') == Some(served) {
        "Vault compares them byte for byte; drop the trailing slash".to_string()
    } else if served.eq_ignore_ascii_case(issuer) {
        format!("Vault compares them byte for byte; write it as {served}")
    } else {
        format!(
            "Vault compares them byte for byte: give Vault {served} (oidc_discovery_url and bound_issuer), or change tfe-oidc's `issuer` to {issuer} (and its certificate's names)"
        )
    };
    Check::fail("discovery_issuer", detail, fix)
}

fn jwks_uri(document: &Value, target: &Target) -> Check {
    let Some(uri) = document["jwks_uri"].as_str() else {
        return Check::fail(
            "jwks_uri",
            "the discovery document has no jwks_uri",
            "Vault would accept the configuration and then fail every login: serve tfe-oidc's own document",
        );
    };
    match target.path_on_origin(uri) {
        Some(_) => Check::pass("jwks_uri", format!("{uri} is on the issuer's origin")),
        None => Check::fail(
            "jwks_uri",
            format!("{uri} is not on the issuer's origin {}", target.origin()),
            format!(
                "tfe-oidc serves {}{JWKS_PATH}: its `issuer` setting must be the URL Vault reaches it by",
                target.base
            ),
        ),
    }
}

/// Checks `jwks` and `jwks_keys`; returns the key set when every key is usable.
pub fn check_jwks(
    answer: Result<&Answer, &FetchError>,
    url: &str,
    report: &mut Report,
) -> Option<JwkSet> {
    let Some(document) = json_document("jwks", url, answer, report) else {
        report.skip(&["jwks_keys"], "jwks");
        return None;
    };
    let Some(entries) = document["keys"].as_array().filter(|k| !k.is_empty()) else {
        report.push(Check::fail(
            "jwks",
            format!("GET {url}: 200, but no \"keys\" array with keys"),
            "tfe-oidc always publishes its current and next keys: point the issuer at tfe-oidc",
        ));
        report.skip(&["jwks_keys"], "jwks");
        return None;
    };
    report.push(Check::pass(
        "jwks",
        format!("GET {url}: 200, {} keys", entries.len()),
    ));
    let (check, set) = keys_check(entries);
    report.push(check);
    set
}

fn keys_check(entries: &[Value]) -> (Check, Option<JwkSet>) {
    let mut problems = Vec::new();
    let mut keys = Vec::new();
    let mut kids = BTreeSet::new();
    for (i, entry) in entries.iter().enumerate() {
        match key_problem(entry) {
            Err(problem) => problems.push(format!("key {i}: {problem}")),
            Ok(key) if !kids.insert(key.kid.clone()) => {
                problems.push(format!("key {i}: kid {} appears twice", key.kid))
            }
            Ok(key) => keys.push(key),
        }
    }
    if problems.is_empty() {
        let detail = format!(
            "{} RSA keys, kids unique and equal to their RFC 7638 thumbprints",
            keys.len()
        );
        return (Check::pass("jwks_keys", detail), Some(JwkSet { keys }));
    }
    let fix = "Vault refuses every login when one key does not parse: publish only tfe-oidc's own keys (its kids are thumbprints; keys.rsa_bits >= 2048)";
    (Check::fail("jwks_keys", problems.join("; "), fix), None)
}

fn key_problem(entry: &Value) -> Result<Jwk, String> {
    if entry.get("d").is_some() || entry.get("p").is_some() {
        return Err("it publishes a private key (d/p members): rotate it now".into());
    }
    let key: Jwk = serde_json::from_value(entry.clone())
        .map_err(|e| format!("not kty/use/alg/kid/n/e strings ({e})"))?;
    let expect = |member: &str, got: &str, want: &str| {
        (got == want)
            .then_some(())
            .ok_or_else(|| format!("{member} is {got:?}, not {want:?}"))
    };
    expect("kty", &key.kty, "RSA")?;
    expect("use", &key.use_, "sig")?;
    expect("alg", &key.alg, "RS256")?;
    let bits = modulus_bits(&key.n).ok_or("n is not base64url")?;
    if bits < MIN_BITS {
        return Err(format!(
            "kid {}: {bits}-bit modulus, less than {MIN_BITS}",
            key.kid
        ));
    }
    B64.decode(&key.e).map_err(|_| "e is not base64url")?;
    let thumbprint = PublicJwk {
        n: key.n.clone(),
        e: key.e.clone(),
    }
    .thumbprint();
    if thumbprint.as_str() != key.kid {
        return Err(format!(
            "kid {} is not its key's thumbprint {thumbprint}",
            key.kid
        ));
    }
    Ok(key)
}

/// The exact size of a base64url big-endian modulus in bits.
fn modulus_bits(n: &str) -> Option<usize> {
    let bytes = B64.decode(n).ok()?;
    let first = bytes.iter().position(|b| *b != 0)?;
    Some((bytes.len() - first) * 8 - bytes[first].leading_zeros() as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modulus_bits_ignores_leading_zeros() {
        assert_eq!(modulus_bits(&B64.encode([0u8, 0x80, 0])), Some(16));
        assert_eq!(modulus_bits(&B64.encode([0x01, 0])), Some(9));
        assert_eq!(modulus_bits("!"), None);
    }

    #[test]
    fn a_key_with_a_foreign_kid_or_private_part_is_named() {
        let key = serde_json::json!({"kty": "RSA", "use": "sig", "alg": "RS256", "kid": "k1",
            "n": B64.encode([0xffu8; 256]), "e": "AQAB"});
        assert!(
            key_problem(&key)
                .unwrap_err()
                .contains("not its key's thumbprint")
        );
        let mut private = key.clone();
        private["d"] = "x".into();
        assert!(key_problem(&private).unwrap_err().contains("private key"));
        let mut short = key;
        short["n"] = B64.encode([0xffu8; 128]).into();
        assert!(key_problem(&short).unwrap_err().contains("1024-bit"));
    }
}
