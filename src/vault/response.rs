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

/// Vault's error texts kept at most, and the characters kept of each.
const MAX_ERRORS: usize = 8;
const MAX_ERROR_CHARS: usize = 512;

/// A 2xx answer's envelope (`None` when empty), or the error of any other status. The body is
/// read straight into the envelope; a decoding error names a position and the types, never the
/// value read (`json_error_text`). Vault's error texts are kept without control characters or
/// terminal escapes, and bounded: they reach the API's 502 bodies and the log.
pub(super) fn classify(status: u16, body: &[u8]) -> Result<Option<Envelope>, VaultError> {
    if !(200..300).contains(&status) {
        let errors = serde_json::from_slice::<Errors>(body)
            .map(|e| e.errors)
            .unwrap_or_default();
        let errors = errors
            .iter()
            .take(MAX_ERRORS)
            .map(|e| printable(e))
            .collect();
        return Err(VaultError::Status { status, errors });
    }
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    serde_json::from_slice(body).map(Some).map_err(|e| {
        VaultError::Decode(format!(
            "not the JSON vault sends ({})",
            json_error_text(&e)
        ))
    })
}

/// `text` without terminal escape sequences or control characters (line breaks and tabs are
/// kept, for `tidy`), cut at `MAX_ERROR_CHARS`.
fn printable(text: &str) -> String {
    let (mut out, mut kept) = (String::new(), 0);
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if kept == MAX_ERROR_CHARS {
            out.push('…');
            break;
        }
        match c {
            // ESC [ parameters… final byte (0x40–0x7E): a CSI sequence such as a colour.
            '\u{1b}' if chars.peek() == Some(&'[') => {
                chars.next();
                for c in chars.by_ref() {
                    if ('\u{40}'..='\u{7e}').contains(&c) {
                        break;
                    }
                }
            }
            c if c.is_control() && c != '\n' && c != '\t' => {}
            c => {
                out.push(c);
                kept += 1;
            }
        }
    }
    out
}

/// serde_json's text of `e` without the value it read: `invalid type: string "s.abc", expected
/// u64` becomes `invalid type: string, expected u64`. The value may be a secret (a token in the
/// wrong field).
pub fn json_error_text(e: &serde_json::Error) -> String {
    let text = e.to_string();
    if e.classify() != serde_json::error::Category::Data {
        return text;
    }
    let Some((found, expected)) = text.rsplit_once(", expected ") else {
        return text;
    };
    for prefix in [
        "invalid type: ",
        "invalid value: ",
        "unknown variant ",
        "invalid length ",
    ] {
        if let Some(value) = found.strip_prefix(prefix) {
            let kind = value.split(['"', '`']).next().unwrap_or("").trim();
            let (head, kind) = match prefix {
                "unknown variant " | "invalid length " => (prefix.trim_end(), ""),
                _ => (prefix.trim_end(), kind),
            };
            let sep = if kind.is_empty() { "" } else { " " };
            return format!("{head}{sep}{kind}, expected {expected}");
        }
    }
    text
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
        let e = classify(
            400,
            b"{\"errors\":[\"\\u001b[31mred\\u001b[0m \\u0007bell\"]}",
        )
        .err()
        .unwrap();
        assert_eq!(e.to_string(), "vault answered 400: red bell");
        let e = classify(502, b"<html>bad gateway</html>").err().unwrap();
        assert_eq!(e.to_string(), "vault answered 502: no error text");
        assert!(classify(204, b"").unwrap().is_none());
    }

    #[test]
    fn decoding_errors_do_not_echo_values() {
        let answer = br#"{"auth": {"client_token": "t", "lease_duration": "s.SECRETINTYPEERROR"}}"#;
        let e = classify(200, answer).err().unwrap().to_string();
        assert!(!e.contains("SECRET"), "{e}");
        assert!(e.contains("invalid type: string, expected u64"), "{e}");
        let e = serde_json::from_str::<bool>(r#""s.SECRET""#).unwrap_err();
        assert_eq!(
            json_error_text(&e),
            "invalid type: string, expected a boolean at line 1 column 10"
        );
        #[derive(Debug, Deserialize)]
        enum Phase {
            #[serde(rename = "plan")]
            _Plan,
        }
        let e = serde_json::from_str::<Phase>(r#""s.SECRET""#).unwrap_err();
        assert!(!json_error_text(&e).contains("SECRET"));
    }
}
