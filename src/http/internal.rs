//! The discovery listener's routes (docs/reference.md §3): the two documents, with strong ETags,
//! `If-None-Match` → 304, cache headers and HEAD; `/healthz`; 404 for anything else and 405 for
//! other methods. The bytes come pre-rendered: the configuration once at start, the JWKS by the
//! key manager once per key set.
//!
//! This listener is a plain `tower::Service` rather than an axum `Router`: it has three fixed
//! routes, and routing, extraction and middleware were about a third of the CPU time of a JWKS
//! request (bench/README.md). Its responses are the ones the router gave, header for header (over
//! HTTP/2 hyper now places `content-length` after `date`).

use std::convert::Infallible;
use std::future::{Ready, ready};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use axum::body::{Body, HttpBody};
use axum::http::{HeaderMap, HeaderValue, Method, Request, StatusCode, header};
use axum::response::Response;

use super::DiscoveryState;
use crate::discovery::{CONFIGURATION_PATH, JWKS_PATH, Rendered};

/// `Cache-Control` of the discovery document.
const CONFIGURATION_CACHE: HeaderValue = HeaderValue::from_static("public, max-age=3600");
const TEXT: HeaderValue = HeaderValue::from_static("text/plain; charset=utf-8");
const JSON: HeaderValue = HeaderValue::from_static("application/json");
const GET_HEAD: HeaderValue = HeaderValue::from_static("GET,HEAD");

/// The discovery listener's service.
#[derive(Clone)]
pub struct Discovery {
    state: DiscoveryState,
}

pub fn service(state: DiscoveryState) -> Discovery {
    Discovery { state }
}

impl<B> tower::Service<Request<B>> for Discovery {
    type Response = Response;
    type Error = Infallible;
    type Future = Ready<Result<Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let start = Instant::now();
        let (route, response) =
            self.respond(request.method(), request.uri().path(), request.headers());
        self.state.metrics.http_request(
            "discovery",
            route,
            response.status().as_u16(),
            start.elapsed(),
        );
        ready(Ok(response))
    }
}

impl Discovery {
    /// The response, and the route label it is counted under.
    fn respond(
        &self,
        method: &Method,
        path: &str,
        headers: &HeaderMap,
    ) -> (&'static str, Response) {
        let route = match path {
            CONFIGURATION_PATH => CONFIGURATION_PATH,
            JWKS_PATH => JWKS_PATH,
            "/healthz" => "/healthz",
            _ => return ("unmatched", text(StatusCode::NOT_FOUND, "not found\n")),
        };
        if method != Method::GET && method != Method::HEAD {
            let mut response = Response::new(Body::empty());
            *response.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
            response.headers_mut().insert(header::ALLOW, GET_HEAD);
            return (route, with_length(response, 0));
        }
        let response = match route {
            CONFIGURATION_PATH => document(&self.state.configuration, CONFIGURATION_CACHE, headers),
            JWKS_PATH => {
                let jwks = Arc::clone(&self.state.jwks.borrow());
                let cache = self.state.jwks_cache_control.clone();
                document(&jwks, cache, headers)
            }
            _ => text(StatusCode::OK, "ok"),
        };
        if method == Method::HEAD {
            // The GET's headers, Content-Length included, without the body.
            let (parts, body) = response.into_parts();
            let length = body.size_hint().exact().unwrap_or(0) as usize;
            let response = Response::from_parts(parts, Body::empty());
            return (route, with_length(response, length));
        }
        (route, response)
    }
}

fn text(status: StatusCode, body: &'static str) -> Response {
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, TEXT);
    response
}

/// Sets `Content-Length`, last as the router did. Responses with a body leave it to hyper, which
/// writes it last from the body's exact length; HEAD and empty responses need it set.
fn with_length(mut response: Response, length: usize) -> Response {
    response
        .headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    response
}

/// A pre-rendered document, or 304 when the client already holds it.
fn document(doc: &Rendered, cache_control: HeaderValue, headers: &HeaderMap) -> Response {
    let fresh = headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| doc.matches(v));
    let mut response = if fresh {
        let mut response = Response::new(Body::empty());
        *response.status_mut() = StatusCode::NOT_MODIFIED;
        response
    } else {
        let mut response = Response::new(Body::from(doc.body.clone()));
        response.headers_mut().insert(header::CONTENT_TYPE, JSON);
        response
    };
    let h = response.headers_mut();
    h.insert(
        header::ETAG,
        HeaderValue::from_maybe_shared(doc.etag_bytes.clone()).expect("an ETag is ASCII"),
    );
    h.insert(header::CACHE_CONTROL, cache_control);
    if fresh {
        return with_length(response, 0);
    }
    response
}
