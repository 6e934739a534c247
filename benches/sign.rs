//! In-process signing rate of tfe-oidc's own signer (no HTTP): the ceiling that `POST /v1/tokens`
//! can approach on this machine, measured the way the service signs.
//!
//! Two figures:
//! - `rsa`: `SigningKey::sign` over a token-sized message (the RS256 primitive alone), 1 thread;
//! - `issue`: `TokenIssuer::issue` (policy check, uuid jti, claim set, JSON, base64url, RS256) —
//!   what the API handler calls for every token — on 1 thread and on one thread per core.
//!
//! `cargo bench --bench sign -- [--seconds S] [--threads N] [--json]`. With `--json` it prints one
//! JSON object on stdout (scripts/bench reads it); otherwise a short text report. Nothing is
//! asserted: this is a measurement, not a test. Run by `cargo test --all-targets` (no `--bench`
//! argument), it only signs one token, so that the test suite never spends time measuring.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use aws_lc_rs::rsa::{KeyPair, KeySize};
use tfe_oidc::config::TokenPolicy;
use tfe_oidc::keys::SigningKey;
use tfe_oidc::token::claims::{Audience, NamedInput, RunContext, RunIdInput, RunInput};
use tfe_oidc::token::{TokenIssuer, TokenRequest};

fn main() {
    let mut seconds = 3.0f64;
    let mut threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut json = false;
    let mut measure = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--seconds" => seconds = args.next().and_then(|s| s.parse().ok()).unwrap_or(seconds),
            "--threads" => threads = args.next().and_then(|s| s.parse().ok()).unwrap_or(threads),
            "--json" => json = true,
            "--bench" => measure = true, // what `cargo bench` passes
            _ => {}                      // test filters are meaningless here
        }
    }
    let measure = measure || json;
    let duration = Duration::from_secs_f64(seconds);

    let key = Arc::new(SigningKey::new(
        KeyPair::generate(KeySize::Rsa2048).expect("RSA key generation"),
    ));
    let issuer = Arc::new(TokenIssuer::new(
        "https://tfe.example.com".into(),
        TokenPolicy {
            default_audience: Audience::parse("vault.workload.identity").unwrap(),
            audiences: vec!["vault.workload.identity".into()],
            default_ttl: Duration::from_secs(7200),
            max_ttl: Duration::from_secs(86400),
        },
    ));
    let request = Arc::new(request());
    if !measure {
        let token = issuer.issue(&request, &key, 1_764_115_200).unwrap().token;
        println!(
            "sign bench: signed one {}-byte token; `cargo bench --bench sign` measures",
            token.len()
        );
        return;
    }
    // A message the size of a real signing input (header.payload).
    let message: Arc<Vec<u8>> = {
        let token = issuer.issue(&request, &key, 1_764_115_200).unwrap().token;
        let cut = token.rfind('.').unwrap();
        Arc::new(token.as_bytes()[..cut].to_vec())
    };

    let rsa = |n: usize| {
        let (key, message) = (Arc::clone(&key), Arc::clone(&message));
        rate(n, duration, move || {
            std::hint::black_box(key.sign(&message));
        })
    };
    let issue = |n: usize| {
        let (key, issuer, request) = (Arc::clone(&key), Arc::clone(&issuer), Arc::clone(&request));
        rate(n, duration, move || {
            std::hint::black_box(issuer.issue(&request, &key, 1_764_115_200).unwrap());
        })
    };
    // Warm up (CPU frequency, page faults, lazy CPU feature detection).
    rate(1, Duration::from_millis(300), {
        let (key, message) = (Arc::clone(&key), Arc::clone(&message));
        move || {
            std::hint::black_box(key.sign(&message));
        }
    });
    let rsa_1 = rsa(1);
    let issue_1 = issue(1);
    let issue_n = issue(threads);

    if json {
        println!(
            "{{\"threads\":{threads},\"seconds\":{seconds},\"rsa_sign_1\":{:.1},\"rsa_sign_1_cpu\":{:.1},\"issue_1\":{:.1},\"issue_1_cpu\":{:.1},\"issue_n\":{:.1},\"issue_n_cpu\":{:.1},\"issue_per_core\":{:.1}}}",
            rsa_1.wall,
            rsa_1.cpu,
            issue_1.wall,
            issue_1.cpu,
            issue_n.wall,
            issue_n.cpu,
            issue_n.wall / threads as f64,
        );
    } else {
        println!("tfe-oidc in-process RS256 (2048-bit), {seconds}s per figure");
        println!(
            "  (wall: per second of elapsed time; cpu: per second of CPU time, as `openssl speed`)"
        );
        let line = |what: &str, n: usize, r: Rate| {
            println!(
                "  {what:<19} {n} thread(s): {:>8.0} /s wall, {:>8.0} /s per CPU-second",
                r.wall, r.cpu
            )
        };
        line("SigningKey::sign", 1, rsa_1);
        line("TokenIssuer::issue", 1, issue_1);
        line("TokenIssuer::issue", threads, issue_n);
    }
}

fn request() -> TokenRequest {
    let named = |id: &str, name: &str| NamedInput {
        id: id.into(),
        name: name.into(),
    };
    let run = RunContext::parse(&RunInput {
        organization: named("org-GRNbCjYNpBB6NEH9", "acme"),
        project: named("prj-vegSA59s1XPwMr2t", "Default Project"),
        workspace: named("ws-mbsd5E3Ktt5Rg2Xm", "prod"),
        run: RunIdInput {
            id: "run-X3n1AUXNGWbfECsJ".into(),
            phase: "apply".into(),
        },
    })
    .expect("a valid run");
    TokenRequest {
        subject: run.into(),
        audience: None,
        ttl: None,
    }
}

/// A measured rate: operations per wall-clock second (all threads together) and per second of CPU
/// time (per busy core, as `openssl speed` counts: immune to other processes on the machine).
#[derive(Clone, Copy)]
struct Rate {
    wall: f64,
    cpu: f64,
}

/// Runs `op` in a loop on `threads` threads for `duration`.
fn rate(threads: usize, duration: Duration, op: impl Fn() + Send + Sync + Clone + 'static) -> Rate {
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let workers: Vec<_> = (0..threads)
        .map(|_| {
            let (stop, op) = (Arc::clone(&stop), op.clone());
            std::thread::spawn(move || {
                let cpu_start = thread_cpu_ns();
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    op();
                    n += 1;
                }
                (n, thread_cpu_ns().saturating_sub(cpu_start))
            })
        })
        .collect();
    std::thread::sleep(duration);
    stop.store(true, Ordering::Relaxed);
    let (ops, cpu_ns) = workers
        .into_iter()
        .map(|w| w.join().unwrap())
        .fold((0, 0), |(a, b), (n, c)| (a + n, b + c));
    let wall = ops as f64 / start.elapsed().as_secs_f64();
    let cpu = if cpu_ns > 0 {
        ops as f64 / (cpu_ns as f64 / 1e9)
    } else {
        f64::NAN
    };
    Rate { wall, cpu }
}

/// Nanoseconds this thread has spent on a CPU (Linux schedstat; 0 elsewhere).
fn thread_cpu_ns() -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}
