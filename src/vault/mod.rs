//! The service's one Vault client: the exact request forms of Vault's HTTP API, over rustls.
//!
//! It owns the connection pools (`pool.rs`: one `reqwest::Client` per Vault address and CA,
//! shared by every caller), the calls (JWT login, reads, writes, and the token's own lookup,
//! renewal and revocation), their timeouts and namespace header, the typed responses
//! (`response.rs`) and the typed errors. It does not know which Vault a caller may reach, what a
//! step of the credential exchange is, or what a metric is: the callers decide and count.
//!
//! ## Dependencies: vaultrs
//!
//! `vaultrs` 0.8.0, the maintained Vault client crate, was read and not used:
//!
//! - it builds a new `reqwest::Client` (a new pool) in every `VaultClient::new`, and the client
//!   token and namespace are settings of that client (`set_token` takes `&mut self`), so one
//!   pool cannot be shared by concurrent exchanges with different tokens and namespaces;
//! - CA certificates are file paths (`VaultClientSettings::ca_certs: Vec<String>`, read with
//!   `std::fs::read`), while ours arrive as bytes from `TFC_VAULT_ENCODED_CACERT`; its settings
//!   builder also reads `VAULT_ADDR`, `VAULT_TOKEN`, `VAULT_CACERT`, `VAULT_SKIP_VERIFY` and
//!   `VAULT_CLIENT_CERT` from the process environment by default;
//! - it has no GCP or Azure secrets engine, and its AWS `GenerateCredentialsResponse` has
//!   `security_token` but not the `session_token` Vault 1.16+ returns; `exec_with_result` strips
//!   the envelope, so `lease_id`, `lease_duration` and `renewable` of a read are lost;
//! - its `AuthInfo` derives `Debug` with `client_token` in clear;
//! - it depends on reqwest 0.13 (this service uses 0.12), so the tree would hold two HTTP stacks.
//!
//! `session.rs` keeps one login alive (a token file or an AppRole login) for push mode and the
//! transit key store.
//!
//! What the service needs of Vault is six calls; they are written here on the reqwest client
//! the service already uses.

mod consistency;
mod pool;
mod response;
mod session;

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use consistency::Consistency;
pub use pool::{VaultClients, build as http_client, roots_from_pem};
pub use response::{Auth, Secret, json_error_text};
pub use session::{Session, SessionError, VaultAuth};

/// A Vault client token. Its `Debug` and `Display` never show it.
#[derive(Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(transparent)]
pub struct VaultToken(String);

impl VaultToken {
    pub fn new(token: impl Into<String>) -> VaultToken {
        VaultToken(token.into())
    }

    /// The token itself, for the `X-Vault-Token` header and the exchange's response.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for VaultToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// A failed Vault call. No variant holds a token or a secret: Vault's own `errors` text, the
/// HTTP status, and transport failures (whose text names the URL, which holds none).
#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    /// Vault answered with a non-2xx status; `errors` is its own `errors` list.
    #[error("vault answered {status}: {}", errors_text(.errors))]
    Status { status: u16, errors: Vec<String> },
    /// No answer within the call's timeout.
    #[error("vault did not answer within {}", humantime::format_duration(*.0))]
    Timeout(Duration),
    /// The connection or TLS handshake failed, or the connection broke.
    #[error("cannot reach vault: {0}")]
    Connect(String),
    /// The answer was not the JSON Vault sends for this call.
    #[error("vault's answer is not understood: {0}")]
    Decode(String),
    /// The answer's body is larger than `MAX_RESPONSE`; it was not read to its end.
    #[error("vault's answer exceeds {} MiB and was not read", MAX_RESPONSE >> 20)]
    TooLarge,
    /// The address or the CA of an endpoint is unusable.
    #[error("{0}")]
    Setup(String),
}

impl VaultError {
    /// Whether the node, not the request, failed: unreachable, too slow, sealed or without a
    /// leader (5xx), overloaded or not yet caught up (429), or a redirect (a standby that does not
    /// forward). Another node of the same cluster may answer.
    pub fn is_node_failure(&self) -> bool {
        match self {
            VaultError::Connect(_) | VaultError::Timeout(_) => true,
            VaultError::Status { status, .. } => {
                *status >= 500 || *status == 429 || (300..400).contains(status)
            }
            _ => false,
        }
    }

