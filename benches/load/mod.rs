//! The closed-loop load of the Vault benches (`exchange.rs`, `transit.rs`): concurrent clients
//! repeating one operation for a while, the latencies they saw, and their p50, p99 and rate.

use std::future::Future;
use std::time::{Duration, Instant};

use serde_json::Value;

/// The command line of a Vault bench: `[--bench] [--seconds S] [--reps N] [--json]
/// [--json-out FILE]`. Without `--bench` (as `cargo test --all-targets` runs it) nothing is
/// measured.
pub struct Args {
    pub seconds: f64,
    pub reps: usize,
    pub json: bool,
    /// Also write the JSON report to this file.
    pub json_out: Option<String>,
    pub measure: bool,
}

pub fn args() -> Args {
    let mut a = Args {
        seconds: 3.0,
        reps: 3,
        json: false,
        json_out: None,
        measure: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--seconds" => a.seconds = it.next().and_then(|s| s.parse().ok()).unwrap_or(a.seconds),
            "--reps" => a.reps = it.next().and_then(|s| s.parse().ok()).unwrap_or(a.reps),
            "--json" => a.json = true,
            "--json-out" => a.json_out = it.next(),
            "--bench" => a.measure = true,
            _ => {}
        }
    }
    a.measure |= a.json || a.json_out.is_some();
    a
}

/// `clients` concurrent loops of `op` for `seconds`: every latency, and the wall time.
pub async fn run<F, Fut>(clients: usize, seconds: f64, op: F) -> (Vec<Duration>, Duration)
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(seconds);
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let op = op.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            while Instant::now() < deadline {
                let t = Instant::now();
                op().await;
                latencies.push(t.elapsed());
            }
            latencies
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.unwrap());
    }
    (all, started.elapsed())
}

/// One line of a bench's report: `clients` concurrent loops, and per kind (in the order of the
/// bench's kinds) p50 ms, p99 ms and operations per second.
pub struct Row<const N: usize> {
    pub clients: usize,
    pub figures: [(f64, f64, f64); N],
}

/// Without `--bench`: three `op(kind)` of each kind, `smoke` printed, and `None`. Otherwise a row
/// for each of `client_counts`, measured by `interleaved`.
pub async fn measure<K, F, Fut, const N: usize>(
    kinds: &[K; N],
    client_counts: &[usize],
    args: &Args,
    op: F,
    smoke: &str,
) -> Option<Vec<Row<N>>>
where
    K: Copy + Send + 'static,
    F: Fn(K) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    if !args.measure {
        for &kind in kinds {
            for _ in 0..3 {
                op(kind).await;
            }
        }
        println!("{smoke}");
        return None;
    }
    let mut rows = Vec::new();
    for &clients in client_counts {
        let figures = interleaved(kinds, clients, args, op.clone()).await;
        rows.push(Row {
            clients,
            figures: figures.try_into().unwrap(),
        });
    }
    Some(rows)
}

/// For each of `kinds`, p50 and p99 (ms) and operations per second of `clients` loops of
/// `op(kind)`, over `args.reps` repetitions that run every kind in turn (so drift hits all alike).
async fn interleaved<K, F, Fut>(
    kinds: &[K],
    clients: usize,
    args: &Args,
    op: F,
) -> Vec<(f64, f64, f64)>
where
    K: Copy + Send + 'static,
    F: Fn(K) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    let mut samples = vec![Vec::new(); kinds.len()];
    let mut elapsed = vec![Duration::ZERO; kinds.len()];
    for _ in 0..args.reps {
        for (i, &kind) in kinds.iter().enumerate() {
            let op = op.clone();
            let (latencies, took) =
                run(clients, args.seconds / args.reps as f64, move || op(kind)).await;
            samples[i].extend(latencies);
            elapsed[i] += took;
        }
    }
    samples
        .iter()
        .zip(elapsed)
        .map(|(s, e)| figures(s, e))
        .collect()
}

/// p50 and p99 in milliseconds, and operations per second over `elapsed`.
fn figures(samples: &[Duration], elapsed: Duration) -> (f64, f64, f64) {
    let mut v = samples.to_vec();
    v.sort();
    let at = |q: f64| v[((v.len() as f64 - 1.0) * q).round() as usize].as_secs_f64() * 1e3;
    (at(0.5), at(0.99), v.len() as f64 / elapsed.as_secs_f64())
}

/// Sends `request`; its JSON body, after asserting a 2xx.
pub async fn post(request: reqwest::RequestBuilder) -> Value {
    let response = request.send().await.unwrap();
    let status = response.status();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    assert!(status.is_success(), "{status}: {body}");
    body
}
