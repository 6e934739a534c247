//! The per-request cost of recording an HTTP request in the metrics: tfe-oidc's hand-written
//! `Metrics::http_request` (one `Mutex<BTreeMap>` for the counter and the histogram) against the
//! Prometheus project's `prometheus-client` (`Family<Labels, Counter>` and
//! `Family<Labels, Histogram>`: an `RwLock<HashMap>` per family and a `Mutex` per histogram).
//! Every JWKS request pays this once, so it decides whether prometheus-client can replace the
//! hand-written exposition without costing JWKS throughput (README, "Metrics: hand-written, not prometheus-client").
//!
//! `cargo bench --bench metrics`: each figure is the median of 5 runs of 2,000,000 recordings
//! per thread, on 1 thread and on 2 threads recording at once (contention, as two cores serving
//! JWKS requests). Run by `cargo test --all-targets` (no `--bench` argument), it records a few
//! requests and measures nothing.

use std::sync::Barrier;
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use tfe_oidc::telemetry::Metrics;

/// The buckets of `tfe_oidc_http_request_duration_seconds`.
const BUCKETS: [f64; 12] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 2.5,
];

/// What the discovery listener records, most of it JWKS answers.
const MIX: [(&str, &str, u16); 4] = [
    ("discovery", "/.well-known/jwks", 200),
    ("discovery", "/.well-known/jwks", 304),
    ("discovery", "/.well-known/jwks", 200),
    ("discovery", "/.well-known/openid-configuration", 200),
];

/// Label sets recorded before measuring, so that lookups walk a map of a running server's size.
const OTHERS: [(&str, &str, u16); 10] = [
    ("discovery", "/healthz", 200),
    ("discovery", "unmatched", 404),
    ("discovery", "/.well-known/jwks", 405),
    ("api", "/v1/tokens", 200),
    ("api", "/v1/tokens", 400),
    ("api", "/v1/tokens", 401),
    ("api", "/v1/keys", 200),
    ("api", "/metrics", 200),
    ("api", "/healthz", 200),
    ("api", "/readyz", 200),
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    listener: &'static str,
    route: &'static str,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    listener: &'static str,
    route: &'static str,
}

/// The same two metrics through prometheus-client.
struct Client {
    requests: Family<RequestLabels, Counter>,
    durations: Family<RouteLabels, Histogram, fn() -> Histogram>,
}

impl Client {
    fn new() -> Client {
        let client = Client {
            requests: Family::default(),
            durations: Family::new_with_constructor(|| Histogram::new(BUCKETS)),
        };
        // Registered as the service would, so that both variants do the same work.
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register(
            "tfe_oidc_http_requests",
            "HTTP requests",
            client.requests.clone(),
        );
        registry.register(
            "tfe_oidc_http_request_duration_seconds",
            "HTTP request durations",
            client.durations.clone(),
        );
        client
    }

    fn http_request(
        &self,
        listener: &'static str,
        route: &'static str,
        status: u16,
        elapsed: Duration,
    ) {
        let labels = RequestLabels {
            listener,
            route,
            status,
        };
        self.requests.get_or_create(&labels).inc();
        let route = RouteLabels { listener, route };
        self.durations
            .get_or_create(&route)
            .observe(elapsed.as_secs_f64());
    }
}

/// One way of recording a request.
trait Recorder: Sync {
    fn record(&self, listener: &'static str, route: &'static str, status: u16, elapsed: Duration);
}

impl Recorder for Metrics {
    fn record(&self, listener: &'static str, route: &'static str, status: u16, elapsed: Duration) {
        self.http_request(listener, route, status, elapsed);
    }
}

impl Recorder for Client {
    fn record(&self, listener: &'static str, route: &'static str, status: u16, elapsed: Duration) {
        self.http_request(listener, route, status, elapsed);
    }
}

/// Nanoseconds per recording, seen by each of `threads` threads recording `n` times at once
/// (wall-clock time of the slowest thread / n).
fn run(recorder: &impl Recorder, threads: usize, n: usize) -> f64 {
    for (l, r, s) in OTHERS.iter().chain(&MIX) {
        recorder.record(l, r, *s, Duration::from_micros(40));
    }
    let barrier = Barrier::new(threads);
    let elapsed = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                let barrier = &barrier;
                scope.spawn(move || {
                    barrier.wait();
                    let start = Instant::now();
                    for i in 0..n {
                        let (l, r, s) = MIX[(i + t) % MIX.len()];
                        let elapsed = Duration::from_nanos(20_000 + (i as u64 & 1023) * 50);
                        recorder.record(l, r, s, std::hint::black_box(elapsed));
                    }
                    start.elapsed()
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().unwrap())
            .max()
            .unwrap()
    });
    elapsed.as_nanos() as f64 / n as f64
}

fn median(mut runs: Vec<f64>) -> f64 {
    runs.sort_by(f64::total_cmp);
    runs[runs.len() / 2]
}

fn main() {
    let measure = std::env::args().any(|a| a == "--bench");
    if !measure {
        run(&Metrics::default(), 1, 100);
        run(&Client::new(), 1, 100);
        println!("metrics bench: recorded a few requests; `cargo bench --bench metrics` measures");
        return;
    }
    const RUNS: usize = 5;
    const N: usize = 2_000_000;
    println!("ns per recorded request (median of {RUNS} runs of {N} per thread; all runs listed)");
    for threads in [1, 2] {
        // Alternate the variants run by run, so that a noisy neighbour hits both alike.
        let (mut ours, mut theirs) = (Vec::new(), Vec::new());
        for _ in 0..RUNS {
            ours.push(run(&Metrics::default(), threads, N));
            theirs.push(run(&Client::new(), threads, N));
        }
        let show = |runs: &[f64]| {
            runs.iter()
                .map(|r| format!("{r:.1}"))
                .collect::<Vec<_>>()
                .join(" ")
        };
        println!(
            "  {threads} thread(s): hand-written {:>6.1} ns ({}), prometheus-client {:>6.1} ns ({})",
            median(ours.clone()),
            show(&ours),
            median(theirs.clone()),
            show(&theirs)
        );
    }
}
