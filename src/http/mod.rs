//! The two HTTP listeners: the state they share, the accept loop and graceful shutdown.
//!
//! - `internal.rs`: the discovery listener's routes (docs/reference.md §3).
//! - `api.rs`: the authenticated API's routes (docs/reference.md §4); `auth.rs` its bearer tokens,
//!   `federation.rs` its federated callers (upstream OIDC tokens), `policy.rs` the `sub` each
//!   caller may obtain;
//!   `credentials.rs` the credential exchange's routes; `extract.rs` the caller and body extractors.
//! - `error.rs`: the one API error → status mapping. `tls.rs`: rustls configuration.
//!
//! `serve` owns a listening socket: it refuses peers outside the allow list before any byte is
//! read, performs the TLS handshake (and client-certificate check), serves HTTP/1.1 and HTTP/2
//! with hyper, and on shutdown stops accepting and lets in-flight requests finish.

pub mod api;
pub mod auth;
pub mod conn;
pub mod credentials;
pub mod error;
pub mod extract;
pub mod federation;
pub mod internal;
pub mod policy;
pub mod tls;

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use axum::extract::{MatchedPath, Request};
use axum::response::Response;
use ipnet::IpNet;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

use crate::discovery::Rendered;
use crate::keys::manager::KeyManager;
use crate::telemetry::{Audit, Metrics};
use crate::token::TokenIssuer;
use auth::ApiTokens;

/// The discovery listener's state: the documents it serves, and nothing else (no key, no API
/// token, no audit).
#[derive(Clone)]
pub struct DiscoveryState {
    /// `/.well-known/openid-configuration`, rendered once at start.
    pub configuration: Rendered,
    /// `/.well-known/jwks`, rendered by the key manager once per committed key set.
    pub jwks: watch::Receiver<Arc<Rendered>>,
    /// `Cache-Control` of the JWKS: `public, max-age=<jwks_max_age>`.
    pub jwks_cache_control: axum::http::HeaderValue,
    pub metrics: Arc<Metrics>,
}

/// What the API handlers share.
pub struct ApiState {
    pub manager: Arc<KeyManager>,
    pub issuer: TokenIssuer,
    pub api_tokens: Reloadable<ApiTokens>,
    /// The `[[api.federation]]` rules: upstream tokens accepted as callers.
    pub federation: federation::Federation,
    pub audit: Audit,
    pub metrics: Arc<Metrics>,
    /// The credential exchange: Vault pools and the `[exchange]` settings.
    pub exchanger: crate::exchange::Exchanger,
    pub max_body: usize,
    /// What each push target holds; empty without `[[push]]` targets.
    pub pushes: Arc<crate::push::Pushes>,
}

/// How long a graceful shutdown waits for in-flight requests.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// On shutdown, how long to wait for one more connection already queued in the backlog.
const BACKLOG_POLL: Duration = Duration::from_millis(20);
/// On shutdown, at most this many queued connections are still accepted.
const BACKLOG_DRAIN_MAX: usize = 4096;

/// A value that SIGHUP may replace while connections keep using the one they started with.
pub type Reloadable<T> = Arc<ArcSwap<T>>;

/// A bound socket and how to accept on it.
pub struct Listener {
    pub name: &'static str,
    pub tcp: TcpListener,
    pub tls: Option<Reloadable<rustls::ServerConfig>>,
    /// Empty: every peer that can reach the socket.
    pub allow: Vec<IpNet>,
    /// Connections served at once; more are accepted and closed at once, and counted.
    pub max_connections: usize,
}

/// A listener's HTTP service: an axum `Router`, or the discovery listener's own service.
pub trait HttpService:
    tower::Service<
        hyper::Request<hyper::body::Incoming>,
        Response = Response,
        Error = std::convert::Infallible,
        Future: Send + Unpin + 'static,
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
            Future: Send + Unpin + 'static,
        > + Clone
        + Send
        + Sync
        + 'static
{
}

