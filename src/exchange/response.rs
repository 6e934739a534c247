//! The exchange's response: `vault`, `aws`, `gcp`, `azure` (each `{default, aliases}`, present
//! only when configured), `env` with the default configurations' values, and `not_before`.
//!
//! Engine answers are read as Vault versions return them: AWS `session_token` (Vault 1.16+)
//! or the older `security_token`, GCP `token` with `expires_at_seconds`, GCP
//! `private_key_data` (base64 of the service account key file), Azure `client_id` and
//! `client_secret`, and the lease of each.

use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Map, Value, json};

use super::lookup::ConfigName;
use super::variables::{BackedConfig, Engine, Shape, VaultConfig};
use crate::vault::{Auth, Secret, Vault, VaultError};

/// A Vault login of this exchange.
pub struct Login {
    pub config: VaultConfig,
    pub vault: Vault,
    pub auth: Auth,
}

/// One engine's credentials, shaped.
pub struct Shaped {
    engine: Engine,
    name: ConfigName,
    sleep_seconds: u64,
    body: Value,
    env: Vec<(&'static str, Value)>,
}

/// The credentials of `secret`, as the response carries them.
pub fn shape(backed: &BackedConfig, secret: &Secret) -> Result<Shaped, VaultError> {
    let (body, env) = match backed.shape {
        Shape::AwsKeys => aws(secret)?,
        Shape::GcpToken => gcp_token(secret)?,
        Shape::GcpKey => gcp_key(secret)?,
        Shape::AzureClient => azure(secret)?,
    };
    Ok(Shaped {
        engine: backed.engine,
        name: backed.name.clone(),
        sleep_seconds: backed.sleep_seconds,
        body,
        env,
    })
}

type Parts = (Value, Vec<(&'static str, Value)>);

fn field<'s>(secret: &'s Secret, name: &str) -> Result<&'s str, VaultError> {
    secret
        .str(name)
        .ok_or_else(|| VaultError::Decode(format!("the answer's data has no {name}")))
}

fn aws(secret: &Secret) -> Result<Parts, VaultError> {
    let access = field(secret, "access_key")?;
    let key = field(secret, "secret_key")?;
    // Vault 1.16+ sends both; older versions only security_token; iam_user null (or "").
    let present = |name| secret.str(name).filter(|v| !v.is_empty());
    let session = present("session_token").or_else(|| present("security_token"));
    let body = json!({
        "access_key_id": access, "secret_access_key": key, "session_token": session,
        "lease_id": secret.lease_id, "lease_duration": secret.lease_duration,
    });
    let mut env = vec![
        ("AWS_ACCESS_KEY_ID", json!(access)),
        ("AWS_SECRET_ACCESS_KEY", json!(key)),
    ];
    if let Some(session) = session {
        env.push(("AWS_SESSION_TOKEN", json!(session)));
    }
    Ok((body, env))
}

fn gcp_token(secret: &Secret) -> Result<Parts, VaultError> {
    let token = field(secret, "token")?;
    // A number from the GCP engine; a string when a stand-in was written with the CLI.
    let expires_at = match secret.data.get("expires_at_seconds") {
        Some(Value::String(text)) => text.parse::<u64>().ok(),
        Some(value) => value.as_u64(),
        None => None,
    }
    .ok_or_else(|| {
        VaultError::Decode("the answer's data has no expires_at_seconds (unix seconds)".into())
    })?;
    let body = json!({ "access_token": token, "expires_at": expires_at });
    Ok((body, vec![("GOOGLE_OAUTH_ACCESS_TOKEN", json!(token))]))
}

fn gcp_key(secret: &Secret) -> Result<Parts, VaultError> {
    let encoded = field(secret, "private_key_data")?;
    let decoded = STANDARD
        .decode(encoded)
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .filter(|text| serde_json::from_str::<Value>(text).is_ok())
        .ok_or_else(|| {
            VaultError::Decode("private_key_data is not base64 of a JSON key file".into())
        })?;
    let body = json!({ "credentials": decoded });
    Ok((body, vec![("GOOGLE_CREDENTIALS", json!(decoded))]))
}

fn azure(secret: &Secret) -> Result<Parts, VaultError> {
    let id = field(secret, "client_id")?;
    let key = field(secret, "client_secret")?;
    let body = json!({
        "client_id": id, "client_secret": key,
        "lease_id": secret.lease_id, "lease_duration": secret.lease_duration,
    });
    let env = vec![
        ("ARM_CLIENT_ID", json!(id)),
        ("ARM_CLIENT_SECRET", json!(key)),
    ];
    Ok((body, env))
}

/// One Vault login as the response (and `POST /v1/credentials/revoke`) carries it.
fn vault_entry(login: &Login) -> Value {
    let endpoint = login.vault.endpoint();
    let ca = endpoint
        .ca_pem
        .as_ref()
        .map(|pem| String::from_utf8_lossy(pem).into_owned());
    json!({
        "address": endpoint.address,
        "namespace": endpoint.namespace,
        "ca_cert": ca,
        "token": login.auth.client_token.expose(),
        "accessor": login.auth.accessor,
        "policies": login.auth.policies,
        "lease_duration": login.auth.lease_duration,
        "renewable": login.auth.renewable,
    })
}

#[derive(Default)]
struct Section {
    default: Option<Value>,
    aliases: Map<String, Value>,
}

impl Section {
    fn put(&mut self, name: &ConfigName, value: Value) {
        match name {
            ConfigName::Default => self.default = Some(value),
            ConfigName::Tag(tag) => {
                self.aliases.insert(tag.clone(), value);
            }
        }
    }