    /// Whether Vault refused the token itself: 403 `permission denied` (a revoked or unknown
    /// token) or 400 `bad token`.
    pub fn is_bad_token(&self) -> bool {
        match self {
            VaultError::Status { status: 403, .. } => true,
            VaultError::Status {
                status: 400,
                errors,
            } => errors.iter().any(|e| e.contains("bad token")),
            _ => false,
        }
    }
}

fn errors_text(errors: &[String]) -> String {
    if errors.is_empty() {
        return "no error text".into();
    }
    let lines: Vec<String> = errors.iter().map(|e| tidy(e)).collect();
    lines.join("; ")
}

/// Vault's multi-error text (`1 error occurred:\n\t* permission denied\n\n`) on one line.
fn tidy(text: &str) -> String {
    let parts: Vec<&str> = text
        .lines()
        .map(|l| l.trim().trim_start_matches("* "))
        .filter(|l| {
            !l.is_empty() && !l.ends_with("error occurred:") && !l.ends_with("errors occurred:")
        })
        .collect();
    parts.join(", ")
}

/// The largest answer read from Vault, body included (docs/reference.md §4.6). Vault's own
/// answers are a few KiB; this leaves room for a large `policies` list or a service account key.
pub const MAX_RESPONSE: usize = 4 << 20;

/// Where and how to reach one Vault.
#[derive(Clone)]
pub struct Endpoint {
    /// `scheme://host[:port]`, without a trailing slash.
    pub address: String,
    /// Sent as `X-Vault-Namespace` when set.
    pub namespace: Option<String>,
    /// PEM certificates to trust instead of the system's roots.
    pub ca_pem: Option<Vec<u8>>,
    /// The bound of every call, from connecting to the last byte of the answer.
    pub timeout: Duration,
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Endpoint")
            .field("address", &self.address)
            .field("namespace", &self.namespace)
            .field("ca_pem", &self.ca_pem.as_ref().map(|p| p.len()))
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// One Vault endpoint on a pooled connection.
#[derive(Debug, Clone)]
pub struct Vault {
    http: reqwest::Client,
    endpoint: Endpoint,
    /// Read-your-writes across a cluster's nodes, for callers that ask for it.
    consistency: Option<std::sync::Arc<Consistency>>,
}

impl Vault {
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// The same endpoint, where every call asks a standby that has not yet applied what this
    /// client (or any sharing `consistency`) saw to forward the call to the active node.
    pub fn with_consistency(mut self, consistency: std::sync::Arc<Consistency>) -> Vault {
        self.consistency = Some(consistency);
        self
    }

    /// `POST /v1/auth/<auth_path>/login {"role", "jwt"}`: the new token's `auth` block.
    pub async fn login_jwt(
        &self,
        auth_path: &str,
        role: &str,
        jwt: &str,
    ) -> Result<Auth, VaultError> {
        let body = serde_json::json!({ "role": role, "jwt": jwt });
        let path = format!("auth/{auth_path}/login");
        let answer = self
            .send(self.request(reqwest::Method::POST, &path, None).json(&body))
            .await?;
        response::auth(answer)
    }

    /// `POST /v1/auth/approle/login {"role_id", "secret_id"}`: the new token's `auth` block.
    pub async fn login_approle(&self, role_id: &str, secret_id: &str) -> Result<Auth, VaultError> {
        let body = serde_json::json!({ "role_id": role_id, "secret_id": secret_id });
        let request = self
            .request(reqwest::Method::POST, "auth/approle/login", None)
            .json(&body);
        response::auth(self.send(request).await?)
    }

    /// `GET /v1/<path>?<query>` with `token`: the secret.
    pub async fn read(
        &self,
        token: &VaultToken,
        path: &str,
        query: &[(&str, &str)],
    ) -> Result<Secret, VaultError> {
        let request = self
            .request(reqwest::Method::GET, path, Some(token))
            .query(query);
        response::secret(self.send(request).await?)
    }

    /// `POST /v1/<path>` with `token` and a JSON body: the secret, if Vault answered `data`.
    pub async fn write(
        &self,
        token: &VaultToken,
        path: &str,
        body: &Value,
    ) -> Result<Option<Secret>, VaultError> {
        let request = self
            .request(reqwest::Method::POST, path, Some(token))
            .json(body);
        response::maybe_secret(self.send(request).await?)
    }

