//! The API listener's routes (SPEC §7; the credential exchange's are in `credentials.rs`).
//!
//! Every `/v1` route authenticates the bearer token and checks its scope before reading the body;
//! bodies are bounded (`api.max_body` → 413), must be JSON (415), and are parsed into validated
//! types before anything happens, so that a bad request changes nothing.

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde::de::DeserializeOwned;

use super::auth::{Caller, Scope};
use super::error::ApiError;
use super::{AppState, Tracked};
use crate::keys::{Kid, listing};
use crate::telemetry::KeyGauges;
use crate::token::TokenRequest;
use crate::token::claims::{NamedInput, RunContext, RunIdInput, RunInput};

pub fn router(state: Arc<AppState>) -> Router {
    let tracked = Tracked {
        listener: "api",
        metrics: Arc::clone(&state.metrics),
    };
    Router::new()
        .route("/v1/tokens", post(issue_token))
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

/// The body of `POST /v1/tokens`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenBody {
    organization: NamedInput,
    project: NamedInput,
    workspace: NamedInput,
    run: RunIdInput,
    audience: Option<String>,
    ttl: Option<String>,
}

async fn issue_token(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    match issue(&state, &headers, body).await {
        Ok(response) => response,
        Err(e) => {
            state.metrics.token_error(e.status_and_code().1);
            e.into_response()
        }
    }
}

async fn issue(state: &AppState, headers: &HeaderMap, body: Body) -> Result<Response, ApiError> {
    let caller = authorize(state, headers, Scope::Tokens)?;
    let body: TokenBody = read_json(headers, body, state.max_body).await?;
    let run = RunContext::parse(&RunInput {
        organization: body.organization,
        project: body.project,
        workspace: body.workspace,
        run: body.run,
    })?;
    let request = TokenRequest {
        run,
        audience: body.audience,
        ttl: body.ttl,
    };
    let checked = state.issuer.check(&request)?;
    let published = state.published.load();
    let signer = published.keys.signer.as_ref().ok_or_else(|| {
        ApiError::Unavailable(
            "no current signing key: the key store is not loaded; see the server log".into(),
        )
    })?;
    let issued = state
        .issuer
        .issue_checked(&request.run, checked, signer, state.manager.now());
    state.metrics.token_issued(request.run.phase);
    state.audit.token_issued(&issued, &caller.name);
    let c = &issued.claims;
    let json = serde_json::json!({
        "token": issued.token, "kid": issued.kid.as_str(), "jti": c.jti, "issued_at": c.iat, "expires_at": c.exp,
    });
    Ok(Json(json).into_response())
}

async fn list_keys(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    authorize(&state, &headers, Scope::Keys)?;
    Ok(Json(listing(&state.published.load().keys.set)).into_response())
}

#[derive(Deserialize)]
struct RotateQuery {
    #[serde(default)]
    force: bool,
}

async fn rotate_keys(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    query: Result<Query<RotateQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let caller = authorize(&state, &headers, Scope::Keys)?;
    let Query(query) =
        query.map_err(|_| ApiError::invalid(Some("force"), "force must be true or false"))?;
    let manager = Arc::clone(&state.manager);
    let set = blocking(move || manager.rotate(query.force)).await??;
    tracing::info!(target: "audit", event = "keys_rotated", caller = %caller.name, force = query.force, "keys rotated");
    Ok(Json(listing(&set)).into_response())
}

async fn revoke_key(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(kid): Path<String>,
) -> Result<Response, ApiError> {
    let caller = authorize(&state, &headers, Scope::Keys)?;
    let kid = Kid::parse(&kid)
        .map_err(|m| ApiError::NotFound(format!("{m}; GET /v1/keys lists the key ids")))?;
    let manager = Arc::clone(&state.manager);
    let revoked = kid.clone();
    let set = blocking(move || manager.revoke(&revoked)).await??;
    tracing::warn!(target: "audit", event = "key_revoked", caller = %caller.name, kid = %kid, "key revoked");
    let mut body = listing(&set);
    body["revoked"] = kid.as_str().into();
    body["note"] = REVOKE_NOTE.into();
    Ok(Json(body).into_response())
}

/// What a revocation does and does not do to a verifier's cache.
const REVOKE_NOTE: &str = "the key is no longer published, but Vault keeps trusting it until it refetches the JWKS: it does so only when a login presents a token whose kid it has not cached (or whose signature fails), or when auth/jwt/config is rewritten; rewrite the config to make Vault drop the key now";

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let published = state.published.load();
    let now = state.manager.now();
    let age = published
        .keys
        .set
        .current()
        .and_then(|c| c.activated_at)
        .map(|t| now.saturating_sub(t))
        .unwrap_or(0);
    let gauges = KeyGauges {
        current_key_age_seconds: age,
        jwks_keys: published.docs.key_count,
    };
    let text = state.metrics.render(gauges);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

async fn readyz(State(state): State<Arc<AppState>>) -> (StatusCode, &'static str) {
    match state.published.load().keys.signer {
        Some(_) => (StatusCode::OK, "ready\n"),
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: no current signing key\n",
        ),
    }
}

/// The caller behind the bearer token, if it holds `scope`.
pub(super) fn authorize(
    state: &AppState,
    headers: &HeaderMap,
    scope: Scope,
) -> Result<Caller, ApiError> {
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
        .ok_or_else(|| {
            ApiError::Unauthorized(
                "send Authorization: Bearer <api token> (see `tfe-oidc api-token new`)".into(),
            )
        })?;
    let caller = state
        .api_tokens
        .authenticate(presented)
        .ok_or_else(|| ApiError::Unauthorized("the bearer token is not valid".into()))?;
    if !caller.scopes.contains(&scope) {
        tracing::warn!(target: "audit", event = "forbidden", caller = %caller.name, scope = scope.as_str(), "call outside the caller's scopes");
        return Err(ApiError::Forbidden(format!(
            "the token of caller {:?} lacks the {:?} scope; add it to the caller's line in the tokens file",
            caller.name,
            scope.as_str()
        )));
    }
    Ok(caller.clone())
}

/// Reads a bounded JSON body and parses it, naming the field at fault.
pub(super) async fn read_json<T: DeserializeOwned>(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
) -> Result<T, ApiError> {
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"));
    if !is_json {
        return Err(ApiError::UnsupportedMediaType);
    }
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(ApiError::PayloadTooLarge(limit));
    }
    let bytes = axum::body::to_bytes(body, limit)
        .await
        .map_err(|_| ApiError::PayloadTooLarge(limit))?;
    parse_json(&bytes)
}

fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(&mut deserializer).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        // A syntax error (or a truncated body) is no one field's fault, wherever it stopped.
        let malformed = matches!(
            inner.classify(),
            serde_json::error::Category::Syntax | serde_json::error::Category::Eof
        );
        let message = inner.to_string();
        let missing = message
            .strip_prefix("missing field `")
            .and_then(|m| m.split('`').next());
        let field = match (path.as_str(), missing) {
            _ if malformed => String::new(),
            (".", Some(name)) => name.to_owned(),
            (_, Some(name)) => format!("{path}.{name}"),
            (".", None) => String::new(),
            (_, None) => path,
        };
        let field = (!field.is_empty()).then_some(field);
        ApiError::invalid(
            field.as_deref(),
            format!("the body is not a valid request: {message}"),
        )
    })
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
    use super::*;

    fn field_of(json: &str) -> Option<String> {
        match parse_json::<TokenBody>(json.as_bytes()) {
            Err(ApiError::InvalidRequest { field, .. }) => field,
            other => panic!("expected a 400, got {other:?}"),
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
}
