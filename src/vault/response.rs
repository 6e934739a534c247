//! Vault's answers as its API returns them: the envelope (`auth`, `data`, `lease_id`,
//! `lease_duration`, `renewable`) and the `errors` list of a failure.

use std::fmt;

use serde::Deserialize;
use serde_json::{Map, Value};

use super::{VaultError, VaultToken};

/// The `auth` block of a login or a renewal.
#[derive(Debug, Clone, Deserialize)]
pub struct Auth {
    pub client_token: VaultToken,
    #[serde(default)]
    pub accessor: String,
    #[serde(default)]
    pub policies: Vec<String>,
    #[serde(default)]
    pub lease_duration: u64,
    #[serde(default)]
    pub renewable: bool,
}

/// A secret read or written: `data` and its lease. `Debug` shows the names in `data`, never
/// their values (they are credentials).
#[derive(Clone, Default)]
pub struct Secret {
    pub data: Map<String, Value>,
    pub lease_id: String,
    pub lease_duration: u64,
    pub renewable: bool,
}

impl Secret {
    /// The string at `data.<name>`, if there is one.
    pub fn str(&self, name: &str) -> Option<&str> {
        self.data.get(name).and_then(Value::as_str)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Secret")
            .field("data", &self.data.keys().collect::<Vec<_>>())
            .field("lease_id", &self.lease_id)
            .field("lease_duration", &self.lease_duration)
            .field("renewable", &self.renewable)
            .finish()
    }
}

/// Vault's answer around `auth` or `data`.
#[derive(Deserialize)]
pub(super) struct Envelope {
    auth: Option<Auth>,
    data: Option<Map<String, Value>>,
    #[serde(default)]
    lease_id: String,
    #[serde(default)]
    lease_duration: u64,
    #[serde(default)]
    renewable: bool,
}

#[derive(Deserialize)]
struct Errors {
    #[serde(default)]
    errors: Vec<String>,
}

/// A 2xx answer's envelope (`None` when empty), or the error of any other status. The body is
/// read straight into the envelope: serde_json's errors name a position and an expected type,
/// never the value they read.
pub(super) fn classify(status: u16, body: &[u8]) -> Result<Option<Envelope>, VaultError> {
    if !(200..300).contains(&status) {
        let errors = serde_json::from_slice::<Errors>(body)
            .map(|e| e.errors)
            .unwrap_or_default();
        return Err(VaultError::Status { status, errors });
    }
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    serde_json::from_slice(body)
        .map(Some)
        .map_err(|e| VaultError::Decode(format!("not the JSON vault sends ({e})")))
}

/// The `auth` block of an answer.
pub(super) fn auth(answer: Option<Envelope>) -> Result<Auth, VaultError> {
    answer
        .and_then(|e| e.auth)
        .ok_or_else(|| VaultError::Decode("the answer has no auth block".into()))
}

/// The `data` and lease of an answer.
pub(super) fn secret(answer: Option<Envelope>) -> Result<Secret, VaultError> {
    maybe_secret(answer)?.ok_or_else(|| VaultError::Decode("the answer has no data".into()))
}

/// The `data` and lease of an answer that may have neither (a write).
pub(super) fn maybe_secret(answer: Option<Envelope>) -> Result<Option<Secret>, VaultError> {
    Ok(answer.and_then(|e| {
        e.data.map(|data| Secret {
            data,
            lease_id: e.lease_id,
            lease_duration: e.lease_duration,
            renewable: e.renewable,
        })
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_login_answer_is_parsed() {
        let answer = json!({"request_id": "x", "lease_id": "", "data": null, "auth": {
            "client_token": "s.abc", "accessor": "acc", "policies": ["default", "p"],
            "token_policies": ["default", "p"], "lease_duration": 1200, "renewable": true,
            "metadata": {"role": "r"}, "entity_id": "e", "token_type": "service", "orphan": true}});
        let auth = auth(classify(200, answer.to_string().as_bytes()).unwrap()).unwrap();
        assert_eq!(auth.client_token.expose(), "s.abc");
        assert_eq!(auth.policies, ["default", "p"]);
        assert_eq!((auth.lease_duration, auth.renewable), (1200, true));
        assert!(!format!("{auth:?}").contains("s.abc"));
    }

    #[test]
    fn a_read_keeps_the_lease() {
        let answer = json!({"lease_id": "aws/creds/r/abc", "lease_duration": 3600, "renewable": true,
            "data": {"access_key": "AKIA", "secret_key": "sk", "security_token": null}});
        let secret = secret(classify(200, answer.to_string().as_bytes()).unwrap()).unwrap();
        assert_eq!(secret.lease_id, "aws/creds/r/abc");
        assert_eq!(secret.str("access_key"), Some("AKIA"));
        assert_eq!(secret.str("security_token"), None);
        assert!(!format!("{secret:?}").contains("AKIA"));
    }

    #[test]
    fn errors_carry_vaults_text() {
        let e = classify(400, br#"{"errors":["role \"x\" could not be found"]}"#)
            .err()
            .unwrap();
        assert_eq!(
            e.to_string(),
            r#"vault answered 400: role "x" could not be found"#
        );
        let e = classify(502, b"<html>bad gateway</html>").err().unwrap();
        assert_eq!(e.to_string(), "vault answered 502: no error text");
        assert!(classify(204, b"").unwrap().is_none());
    }
}
