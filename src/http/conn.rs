//! One accepted connection, from TLS handshake to close: the time bounds every peer is held to.
//!
//! A connection with no request in flight is closed once it has been idle for
//! [`REQUEST_TIMEOUT`]: before its first request (the TLS handshake and an HTTP/2 preface
//! included), between keep-alive requests, and for HTTP/2 alike. While a request is in flight the
//! handler bounds it (an API body must arrive within the same time). On shutdown, a connection
//! finishes the request it is serving (or one whose bytes have already arrived) and then closes;
//! an HTTP/1 response written once shutdown has begun says `Connection: close`, so that the
//! client does not send its next request on a connection about to close (it would be reset);
//! an idle one closes after a short grace (longer for a connection that has not had a request
//! yet: it was opened to send one). A peer that ignores HTTP/2's GOAWAY is dropped rather
//! than waited for.
//!
//! This module owns those bounds and nothing else: which peers are accepted, and how many, is
//! `mod.rs`'s concern.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;

use super::HttpService;

/// How long a connection may go without a request in flight, and how long a request's headers or
/// body may take to arrive.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// On shutdown, how long an idle keep-alive connection may still deliver a request it already
/// sent.
const DRAIN_GRACE: Duration = Duration::from_millis(500);
/// The same for a connection that has not yet had a request served: it was opened to send one,
/// which on a loaded machine may take longer to be read.
const FRESH_DRAIN_GRACE: Duration = Duration::from_secs(2);
/// After asking a connection to close, how long it may take (an HTTP/2 GOAWAY round trip).
const CLOSE_GRACE: Duration = Duration::from_secs(1);
/// How often a closing connection checks whether its last request has been answered.
const TICK: Duration = Duration::from_millis(100);

/// What a connection is doing, shared between its service and its watchdog.
#[derive(Default)]
struct Activity {
    /// Shutdown has begun: HTTP/1 responses announce the close.
    draining: AtomicBool,
    in_flight: AtomicUsize,
    /// When the connection last finished a request, in milliseconds since it was accepted.
    last_done_ms: AtomicU64,
    served: AtomicU64,
}

impl Activity {
    fn idle_since(&self, accepted: Instant) -> Option<Instant> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        let ms = self.last_done_ms.load(Ordering::Acquire);
        Some(accepted + Duration::from_millis(ms))
    }
}

/// Serves one accepted TCP connection until it closes, is timed out, or shutdown drains it.
pub async fn serve(
    stream: TcpStream,
    tls: Option<TlsAcceptor>,
    service: impl HttpService,
    shutdown: watch::Receiver<bool>,
) {
    let accepted = Instant::now();
    match tls {
        None => serve_io(TokioIo::new(stream), service, accepted, shutdown).await,
        Some(acceptor) => {
            let deadline = accepted + REQUEST_TIMEOUT;
            match tokio::time::timeout_at(deadline, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => serve_io(TokioIo::new(tls), service, accepted, shutdown).await,
                Ok(Err(e)) => tracing::debug!(error = %e, "TLS handshake failed"),
                Err(_) => tracing::debug!("TLS handshake timed out"),
            }
        }
    }
}

async fn serve_io<I>(
    io: I,
    service: impl HttpService,
    accepted: Instant,
    mut shutdown: watch::Receiver<bool>,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let activity = Arc::new(Activity::default());
    let service = Counted {
        inner: service,
        activity: Arc::clone(&activity),
        accepted,
    };
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(REQUEST_TIMEOUT);
    let connection = builder.serve_connection(io, TowerToHyperService::new(service));
    tokio::pin!(connection);
    let mut phase = Phase::Open;
    let mut watching = true;
    loop {
        if matches!(phase, Phase::Open) && (!watching || *shutdown.borrow()) {
            activity.draining.store(true, Ordering::Release);
            phase = Phase::Draining {
                since: Instant::now(),
            };
        }
        let wake = phase.wake_at(&activity, accepted);
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                return;
            }
            _ = tokio::time::sleep_until(wake) => {}
            changed = shutdown.changed(), if watching => {
                // A closed channel means the service is going away: drain as for shutdown.
                watching = changed.is_ok() && !*shutdown.borrow();
                continue;
            }
        }
        let Some(next) = phase.next(&activity, accepted) else {
            return; // dropped: the socket closes
        };
        if matches!(next, Phase::Closing { .. }) && !matches!(phase, Phase::Closing { .. }) {
            connection.as_mut().graceful_shutdown();
        }
        phase = next;
    }
}

