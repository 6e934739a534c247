//! What tower-http's layers would cost tfe-oidc per request (README, "Dependencies").
//!
//! An axum route serving a 914-byte body (the size of a two-key JWKS), called in-process through
//! `oneshot` (no socket, no hyper), alone and under `TraceLayer`, `TimeoutLayer` and
//! `RequestBodyLimitLayer`, with an `info` tracing subscriber installed as tfe-oidc runs by
//! default. Reports the median on-CPU nanoseconds per request of 5 interleaved repetitions.
//!
//! `cargo run --release --manifest-path bench/tower-http/Cargo.toml [-- REPS]`
//!
//! A separate package so that tfe-oidc itself does not depend on tower-http.
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::Request;
use axum::routing::get;
use bytes::Bytes;
use tower::ServiceExt;

fn thread_cpu_ns() -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

async fn per_request_ns(router: Router, n: u32) -> f64 {
    let call = |router: Router| async move {
        let req = Request::get("/.well-known/jwks")
            .body(Body::empty())
            .unwrap();
        let res = router.oneshot(req).await.unwrap();
        let body = axum::body::to_bytes(res.into_body(), 1 << 20)
            .await
            .unwrap();
        std::hint::black_box(body);
    };
    for _ in 0..n / 10 {
        call(router.clone()).await;
    }
    let c0 = thread_cpu_ns();
    for _ in 0..n {
        call(router.clone()).await;
    }
    (thread_cpu_ns() - c0) as f64 / n as f64
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("info"))
        .init();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let body = Bytes::from(vec![b'x'; 914]);
    let base = move || {
        let body = body.clone();
        Router::new().route(
            "/.well-known/jwks",
            get(move || {
                let b = body.clone();
                async move { b }
            }),
        )
    };
    let variants: Vec<(&str, Box<dyn Fn() -> Router>)> = vec![
        ("axum route alone", Box::new(base.clone())),
        (
            "+ TraceLayer::new_for_http()",
            Box::new({
                let b = base.clone();
                move || b().layer(tower_http::trace::TraceLayer::new_for_http())
            }),
        ),
        (
            "+ TimeoutLayer (10 s)",
            Box::new({
                let b = base.clone();
                move || {
                    b().layer(tower_http::timeout::TimeoutLayer::with_status_code(
                        axum::http::StatusCode::REQUEST_TIMEOUT,
                        Duration::from_secs(10),
                    ))
                }
            }),
        ),
        (
            "+ RequestBodyLimitLayer (64 KiB)",
            Box::new({
                let b = base.clone();
                move || b().layer(tower_http::limit::RequestBodyLimitLayer::new(64 << 10))
            }),
        ),
        (
            "+ all three",
            Box::new({
                let b = base.clone();
                move || {
                    b().layer(tower_http::limit::RequestBodyLimitLayer::new(64 << 10))
                        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
                            axum::http::StatusCode::REQUEST_TIMEOUT,
                            Duration::from_secs(10),
                        ))
                        .layer(tower_http::trace::TraceLayer::new_for_http())
                }
            }),
        ),
    ];
    let reps: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let n = 200_000;
    let mut results: Vec<Vec<f64>> = vec![Vec::new(); variants.len()];
    for _ in 0..reps {
        for (i, (_, make)) in variants.iter().enumerate() {
            results[i].push(rt.block_on(per_request_ns(make(), n)));
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        v[v.len() / 2]
    };
    let base_ns = median(&mut results[0].clone());
    for (i, (name, _)) in variants.iter().enumerate() {
        let m = median(&mut results[i]);
        println!(
            "{name:<36} {m:>8.0} ns CPU/request  (+{:.0} ns)  runs: {:?}",
            m - base_ns,
            results[i].iter().map(|x| x.round()).collect::<Vec<_>>()
        );
    }
}
