//! The discovery listener's routes (SPEC §5): the two documents, with strong ETags,
//! `If-None-Match` → 304, cache headers and HEAD; `/healthz`; 404 for anything else and 405 for
//! other methods. The bytes come pre-rendered from the current `Published` snapshot.

use std::sync::Arc;

use axum::Router;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use super::{AppState, Tracked, track};
use crate::discovery::{CONFIGURATION_PATH, JWKS_PATH, Rendered};

/// `Cache-Control` of the discovery document.
const CONFIGURATION_CACHE: &str = "public, max-age=3600";

pub fn router(state: Arc<AppState>) -> Router {
    let tracked = Tracked {
        listener: "discovery",
        metrics: Arc::clone(&state.metrics),
    };
    Router::new()
        .route(CONFIGURATION_PATH, get(configuration))
        .route(JWKS_PATH, get(jwks))
        .route("/healthz", get(healthz))
        .fallback(not_found)
        .with_state(state)
        .layer(axum::middleware::from_fn_with_state(tracked, track))
}

async fn configuration(
    axum::extract::State(state): axum::extract::State<Arc<AppState>>,
    headers: HeaderMap,
) -> Response {
    let published = state.published.load();
    document(&published.docs.configuration, CONFIGURATION_CACHE, &headers)
}

async fn jwks(
    axum::extract::State(state): axum::extract::State<Arc<AppState>>,
    headers: HeaderMap,
) -> Response {
    let published = state.published.load();
    document(&published.docs.jwks, &state.jwks_cache_control, &headers)
}

async fn healthz() -> &'static str {
    "ok"
}

async fn not_found() -> (StatusCode, &'static str) {
    (StatusCode::NOT_FOUND, "not found\n")
}

/// A pre-rendered document, or 304 when the client already holds it.
fn document(doc: &Rendered, cache_control: &str, headers: &HeaderMap) -> Response {
    let fresh = headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| doc.matches(v));
    let mut response = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        (StatusCode::OK, doc.body.clone()).into_response()
    };
    let h = response.headers_mut();
    if !fresh {
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
    }
    h.insert(
        header::ETAG,
        HeaderValue::from_str(&doc.etag).expect("an ETag is ASCII"),
    );
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_str(cache_control).expect("Cache-Control is ASCII"),
    );
    response
}
