//! The two HTTP listeners: the state they share, the accept loop and graceful shutdown.
//!
//! - `internal.rs`: the discovery listener's routes (SPEC §5).
//! - `api.rs`: the authenticated API's routes (SPEC §7); `auth.rs` its bearer tokens;
//!   `credentials.rs` the credential exchange's routes.
//! - `error.rs`: the one API error → status mapping. `tls.rs`: rustls configuration.
//!
//! `serve` owns a listening socket: it refuses peers outside the allow list before any byte is
//! read, performs the TLS handshake (and client-certificate check), serves HTTP/1.1 and HTTP/2
//! with hyper, and on shutdown stops accepting and lets in-flight requests finish.

pub mod api;
pub mod auth;
pub mod credentials;
pub mod error;
pub mod internal;
pub mod tls;

use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use axum::extract::{MatchedPath, Request};
use axum::response::Response;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use hyper_util::service::TowerToHyperService;
use ipnet::IpNet;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use crate::discovery::Documents;
use crate::keys::KeySnapshot;
use crate::keys::manager::KeyManager;
use crate::telemetry::{Audit, Metrics};
use crate::token::TokenIssuer;
use auth::ApiTokens;

/// What the listeners serve at one instant: the key snapshot and the documents rendered from it.
#[derive(Debug)]
pub struct Published {
    pub keys: Arc<KeySnapshot>,
    pub docs: Documents,
}

/// Everything the handlers share.
pub struct AppState {
    pub published: Arc<ArcSwap<Published>>,
    pub manager: Arc<KeyManager>,
    pub issuer: TokenIssuer,
    pub api_tokens: ApiTokens,
    pub audit: Audit,
    pub metrics: Arc<Metrics>,
    /// The credential exchange: Vault pools and the `[exchange]` settings.
    pub exchanger: crate::exchange::Exchanger,
    /// `Cache-Control` of the JWKS: `public, max-age=<jwks_max_age>`.
    pub jwks_cache_control: axum::http::HeaderValue,
    pub max_body: usize,
}

/// How long a graceful shutdown waits for in-flight requests.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a client may take to complete the TLS handshake or send its request headers.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A bound socket and how to accept on it.
pub struct Listener {
    pub name: &'static str,
    pub tcp: TcpListener,
    pub tls: Option<TlsAcceptor>,
    /// Empty: every peer that can reach the socket.
    pub allow: Vec<IpNet>,
}

/// A listener's HTTP service: an axum `Router`, or the discovery listener's own service.
pub trait HttpService:
    tower::Service<
        hyper::Request<hyper::body::Incoming>,
        Response = Response,
        Error = std::convert::Infallible,
        Future: Send + 'static,
    > + Clone
    + Send
    + Sync
    + 'static
{
}

impl<S> HttpService for S where
    S: tower::Service<
            hyper::Request<hyper::body::Incoming>,
            Response = Response,
            Error = std::convert::Infallible,
            Future: Send + 'static,
        > + Clone
        + Send
        + Sync
        + 'static
{
}

/// Serves `service` on `listener` until `shutdown` turns true, then drains.
pub async fn serve(
    listener: Listener,
    service: impl HttpService,
    metrics: Arc<Metrics>,
    mut shutdown: watch::Receiver<bool>,
) {
    let graceful = GracefulShutdown::new();
    loop {
        let accepted = tokio::select! {
            accepted = listener.tcp.accept() => accepted,
            _ = shutdown.changed() => break,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                tracing::warn!(listener = listener.name, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if !allowed(&listener.allow, peer.ip()) {
            if listener.name == "discovery" {
                metrics.discovery_refused();
            }
            tracing::warn!(listener = listener.name, peer = %peer, "connection from a peer outside the allow list closed");
            drop(stream);
            continue;
        }
        let _ = stream.set_nodelay(true);
        let connection = serve_connection(
            stream,
            listener.tls.clone(),
            service.clone(),
            graceful.watcher(),
        );
        tokio::spawn(connection);
    }
    drop(listener.tcp);
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(DRAIN_TIMEOUT) => tracing::warn!("in-flight requests did not finish within 30s"),
    }
}

async fn serve_connection(
    stream: tokio::net::TcpStream,
    tls: Option<TlsAcceptor>,
    service: impl HttpService,
    watcher: Watcher,
) {
    match tls {
        None => serve_io(TokioIo::new(stream), service, watcher).await,
        Some(acceptor) => {
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(tls_stream)) => serve_io(TokioIo::new(tls_stream), service, watcher).await,
                Ok(Err(e)) => tracing::debug!(error = %e, "TLS handshake failed"),
                Err(_) => tracing::debug!("TLS handshake timed out"),
            }
        }
    }
}

