//! The API's extractors: who is calling and whether they may (`Authorized`), and the request body
//! as one strict JSON object (`StrictJson`). Handlers take these and read as the operation they
//! perform; every refusal is an `ApiError`, so a bad request changes nothing.
//!
//! A body must be `Content-Type: application/json`, within `api.max_body` (a revocation: within
//! the larger bound that every exchange answer fits, `RevocationJson`), arrive within
//! `REQUEST_TIMEOUT`, and be exactly one JSON object: data after it, an array, or a malformed
//! chunked encoding are 400s naming what is wrong. An error names the field and the types, never
//! the value sent.

use std::marker::PhantomData;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, header};
use bytes::Bytes;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde::de::DeserializeOwned;

use super::ApiState;
use super::auth::{Caller, Scope};
use super::conn::REQUEST_TIMEOUT;
use super::error::ApiError;

/// A scope a route requires, as a type.
pub trait RequiredScope {
    const SCOPE: Scope;
}

/// `/v1/tokens`
pub struct Tokens;
/// `/v1/credentials*`
pub struct Credentials;
/// `/v1/keys*`
pub struct Keys;

impl RequiredScope for Tokens {
    const SCOPE: Scope = Scope::Tokens;
}
impl RequiredScope for Credentials {
    const SCOPE: Scope = Scope::Credentials;
}
impl RequiredScope for Keys {
    const SCOPE: Scope = Scope::Keys;
}

/// The caller behind a valid bearer token that holds scope `S`.
pub struct Authorized<S> {
    pub caller: Caller,
    scope: PhantomData<S>,
}

impl<S: RequiredScope> FromRequestParts<Arc<ApiState>> for Authorized<S> {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<ApiState>,
    ) -> Result<Self, ApiError> {
        let presented = bearer(&parts.headers).ok_or_else(|| {
            ApiError::Unauthorized(
                "send Authorization: Bearer <api token or federated upstream token> (see `tfe-oidc api-token new`)".into(),
            )
        })?;
        let known = state.api_tokens.load().authenticate(presented).cloned();
        let caller = match known {
            Some(caller) => caller,
            None => {
                let now = state.manager.now();
                state.federation.authenticate(presented, now).await?
            }
        };
        if !caller.scopes.contains(&S::SCOPE) {
            let scope = S::SCOPE.as_str();
            tracing::warn!(target: "audit", event = "forbidden", caller = %caller.name, scope, "call outside the caller's scopes");
            return Err(ApiError::Forbidden(format!(
                "the token of caller {:?} lacks the {scope:?} scope; add it to the caller's line in the tokens file",
                caller.name
            )));
        }
        Ok(Authorized {
            caller,
            scope: PhantomData,
        })
    }
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let token = value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))?;
    Some(token.trim())
}

/// A request body that is exactly one JSON object of type `T`.
pub struct StrictJson<T>(pub T);

impl<T: DeserializeOwned> FromRequest<Arc<ApiState>> for StrictJson<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &Arc<ApiState>) -> Result<Self, ApiError> {
        json_body(request, state.max_body).await.map(StrictJson)
    }
}

/// A `POST /v1/credentials/revoke` body: a `StrictJson` within `Exchanger::revoke_limit`, so
/// that the `vault` object of any exchange answer can be sent back.
pub struct RevocationJson<T>(pub T);

impl<T: DeserializeOwned> FromRequest<Arc<ApiState>> for RevocationJson<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &Arc<ApiState>) -> Result<Self, ApiError> {
        let limit = state.exchanger.revoke_limit;
        json_body(request, limit).await.map(RevocationJson)
    }
}

/// The body of `request`: one JSON object of type `T`, at most `limit` bytes.
async fn json_body<T: DeserializeOwned>(request: Request, limit: usize) -> Result<T, ApiError> {
    let (parts, body) = request.into_parts();
    if !is_json(&parts.headers) {
        return Err(ApiError::UnsupportedMediaType);
    }
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(ApiError::PayloadTooLarge(limit));
    }
    let bytes = read_body(body, limit).await?;
    parse_object(&bytes)
}

fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"))
}

/// The whole body, bounded in size and in time.
async fn read_body(body: Body, limit: usize) -> Result<Bytes, ApiError> {
    let collected = tokio::time::timeout(REQUEST_TIMEOUT, Limited::new(body, limit).collect());
    match collected.await {
        Err(_) => Err(ApiError::RequestTimeout),
        Ok(Ok(body)) => Ok(body.to_bytes()),
        Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => {
            Err(ApiError::PayloadTooLarge(limit))
        }
        Ok(Err(e)) => Err(ApiError::BodyUnreadable(e.to_string())),
    }
}

/// Parses exactly one JSON object, naming the field at fault.
pub fn parse_object<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(ApiError::invalid(
            None,
            "the body is not a valid request: it must be one JSON object ({…})",
        ));
    }
    // The common case, a valid body, without the path tracking that only an error needs.
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    if let Ok(value) = T::deserialize(&mut deserializer)
        && deserializer.end().is_ok()
    {
        return Ok(value);
    }
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut deserializer).map_err(json_error)?;
    deserializer.end().map_err(|_| {
        ApiError::invalid(
            None,
            "the body is not a valid request: it has data after its JSON object; send exactly one object",
        )
    })?;
    Ok(value)
}

fn json_error(e: serde_path_to_error::Error<serde_json::Error>) -> ApiError {
    let path = e.path().to_string();
    let inner = e.into_inner();
    // A syntax error (or a truncated body) is no one field's fault, wherever it stopped.
    let malformed = matches!(
        inner.classify(),
        serde_json::error::Category::Syntax | serde_json::error::Category::Eof
    );
    let message = crate::vault::json_error_text(&inner);
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
}