    /// `POST /v1/auth/token/revoke-self`: revokes `token` and every lease it created.
    pub async fn revoke_self(&self, token: &VaultToken) -> Result<(), VaultError> {
        let request = self.request(reqwest::Method::POST, "auth/token/revoke-self", Some(token));
        self.send(request).await.map(drop)
    }

    /// `POST /v1/auth/token/renew-self {"increment"}`: the renewed token's `auth` block.
    pub async fn renew_self(
        &self,
        token: &VaultToken,
        increment: Option<Duration>,
    ) -> Result<Auth, VaultError> {
        let body = match increment {
            Some(d) => serde_json::json!({ "increment": format!("{}s", d.as_secs()) }),
            None => serde_json::json!({}),
        };
        let request = self
            .request(reqwest::Method::POST, "auth/token/renew-self", Some(token))
            .json(&body);
        response::auth(self.send(request).await?)
    }

    /// `GET /v1/auth/token/lookup-self`: the token's properties (`data`).
    pub async fn lookup_self(&self, token: &VaultToken) -> Result<Secret, VaultError> {
        self.read(token, "auth/token/lookup-self", &[]).await
    }

    fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&VaultToken>,
    ) -> reqwest::RequestBuilder {
        let url = format!(
            "{}/v1/{}",
            self.endpoint.address,
            path.trim_start_matches('/')
        );
        let mut request = self
            .http
            .request(method, url)
            .timeout(self.endpoint.timeout);
        if let Some(token) = token {
            request = request.header("X-Vault-Token", token.expose());
        }
        if let Some(namespace) = &self.endpoint.namespace {
            request = request.header("X-Vault-Namespace", namespace);
        }
        if let Some(consistency) = &self.consistency {
            request = consistency.on_request(request);
        }
        request
    }

    /// Sends `request`; the answer of a 2xx (`None` for 204 or an empty body). The timeout
    /// bounds the whole call, the body included, and at most `MAX_RESPONSE` bytes are read.
    async fn send(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<Option<response::Envelope>, VaultError> {
        let timeout = self.endpoint.timeout;
        let call = async {
            let mut response = request.send().await.map_err(|e| transport(e, timeout))?;
            if let Some(consistency) = &self.consistency {
                consistency.on_response(response.headers());
            }
            let status = response.status().as_u16();
            let body = bounded_body(&mut response, timeout).await?;
            response::classify(status, &body)
        };
        tokio::time::timeout(timeout, call)
            .await
            .unwrap_or(Err(VaultError::Timeout(timeout)))
    }
}

/// The body of `response`, refused past `MAX_RESPONSE` bytes (announced or received).
async fn bounded_body(
    response: &mut reqwest::Response,
    timeout: Duration,
) -> Result<Vec<u8>, VaultError> {
    if response
        .content_length()
        .is_some_and(|n| n > MAX_RESPONSE as u64)
    {
        return Err(VaultError::TooLarge);
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| transport(e, timeout))? {
        if body.len() + chunk.len() > MAX_RESPONSE {
            return Err(VaultError::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

fn transport(e: reqwest::Error, timeout: Duration) -> VaultError {
    if e.is_timeout() {
        return VaultError::Timeout(timeout);
    }
    VaultError::Connect(error_chain(&e))
}

/// An error and its sources on one line (`a: b: c`). The HTTP clients' errors name the URL,
/// never a header, so no token is in them.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        source = inner.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_debug_is_redacted() {
        let token = VaultToken::new("s.secretvalue");
        assert_eq!(format!("{token:?}"), "<redacted>");
    }

    #[test]
    fn multi_error_text_is_one_line() {
        let e = VaultError::Status {
            status: 403,
            errors: vec!["1 error occurred:\n\t* permission denied\n\n".into()],
        };
        assert_eq!(e.to_string(), "vault answered 403: permission denied");
        assert!(e.is_bad_token());
    }

    #[test]
    fn bad_token_is_recognised() {
        let e = VaultError::Status {
            status: 400,
            errors: vec!["bad token".into()],
        };
        assert!(e.is_bad_token());
        let e = VaultError::Status {
            status: 400,
            errors: vec!["missing role".into()],
        };
        assert!(!e.is_bad_token());
    }
}