async fn serve_io<I>(io: I, service: impl HttpService, watcher: Watcher)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HANDSHAKE_TIMEOUT);
    let connection = builder.serve_connection(io, TowerToHyperService::new(service));
    if let Err(e) = watcher.watch(connection).await {
        tracing::debug!(error = %e, "connection ended with an error");
    }
}

fn allowed(allow: &[IpNet], ip: IpAddr) -> bool {
    let ip = match ip {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    };
    allow.is_empty() || allow.iter().any(|net| net.contains(&ip))
}

/// Every route template, so that metrics carry a bounded set of `route` labels.
const ROUTES: &[&str] = &[
    "/.well-known/openid-configuration",
    "/.well-known/jwks",
    "/healthz",
    "/readyz",
    "/metrics",
    "/v1/tokens",
    "/v1/keys",
    "/v1/keys/rotate",
    "/v1/keys/{kid}/revoke",
];

/// The layer that counts every request by listener, route and status, and times it.
///
/// A hand-written `tower` layer rather than `axum::middleware::from_fn`: that one clones the
/// inner service and boxes a future for every request, a measurable share of the CPU time of a
/// JWKS request (see bench/README.md); this one only wraps the route's own future.
#[derive(Clone)]
pub struct Tracked {
    pub listener: &'static str,
    pub metrics: Arc<Metrics>,
}

impl<S> tower::Layer<S> for Tracked {
    type Service = TrackedService<S>;

    fn layer(&self, inner: S) -> TrackedService<S> {
        TrackedService {
            inner,
            tracked: self.clone(),
        }
    }
}

/// A route wrapped by [`Tracked`].
#[derive(Clone)]
pub struct TrackedService<S> {
    inner: S,
    tracked: Tracked,
}

impl<S> tower::Service<Request> for TrackedService<S>
where
    S: tower::Service<Request, Response = Response>,
    S::Future: Unpin,
{
    type Response = Response;
    type Error = S::Error;
    type Future = TrackedFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let start = Instant::now();
        let route = request
            .extensions()
            .get::<MatchedPath>()
            .and_then(|m| ROUTES.iter().find(|r| **r == m.as_str()).copied())
            .unwrap_or("unmatched");
        TrackedFuture {
            inner: self.inner.call(request),
            tracked: self.tracked.clone(),
            route,
            start,
        }
    }
}

/// The response future of a [`TrackedService`]: records the request once the response is ready.
pub struct TrackedFuture<F> {
    inner: F,
    tracked: Tracked,
    route: &'static str,
    start: Instant,
}

impl<F, E> Future for TrackedFuture<F>
where
    F: Future<Output = Result<Response, E>> + Unpin,
{
    type Output = Result<Response, E>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let result = std::task::ready!(Pin::new(&mut self.inner).poll(cx));
        if let Ok(response) = &result {
            self.tracked.metrics.http_request(
                self.tracked.listener,
                self.route,
                response.status().as_u16(),
                self.start.elapsed(),
            );
        }
        Poll::Ready(result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allow_list_matches_ipv4_mapped_peers() {
        let allow: Vec<IpNet> = vec!["10.0.7.0/24".parse().unwrap()];
        assert!(allowed(&allow, "10.0.7.9".parse().unwrap()));
        assert!(allowed(&allow, "::ffff:10.0.7.9".parse().unwrap()));
        assert!(!allowed(&allow, "10.0.8.1".parse().unwrap()));
        assert!(allowed(&[], "192.0.2.1".parse().unwrap()));
    }
}
