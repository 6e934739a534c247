//! The credential exchange's routes: `POST /v1/credentials` and `POST /v1/credentials/revoke`
//! (scope `credentials`).
//!
//! The exchange itself is `crate::exchange`; this file reads the body, builds the `Minter` that
//! signs each Vault login token with the current key (counted and audited with the caller's
//! name, like `/v1/tokens`), and logs the outcome without any secret.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::AppState;
use super::api::{authorize, read_json};
use super::auth::Scope;
use super::error::ApiError;
use crate::exchange::{ExchangeError, Minter, RevokeRequest, revoke};
use crate::token::claims::{Audience, RunContext, RunInput};
use crate::token::{IssuedToken, TokenRequest};

/// The body of `POST /v1/credentials`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExchangeBody {
    run: RunInput,
    variables: BTreeMap<String, String>,
}

pub async fn exchange(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let caller = authorize(&state, &headers, Scope::Credentials)?;
    let body: ExchangeBody = read_json(&headers, body, state.max_body).await?;
    let run = RunContext::parse(&body.run)
        .map_err(|e| ApiError::invalid(Some(&format!("run.{}", e.field)), e.message))?;
    let minter = ApiMinter {
        state: &state,
        run: &run,
        caller: &caller.name,
    };
    let now = state.manager.now();
    let result = state
        .exchanger
        .exchange(&body.variables, run.phase, &minter, &state.metrics, now)
        .await;
    log_outcome("credentials_issued", &caller.name, &run, &result);
    Ok(Json(result?).into_response())
}

pub async fn revoke_credentials(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let caller = authorize(&state, &headers, Scope::Credentials)?;
    let request: RevokeRequest = read_json(&headers, body, state.max_body).await?;
    let result = revoke(&state.exchanger, request, &state.metrics).await;
    match &result {
        Ok(done) => {
            tracing::info!(target: "audit", event = "credentials_revoked", caller = %caller.name, revoked = %done["revoked"], "vault tokens revoked")
        }
        Err(e) => {
            tracing::warn!(target: "audit", event = "credentials_revoke_failed", caller = %caller.name, error = %e, "vault token revocation failed")
        }
    }
    Ok(Json(result?).into_response())
}

fn log_outcome<T>(event: &str, caller: &str, run: &RunContext, result: &Result<T, ExchangeError>) {
    match result {
        Ok(_) => {
            tracing::info!(target: "audit", event, caller, run = %run.run_id, workspace = %run.workspace_name, "credential exchange done")
        }
        Err(e) => {
            tracing::warn!(target: "audit", event = "credentials_refused", caller, run = %run.run_id, workspace = %run.workspace_name, error = %e, "credential exchange failed")
        }
    }
}

/// Signs Vault login tokens for one run with the current key, counted and audited.
struct ApiMinter<'a> {
    state: &'a AppState,
    run: &'a RunContext,
    caller: &'a str,
}

impl ApiMinter<'_> {
    fn request(&self, audience: &Audience) -> TokenRequest {
        TokenRequest {
            run: self.run.clone(),
            audience: Some(audience.as_str().to_owned()),
            ttl: None,
        }
    }
}

impl Minter for ApiMinter<'_> {
    fn refuses(&self, audience: &Audience) -> Option<String> {
        let e = self.state.issuer.check(&self.request(audience)).err()?;
        Some(e.message)
    }

    fn mint(&self, audience: &Audience) -> Result<IssuedToken, ExchangeError> {
        let request = self.request(audience);
        let checked = self
            .state
            .issuer
            .check(&request)
            .map_err(|e| ExchangeError::Unavailable(e.message))?;
        let published = self.state.published.load();
        let signer = published.keys.signer.as_ref().ok_or_else(|| {
            ExchangeError::Unavailable(
                "no current signing key: the key store is not loaded; see the server log".into(),
            )
        })?;
        let issued = self.state.issuer.issue_checked(
            &request.run,
            checked,
            signer,
            self.state.manager.now(),
        );
        self.state.metrics.token_issued(request.run.phase);
        self.state.audit.token_issued(&issued, self.caller);
        Ok(issued)
    }
}