/// Where a connection is in its life, as its watchdog sees it.
#[derive(Clone, Copy)]
enum Phase {
    /// Serving; closed once idle for `REQUEST_TIMEOUT`.
    Open,
    /// Shutdown began: serve what has arrived, then close.
    Draining { since: Instant },
    /// Asked to close; dropped if it has not closed after `CLOSE_GRACE` with nothing in flight.
    Closing { since: Instant },
}

impl Phase {
    fn wake_at(self, activity: &Activity, accepted: Instant) -> Instant {
        let now = Instant::now();
        match self {
            // A request in flight cannot be idle for a whole timeout before the next look, so a
            // busy connection wakes its watchdog once per timeout, not per request.
            Phase::Open => activity
                .idle_since(accepted)
                .map_or(now + REQUEST_TIMEOUT, |idle| {
                    (idle + REQUEST_TIMEOUT).max(now)
                }),
            Phase::Draining { .. } | Phase::Closing { .. } => now + TICK,
        }
    }

    /// The phase after a wake-up; `None` when the connection is to be dropped.
    fn next(self, activity: &Activity, accepted: Instant) -> Option<Phase> {
        let now = Instant::now();
        let idle = activity.idle_since(accepted);
        match self {
            Phase::Open => match idle {
                Some(since) if now >= since + REQUEST_TIMEOUT => {
                    Some(Phase::Closing { since: now })
                }
                _ => Some(Phase::Open),
            },
            Phase::Draining { since } => {
                let grace = match activity.served.load(Ordering::Acquire) {
                    0 => FRESH_DRAIN_GRACE,
                    _ => DRAIN_GRACE,
                };
                match idle {
                    // Done with what was in flight, or nothing arrived within the grace.
                    Some(idle) if idle > since || now >= since + grace => {
                        Some(Phase::Closing { since: now })
                    }
                    _ => Some(Phase::Draining { since }),
                }
            }
            Phase::Closing { since } => match idle {
                Some(_) if now >= since + CLOSE_GRACE => None,
                _ => Some(Phase::Closing { since }),
            },
        }
    }
}

/// The connection's service, counting requests in flight for the watchdog.
#[derive(Clone)]
struct Counted<S> {
    inner: S,
    activity: Arc<Activity>,
    accepted: Instant,
}

impl<S, B, R> tower::Service<hyper::Request<B>> for Counted<S>
where
    S: tower::Service<hyper::Request<B>, Response = hyper::Response<R>>,
    S::Future: Unpin,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = CountedFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: hyper::Request<B>) -> Self::Future {
        self.activity.in_flight.fetch_add(1, Ordering::AcqRel);
        let http1 = request.version() < hyper::Version::HTTP_2;
        CountedFuture {
            inner: self.inner.call(request),
            http1,
            done: Some(Done {
                activity: Arc::clone(&self.activity),
                accepted: self.accepted,
            }),
        }
    }
}

/// Marks a request finished when dropped, whether it completed or was cancelled.
struct Done {
    activity: Arc<Activity>,
    accepted: Instant,
}

impl Drop for Done {
    fn drop(&mut self) {
        let ms = self.accepted.elapsed().as_millis() as u64;
        self.activity.last_done_ms.fetch_max(ms, Ordering::AcqRel);
        self.activity.served.fetch_add(1, Ordering::AcqRel);
        self.activity.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The response future of a [`Counted`] service.
pub struct CountedFuture<F> {
    inner: F,
    http1: bool,
    done: Option<Done>,
}

impl<F, R, E> Future for CountedFuture<F>
where
    F: Future<Output = Result<hyper::Response<R>, E>> + Unpin,
{
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let mut output = std::task::ready!(Pin::new(&mut self.inner).poll(cx));
        if let (Ok(response), Some(done)) = (&mut output, &self.done)
            && self.http1
            && done.activity.draining.load(Ordering::Acquire)
        {
            response.headers_mut().insert(
                hyper::header::CONNECTION,
                hyper::header::HeaderValue::from_static("close"),
            );
        }
        self.done = None;
        Poll::Ready(output)
    }
}
