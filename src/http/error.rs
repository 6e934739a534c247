//! The one mapping from API errors to HTTP status, stable error code and JSON body (docs/reference.md §4).
//!
//! Every `/v1` handler returns `ApiError`; `IntoResponse` below is the only place a status is
//! chosen. A 4xx says what is wrong and how to fix it, naming the field; a 5xx says nothing of
//! the cause (that goes to the log).

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::exchange::ExchangeError;
use crate::keys::manager::ManagerError;
use crate::token::claims::FieldError;
use crate::token::kinds::InputError;
use crate::token::stack::StackError;

/// An error answered by the API listener.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The request is malformed or a value is not acceptable (400).
    #[error("{message}")]
    InvalidRequest {
        message: String,
        field: Option<String>,
    },
    /// No valid bearer token (401).
    #[error("{0}")]
    Unauthorized(String),
    /// The caller's token lacks the scope (403).
    #[error("{0}")]
    Forbidden(String),
    /// No such resource (404).
    #[error("{0}")]
    NotFound(String),
    /// The request conflicts with the current state (409).
    #[error("{0}")]
    Conflict(String),
    /// The body exceeds the route's bound: `api.max_body`, or for a revocation the larger bound
    /// derived from it (413).
    #[error("the request body exceeds {0} bytes, this route's bound (derived from api.max_body)")]
    PayloadTooLarge(usize),
    /// The body is not JSON (415).
    #[error("send the body as JSON with Content-Type: application/json")]
    UnsupportedMediaType,
    /// A Vault call failed (502): the step, the configuration and Vault's own error text.
    #[error("{0}")]
    Upstream(String),
    /// The body did not arrive within the request timeout (408); the connection is closed.
    #[error("the request body did not arrive within 10s: send the whole body at once")]
    RequestTimeout,
    /// The body could not be read: a malformed chunked encoding, or the client went away (400).
    #[error(
        "the request body could not be read ({0}): send a complete body with a valid Content-Length or chunked encoding"
    )]
    BodyUnreadable(String),
    /// The service cannot serve this now, e.g. no signing key (503).
    #[error("{0}")]
    Unavailable(String),
    /// A bug or an environment failure; the detail is logged, never answered (500).
    #[error("internal error")]
    Internal(String),
}

impl ApiError {
    pub fn invalid(field: Option<&str>, message: impl Into<String>) -> ApiError {
        ApiError::InvalidRequest {
            message: message.into(),
            field: field.map(str::to_owned),
        }
    }

    /// Status and stable code.
    pub fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::InvalidRequest { .. } | ApiError::BodyUnreadable(_) => {
                (StatusCode::BAD_REQUEST, "invalid_request")
            }
            ApiError::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized"),
            ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            ApiError::PayloadTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            ApiError::UnsupportedMediaType => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
            }
            ApiError::Upstream(_) => (StatusCode::BAD_GATEWAY, "upstream"),
            ApiError::RequestTimeout => (StatusCode::REQUEST_TIMEOUT, "request_timeout"),
            ApiError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }
}

impl From<FieldError> for ApiError {
    fn from(e: FieldError) -> ApiError {
        ApiError::InvalidRequest {
            message: e.message,
            field: Some(e.field),
        }
    }
}

impl From<InputError> for ApiError {
    fn from(e: InputError) -> ApiError {
        match e {
            InputError::Field(e) | InputError::Stack(StackError::Field(e)) => e.into(),
            InputError::Stack(e @ StackError::SubjectTooLong(_)) => {
                ApiError::invalid(None, e.to_string())
            }
        }
    }
}

impl From<ManagerError> for ApiError {
    fn from(e: ManagerError) -> ApiError {
        match e {
            ManagerError::Refused(r) => ApiError::Conflict(r.to_string()),
            ManagerError::UnknownKid(kid) => ApiError::NotFound(format!(
                "no key with kid {kid} is in the key set; GET /v1/keys lists them"
            )),
            ManagerError::Store(e) => ApiError::Internal(format!("key store: {e}")),
        }
    }
}

impl From<ExchangeError> for ApiError {
    fn from(e: ExchangeError) -> ApiError {
        match e {
            ExchangeError::Variable(v) => ApiError::InvalidRequest {
                field: Some(format!("variables.{}", v.variable)),
                message: v.to_string(),
            },
            ExchangeError::Body { field, message } => ApiError::InvalidRequest {
                message: format!("{field}: {message}"),
                field: Some(field),
            },
            e @ ExchangeError::NotAllowed { .. } => ApiError::Forbidden(e.to_string()),
            e @ ExchangeError::Vault { .. } => ApiError::Upstream(e.to_string()),
            ExchangeError::Unavailable(message) => ApiError::Unavailable(message),
            e @ ExchangeError::Cancelled(_) => ApiError::Unavailable(e.to_string()),
        }
    }
}

/// The stable code of an error response, for the layers that count them.
#[derive(Debug, Clone, Copy)]
pub struct ErrorCode(pub &'static str);

#[derive(Serialize)]
struct Body<'a> {
    error: &'static str,
    message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<&'a str>,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        let field = match &self {
            ApiError::InvalidRequest { field, .. } => field.as_deref(),
            _ => None,
        };
        if let ApiError::Internal(detail) = &self {
            tracing::error!(error = %detail, "internal error");
        }
        let body = serde_json::to_vec(&Body {
            error: code,
            message: self.to_string(),
            field,
        })
        .expect("error bodies serialize");
        let mut response = (status, body).into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        let headers = response.headers_mut();
        match status {
            StatusCode::UNAUTHORIZED => {
                headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            StatusCode::REQUEST_TIMEOUT => {
                headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            _ => {}
        }
        response.extensions_mut().insert(ErrorCode(code));
        response
    }
}