/// Serves `service` on `listener` until `shutdown` turns true, then drains: connections already
/// waiting in the backlog are still accepted and answered, in-flight requests finish (within
/// 30 s), idle connections close.
pub async fn serve(
    listener: Listener,
    service: impl HttpService,
    metrics: Arc<Metrics>,
    shutdown: watch::Receiver<bool>,
) {
    let Listener {
        name,
        tcp,
        tls,
        allow,
        max_connections,
    } = listener;
    let admission = Admission {
        name,
        tls,
        allow,
        max_connections,
        permits: Arc::new(Semaphore::new(max_connections)),
        metrics,
        shutdown: shutdown.clone(),
        refusals_logged: LogBudget::default(),
    };
    let mut connections = JoinSet::new();
    let mut stop = shutdown;
    loop {
        let accepted = tokio::select! {
            accepted = tcp.accept() => accepted,
            _ = stop.changed() => break,
        };
        while connections.try_join_next().is_some() {}
        match accepted {
            Ok(pair) => admission.admit(pair, &service, &mut connections),
            Err(e) => {
                tracing::warn!(listener = name, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    // Peers whose connection the kernel completed before shutdown may already have sent a
    // request: accept and answer them rather than resetting them by closing the socket. (A
    // connection the kernel completes after the last accept is reset by the close: it arrived
    // after shutdown began.)
    for _ in 0..BACKLOG_DRAIN_MAX {
        match tokio::time::timeout(BACKLOG_POLL, tcp.accept()).await {
            Ok(Ok(pair)) => admission.admit(pair, &service, &mut connections),
            _ => break,
        }
    }
    drop(tcp);
    let drained = tokio::time::timeout(DRAIN_TIMEOUT, async {
        while connections.join_next().await.is_some() {}
    });
    if drained.await.is_err() {
        tracing::warn!(
            listener = name,
            "in-flight requests did not finish within 30s"
        );
    }
}

/// Decides which accepted connections are served, and serves them.
struct Admission {
    name: &'static str,
    tls: Option<Reloadable<rustls::ServerConfig>>,
    allow: Vec<IpNet>,
    max_connections: usize,
    permits: Arc<Semaphore>,
    metrics: Arc<Metrics>,
    shutdown: watch::Receiver<bool>,
    refusals_logged: LogBudget,
}

/// At most one log line a second for refused connections, so that a flood cannot fill the
/// disk with logs; the metrics count every refusal.
#[derive(Default)]
struct LogBudget {
    second: std::cell::Cell<u64>,
    suppressed: std::cell::Cell<u64>,
}

impl LogBudget {
    /// `Some(lines suppressed since the last one)` when a line may be logged now.
    fn allow(&self) -> Option<u64> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        if now == self.second.get() {
            self.suppressed.set(self.suppressed.get() + 1);
            return None;
        }
        self.second.set(now);
        Some(self.suppressed.replace(0))
    }
}

impl Admission {
    fn admit(
        &self,
        (stream, peer): (TcpStream, SocketAddr),
        service: &impl HttpService,
        connections: &mut JoinSet<()>,
    ) {
        let name = self.name;
        if !allowed(&self.allow, peer.ip()) {
            if name == "discovery" {
                self.metrics.discovery_refused();
            }
            if let Some(suppressed) = self.refusals_logged.allow() {
                tracing::warn!(listener = name, peer = %peer, suppressed, "connection from a peer outside the allow list closed");
            }
            return;
        }
        let Ok(permit) = Arc::clone(&self.permits).try_acquire_owned() else {
            self.metrics.connection_refused(name);
            if let Some(suppressed) = self.refusals_logged.allow() {
                tracing::warn!(listener = name, peer = %peer, limit = self.max_connections, suppressed, "connection limit reached: connection closed");
            }
            return;
        };
        let _ = stream.set_nodelay(true);
        let tls = self
            .tls
            .as_ref()
            .map(|config| TlsAcceptor::from(config.load_full()));
        let open = self.metrics.connection_opened(name);
        let connection = conn::serve(stream, tls, service.clone(), self.shutdown.clone());
        connections.spawn(async move {
            connection.await;
            drop((permit, open));
        });
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
    "/v1/credentials",
    "/v1/credentials/revoke",
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