    fn into_value(self) -> Value {
        json!({ "default": self.default, "aliases": self.aliases })
    }
}

/// The whole response; `not_before` is `now` plus the longest `*_SLEEP_SECONDS`. `manual` holds
/// the manual workload identity tokens as (variable, token).
pub fn render(logins: &[Login], reads: &[Shaped], manual: &[(String, String)], now: u64) -> Value {
    let mut env: BTreeMap<String, Value> = manual
        .iter()
        .map(|(name, token)| (name.clone(), json!(token)))
        .collect();
    let mut vault = Section::default();
    for login in logins {
        vault.put(&login.config.name, vault_entry(login));
        if login.config.name == ConfigName::Default {
            env.extend(vault_env(login).into_iter().map(|(k, v)| (k.to_owned(), v)));
        }
    }
    let mut out = Map::new();
    out.insert("vault".into(), vault.into_value());
    for engine in [Engine::Aws, Engine::Gcp, Engine::Azure] {
        let mut section = Section::default();
        for read in reads.iter().filter(|r| r.engine == engine) {
            section.put(&read.name, read.body.clone());
            if read.name == ConfigName::Default {
                env.extend(read.env.iter().map(|(k, v)| ((*k).to_owned(), v.clone())));
            }
        }
        if section.default.is_some() || !section.aliases.is_empty() {
            out.insert(engine.step().into(), section.into_value());
        }
    }
    let sleep = reads.iter().map(|r| r.sleep_seconds).max().unwrap_or(0);
    out.insert("env".into(), json!(env));
    out.insert("not_before".into(), json!(now + sleep));
    Value::Object(out)
}

fn vault_env(login: &Login) -> Vec<(&'static str, Value)> {
    let endpoint = login.vault.endpoint();
    let mut env = vec![
        ("VAULT_ADDR", json!(endpoint.address)),
        ("VAULT_TOKEN", json!(login.auth.client_token.expose())),
    ];
    if let Some(namespace) = &endpoint.namespace {
        env.push(("VAULT_NAMESPACE", json!(namespace)));
    }
    env
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(data: Value) -> Secret {
        Secret {
            data: data.as_object().unwrap().clone(),
            lease_id: "l".into(),
            lease_duration: 60,
            renewable: true,
        }
    }

    #[test]
    fn aws_takes_session_token_then_security_token() {
        let (body, env) = aws(&secret(json!({"access_key": "A", "secret_key": "S", "security_token": "old", "session_token": "new"}))).unwrap();
        assert_eq!(body["session_token"], "new");
        assert!(env.contains(&("AWS_SESSION_TOKEN", json!("new"))));
        let (body, _) = aws(&secret(
            json!({"access_key": "A", "secret_key": "S", "security_token": "old"}),
        ))
        .unwrap();
        assert_eq!(body["session_token"], "old");
        let (body, env) = aws(&secret(
            json!({"access_key": "A", "secret_key": "S", "security_token": null}),
        ))
        .unwrap();
        assert_eq!(body["session_token"], Value::Null);
        assert_eq!(env.len(), 2);
        let data = json!({"access_key": "A", "secret_key": "S", "security_token": ""});
        assert_eq!(aws(&secret(data)).unwrap().0["session_token"], Value::Null);
    }

    #[test]
    fn gcp_key_data_becomes_credentials() {
        let file = r#"{"type":"service_account","private_key":"k"}"#;
        let data =
            json!({"private_key_data": STANDARD.encode(file), "key_algorithm": "KEY_ALG_RSA_2048"});
        let (body, _) = gcp_key(&secret(data)).unwrap();
        assert_eq!(body["credentials"], file);
        assert!(gcp_key(&secret(json!({"private_key_data": "bm90IGpzb24="}))).is_err());
        let (body, _) = gcp_token(&secret(
            json!({"token": "ya29", "expires_at_seconds": 1764115230u64, "token_ttl": 3599}),
        ))
        .unwrap();
        assert_eq!(
            body,
            json!({"access_token": "ya29", "expires_at": 1764115230u64})
        );
        let data = json!({"token": "t", "expires_at_seconds": "17"});
        assert_eq!(gcp_token(&secret(data)).unwrap().0["expires_at"], 17);
    }

    #[test]
    fn missing_fields_name_the_field_not_the_values() {
        let e = azure(&secret(json!({"client_id": "id"}))).unwrap_err();
        assert_eq!(
            e.to_string(),
            "vault's answer is not understood: the answer's data has no client_secret"
        );
    }
}
