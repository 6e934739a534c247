//! The API listener's routes.
//!
//! Every `/v1` handler takes an `Authorized<Scope>` caller and, when it has a body, a
//! `StrictJson` body (`extract.rs`); both are checked before anything happens, so a bad request
//! changes nothing. Handlers return typed response structs or an `ApiError`.

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};

use super::error::{ApiError, ErrorCode};
use super::extract::{Authorized, Keys, StrictJson, Tokens};
use super::policy::authorize_sub;
use super::{ApiState, Tracked};
use crate::keys::manager::{KeyManager, ManagerError, SignGate};
use crate::keys::{KeyState, Kid, Listing, listing};
use crate::push::RevokedAt;
use crate::telemetry::KeyGauges;
use crate::token::TokenRequest;
use crate::token::kinds::TokenInput;

pub fn router(state: Arc<ApiState>) -> Router {
    let tracked = Tracked {
        listener: "api",
        metrics: Arc::clone(&state.metrics),
    };
    let count_errors =
        axum::middleware::map_response_with_state(Arc::clone(&state), count_token_errors);
    Router::new()
        .route("/v1/tokens", post(issue_token).layer(count_errors))
        .route("/v1/credentials", post(super::credentials::exchange))
        .route(
            "/v1/credentials/revoke",
            post(super::credentials::revoke_credentials),
        )
        .route("/v1/keys", get(list_keys))
        .route("/v1/keys/rotate", post(rotate_keys))
        .route("/v1/keys/{kid}/revoke", post(revoke_key))
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .fallback(|| async {
            ApiError::NotFound("no such route; see the README's table of endpoints".into())
        })
        .with_state(state)
        .layer(tracked)
}

/// The answer of `POST /v1/tokens`. Not `Debug`: it holds a token.
#[derive(Serialize)]
struct TokenResponse {
    token: String,
    kid: Kid,
    jti: String,
    issued_at: u64,
    expires_at: u64,
}

async fn issue_token(
    State(state): State<Arc<ApiState>>,
    Authorized { caller, .. }: Authorized<Tokens>,
    StrictJson(body): StrictJson<TokenInput>,
) -> Result<Response, ApiError> {
    let request = TokenRequest::parse(body)?;
    authorize_sub(&caller, &request.subject.sub(), "/v1/tokens")?;
    let checked = state.issuer.check(&request)?;
    let snapshot = state.manager.snapshot();
    let signer = snapshot.signer.as_ref().ok_or_else(|| {
        ApiError::Unavailable(
            "no current signing key: the key store is not loaded; see the server log".into(),
        )
    })?;
    if !state.pushes.may_sign(signer.kid()) {
        return Err(ApiError::Unavailable(
            "a push target does not hold the current key yet, so no token is signed with it; see /readyz and the server log".into(),
        ));
    }
    let issued = state
        .issuer
        .issue_checked(&request.subject, checked, signer, state.manager.now())
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "no token could be signed");
            ApiError::Unavailable(format!("no token could be signed: {e}; see /readyz"))
        })?;
    state.audit.token_issued(&issued, &caller.name).map_err(|e| {
        tracing::error!(error = %e, jti = %issued.claims.jti(), "audit.path cannot be written: the token was not handed out");
        ApiError::Unavailable(
            "the audit log cannot be written, so no token is handed out; see the server log".into(),
        )
    })?;
    let subject = &request.subject;
    state.metrics.token_issued(subject.kind(), subject.phase());
    let (issued_at, expires_at) = issued.claims.times();
    // Sized for the token up front: `Json` starts at 128 bytes and grows four times.
    let mut body = Vec::with_capacity(issued.token.len() + 192);
    let response = TokenResponse {
        jti: issued.claims.jti().to_owned(),
        issued_at,
        expires_at,
        kid: issued.kid,
        token: issued.token,
    };
    serde_json::to_writer(&mut body, &response).expect("a token response serializes");
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}

/// Counts every refused token request by its error code.
async fn count_token_errors(State(state): State<Arc<ApiState>>, response: Response) -> Response {
    if let Some(ErrorCode(code)) = response.extensions().get::<ErrorCode>() {
        state.metrics.token_error(code);
    }
    response
}

