//! The tfe-oidc API as `run` calls it: `POST /v1/credentials` and `POST /v1/credentials/revoke`,
//! with the bearer token of a caller that has the `credentials` scope.

use std::net::IpAddr;

use serde_json::Value;

use super::RunError;
use super::handover::ApiToken;
use crate::vault::error_chain;

/// A client of one tfe-oidc API listener.
#[derive(Debug)]
pub struct ApiClient {
    http: reqwest::Client,
    base: reqwest::Url,
    token: ApiToken,
}

impl ApiClient {
    /// A client for `base` (`http(s)://host:port`), trusting `ca_pem` when given. Plain
    /// `http://` is refused off loopback unless `allow_insecure_http`: the bearer token and the
    /// credentials would cross the network in clear.
    pub fn new(
        base: &str,
        token: ApiToken,
        ca_pem: Option<&[u8]>,
        allow_insecure_http: bool,
    ) -> Result<ApiClient, RunError> {
        let base = reqwest::Url::parse(base)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
            .ok_or_else(|| {
                RunError::Usage(format!(
                    "--api {base:?} is not an http(s) URL such as https://tfe-oidc.internal:8443"
                ))
            })?;
        if base.scheme() == "http" && !allow_insecure_http && !is_loopback(&base) {
            return Err(RunError::Usage(format!(
                "--api {base}: plain http off loopback would send the API token and the credentials in clear: use https://, or pass --allow-insecure-http on a network you trust"
            )));
        }
        let http = crate::vault::http_client(ca_pem)
            .map_err(|e| RunError::Usage(format!("--api-ca-file: {e}")))?;
        Ok(ApiClient { http, base, token })
    }

    /// The exchange: its answer, or why not.
    pub async fn exchange(&self, body: &Value) -> Result<Value, RunError> {
        self.post("v1/credentials", body).await
    }

    /// Revokes the Vault tokens of an exchange's `vault` object.
    pub async fn revoke(&self, vault: &Value) -> Result<Value, RunError> {
        self.post("v1/credentials/revoke", vault).await
    }

    async fn post(&self, path: &str, body: &Value) -> Result<Value, RunError> {
        let url = self.base.join(path).expect("a fixed relative path joins");
        let response = self
            .http
            .post(url.clone())
            .bearer_auth(self.token.secret())
            .timeout(std::time::Duration::from_secs(600))
            .json(body)
            .send()
            .await
            .map_err(|e| RunError::Unavailable(format!("POST {url}: {}", error_chain(&e))))?;
        let status = response.status().as_u16();
        let answer: Value = response.json().await.unwrap_or(Value::Null);
        match status {
            200 => Ok(answer),
            _ => Err(api_error(status, &answer)),
        }
    }
}

/// Whether the URL's host is `localhost` or a loopback address.
fn is_loopback(url: &reqwest::Url) -> bool {
    let host = url.host_str().unwrap_or_default();
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// The error of a non-200 answer `{"error", "message", "field"}`.
fn api_error(status: u16, answer: &Value) -> RunError {
    let message = answer["message"]
        .as_str()
        .unwrap_or("no message")
        .to_owned();
    let message = match answer["field"].as_str() {
        Some(field) if !message.starts_with(field.trim_start_matches("variables.")) => {
            format!("{field}: {message}")
        }
        _ => message,
    };
    match status {
        400 | 404 | 409 | 413 | 415 | 422 => RunError::Invalid(message),
        401 | 403 => RunError::Refused { status, message },
        502 => RunError::Vault(message),
        _ => RunError::Unavailable(format!("answered {status}: {message}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_is_refused_off_loopback_unless_allowed() {
        let token = || ApiToken::for_tests("t");
        for ok in [
            "http://127.0.0.1:9443",
            "http://[::1]:9443",
            "http://localhost:1",
            "https://tfe-oidc.internal",
        ] {
            assert!(ApiClient::new(ok, token(), None, false).is_ok(), "{ok}");
        }
        let e = ApiClient::new("http://tfe-oidc.internal:9443", token(), None, false).unwrap_err();
        assert!(e.to_string().contains("--allow-insecure-http"), "{e}");
        assert!(ApiClient::new("http://tfe-oidc.internal:9443", token(), None, true).is_ok());
    }

    #[test]
    fn statuses_map_to_kinds() {
        let body =
            serde_json::json!({"message": "is required", "field": "variables.TFC_VAULT_ADDR"});
        let e = api_error(400, &body);
        assert_eq!(
            e.to_string(),
            "the credential exchange refused the request: variables.TFC_VAULT_ADDR: is required"
        );
        assert!(matches!(api_error(502, &body), RunError::Vault(_)));
        assert!(matches!(api_error(403, &body), RunError::Refused { .. }));
        assert!(matches!(api_error(503, &body), RunError::Unavailable(_)));
    }
}
