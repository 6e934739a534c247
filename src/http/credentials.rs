//! The credential exchange's routes: `POST /v1/credentials` and `POST /v1/credentials/revoke`
//! (scope `credentials`).
//!
//! The exchange itself is `crate::exchange`; this file reads the body, builds the `Minter` that
//! signs each Vault login token with the current key behind the same gates as `/v1/tokens`
//! (counted and audited with the caller's name), runs the exchange on the exchanger's tasks
//! (a client that goes away cuts it off, and its Vault tokens are revoked), and logs the outcome
//! without any secret.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderName, header};
use serde::Deserialize;
use serde_json::Value;

use super::ApiState;
use super::error::ApiError;
use super::extract::{Authorized, Credentials, RevocationJson, StrictJson};
use super::policy::authorize_sub;
use crate::exchange::lookup::unique_variables;
use crate::exchange::{ExchangeError, Issued, Minter, RevokeRequest, revoke};
use crate::keys::manager::SignGate;
use crate::token::claims::{Audience, RunContext, RunInput};
use crate::token::kinds::Subject;
use crate::token::{IssuedToken, TokenRequest};

/// The body of `POST /v1/credentials`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExchangeBody {
    run: RunInput,
    #[serde(deserialize_with = "unique_variables")]
    variables: BTreeMap<String, String>,
}

/// The answer holds credentials: no cache may keep it.
type Uncached = ([(HeaderName, &'static str); 1], Json<Value>);

fn uncached(body: Value) -> Uncached {
    ([(header::CACHE_CONTROL, "no-store")], Json(body))
}

pub async fn exchange(
    State(state): State<Arc<ApiState>>,
    Authorized { caller, .. }: Authorized<Credentials>,
    StrictJson(body): StrictJson<ExchangeBody>,
) -> Result<Uncached, ApiError> {
    let run = RunContext::parse(&body.run)
        .map_err(|e| ApiError::invalid(Some(&format!("run.{}", e.field)), e.message))?;
    // Every token the exchange signs (Vault logins and manual audiences) has this run's sub.
    authorize_sub(&caller, &run.subject(), "/v1/credentials")?;
    let cancel = state.exchanger.cancellation();
    // Dropped with this handler when the client goes away: the exchange is cut off.
    let _client_gone = cancel.clone().drop_guard();
    let task = run_exchange(
        Arc::clone(&state),
        run.clone(),
        caller.name.clone(),
        body.variables,
        cancel,
    );
    let issued = state
        .exchanger
        .spawn(task)
        .await
        .map_err(|e| ApiError::Internal(format!("the exchange task failed: {e}")))??;
    let body = issued.deliver();
    tracing::info!(target: "audit", event = "credentials_issued", caller = %caller.name, run = %run.run_id, workspace = %run.workspace_name, "credential exchange done");
    Ok(uncached(body))
}

/// One exchange, audited when it fails (also when no client is left to answer).
async fn run_exchange(
    state: Arc<ApiState>,
    run: RunContext,
    caller: String,
    variables: BTreeMap<String, String>,
    cancel: tokio_util::sync::CancellationToken,
) -> Result<Issued, ExchangeError> {
    let minter = ApiMinter {
        state: &state,
        run: &run,
        caller: &caller,
    };
    let now = state.manager.now();
    let result = state
        .exchanger
        .exchange(&variables, run.phase, &minter, &state.metrics, now, &cancel)
        .await;
    match &result {
        Ok(_) => {}
        Err(ExchangeError::Cancelled(cutoff)) => {
            tracing::warn!(target: "audit", event = "credentials_abandoned", reason = cutoff.as_str(), caller = %caller, run = %run.run_id, workspace = %run.workspace_name, "credential exchange cut off: its vault tokens were revoked")
        }
        Err(e) => {
            tracing::warn!(target: "audit", event = "credentials_refused", caller = %caller, run = %run.run_id, workspace = %run.workspace_name, error = %e, "credential exchange failed")
        }
    }
    result
}

pub async fn revoke_credentials(
    State(state): State<Arc<ApiState>>,
    Authorized { caller, .. }: Authorized<Credentials>,
    RevocationJson(request): RevocationJson<RevokeRequest>,
) -> Result<Json<Value>, ApiError> {
    let result = revoke(&state.exchanger, request, &state.metrics).await;
    match &result {
        Ok(done) => {
            tracing::info!(target: "audit", event = "credentials_revoked", caller = %caller.name, revoked = %done["revoked"], "vault tokens revoked")
        }
        Err(e) => {
            tracing::warn!(target: "audit", event = "credentials_revoke_failed", caller = %caller.name, error = %e, "vault token revocation failed")
        }
    }
    Ok(Json(result?))
}

/// Signs Vault login tokens for one run with the current key, counted and audited.
struct ApiMinter<'a> {
    state: &'a ApiState,
    run: &'a RunContext,
    caller: &'a str,
}

impl ApiMinter<'_> {
    fn request(&self, audience: &Audience) -> TokenRequest {
        TokenRequest {
            subject: Subject::Run(self.run.clone()),
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

    fn mint<'a>(
        &'a self,
        audience: &'a Audience,
    ) -> futures_util::future::BoxFuture<'a, Result<IssuedToken, ExchangeError>> {
        Box::pin(self.mint_one(audience))
    }
}

impl ApiMinter<'_> {
    async fn mint_one(&self, audience: &Audience) -> Result<IssuedToken, ExchangeError> {
        let request = self.request(audience);
        let checked = self
            .state
            .issuer
            .check(&request)
            .map_err(|e| ExchangeError::Unavailable(e.message))?;
        let snapshot = self.state.manager.snapshot();
        let signer = snapshot.signer.as_ref().ok_or_else(|| {
            ExchangeError::Unavailable(
                "no current signing key: the key store is not loaded; see the server log".into(),
            )
        })?;
        // The push gate of /v1/tokens: no Vault may be asked to trust a key it cannot verify.
        if !self.state.pushes.may_sign(signer.kid()) {
            return Err(ExchangeError::Unavailable(
                "a push target does not hold the current key yet, so no token is signed with it; see /readyz and the server log".into(),
            ));
        }
        let issued = self
            .state
            .issuer
            .issue_checked(&request.subject, checked, signer, self.state.manager.now())
            .await
            .map_err(|e| {
                tracing::error!(error = %e, "no token could be signed for the exchange");
                ExchangeError::Unavailable(format!("no token could be signed: {e}"))
            })?;
        // As for /v1/tokens: a token the audit cannot record is not used.
        self.state.audit.token_issued(&issued, self.caller).map_err(|e| {
            tracing::error!(error = %e, jti = %issued.claims.jti(), "audit.path cannot be written: the token was not used");
            ExchangeError::Unavailable(
                "the audit log cannot be written, so no token is minted; see the server log"
                    .into(),
            )
        })?;
        let subject = &request.subject;
        self.state
            .metrics
            .token_issued(subject.kind(), subject.phase());
        Ok(issued)
    }
}