async fn list_keys(State(state): State<Arc<ApiState>>, _: Authorized<Keys>) -> Json<Listing> {
    Json(listing(&state.manager.snapshot().set))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RotateQuery {
    #[serde(default)]
    force: bool,
}

async fn rotate_keys(
    State(state): State<Arc<ApiState>>,
    Authorized { caller, .. }: Authorized<Keys>,
    query: Result<Query<RotateQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Listing>, ApiError> {
    let Query(query) = query.map_err(|_| {
        ApiError::invalid(
            Some("force"),
            "the only query parameter is force=true or force=false",
        )
    })?;
    let snapshot = state.manager.snapshot();
    if let Some(next) = snapshot.set.next()
        && !query.force
        && !state.pushes.may_sign(&next.kid)
    {
        return Err(ApiError::Conflict(format!(
            "a push target does not hold the next key {} yet, so it may not sign; wait for the push (see /readyz) or force the rotation (issuance then answers 503 until every target holds it)",
            next.kid
        )));
    }
    let manager = Arc::clone(&state.manager);
    // Audited inside the task: it runs to its end even when the caller goes away.
    let set = blocking(move || {
        let set = manager.rotate(query.force)?;
        tracing::info!(target: "audit", event = "keys_rotated", caller = %caller.name, force = query.force, "keys rotated");
        Ok::<_, ManagerError>(set)
    })
    .await??;
    Ok(Json(listing(&set)))
}

/// The answer of `POST /v1/keys/{kid}/revoke`: the set after, and what it means for Vault.
#[derive(Serialize)]
struct Revoked {
    #[serde(flatten)]
    listing: Listing,
    revoked: Kid,
    note: &'static str,
    /// Per push target: whether the key is already gone from its config.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    push: Vec<RevokedAt>,
}

/// How long a revocation waits for the push targets to drop the key before it answers.
const REVOKE_PUSH_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

async fn revoke_key(
    State(state): State<Arc<ApiState>>,
    Authorized { caller, .. }: Authorized<Keys>,
    Path(kid): Path<String>,
) -> Result<Json<Revoked>, ApiError> {
    let kid = Kid::parse(&kid)
        .map_err(|m| ApiError::NotFound(format!("{m}; GET /v1/keys lists the key ids")))?;
    let manager = Arc::clone(&state.manager);
    let revoked = kid.clone();
    let set = blocking(move || {
        let set = manager.revoke(&revoked)?;
        tracing::warn!(target: "audit", event = "key_revoked", caller = %caller.name, kid = %revoked, "key revoked");
        Ok::<_, ManagerError>(set)
    })
    .await??;
    let sequence = state.manager.snapshot().sequence;
    let push = state
        .pushes
        .wait_for(sequence, &kid, REVOKE_PUSH_WAIT)
        .await;
    Ok(Json(Revoked {
        listing: listing(&set),
        note: if state.pushes.is_empty() {
            REVOKE_NOTE
        } else {
            REVOKE_PUSH_NOTE
        },
        revoked: kid,
        push,
    }))
}

/// What a revocation does and does not do to a verifier's cache.
const REVOKE_NOTE: &str = "the key is no longer published, but Vault keeps trusting it until it refetches the JWKS: it does so only when a login presents a token whose kid it has not cached (or whose signature fails), or when auth/jwt/config is rewritten; rewrite the config to make Vault drop the key now";

/// What a revocation means in push mode.
const REVOKE_PUSH_NOTE: &str = "the key is pushed out of every push target's jwt_validation_pubkeys: a target whose key_gone is true refuses its tokens from the next login on; one whose key_gone is false is retried with backoff";

async fn metrics(State(state): State<Arc<ApiState>>) -> Response {
    let mut text = state.metrics.render(key_gauges(&state.manager));
    state.pushes.render(&mut text);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

/// The key set as the metrics show it, read from the manager's latest snapshot.
fn key_gauges(manager: &KeyManager) -> KeyGauges {
    let snapshot = manager.snapshot();
    let set = &snapshot.set;
    let now = manager.now();
    let activated = set.current().and_then(|c| c.activated_at);
    let count = |state: KeyState| set.keys.iter().filter(|k| k.state == state).count();
    KeyGauges {
        current_key_age_seconds: activated.map(|t| now.saturating_sub(t)).unwrap_or(0),
        jwks_keys: set.keys.len(),
        rotations: snapshot.rotations,
        next_key_age_seconds: set.next().map(|n| now.saturating_sub(n.created_at)),
        current_key_activated_at: activated,
        keys_by_state: [
            count(KeyState::Next),
            count(KeyState::Current),
            count(KeyState::Retired),
        ],
        rotation_period_seconds: manager.policy().rotation_period,
        store_healthy: manager.health().is_ok(),
        rotation_failures: manager.tick_failures(),
        records_refused: manager.records_refused(),
    }
}

async fn readyz(State(state): State<Arc<ApiState>>) -> (StatusCode, String) {
    if let Err(problem) = state.manager.health() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {problem}\n"),
        );
    }
    let snapshot = state.manager.snapshot();
    let Some(signer) = &snapshot.signer else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: no current signing key\n".into(),
        );
    };
    let behind = state.pushes.behind(snapshot.sequence);
    if !state.pushes.may_sign(signer.kid()) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "not ready: push targets do not hold the current key yet: {}\n",
                behind.join(", ")
            ),
        );
    }
    match behind.is_empty() {
        true => (StatusCode::OK, "ready\n".into()),
        false => (
            StatusCode::OK,
            format!("ready; push targets behind: {}\n", behind.join(", ")),
        ),
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::Internal(format!("task failed: {e}")))
}

#[cfg(test)]
mod tests {
    use super::super::extract::parse_object;
    use super::*;

    fn field_of(json: &str) -> Option<String> {
        match parse_object::<TokenInput>(json.as_bytes()) {
            Err(ApiError::InvalidRequest { field, .. }) => field,
            other => panic!("expected a 400, got {:?}", other.err()),
        }
    }

    #[test]
    fn json_errors_name_the_field() {
        assert_eq!(field_of("{}").as_deref(), Some("organization"));
        assert_eq!(
            field_of(r#"{"organization":{"id":"org-a"}}"#).as_deref(),
            Some("organization.name")
        );
        assert_eq!(
            field_of(r#"{"organization":{"id":1,"name":"a"}}"#).as_deref(),
            Some("organization.id")
        );
        assert_eq!(field_of("not json"), None);
        assert_eq!(field_of(r#"{"organization": "#), None);
        assert_eq!(field_of(r#"{"run": {"id": "run-a", "phase": plan}}"#), None);
    }

    #[test]
    fn only_one_object_is_a_body() {
        const VALID: &str = r#"{"organization":{"id":"org-a","name":"a"},"project":{"id":"prj-a","name":"p"},"workspace":{"id":"ws-a","name":"w"},"run":{"id":"run-a","phase":"plan"}}"#;
        assert!(parse_object::<TokenInput>(VALID.as_bytes()).is_ok());
        for bad in [
            format!("{VALID} xyz"),
            format!("{VALID}{VALID}"),
            format!("[{VALID}]"),
            "\"text\"".to_owned(),
            "42".to_owned(),
        ] {
            assert_eq!(field_of(&bad), None, "{bad}");
        }
    }
}
